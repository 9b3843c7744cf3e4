"""The IU X-ray adapter on a small fixture with the Kaggle distribution's layout, file names and columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import one_line
from PIL import Image

from medret.datasets import get_adapter, load_pairs
from medret.errors import MedretError
from medret.manifest import select_pairs

REPORT_COLUMNS = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
PROJECTION_COLUMNS = ["uid", "filename", "projection"]

# uid -> indiana_reports.csv row (without uid), as written.
REPORTS = {
    "1": (
        "normal",
        "normal",
        "Xray Chest PA and Lateral",
        "Positive TB test",
        "None.",
        "The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema. "
        "There are no XXXX of a pleural effusion.",
        "Normal chest x-XXXX.",
    ),
    "2": (
        "Cardiomegaly/borderline;Pulmonary Artery/enlarged",
        "Cardiomegaly;Pulmonary Artery",
        "Chest, 2 views, frontal and lateral",
        "Preop bariatric surgery.",
        "None.",
        "Borderline cardiomegaly. Midline sternotomy XXXX.\nEnlarged pulmonary arteries.  Clear lungs.",
        "No acute pulmonary findings.",
    ),
    "3": (
        "normal",
        "normal",
        " PA and lateral chest XXXX ",
        "tuberculosis positive PPD",
        "",
        "Heart size is normal.",
        "",
    ),
    "4": ("normal", "normal", "CHEST 2V", "XXXX-year-old female, cough.", "", "", " Normal chest x-XXXX. "),
    "5": ("normal", "normal", "Chest PA", "", "", "", "  \n "),  # whitespace-only impression
    "6": ("normal", "normal", "Chest PA", "", "", "", "Clear lungs."),  # a report without images
}

# indiana_projections.csv rows; uid 4 has a lateral only; uid 7 has no report row.
PROJECTIONS = [
    ("1", "1_IM-0001-4001.dcm.png", "Frontal"),
    ("1", "1_IM-0001-3001.dcm.png", "Lateral"),  # sorts before the frontal image of its uid
    ("2", "2_IM-0652-1001.dcm.png", "Frontal"),
    ("2", "2_IM-0652-2001.dcm.png", "Lateral"),
    ("3", "3_IM-1384-1001.dcm.png", "Frontal"),
    ("3", "3_IM-1384-2001.dcm.png", "Lateral"),
    ("4", "4_IM-2050-2001.dcm.png", "Lateral"),
    ("5", "5_IM-2117-1003002.dcm.png", "Frontal"),
    ("7", "7_IM-2263-1001.dcm.png", "Frontal"),
]

# uid -> (findings, impression) after whitespace is collapsed, hand-written; XXXX marks stay.
EXPECTED = {
    "1": (
        "The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema. "
        "There are no XXXX of a pleural effusion.",
        "Normal chest x-XXXX.",
    ),
    "2": (
        "Borderline cardiomegaly. Midline sternotomy XXXX. Enlarged pulmonary arteries. Clear lungs.",
        "No acute pulmonary findings.",
    ),
    "3": ("Heart size is normal.", ""),
    "4": ("", "Normal chest x-XXXX."),
    "5": ("", ""),
    "7": ("", ""),  # no report row
}
LONGEST = {"1": "findings", "2": "findings", "3": "findings", "4": "impression", "5": "impression", "7": "impression"}


def _build(tmp_path: Path, *, gz: bool = False) -> Path:
    """The Kaggle download under tmp/iu: the two CSVs and images/images_normalized/."""
    root = tmp_path / "iu"
    images = root / "images" / "images_normalized"
    images.mkdir(parents=True)
    for _, filename, _ in PROJECTIONS:
        Image.fromarray(np.full((40, 40), 128, np.uint8)).save(images / filename)
    reports = pd.DataFrame([(uid, *row) for uid, row in REPORTS.items()], columns=REPORT_COLUMNS)
    projections = pd.DataFrame([*PROJECTIONS, PROJECTIONS[2]], columns=PROJECTION_COLUMNS)  # one row twice
    if gz:  # a gzipped reports file beside a plain projections file
        reports.to_csv(root / "indiana_reports.csv.gz", index=False, compression="gzip")
    else:
        reports.to_csv(root / "indiana_reports.csv", index=False)
    projections.to_csv(root / "indiana_projections.csv", index=False)
    return root


def _entry(root: Path, **extra) -> dict:
    return {"adapter": "iu_xray", "root": str(root), **extra}


def _load(entry: dict) -> pd.DataFrame:
    return load_pairs("iu", entry, get_adapter("iu_xray").sources("iu", entry))


@pytest.mark.parametrize("gz", [False, True])
def test_pairs_table_row_by_row(tmp_path, gz):
    root = _build(tmp_path, gz=gz)
    entry = _entry(root)
    sources = get_adapter("iu_xray").sources("iu", entry)
    assert sources == [
        str(root / ("indiana_reports.csv" + (".gz" if gz else ""))),
        str(root / "indiana_projections.csv"),
    ]
    table = load_pairs("iu", entry, sources)
    assert list(table.columns) == ["pair_id", "image_path", "report", "split", "patient_id", "study_id", "view"]
    assert table["pair_id"].tolist() == sorted(f for _, f, _ in PROJECTIONS)  # the repeated row is read once
    by_id = table.set_index("pair_id")
    images = (root / "images" / "images_normalized").resolve()
    for uid, filename, projection in PROJECTIONS:
        row = by_id.loc[filename]
        assert row["image_path"] == str(images / filename) and Path(row["image_path"]).is_file()
        assert row["report"] == EXPECTED[uid][1]  # impression by default
        assert (row["split"], row["patient_id"], row["study_id"]) == ("test", uid, uid)
        assert row["view"] == projection.upper()
    for col in table.columns:
        assert all(isinstance(v, str) for v in table[col]), col


def test_manifest_one_frontal_image_per_uid(tmp_path):
    table = _load(_entry(_build(tmp_path)))
    manifest = select_pairs(table, "test")[0]
    # uid 1: the frontal image, although its lateral has the smaller filename; uid 4: its only (lateral)
    # image; uids 3 and 5 have no impression and uid 7 no report, so they are dropped.
    assert manifest["pair_id"].tolist() == [
        "1_IM-0001-4001.dcm.png",
        "2_IM-0652-1001.dcm.png",
        "4_IM-2050-2001.dcm.png",
    ]
    assert manifest["text_id"].tolist() == [0, 1, 0]  # uids 1 and 4 share one report string


def test_findings_and_longest(tmp_path):
    root = _build(tmp_path)
    for section in ("findings", "longest"):
        table = _load(_entry(root, section=section)).set_index("pair_id")
        for uid, filename, _ in PROJECTIONS:
            findings, impression = EXPECTED[uid]
            used = "findings" if section == "findings" else LONGEST[uid]
            assert table.loc[filename, "report"] == (findings if used == "findings" else impression), (section, uid)
    manifest = select_pairs(table.reset_index(), "test")[0]  # longest: uid 3 is back (findings only)
    assert sorted(manifest["study_id"]) == ["1", "2", "3", "4"]


@pytest.mark.parametrize("content", ["1\n# uid 2 left out\n4  # lateral only\n", "study_id,note\n1,a\n4,b\n"])
def test_study_list(tmp_path, content):
    root = _build(tmp_path)
    (tmp_path / "uids.txt").write_text(content, encoding="utf-8")
    entry = _entry(root, study_list=str(tmp_path / "uids.txt"))
    sources = get_adapter("iu_xray").sources("iu", entry)
    assert sources[-1] == str(tmp_path / "uids.txt")
    table = load_pairs("iu", entry, sources)
    assert table["pair_id"].tolist() == ["1_IM-0001-3001.dcm.png", "1_IM-0001-4001.dcm.png", "4_IM-2050-2001.dcm.png"]


def test_missing_files_and_wrong_root(tmp_path):
    root = _build(tmp_path)
    sources = get_adapter("iu_xray").source_files
    with pytest.raises(MedretError) as exc:  # the images directory instead of the dataset directory
        sources("iu", _entry(root / "images"))
    assert "indiana_reports.csv(.gz): IU X-ray file (Kaggle chest-xrays-indiana-university) not found" in (
        one_line(exc)
    )
    assert "datasets.iu.root" in str(exc.value)
    with pytest.raises(MedretError) as exc:
        sources("iu", _entry(tmp_path / "absent"))
    assert "absent: IU X-ray directory not found; check the config key datasets.iu.root" in one_line(exc)
    with pytest.raises(MedretError, match=r"config key datasets\.iu\.root is missing"):
        sources("iu", {"adapter": "iu_xray"})
    with pytest.raises(MedretError, match=r"config key datasets\.iu\.section is 'summary'; use one of"):
        sources("iu", _entry(root, section="summary"))
    with pytest.raises(MedretError, match=r"uids\.txt: study list not found; check the config key datasets\.iu"):
        sources("iu", _entry(root, study_list=str(tmp_path / "uids.txt")))
    (root / "images" / "images_normalized").rename(root / "images" / "normalized")
    with pytest.raises(MedretError) as exc:
        sources("iu", _entry(root))
    assert "images_normalized: image directory not found; set datasets.iu.root" in one_line(exc)
    (root / "indiana_projections.csv").unlink()
    with pytest.raises(MedretError) as exc:
        sources("iu", _entry(root))
    assert "indiana_projections.csv(.gz): IU X-ray file" in one_line(exc)


def test_bad_inputs_at_load(tmp_path):
    root = _build(tmp_path)
    entry = _entry(root)
    sources = get_adapter("iu_xray").sources("iu", entry)
    reports = pd.read_csv(sources[0], dtype=str, keep_default_na=False)
    projections = pd.read_csv(sources[1], dtype=str, keep_default_na=False)

    def load(reports_frame: pd.DataFrame, projections_frame: pd.DataFrame) -> None:
        reports_frame.to_csv(tmp_path / "r.csv", index=False)
        projections_frame.to_csv(tmp_path / "p.csv", index=False)
        load_pairs("iu", entry, [str(tmp_path / "r.csv"), str(tmp_path / "p.csv")])

    cases = [
        (reports.drop(columns="impression"), projections, "r.csv: missing column(s) impression; expected the IU X-ray"),
        (reports, projections.drop(columns="projection"), "p.csv: missing column(s) projection"),
        (pd.concat([reports, reports.iloc[[1]].assign(findings="Other.")]), projections, "uid '2' appears on two rows"),
        (
            reports,
            projections.assign(projection=projections["projection"].where(projections.index != 9, "Lateral")),
            "filename '2_IM-0652-1001.dcm.png' appears on two rows with different values",
        ),
        (reports, projections.assign(filename=projections["filename"].where(projections.index != 3, "")), "row 5"),
        (reports, projections.iloc[0:0], "p.csv: the CSV has no rows"),
        (reports.assign(uid="9" + reports["uid"]), projections, "holds no report of the 6 uids in"),
    ]
    for reports_frame, projections_frame, message in cases:
        with pytest.raises(MedretError) as exc:
            load(reports_frame, projections_frame)
        assert message in one_line(exc), message
    with pytest.raises(MedretError) as exc:
        load_pairs("iu", entry, [str(root / "gone.csv"), sources[1]])
    assert "gone.csv: IU X-ray file (Kaggle chest-xrays-indiana-university) not found" in one_line(exc)
    (tmp_path / "uids.txt").write_text("CXR1\n", encoding="utf-8")
    with pytest.raises(MedretError, match="'CXR1' is not a study id; list ids like 1 or 3999"):
        _load(_entry(root, study_list=str(tmp_path / "uids.txt")))
    (tmp_path / "uids.txt").write_text("99\n", encoding="utf-8")
    with pytest.raises(MedretError, match="none of its 1 study ids is in"):
        _load(_entry(root, study_list=str(tmp_path / "uids.txt")))


def test_plain_csv_preferred_over_gz(tmp_path):
    root = _build(tmp_path, gz=True)
    (root / "indiana_reports.csv").write_text("uid,findings,impression\n1,,Plain file.\n", encoding="utf-8")
    sources = get_adapter("iu_xray").sources("iu", _entry(root))
    assert sources[0] == str(root / "indiana_reports.csv")
    table = load_pairs("iu", _entry(root), sources).set_index("pair_id")
    assert table.loc["1_IM-0001-4001.dcm.png", "report"] == "Plain file."
