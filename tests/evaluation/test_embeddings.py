"""Embedding caches and the stages around them: layout, provenance, refusal of stale inputs."""

from __future__ import annotations

import threading
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medret import stages
from medret.config import validate_config
from medret.corruptions import get_kind
from medret.embeddings import BlockReader, EmbeddingFile, embed_images, upsampling_warning
from medret.errors import MedretError
from medret.imaging import ImageCache, decode_to_canvas
from medret.io import read_table, seal_h5, set_attrs, write_strings
from medret.models import ModelAdapter, ResizeRule, list_families, load_model
from medret.models.local import train

REPORTS = ["No effusion.", "Left effusion.", "No effusion.", "Right pneumothorax.", "Cardiomegaly.", "No effusion."]
#: The ranks stage's relevance settings (the dataset defaults).
RELEVANCE = {"relevance": ["exact"], "uncertain_labels": "positive"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A six-pair dataset taken through manifest, cache, specs and a tiny trained model."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    rows = []
    for i, report in enumerate(REPORTS):
        Image.fromarray(rng.integers(0, 255, (40, 32), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append({"id": f"p{i}", "image": f"{i}.png", "report": report, "split": "test", "patient_id": f"P{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    # The dataset entry with every default filled, as the workflow passes it to the stages.
    dataset = {"adapter": "csv", "csv": str(root / "pairs.csv"), "split": "test"}
    model = {
        "family": "local",
        "train": {"dataset": "toy", "epochs": 1, "batch_size": 6, "input_size": 32, "embed_dim": 8},
    }
    occ = {"kind": "occlusion", "levels": [0.0, 0.5, 1.0], "repeats": 2, "seed": 0, "fill": "black"}
    config = validate_config({"datasets": {"toy": dataset}, "models": {"m": model}, "corruptions": {"occ": occ}})
    entry = config["datasets"]["toy"]
    outputs = [root / name for name in ("manifest.parquet", "train.parquet", "skipped.csv")]
    sources = [str(root / "pairs.csv")]
    stages.build_manifest(
        name="toy", entry=entry, sources=sources, out_manifest=outputs[0], out_train=outputs[1], out_skipped=outputs[2]
    )
    stages.build_report_corpus(
        name="toy", entry=entry, sources=sources, manifest_path=outputs[0], out_corpus=root / "corpus.parquet"
    )
    stages.build_image_cache(table_path=root / "manifest.parquet", out_path=root / "eval.h5", size=32)
    stages.build_corruption_specs(
        manifest_path=root / "manifest.parquet", name="occ", entry=occ, out_path=root / "specs.parquet"
    )
    images = rng.integers(0, 255, (6, 32, 32), dtype=np.uint8)
    train(model, REPORTS, np.array([0, 1, 0, 2, 3, 0]), images, root / "ckpt.pt", data_digest="x")
    files = {"checkpoint": str(root / "ckpt.pt")}
    stages.embed_texts(
        name="m",
        entry=model,
        manifest_path=root / "manifest.parquet",
        corpus_path=root / "corpus.parquet",
        out_path=root / "text.h5",
        files=files,
    )
    stages.embed_images(
        name="m",
        entry=model,
        corruption="occ",
        corruption_entry=occ,
        manifest_path=root / "manifest.parquet",
        cache_path=root / "eval.h5",
        specs_path=root / "specs.parquet",
        out_path=root / "occ.h5",
        files=files,
    )
    return root, model, occ


def test_cache_layout_and_provenance(study):
    root, _, _ = study
    text = EmbeddingFile.read(root / "text.h5")
    assert text.arrays["embeddings"].shape == (4, 8)  # 4 unique reports
    assert list(text.arrays["texts"]) == ["No effusion.", "Left effusion.", "Right pneumothorax.", "Cardiomegaly."]
    images = EmbeddingFile.read(root / "occ.h5")
    # conditions: (0, 0), (0.5, 0), (0.5, 1), (1, 0)
    assert images.arrays["embeddings"].shape == (4, 6, 8)
    assert images.arrays["levels"].tolist() == [0.0, 0.5, 0.5, 1.0]
    assert images.arrays["repeats"].tolist() == [0, 0, 1, 0]
    for key in ("model", "model_spec_hash", "manifest_digest", "medret_version"):
        assert key in text.attrs and key in images.attrs
    assert images.attrs["model_spec_hash"] == text.attrs["model_spec_hash"]
    np.testing.assert_allclose(np.linalg.norm(images.arrays["embeddings"], axis=-1), 1, atol=1e-5)
    # Full occlusion: every image identical, so every embedding identical.
    full = images.arrays["embeddings"][3]
    np.testing.assert_allclose(full, np.broadcast_to(full[0], full.shape), atol=1e-6)


def test_ranks_stage(study):
    root, _, _ = study
    stages.compute_ranks(
        manifest_path=root / "manifest.parquet",
        corpus_path=root / "corpus.parquet",
        text_path=root / "text.h5",
        image_path=root / "occ.h5",
        specs_path=root / "specs.parquet",
        out_path=root / "ranks.parquet",
        block=1 << 20,
        dataset="toy",
        relevance=RELEVANCE,
    )
    ranks = pd.read_parquet(root / "ranks.parquet")
    assert len(ranks) == 4 * (6 + 4)  # 4 conditions × (6 image queries + 4 text queries)
    t2i = ranks[(ranks.direction == "t2i") & (ranks.level == 1.0)]
    assert (t2i["rank"] == 6 - t2i["n_relevant"] + 1).all()


def test_provenance_mismatch_is_refused(study, tmp_path):
    root, _, _ = study
    stale = tmp_path / "stale.h5"
    stale.write_bytes((root / "occ.h5").read_bytes())
    with h5py.File(stale, "r+") as f:  # written for another manifest (sealed anew: not damage)
        set_attrs(f, {"manifest_digest": "0000"})
        seal_h5(f)
    with pytest.raises(MedretError, match=r"stale\.h5: provenance mismatch on manifest_digest"):
        stages.compute_ranks(
            manifest_path=root / "manifest.parquet",
            corpus_path=root / "corpus.parquet",
            text_path=root / "text.h5",
            image_path=stale,
            specs_path=root / "specs.parquet",
            out_path=tmp_path / "r.parquet",
            block=1 << 20,
            dataset="toy",
            relevance=RELEVANCE,
        )
    with h5py.File(stale, "r+") as f:
        set_attrs(f, {"manifest_digest": EmbeddingFile.read(root / "occ.h5").attrs["manifest_digest"]})
        set_attrs(f, {"model_spec_hash": "other"})
        seal_h5(f)
    with pytest.raises(MedretError, match="different model specs"):
        stages.compute_ranks(
            manifest_path=root / "manifest.parquet",
            corpus_path=root / "corpus.parquet",
            text_path=root / "text.h5",
            image_path=stale,
            specs_path=root / "specs.parquet",
            out_path=tmp_path / "r.parquet",
            block=1 << 20,
            dataset="toy",
            relevance=RELEVANCE,
        )
    assert not (tmp_path / "r.parquet").exists()


def test_specs_of_another_corruption_are_refused(study, tmp_path):
    root, _, occ = study
    other = {**occ, "seed": 1}
    stages.build_corruption_specs(
        manifest_path=root / "manifest.parquet", name="occ", entry=other, out_path=tmp_path / "specs.parquet"
    )
    with pytest.raises(MedretError, match="provenance mismatch on corruption_spec_digest"):
        stages.compute_ranks(
            manifest_path=root / "manifest.parquet",
            corpus_path=root / "corpus.parquet",
            text_path=root / "text.h5",
            image_path=root / "occ.h5",
            specs_path=tmp_path / "specs.parquet",
            out_path=tmp_path / "r.parquet",
            block=1 << 20,
            dataset="toy",
            relevance=RELEVANCE,
        )


def test_truncated_embedding_file(study, tmp_path):
    root, _, _ = study
    cut = tmp_path / "cut.h5"
    cut.write_bytes((root / "occ.h5").read_bytes()[:2000])
    with pytest.raises(MedretError, match=r"cut\.h5: unreadable or truncated embedding cache"):
        EmbeddingFile.read(cut)


def _old_style_embeddings(model, cache_path, specs, occ):
    """The pre-streaming algorithm as a reference: every image read at once, corrupted on the CPU
    and embedded with one encode_images call per condition."""
    kind = get_kind(occ, "occ")
    with ImageCache(cache_path) as cache:
        images, boxes, ids = torch.from_numpy(cache.read(0, len(cache))), torch.from_numpy(cache.boxes), cache.ids
    out = []
    for (_, _), rows in specs.groupby(["level", "repeat"]):
        corrupted = kind.apply(images, boxes, rows.set_index("pair_id").loc[ids], occ)
        out.append(model.encode_images(corrupted, boxes).numpy())
    return np.stack(out)


@pytest.mark.parametrize(("batch_size", "block"), [(2, 2), (2, 5), (4, 1), (64, 256)])
def test_streamed_embeddings_are_byte_identical(study, tmp_path, batch_size, block):
    root, _, occ = study
    model = load_model({"family": "local", "checkpoint": str(root / "ckpt.pt"), "batch_size": batch_size})
    specs, meta = read_table(root / "specs.parquet")
    expected = _old_style_embeddings(model, root / "eval.h5", specs, occ)
    with ImageCache(root / "eval.h5") as cache:
        embed_images(
            model,
            cache,
            specs,
            tmp_path / "occ.h5",
            model_name="m",
            corruption="occ",
            corruption_entry=occ,
            corruption_digest=meta["digest"],
            manifest_digest="x",
            block=block,
        )
    got = EmbeddingFile.read(tmp_path / "occ.h5").arrays["embeddings"]
    assert got.dtype == np.float32 and got.shape == expected.shape == (4, 6, 8)
    assert got.tobytes() == expected.tobytes()
    # ... and the same bytes as the workflow stage wrote with its default block.
    assert got.tobytes() == EmbeddingFile.read(root / "occ.h5").arrays["embeddings"].tobytes()


def _write_cache(path, n, size=8):
    """An image cache in the imaging layout whose image i is filled with the value i."""
    with h5py.File(path, "w") as f:
        f["images"] = np.repeat(np.arange(n, dtype=np.uint8), size * size).reshape(n, size, size)
        f["boxes"] = np.tile(np.array([0, 0, size, size], dtype=np.int32), (n, 1))
        f["sizes"] = np.tile(np.array([size, size], dtype=np.int32), (n, 1))
        write_strings(f, "ids", [f"p{i}" for i in range(n)])
        set_attrs(f, {"manifest_digest": "x", "size": size})
        seal_h5(f)


def _reader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("medret-reader")]


def test_block_reader_order_bounded_read_ahead_and_early_exit(tmp_path, monkeypatch):
    _write_cache(tmp_path / "c.h5", 11)
    reads = []
    original = ImageCache.read

    def counting_read(self, start, stop):
        reads.append(start)
        return original(self, start, stop)

    monkeypatch.setattr(ImageCache, "read", counting_read)
    with ImageCache(tmp_path / "c.h5") as cache:
        with BlockReader(cache, 3, depth=1) as reader:
            blocks = [(lo, hi, images[:, 0, 0].tolist()) for lo, hi, images in reader]
        assert blocks == [(0, 3, [0, 1, 2]), (3, 6, [3, 4, 5]), (6, 9, [6, 7, 8]), (9, 11, [9, 10])]
        reads.clear()
        with BlockReader(cache, 2, depth=1) as reader:
            # With nothing consumed, the reader fills the queue (one block), reads one more and waits.
            deadline = time.monotonic() + 30
            while len(reads) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)
            assert reads == [0, 2]
            first = next(iter(reader))
        assert first[:2] == (0, 2)
    assert not _reader_threads()  # leaving the with block early stopped the reader


def test_reader_error_reaches_the_caller_and_nothing_is_written(study, tmp_path, monkeypatch):
    root, _, occ = study
    model = load_model({"family": "local", "checkpoint": str(root / "ckpt.pt"), "batch_size": 2})
    specs, meta = read_table(root / "specs.parquet")
    original = ImageCache.read

    def failing_read(self, start, stop):
        if start >= 2:  # what ImageCache.read raises on a damaged chunk
            raise MedretError(f"{self.path}: cannot read images {start}-{stop} (inflate() failed); delete it")
        return original(self, start, stop)

    monkeypatch.setattr(ImageCache, "read", failing_read)
    with ImageCache(root / "eval.h5") as cache, pytest.raises(MedretError, match=r"eval\.h5: cannot read images 2-4"):
        embed_images(
            model,
            cache,
            specs,
            tmp_path / "occ.h5",
            model_name="m",
            corruption="occ",
            corruption_entry=occ,
            corruption_digest=meta["digest"],
            manifest_digest="x",
            block=2,
        )
    assert not (tmp_path / "occ.h5").exists() and list(tmp_path.iterdir()) == []
    assert not _reader_threads()


# --------------------------------------------------------------------------------------------
# Upsampling warning


class _Geometry(ModelAdapter):
    """An adapter that only declares a resize geometry (the warning needs nothing else)."""

    family = "geometry"

    def __init__(self, rule: ResizeRule) -> None:
        super().__init__({"device": "cpu"})
        self.resize_rule = rule

    @property
    def embed_dim(self) -> int:
        return 1

    def _encode_images(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError


def test_upsampling_warning_names_the_count_factor_and_the_image_size_that_avoids_it():
    biovil = _Geometry(list_families()["biovil"].resize)
    # In a 512 cache: MIMIC's 2544 x 3056 (box 512 x 426), its landscape twin, a square, and 512 x 412.
    boxes = np.array([[0, 43, 512, 426], [43, 0, 426, 512], [0, 0, 512, 512], [0, 50, 512, 412]])
    assert upsampling_warning(biovil, boxes[:3], model_name="biovil", dataset="mimic", image_size=512) == (
        "medret warning: model 'biovil' enlarges 2 of 3 images of dataset 'mimic' (up to 1.20x: its shorter side is "
        "resized to 512 px, the cache gives 426 px); set datasets.mimic.image_size to at least 616 to avoid it"
    )
    # 512 / 412 = 1.2427; the 412 side reaches 512 at S' = 637 (int(512.58)), not at 636 (int(511.78)).
    assert upsampling_warning(biovil, boxes, model_name="biovil", dataset="mimic", image_size=512) == (
        "medret warning: model 'biovil' enlarges 3 of 4 images of dataset 'mimic' (up to 1.24x: its shorter side is "
        "resized to 512 px, the cache gives 412 px); set datasets.mimic.image_size to at least 637 to avoid it"
    )
    assert upsampling_warning(biovil, boxes[2:3], model_name="biovil", dataset="mimic", image_size=512) is None
    # A barely enlarged image is not printed as "1.00x": 512 / 511.
    near = upsampling_warning(biovil, np.array([[0, 0, 512, 511]]), model_name="b", dataset="d", image_size=512)
    assert "(up to 1.0020x: " in near and near.endswith("at least 514 to avoid it")  # int(511.998) = 511 at 513


def test_suggested_image_size_holds_for_a_real_mimic_sized_image(tmp_path):
    """The cache itself at the suggested size: the 2544-px side becomes int(2544 * S / 3056): 511 at 615, 512 at 616."""
    Image.new("L", (2544, 3056), 128).save(tmp_path / "mimic.png")  # width x height, as MIMIC-CXR's
    biovil = _Geometry(list_families()["biovil"].resize)
    expected = {512: (0, 43, 512, 426), 615: (0, 52, 615, 511), 616: (0, 52, 616, 512)}
    sizes = np.array([[3056, 2544]])
    for size, box in expected.items():
        assert decode_to_canvas(tmp_path / "mimic.png", size)[1:] == (box, (3056, 2544))
    for given in (sizes, None):  # exact from the source size, and from the box alone
        note = upsampling_warning(
            biovil, np.array([expected[512]]), model_name="b", dataset="d", image_size=512, sizes=given
        )
        assert note.endswith("set datasets.d.image_size to at least 616 to avoid it")
    assert upsampling_warning(biovil, np.array([expected[615]]), model_name="b", dataset="d", image_size=615)
    assert upsampling_warning(biovil, np.array([expected[616]]), model_name="b", dataset="d", image_size=616) is None
    # A source smaller than the model's input is resized from its own pixels, as BioViL's own code does: no warning.
    small = np.array([[0, 0, 400, 300]])
    assert upsampling_warning(biovil, small, model_name="b", dataset="d", image_size=512, sizes=small[:, 2:]) is None
    assert upsampling_warning(biovil, small, model_name="b", dataset="d", image_size=512) is not None


def test_local_model_enlarges_a_cache_smaller_than_its_input(study):
    root, _, _ = study
    model = load_model({"family": "local", "checkpoint": str(root / "ckpt.pt")})  # input_size 32
    with ImageCache(root / "eval.h5") as cache:
        assert cache.size == 32 and model.upsampling(cache.boxes, cache.size) == 1.0
        assert upsampling_warning(model, cache.boxes, model_name="m", dataset="toy", image_size=cache.size) is None
    boxes = np.array([[0, 1, 16, 13]] * 6)  # the same 40 x 32 images in a 16 cache
    assert upsampling_warning(model, boxes, model_name="m", dataset="toy", image_size=16) == (
        "medret warning: model 'm' enlarges 6 of 6 images of dataset 'toy' (up to 2.00x: its padded square canvas "
        "is resized to 32 px, the cache gives 16 px); set datasets.toy.image_size to at least 32 to avoid it"
    )
