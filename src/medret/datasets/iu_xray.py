"""IU X-ray / OpenI: the Indiana University chest X-ray collection as distributed on Kaggle.

The Kaggle dataset "chest-xrays-indiana-university" (Demner-Fushman et al. 2016, via OpenI) is read
as downloaded. Config entry (``adapter: iu_xray``)::

    root: the dataset directory: indiana_reports.csv, indiana_projections.csv (either may be .csv.gz;
          the plain .csv wins if both exist) and images/images_normalized/<filename>
    section: impression (default) | findings | longest (the longer of the two)
    study_list: optional file of uids (one a line, or a CSV with a study_id column) to keep

``indiana_reports.csv`` has one row per report (uid, MeSH, Problems, image, indication, comparison,
findings, impression); ``indiana_projections.csv`` one row per image (uid, filename, projection).
One pair per image:

* ``pair_id`` = ``filename`` (``1_IM-0001-4001.dcm.png``); ``image_path`` =
  ``root/images/images_normalized/<filename>``, absolute; images are not read here;
* ``study_id`` = ``patient_id`` = ``uid``: the collection has one report per uid and no patient
  identifier, so every uid counts as its own patient (the bootstrap resamples uids);
* ``view`` = ``projection`` upper-cased (``FRONTAL`` / ``LATERAL``);
* ``split`` = ``test`` for every pair: IU X-ray has no official split and is used for zero-shot
  evaluation (a local model cannot train on it);
* ``report`` = the uid's ``impression`` (default) or ``findings`` column, or the longer of the two
  (``longest``; ties go to the impression), whitespace collapsed to single spaces. The ``XXXX``
  de-identification marks are kept as written (every model sees the same text). There is no fallback
  to the other section: a report without the chosen one gets "" and the manifest drops it.

Images whose uid has no report row get an empty report (dropped by the manifest). Rows that repeat
exactly are read once; a uid (reports) or filename (projections) on two different rows is an error.
There are no CheXpert labels (no ``label_*`` columns).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from medret.datasets import DatasetAdapter, register_adapter
from medret.datasets.common import (
    SECTION_OPTION,
    check_section,
    clean_text,
    find_table,
    keep_studies,
    pick_section,
    read_csv_columns,
    read_study_ids,
    study_list_option,
    study_list_source,
    unique_rows,
)
from medret.errors import MedretError
from medret.plugins import Option

WHAT = "IU X-ray file (Kaggle chest-xrays-indiana-university)"
REPORTS = "indiana_reports.csv"
PROJECTIONS = "indiana_projections.csv"
IMAGES = Path("images") / "images_normalized"
REPORT_COLUMNS = ("uid", "findings", "impression")
PROJECTION_COLUMNS = ("uid", "filename", "projection")
SPLIT = "test"

_UID = re.compile(r"\d+")


def _iu_sources(name: str, entry: Mapping[str, Any]) -> list[str]:
    if "root" not in entry:
        raise MedretError(f"config key datasets.{name}.root is missing; set it to the IU X-ray directory")
    check_section(entry, f"datasets.{name}.section")
    root = Path(entry["root"])
    if not root.is_dir():
        raise MedretError(f"{root}: IU X-ray directory not found; check the config key datasets.{name}.root")
    key = f"datasets.{name}.root"
    sources = [str(find_table(root, table, WHAT, key)) for table in (REPORTS, PROJECTIONS)]
    if not (root / IMAGES).is_dir():
        raise MedretError(
            f"{root / IMAGES}: image directory not found; set {key} to the Kaggle chest-xrays-indiana-university "
            "directory as downloaded (it holds images/images_normalized/)"
        )
    return sources + study_list_source(entry, name)


def load_iu_xray(entry: Mapping[str, Any], sources: list[str]) -> pd.DataFrame:
    """Read IU X-ray into the standard pairs table (``sources`` as listed by the adapter)."""
    section = check_section(entry, "datasets.<name>.section")
    key = "datasets.<name>.root"
    reports = read_csv_columns(sources[0], REPORT_COLUMNS, WHAT, key)
    images = read_csv_columns(sources[1], PROJECTION_COLUMNS, WHAT, key)
    reports = unique_rows(reports.assign(uid=reports["uid"].str.strip()), "uid", sources[0])
    images = images.apply(lambda col: col.str.strip())
    images = unique_rows(images, "filename", sources[1])
    if images.empty:
        raise MedretError(f"{sources[1]}: the CSV has no rows; download the {WHAT} again")
    blank = images.index[images["filename"] == ""]
    if len(blank):
        raise MedretError(f"{sources[1]}: row {blank[0] + 2} has an empty filename; download the {WHAT} again")
    if entry.get("study_list"):
        study_list = sources[2] if len(sources) > 2 else entry["study_list"]
        ids = read_study_ids(study_list, _UID, "1 or 3999 (the uid column)")
        images = keep_studies(images, ids, study_list, sources[1], column="uid")

    texts = {
        uid: pick_section(clean_text(findings), clean_text(impression), section)
        for uid, findings, impression in zip(reports["uid"], reports["findings"], reports["impression"], strict=True)
    }
    if not images["uid"].isin(texts.keys()).any():
        raise MedretError(
            f"{sources[0]}: holds no report of the {images['uid'].nunique()} uids in {sources[1]}; "
            "are both files from the same download?"
        )
    directory = (Path(entry["root"]) / IMAGES).resolve()
    out = pd.DataFrame(
        {
            "pair_id": images["filename"],
            "image_path": [str(directory / name) for name in images["filename"]],
            "report": images["uid"].map(texts).fillna(""),
            "split": SPLIT,
            "patient_id": images["uid"],
            "study_id": images["uid"],
            "view": images["projection"].str.upper(),
        }
    )
    return out.sort_values("pair_id").reset_index(drop=True)


register_adapter(
    DatasetAdapter(
        "iu_xray",
        _iu_sources,
        load_iu_xray,
        "IU X-ray / OpenI (Kaggle chest-xrays-indiana-university): reports, projections and PNG images",
        options={
            "root": Option(
                "the Kaggle chest-xrays-indiana-university directory: indiana_reports.csv, indiana_projections.csv "
                "(or .csv.gz) and images/images_normalized/",
                {"type": "string"},
                required=True,
                path="directory",
            ),
            "section": SECTION_OPTION,
            "study_list": study_list_option("the uid, e.g. 3999"),
        },
    )
)
