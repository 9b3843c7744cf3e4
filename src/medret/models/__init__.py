"""Model adapters behind a registry of families.

Every model is an adapter with one contract (docs/design.md §5): ``encode_images`` takes uint8 images in
cache space (the square canvases of the image cache, plus their content boxes) and
``encode_texts`` takes report strings; both return L2-normalised float32 embeddings. A family is
one module that knows its checkpoint format, preprocessing and tokeniser, and one declaration
(:class:`Family`: its options with their schema, defaults and the files they name, its resize rule,
where its code lives). The built-in declarations are in :mod:`medret.models.families`; a family in
another package declares itself through the ``medret.families`` entry point
(:mod:`medret.plugins`). Adding a family never touches the workflow or the config schema.

This module is torch-free: a family's ``build``/``train`` may be named as ``"module:attribute"``
and is imported only when a model is built or trained, so checking a config (which the workflow
does on every Snakemake call) imports no family module. :class:`~medret.models.base.ModelAdapter`
and :func:`~medret.models.base.resolve_device` live in :mod:`medret.models.base` and are still
importable from here (lazily); :class:`~medret.models.geometry.ResizeRule`, torch-free, too.

Config entry of a model (``models.<name>`` in the config)::

    family: local          # a registered family (see list_families())
    batch_size: 64         # images/texts per forward pass
    device: auto           # auto | cpu | cuda | cuda:N | mps
    dtype: float32         # float32 | bfloat16 | float16 (autocast; embeddings are always fp32)
    ...                    # family-specific options
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medret.errors import MedretError
from medret.models.geometry import ResizeRule
from medret.plugins import Option, check_target, entry_point_declarations, resolve

if TYPE_CHECKING:
    from medret.models.base import ModelAdapter

#: Options every family accepts, with their defaults.
COMMON_OPTIONS: dict[str, Any] = {"batch_size": 64, "device": "auto", "dtype": "float32"}

#: Names served lazily from :mod:`medret.models.base` (importing it imports torch).
_BASE_NAMES = ("ModelAdapter", "resolve_device")
__all__ = ["COMMON_OPTIONS", "Family", "ResizeRule", "get_family", "list_families", "load_model", "register_family"]


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        from medret.models import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_BASE_NAMES})


@dataclass(frozen=True)
class Family:
    """A model family: its one declaration.

    ``options`` declares the family-specific config keys (:class:`medret.plugins.Option`: schema,
    default, description, and for a file the workflow tracks, ``path`` and where it is published);
    any other key in a model's entry is an error, and config validation assembles the entry's schema
    from them. ``resize`` is the geometry of the preprocessing's first resize
    (:class:`~medret.models.geometry.ResizeRule`), or a sentence when it depends on the files (the
    adapter then sets its ``resize_rule`` when it loads them). ``train``, when set, makes the workflow
    train the model before embedding: ``train(entry, pairs, images, out_path, threads)``.

    ``build`` and ``train`` are callables or ``"module:attribute"`` strings; a string is imported
    only by :meth:`builder` / :meth:`trainer`, so the registry can be read (names, options,
    ``train is None``) without importing the family's module or torch.
    """

    name: str
    build: Callable[[Mapping[str, Any]], ModelAdapter] | str
    description: str
    options: Mapping[str, Option] = field(default_factory=dict)
    resize: ResizeRule | str | None = None
    train: Callable[..., Any] | str | None = None

    def __post_init__(self) -> None:
        check_target(self.build, f"family {self.name}: build")
        if self.train is not None:
            check_target(self.train, f"family {self.name}: train")
        bad = [k for k, o in self.options.items() if not isinstance(o, Option)]
        if bad:
            raise TypeError(f"family {self.name}: option {bad[0]!r} is not a medret.plugins.Option")

    @property
    def required(self) -> tuple[str, ...]:
        """The options every entry of this family must give."""
        return tuple(k for k, o in self.options.items() if o.required)

    @property
    def files(self) -> dict[str, Option]:
        """The options that name files the family reads (tracked by the workflow, checked at start)."""
        return {k: o for k, o in self.options.items() if o.path}

    def builder(self) -> Callable[[Mapping[str, Any]], ModelAdapter]:
        """The callable that builds this family's adapter from a config entry (imports its module)."""
        return resolve(self.build)

    def trainer(self) -> Callable[..., Any]:
        """The callable that trains this family (imports its module); an error if it is not trainable."""
        if self.train is None:
            raise MedretError(f"family {self.name} is not trainable")
        return resolve(self.train)


_FAMILIES: dict[str, Family] = {}
_PLUGINS_LOADED = False


def register_family(family: Family) -> Family:
    """Add a family to the registry (a family with the same name is replaced)."""
    _FAMILIES[family.name] = family
    return family


def _load_families() -> None:
    # The built-in declarations (no family module, no torch), then those of installed plug-ins.
    global _PLUGINS_LOADED
    from medret.models import families as _families  # noqa: F401

    if not _PLUGINS_LOADED:
        _PLUGINS_LOADED = True
        for family in entry_point_declarations("family", Family):
            if family.name in _FAMILIES and _FAMILIES[family.name] is not family:
                raise MedretError(
                    f"family plug-in {family.name!r} has the name of a registered family; rename it in its package"
                )
            register_family(family)


def list_families() -> dict[str, Family]:
    """Every registered family by name: the built-in ones and those of installed plug-ins."""
    _load_families()
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
