"""Family biovil against hi-ml-multimodal 0.2.2, Microsoft's own code (random weights, offline).

Fixtures are written in the published layouts (models.md §6, §10): each image checkpoint is the ``state_dict()``
of hi-ml's own ``ImageModel`` (328 keys for BioViL, 372 for BioViL-T; full size, with randomised BatchNorm
statistics), saved with ``torch.save`` like the released ``.pt`` files. The text directory holds a *tiny*
``CXRBertModel`` (hi-ml's class; 2 layers, hidden 32, the real 128-d projection) as ``pytorch_model.bin`` in the
pre-4.31 layout (with ``bert.embeddings.position_ids`` and the tied decoder keys), its ``config.json``
(``model_type: cxr-bert``), a small ``vocab.txt`` and a ``tokenizer_config.json``. The references are hi-ml's
``ImageModel.forward``, ``CXRBertModel.get_projected_text_embeddings``, ``TextInput.tokenize_input_prompts`` and
``create_chest_xray_transform_for_inference`` on PIL images (``TextInput`` itself calls ``batch_encode_plus``,
which transformers 5 removed; :func:`himl_tokenize` makes the same call through ``__call__``). hi-ml is a
test-only dependency; the family module never imports it.

Measured on this machine (torch 2.14.1, CPU): preprocessing is bit-identical to the PIL pipeline for every box
below (max |diff| 0); image and text embeddings max |diff| 0 (same kernels); one text per batch vs seven
per batch 1.2e-7. Tolerance EMB_ATOL = 1e-5 on unit vectors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")
pytest.importorskip("health_multimodal", reason="hi-ml-multimodal==0.2.2 is the reference (test extra)")

from health_multimodal.image.data.transforms import create_chest_xray_transform_for_inference
from health_multimodal.text.model import CXRBertTokenizer
from helpers.biovil import write_published

import medret.models.biovil as bv
from medret.embeddings import needed_image_size
from medret.errors import MedretError
from medret.models import list_families, load_model
from medret.models.bert import SPECIAL_TOKENS
from medret.models.resample import resized_size

EMB_ATOL = 1e-5  # unit vectors; only float32 summation order may differ
REPORTS = [
    "No acute cardiopulmonary process.",
    "FINDINGS: Mild cardiomegaly. IMPRESSION: Small left pleural effusion!!",
    "ET tube tip 4.5 cm above the carina; NG tube in the stomach?",
    "Caf\u00e9 r\u00e9sum\u00e9 \u2014 unchanged \tlines   and tubes...",
    "",
    "Heart size is NORMAL, lungs are clear, no pneumothorax",
    " ".join(["right picc line terminates in the mid svc, unchanged."] * 6),
]


def himl_tokenize(vocab: Path, prompts: list[str]):
    """hi-ml ``TextInput.tokenize_input_prompts`` (text/data/io.py) on hi-ml's ``CXRBertTokenizer``.

    Its own call, ``batch_encode_plus``, was removed in transformers 5 (AttributeError), so the same arguments
    go to ``__call__``, which ``batch_encode_plus`` forwarded to.
    """
    tokenizer = CXRBertTokenizer(vocab=str(vocab))
    prompts = [prompt.rstrip("!?.") for prompt in prompts]
    return tokenizer(prompts, add_special_tokens=True, padding="longest", return_tensors="pt")


@pytest.fixture(scope="module")
def published(module_tmp: Callable[[str], Path]) -> dict:
    return write_published(module_tmp("biovil"))


def entry(published: dict, version: str = "biovil", **over) -> dict:
    base = {
        "family": "biovil",
        "biovil_version": version,
        "checkpoint": str(published[version][0]),
        "text_model": str(published["text"][0]),
        "device": "cpu",
    }
    return {**base, **over}


@pytest.fixture(scope="module")
def adapters(published: dict) -> dict:
    return {v: load_model(entry(published, v)) for v in bv.VERSIONS}


def shape_only(state: dict) -> dict:
    """Same keys, shapes and dtypes, a few bytes on disk (stride-0 views of one element)."""
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in state.items()}


def pil_reference(images: torch.Tensor, boxes: torch.Tensor, crop: int) -> torch.Tensor:
    transform = create_chest_xray_transform_for_inference(resize=512, center_crop_size=crop)
    out = []
    for img, (top, left, h, w) in zip(images.numpy(), boxes.tolist(), strict=True):
        out.append(transform(Image.fromarray(img[top : top + h, left : left + w]).convert("L")))
    return torch.stack(out)


def canvases(size: int, n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = (127 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.float64)
    imgs = [np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]
    return torch.from_numpy(np.stack(imgs))


# --------------------------------------------------------------------------------------------


def test_registered() -> None:
    fam = list_families()["biovil"]
    assert set(fam.required) == {"biovil_version", "checkpoint", "text_model"}
    assert set(fam.options) == {"biovil_version", "checkpoint", "text_model"}


@pytest.mark.parametrize(
    ("size", "box"),
    [
        (320, (0, 0, 320, 320)),  # upsampling square
        (320, (0, 40, 320, 240)),  # portrait content
        (320, (25, 0, 270, 320)),  # landscape content
        (1024, (0, 112, 1024, 800)),  # downsampling portrait
        (1024, (63, 0, 897, 1024)),  # downsampling landscape, odd offsets
        (700, (3, 5, 611, 517)),
    ],
)
@pytest.mark.parametrize("crop", [480, 448])
def test_preprocess_matches_pil_pipeline(size: int, box: tuple, crop: int) -> None:
    images = canvases(size, 2, seed=size)
    boxes = torch.tensor([box, box])
    ours = bv.preprocess(images, boxes, crop)
    ref = pil_reference(images, boxes, crop)
    assert ours.shape == ref.shape == (2, 3, crop, crop)
    assert ours.dtype == torch.float32 and ours.min() >= 0 and ours.max() <= 1
    assert (ours - ref).abs().max().item() == 0.0  # Pillow's 8-bit bilinear, reimplemented exactly


@pytest.mark.parametrize("version", ["biovil", "biovil_t"])
def test_image_embeddings_match_himl(published: dict, adapters: dict, version: str) -> None:
    model = adapters[version]
    assert model.embed_dim == 128
    images = canvases(384, 3, seed=3)
    boxes = torch.tensor([[0, 0, 384, 384], [0, 48, 384, 288], [32, 0, 320, 384]])
    ours = model.encode_images(images, boxes)
    _, ref_model = published[version]
    with torch.no_grad():
        ref = ref_model(pil_reference(images, boxes, bv.VERSIONS[version]["crop"])).projected_global_embedding
    ref = torch.nn.functional.normalize(ref, dim=-1)
    assert ours.shape == (3, 128)
    assert torch.allclose(ours, ref, atol=EMB_ATOL, rtol=0)
    assert (ours[0] - ours[1]).abs().max() > 1e-3  # not a constant output


def test_biovil_t_single_image_path_uses_missing_previous_embedding(adapters: dict) -> None:
    model = adapters["biovil_t"].image_model
    x = torch.rand(1, 3, 448, 448)
    with torch.no_grad():
        grid = model.encoder(x)
        assert grid.shape == (1, 512, 14, 14)
        assert torch.equal(grid[:, 256:], model.encoder.missing_previous_emb.expand(1, 256, 14, 14))


def test_token_ids_match_himl(published: dict, adapters: dict) -> None:
    want = himl_tokenize(published["vocab"], REPORTS)
    ids, mask, _ = adapters["biovil"].tokenize(REPORTS)
    assert torch.equal(ids, want.input_ids) and torch.equal(mask, want.attention_mask)
    unk = SPECIAL_TOKENS.index("[UNK]")
    assert (ids[0] != unk).all()  # the vocabulary was really used (the vocab_file= trap maps all to [UNK])


def test_text_embeddings_match_himl(published: dict, adapters: dict) -> None:
    _, ref_model = published["text"]
    enc = himl_tokenize(published["vocab"], REPORTS)
    with torch.no_grad():
        ref = ref_model.get_projected_text_embeddings(enc.input_ids, enc.attention_mask)
    ours = adapters["biovil"].encode_texts(REPORTS)
    assert ours.shape == (len(REPORTS), 128)
    assert torch.allclose(ours, ref, atol=EMB_ATOL, rtol=0)
    one_by_one = torch.cat([adapters["biovil"].encode_texts([t]) for t in REPORTS])
    assert torch.allclose(ours, one_by_one, atol=EMB_ATOL, rtol=0)  # padding does not change [CLS]


def test_long_report_truncated_where_himl_refuses(published: dict, adapters: dict) -> None:
    long = " ".join(["pleural effusion"] * 400)
    ref_tok = CXRBertTokenizer(vocab=str(published["vocab"]))
    assert len(ref_tok(long)["input_ids"]) > 512
    ids = adapters["biovil"].tokenize([long, "no effusion"]).ids
    assert ids.shape == (2, 512) and ids[0, -1] == SPECIAL_TOKENS.index("[SEP]")
    assert adapters["biovil"].encode_texts([long]).shape == (1, 128)


def test_spec_names_contents(adapters: dict) -> None:
    spec = adapters["biovil_t"].spec()
    assert spec["preprocess"]["crop"] == 448 and len(spec["weights"]) == 64
    assert "checkpoint" not in spec and "text_model" not in spec
    assert adapters["biovil"].spec_hash() != adapters["biovil_t"].spec_hash()


@pytest.mark.parametrize("version", list(bv.VERSIONS))
def test_upsampling_is_the_shorter_side_to_512(adapters: dict, version: str) -> None:
    """MIMIC-CXR's 2544 x 3056 images in a 512 cache: box 512 x 426, which Resize(512) makes 615 x 512."""
    model = adapters[version]
    boxes = np.array([[0, 43, 512, 426], [43, 0, 426, 512], [0, 0, 512, 512]])
    np.testing.assert_allclose(model.enlargement(boxes, 512), [512 / 426, 512 / 426, 1.0])
    assert resized_size(512, 426, bv.RESIZE) == (615, 512)  # the real resize: 426 -> 512 is the largest factor
    # From the boxes alone: at S' = 616 the 426 side becomes int(426 * 616 / 512) = int(512.53) = 512; at 615,
    # int(511.70) = 511. From MIMIC's source size, as the cache computes it: int(2544 * 616 / 3056) = 512 as well.
    assert needed_image_size(model, boxes, 512) == 616
    assert needed_image_size(model, boxes, 512, np.array([[3056, 2544], [2544, 3056], [3000, 3000]])) == 616
    assert model.upsampling(np.array([[0, 87, 1024, 851]]), 1024) == 1.0  # 512 / 851: shrinks


# --------------------------------------------------------------------------------------------
# Strict loading and bad input


def test_image_extra_and_missing_keys_listed(published: dict, tmp_path: Path) -> None:
    state = shape_only(torch.load(published["biovil"][0], weights_only=True, mmap=True))
    extra = tmp_path / "extra.pt"
    torch.save({**state, "projector.model.4.weight": torch.zeros(1)}, extra)
    with pytest.raises(MedretError, match=r"1 unexpected \(first: projector\.model\.4\.weight\)"):
        bv.load_image_model(extra, "biovil")
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in state.items() if k != "projector.model.3.bias"}, missing)
    with pytest.raises(MedretError, match=r"1 missing \(first: projector\.model\.3\.bias\)"):
        bv.load_image_model(missing, "biovil")


def test_wrong_version_named(published: dict) -> None:
    fix = r"BioViL-T image model: set config key models\.<name>\.biovil_version to biovil_t"
    with pytest.raises(MedretError, match=fix):
        bv.load_image_model(published["biovil_t"][0], "biovil")
    with pytest.raises(MedretError, match=r"biovil_version to biovil$"):
        bv.load_image_model(published["biovil"][0], "biovil_t")


def _copy_text_dir(published: dict, dest: Path, state: dict | None = None) -> Path:
    src = published["text"][0]
    dest.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        (dest / name).write_bytes((src / name).read_bytes())
    if state is not None:
        torch.save(state, dest / "pytorch_model.bin")
    return dest


def test_text_strict_and_checked_extras(published: dict, tmp_path: Path) -> None:
    state = torch.load(published["text"][0] / "pytorch_model.bin", weights_only=True)
    # Without the optional keys (transformers-5 layout) it loads too.
    lean = {k: v for k, v in state.items() if k not in (bv.POSITION_IDS, *bv.TIED)}
    bv.load_text_model(_copy_text_dir(published, tmp_path / "lean", lean), "biovil")
    extra = _copy_text_dir(published, tmp_path / "extra", {**state, "bert.pooler.dense.bias": torch.zeros(32)})
    with pytest.raises(MedretError, match=r"unexpected \(first: bert\.pooler\.dense\.bias\)"):
        bv.load_text_model(extra, "biovil")
    no_head = {k: v for k, v in state.items() if not k.startswith("cls_projection_head.")}
    missing = _copy_text_dir(published, tmp_path / "missing", no_head)
    with pytest.raises(MedretError, match=r"6 missing \(first: cls_projection_head\.dense_to_hidden\.weight"):
        bv.load_text_model(missing, "biovil")
    untied = {**state, "cls.predictions.decoder.weight": state["cls.predictions.decoder.weight"] + 1}
    with pytest.raises(MedretError, match="ties them"):
        bv.load_text_model(_copy_text_dir(published, tmp_path / "untied", untied), "biovil")
    bad_ids = {**state, bv.POSITION_IDS: torch.arange(512).flip(0)[None]}
    with pytest.raises(MedretError, match="position_ids is not"):
        bv.load_text_model(_copy_text_dir(published, tmp_path / "ids", bad_ids), "biovil")


def test_truncated_checkpoint(published: dict, tmp_path: Path) -> None:
    path = tmp_path / "biovil_image_resnet50_proj_size_128.pt"
    path.write_bytes(published["biovil"][0].read_bytes()[: 1 << 20])
    with pytest.raises(MedretError, match=r"a zip archive cut short .*BiomedVLP-CXR-BERT-specialized/resolve/v1\.1/"):
        load_model(entry(published, checkpoint=str(path)))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["image", "text"])
def test_malicious_pickle_refused_without_running(published: dict, tmp_path: Path, where: str) -> None:
    marker = tmp_path / "PWNED"
    payload = {"encoder.encoder.conv1.weight": torch.zeros(1), "x": _Payload(marker)}
    if where == "image":
        path = tmp_path / "evil.pt"
        torch.save(payload, path)
        over = {"checkpoint": str(path)}
    else:
        text = _copy_text_dir(published, tmp_path / "evil")
        torch.save(payload, text / "pytorch_model.bin")
        over = {"text_model": str(text)}
    with pytest.raises(MedretError, match="refused without running it"):
        load_model(entry(published, **over))
    assert not marker.exists()


def test_wrong_files_and_family_options(published: dict, tmp_path: Path) -> None:
    text_bin = published["text"][0] / "pytorch_model.bin"
    with pytest.raises(MedretError, match="looks like a bare BERT model"):
        load_model(entry(published, checkpoint=str(text_bin)))
    with pytest.raises(MedretError, match=r"models\.<model>\.variant: not an option of family biovil"):
        load_model({**entry(published), "variant": "resnet"})
    with pytest.raises(MedretError, match=r"models\.<model>\.biovil_version is required"):
        load_model({k: v for k, v in entry(published).items() if k != "biovil_version"})
    with pytest.raises(MedretError, match=r"biovil_version: 'biovil-t'; use biovil"):
        load_model(entry(published, biovil_version="biovil-t"))
    lists = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], lists)
    with pytest.raises(MedretError, match="not a BioViL image checkpoint"):
        load_model(entry(published, checkpoint=str(lists)))


def test_missing_files(published: dict, tmp_path: Path) -> None:
    with pytest.raises(MedretError, match=r"image checkpoint not found; .*BioViL-T/resolve/v1\.0/biovil_t_image"):
        load_model(entry(published, "biovil_t", checkpoint=str(tmp_path / "nope.pt")))
    with pytest.raises(MedretError, match=r"not a directory; config key models\.<name>\.text_model"):
        load_model(entry(published, text_model=str(tmp_path / "nodir")))
    for name in ("config.json", "vocab.txt", "pytorch_model.bin"):
        text = _copy_text_dir(published, tmp_path / name.replace(".", "_"))
        if name != "pytorch_model.bin":
            (text / "pytorch_model.bin").write_bytes(b"")
            (text / name).unlink()
        with pytest.raises(MedretError, match=rf"{name}: .*(not found|an empty file).*tree/v1\.1"):
            load_model(entry(published, text_model=str(text)))
    wrong = _copy_text_dir(published, tmp_path / "wrongvocab")
    (wrong / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nlung\n")
    with pytest.raises(MedretError, match=r"6 tokens, but config\.json has vocab_size"):
        load_model(entry(published, text_model=str(wrong)))
    other = _copy_text_dir(published, tmp_path / "othertype")
    (other / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(MedretError, match="model_type 'clip' is not cxr-bert"):
        load_model(entry(published, text_model=str(other)))
