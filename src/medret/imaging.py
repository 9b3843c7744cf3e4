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

import sys
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

import medret
from medret.errors import MedretError
from medret.io import atomic_output


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


def check_files_exist(paths: Sequence[str]) -> None:
    """Fail with a count and the first offenders when any source image is missing."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        first = ", ".join(missing[:3])
        raise MedretError(
            f"{len(missing)} of {len(paths)} images not found (first: {first}); "
            "check the image paths in the dataset CSV (relative to the CSV's directory)"
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
        bar = tqdm(
            total=n,
            desc=f"decode {Path(out_path).name}",
            unit="img",
            file=sys.stderr,
            mininterval=5,
            ascii=True,
        )
        for i, path in enumerate(paths):
            images[i], boxes[i] = decode_to_canvas(path, size)
            bar.update()
        bar.close()
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
        except (OSError, KeyError) as exc:
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
        return self.images[start:stop]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
