"""Family transformers against transformers' own processors and models (tiny random weights, offline).

Two fixture directories in the published layouts, written by transformers' ``save_pretrained``:

* CLIP, shaped like PubMedCLIP (flaviagiammarino/pubmed-clip-vit-base-patch32): ``pytorch_model.bin`` (with the
  old persistent ``position_ids`` buffers its transformers version wrote), ``vocab.json`` + ``merges.txt`` built
  from the real CLIP BPE vocabulary that open_clip ships, its ``tokenizer_config.json`` (no
  ``model_max_length``) and its legacy ``preprocessor_config.json`` (``feature_extractor_type``, ``"size": 224``
  scaled down to the tiny tower);
* SigLIP, shaped like MedSigLIP (google/medsiglip-448): ``model.safetensors``, a Unigram tokenizer trained here
  with the ``tokenizers`` library (``tokenizer.json``; the real SentencePiece ``spiece.model`` needs packages
  the environment does not have), ``max_position_embeddings`` 64 and a ``height``/``width`` processor config.

The references are transformers' own: ``AutoImageProcessor`` (the torchvision backend it returns, and the PIL
backend for the measured differences), ``AutoTokenizer`` and ``get_image_features``/``get_text_features`` of the
model loaded with ``from_pretrained``, on PIL images of the source pixels.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.transformers_family import (
    CLIP_SIDE,
    PUBMEDCLIP_PREPROCESSOR,
    PUBMEDCLIP_TOKENIZER_CONFIG,
    REPORTS,
    SIGLIP_CONTEXT,
    SIGLIP_PREPROCESSOR,
    SIGLIP_SIDE,
    perturb,
    write_clip,
    write_siglip,
)
from PIL import Image

from medret.embeddings import needed_image_size
from medret.errors import MedretError
from medret.models import list_families, load_model

transformers = pytest.importorskip("transformers")

#: (height, width) of the source images: portrait, landscape, square, smaller than the model input, odd sizes.
SOURCES = [(96, 80), (70, 120), (200, 150), (64, 64), (50, 41), (123, 97), (81, 200)]
CANVAS = 200


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def published(module_tmp) -> SimpleNamespace:
    root = module_tmp("transformers-family")
    return SimpleNamespace(clip=write_clip(root / "pubmed-clip"), siglip=write_siglip(root / "medsiglip"))


def _reference(directory: Path, backend: str = "torchvision") -> SimpleNamespace:
    """transformers' own model, image processor and tokenizer of a directory."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    return SimpleNamespace(
        model=AutoModel.from_pretrained(directory).eval(),
        processor=AutoImageProcessor.from_pretrained(directory, backend=backend),
        tokenizer=AutoTokenizer.from_pretrained(directory),
    )


def _sources(rng: np.random.Generator) -> list[np.ndarray]:
    """Greyscale sources: smooth structure (anatomy-like blobs and edges) plus noise."""
    out = []
    for h, w in SOURCES:
        coarse = rng.uniform(0, 255, size=(h // 8 + 2, w // 8 + 2)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)).astype(int)
        yy, xx = np.mgrid[0:h, 0:w]
        edges = np.where((xx // 7 + yy // 11) % 2 == 0, 40, -40)
        out.append(np.clip(smooth + edges + rng.integers(-30, 31, size=(h, w)), 0, 255).astype(np.uint8))
    return out


def _canvases(sources: list[np.ndarray], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each source on a CANVAS x CANVAS cache canvas at its own size (the cache kept it), at a random offset."""
    canvases = np.zeros((len(sources), CANVAS, CANVAS), dtype=np.uint8)
    boxes = []
    for i, src in enumerate(sources):
        h, w = src.shape
        top, left = int(rng.integers(0, CANVAS - h + 1)), int(rng.integers(0, CANVAS - w + 1))
        canvases[i, top : top + h, left : left + w] = src
        boxes.append((top, left, h, w))
    return torch.from_numpy(canvases), torch.tensor(boxes)


@pytest.fixture(scope="module")
def clip(published):
    return load_model({"family": "transformers", "checkpoint": str(published.clip), "batch_size": 3})


@pytest.fixture(scope="module")
def siglip(published):
    return load_model({"family": "transformers", "checkpoint": str(published.siglip), "batch_size": 3})


def _copy(directory: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(directory, tmp_path / directory.name))


def _load(directory: Path):
    return load_model({"family": "transformers", "checkpoint": str(directory)})


def _edit_json(path: Path, change) -> None:
    cfg = json.loads(path.read_text())
    change(cfg)
    path.write_text(json.dumps(cfg))


# --------------------------------------------------------------------------------------------
# Against transformers


def test_family_is_registered():
    family = list_families()["transformers"]
    assert family.required == ("checkpoint",) and set(family.options) == {"checkpoint"}
    assert family.build == "medret.models.hf_transformers:TransformersAdapter"
    from medret.models import hf_transformers as hft

    text = family.options["checkpoint"].description
    for value in (*(a.model_class for a in hft.SUPPORTED.values()), hft.CONFIG_FILE, hft.PREPROCESSOR_FILE):
        assert value in text


# Measured on SOURCES (7 greyscale images, 41-200 px, both orientations, some smaller than the input): against the
# torchvision backend that AutoImageProcessor returns, 0 grey levels and embeddings equal (difference 0.0); against
# the PIL backend (CLIPImageProcessorPil / SiglipImageProcessorPil), at most 1 grey level on 0.4% (bicubic, CLIP) and
# 3.8% (bilinear, SigLIP) of the values, embedding difference 2.3e-4 (CLIP) and 2.8e-3 (SigLIP) on unit vectors of
# the tiny random towers.
PIL_TOLERANCE = {"clip": (1.0, 0.01, 1e-3), "siglip": (1.0, 0.06, 1e-2)}  # max grey levels, mean, embedding


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_images_equal_transformers_processor_and_model(published, request, rng, name):
    adapter = request.getfixturevalue(name)
    sources = _sources(rng)
    canvases, boxes = _canvases(sources, rng)
    ours = adapter.preprocess(canvases, boxes)
    img = adapter.encode_images(canvases, boxes)
    assert img.shape == (len(SOURCES), adapter.embed_dim)
    max_grey, mean_grey, emb_tol = PIL_TOLERANCE[name]
    for backend in ("torchvision", "pil"):
        ref = _reference(getattr(published, name), backend)
        with torch.no_grad():
            pixels = torch.cat(
                [
                    ref.processor(images=Image.fromarray(s, mode="L"), return_tensors="pt")["pixel_values"]
                    for s in sources
                ]
            )
            ref_img = ref.model.get_image_features(pixel_values=pixels).pooler_output
        ref_img = torch.nn.functional.normalize(ref_img, dim=-1)
        grey = ((ours - pixels) * torch.tensor(ref.processor.image_std).view(1, 3, 1, 1) * 255).abs()
        assert ours.shape == pixels.shape and ours.dtype == pixels.dtype == torch.float32
        if backend == "torchvision":  # the same kernels on the same pixels: identical
            assert grey.max() < 1e-3
            torch.testing.assert_close(img, ref_img, atol=1e-6, rtol=0)
        else:
            assert grey.max() <= max_grey + 1e-3 and grey.mean() <= mean_grey
            torch.testing.assert_close(img, ref_img, atol=emb_tol, rtol=0)
    assert (img[0] - img[1]).abs().max() > 1e-2  # the weights and pixels matter


def test_every_resample_filter_matches_the_processor(rng, tmp_path):
    # Pixels only (no model): nearest, Lanczos, bilinear, bicubic, for shortest_edge + crop and for height/width.
    from transformers import AutoImageProcessor

    from medret.models.hf_transformers import ImagePreprocess

    sources = _sources(rng)
    canvases, boxes = _canvases(sources, rng)
    for resample in (0, 1, 2, 3):
        for cfg in (PUBMEDCLIP_PREPROCESSOR, SIGLIP_PREPROCESSOR):
            (tmp_path / "preprocessor_config.json").write_text(json.dumps({**cfg, "resample": resample}))
            proc = AutoImageProcessor.from_pretrained(tmp_path, backend="torchvision")
            ref = torch.cat(
                [proc(images=Image.fromarray(s, mode="L"), return_tensors="pt")["pixel_values"] for s in sources]
            )
            assert torch.equal(ImagePreprocess.from_processor(proc)(canvases, boxes), ref), (resample, cfg)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_texts_equal_transformers_tokenizer_and_model(published, request, name):
    adapter = request.getfixturevalue(name)
    ref = _reference(getattr(published, name))
    tok = adapter.tokenizer
    enc = ref.tokenizer(REPORTS, padding=tok.padding, truncation=True, max_length=tok.max_length, return_tensors="pt")
    with torch.no_grad():
        ref_txt = torch.nn.functional.normalize(ref.model.get_text_features(**enc).pooler_output, dim=-1)
    ids = adapter.tokenize(REPORTS)
    assert set(ids) == {"input_ids", "attention_mask"} and torch.equal(ids["input_ids"], enc["input_ids"])
    # Same ids, same modules: measured difference 0.0 (batched by 3 here, by 6 in the reference).
    torch.testing.assert_close(adapter.encode_texts(REPORTS), ref_txt, atol=1e-6, rtol=0)


def test_clip_tokenizer_is_pubmedclips(clip):
    # vocab.json + merges.txt of OpenAI's BPE; PubMedCLIP's tokenizer config has no model_max_length, so reports are
    # truncated to the text tower's 77 positions and padded to the longest of the batch.
    tok = clip.tokenizer
    assert type(tok.tokenizer).__name__ == "CLIPTokenizer" and len(tok.tokenizer) == 49408
    assert tok.tokenizer.model_max_length > 10**6 and tok.max_length == 77 and tok.padding == "longest"
    ids = clip.tokenize(REPORTS)["input_ids"]
    assert ids.shape == (len(REPORTS), 77)  # the long report sets the batch length
    assert ids[4, :2].tolist() == [49406, 49407]  # empty report: start, end
    assert clip.tokenize(["no acute process."])["input_ids"].tolist() == [[49406, 871, 19734, 4078, 269, 49407]]


def test_siglip_pads_to_max_length_and_is_batch_independent(siglip):
    tok = siglip.tokenizer
    assert tok.max_length == SIGLIP_CONTEXT and tok.padding == "max_length"
    ids = siglip.tokenize(["no effusion."])["input_ids"]
    assert ids.shape == (1, SIGLIP_CONTEXT) and (ids[0, -5:] == tok.tokenizer.pad_token_id).all()
    # The text tower pools the last position: padding to the batch's longest would change a report's embedding.
    alone = siglip.encode_texts([REPORTS[0]])
    batched = siglip.encode_texts([REPORTS[0], REPORTS[5]])
    torch.testing.assert_close(alone[0], batched[0], atol=1e-6, rtol=0)  # measured 4e-8


def test_clip_embeddings_do_not_depend_on_the_batch(clip):
    alone = clip.encode_texts([REPORTS[1]])
    batched = clip.encode_texts([REPORTS[1], REPORTS[5]])  # padded to 77 behind EOS, causal mask
    torch.testing.assert_close(alone[0], batched[0], atol=1e-6, rtol=0)  # measured 1.4e-7


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_long_reports_are_truncated(request, name):
    adapter = request.getfixturevalue(name)
    tok = adapter.tokenizer.tokenizer
    longer = REPORTS[5] + " Left basilar opacity, unchanged." * 5
    ids = adapter.tokenize([REPORTS[5], longer])["input_ids"]
    assert ids.shape[1] == adapter.tokenizer.max_length
    assert (ids[:, -1] == tok.eos_token_id).all() and torch.equal(ids[0], ids[1])  # cut, end token kept
    emb = adapter.encode_texts([REPORTS[5], longer])
    torch.testing.assert_close(emb[0], emb[1], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------
# Geometry, identity


def test_resize_rule_follows_the_processor_config(clip, siglip):
    from medret.models.base import ResizeRule

    assert clip.resize_rule == ResizeRule("shorter", (CLIP_SIDE, CLIP_SIDE))  # size: shortest_edge
    assert siglip.resize_rule == ResizeRule("squash", (SIGLIP_SIDE, SIGLIP_SIDE))  # size: height/width
    boxes = np.array([[0, 0, 48, 96], [0, 0, 96, 96]])
    np.testing.assert_allclose(clip.enlargement(boxes, 96), [CLIP_SIDE / 48, 1.0])
    np.testing.assert_allclose(siglip.enlargement(boxes, 96), [1.0, 1.0])
    assert clip.preprocess.spec()["interpolation"] == "bicubic"
    assert siglip.preprocess.spec()["interpolation"] == "bilinear"


def test_example_config_image_size(published):
    # config/examples/mimic-transformers.yaml: MIMIC-CXR's 2544 x 3056 images need image_size >= 539 for MedSigLIP
    # (448 x 448 squash) and >= 270 for PubMedCLIP (shorter side 224).
    from medret.models.base import ResizeRule

    for rule, need in ((ResizeRule("squash", (448, 448)), 539), (ResizeRule("shorter", (224, 224)), 270)):
        adapter = _load(published.siglip)
        adapter.resize_rule = rule
        # A 128-px cache holds them at 128 x 106 (canvas_size); the smallest cache enlarging none:
        assert needed_image_size(adapter, np.array([[0, 0, 128, 106]]), 128, np.array([[3056, 2544]])) == need


def test_spec_depends_on_file_content_not_path(published, clip, tmp_path):
    d = _copy(published.clip, tmp_path)
    assert _load(d).spec_hash() == clip.spec_hash() and "checkpoint" not in clip.spec()
    files = clip.spec()["files"]
    assert set(files) == {
        "pytorch_model.bin",
        "config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
    }
    hashes = {clip.spec_hash()}
    for edit in (
        lambda: _edit_json(d / "preprocessor_config.json", lambda c: c.update(resample=2)),
        lambda: _edit_json(d / "tokenizer_config.json", lambda c: c.update(do_lower_case=False)),
        lambda: (d / "vocab.json").write_text(json.dumps(json.loads((d / "vocab.json").read_text()), indent=1)),
        lambda: _bump_logit_scale(d / "pytorch_model.bin"),
        lambda: _edit_json(d / "config.json", lambda c: c.update(initializer_factor=2.0)),
    ):
        edit()
        hashes.add(_load(d).spec_hash())
    assert len(hashes) == 6


def _bump_logit_scale(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1.0
    torch.save(state, path)


def test_sharded_safetensors_and_preference(published, tmp_path):
    from transformers import SiglipModel

    d = _copy(published.siglip, tmp_path)
    (d / "model.safetensors").unlink()
    SiglipModel.from_pretrained(published.siglip).save_pretrained(d, max_shard_size="100KB")
    shards = sorted(p.name for p in d.glob("model-*.safetensors"))
    assert len(shards) > 1 and (d / "model.safetensors.index.json").is_file()
    adapter = _load(d)
    assert set(shards) < set(adapter.spec()["files"]) and "model.safetensors.index.json" in adapter.spec()["files"]
    (d / shards[-1]).unlink()
    with pytest.raises(
        MedretError, match=rf"1 of {len(shards)} shards named by model.safetensors.index.json are missing"
    ):
        _load(d)
    # With both formats present the safetensors file is the one read (and hashed), as transformers prefers it.
    c = _copy(published.clip, tmp_path / "both")
    from safetensors.torch import save_file

    state = torch.load(c / "pytorch_model.bin", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items() if not k.endswith("position_ids")}, c / "model.safetensors")
    torch.save({"garbage": torch.zeros(1)}, c / "pytorch_model.bin")
    assert "model.safetensors" in _load(c).spec()["files"]


# --------------------------------------------------------------------------------------------
# Refusals: one line each, naming the path and the fix


def _drop(d: Path, *names: str) -> None:
    for name in names:
        (d / name).unlink()


def _foreign_tokenizer(d: Path, clip_dir: Path) -> None:
    """CLIP's 49408-token BPE files in the SigLIP directory (a tower of a few hundred tokens)."""
    _drop(d, "tokenizer.json", "tokenizer_config.json")
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        shutil.copy(clip_dir / name, d / name)
    (d / "tokenizer_config.json").write_text(
        json.dumps({**PUBMEDCLIP_TOKENIZER_CONFIG, "tokenizer_class": "CLIPTokenizer"})
    )


BAD_DIRECTORIES = {
    "no config.json": (
        "clip",
        lambda d, p: _drop(d, "config.json"),
        r"has no config\.json, so it is not a Hugging Face",
    ),
    "invalid config.json": (
        "clip",
        lambda d, p: (d / "config.json").write_text("{oops"),
        r"config\.json: not valid JSON",
    ),
    "unsupported model_type": (
        "clip",
        lambda d, p: _edit_json(d / "config.json", lambda c: c.update(model_type="bert")),
        r"model_type 'bert' is not supported by family transformers \(supported: clip, siglip",
    ),
    "remote code (config)": (
        "siglip",
        lambda d, p: _edit_json(d / "config.json", lambda c: c.update(auto_map={"AutoModel": "modeling_x.XModel"})),
        r"config\.json: declares custom code \(auto_map \('AutoModel', 'modeling_x\.XModel'\)\), which medret never",
    ),
    "remote code (tokenizer)": (
        "siglip",
        lambda d, p: _edit_json(
            d / "tokenizer_config.json", lambda c: c.update(auto_map={"AutoTokenizer": ["x.T", None]})
        ),
        r"tokenizer_config\.json: declares custom code",
    ),
    "remote code (processor)": (
        "clip",
        lambda d, p: _edit_json(
            d / "preprocessor_config.json", lambda c: c.update(auto_map={"AutoImageProcessor": "x.P"})
        ),
        r"preprocessor_config\.json: declares custom code",
    ),
    "no weights": (
        "clip",
        lambda d, p: (_drop(d, "pytorch_model.bin"), (d / "tf_model.h5").write_bytes(b"HDF")),
        r"has no PyTorch weights: none of model\.safetensors, .* \(it has tf_model\.h5, which are not read\); "
        r"download model\.safetensors or pytorch_model\.bin",
    ),
    "no preprocessor_config.json": (
        "siglip",
        lambda d, p: _drop(d, "preprocessor_config.json"),
        r"has no preprocessor_config\.json \(the image preprocessing is read from it\); download it",
    ),
    "unsupported image processor": (
        "siglip",
        lambda d, p: (d / "preprocessor_config.json").write_text('{"image_processor_type": "ConvNextImageProcessor"}'),
        r"image processor ConvNextImageProcessor is not supported by family transformers \(supported: CLIPImage",
    ),
    "unsupported resample": (
        "siglip",
        lambda d, p: _edit_json(d / "preprocessor_config.json", lambda c: c.update(resample=4)),
        r"SiglipImageProcessor setting not supported \(resample 4 has no tensor kernel",
    ),
    "processor size differs from the tower": (
        "clip",
        lambda d, p: _edit_json(d / "preprocessor_config.json", lambda c: c.update(size=32, crop_size=32)),
        r"CLIPImageProcessor makes 32x32 images but the vision tower of config\.json takes 64x64",
    ),
    "quantized checkpoint": (
        "siglip",
        lambda d, p: _edit_json(d / "config.json", lambda c: c.update(quantization_config={"quant_method": "bnb"})),
        r"config\.json: a quantized checkpoint \(quantization_config\), which family transformers does not load",
    ),
    "no fixed input size": (
        "clip",
        lambda d, p: _edit_json(
            d / "preprocessor_config.json", lambda c: c.update(do_resize=False, do_center_crop=False)
        ),
        r"CLIPImageProcessor neither resizes to a fixed size nor crops",
    ),
    "no tokenizer files": (
        "clip",
        lambda d, p: _drop(d, "vocab.json", "merges.txt"),
        r"has no tokenizer files \(none of tokenizer\.json, vocab\.json",
    ),
    "vocab.json without merges.txt": (
        "clip",
        lambda d, p: _drop(d, "merges.txt"),
        r"has vocab\.json but not merges\.txt \(nor tokenizer\.json\); download merges\.txt",
    ),
    "unreadable tokenizer": (
        "clip",
        lambda d, p: (d / "merges.txt").write_text("#version: 0.2\na\n"),
        r"cannot load the tokenizer \(.*[Mm]erges.*\); get the repository's tokenizer files again",
    ),
    "tokenizer of another model": (
        "siglip",
        lambda d, p: _foreign_tokenizer(d, p.clip),
        r"the tokenizer has 49408 tokens but the text tower only \d+: the tokenizer files belong to another model",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DIRECTORIES))
def test_bad_directories_are_refused_in_one_line(published, tmp_path, case):
    name, edit, message = BAD_DIRECTORIES[case]
    d = _copy(getattr(published, name), tmp_path)
    edit(d, published)
    with pytest.raises(MedretError, match=message) as err:
        _load(d)
    assert "\n" not in str(err.value) and str(d) in str(err.value)


def test_missing_directory_names_the_config_key(published, tmp_path):
    with pytest.raises(MedretError, match=r"models\.m\.checkpoint: .*nowhere not found; set it to a local directory"):
        load_model({"family": "transformers", "checkpoint": str(tmp_path / "nowhere")}, "m")
    with pytest.raises(MedretError, match=r"is a file, not a directory.*hf download"):
        _load(published.clip / "config.json")
    with pytest.raises(MedretError, match=r"models\.m\.checkpoint is required by family transformers"):
        load_model({"family": "transformers"}, "m")


def test_a_sentencepiece_tokenizer_as_medsiglip_ships_it(published, tmp_path):
    """MedSigLIP's tokenizer is a SiglipTokenizer over ``spiece.model`` (sentencepiece + protobuf, pinned): ids equal
    transformers' own, reports padded to 64, embeddings equal its model's and independent of the batch."""
    import sentencepiece as spm
    from transformers import SiglipModel, SiglipTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(r.lower() for r in REPORTS[:4] * 20) + "\n")
    prefix = tmp_path / "spiece"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=120, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
    )  # fmt: skip
    d = tmp_path / "medsiglip-spm"
    SiglipTokenizer(vocab_file=str(prefix.with_suffix(".model")), model_max_length=SIGLIP_CONTEXT).save_pretrained(d)
    source = SiglipModel.from_pretrained(published.siglip)
    vocab = spm.SentencePieceProcessor(model_file=str(prefix.with_suffix(".model"))).vocab_size()
    config = source.config
    config.text_config.vocab_size = vocab
    torch.manual_seed(3)
    model = SiglipModel(config).eval()
    perturb(model, 5)
    model.save_pretrained(d)
    for name in ("preprocessor_config.json",):
        (d / name).write_bytes((published.siglip / name).read_bytes())
    ours = _load(d)
    tokenizer = SiglipTokenizer.from_pretrained(d)
    texts = [REPORTS[0], REPORTS[1], "x"]
    reference = tokenizer(texts, padding="max_length", truncation=True, max_length=SIGLIP_CONTEXT, return_tensors="pt")
    assert reference["input_ids"].shape == (3, SIGLIP_CONTEXT)
    with torch.inference_mode():
        want = torch.nn.functional.normalize(model.get_text_features(**reference).pooler_output, dim=-1)
    got = ours.encode_texts(texts)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.encode_texts(["x"]), got[2:], atol=1e-6, rtol=0)


def test_strict_load_lists_extra_missing_and_mismatched_keys(published, tmp_path):
    d = _copy(published.clip, tmp_path)
    weights = d / "pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    assert "text_model.embeddings.position_ids" in state  # the old persistent buffers are tolerated (rebuilt)
    for bad, message in (
        ({**state, "visual_projection.extra": torch.zeros(2)}, r"1 unexpected \(first: visual_projection\.extra\)"),
        (
            {k: v for k, v in state.items() if not k.startswith("text_model.final_layer_norm.")},
            r"2 missing \(first: text_model\.final_layer_norm\.bias, text_model\.final_layer_norm\.weight\)",
        ),
        (
            {**state, "text_projection.weight": torch.zeros(16, 3)},
            r"1 shape mismatches \(first: text_projection\.weight \[16, 3\] vs \[16, 32\]\)",
        ),
    ):
        torch.save(bad, weights)
        with pytest.raises(MedretError, match=message) as err:
            _load(d)
        assert str(err.value).startswith(f"{weights}: does not load strictly into transformers CLIPModel")
        assert "\n" not in str(err.value)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unsafe_and_damaged_weights_are_refused(published, tmp_path):
    d = _copy(published.clip, tmp_path)
    weights, marker = d / "pytorch_model.bin", tmp_path / "pwned"
    torch.save({"text_projection.weight": _Evil(marker)}, weights)
    with pytest.raises(MedretError, match=r"weights-only reader refused it .*nothing in it was run"):
        _load(d)
    with weights.open("wb") as f:  # a bare pickle, not a torch zip
        pickle.dump(_Evil(marker), f)
    with pytest.raises(MedretError, match="cannot read the weights"):
        _load(d)
    assert not marker.exists()
    shutil.copy(published.clip / "pytorch_model.bin", weights)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedretError, match=r"pytorch_model\.bin: cannot read the weights .*zip archive cut short"):
        _load(d)
    s = _copy(published.siglip, tmp_path)
    data = (s / "model.safetensors").read_bytes()
    (s / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MedretError, match=r"model\.safetensors: cannot read the weights .*not a complete safetensors"):
        _load(s)
