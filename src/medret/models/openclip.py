"""What the families built on open_clip share (``open_clip``, ``cxr_repair``, ``chexzero``, ``biomedclip``).

Checkpoint reading: ``.safetensors`` with safetensors; other files with ``torch.load(weights_only=True)``.
OpenAI's TorchScript ``.pt`` (a zip with ``code/`` and ``constants.pkl``) is never given to ``torch.jit.load``,
which would run the archive's code: its ``data.pkl`` is replayed by torch's weights-only unpickler, in which the
archive's ``__torch__.*`` module classes are inert attribute holders, any other non-tensor global is refused, and
tensor bytes are read from the zip's ``data/`` records; which attributes are parameters or buffers is read from the
``__parameters__``/``__buffers__`` lists of the class definitions in ``code/`` with ``ast.parse`` (parsed, never
executed). A state dict is unwrapped from ``{"state_dict": ...}``, a ``module.`` prefix is stripped, the OpenAI
non-weight keys ``input_resolution``, ``context_length``, ``vocab_size`` are dropped (their presence is kept as the
mark of OpenAI's QuickGELU weights), and then every key must match the architecture exactly (names and shapes).

Preprocessing: open_clip's eval transform on the cached tensors (:func:`open_clip_preprocess`).
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import pickle
import pickletools
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import _weights_only_unpickler

from medret.errors import MedretError
from medret.models.checkpoints import describe_checkpoint, describe_file, error_line, key_problems
from medret.models.geometry import ResizeRule

#: Keys of OpenAI's TorchScript state dict that are not weights (deleted by OpenAI's and open_clip's loaders).
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")
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
# Building models and preprocessing


@contextlib.contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Silence the root logger's warnings while an open_clip model is built (its weights are loaded next)."""
    # create_model(pretrained=None) warns "initialized randomly" on the root logger; we load weights next.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


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
