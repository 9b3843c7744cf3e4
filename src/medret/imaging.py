"""The image cache: every image decoded once per dataset into one uint8 HDF5 file.

Layout of ``images/<subset>.h5``:

* ``images``: (N, S, S) uint8 greyscale, chunked one image per chunk, gzip-compressed;
* ``boxes``: (N, 4) int32 content box ``(top, left, height, width)`` in cache pixels: the image is
  resized with its aspect ratio kept (longest side = S) and centred on a black square canvas, so
  a model that pads to a square uses the canvas and a model that crops uses the box;
* ``ids``: (N,) pair ids, in manifest order;
* attributes ``manifest_digest``, ``size``, ``medret_version``.

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
from medret.io import atomic_output
from medret.progress import progress


def decode_to_canvas(path: str | Path, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Decode one image to greyscale, fit its longest side to ``size`` and centre it on black.

    Returns the (size, size) uint8 canvas and the content box (top, left, height, width). A JPEG
    much larger than ``size`` is decoded at a reduced scale (1/2, 1/4 or 1/8, straight from its DCT
    coefficients) that stays at least twice the target, as Pillow's ``thumbnail`` does: a 2544 ×
    3056 JPEG goes into a 224 px cache 2.6× faster (1.6× into 512 px), and the final Lanczos resize
    from twice the target keeps the result within a grey level or so of a full decode. The box is computed from the full
    size, so it does not depend on the reduced decode.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            scale = size / max(w, h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            if img.format == "JPEG":
                img.draft("L", (2 * nw, 2 * nh))
            img.load()
            grey = img.convert("L") if img.mode != "L" else img
    except FileNotFoundError:
        raise MedretError(f"{path}: image not found; check the dataset's image paths") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MedretError(f"{path}: cannot decode image ({exc}); replace or remove this pair") from exc
    if grey.size != (nw, nh):
        grey = grey.resize((nw, nh), Image.Resampling.LANCZOS)
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = np.asarray(grey, dtype=np.uint8)
    return canvas, (top, left, nh, nw)


def decode_all(
    paths: Sequence[str], size: int, *, workers: int = 1, desc: str = "decode"
) -> Iterator[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """:func:`decode_to_canvas` of every path, in order, on ``workers`` threads.

    Pillow releases the GIL while it decodes and resizes, so threads decode in parallel; at most
    ``4 × workers`` images wait decoded, whatever the number of paths. The output does not depend
    on ``workers``. The first failing image raises its error; the images still queued are dropped.
    """
    items = progress(paths, len(paths), desc, unit="img")
    if workers <= 1:
        yield from (decode_to_canvas(path, size) for path in items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medret-decode")
    try:
        pending: deque[Future[tuple[np.ndarray, tuple[int, int, int, int]]]] = deque()
        for path in items:
            pending.append(pool.submit(decode_to_canvas, path, size))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def image_problem(path: str | Path, *, decode: bool = True) -> str | None:
    """Why the image at ``path`` cannot be used (``"not found"``, the decoder's message), or None.

    ``decode=False`` only opens the file and parses its header (a few hundred bytes). ``decode=True``
    also reads all of its compressed data: JPEGs are decoded at 1/8 scale (DCT scaling still walks
    every entropy-coded block, so truncation shows, at a fraction of the cost), other formats are
    checked by PIL's ``verify`` (PNG: every chunk's CRC up to IEND).
    """
    try:
        with Image.open(path) as img:
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
) -> None:
    """Decode every image once into the HDF5 cache at ``out_path`` (written atomically).

    ``workers`` threads decode (see :func:`decode_all`); the file is the same for any number.
    """
    if size < 16:
        raise MedretError(f"image cache size {size} is too small; set image_size >= 16")
    check_files_exist(paths)
    n = len(ids)
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
        images = f.create_dataset(
            "images",
            (n, size, size),
            dtype=np.uint8,
            chunks=(1, size, size),
            compression="gzip",
            compression_opts=4,
        )
        boxes = np.zeros((n, 4), dtype=np.int32)
        decoded = decode_all(paths, size, workers=workers, desc=f"decode {Path(out_path).name}")
        for i, (canvas, box) in enumerate(decoded):
            images[i], boxes[i] = canvas, box
        f.create_dataset("boxes", data=boxes)
        f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
        f.attrs.update(manifest_digest=manifest_digest, size=size, medret_version=medret.__version__)


class ImageCache:
    """Read access to an image cache, with its provenance checked on open."""

    def __init__(self, path: str | Path, *, manifest_digest: str | None = None) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
            self.images = self._file["images"]
            self.boxes = self._file["boxes"][:]
            self.ids = [s.decode() if isinstance(s, bytes) else s for s in self._file["ids"][:]]
            self.attrs = dict(self._file.attrs)
        except (OSError, KeyError, ValueError) as exc:  # ValueError: undecodable ids
            raise MedretError(
                f"{self.path}: unreadable or incomplete image cache ({exc}); delete it and re-run the workflow"
            ) from exc
        if manifest_digest is not None and self.attrs.get("manifest_digest") != manifest_digest:
            raise MedretError(
                f"{self.path}: built from a different manifest (digest {self.attrs.get('manifest_digest')} "
                f"!= {manifest_digest}); delete it and re-run the workflow"
            )

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
            raise MedretError(
                f"{self.path}: cannot read images {start}-{stop} ({exc}); delete it and re-run the workflow"
            ) from exc

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
