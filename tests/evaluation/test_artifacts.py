"""Artifact corruptions (markers, devices, collimation, positioning, overexposure), checked numerically."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medret.corruptions import ARTIFACTS, list_kinds, make_specs
from medret.corruptions.artifacts import (
    ANNOTATIONS,
    DEVICE_GREY,
    DRAW,
    ELECTRODE_GREY,
    LATERALITY,
    LINE_GREY,
    MARKER_GREY,
    font_path,
)

SIZES = [(96, 80), (256, 256), (300, 420)]


def _chest(h: int, w: int) -> np.ndarray:
    """A dark, smooth chest-like box (every value <= 170, so every artifact brightens or blackens it)."""
    yy, xx = np.mgrid[0:h, 0:w]
    lungs = np.exp(-(((xx - 0.3 * w) / (0.17 * w)) ** 2 + ((yy - 0.55 * h) / (0.3 * h)) ** 2))
    lungs += np.exp(-(((xx - 0.7 * w) / (0.17 * w)) ** 2 + ((yy - 0.55 * h) / (0.3 * h)) ** 2))
    return (60 + 55 * lungs).astype(np.uint8)


def _params(kind: str) -> list[tuple[int, float]]:
    return list(enumerate(ARTIFACTS[kind][1], start=1))


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize(("severity", "count"), _params("markers"))
def test_markers_count_bounds_and_intensity(h, w, severity, count):
    crop = _chest(h, w)
    out, drawn = DRAW["markers"](crop, count, seed=7 * severity + h)
    s = min(h, w)
    assert drawn.values["count"] == count == len(drawn.boxes)
    texts = [b[0] for b in drawn.boxes]
    assert texts[0] in LATERALITY and set(texts[1:]) <= set(ANNOTATIONS) and len(set(texts)) == count
    changed = out != crop
    inside = np.zeros_like(changed)
    for i, (_, top, left, bottom, right) in enumerate(drawn.boxes):
        assert 0 <= top < bottom <= h and 0 <= left < right <= w
        inside[top:bottom, left:right] = True
        assert (out[top:bottom, left:right] == MARKER_GREY).any()  # solid white strokes
        if i == 0 and s >= 200:  # the laterality marker's cap height: 0.08 s (glyph box of L or R)
            assert 0.07 * s <= bottom - top <= 0.09 * s
        for _, t2, l2, b2, r2 in drawn.boxes[:i]:  # never on top of each other
            assert bottom <= t2 or b2 <= top or right <= l2 or r2 <= left
    assert not (changed & ~inside).any()  # nothing drawn outside the text boxes
    assert (out[changed] > crop[changed]).all()  # white text, anti-aliased edges brighten only
    for _, top, left, bottom, right in drawn.boxes:  # glyphs fill their boxes as DejaVu Sans Bold does
        assert 0.35 <= changed[top:bottom, left:right].mean() <= (1.0 if min(h, w) < 128 else 0.75)


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize(("severity", "n_lines"), _params("devices"))
def test_devices_counts_intensities_and_bounds(h, w, severity, n_lines):
    crop = _chest(h, w)
    out, drawn = DRAW["devices"](crop, n_lines, seed=severity + 31 * w)
    s = min(h, w)
    labels = [b[0] for b in drawn.boxes]
    assert sum(label.startswith("line") for label in labels) == n_lines == severity
    assert labels.count("electrode") == n_lines - 1 and labels.count("device") == int(n_lines >= 3)
    # wires 0.006 s and tubes 0.015 s wide (at least 1 and 2 px), alternating
    widths = [int(label[4:]) for label in labels if label.startswith("line")]
    assert widths == [max(1, round(0.006 * s)) if i % 2 == 0 else max(2, round(0.015 * s)) for i in range(n_lines)]
    changed = out != crop
    assert set(np.unique(out[changed])) <= {LINE_GREY, ELECTRODE_GREY, DEVICE_GREY}  # solid, no blending
    inside = np.zeros_like(changed)
    for label, top, left, bottom, right in drawn.boxes:
        assert 0 <= top < bottom <= h and 0 <= left < right <= w
        inside[top:bottom, left:right] = True
        if label == "device":  # 0.10 s x 0.07 s in the upper chest
            assert (bottom - top, right - left) == (max(2, round(0.07 * s)), max(2, round(0.10 * s)))
            assert (out[top:bottom, left:right] == DEVICE_GREY).mean() > 0.8
            assert bottom <= 0.35 * h + 0.035 * s + 2
        if label == "electrode":
            ring = out[top:bottom, left:right]
            r = (bottom - top - 1) // 2
            assert r == max(3, round(0.025 * s)) and ring[r, r] != ELECTRODE_GREY  # a ring, hollow
    assert not (changed & ~inside).any()
    # every line starts at the top edge
    for label, top, *_ in drawn.boxes:
        if label.startswith("line"):
            assert top == 0


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize(("severity", "frac"), _params("collimation"))
def test_collimation_removes_the_stated_rows_and_columns_asymmetrically(h, w, severity, frac):
    crop = _chest(h, w)
    out, drawn = DRAW["collimation"](crop, frac, seed=severity)
    v = drawn.values
    assert v["top"] + v["bottom"] == round(frac * h) and v["left"] + v["right"] == round(frac * w)
    for a, b in ((v["top"], v["bottom"]), (v["left"], v["right"])):
        total = a + b
        assert round(0.15 * total) - 1 <= a <= round(0.85 * total) + 1
    field = np.zeros((h, w), dtype=bool)
    field[v["top"] : h - v["bottom"], v["left"] : w - v["right"]] = True
    assert (out[~field] == 0).all() and (out[field] == crop[field]).all()
    black = 1 - (1 - round(frac * h) / h) * (1 - round(frac * w) / w)
    assert (out == 0).mean() == pytest.approx(black)


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize(("severity", "frac"), _params("positioning"))
def test_positioning_shifts_the_field_exactly(h, w, severity, frac):
    crop = _chest(h, w)
    out, drawn = DRAW["positioning"](crop, frac, seed=100 + severity)
    dy, dx = int(drawn.values["dy"]), int(drawn.values["dx"])
    # the shift has length frac of the box along the drawn direction (up to rounding to pixels)
    assert math.hypot(dy / (frac * h), dx / (frac * w)) == pytest.approx(1.0, abs=1.5 / (frac * min(h, w)))
    _, top, left, bottom, right = drawn.boxes[0]
    assert (bottom - top, right - left) == (h - abs(dy), w - abs(dx))
    np.testing.assert_array_equal(out[top:bottom, left:right], crop[top - dy : bottom - dy, left - dx : right - dx])
    outside = np.ones((h, w), dtype=bool)
    outside[top:bottom, left:right] = False
    assert (out[outside] == 0).all()


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize(("severity", "frac"), _params("overexposure"))
def test_overexposure_saturates_the_stated_area(h, w, severity, frac):
    crop = _chest(h, w)
    out, drawn = DRAW["overexposure"](crop, frac, seed=severity * 13)
    v = drawn.values
    assert 0.6 <= v["a"] / v["b"] <= 1.6 and math.pi * v["a"] * v["b"] == pytest.approx(frac * h * w)
    saturated = (out == 255).mean()
    assert saturated == pytest.approx(frac, abs=2.5 / min(h, w))  # the ellipse, to a pixel's rim
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy + 0.5 - v["cy"]) / v["a"]) ** 2 + ((xx + 0.5 - v["cx"]) / v["b"]) ** 2)
    assert (out[r <= 1] == 255).all() and (out[r >= 1.25] == crop[r >= 1.25]).all()
    band = (r > 1) & (r < 1.25)
    assert (out[band] >= crop[band]).all() and (out[band] < 255).any()
    _, top, left, bottom, right = drawn.boxes[0]
    assert 0 <= top < bottom <= h and 0 <= left < right <= w


@pytest.mark.parametrize("kind", list(ARTIFACTS))
def test_artifacts_are_deterministic_in_the_seed(kind):
    crop = _chest(128, 112)
    value = ARTIFACTS[kind][1][2]
    a, _ = DRAW[kind](crop, value, seed=5)
    b, _ = DRAW[kind](crop, value, seed=5)
    c, _ = DRAW[kind](crop, value, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == crop.shape


@pytest.mark.parametrize("kind", list(ARTIFACTS))
def test_artifact_kinds_through_specs_and_apply(kind):
    """Declared as severity kinds: specs per (pair, severity, repeat) with a seed; applied to the content box
    only, severity 0 unchanged, each row exactly its drawing on the crop."""
    declared = list_kinds()[kind]
    assert declared.severity and declared.seeded and declared.parameters == ARTIFACTS[kind][1]
    entry = {"kind": kind, "levels": [0, 1, 3, 5], "repeats": 2, "seed": 4}
    specs = make_specs(["p0", "p1"], kind, entry)
    column = ARTIFACTS[kind][0]
    assert list(specs.columns) == ["pair_id", "level", "repeat", column, "noise_seed"]
    assert len(specs) == 2 * (1 + 3 * 2)  # severity 0 once, the others twice
    assert specs.loc[specs["level"] > 0, column].tolist() == [
        ARTIFACTS[kind][1][int(lv) - 1] for lv in specs.loc[specs["level"] > 0, "level"]
    ]
    assert specs.groupby("level")["noise_seed"].nunique().loc[5.0] == 4  # a draw per pair and repeat
    pd_specs = make_specs(["p0", "p1"], kind, entry)
    assert pd_specs.equals(specs)
    canvas = torch.zeros(len(specs), 140, 140, dtype=torch.uint8)
    crop = torch.from_numpy(_chest(120, 100))
    canvas[:, 10:130, 20:120] = crop
    boxes = torch.tensor([[10, 20, 120, 100]] * len(specs))
    out = declared.apply(canvas, boxes, specs, entry)
    assert (out[:, :10] == 0).all() and (out[:, :, :20] == 0).all() and (out[:, 130:] == 0).all()
    for i, row in enumerate(specs.itertuples()):
        if row.level == 0:
            assert torch.equal(out[i], canvas[i])
        else:
            want, _ = DRAW[kind](crop.numpy(), getattr(row, column), row.noise_seed)
            np.testing.assert_array_equal(out[i, 10:130, 20:120].numpy(), want)


def test_the_font_ships_with_a_pinned_dependency():
    assert font_path().name == "DejaVuSans-Bold.ttf" and "matplotlib" in str(font_path())
