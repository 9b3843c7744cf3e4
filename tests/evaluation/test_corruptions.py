"""Corruption specs and their application: each family against its definition, determinism (hand-checked)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from medret.config import validate_config
from medret.corruptions import (
    ACQUISITION,
    DEFAULT_LEVELS,
    RANDOM_KINDS,
    conditions,
    get_kind,
    list_kinds,
    make_specs,
    occlusion_specs,
    specs_digest,
)
from medret.corruptions.apply import occlude
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
        make_specs(IDS, "occ", {"kind": "smudge"})
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


# --------------------------------------------------------------------------------------------
# Helpers for the extended families: build specs from a config entry and apply one condition.

ACQ_KINDS = list(ACQUISITION)


def _rows(specs: pd.DataFrame, ids: list[str], level: float, repeat: int = 0) -> pd.DataFrame:
    sub = specs[(specs["level"] == level) & (specs["repeat"] == repeat)]
    return sub.set_index("pair_id").loc[ids]


def _run(entry: dict, images: torch.Tensor, boxes: torch.Tensor, level: float, repeat: int = 0, ids=None):
    """Make the specs of ``entry`` for ``ids`` and apply the (level, repeat) condition to ``images``."""
    ids = ids or [f"q{i:03d}" for i in range(len(images))]
    specs = make_specs(ids, "c", entry)
    return get_kind(entry, "c").apply(images, boxes, _rows(specs, ids, level, repeat), entry)


def _full_boxes(n: int, height: int, width: int | None = None) -> torch.Tensor:
    return torch.tensor([[0, 0, height, width or height]] * n)


def _letterbox(n: int, value: int = 128, sentinel: int = 7):
    """(n, 64, 64) canvases whose content box is rows 16..47, columns 4..59 (32 x 56); the padding holds ``sentinel``.

    ``value`` < 0 fills the box with seeded random grey levels.
    """
    images = torch.full((n, 64, 64), sentinel, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(5)
    images[:, 16:48, 4:60] = (
        torch.randint(30, 220, (n, 32, 56), generator=gen, dtype=torch.uint8) if value < 0 else value
    )
    return images, torch.tensor([[16, 4, 32, 56]] * n)


def _padding_kept(out: torch.Tensor, sentinel: int = 7) -> bool:
    outside = torch.ones(out.shape[1:], dtype=torch.bool)
    outside[16:48, 4:60] = False
    return bool((out[:, outside] == sentinel).all())


def test_default_occlusion_table_and_digest_are_unchanged():
    # Pinned from the code before the extension: the study's default tables and digests must not move.
    entry = {"kind": "occlusion", "levels": list(DEFAULT_LEVELS), "repeats": 2, "seed": 3, "fill": "black"}
    specs = make_specs(IDS, "occlusion", entry)
    assert specs_digest(specs, "occlusion", entry) == "aaf78e32f7cdf299"
    assert list(specs.columns) == ["pair_id", "level", "repeat", "top", "left", "height", "width"]
    expected = occlusion_specs(IDS, corruption="occlusion", levels=DEFAULT_LEVELS, repeats=2, seed=3)
    pd.testing.assert_frame_equal(specs, expected)


def test_conditions_per_kind():
    assert conditions([0, 1, 2], 2, deterministic=(0.0,)) == [(0.0, 0), (1.0, 0), (1.0, 1), (2.0, 0), (2.0, 1)]
    noise = make_specs(IDS[:2], "n", {"kind": "gaussian_noise", "levels": [0, 1, 5], "repeats": 3})
    expected = [(0.0, 0), (1.0, 0), (1.0, 1), (1.0, 2), (5.0, 0), (5.0, 1), (5.0, 2)]
    assert sorted(set(zip(noise["level"], noise["repeat"], strict=True))) == expected
    # Deterministic kinds and centred layouts: one repeat per level whatever `repeats` says.
    blur = make_specs(IDS[:2], "b", {"kind": "blur", "repeats": 3})
    assert sorted(set(zip(blur["level"], blur["repeat"], strict=True))) == [(float(s), 0) for s in range(6)]
    centre = make_specs(IDS[:2], "o", {"kind": "occlusion", "levels": [0.5], "repeats": 3, "placement": "centre"})
    assert centre["repeat"].tolist() == [0, 0]


# ---- occlusion: square (centre), patches, grid


def test_square_centre_placement():
    specs = make_specs(IDS[:2], "o", {"kind": "occlusion", "levels": [0.0, 0.36, 1.0], "placement": "centre"})
    row = specs[specs["level"] == 0.36].iloc[0]
    # side 0.6 -> top = left = 0.2
    assert row[["top", "left", "height", "width"]].tolist() == pytest.approx([0.2, 0.2, 0.6, 0.6])
    entry = {"kind": "occlusion", "levels": [0.36], "placement": "centre"}
    out = _run(entry, torch.full((1, 10, 10), 9, dtype=torch.uint8), _full_boxes(1, 10), 0.36)
    expected = torch.full((10, 10), 9, dtype=torch.uint8)
    expected[2:8, 2:8] = 0
    assert torch.equal(out[0], expected)


def test_patches_table_disjoint_squares_inside_their_cells():
    specs = make_specs(IDS, "p", {"kind": "occlusion", "mode": "patches", "levels": [0.1, 0.5, 0.9], "repeats": 2})
    for _, row in specs.iterrows():
        tops, lefts = np.asarray(row["tops"]), np.asarray(row["lefts"])
        side = math.sqrt(row["level"] / 4)
        assert len(tops) == 4 and row["height"] == pytest.approx(side) and row["width"] == pytest.approx(side)
        assert (tops >= 0).all() and (lefts >= 0).all()
        assert (tops + side <= 1 + 1e-12).all() and (lefts + side <= 1 + 1e-12).all()
        for i in range(4):
            for j in range(i):
                apart = abs(tops[i] - tops[j]) >= side - 1e-12 or abs(lefts[i] - lefts[j]) >= side - 1e-12
                assert apart, "patches must not overlap"
    # Positions vary between pairs and repeats.
    first = specs[(specs["level"] == 0.1) & (specs["repeat"] == 0)]
    assert len({tuple(t) for t in first["tops"]}) > 10


@pytest.mark.parametrize("level", [0.1, 0.3, 0.6, 0.9, 1.0])
def test_patches_cover_the_level_within_a_pixel_per_patch(level):
    size, n = 128, 4
    images = torch.full((len(IDS), size, size), 255, dtype=torch.uint8)
    entry = {"kind": "occlusion", "mode": "patches", "n_patches": n, "levels": [level]}
    out = _run(entry, images, _full_boxes(len(IDS), size), level, ids=IDS)
    covered = (out == 0).sum(dim=(1, 2)).numpy()
    side = round(math.sqrt(level / n) * size)
    # Each patch is within one pixel row/column of exact; they do not overlap.
    assert np.all(np.abs(covered - level * size**2) <= n * (2 * side + 1))
    assert np.all(covered <= n * side**2)


def test_patches_centre_hand_case_and_nine_patches_cover_everything():
    specs = make_specs(["a"], "p", {"kind": "occlusion", "mode": "patches", "levels": [0.16], "placement": "centre"})
    # side sqrt(0.04) = 0.2, each centred in its quadrant: offset (0.5 - 0.2) / 2 = 0.15
    np.testing.assert_allclose(specs["tops"].iloc[0], [0.15, 0.15, 0.65, 0.65])
    np.testing.assert_allclose(specs["lefts"].iloc[0], [0.15, 0.65, 0.15, 0.65])
    nine = {"kind": "occlusion", "mode": "patches", "n_patches": 9, "levels": [1.0]}
    out = _run(nine, torch.full((2, 30, 30), 200, dtype=torch.uint8), _full_boxes(2, 30), 1.0)
    assert (out == 0).all()


def test_patches_too_large_for_the_layout_is_refused():
    entry = {"kind": "occlusion", "mode": "patches", "n_patches": 5, "levels": [0.5, 0.9]}
    with pytest.raises(MedretError, match=r"corruptions\.p\.levels: 0\.9 .*at most 0\.5556.*n_patches"):
        make_specs(IDS, "p", entry)
    assert len(make_specs(IDS, "p", {**entry, "levels": [0.5]})) == len(IDS)  # 5/9 = 0.556 fits


def test_grid_masks_whole_cells_of_the_right_count():
    size = 64
    images = torch.full((len(IDS), size, size), 255, dtype=torch.uint8)
    entry = {"kind": "occlusion", "mode": "grid", "grid_size": 8, "levels": [0.3]}
    specs = make_specs(IDS, "g", entry)
    assert all(len(c) == 19 for c in specs["cells"])  # round(0.3 * 64) = round(19.2)
    out = _run(entry, images, _full_boxes(len(IDS), size), 0.3, ids=IDS)
    # 19 cells of 8 x 8 pixels each, exactly; every cell entirely masked or entirely kept.
    assert ((out == 0).sum(dim=(1, 2)) == 19 * 64).all()
    cells = (out == 0).reshape(len(IDS), 8, 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(len(IDS), 64, 64)
    assert ((cells.sum(dim=2) == 0) | (cells.sum(dim=2) == 64)).all()
    assert len({tuple(c) for c in specs["cells"]}) > 10


def test_grid_on_a_box_not_divisible_by_p():
    # A 100 x 60 content box on a 100 x 100 canvas: cells are 12-13 rows by 7-8 columns.
    images = torch.full((3, 100, 100), 255, dtype=torch.uint8)
    boxes = torch.tensor([[0, 20, 100, 60]] * 3)
    full = _run({"kind": "occlusion", "mode": "grid", "levels": [1.0]}, images, boxes, 1.0)
    assert (full[:, :, 20:80] == 0).all() and (full[:, :, :20] == 255).all() and (full[:, :, 80:] == 255).all()
    half = _run({"kind": "occlusion", "mode": "grid", "levels": [0.5]}, images, boxes, 0.5)
    masked = (half == 0).sum(dim=(1, 2)).numpy()
    # 32 cells, each within one pixel row (13) and one column (8) of exact
    assert np.all(np.abs(masked - 0.5 * 6000) <= 32 * (13 + 8))


def test_grid_centre_hand_case():
    # level 4/64 -> the 4 central cells (rows 3-4, columns 3-4) -> pixels 24..39 of a 64-px box
    entry = {"kind": "occlusion", "mode": "grid", "placement": "centre", "levels": [4 / 64]}
    assert make_specs(["a"], "g", entry)["cells"].iloc[0] == [27, 28, 35, 36]
    out = _run(entry, torch.full((1, 64, 64), 90, dtype=torch.uint8), _full_boxes(1, 64), round(4 / 64, 6))
    expected = torch.full((64, 64), 90, dtype=torch.uint8)
    expected[24:40, 24:40] = 0
    assert torch.equal(out[0], expected)
    # 3 x 3 grid: the centre cell first, then its edge neighbours (ties in row-major order), corners last.
    three = {"kind": "occlusion", "mode": "grid", "grid_size": 3, "placement": "centre", "levels": [3 / 9, 5 / 9]}
    cells = make_specs(["a"], "g", three)["cells"].tolist()
    assert cells == [[1, 3, 4], [1, 3, 4, 5, 7]]


def test_fills_white_and_mean_use_the_content_box_only():
    images = torch.zeros((1, 64, 64), dtype=torch.uint8)
    images[0, 16:48, :32], images[0, 16:48, 32:] = 100, 201  # box mean 150.5; with the padding it would be 75
    boxes = torch.tensor([[16, 0, 32, 64]])
    white = _run({"kind": "occlusion", "levels": [1.0], "fill": "white"}, images, boxes, 1.0)
    mean = _run({"kind": "occlusion", "levels": [1.0], "fill": "mean", "mode": "grid"}, images, boxes, 1.0)
    assert (white[0, 16:48] == 255).all() and (mean[0, 16:48] == 151).all()  # 150.5 rounded half up
    for out in (white, mean):
        assert (out[0, :16] == 0).all() and (out[0, 48:] == 0).all()


def test_noise_fill_has_the_box_statistics_and_is_redrawn_from_the_table():
    images = torch.zeros((2, 128, 128), dtype=torch.uint8)
    images[:, :, :64], images[:, :, 64:] = 98, 158  # mean 128, sd 30
    entry = {"kind": "occlusion", "mode": "grid", "levels": [1.0], "fill": "noise"}
    specs = make_specs(["a", "b"], "n", entry)
    out = get_kind(entry, "n").apply(images, _full_boxes(2, 128), _rows(specs, ["a", "b"], 1.0), entry)
    values = out.float()
    assert (values.mean(dim=(1, 2)) - 128).abs().max() < 1.0  # standard error 30/128 = 0.23
    assert ((values.std(dim=(1, 2)) - 30).abs() < 0.03 * 30).all()
    assert not torch.equal(out[0], out[1]), "each row has its own noise field"
    # The stored seed is all it takes to redraw the field.
    seed = int(specs["noise_seed"].iloc[0])
    z = torch.randn((128, 128), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(out[0], torch.floor(128 + 30 * z + 0.5).clamp(0, 255).to(torch.uint8))
    # Choosing the noise fill adds a column and moves no square.
    square = make_specs(IDS, "n", {"kind": "occlusion", "levels": [0.3], "fill": "noise"})
    plain = make_specs(IDS, "n", {"kind": "occlusion", "levels": [0.3]})
    pd.testing.assert_frame_equal(square.drop(columns="noise_seed"), plain)


@pytest.mark.parametrize(("mode", "extra"), [("square", {}), ("patches", {"n_patches": 9}), ("grid", {"grid_size": 4})])
@pytest.mark.parametrize("fill", ["black", "mean", "noise"])
def test_occlusion_modes_leave_the_padding_alone(mode, extra, fill):
    images, boxes = _letterbox(4, value=-1)
    entry = {"kind": "occlusion", "mode": mode, "fill": fill, "levels": [0.0, 0.5, 1.0], **extra}
    assert torch.equal(_run(entry, images, boxes, 0.0), images), "level 0 is the identity"
    for level in (0.5, 1.0):
        out = _run(entry, images, boxes, level)
        assert _padding_kept(out) and not torch.equal(out, images)


def test_occlusion_tables_round_trip_through_parquet(tmp_path):
    from medret.io import read_table, write_table

    images, boxes = _letterbox(5, value=-1)
    ids = [f"q{i:03d}" for i in range(5)]
    for entry in (
        {"kind": "occlusion", "mode": "patches", "levels": [0.0, 0.4], "fill": "noise"},
        {"kind": "occlusion", "mode": "grid", "levels": [0.0, 0.4]},
        {"kind": "gaussian_noise", "levels": [0, 3]},
        {"kind": "rotation", "levels": [0, 3]},
    ):
        specs = make_specs(ids, "c", entry)
        write_table(specs, tmp_path / "specs.parquet", digest=specs_digest(specs, "c", entry))
        back, meta = read_table(tmp_path / "specs.parquet")
        assert meta["digest"] == specs_digest(specs, "c", entry)
        level = 0.4 if entry["kind"] == "occlusion" else 3.0
        kind = get_kind(entry, "c")
        before = kind.apply(images, boxes, _rows(specs, ids, level), entry)
        after = kind.apply(images, boxes, _rows(back, ids, level), entry)
        assert torch.equal(before, after) and not torch.equal(before, images)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"mode": "stripes"}, "mode"),
        ({"fill": "grey"}, "fill"),
        ({"placement": "center"}, "placement"),
        ({"n_patches": 0}, "n_patches"),
        ({"grid_size": "8"}, "grid_size"),
        ({"levels": "0.5"}, "levels"),
        ({"levels": [0.2, "x"]}, "levels"),
    ],
)
def test_bad_occlusion_options_give_one_line_errors(change, key):
    with pytest.raises(MedretError, match=rf"^config key corruptions\.occ\.{key}: ") as err:
        make_specs(IDS, "occ", {"kind": "occlusion", **change})
    assert "\n" not in str(err.value)


# ---- acquisition corruptions


def test_severity_levels_are_integers_zero_to_five():
    for levels in ([0, 6], [2.5], [0.5, 1], [-1]):
        with pytest.raises(MedretError, match=r"^config key corruptions\.n\.levels: .*integers 0 \(clean\) to 5") as e:
            make_specs(IDS, "n", {"kind": "gaussian_noise", "levels": levels})
        assert "\n" not in str(e.value)
    specs = make_specs(IDS[:1], "n", {"kind": "jpeg", "levels": [0, 2.0, 5]})
    assert specs["level"].tolist() == [0.0, 2.0, 5.0] and specs["quality"].tolist()[1:] == [30, 5]
    assert math.isnan(specs["quality"].iloc[0])
    assert make_specs(IDS[:1], "n", {"kind": "gamma"})["level"].tolist() == [0, 1, 2, 3, 4, 5]  # default levels


def test_occlusion_keys_on_other_kinds():
    # Each kind's entry is closed by its own declaration: occlusion's keys are not blur's.
    config = {"datasets": {"d": {"adapter": "demo"}}, "models": {"m": {"family": "local", "checkpoint": "x"}}}
    bad = {**config, "corruptions": {"b": {"kind": "blur", "fill": "white"}}}
    with pytest.raises(MedretError, match=r"^config key corruptions\.b\.fill: not an option of corruption kind blur"):
        validate_config(bad)
    good = validate_config({**config, "corruptions": {"b": {"kind": "blur"}, "o": {"kind": "occlusion"}}})
    assert "fill" not in good["corruptions"]["b"] and good["corruptions"]["o"]["fill"] == "black"
    assert good["corruptions"]["b"]["levels"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("kind", ACQ_KINDS)
def test_severity_zero_is_the_identity_and_the_padding_is_never_touched(kind):
    images, boxes = _letterbox(3, value=-1)
    entry = {"kind": kind}
    assert torch.equal(_run(entry, images, boxes, 0.0), images)
    for severity in range(1, 6):
        out = _run(entry, images, boxes, float(severity))
        assert out.dtype == torch.uint8 and out.shape == images.shape
        assert _padding_kept(out), f"{kind} {severity} wrote outside the box"
        if kind == "downsample" and ACQUISITION[kind][1][severity - 1] >= 56:
            assert torch.equal(out, images), "a box already at most N pixels across is left alone"
        else:
            assert not torch.equal(out, images), f"{kind} {severity} changed nothing"


@pytest.mark.parametrize("kind", ACQ_KINDS)
def test_acquisition_rows_are_pure_functions_of_their_key(kind):
    small = make_specs(IDS[:5], "c", {"kind": kind, "levels": [3], "repeats": 2})
    big = make_specs(IDS, "c", {"kind": kind, "levels": [0, 1, 3, 5], "repeats": 3})
    merged = small.merge(big, on=["pair_id", "level", "repeat"], suffixes=("_a", "_b"))
    assert len(merged) == len(small)
    for col in list_kinds()[kind].param_columns:
        np.testing.assert_array_equal(merged[f"{col}_a"], merged[f"{col}_b"])
    # Applying a row gives the same pixels twice, and alone or in a batch.
    images, boxes = _letterbox(5, value=-1)
    ids = IDS[:5]
    rows = _rows(small, ids, 3.0, 1 if kind in RANDOM_KINDS else 0)
    once = list_kinds()[kind].apply(images, boxes, rows, {"kind": kind})
    assert torch.equal(once, list_kinds()[kind].apply(images, boxes, rows, {"kind": kind}))
    alone = list_kinds()[kind].apply(images[2:3], boxes[2:3], rows.iloc[2:3], {"kind": kind})
    assert torch.equal(once[2:3], alone)


def test_noise_seeds_differ_by_pair_repeat_and_name():
    specs = make_specs(IDS, "n", {"kind": "poisson_noise", "levels": [2], "repeats": 2})
    assert specs["noise_seed"].nunique() == len(specs)
    other = make_specs(IDS, "n2", {"kind": "poisson_noise", "levels": [2], "repeats": 2})
    assert not set(specs["noise_seed"]) & set(other["noise_seed"])
    images, boxes = _letterbox(2)
    first = list_kinds()["poisson_noise"].apply(images, boxes, _rows(specs, IDS[:2], 2.0, 0), {})
    second = list_kinds()["poisson_noise"].apply(images, boxes, _rows(specs, IDS[:2], 2.0, 1), {})
    assert not torch.equal(first, second)


@pytest.mark.parametrize("severity", [1, 2, 3, 4])
def test_gaussian_noise_sd_and_mean_on_a_flat_image(severity):
    # Severity 5 (sd 65) clips at 0/255 about 5% of the time, which lowers the measured sd: not tested here.
    sigma = ACQUISITION["gaussian_noise"][1][severity - 1]
    flat = torch.full((2, 128, 128), 128, dtype=torch.uint8)
    out = _run({"kind": "gaussian_noise"}, flat, _full_boxes(2, 128), float(severity)).float()
    # 16384 pixels per image: the sd's standard error is 0.6%, the mean's sigma/128.
    assert ((out.std(dim=(1, 2)) - sigma).abs() < 0.03 * sigma).all()
    assert ((out.mean(dim=(1, 2)) - 128).abs() < 4 * sigma / 128 + 0.1).all()


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_poisson_variance_is_proportional_to_the_mean(severity):
    photons = ACQUISITION["poisson_noise"][1][severity - 1]
    grey = torch.tensor([32, 64, 128], dtype=torch.uint8)
    images = grey[:, None, None].expand(3, 128, 128).contiguous()
    out = _run({"kind": "poisson_noise"}, images, _full_boxes(3, 128), float(severity)).double()
    var, mean = out.var(dim=(1, 2)), out.mean(dim=(1, 2))
    # variance = 255 * I / photons (grey levels squared); I' = 255 N / photons keeps the mean
    np.testing.assert_allclose((var / grey.double()).numpy(), 255 / photons, rtol=0.06)
    assert (mean - grey.double()).abs().max() < 1.0


def test_blur_matches_a_gaussian_filter_of_the_longer_side_and_keeps_the_mean():
    from scipy.ndimage import gaussian_filter

    images, boxes = _letterbox(2, value=-1)  # a 32 x 56 box: sd is a fraction of 56, not 32
    smooth = torch.from_numpy(gaussian_filter(images[:, 16:48, 4:60].numpy().astype(float), (0, 3, 3)).round())
    images[:, 16:48, 4:60] = smooth.to(torch.uint8)
    for severity in (1, 3, 5):
        sigma = ACQUISITION["blur"][1][severity - 1] * 56
        out = _run({"kind": "blur"}, images, boxes, float(severity))
        for i in range(2):
            box = images[i, 16:48, 4:60].numpy().astype(float)
            ref = gaussian_filter(box, sigma, mode="nearest", truncate=4.0)
            assert np.abs(out[i, 16:48, 4:60].numpy() - ref).max() <= 1.0
            assert abs(out[i, 16:48, 4:60].double().mean().item() - box.mean()) < 0.5


def test_contrast_brightness_gamma_on_known_pixels():
    images = torch.zeros((1, 4, 4), dtype=torch.uint8)
    images[0, :2], images[0, 2:] = 100, 200  # box mean 150
    boxes = _full_boxes(1, 4)
    contrast = _run({"kind": "contrast"}, images, boxes, 3.0)  # factor 0.5
    assert contrast[0, :2].unique().tolist() == [125] and contrast[0, 2:].unique().tolist() == [175]
    contrast = _run({"kind": "contrast"}, images, boxes, 1.0)  # factor 0.8
    assert contrast[0, :2].unique().tolist() == [110] and contrast[0, 2:].unique().tolist() == [190]
    values = torch.tensor([[[0, 100, 128, 200, 250, 255]]], dtype=torch.uint8)
    box = torch.tensor([[0, 0, 1, 6]])
    assert _run({"kind": "brightness"}, values, box, 1.0)[0, 0].tolist() == [13, 113, 141, 213, 255, 255]
    # gamma 2: 255 (I / 255)^2 -> 0, 39.2, 64.25, 156.9, 245.1, 255
    assert _run({"kind": "gamma"}, values, box, 4.0)[0, 0].tolist() == [0, 39, 64, 157, 245, 255]


def _zigzag() -> list[int]:
    """Natural (row-major) index of each zig-zag position of an 8 x 8 block."""
    order = sorted(
        ((r, c) for r in range(8) for c in range(8)),
        key=lambda p: (p[0] + p[1], p[1] if (p[0] + p[1]) % 2 == 0 else p[0]),
    )
    return [r * 8 + c for r, c in order]


# JPEG standard (ITU T.81, Annex K.1) luminance quantisation table, natural order.
LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]  # fmt: skip


def test_jpeg_quality_from_the_quantisation_table_and_psnr_falls(monkeypatch):
    from scipy.ndimage import gaussian_filter

    import medret.corruptions.apply

    written: list[bytes] = []
    real = medret.corruptions.apply.encode_jpeg

    def spy(crop, quality):  # records the file the corruption writes
        written.append(real(crop, quality))
        return written[-1]

    monkeypatch.setattr(medret.corruptions.apply, "encode_jpeg", spy)
    rng = np.random.default_rng(0)
    box = gaussian_filter(rng.uniform(0, 255, (64, 64)), 2) * 3 - 250  # smooth texture over the whole range
    images = torch.from_numpy(np.clip(box, 0, 255).round().astype(np.uint8))[None]
    psnr = []
    for severity in range(1, 6):
        written.clear()
        out = _run({"kind": "jpeg"}, images, _full_boxes(1, 64), float(severity))
        quality = ACQUISITION["jpeg"][1][severity - 1]
        data = written[0]
        at = data.index(b"\xff\xdb")
        assert data[at + 4] == 0  # 8-bit table number 0
        table = list(data[at + 5 : at + 69])
        # IJG scaling of the standard table for this quality (baseline: clamped to 1..255)
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        expected = [min(max((q * scale + 50) // 100, 1), 255) for q in LUMA]
        assert table == [expected[i] for i in _zigzag()]
        mse = ((out.double() - images.double()) ** 2).mean().item()
        psnr.append(10 * math.log10(255**2 / mse))
    assert all(a > b for a, b in itertools.pairwise(psnr)), psnr


def test_downsample_to_a_size_across_the_box():
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros((1, 128, 128), dtype=torch.uint8)
    images[0, 8:120, 8:120] = torch.randint(0, 256, (112, 112), generator=gen, dtype=torch.uint8)
    boxes = torch.tensor([[8, 8, 112, 112]])
    # severity 1: 112 px across the box, which already has 112 -> unchanged
    assert torch.equal(_run({"kind": "downsample"}, images, boxes, 1.0), images)
    # severity 3: 56 px -> factor 2: constant 2 x 2 blocks holding the block means (rounded half up)
    out = _run({"kind": "downsample"}, images, boxes, 3.0)[0, 8:120, 8:120]
    blocks = images[0, 8:120, 8:120].double().reshape(56, 2, 56, 2).mean(dim=(1, 3))
    expected = torch.floor(blocks + 0.5).to(torch.uint8).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(out, expected)
    # The same severity on a 224-px box is a factor of 4: the same detail is lost at any cache size.
    big = torch.randint(0, 256, (1, 224, 224), generator=gen, dtype=torch.uint8)
    out = _run({"kind": "downsample"}, big, _full_boxes(1, 224), 3.0)[0]
    assert torch.equal(out, out[::4, ::4].repeat_interleave(4, 0).repeat_interleave(4, 1))


def _line_angle(image: torch.Tensor) -> float:
    """Angle (degrees, counter-clockwise with rows pointing down) of the principal axis of the bright pixels."""
    ys, xs = torch.nonzero(image > 0, as_tuple=True)
    w = image[ys, xs].double()
    x = xs.double() - (xs.double() * w).sum() / w.sum()
    y = -(ys.double() - (ys.double() * w).sum() / w.sum())
    return math.degrees(0.5 * math.atan2(2 * (w * x * y).sum().item(), (w * (x * x - y * y)).sum().item()))


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_rotation_turns_a_line_by_the_stored_angle(severity):
    # A horizontal line through the centre of a non-square 64 x 96 box; a vertical one checks the other axis.
    ids = [f"r{i}" for i in range(12)]
    images = torch.zeros((12, 64, 96), dtype=torch.uint8)
    images[:, 31:33, 10:86] = 255
    vertical = torch.zeros((12, 64, 96), dtype=torch.uint8)
    vertical[:, 6:58, 47:49] = 255
    specs = make_specs(ids, "rot", {"kind": "rotation", "levels": [severity]})
    rows = _rows(specs, ids, float(severity))
    out = list_kinds()["rotation"].apply(images, _full_boxes(12, 64, 96), rows, {"kind": "rotation"})
    angles = rows["angle_deg"].to_numpy()
    assert set(np.abs(angles)) == {ACQUISITION["rotation"][1][severity - 1]}
    assert (angles > 0).any() and (angles < 0).any(), "the sign is drawn per row"
    turned = list_kinds()["rotation"].apply(vertical, _full_boxes(12, 64, 96), rows, {"kind": "rotation"})
    for i in range(12):
        assert abs(_line_angle(out[i]) - angles[i]) < 0.3
        assert abs(_line_angle(turned[i]) % 180 - (90 + angles[i])) < 0.3
