"""The CheXpert Plus adapter on a small fixture with the release's layout, file names, columns and label files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import assert_study_list_errors, one_line
from PIL import Image

from medret.datasets import get_adapter, load_pairs
from medret.datasets.common import CHEXPERT_LABELS, chosen_section, clean_text, label_column, pick_section
from medret.errors import MedretError
from medret.manifest import select_pairs

# The 27 columns of df_chexpert_plus_240401.csv, in the release's order.
CSV_COLUMNS = [
    "path_to_image",
    "path_to_dcm",
    "frontal_lateral",
    "ap_pa",
    "deid_patient_id",
    "patient_report_date_order",
    "report",
    "section_narrative",
    "section_clinical_history",
    "section_history",
    "section_comparison",
    "section_technique",
    "section_procedure_comments",
    "section_findings",
    "section_impression",
    "section_end_of_impression",
    "section_summary",
    "section_accession_number",
    "age",
    "sex",
    "race",
    "ethnicity",
    "interpreter_needed",
    "insurance_type",
    "recent_bmi",
    "deceased",
    "split",
]

# Study (split, patient, study) -> (section_findings, section_impression) as written in the CSV.
STUDIES = {
    ("valid", "patient64541", "study1"): (
        "Lungs are clear.\n\nHeart size is  normal. ",
        "1.  No acute cardiopulmonary process.\n",
    ),
    ("valid", "patient64542", "study1"): ("Small left pleural effusion.", ""),  # no impression
    ("valid", "patient64543", "study1"): ("", "Stable cardiomegaly."),  # lateral-only study
    ("valid", "patient64543", "study2"): ("Endotracheal tube in place.", " 1. No acute cardiopulmonary process."),
    ("valid", "patient64544", "study1"): ("", "  \n  "),  # whitespace only
    ("valid", "patient64545", "study1"): ("Clear lungs.", "No effusion."),  # equal lengths
    ("train", "patient00001", "study1"): ("Right lower lobe opacity.", "Pneumonia."),
    ("train", "patient00001", "study2"): ("", "Improved."),
}

# (path_to_image, frontal_lateral, ap_pa); ap_pa is empty on laterals, and LL on one frontal image.
IMAGES = [
    ("valid/patient64541/study1/view1_frontal.jpg", "Frontal", "PA"),
    ("valid/patient64541/study1/view2_lateral.jpg", "Lateral", ""),
    ("valid/patient64542/study1/view1_frontal.jpg", "Frontal", "AP"),
    ("valid/patient64543/study1/view1_lateral.jpg", "Lateral", ""),
    ("valid/patient64543/study2/view1_frontal.jpg", "Frontal", "LL"),
    ("valid/patient64543/study2/view2_frontal.jpg", "Frontal", "AP"),
    ("valid/patient64544/study1/view1_frontal.jpg", "Frontal", "AP"),
    ("valid/patient64545/study1/view1_frontal.jpg", "Frontal", "PA"),
    ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP"),
    ("train/patient00001/study2/view1_frontal.jpg", "Frontal", "PA"),
    ("train/patient00001/study2/view2_lateral.jpg", "Lateral", ""),
]
VIEWS = {  # hand-derived view of every image
    "valid/patient64541/study1/view1_frontal": "PA",
    "valid/patient64541/study1/view2_lateral": "LATERAL",
    "valid/patient64542/study1/view1_frontal": "AP",
    "valid/patient64543/study1/view1_lateral": "LATERAL",
    "valid/patient64543/study2/view1_frontal": "FRONTAL",
    "valid/patient64543/study2/view2_frontal": "AP",
    "valid/patient64544/study1/view1_frontal": "AP",
    "valid/patient64545/study1/view1_frontal": "PA",
    "train/patient00001/study1/view1_frontal": "AP",
    "train/patient00001/study2/view1_frontal": "PA",
    "train/patient00001/study2/view2_lateral": "LATERAL",
}

# Cleaned sections (hand-written) and the section `longest` takes (findings only when strictly longer).
EXPECTED = {
    "patient64541/study1": (
        "Lungs are clear. Heart size is normal.",
        "1. No acute cardiopulmonary process.",
        "findings",
    ),
    "patient64542/study1": ("Small left pleural effusion.", "", "findings"),
    "patient64543/study1": ("", "Stable cardiomegaly.", "impression"),
    "patient64543/study2": ("Endotracheal tube in place.", "1. No acute cardiopulmonary process.", "impression"),
    "patient64544/study1": ("", "", "impression"),
    "patient64545/study1": ("Clear lungs.", "No effusion.", "impression"),
    "patient00001/study1": ("Right lower lobe opacity.", "Pneumonia.", "findings"),
    "patient00001/study2": ("", "Improved.", "impression"),
}

# CheXbert labels per image (unlisted findings are null); train/patient00001/study2 is in neither file.
IMPRESSION_LABELS = {
    "valid/patient64541/study1/view1_frontal.jpg": {"No Finding": 1.0},
    "valid/patient64541/study1/view2_lateral.jpg": {"No Finding": 1.0},
    "valid/patient64542/study1/view1_frontal.jpg": {},
    "valid/patient64543/study1/view1_lateral.jpg": {"Cardiomegaly": 1.0, "Edema": 0.0},
    "valid/patient64543/study2/view1_frontal.jpg": {"No Finding": 1.0, "Support Devices": -1.0},
    "valid/patient64543/study2/view2_frontal.jpg": {"No Finding": 1.0, "Support Devices": -1.0},
    "valid/patient64544/study1/view1_frontal.jpg": {},
    "valid/patient64545/study1/view1_frontal.jpg": {"Pleural Effusion": 0.0},
    "train/patient00001/study1/view1_frontal.jpg": {"Pneumonia": 1.0, "Consolidation": -1.0},
}
FINDINGS_LABELS = {
    "valid/patient64541/study1/view1_frontal.jpg": {"Cardiomegaly": 0.0, "Lung Opacity": 0.0},
    "valid/patient64541/study1/view2_lateral.jpg": {"Cardiomegaly": 0.0, "Lung Opacity": 0.0},
    "valid/patient64542/study1/view1_frontal.jpg": {"Pleural Effusion": 1.0},
    "valid/patient64543/study1/view1_lateral.jpg": {},
    "valid/patient64543/study2/view1_frontal.jpg": {"Support Devices": 1.0},
    "valid/patient64543/study2/view2_frontal.jpg": {"Support Devices": 1.0},
    "valid/patient64544/study1/view1_frontal.jpg": {},
    "valid/patient64545/study1/view1_frontal.jpg": {"Lung Opacity": 0.0},
    "train/patient00001/study1/view1_frontal.jpg": {"Lung Opacity": 1.0},
}


def _row(path: str, side: str, projection: str) -> dict:
    split, patient, study, _ = path.split("/")
    findings, impression = STUDIES[(split, patient, study)]
    return {
        "path_to_image": path,
        "path_to_dcm": path.replace(".jpg", ".dcm"),
        "frontal_lateral": side,
        "ap_pa": projection,
        "deid_patient_id": patient,
        "patient_report_date_order": int(study.removeprefix("study")),
        "report": f"NARRATIVE: CHEST.\n\nFINDINGS: {findings}\n\nIMPRESSION: {impression}\n\nEND OF IMPRESSION:",
        "section_narrative": "CHEST.",
        "section_clinical_history": "Cough, fever",
        "section_history": "",
        "section_comparison": "None.",
        "section_technique": "",
        "section_procedure_comments": "",
        "section_findings": findings,
        "section_impression": impression,
        "section_end_of_impression": "2-ABNORMAL, PREVIOUSLY REPORTED\nI have personally reviewed the images.",
        "section_summary": "",
        "section_accession_number": "",
        "age": 61,
        "sex": "Female",
        "race": "White",
        "ethnicity": "Non-Hispanic/Non-Latino",
        "interpreter_needed": "No",
        "insurance_type": "Medicare",
        "recent_bmi": 27.5,
        "deceased": "No",
        "split": split,
    }


def _write_labels(path: Path, labels: dict[str, dict[str, float]]) -> None:
    # JSON lines: one record per image, keyed by path_to_image; null = not mentioned.
    lines = [json.dumps({"path_to_image": p, **{f: v.get(f) for f in CHEXPERT_LABELS}}) for p, v in labels.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _build(tmp_path: Path, *, gz: bool = False) -> Path:
    """CheXpert Plus under tmp/chexpertplus: the CSV, chexbert_labels/, PNG/PNG/ and CheXpert-v1.0/ trees."""
    base = tmp_path / "chexpertplus"
    for path, *_ in IMAGES:
        for tree, suffix in (("PNG/PNG", ".png"), ("CheXpert-v1.0", ".jpg")):
            file = base / tree / Path(path).with_suffix(suffix)
            file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((10, 8), 90, np.uint8)).save(file)
    rows = [_row(*image) for image in IMAGES]
    rows.insert(9, rows[8])  # the same row twice
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    name = "df_chexpert_plus_240401.csv"
    if gz:
        frame.to_csv(base / f"{name}.gz", index=False, compression="gzip")
    else:
        frame.to_csv(base / name, index=False)
    (base / "chexbert_labels").mkdir()
    _write_labels(base / "chexbert_labels" / "impression_fixed.json", IMPRESSION_LABELS)
    _write_labels(base / "chexbert_labels" / "findings_fixed.json", FINDINGS_LABELS)
    _write_labels(base / "chexbert_labels" / "report_fixed.json", {})  # shipped, never read
    return base


def _entry(base: Path, gz: bool = False, **extra) -> dict:
    return {
        "adapter": "chexpert_plus",
        "reports": str(base / ("df_chexpert_plus_240401.csv" + (".gz" if gz else ""))),
        "root": str(base / "PNG" / "PNG"),
        "labels": str(base / "chexbert_labels"),
        **extra,
    }


def _load(entry: dict) -> pd.DataFrame:
    return load_pairs("cxp", entry, get_adapter("chexpert_plus").source_files("cxp", entry))


def _check_labels(row: pd.Series, written: dict[str, float], key: str) -> None:
    for finding in CHEXPERT_LABELS:
        value = row[label_column(finding)]
        if finding in written:
            assert value == written[finding], (key, finding)
        else:
            assert math.isnan(value), (key, finding)


def test_section_helpers():
    assert clean_text("  a\n\n b\t c  ") == "a b c"
    assert [chosen_section("abc", "ab", s) for s in ("impression", "findings", "longest")] == [
        "impression",
        "findings",
        "findings",
    ]
    assert chosen_section("ab", "cd", "longest") == "impression"  # ties go to the impression
    assert chosen_section("", "", "longest") == "impression"
    assert pick_section("abc", "ab", "longest") == "abc" and pick_section("abc", "ab", "impression") == "ab"


@pytest.mark.parametrize("gz", [False, True])
def test_pairs_table_row_by_row(tmp_path, gz):
    base = _build(tmp_path, gz=gz)
    entry = _entry(base, gz)
    sources = get_adapter("chexpert_plus").source_files("cxp", entry)
    assert sources == [entry["reports"], str(base / "chexbert_labels" / "impression_fixed.json")]
    table = load_pairs("cxp", entry, sources)
    labels = sorted(label_column(f) for f in CHEXPERT_LABELS)
    assert list(table.columns) == [
        "pair_id",
        "image_path",
        "report",
        "split",
        "patient_id",
        "study_id",
        "view",
        *labels,
    ]
    assert table["pair_id"].tolist() == sorted(VIEWS)  # the repeated row is read once
    by_id = table.set_index("pair_id")
    root = (base / "PNG" / "PNG").resolve()
    for path, *_ in IMAGES:
        key = path.removesuffix(".jpg")
        row = by_id.loc[key]
        split, patient, study, _ = path.split("/")
        assert row["image_path"] == str(root / f"{key}.png")
        assert Path(row["image_path"]).is_file()
        assert row["report"] == EXPECTED[f"{patient}/{study}"][1]  # impression by default
        assert (row["split"], row["patient_id"], row["study_id"], row["view"]) == (
            split,
            patient,
            f"{patient}/{study}",
            VIEWS[key],
        )
        _check_labels(row, IMPRESSION_LABELS.get(path, {}), key)
    assert math.isnan(by_id.loc["train/patient00001/study2/view1_frontal", "label_no_finding"])  # not in the file
    for col in ("pair_id", "image_path", "report", "split", "patient_id", "study_id", "view"):
        assert all(isinstance(v, str) for v in table[col]), col

    # Downstream: the valid split (there is no test split), empty reports dropped, one image per study.
    manifest = select_pairs(table, "valid")[0]
    assert manifest["pair_id"].tolist() == [
        "valid/patient64541/study1/view1_frontal",  # PA over the lateral
        "valid/patient64543/study1/view1_lateral",  # a lateral-only study keeps its lateral
        "valid/patient64543/study2/view2_frontal",  # AP over the frontal marked LL
        "valid/patient64545/study1/view1_frontal",
    ]
    assert manifest["text_id"].tolist() == [0, 1, 0, 2]  # the same impression, differently spaced
    with pytest.raises(MedretError, match=r"no pairs in split 'test' \(splits present: train, valid\)"):
        select_pairs(table, "test")[0]


def test_findings_and_longest_take_the_matching_labels(tmp_path):
    base = _build(tmp_path)
    for section in ("findings", "longest"):
        entry = _entry(base, section=section)
        sources = get_adapter("chexpert_plus").source_files("cxp", entry)
        files = ["findings_fixed.json"] if section == "findings" else ["impression_fixed.json", "findings_fixed.json"]
        assert sources[1:] == [str(base / "chexbert_labels" / f) for f in files]
        table = load_pairs("cxp", entry, sources).set_index("pair_id")
        for path, *_ in IMAGES:
            key = path.removesuffix(".jpg")
            findings, impression, longest = EXPECTED[key.split("/", 1)[1].rsplit("/", 1)[0]]
            used = "findings" if section == "findings" else longest
            assert table.loc[key, "report"] == (findings if used == "findings" else impression), (section, key)
            written = (FINDINGS_LABELS if used == "findings" else IMPRESSION_LABELS).get(path, {})
            _check_labels(table.loc[key], written, key)
    # Spot checks of the hand-made expectations: longest took findings here, impression there.
    assert table.loc["valid/patient64541/study1/view1_frontal", "label_cardiomegaly"] == 0.0
    assert math.isnan(table.loc["valid/patient64541/study1/view1_frontal", "label_no_finding"])
    assert table.loc["valid/patient64543/study2/view2_frontal", "label_support_devices"] == -1.0
    manifest = select_pairs(table.reset_index(), "valid")[0]
    assert len(manifest) == 5  # the study without impression is back; the whitespace-only one is not
    assert "valid/patient64542/study1/view1_frontal" in manifest["pair_id"].tolist()


def test_without_labels_and_with_jpeg_images(tmp_path):
    base = _build(tmp_path)
    entry = _entry(base, root=str(base / "CheXpert-v1.0"), image_format="jpg")
    del entry["labels"]
    sources = get_adapter("chexpert_plus").source_files("cxp", entry)
    assert sources == [entry["reports"]]
    table = load_pairs("cxp", entry, sources)
    assert not [c for c in table.columns if c.startswith("label_")]
    root = (base / "CheXpert-v1.0").resolve()
    assert table["image_path"].tolist() == [str(root / f"{key}.jpg") for key in sorted(VIEWS)]
    assert all(Path(p).is_file() for p in table["image_path"])
    with_png = _load(_entry(base))  # the same pairs, apart from the image files and labels
    pd.testing.assert_frame_equal(table.drop(columns="image_path"), with_png[table.columns].drop(columns="image_path"))


@pytest.mark.parametrize(
    "content",
    [
        "patient64541/study1\n\n# a comment\npatient64543/study2  # trailing\n",
        "study_id\npatient64541/study1\npatient64543/study2\n",
    ],
)
def test_study_list(tmp_path, content):
    base = _build(tmp_path)
    (tmp_path / "studies.txt").write_text(content, encoding="utf-8")
    entry = _entry(base, study_list=str(tmp_path / "studies.txt"))
    sources = get_adapter("chexpert_plus").source_files("cxp", entry)
    assert sources[-1] == str(tmp_path / "studies.txt") and len(sources) == 3
    table = load_pairs("cxp", entry, sources)
    assert table["pair_id"].tolist() == [
        "valid/patient64541/study1/view1_frontal",
        "valid/patient64541/study1/view2_lateral",
        "valid/patient64543/study2/view1_frontal",
        "valid/patient64543/study2/view2_frontal",
    ]
    assert table.loc[3, "label_support_devices"] == -1.0  # labels still line up after filtering


def test_study_list_errors(tmp_path):
    base = _build(tmp_path)
    assert_study_list_errors(
        lambda path: _load(_entry(base, study_list=str(path))),
        tmp_path / "studies.txt",
        unknown="patient99999/study1",
        malformed="64541",
        key="datasets.cxp.study_list",
    )
    (tmp_path / "studies.txt").write_text("64541\n", encoding="utf-8")
    with pytest.raises(MedretError, match="list ids like patient00001/study1"):
        _load(_entry(base, study_list=str(tmp_path / "studies.txt")))


def test_missing_files_and_wrong_root(tmp_path):
    base = _build(tmp_path)
    sources = get_adapter("chexpert_plus").source_files
    cases = [
        ({"reports": str(base / "df.csv")}, "df.csv: CheXpert Plus report CSV (df_chexpert_plus_240401.csv) not found"),
        ({"reports": str(base / "df.csv")}, "datasets.cxp.reports"),
        (
            {"root": str(base / "absent")},
            "absent: CheXpert Plus image directory not found; check the config key datasets.cxp.root",
        ),
        # The PNG archive's outer directory: its train/ and valid/ sit one level deeper.
        ({"root": str(base / "PNG")}, "holds no train/ or valid/ directory; set datasets.cxp.root"),
        ({"labels": str(base / "labels")}, "labels: CheXbert label directory not found"),
        (
            {"section": "summary"},
            "config key datasets.cxp.section is 'summary'; use one of: impression, findings, longest",
        ),
        ({"image_format": "dcm"}, "config key datasets.cxp.image_format is 'dcm'; use one of: png, jpg"),
    ]
    for change, message in cases:
        with pytest.raises(MedretError) as exc:
            sources("cxp", _entry(base, **change))
        assert message in one_line(exc), change
    with pytest.raises(MedretError, match=r"config key datasets\.cxp\.reports is missing"):
        sources("cxp", {"adapter": "chexpert_plus", "root": str(base / "PNG" / "PNG")})
    (base / "chexbert_labels" / "findings_fixed.json").unlink()
    sources("cxp", _entry(base))  # the impression file is all the default section needs
    with pytest.raises(MedretError) as exc:
        sources("cxp", _entry(base, section="longest"))
    assert "findings_fixed.json: CheXbert label file not found; set datasets.cxp.labels" in one_line(exc)


def test_bad_inputs_at_load(tmp_path):
    base = _build(tmp_path)
    entry = _entry(base)
    sources = get_adapter("chexpert_plus").source_files("cxp", entry)
    frame = pd.read_csv(sources[0], dtype=str, keep_default_na=False)

    def load_csv(changed: pd.DataFrame) -> None:
        changed.to_csv(tmp_path / "bad.csv", index=False)
        load_pairs("cxp", entry, [str(tmp_path / "bad.csv"), *sources[1:]])

    with pytest.raises(MedretError) as exc:  # another CSV (e.g. CheXpert's train.csv)
        load_csv(frame.drop(columns=["section_impression", "deid_patient_id"]))
    assert "missing column(s) deid_patient_id, section_impression; expected the CheXpert Plus report CSV" in one_line(
        exc
    )
    with pytest.raises(MedretError) as exc:  # paths with the CheXpert-v1.0-small prefix
        load_csv(frame.assign(path_to_image="CheXpert-v1.0-small/" + frame["path_to_image"]))
    assert "row 2: path_to_image 'CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg' is not" in (
        one_line(exc)
    )
    changed = frame.copy()
    changed.loc[9, "section_impression"] = "Something else."  # the repeated row now disagrees
    with pytest.raises(MedretError) as exc:
        load_csv(changed)
    assert "'train/patient00001/study1/view1_frontal.jpg' appears on two rows with different values" in one_line(exc)
    with pytest.raises(MedretError, match="the CSV has no rows"):
        load_csv(frame.iloc[0:0])
    with pytest.raises(MedretError) as exc:
        load_pairs("cxp", entry, [str(base / "gone.csv"), *sources[1:]])
    assert "gone.csv: CheXpert Plus report CSV (df_chexpert_plus_240401.csv) not found" in one_line(exc)

    labels = tmp_path / "labels.json"
    good = (base / "chexbert_labels" / "impression_fixed.json").read_text(encoding="utf-8")
    for text, message in [
        (good + "{not json\n", "line 10 is not JSON"),
        (
            good.replace('"Edema": null', '"Edema": "yes"', 1),
            "'Edema' of valid/patient64541/study1/view1_frontal.jpg holds 'yes'; labels must be 1, 0, -1 or null",
        ),
        (
            good.replace('"Edema": null', '"Edema": 2.0', 1),
            "'Edema' of valid/patient64541/study1/view1_frontal.jpg holds 2.0;",
        ),
        (
            good.replace('"Edema"', '"edema"'),
            "missing key(s) Edema; expected CheXpert Plus's chexbert_labels/*_fixed.json",
        ),
        ("[1, 2]\n", "line 1 is not a JSON object"),
    ]:
        labels.write_text(text, encoding="utf-8")
        with pytest.raises(MedretError) as exc:
            load_pairs("cxp", entry, [sources[0], str(labels)])
        assert message in one_line(exc), message
