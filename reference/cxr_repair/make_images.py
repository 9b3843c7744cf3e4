"""Write synthetic radiograph-like test images and a manifest (runs in the reference venv).

Each image is a seeded phantom: smooth anatomy-like structure (body, lung fields, spine, ribs, a slow intensity
gradient), per-pixel noise, and sharp edges (collimation borders, a saturated marker, thin wires, a round device),
so that both the Lanczos filter and the JPEG decoder have something to differ on.

Sizes: the two MIMIC-CXR-JPG shapes (2544 x 3056 portrait, 3056 x 2544 landscape), a square, the awkward widths and
heights where ``int(side * 320 / longest)`` truncates the longer side to 319 (2139, and 321 x 320 for the shorter
side), images more than twice as tall as wide (where Pillow 13 runs the vertical Lanczos pass first), medium and
small images, and images no larger than 320 (320 x 240 keeps its size in their code, 150 x 200 is
enlarged by it). Greyscale JPEG (quality 95 like MIMIC-CXR-JPG, and 90), one progressive JPEG, greyscale PNGs and
one RGB JPEG.

The images are written with this venv's Pillow (9.5.0), so the files are the same whichever Pillow medret has.

    python make_images.py OUT_DIR        # writes OUT_DIR/*.jpg|png and OUT_DIR/manifest.json
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# (name, width, height, format, mode, JPEG quality or None, progressive, why it is here)
CASES: list[tuple[str, int, int, str, str, int | None, bool, str]] = [
    ("mimic_portrait", 2544, 3056, "JPEG", "L", 95, False, "MIMIC-CXR-JPG's commonest PA size"),
    ("mimic_landscape", 3056, 2544, "JPEG", "L", 95, False, "MIMIC-CXR-JPG landscape"),
    ("mimic_progressive", 2544, 3056, "JPEG", "L", 95, True, "progressive JPEG"),
    ("square_2022", 2022, 2022, "JPEG", "L", 90, False, "square"),
    ("w2139", 2139, 1700, "JPEG", "L", 90, False, "longest side 2139: int(2139*320/2139) = 319"),
    ("h2139", 1800, 2139, "JPEG", "L", 90, False, "1800 x 2139: height 319, width 269"),
    ("narrow_1200x2544", 1200, 2544, "JPEG", "L", 95, False, "taller than twice its width: Pillow 13 pass order"),
    ("mid_1001x777", 1001, 777, "JPEG", "L", 90, False, "odd medium size"),
    ("small_512x333", 512, 333, "JPEG", "L", 90, False, "little larger than the canvas"),
    ("just_321x320", 321, 320, "JPEG", "L", 90, False, "one pixel over: 320 x 319"),
    ("equal_320x240", 320, 240, "JPEG", "L", 90, False, "longest side = 320: resized to its own size"),
    ("tiny_150x200", 150, 200, "JPEG", "L", 90, False, "smaller than the canvas: their code enlarges"),
    ("png_2544x3056", 2544, 3056, "PNG", "L", None, False, "lossless, MIMIC size"),
    ("png_w2139", 2139, 1700, "PNG", "L", None, False, "lossless, 319 case"),
    ("png_1001x777", 1001, 777, "PNG", "L", None, False, "lossless, medium"),
    ("png_narrow_1000x2139", 1000, 2139, "PNG", "L", None, False, "lossless, taller than twice its width"),
    ("png_150x200", 150, 200, "PNG", "L", None, False, "lossless, enlarged by their code"),
    ("rgb_2048x2500", 2048, 2500, "JPEG", "RGB", 90, False, "colour JPEG (4:2:0): RGB->L order matters"),
]


def phantom(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A float64 (height, width) radiograph-like image in grey levels, roughly 0..255 (not clipped yet)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / width, y / height  # 0..1 across the image

    # Smooth structure: a bright body, two darker lung fields, a bright spine, ribs as soft bands, a gradient.
    body = np.exp(-((((u - 0.5) / 0.42) ** 2 + ((v - 0.55) / 0.55) ** 2) ** 2))
    lungs = sum(np.exp(-((((u - cx) / 0.17) ** 2 + ((v - 0.45) / 0.30) ** 2) ** 2)) for cx in (0.30, 0.70))
    spine = np.exp(-(((u - 0.5) / 0.05) ** 2))
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (v * 9 + 0.6 * (u - 0.5) ** 2 * 4))
    img = 40 + 150 * body - 90 * lungs * (0.8 + 0.2 * ribs) + 50 * spine + 25 * v

    # Low-frequency texture: a few random sinusoids.
    for _ in range(6):
        fx, fy = rng.uniform(0.5, 6, size=2)
        img += rng.uniform(3, 8) * np.sin(2 * np.pi * (fx * u + fy * v) + rng.uniform(0, 2 * np.pi))

    # Per-pixel noise.
    img += rng.normal(0.0, 6.0, size=img.shape)

    # Sharp edges: collimation (black borders of random width), a saturated marker block, thin wires, a round device.
    bx, by = (int(rng.integers(0, max(1, s // 20) + 1)) for s in (width, height))
    img[:, :bx] = 0
    img[:by, :] = 0
    mx, my = int(0.08 * width), int(0.10 * height)
    img[my : my + max(2, height // 25), mx : mx + max(2, width // 40)] = 255
    for k in range(3):
        col = int(width * rng.uniform(0.2, 0.8))
        thickness = 1 + k
        img[int(0.2 * height) : int(0.8 * height), col : col + thickness] = 240
    r = max(2.0, 0.03 * min(width, height))
    img[(x - 0.62 * width) ** 2 + (y - 0.35 * height) ** 2 < r**2] = 250
    return img


def to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    manifest = []
    for name, w, h, fmt, mode, quality, progressive, why in CASES:
        rng = np.random.default_rng(zlib.crc32(name.encode()))  # seeded by name: adding a case changes no other
        grey = phantom(w, h, rng)
        if mode == "L":
            img = Image.fromarray(to_uint8(grey), "L")
        else:
            # Unequal channels (a warm tint and a coloured patch), so that converting to L before or after the
            # resize can give different bytes.
            rgb = np.stack([grey * 1.00 + 10, grey * 0.92, grey * 0.80], axis=-1)
            rgb[int(0.6 * h) : int(0.7 * h), int(0.1 * w) : int(0.3 * w)] = (200, 60, 30)
            img = Image.fromarray(to_uint8(rgb), "RGB")
        ext = "jpg" if fmt == "JPEG" else "png"
        path = args.out / f"{name}.{ext}"
        if fmt == "JPEG":
            img.save(path, "JPEG", quality=quality, progressive=progressive)
        else:
            img.save(path, "PNG")
        manifest.append(
            {
                "name": name,
                "file": path.name,
                "width": w,
                "height": h,
                "format": fmt,
                "mode": mode,
                "quality": quality,
                "progressive": progressive,
                "why": why,
            }
        )
        print(f"{path.name:24s} {w:5d} x {h:<5d} {fmt:4s} {mode:3s} {path.stat().st_size / 1e6:6.2f} MB  {why}")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
