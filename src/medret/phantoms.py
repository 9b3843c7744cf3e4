"""Procedural chest-radiograph phantoms: medret's built-in demo dataset.

THIS DATA IS SYNTHETIC. Every image is drawn from simple geometric primitives (body, lung fields,
mediastinum, heart, diaphragm domes, ribs, spine, clavicles) and every report is filled in from
templates; nothing is derived from real patients or real radiographs. It exists so the whole
pipeline can be run and tested without credentialed data, and it says nothing about clinical
performance.

Layout written by :func:`generate` (the project's generic CSV format)::

    out_dir/pairs.csv            id, image, report, split, patient_id, study_id, view, label_<name>...,
                                 region_top, region_left, region_height, region_width
    out_dir/images/<id>.png      8-bit greyscale, size x size

Rows are ordered: the ``n_train`` training pairs first, then the ``n_test`` test pairs. Pairs are
indexed *within* their split and each pair is a pure function of ``(seed, split, index)``, so the
test set does not change when ``n_train`` does. Two independent random streams are used per pair:
one for the findings, view and report phrasing (so report text does not depend on ``size``) and
one for rendering. Anatomy, edge widths and texture scale with ``size`` and the pixel noise grows
with it as quantum noise does, so an image rendered large and downsampled to 128 px looks like one
rendered at 128 px. Patients have 1-3 studies (one image each), share body anatomy across their
studies and never cross splits. Images follow the radiological convention: the patient's left is
on the image right.

Labels are CheXpert-style 1.0/0.0 values derived from the same findings as the report;
``label_no_finding`` is 1.0 when no pathology is present (support devices alone still count as no
finding, as in CheXpert).

Regions: each test pair with a pathology gets the box around what its findings drew, as fractions of the
image (:func:`finding_region`): the pixels that differ by more than :data:`REGION_THRESHOLD` grey levels from
the same pair rendered without its findings (support devices are kept in both: they are no finding a reader
localises). Occlusion ``placement: inside | outside`` uses it. Training pairs and pairs without a pathology
have none (empty).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import functools
import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw

from medret.errors import MedretError
from medret.io import atomic_output

FINDINGS: tuple[str, ...] = (
    "no_finding",
    "cardiomegaly",
    "pleural_effusion",
    "pneumothorax",
    "consolidation",
    "lung_nodule",
    "support_devices",
)
LABEL_COLUMNS: tuple[str, ...] = tuple(f"label_{name}" for name in FINDINGS)
COLUMNS: tuple[str, ...] = (
    "id",
    "image",
    "report",
    "split",
    "patient_id",
    "study_id",
    "view",
    *LABEL_COLUMNS,
    "region_top",
    "region_left",
    "region_height",
    "region_width",
)

SPLITS = ("train", "test")
_T = TypeVar("_T")
LOBES = ("RUL", "RML", "RLL", "LUL", "LLL")
DEVICES = ("ett", "cvc", "pacemaker")

# Seed-sequence stream ids: the entropy for every generator is [seed, split, stream, index(, purpose)].
_STREAM_GROUPING = 0  # per patient: number of studies
_STREAM_ANATOMY = 1  # per patient: body habitus shared by that patient's studies
_STREAM_FINDINGS = 2  # per pair: findings, view, report phrasing (never touches pixels)
_STREAM_RENDER = 3  # per pair: positioning, exposure, textures, noise
# Render sub-streams, one per purpose, so a finding's random geometry never shifts the draws of the
# base image: rendering the same pair with and without a finding differs only where the finding is.
_R_POSE, _R_TEXTURE, _R_NOISE, _R_CONSOLIDATION, _R_NODULE, _R_DEVICES = range(6)


@dataclass(frozen=True)
class Findings:
    """The ground truth of one study; ``None`` / empty means absent.

    Sides are the patient's (``"left"`` is drawn on the image right).
    """

    cardiomegaly: str | None = None  # "mild" | "moderate"
    effusion: tuple[str, str] | None = None  # (side: left|right|bilateral, size: small|moderate|large)
    pneumothorax: tuple[str, str] | None = None  # (side: left|right, size: small|moderate|large)
    consolidation: str | None = None  # lobe code, one of LOBES
    nodule: tuple[str, str] | None = None  # (side: left|right, zone: upper|mid|lower)
    devices: tuple[str, ...] = field(default=())  # subset of DEVICES, in DEVICES order

    @property
    def count(self) -> int:
        """Number of findings present (all support devices together count as one)."""
        parts = (self.cardiomegaly, self.effusion, self.pneumothorax, self.consolidation, self.nodule)
        return sum(p is not None for p in parts) + bool(self.devices)

    def labels(self) -> dict[str, float]:
        """CheXpert-style binary labels; support devices alone do not negate ``no_finding``."""
        lab = {
            "cardiomegaly": self.cardiomegaly is not None,
            "pleural_effusion": self.effusion is not None,
            "pneumothorax": self.pneumothorax is not None,
            "consolidation": self.consolidation is not None,
            "lung_nodule": self.nodule is not None,
            "support_devices": bool(self.devices),
        }
        lab["no_finding"] = not any(v for k, v in lab.items() if k != "support_devices")
        return {name: float(lab[name]) for name in FINDINGS}


@dataclass(frozen=True)
class PairSpec:
    """Everything about one pair except its pixels."""

    split: str
    index: int  # within the split
    patient: int  # within the split
    study: int  # 1-based study number within the patient
    findings: Findings
    view: str
    report: str


# --------------------------------------------------------------------------------------------------
# Findings and reports (stream a)


def _rng(seed: int, split: str, stream: int, index: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), stream, index, *extra])


def _pick(rng: np.random.Generator, options: Sequence[_T], p: Sequence[float] | None = None) -> _T:
    """One (weighted) choice; Generator.choice costs ten times more for a handful of options."""
    r = rng.random()
    if p is None:
        return options[min(int(r * len(options)), len(options) - 1)]
    total = 0.0
    for option, weight in zip(options, p, strict=True):
        total += weight
        if r < total:
            return option
    return options[-1]


# Relative frequency of each kind of finding among abnormal studies.
_KIND_WEIGHTS = {
    "cardiomegaly": 0.18,
    "effusion": 0.20,
    "pneumothorax": 0.13,
    "consolidation": 0.19,
    "nodule": 0.12,
    "devices": 0.18,
}
_SIZES = ("small", "moderate", "large")


def _sample_findings(rng: np.random.Generator) -> Findings:
    """Draw one study's findings: ~35% entirely normal, otherwise 1-3 findings without replacement."""
    if rng.random() < 0.35:
        return Findings()
    n = _pick(rng, (1, 2, 3), (0.55, 0.30, 0.15))
    remaining = dict(_KIND_WEIGHTS)
    chosen = set()
    for _ in range(n):
        total = sum(remaining.values())
        kind = _pick(rng, list(remaining), [w / total for w in remaining.values()])
        chosen.add(kind)
        del remaining[kind]
    cardiomegaly: str | None = None
    consolidation: str | None = None
    effusion: tuple[str, str] | None = None
    pneumothorax: tuple[str, str] | None = None
    nodule: tuple[str, str] | None = None
    devices: tuple[str, ...] = ()
    # The order of draws is fixed so that a pair's findings depend only on its own generator.
    if "cardiomegaly" in chosen:
        cardiomegaly = _pick(rng, ("mild", "moderate"), (0.6, 0.4))
    if "effusion" in chosen:
        side = _pick(rng, ("left", "right", "bilateral"), (0.38, 0.38, 0.24))
        effusion = (side, _pick(rng, _SIZES, (0.5, 0.35, 0.15)))
    if "pneumothorax" in chosen:
        pneumothorax = (_pick(rng, ("left", "right")), _pick(rng, _SIZES, (0.5, 0.3, 0.2)))
    if "consolidation" in chosen:
        consolidation = _pick(rng, LOBES)
    if "nodule" in chosen:
        nodule = (_pick(rng, ("left", "right")), _pick(rng, ("upper", "mid", "lower")))
    if "devices" in chosen:
        while True:  # non-empty subset; an ETT is the most common device in ICU films
            mask = rng.random(3) < np.array([0.6, 0.5, 0.3])
            if mask.any():
                break
        devices = tuple(d for d, m in zip(DEVICES, mask, strict=True) if m)
    return Findings(cardiomegaly, effusion, pneumothorax, consolidation, nodule, devices)


_LOBE_NAMES = {
    "RUL": "right upper lobe",
    "RML": "right middle lobe",
    "RLL": "right lower lobe",
    "LUL": "left upper lobe",
    "LLL": "left lower lobe",
}
_NORMAL_REPORTS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Heart size is normal. Lungs are clear. No pleural effusion or pneumothorax.",
    "No acute cardiopulmonary process. No focal consolidation, pleural effusion, or pneumothorax.",
)
_DEVICE_SENTENCES = {
    "ett": (
        "Endotracheal tube in standard position.",
        "Endotracheal tube terminates above the carina.",
        "ET tube in appropriate position.",
    ),
    "cvc": (
        "Right internal jugular central venous catheter with tip in the SVC.",
        "Right IJ catheter terminates in the SVC.",
        "Right internal jugular central line in place.",
    ),
    "pacemaker": (
        "Left chest wall pacemaker with leads in the right atrium and right ventricle.",
        "Left-sided pacemaker with leads in standard position.",
        "Dual-lead pacemaker in place.",
    ),
}
# Closing sentence for studies whose only finding is a support device.
_DEVICE_ONLY_TAIL = (
    "No acute cardiopulmonary process.",
    "Lungs are clear.",
    "No focal consolidation, pleural effusion, or pneumothorax.",
)


def _report(f: Findings, style: int) -> str:
    """Impression text for ``f`` in one of three phrasing styles.

    Positive sentences never start with "No" and negations always do, so the text can be
    labelled with a simple sentence-level rule. Because one ``style`` picks every sentence, a
    given set of findings has at most three report strings (four for normal studies).
    """
    if f.count == 0:
        return _NORMAL_REPORTS[style % len(_NORMAL_REPORTS)]
    s = style % 3
    out: list[str] = [_DEVICE_SENTENCES[d][s] for d in f.devices]
    if f.cardiomegaly:
        sev = f.cardiomegaly
        out.append(
            (
                f"{sev.capitalize()} cardiomegaly.",
                f"The heart is {sev}ly enlarged.",
                f"{sev.capitalize()} enlargement of the cardiac silhouette.",
            )[s]
        )
    if f.consolidation:
        lobe = _LOBE_NAMES[f.consolidation]
        out.append(
            (
                f"{lobe.capitalize()} consolidation.",
                f"Consolidation in the {lobe}.",
                f"Focal airspace opacity in the {lobe}, concerning for pneumonia.",
            )[s]
        )
    if f.effusion:
        side, size = f.effusion
        if side == "bilateral":
            out.append(
                (
                    f"{size.capitalize()} bilateral pleural effusions.",
                    f"{size.capitalize()} pleural effusions bilaterally.",
                    f"There are {size} bilateral pleural effusions.",
                )[s]
            )
        else:
            out.append(
                (
                    f"{size.capitalize()} {side} pleural effusion.",
                    f"{size.capitalize()} {side}-sided pleural effusion.",
                    f"There is a {size} {side} pleural effusion.",
                )[s]
            )
    if f.pneumothorax:
        side, size = f.pneumothorax
        out.append(
            (
                f"{size.capitalize()} {side} pneumothorax.",
                f"There is a {size} {side} pneumothorax.",
                f"{size.capitalize()} {side}-sided pneumothorax is present.",
            )[s]
        )
    if f.nodule:
        side, zone = f.nodule
        out.append(
            (
                f"{side.capitalize()} {zone} lung nodule.",
                f"Nodular opacity in the {side} {zone} lung.",
                f"Small nodule in the {side} {zone} lung zone.",
            )[s]
        )
    if f.labels()["no_finding"]:  # devices only
        out.append(_DEVICE_ONLY_TAIL[s])
    elif not f.effusion and not f.pneumothorax:
        out.append(("No pleural effusion or pneumothorax.", "No pneumothorax.", "No pneumothorax or effusion.")[s])
    elif not f.pneumothorax:
        out.append("No pneumothorax.")
    elif not f.effusion and s != 1:
        out.append("No pleural effusion.")
    return " ".join(out)


def _patient_table(seed: int, split: str, n: int) -> list[tuple[int, int]]:
    """(patient, 1-based study number) of the first ``n`` pairs of ``split``.

    Patient sizes come from per-patient generators, so ``n`` only truncates the table: a pair's
    patient does not depend on how many pairs are generated.
    """
    out: list[tuple[int, int]] = []
    patient = 0
    while len(out) < n:
        k = _pick(_rng(seed, split, _STREAM_GROUPING, patient), (1, 2, 3), (0.5, 0.3, 0.2))
        out.extend((patient, s + 1) for s in range(k))
        patient += 1
    return out[:n]


def _pair_specs(seed: int, split: str, n: int) -> list[PairSpec]:
    specs = []
    for index, (patient, study) in enumerate(_patient_table(seed, split, n)):
        rng = _rng(seed, split, _STREAM_FINDINGS, index)
        findings = _sample_findings(rng)
        # Portable AP films are the norm for ICU patients with lines and tubes.
        view = "AP" if rng.random() < (0.8 if findings.devices else 0.25) else "PA"
        style = int(rng.integers(0, 12))  # normal reports use 4 variants, others 3
        specs.append(PairSpec(split, index, patient, study, findings, view, _report(findings, style)))
    return specs


# --------------------------------------------------------------------------------------------------
# Rendering (stream b)


def _sig(x: np.ndarray) -> np.ndarray:
    """Smooth-enough 0->1 ramp over x in [-1, 1]; with x = signed distance / edge width it anti-aliases edges.

    A clipped linear ramp rather than tanh: an order of magnitude cheaper and free of
    transcendental functions whose last bits vary between CPUs.
    """
    return np.clip(x, -1.0, 1.0) * 0.5 + 0.5


def _superellipse(
    u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float, p: float, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Soft inside-mask and approximate signed distance (positive inside) of a superellipse."""
    a, b = np.abs(u - cx) / rx, np.abs(v - cy) / ry
    # p == 2 is the common case; the general power is several times slower.
    root = np.sqrt(a * a + b * b) if p == 2.0 else (a**p + b**p) ** (1.0 / p)
    d = (1.0 - root) * min(rx, ry)
    return _sig(d / eps), d


def _bezier(ctrl: Sequence[tuple[float, float]], n: int = 16) -> np.ndarray:
    """``n`` points along the cubic Bezier curve with four control points, as an (n, 2) array."""
    c = np.asarray(ctrl, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 3 * c[0] + 3 * (1 - t) ** 2 * t * c[1] + 3 * (1 - t) * t**2 * c[2] + t**3 * c[3]


@functools.lru_cache(maxsize=64)
def _upsampler(cells: int, size: int) -> np.ndarray:
    """(size, cells) row-normalised Gaussian interpolation weights from a coarse grid to ``size`` samples."""
    pos = (np.arange(size) + 0.5) / size * cells - 0.5
    w = np.exp(-(((pos[:, None] - np.arange(cells)[None, :]) / 0.8) ** 2))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _coarse_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a small random grid smoothly upsampled, so texture scale ignores size."""
    grid = rng.random((cells, cells)).astype(np.float32)
    w = _upsampler(cells, size)
    smooth = w @ grid @ w.T  # tiny products: ~20x faster than resizing through PIL
    # Smoothing shrinks the spread around 0.5; stretch it back so thresholds keep their meaning.
    return np.clip(0.5 + (smooth - 0.5) * 2.2, 0.0, 1.0)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge replication (sigma in pixels, kernel truncated at ~2 sigma)."""
    if sigma <= 0:
        return img
    r = max(1, int(2.0 * sigma + 0.5))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    p = np.pad(img, r, mode="edge")
    h, w = img.shape
    rows = k[0] * p[:, 0:w]
    for i in range(1, 2 * r + 1):
        rows += k[i] * p[:, i : i + w]
    out = k[0] * rows[0:h, :]
    for i in range(1, 2 * r + 1):
        out += k[i] * rows[i : i + h, :]
    return out


def _lung_dist(us: np.ndarray, v: np.ndarray, apex: float, lat_max: float, ua: float = 0.30) -> np.ndarray:
    """Approximate signed distance (positive inside) to one lung field, ignoring the diaphragm.

    ``us`` is the lateral coordinate of the lung's own side. Lateral and medial borders are
    elliptical arcs from a rounded apex at (ua, apex); the medial border meets the mediastinum
    quickly, the lateral one widens down to the costophrenic angle.
    """
    t_lat = np.clip((v - apex) / (0.15 - apex), 0.0, 1.0)
    t_med = np.clip((v - apex) / 0.35, 0.0, 1.0)
    lateral = ua + (lat_max - ua) * np.sqrt(1.0 - (1.0 - t_lat) ** 2)
    medial = ua - (ua - 0.115) * np.sqrt(1.0 - (1.0 - t_med) ** 2)
    return np.minimum(np.minimum(lateral - us, us - medial), v - apex)


@dataclass(frozen=True)
class _Anatomy:
    """Per-patient body habitus, shared by all of a patient's studies."""

    body_w: float
    lung_rx: float
    apex: float
    heart: float
    dome: float
    rib_spacing: float
    tissue: float


@functools.lru_cache(maxsize=256)  # consecutive studies of one patient reuse it
def _patient_anatomy(seed: int, split: str, patient: int) -> _Anatomy:
    g = _rng(seed, split, _STREAM_ANATOMY, patient)
    return _Anatomy(
        body_w=float(g.uniform(0.86, 0.97)),
        lung_rx=float(g.uniform(0.33, 0.38)),
        apex=float(g.uniform(-0.84, -0.76)),
        heart=float(g.uniform(0.92, 1.06)),
        dome=float(g.uniform(-0.04, 0.04)),
        rib_spacing=float(g.uniform(0.155, 0.18)),
        tissue=float(g.uniform(0.46, 0.56)),
    )


# Lobe regions in (lateral, vertical) coordinates of the lung's own side: (u_s, v, rx, ry).
_LOBE_REGIONS = {
    "RUL": (0.40, -0.42, 0.24, 0.22),
    "RML": (0.26, 0.20, 0.18, 0.15),
    "RLL": (0.48, 0.36, 0.20, 0.17),
    "LUL": (0.40, -0.32, 0.24, 0.26),
    "LLL": (0.50, 0.36, 0.18, 0.17),
}
_ZONES = {"upper": -0.45, "mid": -0.08, "lower": 0.26}
# Lateral range of nodule centres per zone; lower ones stay lateral to the heart border.
_NODULE_LATERAL = {"upper": (0.28, 0.55), "mid": (0.32, 0.58), "lower": (0.44, 0.62)}
_SIZE_LEVEL = {"small": 0, "moderate": 1, "large": 2}


def _draw_devices(
    devices: Sequence[str],
    g: np.random.Generator,
    *,
    size: int,
    pose: tuple[float, float, float, float],
    insp: float,
) -> np.ndarray:
    """Density of radiopaque devices, drawn with PIL on a 3x canvas and box-filtered for anti-aliasing.

    Thin lines are far cheaper to rasterise than to evaluate as distance fields on the full grid.
    """
    ss = 3  # supersampling; 4x costs twice as much for no visible gain after the blur
    shift_x, shift_y, rot, scale = pose
    cr, sr = math.cos(rot), math.sin(rot)
    px_per_unit = scale * size * ss / 2.0
    peak = 0.8  # density of a fully opaque canvas pixel

    def to_px(pts: Sequence[tuple[float, float]] | np.ndarray) -> list[tuple[float, float]]:
        # Inverse of the pose used for the (u, v) grid in _render, in canvas pixel coordinates.
        out = []
        for pu, pv in np.asarray(pts, dtype=np.float64):
            x = scale * (cr * pu - sr * pv) + shift_x
            y = scale * (sr * pu + cr * pv) + shift_y
            out.append(((x + 1.0) / 2.0 * size * ss - 0.5, (y + 1.0) / 2.0 * size * ss - 0.5))
        return out

    def width(w: float) -> int:
        return max(1, round(w * px_per_unit))

    def level(d: float) -> int:
        return round(d / peak * 255)

    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    if "ett" in devices:
        tip = -0.46 + float(g.normal(0, 0.03))
        line = to_px([(-0.005, -1.2), (-0.01, tip)])
        draw.line(line, fill=level(0.35), width=width(0.056))  # tube
        draw.line(line, fill=level(0.55), width=width(0.022))  # radiopaque stripe
    if "cvc" in devices:
        start = float(g.uniform(-0.30, -0.22))
        tip = -0.12 + float(g.normal(0, 0.04))
        pts = _bezier([(start, -1.1), (-0.16, -0.62), (-0.05, -0.45), (-0.05, tip)], 12)
        draw.line(to_px(pts), fill=level(0.5), width=width(0.024), joint="curve")
    if "pacemaker" in devices:
        bx, by = 0.56 + float(g.normal(0, 0.03)), -0.64 + float(g.normal(0, 0.03))
        rv_apex = (0.20 + float(g.normal(0, 0.03)), 0.42 + insp)
        lead = _bezier([(bx - 0.05, by), (0.05, -0.62), (-0.10, 0.05), rv_apex], 14)
        draw.line(to_px(lead), fill=level(0.5), width=width(0.022), joint="curve")
        corners = [
            (bx - 0.085, by - 0.06),
            (bx + 0.085, by - 0.06),
            (bx + 0.085, by + 0.06),
            (bx - 0.085, by + 0.06),
        ]
        draw.polygon(to_px(corners), fill=level(0.75))
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) * (peak / 255.0)


def _render(
    findings: Findings,
    *,
    size: int,
    seed: int,
    split: str = "test",
    index: int = 0,
    patient: int = 0,
    view: str = "PA",
) -> np.ndarray:
    """Render one frontal radiograph phantom as a (size, size) uint8 array.

    Geometry is defined in anatomical coordinates u (image right = patient left) and v (down),
    roughly [-1, 1]; a per-study pose maps them to pixels. All randomness comes from render
    sub-streams of ``(seed, split, index)`` plus the patient's anatomy, never from ``findings``.
    """
    anat = _patient_anatomy(seed, split, patient)
    pose = _rng(seed, split, _STREAM_RENDER, index, _R_POSE)
    shift_x, shift_y = (float(t) for t in pose.normal(0.0, 0.03, 2))
    rot = float(pose.normal(0.0, 0.035))
    scale = float(pose.uniform(0.93, 1.03))
    insp = float(pose.normal(0.0, 0.025)) + anat.dome
    gain = float(pose.uniform(0.9, 1.12))
    offset = float(pose.uniform(-0.04, 0.04))
    gamma = float(pose.uniform(0.85, 1.15))
    noise_sigma = float(pose.uniform(0.008, 0.02))
    marking_phase = [float(t) for t in pose.uniform(0.0, 2 * np.pi, 2)]
    ap = view == "AP"
    if ap:  # AP films: magnified heart, shallower inspiration, flatter contrast
        insp -= 0.05
        gain *= 0.92

    # float32 halves the cost of the transcendental functions; Python-float scalars keep it float32.
    c = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    x, y = np.meshgrid(c - shift_x, c - shift_y)
    cr, sr = math.cos(rot), math.sin(rot)
    u = (cr * x + sr * y) / scale
    v = (-sr * x + cr * y) / scale
    eps = 1.2 / (size * scale)  # ~0.6 px edge width in anatomical units
    v_lo, v_hi = v.min(axis=1), v.max(axis=1)  # per image row, for evaluating small shapes locally

    def rows(top: float, bottom: float) -> slice:
        """Image rows whose v range meets [top, bottom]; v increases down the rows."""
        hit = np.flatnonzero((v_hi >= top) & (v_lo <= bottom))
        return slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0)

    tex = _rng(seed, split, _STREAM_RENDER, index, _R_TEXTURE)
    wobble = _coarse_noise(tex, 10, size) - 0.5
    mottle = _coarse_noise(tex, 20, size) - 0.5
    patch_noise = _coarse_noise(tex, 9, size)

    # Body: torso with sloping shoulders and a neck; everything else is air.
    top = np.clip((-0.72 - v) / 0.35, 0.0, 1.0)
    half_w = anat.body_w - 0.55 * top**2
    body = _sig((half_w - np.abs(u)) / eps)
    dens = 0.03 + anat.tissue * body * (1.0 + 0.08 * mottle)
    wall = np.clip(np.abs(u) / anat.body_w, 0.0, 1.0) ** 2
    dens += 0.06 * body * wall * wall * wall  # tangential chest wall

    # Lung fields, diaphragm domes and costophrenic angles. Both sides are computed at once on |u|
    # (the lungs never reach the midline) with side-dependent parameters; u < 0 is the image left,
    # i.e. the patient's right.
    au = np.abs(u)
    right = (u < 0).astype(np.float32)

    def on_side(side: str) -> np.ndarray | float:
        return 1.0 if side == "bilateral" else right if side == "right" else 1.0 - right

    apex = anat.apex + 0.5 * insp
    lat_max = 0.40 + anat.lung_rx
    base = 0.62 + insp - 0.04 * right  # the right hemidiaphragm sits higher
    dome = base - 0.17 * np.clip(1.0 - ((au - 0.40) / 0.42) ** 2, 0.0, 1.0)
    lung_dist = _lung_dist(au, v, apex, lat_max)
    lung = _sig(np.minimum(lung_dist, dome - v) / eps)
    # Vascular markings radiate from the hila and fade towards the periphery.
    # The sine of the angle around the hilum stands in for the angle itself (arctan2 costs more than
    # the rest of the lung put together); rays just bunch up slightly towards the horizontal.
    r = np.hypot(au - 0.18, v + 0.02)
    sin_angle = (v + 0.02) / (r + 1e-3)
    phase0 = marking_phase[0] + (marking_phase[1] - marking_phase[0]) * right
    rays = (0.5 + 0.5 * np.cos(16.0 * sin_angle + 8.0 * wobble + phase0)) ** 2
    markings = lung * (rays * rays * np.exp(-r / 0.38) + 0.35 * np.exp(-((r / 0.12) ** 2)))
    # Abdomen below the domes is denser than the chest wall (liver on the right).
    below = _sig((v - dome) / eps) * _sig((anat.body_w - 0.05 - au) / eps)
    abdomen = (0.12 + 0.03 * right) * below

    # Heart: bulges to the image right; enlarged for cardiomegaly, magnified on AP films.
    hs = anat.heart * (1.07 if ap else 1.0)
    hrx, hry, hcx = 0.33 * hs, 0.25 * hs, 0.10
    if findings.cardiomegaly:
        grow = 1.30 if findings.cardiomegaly == "mild" else 1.48
        hrx, hry, hcx = hrx * grow, hry * (1 + (grow - 1) * 0.4), hcx + 0.12 * (grow - 1)
    hcy = 0.50 + insp - hry * 0.6
    mediastinum = _sig((0.125 - np.abs(u - 0.01)) / eps) * _sig((hcy + 0.05 - v) / eps) * body
    heart_rows = rows(hcy - hry - 2 * eps, hcy + hry + 2 * eps)
    heart, _ = _superellipse(u[heart_rows], v[heart_rows], hcx, hcy, hrx, hry, 2.0, eps)
    mediastinum[heart_rows] = np.maximum(mediastinum[heart_rows], heart)
    knob_rows = rows(-0.34 - 0.07 - 2 * eps, -0.34 + 0.07 + 2 * eps)  # aortic knob on the left
    knob, _ = _superellipse(u[knob_rows], v[knob_rows], 0.12, -0.34, 0.075, 0.07, 2.0, eps)
    mediastinum[knob_rows] = np.maximum(mediastinum[knob_rows], knob)
    # The heart sits on the diaphragm: below the domes it merges into the abdomen.
    central = mediastinum * _sig((dome + 0.02 - v) / eps)
    lung = lung * (1.0 - central)
    dens += np.maximum(0.17 * central, abdomen)

    # Gastric bubble under the left hemidiaphragm.
    bubble_rows = rows(0.68 + insp - 0.06 - 2 * eps, 0.68 + insp + 0.06 + 2 * eps)
    bubble, _ = _superellipse(u[bubble_rows], v[bubble_rows], 0.42, 0.68 + insp, 0.11, 0.06, 2.0, eps)
    dens[bubble_rows] -= 0.12 * bubble * _sig((v[bubble_rows] - dome[bubble_rows]) / eps)

    # Findings that replace lung air (effusion, consolidation) or add air (pneumothorax).
    extra_air = np.zeros_like(u)
    fill = np.zeros_like(u)
    if findings.effusion:
        side, sz = findings.effusion
        level = (0.46, 0.28, 0.04)[_SIZE_LEVEL[sz]] + insp
        hemi = _sig(np.minimum(lung_dist + 0.02, dome + 0.10 - v) / eps) * (1.0 - central) * on_side(side)
        meniscus = level - 0.26 * np.clip((au - 0.15) / 0.6, 0.0, 1.0) ** 2  # rises along the chest wall
        eff = hemi * _sig((v - meniscus) / 0.03)
        fill = np.maximum(fill, eff)
        dens += 0.07 * eff  # also blots out the dome and costophrenic angle
    if findings.pneumothorax:
        side, sz = findings.pneumothorax
        lung_s = lung * on_side(side)
        f = (0.13, 0.22, 0.34)[_SIZE_LEVEL[sz]]
        # The lung falls away from the apex and lateral chest wall, as on an upright film.
        cd = _lung_dist(au, v, apex + 1.3 * f, lat_max - 0.5 * f, ua=0.30 + 0.2 * f)
        collapsed = _sig(cd / eps)
        ptx = lung_s * (1.0 - collapsed)
        extra_air += 0.45 * ptx
        markings *= 1.0 - ptx  # no lung markings beyond the pleural line
        dens += 0.15 * lung_s * _sig((1.5 * eps - np.abs(cd)) / eps)  # visceral pleural line
        dens += 0.03 * lung_s * collapsed
    if findings.consolidation:
        cu, cv, rx, ry = _LOBE_REGIONS[findings.consolidation]
        side = "right" if findings.consolidation.startswith("R") else "left"
        g = _rng(seed, split, _STREAM_RENDER, index, _R_CONSOLIDATION)
        cu += float(g.normal(0, 0.03))
        cv += float(g.normal(0, 0.03))
        blob, _ = _superellipse(au, v, cu, cv, rx, ry, 2.0, 0.06)
        patchy = np.clip((patch_noise - 0.2) / 0.45, 0.0, 1.0)
        cons = blob * lung * on_side(side) * (0.45 + 0.55 * patchy)
        fill = np.maximum(fill, 0.95 * cons)
        dens += 0.08 * cons
    air = lung * (1.0 - 0.95 * fill)
    markings *= (1.0 - central) * (1.0 - fill)
    dens -= 0.33 * air + 0.12 * extra_air
    dens += 0.10 * markings

    # Ribs: posterior arcs curving down laterally, strongest over the lungs.
    phase = (v + 0.9 - 1.1 * (au - 0.35) ** 2) / anat.rib_spacing
    rib = _sig((np.cos(2 * np.pi * phase) - 0.3) / 0.2)
    rib_zone = _sig((au - 0.09) / eps) * _sig((anat.body_w - 0.06 - au) / eps) * _sig((0.62 + insp - v) / 0.05)
    dens += 0.05 * rib * rib_zone * body
    # Clavicles, spine with vertebral segments, and the air-filled trachea.
    cl_rows = rows(-0.95, -0.65)
    cl_u, cl_v = au[cl_rows], v[cl_rows]
    clav_v = -0.74 - 0.45 * np.clip(cl_u - 0.25, 0.0, None) ** 2 - 0.02 * cl_u  # curves up towards the shoulder
    clavicle = _sig((0.028 - np.abs(cl_v - clav_v)) / eps) * _sig((0.62 - cl_u) / 0.03) * _sig((cl_u - 0.05) / eps)
    dens[cl_rows] += 0.13 * clavicle
    vert = 0.5 + 0.5 * np.cos(2 * np.pi * (v / 0.13))
    dens += (0.10 + 0.05 * vert) * _sig((0.065 - np.abs(u)) / eps) * body
    trachea_rows = rows(-2.0, -0.30 + eps)
    trachea = _sig((0.032 - np.abs(u[trachea_rows] + 0.01)) / eps) * _sig((-0.30 - v[trachea_rows]) / eps)
    dens[trachea_rows] -= 0.16 * trachea

    if findings.nodule:
        side, zone = findings.nodule
        s = 1 if side == "left" else -1
        g = _rng(seed, split, _STREAM_RENDER, index, _R_NODULE)
        lo, hi = _NODULE_LATERAL[zone]
        nu = s * float(g.uniform(lo, hi))
        nv = _ZONES[zone] + float(g.normal(0, 0.04)) + (0.03 if zone == "lower" else 0.0) + insp * 0.5
        nr = float(g.uniform(0.032, 0.05))  # diameter ~3-5% of the image width
        nodule_rows = rows(nv - nr - 2 * eps, nv + nr + 2 * eps)
        rr = np.hypot(u[nodule_rows] - nu, v[nodule_rows] - nv) / nr
        dens[nodule_rows] += 0.30 * np.sqrt(np.clip(1.0 - rr * rr, 0.0, 1.0)) + 0.05 * _sig((1.0 - rr) * nr / eps)

    if findings.devices:
        dens += _draw_devices(
            findings.devices,
            _rng(seed, split, _STREAM_RENDER, index, _R_DEVICES),
            size=size,
            pose=(shift_x, shift_y, rot, scale),
            insp=insp,
        )

    # Exposure and contrast; the gamma curve goes through a small lookup table because a per-pixel
    # power costs as much as drawing the whole heart.
    img = _blur(dens, 0.6 * size / 128.0)
    img *= gain
    img += offset - 0.03 * gain
    np.clip(img, 0.0, 1.0, out=img)
    lut = (np.arange(1024, dtype=np.float32) / 1023.0) ** gamma
    img = lut[(img * 1023.0 + 0.5).astype(np.intp)]
    noise = _rng(seed, split, _STREAM_RENDER, index, _R_NOISE).standard_normal((size, size), dtype=np.float32)
    # Quantum noise at a fixed dose: a pixel of a quarter of the area catches a quarter of the
    # photons, so its noise doubles. The level is set at 128 px; downsampled to 128 px, an image
    # rendered at any size shows about the same noise.
    img += (noise_sigma * size / 128.0) * noise
    img *= 255.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Writing


def _pair_id(row: int) -> str:
    return f"p{row:06d}"


# One unit of work: ([(row, spec), ...], size, seed, images_dir).
_Chunk = tuple[list[tuple[int, PairSpec]], int, int, str]


#: Grey levels by which a finding must change a pixel to fall in the pair's region.
REGION_THRESHOLD = 8


def finding_region(arr: np.ndarray, without: np.ndarray) -> tuple[float, float, float, float] | None:
    """The box around the pixels a pair's findings changed (``arr`` against the same pair rendered ``without``
    them), as fractions of the image: top, left, height, width; ``None`` when nothing changed."""
    changed = np.abs(arr.astype(np.int16) - without.astype(np.int16)) > REGION_THRESHOLD
    if not changed.any():
        return None
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    h, w = arr.shape
    return rows[0] / h, cols[0] / w, (rows[-1] + 1 - rows[0]) / h, (cols[-1] + 1 - cols[0]) / w


def _render_chunk(args: _Chunk) -> list[tuple[int, tuple[float, float, float, float] | None]]:
    """Render and write one chunk of pairs, and return each test pair's finding region; a top-level function so
    worker processes can pickle it."""
    items, size, seed, images_dir = args
    regions = []
    for row, spec in items:
        where = {"size": size, "seed": seed, "split": spec.split, "index": spec.index}
        where |= {"patient": spec.patient, "view": spec.view}
        arr = _render(spec.findings, **where)
        Image.fromarray(arr).save(os.path.join(images_dir, f"{_pair_id(row)}.png"))
        region = None
        # The evaluated pairs' regions: the same pair without its pathology (support devices kept, they are no
        # finding a reader localises) differs only where the findings are (render sub-streams, module doc).
        if spec.split == "test" and spec.findings.count - bool(spec.findings.devices) > 0:
            region = finding_region(arr, _render(Findings(devices=spec.findings.devices), **where))
        regions.append((row, region))
    return regions


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise MedretError(f"phantoms: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter


def _worker_init() -> None:
    """Worker-process setup: keep freed heap memory rather than returning it to the OS.

    Every image allocates and frees dozens of short-lived 64 KB arrays. With glibc's default 128 KiB
    trim threshold the heap shrinks and regrows for each image, and the page faults cost about a
    third of the render time (more in VMs). Worker processes belong to us, so tuning their allocator
    affects nobody else; where glibc's ``mallopt`` is missing this does nothing.
    """
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).mallopt(_M_TRIM_THRESHOLD, 64 << 20)


def _run_chunks(chunks: list[_Chunk], workers: int) -> dict[int, tuple[float, float, float, float] | None]:
    if workers == 1 or len(chunks) == 1:
        return {row: region for chunk in chunks for row, region in _render_chunk(chunk)}
    # fork (where available) avoids re-importing the caller's __main__, which Snakemake `script:`
    # files do not guard; every pair is seeded on its own, so process scheduling cannot change output.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx, initializer=_worker_init)
    try:
        return {row: region for done in pool.map(_render_chunk, chunks) for row, region in done}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def generate(
    out_dir: str | Path,
    *,
    n_train: int = 2000,
    n_test: int = 500,
    size: int = 128,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Write out_dir/pairs.csv and out_dir/images/<id>.png atomically (whole directory); return out_dir.

    The dataset is synthetic (see the module docstring). Rows list the ``n_train`` training pairs
    first, then the ``n_test`` test pairs; ids are ``p`` plus the zero-padded row number. The same
    arguments give byte-identical output regardless of ``workers``. An existing ``out_dir`` is
    replaced only once the new one is complete; on any error nothing is left behind.
    """
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 1)
    size = _check_int("size", size, 32)
    seed = _check_int("seed", seed, 0)
    workers = _check_int("workers", workers, 1)
    out = Path(out_dir)

    specs = _pair_specs(seed, "train", n_train) + _pair_specs(seed, "test", n_test)
    with atomic_output(out, directory=True) as tmp:
        images = tmp / "images"
        images.mkdir()
        rows = list(enumerate(specs))
        # Several chunks per worker balance load; bounded so per-task overhead stays small.
        chunk = max(16, min(256, math.ceil(len(rows) / (workers * 8))))
        chunks = [(rows[i : i + chunk], size, seed, str(images)) for i in range(0, len(rows), chunk)]
        regions = _run_chunks(chunks, workers)
        with open(tmp / "pairs.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(COLUMNS)
            for row, spec in rows:
                pid = f"{spec.split}-{spec.patient:05d}"
                labels = spec.findings.labels()
                writer.writerow(
                    [
                        _pair_id(row),
                        f"images/{_pair_id(row)}.png",
                        spec.report,
                        spec.split,
                        pid,
                        f"{pid}-s{spec.study}",
                        spec.view,
                        *(f"{labels[name]:.1f}" for name in FINDINGS),
                        *(f"{v:.6f}" for v in regions[row] or ()),
                        *([""] * 4 if regions[row] is None else []),
                    ]
                )
    return out
