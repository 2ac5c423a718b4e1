"""FASTA input (plain or BGZF-compressed) for the tokenizers, through pyfaidx; :func:`iter_records`
streams any FASTA (plain, gzip or BGZF) record by record without an index.

Index files: an existing ``.fai`` (and ``.gzi`` for BGZF) next to the FASTA is used when it is at
least as new as the FASTA. Otherwise (missing, or older, e.g. after a copy that did not keep file
times) a fresh index is built in a cache folder (``$OMICSKERN_CACHE/faidx``, default
``~/.cache/omicskern/faidx``), keyed by the FASTA's path, size and mtime. omicskern never writes
next to the FASTA and never rewrites an index it did not make, so read-only data folders work.

Example:
    >>> fa = FastaFile("genome.fa.gz")
    >>> for w in fa.windows(window=10_000, stride=5_000): tok.encode(w.seq)
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class Window:
    """A slice ``[start, end)`` (0-based) of record ``name``; ``seq`` is its bytes (zero-copy view)."""

    name: str
    start: int
    end: int
    seq: memoryview | bytes


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts of the windows ``[s, min(s + window, length))`` for ``s = 0, stride, 2*stride, ...``.

    Windows are added until one reaches the end of the record, so the last may be shorter than
    ``window``; every base is covered when ``stride <= window``. An empty record has no window.
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
    starts = []
    s = 0
    while s < length:
        starts.append(s)
        if s + window >= length:
            break
        s += stride
    return starts


def iter_records(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """``(name, sequence)`` of every record of a plain, gzip or BGZF FASTA file, in file order,
    streamed (no index, nothing written; plain gzip works, unlike :class:`FastaFile`).

    ``name`` is the header up to the first whitespace; the sequence is the record's lines joined
    with surrounding whitespace removed, case kept (empty records are yielded too).

    Example:
        >>> for name, seq in iter_records("reads.fa.gz"): ...
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FASTA file not found: {path}")
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"  # gzip and BGZF (a gzip-compatible format) alike
    opener = gzip.open if gz else open
    name: str | None = None
    parts: list[str] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith(">"):
                if name is not None:
                    yield name, "".join(parts)
                    parts.clear()
                fields = line[1:].split(maxsplit=1)
                name = fields[0] if fields else ""
            else:
                line = line.strip()
                if not line:
                    continue
                if name is None:
                    raise ValueError(f"{path}: line {lineno} holds sequence before any '>' header; not a FASTA file")
                parts.append(line)
    if name is not None:
        yield name, "".join(parts)


def _cache_dir() -> Path:
    root = os.environ.get("OMICSKERN_CACHE")
    candidates = [Path(root) / "faidx"] if root else []
    candidates += [Path.home() / ".cache" / "omicskern" / "faidx", Path(tempfile.gettempdir()) / "omicskern-faidx"]
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise OSError("no writable folder for FASTA index files; set OMICSKERN_CACHE")


def _fresh(index: Path, fasta: Path) -> bool:
    return index.is_file() and index.stat().st_mtime >= fasta.stat().st_mtime


def _is_bgzf(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(18)
    if head[:2] != b"\x1f\x8b":
        return False
    # BGZF = gzip with the FEXTRA flag and a 'BC' extra subfield
    if len(head) < 18 or not head[3] & 4 or head[12:14] != b"BC":
        raise ValueError(f"{path} is gzip-compressed but not BGZF; recompress it with 'bgzip' (htslib) "
                         "or decompress it, so it can be indexed")
    return True


class FastaFile:
    """Read-only access to the records of a FASTA file (plain or BGZF ``.fa.gz``).

    ``names`` and ``lengths`` list the records in file order. Sequences keep their case
    (lower case = soft-masked); tokenizers read them as upper case by default.
    """

    def __init__(self, path: str | os.PathLike):
        try:
            import pyfaidx
        except ImportError as e:  # pragma: no cover - a dependency
            raise ImportError("reading FASTA needs pyfaidx: pip install pyfaidx") from e
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"FASTA file not found: {self.path}")
        bgzf = _is_bgzf(self.path)
        if bgzf:
            try:
                import Bio.bgzf  # noqa: F401  (pyfaidx needs Biopython for BGZF)
            except ImportError as e:  # pragma: no cover - a dependency
                raise ImportError("reading BGZF-compressed FASTA needs Biopython: pip install biopython") from e
        fai = Path(str(self.path) + ".fai")
        gzi = Path(str(self.path) + ".gzi")
        if not (_fresh(fai, self.path) and (not bgzf or _fresh(gzi, self.path))):
            st = self.path.stat()
            key = hashlib.sha1(f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
            base = _cache_dir() / f"{key}-{self.path.name}"
            fai, gzi = Path(str(base) + ".fai"), Path(str(base) + ".gzi")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyfaidx's mtime warnings: freshness is checked above
            try:
                self._fa = pyfaidx.Fasta(str(self.path), indexname=str(fai), gzi_indexname=str(gzi) if bgzf else None,
                                         as_raw=True, sequence_always_upper=False, rebuild=False, build_index=True,
                                         read_long_names=False)
            except pyfaidx.FastaIndexingError as e:
                raise ValueError(f"cannot index FASTA {self.path}: {e}") from e
        self.names: list[str] = list(self._fa.keys())
        self.lengths: list[int] = [len(self._fa[n]) for n in self.names]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def total_length(self) -> int:
        return sum(self.lengths)

    def sequence(self, name: str) -> str:
        """The whole record as a str (case kept)."""
        if name not in self._fa:
            raise KeyError(f"no record {name!r} in {self.path} (records: {', '.join(self.names[:5])}"
                           f"{', ...' if len(self.names) > 5 else ''})")
        n = len(self._fa[name])
        return self._fa[name][0:n] if n else ""

    def records(self) -> Iterator[tuple[str, str]]:
        """(name, sequence) for every record, in file order."""
        for name in self.names:
            yield name, self.sequence(name)

    def windows(self, window: int, stride: int | None = None, names: list[str] | None = None) -> Iterator[Window]:
        """Windows of every record (see :func:`window_starts`); ``stride`` defaults to ``window``."""
        stride = window if stride is None else stride
        for name in names or self.names:
            data = self.sequence(name).encode("utf-8", "surrogateescape")
            view = memoryview(data)
            for s in window_starts(len(data), window, stride):
                e = min(s + window, len(data))
                yield Window(name, s, e, view[s:e])

    def close(self) -> None:
        self._fa.close()

    def __enter__(self) -> "FastaFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
