"""Embedding caches and the stages around them: layout, provenance, refusal of stale inputs."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medret import stages
from medret.embeddings import EmbeddingFile
from medret.errors import MedretError
from medret.models.local import train

REPORTS = ["No effusion.", "Left effusion.", "No effusion.", "Right pneumothorax.", "Cardiomegaly.", "No effusion."]


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
    entry = {"adapter": "csv", "csv": str(root / "pairs.csv"), "split": "test", "train_split": "train"}
    stages.build_manifest("toy", entry, [str(root / "pairs.csv")], root / "manifest.parquet", root / "train.parquet")
    stages.build_image_cache(root / "manifest.parquet", root / "eval.h5", 32)
    occ = {"kind": "occlusion", "levels": [0.0, 0.5, 1.0], "repeats": 2, "seed": 0, "fill": "black"}
    stages.build_corruption_specs(root / "manifest.parquet", "occ", occ, root / "specs.parquet")
    model = {"family": "local", "train": {"epochs": 1, "batch_size": 6, "input_size": 32, "embed_dim": 8}}
    images = rng.integers(0, 255, (6, 32, 32), dtype=np.uint8)
    train(model, REPORTS, np.array([0, 1, 0, 2, 3, 0]), images, root / "ckpt.pt", data_digest="x")
    stages.embed_texts("m", model, root / "manifest.parquet", root / "text.h5", checkpoint=str(root / "ckpt.pt"))
    stages.embed_images(
        "m",
        model,
        "occ",
        occ,
        root / "manifest.parquet",
        root / "eval.h5",
        root / "specs.parquet",
        root / "occ.h5",
        checkpoint=str(root / "ckpt.pt"),
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
        root / "manifest.parquet",
        root / "text.h5",
        root / "occ.h5",
        root / "specs.parquet",
        root / "ranks.parquet",
        block=1 << 20,
    )
    ranks = pd.read_parquet(root / "ranks.parquet")
    assert len(ranks) == 4 * (6 + 4)  # 4 conditions × (6 image queries + 4 text queries)
    t2i = ranks[(ranks.direction == "t2i") & (ranks.level == 1.0)]
    assert (t2i["rank"] == 6 - t2i["n_relevant"] + 1).all()


def test_provenance_mismatch_is_refused(study, tmp_path):
    root, _, _ = study
    stale = tmp_path / "stale.h5"
    stale.write_bytes((root / "occ.h5").read_bytes())
    with h5py.File(stale, "r+") as f:
        f.attrs["manifest_digest"] = "0000"
    with pytest.raises(MedretError, match=r"stale\.h5: provenance mismatch on manifest_digest"):
        stages.compute_ranks(
            root / "manifest.parquet",
            root / "text.h5",
            stale,
            root / "specs.parquet",
            tmp_path / "r.parquet",
            block=1 << 20,
        )
    with h5py.File(stale, "r+") as f:
        f.attrs["manifest_digest"] = EmbeddingFile.read(root / "occ.h5").attrs["manifest_digest"]
        f.attrs["model_spec_hash"] = "other"
    with pytest.raises(MedretError, match="different model specs"):
        stages.compute_ranks(
            root / "manifest.parquet",
            root / "text.h5",
            stale,
            root / "specs.parquet",
            tmp_path / "r.parquet",
            block=1 << 20,
        )
    assert not (tmp_path / "r.parquet").exists()


def test_specs_of_another_corruption_are_refused(study, tmp_path):
    root, _, occ = study
    other = {**occ, "seed": 1}
    stages.build_corruption_specs(root / "manifest.parquet", "occ", other, tmp_path / "specs.parquet")
    with pytest.raises(MedretError, match="provenance mismatch on corruption_spec_digest"):
        stages.compute_ranks(
            root / "manifest.parquet",
            root / "text.h5",
            root / "occ.h5",
            tmp_path / "specs.parquet",
            tmp_path / "r.parquet",
            block=1 << 20,
        )


def test_truncated_embedding_file(study, tmp_path):
    root, _, _ = study
    cut = tmp_path / "cut.h5"
    cut.write_bytes((root / "occ.h5").read_bytes()[:2000])
    with pytest.raises(MedretError, match=r"cut\.h5: unreadable or truncated embedding cache"):
        EmbeddingFile.read(cut)
