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

Checkpoint reading, for every family: ``.safetensors`` with safetensors; other files with
``torch.load(weights_only=True)``. OpenAI's TorchScript ``.pt`` (a zip with ``code/`` and
``constants.pkl``) is never given to ``torch.jit.load``, which would run the archive's code: its
``data.pkl`` is replayed by torch's weights-only unpickler, in which the archive's ``__torch__.*``
module classes are inert attribute holders, any other non-tensor global is refused, and tensor bytes
are read from the zip's ``data/`` records; which attributes are parameters or buffers is read from the
``__parameters__``/``__buffers__`` lists of the class definitions in ``code/`` with ``ast.parse``
(parsed, never executed). A state dict is unwrapped from ``{"state_dict": ...}``, a ``module.`` prefix
is stripped, the OpenAI non-weight keys ``input_resolution``, ``context_length``, ``vocab_size`` are
dropped (their presence is kept as the mark of OpenAI's QuickGELU weights), and then every key must match
the architecture exactly (names and shapes).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import math
import os
import pickle
import pickletools
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
import torch.nn.functional as F
from torch import _weights_only_unpickler

from medret.errors import MedretError
from medret.models.base import ModelAdapter, ResizeRule
from medret.models.checkpoints import describe_file, error_line, file_sha256, key_problems

#: Keys of OpenAI's TorchScript state dict that are not weights (deleted by OpenAI's and open_clip's loaders).
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")
OPENAI_VITB32_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
)
CXR_REPAIR_URL = "https://stanfordmedicine.box.com/s/dbebk0jr5651dj8x1cu6b6kqyuuvz3ml"
CHEXZERO_URL = "https://drive.google.com/drive/folders/1makFLiEMbSleYltaRxw81aBhEDMpVwno"
#: CXR-RePaiR / CheXzero image normalisation on the 0-255 scale (their ``cxr_stats`` sample).
CXR_MEAN, CXR_STD = 101.48761, 83.43944
CXR_CANVAS, CXR_INPUT = 320, 224
# The converted file keeps OpenAI's int entries (input_resolution, ...): they mark it as OpenAI's, whose
# weights need a QuickGELU architecture (read_state_dict reports them, OpenClipAdapter enforces it).
_CONVERT_HINT = (
    "if you trust the file (OpenAI's ViT-B-32.pt has SHA-256 40d36571...), convert it once with "
    "python -c \"import torch; torch.save(torch.jit.load('IN.pt', map_location='cpu').state_dict(), 'OUT.pt')\" "
    "and point models.<name>.checkpoint at OUT.pt (or use the open_clip mirror "
    "huggingface.co/timm/vit_base_patch32_clip_224.openai, open_clip_model.safetensors)"
)


# --------------------------------------------------------------------------------------------
# Reading checkpoints


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a TorchScript zip (``torch.jit.save``): it has ``constants.pkl`` and a ``code/`` folder."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


class _ScriptObject:
    """Inert stand-in for a ``__torch__.*`` module class of a TorchScript archive (attributes only)."""

    torch_name = ""


def _script_classes(names: set[str]) -> dict[str, type]:
    return {name: type("ScriptObject", (_ScriptObject,), {"torch_name": name}) for name in names}


class _ArchiveUnpickler(_weights_only_unpickler.Unpickler):
    """torch's weights-only unpickler with storages read from the archive's ``data/`` records."""

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._zf, self._prefix = zf, prefix
        self._storages: dict[str, torch.storage.TypedStorage] = {}

    def persistent_load(self, pid: Any) -> torch.storage.TypedStorage:
        # The base class only lets ('storage', ...) ids through.
        _, storage_type, key, _location, numel = pid
        if key in self._storages:
            return self._storages[key]
        dtype = storage_type.dtype if hasattr(storage_type, "dtype") else torch.uint8
        raw = self._zf.read(f"{self._prefix}/data/{key}")
        if len(raw) != numel * torch.empty((), dtype=dtype).element_size():
            raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes for {numel} {dtype} elements")
        untyped = (
            torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage() if raw else torch.UntypedStorage()
        )
        storage = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        self._storages[key] = storage
        return storage


def _pickle_globals(data: bytes) -> set[str]:
    """``module.name`` of every GLOBAL opcode, found by disassembly (nothing is executed)."""
    return {str(arg).replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def _state_names(zf: zipfile.ZipFile, prefix: str, torch_name: str, cache: dict[str, ast.Module]) -> list[str]:
    """Parameter and buffer names of one TorchScript class, from its definition in ``code/`` (parsed only)."""
    module, _, cls = torch_name.rpartition(".")
    record = f"{prefix}/code/{module.replace('.', '/')}.py"
    if record not in cache:
        cache[record] = ast.parse(zf.read(record).decode("utf-8"))
    for node in cache[record].body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            names: list[str] = []
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id in ("__parameters__", "__buffers__") for t in stmt.targets
                ):
                    value = ast.literal_eval(stmt.value)
                    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
                        raise ValueError(f"{torch_name}: parameter/buffer list is not a list of names")
                    names.extend(value)
            return names
    raise KeyError(f"class {torch_name} not defined in {record}")


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Parameters and buffers of a TorchScript archive, read without running any of its code.

    Raises ``pickle.UnpicklingError`` when ``data.pkl`` references anything but tensors and the
    archive's own module classes, and ``MedretError`` when the archive layout is not understood.
    """
    with zipfile.ZipFile(path) as zf:
        data_pkl = next((n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")), None)
        if data_pkl is None:
            raise MedretError(f"{path}: TorchScript archive without data.pkl; {_CONVERT_HINT}")
        prefix = data_pkl.split("/")[0]
        if f"{prefix}/byteorder" in zf.namelist() and zf.read(f"{prefix}/byteorder").strip() != b"little":
            raise MedretError(f"{path}: big-endian TorchScript archive; {_CONVERT_HINT}")
        data = zf.read(data_pkl)
        classes = _script_classes({g for g in _pickle_globals(data) if g.startswith("__torch__.")})
        # Allow-list the archive's classes (inert stubs) for this load only; every other global
        # still goes through the weights-only allow-list (tensors, storages, OrderedDict).
        allowed: list[Any] = [(cls, name) for name, cls in classes.items()]
        try:
            with torch.serialization.safe_globals(allowed):
                root = _ArchiveUnpickler(data, zf, prefix).load()
        except pickle.UnpicklingError:
            raise
        except Exception as exc:  # e.g. a stand-in class called with arguments: the pickle is not plain data
            raise pickle.UnpicklingError(f"{type(exc).__name__}: {exc}") from None
        if not isinstance(root, _ScriptObject):
            raise MedretError(f"{path}: TorchScript data.pkl does not hold a module; {_CONVERT_HINT}")
        out: dict[str, torch.Tensor] = {}
        code: dict[str, ast.Module] = {}
        seen: set[int] = set()
        stack: list[tuple[str, _ScriptObject]] = [("", root)]
        while stack:
            key_prefix, obj = stack.pop()
            if id(obj) in seen:  # a crafted pickle can make cycles
                continue
            seen.add(id(obj))
            try:
                names = _state_names(zf, prefix, obj.torch_name, code)
            except (KeyError, SyntaxError, ValueError, UnicodeDecodeError) as exc:
                raise MedretError(
                    f"{path}: cannot read the TorchScript class layout ({exc}); {_CONVERT_HINT}"
                ) from None
            attrs = vars(obj)
            out.update({key_prefix + n: attrs[n] for n in names if isinstance(attrs.get(n), torch.Tensor)})
            children = [(key_prefix + n + ".", v) for n, v in attrs.items() if isinstance(v, _ScriptObject)]
            stack.extend(reversed(children))
    return out


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(k, str) for k in obj)


def describe_checkpoint(obj: Any) -> str:
    """A best guess of which model family a loaded checkpoint object belongs to (for error messages)."""
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}, not a state dict"
    if str(obj.get("format", "")).startswith("medret.local"):
        return "a medret local-family checkpoint (use family: local)"
    if {"model", "optimizer", "config"} <= set(obj):
        return "a training checkpoint with model/optimizer/config entries (CXR-CLIP .tar layout; not supported here)"
    keys = [k for k in obj if isinstance(k, str)]

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    conv, pos = obj.get("visual.conv1.weight"), obj.get("visual.positional_embedding")
    if isinstance(conv, torch.Tensor) and isinstance(pos, torch.Tensor) and "token_embedding.weight" in obj:
        patch, width = conv.shape[-1], conv.shape[0]
        side = patch * math.isqrt(max(pos.shape[0] - 1, 0))
        layers = len({k.split(".")[3] for k in keys if k.startswith("visual.transformer.resblocks.")})
        proj = obj.get("visual.proj")
        embed = proj.shape[-1] if isinstance(proj, torch.Tensor) else "?"
        what = f"an OpenAI-layout CLIP ViT (width {width}, {layers} layers, patch {patch}, {side} px, embed {embed})"
        if (width, layers, patch, side, embed) == (768, 12, 32, 224, 512):
            what += ", i.e. ViT-B/32 as in OpenAI CLIP, CXR-RePaiR and CheXzero (open_clip ViT-B-32-quickgelu)"
        return what
    if has("visual.layer1.") and "token_embedding.weight" in obj:
        return "an OpenAI-layout CLIP with a ResNet image tower (open_clip RN50-quickgelu family)"
    if has("visual.trunk."):
        return "an open_clip model with a timm image tower (e.g. BiomedCLIP)"
    if has("text.transformer."):
        return "an open_clip CustomTextCLIP with a Hugging Face text tower"
    if has("vision_model.model.") and has("text_model.model."):
        return "a MedCLIP state dict"
    if has("vision_model.") and "visual_projection.weight" in obj:
        return "a Hugging Face transformers CLIPModel (use the open_clip/OpenAI-layout weights instead)"
    if has("image_encoder.") and has("text_encoder."):
        return "a CXR-CLIP model state dict"
    if has("encoder.encoder.") and has("projector."):
        return "a BioViL image model"
    if has("img_encoder_q."):
        return "an MGCA checkpoint"
    if has("gloria."):
        return "a GLoRIA checkpoint"
    if has("image.features.") and has("text.bag."):
        return "a medret local-family state dict (use family: local)"
    return f"no layout medret knows (first keys: {', '.join(keys[:3])})"


def read_state_dict(path: str | Path, *, missing_hint: str) -> tuple[dict[str, torch.Tensor], bool]:
    """Read a checkpoint file into a flat state dict without running code from it.

    ``missing_hint`` completes the message when the file does not exist (where it is published, which
    config key to set). Returns the state dict and whether it came from OpenAI's own serialisation
    (it carried the non-weight keys of OpenAI's TorchScript model, whose weights use QuickGELU): the
    TorchScript file itself, or a state dict converted from it as the conversion hint says.
    """
    path = Path(path)
    if not path.is_file():
        raise MedretError(f"{path}: checkpoint not found; {missing_hint}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        elif is_torchscript_archive(path):
            obj = read_torchscript_state_dict(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except MedretError:
        raise
    except Exception as exc:  # truncated, foreign or code-carrying files raise many types
        hint = f"the file is {describe_file(path)}"
        if isinstance(exc, pickle.UnpicklingError) or "Unsupported global" in str(exc):
            hint = "the weights-only reader refused it (it holds more than tensors); nothing in it was run"
        raise MedretError(f"{path}: cannot read checkpoint ({error_line(exc)}); {hint}") from None
    if isinstance(obj, Mapping) and str(obj.get("format", "")).startswith("medret."):
        raise MedretError(f"{path}: not a CLIP checkpoint; the file looks like {describe_checkpoint(obj)}")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not _is_state_dict(obj) or not all(
        isinstance(v, torch.Tensor) for k, v in obj.items() if k not in NON_WEIGHT_KEYS
    ):
        raise MedretError(f"{path}: not a state dict of tensors; the file looks like {describe_checkpoint(obj)}")
    state = {k: v for k, v in obj.items() if k not in NON_WEIGHT_KEYS}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, any(k in obj for k in NON_WEIGHT_KEYS)


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, arch: str) -> None:
    """Load ``state`` into ``model`` only if names and shapes match exactly; else say what the file is."""
    problems = key_problems(model.state_dict(), state)
    if problems:
        raise MedretError(
            f"{path}: does not load strictly into {arch}: {'; '.join(problems)}; "
            f"the file looks like {describe_checkpoint(state)}"
        )
    model.load_state_dict(state, strict=True)  # copies and casts (fp16 entries become fp32)


# --------------------------------------------------------------------------------------------
# open_clip models, hub cache


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    # create_model(pretrained=None) warns "initialized randomly" on the root logger; we load weights next.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


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
        with _quiet_open_clip():
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


#: open_clip ``resize_mode`` -> :class:`ResizeRule` fit.
_RESIZE_FITS: dict[str, Literal["shorter", "longer", "squash"]] = {
    "shortest": "shorter",
    "longest": "longer",
    "squash": "squash",
}


def _size2(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def open_clip_resize_rule(cfg: Mapping[str, Any]) -> ResizeRule:
    """The geometry of :func:`open_clip_preprocess`'s resize under a preprocess config (for upsampling checks)."""
    return ResizeRule(_RESIZE_FITS[cfg.get("resize_mode", "shortest")], _size2(cfg["size"]))


def open_clip_preprocess(images: torch.Tensor, boxes: torch.Tensor, cfg: Mapping[str, Any]) -> torch.Tensor:
    """open_clip's eval transform on the content boxes of uint8 canvases; returns (B, 3, H, W) float.

    The geometry of ``open_clip.transform.image_transform(is_train=False)`` on a greyscale PIL image
    (output sizes, crop offsets); resizing stays in uint8 (as PIL's does, which rounds and clips bicubic
    overshoot) with antialias (PIL always filters when downsampling); grey becomes RGB only after
    resizing, as ``convert('RGB')`` does. The pixels are not PIL's bit for bit (torch's float kernels vs
    PIL's fixed point): measured on radiograph-like images at 256 and 512 px caches, at most 2 grey
    levels apart (4 values in a million), 1 level on 0.2-0.5% of values with bicubic and up to 12% with
    bilinear upsampling, 0 elsewhere.
    """
    from open_clip.transform import center_crop_or_pad
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    th, tw = _size2(cfg["size"])
    mode = cfg.get("resize_mode", "shortest")
    interp = InterpolationMode.BILINEAR if cfg.get("interpolation") == "bilinear" else InterpolationMode.BICUBIC
    out = []
    for image, (top, left, h, w) in zip(images, boxes.tolist(), strict=True):
        x = image[top : top + h, left : left + w].unsqueeze(0)
        if mode == "squash":
            x = TF.resize(x, [th, tw], interpolation=interp, antialias=True)
        elif mode == "longest":  # ResizeKeepRatio(longest=1) then CenterCropOrPad
            ratio = max(h / th, w / tw)
            x = TF.resize(x, [round(h / ratio), round(w / ratio)], interpolation=interp, antialias=True)
            x = center_crop_or_pad(x, [th, tw], fill=int(cfg.get("fill_color", 0)))
        else:
            if th == tw:  # torchvision Resize(int): shortest side, long side truncated
                x = TF.resize(x, [th], interpolation=interp, antialias=True)
            else:  # ResizeKeepRatio(size) with its default bicubic, as open_clip builds it
                ratio = min(h / th, w / tw)
                size = [round(h / ratio), round(w / ratio)]
                x = TF.resize(x, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
            x = TF.center_crop(x, [th, tw])
        out.append(x)
    batch = torch.stack(out).float().div_(255.0).expand(-1, 3, -1, -1)
    mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    return (batch - mean) / std


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
