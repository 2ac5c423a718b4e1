"""Exceptions users see. Every one names the thing and the place."""

from __future__ import annotations


class OmicskernError(Exception):
    """Base class of omicskern's own errors."""


class InvalidSequenceError(OmicskernError, ValueError):
    """A sequence holds a byte the tokenizer cannot read.

    ``index`` is the sequence's position in the batch, ``position`` the 0-based offset of the
    offending byte inside it, ``name`` the record name when known (FASTA), else ``None``.
    """

    def __init__(self, message: str, *, index: int | None = None, position: int | None = None,
                 byte: int | None = None, name: str | None = None):
        super().__init__(message)
        self.index = index
        self.position = position
        self.byte = byte
        self.name = name


class MissingColumnError(OmicskernError, KeyError):
    """An AnnData obs/var column that was asked for does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class InvalidCountsError(OmicskernError, ValueError):
    """A count matrix holds values the tokenizer cannot use (negative, NaN, non-integer...)."""


class CheckpointError(OmicskernError, ValueError):
    """A checkpoint has missing, unexpected or mis-shaped keys."""


class BackendUnavailableError(OmicskernError, RuntimeError):
    """A backend was named explicitly but cannot run here (package missing, no GPU...)."""


class NoMatchingGenesError(OmicskernError, ValueError):
    """No gene of the input is in the tokenizer's dictionary / vocabulary (the message gives
    examples of both sides and the column the gene keys came from)."""


class UnknownTokensWarning(UserWarning):
    """Most tokens of a result are the unknown token (e.g. lower-case input and a BPE vocabulary
    without lower-case tokens). The message gives the fraction and the likely cause; the ids are
    unchanged. Silence it with ``warnings.simplefilter("ignore", UnknownTokensWarning)``."""


class JobMismatchError(OmicskernError, ValueError):
    """The output path holds the output of another job (or something that is not an output)."""


class InvalidFileError(OmicskernError, ValueError):
    """An input file cannot be read as what it should be (an empty, truncated or garbage
    ``.h5ad``, a ``.pkl`` that is not a pickled dict...). ``path`` is the file; the message
    names it and says what is wrong."""

    def __init__(self, message: str, *, path=None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class OutputNotWritableError(OmicskernError, PermissionError):
    """The output location cannot be written (checked before any work). ``path`` is the output
    asked for; the message names the folder that refused and why."""

    def __init__(self, message: str, *, path=None):
        super().__init__(message)
        self.path = None if path is None else str(path)
