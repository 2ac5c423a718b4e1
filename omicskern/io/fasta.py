"""FASTA input (plain or BGZF-compressed) for the tokenizers, through pyfaidx; :func:`iter_records`
streams any FASTA (plain, gzip or BGZF) record by record without an index.

Index files: an existing ``.fai`` (and ``.gzi`` for BGZF) next to the FASTA is used when it is at
least as new as the FASTA *and* fits it: it parses, its first and last records sit right after
their own ``>name`` header lines and the last record ends where the file ends (so a partial
index, or one of another file, is not trusted). Otherwise (missing, older, e.g. after a copy that
did not keep file times, or not fitting) a fresh index is built in a cache folder
(``$OMICSKERN_CACHE/faidx``, default ``~/.cache/omicskern/faidx``), keyed by the FASTA's path,
size and mtime, under a temporary name renamed into place once complete, so a kill while
indexing leaves no partial index. omicskern never writes next to the FASTA and never rewrites an
index it did not make, so read-only data folders work. A record that reads shorter than its index
says raises instead of silently returning fewer bases.

Broken files raise one ``ValueError`` (or ``OSError``) naming the file and what is wrong
(truncated BGZF, binary data, lines of uneven length or blank lines inside a record, a
directory).

Example:
    >>> fa = FastaFile("genome.fa.gz")
    >>> for w in fa.windows(window=10_000, stride=5_000): tok.encode(w.seq)
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import socket
import struct
import tempfile
import uuid
import warnings
import zlib
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


# Index files are built under a temporary name in the cache folder and renamed into place, so a
# kill while indexing never leaves a partial index under the final name. Temporaries of dead
# builders (this host, process gone) are removed by the next build.
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_temps(folder: Path) -> None:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for p in entries:
        m = _TEMP.match(p.name)
        if m and m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                p.unlink()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


# What a broken FASTA (or index) makes pyfaidx / Biopython raise while indexing or reading.
_READ_ERRORS = (ValueError, IndexError, KeyError, RuntimeError, EOFError, OSError, struct.error, zlib.error,
                AssertionError, TypeError)


def _read_at(faidx, offset: int, n: int) -> bytes:
    """``n`` bytes of the (uncompressed) FASTA from ``offset`` (fewer at the end of the file)."""
    f = faidx.file
    if getattr(faidx, "_bgzf", False):
        from pyfaidx import make_virtual_offset

        blocks = faidx.gzi_index
        b = blocks[max(_bisect_blocks(blocks, offset), 0)]
        f.seek(make_virtual_offset(b.cstart, offset - b.ustart))
    else:
        f.seek(offset)
    out = f.read(n)
    return out if isinstance(out, bytes) else out.encode("latin-1")


def _bisect_blocks(blocks, offset: int) -> int:
    lo, hi = 0, len(blocks)
    while lo < hi:
        mid = (lo + hi) // 2
        if blocks[mid].ustart <= offset:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def _index_problem(faidx, path: Path) -> str | None:
    """Why the index pyfaidx read does not describe ``path`` (None when it does): every record
    must have sane numbers, the first and the last record must start right after their own
    ``>name`` header line, and the last record must end where the file ends (only blank space
    after it). Catches partial indexes (a killed writer) and indexes of another file."""
    index = faidx.index
    if not index:
        return "it lists no record"
    items = list(index.items())
    prev = -1
    for name, r in items:
        if r.rlen < 0 or r.offset <= prev or (r.rlen and (r.lenc <= 0 or r.lenb < r.lenc)):
            return f"record {name!r} has impossible numbers"
        prev = r.offset
    if not getattr(faidx, "_bgzf", False) and items[-1][1].bend > path.stat().st_size + 2:
        return "its last record ends past the end of the file"
    for name, r in {items[0], items[-1]}:
        back = min(r.offset, 1 << 16)
        head = _read_at(faidx, r.offset - back, back)
        line_start = head.rfind(b"\n", 0, len(head) - 1) + 1
        header = head[line_start:].rstrip(b"\r\n")
        if not head.endswith(b"\n") or not header.startswith(b">") or \
                header[1:].split(maxsplit=1)[:1] != [name.encode("utf-8", "surrogateescape")]:
            return f"record {name!r} is not where it says"
    name, r = items[-1]
    if r.rlen:
        last_base = r.bend - (r.lenb - r.lenc) - 1
        tail = _read_at(faidx, last_base, (1 << 16) + 1)
        if not tail[:1] or tail[:1].isspace() or tail[:1] == b">":
            return f"record {name!r} is shorter in the file"
        rest = tail[1:]
    else:
        rest = _read_at(faidx, r.offset, (1 << 16) + 1)
    if len(rest) > 1 << 16 or rest.strip():
        return "the file goes on after its last record"
    return None


def _describe_read_error(path: Path, e: BaseException, bgzf: bool) -> str:
    if isinstance(e, UnicodeDecodeError):
        return (f"{path} is not a text FASTA file: it holds bytes that are not UTF-8 text "
                f"(byte {e.object[e.start:e.start + 1]!r}); is it binary, or compressed with something else than BGZF?")
    import pyfaidx

    if isinstance(e, pyfaidx.FastaIndexingError):
        msg = str(e)
        if "not consistent" in msg:
            msg += (" Every line of a record but its last must have the same length, and a record may not contain "
                    "blank lines; rewrap the file (e.g. 'seqkit seq -w 60 in.fa > out.fa') to index it")
        return f"cannot index FASTA {path}: {msg}"
    if bgzf:
        return f"cannot read FASTA {path}: truncated or corrupt BGZF file ({type(e).__name__}: {e})"
    return f"cannot read FASTA {path}: {type(e).__name__}: {e}"


class FastaFile:
    """Read-only access to the records of a FASTA file (plain or BGZF ``.fa.gz``).

    ``names`` and ``lengths`` list the records in file order. Sequences keep their case
    (lower case = soft-masked); tokenizers read them as upper case by default.
    """

    def __init__(self, path: str | os.PathLike):
        try:
            import pyfaidx  # noqa: F401
        except ImportError as e:  # pragma: no cover - a dependency
            raise ImportError("reading FASTA needs pyfaidx: pip install pyfaidx") from e
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"FASTA {self.path} is a directory, not a file")
        if not self.path.is_file():
            raise FileNotFoundError(f"FASTA file not found: {self.path}")
        bgzf = _is_bgzf(self.path)
        if bgzf:
            try:
                import Bio.bgzf  # noqa: F401  (pyfaidx needs Biopython for BGZF)
            except ImportError as e:  # pragma: no cover - a dependency
                raise ImportError("reading BGZF-compressed FASTA needs Biopython: pip install biopython") from e
        self._bgzf = bgzf
        self._fa = None
        fai = Path(str(self.path) + ".fai")
        gzi = Path(str(self.path) + ".gzi")
        #: why an index beside the FASTA (or in the cache) was not used; informational
        self.index_notes: list[str] = []
        if _fresh(fai, self.path) and (not bgzf or _fresh(gzi, self.path)):
            self._fa = self._open_existing(fai, gzi)
        if self._fa is None:
            st = self.path.stat()
            key = hashlib.sha1(f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
            base = _cache_dir() / f"{key}-{self.path.name}"
            fai, gzi = Path(str(base) + ".fai"), Path(str(base) + ".gzi")
            if fai.is_file() and (not bgzf or gzi.is_file()):
                self._fa = self._open_existing(fai, gzi)
            if self._fa is None:
                self._fa = self._build(fai, gzi)
        self.index_path = fai
        self.names: list[str] = list(self._fa.keys())
        self.lengths: list[int] = [r.rlen for r in self._fa.faidx.index.values()]
        self._lengths = dict(zip(self.names, self.lengths))

    def _pyfaidx(self, fai: Path, gzi: Path, build: bool):
        import pyfaidx

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyfaidx's mtime warnings: freshness is checked here
            return pyfaidx.Fasta(str(self.path), indexname=str(fai), gzi_indexname=str(gzi) if self._bgzf else None,
                                 as_raw=True, sequence_always_upper=False, rebuild=False, build_index=build,
                                 read_long_names=False)

    def _open_existing(self, fai: Path, gzi: Path):
        """pyfaidx on an index found on disk, or None when it does not fit the file."""
        try:
            fa = self._pyfaidx(fai, gzi, build=False)
        except _READ_ERRORS as e:
            self.index_notes.append(f"{fai}: unreadable ({type(e).__name__}: {e})")
            return None
        try:
            problem = _index_problem(fa.faidx, self.path)
        except _READ_ERRORS as e:
            problem = f"{type(e).__name__}: {e}"
        if problem is None:
            return fa
        fa.close()
        self.index_notes.append(f"{fai} does not fit {self.path}: {problem}")
        return None

    def _build(self, fai: Path, gzi: Path):
        """Builds the index under temporary names in the cache folder, checks it and renames it
        into place (``.gzi`` first, then ``.fai``: a ``.fai`` under its final name is complete)."""
        _remove_stale_temps(fai.parent)
        tfai, tgzi = _temp_name(fai), _temp_name(gzi)
        try:
            try:
                fa = self._pyfaidx(tfai, tgzi, build=True)
            except _READ_ERRORS as e:
                raise ValueError(_describe_read_error(self.path, e, self._bgzf)) from None
            except Exception as e:  # pyfaidx.FastaIndexingError is a bare Exception
                import pyfaidx

                if isinstance(e, pyfaidx.FastaIndexingError):
                    raise ValueError(_describe_read_error(self.path, e, self._bgzf)) from None
                raise
            try:
                problem = _index_problem(fa.faidx, self.path)
            except _READ_ERRORS as e:
                problem = f"{type(e).__name__}: {e}"
            if problem is not None:
                fa.close()
                raise ValueError(f"cannot index FASTA {self.path}: {problem}"
                                 + (" (truncated or corrupt BGZF file?)" if self._bgzf else ""))
            if self._bgzf:
                os.replace(tgzi, gzi)
                fa.faidx.gzi_indexname = str(gzi)
            os.replace(tfai, fai)
            fa.faidx.indexname = str(fai)
            return fa
        finally:
            for t in (tfai, tgzi):
                with contextlib.suppress(OSError):
                    t.unlink()

    def __len__(self) -> int:
        return len(self.names)

    @property
    def total_length(self) -> int:
        return sum(self.lengths)

    def sequence(self, name: str) -> str:
        """The whole record as a str (case kept)."""
        n = self._lengths.get(name)
        if n is None:
            raise KeyError(f"no record {name!r} in {self.path} (records: {', '.join(self.names[:5])}"
                           f"{', ...' if len(self.names) > 5 else ''})")
        if not n:
            return ""
        try:
            seq = self._fa[name][0:n]
        except UnicodeDecodeError as e:
            raise ValueError(_describe_read_error(self.path, e, self._bgzf) + f" (record {name!r})") from None
        except _READ_ERRORS as e:
            raise ValueError(f"cannot read record {name!r} of FASTA {self.path}: "
                             + ("truncated or corrupt BGZF file " if self._bgzf else "")
                             + f"({type(e).__name__}: {e})") from None
        if len(seq) != n:
            raise ValueError(f"FASTA {self.path}: record {name!r} has {len(seq):,} of its {n:,} bases in the file "
                             "(truncated or changed after indexing)")
        return seq

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
        if self._fa is not None:
            self._fa.close()

    def __enter__(self) -> "FastaFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
