"""The whole-genome embedding store (written by :func:`omicskern.pipelines.genome.embed_genome`) and its reader.

Layout of ``OUT.zarr`` (a Zarr v3 group, readable with plain ``zarr.open_group``):

=======================  ==========================================================================
``embeddings``           ``[n_windows, C]`` float16 (or float32), one row per window in genome order;
                         a skipped window's row is NaN (``windows/status`` says why)
``windows/record``       int32 ``[n_windows]``: index into ``records/name``
``windows/start, end``   int64: the window's bases ``[start, end)`` of its record (0-based)
``windows/tokens``       int32: tokens the model saw (forward strand; 0 when skipped)
``windows/n_frac``       float32: fraction of N bases
``windows/status``       uint8: :data:`STATUS` code (0 = embedded)
``tokens/states``        optional ``[T, C]`` per-token states, ragged; ``tokens/cu_seqlens``
                         int64 ``[n_windows + 1]`` (window ``i``'s tokens are ``cu[i]:cu[i+1]``),
                         ``tokens/spans`` int32 ``[T, 2]``: bases of each token, relative to the
                         window start (special tokens ``[0, 0]``)
``tracks``               optional ``[n_bins, C]``: mean per-base states per bin of ``track_bin``
                         bases, records back to back (``records/track_offset``)
=======================  ==========================================================================

The group's attributes hold ``records`` (per record, or per BED region: ``name``, ``length``,
``start``/``end``, ``window_offset``, ``n_windows`` and, with tracks, ``track_offset``/``n_bins``),
the job (``omicskern_job``: its key and settings), the model (folder,
config and weights hash), the tokenizer, window/stride/policies, the omicskern version, the
FASTA (name, size, index checksum), the run summary and ``complete``. ``format="npy"`` writes
the same arrays as ``<name>.npy`` files (``windows/start`` -> ``windows.start.npy``) plus
``attrs.json`` in a plain folder, for users without zarr.

Example:
    >>> store = GenomeEmbeddings("lambda.zarr")                 # doctest: +SKIP
    >>> hits = store.region("gi|9626243|ref|NC_001416.1|:1,000-5,000")
    >>> hits.embeddings.shape, hits.windows["start"][:3]
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["GenomeEmbeddings", "RegionHits", "STATUS", "ArrayStore", "open_store", "parse_region"]

#: ``windows/status`` codes
STATUS = {0: "embedded", 1: "n_fraction", 2: "empty"}

_FMT = "omicskern.genome-embeddings/1"


class ArrayStore:
    """The few operations the pipeline needs, over a Zarr v3 group or a folder of ``.npy`` files.

    Arrays are created once (by rank 0, before the others start), then written by row ranges
    that are whole chunks of one owner; attributes are rewritten whole (atomically for npy)."""

    def __init__(self, path: Path, fmt: str):
        self.path = Path(path)
        self.fmt = fmt
        self._zarr = None
        if fmt == "zarr":
            try:
                import zarr
            except ImportError:
                raise ImportError("writing or reading a .zarr store needs zarr >= 3 (pip install zarr), "
                                  "or use format='npy' (--format npy)") from None
            self._zarr = zarr
            self.group = zarr.open_group(str(self.path), mode="a", zarr_format=3)
        elif fmt != "npy":
            raise ValueError(f"format must be 'zarr' or 'npy', got {fmt!r}")

    @staticmethod
    def detect(path: Path) -> str | None:
        path = Path(path)
        if (path / "zarr.json").is_file():
            return "zarr"
        if (path / "attrs.json").is_file() or (path / "embeddings.npy").is_file():
            return "npy"
        return None

    def _npy(self, name: str) -> Path:
        return self.path / (name.replace("/", ".") + ".npy")

    def create(self, name: str, shape: tuple, dtype, chunk_rows: int, fill=None) -> None:
        dtype = np.dtype(dtype) if dtype is not str else str
        if self.fmt == "zarr":
            chunks = (max(1, min(int(chunk_rows), max(shape[0], 1))),) + tuple(shape[1:])
            kw = {} if fill is None else {"fill_value": fill}
            self.group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, overwrite=True, **kw)
        else:
            if dtype is str:
                raise TypeError("npy stores keep strings in attrs.json")
            arr = np.lib.format.open_memmap(self._npy(name), mode="w+", dtype=dtype, shape=shape)
            if fill is not None and arr.size:
                arr[...] = fill
            arr.flush()
            del arr

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        if self.fmt == "zarr":
            self.group[name][start:start + len(values)] = values
        else:
            arr = np.load(self._npy(name), mmap_mode="r+")
            arr[start:start + len(values)] = values
            arr.flush()
            del arr

    def write_all(self, name: str, values, dtype=None, chunk_rows: int = 1 << 16) -> None:
        if self.fmt == "zarr":
            values = np.asarray(values) if dtype is not str else np.asarray(values, dtype=object)
            self.create(name, values.shape, dtype or values.dtype, chunk_rows)
            if values.size:
                self.group[name][...] = values
        else:
            _replace(self._npy(name), lambda f: np.save(f, np.asarray(values, dtype=dtype)))

    def read(self, name: str):
        if self.fmt == "zarr":
            return self.group[name]
        return np.load(self._npy(name), mmap_mode="r")

    def has(self, name: str) -> bool:
        if self.fmt == "zarr":
            try:
                self.group[name]
                return True
            except KeyError:
                return False
        return self._npy(name).is_file()

    @property
    def attrs(self) -> dict:
        if self.fmt == "zarr":
            return dict(self.group.attrs)
        p = self.path / "attrs.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def set_attrs(self, attrs: dict) -> None:
        if self.fmt == "zarr":
            self.group.attrs.clear()
            self.group.attrs.update(attrs)
        else:
            text = json.dumps(attrs, indent=1, default=str).encode()
            _replace(self.path / "attrs.json", lambda f: f.write(text))


def _replace(path: Path, write) -> None:
    """Writes ``path`` through a temporary file in its folder and an atomic rename, so a reader
    (or a killed writer's rerun) never sees it half-written."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def open_store(path, fmt: str | None = None) -> ArrayStore:
    path = Path(path)
    fmt = fmt or ArrayStore.detect(path)
    if fmt is None:
        raise FileNotFoundError(f"{path} is not an omicskern genome embedding store (no zarr.json or attrs.json)")
    return ArrayStore(path, fmt)


_REGION = re.compile(r"^(?P<name>.+?)(?::(?P<start>[\d,_]+)-(?P<end>[\d,_]+))?$")


def parse_region(region: str) -> tuple[str, int | None, int | None]:
    """``"chr2:1,000,000-1,200,000"`` -> ``("chr2", 999999, 1200000)``: 1-based inclusive
    (samtools) coordinates to a 0-based half-open range; a bare name is the whole record. A
    record name holding ``:`` is matched whole first by :meth:`GenomeEmbeddings.region`."""
    m = _REGION.match(region.strip())
    if not m:
        raise ValueError(f"region {region!r}: expected NAME or NAME:START-END")
    if m.group("start") is None:
        return m.group("name"), None, None
    start = int(m.group("start").replace(",", "").replace("_", ""))
    end = int(m.group("end").replace(",", "").replace("_", ""))
    if start < 1 or end < start:
        raise ValueError(f"region {region!r}: START must be >= 1 and END >= START (1-based, inclusive)")
    return m.group("name"), start - 1, end


@dataclass
class RegionHits:
    """The windows overlapping a region: their indices, embeddings ``[n, C]`` and table rows."""

    index: np.ndarray
    embeddings: np.ndarray
    windows: dict


class GenomeEmbeddings:
    """Reads an ``embed-genome`` store (Zarr or npy folder).

    Attributes: ``embeddings`` (the array, lazily read), ``windows`` (dict of numpy columns, plus
    ``record_name``), ``records`` (dict of columns), ``attrs``, ``complete``.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.store = open_store(self.path)
        self.attrs = self.store.attrs
        if self.attrs.get("format") != _FMT:
            raise ValueError(f"{self.path} is not an omicskern genome embedding store (format "
                             f"{self.attrs.get('format')!r})")
        self.complete = bool(self.attrs.get("complete"))
        rec = self.attrs["records"]
        self.records = {"name": list(rec["name"]), **{k: np.asarray(v) for k, v in rec.items() if k != "name"}}
        self._name_index = {n: i for i, n in enumerate(self.records["name"])}

    @property
    def embeddings(self):
        return self.store.read("embeddings")

    @property
    def windows(self) -> dict:
        cols = {k: np.asarray(self.store.read(f"windows/{k}")[:]) for k in
                ("record", "start", "end", "tokens", "n_frac", "status")}
        names = np.asarray(self.records["name"], dtype=object)
        cols["record_name"] = names[cols["record"]] if len(names) else np.zeros(0, object)
        return cols

    def __len__(self) -> int:
        return int(self.store.read("embeddings").shape[0])

    def region(self, region: str) -> RegionHits:
        """The windows overlapping ``region`` (``"chr2:1,000,000-1,200,000"``, 1-based inclusive,
        or a record name), in genome order."""
        name, start, end = (region, None, None) if region in self._name_index else parse_region(region)
        if name not in self._name_index:
            names = self.records["name"]
            raise KeyError(f"no record {name!r} in {self.path} (records: {', '.join(names[:5])}"
                           f"{', ...' if len(names) > 5 else ''})")
        r = self._name_index[name]
        off = int(self.records["window_offset"][r])
        n = int(self.records["n_windows"][r])
        st = np.asarray(self.store.read("windows/start")[off:off + n])
        en = np.asarray(self.store.read("windows/end")[off:off + n])
        keep = np.ones(n, bool) if start is None else (st < end) & (en > start)
        idx = off + np.nonzero(keep)[0]
        if len(idx):
            emb = np.asarray(self.store.read("embeddings")[int(idx[0]):int(idx[-1]) + 1])[idx - idx[0]]
        else:
            emb = np.zeros((0, self.store.read("embeddings").shape[1]), np.float32)
        w = self.windows
        return RegionHits(idx, emb, {k: v[idx] for k, v in w.items()})

    def token_states(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``([L_i, C] states, [L_i, 2] spans)`` of window ``i`` (stores made with per-token states)."""
        if not self.store.has("tokens/states"):
            raise KeyError(f"{self.path} has no per-token states (made without --per-token)")
        cu = self.store.read("tokens/cu_seqlens")
        a, b = int(cu[i]), int(cu[i + 1])
        return np.asarray(self.store.read("tokens/states")[a:b]), np.asarray(self.store.read("tokens/spans")[a:b])

    def track(self, record: str) -> np.ndarray:
        """``[n_bins, C]`` track of ``record`` (stores made with ``--track-bin``)."""
        if not self.store.has("tracks"):
            raise KeyError(f"{self.path} has no tracks (made without --track-bin)")
        r = self._name_index[record]
        a = int(self.records["track_offset"][r])
        return np.asarray(self.store.read("tracks")[a:a + int(self.records["n_bins"][r])])

    def __repr__(self) -> str:
        return (f"GenomeEmbeddings({str(self.path)!r}, windows={len(self)}, records={len(self.records['name'])}, "
                f"complete={self.complete})")

