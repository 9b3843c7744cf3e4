"""Family cxr_clip: the released .tar layout read safely, strict key conversion, embeddings, preprocessing, tokeniser.

Fixtures follow models.md §10: a ``torch.save`` dict ``{"model", "optimizer", "scheduler", "config", "epoch",
"train_loss"}`` whose ``config`` is built like cxr-clip's ``train.py`` (OmegaConf config, struct flag, resolved, then
``convert_dictconfig_to_dict``, so ``ListConfig`` values survive) and whose ``model`` is in the transformers-4.26 layout
(Swin keys renamed back, ``relative_position_index`` and BERT ``position_ids`` re-added). The reference networks are
built directly with transformers/torchvision and evaluated with the original equations; random weights throughout.
One full-size R50 and one full-size Swin-T file per session; tiny architectures elsewhere.
"""

from __future__ import annotations

import collections
import gzip
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.cxr_clip import (
    BIO,
    SWIN_T,
    TINY_BERT,
    TINY_RESNET,
    TINY_SWIN,
    WORDS,
    Reference,
    hydra_config,
    image_encoder,
    old_layout,
    save_tar,
    write_text_model,
)
from omegaconf import ListConfig, OmegaConf
from omegaconf.nodes import StringNode
from PIL import Image
from torch import nn
from torchvision import transforms as T
from transformers import BertConfig, BertModel, BertTokenizer, SwinConfig, SwinModel

import medret.models.cxr_clip as cxr
from medret.embeddings import needed_image_size
from medret.errors import MedretError
from medret.imaging import decode_to_canvas
from medret.models import get_family, load_model
from medret.models.bert import WordPiece
from medret.models.resample import resized_size

TINY_SWIN_CONFIG = {"image_size": 224, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2]}
REPORTS = [
    "No acute cardiopulmonary process.",
    "FINDINGS: Mild cardiomegaly.  IMPRESSION:\tNo pneumothorax.\n",
    "Réticulo-nodulaire opacités; naïve café",
    "___ year old with ___ and ___.",
    "3.5 cm nodule at T11-T12, ?PNA, s/p CABG",
    "中文 mixed text",
    "[SEP] inside [MASK] text [mask] and [CLS]",
    "",
    "   \n",
    "z" * 120,
    "\x00\ufffd control\u200b chars",
    "Left basal opacity, stable. " * 80,
    "unknownword supercalifragilistic",
]
# The per-block Swin keys of transformers 4.24/4.26 (models.md §0.2).
OLD_SWIN_BLOCK = {
    f"{name}.{p}"
    for name in (
        "layernorm_before",
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "layernorm_after",
        "intermediate.dense",
        "output.dense",
    )
    for p in ("weight", "bias")
} | {"attention.self.relative_position_bias_table", "attention.self.relative_position_index"}


@pytest.fixture(autouse=True)
def tiny_architectures(monkeypatch):
    """Register the tiny image towers the fixtures use (the real names stay as released)."""
    monkeypatch.setitem(cxr.RESNET_LAYERS, TINY_RESNET, (1, 1, 1, 1))
    monkeypatch.setitem(cxr.SWIN_CONFIGS, TINY_SWIN, TINY_SWIN_CONFIG)


# --------------------------------------------------------------------------------------------
# Around the reference model and the file layout (helpers/cxr_clip.py): training state, tokens, images


def training_state(ref: Reference, step: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """AdamW and LambdaLR state dicts (one step taken on tiny models, as in a real file)."""
    optimizer = torch.optim.AdamW(ref.parameters(), lr=5e-5, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, s / 10))
    if step:
        for p in ref.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return optimizer.state_dict(), scheduler.state_dict()


def pickle_globals(path: Path) -> set[str]:
    """Globals referenced by a torch zip file's data.pkl (read with pickletools, never executed)."""
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def reference_tokens(vocab: Path, texts: list[str], max_length: int = 256) -> dict[str, torch.Tensor]:
    tok = BertTokenizer(vocab=str(vocab), do_lower_case=True)  # never vocab_file= (silently ignored in 5.x)
    return dict(tok(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"))


def radiograph(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic radiograph-like greyscale image: smooth anatomy, texture, noise and a sharp-edged device."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    a = 90 + 80 * np.exp(-((x - 0.5) ** 2 + (y - 0.45) ** 2) / 0.08) + 30 * np.sin(40 * x) * np.cos(30 * y)
    a = a + rng.normal(0, 12, (height, width))
    a[int(0.3 * height) : int(0.5 * height), int(0.2 * width) : int(0.35 * width)] = 250
    return np.clip(a, 0, 255).astype(np.uint8)


def canvases(
    tmp: Path, shapes: list[tuple[int, int]], size: int
) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    """Cache canvases (through medret.imaging), their boxes and the content crops."""
    images, boxes, crops = [], [], []
    for i, (h, w) in enumerate(shapes):
        png = tmp / f"img_{h}x{w}_{size}_{i}.png"
        Image.fromarray(radiograph(h, w, seed=i)).save(png)
        canvas, box, _ = decode_to_canvas(png, size)
        top, left, bh, bw = box
        images.append(canvas)
        boxes.append(box)
        crops.append(canvas[top : top + bh, left : left + bw])
    return torch.from_numpy(np.stack(images)), torch.tensor(boxes), crops


def pil_pixels(crops: list[np.ndarray], mean, std) -> torch.Tensor:
    """The original eval pipeline on PIL images: convert("RGB"), Resize(224), CenterCrop(224), ToTensor, Normalize."""
    tf = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))])
    return torch.stack([tf(Image.fromarray(c).convert("RGB")) for c in crops])


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tiny_text(module_tmp) -> Path:
    return write_text_model(module_tmp("bio_tiny"), WORDS, TINY_BERT)


class Built:
    """A fixture file with its reference model and the objects it was saved from."""

    def __init__(self, path: Path, ref: Reference, state: dict, config: dict, training: tuple) -> None:
        self.path, self.ref, self.state, self.config, self.training = path, ref, state, config, training


@pytest.fixture(scope="module")
def tiny(module_tmp):
    """Factory of tiny checkpoints, cached by (image kind, pooling)."""
    cache: dict[tuple[str, str], Built] = {}
    root = module_tmp("tiny")

    def make(kind: str = "swin", pooling: str = "eos") -> Built:
        if (kind, pooling) not in cache:
            arch = (1, 1, 1, 1) if kind == "resnet" else TINY_SWIN_CONFIG
            ref = Reference(kind, arch, TINY_BERT, seed=len(cache))
            state, config = old_layout(ref), hydra_config(image_encoder(kind, full=False), pooling)
            training = training_state(ref, step=True)
            path = save_tar(root / f"{kind}_{pooling}.tar", state, config, training)
            cache[kind, pooling] = Built(path, ref, state, config, training)
        return cache[kind, pooling]

    return make


@pytest.fixture(scope="module", params=["r50", "swint"])
def full(request, module_tmp):
    """One full-size file per architecture (523 / 436 keys), with reference embeddings on fixed inputs."""
    tmp = module_tmp(f"full_{request.param}")
    kind = "resnet" if request.param == "r50" else "swin"
    arch = (3, 4, 6, 3) if kind == "resnet" else cxr.SWIN_CONFIGS[SWIN_T]
    bert = cxr.BERT_CONFIGS[BIO]
    words = WORDS + [f"filler{i}" for i in range(bert["vocab_size"] - len(WORDS))]
    text_model = write_text_model(tmp / "bio", words, None)  # no config.json: the published config is used
    ref = Reference(kind, arch, bert, seed=7)
    state = old_layout(ref)
    path = save_tar(
        tmp / f"{request.param}_m.tar", state, hydra_config(image_encoder(kind, True)), training_state(ref, False)
    )
    # Square 224 (no resampling), portrait 224 x 280 (centre crop only), landscape (resampled).
    shapes_sizes = [((224, 224), 224), ((280, 224), 280), ((300, 420), 512)]
    parts = [canvases(tmp, [shape], size) for shape, size in shapes_sizes]
    mean, std = (
        (cxr.IMAGENET_MEAN, cxr.IMAGENET_STD) if kind == "resnet" else (cxr.HUGGINGFACE_MEAN, cxr.HUGGINGFACE_STD)
    )
    texts = REPORTS[:3] + REPORTS[-2:-1]
    out = {
        "kind": kind,
        "path": path,
        "text_model": text_model,
        "n_keys": len(state),
        "old_keys": list(state),
        "parts": parts,
        "texts": texts,
        "ref_images": torch.cat([ref.embed_images(pil_pixels(p[2], mean, std)) for p in parts]),
        "ref_texts": ref.embed_texts(reference_tokens(text_model / "vocab.txt", texts)),
    }
    del ref, state
    return out


def tiny_entry(built: Built, text_model: Path, **extra) -> dict[str, Any]:
    return {"family": "cxr_clip", "checkpoint": str(built.path), "text_model": str(text_model), **extra}


# --------------------------------------------------------------------------------------------
# (a) published layout, safe loading, strict keys


def test_family_registered_with_its_options():
    family = get_family({"family": "cxr_clip", "checkpoint": "x", "text_model": "y", "max_length": 128}, "m")
    assert set(family.options) == {"checkpoint", "text_model", "max_length"}
    assert family.required == ("checkpoint", "text_model") and family.train is None
    with pytest.raises(MedretError, match=r"models\.m\.text_model is required by family cxr_clip"):
        load_model({"family": "cxr_clip", "checkpoint": "x"}, "m")


def test_fixture_has_the_published_pickle_layout(tiny, tiny_text):
    built = tiny("swin")
    cfg = built.config
    assert isinstance(cfg, dict) and isinstance(cfg["model"], dict)
    scale = cfg["transform"]["train"]["RandomResizedCrop"]["scale"]
    assert isinstance(scale, ListConfig) and list(scale) == [0.8, 1.1]  # survives convert_dictconfig_to_dict
    # The root of the ListConfig's parent chain carries Hydra's ${now:} results in OmegaConf's resolver cache.
    root = scale._get_root()
    cache = root._metadata.resolver_cache
    assert isinstance(cache, collections.defaultdict) and set(cache) == {"now"} and len(cache["now"]) == 2
    globals_ = pickle_globals(built.path)
    omegaconf_like = {g for g in globals_ if not g.startswith(("torch.", "collections.OrderedDict"))}
    # The allow-list is exactly what the file needs: every entry is used, nothing else is referenced.
    names = {
        "__builtin__.dict": "builtins.dict",
        "__builtin__.list": "builtins.list",
        "__builtin__.long": "builtins.int",
    }
    assert {names.get(g, g) for g in omegaconf_like} == set(cxr.SAFE_GLOBALS)
    assert list(cxr.safe_globals()) == list(cxr.SAFE_GLOBALS) and len(cxr.SAFE_GLOBALS) == 10
    # torch's weights-only unpickler cannot read it even with the ten classes allowed: it fills only plain dicts.
    with (
        torch.serialization.safe_globals(list(cxr.safe_globals().values())),
        pytest.raises(pickle.UnpicklingError, match="Can only SETITEM for dict"),
    ):
        torch.load(built.path, weights_only=True)
    model = load_model({"family": "cxr_clip", "checkpoint": str(built.path), "text_model": str(tiny_text)})
    assert model.n_keys == len(built.state)


def test_full_size_files_load_strictly(full):
    kind = full["kind"]
    assert full["n_keys"] == (523 if kind == "resnet" else 436)
    prefix = "image_encoder.resnet." if kind == "resnet" else "image_encoder.image_encoder."
    image_keys = [k for k in full["old_keys"] if k.startswith(prefix)]
    assert len(image_keys) == (318 if kind == "resnet" else 231)
    assert sum(k.startswith("text_encoder.text_encoder.") for k in full["old_keys"]) == 200
    if kind == "swin":
        blocks = {k.split(".blocks.")[1].split(".", 1)[1] for k in image_keys if ".blocks." in k}
        assert blocks == OLD_SWIN_BLOCK  # the fixture really is the 4.26 layout
    model = load_model({"family": "cxr_clip", "checkpoint": str(full["path"]), "text_model": str(full["text_model"])})
    assert model.embed_dim == 512 and model.max_length == 256 and model.n_keys == full["n_keys"]
    # Every key is loaded except the buffers transformers 5 recomputes (checked equal before dropping).
    expected_dropped = ["text_encoder.text_encoder.embeddings.position_ids"]
    if kind == "swin":
        expected_dropped += [k for k in image_keys if k.endswith("relative_position_index")]
    assert sorted(model.dropped_keys) == sorted(expected_dropped)
    assert len(model.dropped_keys) == (1 if kind == "resnet" else 13)
    assert len(model.model.state_dict()) == full["n_keys"] - len(expected_dropped)

    # (b) on the full-size towers: embeddings equal the reference forward pass.
    imgs = torch.cat([model.encode_images(p[0], p[1]) for p in full["parts"]])
    diff = (imgs - full["ref_images"]).abs().max().item()
    assert diff < 1e-5, diff  # identical network input (also when resampled), identical towers
    txt = model.encode_texts(full["texts"])
    assert (txt - full["ref_texts"]).abs().max().item() < 1e-5


def test_strict_load_refuses_extra_missing_and_mismatched_keys(tiny, tiny_text, tmp_path):
    built = tiny("swin")

    def attempt(state: dict[str, torch.Tensor]) -> str:
        path = save_tar(tmp_path / "mutated.tar", state, built.config, built.training)
        with pytest.raises(MedretError) as err:
            load_model({"family": "cxr_clip", "checkpoint": str(path), "text_model": str(tiny_text)})
        return str(err.value)

    state = dict(built.state)
    msg = attempt({**state, "text_encoder.mlm_head.decoder.weight": torch.zeros(3, 3)})  # ignored by strict=False
    assert "1 unexpected keys (first: text_encoder.mlm_head.decoder.weight)" in msg
    assert "looks like a CXR-CLIP Swin-T (swint_*) state dict" in msg
    msg = attempt({k: v for k, v in state.items() if k != "image_projection.projection.bias"})
    assert "1 missing keys (first: image_projection.projection.bias)" in msg
    q = "image_encoder.image_encoder.encoder.layers.1.blocks.0.attention.self.query.weight"
    msg = attempt({k: v for k, v in state.items() if k != q})
    assert f"missing keys (first: {q})" in msg  # reported with the file's own (4.26) name
    msg = attempt({**state, "text_projection.projection.weight": torch.zeros(512, 7)})
    assert "shape mismatches (first: text_projection.projection.weight (512, 7) != (512, 32))" in msg
    msg = attempt({**state, "text_encoder.text_encoder.embeddings.position_ids": torch.arange(512).flip(0)[None]})
    assert "differ from the recomputed ones: text_encoder.text_encoder.embeddings.position_ids" in msg
    new = q.replace("attention.self.query", "attention.q_proj")
    msg = attempt({**state, new: state[q]})  # 4.26 and 5.x names for one parameter
    assert "unexpected keys" in msg and new in msg


def test_conversion_agrees_with_transformers_own_loader(tiny, tiny_text, tmp_path):
    """transformers' from_pretrained renames 4.26 Swin keys itself: our conversion must give the same weights."""
    built = tiny("swin")
    model = load_model(tiny_entry(built, tiny_text))
    for prefix, cls, cfg, ours in (
        ("image_encoder.image_encoder.", SwinModel, SwinConfig(**TINY_SWIN_CONFIG), model.model.image),
        ("text_encoder.text_encoder.", BertModel, BertConfig(**TINY_BERT), model.model.text),
    ):
        folder = tmp_path / cls.__name__
        folder.mkdir()
        cfg.save_pretrained(folder)
        torch.save(
            {k[len(prefix) :]: v for k, v in built.state.items() if k.startswith(prefix)}, folder / "pytorch_model.bin"
        )
        theirs = cls.from_pretrained(folder).state_dict()
        mine = ours.state_dict()
        assert set(theirs) == set(mine)
        assert all(torch.equal(theirs[k], mine[k]) for k in mine)


# --------------------------------------------------------------------------------------------
# (b) embeddings vs the reference forward pass


@pytest.mark.parametrize(("kind", "pooling"), [("swin", "eos"), ("resnet", "eos"), ("swin", "bos"), ("swin", "mean")])
def test_embeddings_equal_reference_forward(tiny, tiny_text, tmp_path, kind, pooling):
    built = tiny(kind, pooling)
    model = load_model(tiny_entry(built, tiny_text, batch_size=4))
    mean, std = (
        (cxr.IMAGENET_MEAN, cxr.IMAGENET_STD) if kind == "resnet" else (cxr.HUGGINGFACE_MEAN, cxr.HUGGINGFACE_STD)
    )
    if pooling == "eos":
        # Exact geometry (no resampling, content box = 224 x 224 or centre crop only): identical network input.
        for shapes, size in (([(224, 224)] * 2, 224), ([(280, 224), (280, 224)], 280)):
            images, boxes, crops = canvases(tmp_path, shapes, size)
            diff = (model.encode_images(images, boxes) - built.ref.embed_images(pil_pixels(crops, mean, std))).abs()
            assert diff.max().item() < 1e-5
        # Mixed boxes in one batch, resampled down and up (the network input is bit-identical to PIL's too).
        images, boxes, crops = canvases(tmp_path, [(300, 240), (240, 320), (150, 120), (512, 410), (97, 130)], 256)
        ours, theirs = model.encode_images(images, boxes), built.ref.embed_images(pil_pixels(crops, mean, std))
        assert (ours - theirs).abs().max().item() < 1e-5
    # Texts: batched by 4 here, one padded batch in the reference; eos = the [SEP] position of each report.
    tokens = reference_tokens(tiny_text / "vocab.txt", REPORTS)
    diff = (model.encode_texts(REPORTS) - built.ref.embed_texts(tokens, pooling)).abs().max().item()
    assert diff < 1e-5, diff


# --------------------------------------------------------------------------------------------
# (c) tensor preprocessing vs the PIL pipeline


def test_preprocessing_matches_the_pil_pipeline(tmp_path):
    """Bit-identical network input: crop, Resize(224), CenterCrop(224), ToTensor, Normalize on PIL images.

    Measured over these fixed radiograph-like images (down- and upsampling, centre crop only, identity) and over a
    sweep of 130 cache geometries (S = 224 ... 1024, width/height 0.55 ... 1.8): 0 differing values. The installed
    Pillow 13 runs the vertical pass first for some tall narrow images (width/height <= 0.4 at >= 1024 px); there
    the bound is one grey level (1/255 before normalisation), checked on such an image below.
    """
    cases = [
        ([(224, 224), (280, 224)], 280),  # downsampled 280 -> 224 (many rounding ties) / centre crop only
        ([(300, 240), (240, 300), (512, 410), (1000, 800)], 512),  # downsampling, both orientations
        ([(150, 120), (97, 130)], 150),  # upsampling
    ]
    for shapes, size in cases:
        images, boxes, crops = canvases(tmp_path, shapes, size)
        for mean, std in ((cxr.IMAGENET_MEAN, cxr.IMAGENET_STD), (cxr.HUGGINGFACE_MEAN, cxr.HUGGINGFACE_STD)):
            ours = cxr.preprocess(images, boxes, mean, std)
            ref = pil_pixels(crops, mean, std)
            assert ours.shape == ref.shape == (len(shapes), 3, 224, 224)
            assert torch.equal(ours, ref)
            # Batched with mixed boxes == one image at a time.
            single = [cxr.preprocess(images[i : i + 1], boxes[i : i + 1], mean, std) for i in range(len(shapes))]
            assert torch.equal(ours, torch.cat(single))
    images, boxes, crops = canvases(tmp_path, [(1024, 307)], 1024)  # width/height 0.3
    ours, ref = cxr.preprocess(images, boxes, (0, 0, 0), (1, 1, 1)), pil_pixels(crops, (0, 0, 0), (1, 1, 1))
    assert (ours - ref).abs().max().item() * 255 <= 1 + 1e-3
    assert resized_size(300, 240, 224) == (280, 224) and resized_size(240, 320, 224) == (224, 298)


# --------------------------------------------------------------------------------------------
# (d) tokeniser vs BertTokenizer(vocab=..., do_lower_case=True)


@pytest.mark.parametrize("max_length", [256, 12])
def test_token_ids_match_reference_bert_tokenizer(tiny_text, max_length):
    vocab = tiny_text / "vocab.txt"
    ours = WordPiece(vocab, max_length=max_length, padding="longest")(REPORTS)
    ref = reference_tokens(vocab, REPORTS, max_length)
    assert torch.equal(ours[0], ref["input_ids"])
    assert torch.equal(ours[1], ref["attention_mask"])
    assert torch.equal(ours[2], ref["token_type_ids"])
    ids = {w: i for i, w in enumerate(WORDS)}
    unk = ids["[UNK]"]
    assert ours[0][0, :4].tolist() == [ids["[CLS]"], ids["no"], ids["acute"], ids["cardio"]]  # lowercased, ##pieces
    assert ours[0].shape[1] == ours[1].sum(1).max() == max_length  # the long report is truncated, [SEP] kept
    assert (ours[0].gather(1, ours[1].sum(1, keepdim=True) - 1) == ids["[SEP]"]).all()  # eos = [SEP] position
    assert (ours[0] != unk).sum() > len(REPORTS) * 2  # a real vocabulary, not the vocab_file= trap (all [UNK])
    if max_length == 256:
        row = ours[0][REPORTS.index("Réticulo-nodulaire opacités; naïve café")].tolist()
        assert ids["reticulo"] in row and ids["cafe"] in row  # accents stripped with lower-casing
        row = ours[0][REPORTS.index("[SEP] inside [MASK] text [mask] and [CLS]")].tolist()
        assert row[1] == ids["[SEP]"] and ids["[MASK]"] in row and ids["mask"] in row  # specials verbatim only
        assert ours[0][REPORTS.index("")].tolist()[:2] == [ids["[CLS]"], ids["[SEP]"]]


def test_max_length_option_and_default(tiny, tiny_text):
    built = tiny("swin")
    assert load_model(tiny_entry(built, tiny_text)).max_length == 256  # config base.text_max_length
    model = load_model(tiny_entry(built, tiny_text, max_length=16))
    assert model.tokenizer(REPORTS)[0].shape[1] == 16
    with pytest.raises(MedretError, match=r"models\.<name>\.max_length: 600 must be an integer in \[2, 512\]"):
        load_model(tiny_entry(built, tiny_text, max_length=600))
    assert load_model(tiny_entry(built, tiny_text / "vocab.txt")).tokenizer.vocab_size == len(WORDS)  # file path
    spec = model.spec()
    assert spec["weights"] == cxr.file_sha256(built.path) and spec["max_length"] == 16
    assert "checkpoint" not in spec and "text_model" not in spec and "vocab" in spec and "text_config" in spec


# --------------------------------------------------------------------------------------------
# Bad input


def test_missing_files_name_key_and_source(tiny, tiny_text, tmp_path):
    with pytest.raises(MedretError) as err:
        load_model({"family": "cxr_clip", "checkpoint": str(tmp_path / "r50_m.tar"), "text_model": str(tiny_text)})
    msg = str(err.value)
    assert "r50_m.tar: CXR-CLIP checkpoint not found" in msg and "github.com/kakaobrain/cxr-clip" in msg
    assert "models.<name>.checkpoint" in msg
    built = tiny("swin")
    with pytest.raises(MedretError) as err:
        load_model(tiny_entry(built, tmp_path / "no_such_dir"))
    msg = str(err.value)
    assert "vocab.txt: Bio_ClinicalBERT vocabulary not found" in msg
    assert "models.<name>.text_model" in msg and "huggingface.co/emilyalsentzer/Bio_ClinicalBERT" in msg
    wrong = write_text_model(tmp_path / "wrong_vocab", [*WORDS, "extra"], None)  # 28996 rows expected, no config
    with pytest.raises(MedretError, match=r"tokens, but the checkpoint's text encoder has 28996"):
        load_model(tiny_entry(built, wrong))


@pytest.mark.parametrize(
    ("damage", "found"),
    [
        ("half", r"a zip archive cut short \([\d,]+ bytes, its central directory is missing\): an incomplete download"),
        ("empty", r"an empty file \(0 bytes\)"),
        ("html", r"an HTML page \(\d+ bytes\), e\.g\. a login or error page saved by a failed download"),
        ("lfs", r"a Git LFS pointer \(\d+ bytes\), not the weights"),
        ("gzip", r"a gzip file \(\d+ bytes\); decompress it first"),
        ("flipped", r"a torch zip file \([\d,]+ bytes\) whose member \S+ is damaged \(CRC mismatch\)"),
    ],
)
def test_unreadable_file_says_what_was_found(tiny, tiny_text, tmp_path, damage, found):
    data = tiny("swin").path.read_bytes()
    bad = tmp_path / "swint_m.tar"
    if damage == "half":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "html":
        bad.write_bytes(b"<!DOCTYPE html><html><body>Sign in to continue</body></html>\n")
    elif damage == "lfs":
        bad.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n")
    elif damage == "gzip":
        bad.write_bytes(gzip.compress(data[:1000]))
    else:  # one flipped byte inside data.pkl (stored uncompressed): the pickle no longer parses
        with zipfile.ZipFile(tiny("swin").path) as zf:
            info = zf.getinfo(next(n for n in zf.namelist() if n.endswith("data.pkl")))
        at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 40
        bad.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
    with pytest.raises(MedretError) as err:
        load_model({"family": "cxr_clip", "checkpoint": str(bad), "text_model": str(tiny_text)})
    msg = str(err.value)
    assert msg.startswith(f"{bad}: cannot read as a CXR-CLIP checkpoint (") and "\n" not in msg, msg
    assert re.search(r"; the file is " + found, msg), msg
    assert "truncated or corrupt" not in msg


class Payload:
    """A pickle that runs code on load (writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("where", ["config_dict", "config_listconfig", "top_level"])
def test_code_carrying_pickle_is_refused_without_running(tiny, tiny_text, tmp_path, where):
    built = tiny("swin")
    marker = tmp_path / "PWNED"
    config, extra = dict(built.config), {}
    if where == "config_dict":
        config["transform"] = {**config["transform"], "evil": {"x": Payload(marker)}}
    elif where == "config_listconfig":
        config["transform"] = {"train": OmegaConf.create([0.8, Payload(marker)], flags={"allow_objects": True})}
    else:
        extra = {"train_loss": Payload(marker)}
    path = save_tar(tmp_path / "swint_mc.tar", built.state, config, built.training, **extra)
    assert "builtins.exec" in pickle_globals(path) or "__builtin__.exec" in pickle_globals(path)  # payload present
    with pytest.raises(MedretError, match=r"refused to load: the pickle references builtins\.exec, .*nothing was run"):
        load_model({"family": "cxr_clip", "checkpoint": str(path), "text_model": str(tiny_text)})
    assert not marker.exists()


def test_unlisted_omegaconf_type_is_refused(tiny, tiny_text, tmp_path, monkeypatch):
    built = tiny("swin")
    config = {**built.config, "extra": OmegaConf.create({"typed": StringNode("x")})}
    path = save_tar(tmp_path / "IN.tar", built.state, config, built.training)
    with pytest.raises(
        MedretError,
        match=r"IN\.tar: refused to load: its pickled config references the OmegaConf class "
        r"omegaconf\.nodes\.StringNode, which is outside medret's allow-list of 10 classes .*nothing was run; "
        r"if this is an unmodified released file, please report the class name .*convert it once with python -c",
    ) as err:
        load_model({"family": "cxr_clip", "checkpoint": str(path), "text_model": str(tiny_text)})
    assert "released files do not use" not in str(err.value) and "\n" not in str(err.value)
    # The conversion the message gives (for a trusted file) yields a file that loads, with the same model.
    monkeypatch.chdir(tmp_path)
    exec(re.search(r'python -c "(.+?)"', str(err.value)).group(1), {})
    entry = {"family": "cxr_clip", "text_model": str(tiny_text), "device": "cpu"}
    converted = load_model({**entry, "checkpoint": "OUT.tar"})
    original = load_model({**entry, "checkpoint": str(built.path)})
    assert torch.equal(converted.encode_texts(["no effusion"]), original.encode_texts(["no effusion"]))


def test_upsampling_is_the_shorter_side_to_224(tiny, tiny_text):
    model = load_model({"family": "cxr_clip", "checkpoint": str(tiny("swin").path), "text_model": str(tiny_text)})
    boxes = np.array([[0, 20, 200, 160], [0, 0, 200, 200]])
    np.testing.assert_allclose(model.enlargement(boxes, 200), [224 / 160, 224 / 200])
    assert resized_size(200, 160, 224) == (280, 224)  # the real resize: 160 -> 224 is the largest factor
    # At S' = 280 the 160 side becomes 160 * 280 / 200 = 224 exactly; at 279, round(223.2) = 223.
    assert needed_image_size(model, boxes, 200) == 280
    assert model.upsampling(np.array([[0, 0, 224, 224], [0, 37, 300, 226]]), 300) == 1.0


def test_wrong_family_files_are_named(tmp_path, tiny_text):
    openai = {
        "positional_embedding": torch.zeros(77, 8),
        "text_projection": torch.zeros(8, 8),
        "visual.conv1.weight": torch.zeros(8, 3, 32, 32),
        "token_embedding.weight": torch.zeros(10, 8),
        "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(24, 8),
    }
    torch.save(collections.OrderedDict(openai), tmp_path / "best_64_5e-05_original_22000_0.864.pt")
    torch.save({"format": "medret.local/1", "state_dict": {}}, tmp_path / "checkpoint.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated; fine for a fixture
        torch.jit.script(nn.Linear(2, 2)).save(str(tmp_path / "ViT-B-32.pt"))
    with pytest.raises(MedretError, match=r"ViT-B-32\.pt: a TorchScript archive .*not a CXR-CLIP file"):
        load_model({"family": "cxr_clip", "checkpoint": str(tmp_path / "ViT-B-32.pt"), "text_model": str(tiny_text)})
    for name, looks in (
        ("best_64_5e-05_original_22000_0.864.pt", "OpenAI-layout CLIP"),
        ("checkpoint.pt", "medret local-family checkpoint"),
    ):
        with pytest.raises(MedretError, match=rf"not a CXR-CLIP checkpoint .*looks like an? {looks}"):
            load_model({"family": "cxr_clip", "checkpoint": str(tmp_path / name), "text_model": str(tiny_text)})


def test_classifier_config_and_unknown_encoder_are_refused(tiny, tiny_text, tmp_path):
    built = tiny("swin")
    config = {**built.config, "model": {**built.config["model"], "name": "finetune_classification"}}
    path = save_tar(tmp_path / "cls.tar", built.state, config, built.training)
    with pytest.raises(MedretError, match=r"not clip_custom; the file looks like a CXR-CLIP fine-tuned classifier"):
        load_model({"family": "cxr_clip", "checkpoint": str(path), "text_model": str(tiny_text)})
    enc = {**built.config["model"]["image_encoder"], "name": "google/vit-base-patch16-224", "model_type": "vit"}
    config = {**built.config, "model": {**built.config["model"], "image_encoder": enc}}
    path = save_tar(tmp_path / "vit.tar", built.state, config, built.training)
    with pytest.raises(MedretError, match=r"image encoder 'google/vit-base-patch16-224' \(vit\) is not one of"):
        load_model({"family": "cxr_clip", "checkpoint": str(path), "text_model": str(tiny_text)})
