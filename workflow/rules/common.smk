# Shared glue: config validation, the tables derived from it, and input functions.
import os
import re
import sys

from medret.config import load_schema, validate_config
from medret.datasets import get_adapter
from medret.errors import MedretError
from medret.io import check_output_dir
from medret.models import get_family

# Never reach for a model hub: a missing file must fail at once, not after minutes of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    config.update(
        validate_config(
            config, load_schema(workflow.source_path("../../config/schema.yaml"))
        )
    )
    # A file in the way of results_dir would crash Snakemake's own planning with a traceback.
    check_output_dir(config["results_dir"], "results_dir", writable=False)
except MedretError as exc:
    sys.exit(f"medret config error: {exc}")

RESULTS = config["results_dir"]
DATASETS = config["datasets"]
MODELS = config["models"]
CORRUPTIONS = config["corruptions"]
DEMO_DATASETS = [d for d, e in DATASETS.items() if e["adapter"] == "demo"]
TRAINED_MODELS = [m for m, e in MODELS.items() if "train" in e]


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
            f"{RESULTS}/{dataset}/summary.md",
        ]
        for corruption in CORRUPTIONS:
            for plot in ("recall", "robustness", "examples"):
                out += expand(
                    "{results}/{dataset}/plots/{corruption}_{plot}.{ext}",
                    results=RESULTS,
                    dataset=dataset,
                    corruption=corruption,
                    plot=plot,
                    ext=("png", "pdf"),
                )
    return out


def dataset_sources(wildcards):
    """The files a dataset is read from, as its adapter declares them."""
    entry = DATASETS[wildcards.dataset]
    return get_adapter(entry["adapter"]).source_files(wildcards.dataset, entry)


def model_checkpoint(wildcards):
    """A trained model's checkpoint (made by the train_model step) or the configured weights file."""
    entry = MODELS[wildcards.model]
    if "train" in entry:
        return f"{RESULTS}/models/{wildcards.model}/checkpoint.pt"
    return entry.get("checkpoint", [])


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


def dataset_ranks(wildcards):
    """Every rank table of a dataset: all models × all corruptions."""
    return expand(
        "{results}/{dataset}/ranks/{model}/{corruption}.parquet",
        results=RESULTS,
        dataset=wildcards.dataset,
        model=MODELS,
        corruption=CORRUPTIONS,
    )


def dataset_entry(wildcards):
    """Config entry of the dataset (a params value: editing it re-runs the stage)."""
    return DATASETS[wildcards.dataset]


def dataset_relevance(wildcards):
    """The dataset's relevance settings (only these re-run the ranks when edited)."""
    entry = DATASETS[wildcards.dataset]
    return {k: entry[k] for k in ("relevance", "uncertain_labels")}


def dataset_image_size(wildcards):
    return DATASETS[wildcards.dataset]["image_size"]


def model_entry(wildcards):
    return MODELS[wildcards.model]


def corruption_entry(wildcards):
    return CORRUPTIONS[wildcards.corruption]
