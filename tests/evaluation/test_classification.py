"""Zero-shot classification: prompts, labels, scores, AUROC with ties and weights, the tables."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from medret.classification import (
    MACRO,
    classification_tables,
    finding_labels,
    kept_findings,
    left_out,
    prompt_pairs,
    scores,
    weighted_auroc,
)
from medret.errors import MedretError

OPTIONS = {"positive": "{finding}", "negative": "no {finding}", "prompts": {}, "rule": "softmax", "min_positives": 2}


def _brute_auroc(score, label):
    pos = [s for s, y in zip(score, label, strict=True) if y]
    neg = [s for s, y in zip(score, label, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_hand_values_ties_and_weights():
    one = np.ones((1, 4))
    assert weighted_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]), one)[0] == 0.75
    assert weighted_auroc(np.array([0.5, 0.5]), np.array([1, 0]), np.ones((1, 2)))[0] == 0.5  # a tie is one half
    assert np.isnan(weighted_auroc(np.array([0.1, 0.2]), np.array([0, 0]), np.ones((1, 2)))[0])
    rng = np.random.default_rng(0)
    for _ in range(20):  # against brute force over every pair, with many ties; weights = repeated rows
        score = rng.integers(0, 5, 30).astype(float)
        label = rng.integers(0, 2, 30)
        weights = rng.integers(0, 3, (3, 30)).astype(float)
        got = weighted_auroc(score, label, weights)
        for b in range(3):
            idx = np.repeat(np.arange(30), weights[b].astype(int))
            want = _brute_auroc(score[idx], label[idx]) if 0 < label[idx].sum() < len(idx) else np.nan
            assert got[b] == pytest.approx(want, nan_ok=True)


def test_scores_follow_chexzeros_softmax_and_the_positive_rule():
    rng = np.random.default_rng(1)
    images, prompts = rng.normal(size=(2, 5, 8)), rng.normal(size=(3, 2, 8))
    img = images / np.linalg.norm(images, axis=-1, keepdims=True)
    txt = prompts / np.linalg.norm(prompts, axis=-1, keepdims=True)
    s_pos, s_neg = img @ txt[:, 0].T, img @ txt[:, 1].T
    soft = scores(images, prompts, "softmax")
    assert soft.shape == (2, 5, 3)
    np.testing.assert_allclose(soft, np.exp(s_pos) / (np.exp(s_pos) + np.exp(s_neg)), rtol=1e-12)
    np.testing.assert_allclose(scores(images, prompts, "positive"), s_pos, rtol=1e-12)
    with pytest.raises(MedretError, match=r"evaluation\.classification\.rule: 'max'"):
        scores(images, prompts, "max")
    # the softmax ranks images as the contrast s+ - s- does, so its AUROC is the contrast's
    label = np.array([1, 0, 1, 0, 0])
    w = np.ones((1, 5))
    assert weighted_auroc(soft[0, :, 0], label, w) == weighted_auroc(s_pos[0, :, 0] - s_neg[0, :, 0], label, w)


def test_prompts_and_labels():
    pairs = prompt_pairs(
        ["pleural_effusion", "no_finding", "edema"], {**OPTIONS, "prompts": {"edema": ["oedema", "clear lungs"]}}
    )
    assert pairs == {
        "pleural_effusion": ("pleural effusion", "no pleural effusion"),
        "edema": ("oedema", "clear lungs"),
    }
    assert "no_finding" in prompt_pairs(["no_finding"], {**OPTIONS, "prompts": {"no_finding": ["normal", "abnormal"]}})
    table = pd.DataFrame({"label_a": [1.0, -1.0, np.nan, 0.0], "label_b": [0.0, 1.0, np.nan, np.nan]})
    labels, labelled = finding_labels(table, "positive")
    assert labels.to_dict("list") == {"a": [1, 1, 0, 0], "b": [0, 1, 0, 0]} and labelled.tolist() == [1, 1, 0, 1]
    labels, _ = finding_labels(table, "negative")
    assert labels["a"].tolist() == [1, 0, 0, 0]


def test_findings_without_prompts_or_positives_are_left_out_with_a_note():
    labels = pd.DataFrame({"a": [1, 1, 0, 0, 0], "b": [1, 0, 0, 0, 0], "no_finding": [0, 0, 1, 1, 1]})
    pairs = prompt_pairs(list(labels.columns), OPTIONS)
    assert kept_findings(labels, pairs, 2) == ["a"]
    assert left_out(labels, pairs, 2) == [
        "finding b: 1 positive and 4 negative images (fewer than 2); not classified",
        "finding no_finding: no prompt pair (set evaluation.classification.prompts.no_finding)",
    ]


def test_tables_intervals_macro_repeats_and_paired_comparisons():
    rng = np.random.default_rng(2)
    n = 60
    labels = pd.DataFrame({"a": rng.integers(0, 2, n), "b": rng.integers(0, 2, n)})
    y = labels.to_numpy(float)
    perfect = np.stack([y + 0.1 * rng.random((n, 2)) for _ in range(3)])  # levels 0, 0.5, 0.5: two repeats
    noise = rng.random((3, n, 2))
    levels = np.array([0.0, 0.5, 0.5])
    table, comparisons = classification_tables(
        {("good", "occ"): (levels, perfect), ("random", "occ"): (levels, noise)},
        labels,
        [f"patient{i // 2}" for i in range(n)],
        dataset="d",
        n_boot=200,
        seed=0,
        ci=0.95,
    )
    good = table[table["model"] == "good"].set_index(["level", "finding"])
    assert (good["value"] == 1.0).all() and (good["ci_low"] == 1.0).all()
    assert set(table["finding"]) == {"a", "b", MACRO} and set(table["level"]) == {0.0, 0.5}
    rand = table[table["model"] == "random"].set_index(["level", "finding"])
    # level 0.5: the mean of the two repeats' AUROCs; macro: the mean of the findings
    want = np.mean([weighted_auroc(noise[r][:, 0], y[:, 0], np.ones((1, n)))[0] for r in (1, 2)])
    assert rand.loc[(0.5, "a"), "value"] == pytest.approx(want)
    assert rand.loc[(0.0, MACRO), "value"] == pytest.approx(rand.loc[[(0.0, "a"), (0.0, "b")], "value"].mean())
    assert rand.loc[(0.0, "a"), "ci_low"] < rand.loc[(0.0, "a"), "value"] < rand.loc[(0.0, "a"), "ci_high"]
    assert (table["n_positive"] + table["n_negative"]).isin([n, 2 * n]).all()
    diff = comparisons.set_index(["level", "finding"])
    assert (comparisons["model_a"] == "good").all() and (diff["difference"] > 0.2).all()
    assert (diff["ci_low"] > 0).all() and (diff["p_value"] < 0.05).all()
