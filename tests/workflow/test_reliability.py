"""Reliability: kill -9 and resume, damaged caches, provenance, the lock, unwritable outputs, progress in logs.

The workflow tests work on private copies of the session's finished reduced demo (``demo_run``;
``copytree`` keeps mtimes, so a copy is up to date) and compare with it: it is the uninterrupted
run. The library tests build their fixtures in ``tmp_path``.
"""

from __future__ import annotations

import collections
import copy
import errno
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from helpers.workflow import BIN, MINI, ROOT, planned_jobs, snakemake
from PIL import Image

from medret.config import validate_config
from medret.embeddings import EmbeddingFile, embed_images, embed_texts
from medret.errors import MedretError
from medret.imaging import ImageCache, build_image_cache
from medret.io import atomic_output, check_output_dir, read_table, seal_h5, set_attrs, write_table

pytestmark = pytest.mark.workflow

RES = Path("results") / "demo"
#: Seconds to wait for a job to reach a given point (the machine may be busy).
PATIENCE = 600


@pytest.fixture
def finished(demo_run, tmp_path) -> Path:
    """A private copy of the finished reduced demo."""
    run = tmp_path / "run"
    shutil.copytree(demo_run, run, symlinks=True)
    return run


def _command(workdir: Path, *args: str) -> list[str]:
    """The command line of helpers.workflow.snakemake, for a run started in the background."""
    return [
        str(BIN / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "2",
        *args,
    ]


def _start(workdir: Path, out: Path, *args: str) -> subprocess.Popen:
    """Start the workflow (config already written by a planned_jobs/snakemake call) in its own process group."""
    env = {**os.environ, "MPLCONFIGDIR": str(workdir / ".mpl")}
    with out.open("w") as log:  # a file, not a pipe: a full pipe would stall Snakemake
        return subprocess.Popen(
            _command(workdir, *args), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _processes(workdir: Path, marker: str = "") -> list[int]:
    """Pids of processes whose command line names ``workdir`` (and ``marker``): Snakemake and its jobs."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:  # exited meanwhile
                continue
            if str(workdir).encode() in cmdline and marker.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def _wait_for(condition: Callable[[], object], what: str, proc: subprocess.Popen | None = None) -> object:
    """Poll ``condition`` until it is truthy; fail if ``proc`` ends first or after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if value := condition():
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _finished_jobs(out: Path) -> collections.Counter:
    """Jobs a (killed) run reported as finished, by rule."""
    return collections.Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", out.read_text()))


def _leftovers(run: Path) -> list[Path]:
    """Temporaries and Snakemake incomplete-markers and locks that a clean state must not have."""
    marks = [*(run / ".snakemake" / "incomplete").glob("*"), *(run / ".snakemake" / "locks").glob("*")]
    return [*run.rglob("*.partial"), *marks]


def _same_config_second_name() -> dict:
    """The reduced demo plus ``local-copy``: the trained ``local`` weights under a second name.

    Its ranks and metrics must equal ``local``'s exactly, which makes the finished demo the
    reference for everything the new model computes.
    """
    config = copy.deepcopy(MINI)
    config["models"]["local-copy"] = {"family": "local", "checkpoint": "results/models/local/checkpoint.pt"}
    return config


def _assert_same_results(run: Path, reference: Path) -> None:
    """``local-copy``'s rank tables and metrics equal ``local``'s in the uninterrupted ``reference`` run."""
    for corruption in MINI["corruptions"]:
        got, _ = read_table(run / RES / "ranks" / "local-copy" / f"{corruption}.parquet")
        want, _ = read_table(reference / RES / "ranks" / "local" / f"{corruption}.parquet")
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    want = pd.read_csv(reference / RES / "metrics.csv")
    keys = ["corruption", "level", "relevance", "direction", "metric"]
    metrics = pd.read_csv(run / RES / "metrics.csv")
    assert set(metrics["model"]) == {"local", "local-copy"}
    for model in ("local", "local-copy"):
        got = metrics[metrics["model"] == model].assign(model="local")
        pd.testing.assert_frame_equal(
            got.sort_values(keys).reset_index(drop=True),
            want.sort_values(keys).reset_index(drop=True),
            check_exact=True,
        )


# --------------------------------------------------------------------------------------------
# kill -9 and resume


def test_kill_9_mid_embedding_then_resume_recomputes_only_the_rest(finished, demo_run, tmp_path):
    """kill -9 of the whole run mid-embedding, then of Snakemake alone; the resumed run equals an uninterrupted one."""
    run, config = finished, _same_config_second_name()
    assert "rerun-incomplete: true" in (ROOT / "profiles" / "default" / "config.yaml").read_text()
    before = collections.Counter(planned_jobs(run, config))
    assert before["embed_texts"] == 1 and before["embed_images"] == 2 and "train_model" not in before
    logs = run / "logs" / "embed_images" / "demo" / "local-copy"

    # 1. The process group (Snakemake and the job) is killed while the first image embedding runs.
    proc = _start(run, tmp_path / "run1.out", str(RES / "metrics.csv"))
    try:
        _wait_for(lambda: list(logs.glob("*.log")), "an embed_images job to start", proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_for(lambda: not _processes(run), "the killed processes to go")
    done = _finished_jobs(tmp_path / "run1.out")
    assert "embed_images" not in done
    # The lock is left behind (the next run would say so, see the lock test): remove it as a user would.
    assert list((run / ".snakemake" / "locks").iterdir())
    snakemake(run, config, "--unlock")
    after_kill = before - done
    assert planned_jobs(run, config) == dict(after_kill), "only the unfinished jobs are planned"

    # 2. Snakemake alone is killed when the next embedding starts; the orphaned job finishes its output,
    # which Snakemake still has marked incomplete (profile: rerun-incomplete), so it is redone.
    started = time.time()
    proc = _start(run, tmp_path / "run2.out", str(RES / "metrics.csv"))
    try:
        log = _wait_for(
            lambda: [p for p in logs.glob("*.log") if p.stat().st_mtime >= started], "a new embedding", proc
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_for(lambda: not _processes(run), "the orphaned job to finish")
    orphan = run / RES / "embeddings" / "local-copy" / "images" / f"{log[0].stem}.h5"
    assert orphan.is_file(), "the orphaned job completed its output"
    assert list((run / ".snakemake" / "incomplete").iterdir()), "Snakemake marked it incomplete"
    done = _finished_jobs(tmp_path / "run2.out")

    # 3. As a user: the next run meets the lock; the README's recovery commands, run literally, resume it.
    locked = _readme_line(run, "snakemake --cores all")
    assert locked.returncode != 0 and "Directory cannot be locked" in locked.stderr
    unlock, resume = _readme_blocks("Recovery")[1]
    assert unlock == "snakemake --unlock" and resume == "snakemake --cores all"
    assert _readme_line(run, unlock).returncode == 0
    after_orphan = after_kill - done
    assert after_orphan["embed_images"] >= 1
    assert planned_jobs(run, config) == dict(after_orphan)
    proc = _readme_line(run, resume)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_results(run, demo_run)
    assert not _leftovers(run)


def _readme_blocks(title: str) -> list[list[str]]:
    """The command lines of each fenced block in the section ``### title`` of docs/running.md (linked from the
    README as its recovery instructions)."""
    text = (ROOT / "docs" / "running.md").read_text(encoding="utf-8")
    section = re.split(r"\n#{2,3} ", text.split(f"\n### {title}\n", 1)[1], maxsplit=1)[0]
    return [
        [ln.strip() for ln in block.splitlines() if ln.strip()] for block in re.findall(r"```\n(.*?)```", section, re.S)
    ]


def _readme_line(run: Path, line: str) -> subprocess.CompletedProcess:
    """One README command line in ``run``: ``snakemake`` is this checkout's, on the run's config (as _command)."""
    tokens = shlex.split(line, comments=True)
    env = {**os.environ, "MPLCONFIGDIR": str(run / ".mpl")}
    cmd = _command(run, *tokens[1:]) if tokens[0] == "snakemake" else tokens
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=run)


#: An artifact of every kind, by the rule that makes it (the mini demo's names).
ARTIFACTS = {
    "manifest": "results/demo/manifest.parquet",
    "corpus": "results/demo/corpus.parquet",
    "image_cache": "results/demo/images/eval.h5",
    "corruption_specs": "results/demo/corruptions/noise.parquet",
    "train_model": "results/models/local/checkpoint.pt",
    "embed_texts": "results/demo/embeddings/local/text.h5",
    "embed_images": "results/demo/embeddings/local/images/occlusion.h5",
    "ranks": "results/demo/ranks/local/noise.parquet",
    "metrics": "results/demo/metrics.csv",
}


def test_a_deleted_artifact_of_any_kind_is_planned_again_with_what_depends_on_it(finished):
    run = finished
    for rule, artifact in ARTIFACTS.items():
        aside = run / "aside"
        (run / artifact).rename(aside)
        try:
            plan = planned_jobs(run, MINI)
        finally:
            aside.rename(run / artifact)
        assert plan.get(rule) == 1, (artifact, plan)
        assert plan.get("metrics") == 1 and plan.get("summary") == 1, (artifact, plan)
        assert "demo_data" not in plan, (artifact, plan)


def test_the_readme_recovery_of_deleted_artifacts_is_followed_literally(finished, demo_run):
    """Delete one artifact of every kind, then the README's commands: all come back, results equal the original."""
    run = finished
    (remove, rerun) = _readme_blocks("Recovery")[0]
    assert remove.split()[:2] == ["rm", ARTIFACTS["embed_images"]] and rerun == "snakemake --cores all"
    for artifact in ARTIFACTS.values():
        if artifact != ARTIFACTS["embed_images"]:
            (run / artifact).unlink()
    for line in (remove, rerun):
        proc = _readme_line(run, line)
        assert proc.returncode == 0, (line, proc.stderr[-3000:])
    for artifact in ARTIFACTS.values():
        assert (run / artifact).is_file(), artifact
    assert "Rule: demo_data" not in proc.stderr, "only what was missing and what depends on it is made"
    for corruption in MINI["corruptions"]:
        path = RES / "ranks" / "local" / f"{corruption}.parquet"
        pd.testing.assert_frame_equal(read_table(run / path)[0], read_table(demo_run / path)[0], check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(run / RES / "metrics.csv"), pd.read_csv(demo_run / RES / "metrics.csv"))
    assert not _leftovers(run)


def test_a_killed_writer_leaves_only_a_temporary_which_the_next_write_removes(tmp_path):
    dest = tmp_path / "out" / "table.bin"
    script = (
        "import sys, time\n"
        "from medret.io import atomic_output\n"
        f"with atomic_output({str(dest)!r}) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(600)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n"
    finally:
        writer.kill()
        writer.wait()
    (stale,) = dest.parent.glob(".table.bin.*.partial")
    assert not dest.exists() and stale.read_bytes() == b"half"
    # A live writer's temporary (this process) and another host's are left alone.
    mine = dest.parent / f".table.bin.{socket.gethostname()}.{os.getpid()}.abcdefgh.partial"
    other = dest.parent / f".table.bin.elsewhere.example.org.{writer.pid}.abcdefgh.partial"
    mine.touch()
    other.touch()
    with atomic_output(dest) as tmp:
        tmp.write_bytes(b"whole")
    assert dest.read_bytes() == b"whole"
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted([dest.name, mine.name, other.name])


# --------------------------------------------------------------------------------------------
# Damaged caches and provenance


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


@pytest.mark.parametrize(
    ("damaged", "damage", "consumer", "producer"),
    [
        ("images/eval.h5", _truncate, "embeddings/local/images/occlusion.h5", "image_cache"),
        ("embeddings/local/text.h5", _garbage, "ranks/local/occlusion.parquet", "embed_texts"),
        ("ranks/local/noise.parquet", _truncate, "metrics.csv", "ranks"),
    ],
    ids=["image-cache", "embeddings", "rank-table"],
)
def test_a_damaged_cache_stops_its_consumer_with_one_line(finished, damaged, damage, consumer, producer):
    run, path, target = finished, finished / RES / damaged, str(RES / consumer)
    damage(path)  # now newer than the consumer's output, which Snakemake therefore remakes
    proc = snakemake(run, MINI, target, check=False)
    assert proc.returncode != 0
    lines = {ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("medret error:")}
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith(f"medret error: {RES / damaged}: unreadable ")
    assert line.endswith("; delete it and re-run the workflow")
    (log,) = [p for p in (run / "logs").rglob("*.log") if line in p.read_text()]
    assert log.read_text().splitlines() == [line], "the job's log holds the one line, no traceback"
    assert not (run / target).exists() and not list(run.rglob("*.partial"))
    # The advice works: once the file is deleted, re-running the step makes it again first.
    path.unlink()
    plan = snakemake(run, MINI, target, "-n", "--quiet", "rules", "host").stdout
    assert re.search(rf"^{producer}\s+1$", plan, re.M), plan


def test_embeddings_of_other_inputs_are_refused(finished):
    """An image embedding file swapped in from another corruption, and one from another model spec."""
    run, images = finished, finished / RES / "embeddings" / "local" / "images"
    shutil.copy2(images / "noise.h5", images / "occlusion.h5")
    with h5py.File(images / "noise.h5", "r+") as f:  # another model's file (sealed anew: not damage)
        set_attrs(f, {"model_spec_hash": "0" * 16})
        seal_h5(f)
    targets = [str(RES / "ranks" / "local" / f"{c}.parquet") for c in ("occlusion", "noise")]
    proc = snakemake(run, MINI, *targets, "--keep-going", "--forcerun", *targets, check=False)
    assert proc.returncode != 0
    for corruption, expected in (
        ("occlusion", rf"{RES}/embeddings/local/images/occlusion\.h5: provenance mismatch on corruption_spec_digest"),
        ("noise", rf"{RES}/embeddings/local/text\.h5 and {RES}/embeddings/local/images/noise\.h5 come from different"),
    ):
        lines = (run / "logs" / "ranks" / "demo" / "local" / f"{corruption}.log").read_text().splitlines()
        assert len(lines) == 1 and re.match(rf"medret error: {expected} .*delete .* and re-run the workflow$", lines[0])
        assert lines[0] in proc.stderr
        assert not (run / RES / "ranks" / "local" / f"{corruption}.parquet").exists()


def _png_cache(tmp_path: Path, n: int = 3, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(paths[-1])
    out = tmp_path / "eval.h5"
    build_image_cache([f"p{i}" for i in range(n)], [str(p) for p in paths], out, size=size, manifest_digest="d")
    return out


def test_image_cache_with_a_damaged_chunk_is_an_error_naming_it(tmp_path):
    path = _png_cache(tmp_path)
    with h5py.File(path) as f:
        chunk = f["images"].id.get_chunk_info(1)  # image 1's compressed bytes
    with path.open("r+b") as f:
        f.seek(chunk.byte_offset)
        f.write(b"\0" * chunk.size)
    with ImageCache(path, manifest_digest="d") as cache:
        assert cache.read(0, 1).shape == (1, 32, 32)  # the other images are intact
        with pytest.raises(MedretError, match=rf"^{re.escape(str(path))}: cannot read images 0-3 \(.*\); delete it"):
            cache.read(0, 3)


def _flip(path: Path, needle: bytes) -> None:
    """Change one byte inside the only occurrence of ``needle`` in the file."""
    data = path.read_bytes()
    assert data.count(needle) == 1
    at = data.index(needle) + len(needle) // 2
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :])


REPORT = "Heart size normal; lungs clear 7142."
#: Three reports; the middle one is neither the column's minimum nor maximum, so it is stored once.
REPORTS = ["Aortic knob calcified.", REPORT, "Zero effusion."]


def test_read_table_refuses_truncated_and_damaged_files(tmp_path):
    table = pd.DataFrame({"pair_id": ["a", "b", "c"], "report": REPORTS})
    path = tmp_path / "t.parquet"
    write_table(table, path, digest="d")
    got, meta = read_table(path)
    pd.testing.assert_frame_equal(got, table)
    assert meta == {"digest": "d"}
    _truncate(path)
    with pytest.raises(
        MedretError, match=rf"^{re.escape(str(path))}: unreadable parquet file \(.*delete it and re-run"
    ):
        read_table(path)
    # Undecodable provenance metadata.
    arrow = pa.Table.from_pandas(table).replace_schema_metadata({b"medret.digest": b"\xff"})
    pq.write_table(arrow, path)
    with pytest.raises(MedretError, match="unreadable parquet file"):
        read_table(path)
    # A table medret did not write (no checksum) is refused, whatever it holds.
    pq.write_table(pa.Table.from_pandas(table), path, write_page_checksum=True)
    with pytest.raises(MedretError, match=r"parquet table without a checksum \(written by another program"):
        read_table(path)
    # A flipped byte in a data page: refused by the page checksum, and by the table checksum without it.
    for page_checksum in (False, True):
        write_table(table, path, digest="d")
        if not page_checksum:  # the same table and metadata, written without page checksums
            arrow = pq.read_table(path)
            pq.write_table(arrow, path, write_page_checksum=False)
        _flip(path, REPORT.encode())
        with pytest.raises(MedretError, match="unreadable parquet file" if page_checksum else "damaged parquet table"):
            read_table(path)


def test_a_flipped_byte_in_a_written_table_is_detected(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(pd.DataFrame({"pair_id": ["a", "b", "c"], "report": REPORTS}), path, digest="d")
    _flip(path, REPORT.encode())
    with pytest.raises(MedretError, match="unreadable parquet file"):
        read_table(path)


class _FixedTexts:
    """A stand-in model whose text embeddings are a fixed, recognisable array."""

    def __init__(self, value: float) -> None:
        self.value = value

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.full((len(texts), 4), self.value)

    def spec_hash(self) -> str:
        return "h"


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.h5"
    embed_texts(_FixedTexts(1.2345678), REPORTS, path, model_name="m", manifest_digest="d")
    assert EmbeddingFile.read(path).arrays["texts"].tolist() == REPORTS
    return path


def test_embedding_file_with_undecodable_text_is_an_error_naming_it(tmp_path):
    path = _text_file(tmp_path)
    data = path.read_bytes()
    at = data.index(REPORT.encode())
    path.write_bytes(data[:at] + b"\xff" + data[at + 1 :])
    with pytest.raises(MedretError, match=rf"^{re.escape(str(path))}: damaged embedding cache"):
        EmbeddingFile.read(path)


def test_embedding_file_with_a_flipped_value_is_an_error_naming_it(tmp_path):
    path = _text_file(tmp_path)
    _flip(path, np.full(12, 1.2345678, dtype=np.float32).tobytes())
    with pytest.raises(MedretError, match=rf"^{re.escape(str(path))}: unreadable"):
        EmbeddingFile.read(path)


class _FixedImages(_FixedTexts):
    """A stand-in model whose image embedding is each image's mean grey level, in 4 dimensions."""

    embed_dim = 4
    batch_size = 8
    device = torch.device("cpu")

    def encode_images(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(1, 2))[:, None].repeat(1, 4) + torch.arange(4)


def _artifacts(tmp_path: Path) -> dict[str, tuple[Path, Callable[[Path], object]]]:
    """One small artifact of each kind medret writes, with a reader that returns everything a stage reads of it."""
    from medret.corruptions import make_specs

    cache = _png_cache(tmp_path, n=4, size=40)
    text = _text_file(tmp_path)
    ids = [f"p{i}" for i in range(4)]
    entry = {"kind": "occlusion", "levels": [0.0, 0.5], "repeats": 1, "seed": 0}
    specs = make_specs(ids, "occ", validate_config_entry(entry))
    table = tmp_path / "specs.parquet"
    write_table(specs, table, digest="s", manifest_digest="d")
    images = tmp_path / "occ.h5"
    with ImageCache(cache, manifest_digest="d") as c:
        embed_images(
            _FixedImages(0.0),
            c,
            specs,
            images,
            model_name="m",
            corruption="occ",
            corruption_entry=validate_config_entry(entry),
            corruption_digest="s",
            manifest_digest="d",
            notes=["medret warning: a note"],
        )

    def read_cache(path: Path) -> object:
        with ImageCache(path, manifest_digest="d") as c:
            return c.read(0, len(c)).tobytes(), c.boxes.tobytes(), c.sizes.tobytes(), c.ids, c.attrs

    def read_embeddings(path: Path) -> object:
        f = EmbeddingFile.read(path)
        return {k: v.tolist() for k, v in f.arrays.items()}, f.attrs

    def read_parquet(path: Path) -> object:
        frame, meta = read_table(path)
        return frame.to_dict(orient="list"), meta

    return {
        "image cache": (cache, read_cache),
        "text embeddings": (text, read_embeddings),
        "image embeddings": (images, read_embeddings),
        "parquet table": (table, read_parquet),
    }


def validate_config_entry(entry: dict) -> dict:
    """A corruption entry with the schema's defaults, as the workflow passes it."""
    config = {"datasets": {"d": {"adapter": "demo"}}, "models": {"m": {"family": "local", "checkpoint": "x"}}}
    return validate_config({**config, "corruptions": {"occ": entry}})["corruptions"]["occ"]


@pytest.mark.parametrize("kind", ["image cache", "text embeddings", "image embeddings", "parquet table"])
def test_a_flipped_bit_in_any_byte_never_changes_a_result_silently_nor_raises_a_traceback(tmp_path, kind):
    """The damage sweep: one flipped bit at a time, in every byte of each kind of artifact (about 40 s in all).

    Every read either returns exactly what was written (a flip in bytes nothing reads, e.g. free space)
    or stops with one MedretError line naming the file; never another exception, never other values,
    never a hang (a flipped bit in HDF5's global heap once made a read spin forever).
    """
    path, read = _artifacts(tmp_path)[kind]
    original, data = read(path), path.read_bytes()
    rng = np.random.default_rng(sum(map(ord, kind)))
    damaged = tmp_path / f"damaged{path.suffix}"
    outcomes: collections.Counter[str] = collections.Counter()
    for position in range(len(data)):
        bit = int(rng.integers(8))
        damaged.write_bytes(data[:position] + bytes([data[position] ^ (1 << bit)]) + data[position + 1 :])
        try:
            got = read(damaged)
        except MedretError as exc:
            message = str(exc)
            assert message.startswith(str(damaged)) and "\n" not in message, (position, bit, message)
            assert message.endswith("delete it and re-run the workflow"), (position, bit, message)
            outcomes["refused"] += 1
            continue
        assert got == original, f"byte {position} bit {bit}: read back different values without an error"
        outcomes["unchanged"] += 1
    assert outcomes["refused"] > len(data) // 3, outcomes


def test_no_hdf5_artifact_keeps_anything_in_the_global_heap(tmp_path):
    """Variable-length strings live in HDF5's global heap, which has no checksum; a flipped bit there once made
    reading an attribute spin forever. Every string is stored with a fixed length or as bytes."""
    for kind, (path, _) in _artifacts(tmp_path).items():
        if path.suffix != ".h5":
            continue
        with h5py.File(path, "r") as f:
            for name in f:
                assert f[name].dtype.kind != "O", (kind, name)
            for name in f.attrs:
                assert f.attrs.get_id(name).dtype.kind != "O", (kind, "attribute", name)


def test_the_image_cache_boxes_and_sizes_are_covered_by_the_checksum(tmp_path):
    """The issue's case: one flipped byte in ``boxes`` once gave a silently narrower crop; now it is refused."""
    path = _png_cache(tmp_path, n=3, size=32)
    with h5py.File(path, "r") as f:
        offsets = {name: f[name].id.get_offset() for name in ("boxes", "sizes")}
    for name, offset in offsets.items():
        damaged = tmp_path / f"{name}.h5"
        data = path.read_bytes()
        damaged.write_bytes(data[: offset + 12] + bytes([data[offset + 12] ^ 1]) + data[offset + 13 :])
        with pytest.raises(MedretError, match=rf"^{re.escape(str(damaged))}: damaged image cache \(its contents"):
            ImageCache(damaged)


# --------------------------------------------------------------------------------------------
# The lock


def test_a_second_run_in_the_same_directory_meets_the_lock(finished, demo_run, tmp_path):
    run, target = finished, str(RES / "ranks" / "local" / "occlusion.parquet")
    first = _start(run, tmp_path / "first.out", target, "--forcerun", target)
    stopped: list[int] = []
    try:
        _wait_for(lambda: _processes(run, "ranks.py"), "the ranks job to start", first)
        # Hold the job still, so the first run surely holds the lock while the second starts.
        stopped = [pid for pid in _processes(run) if pid != first.pid]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        second = snakemake(run, MINI, check=False)
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        assert first.wait(timeout=PATIENCE) == 0, (tmp_path / "first.out").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert second.returncode != 0
    assert "LockException" in second.stderr and "Directory cannot be locked" in second.stderr
    assert "It can be removed with the --unlock argument" in second.stderr
    assert not _leftovers(run), "the first run released its lock"
    got, _ = read_table(run / target)
    pd.testing.assert_frame_equal(got, read_table(demo_run / target)[0], check_exact=True)


# --------------------------------------------------------------------------------------------
# Unwritable results


def test_job_context_caps_torch_threads_without_importing_torch():
    # Stages that never need torch (manifest, image cache, plots) must not pay its import.
    code = """
import sys
from medret import jobs
with jobs.script_context(None, threads=1):  # torch's default here is the number of cores
    from medret import imaging, manifest, plots
    print("torch" in sys.modules)
    import torch
    print(torch.get_num_threads())
import torch
with jobs.script_context(None, threads=3):  # torch already imported: set directly
    print(torch.get_num_threads())
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=PATIENCE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "1", "3"]


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path / "new" / "deeper", "results_dir")  # creatable: fine
    (tmp_path / "blocker").write_text("")
    for writable in (True, False):
        with pytest.raises(MedretError) as err:
            check_output_dir(tmp_path / "blocker" / "results", "results_dir", writable=writable)
        assert str(err.value) == (
            f"config key results_dir: cannot write to {tmp_path / 'blocker' / 'results'} "
            f"({tmp_path / 'blocker'} is a file, not a directory); choose another results_dir"
        )
    with (
        pytest.raises(MedretError, match=r"^cannot write .*blocker is a file, not a directory"),
        atomic_output(tmp_path / "blocker" / "results" / "x.csv"),
    ):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"] and (tmp_path / "blocker").read_text() == ""


def test_results_dir_under_a_file_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "blocker").write_text("")
    config = {**copy.deepcopy(MINI), "results_dir": "blocker/results"}
    proc = snakemake(tmp_path, config, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    expected = (
        "medret config error: config key results_dir: cannot write to blocker/results "
        "(blocker is a file, not a directory); choose another results_dir"
    )
    assert expected in proc.stderr.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["blocker", "config.yaml"]


def _can_mount() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not _can_mount(), reason="needs unshare -m (mount namespaces) for a read-only bind mount")
def test_read_only_results_is_one_line_and_writes_nothing(finished, tmp_path):
    run = finished
    config = copy.deepcopy(MINI)
    config["corruptions"]["blur"] = {"kind": "blur", "levels": [0, 2]}  # a new job that writes into results/
    (run / "config.yaml").write_text(yaml.safe_dump(config))  # what helpers.workflow.snakemake runs with
    before = sorted(str(p.relative_to(run)) for p in (run / "results").rglob("*"))
    results = shlex.quote(str(run / "results"))
    script = (
        f"mount --bind {results} {results} && mount -o remount,ro,bind {results} {results} && "
        f"exec {shlex.join(_command(run, str(RES / 'corruptions' / 'blur.parquet')))}"
    )
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / ".mpl")}
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    expected = (
        "medret config error: config key results_dir: cannot write to results "
        "(results is on a read-only file system); choose another results_dir"
    )
    assert expected in proc.stderr.splitlines()
    assert sorted(str(p.relative_to(run)) for p in (run / "results").rglob("*")) == before
    assert not _leftovers(run)


def test_a_full_disk_is_one_line_naming_the_output(tmp_path):
    def fill():
        with atomic_output(tmp_path / "table.parquet") as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(MedretError) as err:
        fill()
    assert str(err.value) == (
        f"cannot write {tmp_path / 'table.parquet'}: no space left on device on {tmp_path}; "
        "free space there or choose another results_dir"
    )
    assert list(tmp_path.iterdir()) == []
    # Wrapped by a writer without an errno (h5py says it in its message), or over quota: recognised.
    h5py_error = RuntimeError("Unable to flush raw data (file write failed: error message = 'No space left on device')")
    for cause in (h5py_error, OSError(errno.EDQUOT, "Disk quota exceeded")):
        with (
            pytest.raises(MedretError, match=r"(no space left on device|disk quota exceeded) on"),
            atomic_output(tmp_path / "x.h5"),
        ):
            raise cause
    # Other errors pass unchanged.
    with pytest.raises(PermissionError), atomic_output(tmp_path / "x.h5"):
        raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not _can_mount(), reason="needs unshare -m (mount namespaces) to mount a small tmpfs")
def test_a_full_disk_during_a_real_cache_build_is_one_line_and_leaves_nothing(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):  # noise does not compress: 8 x 64 kB of cache on a 256 kB file system
        Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    small = tmp_path / "small"
    small.mkdir()
    code = (
        "from medret import imaging, jobs\n"
        "with jobs.script_context(None):\n"
        f"    paths = [f'{tmp_path}/{{i}}.png' for i in range(8)]\n"
        f"    imaging.build_image_cache(list('01234567'), paths, '{small}/eval.h5', size=256, manifest_digest='d')\n"
    )
    mount = f"mount -t tmpfs -o size=256k tmpfs {shlex.quote(str(small))}"
    run = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"
    script = f"{mount} && {{ {run}; echo status=$?; ls -A {shlex.quote(str(small))}; }}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=PATIENCE)
    # Exit status 1, not a crash (HDF5 segfaults at exit after a failed flush unless we leave first),
    # the one line, and an empty file system: the temporary was removed.
    assert proc.stdout.split() == ["status=1"], (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Segmentation" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"medret error: cannot write {small}/eval.h5: no space left on device on {small}; "
        "free space there or choose another results_dir"
    )


# --------------------------------------------------------------------------------------------
# Progress in job logs


@pytest.mark.parametrize(
    ("log", "desc"),
    [
        ("image_cache/demo/eval.log", "decode eval.h5"),
        ("embed_images/demo/local/occlusion.log", "embed local/occlusion"),
    ],
    ids=["image-cache", "embedding"],
)
def test_long_stages_log_readable_progress(demo_run, log, desc):
    text = (demo_run / "logs" / log).read_bytes().decode()
    assert "\r" not in text, "a carriage-return bar is one unreadable line in a log file"
    lines = [ln for ln in text.splitlines() if ln.startswith(f"{desc}: ")]
    assert lines and re.fullmatch(rf"{re.escape(desc)}: (\d+)/\1 \w+ in \d+(\.\d)? (s|min)", lines[-1]), text
