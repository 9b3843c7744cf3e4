"""The CSV adapter, the manifest rules and the image cache (including bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medret import stages
from medret.datasets import load_pairs
from medret.datasets.csv import read_pairs_csv
from medret.errors import MedretError
from medret.imaging import ImageCache, build_image_cache, decode_to_canvas, image_problem
from medret.io import read_table, write_table
from medret.manifest import (
    Corpus,
    Manifest,
    build_corpus,
    is_frontal,
    manifest_digest,
    screen_images,
    select_pairs,
)
from medret.progress import progress


def _write_csv(tmp_path: Path, rows: list[dict], images: bool = True) -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    if images:
        for r in rows:
            Image.fromarray(np.full((40, 60), 128, np.uint8)).save(tmp_path / r["image"])
    path = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _rows():
    return [
        {
            "id": "a",
            "image": "img/a.png",
            "report": "No effusion.",
            "split": "test",
            "patient_id": "P1",
            "study_id": "s1",
            "view": "AP",
            "label_pleural_effusion": "0",
        },
        {
            "id": "b",
            "image": "img/b.png",
            "report": "No effusion.",
            "split": "test",
            "patient_id": "P1",
            "study_id": "s1",
            "view": "PA",
            "label_pleural_effusion": "0",
        },
        {
            "id": "c",
            "image": "img/c.png",
            "report": "Left effusion. ",
            "split": "test",
            "patient_id": "P2",
            "study_id": "s2",
            "view": "LATERAL",
            "label_pleural_effusion": "1",
        },
        {
            "id": "d",
            "image": "img/d.png",
            "report": "   ",
            "split": "test",
            "patient_id": "P3",
            "study_id": "s3",
            "view": "PA",
            "label_pleural_effusion": "",
        },
        {
            "id": "e",
            "image": "img/e.png",
            "report": "No effusion.",
            "split": "train",
            "patient_id": "P4",
            "study_id": "s4",
            "view": "PA",
            "label_pleural_effusion": "-1",
        },
    ]


def test_csv_adapter_reads_the_documented_format(tmp_path):
    path = _write_csv(tmp_path, _rows())
    pairs = load_pairs("mine", {"adapter": "csv", "csv": str(path)}, [str(path)])
    assert list(pairs.columns)[:7] == [
        "pair_id",
        "image_path",
        "report",
        "split",
        "patient_id",
        "study_id",
        "view",
    ]
    assert pairs.loc[0, "image_path"] == str(tmp_path / "img" / "a.png")  # relative to the CSV
    assert pairs["label_pleural_effusion"].tolist()[:3] == [0.0, 0.0, 1.0]
    assert np.isnan(pairs.loc[3, "label_pleural_effusion"])


def test_manifest_rules(tmp_path):
    pairs = read_pairs_csv(_write_csv(tmp_path, _rows()))
    manifest = select_pairs(pairs, "test")[0]
    # Study s1 has an AP (a) and a PA (b): PA wins. Empty report d is dropped; e is train.
    assert manifest["pair_id"].tolist() == ["b", "c"]
    assert manifest["report"].tolist() == ["No effusion.", "Left effusion."]  # stripped
    assert manifest["text_id"].tolist() == [0, 1]
    assert Manifest(manifest, "d").clusters() == {"b": "P1", "c": "P2", "text:0": None, "text:1": None}


def test_views_frontal_leaves_out_laterals_and_lists_every_pair_left_out(tmp_path):
    base = _rows()[0]
    rows = [
        *_rows(),
        {**base, "id": "f", "image": "img/f.png", "study_id": "s5", "view": "", "report": "Unknown view."},
        {**base, "id": "g", "image": "img/g.png", "study_id": "s6", "view": "AP AXIAL", "report": "Axial."},
        {**base, "id": "h", "image": "img/h.png", "study_id": "s6", "view": "LL", "report": "Axial."},
    ]
    pairs = read_pairs_csv(_write_csv(tmp_path, rows))
    frontal, left_out = select_pairs(pairs, "test", views="frontal")
    # s2 has only a lateral: left out; s5's view is not recorded: kept; s6 keeps its AP AXIAL over its LL.
    assert frontal["pair_id"].tolist() == ["b", "f", "g"]
    assert left_out.columns.tolist() == ["pair_id", "split", "image_path", "problem"]
    assert dict(zip(left_out["pair_id"], left_out["problem"], strict=True)) == {
        "c": "not a frontal view (LATERAL; views: frontal)",
        "d": "empty report",
        "h": "not a frontal view (LL; views: frontal)",
    }
    anyview, left_out = select_pairs(pairs, "test", views="any")
    assert anyview["pair_id"].tolist() == ["b", "c", "f", "g"]  # s2 evaluated on its lateral
    assert left_out["pair_id"].tolist() == ["d"]
    with pytest.raises(MedretError, match=r"^config key views: 'lateral'; use frontal or any$"):
        select_pairs(pairs, "test", views="lateral")
    only_lateral = pairs.assign(view="LATERAL")
    with pytest.raises(
        MedretError, match=r"no frontal image in split 'test' \(views recorded: LATERAL\); .*views: any"
    ):
        select_pairs(only_lateral, "test", views="frontal")
    assert is_frontal(
        pd.Series(["PA", "ap", "FRONTAL", "AP SUPINE", "PA LLD", "LATERAL", "LAO", "", None])
    ).tolist() == [
        *[True] * 5,
        *[False] * 4,
    ]


def test_manifest_stage_writes_skipped_and_warnings(tmp_path):
    rows = _rows()
    path = _write_csv(tmp_path, rows)
    (tmp_path / "img" / "a.png").write_bytes(b"garbage")
    entry = {"adapter": "csv", "csv": str(path), "split": "test", "train_split": "train"}
    entry |= {"bad_images": "skip", "views": "frontal"}
    out = tmp_path / "out"
    stages.build_manifest(
        name="mine",
        entry=entry,
        sources=[str(path)],
        out_manifest=out / "m.parquet",
        out_train=out / "t.parquet",
        out_skipped=out / "skipped.csv",
    )
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["pair_id"].tolist() == ["a", "c", "d"]
    assert skipped["problem"].tolist()[1:] == ["not a frontal view (LATERAL; views: frontal)", "empty report"]
    _, meta = read_table(out / "m.parquet")
    assert json.loads(meta["notes"]) == [
        "medret warning: dataset 'mine': 1 pairs left out for a missing, unreadable or degenerate image "
        "(bad_images: skip; listed in skipped.csv)",
        "medret warning: dataset 'mine': 1 pairs of split 'test' left out for a report that is empty after "
        "stripping (listed in skipped.csv)",
        "medret warning: dataset 'mine': views: frontal left out 1 lateral or other non-frontal images, and with "
        "them 1 studies that have no frontal image (listed in skipped.csv; views: any keeps them)",
    ]


def test_duplicate_reports_share_a_text_id():
    pairs = pd.DataFrame(
        {
            "pair_id": list("wxyz"),
            "image_path": "",
            "report": ["A", "B", "A", "A "],
            "split": "test",
            "patient_id": "",
            "study_id": "",
            "view": "",
        }
    )
    m = Manifest(select_pairs(pairs, "test")[0], "x")
    assert m.text_ids.tolist() == [0, 1, 0, 0]
    assert m.texts == ["A", "B"]
    assert m.clusters() == {"w": None, "x": None, "y": None, "z": None, "text:0": None, "text:1": None}


def test_manifest_digest_changes_with_content(tmp_path):
    pairs = read_pairs_csv(_write_csv(tmp_path, _rows()))
    m = select_pairs(pairs, "test")[0]
    assert manifest_digest(m) == manifest_digest(m.copy())
    assert manifest_digest(m) != manifest_digest(m.assign(report=["x", "y"]))
    assert manifest_digest(m) == manifest_digest(m.assign(image_path=["/elsewhere/b.png", "/elsewhere/c.png"]))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda rows: [{k: v for k, v in r.items() if k != "report"} for r in rows],
            "missing column.*report",
        ),
        (lambda rows: [*rows, dict(rows[0])], "duplicate id"),
        (lambda rows: [{**r, "label_pleural_effusion": "yes"} for r in rows], "label_pleural_effusion"),
        (lambda rows: [{**r, "image": ""} for r in rows], "empty image path"),
    ],
)
def test_bad_csv_is_one_clear_line(tmp_path, mutate, message):
    path = _write_csv(tmp_path, _rows())
    pd.DataFrame(mutate(_rows())).to_csv(path, index=False)
    with pytest.raises(MedretError, match=message) as err:
        read_pairs_csv(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_csv_and_missing_split(tmp_path):
    with pytest.raises(MedretError, match="not found"):
        read_pairs_csv(tmp_path / "nope.csv")
    pairs = read_pairs_csv(_write_csv(tmp_path, _rows()))
    with pytest.raises(MedretError, match="no pairs in split 'validate'"):
        select_pairs(pairs, "validate")[0]


def test_decode_keeps_aspect_and_records_the_box(tmp_path):
    img = np.zeros((40, 80), np.uint8)
    img[:, :40] = 255  # left half white
    Image.fromarray(img).save(tmp_path / "wide.png")
    canvas, box, _ = decode_to_canvas(tmp_path / "wide.png", 32)
    assert box == (8, 0, 16, 32)  # 80x40 -> 32x16, centred vertically
    assert canvas[:8].max() == 0 and canvas[24:].max() == 0  # black padding
    assert canvas[8:24, :14].min() > 200 and canvas[8:24, 18:].max() < 50
    # RGB input becomes greyscale
    Image.fromarray(np.full((10, 10, 3), 90, np.uint8)).save(tmp_path / "rgb.png")
    canvas, box, _ = decode_to_canvas(tmp_path / "rgb.png", 10)
    assert canvas.shape == (10, 10) and box == (0, 0, 10, 10) and (canvas == 90).all()


def _radiograph_like(h: int, w: int) -> np.ndarray:
    """A smooth greyscale image with edges and fine texture, like a radiograph at full resolution."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 120 + 80 * np.sin(x / 37.0) * np.cos(y / 53.0) + 20 * np.sin((x + 2 * y) / 5.0)
    img[h // 3 : h // 2, w // 4 : w // 2] += 60  # a sharp-edged bright block
    return np.clip(img, 0, 255).astype(np.uint8)


def test_large_jpeg_is_decoded_at_a_reduced_scale_only_when_fast(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    path = tmp_path / "big.jpg"
    Image.fromarray(_radiograph_like(1500, 1250)).save(path, quality=95)
    requested = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile, "draft", lambda im, mode, size: requested.append(size) or draft(im, mode, size)
    )
    # Full decode + Lanczos, computed independently: 1250 * (128 / 1500) = 106.67 -> 106 (truncated).
    with Image.open(path) as im:
        full = np.asarray(im.convert("L").resize((106, 128), Image.Resampling.LANCZOS))
    exact, box, source = decode_to_canvas(path, 128)
    assert requested == [] and box == (0, 11, 128, 106) and source == (1500, 1250)
    assert np.array_equal(exact[:, 11:117], full), "the default decode is exact"
    canvas, box, _ = decode_to_canvas(path, 128, fast=True)
    assert box == (0, 11, 128, 106) and requested == [(212, 256)]
    diff = np.abs(canvas[:, 11:117].astype(np.float64) - full)
    assert 0 < diff.mean() < 1.0 and diff.max() <= 12, (diff.mean(), diff.max())
    assert canvas[:, :11].max() == 0 and canvas[:, 117:].max() == 0
    # A JPEG not much larger than the target is decoded in full (the request is above its size).
    Image.fromarray(_radiograph_like(200, 150)).save(tmp_path / "small.jpg", quality=95)
    requested.clear()
    small, _, _ = decode_to_canvas(tmp_path / "small.jpg", 128, fast=True)
    with Image.open(tmp_path / "small.jpg") as im:
        ref = np.asarray(im.convert("L").resize((96, 128), Image.Resampling.LANCZOS))
    assert requested == [(192, 256)] and np.array_equal(small[:, 16:112], ref)


def repair_preprocess(img: Image.Image, desired_size: int = 320) -> Image.Image:
    """CXR-RePaiR's / CheXzero's ``preprocess()`` (data_preprocessing, data_process.py), Image.ANTIALIAS = LANCZOS."""
    old_size = img.size
    ratio = float(desired_size) / max(old_size)
    new_size = tuple([int(x * ratio) for x in old_size])
    img = img.resize(new_size, Image.LANCZOS)
    new_img = Image.new("L", (desired_size, desired_size))
    new_img.paste(img, ((desired_size - new_size[0]) // 2, (desired_size - new_size[1]) // 2))
    return new_img


@pytest.mark.parametrize(
    ("height", "width"),
    # MIMIC-CXR-JPG's common sizes, odd ones, and 2139 wide, whose long side comes out at 319.
    [(3056, 2544), (2544, 3056), (2022, 2022), (1800, 2139), (1001, 777), (512, 333), (321, 320), (320, 240)],
)
def test_cache_at_320_is_the_cxr_repair_canvas_byte_for_byte(tmp_path, height, width):
    path = tmp_path / "x.jpg"
    Image.fromarray(_radiograph_like(height, width)).save(path, quality=90)
    canvas, box, source = decode_to_canvas(path, 320)
    with Image.open(path) as im:
        theirs = np.asarray(repair_preprocess(im))
    assert np.array_equal(canvas, theirs)
    assert source == (height, width)
    if (height, width) == (3056, 2544):
        assert box == (0, 0 + (320 - 266) // 2, 320, 266)
    if (height, width) == (2544, 3056):
        assert box[2:] == (266, 320)
    # The float arithmetic: 2139 * (320 / 2139) = 319.99999999999994 -> 319 columns, as theirs.
    if (height, width) == (1800, 2139):
        assert box[3] == 319


def test_a_narrow_source_is_resized_horizontal_pass_first_as_pillow_9_did(tmp_path):
    """Pillow 13 runs the vertical pass first for tall, narrow images, Pillow 9 (the original pipelines') did not.

    reference/cxr_repair measured CXR-RePaiR's own preprocess() under Pillow 9.5 on such an image: equal to two
    one-axis resizes (horizontal first) under Pillow 13, not to one call.
    """
    path = tmp_path / "narrow.png"
    Image.fromarray(_radiograph_like(2544, 1200)).save(path)
    canvas, box, _ = decode_to_canvas(path, 320)
    top, left, h, w = box
    assert (h, w) == (320, int(1200 * (320 / 2544)))
    with Image.open(path) as im:
        two_pass = im.resize((w, 2544), Image.LANCZOS).resize((w, 320), Image.LANCZOS)
        one_call = im.resize((w, 320), Image.LANCZOS)
    assert np.array_equal(canvas[top : top + h, left : left + w], np.asarray(two_pass))
    assert not np.array_equal(np.asarray(two_pass), np.asarray(one_call)), "Pillow's pass order changed again"


def test_a_source_smaller_than_the_cache_keeps_its_own_pixels(tmp_path):
    img = _radiograph_like(90, 70)
    Image.fromarray(img).save(tmp_path / "small.png")
    canvas, box, source = decode_to_canvas(tmp_path / "small.png", 128)
    assert box == ((128 - 90) // 2, (128 - 70) // 2, 90, 70) and source == (90, 70)
    top, left = box[:2]
    assert np.array_equal(canvas[top : top + 90, left : left + 70], img)  # never enlarged
    assert canvas.sum() == img.astype(np.int64).sum()


def test_threaded_decoding_writes_the_same_cache(tmp_path):
    paths = []
    for i in range(11):  # more images than the 4 x workers queue; PNG and JPEG, odd shapes
        path = tmp_path / f"i{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(_radiograph_like(90 + 7 * i, 140 - 5 * i)).save(path)
        paths.append(str(path))
    ids = [f"p{i}" for i in range(len(paths))]
    files = {}
    for workers in (1, 2, 3):
        files[workers] = tmp_path / f"cache{workers}.h5"
        build_image_cache(ids, paths, files[workers], size=32, manifest_digest="d", workers=workers)
    with ImageCache(files[1]) as one:
        reference = (one.read(0, len(ids)), one.boxes)
    for workers in (2, 3):
        with ImageCache(files[workers]) as other:
            assert np.array_equal(other.read(0, len(ids)), reference[0]) and np.array_equal(other.boxes, reference[1])
    # A broken image in the middle stops the threaded build with its name, and leaves nothing behind.
    Path(paths[6]).write_bytes(b"not an image")
    out = tmp_path / "broken.h5"
    with pytest.raises(MedretError, match=r"i6\.jpg: cannot decode image"):
        build_image_cache(ids, paths, out, size=32, manifest_digest="d", workers=3)
    assert not out.exists() and not list(tmp_path.glob(".broken.h5*"))


def test_image_cache_round_trip_and_provenance(tmp_path):
    path = _write_csv(tmp_path, _rows())
    pairs = read_pairs_csv(path)
    out = tmp_path / "cache.h5"
    build_image_cache(pairs["pair_id"].tolist(), pairs["image_path"].tolist(), out, size=24, manifest_digest="abc")
    with ImageCache(out, manifest_digest="abc") as cache:
        assert len(cache) == 5 and cache.ids[0] == "a" and cache.size == 24
        assert cache.read(0, 2).shape == (2, 24, 24) and cache.read(0, 2).dtype == np.uint8
        assert cache.boxes[0].tolist() == [4, 0, 16, 24]
    with pytest.raises(MedretError, match="different manifest"):
        ImageCache(out, manifest_digest="other")


def test_missing_and_corrupt_images_fail_cleanly(tmp_path):
    rows = _rows()
    path = _write_csv(tmp_path, rows)
    pairs = read_pairs_csv(path)
    (tmp_path / "img" / "b.png").unlink()
    out = tmp_path / "cache.h5"
    with pytest.raises(MedretError, match=r"1 of 5 images not found \(first: .*b\.png\)"):
        build_image_cache(pairs["pair_id"].tolist(), pairs["image_path"].tolist(), out, size=16, manifest_digest="x")
    (tmp_path / "img" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(MedretError, match=r"b\.png: cannot decode image"):
        build_image_cache(pairs["pair_id"].tolist(), pairs["image_path"].tolist(), out, size=16, manifest_digest="x")
    # No half-written cache, no temporary file left behind.
    assert not out.exists() and not list(tmp_path.glob(".cache.h5*"))


def _labelled_manifest() -> Manifest:
    """Five pairs, four report strings; labels (effusion, edema) chosen so each rule shows."""
    rows = [
        # pair, report, effusion, edema
        ("p1", "Effusion.", 1, 0),
        ("p2", "Small effusion.", 1, ""),  # missing edema counts as absent: same vector as p1
        ("p3", "Effusion.", -1, 0),  # uncertain effusion: like p1 under positive, like p4 under negative
        ("p4", "Clear.", 0, 0),
        ("p5", "Unlabelled.", "", ""),  # no labels at all: matches only its own report
    ]
    table = pd.DataFrame(
        {
            "pair_id": [r[0] for r in rows],
            "image_path": "x.png",
            "report": [r[1] for r in rows],
            "split": "test",
            "patient_id": [r[0] for r in rows],
            "study_id": [r[0] for r in rows],
            "view": "PA",
            "label_effusion": [r[2] for r in rows],
            "label_edema": [r[3] for r in rows],
        }
    )
    labels = ["label_effusion", "label_edema"]
    table[labels] = table[labels].apply(pd.to_numeric, errors="coerce")  # as the adapters give them: float, NaN
    return Manifest(select_pairs(table, "test")[0], "d")


def test_relevance_modes_hand_checked():
    manifest = _labelled_manifest()
    assert manifest.texts == ["Effusion.", "Small effusion.", "Clear.", "Unlabelled."]  # text ids 0..3
    as_lists = lambda rel: [r.tolist() for r in rel]  # noqa: E731
    i2t, t2i = manifest.relevance("exact")
    assert as_lists(i2t) == [[0], [1], [0], [2], [3]] and as_lists(t2i) == [[0, 2], [1], [3], [4]]
    i2t, t2i = manifest.relevance("labels")  # uncertain positive: p1, p2, p3 share (1, 0)
    assert as_lists(i2t) == [[0, 1], [0, 1], [0, 1], [2], [3]]
    assert as_lists(t2i) == [[0, 1, 2], [0, 1, 2], [3], [4]]
    i2t, t2i = manifest.relevance("labels", uncertain="negative")  # p3 = (0, 0) joins p4
    assert as_lists(i2t) == [[0, 1], [0, 1], [0, 2], [0, 2], [3]]
    # "Effusion." is carried by p1 (1, 0) and p3 (0, 0): images of both vectors are relevant to it.
    assert as_lists(t2i) == [[0, 1, 2, 3], [0, 1], [2, 3], [4]]


def test_report_corpus_with_an_extra_split(tmp_path):
    manifest = _labelled_manifest()
    train = pd.DataFrame(
        {
            "pair_id": ["t1", "t2", "t3", "t4"],
            "report": ["Clear.", "Edema.", "  ", "Edema."],  # t3 empty: left out
            "split": "train",
            "label_effusion": [0, 0, 0, 0],
            "label_edema": [0, 1, 0, 1],
        }
    )
    corpus = build_corpus(pd.concat([manifest.table, train], ignore_index=True), manifest.table, ["train"])
    c = Corpus(corpus, "d")
    # Evaluated texts keep ids 0..3; "Edema." is new (id 4); "Clear." (id 2) is carried by p4 and t1.
    assert c.texts == ["Effusion.", "Small effusion.", "Clear.", "Unlabelled.", "Edema."]
    assert c.frequency.tolist() == [2, 1, 2, 1, 2]
    as_lists = lambda rel: [r.tolist() for r in rel]  # noqa: E731
    i2t, t2i = manifest.relevance("exact", corpus=c)
    assert as_lists(i2t) == [[0], [1], [0], [2], [3]] and as_lists(t2i) == [[0, 2], [1], [3], [4]]
    # Labels: no evaluated pair has edema, so "Edema." (0, 1) is relevant to no image; p4 (0, 0)
    # finds "Clear." through itself and t1; t2i queries stay the 4 evaluated texts.
    i2t, t2i = manifest.relevance("labels", corpus=c)
    assert as_lists(i2t) == [[0, 1], [0, 1], [0, 1], [2], [3]] and len(t2i) == 4
    path = tmp_path / "corpus.parquet"
    write_table(corpus, path, digest="c1", manifest_digest="d")
    assert Corpus.read(path, manifest).texts == c.texts
    with pytest.raises(MedretError, match=r"corpus\.parquet: made for another manifest; delete it and re-run"):
        Corpus.read(path, Manifest(manifest.table, "other"))


def test_relevance_bad_input():
    manifest = _labelled_manifest()
    with pytest.raises(MedretError, match=r"^config key k: unknown relevance mode 'fuzzy'; use one of exact, labels$"):
        manifest.relevance("fuzzy", key="k")
    no_labels = Manifest(manifest.table.drop(columns=["label_effusion", "label_edema"]), "d")
    with pytest.raises(MedretError, match=r"^config key k: 'labels' needs label_\* columns and this dataset has none"):
        no_labels.relevance("labels", key="k")
    odd = Manifest(manifest.table.assign(label_edema=[0.0, 2.0, 0.0, 0.0, 0.0]), "d")
    with pytest.raises(
        MedretError, match=r"^column label_edema: value 2 \(pair p2\); labels must be 1, 0, -1 or empty$"
    ):
        odd.relevance("labels")


def _jpeg(path: Path, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(path, quality=90)
    return path.read_bytes()


def test_image_problem_reads_the_whole_file(tmp_path):
    data = _jpeg(tmp_path / "ok.jpg")
    assert image_problem(tmp_path / "ok.jpg") is None
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # header intact, entropy data truncated
    assert image_problem(tmp_path / "cut.jpg", decode=False) is None  # the header alone looks fine
    assert image_problem(tmp_path / "cut.jpg").startswith("unreadable: ")
    png = tmp_path / "ok.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)).save(png)
    (tmp_path / "cut.png").write_bytes(png.read_bytes()[:-30])  # last IDAT bytes and IEND lost
    assert image_problem(png) is None and image_problem(tmp_path / "cut.png").startswith("unreadable: ")
    (tmp_path / "text.jpg").write_text("not an image")
    assert image_problem(tmp_path / "text.jpg").startswith("unreadable: cannot identify image file")
    assert image_problem(tmp_path / "gone.jpg") == "not found"
    assert image_problem(tmp_path) == "is a directory"


def test_bad_images_policy(tmp_path):
    pairs = read_pairs_csv(_write_csv(tmp_path, _rows()))
    (tmp_path / "img" / "b.png").unlink()  # the PA image of study s1
    (tmp_path / "img" / "c.png").write_bytes(b"garbage")
    (tmp_path / "img" / "e.png").unlink()  # a training image: not screened here
    key = "datasets.mine.bad_images"
    with pytest.raises(MedretError) as err:
        screen_images(pairs, split="test", policy="fail", key=key)
    message = str(err.value)
    assert "\n" not in message and message.startswith("2 of 4 images missing or unreadable (first: ")
    assert "b.png (not found)" in message and "c.png (unreadable: " in message
    assert message.endswith("fix the files, or set datasets.mine.bad_images: skip to leave those pairs out")
    kept, skipped = screen_images(pairs, split="test", policy="skip", key=key)
    assert kept["pair_id"].tolist() == ["a", "d", "e"]
    assert skipped.columns.tolist() == ["pair_id", "split", "image_path", "problem"]
    assert skipped["pair_id"].tolist() == ["b", "c"] and skipped["problem"][0] == "not found"
    # The study whose PA image is broken is evaluated on its AP image.
    assert select_pairs(kept, "test")[0]["pair_id"].tolist() == ["a"]
    for name in "ad":
        (tmp_path / "img" / f"{name}.png").unlink()
    with pytest.raises(MedretError, match=r"^all 4 images of split 'test' are missing or unreadable \(first: "):
        screen_images(pairs, split="test", policy="skip", key=key)
    with pytest.raises(MedretError, match=r"^config key datasets.mine.bad_images: 'ignore'; use fail or skip$"):
        screen_images(pairs, split="test", policy="ignore", key=key)


def test_degenerate_images_are_bad_images(tmp_path):
    rows = _rows()
    pairs = read_pairs_csv(_write_csv(tmp_path, rows))
    Image.new("L", (1, 1)).save(tmp_path / "img" / "a.png")  # a placeholder pixel
    Image.new("L", (20000, 100), 90).save(tmp_path / "img" / "d.png")  # a strip, not a radiograph
    Image.new("L", (320, 32), 90).save(tmp_path / "img" / "b.png")  # 10:1 and 32 px: the limits, accepted
    with pytest.raises(MedretError) as err:
        screen_images(pairs, split="test", policy="fail", key="datasets.mine.bad_images")
    message = str(err.value)
    assert message.startswith("2 of 4 images missing or unreadable (first: ") and "\n" not in message
    assert "a.png (too small (1 x 1 px; a radiograph needs at least 32 px a side))" in message
    assert "d.png (extreme aspect ratio (20000 x 100 px; more than 10:1))" in message
    kept, skipped = screen_images(pairs, split="test", policy="skip", key="datasets.mine.bad_images")
    assert skipped["pair_id"].tolist() == ["a", "d"] and "b" in kept["pair_id"].tolist()


def test_progress_lines_in_a_log_file(tmp_path, monkeypatch):
    clock = iter(range(0, 1000, 10))  # each perf_counter() call advances 10 s
    monkeypatch.setattr("medret.progress.time.perf_counter", lambda: next(clock))
    with open(tmp_path / "job.log", "w") as log:
        assert list(progress(range(5), 5, "decode eval.h5", unit="img", interval=25, file=log)) == list(range(5))
    lines = (tmp_path / "job.log").read_text().splitlines()
    # start=0; items end at 10, 20, 30 (report: 3/5 after 30 s), 40, 50 (last item, no interim line); end at 60.
    assert lines == ["decode eval.h5: 3/5 img (60%) in 30 s, ~20 s left", "decode eval.h5: 5/5 img in 60 s"]


def test_truncated_cache_is_reported(tmp_path):
    bad = tmp_path / "eval.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(MedretError, match=r"eval\.h5: unreadable or incomplete image cache"):
        ImageCache(bad)


def test_write_table_is_atomic(tmp_path):
    class Boom(pd.DataFrame):
        pass

    out = tmp_path / "t.parquet"
    write_table(pd.DataFrame({"a": [1]}), out, digest="d")
    with pytest.raises(Exception):  # noqa: B017 (any failure will do)
        write_table(pd.DataFrame({"a": [object()]}), out, digest="e")
    assert pd.read_parquet(out)["a"].tolist() == [1]  # the old file is untouched
    assert not list(tmp_path.glob(".t.parquet*"))
