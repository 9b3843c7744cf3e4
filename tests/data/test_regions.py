"""Regions of interest: the CSV format's region_* columns and the phantoms' finding boxes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medret.datasets import REGION_COLUMNS
from medret.datasets.csv import read_pairs_csv
from medret.errors import MedretError
from medret.phantoms import REGION_THRESHOLD, Findings, _render, finding_region, generate

HEADER = "id,image,report,split,region_top,region_left,region_height,region_width\n"


def test_csv_regions_are_read_and_checked(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(HEADER + "a,a.png,r,test,0.1,0.2,0.3,0.4\nb,b.png,r,test,,,,\n")
    table = read_pairs_csv(path)
    assert table.loc[0, list(REGION_COLUMNS)].tolist() == [0.1, 0.2, 0.3, 0.4]
    assert table.loc[1, list(REGION_COLUMNS)].isna().all()
    for bad, match in (
        ("a,a.png,r,test,0.1,0.2,,0.4\n", "row 2 has region"),  # partial
        ("a,a.png,r,test,0.8,0.2,0.3,0.4\n", "row 2 has region"),  # beyond the bottom edge
        ("a,a.png,r,test,0.1,0.2,0,0.4\n", "row 2 has region"),  # empty box
        ("a,a.png,r,test,top,0.2,0.3,0.4\n", "column region_top holds 'top'"),
    ):
        path.write_text(HEADER + bad)
        with pytest.raises(MedretError, match=match):
            read_pairs_csv(path)
    path.write_text("id,image,report,split,region_top\na,a.png,r,test,0.1\n")
    with pytest.raises(MedretError, match="need all four"):
        read_pairs_csv(path)


def test_a_finding_region_is_the_box_of_the_pixels_the_finding_changed():
    base = np.zeros((20, 30), dtype=np.uint8)
    arr = base.copy()
    arr[5:9, 10:22] = REGION_THRESHOLD + 1
    arr[0, 0] = REGION_THRESHOLD  # at the threshold: not a change
    assert finding_region(arr, base) == (5 / 20, 10 / 30, 4 / 20, 12 / 30)
    assert finding_region(base, base) is None


def test_phantom_regions_cover_their_findings(tmp_path):
    out = generate(tmp_path / "demo", n_train=2, n_test=40, size=96, seed=0)
    pairs = pd.read_csv(out / "pairs.csv")
    test, train = pairs[pairs["split"] == "test"], pairs[pairs["split"] == "train"]
    assert train[list(REGION_COLUMNS)].isna().all().all()
    has = test["region_top"].notna()
    # a region exactly for the pairs with a pathology (support devices alone are no finding)
    assert (has == (test["label_no_finding"] == 0)).all() and has.sum() >= 10
    boxes = test.loc[has, list(REGION_COLUMNS)].to_numpy(float)
    assert (boxes[:, 2] > 0).all() and (boxes[:, 0] + boxes[:, 2] <= 1).all() and (boxes[:, 1] + boxes[:, 3] <= 1).all()
    # cardiomegaly: the heart sits mid-lower chest, across the midline
    heart = test[(test["label_cardiomegaly"] == 1) & has]
    for top, left, height, width in heart[list(REGION_COLUMNS)].to_numpy(float):
        assert left < 0.5 < left + width and top + height > 0.5


def test_the_region_is_what_the_findings_drew():
    findings = Findings(effusion=("left", "large"))
    with_it = _render(findings, size=64, seed=1, index=3)
    without = _render(Findings(), size=64, seed=1, index=3)
    top, left, height, width = finding_region(with_it, without)
    rows, cols = slice(round(top * 64), round((top + height) * 64)), slice(round(left * 64), round((left + width) * 64))
    changed = np.abs(with_it.astype(int) - without.astype(int)) > REGION_THRESHOLD
    assert changed.sum() == changed[rows, cols].sum() > 0
    assert left >= 0.45  # the patient's left is the image right
