"""Tests for medret.metrics: hand-computed metrics, chance levels, the cluster bootstrap, robustness."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from helpers.ranks import block, table

from medret.errors import MedretError
from medret.metrics import (
    COMPARISON_COLUMNS,
    KS,
    METRICS,
    METRICS_COLUMNS,
    ROBUSTNESS_COLUMNS,
    ROBUSTNESS_QUANTITIES,
    TIE_AWARE,
    _bootstrap_means,
    _bootstrap_median,
    _expected_median,
    bootstrap_counts,
    chance_recall_at_k,
    chance_reciprocal_rank,
    evaluate,
    expected_median_rank,
    expected_rank,
    hits,
    mean_reciprocal_rank,
    median_rank,
    popularity_baseline,
    recall_at_k,
    repeat_weights,
    tie_aware,
)


def row(metrics: pd.DataFrame, metric: str, **keys) -> pd.Series:
    mask = metrics["metric"] == metric
    for k, v in keys.items():
        mask &= metrics[k] == v
    assert mask.sum() == 1, (metric, keys)
    return metrics[mask].iloc[0]


def synthetic(n_q=300, models=("a",), levels=(0.0, 0.5, 1.0), n_rep=2, n_cand=300, seed=0) -> pd.DataFrame:
    """Random ranks whose hit rate falls with the level; levels 0 and 1 have one repeat only."""
    rng = np.random.default_rng(seed)
    blocks = []
    for model in models:
        for level in levels:
            for rep in range(1 if level in (0.0, 1.0) else n_rep):
                for direction in ("i2t", "t2i"):
                    good = rng.random(n_q) < 0.7 * (1 - level) + 0.05
                    ranks = np.where(good, rng.integers(1, 6, n_q), rng.integers(1, n_cand + 1, n_q))
                    blocks.append(
                        block(
                            ranks,
                            model=model,
                            level=level,
                            repeat=rep,
                            direction=direction,
                            n_candidates=n_cand,
                        )
                    )
    return table(*blocks)


# ---------------------------------------------------------------------------------------------------
# Point metrics


def test_point_metrics_on_a_hand_made_vector():
    ranks = np.array([1, 2, 3, 10, 50])
    np.testing.assert_array_equal(hits(ranks, 1), [1.0, 0.0, 0.0, 0.0, 0.0])
    assert recall_at_k(ranks, 1) == pytest.approx(20.0)  # 1 of 5 at rank 1
    assert recall_at_k(ranks, 5) == pytest.approx(60.0)  # ranks 1, 2, 3 <= 5
    assert recall_at_k(ranks, 10) == pytest.approx(80.0)  # rank 10 counts: rank <= K
    # (1 + 1/2 + 1/3 + 1/10 + 1/50) / 5 = 1.95333... / 5
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 10 + 1 / 50) / 5)
    assert median_rank(ranks) == 3.0
    assert median_rank(np.array([4, 1, 3, 2])) == 2.5  # even count: mean of the middle values 2 and 3


def test_point_metrics_reject_empty_input_and_bad_k():
    with pytest.raises(MedretError):
        recall_at_k(np.array([]), 1)
    with pytest.raises(MedretError, match="K must be"):
        hits(np.array([1, 2]), 0)


# ---------------------------------------------------------------------------------------------------
# Chance levels


def test_chance_recall_single_relevant_is_k_over_n():
    n = np.array([10, 100, 1000])
    for k in KS:
        np.testing.assert_allclose(chance_recall_at_k(n, 1, k), np.minimum(k / n, 1.0), rtol=1e-12)


def test_chance_recall_two_relevant_by_hand():
    # N=4, m=2, K=1: 1 - C(2,1)/C(4,1) = 1 - 2/4 = 0.5
    assert chance_recall_at_k(4, 2, 1) == pytest.approx(0.5)
    # N=4, m=2, K=2: 1 - C(2,2)/C(4,2) = 1 - 1/6 = 5/6
    assert chance_recall_at_k(4, 2, 2) == pytest.approx(5 / 6)
    # K=3 > N-m: every 3-subset holds a relevant item
    assert chance_recall_at_k(4, 2, 3) == pytest.approx(1.0)
    assert chance_recall_at_k(4, 2, 10) == pytest.approx(1.0)  # K > N


def test_chance_recall_matches_exact_binomials_including_large_n():
    for n in range(1, 25):
        for m in range(1, n + 1):
            for k in (1, 2, 5, 10):
                exact = 1 - Fraction(math.comb(n - m, k), math.comb(n, k)) if k <= n else Fraction(1)
                assert chance_recall_at_k(n, m, k) == pytest.approx(float(exact), abs=1e-12)
    n, m, k = 10**7, 3, 10  # huge binomials: the product form stays exact to rounding
    exact = 1 - Fraction(math.comb(n - m, k), math.comb(n, k))
    assert chance_recall_at_k(n, m, k) == pytest.approx(float(exact), rel=1e-9)


def test_chance_reciprocal_rank_by_hand():
    for n in (1, 2, 10, 57):
        harmonic = sum(1 / r for r in range(1, n + 1))
        assert chance_reciprocal_rank(n, 1) == pytest.approx(harmonic / n)  # m = 1: H_N / N
    # N=4, m=2: P(R=1) = 2/4, P(R=2) = 2·2/(4·3) = 1/3, P(R=3) = 1/6 → 1/2 + 1/6 + 1/18 = 13/18
    assert chance_reciprocal_rank(4, 2) == pytest.approx(13 / 18)
    assert chance_reciprocal_rank(5, 5) == pytest.approx(1.0)  # every candidate relevant
    h10 = sum(1 / r for r in range(1, 11))
    np.testing.assert_allclose(chance_reciprocal_rank([4, 10, 4], [2, 1, 2]), [13 / 18, h10 / 10, 13 / 18])


def test_chance_levels_match_monte_carlo():
    # 200,000 seeded random orderings; tolerance 4 standard errors of the simulated mean
    rng = np.random.default_rng(123)
    n, m, trials = 20, 3, 200_000
    # position of the first relevant item = 1 + min over the m relevant items' positions
    positions = np.argsort(rng.random((trials, n)), axis=1)[:, :m]
    first = positions.min(axis=1) + 1
    for k in KS:
        sim = (first <= k).astype(float)
        assert abs(sim.mean() - chance_recall_at_k(n, m, k)) < 4 * sim.std() / math.sqrt(trials) + 1e-12
    rr = 1.0 / first
    assert abs(rr.mean() - chance_reciprocal_rank(n, m)) < 4 * rr.std() / math.sqrt(trials)
    assert abs(first.mean() - expected_rank(n, m)) < 4 * first.std() / math.sqrt(trials)  # (N+1)/(m+1)


def test_chance_with_candidates_ahead_by_hand():
    # a = 2 sure misses first, then a random order of N = 4 with m = 1: R = 2 + J, J uniform on 1..4.
    assert chance_recall_at_k(4, 1, 1, ahead=2) == 0.0  # K <= a
    assert chance_recall_at_k(4, 1, 2, ahead=2) == 0.0
    assert chance_recall_at_k(4, 1, 3, ahead=2) == pytest.approx(1 / 4)
    assert chance_recall_at_k(4, 1, 5, ahead=2) == pytest.approx(3 / 4)
    assert chance_recall_at_k(4, 1, 10, ahead=2) == pytest.approx(1.0)
    assert chance_reciprocal_rank(4, 1, ahead=2) == pytest.approx((1 / 3 + 1 / 4 + 1 / 5 + 1 / 6) / 4)
    assert expected_rank(4, 1, ahead=2) == pytest.approx(4.5)
    # m = 2 of N = 4 behind a = 1: P(J=1) = 1/2, P(J=2) = 1/3, P(J=3) = 1/6.
    assert chance_recall_at_k(4, 2, 2, ahead=1) == pytest.approx(1 / 2)
    assert chance_reciprocal_rank(4, 2, ahead=1) == pytest.approx(1 / 4 + 1 / 9 + 1 / 24)
    # per-query arrays mix offsets; ahead = 0 is plain chance
    np.testing.assert_allclose(
        chance_recall_at_k([4, 4, 20], [1, 2, 3], 5, ahead=[2, 1, 0]), [3 / 4, 1.0, chance_recall_at_k(20, 3, 5)]
    )


def _enumerated_median(pools):
    """E[np.median of the ranks] by enumerating every ordering of every query's candidates (Fractions).

    ``pools``: (N, m, a) per query; candidates 0..m-1 are the relevant ones, rank = a + 1 + the
    position of the first of them. All Π N_q! combinations of orderings are equally likely.
    """
    per_query = [
        [a + 1 + min(order.index(c) for c in range(m)) for order in itertools.permutations(range(n))]
        for n, m, a in pools
    ]
    total, count = Fraction(0), 0
    for ranks in itertools.product(*per_query):
        r, q = sorted(ranks), len(ranks)
        total += Fraction(r[q // 2]) if q % 2 else Fraction(r[q // 2 - 1] + r[q // 2], 2)
        count += 1
    return total / count


@pytest.mark.parametrize(
    "pools",
    [
        [(3, 1, 0), (4, 2, 0), (4, 1, 2)],  # odd: the middle rank; one query behind a = 2 sure misses
        [(4, 1, 0), (3, 2, 1), (4, 2, 0), (3, 1, 0)],  # even: the mean of the two middle ranks
        [(4, 2, 0), (4, 2, 0), (4, 2, 0)],  # one class of three queries
        [(3, 1, 1), (2, 2, 0), (4, 3, 0), (1, 1, 3), (3, 2, 0)],  # deterministic ones (N = m) mixed in
    ],
)
def test_expected_median_rank_equals_enumerated_orderings(pools):
    n, m, a = (np.array(col) for col in zip(*pools, strict=True))
    assert expected_median_rank(n, m, a) == pytest.approx(float(_enumerated_median(pools)), abs=1e-12)


def test_expected_median_rank_by_hand():
    # Three queries, N = 4 with m = 2 relevant: P(R=1) = 1/2, P(R=2) = 1/3, P(R=3) = 1/6, so
    # p(t) = P(R <= t) = 1/2, 5/6, 1 at t = 1, 2, 3. The median is the 2nd of 3 ranks:
    # E = Σ_t P(S_t <= 1) with S_t ~ Binomial(3, p(t)), P(S_t <= 1) = (1−p)³ + 3p(1−p)²:
    # t = 0: 1; t = 1: 1/8 + 3/8 = 1/2; t = 2: 1/216 + 15/216 = 2/27; t >= 3: 0.
    # E[median] = 1 + 1/2 + 2/27 = 85/54 ≈ 1.574, not the median of E[R] = 5/3 (the old value).
    assert expected_median_rank([4, 4, 4], [2, 2, 2]) == pytest.approx(85 / 54, abs=1e-14)
    assert float(np.median(expected_rank([4, 4, 4], [2, 2, 2]))) == pytest.approx(5 / 3)
    # Two queries: the median is the mean of the two, so E is the mean of the E[R]:
    # uniform on {1, 2, 3} twice gives 2; N = 4, m = 2 (E = 5/3) with a query uniform on {2, 3}
    # (N = 2, m = 1 behind a = 1; E = 5/2) gives (5/3 + 5/2)/2 = 25/12.
    assert expected_median_rank([3, 3], [1, 1]) == pytest.approx(2.0, abs=1e-14)
    assert expected_median_rank([4, 2], [2, 1], ahead=[0, 1]) == pytest.approx(25 / 12, abs=1e-14)
    # Three queries uniform on {1, ..., 4}: P(S_t <= 1) = (1−t/4)³ + 3(t/4)(1−t/4)² = 1, 54/64,
    # 32/64, 10/64 at t = 0..3, so E = 1 + 96/64 = 5/2 (the symmetric distribution's centre).
    assert expected_median_rank([4, 4, 4], [1, 1, 1]) == pytest.approx(2.5, abs=1e-14)


def test_expected_median_rank_matches_monte_carlo():
    # 200 queries of mixed pools, 20,000 seeded draws; tolerance 4 standard errors of the simulated
    # mean. A draw uses that the first of m relevant among N in random order sits at 1 + Binomial(N − m,
    # U), U ~ Beta(1, m) the smallest of the m relevant items' uniform sort keys.
    rng = np.random.default_rng(11)
    q, draws = 200, 20_000
    n, m = rng.integers(20, 61, q), rng.integers(1, 5, q)
    a = np.where(rng.random(q) < 0.3, rng.integers(1, 11, q), 0)
    exact = expected_median_rank(n, m, a)
    medians = np.median(a + 1 + rng.binomial(n - m, rng.beta(1, m, size=(draws, q))), axis=1)
    se = medians.std() / math.sqrt(draws)
    assert abs(medians.mean() - exact) < 4 * se
    # the median of the per-query expectations is far off: over 100 standard errors here
    assert abs(float(np.median(expected_rank(n, m, a))) - exact) > 100 * se


def test_expected_median_rank_when_the_median_is_certain():
    # Popularity without ties: one report per frequency (N = m = 1), so rank = a + 1 for sure.
    assert expected_median_rank([1, 1, 1, 1], [1, 1, 1, 1], ahead=[0, 3, 7, 2]) == 3.5  # ranks 1, 4, 8, 3
    assert expected_median_rank([5, 5, 5], [5, 5, 5]) == 1.0  # every candidate relevant
    # Two of three queries sure to rank 2: the middle rank is 2 whatever the third one does.
    assert expected_median_rank([1, 1, 10], [1, 1, 1], ahead=[1, 1, 0]) == 2.0
    assert expected_median_rank([1], [1], ahead=[41]) == 42.0  # one query


def test_expected_median_rank_is_cached_on_the_multiset_of_pools():
    # Q = 5000 queries among N = 5000 candidates, m uniform on 1..3 (three classes)
    rng = np.random.default_rng(0)
    n, m = np.full(5000, 5000), rng.integers(1, 4, 5000)
    value = expected_median_rank(n, m)
    hits = _expected_median.cache_info().hits
    assert expected_median_rank(n[::-1], m[::-1]) == value  # the same pools in another order
    assert _expected_median.cache_info().hits == hits + 1
    assert 1 < value < float(np.median(expected_rank(n, m)))
    with pytest.raises(MedretError, match="no queries"):
        expected_median_rank(np.array([], dtype=int), np.array([], dtype=int))


def test_popularity_baseline_hand_checked():
    # Reports A ×3, B ×2, C ×1 over six images (exact relevance): the ranking is A, B, C for every image.
    text_ids = np.array([0, 0, 1, 2, 0, 1])
    i2t = [np.array([t]) for t in text_ids]
    t2i = [np.flatnonzero(text_ids == t) for t in range(3)]
    got = popularity_baseline(np.bincount(text_ids), {"exact": (i2t, t2i)}).set_index("metric")["value"]
    # ranks 1, 1, 2, 3, 1, 2: R@1 = 3/6, MRR = (3 + 2/2 + 1/3)/6, median rank 1.5
    assert got["R@1"] == pytest.approx(50.0) and got["R@5"] == pytest.approx(100.0)
    assert got["MRR"] == pytest.approx((3 + 1 + 1 / 3) / 6) and got["median_rank"] == pytest.approx(1.5)
    # Equal frequencies are in random order, not pessimistic: A, B twice each -> rank 1 or 2 with
    # probability 1/2 each (the pessimistic tie rule would give every image rank 2 and R@1 = 0).
    tied = np.array([0, 0, 1, 1])
    got = popularity_baseline(np.bincount(tied), {"exact": ([np.array([t]) for t in tied], [])})
    got = got.set_index("metric")["value"]
    assert got["R@1"] == pytest.approx(50.0) and got["MRR"] == pytest.approx(0.75)
    assert got["median_rank"] == pytest.approx(1.5)


def test_popularity_baseline_equals_simulated_random_tie_breaks():
    # Label-like relevance (several relevant reports per image) and a frequency profile with ties;
    # 20,000 seeded fixed rankings (frequency, then a random order among equals) scored pessimistically.
    rng = np.random.default_rng(5)
    freq = rng.integers(1, 5, 30)
    i2t = [rng.choice(30, size=rng.integers(1, 4), replace=False) for _ in range(40)]
    got = popularity_baseline(freq, {"labels": (i2t, [])}).set_index("metric")["value"]
    trials = 20_000
    order = np.lexsort((rng.random((trials, 30)), np.broadcast_to(-freq, (trials, 30))), axis=1)
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(1, 31), axis=1)
    first = np.stack([position[:, rel].min(axis=1) for rel in i2t], axis=1)  # (trials, queries)
    for k in KS:
        sim = 100.0 * (first <= k).mean(axis=1)
        assert abs(sim.mean() - got[f"R@{k}"]) < 4 * sim.std() / math.sqrt(trials) + 1e-9
    rr = (1.0 / first).mean(axis=1)
    assert abs(rr.mean() - got["MRR"]) < 4 * rr.std() / math.sqrt(trials)


def test_chance_rejects_impossible_pools():
    with pytest.raises(MedretError, match="n_relevant"):
        chance_recall_at_k(3, 4, 1)
    with pytest.raises(MedretError, match="n_relevant"):
        chance_reciprocal_rank(3, 0)


# ---------------------------------------------------------------------------------------------------
# evaluate(): values, ties, repeats, chance


def test_constant_score_model_scores_zero_recall():
    # Everything tied: pessimistic rank = N - m + 1 for every query
    n_q, n = 40, 40
    ranks = table(
        block(np.full(n_q, n), direction="t2i", n_candidates=n, n_relevant=1),
        block(np.full(n_q, n - 3 + 1), direction="i2t", n_candidates=n, n_relevant=3),
    )
    metrics, _, _ = evaluate(ranks, None, dataset="toy", n_boot=200)
    for direction, m in (("t2i", 1), ("i2t", 3)):
        for k in KS:  # every K < N - m + 1
            r = row(metrics, f"R@{k}", direction=direction)
            assert (r.value, r.ci_low, r.ci_high) == (0.0, 0.0, 0.0)
            assert r.chance == pytest.approx(100 * chance_recall_at_k(n, m, k))
        assert row(metrics, "MRR", direction=direction).value == pytest.approx(1 / (n - m + 1))
        med = row(metrics, "median_rank", direction=direction)
        assert med.value == n - m + 1
        # the expected median of 40 random ranks (m = 1: by symmetry (N + 1)/2, as E[R])
        assert med.chance == pytest.approx(expected_median_rank(np.full(n_q, n), m), abs=1e-12)
    assert row(metrics, "median_rank", direction="t2i").chance == pytest.approx((n + 1) / 2)
    assert row(metrics, "median_rank", direction="i2t").chance < (n + 1) / (3 + 1)  # E[R] with m = 3
    assert row(metrics, "R@1", direction="t2i").chance == pytest.approx(100 / 40)  # K/N in percent


def test_repeats_are_averaged_per_query_first():
    ids = ["a", "b", "c"]
    ranks = table(
        block([1, 4, 1], level=0.0, query_ids=ids),
        block([1, 2, 1], level=0.5, repeat=0, query_ids=ids),
        block([3, 20, 1], level=0.5, repeat=1, query_ids=ids),
    )
    metrics, _, _ = evaluate(ranks, None, dataset="toy", n_boot=100)
    at = {"level": 0.5}
    # per-query hit@1 over repeats: a (1+0)/2 = 0.5, b 0, c 1 → (0.5 + 0 + 1)/3 = 50 %
    assert row(metrics, "R@1", **at).value == pytest.approx(50.0)
    # hit@5: a 1, b (1+0)/2 = 0.5, c 1 → 2.5/3 = 83.33 %
    assert row(metrics, "R@5", **at).value == pytest.approx(250 / 3)
    # reciprocal rank: a (1 + 1/3)/2 = 2/3, b (1/2 + 1/20)/2 = 0.275, c 1 → (2/3 + 0.275 + 1)/3
    assert row(metrics, "MRR", **at).value == pytest.approx((2 / 3 + 0.275 + 1) / 3)
    # mean rank per query: a 2, b 11, c 1 → median 2 (the pooled median of all 6 ranks would be 1.5)
    assert row(metrics, "median_rank", **at).value == 2.0
    assert row(metrics, "R@1", **at).n_queries == 3
    assert row(metrics, "R@1", level=0.0).n_queries == 3


def test_output_columns_and_rows():
    ranks = synthetic(n_q=50, models=("a", "b"), levels=(0.0, 0.1, 0.2))
    metrics, robustness, _ = evaluate(ranks, None, dataset="toy", n_boot=50)
    assert tuple(metrics.columns) == METRICS_COLUMNS
    assert tuple(robustness.columns) == ROBUSTNESS_COLUMNS
    assert len(metrics) == 2 * 3 * 2 * len(METRICS)  # models × levels × directions × metrics
    assert set(metrics["dataset"]) == {"toy"}
    assert list(metrics["metric"][: len(METRICS)]) == list(METRICS)
    assert not metrics[["value", "ci_low", "ci_high", "chance"]].isna().any().any()
    # per curve and metric: auc, nauc, chance_nauc, and a relative drop and a retention per level > 0
    assert len(robustness) == 2 * 2 * 4 * (3 + 2 * 2)
    assert set(robustness["quantity"]) == set(ROBUSTNESS_QUANTITIES)
    per_level = robustness["quantity"].isin(["relative_drop", "chance_retention"])
    assert robustness.loc[~per_level, "level"].isna().all() and robustness.loc[per_level, "level"].notna().all()


# ---------------------------------------------------------------------------------------------------
# Cluster bootstrap


def test_bootstrap_counts_depend_only_on_the_cluster_set():
    idx1, c1 = bootstrap_counts(["b", "a", "a", "c"], 20, 7)
    _, c2 = bootstrap_counts(["c", "b", "a"], 20, 7)
    np.testing.assert_array_equal(idx1, [1, 0, 0, 2])  # index into the sorted unique ids a, b, c
    np.testing.assert_array_equal(c1, c2)
    assert c1.shape == (20, 3)
    np.testing.assert_array_equal(c1.sum(axis=1), 3)  # each replicate draws n_clusters clusters
    _, c3 = bootstrap_counts(["a", "b", "c"], 40, 7)
    np.testing.assert_array_equal(c3[:20], c1)  # more replicates extend, never reshuffle


def _explicit_replicates(values, ranks, cluster, counts):
    """Slow reference: materialise each resample as a list of queries, then compute the statistics."""
    means, medians = [], []
    for b in range(counts.shape[0]):
        rows = [
            q for c in range(counts.shape[1]) for _ in range(int(counts[b, c])) for q in np.flatnonzero(cluster == c)
        ]
        means.append(values[rows].mean(axis=0))
        medians.append(np.median(ranks[rows]))
    return np.array(means), np.array(medians)


def test_vectorised_bootstrap_equals_explicit_loop():
    rng = np.random.default_rng(5)
    n_q = 23
    clusters = [f"p{rng.integers(0, 7)}" for _ in range(n_q)]
    cluster, counts = bootstrap_counts(clusters, 60, 3)
    values = rng.random((n_q, 3))  # three statistics of one cell
    ranks = rng.integers(1, 30, n_q) + rng.choice([0.0, 0.5], n_q)  # mean ranks over repeats can be x.5
    point, reps = _bootstrap_means(values[:, None, :], np.ones((n_q, 1), bool), cluster, counts)
    med = _bootstrap_median(ranks, cluster, counts.astype(np.int32))
    slow_means, slow_medians = _explicit_replicates(values, ranks, cluster, counts)
    np.testing.assert_allclose(point[0], values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(reps[:, 0, :], slow_means, rtol=1e-12)
    np.testing.assert_array_equal(med, slow_medians)  # medians are picked, not summed: exact


def test_evaluate_cis_equal_explicit_loop_percentiles():
    ids = [f"q{i:02d}" for i in range(12)]  # sorted order = row order, as bootstrap_counts indexes
    patients = {q: f"p{i // 3}" for i, q in enumerate(ids)}  # 4 patients × 3 queries
    ranks = table(
        block([1, 2, 7, 1, 30, 4, 1, 1, 9, 2, 1, 50], level=0.0, query_ids=ids, n_candidates=60),
        block([3, 2, 7, 8, 30, 4, 1, 20, 9, 2, 5, 50], level=1.0, query_ids=ids, n_candidates=60),
    )
    metrics, robustness, _ = evaluate(ranks, patients, dataset="toy", n_boot=300, seed=11)
    cluster, counts = bootstrap_counts([patients[q] for q in sorted(ids)], 300, 11)
    r = {lv: ranks.loc[ranks["level"] == lv, "rank"].to_numpy(float) for lv in (0.0, 1.0)}
    stats = {lv: np.stack([hits(r[lv], 1), 1 / r[lv]], axis=1) for lv in r}
    slow = {lv: _explicit_replicates(stats[lv], r[lv], cluster, counts) for lv in r}
    for lv in r:
        for j, metric in enumerate(("R@1", "MRR")):
            scale = 100 if metric == "R@1" else 1
            low, high = np.quantile(scale * slow[lv][0][:, j], [0.025, 0.975])
            got = row(metrics, metric, level=lv)
            assert (got.ci_low, got.ci_high) == pytest.approx((low, high), rel=1e-12)
        low, high = np.quantile(slow[lv][1], [0.025, 0.975])
        got = row(metrics, "median_rank", level=lv)
        assert (got.ci_low, got.ci_high) == pytest.approx((low, high))
    # the relative drop uses the same resample at both levels (paired)
    drop = 1 - slow[1.0][0][:, 1] / slow[0.0][0][:, 1]
    got = robustness[(robustness["metric"] == "MRR") & (robustness["quantity"] == "relative_drop")].iloc[0]
    assert (got.ci_low, got.ci_high) == pytest.approx(tuple(np.quantile(drop, [0.025, 0.975])), rel=1e-12)


def test_bootstrap_is_deterministic_and_seed_dependent():
    ranks = synthetic(n_q=400)
    m1, r1, _ = evaluate(ranks, None, dataset="toy", n_boot=500, seed=0)
    m2, r2, _ = evaluate(ranks, None, dataset="toy", n_boot=500, seed=0)
    pd.testing.assert_frame_equal(m1, m2)
    pd.testing.assert_frame_equal(r1, r2)
    m3, _, _ = evaluate(ranks, None, dataset="toy", n_boot=500, seed=1)
    np.testing.assert_array_equal(m1["value"], m3["value"])  # the point estimate is the full sample
    means = m1["metric"] != "median_rank"
    assert (m1["ci_low"] != m3["ci_low"])[means].any()
    # ... but only by Monte-Carlo noise: well under 1.5 pp on a CI ~ ±4.5 pp wide
    recall = m1["metric"].str.startswith("R@")
    assert np.abs(m1["ci_low"] - m3["ci_low"])[recall].max() < 1.5


def test_point_estimate_inside_its_interval():
    metrics, robustness, _ = evaluate(synthetic(n_q=400), None, dataset="toy", n_boot=500)
    for frame in (metrics, robustness.dropna(subset=["value"])):
        assert (frame["ci_low"] <= frame["value"] + 1e-12).all()
        assert (frame["value"] <= frame["ci_high"] + 1e-12).all()


def test_clusters_widen_the_interval():
    # 200 patients, each with two queries with identical outcomes: really 200 independent units
    rng = np.random.default_rng(3)
    outcome = np.where(rng.random(200) < 0.4, 1, 50)
    ids = [f"q{i:03d}" for i in range(400)]
    ranks = block(np.repeat(outcome, 2), query_ids=ids)
    patients = {q: f"p{i // 2}" for i, q in enumerate(ids)}
    clustered, _, _ = evaluate(ranks, patients, dataset="toy", n_boot=1000)
    independent, _, _ = evaluate(ranks, None, dataset="toy", n_boot=1000)
    width = {
        name: row(t, "R@1").ci_high - row(t, "R@1").ci_low
        for name, t in (("clustered", clustered), ("independent", independent))
    }
    # expected ratio sqrt(2) ≈ 1.41 (each cluster carries two identical queries); allow MC noise
    assert width["clustered"] > 1.25 * width["independent"]


def test_bernoulli_interval_matches_normal_theory():
    rng = np.random.default_rng(2024)
    n, p = 2000, 0.3
    ranks = block(np.where(rng.random(n) < p, 1, 100))
    metrics, _, _ = evaluate(ranks, None, dataset="toy", n_boot=2000, seed=9)
    r = row(metrics, "R@1")
    phat = r.value / 100
    half = 100 * 1.96 * math.sqrt(phat * (1 - phat) / n)  # ≈ 2.0 pp
    # tolerance 0.3 pp: ~3 Monte-Carlo SEs of a 2.5 % quantile with B = 2000, plus 0.05 pp granularity
    assert r.ci_low == pytest.approx(r.value - half, abs=0.3)
    assert r.ci_high == pytest.approx(r.value + half, abs=0.3)


def test_adding_a_model_does_not_change_another_models_cis():
    one = synthetic(n_q=200, models=("a",), seed=1)
    two = table(one, synthetic(n_q=200, models=("b",), seed=2))
    patients = {f"q{i:04d}": f"p{i // 3}" for i in range(200)}
    m1, r1, _ = evaluate(one, patients, dataset="toy", n_boot=400)
    m2, r2, _ = evaluate(two, patients, dataset="toy", n_boot=400)
    for alone, joint in ((m1, m2), (r1, r2)):
        joint = joint[joint["model"] == "a"].reset_index(drop=True)
        assert joint[["metric", "direction"]].equals(alone[["metric", "direction"]])
        # rtol: a wider matmul may sum in another order (last-bit differences only)
        for col in ("value", "ci_low", "ci_high"):
            np.testing.assert_allclose(joint[col], alone[col], rtol=1e-12, equal_nan=True)


# ---------------------------------------------------------------------------------------------------
# Robustness summaries


def test_robustness_on_a_hand_made_curve():
    # R@1 = 80, 40, 0 % at levels 0, 0.5, 1 (10 queries, misses at rank 20 of 20)
    blocks = [
        block([1] * hit + [20] * (10 - hit), level=lv, n_candidates=20) for lv, hit in ((0.0, 8), (0.5, 4), (1.0, 0))
    ]
    _, rob, _ = evaluate(table(*blocks), None, dataset="toy", n_boot=200)

    def value(metric, quantity, level=None):
        sel = (rob["metric"] == metric) & (rob["quantity"] == quantity)
        sel &= rob["level"].isna() if level is None else rob["level"] == level
        assert sel.sum() == 1
        return rob.loc[sel, "value"].iloc[0]

    # ((80+40)/2·0.5 + (40+0)/2·0.5) / 1 = 40
    assert value("R@1", "auc") == pytest.approx(40.0)
    assert value("R@1", "nauc") == pytest.approx(0.5)
    assert value("R@1", "relative_drop", 0.5) == pytest.approx(0.5)
    assert value("R@1", "relative_drop", 1.0) == pytest.approx(1.0)
    # MRR: (8 + 2/20)/10 = 0.81, (4 + 6/20)/10 = 0.43, (10/20)/10 = 0.05
    # auc = (0.81+0.43)/2·0.5 + (0.43+0.05)/2·0.5 = 0.31 + 0.12 = 0.43
    assert value("MRR", "auc") == pytest.approx(0.43)
    assert value("MRR", "nauc") == pytest.approx(0.43 / 0.81)
    assert value("MRR", "relative_drop", 1.0) == pytest.approx(1 - 0.05 / 0.81)
    # Above chance (R@1 chance = 1/20 = 5 %): (40 − 5)/(80 − 5) of the area, (40 − 5)/(80 − 5) kept at
    # level 0.5 and (0 − 5)/75 at level 1 (below chance: negative).
    assert value("R@1", "chance_nauc") == pytest.approx(35 / 75)
    assert value("R@1", "chance_retention", 0.5) == pytest.approx(35 / 75)
    assert value("R@1", "chance_retention", 1.0) == pytest.approx(-5 / 75)
    h20 = sum(1 / r for r in range(1, 21)) / 20  # MRR chance, one relevant of 20
    assert value("MRR", "chance_nauc") == pytest.approx((0.43 - h20) / (0.81 - h20))


def test_chance_normalised_robustness_sees_through_a_near_chance_model():
    # 100 queries among 20 candidates (R@5 chance 25 %). "weak" is a little above chance: 40 % then
    # 30 %; "strong" falls from 90 % to 50 %. nAUC calls the weak one more robust (0.875 vs 0.78);
    # above chance it kept 5 of its 15 points and the strong one 25 of its 65.
    def curve(model, hits0, hits1):
        return [
            block([1] * h + [20] * (100 - h), model=model, level=lv, n_candidates=20)
            for lv, h in ((0.0, hits0), (1.0, hits1))
        ]

    _, rob, _ = evaluate(table(*curve("weak", 40, 30), *curve("strong", 90, 50)), None, dataset="toy", n_boot=200)
    r5 = rob[rob["metric"] == "R@5"].set_index(["model", "quantity"])["value"]
    assert r5["weak", "nauc"] == pytest.approx((40 + 30) / 2 / 40)
    assert r5["strong", "nauc"] == pytest.approx((90 + 50) / 2 / 90)
    assert r5["weak", "nauc"] > r5["strong", "nauc"]
    assert r5["weak", "chance_retention"] == pytest.approx(5 / 15)
    assert r5["strong", "chance_retention"] == pytest.approx(25 / 65)
    assert r5["weak", "chance_retention"] < r5["strong", "chance_retention"]
    assert r5["weak", "chance_nauc"] == pytest.approx((35 - 25) / 15)
    # A model at chance on clean images has nothing above chance to keep, and one whose clean
    # interval reaches down to chance (31 %: [22, 40] with 100 queries) no stable share: undefined.
    _, rob, _ = evaluate(table(*curve("blind", 25, 30), *curve("close", 31, 28)), None, dataset="toy", n_boot=200)
    undefined = rob[(rob["metric"] == "R@5") & rob["quantity"].str.startswith("chance")]
    assert len(undefined) == 4 and undefined[["value", "ci_low", "ci_high"]].isna().all().all()
    assert rob.loc[(rob["metric"] == "R@5") & (rob["quantity"] == "nauc"), "value"].notna().all()


def test_robustness_with_uneven_levels_and_zero_clean_value():
    # R@1 = 100, 50, 0 at levels 0, 0.25, 1: (75·0.25 + 25·0.75) / 1 = 37.5
    blocks = [
        block([1] * hit + [9] * (4 - hit), level=lv, n_candidates=9) for lv, hit in ((0.0, 4), (0.25, 2), (1.0, 0))
    ]
    _, rob, _ = evaluate(table(*blocks), None, dataset="toy", n_boot=100)
    auc = rob[(rob["metric"] == "R@1") & (rob["quantity"] == "auc")]["value"].iloc[0]
    assert auc == pytest.approx(37.5)
    # a curve whose clean value is 0: nauc and relative drops are undefined
    zero = [block([9, 9], level=lv, n_candidates=9) for lv in (0.0, 0.5)]
    _, rob, _ = evaluate(table(*zero), None, dataset="toy", n_boot=100)
    ratio = rob[(rob["metric"] == "R@1") & (rob["quantity"] != "auc")]
    assert ratio[["value", "ci_low", "ci_high"]].isna().all().all()  # value(0) = 0: undefined, no error


def test_robustness_skips_curves_without_level_zero():
    ranks = table(block([1, 2], level=0.1), block([3, 4], level=0.5), block([1, 1], level=0.0, model="other"))
    metrics, rob, _ = evaluate(ranks, None, dataset="toy", n_boot=50)
    assert rob.empty and tuple(rob.columns) == ROBUSTNESS_COLUMNS
    assert len(metrics) == 3 * len(METRICS)


# ---------------------------------------------------------------------------------------------------
# Input validation


def _good() -> pd.DataFrame:
    return table(block([1, 2, 3], level=0.0), block([2, 3, 4], level=0.5))


def test_relevance_modes_are_separate_rows_with_their_own_chance():
    # The same 4 image queries ranked twice: among 10 texts with one relevant (exact), and with 3
    # relevant texts (labels). Hand-computed: exact R@1 = 2/4 (ranks 1, 1, 3, 5); labels R@1 = 3/4.
    exact = block([1, 1, 3, 5], n_candidates=10, n_relevant=1)
    labels = block([1, 1, 1, 2], n_candidates=10, n_relevant=3, relevance="labels")
    metrics, robustness, _ = evaluate(table(exact, labels), None, dataset="toy", n_boot=20)
    assert sorted(metrics["relevance"].unique()) == ["exact", "labels"]
    assert row(metrics, "R@1", relevance="exact").value == pytest.approx(50.0)
    assert row(metrics, "R@1", relevance="labels").value == pytest.approx(75.0)
    # chance R@1 = m/N: 1/10 and 3/10; chance R@5 with m = 3 = 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert row(metrics, "R@1", relevance="exact").chance == pytest.approx(10.0)
    assert row(metrics, "R@1", relevance="labels").chance == pytest.approx(30.0)
    assert row(metrics, "R@5", relevance="labels").chance == pytest.approx(100 * (1 - 21 / 252))
    assert robustness.empty  # one level only: no curve to summarise


def test_metrics_table_median_rank_references_are_expected_medians():
    # Five image queries among 20 reports, 1 to 3 relevant, at two levels.
    m = np.array([1, 2, 1, 3, 1])
    ranks = table(
        block([1, 4, 2, 9, 3], level=0.0, n_candidates=20, n_relevant=m),
        block([5, 4, 12, 9, 3], level=0.5, n_candidates=20, n_relevant=m),
    )
    # Popularity: reports A ×3, B ×2, C ×2, D ×1, E ×1, one image per report (exact relevance). A's
    # image ranks 1; B's and C's 2 or 3 (a = 1 ahead, N = 2 tied); D's and E's 4 or 5 (a = 3). The
    # median is the 3rd of 5, the larger of B's and C's ranks: with ties broken per image,
    # E = 2·1/4 + 3·3/4 = 2.75 (the median of the per-query E[R] 1, 2.5, 2.5, 4.5, 4.5 is 2.5; one
    # tie order shared by every image would always give B and C ranks 2 and 3, median 3).
    popularity = popularity_baseline(np.array([3, 2, 2, 1, 1]), {"exact": ([np.array([t]) for t in range(5)], [])})
    metrics, _, _ = evaluate(ranks, None, dataset="toy", n_boot=50, popularity=popularity)
    chance = expected_median_rank(np.full(5, 20), m)
    for level in (0.0, 0.5):  # the chance level depends on the query pool only
        med = row(metrics, "median_rank", level=level)
        assert med.chance == pytest.approx(chance, abs=1e-12)
        assert med.popularity == pytest.approx(2.75, abs=1e-12)
        assert med.popularity == pytest.approx(expected_median_rank([1, 2, 2, 2, 2], 1, [0, 1, 1, 3, 3]), abs=1e-12)
    # by hand: E = Σ_t P(S_t < 3), S_t = #{q : R_q <= t} a sum of Bernoulli(1 − C(20 − t, m_q)/C(20, m_q))
    direct = 0.0
    for t in range(20):
        pmf = np.array([1.0])
        for mq in m:
            hit = 1 - math.comb(20 - t, mq) / math.comb(20, mq)
            pmf = np.convolve(pmf, [1 - hit, hit])
        direct += pmf[:3].sum()
    assert chance == pytest.approx(direct, abs=1e-12)
    # E[R] = 21/2, 7, 21/2, 21/4, 21/2: their median 10.5 was the old chance value
    assert chance < float(np.median(expected_rank(20, m))) - 1
    # the other references are unchanged: means of per-query expectations
    assert row(metrics, "R@1", level=0.0).chance == pytest.approx(100 * np.mean(m / 20))
    assert row(metrics, "MRR", level=0.0).popularity == pytest.approx(
        (1 + 2 * (1 / 2 + 1 / 3) / 2 + 2 * (1 / 4 + 1 / 5) / 2) / 5
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.drop(columns=["rank"]), "rank"),
        (lambda t: t.drop(columns=["n_candidates", "direction"]), "direction, n_candidates"),
        (lambda t: t.assign(rank=0), "'rank'"),
        (lambda t: t.assign(rank=101), "'rank'"),
        (lambda t: t.assign(rank=1.5), "'rank'"),
        (lambda t: t.assign(rank="1"), "'rank'"),
        (lambda t: t.assign(rank=[1, 2, None, 2, 3, 4]), "'rank'"),
        (lambda t: t.assign(n_relevant=100, rank=2), "'rank'"),  # rank > N - m + 1
        (lambda t: t.assign(n_relevant=0), "'n_relevant'"),
        (lambda t: t.assign(direction="x2y"), "'direction'"),
        (lambda t: t.assign(relevance="fuzzy"), "'relevance'"),
        (lambda t: t.assign(level=-0.1), "'level'"),
        (lambda t: t.drop(index=4), "query_id"),
        (lambda t: pd.concat([t, t.iloc[:1]]), "duplicate"),
        (lambda t: pd.concat([t, t.iloc[:1].assign(repeat=1, n_candidates=50)]), "differ between repeats"),
        (lambda t: t.iloc[:0], "no rows"),
    ],
)
def test_bad_ranks_tables_raise(mutate, message):
    with pytest.raises(MedretError, match=message):
        evaluate(mutate(_good()), None, dataset="toy", n_boot=10)


def test_missing_query_error_names_the_query_and_level():
    with pytest.raises(MedretError, match=r"'q0001'.*level 0.5"):
        evaluate(_good().drop(index=4), None, dataset="toy", n_boot=10)


def test_clusters_mapping_must_cover_every_query():
    with pytest.raises(MedretError, match=r"clusters.*'q0002'"):
        evaluate(_good(), {"q0000": "p1", "q0001": "p1"}, dataset="toy", n_boot=10)
    # a None (or NaN, from a pandas Series) value makes a query its own cluster
    m1, _, _ = evaluate(_good(), {"q0000": "p1", "q0001": "p1", "q0002": None}, dataset="toy", n_boot=50)
    series = pd.Series({"q0000": "p1", "q0001": "p1", "q0002": np.nan})
    m2, _, _ = evaluate(_good(), series, dataset="toy", n_boot=50)
    pd.testing.assert_frame_equal(m1, m2)
    assert len(m1) == 2 * len(METRICS)


def test_bad_bootstrap_settings_raise():
    with pytest.raises(MedretError, match="n_boot"):
        evaluate(_good(), None, dataset="toy", n_boot=0)
    with pytest.raises(MedretError, match="ci"):
        evaluate(_good(), None, dataset="toy", ci=95)


def test_evaluate_on_a_demo_sized_table():
    # 3 models × 11 levels × 2 directions × 500 queries, B = 1000 (speed belongs in benchmarks/)
    ranks = synthetic(n_q=500, models=("a", "b", "c"), levels=tuple(np.round(np.arange(11) / 10, 1)), n_cand=500)
    metrics, robustness, _ = evaluate(ranks, None, dataset="toy", n_boot=1000)
    assert len(metrics) == 3 * 11 * 2 * len(METRICS)
    assert metrics[["value", "ci_low", "ci_high"]].notna().all().all()
    # auc, nauc, chance_nauc + 10 relative drops and 10 retentions per (model, direction, metric)
    assert len(robustness) == 3 * 2 * 4 * 23


# ---------------------------------------------------------------------------------------------------
# Repeats in the bootstrap, paired comparisons


def test_interval_covers_the_choice_of_placements():
    # One query (so resampling queries changes nothing) hit at repeat 0 and missed at repeat 1:
    # R@1 = 50 %. Resampling the two repeats gives 100, 50, 0 % with probabilities 1/4, 1/2, 1/4.
    ranks = table(
        block([1], level=0.0, query_ids=["q"]),
        block([1], level=0.5, repeat=0, query_ids=["q"]),
        block([7], level=0.5, repeat=1, query_ids=["q"]),
    )
    metrics, _, _ = evaluate(ranks, None, dataset="toy", n_boot=4000, seed=3)
    r1 = row(metrics, "R@1", level=0.5)
    assert (r1.value, r1.ci_low, r1.ci_high) == (50.0, 0.0, 100.0)
    w = repeat_weights(2, 4000, 3)
    assert w.shape == (4000, 2) and np.allclose(w.sum(axis=1), 1.0)
    assert np.mean(w[:, 0] == 1.0) == pytest.approx(0.25, abs=0.03)
    assert np.array_equal(repeat_weights(2, 4000, 3), w) and np.all(repeat_weights(1, 5, 0) == 1.0)
    # The median rank resamples queries only: one query, no interval.
    med = row(metrics, "median_rank", level=0.5)
    assert (med.value, med.ci_low, med.ci_high) == (4.0, 4.0, 4.0)


def _pair_of_models(hits_a: np.ndarray, hits_b: np.ndarray) -> pd.DataFrame:
    """Two models whose queries are hits (rank 1) or misses (rank 50) at levels 0 and 0.5."""
    blocks = []
    for model, h in (("a", hits_a), ("b", hits_b)):
        for level in (0.0, 0.5):
            blocks.append(block(np.where(h, 1, 50), model=model, level=level, n_candidates=100))
    return table(*blocks)


def test_paired_bootstrap_recovers_a_known_difference():
    rng = np.random.default_rng(0)
    hits_a = rng.random(400) < 0.6
    hits_b = hits_a.copy()
    hits_b[np.flatnonzero(hits_a)[:80]] = False  # b misses 80 of a's hits: 20 points lower
    _, _, comparisons = evaluate(_pair_of_models(hits_a, hits_b), None, dataset="toy", n_boot=1000)
    assert tuple(comparisons.columns) == COMPARISON_COLUMNS
    r1 = comparisons[(comparisons.metric == "R@1") & (comparisons.quantity == "value") & (comparisons.level == 0.5)]
    [[diff, low, high, p]] = r1[["difference", "ci_low", "ci_high", "p_value"]].to_numpy()
    assert diff == pytest.approx(20.0) and 15.0 < low < 20.0 < high < 25.0
    assert p == pytest.approx(2 / 1001)  # no replicate at or below zero: the smallest p-value
    # nAUC rows: a curve per model and direction, compared too (flat curves: nAUC 1 each, difference 0).
    nauc = comparisons[comparisons.quantity == "nauc"]
    assert len(nauc) == 4 and np.allclose(nauc["difference"], 0.0) and nauc["level"].isna().all()


def test_paired_bootstrap_reports_no_difference_where_there_is_none():
    rng = np.random.default_rng(1)
    hits_a = rng.random(400) < 0.6
    _, _, comparisons = evaluate(_pair_of_models(hits_a, hits_a), None, dataset="toy", n_boot=500)
    values = comparisons[comparisons.quantity == "value"]
    assert (values["difference"] == 0).all() and (values["ci_low"] == 0).all() and (values["ci_high"] == 0).all()
    assert (values["p_value"] == 1.0).all()
    # Same hit rate, different queries (a permutation): no difference on the full sample, and the
    # paired interval straddles zero.
    _, _, comparisons = evaluate(_pair_of_models(hits_a, rng.permutation(hits_a)), None, dataset="toy", n_boot=1000)
    r5 = comparisons[(comparisons.metric == "R@5") & (comparisons.quantity == "value")]
    assert (r5["difference"] == 0).all() and (r5["ci_low"] < 0).all() and (r5["ci_high"] > 0).all()
    assert (r5["p_value"] > 0.5).all()


# ---------------------------------------------------------------------------------------------------
# Tie-aware metrics


def _enumerate_tie_orders(ahead: int, tied: int, relevant_tied: int) -> tuple[dict[int, float], float, float]:
    """Brute force: every order of the tied candidates (each a distinct item), the first relevant's position."""
    items = ["n"] * tied + ["r"] * relevant_tied
    positions = [
        ahead + 1 + order.index(next(i for i in order if items[i] == "r"))
        for order in itertools.permutations(range(len(items)))
    ]
    pos = np.array(positions, dtype=float)
    return {k: float(np.mean(pos <= k)) for k in (1, 5, 10)}, float(np.mean(1 / pos)), float(np.mean(pos))


@pytest.mark.parametrize(
    ("ahead", "tied", "relevant_tied"),
    [(0, 0, 1), (3, 0, 2), (0, 1, 1), (0, 4, 1), (2, 3, 2), (4, 5, 1), (9, 2, 3), (0, 6, 2), (12, 3, 1)],
)
def test_tie_aware_equals_the_mean_over_every_tie_order(ahead, tied, relevant_tied):
    rank = ahead + tied + 1  # pessimistic: behind every tied non-relevant candidate
    got = tie_aware(np.array([rank]), np.array([tied]), np.array([relevant_tied]))
    hits_k, rr, expected = _enumerate_tie_orders(ahead, tied, relevant_tied)
    for k in (1, 5, 10):
        assert got.hits[k][0] == pytest.approx(hits_k[k], abs=1e-12), k
    assert got.reciprocal_rank[0] == pytest.approx(rr, abs=1e-12)
    assert got.rank[0] == pytest.approx(expected, abs=1e-12)


def test_tie_aware_hand_values():
    # One relevant tied with one non-relevant, nothing ahead: rank 1 or 2 with equal chance.
    got = tie_aware(np.array([2]), np.array([1]), np.array([1]))
    assert got.hits[1][0] == 0.5 and got.reciprocal_rank[0] == 0.75 and got.rank[0] == 1.5
    with pytest.raises(MedretError, match="n_tied <= rank - 1"):
        tie_aware(np.array([1]), np.array([1]), np.array([1]))


def test_a_constant_scorer_gets_exactly_chance_when_ties_are_expected():
    from medret.retrieval import rank_table

    n = 40
    rng = np.random.default_rng(3)
    texts = rng.normal(size=(n, 8)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    constant = np.tile(texts[:1], (n, 1))[None]  # every image the same: image -> report is a fixed ranking
    exact = {"exact": ([np.array([i]) for i in range(n)], [np.array([i]) for i in range(n)])}
    ranks = rank_table(constant, np.array([0.0]), np.array([0]), texts, [f"p{i}" for i in range(n)], exact)
    ranks.insert(0, "model", "constant")
    ranks.insert(1, "corruption", "none")
    metrics = evaluate(ranks, None, dataset="d", n_boot=50).metrics
    t2i = metrics[metrics["direction"] == "t2i"].set_index("metric")
    # report -> image: every image scores the same for each report, so all n candidates tie.
    assert t2i.loc["R@1", "value"] == 0.0 and t2i.loc["median_rank", "value"] == n
    for metric in ("R@1", "R@5", "R@10", "MRR", "median_rank"):
        tied = t2i.loc[f"{metric}{TIE_AWARE}"]
        assert tied["value"] == pytest.approx(tied["chance"], rel=1e-12), metric
    assert t2i.loc[f"R@1{TIE_AWARE}", "value"] == pytest.approx(100.0 / n)
    # the median of the per-query expected ranks (n + 1) / 2, not chance's expected median: equal here
    assert t2i.loc[f"median_rank{TIE_AWARE}", "value"] == pytest.approx((n + 1) / 2)


def test_tie_aware_metrics_equal_the_pessimistic_ones_without_ties():
    metrics = evaluate(synthetic(n_q=60), None, dataset="d", n_boot=30).metrics.set_index(
        ["model", "corruption", "level", "relevance", "direction", "metric"]
    )
    for metric in ("R@1", "R@5", "R@10", "MRR", "median_rank"):
        plain = metrics.xs(metric, level="metric")
        tied = metrics.xs(f"{metric}{TIE_AWARE}", level="metric")
        pd.testing.assert_frame_equal(
            plain[["value", "ci_low", "ci_high", "chance"]], tied[["value", "ci_low", "ci_high", "chance"]]
        )
