"""Plug-ins from another package: a model family, a dataset adapter and a corruption kind, one declaration each.

``tests/plugin_pkg`` is a package as a researcher would write one (``pyproject.toml`` with entry points in
the groups ``medret.families``, ``medret.datasets`` and ``medret.corruptions``). The module-scoped fixture
builds and installs it with pip into a directory of its own, which the tests put on ``PYTHONPATH``: medret
then finds the plug-ins through the installed package's metadata, with no edit to medret.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.workflow import BIN, MINI, ROOT

pytestmark = pytest.mark.workflow

PACKAGE = ROOT / "tests" / "plugin_pkg"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plug-in package, built by pip from its pyproject and installed into its own directory."""
    source, target = tmp_path_factory.mktemp("plugin-src"), tmp_path_factory.mktemp("plugin-site")
    shutil.copytree(PACKAGE, source, dirs_exist_ok=True)  # pip builds in place: keep the checkout clean
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-cache-dir"]
    proc = subprocess.run(
        [*pip, "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(target.glob("medret_toy-0.1.0.dist-info/entry_points.txt"))
    return target


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}


def _python(site: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(site))


def test_installed_plugins_are_registered_and_listed(site):
    proc = _python(
        site,
        "import json\n"
        "from medret.models import list_families\n"
        "from medret.datasets import list_adapters\n"
        "from medret.corruptions import list_kinds\n"
        "print(json.dumps([sorted(list_families()), sorted(list_adapters()), sorted(list_kinds())]))\n",
    )
    assert proc.returncode == 0, proc.stderr
    families, adapters, kinds = json.loads(proc.stdout)
    assert "toy" in families and "toy_pairs" in adapters and "invert" in kinds
    listing = subprocess.run(
        [sys.executable, "-m", "medret", "families"], capture_output=True, text=True, env=_env(site)
    ).stdout
    assert (
        "toy: a toy dual encoder" in listing and "    grid: cells per side of the image features (default 4)" in listing
    )


def _config(data: Path) -> dict:
    """The reduced demo with the plug-ins: the toy_pairs adapter on the demo's pairs, the toy family beside the
    trained local model, and the invert corruption beside occlusion."""
    config = copy.deepcopy(MINI)
    config["models"]["toy"] = {"family": "toy", "grid": 3}
    config["corruptions"] = {"occlusion": MINI["corruptions"]["occlusion"], "invert": {"kind": "invert"}}
    return config


def _snakemake(run: Path, config: dict, site: Path, *args: str) -> subprocess.CompletedProcess:
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(run)]
    cmd += ["--configfile", str(run / "config.yaml"), "--cores", "2", *args]
    env = {**_env(site), "MPLCONFIGDIR": str(run / ".mpl")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=run)


def test_options_are_validated_like_built_in_ones(site, tmp_path):
    config = _config(tmp_path)
    for edit, message in [
        (lambda c: c["models"]["toy"].update(grid=0), r"config key models.toy.grid: 0 is less than the minimum of 1"),
        (
            lambda c: c["models"]["toy"].update(grd=3),
            "config key models.toy.grd: not an option of family toy (did you mean 'grid'?); remove it",
        ),
        (
            lambda c: c["corruptions"]["invert"].update(levels=[0, 0.5]),
            "config key corruptions.invert.levels.1: 0.5 is not of type 'integer'",
        ),
    ]:
        bad = copy.deepcopy(config)
        edit(bad)
        proc = _snakemake(tmp_path, bad, site, "-n")
        assert proc.returncode != 0
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("medret config error")]
        assert lines == [f"medret config error: {message}"], proc.stderr[-2000:]


def test_a_plugin_family_adapter_and_corruption_run_through_the_workflow(site, demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run, symlinks=True)  # the finished reduced demo: only the plug-ins' jobs are new
    pairs = pd.read_csv(run / "resources" / "demo" / "pairs.csv", dtype=str, keep_default_na=False)
    pairs["image"] = [str(run / "resources" / "demo" / p) for p in pairs["image"]]
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    config = _config(tmp_path)
    config["datasets"] = {"toy": {"adapter": "toy_pairs", "pairs": str(tmp_path / "pairs.csv"), "image_size": 64}}
    config["models"]["local"]["train"]["dataset"] = "toy"
    proc = _snakemake(run, config, site)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = pd.read_csv(run / "results" / "toy" / "metrics.csv")
    assert set(metrics["model"]) == {"local", "toy"} and set(metrics["corruption"]) == {"occlusion", "invert"}
    invert = metrics[(metrics["corruption"] == "invert") & (metrics["metric"] == "R@5")]
    assert sorted(invert["level"].unique()) == [0, 1, 2, 3, 4, 5]
    specs = pd.read_parquet(run / "results" / "toy" / "corruptions" / "invert.parquet")
    assert specs.loc[specs["level"] == 5, "strength"].eq(1.0).all()
    # The toy model's embeddings are its grid's 3 x 3 = 9 cell means; inverting every image changes them.
    import h5py

    with h5py.File(run / "results" / "toy" / "embeddings" / "toy" / "images" / "invert.h5") as f:
        emb = f["embeddings"][()]
    assert emb.shape[-1] == 9 and not (emb[0] == emb[-1]).all()
