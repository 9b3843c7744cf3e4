"""Ranks: pessimistic ties, duplicate reports, several relevant items, blocks; brute-force check."""

from __future__ import annotations

import numpy as np
import pytest

from medret.retrieval import pessimistic_ranks, rank_table, relevance_from_labels


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


def test_hand_case_with_ties():
    c = _unit([[1, 0], [0, 1], [1, 0], [1, 1]])
    q = _unit([[1, 0]])
    # scores: 1, 0, 1, 0.707. Relevant = candidate 0; candidate 2 ties it -> pessimistic rank 2.
    assert pessimistic_ranks(q, c, [np.array([0])]).tolist() == [2]
    # Relevant = {0, 2}: the other relevant item never counts against the query -> rank 1.
    assert pessimistic_ranks(q, c, [np.array([0, 2])]).tolist() == [1]
    # Relevant = candidate 3 (0.707): beaten by the two 1.0s -> rank 3.
    assert pessimistic_ranks(q, c, [np.array([3])]).tolist() == [3]
    # Relevant = candidate 1 (score 0): everything else is above -> rank 4 (last).
    assert pessimistic_ranks(q, c, [np.array([1])]).tolist() == [4]


def test_constant_embeddings_rank_last_not_first():
    n = 50
    emb = np.tile(_unit([[0.3, 0.4, 0.5]]), (n, 1))
    relevant = [np.array([i]) for i in range(n)]
    # Every candidate ties: the one relevant item ranks behind all n - 1 others.
    assert (pessimistic_ranks(emb, emb, relevant) == n).all()
    # With m relevant items each, rank n - m + 1.
    relevant3 = [np.array([i, (i + 1) % n, (i + 2) % n]) for i in range(n)]
    assert (pessimistic_ranks(emb, emb, relevant3) == n - 2).all()


def test_rounding_noise_still_ties():
    c = _unit([[1, 2, 3], [1, 2, 3]])
    c[1] = c[1] * (1 + 3e-8)  # the same embedding from another batch shape, up to float noise
    q = _unit([[1, 2, 3]])
    assert pessimistic_ranks(q, c, [np.array([0])]).tolist() == [2]


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 22])
def test_matches_brute_force_on_random_data(block):
    rng = np.random.default_rng(0)
    nq, nc = 60, 45
    # Quantised embeddings produce many exact ties; duplicates of some candidates too.
    c = _unit(rng.integers(-2, 3, size=(nc, 4)) + 1e-3 * (np.arange(4) == 0))
    c[10] = c[3]
    q = _unit(rng.integers(-2, 3, size=(nq, 4)) + 1e-3 * (np.arange(4) == 0))
    relevant = [rng.choice(nc, size=rng.integers(1, 4), replace=False) for _ in range(nq)]
    got = pessimistic_ranks(q, c, relevant, block=block)
    np.testing.assert_array_equal(got, brute_force_ranks(q, c, relevant))


def test_relevance_from_labels():
    rel = relevance_from_labels(np.array([0, 1, 2]), np.array([1, 0, 1, 2]))
    assert [r.tolist() for r in rel] == [[1], [0, 2], [3]]


def test_rank_table_duplicate_reports():
    # Four pairs, reports: A, B, A, C -> unique texts [A, B, C], text ids [0, 1, 0, 2].
    text_ids = np.array([0, 1, 0, 2])
    texts = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # Images: pair 0 and 2 look like A, pair 1 like B, pair 3 looks like A too (a model error).
    images = _unit([[1, 0.1, 0], [0, 1, 0.1], [1, 0, 0.1], [1, 0, 0]])[None]
    table = rank_table(images, np.array([0.0]), np.array([0]), texts, text_ids, ["a", "b", "c", "d"])
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
    assert list(table.columns) == [
        "level",
        "repeat",
        "direction",
        "query_id",
        "rank",
        "n_relevant",
        "n_candidates",
    ]


def test_rank_table_full_occlusion_floors():
    rng = np.random.default_rng(1)
    n, u = 30, 12
    text_ids = np.concatenate([np.arange(u), rng.integers(0, u, n - u)])
    texts = _unit(rng.normal(size=(u, 8)))
    constant = np.tile(_unit(rng.normal(size=(1, 8))), (n, 1))[None]
    table = rank_table(constant, np.array([1.0]), np.array([0]), texts, text_ids, [f"q{i}" for i in range(n)])
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
