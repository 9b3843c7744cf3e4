"""summary.md: the metrics tables rendered as Markdown, checked line by line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.ranks import block, table

from medret.io import write_table
from medret.metrics import evaluate, popularity_baseline
from medret.summary import summary_markdown, write_summary

EVALUATION = {"bootstrap": 200, "ci": 0.95}
ROOT = Path(__file__).resolve().parents[2]


def _tables():
    # Two models, two levels, one direction; model b loses its hits at level 0.5.
    hits = np.arange(20) < 10  # 10 of 20 queries ranked 1, the rest 30
    blocks = [
        block(np.where(hits, 1, 30), model=m, level=lvl, n_candidates=40)
        for m in ("a", "b")
        for lvl in (0.0, 0.5)
        if not (m == "b" and lvl == 0.5)
    ]
    blocks.append(block(np.full(20, 30), model="b", level=0.5, n_candidates=40))
    # 40 reports of distinct frequencies; image q's report is the (q+1)-th most frequent
    popularity = popularity_baseline(40 - np.arange(40), {"exact": ([np.array([q]) for q in range(20)], [])})
    return evaluate(table(*blocks), None, dataset="toy", n_boot=200, popularity=popularity)


def test_summary_tables_hand_checked(tmp_path):
    metrics, robustness, comparisons = _tables()
    text = summary_markdown("toy", metrics, robustness, comparisons, {"occlusion": {"kind": "occlusion"}}, EVALUATION)
    lines = text.splitlines()
    assert lines[0] == "# medret results: toy"
    assert "### image → report, exact report (20 queries)" in lines
    header = lines.index("| model | level | R@1 | R@5 | R@10 | MRR |")
    # Model a at level 0: R@1 = 50 %, MRR = (10 + 10/30)/20 = 0.517; b at 0.5 misses everything.
    a0 = lines[header + 2]
    assert a0.startswith("| a | 0 | 50.0 [") and "| 0.517 [" in a0
    assert lines[header + 5] == "| b | 0.5 | 0.0 [0.0, 0.0] | 0.0 [0.0, 0.0] | 0.0 [0.0, 0.0] | 0.033 [0.033, 0.033] |"
    # Chance R@1 = 1/40; the popularity baseline ranks the 20 queries 1..20: R@1 5 %, R@5 25 %, R@10 50 %.
    assert lines[header + 6] == "| *chance* |  | 2.5 | 12.5 | 25.0 | 0.107 |"
    assert lines[header + 7].startswith("| *popularity* |  | 5.0 | 25.0 | 50.0 | 0.180 |")
    # nAUC of R@5: a keeps everything (1.000), b keeps half of its clean area (0.500).
    nauc = next(line for line in lines if line.startswith("nAUC of R@5"))
    assert nauc.startswith("nAUC of R@5: a 1.000 [") and "; b 0.500 [" in nauc
    # Above chance (R@5 chance 12.5 %): a keeps all; b (25 − 12.5) / (50 − 12.5) = 1/3.
    above = next(line for line in lines if line.startswith("nAUC of R@5 above chance"))
    assert above.startswith("nAUC of R@5 above chance: a 1.000 [") and "; b 0.333 [" in above
    pair = next(line for line in lines if line.startswith("| a | b |"))
    assert pair.startswith("| a | b | 0.500 | [")
    # Warnings: none here; the written file lists the manifest's (embedding files that do not exist are passed over).
    warnings = lines.index("## Warnings")
    assert lines[warnings + 2] == "None." and lines[warnings + 3] == ""
    note = "medret warning: dataset 'toy': 2 pairs of split 'test' left out for a report that is empty"
    manifest = tmp_path / "manifest.parquet"
    write_table(pd.DataFrame({"pair_id": ["p1"]}), manifest, digest="d", notes=json.dumps([note, note]))
    write_summary(
        "toy",
        *(_csv(tmp_path, name, frame) for name, frame in (("m", metrics), ("r", robustness), ("c", comparisons))),
        tmp_path / "summary.md",
        {"occlusion": {"kind": "occlusion"}},
        EVALUATION,
        manifest_path=manifest,
        embedding_paths=[tmp_path / "absent.h5"],
    )
    expected = text.replace(
        "\nNone.\n", "\n- dataset 'toy': 2 pairs of split 'test' left out for a report that is empty\n", 1
    )
    assert (tmp_path / "summary.md").read_text(encoding="utf-8") == expected


def _csv(tmp_path, name: str, frame: pd.DataFrame):
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False, float_format="%.6g")
    return path


#: Each report caption and the table it describes.
CAPTIONS = {"metrics.rst": "metrics.csv", "robustness.rst": "robustness.csv", "comparisons.rst": "comparisons.csv"}


@pytest.mark.parametrize("caption", sorted(CAPTIONS))
def test_every_name_a_caption_gives_is_a_column_or_value_of_its_table(caption):
    """A caption's ``name`` is a column of the table, or a value in one of its columns (``quantity = nauc``)."""
    tables = dict(zip(("metrics.csv", "robustness.csv", "comparisons.csv"), _tables(), strict=True))
    table = tables[CAPTIONS[caption]]
    text = (ROOT / "workflow" / "report" / caption).read_text(encoding="utf-8")
    names = re.findall(r"``([^`]+)``", text)
    assert names, caption
    values = {str(v) for column in table.columns for v in table[column].dropna().unique()}
    for name in names:
        for word in re.findall(r"[A-Za-z_@0-9]+", name):
            assert word in table.columns or word in values, f"{caption}: ``{name}``: {word!r} is in no column"


def test_ties_section_sets_tie_aware_values_beside_pessimistic_ones():
    metrics, robustness, comparisons = _tables()
    text = summary_markdown("toy", metrics, robustness, comparisons, {"occlusion": {"kind": "occlusion"}}, EVALUATION)
    assert "## Ties" in text and "The tie-aware values equal the pessimistic ones everywhere, as printed." in text
    # Model c ranks every query 30th behind 29 tied candidates (nothing strictly better): a constant scorer.
    tied = block(np.full(20, 30), model="c", level=0.0, n_candidates=40, n_tied=29)
    ranks = table(tied, block(np.full(20, 1), model="d", level=0.0, n_candidates=40))
    metrics, robustness, comparisons = evaluate(ranks, None, dataset="toy", n_boot=50)
    text = summary_markdown("toy", metrics, robustness, comparisons, {"occlusion": {"kind": "occlusion"}}, EVALUATION)
    rows = [line for line in text.split("## Ties")[1].splitlines() if line.startswith("| c |")]
    assert len(rows) == 1, text
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    # tie-aware R@1 = 1/30 = 3.3%, R@5 = 5/30, R@10 = 10/30, MRR = H_30 / 30 = 0.133 (pessimistic 1/30); point intervals
    assert cells[:4] == ["c", "occlusion", "0", "image → report, exact report"]
    assert cells[4:] == [
        "0.0 → 3.3 [3.3, 3.3]",
        "0.0 → 16.7 [16.7, 16.7]",
        "0.0 → 33.3 [33.3, 33.3]",
        "0.033 → 0.133 [0.133, 0.133]",
    ]
    assert "| d |" not in text.split("## Ties")[1]


def test_classification_section_hand_checked():
    from medret.classification import classification_tables

    labels = pd.DataFrame({"effusion": [1, 1, 0, 0], "nodule": [1, 0, 1, 0]})
    y = labels.to_numpy(float)
    levels = np.array([0.0, 0.5])
    scores = np.stack([y, 1 - y])  # perfect when clean, inverted at level 0.5
    table, _ = classification_tables(
        {("m", "occlusion"): (levels, scores)},
        labels,
        ["p0", "p1", "p2", "p3"],
        dataset="toy",
        n_boot=50,
        seed=0,
        ci=0.95,
    )
    metrics, robustness, comparisons = _tables()
    corruptions = {"occlusion": {"kind": "occlusion", "levels": [0.0, 0.5]}}
    text = summary_markdown("toy", metrics, robustness, comparisons, corruptions, EVALUATION, classification=table)
    section = text.split("## Zero-shot classification")[1]
    assert "| effusion | 2/2 | 1.000 [" in section and "| *macro* | 2 findings | 1.000 [" in section
    assert "### occlusion: macro AUROC" in section and "| m | 1.000 [1.000, 1.000] | 0.000 [0.000, 0.000] |" in section
    empty = summary_markdown("toy", metrics, robustness, comparisons, corruptions, EVALUATION, classification=table[:0])
    assert "No finding to classify" in empty
