"""A tiny BiomedCLIP directory in the published hub layout (open_clip and BERT configs, vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

PUBLISHED_CFG = {  # models.md §7, pinned
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {
            "timm_model_name": "vit_base_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
            "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 256,
        },
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}
TINY_CONTEXT = 24
TINY_CFG = json.loads(json.dumps(PUBLISHED_CFG))
TINY_CFG["model_cfg"]["embed_dim"] = 16
TINY_CFG["model_cfg"]["vision_cfg"].update(timm_model_name="test_vit", image_size=64)
TINY_CFG["model_cfg"]["text_cfg"]["context_length"] = TINY_CONTEXT
WORDS = [
    "no",
    "acute",
    "cardio",
    "##pulmonary",
    "process",
    "focal",
    "consolidation",
    "pleural",
    "effusion",
    "or",
    "pneumo",
    "##thorax",
    "impression",
    "findings",
    "et",
    "tube",
    "tip",
    "cm",
    "above",
    "the",
    "carina",
    "ng",
    "stomach",
    "mild",
    "##megaly",
    "and",
    "bi",
    "##basilar",
    "ate",
    "##lect",
    "##asis",
    "right",
    "left",
    "stable",
    "since",
    "cafe",
    "resume",
    "inch",
    "picc",
    "line",
    "in",
    "mid",
    "svc",
    "unchanged",
    "is",
    "##s",
    "##ed",
]
PUNCT = list(".,;:!?()-<>&/\"'0123456789")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PUNCT, *WORDS]
TINY_BERT = {
    "model_type": "bert",
    "architectures": ["BertForMaskedLM"],
    "vocab_size": len(VOCAB) + 3,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 48,
    "hidden_act": "gelu",
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}
TOKENIZER_CFG = {"do_lower_case": True, "model_max_length": 1000000000000000019884624838656}


def write_layout(d: Path, cfg: dict, state: dict | None) -> Path:
    assert len(set(VOCAB)) == len(VOCAB)
    d.mkdir(parents=True, exist_ok=True)
    (d / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CFG))
    (d / "config.json").write_text(json.dumps(TINY_BERT))
    if state is not None:
        torch.save(state, d / "open_clip_pytorch_model.bin")
    return d
