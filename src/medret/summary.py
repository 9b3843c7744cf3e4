"""``summary.md``: the dataset's results as Markdown tables, ready to paste into a paper.

For every corruption, relevance mode and direction: a model × level table of R@1, R@5, R@10 and
MRR with their intervals, chance and the popularity baseline, each model's normalised AUC, and
the paired nAUC differences between models. Everything is read from the tables the metrics stage
wrote; nothing is recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medret.io import atomic_output
from medret.metrics import TIE_AWARE

DIRECTION_NAMES = {"i2t": "image → report", "t2i": "report → image"}
RELEVANCE_NAMES = {"exact": "exact report", "labels": "label match"}
TABLE_METRICS = ("R@1", "R@5", "R@10", "MRR")


def _number(value: float, metric: str) -> str:
    if pd.isna(value):
        return "–"
    return f"{value:.3f}" if metric in ("MRR", "nAUC", "AUROC") else f"{value:.1f}"


def _interval(low: float, high: float, metric: str) -> str:
    return "" if pd.isna(low) or pd.isna(high) else f"[{_number(low, metric)}, {_number(high, metric)}]"


def _with_ci(value: float, low: float, high: float, metric: str) -> str:
    return f"{_number(value, metric)} {_interval(low, high, metric)}".rstrip()


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _level(value: float, kind: str) -> str:
    return f"{value:g}" if kind == "occlusion" else f"{int(value)}"


def summary_markdown(
    dataset: str,
    metrics: pd.DataFrame,
    robustness: pd.DataFrame,
    comparisons: pd.DataFrame,
    corruptions: Mapping[str, Mapping[str, Any]],
    evaluation: Mapping[str, Any],
    warnings: Sequence[str] = (),
    findings: pd.DataFrame | None = None,
    finding_notes: Sequence[str] = (),
    placement: pd.DataFrame | None = None,
    classification: pd.DataFrame | None = None,
) -> str:
    """The Markdown text of ``summary.md`` (see the module doc); ``warnings`` (:func:`collect_warnings`) get a
    section of their own before the tables; ``findings`` (``findings.csv``) and ``finding_notes``
    (:func:`medret.findings.left_out`) a section after them, ``placement`` (``placement.csv``) and
    ``classification`` (``classification.csv``) one each."""
    n_boot, ci = int(evaluation["bootstrap"]), float(evaluation["ci"])
    out = [
        f"# medret results: {dataset}",
        "",
        f"Values with {100 * ci:g}% percentile bootstrap intervals (B = {n_boot}; image queries resampled by "
        "patient, report queries singly, repeats as whole placement sets). R@K in percent, MRR as a fraction. "
        "`chance`: a uniformly random ranking; `popularity`: an image-blind baseline that ranks the most "
        "frequent reports first, equally frequent ones in random order (expected values). nAUC: area under the "
        "metric-vs-level curve over the level range, divided by the clean value; above chance: (area − chance) / "
        "(clean value − chance), empty where the clean value's interval reaches chance.",
        "",
        "## Warnings",
        "",
        *([f"- {w.removeprefix('medret warning: ')}" for w in warnings] or ["None."]),
    ]
    for corruption in sorted(metrics["corruption"].unique(), key=lambda c: (c != "occlusion", c)):
        entry = corruptions.get(corruption, {})
        kind = str(entry.get("kind", "occlusion"))
        sub = metrics[metrics["corruption"] == corruption]
        options = ", ".join(f"{k}: {v}" for k, v in entry.items() if k != "levels")
        out += ["", f"## {corruption}", "", f"`{options}`" if options else ""]
        for relevance in sorted(sub["relevance"].unique()):
            for direction in ("i2t", "t2i"):
                part = sub[(sub["relevance"] == relevance) & (sub["direction"] == direction)]
                if part.empty:
                    continue
                n_queries = int(part["n_queries"].max())
                title = f"{DIRECTION_NAMES[direction]}, {RELEVANCE_NAMES.get(relevance, relevance)}"
                out += ["", f"### {title} ({n_queries} queries)", ""]
                cells = part.set_index(["model", "level", "metric"])
                rows = []
                for model in sorted(part["model"].unique()):
                    for level in sorted(part.loc[part["model"] == model, "level"].unique()):
                        row = [model, _level(level, kind)]
                        for metric in TABLE_METRICS:
                            r = cells.loc[(model, level, metric)]
                            row.append(_with_ci(r["value"], r["ci_low"], r["ci_high"], metric))
                        rows.append(row)
                first = part.drop_duplicates("metric").set_index("metric")
                for name in ("chance", "popularity"):
                    if name in first and first[name].notna().any():
                        rows.append([f"*{name}*", ""] + [_number(first.loc[m, name], m) for m in TABLE_METRICS])
                out += _table(["model", "level", *TABLE_METRICS], rows)
                out += _nauc_lines(robustness, comparisons, corruption, relevance, direction)
    out += _ties_lines(metrics, corruptions)
    if placement is not None and not placement.empty:
        out += _placement_lines(placement, corruptions, evaluation)
    if findings is not None:
        out += _findings_lines(findings, finding_notes, corruptions, evaluation)
    if classification is not None:
        out += _classification_lines(classification, corruptions)
    return "\n".join(out).rstrip() + "\n"


def _placement_lines(
    table: pd.DataFrame, corruptions: Mapping[str, Mapping[str, Any]], evaluation: Mapping[str, Any]
) -> list[str]:
    """Per inside/outside pair: each model's metric with the occluder on the region and elsewhere, and the paired
    difference."""
    from medret.findings import shown_relevance

    metric, direction = evaluation["findings"]["metric"], evaluation["findings"]["direction"]
    relevance = shown_relevance(table)
    out = [
        "",
        "## Where the occluder falls",
        "",
        f"{metric}, {DIRECTION_NAMES[direction]} ({RELEVANCE_NAMES.get(relevance, relevance)} relevance), on the "
        "queries whose image has a region of interest: the occluder over the region (inside) against the same area "
        "elsewhere (outside), with the paired difference inside − outside, its interval and bootstrap p-value. "
        "Below 0: the model fails because the finding is hidden; near 0: because any such square is foreign.",
    ]
    sub = table[(table["metric"] == metric) & (table["direction"] == direction) & (table["relevance"] == relevance)]
    for (inside, outside), part in sub.groupby(["inside", "outside"], sort=False):
        out += ["", f"### {inside} against {outside} ({int(part['n_queries'].max())} queries)", ""]
        rows = [
            [
                r.model,
                _level(r.level, "occlusion"),
                _with_ci(r.inside_value, r.inside_low, r.inside_high, metric),
                _with_ci(r.outside_value, r.outside_low, r.outside_high, metric),
                _with_ci(r.difference, r.ci_low, r.ci_high, metric),
                f"{r.p_value:.3g}",
            ]
            for r in part.sort_values(["model", "level"]).itertuples()
        ]
        out += _table(["model", "level", "inside", "outside", "inside − outside", "p"], rows)
    return out


def _classification_lines(table: pd.DataFrame, corruptions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Macro AUROC per model and level of each corruption, and each finding's clean AUROC."""
    from medret.classification import MACRO
    from medret.findings import describe

    out = ["", "## Zero-shot classification", ""]
    if table.empty:
        return [*out, "No finding to classify (the dataset has no labels, or too few positives)."]
    out.append(
        "AUROC of each finding from a positive and a negative prompt (CheXzero's `{finding}` / `no {finding}` by "
        "default), scored on the same cached image embeddings as the retrieval results, with 95% patient-cluster "
        "bootstrap intervals; chance is 0.5. Every finding, level and the paired differences between models are "
        "in `classification.csv` and `classification_comparisons.csv`."
    )
    clean = table[table["level"] == 0.0].drop_duplicates(["model", "finding"]).set_index(["finding", "model"])
    models = sorted(table["model"].unique())
    findings = [f for f in dict.fromkeys(table["finding"]) if f != MACRO] + [MACRO]
    rows = []
    for finding in findings:
        n = clean.loc[finding].iloc[0]
        counts = f"{int(n['n_positive'])}/{int(n['n_negative'])}"
        row = [describe(finding), counts] if finding != MACRO else ["*macro*", f"{len(findings) - 1} findings"]
        for model in models:
            r = clean.loc[(finding, model)]
            row.append(_with_ci(r["value"], r["ci_low"], r["ci_high"], "AUROC"))
        rows.append(row)
    out += ["", "### Clean images", "", *_table(["finding", "positive/negative", *models], rows)]
    for corruption, entry in corruptions.items():
        part = table[(table["corruption"] == corruption) & (table["finding"] == MACRO)]
        if part.empty:
            continue
        kind = str(entry.get("kind", "occlusion"))
        levels = sorted(part["level"].unique())
        cells = part.set_index(["model", "level"])
        rows = [
            [model] + [_with_ci(*cells.loc[(model, lv), ["value", "ci_low", "ci_high"]], "AUROC") for lv in levels]
            for model in models
        ]
        out += [
            "",
            f"### {corruption}: macro AUROC",
            "",
            *_table(["model", *(_level(lv, kind) for lv in levels)], rows),
        ]
    return out


def _findings_lines(
    table: pd.DataFrame,
    notes: Sequence[str],
    corruptions: Mapping[str, Mapping[str, Any]],
    evaluation: Mapping[str, Any],
) -> list[str]:
    """Per corruption, a finding × model table of the clean value against the report level's, with intervals."""
    from medret.findings import describe, finding_contrast, report_level, shown_relevance

    chosen_levels = evaluation["findings"].get("levels", {})
    metric, direction = evaluation["findings"]["metric"], evaluation["findings"]["direction"]
    out = ["", "## Results per finding", ""]
    if table.empty:
        return [*out, "The dataset has no label columns (or no finding has enough queries): no per-finding results."]
    relevance = shown_relevance(table)
    out.append(
        f"{metric} of the {DIRECTION_NAMES[direction]} queries whose {'image' if direction == 'i2t' else 'report'} "
        f"carries each finding ({RELEVANCE_NAMES.get(relevance, relevance)} relevance), clean → at one level of each "
        "corruption (`evaluation.findings.levels`, else the median of its levels above 0), with intervals and the "
        "change; every metric, level and direction is in `findings.csv`."
    )
    out += [f"- {note}" for note in notes]
    for corruption, entry in corruptions.items():
        if corruption not in set(table["corruption"]):
            continue
        level = report_level(entry["levels"], chosen_levels.get(corruption))
        data = finding_contrast(table, corruption, level, metric=metric, direction=direction, relevance=relevance)
        if data.empty:
            continue
        models = sorted(data["model"].unique())
        out += ["", f"### {corruption}: clean → level {_level(level, str(entry.get('kind', 'occlusion')))}", ""]
        rows = []
        for finding, part in data.groupby("finding", sort=False):
            cells = part.set_index("model")
            row = [describe(str(finding)), str(int(cells["n_queries"].max()))]
            for model in models:
                if model not in cells.index:
                    row.append("–")
                    continue
                r = cells.loc[model]
                clean = _with_ci(r["clean"], r["clean_low"], r["clean_high"], metric)
                corrupted = _with_ci(r["corrupted"], r["corrupted_low"], r["corrupted_high"], metric)
                row.append(f"{clean} → {corrupted} ({r['change']:+.{3 if metric == 'MRR' else 1}f})")
            rows.append(row)
        out += _table(["finding", "queries", *models], rows)
    return out


def _ties_lines(metrics: pd.DataFrame, corruptions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The cells whose tie-aware values differ from the pessimistic ones, both side by side."""
    keys = ["model", "corruption", "level", "relevance", "direction", "metric"]
    plain = metrics[metrics["metric"].isin(TABLE_METRICS)].set_index(keys)
    tied = metrics[metrics["metric"].isin([f"{m}{TIE_AWARE}" for m in TABLE_METRICS])].copy()
    tied["metric"] = tied["metric"].str.removesuffix(TIE_AWARE)
    tied = tied.set_index(keys).reindex(plain.index)
    # cells whose values differ as printed (a difference below the printed precision says nothing)
    shown = [_number(v, m) for v, m in zip(plain["value"], plain.index.get_level_values("metric"), strict=True)]
    shown_tied = [_number(v, m) for v, m in zip(tied["value"], plain.index.get_level_values("metric"), strict=True)]
    differs = pd.Series([a != b for a, b in zip(shown, shown_tied, strict=True)], index=plain.index)
    out = [
        "",
        "## Ties",
        "",
        "Ranks above are pessimistic: candidates scoring the same as the best relevant one (within 1e-6) rank "
        "ahead of it. The tie-aware values (McSherry & Najork 2008) are expectations over a random order of the "
        "tied candidates; a constant scorer gets chance under them.",
        "",
    ]
    cells = differs[differs].index.droplevel("metric").unique()
    if len(cells) == 0:
        return [*out, "The tie-aware values equal the pessimistic ones everywhere, as printed."]
    rows = []
    for model, corruption, level, relevance, direction in cells:
        kind = str(corruptions.get(corruption, {}).get("kind", "occlusion"))
        row = [
            model,
            corruption,
            _level(level, kind),
            f"{DIRECTION_NAMES[direction]}, {RELEVANCE_NAMES.get(relevance, relevance)}",
        ]
        for metric in TABLE_METRICS:
            key = (model, corruption, level, relevance, direction, metric)
            t, before = tied.loc[key], _number(plain.loc[key, "value"], metric)
            row.append(f"{before} → {_with_ci(t['value'], t['ci_low'], t['ci_high'], metric)}")
        rows.append(row)
    header = ["model", "corruption", "level", "queries", *(f"{m} pessimistic → tie-aware" for m in TABLE_METRICS)]
    return out + _table(header, rows)


def _nauc_lines(
    robustness: pd.DataFrame, comparisons: pd.DataFrame, corruption: str, relevance: str, direction: str
) -> list[str]:
    curve = (
        (robustness["corruption"] == corruption)
        & (robustness["relevance"] == relevance)
        & (robustness["direction"] == direction)
        & (robustness["metric"] == "R@5")
    )
    lines = []
    for quantity, name in (("nauc", "nAUC of R@5"), ("chance_nauc", "nAUC of R@5 above chance")):
        rows = robustness[curve & (robustness["quantity"] == quantity)].sort_values("model")
        if not rows.empty:
            values = (f"{r.model} {_with_ci(r.value, r.ci_low, r.ci_high, 'nAUC')}" for r in rows.itertuples())
            lines += ["", f"{name}: " + "; ".join(values) + "."]
    if not lines:
        return []
    pairs = comparisons[
        (comparisons["corruption"] == corruption)
        & (comparisons["relevance"] == relevance)
        & (comparisons["direction"] == direction)
        & (comparisons["quantity"] == "nauc")
        & (comparisons["metric"] == "R@5")
    ]
    if not pairs.empty:
        lines += [
            "",
            *_table(
                ["model a", "model b", "nAUC(a) − nAUC(b)", "interval", "p"],
                [
                    [
                        r.model_a,
                        r.model_b,
                        _number(r.difference, "nAUC"),
                        _interval(r.ci_low, r.ci_high, "nAUC"),
                        f"{r.p_value:.3g}",
                    ]
                    for r in pairs.itertuples()
                ],
            ),
        ]
    return lines


def collect_warnings(manifest_path: str | Path, embedding_paths: Sequence[str | Path] = ()) -> list[str]:
    """The warnings a dataset's results carry, in order and without repeats: the manifest's (pairs left out
    and why) and the image embeddings' (a cache too small for a model). Files that do not exist are passed over."""
    from medret.embeddings import read_notes
    from medret.io import read_table

    found: list[str] = []
    if Path(manifest_path).is_file():
        _, meta = read_table(manifest_path)
        found += json.loads(meta.get("notes", "[]"))
    for path in embedding_paths:
        if Path(path).is_file():
            found += read_notes(path)
    return list(dict.fromkeys(found))


def write_summary(
    dataset: str,
    metrics_path: str | Path,
    robustness_path: str | Path,
    comparisons_path: str | Path,
    out_path: str | Path,
    corruptions: Mapping[str, Mapping[str, Any]],
    evaluation: Mapping[str, Any],
    *,
    manifest_path: str | Path,
    embedding_paths: Sequence[str | Path] = (),
    findings_path: str | Path | None = None,
    placement_path: str | Path | None = None,
    classification_path: str | Path | None = None,
    uncertain_labels: str = "positive",
) -> None:
    """Write ``summary.md`` from the metrics stage's three tables, the per-finding table (when given) and the
    warnings of the dataset's artifacts."""
    findings, notes = None, []
    if findings_path is not None:
        from medret.findings import finding_queries, left_out
        from medret.manifest import Manifest

        findings = pd.read_csv(findings_path)
        manifest = Manifest.read(manifest_path)
        queries = finding_queries(manifest.table, len(manifest.texts), uncertain=uncertain_labels)
        notes = left_out(queries, int(evaluation["findings"]["min_queries"]))
    text = summary_markdown(
        dataset,
        pd.read_csv(metrics_path),
        pd.read_csv(robustness_path),
        pd.read_csv(comparisons_path),
        corruptions,
        evaluation,
        collect_warnings(manifest_path, embedding_paths),
        findings,
        notes,
        None if placement_path is None else pd.read_csv(placement_path),
        None if classification_path is None else pd.read_csv(classification_path),
    )
    with atomic_output(out_path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def print_run_warnings(
    results_dir: str | Path, datasets: Sequence[str], models: Sequence[str], corruptions: Sequence[str]
) -> None:
    """At the end of a run: every warning the results carry, on stderr (also in each dataset's summary.md)."""
    import sys

    for dataset in datasets:
        base = Path(results_dir) / dataset
        paths = [base / "embeddings" / m / "images" / f"{c}.h5" for m in models for c in corruptions]
        try:
            warnings = collect_warnings(base / "manifest.parquet", paths)
        except Exception as exc:  # a damaged artifact: its own job reports it; never hide the run's outcome
            print(f"medret: could not collect the warnings of {dataset} ({exc})", file=sys.stderr)
            continue
        if warnings:
            print(
                f"medret: {len(warnings)} warning(s) for dataset {dataset} (also in {base / 'summary.md'}):",
                file=sys.stderr,
            )
            for warning in warnings:
                print(f"  {warning}", file=sys.stderr)
