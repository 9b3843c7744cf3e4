"""MedCLIP's towers with random weights, its transformers-4.24 checkpoint layout and a vocab.txt."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision
from transformers import BertConfig, BertModel, SwinConfig, SwinModel

# transformers 5 -> 4.24 Swin block renames (inverse of models.md §0.2), applied to block keys only.
NEW_TO_OLD = (
    ("attention.relative_position_bias.relative_position_bias_table", "attention.self.relative_position_bias_table"),
    ("attention.q_proj.", "attention.self.query."),
    ("attention.k_proj.", "attention.self.key."),
    ("attention.v_proj.", "attention.self.value."),
    ("attention.o_proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
)
WORDS = [
    "no",
    "acute",
    "cardiopulmonary",
    "process",
    "pleural",
    "effusion",
    "pneumothorax",
    "focal",
    "consolidation",
    "the",
    "heart",
    "size",
    "is",
    "normal",
    "et",
    "tube",
    "tip",
    "cm",
    "above",
    "carina",
    "ng",
    "stomach",
    "mild",
    "cardiomegaly",
    "and",
    "bibasilar",
    "atelectasis",
    "right",
    "left",
    "stable",
    "since",
    "cafe",
    "resume",
    "picc",
    "line",
    "terminates",
    "in",
    "mid",
    "svc",
    "unchanged",
    "findings",
    "impression",
    "lungs",
    "are",
    "clear",
    "of",
    "or",
    "with",
    "inch",
    "malpositioned",
    "sided",
    "amp",
    "pneumo",
    "chest",
]
PIECES = ["##s", "##es", "##ed", "##ly", "##thorax", "##ing", "##ray"]
CASED = ["No", "Pleural", "Effusion", "Heart", "NG", "ET", "PICC", "SVC", "Pneumothorax", "NORMAL"]


def write_vocab(directory: Path, size: int = 28996) -> Path:
    """A Bio_ClinicalBERT-shaped vocab.txt: BERT-cased specials at 0/100-103, words, then fillers."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", *[f"[unused{i}]" for i in range(1, 100)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~0123456789") + WORDS + PIECES + CASED
    tokens += [f"filler{i}" for i in range(size - len(tokens))]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return directory / "vocab.txt"


def relative_position_index(window: int = 7) -> torch.Tensor:
    """Swin's relative position index [window², window²] int64 (transformers 4.24 SwinSelfAttention)."""
    coords = torch.stack(torch.meshgrid([torch.arange(window), torch.arange(window)], indexing="ij"))
    flat = torch.flatten(coords, 1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def perturb(module: torch.nn.Module, gen: torch.Generator) -> None:
    # Random everywhere (LayerNorm/BN affine, zero-initialised bias tables), so a misplaced tensor shows.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


def build_towers() -> SimpleNamespace:
    """MedCLIP's towers with random weights (HF default SwinConfig() is swin-tiny)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    swin = SwinModel(SwinConfig()).eval()
    bert = BertModel(BertConfig(vocab_size=28996)).eval()
    r50 = torchvision.models.resnet50(weights=None)
    r50.fc = torch.nn.Linear(2048, 512, bias=False)
    r50.eval()
    vproj = torch.nn.Linear(768, 512, bias=False)
    tproj = torch.nn.Linear(768, 512, bias=False)
    for module in (swin, bert, r50):
        perturb(module, gen)
    return SimpleNamespace(swin=swin, bert=bert, r50=r50, vproj=vproj, tproj=tproj, logit_scale=math.log(1 / 0.07))


def new_layout(t: SimpleNamespace, variant: str) -> dict[str, torch.Tensor]:
    """MedCLIPModel.state_dict() keys as transformers 5 names them."""
    sd: dict[str, torch.Tensor] = {}
    if variant == "vit":
        sd |= {f"vision_model.model.{k}": v for k, v in t.swin.state_dict().items()}
        sd["vision_model.projection_head.weight"] = t.vproj.weight.detach()
    else:
        sd |= {f"vision_model.model.{k}": v for k, v in t.r50.state_dict().items()}
    sd |= {f"text_model.model.{k}": v for k, v in t.bert.state_dict().items()}
    sd["text_model.projection_head.weight"] = t.tproj.weight.detach()
    sd["logit_scale"] = torch.tensor(t.logit_scale)
    return sd


def old_layout(new: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """The transformers-4.24 state dict of the same model, keys in 4.24's order."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in new.items():
        if key == "text_model.model.embeddings.word_embeddings.weight":
            out["text_model.model.embeddings.position_ids"] = torch.arange(512).expand((1, -1)).clone()
        prefix, sep, suffix = key.partition(".blocks.")
        if key.startswith("vision_model.model.encoder.layers.") and sep:
            block, _, rest = suffix.partition(".")
            for new_name, old_name in NEW_TO_OLD:
                if rest.startswith(new_name):
                    rest = old_name + rest[len(new_name) :]
                    break
            key = f"{prefix}.blocks.{block}.{rest}"
            out[key] = value
            if rest == "attention.self.relative_position_bias_table":
                out[key.replace("bias_table", "index")] = relative_position_index()
        else:
            out[key] = value
    return out
