"""Artifacts of real films, drawn on a content box: burned-in markers, support devices, collimation, positioning,
overexposure.

Each function takes the content box as a uint8 (h, w) array, the kind's parameter at the row's severity and the
row's seed, and returns the new array and a description of what it drew (:class:`Drawn`: the rectangles and the
pixels set, for tests and the examples plot). Everything random comes from ``numpy.random.default_rng(seed)``,
the row's ``noise_seed`` (a pure function of seed, pair, corruption, level and repeat), and everything is drawn
on the CPU with numpy and Pillow, so the result is the same on every device. ``s`` below is the box's shorter
side in pixels; sizes are fractions of it, so an artifact covers the same share of the anatomy at every cache
size. Grey levels are on the 0..255 scale.

* ``markers`` (parameter ``count``: 1, 2, 3, 4, 6 at severities 1..5): burned-in annotations in white (255),
  DejaVu Sans Bold (shipped with matplotlib, a pinned dependency). The first is a laterality marker, ``L`` or
  ``R``, its cap height 0.08·s; the others are drawn without repeats from ``PORTABLE``, ``AP SUPINE``, ``ERECT``,
  ``SEMI-ERECT``, ``UPRIGHT`` and ``AP``, cap height 0.045·s (at least 6 px; a text wider than the box is set
  smaller until it fits). Each sits at its own anchor, drawn without repeats from the four corners and the four
  edge midpoints, inset from the edges by 0.02·s plus a uniform jitter of up to 0.03·s.
* ``devices`` (parameter ``n_lines``: 1..5): ``n_lines`` lines and tubes, ``n_lines - 1`` ECG electrodes and,
  from 3 lines on, one implanted device. A line is a quadratic Bézier curve from a point on the top edge
  (x uniform in [0.2, 0.8]·w) to one in the chest (x in [0.25, 0.75]·w, y in [0.45, 0.9]·h) through a control
  point uniform in the box, grey 235; odd-numbered ones are wires 0.006·s wide, even-numbered ones tubes 0.015·s
  wide (at least 1 and 2 px). An electrode is a ring of outer radius 0.025·s (at least 3 px) and width 0.3 of it,
  grey 250, centred uniformly in the box at least a radius from its edges. The device is a filled rounded
  rectangle of 0.10·s × 0.07·s, grey 255, in the upper chest (centre x in [0.15, 0.85]·w, y in [0.12, 0.35]·h).
* ``collimation`` (parameter ``border_frac``: 0.04, 0.08, 0.12, 0.18, 0.25): black borders (0) removing
  ``round(border_frac·h)`` rows and ``round(border_frac·w)`` columns in all, each split between the two sides by a
  fraction uniform in [0.15, 0.85] (asymmetric, as a misaligned collimator).
* ``positioning`` (parameter ``shift_frac``: 0.03, 0.06, 0.1, 0.15, 0.2): the field shifted by
  ``round(shift_frac·h·sin θ)`` rows and ``round(shift_frac·w·cos θ)`` columns, θ uniform in [0, 2π): the anatomy
  pushed out on one side is cropped, the side it leaves is black (outside the exposed field).
* ``overexposure`` (parameter ``area_frac``: 0.03, 0.06, 0.1, 0.15, 0.22): an ellipse of ``area_frac`` of the box
  saturated to 255, its axis ratio (height/width) uniform in [0.6, 1.6], its centre uniform where it fits in the
  box (the box centre on an axis where it does not), with a linear falloff to the original pixels over the next
  25% of its radii (normalised radius 1 to 1.25).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LATERALITY = ("L", "R")
ANNOTATIONS = ("PORTABLE", "AP SUPINE", "ERECT", "SEMI-ERECT", "UPRIGHT", "AP")
ANCHORS = ("top-left", "top-right", "bottom-left", "bottom-right", "top", "bottom", "left", "right")
MARKER_GREY, LINE_GREY, ELECTRODE_GREY, DEVICE_GREY = 255, 235, 250, 255


@dataclass
class Drawn:
    """What an artifact drew: labelled rectangles ``(label, top, left, bottom, right)`` (pixel bounds, bottom and
    right exclusive) and any numbers that define it."""

    boxes: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def font_path() -> Path:
    """DejaVu Sans Bold as matplotlib ships it (no system font is used, so text is the same on every machine)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: matplotlib's DejaVu Sans Bold is missing; reinstall matplotlib")
    return path


@functools.lru_cache(maxsize=256)
def _font(cap_height: int) -> ImageFont.FreeTypeFont:
    # DejaVu Sans caps are 0.73 em high.
    return ImageFont.truetype(str(font_path()), size=max(1, round(cap_height / 0.73)))


def _text_box(text: str, cap_height: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in _font(cap_height).getbbox(text))  # type: ignore[return-value]


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[str, int, int, int, int]], gap: int) -> bool:
    top, left, bottom, right = box
    return any(top < b + gap and t < bottom + gap and left < r + gap and lf < right + gap for _, t, lf, b, r in boxes)


def markers(crop: np.ndarray, count: float, seed: int) -> tuple[np.ndarray, Drawn]:
    """Burned-in laterality marker and annotations (module doc)."""
    rng = np.random.default_rng(seed)
    h, w = crop.shape
    s = min(h, w)
    n = int(count)
    texts = [LATERALITY[int(rng.integers(2))], *rng.permutation(ANNOTATIONS)[: n - 1].tolist()]
    anchors = [ANCHORS[i] for i in rng.permutation(len(ANCHORS))]
    image = Image.fromarray(crop)
    draw = ImageDraw.Draw(image)
    drawn = Drawn()
    gap = max(2, round(0.01 * s))
    for i, text in enumerate(texts):
        inset = round(0.02 * s + rng.uniform(0.0, 0.03) * s)
        cap = max(6, round((0.08 if i == 0 else 0.045) * s))
        left, top, right, bottom = _text_box(text, cap)
        while right - left > w - 2 * inset and cap > 1:  # too wide for the box: smaller type
            cap -= 1
            left, top, right, bottom = _text_box(text, cap)
        tw, th = right - left, bottom - top
        for anchor in anchors:  # the first anchor with room, stacking away from the edge past earlier text
            vertical, horizontal = (anchor.split("-") * 2)[:2] if "-" in anchor else (anchor, anchor)
            x = {"left": inset, "right": w - inset - tw}.get(horizontal, (w - tw) // 2)
            y = {"top": inset, "bottom": h - inset - th}.get(vertical, (h - th) // 2)
            step = -(th + gap) if vertical == "bottom" else th + gap
            x = max(0, min(x, w - tw))
            while 0 <= y <= h - th and _overlaps((y, x, y + th, x + tw), drawn.boxes, gap):
                y += step
            if 0 <= y <= h - th:
                break
        else:
            continue  # no room left in a tiny box: fewer markers (``values["count"]`` says how many)
        anchors.remove(anchor)
        draw.text((x - left, y - top), text, fill=MARKER_GREY, font=_font(cap))
        drawn.boxes.append((text, y, x, y + th, x + tw))
    drawn.values["count"] = len(drawn.boxes)
    return np.asarray(image).copy(), drawn


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 200) -> list[tuple[float, float]]:
    t = np.linspace(0.0, 1.0, n)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    return [(float(x), float(y)) for x, y in points]


def devices(crop: np.ndarray, n_lines: float, seed: int) -> tuple[np.ndarray, Drawn]:
    """Lines and tubes, ECG electrodes and an implanted device (module doc)."""
    rng = np.random.default_rng(seed)
    h, w = crop.shape
    s = min(h, w)
    n = int(n_lines)
    image = Image.fromarray(crop)
    draw = ImageDraw.Draw(image)
    drawn = Drawn(values={"n_lines": n, "n_electrodes": n - 1, "device": float(n >= 3)})
    for i in range(n):
        width = max(1, round(0.006 * s)) if i % 2 == 0 else max(2, round(0.015 * s))
        start = np.array([rng.uniform(0.2, 0.8) * w, 0.0])
        end = np.array([rng.uniform(0.25, 0.75) * w, rng.uniform(0.45, 0.9) * h])
        control = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        points = _bezier(start, control, end)
        draw.line(points, fill=LINE_GREY, width=width, joint="curve")
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        pad = width // 2 + 1
        drawn.boxes.append(
            (f"line{width}", max(0, math.floor(min(ys)) - pad), max(0, math.floor(min(xs)) - pad),
             min(h, math.ceil(max(ys)) + pad + 1), min(w, math.ceil(max(xs)) + pad + 1))
        )  # fmt: skip
    radius = max(3, round(0.025 * s))
    ring = max(1, round(0.3 * radius))
    for _ in range(n - 1):
        cy, cx = rng.uniform(radius, h - radius), rng.uniform(radius, w - radius)
        y0, x0 = round(cy - radius), round(cx - radius)
        draw.ellipse((x0, y0, x0 + 2 * radius, y0 + 2 * radius), outline=ELECTRODE_GREY, width=ring)
        drawn.boxes.append(("electrode", y0, x0, y0 + 2 * radius + 1, x0 + 2 * radius + 1))
    if n >= 3:
        dh, dw = max(2, round(0.07 * s)), max(2, round(0.10 * s))
        cy, cx = rng.uniform(0.12, 0.35) * h, rng.uniform(0.15, 0.85) * w
        y0, x0 = max(0, min(round(cy - dh / 2), h - dh)), max(0, min(round(cx - dw / 2), w - dw))
        draw.rounded_rectangle((x0, y0, x0 + dw - 1, y0 + dh - 1), radius=max(1, dh // 4), fill=DEVICE_GREY)
        drawn.boxes.append(("device", y0, x0, y0 + dh, x0 + dw))
    return np.asarray(image).copy(), drawn


def _split(total: int, rng: np.random.Generator) -> tuple[int, int]:
    first = round(total * rng.uniform(0.15, 0.85))
    return first, total - first


def collimation(crop: np.ndarray, border_frac: float, seed: int) -> tuple[np.ndarray, Drawn]:
    """Asymmetric black borders (module doc)."""
    rng = np.random.default_rng(seed)
    h, w = crop.shape
    top, bottom = _split(round(border_frac * h), rng)
    left, right = _split(round(border_frac * w), rng)
    out = crop.copy()
    out[:top], out[h - bottom :], out[:, :left], out[:, w - right :] = 0, 0, 0, 0
    drawn = Drawn(values={"top": top, "bottom": bottom, "left": left, "right": right})
    drawn.boxes.append(("field", top, left, h - bottom, w - right))
    return out, drawn


def positioning(crop: np.ndarray, shift_frac: float, seed: int) -> tuple[np.ndarray, Drawn]:
    """The field shifted, what leaves it cropped, what it leaves black (module doc)."""
    rng = np.random.default_rng(seed)
    h, w = crop.shape
    theta = rng.uniform(0.0, 2 * math.pi)
    dy, dx = round(shift_frac * h * math.sin(theta)), round(shift_frac * w * math.cos(theta))
    out = np.zeros_like(crop)
    out[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = crop[
        max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)
    ]
    drawn = Drawn(values={"dy": dy, "dx": dx})
    drawn.boxes.append(("field", max(0, dy), max(0, dx), h + min(0, dy), w + min(0, dx)))
    return out, drawn


def overexposure(crop: np.ndarray, area_frac: float, seed: int) -> tuple[np.ndarray, Drawn]:
    """A saturated ellipse with a linear falloff (module doc)."""
    rng = np.random.default_rng(seed)
    h, w = crop.shape
    ratio = rng.uniform(0.6, 1.6)
    b = math.sqrt(area_frac * h * w / (math.pi * ratio))  # semi-axes: a vertical, b horizontal
    a = ratio * b
    cy = rng.uniform(a, h - a) if 2 * a < h else h / 2
    cx = rng.uniform(b, w - b) if 2 * b < w else w / 2
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy + 0.5 - cy) / a) ** 2 + ((xx + 0.5 - cx) / b) ** 2)  # pixel centres
    weight = np.clip((1.25 - r) / 0.25, 0.0, 1.0)
    x = crop.astype(np.float64)
    out = np.floor(x + weight * (255.0 - x) + 0.5).clip(0, 255).astype(np.uint8)
    drawn = Drawn(values={"cy": cy, "cx": cx, "a": a, "b": b})
    drawn.boxes.append(
        ("ellipse", max(0, math.floor(cy - a)), max(0, math.floor(cx - b)),
         min(h, math.ceil(cy + a)), min(w, math.ceil(cx + b)))
    )  # fmt: skip
    return out, drawn


#: kind -> drawing function.
DRAW: dict[str, Callable[[np.ndarray, float, int], tuple[np.ndarray, Drawn]]] = {
    "markers": markers,
    "devices": devices,
    "collimation": collimation,
    "positioning": positioning,
    "overexposure": overexposure,
}
