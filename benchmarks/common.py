"""Shared helpers of the benchmark scripts: machine description, timing, tables, the demo study.

Not part of the library: the scripts measure ``medret``'s stages from the outside.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# Offline, like the workflow and the tests; before anything imports a hub client.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def set_threads(threads: int) -> None:
    """Pin torch to ``threads`` intra-op threads (the workflow's embedding jobs use one)."""
    import torch

    torch.set_num_threads(max(1, threads))


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, torch and its threads, load average."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` once; return its result and the wall-clock seconds it took."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def best_of(sides: Mapping[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Time every side ``repeats`` times, interleaved, so that both see the same machine load.

    Returns each side's last result and its fastest time (the least disturbed run).
    """
    results: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(max(1, repeats)):
        for name, fn in sides.items():
            results[name], seconds = timed(fn)
            times[name].append(seconds)
    return results, {name: min(t) for name, t in times.items()}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(out_dir: Path, name: str, text: str, record: Mapping[str, Any]) -> None:
    """Print the table and write it, with the full record as JSON, under ``out_dir``."""
    from medret.io import atomic_output

    print(text, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / f"{name}.md") as tmp:
        tmp.write_text(text + "\n")
    with atomic_output(out_dir / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")


def demo_config(
    root: Path,
    *,
    n_test: int,
    n_train: int,
    render_size: int,
    image_size: int,
    levels: Sequence[float],
    models: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The built-in demo config (``config/config.yaml``) resized, validated, defaults filled.

    Its models (all, or those named in ``models``) keep the demo's architecture but train for one
    epoch: speed does not depend on the weights, and each benchmark compares two pipelines on the
    same model.
    """
    import yaml

    from medret.config import validate_config

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["results_dir"] = str(root)
    config["datasets"]["demo"].update(n_test=n_test, n_train=n_train, render_size=render_size, image_size=image_size)
    config["corruptions"] = {"occlusion": {**config["corruptions"]["occlusion"], "levels": list(levels)}}
    config["models"] = {k: v for k, v in config["models"].items() if models is None or k in models}
    for entry in config["models"].values():
        entry["train"]["epochs"] = 1
    return validate_config(config)


@dataclass
class Study:
    """A demo dataset taken through the workflow's first stages, with trained demo models."""

    root: Path
    config: dict[str, Any]
    manifest: Path
    specs: Path
    checkpoints: dict[str, Path]

    @property
    def occlusion(self) -> dict[str, Any]:
        return self.config["corruptions"]["occlusion"]

    @property
    def image_size(self) -> int:
        return int(self.config["datasets"]["demo"]["image_size"])


def demo_study(root: Path, config: dict[str, Any], *, threads: int = 1) -> Study:
    """Generate the demo data, its manifest and occlusion specs, and train its models (untimed set-up)."""
    from medret import stages

    root.mkdir(parents=True, exist_ok=True)
    entry = config["datasets"]["demo"]
    csv = root / "resources" / "pairs.csv"
    stages.generate_demo(out_csv=csv, entry=entry, workers=1)
    manifest, train = root / "manifest.parquet", root / "train.parquet"
    stages.build_manifest(
        name="demo", entry=entry, sources=[str(csv)], out_manifest=manifest, out_train=train,
        out_skipped=root / "skipped.csv",
    )  # fmt: skip
    specs = root / "occlusion.parquet"
    stages.build_corruption_specs(
        manifest_path=manifest, name="occlusion", entry=config["corruptions"]["occlusion"], out_path=specs
    )
    stages.build_image_cache(table_path=train, out_path=root / "train.h5", size=int(entry["image_size"]))
    checkpoints = {}
    for name, model in config["models"].items():
        checkpoints[name] = root / "models" / name / "checkpoint.pt"
        stages.train_model(
            name=name, entry=model, train_table=train, train_images=root / "train.h5", out_path=checkpoints[name],
            threads=threads,
        )  # fmt: skip
    return Study(root, config, manifest, specs, checkpoints)
