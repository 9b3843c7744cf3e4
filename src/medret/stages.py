"""One function per workflow stage: read the stage's inputs, call the library, write its outputs.

The workflow scripts only unpack ``snakemake.input/output/params`` and call these; they are
equally usable from Python. Every output is written atomically (temporary path, then rename).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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


def generate_demo(out_csv: str | Path, entry: Mapping[str, Any], workers: int = 1) -> None:
    """Generate the synthetic demo dataset into the directory holding ``out_csv``."""
    from medret.datasets import phantoms

    phantoms.generate(
        Path(out_csv).parent,
        n_train=int(entry["n_train"]),
        n_test=int(entry["n_test"]),
        size=int(entry["render_size"]),
        seed=int(entry["seed"]),
        workers=workers,
    )


def build_manifest(
    name: str,
    entry: Mapping[str, Any],
    sources: Sequence[str],
    out_manifest: str | Path,
    out_train: str | Path,
    out_skipped: str | Path,
    out_corpus: str | Path,
) -> None:
    """Read a dataset through its adapter; write the evaluated manifest, the training table, the skipped
    pairs and the report corpus (the evaluated reports plus those of the ``extra_reports`` splits).

    The images of the evaluated split are screened under the dataset's ``bad_images`` policy; those of
    the training split are checked when a model's training cache is built (a missing one stops it).
    """
    from medret.datasets import load_pairs
    from medret.io import atomic_output, digest
    from medret.manifest import build_corpus, manifest_digest, screen_images, select_pairs, write_table

    pairs = load_pairs(name, entry, list(sources))
    key = f"datasets.{name}.bad_images"
    pairs, skipped = screen_images(pairs, split=entry["split"], policy=entry["bad_images"], key=key)
    with atomic_output(out_skipped) as tmp:
        skipped.to_csv(tmp, index=False)
    manifest = select_pairs(pairs, entry["split"])
    write_table(manifest, out_manifest, digest=manifest_digest(manifest), dataset=name, split=entry["split"])
    if (pairs["split"] == entry["train_split"]).any():
        train = select_pairs(pairs, entry["train_split"], one_per_study=False)
    else:  # an evaluation-only dataset; a model that tries to train on it gets a clear error
        train = manifest.iloc[0:0]
    write_table(train, out_train, digest=manifest_digest(train), dataset=name, split=entry["train_split"])
    extra = list(entry["extra_reports"])
    if entry["split"] in extra:
        raise MedretError(
            f"config key datasets.{name}.extra_reports: {entry['split']!r} is the evaluated split, whose reports "
            "are always candidates; list other splits only"
        )
    unknown = sorted(set(extra) - set(pairs["split"]))
    if unknown:
        found = ", ".join(sorted(pairs["split"].unique()))
        raise MedretError(f"config key datasets.{name}.extra_reports: no split {unknown[0]!r} (splits: {found})")
    corpus = build_corpus(pairs, manifest, extra)
    corpus_digest = digest(corpus.astype(str).to_dict(orient="list"))
    write_table(corpus, out_corpus, digest=corpus_digest, manifest_digest=manifest_digest(manifest), dataset=name)
    n_texts, n_corpus = manifest["text_id"].nunique(), corpus["text_id"].nunique()
    print(
        f"{name}: {len(manifest)} evaluated pairs, {n_texts} unique reports, {len(train)} training pairs, "
        f"{n_corpus} candidate reports ({n_corpus - n_texts} from {', '.join(extra) or 'no other split'})",
        file=sys.stderr,
    )


def build_image_cache(table_path: str | Path, out_path: str | Path, size: int, workers: int = 1) -> None:
    """Decode the images of a manifest or training table once into the HDF5 image cache (``workers`` threads)."""
    from medret import imaging
    from medret.manifest import read_table

    table, meta = read_table(table_path)
    imaging.build_image_cache(
        table["pair_id"].tolist(),
        table["image_path"].tolist(),
        out_path,
        size=size,
        manifest_digest=meta["digest"],
        workers=workers,
    )


def build_corruption_specs(
    manifest_path: str | Path, name: str, entry: Mapping[str, Any], out_path: str | Path
) -> None:
    """Write the spec table of one corruption over the manifest's pairs."""
    from medret.corruptions import make_specs, specs_digest
    from medret.manifest import Manifest, write_table

    manifest = Manifest.read(manifest_path)
    specs = make_specs(manifest.pair_ids, name, entry)
    write_table(
        specs,
        out_path,
        digest=specs_digest(specs, name, entry),
        manifest_digest=manifest.digest,
        corruption=name,
    )


def train_model(
    name: str,
    entry: Mapping[str, Any],
    train_table: str | Path,
    train_images: str | Path,
    out_path: str | Path,
    threads: int = 1,
) -> None:
    """Train a trainable model family on a training table and its image cache."""
    from medret.imaging import ImageCache
    from medret.manifest import read_table
    from medret.models import get_family

    family = get_family(entry, name)
    table, meta = read_table(train_table)
    if table.empty:
        raise MedretError(f"config key models.{name}.train.dataset: that dataset has no pairs in its train_split")
    with ImageCache(train_images, manifest_digest=meta["digest"]) as cache:
        images = cache.read(0, len(cache))
    family.trainer()(entry, table, images, out_path, data_digest=meta["digest"], threads=threads)


def _model_entry(entry: Mapping[str, Any], checkpoint: str | None) -> dict[str, Any]:
    out = {k: v for k, v in entry.items() if k != "train"}
    if checkpoint:
        out["checkpoint"] = checkpoint
    return out


def embed_texts(
    name: str,
    entry: Mapping[str, Any],
    manifest_path: str | Path,
    corpus_path: str | Path,
    out_path: str | Path,
    checkpoint: str | None = None,
) -> None:
    """Embed every report of the corpus (evaluated reports first) with one model."""
    from medret import embeddings
    from medret.manifest import Corpus, Manifest
    from medret.models import load_model

    manifest = Manifest.read(manifest_path)
    texts = Corpus.read(corpus_path, manifest).texts
    model = load_model(_model_entry(entry, checkpoint), name)
    embeddings.embed_texts(model, texts, out_path, model_name=name, manifest_digest=manifest.digest)


def embed_images(
    name: str,
    entry: Mapping[str, Any],
    corruption: str,
    corruption_entry: Mapping[str, Any],
    manifest_path: str | Path,
    cache_path: str | Path,
    specs_path: str | Path,
    out_path: str | Path,
    checkpoint: str | None = None,
) -> None:
    """Embed every cached image of the manifest at every level of one corruption with one model."""
    from medret import embeddings
    from medret.imaging import ImageCache
    from medret.manifest import Manifest, read_table
    from medret.models import load_model

    manifest = Manifest.read(manifest_path)
    specs, meta = read_table(specs_path)
    if meta.get("manifest_digest") != manifest.digest:
        raise MedretError(f"{specs_path}: made for another manifest; delete it and re-run the workflow")
    model = load_model(_model_entry(entry, checkpoint), name)
    with ImageCache(cache_path, manifest_digest=manifest.digest) as cache:
        embeddings.embed_images(
            model,
            cache,
            specs,
            out_path,
            model_name=name,
            corruption=corruption,
            corruption_entry=corruption_entry,
            corruption_digest=meta["digest"],
            manifest_digest=manifest.digest,
        )


def compute_ranks(
    manifest_path: str | Path,
    corpus_path: str | Path,
    text_path: str | Path,
    image_path: str | Path,
    specs_path: str | Path,
    out_path: str | Path,
    block: int,
    dataset: str,
    relevance: Mapping[str, Any],
) -> None:
    """Rank both directions at every level and relevance mode from one model's text and image embeddings.

    ``relevance``: the dataset's ``relevance`` (modes) and ``uncertain_labels`` settings.
    """
    from medret.embeddings import EmbeddingFile, check_provenance
    from medret.manifest import Corpus, Manifest, read_table, write_table
    from medret.retrieval import rank_table, scoring_device

    manifest = Manifest.read(manifest_path)
    corpus = Corpus.read(corpus_path, manifest)
    _, spec_meta = read_table(specs_path)
    text, images = EmbeddingFile.read(text_path), EmbeddingFile.read(image_path)
    check_provenance([text, images], {"manifest_digest": manifest.digest})
    check_provenance([images], {"corruption_spec_digest": spec_meta["digest"]})
    if list(images.arrays["ids"]) != manifest.pair_ids:
        raise MedretError(f"{image_path}: ids do not match {manifest_path}; delete it and re-run the workflow")
    if list(text.arrays["texts"]) != corpus.texts:
        raise MedretError(f"{text_path}: texts do not match {corpus_path}; delete it and re-run the workflow")
    sets = _relevance_sets(manifest, corpus, dataset, relevance)
    start = time.perf_counter()
    ranks = rank_table(
        images.arrays["embeddings"],
        images.arrays["levels"],
        images.arrays["repeats"],
        text.arrays["embeddings"],
        manifest.pair_ids,
        sets,
        block=block,
        device=scoring_device(),
    )
    print(f"ranked {len(ranks)} queries in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    write_table(
        ranks,
        out_path,
        manifest_digest=manifest.digest,
        model=str(text.attrs["model"]),
        model_spec_hash=str(text.attrs["model_spec_hash"]),
        corruption=str(images.attrs["corruption"]),
        corruption_spec_digest=spec_meta["digest"],
    )


def _relevance_sets(manifest: Any, corpus: Any, dataset: str, relevance: Mapping[str, Any]) -> dict[str, tuple]:
    """Relevant candidates of every query, per configured relevance mode (``Manifest.relevance``)."""
    key = f"datasets.{dataset}.relevance"
    uncertain = relevance["uncertain_labels"]
    return {m: manifest.relevance(m, uncertain=uncertain, key=key, corpus=corpus) for m in relevance["relevance"]}


def compute_metrics(
    dataset: str,
    manifest_path: str | Path,
    corpus_path: str | Path,
    rank_paths: Sequence[str | Path],
    out_metrics: str | Path,
    out_robustness: str | Path,
    out_comparisons: str | Path,
    evaluation: Mapping[str, Any],
    relevance: Mapping[str, Any],
) -> None:
    """Metrics with bootstrap CIs, robustness summaries and paired model comparisons of a dataset.

    The ``popularity`` column is :func:`medret.metrics.popularity_baseline` (``relevance``: the
    dataset's relevance settings, as for the ranks).
    """
    from medret import metrics
    from medret.io import atomic_output
    from medret.manifest import Corpus, Manifest, read_table

    manifest = Manifest.read(manifest_path)
    corpus = Corpus.read(corpus_path, manifest)
    frames = []
    for path in rank_paths:
        ranks, meta = read_table(path)
        if meta.get("manifest_digest") != manifest.digest:
            raise MedretError(f"{path}: ranks of another manifest; delete it and re-run the workflow")
        frames.append(ranks.assign(model=meta["model"], corruption=meta["corruption"]))
    sets = _relevance_sets(manifest, corpus, dataset, relevance)
    popularity = metrics.popularity_baseline(corpus.frequency, sets)
    result = metrics.evaluate(
        pd.concat(frames, ignore_index=True),
        manifest.clusters(),
        dataset=dataset,
        n_boot=int(evaluation["bootstrap"]),
        seed=int(evaluation["seed"]),
        ci=float(evaluation["ci"]),
        popularity=popularity,
    )
    for frame, path in zip(result, (out_metrics, out_robustness, out_comparisons), strict=True):
        with atomic_output(path) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")


def plot_results(
    metrics_path: str | Path,
    robustness_path: str | Path,
    corruption: str,
    recall_paths: Sequence[str | Path],
    robustness_paths: Sequence[str | Path],
    kind: str = "occlusion",
) -> None:
    """Recall-vs-level curves and robustness summaries of one corruption (of kind ``kind``)."""
    from medret import plots

    table = pd.read_csv(metrics_path)
    plots.plot_recall_curves(table, corruption, recall_paths, kind=kind)
    plots.plot_robustness(pd.read_csv(robustness_path), corruption, robustness_paths, kind=kind)


def plot_examples(
    manifest_path: str | Path,
    cache_path: str | Path,
    specs_path: str | Path,
    corruption: str,
    entry: Mapping[str, Any],
    n_examples: int,
    out_paths: Sequence[str | Path],
) -> None:
    """A panel of example images of the manifest at every level of one corruption."""
    import torch

    from medret import plots
    from medret.corruptions import get_kind
    from medret.imaging import ImageCache
    from medret.manifest import Manifest, read_table

    manifest = Manifest.read(manifest_path)
    specs, _ = read_table(specs_path)
    kind = get_kind(entry, corruption)
    first = specs[specs["repeat"] == 0]
    levels = sorted(first["level"].unique())
    with ImageCache(cache_path, manifest_digest=manifest.digest) as cache:
        n = min(n_examples, len(cache))
        # Evenly spaced pairs, so the panel does not depend on the first rows only.
        picks = np.linspace(0, len(cache) - 1, n).round().astype(int)
        images = np.stack([cache.read(i, i + 1)[0] for i in picks])
        boxes = torch.from_numpy(cache.boxes[picks])
        ids = [cache.ids[i] for i in picks]
    panel = np.zeros((n, len(levels), *images.shape[1:]), dtype=np.uint8)
    for j, level in enumerate(levels):
        rows = first[first["level"] == level].set_index("pair_id").loc[ids]
        panel[:, j] = kind.apply(torch.from_numpy(images), boxes, rows, entry).numpy()
    plots.plot_examples(panel, levels, ids, out_paths, title=f"{corruption}: example images at each level")
