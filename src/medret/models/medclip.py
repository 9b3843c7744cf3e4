"""Family ``medclip``: MedCLIP (Wang et al., EMNLP 2022, github.com/RyanWangZf/MedCLIP), re-implemented.

The ``medclip`` pip package cannot be used: it fails to import on transformers 5 and downloads
weights at construction. This module rebuilds MedCLIP's module tree (``medclip/modeling_medclip.py``
at 9c3396f) from transformers/torchvision classes without any pretrained weights (nothing is ever
downloaded), then loads a released checkpoint into it strictly.

Options (``models.<name>``):

* ``variant`` (required): ``vit`` (``MedCLIPVisionModelViT``: a Hugging Face ``SwinModel`` built
  with swin-tiny-patch4-window7-224's config; its ``pooler_output``, the mean of the 49 final
  tokens after the last LayerNorm, goes through ``Linear(768, 512, bias=False)``) or ``resnet``
  (``MedCLIPVisionModel``: torchvision ResNet-50 whose ``fc`` is ``Linear(2048, 512, bias=False)``).
  A grey input is repeated to 3 channels in the tower, as in the original.
* ``checkpoint`` (required): the released ``pytorch_model.bin``, extracted from
  https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip (vit) or
  https://storage.googleapis.com/pytrial/medclip-pretrained.zip (resnet). These URLs are listed in
  the repo's ``medclip/medclip_{vit,resnet}_weight.txt``.
* ``text_model`` (required): a directory holding Bio_ClinicalBERT's ``vocab.txt``. A
  ``config.json`` there is optional and is only checked. Get both from
  https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT; no pip package ships this vocabulary.
  The text tower's architecture is fixed by MedCLIP and its weights are in the checkpoint.
* ``max_length`` (default 77, MedCLIP's ``model_max_length``): tokens per report, including
  ``[CLS]`` and ``[SEP]``.

Checkpoint: a plain state dict saved with transformers 4.24. It has 434 keys (vit) or 521 keys
(resnet) under ``vision_model.``, ``text_model.`` and ``logit_scale``. It is read with
``torch.load(weights_only=True)``, so a pickle that references anything but tensors is refused
without being run. It is converted to the transformers 5 layout, and every key must then match
the module tree by name and shape; otherwise a ``MedretError`` lists the offending keys. The
conversion:

* drops the buffers that are no longer persistent (``text_model.model.embeddings.position_ids``
  and the Swin blocks' ``relative_position_index``), after checking that they equal what the
  architecture computes;
* renames keys under the Swin encoder only: ``attention.self.{query,key,value}`` to
  ``attention.{q,k,v}_proj``, ``attention.self.relative_position_bias_table`` to
  ``attention.relative_position_bias.relative_position_bias_table``, ``attention.output.dense``
  to ``attention.o_proj``, ``intermediate.dense`` to ``mlp.fc1`` and ``output.dense`` to
  ``mlp.fc2``. BERT keeps its ``output.dense``.

A file already in the transformers 5 layout passes through unchanged.

Image preprocessing, done on tensors. MedCLIP pads the image to a black square (``'L'``), resizes
it to 224 with PIL bicubic, divides by 255 and normalises with mean 0.5862785803043838 and std
0.27950088968644304, giving one channel. In cache space the padded square *is* the canvas, so only
the resize is left to do. It is PIL's 8-bit bicubic resampler rebuilt from torch's antialiased
bicubic: the same kernel (a = -0.5, support widened when shrinking), and two separable passes,
each rounded and clipped to 0-255 as PIL stores them (see :func:`preprocess_images`). At cache
size 224 nothing is resampled. Difference from PIL: one grey level at a few pixels per image
(PIL computes in fixed point; see tests/models/test_medclip.py). MedCLIP's square has side
``max(224, w, h)``, so it pads an image smaller than 224 px instead of enlarging it: the cache keeps
such a source at its own size and :func:`square_canvases` builds that square from it. A shrunk
source's square is the cache canvas. A cache ``image_size`` of at least 224 avoids enlarging a
shrunk canvas.

Text: Bio_ClinicalBERT WordPiece with ``do_lower_case=True``. The HF repo has no tokenizer config,
so the ``AutoTokenizer`` MedCLIP used lowercases and strips accents. Reports are truncated to
``max_length``. The tower runs ``BertModel`` with the attention mask and averages the hidden
states of layers 1, 2 and 12 over *all* token positions, padding included, then applies
``Linear(768, 512, bias=False)``.

Because padding is averaged in, an embedding depends on how much the text is padded. MedCLIP
padded to the longest text in the batch. Here every report is padded to ``max_length``, for
three reasons:

* an embedding then depends on the text alone, never on batch size or batch composition, which
  is what the provenance spec assumes (it leaves out ``batch_size``);
* it equals the unpadded embedding for every report that fills the context (most full reports);
* 77 is the longest padding MedCLIP's training collator could produce.

Padding to the batch's longest text would give each text many different embeddings.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from medret.errors import MedretError
from medret.models import list_families
from medret.models.base import ModelAdapter
from medret.models.bert import TokenBatch, WordPiece
from medret.models.checkpoints import (
    describe_checkpoint,
    describe_file,
    error_line,
    file_sha256,
    key_problems,
    skip_random_init,
)

FAMILY = "medclip"
VARIANTS = {"vit": "Swin-T", "resnet": "ResNet-50"}
WEIGHTS_URLS = {
    "vit": "https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip",
    "resnet": "https://storage.googleapis.com/pytrial/medclip-pretrained.zip",
}
BIO_CLINICALBERT_URL = "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT"
#: MedCLIP's image normalisation (``medclip/constants.py``) and input side.
IMG_MEAN = 0.5862785803043838
IMG_STD = 0.27950088968644304
INPUT_SIZE = 224
#: Bio_ClinicalBERT (BERT-base, cased BioBERT vocabulary) and MedCLIP's joint embedding.
VOCAB_SIZE = 28996
EMBED_DIM = 512
DEFAULT_MAX_LENGTH: int = list_families()["medclip"].options["max_length"].default  # 77, declared
MAX_POSITIONS = 512
#: Hidden states averaged by MedCLIPTextModel: layers 1, 2 and the last (index 0 is the embeddings).
TEXT_LAYERS = (1, 2, -1)
PADDING: Literal["max_length"] = "max_length"

SWIN_PREFIX = "vision_model.model.encoder.layers."
POSITION_IDS = "text_model.model.embeddings.position_ids"
_SWIN_BLOCK = re.compile(r"^(vision_model\.model\.encoder\.layers\.\d+\.blocks\.\d+\.)(.+)$")
#: transformers 4.24 -> 5 Swin block renames (suffix prefixes; the first match applies, so the
#: ``attention.output.dense`` rule wins over ``output.dense``).
SWIN_RENAMES = (
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)
#: Swin's relative position index buffer: old (persistent) and new (non-persistent) name.
OLD_INDEX = "attention.self.relative_position_index"
NEW_INDEX = "attention.relative_position_bias.relative_position_index"


# --------------------------------------------------------------------------------------------
# Architecture


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise MedretError(
            "family medclip needs the transformers package; install transformers==5.23.0 (the tested version)"
        ) from None
    return transformers


def swin_config() -> Any:
    """``microsoft/swin-tiny-patch4-window7-224``'s architecture, spelled out (not taken from defaults)."""
    return _require_transformers().SwinConfig(
        image_size=224,
        patch_size=4,
        num_channels=3,
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        hidden_act="gelu",
        use_absolute_embeddings=False,
        layer_norm_eps=1e-5,
    )


def bert_config() -> Any:
    """Bio_ClinicalBERT's architecture (its ``config.json``: BERT-base, cased vocabulary of 28,996)."""
    return _require_transformers().BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )


class SwinVision(nn.Module):
    """``MedCLIPVisionModelViT``: Swin-T ``pooler_output`` -> ``Linear(768, 512, bias=False)``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _require_transformers().SwinModel(swin_config())
        self.projection_head = nn.Linear(768, EMBED_DIM, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] == 1:
            pixel_values = pixel_values.expand(-1, 3, -1, -1)
        return self.projection_head(self.model(pixel_values=pixel_values).pooler_output)


class ResNetVision(nn.Module):
    """``MedCLIPVisionModel``: torchvision ResNet-50 with ``fc = Linear(2048, 512, bias=False)``."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.model = resnet50(weights=None)
        self.model.fc = nn.Linear(2048, EMBED_DIM, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] == 1:
            pixel_values = pixel_values.expand(-1, 3, -1, -1)
        return self.model(pixel_values)


class TextTower(nn.Module):
    """``MedCLIPTextModel``: BERT hidden states of layers 1, 2, 12 averaged over all positions, then projected."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _require_transformers().BertModel(bert_config())
        self.projection_head = nn.Linear(768, EMBED_DIM, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        # As the original: stack(...).permute(1, 0, 2, 3).mean(2).mean(1); no mask, padding included.
        embed = torch.stack([hidden[i] for i in TEXT_LAYERS]).permute(1, 0, 2, 3).mean(2).mean(1)
        return self.projection_head(embed)


class MedCLIP(nn.Module):
    """``MedCLIPModel``'s module tree: ``vision_model``, ``text_model``, ``logit_scale``."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.vision_model = SwinVision() if variant == "vit" else ResNetVision()
        self.text_model = TextTower()
        # Learnt temperature (log 1/0.07 at init); not used for embeddings.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def build_medclip(variant: str) -> MedCLIP:
    """MedCLIP's module tree for ``variant`` with uninitialised weights, in eval mode on the CPU."""
    with skip_random_init():
        return MedCLIP(variant).eval()


# --------------------------------------------------------------------------------------------
# Checkpoint


def medclip_variant(keys: Sequence[str]) -> str | None:
    """The MedCLIP variant whose image tower these state-dict keys have, if any."""
    if any(k.startswith("vision_model.model.encoder.layers.") for k in keys):
        return "vit"
    if any(k.startswith("vision_model.model.layer1.") for k in keys):
        return "resnet"
    return None


def _missing_hint(variant: str) -> str:
    other = "resnet" if variant == "vit" else "vit"
    return (
        f"MedCLIP {VARIANTS[variant]} weights are published as {WEIGHTS_URLS[variant]} (listed in "
        f"github.com/RyanWangZf/MedCLIP medclip/medclip_{variant}_weight.txt; the {other} variant is "
        f"{WEIGHTS_URLS[other]}); download the zip, extract its pytorch_model.bin (or run `python -m medret "
        f"download medclip-{variant} --dest DIR`, which writes DIR/medclip-{variant}-pytorch_model.bin) and set "
        "config key models.<name>.checkpoint to that file"
    )


def _zip_members(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def read_checkpoint(path: str | Path, variant: str) -> dict[str, torch.Tensor]:
    """Read a MedCLIP ``pytorch_model.bin`` as a state dict without running code from it."""
    path = Path(path)
    if not path.is_file():
        raise MedretError(f"{path}: MedCLIP checkpoint not found; {_missing_hint(variant)}")
    is_zip = zipfile.is_zipfile(path)
    try:
        # mmap (zip-format files only) avoids a second in-memory copy of the ~0.5 GB of weights.
        obj: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:  # truncated, foreign or code-carrying files raise many types
        members = _zip_members(path) if is_zip else []
        if any(m.endswith("pytorch_model.bin") for m in members):
            raise MedretError(
                f"{path}: this is the release zip, not the checkpoint; extract its pytorch_model.bin and set "
                "config key models.<name>.checkpoint to that file"
            ) from None
        if isinstance(exc, pickle.UnpicklingError) or "GLOBAL" in str(exc) or "Unsupported" in str(exc):
            hint = "it references objects other than tensors, so it was refused without running it"
        else:
            hint = f"the file is {describe_file(path)} ({_missing_hint(variant)})"
        raise MedretError(f"{path}: cannot read checkpoint ({error_line(exc)}); {hint}") from None
    if not (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise MedretError(
            f"{path}: not a MedCLIP checkpoint (a plain state dict of tensors); the file looks like "
            f"{describe_checkpoint(obj)}"
        )
    return dict(obj)


def new_layout_key(key: str) -> str:
    """transformers-5 name of a MedCLIP checkpoint key (only Swin block keys change)."""
    match = _SWIN_BLOCK.match(key)
    if match:
        block, suffix = match.groups()
        for old, new in SWIN_RENAMES:
            if suffix.startswith(old):
                return block + new + suffix[len(old) :]
    return key


def old_layout_key(key: str) -> str:
    """transformers-4.24 name of a module key (the inverse of :func:`new_layout_key`; for messages)."""
    match = _SWIN_BLOCK.match(key)
    if match:
        block, suffix = match.groups()
        for old, new in SWIN_RENAMES:
            if suffix.startswith(new):
                return block + old + suffix[len(new) :]
    return key


def _is_dropped_buffer(key: str) -> bool:
    return key == POSITION_IDS or (key.startswith(SWIN_PREFIX) and key.endswith(".relative_position_index"))


def convert_state_dict(
    state: Mapping[str, torch.Tensor], path: str | Path = "checkpoint"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """Convert a transformers-4.24 MedCLIP state dict to the transformers-5 module layout.

    Returns the converted state dict, the dropped buffers (no longer persistent; checked later
    against the architecture) and a map from converted names back to the file's names.
    """
    out: dict[str, torch.Tensor] = {}
    dropped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        if _is_dropped_buffer(key):
            dropped[key] = value
            continue
        new = new_layout_key(key)
        if new in out:  # both layouts of one key in one file
            raise MedretError(f"{path}: holds both {origin[new]} and {key}, two names of one weight")
        out[new] = value
        origin[new] = key
    return out, dropped, origin


def _check_keys(
    model: nn.Module, state: Mapping[str, torch.Tensor], origin: Mapping[str, str], path: Path, variant: str
) -> None:
    old_file = any(".attention.self." in k for k in origin.values())
    problems = key_problems(
        model.state_dict(), state, file_name=origin.__getitem__, model_name=old_layout_key if old_file else str
    )
    if problems:
        names = list(origin.values())
        found = medclip_variant(names) if any(k.startswith("text_model.model.") for k in names) else None
        fix = f"; set config key models.<name>.variant to {found}" if found and found != variant else ""
        looks = describe_checkpoint(dict.fromkeys(names))
        raise MedretError(
            f"{path}: does not load strictly into MedCLIP variant {variant} ({VARIANTS[variant]}): "
            f"{'; '.join(problems)}; the file looks like {looks}{fix}"
        )


def _check_dropped(model: nn.Module, dropped: Mapping[str, torch.Tensor], path: Path) -> None:
    """The dropped buffers must equal what the architecture computes (else it is another architecture)."""
    buffers = dict(model.named_buffers())
    for key, value in dropped.items():
        name = key.replace(OLD_INDEX, NEW_INDEX)
        expected = buffers.get(name)
        if (
            expected is None
            or value.is_floating_point()
            or value.numel() != expected.numel()
            or not torch.equal(value.reshape(-1).to(expected.dtype), expected.reshape(-1))
        ):
            raise MedretError(
                f"{path}: buffer {key} differs from MedCLIP's (Swin window 7, 512 BERT positions); "
                "the file was not written by this architecture"
            )


def load_medclip(path: str | Path, variant: str) -> MedCLIP:
    """A MedCLIP model with the weights of checkpoint ``path``, loaded strictly, in eval mode on the CPU."""
    path = Path(path)
    state, dropped, origin = convert_state_dict(read_checkpoint(path, variant), path)
    model = build_medclip(variant)
    _check_keys(model, state, origin, path, variant)
    model.load_state_dict(state, strict=True)  # copies out of the memory-mapped file
    _check_dropped(model, dropped, path)
    return model


# --------------------------------------------------------------------------------------------
# Preprocessing and tokeniser


def _pil_round(x: torch.Tensor) -> torch.Tensor:
    # PIL's 8-bit resampler rounds half up (adds 0.5 in fixed point) and clips.
    return torch.floor(x + 0.5).clamp_(0, 255)


def preprocess_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, S) cache canvases (already black-padded squares) -> normalised (B, 1, 224, 224) float.

    The resize reproduces PIL's ``Image.resize(BICUBIC)`` on an ``'L'`` image: torch's antialiased
    bicubic uses PIL's kernel (a = -0.5, support widened when shrinking), and PIL's two separable
    passes (width, then height) each store uint8 results, so each pass here is rounded and clipped.
    Without that intermediate clipping, bicubic overshoot at hard edges changes pixels by up to 8
    grey levels.
    """
    x = images.unsqueeze(1).float()
    if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
        device = x.device
        if device.type not in ("cpu", "cuda"):  # the antialiased kernel is implemented on CPU and CUDA only
            x = x.cpu()
        with torch.autocast(x.device.type, enabled=False):  # float32: the rounding needs exact integers
            for size in ((x.shape[-2], INPUT_SIZE), (INPUT_SIZE, INPUT_SIZE)):
                x = _pil_round(F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True))
        x = x.to(device)
    return (x / 255.0 - IMG_MEAN) / IMG_STD


def square_canvases(
    images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor
) -> torch.Tensor | list[torch.Tensor]:
    """MedCLIP's black square around each image, in cache pixels: the canvas itself when that is it (one
    tensor, the usual case), else a list of squares, one per image.

    MedCLIP pastes the image centred on a square of side ``max(224, w, h)`` of its source. For a source the
    cache kept at its own size (box = source size) that square is built from the box; for a shrunk source
    it is the canvas, scaled as the cache scaled the source (side S when the source is at least 224 px).
    """
    s = images.shape[-1]
    sides = []
    for (top, left, h, w), (h0, w0) in zip(boxes.tolist(), sizes.tolist(), strict=True):
        native = (h, w) == (h0, w0)
        side = max(INPUT_SIZE, h, w) if native else round(max(INPUT_SIZE, h0, w0) * s / max(h0, w0))
        centred = (top, left) == ((s - h) // 2, (s - w) // 2)
        sides.append(None if side == s and centred else side)
    if all(side is None for side in sides):
        return images
    out = []
    for image, (top, left, h, w), side in zip(images, boxes.tolist(), sides, strict=True):
        if side is None:
            out.append(image)
            continue
        square = torch.zeros(side, side, dtype=image.dtype, device=image.device)
        t0, l0 = (side - h) // 2, (side - w) // 2
        square[t0 : t0 + h, l0 : l0 + w] = image[top : top + h, left : left + w]
        out.append(square)
    return out


def _vocab_file(text_model: str | Path) -> Path:
    path = Path(text_model)
    vocab = path if path.suffix == ".txt" else path / "vocab.txt"
    if not vocab.is_file():
        raise MedretError(
            f"config key models.<name>.text_model: {vocab} not found; MedCLIP needs Bio_ClinicalBERT's vocab.txt "
            f"(no pip package ships it): download vocab.txt (and config.json) from {BIO_CLINICALBERT_URL} "
            "into a directory (`python -m medret download bio-clinicalbert-vocab --dest DIR` writes "
            "DIR/Bio_ClinicalBERT/vocab.txt) and set models.<name>.text_model to that directory"
        )
    return vocab


def _check_bert_config(directory: Path) -> None:
    config = directory / "config.json"
    if not config.is_file():
        return
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedretError(f"config key models.<name>.text_model: unreadable {config} ({exc})") from None
    want = {"model_type": "bert", "vocab_size": VOCAB_SIZE, "hidden_size": 768, "num_hidden_layers": 12}
    wrong = {k: cfg.get(k) for k, v in want.items() if k in cfg and cfg[k] != v}
    if wrong:
        raise MedretError(
            f"config key models.<name>.text_model: {config} describes another model ({wrong}); MedCLIP's text "
            f"tower is Bio_ClinicalBERT ({BIO_CLINICALBERT_URL})"
        )


def medclip_tokenizer(text_model: str | Path, max_length: int = DEFAULT_MAX_LENGTH) -> WordPiece:
    """Bio_ClinicalBERT WordPiece as MedCLIP used it: lowercased, truncated and padded to ``max_length``."""
    vocab_path = _vocab_file(text_model)
    if Path(text_model).is_dir():
        _check_bert_config(Path(text_model))
    hint = f"MedCLIP's text tower needs Bio_ClinicalBERT's vocab.txt from {BIO_CLINICALBERT_URL}"
    tokenizer = WordPiece(vocab_path, max_length=int(max_length), padding=PADDING, hint=hint)
    vocab = tokenizer.vocab
    if len(vocab) != VOCAB_SIZE or tokenizer.vocab_size != VOCAB_SIZE or tokenizer.pad_id != 0:
        raise MedretError(
            f"config key models.<name>.text_model: {vocab_path} has {len(vocab)} entries with [PAD] = "
            f"{tokenizer.pad_id}, but MedCLIP's text tower needs Bio_ClinicalBERT's vocabulary of {VOCAB_SIZE} with "
            f"[PAD] = 0; get vocab.txt from {BIO_CLINICALBERT_URL}"
        )
    return tokenizer


# --------------------------------------------------------------------------------------------
# Adapter


def _variant(value: Any) -> str:
    if value not in VARIANTS:
        raise MedretError(
            f"config key models.<name>.variant: {value!r} is not a MedCLIP variant; use vit (Swin-T) or resnet "
            "(ResNet-50), matching the checkpoint"
        )
    return str(value)


def _max_length(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_POSITIONS:
        raise MedretError(
            f"config key models.<name>.max_length: {value!r}; use an integer in [2, {MAX_POSITIONS}] "
            f"(MedCLIP was trained with {DEFAULT_MAX_LENGTH})"
        )
    return value


class MedCLIPAdapter(ModelAdapter):
    """Adapter of the ``medclip`` family."""

    family = FAMILY

    def __init__(self, entry: Mapping[str, Any]) -> None:
        super().__init__(entry)
        self.variant = _variant(entry["variant"])
        self.max_length = _max_length(entry.get("max_length", DEFAULT_MAX_LENGTH))
        self.tokenizer = medclip_tokenizer(entry["text_model"], self.max_length)  # cheap checks first
        path = Path(entry["checkpoint"])
        self.model = load_medclip(path, self.variant).to(self.device)
        self._weights = file_sha256(path)
        self._vocab = self.tokenizer.vocab_sha256

    @property
    def embed_dim(self) -> int:
        return EMBED_DIM

    def identity(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "padding": PADDING,
            "weights": self._weights,
            "vocab": self._vocab,
            "preprocess": {
                "canvas": "pad square",
                "size": INPUT_SIZE,
                "resize": "pil-bicubic-2pass",
                "mean": IMG_MEAN,
                "std": IMG_STD,
            },
        }

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids and attention masks (B, max_length) as fed to the text tower."""
        return self.tokenizer(texts)

    def _encode_images(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        squares = square_canvases(images, boxes, sizes)
        if isinstance(squares, torch.Tensor):
            return self.model.vision_model(preprocess_images(squares))
        return self.model.vision_model(torch.cat([preprocess_images(sq[None]) for sq in squares]))

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        ids, mask, _ = self.tokenizer(texts)
        return self.model.text_model(ids.to(self.device), mask.to(self.device))
