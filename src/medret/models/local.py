"""Family ``local``: the project's own small contrastive model, trained by the workflow.

A from-scratch baseline and the demo's model. Image tower: a 0.3M-parameter CNN on greyscale
input (GroupNorm, so an embedding never depends on batch composition). Text tower: a bag of
words and within-sentence bigrams whose vocabulary is built from the training reports, then an
MLP. Trained with a symmetric InfoNCE loss and a learnable temperature; identical reports in a
batch share the target mass, so they are never pushed apart as false negatives. With
``occlusion_augmentation: p``, each training image is covered, with probability p, by a black
square of uniformly random area in [0, 0.9] (the ``local-occaug`` model of the demo).

Checkpoint format (``checkpoint.pt``, a ``torch.save`` dict loadable with ``weights_only=True``)::

    {"format": "medret.local/1",
     "config": {"input_size", "embed_dim", "widths", "text_hidden", "mean", "std"},
     "vocab": [token, ...],               # unigrams and "a b" bigrams, in id order
     "state_dict": {...},                 # LocalCLIP parameters, float32
     "train": {...}}                      # training provenance: data digest, seed, epochs, losses
"""

from __future__ import annotations

import itertools
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import medret
from medret.corruptions.apply import occlude
from medret.errors import MedretError
from medret.io import atomic_output, digest
from medret.models import list_families
from medret.models.base import ModelAdapter, ResizeRule, resolve_device
from medret.models.checkpoints import error_line

FORMAT = "medret.local/1"
#: Training options and their defaults, as the family's declaration (medret.models.families) gives them.
DEFAULT_TRAIN: dict[str, Any] = {
    key: sub["default"]
    for key, sub in list_families()["local"].options["train"].schema["properties"].items()
    if "default" in sub
}
_WORD = re.compile(r"[a-z]+")


# --------------------------------------------------------------------------------------------
# Tokeniser


def _sentences(text: str) -> list[list[str]]:
    return [_WORD.findall(s) for s in text.lower().split(".")]


def report_tokens(text: str) -> list[str]:
    """Lower-cased words and within-sentence bigrams ("no effusion") of one report."""
    out: list[str] = []
    for words in _sentences(text):
        out.extend(words)
        out.extend(f"{a} {b}" for a, b in itertools.pairwise(words))
    return out


def build_vocab(reports: Sequence[str], min_count: int = 2) -> list[str]:
    """Tokens seen at least ``min_count`` times in the training reports, most frequent first."""
    counts = Counter(t for r in reports for t in set(report_tokens(r)))
    return [t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]


class BagTokenizer:
    """Maps a report to the ids of the vocabulary tokens it contains (unknown tokens dropped)."""

    def __init__(self, vocab: Sequence[str]) -> None:
        self.vocab = list(vocab)
        self.index = {t: i for i, t in enumerate(self.vocab)}

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat token ids and offsets, the input format of ``nn.EmbeddingBag``."""
        ids: list[int] = []
        offsets: list[int] = []
        for text in texts:
            offsets.append(len(ids))
            ids.extend(sorted({self.index[t] for t in report_tokens(text) if t in self.index}))
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Architecture


def _conv(cin: int, cout: int, stride: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.GroupNorm(min(8, cout // 4), cout),
        nn.ReLU(inplace=True),
    )


class ImageTower(nn.Module):
    """5×5 stride-2 stem, four stages of two 3×3 convs (the first strided), average pool, linear."""

    def __init__(self, widths: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(1, widths[0], 2, kernel=5)]
        cin = widths[0]
        for w in widths:
            layers += [_conv(cin, w, 2), _conv(w, w, 1)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x).mean(dim=(2, 3)))


class TextTower(nn.Module):
    """Mean of token embeddings, then a two-layer MLP."""

    def __init__(self, vocab_size: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(max(vocab_size, 1), hidden, mode="mean")
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.bag(ids, offsets))


class LocalCLIP(nn.Module):
    """Image tower, text tower and the learnable temperature (log of the logit scale)."""

    def __init__(self, config: Mapping[str, Any], vocab_size: int) -> None:
        super().__init__()
        self.image = ImageTower(config["widths"], config["embed_dim"])
        self.text = TextTower(vocab_size, config["text_hidden"], config["embed_dim"])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("mean", torch.tensor(float(config["mean"])), persistent=False)
        self.register_buffer("std", torch.tensor(float(config["std"])), persistent=False)
        self.input_size = int(config["input_size"])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S) canvases -> normalised float (B, 1, input_size, input_size)."""
        x = images.unsqueeze(1).float().div_(255.0)
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        # channels_last makes the GroupNorm CNN about 1.6x faster on the CPU (measured, torch 2.14).
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def model_config(train: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture config stored in the checkpoint."""
    return {
        "input_size": int(train["input_size"]),
        "embed_dim": int(train["embed_dim"]),
        "widths": [16, 32, 64, 128],
        "text_hidden": 256,
        "mean": 0.5,
        "std": 0.25,
    }


# --------------------------------------------------------------------------------------------
# Checkpoint and adapter


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a ``medret.local/1`` checkpoint (tensors and plain types only)."""
    path = Path(path)
    if not path.is_file():
        raise MedretError(
            f"{path}: local-model checkpoint not found; it is written by the workflow's train rule "
            "(or set models.<name>.checkpoint to an existing file)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign/pickled-code files
        raise MedretError(f"{path}: not a loadable local-model checkpoint ({error_line(exc)}); retrain it") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MedretError(f"{path}: not a {FORMAT} checkpoint (wrong family?); use the family that wrote it")
    return ckpt


class LocalAdapter(ModelAdapter):
    """Adapter of the ``local`` family."""

    family = "local"

    def __init__(self, entry: Mapping[str, Any]) -> None:
        super().__init__(entry)
        if "checkpoint" not in entry:  # a config may give `train` instead; the workflow then sets the checkpoint
            raise MedretError(
                "config key models.<name>.checkpoint is required by family local to load a model (the workflow sets "
                "it for a model it trains)"
            )
        ckpt = load_checkpoint(entry["checkpoint"])
        self.tokenizer = BagTokenizer(ckpt["vocab"])
        self.model = LocalCLIP(ckpt["config"], len(ckpt["vocab"]))
        result = self.model.load_state_dict(ckpt["state_dict"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise MedretError(
                f"{entry['checkpoint']}: checkpoint does not match the local architecture "
                f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}); retrain it"
            )
        self.model.eval().to(self.device, memory_format=torch.channels_last)
        # LocalCLIP.preprocess resizes the whole canvas to the input size it was trained at.
        self.resize_rule = ResizeRule("canvas", (self.model.input_size, self.model.input_size))
        self._embed_dim = int(ckpt["config"]["embed_dim"])
        # The checkpoint's identity, not its path, determines the embeddings.
        self._train_digest = ckpt.get("train", {}).get("digest", "")

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def identity(self) -> dict[str, Any]:
        return {"weights": self._train_digest}

    def _encode_images(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return self.model.image(self.model.preprocess(images))

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        ids, offsets = self.tokenizer(texts)
        return self.model.text(ids.to(self.device), offsets.to(self.device))


# --------------------------------------------------------------------------------------------
# Training


def _random_occlusion(images: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Cover each image with probability p by a black square of uniform area in [0, 0.9]."""
    n, size = images.shape[0], images.shape[-1]
    area = torch.rand(n, generator=gen, dtype=torch.float64) * 0.9
    side = area.sqrt() * (torch.rand(n, generator=gen, dtype=torch.float64) < p)
    top = torch.rand(n, generator=gen, dtype=torch.float64) * (1 - side)
    left = torch.rand(n, generator=gen, dtype=torch.float64) * (1 - side)
    boxes = torch.tensor([[0, 0, size, size]] * n)
    return occlude(images, boxes, torch.stack([top, left, side, side], dim=1))


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, text_ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; targets spread evenly over the batch items that share a report."""
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    same = (text_ids[:, None] == text_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def train(
    entry: Mapping[str, Any],
    reports: Sequence[str],
    text_ids: np.ndarray,
    images: np.ndarray,
    out_path: str | Path,
    *,
    data_digest: str,
    threads: int = 1,
) -> dict[str, Any]:
    """Train a local model on (images, reports) and write its checkpoint atomically.

    ``images`` are the training split's cache-space uint8 canvases (N, S, S); ``text_ids`` mark
    identical reports. Deterministic for a given seed, data and thread count on the CPU.
    Returns the training record stored in the checkpoint.
    """
    opts = {**DEFAULT_TRAIN, **entry.get("train", {})}
    unknown = set(opts) - set(DEFAULT_TRAIN) - {"dataset"}
    if unknown:
        raise MedretError(
            f"config key models.<name>.train.{sorted(unknown)[0]}: unknown option; allowed: {', '.join(DEFAULT_TRAIN)}"
        )
    if len(reports) < 2:
        raise MedretError("training needs at least two pairs in the train split")
    torch.manual_seed(int(opts["seed"]))
    torch.set_num_threads(max(1, threads))
    gen = torch.Generator().manual_seed(int(opts["seed"]))
    device = resolve_device(str(entry.get("device", "auto")))

    vocab = build_vocab(reports, int(opts["min_count"]))
    tokenizer = BagTokenizer(vocab)
    config = model_config(opts)
    model = LocalCLIP(config, len(vocab)).to(device, memory_format=torch.channels_last)
    all_images = torch.from_numpy(np.ascontiguousarray(images))
    all_ids = torch.from_numpy(np.array(text_ids, dtype=np.int64))
    n, bs, epochs = len(reports), min(int(opts["batch_size"]), len(reports)), int(opts["epochs"])
    steps = max(1, n // bs)
    optim = torch.optim.Adam(model.parameters(), lr=float(opts["lr"]))
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=float(opts["lr"]), total_steps=steps * epochs)
    p_occ = float(opts["occlusion_augmentation"])
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for step in range(steps):
            idx = order[step * bs : (step + 1) * bs]
            batch = all_images[idx]
            if p_occ > 0:
                batch = _random_occlusion(batch, p_occ, gen)
            ids, offsets = tokenizer([reports[i] for i in idx.tolist()])
            img = model.image(model.preprocess(batch.to(device)))
            txt = model.text(ids.to(device), offsets.to(device))
            scale = model.logit_scale.clamp(max=math.log(100)).exp()
            loss = contrastive_loss(img, txt, all_ids[idx].to(device), scale)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            total += loss.item()
        losses.append(round(total / steps, 5))
        print(
            f"epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f} temperature "
            f"{1 / model.logit_scale.exp().item():.4f} ({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    record = {
        "options": {k: v for k, v in opts.items()},
        "data_digest": data_digest,
        "n_pairs": n,
        "losses": losses,
        "medret_version": medret.__version__,
        "torch_version": str(torch.__version__),
    }
    state = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    # A digest of the learnt weights identifies this checkpoint in every downstream provenance.
    record["digest"] = digest(b"".join(v.numpy().tobytes() for v in state.values()))
    with atomic_output(out_path) as tmp:
        torch.save({"format": FORMAT, "config": config, "vocab": vocab, "state_dict": state, "train": record}, tmp)
    return record


def train_from_files(
    entry: Mapping[str, Any],
    pairs: Any,
    images: np.ndarray,
    out_path: str | Path,
    *,
    data_digest: str,
    threads: int = 1,
) -> dict[str, Any]:
    """Workflow hook: train on a train-split table (``report``, ``text_id``) and its image cache."""
    return train(
        entry,
        pairs["report"].tolist(),
        pairs["text_id"].to_numpy(),
        images,
        out_path,
        data_digest=data_digest,
        threads=threads,
    )
