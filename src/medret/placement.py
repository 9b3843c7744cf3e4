"""Where the occluder falls: occluding the region of interest against the same area elsewhere.

Two occlusion entries of a config that differ only in ``placement: inside`` and ``placement: outside`` (same
mode, fill and levels) form a pair. On the queries whose image has a region of interest (image → report: the
pairs with a region; report → image: the reports of such pairs), each model's metrics under the two
placements come with their intervals and the paired difference inside − outside, its interval and bootstrap
p-value: the two placements are evaluated as two "models" of one :func:`medret.metrics.evaluate` call, so they
share every bootstrap resample (the difference is paired by query and by resample). A difference well below 0
means the model fails because the finding is hidden; near 0, because any black square of that size is out of
distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

PLACEMENT_COLUMNS = (
    "dataset",
    "inside",
    "outside",
    "model",
    "level",
    "relevance",
    "direction",
    "metric",
    "inside_value",
    "inside_low",
    "inside_high",
    "outside_value",
    "outside_low",
    "outside_high",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "n_queries",
)
_SAME = ("kind", "mode", "fill", "levels")


def placement_pairs(corruptions: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(inside, outside) corruption names that differ only in their placement (module doc), in config order."""
    by_placement: dict[str, list[str]] = {"inside": [], "outside": []}
    for name, entry in corruptions.items():
        if entry.get("kind") == "occlusion" and entry.get("placement") in by_placement:
            by_placement[str(entry["placement"])].append(name)

    def same(a: str, b: str) -> bool:
        return all(corruptions[a].get(k) == corruptions[b].get(k) for k in _SAME)

    return [(i, o) for i in by_placement["inside"] for o in by_placement["outside"] if same(i, o)]


def region_queries(table: pd.DataFrame, n_texts: int) -> list[str]:
    """Query ids of the manifest ``table`` whose image has a region: its pair ids, and the report queries (among the
    first ``n_texts`` reports) of those pairs."""
    from medret.datasets import REGION_COLUMNS
    from medret.retrieval import report_query_ids

    if not all(c in table.columns for c in REGION_COLUMNS):
        return []
    has = ~np.isnan(table[list(REGION_COLUMNS)].to_numpy(float)).any(axis=1)
    return [*table["pair_id"][has], *report_query_ids(table["text_id"].to_numpy(np.int64)[has], n_texts)]


def placement_contrast(
    ranks: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    queries: Sequence[str],
    clusters: Mapping[str, str | None] | None,
    *,
    dataset: str,
    n_boot: int,
    seed: int,
    ci: float,
) -> pd.DataFrame:
    """Inside against outside per model, level, relevance, direction and metric (columns
    :data:`PLACEMENT_COLUMNS`) on the ``queries`` with a region; levels above 0 only."""
    from medret.metrics import evaluate

    frames = []
    keep = ranks["query_id"].isin(set(queries))
    for inside, outside in pairs:
        both = ranks[keep & ranks["corruption"].isin([inside, outside])]
        if both.empty:
            continue
        side = np.where(both["corruption"] == inside, "inside", "outside")
        relabelled = both.assign(model=both["model"] + "\t" + side, corruption=inside)
        result = evaluate(relabelled, clusters, dataset=dataset, n_boot=n_boot, seed=seed, ci=ci)
        metrics = result.metrics.assign(
            base=result.metrics["model"].str.split("\t").str[0], side=result.metrics["model"].str.split("\t").str[1]
        )
        keys = ["base", "level", "relevance", "direction", "metric"]
        values = metrics.pivot_table(index=keys, columns="side", values=["value", "ci_low", "ci_high"])
        comparisons = result.comparisons[result.comparisons["quantity"] == "value"]
        a = comparisons["model_a"].str.split("\t")
        b = comparisons["model_b"].str.split("\t")
        same = (a.str[0] == b.str[0]) & (a.str[1] == "inside") & (b.str[1] == "outside")
        diff = comparisons[same].assign(base=a[same].str[0]).set_index(keys)
        n_queries = metrics[metrics["side"] == "inside"].set_index(keys)["n_queries"]
        out = pd.DataFrame(
            {
                "inside_value": values[("value", "inside")],
                "inside_low": values[("ci_low", "inside")],
                "inside_high": values[("ci_high", "inside")],
                "outside_value": values[("value", "outside")],
                "outside_low": values[("ci_low", "outside")],
                "outside_high": values[("ci_high", "outside")],
            }
        )
        out = out.join(diff[["difference", "ci_low", "ci_high", "p_value"]]).join(n_queries).reset_index()
        out = out[out["level"] > 0].rename(columns={"base": "model"})
        frames.append(out.assign(dataset=dataset, inside=inside, outside=outside))
    if not frames:
        return pd.DataFrame(columns=list(PLACEMENT_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(PLACEMENT_COLUMNS)]
