"""Figures for the occlusion benchmark: recall curves, robustness summaries and example panels.

Uses matplotlib's object-oriented API (``Figure`` without pyplot), so no global state or GUI backend
is involved. Every figure is written atomically to each requested path (format from the suffix), so
a failed run never leaves a half-written figure behind. Colours (and markers) are assigned per model
by sorted name, so one model looks the same in every figure of a run.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from medret.errors import MedretError
from medret.io import atomic_output
from medret.metrics import METRICS_COLUMNS, ROBUSTNESS_COLUMNS, TIE_AWARE

DIRECTIONS: dict[str, str] = {
    "i2t": "image → report",
    "t2i": "report → image",
    "i2t:labels": "image → report, label match",
    "t2i:labels": "report → image, label match",
}
"""Retrieval directions in plotting order, with their human-readable labels. A relevance mode other
than ``exact`` is plotted as a direction of its own (``<direction>:<mode>``): its own row of panels."""

DPI = 150
CI_ALPHA = 0.2
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_DIRECTION_STYLES = {"i2t": "-", "t2i": "--", "i2t:labels": ":", "t2i:labels": "-."}
# Deterministic vector output: no creation timestamps embedded in the file.
_SAVE_METADATA: dict[str, dict[str, Any]] = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def model_colors(models: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """Map each model to a tab10 colour by its position in the sorted list of model names."""
    palette = colormaps["tab10"].colors
    return {m: tuple(palette[i % len(palette)]) for i, m in enumerate(sorted(set(models)))}


def _model_markers(models: Iterable[str]) -> dict[str, str]:
    """Map each model to a marker, in the same sorted order as :func:`model_colors`."""
    return {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(sorted(set(models)))}


def metric_label(metric: str) -> str:
    """Axis label for a metric: ``R@5`` -> ``Recall@5 (%)``, ``MRR_tieaware`` -> ``MRR, tie-aware``."""
    if metric.endswith(TIE_AWARE):
        return f"{metric_label(metric.removesuffix(TIE_AWARE))}, tie-aware"
    if metric.startswith("R@"):
        return f"Recall@{metric[2:]} (%)"
    return {"MRR": "MRR", "median_rank": "median rank"}.get(metric, metric)


def level_label(kind: str) -> str:
    """x-axis label for the levels of a corruption ``kind``: occlusion levels are fractions of the image
    area, the others severities (:mod:`medret.corruptions`)."""
    if kind == "occlusion":
        return "occlusion level (fraction of image area)"
    return f"{kind.replace('_', ' ')} severity (0 = clean)"


def _format_level(level: float) -> str:
    """``0.3`` -> ``"0.3"``, ``1`` -> ``"1.0"``: short, but always with a decimal point."""
    text = f"{float(level):g}"
    return text if any(ch in text for ch in ".en") else f"{text}.0"


def _require_columns(df: pd.DataFrame, required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise MedretError(f"{what} table is missing column(s) {', '.join(missing)}; expected {', '.join(required)}")


def _as_float(df: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    """Copy of ``df`` with ``columns`` as floats; non-numeric entries are a user error."""
    df = df.copy()
    for col in columns:
        try:
            df[col] = pd.to_numeric(df[col], errors="raise").astype(float)
        except (TypeError, ValueError) as exc:
            raise MedretError(f"{what} table column {col!r} has non-numeric values: {exc}") from exc
    return df


def _select_corruption(df: pd.DataFrame, corruption: str, what: str) -> pd.DataFrame:
    """Rows for one corruption of one dataset, with only known directions."""
    sub = df[df["corruption"] == corruption]
    if sub.empty:
        available = ", ".join(sorted(map(str, df["corruption"].dropna().unique()))) or "none"
        raise MedretError(f"{what} table has no rows for corruption {corruption!r} (available: {available})")
    datasets = sorted(map(str, sub["dataset"].unique()))
    if len(datasets) != 1:
        raise MedretError(
            f"{what} table mixes datasets {', '.join(datasets)} for corruption {corruption!r}; pass one dataset's table"
        )
    if "relevance" in sub.columns:  # fold the relevance mode into the direction (see DIRECTIONS)
        mode = sub["relevance"].astype(str)
        sub = sub.assign(direction=sub["direction"].where(mode == "exact", sub["direction"] + ":" + mode))
    unknown = sorted(set(map(str, sub["direction"].unique())) - set(DIRECTIONS))
    if unknown:
        raise MedretError(
            f"{what} table has unknown direction(s) {', '.join(unknown)}; expected {', '.join(DIRECTIONS)}"
        )
    return sub


def _check_unique(df: pd.DataFrame, keys: list[str], what: str) -> None:
    dup = df[df.duplicated(keys, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        where = ", ".join(f"{k}={first[k]!r}" for k in keys)
        raise MedretError(f"{what} table has duplicate rows for {where}; expected one row per {keys}")


def _normalise_paths(out_paths: Sequence[PathLike] | PathLike) -> list[Path]:
    paths = [Path(out_paths)] if isinstance(out_paths, str | os.PathLike) else [Path(p) for p in out_paths]
    if not paths:
        raise MedretError("no output path given for the figure; pass at least one .png or .pdf path")
    supported = FigureCanvasBase.get_supported_filetypes()
    for p in paths:
        fmt = p.suffix.lstrip(".").lower()
        if fmt not in supported:
            raise MedretError(
                f"cannot save figure to {p}: unsupported suffix {p.suffix or '(none)'!r}; "
                f"use one of {', '.join(sorted(supported))}"
            )
    return paths


def save_figure(fig: Figure, out_paths: Sequence[PathLike] | PathLike, *, dpi: int = DPI) -> None:
    """Save ``fig`` to every path (format from the suffix), all-or-nothing and atomically.

    All files are rendered to temporaries first; they are renamed into place only once every one
    has been written, so an error leaves none of the outputs behind.
    """
    paths = _normalise_paths(out_paths)
    with contextlib.ExitStack() as stack:
        for path in paths:
            tmp = stack.enter_context(atomic_output(path))
            fmt = path.suffix.lstrip(".").lower()
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_SAVE_METADATA.get(fmt))


def _fill_ci(ax: Axes, x: np.ndarray, low: np.ndarray, high: np.ndarray, color: Any) -> None:
    ok = np.isfinite(low) & np.isfinite(high)
    if ok.any():
        ax.fill_between(x, low, high, where=ok, color=color, alpha=CI_ALPHA, linewidth=0)


def _n_queries_text(sub: pd.DataFrame) -> str:
    """``n = 500 queries`` or, if directions differ, ``n = 500 (image → report) / 480 (...)``."""
    per_dir = {d: sorted(sub.loc[sub["direction"] == d, "n_queries"].dropna().unique()) for d in DIRECTIONS}
    values = {int(v) for vs in per_dir.values() for v in vs}
    if not values:
        return "n queries unknown"
    if len(values) == 1:
        return f"n = {values.pop()} queries"
    parts = []
    for d, vs in per_dir.items():
        if vs:
            rng = f"{int(vs[0])}" if len(vs) == 1 else f"{int(vs[0])}–{int(vs[-1])}"
            parts.append(f"{rng} ({DIRECTIONS[d]})")
    return "n = " + " / ".join(parts) + " queries"


def _new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure with an Agg canvas attached, so text extents can be measured."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _fits(fig: Figure, artist: Any) -> bool:
    """Whether ``artist`` is no wider than the figure (with a small margin)."""
    renderer = fig.canvas.get_renderer()
    return bool(artist.get_window_extent(renderer).width <= 0.98 * fig.bbox.width)


def _add_figure_legend(fig: Figure, handles: list[Any], labels: list[str]) -> None:
    """One legend for the whole figure, below the axes (constrained layout makes room for it).

    Uses as many columns as fit the figure width, so long model names wrap onto more rows instead
    of being clipped at the figure edges.
    """
    for ncol in range(min(len(labels), 6), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)
        if ncol == 1 or _fits(fig, legend):
            return
        legend.remove()


def _set_suptitle(fig: Figure, text: str) -> None:
    """Figure title, wrapped onto several lines if it would be wider than the figure."""
    title = fig.suptitle(text)
    width = len(text)
    while width > 20 and not _fits(fig, title):
        width -= 5
        title.set_text(textwrap.fill(text, width))


def _model_handles(models: Sequence[str], colors: Mapping[str, Any], markers: Mapping[str, str]) -> list[Any]:
    return [Line2D([], [], color=colors[m], marker=markers[m], markersize=5, linewidth=1.6) for m in models]


# --------------------------------------------------------------------------------------------------
# Recall curves
# --------------------------------------------------------------------------------------------------


#: Line style and label of each reference column of the metrics table (chance and an image-blind baseline).
_REFERENCE_LINES = {
    "chance": {"color": "0.45", "linestyle": "--", "linewidth": 1.2, "label": "chance"},
    "popularity": {"color": "0.3", "linestyle": ":", "linewidth": 1.4, "label": "popularity baseline"},
}


def _reference_line(ax: Axes, cell: pd.DataFrame, column: str) -> Any:
    """Draw reference ``column`` of one panel against level (above the model lines, so it stays visible
    where a model sits on it); return the line, or None when the panel has no value."""
    values = cell.groupby("level")[column].mean().dropna()
    if values.empty:
        return None
    (line,) = ax.plot(values.index.to_numpy(), values.to_numpy(), zorder=2.5, **_REFERENCE_LINES[column])
    return line


def _recall_figure(
    metrics: pd.DataFrame,
    corruption: str,
    metrics_to_plot: Sequence[str] = ("R@1", "R@5", "R@10"),
    kind: str = "occlusion",
) -> Figure:
    """Build the recall-vs-level figure (rows = directions, columns = metrics) without saving it."""
    _require_columns(metrics, METRICS_COLUMNS, "metrics")
    if not metrics_to_plot:
        raise MedretError("metrics_to_plot is empty; name at least one metric such as 'R@5'")
    sub = _select_corruption(metrics, corruption, "metrics")
    missing = [m for m in metrics_to_plot if m not in set(sub["metric"])]
    if missing:
        available = ", ".join(sorted(map(str, sub["metric"].unique())))
        raise MedretError(
            f"metrics table has no rows for metric(s) {', '.join(missing)} under corruption "
            f"{corruption!r} (available: {available})"
        )
    sub = sub[sub["metric"].isin(metrics_to_plot)]
    sub = _as_float(sub, ["level", "value", "ci_low", "ci_high", "n_queries", "chance", "popularity"], "metrics")
    _check_unique(sub, ["model", "direction", "metric", "level"], "metrics")

    dataset = str(sub["dataset"].iloc[0])
    directions = [d for d in DIRECTIONS if d in set(sub["direction"])]
    models = sorted(map(str, sub["model"].unique()))
    colors, markers = model_colors(models), _model_markers(models)
    levels = np.sort(sub["level"].unique())

    nrows, ncols = len(directions), len(metrics_to_plot)
    fig = _new_figure(3.4 * ncols + 0.6, 2.9 * nrows + 1.3)
    axes = np.atleast_2d(fig.subplots(nrows, ncols, sharex=True, squeeze=False))
    chance_handle = baseline_handle = None
    for r, direction in enumerate(directions):
        for c, metric in enumerate(metrics_to_plot):
            ax: Axes = axes[r, c]
            cell = sub[(sub["direction"] == direction) & (sub["metric"] == metric)]
            for model in models:
                rows = cell[cell["model"] == model].sort_values("level")
                if rows.empty:
                    continue
                x = rows["level"].to_numpy()
                _fill_ci(ax, x, rows["ci_low"].to_numpy(), rows["ci_high"].to_numpy(), colors[model])
                ax.plot(
                    x,
                    rows["value"].to_numpy(),
                    color=colors[model],
                    marker=markers[model],
                    markersize=4,
                    linewidth=1.6,
                    label=model,
                    clip_on=False,  # markers at 0 % or 100 % are drawn whole, not cut by the spine
                )
            # Reference lines are properties of the gallery, identical for all models: one line each per axes.
            chance_handle = _reference_line(ax, cell, "chance") or chance_handle
            baseline_handle = _reference_line(ax, cell, "popularity") or baseline_handle
            ax.set_title(f"{DIRECTIONS[direction]}: {metric}", fontsize=10)
            ax.set_ylabel(metric_label(metric))
            if metric.startswith("R@"):
                ax.set_ylim(0, 100)
            elif metric == "MRR":
                ax.set_ylim(0, 1)
            if r == nrows - 1:
                ax.set_xlabel(level_label(kind))
            ax.grid(True, alpha=0.3, linewidth=0.6)
            if len(levels) > 1:
                pad = 0.02 * (levels[-1] - levels[0])
                ax.set_xlim(levels[0] - pad, levels[-1] + pad)

    handles = _model_handles(models, colors, markers)
    labels = list(models)
    for column, handle in (("chance", chance_handle), ("popularity", baseline_handle)):
        if handle is not None:
            style = {k: v for k, v in _REFERENCE_LINES[column].items() if k != "label"}
            handles.append(Line2D([], [], **style))
            labels.append(_REFERENCE_LINES[column]["label"])
    handles.append(Patch(facecolor="0.5", alpha=CI_ALPHA))
    labels.append("confidence interval")
    _add_figure_legend(fig, handles, labels)
    _set_suptitle(fig, f"{dataset} — {corruption}: retrieval vs corruption level ({_n_queries_text(sub)})")
    return fig


def plot_recall_curves(
    metrics: pd.DataFrame,
    corruption: str,
    out_paths: Sequence[PathLike] | PathLike,
    *,
    metrics_to_plot: Sequence[str] = ("R@1", "R@5", "R@10"),
    kind: str = "occlusion",
) -> None:
    """Plot retrieval metrics against corruption level and save to every path in ``out_paths``.

    Rows are retrieval directions (image → report, report → image; label-match rows as directions
    of their own), columns the metrics in ``metrics_to_plot``; one line per model with a shaded
    confidence band, plus the chance level. ``kind`` (the corruption's kind) labels the level axis.
    Raises :class:`MedretError` if columns or rows for ``corruption``/``metrics_to_plot`` are missing.
    """
    _normalise_paths(out_paths)  # fail on a bad suffix before doing any work
    save_figure(_recall_figure(metrics, corruption, metrics_to_plot, kind), out_paths)


# --------------------------------------------------------------------------------------------------
# Robustness summary
# --------------------------------------------------------------------------------------------------


def _robustness_figure(
    robustness: pd.DataFrame, corruption: str, metric: str = "R@5", kind: str = "occlusion"
) -> Figure:
    """Build the two-panel robustness figure (relative drop curves, nAUC bars) without saving it."""
    _require_columns(robustness, ROBUSTNESS_COLUMNS, "robustness")
    sub = _select_corruption(robustness, corruption, "robustness")
    sub = sub[sub["metric"] == metric]
    if sub.empty:
        available = ", ".join(
            sorted(map(str, robustness.loc[robustness["corruption"] == corruption, "metric"].unique()))
        )
        raise MedretError(
            f"robustness table has no rows for metric {metric!r} under corruption {corruption!r} "
            f"(available: {available})"
        )
    sub = _as_float(sub, ["level", "value", "ci_low", "ci_high"], "robustness")
    drop = sub[sub["quantity"] == "relative_drop"]
    nauc = sub[sub["quantity"] == "nauc"]
    for name, part in (("relative_drop", drop), ("nauc", nauc)):
        if part.empty:
            raise MedretError(
                f"robustness table has no {name!r} rows for metric {metric!r} under corruption {corruption!r}"
            )
    _check_unique(drop, ["model", "direction", "level"], "robustness relative_drop")
    _check_unique(nauc, ["model", "direction"], "robustness nauc")

    dataset = str(sub["dataset"].iloc[0])
    directions = [d for d in DIRECTIONS if d in set(sub["direction"])]
    models = sorted(map(str, sub["model"].unique()))
    colors, markers = model_colors(models), _model_markers(models)
    label = metric_label(metric).removesuffix(" (%)")

    fig = _new_figure(11.0, 4.8)
    ax_drop, ax_auc = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1.0]})

    # (a) relative drop (fraction -> %) vs level; colour = model, line style = direction.
    for model in models:
        for direction in directions:
            rows = drop[(drop["model"] == model) & (drop["direction"] == direction)].sort_values("level")
            if rows.empty:
                continue
            x = rows["level"].to_numpy()
            _fill_ci(ax_drop, x, 100 * rows["ci_low"].to_numpy(), 100 * rows["ci_high"].to_numpy(), colors[model])
            ax_drop.plot(
                x,
                100 * rows["value"].to_numpy(),
                color=colors[model],
                marker=markers[model],
                markersize=4,
                linewidth=1.6,
                linestyle=_DIRECTION_STYLES[direction],
                label=f"{model} ({DIRECTIONS[direction]})",
            )
    values = 100 * drop[["value", "ci_low", "ci_high"]].to_numpy()
    lo, hi = np.nanmin(values, initial=0.0), np.nanmax(values, initial=100.0)
    ax_drop.set_ylim(min(0.0, lo) - 3, max(100.0, hi) + 3)
    # Same x range as the recall curves: relative drop is 0 at level 0 by definition, so it has no row.
    x_lo, x_hi = min(0.0, float(drop["level"].min())), float(drop["level"].max())
    pad = 0.02 * (x_hi - x_lo) if x_hi > x_lo else 0.05
    ax_drop.set_xlim(x_lo - pad, x_hi + pad)
    ax_drop.set_xlabel(level_label(kind))
    ax_drop.set_ylabel(f"relative drop in {label} (%)")
    ax_drop.set_title(f"(a) relative drop in {metric} vs clean", fontsize=10, loc="left")
    ax_drop.grid(True, alpha=0.3, linewidth=0.6)

    # (b) nAUC bars grouped by direction, one bar per model, CI as error bars.
    width = 0.8 / len(models)
    group_x = np.arange(len(directions), dtype=float)
    for i, model in enumerate(models):
        for j, direction in enumerate(directions):
            rows = nauc[(nauc["model"] == model) & (nauc["direction"] == direction)]
            if rows.empty:
                continue
            v, ci_lo, ci_hi = rows[["value", "ci_low", "ci_high"]].to_numpy()[0]
            x = group_x[j] + (i - (len(models) - 1) / 2) * width
            if not np.isfinite(v):  # e.g. a model that was never evaluated at this corruption
                ax_auc.annotate("n/a", (x, 0), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
                continue
            ax_auc.bar(x, v, width=width * 0.92, color=colors[model])
            if np.isfinite(ci_lo) and np.isfinite(ci_hi):
                yerr = np.array([[max(v - ci_lo, 0.0)], [max(ci_hi - v, 0.0)]])
                ax_auc.errorbar(x, v, yerr=yerr, color="0.15", capsize=3, linewidth=1.0)
            ax_auc.annotate(
                f"{v:.2f}",
                (x, max(v, ci_hi) if np.isfinite(ci_hi) else v),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    # Up to four groups: short stacked labels ("image →", "report", "label match") keep them apart.
    ax_auc.set_xticks(group_x, [DIRECTIONS[d].replace(" → ", " →\n").replace(", ", "\n") for d in directions])
    bounds = nauc[["value", "ci_low", "ci_high"]].to_numpy()
    bottom, top = np.nanmin(bounds, initial=0.0), np.nanmax(bounds, initial=0.0)
    # Headroom above the tallest error bar for the value labels.
    ax_auc.set_ylim(min(0.0, bottom * 1.15), top * 1.15 if top > 0 else 1.0)
    ax_auc.set_ylabel(f"nAUC of {label}")
    ax_auc.set_title(f"(b) normalised area under the {metric} curve", fontsize=10, loc="left")
    ax_auc.grid(True, axis="y", alpha=0.3, linewidth=0.6)

    handles = _model_handles(models, colors, markers)
    labels = list(models)
    for direction in directions:
        handles.append(Line2D([], [], color="0.2", linestyle=_DIRECTION_STYLES[direction], linewidth=1.6))
        labels.append(DIRECTIONS[direction])
    handles.append(Patch(facecolor="0.5", alpha=CI_ALPHA))
    labels.append("confidence interval")
    _add_figure_legend(fig, handles, labels)
    _set_suptitle(fig, f"{dataset} — {corruption}: robustness of {metric}")
    return fig


def plot_robustness(
    robustness: pd.DataFrame,
    corruption: str,
    out_paths: Sequence[PathLike] | PathLike,
    *,
    metric: str = "R@5",
    kind: str = "occlusion",
) -> None:
    """Plot (a) relative drop vs level and (b) nAUC per model and direction; save to ``out_paths``.

    ``kind`` (the corruption's kind) labels the level axis.
    Raises :class:`MedretError` if columns are missing or there are no ``relative_drop``/``nauc``
    rows for ``corruption`` and ``metric``.
    """
    _normalise_paths(out_paths)
    save_figure(_robustness_figure(robustness, corruption, metric, kind), out_paths)


# --------------------------------------------------------------------------------------------------
# Example panel
# --------------------------------------------------------------------------------------------------


def _examples_figure(images: np.ndarray, levels: Sequence[float], ids: Sequence[str], *, title: str) -> Figure:
    """Build the example grid (rows = examples, columns = levels) without saving it."""
    images = np.asarray(images)
    n_levels, n_ids = len(levels), len(ids)
    if images.ndim != 4:
        raise MedretError(f"example images must have shape (n_examples, n_levels, H, W); got shape {images.shape}")
    if n_ids == 0 or n_levels == 0:
        raise MedretError("example panel needs at least one id and one level")
    if images.shape[:2] != (n_ids, n_levels):
        raise MedretError(
            f"example images have shape {images.shape} but {n_ids} id(s) and {n_levels} level(s) were given; "
            f"expected ({n_ids}, {n_levels}, H, W)"
        )
    if images.dtype != np.uint8:
        raise MedretError(f"example images must be uint8 greyscale (0..255); got dtype {images.dtype}")

    h, w = images.shape[2:]
    cell = 1.7  # inches per image (longer side)
    cw, ch = (cell, cell * h / w) if w >= h else (cell * w / h, cell)
    fig = _new_figure(cw * n_levels + 0.6, ch * n_ids + 0.8)
    axes = fig.subplots(n_ids, n_levels, squeeze=False)
    # Row labels run vertically along the image; wrap long ids so they fit the image height.
    label_chars = max(8, int(ch * 72 / (0.62 * 8)))
    for i, example_id in enumerate(ids):
        for j, level in enumerate(levels):
            ax: Axes = axes[i, j]
            ax.imshow(images[i, j], cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"level {_format_level(level)}", fontsize=9)
            if j == 0:
                ax.set_ylabel(textwrap.fill(str(example_id), label_chars), fontsize=8)
    _set_suptitle(fig, title)
    return fig


def plot_examples(
    images: np.ndarray,
    levels: Sequence[float],
    ids: Sequence[str],
    out_paths: Sequence[PathLike] | PathLike,
    *,
    title: str,
) -> None:
    """Save a grid of corrupted example images: rows = ``ids``, columns = ``levels``.

    ``images`` is uint8 greyscale of shape ``(len(ids), len(levels), H, W)``; a mismatch raises
    :class:`MedretError`.
    """
    _normalise_paths(out_paths)
    save_figure(_examples_figure(images, levels, ids, title=title), out_paths)


# --------------------------------------------------------------------------------------------------
# Results per finding
# --------------------------------------------------------------------------------------------------


def _findings_figure(
    table: pd.DataFrame,
    corruptions: Mapping[str, Mapping[str, Any]],
    *,
    metric: str,
    direction: str,
    relevance: str,
    chosen_levels: Mapping[str, float] | None = None,
) -> Figure:
    """One panel per corruption: per finding and model, the clean value (open) against the value at the
    corruption's report level (filled; ``chosen_levels``, else the median level), each with its interval, joined
    by a line."""
    from medret.findings import describe, finding_contrast, report_level

    chosen_levels = chosen_levels or {}

    n_findings = max(1, table["finding"].nunique()) if not table.empty else 1
    cols = min(4, max(1, len(corruptions)))
    rows = -(-max(1, len(corruptions)) // cols)
    fig = Figure(figsize=(4.4 * cols, (0.9 + 0.36 * n_findings) * rows + 0.8))
    FigureCanvasAgg(fig)
    if table.empty:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no per-finding results: the dataset has no label columns", ha="center", va="center")
        return fig
    models = sorted(map(str, table["model"].unique()))
    colors, markers = model_colors(models), _model_markers(models)
    grid = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    for ax in grid[len(corruptions) :]:
        ax.axis("off")
    axes = grid[: len(corruptions)]
    for ax, (corruption, entry) in zip(axes, corruptions.items(), strict=True):
        level = report_level(entry["levels"], chosen_levels.get(corruption))
        data = finding_contrast(table, corruption, level, metric=metric, direction=direction, relevance=relevance)
        findings = list(dict.fromkeys(data["finding"]))
        kind = str(entry.get("kind", "occlusion"))
        shown = f"{level:g}" if kind == "occlusion" else f"severity {int(level)}"
        ax.set_title(f"{corruption}: clean (open) vs {shown} (filled)", fontsize=9)
        for m, model in enumerate(models):
            rows = data[data["model"] == model].set_index("finding").reindex(findings)
            y = np.arange(len(findings)) + (m - (len(models) - 1) / 2) * 0.8 / max(1, len(models))
            color = colors[model]
            for lo, hi, value, fill in (
                ("clean_low", "clean_high", "clean", "none"),
                ("corrupted_low", "corrupted_high", "corrupted", color),
            ):
                err = np.abs(rows[[lo, hi]].to_numpy(float).T - rows[value].to_numpy(float))
                ax.errorbar(rows[value], y, xerr=err, fmt=markers[model], color=color, mfc=fill, ms=5, lw=1)
            ax.hlines(y, rows["clean"], rows["corrupted"], color=color, lw=0.8, alpha=0.6)
        ax.set_yticks(np.arange(len(findings)), [describe(f) for f in findings])
        ax.set_xlabel(metric_label(metric))
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # shared by every panel: the first finding on top
    handles = [Line2D([], [], color=colors[m], marker=markers[m], ls="", label=m) for m in models]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(models), 5), frameon=False, fontsize=8)
    fig.suptitle(f"Per finding: {DIRECTIONS.get(direction, direction)}, {relevance} relevance", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return fig


def plot_findings(
    table: pd.DataFrame,
    corruptions: Mapping[str, Mapping[str, Any]],
    out_paths: Sequence[PathLike] | PathLike,
    *,
    metric: str,
    direction: str,
    relevance: str,
    chosen_levels: Mapping[str, float] | None = None,
) -> None:
    """Save the per-finding figure (:func:`_findings_figure`) of a ``findings.csv`` table."""
    _normalise_paths(out_paths)
    figure = _findings_figure(
        table, corruptions, metric=metric, direction=direction, relevance=relevance, chosen_levels=chosen_levels
    )
    save_figure(figure, out_paths)


# --------------------------------------------------------------------------------------------------
# Zero-shot classification
# --------------------------------------------------------------------------------------------------


def _classification_figure(table: pd.DataFrame, corruption: str, *, kind: str) -> Figure:
    """AUROC against level, a panel per finding and the macro average, a line per model with its 95% band."""
    from medret.classification import MACRO
    from medret.findings import describe

    sub = table[table["corruption"] == corruption]
    if sub.empty:
        fig = Figure(figsize=(6, 2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no zero-shot classification: the dataset has no finding to classify", ha="center")
        return fig
    findings = [MACRO, *[f for f in dict.fromkeys(sub["finding"]) if f != MACRO]]
    cols = min(4, len(findings))
    rows = -(-len(findings) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True).ravel()
    models = sorted(map(str, sub["model"].unique()))
    colors, markers = model_colors(models), _model_markers(models)
    for ax, finding in zip(axes, findings, strict=False):
        part = sub[sub["finding"] == finding]
        for model in models:
            line = part[part["model"] == model].sort_values("level")
            ax.plot(line["level"], line["value"], marker=markers[model], color=colors[model], ms=3, lw=1.2)
            ax.fill_between(line["level"], line["ci_low"], line["ci_high"], color=colors[model], alpha=CI_ALPHA, lw=0)
        ax.axhline(0.5, color="grey", ls="--", lw=0.8)
        n = part[["n_positive", "n_negative"]].iloc[0]
        title = (
            f"macro average ({len(findings) - 1} findings)"
            if finding == MACRO
            else f"{describe(finding)} ({int(n['n_positive'])}+ / {int(n['n_negative'])}−)"
        )
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0.3, 1.0)
        ax.grid(alpha=0.3)
    for ax in axes[len(findings) :]:
        ax.axis("off")
    for i, ax in enumerate(axes[: len(findings)]):
        if i + cols >= len(findings):  # the lowest panel of its column
            ax.set_xlabel(level_label(kind), fontsize=8)
            ax.tick_params(labelbottom=True)
    for ax in axes[::cols]:
        ax.set_ylabel("AUROC")
    handles = [Line2D([], [], color=colors[m], marker=markers[m], label=m) for m in models]
    handles.append(Line2D([], [], color="grey", ls="--", label="chance"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=8)
    fig.suptitle(f"{corruption}: zero-shot classification, AUROC per finding", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    return fig


def plot_classification(
    table: pd.DataFrame, corruption: str, out_paths: Sequence[PathLike] | PathLike, *, kind: str = "occlusion"
) -> None:
    """Save the AUROC-against-level figure of one corruption (:func:`_classification_figure`)."""
    _normalise_paths(out_paths)
    save_figure(_classification_figure(table, corruption, kind=kind), out_paths)
