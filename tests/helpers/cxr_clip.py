"""CXR-CLIP's reference model and released .tar layout (4.26 keys, Hydra config); a tiny BERT text dir."""

from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet
from transformers import BertConfig, BertModel, SwinConfig, SwinModel

BIO = "emilyalsentzer/Bio_ClinicalBERT"
SWIN_T = "microsoft/swin-tiny-patch4-window7-224"
TINY_RESNET, TINY_SWIN = "resnet-tiny", "test/swin-micro"
# Bio_ClinicalBERT-like special-token ids (cased BERT vocab: [PAD]=0, [UNK]=100, [CLS]=101, ...), then words.
VOCAB_TEXT = (
    "[PAD] [unused1] [unused2] [UNK] [CLS] [SEP] [MASK] . , : ; - / ? _ [ ] ( ) 3 5 11 12 no acute cardio "
    "##pulmonary process findings mild cardiac ##megaly impression pneumo ##thorax pleural effusion ##s left right "
    "lung heart size normal the is of with and year old at cm nodule t p s pna cab ##g reticulo nodulaire opacites "
    "naive cafe 中 文 mixed inside text sep mask cls control chars unknown ##word opacity base ##al stable"
)
WORDS = VOCAB_TEXT.split()
TINY_BERT = {
    "vocab_size": len(WORDS),
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "pad_token_id": 0,
}


class Reference(nn.Module):
    """``CXRClip`` as the original builds it: ResNet50 (fc deleted) or SwinModel, BertModel, linear heads."""

    def __init__(self, kind: str, image_arch: Any, bert: dict[str, Any], seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.kind = kind
        if kind == "resnet":
            self.resnet = ResNet(Bottleneck, list(image_arch))
            del self.resnet.fc
            dim = 2048
        else:
            self.swin = SwinModel(SwinConfig(**image_arch))
            dim = self.swin.config.hidden_size
        self.bert = BertModel(BertConfig(**bert))
        self.image_projection = nn.Linear(dim, 512)
        self.text_projection = nn.Linear(bert["hidden_size"], 512)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        with torch.no_grad():  # move every tensor off its init value so that any mis-mapped key shows
            for p in self.parameters():
                p.add_(torch.randn_like(p) * 0.05)
            for name, b in self.named_buffers():
                if name.endswith(("running_mean", "running_var")):
                    b.copy_(torch.rand_like(b) * 0.5 + (0.5 if name.endswith("var") else -0.25))
        self.eval()

    @torch.no_grad()
    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kind == "resnet":  # cxrclip ResNet50.forward
            r = self.resnet
            x = r.maxpool(r.relu(r.bn1(r.conv1(pixels))))
            x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
            features = torch.flatten(r.avgpool(x), 1)
        else:  # HuggingfaceImageEncoder + CXRClip.encode_image "[CLS] token"
            features = self.swin(pixel_values=pixels)["last_hidden_state"][:, 0]
        emb = self.image_projection(features)
        return emb / emb.norm(dim=1, keepdim=True)

    @torch.no_grad()
    def embed_texts(self, tokens: dict[str, torch.Tensor], pooling: str = "eos") -> torch.Tensor:
        h = self.bert(**tokens)["last_hidden_state"]
        mask = tokens["attention_mask"]
        if pooling == "eos":
            h = h[torch.arange(h.shape[0]), mask.sum(dim=-1) - 1]
        elif pooling == "bos":
            h = h[:, 0]
        else:
            m = mask.unsqueeze(-1).expand(h.size()).float()
            h = torch.sum(h * m, 1) / torch.clamp(m.sum(1), min=1e-9)
        emb = self.text_projection(h)
        return emb / emb.norm(dim=1, keepdim=True)


def old_relative_position_index(window: int) -> torch.Tensor:
    """transformers 4.26 ``SwinSelfAttention.relative_position_index`` ([w*w, w*w] int64, persistent)."""
    coords = torch.stack(torch.meshgrid([torch.arange(window), torch.arange(window)], indexing="ij"))
    flat = torch.flatten(coords, 1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def old_swin_key(key: str) -> str:
    """transformers 5.x Swin key -> 4.26 key (inverse of transformers' conversion_mapping "swin")."""
    for new, old in (
        (
            "attention.relative_position_bias.relative_position_bias_table",
            "attention.self.relative_position_bias_table",
        ),
        ("attention.q_proj", "attention.self.query"),
        ("attention.k_proj", "attention.self.key"),
        ("attention.v_proj", "attention.self.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ):
        if f".{new}." in f".{key}.":
            return key.replace(new, old)
    return key


def old_layout(ref: Reference) -> collections.OrderedDict[str, torch.Tensor]:
    """The reference's weights as a transformers-4.26 CXR-CLIP ``model`` state dict."""
    sd: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    if ref.kind == "resnet":
        sd.update((f"image_encoder.resnet.{k}", v) for k, v in ref.resnet.state_dict().items())
    else:
        for k, v in ref.swin.state_dict().items():
            sd[f"image_encoder.image_encoder.{old_swin_key(k)}"] = v
        window = ref.swin.config.window_size
        for i, layer in enumerate(ref.swin.encoder.layers):
            for j in range(len(layer.blocks)):
                key = (
                    f"image_encoder.image_encoder.encoder.layers.{i}.blocks.{j}.attention.self.relative_position_index"
                )
                sd[key] = old_relative_position_index(window)
    positions = ref.bert.config.max_position_embeddings
    sd["text_encoder.text_encoder.embeddings.position_ids"] = torch.arange(positions).expand((1, -1))
    sd.update((f"text_encoder.text_encoder.{k}", v) for k, v in ref.bert.state_dict().items())
    sd.update((f"image_projection.projection.{k}", v) for k, v in ref.image_projection.state_dict().items())
    sd.update((f"text_projection.projection.{k}", v) for k, v in ref.text_projection.state_dict().items())
    sd["logit_scale"] = ref.logit_scale.detach()
    return sd


def convert_dictconfig_to_dict(cfg: Any) -> Any:
    """cxrclip/util/utils.py: converts DictConfig only (ListConfig values survive)."""
    if isinstance(cfg, DictConfig):
        return {k: convert_dictconfig_to_dict(v) for k, v in cfg.items()}
    return cfg


#: A config directory shaped like cxr-clip's ``configs/``: ``train.yaml`` with its defaults list and the
#: ``${now:...}`` run directory, and one file per config group (values of the released configs).
HYDRA_CONFIGS: dict[str, dict[str, Any]] = {
    "train.yaml": {
        "defaults": [
            "_self_",
            {"data_train": ["mimic_cxr"]},
            {"tokenizer": "clinical_bert"},
            {"transform": "clahe"},
            {"model": "clip_custom"},
            {"optimizer": "adamw"},
            {"scheduler": "cosine_epoch15_warmup1"},
            {"loss": "cxr_clip"},
        ],
        "base": {
            "seed": 1234,
            "amp": True,
            "image_size": 224,
            "text_max_length": 256,
            "loss_best": "contrastive",
            "data_frac": 1.0,
            # train.yaml says ${hydra:run.dir}, whose run.dir is ./outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}.
            "output": {
                "checkpoint": "./outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}/checkpoints/",
                "tensorboard": "./outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}/tensorboard/",
            },
        },
    },
    "data_train/mimic_cxr.yaml": {
        "mimic_cxr": {
            "name": "mimic_cxr",
            "data_type": "imagetext",
            "data_path": "datasets/mimic_train.csv",
            "image_size": "${base.image_size}",
            "text_max_length": "${base.text_max_length}",
            "data_frac": "${base.data_frac}",
        }
    },
    "tokenizer/clinical_bert.yaml": {
        "source": "huggingface",
        "pretrained_model_name_or_path": BIO,
        "cache_dir": "/tmp/huggingface/",
    },
    "transform/clahe.yaml": {
        "train": {
            "Resize": {"size": "${base.image_size}"},
            "RandomResizedCrop": {"size": "${base.image_size}", "scale": [0.8, 1.1]},
            "CLAHE": {"clip_limit": 4.0},
            "ColorJitter": {"brightness": [0.8, 1.2], "contrast": [0.8, 1.2]},
        },
        "valid": {"Resize": {"size": "${base.image_size}"}, "CenterCrop": {"size": "${base.image_size}"}},
        "test": {"Resize": {"size": "${base.image_size}"}, "CenterCrop": {"size": "${base.image_size}"}},
    },
    "optimizer/adamw.yaml": {"name": "adamw", "config": {"lr": 5e-5, "weight_decay": 1e-4}},
    "scheduler/cosine_epoch15_warmup1.yaml": {"name": "cosine", "config": {"total_epochs": 15, "warmup_epochs": 1}},
    "loss/cxr_clip.yaml": {
        "cxr_clip": {"loss_ratio": 1.0, "label_smoothing": 0.0, "i2i_weight": 1.0, "t2t_weight": 0.5}
    },
}


def hydra_config(image_encoder: dict[str, Any], pooling: str = "eos", text_max_length: int = 256) -> dict[str, Any]:
    """The config as cxr-clip's ``train.py`` saves it: composed by Hydra (its compose API) from a config directory
    shaped like cxr-clip's, the ``${now:...}`` resolver evaluated by ``OmegaConf.resolve``, then
    ``convert_dictconfig_to_dict`` (so ``ListConfig`` values survive, their parents up to the root, whose resolver
    cache holds the ``now`` results in a ``defaultdict``)."""
    from hydra import compose, initialize_config_dir

    model = {
        "name": "clip_custom",
        "temperature": 0.07,
        "image_encoder": image_encoder,
        "text_encoder": {
            "source": "huggingface",
            "name": BIO,
            "pretrained": True,
            "gradient_checkpointing": False,
            "pooling": pooling,
            "cache_dir": "/tmp/huggingface/",
            "trust_remote_code": True,
            "mlm_head": True,
        },
        "projection_head": {"name": "linear", "dropout": 0.1, "proj_dim": 512},
    }
    with tempfile.TemporaryDirectory(prefix="medret-hydra-") as tmp:
        for name, content in {**HYDRA_CONFIGS, "model/clip_custom.yaml": model}.items():
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / name).write_text(OmegaConf.to_yaml(OmegaConf.create(content)))
        with initialize_config_dir(version_base=None, config_dir=tmp):
            cfg = compose(config_name="train", overrides=[f"base.text_max_length={text_max_length}"])
    OmegaConf.resolve(cfg)
    return convert_dictconfig_to_dict(cfg)


def image_encoder(kind: str, full: bool) -> dict[str, Any]:
    if kind == "resnet":
        return {"source": "torchvision", "name": "resnet" if full else TINY_RESNET, "pretrained": True}
    return {"source": "huggingface", "name": SWIN_T if full else TINY_SWIN, "pretrained": True, "model_type": "swin"}


def save_tar(path: Path, model: dict[str, torch.Tensor], config: Any, training: tuple | None = None, **extra) -> Path:
    optimizer, scheduler = training or ({"state": {}, "param_groups": []}, {"last_epoch": 0})
    blob = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "config": config, "epoch": 15}
    torch.save({**blob, "train_loss": 1.2345, **extra}, path)
    return path


def write_text_model(directory: Path, words: list[str], bert: dict[str, Any] | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    if bert is not None:
        (directory / "config.json").write_text(json.dumps({"model_type": "bert", **bert}), encoding="utf-8")
    return directory
