"""Model adapters behind a registry of families.

Every model is an adapter with one contract (DESIGN §5): ``encode_images`` takes uint8 images in
cache space (the square canvases of the image cache, plus their content boxes) and
``encode_texts`` takes report strings; both return L2-normalised float32 embeddings. A family is
one module that knows its checkpoint format, preprocessing and tokeniser; it is registered here
with :func:`register_family` (the built-in ones in :mod:`medret.models.families`); adding a family
never touches the workflow.

This module is torch-free: a family's ``build``/``train`` may be named as ``"module:attribute"``
and is imported only when a model is built or trained, so checking a config (which the workflow
does on every Snakemake call) imports no family module. :class:`~medret.models.base.ModelAdapter`,
:class:`~medret.models.base.ResizeRule` (which a family declares so that a too-small image cache is
reported) and :func:`~medret.models.base.resolve_device` live in :mod:`medret.models.base` and are
still importable from here (lazily).

Config entry of a model (``models.<name>`` in the config)::

    family: local          # a registered family (see list_families())
    batch_size: 64         # images/texts per forward pass
    device: auto           # auto | cpu | cuda | cuda:N | mps
    dtype: float32         # float32 | bfloat16 | float16 (autocast; embeddings are always fp32)
    ...                    # family-specific options
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medret.errors import MedretError

if TYPE_CHECKING:
    from medret.models.base import ModelAdapter

#: Options every family accepts, with their defaults.
COMMON_OPTIONS: dict[str, Any] = {"batch_size": 64, "device": "auto", "dtype": "float32"}

#: Names served lazily from :mod:`medret.models.base` (importing it imports torch).
_BASE_NAMES = ("ModelAdapter", "ResizeRule", "resolve_device")


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        from medret.models import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_BASE_NAMES})


def _check_target(target: Any, field: str, family: str) -> None:
    if isinstance(target, str):
        module, sep, attribute = target.partition(":")
        if not (module and sep and attribute):
            raise ValueError(f"family {family}: {field}={target!r} is not 'module:attribute'")
    elif not callable(target):
        raise TypeError(f"family {family}: {field} must be a callable or a 'module:attribute' string")


def _resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    """``target`` itself, or the object a ``"module:attribute"`` string names (imported now)."""
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Family:
    """A registered model family.

    ``options`` documents the family-specific config keys (name -> description); any other key
    in a model's entry is an error. ``train``, when set, makes the workflow train the model
    before embedding: ``train(entry, pairs, images, out_path, threads)``.

    ``build`` and ``train`` are callables or ``"module:attribute"`` strings; a string is imported
    only by :meth:`builder` / :meth:`trainer`, so the registry can be read (names, options,
    ``train is None``) without importing the family's module or torch.
    """

    name: str
    build: Callable[[Mapping[str, Any]], ModelAdapter] | str
    options: dict[str, str]
    description: str
    required: tuple[str, ...] = ()
    train: Callable[..., Any] | str | None = None

    def __post_init__(self) -> None:
        _check_target(self.build, "build", self.name)
        if self.train is not None:
            _check_target(self.train, "train", self.name)

    def builder(self) -> Callable[[Mapping[str, Any]], ModelAdapter]:
        """The callable that builds this family's adapter from a config entry (imports its module)."""
        return _resolve(self.build)

    def trainer(self) -> Callable[..., Any]:
        """The callable that trains this family (imports its module); an error if it is not trainable."""
        if self.train is None:
            raise MedretError(f"family {self.name} is not trainable")
        return _resolve(self.train)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family to the registry (a family with the same name is replaced)."""
    _FAMILIES[family.name] = family
    return family


def _load_builtin_families() -> None:
    # The declarations only (registered once, on first import): no family module, no torch.
    from medret.models import families as _families  # noqa: F401


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
    try:
        return family.builder()(entry)
    except MedretError as exc:
        # Families do not know the entry's name: their messages say models.<name>, filled in here.
        if name == "<model>" or "models.<name>" not in str(exc):
            raise
        raise MedretError(str(exc).replace("models.<name>", f"models.{name}")) from exc
