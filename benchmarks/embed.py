"""Benchmark (b): the embedding stage against the bare forward pass of the same model.

* stage: ``medret.embeddings.embed_images`` as the workflow runs it, from the HDF5 image cache to
  the embedding file: background reading, occlusion and the model's preprocessing on the device,
  forward passes, normalisation, writing.
* bare: only the model's image tower, in the same batches, on input tensors prepared beforehand
  (occluded and preprocessed, already on the device), then the same normalisation.

The stage's cost over the bare forward pass is everything that is not the model: the target is
a ratio of at most ``TARGET`` for a ViT-B/32-sized model (open_clip ``ViT-B-32-quickgelu``, random
weights saved as a state dict and loaded through medret's open_clip loader). The demo's small CNN
is shown too, without a target: its forward pass is so cheap that preprocessing is a visible
share. Both sides must give the same embeddings (largest difference at most ``TOLERANCE``).
Times are the fastest of ``--repeats`` interleaved runs. Exits 1 if a target or check is missed;
``--quick`` runs a tiny open_clip architecture instead of ViT-B/32, with no target.

    .venv/bin/python benchmarks/embed.py [--quick] [--threads 1] [--dtype float32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, Study, best_of, demo_config, demo_study, machine, report, set_threads, table

TARGET = 1.10
TOLERANCE = 1e-6
VIT = "ViT-B-32-quickgelu"
#: A tiny open_clip architecture for --quick (open_clip's JSON model-config format).
TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


def random_clip(work: Path, arch: str | dict[str, Any]) -> dict[str, Any]:
    """An open_clip model with random weights written as a state dict; returns its config entry."""
    import logging

    import open_clip
    import torch

    work.mkdir(parents=True, exist_ok=True)
    name = arch
    if isinstance(arch, dict):  # an architecture file, as users give custom ones
        name = str(work / "medret-bench-tiny.json")
        Path(name).write_text(json.dumps(arch))
        open_clip.add_model_config(name)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "initialised randomly": the weights are random on purpose
    try:
        model = open_clip.create_model(Path(name).stem if name.endswith(".json") else name, pretrained=None)
    finally:
        logging.disable(previous)
    torch.save(model.state_dict(), work / "weights.pt")
    return {"family": "open_clip", "model": name, "checkpoint": str(work / "weights.pt")}


def split_model(model: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The model's preprocessing (images, boxes) -> input tensor, and its bare image tower."""
    if model.family == "local":
        return (lambda images, boxes: model.model.preprocess(images)), model.model.image
    # Sources kept at their box size (the benchmark's canvases are made that way).
    return (lambda images, boxes: model.preprocess(images, boxes, boxes[:, 2:4])), model.model.encode_image


@contextlib.contextmanager
def autocast(model: Any) -> Iterator[None]:
    """The adapter's dtype setting: autocast for bfloat16/float16, nothing for float32."""
    import torch

    if model.dtype == torch.float32:
        yield
    else:
        with torch.autocast(model.device.type, dtype=model.dtype):
            yield


def measure(label: str, model: Any, study: Study, work: Path, repeats: int) -> dict[str, Any]:
    """Time the embedding stage and the bare forward pass of ``model`` on the study's cache."""
    import torch
    import torch.nn.functional as F

    from medret.corruptions import get_kind
    from medret.embeddings import EmbeddingFile, embed_images
    from medret.imaging import ImageCache
    from medret.io import read_table

    specs, _ = read_table(study.specs)
    cache_path = work / "eval.h5"
    occlusion = study.occlusion
    kind = get_kind(occlusion, "occlusion")
    preprocess, tower = split_model(model)
    with ImageCache(cache_path) as cache:
        images, boxes, ids = torch.from_numpy(cache.read(0, len(cache))), torch.from_numpy(cache.boxes), cache.ids
    conditions = specs.groupby(["level", "repeat"])
    # Ready tensors (untimed): every condition occluded and preprocessed, on the model's device.
    with torch.inference_mode():
        ready = [
            preprocess(kind.apply(images, boxes, rows.set_index("pair_id").loc[ids], occlusion), boxes).to(model.device)
            for _, rows in conditions
        ]
    n, bs = len(ids), model.batch_size

    def stage() -> Path:
        out = work / f"{label}.h5"
        with ImageCache(cache_path) as cache:
            embed_images(
                model,
                cache,
                specs,
                out,
                model_name=label,
                corruption="occlusion",
                corruption_entry=occlusion,
                corruption_digest="benchmark",
                manifest_digest="benchmark",
            )
        return out

    @torch.inference_mode()
    def bare() -> np.ndarray:
        out = np.zeros((len(ready), n, model.embed_dim), dtype=np.float32)
        for c, x in enumerate(ready):
            for lo in range(0, n, bs):
                with autocast(model):
                    emb = tower(x[lo : lo + bs])
                out[c, lo : lo + bs] = F.normalize(emb.float(), dim=-1).cpu().numpy()
        return out

    results, times = best_of({"stage": stage, "bare": bare}, repeats)
    staged = EmbeddingFile.read(results["stage"]).arrays["embeddings"]
    return {
        "model": label,
        "images": n,
        "conditions": len(ready),
        "cache_px": study.image_size,
        "batch_size": bs,
        "dtype": str(model.dtype).removeprefix("torch."),
        "stage_s": times["stage"],
        "bare_s": times["bare"],
        "ratio": times["stage"] / times["bare"],
        "max_abs_diff": float(np.abs(staged - results["bare"]).max()),
    }


def build_study(args: argparse.Namespace, root: Path, *, n_test: int, size: int, levels: list[float]) -> Study:
    """A demo study rendered and cached at ``size`` px, with the image cache built."""
    from medret import stages

    config = demo_config(
        root, n_test=n_test, n_train=8, render_size=size, image_size=size, levels=levels, models=["local"]
    )
    study = demo_study(root, config, threads=args.threads)
    stages.build_image_cache(table_path=study.manifest, out_path=root / "eval.h5", size=size)
    set_threads(args.threads)
    return study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; no target")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the workflow's embed jobs: 1)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per side; the fastest counts")
    parser.add_argument("--vit-images", type=int, default=64, help="images for the ViT-B/32 row")
    parser.add_argument("--out", type=Path, default=RESULTS / "embed")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from medret.models import load_model

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    common = {"batch_size": 64, "dtype": args.dtype}
    with open(args.out / "stages.log", "w") as log, contextlib.redirect_stderr(log):
        if args.quick:  # one tiny study for both models
            demo = vit = build_study(args, work / "demo", n_test=8, size=64, levels=[0.0, 0.5, 1.0])
        else:  # the demo's data (500 images, 128 px, 11 levels); ViT-B/32 at its input size, 224 px
            demo = build_study(args, work / "demo", n_test=500, size=128, levels=[round(0.1 * i, 1) for i in range(11)])
            vit = build_study(args, work / "vit", n_test=args.vit_images, size=224, levels=[0.0, 0.5, 1.0])
        local = load_model({"family": "local", "checkpoint": str(demo.checkpoints["local"]), **common}, "local")
        rows.append(measure("local (demo CNN)", local, demo, demo.root, args.repeats))
        entry = random_clip(vit.root / "weights", TINY_CLIP if args.quick else VIT)
        clip = load_model({**entry, **common}, "clip")
        label = "tiny open_clip ViT" if args.quick else "open_clip ViT-B/32"
        rows.append(measure(label, clip, vit, vit.root, args.repeats))
    shutil.rmtree(work, ignore_errors=True)
    info = machine()
    lines = [
        f"Benchmark (b), embedding stage vs bare forward pass; {info['cpu']}, {info['cores']} cores, "
        f"torch {info['torch']}, {info['threads']} thread(s), load average {info['load_average_1min']}",
        "",
        table(
            ["model", "images × conditions", "cache px", "dtype", "stage s", "bare forward s", "ratio", "max abs Δ"],
            [
                [
                    r["model"],
                    f"{r['images']} × {r['conditions']}",
                    r["cache_px"],
                    r["dtype"],
                    f"{r['stage_s']:.2f}",
                    f"{r['bare_s']:.2f}",
                    f"{r['ratio']:.3f}",
                    f"{r['max_abs_diff']:.1e}",
                ]
                for r in rows
            ],
        ),
    ]
    failures = [
        f"{r['model']}: embeddings differ by {r['max_abs_diff']:.2g}" for r in rows if r["max_abs_diff"] > TOLERANCE
    ]
    if args.quick:
        lines += ["", "quick smoke run: embeddings compared, no target"]
    else:
        vit = rows[-1]
        if vit["ratio"] > TARGET:
            failures.append(f"{vit['model']}: stage/bare {vit['ratio']:.3f} > {TARGET}")
        lines += ["", f"target: ViT-B/32 stage/bare <= {TARGET} (the demo CNN has none)"]
    lines += [f"MISSED: {f}" for f in failures] or ["all checks passed"]
    report(args.out, "embed", "\n".join(lines), {"machine": info, "args": vars(args), "rows": rows})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
