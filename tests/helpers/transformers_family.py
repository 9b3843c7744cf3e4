"""Tiny Hugging Face CLIP and SigLIP directories in PubMedCLIP's and MedSigLIP's published layouts."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import torch

REPORTS = [
    "FINDINGS: No focal consolidation, pleural effusion, or pneumothorax.\nIMPRESSION: NO ACUTE PROCESS.",
    "PA and LAT:  ET tube tip 4.5 cm above the carina;  NG tube -> stomach!!! (?malpositioned)",
    "Mild cardiomegaly &amp; bibasilar atelectasis\u2014right > left; \u201cstable\u201d since 03/12/2019\u2026",
    "Caf\u00e9 r\u00e9sum\u00e9: \u00bd-inch \u00b0 \u00b5 \u2013 \u00c6 \t\t   ",
    "",
    " ".join(["Right-sided PICC line terminates in the mid SVC, unchanged; no pneumothorax."] * 12),
]
PUBMEDCLIP_TOKENIZER_CONFIG = {  # the published file (commit ed5c719), verbatim
    "unk_token": {
        "content": "<|endoftext|>",
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": True,
        "__type": "AddedToken",
    },
    "bos_token": {
        "content": "<|startoftext|>",
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": True,
        "__type": "AddedToken",
    },
    "eos_token": {
        "content": "<|endoftext|>",
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": True,
        "__type": "AddedToken",
    },
    "pad_token": "<|endoftext|>",
    "add_prefix_space": False,
    "errors": "replace",
    "do_lower_case": True,
    "name_or_path": "./clip_ViT_B_32/",
}
CLIP_SIDE = 64
PUBMEDCLIP_PREPROCESSOR = {  # the published file with 224 scaled to the tiny tower
    "crop_size": CLIP_SIDE,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": CLIP_SIDE,
}
SIGLIP_SIDE = 48
SIGLIP_CONTEXT = 64
SIGLIP_PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "SiglipProcessor",
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": SIGLIP_SIDE, "width": SIGLIP_SIDE},
}


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Random weights that are not the init's (non-trivial LayerNorms and biases)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _clip_bpe_files(directory: Path) -> int:
    """vocab.json + merges.txt of OpenAI's CLIP BPE (open_clip's copy), as in openai/clip-vit-base-patch32."""
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as f:
        merges = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    units = list(bytes_to_unicode().values())
    vocab = [*units, *(u + "</w>" for u in units), *("".join(m.split()) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return len(vocab)


def write_clip(directory: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel

    directory.mkdir(parents=True)
    vocab = _clip_bpe_files(directory)
    (directory / "tokenizer_config.json").write_text(json.dumps(PUBMEDCLIP_TOKENIZER_CONFIG))
    special = {k: PUBMEDCLIP_TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    special = {
        k: {a: b for a, b in v.items() if a != "__type"} if isinstance(v, dict) else v for k, v in special.items()
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    (directory / "preprocessor_config.json").write_text(json.dumps(PUBMEDCLIP_PREPROCESSOR))
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, patch_size=16)
    config = CLIPConfig(
        text_config={**text, "max_position_embeddings": 77, "hidden_act": "quick_gelu"},
        vision_config={**vision, "image_size": CLIP_SIDE, "hidden_act": "quick_gelu"},
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    perturb(model, 1)
    model.save_pretrained(directory)
    # PubMedCLIP publishes pytorch_model.bin (transformers 5 writes only safetensors), written by an older
    # transformers whose position_ids buffers were persistent.
    (directory / "model.safetensors").unlink()
    state = dict(model.state_dict())
    for tower in ("text_model", "vision_model"):
        n = state[f"{tower}.embeddings.position_embedding.weight"].shape[0]
        state[f"{tower}.embeddings.position_ids"] = torch.arange(n)[None]
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def _siglip_tokenizer(directory: Path) -> int:
    """A SigLIP-like Unigram tokenizer (Metaspace, lower case, ``</s>`` appended and padding), saved by transformers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator([r.lower() for r in REPORTS[:4]] * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>", model_max_length=SIGLIP_CONTEXT
    )
    fast.save_pretrained(directory)
    cfg = json.loads((directory / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "TokenizersBackend"
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tok.get_vocab_size()


def write_siglip(directory: Path) -> Path:
    from transformers import SiglipConfig, SiglipModel

    directory.mkdir(parents=True)
    vocab = _siglip_tokenizer(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(SIGLIP_PREPROCESSOR))
    common = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    config = SiglipConfig(
        text_config={**common, "vocab_size": vocab, "max_position_embeddings": SIGLIP_CONTEXT, "pad_token_id": 1},
        vision_config={**common, "image_size": SIGLIP_SIDE, "patch_size": 8},
    )
    torch.manual_seed(0)
    model = SiglipModel(config).eval()
    perturb(model, 2)
    model.save_pretrained(directory)  # model.safetensors
    return directory
