"""Model adapters behind a registry of families.

Every model is an adapter with one contract (DESIGN §5): ``encode_images`` takes uint8 images in
cache space (the square canvases of the image cache, plus their content boxes) and
``encode_texts`` takes report strings; both return L2-normalised float32 embeddings. A family is
one module that knows its checkpoint format, preprocessing and tokeniser, and registers itself
here with :func:`register_family`; adding a family never touches the workflow.

Config entry of a model (``models.<name>`` in the config)::

    family: local          # a registered family (see list_families())
    batch_size: 64         # images/texts per forward pass
    device: auto           # auto | cpu | cuda | cuda:N | mps
    dtype: float32         # float32 | bfloat16 | float16 (autocast; embeddings are always fp32)
    ...                    # family-specific options
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medret.errors import MedretError
from medret.io import digest

#: Options every family accepts, with their defaults.
COMMON_OPTIONS: dict[str, Any] = {"batch_size": 64, "device": "auto", "dtype": "float32"}
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

    def __init__(self, entry: Mapping[str, Any]) -> None:
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

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.dtype == torch.float32:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Embed (B, S, S) uint8 cache-space images; ``boxes`` are their content boxes (B, 4).

        Returns (B, D) float32, L2-normalised, on the CPU.
        """
        if images.dtype != torch.uint8 or images.ndim != 3:
            raise ValueError(f"expected (B, S, S) uint8 images, got {tuple(images.shape)} {images.dtype}")
        if boxes is None:
            size = images.shape[-1]
            boxes = torch.tensor([[0, 0, size, size]] * len(images))
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device, non_blocking=True)
            with self._autocast():
                emb = self._encode_images(batch, boxes[start : start + self.batch_size].to(self.device))
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
    def _encode_images(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Family-specific preprocessing and image tower on one batch (already on the device)."""

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Family-specific tokenisation and text tower on one batch."""


@dataclass(frozen=True)
class Family:
    """A registered model family.

    ``options`` documents the family-specific config keys (name -> description); any other key
    in a model's entry is an error. ``train``, when set, makes the workflow train the model
    before embedding: ``train(entry, pairs, images, out_path, threads)``.
    """

    name: str
    build: Callable[[Mapping[str, Any]], ModelAdapter]
    options: dict[str, str]
    description: str
    required: tuple[str, ...] = ()
    train: Callable[..., None] | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family to the registry (called at import time by each family module)."""
    _FAMILIES[family.name] = family
    return family


def _load_builtin_families() -> None:
    # Lazy, so that importing medret.models does not import every family's dependencies.
    from medret.models import biomedclip as _biomedclip  # noqa: F401
    from medret.models import biovil as _biovil  # noqa: F401
    from medret.models import clip_family as _clip_family  # noqa: F401
    from medret.models import cxr_clip as _cxr_clip  # noqa: F401
    from medret.models import local as _local  # noqa: F401
    from medret.models import medclip as _medclip  # noqa: F401


def list_families() -> dict[str, Family]:
    """Every registered family by name."""
    _load_builtin_families()
    return dict(sorted(_FAMILIES.items()))


def get_family(entry: Mapping[str, Any], name: str = "<model>") -> Family:
    """The family of config entry ``models.<name>``, with its keys checked."""
    families = list_families()
    family_name = entry.get("family")
    if family_name not in families:
        raise MedretError(
            f"config key models.{name}.family: unknown family {family_name!r}; use one of: {', '.join(families)}"
        )
    family = families[family_name]
    allowed = {"family", *COMMON_OPTIONS, *family.options}
    for key in entry:
        if key not in allowed:
            raise MedretError(
                f"config key models.{name}.{key}: not an option of family {family.name}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
    return family


def load_model(entry: Mapping[str, Any], name: str = "<model>") -> ModelAdapter:
    """Build a model adapter from a config entry (the public entry point, also for notebooks).

    >>> model = load_model({"family": "local", "checkpoint": "results/models/local/checkpoint.pt"})
    >>> model.encode_texts(["No acute cardiopulmonary process."]).shape  # doctest: +SKIP
    torch.Size([1, 128])
    """
    family = get_family(entry, name)
    missing = [k for k in family.required if k not in entry]
    if missing:
        raise MedretError(f"config key models.{name}.{missing[0]} is required by family {family.name}")
    return family.build(entry)
