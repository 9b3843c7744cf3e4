"""The manifest: the evaluated image-report pairs, and the relevance structure built from it.

Rules (DESIGN §4, this project's protocol):

* the evaluated split only (config ``split``, default ``test``);
* reports that are empty after stripping whitespace are dropped;
* one image per study: frontal views first (PA, then AP), then the smallest pair id;
* identical report strings are one retrieval candidate (``text_id``), so an image query has
  exactly one relevant text and a report query may have several relevant images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medret.errors import MedretError
from medret.io import atomic_output, digest

_VIEW_ORDER = {"PA": 0, "AP": 1}


def select_pairs(pairs: pd.DataFrame, split: str, *, one_per_study: bool = True) -> pd.DataFrame:
    """Apply the manifest rules to a standard pairs table; rows come out sorted by ``pair_id``."""
    table = pairs[pairs["split"] == split].copy()
    if table.empty:
        found = ", ".join(sorted(pairs["split"].unique())[:10])
        raise MedretError(f"no pairs in split {split!r} (splits present: {found}); set the dataset's split key")
    table["report"] = table["report"].str.strip()
    table = table[table["report"] != ""]
    if table.empty:
        raise MedretError(f"every report in split {split!r} is empty; the dataset has no usable pairs")
    if one_per_study:
        # Pairs without a study id are their own study.
        study = table["study_id"].where(table["study_id"] != "", "pair:" + table["pair_id"])
        view_rank = table["view"].str.upper().map(_VIEW_ORDER).fillna(len(_VIEW_ORDER))
        table = (
            table.assign(_study=study, _view=view_rank)
            .sort_values(["_study", "_view", "pair_id"])
            .drop_duplicates("_study")
            .drop(columns=["_study", "_view"])
        )
    table = table.sort_values("pair_id").reset_index(drop=True)
    text_ids, _ = pd.factorize(table["report"], sort=False)
    table.insert(3, "text_id", text_ids.astype(np.int64))
    return table


def manifest_digest(table: pd.DataFrame) -> str:
    """Digest of the evaluated pairs: ids, reports, patients, studies, views and labels.

    Image paths are left out, so a dataset read from another directory (a copy, a mount on a
    cluster node) gives the same digest and its caches stay valid.
    """
    return digest(table.drop(columns="image_path").astype(str).to_dict(orient="list"))


def write_table(table: pd.DataFrame, path: str | Path, **metadata: str) -> None:
    """Write a parquet table atomically with string key/value metadata (provenance)."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta.update({f"medret.{k}".encode(): str(v).encode() for k, v in metadata.items()})
    with atomic_output(path) as tmp:
        pq.write_table(arrow.replace_schema_metadata(meta), tmp)


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read a parquet table written by :func:`write_table`; return it with its medret metadata."""
    path = Path(path)
    if not path.is_file():
        raise MedretError(f"{path}: file not found; re-run the workflow to regenerate it")
    try:
        arrow = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise MedretError(f"{path}: unreadable parquet file ({exc}); delete it and re-run the workflow") from exc
    meta = {
        k.decode()[len("medret.") :]: v.decode()
        for k, v in (arrow.schema.metadata or {}).items()
        if k.startswith(b"medret.")
    }
    return arrow.to_pandas(), meta


@dataclass(frozen=True)
class Manifest:
    """The evaluated pairs and their digest, as read from ``manifest.parquet``."""

    table: pd.DataFrame
    digest: str

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Read a manifest written by the ``manifest`` stage."""
        table, meta = read_table(path)
        if "digest" not in meta:
            raise MedretError(f"{path}: not a medret manifest (no digest); re-run the manifest rule")
        return cls(table, meta["digest"])

    @property
    def pair_ids(self) -> list[str]:
        return self.table["pair_id"].tolist()

    @property
    def texts(self) -> list[str]:
        """Unique report strings, indexed by ``text_id``."""
        first = self.table.drop_duplicates("text_id").sort_values("text_id")
        return first["report"].tolist()

    @property
    def text_ids(self) -> np.ndarray:
        return self.table["text_id"].to_numpy(np.int64)

    def clusters(self) -> dict[str, str | None]:
        """Bootstrap cluster of every query id.

        Image queries (pair ids) resample by patient, or singly when the dataset has no patient
        ids; text queries (one per unique report) resample singly (None).
        """
        from medret.retrieval import text_query_ids

        patients = self.table["patient_id"].fillna("")
        out: dict[str, str | None] = {p: (c or None) for p, c in zip(self.table["pair_id"], patients, strict=True)}
        out.update(dict.fromkeys(text_query_ids(len(self.texts))))
        return out
