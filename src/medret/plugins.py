"""Declarations shared by every kind of plug-in (model families, dataset adapters, corruption kinds).

A plug-in declares its config keys once, as :class:`Option` objects: a JSON-schema fragment (type,
bounds, choices), a default and a description. Config validation assembles each entry's schema from
the declarations of the plug-in it names (:func:`entry_schema`), fills the declared defaults, and
``python -m medret families|adapters|corruptions`` print them, so the schema, the defaults and the
documentation cannot disagree.

Plug-ins from other packages are found through entry points (groups :data:`GROUPS`): an entry point
names a declaration object (a :class:`medret.models.Family`, :class:`medret.datasets.DatasetAdapter`
or :class:`medret.corruptions.CorruptionKind`), e.g. in the plug-in's ``pyproject.toml``::

    [project.entry-points."medret.families"]
    toy = "medret_toy.declarations:FAMILY"

Loading an entry point imports the module that holds the declaration, so that module should be
cheap (no torch): the declaration names the code that builds or applies things as
``"module:attribute"`` strings, imported only when used. This module imports nothing heavy.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from medret.errors import MedretError

#: Entry-point groups, by the kind of plug-in they declare.
GROUPS = {"family": "medret.families", "adapter": "medret.datasets", "corruption": "medret.corruptions"}


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: The default of an option that has none.
MISSING: Any = _Missing()


@dataclass(frozen=True)
class Option:
    """One config key of a plug-in.

    ``schema`` is a JSON-schema fragment (``{"type": "integer", "minimum": 2}``); ``default`` is filled
    in when the key is absent (none when :data:`MISSING`); ``required`` keys must be given. A key that
    names a file or directory the plug-in reads has ``path`` set: the workflow tracks it as a job input
    and checks at start that it exists, and a missing one is reported with ``published`` (names of
    :data:`medret.download.PUBLIC_FILES` entries that fetch it) and ``where`` (where it is published).
    """

    description: str
    schema: Mapping[str, Any] = field(default_factory=dict)
    default: Any = MISSING
    required: bool = False
    path: str | None = None  # "file", "directory" or "file or directory"
    published: tuple[str, ...] = ()
    where: str = ""

    def json_schema(self) -> dict[str, Any]:
        """The option's JSON schema, with its description and default."""
        out = {**copy.deepcopy(dict(self.schema)), "description": self.description}
        if self.default is not MISSING:
            out["default"] = copy.deepcopy(self.default)
        return out

    def text(self) -> str:
        """One line for listings: the description, and the default or "required"."""
        if self.required:
            return f"{self.description} (required)"
        if self.default is not MISSING:
            return f"{self.description} (default {self.default!r})"
        return self.description


def entry_schema(
    common: Mapping[str, Any], options: Mapping[str, Option], required: tuple[str, ...] = (), title: str = ""
) -> dict[str, Any]:
    """The JSON schema of one config entry: the ``common`` properties every plug-in of its kind takes,
    plus ``options``; any other key is an error. ``title`` names the plug-in in error messages."""
    properties = {**copy.deepcopy(dict(common)), **{k: o.json_schema() for k, o in options.items()}}
    needed = [*required, *(k for k, o in options.items() if o.required)]
    out = {"type": "object", "properties": properties, "additionalProperties": False, "required": needed}
    return {**out, "x-medret-plugin": title} if title else out


def fill_defaults(entry: dict[str, Any], options: Mapping[str, Option]) -> None:
    """Fill the declared defaults of the options absent from ``entry`` (in place), recursing into
    object-valued options whose schema declares defaults of their own properties."""
    for key, option in options.items():
        if key not in entry and option.default is not MISSING:
            entry[key] = copy.deepcopy(option.default)
        if isinstance(entry.get(key), dict):
            _fill_schema_defaults(entry[key], option.schema)


def _fill_schema_defaults(value: dict[str, Any], schema: Mapping[str, Any]) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if isinstance(value.get(key), dict):
            _fill_schema_defaults(value[key], sub)


def check_target(target: Any, what: str) -> None:
    """Raise unless ``target`` is a callable or a ``"module:attribute"`` string (``what`` names it in messages)."""
    if isinstance(target, str):
        module, sep, attribute = target.partition(":")
        if not (module and sep and attribute):
            raise ValueError(f"{what}: {target!r} is not 'module:attribute'")
    elif not callable(target):
        raise TypeError(f"{what} must be a callable or a 'module:attribute' string")


def resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    """``target`` itself, or the object a ``"module:attribute"`` string names (imported now)."""
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def entry_point_declarations(kind: str, expected: type) -> list[Any]:
    """The declarations that installed packages register in the entry-point group of ``kind``.

    Each must be an instance of ``expected``; a plug-in that cannot be loaded, or that declares
    something else, is one error naming the entry point and its package.
    """
    from importlib.metadata import entry_points

    found = []
    for ep in entry_points(group=GROUPS[kind]):
        package = ep.dist.name if ep.dist is not None else "an installed package"
        try:
            obj = ep.load()
        except Exception as exc:  # any import error of someone else's package
            raise MedretError(
                f"{kind} plug-in {ep.name!r} ({ep.value}, from {package}) cannot be loaded ({type(exc).__name__}: "
                f"{exc}); fix or uninstall {package}"
            ) from None
        if not isinstance(obj, expected):
            raise MedretError(
                f"{kind} plug-in {ep.name!r} ({ep.value}, from {package}) is a {type(obj).__name__}, not a "
                f"{expected.__name__}; fix or uninstall {package}"
            )
        found.append(obj)
    return found
