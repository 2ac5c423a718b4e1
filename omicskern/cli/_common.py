"""The one convention of every ``omicskern`` subcommand, implemented here once.

* Errors are one line on stderr, ``omicskern <command>: error: ...`` (argparse's own format).
* Exit status: 0 done; 2 argument errors (argparse's, and the commands' own checks: a flag that
  does not apply, a value out of range, a path that does not exist); 1 runtime errors (a file
  that cannot be read or holds bad data, an output of another job): no traceback for
  :class:`~omicskern.errors.OmicskernError`, ``OSError``, ``ValueError``, ``KeyError``; 130 on
  Ctrl-C; 141 (quietly) when stdout is a pipe closed early (``omicskern tokenize --out - | head``).
* Summaries, progress and warnings go to stderr (``omicskern <command>: warning: ...``); data
  only to files or stdout.
* Messages name flags, not Python parameters: library errors that say ``gene_column=`` are
  rewritten to ``--gene-column`` by :func:`flagify` with the command's parameter -> flag table.
* Flags that do not apply are refused (exit 2): flags specific to one mode default to None so
  "given" can be told from "default" (:func:`refuse_unless`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from typing import Callable, Mapping

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPT, EXIT_PIPE = 0, 1, 2, 130, 141


class UsageError(Exception):
    """A bad command line (exit 2)."""


class CommandError(Exception):
    """A runtime failure the command already described (exit 1)."""


def prefix(command: str) -> str:
    return f"omicskern {command}"


def flagify(message: str, flags: Mapping[str, str], values: Mapping[str, str] | None = None) -> str:
    """Rewrites Python parameter names in ``message`` to the command's flags:
    ``gene_column=None`` -> ``--gene-column index`` (via ``values``), ``overwrite=True`` ->
    ``--overwrite``, ``integer_check='warn'`` -> ``--integer-check warn``, ``gene_column=`` -> ``--gene-column``.
    Only ``name=`` forms are rewritten (a bare word may mean something else)."""
    values = values or {}
    for phrase, text in values.items():  # whole phrases first ("pass uppercase=True" -> ...)
        message = message.replace(phrase, text)
    if not flags:
        return message
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))

    def sub(m: re.Match) -> str:
        name, val = m.group(1), m.group(2)
        flag = flags[name]
        if val is None or val == "":
            return flag
        val = val.strip("'\"")
        if f"{name}={val}" in values:
            return values[f"{name}={val}"]
        if val == "True":
            return flag
        return f"{flag} {val}"

    return re.sub(rf"(?<![\w-])({names})=((?:'[^']*'|\"[^\"]*\"|[\w.-]+))?", sub, message)


def refuse_unless(args: argparse.Namespace, condition: bool, names: list[str], why: str) -> None:
    """Exit 2 when one of the flags ``names`` (argparse dests, default None) was given although
    ``condition`` is false: ``--k`` without ``--tokenizer kmer``..."""
    if condition:
        return
    given = [n for n in names if getattr(args, n, None) is not None and getattr(args, n) is not False]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise UsageError(f"{flags} {'does' if len(given) == 1 else 'do'} not apply {why}")


def _silence_stdout() -> None:
    """After EPIPE: point fd 1 at /dev/null so the interpreter's final flush is quiet."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError, ValueError):
        pass


def run_command(command: str, func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace,
                parser: argparse.ArgumentParser | None = None, flags: Mapping[str, str] | None = None,
                values: Mapping[str, str] | None = None) -> int:
    """Runs ``func(args)`` under the convention above and returns the exit status."""
    pre = prefix(command)
    flags = flags or {}

    def show(message, category, filename, lineno, file=None, line=None):
        _say(f"{pre}: warning: {flagify(str(message), flags, values)}")

    from omicskern.errors import OmicskernError

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            rc = int(func(args) or 0)
            sys.stdout.flush()
            return rc
        except UsageError as e:
            if parser is not None:
                try:
                    sys.stderr.write(parser.format_usage())
                except OSError:
                    pass
            _say(f"{pre}: error: {flagify(str(e), flags, values)}")
            return EXIT_USAGE
        except CommandError as e:
            if str(e):
                _say(f"{pre}: error: {flagify(str(e), flags, values)}")
            return EXIT_RUNTIME
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_PIPE
        except KeyboardInterrupt:
            _say(f"{pre}: interrupted")
            return EXIT_INTERRUPT
        except (OmicskernError, OSError, ValueError, KeyError, ImportError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)
            if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
                msg = f"{e.filename}: {msg}"
            _say(f"{pre}: error: {flagify(msg or type(e).__name__, flags, values)}")
            return EXIT_RUNTIME


def existing_path(path: str, flag: str) -> None:
    """A path named on the command line must exist (else an argument error)."""
    if not os.path.exists(path):
        raise UsageError(f"{flag}: not found: {path}")
