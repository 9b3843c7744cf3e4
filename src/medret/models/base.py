"""The torch side of the model contract: :class:`ModelAdapter` and device resolution.

Kept apart from :mod:`medret.models` (the registry), so that checking a config never imports
torch; family modules import from here.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medret.errors import MedretError
from medret.io import digest
from medret.models import COMMON_OPTIONS
from medret.models.geometry import ResizeRule

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, then Apple MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MedretError(f"config key device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedretError(f"config key device: {name!r} requested but CUDA is not available; use device: auto")
    return device


class ModelAdapter(ABC):
    """Base of every family's adapter: batching, device, autocast and normalisation live here."""

    #: Family name, set by each subclass.
    family: str = ""
    #: Geometry of the preprocessing's first resampling: the family declaration's (medret.models.families), or
    #: set when the files that define it are loaded (None: not declared, never reported as enlarging).
    resize_rule: ResizeRule | None = None

    def __init__(self, entry: Mapping[str, Any]) -> None:
        from medret.models import list_families

        declared = list_families().get(self.family)
        if self.resize_rule is None and declared is not None and isinstance(declared.resize, ResizeRule):
            self.resize_rule = declared.resize  # the family's declaration; a file-dependent rule is set on load
        self.entry = {**COMMON_OPTIONS, **entry}
        self.batch_size = int(self.entry["batch_size"])
        self.device = resolve_device(str(self.entry["device"]))
        self.dtype = _DTYPES[self.entry["dtype"]]

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """Size of the joint embedding space."""

    def spec(self) -> dict[str, Any]:
        """Everything that determines this model's embeddings (hashed into the provenance).

        The config entry without the keys that cannot change an embedding (batch size, device) or
        that only name files (``checkpoint``, ``text_model``), plus the family's :meth:`identity`:
        the files' content, not their paths, identifies a model.
        """
        skip = ("batch_size", "device", "checkpoint", "text_model")
        return {**{k: v for k, v in self.entry.items() if k not in skip}, **self.identity()}

    def identity(self) -> dict[str, Any]:
        """Content digests of the model's files and the preprocessing/tokenising settings they imply."""
        return {}

    def spec_hash(self) -> str:
        """Digest of :meth:`spec`, stored in every embedding file this model writes."""
        return digest(self.spec())

    def enlargement(
        self, boxes: np.ndarray | torch.Tensor, canvas: int, sizes: np.ndarray | torch.Tensor | None = None
    ) -> np.ndarray:
        """Per content box (N, 4) of an S = ``canvas`` cache, the factor by which this model's preprocessing
        enlarges it where the cache has shrunk the source (1.0: not enlarged).

        ``sizes`` (N, 2) are the sources' own (height, width): an image the cache kept at its own size is
        resized from its original pixels, as the model's own pipeline does, so it never counts. Without
        ``sizes`` every box is taken for a shrunk source.
        """
        boxes = _numpy(boxes)
        if self.resize_rule is None or len(boxes) == 0:
            return np.ones(len(boxes))
        factors = np.maximum(self.resize_rule.factors(boxes, canvas), 1.0)
        if sizes is not None:
            shrunk = (boxes[:, 2:4] < _numpy(sizes)).any(axis=1)
            factors = np.where(shrunk, factors, 1.0)
        return factors

    def upsampling(
        self, boxes: np.ndarray | torch.Tensor, canvas: int, sizes: np.ndarray | torch.Tensor | None = None
    ) -> float:
        """The largest factor by which this model's preprocessing enlarges any of the given content boxes of an
        S = ``canvas`` cache (1.0 = none), where the original pipeline shrinks the full-resolution image."""
        factors = self.enlargement(boxes, canvas, sizes)
        return float(factors.max()) if len(factors) else 1.0

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.dtype == torch.float32:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    @torch.inference_mode()
    def encode_images(
        self, images: torch.Tensor, boxes: torch.Tensor | None = None, sizes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embed (B, S, S) uint8 cache-space images; ``boxes`` are their content boxes (B, 4) and ``sizes`` the
        (height, width) of their source images (B, 2; default: the boxes' own, i.e. sources kept at their size).

        Returns (B, D) float32, L2-normalised, on the CPU.
        """
        if images.dtype != torch.uint8 or images.ndim != 3:
            raise ValueError(f"expected (B, S, S) uint8 images, got {tuple(images.shape)} {images.dtype}")
        if boxes is None:
            size = images.shape[-1]
            boxes = torch.tensor([[0, 0, size, size]] * len(images))
        if sizes is None:
            sizes = boxes[:, 2:4]
        out = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            batch = images[start:stop].to(self.device, non_blocking=True)
            with self._autocast():
                emb = self._encode_images(batch, boxes[start:stop].to(self.device), sizes[start:stop].to(self.device))
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Embed report strings; returns (B, D) float32, L2-normalised, on the CPU."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            with self._autocast():
                emb = self._encode_texts(texts[start : start + self.batch_size])
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    @abstractmethod
    def _encode_images(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Family-specific preprocessing and image tower on one batch (already on the device).

        ``boxes`` (B, 4) locate each image on its canvas; ``sizes`` (B, 2) are the source images' own (height,
        width), for families whose pipelines compute geometry from the original size.
        """

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Family-specific tokenisation and text tower on one batch."""


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
