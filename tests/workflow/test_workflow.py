"""The workflow on the reduced demo: a full run, incremental re-runs, bad input, and the linters.

The run happens once per session in a temporary working directory (``--directory``), with the
repository's Snakefile and the reduced config ``tests/configs/mini.yaml``.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.workflow import BIN, MINI, ROOT, planned_jobs, snakemake

from medret.config import validate_config
from medret.imaging import ImageCache
from medret.phantoms import LABEL_COLUMNS

#: A tiny open_clip architecture (open_clip's JSON model-config format).
TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}

pytestmark = pytest.mark.workflow


def dry_run_jobs(stdout: str) -> list[dict[str, str]]:
    """The jobs of a (non-quiet) dry-run's output: ``rule`` and each ``key: value`` line of its block
    (input, output, wildcards, threads, resources, ...)."""
    jobs = []
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n?)*)", stdout, re.M):
        job = {"rule": match[1]}
        job.update(re.findall(r"^    (\w+): (.*)$", match[2], re.M))
        jobs.append(job)
    return jobs


def job_resources(job: dict[str, str]) -> dict[str, str]:
    """The ``resources`` line of a dry-run job as a dict of strings."""
    return dict(item.split("=", 1) for item in job["resources"].split(", "))


def test_full_run_outputs(demo_run):
    res = demo_run / "results" / "demo"
    metrics = pd.read_csv(res / "metrics.csv")
    assert list(metrics.columns) == [
        "dataset",
        "model",
        "corruption",
        "level",
        "relevance",
        "direction",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "n_queries",
        "chance",
        "popularity",
    ]
    plain = {"R@1", "R@5", "R@10", "MRR", "median_rank"}
    assert set(metrics["metric"]) == plain | {f"{m}_tieaware" for m in plain}
    assert set(metrics["direction"]) == {"i2t", "t2i"} and set(metrics["relevance"]) == {"exact", "labels"}
    assert set(metrics["corruption"]) == {"occlusion", "noise"}
    occ = metrics[metrics.corruption == "occlusion"]
    assert sorted(occ["level"].unique()) == [0.0, 0.5, 1.0]
    assert sorted(metrics.loc[metrics.corruption == "noise", "level"].unique()) == [0.0, 3.0, 5.0]
    # Level 0 is the clean image under every corruption: identical metrics.
    clean = metrics[metrics.level == 0.0].set_index(["model", "relevance", "direction", "metric", "corruption"])
    assert np.allclose(clean["value"].unstack()["noise"], clean["value"].unstack()["occlusion"])
    assert (metrics["ci_low"] <= metrics["value"] + 1e-9).all() and (
        metrics["value"] <= metrics["ci_high"] + 1e-9
    ).all()
    ranks = pd.read_parquet(res / "ranks" / "local" / "occlusion.parquet")
    assert list(ranks.columns)[:6] == ["level", "repeat", "relevance", "direction", "query_id", "rank"]
    assert ranks["rank"].min() >= 1
    # Text->image at full occlusion: every image identical, pessimistic ties -> recall 0.
    r5 = occ[occ.relevance == "exact"].set_index(["level", "direction", "metric"])["value"]
    assert r5[(1.0, "t2i", "R@5")] == 0.0
    # Label match can only add relevant items: every query's rank is at most its exact-report rank.
    exact, labels = (
        ranks[ranks.relevance == m].set_index(["level", "direction", "query_id"]) for m in ("exact", "labels")
    )
    assert (labels["rank"] <= exact.loc[labels.index, "rank"]).all()
    assert (labels["n_relevant"] >= exact.loc[labels.index, "n_relevant"]).all()
    robustness = pd.read_csv(res / "robustness.csv")
    assert set(robustness["quantity"]) == {"auc", "nauc", "chance_nauc", "relative_drop", "chance_retention"}
    for corruption in ("occlusion", "noise"):
        for plot in ("recall", "robustness", "examples"):
            for ext, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
                assert (res / "plots" / f"{corruption}_{plot}.{ext}").read_bytes()[:4] == magic
    with h5py.File(res / "embeddings" / "local" / "images" / "occlusion.h5") as f:
        assert f["embeddings"].shape[:2] == (3, 96)
        assert {"model_spec_hash", "manifest_digest", "corruption_spec_digest", "medret_version"} <= set(f.attrs)
    with h5py.File(res / "images" / "eval.h5") as f:
        assert f["images"].dtype == "uint8" and f["images"].shape == (96, 64, 64) and "manifest_digest" in f.attrs
    i2t = metrics[(metrics.direction == "i2t") & (metrics.metric == "R@5")]
    assert i2t["popularity"].notna().all() and (i2t["popularity"] > i2t["chance"]).all()  # image-blind baseline
    t2i = metrics[metrics.direction == "t2i"]
    assert t2i["popularity"].isna().all()  # an image-blind model scores every image the same: chance
    summary = (res / "summary.md").read_text(encoding="utf-8")
    for heading in ("## occlusion", "## noise", "### image → report, label match (96 queries)"):
        assert heading in summary
    assert pd.read_csv(res / "comparisons.csv").empty  # one model: nothing to compare
    # Results per finding: the demo's seven labels; mini.yaml has no inside/outside pair, so no placement rows.
    findings = pd.read_csv(res / "findings.csv")
    names = set(findings["finding"])
    assert names <= {n.removeprefix("label_") for n in LABEL_COLUMNS} and len(names) >= 3
    assert set(findings["corruption"]) == {"occlusion", "noise"} and (findings["n_queries"] >= 10).all()
    assert pd.read_csv(res / "placement.csv").empty
    for ext, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
        assert (res / "plots" / f"findings.{ext}").read_bytes()[:4] == magic
    assert "## Results per finding" in summary and "## Ties" in summary and "## Zero-shot classification" in summary
    classification = pd.read_csv(res / "classification.csv")
    assert set(classification["corruption"]) == {"occlusion", "noise"} and "macro" in set(classification["finding"])
    assert classification["value"].between(0, 1).all() and (classification["n_positive"] >= 10).all()
    for corruption in ("occlusion", "noise"):
        assert (res / "plots" / f"{corruption}_classification.png").read_bytes()[:4] == b"\x89PNG"
    assert planned_jobs(demo_run, MINI) == {}, "a second run has nothing to do"
    assert not list(demo_run.rglob("*.partial")), "no temporary files are left"


def test_adding_a_model_runs_only_its_jobs(demo_run):
    config = copy.deepcopy(MINI)
    config["models"]["local-b"] = copy.deepcopy(config["models"]["local"])
    config["models"]["local-b"]["train"]["seed"] = 1
    assert planned_jobs(demo_run, config) == {  # mini.yaml has two corruptions
        "train_model": 1,
        "embed_texts": 1,
        "embed_prompts": 1,
        "embed_images": 2,
        "ranks": 2,
        **_AGGREGATES,
        **_CLASSIFY,
    }


def test_adding_artifact_and_placement_corruptions_runs_only_their_jobs(demo_run):
    """An artifact kind and an inside/outside pair added to a finished study: their specs, embeddings, ranks and
    plots, and the tables every corruption feeds; no training, no text embedding, no image cache."""
    config = copy.deepcopy(MINI)
    config["corruptions"]["markers"] = {"kind": "markers", "levels": [0, 3]}
    for placement in ("inside", "outside"):
        config["corruptions"][f"occ_{placement}"] = {"kind": "occlusion", "placement": placement, "levels": [0, 0.1]}
    assert planned_jobs(demo_run, config) == {
        "corruption_specs": 3,
        "plot_examples": 3,
        "embed_images": 3,
        "ranks": 3,
        "plot_results": 3 + 2,  # every corruption's curves come from the one metrics table
        "plot_classification": 3 + 2,  # and from the one classification table
        "classification": 1,
        **{k: v for k, v in _AGGREGATES.items() if k != "plot_results"},
    }


def test_worst_placement_runs_through_the_workflow(demo_run, tmp_path):
    """placement: worst on a copy of the finished demo: nine places per level embedded, one worst rank per query,
    never better than the centred place (the grid's middle cell), and a placement contrast on the demo's regions."""
    run = tmp_path / "run"
    shutil.copytree(demo_run, run, symlinks=True)
    config = copy.deepcopy(MINI)
    config["corruptions"]["occ_worst"] = {"kind": "occlusion", "placement": "worst", "levels": [0.0, 0.25]}
    config["corruptions"]["occ_centre"] = {"kind": "occlusion", "placement": "centre", "levels": [0.0, 0.25]}
    for placement in ("inside", "outside"):
        config["corruptions"][f"occ_{placement}"] = {"kind": "occlusion", "placement": placement, "levels": [0, 0.1]}
    snakemake(run, config)
    res = run / "results" / "demo"
    with h5py.File(res / "embeddings" / "local" / "images" / "occ_worst.h5") as f:
        assert f["embeddings"].shape[:2] == (1 + 9, 96)  # level 0 once, level 0.25 at nine places
    worst, centre = (pd.read_parquet(res / "ranks" / "local" / f"occ_{p}.parquet") for p in ("worst", "centre"))
    assert set(worst["repeat"]) == {0} and len(worst) == len(centre)
    keys = ["level", "relevance", "direction", "query_id"]
    both = worst.merge(centre, on=keys, suffixes=("_worst", "_centre"))
    i2t = both[(both["direction"] == "i2t") & (both["level"] == 0.25)]
    assert (i2t["rank_worst"] >= i2t["rank_centre"]).all() and (i2t["rank_worst"] > i2t["rank_centre"]).any()
    placement = pd.read_csv(res / "placement.csv")
    assert set(placement["level"]) == {0.1} and (placement["n_queries"] > 20).all()
    assert "## Where the occluder falls" in (res / "summary.md").read_text(encoding="utf-8")


def test_adding_a_level_runs_no_text_embedding(demo_run):
    config = copy.deepcopy(MINI)
    config["corruptions"]["occlusion"]["levels"] = [0.0, 0.25, 0.5, 1.0]
    jobs = planned_jobs(demo_run, config)
    assert "embed_texts" not in jobs and "train_model" not in jobs and "image_cache" not in jobs
    assert jobs["embed_images"] == 1 and jobs["corruption_specs"] == 1 and jobs["ranks"] == 1


def test_reordering_config_keys_runs_nothing(demo_run):
    # Every key of every entry written in reverse order, and a default written out: same study.
    def reverse(value):
        return {k: reverse(value[k]) for k in reversed(list(value))} if isinstance(value, dict) else value

    config = reverse(copy.deepcopy(MINI))
    assert "ci" not in MINI["evaluation"]
    config["evaluation"]["ci"] = validate_config(MINI)["evaluation"]["ci"]
    assert planned_jobs(demo_run, config) == {}


def _edit(path: str, value) -> dict:
    """MINI with the key at dotted ``path`` set to ``value``."""
    config = copy.deepcopy(MINI)
    *parents, key = path.split(".")
    entry = config
    for part in parents:
        entry = entry.setdefault(part, {})
    entry[key] = value
    return config


# Everything that reads every ranks table (mini.yaml: two corruptions).
_AGGREGATES = {"metrics": 1, "findings": 1, "placement": 1, "summary": 1, "plot_findings": 1, "plot_results": 2}
_AGGREGATES["all"] = 1
# What reads every image embedding: zero-shot classification and its plots (one per corruption).
_CLASSIFY = {"classification": 1, "plot_classification": 2}


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        # Relevance is read by the ranks and metrics only: never the demo data, manifest or embeddings.
        ("datasets.demo.relevance", ["exact"], {"ranks": 2, **_AGGREGATES}),
        # Uncertain labels are also read by zero-shot classification (which labels are positive).
        ("datasets.demo.uncertain_labels", "negative", {"ranks": 2, **_AGGREGATES, **_CLASSIFY}),
        # The report corpus is its own job: new candidate texts, no new image embeddings.
        ("datasets.demo.extra_reports", [], {"corpus": 1, "embed_texts": 1, "ranks": 2, **_AGGREGATES}),
        # The image cache's size: caches, training and embeddings, but not the demo data or manifest.
        (
            "datasets.demo.image_size",
            48,
            {"image_cache": 2, "plot_examples": 2, "train_model": 1, "embed_texts": 1, "embed_images": 2}
            | {"embed_prompts": 1, "ranks": 2, **_AGGREGATES, **_CLASSIFY},
        ),
        # Batch size and precision are read by the embedding stages, never by training.
        (
            "models.local.batch_size",
            32,
            {"embed_texts": 1, "embed_prompts": 1, "embed_images": 2, "ranks": 2, **_AGGREGATES, **_CLASSIFY},
        ),
        (
            "models.local.dtype",
            "bfloat16",
            {"embed_texts": 1, "embed_prompts": 1, "embed_images": 2, "ranks": 2, **_AGGREGATES, **_CLASSIFY},
        ),
        # Ranks do not depend on the scoring tile; the example panel is not a metric.
        ("evaluation.block", 1 << 20, {}),
        ("evaluation.examples", 3, {"plot_examples": 2, "all": 1}),
        ("evaluation.bootstrap", 60, {**_AGGREGATES, **_CLASSIFY}),
        # The prompts are embedded again only when their text changes; the scoring rule is read by one job.
        (
            "evaluation.classification",
            {"negative": "without {finding}"},
            {"embed_prompts": 1, "summary": 1, "all": 1, **_CLASSIFY},
        ),
        ("evaluation.classification", {"rule": "positive"}, {"summary": 1, "all": 1, **_CLASSIFY}),
        # What the summary and the findings plot show per finding is read by them alone.
        ("evaluation.findings", {"metric": "R@1"}, {"summary": 1, "plot_findings": 1, "all": 1}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_an_edit_reruns_only_the_jobs_that_read_it(demo_run, path, value, expected):
    assert planned_jobs(demo_run, _edit(path, value)) == expected


def test_a_config_file_on_the_command_line_replaces_the_demo(tmp_path):
    """`--configfile other.yaml` in a checkout (config/config.yaml present) runs other.yaml's study
    only, not the demo merged with it; `--config key=value` alone still edits the demo."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    rows = [f"p{i},p{i}.png,Report {i % 2}.,test" for i in range(4)]
    (tmp_path / "pairs.csv").write_text("id,image,report,split\n" + "\n".join(rows) + "\n")
    (tmp_path / "weights.pt").touch()
    other = {
        "datasets": {"mine": {"adapter": "csv", "csv": "pairs.csv"}},
        "models": {"theirs": {"family": "local", "checkpoint": "weights.pt"}},
        "corruptions": {"occlusion": {"kind": "occlusion", "levels": [0.0, 1.0]}},
    }
    proc = snakemake(tmp_path, other, "-n")
    jobs = dry_run_jobs(proc.stdout)
    assert {job["rule"] for job in jobs} == {
        "manifest",
        "corpus",
        "image_cache",
        "corruption_specs",
        "embed_texts",
        "embed_images",
        "ranks",
        "metrics",
        "findings",
        "placement",
        "summary",
        "plot_results",
        "plot_findings",
        "plot_examples",
        "embed_prompts",
        "classification",
        "plot_classification",
        "all",
    }
    outputs = [path for job in jobs for path in job.get("output", "").split(", ") if path]
    assert outputs and all(path.startswith("results/mine/") for path in outputs), outputs
    assert {job["wildcards"] for job in jobs if job["rule"] == "embed_images"} == {
        "dataset=mine, model=theirs, corruption=occlusion"
    }
    # Without a config file the demo is the study, and --config edits it.
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--cores", "2", "-n"]
    proc = subprocess.run([*cmd, "--config", "results_dir=elsewhere"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    jobs = dry_run_jobs(proc.stdout)
    assert {"demo_data", "train_model"} <= {job["rule"] for job in jobs}
    assert {job["wildcards"] for job in jobs if job["rule"] == "train_model"} == {"model=local", "model=local-occaug"}
    outputs = {path.split("/")[0] for job in jobs for path in job.get("output", "").split(", ") if path}
    assert outputs == {"elsewhere", "resources"}, outputs  # results_dir from --config; the demo's data
    # The demo config is read from beside the Snakefile: a directory without config/ runs the demo.
    bare = tmp_path / "bare"
    bare.mkdir()
    proc = subprocess.run([*cmd, "--directory", str(bare)], cwd=bare, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "demo_data" in {job["rule"] for job in dry_run_jobs(proc.stdout)}


@pytest.mark.parametrize("key", ["checkpoint", "text_model"])
def test_a_missing_model_file_is_one_line_naming_its_key(tmp_path, key):
    """A missing checkpoint or tokenizer directory stops the dry-run with one medret line (the config key,
    the path, where the file is published), not Snakemake's missing-input report; both are job inputs."""
    (tmp_path / "pairs.csv").write_text("id,image,report,split\np0,p0.png,Report.,test\n")
    (tmp_path / "medclip.bin").touch()
    (tmp_path / "Bio_ClinicalBERT").mkdir()
    model = {"family": "medclip", "variant": "vit", "checkpoint": "medclip.bin", "text_model": "Bio_ClinicalBERT"}
    config = {
        "datasets": {"mine": {"adapter": "csv", "csv": "pairs.csv"}},
        "models": {"med": model},
        "corruptions": {"occlusion": {"kind": "occlusion", "levels": [0.0, 1.0]}},
    }
    jobs = dry_run_jobs(snakemake(tmp_path, config, "-n").stdout)
    for job in jobs:
        if job["rule"] in ("embed_texts", "embed_images"):
            assert {"medclip.bin", "Bio_ClinicalBERT"} <= set(job["input"].split(", ")), job
    config["models"]["med"][key] = "nowhere/" + model[key]
    proc = snakemake(tmp_path, config, "-n", check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    lines = [line for line in output.splitlines() if "medret" in line]
    assert len(lines) == 1 and lines[0].startswith(f"medret config error: config key models.med.{key}: nowhere/")
    published = {"checkpoint": "medret download NAME --dest DIR` fetches it (NAME: medclip-vit, medclip-resnet)"}
    published["text_model"] = "medret download bio-clinicalbert-vocab bio-clinicalbert-config --dest DIR`"
    assert published[key] in lines[0]
    assert "MissingInputException" not in output and "Traceback" not in output


def test_resources_of_the_jobs(demo_run):
    """GPUs only for the stages that run a model on one (and none on a machine without), the metrics a
    cluster job with memory, and training memory scaling with its image cache."""
    from medret.jobs import visible_gpus

    proc = snakemake(demo_run, _edit("models.local.train.epochs", 4), "-n")
    jobs = {job["rule"]: job for job in dry_run_jobs(proc.stdout)}
    assert set(jobs) >= {"train_model", "embed_texts", "embed_images", "ranks", "metrics"}
    gpu = str(min(1, visible_gpus()))  # this machine runs the jobs: a GPU only if it has one
    for rule, want in {"train_model": gpu, "embed_images": gpu, "embed_texts": "0", "ranks": "0"}.items():
        assert job_resources(jobs[rule])["gpu"] == want, rule
    assert int(job_resources(jobs["metrics"])["mem_mb"]) >= 4000  # a cluster job (test_slurm: not a localrule)
    size_mb = sum((demo_run / f).stat().st_size for f in jobs["train_model"]["input"].split(", ")) / 2**20
    assert job_resources(jobs["train_model"])["mem_mb"] == str(int(2000 + 3 * size_mb))


def test_a_job_uses_a_gpu_only_when_it_holds_one(monkeypatch):
    import torch

    from medret import jobs, stages
    from medret.retrieval import scoring_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    assert scoring_device(0) == torch.device("cpu") and scoring_device(1) == torch.device("cuda")
    entry = {"family": "local", "device": "auto", "train": {"dataset": "d"}}
    # The job's inputs: only the family's file options are taken (a job's named inputs hold others too).
    got = stages._model_entry(entry, {"checkpoint": "c.pt", "manifest": "m.parquet"}, gpus=0)
    assert got == {"family": "local", "device": "cpu", "checkpoint": "c.pt"}
    assert stages._model_entry(entry, {"text_model": "tok"}, gpus=1)["device"] == "auto"  # auto: CUDA, then MPS
    assert stages._model_entry(entry, None, gpus=None)["device"] == "auto"  # outside a workflow job
    # A job's GPUs: its gpu resource, else a gres's GPU count (sites that ask SLURM for --gres).
    assert jobs.gpus_held({"gpu": 1}) == 1 and jobs.gpus_held({"gpu": 0}) == 0 and jobs.gpus_held({}) == 0
    assert jobs.gpus_held({"gpu": 0, "gres": "gpu:a100:2"}) == 2 and jobs.gpus_held({"gres": "gpu"}) == 1
    assert jobs.gpus_held({"gres": "tmpdisk:10,gpu:1"}) == 1 and jobs.gpus_held({"gres": "shard:4"}) == 0


def _hub_checkpoints(root: Path) -> dict[str, dict]:
    """Config entries of a tiny open_clip model (state dict + JSON architecture), a tiny BiomedCLIP
    directory in its published hub layout (config, weights, vocabulary) and tiny Hugging Face CLIP and
    SigLIP directories (family transformers: PubMedCLIP's and MedSigLIP's layouts), with random weights."""
    import open_clip
    import torch
    from helpers.biomedclip import TINY_CFG as BIOMEDCLIP_CFG
    from helpers.biomedclip import write_layout
    from helpers.transformers_family import write_clip, write_siglip

    arch = root / "medret-tiny-wf.json"
    arch.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(arch)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("medret-tiny-wf", pretrained=None).state_dict(), root / "tiny.pt")
    ref = copy.deepcopy(BIOMEDCLIP_CFG)
    ref["model_cfg"]["text_cfg"].update(hf_model_name=str(root / "bmc"), hf_tokenizer_name=str(root / "bmc"))
    write_layout(root / "bmc", ref, None)
    weights = open_clip.create_model(f"local-dir:{root / 'bmc'}", pretrained_text=False).state_dict()
    biomedclip = write_layout(root / "BiomedCLIP", BIOMEDCLIP_CFG, weights)
    return {
        "tiny-clip": {"family": "open_clip", "model": str(arch), "checkpoint": str(root / "tiny.pt")},
        "tiny-biomedclip": {"family": "biomedclip", "checkpoint": str(biomedclip)},
        "tiny-hf-clip": {"family": "transformers", "checkpoint": str(write_clip(root / "hf-clip"))},
        "tiny-hf-siglip": {"family": "transformers", "checkpoint": str(write_siglip(root / "hf-siglip"))},
    }


def test_a_pretrained_family_joins_the_study(demo_run, tmp_path):
    """Adding pretrained models to the finished demo plans exactly their jobs (they run in the next test)."""
    config = copy.deepcopy(MINI)
    config["models"].update(_hub_checkpoints(tmp_path))
    expected = {"embed_texts": 4, "embed_prompts": 4, "embed_images": 8, "ranks": 8}
    assert planned_jobs(demo_run, config) == {**expected, **_AGGREGATES, **_CLASSIFY}


def _published_checkpoints(root: Path) -> dict[str, dict]:
    """Config entries of CXR-RePaiR, CheXzero, MedCLIP, CXR-CLIP and BioViL files in their published layouts.

    Random weights, written by the builders the family tests use (tests/helpers/). Image towers are full
    size (the released architectures are fixed); CXR-CLIP's and BioViL's text towers are tiny, which their
    loaders take from the text directory's config.json as they do for the released files.
    """
    import helpers.cxr_clip as tc
    import helpers.medclip as tm
    import open_clip
    import torch
    from helpers.biovil import write_published
    from helpers.clip import ARCH, openai_fp16

    torch.manual_seed(0)
    clip = open_clip.create_model(ARCH, pretrained=None)
    torch.save(openai_fp16(clip), root / "clip-imp-pretrained_128_6_after_4.pt")  # CXR-RePaiR: fp16 subset
    torch.save(clip.state_dict(), root / "best_64_5e-05_original_22000_0.864.pt")  # CheXzero: fp32
    del clip
    towers = tm.build_towers()
    (root / "medclip-vit").mkdir()
    torch.save(tm.old_layout(tm.new_layout(towers, "vit")), root / "medclip-vit" / "pytorch_model.bin")
    del towers
    bio = tm.write_vocab(root / "Bio_ClinicalBERT").parent
    tiny_bio = tc.write_text_model(root / "Bio_tiny", tc.WORDS, tc.TINY_BERT)
    ref = tc.Reference("resnet", (3, 4, 6, 3), tc.TINY_BERT, seed=0)
    tc.save_tar(root / "r50_mcc.tar", tc.old_layout(ref), tc.hydra_config(tc.image_encoder("resnet", True)))
    del ref
    biovil = write_published(root, ("biovil",))
    return {
        "cxr-repair": {"family": "cxr_repair", "checkpoint": str(root / "clip-imp-pretrained_128_6_after_4.pt")},
        "chexzero": {"family": "chexzero", "checkpoint": str(root / "best_64_5e-05_original_22000_0.864.pt")},
        "medclip": {
            "family": "medclip",
            "variant": "vit",
            "checkpoint": str(root / "medclip-vit" / "pytorch_model.bin"),
            "text_model": str(bio),
        },
        "cxr-clip": {"family": "cxr_clip", "checkpoint": str(root / "r50_mcc.tar"), "text_model": str(tiny_bio)},
        "biovil": {
            "family": "biovil",
            "biovil_version": "biovil",
            "checkpoint": str(biovil["biovil"][0]),
            "text_model": str(biovil["text"][0]),
        },
    }


def test_every_published_family_runs_end_to_end(demo_run, tmp_path):
    """Every family (published file layouts) through the whole workflow: CXR-RePaiR, CheXzero, MedCLIP,
    CXR-CLIP, BioViL, and tiny open_clip, BiomedCLIP and transformers (CLIP, SigLIP) models.

    A 16-pair subset of the demo's test split and two levels keep the full-size image towers cheap.
    """
    pairs = pd.read_csv(demo_run / "resources" / "demo" / "pairs.csv", dtype=str, keep_default_na=False)
    subset = pairs[pairs["split"] == "test"].head(16).copy()
    subset["image"] = [str(demo_run / "resources" / "demo" / p) for p in subset["image"]]
    subset.to_csv(tmp_path / "pairs.csv", index=False)
    models = _published_checkpoints(tmp_path) | _hub_checkpoints(tmp_path)
    config = {
        "datasets": {"sub": {"adapter": "csv", "csv": str(tmp_path / "pairs.csv"), "image_size": 64}},
        "models": models,
        "corruptions": {"occlusion": {"kind": "occlusion", "levels": [0.0, 0.5]}},
        "evaluation": {"bootstrap": 20, "examples": 1},
    }
    run = tmp_path / "run"
    run.mkdir()
    snakemake(run, config)
    res = run / "results" / "sub"
    metrics = pd.read_csv(res / "metrics.csv")
    assert set(metrics["model"]) == set(models)
    dims = {"cxr-repair": 512, "chexzero": 512, "medclip": 512, "cxr-clip": 512, "biovil": 128, "tiny-clip": 32}
    dims.update({"tiny-biomedclip": 16, "tiny-hf-clip": 16, "tiny-hf-siglip": 32})
    n_texts = subset["report"].str.strip().nunique()
    for name, dim in dims.items():
        with h5py.File(res / "embeddings" / name / "images" / "occlusion.h5") as f:
            emb = f["embeddings"][()]
        assert emb.shape == (2, 16, dim)
        assert np.allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-4)
        assert not np.allclose(emb[0], emb[1]), f"{name}: occlusion changed nothing"
        ranks = pd.read_parquet(res / "ranks" / name / "occlusion.parquet")
        assert len(ranks) == 2 * (16 + n_texts) and ranks["rank"].between(1, 16).all()
    comparisons = pd.read_csv(res / "comparisons.csv")
    assert len(set(zip(comparisons["model_a"], comparisons["model_b"], strict=True))) == 9 * 8 // 2
    assert set(comparisons["quantity"]) == {"value", "nauc"}
    # p in [0, 1]; undefined (NaN) only where the difference is (an nAUC of a curve whose clean value is 0).
    defined = comparisons["difference"].notna()
    assert comparisons.loc[defined, "p_value"].between(0, 1).all() and comparisons.loc[~defined, "p_value"].isna().all()
    # Same weights, same architecture and preprocessing: CXR-RePaiR and CheXzero differ only by the fp16 rounding.
    with (
        h5py.File(res / "embeddings" / "cxr-repair" / "text.h5") as a,
        h5py.File(res / "embeddings" / "chexzero" / "text.h5") as b,
    ):
        assert np.abs(a["embeddings"][()] - b["embeddings"][()]).max() < 0.05


def test_html_report_builds(demo_run):
    """`snakemake --report` makes one self-contained HTML file with the plots, tables and protocol."""
    proc = snakemake(demo_run, MINI, "--report", "report.html")
    assert "Report created" in proc.stdout + proc.stderr
    html = (demo_run / "report.html").read_text(encoding="utf-8")
    assert "Protocol used in this run" in html and "System Message" not in html  # the RST rendered cleanly
    for name in ("occlusion_recall.png", "noise_examples.png", "metrics.csv", "comparisons.csv", "summary.md"):
        assert name in html
    (demo_run / "report.html").unlink()


@pytest.mark.parametrize("example", ["mimic-paper.yaml", "mimic-all.yaml"])
def test_mimic_examples_dry_run_on_a_fixture_tree(tmp_path, example):
    """The shipped MIMIC-CXR configs plan the whole study against a layout-faithful fixture tree."""
    from helpers.mimic import build_tree  # MIMIC-CXR-JPG files, CSVs and reports zip, as published

    build_tree(tmp_path)
    config = yaml.safe_load((ROOT / "config" / "examples" / example).read_text())
    config["datasets"]["mimic"].update(
        root=str(tmp_path / "mimic-cxr-jpg"), reports=str(tmp_path / "mimic-cxr-reports.zip")
    )
    for entry in config["models"].values():  # a dry run only needs the weights to exist
        path = tmp_path / entry["checkpoint"]
        if entry["family"] == "biomedclip":
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        entry["checkpoint"] = str(path)
        if "text_model" in entry:  # a directory
            (tmp_path / entry["text_model"]).mkdir(parents=True, exist_ok=True)
            entry["text_model"] = str(tmp_path / entry["text_model"])
    jobs = planned_jobs(tmp_path, config)
    n = len(config["models"])
    assert jobs["manifest"] == jobs["corpus"] == jobs["image_cache"] == 1 and "train_model" not in jobs
    assert jobs["embed_texts"] == n and jobs["embed_images"] == jobs["ranks"] == n * len(config["corruptions"])


def test_config_typo_is_one_line(tmp_path):
    config = copy.deepcopy(MINI)
    config["models"]["local"]["train"]["epocs"] = 3
    proc = snakemake(tmp_path, config, "-n", check=False)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "medret config error" in ln]
    assert lines == ["medret config error: config key models.local.train.epocs: unknown key (did you mean 'epochs'?)"]


def test_a_repeated_key_in_a_config_file_is_one_line(tmp_path):
    """YAML lets the second `local:` replace the first: a model would silently disappear. Refused at start."""
    text = yaml.safe_dump(MINI, sort_keys=False).replace("models:\n", "models:\n  local:\n    family: local\n", 1)
    (tmp_path / "dup.yaml").write_text(text)
    config = ["--configfile", str(tmp_path / "dup.yaml"), "-n"]
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), *config],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "medret" in ln]
    assert len(lines) == 1 and re.fullmatch(
        rf"medret config error: {re.escape(str(tmp_path / 'dup.yaml'))}, line \d+: key 'local' appears twice in one "
        r"mapping \(first on line \d+\), so one entry would silently replace the other; rename or remove one",
        lines[0],
    ), lines
    assert not (tmp_path / "results").exists()


def test_an_empty_pairs_csv_is_one_line(tmp_path):
    (tmp_path / "pairs.csv").write_bytes(b"")
    config = copy.deepcopy(MINI)
    config["datasets"] = {"mine": {"adapter": "csv", "csv": "pairs.csv", "image_size": 64}}
    config["models"]["local"]["train"]["dataset"] = "mine"
    proc = snakemake(tmp_path, config, "results/mine/manifest.parquet", check=False)
    assert proc.returncode != 0
    lines = {ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("medret error:")}
    assert lines == {
        "medret error: pairs.csv: the file is empty (0 bytes); write a header line id,image,report,split and one "
        "row per pair"
    }
    assert "Traceback" not in (tmp_path / "logs" / "manifest" / "mine.log").read_text()
    assert not (tmp_path / "results" / "mine" / "manifest.parquet").exists()


def test_warnings_reach_the_summary_and_the_end_of_the_run(demo_run, tmp_path):
    """A pair left out (empty report) and a model that enlarges the cache: in summary.md and printed at the end."""
    run = tmp_path / "run"
    shutil.copytree(demo_run, run, symlinks=True)
    pairs = pd.read_csv(run / "resources" / "demo" / "pairs.csv", dtype=str, keep_default_na=False)
    first_test = pairs.index[pairs["split"] == "test"][0]
    pairs.loc[first_test, "report"] = "  "
    data = tmp_path / "data"
    shutil.copytree(run / "resources" / "demo" / "images", data / "images")
    pairs.to_csv(data / "pairs.csv", index=False)
    config = copy.deepcopy(MINI)
    # A 32 px cache for a model whose input is 64 px: it enlarges every (64 px) image the cache shrank.
    config["datasets"] = {"mine": {"adapter": "csv", "csv": str(data / "pairs.csv"), "image_size": 32}}
    config["models"] = {"small": {"family": "local", "checkpoint": "results/models/local/checkpoint.pt"}}
    config["corruptions"] = {"occlusion": MINI["corruptions"]["occlusion"]}
    proc = snakemake(run, config)
    summary = (run / "results" / "mine" / "summary.md").read_text(encoding="utf-8")
    warnings = [
        "dataset 'mine': 1 pairs of split 'test' left out for a report that is empty after stripping (listed in "
        "skipped.csv)",
        "model 'small' enlarges 95 of 95 images of dataset 'mine' (up to 2.00x: its padded square canvas is resized "
        "to 64 px, the cache gives 32 px); set datasets.mine.image_size to at least 64 to avoid it",
    ]
    section = summary.split("## Warnings\n\n", 1)[1].split("\n\n", 1)[0]
    assert section.splitlines() == [f"- {w}" for w in warnings]
    end = proc.stderr[proc.stderr.rindex("medret: ") :].splitlines()[:3]  # then Snakemake's closing lines
    assert end == [
        "medret: 2 warning(s) for dataset mine (also in results/mine/summary.md):",
        *(f"  medret warning: {w}" for w in warnings),
    ]
    assert pd.read_csv(run / "results" / "mine" / "skipped.csv")["problem"].tolist() == ["empty report"]


def test_missing_image_fails_with_one_line_and_no_artifact(tmp_path, demo_run):
    data = tmp_path / "data"
    shutil.copytree(demo_run / "resources" / "demo", data)
    (data / "images" / "p000260.png").unlink()  # a test-split image (ids after the 256 train pairs)
    config = copy.deepcopy(MINI)
    config["datasets"] = {"mine": {"adapter": "csv", "csv": str(data / "pairs.csv"), "image_size": 64}}
    config["models"]["local"]["train"]["dataset"] = "mine"
    proc = snakemake(tmp_path, config, "results/mine/images/eval.h5", check=False)
    assert proc.returncode != 0
    message = r"medret error: 1 of 96 images missing or unreadable \(first: \S*p000260\.png \(not found\)\); fix"
    assert re.search(message, proc.stderr + proc.stdout)
    assert not (tmp_path / "results" / "mine" / "manifest.parquet").exists()
    assert not list((tmp_path / "results").rglob("*.partial"))
    # Policy skip: the pair is left out and listed.
    config["datasets"]["mine"]["bad_images"] = "skip"
    snakemake(tmp_path, config, "results/mine/images/eval.h5")
    skipped = pd.read_csv(tmp_path / "results" / "mine" / "skipped.csv")
    assert skipped["pair_id"].tolist() == ["p000260"] and skipped["problem"].tolist() == ["not found"]
    with ImageCache(tmp_path / "results" / "mine" / "images" / "eval.h5") as cache:
        assert len(cache.ids) == 95 and "p000260" not in cache.ids


def test_snakemake_lint():
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--lint", "-s", str(ROOT / "Snakefile")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt():
    files = [str(ROOT / "Snakefile"), *map(str, sorted((ROOT / "workflow" / "rules").glob("*.smk")))]
    proc = subprocess.run([str(BIN / "snakefmt"), "--check", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff():
    for args in (["check"], ["format", "--check"]):
        proc = subprocess.run([str(BIN / "ruff"), *args, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
