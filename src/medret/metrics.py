"""Retrieval metrics, chance levels, cluster-bootstrap CIs and robustness summaries.

Everything here starts from the per-query ranks table (one row per model, corruption, level, repeat,
relevance mode, direction and query; see :data:`RANK_COLUMNS`). Relevance modes (``exact`` report,
``labels`` match; :mod:`medret.manifest`) are kept apart like directions: their own rows, curves and
chance levels. ``rank`` is the 1-based *pessimistic* rank of the best relevant candidate,
computed upstream: 1 + the number of non-relevant candidates scoring >= the best relevant one. So
ties count against the query (a constant-score model gets rank N - m + 1 and R@K = 0 for
K < N - m + 1), and a query with several relevant candidates is judged by its best-ranked one; the
other relevant candidates never push it down.

Tie-aware forms (``R@K_tieaware``, ``MRR_tieaware``, ``median_rank_tieaware``; McSherry & Najork, ECIR
2008): the expectation of each query's hit, reciprocal rank and rank over a uniformly random order of the
candidates tied with its best relevant score (``n_tied`` non-relevant, ``n_relevant_tied`` relevant, behind
``rank - 1 - n_tied`` strictly better ones; :mod:`medret.retrieval`), by the chance formulas below with
``ahead`` = the strictly better ones. They equal the pessimistic values where nothing ties, and a constant
scorer gets exactly chance, which the pessimistic rule (0 at R@K for K < N - m + 1) cannot say.
``median_rank_tieaware`` is the median over queries of the expected rank.

Reference levels (the metrics table's ``chance`` and ``popularity`` columns) are exact expectations,
not simulations: under a uniformly random ordering of each query's candidates (chance), or of the
reports tied in frequency behind the more frequent ones (popularity, image → report). R@K and MRR
are means over queries, so theirs are the means of the per-query expectations. The median rank is
not a mean: its reference is E[median over queries of the ranks], the query ranks independent
(:func:`expected_median_rank`; for popularity, ties broken per image), not the median of the
per-query expected ranks, which can be far from it. It is for one ranking per query, like the
means': a random model's median of per-query *mean* ranks over R > 1 repeats has another expectation.

Uncertainty: a percentile bootstrap over clusters (patients). One counts matrix, keyed only on the
sorted cluster ids, the number of replicates and the seed, weights every model, corruption, level
and direction, so CIs of differences and of curve summaries (AUC, relative drop) are paired, and
adding a model never moves another model's CIs.

Repeats (R random placements/draws per level): the means (R@K, MRR) are two-stage bootstraps.
Each replicate resamples the clusters and, independently, the R repeats (with replacement, as
whole sets: repeat r is one draw of every pair's placement), so the interval covers both the
choice of queries and the choice of placements. A replicate's value is the repeat-weighted mean
of the per-repeat query means, equal on the full sample to averaging each query over its repeats
first. The repeat draws depend only on R, the number of replicates and the seed, so they too are
shared by every model and level (paired). The median rank resamples queries only (of each
query's mean rank over its repeats).

Comparisons (:data:`COMPARISON_COLUMNS`): for every two models, the difference a − b of each
metric at each level, and of each curve's nAUC, with its percentile interval from the paired
replicates and a two-sided bootstrap p-value: twice the smaller share of replicates on either side
of zero, ``min(1, 2 (1 + min(#{d* <= 0}, #{d* >= 0})) / (B + 1))``; identical models get
difference 0, interval [0, 0] and p = 1.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from medret.errors import MedretError
from medret.manifest import RELEVANCE_MODES

KS = (1, 5, 10)
#: Suffix of the tie-aware forms of the metrics (expectations over a random order of tied scores).
TIE_AWARE = "_tieaware"
#: The pessimistic metrics first (the default; robustness summaries use the leading four), then their tie-aware forms.
METRICS = (
    "R@1",
    "R@5",
    "R@10",
    "MRR",
    "median_rank",
    *(f"{m}{TIE_AWARE}" for m in ("R@1", "R@5", "R@10", "MRR", "median_rank")),
)
ROBUSTNESS_METRICS = ("R@1", "R@5", "R@10", "MRR")
ROBUSTNESS_QUANTITIES = ("auc", "nauc", "chance_nauc", "relative_drop", "chance_retention")
DIRECTIONS = ("i2t", "t2i")
RANK_COLUMNS = (
    "model",
    "corruption",
    "level",
    "repeat",
    "relevance",
    "direction",
    "query_id",
    "rank",
    "n_tied",
    "n_relevant_tied",
    "n_relevant",
    "n_candidates",
)
METRICS_COLUMNS = (
    "dataset",
    "model",
    "corruption",
    "level",
    "relevance",
    "direction",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_queries",
    "chance",
    "popularity",
)
ROBUSTNESS_COLUMNS = (
    "dataset",
    "model",
    "corruption",
    "relevance",
    "direction",
    "metric",
    "quantity",
    "level",
    "value",
    "ci_low",
    "ci_high",
)
COMPARISON_COLUMNS = (
    "dataset",
    "corruption",
    "relevance",
    "direction",
    "metric",
    "quantity",
    "level",
    "model_a",
    "model_b",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "n_boot",
)
_CURVE = ["model", "corruption", "relevance", "direction"]  # one value-vs-level curve
_CELL = ["model", "corruption", "level", "relevance", "direction"]  # one point of a curve: a metrics row per metric
_MEANS = tuple(m for m in METRICS if "median" not in m)  # means of per-query values (medians are not)
_MEDIANS = ("median_rank", f"median_rank{TIE_AWARE}")


# ---------------------------------------------------------------------------------------------------
# Point metrics on a vector of ranks


def hits(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-query hit indicator at cut-off ``k``: 1.0 where ``rank <= k``, else 0.0.

    With pessimistic ranks a tie between the best relevant candidate and non-relevant ones counts
    as a miss when the tie straddles ``k``.
    """
    if k < 1:
        raise MedretError(f"K must be >= 1, got {k}")
    return (np.asarray(ranks, dtype=float) <= k).astype(float)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Recall@K as a hit rate in percent: 100 × the fraction of queries with a relevant item in the top K.

    A query with several relevant items is a hit if any of them is in the top K (the CLIP-paper
    definition, not per-query recall). Ties: pessimistic, see :func:`hits`.
    """
    return 100.0 * float(np.mean(hits(_nonempty(ranks), k)))


def mean_reciprocal_rank(ranks: np.ndarray) -> float:
    """MRR as a fraction in (0, 1]: the mean over queries of 1 / rank of the best relevant item."""
    return float(np.mean(1.0 / _nonempty(ranks)))


def median_rank(ranks: np.ndarray) -> float:
    """Median over queries of the rank of the best relevant item (mean of the two middle values if even)."""
    return float(np.median(_nonempty(ranks)))


def _nonempty(ranks: np.ndarray) -> np.ndarray:
    r = np.asarray(ranks, dtype=float)
    if r.size == 0:
        raise MedretError("no ranks to compute a metric from: the ranks table has no rows for this cell")
    return r


class TieAware(NamedTuple):
    """Per-query expectations over a uniformly random order of the tied candidates."""

    hits: dict[int, np.ndarray]  # P(rank <= K), a fraction, for K in KS
    reciprocal_rank: np.ndarray  # E[1 / rank]
    rank: np.ndarray  # E[rank]


def tie_aware(rank: np.ndarray, n_tied: np.ndarray, n_relevant_tied: np.ndarray) -> TieAware:
    """The tie-aware hit indicators, reciprocal rank and rank of queries with these ranks and ties.

    The best relevant candidate's pessimistic ``rank`` puts it behind ``rank - 1 - n_tied`` strictly better
    candidates and its ``n_tied`` tied non-relevant ones; in a random order of the ``n_tied +
    n_relevant_tied`` tied candidates the first relevant one lands where the chance formulas say, with
    ``ahead`` the strictly better ones. Queries without ties keep their rank (computed directly).
    """
    r = np.asarray(rank, dtype=np.int64)
    t, m = np.asarray(n_tied, dtype=np.int64), np.asarray(n_relevant_tied, dtype=np.int64)
    if np.any(t < 0) or np.any(m < 1) or np.any(t > r - 1):
        raise MedretError("ties must satisfy 0 <= n_tied <= rank - 1 and n_relevant_tied >= 1 for every query")
    hits_at = {k: (r <= k).astype(float) for k in KS}
    reciprocal, expected = 1.0 / r, r.astype(float)
    tied = t > 0
    if tied.any():
        group, rel, ahead = t[tied] + m[tied], m[tied], r[tied] - 1 - t[tied]
        for k in KS:
            hits_at[k][tied] = chance_recall_at_k(group, rel, k, ahead)
        reciprocal[tied] = chance_reciprocal_rank(group, rel, ahead)
        expected[tied] = expected_rank(group, rel, ahead)
    return TieAware(hits_at, reciprocal, expected)


# ---------------------------------------------------------------------------------------------------
# Chance levels: a uniformly random ordering of the N candidates of a query with m relevant ones
#
# Every function also takes ``ahead``: candidates known to outrank all relevant ones, followed by a
# uniformly random ordering of the N tied candidates. ahead = 0 is chance; the popularity baseline
# (a fixed ranking with ties broken at random) uses it for the candidates more frequent than the
# query's most frequent relevant one. The first three are per query (their means are the R@K and MRR
# references); expected_median_rank is the median rank's reference for a whole pool of queries.


def _check_pool(
    n_candidates: np.ndarray, n_relevant: np.ndarray, ahead: np.ndarray | int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, m, a = np.broadcast_arrays(
        np.asarray(n_candidates, np.int64), np.asarray(n_relevant, np.int64), np.asarray(ahead, np.int64)
    )
    if np.any(m < 1) or np.any(m > n):
        raise MedretError("n_relevant must be between 1 and n_candidates for every query")
    if np.any(a < 0):
        raise MedretError("ahead must be >= 0 for every query")
    return n, m, a


def chance_recall_at_k(
    n_candidates: np.ndarray, n_relevant: np.ndarray, k: int, ahead: np.ndarray | int = 0
) -> np.ndarray:
    """Per-query probability (a fraction) that a random ordering puts a relevant item in the top K.

    P = 1 − C(N−m, K) / C(N, K). The ratio is taken as the product over i < K of (N−m−i)/(N−i), each
    factor in [0, 1], so there are no huge binomials and large N is exact to rounding. K = 1 gives m/N;
    K >= N−m+1 gives 1. With ``ahead`` = a, the random ordering starts at position a + 1: K − a
    replaces K, and K <= a gives 0.
    """
    if k < 1:
        raise MedretError(f"K must be >= 1, got {k}")
    n, m, a = _check_pool(n_candidates, n_relevant, ahead)
    miss = np.ones(n.shape)
    for i in range(k):
        # once N-m-i reaches 0 every top-K set must contain a relevant item: the factor is 0
        factor = np.clip(n - m - i, 0, None) / np.maximum(n - i, 1)
        miss *= np.where(i < k - a, factor, 1.0)
    return 1.0 - miss


def chance_reciprocal_rank(n_candidates: np.ndarray, n_relevant: np.ndarray, ahead: np.ndarray | int = 0) -> np.ndarray:
    """Per-query E[1/R], R the position of the first of m relevant items in a random order of N.

    P(R = r) = C(N−r, m−1) / C(N, m) for r = 1..N−m+1, built by the recursion P(1) = m/N,
    P(r+1) = P(r)·(N−r−m+1)/(N−r) (stable cumulative product). For m = 1 this is H_N / N. With
    ``ahead`` = a it is E[1/(a + R)]. Computed once per distinct (N, m, a), which are few.
    """
    n, m, a = _check_pool(n_candidates, n_relevant, ahead)
    keys, inverse = np.unique(np.stack([n.ravel(), m.ravel(), a.ravel()], axis=1), axis=0, return_inverse=True)
    out = np.array([_expected_reciprocal(int(ni), int(mi), int(ai)) for ni, mi, ai in keys])
    return out[inverse.ravel()].reshape(n.shape)


def _expected_reciprocal(n: int, m: int, ahead: int = 0) -> float:
    r = np.arange(1, n - m + 2, dtype=float)
    ratios = np.concatenate([[m / n], (n - r[:-1] - m + 1) / (n - r[:-1])])
    return float(np.sum(np.cumprod(ratios) / (ahead + r)))


def expected_rank(n_candidates: np.ndarray, n_relevant: np.ndarray, ahead: np.ndarray | int = 0) -> np.ndarray:
    """Per-query E[R] = a + (N+1)/(m+1) under a random ordering.

    Not a median-rank chance level: the median over queries of these is not the expected median
    rank (a median is not linear); that is :func:`expected_median_rank`.
    """
    n, m, a = _check_pool(n_candidates, n_relevant, ahead)
    return a + (n + 1) / (m + 1)


def expected_median_rank(n_candidates: np.ndarray, n_relevant: np.ndarray, ahead: np.ndarray | int = 0) -> float:
    """E[median over queries of R_q], the query ranks R_q independent, each as in :func:`expected_rank`.

    R_q = a_q + J_q, J_q the position of the first of m_q relevant items in a uniformly random order
    of N_q; the median is :func:`median_rank`'s (np.median: for an even number Q of queries the mean
    of the two middle order statistics). Exact up to rounding (about 1e-13 absolute for thousands of
    queries); the median of the per-query E[R_q] is not this, and can be far from it.

    For the j-th smallest rank, E[R_(j)] = Σ_{t>=0} P(R_(j) > t) = Σ_t P(S_t < j), where
    S_t = #{q : R_q <= t} is Poisson-binomial with p_q(t) = P(R_q <= t) = 1 − C(N_q − (t − a_q), m_q)
    / C(N_q, m_q) for t > a_q, else 0. Queries with the same (N, m, a) form one binomial class, and
    P(S_t < j) comes from inverting the characteristic function Π_c (1 − p_c + p_c e^{iw})^{n_c}
    (:func:`_poisson_binomial_cdf`). It falls with t from 1 to 0; the sum runs over the t where it
    is neither to within 1e-15 (found by bisection), each t before them adding 1. Cached on the
    multiset of classes, so cells sharing a query pool (every level of a curve) cost one computation.
    """
    n, m, a = _check_pool(n_candidates, n_relevant, ahead)
    if n.size == 0:
        raise MedretError("no queries to compute an expected median rank from")
    keys, counts = np.unique(np.stack([n.ravel(), m.ravel(), a.ravel()], axis=1), axis=0, return_counts=True)
    return _expected_median(tuple((*key, count) for key, count in zip(keys.tolist(), counts.tolist(), strict=True)))


_SETTLED = 1e-15  # P(S_t < j) this close to 1 (or 0) counts as 1 (or 0): bounds the summation range
_NEGLIGIBLE = 1e-20  # a class with n_c·min(p_c, 1 − p_c) below this counts as certain (total-variation bound)
_TAIL = 1e-20  # probability mass of S_t left outside its DFT window (Bernstein bound)
_SPECTRUM_CUT = 50.0  # frequencies where |φ(w)| <= exp(−2 Var(S) sin²(w/2)) < e^−50 are left out
_CHUNK = 1 << 21  # elements per (t, class, frequency) block


@functools.lru_cache(maxsize=1024)
def _expected_median(classes: tuple[tuple[int, int, int, int], ...]) -> float:
    """:func:`expected_median_rank` of the classes (N, m, a, number of queries), sorted."""
    n, m, a, size = (np.array(column, dtype=np.int64) for column in zip(*classes, strict=True))
    q = int(size.sum())
    orders = np.array([q // 2 + 1] if q % 2 else [q // 2, q // 2 + 1])  # 1-based; np.median's middle value(s)
    span = n - m + 1  # J in 1..span
    # log P(J > s), s = 0..span, of every class end to end: cumulative sums of log((N−m−i)/(N−i))
    pieces = []
    for ni, mi, si in zip(n.tolist(), m.tolist(), span.tolist(), strict=True):
        steps = np.log1p(-mi / (ni - np.arange(si - 1, dtype=float)))  # i = 0..span−2, all finite
        pieces.append(np.concatenate([[0.0], np.cumsum(steps), [-np.inf]]))
    log_sf = np.concatenate(pieces)
    offset = np.concatenate([[0], np.cumsum(span + 1)[:-1]])
    weight = size.astype(float)

    def below(ts: np.ndarray) -> np.ndarray:
        """P(S_t < j) = P(S_t <= j − 1) for each t (rows) and middle order j (columns)."""
        lsf = log_sf[offset + np.clip(ts[:, None] - a, 0, span)]
        sf, p = np.exp(lsf), -np.expm1(lsf)
        sure = weight * sf < _NEGLIGIBLE  # R <= t for all of the class
        active = ~sure & (weight * p >= _NEGLIGIBLE)
        k = orders - 1 - (sure * size).sum(axis=1, keepdims=True)
        return _poisson_binomial_cdf(sf, p, np.where(active, weight, 0.0), k)

    def first(lo: int, hi: int, passed) -> int:
        """The first t in (lo, hi] where ``passed`` holds, given that it holds at hi and not at lo."""
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if passed(below(np.array([mid]))[0]) else (mid, hi)
        return hi

    # S_t = 0 up to t = min a and S_t = Q from t = max(a + span) on, so P(S_t < j) is 1, then 0.
    last = int((a + span).max())
    start = first(int(a.min()), last, lambda f: f[0] < 1.0 - _SETTLED)  # lower middle order leaves 1
    end = first(start - 1, last, lambda f: f[-1] <= _SETTLED)  # upper middle order reaches 0
    total = np.full(len(orders), float(start))  # t = 0..start−1 add 1 each
    step = max(1, _CHUNK // (16 * len(n)))
    for t0 in range(start, end, step):
        total += below(np.arange(t0, min(t0 + step, end))).sum(axis=0)
    return float(total.mean())


def _poisson_binomial_cdf(sf: np.ndarray, p: np.ndarray, weight: np.ndarray, k: np.ndarray) -> np.ndarray:
    """P(S_t <= k_tj) for each row t: S_t a sum of independent Binomial(weight_tc, p_tc), sf = 1 − p.

    Inverts the characteristic function φ on a DFT grid. S lies in lo..hi = μ ± r but for a mass
    below _TAIL (Bernstein's inequality), so a grid of G >= hi − lo + 1 points w_l = 2πl/G folds only
    that much onto the window: P(S <= k) = (1/G) Σ_l φ(w_l) Σ_{s=lo..k} e^{−i w_l s}, the inner sum
    e^{−i w (lo+k)/2} sin(w (k−lo+1)/2) / sin(w/2) with its angles reduced exactly (integers mod 2G),
    the terms l and G − l conjugate. log φ(w) = Σ_c weight_c log(1 + p_c (e^{iw} − 1)): modulus
    ½ log1p(−4 p sf sin²(w/2)), argument atan2(p sin w, sf + p cos w), both to full relative
    precision. Frequencies where |φ(w)| <= exp(−2 Var(S) sin²(w/2)) is below e^−50 are left out.
    """
    total = weight.sum(axis=1)
    mean, variance = (weight * p).sum(axis=1), (weight * p * sf).sum(axis=1)
    tail = np.log(2 / _TAIL)  # P(|S − μ| >= r) <= 2 exp(−r² / (2 (Var + r/3))) <= _TAIL
    r = tail / 3 + np.sqrt((tail / 3) ** 2 + 2 * tail * variance)
    lo, hi = np.maximum(0, np.floor(mean - r)), np.minimum(total, np.ceil(mean + r))
    out = (k >= hi[:, None]).astype(float)  # outside the window: 0 or 1 to within _TAIL
    inside = (k >= lo[:, None]) & (k < hi[:, None])
    rows = np.flatnonzero(inside.any(axis=1))
    if rows.size == 0:
        return out
    used = (weight[rows] > 0).any(axis=0)  # classes uncertain at some t
    grid = int((hi - lo)[rows].max()) + 1
    keep = grid // 2  # l = 1..keep; l = G/2 (G even) is its own conjugate
    if variance[rows].min() > _SPECTRUM_CUT / 2:  # else 2 sin² <= 2 keeps every frequency
        keep = min(keep, int(np.arccos(1.0 - _SPECTRUM_CUT / variance[rows].min()) * grid / (2 * np.pi)))
    ell = np.arange(1, keep + 1)
    w = 2 * np.pi * ell / grid
    sin_half, sin_w, cos_w = np.sin(w / 2) ** 2, np.sin(w), np.cos(w)
    pair = np.where(2 * ell == grid, 1.0, 2.0)  # l and G − l, once for the self-conjugate l = G/2
    step = max(1, _CHUNK // (int(used.sum()) * keep))
    for chunk in np.array_split(rows, -(-rows.size // step)):
        ps, pw = (p * sf)[chunk][:, used, None], p[chunk][:, used, None]
        wt = weight[chunk][:, used]
        with np.errstate(divide="ignore"):  # log 0 where p = 1/2 and w = π: φ = 0
            modulus = np.einsum("tc,tcl->tl", wt, 0.5 * np.log1p(-4.0 * ps * sin_half))
        argument = np.einsum("tc,tcl->tl", wt, np.arctan2(pw * sin_w, sf[chunk][:, used, None] + pw * cos_w))
        phi = np.exp(modulus + 1j * argument)[:, None, :]  # (t, 1, l)
        start, kk = lo[chunk].astype(np.int64)[:, None, None], k[chunk][:, :, None]
        kk = np.clip(kk, start, start + grid - 1)
        shift = np.exp(-1j * np.pi * ((ell * (start + kk)) % (2 * grid)) / grid)
        inner = shift * np.sin(np.pi * ((ell * (kk - start + 1)) % (2 * grid)) / grid) / np.sin(np.pi * ell / grid)
        cdf = (kk[:, :, 0] - start[:, :, 0] + 1 + np.real(phi * inner) @ pair) / grid
        out[chunk] = np.where(inside[chunk], np.clip(cdf, 0.0, 1.0), out[chunk])
    return out


def popularity_baseline(
    frequency: np.ndarray, relevance: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]
) -> pd.DataFrame:
    """Image → report point metrics of the popularity baseline, a model that ignores the image (harness §7.4).

    Every image gets the same ranking of the candidate reports, most frequent first (``frequency``:
    how many pairs carry each corpus text, :attr:`medret.manifest.Corpus.frequency`), reports of
    equal frequency in random order. The values are exact expectations over that order: a query's
    best relevant report has frequency f; the a reports more frequent than f come first, then the N
    reports of frequency f, m of them relevant, in random order, so the chance formulas apply with
    ``ahead`` = a. (Pessimistic ties, as used for models' scores, would rank the relevant report
    last in its frequency group, below what any real fixed ranking gets.) Report → image has no
    such baseline: an image-blind model scores every image the same, which is chance.

    R@K and MRR are means, the same whether one tie order serves every image or each image draws
    its own. The median rank is not: its value is :func:`expected_median_rank`, which takes the
    queries' ranks as independent, i.e. ties broken per image. One order shared by every image ties
    together the ranks of queries whose relevant reports share a frequency group, and the expected
    median can then differ: with exact relevance and every report's frequency equal to its number
    of queries, each group's ranks are the same multiset under every order, so the median is fixed,
    while independent tie breaks spread it.

    A reference, not the best an image-blind model can do: with label relevance, a ranking that
    puts one report of each label group first reaches more. ``relevance`` maps each mode to (corpus
    texts relevant to each image, images relevant to each evaluated text), as
    :meth:`medret.manifest.Manifest.relevance`. Returns columns relevance, direction (``i2t``),
    metric, value, with the metrics table's definitions.
    """
    freq = np.asarray(frequency, dtype=np.int64)
    ordered = np.sort(freq)
    rows = []
    for mode, (i2t_rel, _) in relevance.items():
        counts = np.fromiter((len(r) for r in i2t_rel), dtype=np.int64, count=len(i2t_rel))
        flat = freq[np.concatenate([np.asarray(r, dtype=np.int64) for r in i2t_rel])]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        best = np.maximum.reduceat(flat, starts)  # each query's most frequent relevant report
        m = np.add.reduceat((flat == np.repeat(best, counts)).astype(np.int64), starts)
        upper = np.searchsorted(ordered, best, side="right")
        n, ahead = upper - np.searchsorted(ordered, best, side="left"), len(freq) - upper
        values = {f"R@{k}": 100.0 * chance_recall_at_k(n, m, k, ahead).mean() for k in KS}
        values["MRR"] = chance_reciprocal_rank(n, m, ahead).mean()
        values["median_rank"] = expected_median_rank(n, m, ahead)
        values |= {f"{k}{TIE_AWARE}": v for k, v in values.items()}  # expectations over ties already
        rows += [{"relevance": mode, "direction": "i2t", "metric": k, "value": v} for k, v in values.items()]
    return pd.DataFrame(rows, columns=["relevance", "direction", "metric", "value"])


# ---------------------------------------------------------------------------------------------------
# Cluster bootstrap


def bootstrap_counts(clusters: Sequence[str], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n_boot`` cluster-bootstrap resamples.

    ``clusters`` holds one cluster id (patient) per query. Each replicate draws as many clusters as
    there are, uniformly with replacement. Returns ``(index, counts)``: the index of each query's
    cluster among the sorted unique ids, and a float (n_boot, n_clusters) matrix of how often each
    cluster was drawn. The counts depend only on the number of clusters, ``n_boot`` and ``seed``
    (columns follow the sorted ids), so every model, level and direction evaluated on the same
    queries shares the same resamples, and the first B rows do not change when n_boot grows.
    """
    if n_boot < 1:
        raise MedretError(f"n_boot must be >= 1, got {n_boot}")
    if len(clusters) == 0:
        raise MedretError("no queries to bootstrap")
    uniq, index = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    n_clusters = len(uniq)
    draws = np.random.default_rng(seed).integers(0, n_clusters, size=(n_boot, n_clusters))
    flat = (draws + n_clusters * np.arange(n_boot)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_clusters).reshape(n_boot, n_clusters)
    return index.ravel(), counts.astype(float)


def _cluster_sums(values: np.ndarray, cluster: np.ndarray, n_clusters: int) -> np.ndarray:
    """Sum the rows of ``values`` (n_queries, S) within each cluster: (n_clusters, S)."""
    order = np.argsort(cluster, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(cluster[order]) != 0])
    sums = np.zeros((n_clusters, values.shape[1]))
    sums[cluster[order][starts]] = np.add.reduceat(values[order], starts, axis=0)
    return sums


def _bootstrap_means(
    values: np.ndarray, present: np.ndarray, cluster: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Full-sample and replicate means of each column over the queries present in it.

    values: (n_queries, S, T) per-query values of T statistics in S cells; present: (n_queries, S)
    bool. A replicate mean is (counts @ cluster_sums) / (counts @ cluster_sizes), one matmul for all.
    Returns (point (S, T), replicates (B, S, T)).
    """
    nq, s, t = values.shape
    stacked = np.concatenate([np.where(present[:, :, None], values, 0.0).reshape(nq, s * t), present], axis=1)
    sums = _cluster_sums(stacked.astype(float), cluster, counts.shape[1])
    weighted = np.concatenate([sums.sum(axis=0, keepdims=True), counts @ sums])  # row 0: every cluster once
    means = _ratio(weighted[:, : s * t].reshape(-1, s, t), weighted[:, s * t :, None])
    return means[0], means[1:]


def _bootstrap_median(values: np.ndarray, cluster: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Median of ``values`` in each resample, weighting query q by counts[b, cluster[q]]: (B,).

    Equals np.median of the explicitly resampled vector: with cumulative weights over the sorted
    values, the element at 0-based position p of the resample is the first one whose cumulative
    weight exceeds p; even totals average the two middle elements. Pass ``counts`` as int32: the
    in-place row-wise cumulative sum is then several times faster than in float or int64.
    """
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    weights = np.take(counts, cluster[order], axis=1)
    cum = np.cumsum(weights, axis=1, out=weights)
    total = cum[:, -1]
    last = len(values) - 1
    lo = np.minimum(np.count_nonzero(cum <= ((total - 1) // 2)[:, None], axis=1), last)
    hi = np.minimum(np.count_nonzero(cum <= (total // 2)[:, None], axis=1), last)
    return np.where(total > 0, (sorted_values[lo] + sorted_values[hi]) / 2, np.nan)


def percentile_interval(replicates: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0; undefined replicates (a 0 denominator) are left out."""
    alpha = 1.0 - ci
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as they should
        low, high = np.nanquantile(replicates, [alpha / 2, 1 - alpha / 2], axis=0)
    return low, high


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(num, den)
    # Undefined (NaN) where nothing is left to keep: a clean value of 0, or not above chance.
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


# ---------------------------------------------------------------------------------------------------
# The ranks table


def _validate(ranks: pd.DataFrame) -> None:
    missing = [c for c in RANK_COLUMNS if c not in ranks.columns]
    if missing:
        raise MedretError(f"ranks table is missing column(s) {', '.join(missing)}")
    if ranks.empty:
        raise MedretError("ranks table has no rows")
    for col in RANK_COLUMNS:
        if ranks[col].isna().any():
            raise MedretError(f"ranks table column '{col}' has missing values")
    for col in ("level", "repeat", "rank", "n_tied", "n_relevant_tied", "n_relevant", "n_candidates"):
        if not pd.api.types.is_numeric_dtype(ranks[col]) or pd.api.types.is_bool_dtype(ranks[col]):
            raise MedretError(f"ranks table column '{col}' must be numeric, got dtype {ranks[col].dtype}")
    bad = sorted(set(ranks["relevance"].unique()) - set(RELEVANCE_MODES))
    if bad:
        raise MedretError(f"ranks table column 'relevance' has unknown value(s) {bad}; use {RELEVANCE_MODES}")
    bad = sorted(set(ranks["direction"].unique()) - set(DIRECTIONS))
    if bad:
        raise MedretError(f"ranks table column 'direction' has unknown value(s) {bad}; use 'i2t' or 't2i'")
    level = ranks["level"].to_numpy(float)
    if not np.all(np.isfinite(level)) or np.any(level < 0):
        raise MedretError("ranks table column 'level' must hold finite levels >= 0")
    for col in ("repeat", "rank", "n_tied", "n_relevant_tied", "n_candidates", "n_relevant"):
        v = ranks[col].to_numpy(float)
        if np.any(v != np.round(v)):
            raise MedretError(f"ranks table column '{col}' must hold integers")
    rank, n, m = (ranks[c].to_numpy(float) for c in ("rank", "n_candidates", "n_relevant"))
    if np.any(m < 1) or np.any(m > n):
        raise MedretError("ranks table column 'n_relevant' must be between 1 and n_candidates")
    if np.any(rank < 1) or np.any(rank > n):
        raise MedretError("ranks table column 'rank' must be between 1 and n_candidates")
    if np.any(rank > n - m + 1):
        # pessimistic rank = 1 + non-relevant candidates ranked above, so at most N - m + 1
        raise MedretError("ranks table column 'rank' exceeds n_candidates - n_relevant + 1 for some query")
    tied, rel_tied = ranks["n_tied"].to_numpy(float), ranks["n_relevant_tied"].to_numpy(float)
    if np.any(tied < 0) or np.any(tied > rank - 1):
        raise MedretError("ranks table column 'n_tied' must be between 0 and rank - 1")
    if np.any(rel_tied < 1) or np.any(rel_tied > m):
        raise MedretError("ranks table column 'n_relevant_tied' must be between 1 and n_relevant")
    dup = ranks.duplicated([*_CELL, "repeat", "query_id"])
    if dup.any():
        row = ranks[dup].iloc[0]
        raise MedretError(
            f"ranks table has duplicate rows for query '{row['query_id']}' ({row['model']}, "
            f"{row['corruption']}, level {row['level']}, repeat {row['repeat']}, {row['relevance']}, "
            f"{row['direction']})"
        )


def _per_query(ranks: pd.DataFrame) -> pd.DataFrame:
    """One row per query and level: its mean rank and mean expected rank over its repeats (what the median
    ranks are taken of),
    its candidate pool and its number of repeats. The means (R@K, MRR) are bootstrapped per repeat
    by :func:`_repeat_bootstrap_means`, which reads the ranks table itself."""
    expected = tie_aware(ranks["rank"], ranks["n_tied"], ranks["n_relevant_tied"]).rank
    table = ranks[[*_CELL, "query_id", "repeat", "n_candidates", "n_relevant"]].assign(
        **{"median_rank": ranks["rank"].to_numpy(float), f"median_rank{TIE_AWARE}": expected}
    )
    grouped = table.groupby([*_CELL, "query_id"], sort=True, observed=True)
    per_query = grouped[list(_MEDIANS)].mean()
    pool = grouped[["n_candidates", "n_relevant"]]
    smallest = pool.min()
    if (smallest != pool.max()).any().any():
        raise MedretError("ranks table columns 'n_candidates'/'n_relevant' differ between repeats of a query")
    n_rep = grouped["repeat"].agg(["size", "max"])
    if (n_rep["max"] + 1 != n_rep["size"]).any():
        raise MedretError("ranks table column 'repeat': each query's repeats at a level must be 0, 1, ..., R-1")
    per_query = per_query.join(smallest).join(n_rep["size"].rename("n_repeats")).reset_index()
    if (per_query.groupby(_CELL, observed=True)["n_repeats"].nunique() > 1).any():
        raise MedretError("ranks table column 'repeat': queries of one level have different numbers of repeats")
    _check_same_queries(per_query)
    return per_query


def _check_same_queries(per_query: pd.DataFrame) -> None:
    """Every level of a curve must hold the same queries, or the curve mixes different test sets."""
    n_curve = per_query.groupby(_CURVE, observed=True)["query_id"].transform("nunique")
    n_cell = per_query.groupby(_CELL, observed=True)["query_id"].transform("nunique")
    short = per_query[n_cell < n_curve]
    if short.empty:
        return
    model, corruption, level, relevance, direction = short.iloc[0][_CELL]
    curve = per_query[
        (per_query["model"] == model)
        & (per_query["corruption"] == corruption)
        & (per_query["relevance"] == relevance)
        & (per_query["direction"] == direction)
    ]
    absent = sorted(set(curve["query_id"]) - set(curve.loc[curve["level"] == level, "query_id"]))
    raise MedretError(
        f"ranks table column 'query_id': query '{absent[0]}' of {model}/{corruption}/{relevance}/{direction} "
        f"is missing at level {level} ({len(absent)} missing there)"
    )


def _query_clusters(queries: np.ndarray, clusters: Mapping[str, str | None] | None) -> list[str]:
    """Cluster id per query; a query without one (None/NaN, or no mapping at all) is its own cluster."""
    if clusters is None:
        return [f"query:{q}" for q in queries]
    absent = [q for q in queries if q not in clusters]
    if absent:
        raise MedretError(f"clusters mapping has no entry for query_id '{absent[0]}' ({len(absent)} missing)")
    # prefixes keep a query id from colliding with a patient id of the same spelling
    return [f"query:{q}" if pd.isna(clusters[q]) else f"cluster:{clusters[q]}" for q in queries]


# ---------------------------------------------------------------------------------------------------
# Evaluation


class Evaluation(NamedTuple):
    """What :func:`evaluate` returns: the three tables."""

    metrics: pd.DataFrame
    robustness: pd.DataFrame
    comparisons: pd.DataFrame


def evaluate(
    ranks: pd.DataFrame,
    clusters: Mapping[str, str | None] | None,
    *,
    dataset: str,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    popularity: pd.DataFrame | None = None,
) -> Evaluation:
    """Return the metrics, robustness and comparisons tables with paired cluster-bootstrap CIs.

    Metrics, one row per (model, corruption, level, relevance, direction, metric), columns
    ``METRICS_COLUMNS``:

    - ``R@K`` (K in 1, 5, 10), percent: a query is a hit if its best relevant candidate has
      pessimistic rank <= K (ties count against it; several relevant items: any one in the top K).
      Each query's hit indicator is first averaged over its repeats at that level, then over queries.
    - ``MRR``, a fraction: per-query reciprocal rank averaged over repeats, then over queries.
    - ``median_rank``, rank units: per-query mean rank over repeats, then the median over queries.
    - The same five with the suffix ``_tieaware``: each query's hit, reciprocal rank and rank as expectations
      over a random order of its tied candidates (module doc; :func:`tie_aware`), otherwise computed alike.

    ``value`` is the full-sample estimate; ``ci_low``/``ci_high`` the ``ci`` percentile interval of
    ``n_boot`` cluster-bootstrap replicates (clusters = ``clusters[query_id]``, e.g. patients; None
    or a None value makes a query its own cluster); the same resamples serve every row. ``chance``
    is the expectation under a uniformly random ranking: the mean of the per-query chance of R@K
    (percent) or of E[1/R], and for median_rank the exact expected median over queries of
    independent random ranks (:func:`expected_median_rank`; not the median of the per-query
    (N+1)/(m+1)), for one ranking per query (R = 1).

    Robustness, columns ``ROBUSTNESS_COLUMNS``, for R@1, R@5, R@10 and MRR of every (model,
    corruption, relevance, direction) curve with a level-0 point and at least two levels: ``auc`` = trapezoid
    area under value-vs-level divided by the level range (metric units, level NaN); ``nauc`` = auc /
    value(0); ``relative_drop`` = 1 − value(level)/value(0) for each level > 0. The chance-normalised
    forms measure only what a model holds above a random ranking, since recall does not fall to 0
    (harness §5.2): ``chance_nauc`` = (auc − chance)/(value(0) − chance) and ``chance_retention`` =
    (value(level) − chance)/(value(0) − chance); a model near chance otherwise looks robust (nAUC
    near 1) because it has nothing to lose. ``chance`` is the cell's (it depends on the query pool
    only, not on the level); both are NaN unless the clean value's interval lies above chance. Ratios
    are NaN where the denominator is not positive (value(0) = 0, or not above chance), and such
    replicates are left out of the CI. All use the metrics' replicates, so the CIs account for the
    pairing across levels.

    ``popularity`` is the value of the image-blind popularity baseline (the table of
    :func:`popularity_baseline`, matched on relevance, direction and metric; NaN without it): for
    median_rank likewise the exact expected median, ties broken independently per image.

    Comparisons, columns ``COMPARISON_COLUMNS``: every two models' paired differences (module doc).
    """
    if not 0.0 < ci < 1.0:
        raise MedretError(f"ci must be between 0 and 1, got {ci}")
    _validate(ranks)
    per_query = _per_query(ranks)

    query_codes, queries = pd.factorize(per_query["query_id"], sort=True)
    cluster, counts = bootstrap_counts(_query_clusters(np.asarray(queries), clusters), n_boot, seed)
    cell_codes = per_query.groupby(_CELL, sort=True, observed=True).ngroup().to_numpy()
    cells = _cells(per_query)

    point, reps = np.empty((len(cells), len(METRICS))), np.empty((n_boot, len(cells), len(METRICS)))
    means = [METRICS.index(m) for m in _MEANS]
    point[:, means], reps[:, :, means] = _repeat_bootstrap_means(
        ranks, cells, queries, cluster, counts, seed=seed, n_repeats=cells["n_repeats"].to_numpy()
    )
    # medians: a weighted median of each query's mean (expected) rank over its repeats
    counts_int = counts.astype(np.int32)
    for metric in _MEDIANS:
        j, mean_rank = METRICS.index(metric), per_query[metric].to_numpy(float)
        for c in range(len(cells)):
            mine = cell_codes == c
            point[c, j] = np.median(mean_rank[mine])
            reps[:, c, j] = _bootstrap_median(mean_rank[mine], cluster[query_codes[mine]], counts_int)

    metrics = _metrics_table(cells, point, reps, ci, dataset)
    if popularity is not None:
        baseline = popularity.set_index(["relevance", "direction", "metric"])["value"]
        keys = pd.MultiIndex.from_frame(metrics[["relevance", "direction", "metric"]])
        metrics["popularity"] = baseline.reindex(keys).to_numpy()
    robustness, curves = _robustness_table(cells, point, reps, ci, dataset)
    comparisons = _comparisons_table(cells, point, reps, curves, ci, dataset)
    return Evaluation(metrics, robustness, comparisons)


def repeat_weights(n_repeats: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_repeats) bootstrap weights of ``n_repeats`` repeats: multinomial counts / n_repeats.

    A pure function of its arguments, so every cell with R repeats shares them (paired).
    """
    if n_repeats == 1:
        return np.ones((n_boot, 1))
    rng = np.random.default_rng([seed, n_repeats, 0x5EED])
    return rng.multinomial(n_repeats, np.full(n_repeats, 1.0 / n_repeats), size=n_boot) / n_repeats


def _repeat_bootstrap_means(
    ranks: pd.DataFrame,
    cells: pd.DataFrame,
    queries: pd.Index,
    cluster: np.ndarray,
    counts: np.ndarray,
    *,
    seed: int,
    n_repeats: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Point (S, T) and two-stage replicates (B, S, T) of the mean metrics (module doc, Repeats)."""
    r = ranks["rank"].to_numpy(float)
    ties = tie_aware(ranks["rank"], ranks["n_tied"], ranks["n_relevant_tied"])
    # columns in _MEANS order: pessimistic R@K and MRR, then their tie-aware forms
    stats = np.column_stack(
        [100.0 * hits(r, k) for k in KS] + [1.0 / r] + [100.0 * ties.hits[k] for k in KS] + [ties.reciprocal_rank]
    )
    cell_of = pd.MultiIndex.from_frame(cells[_CELL]).get_indexer(pd.MultiIndex.from_frame(ranks[_CELL]))
    query_of = queries.get_indexer(ranks["query_id"])
    repeat = ranks["repeat"].to_numpy(np.int64)
    n_boot, (s, t) = counts.shape[0], (len(cells), stats.shape[1])
    weights = {int(n): repeat_weights(int(n), n_boot, seed) for n in np.unique(n_repeats)}
    point, reps = np.zeros((s, t)), np.zeros((n_boot, s, t))
    for rep in range(int(n_repeats.max())):
        rows = repeat == rep
        values = np.zeros((len(queries), s, t))
        present = np.zeros((len(queries), s), dtype=bool)
        values[query_of[rows], cell_of[rows]] = stats[rows]
        present[query_of[rows], cell_of[rows]] = True
        p_rep, reps_rep = _bootstrap_means(values, present, cluster, counts)
        has = rep < n_repeats  # cells that have this repeat
        w = np.zeros((n_boot, s))
        for n, wn in weights.items():
            if rep < n:
                w[:, n_repeats == n] = wn[:, rep : rep + 1]
        point[has] += p_rep[has] / n_repeats[has, None]
        reps[:, has] += reps_rep[:, has] * w[:, has, None]
    return point, reps


def _cells(per_query: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, corruption, level, relevance, direction), in ngroup order, with n_queries and chance."""
    n, m = per_query["n_candidates"].to_numpy(), per_query["n_relevant"].to_numpy()
    chance = {f"R@{k}": 100.0 * chance_recall_at_k(n, m, k) for k in KS}
    chance["MRR"] = chance_reciprocal_rank(n, m)
    table = per_query[[*_CELL, "query_id"]].assign(**{f"chance_{k}": v for k, v in chance.items()})
    grouped = table.groupby(_CELL, sort=True, observed=True)
    cells = grouped[[f"chance_{k}" for k in chance]].mean()
    pools = per_query.groupby(_CELL, sort=True, observed=True)[["n_candidates", "n_relevant"]]
    # exact E[median rank] of a random ranking per cell; cached, so the levels of a curve cost one
    cells["chance_median_rank"] = [expected_median_rank(p["n_candidates"], p["n_relevant"]) for _, p in pools]
    for metric in ("R@1", "R@5", "R@10", "MRR", "median_rank"):  # a random ranking's ties are its own
        cells[f"chance_{metric}{TIE_AWARE}"] = cells[f"chance_{metric}"]
    cells["n_queries"] = grouped["query_id"].nunique()
    cells["n_repeats"] = per_query.groupby(_CELL, sort=True, observed=True)["n_repeats"].first()
    return cells.reset_index()


def _metrics_table(cells: pd.DataFrame, point: np.ndarray, reps: np.ndarray, ci: float, dataset: str) -> pd.DataFrame:
    low, high = percentile_interval(reps, ci)
    n_metrics = len(METRICS)
    out = cells.loc[cells.index.repeat(n_metrics), _CELL].reset_index(drop=True)
    out.insert(0, "dataset", dataset)
    out["metric"] = np.tile(METRICS, len(cells))
    out["value"], out["ci_low"], out["ci_high"] = point.ravel(), low.ravel(), high.ravel()
    out["n_queries"] = np.repeat(cells["n_queries"].to_numpy(), n_metrics)
    out["chance"] = cells[[f"chance_{k}" for k in METRICS]].to_numpy().ravel()
    out["popularity"] = np.nan
    return out[list(METRICS_COLUMNS)]


def _robustness_table(
    cells: pd.DataFrame, point: np.ndarray, reps: np.ndarray, ci: float, dataset: str
) -> tuple[pd.DataFrame, dict[tuple, np.ndarray]]:
    """AUC, normalised AUC and relative drops of each curve, on the full sample and on every replicate.

    Also returns each curve's nAUC samples ((1 + B, n) for the robustness metrics; row 0 the full
    sample), keyed by the curve's (model, corruption, relevance, direction), for the comparisons.
    """
    n = len(ROBUSTNESS_METRICS)  # the leading metrics in METRICS order
    samples = np.concatenate([point[None, :, :n], reps[:, :, :n]])  # (1 + B, cells, n)
    rows: list[dict] = []
    curves: dict[tuple, np.ndarray] = {}
    for (model, corruption, relevance, direction), curve in cells.groupby(_CURVE, sort=True, observed=True):
        curve = curve.sort_values("level")
        levels = curve["level"].to_numpy(float)
        if levels[0] != 0.0 or len(levels) < 2:
            continue  # no clean reference or no curve: nothing to summarise
        y = samples[:, curve.index.to_numpy()]  # (1 + B, levels, n)
        # chance depends only on the query pool, the same at every level
        chance = curve[[f"chance_{m}" for m in ROBUSTNESS_METRICS]].to_numpy(float)[0]
        # Only clean values clearly above chance: a denominator whose interval reaches 0 makes the ratio
        # swing without bound across replicates.
        chance = np.where(percentile_interval(y[1:, 0], ci)[0] > chance, chance, np.nan)
        auc = np.trapezoid(y, x=levels, axis=1) / (levels[-1] - levels[0])
        summaries = [("auc", np.nan, auc), ("nauc", np.nan, _ratio(auc, y[:, 0]))]
        summaries.append(("chance_nauc", np.nan, _ratio(auc - chance, y[:, 0] - chance)))
        curves[(model, corruption, relevance, direction)] = summaries[1][2]
        drops = 1.0 - _ratio(y[:, 1:], y[:, :1])
        kept = _ratio(y[:, 1:] - chance, y[:, :1] - chance)
        summaries += [("relative_drop", lvl, drops[:, i]) for i, lvl in enumerate(levels[1:])]
        summaries += [("chance_retention", lvl, kept[:, i]) for i, lvl in enumerate(levels[1:])]
        intervals = [percentile_interval(s[1:], ci) for _, _, s in summaries]
        for j, metric in enumerate(ROBUSTNESS_METRICS):
            for (quantity, level, s), (low, high) in zip(summaries, intervals, strict=True):
                rows.append(
                    {"dataset": dataset, "model": model, "corruption": corruption}
                    | {"relevance": relevance, "direction": direction}
                    | {"metric": metric, "quantity": quantity, "level": level}
                    | {"value": s[0, j], "ci_low": low[j], "ci_high": high[j]}
                )
    return pd.DataFrame(rows, columns=list(ROBUSTNESS_COLUMNS)), curves


def paired_difference(a: np.ndarray, b: np.ndarray, ci: float) -> tuple[np.ndarray, ...]:
    """Difference a − b from paired samples (row 0 the full sample, rows 1.. the replicates).

    Returns (difference, ci_low, ci_high, p_value) per trailing column; replicates where either side
    is undefined (NaN) are left out. The p-value is the two-sided bootstrap one of the module doc.
    """
    d = a - b
    low, high = percentile_interval(d[1:], ci)
    valid = ~np.isnan(d[1:])
    n = valid.sum(axis=0)
    tail = np.minimum(((d[1:] <= 0) & valid).sum(axis=0), ((d[1:] >= 0) & valid).sum(axis=0))
    p = np.where(n > 0, np.minimum(1.0, 2.0 * (1 + tail) / (n + 1)), np.nan)
    return d[0], low, high, p


def _comparisons_table(
    cells: pd.DataFrame,
    point: np.ndarray,
    reps: np.ndarray,
    curves: Mapping[tuple, np.ndarray],
    ci: float,
    dataset: str,
) -> pd.DataFrame:
    """Every two models' paired differences per level and metric, and of nAUC (module doc)."""
    samples = np.concatenate([point[None], reps])  # (1 + B, cells, metrics)
    n_boot = reps.shape[0]
    index = {tuple(key): i for i, key in enumerate(cells[_CELL].itertuples(index=False, name=None))}
    models = sorted(cells["model"].unique())
    rows: list[dict] = []
    for (corruption, level, relevance, direction), group in cells.groupby(
        ["corruption", "level", "relevance", "direction"], sort=True, observed=True
    ):
        present = set(group["model"])
        for i, a in enumerate(models):
            for b in models[i + 1 :]:
                if a not in present or b not in present:
                    continue
                ia = index[(a, corruption, level, relevance, direction)]
                ib = index[(b, corruption, level, relevance, direction)]
                diff, low, high, p = paired_difference(samples[:, ia], samples[:, ib], ci)
                for j, metric in enumerate(METRICS):
                    rows.append(
                        {"dataset": dataset, "corruption": corruption, "relevance": relevance}
                        | {"direction": direction, "metric": metric, "quantity": "value", "level": level}
                        | {"model_a": a, "model_b": b, "difference": diff[j], "ci_low": low[j], "ci_high": high[j]}
                        | {"p_value": p[j], "n_boot": n_boot}
                    )
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            for (model, corruption, relevance, direction), nauc_a in sorted(curves.items()):
                nauc_b = curves.get((b, corruption, relevance, direction))
                if model != a or nauc_b is None:
                    continue
                diff, low, high, p = paired_difference(nauc_a, nauc_b, ci)
                for j, metric in enumerate(ROBUSTNESS_METRICS):
                    rows.append(
                        {"dataset": dataset, "corruption": corruption, "relevance": relevance}
                        | {"direction": direction, "metric": metric, "quantity": "nauc", "level": np.nan}
                        | {"model_a": a, "model_b": b, "difference": diff[j], "ci_low": low[j], "ci_high": high[j]}
                        | {"p_value": p[j], "n_boot": n_boot}
                    )
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
