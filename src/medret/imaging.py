"""The image cache: every image decoded once per dataset into one uint8 HDF5 file.

Layout of ``images/<subset>.h5``:

* ``images``: (N, S, S) uint8 greyscale, chunked one image per chunk, gzip-compressed;
* ``boxes``: (N, 4) int32 content box ``(top, left, height, width)`` in cache pixels: an image larger
  than S is fitted inside the S × S canvas with its aspect ratio kept (:func:`canvas_size`: at S = 320
  the canvas of CXR-RePaiR and CheXzero, byte for byte), a smaller one keeps its own size; either way
  it is centred on black, so a model that pads to a square uses the canvas and a model that crops
  uses the box;
* ``sizes``: (N, 2) int32 ``(height, width)`` of each source image, so that a family can reproduce
  geometry its own pipeline computes from the original size;
* ``ids``: (N,) pair ids, in manifest order;
* attributes ``manifest_digest``, ``size``, ``fast`` (reduced JPEG decoding), ``medret_version`` and
  ``medret_checksum`` (:func:`medret.io.seal_h5`; ``images`` carries a checksum per chunk).

All models and all corruption levels read this file; nothing decodes the source images again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError

import medret
from medret.errors import MedretError
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
from medret.progress import progress


def canvas_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of a ``width`` x ``height`` source on a ``size`` canvas: never enlarged, else fit inside.

    The arithmetic of CXR-RePaiR's and CheXzero's ``preprocess()``: ``ratio = float(size) / max(w, h)``, each side
    ``int(side * ratio)`` (truncated, so the longer side can come out at ``size - 1``), which makes a cache at
    ``image_size: 320`` their 320-px canvas exactly. A source that already fits is kept at its own size.
    """
    if max(width, height) <= size:
        return width, height
    ratio = float(size) / max(width, height)
    return max(1, int(width * ratio)), max(1, int(height * ratio))


def resize_lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    """Pillow's Lanczos resize with the horizontal pass first, as every Pillow before 13 did.

    Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as
    the width (python-pillow/Pillow#9549), and each pass rounds to 8 bits, so for tall, narrow images
    (width/height below about 0.5) it differs from the Pillow the original pipelines ran (CXR-RePaiR,
    CheXzero: 8.x/9.x) by a grey level or more on a few thousand pixels. Two one-axis calls fix the order
    (reference/cxr_repair: identical to Pillow 9.5 on 266 of 266 sizes, against 224 with one call).
    """
    if image.width != width:
        image = image.resize((width, image.height), Image.Resampling.LANCZOS)
    if image.height != height:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def decode_to_canvas(
    path: str | Path, size: int, *, fast: bool = False
) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    """Decode one image to greyscale and centre it on a black ``size`` x ``size`` canvas.

    Returns the uint8 canvas, the content box (top, left, height, width) and the source's own (height,
    width). A source larger than the canvas is fitted inside it with Pillow's Lanczos
    (:func:`canvas_size`); a smaller one keeps its own pixels, so that each model family resizes the
    original pixels once, as its own pipeline does, instead of an enlarged copy. ``fast`` decodes a
    JPEG much larger than the canvas at a reduced scale (1/2, 1/4 or 1/8, straight from its DCT
    coefficients) that stays at least twice the target, as Pillow's ``thumbnail`` does: a 2544 × 3056
    JPEG goes into a 224 px cache 2.6× faster (1.6× into 512 px), on average 0.2 grey levels from the
    exact decode (about 20% of pixels differ at 320 px, up to 14 levels at hard edges): not the same bytes.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            nw, nh = canvas_size(w, h, size)
            if fast and img.format == "JPEG" and (nw, nh) != (w, h):
                img.draft("L", (2 * nw, 2 * nh))
            img.load()
            grey = img.convert("L") if img.mode != "L" else img
    except FileNotFoundError:
        raise MedretError(f"{path}: image not found; check the dataset's image paths") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MedretError(f"{path}: cannot decode image ({exc}); replace or remove this pair") from exc
    grey = resize_lanczos(grey, nw, nh)
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = np.asarray(grey, dtype=np.uint8)
    return canvas, (top, left, nh, nw), (h, w)


Decoded = tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]


def decode_all(
    paths: Sequence[str], size: int, *, workers: int = 1, fast: bool = False, desc: str = "decode"
) -> Iterator[Decoded]:
    """:func:`decode_to_canvas` of every path, in order, on ``workers`` threads.

    Pillow releases the GIL while it decodes and resizes, so threads decode in parallel; at most
    ``4 × workers`` images wait decoded, whatever the number of paths. The output does not depend
    on ``workers``. The first failing image raises its error; the images still queued are dropped.
    """
    items = progress(paths, len(paths), desc, unit="img")
    if workers <= 1:
        yield from (decode_to_canvas(path, size, fast=fast) for path in items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medret-decode")
    try:
        pending: deque[Future[Decoded]] = deque()
        for path in items:
            pending.append(pool.submit(decode_to_canvas, path, size, fast=fast))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


#: An image whose shorter side is below this many pixels is not a usable radiograph (e.g. a 1 x 1 placeholder).
MIN_SIDE = 32
#: Nor is one whose longer side is more than this many times its shorter (e.g. a 20000 x 100 strip).
MAX_ASPECT = 10.0


def geometry_problem(width: int, height: int) -> str | None:
    """Why a ``width`` x ``height`` image is not a usable radiograph, or None (:data:`MIN_SIDE`, :data:`MAX_ASPECT`)."""
    if min(width, height) < MIN_SIDE:
        return f"too small ({width} x {height} px; a radiograph needs at least {MIN_SIDE} px a side)"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"extreme aspect ratio ({width} x {height} px; more than {MAX_ASPECT:g}:1)"
    return None


def image_problem(path: str | Path, *, decode: bool = True) -> str | None:
    """Why the image at ``path`` cannot be used (``"not found"``, the decoder's message, a degenerate size), or None.

    ``decode=False`` only opens the file and parses its header (a few hundred bytes). ``decode=True``
    also reads all of its compressed data: JPEGs are decoded at 1/8 scale (DCT scaling still walks
    every entropy-coded block, so truncation shows, at a fraction of the cost), other formats are
    checked by PIL's ``verify`` (PNG: every chunk's CRC up to IEND).
    """
    try:
        with Image.open(path) as img:
            geometry = geometry_problem(*img.size)
            if geometry is not None:
                return geometry
            if decode:
                if img.format == "JPEG":
                    img.draft("L", (max(1, img.width // 8), max(1, img.height // 8)))
                    img.load()
                else:
                    img.verify()
    except FileNotFoundError:
        return "not found"
    except IsADirectoryError:
        return "is a directory"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable: {exc}".replace("\n", " ")
    return None


def scan_images(paths: Sequence[str], *, decode: bool, desc: str = "check images") -> dict[int, str]:
    """Problems of every image in ``paths`` (see :func:`image_problem`), by position; {} when all are usable."""
    found = {}
    for i, path in enumerate(progress(paths, len(paths), desc, unit="img")):
        problem = image_problem(path, decode=decode)
        if problem is not None:
            found[i] = problem
    return found


def describe_problems(paths: Sequence[str], problems: dict[int, str], n: int = 3) -> str:
    """``"<path> (<problem>), ..."`` for the first ``n`` offenders, for one-line messages."""
    return ", ".join(f"{paths[i]} ({problems[i]})" for i in sorted(problems)[:n])


def check_files_exist(paths: Sequence[str]) -> None:
    """Fail with a count and the first offenders when any source image is missing."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise MedretError(
            f"{len(missing)} of {len(paths)} images not found (first: {', '.join(missing[:3])}); restore them, "
            "or re-run the manifest rule (its bad_images policy screens the evaluated images)"
        )


def build_image_cache(
    ids: Sequence[str],
    paths: Sequence[str],
    out_path: str | Path,
    *,
    size: int,
    manifest_digest: str,
    workers: int = 1,
    fast: bool = False,
) -> None:
    """Decode every image once into the HDF5 cache at ``out_path`` (written atomically).

    ``workers`` threads decode (see :func:`decode_all`); the file is the same for any number.
    ``fast``: large JPEGs decoded at a reduced scale (:func:`decode_to_canvas`).
    """
    if size < 16:
        raise MedretError(f"image cache size {size} is too small; set image_size >= 16")
    check_files_exist(paths)
    n = len(ids)
    with atomic_output(out_path) as tmp, h5py.File(tmp, **H5_WRITE) as f:
        images = f.create_dataset(
            "images",
            (n, size, size),
            dtype=np.uint8,
            chunks=(1, size, size),
            compression="gzip",
            compression_opts=4,
            fletcher32=True,  # a checksum per image, verified on every read
        )
        boxes = np.zeros((n, 4), dtype=np.int32)
        sizes = np.zeros((n, 2), dtype=np.int32)
        decoded = decode_all(paths, size, workers=workers, fast=fast, desc=f"decode {Path(out_path).name}")
        for i, (canvas, box, source) in enumerate(decoded):
            images[i], boxes[i], sizes[i] = canvas, box, source
        f.create_dataset("boxes", data=boxes)
        f.create_dataset("sizes", data=sizes)
        write_strings(f, "ids", ids)
        set_attrs(
            f, {"manifest_digest": manifest_digest, "size": size, "fast": fast, "medret_version": medret.__version__}
        )
        seal_h5(f)  # boxes, sizes, ids and attributes


class ImageCache:
    """Read access to an image cache, with its provenance checked on open."""

    def __init__(self, path: str | Path, *, manifest_digest: str | None = None) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        try:
            self._file = h5py.File(self.path, "r")
            verify_h5(self._file, self.path, "image cache")
            self.images = self._file["images"]
            self.boxes = self._file["boxes"][:]
            self.sizes = self._file["sizes"][:]
            self.ids = read_strings(self._file, "ids")
            self.attrs = get_attrs(self._file)
        except (OSError, KeyError, ValueError, MedretError) as exc:  # ValueError: undecodable ids
            if self._file is not None:
                self._file.close()
            if isinstance(exc, MedretError):
                raise
            raise stale_artifact(self.path, f"unreadable or incomplete image cache ({exc})") from exc
        if manifest_digest is not None and self.attrs.get("manifest_digest") != manifest_digest:
            built = self.attrs.get("manifest_digest")
            raise stale_artifact(self.path, f"built from a different manifest (digest {built} != {manifest_digest})")

    @property
    def size(self) -> int:
        return int(self.attrs["size"])

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` as a (B, S, S) uint8 array."""
        try:
            return self.images[start:stop]
        except OSError as exc:  # a damaged chunk: HDF5's decompression or checksum filter fails
            raise stale_artifact(self.path, f"cannot read images {start}-{stop} ({exc})") from exc

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
