"""``omicskern`` command line. Each subcommand lives in its own module with ``register(subparsers)``.

Subcommand modules import their heavy dependencies inside their ``run`` function, so
``omicskern --help`` stays fast. Every subcommand follows one convention (error prefix, exit
status 0/1/2, summaries on stderr, flags named in messages), implemented in
:mod:`omicskern.cli._common`; the work itself is done by :mod:`omicskern.pipelines`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand module names under omicskern.cli, in help order
_SUBCOMMANDS = ("tokenize", "tokenize_cells", "embed_genome", "embed_cells", "score_variants", "perturb_cells",
                "bench")


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
    """Runs the command line ``argv`` (default: ``sys.argv[1:]``) and returns the exit status
    (argparse's own exits, ``--help`` and argument errors, are returned too, not raised)."""
    from omicskern.cli._common import run_command

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return run_command(args.command, args.func, args, getattr(args, "_parser", None),
                       getattr(args, "_flags", None), getattr(args, "_flag_values", None))


if __name__ == "__main__":
    sys.exit(main())
