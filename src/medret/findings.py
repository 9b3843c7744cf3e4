"""Results per finding: which findings a model loses first.

For a dataset with labels (``label_*`` columns), every metric of :func:`medret.metrics.evaluate` on the queries
that carry each finding, with the same cluster bootstrap (its own resamples of those queries) and the same paired
comparisons. An image query (image → report) carries a finding when its pair's label is present: 1, or -1 under
``uncertain_labels: positive`` (the rule of label relevance, :func:`medret.manifest.label_groups`); a report query
(report → image) when some evaluated pair with that report carries it. A dataset with a "no finding" column
(CheXpert's ``No Finding``, the demo's ``no_finding``) has it as a finding like the others; otherwise ``no_finding``
is the labelled queries with no finding present. Queries whose labels are all missing (a study the labeller did
not cover) belong to no finding. A finding with fewer than ``min_queries`` queries in a direction is left out of
that direction (:func:`left_out` says which); its intervals would say little.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medret.errors import MedretError
from medret.manifest import label_presence
from medret.metrics import METRICS_COLUMNS

NO_FINDING = "no_finding"
#: The metrics table's columns with the finding after the dataset (no popularity: a baseline of the whole set).
FINDING_COLUMNS = ("dataset", "finding", *(c for c in METRICS_COLUMNS[1:] if c != "popularity"))


def finding_queries(
    table: pd.DataFrame, n_texts: int, *, uncertain: str = "positive"
) -> dict[str, dict[str, list[str]]]:
    """``finding -> {"i2t": pair ids, "t2i": report query ids}`` of the evaluated pairs ``table`` (the manifest's
    table: ``pair_id``, ``text_id``, ``label_*``), whose first ``n_texts`` reports are the report queries.

    Empty when the table has no label columns.
    """
    from medret.retrieval import report_query_ids

    names, present, labelled = label_presence(table, uncertain=uncertain, key="uncertain_labels")
    if not names:
        return {}
    if NO_FINDING not in names:
        present = np.column_stack([present, labelled & ~present.any(axis=1)])
        names.append(NO_FINDING)
    text_ids = table["text_id"].to_numpy(np.int64)
    out = {}
    for j, name in enumerate(names):
        carriers = present[:, j] & labelled
        out[name] = {
            "i2t": table["pair_id"].to_numpy()[carriers].tolist(),
            "t2i": report_query_ids(text_ids[carriers], n_texts),
        }
    return out


def left_out(queries: Mapping[str, Mapping[str, Sequence[str]]], min_queries: int) -> list[str]:
    """One sentence per (finding, direction) with too few queries to be reported."""
    names = {"i2t": "image queries", "t2i": "report queries"}
    return [
        f"finding {finding}: {len(ids)} {names[direction]} (fewer than {min_queries}); left out of the per-finding "
        f"results of that direction"
        for finding, by_direction in queries.items()
        for direction, ids in by_direction.items()
        if len(ids) < min_queries
    ]


def finding_metrics(
    ranks: pd.DataFrame,
    queries: Mapping[str, Mapping[str, Sequence[str]]],
    clusters: Mapping[str, str | None] | None,
    *,
    dataset: str,
    min_queries: int,
    n_boot: int,
    seed: int,
    ci: float,
) -> pd.DataFrame:
    """The metrics table of each finding's queries (columns :data:`FINDING_COLUMNS`), findings in ``queries``
    order; (finding, direction) with fewer than ``min_queries`` queries are left out."""
    from medret.metrics import evaluate

    frames = []
    for finding, by_direction in queries.items():
        keep = [ids for ids in by_direction.values() if len(ids) >= min_queries]
        rows = ranks[ranks["query_id"].isin([q for ids in keep for q in ids])]
        if rows.empty:
            continue
        metrics = evaluate(rows, clusters, dataset=dataset, n_boot=n_boot, seed=seed, ci=ci).metrics
        frames.append(metrics.assign(finding=finding))
    if not frames:
        return pd.DataFrame(columns=list(FINDING_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(FINDING_COLUMNS)]


def report_level(levels: Sequence[float], chosen: float | None = None) -> float:
    """The level the per-finding summary and plot set against the clean one: ``chosen`` (the corruption's entry
    in ``evaluation.findings.levels``) when given, else the median of the levels above 0 (the lower middle one for
    an even count), so neither a barely visible nor a total corruption."""
    if chosen is not None:
        return float(chosen)
    above = sorted(float(x) for x in levels if float(x) > 0)
    if not above:
        raise MedretError("a corruption needs a level above 0 to compare findings against the clean images")
    return above[(len(above) - 1) // 2]


def finding_contrast(
    table: pd.DataFrame, corruption: str, level: float, *, metric: str, direction: str, relevance: str
) -> pd.DataFrame:
    """Per finding and model: the clean value and the value at ``level`` with their intervals, and the change.

    Columns ``finding, model, n_queries, clean, clean_low, clean_high, corrupted, corrupted_low, corrupted_high,
    change``; findings in the table's order."""
    sub = table[
        (table["corruption"] == corruption)
        & (table["metric"] == metric)
        & (table["direction"] == direction)
        & (table["relevance"] == relevance)
    ]
    keys = ["finding", "model"]
    clean = sub[np.isclose(sub["level"], 0.0)].set_index(keys)
    corrupted = sub[np.isclose(sub["level"], level)].set_index(keys)
    both = clean.index.intersection(corrupted.index)
    order = list(dict.fromkeys(sub["finding"]))
    out = pd.DataFrame(
        {
            "n_queries": clean.loc[both, "n_queries"],
            "clean": clean.loc[both, "value"],
            "clean_low": clean.loc[both, "ci_low"],
            "clean_high": clean.loc[both, "ci_high"],
            "corrupted": corrupted.loc[both, "value"],
            "corrupted_low": corrupted.loc[both, "ci_low"],
            "corrupted_high": corrupted.loc[both, "ci_high"],
        }
    ).reset_index()
    out["change"] = out["corrupted"] - out["clean"]
    out["finding"] = pd.Categorical(out["finding"], categories=order, ordered=True)
    return out.sort_values(["finding", "model"]).assign(finding=lambda d: d["finding"].astype(str))


def shown_relevance(table: pd.DataFrame) -> str:
    """The relevance mode the summary and the plot show: ``exact`` (the study's) when present."""
    modes = list(dict.fromkeys(table["relevance"])) if not table.empty else []
    return "exact" if "exact" in modes or not modes else str(modes[0])


def describe(finding: str) -> str:
    """``pleural_effusion`` -> ``pleural effusion``."""
    return finding.replace("_", " ")
