"""Per-query ranks for image→text and text→image retrieval, scored in bounded-memory blocks.

Definitions (docs/design.md §4):

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
* Ties, counted beside the rank: ``n_tied``, the non-relevant candidates within ``tol`` of ``s⁺``
  (``|s - s⁺| <= tol``; they are in the pessimistic rank), and ``n_relevant_tied``, the relevant
  ones scoring ``>= s⁺ - tol`` (at least 1: the best itself). Under a uniformly random order of the
  tied candidates the best relevant one is the first relevant of ``n_tied + n_relevant_tied`` tied
  candidates behind ``rank - 1 - n_tied`` strictly better ones, which gives the expected rank and the
  tie-aware R@K and MRR (McSherry & Najork, ECIR 2008) in :mod:`medret.metrics`.
* Scores are cosine similarities of L2-normalised float32 embeddings, computed in float64 (every
  product is exact) and compared with a tolerance ``tol`` (default 1e-6, about 16 float32 ulps),
  so embeddings that are equal up to rounding noise from different batch shapes still tie.
* Memory and device: scores are computed in tiles of at most ``block`` query×candidate entries
  (blocks of query rows against chunks of candidates), on the device given, never for the whole
  N×M matrix at once. The best relevant score of each query is found first, from its relevant
  (query, candidate) pairs alone, so the candidates can be split into chunks. The three work
  buffers (score tile, query rows and candidate rows, float64) hold at most ``block`` elements
  each (at least two embedding rows), are allocated once and reused, and every comparison and
  count but one happens in place (a boolean tile marks the strictly better candidates), so the
  working memory is at most 25 bytes × ``block`` (plus small per-query vectors) whatever N, M
  and the sizes of the relevant sets. Only the index lists of one query block's relevant pairs
  are not bounded by ``block``: at most (queries in a block) × M entries, when relevant sets cover
  most candidates. Ranks do not depend on ``block``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from medret.progress import progress

DEFAULT_BLOCK = 1 << 22  # score entries per tile: a 4M-entry float64 tile is 32 MB
DEFAULT_TOL = 1e-6


class QueryRanks(NamedTuple):
    """Per query: the pessimistic rank and the ties behind it (module doc)."""

    rank: np.ndarray
    n_tied: np.ndarray
    n_relevant_tied: np.ndarray


def scoring_device(gpus: int = 0) -> torch.device:
    """Where a job holding ``gpus`` GPUs scores ranks: CUDA when it holds one and CUDA is present, else the CPU.

    A job without a GPU never touches one (another job may hold it). Not Apple MPS, which has no float64.
    """
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def _relevant_pairs(relevant: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The relevance lists of a block of queries as flat (query, candidate) index arrays, by query."""
    counts = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=len(relevant))
    rows = np.repeat(np.arange(len(relevant), dtype=np.int64), counts)
    return rows, np.concatenate([np.asarray(r, dtype=np.int64) for r in relevant])


def _relevant_scores(
    q: torch.Tensor,
    candidates: np.ndarray,
    rel_rows: np.ndarray,
    rel_cols: np.ndarray,
    buf: torch.Tensor,
    at_once: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The scores of a query block's relevant (query, candidate) pairs, ``at_once`` pairs at a time in ``buf``:
    (query index within the block, score) chunks."""
    dim = q.shape[1]
    for lo in range(0, len(rel_rows), at_once):
        k = min(at_once, len(rel_rows) - lo)
        idx = torch.as_tensor(rel_rows[lo : lo + k], device=q.device)
        gq = torch.index_select(q, 0, idx, out=buf[: k * dim].view(k, dim))
        gc = buf[k * dim : 2 * k * dim].view(k, dim).copy_(torch.as_tensor(candidates[rel_cols[lo : lo + k]]))
        yield idx, gq.mul_(gc).sum(dim=1)


def query_ranks(
    queries: np.ndarray,
    candidates: np.ndarray,
    relevant: Sequence[np.ndarray],
    *,
    block: int = DEFAULT_BLOCK,
    tol: float = DEFAULT_TOL,
    device: str | torch.device = "cpu",
) -> QueryRanks:
    """Pessimistic 1-based rank of the best relevant candidate for each query, and its ties (module doc).

    ``queries`` (Nq, D) and ``candidates`` (Nc, D) are L2-normalised embeddings; ``relevant[i]``
    holds the candidate indices relevant to query i (at least one each). Scores are computed on
    ``device`` (one with float64 support: the CPU or CUDA) in tiles of at most ``block`` entries.
    """
    nq, nc = len(queries), len(candidates)
    if len(relevant) != nq:
        raise ValueError(f"{len(relevant)} relevance lists for {nq} queries")
    empty = [i for i, r in enumerate(relevant) if len(r) == 0]
    if empty:
        raise ValueError(f"query {empty[0]} has no relevant candidate")
    ranks, n_tied, n_rel_tied = (np.empty(nq, dtype=np.int64) for _ in range(3))
    if nq == 0:
        return QueryRanks(ranks, n_tied, n_rel_tied)
    device = torch.device(device)
    dim = queries.shape[1]
    block = max(1, int(block))
    # Tile: `rows` queries against `cols` candidates; scores, query rows and candidate rows each <= block.
    cols = min(nc, max(1, block // dim))
    rows = min(nq, max(1, block // max(cols, dim)))
    # Work buffers, allocated once and reused by every tile, so that memory stays what the block
    # allows (fresh allocations per tile would also cost page faults). The relevant pairs are
    # scored in the score buffer, before the tiles of their query block use it.
    f64 = {"dtype": torch.float64, "device": device}
    q_buf = torch.empty(rows * dim, **f64)
    cand_buf = torch.empty(cols * dim, **f64)
    score_buf = torch.empty(max(rows * cols, 2 * dim), **f64)
    pairs_at_once = len(score_buf) // (2 * dim)
    whole = cols == nc
    if whole:  # every candidate fits in one chunk: convert them once
        cand = cand_buf.view(nc, dim).copy_(torch.as_tensor(candidates))
    for r0 in range(0, nq, rows):
        r1 = min(r0 + rows, nq)
        q = q_buf[: (r1 - r0) * dim].view(r1 - r0, dim).copy_(torch.as_tensor(queries[r0:r1]))
        rel_rows, rel_cols = _relevant_pairs(relevant[r0:r1])
        # The best relevant score of each query, from its relevant pairs alone, so that the
        # candidates can then be scored chunk by chunk.
        best = torch.full((r1 - r0,), -torch.inf, **f64)
        for idx, rel_scores in _relevant_scores(q, candidates, rel_rows, rel_cols, score_buf, pairs_at_once):
            best.scatter_reduce_(0, idx, rel_scores, "amax")
        upper = (best + tol)[:, None]
        threshold = best.sub_(tol)[:, None]
        # Relevant candidates tied with the best: a second pass over the pairs (recomputed, bit for bit the
        # same scores) keeps the memory within the block.
        rel_tied = torch.zeros(r1 - r0, dtype=torch.int64, device=device)
        for idx, rel_scores in _relevant_scores(q, candidates, rel_rows, rel_cols, score_buf, pairs_at_once):
            rel_tied.scatter_add_(0, idx, (rel_scores >= threshold[idx, 0]).to(torch.int64))
        beaten = torch.zeros(r1 - r0, dtype=torch.int64, device=device)
        above = torch.zeros(r1 - r0, dtype=torch.int64, device=device)
        for c0 in range(0, nc, cols):
            c1 = min(c0 + cols, nc)
            if not whole:
                cand = cand_buf[: (c1 - c0) * dim].view(c1 - c0, dim).copy_(torch.as_tensor(candidates[c0:c1]))
            scores = torch.matmul(q, cand.T, out=score_buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0))
            inside = (rel_cols >= c0) & (rel_cols < c1)
            # Relevant items never count against their query.
            scores[
                torch.as_tensor(rel_rows[inside], device=device),
                torch.as_tensor(rel_cols[inside] - c0, device=device),
            ] = -torch.inf
            above += torch.count_nonzero(scores > upper, dim=1)  # strictly better, beyond the tolerance
            # In place, as 1.0/0.0 in the score buffer: counting a bool mask would copy it to integers.
            beaten += scores.ge_(threshold).sum(dim=1).to(torch.int64)
        ranks[r0:r1] = (1 + beaten).cpu().numpy()
        n_tied[r0:r1] = (beaten - above).cpu().numpy()
        n_rel_tied[r0:r1] = rel_tied.cpu().numpy()
    return QueryRanks(ranks, n_tied, n_rel_tied)


def text_query_ids(n_texts: int) -> list[str]:
    """Query ids of the text→image direction: one per unique report (``text:<text_id>``)."""
    return [f"text:{t}" for t in range(n_texts)]


def report_query_ids(text_ids: Sequence[int] | np.ndarray, n_texts: int) -> list[str]:
    """The report queries of some pairs: each evaluated report (text id below ``n_texts``) among their ``text_ids``
    once, in text id order."""
    texts = np.unique(np.asarray(text_ids, dtype=np.int64))
    return [f"text:{t}" for t in texts[texts < n_texts]]


def rank_table(
    image_emb: np.ndarray,
    levels: np.ndarray,
    repeats: np.ndarray,
    text_emb: np.ndarray,
    pair_ids: Sequence[str],
    relevance: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    *,
    block: int = DEFAULT_BLOCK,
    tol: float = DEFAULT_TOL,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Ranks in both directions at every (level, repeat) condition and relevance mode, scored on ``device``.

    ``image_emb`` is (C, N, D) for C conditions and the N manifest pairs; ``text_emb`` is (P, D)
    for the report corpus, whose first U texts are the evaluated ones. ``relevance`` maps each mode
    to (corpus text ids relevant to each pair's image, pair positions relevant to each of the U
    evaluated texts), as :meth:`medret.manifest.Manifest.relevance` returns: every corpus text is
    an image → report candidate, the U evaluated texts are the report → image queries.
    Returns the tidy table ``level, repeat, relevance, direction, query_id, rank, n_tied, n_relevant_tied,
    n_relevant, n_candidates``; image queries are named by their pair id, text queries by :func:`text_query_ids`.
    """
    n, p = len(pair_ids), len(text_emb)
    frames = []
    for c in progress(range(len(levels)), len(levels), "rank", unit="condition"):
        for mode, (i2t_rel, t2i_rel) in relevance.items():
            u = len(t2i_rel)
            i2t = query_ranks(image_emb[c], text_emb, i2t_rel, block=block, tol=tol, device=device)
            t2i = query_ranks(text_emb[:u], image_emb[c], t2i_rel, block=block, tol=tol, device=device)
            for direction, queries, ranks, rel, ncand in (
                ("i2t", list(pair_ids), i2t, i2t_rel, p),
                ("t2i", text_query_ids(u), t2i, t2i_rel, n),
            ):
                frames.append(
                    pd.DataFrame(
                        {
                            "level": float(levels[c]),
                            "repeat": int(repeats[c]),
                            "relevance": mode,
                            "direction": direction,
                            "query_id": queries,
                            "rank": ranks.rank,
                            "n_tied": ranks.n_tied,
                            "n_relevant_tied": ranks.n_relevant_tied,
                            "n_relevant": np.fromiter((len(r) for r in rel), dtype=np.int64, count=len(rel)),
                            "n_candidates": ncand,
                        }
                    )
                )
    return pd.concat(frames, ignore_index=True)


def worst_over_repeats(ranks: pd.DataFrame) -> pd.DataFrame:
    """Each query's worst row over the repeats of its level (highest pessimistic rank; the first repeat on a tie),
    as repeat 0: what ``placement: worst`` reports (:mod:`medret.corruptions`)."""
    keys = ["level", "relevance", "direction", "query_id"]
    order = ranks.sort_values([*keys, "rank", "repeat"], ascending=[True] * len(keys) + [False, True], kind="stable")
    worst = order.drop_duplicates(keys, keep="first").assign(repeat=0)
    return worst.sort_index().reset_index(drop=True)
