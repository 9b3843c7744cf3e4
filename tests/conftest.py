"""Shared test set-up: offline hubs, a private matplotlib cache, small fixtures."""

from __future__ import annotations

import os
import tempfile

# Before anything imports matplotlib or a hub client.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="medret-mpl-"))

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """The reduced demo (tests/configs/mini.yaml) run once per session through the real workflow.

    Shared by the workflow, reliability and cluster tests; tests that change it work on a copy.
    """
    from test_workflow import MINI, snakemake

    workdir = tmp_path_factory.mktemp("demo")
    snakemake(workdir, MINI)
    return workdir
