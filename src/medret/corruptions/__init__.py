"""Corruption kinds: their declarations, their deterministic spec tables, and (in :mod:`medret.corruptions.apply`)
their application to cache-space image tensors.

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
* ``placement: inside | outside`` (square only) place the square relative to each pair's region of
  interest (the dataset's ``region_*`` columns): over it, covering all of it or as much as the square's
  area allows, uniformly among such places; or the same area uniformly anywhere disjoint from it (the
  least overlapping place where none is disjoint). Rows add ``region`` (the pair has one; one without is
  placed at random) and ``overlap`` (the fraction of the region covered). :mod:`medret.placement`
  contrasts the two.
* ``placement: worst`` (square only): repeat r puts the square at cell (r // 3, r % 3) of a 3 × 3
  grid of places (top and left each at 0, (1 − side)/2 and 1 − side), and the ranks stage keeps each
  query's worst rank over the nine (:func:`medret.retrieval.worst_over_repeats`): an adversarial lower
  bound over that grid for image → report queries, at nine forward passes per level. Report → image
  queries take the worst of the nine places, each shared by all images (not a per-image adversary).
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

Artifacts of real films (``markers``, ``devices``, ``collimation``, ``positioning``, ``overexposure``; parameters
in :data:`ARTIFACTS`) are severity kinds too, seeded, with ``repeats`` draws per severity; what they draw is
defined in :mod:`medret.corruptions.artifacts`.

Results are rounded half up. Noise and JPEG act per cache pixel: how strong they look after a
model resizes the cache depends on the cache size, so compare models on the same cache.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medret.errors import MedretError
from medret.io import digest
from medret.plugins import Option, check_target, entry_point_declarations, resolve

DEFAULT_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SEVERITY_LEVELS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
FILLS = {"black": 0, "white": 255}
OCCLUSION_CHOICES = {
    "mode": ("square", "patches", "grid"),
    "placement": ("random", "centre", "inside", "outside", "worst"),
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
# kind -> (spec column, parameter at severities 1..5); defined in medret.corruptions.artifacts' docstring.
ARTIFACTS: dict[str, tuple[str, tuple[float, ...]]] = {
    "markers": ("count", (1, 2, 3, 4, 6)),
    "devices": ("n_lines", (1, 2, 3, 4, 5)),
    "collimation": ("border_frac", (0.04, 0.08, 0.12, 0.18, 0.25)),
    "positioning": ("shift_frac", (0.03, 0.06, 0.1, 0.15, 0.2)),
    "overexposure": ("area_frac", (0.03, 0.06, 0.1, 0.15, 0.22)),
}
NOISE_KINDS = ("gaussian_noise", "poisson_noise")
RANDOM_KINDS = (*NOISE_KINDS, "rotation", *ARTIFACTS)  # the others are deterministic: one repeat per level


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


#: ``placement: worst`` tries the square at g × g places: top and left each at 0, (1 - side) / 2 and 1 - side.
WORST_GRID = 3


def _inside(start: float, extent: float, side: float, rng: np.random.Generator) -> float:
    """Offset along one axis of a segment of length ``side`` in [0, 1] covering [start, start + extent], or lying
    inside it when shorter, uniformly among such offsets."""
    lo, hi = (
        (max(0.0, start + extent - side), min(start, 1.0 - side)) if side >= extent else (start, start + extent - side)
    )
    return float(rng.uniform(lo, hi)) if hi > lo else lo


def _outside(region: Sequence[float], side: float, rng: np.random.Generator) -> tuple[float, float]:
    """(top, left) of a ``side`` square in the unit box disjoint from ``region`` (top, left, height, width),
    uniform over all such placements; where none exists, the one covering the least of the region."""
    a_y, a_x, r_y, r_x = region
    free = 1.0 - side
    # Offsets that overlap the region: (a - side, a + extent) on each axis, clipped to [0, free].
    y0, y1 = max(0.0, a_y - side), min(free, a_y + r_y)
    x0, x1 = max(0.0, a_x - side), min(free, a_x + r_x)
    if y1 <= y0 or x1 <= x0:  # no placement overlaps at all
        return float(rng.uniform(0.0, free)), float(rng.uniform(0.0, free))
    # The rest of [0, free]^2: bands above and below the overlapping rows, and left and right of it between them.
    pieces = [(0.0, y0, 0.0, free), (y1, free, 0.0, free), (y0, y1, 0.0, x0), (y0, y1, x1, free)]
    areas = np.array([max(0.0, b - a) * max(0.0, d - c) for a, b, c, d in pieces])
    if areas.sum() <= 0.0:  # the square cannot avoid the region: the end of each axis that overlaps it least
        top = 0.0 if max(0.0, min(side, a_y + r_y) - a_y) <= max(0.0, a_y + r_y - max(free, a_y)) else free
        left = 0.0 if max(0.0, min(side, a_x + r_x) - a_x) <= max(0.0, a_x + r_x - max(free, a_x)) else free
        return top, left
    a, b, c, d = pieces[int(rng.choice(len(pieces), p=areas / areas.sum()))]
    return float(rng.uniform(a, b)), float(rng.uniform(c, d))


def covered(region: Sequence[float], top: float, left: float, side: float) -> float:
    """The fraction of ``region`` (top, left, height, width) a ``side`` square at (top, left) covers."""
    a_y, a_x, r_y, r_x = region
    over_y = max(0.0, min(top + side, a_y + r_y) - max(top, a_y))
    over_x = max(0.0, min(left + side, a_x + r_x) - max(left, a_x))
    return over_y * over_x / (r_y * r_x)


def occlusion_specs(
    pair_ids: Sequence[str],
    *,
    corruption: str,
    levels: Sequence[float],
    repeats: int,
    seed: int,
    placement: str = "random",
    regions: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Spec table of the square occlusion: normalised ``top, left, height, width`` per row.

    ``inside`` and ``outside`` placements need ``regions`` (indexed by pair id, the four region columns); their
    rows add ``region`` (whether the pair has one; one without is placed at random) and ``overlap`` (the
    fraction of the region covered); ``worst`` rows add ``grid_cell`` (the place tried, = the repeat).
    """
    relative = placement in ("inside", "outside")
    if relative and regions is None:
        raise MedretError(f"placement {placement} needs each pair's region; the dataset gives none")
    boxes = {} if regions is None else {
        pid: tuple(float(v) for v in row) for pid, row in regions.iterrows() if not np.isnan(row.to_numpy(float)).any()
    }  # fmt: skip
    rows = []
    for level, repeat in conditions(levels, repeats):
        side = math.sqrt(level)
        for pid in pair_ids:
            rng = placement_rng(seed, pid, corruption, level, repeat)
            region = boxes.get(pid) if relative else None
            if placement == "centre":
                top = left = (1.0 - side) / 2
            elif placement == "worst":  # repeat r is cell (r // g, r % g) of the g x g grid of placements
                top, left = ((1.0 - side) * k / (WORST_GRID - 1) for k in divmod(repeat, WORST_GRID))
            elif region is not None and placement == "inside":
                top, left = _inside(region[0], region[2], side, rng), _inside(region[1], region[3], side, rng)
            elif region is not None:
                top, left = _outside(region, side, rng)
            else:
                top, left = rng.uniform(0.0, 1.0 - side, size=2)
            row = [pid, level, repeat, top, left, side, side]
            if relative:
                row += [region is not None, covered(region, top, left, side) if region is not None else math.nan]
            if placement == "worst":
                row.append(repeat)
            rows.append(row)
    columns = ["pair_id", "level", "repeat", "top", "left", "height", "width"]
    columns += ["region", "overlap"] if relative else ["grid_cell"] if placement == "worst" else []
    return pd.DataFrame(rows, columns=columns)


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


def occlusion_table(
    kind: CorruptionKind,
    pair_ids: Sequence[str],
    *,
    corruption: str,
    levels: Sequence[float],
    repeats: int,
    seed: int,
    options: Mapping[str, Any],
    regions: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The ``occlusion`` kind's spec table; a noise fill adds each row's ``noise_seed``. ``regions``: the pairs'
    regions of interest, for ``placement: inside | outside``."""
    placement = options["placement"]
    if placement in ("inside", "outside", "worst") and options["mode"] != "square":
        raise MedretError(f"placement {placement} places one square: set mode: square (not {options['mode']})")
    # A centred layout is the same at every repeat; the worst placement's repeats are its grid's cells.
    n = {"centre": 1, "worst": WORST_GRID**2}.get(placement, repeats)
    common = {"corruption": corruption, "levels": levels, "repeats": n}
    if options["mode"] == "patches":
        table = patch_specs(pair_ids, **common, seed=seed, n_patches=options["n_patches"], placement=placement)
    elif options["mode"] == "grid":
        table = grid_specs(pair_ids, **common, seed=seed, grid_size=options["grid_size"], placement=placement)
    else:
        table = occlusion_specs(pair_ids, **common, seed=seed, placement=placement, regions=regions)
    if options["fill"] == "noise":
        keys = zip(table["pair_id"], table["level"], table["repeat"], strict=True)
        table["noise_seed"] = [row_seed(seed, p, corruption, lvl, int(r)) for p, lvl, r in keys]
    return table


# --------------------------------------------------------------------------------------------
# Acquisition specs


def severity_specs(
    kind: CorruptionKind,
    pair_ids: Sequence[str],
    *,
    corruption: str,
    levels: Sequence[float],
    repeats: int,
    seed: int,
    options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Spec table of a severity kind (the acquisition corruptions; a plug-in's severity kind may use it too):
    the kind's parameter at each severity 1..5 per row in its first ``param_columns`` column (NaN at 0).

    A ``seeded`` kind adds ``noise_seed``, and a ``random_sign`` kind draws the parameter's sign per row;
    both get ``repeats`` draws per level, every other kind one.
    """
    column = kind.param_columns[0]
    random = kind.seeded or kind.random_sign
    conds = conditions(levels, repeats, deterministic=(0.0,)) if random else conditions(levels, 1)
    rows = []
    for level, repeat in conds:
        value = float(kind.parameters[int(level) - 1]) if level else math.nan
        for pid in pair_ids:
            param = value
            if kind.random_sign and level:
                param = value if placement_rng(seed, pid, corruption, level, repeat).integers(2) else -value
            row = [pid, level, repeat, param]
            if kind.seeded:
                row.append(row_seed(seed, pid, corruption, level, repeat))
            rows.append(row)
    columns = ["pair_id", "level", "repeat", column, *(["noise_seed"] if kind.seeded else [])]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------
# Declarations and registry


@dataclass(frozen=True)
class CorruptionKind:
    """A corruption kind: its one declaration.

    ``specs(kind, pair_ids, *, corruption, levels, repeats, seed, options)`` makes the spec table;
    ``transform(kind, images, boxes, rows, entry)`` applies spec rows to (B, S, S) uint8 images (torch)
    and returns them; each is a callable or a ``"module:attribute"`` string, imported when used, so the
    declaration itself needs no torch. ``param_columns`` are the spec columns the transform reads.
    ``severity``: levels are the integers 0..5 (0 the clean image), with ``parameters`` the values at
    severities 1..5 (:func:`severity_specs`); otherwise fractions in [0, 1]. ``seeded`` rows carry a
    ``noise_seed``, ``random_sign`` ones a parameter of random sign. ``options`` are the kind's own config
    keys (:class:`medret.plugins.Option`).
    """

    name: str
    specs: Callable[..., pd.DataFrame] | str
    transform: Callable[..., Any] | str
    param_columns: tuple[str, ...]
    severity: bool = False
    parameters: tuple[float, ...] = ()
    seeded: bool = False
    random_sign: bool = False
    description: str = ""
    options: Mapping[str, Option] = field(default_factory=dict)
    regions: bool = False

    def __post_init__(self) -> None:
        check_target(self.specs, f"corruption kind {self.name}: specs")
        check_target(self.transform, f"corruption kind {self.name}: transform")
        if self.severity and len(self.parameters) != 5:
            raise ValueError(f"corruption kind {self.name}: a severity kind declares 5 parameters (severities 1..5)")

    @property
    def default_levels(self) -> tuple[float, ...]:
        return SEVERITY_LEVELS if self.severity else DEFAULT_LEVELS

    @property
    def levels_option(self) -> Option:
        """``levels`` as this kind takes it: integer severities 0..5, or fractions of the image in [0, 1]."""
        if self.severity:
            items, text = {"type": "integer", "minimum": 0, "maximum": 5}, "severities 0 (clean) to 5"
        else:
            items, text = {"type": "number", "minimum": 0, "maximum": 1}, "fractions of the image area covered"
        schema = {"type": "array", "minItems": 1, "items": items}
        return Option(f"corruption levels: {text}", schema, default=list(self.default_levels))

    def make_specs(self, pair_ids: Sequence[str], **kwargs: Any) -> pd.DataFrame:
        """The spec table (``specs``; imports its module)."""
        return resolve(self.specs)(self, pair_ids, **kwargs)

    def apply(self, images: Any, boxes: Any, rows: pd.DataFrame, entry: Mapping[str, Any]) -> Any:
        """The images with the rows applied (``transform``; imports its module, which imports torch)."""
        return resolve(self.transform)(self, images, boxes, rows, entry)


_OCCLUSION_OPTIONS = {
    "mode": Option(
        "square: one square patch covering `level` of the image (the study's). patches: n_patches non-overlapping "
        "squares of area level / n_patches each, each inside its own randomly chosen cell of a g x g layout "
        "(g = ceil(sqrt(n_patches))). grid: round(level x grid_size^2) of the grid_size x grid_size cells masked",
        {"type": "string", "enum": list(OCCLUSION_CHOICES["mode"])},
        default=OCCLUSION_DEFAULTS["mode"],
    ),
    "placement": Option(
        "random: uniformly at random, fully inside the image. centre: the square centred, the patches centred in "
        "the cells nearest the centre, the grid cells nearest the centre; centred layouts get one repeat per level. "
        "inside (mode square): over the image's region of interest (the dataset's region_* columns), covering all "
        "of it or as much as the square's area allows, uniformly among such places. outside (mode square): the "
        "same area anywhere disjoint from the region (where it cannot be, covering the least of it). Pairs without "
        "a region are placed at random; the spec rows say which (region) and how much of it is covered (overlap). "
        "worst (mode square): the square at each of 3 x 3 places (top and left at 0, (1 - side) / 2, 1 - side; "
        "the repeats), and each query keeps its worst rank over them: an adversarial lower bound over that grid, "
        "per model (image -> report; report -> image takes the worst of the nine places all images share)",
        {"type": "string", "enum": list(OCCLUSION_CHOICES["placement"])},
        default=OCCLUSION_DEFAULTS["placement"],
    ),
    "n_patches": Option(
        "(mode patches) number of patches; levels above n_patches / ceil(sqrt(n_patches))^2 cannot be placed "
        "without overlap and are refused (the bound is 1 for 1, 4, 9, ... patches)",
        {"type": "integer", "minimum": 1},
        default=OCCLUSION_DEFAULTS["n_patches"],
    ),
    "grid_size": Option(
        "(mode grid) cells per side of the masking grid",
        {"type": "integer", "minimum": 1},
        default=OCCLUSION_DEFAULTS["grid_size"],
    ),
    "fill": Option(
        "what covers the masked pixels, in the original image's space: black 0, white 255, mean (the image's own "
        "mean) or noise (Gaussian noise with the image's mean and standard deviation, seeded per pair, level and "
        "repeat)",
        {"type": "string", "enum": list(OCCLUSION_CHOICES["fill"])},
        default=OCCLUSION_DEFAULTS["fill"],
    ),
}
#: What each acquisition kind does (the parameters are :data:`ACQUISITION`'s; the module doc defines them).
_ACQUISITION_TEXT = {
    "gaussian_noise": "Gaussian noise of the given sd in grey levels",
    "poisson_noise": "quantum (Poisson) noise at the given photons per pixel at white",
    "blur": "Gaussian blur, sd a fraction of the image's longer side",
    "contrast": "deviations from the image's mean multiplied by the factor",
    "brightness": "grey levels added",
    "gamma": "gamma curve with the given exponent",
    "jpeg": "JPEG compression at the given quality",
    "downsample": "pixelation to the given pixels along the image's longer side",
    "rotation": "rotation by the given degrees about the image centre, sign random per image",
    "markers": "burned-in laterality marker (L/R) and annotations (PORTABLE, AP SUPINE, ...) at corners and edges",
    "devices": "lines and tubes crossing the chest, n_lines - 1 ECG electrodes, an implanted device from 3 lines on",
    "collimation": "asymmetric black borders removing the given fraction of rows and of columns",
    "positioning": "the field shifted by the given fraction of the box in a random direction, cropped, rest black",
    "overexposure": "a saturated ellipse covering the given fraction of the box, with a soft edge",
}

_KINDS: dict[str, CorruptionKind] = {}
_PLUGINS_LOADED = False


def register_kind(kind: CorruptionKind) -> CorruptionKind:
    """Add a corruption kind to the registry (a kind with the same name is replaced)."""
    _KINDS[kind.name] = kind
    return kind


register_kind(
    CorruptionKind(
        "occlusion",
        occlusion_table,
        "medret.corruptions.apply:apply_occlusion",
        ("top", "left", "height", "width"),
        description="part of the image masked: one square (the study's), patches or grid cells",
        options=_OCCLUSION_OPTIONS,
        regions=True,
    )
)
for _name, (_column, _values) in {**ACQUISITION, **ARTIFACTS}.items():
    _seeded = _name in NOISE_KINDS or _name in ARTIFACTS
    register_kind(
        CorruptionKind(
            _name,
            severity_specs,
            "medret.corruptions.apply:apply_acquisition",
            (_column, *(("noise_seed",) if _seeded else ())),
            severity=True,
            parameters=_values,
            seeded=_seeded,
            random_sign=_name == "rotation",
            description=f"{_ACQUISITION_TEXT[_name]} ({_column}: {', '.join(f'{v:g}' for v in _values)} at 1..5)",
        )
    )


def list_kinds() -> dict[str, CorruptionKind]:
    """Every registered corruption kind by name: the built-in ones and those of installed plug-ins."""
    global _PLUGINS_LOADED
    if not _PLUGINS_LOADED:
        _PLUGINS_LOADED = True
        for kind in entry_point_declarations("corruption", CorruptionKind):
            if kind.name in _KINDS and _KINDS[kind.name] is not kind:
                raise MedretError(f"corruption kind plug-in {kind.name!r} has the name of a registered kind; rename it")
            register_kind(kind)
    return dict(_KINDS)


def get_kind(entry: Mapping[str, Any], name: str) -> CorruptionKind:
    """The corruption kind of config entry ``corruptions.<name>``."""
    kinds = list_kinds()
    kind = entry.get("kind")
    if not isinstance(kind, str) or kind not in kinds:
        raise MedretError(f"config key corruptions.{name}.kind: unknown kind {kind!r}; use one of: {', '.join(kinds)}")
    return kinds[kind]


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


def make_specs(
    pair_ids: Sequence[str], name: str, entry: Mapping[str, Any], regions: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Spec table for config entry ``corruptions.<name>`` over ``pair_ids``; ``regions`` (the pairs' regions of
    interest, when the dataset has them) go to a kind that declares ``regions``."""
    kind = get_kind(entry, name)
    options = occlusion_options(entry, name) if kind.name == "occlusion" else dict(entry)
    levels = _check_levels(entry.get("levels", kind.default_levels), name, kind, options)
    extra = {"regions": regions} if kind.regions else {}
    return kind.make_specs(
        pair_ids,
        corruption=name,
        levels=levels,
        repeats=int(entry.get("repeats", 1)),
        seed=int(entry.get("seed", 0)),
        options=options,
        **extra,
    )


def specs_digest(specs: pd.DataFrame, name: str, entry: Mapping[str, Any]) -> str:
    """Digest of a spec table plus the options that change how it is applied."""
    options = {k: v for k, v in entry.items() if k not in ("levels", "repeats", "seed")}
    return digest({"name": name, "options": options, "specs": specs.round(9).astype(str).to_dict(orient="list")})
