"""Per-query ranks for image→text and text→image retrieval, scored in bounded-memory blocks.

Definitions (DESIGN §4):

* Candidates. Image→text (``i2t``): one query per pair (its image); the candidates are the unique
  report strings of the manifest (identical strings are one candidate), so each image has exactly
  one relevant text. Text→image (``t2i``): one query per unique report string (identical reports
  are one query, not many copies of it, which would let the most frequent report dominate the
  average); the candidates are all images, and every image whose report is that string is relevant.
* Rank: the 1-based **pessimistic** rank of the best-scoring relevant candidate,
  ``1 + #{non-relevant c : s(q, c) >= s⁺(q) - tol}`` with ``s⁺`` the best relevant score. Ties
  count against the query, so a model whose embeddings are constant ranks every query last among
  the non-relevant candidates and scores 0 at R@K for K < N, never 100%. Other relevant items never
  count against a query.
* Scores are cosine similarities of L2-normalised float32 embeddings, computed in float64 (every
  product is exact) and compared with a tolerance ``tol`` (default 1e-6, about 16 float32 ulps),
  so embeddings that are equal up to rounding noise from different batch shapes still tie.
* Memory: scores are computed for ``block`` query×candidate entries at a time (a block of query
  rows against all candidates), never for the whole N×M matrix at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

DEFAULT_BLOCK = 1 << 22  # score entries per block: 4M × (8 + 1) bytes ≈ 36 MB
DEFAULT_TOL = 1e-6


def relevance_from_labels(query_labels: np.ndarray, candidate_labels: np.ndarray) -> list[np.ndarray]:
    """Relevant candidate indices of each query: the candidates that carry the query's label."""
    by_label: dict[int, list[int]] = {}
    for j, lab in enumerate(candidate_labels.tolist()):
        by_label.setdefault(lab, []).append(j)
    return [np.asarray(by_label.get(lab, []), dtype=np.int64) for lab in query_labels.tolist()]


def pessimistic_ranks(
    queries: np.ndarray,
    candidates: np.ndarray,
    relevant: Sequence[np.ndarray],
    *,
    block: int = DEFAULT_BLOCK,
    tol: float = DEFAULT_TOL,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Pessimistic 1-based rank of the best relevant candidate for each query (see module doc).

    ``queries`` (Nq, D) and ``candidates`` (Nc, D) are L2-normalised embeddings; ``relevant[i]``
    holds the candidate indices relevant to query i (at least one each).
    """
    nq, nc = len(queries), len(candidates)
    if len(relevant) != nq:
        raise ValueError(f"{len(relevant)} relevance lists for {nq} queries")
    empty = [i for i, r in enumerate(relevant) if len(r) == 0]
    if empty:
        raise ValueError(f"query {empty[0]} has no relevant candidate")
    cand = torch.as_tensor(candidates, device=device).double()
    ranks = np.empty(nq, dtype=np.int64)
    rows = max(1, block // max(nc, 1))
    for lo in range(0, nq, rows):
        hi = min(lo + rows, nq)
        scores = torch.as_tensor(queries[lo:hi], device=device).double() @ cand.T
        rel = torch.zeros_like(scores, dtype=torch.bool)
        row_idx = np.repeat(np.arange(hi - lo), [len(r) for r in relevant[lo:hi]])
        rel[
            torch.as_tensor(row_idx, device=device),
            torch.as_tensor(np.concatenate(relevant[lo:hi]), device=device),
        ] = True
        best = scores.masked_fill(~rel, -torch.inf).amax(dim=1, keepdim=True)
        beaten = (scores >= best - tol) & ~rel
        ranks[lo:hi] = (1 + beaten.sum(dim=1)).cpu().numpy()
    return ranks


def text_query_ids(n_texts: int) -> list[str]:
    """Query ids of the text→image direction: one per unique report (``text:<text_id>``)."""
    return [f"text:{t}" for t in range(n_texts)]


def rank_table(
    image_emb: np.ndarray,
    levels: np.ndarray,
    repeats: np.ndarray,
    text_emb: np.ndarray,
    text_ids: np.ndarray,
    pair_ids: Sequence[str],
    *,
    block: int = DEFAULT_BLOCK,
    tol: float = DEFAULT_TOL,
) -> pd.DataFrame:
    """Ranks in both directions at every (level, repeat) condition.

    ``image_emb`` is (C, N, D) for C conditions and the N manifest pairs; ``text_emb`` is (U, D)
    for the unique texts and ``text_ids`` (N,) maps each pair to its text. Returns the tidy table
    ``level, repeat, direction, query_id, rank, n_relevant, n_candidates``; image queries are named
    by their pair id, text queries by :func:`text_query_ids`.
    """
    n, u = len(pair_ids), len(text_emb)
    i2t_rel = [np.asarray([t], dtype=np.int64) for t in text_ids.tolist()]
    t2i_rel = relevance_from_labels(np.arange(u), text_ids)
    t2i_nrel = np.asarray([len(r) for r in t2i_rel], dtype=np.int64)
    frames = []
    for c in range(len(levels)):
        i2t = pessimistic_ranks(image_emb[c], text_emb, i2t_rel, block=block, tol=tol)
        t2i = pessimistic_ranks(text_emb, image_emb[c], t2i_rel, block=block, tol=tol)
        for direction, queries, ranks, nrel, ncand in (
            ("i2t", list(pair_ids), i2t, np.ones(n, np.int64), u),
            ("t2i", text_query_ids(u), t2i, t2i_nrel, n),
        ):
            frames.append(
                pd.DataFrame(
                    {
                        "level": float(levels[c]),
                        "repeat": int(repeats[c]),
                        "direction": direction,
                        "query_id": queries,
                        "rank": ranks,
                        "n_relevant": nrel,
                        "n_candidates": ncand,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)
