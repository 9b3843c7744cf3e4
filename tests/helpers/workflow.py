"""The workflow CLI on the reduced demo: repository paths, the demo config, running and dry-running Snakemake."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MINI = yaml.safe_load((ROOT / "tests" / "configs" / "mini.yaml").read_text())


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the workflow CLI in ``workdir`` with ``config`` written beside it."""
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "MPLCONFIGDIR": str(workdir / ".mpl")}
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(path),
        "--cores",
        "2",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def planned_jobs(workdir: Path, config: dict) -> dict[str, int]:
    """Job counts of a dry-run ({} when there is nothing to do)."""
    proc = snakemake(workdir, config, "-n", "--quiet", "rules", "host")
    if "Nothing to be done" in proc.stdout:
        return {}
    table = re.search(r"Job stats:\njob\s+count\n[- ]+\n(.*?)\ntotal\s+\d+", proc.stdout, re.S)
    assert table, proc.stdout
    return {name: int(n) for name, n in (line.split() for line in table.group(1).splitlines())}
