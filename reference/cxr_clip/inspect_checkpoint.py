"""What a CXR-CLIP ``.tar`` written by the real trainer references when unpickled, and how torch's safe loader reacts.

Reads ``data.pkl`` inside the torch zip file with :mod:`pickletools` (nothing is executed) and lists every global it
names, with counts; then tries ``torch.load(weights_only=True)`` (the default since torch 2.6) and prints the outcome.
Runs in either venv (needs torch; the load attempt also needs omegaconf only if it gets that far).

Usage: python inspect_checkpoint.py CHECKPOINT.tar [--json OUT.json]
"""

from __future__ import annotations

import _compat_pickle
import argparse
import builtins
import collections
import json
import pickletools
import typing
import zipfile
from pathlib import Path

import torch

# medret.models.cxr_clip.SAFE_GLOBALS at the time of writing (the allow-list of its restricted load); repeated here so
# that this script does not import medret. torch's weights-only unpickler allows the torch.* and OrderedDict globals
# of plain tensors itself.
MEDRET_ALLOW_LIST = {
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "typing.Any",
    "builtins.dict",
    "builtins.list",
    "builtins.int",
    "collections.defaultdict",
}


def python3_name(module: str, name: str) -> str:
    """The Python 3 name of a protocol-2 global, as the unpicklers map it (``__builtin__.long`` -> ``builtins.int``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def pickle_globals(path: Path) -> collections.Counter[str]:
    """Every GLOBAL / STACK_GLOBAL in the archive's data.pkl, as written (``module.name``), with its count."""
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
        data = zf.read(name)
    found: collections.Counter[str] = collections.Counter()
    strings: list[str] = []  # recent string pushes, for protocol-4 STACK_GLOBAL (module, name on the stack)
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found[str(arg).replace(" ", ".")] += 1
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found[f"{strings[-2]}.{strings[-1]}"] += 1
        if isinstance(arg, str) and "UNICODE" in op.name:
            strings.append(arg)
    return found


def allow_list_objects() -> list[object]:
    """The objects of :data:`MEDRET_ALLOW_LIST` (empty when omegaconf is not installed)."""
    try:
        import omegaconf.base
        import omegaconf.dictconfig
        import omegaconf.listconfig
        import omegaconf.nodes
    except ImportError:
        return []
    modules = {m.__name__: m for m in (omegaconf.base, omegaconf.dictconfig, omegaconf.listconfig, omegaconf.nodes)}
    modules |= {"typing": typing, "builtins": builtins, "collections": collections}
    return [getattr(modules[n.rsplit(".", 1)[0]], n.rsplit(".", 1)[1]) for n in sorted(MEDRET_ALLOW_LIST)]


def attempt(path: Path, allowed: list[object]) -> str:
    """``torch.load(weights_only=True)`` with ``allowed`` as extra safe globals: "loaded" or the error."""
    try:
        with torch.serialization.safe_globals(allowed):
            torch.load(path, map_location="cpu", weights_only=True)
        return "loaded"
    except Exception as exc:  # report whatever torch raises
        return f"{type(exc).__name__}: {exc}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--json", type=Path, help="also write the findings here")
    args = parser.parse_args()

    found = pickle_globals(args.checkpoint)
    print(f"{args.checkpoint} ({args.checkpoint.stat().st_size / 1e6:.1f} MB): {len(found)} distinct pickle globals")
    print(f"  {'as written':34s} {'as unpickled (Python 3)':34s} count  allowed by")
    resolved = {}
    for raw, count in sorted(found.items()):
        name = resolved[raw] = python3_name(*raw.rsplit(".", 1))
        torch_own = name.startswith("torch.") or name == "collections.OrderedDict"
        listed = "medret allow-list" if name in MEDRET_ALLOW_LIST else "torch (tensors)" if torch_own else "NOTHING"
        print(f"  {raw:34s} {name:34s} x{count:<5d} {listed}")
    outside = sorted(n for n in set(resolved.values()) if n not in MEDRET_ALLOW_LIST and not n.startswith("torch."))
    outside = [n for n in outside if n != "collections.OrderedDict"]
    print(f"non-torch globals outside medret's allow-list: {outside or 'none'}")

    weights_only = attempt(args.checkpoint, [])
    print("torch.load(weights_only=True):")
    print("  " + weights_only.replace("\n", "\n  "))
    allowed = allow_list_objects()
    with_allow_list = attempt(args.checkpoint, allowed) if allowed else "omegaconf not installed: not tried"
    print(f"torch.load(weights_only=True) under torch.serialization.safe_globals(<the {len(allowed)} allow-listed>):")
    print("  " + with_allow_list.replace("\n", "\n  "))

    if args.json:
        result = {
            "globals": dict(sorted(found.items())),
            "python3_names": resolved,
            "outside_allow_list": outside,
            "weights_only": weights_only,
            "weights_only_with_allow_list": with_allow_list,
        }
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
