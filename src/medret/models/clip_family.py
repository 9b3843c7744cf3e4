"""Families ``open_clip``, ``cxr_repair`` and ``chexzero``: CLIP-style dual encoders built with open_clip.

* ``open_clip``: any open_clip architecture (``model``) with weights from a local ``checkpoint`` file or
  an open_clip ``pretrained`` tag found in the local hub cache (nothing is ever downloaded).
  Preprocessing is open_clip's eval transform for those weights, done on tensors: the canvas is
  cropped to its content box (the original image), then resized (shortest side, ``longest`` or
  ``squash`` as the weights' config says), centre-cropped, normalised, grey repeated to RGB. The
  geometry is open_clip's; the resized pixels agree with PIL's to within a grey level or two (see
  :func:`open_clip_preprocess`). OpenAI-derived weights need a QuickGELU architecture: a GELU one is
  refused for a file that carries OpenAI's ``input_resolution``/``context_length``/``vocab_size``
  entries, for a ``pretrained`` tag open_clip marks QuickGELU, and for a bare ``checkpoint`` on a
  built-in architecture that has OpenAI weights (``ViT-B-32``, ``RN50``, ...), whose file cannot be told
  apart from OpenAI's.
* ``cxr_repair``: CXR-RePaiR's ``clip-imp-pretrained_128_6_after_4.pt`` (Endo et al. 2021).
* ``chexzero``: a CheXzero ``best_*.pt`` (Tiu et al. 2022).

CXR-RePaiR and CheXzero are OpenAI CLIP ViT-B/32 fine-tuned on MIMIC-CXR impressions; both files are
plain ``torch.save(model.state_dict())`` of the OpenAI ``nn.Module`` (302 keys, Linear/Conv/attention
weights possibly fp16), loaded strictly into open_clip's ``ViT-B-32-quickgelu`` (OpenAI CLIP uses
QuickGELU; the GELU ``ViT-B-32`` config silently changes every embedding). Their preprocessing is the
same in both repos and is reproduced here: the image fitted to 320 px on its longest side and pasted
centred on a black 320 x 320 canvas (``int()`` sizes, ``//2`` offsets), then on the 0-255 scale
normalised with mean 101.48761 / std 83.43944 and resized to 224 with bicubic and *no* antialias
(their torchvision <= 0.11 had none on tensors). PIL's Lanczos (``Image.ANTIALIAS``) has no torch
equivalent, so when the cache side S is not 320 the content box is resized with antialiased bicubic;
at S = 320 no resampling happens at all. The only CheXzero difference is its decoder (cv2 to RGB, then
PIL luma on paste), which gives the same pixels for greyscale radiographs, so the preprocessing is
shared. Text: CLIP BPE, 77 tokens, truncated with EOT last (open_clip's tokenizer is identical to the
vendored ``clip.tokenize``/``train.preprocess_text`` of both repos). Both were trained on impressions.

Checkpoint reading and open_clip's eval transform are shared with ``biomedclip`` in :mod:`medret.models.openclip`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F

from medret.errors import MedretError
from medret.models.base import ModelAdapter
from medret.models.checkpoints import error_line, file_sha256
from medret.models.openclip import (
    load_strict,
    open_clip_preprocess,
    open_clip_resize_rule,
    quiet_open_clip,
    read_state_dict,
)

OPENAI_VITB32_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
)
CXR_REPAIR_URL = "https://stanfordmedicine.box.com/s/dbebk0jr5651dj8x1cu6b6kqyuuvz3ml"
CHEXZERO_URL = "https://drive.google.com/drive/folders/1makFLiEMbSleYltaRxw81aBhEDMpVwno"
#: CXR-RePaiR / CheXzero image normalisation on the 0-255 scale (their ``cxr_stats`` sample).
CXR_MEAN, CXR_STD = 101.48761, 83.43944
CXR_CANVAS, CXR_INPUT = 320, 224


# --------------------------------------------------------------------------------------------
# open_clip models, hub cache


def resolve_architecture(name: str) -> str:
    """An architecture name; a path to an open_clip model-config JSON file is registered under its stem.

    The JSON form (``{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}``, open_clip's own
    format) lets users evaluate custom architectures, and the workflow tests run tiny ones.
    """
    import open_clip

    if not name.endswith(".json"):
        return name
    path = Path(name)
    if not path.is_file():
        raise MedretError(f"config key models.<name>.model: architecture file {path} not found")
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MedretError(f"config key models.<name>.model: {path} is not valid JSON ({exc})") from None
    open_clip.add_model_config(path)
    if open_clip.get_model_config(path.stem) is None:
        raise MedretError(
            f"config key models.<name>.model: {path} is not an open_clip model config (embed_dim, vision_cfg, text_cfg)"
        )
    return path.stem


def model_config(name: str) -> dict[str, Any]:
    """open_clip's built-in config of an architecture, or a MedretError listing what exists."""
    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")):
        raise MedretError(
            f"config key models.<name>.model: {name!r}: schemas are not supported (hf-hub needs the network); "
            "use a built-in open_clip architecture name with a checkpoint file"
        )
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise MedretError(
            f"config key models.<name>.model: {name!r} is not an open_clip architecture; "
            "see open_clip.list_models(), e.g. ViT-B-32-quickgelu"
        )
    text = cfg.get("text_cfg", {})
    if "hf_model_name" in text or "hf_tokenizer_name" in text:
        # Their text tower or tokenizer comes from the Hugging Face hub via transformers (network).
        raise MedretError(
            f"config key models.<name>.model: {name!r} has a Hugging Face text tower or tokenizer, which this "
            "family does not load (offline, no transformers); use an architecture with a CLIP text transformer"
        )
    return cfg


def create_open_clip(name: str) -> torch.nn.Module:
    """An open_clip architecture with random weights, in eval mode on the CPU."""
    import open_clip

    model_config(name)
    try:
        with quiet_open_clip():
            model = open_clip.create_model(name, pretrained=None, pretrained_text=False)
    except Exception as exc:  # e.g. HF text towers that need transformers or the network
        raise MedretError(
            f"config key models.<name>.model: cannot build {name!r} offline ({error_line(exc)})"
        ) from None
    return model.eval()


def pretrained_config(model: str, tag: str) -> dict[str, Any]:
    """open_clip's config of a pretrained tag (where it is published, preprocessing, QuickGELU)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise MedretError(
            f"config key models.<name>.pretrained: {tag!r} is not an open_clip tag of {model} (tags: {tags})"
        )
    return cfg


def _hub_files(cfg: Mapping[str, Any]) -> tuple[str, list[str]]:
    """HF repo of a tag and its candidate files, in open_clip's order (``download_pretrained``)."""
    repo, filename = os.path.split(cfg["hf_hub"])
    filename = filename or "open_clip_pytorch_model.bin"
    if filename == "open_clip_pytorch_model.bin":
        return repo, ["open_clip_model.safetensors", filename]
    if filename.endswith((".bin", ".pth")):
        return repo, [filename[:-4] + ".safetensors", filename]
    return repo, [filename]


def resolve_pretrained(model: str, tag: str) -> Path:
    """Local file of an open_clip pretrained tag, looked up in the hub caches only (never downloaded)."""
    cfg = pretrained_config(model, tag)
    where: list[str] = []
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, candidates = _hub_files(cfg)
        for candidate in candidates:
            found = try_to_load_from_cache(repo, candidate, revision=cfg.get("revision"))
            if isinstance(found, str):
                return Path(found)
        where.append(f"https://huggingface.co/{repo} ({' or '.join(candidates)})")
    if cfg.get("url"):
        # open_clip's download cache for URL weights (open_clip.pretrained.download_pretrained_from_url).
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if cached.is_file():
            return cached
        where.append(cfg["url"])
    raise MedretError(
        f"open_clip pretrained weights {model}/{tag} are not in the local cache (offline; nothing is downloaded); "
        f"they are published at {' and '.join(where) or 'no known location'}; download the file once and set "
        f"config key models.<name>.checkpoint to its path (keep pretrained: {tag} for its preprocessing)"
    )


# --------------------------------------------------------------------------------------------
# Preprocessing (on tensors, on the device)


def cxr_preprocess(images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """CXR-RePaiR / CheXzero preprocessing of uint8 canvases; returns (B, 3, 224, 224) float.

    Rebuilds their 320 x 320 black-padded image with their geometry, computed from each source's own size
    (``ratio = float(320) / max(w, h)``, sides ``int(side * ratio)``, offsets ``(320 - side) // 2``): at
    ``image_size: 320`` the cached box is that image already, byte for byte. Otherwise (another cache size, or
    a source smaller than the cache, kept at its own size there) the box is resized to it with Pillow's
    Lanczos (their ``Image.ANTIALIAS``), on the CPU: from the original pixels when the cache kept them, which
    is then their canvas exactly. Then their normalisation and a bicubic resize to 224 without antialias.
    """
    import numpy as np
    from PIL import Image

    from medret.imaging import resize_lanczos

    canvas = torch.zeros(len(images), 1, CXR_CANVAS, CXR_CANVAS, device=images.device)
    for i, ((top, left, h, w), (h0, w0)) in enumerate(zip(boxes.tolist(), sizes.tolist(), strict=True)):
        x = images[i, top : top + h, left : left + w]
        ratio = float(CXR_CANVAS) / max(h0, w0)
        nh, nw = int(h0 * ratio), int(w0 * ratio)
        if (nh, nw) != (h, w):
            pil = Image.fromarray(np.ascontiguousarray(x.cpu().numpy()), mode="L")
            resized = np.asarray(resize_lanczos(pil, nw, nh))
            x = torch.from_numpy(resized.copy()).to(images.device)
        t0, l0 = (CXR_CANVAS - nh) // 2, (CXR_CANVAS - nw) // 2
        canvas[i, 0, t0 : t0 + nh, l0 : l0 + nw] = x
    x = (canvas - CXR_MEAN) / CXR_STD
    x = F.interpolate(x, size=(CXR_INPUT, CXR_INPUT), mode="bicubic", align_corners=False, antialias=False)
    return x.expand(-1, 3, -1, -1)


# --------------------------------------------------------------------------------------------
# Adapters


def _quick_gelu_fix(arch: str, model: str) -> str:
    """How to get a QuickGELU version of ``arch`` (``model`` is the config value: a name or a JSON path)."""
    import open_clip

    if model.endswith(".json"):
        return f'set "quick_gelu": true in {model}'
    if f"{arch}-quickgelu" in open_clip.list_models():
        return f"use model {arch}-quickgelu"
    return "use an architecture whose config has quick_gelu: true"


def _quick_gelu_error(arch: str, model: str, source: str) -> NoReturn:
    raise MedretError(
        f"config key models.<name>.model: {source} were trained with QuickGELU but {arch} uses GELU, which "
        f"silently changes every embedding (open_clip#771); {_quick_gelu_fix(arch, model)}"
    )


def has_openai_weights(arch: str) -> bool:
    """True for a built-in architecture that open_clip also publishes OpenAI (QuickGELU) weights for."""
    import open_clip

    return "openai" in open_clip.list_pretrained_tags_by_model(arch)


class _ClipAdapter(ModelAdapter):
    """Shared part: an open_clip model, its tokenizer, and a tensor preprocessing function."""

    model: torch.nn.Module
    arch: str

    def _setup(
        self,
        model: torch.nn.Module,
        arch: str,
        preprocess: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        preprocess_spec: dict[str, Any],
        weights: str,
    ) -> None:
        import open_clip

        self.model = model.eval().to(self.device)
        self.arch = arch
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.preprocess = preprocess
        self._preprocess_spec = preprocess_spec
        self._weights = weights
        # A copy taken now: open_clip's registry is global and a later JSON of the same stem replaces it.
        self._architecture = json.loads(json.dumps(model_config(arch)))
        self._embed_dim = int(self._architecture["embed_dim"])

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def identity(self) -> dict[str, Any]:
        # The resolved architecture config, not just its name: editing a custom JSON (e.g. quick_gelu)
        # changes the embeddings under the same config value.
        return {"weights": self._weights, "architecture": self._architecture, "preprocess": self._preprocess_spec}

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (B, context_length) as the model's original tokenizer makes them."""
        return self.tokenizer(texts)

    def _encode_images(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self.preprocess(images, boxes, sizes))

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenize(texts).to(self.device))


class OpenClipAdapter(_ClipAdapter):
    """Adapter of the ``open_clip`` family."""

    family = "open_clip"

    def __init__(self, entry: Mapping[str, Any]) -> None:
        from open_clip import get_model_preprocess_cfg
        from open_clip.transform import merge_preprocess_dict

        super().__init__(entry)
        name = str(entry["model"])
        arch = resolve_architecture(name)
        quick_gelu = bool(model_config(arch).get("quick_gelu", False))
        tag = None if entry.get("pretrained") is None else str(entry["pretrained"])
        tag_cfg = pretrained_config(arch, tag) if tag is not None else {}
        if tag_cfg.get("quick_gelu") and not quick_gelu:
            _quick_gelu_error(arch, name, f"pretrained tag {tag}")
        if tag is None and not quick_gelu and not name.endswith(".json") and has_openai_weights(arch):
            # A bare file for ViT-B-32 etc. may well be OpenAI's (e.g. open_clip's safetensors mirror, which
            # carries no marker); GELU weights are accepted with their tag, which says what they are.
            raise MedretError(
                f"config key models.<name>.model: {arch} uses GELU, and a checkpoint without a pretrained tag "
                f"cannot be told apart from OpenAI's QuickGELU weights (open_clip#771: wrong embeddings); "
                f"{_quick_gelu_fix(arch, name)} for OpenAI-derived weights, or set models.<name>.pretrained to the "
                "open_clip tag of GELU-trained weights"
            )
        if "checkpoint" in entry:
            path = Path(entry["checkpoint"])
        elif tag is not None:
            path = resolve_pretrained(arch, tag)
        else:
            raise MedretError(f"config key models.<name>: family open_clip needs checkpoint or pretrained ({arch})")
        where = (
            f"{tag_cfg.get('url') or tag_cfg.get('hf_hub')} (open_clip tag {tag})"
            if tag_cfg
            else "its publisher (open_clip.list_pretrained() lists open_clip's)"
        )
        state, openai = read_state_dict(
            path, missing_hint=f"download it from {where} and set config key models.<name>.checkpoint to its path"
        )
        if openai and not quick_gelu:
            source = f"the weights in {path.name} (OpenAI's: it has their input_resolution/context_length/vocab_size)"
            _quick_gelu_error(arch, name, source)
        model = create_open_clip(arch)
        load_strict(model, state, path, f"open_clip {arch}")
        del state
        # The architecture's defaults, overridden by a tag's own mean/std/interpolation/resize mode.
        pp = merge_preprocess_dict(get_model_preprocess_cfg(model), tag_cfg)
        pp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()}
        spec = {"crop": "content box", **pp}
        self.resize_rule = open_clip_resize_rule(pp)
        self._setup(model, arch, lambda im, bx, _sizes: open_clip_preprocess(im, bx, pp), spec, file_sha256(path))


class _OpenAIViTB32Adapter(_ClipAdapter):
    """OpenAI ViT-B/32 fine-tunes with CXR-RePaiR's preprocessing (``cxr_repair``, ``chexzero``)."""

    arch = "ViT-B-32-quickgelu"
    title = ""
    download = ""

    def __init__(self, entry: Mapping[str, Any]) -> None:
        super().__init__(entry)
        path = Path(entry["checkpoint"])
        state, _ = read_state_dict(
            path, missing_hint=f"download {self.download} and set config key models.<name>.checkpoint to its path"
        )
        model = create_open_clip(self.arch)
        load_strict(model, state, path, f"{self.title} ({self.arch})")
        del state
        spec = {
            "canvas": CXR_CANVAS,
            "canvas_resize": "PIL Lanczos from the source size",
            "mean": CXR_MEAN,
            "std": CXR_STD,
            "size": CXR_INPUT,
            "resize": "bicubic-noaa",
        }
        self._setup(model, self.arch, cxr_preprocess, spec, file_sha256(path))


class CxrRepairAdapter(_OpenAIViTB32Adapter):
    """Adapter of the ``cxr_repair`` family."""

    family = "cxr_repair"
    title = "CXR-RePaiR"
    download = f"clip-imp-pretrained_128_6_after_4.pt from {CXR_REPAIR_URL} (github.com/rajpurkarlab/CXR-RePaiR)"


class CheXzeroAdapter(_OpenAIViTB32Adapter):
    """Adapter of the ``chexzero`` family."""

    family = "chexzero"
    title = "CheXzero"
    download = (
        f"a best_*.pt file (e.g. best_64_5e-05_original_22000_0.864.pt) from {CHEXZERO_URL} "
        "(github.com/rajpurkarlab/CheXzero)"
    )
