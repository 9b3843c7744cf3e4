"""Family medclip against MedCLIP's original code paths (random weights, offline).

Checkpoints are written the way the release was: a plain ``torch.save`` state dict of
``MedCLIPModel`` in the transformers-4.24 layout, as ``pytorch_model.bin`` (434 keys for vit,
521 for resnet). transformers 4.24 is not installed, so the test builds the towers directly from
transformers 5 / torchvision classes with random weights, puts them under MedCLIP's prefixes, and
turns the keys back into the old layout: Swin block keys are renamed back, and the old persistent
buffers (``embeddings.position_ids``, 12 Swin ``relative_position_index``) are added with their
values, computed here with the original formulas.

The reference forward passes below are written from ``medclip/modeling_medclip.py``,
``medclip/dataset.py`` and ``medclip/constants.py`` (RyanWangZf/MedCLIP@9c3396f). They use the
test's own tower objects, never medret's model.

Full-size towers are built once per session. The two ~0.5 GB checkpoint files are deleted at
session end. Files that only need the right key names and shapes (for refusal tests) use
stride-0 tensors and take a few bytes.
"""

from __future__ import annotations

import builtins
import json
import pickle
import shutil
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from helpers.medclip import build_towers, new_layout, old_layout, relative_position_index, write_vocab  # noqa: E402
from transformers import BertTokenizer  # noqa: E402

import medret.models.medclip as mc  # noqa: E402
from medret.embeddings import needed_image_size  # noqa: E402
from medret.errors import MedretError  # noqa: E402
from medret.imaging import decode_to_canvas  # noqa: E402
from medret.models import list_families, load_model  # noqa: E402
from medret.models.bert import read_vocab  # noqa: E402

# medclip/constants.py
IMG_MEAN = 0.5862785803043838
IMG_STD = 0.27950088968644304
GREY_LEVEL = 1 / 255 / IMG_STD  # one 8-bit grey level in normalised units (0.01403)
# Embeddings are unit vectors; medret's and the reference pass use the same kernels, so only
# float32 summation order can differ (measured max |diff|: images 0, texts 6.7e-8).
EMB_ATOL = 1e-5


REPORTS = [
    "FINDINGS: NO ACUTE CARDIOPULMONARY PROCESS.\nIMPRESSION: No pleural effusion or pneumothorax.",
    "ET tube tip 4.5 cm above the carina;  NG tube -> stomach!!! (?malpositioned)",
    "Mild cardiomegaly &amp; bibasilar atelectasis\u2014right > left; \u201cstable\u201d since 03/12/2019\u2026",
    "Caf\u00e9 r\u00e9sum\u00e9: \u00bd-inch \u00b0 \u00b5 \u2013 \u00c6 \t\t   ",
    "",
    "\x00\x07 Heart\u200b size is NORMAL. \u80ba lungs are clear",
    " ".join(["Right-sided PICC line terminates in the mid SVC, unchanged; no pneumothorax."] * 12),
]


# --------------------------------------------------------------------------------------------
# Fixtures: vocabulary, towers, original-layout checkpoints


@pytest.fixture(scope="module")
def vocab_dir(module_tmp: Callable[[str], Path]) -> Path:
    directory = module_tmp("Bio_ClinicalBERT")
    write_vocab(directory)
    # Bio_ClinicalBERT's config.json (HF emilyalsentzer/Bio_ClinicalBERT).
    config = {
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "type_vocab_size": 2,
        "vocab_size": 28996,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def towers() -> SimpleNamespace:
    """MedCLIP's towers with random weights, built once."""
    return build_towers()


def shapes_only(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Same names, shapes and dtypes with stride-0 storage (a few bytes on disk)."""
    return OrderedDict((k, torch.zeros((), dtype=v.dtype).expand(v.shape)) for k, v in state.items())


@pytest.fixture(scope="module")
def checkpoints(towers: SimpleNamespace, module_tmp: Callable[[str], Path]):
    """``{variant: SimpleNamespace(path, new, old)}``: the two release-layout files, removed afterwards."""
    root = module_tmp("medclip")
    out = {}
    for variant, folder in (("vit", "medclip-vit"), ("resnet", "medclip-resnet")):
        new = new_layout(towers, variant)
        old = old_layout(new)
        path = root / folder / "pytorch_model.bin"
        path.parent.mkdir()
        torch.save(old, path)
        out[variant] = SimpleNamespace(path=path, new=new, old=old)
    yield out
    shutil.rmtree(root, ignore_errors=True)


def entry(variant: str, checkpoint: Path | str, text_model: Path | str) -> dict[str, object]:
    return {"family": "medclip", "variant": variant, "checkpoint": str(checkpoint), "text_model": str(text_model)}


@pytest.fixture(scope="module")
def adapters(checkpoints, vocab_dir: Path) -> dict[str, mc.MedCLIPAdapter]:
    return {
        v: load_model({**entry(v, checkpoints[v].path, vocab_dir), "batch_size": 2, "device": "cpu"})
        for v in ("vit", "resnet")
    }


# --------------------------------------------------------------------------------------------
# The original code paths (reference)


def medclip_pil_preprocess(img: Image.Image) -> np.ndarray:
    """MedCLIPFeatureExtractor on one image: pad_img(min_size=224) -> resize 224 bicubic -> /255 -> normalise."""
    x, y = img.size
    size = max(224, x, y)
    square = Image.new("L", (size, size), 0)
    square.paste(img, (int((size - x) / 2), int((size - y) / 2)))
    square = square.resize((224, 224), Image.Resampling.BICUBIC)  # square: shortest-side 224, crop is a no-op
    return (np.asarray(square, dtype=np.float32) / 255.0 - IMG_MEAN) / IMG_STD


def reference_image_embeddings(t: SimpleNamespace, variant: str, pixel_values: torch.Tensor) -> torch.Tensor:
    """MedCLIPModel.encode_image on (B, 1, 224, 224) pixel values."""
    with torch.inference_mode():
        if pixel_values.shape[1] == 1:
            pixel_values = pixel_values.repeat((1, 3, 1, 1))
        emb = t.vproj(t.swin(pixel_values)["pooler_output"]) if variant == "vit" else t.r50(pixel_values)
        return emb / emb.norm(dim=-1, keepdim=True)


def reference_tokenizer(vocab: Path) -> BertTokenizer:
    """Bio_ClinicalBERT's AutoTokenizer as MedCLIPProcessor set it up (lowercasing, model_max_length 77)."""
    tok = BertTokenizer(vocab=str(vocab), do_lower_case=True)
    tok.model_max_length = 77
    return tok


def reference_text_embeddings(
    t: SimpleNamespace, vocab: Path, texts: list[str], padding: str | bool = "max_length"
) -> torch.Tensor:
    """MedCLIPTextModel.forward + encode_text, on ids from the reference tokenizer."""
    enc = reference_tokenizer(vocab)(texts, truncation=True, padding=padding, max_length=77, return_tensors="pt")
    with torch.inference_mode():
        output = t.bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
        last_hidden_states = torch.stack(
            [output["hidden_states"][1], output["hidden_states"][2], output["hidden_states"][-1]]
        )
        embed = last_hidden_states.permute(1, 0, 2, 3).mean(2).mean(1)
        embed = t.tproj(embed)
        return embed / embed.norm(dim=-1, keepdim=True)


def phantom(h: int, w: int, seed: int) -> Image.Image:
    """A fixed greyscale test image: smooth anatomy-like shading, noise and hard edges (worst case for kernels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = 110 + 70 * np.sin(7 * xx + seed) * np.cos(5 * yy) + rng.normal(0, 18, (h, w))
    lungs = ((xx - 0.3) / 0.18) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    img[lungs] -= 60
    img[h // 5 : h // 2, w // 2 : w // 2 + w // 10] = 255
    img[: h // 12] = 0
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L")


def canvas_of(img: Image.Image, size: int, tmp_path: Path) -> np.ndarray:
    path = tmp_path / f"img-{img.size[0]}x{img.size[1]}-{size}.png"
    img.save(path)
    return decode_to_canvas(path, size)[0]


# --------------------------------------------------------------------------------------------
# Registration and fixture fidelity


def test_family_is_registered_with_its_options():
    family = list_families()["medclip"]
    assert family.required == ("variant", "checkpoint", "text_model")
    assert set(family.options) == {"variant", "checkpoint", "text_model", "max_length"}


def test_fixture_has_the_release_layout(checkpoints):
    vit, r50 = checkpoints["vit"].old, checkpoints["resnet"].old
    assert (len(vit), len(r50)) == (434, 521)  # models.md §4
    swin = {k: v for k, v in vit.items() if k.startswith("vision_model.model.")}
    assert (len(swin), sum(v.numel() for v in swin.values())) == (231, 27_548_166)  # models.md §0.2, 4.24 Swin
    assert len([k for k in vit if k.startswith("text_model.model.")]) == 200
    block = "vision_model.model.encoder.layers.0.blocks.0."
    expected = {
        block + "attention.self.relative_position_bias_table": ((169, 3), torch.float32),
        block + "attention.self.relative_position_index": ((49, 49), torch.int64),
        block + "attention.self.query.weight": ((96, 96), torch.float32),
        block + "attention.output.dense.weight": ((96, 96), torch.float32),
        block + "intermediate.dense.weight": ((384, 96), torch.float32),
        block + "output.dense.weight": ((96, 384), torch.float32),
        "vision_model.model.encoder.layers.2.downsample.reduction.weight": ((768, 1536), torch.float32),
        "vision_model.model.layernorm.weight": ((768,), torch.float32),
        "vision_model.projection_head.weight": ((512, 768), torch.float32),
        "text_model.model.embeddings.position_ids": ((1, 512), torch.int64),
        "text_model.model.embeddings.word_embeddings.weight": ((28996, 768), torch.float32),
        "text_model.model.encoder.layer.11.output.dense.weight": ((768, 3072), torch.float32),
        "text_model.model.pooler.dense.weight": ((768, 768), torch.float32),
        "text_model.projection_head.weight": ((512, 768), torch.float32),
        "logit_scale": ((), torch.float32),
    }
    assert {k: (tuple(vit[k].shape), vit[k].dtype) for k in expected} == expected
    assert not any(".q_proj." in k or ".mlp." in k for k in vit)
    assert tuple(r50["vision_model.model.fc.weight"].shape) == (512, 2048)
    assert "vision_model.model.fc.bias" not in r50 and "vision_model.model.bn1.num_batches_tracked" in r50


# --------------------------------------------------------------------------------------------
# (a) strict loading and refusal


@pytest.mark.parametrize("variant", ["vit", "resnet"])
def test_every_checkpoint_tensor_lands_in_its_place(adapters, checkpoints, variant):
    model_state = adapters[variant].model.state_dict()
    new = checkpoints[variant].new
    assert set(model_state) == set(new)
    assert all(torch.equal(model_state[k], v) for k, v in new.items())
    # The dropped 4.24 buffers equal the architecture's own (checked by the loader too).
    buffers = dict(adapters[variant].model.named_buffers())
    assert torch.equal(buffers["text_model.model.embeddings.position_ids"], torch.arange(512)[None])
    if variant == "vit":
        index = buffers[f"vision_model.model.encoder.layers.3.blocks.1.{mc.NEW_INDEX}"]
        assert torch.equal(index.view(49, 49), relative_position_index())


def test_conversion_is_idempotent_and_keeps_bert_names(checkpoints):
    old = checkpoints["vit"].old
    converted, dropped, origin = mc.convert_state_dict(old)
    assert len(dropped) == 13 and len(converted) == 421
    assert mc.convert_state_dict(converted)[0].keys() == converted.keys()  # a transformers-5 file passes as is
    assert "text_model.model.encoder.layer.0.output.dense.weight" in converted
    assert "text_model.model.encoder.layer.0.attention.output.dense.weight" in converted
    assert "vision_model.model.encoder.layers.0.blocks.0.mlp.fc2.weight" in converted
    assert all(mc.old_layout_key(k) == v for k, v in origin.items())


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(OrderedDict(state), path)
    return path


SWIN_Q = "vision_model.model.encoder.layers.2.blocks.3.attention.self.query.weight"
BERT_OUT = "text_model.model.encoder.layer.11.output.dense.bias"


@pytest.mark.parametrize(
    ("change", "listed"),
    [
        ("drop-swin", f"1 missing (first: {SWIN_Q})"),
        ("drop-bert", f"1 missing (first: {BERT_OUT})"),
        ("extra", "1 unexpected (first: vision_model.model.encoder.layers.0.blocks.0.attention.self.extra)"),
        ("shape", "1 shape mismatches (first: text_model.model.embeddings.word_embeddings.weight [30522, 768]"),
    ],
)
def test_refuses_a_file_with_a_missing_extra_or_reshaped_key(checkpoints, vocab_dir, tmp_path, change, listed):
    state = shapes_only(checkpoints["vit"].old)
    if change == "drop-swin":
        del state[SWIN_Q]
    elif change == "drop-bert":
        del state[BERT_OUT]
    elif change == "extra":
        state["vision_model.model.encoder.layers.0.blocks.0.attention.self.extra"] = torch.zeros(3)
    else:
        state["text_model.model.embeddings.word_embeddings.weight"] = torch.zeros(()).expand(30522, 768)
    path = _save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(MedretError) as err:
        load_model(entry("vit", path, vocab_dir))
    msg = str(err.value)
    assert "does not load strictly into MedCLIP variant vit" in msg and listed in msg, msg
    assert "looks like a MedCLIP Swin-T checkpoint (variant vit)" in msg


def test_wrong_variant_says_which_variant_the_file_is(checkpoints, vocab_dir, tmp_path):
    path = _save(shapes_only(checkpoints["vit"].old), tmp_path / "pytorch_model.bin")
    with pytest.raises(MedretError, match=r"set config key models.<name>.variant to vit"):
        load_model(entry("resnet", path, vocab_dir))


def test_refuses_a_file_whose_old_buffers_are_not_medclips(checkpoints, vocab_dir, tmp_path):
    state = shapes_only(checkpoints["vit"].old)  # all zeros: position_ids is not arange(512)
    state |= {k: v for k, v in checkpoints["vit"].old.items() if k.endswith("relative_position_index")}
    path = _save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(MedretError, match=r"buffer .*embeddings.position_ids differs"):
        load_model(entry("vit", path, vocab_dir))


# --------------------------------------------------------------------------------------------
# (b) embeddings vs the original equations


@pytest.fixture(scope="module")
def canvases_224(module_tmp) -> torch.Tensor:
    # Sources with longest side 224: the cache canvas is exactly MedCLIP's padded square, no resampling.
    tmp = module_tmp("img224")
    return torch.from_numpy(
        np.stack([canvas_of(phantom(h, w, i), 224, tmp) for i, (h, w) in enumerate([(224, 180), (170, 224)])])
    )


@pytest.mark.parametrize("variant", ["vit", "resnet"])
def test_image_embeddings_equal_the_original_forward(adapters, towers, canvases_224, variant):
    pixel_values = ((canvases_224.float() / 255.0 - IMG_MEAN) / IMG_STD).unsqueeze(1)  # /255, normalise, 1 channel
    ref = reference_image_embeddings(towers, variant, pixel_values)
    got = adapters[variant].encode_images(canvases_224)
    assert got.shape == (2, 512) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=EMB_ATOL, rtol=0)
    # The batch is irrelevant (eval-mode BN, per-image pooling).
    torch.testing.assert_close(adapters[variant].encode_images(canvases_224[1:]), got[1:], atol=EMB_ATOL, rtol=0)


def test_image_embeddings_from_the_cache_track_the_pil_pipeline(adapters, towers, tmp_path):
    # Sources with longest side 320 (cache size 320): MedCLIP input = PIL pipeline on the source itself.
    images = [phantom(320, 250, 7), phantom(260, 320, 8)]
    canvases = torch.from_numpy(np.stack([canvas_of(im, 320, tmp_path) for im in images]))
    pixel_values = torch.from_numpy(np.stack([medclip_pil_preprocess(im) for im in images])).unsqueeze(1)
    ref = reference_image_embeddings(towers, "vit", pixel_values)
    got = adapters["vit"].encode_images(canvases)
    # Inputs differ by one grey level at 2-3 pixels (tests below); measured max |diff| 1.4e-5 (random weights).
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_text_embeddings_equal_the_original_forward(adapters, towers, vocab_dir):
    texts = REPORTS[:5] + REPORTS[-1:]
    ref = reference_text_embeddings(towers, vocab_dir / "vocab.txt", texts)
    for variant in ("vit", "resnet"):  # the two checkpoints share the text tower here
        got = adapters[variant].encode_texts(texts)
        assert got.shape == (len(texts), 512)
        torch.testing.assert_close(got, ref, atol=EMB_ATOL, rtol=0)


def test_padding_policy_makes_text_embeddings_batch_independent(adapters, towers, vocab_dir):
    short, long = "No pleural effusion.", REPORTS[-1]
    model = adapters["vit"]
    alone = model.encode_texts([short])
    with_long = model.encode_texts([short, long])  # batch_size 2: one forward pass
    torch.testing.assert_close(with_long[:1], alone, atol=EMB_ATOL, rtol=0)
    # MedCLIP's own padding=True (longest in batch) gives the short text another embedding per batch.
    solo = reference_text_embeddings(towers, vocab_dir / "vocab.txt", [short], padding=True)
    batched = reference_text_embeddings(towers, vocab_dir / "vocab.txt", [short, long], padding=True)[:1]
    assert (solo - batched).abs().max() > 1e-3
    torch.testing.assert_close(batched, alone, atol=EMB_ATOL, rtol=0)  # long fills 77: same as max_length


def test_spec_holds_contents_not_paths(adapters, checkpoints, vocab_dir):
    spec = adapters["vit"].spec()
    assert "checkpoint" not in spec and "text_model" not in spec and "batch_size" not in spec
    assert spec["weights"] == mc.file_sha256(checkpoints["vit"].path)
    assert spec["vocab"] == mc.file_sha256(vocab_dir / "vocab.txt")
    assert (spec["variant"], spec["max_length"], spec["padding"]) == ("vit", 77, "max_length")
    assert adapters["vit"].spec_hash() != adapters["resnet"].spec_hash()


@pytest.mark.parametrize("variant", ["vit", "resnet"])
def test_upsampling_is_the_padded_canvas_to_224(adapters, variant):
    # MedCLIP pads to a square (the cache canvas) and resizes it to 224: 224 / S whatever the box.
    model = adapters[variant]
    assert model.upsampling(np.array([[0, 14, 128, 100], [0, 0, 128, 128]]), 128) == 1.75
    assert model.upsampling(np.array([[0, 25, 224, 174]]), 224) == 1.0
    assert model.upsampling(np.array([[0, 50, 512, 412]]), 512) == 1.0  # 0.4375: shrinks
    assert needed_image_size(model, np.array([[0, 14, 128, 100]]), 128) == 224
    # A source the cache kept at its own size gets MedCLIP's own square: not an enlargement by the cache.
    assert model.upsampling(np.array([[0, 14, 128, 100]]), 128, np.array([[128, 100]])) == 1.0
    assert model.upsampling(np.array([[0, 14, 128, 100]]), 128, np.array([[1280, 1000]])) == 1.75


# --------------------------------------------------------------------------------------------
# (c) tensor preprocessing vs MedCLIP's PIL pipeline


# PIL resamples 8-bit images in fixed point (22-bit coefficients), torch in float32; both round each
# pass to the 0-255 grid, so where the exact value is at or within ~1e-5 of a .5 tie they can land
# one grey level apart. Measured on these images, out of 50,176 pixels: shrinking, 0-7 pixels differ;
# enlarging (sample positions repeat with a short period, so exact ties are common), 0-238 pixels
# (0.47 % at 128 -> 224), always by one level. Bounds: one level, at most 0.1 % / 1 % of pixels.
MAX_DIFFERING, MAX_DIFFERING_UP = 0.001, 0.01


def _compare(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = np.abs(got - ref)
    return float(diff.max()), float((diff > 1e-5).mean())


@pytest.mark.parametrize(
    ("size", "hw"),
    [
        (224, (224, 171)),  # no resampling: exact
        (300, (300, 220)),  # shrink 300 -> 224
        (512, (390, 512)),  # shrink 512 -> 224
        (1024, (1024, 830)),  # shrink 1024 -> 224
    ],
)
def test_preprocess_equals_pil_pipeline_on_sources_of_cache_size(size, hw, tmp_path):
    # A source whose longest side is the cache size is stored unresampled, padded to the canvas
    # exactly as pad_img pads it, so MedCLIP's pipeline on the source is the ground truth.
    img = phantom(*hw, seed=size)
    canvas = torch.from_numpy(canvas_of(img, size, tmp_path))[None]
    worst, share = _compare(mc.preprocess_images(canvas)[0, 0].numpy(), medclip_pil_preprocess(img))
    assert worst <= GREY_LEVEL + 1e-5 and share <= (0.0 if size == 224 else MAX_DIFFERING), (worst, share)


@pytest.mark.parametrize("size", [128, 160, 200])
def test_preprocess_upsampling_matches_pil_bicubic(size, tmp_path):
    # Cache sizes below 224 are enlarged; the kernel must be PIL's bicubic (a = -0.5) there too.
    canvas = canvas_of(phantom(size, size * 4 // 5, seed=size), size, tmp_path)
    got = mc.preprocess_images(torch.from_numpy(canvas)[None])[0, 0].numpy()
    ref = np.asarray(Image.fromarray(canvas).resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32)
    worst, share = _compare(got, (ref / 255.0 - IMG_MEAN) / IMG_STD)
    assert worst <= GREY_LEVEL + 1e-5 and share <= MAX_DIFFERING_UP, (worst, share)


@pytest.mark.parametrize(("hw", "exact"), [((150, 120), True), ((200, 224), True), ((240, 200), False)])
def test_sources_smaller_than_the_cache_get_medclips_own_square(hw, exact, tmp_path):
    # The cache keeps a source smaller than itself at its own size; MedCLIP pads it to max(224, w, h), so a
    # source under 224 px is padded, never enlarged (exact), and a larger one is shrunk from its own pixels.
    img = phantom(*hw, seed=hw[0])
    path = tmp_path / "small.png"
    img.save(path)
    canvas, box, source = decode_to_canvas(path, 256)
    assert source == hw and box[2:] == hw
    squares = mc.square_canvases(torch.from_numpy(canvas)[None], torch.tensor([box]), torch.tensor([source]))
    assert isinstance(squares, list) and squares[0].shape == (max(224, *hw),) * 2
    got = mc.preprocess_images(squares[0][None])[0, 0].numpy()
    worst, share = _compare(got, medclip_pil_preprocess(img))
    assert (worst, share) == (0.0, 0.0) if exact else worst <= GREY_LEVEL + 1e-5 and share <= MAX_DIFFERING
    # A source the cache shrank: its square is the canvas, returned as the batch itself.
    big = phantom(600, 500, seed=1)
    big.save(path)
    canvas, box, source = decode_to_canvas(path, 256)
    batch = torch.from_numpy(canvas)[None]
    assert mc.square_canvases(batch, torch.tensor([box]), torch.tensor([source])) is batch


def test_preprocess_without_intermediate_rounding_would_be_wrong(tmp_path):
    # Why two rounded passes: one float pass misses PIL's clipping of bicubic overshoot between passes.
    img = phantom(300, 220, seed=300)
    canvas = torch.from_numpy(canvas_of(img, 300, tmp_path))[None, None].float()
    one_pass = torch.nn.functional.interpolate(canvas, size=(224, 224), mode="bicubic", antialias=True)
    one_pass = (torch.floor(one_pass + 0.5).clamp(0, 255) / 255.0 - IMG_MEAN) / IMG_STD
    worst, _ = _compare(one_pass[0, 0].numpy(), medclip_pil_preprocess(img))
    assert worst > 4 * GREY_LEVEL


# --------------------------------------------------------------------------------------------
# (d) tokenizer


def test_token_ids_equal_bio_clinicalbert_tokenizer_on_awkward_reports(vocab_dir, adapters):
    vocab = vocab_dir / "vocab.txt"
    ids, mask, _ = mc.medclip_tokenizer(vocab_dir)(REPORTS)
    ref = reference_tokenizer(vocab)(REPORTS, truncation=True, padding="max_length", max_length=77, return_tensors="pt")
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
    assert torch.equal(adapters["vit"].tokenize(REPORTS)[0], ids)
    assert ids.shape == (len(REPORTS), 77)
    # Long report: truncated to 77 with [SEP] last; empty report: [CLS] [SEP] then [PAD] = 0.
    assert ids[-1, 0] == 101 and ids[-1, 76] == 102 and mask[-1].all()
    assert ids[4, :3].tolist() == [101, 102, 0] and mask[4].sum() == 2


def test_tokenizer_lowercases_and_knows_the_vocabulary(vocab_dir):
    tok = mc.medclip_tokenizer(vocab_dir)
    index = read_vocab(vocab_dir / "vocab.txt")
    ids, mask, _ = tok(["No pleural effusion. The heart size is normal.", "PNEUMOTHORAX", "Caf\u00e9"])
    n = int(mask[0].sum())
    assert (
        tok.vocab["[UNK]"] not in ids[0, :n].tolist()
    )  # every known word found (the vocab_file= trap gives all [UNK])
    expected = ["no", "pleural", "effusion", ".", "the", "heart", "size", "is", "normal", "."]
    assert ids[0, 1 : n - 1].tolist() == [index[w] for w in expected]
    assert ids[1, 1].item() == index["pneumothorax"] != index["Pneumothorax"]  # lower-cased
    assert ids[2, 1].item() == index["cafe"]  # accents stripped, as BERT's lower-casing does
    assert tok(["a b c d e f"])[0].shape == (1, 77)


def test_max_length_option(checkpoints, vocab_dir):
    ids, mask, _ = mc.medclip_tokenizer(vocab_dir, max_length=8)([REPORTS[-1], "no"])
    assert ids.shape == (2, 8) and ids[0, -1] == 102 and mask[1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    for bad in (1, 513, "77", True):
        with pytest.raises(MedretError, match="max_length"):
            load_model({**entry("vit", checkpoints["vit"].path, vocab_dir), "max_length": bad})


# --------------------------------------------------------------------------------------------
# Bad input


class _Payload:
    """Unpickling runs exec(), which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
def test_a_pickle_that_runs_code_is_refused_without_running_it(vocab_dir, tmp_path, fmt):
    marker = tmp_path / "marker"
    path = tmp_path / "pytorch_model.bin"
    payload = {"logit_scale": _Payload(marker)}
    if fmt == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(MedretError, match="refused without running it") as err:
        load_model(entry("vit", path, vocab_dir))
    msg = str(err.value)
    assert "Unsupported global: GLOBAL exec" in msg
    assert "weights_only` set to `False" not in msg and "add_safe_globals" not in msg  # no advice to bypass
    assert not marker.exists()
    if fmt == "raw pickle":  # the payload is live: an unrestricted unpickler does run it
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_truncated_file(checkpoints, vocab_dir, tmp_path):
    path = tmp_path / "pytorch_model.bin"
    with open(checkpoints["vit"].path, "rb") as f:
        path.write_bytes(f.read(1 << 20))  # an interrupted download
    with pytest.raises(MedretError, match=r"the file is a zip archive cut short \([\d,]+ bytes, its central directory"):
        load_model(entry("vit", path, vocab_dir))


@pytest.mark.parametrize(
    ("state", "looks"),
    [
        (  # open_clip / OpenAI layout (CheXzero, CXR-RePaiR)
            {
                "positional_embedding": torch.zeros(77, 8),
                "text_projection": torch.zeros(8, 4),
                "logit_scale": torch.zeros(()),
                "visual.conv1.weight": torch.zeros(8, 3, 4, 4),
                "visual.proj": torch.zeros(8, 4),
                "token_embedding.weight": torch.zeros(10, 8),
                "transformer.resblocks.0.ln_1.weight": torch.zeros(8),
            },
            "does not load strictly.*looks like an OpenAI-layout CLIP state dict",
        ),
        ({"format": "medret.local/1", "vocab": ["a"]}, "not a MedCLIP checkpoint.*medret local-family"),
        ({"model": {}, "optimizer": {}, "config": {}}, "not a MedCLIP checkpoint.*CXR-CLIP"),
        ({"embeddings.word_embeddings.weight": torch.zeros(4, 2)}, "looks like a bare BERT"),
    ],
    ids=["open_clip", "medret-local", "cxr-clip-tar", "bert"],
)
def test_wrong_family_file(vocab_dir, tmp_path, state, looks):
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    with pytest.raises(MedretError, match=looks):
        load_model(entry("vit", path, vocab_dir))


def test_release_zip_instead_of_its_content(vocab_dir, tmp_path):
    path = tmp_path / "medclip-vit-pretrained.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("medclip-vit-pretrained/pytorch_model.bin", b"weights")
    with pytest.raises(MedretError, match=r"release zip.*extract its pytorch_model.bin"):
        load_model(entry("vit", path, vocab_dir))


@pytest.mark.parametrize("variant", ["vit", "resnet"])
def test_missing_checkpoint_says_where_it_is_published(vocab_dir, tmp_path, variant):
    with pytest.raises(MedretError) as err:
        load_model(entry(variant, tmp_path / "nope" / "pytorch_model.bin", vocab_dir))
    msg = str(err.value)
    assert "nope/pytorch_model.bin: MedCLIP checkpoint not found" in msg
    assert mc.WEIGHTS_URLS[variant] in msg and "models.<name>.checkpoint" in msg


def test_missing_or_wrong_vocabulary(tmp_path):
    ckpt = tmp_path / "pytorch_model.bin"  # never read: the vocabulary is checked first
    with pytest.raises(MedretError, match=r"text_model: .*vocab.txt not found.*huggingface.co/emilyalsentzer"):
        load_model(entry("vit", ckpt, tmp_path / "Bio_ClinicalBERT"))
    write_vocab(tmp_path / "small", size=500)
    with pytest.raises(MedretError, match=r"has 500 entries.*28996"):
        load_model(entry("vit", ckpt, tmp_path / "small"))
    write_vocab(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 30522}))
    with pytest.raises(MedretError, match="describes another model"):
        load_model(entry("vit", ckpt, tmp_path / "other"))


def test_options_are_checked(tmp_path, vocab_dir):
    with pytest.raises(MedretError, match=r"models.<model>.text_model is required"):
        load_model({"family": "medclip", "variant": "vit", "checkpoint": "x"})
    with pytest.raises(MedretError, match="'swin' is not a MedCLIP variant"):
        load_model(entry("swin", tmp_path / "x", vocab_dir))
    with pytest.raises(MedretError, match="not an option of family medclip"):
        load_model({**entry("vit", tmp_path / "x", vocab_dir), "model": "ViT-B-32"})
