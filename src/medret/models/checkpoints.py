"""Helpers every family's loader shares: file identity, readable loader errors, strict key checks, safe unpickling."""

from __future__ import annotations

import _compat_pickle
import contextlib
import gzip
import hashlib
import math
import pickle
import tarfile
import types
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import _weights_only_unpickler

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


# --------------------------------------------------------------------------------------------
# Restricted unpickling and describing unreadable files


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle referenced a class or function outside the allow-list; nothing was called."""

    def __init__(self, name: str) -> None:
        super().__init__(f"GLOBAL {name} is not allow-listed")
        self.name = name


def restricted_load(path: str | Path, allowed: Mapping[str, Any]) -> Any:
    """``torch.load`` through an unpickler that resolves only allow-listed globals.

    The allow-list is torch's own weights-only list (tensors, storages, ``OrderedDict``, ...) plus
    ``allowed`` (``"module.name"`` -> object). Every class or function a pickle can call or build is
    looked up through ``find_class``, so a ``__reduce__`` payload naming anything else raises
    :class:`RefusedGlobal` before it is called. Unlike torch's weights-only unpickler, the standard
    unpickler fills any allowed container (e.g. a ``defaultdict``, which OmegaConf keeps as its
    resolver cache and which torch's weights-only unpickler refuses to fill). TorchScript archives
    are refused: ``torch.load`` would hand them to ``torch.jit.load``.
    """
    path = Path(path)
    if _is_torchscript(path):
        raise pickle.UnpicklingError("a TorchScript archive (torch.jit.save), which is refused here")
    names = {**_weights_only_unpickler._get_allowed_globals(), **allowed}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # torch.save writes protocol 2, which spells builtins the Python 2 way (__builtin__.long).
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[module, name]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            try:
                return names[f"{module}.{name}"]
            except KeyError:
                raise RefusedGlobal(f"{module}.{name}") from None

    module = types.ModuleType("medret_restricted_pickle")
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    module.load = lambda f, **kw: Unpickler(f, **kw).load()  # type: ignore[attr-defined]
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names)


def describe_file(path: str | Path) -> str:
    """What an unreadable weights file actually is, from its bytes (for "cannot read" messages).

    Tells apart an empty file, a Git LFS pointer, an HTML page (a blocked or failed download), a gzip
    or tar archive to unpack, a zip cut short, a zip without a torch ``data.pkl``, a torch zip with a
    damaged member, a legacy (pre-1.6) torch file and anything else (its size and first bytes).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        return f"an unreadable file ({exc.strerror or exc})"
    if size == 0:
        return "an empty file (0 bytes)"
    if head.startswith(b"version https://git-lfs"):
        return f"a Git LFS pointer ({size} bytes), not the weights; fetch the file itself (git lfs pull)"
    if head.lstrip()[:1] == b"<" and b"html" in head.lower():
        return f"an HTML page ({size} bytes), e.g. a login or error page saved by a failed download"
    if head.startswith(b"\x1f\x8b"):
        return f"a gzip file ({size} bytes); decompress it first" + _gzip_tail(path)
    if head[257:262] == b"ustar":
        return f"a tar archive ({size} bytes) holding {_tar_names(path)}; extract the weights file from it"
    if head.startswith(b"PK\x03\x04"):
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError):
            return f"a zip archive cut short ({size:,} bytes, its central directory is missing): an incomplete download"
        with zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("data.pkl")]
            if not pkl:
                return f"a zip archive of {len(names)} files (first: {', '.join(names[:3])}) without a torch data.pkl"
            try:
                bad = zf.testzip()
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                bad = f"? ({exc})"
            records = sum(1 for n in names if "/data/" in n)
            if bad is not None:
                return f"a torch zip file ({size:,} bytes) whose member {bad} is damaged (CRC mismatch)"
            return f"a complete torch zip file ({size:,} bytes, {records} tensor records, every CRC correct)"
    if head[:1] == b"\x80":
        return f"a legacy-format (pre-1.6) torch or pickle file ({size:,} bytes)"
    return f"a {size:,}-byte file starting with {head[:16]!r}, not a torch file"


def _gzip_tail(path: Path) -> str:
    try:
        with gzip.open(path) as g:
            inner = g.read(512)
    except (OSError, EOFError):
        return ""
    return " (it holds a tar archive)" if inner[257:262] == b"ustar" else ""


def _tar_names(path: Path) -> str:
    try:
        with tarfile.open(path) as tf:
            names = tf.getnames()
    except (tarfile.TarError, OSError):
        return "unreadable members"
    return f"{len(names)} members (first: {', '.join(names[:3])})"


def describe_checkpoint(obj: Any) -> str:
    """Which model family a loaded checkpoint object (or a dict of its keys) seems to belong to.

    One describer for every family's "wrong file" message, so that a file handed to the wrong family is named
    the same way whichever loader reads it. Shapes are used when the values are tensors, keys otherwise.
    """
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}, not a state dict"
    if str(obj.get("format", "")).startswith("medret.local"):
        return "a medret local-family checkpoint (family local)"
    if isinstance(obj.get("state_dict"), Mapping) and "model" not in obj:
        return "a PyTorch-Lightning style checkpoint with a state_dict entry (e.g. GLoRIA or MGCA)"
    if {"model", "optimizer", "config"} <= set(obj):
        inner = obj["model"]
        tower = describe_checkpoint(inner) if isinstance(inner, Mapping) and inner else "a model entry"
        return f"a training checkpoint with model/optimizer/config entries (the CXR-CLIP .tar layout) holding {tower}"
    keys = [k for k in obj if isinstance(k, str)]

    def has(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if has("classifier.") and has("image_encoder."):
        return "a CXR-CLIP fine-tuned classifier (finetune.py), not the contrastive model"
    if has("image_encoder.resnet.", "image_encoder.image_encoder."):
        arch = "Swin-T (swint_*)" if has("image_encoder.image_encoder.") else "ResNet-50 (r50_*)"
        return f"a CXR-CLIP {arch} state dict (family cxr_clip)"
    if has("vision_model.model.", "text_model.model."):
        if has("vision_model.model.encoder.layers."):
            return "a MedCLIP Swin-T checkpoint (variant vit)"
        if has("vision_model.model.layer1."):
            return "a MedCLIP ResNet-50 checkpoint (variant resnet)"
        return "a MedCLIP-like checkpoint with an unknown image tower"
    if has("visual.trunk."):
        return "an open_clip model with a timm image tower, e.g. BiomedCLIP (family biomedclip)"
    if "token_embedding.weight" in obj and has("visual."):
        return _describe_openai_clip(obj, keys)
    if has("text.transformer."):
        return "an open_clip CustomTextCLIP with a Hugging Face text tower"
    if has("vision_model.", "text_model.") and ("visual_projection.weight" in obj or "logit_scale" in obj):
        return "a Hugging Face transformers dual encoder (family transformers, with its whole model directory)"
    if has("encoder.encoder.") and has("projector."):
        return "a BioViL image model (family biovil)"
    if has("image.features.") and has("text.bag."):
        return "a medret local-family state dict (family local)"
    if has("embeddings.word_embeddings.", "bert."):
        return "a bare BERT model (a text tower's own weights, not a dual encoder)"
    if has("embeddings.patch_embeddings.") and has("encoder.layers."):
        return "a bare Swin model (an image tower's own weights, not a dual encoder)"
    if has("conv1.") and has("layer1."):
        return "a bare torchvision ResNet (an image tower's own weights, not a dual encoder)"
    return f"no layout medret knows (first keys: {', '.join(keys[:3]) or 'none'})"


def _describe_openai_clip(obj: Mapping[str, Any], keys: list[str]) -> str:
    """The OpenAI CLIP layout (CLIP, CXR-RePaiR, CheXzero), with the ViT's geometry when shapes are known."""
    conv, pos = obj.get("visual.conv1.weight"), obj.get("visual.positional_embedding")
    if isinstance(conv, torch.Tensor) and isinstance(pos, torch.Tensor):
        patch, width = conv.shape[-1], conv.shape[0]
        side = patch * math.isqrt(max(pos.shape[0] - 1, 0))
        layers = len({k.split(".")[3] for k in keys if k.startswith("visual.transformer.resblocks.")})
        proj = obj.get("visual.proj")
        embed = proj.shape[-1] if isinstance(proj, torch.Tensor) else "?"
        what = f"an OpenAI-layout CLIP ViT (width {width}, {layers} layers, patch {patch}, {side} px, embed {embed})"
        if (width, layers, patch, side, embed) == (768, 12, 32, 224, 512):
            what += ", i.e. ViT-B/32 as in OpenAI CLIP, CXR-RePaiR and CheXzero (open_clip ViT-B-32-quickgelu)"
        return what
    if any(k.startswith("visual.layer1.") for k in keys):
        return "an OpenAI-layout CLIP with a ResNet image tower (open_clip RN50-quickgelu family)"
    return "an OpenAI-layout CLIP state dict (e.g. CLIP, CheXzero, CXR-RePaiR; family open_clip)"
