"""MIMIC-CXR: the JPG images, split and CheXpert labels of MIMIC-CXR-JPG 2.x and the MIMIC-CXR reports.

Config entry (``adapter: mimic_cxr``)::

    root: the MIMIC-CXR-JPG directory as downloaded: files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg and
          mimic-cxr-2.0.0-{metadata,split,chexpert}.csv (or .csv.gz; the plain .csv wins if both exist)
    reports: mimic-cxr-reports.zip, or a directory with the unpacked files/pXX/pXXXXXXXX/sXXXXXXXX.txt
             (the directory may also be the ``files`` directory itself)
    section: impression (default) | findings | longest (the longer of findings and impression)
    study_list: optional text/CSV file of the study ids to keep
    ms_cxr: optional MS-CXR box file (MS_CXR_Local_Alignment_v1.x.csv, PhysioNet): regions of interest

One pair per image (``pair_id`` = dicom_id, ``patient_id`` = subject_id, ``study_id`` = study_id,
``view`` = ViewPosition, ``split`` = train / validate / test from the split CSV); every image of a
study gets that study's report and CheXpert labels (``label_<snake_case>``: 1, 0, -1, NaN; NaN for
studies the CheXpert CSV lacks). Image paths are absolute; the images themselves are not checked here.

MS-CXR (Boecking et al. 2022; phrase-grounding boxes on MIMIC-CXR images): one row per box with
``dicom_id``, ``category_name``, ``label_text``, ``x``, ``y``, ``w``, ``h`` (pixels), ``image_width`` and
``image_height``. An image's region of interest (``region_*``, fractions of the image) is the bounding box of all
its boxes; images MS-CXR does not cover have none.

Study list: one id per line (``50414267`` or ``s50414267``; blank lines and ``#`` comments ignored),
or a CSV with a ``study_id`` column. Ids missing from the metadata are ignored; if none match, it is
an error.

Report sectioning (:func:`report_sections`), applied to the text of ``sXXXXXXXX.txt``:

1. Lines made only of underscores are separators; the ``FINAL REPORT`` / ``FINAL ADDENDUM`` banner
   lines are dropped (both end the block before them).
2. A ``WET READ`` block (the preliminary read: from a line starting ``WET READ`` up to the next
   separator or banner) is excluded from every section.
3. An addendum (from a line starting ``ADDENDUM`` or a ``FINAL ADDENDUM`` banner up to the next
   separator or banner) is excluded from every section; it also ends the section before it.
4. A section header is an upper-case name at the start of a line followed by a colon
   (``FINDINGS:``, ``IMPRESSION:``, ``INDICATION:``, ``PA AND LATERAL CHEST:``...); text may follow
   on the same line. A section runs to the next header, separator, banner or addendum. Headers
   in lower or mixed case (``Impression:``) are ordinary text.
5. ``findings`` = the FINDINGS section(s); ``impression`` = the IMPRESSION section(s), else the
   CONCLUSION section(s); ``FINDINGS AND IMPRESSION:`` counts as both. Repeated sections are joined
   in order.
6. A report with no header at all (outside wet reads and addenda): impression = its last paragraph
   (paragraphs are separated by blank lines); findings = "". A report with headers but without the
   chosen section gives "" (the manifest drops pairs with empty reports).
7. Whitespace (newlines included) is collapsed to single spaces; ``___`` de-identification marks stay.
"""

from __future__ import annotations

import re
import zipfile
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
    find_table,
    keep_studies,
    label_column,
    pick_section,
    read_csv_columns,
    read_study_ids,
    study_list_option,
    study_list_source,
)
from medret.errors import MedretError
from medret.plugins import Option

METADATA = "mimic-cxr-2.0.0-metadata"
SPLIT = "mimic-cxr-2.0.0-split"
CHEXPERT = "mimic-cxr-2.0.0-chexpert"
WHAT = "MIMIC-CXR-JPG file"
_DIGITS = re.compile(r"\d+")
_SEPARATOR = re.compile(r"^\s*_{3,}\s*$")
_BANNER = re.compile(r"^\s*FINAL\s+(REPORT|ADDENDUM)\s*$")
_WET_READ = re.compile(r"^\s*WET\s+READ\b")
_ADDENDUM = re.compile(r"^\s*ADDENDUM\b")
_HEADER = re.compile(r"^\s*([A-Z][A-Z ()/,&'-]*[A-Z)])\s*:(.*)$")
_REPORT_MEMBER = re.compile(r"(?:^|/)p(\d+)/s(\d+)\.txt$")


# --- report sectioning ---------------------------------------------------------------------------


def _clean(lines: list[str]) -> str:
    return " ".join(" ".join(lines).split())


def report_sections(text: str) -> dict[str, str]:
    """Split a MIMIC-CXR report into ``findings`` and ``impression`` (rules in the module docstring)."""
    sections: dict[str, list[str]] = {}
    body: list[str] = []  # lines outside wet reads, addenda and banners (for the no-header fallback)
    current: str | None = None  # name of the open section; "" = preamble, None = excluded block
    excluded = False
    has_header = False
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _SEPARATOR.match(line):
            current, excluded = "", False
            body.append("")
            continue
        banner = _BANNER.match(line)
        if banner:
            excluded = banner.group(1) == "ADDENDUM"
            current = None if excluded else ""
            body.append("")
            continue
        if _WET_READ.match(line) or _ADDENDUM.match(line):
            current, excluded = None, True
            continue
        if excluded:
            continue
        header = _HEADER.match(line)
        if header:
            has_header = True
            current = " ".join(header.group(1).split())
            sections.setdefault(current, []).append(header.group(2))
            body.append(line)
            continue
        body.append(line)
        if current:
            sections[current].append(line)

    def joined(*names: str) -> str:
        return _clean([line for name in names for line in sections.get(name, [])])

    both = ("FINDINGS AND IMPRESSION", "IMPRESSION AND FINDINGS")
    findings = joined("FINDINGS", *both)
    impression = joined("IMPRESSION", "IMPRESSIONS", *both) or joined("CONCLUSION", "CONCLUSIONS")
    if not has_header:
        paragraphs: list[list[str]] = [[]]
        for line in body:  # blank lines (whitespace only, as in MIMIC) separate paragraphs
            if line.strip():
                paragraphs[-1].append(line)
            elif paragraphs[-1]:
                paragraphs.append([])
        impression = _clean(next((p for p in reversed(paragraphs) if p), []))
    return {"findings": findings, "impression": impression}


def choose_section(text: str, section: str) -> str:
    """The configured ``section`` of a report: impression, findings or the longer of the two."""
    parts = report_sections(text)
    return pick_section(parts["findings"], parts["impression"], section)


# --- files ---------------------------------------------------------------------------------------


def _mimic_sources(name: str, entry: Mapping[str, Any]) -> list[str]:
    for key in ("root", "reports"):
        if key not in entry:
            raise MedretError(f"config key datasets.{name}.{key} is missing; see the mimic_cxr adapter's options")
    check_section(entry, f"datasets.{name}.section")
    root = Path(entry["root"])
    if not root.is_dir():
        raise MedretError(f"{root}: MIMIC-CXR-JPG directory not found; check the config key datasets.{name}.root")
    key = f"datasets.{name}.root"
    tables = [str(find_table(root, f"{stem}.csv", WHAT, key)) for stem in (METADATA, SPLIT, CHEXPERT)]
    reports = Path(entry["reports"])
    if not reports.exists():
        raise MedretError(
            f"{reports}: MIMIC-CXR reports not found (mimic-cxr-reports.zip or its unpacked directory); "
            f"check the config key datasets.{name}.reports"
        )
    ms_cxr = [str(entry["ms_cxr"])] if entry.get("ms_cxr") else []
    return [*tables, str(reports), *study_list_source(entry, name), *ms_cxr]


MS_CXR_COLUMNS = ("dicom_id", "x", "y", "w", "h", "image_width", "image_height")


def read_ms_cxr(path: str | Path) -> pd.DataFrame:
    """Each MS-CXR image's region of interest: the bounding box of its boxes as fractions of the image (the four
    ``region_*`` columns, indexed by dicom_id)."""
    from medret.datasets import REGION_COLUMNS

    key = "datasets.<name>.ms_cxr"
    boxes = read_csv_columns(path, MS_CXR_COLUMNS, "MS-CXR", key)
    values = boxes[list(MS_CXR_COLUMNS[1:])].apply(lambda col: pd.to_numeric(col.str.strip(), errors="coerce"))
    x, y, w, h, width, height = (values[c].to_numpy(float) for c in MS_CXR_COLUMNS[1:])
    with np.errstate(invalid="ignore"):
        bad = ~((x >= 0) & (y >= 0) & (w > 0) & (h > 0) & (x + w <= width + 0.5) & (y + h <= height + 0.5))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MedretError(
            f"{path}: row {row + 2} has box x={x[row]}, y={y[row]}, w={w[row]}, h={h[row]} outside its "
            f"{width[row]} x {height[row]} image (or not numbers); check the file (config key {key})"
        )
    frame = pd.DataFrame(
        {
            "dicom_id": boxes["dicom_id"].str.strip(),
            "x0": x / width,
            "y0": y / height,
            "x1": np.minimum(x + w, width) / width,
            "y1": np.minimum(y + h, height) / height,
        }
    )
    union = frame.groupby("dicom_id").agg(x0=("x0", "min"), y0=("y0", "min"), x1=("x1", "max"), y1=("y1", "max"))
    return pd.DataFrame(
        {
            REGION_COLUMNS[0]: union["y0"],
            REGION_COLUMNS[1]: union["x0"],
            REGION_COLUMNS[2]: union["y1"] - union["y0"],
            REGION_COLUMNS[3]: union["x1"] - union["x0"],
        }
    )


def _study_id(value: str) -> str:
    value = value.strip()
    return value[1:] if value[:1] in ("s", "S") and value[1:].isdigit() else value


def read_study_list(path: str | Path) -> set[str]:
    """Study ids (without the ``s`` prefix) of a study-list file (formats in the module docstring)."""
    return read_study_ids(path, _DIGITS, "50414267 or s50414267", normalise=_study_id)


def read_reports(path: str | Path, studies: Mapping[str, str]) -> dict[str, str]:
    """Report texts of ``studies`` (study id -> subject id) from the zip or directory; missing ones are left out."""
    path = Path(path)
    out: dict[str, str] = {}
    if path.is_dir():
        base = path / "files" if (path / "files").is_dir() else path
        for study, subject in studies.items():
            file = base / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
            if file.is_file():
                out[study] = file.read_text(encoding="utf-8", errors="replace")
        return out
    if not path.is_file():
        raise MedretError(f"{path}: MIMIC-CXR reports not found; check the config key datasets.<name>.reports")
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                match = _REPORT_MEMBER.search(member)
                if match and studies.get(match.group(2)) == match.group(1):
                    out[match.group(2)] = archive.read(member).decode("utf-8", errors="replace")
    except zipfile.BadZipFile as exc:
        raise MedretError(
            f"{path}: not a zip file ({exc}); set datasets.<name>.reports to the zip or its directory"
        ) from exc
    return out


# --- the adapter ---------------------------------------------------------------------------------


def load_mimic(entry: Mapping[str, Any], sources: list[str]) -> pd.DataFrame:
    """Read MIMIC-CXR into the standard pairs table (``sources`` as listed by the adapter)."""
    section = check_section(entry, "datasets.<name>.section")
    root_key = "datasets.<name>.root"
    meta = read_csv_columns(sources[0], ("dicom_id", "subject_id", "study_id", "ViewPosition"), WHAT, root_key)
    split = read_csv_columns(sources[1], ("dicom_id", "split"), WHAT, root_key)
    chexpert = read_csv_columns(sources[2], ("study_id", *CHEXPERT_LABELS), WHAT, root_key)
    if meta.empty:
        raise MedretError(f"{sources[0]}: the metadata CSV has no rows; download it again from PhysioNet")

    meta = meta[["dicom_id", "subject_id", "study_id", "ViewPosition"]].apply(lambda col: col.str.strip())
    if entry.get("study_list"):
        study_list = sources[4] if len(sources) > 4 else entry["study_list"]
        meta = keep_studies(meta, read_study_list(study_list), study_list, sources[0])
    split = split.assign(dicom_id=split["dicom_id"].str.strip(), split=split["split"].str.strip())
    table = meta.merge(split[["dicom_id", "split"]].drop_duplicates("dicom_id"), on="dicom_id", how="left")
    table["split"] = table["split"].fillna("")

    studies = dict(zip(table["study_id"], table["subject_id"], strict=True))
    texts = read_reports(sources[3], studies)
    if not texts:
        raise MedretError(
            f"{sources[3]}: holds no report of the {len(studies)} studies in the metadata; "
            "check the config key datasets.<name>.reports"
        )
    reports = {study: choose_section(text, section) for study, text in texts.items()}

    root = Path(entry["root"]).resolve()
    out = pd.DataFrame(
        {
            "pair_id": table["dicom_id"],
            "image_path": [
                str(root / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{study}" / f"{dicom}.jpg")
                for dicom, subj, study in zip(table["dicom_id"], table["subject_id"], table["study_id"], strict=True)
            ],
            "report": table["study_id"].map(reports).fillna(""),
            "split": table["split"],
            "patient_id": table["subject_id"],
            "study_id": table["study_id"],
            "view": table["ViewPosition"],
        }
    )
    labels = pd.DataFrame({"study_id": chexpert["study_id"].str.strip()})
    for finding in CHEXPERT_LABELS:
        raw = chexpert[finding].str.strip()
        values = pd.to_numeric(raw.replace("", None), errors="coerce").astype(float)
        bad = raw[~(values.isin([1.0, 0.0, -1.0]) | (raw == ""))]
        if len(bad):
            raise MedretError(
                f"{sources[2]}: column {finding!r} holds {bad.iloc[0]!r}; labels must be 1, 0, -1 or empty"
            )
        labels[label_column(finding)] = values
    out = out.merge(labels.drop_duplicates("study_id"), on="study_id", how="left")
    if entry.get("ms_cxr"):
        regions = read_ms_cxr(sources[-1])
        if not regions.index.isin(out["pair_id"]).any():
            raise MedretError(
                f"{sources[-1]}: none of its {len(regions)} images is in the MIMIC-CXR metadata; check the config "
                "key datasets.<name>.ms_cxr"
            )
        out = out.join(regions, on="pair_id")
    return out.sort_values("pair_id").reset_index(drop=True)


register_adapter(
    DatasetAdapter(
        "mimic_cxr",
        _mimic_sources,
        load_mimic,
        "MIMIC-CXR-JPG 2.x images with MIMIC-CXR report sections",
        options={
            "root": Option(
                "MIMIC-CXR-JPG 2.x directory as downloaded: files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg and "
                "mimic-cxr-2.0.0-{metadata,split,chexpert}.csv or .csv.gz",
                {"type": "string"},
                required=True,
                path="directory",
            ),
            "reports": Option(
                "mimic-cxr-reports.zip, or its unpacked directory (files/pXX/pXXXXXXXX/sXXXXXXXX.txt)",
                {"type": "string"},
                required=True,
                path="file or directory",
            ),
            "section": SECTION_OPTION,
            "study_list": study_list_option("5xxxxxxx or s5xxxxxxx"),
            "ms_cxr": Option(
                "MS-CXR box file (MS_CXR_Local_Alignment_v1.x.csv from PhysioNet, credentialed): each image's region "
                "of interest for occlusion placement inside/outside (the bounding box of its boxes)",
                {"type": "string"},
                path="file",
            ),
        },
    )
)
