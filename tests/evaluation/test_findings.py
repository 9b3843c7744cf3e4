"""Results per finding: which queries carry a finding, their metrics, the summary section and the figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers.ranks import block, table

from medret.errors import MedretError
from medret.findings import (
    FINDING_COLUMNS,
    finding_contrast,
    finding_metrics,
    finding_queries,
    left_out,
    report_level,
)

NAN = np.nan


def _manifest() -> pd.DataFrame:
    # Five pairs, four reports (text 0 twice); p4 has no labels at all (a study the labeller missed).
    return pd.DataFrame(
        {
            "pair_id": ["p0", "p1", "p2", "p3", "p4"],
            "text_id": [0, 1, 0, 2, 3],
            "label_effusion": [1.0, 0.0, -1.0, NAN, NAN],
            "label_nodule": [0.0, 1.0, NAN, 0.0, NAN],
        }
    )


def test_finding_queries_follow_the_uncertain_policy_and_add_no_finding():
    q = finding_queries(_manifest(), n_texts=3, uncertain="positive")
    assert list(q) == ["effusion", "nodule", "no_finding"]
    assert q["effusion"] == {"i2t": ["p0", "p2"], "t2i": ["text:0"]}  # p2's -1 counts as present
    assert q["nodule"] == {"i2t": ["p1"], "t2i": ["text:1"]}
    assert q["no_finding"] == {"i2t": ["p3"], "t2i": ["text:2"]}  # labelled, nothing present; p4 unknown
    q = finding_queries(_manifest(), n_texts=3, uncertain="negative")
    assert q["effusion"]["i2t"] == ["p0"] and q["no_finding"]["i2t"] == ["p2", "p3"]
    # report 0 carries effusion through p0 either way (any pair with the report)
    assert q["effusion"]["t2i"] == ["text:0"]
    # text 3 (p4's) is not an evaluated report query when n_texts = 3, and p4 carries nothing
    assert all("p4" not in v["i2t"] for v in q.values())
    assert finding_queries(_manifest().drop(columns=["label_effusion", "label_nodule"]), 3) == {}
    with pytest.raises(MedretError, match="uncertain labels 'maybe'"):
        finding_queries(_manifest(), 3, uncertain="maybe")


def test_a_no_finding_column_is_a_finding_like_the_others():
    m = _manifest().assign(label_no_finding=[0.0, 0.0, 0.0, 1.0, NAN])
    q = finding_queries(m, n_texts=3)
    assert list(q) == ["effusion", "no_finding", "nodule"] and q["no_finding"]["i2t"] == ["p3"]


def test_per_finding_metrics_are_those_of_the_findings_queries():
    # 40 image queries: the first 20 carry "a" and rank 1, the other 20 carry "b" and rank 50.
    ids = [f"q{i:02d}" for i in range(40)]
    ranks = table(
        block(np.r_[np.ones(20), np.full(20, 50)], query_ids=ids, n_candidates=100, level=0.0),
        block(np.r_[np.full(20, 3), np.full(20, 50)], query_ids=ids, n_candidates=100, level=0.5),
    )
    queries = {"a": {"i2t": ids[:20], "t2i": []}, "b": {"i2t": ids[20:], "t2i": []}, "c": {"i2t": ids[:4], "t2i": []}}
    out = finding_metrics(ranks, queries, None, dataset="d", min_queries=10, n_boot=50, seed=0, ci=0.95)
    assert list(out.columns) == list(FINDING_COLUMNS)
    assert list(dict.fromkeys(out["finding"])) == ["a", "b"]  # c: 4 queries < 10, left out
    r1 = out[out["metric"] == "R@1"].set_index(["finding", "level"])["value"]
    assert r1[("a", 0.0)] == 100.0 and r1[("a", 0.5)] == 0.0 and r1[("b", 0.0)] == 0.0
    r5 = out[out["metric"] == "R@5"].set_index(["finding", "level"])
    assert r5.loc[("a", 0.5), "value"] == 100.0 and (r5["n_queries"] == 20).all()
    tail = "(fewer than 10); left out of the per-finding results of that direction"
    assert left_out(queries, 10) == [
        f"finding a: 0 report queries {tail}",
        f"finding b: 0 report queries {tail}",
        f"finding c: 4 image queries {tail}",
        f"finding c: 0 report queries {tail}",
    ]
    contrast = finding_contrast(out, "occlusion", 0.5, metric="R@1", direction="i2t", relevance="exact")
    assert contrast[["finding", "clean", "corrupted", "change"]].values.tolist() == [
        ["a", 100.0, 0.0, -100.0],
        ["b", 0.0, 0.0, 0.0],
    ]


def test_report_level_is_the_median_level_above_zero():
    assert report_level([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]) == 0.5
    assert report_level([0, 1, 2, 3, 4, 5]) == 3.0
    assert report_level([0.0, 0.5, 1.0]) == 0.5
    assert report_level([0.0, 0.1, 0.2, 0.3], chosen=0.1) == 0.1  # evaluation.findings.levels
    with pytest.raises(MedretError, match="a level above 0"):
        report_level([0.0])
