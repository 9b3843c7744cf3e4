"""Tests for the synthetic chest-radiograph phantom dataset (medret.phantoms)."""

from __future__ import annotations

import csv
import multiprocessing
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medret import phantoms
from medret.errors import MedretError
from medret.phantoms import FINDINGS, Findings, generate

EXPECTED_COLUMNS = [
    "id",
    "image",
    "report",
    "split",
    "patient_id",
    "study_id",
    "view",
    "label_no_finding",
    "label_cardiomegaly",
    "label_pleural_effusion",
    "label_pneumothorax",
    "label_consolidation",
    "label_lung_nodule",
    "label_support_devices",
    "region_top",
    "region_left",
    "region_height",
    "region_width",
]

# Independent re-statement of the report vocabulary: a finding is positive iff some sentence
# mentions it and that sentence is not a negation (negations start with "No").
POSITIVE_PATTERNS = {
    "cardiomegaly": r"cardiomegaly|enlarge",
    "pleural_effusion": r"effusion",
    "pneumothorax": r"pneumothorax",
    "consolidation": r"consolidation|airspace opacity",
    "lung_nodule": r"nodul",
    "support_devices": r"tube|catheter|central line|pacemaker",
}

SMALL = {"n_train": 24, "n_test": 16, "size": 64}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _sentences(report: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+", report.strip()) if s]


def _positive_sentences(report: str, pattern: str) -> list[str]:
    return [s for s in _sentences(report) if re.search(pattern, s, re.I) and not re.match(r"no\b", s, re.I)]


def _labels_from_text(report: str) -> dict[str, float]:
    labels = {name: float(bool(_positive_sentences(report, pat))) for name, pat in POSITIVE_PATTERNS.items()}
    pathologies = [v for k, v in labels.items() if k != "support_devices"]
    labels["no_finding"] = float(not any(pathologies))
    return labels


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("ph") / "demo", seed=0, **SMALL)


# --------------------------------------------------------------------------------------------------
# Format


def test_generate_returns_out_dir_and_writes_only_csv_and_images(small_dataset: Path) -> None:
    assert small_dataset.name == "demo"
    assert sorted(p.name for p in small_dataset.iterdir()) == ["images", "pairs.csv"]
    assert not [p for p in small_dataset.parent.iterdir() if p.name.endswith(".partial")]


def test_csv_columns_and_values(small_dataset: Path) -> None:
    with open(small_dataset / "pairs.csv", newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == EXPECTED_COLUMNS
    assert list(phantoms.COLUMNS) == EXPECTED_COLUMNS
    assert [f"label_{n}" for n in FINDINGS] == EXPECTED_COLUMNS[7:-4]

    rows = _read_csv(small_dataset / "pairs.csv")
    assert len(rows) == SMALL["n_train"] + SMALL["n_test"]
    assert [r["split"] for r in rows] == ["train"] * SMALL["n_train"] + ["test"] * SMALL["n_test"]
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"p\d{6}", i) for i in ids)
    assert len({r["study_id"] for r in rows}) == len(rows)  # one image per study
    for r in rows:
        assert r["image"] == f"images/{r['id']}.png"
        assert r["view"] in {"PA", "AP"}
        assert r["report"].strip() and r["report"].endswith(".")
        assert r["patient_id"] and r["study_id"].startswith(r["patient_id"])
        assert all(r[c] in {"1.0", "0.0"} for c in EXPECTED_COLUMNS[7:-4])
        region = [r[c] for c in EXPECTED_COLUMNS[-4:]]
        assert region == [""] * 4 if r["split"] == "train" or r["label_no_finding"] == "1.0" else all(region)


def test_images_exist_with_shape_and_dtype(small_dataset: Path) -> None:
    rows = _read_csv(small_dataset / "pairs.csv")
    assert len(list((small_dataset / "images").iterdir())) == len(rows)
    for r in rows:
        with Image.open(small_dataset / r["image"]) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (SMALL["size"],) * 2
            arr = np.asarray(im)
        assert arr.dtype == np.uint8 and arr.shape == (SMALL["size"],) * 2
        assert arr.std() > 20  # a radiograph-like image, not a flat field


def test_patients_do_not_cross_splits_and_have_one_to_three_studies(small_dataset: Path) -> None:
    rows = _read_csv(small_dataset / "pairs.csv")
    splits: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        splits[r["patient_id"]].add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    # Larger table, no rendering needed: study counts per patient are 1-3 and several patients repeat.
    for split in ("train", "test"):
        counts = Counter(p for p, _ in phantoms._patient_table(0, split, 400))
        assert set(counts.values()) <= {1, 2, 3}
        assert sum(c > 1 for c in counts.values()) > 20


# --------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_gives_identical_bytes(tmp_path: Path, small_dataset: Path) -> None:
    again = generate(tmp_path / "again", seed=0, **SMALL)
    assert _tree_bytes(again) == _tree_bytes(small_dataset)


def test_different_seed_gives_different_data(tmp_path: Path, small_dataset: Path) -> None:
    other = generate(tmp_path / "other", seed=1, **SMALL)
    a, b = _read_csv(small_dataset / "pairs.csv"), _read_csv(other / "pairs.csv")
    assert [r["report"] for r in a] != [r["report"] for r in b]
    img_a = np.asarray(Image.open(small_dataset / a[0]["image"]))
    img_b = np.asarray(Image.open(other / b[0]["image"]))
    assert not np.array_equal(img_a, img_b)


def test_csv_is_independent_of_image_size(tmp_path: Path, small_dataset: Path) -> None:
    tiny = generate(tmp_path / "tiny", seed=0, **{**SMALL, "size": 32})
    small, large = _read_csv(tiny / "pairs.csv"), _read_csv(small_dataset / "pairs.csv")
    regions = EXPECTED_COLUMNS[-4:]
    # Everything but the regions is the same text; regions are measured on the pixels, so to a pixel or two.
    assert [{k: v for k, v in r.items() if k not in regions} for r in small] == [
        {k: v for k, v in r.items() if k not in regions} for r in large
    ]
    for a, b in zip(small, large, strict=True):
        assert (a["region_top"] == "") == (b["region_top"] == "")
        if a["region_top"]:
            assert [float(a[c]) for c in regions] == pytest.approx([float(b[c]) for c in regions], abs=3 / 32)
    with Image.open(tiny / "images" / "p000000.png") as im:
        assert im.size == (32, 32)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="uses fork workers")
def test_workers_do_not_change_output(tmp_path: Path, small_dataset: Path) -> None:
    # 40 pairs make three chunks, so two worker processes really share the work.
    parallel = generate(tmp_path / "parallel", seed=0, workers=2, **SMALL)
    assert _tree_bytes(parallel) == _tree_bytes(small_dataset)


def test_test_split_is_independent_of_n_train(tmp_path: Path) -> None:
    few = _read_csv(generate(tmp_path / "few", n_train=3, n_test=6, size=32) / "pairs.csv")
    many = _read_csv(generate(tmp_path / "many", n_train=11, n_test=6, size=32) / "pairs.csv")
    few_test = [r for r in few if r["split"] == "test"]
    many_test = [r for r in many if r["split"] == "test"]
    for a, b in zip(few_test, many_test, strict=True):
        assert {k: v for k, v in a.items() if k not in ("id", "image")} == {
            k: v for k, v in b.items() if k not in ("id", "image")
        }
        assert (tmp_path / "few" / a["image"]).read_bytes() == (tmp_path / "many" / b["image"]).read_bytes()


# --------------------------------------------------------------------------------------------------
# Reports and labels


def test_labels_agree_with_report_text(small_dataset: Path) -> None:
    for r in _read_csv(small_dataset / "pairs.csv"):
        expected = _labels_from_text(r["report"])
        got = {name: float(r[f"label_{name}"]) for name in FINDINGS}
        assert got == expected, r["report"]


def test_every_template_labels_and_lateralises_correctly() -> None:
    specs = phantoms._pair_specs(0, "train", 3000)
    seen_reports = set()
    for spec in specs:
        f, report = spec.findings, spec.report
        seen_reports.add(report)
        assert f.labels() == _labels_from_text(report), report
        assert 0 <= f.count <= 3
        checks = [
            ("effusion", f.effusion, POSITIVE_PATTERNS["pleural_effusion"]),
            ("pneumothorax", f.pneumothorax, POSITIVE_PATTERNS["pneumothorax"]),
            ("nodule", f.nodule, POSITIVE_PATTERNS["lung_nodule"]),
        ]
        for _, finding, pattern in checks:
            if finding is None:
                continue
            (sentence,) = _positive_sentences(report, pattern)
            side = finding[0]
            assert side in sentence.lower(), report
            other = {"left": "right", "right": "left", "bilateral": None}[side]
            assert other is None or other not in sentence.lower(), report
        if f.consolidation:
            (sentence,) = _positive_sentences(report, POSITIVE_PATTERNS["consolidation"])
            assert phantoms._LOBE_NAMES[f.consolidation] in sentence.lower(), report
    # All phrasing styles of every finding type occur in 3000 pairs.
    assert len(seen_reports) > 600


def test_report_diversity_and_finding_mix() -> None:
    specs = phantoms._pair_specs(0, "test", 500)
    reports = [s.report for s in specs]
    assert 200 <= len(set(reports)) <= 250
    normal = sum(s.findings.count == 0 for s in specs) / len(specs)
    assert 0.28 <= normal <= 0.42
    # A reader that knows the findings exactly sees at most 4 candidate texts per finding set,
    # so retrieval among unique texts is solvable (R@5 = 100% for such an oracle).
    texts_per_findings: dict[Findings, set[str]] = defaultdict(set)
    for s in specs:
        texts_per_findings[s.findings].add(s.report)
    assert max(len(t) for t in texts_per_findings.values()) <= 4
    # Different finding sets never share a report text.
    owner: dict[str, Findings] = {}
    for s in specs:
        assert owner.setdefault(s.report, s.findings) == s.findings
    # Portable AP films are much more common with support devices.
    big = phantoms._pair_specs(0, "train", 2000)
    with_dev = [s.view == "AP" for s in big if s.findings.devices]
    without = [s.view == "AP" for s in big if not s.findings.devices]
    assert np.mean(with_dev) > np.mean(without) + 0.3


# --------------------------------------------------------------------------------------------------
# Rendering: findings are visible, local and on the correct side (patient left = image right)


def _finding_diff(findings: Findings, *, size: int, index: int) -> np.ndarray:
    kw = {"size": size, "seed": 0, "split": "test", "index": index, "patient": index}
    with_f = phantoms._render(findings, **kw).astype(float)
    without = phantoms._render(Findings(), **kw).astype(float)
    return np.abs(with_f - without)


def _fraction(diff: np.ndarray, horizontal: str, vertical: str) -> float:
    h, w = diff.shape
    cols = {"left": slice(0, w // 2), "right": slice(w // 2, w), "any": slice(0, w)}[horizontal]
    rows = {"upper": slice(0, h // 2), "lower": slice(h // 2, h), "any": slice(0, h)}[vertical]
    return float(diff[rows, cols].sum() / diff.sum())


@pytest.mark.parametrize(
    ("findings", "horizontal", "vertical"),
    [
        (Findings(effusion=("right", "small")), "left", "lower"),
        (Findings(effusion=("left", "moderate")), "right", "lower"),
        (Findings(pneumothorax=("right", "small")), "left", "any"),
        (Findings(pneumothorax=("left", "large")), "right", "any"),
        (Findings(consolidation="RUL"), "left", "upper"),
        (Findings(consolidation="RML"), "left", "any"),
        (Findings(consolidation="RLL"), "left", "lower"),
        (Findings(consolidation="LUL"), "right", "upper"),
        (Findings(consolidation="LLL"), "right", "lower"),
        (Findings(nodule=("right", "upper")), "left", "upper"),
        (Findings(nodule=("left", "lower")), "right", "lower"),
        (Findings(devices=("pacemaker",)), "right", "any"),
    ],
    ids=["eff-R", "eff-L", "ptx-R", "ptx-L", "RUL", "RML", "RLL", "LUL", "LLL", "nod-R", "nod-L", "pacemaker"],
)
def test_findings_change_the_image_on_the_correct_side(findings: Findings, horizontal: str, vertical: str) -> None:
    for index in range(4):
        diff = _finding_diff(findings, size=64, index=index)
        assert diff.sum() > 0
        assert _fraction(diff, horizontal, vertical) > 0.9, (findings, index)


def test_right_effusion_is_concentrated_in_image_left_lower_region() -> None:
    diff = _finding_diff(Findings(effusion=("right", "moderate")), size=64, index=11)
    h, w = diff.shape
    assert diff[h // 2 :, : w // 2].mean() > 10 * diff[:, w // 2 :].mean() + 1.0
    assert _fraction(diff, "left", "lower") > 0.95


def test_cardiomegaly_enlarges_the_heart_mostly_to_the_image_right() -> None:
    diff = _finding_diff(Findings(cardiomegaly="moderate"), size=64, index=2)
    assert _fraction(diff, "right", "any") > 0.6
    assert _fraction(diff, "any", "lower") > 0.9


@pytest.mark.parametrize(
    ("findings", "min_pixels"),
    [
        (Findings(cardiomegaly="mild"), 150),
        (Findings(effusion=("left", "small")), 150),
        (Findings(pneumothorax=("right", "small")), 150),
        (Findings(consolidation="LLL"), 150),
        (Findings(nodule=("left", "mid")), 8),
        (Findings(devices=("ett",)), 60),
        (Findings(devices=("cvc",)), 60),
        (Findings(devices=("pacemaker",)), 100),
    ],
)
def test_findings_are_visible_at_128_px(findings: Findings, min_pixels: int) -> None:
    for index in range(3):
        diff = _finding_diff(findings, size=128, index=index)
        assert (diff >= 10).sum() >= min_pixels, (findings, index)


def test_render_is_deterministic_and_sized() -> None:
    f = Findings(effusion=("bilateral", "large"), devices=("ett", "cvc", "pacemaker"))
    a = phantoms._render(f, size=48, seed=3, index=5, view="AP")
    assert a.dtype == np.uint8 and a.shape == (48, 48)
    assert np.array_equal(a, phantoms._render(f, size=48, seed=3, index=5, view="AP"))
    assert not np.array_equal(a, phantoms._render(f, size=48, seed=4, index=5, view="AP"))


# --------------------------------------------------------------------------------------------------
# Atomicity and validation


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("the patched renderer only reaches workers through fork")
    real = phantoms._render
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("renderer exploded")
        return real(*args, **kwargs)

    monkeypatch.setattr(phantoms, "_render", flaky)
    out = tmp_path / "demo"
    with pytest.raises(RuntimeError, match="renderer exploded"):
        generate(out, n_train=40, n_test=8, size=32, workers=workers)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = generate(tmp_path / "demo", n_train=4, n_test=2, size=32)
    before = _tree_bytes(out)

    def broken(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("boom")

    monkeypatch.setattr(phantoms, "_render", broken)
    with pytest.raises(RuntimeError):
        generate(out, n_train=4, n_test=2, size=32, seed=9)
    assert _tree_bytes(out) == before


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_test": 0}, "n_test"),
        ({"n_test": -3}, "n_test"),
        ({"size": 31}, "size"),
        ({"size": 64.0}, "size"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
        ({"n_train": True}, "n_train"),
    ],
)
def test_invalid_arguments_raise_medret_error(tmp_path: Path, kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(MedretError, match=name):
        generate(tmp_path / "demo", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "demo").exists()
