"""Shared test set-up: offline hubs, a private matplotlib cache, small fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

# Before anything imports matplotlib or a hub client.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "MPLCONFIGDIR" not in os.environ:  # xdist workers inherit the controller's directory
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="medret-mpl-")
    atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], ignore_errors=True)

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """``module_tmp(name)``: a new directory that is removed when the test module ends.

    For the full-size random checkpoints (0.2-1 GB each): kept for the whole session, they once
    held 5.6 GB of disk at the same time.
    """
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """The reduced demo (tests/configs/mini.yaml) run once per session through the real workflow.

    Shared by the workflow, reliability and cluster tests; tests that change it work on a copy.
    """
    from helpers.workflow import MINI, snakemake

    workdir = tmp_path_factory.mktemp("demo")
    snakemake(workdir, MINI)
    return workdir
