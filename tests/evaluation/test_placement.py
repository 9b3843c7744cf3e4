"""Occluder placement relative to a region of interest: inside, outside, and the paired contrast."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medret.corruptions import covered, make_specs
from medret.errors import MedretError
from medret.placement import PLACEMENT_COLUMNS, placement_contrast, placement_pairs, region_queries

REGIONS = pd.DataFrame(
    {
        "region_top": [0.60, 0.10, 0.05, np.nan],
        "region_left": [0.55, 0.20, 0.05, np.nan],
        "region_height": [0.20, 0.50, 0.90, np.nan],
        "region_width": [0.30, 0.40, 0.90, np.nan],
    },
    index=pd.Index(["small", "tall", "huge", "none"], name="pair_id"),
)
LEVELS = [0.0, 0.01, 0.05, 0.1, 0.3, 0.6, 1.0]


def _specs(placement: str, repeats: int = 3) -> pd.DataFrame:
    entry = {"kind": "occlusion", "placement": placement, "levels": LEVELS, "repeats": repeats, "seed": 3}
    return make_specs(list(REGIONS.index), f"occ_{placement}", entry, regions=REGIONS)


def test_inside_covers_the_region_or_as_much_as_the_area_allows():
    specs = _specs("inside")
    assert {"region", "overlap"} <= set(specs.columns)
    for row in specs[specs["region"]].itertuples():
        region = REGIONS.loc[row.pair_id].to_numpy(float)
        side = math.sqrt(row.level)
        assert row.height == row.width == pytest.approx(side)
        assert 0 <= row.top <= 1 - side + 1e-12 and 0 <= row.left <= 1 - side + 1e-12
        best = min(side, region[2]) * min(side, region[3]) / (region[2] * region[3])
        assert row.overlap == pytest.approx(best, abs=1e-12)  # the most a square of this area can cover
        assert row.overlap == pytest.approx(covered(region, row.top, row.left, side))
    # the small region (0.2 x 0.3 = 6%) is fully covered from level 0.09 on (side 0.3)
    small = specs[(specs["pair_id"] == "small") & (specs["level"] >= 0.1)]
    assert np.allclose(small["overlap"], 1.0, atol=1e-12)
    # random among the valid places: repeats differ where there is room
    tall = specs[(specs["pair_id"] == "tall") & (specs["level"] == 0.05)]
    assert tall["top"].nunique() == 3


def test_outside_avoids_the_region_whenever_it_can():
    specs = _specs("outside")
    for row in specs[specs["region"]].itertuples():
        region = REGIONS.loc[row.pair_id].to_numpy(float)
        side = math.sqrt(row.level)
        assert row.height == pytest.approx(side) and 0 <= row.top <= 1 - side + 1e-12
        assert row.overlap == pytest.approx(covered(region, row.top, row.left, side))
        # room to avoid it: a free band above/below or left/right of the region
        room = max(region[0], 1 - region[0] - region[2], region[1], 1 - region[1] - region[3])
        if row.level > 0 and side <= room:
            assert row.overlap == 0.0, row
    huge = specs[(specs["pair_id"] == "huge") & (specs["level"] == 0.3)]
    assert (huge["overlap"] > 0).all()  # 0.55-wide square cannot avoid a 0.9 region: the least overlap
    least = min(
        covered(REGIONS.loc["huge"].to_numpy(float), t, u, math.sqrt(0.3))
        for t in np.linspace(0, 1 - math.sqrt(0.3), 41)
        for u in np.linspace(0, 1 - math.sqrt(0.3), 41)
    )
    assert huge["overlap"].iloc[0] == pytest.approx(least, abs=1e-9)


def test_outside_is_uniform_over_the_free_placements():
    region = pd.DataFrame(
        {"region_top": [0.4], "region_left": [0.4], "region_height": [0.2], "region_width": [0.2]},
        index=pd.Index(["p"], name="pair_id"),
    )
    entry = {"kind": "occlusion", "placement": "outside", "levels": [0.04], "repeats": 4000, "seed": 0}
    specs = make_specs(["p"], "occ", entry, regions=region)
    assert (specs["overlap"] == 0).all()
    # free offsets: [0, 0.8]^2 minus (0.2, 0.6)^2 of area 0.64 - 0.16 = 0.48; the band top < 0.2 holds 0.16
    assert (specs["top"] < 0.2).mean() == pytest.approx(0.16 / 0.48, abs=0.03)


def test_pairs_without_a_region_are_placed_at_random_and_flagged():
    for placement in ("inside", "outside"):
        specs = _specs(placement)
        none = specs[specs["pair_id"] == "none"]
        assert not none["region"].any() and none["overlap"].isna().all()
        assert specs.loc[specs["pair_id"] != "none", "region"].all()


def test_placement_needs_regions_and_the_square():
    entry = {"kind": "occlusion", "placement": "inside", "levels": [0.0, 0.1]}
    with pytest.raises(MedretError, match="placement inside needs each pair's region"):
        make_specs(["a"], "occ", entry)
    with pytest.raises(MedretError, match="set mode: square"):
        make_specs(["a"], "occ", {**entry, "mode": "grid"}, regions=REGIONS)
    # deterministic
    assert _specs("inside").equals(_specs("inside"))


def test_placement_pairs_match_on_everything_but_the_placement():
    corruptions = {
        "in": {"kind": "occlusion", "placement": "inside", "levels": [0, 0.1], "fill": "black", "mode": "square"},
        "out": {"kind": "occlusion", "placement": "outside", "levels": [0, 0.1], "fill": "black", "mode": "square"},
        "out_white": {"kind": "occlusion", "placement": "outside", "levels": [0, 0.1], "fill": "white"},
        "noise": {"kind": "gaussian_noise", "levels": [0, 1]},
    }
    assert placement_pairs(corruptions) == [("in", "out")]


def test_region_queries():
    table = pd.DataFrame(
        {"pair_id": ["a", "b", "c"], "text_id": [0, 1, 0], **{c: [0.1, np.nan, 0.2] for c in REGIONS.columns}}
    )
    assert region_queries(table, n_texts=2) == ["a", "c", "text:0"]
    assert region_queries(table.drop(columns=list(REGIONS.columns)), 2) == []


def _ranks(model: str, corruption: str, ranks: np.ndarray, level: float) -> pd.DataFrame:
    n = len(ranks)
    return pd.DataFrame(
        {
            "model": model,
            "corruption": corruption,
            "level": level,
            "repeat": 0,
            "relevance": "exact",
            "direction": "i2t",
            "query_id": [f"q{i:02d}" for i in range(n)],
            "rank": ranks.astype(np.int64),
            "n_tied": 0,
            "n_relevant_tied": 1,
            "n_relevant": 1,
            "n_candidates": 100,
        }
    )


def test_the_contrast_is_paired_and_only_on_queries_with_a_region():
    n = 40
    hit = np.ones(n)
    frames = []
    for model, inside_ranks in (("hides", np.full(n, 50)), ("foreign", hit)):
        for corruption, ranks in (("in", inside_ranks), ("out", hit)):
            frames += [_ranks(model, corruption, hit, 0.0), _ranks(model, corruption, ranks, 0.1)]
    ranks = pd.concat(frames, ignore_index=True)
    queries = [f"q{i:02d}" for i in range(30)]  # q30..q39 have no region
    table = placement_contrast(ranks, [("in", "out")], queries, None, dataset="d", n_boot=200, seed=0, ci=0.95)
    assert list(table.columns) == list(PLACEMENT_COLUMNS)
    assert set(table["level"]) == {0.1} and (table["n_queries"] == 30).all()
    r5 = table[table["metric"] == "R@5"].set_index("model")
    # "hides" loses every hit when the region is covered and none elsewhere: -100 points, interval a point
    assert r5.loc["hides", ["inside_value", "outside_value", "difference"]].tolist() == [0.0, 100.0, -100.0]
    assert r5.loc["hides", "ci_low"] == r5.loc["hides", "ci_high"] == -100.0 and r5.loc["hides", "p_value"] < 0.01
    assert r5.loc["foreign", "difference"] == 0.0 and r5.loc["foreign", "p_value"] == 1.0


def test_worst_tries_a_three_by_three_grid_and_keeps_each_querys_worst_rank():
    from medret.retrieval import worst_over_repeats

    entry = {"kind": "occlusion", "placement": "worst", "levels": [0.0, 0.25, 1.0], "repeats": 2}
    specs = make_specs(["a", "b"], "occ", entry)
    mid = specs[specs["level"] == 0.25]
    assert len(mid) == 2 * 9 and (mid["grid_cell"] == mid["repeat"]).all()
    places = sorted(set(zip(mid["top"].round(9), mid["left"].round(9), strict=True)))
    assert places == [(t, u) for t in (0.0, 0.25, 0.5) for u in (0.0, 0.25, 0.5)]  # side 0.5: 0, (1-s)/2, 1-s
    assert len(specs[specs["level"] == 0.0]) == 2 and len(specs[specs["level"] == 1.0]) == 2
    ranks = pd.DataFrame(
        {
            "level": 0.25,
            "repeat": [0, 1, 2, 0, 1, 2],
            "relevance": "exact",
            "direction": "i2t",
            "query_id": ["a", "a", "a", "b", "b", "b"],
            "rank": [3, 9, 9, 1, 1, 2],
            "n_tied": [0, 1, 2, 0, 0, 0],
        }
    )
    worst = worst_over_repeats(ranks)
    assert worst[["query_id", "repeat", "rank", "n_tied"]].values.tolist() == [["a", 0, 9, 1], ["b", 0, 2, 0]]
