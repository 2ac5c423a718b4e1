"""``omicskern`` command line. Each subcommand lives in its own module with ``register(subparsers)``.

Subcommand modules import their heavy dependencies inside their ``run`` function, so
``omicskern --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand module names under omicskern.cli, in help order
_SUBCOMMANDS = ("tokenize", "tokenize_cells")


def build_parser() -> argparse.ArgumentParser:
    from omicskern import __version__

    parser = argparse.ArgumentParser(
        prog="omicskern", description="Fast tokenizers, kernels and models for genomic and single-cell foundation models.")
    parser.add_argument("--version", action="version", version=f"omicskern {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"omicskern.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"omicskern.cli.{name}":
                continue  # subcommand not shipped in this build
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
