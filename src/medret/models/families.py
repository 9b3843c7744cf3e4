"""The built-in model families: one declaration each (options, files, resize rule, where the code lives).

Declarations only, imported by :func:`medret.models.list_families`: checking a config (the workflow
does it on every Snakemake call) reads these and imports no family module, no torch. ``build`` and
``train`` name module-level callables as ``"module:attribute"``, imported when a model is built or
trained. Each option's schema, default and description are the config's (validation assembles a
model entry's schema from them) and the documentation's (``python -m medret families``); the family
modules read their defaults from here. A family in another package declares itself the same way,
through an entry point (:mod:`medret.plugins`).
"""

from __future__ import annotations

from medret.models import Family, register_family
from medret.models.geometry import ResizeRule
from medret.plugins import Option

BIO_CLINICALBERT = "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT"
_STRING = {"type": "string"}
_TOKENS = {"type": "integer", "minimum": 2, "maximum": 512}


def _bio_clinicalbert(family: str) -> Option:
    return Option(
        f"directory holding Bio_ClinicalBERT's vocab.txt (and optionally config.json) from {BIO_CLINICALBERT}; "
        f"no pip package ships this vocabulary ({family})",
        _STRING,
        required=True,
        path="directory",
        published=("bio-clinicalbert-vocab", "bio-clinicalbert-config"),
        where=BIO_CLINICALBERT,
    )


register_family(
    Family(
        name="local",
        build="medret.models.local:LocalAdapter",
        description="the project's small contrastive CNN + bag-of-words model, trained by the workflow",
        options={
            "checkpoint": Option(
                "path of a trained checkpoint; set by the workflow for a model with `train` "
                "(results/models/<name>/checkpoint.pt); give it to evaluate an existing file instead",
                _STRING,
                path="file",
            ),
            "train": Option(
                "train the model in the workflow on a dataset's train split",
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["dataset"],
                    "properties": {
                        "dataset": {"type": "string", "description": "name of a dataset whose train_split is used"},
                        "epochs": {"type": "integer", "minimum": 1, "default": 30, "description": "training epochs"},
                        "batch_size": {
                            "type": "integer",
                            "minimum": 2,
                            "default": 128,
                            "description": "pairs per step (the InfoNCE batch)",
                        },
                        "lr": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "default": 0.002,
                            "description": "peak learning rate of the one-cycle schedule (Adam)",
                        },
                        "seed": {
                            "type": "integer",
                            "default": 0,
                            "description": "seed of initialisation, shuffling and augmentation",
                        },
                        "occlusion_augmentation": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 1,
                            "default": 0.0,
                            "description": "probability that a training image is covered by a black square of "
                            "random area in [0, 0.9]",
                        },
                        "input_size": {
                            "type": "integer",
                            "minimum": 16,
                            "default": 96,
                            "description": "side of the image tower's input (the cache is resized to it)",
                        },
                        "embed_dim": {
                            "type": "integer",
                            "minimum": 2,
                            "default": 128,
                            "description": "size of the joint embedding",
                        },
                        "min_count": {
                            "type": "integer",
                            "minimum": 1,
                            "default": 2,
                            "description": "minimum number of training reports a token must appear in to enter "
                            "the vocabulary",
                        },
                    },
                },
            ),
        },
        resize="the whole padded canvas to the checkpoint's input_size",
        train="medret.models.local:train_from_files",
    )
)
register_family(
    Family(
        name="open_clip",
        build="medret.models.clip_family:OpenClipAdapter",
        description="any open_clip CLIP architecture with local weights and open_clip's eval preprocessing",
        options={
            "model": Option(
                "open_clip architecture name (open_clip.list_models()) or the path of an open_clip JSON model "
                "config, e.g. ViT-B-32-quickgelu; weights derived from OpenAI CLIP (OpenAI, CXR-RePaiR, CheXzero) "
                "need a -quickgelu architecture",
                _STRING,
                required=True,
            ),
            "checkpoint": Option(
                "local weights file: a state dict (.pt/.pth/.bin), .safetensors, or an OpenAI TorchScript .pt "
                "(read without running its code)",
                _STRING,
                path="file",
                published=("clip-vit-b-32-openai",),
            ),
            "pretrained": Option(
                "open_clip pretrained tag (e.g. openai), taken from the local Hugging Face hub cache or "
                "~/.cache/clip only (nothing is downloaded); it also selects the tag's preprocessing (with "
                "checkpoint, the file is used as that tag's weights)",
                _STRING,
            ),
        },
        resize="open_clip's preprocess config of the architecture or tag (resize_mode, size)",
    )
)
register_family(
    Family(
        name="cxr_repair",
        build="medret.models.clip_family:CxrRepairAdapter",
        description="CXR-RePaiR (Endo et al. 2021): OpenAI CLIP ViT-B/32 fine-tuned on MIMIC-CXR impressions",
        options={
            "checkpoint": Option(
                "CXR-RePaiR's clip-imp-pretrained_128_6_after_4.pt (an OpenAI-layout state dict)",
                _STRING,
                required=True,
                path="file",
                published=("cxr-repair",),
                where="https://stanfordmedicine.box.com/s/dbebk0jr5651dj8x1cu6b6kqyuuvz3ml",
            )
        },
        resize=ResizeRule("longer", (320, 320)),  # their 320-px canvas from the longer side
    )
)
register_family(
    Family(
        name="chexzero",
        build="medret.models.clip_family:CheXzeroAdapter",
        description="CheXzero (Tiu et al. 2022): OpenAI CLIP ViT-B/32 fine-tuned on MIMIC-CXR impressions",
        options={
            "checkpoint": Option(
                "a CheXzero best_*.pt checkpoint, e.g. best_64_5e-05_original_22000_0.864.pt",
                _STRING,
                required=True,
                path="file",
                published=("chexzero",),
                where="https://drive.google.com/drive/folders/1makFLiEMbSleYltaRxw81aBhEDMpVwno",
            )
        },
        resize=ResizeRule("longer", (320, 320)),
    )
)
register_family(
    Family(
        name="biomedclip",
        build="medret.models.biomedclip:BiomedClipAdapter",
        description="BiomedCLIP (Zhang et al. 2023): timm ViT-B/16 + BiomedBERT, CLIP-trained on PMC-15M figures",
        options={
            # biomedclip.REPO, CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE
            "checkpoint": Option(
                "directory in the microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 layout: "
                "open_clip_config.json, open_clip_pytorch_model.bin and BiomedBERT's vocab.txt (optionally "
                "tokenizer_config.json, config.json); a hub-cache snapshot directory works",
                _STRING,
                required=True,
                path="directory",
                published=("biomedclip-open-clip-pytorch-model", "biomedclip-open-clip-config", "biomedclip-vocab"),
            ),
        },
        resize="the directory's open_clip_config.json (its preprocess_cfg)",
    )
)
register_family(
    Family(
        name="medclip",
        build="medret.models.medclip:MedCLIPAdapter",
        description="MedCLIP (Wang et al. 2022): Swin-T or ResNet-50 + Bio_ClinicalBERT, MIMIC-CXR + CheXpert",
        options={
            "variant": Option(
                "image tower of the checkpoint: vit (Swin-T) or resnet (ResNet-50)",
                {"type": "string", "enum": ["vit", "resnet"]},
                required=True,
            ),
            "checkpoint": Option(
                "MedCLIP's pytorch_model.bin, extracted from medclip-vit-pretrained.zip or medclip-pretrained.zip "
                "(storage.googleapis.com/pytrial/)",
                _STRING,
                required=True,
                path="file",
                published=("medclip-vit", "medclip-resnet"),
            ),
            "text_model": _bio_clinicalbert("medclip"),
            "max_length": Option(
                "tokens per report (with [CLS] and [SEP]); every report is truncated and padded to it, as MedCLIP "
                "was trained",
                _TOKENS,
                default=77,
            ),
        },
        resize=ResizeRule("canvas", (224, 224)),  # its max(224, w, h) square to 224
    )
)
register_family(
    Family(
        name="cxr_clip",
        build="medret.models.cxr_clip:CxrClipAdapter",
        description="CXR-CLIP (You et al. 2023): ResNet-50 or Swin-T + Bio_ClinicalBERT, 512-d",
        options={
            "checkpoint": Option(
                "a released CXR-CLIP file r50_{m,mc,mcc}.tar or swint_{m,mc,mcc}.tar (github.com/kakaobrain/"
                "cxr-clip), read by a restricted unpickler",
                _STRING,
                required=True,
                path="file",
                published=tuple(f"cxr-clip-{a}-{d}" for a in ("r50", "swint") for d in ("m", "mc", "mcc")),
            ),
            "text_model": _bio_clinicalbert("cxr_clip"),
            "max_length": Option(
                "report truncation in tokens (default: the checkpoint's base.text_max_length, 256)", _TOKENS
            ),
        },
        resize=ResizeRule("shorter", (224, 224)),
    )
)
register_family(
    Family(
        name="biovil",
        build="medret.models.biovil:BioViLAdapter",
        description="BioViL / BioViL-T (Microsoft, 2022/2023): ResNet-50 + CXR-BERT, 128-d, MIMIC-CXR",
        options={
            "biovil_version": Option(
                "biovil (BioViL: ResNet-50, crop 480) or biovil_t (BioViL-T single-image path, crop 448), "
                "matching the checkpoint",
                {"type": "string", "enum": ["biovil", "biovil_t"]},
                required=True,
            ),
            "checkpoint": Option(
                "image weights: biovil_image_resnet50_proj_size_128.pt (huggingface.co/microsoft/"
                "BiomedVLP-CXR-BERT-specialized, v1.1) or biovil_t_image_model_proj_size_128.pt (huggingface.co/"
                "microsoft/BiomedVLP-BioViL-T, v1.0)",
                _STRING,
                required=True,
                path="file",
                published=("biovil-image", "biovil-t-image"),
            ),
            "text_model": Option(
                "directory with the same repository's config.json, pytorch_model.bin and vocab.txt (CXR-BERT; "
                "never run as remote code)",
                _STRING,
                required=True,
                path="directory",
                published=tuple(
                    f"{p}-text-{f}" for p in ("biovil", "biovil-t") for f in ("config", "pytorch-model", "vocab")
                ),
            ),
        },
        resize=ResizeRule("shorter", (512, 512)),
    )
)
register_family(
    Family(
        name="transformers",
        build="medret.models.hf_transformers:TransformersAdapter",
        description="Hugging Face transformers dual encoders (CLIPModel, SiglipModel), e.g. MedSigLIP and PubMedCLIP",
        options={
            # hf_transformers.SUPPORTED, CONFIG_FILE, PREPROCESSOR_FILE
            "checkpoint": Option(
                "local directory in the Hugging Face layout of a CLIPModel or SiglipModel (model_type clip or "
                "siglip): config.json, model.safetensors or pytorch_model.bin (or their sharded index), tokenizer "
                "files, preprocessor_config.json; e.g. `hf download google/medsiglip-448 --local-dir DIR`; custom "
                "code (auto_map) is refused",
                _STRING,
                required=True,
                path="directory",
                published=(
                    *(f"pubmed-clip-{f}" for f in ("config", "preprocessor-config", "tokenizer-config", "vocab")),
                    "pubmed-clip-merges",
                    "pubmed-clip-pytorch-model",
                    "medsiglip-448",
                ),
            ),
        },
        resize="the directory's preprocessor_config.json (size: shortest_edge or height/width)",
    )
)
