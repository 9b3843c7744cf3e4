"""What the dataset adapters share: CheXpert label names, report sections, CSV and study-list readers.

Every reader raises a one-line MedretError naming the file and the config key to fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from medret.errors import MedretError
from medret.plugins import Option

#: The 14 CheXpert findings, as the CheXpert labeller and CheXbert name them.
CHEXPERT_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
#: Report sections a dataset entry's ``section`` may name.
SECTIONS = ("impression", "findings", "longest")


def label_column(finding: str) -> str:
    """``Enlarged Cardiomediastinum`` -> ``label_enlarged_cardiomediastinum``."""
    return "label_" + re.sub(r"[^a-z0-9]+", "_", finding.lower()).strip("_")


def clean_text(text: str) -> str:
    """Collapse whitespace (newlines included) to single spaces and strip the ends."""
    return " ".join(text.split())


def chosen_section(findings: str, impression: str, section: str) -> str:
    """The section a report takes under ``section``: ``findings`` or ``impression``.

    ``longest`` takes the longer of the two; ties (both empty included) go to the impression.
    """
    if section == "longest":
        return "findings" if len(findings) > len(impression) else "impression"
    return section


def pick_section(findings: str, impression: str, section: str) -> str:
    """The text of the configured ``section`` (impression, findings or longest)."""
    return findings if chosen_section(findings, impression, section) == "findings" else impression


def check_section(entry: Mapping[str, Any], key: str) -> str:
    """The entry's ``section`` (default impression), or a MedretError naming config ``key``."""
    section = entry.get("section", "impression")
    if section not in SECTIONS:
        raise MedretError(f"config key {key} is {section!r}; use one of: {', '.join(SECTIONS)}")
    return section


def find_table(directory: Path, name: str, what: str, key: str) -> Path:
    """``directory/name`` or ``directory/name.gz`` (the plain file wins if both exist)."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise MedretError(f"{directory / name}(.gz): {what} not found; check the config key {key}")


def read_csv_columns(path: str | Path, columns: tuple[str, ...], what: str, key: str) -> pd.DataFrame:
    """Read the ``columns`` of a CSV (.csv or .csv.gz) as strings, as written ("" for empty cells)."""
    path = Path(path)
    if not path.is_file():
        raise MedretError(f"{path}: {what} not found; check the config key {key}")
    try:
        # Only the needed columns: the CheXpert Plus CSV holds 27, most of them long texts.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=lambda c: c in columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        reason = " ".join(str(exc).split())
        raise MedretError(f"{path}: not a readable CSV ({reason}); download the {what} again") from exc
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise MedretError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the {what}, check the config key {key}"
        )
    return raw[list(columns)]


def unique_rows(table: pd.DataFrame, key: str, path: str | Path) -> pd.DataFrame:
    """Drop rows that repeat exactly; a ``key`` value on two different rows is an error naming the file."""
    table = table.drop_duplicates()
    repeated = table[key][table[key].duplicated()]
    if len(repeated):
        raise MedretError(
            f"{path}: {key} {repeated.iloc[0]!r} appears on two rows with different values; "
            "download the file again or remove one of them"
        )
    return table


def read_study_ids(
    path: str | Path, pattern: re.Pattern[str], example: str, normalise: Callable[[str], str] = str.strip
) -> set[str]:
    """Study ids of a study-list file: one id a line (``#`` comments), or a CSV with a ``study_id`` column.

    Each id goes through ``normalise`` (e.g. dropping a prefix) and must then match ``pattern``
    (``example`` shows valid ids in the error message).
    """
    path = Path(path)
    if not path.is_file():
        raise MedretError(f"{path}: study list not found; check the config key datasets.<name>.study_list")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if lines and "study_id" in [c.strip() for c in lines[0].split(",")]:
        ids = pd.read_csv(path, dtype=str, keep_default_na=False, comment="#")["study_id"].tolist()
    else:
        ids = lines
    ids = {normalise(i.strip()) for i in ids} - {""}
    bad = sorted(i for i in ids if not pattern.fullmatch(i))
    if bad:
        raise MedretError(f"{path}: {bad[0]!r} is not a study id; list ids like {example}")
    if not ids:
        raise MedretError(f"{path}: the study list is empty; list one study id a line")
    return ids


def keep_studies(
    table: pd.DataFrame, ids: set[str], path: str | Path, data: str | Path, column: str = "study_id"
) -> pd.DataFrame:
    """Rows of ``table`` whose study (``column``) is in the list ``path``; none is an error naming both files."""
    kept = table[table[column].isin(ids)]
    if kept.empty:
        raise MedretError(
            f"{path}: none of its {len(ids)} study ids is in {data}; check the config key datasets.<name>.study_list"
        )
    return kept


def study_list_source(entry: Mapping[str, Any], name: str) -> list[str]:
    """``[study_list]`` when the entry names one (it must exist), else ``[]``: a source file to track."""
    if not entry.get("study_list"):
        return []
    study_list = Path(entry["study_list"])
    if not study_list.is_file():
        raise MedretError(f"{study_list}: study list not found; check the config key datasets.{name}.study_list")
    return [str(study_list)]


#: ``section``, as the adapters with findings and impression sections declare it.
SECTION_OPTION = Option(
    "report section used as the text: impression, findings, or longest (the longer of the two)",
    {"type": "string", "enum": list(SECTIONS)},
    default="impression",
)


def study_list_option(ids: str) -> Option:
    """``study_list``: a file of study ids to keep (``ids`` describes the adapter's id format)."""
    return Option(
        f"optional file of study ids to keep: one a line, or a CSV with a study_id column; ids: {ids}",
        {"type": "string"},
        path="file",
    )
