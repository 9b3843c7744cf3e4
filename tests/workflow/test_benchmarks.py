"""Smoke runs of the benchmark scripts (``--quick``): they run end to end and both sides agree.

No timing is asserted here (speed belongs in ``benchmarks/``); what is checked is that each script
exits 0, which it does only when its two sides gave the same embeddings or ranks, and that it
wrote its table and record. The scripts run in this process (their imports are already paid for);
the scoring benchmark still runs each of its sides as a subprocess of the script, as it always does.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """Import a benchmark script as a module, with ``benchmarks/`` importable as the scripts expect."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str):
        for module in (name, "common"):
            monkeypatch.delitem(sys.modules, module, raising=False)
        return importlib.import_module(name)

    yield load
    for module in ("sweep", "embed", "scoring", "common"):
        sys.modules.pop(module, None)


def _record(out: Path, name: str) -> dict:
    assert (out / f"{name}.md").read_text().startswith("Benchmark (")
    return json.loads((out / f"{name}.json").read_text())


def test_sweep_quick(bench, tmp_path):
    assert bench("sweep").main(["--quick", "--out", str(tmp_path)]) == 0
    (row,) = _record(tmp_path, "sweep")["rows"]
    # 10 images × 3 levels × the demo's 2 models, on both sides; PIL vs tensor resizing differ slightly.
    assert (row["images"], row["conditions"], row["models"]) == (10, 3, 2)
    assert 0 < row["max_abs_diff"] <= 0.02
    assert not list(tmp_path.glob("work-*"))  # the working directories are cleaned up


def test_embed_quick(bench, tmp_path):
    assert bench("embed").main(["--quick", "--out", str(tmp_path)]) == 0
    rows = _record(tmp_path, "embed")["rows"]
    assert [r["model"] for r in rows] == ["local (demo CNN)", "tiny open_clip ViT"]
    # Same preprocessing, same batches: the stage gives exactly the bare forward pass's embeddings.
    assert all(r["max_abs_diff"] == 0.0 and r["conditions"] == 3 for r in rows)


def test_scoring_quick(bench, tmp_path):
    assert bench("scoring").main(["--quick", "--out", str(tmp_path)]) == 0
    rows = _record(tmp_path, "scoring")["rows"]
    assert [(r["side"], r["block"]) for r in rows] == [("full", 0), ("chunked", 4096)]
    assert all(r["identical"] for r in rows)
    assert list(tmp_path.iterdir()) != [] and not list(tmp_path.glob("*.npy"))


def test_full_matrix_reference_matches_the_library(bench):
    # The scoring benchmark's full-matrix side is a second implementation of the pessimistic rank:
    # a hand-checked case (scores 1, 0, 1, 0.6 for one query) pins it to the library's rule.
    import numpy as np

    from medret.retrieval import query_ranks

    scoring = bench("scoring")
    c = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    q = np.array([[1, 0]], dtype=np.float32)
    for relevant, expected in (([0], 2), ([0, 2], 1), ([3], 3), ([1], 4)):
        rel = [np.array(relevant)]
        assert scoring.full_matrix_ranks(q, c, rel, 1e-6).tolist() == [expected]
        assert query_ranks(q, c, rel).rank.tolist() == [expected]
