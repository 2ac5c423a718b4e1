"""Cell-atlas embedding: an ``.h5ad`` -> one vector per cell (Geneformer V1/V2, scGPT), streamed,
resumable, split over torchrun ranks. ``omicskern embed-cells`` parses arguments and calls
:func:`embed_cells`.

**What a cell's vector is.**

* Geneformer, as its ``EmbExtractor`` computes it: the hidden states of ``emb_layer=-1`` (the
  second-to-last layer: ``layer=-2`` here, the model's default), then ``emb_mode="cell"``: the mean
  over the cell's gene tokens (``<cls>``/``<eos>`` left out), or ``emb_mode="cls"``: the
  ``<cls>`` token. Default: ``cls`` when the token dictionary has ``<cls>`` (V2), else ``mean`` (V1).
* scGPT, as ``embed_data`` computes it: the ``<cls>`` output of the last layer divided by its L2
  norm (``pooling="cls_normalized"``; ``"cls"`` keeps it raw).
* ``emb="gene"`` adds per-gene embeddings as ``EmbExtractor(emb_mode="gene")`` with a mean
  summary: for every gene token, the mean of its state (same layer) over every cell it occurs in
  (special tokens left out), with the number of cells.

**Input.** Read backed and streamed in units of ``cells_per_unit`` cells (``X`` or a layer; CSR,
dense, or CSC: a CSC matrix is first rewritten in row order into memory-mapped files in a
temporary folder beside ``out``, two bounded passes, removed at the end). The tokenizer is the
model's own (``model.get_tokenizer()``), deterministic (scGPT: ``tie_break="deterministic"``
and a seeded subset for cells over 1200 genes); its gene mapping report is in the summary.

**Output: one row per input cell, in input order, always.** A cell that can't be embedded (no
gene of the model's vocabulary, or left out by the filter column) gets a NaN row and a status code
(:data:`STATUS`, also written as text in the store). Formats, by the suffix of ``out``:

* ``.zarr``: a Zarr v3 group: ``embeddings`` float32 ``[n_cells, C]`` chunked ``(cells_per_unit,
  C)``, ``status`` int8 ``[n_cells]``, ``obs_names`` str, with ``emb="gene"`` ``gene_embeddings``
  ``[G, C]``, ``gene_ids`` and ``gene_cells``; the group's attributes (as embed-genome's store):
  ``format``, ``omicskern`` (version), ``omicskern_job`` (key and settings), ``status_codes``,
  ``pooling``, ``layer``, ``model``, ``summary`` and ``complete`` (true once every unit is
  written). The job's manifest and shards live in ``OUT.zarr/.omicskern-job/``.
* ``.npy``: ``OUT.npy`` (float32 ``[n_cells, C]``) + ``OUT.obs.csv`` (obs_name, status, reason) +
  ``OUT.job.json``; the work (a memory-mapped array + manifest) lives in ``OUT.npy.parts/`` until
  the job is complete, then ``OUT.npy`` is renamed into place.

**Resume and ranks.** The store's arrays are created up front by rank 0 (then a barrier); work
units are row ranges aligned to whole chunks, so each chunk has one owner; a unit writes its
rows, then its small shard (:class:`~omicskern.pipelines.jobs.ShardedJob`: the "done" marker,
with the unit's status codes and gene sums). A killed run rerun skips the done units and rewrites
the others, so the arrays come out identical, every cell written once. A different job (input
content, model weights, tokenizer, settings) on the same output is refused
(:class:`~omicskern.errors.JobMismatchError`) unless ``overwrite=True``. Under ``torchrun`` every
rank takes its share of the units (:func:`~omicskern.pipelines.units.split_by_rank`); a unit's
rows depend only on the unit, so the output equals a one-process run's.

**--write-obsm.** ``write_obsm=True`` also stores the embeddings as ``/obsm/<obsm_key>`` of the
input: into a copy of the input beside it, which is then renamed over it (``os.replace``), so the
input is at every moment either the old file or the complete new one (it costs one copy of the
file on the same disk). The job key fingerprints the count matrix, ``obs`` names and ``var``, not
``obsm``, so the job still resumes after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omicskern.errors import InvalidCountsError, InvalidFileError, JobMismatchError, MissingColumnError
from omicskern.pipelines.engine import Clock, Prefetcher, configure_threads, embed_rows
from omicskern.pipelines.jobs import JobKey, ShardedJob, atomic_write, atomic_write_text, digest
from omicskern.pipelines.units import cell_units

__all__ = ["embed_cells", "EmbedCellsResult", "STATUS", "matrix_fingerprint", "model_identity"]

#: status code -> reason, per cell (``-1``: not written yet, only in an incomplete store)
STATUS = {0: "embedded", 1: "no gene of the model's vocabulary", 2: "left out by the filter column"}
EMBEDDED, NO_GENES, FILTERED, NOT_WRITTEN = 0, 1, 2, -1
FORMATS = ("zarr", "npy")
EMB_MODES = ("cell", "gene")
_WORK = ".omicskern-job"  # the job's manifest and shards inside a .zarr store (as embed-genome's)
_FMT = "omicskern.cell-embeddings/1"


@dataclass
class EmbedCellsResult:
    """What :func:`embed_cells` did (``summary()`` is what the CLI prints)."""

    out: Path
    format: str
    job_key: str
    n_cells: int = 0
    n_embedded: int = 0
    not_embedded: dict = field(default_factory=dict)  # reason -> cells
    dim: int = 0
    n_genes: int = 0
    n_genes_matched: int = 0
    n_gene_embeddings: int = 0
    pooling: str = ""
    layer: int = -1
    wall_s: float = 0.0
    tokenize_s: float = 0.0   # reading + tokenizing (input thread; overlaps the model)
    wait_s: float = 0.0       # model idle waiting for input
    model_s: float = 0.0
    write_s: float = 0.0
    units_done: int = 0       # units this run computed (0: everything was there)
    reused: bool = False
    obsm_written: str | None = None
    report_text: str = ""

    def summary(self) -> str:
        lines = [f"{self.n_embedded:,} of {self.n_cells:,} cells embedded ({self.dim}-d, pooling={self.pooling}, "
                 f"layer={self.layer}) -> {self.out}" + (" (already complete: nothing recomputed)" if self.reused else "")]
        for reason, n in self.not_embedded.items():
            lines.append(f"  not embedded: {n:,} cells: {reason} (NaN rows)")
        lines.append(f"  genes: {self.n_genes_matched:,} of {self.n_genes:,} matched the model's vocabulary")
        if self.n_gene_embeddings:
            lines.append(f"  gene embeddings: {self.n_gene_embeddings:,} genes")
        if not self.reused:
            rate = self.n_cells / self.wall_s if self.wall_s else 0.0
            lines.append(f"  wall {self.wall_s:.2f} s ({rate:,.0f} cells/s): reading+tokenizing {self.tokenize_s:.2f} s "
                         f"(in the input thread; model waited {self.wait_s:.2f} s for it), model {self.model_s:.2f} s, "
                         f"writing {self.write_s:.2f} s; {self.units_done} units computed")
        if self.obsm_written:
            lines.append(f"  written to the input's {self.obsm_written}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["out"] = str(self.out)
        return d


# -- fingerprints ------------------------------------------------------------------------------------
def _hash_dataset(h, ds, block: int = 1 << 22) -> None:
    h.update(f"{ds.name}\0{ds.shape}\0{ds.dtype}\0".encode())
    if ds.shape == ():
        h.update(repr(ds[()]).encode())
        return
    if ds.dtype.kind in "biuf":
        n = ds.shape[0]
        row = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
        step = max(1, block // row)
        for a in range(0, n, step):
            h.update(np.ascontiguousarray(ds[a:a + step]).tobytes())
    else:  # strings / objects: element by element
        for a in range(0, ds.shape[0], 65536):
            h.update(b"\0".join(x if isinstance(x, bytes) else str(x).encode() for x in ds[a:a + 65536].ravel()))


def _hash_node(h, node) -> None:
    import h5py

    if isinstance(node, h5py.Dataset):
        _hash_dataset(h, node)
        return
    for k in sorted(node.attrs):
        h.update(f"@{k}={node.attrs[k]!r}".encode())
    for k in sorted(node):
        _hash_node(h, node[k])


def matrix_fingerprint(path: str | os.PathLike, layer: str | None = None) -> dict:
    """What a cell-embedding job's output depends on in an ``.h5ad``, by content: the count matrix
    (``X`` or ``layers/<layer>``), the ``obs`` index (cell names, their order) and ``var`` (gene
    keys), streamed through blake2b. ``obsm``/``uns``/other ``obs`` columns are left out, so
    writing ``/obsm/<key>`` or annotating cells keeps the key; moving the file keeps it too."""
    import h5py

    h = hashlib.blake2b(digest_size=16)
    with h5py.File(path, "r") as f:
        grp = f["X"] if layer is None else f["layers"][layer]
        _hash_node(h, grp)
        obs = f["obs"]
        index = obs.attrs.get("_index", "_index")
        if isinstance(index, bytes):
            index = index.decode()
        if index in obs:
            _hash_node(h, obs[index])
        if "var" in f:
            _hash_node(h, f["var"])
        shape = tuple(int(x) for x in (grp.attrs["shape"] if "shape" in grp.attrs else grp.shape))
    return {"type": "h5ad-matrix", "layer": layer, "shape": list(shape), "blake2b": h.hexdigest()}


def model_identity(model) -> dict:
    """A model by content: its type, config and a blake2b of every tensor (names, shapes, dtypes,
    bytes) -- not the folder it came from."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    cfg = getattr(model, "config", None)
    cfg = {k: getattr(cfg, k) for k in getattr(cfg, "__dataclass_fields__", {})} if cfg is not None else {}
    return {"model_type": model.model_type, "config": digest(cfg), "weights": h.hexdigest()}


# -- output stores -----------------------------------------------------------------------------------
class _ZarrStore:
    """The ``.zarr`` output: arrays + job files in one folder."""

    def __init__(self, out: Path):
        self.out = out
        self.work = out / _WORK
        self._g = None

    def _zarr(self):
        try:
            import zarr
        except ImportError:  # pragma: no cover
            raise ImportError("a .zarr output needs the zarr package (pip install 'zarr>=3'); or use --out X.npy") from None
        return zarr

    def attrs(self) -> dict | None:
        """The store's attributes (``None``: no zarr group there)."""
        zj = self.out / "zarr.json"
        if not zj.is_file():
            return None
        try:
            return json.loads(zj.read_text()).get("attributes", {})
        except (OSError, json.JSONDecodeError):
            return {}

    def done_record(self) -> dict | None:
        a = self.attrs()
        return a if a and a.get("complete") and a.get("format") == _FMT else None

    def job_key(self) -> str | None:
        a = self.attrs() or {}
        return (a.get("omicskern_job") or {}).get("key") if a.get("format") == _FMT else None

    def create(self, n: int, c: int, chunk: int, obs_names: np.ndarray, attrs: dict) -> None:
        zarr = self._zarr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr's "string dtype is not in the v3 spec yet" notice
            g = zarr.open_group(str(self.out), mode="a")
            e = g.create_array("embeddings", shape=(n, c), chunks=(chunk, c), dtype="float32", fill_value=np.nan,
                               overwrite=True)
            s = g.create_array("status", shape=(n,), chunks=(chunk,), dtype="int8", fill_value=NOT_WRITTEN,
                               overwrite=True)
            o = g.create_array("obs_names", shape=(n,), chunks=(max(chunk, 65536),), dtype=str, overwrite=True)
            for name in ("gene_embeddings", "gene_ids", "gene_cells"):
                if name in g:
                    del g[name]
            for a in range(0, n, 1 << 18):
                o[a:a + (1 << 18)] = np.asarray(obs_names[a:a + (1 << 18)]).astype(str)
            g.attrs.put(attrs)  # last: a store with attributes has all its arrays
        del e, s

    def open(self) -> None:
        zarr = self._zarr()
        self._g = zarr.open_group(str(self.out), mode="r+")

    def write(self, a: int, b: int, emb: np.ndarray, status: np.ndarray) -> None:
        self._g["embeddings"][a:b] = emb
        self._g["status"][a:b] = status

    def status(self) -> np.ndarray:
        return self._g["status"][:]

    def iter_rows(self, step: int):
        e = self._g["embeddings"]
        for a in range(0, e.shape[0], step):
            yield a, e[a:a + step]

    def finalize(self, record: dict, genes) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = self._g
            if genes is not None:
                ids, emb, cells = genes
                g.create_array("gene_embeddings", shape=emb.shape, chunks=(max(1, min(len(emb), 4096)), emb.shape[1]),
                               dtype="float32", fill_value=np.nan, overwrite=True)[:] = emb
                g.create_array("gene_ids", shape=(len(ids),), chunks=(max(1, len(ids)),), dtype=str,
                               overwrite=True)[:] = np.asarray(ids).astype(str)
                g.create_array("gene_cells", shape=(len(ids),), chunks=(max(1, len(ids)),), dtype="int64",
                               overwrite=True)[:] = cells
            g.attrs.put(record)


class _NpyStore:
    """The ``.npy`` output: work in ``OUT.parts/`` (memory-mapped arrays + job), then ``OUT`` +
    ``OUT.obs.csv`` + ``OUT.job.json``."""

    def __init__(self, out: Path):
        self.out = out
        self.work = Path(str(out) + ".parts")
        self.obs_csv = out.with_suffix(".obs.csv")
        self.job_json = out.with_suffix(".job.json")
        self._emb = self._status = None

    def done_record(self) -> dict | None:
        if not (self.out.is_file() and self.job_json.is_file()):
            return None
        try:
            rec = json.loads(self.job_json.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return rec if rec.get("complete") else None

    def job_key(self) -> str | None:
        m = self.work / "manifest.json"
        try:
            return json.loads(m.read_text()).get("job_key") if m.is_file() else None
        except (OSError, json.JSONDecodeError):
            return None

    def create(self, n: int, c: int, chunk: int, obs_names: np.ndarray, attrs: dict) -> None:
        emb = np.lib.format.open_memmap(self.work / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n, c))
        emb[:] = np.nan
        emb.flush()
        st = np.lib.format.open_memmap(self.work / "status.npy", mode="w+", dtype=np.int8, shape=(n,))
        st[:] = NOT_WRITTEN
        st.flush()
        np.save(self.work / "obs_names.npy", np.asarray(obs_names).astype(str))
        del emb, st

    def open(self) -> None:
        self._emb = np.load(self.work / "embeddings.npy", mmap_mode="r+")
        self._status = np.load(self.work / "status.npy", mmap_mode="r+")

    def write(self, a: int, b: int, emb: np.ndarray, status: np.ndarray) -> None:
        self._emb[a:b] = emb
        self._status[a:b] = status
        self._emb.flush()
        self._status.flush()

    def status(self) -> np.ndarray:
        return np.asarray(self._status)

    def iter_rows(self, step: int):
        src = self._emb if self._emb is not None else np.load(self.out, mmap_mode="r")
        for a in range(0, src.shape[0], step):
            yield a, np.asarray(src[a:a + step])

    def finalize(self, record: dict, genes) -> None:
        import csv
        import io

        names = np.load(self.work / "obs_names.npy")
        st = self.status()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["obs_name", "status", "reason"])
        for nm, s in zip(names, st):
            w.writerow([nm, int(s), STATUS.get(int(s), "not written")])
        atomic_write_text(self.obs_csv, buf.getvalue())
        atomic_write_text(self.job_json, json.dumps(record, indent=1))
        self._emb.flush()
        del self._emb, self._status
        self._emb = self._status = None
        os.replace(self.work / "embeddings.npy", self.out)  # the commit point
        shutil.rmtree(self.work, ignore_errors=True)


def _store_for(out: Path, fmt: str | None):
    fmt = fmt or ("zarr" if out.suffix == ".zarr" else "npy" if out.suffix == ".npy" else None)
    if fmt not in FORMATS:
        raise ValueError(f"out={str(out)!r}: the output is a .zarr store or a .npy file (by its suffix, or fmt='zarr'/'npy')")
    if fmt == "zarr" and out.suffix != ".zarr" or fmt == "npy" and out.suffix != ".npy":
        raise ValueError(f"out={str(out)!r} does not end in .{fmt} (fmt={fmt!r}); the output is written exactly at out")
    return fmt, (_ZarrStore(out) if fmt == "zarr" else _NpyStore(out))


# -- the job -----------------------------------------------------------------------------------------
def _default_pooling(model) -> str:
    if model.model_type == "scgpt":
        return "cls_normalized"
    if model.model_type == "geneformer":
        return "cls" if getattr(model, "cls_token_id", None) is not None else "mean"
    return "mean"


def _rows_view(m, a: int, b: int):
    from omicskern.io.cells import CellMatrix

    reader = m._reader
    return CellMatrix(b - a, m.n_vars, lambda s, e: reader(a + s, a + e),
                      obs=None if m.obs is None else m.obs.iloc[a:b], var=m.var,
                      obs_names=None if m.obs_names is None else m.obs_names[a:b], var_names=m.var_names,
                      backed=m.backed, description=m.description)


def _global_error(e: Exception, a: int, path: str) -> Exception:
    """A tokenizer error about row ``r`` of a unit view, about row ``a + r`` of the input file."""
    msg = str(e)
    row = getattr(e, "row", None)
    if isinstance(row, int) and row >= 0:
        msg = msg.replace(f"cell {row} ", f"cell {row + a} ", 1)
    out = type(e)(f"{path}: {msg}") if isinstance(e, (InvalidCountsError,)) else e
    for k in ("row", "column", "value", "kind"):
        if hasattr(e, k):
            setattr(out, k, (getattr(e, k) + a) if k == "row" and isinstance(getattr(e, k), int) and getattr(e, k) >= 0
                    else getattr(e, k))
    return out


def _special_ids(model, tok) -> set:
    ids = set()
    for obj in (model, tok):
        for name in ("cls_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(obj, name, None)
            if isinstance(v, (int, np.integer)) and v >= 0:
                ids.add(int(v))
    return ids


def _gene_sums(ids: np.ndarray, states: np.ndarray, special: set):
    keep = ~np.isin(ids, list(special)) if special else np.ones(len(ids), bool)
    ids, states = ids[keep], states[keep]
    if not len(ids):
        return np.zeros(0, np.int64), np.zeros((0, states.shape[1]), np.float64), np.zeros(0, np.int64)
    order = np.argsort(ids, kind="stable")
    ids, states = ids[order], states[order].astype(np.float64)
    uniq, start, cnt = np.unique(ids, return_index=True, return_counts=True)
    return uniq.astype(np.int64), np.add.reduceat(states, start, axis=0), cnt.astype(np.int64)


def embed_cells(input: str | os.PathLike, model, out: str | os.PathLike, *, fmt: str | None = None,
                layer: str | None = None, gene_column: str | None = "__default__", filter_column: str | None = "__default__",
                pooling: str | None = None, emb_layer: int | None = None, emb: str = "cell",
                batch_tokens: int = 16384, cells_per_unit: int = 4096, device: str | None = None, dtype=None,
                tokenizer_options: dict | None = None, overwrite: bool = False, write_obsm: bool = False,
                obsm_key: str | None = None, progress: bool = False, threads: int | None = None) -> EmbedCellsResult:
    """Embeds every cell of ``input`` (an ``.h5ad``) with ``model`` and writes ``out`` (see the
    module docstring for what is computed, the formats, resume and ranks).

    Args:
        model: a checkpoint folder (loaded with :func:`omicskern.load` on this rank's device) or a
            loaded Geneformer / scGPT :class:`~omicskern.models.base.OmicsModel`.
        layer: read ``adata.layers[layer]`` instead of ``X``.
        gene_column: var column with the gene keys (default: the tokenizer's: ``ensembl_id`` for
            Geneformer, var_names for scGPT; ``"index"``: var_names).
        filter_column: obs column; cells where it is not 1 are not embedded (NaN, status 2).
            Default: Geneformer's ``filter_pass`` when present, none for scGPT.
        pooling: ``None``: the model's cell embedding (module docstring); or a pooling name.
        emb_layer: hidden-state index (``None``: the model's default: Geneformer ``-2``, scGPT ``-1``).
        emb: ``"cell"``, or ``"gene"`` to add per-gene embeddings (``.zarr`` only).
        batch_tokens: tokens per model call (token-budget groups of length-sorted cells).
        cells_per_unit: cells per work unit = rows per output chunk (bounds memory).
        tokenizer_options: extra keywords for ``model.get_tokenizer()`` (e.g. scGPT's
            ``tie_break="random", seed=0``; random streams are then seeded per unit).
        overwrite: replace an output of another job (and an existing ``obsm_key``).
        write_obsm: also write the embeddings into the input as ``/obsm/<obsm_key>``
            (default key ``X_scgpt`` / ``X_geneformer``).
    """
    from omicskern.io.cells import check_h5ad, open_cells
    from omicskern.io.writers import check_writable
    from omicskern.pipelines.distributed import Ranks

    t_start = time.perf_counter()
    input, out = Path(input), Path(out)
    if emb not in EMB_MODES:
        raise ValueError(f"emb must be one of {', '.join(EMB_MODES)}, got {emb!r}")
    if int(batch_tokens) < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    if int(cells_per_unit) < 1:
        raise ValueError(f"cells_per_unit must be >= 1, got {cells_per_unit}")
    fmt, store = _store_for(out, fmt)
    if emb == "gene" and fmt != "zarr":
        raise ValueError("emb='gene' needs a .zarr output (gene embeddings are stored with their gene ids)")
    check_h5ad(input)
    check_writable(out)
    if write_obsm:
        check_writable(input, what="input (write_obsm=True rewrites it)")

    ranks = Ranks.from_env()
    dev = ranks.device(device)
    configure_threads(threads)
    if not hasattr(model, "embed"):
        import omicskern

        model = omicskern.load(model, device=dev, dtype=dtype)
    elif device is not None or dtype is not None:
        from omicskern.models._common import finish_load

        model = finish_load(model, dtype, dev if device is not None else None)
    if model.kind != "cell":
        raise ValueError(f"model: a {model.model_type} is a {model.kind} model; embed-cells takes a cell model "
                         "(Geneformer, scGPT)")
    pooling = pooling or _default_pooling(model)
    if pooling not in tuple(getattr(model, "extra_poolings", ())) + ("mean", "cls", "last", "max"):
        raise ValueError(f"pooling must be one of {', '.join(('mean', 'cls', 'last', 'max') + tuple(model.extra_poolings))}, "
                         f"got {pooling!r}")
    n_states = model._num_states()
    emb_layer = model.default_layer if emb_layer is None else int(emb_layer)
    if not -n_states <= emb_layer < n_states:
        raise ValueError(f"emb_layer must be in [{-n_states}, {n_states - 1}] ({n_states} hidden states), got {emb_layer}")

    tok_kw = dict(tokenizer_options or {})
    if gene_column != "__default__":
        tok_kw["gene_column"] = gene_column
    if filter_column != "__default__":
        tok_kw["filter_column"] = filter_column
    tok_kw.update(skip_empty=True, num_threads=1, chunk_size=int(cells_per_unit))
    tok = model.get_tokenizer(**tok_kw)
    if obsm_key is None:
        obsm_key = "X_scgpt" if model.model_type == "scgpt" else f"X_{model.model_type}"

    from omicskern.pipelines.tokenize import cell_tokenizer_identity

    dim = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "embsize", 0))
    settings = {"pooling": pooling, "layer": emb_layer, "emb": emb, "x_layer": layer, "cells_per_unit": int(cells_per_unit),
                "batch_tokens": int(batch_tokens), "dtype": str(model.dtype), "device": str(model.device.type),
                "format": fmt}
    key = JobKey("embed-cells", matrix_fingerprint(input, layer), {"model": model_identity(model),
                                                                   "tokenizer": cell_tokenizer_identity(tok)}, settings)

    from omicskern.io.cells import h5ad_encoding, open_cells_csc

    csc_dir = None
    if h5ad_encoding(input, layer) == "csc_matrix":  # rewritten once in row order, bounded memory
        import tempfile

        out.parent.mkdir(parents=True, exist_ok=True)
        csc_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.csc-", dir=out.parent))
        try:
            m = open_cells_csc(input, csc_dir, layer=layer)
        except BaseException:
            shutil.rmtree(csc_dir, ignore_errors=True)
            raise
    else:
        m = open_cells(str(input), layer=layer)
    try:
        n = m.n_obs
        try:  # the gene mapping, checked before any output is made
            mapping = _mapping_report(tok, m)
        except (MissingColumnError, ValueError) as e:
            raise type(e)(f"{input}: {e}") from None
        units = cell_units(n, int(cells_per_unit))
        done = store.done_record()
        if done is not None and (done.get("omicskern_job") or {}).get("key") == key.hexdigest:
            res = _result_from_record(done, out, fmt)
            res.reused = True
            if write_obsm and ranks.is_main:
                if fmt == "zarr":
                    store.open()
                _write_obsm(input, store, obsm_key, n, dim, overwrite)
                res.obsm_written = f"/obsm/{obsm_key}"
            return res
        if done is not None and not overwrite:
            old = done.get("omicskern_job") or {}
            raise JobMismatchError(f"{out} holds the output of another job (job {old.get('key')}, this job "
                                   f"{key.hexdigest}: {key.differences(old)}); use overwrite=True "
                                   "or another output path")
        ranks.init(str(model.device))
        job = ShardedJob(store.work, key, units, config=settings)
        from omicskern import __version__

        attrs = {"format": _FMT, "omicskern": __version__, "complete": False,
                 "omicskern_job": {"key": key.hexdigest, **key.to_dict()}, "status_codes": STATUS,
                 "pooling": pooling, "layer": emb_layer, "emb": emb, "dim": dim,
                 "model": {"type": model.model_type, "path": str(getattr(model, "source_path", None)),
                           **key.producer["model"]}}
        ok, err = True, None
        if ranks.is_main:
            try:
                _prepare(store, fmt, out, key, job, n, dim, int(cells_per_unit), m, attrs, overwrite)
            except Exception as e:  # the other ranks stop too (all_ok), this rank raises
                ok, err = False, e
        if not ranks.all_ok(ok):
            if err is not None:
                raise err
            raise RuntimeError("embed-cells: rank 0 could not open the output (see its error)")
        if not ranks.is_main:
            job.open(overwrite=False)
        store.open()
        pending = job.pending(ranks.rank, ranks.world_size)

        clock = Clock()
        reseed = getattr(tok, "tie_break", "") == "random" or getattr(tok, "truncate", "") in ("scgpt", "randperm")
        special = _special_ids(model, tok)
        filt_col = _filter_values(m, tok)
        res_units, ok, err = 0, True, None
        bar = _bar(progress and ranks.is_main, sum(u.stop - u.start for u in pending))

        def produce():
            for u in pending:
                view = _rows_view(m, u.start, u.stop)
                t = _reseeded(tok, u) if reseed else tok
                try:
                    batch = t.tokenize(view)
                except (InvalidCountsError, ValueError) as e:
                    raise _global_error(e, u.start, str(input)) from None
                yield u, batch

        try:
            with Prefetcher(produce(), depth=2) as pf:
                for u, batch in pf:
                    k = u.stop - u.start
                    status = np.full(k, NO_GENES, np.int8)
                    if filt_col is not None:
                        status[filt_col[u.start:u.stop]] = FILTERED
                    vecs = np.full((k, dim), np.nan, np.float32)
                    gene = None
                    rows = np.asarray(batch.source, np.int64)
                    if len(batch):
                        lengths = np.diff(np.asarray(batch.cu_seqlens, np.int64))
                        real = lengths > (1 if model.model_type == "scgpt" else 0)  # [<cls>] alone: no gene
                        if emb == "gene":
                            pooled, gene = _embed_with_genes(model, batch, pooling, emb_layer, batch_tokens, clock,
                                                             special)
                        else:
                            pooled = embed_rows(model, batch, pooling=pooling, layer=emb_layer, max_tokens=batch_tokens,
                                                clock=clock).pooled
                        vecs[rows[real]] = pooled[real]
                        status[rows[real]] = EMBEDDED
                    with clock("write"):
                        store.write(u.start, u.stop, vecs, status)

                        def write_shard(tmp, status=status, gene=gene):
                            arrays = {"status": status}
                            if gene is not None:
                                arrays.update(gene_ids=gene[0], gene_sums=gene[1], gene_counts=gene[2])
                            with open(tmp, "wb") as fh:
                                np.savez(fh, **arrays)

                        job.write_shard(u, write_shard, rows=k, embedded=int((status == EMBEDDED).sum()))
                    res_units += 1
                    if bar is not None:
                        bar.update(k)
                tok_s, wait_s = pf.produce_s, pf.wait_s
        except BaseException as e:
            ok, err = False, e
            tok_s = wait_s = 0.0
        finally:
            if bar is not None:
                bar.close()
        job.finish()
        all_ok = ranks.all_ok(ok)
        if err is not None:
            raise err
        if not all_ok:
            raise RuntimeError("embed-cells: another rank failed (see its error); rerun to resume")
        ranks.barrier()
        result = EmbedCellsResult(out, fmt, key.hexdigest, n_cells=n, dim=dim, pooling=pooling, layer=emb_layer,
                                  units_done=res_units, tokenize_s=tok_s, wait_s=wait_s, model_s=clock.get("model"),
                                  write_s=clock.get("write"))
        if ranks.is_main:
            job.flush()
            if not job.complete:
                missing = [u.index for u in units if not job.is_done(u, verify=False)]
                raise RuntimeError(f"embed-cells: units {missing[:10]} of {out} are not written after every rank "
                                   "finished; rerun to resume")
            report = mapping
            st = store.status()
            result.n_embedded = int((st == EMBEDDED).sum())
            result.not_embedded = {STATUS[c]: int((st == c).sum()) for c in (NO_GENES, FILTERED) if (st == c).any()}
            result.n_genes, result.n_genes_matched = report.n_genes, report.n_genes_matched
            result.report_text = report.summary()
            genes = _merge_genes(job, units, tok) if emb == "gene" else None
            result.n_gene_embeddings = 0 if genes is None else len(genes[0])
            result.wall_s = time.perf_counter() - t_start
            record = {**attrs, "complete": True,
                      "summary": {k: v for k, v in result.to_dict().items()
                                  if k in ("n_cells", "n_embedded", "not_embedded", "dim", "n_genes", "n_genes_matched",
                                           "n_gene_embeddings", "pooling", "layer")}}
            store.finalize(record, genes)
            if write_obsm:
                _write_obsm(input, store, obsm_key, n, dim, overwrite)
                result.obsm_written = f"/obsm/{obsm_key}"
        result.wall_s = time.perf_counter() - t_start
        ranks.barrier()
        return result
    finally:
        m.close()
        ranks.close()
        if csc_dir is not None:
            shutil.rmtree(csc_dir, ignore_errors=True)


def _prepare(store, fmt, out: Path, key: JobKey, job: ShardedJob, n: int, dim: int, chunk: int, m, attrs: dict,
             overwrite: bool) -> None:
    """Rank 0: resume this job's output, refuse another's (unless ``overwrite``), else create the
    fixed-shape arrays up front (attributes last)."""
    if fmt == "npy":
        if overwrite:
            for p in (store.out, store.obs_csv, store.job_json):
                p.unlink(missing_ok=True)
        resume = store.job_key() == key.hexdigest and _arrays_there(store, fmt)
        job.open(overwrite=overwrite)  # refuses another job's work folder unless overwrite
        if not resume:
            store.create(n, dim, chunk, _obs_names(m), attrs)
        return
    if out.exists() and not out.is_dir():
        raise JobMismatchError(f"{out} exists and is not a folder (a .zarr store is a folder)")
    if store.job_key() == key.hexdigest and _arrays_there(store, fmt):
        job.open(overwrite=False)
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            old = (store.attrs() or {}).get("omicskern_job")
            what = (f"holds the output of another job ({key.differences(old)})" if old
                    else "is not empty and is not an embed-cells store")
            raise JobMismatchError(f"{out} {what}; use overwrite=True or another output path")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    job.open(overwrite=True)
    store.create(n, dim, chunk, _obs_names(m), attrs)


def _arrays_there(store, fmt) -> bool:
    if fmt == "zarr":
        return (store.out / "embeddings" / "zarr.json").is_file() and (store.out / "status" / "zarr.json").is_file()
    return (store.work / "embeddings.npy").is_file() and (store.work / "status.npy").is_file()


def _obs_names(m) -> np.ndarray:
    if m.obs_names is None:
        return np.arange(m.n_obs).astype(str)
    return np.asarray(m.obs_names).astype(str)


def _filter_values(m, tok) -> np.ndarray | None:
    """True where the tokenizer's filter column leaves a cell out (it keeps == 1)."""
    col = getattr(tok, "filter_column", None)
    if not col:
        return None
    v = m.obs_column(col, required=getattr(tok, "filter_column_required", True))
    if v is None:
        return None
    return ~(np.asarray(v == 1, bool) if v.dtype != bool else v.astype(bool))


def _reseeded(tok, unit):
    import copy

    t = copy.copy(tok)
    t.seed = int(np.random.SeedSequence([int(getattr(tok, "seed", 0)), int(unit.start)]).generate_state(1)[0])
    return t


def _embed_with_genes(model, batch, pooling, layer, batch_tokens, clock, special):
    """Pooled vectors of every row + per-gene sums of the token states, in slices of rows so the
    per-token states held at once stay near ``4 * batch_tokens`` tokens."""
    lengths = np.diff(np.asarray(batch.cu_seqlens, np.int64))
    pooled, sums = [], []
    a = 0
    while a < len(batch):
        b, tot = a, 0
        while b < len(batch) and (b == a or tot + lengths[b] <= 4 * batch_tokens):
            tot += lengths[b]
            b += 1
        sub = batch[a:b]
        r = embed_rows(model, sub, pooling=pooling, layer=layer, max_tokens=batch_tokens, per_token=True, clock=clock)
        pooled.append(r.pooled)
        # a gene's sum over the cells of this slice: states of rows with genes only
        ids = np.asarray(sub.input_ids, np.int64)
        sums.append(_gene_sums(ids, r.tokens, special))
        a = b
    ids = np.concatenate([s[0] for s in sums])
    vals = np.concatenate([s[1] for s in sums])
    cnts = np.concatenate([s[2] for s in sums])
    uniq, inv = np.unique(ids, return_inverse=True)
    tot = np.zeros((len(uniq), vals.shape[1] if vals.ndim == 2 else 0), np.float64)
    np.add.at(tot, inv, vals)
    c = np.bincount(inv, weights=cnts, minlength=len(uniq)).astype(np.int64)
    return np.concatenate(pooled), (uniq, tot, c)


def _merge_genes(job, units, tok):
    ids_all, sums_all, cnt_all = [], [], []
    for u in units:
        with np.load(job.out / u.shard) as z:
            if "gene_ids" in z:
                ids_all.append(z["gene_ids"])
                sums_all.append(z["gene_sums"])
                cnt_all.append(z["gene_counts"])
    if not ids_all:
        return np.zeros(0, str), np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    ids = np.concatenate(ids_all)
    uniq, inv = np.unique(ids, return_inverse=True)
    tot = np.zeros((len(uniq), sums_all[0].shape[1]), np.float64)
    np.add.at(tot, inv, np.concatenate(sums_all))
    cnt = np.bincount(inv, weights=np.concatenate(cnt_all), minlength=len(uniq)).astype(np.int64)
    vocab = getattr(tok, "vocab", None) or getattr(tok, "token_dict", None) or {}
    inverse = {int(v): str(k) for k, v in vocab.items()}
    names = np.array([inverse.get(int(i), str(int(i))) for i in uniq])
    return names, (tot / cnt[:, None]).astype(np.float32), cnt


def _mapping_report(tok, m):
    """The tokenizer's gene-matching report for the input (when this rank computed no unit)."""
    from omicskern.tokenizers.cells_base import TokenizeReport

    rep = TokenizeReport()
    rep.n_genes = m.n_vars
    tok._match_genes(m, None, rep)
    return rep


def _result_from_record(rec: dict, out: Path, fmt: str) -> EmbedCellsResult:
    s = rec.get("summary", {})
    return EmbedCellsResult(out, fmt, rec.get("job_key", ""), **{k: s[k] for k in s if k in EmbedCellsResult.__dataclass_fields__})


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="cells", unit_scale=True, desc="embedding", file=sys.stderr, smoothing=0.1)


def _write_obsm(input: Path, store, key: str, n: int, dim: int, overwrite: bool) -> None:
    """``/obsm/<key>`` into a copy of the input, renamed over it (atomic: old or new file)."""
    import h5py

    with h5py.File(input, "r") as f:
        if "obsm" in f and key in f["obsm"] and not overwrite:
            raise JobMismatchError(f"{input} already has /obsm/{key}; use overwrite=True to replace it "
                                   "(or another obsm_key)")

    def write(tmp: Path) -> None:
        shutil.copyfile(input, tmp)
        with h5py.File(tmp, "r+") as f:
            obsm = f.require_group("obsm")
            if "encoding-type" not in obsm.attrs:
                obsm.attrs["encoding-type"] = "dict"
                obsm.attrs["encoding-version"] = "0.1.0"
            if key in obsm:
                del obsm[key]
            ds = obsm.create_dataset(key, shape=(n, dim), dtype="float32", chunks=(min(n, 4096) or 1, dim or 1))
            ds.attrs["encoding-type"] = "array"
            ds.attrs["encoding-version"] = "0.2.0"
            for a, block in store.iter_rows(65536):
                ds[a:a + len(block)] = block

    atomic_write(input, write)
