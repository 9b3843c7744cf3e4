"""Config validation: JSON schema, defaults, and the checks a schema cannot express.

Errors are one line naming the config key and the fix, e.g.
``config key models.local.train.epocs: unknown key (did you mean 'epochs'?)``.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from medret.errors import MedretError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not "the last one wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise MedretError(
                    f"{self.name}, line {key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping "
                    f"(first on line {seen[key] + 1}), so one entry would silently replace the other; "
                    "rename or remove one"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str | Path) -> Any:
    """A YAML config file read strictly: one line naming the file for a syntax error or a repeated key."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except OSError as exc:
        raise MedretError(f"{path}: cannot read the config file ({exc.strerror}); check the path") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f", line {where.line + 1}" if where is not None else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MedretError(f"{path}{line}: not valid YAML ({reason}); fix the file") from None


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Read the YAML JSON-schema of the workflow config."""
    with open(path) as f:
        return yaml.safe_load(f)


def _key(path: list[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


#: Config keys that name a registered plug-in, and what a plug-in of each is called in messages.
_PLUGIN_KEYS = {"family": "family", "adapter": "dataset adapter", "kind": "corruption kind"}


def _message(error: jsonschema.ValidationError) -> str:
    path = list(error.absolute_path)
    if error.validator == "enum" and path and path[-1] in _PLUGIN_KEYS:
        choices = ", ".join(map(str, error.validator_value))
        return f"config key {_key(path)}: unknown {_PLUGIN_KEYS[path[-1]]} {error.instance!r}; use one of: {choices}"
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        key = extra[0]
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
        plugin = error.schema.get("x-medret-plugin")  # an entry closed by a plug-in's declaration
        if plugin:
            return f"config key {_key([*path, key])}: not an option of {plugin} ({hint}); remove it"
        return f"config key {_key([*path, key])}: unknown key ({hint})"
    if error.validator == "required":
        return f"config key {_key(path)}: {error.message}; add it (see config/schema.yaml)"
    if "propertyNames" in error.schema_path:
        return f"config key {_key(path)}: name {error.instance!r} must be letters, digits, '_', '-' or '.'"
    return f"config key {_key(path)}: {error.message}"


def _fill_defaults(value: Any, schema: Mapping[str, Any]) -> None:
    """Fill ``default``s of object properties in place, recursing into maps of entries."""
    if not isinstance(value, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            _fill_defaults(value[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in value:
            if key not in schema.get("properties", {}):
                _fill_defaults(value[key], extra)


def composed_schema(base: Mapping[str, Any]) -> dict[str, Any]:
    """The config schema: ``base`` (config/schema.yaml, the keys common to every entry of a section) with
    each model, dataset and corruption entry's schema assembled from its plug-in's declared options
    (:mod:`medret.plugins`): the family of a model, the adapter of a dataset, the kind of a corruption."""
    from medret.corruptions import list_kinds
    from medret.datasets import list_adapters
    from medret.models import list_families

    schema = copy.deepcopy(dict(base))
    _close_entries(schema, "models", "family", {n: (f.options, ()) for n, f in list_families().items()})
    adapters = {n: (a.options, a.requires) for n, a in list_adapters().items()}
    _close_entries(schema, "datasets", "adapter", adapters)
    kinds = {n: ({**k.options, "levels": k.levels_option}, ()) for n, k in list_kinds().items()}
    _close_entries(schema, "corruptions", "kind", kinds)
    return schema


def _close_entries(
    schema: dict[str, Any], section: str, key: str, plugins: Mapping[str, tuple[Mapping[str, Any], tuple[str, ...]]]
) -> None:
    """Replace the open entry schema of ``section`` by one closed schema per plug-in that ``key`` can name."""
    from medret.plugins import entry_schema

    entry = schema["properties"][section]["additionalProperties"]
    common = entry["properties"]
    entry.pop("additionalProperties", None)  # each plug-in's schema below closes the entry
    common[key] = {**common[key], "enum": list(plugins)}
    entry["allOf"] = [
        {
            "if": {"properties": {key: {"const": name}}, "required": [key]},
            "then": entry_schema(common, options, (key, *requires), title=f"{_PLUGIN_KEYS[key]} {name}"),
        }
        for name, (options, requires) in plugins.items()
    ]


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return a validated copy of ``config`` with defaults filled in, or raise MedretError.

    ``schema`` is config/schema.yaml's (the default); the registered plug-ins' declarations complete it
    (:func:`composed_schema`).
    """
    from medret.corruptions import list_kinds
    from medret.datasets import list_adapters
    from medret.models import list_families
    from medret.plugins import fill_defaults

    schema = composed_schema(load_schema() if schema is None else schema)
    config = copy.deepcopy(dict(config))
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise MedretError(_message(error))
    _fill_defaults(config, schema)
    families, adapters, kinds = list_families(), list_adapters(), list_kinds()
    for entry in config["models"].values():
        fill_defaults(entry, families[entry["family"]].options)
    for entry in config["datasets"].values():
        fill_defaults(entry, adapters[entry["adapter"]].options)
    for entry in config["corruptions"].values():
        kind = kinds[entry["kind"]]
        fill_defaults(entry, {**kind.options, "levels": kind.levels_option})
    _check_references(config)
    # Named entries keep the user's order (plots and tables follow it); everything inside them is
    # sorted, because Snakemake compares a rule's params as strings: the order keys are written in,
    # or where a default was filled in, would otherwise re-run every job that reads the entry.
    return {
        key: {name: _sorted_keys(entry) for name, entry in value.items()}
        if key in _NAMED_SECTIONS
        else _sorted_keys(value)
        for key, value in config.items()
    }


#: Top-level sections that map user-chosen names to entries.
_NAMED_SECTIONS = ("datasets", "models", "corruptions")


def _sorted_keys(value: Any) -> Any:
    """``value`` with the keys of every mapping in it sorted, recursively (lists keep their order)."""
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def _check_references(config: Mapping[str, Any]) -> None:
    """Cross-entry checks: families exist and take their keys, training datasets are defined, every
    corruption has its clean level."""
    from medret.models import get_family

    for name, entry in config["corruptions"].items():
        levels = entry.get("levels", [])
        if levels and 0 not in levels:
            raise MedretError(
                f"config key corruptions.{name}.levels: {levels} lacks the clean level 0, the baseline every "
                "result of a corruption is compared with; add 0 to the list"
            )

    for name, level in config.get("evaluation", {}).get("findings", {}).get("levels", {}).items():
        key = f"config key evaluation.findings.levels.{name}"
        if name not in config["corruptions"]:
            raise MedretError(f"{key}: no corruption {name!r} (corruptions: {', '.join(config['corruptions'])})")
        levels = config["corruptions"][name].get("levels", [])
        if not any(abs(float(level) - float(x)) < 1e-9 for x in levels):
            raise MedretError(f"{key}: {level} is not one of the corruption's levels {levels}")

    for name, entry in config["models"].items():
        family = get_family(entry, name)
        train = entry.get("train")
        if train is not None:
            if family.train is None:
                raise MedretError(f"config key models.{name}.train: family {family.name} is not trainable; remove it")
            if train["dataset"] not in config["datasets"]:
                raise MedretError(
                    f"config key models.{name}.train.dataset: {train['dataset']!r} is not in datasets "
                    f"({', '.join(config['datasets'])})"
                )
        elif family.train is not None and "checkpoint" not in entry:
            raise MedretError(f"config key models.{name}: family {family.name} needs either train or checkpoint")
