"""CheXpert Plus: the report CSV, PNG (or original JPEG) images and CheXbert labels of Stanford AIMI's release.

CheXpert Plus (Chambon et al. 2024) pairs the 223,462 CheXpert chest radiographs with their reports.
Config entry (``adapter: chexpert_plus``)::

    reports: df_chexpert_plus_240401.csv as downloaded (or gzipped, .csv.gz): one row per image
    root: the image directory whose train/ and valid/ hold patientXXXXX/studyN/viewM_<frontal|lateral>.*;
          for the PNG release that is the unpacked PNG directory (some archives nest it as PNG/PNG)
    image_format: png (default: the PNG release, path_to_image with .jpg replaced by .png) |
                  jpg (the original CheXpert-v1.0 JPEGs: path_to_image as written)
    labels: optional: the unpacked chexbert_labels directory ({impression,findings}_fixed.json)
    section: impression (default) | findings | longest (the longer of the two)
    study_list: optional file of study ids (patient00001/study1) to keep
    split: valid -- CheXpert Plus has train (223,228 images) and valid (234 images) only, no test split

One pair per CSV row (image):

* ``pair_id`` = ``path_to_image`` without its suffix (``train/patient00001/study1/view1_frontal``), so
  the PNG and JPEG releases give the same ids;
* ``image_path`` = ``root / path_to_image`` (suffix per ``image_format``), absolute; images are not read here;
* ``patient_id`` = ``deid_patient_id``; ``study_id`` = the patient and study folders of ``path_to_image``
  (``patient00001/study1``: study folders restart at 1 for every patient);
* ``view`` = ``ap_pa`` when it is AP or PA (it is empty on every lateral image), else ``frontal_lateral``
  upper-cased: ``LATERAL``, or ``FRONTAL`` for the few frontal images whose ``ap_pa`` says LL or RL;
* ``split`` = the CSV's ``split`` (``train`` / ``valid``);
* ``report`` = the row's ``section_impression`` (default) or ``section_findings`` column, or the
  longer of the two (``longest``; ties go to the impression), whitespace collapsed to single spaces and
  letter case kept (many reports are upper-case). There is no fallback to another column: the other
  ``section_*`` columns are not findings or impressions (``section_end_of_impression`` holds the summary
  code and the sign-off, e.g. "2-ABNORMAL, PREVIOUSLY REPORTED I have personally reviewed the images...").
  A row without the chosen section gets "" and the manifest drops it; ``longest`` takes whichever
  section a report has. (The release's own sectioning sometimes files a report's only section, headed
  IMPRESSION in ``report``, under ``section_findings``; ``longest`` keeps such reports.)

Labels: with ``labels`` set, the 14 CheXpert findings become ``label_<snake_case>`` columns (1, 0, -1,
NaN), taken from the CheXbert file of the section used for that row's report (impression_fixed.json
or findings_fixed.json, JSON lines keyed by ``path_to_image``; ``null`` = not mentioned = NaN). Rows the
file lacks get NaN. Without ``labels`` there are no label columns.

Rows that repeat exactly are read once; a ``path_to_image`` that appears twice with different values
is an error. Study list: one id a line (blank lines and ``#`` comments ignored) or a CSV with a
``study_id`` column; ids missing from the CSV are ignored; if none match, it is an error.

The readers and section rules it shares with the other adapters are in :mod:`medret.datasets.common`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medret.datasets import DatasetAdapter, register_adapter
from medret.datasets.common import (
    CHEXPERT_LABELS,
    SECTION_OPTION,
    check_section,
    chosen_section,
    clean_text,
    keep_studies,
    label_column,
    read_csv_columns,
    read_study_ids,
    study_list_option,
    study_list_source,
    unique_rows,
)
from medret.errors import MedretError
from medret.plugins import Option

WHAT = "CheXpert Plus report CSV (df_chexpert_plus_240401.csv)"
COLUMNS = (
    "path_to_image",
    "frontal_lateral",
    "ap_pa",
    "deid_patient_id",
    "split",
    "section_findings",
    "section_impression",
)
IMAGE_FORMATS = ("png", "jpg")
LABEL_FILES = {"impression": "impression_fixed.json", "findings": "findings_fixed.json"}
#: The CheXbert label files each section needs (``longest`` picks per row).
LABEL_SECTIONS = {"impression": ("impression",), "findings": ("findings",), "longest": ("impression", "findings")}

_IMAGE_PATH = re.compile(r"^[^/]+/([^/]+)/([^/]+)/[^/]+$")  # <split>/<patient>/<study>/<file>
_STUDY_ID = re.compile(r"^patient\d+/study\d+$")


# --- CheXbert labels -----------------------------------------------------------------------------


def read_chexbert_labels(path: str | Path) -> pd.DataFrame:
    """A CheXbert JSON-lines label file as ``path_to_image`` plus ``label_<finding>`` float columns."""
    path = Path(path)
    if not path.is_file():
        raise MedretError(f"{path}: CheXbert label file not found; check the config key datasets.<name>.labels")
    records = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MedretError(
                    f"{path}: line {number} is not JSON ({exc.msg}); expected CheXpert Plus's JSON-lines label file"
                ) from exc
            if not isinstance(record, dict):
                raise MedretError(f"{path}: line {number} is not a JSON object; expected one record a line")
            records.append(record)
    frame = pd.DataFrame.from_records(records)
    missing = [c for c in ("path_to_image", *CHEXPERT_LABELS) if c not in frame.columns]
    if missing:
        raise MedretError(
            f"{path}: missing key(s) {', '.join(missing)}; expected CheXpert Plus's chexbert_labels/*_fixed.json, "
            "check the config key datasets.<name>.labels"
        )
    out = pd.DataFrame({"path_to_image": frame["path_to_image"].astype(str).str.strip()})
    for finding in CHEXPERT_LABELS:
        raw = frame[finding]
        values = pd.to_numeric(raw, errors="coerce").astype(float)
        bad = raw[raw.notna() & ~values.isin([1.0, 0.0, -1.0])]
        if len(bad):
            where = out["path_to_image"][bad.index[0]]
            # tolist() turns numpy scalars into plain values, so the message shows 2.0, not np.float64(2.0).
            raise MedretError(
                f"{path}: {finding!r} of {where} holds {bad.tolist()[0]!r}; labels must be 1, 0, -1 or null"
            )
        out[label_column(finding)] = values
    return unique_rows(out, "path_to_image", path)


# --- the adapter ---------------------------------------------------------------------------------


def _image_format(entry: Mapping[str, Any], key: str) -> str:
    image_format = entry.get("image_format", "png")
    if image_format not in IMAGE_FORMATS:
        raise MedretError(f"config key {key} is {image_format!r}; use one of: {', '.join(IMAGE_FORMATS)}")
    return image_format


def _chexpert_sources(name: str, entry: Mapping[str, Any]) -> list[str]:
    for key in ("root", "reports"):
        if key not in entry:
            raise MedretError(f"config key datasets.{name}.{key} is missing; see the chexpert_plus adapter's options")
    section = check_section(entry, f"datasets.{name}.section")
    _image_format(entry, f"datasets.{name}.image_format")
    reports = Path(entry["reports"])
    if not reports.is_file():
        raise MedretError(f"{reports}: {WHAT} not found; check the config key datasets.{name}.reports")
    root = Path(entry["root"])
    if not root.is_dir():
        raise MedretError(f"{root}: CheXpert Plus image directory not found; check the config key datasets.{name}.root")
    if not ((root / "train").is_dir() or (root / "valid").is_dir()):
        raise MedretError(
            f"{root}: holds no train/ or valid/ directory; set datasets.{name}.root to the directory whose "
            "train/ and valid/ hold patientXXXXX/studyN/ (the unpacked PNG directory, sometimes PNG/PNG)"
        )
    sources = [str(reports)]
    if entry.get("labels"):
        labels = Path(entry["labels"])
        if not labels.is_dir():
            raise MedretError(
                f"{labels}: CheXbert label directory not found (the unpacked chexbert_labels.zip); "
                f"check the config key datasets.{name}.labels"
            )
        for part in LABEL_SECTIONS[section]:
            file = labels / LABEL_FILES[part]
            if not file.is_file():
                raise MedretError(
                    f"{file}: CheXbert label file not found; set datasets.{name}.labels to the unpacked "
                    "chexbert_labels directory, or remove the key to run without labels"
                )
            sources.append(str(file))
    sources += study_list_source(entry, name)
    return sources


def _views(frontal_lateral: pd.Series, ap_pa: pd.Series) -> pd.Series:
    # ap_pa (empty on every lateral image) refines a frontal view into AP or PA; LL/RL there is noise.
    projection = ap_pa.str.strip().str.upper()
    return projection.where(projection.isin(["AP", "PA"]), frontal_lateral.str.strip().str.upper())


def load_chexpert_plus(entry: Mapping[str, Any], sources: list[str]) -> pd.DataFrame:
    """Read CheXpert Plus into the standard pairs table (``sources`` as listed by the adapter)."""
    section = check_section(entry, "datasets.<name>.section")
    image_format = _image_format(entry, "datasets.<name>.image_format")
    parts = LABEL_SECTIONS[section] if entry.get("labels") else ()
    csv_path = sources[0]
    raw = read_csv_columns(csv_path, COLUMNS, WHAT, "datasets.<name>.reports")
    if raw.empty:
        raise MedretError(f"{csv_path}: the CSV has no rows; download the {WHAT} again")
    table = unique_rows(raw.assign(path_to_image=raw["path_to_image"].str.strip()), "path_to_image", csv_path)
    folders = table["path_to_image"].str.extract(_IMAGE_PATH)
    bad = table["path_to_image"][folders[0].isna()]
    if len(bad):
        raise MedretError(
            f"{csv_path}: row {bad.index[0] + 2}: path_to_image {bad.iloc[0]!r} is not "
            f"<split>/patientXXXXX/studyN/<file>; expected the {WHAT}, check the config key datasets.<name>.reports"
        )
    table = table.assign(study_id=folders[0] + "/" + folders[1])
    if entry.get("study_list"):
        study_list = sources[1 + len(parts)] if len(sources) > 1 + len(parts) else entry["study_list"]
        ids = read_study_ids(study_list, _STUDY_ID, "patient00001/study1")
        table = keep_studies(table, ids, study_list, csv_path)
    table = table.reset_index(drop=True)

    findings = table["section_findings"].map(clean_text)
    impression = table["section_impression"].map(clean_text)
    # The section each row's report comes from; under `longest` it also decides the label file.
    used = pd.Series([chosen_section(f, i, section) for f, i in zip(findings, impression, strict=True)])
    # Vectorised string edits: pathlib on 223,462 rows costs seconds.
    stem = table["path_to_image"].str.replace(r"\.[^./]*$", "", regex=True)
    root = str(Path(entry["root"]).resolve())
    out = pd.DataFrame(
        {
            "pair_id": stem,
            "image_path": root + "/" + (stem + ".png" if image_format == "png" else table["path_to_image"]),
            "report": findings.where(used == "findings", impression),
            "split": table["split"].str.strip(),
            "patient_id": table["deid_patient_id"].str.strip(),
            "study_id": table["study_id"],
            "view": _views(table["frontal_lateral"], table["ap_pa"]),
        }
    )
    if parts:
        columns = [label_column(finding) for finding in CHEXPERT_LABELS]
        values = np.full((len(table), len(columns)), np.nan)
        for part, labels_path in zip(parts, sources[1 : 1 + len(parts)], strict=True):
            labels = read_chexbert_labels(labels_path).set_index("path_to_image")
            rows = (used == part).to_numpy()
            values[rows] = labels.reindex(table["path_to_image"][rows])[columns].to_numpy(float)
        out[columns] = values
    return out.sort_values("pair_id").reset_index(drop=True)


register_adapter(
    DatasetAdapter(
        "chexpert_plus",
        _chexpert_sources,
        load_chexpert_plus,
        "CheXpert Plus report CSV with its PNG (or CheXpert JPEG) images and CheXbert labels",
        options={
            "root": Option(
                "image directory whose train/ and valid/ hold patientXXXXX/studyN/viewM_*.png: the unpacked PNG "
                "archive (sometimes PNG/PNG), or CheXpert-v1.0 with image_format jpg",
                {"type": "string"},
                required=True,
                path="directory",
            ),
            "reports": Option(
                "the report CSV df_chexpert_plus_240401.csv (or .csv.gz)",
                {"type": "string"},
                required=True,
                path="file",
            ),
            "labels": Option(
                "optional: the unpacked chexbert_labels directory (impression_fixed.json, findings_fixed.json); its "
                "14 CheXpert findings become label_* columns; without it, no label columns",
                {"type": "string"},
                path="directory",
            ),
            "image_format": Option(
                "png: the CheXpert Plus PNG release (path_to_image with .png); jpg: the original CheXpert-v1.0 "
                "JPEGs (path_to_image as written)",
                {"type": "string", "enum": list(IMAGE_FORMATS)},
                default="png",
            ),
            "section": SECTION_OPTION,
            "study_list": study_list_option("patientXXXXX/studyN"),
        },
        requires=("split",),  # CheXpert Plus has only train and valid
    )
)
