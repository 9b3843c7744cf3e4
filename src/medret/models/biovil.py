"""Family ``biovil``: BioViL (Boecking et al., ECCV 2022) and BioViL-T (Bannur et al., CVPR 2023), re-implemented.

Microsoft's code is ``health_multimodal`` (github.com/microsoft/hi-ml, pip ``hi-ml-multimodal`` 0.2.2, MIT). This
module does not import it (it pulls in pydicom, SimpleITK and scikit-image, and its helpers download weights); it
rebuilds the same module trees from torchvision/transformers classes with no pretrained weights (nothing is ever
downloaded) and loads the published files into them strictly. ``tests/models/test_biovil.py`` checks the embeddings
against hi-ml-multimodal's own ``ImageModel`` / ``CXRBertModel`` on the same weights.

Options (``models.<name>``):

* ``biovil_version`` (required): ``biovil`` (ResNet-50 image model, CXR-BERT-specialized text model, crop 480) or
  ``biovil_t`` (BioViL-T: the multi-image ResNet-50 used on a single image, BioViL-T's CXR-BERT, crop 448).
* ``checkpoint`` (required): the image weights, a plain state dict, from
  ``huggingface.co/microsoft/BiomedVLP-CXR-BERT-specialized`` (revision v1.1) file
  ``biovil_image_resnet50_proj_size_128.pt`` (MD5 02ce6ee460f72efd599295f440dbb453), or
  ``huggingface.co/microsoft/BiomedVLP-BioViL-T`` (revision v1.0) file ``biovil_t_image_model_proj_size_128.pt``
  (MD5 a83080e2f23aa584a4f2b24c39b1bb64).
* ``text_model`` (required): a local directory holding the text model of the same Hugging Face repository and
  revision: ``config.json``, ``pytorch_model.bin`` (or ``model.safetensors``) and ``vocab.txt``;
  ``tokenizer_config.json`` is optional (only its ``do_lower_case`` is read; default true). The repository's
  ``modeling_cxrbert.py`` is never run (no ``trust_remote_code``): the architecture is rebuilt from the
  ``config.json`` numbers (``model_type`` must be ``cxr-bert`` or ``bert``).

Image checkpoint (hi-ml ``ImageModel(img_encoder_type, joint_feature_size=128)``), read with
``torch.load(weights_only=True)``; every key must match by name and shape, otherwise a ``MedretError`` lists the
missing, unexpected and mis-shaped keys (and names the other version when the file is one):

* ``encoder.encoder.*``: torchvision ResNet-50, including the unused ``fc.*`` (hi-ml ``ResNetHIML``); the
  forward stops after ``layer4`` and gives the (B, 2048, H/32, W/32) patch grid (no dilation).
* ``projector.model.{0,1,3}``: 1x1 conv 2048 -> 128 without bias, BatchNorm2d(128) (eval statistics), ReLU,
  1x1 conv 128 -> 128 with bias (hi-ml ``MLP(use_1x1_convs=True)``). 328 keys for BioViL.
* BioViL-T (372 keys) adds ``encoder.backbone_to_vit`` (1x1 conv 2048 -> 256, no bias),
  ``encoder.missing_previous_emb`` [1, 256, 1, 1] and ``encoder.vit_pooler.*`` (a 3-block transformer over the
  current and *previous* image's patches), and its projector takes 512 channels. With one image (no prior study),
  hi-ml's ``MultiImageEncoder.forward(previous_image=None)`` concatenates ``backbone_to_vit(grid)`` with
  ``missing_previous_emb`` repeated over the grid and never runs ``vit_pooler``. That single-image path is what
  retrieval uses and what is implemented here; ``vit_pooler``'s weights are held (and strictly checked) but unused.

Image embedding: ``projector(grid)`` averaged over the grid (``projected_global_embedding``), 128-d, then
L2-normalised by the adapter (hi-ml ``ImageInferenceEngine.get_projected_global_embedding``).

Text checkpoint: CXR-BERT, hi-ml ``CXRBertModel`` = ``BertForMaskedLM`` (``bert.*`` without pooler,
``cls.predictions.*``, the MLM head, held but unused) + ``cls_projection_head`` (``dense_to_hidden``
hidden -> 128, GELU, ``LayerNorm`` (eps 1e-12), ``dense_to_output`` 128 -> 128). Strict as above, except for two
kinds of keys that a file may or may not carry, each checked rather than ignored: ``bert.embeddings.position_ids``
(persistent before transformers 4.31; must equal ``arange``) and the tied MLM decoder
``cls.predictions.decoder.{weight,bias}`` (must equal ``bert.embeddings.word_embeddings.weight`` /
``cls.predictions.bias``). Text embedding: the last hidden state of ``[CLS]`` -> ``cls_projection_head``, 128-d,
L2-normalised (``get_projected_text_embeddings``).

Image preprocessing (hi-ml ``create_chest_xray_transform_for_inference``: ``Resize(512)``, ``CenterCrop(480)``
or ``CenterCrop(448)``, ``ToTensor``, ``ExpandChannels``), on tensors: the cache canvas is cropped to its content
box (the original image at cache resolution), resized so that its shorter side is 512 with Pillow's 8-bit
bilinear resampler reimplemented exactly (shared with family ``cxr_clip``; horizontal then vertical pass, each
rounded to 8 bits, integer arithmetic), centre-cropped as torchvision does, divided by 255 (values in [0, 1], no
mean/std normalisation) and repeated to 3 channels. hi-ml's ``load_image`` also min-max stretches the *source file*
to 0-255; that is a file-decoding step the image cache has already done, and it is not repeated on the cached
(possibly occluded) image, where a stretch would let an occluder change the global contrast.

Tokeniser: CXR-BERT WordPiece (transformers ``BertTokenizer``, the class hi-ml's ``CXRBertTokenizer`` subclasses)
built from the local ``vocab.txt`` (passed as ``vocab=``: transformers 5 silently ignores ``vocab_file=``), as
hi-ml's ``TextInput.tokenize_input_prompts`` uses it: trailing ``!``, ``?`` and ``.`` are stripped, ``[CLS] ...
[SEP]``, ``padding="longest"``. hi-ml does not truncate and refuses a batch longer than the model's 512 positions;
a benchmark cannot stop at one long report, so here a report is truncated to 512 tokens (``[SEP]`` kept last);
every report that fits is tokenised exactly as hi-ml does. The ``[CLS]`` output does not depend on padding (the
attention mask excludes it), so embeddings do not depend on batch composition beyond float rounding. hi-ml refuses
prompts containing special-token strings such as ``[SEP]``; here they are tokenised as the tokeniser does
(reports do not contain them).
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medret.errors import MedretError
from medret.models.base import ModelAdapter
from medret.models.bert import BERT_BASE, TokenBatch, WordPiece
from medret.models.checkpoints import (
    describe_checkpoint,
    describe_file,
    error_line,
    file_sha256,
    key_problems,
    skip_random_init,
)
from medret.models.resample import resize_center_crop

FAMILY = "biovil"
HF = "https://huggingface.co"
#: Per version: HF repository, revision, image weights file, its MD5, centre crop.
VERSIONS: dict[str, dict[str, Any]] = {
    "biovil": {
        "name": "BioViL",
        "repo": "microsoft/BiomedVLP-CXR-BERT-specialized",
        "revision": "v1.1",
        "image_file": "biovil_image_resnet50_proj_size_128.pt",
        "md5": "02ce6ee460f72efd599295f440dbb453",
        "crop": 480,
    },
    "biovil_t": {
        "name": "BioViL-T",
        "repo": "microsoft/BiomedVLP-BioViL-T",
        "revision": "v1.0",
        "image_file": "biovil_t_image_model_proj_size_128.pt",
        "md5": "a83080e2f23aa584a4f2b24c39b1bb64",
        "crop": 448,
    },
}
RESIZE = 512
JOINT_DIM = 128
RESNET_DIM = 2048
#: BioViL-T's MultiImageEncoder: backbone_to_vit output channels, pooler blocks and grid.
VIT_DIM = 256
VIT_BLOCKS = 3
TEXT_WEIGHTS = ("pytorch_model.bin", "model.safetensors")
POSITION_IDS = "bert.embeddings.position_ids"
TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


# Small helpers kept local (not imported from other families' private names).


def _url(version: str, file: str) -> str:
    v = VERSIONS[version]
    return f"{HF}/{v['repo']}/resolve/{v['revision']}/{file}"


def _image_hint(version: str) -> str:
    v = VERSIONS[version]
    return (
        f"{v['name']} image weights are published as {_url(version, v['image_file'])} (MD5 {v['md5']}); set config "
        f"key models.<name>.checkpoint to that file"
    )


def _text_hint(version: str) -> str:
    v = VERSIONS[version]
    return (
        f"download config.json, pytorch_model.bin and vocab.txt from {HF}/{v['repo']}/tree/{v['revision']} into one "
        "directory and set config key models.<name>.text_model to it"
    )


# --------------------------------------------------------------------------------------------
# Architecture


class _Attention(nn.Module):
    """Parameter layout of hi-ml ``MultiHeadAttentionLayer`` (q/k/v without bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_q = nn.Linear(dim, dim, bias=False)
        self.proj_k = nn.Linear(dim, dim, bias=False)
        self.proj_v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)


class _Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)  # mlp_ratio 1.0
        self.fc2 = nn.Linear(dim, dim)


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim)


class VitPoolerWeights(nn.Module):
    """Parameter layout of hi-ml ``VisionTransformerPooler(256, (14, 14))``.

    It only combines the current with a *previous* image, so the single-image path never runs it; its weights
    are part of the BioViL-T file and are loaded strictly, but no forward is defined.
    """

    def __init__(self, dim: int = VIT_DIM, blocks: int = VIT_BLOCKS) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(dim) for _ in range(blocks)])
        self.norm_post = nn.LayerNorm(dim, eps=1e-6)
        self.type_embed = nn.Parameter(torch.zeros(2, 1, dim))


class ImageEncoder(nn.Module):
    """hi-ml ``ImageEncoder`` / ``MultiImageEncoder`` (single-image path): patch grid of a torchvision ResNet-50."""

    def __init__(self, version: str) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.encoder = resnet50(weights=None)  # keys encoder.encoder.*, fc included (unused, as in hi-ml)
        self.multi_image = version == "biovil_t"
        if self.multi_image:
            self.backbone_to_vit = nn.Conv2d(RESNET_DIM, VIT_DIM, kernel_size=1, bias=False)
            self.vit_pooler = VitPoolerWeights()
            self.missing_previous_emb = nn.Parameter(torch.zeros(1, VIT_DIM, 1, 1))

    @property
    def out_channels(self) -> int:
        return 2 * VIT_DIM if self.multi_image else RESNET_DIM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.encoder
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        if not self.multi_image:
            return x
        patch = self.backbone_to_vit(x)
        b, _, h, w = patch.shape
        return torch.cat([patch, self.missing_previous_emb.expand(b, -1, h, w)], dim=1)


class ImageModel(nn.Module):
    """hi-ml ``ImageModel``: encoder grid -> 1x1-conv MLP projector -> mean over the grid (128-d)."""

    def __init__(self, version: str) -> None:
        super().__init__()
        self.encoder = ImageEncoder(version)
        self.projector = nn.Module()
        self.projector.model = nn.Sequential(
            nn.Conv2d(self.encoder.out_channels, JOINT_DIM, kernel_size=1, bias=False),
            nn.BatchNorm2d(JOINT_DIM),
            nn.ReLU(inplace=True),
            nn.Conv2d(JOINT_DIM, JOINT_DIM, kernel_size=1, bias=True),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projector.model(self.encoder(pixels)).mean(dim=(2, 3))


class ProjectionHead(nn.Module):
    """hi-ml ``BertProjectionHead``: Linear, GELU, LayerNorm(eps 1e-12), Linear."""

    def __init__(self, hidden: int, size: int) -> None:
        super().__init__()
        self.dense_to_hidden = nn.Linear(hidden, size)
        self.LayerNorm = nn.LayerNorm(size, eps=1e-12)
        self.dense_to_output = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_to_output(self.LayerNorm(F.gelu(self.dense_to_hidden(x))))


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise MedretError(
            "family biovil needs the transformers package; install transformers==5.23.0 (the tested version)"
        ) from None
    return transformers


class TextModel(nn.Module):
    """hi-ml ``CXRBertModel``'s module tree: ``bert`` (no pooler), ``cls`` (MLM head, tied), ``cls_projection_head``."""

    def __init__(self, config: Any, projection_size: int) -> None:
        super().__init__()
        mlm = _require_transformers().BertForMaskedLM(config)  # ties cls.predictions.decoder to the embeddings
        self.bert = mlm.bert
        self.cls = mlm.cls
        self.cls_projection_head = ProjectionHead(config.hidden_size, projection_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.cls_projection_head(hidden[:, 0, :])


# --------------------------------------------------------------------------------------------
# Reading files


def read_state_dict(path: Path, what: str, key: str, hint: str) -> dict[str, torch.Tensor]:
    """A plain state dict of tensors from ``path``, read without running code from it."""
    if not path.is_file():
        raise MedretError(f"{path}: {what} not found; {hint}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        except Exception as exc:  # header or data damaged
            raise MedretError(f"{path}: cannot read {what} ({error_line(exc)}); {hint}") from None
    is_zip = zipfile.is_zipfile(path)
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:  # truncated, foreign or code-carrying files raise many types
        if isinstance(exc, pickle.UnpicklingError) or "GLOBAL" in str(exc) or "Unsupported" in str(exc):
            why = "it references objects other than tensors, so it was refused without running it"
        else:
            why = f"the file is {describe_file(path)}"
        raise MedretError(f"{path}: cannot read {what} ({error_line(exc)}); {why}; {hint}") from None
    if not (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise MedretError(
            f"{path}: not a {what} (a plain state dict of tensors); the file looks like {describe_checkpoint(obj)}; "
            f"check config key models.<name>.{key}; {hint}"
        )
    return dict(obj)


def image_version(keys: Sequence[str]) -> str | None:
    """The BioViL version whose image model these keys belong to, if any."""
    if not any(k.startswith("encoder.encoder.") for k in keys):
        return None
    return "biovil_t" if any(k.startswith("encoder.vit_pooler.") for k in keys) else "biovil"


def load_image_model(path: str | Path, version: str) -> ImageModel:
    """hi-ml's ``ImageModel`` for ``version`` with the weights of ``path``, loaded strictly, eval mode, CPU."""
    path = Path(path)
    state = read_state_dict(path, f"{VERSIONS[version]['name']} image checkpoint", "checkpoint", _image_hint(version))
    with skip_random_init():
        model = ImageModel(version)
    problems = key_problems(model.state_dict(), state)
    if problems:
        found = image_version(list(state))
        if found and found != version:
            name = VERSIONS[found]["name"]
            fix = f"; it is a {name} image model: set config key models.<name>.biovil_version to {found}"
        else:
            fix = f"; the file looks like {describe_checkpoint(dict.fromkeys(state))}; {_image_hint(version)}"
        raise MedretError(
            f"{path}: does not load strictly into the {VERSIONS[version]['name']} image model: "
            f"{'; '.join(problems)}{fix}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def _read_json(path: Path, version: str) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedretError(
            f"{path}: unreadable ({error_line(exc)}); config key models.<name>.text_model; {_text_hint(version)}"
        ) from None
    if not isinstance(cfg, dict):
        raise MedretError(f"{path}: not a JSON object; config key models.<name>.text_model; {_text_hint(version)}")
    return cfg


#: config.json entries that define the architecture (BertConfig names), with the published CXR-BERT values.
BERT_KEYS = {"vocab_size": 30522, **BERT_BASE}


def text_config(directory: Path, version: str) -> tuple[Any, int]:
    """BertConfig and projection size from ``<text_model>/config.json`` (numbers only; no remote code)."""
    path = directory / "config.json"
    if not path.is_file():
        raise MedretError(f"{path}: not found; config key models.<name>.text_model; {_text_hint(version)}")
    cfg = _read_json(path, version)
    if cfg.get("model_type") not in ("cxr-bert", "bert"):
        raise MedretError(
            f"{path}: model_type {cfg.get('model_type')!r} is not cxr-bert; config key models.<name>.text_model must "
            f"be the CXR-BERT directory of {HF}/{VERSIONS[version]['repo']}"
        )
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise MedretError(f"{path}: position_embedding_type {cfg['position_embedding_type']!r}; CXR-BERT is absolute")
    kwargs = {k: cfg.get(k, default) for k, default in BERT_KEYS.items()}
    projection = cfg.get("projection_size", JOINT_DIM)
    if projection != JOINT_DIM:
        raise MedretError(
            f"{path}: projection_size {projection}, but the BioViL image models project to {JOINT_DIM}; "
            "config key models.<name>.text_model"
        )
    return _require_transformers().BertConfig(**kwargs), int(projection)


def _check_text_extras(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: Path, config: Any
) -> None:
    """Drop ``position_ids`` and fill in tied keys, each after checking it (see the module docstring)."""
    if POSITION_IDS in state:
        ids = state.pop(POSITION_IDS)
        want = torch.arange(config.max_position_embeddings)
        if ids.is_floating_point() or ids.numel() != want.numel() or not torch.equal(ids.reshape(-1).long(), want):
            raise MedretError(f"{path}: {POSITION_IDS} is not 0..{want.numel() - 1}; not a CXR-BERT checkpoint")
    for tied, source in TIED.items():
        if tied not in expected or source not in state:
            continue
        if tied not in state:
            state[tied] = state[source]
        elif state[tied].shape != state[source].shape or not torch.equal(state[tied], state[source]):
            raise MedretError(
                f"{path}: {tied} differs from {source}, but CXR-BERT ties them; the file was not written by CXR-BERT"
            )


def load_text_model(directory: str | Path, version: str) -> TextModel:
    """CXR-BERT with its projection head from a local model directory, loaded strictly, eval mode, CPU."""
    directory = Path(directory)
    config, projection = text_config(directory, version)
    path = next((directory / f for f in TEXT_WEIGHTS if (directory / f).is_file()), directory / TEXT_WEIGHTS[0])
    state = read_state_dict(path, "CXR-BERT text model", "text_model", _text_hint(version))
    with skip_random_init():
        model = TextModel(config, projection)
    expected = model.state_dict()
    _check_text_extras(state, expected, path, config)
    problems = key_problems(expected, state)
    if problems:
        raise MedretError(
            f"{path}: does not load strictly into CXR-BERT with a {projection}-d projection head (as {directory}/"
            f"config.json describes it): {'; '.join(problems)}; the file looks like "
            f"{describe_checkpoint(dict.fromkeys(state))}; config key models.<name>.text_model; {_text_hint(version)}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Preprocessing and tokeniser


def preprocess(images: torch.Tensor, boxes: torch.Tensor, crop: int, resize: int = RESIZE) -> torch.Tensor:
    """uint8 canvases (B, S, S) + content boxes -> (B, 3, crop, crop) float32 in [0, 1].

    Crop to the box, ``Resize(resize)`` (Pillow's 8-bit bilinear, exact), ``CenterCrop(crop)`` (torchvision,
    half-even rounding of the offsets), /255, grey repeated to 3 channels. Only the cropped pixels are computed.
    """
    out = resize_center_crop(images, boxes, resize=resize, crop=crop)
    return out.expand(-1, 3, -1, -1)


def cxr_bert_tokenizer(directory: str | Path, version: str, vocab_size: int, max_length: int) -> WordPiece:
    """CXR-BERT WordPiece as hi-ml's ``TextInput`` applies it (see the module docstring; the caller strips the
    trailing punctuation)."""
    directory = Path(directory)
    vocab_path = directory / "vocab.txt"
    if not vocab_path.is_file():
        raise MedretError(f"{vocab_path}: not found; config key models.<name>.text_model; {_text_hint(version)}")
    lower = True
    tok_cfg = directory / "tokenizer_config.json"
    if tok_cfg.is_file():
        lower = bool(_read_json(tok_cfg, version).get("do_lower_case", True))
    tokenizer = WordPiece(
        vocab_path, max_length=max_length, padding="longest", lowercase=lower, hint=_text_hint(version)
    )
    if len(tokenizer.vocab) != vocab_size or tokenizer.vocab_size != vocab_size:
        raise MedretError(
            f"{vocab_path}: {len(tokenizer.vocab)} tokens, but config.json has vocab_size {vocab_size}; config key "
            f"models.<name>.text_model must hold one model's vocab.txt and config.json ({_text_hint(version)})"
        )
    return tokenizer


# --------------------------------------------------------------------------------------------
# Adapter


def _version(value: Any) -> str:
    if value not in VERSIONS:
        raise MedretError(
            f"config key models.<name>.biovil_version: {value!r}; use biovil (BioViL) or biovil_t (BioViL-T), "
            "matching the checkpoint"
        )
    return str(value)


class BioViLAdapter(ModelAdapter):
    """Adapter of the ``biovil`` family."""

    family = FAMILY

    def __init__(self, entry: Mapping[str, Any]) -> None:
        super().__init__(entry)
        self.version = _version(entry["biovil_version"])
        self.crop = int(VERSIONS[self.version]["crop"])
        text_dir = Path(entry["text_model"])
        if not text_dir.is_dir():
            raise MedretError(
                f"{text_dir}: not a directory; config key models.<name>.text_model; {_text_hint(self.version)}"
            )
        config, _ = text_config(text_dir, self.version)  # cheap checks first
        self.tokenizer = cxr_bert_tokenizer(
            text_dir, self.version, config.vocab_size, min(config.max_position_embeddings, 512)
        )
        image_path = Path(entry["checkpoint"])
        self.image_model = load_image_model(image_path, self.version).to(self.device)
        self.text_model = load_text_model(text_dir, self.version).to(self.device)
        text_weights = next(text_dir / f for f in TEXT_WEIGHTS if (text_dir / f).is_file())
        self._hashes = {
            "weights": file_sha256(image_path),
            "text_weights": file_sha256(text_weights),
            "text_config": file_sha256(text_dir / "config.json"),
            "vocab": self.tokenizer.vocab_sha256,
        }

    @property
    def embed_dim(self) -> int:
        return JOINT_DIM

    def identity(self) -> dict[str, Any]:
        return {
            **self._hashes,
            "tokenizer": {
                "do_lower_case": self.tokenizer.options["do_lower_case"],
                "strip": "!?.",
                "max_length": self.tokenizer.max_length,
            },
            "preprocess": {"canvas": "content box", "resize": [RESIZE, "pil-bilinear"], "crop": self.crop},
        }

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids and attention masks as fed to the text tower (hi-ml strips trailing ``!?.`` first)."""
        return self.tokenizer([str(t).rstrip("!?.") for t in texts])

    def preprocess(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The image tower's input for uint8 canvases and their content boxes."""
        return preprocess(images, boxes, self.crop)

    def _encode_images(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return self.image_model(preprocess(images, boxes, self.crop))

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        ids, mask, _ = self.tokenize(texts)
        return self.text_model(ids.to(self.device), mask.to(self.device))
