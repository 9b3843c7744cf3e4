"""Embedding caches: text once per model, images once per (model, corruption) for every level.

``text.h5``: ``embeddings`` (U, D) float32 for the U unique report strings (manifest
``text_id`` order) and ``texts``. ``<corruption>.h5``: ``embeddings`` (C, N, D) float32 for the C
(level, repeat) conditions and N manifest pairs, with ``levels``, ``repeats`` and ``ids``.
Both carry the provenance attributes ``model``, ``model_spec_hash``, ``manifest_digest``,
``medret_version``, and the image file also ``corruption``, ``corruption_spec_digest`` and
``image_cache_digest``. Readers check them with :func:`check_provenance`.

Image embedding streams the cache: a background thread (:class:`BlockReader`) reads and
decompresses the next block of canvases while the model embeds the current one, into pinned memory
when the model is on CUDA. Each block is moved to the model's device once; the corruption and the
model's preprocessing then run there, at every level. CPU and GPU share this one code path, and a
block is a whole number of model batches, so every embedding is the one ``encode_images`` gives
for the whole cache at once.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

import medret
from medret.corruptions import get_kind
from medret.errors import MedretError
from medret.imaging import ImageCache
from medret.io import (
    H5_WRITE,
    atomic_output,
    get_attrs,
    read_strings,
    seal_h5,
    set_attrs,
    stale_artifact,
    verify_h5,
    write_strings,
)
from medret.models.base import ModelAdapter
from medret.progress import progress


def _write(path: str | Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    with atomic_output(path) as tmp, h5py.File(tmp, **H5_WRITE) as f:
        for key, value in arrays.items():
            if value.dtype.kind in "OU":
                write_strings(f, key, value)
            else:
                # A checksum per chunk: a flipped bit on disk becomes an error on read, not a wrong embedding.
                f.create_dataset(key, data=value, fletcher32=True)
        set_attrs(f, {**attrs, "medret_version": medret.__version__})
        seal_h5(f)


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


def needed_image_size(model: ModelAdapter, boxes: np.ndarray, image_size: int, sizes: np.ndarray | None = None) -> int:
    """The smallest cache size at which ``model`` enlarges none of the images it would enlarge in an
    ``image_size`` cache whose content boxes are ``boxes`` (``image_size`` itself when it enlarges none).

    With the sources' own ``sizes`` (height, width), each image's box in a cache of side S' is the one the
    cache computes (:func:`medret.imaging.canvas_size`), exactly; a source kept at its own size never counts
    (the model resizes its original pixels, as its own pipeline does). Without them each box is scaled from
    ``boxes`` (each side ``int(side * S' / image_size)``, truncated as the cache truncates); the boxes are
    themselves whole cache pixels, so the answer can be a pixel more than the sources need.
    """
    from medret.imaging import canvas_size

    boxes = np.asarray(boxes)
    if sizes is not None:
        sources = np.unique(np.asarray(sizes), axis=0)

        def fits(size: int) -> bool:
            shapes = np.array([canvas_size(int(w), int(h), size)[::-1] for h, w in sources])
            scaled = np.column_stack([np.zeros_like(shapes), shapes])
            return model.upsampling(scaled, size, sources) <= 1.0

        start = model.upsampling(boxes, image_size, sizes)
    else:
        shapes = np.unique(boxes[:, 2:4], axis=0).astype(np.float64)

        def fits(size: int) -> bool:
            scaled = np.maximum(1.0, np.floor(shapes * (size / image_size)))
            return model.upsampling(np.column_stack([np.zeros_like(scaled), scaled]), size) <= 1.0

        start = model.upsampling(boxes, image_size)
    if fits(image_size):
        return image_size
    # Enlarging stops as S' grows (the boxes only grow), so bisect between a failing and a fitting size.
    low, high = image_size, max(image_size + 1, math.ceil(image_size * start) + 1)
    while not fits(high):
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def upsampling_warning(
    model: ModelAdapter,
    boxes: np.ndarray,
    *,
    model_name: str,
    dataset: str,
    image_size: int,
    sizes: np.ndarray | None = None,
) -> str | None:
    """One line saying that ``model`` enlarges images of this cache and which ``image_size`` avoids it, or None.

    The original pipelines shrink the full-resolution image; a cache smaller than a model's input makes
    its preprocessing enlarge the cached one instead (see :meth:`ModelAdapter.upsampling`), so the
    model sees less detail than it was made for. Sources the cache kept at their own size (``sizes``) are
    resized from their own pixels, as the original pipelines do, and never counted.
    """
    rule = model.resize_rule
    factors = model.enlargement(boxes, image_size, sizes)
    enlarged = factors > 1.0
    if rule is None or not enlarged.any():
        return None
    worst = int(np.argmax(factors))
    top = float(factors[worst])
    need = needed_image_size(model, boxes, image_size, sizes)
    times = f"{top:.2f}x" if top >= 1.005 else f"{top:.4f}x"  # never print an enlargement as 1.00x
    return (
        f"medret warning: model {model_name!r} enlarges {int(enlarged.sum())} of {len(factors)} images of dataset "
        f"{dataset!r} (up to {times}: {rule.describe(np.asarray(boxes)[worst], image_size)}); "
        f"set datasets.{dataset}.image_size to at least {need} to avoid it"
    )


#: Images per block read from the cache (rounded to whole model batches): about 16 MB at 256 px.
BLOCK_IMAGES = 256
#: Blocks the reader may hold ready ahead of the model (bounds its memory to depth + 2 blocks).
PREFETCH_DEPTH = 2


class BlockReader:
    """Reads consecutive blocks of an image cache in a background thread, in cache order.

    Use as a context manager and iterate: yields ``(start, stop, images)`` with ``images`` a
    (B, S, S) uint8 CPU tensor (pinned when ``pin_memory``), at most ``depth`` blocks ahead of the
    consumer. An error in the reader is raised in the consumer; leaving the ``with`` block early
    stops the reader.
    """

    def __init__(self, cache: ImageCache, block: int, *, pin_memory: bool = False, depth: int = PREFETCH_DEPTH) -> None:
        if block < 1 or depth < 1:
            raise ValueError(f"block ({block}) and depth ({depth}) must be positive")
        self.cache, self.block, self.pin_memory = cache, block, pin_memory
        self._queue: queue.Queue[tuple[int, int, torch.Tensor] | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"medret-reader-{cache.path.name}", daemon=True)

    def _put(self, item: tuple[int, int, torch.Tensor] | BaseException) -> bool:
        # A bounded wait, so that a consumer that has stopped listening never leaves the thread blocked.
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        n = len(self.cache)
        try:
            for lo in range(0, n, self.block):
                hi = min(lo + self.block, n)
                images = torch.from_numpy(self.cache.read(lo, hi))  # a damaged chunk raises MedretError
                if self.pin_memory:
                    images = images.pin_memory()
                if not self._put((lo, hi, images)):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def __enter__(self) -> BlockReader:
        self._thread.start()
        return self

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        for _ in range(0, len(self.cache), self.block):
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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
    block: int = BLOCK_IMAGES,
    notes: Sequence[str] = (),
) -> None:
    """Embed every cached image under every (level, repeat) of a corruption; write one HDF5.

    ``notes``: warnings about these embeddings (e.g. :func:`upsampling_warning`), kept in the file's
    ``notes`` attribute (JSON) for the run's summary.

    ``block`` images are read at a time (rounded down to whole batches of the model, at least
    one); it bounds memory and never changes an embedding.
    """
    kind = get_kind(corruption_entry, corruption)
    conditions = specs[["level", "repeat"]].drop_duplicates().sort_values(["level", "repeat"]).to_numpy()
    n = len(cache)
    if (specs.groupby(["level", "repeat"]).size() != n).any():
        raise MedretError(f"corruption specs of {corruption} do not cover the {n} cached images; re-run the workflow")
    out = np.zeros((len(conditions), n, model.embed_dim), dtype=np.float32)
    device = model.device
    boxes = torch.from_numpy(cache.boxes).to(device)
    sizes = torch.from_numpy(cache.sizes).to(device)
    # Whole batches per block: every image then sits in the batch it would have in one encode_images call.
    block = model.batch_size * max(1, block // model.batch_size)
    by_condition = {key: rows.set_index("pair_id").loc[cache.ids] for key, rows in specs.groupby(["level", "repeat"])}
    start = time.perf_counter()
    # Decode-free loop: each block of canvases is read once (ahead, in the reader thread) and moved
    # to the device once, then corrupted and embedded there at every level.
    with BlockReader(cache, block, pin_memory=device.type == "cuda") as reader:
        # A bar on a terminal, plain lines in a job's log (where a carriage-return bar is unreadable).
        for lo, hi, host_images in progress(reader, -(-n // block), f"embed {model_name}/{corruption}", unit="block"):
            images = host_images.to(device, non_blocking=True)
            for c, (level, repeat) in enumerate(conditions):
                rows = by_condition[(level, int(repeat))].iloc[lo:hi]
                corrupted = kind.apply(images, boxes[lo:hi], rows, corruption_entry)
                out[c, lo:hi] = model.encode_images(corrupted, boxes[lo:hi], sizes[lo:hi]).numpy()
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
            "notes": json.dumps(list(notes)),
        },
    )


def read_notes(path: str | Path) -> list[str]:
    """The ``notes`` of an embedding file (its checksum verified; the embeddings themselves are not read)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            verify_h5(f, path, "embedding cache")
            notes = json.loads(get_attrs(f).get("notes", "[]"))
    except (OSError, ValueError) as exc:
        raise stale_artifact(path, f"unreadable embedding cache ({exc})") from exc
    return [str(n) for n in notes]


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
                verify_h5(f, path, "embedding cache")
                strings = {k[: -len(".offsets")] for k in f if k.endswith(".offsets")}
                arrays = {k: f[k][()] for k in f if k not in strings and not k.endswith(".offsets")}
                arrays.update({k: np.asarray(read_strings(f, k), dtype=object) for k in strings})
                attrs = get_attrs(f)
        except (OSError, KeyError, ValueError) as exc:  # ValueError: undecodable strings
            raise stale_artifact(path, f"unreadable or truncated embedding cache ({exc})") from exc
        if "embeddings" not in arrays:
            raise stale_artifact(path, "no 'embeddings' dataset")
        return cls(path, arrays, attrs)


def check_provenance(files: list[EmbeddingFile], expected: Mapping[str, Any]) -> None:
    """Refuse embedding files whose provenance disagrees with ``expected`` or with each other."""
    for f in files:
        for key, want in expected.items():
            got = f.attrs.get(key)
            if got != want:
                raise stale_artifact(
                    f.path,
                    f"provenance mismatch on {key} ({got!r} != expected {want!r}); it was made from other inputs",
                )
    hashes = {f.attrs.get("model_spec_hash") for f in files}
    if len(hashes) > 1:
        raise MedretError(
            f"{files[0].path} and {files[-1].path} come from different model specs {sorted(map(str, hashes))}; "
            "delete the stale one and re-run the workflow"
        )
