"""One function per workflow stage: read the stage's inputs, call the library, write its outputs.

The workflow scripts only unpack ``snakemake.input/output/params/resources`` and call these; they
are equally usable from Python. Every output is written atomically (temporary path, then rename).

Every stage function takes keyword arguments only. A stage that runs a model takes ``gpus``, the GPUs
its job holds (:func:`medret.jobs.gpus_held`); the job glue (logs, threads, GPUs, the model files
checked at start) is :mod:`medret.jobs`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medret.errors import MedretError
from medret.io import atomic_output, digest, stale_artifact
from medret.jobs import job_device


def generate_demo(*, out_csv: str | Path, entry: Mapping[str, Any], workers: int = 1) -> None:
    """Generate the synthetic demo dataset into the directory holding ``out_csv``.

    ``entry``: the demo dataset's ``n_train``, ``n_test``, ``render_size`` and ``seed`` (other keys
    are not read).
    """
    from medret import phantoms

    phantoms.generate(
        Path(out_csv).parent,
        n_train=int(entry["n_train"]),
        n_test=int(entry["n_test"]),
        size=int(entry["render_size"]),
        seed=int(entry["seed"]),
        workers=workers,
    )


def build_manifest(
    *,
    name: str,
    entry: Mapping[str, Any],
    sources: Sequence[str],
    out_manifest: str | Path,
    out_train: str | Path,
    out_skipped: str | Path,
) -> None:
    """Read a dataset through its adapter; write the evaluated manifest, the training table and the skipped pairs.

    The images of the evaluated split are screened under the dataset's ``bad_images`` policy; those of
    the training split are checked when a model's training cache is built (a missing one stops it).
    The report corpus is :func:`build_report_corpus`'s, so editing ``extra_reports`` leaves the
    manifest, and every image cache and embedding made from it, untouched.
    """
    from medret.datasets import load_pairs
    from medret.io import write_table
    from medret.manifest import manifest_digest, screen_images, select_pairs

    pairs = load_pairs(name, entry, list(sources))
    key = f"datasets.{name}.bad_images"
    pairs, skipped = screen_images(pairs, split=entry["split"], policy=entry["bad_images"], key=key)
    manifest, left_out = select_pairs(pairs, entry["split"], views=entry["views"])
    skipped = pd.concat([skipped, left_out], ignore_index=True)
    with atomic_output(out_skipped) as tmp:
        skipped.to_csv(tmp, index=False)
    notes = manifest_notes(name, entry, skipped, pairs, manifest)
    for note in notes:
        print(note, file=sys.stderr)
    write_table(
        manifest,
        out_manifest,
        digest=manifest_digest(manifest),
        dataset=name,
        split=entry["split"],
        notes=json.dumps(notes),
    )
    if (pairs["split"] == entry["train_split"]).any():
        train, _ = select_pairs(pairs, entry["train_split"], one_per_study=False)
    else:  # an evaluation-only dataset; a model that tries to train on it gets a clear error
        train = manifest.iloc[0:0]
    write_table(train, out_train, digest=manifest_digest(train), dataset=name, split=entry["train_split"])
    print(
        f"{name}: {len(manifest)} evaluated pairs, {manifest['text_id'].nunique()} unique reports, "
        f"{len(train)} training pairs, {len(skipped)} left out (skipped.csv)",
        file=sys.stderr,
    )


def manifest_notes(
    name: str, entry: Mapping[str, Any], skipped: pd.DataFrame, pairs: pd.DataFrame, manifest: pd.DataFrame
) -> list[str]:
    """The warnings of a manifest, one line each: pairs left out and why, and the studies the views rule
    left without an image (also shown in summary.md and at the end of the run)."""
    notes = []
    problems = skipped["problem"].astype(str)
    views = problems.str.endswith("; views: frontal)")
    empty = problems.eq("empty report")
    image = ~empty & ~views
    if image.any():
        notes.append(
            f"medret warning: dataset {name!r}: {int(image.sum())} pairs left out for a missing, unreadable or "
            "degenerate image (bad_images: skip; listed in skipped.csv)"
        )
    if empty.any():
        notes.append(
            f"medret warning: dataset {name!r}: {int(empty.sum())} pairs of split {entry['split']!r} left out for "
            "a report that is empty after stripping (listed in skipped.csv)"
        )
    if views.any():
        study = pairs.set_index("pair_id")["study_id"]
        left = {study.get(p) or f"pair:{p}" for p in skipped.loc[views, "pair_id"]}
        kept = {s or f"pair:{p}" for p, s in zip(manifest["pair_id"], manifest["study_id"], strict=True)}
        notes.append(
            f"medret warning: dataset {name!r}: views: frontal left out {int(views.sum())} lateral or other "
            f"non-frontal images, and with them {len(left - kept)} studies that have no frontal image "
            "(listed in skipped.csv; views: any keeps them)"
        )
    return notes


def build_report_corpus(
    *,
    name: str,
    entry: Mapping[str, Any],
    sources: Sequence[str],
    manifest_path: str | Path,
    out_corpus: str | Path,
) -> None:
    """Write the report corpus: the manifest's reports plus those of the ``extra_reports`` splits.

    The dataset is read through its adapter again only when ``extra_reports`` names splits (only
    their reports are taken from it; their images are never read).
    """
    from medret.datasets import load_pairs
    from medret.io import read_table, write_table
    from medret.manifest import build_corpus

    manifest, meta = read_table(manifest_path)
    extra = list(entry["extra_reports"])
    if entry["split"] in extra:
        raise MedretError(
            f"config key datasets.{name}.extra_reports: {entry['split']!r} is the evaluated split, whose reports "
            "are always candidates; list other splits only"
        )
    pairs = load_pairs(name, entry, list(sources)) if extra else manifest.iloc[0:0]
    unknown = sorted(set(extra) - set(pairs["split"]))
    if unknown:
        found = ", ".join(sorted(pairs["split"].unique()))
        raise MedretError(f"config key datasets.{name}.extra_reports: no split {unknown[0]!r} (splits: {found})")
    corpus = build_corpus(pairs, manifest, extra)
    corpus_digest = digest(corpus.astype(str).to_dict(orient="list"))
    write_table(corpus, out_corpus, digest=corpus_digest, manifest_digest=meta["digest"], dataset=name)
    n_texts, n_corpus = manifest["text_id"].nunique(), corpus["text_id"].nunique()
    print(
        f"{name}: {n_corpus} candidate reports ({n_texts} evaluated, {n_corpus - n_texts} from "
        f"{', '.join(extra) or 'no other split'})",
        file=sys.stderr,
    )


def build_image_cache(
    *, table_path: str | Path, out_path: str | Path, size: int, fast: bool = False, workers: int = 1
) -> None:
    """Decode the images of a manifest or training table once into the HDF5 image cache (``workers`` threads;
    ``fast``: reduced JPEG decoding, see :func:`medret.imaging.decode_to_canvas`)."""
    from medret import imaging
    from medret.io import read_table

    table, meta = read_table(table_path)
    imaging.build_image_cache(
        table["pair_id"].tolist(),
        table["image_path"].tolist(),
        out_path,
        size=size,
        manifest_digest=meta["digest"],
        workers=workers,
        fast=fast,
    )


def build_corruption_specs(
    *, manifest_path: str | Path, name: str, entry: Mapping[str, Any], out_path: str | Path
) -> None:
    """Write the spec table of one corruption over the manifest's pairs."""
    from medret.corruptions import make_specs, specs_digest
    from medret.io import write_table
    from medret.manifest import Manifest

    manifest = Manifest.read(manifest_path)
    specs = make_specs(manifest.pair_ids, name, entry, regions=manifest.regions())
    write_table(
        specs,
        out_path,
        digest=specs_digest(specs, name, entry),
        manifest_digest=manifest.digest,
        corruption=name,
    )


def train_model(
    *,
    name: str,
    entry: Mapping[str, Any],
    train_table: str | Path,
    train_images: str | Path,
    out_path: str | Path,
    threads: int = 1,
    gpus: int | None = None,
) -> None:
    """Train a trainable model family on a training table and its image cache.

    ``gpus``: the GPUs the job holds (:func:`gpus_held`); with none it trains on the CPU. None
    (outside a workflow job): on the entry's ``device``.
    """
    from medret.imaging import ImageCache
    from medret.io import read_table
    from medret.models import get_family

    family = get_family(entry, name)
    table, meta = read_table(train_table)
    if table.empty:
        raise MedretError(f"config key models.{name}.train.dataset: that dataset has no pairs in its train_split")
    with ImageCache(train_images, manifest_digest=meta["digest"]) as cache:
        images = cache.read(0, len(cache))
    entry = {**entry, "device": job_device(entry.get("device", "auto"), gpus)}
    family.trainer()(entry, table, images, out_path, data_digest=meta["digest"], threads=threads)


def _model_entry(entry: Mapping[str, Any], files: Mapping[str, Any] | None, gpus: int | None) -> dict[str, Any]:
    """The entry a model is built from: its options, the files the job got as inputs (those of the family's
    file options among ``files``; a job's named inputs may hold others), and the job's device."""
    from medret.models import get_family

    out = {k: v for k, v in entry.items() if k != "train"}
    for key in get_family(entry).files:
        path = (files or {}).get(key)
        if path:
            out[key] = str(path)
    out["device"] = job_device(out.get("device", "auto"), gpus)
    return out


def embed_texts(
    *,
    name: str,
    entry: Mapping[str, Any],
    manifest_path: str | Path,
    corpus_path: str | Path,
    out_path: str | Path,
    files: Mapping[str, Any] | None = None,
    gpus: int | None = None,
) -> None:
    """Embed every report of the corpus (evaluated reports first) with one model.

    ``files`` (the job's inputs) replace the paths of the entry's file options; ``gpus``: see :func:`train_model`.
    """
    from medret import embeddings
    from medret.manifest import Corpus, Manifest
    from medret.models import load_model

    manifest = Manifest.read(manifest_path)
    texts = Corpus.read(corpus_path, manifest).texts
    model = load_model(_model_entry(entry, files, gpus), name)
    embeddings.embed_texts(model, texts, out_path, model_name=name, manifest_digest=manifest.digest)


def embed_prompts(
    *,
    name: str,
    entry: Mapping[str, Any],
    manifest_path: str | Path,
    options: Mapping[str, Any],
    out_path: str | Path,
    files: Mapping[str, Any] | None = None,
    gpus: int | None = None,
) -> None:
    """Embed the zero-shot prompt pairs of the dataset's findings (:mod:`medret.classification`) with one model:
    positive and negative prompt of each finding in turn; no rows for a dataset without labels."""
    from medret import classification, embeddings
    from medret.manifest import Manifest
    from medret.models import load_model

    manifest = Manifest.read(manifest_path)
    labels, _ = classification.finding_labels(manifest.table, "positive")
    pairs = classification.prompt_pairs(list(labels.columns), options)
    texts = [prompt for pair in pairs.values() for prompt in pair]
    model = load_model(_model_entry(entry, files, gpus), name)
    embeddings.embed_texts(model, texts, out_path, model_name=name, manifest_digest=manifest.digest)


def embed_images(
    *,
    name: str,
    entry: Mapping[str, Any],
    corruption: str,
    corruption_entry: Mapping[str, Any],
    manifest_path: str | Path,
    cache_path: str | Path,
    specs_path: str | Path,
    out_path: str | Path,
    files: Mapping[str, Any] | None = None,
    gpus: int | None = None,
    dataset: str = "dataset",
) -> None:
    """Embed every cached image of the manifest at every level of one corruption with one model.

    ``checkpoint``/``text_model`` replace the entry's paths; ``gpus``: see :func:`train_model`. A
    cache too small for the model's preprocessing gets one warning line on stderr naming the
    ``image_size`` of ``dataset`` that avoids enlarging the images.
    """
    from medret import embeddings
    from medret.imaging import ImageCache
    from medret.io import read_table
    from medret.manifest import Manifest
    from medret.models import load_model

    manifest = Manifest.read(manifest_path)
    specs, meta = read_table(specs_path)
    if meta.get("manifest_digest") != manifest.digest:
        raise stale_artifact(specs_path, "made for another manifest")
    model = load_model(_model_entry(entry, files, gpus), name)
    with ImageCache(cache_path, manifest_digest=manifest.digest) as cache:
        note = embeddings.upsampling_warning(
            model, cache.boxes, model_name=name, dataset=dataset, image_size=cache.size, sizes=cache.sizes
        )
        if note is not None:
            print(note, file=sys.stderr)
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
            notes=[] if note is None else [note],
        )


def compute_ranks(
    *,
    manifest_path: str | Path,
    corpus_path: str | Path,
    text_path: str | Path,
    image_path: str | Path,
    specs_path: str | Path,
    out_path: str | Path,
    block: int,
    dataset: str,
    relevance: Mapping[str, Any],
    gpus: int = 0,
) -> None:
    """Rank both directions at every level and relevance mode from one model's text and image embeddings.

    ``relevance``: the dataset's ``relevance`` (modes) and ``uncertain_labels`` settings. Scored on
    CUDA only when the job holds a GPU (``gpus`` > 0) and CUDA is present.
    """
    from medret.embeddings import EmbeddingFile, check_provenance
    from medret.io import read_table, write_table
    from medret.manifest import Corpus, Manifest
    from medret.retrieval import rank_table, scoring_device, worst_over_repeats

    manifest = Manifest.read(manifest_path)
    corpus = Corpus.read(corpus_path, manifest)
    specs, spec_meta = read_table(specs_path)
    text, images = EmbeddingFile.read(text_path), EmbeddingFile.read(image_path)
    check_provenance([text, images], {"manifest_digest": manifest.digest})
    check_provenance([images], {"corruption_spec_digest": spec_meta["digest"]})
    if list(images.arrays["ids"]) != manifest.pair_ids:
        raise stale_artifact(image_path, f"ids do not match {manifest_path}")
    if list(text.arrays["texts"]) != corpus.texts:
        raise stale_artifact(text_path, f"texts do not match {corpus_path}")
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
        device=scoring_device(gpus),
    )
    print(f"ranked {len(ranks)} queries in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if "grid_cell" in specs.columns:  # placement: worst
        ranks = worst_over_repeats(ranks)
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
    *,
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
    from medret.manifest import Corpus, Manifest

    manifest = Manifest.read(manifest_path)
    corpus = Corpus.read(corpus_path, manifest)
    sets = _relevance_sets(manifest, corpus, dataset, relevance)
    popularity = metrics.popularity_baseline(corpus.frequency, sets)
    result = metrics.evaluate(
        _read_ranks(rank_paths, manifest.digest),
        manifest.clusters(),
        dataset=dataset,
        **_bootstrap(evaluation),
        popularity=popularity,
    )
    for frame, path in zip(result, (out_metrics, out_robustness, out_comparisons), strict=True):
        _write_csv(frame, path)


def _bootstrap(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """The bootstrap settings of ``evaluation`` as the statistics functions take them."""
    return {"n_boot": int(evaluation["bootstrap"]), "seed": int(evaluation["seed"]), "ci": float(evaluation["ci"])}


def _write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """A results table, written atomically with six significant digits."""
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def _read_ranks(rank_paths: Sequence[str | Path], manifest_digest: str) -> pd.DataFrame:
    """Every ranks table of a dataset in one frame, with its model and corruption (from each file's metadata)."""
    from medret.io import read_table

    frames = []
    for path in rank_paths:
        ranks, meta = read_table(path)
        if meta.get("manifest_digest") != manifest_digest:
            raise stale_artifact(path, "ranks of another manifest")
        frames.append(ranks.assign(model=meta["model"], corruption=meta["corruption"]))
    return pd.concat(frames, ignore_index=True)


def compute_findings(
    *,
    dataset: str,
    manifest_path: str | Path,
    rank_paths: Sequence[str | Path],
    out_path: str | Path,
    evaluation: Mapping[str, Any],
    relevance: Mapping[str, Any],
) -> None:
    """Every metric per finding (:mod:`medret.findings`), with the metrics stage's bootstrap settings; a dataset
    without labels gets a table with no rows."""
    from medret import findings
    from medret.manifest import Manifest

    manifest = Manifest.read(manifest_path)
    queries = findings.finding_queries(manifest.table, len(manifest.texts), uncertain=relevance["uncertain_labels"])
    min_queries = int(evaluation["findings"]["min_queries"])
    for note in findings.left_out(queries, min_queries):
        print(f"medret: {note}", file=sys.stderr)
    table = findings.finding_metrics(
        _read_ranks(rank_paths, manifest.digest),
        queries,
        manifest.clusters(),
        dataset=dataset,
        min_queries=min_queries,
        **_bootstrap(evaluation),
    )
    _write_csv(table, out_path)


def compute_placement(
    *,
    dataset: str,
    manifest_path: str | Path,
    rank_paths: Sequence[str | Path],
    out_path: str | Path,
    corruptions: Mapping[str, Mapping[str, Any]],
    evaluation: Mapping[str, Any],
) -> None:
    """Occluding the region of interest against the same area elsewhere (:mod:`medret.placement`); a table with no
    rows when the config has no inside/outside pair or the dataset no regions."""
    from medret import placement
    from medret.manifest import Manifest

    manifest = Manifest.read(manifest_path)
    pairs = placement.placement_pairs(corruptions)
    queries = placement.region_queries(manifest.table, len(manifest.texts))
    if pairs and not queries:
        print(f"medret: dataset {dataset} has no regions of interest; no placement contrast", file=sys.stderr)
    table = placement.placement_contrast(
        _read_ranks(rank_paths, manifest.digest),
        pairs,
        queries,
        manifest.clusters(),
        dataset=dataset,
        **_bootstrap(evaluation),
    )
    _write_csv(table, out_path)


def classify(
    *,
    dataset: str,
    manifest_path: str | Path,
    prompt_paths: Sequence[str | Path],
    image_paths: Sequence[str | Path],
    out_table: str | Path,
    out_comparisons: str | Path,
    options: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    relevance: Mapping[str, Any],
) -> None:
    """Zero-shot classification of every finding at every level of every corruption, from the cached image
    embeddings and each model's prompt embeddings (:mod:`medret.classification`)."""
    from medret import classification
    from medret.embeddings import EmbeddingFile, check_provenance
    from medret.manifest import Manifest

    manifest = Manifest.read(manifest_path)
    labels, labelled = classification.finding_labels(manifest.table, relevance["uncertain_labels"])
    pairs = classification.prompt_pairs(list(labels.columns), options)
    texts = [prompt for pair in pairs.values() for prompt in pair]
    labels = labels[labelled].reset_index(drop=True)
    min_positives = int(options["min_positives"])
    for note in classification.left_out(labels, pairs, min_positives):
        print(f"medret: {note}", file=sys.stderr)
    kept = classification.kept_findings(labels, pairs, min_positives)
    prompts = {}
    for path in prompt_paths:
        prompt_file = EmbeddingFile.read(path)
        check_provenance([prompt_file], {"manifest_digest": manifest.digest})
        if list(prompt_file.arrays["texts"]) != texts:
            raise stale_artifact(path, "prompts of other templates")
        emb = prompt_file.arrays["embeddings"].reshape(len(pairs), 2, -1) if texts else None
        prompts[str(prompt_file.attrs["model"])] = emb
    columns = [list(pairs).index(f) for f in kept]
    image_scores = {}
    for path in image_paths:
        images = EmbeddingFile.read(path)
        check_provenance([images], {"manifest_digest": manifest.digest})
        if list(images.arrays["ids"]) != manifest.pair_ids:
            raise stale_artifact(path, f"ids do not match {manifest_path}")
        model, corruption = str(images.attrs["model"]), str(images.attrs["corruption"])
        if not kept:
            continue
        values = classification.scores(
            images.arrays["embeddings"][:, labelled], prompts[model][columns], options["rule"]
        )
        image_scores[(model, corruption)] = (images.arrays["levels"], values)
    clusters = manifest.clusters()
    patients = [clusters[p] or f"pair:{p}" for p in np.asarray(manifest.pair_ids)[labelled]]
    table, comparisons = (
        classification.classification_tables(
            image_scores,
            labels[kept],
            patients,
            dataset=dataset,
            **_bootstrap(evaluation),
        )
        if kept
        else (
            pd.DataFrame(columns=list(classification.CLASSIFICATION_COLUMNS)),
            pd.DataFrame(columns=list(classification.COMPARISON_COLUMNS)),
        )
    )
    for frame, path in ((table, out_table), (comparisons, out_comparisons)):
        _write_csv(frame, path)


def plot_classification(*, table_path: str | Path, corruption: str, kind: str, out_paths: Sequence[str | Path]) -> None:
    """AUROC against level per finding and macro, one corruption (of kind ``kind``)."""
    from medret import plots

    plots.plot_classification(pd.read_csv(table_path), corruption, out_paths, kind=kind)


def plot_results(
    *,
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
    *,
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
    from medret.io import read_table
    from medret.manifest import Manifest

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


def write_summary(
    *,
    dataset: str,
    metrics_path: str | Path,
    robustness_path: str | Path,
    comparisons_path: str | Path,
    manifest_path: str | Path,
    embedding_paths: Sequence[str | Path],
    corruptions: Mapping[str, Mapping[str, Any]],
    evaluation: Mapping[str, Any],
    out_path: str | Path,
    findings_path: str | Path | None = None,
    placement_path: str | Path | None = None,
    classification_path: str | Path | None = None,
    uncertain_labels: str = "positive",
) -> None:
    """``summary.md`` of a dataset: the metrics stage's tables, the results per finding and by occluder placement,
    and the warnings of its artifacts."""
    from medret import summary

    summary.write_summary(
        dataset,
        metrics_path,
        robustness_path,
        comparisons_path,
        out_path,
        corruptions,
        evaluation,
        manifest_path=manifest_path,
        embedding_paths=embedding_paths,
        findings_path=findings_path,
        placement_path=placement_path,
        classification_path=classification_path,
        uncertain_labels=uncertain_labels,
    )


def plot_findings(
    *,
    findings_path: str | Path,
    corruptions: Mapping[str, Mapping[str, Any]],
    evaluation: Mapping[str, Any],
    out_paths: Sequence[str | Path],
) -> None:
    """The per-finding figure of a dataset (``evaluation.findings``' metric and direction)."""
    from medret import plots
    from medret.findings import shown_relevance

    table = pd.read_csv(findings_path)
    relevance = shown_relevance(table)
    options = evaluation["findings"]
    plots.plot_findings(
        table,
        corruptions,
        out_paths,
        metric=options["metric"],
        direction=options["direction"],
        relevance=relevance,
        chosen_levels=options.get("levels", {}),
    )
