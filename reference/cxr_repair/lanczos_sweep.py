"""Does this Pillow's Lanczos give the same bytes as another Pillow's, over many source sizes? (runs in either venv)

For a seeded list of source sizes (the MIMIC-CXR shapes, the 319-truncation cases, sizes below the canvas that
their ``preprocess()`` enlarges, and random sizes from 2 to 3100 px per side), it builds a source image from an
integer hash of the pixel coordinates (noise at every pixel, the hardest input for a filter, and the same bytes
under any numpy), resizes it to its 320-px canvas size (``int(side * 320 / longest)``, the rule of their
``preprocess()`` and of ``medret.imaging.canvas_size``) with ``Image.resize(..., LANCZOS)``, in mode L and RGB, and
records a SHA-256 of every output.

``--check`` also runs each resize as two explicit one-axis resizes, horizontal then vertical (the order Pillow 9.x
always used; Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as
the width, python-pillow/Pillow#9549), and reports how many of those match the written digests.

    python lanczos_sweep.py --write ref.json          # in the reference venv (Pillow 9.5)
    python lanczos_sweep.py --check ref.json          # in medret's venv (Pillow 13): exit 1 if a direct resize differs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

SIZE = 320
FIXED = [
    (2544, 3056),
    (3056, 2544),
    (2022, 2022),
    (2139, 1700),
    (1800, 2139),
    (1001, 777),
    (512, 333),
    (321, 320),
    (320, 321),
    (641, 3),
    (150, 200),
    (319, 1),
    (17, 23),
]


def sizes(n_random: int) -> list[tuple[int, int]]:
    rnd = random.Random(320)  # the stdlib generator: the same list under any numpy
    out = list(FIXED)
    for _ in range(n_random):
        out.append((rnd.randint(2, 3100), rnd.randint(2, 3100)))
    return out


def source(width: int, height: int, channels: int) -> np.ndarray:
    """uint8 pseudo-random pixels from an integer hash of (x, y, channel): identical under any numpy version."""
    y, x = np.mgrid[0:height, 0:width].astype(np.uint64)
    planes = []
    for c in range(channels):
        h = (x * np.uint64(73856093)) ^ (y * np.uint64(19349663)) ^ np.uint64(83492791 * (c + 1))
        h = (h * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
        planes.append(((h >> np.uint64(13)) & np.uint64(255)).astype(np.uint8))
    return planes[0] if channels == 1 else np.stack(planes, axis=-1)


def target(width: int, height: int) -> tuple[int, int]:
    ratio = float(SIZE) / max(width, height)
    return max(1, int(width * ratio)), max(1, int(height * ratio))


def run(n_random: int, two_pass: bool = False) -> dict[str, str]:
    lanczos = Image.Resampling.LANCZOS
    digests = {}
    for w, h in sizes(n_random):
        tw, th = target(w, h)
        for mode, channels in (("L", 1), ("RGB", 3)):
            img = Image.fromarray(source(w, h, channels), mode)
            if not two_pass:
                out = img.resize((tw, th), lanczos)
            else:  # horizontal pass, then vertical pass, each a one-axis resize (skipped when that axis keeps its size)
                out = img.resize((tw, h), lanczos) if tw != w else img
                out = out.resize((tw, th), lanczos) if th != h else out
            digests[f"{w}x{h} {mode} -> {out.size[0]}x{out.size[1]}"] = hashlib.sha256(out.tobytes()).hexdigest()
    return digests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path)
    group.add_argument("--check", type=Path)
    parser.add_argument("--random", type=int, default=120, help="number of random sizes besides the fixed ones")
    args = parser.parse_args()

    if args.write:
        digests = run(args.random)
        args.write.write_text(json.dumps({"Pillow": PIL.__version__, "digests": digests}, indent=1) + "\n")
        print(f"Pillow {PIL.__version__}: {len(digests)} Lanczos resizes written to {args.write}")
        return 0
    ref = json.loads(args.check.read_text())
    status = 0
    for two_pass, label in ((False, "resize()"), (True, "horizontal then vertical, two resize() calls")):
        digests = run(args.random, two_pass)
        differ = [k for k, v in digests.items() if ref["digests"].get(k) != v]
        print(
            f"Lanczos, Pillow {PIL.__version__} {label} vs Pillow {ref['Pillow']} resize(): "
            f"{len(digests) - len(differ)} of {len(digests)} byte-identical"
        )
        for k in differ:
            w, h = (int(n) for n in k.split()[0].split("x"))
            tw, th = (int(n) for n in k.split()[-1].split("x"))
            print(f"  differs: {k}   (w/h {w / h:.3f}; height shrinks by {h - th} px, width by {w - tw} px)")
        if differ and not two_pass:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
