"""Command line: ``python -m medret {families,adapters,corruptions,docs,files,download}``."""

from __future__ import annotations

import argparse
import sys

from medret.errors import MedretError


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m medret", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for what, help_text in (
        ("families", "list the registered model families and their options"),
        ("adapters", "list the registered dataset adapters and their options"),
        ("corruptions", "list the registered corruption kinds and their options"),
    ):
        listing = sub.add_parser(what, help=help_text)
        listing.add_argument("--markdown", action="store_true", help="the built-in ones as the docs' Markdown table")
    docs = sub.add_parser("docs", help="write the declarations' option tables into docs/ (in a source checkout)")
    docs.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table is stale")
    docs.add_argument("--root", default=".", help="the repository root (default: the working directory)")
    sub.add_parser("files", help="list the public files that `download` can fetch")
    dl = sub.add_parser("download", help="download public checkpoint/tokenizer files (needs internet)")
    dl.add_argument("names", nargs="+", help="file names, see `files`")
    dl.add_argument("--dest", default=None, help="directory to write to (default: weights)")
    dl.add_argument("--mirror", default=None, help="replace scheme and host of every URL (a mirror)")
    args = parser.parse_args(argv)
    try:
        if args.command in ("families", "adapters", "corruptions"):
            from medret import listing

            print(listing.markdown(args.command) if args.markdown else listing.text(args.command))
        elif args.command == "docs":
            from medret.listing import update_docs

            stale = update_docs(args.root, check=args.check)
            for rel in stale:
                print(f"{rel}: {'stale; run python -m medret docs' if args.check else 'updated'}")
            if args.check and stale:
                return 1
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
