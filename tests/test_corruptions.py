"""Occlusion specs and their application: area, placement, determinism (hand-checked cases)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from medret.corruptions import DEFAULT_LEVELS, conditions, make_specs, occlude, occlusion_specs, specs_digest
from medret.errors import MedretError

IDS = [f"p{i:03d}" for i in range(20)]


def test_conditions_single_repeat_at_deterministic_levels():
    assert conditions([0.5, 0.0, 1.0], 3) == [(0.0, 0), (0.5, 0), (0.5, 1), (0.5, 2), (1.0, 0)]


def test_specs_square_of_the_right_area_fully_inside():
    specs = occlusion_specs(IDS, corruption="occ", levels=DEFAULT_LEVELS, repeats=2, seed=0)
    # 20 pairs × (1 + 9 × 2 + 1) conditions
    assert len(specs) == 20 * 20
    side = np.sqrt(specs["level"])
    np.testing.assert_allclose(specs["height"], side)
    np.testing.assert_allclose(specs["width"] * specs["height"], specs["level"], atol=1e-12)
    assert (specs["top"] >= 0).all() and (specs["left"] >= 0).all()
    assert (specs["top"] + specs["height"] <= 1 + 1e-12).all()
    assert (specs["left"] + specs["width"] <= 1 + 1e-12).all()


def test_placement_is_a_pure_function_of_its_key():
    a = occlusion_specs(IDS[:5], corruption="occ", levels=[0.3], repeats=2, seed=7)
    b = occlusion_specs(IDS, corruption="occ", levels=[0.1, 0.3, 0.9], repeats=3, seed=7)
    # Adding pairs, levels and repeats leaves every existing patch where it was.
    merged = a.merge(b, on=["pair_id", "level", "repeat"], suffixes=("_a", "_b"))
    assert len(merged) == len(a)
    for col in ("top", "left"):
        np.testing.assert_array_equal(merged[f"{col}_a"], merged[f"{col}_b"])
    # ...while the seed, the corruption name and the repeat each move it.
    other_seed = occlusion_specs(IDS[:5], corruption="occ", levels=[0.3], repeats=2, seed=8)
    other_name = occlusion_specs(IDS[:5], corruption="occ2", levels=[0.3], repeats=2, seed=7)
    assert not np.allclose(a["top"], other_seed["top"])
    assert not np.allclose(a["top"], other_name["top"])
    assert a.loc[a["repeat"] == 0, "top"].tolist() != a.loc[a["repeat"] == 1, "top"].tolist()


def test_placements_are_spread_over_the_free_range():
    specs = occlusion_specs([f"x{i}" for i in range(2000)], corruption="occ", levels=[0.25], repeats=1, seed=0)
    # side 0.5 -> top uniform on [0, 0.5]: mean 0.25, sd 0.5/sqrt(12) = 0.144
    assert abs(specs["top"].mean() - 0.25) < 0.01
    assert abs(specs["top"].std() - 0.5 / math.sqrt(12)) < 0.01


def test_occlude_hand_case():
    img = torch.full((1, 10, 10), 200, dtype=torch.uint8)
    box = torch.tensor([[0, 0, 10, 10]])
    # top 0.2, left 0.5, side 0.3 (level 0.09): rows 2..4, cols 5..7
    out = occlude(img, box, torch.tensor([[0.2, 0.5, 0.3, 0.3]]))
    expected = torch.full((10, 10), 200, dtype=torch.uint8)
    expected[2:5, 5:8] = 0
    assert torch.equal(out[0], expected)
    assert torch.equal(img[0], torch.full((10, 10), 200, dtype=torch.uint8)), "input must not change"


def test_occlude_respects_the_content_box():
    # A 4-row letterbox: the image occupies rows 2..5 of an 8x8 canvas.
    img = torch.full((1, 8, 8), 100, dtype=torch.uint8)
    out = occlude(img, torch.tensor([[2, 0, 4, 8]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]), fill=255)
    assert (out[0, 2:6] == 255).all() and (out[0, :2] == 100).all() and (out[0, 6:] == 100).all()


@pytest.mark.parametrize("level", [0.1, 0.3, 0.5, 0.9])
def test_occluded_area_matches_the_level(level):
    size = 128
    specs = occlusion_specs(IDS, corruption="occ", levels=[level], repeats=1, seed=0)
    rects = torch.as_tensor(specs[["top", "left", "height", "width"]].to_numpy(copy=True))
    imgs = torch.full((len(IDS), size, size), 255, dtype=torch.uint8)
    out = occlude(imgs, torch.tensor([[0, 0, size, size]] * len(IDS)), rects)
    frac = (out == 0).float().mean(dim=(1, 2)).numpy()
    side = round(math.sqrt(level) * size)
    # Rounding moves each edge by at most half a pixel: the side is within one pixel.
    assert np.all(np.abs(frac - level) <= (2 * side + 1) / size**2)
    assert np.all((out == 0).sum(dim=(1, 2)).numpy() == side * side)


def test_levels_zero_and_one():
    specs = make_specs(IDS[:3], "occ", {"kind": "occlusion", "levels": [0.0, 1.0], "repeats": 4})
    rects = torch.as_tensor(specs[["top", "left", "height", "width"]].to_numpy(copy=True))
    imgs = torch.full((6, 16, 16), 50, dtype=torch.uint8)
    out = occlude(imgs, torch.tensor([[0, 0, 16, 16]] * 6), rects)
    assert (out[:3] == 50).all() and (out[3:] == 0).all()


def test_make_specs_errors_name_the_key():
    with pytest.raises(MedretError, match=r"corruptions\.occ\.kind"):
        make_specs(IDS, "occ", {"kind": "blur"})
    with pytest.raises(MedretError, match=r"corruptions\.occ\.levels"):
        make_specs(IDS, "occ", {"kind": "occlusion", "levels": [0.5, 1.5]})


def test_specs_digest_tracks_content():
    entry = {"kind": "occlusion", "levels": [0.0, 0.5], "seed": 0}
    specs = make_specs(IDS, "occ", entry)
    assert specs_digest(specs, "occ", entry) == specs_digest(specs.copy(), "occ", dict(entry))
    moved = specs.assign(top=specs["top"] + 1e-3)
    assert specs_digest(moved, "occ", entry) != specs_digest(specs, "occ", entry)
    assert specs_digest(specs, "occ", {**entry, "fill": "white"}) != specs_digest(specs, "occ", entry)
    assert isinstance(specs, pd.DataFrame)
