"""Embedding caches: text once per model, images once per (model, corruption) for every level.

``text.h5``: ``embeddings`` (U, D) float32 for the U unique report strings (manifest
``text_id`` order) and ``texts``. ``<corruption>.h5``: ``embeddings`` (C, N, D) float32 for the C
(level, repeat) conditions and N manifest pairs, with ``levels``, ``repeats`` and ``ids``.
Both carry the provenance attributes ``model``, ``model_spec_hash``, ``manifest_digest``,
``medret_version``, and the image file also ``corruption``, ``corruption_spec_digest`` and
``image_cache_digest``. Readers check them with :func:`check_provenance`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import medret
from medret.corruptions import get_kind
from medret.errors import MedretError
from medret.imaging import ImageCache
from medret.io import atomic_output
from medret.models import ModelAdapter


def _write(path: str | Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in arrays.items():
            if value.dtype.kind in "OU":
                f.create_dataset(key, data=value.astype(object), dtype=h5py.string_dtype())
            else:
                f.create_dataset(key, data=value)
        f.attrs.update({**attrs, "medret_version": medret.__version__})


def embed_texts(
    model: ModelAdapter, texts: list[str], out_path: str | Path, *, model_name: str, manifest_digest: str
) -> None:
    """Embed the unique report strings once and write ``text.h5``."""
    start = time.perf_counter()
    emb = model.encode_texts(texts).numpy().astype(np.float32)
    print(f"embedded {len(texts)} texts in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    _write(
        out_path,
        {"embeddings": emb, "texts": np.asarray(texts, dtype=object)},
        {"model": model_name, "model_spec_hash": model.spec_hash(), "manifest_digest": manifest_digest},
    )


def embed_images(
    model: ModelAdapter,
    cache: ImageCache,
    specs: pd.DataFrame,
    out_path: str | Path,
    *,
    model_name: str,
    corruption: str,
    corruption_entry: Mapping[str, Any],
    corruption_digest: str,
    manifest_digest: str,
) -> None:
    """Embed every cached image under every (level, repeat) of a corruption; write one HDF5."""
    kind = get_kind(corruption_entry, corruption)
    conditions = specs[["level", "repeat"]].drop_duplicates().sort_values(["level", "repeat"]).to_numpy()
    n = len(cache)
    if (specs.groupby(["level", "repeat"]).size() != n).any():
        raise MedretError(f"corruption specs of {corruption} do not cover the {n} cached images; re-run the workflow")
    out = np.zeros((len(conditions), n, model.embed_dim), dtype=np.float32)
    boxes = torch.from_numpy(cache.boxes)
    block = max(model.batch_size, 256)
    by_condition = {key: rows.set_index("pair_id").loc[cache.ids] for key, rows in specs.groupby(["level", "repeat"])}
    start = time.perf_counter()
    bar = tqdm(
        total=len(conditions) * n,
        desc=f"embed {model_name}/{corruption}",
        unit="img",
        file=sys.stderr,
        mininterval=10,
        ascii=True,
    )
    # Decode-free loop: read a block of canvases once, then corrupt and embed it at every level.
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        images = torch.from_numpy(cache.read(lo, hi))
        for c, (level, repeat) in enumerate(conditions):
            rows = by_condition[(level, int(repeat))].iloc[lo:hi]
            corrupted = kind.apply(images, boxes[lo:hi], rows, corruption_entry)
            out[c, lo:hi] = model.encode_images(corrupted, boxes[lo:hi]).numpy()
            bar.update(hi - lo)
    bar.close()
    print(f"embedded {len(conditions)} x {n} images in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    _write(
        out_path,
        {
            "embeddings": out,
            "levels": conditions[:, 0].astype(np.float64),
            "repeats": conditions[:, 1].astype(np.int64),
            "ids": np.asarray(cache.ids, dtype=object),
        },
        {
            "model": model_name,
            "model_spec_hash": model.spec_hash(),
            "manifest_digest": manifest_digest,
            "corruption": corruption,
            "corruption_spec_digest": corruption_digest,
            "image_cache_digest": str(cache.attrs.get("manifest_digest")),
        },
    )


@dataclass
class EmbeddingFile:
    """An embedding cache read back into memory, with its attributes."""

    path: Path
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path) -> EmbeddingFile:
        path = Path(path)
        try:
            with h5py.File(path, "r") as f:
                arrays = {k: f[k][()] for k in f}
                attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        except (OSError, KeyError) as exc:
            raise MedretError(
                f"{path}: unreadable or truncated embedding cache ({exc}); delete it and re-run the workflow"
            ) from exc
        for key in ("ids", "texts"):
            if key in arrays:
                arrays[key] = np.asarray([s.decode() if isinstance(s, bytes) else s for s in arrays[key]], dtype=object)
        if "embeddings" not in arrays:
            raise MedretError(f"{path}: no 'embeddings' dataset; delete it and re-run the workflow")
        return cls(path, arrays, attrs)


def check_provenance(files: list[EmbeddingFile], expected: Mapping[str, Any]) -> None:
    """Refuse embedding files whose provenance disagrees with ``expected`` or with each other."""
    for f in files:
        for key, want in expected.items():
            got = f.attrs.get(key)
            if got != want:
                raise MedretError(
                    f"{f.path}: provenance mismatch on {key} ({got!r} != expected {want!r}); "
                    "it was made from other inputs: delete it and re-run the workflow"
                )
    hashes = {f.attrs.get("model_spec_hash") for f in files}
    if len(hashes) > 1:
        raise MedretError(
            f"{files[0].path} and {files[-1].path} come from different model specs {sorted(map(str, hashes))}; "
            "delete the stale one and re-run the workflow"
        )
