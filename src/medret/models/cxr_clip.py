"""Family ``cxr_clip``: CXR-CLIP (You et al., MICCAI 2023; github.com/kakaobrain/cxr-clip, now Soombit-ai/cxr-clip).

Weights: the six released files ``{r50,swint}_{m,mc,mcc}.tar`` (m = MIMIC-CXR, mc = + CheXpert, mcc = + ChestX-ray14),
linked from the repository README (``twg.kakaocdn.net/brainrepo/models/cxr-clip/...``); CC BY-NC(-SA) 4.0. Each is a
torch zip file (despite the name) holding ``{"model", "optimizer", "scheduler", "config", "epoch", "train_loss"}``
(``cxrclip/trainer.py``). Only ``model`` and ``config`` are used; ``optimizer``, ``scheduler``, ``epoch`` and
``train_loss`` are training state and ignored (as are any other top-level entries).

Options (``models.<name>.*``):

* ``checkpoint``: the ``.tar`` file (required).
* ``text_model``: a local directory (or the ``vocab.txt`` in it) holding the Bio_ClinicalBERT tokenizer
  ``vocab.txt`` and optionally its ``config.json``, from huggingface.co/emilyalsentzer/Bio_ClinicalBERT; no pip
  package ships that vocabulary (required; ``python -m medret download bio-clinicalbert-vocab`` fetches it).
  The text tower's architecture is that ``config.json``, else the published Bio_ClinicalBERT one.
* ``max_length``: report truncation in tokens (default: the checkpoint's ``base.text_max_length``, 256).

Reading the file safely: ``config`` is the Hydra config after ``convert_dictconfig_to_dict``, which converts only
``DictConfig`` nodes, so OmegaConf ``ListConfig`` values survive and drag their parent ``DictConfig`` tree along
through ``_parent``, up to the root, whose metadata holds OmegaConf's resolver cache: a ``defaultdict`` that Hydra's
``${now:...}`` resolver (``configs/train.yaml``'s run directory) fills. torch's weights-only unpickler refuses to fill a
``defaultdict`` ("Can only SETITEM for dict"), so every file written by CXR-CLIP's trainer is read instead with
:func:`medret.models.checkpoints.restricted_load`: torch's own allow-list for tensors plus exactly the ten globals
such a config references (:data:`SAFE_GLOBALS`; checked against checkpoints written by CXR-CLIP's own unpatched
trainer, ``reference/cxr_clip/``). Anything else (a ``__reduce__`` payload anywhere, a Lightning or TorchScript
file, an OmegaConf class outside the list) is refused before it is called. OmegaConf values are converted to plain
containers without resolving interpolations.

Architecture, from the checkpoint's own ``config["model"]`` (``cxrclip/model/clip.py``, ``modules/*.py``):

* image, ``image_encoder.name: resnet``: torchvision ResNet-50 without ``fc`` (SyncBatchNorm in training: same keys,
  eval statistics), average pool -> 2048; ImageNet mean/std;
* image, ``source: huggingface, model_type: swin`` (``microsoft/swin-tiny-patch4-window7-224``): ``SwinModel``
  ``last_hidden_state[:, 0]`` (768), i.e. the first (top-left) token of the final 7 x 7 grid after the last
  LayerNorm, as the original does (its comment calls it "[CLS]"; Swin has none); mean/std 0.5;
* text: Bio_ClinicalBERT ``BertModel`` (with pooler, unused), pooled at the ``[SEP]`` token
  (``attention_mask.sum(-1) - 1``) for ``pooling: eos`` (``bos`` and ``mean`` as in the original);
* projections: ``Linear(+bias)`` to ``projection_head.proj_dim`` (512); ``logit_scale`` (unused for embeddings).

Keys: the file uses transformers 4.26 layouts. They are mapped by prefix to this module tree
(``image_encoder.resnet.`` / ``image_encoder.image_encoder.`` -> ``image.``, ``text_encoder.text_encoder.`` ->
``text.``, ``image_projection.projection.`` -> ``image_proj.``, ``text_projection.projection.`` -> ``text_proj.``),
Swin block keys are renamed to the transformers 5 layout (q/k/v/o_proj, ``relative_position_bias.*``, ``mlp.fc1/fc2``;
never BERT's ``output.dense``), and the state is loaded strictly: every key must be used, none may be missing, every
shape must match. The only keys dropped are the buffers that transformers 5 made non-persistent (BERT
``embeddings.position_ids``; Swin's 12 ``relative_position_index``), and only after checking that they equal what
the model recomputes. The original loaded with ``strict=False``; on a file written by its own code that ignores
nothing (the module tree is the same), so any other extra key (e.g. an MLM head, which ``mlm_head: true`` in the
config hints at but the released code never builds) is refused and listed rather than silently dropped.

Preprocessing (eval config ``eval_clip.yaml`` + ``transform/default.yaml``; ``Image.open().convert("RGB")``,
``Resize(224)``, ``CenterCrop(224)``, ``ToTensor``, ``Normalize``), on tensors: the cache canvas is cropped to its
content box (the original image at cache resolution); the resize is Pillow's 8-bit bilinear resampler reimplemented
exactly (``Resample.c``: the same float64 coefficient steps, 22-bit fixed-point taps, horizontal then vertical pass,
each rounded to 8 bits; Pillow 9.4.0 was the authors' version), in integer arithmetic on the images' device, so the
network input is bit-identical to the PIL pipeline's and the same on every device; then torchvision's centre crop,
/255, normalisation, grey repeated to RGB. (The installed Pillow 13 runs the vertical pass first for some images
far from square, tall or wide, e.g. 1024 px and more at width/height <= 0.4, and 900 x 300 or 1200 x 360; there
it differs from Pillow 9.4.0, and so from this, by one grey level on some pixels; reference/cxr_clip/.)

Tokeniser: Bio_ClinicalBERT has no ``tokenizer_config.json``, so the original ``AutoTokenizer`` built a lower-casing
``BertTokenizerFast`` (the vocabulary is cased, the checkpoints were trained on lower-cased text). It is rebuilt here
from ``vocab.txt`` by :class:`medret.models.bert.WordPiece` (lower-casing and accent stripping), with
``padding="longest"`` and truncation to ``max_length``.
"""

from __future__ import annotations

import collections
import json
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medret.errors import MedretError
from medret.models.base import ModelAdapter
from medret.models.bert import BERT_BASE, WordPiece
from medret.models.checkpoints import (
    RefusedGlobal,
    describe_checkpoint,
    describe_file,
    error_line,
    file_sha256,
    restricted_load,
    skip_random_init,
)
from medret.models.resample import resize_center_crop

if TYPE_CHECKING:
    pass

FAMILY = "cxr_clip"
PUBLISHED = (
    "the six files r50_{m,mc,mcc}.tar / swint_{m,mc,mcc}.tar linked from the README of "
    "https://github.com/kakaobrain/cxr-clip (twg.kakaocdn.net/brainrepo/models/cxr-clip/...; CC BY-NC-SA 4.0; "
    "`python -m medret download cxr-clip-r50-m --dest DIR` fetches one)"
)
TEXT_MODEL_HINT = (
    "a local directory (or its vocab.txt) with the Bio_ClinicalBERT tokenizer vocab.txt and optionally "
    "config.json from https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT; no pip package ships it "
    "(`python -m medret download bio-clinicalbert-vocab --dest DIR` writes DIR/Bio_ClinicalBERT/vocab.txt)"
)
INPUT_SIZE = 224  # eval_clip.yaml: base.image_size
DEFAULT_MAX_LENGTH = 256  # train.yaml: base.text_max_length (also the eval dataset's default)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HUGGINGFACE_MEAN, HUGGINGFACE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

#: ResNets by ``image_encoder.name`` (torchvision Bottleneck blocks per stage); the original only knows ``resnet``.
RESNET_LAYERS: dict[str, tuple[int, ...]] = {"resnet": (3, 4, 6, 3)}
#: Swin configurations by ``image_encoder.name`` (SwinConfig keyword arguments; the defaults are swin-tiny).
SWIN_CONFIGS: dict[str, dict[str, Any]] = {
    "microsoft/swin-tiny-patch4-window7-224": {
        "image_size": 224,
        "patch_size": 4,
        "num_channels": 3,
        "embed_dim": 96,
        "depths": [2, 2, 6, 2],
        "num_heads": [3, 6, 12, 24],
        "window_size": 7,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "hidden_act": "gelu",
        "use_absolute_embeddings": False,
        "layer_norm_eps": 1e-5,
    }
}
#: Text towers by ``text_encoder.name`` (BertConfig keyword arguments; the model's HF config.json).
BERT_CONFIGS: dict[str, dict[str, Any]] = {"emilyalsentzer/Bio_ClinicalBERT": {"vocab_size": 28996, **BERT_BASE}}

#: Checkpoint prefix -> module prefix (this module's tree is flat: image, text, image_proj, text_proj, logit_scale).
PREFIXES: dict[str, str] = {
    "image_encoder.resnet.": "image.",
    "image_encoder.image_encoder.": "image.",
    "text_encoder.text_encoder.": "text.",
    "image_projection.projection.": "image_proj.",
    "text_projection.projection.": "text_proj.",
}
#: transformers 4.26 -> 5.x Swin block renames (suffix after ``encoder.layers.N.blocks.M.``; Swin keys only).
SWIN_RENAMES: dict[str, str] = {
    "attention.self.relative_position_bias_table": "attention.relative_position_bias.relative_position_bias_table",
    "attention.self.relative_position_index": "attention.relative_position_bias.relative_position_index",
    "attention.self.query": "attention.q_proj",
    "attention.self.key": "attention.k_proj",
    "attention.self.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_SWIN_BLOCK = re.compile(r"^(encoder\.layers\.\d+\.blocks\.\d+\.)(.+?)((?:\.(?:weight|bias))?)$")


# --------------------------------------------------------------------------------------------
# Reading the file


def safe_globals() -> dict[str, Any]:
    """The allow-list of the restricted unpickler beyond tensors: what a pickled Hydra config references.

    ``DictConfig``/``ListConfig`` (containers), ``AnyNode`` (every leaf of a YAML-built config), ``Metadata`` /
    ``ContainerMetadata`` (their dataclass metadata), ``typing.Any`` (ref/key/element types), ``dict``/``list``/``int``
    (object and key types) and ``collections.defaultdict`` (``Metadata.resolver_cache``, which Hydra's ``${now:...}``
    resolver fills with the run's date and time). Nothing else: typed nodes (``StringNode``, ``IntegerNode``, ...) come
    only from structured configs, which cxr-clip does not use, and Hydra's own structured ``hydra`` subtree is deleted
    before the task function runs.
    """
    try:
        from omegaconf.base import ContainerMetadata, Metadata
        from omegaconf.dictconfig import DictConfig
        from omegaconf.listconfig import ListConfig
        from omegaconf.nodes import AnyNode
    except ImportError:
        raise MedretError(
            "family cxr_clip needs the omegaconf package to read the checkpoint's pickled config; "
            "pip install omegaconf==2.3.0"
        ) from None
    objects = (
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        AnyNode,
        typing.Any,
        dict,
        list,
        int,
        collections.defaultdict,
    )
    return dict(zip(SAFE_GLOBALS, objects, strict=True))


#: Names of :func:`safe_globals`, as a pickle spells them.
SAFE_GLOBALS = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "typing.Any",
    "builtins.dict",
    "builtins.list",
    "builtins.int",
    "collections.defaultdict",
)


def checkpoint_not_found(path: Path) -> MedretError:
    """The error for a missing ``.tar``: which file, where it is published, which config key."""
    return MedretError(
        f"{path}: CXR-CLIP checkpoint not found; download one of {PUBLISHED} "
        "and set config key models.<name>.checkpoint to its path"
    )


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a CXR-CLIP ``.tar`` without running code; returns its ``model`` state dict and plain ``config``."""
    path = Path(path)
    if not path.is_file():
        raise checkpoint_not_found(path)
    try:
        obj = restricted_load(path, safe_globals())
    except RefusedGlobal as exc:
        name = exc.name
        if name.startswith("omegaconf."):
            # The allow-list was derived from configs built by CXR-CLIP's code: say so, and the way out.
            raise MedretError(
                f"{path}: refused to load: its pickled config references the OmegaConf class {name}, which is "
                f"outside medret's allow-list of {len(SAFE_GLOBALS)} classes (those a config built by CXR-CLIP's own "
                "trainer references); nothing was run; if this is an unmodified released file, please report the "
                "class name to medret's maintainers for review; meanwhile, if you trust the file, convert it once "
                'with python -c "import torch; from medret.models.cxr_clip import plain; '
                "c = torch.load('IN.tar', weights_only=False); "
                "torch.save({'model': c['model'], 'config': plain(c['config'])}, 'OUT.tar')\" and set config key "
                "models.<name>.checkpoint to OUT.tar"
            ) from None
        if name.startswith(("pytorch_lightning", "lightning")):
            looks = "a PyTorch-Lightning checkpoint (e.g. GLoRIA or MGCA)"
        else:
            looks = "a pickle that would call or build arbitrary objects (possibly malicious)"
        raise MedretError(
            f"{path}: refused to load: the pickle references {name}, which is not a tensor, plain value or "
            f"one of the OmegaConf config types a CXR-CLIP file needs; it looks like {looks}; nothing was run"
        ) from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        if "TorchScript" in str(exc):
            raise MedretError(
                f"{path}: a TorchScript archive (e.g. OpenAI's ViT-B-32.pt, family open_clip), not a CXR-CLIP file"
            ) from None
        raise MedretError(
            f"{path}: cannot read as a CXR-CLIP checkpoint ({error_line(exc)}); the file is {describe_file(path)}"
        ) from None
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping) or "config" not in obj:
        raise MedretError(
            f"{path}: not a CXR-CLIP checkpoint (expected a dict with model and config); the file looks like "
            f"{describe_checkpoint(obj)}; use the family that wrote it"
        )
    state = obj["model"]
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise MedretError(f"{path}: model entry is not a state dict of tensors (first offending keys {bad[:5]})")
    try:
        config = plain(obj["config"])
    except Exception as exc:  # already unpickled safely; a malformed config may fail in many ways
        raise MedretError(f"{path}: unreadable config entry ({error_line(exc)}); download the file again") from None
    if not isinstance(config, dict):
        raise MedretError(f"{path}: config entry is a {type(config).__name__}, not a dict; not a CXR-CLIP file")
    return dict(state), config


def plain(value: Any) -> Any:
    """Convert a config holding OmegaConf containers to dicts, lists and scalars (interpolations not resolved)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):  # before Mapping: DictConfig.items() would resolve
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise MedretError(f"unexpected {type(value).__name__} in the config")


# --------------------------------------------------------------------------------------------
# Architecture


def _get(config: Mapping[str, Any], dotted: str, path: Path) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise MedretError(f"{path}: config has no {dotted}; not a CXR-CLIP contrastive checkpoint")
        node = node[part]
    return node


def text_config(config: Mapping[str, Any], text_model: Path, path: Path) -> dict[str, Any]:
    """BertConfig arguments: ``text_model/config.json`` when present, else the published one for the named model."""
    name = str(_get(config, "model.text_encoder.name", path))
    cfg_file = text_model / "config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MedretError(f"{cfg_file}: unreadable ({exc}); use the config.json of {name}") from None
        model_type = cfg.get("model_type", "bert") if isinstance(cfg, dict) else None
        if model_type != "bert":
            raise MedretError(f"{cfg_file}: not a BERT config (model_type {model_type!r}); use the one of {name}")
        return cfg
    if name not in BERT_CONFIGS:
        raise MedretError(
            f"{path}: text encoder {name!r} is not Bio_ClinicalBERT; put its config.json next to vocab.txt in "
            "config key models.<name>.text_model"
        )
    return dict(BERT_CONFIGS[name])


def architecture(config: Mapping[str, Any], text_model: Path, path: Path) -> dict[str, Any]:
    """The model's architecture from the checkpoint config (dispatch as in ``cxrclip/model/modules``)."""
    model_name = str(_get(config, "model.name", path)).lower()
    if model_name != "clip_custom":
        raise MedretError(
            f"{path}: config model.name is {model_name!r}, not clip_custom; the file looks like "
            f"{'a CXR-CLIP fine-tuned classifier' if 'classification' in model_name else 'another model'}"
        )
    image, head = _get(config, "model.image_encoder", path), _get(config, "model.projection_head", path)
    if not isinstance(image, Mapping) or not isinstance(head, Mapping):
        raise MedretError(f"{path}: config model.image_encoder / model.projection_head are not mappings")
    name, source = str(image.get("name")), str(image.get("source", "")).lower()
    if source == "huggingface":
        model_type = str(image.get("model_type", "vit"))
        if model_type != "swin" or name not in SWIN_CONFIGS:
            raise MedretError(
                f"{path}: image encoder {name!r} ({model_type}) is not one of the released ones "
                f"({', '.join([*RESNET_LAYERS, *SWIN_CONFIGS])})"
            )
        kind, image_arch = "swin", dict(SWIN_CONFIGS[name])
    elif name in RESNET_LAYERS:
        kind, image_arch = "resnet", {"layers": list(RESNET_LAYERS[name])}
    else:
        raise MedretError(f"{path}: image encoder {name!r} ({source}) is not supported")
    pooling = str(_get(config, "model.text_encoder.pooling", path))
    if pooling not in ("eos", "bos", "mean"):
        raise MedretError(f"{path}: text pooling {pooling!r} is not one of eos, bos, mean")
    if str(head.get("name", "")).lower() != "linear":
        raise MedretError(f"{path}: projection head {head.get('name')!r} is not the released linear head")
    proj_dim = head.get("proj_dim")
    if not isinstance(proj_dim, int) or isinstance(proj_dim, bool) or proj_dim < 1:
        raise MedretError(f"{path}: projection_head.proj_dim {proj_dim!r} is not a positive integer")
    return {
        "image_kind": kind,
        "image": image_arch,
        "text": text_config(config, text_model, path),
        "pooling": pooling,
        "proj_dim": proj_dim,
        "temperature": bool(config["model"].get("temperature")),
    }


class CxrClip(nn.Module):
    """CXR-CLIP's ``CXRClip`` for inference: image tower, BERT, linear projections (and ``logit_scale``)."""

    def __init__(self, arch: Mapping[str, Any]) -> None:
        super().__init__()
        try:
            from transformers import BertConfig, BertModel, SwinConfig, SwinModel
        except ImportError:
            raise MedretError("family cxr_clip needs transformers; pip install transformers==5.23.0") from None

        self.image_kind = arch["image_kind"]
        if self.image_kind == "resnet":
            from torchvision.models.resnet import Bottleneck, ResNet

            self.image: nn.Module = ResNet(Bottleneck, list(arch["image"]["layers"]))
            self.image.fc = nn.Identity()  # the original deletes fc and returns the flattened average pool
            image_dim = 512 * Bottleneck.expansion
        else:
            swin_config = SwinConfig(**arch["image"])
            self.image = SwinModel(swin_config)
            image_dim = int(swin_config.hidden_size)
        bert_config = BertConfig.from_dict(dict(arch["text"]))
        self.text = BertModel(bert_config, add_pooling_layer=True)
        self.pooling = arch["pooling"]
        self.image_proj = nn.Linear(image_dim, arch["proj_dim"])
        self.text_proj = nn.Linear(int(bert_config.hidden_size), arch["proj_dim"])
        if arch["temperature"]:
            self.logit_scale = nn.Parameter(torch.zeros(()))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, 224, 224) pixels -> projected image features (B, proj_dim)."""
        if self.image_kind == "resnet":
            features = self.image(pixels)
        else:
            features = self.image(pixel_values=pixels).last_hidden_state[:, 0]
        return self.image_proj(features)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Token ids, attention mask and token types (B, L) -> projected text features (B, proj_dim)."""
        hidden = self.text(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        if self.pooling == "eos":
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(dim=-1) - 1]
        elif self.pooling == "bos":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return self.text_proj(pooled)


# --------------------------------------------------------------------------------------------
# Keys


def map_key(key: str, image_kind: str) -> str | None:
    """Checkpoint key -> key of :class:`CxrClip` (``None`` when no known prefix applies)."""
    if key == "logit_scale":
        return key
    for old, new in PREFIXES.items():
        if key.startswith(old):
            rest = key[len(old) :]
            if old == "image_encoder.image_encoder.":
                if image_kind != "swin":
                    return None
                hit = _SWIN_BLOCK.match(rest)
                if hit and hit.group(2) in SWIN_RENAMES:
                    rest = hit.group(1) + SWIN_RENAMES[hit.group(2)] + hit.group(3)
            elif old == "image_encoder.resnet." and image_kind != "resnet":
                return None
            return new + rest
    return None


def file_key(key: str, image_kind: str) -> str:
    """Key of :class:`CxrClip` -> the name it has in a released file (inverse of :func:`map_key`, for messages)."""
    image_prefix = {"resnet": "image_encoder.resnet.", "swin": "image_encoder.image_encoder."}[image_kind]
    inverse = {v: k for k, v in SWIN_RENAMES.items()}
    for old, new in PREFIXES.items():
        if key.startswith(new) and (new != "image." or old == image_prefix):
            rest = key[len(new) :]
            hit = _SWIN_BLOCK.match(rest) if old == "image_encoder.image_encoder." else None
            if hit and hit.group(2) in inverse:
                rest = hit.group(1) + inverse[hit.group(2)] + hit.group(3)
            return old + rest
    return key


def convert_state_dict(
    state: Mapping[str, torch.Tensor], model: CxrClip, path: Path, looks_like: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a transformers-4.26-layout CXR-CLIP state dict onto ``model``; returns it and the dropped keys.

    Dropped are only buffers the model holds as non-persistent (recomputed, not loaded) and only when the file's
    values equal the recomputed ones; any other difference raises a MedretError listing the first offending keys.
    """
    target = model.state_dict()
    recomputed = {name: buf for name, buf in model.named_buffers() if name not in target}
    out: dict[str, torch.Tensor] = {}
    dropped, unexpected, bad_shape, bad_value = [], [], [], []
    for key, value in state.items():
        new = map_key(key, model.image_kind)
        if new is not None and new in recomputed:
            expected = recomputed[new].detach().cpu().flatten()
            if value.numel() == expected.numel() and torch.equal(value.flatten(), expected):
                dropped.append(key)
            else:
                bad_value.append(key)
        elif new is None or new not in target:
            unexpected.append(key)
        elif new in out:
            unexpected.append(key)  # two file keys for one parameter
        elif value.shape != target[new].shape:
            bad_shape.append(f"{key} {tuple(value.shape)} != {tuple(target[new].shape)}")
        else:
            out[new] = value
    missing = [file_key(k, model.image_kind) for k in target if k not in out]
    if unexpected or missing or bad_shape or bad_value:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:5])})")
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:5])})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatches (first: {'; '.join(bad_shape[:3])})")
        if bad_value:
            parts.append(f"buffers that differ from the recomputed ones: {', '.join(bad_value[:5])}")
        raise MedretError(
            f"{path}: does not match the CXR-CLIP architecture of its own config ({'; '.join(parts)}); "
            f"the file looks like {looks_like}; use an unmodified released file ({PUBLISHED})"
        )
    return out, dropped


# --------------------------------------------------------------------------------------------
# Preprocessing


def preprocess(
    images: torch.Tensor,
    boxes: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    size: int = INPUT_SIZE,
) -> torch.Tensor:
    """uint8 canvases (B, S, S) + content boxes -> normalised (B, 3, size, size) float32.

    Crop to the box, Resize(size) (Pillow's bilinear, reimplemented exactly), CenterCrop(size), ToTensor (/255),
    Normalize; grey broadcast to RGB. Runs on the images' device; images sharing a box are batched.
    """
    out = resize_center_crop(images, boxes, resize=size, crop=size)
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (out - m) / s


# --------------------------------------------------------------------------------------------
# Adapter


class CxrClipAdapter(ModelAdapter):
    """Adapter of the ``cxr_clip`` family."""

    family = FAMILY

    def __init__(self, entry: Mapping[str, Any]) -> None:
        super().__init__(entry)
        self.checkpoint = Path(entry["checkpoint"])
        text_model = Path(entry["text_model"])
        self.text_model = text_model.parent if text_model.suffix == ".txt" else text_model
        self.vocab_path = text_model if text_model.suffix == ".txt" else text_model / "vocab.txt"
        if not self.checkpoint.is_file():
            raise checkpoint_not_found(self.checkpoint)
        if not self.vocab_path.is_file():
            raise MedretError(
                f"{self.vocab_path}: Bio_ClinicalBERT vocabulary not found; config key models.<name>.text_model "
                f"must be {TEXT_MODEL_HINT}"
            )
        state, config = read_checkpoint(self.checkpoint)
        arch = architecture(config, self.text_model, self.checkpoint)
        self.config = config
        max_positions = int(arch["text"].get("max_position_embeddings", 512))
        default = config.get("base", {}).get("text_max_length", DEFAULT_MAX_LENGTH)
        max_length = entry.get("max_length", default)
        if not isinstance(max_length, int) or isinstance(max_length, bool) or not 2 <= max_length <= max_positions:
            raise MedretError(
                f"config key models.<name>.max_length: {max_length!r} must be an integer in [2, {max_positions}]"
            )
        self.tokenizer = WordPiece(self.vocab_path, max_length=max_length, padding="longest", hint=TEXT_MODEL_HINT)
        rows = int(arch["text"].get("vocab_size", 0))
        if self.tokenizer.vocab_size != rows:
            raise MedretError(
                f"{self.vocab_path}: {self.tokenizer.vocab_size} tokens, but the checkpoint's text encoder has "
                f"{rows}; use the vocab.txt of {config['model']['text_encoder'].get('name')} (28996 tokens)"
            )
        with skip_random_init():
            self.model = CxrClip(arch)
        converted, self.dropped_keys = convert_state_dict(
            state, self.model, self.checkpoint, describe_checkpoint(state)
        )
        self.model.load_state_dict(converted, strict=True)
        self.model.eval().to(self.device)
        if arch["image_kind"] == "resnet":
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD  # evaluator: resnet -> normalize "imagenet"
        else:
            self.mean, self.std = HUGGINGFACE_MEAN, HUGGINGFACE_STD
        self.max_length = max_length
        self.n_keys = len(state)
        self._embed_dim = int(arch["proj_dim"])
        self._digests: dict[str, str] = {}

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def identity(self) -> dict[str, Any]:
        if not self._digests:
            self._digests = {"weights": file_sha256(self.checkpoint), "vocab": file_sha256(self.vocab_path)}
            cfg = self.text_model / "config.json"
            if cfg.is_file():
                self._digests["text_config"] = file_sha256(cfg)
        return {**self._digests, "max_length": self.max_length}

    def _encode_images(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, enabled=False):
            pixels = preprocess(images, boxes, self.mean, self.std)
        return self.model.encode_image(pixels)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        ids, mask, types = self.tokenizer(texts)
        return self.model.encode_text(ids.to(self.device), mask.to(self.device), types.to(self.device))
