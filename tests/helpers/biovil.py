"""BioViL's and BioViL-T's released files (hi-ml image checkpoints, a tiny CXR-BERT directory) with random weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from health_multimodal.image.model.model import ImageModel as HimlImageModel
from health_multimodal.text.model import CXRBertConfig, CXRBertModel

import medret.models.biovil as bv
from medret.models.bert import SPECIAL_TOKENS

ENCODER = {"biovil": "resnet50", "biovil_t": "resnet50_multi_image"}
WORDS = [
    "no",
    "acute",
    "cardiopulmonary",
    "process",
    "findings",
    "mild",
    "cardiomegaly",
    "impression",
    "small",
    "left",
    "right",
    "pleural",
    "effusion",
    "et",
    "tube",
    "tip",
    "cm",
    "above",
    "the",
    "carina",
    "ng",
    "in",
    "stomach",
    "unchanged",
    "lines",
    "and",
    "tubes",
    "heart",
    "size",
    "is",
    "normal",
    "lungs",
    "are",
    "clear",
    "pneumothorax",
    "picc",
    "line",
    "terminates",
    "mid",
    "svc",
    "cafe",
    "resume",
]


def build_vocab() -> list[str]:
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?-()")
    pieces = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + ["##ion", "##al", "##ed"]
    return [*SPECIAL_TOKENS, *sorted(set(WORDS)), *chars, *pieces]


def randomise(module: torch.nn.Module, seed: int, std: float | None = None) -> None:
    """Random parameters and BatchNorm statistics (eval-mode BN then matters)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif std is not None or name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=gen) * (std or 0.1))


def write_published(root: Path, versions: tuple[str, ...] = tuple(bv.VERSIONS)) -> dict:
    """The released files (image ``.pt`` per version, CXR-BERT directory) under ``root``, with their references."""
    out: dict = {"root": root}
    for i, version in enumerate(bv.VERSIONS):
        if version not in versions:
            continue
        torch.manual_seed(i)
        ref = HimlImageModel(img_encoder_type=ENCODER[version], joint_feature_size=128)
        randomise(ref, seed=i)
        ref.eval()
        path = root / bv.VERSIONS[version]["image_file"]
        torch.save(ref.state_dict(), path)
        out[version] = (path, ref)
    text = root / "CXR-BERT"
    text.mkdir()
    vocab = build_vocab()
    (text / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = CXRBertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        projection_size=128,
    )
    text_ref = CXRBertModel(config)
    randomise(text_ref, seed=9, std=0.2)
    text_ref.eval()
    config.save_pretrained(text)  # config.json, model_type cxr-bert
    state = dict(text_ref.state_dict())  # holds the tied decoder keys, as pre-5 files do
    state[bv.POSITION_IDS] = torch.arange(512)[None]  # persistent before transformers 4.31
    torch.save({k: v.clone() for k, v in state.items()}, text / "pytorch_model.bin")
    (text / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    out["text"] = (text, text_ref)
    out["vocab"] = text / "vocab.txt"
    return out
