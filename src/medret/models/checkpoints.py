"""Helpers every family's loader shares: file identity, readable loader errors, strict key checks, vocabularies."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from medret.errors import MedretError

#: The BERT-base architecture (BertConfig names) of Bio_ClinicalBERT, BiomedBERT and CXR-BERT, which
#: differ only in ``vocab_size``.
BERT_BASE: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}

#: Lines of torch's loader messages that carry the reason, most specific first.
_REASON_MARKERS = ("GLOBAL", "Unsupported", "Unpickler error", "Trying to", "Can only")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file: the identity of weights or vocabularies in the provenance of embeddings."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def error_line(exc: BaseException) -> str:
    """The informative line of a loader exception.

    torch wraps the reason (e.g. the global a weights-only load refused) in paragraphs of advice,
    including advice to allow-list the global, which is exactly what a user must not do here.
    """
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # the reason follows this marker, the advice precedes it
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(exc).__name__]
    hit = next((ln for marker in _REASON_MARKERS for ln in lines if marker in ln), lines[0])
    return hit.split(" Please use `torch.serialization", 1)[0].split(". Please use", 1)[0][:300]


def key_problems(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    *,
    file_name: Callable[[str], str] = str,
    model_name: Callable[[str], str] = str,
) -> list[str]:
    """What stops a strict load: missing keys, unexpected keys, shape mismatches (first four of each).

    ``file_name``/``model_name`` map keys back to the names a user sees (the file's own layout).
    """
    missing = [model_name(k) for k in expected if k not in state]
    unexpected = [file_name(k) for k in state if k not in expected]
    shapes = [
        f"{file_name(k)} {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    return [
        f"{len(items)} {label} (first: {', '.join(items[:4])})"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes))
        if items
    ]


@contextlib.contextmanager
def skip_random_init() -> Iterator[None]:
    """Build transformers modules without random initialisation.

    Every persistent tensor is overwritten by the strict load that follows; buffers computed in
    ``__init__`` (position ids, Swin's relative position index) are unaffected.
    """
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # another transformers version: initialise normally (slower, same result)
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        yield


def read_vocab(path: Path) -> dict[str, int]:
    """Token -> id from a BERT ``vocab.txt``: one token a line, id = line number (transformers' ``load_vocab``)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise MedretError(f"config key models.<name>.text_model: cannot read {path} ({exc})") from None
    if lines and lines[-1] == "":
        lines.pop()
    return {token.rstrip("\r"): i for i, token in enumerate(lines)}
