"""Family ``transformers``: Hugging Face ``transformers`` dual encoders (CLIP, SigLIP) from a local directory.

The option ``checkpoint`` is a directory in the Hugging Face repository layout (a copy made with
``hf download REPO --local-dir DIR``, ``huggingface-cli download`` in older huggingface_hub, or a hub-cache
snapshot directory) holding:

* ``config.json`` whose ``model_type`` is one of :data:`SUPPORTED` (``clip``: ``CLIPModel``, e.g. PubMedCLIP;
  ``siglip``: ``SiglipModel``, e.g. MedSigLIP). A config that declares custom code (``auto_map``) is refused:
  the model is always built from transformers' own classes, never with ``trust_remote_code``;
* the weights: ``model.safetensors`` (preferred, as transformers prefers it) or ``pytorch_model.bin``, or
  their sharded ``*.index.json`` with every shard. ``.bin`` files are read by transformers with
  ``torch.load(weights_only=True)`` (``weights_only=True`` is passed explicitly), so a pickle holding more
  than tensors is refused and nothing in it runs. The load is strict: ``from_pretrained``'s loading report
  must list no missing, unexpected or shape-mismatched key (the only tolerated extra keys are the old
  persistent ``position_ids`` buffers, which transformers itself ignores because they are rebuilt);
* the tokenizer files (``tokenizer.json`` and/or ``vocab.json`` + ``merges.txt``, ``spiece.model``, ...
  with ``tokenizer_config.json``), loaded with ``AutoTokenizer`` from the directory only;
* ``preprocessor_config.json``: a ``CLIPImageProcessor`` or ``SiglipImageProcessor`` configuration (old
  ``feature_extractor_type`` files included), resolved by ``AutoImageProcessor`` so that defaults and legacy
  forms (``"size": 224``) mean what they mean to transformers.

Images: transformers' own image processor (the torchvision backend ``AutoImageProcessor`` returns) works
on the source image: grey -> RGB, resize (``size.shortest_edge``: the shorter side to that length, the
longer ``int(s * long / short)``, as ``get_resize_output_image_size``; ``size.height/width``: both sides,
aspect not kept) with the declared ``resample`` filter and antialias, centre crop (``crop_size``, with
transformers' offsets ``int((H - h) / 2)`` and zero padding when the crop is larger), then
``(x - mean / rescale_factor) / (std / rescale_factor)`` in float32. :class:`ImagePreprocess` does exactly
those operations with the same torchvision kernels on the content box of each cache canvas (the source
image when the cache kept it at its own size): uint8 resize per canvas, grey repeated to three channels
after resizing. On the CPU the pixels equal the processor's bit for bit, for every supported filter. The
PIL backend (``backend="pil"``: ``CLIPImageProcessorPil``, ``SiglipImageProcessorPil``) resamples with
Pillow instead: measured against it, at most 1 grey level with bilinear or downscaling bicubic, up to 6
with bicubic upscaling and 9 with Lanczos, and Pillow's nearest picks other pixels
(docs/models.md, family transformers). Lanczos is resized on the CPU (torchvision has no GPU kernel for it).

Text: the directory's tokenizer, truncated to the text tower's positions (``min(model_max_length,
max_position_embeddings)``; PubMedCLIP's tokenizer config has no ``model_max_length``). SigLIP pads every
report to that length (``padding="max_length"``, 64 for MedSigLIP), as it was trained: its text tower pools
the last position, so any other padding would make a report's embedding depend on its batch. CLIP pools at
the EOS token behind a causal mask, so padding to the longest report of the batch changes nothing. The
model gets what the tokenizer returns (``input_ids`` and ``attention_mask``), as ``get_text_features(
**tokenizer(...))`` does. Embeddings are ``get_image_features(...).pooler_output`` and
``get_text_features(...).pooler_output``, L2-normalised by the base class.

``identity()`` holds the SHA-256 of every file the model is built from (weights, ``config.json``,
tokenizer files, ``preprocessor_config.json``) with the resolved preprocessing and tokenising rules, so
provenance changes when any file changes, and not when the directory moves.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from medret.errors import MedretError
from medret.models.base import ModelAdapter, ResizeRule
from medret.models.checkpoints import describe_file, error_line, file_sha256

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: Weight files in transformers' order of preference; an index file names the shards of a sharded checkpoint.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Files a tokenizer may be read from (hashed into the identity when present).
TOKENIZER_FILES = (
    "tokenizer.json",
    TOKENIZER_CONFIG_FILE,
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
#: Of those, the ones that hold a vocabulary: at least one is needed (without, transformers may silently
#: build a tokenizer of special tokens only).
VOCAB_FILES = (
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


@dataclass(frozen=True)
class Architecture:
    """What medret needs to know about one supported ``model_type``."""

    model_class: str
    padding: Literal["longest", "max_length"]
    example: str


#: ``model_type`` -> how it is built and tokenised.
SUPPORTED: dict[str, Architecture] = {
    "clip": Architecture("CLIPModel", "longest", "flaviagiammarino/pubmed-clip-vit-base-patch32"),
    "siglip": Architecture("SiglipModel", "max_length", "google/medsiglip-448"),
}
#: Image processors whose pipeline (resize, centre crop, rescale, normalise) :class:`ImagePreprocess` reproduces.
IMAGE_PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor")
#: PIL ``resample`` codes -> torchvision interpolation names (transformers' ``pil_torch_interpolation_mapping``;
#: BOX (4) and HAMMING (5) have no tensor kernel).
RESAMPLE = {0: "nearest-exact", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_KEY = "config key models.<name>.checkpoint"
_LAYOUT = (
    "a local directory in the Hugging Face layout (config.json, model.safetensors or pytorch_model.bin, "
    "tokenizer files, preprocessor_config.json)"
)


def _fetch_hint(example: str = "REPO") -> str:
    return f"fetch the whole repository with `hf download {example} --local-dir DIR`"


# --------------------------------------------------------------------------------------------
# Files


def checkpoint_dir(value: Any) -> Path:
    """The checkpoint directory (it must exist and hold ``config.json``)."""
    path = Path(str(value))
    if not path.is_dir():
        what = "is a file, not a directory" if path.is_file() else "not found"
        raise MedretError(f"{_KEY}: {path} {what}; set it to {_LAYOUT}; {_fetch_hint()}")
    if not (path / CONFIG_FILE).is_file():
        raise MedretError(
            f"{_KEY}: {path} has no {CONFIG_FILE}, so it is not a Hugging Face model directory; set it to {_LAYOUT}"
        )
    return path


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a one-line error."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MedretError(f"{path}: not valid JSON ({error_line(exc)}); get the file again") from None
    if not isinstance(value, dict):
        raise MedretError(f"{path}: not a JSON object; get the file again")
    return value


def refuse_remote_code(path: Path, cfg: Mapping[str, Any]) -> None:
    """A config that declares custom code (``auto_map``) is refused: medret never runs a repository's code."""
    auto_map = cfg.get("auto_map")
    if auto_map:
        first = next(iter(auto_map.items())) if isinstance(auto_map, Mapping) else auto_map
        raise MedretError(
            f"{path}: declares custom code (auto_map {first}), which medret never runs (no trust_remote_code); "
            f"use a checkpoint of transformers' own {' or '.join(a.model_class for a in SUPPORTED.values())} "
            "without auto_map"
        )


def read_model_config(directory: Path) -> tuple[dict[str, Any], Architecture]:
    """``config.json`` as a dict, checked to be a supported model type without custom code."""
    path = directory / CONFIG_FILE
    cfg = read_json(path)
    refuse_remote_code(path, cfg)
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED:
        raise MedretError(
            f"{path}: model_type {model_type!r} is not supported by family transformers (supported: "
            f"{', '.join(SUPPORTED)}: {', '.join(a.model_class for a in SUPPORTED.values())}); "
            "use another family for other checkpoints (python -m medret families)"
        )
    if cfg.get("quantization_config"):
        raise MedretError(
            f"{path}: a quantized checkpoint (quantization_config), which family transformers does not load; "
            "use the repository's full-precision weights"
        )
    return cfg, SUPPORTED[model_type]


@dataclass(frozen=True)
class WeightFiles:
    """The weight files transformers will read: one file, or an index and its shards."""

    files: tuple[Path, ...]
    index: Path | None
    safetensors: bool

    @property
    def all(self) -> tuple[Path, ...]:
        return ((self.index,) if self.index else ()) + self.files


def weight_files(directory: Path, example: str) -> WeightFiles:
    """The weight files of ``directory`` in transformers' order of preference, every shard checked present."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        safetensors = name.startswith("model.safetensors")
        if not name.endswith(".index.json"):
            return WeightFiles((path,), None, safetensors)
        weight_map = read_json(path).get("weight_map")
        if not isinstance(weight_map, Mapping) or not weight_map:
            raise MedretError(f"{path}: no weight_map in this index of a sharded checkpoint; get the file again")
        shards = tuple(directory / s for s in dict.fromkeys(str(v) for v in weight_map.values()))
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise MedretError(
                f"{directory}: {len(missing)} of {len(shards)} shards named by {name} are missing (first: "
                f"{', '.join(missing[:4])}); download them into the same directory ({_fetch_hint(example)})"
            )
        return WeightFiles(shards, path, safetensors)
    others = sorted(p.name for p in directory.iterdir() if p.suffix in (".h5", ".msgpack", ".ckpt", ".pt", ".pth"))
    found = f" (it has {', '.join(others)}, which are not read)" if others else ""
    raise MedretError(
        f"{_KEY}: {directory} has no PyTorch weights: none of {', '.join(WEIGHT_FILES)}{found}; "
        f"download model.safetensors or pytorch_model.bin into it ({_fetch_hint(example)})"
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and warnings (load reports, config notes) off; its errors still raise."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _key_report(
    missing: Iterable[str], unexpected: Iterable[str], mismatched: Iterable[tuple[str, Sequence[int], Sequence[int]]]
) -> list[str]:
    """The loading report in :func:`medret.models.checkpoints.key_problems`' words (first four of each)."""
    shapes = [f"{k} {list(a)} vs {list(b)}" for k, a, b in sorted(mismatched, key=lambda m: m[0])]
    return [
        f"{len(items)} {label} (first: {', '.join(items[:4])})"
        for label, items in (
            ("missing", sorted(missing)),
            ("unexpected", sorted(unexpected)),
            ("shape mismatches", shapes),
        )
        if items
    ]


def _unreadable(weights: WeightFiles, exc: BaseException) -> MedretError:
    text = f"{exc} {exc.__cause__ or ''}"
    first = weights.files[0]
    if isinstance(exc, pickle.UnpicklingError) or "Unsupported global" in text or "Weights only load failed" in text:
        hint = "the weights-only reader refused it (it holds more than tensors); nothing in it was run"
    elif weights.safetensors:
        hint = "the file is not a complete safetensors file (an interrupted download?); download it again"
    else:
        hint = f"the file is {describe_file(first)}"
    where = first if len(weights.files) == 1 else weights.index
    reason = error_line(exc).split(". ")[0]
    return MedretError(f"{where}: cannot read the weights ({reason}); {hint}")


def build_config(directory: Path, cfg: Mapping[str, Any], arch: Architecture) -> Any:
    """transformers' ``CLIPConfig`` / ``SiglipConfig`` of ``config.json``."""
    import transformers

    try:
        with quiet_transformers():
            return getattr(transformers, arch.model_class).config_class.from_dict(dict(cfg))
    except Exception as exc:  # bad values in a config transformers cannot build
        raise MedretError(
            f"{directory / CONFIG_FILE}: malformed {arch.model_class} config ({error_line(exc)})"
        ) from None


def load_strict(directory: Path, config: Any, arch: Architecture, weights: WeightFiles) -> torch.nn.Module:
    """The model of ``config`` with every weight of the files and none missing, in eval mode on the CPU."""
    import transformers

    model_class = getattr(transformers, arch.model_class)
    try:
        with quiet_transformers():
            model, info = model_class.from_pretrained(
                str(directory),
                config=config,
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=weights.safetensors,
                weights_only=True,
                dtype=torch.float32,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below instead of raised with a multi-line table
            )
    except MedretError:
        raise
    except Exception as exc:
        raise _unreadable(weights, exc) from None
    problems = _key_report(info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"])
    if info.get("error_msgs"):
        problems.append(f"errors: {error_line(Exception(info['error_msgs'][0]))}")
    if problems:
        where = weights.files[0] if len(weights.files) == 1 else weights.index
        raise MedretError(
            f"{where}: does not load strictly into transformers {arch.model_class} of {directory / CONFIG_FILE} "
            f"({'; '.join(problems)}); the weights and config.json must come from the same repository"
        )
    return model.eval()


# --------------------------------------------------------------------------------------------
# Images


def _pair(size: Any, what: str) -> tuple[int, int]:
    h, w = size.get("height"), size.get("width")
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"{what} needs positive height and width")
    return h, w


@dataclass(frozen=True)
class ImagePreprocess:
    """transformers' CLIP/SigLIP image processing, reproduced on the content boxes of uint8 cache canvases.

    ``resize``: ``("shortest_edge", s, s)``, ``("squash", h, w)`` or None; ``crop``: (h, w) or None;
    ``rescale``: the factor or None; ``mean``/``std``: per channel or None.
    """

    processor: str
    resize: tuple[str, int, int] | None
    interpolation: str
    crop: tuple[int, int] | None
    rescale: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_processor(cls, proc: Any) -> ImagePreprocess:
        """The steps of a loaded CLIP/SigLIP image processor (its resolved attributes, defaults included)."""
        resize = None
        if proc.do_resize:
            size = proc.size
            if size.get("shortest_edge") and not any(
                size.get(k) for k in ("longest_edge", "height", "width", "max_height", "max_width")
            ):
                resize = ("shortest_edge", int(size["shortest_edge"]), int(size["shortest_edge"]))
            elif size.get("height") and size.get("width") and not size.get("shortest_edge"):
                resize = ("squash", *_pair(size, "size"))
            else:
                raise ValueError(f"size {dict(size)} is not shortest_edge alone or height and width")
        resample = int(proc.resample) if proc.resample is not None else 2  # transformers' fallback: bilinear
        if proc.do_resize and resample not in RESAMPLE:
            raise ValueError(f"resample {resample} has no tensor kernel (supported: {sorted(RESAMPLE)})")
        crop = _pair(proc.crop_size, "crop_size") if proc.do_center_crop else None
        if resize is not None and resize[0] == "shortest_edge" and crop is None:
            raise ValueError("shortest_edge resizing without do_center_crop gives images of varying size")
        if getattr(proc, "do_pad", None):
            raise ValueError("do_pad is not supported")
        mean = std = None
        if proc.do_normalize:
            mean, std = tuple(float(v) for v in proc.image_mean), tuple(float(v) for v in proc.image_std)
            if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                raise ValueError("image_mean/image_std are not three numbers (std > 0)")
        rescale = float(proc.rescale_factor) if proc.do_rescale else None
        name = type(proc).__name__.removesuffix("Pil").removesuffix("Fast")
        return cls(name, resize, RESAMPLE.get(resample, "bilinear"), crop, rescale, mean, std)

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of the model input, or None when it depends on the image (no resize, no crop)."""
        if self.crop is not None:
            return self.crop
        if self.resize is not None and self.resize[0] == "squash":
            return self.resize[1], self.resize[2]
        return None

    @property
    def resize_rule(self) -> ResizeRule | None:
        """``shortest_edge`` -> ``shorter``; ``height``/``width`` -> ``squash``."""
        if self.resize is None:
            return None
        return ResizeRule("shorter" if self.resize[0] == "shortest_edge" else "squash", self.resize[1:])

    def spec(self) -> dict[str, Any]:
        return {
            "crop_to": "content box",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
        }

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """The size transformers resizes an (h, w) image to (``get_resize_output_image_size``)."""
        assert self.resize is not None
        mode, th, tw = self.resize
        if mode == "squash":
            return th, tw
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(th * long / short)
        return (new_long, th) if w <= h else (th, new_long)

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(B, S, S) uint8 canvases and their content boxes -> (B, 3, H, W) float32 model input."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        interpolation = InterpolationMode(self.interpolation)
        out = []
        for image, (top, left, h, w) in zip(images, boxes.tolist(), strict=True):
            x = image[top : top + h, left : left + w].unsqueeze(0).contiguous()
            if self.resize is not None:
                size = list(self.resized_size(h, w))
                if interpolation == InterpolationMode.LANCZOS and x.device.type != "cpu":
                    x = TF.resize(x.cpu(), size, interpolation=interpolation, antialias=True).to(image.device)
                else:
                    x = TF.resize(x, size, interpolation=interpolation, antialias=True)
            if self.crop is not None:
                x = _center_crop(x, self.crop)
            out.append(x)
        batch = torch.stack(out).expand(-1, 3, -1, -1).float()
        if self.mean is not None and self.std is not None:
            # transformers fuses rescaling into normalisation: (x - mean / f) / (std / f), in float32.
            f = 1.0 if self.rescale is None else self.rescale
            mean = torch.tensor(self.mean, device=batch.device) * (1.0 / f)
            std = torch.tensor(self.std, device=batch.device) * (1.0 / f)
            return (batch - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        return batch * self.rescale if self.rescale is not None else batch


def _center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """transformers' ``TorchvisionBackend.center_crop``: zero-pads a larger crop, offsets ``int((H - h) / 2)``."""
    from torchvision.transforms.v2 import functional as TF

    ch, cw = size
    h, w = x.shape[-2:]
    if cw > w or ch > h:
        pad = [
            (cw - w) // 2 if cw > w else 0,
            (ch - h) // 2 if ch > h else 0,
            (cw - w + 1) // 2 if cw > w else 0,
            (ch - h + 1) // 2 if ch > h else 0,
        ]
        x = TF.pad(x, pad, fill=0)
        h, w = x.shape[-2:]
        if (h, w) == (ch, cw):
            return x
    return x[..., int((h - ch) / 2.0) : int((h - ch) / 2.0) + ch, int((w - cw) / 2.0) : int((w - cw) / 2.0) + cw]


def read_image_processor(directory: Path, example: str) -> ImagePreprocess:
    """The image processing of ``preprocessor_config.json``, resolved by ``AutoImageProcessor`` (no remote code)."""
    path = directory / PREPROCESSOR_FILE
    if not path.is_file():
        raise MedretError(
            f"{_KEY}: {directory} has no {PREPROCESSOR_FILE} (the image preprocessing is read from it); download "
            f"it from the same repository ({_fetch_hint(example)})"
        )
    refuse_remote_code(path, read_json(path))
    from transformers import AutoImageProcessor

    try:
        with quiet_transformers():
            proc = AutoImageProcessor.from_pretrained(
                str(directory), local_files_only=True, trust_remote_code=False, backend="torchvision"
            )
    except Exception as exc:
        raise MedretError(f"{path}: transformers cannot build its image processor ({error_line(exc)})") from None
    name = type(proc).__name__.removesuffix("Pil").removesuffix("Fast")
    if name not in IMAGE_PROCESSORS:
        raise MedretError(
            f"{path}: image processor {name} is not supported by family transformers (supported: "
            f"{', '.join(IMAGE_PROCESSORS)})"
        )
    try:
        return ImagePreprocess.from_processor(proc)
    except ValueError as exc:
        raise MedretError(f"{path}: {name} setting not supported ({exc})") from None


# --------------------------------------------------------------------------------------------
# Text


class Tokenizer:
    """The directory's own tokenizer with the model's padding rule, truncating to the text tower's positions."""

    def __init__(self, directory: Path, text_config: Any, arch: Architecture) -> None:
        present = [n for n in TOKENIZER_FILES if (directory / n).is_file()]
        if not any(n in VOCAB_FILES for n in present):
            raise MedretError(
                f"{_KEY}: {directory} has no tokenizer files (none of {', '.join(VOCAB_FILES)}); download the "
                f"repository's tokenizer files with {TOKENIZER_CONFIG_FILE} ({_fetch_hint(arch.example)})"
            )
        if "vocab.json" in present and "merges.txt" not in present and "tokenizer.json" not in present:
            # A BPE vocabulary without its merges loads silently and splits every word into characters.
            raise MedretError(
                f"{_KEY}: {directory} has vocab.json but not merges.txt (nor tokenizer.json); download merges.txt "
                f"from the same repository ({_fetch_hint(arch.example)})"
            )
        if TOKENIZER_CONFIG_FILE in present:
            refuse_remote_code(directory / TOKENIZER_CONFIG_FILE, read_json(directory / TOKENIZER_CONFIG_FILE))
        from transformers import AutoTokenizer

        try:
            with quiet_transformers():
                tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
        except ImportError as exc:  # e.g. SiglipTokenizer (spiece.model) needs sentencepiece and protobuf
            raise MedretError(
                f"{directory}: the tokenizer needs a package that is not installed ({error_line(exc)}); install it "
                "(for SigLIP's SentencePiece tokenizer: pip install sentencepiece protobuf)"
            ) from None
        except Exception as exc:
            raise MedretError(
                f"{directory}: cannot load the tokenizer ({error_line(exc)}); get the repository's tokenizer files "
                f"again ({', '.join(present)})"
            ) from None
        vocab = int(text_config.vocab_size)
        if len(tok) > vocab:
            raise MedretError(
                f"{directory}: the tokenizer has {len(tok)} tokens but the text tower only {vocab}: the tokenizer "
                "files belong to another model; use the same repository's files"
            )
        if tok.pad_token_id is None:
            raise MedretError(
                f"{directory}: the tokenizer defines no pad token, which batching needs; use the repository's files"
            )
        positions = int(text_config.max_position_embeddings)
        limit = int(tok.model_max_length) if tok.model_max_length and tok.model_max_length < 1_000_000 else positions
        self.tokenizer = tok
        self.max_length = min(limit, positions)
        self.padding = arch.padding
        self.files = present

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """What ``tokenizer(texts, padding=..., truncation=True, max_length=...)`` returns that the model takes."""
        enc = self.tokenizer(
            [str(t) for t in texts],
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}

    def spec(self) -> dict[str, Any]:
        return {"class": type(self.tokenizer).__name__, "max_length": self.max_length, "padding": self.padding}


# --------------------------------------------------------------------------------------------
# Adapter


def _features(out: Any) -> torch.Tensor:
    """transformers 5 returns a ``BaseModelOutputWithPooling`` whose ``pooler_output`` is the projected embedding."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class TransformersAdapter(ModelAdapter):
    """Adapter of the ``transformers`` family."""

    family = "transformers"

    def __init__(self, entry: Mapping[str, Any]) -> None:
        super().__init__(entry)
        directory = checkpoint_dir(entry["checkpoint"])
        cfg, arch = read_model_config(directory)
        weights = weight_files(directory, arch.example)
        config = build_config(directory, cfg, arch)
        # The cheap checks first: the weights (up to a few GB) are read last.
        self.preprocess = read_image_processor(directory, arch.example)
        self.tokenizer = Tokenizer(directory, config.text_config, arch)
        self._embed_dim = _embed_dim(config, arch, directory)
        side = int(config.vision_config.image_size)
        size = self.preprocess.output_size
        if size is None:
            raise MedretError(
                f"{directory / PREPROCESSOR_FILE}: {self.preprocess.processor} neither resizes to a fixed size nor "
                f"crops, so images would keep their own sizes; the vision tower takes {side}x{side}"
            )
        if size != (side, side):
            raise MedretError(
                f"{directory / PREPROCESSOR_FILE}: {self.preprocess.processor} makes {size[0]}x{size[1]} images but "
                f"the vision tower of {CONFIG_FILE} takes {side}x{side}; both files must come from the same repository"
            )
        self.resize_rule = self.preprocess.resize_rule
        self.model = load_strict(directory, config, arch, weights).to(self.device)
        self.model_type = str(cfg["model_type"])
        names = [*(p.name for p in weights.all), CONFIG_FILE, *self.tokenizer.files, PREPROCESSOR_FILE]
        self._spec = {
            "model_type": self.model_type,
            "model_class": arch.model_class,
            "files": {name: file_sha256(directory / name) for name in dict.fromkeys(names)},
            "preprocess": self.preprocess.spec(),
            "tokenizer": self.tokenizer.spec(),
        }

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def identity(self) -> dict[str, Any]:
        return self._spec

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The tokenizer's output for ``texts`` (``input_ids``, ``attention_mask``), as the model gets it."""
        return self.tokenizer(texts)

    def _encode_images(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=self.preprocess(images, boxes)))

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        inputs = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        return _features(self.model.get_text_features(**inputs))


def _embed_dim(config: Any, arch: Architecture, directory: Path) -> int:
    """The joint embedding size; text and image towers must agree (SigLIP has no shared projection_dim)."""
    if arch.model_class == "CLIPModel":
        return int(config.projection_dim)
    text, image = int(config.text_config.projection_size), int(config.vision_config.hidden_size)
    if text != image:
        raise MedretError(
            f"{directory / CONFIG_FILE}: text embeddings of size {text} (text_config.projection_size) cannot be "
            f"compared with image embeddings of size {image} (vision_config.hidden_size)"
        )
    return text
