"""Single-cell inputs for the cell tokenizers: count matrices in row chunks, gene dictionaries.

* :func:`open_cells` wraps an AnnData (in memory or backed), an ``.h5ad`` path (read backed, X
  streamed from HDF5 in row chunks: memory is bounded by the chunk size), a scipy CSR/CSC matrix
  or a dense numpy array as a :class:`CellMatrix` whose :meth:`CellMatrix.chunks` yields CSR row
  blocks without copying in-memory CSR data.
* Gene dictionaries: Geneformer's pickles (Ensembl ID -> token id, Ensembl ID -> nonzero median),
  JSON or two-column TSV/CSV; scGPT's vocab JSON (symbol -> id); a symbol -> Ensembl table.
* :func:`build_gene_dictionary` builds a token dictionary and exact nonzero medians from your own
  h5ad corpus, streamed.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from omicskern.errors import MissingColumnError, OmicskernError


class NoMatchingGenesError(OmicskernError, ValueError):
    """No gene of the input is in the tokenizer's dictionary / vocabulary."""


# ------------------------------------------------------------------------------------------------
# gene dictionaries

def load_gene_dict(source, *, value_type=None) -> dict:
    """Loads a mapping gene -> value from a dict, a pickle (``.pkl``/``.pickle``, Geneformer's
    format), JSON, or a two-column TSV/CSV (``.tsv``/``.txt``/``.csv``; a first line whose second
    field does not parse as ``value_type`` is a header). ``value_type`` (``int``/``float``/``str``)
    converts the values."""
    if isinstance(source, dict):
        d = dict(source)
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"gene dictionary file not found: {path}")
        suffix = path.suffix.lower()
        if suffix in (".pkl", ".pickle"):
            with open(path, "rb") as f:
                d = pickle.load(f)
            if not isinstance(d, dict):
                raise ValueError(f"{path}: expected a pickled dict, got {type(d).__name__}")
        elif suffix == ".json":
            with open(path) as f:
                d = json.load(f)
            if not isinstance(d, dict):
                raise ValueError(f"{path}: expected a JSON object (gene -> value)")
        elif suffix in (".tsv", ".txt", ".csv", ".tab"):
            sep = "," if suffix == ".csv" else "\t"
            d = {}
            with open(path) as f:
                for lineno, line in enumerate(f, 1):
                    line = line.rstrip("\n\r")
                    if not line:
                        continue
                    parts = line.split(sep)
                    if len(parts) < 2:
                        raise ValueError(f"{path}, line {lineno}: expected 2 columns separated by {sep!r}")
                    key, val = parts[0].strip(), parts[1].strip()
                    if lineno == 1 and value_type in (int, float):
                        try:
                            value_type(val)
                        except ValueError:
                            continue  # header
                    d[key] = val
        else:
            raise ValueError(f"{path}: unknown gene dictionary format {suffix!r} (use .pkl, .json, .tsv or .csv)")
    if value_type is not None:
        try:
            d = {str(k): value_type(v) for k, v in d.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"gene dictionary values must be {value_type.__name__}: {e}") from None
    return d


def load_token_dictionary(source) -> dict[str, int]:
    """Geneformer token dictionary: Ensembl ID (and specials like ``<pad>``, ``<cls>``) -> id."""
    return load_gene_dict(source, value_type=int)


def load_gene_medians(source) -> dict[str, float]:
    """Geneformer gene median dictionary: Ensembl ID -> nonzero median of normalised counts."""
    return load_gene_dict(source, value_type=float)


def load_scgpt_vocab(source) -> dict[str, int]:
    """scGPT's ``vocab.json``: gene symbol (and ``<pad>``, ``<cls>``, ``<eoc>``) -> id."""
    return load_gene_dict(source, value_type=int)


def load_symbol_table(source, *, symbol_column: str = "symbol", id_column: str = "ensembl_id") -> dict[str, str]:
    """Symbol -> Ensembl ID from a dict or a TSV/CSV with a header naming ``symbol_column`` and
    ``id_column`` (e.g. GENCODE's ``ensembl_id<TAB>symbol``). A symbol with several IDs maps to
    the first one listed."""
    if isinstance(source, dict):
        return {str(k): str(v) for k, v in source.items()}
    path = Path(source)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    with open(path) as f:
        header = f.readline().rstrip("\n\r").split(sep)
        for col in (symbol_column, id_column):
            if col not in header:
                raise MissingColumnError(f"{path} has no column {col!r} (columns: {', '.join(header)})")
        si, ii = header.index(symbol_column), header.index(id_column)
        out: dict[str, str] = {}
        for line in f:
            parts = line.rstrip("\n\r").split(sep)
            if len(parts) <= max(si, ii):
                continue
            out.setdefault(parts[si], parts[ii])
    return out


# ------------------------------------------------------------------------------------------------
# count matrices

@dataclass
class Chunk:
    """CSR rows ``start:stop`` of the input: ``indptr`` [n + 1] (values offset by ``base``),
    ``indices``/``data`` [nnz]. int32/int64 indices, float32/float64/int32/int64 data."""

    start: int
    stop: int
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    base: int = 0


_DATA_DTYPES = (np.float32, np.float64, np.int32, np.int64)


def _fix_dtypes(indptr, indices, data, base):
    """Casts unsupported dtypes (e.g. uint16 counts, int16 indices) for the C++ core: copies
    only this chunk's stored values."""
    if indptr.dtype not in (np.int32, np.int64):
        indptr = indptr.astype(np.int64)
    ok_idx = indices.dtype in (np.int32, np.int64)
    ok_data = data.dtype in _DATA_DTYPES
    if ok_idx and ok_data:
        return np.ascontiguousarray(indptr), indices, data, base
    lo, hi = int(indptr[0]) - base, int(indptr[-1]) - base
    indices = indices[lo:hi] if ok_idx else indices[lo:hi].astype(np.int64)
    if not ok_data:
        if data.dtype.kind in "iub":
            data = data[lo:hi].astype(np.int64)
        else:
            data = data[lo:hi].astype(np.float64)
    else:
        data = data[lo:hi]
    return np.ascontiguousarray(indptr), np.ascontiguousarray(indices), np.ascontiguousarray(data), int(indptr[0])


class CellMatrix:
    """Cells x genes counts read in row chunks. ``obs``/``var`` are pandas DataFrames or None."""

    def __init__(self, n_obs: int, n_vars: int, reader, *, obs=None, var=None, obs_names=None, var_names=None,
                 backed: bool = False, closer=None, description: str = "matrix"):
        self.n_obs = int(n_obs)
        self.n_vars = int(n_vars)
        self._reader = reader
        self.obs = obs
        self.var = var
        self.obs_names = obs_names
        self.var_names = var_names
        self.backed = backed
        self._closer = closer
        self.description = description

    def chunks(self, chunk_size: int, start: int = 0, stop: int | None = None) -> Iterator[Chunk]:
        stop = self.n_obs if stop is None else min(stop, self.n_obs)
        chunk_size = max(1, int(chunk_size))
        for s in range(start, stop, chunk_size):
            e = min(stop, s + chunk_size)
            ip, ix, dt, base = self._reader(s, e)
            ip, ix, dt, base = _fix_dtypes(ip, ix, dt, base)
            yield Chunk(s, e, ip, ix, dt, base)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- column helpers ------------------------------------------------------------------------
    def gene_keys(self, column: str | None, *, what: str = "gene", gene_ids=None) -> np.ndarray:
        """The gene key of every column as an array of str: ``gene_ids`` when given (one per
        column), else the var column ``column`` (``None`` or ``"index"``: var_names)."""
        if gene_ids is not None:
            keys = np.asarray(gene_ids).astype(str)
            if len(keys) != self.n_vars:
                raise ValueError(f"gene_ids has {len(keys)} entries but the input has {self.n_vars} genes (columns)")
            return keys
        if column is None or column == "index":
            if self.var_names is None:
                raise ValueError(f"the input has no gene names: pass gene_ids= (one per column, {self.n_vars})")
            return np.asarray(self.var_names).astype(str)
        if self.var is None or column not in self.var.columns:
            cols = [] if self.var is None else list(map(str, self.var.columns))
            raise MissingColumnError(
                f"adata.var has no column {column!r} (columns: {', '.join(cols) if cols else 'none'}); "
                f"name the {what} column with gene_column=, or gene_column=None for var_names")
        v = self.var[column]
        return np.asarray(v.astype(object).where(v.notna(), "")).astype(str)

    def obs_column(self, column: str, *, required: bool) -> np.ndarray | None:
        if self.obs is None or column not in self.obs.columns:
            if not required:
                return None
            cols = [] if self.obs is None else list(map(str, self.obs.columns))
            raise MissingColumnError(
                f"adata.obs has no column {column!r} (columns: {', '.join(cols) if cols else 'none'})")
        return np.asarray(self.obs[column])


def _csr_reader(m):
    indptr, indices, data = m.indptr, m.indices, m.data

    def read(s, e):
        return indptr[s:e + 1], indices, data, 0
    return read


def _dense_reader(a):
    def read(s, e):
        import scipy.sparse as sp

        blk = np.asarray(a[s:e])
        if blk.dtype.kind not in "fiub" or blk.dtype.kind == "c":
            raise TypeError(f"counts of dtype {blk.dtype} are not supported (expected integers or floats)")
        if blk.dtype.kind == "f" and blk.dtype.itemsize < 4:
            blk = blk.astype(np.float32)  # float16: exact in float32
        elif blk.dtype.kind == "b":
            blk = blk.astype(np.int32)
        blk = sp.csr_matrix(blk)
        return blk.indptr, blk.indices, blk.data, 0
    return read


def _h5_reader(group):
    """Rows of an HDF5 CSR group (``indptr``/``indices``/``data``) or dense dataset, read per chunk."""
    import h5py

    if isinstance(group, h5py.Dataset):
        return _dense_reader(group), tuple(group.shape)
    enc = group.attrs.get("encoding-type", "")
    if isinstance(enc, bytes):
        enc = enc.decode()
    shape = tuple(int(x) for x in group.attrs["shape"])
    if enc == "csc_matrix":
        raise ValueError("the h5ad stores X as CSC (genes as rows of the sparse layout): rows cannot be "
                         "streamed. Convert it once (adata.X = adata.X.tocsr(); adata.write_h5ad(...)) "
                         "or load it in memory.")
    if enc != "csr_matrix":
        raise ValueError(f"unsupported h5ad matrix encoding {enc!r}")
    indptr = group["indptr"][:]  # n_obs + 1 integers: small next to the data
    ds_indices, ds_data = group["indices"], group["data"]

    def read(s, e):
        ip = indptr[s:e + 1]
        lo, hi = int(ip[0]), int(ip[-1])
        return ip, ds_indices[lo:hi], ds_data[lo:hi], lo
    return read, shape


def open_cells(data, *, layer: str | None = None, gene_ids: Sequence[str] | None = None,
               obs=None, var=None) -> CellMatrix:
    """Wraps any supported input as a :class:`CellMatrix` (cells as rows).

    ``data``: ``anndata.AnnData`` (in memory or backed), a path to an ``.h5ad`` file (opened
    backed; X is streamed from HDF5), a scipy sparse matrix (CSR used in place; CSC converted
    once) or a dense 2-D numpy array. ``layer`` reads ``adata.layers[layer]`` instead of X.
    ``gene_ids`` [n_genes] names the columns of a plain matrix; ``obs``/``var`` (DataFrames) can
    go with it.
    """
    import scipy.sparse as sp

    if isinstance(data, (str, os.PathLike)):
        import anndata
        import h5py

        path = str(data)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
        ad = anndata.read_h5ad(path, backed="r")
        f = h5py.File(path, "r")
        try:
            grp = f["X"] if layer is None else f["layers"][layer]
        except KeyError:
            f.close()
            ad.file.close()
            raise MissingColumnError(f"{path} has no layer {layer!r}") from None
        reader, shape = _h5_reader(grp)

        def close():
            f.close()
            ad.file.close()
        return CellMatrix(shape[0], shape[1], reader, obs=ad.obs, var=ad.var, obs_names=ad.obs_names,
                          var_names=ad.var_names, backed=True, closer=close, description=path)

    if type(data).__name__ == "AnnData" or hasattr(data, "obs") and hasattr(data, "var") and hasattr(data, "X"):
        ad = data
        if getattr(ad, "isbacked", False) and not getattr(ad, "is_view", False) and layer is None:
            import h5py

            f = h5py.File(str(ad.filename), "r")
            reader, shape = _h5_reader(f["X"])
            return CellMatrix(shape[0], shape[1], reader, obs=ad.obs, var=ad.var, obs_names=ad.obs_names,
                              var_names=ad.var_names, backed=True, closer=f.close, description=str(ad.filename))
        if layer is not None:
            if layer not in ad.layers:
                raise MissingColumnError(
                    f"adata.layers has no layer {layer!r} (layers: {', '.join(ad.layers.keys()) or 'none'})")
            X = ad.layers[layer]
        else:
            X = ad.X
        if X is None:
            raise ValueError("adata.X is empty (None)")
        m = open_cells(X)
        m.obs, m.var, m.obs_names, m.var_names = ad.obs, ad.var, ad.obs_names, ad.var_names
        return m

    if sp.issparse(data):
        if data.ndim != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {data.shape}")
        if data.format != "csr":
            data = data.tocsr()  # CSC and others: one conversion (a copy of the matrix)
        m = CellMatrix(data.shape[0], data.shape[1], _csr_reader(data), description="csr matrix")
    elif hasattr(data, "shape") and hasattr(data, "__getitem__"):
        arr = data
        if len(arr.shape) != 2:
            raise ValueError(f"expected a 2-D cells x genes array, got shape {tuple(arr.shape)}")
        m = CellMatrix(arr.shape[0], arr.shape[1], _dense_reader(arr), description="dense array")
    else:
        raise TypeError(f"cannot read cells from {type(data).__name__}: pass an AnnData, an .h5ad path, "
                        "a scipy sparse matrix or a 2-D numpy array")
    if gene_ids is not None:
        gene_ids = np.asarray(gene_ids).astype(str)
        if len(gene_ids) != m.n_vars:
            raise ValueError(f"gene_ids has {len(gene_ids)} entries but the matrix has {m.n_vars} columns (genes)")
        m.var_names = gene_ids
    if obs is not None:
        if len(obs) != m.n_obs:
            raise ValueError(f"obs has {len(obs)} rows but the matrix has {m.n_obs} rows (cells)")
        m.obs = obs
        m.obs_names = getattr(obs, "index", None)
    if var is not None:
        if len(var) != m.n_vars:
            raise ValueError(f"var has {len(var)} rows but the matrix has {m.n_vars} columns (genes)")
        m.var = var
        if m.var_names is None:
            m.var_names = getattr(var, "index", None)
    return m


def cell_label(m: CellMatrix, row: int) -> str:
    """``cell 17 ('AAACCTG-1')`` for error messages."""
    if m.obs_names is not None and 0 <= row < len(m.obs_names):
        return f"cell {row} ({str(m.obs_names[row])!r})"
    return f"cell {row}"


def gene_label(m: CellMatrix, col: int) -> str:
    if m.var_names is not None and 0 <= col < len(m.var_names):
        return f"column {col} ({str(m.var_names[col])!r})"
    return f"column {col}"


def rethrow_counts_error(e, m: CellMatrix, chunk: Chunk, rows: np.ndarray | None):
    """Re-raises a C++ InvalidCountsError with the input row and names."""
    from omicskern.errors import InvalidCountsError

    sel = int(getattr(e, "row", -1))
    local = int(rows[sel]) if rows is not None and 0 <= sel < len(rows) else sel
    row = chunk.start + local
    col = int(getattr(e, "column", -1))
    msg = str(e)
    # C++ says "cell <sel>, column <c>: what"; rebuild the location with names
    what = msg.split(": ", 1)[1] if ": " in msg else msg
    where = cell_label(m, row) + (", " + gene_label(m, col) if col >= 0 and e.kind != "bad_column" else "")
    err = InvalidCountsError(f"{where}: {what}")
    err.row, err.column, err.value, err.kind = row, col, getattr(e, "value", None), getattr(e, "kind", None)
    raise err from None


# ------------------------------------------------------------------------------------------------
# building a dictionary from a corpus

def build_gene_dictionary(paths, *, gene_column: str | None = "ensembl_id", total_counts_column: str = "n_counts",
                          target_sum: float = 10_000.0, special_tokens: Sequence[str] = ("<pad>", "<mask>", "<cls>", "<eos>"),
                          chunk_size: int = 8192, memory_budget: int = 1 << 30, min_cells: int = 1
                          ) -> tuple[dict[str, int], dict[str, float]]:
    """Token dictionary and exact nonzero medians from your own h5ad corpus, streamed.

    For each gene: the median over all cells where it is nonzero of count / total * target_sum
    (total from ``total_counts_column`` when present, else the cell's sum over all genes), as
    Geneformer's gene median dictionary. Genes detected in fewer than ``min_cells`` cells are left
    out. Tokens: ``special_tokens`` first (0, 1, ...), then genes in order of first appearance.
    Exact medians need each gene's values at once: genes are processed in groups whose values fit
    ``memory_budget`` bytes, one pass over the files per group (one pass in total for moderate
    corpora), so memory stays bounded whatever the corpus size.

    Example:
        >>> tokens, medians = build_gene_dictionary(["a.h5ad", "b.h5ad"])
        >>> tok = RankValueTokenizer(tokens, medians, preset="V2")
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    # pass 0: gene keys and per-gene nonzero cell counts, per-cell totals
    gene_index: dict[str, int] = {}
    file_cols: list[np.ndarray] = []
    file_totals: list[np.ndarray] = []
    nnz_per_gene = np.zeros(0, np.int64)
    for path in paths:
        with open_cells(path) as m:
            keys = m.gene_keys(gene_column)
            cols = np.empty(len(keys), np.int64)
            for j, k in enumerate(keys):
                if not k:
                    cols[j] = -1
                    continue
                cols[j] = gene_index.setdefault(k, len(gene_index))
            file_cols.append(cols)
            if len(nnz_per_gene) < len(gene_index):
                nnz_per_gene = np.concatenate([nnz_per_gene, np.zeros(len(gene_index) - len(nnz_per_gene), np.int64)])
            col_tot = m.obs_column(total_counts_column, required=False) if total_counts_column else None
            totals = np.empty(m.n_obs, np.float64)
            for ch in m.chunks(chunk_size):
                ip = ch.indptr.astype(np.int64) - ch.base
                seg = slice(int(ip[0]), int(ip[-1]))
                data = np.asarray(ch.data[seg], np.float64)
                ix = np.asarray(ch.indices[seg], np.int64)
                if (data < 0).any() or not np.isfinite(data).all():
                    raise ValueError(f"{path}: negative or non-finite counts in rows {ch.start}:{ch.stop}")
                rows = np.repeat(np.arange(ch.stop - ch.start), np.diff(ip))
                totals[ch.start:ch.stop] = np.bincount(rows, weights=data, minlength=ch.stop - ch.start)
                g = cols[ix[data != 0]]
                g = g[g >= 0]
                nnz_per_gene += np.bincount(g, minlength=len(nnz_per_gene))
            if col_tot is not None:
                totals = np.asarray(col_tot, np.float64)
            file_totals.append(totals)
    n_genes = len(gene_index)
    keys_by_id = np.empty(n_genes, object)
    for k, i in gene_index.items():
        keys_by_id[i] = k
    medians = np.full(n_genes, np.nan)
    # groups of genes whose nonzero values fit the budget (8 bytes each)
    budget = max(1, memory_budget // 8)
    group_of = np.empty(n_genes, np.int64)
    g_id, acc = 0, 0
    for gi in range(n_genes):
        if acc > 0 and acc + nnz_per_gene[gi] > budget:
            g_id, acc = g_id + 1, 0
        group_of[gi] = g_id
        acc += nnz_per_gene[gi]
    for grp in range(g_id + 1 if n_genes else 0):
        members = np.flatnonzero(group_of == grp)
        local = np.full(n_genes, -1, np.int64)
        local[members] = np.arange(len(members))
        sizes = nnz_per_gene[members]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        buf = np.empty(int(starts[-1]), np.float64)
        fill = starts[:-1].copy()
        for path, cols, totals in zip(paths, file_cols, file_totals):
            with open_cells(path) as m:
                for ch in m.chunks(chunk_size):
                    ip = ch.indptr.astype(np.int64) - ch.base
                    seg = slice(int(ip[0]), int(ip[-1]))
                    data = np.asarray(ch.data[seg], np.float64)
                    ix = np.asarray(ch.indices[seg], np.int64)
                    rows = np.repeat(np.arange(ch.start, ch.stop), np.diff(ip))
                    gl = local[np.where(cols[ix] >= 0, cols[ix], 0)]
                    ok = (data != 0) & (cols[ix] >= 0) & (gl >= 0)
                    if not ok.any():
                        continue
                    gl, vals = gl[ok], data[ok] / totals[rows[ok]] * target_sum
                    order = np.argsort(gl, kind="stable")
                    gl, vals = gl[order], vals[order]
                    uniq, first, counts = np.unique(gl, return_index=True, return_counts=True)
                    rank = np.arange(len(gl)) - np.repeat(first, counts)
                    buf[fill[gl] + rank] = vals
                    fill[uniq] += counts
        for j, gi in enumerate(members):
            if sizes[j] >= max(1, min_cells):
                medians[gi] = float(np.median(buf[starts[j]:starts[j + 1]]))
        del buf
    token_dict = {tok: i for i, tok in enumerate(special_tokens)}
    median_dict: dict[str, float] = {}
    for gi in range(n_genes):
        if np.isfinite(medians[gi]) and medians[gi] > 0:
            key = str(keys_by_id[gi])
            token_dict[key] = len(token_dict)
            median_dict[key] = float(medians[gi])
    return token_dict, median_dict


def save_gene_dict(d: dict, path: str | os.PathLike) -> None:
    """Writes a gene dictionary as pickle (Geneformer), JSON or TSV, by suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        with open(path, "wb") as f:
            pickle.dump(dict(d), f)
    elif suffix == ".json":
        with open(path, "w") as f:
            json.dump(d, f, indent=1)
    else:
        with open(path, "w") as f:
            for k, v in d.items():
                f.write(f"{k}\t{v!r}\n" if isinstance(v, float) else f"{k}\t{v}\n")
