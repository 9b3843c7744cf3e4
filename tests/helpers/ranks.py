"""Ranks tables built by hand: one block of rows per condition, concatenated (metrics and summary tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def block(
    ranks,
    *,
    model="m",
    corruption="occlusion",
    level=0.0,
    repeat=0,
    direction="i2t",
    n_candidates=100,
    n_relevant=1,
    query_ids=None,
    relevance="exact",
    n_tied=0,
    n_relevant_tied=1,
) -> pd.DataFrame:
    """Rows of a ranks table for one (model, corruption, level, repeat, relevance, direction)."""
    ranks = np.asarray(ranks)
    ids = [f"q{i:04d}" for i in range(len(ranks))] if query_ids is None else list(query_ids)
    return pd.DataFrame(
        {
            "model": model,
            "corruption": corruption,
            "level": level,
            "repeat": repeat,
            "relevance": relevance,
            "direction": direction,
            "query_id": ids,
            "rank": ranks.astype(np.int64),
            "n_tied": n_tied,
            "n_relevant_tied": n_relevant_tied,
            "n_relevant": n_relevant,
            "n_candidates": n_candidates,
        }
    )


def table(*blocks: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(blocks, ignore_index=True)
