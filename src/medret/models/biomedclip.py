"""Family ``biomedclip``: BiomedCLIP (Zhang et al. 2023), ``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``.

The option ``checkpoint`` is a local directory in the Hugging Face repo layout (a copy of the repo, or its
hub-cache snapshot directory) holding:

* ``open_clip_config.json``: ``{"model_cfg": {...}, "preprocess_cfg": {...}}``, open_clip's format. The
  published model is a ``CustomTextCLIP``: a timm ``vit_base_patch16_224`` image tower (CLS token after
  the final norm, Linear 768 -> 512) and a BiomedBERT text tower (CLS of the last hidden state, MLP
  768 -> 640 -> 512 with GELU, no biases), context 256;
* ``open_clip_pytorch_model.bin``: a plain state dict (351 keys; an old ``position_ids`` buffer that open_clip
  drops too is dropped), read with ``torch.load(weights_only=True)`` and loaded strictly;
* ``vocab.txt``: the BiomedBERT uncased WordPiece vocabulary (30,522 entries; the BiomedCLIP repo carries a
  copy, as does ``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract``), optionally with
  ``tokenizer_config.json`` (its ``do_lower_case``/``strip_accents``/``tokenize_chinese_chars`` are honoured)
  and a BERT ``config.json`` (when absent, BiomedBERT-base's: vocab 30522, hidden 768, 12 layers, 12 heads).

Nothing reaches the network. open_clip's HF text tower builds its BERT with
``AutoConfig.from_pretrained(text_cfg.hf_model_name)``; here ``hf_model_name`` is pointed at a temporary
directory holding only that BERT ``config.json`` (and ``hf_model_pretrained`` / ``timm_model_pretrained``
are forced off), so open_clip builds exactly its own module tree with random weights, then the
checkpoint is loaded strictly with :mod:`medret.models.openclip`'s helpers.

Tokeniser: what open_clip's ``HFTokenizer`` does for this model: open_clip's ``whitespace`` cleaning (ftfy,
HTML unescaping twice, whitespace collapsed), then BERT uncased WordPiece with ``[CLS] ... [SEP]``,
truncated and padded to the config's ``context_length`` (256) with ``[PAD]`` = 0; the text tower's attention
mask is ``ids != pad_token_id``. Images: open_clip's eval transform from the config's ``preprocess_cfg``
(size from the image tower, shortest-side bicubic resize, centre crop, OpenAI mean/std, grey -> RGB),
applied on tensors to each canvas's content box by ``medret.models.openclip.open_clip_preprocess``: the
same geometry, pixels within a grey level or two of PIL's (not bit-identical; see that function).
``identity()`` holds the content of ``open_clip_config.json`` (``model_cfg`` and the merged
``preprocess_cfg``), of the BERT config and of the vocabulary, so editing a file changes the spec hash.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from medret.errors import MedretError
from medret.models.base import ModelAdapter
from medret.models.bert import BERT_BASE, WordPiece
from medret.models.checkpoints import error_line, file_sha256
from medret.models.openclip import (
    load_strict,
    open_clip_preprocess,
    open_clip_resize_rule,
    quiet_open_clip,
    read_state_dict,
)

REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
REPO_URL = f"https://huggingface.co/{REPO}"
BIOMEDBERT_URL = "https://huggingface.co/microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
VOCAB_FILE = "vocab.txt"
#: Where each expected file is published (for error messages).
PUBLISHED = {
    CONFIG_FILE: f"{REPO_URL} (python -m medret download biomedclip-open-clip-config)",
    WEIGHTS_FILE: f"{REPO_URL} (python -m medret download biomedclip-open-clip-pytorch-model)",
    VOCAB_FILE: f"{REPO_URL} or {BIOMEDBERT_URL}",
}
#: BiomedBERT-base uncased, used when the directory has no BERT ``config.json``.
BIOMEDBERT_CONFIG: dict[str, Any] = {"model_type": "bert", "vocab_size": 30522, **BERT_BASE}
#: Old persistent buffer of transformers < 4.31; open_clip's ``load_checkpoint`` deletes it too.
POSITION_IDS_KEY = "text.transformer.embeddings.position_ids"
_KEY = "config key models.<name>.checkpoint"


def _published_hint() -> str:
    return (
        f"it needs {CONFIG_FILE} and {WEIGHTS_FILE} (from {REPO_URL}) and BiomedBERT's {VOCAB_FILE} "
        f"(from {REPO_URL} or {BIOMEDBERT_URL}) in one directory; set {_KEY} to that directory"
    )


def checkpoint_dir(value: Any) -> Path:
    """The checkpoint directory, with every expected file present (else one error naming each missing one)."""
    path = Path(str(value))
    if not path.is_dir():
        what = "is a file, not a directory" if path.is_file() else "not found"
        raise MedretError(f"{_KEY}: {path} {what}; {_published_hint()}")
    missing = [f"{name} (from {where})" for name, where in PUBLISHED.items() if not (path / name).is_file()]
    if missing:
        raise MedretError(f"{_KEY}: {path} lacks {', '.join(missing)}; set {_KEY} to the directory holding them")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MedretError(f"{path}: not valid JSON ({error_line(exc)}); get the file again from {REPO_URL}") from None


def read_open_clip_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``model_cfg`` and ``preprocess_cfg`` of an ``open_clip_config.json``, checked to be a timm + BERT CLIP."""
    cfg = _read_json(path)

    def bad(why: str) -> MedretError:
        return MedretError(f"{path}: malformed BiomedCLIP config ({why}); get {CONFIG_FILE} again from {REPO_URL}")

    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_cfg"), dict):
        raise bad("no model_cfg object")
    model_cfg, pp = cfg["model_cfg"], cfg.get("preprocess_cfg", {})
    vision, text = model_cfg.get("vision_cfg"), model_cfg.get("text_cfg")
    if not isinstance(model_cfg.get("embed_dim"), int) or model_cfg["embed_dim"] < 1:
        raise bad("model_cfg.embed_dim is not a positive integer")
    if not isinstance(vision, dict) or not isinstance(vision.get("timm_model_name"), str):
        raise bad("model_cfg.vision_cfg.timm_model_name missing: not a timm image tower")
    if not isinstance(text, dict) or not isinstance(text.get("hf_model_name"), str):
        raise bad("model_cfg.text_cfg.hf_model_name missing: not a Hugging Face text tower")
    if not isinstance(text.get("context_length"), int) or not 2 <= text["context_length"] <= 512:
        raise bad("model_cfg.text_cfg.context_length is not an integer in 2..512")
    if text.get("tokenizer_mode") or text.get("tokenizer_kwargs"):
        raise bad("text_cfg.tokenizer_mode/tokenizer_kwargs are not BiomedCLIP's and are not supported")
    if not isinstance(pp, dict):
        raise bad("preprocess_cfg is not an object")
    for key in ("mean", "std"):
        value = pp.get(key)
        ok = value is None or (
            isinstance(value, list) and len(value) == 3 and all(isinstance(v, int | float) for v in value)
        )
        if not ok or (key == "std" and value is not None and min(value) <= 0):
            raise bad(f"preprocess_cfg.{key} is not 3 numbers")
    if pp.get("mode", "RGB") != "RGB" or pp.get("resize_mode", "shortest") not in ("shortest", "longest", "squash"):
        raise bad("preprocess_cfg mode/resize_mode not supported")
    if pp.get("interpolation", "bicubic") not in ("bicubic", "bilinear"):
        raise bad("preprocess_cfg.interpolation is not bicubic or bilinear")
    return model_cfg, pp


def bert_config(directory: Path) -> Any:
    """The text tower's ``BertConfig``: the directory's ``config.json`` if present, else BiomedBERT-base's."""
    from transformers import BertConfig

    path = directory / "config.json"
    values = dict(BIOMEDBERT_CONFIG)
    if path.is_file():
        values = _read_json(path)
        if not isinstance(values, dict) or values.get("model_type") != "bert":
            found = values.get("model_type") if isinstance(values, dict) else type(values).__name__
            raise MedretError(
                f"{path}: not a BERT config (model_type {found!r}); BiomedCLIP's text tower is BiomedBERT "
                f"({BIOMEDBERT_URL}); remove the file to use BiomedBERT-base's configuration"
            )
    values = {k: v for k, v in values.items() if k not in ("model_type", "architectures", "transformers_version")}
    try:
        return BertConfig(**values)
    except (TypeError, ValueError) as exc:
        raise MedretError(f"{path}: malformed BERT config ({error_line(exc)})") from None


def build_biomedclip(model_cfg: Mapping[str, Any], bert: Any, source: Path) -> torch.nn.Module:
    """open_clip's ``CustomTextCLIP`` of ``model_cfg`` with random weights, built without the network."""
    from open_clip.model import CustomTextCLIP

    cfg = copy.deepcopy(dict(model_cfg))
    cfg.pop("custom_text", None)  # create_model pops it too
    cfg["vision_cfg"]["timm_model_pretrained"] = False
    with tempfile.TemporaryDirectory(prefix="medret-biomedbert-") as tmp:
        # HFTextEncoder reads only this config (AutoConfig.from_pretrained on a local dir) and builds
        # the BERT with AutoModel.from_config: no weights, no tokenizer, no hub.
        bert.to_json_file(str(Path(tmp) / "config.json"))
        cfg["text_cfg"] = {**cfg["text_cfg"], "hf_model_name": tmp, "hf_model_pretrained": False}
        try:
            with quiet_open_clip():
                model = CustomTextCLIP(**cfg)
        except Exception as exc:  # unknown timm name, bad pooler/proj type, unknown keys, ...
            raise MedretError(
                f"{source}: malformed BiomedCLIP config, open_clip cannot build it offline ({error_line(exc)})"
            ) from None
    return model.eval()


def biomedbert_tokenizer(directory: Path, context_length: int, bert: Any) -> WordPiece:
    """open_clip's ``HFTokenizer`` for BiomedCLIP on the local BiomedBERT vocabulary (the caller cleans the text):
    the options of ``tokenizer_config.json``, truncated and padded to ``context_length``."""
    tok_cfg_path = directory / "tokenizer_config.json"
    tok_cfg = _read_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
    if not isinstance(tok_cfg, dict):
        raise MedretError(f"{tok_cfg_path}: not a tokenizer config object")
    vocab_path = directory / VOCAB_FILE
    tokenizer = WordPiece(
        vocab_path,
        max_length=int(context_length),
        padding="max_length",
        lowercase=bool(tok_cfg.get("do_lower_case", True)),
        strip_accents=tok_cfg.get("strip_accents"),
        chinese_chars=bool(tok_cfg.get("tokenize_chinese_chars", True)),
        hint=f"get BiomedBERT's {VOCAB_FILE} from {PUBLISHED[VOCAB_FILE]}",
    )
    if tokenizer.vocab_size > bert.vocab_size or tokenizer.pad_id != bert.pad_token_id:
        raise MedretError(
            f"{vocab_path}: {tokenizer.vocab_size} tokens with [PAD] = {tokenizer.pad_id} do not fit the text "
            f"tower (vocab {bert.vocab_size}, pad {bert.pad_token_id}); use BiomedBERT's {VOCAB_FILE} "
            f"({PUBLISHED[VOCAB_FILE]})"
        )
    return tokenizer


class BiomedClipAdapter(ModelAdapter):
    """Adapter of the ``biomedclip`` family."""

    family = "biomedclip"

    def __init__(self, entry: Mapping[str, Any]) -> None:
        from open_clip.tokenizer import get_clean_fn
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict

        super().__init__(entry)
        directory = checkpoint_dir(entry["checkpoint"])
        model_cfg, pp_cfg = read_open_clip_config(directory / CONFIG_FILE)
        bert = bert_config(directory)
        self.tokenizer = biomedbert_tokenizer(directory, model_cfg["text_cfg"]["context_length"], bert)
        self.clean = get_clean_fn("whitespace")  # HFTokenizer's default: ftfy, HTML unescape, whitespace
        weights = directory / WEIGHTS_FILE
        state, _ = read_state_dict(weights, missing_hint=_published_hint())
        model = build_biomedclip(model_cfg, bert, directory / CONFIG_FILE)
        if POSITION_IDS_KEY in state and POSITION_IDS_KEY not in model.state_dict():
            del state[POSITION_IDS_KEY]
        load_strict(model, state, weights, f"BiomedCLIP ({model_cfg['vision_cfg']['timm_model_name']} + BERT)")
        del state
        self.model = model.to(self.device)
        # As open_clip's create_model: defaults, then the config's preprocess_cfg, size from the image tower.
        pp = merge_preprocess_dict(asdict(PreprocessCfg()), pp_cfg)
        pp["size"] = list(getattr(model.visual, "image_size", pp["size"]))
        self.preprocess_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()}
        self.resize_rule = open_clip_resize_rule(self.preprocess_cfg)
        self._embed_dim = int(model_cfg["embed_dim"])
        self._spec = {
            "weights": file_sha256(weights),
            "model_cfg": model_cfg,
            "bert": {k: v for k, v in bert.to_diff_dict().items() if k != "transformers_version"},
            "tokenizer": {"vocab": self.tokenizer.vocab_sha256, **self.tokenizer.options},
            "context_length": self.tokenizer.max_length,
            "preprocess": {"crop": "content box", **self.preprocess_cfg},
        }

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def identity(self) -> dict[str, Any]:
        return self._spec

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (B, context_length) as open_clip's tokenizer for BiomedCLIP makes them."""
        return self.tokenizer([self.clean(str(t)) for t in texts]).ids

    def _encode_images(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(open_clip_preprocess(images, boxes, self.preprocess_cfg))

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenize(texts).to(self.device))
