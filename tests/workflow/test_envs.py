"""The conda environments pin exactly what the project pins (pyproject and requirements.lock)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _pins(lines):
    out = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s;]+)\s*", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


PROJECT = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
LOCK = _pins((ROOT / "requirements.lock").read_text().splitlines())


def test_every_project_dependency_is_pinned_and_locked():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert len(PROJECT) == len(deps), "every dependency in pyproject.toml is pinned with =="
    for name, version in PROJECT.items():
        assert LOCK.get(name) == version, f"{name}: pyproject {version}, requirements.lock {LOCK.get(name)}"


@pytest.mark.parametrize("env", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_conda_env_pins_match_the_project(env):
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = _pins(pip)
    assert pins, f"{env.name} pins nothing"
    for name, version in pins.items():
        assert PROJECT.get(name, LOCK.get(name)) == version, f"{env.name}: {name}=={version} disagrees"


def test_every_rule_env_exists():
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for rel in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / rel).resolve().is_file(), f"{smk.name}: {rel} missing"


@pytest.mark.parametrize("env", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_conda_env_installs_nothing_by_path(env):
    """Snakemake copies the file into .snakemake/conda/ before `conda env create`, so a relative path
    (e.g. `-e ../`) would point into .snakemake/; the Snakefile puts the checkout's src/ on PYTHONPATH."""
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert not [line for line in pip if line.startswith(("-e", ".", "/")) or "/" in line], pip
    assert "PYTHONPATH=os.pathsep.join(dict.fromkeys(" in (ROOT / "Snakefile").read_text()
