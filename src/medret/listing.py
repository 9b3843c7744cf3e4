"""Listings of the declared model families, dataset adapters and corruption kinds.

One rendering of the declarations for the command line (``python -m medret families|adapters|corruptions``) and
one for the documentation: the option tables in ``docs/`` sit between ``<!-- medret:NAME -->`` and
``<!-- /medret:NAME -->`` markers and are written by ``python -m medret docs`` (``--check`` reports stale ones;
a test runs it), so the documentation cannot drift from the declarations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medret.errors import MedretError
from medret.plugins import MISSING, Option

#: Generated tables: marker name -> the documentation file (relative to the repository root) that holds it.
GENERATED = {
    "families": "docs/models.md",
    "adapters": "docs/datasets.md",
    "corruptions": "docs/protocol.md",
}


def _is_builtin(target: Callable[..., Any] | str) -> bool:
    module = target if isinstance(target, str) else getattr(target, "__module__", "")
    return module.startswith("medret.")


def declarations(what: str, *, builtin_only: bool = False) -> dict[str, tuple[str, dict[str, Option], str]]:
    """``name -> (description, options, note)`` of the registered families, adapters or corruption kinds.

    ``builtin_only`` leaves out those of installed plug-in packages (the documentation lists medret's own).
    """
    out: dict[str, tuple[str, dict[str, Option], str]] = {}
    if what == "families":
        from medret.models import list_families

        for name, family in list_families().items():
            if not builtin_only or _is_builtin(family.build):
                note = f"first resize: {family.resize}" if family.resize is not None else ""
                out[name] = (family.description, dict(family.options), note)
    elif what == "adapters":
        from medret.datasets import list_adapters

        for name, adapter in list_adapters().items():
            if not builtin_only or _is_builtin(adapter.load):
                out[name] = (adapter.description, dict(adapter.options), "")
    elif what == "corruptions":
        from medret.corruptions import list_kinds

        for name, kind in list_kinds().items():
            if not builtin_only or _is_builtin(kind.transform):
                out[name] = (kind.description, {**kind.options, "levels": kind.levels_option}, "")
    else:
        raise MedretError(f"nothing called {what!r} is declared; use families, adapters or corruptions")
    return out


def text(what: str) -> str:
    """The command line's listing: each name with its description, then one line per option."""
    lines = []
    for name, (description, options, note) in declarations(what).items():
        lines.append(f"{name}: {description}")
        lines += [f"    {key}: {option.text()}" for key, option in options.items()]
        if note:
            lines.append(f"    ({note})")
    return "\n".join(lines)


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _plain(value: Any) -> Any:
    """Whole floats as integers (severity levels 0..5 read as such)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _default(option: Option) -> str:
    if option.required:
        return "required"
    if option.default is MISSING:
        return ""
    value = option.default if isinstance(option.default, str) else json.dumps(_plain(option.default))
    return f"`{value}`"


def markdown(what: str) -> str:
    """A Markdown table of the built-in declarations: one row per option, the name on its first row."""
    head = {"families": "family", "adapters": "adapter", "corruptions": "kind"}[what]
    rows = [f"| {head} | option | default | description |", "|---|---|---|---|"]
    for name, (description, options, note) in declarations(what, builtin_only=True).items():
        about = description + (f"; {note}" if note else "")
        rows.append(f"| `{name}` | | | {_cell(about)} |")
        rows += [f"| | `{key}` | {_default(o)} | {_cell(o.description)} |" for key, o in options.items()]
    return "\n".join(rows)


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- medret:{name} -->\n)(.*?)(<!-- /medret:{name} -->)", re.DOTALL)


def update_docs(root: str | Path, *, check: bool = False) -> list[str]:
    """Write the generated tables into the documentation under ``root``; return the files that were stale.

    With ``check`` nothing is written. A file without its markers is an error (the table has nowhere to go).
    """
    stale = []
    for name, rel in GENERATED.items():
        path = Path(root) / rel
        content = path.read_text(encoding="utf-8")
        pattern = _block(name)
        if not pattern.search(content):
            raise MedretError(f"{path}: no <!-- medret:{name} --> ... <!-- /medret:{name} --> block to fill")
        table = markdown(name)
        new = pattern.sub(lambda m, table=table: m.group(1) + table + "\n" + m.group(3), content)
        if new != content:
            stale.append(rel)
            if not check:
                path.write_text(new, encoding="utf-8")
    return stale
