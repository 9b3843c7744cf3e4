"""Prepare everything CXR-CLIP's own trainer needs, offline and with random weights (run in the REFERENCE venv).

Writes under ``--work``:

* ``weights/bert/``: a random BERT saved by transformers 4.26.1 (``config.json`` + ``pytorch_model.bin``) and a
  small cased ``vocab.txt`` laid out like Bio_ClinicalBERT's (``[PAD]`` 0, ``[unused1..99]``, ``[UNK]`` 100,
  ``[CLS]`` 101, ``[SEP]`` 102, ``[MASK]`` 103). Like the Hugging Face Bio_ClinicalBERT repository there is no
  ``tokenizer_config.json``, so ``AutoTokenizer`` builds a lower-casing ``BertTokenizerFast``, as it did for the
  authors. The trainer is pointed at this directory with Hydra overrides.
* ``torch_home/hub/checkpoints/resnet50-0676ba61.pth``: a random torchvision ResNet-50 state dict where
  ``resnet50(pretrained=True)`` looks for the ImageNet weights (file name taken from torchvision's own
  ``ResNet50_Weights.IMAGENET1K_V1.url``), so nothing is downloaded.
* ``hf_home/hub/models--microsoft--swin-tiny-patch4-window7-224/`` (``--swin``): a random ``SwinModel`` (swin-tiny
  shape, transformers 4.26.1 layout) in the Hugging Face cache layout, so that ``SwinModel.from_pretrained(
  "microsoft/swin-tiny-patch4-window7-224")`` resolves offline and the checkpoint config keeps the real name.
* ``nltk_data/tokenizers/punkt/PY3/english.pickle``: an untrained ``PunktSentenceTokenizer`` (the trainer calls
  ``nltk.download("punkt")``, which fails offline and returns False, then ``sent_tokenize`` in the training dataset
  needs the file; its result is discarded by the original code, so the model's parameters do not matter).
* ``data/``: a MIMIC-CXR-like training and validation CSV in the column layout of ``datasets/README.md``
  (``image``, ``view``, ``AP``, ``PA``, ``Lateral``, ``text`` = ``[findings, impression]``, ``text_augment``) with
  random radiograph-like greyscale PNGs.
* ``test/``: the inputs the two implementations are compared on: images of awkward geometry (smaller than 224,
  tall and narrow, large, one JPEG), ``mimic_test.csv`` in the eval dataset's layout, and ``reports.json``.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
import transformers
from nltk.tokenize.punkt import PunktSentenceTokenizer
from PIL import Image
from transformers import BertConfig, BertModel, SwinConfig, SwinModel

SWIN_NAME = "microsoft/swin-tiny-patch4-window7-224"
FAKE_COMMIT = "0" * 40  # the snapshot id of the local Hugging Face cache entry (any 40-hex string works offline)

# BERT shapes: "base" is Bio_ClinicalBERT's (bert-base-cased); "small" makes a smaller file and a faster run.
BERT_SHAPES = {
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "small": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
}

_WORDS = (
    "no acute cardiopulmonary process findings impression mild moderate severe cardiac silhouette size normal "
    "enlarged heart lung lungs clear pleural effusion effusions pneumothorax consolidation opacity opacities "
    "atelectasis edema pulmonary vascular congestion left right bilateral base bases basilar upper lower lobe "
    "stable unchanged compared prior study there is are of the and with without in at on to a an as is seen "
    "likely possible small large new interval improvement worsening tube line catheter tip projects over svc "
    "chest radiograph pa lateral ap portable view views year old man woman patient history cm mm nodule mass "
    "fracture rib spine osseous structures intact thoracic aorta tortuous calcified mediastinal contours hilar "
    "diaphragm hemidiaphragm elevated costophrenic angle blunting trace residual focal infiltrate pneumonia "
    "evidence not identified free air under sternotomy wires cabg status post pna"
)
_SUFFIXES = "##es ##ed ##ing ##al ##ly ##ity ##ic ##ous ##er ##ion ##megaly ##thorax ##pulmonary"
_CASED = "Findings Impression No The There Left Right PA AP"  # unreachable after lower-casing, as in a cased vocab
WORDS, SUFFIXES, CASED = _WORDS.split(), _SUFFIXES.split(), _CASED.split()


def vocabulary() -> list[str]:
    """A small cased WordPiece vocabulary with Bio_ClinicalBERT's special-token ids."""
    tokens = ["[PAD]", *[f"[unused{i}]" for i in range(1, 100)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + list("0123456789")
    tokens += list("abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokens += [w for w in dict.fromkeys(WORDS) if len(w) > 1] + SUFFIXES + CASED + ["é", "中", "文"]
    assert len(tokens) == len(set(tokens)), "duplicate vocabulary entries"
    return tokens


def radiograph(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic radiograph-like greyscale image: smooth anatomy, texture, noise and a bright device."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    a = 90 + 80 * np.exp(-((x - 0.5) ** 2 + (y - 0.45) ** 2) / 0.08) + 30 * np.sin(40 * x) * np.cos(30 * y)
    a = a + rng.normal(0, 12, (height, width))
    a[int(0.3 * height) : int(0.5 * height), int(0.2 * width) : int(0.35 * width)] = 250
    return np.clip(a, 0, 255).astype(np.uint8)


def write_bert(directory: Path, shape: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(1)
    model = BertModel(BertConfig(vocab_size=len(vocab), **BERT_SHAPES[shape]))  # with pooler, as AutoModel builds it
    model.save_pretrained(directory)  # config.json + pytorch_model.bin (transformers 4.26: no safetensors)
    print(f"BERT ({shape}, vocab {len(vocab)}) -> {directory}")


def write_resnet(torch_home: Path) -> None:
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url  # what resnet50(pretrained=True) fetches
    target = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(2)
    model = torchvision.models.resnet50(weights=None)
    with torch.no_grad():  # ImageNet-like BatchNorm statistics instead of the init values (0, 1)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand_like(buf) * 0.5 + 0.75)
    torch.save(model.state_dict(), target)
    print(f"ResNet-50 -> {target}")


def write_swin(hf_home: Path) -> None:
    repo = hf_home / "hub" / f"models--{SWIN_NAME.replace('/', '--')}"
    snapshot = repo / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT, encoding="utf-8")
    torch.manual_seed(3)
    SwinModel(SwinConfig()).save_pretrained(snapshot)  # SwinConfig() defaults are swin-tiny-patch4-window7-224
    print(f"Swin-T -> {snapshot}")


def write_punkt(nltk_data: Path) -> None:
    target = nltk_data / "tokenizers" / "punkt" / "PY3" / "english.pickle"  # nltk 3.8.1 loads the PY3/ copy
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as f:
        pickle.dump(PunktSentenceTokenizer(), f)


FINDINGS = [
    "The lungs are clear. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion with basilar atelectasis.",
    "Interval improvement of right upper lobe opacity. Heart size is normal.",
    "ET tube tip projects over the SVC. Lungs: bilateral opacities, likely edema.",
]
IMPRESSIONS = ["No acute cardiopulmonary process.", "Mild pulmonary edema.", "Stable.", "Possible pneumonia."]


def write_training_data(data: Path, n_train: int, n_valid: int) -> None:
    (data / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_train + n_valid):
        h, w = int(rng.integers(256, 320)), int(rng.integers(224, 288))
        path = data / "images" / f"study{i:02d}.png"
        Image.fromarray(radiograph(h, w, seed=100 + i)).save(path)
        findings, impression = FINDINGS[i % len(FINDINGS)], IMPRESSIONS[i % len(IMPRESSIONS)]
        rows.append(
            {
                "image": str([str(path)]),
                "view": str(["PA"]),
                "AP": str([]),
                "PA": str([str(path)]),
                "Lateral": str([]),
                "text": str([findings, impression]),
                # stands in for the back-translated copy (text_augmentation/back_translation.py)
                "text_augment": str([findings.replace("The ", ""), impression.lower()]),
            }
        )
    pd.DataFrame(rows[:n_train]).to_csv(data / "mimic_train.csv")
    pd.DataFrame(rows[n_train:]).to_csv(data / "mimic_valid.csv")
    print(f"training data: {n_train} train + {n_valid} valid studies -> {data}")


# (name, height, width, format): square, smaller than 224, tall and narrow (twice), large, a typical
# 512-short-side file, landscape, and a greyscale JPEG (MIMIC-CXR-JPG is JPEG).
TEST_IMAGES = [
    ("square_224", 224, 224, "png"),
    ("small_150x180", 150, 180, "png"),
    ("tall_narrow_900x300", 900, 300, "png"),
    ("tall_narrow_1200x360", 1200, 360, "png"),  # width/height 0.3 at > 1024 px (Pillow 13 resizes these differently)
    ("large_1000x800", 1000, 800, "png"),
    ("portrait_620x512", 620, 512, "png"),
    ("landscape_300x420", 300, 420, "png"),
    ("jpeg_700x560", 700, 560, "jpg"),
]
REPORTS = [
    "No acute cardiopulmonary process.",
    "FINDINGS: Mild cardiomegaly.  IMPRESSION:\tNo pneumothorax.\n",
    "Left basal opacity, stable. Heart size normal; no effusion.",
    "___ year old man with ___ and ___. s/p CABG, ?PNA",
    "3.5 cm nodule at T11-T12. Réticulo-nodulaire opacités, naïve café.",
    "[SEP] inside [MASK] text [mask] and [CLS]",
    "中文 mixed text \x00\ufffd control\u200b chars",
    "unknownword supercalifragilisticexpialidocious " + "z" * 120,
    "",
    "Bilateral pleural effusions with compressive atelectasis. " * 40,  # > 256 tokens: truncated
]


def write_test_inputs(test: Path) -> None:
    (test / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i, (name, h, w, fmt) in enumerate(TEST_IMAGES):
        path = test / "images" / f"{name}.{fmt}"
        options = {"quality": 90} if fmt == "jpg" else {}
        Image.fromarray(radiograph(h, w, seed=200 + i)).save(path, **options)
        images.append({"name": name, "file": str(path.relative_to(test)), "height": h, "width": w})
    # The eval dataset's layout (configs/data_test/mimic_cxr.yaml, imagetext_eval.py): image path list + one text.
    # Its text column only feeds the eval collate; the reports are embedded from reports.json (Evaluator.encode_text).
    texts = [IMPRESSIONS[i % len(IMPRESSIONS)] for i in range(len(images))]
    paths = [str([str(test.resolve() / im["file"])]) for im in images]  # absolute: the dataset opens them as given
    pd.DataFrame({"image": paths, "text": texts}).to_csv(test / "mimic_test.csv")
    (test / "inputs.json").write_text(json.dumps({"images": images, "reports": REPORTS}, indent=1), encoding="utf-8")
    print(f"test inputs: {len(images)} images, {len(REPORTS)} reports -> {test}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--bert", choices=sorted(BERT_SHAPES), default="base")
    parser.add_argument("--swin", action="store_true", help="also write the Swin-T weights (HF cache layout)")
    args = parser.parse_args()
    assert transformers.__version__ == "4.26.1", transformers.__version__
    work = args.work.resolve()
    write_bert(work / "weights" / "bert", args.bert)
    write_resnet(work / "torch_home")
    if args.swin:
        write_swin(work / "hf_home")
    write_punkt(work / "nltk_data")
    write_training_data(work / "data", n_train=8, n_valid=4)
    write_test_inputs(work / "test")


if __name__ == "__main__":
    main()
