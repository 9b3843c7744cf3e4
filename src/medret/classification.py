"""Zero-shot classification on the retrieval caches: each finding from a positive and a negative prompt.

For a dataset with labels, every finding gets two prompts, by default CheXzero's (Tiu et al. 2022) ``{finding}``
against ``no {finding}`` (``evaluation.classification``: ``positive`` and ``negative`` templates, and
``prompts: {finding: [positive, negative]}`` to set a finding's pair), embedded once per model by its text tower.
An image's score for a finding is computed from its cached embedding at every level of every corruption, so the
retrieval sweep's image embeddings are reused and only the prompts are new. Rules (``rule``):

* ``softmax`` (default): CheXzero's, ``exp(s+) / (exp(s+) + exp(s-))`` with ``s±`` the cosine similarities to
  the two prompts (no temperature, as CheXzero computes it). Its ranking is that of ``s+ - s-``, so the AUROC is
  the prompt pair's contrast.
* ``positive``: ``s+`` alone, the single-prompt rule; its AUROC shows what the negative prompt adds (the
  positive prompt's similarity also carries how "report-like" an image is overall, which the contrast cancels).

Labels follow the dataset's ``uncertain_labels`` (-1 is positive under ``positive``, negative under
``negative``); a missing label counts as negative (the labeller found no mention), as label relevance does, and
images with no label at all (studies the labeller did not cover) are left out. A finding is left out, with a
note, when its positives or negatives in the evaluated split are fewer than ``min_positives``; the dataset's own
"no finding" label is left out unless ``prompts`` gives it a pair (its negation reads badly).

AUROC is the Mann-Whitney statistic with ties counted one half. Intervals: a percentile cluster bootstrap by
patient (:func:`medret.metrics.bootstrap_counts`, the same resamples for every model, corruption and level, so
differences are paired); a resampled AUROC weights each image by its patient's count. With R repeats of a random
corruption, a level's AUROC is the mean of its repeats' AUROCs (replicates likewise; repeats are not resampled).
The macro AUROC is the mean over the findings kept. Comparisons: every two models' paired difference per
finding and macro, with its interval and two-sided bootstrap p-value (:func:`medret.metrics.paired_difference`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medret.errors import MedretError
from medret.findings import NO_FINDING, describe
from medret.manifest import label_presence
from medret.metrics import bootstrap_counts, paired_difference, percentile_interval

MACRO = "macro"
RULES = ("softmax", "positive")
CLASSIFICATION_COLUMNS = (
    "dataset",
    "model",
    "corruption",
    "level",
    "finding",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_positive",
    "n_negative",
)
COMPARISON_COLUMNS = (
    "dataset",
    "corruption",
    "level",
    "finding",
    "metric",
    "model_a",
    "model_b",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "n_boot",
)


def prompt_pairs(findings: Sequence[str], options: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """``finding -> (positive, negative)`` prompts of the label columns' ``findings`` (module doc)."""
    explicit = {str(k): tuple(v) for k, v in options.get("prompts", {}).items()}
    out = {}
    for finding in findings:
        if finding in explicit:
            out[finding] = explicit[finding]
        elif finding != NO_FINDING:
            text = describe(finding)
            out[finding] = (options["positive"].format(finding=text), options["negative"].format(finding=text))
    return out


def finding_labels(table: pd.DataFrame, uncertain: str) -> tuple[pd.DataFrame, np.ndarray]:
    """(0/1 labels of the manifest ``table``'s pairs per finding, mask of the labelled pairs) under ``uncertain``."""
    names, present, labelled = label_presence(table, uncertain=uncertain, key="uncertain_labels")
    if not names:
        return pd.DataFrame(index=table.index), labelled
    return pd.DataFrame(present.astype(np.int8), columns=names), labelled


def scores(images: np.ndarray, prompts: np.ndarray, rule: str) -> np.ndarray:
    """Per image and finding the score of ``rule``: ``images`` (..., N, D), ``prompts`` (F, 2, D) -> (..., N, F)."""
    if rule not in RULES:
        raise MedretError(f"config key evaluation.classification.rule: {rule!r}; use {' or '.join(RULES)}")
    img = images / np.linalg.norm(images, axis=-1, keepdims=True)
    txt = prompts / np.linalg.norm(prompts, axis=-1, keepdims=True)
    sim = np.einsum("...nd,fkd->...nfk", img.astype(np.float64), txt.astype(np.float64))
    if rule == "positive":
        return sim[..., 0]
    return 1.0 / (1.0 + np.exp(sim[..., 1] - sim[..., 0]))  # exp(s+) / (exp(s+) + exp(s-))


def weighted_auroc(score: np.ndarray, label: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``score`` for binary ``label`` under each row of ``weights`` (B, N): the weighted Mann-Whitney
    statistic, ties one half; NaN where a row weighs no positive or no negative."""
    order = np.argsort(score, kind="stable")
    s, y, w = score[order], label[order].astype(bool), weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    pos = np.add.reduceat(np.where(y, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(y, 0.0, w), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each group
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)


def classification_tables(
    image_scores: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    labels: pd.DataFrame,
    clusters: Sequence[str],
    *,
    dataset: str,
    n_boot: int,
    seed: int,
    ci: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """AUROC per finding and macro with intervals (:data:`CLASSIFICATION_COLUMNS`), and every two models' paired
    differences (:data:`COMPARISON_COLUMNS`).

    ``image_scores[(model, corruption)]`` is (levels (C,), scores (C, N, F)) for the N labelled
    pairs in ``labels``' row order, F = ``labels``' columns; ``clusters`` the patient of each pair.
    """
    findings = list(labels.columns)
    y = labels.to_numpy(bool)
    cluster, counts = bootstrap_counts(clusters, n_boot, seed)
    weights = np.vstack([np.ones((1, len(cluster))), counts[:, cluster]])  # row 0: the full sample
    n_pos, n_neg = y.sum(axis=0), (~y).sum(axis=0)
    samples: dict[tuple[str, str, float], np.ndarray] = {}  # (model, corruption, level) -> (1 + B, F + 1)
    for (model, corruption), (levels, values) in image_scores.items():
        for level in np.unique(levels):
            rows = np.flatnonzero(levels == level)
            per_repeat = np.stack(
                [
                    np.column_stack([weighted_auroc(values[r][:, f], y[:, f], weights) for f in range(len(findings))])
                    for r in rows
                ]
            )  # (repeats, 1 + B, F)
            auc = per_repeat.mean(axis=0)
            samples[(model, corruption, float(level))] = np.column_stack([auc, auc.mean(axis=1)])
    names = [*findings, MACRO]
    rows_out = []
    for (model, corruption, level), sample in samples.items():
        low, high = percentile_interval(sample[1:], ci)
        for j, finding in enumerate(names):
            rows_out.append(
                (dataset, model, corruption, level, finding, "AUROC", sample[0, j], low[j], high[j])
                + ((int(n_pos[j]), int(n_neg[j])) if j < len(findings) else (int(n_pos.sum()), int(n_neg.sum())))
            )
    table = pd.DataFrame(rows_out, columns=list(CLASSIFICATION_COLUMNS))
    comparisons = []
    models = sorted({m for m, _, _ in samples})
    for corruption, level in sorted({(c, lv) for _, c, lv in samples}):
        for i, a in enumerate(models):
            for b in models[i + 1 :]:
                if (a, corruption, level) not in samples or (b, corruption, level) not in samples:
                    continue
                diff, low, high, p = paired_difference(
                    samples[(a, corruption, level)], samples[(b, corruption, level)], ci
                )
                comparisons += [
                    (dataset, corruption, level, name, "AUROC", a, b, diff[j], low[j], high[j], p[j], n_boot)
                    for j, name in enumerate(names)
                ]
    return table, pd.DataFrame(comparisons, columns=list(COMPARISON_COLUMNS))


def kept_findings(labels: pd.DataFrame, pairs: Mapping[str, tuple[str, str]], min_positives: int) -> list[str]:
    """The findings with prompts and at least ``min_positives`` positives and negatives (module doc)."""
    y = labels.to_numpy(bool)
    return [
        f
        for j, f in enumerate(labels.columns)
        if f in pairs and y[:, j].sum() >= min_positives and (~y[:, j]).sum() >= min_positives
    ]


def left_out(labels: pd.DataFrame, pairs: Mapping[str, tuple[str, str]], min_positives: int) -> list[str]:
    """One sentence per finding not classified, and why."""
    y = labels.to_numpy(bool)
    notes = []
    for j, finding in enumerate(labels.columns):
        if finding not in pairs:
            notes.append(f"finding {finding}: no prompt pair (set evaluation.classification.prompts.{finding})")
        elif min(y[:, j].sum(), (~y[:, j]).sum()) < min_positives:
            notes.append(
                f"finding {finding}: {int(y[:, j].sum())} positive and {int((~y[:, j]).sum())} negative images "
                f"(fewer than {min_positives}); not classified"
            )
    return notes
