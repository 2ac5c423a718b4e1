"""Helpers shared by the char and k-mer tokenizers (not public API)."""

from __future__ import annotations

import os
import sys
from typing import Callable

import numpy as np

from omicskern.errors import InvalidSequenceError

#: What to do with a byte outside the alphabet: raise, map to the unknown token, or read it as N.
ON_INVALID = ("error", "unk", "n")

#: Long sequences are cut into slices of about this many bytes so that every thread works on one
#: sequence; results do not depend on it (tests use tiny values to exercise the cuts).
DEFAULT_CHUNK = 1 << 18


def check_on_invalid(on_invalid: str) -> str:
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
    return on_invalid


def call_encoder(fn: Callable, seqs: list, *args, **kwargs):
    """Calls a C++ encoder; turns byte positions into character positions for non-ASCII str input.

    The C++ core reads a ``str`` through its UTF-8 bytes, so the byte offset it reports differs
    from the character offset after a multi-byte character; users index ``str`` by characters.
    """
    try:
        return fn(seqs, *args, **kwargs)
    except InvalidSequenceError as e:
        i, pos = e.index, e.position
        seq = seqs[i] if i is not None and 0 <= i < len(seqs) else None
        if isinstance(seq, str) and pos is not None and not seq.isascii():
            char_pos = len(seq.encode("utf-8")[:pos].decode("utf-8", errors="ignore"))
            bad = seq[char_pos]
            msg = (f"sequence {i}, position {char_pos}: {bad!r} (U+{ord(bad):04X}) is not a valid character "
                   f"(non-ASCII){_allowed_suffix(str(e))}")
            raise InvalidSequenceError(msg, index=i, position=char_pos, byte=e.byte) from None
        raise


def _allowed_suffix(message: str) -> str:
    k = message.rfind(" (allowed:")
    return message[k:] if k >= 0 else ""


def letters_any_case(chars: str, uppercase: bool) -> list[tuple[int, str]]:
    """(byte, character it reads as) for every character, plus its lower case when ``uppercase``."""
    out = [(ord(c), c) for c in chars]
    if uppercase:
        have = set(chars)
        out += [(ord(c.lower()), c) for c in chars if c.isalpha() and c.lower() not in have]
    return out


def join_tokens(table: np.ndarray, ids: np.ndarray) -> str:
    """Concatenates token strings (``table`` is an object array of str indexed by id)."""
    return "".join(table[ids].tolist())


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def user_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` called inside omicskern that points at the first caller
    outside the package (so the warning names the user's line, whatever the call path)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level
