"""Families open_clip, cxr_repair and chexzero against the original pipelines (random weights, offline).

Checkpoints are written exactly as published (see docs in ``medret.models.clip_family``): CXR-RePaiR as
a plain OpenAI-layout state dict with OpenAI's fp16 subset, CheXzero the same in fp32, open_clip's
OpenAI mirror as ``open_clip_model.safetensors`` in a hub cache, OpenAI's original as a TorchScript
archive (tiny architecture). The full-size ViT-B/32 is built once per session.
"""

from __future__ import annotations

import hashlib
import html
import json
import pickle
import re
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ftfy
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers.clip import ARCH, openai_fp16
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image
from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize

import medret.models.clip_family as cf
import medret.models.openclip as oc
from medret.embeddings import needed_image_size
from medret.errors import MedretError
from medret.imaging import decode_to_canvas
from medret.models import ResizeRule, list_families, load_model

TINY = "medret-tiny-quickgelu"
TINY_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
REPORTS = [
    "FINDINGS: No focal consolidation, pleural effusion, or pneumothorax.\nIMPRESSION: NO ACUTE PROCESS.",
    "PA and LAT:  ET tube tip 4.5 cm above the carina;  NG tube -> stomach!!! (?malpositioned)",
    "Mild cardiomegaly &amp; bibasilar atelectasis\u2014right > left; \u201cstable\u201d since 03/12/2019\u2026",
    "Caf\u00e9 r\u00e9sum\u00e9: \u00bd-inch \u00b0 \u00b5 \u2013 \u00c6 \t\t   ",
    "",
    " ".join(["Right-sided PICC line terminates in the mid SVC, unchanged; no pneumothorax."] * 12),
]
SIZES = [(640, 480), (347, 419), (1000, 800)]  # (h, w); int() and round() agree at 320, see test below


# --------------------------------------------------------------------------------------------
# Independent references. Tokens: transformers' own CLIP BPE tokenizer (a separate implementation)
# on the BPE vocabulary that CXR-RePaiR, CheXzero and open_clip share (md5 checked), after the
# original's text cleaning (ftfy, then HTML unescaping twice), which transformers' tokenizer omits.
# Images: CXR-RePaiR's 320-px step as models.md §2 documents it.

CLIP_BPE_MD5 = "933b7abbbbde62c36f02f0e6ccde464f"


@lru_cache
def _reference_tokenizer() -> Any:
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    assert hashlib.md5(path.read_bytes()).hexdigest() == CLIP_BPE_MD5  # models.md §0.4
    shared = SimpleTokenizer(str(path))  # used only to read the vocabulary and merge ranks
    vocab = {**shared.encoder, "<|startoftext|>": 49406, "<|endoftext|>": 49407}
    merges = sorted(shared.bpe_ranks, key=shared.bpe_ranks.get)
    with tempfile.TemporaryDirectory(prefix="clip-bpe-") as tmp:  # the tokenizer reads both files at once
        d = Path(tmp)
        (d / "vocab.json").write_text(json.dumps(vocab))
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))


def original_tokenize(texts: list[str], context_length: int = 77) -> torch.Tensor:
    """Token ids as the original clip.tokenize(truncate=True): SOT, BPE, EOT forced last, zero padding."""
    cleaned = [html.unescape(html.unescape(ftfy.fix_text(t))) for t in texts]
    enc = _reference_tokenizer()(
        cleaned, max_length=context_length, truncation=True, padding="max_length", return_tensors="pt"
    )
    return enc["input_ids"].masked_fill(enc["attention_mask"] == 0, 0)


def original_cxr_preprocess(img: Image.Image, desired_size: int = 320) -> Image.Image:
    """Fit the longest side to 320 with int() sizes (Lanczos), paste centred (// 2) on a black 'L' square."""
    w, h = img.size
    scale = desired_size / max(w, h)
    nw, nh = int(w * scale), int(h * scale)
    canvas = Image.new("L", (desired_size, desired_size), 0)
    canvas.paste(img.resize((nw, nh), Image.Resampling.LANCZOS), ((desired_size - nw) // 2, (desired_size - nh) // 2))
    return canvas


#: Their load-time transform (data/mimic_image_dataset.py); antialias=False is torchvision <= 0.11 on tensors.
ORIGINAL_CXR_TRANSFORM = Compose(
    [
        Normalize((101.48761,) * 3, (83.43944,) * 3),
        Resize(224, interpolation=InterpolationMode.BICUBIC, antialias=False),
    ]
)


def original_cxr_tensor(path: Path) -> torch.Tensor:
    """The CXR-RePaiR pipeline from the source image: 320 pad (PIL, h5 float32), 3 channels, transform."""
    arr = np.array(original_cxr_preprocess(Image.open(path)), dtype=np.float32)
    return ORIGINAL_CXR_TRANSFORM(torch.from_numpy(np.repeat(arr[None], 3, axis=0)))


# --------------------------------------------------------------------------------------------
# Fixtures


def synthetic_radiograph(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A fixed greyscale test image: smooth anatomy-like field, noise, a bright band and a dark line."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = 120 + 80 * np.sin(9 * xx) * np.cos(7 * yy) + 30 * rng.standard_normal((h, w))
    img[h // 4 : h // 3, :] = 250
    img[:, w // 5 : w // 5 + 3] = 5
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(directory: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = directory / f"img{i}_{h}x{w}.png"
        Image.fromarray(synthetic_radiograph(h, w, seed=i)).save(path)
        paths.append(path)
    return paths


def cache_batch(paths: list[Path], size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images as the image cache stores them: (B, S, S) uint8 canvases, (B, 4) content boxes, (B, 2) source sizes."""
    canvases, boxes, sources = zip(*(decode_to_canvas(p, size) for p in paths), strict=True)
    return torch.from_numpy(np.stack(canvases)), torch.tensor(boxes), torch.tensor(sources)


def content_pil(canvas: torch.Tensor, box: torch.Tensor) -> Image.Image:
    top, left, h, w = box.tolist()
    return Image.fromarray(canvas[top : top + h, left : left + w].numpy())


@pytest.fixture(scope="module")
def tiny_arch(module_tmp: Callable[[str], Path]) -> str:
    """Registers two tiny open_clip architectures (QuickGELU and GELU) for fast tests."""
    d = module_tmp("open_clip_configs")
    (d / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    (d / "medret-tiny.json").write_text(json.dumps({**TINY_CFG, "quick_gelu": False}))
    open_clip.add_model_config(d)
    return TINY


@pytest.fixture(scope="module")
def tiny(tiny_arch: str, module_tmp: Callable[[str], Path]) -> SimpleNamespace:
    """A tiny random model (fp16-representable weights) and its weights in every supported file layout."""
    torch.manual_seed(0)
    model = cf.create_open_clip(tiny_arch)
    mixed = openai_fp16(model)
    d = module_tmp("tiny")
    state = OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    torch.save(state, d / "plain.pt")
    from safetensors.torch import save_file

    save_file(dict(state), d / "open_clip_model.safetensors")
    wrapped = {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(wrapped, d / "epoch_3.pt")
    return SimpleNamespace(model=model, state=state, mixed=mixed, dir=d)


@pytest.fixture(scope="module")
def images(module_tmp: Callable[[str], Path]) -> SimpleNamespace:
    paths = write_images(module_tmp("images"), SIZES)
    canvases, boxes, sizes = cache_batch(paths, 320)
    return SimpleNamespace(paths=paths, canvases=canvases, boxes=boxes, sizes=sizes)


@pytest.fixture(scope="module")
def vitb32(module_tmp: Callable[[str], Path]) -> SimpleNamespace:
    """One random full-size ViT-B/32 and its CXR-RePaiR (fp16 subset) and CheXzero (fp32) files."""
    torch.manual_seed(1)
    model = cf.create_open_clip(ARCH)
    mixed = openai_fp16(model)  # the model now holds exactly the fp16-rounded weights, in fp32
    d = module_tmp("vitb32")
    torch.save(mixed, d / "clip-imp-pretrained_128_6_after_4.pt")
    torch.save(model.state_dict(), d / "best_64_5e-05_original_22000_0.864.pt")
    return SimpleNamespace(model=model, mixed=mixed, dir=d)


@pytest.fixture(scope="module")
def reference(vitb32: SimpleNamespace, images: SimpleNamespace) -> SimpleNamespace:
    """Embeddings of the original pipelines: open_clip's model on the original preprocessing and tokens."""
    with torch.inference_mode():
        cxr = torch.stack([original_cxr_tensor(p) for p in images.paths])
        pp = image_transform_v2(
            PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), open_clip.get_pretrained_cfg(ARCH, "openai"))),
            is_train=False,
        )
        oc = torch.stack([pp(content_pil(c, b)) for c, b in zip(images.canvases, images.boxes, strict=True)])
        return SimpleNamespace(
            cxr_images=F.normalize(vitb32.model.encode_image(cxr), dim=-1),
            openai_images=F.normalize(vitb32.model.encode_image(oc), dim=-1),
            texts=F.normalize(vitb32.model.encode_text(original_tokenize(REPORTS)), dim=-1),
        )


@pytest.fixture(scope="module")
def cxr_repair(vitb32: SimpleNamespace):
    path = vitb32.dir / "clip-imp-pretrained_128_6_after_4.pt"
    return load_model({"family": "cxr_repair", "checkpoint": str(path), "device": "cpu", "batch_size": 2})


@pytest.fixture(scope="module")
def chexzero(vitb32: SimpleNamespace):
    path = vitb32.dir / "best_64_5e-05_original_22000_0.864.pt"
    return load_model({"family": "chexzero", "checkpoint": str(path), "device": "cpu"})


def _fake_hub_file(root: Path, repo: str, filename: str) -> Path:
    """Where huggingface_hub's cache keeps ``repo``'s ``filename`` at revision main."""
    base = root / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("a" * 40)
    return snapshot / filename


@pytest.fixture(scope="module")
def openai_hub(vitb32: SimpleNamespace, module_tmp: Callable[[str], Path]):
    """open_clip family with ``pretrained: openai`` resolved from a hub cache holding open_clip's mirror file."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    root = module_tmp("hub")
    target = _fake_hub_file(root, "timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors")
    save_file(vitb32.model.state_dict(), target)  # the mirror is a plain fp32 open_clip-layout state dict
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(root))
        model = load_model({"family": "open_clip", "model": ARCH, "pretrained": "openai", "device": "cpu"})
    return SimpleNamespace(model=model, file=target)


def make_openai_torchscript(state: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive shaped like OpenAI's ViT-B-32.pt: traced, fp16 subset, three int buffers,
    and the text attention mask a plain attribute (not a buffer) as in OpenAI's module."""
    model = open_clip.model.CLIP(**TINY_CFG).eval()
    model.load_state_dict(state)
    open_clip.model.convert_weights_to_lp(model, dtype=torch.float16)
    mask = model.attn_mask
    del model._buffers["attn_mask"]
    model.attn_mask = mask
    for key, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(model, key):
            delattr(model, key)
        model.register_buffer(key, torch.tensor(value))
    image = torch.ones(1, 3, 32, 32, dtype=torch.float16)
    with warnings.catch_warnings():  # deprecation and tracer warnings of torch.jit
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, {"encode_image": (image,)}, check_trace=False)
        torch.jit.save(traced, str(path))


# --------------------------------------------------------------------------------------------
# Tests


def test_families_are_registered():
    fams = list_families()
    assert {"open_clip", "cxr_repair", "chexzero"} <= set(fams)
    assert set(fams["open_clip"].options) == {"model", "checkpoint", "pretrained"}
    assert fams["open_clip"].required == ("model",)
    assert fams["cxr_repair"].required == fams["chexzero"].required == ("checkpoint",)
    assert all(fams[f].train is None for f in ("open_clip", "cxr_repair", "chexzero"))


# (d) tokens ---------------------------------------------------------------------------------


def test_tokens_equal_the_original_tokenizer(tiny_arch):
    expected = original_tokenize(REPORTS)
    assert len(_reference_tokenizer()(REPORTS[-1])["input_ids"]) > 150  # really truncated
    assert expected[-1, -1].item() == 49407 and expected[4, :2].tolist() == [49406, 49407]
    for arch in (ARCH, tiny_arch):  # what every family here uses: open_clip.get_tokenizer(architecture)
        assert torch.equal(open_clip.get_tokenizer(arch)(REPORTS), expected), arch


def test_adapters_tokenize_like_the_original(cxr_repair, chexzero, openai_hub):
    expected = original_tokenize(REPORTS)
    for adapter in (cxr_repair, chexzero, openai_hub.model):
        assert torch.equal(adapter.tokenize(REPORTS), expected), adapter.family


# (c) preprocessing --------------------------------------------------------------------------

# One grey level after normalisation with the smallest OpenAI std. PIL resamples uint8 images in two
# passes with fixed-point coefficients and rounds to uint8 after each; torch rounds once at the end.
# So outputs differ by one level where the exact value is close to .5, by two where both passes round
# the same way (measured: <= 2 levels, <= 2e-5 of pixels at 2, bicubic ~0.5% / bilinear ~22% of pixels at 1).
ONE_GREY = 1 / 255 / min(open_clip.OPENAI_DATASET_STD)


@pytest.mark.parametrize(
    "cfg",
    [
        {"size": 224, "resize_mode": "shortest", "interpolation": "bicubic"},
        {"size": 224, "resize_mode": "longest", "interpolation": "bicubic", "fill_color": 0},
        {"size": 224, "resize_mode": "squash", "interpolation": "bilinear"},
        {"size": (224, 192), "resize_mode": "shortest", "interpolation": "bicubic"},
    ],
    ids=["shortest-bicubic", "longest", "squash-bilinear", "non-square"],
)
def test_open_clip_preprocessing_matches_pil(cfg, tmp_path):
    full = {**merge_preprocess_dict(PreprocessCfg(), {}), **cfg}
    pil = image_transform_v2(PreprocessCfg(**full), is_train=False)
    paths = write_images(tmp_path, [(347, 419), (640, 480), (90, 60), (1000, 800), (256, 256)])
    canvases, boxes, _sizes = cache_batch(paths, 256)
    ours = oc.open_clip_preprocess(canvases, boxes, full)
    ref = torch.stack([pil(content_pil(c, b)) for c, b in zip(canvases, boxes, strict=True)])
    assert ours.shape == ref.shape
    # In grey levels (per channel std), so that one rounding step is 1.0.
    levels = (ours - ref).abs() * torch.tensor(full["std"]).view(1, 3, 1, 1) * 255
    assert levels.max() <= 2.001
    assert (levels > 1.001).float().mean() <= 1e-4
    assert levels.mean() <= 0.25


def test_cxr_preprocessing_matches_the_original_code(tmp_path):
    sizes = [(640, 480), (1000, 800), (347, 419), (999, 777), (2544, 3056), (320, 320), (200, 150)]
    paths = write_images(tmp_path, sizes)
    ref = torch.stack([original_cxr_tensor(p) for p in paths])
    # 1. Given their own 320 canvas, our geometry and arithmetic are theirs, for every size.
    theirs = [np.array(original_cxr_preprocess(Image.open(p))) for p in paths]
    boxes = []
    for h, w in sizes:
        nh, nw = int(h * 320 / max(h, w)), int(w * 320 / max(h, w))
        boxes.append(((320 - nh) // 2, (320 - nw) // 2, nh, nw))
    ours = cf.cxr_preprocess(torch.from_numpy(np.stack(theirs)), torch.tensor(boxes), torch.tensor(sizes))
    assert (ours - ref).abs().max() < 1e-5  # measured 0.0: the same float32 operations
    # 2. From the image cache at 320: their canvas exactly, for every size (the 200 x 150 source is kept at its
    # own size in the cache and enlarged here with their Lanczos, from its original pixels).
    canvases, cboxes, csizes = cache_batch(paths, 320)
    levels = (cf.cxr_preprocess(canvases, cboxes, csizes) - ref).abs() * cf.CXR_STD  # grey levels
    assert levels.max() < 1e-3  # measured 0.0
    # 3. A 512 cache: sources that fit are kept and give their canvas exactly; larger ones are resampled twice
    # (cache Lanczos, then Lanczos to 320). Measured on these noisy images: max 16.0 (at the bright band's
    # edge), mean <= 0.32 grey levels.
    canvases, cboxes, csizes = cache_batch(paths, 512)
    levels = (cf.cxr_preprocess(canvases, cboxes, csizes) - ref).abs() * cf.CXR_STD
    large = [i for i, (h, w) in enumerate(sizes) if max(h, w) > 512]
    small = [i for i in range(len(sizes)) if i not in large]
    assert levels[small].max() < 1e-3
    assert levels[large].amax(dim=(1, 2, 3)).max() < 20
    assert levels[large].mean(dim=(1, 2, 3)).max() < 0.5


# (b) embeddings against open_clip's model on the original pipelines --------------------------


def test_cxr_repair_embeddings_equal_the_original_pipeline(cxr_repair, vitb32, images, reference):
    assert cxr_repair.embed_dim == 512
    assert sum(v.dtype == torch.float16 for v in vitb32.mixed.values()) == 195 and len(vitb32.mixed) == 302
    img = cxr_repair.encode_images(images.canvases, images.boxes, images.sizes)
    txt = cxr_repair.encode_texts(REPORTS)
    # Identical inputs (preprocessing is exact at S=320), so only float32 round-off that depends on the
    # batch size may remain (measured: 0 for images, 1.3e-7 for texts).
    torch.testing.assert_close(img, reference.cxr_images, atol=1e-5, rtol=0)
    torch.testing.assert_close(txt, reference.texts, atol=1e-5, rtol=0)


def test_chexzero_embeddings_equal_the_original_pipeline(chexzero, cxr_repair, images, reference):
    # Same weights (fp32 file vs CXR-RePaiR's fp16 subset of them) and CheXzero's preprocessing is CXR-RePaiR's.
    img = chexzero.encode_images(images.canvases, images.boxes, images.sizes)
    torch.testing.assert_close(img, reference.cxr_images, atol=1e-5, rtol=0)
    torch.testing.assert_close(chexzero.encode_texts(REPORTS[:3]), reference.texts[:3], atol=1e-5, rtol=0)
    # The provenance names the file's content, so the two differ although the weights are equal.
    assert chexzero.spec()["weights"] == hashlib.sha256((Path(chexzero.entry["checkpoint"])).read_bytes()).hexdigest()
    assert "checkpoint" not in chexzero.spec() and chexzero.spec_hash() != cxr_repair.spec_hash()


def test_open_clip_pretrained_from_hub_cache(openai_hub, images, reference):
    model = openai_hub.model
    img = model.encode_images(images.canvases, images.boxes, images.sizes)
    txt = model.encode_texts(REPORTS)
    torch.testing.assert_close(txt, reference.texts, atol=1e-5, rtol=0)  # measured 0
    # Inputs differ by PIL-vs-torch rounding (<= 2 grey levels, ~0.5% of pixels; test above), which
    # moves these unit vectors by 7.8e-5 at most (measured); the bound leaves a 6x margin.
    torch.testing.assert_close(img, reference.openai_images, atol=5e-4, rtol=0)
    spec = model.spec()
    assert spec["weights"] == cf.file_sha256(openai_hub.file) and "checkpoint" not in spec
    assert spec["pretrained"] == "openai" and spec["preprocess"]["interpolation"] == "bicubic"
    assert spec["preprocess"]["resize_mode"] == "shortest" and spec["preprocess"]["size"] == [224, 224]


# (a) strict loading and bad input ------------------------------------------------------------


def test_cxr_repair_load_is_strict(vitb32, tmp_path):
    state = OrderedDict(vitb32.mixed)
    state["visual.extra_head.weight"] = torch.zeros(3)
    del state["ln_final.bias"]
    path = tmp_path / "clip-imp-pretrained_128_6_after_4.pt"
    torch.save(state, path)
    with pytest.raises(
        MedretError,
        match=r"1 missing \(first: ln_final\.bias\); 1 unexpected \(first: visual\.extra_head\.weight\); "
        r"the file looks like an OpenAI-layout CLIP ViT \(width 768, 12 layers, patch 32, 224 px, embed 512\)",
    ):
        load_model({"family": "cxr_repair", "checkpoint": str(path)})


def test_tiny_open_clip_file_layouts_and_reference(tiny, tiny_arch, tmp_path):
    paths = write_images(tmp_path, [(347, 419), (90, 60)])
    canvases, boxes, _sizes = cache_batch(paths, 64)
    ref_model, _, ref_pp = open_clip.create_model_and_transforms(tiny_arch, pretrained=str(tiny.dir / "plain.pt"))
    ref_model.eval()
    with torch.inference_mode():
        x = torch.stack([ref_pp(content_pil(c, b)) for c, b in zip(canvases, boxes, strict=True)])
        ref_img = F.normalize(ref_model.encode_image(x), dim=-1)
        ref_txt = F.normalize(ref_model.encode_text(original_tokenize(REPORTS)), dim=-1)
    results = []
    for name in ("plain.pt", "open_clip_model.safetensors", "epoch_3.pt"):
        model = load_model({"family": "open_clip", "model": tiny_arch, "checkpoint": str(tiny.dir / name)})
        results.append((model.encode_images(canvases, boxes), model.encode_texts(REPORTS)))
    for img, txt in results:
        torch.testing.assert_close(img, results[0][0], atol=0, rtol=0)
        torch.testing.assert_close(txt, ref_txt, atol=1e-6, rtol=0)
    # Same PIL-vs-torch rounding as above at 32 px (measured 1.5e-4).
    torch.testing.assert_close(results[0][0], ref_img, atol=1e-3, rtol=0)


def test_tiny_strict_failures_name_the_keys(tiny, tiny_arch, vitb32, tmp_path):
    def attempt(state, name="x.pt"):
        torch.save(state, tmp_path / name)
        load_model({"family": "open_clip", "model": tiny_arch, "checkpoint": str(tmp_path / name)})

    with pytest.raises(MedretError, match=r"unexpected \(first: surplus\)"):
        attempt({**tiny.state, "surplus": torch.zeros(1)})
    with pytest.raises(MedretError, match=r"missing \(first: visual\.proj\)"):
        attempt({k: v for k, v in tiny.state.items() if k != "visual.proj"})
    wrong = {**tiny.state, "text_projection": torch.zeros(64, 16)}
    with pytest.raises(MedretError, match=r"shape mismatches \(first: text_projection \[64, 16\] vs \[64, 32\]"):
        attempt(wrong)
    # A ViT-B/32 file of another family (CXR-RePaiR's) given to the tiny architecture says what it is.
    big = vitb32.dir / "clip-imp-pretrained_128_6_after_4.pt"
    with pytest.raises(
        MedretError, match=r"shape mismatches .*i\.e\. ViT-B/32 as in OpenAI CLIP, CXR-RePaiR and CheXzero"
    ):
        load_model({"family": "open_clip", "model": tiny_arch, "checkpoint": str(big)})


def test_torchscript_archive_is_read_without_running_it(tiny, tiny_arch, tmp_path, monkeypatch):
    path = tmp_path / "ViT-B-32.pt"
    make_openai_torchscript(tiny.state, path)
    canvases, boxes, _sizes = cache_batch(write_images(tmp_path, [(347, 419), (90, 60)]), 64)
    with monkeypatch.context() as mp:
        mp.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load must not be called"))
        state, torchscript = oc.read_state_dict(path, missing_hint="")
        model = load_model({"family": "open_clip", "model": tiny_arch, "checkpoint": str(path)})
        img, txt = model.encode_images(canvases, boxes), model.encode_texts(REPORTS)
        with pytest.raises(
            MedretError, match=r"the weights in ViT-B-32\.pt \(OpenAI's: .*\) were trained with QuickGELU"
        ):
            load_model({"family": "open_clip", "model": "medret-tiny", "checkpoint": str(path)})
    assert torchscript and oc.is_torchscript_archive(path)
    # The reference reader runs the archive (our own file here): same keys, values and dtypes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        jit_state = torch.jit.load(str(path), map_location="cpu").state_dict()
        ref = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()
    assert set(jit_state) - set(state) == set(oc.NON_WEIGHT_KEYS)
    for key, value in state.items():
        assert value.dtype == jit_state[key].dtype and torch.equal(value, jit_state[key]), key
    fp16 = [k for k, v in state.items() if v.dtype == torch.float16]
    assert fp16 == [k for k, v in tiny.mixed.items() if v.dtype == torch.float16] and len(fp16) > len(state) / 3
    # Embeddings: the same as open_clip's OpenAI loader, and as the plain state dict of these weights.
    with torch.inference_mode():
        ref_txt = F.normalize(ref.encode_text(original_tokenize(REPORTS)), dim=-1)
    torch.testing.assert_close(txt, ref_txt, atol=1e-6, rtol=0)
    plain = load_model({"family": "open_clip", "model": tiny_arch, "checkpoint": str(tiny.dir / "plain.pt")})
    torch.testing.assert_close(img, plain.encode_images(canvases, boxes), atol=0, rtol=0)


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def _torchscript_zip(path: Path, data_pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        zf.writestr("archive/code/__torch__/m.py", "class M(Module):\n  __parameters__ = []\n")
        zf.writestr("archive/version", "3\n")
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_bad_files_are_refused(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def load(family, path, **extra):
        return load_model({"family": family, "checkpoint": str(path), **extra})

    # Missing files name where the weights are published and the config key to set.
    with pytest.raises(
        MedretError,
        match=r"nope\.pt: checkpoint not found; download clip-imp-pretrained_128_6_after_4\.pt from https://stanfordmedicine\.box\.com/.*models\.<name>\.checkpoint",
    ):
        load("cxr_repair", tmp_path / "nope.pt")
    with pytest.raises(
        MedretError,
        match=r"checkpoint not found; download a best_\*\.pt .*drive\.google\.com/drive/folders/1makFLiEMbSleYl",
    ):
        load("chexzero", tmp_path / "nope.pt")
    with pytest.raises(
        MedretError, match=r"not found; download it from https://openaipublic.*ViT-B-32\.pt \(open_clip tag openai\)"
    ):
        load("open_clip", tmp_path / "nope.pt", model=ARCH, pretrained="openai")
    # Truncated files.
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tiny.dir / "plain.pt").read_bytes()[:4000])
    with pytest.raises(MedretError, match=r"truncated\.pt: cannot read checkpoint .*the file is a zip archive cut"):
        load("cxr_repair", truncated)
    short = tmp_path / "short.safetensors"
    short.write_bytes((tiny.dir / "open_clip_model.safetensors").read_bytes()[:4000])
    with pytest.raises(MedretError, match=r"short\.safetensors: cannot read checkpoint"):
        load("chexzero", short)
    # Pickles that would run code: torch.save, a raw pickle, a TorchScript-shaped zip; never executed.
    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.zeros(1), "payload": _Exploit()}, evil)
    evil_raw = tmp_path / "evil.pkl"
    evil_raw.write_bytes(pickle.dumps(_Exploit(), protocol=2))
    evil_raw4 = tmp_path / "evil4.pkl"
    evil_raw4.write_bytes(pickle.dumps(_Exploit(), protocol=4))
    evil_ts = _torchscript_zip(tmp_path / "evil_ts.pt", pickle.dumps(_Exploit(), protocol=2))
    # An archive class called with arguments (REDUCE) only reaches an inert stand-in, which refuses.
    stub_call = _torchscript_zip(tmp_path / "stub.pt", b"\x80\x02c__torch__.m\nM\n(X\x01\x00\x00\x00xtR.")
    for path, reason in (
        (evil, "Unsupported global: GLOBAL exec"),
        (evil_raw, "Unsupported global: GLOBAL exec"),
        (evil_raw4, "Unsupported operand"),  # protocol 4 opcodes are outside the weights-only subset
        (evil_ts, "Unsupported global: GLOBAL exec"),
        (stub_call, "TypeError: ScriptObject"),
    ):
        with pytest.raises(
            MedretError, match=rf"{re.escape(path.name)}: cannot read checkpoint \({reason}.*nothing in it was run"
        ):
            load("cxr_repair", path)
        assert not (tmp_path / "PWNED").exists()
    # Checkpoints of other families.
    from medret.models.local import DEFAULT_TRAIN, LocalCLIP, model_config

    local = {"format": "medret.local/1", "config": model_config(DEFAULT_TRAIN), "vocab": ["a"]}
    local["state_dict"] = LocalCLIP(local["config"], 1).state_dict()
    torch.save(local, tmp_path / "checkpoint.pt")
    with pytest.raises(
        MedretError, match=r"checkpoint\.pt: not a CLIP checkpoint; .*medret local-family .*family local"
    ):
        load("cxr_repair", tmp_path / "checkpoint.pt")
    torch.save({"model": {}, "optimizer": {}, "config": {}, "epoch": 1}, tmp_path / "r50_mcc.tar")
    with pytest.raises(MedretError, match=r"CXR-CLIP \.tar layout"):
        load("chexzero", tmp_path / "r50_mcc.tar")


def test_pretrained_tags_resolve_only_from_the_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's URL cache is ~/.cache/clip
    with pytest.raises(
        MedretError,
        match=r"ViT-B-32-quickgelu/openai are not in the local cache .*"
        r"huggingface\.co/timm/vit_base_patch32_clip_224\.openai "
        r"\(open_clip_model\.safetensors or open_clip_pytorch_model\.bin\) "
        r"and https://openaipublic.*models\.<name>\.checkpoint",
    ):
        load_model({"family": "open_clip", "model": ARCH, "pretrained": "openai"})
    with pytest.raises(MedretError, match=r"'opneai' is not an open_clip tag of ViT-B-32-quickgelu \(tags: openai,"):
        load_model({"family": "open_clip", "model": ARCH, "pretrained": "opneai"})
    with pytest.raises(
        MedretError, match=r"pretrained tag openai were trained with QuickGELU .*use model ViT-B-32-quickgelu"
    ):
        load_model({"family": "open_clip", "model": "ViT-B-32", "pretrained": "openai"})
    with pytest.raises(MedretError, match=r"needs checkpoint or pretrained"):
        load_model({"family": "open_clip", "model": ARCH})
    with pytest.raises(MedretError, match=r"'ViT-B-33' is not an open_clip architecture"):
        load_model({"family": "open_clip", "model": "ViT-B-33", "checkpoint": "x.pt"})
    with pytest.raises(MedretError, match=r"'ViT-B-16-SigLIP' has a Hugging Face text tower or tokenizer"):
        load_model({"family": "open_clip", "model": "ViT-B-16-SigLIP", "checkpoint": "x.pt"})
    with pytest.raises(MedretError, match=r"models\.m\.model is required by family open_clip"):
        load_model({"family": "open_clip", "checkpoint": "x.pt"}, "m")


# (e) QuickGELU: the conversion hint keeps OpenAI's mark; bare files on OpenAI architecture names -----


def test_file_converted_as_the_hint_says_still_needs_quickgelu(tiny, tiny_arch, tmp_path, monkeypatch):
    make_openai_torchscript(tiny.state, tmp_path / "IN.pt")
    code = re.search(r'python -c "(.+?)"', oc._CONVERT_HINT).group(1)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():  # the hint runs torch.jit.load on the user's trusted file (our own here)
        warnings.simplefilter("ignore", FutureWarning)
        exec(code, {})
    state, openai = oc.read_state_dict(tmp_path / "OUT.pt", missing_hint="")
    assert openai and set(state) == set(tiny.state)  # the int entries mark the file, and are not weights
    gelu_json = tmp_path / "medret-tiny-gelu.json"
    gelu_json.write_text(json.dumps({**TINY_CFG, "quick_gelu": False}))
    for model, fix in (
        ("medret-tiny", "use model medret-tiny-quickgelu"),
        (str(gelu_json), 'set "quick_gelu": true in'),
    ):
        with pytest.raises(MedretError, match=rf"OUT\.pt \(OpenAI's: .*trained with QuickGELU .*; {fix}") as err:
            load_model({"family": "open_clip", "model": model, "checkpoint": "OUT.pt"})
        assert "\n" not in str(err.value)
    canvases, boxes, _sizes = cache_batch(write_images(tmp_path, [(90, 60)]), 64)
    converted = load_model({"family": "open_clip", "model": tiny_arch, "checkpoint": "OUT.pt"})
    original = load_model({"family": "open_clip", "model": tiny_arch, "checkpoint": "IN.pt"})
    torch.testing.assert_close(converted.encode_images(canvases, boxes), original.encode_images(canvases, boxes))


@pytest.mark.parametrize("arch", ["ViT-B-32", "RN50", "ViT-L-14-336"])
def test_bare_checkpoint_on_an_openai_gelu_architecture_is_refused(tiny, arch):
    with pytest.raises(
        MedretError,
        match=rf"models\.<name>\.model: {arch} uses GELU, and a checkpoint without a pretrained tag cannot be told "
        rf"apart from OpenAI's QuickGELU weights .*; use model {arch}-quickgelu for OpenAI-derived weights, or set "
        r"models\.<name>\.pretrained to the open_clip tag of GELU-trained weights$",
    ) as err:
        load_model({"family": "open_clip", "model": arch, "checkpoint": str(tiny.dir / "plain.pt")})
    assert "\n" not in str(err.value)
    assert cf.has_openai_weights(arch) and not cf.has_openai_weights("medret-tiny")


# (f) provenance: an edited architecture JSON is another model ----------------------------------


def test_spec_holds_the_architecture_config_not_its_path(tiny, tmp_path):
    arch = tmp_path / "medret-edited.json"
    entry = {"family": "open_clip", "model": str(arch), "checkpoint": str(tiny.dir / "plain.pt")}
    arch.write_text(json.dumps({**TINY_CFG, "quick_gelu": False}))
    gelu = load_model(entry)
    arch.write_text(json.dumps(TINY_CFG))  # the same path, now QuickGELU: other embeddings
    quick = load_model(entry)
    assert gelu.spec()["architecture"]["quick_gelu"] is False and quick.spec()["architecture"]["quick_gelu"] is True
    assert gelu.spec_hash() != quick.spec_hash()
    assert not torch.allclose(gelu.encode_texts(REPORTS[:2]), quick.encode_texts(REPORTS[:2]), atol=1e-4)
    assert load_model(entry).spec_hash() == quick.spec_hash()  # and it is stable


# (g) upsampling: the resize geometry each adapter declares ----------------------------------


def test_upsampling_of_cxr_canvas_families(cxr_repair, chexzero):
    # Their 320-px canvas comes from the longest side, which the cache sets to S: 320 / S when S < 320.
    for model in (cxr_repair, chexzero):
        assert model.upsampling(np.array([[28, 0, 200, 256], [0, 0, 256, 256]]), 256) == 1.25
        assert model.upsampling(np.array([[0, 35, 320, 250]]), 320) == 1.0
        assert model.upsampling(torch.tensor([[0, 0, 512, 400]]), 512) == 1.0  # 0.625: shrinks, not reported
        assert needed_image_size(model, np.array([[28, 0, 200, 256]]), 256) == 320


def test_upsampling_of_open_clip_geometries(tiny, tiny_arch):
    model = load_model({"family": "open_clip", "model": tiny_arch, "checkpoint": str(tiny.dir / "plain.pt")})
    assert model.resize_rule == ResizeRule("shorter", (32, 32))  # the tiny tower's 32 px, shortest side
    boxes = np.array([[0, 5, 30, 20], [0, 0, 30, 30]])
    np.testing.assert_allclose(model.enlargement(boxes, 30), [32 / 20, 32 / 30])
    # At S' = 48 the 20-px side becomes round(20 * 48 / 30) = 32; at 47, round(31.33) = 31.
    assert needed_image_size(model, boxes, 30) == 48
    cases = [  # (preprocess config, box (h, w), factor, description)
        (
            {"size": 224, "resize_mode": "longest"},
            (200, 150),
            1.12,
            "its longer side is resized to 224 px, the cache gives 200 px",
        ),
        ({"size": 224, "resize_mode": "longest"}, (300, 200), 1.0, None),  # min(224/300, 224/200) < 1
        (
            {"size": 224, "resize_mode": "squash"},
            (300, 200),
            1.12,
            "it is resized to 224x224 px (height x width), the cache gives 300x200 px",
        ),
        (
            {"size": (224, 192), "resize_mode": "shortest"},
            (250, 180),
            192 / 180,
            "it is resized to cover 224x192 px (height x width), the cache gives 250x180 px",
        ),
        (
            {"size": 224, "resize_mode": "shortest"},
            (300, 180),
            224 / 180,
            "its shorter side is resized to 224 px, the cache gives 180 px",
        ),
    ]
    for cfg, (h, w), factor, text in cases:
        rule = oc.open_clip_resize_rule(cfg)
        box = np.array([[0, 0, h, w]])
        assert max(1.0, rule.factors(box, 300)[0]) == pytest.approx(factor, abs=1e-12)
        if text is not None:
            assert rule.describe(box[0], 300) == text
