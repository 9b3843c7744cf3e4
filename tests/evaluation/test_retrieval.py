"""Ranks: pessimistic ties, duplicate reports, several relevant items, blocks; brute-force check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medret.retrieval import query_ranks, rank_table


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_ranks(q, c, relevant, tol=1e-6):
    """Independent reference: full score matrix, sort each row, walk it with explicit tie groups."""
    out = []
    scores = q.astype(np.float64) @ c.astype(np.float64).T
    for i, row in enumerate(scores):
        rel = set(relevant[i].tolist())
        best = max(row[j] for j in rel)
        order = sorted(range(len(row)), key=lambda j: -row[j])
        # Pessimistic: every non-relevant item tied with (or above) the best relevant comes first.
        out.append(1 + sum(1 for j in order if j not in rel and row[j] >= best - tol))
    return np.array(out)


def brute_force_ties(q, c, relevant, tol=1e-6):
    """Independent reference of the tie counts: non-relevant within tol of the best relevant score, and
    relevant ones at or above best - tol."""
    scores = q.astype(np.float64) @ c.astype(np.float64).T
    tied, rel_tied = [], []
    for i, row in enumerate(scores):
        rel = set(relevant[i].tolist())
        best = max(row[j] for j in rel)
        tied.append(sum(1 for j in range(len(row)) if j not in rel and abs(row[j] - best) <= tol))
        rel_tied.append(sum(1 for j in rel if row[j] >= best - tol))
    return np.array(tied), np.array(rel_tied)


def test_hand_case_with_ties():
    c = _unit([[1, 0], [0, 1], [1, 0], [1, 1]])
    q = _unit([[1, 0]])
    # scores: 1, 0, 1, 0.707. Relevant = candidate 0; candidate 2 ties it -> pessimistic rank 2.
    assert query_ranks(q, c, [np.array([0])]).rank.tolist() == [2]
    # Relevant = {0, 2}: the other relevant item never counts against the query -> rank 1.
    assert query_ranks(q, c, [np.array([0, 2])]).rank.tolist() == [1]
    # Relevant = candidate 3 (0.707): beaten by the two 1.0s -> rank 3.
    assert query_ranks(q, c, [np.array([3])]).rank.tolist() == [3]
    # Relevant = candidate 1 (score 0): everything else is above -> rank 4 (last).
    assert query_ranks(q, c, [np.array([1])]).rank.tolist() == [4]
    # Ties: relevant 0 ties non-relevant 2 -> one tied, one relevant tied; {0, 2}: none tied, two relevant.
    got = query_ranks(np.repeat(q, 3, axis=0), c, [np.array([0]), np.array([0, 2]), np.array([3])])
    assert got.n_tied.tolist() == [1, 0, 0] and got.n_relevant_tied.tolist() == [1, 2, 1]


def test_constant_embeddings_rank_last_not_first():
    n = 50
    emb = np.tile(_unit([[0.3, 0.4, 0.5]]), (n, 1))
    relevant = [np.array([i]) for i in range(n)]
    # Every candidate ties: the one relevant item ranks behind all n - 1 others, all of them tied.
    got = query_ranks(emb, emb, relevant)
    assert (got.rank == n).all() and (got.n_tied == n - 1).all() and (got.n_relevant_tied == 1).all()
    # With m relevant items each, rank n - m + 1.
    relevant3 = [np.array([i, (i + 1) % n, (i + 2) % n]) for i in range(n)]
    assert (query_ranks(emb, emb, relevant3).rank == n - 2).all()


def test_rounding_noise_still_ties():
    c = _unit([[1, 2, 3], [1, 2, 3]])
    c[1] = c[1] * (1 + 3e-8)  # the same embedding from another batch shape, up to float noise
    q = _unit([[1, 2, 3]])
    assert query_ranks(q, c, [np.array([0])]).rank.tolist() == [2]


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 22])
def test_matches_brute_force_on_random_data(block):
    rng = np.random.default_rng(0)
    nq, nc = 60, 45
    # Quantised embeddings produce many exact ties; duplicates of some candidates too.
    c = _unit(rng.integers(-2, 3, size=(nc, 4)) + 1e-3 * (np.arange(4) == 0))
    c[10] = c[3]
    q = _unit(rng.integers(-2, 3, size=(nq, 4)) + 1e-3 * (np.arange(4) == 0))
    relevant = [rng.choice(nc, size=rng.integers(1, 4), replace=False) for _ in range(nq)]
    got = query_ranks(q, c, relevant, block=block)
    np.testing.assert_array_equal(got.rank, brute_force_ranks(q, c, relevant))
    tied, rel_tied = brute_force_ties(q, c, relevant)
    assert tied.sum() >= 5 and (rel_tied > 1).any(), "the data must hold ties of both kinds"
    np.testing.assert_array_equal(got.n_tied, tied)
    np.testing.assert_array_equal(got.n_relevant_tied, rel_tied)


def _exact(text_ids: np.ndarray) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """Exact-report relevance of pairs with these text ids (what Manifest.relevance("exact") gives)."""
    u = int(text_ids.max()) + 1
    return {"exact": ([np.array([t]) for t in text_ids], [np.flatnonzero(text_ids == t) for t in range(u)])}


def test_rank_table_duplicate_reports():
    # Four pairs, reports: A, B, A, C -> unique texts [A, B, C], text ids [0, 1, 0, 2].
    text_ids = np.array([0, 1, 0, 2])
    texts = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # Images: pair 0 and 2 look like A, pair 1 like B, pair 3 looks like A too (a model error).
    images = _unit([[1, 0.1, 0], [0, 1, 0.1], [1, 0, 0.1], [1, 0, 0]])[None]
    table = rank_table(images, np.array([0.0]), np.array([0]), texts, ["a", "b", "c", "d"], _exact(text_ids))
    i2t = table[table.direction == "i2t"].set_index("query_id")
    t2i = table[table.direction == "t2i"].set_index("query_id")
    # i2t: 3 unique candidates; pair d's text C (score 0) is beaten by A (1.0) and B (0) ties -> 3.
    assert i2t["rank"].to_dict() == {"a": 1, "b": 1, "c": 1, "d": 3}
    assert set(i2t["n_candidates"]) == {3} and set(i2t["n_relevant"]) == {1}
    # t2i: one query per unique text. Text A's relevant images are a and c (both ~1); d (exactly
    # 1.0) is not relevant and scores highest -> rank 2. B -> image b first. C: d scores 0 on C,
    # a scores 0, b and c 0.0995 -> d is beaten by b and c and ties a: rank 4.
    assert t2i["rank"].to_dict() == {"text:0": 2, "text:1": 1, "text:2": 4}
    assert t2i["n_relevant"].to_dict() == {"text:0": 2, "text:1": 1, "text:2": 1}
    assert set(t2i["n_candidates"]) == {4}
    # Ties: d's text C (0) ties B (0), behind A; text C's image d (0) ties a (0), behind b and c.
    assert i2t["n_tied"].to_dict() == {"a": 0, "b": 0, "c": 0, "d": 1}
    assert t2i["n_tied"].to_dict() == {"text:0": 0, "text:1": 0, "text:2": 1}
    # Text A's relevant images a and c both score 0.995: two relevant tied; everything else one.
    assert t2i["n_relevant_tied"].to_dict() == {"text:0": 2, "text:1": 1, "text:2": 1}
    assert (i2t["n_relevant_tied"] == 1).all()
    assert list(table.columns) == [
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
    ]


def test_rank_table_full_occlusion_floors():
    rng = np.random.default_rng(1)
    n, u = 30, 12
    text_ids = np.concatenate([np.arange(u), rng.integers(0, u, n - u)])
    texts = _unit(rng.normal(size=(u, 8)))
    constant = np.tile(_unit(rng.normal(size=(1, 8))), (n, 1))[None]
    table = rank_table(constant, np.array([1.0]), np.array([0]), texts, [f"q{i}" for i in range(n)], _exact(text_ids))
    t2i = table[table.direction == "t2i"]
    # Every image identical: text->image ranks are n - m + 1 for every query (no information).
    assert len(t2i) == u
    np.testing.assert_array_equal(t2i["rank"], n - t2i["n_relevant"] + 1)
    np.testing.assert_array_equal(t2i["n_relevant"], np.bincount(text_ids, minlength=u))
    # Image->text: every query gets the same ranking of texts, so ranks follow the fixed order.
    i2t = table[table.direction == "i2t"]
    order = np.argsort(-(texts @ constant[0, 0]))
    position = {t: r + 1 for r, t in enumerate(order)}
    assert i2t["rank"].tolist() == [position[t] for t in text_ids]


def test_rank_table_label_relevance_rows():
    # Same data as test_rank_table_duplicate_reports; under "labels", texts A and C are one class
    # (pairs a, c, d), B another (pair b).
    text_ids = np.array([0, 1, 0, 2])
    texts = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    images = _unit([[1, 0.1, 0], [0, 1, 0.1], [1, 0, 0.1], [1, 0, 0]])[None]
    labels = ([np.array([0, 2]), np.array([1]), np.array([0, 2]), np.array([0, 2])], [[0, 2, 3], [1], [0, 2, 3]])
    relevance = _exact(text_ids) | {"labels": labels}
    table = rank_table(images, np.array([0.0]), np.array([0]), texts, ["a", "b", "c", "d"], relevance)
    assert table.groupby(["relevance", "direction"]).size().to_dict() == {
        ("exact", "i2t"): 4,
        ("exact", "t2i"): 3,
        ("labels", "i2t"): 4,
        ("labels", "t2i"): 3,
    }
    lab = table[table.relevance == "labels"].set_index(["direction", "query_id"])
    # Pair d now retrieves A (relevant, score 1.0) first; text A's best relevant image is d itself.
    assert lab.loc[("i2t", "d"), "rank"] == 1 and lab.loc[("i2t", "d"), "n_relevant"] == 2
    # Text C: its best relevant image is c (0.0995), tied by the non-relevant b: pessimistic rank 2.
    assert lab.loc["t2i", "rank"].to_dict() == {"text:0": 1, "text:1": 1, "text:2": 2}
    assert lab.loc[("t2i", "text:2"), "n_relevant"] == 3
    exact = table[table.relevance == "exact"].drop(columns="relevance").reset_index(drop=True)
    alone = rank_table(images, np.array([0.0]), np.array([0]), texts, ["a", "b", "c", "d"], _exact(text_ids))
    pd.testing.assert_frame_equal(exact, alone.drop(columns="relevance"))


def _tied_problem(nq: int, nc: int, dim: int, seed: int = 3):
    """Quantised embeddings (many exact ties), duplicated candidates and relevant sets of every size."""
    rng = np.random.default_rng(seed)
    c = _unit(rng.integers(-1, 2, size=(nc, dim)) + 1e-3 * (np.arange(dim) == 0))
    c[5] = c[2]
    q = _unit(rng.integers(-1, 2, size=(nq, dim)) + 1e-3 * (np.arange(dim) == 0))
    sizes = rng.choice([1, 2, 7, nc - 3, nc], size=nq)  # including sets that cover (almost) everything
    relevant = [rng.choice(nc, size=s, replace=False) for s in sizes]
    return q, c, relevant


@pytest.mark.parametrize("block", [1, 5, 6, 13, 100, 1000])
def test_tiny_blocks_give_the_ranks_of_one_huge_block(block):
    # D = 6: blocks below D score one row at a time; 13 and 100 split the candidates into chunks.
    q, c, relevant = _tied_problem(nq=70, nc=90, dim=6)
    huge = query_ranks(q, c, relevant, block=1 << 30).rank
    np.testing.assert_array_equal(huge, brute_force_ranks(q, c, relevant))
    np.testing.assert_array_equal(query_ranks(q, c, relevant, block=block).rank, huge)


class _LargestTensor(torch.overrides.TorchFunctionMode):
    """Records the element count of the largest tensor any torch call returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.largest = max(self.largest, out.numel())
        return out


def test_scoring_memory_is_bounded_by_the_block():
    # 200 queries × 300 candidates = 60,000 scores; relevant sets of up to all 300 candidates.
    q, c, relevant = _tied_problem(nq=200, nc=300, dim=8)
    with _LargestTensor() as full:
        expected = query_ranks(q, c, relevant, block=1 << 30).rank
    assert full.largest >= 200 * 300  # the recorder sees the whole matrix when it exists
    for block in (64, 1000):
        with _LargestTensor() as tiled:
            got = query_ranks(q, c, relevant, block=block).rank
        np.testing.assert_array_equal(got, expected)
        assert tiled.largest <= block


def test_scoring_device_argument():
    q, c, relevant = _tied_problem(nq=20, nc=30, dim=4)
    expected = brute_force_ranks(q, c, relevant)
    for device in ("cpu", torch.device("cpu")):
        np.testing.assert_array_equal(query_ranks(q, c, relevant, block=50, device=device).rank, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_scoring_on_cuda_equals_cpu():
    q, c, relevant = _tied_problem(nq=70, nc=90, dim=6)
    np.testing.assert_array_equal(
        query_ranks(q, c, relevant, block=100, device="cuda").rank, brute_force_ranks(q, c, relevant)
    )
