"""Tests for medret.plots: figures are built from synthetic tables and written atomically."""

from __future__ import annotations

import importlib
import struct
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from medret.errors import MedretError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODELS = ("local-occaug", "local")  # deliberately unsorted: colours must follow sorted names
LEVELS = np.round(np.arange(0.0, 1.01, 0.1), 2)
CORRUPTION = "occlusion_center"


@pytest.fixture(scope="session")
def plots(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """``medret.plots``, imported with MPLCONFIGDIR pointing at a temporary directory.

    matplotlib fixes its config/cache directory when first imported, so the variable must be set
    before the import (a function-scoped monkeypatch after a module-level import would be too late).
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("mplconfig")))
        yield importlib.import_module("medret.plots")


def make_metrics(n_queries: int = 200) -> pd.DataFrame:
    """Tidy metrics table: 2 models x 2 directions x (R@1, R@5, R@10, MRR) x 11 levels."""
    rows = []
    for i, model in enumerate(MODELS):
        for direction in ("i2t", "t2i"):
            for metric in ("R@1", "R@5", "R@10", "MRR"):
                k = int(metric[2:]) if metric.startswith("R@") else 1
                scale = 1.0 if metric.startswith("R@") else 0.01
                chance = 100 * k / n_queries * scale
                for level in LEVELS:
                    value = scale * (chance / scale + (80 - 10 * i) * (1 - level) ** (1 + i))
                    rows.append(
                        {
                            "dataset": "toy",
                            "model": model,
                            "corruption": CORRUPTION,
                            "level": level,
                            "relevance": "exact",
                            "direction": direction,
                            "metric": metric,
                            "value": value,
                            "ci_low": value * 0.9,
                            "ci_high": value * 1.1,
                            "n_queries": n_queries,
                            "chance": chance,
                            "popularity": 2 * chance if direction == "i2t" else np.nan,
                        }
                    )
    return pd.DataFrame(rows)


def make_robustness() -> pd.DataFrame:
    """Robustness table: auc/nauc (level NaN) and relative_drop for levels > 0, R@5 only."""
    rows = []
    base = {
        "dataset": "toy",
        "corruption": CORRUPTION,
        "relevance": "exact",
        "metric": "R@5",
    }
    for i, model in enumerate(MODELS):
        for direction in ("i2t", "t2i"):
            for quantity, value in (("auc", 40.0 - 10 * i), ("nauc", 0.5 - 0.1 * i)):
                rows.append(
                    {
                        **base,
                        "model": model,
                        "direction": direction,
                        "quantity": quantity,
                        "level": np.nan,
                        "value": value,
                        "ci_low": value * 0.9,
                        "ci_high": value * 1.1,
                    }
                )
            for level in LEVELS[1:]:
                drop = 1 - (1 - level) ** (1 + i)
                rows.append(
                    {
                        **base,
                        "model": model,
                        "direction": direction,
                        "quantity": "relative_drop",
                        "level": level,
                        "value": drop,
                        "ci_low": drop - 0.05,
                        "ci_high": min(drop + 0.05, 1.0),
                    }
                )
    return pd.DataFrame(rows)


def make_images(n_examples: int = 2, levels: tuple[float, ...] = (0.0, 0.3, 1.0)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n_examples, len(levels), 32, 40), dtype=np.uint8)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------------------------
# Recall curves
# ------------------------------------------------------------------------------------------------


def test_recall_curves_writes_png_and_pdf(plots: ModuleType, tmp_path: Path) -> None:
    png, pdf = tmp_path / "fig" / "recall.png", tmp_path / "fig" / "recall.pdf"
    plots.plot_recall_curves(make_metrics(), CORRUPTION, [png, str(pdf)])
    width, height = png_size(png)
    assert 800 <= width <= 3000 and 500 <= height <= 2500
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert leftovers(png.parent) == ["recall.pdf", "recall.png"]  # no .partial temporaries


def test_recall_figure_structure(plots: ModuleType) -> None:
    fig = plots._recall_figure(make_metrics(), CORRUPTION)
    axes = fig.get_axes()
    assert len(axes) == 2 * 3
    for ax in axes:
        labels = [line.get_label() for line in ax.get_lines()]
        baseline = ["popularity baseline"] if ax.get_title().startswith("image") else []
        assert sorted(labels) == sorted([*MODELS, "chance", *baseline])
        assert ax.get_ylim() == (0.0, 100.0)
        assert ax.get_ylabel() in {"Recall@1 (%)", "Recall@5 (%)", "Recall@10 (%)"}
        assert ax.get_legend() is None  # legend is figure-level, never over the data
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "image → report: R@1" and titles[-1] == "report → image: R@10"
    bottom = axes[-3:]
    assert all(ax.get_xlabel() == "occlusion level (fraction of image area)" for ax in bottom)
    [legend] = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[:2] == sorted(MODELS) and "chance" in texts
    suptitle = fig.get_suptitle()
    assert "toy" in suptitle and CORRUPTION in suptitle and "n = 200 queries" in suptitle


def test_label_relevance_rows_get_panels_of_their_own(plots: ModuleType) -> None:
    exact = make_metrics()
    both = pd.concat([exact, exact.assign(relevance="labels", value=exact["value"] / 2)], ignore_index=True)
    fig = plots._recall_figure(both, CORRUPTION, ["R@5"])
    titles = [ax.get_title() for ax in fig.get_axes()]
    assert titles == [
        "image → report: R@5",
        "report → image: R@5",
        "image → report, label match: R@5",
        "report → image, label match: R@5",
    ]
    first, third = fig.get_axes()[0], fig.get_axes()[2]
    assert np.allclose(third.get_lines()[0].get_ydata(), first.get_lines()[0].get_ydata() / 2)


def test_recall_colours_follow_sorted_model_names(plots: ModuleType) -> None:
    fig = plots._recall_figure(make_metrics(), CORRUPTION, ["R@5"])
    colours = plots.model_colors(MODELS)
    assert list(colours) == sorted(MODELS)
    for ax in fig.get_axes():
        for line in ax.get_lines():
            if line.get_label() in colours:
                assert tuple(line.get_color()) == colours[line.get_label()]


def test_recall_other_corruption_and_metrics(plots: ModuleType) -> None:
    metrics = make_metrics().assign(corruption="strong_blur")
    fig = plots._recall_figure(metrics, "strong_blur", ["R@5", "MRR"], kind="gaussian_noise")
    axes = fig.get_axes()
    assert len(axes) == 4
    assert axes[-1].get_xlabel() == "gaussian noise severity (0 = clean)"
    assert axes[1].get_ylabel() == "MRR" and axes[1].get_ylim() == (0.0, 1.0)


def test_recall_single_direction(plots: ModuleType) -> None:
    metrics = make_metrics()
    fig = plots._recall_figure(metrics[metrics["direction"] == "t2i"], CORRUPTION)
    assert len(fig.get_axes()) == 3
    assert fig.get_axes()[0].get_title().startswith("report → image")


def test_recall_legend_wraps_long_names(plots: ModuleType) -> None:
    metrics = make_metrics()
    metrics["model"] = metrics["model"] + "-with-a-very-long-descriptive-checkpoint-name"
    fig = plots._recall_figure(metrics, CORRUPTION)
    renderer = fig.canvas.get_renderer()
    assert fig.legends[0].get_window_extent(renderer).width <= fig.bbox.width


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda df: df.drop(columns=["ci_high"]), "missing column(s) ci_high"),
        (lambda df: df.iloc[0:0], "no rows for corruption 'occlusion_center'"),
        (lambda df: df.assign(corruption="gaussian_blur"), "no rows for corruption 'occlusion_center'"),
        (lambda df: df[df["metric"] != "R@10"], "no rows for metric(s) R@10"),
        (lambda df: pd.concat([df, df.iloc[:1]]), "duplicate rows"),
        (lambda df: df.assign(direction="x2y"), "unknown direction(s) x2y"),
        (lambda df: pd.concat([df, df.assign(dataset="other")]), "mixes datasets"),
        (lambda df: df.assign(value="high"), "non-numeric"),
    ],
)
def test_recall_bad_input_raises_and_writes_nothing(plots: ModuleType, tmp_path: Path, mutate, message: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(MedretError) as info:
        plots.plot_recall_curves(mutate(make_metrics()), CORRUPTION, [out / "r.png", out / "r.pdf"])
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not out.exists() or leftovers(out) == []


def test_bad_suffix_raises_before_writing(plots: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(MedretError, match="unsupported suffix"):
        plots.plot_recall_curves(make_metrics(), CORRUPTION, [tmp_path / "r.png", tmp_path / "r.docx"])
    with pytest.raises(MedretError, match="no output path"):
        plots.plot_recall_curves(make_metrics(), CORRUPTION, [])
    assert leftovers(tmp_path) == []


def test_failed_save_leaves_no_file(plots: ModuleType, tmp_path: Path, monkeypatch) -> None:
    """If rendering the second file fails, neither output (nor any temporary) is left."""
    from matplotlib.figure import Figure

    original = Figure.savefig

    def flaky(self, fname, *args, **kwargs):
        if kwargs.get("format") == "pdf":
            raise RuntimeError("disk full")
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.plot_recall_curves(make_metrics(), CORRUPTION, [tmp_path / "r.png", tmp_path / "r.pdf"])
    assert leftovers(tmp_path) == []


def test_existing_output_replaced_only_on_success(plots: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "r.png"
    out.write_bytes(b"old")
    with pytest.raises(MedretError):
        plots.plot_recall_curves(make_metrics().drop(columns=["chance"]), CORRUPTION, [out])
    assert out.read_bytes() == b"old"
    plots.plot_recall_curves(make_metrics(), CORRUPTION, out)  # a single path is accepted too
    assert out.read_bytes()[:8] == PNG_SIGNATURE


# ------------------------------------------------------------------------------------------------
# Robustness
# ------------------------------------------------------------------------------------------------


def test_robustness_writes_files(plots: ModuleType, tmp_path: Path) -> None:
    png, pdf = tmp_path / "rob.png", tmp_path / "rob.pdf"
    plots.plot_robustness(make_robustness(), CORRUPTION, [png, pdf])
    width, height = png_size(png)
    assert 800 <= width <= 3000 and 300 <= height <= 2000
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert leftovers(tmp_path) == ["rob.pdf", "rob.png"]


def test_robustness_figure_structure(plots: ModuleType) -> None:
    fig = plots._robustness_figure(make_robustness(), CORRUPTION, "R@5")
    ax_drop, ax_auc = fig.get_axes()
    labels = sorted(line.get_label() for line in ax_drop.get_lines())
    assert labels == sorted(f"{m} ({d})" for m in MODELS for d in ("image → report", "report → image"))
    assert ax_drop.get_ylabel() == "relative drop in Recall@5 (%)"
    assert ax_drop.get_xlabel() == "occlusion level (fraction of image area)"
    # relative drop is plotted in percent
    top_line = max(ax_drop.get_lines(), key=lambda line: np.nanmax(line.get_ydata()))
    assert np.nanmax(top_line.get_ydata()) == pytest.approx(100.0)
    assert len(ax_auc.patches) == len(MODELS) * 2  # one bar per model and direction
    heights = sorted(round(p.get_height(), 6) for p in ax_auc.patches)
    assert heights == [0.4, 0.4, 0.5, 0.5]
    assert [t.get_text() for t in ax_auc.get_xticklabels()] == ["image →\nreport", "report →\nimage"]
    assert "nAUC" in ax_auc.get_ylabel()
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(MODELS) <= set(texts) and "image → report" in texts


@pytest.mark.parametrize(
    ("mutate", "kwargs", "message"),
    [
        (lambda df: df.drop(columns=["quantity"]), {}, "missing column(s) quantity"),
        (lambda df: df.iloc[0:0], {}, "no rows for corruption"),
        (lambda df: df, {"metric": "R@1"}, "no rows for metric 'R@1'"),
        (lambda df: df[df["quantity"] != "nauc"], {}, "no 'nauc' rows"),
        (lambda df: df[df["quantity"] != "relative_drop"], {}, "no 'relative_drop' rows"),
    ],
)
def test_robustness_bad_input(plots: ModuleType, tmp_path: Path, mutate, kwargs, message: str) -> None:
    with pytest.raises(MedretError) as info:
        plots.plot_robustness(mutate(make_robustness()), CORRUPTION, [tmp_path / "rob.png"], **kwargs)
    assert message in str(info.value)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# Example panel
# ------------------------------------------------------------------------------------------------


def test_examples_panel(plots: ModuleType, tmp_path: Path) -> None:
    levels = (0.0, 0.3, 1.0)
    images = make_images(2, levels)
    fig = plots._examples_figure(images, levels, ["p10/s1", "p11/s2"], title="examples")
    axes = fig.get_axes()
    assert len(axes) == 2 * 3
    assert [ax.get_title() for ax in axes[:3]] == ["level 0.0", "level 0.3", "level 1.0"]
    assert [axes[0].get_ylabel(), axes[3].get_ylabel()] == ["p10/s1", "p11/s2"]
    for ax in axes:
        assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []
        [im] = ax.get_images()
        assert im.get_clim() == (0, 255)
    np.testing.assert_array_equal(axes[4].get_images()[0].get_array(), images[1, 1])

    out = tmp_path / "ex.png"
    plots.plot_examples(images, levels, ["p10/s1", "p11/s2"], [out], title="examples")
    width, height = png_size(out)
    assert width > 300 and height > 200


@pytest.mark.parametrize(
    ("images", "levels", "ids", "message"),
    [
        (make_images(2, (0.0, 0.5)), (0.0, 0.5, 1.0), ["a", "b"], "3 level(s)"),
        (make_images(2, (0.0, 0.5)), (0.0, 0.5), ["a"], "1 id(s)"),
        (make_images(1, (0.0,))[0], (0.0,), ["a"], "must have shape"),
        (make_images(1, (0.0,)).astype(float), (0.0,), ["a"], "uint8"),
        (make_images(1, (0.0,))[:0], (0.0,), [], "at least one id"),
    ],
)
def test_examples_bad_shape(plots: ModuleType, tmp_path: Path, images, levels, ids, message: str) -> None:
    with pytest.raises(MedretError) as info:
        plots.plot_examples(images, levels, ids, [tmp_path / "ex.png"], title="t")
    assert message in str(info.value)
    assert leftovers(tmp_path) == []
