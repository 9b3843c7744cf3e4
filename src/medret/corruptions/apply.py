"""Applying corruption spec rows to cache-space image tensors (the torch side of :mod:`medret.corruptions`).

Imported when a corruption is applied (embedding, example panels, occlusion augmentation in training),
never when a config is checked or specs are made.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from medret.corruptions import FILLS, occlusion_options
from medret.corruptions.artifacts import DRAW
from medret.errors import MedretError

if TYPE_CHECKING:
    from medret.corruptions import CorruptionKind


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


def apply_occlusion(
    kind: CorruptionKind, images: torch.Tensor, boxes: torch.Tensor, rows: pd.DataFrame, entry: Mapping[str, Any]
) -> torch.Tensor:
    """Mask each row's patches, cells or square in its image (the ``occlusion`` kind's transform)."""
    opts = occlusion_options(entry, "<name>")
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


def _artifact(draw: Callable[[np.ndarray, float, int], tuple[np.ndarray, Any]]) -> Callable[..., torch.Tensor]:
    """An artifact of :mod:`medret.corruptions.artifacts` as an operation: drawn on the CPU, moved back."""

    def operation(crop: torch.Tensor, param: float, seed: int) -> torch.Tensor:
        out, _ = draw(np.ascontiguousarray(crop.cpu().numpy()), param, seed)
        return torch.from_numpy(out).to(crop.device)

    return operation


_OPERATIONS: dict[str, Callable[[torch.Tensor, float, int], torch.Tensor]] = {
    **{name: _artifact(draw) for name, draw in DRAW.items()},
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


def apply_acquisition(
    kind: CorruptionKind, images: torch.Tensor, boxes: torch.Tensor, rows: pd.DataFrame, entry: Mapping[str, Any]
) -> torch.Tensor:
    """Apply each row's severity to its image's content box; severity-0 rows are left untouched (the transform of
    the built-in acquisition and artifact kinds)."""
    column = kind.param_columns[0]
    _require(rows, [column, *(["noise_seed"] if kind.seeded else [])])
    levels = rows["level"].to_numpy(np.float64)
    params = rows[column].to_numpy(np.float64)
    seeds = rows["noise_seed"].to_numpy(np.int64) if kind.seeded else np.zeros(len(rows), np.int64)
    operation = _OPERATIONS[kind.name]
    out = images.clone()
    box_list = _boxes(boxes)
    for i in np.flatnonzero(levels != 0):
        top, left, height, width = box_list[i]
        crop = images[i, top : top + height, left : left + width]
        out[i, top : top + height, left : left + width] = operation(crop, float(params[i]), int(seeds[i]))
    return out
