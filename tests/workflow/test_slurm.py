"""The workflow on a real one-node SLURM cluster, through ``profiles/slurm``.

A session fixture installs Debian's slurm-wlm and munge if they are missing, starts munged,
slurmctld and slurmd for one node on 127.0.0.1 with a fake GPU, and always stops them again. The
reduced demo then runs through the profile end to end: every job but the local aggregation steps
is a SLURM job, and the results equal a local run's. Adding a model then submits only its jobs.

The test skips, saying why, only where it cannot run: not root, no apt-get, the packages not
installable, an existing SLURM configuration on the machine, or daemons that do not come up (their
log tails are in the reason). Select it alone with ``pytest -m slurm``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from helpers.workflow import MINI, ROOT, planned_jobs, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

PACKAGES = ("slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("sbatch", "squeue", "sinfo", "scancel", "slurmctld", "slurmd", "munged", "munge", "unmunge")
#: The plugin deletes SLURM_CONF inside jobs, so the configuration must be at the default path.
ETC = Path("/etc/slurm")
#: First line of every file this test writes to /etc/slurm; a file without it is never touched.
MARKER = "# Written by medret tests/workflow/test_slurm.py for a throw-away test cluster; removed afterwards."
#: Plugin settings for a cluster without accounting, polled every second instead of every 40 s.
SLURM_ARGS = (
    "--workflow-profile",
    str(ROOT / "profiles" / "slurm"),
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "1",
)

SLURM_CONF = """\
{marker}
ClusterName=medret-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={run}/state
SlurmdSpoolDir={run}/spool
SlurmctldPidFile={run}/slurmctld.pid
SlurmdPidFile={run}/slurmd.pid
SlurmctldLogFile={run}/slurmctld.log
SlurmdLogFile={run}/slurmd.log
# Containers have neither systemd nor writable cgroups: track processes by parentage.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd, so no sacct: Snakemake polls squeue, which shows finished jobs for MinJobAge s.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=900
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
GresTypes=gpu
# The node claims more than the machine has (config_overrides makes slurmd believe it): memory
# enough for the rules' requests, sized for real models (not consumable here, CR_Core), and CPUs
# and GPUs enough to run a stage's jobs side by side, as a cluster would.
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=65536 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
#: Two fake GPUs: a gres needs device files; SLURM sets CUDA_VISIBLE_DEVICES to its index in a job.
GRES_CONF = "{marker}\nNodeName={host} Name=gpu File=/dev/null\nNodeName={host} Name=gpu File=/dev/zero\n"
#: Nothing is constrained through cgroups (there are none to use).
CGROUP_CONF = "{marker}\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n"


def _run(cmd: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def _tail(path: Path, lines: int = 15) -> str:
    """The last lines of a daemon log, for a skip or failure reason."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"--- {path}: {exc.strerror}"
    return f"--- {path}:\n" + "\n".join(text)


def _ensure_packages() -> None:
    """apt-get install the SLURM and munge packages when a command is missing, or skip."""
    if all(shutil.which(c) for c in COMMANDS):
        return
    if not shutil.which("apt-get"):
        pytest.skip(f"SLURM test: {', '.join(PACKAGES)} are not installed and there is no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    proc = _run(install, timeout=900, env=env)
    if proc.returncode != 0:  # stale package lists: refresh once
        _run(["apt-get", "update", "-q"], timeout=300, env=env)
        proc = _run(install, timeout=900, env=env)
    if proc.returncode != 0 or not all(shutil.which(c) for c in COMMANDS):
        pytest.skip(f"SLURM test: `{' '.join(install)}` failed:\n{(proc.stdout + proc.stderr)[-1500:]}")


def _munge_works() -> bool:
    cred = _run(["munge", "-n"], timeout=10)
    return cred.returncode == 0 and _run(["unmunge"], timeout=10, input=cred.stdout).returncode == 0


def _start_munged() -> subprocess.Popen | None:
    """Start munged as user munge unless one already answers; return the process we started."""
    if _munge_works():
        return None
    munge = pwd.getpwnam("munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():  # the package's postinst normally creates it
        _run(["mungekey", "--create", "--keyfile", str(key)])
        os.chown(key, munge.pw_uid, munge.pw_gid)
    rundir = Path("/run/munge")  # made by systemd elsewhere
    rundir.mkdir(exist_ok=True)
    os.chown(rundir, munge.pw_uid, munge.pw_gid)
    proc = subprocess.Popen(
        ["munged", "--foreground", "--force"],
        user=munge.pw_uid,
        group=munge.pw_gid,
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(50):
        if _munge_works():
            return proc
        time.sleep(0.2)
    _stop([proc])
    pytest.skip("SLURM test: munged did not start\n" + _tail(Path("/var/log/munge/munged.log")))


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop the processes this test started (TERM, then KILL after 15 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _write_config(run: Path, host: str) -> list[Path]:
    """Write slurm.conf, gres.conf and cgroup.conf into /etc/slurm; return the files written."""
    ETC.mkdir(exist_ok=True)
    values = {"marker": MARKER, "host": host, "run": run, "cpus": max(4, os.cpu_count() or 1)}
    files = {"slurm.conf": SLURM_CONF, "gres.conf": GRES_CONF, "cgroup.conf": CGROUP_CONF}
    for name in files:
        path = ETC / name
        if path.exists() and not path.read_text(errors="replace").startswith(MARKER):
            pytest.skip(f"SLURM test: {path} exists and belongs to a real SLURM set-up; not replacing it")
    for name, template in files.items():
        (ETC / name).write_text(template.format(**values))
    return [ETC / name for name in files]


def _node_state() -> str:
    proc = _run(["sinfo", "--noheader", "--Node", "--format=%T"], timeout=10)
    return proc.stdout.strip() if proc.returncode == 0 else ""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[Path]:
    """A one-node SLURM cluster (controller and compute node on 127.0.0.1, one fake GPU).

    Yields the directory holding its state and daemon logs.
    """
    if os.geteuid() != 0:
        pytest.skip("SLURM test: needs root to install slurm-wlm and munge and to start their daemons")
    _ensure_packages()
    run = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]  # must be `hostname -s`, which slurmd registers as
    for sub in ("state", "spool"):
        (run / sub).mkdir()
    procs: list[subprocess.Popen] = []
    written: list[Path] = []
    try:
        written = _write_config(run, host)
        munged = _start_munged()
        procs += [munged] if munged else []
        for daemon in ("slurmctld", "slurmd"):
            with open(run / f"{daemon}.out", "w") as out:
                procs.append(subprocess.Popen([daemon, "-D"], stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while _node_state() != "idle":
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = [_tail(run / f"{d}.{ext}") for d in ("slurmctld", "slurmd") for ext in ("out", "log")]
                pytest.skip(f"SLURM test: the node did not become idle (state {_node_state()!r})\n" + "\n".join(logs))
            time.sleep(0.5)
        yield run
    finally:
        if procs:
            _run(["scancel", "--user", pwd.getpwuid(os.geteuid()).pw_name])  # the test cluster's own jobs
        _stop(procs)
        for path in written:
            path.unlink(missing_ok=True)


def slurm_jobs() -> pd.DataFrame:
    """Every job the test cluster knows (finished ones stay for MinJobAge), one row each.

    ``run`` is the job name, which the plugin sets to the Snakemake run's id; ``rule`` and
    ``wildcards`` come from the comment it sets (``rule_<rule>_wildcards_<values>``); ``gpus`` is
    the number of GPUs SLURM allocated.
    """
    proc = _run(["scontrol", "--details", "--oneliner", "show", "job"])
    assert proc.returncode == 0 or "No jobs" in proc.stdout + proc.stderr, proc.stderr
    rows = []
    for line in proc.stdout.splitlines():
        if not line.startswith("JobId="):
            continue
        job = dict(re.findall(r"(\w+)=(\S*)", line))
        comment = re.fullmatch(r"rule_(\w+?)(?:_wildcards_(.*))?", job.get("Comment", ""))
        rule, wildcards = comment.groups("") if comment else (job.get("Comment", ""), "")
        gpus = re.fullmatch(r"gpu:(\d+)", job.get("JOB_GRES", ""))  # what SLURM allocated
        rows.append((int(job["JobId"]), job["JobName"], rule, wildcards, job["JobState"], int(gpus[1]) if gpus else 0))
    columns = ["job_id", "run", "rule", "wildcards", "state", "gpus"]
    return pd.DataFrame(rows, columns=columns).sort_values("job_id", ignore_index=True)


def submitted_by(run: Callable[[], object]) -> pd.DataFrame:
    """The SLURM jobs that appear while ``run()`` runs."""
    before = set(slurm_jobs()["job_id"])
    run()
    jobs = slurm_jobs()
    return jobs[~jobs["job_id"].isin(before)]


def rule_counts(jobs: pd.DataFrame) -> dict[str, int]:
    return dict(collections.Counter(jobs["rule"]))


def local_rules() -> set[str]:
    """Rules that run on the submit host: those marked ``localrule: True``, and the target ``all``."""
    found = {"all"}
    for path in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"^rule ", path.read_text(), flags=re.M)[1:]:
            if re.search(r"^\s+localrule:\s*True", block, re.M):
                found.add(block.split(":", 1)[0])
    return found


@pytest.fixture(scope="session")
def slurm_demo(slurm_cluster, tmp_path_factory) -> tuple[Path, dict[str, int], pd.DataFrame, Path]:
    """The reduced demo run through profiles/slurm, and beside it the same demo run locally.

    Returns the SLURM run's directory, the jobs Snakemake planned for it, the SLURM jobs it
    submitted and the local run's directory. The local run overlaps the SLURM run, which mostly
    waits for status checks.
    """
    workdir, localdir = tmp_path_factory.mktemp("slurm-demo"), tmp_path_factory.mktemp("local-demo")
    plan = planned_jobs(workdir, MINI)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        local = pool.submit(snakemake, localdir, MINI)
        jobs = submitted_by(lambda: snakemake(workdir, MINI, *SLURM_ARGS))
        local.result()
    return workdir, plan, jobs, localdir


def test_demo_runs_as_slurm_jobs(slurm_demo):
    workdir, plan, jobs, _ = slurm_demo
    # Every planned job but the light local aggregation steps (summary, plots, all) was one SLURM
    # job of this run, and completed; the metrics' bootstrap is a cluster job too.
    local = local_rules()
    assert {"summary", "plot_results", "all"} <= local
    assert not {"train_model", "embed_images", "metrics"} & local
    assert rule_counts(jobs) == {rule: n for rule, n in plan.items() if rule not in local}
    assert jobs["run"].nunique() == 1 and set(jobs["state"]) == {"COMPLETED"}
    # The rules' portable `gpu: 1` (image embedding, one job per corruption, and training) became
    # one GPU that SLURM allocated to each of those jobs, and to no other job.
    n_embed, n_train = len(MINI["models"]) * len(MINI["corruptions"]), len(MINI["models"])
    assert jobs.loc[jobs["rule"] == "embed_images", "gpus"].tolist() == [1] * n_embed
    assert jobs.loc[jobs["rule"] == "train_model", "gpus"].tolist() == [1] * n_train
    assert jobs["gpus"].sum() == n_embed + n_train
    assert planned_jobs(workdir, MINI) == {}, "a second run has nothing to do"
    assert not list(workdir.rglob("*.partial"))


def test_slurm_results_equal_the_local_run(slurm_demo):
    workdir, *_, localdir = slurm_demo
    slurm_res, local_res = workdir / "results" / "demo", localdir / "results" / "demo"
    # Every result table, text summary and rank file of the SLURM run equals the local run's.
    patterns = ("*.csv", "*.md", "ranks/*/*.parquet")
    names = {str(p.relative_to(slurm_res)) for pattern in patterns for p in slurm_res.glob(pattern)}
    assert {"metrics.csv", "robustness.csv", "ranks/local/occlusion.parquet"} <= names
    for name in sorted(names):
        if name.endswith((".csv", ".parquet")):
            read = pd.read_parquet if name.endswith(".parquet") else pd.read_csv
            pd.testing.assert_frame_equal(read(slurm_res / name), read(local_res / name), obj=name)
        elif name.endswith(".md"):
            assert (slurm_res / name).read_text() == (local_res / name).read_text(), name
    assert len(pd.read_csv(slurm_res / "metrics.csv")) > 0
    for corruption in MINI["corruptions"]:
        for plot in ("recall", "robustness", "examples"):
            assert (slurm_res / "plots" / f"{corruption}_{plot}.png").read_bytes()[:4] == b"\x89PNG"


def test_adding_a_model_submits_only_its_jobs(slurm_demo, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(slurm_demo[0], workdir, symlinks=True)  # keeps mtimes: the copy is up to date
    # A model evaluated from an existing checkpoint (here the trained `local` one's): adding it
    # must submit its embeddings (reports, prompts, images), ranks and the dataset-wide tables that read
    # them, and nothing else; the light aggregation steps run locally.
    config = copy.deepcopy(MINI)
    config["models"]["local-copy"] = {"family": "local", "checkpoint": "results/models/local/checkpoint.pt"}
    jobs = submitted_by(lambda: snakemake(workdir, config, *SLURM_ARGS))
    n_corruptions = len(MINI["corruptions"])
    tables = {"metrics": 1, "findings": 1, "placement": 1, "classification": 1}
    model = {"embed_texts": 1, "embed_prompts": 1, "embed_images": n_corruptions, "ranks": n_corruptions}
    assert rule_counts(jobs) == {**model, **tables}
    model_jobs = jobs[~jobs["rule"].isin(list(tables))]
    assert all("local-copy" in w.split("_") for w in model_jobs["wildcards"]), jobs
    assert jobs["run"].nunique() == 1 and set(jobs["state"]) == {"COMPLETED"}
    # Same weights, same queries: the new model's rows equal the trained model's.
    metrics = pd.read_csv(workdir / "results" / "demo" / "metrics.csv")
    new, old = (
        metrics[metrics["model"] == m].drop(columns="model").reset_index(drop=True) for m in ("local-copy", "local")
    )
    assert len(new) > 0
    pd.testing.assert_frame_equal(new, old)
    zero_shot = pd.read_csv(workdir / "results" / "demo" / "classification.csv")
    new, old = (
        zero_shot[zero_shot["model"] == m].drop(columns="model").reset_index(drop=True) for m in ("local-copy", "local")
    )
    assert len(new) > 0
    pd.testing.assert_frame_equal(new, old)


def test_a_job_that_fails_on_bad_input_is_submitted_once(slurm_demo, tmp_path):
    """No resubmission of a medret input error (it would fail again; the profile used to resubmit it once)."""
    workdir = tmp_path / "run"
    shutil.copytree(slurm_demo[0], workdir, symlinks=True)
    text = workdir / "results" / "demo" / "embeddings" / "local" / "text.h5"
    text.write_bytes(text.read_bytes()[: text.stat().st_size // 2])  # damaged: the ranks jobs stop on it
    target = "results/demo/ranks/local/occlusion.parquet"
    jobs = submitted_by(lambda: snakemake(workdir, MINI, *SLURM_ARGS, target, "--forcerun", target, check=False))
    assert rule_counts(jobs) == {"ranks": 1}, jobs
    assert set(jobs["state"]) == {"FAILED"}
    log = (workdir / "logs" / "ranks" / "demo" / "local" / "occlusion.log").read_text()
    assert log.startswith(f"medret error: {text.relative_to(workdir)}: ")
