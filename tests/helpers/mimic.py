"""A small MIMIC-CXR-JPG tree with reports, as published: layout, file names, CSV columns and report formats."""

from __future__ import annotations

import gzip
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medret.datasets.common import CHEXPERT_LABELS

SEP = " " + "_" * 78

R_PLAIN = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // eval for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""

R_WET_READ = f""" WET READ: ___ ___ ___ 3:52 PM
  Possible left lower lobe pneumonia.
 IMPRESSION:  Preliminary, not the final impression.
{SEP}
                                 FINAL REPORT
 INDICATION:  Fever.

 FINDINGS:  Left lower lobe opacity.

 IMPRESSION:  Left lower lobe pneumonia.
"""

R_ADDENDUM = f"""                                 FINAL ADDENDUM
 ADDENDUM:  Findings discussed with Dr. ___ at 4:10 PM.
 IMPRESSION:  Addendum text, excluded.
{SEP}
                                 FINAL REPORT
 FINDINGS:  Small right pleural effusion.

 IMPRESSION:  Small right
 effusion.

 ADDENDUM:  Later note,
 IMPRESSION:  also excluded.
"""

R_NO_IMPRESSION = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)
 FINDINGS:  Endotracheal tube terminates 4 cm above the carina.
 Lungs are clear.
 NOTIFICATION:  The findings were discussed with Dr. ___.
"""

R_NO_HEADERS = """ Comparison to prior study.

 Heart size is normal.  Lungs are
 clear.

 No acute
   process.

"""

R_CASE = """                                 FINAL REPORT
 HISTORY:  Dyspnea.
 FINDINGS:  Mild pulmonary edema.  Impression: not a header.
 impression: a lower-case line, not a header either
 CONCLUSION:  Mild Edema,
 NG tube in place.
"""


def _as_written(text: str) -> str:
    """MIMIC-CXR's blank lines hold one space, and headers alone on a line end with ': '."""
    text = re.sub(r"(?m)^$", " ", text)
    return re.sub(r"(?m)^( [A-Z]+):$", r"\1: ", text)


R_PLAIN, R_WET_READ, R_ADDENDUM, R_NO_HEADERS = map(_as_written, (R_PLAIN, R_WET_READ, R_ADDENDUM, R_NO_HEADERS))

# study -> (subject, report text or None for no report file)
STUDIES = {
    "50000001": ("10000001", R_PLAIN),
    "50000002": ("10000001", R_WET_READ),
    "50000003": ("11000002", R_ADDENDUM),
    "50000004": ("11000002", R_NO_IMPRESSION),
    "50000005": ("12000003", R_NO_HEADERS),
    "50000006": ("12000003", R_CASE),
    "50000007": ("13000004", None),
}

# dicom_id, study, ViewPosition, split
IMAGES = [
    ("0a1b2c3d-11111111-22222222-33333333-44444444", "50000001", "PA", "train"),
    ("0a1b2c3d-55555555-66666666-77777777-88888888", "50000001", "LATERAL", "train"),
    ("1f2e3d4c-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd", "50000002", "AP", "validate"),
    ("2b3c4d5e-00000000-11111111-22222222-33333333", "50000003", "AP", "test"),
    ("3c4d5e6f-00000000-11111111-22222222-33333333", "50000004", "", "test"),
    ("4d5e6f7a-00000000-11111111-22222222-33333333", "50000005", "PA", "test"),
    ("5e6f7a8b-00000000-11111111-22222222-33333333", "50000006", "LL", "test"),
    ("5e6f7a8b-99999999-11111111-22222222-33333333", "50000006", "AP", "test"),
    ("6f7a8b9c-00000000-11111111-22222222-33333333", "50000007", "PA", "test"),
]

# CheXpert labels per study as written in the CSV ("" = missing); study 50000005 has no row.
LABELS = {
    "50000001": {"No Finding": "1.0"},
    "50000002": {"Pneumonia": "1.0", "Consolidation": "-1.0", "Pleural Effusion": "0.0"},
    "50000003": {"Pleural Effusion": "1.0"},
    "50000004": {"Support Devices": "1.0", "No Finding": "1.0"},
    "50000006": {"Edema": "1.0", "Support Devices": "1.0", "Enlarged Cardiomediastinum": "-1.0"},
    "50000007": {"Lung Opacity": "0.0"},
}

META_COLUMNS = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]


def _write_csv(rows: list[dict], columns: list[str], path: Path, gz: bool) -> None:
    frame = pd.DataFrame(rows, columns=columns)
    if gz:
        frame.to_csv(path.with_name(path.name + ".gz"), index=False, compression="gzip")
    else:
        frame.to_csv(path, index=False)


def build_tree(tmp_path: Path, *, gz: bool = True) -> Path:
    """MIMIC-CXR-JPG under tmp/mimic-cxr-jpg, reports as tmp/mimic-cxr-reports.zip and tmp/reports/."""
    root = tmp_path / "mimic-cxr-jpg"
    meta, split = [], []
    for dicom, study, view, part in IMAGES:
        subject = STUDIES[study][0]
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 10), 100, np.uint8)).save(folder / f"{dicom}.jpg", quality=90)
        meta.append(
            {
                "dicom_id": dicom,
                "subject_id": subject,
                "study_id": study,
                "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                "ViewPosition": view,
                "Rows": 12,
                "Columns": 10,
                "StudyDate": 21800506,
                "StudyTime": 213014.531,
                "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                "ViewCodeSequence_CodeMeaning": "postero-anterior",
                "PatientOrientationCodeSequence_CodeMeaning": "Erect",
            }
        )
        split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": part})
    chexpert = [
        {"subject_id": STUDIES[study][0], "study_id": study, **{f: values.get(f, "") for f in CHEXPERT_LABELS}}
        for study, values in LABELS.items()
    ]
    _write_csv(meta, META_COLUMNS, root / "mimic-cxr-2.0.0-metadata.csv", gz)
    _write_csv(split, ["dicom_id", "study_id", "subject_id", "split"], root / "mimic-cxr-2.0.0-split.csv", gz)
    _write_csv(chexpert, ["subject_id", "study_id", *CHEXPERT_LABELS], root / "mimic-cxr-2.0.0-chexpert.csv", gz)
    with zipfile.ZipFile(tmp_path / "mimic-cxr-reports.zip", "w") as archive:
        archive.writestr("cxr-study-list.csv.gz", gzip.compress(b"subject_id,study_id,path\n"))
        for study, (subject, text) in STUDIES.items():
            if text is None:
                continue
            member = f"files/p{subject[:2]}/p{subject}/s{study}.txt"
            archive.writestr(member, text)
            out = tmp_path / "reports" / member
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
    return root
