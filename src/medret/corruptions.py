"""Deterministic corruption specs, and their application to cache-space image tensors.

A corruption is described by a *spec table*, one row per (pair, level, repeat), that a user can
open and inspect; the embedding stage applies the rows to the cached uint8 images on the device,
before each model's own preprocessing, so every model sees exactly the same corrupted anatomy.

Occlusion (the study's corruption): one axis-aligned patch whose sides are ``sqrt(level)`` of the
image's height and width, i.e. a square in normalised coordinates of the original image (a true
square for square images), covering ``level`` of the image area, placed uniformly at random fully
inside the image. Its placement is a pure function of (seed, pair id, corruption name, level,
repeat): adding pairs, levels or models never moves another pair's patch. Levels 0 and 1 are
deterministic and get a single repeat.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from medret.errors import MedretError
from medret.io import digest

DEFAULT_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
FILLS = {"black": 0, "white": 255}


def conditions(levels: Sequence[float], repeats: int) -> list[tuple[float, int]]:
    """The (level, repeat) pairs to evaluate: ``repeats`` draws per level, one at levels 0 and 1."""
    out = []
    for level in sorted({round(float(x), 6) for x in levels}):
        n = 1 if level in (0.0, 1.0) else repeats
        out.extend((level, r) for r in range(n))
    return out


def placement_rng(seed: int, pair_id: str, corruption: str, level: float, repeat: int) -> np.random.Generator:
    """The random stream of one (pair, corruption, level, repeat): independent of everything else."""
    key = f"{seed}|{pair_id}|{corruption}|{level:.6f}|{repeat}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:16], "little"))


def occlusion_specs(
    pair_ids: Sequence[str], *, corruption: str, levels: Sequence[float], repeats: int, seed: int
) -> pd.DataFrame:
    """Spec table of the square occlusion: normalised ``top, left, height, width`` per row."""
    rows = []
    for level, repeat in conditions(levels, repeats):
        side = math.sqrt(level)
        for pid in pair_ids:
            top, left = placement_rng(seed, pid, corruption, level, repeat).uniform(0.0, 1.0 - side, size=2)
            rows.append((pid, level, repeat, top, left, side, side))
    return pd.DataFrame(rows, columns=["pair_id", "level", "repeat", "top", "left", "height", "width"])


def occlude(images: torch.Tensor, boxes: torch.Tensor, rects: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """Fill one rectangle per image; runs on whatever device the tensors are on.

    ``images``: (B, H, W) uint8; ``boxes``: (B, 4) content boxes (top, left, height, width) in
    pixels; ``rects``: (B, 4) normalised (top, left, height, width) relative to the content box.
    Pixel edges are rounded half-up, so the covered area is within one pixel row/column of exact.
    """
    boxes = boxes.to(images.device, torch.float64)
    rects = rects.to(images.device, torch.float64)
    y0 = boxes[:, 0] + torch.floor(rects[:, 0] * boxes[:, 2] + 0.5)
    x0 = boxes[:, 1] + torch.floor(rects[:, 1] * boxes[:, 3] + 0.5)
    y1 = y0 + torch.floor(rects[:, 2] * boxes[:, 2] + 0.5)
    x1 = x0 + torch.floor(rects[:, 3] * boxes[:, 3] + 0.5)
    rows = torch.arange(images.shape[1], device=images.device, dtype=torch.float64)
    cols = torch.arange(images.shape[2], device=images.device, dtype=torch.float64)
    inside_y = (rows[None, :] >= y0[:, None]) & (rows[None, :] < y1[:, None])
    inside_x = (cols[None, :] >= x0[:, None]) & (cols[None, :] < x1[:, None])
    mask = inside_y[:, :, None] & inside_x[:, None, :]
    return images.masked_fill(mask, fill)


@dataclass(frozen=True)
class CorruptionKind:
    """A registered corruption: how to make its spec table and how to apply spec rows to images."""

    name: str
    make_specs: Callable[..., pd.DataFrame]
    apply: Callable[[torch.Tensor, torch.Tensor, pd.DataFrame, Mapping[str, Any]], torch.Tensor]
    param_columns: tuple[str, ...]


def _apply_occlusion(
    images: torch.Tensor, boxes: torch.Tensor, rows: pd.DataFrame, options: Mapping[str, Any]
) -> torch.Tensor:
    rects = torch.as_tensor(rows[["top", "left", "height", "width"]].to_numpy(np.float64, copy=True))
    return occlude(images, boxes, rects, FILLS[options.get("fill", "black")])


KINDS: dict[str, CorruptionKind] = {
    "occlusion": CorruptionKind("occlusion", occlusion_specs, _apply_occlusion, ("top", "left", "height", "width")),
}


def get_kind(entry: Mapping[str, Any], name: str) -> CorruptionKind:
    """The corruption kind of config entry ``corruptions.<name>``."""
    kind = entry.get("kind")
    if kind not in KINDS:
        raise MedretError(f"config key corruptions.{name}.kind: unknown kind {kind!r}; use one of: {', '.join(KINDS)}")
    return KINDS[kind]


def make_specs(pair_ids: Sequence[str], name: str, entry: Mapping[str, Any]) -> pd.DataFrame:
    """Spec table for config entry ``corruptions.<name>`` over ``pair_ids``."""
    kind = get_kind(entry, name)
    levels = entry.get("levels", DEFAULT_LEVELS)
    bad = [x for x in levels if not 0.0 <= float(x) <= 1.0]
    if bad:
        raise MedretError(f"config key corruptions.{name}.levels: {bad[0]} is outside [0, 1]")
    return kind.make_specs(
        pair_ids,
        corruption=name,
        levels=levels,
        repeats=int(entry.get("repeats", 1)),
        seed=int(entry.get("seed", 0)),
    )


def specs_digest(specs: pd.DataFrame, name: str, entry: Mapping[str, Any]) -> str:
    """Digest of a spec table plus the options that change how it is applied."""
    options = {k: v for k, v in entry.items() if k not in ("levels", "repeats", "seed")}
    return digest({"name": name, "options": options, "specs": specs.round(9).astype(str).to_dict(orient="list")})
