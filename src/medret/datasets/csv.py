"""The generic CSV format: the way users bring their own data, and the demo's on-disk format.

One row per image-report pair::

    id,image,report,split[,patient_id][,study_id][,view][,label_<finding>...][,region_top,region_left,region_height,region_width]

``image`` is a path relative to the CSV's own directory (absolute paths are kept as they are).
``split`` is free text; the evaluated split is chosen in the config (default ``test``).
Label columns hold CheXpert-style values (1 positive, 0 negative, -1 uncertain, empty missing).
The four ``region_*`` columns, all or none, give each image's region of interest (the box around its
findings) as fractions of the image's height and width: top and left edge, height and width; empty in a
row without one. Occlusion ``placement: inside | outside`` places the occluder relative to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from medret.datasets import REGION_COLUMNS, DatasetAdapter, check_regions, register_adapter
from medret.errors import MedretError
from medret.plugins import Option

REQUIRED = ("id", "image", "report", "split")
OPTIONAL = ("patient_id", "study_id", "view")


def read_pairs_csv(path: str | Path) -> pd.DataFrame:
    """Read a pairs CSV into the standard pairs table (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise MedretError(f"{path}: dataset CSV not found; check the config key datasets.<name>.csv")
    if path.stat().st_size == 0:
        raise MedretError(
            f"{path}: the file is empty (0 bytes); write a header line {','.join(REQUIRED)} and one row per pair"
        )
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise MedretError(f"{path}: not a readable CSV ({reason}); save it as UTF-8 comma-separated") from exc
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise MedretError(
            f"{path}: missing column(s) {', '.join(missing)}; a pairs CSV needs {', '.join(REQUIRED)} "
            f"(optional: {', '.join(OPTIONAL)}, label_*)"
        )
    if raw.empty:
        raise MedretError(f"{path}: the CSV has no rows; add one row per image-report pair")
    dupes = raw["id"][raw["id"].duplicated()].unique()
    if len(dupes):
        raise MedretError(f"{path}: duplicate id(s) {', '.join(map(str, dupes[:5]))}; ids must be unique")
    blank = raw.index[raw["image"].str.strip() == ""]
    if len(blank):
        raise MedretError(f"{path}: row {blank[0] + 2} has an empty image path; fill column 'image'")
    root = path.resolve().parent
    table = pd.DataFrame(
        {
            "pair_id": raw["id"].str.strip(),
            "image_path": [str(root / p) if not Path(p).is_absolute() else p for p in raw["image"]],
            "report": raw["report"],
            "split": raw["split"].str.strip(),
            **{c: (raw[c].str.strip() if c in raw.columns else "") for c in OPTIONAL},
        }
    )
    for col in (c for c in raw.columns if c.startswith("label_")):
        values = pd.to_numeric(raw[col].replace("", None), errors="coerce")
        bad = raw[col][values.isna() & (raw[col].str.strip() != "")]
        if len(bad):
            raise MedretError(f"{path}: column {col} holds {bad.iloc[0]!r}; labels must be 1, 0, -1 or empty")
        table[col] = values.astype(float)
    present = [c for c in REGION_COLUMNS if c in raw.columns]
    if present and len(present) < len(REGION_COLUMNS):
        missing = ", ".join(c for c in REGION_COLUMNS if c not in raw.columns)
        raise MedretError(f"{path}: region columns need all four of {', '.join(REGION_COLUMNS)}; missing {missing}")
    if present:
        for col in REGION_COLUMNS:
            values = pd.to_numeric(raw[col].replace("", None), errors="coerce")
            bad = raw[col][values.isna() & (raw[col].str.strip() != "")]
            if len(bad):
                raise MedretError(f"{path}: column {col} holds {bad.iloc[0]!r}; a region is four numbers or empty")
            table[col] = values.astype(float)
        check_regions(table, str(path))
    return table


def _csv_sources(name: str, entry: Mapping[str, Any]) -> list[str]:
    if "csv" not in entry:
        raise MedretError(f"config key datasets.{name}.csv is missing; set it to your pairs CSV")
    return [str(entry["csv"])]


def _demo_sources(name: str, entry: Mapping[str, Any]) -> list[str]:
    # Written by the workflow's `demo_data` rule (medret.phantoms.generate).
    return [f"resources/{name}/pairs.csv"]


def _load(entry: Mapping[str, Any], sources: list[str]) -> pd.DataFrame:
    return read_pairs_csv(sources[0])


register_adapter(
    DatasetAdapter(
        "csv",
        _csv_sources,
        _load,
        "generic pairs CSV (your own data)",
        options={
            "csv": Option(
                "path of the pairs CSV (id,image,report,split[,patient_id][,study_id][,view][,label_*][,region_*]); "
                "image paths in it are relative to the CSV",
                {"type": "string"},
                required=True,
                path="file",
            )
        },
    )
)
register_adapter(
    DatasetAdapter(
        "demo",
        _demo_sources,
        _load,
        "synthetic chest-radiograph phantoms generated by the workflow",
        options={
            "n_train": Option("number of training pairs to generate", {"type": "integer", "minimum": 2}, default=2000),
            "n_test": Option("number of test pairs to generate", {"type": "integer", "minimum": 2}, default=500),
            "render_size": Option(
                "side in pixels of the generated PNG images; the pixel noise scales with it as quantum noise does, so "
                "images rendered larger than image_size and downsampled by the cache look like images rendered at the "
                "cache size; larger sizes make decoding cost what it costs on real radiographs (640 px takes about "
                "1.5 minutes per 1,000 images to generate on 2 cores)",
                {"type": "integer", "minimum": 32},
                default=128,
            ),
            "seed": Option("seed of the generator; the data are a pure function of it", {"type": "integer"}, default=0),
        },
    )
)
