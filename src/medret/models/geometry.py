"""The geometry a model family declares: how its preprocessing first resizes the cached image.

Torch-free (numpy only), so that a family's declaration (:mod:`medret.models.families`) can hold its
resize rule and a config check can read it without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class ResizeRule:
    """The geometry of a family's first resampling of the cached image (see :meth:`ModelAdapter.upsampling`).

    The original pipelines apply this step to the full-resolution file, where it shrinks the image; on a
    cache that is too small it enlarges it instead. ``fit`` says what is brought to ``size`` (height, width):
    ``shorter``: the content box, aspect kept, covers ``size`` (torchvision ``Resize(int)``, open_clip
    ``shortest``); ``longer``: the box, aspect kept, fits inside ``size`` (open_clip ``longest``, the 320-px
    canvas of CXR-RePaiR); ``squash``: each side of the box to ``size``; ``canvas``: the whole padded S x S
    canvas to ``size``.
    """

    fit: Literal["shorter", "longer", "squash", "canvas"]
    size: tuple[int, int]

    def __str__(self) -> str:
        th, tw = self.size
        size = f"{th} px" if th == tw else f"{th}x{tw} px (height x width)"
        return {
            "shorter": f"the content box's shorter side to {size}",
            "longer": f"the content box's longer side to {size}",
            "squash": f"the content box to {size}, aspect not kept",
            "canvas": f"the padded square canvas to {size}",
        }[self.fit]

    def factors(self, boxes: np.ndarray, canvas: int) -> np.ndarray:
        """Per content box (N, 4: top, left, height, width) in an S = ``canvas`` cache: the factor by which
        its more enlarged side is resized (below 1 when both shrink)."""
        h, w = boxes[:, 2].astype(np.float64), boxes[:, 3].astype(np.float64)
        th, tw = self.size
        if self.fit == "canvas":
            return np.full(len(boxes), max(th, tw) / canvas)
        if self.fit == "longer":
            return np.minimum(th / h, tw / w)
        return np.maximum(th / h, tw / w)  # shorter: both sides by this factor; squash: the more stretched side

    def describe(self, box: Sequence[int], canvas: int) -> str:
        """What happens to one box, for messages: ``its shorter side is resized to 512 px, the cache gives 426 px``."""
        h, w = int(box[2]), int(box[3])
        th, tw = self.size
        if self.fit == "canvas":
            target = f"{th} px" if th == tw else f"{th}x{tw} px"
            return f"its padded square canvas is resized to {target}, the cache gives {canvas} px"
        if th == tw and self.fit != "squash":
            side = min(h, w) if self.fit == "shorter" else max(h, w)
            return f"its {self.fit} side is resized to {th} px, the cache gives {side} px"
        how = {"shorter": "to cover", "longer": "to fit in", "squash": "to"}[self.fit]
        return f"it is resized {how} {th}x{tw} px (height x width), the cache gives {h}x{w} px"
