"""Family biomedclip against open_clip's own pipeline (random weights, offline).

The fixture directory has the published layout (``open_clip_config.json``, ``open_clip_pytorch_model.bin``
with the old ``position_ids`` buffer, BiomedBERT-style ``vocab.txt``, ``tokenizer_config.json``,
``config.json``) with a tiny timm ViT + tiny BERT. Its weights and the reference come from open_clip itself:
``create_model_and_transforms("local-dir:...")`` / ``get_tokenizer("local-dir:...")`` on a copy whose
``hf_model_name`` points at the copy (open_clip's documented offline route), images through open_clip's
PIL transform. The full-size architecture (351 keys) is built once, on the meta device.
"""

from __future__ import annotations

import html
import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import ftfy
import numpy as np
import open_clip
import pytest
import torch
from helpers.biomedclip import PUBLISHED_CFG, TINY_BERT, TINY_CFG, TINY_CONTEXT, VOCAB, write_layout
from PIL import Image

import medret.models.biomedclip as bmc
from medret.embeddings import needed_image_size
from medret.errors import MedretError
from medret.models import list_families, load_model

REPORTS = [
    "FINDINGS: No focal consolidation, pleural effusion, or pneumothorax.\nIMPRESSION: NO ACUTE PROCESS.",
    "PA and LAT:  ET tube tip 4.5 cm above the carina;  NG tube -> stomach!!! (?malpositioned)",
    "Mild cardiomegaly &amp; bibasilar atelectasis\u2014right > left; \u201cstable\u201d since 03/12/2019\u2026",
    "Caf\u00e9 r\u00e9sum\u00e9: \u00bd-inch \u00b0 \u00b5 \u2013 \u00c6 \t\t   ",
    "",
    " ".join(["Right-sided PICC line terminates in the mid SVC, unchanged; no pneumothorax."] * 6),
]


@pytest.fixture(scope="module")
def published(module_tmp) -> SimpleNamespace:
    """A tiny BiomedCLIP directory in the published layout, plus open_clip's own model and transforms on it."""
    root = module_tmp("biomedclip")
    # open_clip's offline route: hf_model_name / hf_tokenizer_name point at a local dir with a BERT config.
    ref_dir = root / "reference"
    ref_cfg = json.loads(json.dumps(TINY_CFG))
    ref_cfg["model_cfg"]["text_cfg"].update(hf_model_name=str(ref_dir), hf_tokenizer_name=str(ref_dir))
    write_layout(ref_dir, ref_cfg, None)
    gen = torch.Generator().manual_seed(0)
    init = open_clip.create_model(f"local-dir:{ref_dir}", pretrained_text=False)
    state = {}
    for k, v in init.state_dict().items():  # perturb, so that LayerNorms and biases are not trivial
        state[k] = v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
    state[bmc.POSITION_IDS_KEY] = torch.arange(TINY_BERT["max_position_embeddings"])[None]  # old persistent buffer
    directory = write_layout(root / "BiomedCLIP", TINY_CFG, state)
    shutil.copy(directory / "open_clip_pytorch_model.bin", ref_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{ref_dir}")
    return SimpleNamespace(
        dir=directory,
        state=state,
        model=model.eval(),
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(f"local-dir:{ref_dir}"),
    )


@pytest.fixture(scope="module")
def adapter(published):
    return load_model({"family": "biomedclip", "checkpoint": str(published.dir), "batch_size": 4})


def _copy(published, tmp_path: Path) -> Path:
    return Path(shutil.copytree(published.dir, tmp_path / "copy"))


def test_family_is_registered():
    family = list_families()["biomedclip"]
    assert family.required == ("checkpoint",) and set(family.options) == {"checkpoint"}


def test_full_size_architecture_matches_the_published_key_list():
    # Built once, on the meta device (no memory, no init): the published file's 351 keys (models.md §7).
    with torch.device("meta"):
        model = bmc.build_biomedclip(PUBLISHED_CFG["model_cfg"], bmc.bert_config(Path("/nonexistent")), Path("x"))
    sd = model.state_dict()
    assert len(sd) == 351 and sum(v.numel() for v in sd.values()) == 195_902_721
    shapes = {
        "visual.trunk.cls_token": [1, 1, 768],
        "visual.trunk.pos_embed": [1, 197, 768],
        "visual.trunk.patch_embed.proj.weight": [768, 3, 16, 16],
        "visual.trunk.blocks.11.attn.qkv.weight": [2304, 768],
        "visual.head.proj.weight": [512, 768],
        "text.transformer.embeddings.word_embeddings.weight": [30522, 768],
        "text.proj.0.weight": [640, 768],
        "text.proj.2.weight": [512, 640],
    }
    assert {k: list(sd[k].shape) for k in shapes} == shapes
    assert "visual.head.proj.bias" not in sd and not any(".pooler." in k for k in sd)
    assert bmc.POSITION_IDS_KEY not in sd  # dropped from old files, as open_clip does


def _images(rng: np.random.Generator, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    boxes = [(0, 0, size, size), (13, 0, 70, size), (0, 20, size, 57), (30, 30, 40, 40)]
    canvases = np.zeros((len(boxes), size, size), dtype=np.uint8)
    for i, (t, left, h, w) in enumerate(boxes):
        coarse = rng.uniform(0, 255, size=(h // 8 + 2, w // 8 + 2)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR))
        noise = rng.integers(-20, 21, size=(h, w))
        canvases[i, t : t + h, left : left + w] = np.clip(smooth.astype(int) + noise, 0, 255)
    return torch.from_numpy(canvases), torch.tensor(boxes)


def test_embeddings_equal_open_clip_reference(published, adapter, rng):
    canvases, boxes = _images(rng)
    with torch.no_grad():
        pil = [
            published.preprocess(Image.fromarray(c[t : t + h, left : left + w].numpy(), mode="L"))
            for c, (t, left, h, w) in zip(canvases, boxes.tolist(), strict=True)
        ]
        ref_img = published.model.encode_image(torch.stack(pil), normalize=True)
        ref_tok = published.tokenizer(REPORTS)
        ref_txt = published.model.encode_text(ref_tok, normalize=True)
    assert adapter.embed_dim == 16
    assert torch.equal(adapter.tokenize(REPORTS), ref_tok)
    img, txt = adapter.encode_images(canvases, boxes), adapter.encode_texts(REPORTS)
    assert img.shape == (4, 16) and txt.shape == (len(REPORTS), 16)
    # Text: same ids, same modules (measured difference 0; the margin covers batching/threads).
    torch.testing.assert_close(txt, ref_txt, atol=1e-6, rtol=0)
    # Images: tensor uint8 antialiased bicubic vs PIL's bicubic differ by at most 1 grey level in a few
    # pixels; measured embedding difference 6e-4 (unit vectors of dimension 16).
    torch.testing.assert_close(img, ref_img, atol=2e-3, rtol=0)
    # And the weights really matter: another image is far away.
    assert (img[0] - img[1]).abs().max() > 1e-2
    assert adapter.preprocess_cfg["size"] == [64, 64] and adapter.preprocess_cfg["interpolation"] == "bicubic"


def _reference_ids(texts: list[str], vocab: Path) -> torch.Tensor:
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab=str(vocab), do_lower_case=True)
    # open_clip HFTokenizer's cleaning ('whitespace'): ftfy, HTML unescaped twice, whitespace collapsed.
    cleaned = [" ".join(html.unescape(html.unescape(ftfy.fix_text(t))).split()) for t in texts]
    return tok(cleaned, max_length=TINY_CONTEXT, padding="max_length", truncation=True, return_tensors="pt").input_ids


def test_token_ids_equal_reference_bert_tokenizer(published, adapter):
    ids = adapter.tokenize(REPORTS)
    assert torch.equal(ids, _reference_ids(REPORTS, published.dir / "vocab.txt"))
    assert ids.shape == (len(REPORTS), TINY_CONTEXT) and ids.dtype == torch.int64
    cls, sep, unk = VOCAB.index("[CLS]"), VOCAB.index("[SEP]"), VOCAB.index("[UNK]")
    assert (ids[:, 0] == cls).all()
    assert ids[4].tolist() == [cls, sep] + [0] * (TINY_CONTEXT - 2)  # empty report, padded to max_length
    assert ids[5, -1] == sep and (ids[5] != 0).all()  # long report truncated with [SEP] last
    # Lower-cased, WordPiece, accents stripped ("café" -> cafe), HTML unescaped ("&amp;" -> "&"): not all [UNK].
    assert VOCAB.index("no") in ids[0] and VOCAB.index("##thorax") in ids[0]
    assert VOCAB.index("cafe") in ids[3] and VOCAB.index("&") in ids[2]
    assert (ids[:, 1:] != unk).sum() > 40


def test_strict_load_lists_extra_and_missing_keys(published, tmp_path):
    d = _copy(published, tmp_path)
    extra = {**published.state, "visual.trunk.extra.weight": torch.zeros(2)}
    torch.save(extra, d / "open_clip_pytorch_model.bin")
    with pytest.raises(MedretError, match=r"1 unexpected \(first: visual\.trunk\.extra\.weight\)"):
        load_model({"family": "biomedclip", "checkpoint": str(d)})
    missing = {k: v for k, v in published.state.items() if not k.startswith("text.proj.")}
    torch.save(missing, d / "open_clip_pytorch_model.bin")
    with pytest.raises(MedretError, match=r"2 missing \(first: text\.proj\.0\.weight, text\.proj\.2\.weight\)"):
        load_model({"family": "biomedclip", "checkpoint": str(d)})
    shape = {**published.state, "text.proj.2.weight": torch.zeros(16, 3)}
    torch.save(shape, d / "open_clip_pytorch_model.bin")
    with pytest.raises(MedretError, match=r"shape mismatches \(first: text\.proj\.2\.weight \[16, 3\] vs \[16, 24\]"):
        load_model({"family": "biomedclip", "checkpoint": str(d)})
    openai = {  # wrong family: an OpenAI-layout CLIP
        "visual.conv1.weight": torch.zeros(8, 3, 16, 16),
        "visual.positional_embedding": torch.zeros(5, 8),
        "token_embedding.weight": torch.zeros(10, 8),
    }
    torch.save(openai, d / "open_clip_pytorch_model.bin")
    with pytest.raises(MedretError, match=r"does not load strictly into BiomedCLIP.*OpenAI-layout CLIP ViT"):
        load_model({"family": "biomedclip", "checkpoint": str(d)})


def test_missing_files_name_each_file_and_the_config_key(published, tmp_path):
    with pytest.raises(MedretError, match=r"models\.<name>\.checkpoint: .*nowhere not found.*huggingface\.co"):
        load_model({"family": "biomedclip", "checkpoint": str(tmp_path / "nowhere")})
    with pytest.raises(MedretError, match="checkpoint is required"):
        load_model({"family": "biomedclip"})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedretError) as err:
        load_model({"family": "biomedclip", "checkpoint": str(empty)})
    msg = str(err.value)
    assert "\n" not in msg and "models.<name>.checkpoint" in msg
    for name in ("open_clip_config.json", "open_clip_pytorch_model.bin", "vocab.txt"):
        assert name in msg
    assert bmc.REPO_URL in msg and bmc.BIOMEDBERT_URL in msg
    d = _copy(published, tmp_path)
    (d / "vocab.txt").unlink()
    with pytest.raises(MedretError, match=r"lacks vocab\.txt \(from https://huggingface\.co/microsoft/Biomed"):
        load_model({"family": "biomedclip", "checkpoint": str(d)})


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_truncated_and_malicious_weights_are_refused(published, tmp_path):
    d = _copy(published, tmp_path)
    weights = d / "open_clip_pytorch_model.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedretError, match=r"cannot read checkpoint .*the file is a zip archive cut short"):
        load_model({"family": "biomedclip", "checkpoint": str(d)})
    marker = tmp_path / "pwned"
    torch.save({"visual.head.proj.weight": torch.zeros(1), "x": _Evil(marker)}, weights)
    with pytest.raises(MedretError, match="weights-only reader refused it"):
        load_model({"family": "biomedclip", "checkpoint": str(d)})
    with weights.open("wb") as f:  # a bare pickle, not a torch zip
        pickle.dump(_Evil(marker), f)
    with pytest.raises(MedretError, match="cannot read checkpoint"):
        load_model({"family": "biomedclip", "checkpoint": str(d)})
    assert not marker.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: (d / "open_clip_config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "open_clip_config.json").write_text('{"embed_dim": 16}'), "malformed.*no model_cfg"),
        (
            lambda d: _edit_cfg(d, lambda c: c["model_cfg"]["text_cfg"].pop("hf_model_name")),
            "malformed.*not a Hugging Face text tower",
        ),
        (
            lambda d: _edit_cfg(d, lambda c: c["model_cfg"]["vision_cfg"].update(timm_model_name="no_such_vit")),
            "malformed BiomedCLIP config, open_clip cannot build it offline",
        ),
        (lambda d: _edit_cfg(d, lambda c: c["preprocess_cfg"].update(mean=[0.5])), r"preprocess_cfg\.mean"),
        (lambda d: (d / "config.json").write_text('{"model_type": "swin"}'), "not a BERT config"),
        (lambda d: (d / "vocab.txt").write_text("a\nb\n"), "not a BERT vocabulary"),
    ],
)
def test_malformed_configs_are_refused(published, tmp_path, edit, message):
    d = _copy(published, tmp_path)
    edit(d)
    with pytest.raises(MedretError, match=message) as err:
        load_model({"family": "biomedclip", "checkpoint": str(d)})
    assert "\n" not in str(err.value)


def _edit_cfg(d: Path, change) -> None:
    cfg = json.loads((d / "open_clip_config.json").read_text())
    change(cfg)
    (d / "open_clip_config.json").write_text(json.dumps(cfg))


def test_spec_depends_on_content_not_path(published, adapter, tmp_path):
    d = _copy(published, tmp_path)
    other = load_model({"family": "biomedclip", "checkpoint": str(d), "batch_size": 4})
    assert other.spec_hash() == adapter.spec_hash()
    assert "checkpoint" not in adapter.spec() and adapter.spec()["context_length"] == TINY_CONTEXT
    # open_clip_config.json is hashed by content: the same directory with an edited config is another model.
    _edit_cfg(d, lambda c: c["preprocess_cfg"].update(interpolation="bilinear"))
    edited = load_model({"family": "biomedclip", "checkpoint": str(d), "batch_size": 4})
    assert edited.spec_hash() != adapter.spec_hash() and edited.spec()["preprocess"]["interpolation"] == "bilinear"
    _edit_cfg(d, lambda c: c["model_cfg"].update(quick_gelu=True))  # unused by a timm + BERT model, still hashed
    assert load_model({"family": "biomedclip", "checkpoint": str(d)}).spec_hash() not in (
        edited.spec_hash(),
        adapter.spec_hash(),
    )


def test_upsampling_is_the_shorter_side_to_the_tower_size(adapter):
    # The tiny tower takes 64 px, shortest side (the published one 224).
    boxes = np.array([[8, 0, 48, 64], [0, 0, 64, 64]])
    np.testing.assert_allclose(adapter.enlargement(boxes, 64), [64 / 48, 1.0])
    # At S' = 86 the 48 side becomes int(48 * 86 / 64) = int(64.5) = 64; at 85, int(63.75) = 63.
    assert needed_image_size(adapter, boxes, 64) == 86
