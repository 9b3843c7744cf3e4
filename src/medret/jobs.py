"""The glue between Snakemake jobs and :mod:`medret.stages`: a job's log, threads, GPUs and model files.

``workflow/scripts/*.py`` run each stage inside :func:`script_context`; ``workflow/rules/common.smk``
asks :func:`visible_gpus` how many GPUs a local job may hold and :func:`model_files` which files a
model reads (checked when the workflow starts). None of this imports torch: Snakemake runs it on
every call.

GPUs: a workflow job runs a model on a GPU only when it holds one, i.e. when its Snakemake ``gpu``
(or ``gres``) resource is above 0 (:func:`gpus_held`, passed to the stages as ``gpus``): Snakemake
counts that resource to keep jobs from sharing a GPU, so a job that used one without holding it
would share it unseen (:func:`job_device`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import sys
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from medret.errors import MedretError
from medret.io import disk_full


@contextlib.contextmanager
def script_context(log_path: str | os.PathLike[str] | None, threads: int = 1) -> Iterator[None]:
    """Send stderr to the job's log, cap torch threads, and turn a MedretError into one line.

    The one-line message goes to the log and to the terminal; the job then exits with status 1
    (Snakemake removes the outputs of failed jobs, and ours are atomic anyway). Torch is not
    imported here: stages that never need it (demo data, manifest, image cache, plots) save the
    seconds its import takes, and those that do get ``threads`` from ``OMP_NUM_THREADS``.
    """
    terminal = sys.stderr
    log = open(log_path, "w", buffering=1) if log_path else None  # noqa: SIM115 (closed below)
    if log is not None:
        sys.stderr = log
    os.environ.setdefault("MPLCONFIGDIR", str(Path(log_path or ".").resolve().parent / ".mplconfig"))
    try:
        threads = max(1, int(threads))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        else:  # read by torch when a stage first imports it
            os.environ["OMP_NUM_THREADS"] = str(threads)
        yield
    except MedretError as exc:
        for stream in {terminal, sys.stderr}:
            print(f"medret error: {exc}", file=stream, flush=True)
        if disk_full(exc):
            # HDF5 cannot close a file it failed to flush and crashes in its exit handler; the
            # outputs are already removed, so leave without running exit handlers.
            sys.stdout.flush()
            if log is not None:
                log.close()
            os._exit(1)
        raise SystemExit(1) from None
    finally:
        sys.stderr = terminal
        if log is not None:
            log.close()


def job_device(device: str, gpus: int | None) -> str:
    """The device a job runs a model on: the configured ``device`` if the job holds a GPU, else the CPU.

    ``gpus`` is None outside a workflow job: the configured device then stands.
    """
    return str(device) if gpus is None or gpus > 0 else "cpu"


def gpus_held(resources: Any) -> int:
    """GPUs a Snakemake job holds: its ``gpu`` resource, else the GPU count of a ``gres`` like ``gpu:a100:2``.

    ``resources`` is the job's ``snakemake.resources`` (anything with ``get``). A site that asks
    SLURM for GPUs through ``gres`` sets ``gpu`` to 0, so both are read.
    """
    gpu = int(resources.get("gpu", 0) or 0)
    if gpu > 0:
        return gpu
    count = 0
    for item in str(resources.get("gres", "") or "").split(","):
        name, *rest = item.strip().split(":")
        if name == "gpu":
            count += int(rest[-1]) if rest and rest[-1].isdigit() else 1
    return count


@functools.cache
def visible_gpus() -> int:
    """How many GPUs a job started on this machine could use, found without importing torch.

    CUDA devices as the driver library counts them (honouring ``CUDA_VISIBLE_DEVICES``), HIP
    devices likewise (ROCm), or 1 for Apple silicon (MPS); 0 when there is none of these.
    """
    if sys.platform == "darwin":
        return 1 if platform.machine() == "arm64" else 0
    probes = (("libcuda.so.1", "cuDeviceGetCount", True), ("libamdhip64.so", "hipGetDeviceCount", False))
    for library, count_function, needs_init in probes:
        try:
            lib = ctypes.CDLL(library)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if needs_init and lib.cuInit(0) != 0:  # e.g. no device visible: CUDA_ERROR_NO_DEVICE
            continue
        if getattr(lib, count_function)(ctypes.byref(count)) == 0 and count.value > 0:
            return count.value
    return 0


def model_files(name: str, entry: Mapping[str, Any], produced: Collection[str] = ()) -> dict[str, str]:
    """The files model ``name`` is read from (its family's file options, e.g. ``checkpoint``, ``text_model``),
    each checked to exist.

    ``produced``: paths the workflow writes itself (trained models' checkpoints), which need not exist
    yet. A missing file is one MedretError naming the config key, the path, what the family expects
    there (its option text) and where the file is published (:data:`medret.download.PUBLIC_FILES`).
    """
    from medret.download import PUBLIC_FILES
    from medret.models import get_family

    family = get_family(entry, name)
    files = {key: str(entry[key]) for key in family.files if key in entry}
    for key, path in files.items():
        if os.path.normpath(path) in produced or os.path.exists(path):
            continue
        option = family.options[key]
        hints = [f"expected: {option.description}"]
        published = [PUBLIC_FILES[n] for n in option.published if n in PUBLIC_FILES]
        names = [spec.name for spec in published if spec.url]
        if option.path == "directory" and names:  # every file goes into it
            hints.append(f"`python -m medret download {' '.join(names)} --dest DIR` fetches its files")
        elif len(names) == 1:
            hints.append(f"`python -m medret download {names[0]} --dest DIR` fetches it")
        elif names:
            hints.append(f"`python -m medret download NAME --dest DIR` fetches it (NAME: {', '.join(names)})")
        hints += [f"{spec.filename}: {spec.manual}" for spec in published if not spec.url]
        if option.where and not published:
            hints.append(f"published at {option.where}")
        if family.train is not None and key == "checkpoint":
            hints.append(f"or give models.{name}.train instead, and the workflow trains the model")
        raise MedretError(f"config key models.{name}.{key}: {path} not found; {'; '.join(hints)}")
    return files
