"""Command line: ``python -m medret {families,adapters,corruptions,files,download}``."""

from __future__ import annotations

import argparse
import sys

from medret.errors import MedretError


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m medret", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("families", help="list the registered model families and their options")
    sub.add_parser("adapters", help="list the registered dataset adapters and their options")
    sub.add_parser("corruptions", help="list the registered corruption kinds and their options")
    sub.add_parser("files", help="list the public files that `download` can fetch")
    dl = sub.add_parser("download", help="download public checkpoint/tokenizer files (needs internet)")
    dl.add_argument("names", nargs="+", help="file names, see `files`")
    dl.add_argument("--dest", default=None, help="directory to write to (default: weights)")
    dl.add_argument("--mirror", default=None, help="replace scheme and host of every URL (a mirror)")
    args = parser.parse_args(argv)
    try:
        if args.command == "families":
            from medret.models import list_families

            for name, family in list_families().items():
                print(f"{name}: {family.description}")
                for key, option in family.options.items():
                    print(f"    {key}: {option.text()}")
                if family.resize is not None:
                    print(f"    (first resize: {family.resize})")
        elif args.command == "adapters":
            from medret.datasets import list_adapters

            for name, adapter in list_adapters().items():
                print(f"{name}: {adapter.description}")
                for key, option in adapter.options.items():
                    print(f"    {key}: {option.text()}")
        elif args.command == "corruptions":
            from medret.corruptions import list_kinds

            for name, kind in list_kinds().items():
                print(f"{name}: {kind.description}")
                for key, option in {**kind.options, "levels": kind.levels_option}.items():
                    print(f"    {key}: {option.text()}")
        elif args.command == "files":
            from medret.download import PUBLIC_FILES, owners

            filled = owners()
            for spec in PUBLIC_FILES.values():
                where = spec.url or f"manual: {spec.manual}"
                print(f"{spec.name:36s} {spec.filename}\n    for {'; '.join(filled[spec.name])}\n    {where}")
        else:
            from medret.download import DEFAULT_DEST, download

            for name in args.names:
                print(download(name, args.dest or DEFAULT_DEST, mirror=args.mirror))
    except MedretError as exc:
        print(f"medret error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
