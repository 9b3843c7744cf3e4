"""Embed the test inputs with CXR-CLIP's own evaluation code (run in the REFERENCE venv, from the clone's code).

Everything model-related is CXR-CLIP's: the eval config is composed by Hydra from the clone's ``configs/eval_clip.yaml``
(``transform: default``: Resize(224), CenterCrop(224)); ``cxrclip.evaluator.Evaluator`` reads the checkpoint, builds
its ``DataModule`` (tokenizer from the checkpoint config, ``ImageTextEvalDataset``: ``Image.open().convert("RGB")``,
the transforms, Normalize with ImageNet statistics for ``resnet`` as its ``normalize`` rule says, else 0.5/0.5) and
the model (``build_model``); the weights are loaded as ``Evaluator.evaluate_clip`` does
(``load_state_dict(ckpt["model"], strict=False)``, then ``eval()``); images go through ``Evaluator.encode_image``
batch by batch from the test dataloader, reports through ``Evaluator.encode_text`` (a list of strings: the tokenizer
with ``padding="longest"``, ``truncation=True``, ``max_length=base.text_max_length``). Both return L2-normalised
embeddings.

``Evaluator`` calls ``torch.load(path)`` without ``weights_only``; under torch >= 2.6 that means ``weights_only=True``,
which refuses the file (see inspect_checkpoint.py), so run.sh sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for this
script only: torch's documented switch back to the old default the authors' torch 2.0.1 had.

Writes ``reference.npz`` (image/text embeddings, the network input pixels, token ids and masks) and
``reference.json`` (metadata) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="the CXR-CLIP clone (its code and configs are used)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="model-last.tar written by its train.py")
    parser.add_argument("--test", type=Path, required=True, help="the test directory written by prepare.py")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") != "1":
        sys.exit("set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1: cxrclip/evaluator.py calls torch.load without weights_only")
    repo = args.repo.resolve()
    sys.path.insert(0, str(repo))  # import cxrclip from the clone, as its scripts do

    import transformers
    from cxrclip.evaluator import Evaluator
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    inputs = json.loads((args.test / "inputs.json").read_text(encoding="utf-8"))
    overrides = [
        "data_test=[mimic_cxr]",  # configs/data_test/mimic_cxr.yaml: data_type imagetext_eval
        f"data_test.mimic_cxr.data_path={(args.test / 'mimic_test.csv').resolve()}",
        f"test.checkpoint={args.checkpoint.resolve()}",
        "dataloader.test.num_workers=0",
        "dataloader.test.batch_size=4",  # > 1 batch: batching as in a real evaluation
    ]
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base=None):
        cfg = compose(config_name="eval_clip", overrides=overrides)
    OmegaConf.resolve(cfg)
    config = OmegaConf.to_container(cfg)  # as evaluate_clip.py: cfg_dict = OmegaConf.to_container(cfg)

    evaluator = Evaluator(config, [str(args.checkpoint)])
    # Evaluator.evaluate_clip's loading step (it discards load_state_dict's report; it is kept here).
    ckpt = torch.load(args.checkpoint, map_location="cpu")
    report = evaluator.model.load_state_dict(ckpt["model"], strict=False)
    evaluator.model.eval()

    images, pixels = [], []
    for batch in evaluator.test_dataloader_dict["mimic_cxr"]:
        images.append(evaluator.encode_image(batch["images"]))
        pixels.append(batch["images"].numpy())
    image_emb, pixels_all = np.concatenate(images), np.concatenate(pixels)

    reports = inputs["reports"]
    text_emb = evaluator.encode_text(reports)
    max_length = evaluator.ckpt_config["base"]["text_max_length"]
    tokens = evaluator.datamodule.tokenizer(
        reports, padding="longest", truncation=True, return_tensors="np", max_length=max_length
    )

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out / "reference.npz",
        image_emb=image_emb.astype(np.float32),
        text_emb=text_emb.astype(np.float32),
        pixels=pixels_all.astype(np.float32),
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
    )
    tokenizer = evaluator.datamodule.tokenizer
    model_cfg = evaluator.ckpt_config["model"]
    meta = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "images": [im["name"] for im in inputs["images"]],
        "n_reports": len(reports),
        "checkpoint_keys": len(ckpt["model"]),
        "missing_keys": list(report.missing_keys),
        "unexpected_keys": list(report.unexpected_keys),
        "image_encoder": model_cfg["image_encoder"]["name"],
        "pooling": model_cfg["text_encoder"]["pooling"],
        "normalize": evaluator.datamodule.datasets["test"][0].normalize,
        "transform_test": evaluator.config["transform"]["test"],
        "tokenizer": f"{type(tokenizer).__name__} (do_lower_case={getattr(tokenizer, 'do_lower_case', '?')})",
        "text_max_length": max_length,
        "epoch": ckpt["epoch"],
    }
    (args.out / "reference.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
