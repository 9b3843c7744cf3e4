"""The MIMIC-CXR adapter on a small fixture tree with the real layout, file names and columns."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from helpers import assert_study_list_errors, one_line
from helpers.mimic import IMAGES, LABELS, SEP, STUDIES, build_tree

from medret.datasets import get_adapter, load_pairs
from medret.datasets.common import CHEXPERT_LABELS, label_column
from medret.datasets.mimic import choose_section, report_sections
from medret.errors import MedretError
from medret.manifest import select_pairs

EXPECTED = {  # study -> (findings, impression)
    "50000001": (
        "There is no focal consolidation, pleural effusion or pneumothorax. "
        "The cardiomediastinal silhouette is normal.",
        "No acute cardiopulmonary process.",
    ),
    "50000002": ("Left lower lobe opacity.", "Left lower lobe pneumonia."),
    "50000003": ("Small right pleural effusion.", "Small right effusion."),
    "50000004": ("Endotracheal tube terminates 4 cm above the carina. Lungs are clear.", ""),
    "50000005": ("", "No acute process."),
    "50000006": (
        "Mild pulmonary edema. Impression: not a header. impression: a lower-case line, not a header either",
        "Mild Edema, NG tube in place.",
    ),
    "50000007": ("", ""),
}


def _entry(tmp_path: Path, **extra) -> dict:
    return {
        "adapter": "mimic_cxr",
        "root": str(tmp_path / "mimic-cxr-jpg"),
        "reports": str(tmp_path / "mimic-cxr-reports.zip"),
        **extra,
    }


def _load(entry: dict) -> pd.DataFrame:
    adapter = get_adapter("mimic_cxr")
    return load_pairs("mimic", entry, adapter.sources("mimic", entry))


@pytest.mark.parametrize("study", sorted(EXPECTED))
def test_report_sections(study):
    text = STUDIES[study][1] or ""
    findings, impression = EXPECTED[study]
    assert report_sections(text) == {"findings": findings, "impression": impression}
    assert choose_section(text, "impression") == impression
    assert choose_section(text, "findings") == findings
    assert choose_section(text, "longest") == (findings if len(findings) > len(impression) else impression)


def test_section_rules_details():
    # FINDINGS AND IMPRESSION counts as both; CRLF line ends; a section ends at a separator line.
    text = "FINAL REPORT\r\n FINDINGS AND IMPRESSION:  Clear\r\n lungs.\r\n" + SEP + "\r\n trailing text\r\n"
    assert report_sections(text) == {"findings": "Clear lungs.", "impression": "Clear lungs."}
    # IMPRESSION wins over CONCLUSION; repeated sections are joined in order.
    text = " IMPRESSION:  One.\n CONCLUSION:  Other.\n IMPRESSION:  Two.\n"
    assert report_sections(text)["impression"] == "One. Two."
    # No headers: the last paragraph, whether blank lines are empty or hold spaces.
    assert report_sections("One.\n\nTwo\n three.\n\n\n")["impression"] == "Two three."
    assert report_sections("Only one paragraph.\n")["impression"] == "Only one paragraph."
    # A wet read alone is not a report.
    assert report_sections(" WET READ: ___ 1:00 AM\n  Clear lungs.\n")["impression"] == ""
    assert label_column("Enlarged Cardiomediastinum") == "label_enlarged_cardiomediastinum"


def test_pairs_table_row_by_row(tmp_path):
    root = build_tree(tmp_path)
    entry = _entry(tmp_path)
    sources = get_adapter("mimic_cxr").sources("mimic", entry)
    assert sources == [
        str(root / "mimic-cxr-2.0.0-metadata.csv.gz"),
        str(root / "mimic-cxr-2.0.0-split.csv.gz"),
        str(root / "mimic-cxr-2.0.0-chexpert.csv.gz"),
        str(tmp_path / "mimic-cxr-reports.zip"),
    ]
    table = load_pairs("mimic", entry, sources)
    labels = [label_column(f) for f in CHEXPERT_LABELS]
    assert list(table.columns) == [
        "pair_id",
        "image_path",
        "report",
        "split",
        "patient_id",
        "study_id",
        "view",
        *sorted(labels),
    ]
    assert len(labels) == 14 and "label_no_finding" in labels and "label_pleural_effusion" in labels
    assert table["pair_id"].tolist() == sorted(d for d, *_ in IMAGES)
    by_id = table.set_index("pair_id")
    for dicom, study, view, part in IMAGES:
        row = by_id.loc[dicom]
        subject = STUDIES[study][0]
        assert row["image_path"] == str(
            root.resolve() / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        )
        assert Path(row["image_path"]).is_file()
        assert row["report"] == EXPECTED[study][1]  # impression by default
        assert (row["split"], row["patient_id"], row["study_id"], row["view"]) == (part, subject, study, view)
        for finding in CHEXPERT_LABELS:
            value = row[label_column(finding)]
            written = LABELS.get(study, {}).get(finding, "")
            if written == "":
                assert math.isnan(value), (dicom, finding)
            else:
                assert value == float(written), (dicom, finding)
    for col in ("pair_id", "image_path", "report", "split", "patient_id", "study_id", "view"):
        assert all(isinstance(v, str) for v in table[col]), col
    assert set(table[labels].stack().dropna()) <= {1.0, 0.0, -1.0}

    # The manifest rules downstream: empty reports dropped, one image per study (PA, then AP).
    manifest = select_pairs(table, "test")[0]
    assert dict(zip(manifest["study_id"], manifest["pair_id"], strict=True)) == {
        "50000003": IMAGES[3][0],
        "50000005": IMAGES[5][0],
        "50000006": IMAGES[7][0],  # AP preferred over LL
    }


def test_reports_directory_and_plain_csv_match_zip_and_gz(tmp_path):
    zipped = _load(_entry(build_tree(tmp_path / "a").parent))
    root = build_tree(tmp_path / "b", gz=False)
    for entry in (
        _entry(tmp_path / "b", reports=str(tmp_path / "b" / "reports")),
        _entry(tmp_path / "b", reports=str(tmp_path / "b" / "reports" / "files")),
    ):
        sources = get_adapter("mimic_cxr").sources("mimic", entry)
        assert sources[:3] == [str(root / f"mimic-cxr-2.0.0-{s}.csv") for s in ("metadata", "split", "chexpert")]
        plain = load_pairs("mimic", entry, sources)
        pd.testing.assert_frame_equal(plain.drop(columns="image_path"), zipped.drop(columns="image_path"))


def test_plain_csv_preferred_over_gz(tmp_path):
    root = build_tree(tmp_path)
    (root / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id,split\n", encoding="utf-8")
    sources = get_adapter("mimic_cxr").sources("mimic", _entry(tmp_path))
    assert sources[1] == str(root / "mimic-cxr-2.0.0-split.csv")
    assert sources[0] == str(root / "mimic-cxr-2.0.0-metadata.csv.gz")


def test_sections_findings_and_longest(tmp_path):
    build_tree(tmp_path)
    for section in ("findings", "longest"):
        table = _load(_entry(tmp_path, section=section)).drop_duplicates("study_id").set_index("study_id")
        for study, (findings, impression) in EXPECTED.items():
            want = findings if section == "findings" or len(findings) > len(impression) else impression
            assert table.loc[study, "report"] == want, (section, study)
    longest = _load(_entry(tmp_path, section="longest")).drop_duplicates("study_id").set_index("study_id")["report"]
    assert longest["50000004"] == EXPECTED["50000004"][0]  # findings when the impression is missing
    assert longest["50000001"] == EXPECTED["50000001"][0]  # findings longer than impression
    assert longest["50000006"] == EXPECTED["50000006"][0]


@pytest.mark.parametrize(
    "content",
    ["s50000001\n\n50000006  # a comment\n", "subject_id,study_id\n10000001,50000001\n12000003,s50000006\n"],
)
def test_study_list(tmp_path, content):
    build_tree(tmp_path)
    (tmp_path / "studies.txt").write_text(content, encoding="utf-8")
    entry = _entry(tmp_path, study_list=str(tmp_path / "studies.txt"))
    sources = get_adapter("mimic_cxr").sources("mimic", entry)
    assert sources[-1] == str(tmp_path / "studies.txt")
    table = load_pairs("mimic", entry, sources)
    assert sorted(table["study_id"].unique()) == ["50000001", "50000006"]
    assert len(table) == 4


def test_study_list_errors(tmp_path):
    build_tree(tmp_path)
    assert_study_list_errors(
        lambda path: _load(_entry(tmp_path, study_list=str(path))),
        tmp_path / "studies.txt",
        unknown="59999999",
        malformed="study-one",
        key="datasets.mimic.study_list",
    )


def test_missing_files(tmp_path):
    root = build_tree(tmp_path)
    sources = get_adapter("mimic_cxr").source_files
    with pytest.raises(MedretError) as exc:
        sources("cxr", _entry(tmp_path, root=str(tmp_path / "absent")))
    assert "absent" in one_line(exc) and "datasets.cxr.root" in str(exc.value)
    with pytest.raises(MedretError) as exc:
        sources("cxr", _entry(tmp_path, reports=str(tmp_path / "absent.zip")))
    assert "absent.zip" in one_line(exc) and "datasets.cxr.reports" in str(exc.value)
    with pytest.raises(MedretError, match=r"datasets\.cxr\.reports is missing"):
        sources("cxr", {"adapter": "mimic_cxr", "root": str(root)})
    with pytest.raises(MedretError, match=r"datasets\.cxr\.section is 'summary'; use one of"):
        sources("cxr", _entry(tmp_path, section="summary"))
    (root / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    with pytest.raises(MedretError) as exc:
        sources("cxr", _entry(tmp_path))
    assert "mimic-cxr-2.0.0-chexpert.csv(.gz): MIMIC-CXR-JPG file not found" in one_line(exc)
    assert "datasets.cxr.root" in str(exc.value)


def test_bad_inputs_at_load(tmp_path):
    root = build_tree(tmp_path)
    entry = _entry(tmp_path)
    sources = get_adapter("mimic_cxr").sources("mimic", entry)
    # A file deleted between planning and loading.
    with pytest.raises(MedretError) as exc:
        load_pairs("mimic", entry, [str(root / "gone.csv"), *sources[1:]])
    assert "gone.csv: MIMIC-CXR-JPG file not found" in one_line(exc)
    # Wrong columns (e.g. the 1.0 metadata or another CSV).
    bad = tmp_path / "bad.csv"
    bad.write_text("dicom_id,study\nx,1\n", encoding="utf-8")
    with pytest.raises(MedretError, match=r"missing column.*subject_id.*expected the MIMIC-CXR-JPG file"):
        load_pairs("mimic", entry, [str(bad), *sources[1:]])
    # Reports that hold none of the studies, and a file that is not a zip.
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("files/p99/p99999999/s59999999.txt", "IMPRESSION: x")
    with pytest.raises(MedretError, match="holds no report of the 7 studies"):
        load_pairs("mimic", entry, [*sources[:3], str(empty)])
    with pytest.raises(MedretError, match="not a zip file"):
        load_pairs("mimic", entry, [*sources[:3], sources[0]])
    # A label value that is not 1, 0, -1 or empty.
    chexpert = pd.read_csv(sources[2], dtype=str, keep_default_na=False)
    chexpert.loc[0, "Edema"] = "yes"
    chexpert.to_csv(tmp_path / "chexpert.csv", index=False)
    with pytest.raises(MedretError, match="'Edema' holds 'yes'"):
        load_pairs("mimic", entry, [*sources[:2], str(tmp_path / "chexpert.csv"), sources[3]])


def test_ms_cxr_boxes_become_regions_of_interest(tmp_path):
    build_tree(tmp_path)
    dicoms = [image[0] for image in IMAGES]
    ms_cxr = tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv"
    ms_cxr.write_text(
        "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
        f"{dicoms[0]},Pneumonia,left lower lobe opacity,x.jpg,100,200,300,100,1000,800\n"
        f"{dicoms[0]},Pneumonia,right base,x.jpg,600,500,200,200,1000,800\n"
        f"{dicoms[1]},Cardiomegaly,enlarged heart,y.jpg,0,0,500,400,500,400\n"
        "not-in-mimic,Edema,edema,z.jpg,1,1,2,2,10,10\n"
    )
    table = _load(_entry(tmp_path, ms_cxr=str(ms_cxr))).set_index("pair_id")
    regions = ["region_top", "region_left", "region_height", "region_width"]
    # the bounding box of the image's boxes, as fractions: x 100..800 of 1000, y 200..700 of 800
    assert table.loc[dicoms[0], regions].tolist() == pytest.approx([0.25, 0.1, 0.625, 0.7])
    assert table.loc[dicoms[1], regions].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert table.drop(index=dicoms[:2])[regions].isna().all().all()
    assert "region_top" not in _load(_entry(tmp_path)).columns
    ms_cxr.write_text(ms_cxr.read_text().replace(",600,500,200,200,", ",900,500,200,200,"))
    with pytest.raises(MedretError, match=r"row 3 has box x=900.0.*outside its 1000.0 x 800.0 image"):
        _load(_entry(tmp_path, ms_cxr=str(ms_cxr)))
    ms_cxr.write_text("dicom_id,x,y,w,h,image_width,image_height\nnope,1,1,2,2,10,10\n")
    with pytest.raises(MedretError, match="none of its 1 images is in the MIMIC-CXR metadata"):
        _load(_entry(tmp_path, ms_cxr=str(ms_cxr)))
