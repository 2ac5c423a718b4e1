"""Cell matrices for the cell tokenizers: cells x genes counts read in CSR row chunks.

:func:`open_cells` wraps an AnnData (in memory or backed), an ``.h5ad`` path (read backed, X
streamed from HDF5 in row chunks: memory is bounded by the chunk size), a scipy CSR/CSC matrix or a
dense numpy array as a :class:`CellMatrix`, whose :meth:`CellMatrix.chunks` yields CSR row blocks
(:class:`Chunk`) without copying in-memory CSR data. :meth:`CellMatrix.gene_keys` and
:meth:`CellMatrix.obs_column` read var/obs columns with errors that list the columns there are;
:func:`cell_label` / :func:`rethrow_counts_error` name the cell and gene of a bad count.

Example:
    >>> from omicskern.io.cells import open_cells
    >>> with open_cells("cells.h5ad") as m:
    ...     for ch in m.chunks(8192):
    ...         ch.start, ch.stop, ch.indptr, ch.indices, ch.data
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from omicskern.errors import InvalidCountsError, InvalidFileError, MissingColumnError

__all__ = ["CellMatrix", "Chunk", "open_cells", "open_cells_csc", "h5ad_encoding", "check_h5ad", "cell_label", "gene_label",
           "rethrow_counts_error"]


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


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _short(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    msg = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."


def check_h5ad(path: str | os.PathLike) -> None:
    """Cheap checks that ``path`` can be an ``.h5ad`` file, with errors that name it:
    ``FileNotFoundError`` (missing), ``IsADirectoryError`` (a folder), ``PermissionError``
    (unreadable), :class:`~omicskern.errors.InvalidFileError` (empty, not HDF5, truncated, or
    HDF5 without an ``X``). Damage deeper inside is caught when :func:`open_cells` reads it."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, not an .h5ad file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_HDF5_SIGNATURE))
    except PermissionError:
        raise PermissionError(f"{path}: cannot read the .h5ad file (permission denied)") from None
    except OSError as e:
        raise InvalidFileError(f"{path}: cannot read the .h5ad file ({e.strerror or e})", path=path) from None
    if not head:
        raise InvalidFileError(f"{path}: the .h5ad file is empty (0 bytes)", path=path)
    if head != _HDF5_SIGNATURE:
        # HDF5 also allows the signature at 512, 1024, ... (a user block): leave those to h5py
        size = os.path.getsize(path)
        if size < 512 or not _signature_later(path, size):
            raise InvalidFileError(f"{path}: not an .h5ad file (no HDF5 signature; "
                                   f"{size:,} bytes of something else)", path=path)
    import h5py

    try:  # cheap: HDF5 checks the superblock and the file's end (a truncated file fails here)
        with h5py.File(path, "r") as f:
            has_x = "X" in f
    except Exception as e:
        msg = _short(e)
        if "truncated file" in msg:
            import re

            m = re.search(r"stored_eof\s*=\s*(\d+)", msg)
            whole = f" of {int(m.group(1)):,}" if m else ""
            msg = f"truncated: {os.path.getsize(path):,}{whole} bytes there"
        raise InvalidFileError(f"{path}: not a readable .h5ad file ({msg})", path=path) from None
    if not has_x:
        raise InvalidFileError(f"{path}: not an .h5ad file (an HDF5 file without an X matrix)", path=path)


def _signature_later(path: str, size: int) -> bool:
    with open(path, "rb") as fh:
        at = 512
        while at + len(_HDF5_SIGNATURE) <= size:
            fh.seek(at)
            if fh.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
            at *= 2
    return False


def _guarded(reader, path: str):
    """Chunk reads that fail inside HDF5 (a damaged block) raise InvalidFileError naming the file."""
    def read(s, e):
        try:
            return reader(s, e)
        except (OSError, KeyError, RuntimeError) as err:
            raise InvalidFileError(f"{path}: not a readable .h5ad file (damaged data in rows {s}:{e}: "
                                   f"{_short(err)})", path=path) from None
    return read


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
        check_h5ad(path)
        try:
            ad = anndata.read_h5ad(path, backed="r")
        except Exception as e:  # h5py / anndata raise OSError, KeyError, TypeError... on damaged files
            raise InvalidFileError(f"{path}: not a readable .h5ad file (AnnData could not read it: "
                                   f"{_short(e)})", path=path) from None
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            ad.file.close()
            raise InvalidFileError(f"{path}: not a readable .h5ad file ({_short(e)})", path=path) from None
        try:
            grp = f["X"] if layer is None else f["layers"][layer]
        except KeyError:
            f.close()
            ad.file.close()
            if layer is None:
                raise InvalidFileError(f"{path}: not a readable .h5ad file (it has no X matrix)", path=path) from None
            raise MissingColumnError(f"{path} has no layer {layer!r}") from None
        try:
            reader, shape = _h5_reader(grp)
        except ValueError as e:
            f.close()
            ad.file.close()
            raise InvalidFileError(f"{path}: {e}", path=path) from None
        except (OSError, KeyError, TypeError) as e:
            f.close()
            ad.file.close()
            raise InvalidFileError(f"{path}: not a readable .h5ad file (damaged X matrix: {_short(e)})",
                                   path=path) from None
        reader = _guarded(reader, path)

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
# CSC inputs: one bounded-memory pass to CSR row order

def h5ad_encoding(path: str | os.PathLike, layer: str | None = None) -> str:
    """``encoding-type`` of the h5ad's ``X`` (or ``layers/<layer>``): ``csr_matrix``,
    ``csc_matrix`` or ``array`` (dense)."""
    import h5py

    with h5py.File(path, "r") as f:
        node = f["X"] if layer is None else f["layers"][layer]
        if isinstance(node, h5py.Dataset):
            return "array"
        enc = node.attrs.get("encoding-type", "")
        return enc.decode() if isinstance(enc, bytes) else str(enc)


def open_cells_csc(path: str | os.PathLike, folder: str | os.PathLike, *, layer: str | None = None,
                   block_nnz: int = 1 << 24) -> CellMatrix:
    """An ``.h5ad`` whose matrix is CSC (genes as the sparse rows), as a row-streamable
    :class:`CellMatrix`: the matrix is rewritten once in CSR order into ``.npy`` files in
    ``folder`` (memory-mapped; two passes over the stored values, ``block_nnz`` of them at a time,
    so memory is bounded by the block and one counter per cell, not by the matrix). Within a row
    the columns come out in increasing order, as CSR readers expect."""
    import anndata
    import h5py

    path, folder = str(path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "r") as f:
        g = f["X"] if layer is None else f["layers"][layer]
        n_obs, n_vars = (int(x) for x in g.attrs["shape"])
        cptr = g["indptr"][:].astype(np.int64)
        ds_rows, ds_data = g["indices"], g["data"]
        nnz = int(cptr[-1])
        counts = np.zeros(n_obs, np.int64)
        for a in range(0, nnz, block_nnz):  # pass 1: values per cell
            counts += np.bincount(np.asarray(ds_rows[a:a + block_nnz], np.int64), minlength=n_obs)[:n_obs]
        indptr = np.zeros(n_obs + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        idx_dtype = np.int32 if n_vars < 2**31 else np.int64
        out_ix = np.lib.format.open_memmap(folder / "indices.npy", mode="w+", dtype=idx_dtype, shape=(nnz,))
        out_dt = np.lib.format.open_memmap(folder / "data.npy", mode="w+", dtype=ds_data.dtype, shape=(nnz,))
        fill = indptr[:-1].copy()
        # pass 2: whole columns per block, in column order, so each cell's entries land in column order
        c = 0
        while c < n_vars:
            e = int(np.searchsorted(cptr, cptr[c] + block_nnz, side="right")) - 1
            e = min(max(e, c + 1), n_vars)
            lo, hi = int(cptr[c]), int(cptr[e])
            rows = np.asarray(ds_rows[lo:hi], np.int64)
            cols = np.repeat(np.arange(c, e, dtype=np.int64), np.diff(cptr[c:e + 1]))
            vals = np.asarray(ds_data[lo:hi])
            order = np.argsort(rows, kind="stable")  # stable: columns stay increasing within a cell
            r = rows[order]
            first = np.r_[0, np.flatnonzero(np.diff(r)) + 1]
            rank = np.arange(len(r)) - np.repeat(first, np.diff(np.r_[first, len(r)]))
            dest = fill[r] + rank
            out_ix[dest] = cols[order]
            out_dt[dest] = vals[order]
            np.add.at(fill, r[first], np.diff(np.r_[first, len(r)]))
            c = e
        out_ix.flush()
        out_dt.flush()
        del out_ix, out_dt
    ix = np.load(folder / "indices.npy", mmap_mode="r")
    dt = np.load(folder / "data.npy", mmap_mode="r")

    def read(s, e):
        return indptr[s:e + 1], ix, dt, 0

    ad = anndata.read_h5ad(path, backed="r")
    return CellMatrix(n_obs, n_vars, _guarded(read, path), obs=ad.obs, var=ad.var, obs_names=ad.obs_names,
                      var_names=ad.var_names, backed=True, closer=ad.file.close, description=path)
