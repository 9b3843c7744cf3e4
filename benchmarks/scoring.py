"""Benchmark (c): ranking in chunks against ranking from the full score matrix, time and peak memory.

Both sides rank the same random embeddings in both directions, as the ranks stage does: N image
queries against U unique texts (one relevant each) and U text queries against the N images (every
image with that text relevant; several per text). D = 512, the size of a ViT-B/32 embedding.

* full: the whole N×U score matrix in float64 at once, then the pessimistic ranks from it (the
  same rule; this script's own implementation).
* chunked: ``medret.retrieval.query_ranks`` with tiles of at most ``block`` scores, for
  each block size in ``--blocks`` (its default, 4M, among them).

Each side runs in a fresh subprocess that loads the embeddings and, for each direction, resets
the kernel's peak-RSS counter (``/proc/self/clear_refs``), ranks, and reads the peak resident
memory above the level before that call; it reports the total time and the larger of the two
peaks (the memory of one scoring call). The ranks of every side must be identical. Targets: the chunked
peak stays within ``BYTES_PER_ENTRY`` × block + ``SLACK_MB`` (the work buffers' bound documented in
``medret.retrieval``, plus room for the per-query vectors and index lists), also on a problem with
4× the scores (2N × 2U: set by the block, not by N×U), and at the default block the chunked time
is at most ``TIME_TARGET`` × the full matrix's. Times are the fastest of ``--repeats`` interleaved
runs, peaks the largest. Exits 1 if a target or check is missed; ``--quick`` is a small smoke run
with no targets.

    .venv/bin/python benchmarks/scoring.py [--quick] [--images 10000] [--texts 5000] [--blocks ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, machine, report, set_threads, table

TIME_TARGET = 1.5
#: Bound on the chunked side's working memory per score entry of a tile (see medret.retrieval).
BYTES_PER_ENTRY = 24
SLACK_MB = 32.0
DEFAULT_BLOCK = 1 << 22


def make_data(path: Path, n_images: int, n_texts: int, dim: int, seed: int = 0) -> None:
    """Random unit embeddings; every text is some image's report, the rest drawn at random."""
    rng = np.random.default_rng(seed)

    def unit(n: int) -> np.ndarray:
        x = rng.normal(size=(n, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    text_ids = np.concatenate([np.arange(n_texts), rng.integers(0, n_texts, n_images - n_texts)])
    rng.shuffle(text_ids)
    np.savez(path, images=unit(n_images), texts=unit(n_texts), text_ids=text_ids)


def relevance(text_ids: np.ndarray, n_texts: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Relevant texts of each image (its own) and relevant images of each text (all that have it)."""
    order = np.argsort(text_ids, kind="stable")
    bounds = np.searchsorted(text_ids[order], np.arange(n_texts + 1))
    t2i = [order[bounds[t] : bounds[t + 1]] for t in range(n_texts)]
    return [np.array([t]) for t in text_ids], t2i


def full_matrix_ranks(
    queries: np.ndarray, candidates: np.ndarray, relevant: list[np.ndarray], tol: float
) -> np.ndarray:
    """Pessimistic ranks from the whole score matrix (the reference side)."""
    import torch

    scores = torch.from_numpy(queries).double() @ torch.from_numpy(candidates).double().T
    rel = torch.zeros(scores.shape, dtype=torch.bool)
    rows = np.repeat(np.arange(len(relevant)), [len(r) for r in relevant])
    rel[torch.from_numpy(rows), torch.from_numpy(np.concatenate(relevant))] = True
    best = scores.masked_fill(~rel, -torch.inf).amax(dim=1, keepdim=True)
    return (1 + ((scores >= best - tol) & ~rel).sum(dim=1)).numpy()


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(side: str, data: Path, block: int, result: Path) -> None:
    """One side in this (fresh) process: rank both directions, print time and peak memory as JSON."""
    import gc

    from medret.retrieval import DEFAULT_TOL, query_ranks

    arrays = np.load(data)
    images, texts, text_ids = arrays["images"], arrays["texts"], arrays["text_ids"]
    i2t_rel, t2i_rel = relevance(text_ids, len(texts))

    def rank(q: np.ndarray, c: np.ndarray, rel: list[np.ndarray]) -> np.ndarray:
        if side == "full":
            return full_matrix_ranks(q, c, rel, DEFAULT_TOL)
        return query_ranks(q, c, rel, block=block, tol=DEFAULT_TOL).rank

    rank(images[:2], texts, i2t_rel[:2])  # warm-up: first-call allocations are not scoring memory
    seconds, peak_mb, reset, ranks = 0.0, 0.0, True, []
    for q, c, rel in ((images, texts, i2t_rel), (texts, images, t2i_rel)):
        gc.collect()
        try:  # "5" resets the peak resident set size (VmHWM) of this process to its current size
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            reset = False
        baseline = _rss_kb("VmRSS")
        start = time.perf_counter()
        ranks.append(rank(q, c, rel))
        seconds += time.perf_counter() - start
        peak_mb = max(peak_mb, (_rss_kb("VmHWM") - baseline) / 1024)
    np.save(result, np.concatenate(ranks))
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "hwm_reset": reset}))


def run_side(side: str, data: Path, block: int, result: Path, threads: int) -> dict[str, Any]:
    """Run one side in a subprocess and return its report."""
    cmd = [sys.executable, __file__, "--child", side, "--data", str(data), "--block", str(block)]
    cmd += ["--result", str(result), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run; no targets")
    parser.add_argument("--images", type=int, default=10000, help="N: image queries / candidates")
    parser.add_argument("--texts", type=int, default=5000, help="U: unique texts")
    parser.add_argument("--dim", type=int, default=512, help="embedding size D")
    parser.add_argument("--blocks", type=int, nargs="+", default=[1 << 20, DEFAULT_BLOCK, 1 << 24])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per side")
    parser.add_argument("--out", type=Path, default=RESULTS / "scoring")
    parser.add_argument("--child", choices=["full", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.child:
        child(args.child, args.data, args.block, args.result)
        return 0
    if args.quick:
        args.images, args.texts, args.dim, args.blocks, args.repeats = 400, 150, 32, [4096], 1
    args.out.mkdir(parents=True, exist_ok=True)
    data, data2 = args.out / "embeddings.npz", args.out / "embeddings-2x.npz"
    make_data(data, args.images, args.texts, args.dim)
    sides = [("full", 0)] + [("chunked", b) for b in args.blocks]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {s: [] for s in sides}
    ranks: dict[tuple[str, int], np.ndarray] = {}
    result = args.out / "ranks.npy"
    for _ in range(max(1, args.repeats)):
        for side, block in sides:
            runs[(side, block)].append(run_side(side, data, block, result, args.threads))
            ranks[(side, block)] = np.load(result)
    scaled = None
    if not args.quick:  # the chunked side on 4× the scores: its peak must not move
        make_data(data2, 2 * args.images, 2 * args.texts, args.dim)
        scaled = run_side("chunked", data2, DEFAULT_BLOCK, result, args.threads)
    for path in (data, data2, result):
        path.unlink(missing_ok=True)
    full_time = min(r["seconds"] for r in runs[("full", 0)])
    rows, failures = [], []
    for side, block in sides:
        rows.append(
            {
                "side": side,
                "scores": 2 * args.images * args.texts,
                "block": block,
                "seconds": min(r["seconds"] for r in runs[(side, block)]),
                "peak_mb": max(r["peak_mb"] for r in runs[(side, block)]),
                "identical": bool(np.array_equal(ranks[(side, block)], ranks[("full", 0)])),
            }
        )
    if scaled is not None:
        rows.append({"side": "chunked", "scores": 8 * args.images * args.texts, "block": DEFAULT_BLOCK, **scaled})
    for r in rows:
        r["bound_mb"] = BYTES_PER_ENTRY * r["block"] / 2**20 + SLACK_MB if r["side"] == "chunked" else None
        if not r.get("identical", True):
            failures.append(f"{r['side']} block {r['block']}: ranks differ from the full matrix's")
        if args.quick:
            continue
        if r["bound_mb"] is not None and r["peak_mb"] > r["bound_mb"]:
            failures.append(f"chunked block {r['block']:,}: peak {r['peak_mb']:.0f} MB > {r['bound_mb']:.0f} MB")
        at_default = r["side"] == "chunked" and r["block"] == DEFAULT_BLOCK and r["scores"] == rows[0]["scores"]
        if at_default and r["seconds"] > TIME_TARGET * full_time:
            failures.append(f"chunked, default block: {r['seconds'] / full_time:.2f}× the full time > {TIME_TARGET}")
    info = machine()
    n, u = args.images, args.texts
    lines = [
        f"Benchmark (c), ranking {n} images × {u} texts both ways (D = {args.dim}; {2 * n * u / 1e6:.0f}M scores): "
        f"chunked vs full matrix; {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
        f"{info['threads']} thread(s), load average {info['load_average_1min']}",
        "",
        table(
            ["side", "scores", "block (scores)", "time s", "time / full", "peak MB", "bound MB", "ranks = full"],
            [
                [
                    r["side"],
                    f"{r['scores'] / 1e6:.0f}M",
                    f"{r['block']:,}" if r["side"] == "chunked" else "all at once",
                    f"{r['seconds']:.2f}",
                    f"{r['seconds'] / full_time:.2f}" if r["scores"] == rows[0]["scores"] else "",
                    f"{r['peak_mb']:.0f}",
                    f"{r['bound_mb']:.0f}" if r["bound_mb"] is not None else "",
                    {True: "yes", False: "NO"}.get(r.get("identical"), "not compared"),
                ]
                for r in rows
            ],
        ),
        "",
        "quick smoke run: ranks compared, no targets"
        if args.quick
        else f"targets: chunked peak <= {BYTES_PER_ENTRY} B × block + {SLACK_MB:.0f} MB; "
        f"time at the default block <= {TIME_TARGET}× full",
    ]
    if not all(r["hwm_reset"] for rs in runs.values() for r in rs):
        lines.append("note: /proc/self/clear_refs not writable; peaks include the loading of the embeddings")
    lines += [f"MISSED: {f}" for f in failures] or ["all checks passed"]
    report(args.out, "scoring", "\n".join(lines), {"machine": info, "args": vars(args), "rows": rows})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
