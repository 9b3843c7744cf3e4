# Shared glue: config validation, the tables derived from it, and input, params and resource functions.
import os
import re
import sys

from medret.config import load_schema, read_config_file, validate_config
from medret.datasets import get_adapter
from medret.errors import MedretError
from medret.io import check_output_dir
from medret.jobs import model_files, visible_gpus
from medret.metrics import RANK_COLUMNS
from medret.summary import print_run_warnings

# Never reach for a model hub: a missing file must fail at once, not after minutes of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    # Snakemake's YAML reading lets a repeated key silently replace the first: read the files strictly.
    for _path in workflow.config_settings.configfiles or [
        os.path.join(workflow.basedir, "config", "config.yaml")
    ]:
        read_config_file(_path)
    config.update(
        validate_config(
            config, load_schema(workflow.source_path("../../config/schema.yaml"))
        )
    )
    # A file in the way of results_dir would crash Snakemake's own planning with a traceback.
    check_output_dir(config["results_dir"], "results_dir", writable=False)
    RESULTS = config["results_dir"]
    TRAINED_MODELS = [m for m, e in config["models"].items() if "train" in e]
    # Weights and tokenizer files, checked now: a missing one is one line naming its config key and
    # where it is published, not Snakemake's missing-input report. Trained checkpoints are outputs.
    TRAINED = {
        os.path.normpath(f"{RESULTS}/models/{m}/checkpoint.pt") for m in TRAINED_MODELS
    }
    MODEL_FILES = {m: model_files(m, e, TRAINED) for m, e in config["models"].items()}
except MedretError as exc:
    sys.exit(f"medret config error: {exc}")

DATASETS = config["datasets"]
MODELS = config["models"]
CORRUPTIONS = config["corruptions"]
DEMO_DATASETS = [d for d, e in DATASETS.items() if e["adapter"] == "demo"]

# What each stage reads of a dataset entry. Snakemake re-runs a job when its params change, so the
# params of a job hold exactly what it reads, and an edit re-runs only the jobs that read the key.
#: Read by the demo generator only; they reach the manifest through the generated CSV.
DEMO_KEYS = tuple(get_adapter("demo").options)
#: Read by the ranks and metrics only.
RELEVANCE_KEYS = ("relevance", "uncertain_labels")
#: Keys the manifest does not read: the image cache's size, the corpus's extra splits and the above.
NOT_MANIFEST_KEYS = (
    "image_size",
    "fast_decode",
    "extra_reports",
    *RELEVANCE_KEYS,
    *DEMO_KEYS,
)
#: Keys the report corpus does not read (the screening policy and training split reach it through
#: the manifest).
NOT_CORPUS_KEYS = (
    "image_size",
    "fast_decode",
    "views",
    "bad_images",
    "train_split",
    *RELEVANCE_KEYS,
    *DEMO_KEYS,
)


def _alternatives(names):
    # A wildcard may only take one of the configured names (escaped, longest first).
    return (
        "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"
    )


def final_outputs():
    """The targets of the default rule: tables, summary and plots of every dataset."""
    out = []
    for dataset in DATASETS:
        out += [
            f"{RESULTS}/{dataset}/metrics.csv",
            f"{RESULTS}/{dataset}/robustness.csv",
            f"{RESULTS}/{dataset}/comparisons.csv",
            f"{RESULTS}/{dataset}/findings.csv",
            f"{RESULTS}/{dataset}/placement.csv",
            f"{RESULTS}/{dataset}/classification.csv",
            f"{RESULTS}/{dataset}/classification_comparisons.csv",
            f"{RESULTS}/{dataset}/summary.md",
            *expand(f"{RESULTS}/{dataset}/plots/findings.{{ext}}", ext=("png", "pdf")),
        ]
        for corruption in CORRUPTIONS:
            for plot in ("recall", "robustness", "examples", "classification"):
                out += expand(
                    "{results}/{dataset}/plots/{corruption}_{plot}.{ext}",
                    results=RESULTS,
                    dataset=dataset,
                    corruption=corruption,
                    plot=plot,
                    ext=("png", "pdf"),
                )
    return out


def intermediate_outputs():
    """Every cached artifact the final outputs are made from, also a target of the default rule.

    Snakemake does not rebuild a missing intermediate file whose consumers are up to date, so a
    deleted (e.g. damaged) embedding, rank table or image cache would stay missing. As a target it
    is rebuilt by a plain re-run, and being newer than its consumers, they re-run too (mtime).
    """
    out = []
    for dataset, entry in DATASETS.items():
        base = f"{RESULTS}/{dataset}"
        if entry["adapter"] == "demo":
            out.append(f"resources/{dataset}/pairs.csv")
        out += [f"{base}/{name}" for name in ("manifest.parquet", "train.parquet")]
        out += [
            f"{base}/skipped.csv",
            f"{base}/corpus.parquet",
            f"{base}/images/eval.h5",
        ]
        if any(MODELS[m]["train"]["dataset"] == dataset for m in TRAINED_MODELS):
            out.append(f"{base}/images/train.h5")
        out += [f"{base}/corruptions/{c}.parquet" for c in CORRUPTIONS]
        for model in MODELS:
            out += [
                f"{base}/embeddings/{model}/text.h5",
                f"{base}/embeddings/{model}/prompts.h5",
            ]
            for corruption in CORRUPTIONS:
                out.append(f"{base}/embeddings/{model}/images/{corruption}.h5")
                out.append(f"{base}/ranks/{model}/{corruption}.parquet")
    out += [f"{RESULTS}/models/{m}/checkpoint.pt" for m in TRAINED_MODELS]
    return out


# ---------------------------------------------------------------------------------------------
# Input functions


def dataset_sources(wildcards):
    """The files a dataset is read from, as its adapter declares them."""
    entry = DATASETS[wildcards.dataset]
    return get_adapter(entry["adapter"]).sources(wildcards.dataset, entry)


def model_inputs(wildcards):
    """The files a model reads, named by their config keys (the family's file options, e.g. checkpoint,
    text_model): a trained model's checkpoint is made by the train_model step, the others are configured.
    """
    files = dict(MODEL_FILES[wildcards.model])
    if wildcards.model in TRAINED_MODELS:
        files["checkpoint"] = f"{RESULTS}/models/{wildcards.model}/checkpoint.pt"
    return files


def training_inputs(wildcards):
    """Training table and image cache of the dataset a model trains on."""
    dataset = MODELS[wildcards.model]["train"]["dataset"]
    return {
        "table": f"{RESULTS}/{dataset}/train.parquet",
        "images": f"{RESULTS}/{dataset}/images/train.h5",
    }


def cache_table(wildcards):
    """The manifest (subset eval) or training table (subset train) whose images are cached."""
    name = "manifest" if wildcards.subset == "eval" else "train"
    return f"{RESULTS}/{wildcards.dataset}/{name}.parquet"


def dataset_image_embeddings(wildcards):
    """Every image embedding file of a dataset (the summary reads their warnings)."""
    return expand(
        "{results}/{dataset}/embeddings/{model}/images/{corruption}.h5",
        results=RESULTS,
        dataset=wildcards.dataset,
        model=MODELS,
        corruption=CORRUPTIONS,
    )


def dataset_prompt_embeddings(wildcards):
    """Every model's prompt embeddings for a dataset (zero-shot classification)."""
    return expand(
        "{results}/{dataset}/embeddings/{model}/prompts.h5",
        results=RESULTS,
        dataset=wildcards.dataset,
        model=MODELS,
    )


def dataset_ranks(wildcards):
    """Every rank table of a dataset: all models × all corruptions."""
    return expand(
        "{results}/{dataset}/ranks/{model}/{corruption}.parquet",
        results=RESULTS,
        dataset=wildcards.dataset,
        model=MODELS,
        corruption=CORRUPTIONS,
    )


# ---------------------------------------------------------------------------------------------
# Params functions: what each job reads of the config (module comment above)


def demo_options(wildcards):
    """The demo generator's options of the dataset."""
    return {k: DATASETS[wildcards.dataset][k] for k in DEMO_KEYS}


def manifest_options(wildcards):
    """The dataset entry as the manifest reads it: adapter options, splits, bad_images policy."""
    entry = DATASETS[wildcards.dataset]
    return {k: v for k, v in entry.items() if k not in NOT_MANIFEST_KEYS}


def corpus_options(wildcards):
    """The dataset entry as the report corpus reads it: adapter options, split, extra_reports."""
    entry = DATASETS[wildcards.dataset]
    return {k: v for k, v in entry.items() if k not in NOT_CORPUS_KEYS}


def dataset_relevance(wildcards):
    """The dataset's relevance settings (only these re-run the ranks when edited)."""
    return {k: DATASETS[wildcards.dataset][k] for k in RELEVANCE_KEYS}


def dataset_image_size(wildcards):
    return DATASETS[wildcards.dataset]["image_size"]


def dataset_fast_decode(wildcards):
    return DATASETS[wildcards.dataset]["fast_decode"]


def training_options(wildcards):
    """What changes a trained model's weights: its training options and device (not batch_size or dtype,
    which only the embedding stages read)."""
    return {k: MODELS[wildcards.model][k] for k in ("family", "device", "train")}


def model_options(wildcards):
    """A model entry as the embedding stages read it: its options. Its files are inputs."""
    skip = ("train", *MODEL_FILES[wildcards.model])
    return {k: v for k, v in MODELS[wildcards.model].items() if k not in skip}


def corruption_entry(wildcards):
    return CORRUPTIONS[wildcards.corruption]


def corruption_kind(wildcards):
    return CORRUPTIONS[wildcards.corruption]["kind"]


def bootstrap_options(wildcards):
    """The evaluation options the metrics read (the summary reads bootstrap and ci of them)."""
    return {k: config["evaluation"][k] for k in ("bootstrap", "seed", "ci")}


def prompt_options(wildcards):
    """What the prompts are made of (the templates and pairs; not the rule or the threshold)."""
    options = config["evaluation"]["classification"]
    return {k: options[k] for k in ("positive", "negative", "prompts")}


def classification_options(wildcards):
    return config["evaluation"]["classification"]


def dataset_uncertain_labels(wildcards):
    """The one relevance setting classification reads."""
    return {"uncertain_labels": DATASETS[wildcards.dataset]["uncertain_labels"]}


def findings_options(wildcards):
    """What the per-finding table depends on: the bootstrap and the minimum number of queries."""
    return {
        **bootstrap_options(wildcards),
        "findings": {"min_queries": config["evaluation"]["findings"]["min_queries"]},
    }


def display_options(wildcards):
    """What the summary and the findings plot read: the intervals' settings and what to show per finding."""
    return {k: config["evaluation"][k] for k in ("bootstrap", "ci", "findings")}


def scoring_block(wildcards, resources):
    """evaluation.block, the tile size of rank scoring. Ranks do not depend on it, so it must not
    re-run them: Snakemake leaves a params function of the job's resources out of its params trigger
    (like threads, it is a runtime setting), hence the unused argument."""
    return config["evaluation"]["block"]


# ---------------------------------------------------------------------------------------------
# Resource functions


def gpu_request(wildcards):
    """One GPU for a stage that runs a model on one; none when this machine runs the job and has none.

    Without a GPU the job runs on the CPU anyway, and holding the default profile's one `gpu` would
    only keep the other GPU stages' jobs from running beside it. Cluster jobs always ask for one.
    """
    return 1 if not workflow.local_exec or visible_gpus() else 0


def training_memory(wildcards, input, attempt):
    """Training reads the whole training image cache into memory: the HDF5 file is gzip-compressed
    (radiographs about 1.5-2×, the demo's noisy phantoms 1.1×), plus 2 GB for the model and batches;
    each retry doubles it."""
    return int((2000 + 3 * input.size_mb) * attempt)


def metrics_memory(wildcards, input, attempt):
    """The metrics hold every rank table at once (about 10× their parquet size in memory) and the
    bootstrap replicates; each retry doubles it."""
    return int((4000 + 20 * input.size_mb) * attempt)
