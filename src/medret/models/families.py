"""The built-in model families: names, options, descriptions and where their code lives.

Declarations only, imported by :func:`medret.models.list_families`: checking a config (the workflow
does it on every Snakemake call) reads these and imports no family module, no torch. ``build`` and
``train`` name module-level callables as ``"module:attribute"``, imported when a model is built
or trained. The option texts are the documentation of each family's config keys
(``python -m medret families``); tests check them against the modules' constants.
"""

from __future__ import annotations

from medret.models import Family, register_family

register_family(
    Family(
        name="local",
        build="medret.models.local:LocalAdapter",
        options={
            "checkpoint": "path of the trained checkpoint (set by the workflow for trained models)",
            "train": "training options: dataset, epochs, batch_size, lr, seed, occlusion_augmentation, "
            "input_size, embed_dim, min_count",
        },
        description="the project's small contrastive CNN + bag-of-words model, trained by the workflow",
        required=("checkpoint",),
        train="medret.models.local:train_from_files",
    )
)
register_family(
    Family(
        name="open_clip",
        build="medret.models.clip_family:OpenClipAdapter",
        options={
            "model": "open_clip architecture (open_clip.list_models()), e.g. ViT-B-32-quickgelu; "
            "OpenAI-derived weights need a -quickgelu architecture",
            "checkpoint": "local weights file: a state dict (.pt/.pth/.bin), .safetensors, or an OpenAI "
            "TorchScript .pt (read without running its code)",
            "pretrained": "open_clip pretrained tag (e.g. openai), taken from the local hub cache only; it also "
            "selects the tag's preprocessing (with checkpoint, the file is used as that tag's weights)",
        },
        description="any open_clip CLIP architecture with local weights and open_clip's eval preprocessing",
        required=("model",),
    )
)
register_family(
    Family(
        name="cxr_repair",
        build="medret.models.clip_family:CxrRepairAdapter",
        options={"checkpoint": "path of CXR-RePaiR's clip-imp-pretrained_128_6_after_4.pt"},
        description="CXR-RePaiR (Endo et al. 2021): OpenAI CLIP ViT-B/32 fine-tuned on MIMIC-CXR impressions",
        required=("checkpoint",),
    )
)
register_family(
    Family(
        name="chexzero",
        build="medret.models.clip_family:CheXzeroAdapter",
        options={"checkpoint": "path of a CheXzero best_*.pt checkpoint"},
        description="CheXzero (Tiu et al. 2022): OpenAI CLIP ViT-B/32 fine-tuned on MIMIC-CXR impressions",
        required=("checkpoint",),
    )
)
register_family(
    Family(
        name="biomedclip",
        build="medret.models.biomedclip:BiomedClipAdapter",
        options={
            # biomedclip.REPO, CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE
            "checkpoint": "directory in the microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 layout: "
            "open_clip_config.json, open_clip_pytorch_model.bin and BiomedBERT's vocab.txt "
            "(optionally tokenizer_config.json, config.json); a hub-cache snapshot directory works",
        },
        description="BiomedCLIP (Zhang et al. 2023): timm ViT-B/16 + BiomedBERT, CLIP-trained on PMC-15M figures",
        required=("checkpoint",),
    )
)
register_family(
    Family(
        name="medclip",
        build="medret.models.medclip:MedCLIPAdapter",
        options={
            "variant": "vit (Swin-T image tower) or resnet (ResNet-50), matching the checkpoint",
            "checkpoint": "MedCLIP's pytorch_model.bin, extracted from medclip-vit-pretrained.zip or "
            "medclip-pretrained.zip (storage.googleapis.com/pytrial/)",
            "text_model": "directory with Bio_ClinicalBERT's vocab.txt (+ optional config.json), from "
            "huggingface.co/emilyalsentzer/Bio_ClinicalBERT",
            # medclip.DEFAULT_MAX_LENGTH
            "max_length": "tokens per report, truncated and padded to this length (default 77)",
        },
        description="MedCLIP (Wang et al. 2022): Swin-T or ResNet-50 + Bio_ClinicalBERT, MIMIC-CXR + CheXpert",
        required=("variant", "checkpoint", "text_model"),
    )
)
register_family(
    Family(
        name="cxr_clip",
        build="medret.models.cxr_clip:CxrClipAdapter",
        options={
            "checkpoint": "released CXR-CLIP file r50_{m,mc,mcc}.tar or swint_{m,mc,mcc}.tar "
            "(github.com/kakaobrain/cxr-clip)",
            "text_model": "local directory with Bio_ClinicalBERT's vocab.txt (and optionally config.json) from "
            "huggingface.co/emilyalsentzer/Bio_ClinicalBERT",
            "max_length": "report truncation in tokens (default: the checkpoint's base.text_max_length, 256)",
        },
        description="CXR-CLIP (You et al. 2023): ResNet-50 or Swin-T + Bio_ClinicalBERT, 512-d",
        required=("checkpoint", "text_model"),
    )
)
register_family(
    Family(
        name="biovil",
        build="medret.models.biovil:BioViLAdapter",
        options={
            "biovil_version": "biovil (BioViL: ResNet-50, crop 480) or biovil_t (BioViL-T single-image path, crop "
            "448), matching the checkpoint",
            "checkpoint": "image weights: biovil_image_resnet50_proj_size_128.pt (huggingface.co/microsoft/"
            "BiomedVLP-CXR-BERT-specialized, v1.1) or biovil_t_image_model_proj_size_128.pt (huggingface.co/"
            "microsoft/BiomedVLP-BioViL-T, v1.0)",
            "text_model": "directory with the same repository's config.json, pytorch_model.bin and vocab.txt "
            "(CXR-BERT; never run as remote code)",
        },
        description="BioViL / BioViL-T (Microsoft, 2022/2023): ResNet-50 + CXR-BERT, 128-d, MIMIC-CXR",
        required=("biovil_version", "checkpoint", "text_model"),
    )
)
register_family(
    Family(
        name="transformers",
        build="medret.models.hf_transformers:TransformersAdapter",
        options={
            # hf_transformers.SUPPORTED, CONFIG_FILE, PREPROCESSOR_FILE
            "checkpoint": "local directory in the Hugging Face layout of a CLIPModel or SiglipModel (model_type "
            "clip or siglip): config.json, model.safetensors or pytorch_model.bin (or their sharded index), tokenizer "
            "files, preprocessor_config.json; e.g. hf download google/medsiglip-448 --local-dir DIR; "
            "custom code (auto_map) is never run",
        },
        description="Hugging Face transformers dual encoders (CLIP, SigLIP: PubMedCLIP, MedSigLIP) with their own "
        "image processor and tokenizer",
        required=("checkpoint",),
    )
)
