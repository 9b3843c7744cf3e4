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

from collections.abc import Sequence
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

    Returns the (size, size) uint8 canvas and the content box (top, left, height, width).
    """
    try:
        with Image.open(path) as img:
            img.load()
            grey = img.convert("L") if img.mode != "L" else img
    except FileNotFoundError:
        raise MedretError(f"{path}: image not found; check the dataset's image paths") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MedretError(f"{path}: cannot decode image ({exc}); replace or remove this pair") from exc
    w, h = grey.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        grey = grey.resize((nw, nh), Image.Resampling.LANCZOS)
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = np.asarray(grey, dtype=np.uint8)
    return canvas, (top, left, nh, nw)


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
    ids: Sequence[str], paths: Sequence[str], out_path: str | Path, *, size: int, manifest_digest: str
) -> None:
    """Decode every image once into the HDF5 cache at ``out_path`` (written atomically)."""
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
        for i, path in enumerate(progress(paths, n, f"decode {Path(out_path).name}", unit="img")):
            images[i], boxes[i] = decode_to_canvas(path, size)
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
