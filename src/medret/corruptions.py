"""Deterministic corruption specs, and their application to cache-space image tensors.

A corruption is described by a *spec table*, one row per (pair, level, repeat), that a user can
open and inspect; the embedding stage applies the rows to the cached uint8 images on the device,
before each model's own preprocessing, so every model sees exactly the same corrupted anatomy.
Every corruption acts on the image's content box only (the black padding of the square cache
canvas is not part of the radiograph) and returns uint8. Everything random in a row (placement,
cells, noise field, rotation sign) is a pure function of (seed, pair id, corruption name, level,
repeat), and the row stores what is needed to redraw it: adding pairs, levels or models never
changes another row.

Occlusion (kind ``occlusion``; level = the fraction of the content box covered, in [0, 1]):

* ``mode: square`` (default; the study's corruption): one axis-aligned patch whose sides are
  ``sqrt(level)`` of the image's height and width, i.e. a square in normalised coordinates of the
  original image (a true square for square images), covering ``level`` of the image area, placed
  uniformly at random fully inside the image. Columns ``top, left, height, width`` (normalised).
* ``mode: patches``: ``n_patches`` (default 4) squares of area ``level / n_patches`` each (sides
  ``sqrt(level / n_patches)``). They never overlap, so together they cover exactly ``level``: the
  box is cut into g × g cells (g = ceil(sqrt(n_patches))), n_patches distinct cells are drawn at
  random and each patch is placed uniformly at random inside its own cell. A level above
  n_patches / g² cannot be placed this way and is refused (the bound is 1 when n_patches is a
  square number: 1, 4, 9, ...). Columns ``tops, lefts`` (lists, one entry per patch) and
  ``height, width``.
* ``mode: grid``: the box is cut into P × P cells (``grid_size``, default 8; cell edges rounded to
  pixels) and round(level · P²) cells drawn at random are masked, so the masked fraction is that
  count / P² (exactly ``level`` when level · P² is an integer). Columns ``grid_size`` and ``cells``
  (the masked cells' row-major indices).
* ``placement: centre`` (default ``random``) makes the layout deterministic: the square is
  centred; the patches are centred in the n_patches cells nearest the box centre; the grid masks
  the cells nearest the centre (ties in row-major order). Centred layouts get one repeat per level.
* ``fill``: ``black`` (0, default), ``white`` (255), ``mean`` (the image's own mean over its
  content box) or ``noise`` (Gaussian noise with the content box's mean and standard deviation,
  drawn from the row's ``noise_seed`` column). Grey fills leak the image's mean (and, for noise,
  its spread), so at level 1 the images are no longer identical.

Levels 0 and 1 of random layouts are deterministic and get a single repeat.

Acquisition corruptions (one kind each; level = severity, an integer 0..5; severity 0 returns the
image unchanged and its parameter is NaN). Grey levels are on the 0..255 scale; each parameter is
stored per row in the named column:

===============  ====================================================  =====  =====  =====  =====  =====
kind             parameter (column)                                       1      2      3      4      5
===============  ====================================================  =====  =====  =====  =====  =====
gaussian_noise   noise sd in grey levels (``sigma_grey``)                 10     20     30     45     65
poisson_noise    photons per pixel at white (``photons``)                160     80     40     20     10
blur             Gaussian sd / box's longer side (``sigma_frac``)      0.005   0.01  0.015   0.02   0.03
contrast         factor on deviations from the box mean (``factor``)     0.8   0.65    0.5   0.35    0.2
brightness       grey levels added (``shift_grey``)                       13     26     38     51     64
gamma            exponent (``gamma``)                                    1.2    1.4    1.7    2.0    2.5
jpeg             JPEG quality (``quality``)                               50     30     20     10      5
downsample       pixels along the box's longer side (``target_side``)    112     80     56     40     28
rotation         degrees, sign random per row (``angle_deg``)              2      4      6     10     15
===============  ====================================================  =====  =====  =====  =====  =====

* ``gaussian_noise``: I + sd·z per pixel, z ~ N(0, 1). ``poisson_noise`` (quantum noise): a grey
  value I is taken as λ·I/255 expected photons, a Poisson count N is drawn and I' = 255·N/λ, so the
  variance is 255·I/λ, proportional to the mean. Both store ``noise_seed``; the field is drawn on
  the CPU from it (Poisson counts depend on the pixels, so that noise is computed on the CPU) and
  moved to the images' device, so CPU and GPU add the same noise.
* ``blur``: Gaussian filter of sd ``sigma_frac`` × the box's longer side (0.6–3.8 px on a 128-px
  cache, 5–31 px on a 1024-px one), truncated at 4 sd, edges replicated.
* ``contrast``: I' = m + c·(I − m), m the box's mean. ``brightness``: I' = I + b. ``gamma``:
  I' = 255·(I/255)^γ (γ > 1 darkens the mid-tones). All clipped to 0..255.
* ``jpeg``: baseline JPEG at the given quality (libjpeg through Pillow, on the CPU), then decoded.
* ``downsample``: the box is area-averaged so that its longer side has N pixels (the shorter side
  in proportion), then enlarged back by nearest neighbour (pixelation); a box whose longer side is
  at most N is unchanged. N is a size in pixels *across the box*, so the same detail is lost on a
  128-px and a 1024-px cache (factors 1.1–4.6 and 9–37).
* ``rotation``: about the box centre by the row's signed angle (positive = counter-clockwise as
  displayed), bilinear; what comes from outside the box is black.

Results are rounded half up. Noise and JPEG act per cache pixel: how strong they look after a
model resizes the cache depends on the cache size, so compare models on the same cache.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import numbers
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from medret.errors import MedretError
from medret.io import digest

DEFAULT_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SEVERITY_LEVELS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
FILLS = {"black": 0, "white": 255}
OCCLUSION_CHOICES = {
    "mode": ("square", "patches", "grid"),
    "placement": ("random", "centre"),
    "fill": ("black", "white", "mean", "noise"),
}
OCCLUSION_DEFAULTS: dict[str, Any] = {
    "mode": "square",
    "placement": "random",
    "fill": "black",
    "n_patches": 4,
    "grid_size": 8,
}

# kind -> (spec column, parameter at severities 1..5); documented in the module docstring.
ACQUISITION: dict[str, tuple[str, tuple[float, ...]]] = {
    "gaussian_noise": ("sigma_grey", (10, 20, 30, 45, 65)),
    "poisson_noise": ("photons", (160, 80, 40, 20, 10)),
    "blur": ("sigma_frac", (0.005, 0.01, 0.015, 0.02, 0.03)),
    "contrast": ("factor", (0.8, 0.65, 0.5, 0.35, 0.2)),
    "brightness": ("shift_grey", (13, 26, 38, 51, 64)),
    "gamma": ("gamma", (1.2, 1.4, 1.7, 2.0, 2.5)),
    "jpeg": ("quality", (50, 30, 20, 10, 5)),
    "downsample": ("target_side", (112, 80, 56, 40, 28)),
    "rotation": ("angle_deg", (2, 4, 6, 10, 15)),
}
NOISE_KINDS = ("gaussian_noise", "poisson_noise")
RANDOM_KINDS = (*NOISE_KINDS, "rotation")  # the others are deterministic: one repeat per level


def conditions(
    levels: Sequence[float], repeats: int, deterministic: Collection[float] = (0.0, 1.0)
) -> list[tuple[float, int]]:
    """The (level, repeat) pairs to evaluate: ``repeats`` draws per level, one at the deterministic levels."""
    out = []
    for level in sorted({round(float(x), 6) for x in levels}):
        n = 1 if level in deterministic else repeats
        out.extend((level, r) for r in range(n))
    return out


def _row_key(seed: int, pair_id: str, corruption: str, level: float, repeat: int) -> bytes:
    return hashlib.sha256(f"{seed}|{pair_id}|{corruption}|{level:.6f}|{repeat}".encode()).digest()


def placement_rng(seed: int, pair_id: str, corruption: str, level: float, repeat: int) -> np.random.Generator:
    """The random stream of one (pair, corruption, level, repeat): independent of everything else."""
    return np.random.default_rng(int.from_bytes(_row_key(seed, pair_id, corruption, level, repeat)[:16], "little"))


def row_seed(seed: int, pair_id: str, corruption: str, level: float, repeat: int) -> int:
    """The 63-bit noise seed of one row: same key as :func:`placement_rng`, a disjoint part of its hash.

    Disjoint so that choosing a noise fill leaves every placement where it was.
    """
    return int.from_bytes(_row_key(seed, pair_id, corruption, level, repeat)[16:24], "little") >> 1


# --------------------------------------------------------------------------------------------
# Occlusion specs


def occlusion_specs(
    pair_ids: Sequence[str],
    *,
    corruption: str,
    levels: Sequence[float],
    repeats: int,
    seed: int,
    placement: str = "random",
) -> pd.DataFrame:
    """Spec table of the square occlusion: normalised ``top, left, height, width`` per row."""
    rows = []
    for level, repeat in conditions(levels, repeats):
        side = math.sqrt(level)
        for pid in pair_ids:
            if placement == "centre":
                top = left = (1.0 - side) / 2
            else:
                top, left = placement_rng(seed, pid, corruption, level, repeat).uniform(0.0, 1.0 - side, size=2)
            rows.append((pid, level, repeat, top, left, side, side))
    return pd.DataFrame(rows, columns=["pair_id", "level", "repeat", "top", "left", "height", "width"])


def max_patches_level(n_patches: int) -> float:
    """The largest level ``n_patches`` non-overlapping patches can cover in their g × g cell layout."""
    g = math.ceil(math.sqrt(n_patches))
    return n_patches / g**2


def _centre_order(g: int) -> np.ndarray:
    """Row-major cell indices of a g × g grid, nearest the centre first (ties in row-major order)."""
    centres = (np.arange(g) + 0.5) / g - 0.5
    dist = centres[:, None] ** 2 + centres[None, :] ** 2
    return np.argsort(dist.ravel(), kind="stable")


def patch_specs(
    pair_ids: Sequence[str],
    *,
    corruption: str,
    levels: Sequence[float],
    repeats: int,
    seed: int,
    n_patches: int = 4,
    placement: str = "random",
) -> pd.DataFrame:
    """Spec table of ``n_patches`` non-overlapping squares: ``tops, lefts`` lists plus ``height, width``."""
    g = math.ceil(math.sqrt(n_patches))
    cell = 1.0 / g
    centre_cells = _centre_order(g)[:n_patches]
    rows = []
    for level, repeat in conditions(levels, repeats):
        if level > max_patches_level(n_patches) + 1e-12:
            raise ValueError(f"level {level} does not fit {n_patches} non-overlapping patches")
        side = min(math.sqrt(level / n_patches), cell)
        for pid in pair_ids:
            if placement == "centre":
                cells = centre_cells
                offsets = np.full((n_patches, 2), (cell - side) / 2)
            else:
                rng = placement_rng(seed, pid, corruption, level, repeat)
                cells = rng.permutation(g * g)[:n_patches]
                offsets = rng.uniform(0.0, cell - side, size=(n_patches, 2))
            tops = (cells // g) * cell + offsets[:, 0]
            lefts = (cells % g) * cell + offsets[:, 1]
            rows.append((pid, level, repeat, tops.tolist(), lefts.tolist(), side, side))
    return pd.DataFrame(rows, columns=["pair_id", "level", "repeat", "tops", "lefts", "height", "width"])


def grid_specs(
    pair_ids: Sequence[str],
    *,
    corruption: str,
    levels: Sequence[float],
    repeats: int,
    seed: int,
    grid_size: int = 8,
    placement: str = "random",
) -> pd.DataFrame:
    """Spec table of grid-cell masking: ``grid_size`` and the masked ``cells`` (row-major indices)."""
    n_cells = grid_size**2
    centre_cells = _centre_order(grid_size)
    rows = []
    for level, repeat in conditions(levels, repeats):
        k = math.floor(level * n_cells + 0.5)
        for pid in pair_ids:
            if placement == "centre":
                cells = centre_cells[:k]
            else:
                cells = placement_rng(seed, pid, corruption, level, repeat).choice(n_cells, size=k, replace=False)
            rows.append((pid, level, repeat, grid_size, sorted(int(c) for c in cells)))
    return pd.DataFrame(rows, columns=["pair_id", "level", "repeat", "grid_size", "cells"])


def _occlusion_table(
    pair_ids: Sequence[str],
    *,
    corruption: str,
    levels: Sequence[float],
    repeats: int,
    seed: int,
    options: Mapping[str, Any],
) -> pd.DataFrame:
    """Spec table of an occlusion entry; a noise fill adds each row's ``noise_seed``."""
    placement = options["placement"]
    # A centred layout is the same at every repeat.
    common = {"corruption": corruption, "levels": levels, "repeats": 1 if placement == "centre" else repeats}
    if options["mode"] == "patches":
        table = patch_specs(pair_ids, **common, seed=seed, n_patches=options["n_patches"], placement=placement)
    elif options["mode"] == "grid":
        table = grid_specs(pair_ids, **common, seed=seed, grid_size=options["grid_size"], placement=placement)
    else:
        table = occlusion_specs(pair_ids, **common, seed=seed, placement=placement)
    if options["fill"] == "noise":
        keys = zip(table["pair_id"], table["level"], table["repeat"], strict=True)
        table["noise_seed"] = [row_seed(seed, p, corruption, lvl, int(r)) for p, lvl, r in keys]
    return table


# --------------------------------------------------------------------------------------------
# Acquisition specs


def acquisition_specs(
    kind: str,
    pair_ids: Sequence[str],
    *,
    corruption: str,
    levels: Sequence[float],
    repeats: int,
    seed: int,
    options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Spec table of an acquisition corruption: the severity's parameter per row (NaN at severity 0).

    Noise kinds add ``noise_seed``; rotation draws the angle's sign per row. Deterministic kinds
    get one repeat per level.
    """
    column, values = ACQUISITION[kind]
    conds = conditions(levels, repeats, deterministic=(0.0,)) if kind in RANDOM_KINDS else conditions(levels, 1)
    rows = []
    for level, repeat in conds:
        value = float(values[int(level) - 1]) if level else math.nan
        for pid in pair_ids:
            param = value
            if kind == "rotation" and level:
                param = value if placement_rng(seed, pid, corruption, level, repeat).integers(2) else -value
            row = [pid, level, repeat, param]
            if kind in NOISE_KINDS:
                row.append(row_seed(seed, pid, corruption, level, repeat))
            rows.append(row)
    columns = ["pair_id", "level", "repeat", column, *(["noise_seed"] if kind in NOISE_KINDS else [])]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------
# Applying specs to images


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round half up and clip to 0..255."""
    return torch.floor(x + 0.5).clamp_(0, 255).to(torch.uint8)


def _normal(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal field drawn on the CPU from ``seed``: the same numbers whatever the device."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)


def _boxes(boxes: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """The content boxes as Python ints: one device-to-host copy per batch, not one per row."""
    return [(int(t), int(left), int(h), int(w)) for t, left, h, w in boxes.cpu().tolist()]


def _require(rows: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise MedretError(
            f"corruption specs lack column(s) {', '.join(missing)}: they were made with other options; "
            "delete the corruptions/<name>.parquet file and re-run the workflow"
        )


def _rect_mask(images: torch.Tensor, boxes: torch.Tensor, rects: torch.Tensor) -> torch.Tensor:
    """(B, H, W) mask of one normalised rectangle per image, pixel edges rounded half-up."""
    # Edges in float64 on the CPU (a few numbers; MPS has no float64), compared as integers on the device.
    boxes = boxes.to("cpu", torch.float64)
    rects = rects.to("cpu", torch.float64)
    y0 = boxes[:, 0] + torch.floor(rects[:, 0] * boxes[:, 2] + 0.5)
    x0 = boxes[:, 1] + torch.floor(rects[:, 1] * boxes[:, 3] + 0.5)
    y1 = y0 + torch.floor(rects[:, 2] * boxes[:, 2] + 0.5)
    x1 = x0 + torch.floor(rects[:, 3] * boxes[:, 3] + 0.5)
    y0, x0, y1, x1 = (edge.to(images.device, torch.int64) for edge in (y0, x0, y1, x1))
    rows = torch.arange(images.shape[1], device=images.device)
    cols = torch.arange(images.shape[2], device=images.device)
    inside_y = (rows[None, :] >= y0[:, None]) & (rows[None, :] < y1[:, None])
    inside_x = (cols[None, :] >= x0[:, None]) & (cols[None, :] < x1[:, None])
    return inside_y[:, :, None] & inside_x[:, None, :]


def occlude(images: torch.Tensor, boxes: torch.Tensor, rects: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """Fill one rectangle per image; runs on whatever device the tensors are on.

    ``images``: (B, H, W) uint8; ``boxes``: (B, 4) content boxes (top, left, height, width) in
    pixels; ``rects``: (B, 4) normalised (top, left, height, width) relative to the content box.
    Pixel edges are rounded half-up, so the covered area is within one pixel row/column of exact.
    """
    return images.masked_fill(_rect_mask(images, boxes, rects), fill)


def _patch_mask(images: torch.Tensor, boxes: torch.Tensor, rows: pd.DataFrame) -> torch.Tensor:
    tops = np.stack([np.asarray(t, dtype=np.float64) for t in rows["tops"]])
    lefts = np.stack([np.asarray(x, dtype=np.float64) for x in rows["lefts"]])
    sizes = rows[["height", "width"]].to_numpy(np.float64)
    mask = torch.zeros(images.shape, dtype=torch.bool, device=images.device)
    for k in range(tops.shape[1]):  # one patch at a time keeps memory at one (B, H, W) mask
        rects = torch.as_tensor(np.column_stack([tops[:, k], lefts[:, k], sizes]))
        mask |= _rect_mask(images, boxes, rects)
    return mask


def _grid_mask(images: torch.Tensor, boxes: torch.Tensor, rows: pd.DataFrame) -> torch.Tensor:
    """Pixel (y, x) of a box lies in cell (floor(dy·P/h), floor(dx·P/w)): the cells partition the box."""
    mask = torch.zeros(images.shape, dtype=torch.bool, device=images.device)
    sizes = rows["grid_size"].to_numpy(np.int64)
    for i, (top, left, height, width) in enumerate(_boxes(boxes)):
        p = int(sizes[i])
        chosen = torch.zeros(p * p, dtype=torch.bool)
        chosen[torch.tensor(np.asarray(rows["cells"].iloc[i], dtype=np.int64))] = True
        cell_y = torch.arange(height) * p // height
        cell_x = torch.arange(width) * p // width
        block = chosen.view(p, p)[cell_y][:, cell_x]
        mask[i, top : top + height, left : left + width] = block.to(images.device)
    return mask


def _box_stats(images: torch.Tensor, boxes: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and (population) standard deviation of each image over its content box."""
    means, stds = [], []
    for i, (top, left, height, width) in enumerate(_boxes(boxes)):
        crop = images[i, top : top + height, left : left + width].float()
        means.append(float(crop.mean()))
        stds.append(float(crop.std(correction=0)))
    return means, stds


def _fill(images: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor, fill: str, rows: pd.DataFrame) -> torch.Tensor:
    """Replace the masked pixels by the fill: a constant, the box mean, or the row's noise field."""
    if fill in FILLS:
        return images.masked_fill(mask, FILLS[fill])
    means, stds = _box_stats(images, boxes)
    if fill == "mean":
        values = _to_uint8(torch.tensor(means, device=images.device))
        return torch.where(mask, values[:, None, None], images)
    _require(rows, ["noise_seed"])
    field = torch.zeros_like(images)
    seeds = rows["noise_seed"].to_numpy(np.int64)
    for i, (top, left, height, width) in enumerate(_boxes(boxes)):
        seed = seeds[i]
        noise = _normal(int(seed), (height, width)).to(images.device)
        field[i, top : top + height, left : left + width] = _to_uint8(means[i] + stds[i] * noise)
    return torch.where(mask, field, images)


def _apply_occlusion(
    images: torch.Tensor, boxes: torch.Tensor, rows: pd.DataFrame, options: Mapping[str, Any]
) -> torch.Tensor:
    opts = occlusion_options(options, "<name>")
    if opts["mode"] == "patches":
        _require(rows, ["tops", "lefts", "height", "width"])
        mask = _patch_mask(images, boxes, rows)
    elif opts["mode"] == "grid":
        _require(rows, ["grid_size", "cells"])
        mask = _grid_mask(images, boxes, rows)
    else:
        _require(rows, ["top", "left", "height", "width"])
        rects = torch.as_tensor(rows[["top", "left", "height", "width"]].to_numpy(np.float64, copy=True))
        mask = _rect_mask(images, boxes, rects)
    return _fill(images, boxes, mask, opts["fill"], rows)


# Acquisition operations: (content-box crop uint8 (h, w), parameter, noise seed) -> uint8 (h, w).


def _gaussian_noise(crop: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    return _to_uint8(crop.float() + sigma * _normal(seed, tuple(crop.shape)).to(crop.device))


def _poisson_noise(crop: torch.Tensor, photons: float, seed: int) -> torch.Tensor:
    # Counts depend on the pixels, so they are drawn on the CPU: the same on every device.
    rate = crop.cpu().float() * (photons / 255.0)
    counts = torch.poisson(rate, generator=torch.Generator().manual_seed(int(seed)))
    return _to_uint8(counts * (255.0 / photons)).to(crop.device)


def _blur(crop: torch.Tensor, sigma_frac: float, seed: int) -> torch.Tensor:
    sigma = sigma_frac * max(crop.shape)
    radius = math.ceil(4 * sigma)
    if radius == 0:
        return crop.clone()
    x = torch.arange(-radius, radius + 1, device=crop.device, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    img = F.pad(crop.float()[None, None], (radius, radius, 0, 0), mode="replicate")
    img = F.conv2d(img, kernel.view(1, 1, 1, -1))
    img = F.pad(img, (0, 0, radius, radius), mode="replicate")
    img = F.conv2d(img, kernel.view(1, 1, -1, 1))
    return _to_uint8(img[0, 0])


def _contrast(crop: torch.Tensor, factor: float, seed: int) -> torch.Tensor:
    x = crop.float()
    mean = x.mean()
    return _to_uint8(mean + factor * (x - mean))


def _brightness(crop: torch.Tensor, shift: float, seed: int) -> torch.Tensor:
    return _to_uint8(crop.float() + shift)


def _gamma(crop: torch.Tensor, gamma: float, seed: int) -> torch.Tensor:
    return _to_uint8(255.0 * (crop.float() / 255.0) ** gamma)


def encode_jpeg(crop: np.ndarray, quality: int) -> bytes:
    """The baseline greyscale JPEG file of a uint8 (h, w) array at ``quality`` (libjpeg's IJG scaling)."""
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def _jpeg(crop: torch.Tensor, quality: float, seed: int) -> torch.Tensor:
    # Pillow's libjpeg on the CPU (torchvision's JPEG codec is deprecated since 0.29).
    data = encode_jpeg(np.ascontiguousarray(crop.cpu().numpy()), int(quality))
    with Image.open(io.BytesIO(data)) as decoded:
        return torch.from_numpy(np.array(decoded.convert("L"))).to(crop.device)


def _downsample(crop: torch.Tensor, target_side: float, seed: int) -> torch.Tensor:
    height, width = crop.shape
    longer = max(height, width)
    if longer <= target_side:
        return crop.clone()
    scale = target_side / longer
    small_size = (max(1, math.floor(height * scale + 0.5)), max(1, math.floor(width * scale + 0.5)))
    small = F.interpolate(crop.float()[None, None], size=small_size, mode="area")
    return _to_uint8(F.interpolate(small, size=(height, width), mode="nearest-exact")[0, 0])


def _rotate(crop: torch.Tensor, angle_deg: float, seed: int) -> torch.Tensor:
    height, width = crop.shape
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    # Output -> input map of a counter-clockwise (as displayed, rows pointing down) rotation in
    # pixel units, written in affine_grid's per-axis normalised coordinates (so it stays a
    # rotation on non-square boxes).
    theta = torch.tensor(
        [[[c, -s * height / width, 0.0], [s * width / height, c, 0.0]]], dtype=torch.float32, device=crop.device
    )
    grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
    out = F.grid_sample(crop.float()[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _to_uint8(out[0, 0])


_OPERATIONS: dict[str, Callable[[torch.Tensor, float, int], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "poisson_noise": _poisson_noise,
    "blur": _blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "gamma": _gamma,
    "jpeg": _jpeg,
    "downsample": _downsample,
    "rotation": _rotate,
}


def _apply_acquisition(
    kind: str, images: torch.Tensor, boxes: torch.Tensor, rows: pd.DataFrame, options: Mapping[str, Any]
) -> torch.Tensor:
    """Apply each row's severity to its image's content box; severity-0 rows are left untouched."""
    column = ACQUISITION[kind][0]
    _require(rows, [column, *(["noise_seed"] if kind in NOISE_KINDS else [])])
    levels = rows["level"].to_numpy(np.float64)
    params = rows[column].to_numpy(np.float64)
    seeds = rows["noise_seed"].to_numpy(np.int64) if kind in NOISE_KINDS else np.zeros(len(rows), np.int64)
    operation = _OPERATIONS[kind]
    out = images.clone()
    box_list = _boxes(boxes)
    for i in np.flatnonzero(levels != 0):
        top, left, height, width = box_list[i]
        crop = images[i, top : top + height, left : left + width]
        out[i, top : top + height, left : left + width] = operation(crop, float(params[i]), int(seeds[i]))
    return out


# --------------------------------------------------------------------------------------------
# Registry and config entries


@dataclass(frozen=True)
class CorruptionKind:
    """A registered corruption: how to make its spec table and how to apply spec rows to images.

    ``make_specs(pair_ids, *, corruption, levels, repeats, seed, options)``; ``apply(images, boxes,
    rows, entry)``. ``severity``: levels are the integers 0..5 rather than fractions in [0, 1].
    """

    name: str
    make_specs: Callable[..., pd.DataFrame]
    apply: Callable[[torch.Tensor, torch.Tensor, pd.DataFrame, Mapping[str, Any]], torch.Tensor]
    param_columns: tuple[str, ...]
    severity: bool = False
    default_levels: tuple[float, ...] = DEFAULT_LEVELS


KINDS: dict[str, CorruptionKind] = {
    "occlusion": CorruptionKind("occlusion", _occlusion_table, _apply_occlusion, ("top", "left", "height", "width")),
    **{
        kind: CorruptionKind(
            kind,
            functools.partial(acquisition_specs, kind),
            functools.partial(_apply_acquisition, kind),
            (column, *(("noise_seed",) if kind in NOISE_KINDS else ())),
            severity=True,
            default_levels=SEVERITY_LEVELS,
        )
        for kind, (column, _) in ACQUISITION.items()
    },
}


def get_kind(entry: Mapping[str, Any], name: str) -> CorruptionKind:
    """The corruption kind of config entry ``corruptions.<name>``."""
    kind = entry.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise MedretError(f"config key corruptions.{name}.kind: unknown kind {kind!r}; use one of: {', '.join(KINDS)}")
    return KINDS[kind]


def occlusion_options(entry: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The occlusion options of ``corruptions.<name>`` with their defaults, checked."""
    opts = {key: entry.get(key, default) for key, default in OCCLUSION_DEFAULTS.items()}
    for key, allowed in OCCLUSION_CHOICES.items():
        if not isinstance(opts[key], str) or opts[key] not in allowed:
            raise MedretError(
                f"config key corruptions.{name}.{key}: unknown {key} {opts[key]!r}; use one of: {', '.join(allowed)}"
            )
    for key in ("n_patches", "grid_size"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MedretError(f"config key corruptions.{name}.{key}: {value!r} is not a positive integer")
    return opts


def _check_levels(levels: Any, name: str, kind: CorruptionKind, options: Mapping[str, Any]) -> list[float]:
    key = f"config key corruptions.{name}.levels"
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise MedretError(f"{key}: must be a non-empty list of numbers, got {levels!r}")
    for x in levels:
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
            raise MedretError(f"{key}: {x!r} is not a number")
    if kind.severity:
        bad = [x for x in levels if not (float(x).is_integer() and 0 <= x <= 5)]
        if bad:
            raise MedretError(f"{key}: {bad[0]} is not a severity of kind {kind.name}; use integers 0 (clean) to 5")
        return [float(x) for x in levels]
    bad = [x for x in levels if not 0.0 <= float(x) <= 1.0]
    if bad:
        raise MedretError(f"{key}: {bad[0]} is outside [0, 1]")
    if options["mode"] == "patches":
        n = options["n_patches"]
        limit = max_patches_level(n)
        too_big = [x for x in levels if float(x) > limit + 1e-12]
        if too_big:
            raise MedretError(
                f"{key}: {too_big[0]} is more than {n} non-overlapping patches can cover (at most {limit:.4g}); "
                f"lower it or set corruptions.{name}.n_patches to a square number (4, 9, ...)"
            )
    return [float(x) for x in levels]


def make_specs(pair_ids: Sequence[str], name: str, entry: Mapping[str, Any]) -> pd.DataFrame:
    """Spec table for config entry ``corruptions.<name>`` over ``pair_ids``."""
    kind = get_kind(entry, name)
    if kind.severity:
        # Occlusion keys mean nothing here; a schema may fill their defaults, anything else is a mistake.
        for key, default in OCCLUSION_DEFAULTS.items():
            if key in entry and entry[key] != default:
                raise MedretError(f"config key corruptions.{name}.{key}: applies to kind occlusion only; remove it")
        options: dict[str, Any] = {}
    else:
        options = occlusion_options(entry, name)
    levels = _check_levels(entry.get("levels", kind.default_levels), name, kind, options)
    return kind.make_specs(
        pair_ids,
        corruption=name,
        levels=levels,
        repeats=int(entry.get("repeats", 1)),
        seed=int(entry.get("seed", 0)),
        options=options,
    )


def specs_digest(specs: pd.DataFrame, name: str, entry: Mapping[str, Any]) -> str:
    """Digest of a spec table plus the options that change how it is applied."""
    options = {k: v for k, v in entry.items() if k not in ("levels", "repeats", "seed")}
    return digest({"name": name, "options": options, "specs": specs.round(9).astype(str).to_dict(orient="list")})
