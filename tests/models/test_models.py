"""The model registry and the local family: tokeniser, training, checkpoint format, safe loading."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import medret
import medret.models
from medret.config import SCHEMA_PATH, validate_config
from medret.errors import MedretError
from medret.models import Family, ModelAdapter, get_family, list_families, load_model, register_family
from medret.models.local import (
    BagTokenizer,
    build_vocab,
    contrastive_loss,
    load_checkpoint,
    report_tokens,
    train,
)
from medret.plugins import Option

REPORTS = [
    "No pleural effusion. No pneumothorax.",
    "Small left pleural effusion. No pneumothorax.",
    "Right pneumothorax.",
    "No acute cardiopulmonary process.",
] * 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny local model trained for two epochs on random images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(len(REPORTS), 32, 32), dtype=np.uint8)
    text_ids = np.array([i % 4 for i in range(len(REPORTS))])
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    entry = {"family": "local", "train": {"epochs": 2, "batch_size": 8, "input_size": 32, "embed_dim": 16}}
    train(entry, REPORTS, text_ids, images, path, data_digest="d0")
    return path


def test_tokeniser_words_and_bigrams():
    assert report_tokens("No effusion. Left  nodule") == [
        "no",
        "effusion",
        "no effusion",
        "left",
        "nodule",
        "left nodule",
    ]
    vocab = build_vocab(["No effusion.", "No effusion.", "Left nodule."], min_count=2)
    assert vocab == ["effusion", "no", "no effusion"]  # frequency, then alphabetical
    ids, offsets = BagTokenizer(vocab)(["no effusion", "left nodule", "effusion"])
    assert ids.tolist() == [0, 1, 2, 0] and offsets.tolist() == [0, 3, 3]


def test_contrastive_loss_shares_targets_between_identical_reports():
    emb = torch.eye(3)
    # Items 0 and 1 share a report: their target mass is split, so the loss is log 2 per row at
    # a perfect alignment with a huge scale (each row's two identical columns tie).
    loss = contrastive_loss(emb[[0, 0, 2]], emb[[0, 0, 2]], torch.tensor([5, 5, 7]), torch.tensor(100.0))
    assert loss.item() == pytest.approx((2 * np.log(2) + 0) / 3, abs=1e-4)


def test_registry_lists_local():
    fams = list_families()
    assert "local" in fams and fams["local"].train is not None


def test_load_model_errors_name_the_key(checkpoint):
    with pytest.raises(MedretError, match=r"models\.m\.family: unknown family 'clip2'"):
        load_model({"family": "clip2"}, "m")
    with pytest.raises(MedretError, match=r"models\.m\.chekpoint: not an option of family local"):
        get_family({"family": "local", "chekpoint": "x"}, "m")
    with pytest.raises(MedretError, match=r"models\.m\.checkpoint is required"):
        load_model({"family": "local"}, "m")


# Checking a config must stay cheap: Snakemake does it on every call (every dry-run, every job).
_TORCH_FREE = """
import glob, json, sys
import yaml
from medret.config import SCHEMA_PATH, validate_config
from medret.models import get_family, list_families

for path in ["config/config.yaml", *sorted(glob.glob("config/examples/*.yaml"))]:
    with open(path) as f:
        validate_config(yaml.safe_load(f))
families = list_families()
for name, family in families.items():
    assert get_family({"family": name}, "m") is family
    assert family.options and family.description and isinstance(family.required, tuple)
    family.train is None
heavy = ("torch", "transformers", "open_clip", "timm", "safetensors")
print(json.dumps({
    "families": sorted(families),
    "trainable": sorted(n for n, f in families.items() if f.train is not None),
    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in heavy),
    "models": sorted(m for m in sys.modules if m.startswith("medret.models.")),
}))
"""


def test_checking_configs_imports_no_torch_and_no_family_module():
    src = Path(medret.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE], cwd=src.parent, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["families"] == sorted(list_families())
    assert out["trainable"] == ["local"]
    assert out["heavy"] == []
    assert out["models"] == ["medret.models.families", "medret.models.geometry"]


def test_builtin_families_name_module_level_callables():
    for family in list_families().values():
        assert isinstance(family.build, str) and callable(family.builder())
        assert family.train is None or callable(family.trainer())
    assert list_families()["local"].trainer().__module__ == "medret.models.local"
    with pytest.raises(MedretError, match="family open_clip is not trainable"):
        list_families()["open_clip"].trainer()


def test_option_texts_follow_the_family_modules():
    # The declarations live in medret.models.families (torch-free); their texts quote these constants.
    from medret.models import biomedclip, medclip

    text = list_families()["biomedclip"].options["checkpoint"].description
    for value in (biomedclip.REPO, biomedclip.CONFIG_FILE, biomedclip.WEIGHTS_FILE, biomedclip.VOCAB_FILE):
        assert value in text
    # Defaults live in the declaration; the module reads them from there.
    max_length = list_families()["medclip"].options["max_length"]
    assert max_length.default == medclip.DEFAULT_MAX_LENGTH == 77 and "(default 77)" in max_length.text()


class TinyAdapter(ModelAdapter):
    """A third-party family's adapter: constant embeddings."""

    family = "tiny"

    @property
    def embed_dim(self) -> int:
        return 4

    def _encode_images(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(images), 4, device=images.device)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.full((len(texts), 4), float(self.entry["scale"]))


def _tiny_train(entry, pairs, images, out_path, **kwargs):
    return {"trained": True}


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test (built-ins loaded first, so they stay registered)."""
    list_families()
    monkeypatch.setattr(medret.models, "_FAMILIES", dict(medret.models._FAMILIES))


@pytest.mark.parametrize("form", ["callable", "string"])
def test_third_party_family(registry, form):
    build = TinyAdapter if form == "callable" else f"{__name__}:TinyAdapter"
    train = _tiny_train if form == "callable" else f"{__name__}:_tiny_train"
    family = register_family(
        Family(
            name="tiny",
            build=build,
            options={
                "scale": Option("a number", {"type": "number"}, default=1.0),
                "train": Option("training options", {"type": "object"}),
            },
            description="test",
            train=train,
        )
    )
    assert list_families()["tiny"] is family and family.builder() is TinyAdapter and family.trainer() is _tiny_train
    model = load_model({"family": "tiny", "scale": 3.0, "batch_size": 2}, "t")
    assert isinstance(model, TinyAdapter)
    torch.testing.assert_close(model.encode_texts(["a", "b", "c"]), torch.full((3, 4), 0.5))
    with pytest.raises(MedretError, match=r"models\.t\.scales: not an option of family tiny"):
        load_model({"family": "tiny", "scales": 3.0}, "t")
    # A config may name it (the schema lists the options it knows); a train section is accepted
    # because the family has a trainer.
    config = yaml.safe_load((SCHEMA_PATH.parent / "config.yaml").read_text())
    config["models"] = {"t": {"family": "tiny", "train": {"dataset": "demo"}}}
    assert validate_config(config)["models"]["t"]["family"] == "tiny"


def test_malformed_family_targets():
    with pytest.raises(ValueError, match=r"family x: build: 'medret\.models\.local' is not 'module:attribute'"):
        Family(name="x", build="medret.models.local", options={}, description="")
    with pytest.raises(ValueError, match=r"family x: train: ':train' is not 'module:attribute'"):
        Family(name="x", build=TinyAdapter, options={}, description="", train=":train")
    with pytest.raises(TypeError, match="family x: build must be a callable"):
        Family(name="x", build=None, options={}, description="")


def test_checkpoint_format_and_embeddings(checkpoint):
    ckpt = torch.load(checkpoint, weights_only=True)
    assert ckpt["format"] == "medret.local/1"
    assert set(ckpt) == {"format", "config", "vocab", "state_dict", "train"}
    assert ckpt["train"]["n_pairs"] == len(REPORTS) and len(ckpt["train"]["losses"]) == 2
    model = load_model({"family": "local", "checkpoint": str(checkpoint), "batch_size": 3})
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (7, 48, 48), dtype=np.uint8))
    img = model.encode_images(images)
    txt = model.encode_texts(REPORTS[:5])
    assert img.shape == (7, 16) and txt.shape == (5, 16) and img.dtype == torch.float32
    torch.testing.assert_close(img.norm(dim=1), torch.ones(7))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(5))
    # Embeddings do not depend on batch composition (GroupNorm, no batch statistics).
    one_by_one = load_model({"family": "local", "checkpoint": str(checkpoint), "batch_size": 1})
    torch.testing.assert_close(one_by_one.encode_images(images), img, atol=1e-5, rtol=0)
    # The spec hash names the weights, not the path or the batch size.
    assert model.spec_hash() == one_by_one.spec_hash()


def test_training_is_deterministic(tmp_path, checkpoint):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(len(REPORTS), 32, 32), dtype=np.uint8)
    text_ids = np.array([i % 4 for i in range(len(REPORTS))])
    entry = {"family": "local", "train": {"epochs": 2, "batch_size": 8, "input_size": 32, "embed_dim": 16}}
    again = train(entry, REPORTS, text_ids, images, tmp_path / "again.pt", data_digest="d0")
    assert again["digest"] == torch.load(checkpoint, weights_only=True)["train"]["digest"]


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_unsafe_pickle_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "medret.local/1", "payload": _Exploit()}, evil)
    with pytest.raises(MedretError, match="not a loadable local-model checkpoint"):
        load_checkpoint(evil)
    assert not (tmp_path / "PWNED").exists()
    # The same with a plain pickle file.
    evil.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(MedretError):
        load_checkpoint(evil)
    assert not (tmp_path / "PWNED").exists()


def test_wrong_truncated_and_missing_checkpoints(tmp_path, checkpoint):
    foreign = tmp_path / "foreign.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, foreign)
    with pytest.raises(MedretError, match=r"not a medret\.local/1 checkpoint"):
        load_checkpoint(foreign)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(MedretError, match=r"truncated\.pt: not a loadable"):
        load_checkpoint(truncated)
    with pytest.raises(MedretError, match=r"missing\.pt: local-model checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"].pop("image.proj.bias")
    torch.save(ckpt, tmp_path / "partial.pt")
    with pytest.raises(MedretError, match=r"missing \['image.proj.bias'\]"):
        load_model({"family": "local", "checkpoint": str(tmp_path / "partial.pt")})


def test_unknown_training_option(tmp_path):
    with pytest.raises(MedretError, match=r"train\.epocs"):
        train(
            {"train": {"epocs": 3}},
            REPORTS,
            np.zeros(len(REPORTS)),
            np.zeros((16, 8, 8), np.uint8),
            tmp_path / "x.pt",
            data_digest="",
        )


def test_family_and_adapter_messages_name_the_entry(tmp_path):
    """Families and adapters do not know an entry's name; their messages name it all the same."""
    from medret.datasets import load_pairs
    from medret.errors import MedretError
    from medret.models import load_model

    (tmp_path / "m.bin").touch()
    entry = {"family": "medclip", "variant": "vit", "checkpoint": str(tmp_path / "m.bin"), "text_model": "nowhere"}
    with pytest.raises(MedretError) as err:
        load_model(entry, "my-medclip")
    assert str(err.value).startswith("config key models.my-medclip.text_model: nowhere/vocab.txt not found")
    assert "<name>" not in str(err.value)
    report = tmp_path / "df_chexpert_plus_240401.csv"
    report.write_text("path_to_image,section_impression\n")
    entry = {"adapter": "chexpert_plus", "root": str(tmp_path), "reports": str(report), "split": "valid"}
    entry["labels"] = str(tmp_path / "no-labels")
    with pytest.raises(MedretError) as err:
        load_pairs("cxp", entry, [str(report), str(tmp_path / "no-labels" / "impression_fixed.json")])
    assert "datasets.cxp." in str(err.value) and "<name>" not in str(err.value), str(err.value)


def test_family_modules_do_not_import_each_other_or_private_names():
    """The house rule of docs/development.md: what families share lives in shared modules of ``models/``."""
    import ast

    import medret

    root = Path(medret.__file__).parent
    families = {"local", "clip_family", "medclip", "cxr_clip", "biomedclip", "biovil", "hf_transformers"}
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [a.name for a in node.names]
                targets = [node.module] + [f"{node.module}.{n}" for n in names]
            elif isinstance(node, ast.Import):
                names, targets = [], [a.name for a in node.names]
            else:
                continue
            imported = {t.split(".")[2] for t in targets if t.startswith("medret.models.") and t.count(".") >= 2}
            if module.split(".")[-1] in families and imported & (families - {module.split(".")[-1]}):
                problems.append(f"{module} imports family module(s) {sorted(imported & families)}")
            if isinstance(node, ast.ImportFrom) and node.module.startswith("medret") and node.module != module:
                problems += [f"{module} imports private {node.module}.{n}" for n in names if n.startswith("_")]
    assert not problems, problems
