"""Writers of a :class:`~omicskern.batch.Batch`: ``.npz`` (numpy), parquet (needs ``pyarrow``), a
Hugging Face ``datasets`` folder with ``input_ids`` and ``length`` columns as Geneformer's pipelines
read (needs ``datasets``). :meth:`Batch.save <omicskern.batch.Batch.save>` calls :func:`save_batch`.

On-disk layout (the cell tokenizers' files of earlier releases read and write the same):

- ``.npz``: ``input_ids`` [T], ``offsets`` [N + 1] (the batch's ``cu_seqlens``), ``length`` [N],
  ``obs_index`` [N] (the batch's ``source``), then when present ``values`` [T], ``soft_mask`` [T],
  ``token_spans`` [T, 2], ``obs_names`` [N] (the batch's ``names``, as str) and ``obs/<column>``.
  :func:`load_npz` also takes ``cu_seqlens`` / ``source`` / ``names`` keys.
- parquet / ``datasets``: one row per batch row: ``input_ids`` list<int32>, ``length`` int64, then
  when present ``values``, ``soft_mask``, ``token_spans`` (lists), ``obs_names`` and the obs columns.

Example:
    >>> from omicskern.io.writers import save_batch, load_npz
    >>> save_batch(batch, "cells.npz"), save_batch(batch, "cells.dataset")
    ('npz', 'dataset')
    >>> load_npz("cells.npz").cu_seqlens
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from omicskern.batch import Batch

__all__ = ["FORMATS", "infer_format", "save_batch", "save_npz", "load_npz", "to_arrow", "save_parquet",
           "save_dataset", "check_writable"]

FORMATS = ("npz", "parquet", "dataset")


def infer_format(path: str | os.PathLike) -> str:
    """``npz`` for ``.npz``, ``parquet`` for ``.parquet`` / ``.pq``, else ``dataset`` (a folder)."""
    s = str(path).lower()
    if s.endswith(".npz"):
        return "npz"
    if s.endswith(".parquet") or s.endswith(".pq"):
        return "parquet"
    return "dataset"


def save_batch(batch: "Batch", path: str | os.PathLike, fmt: str | None = None) -> str:
    """Writes ``batch`` by format: ``npz``, ``parquet`` or ``dataset`` (default: from the suffix of
    ``path``, :func:`infer_format`). Returns the format used."""
    fmt = fmt or infer_format(path)
    if fmt == "npz":
        save_npz(batch, path)
    elif fmt == "parquet":
        save_parquet(batch, path)
    elif fmt == "dataset":
        save_dataset(batch, path)
    else:
        raise ValueError(f"unknown output format {fmt!r} (use {', '.join(FORMATS)})")
    return fmt


# ---- npz ----------------------------------------------------------------------------------------

def save_npz(batch: "Batch", path: str | os.PathLike) -> None:
    """One uncompressed ``.npz`` (keys in the module docstring), written exactly at ``path`` (no
    ``.npz`` is appended to a path without it); :func:`load_npz` reads it back."""
    b = _numpy(batch)
    arrays = {"input_ids": b.input_ids, "offsets": b.cu_seqlens, "length": np.diff(b.cu_seqlens),
              "obs_index": b.source}
    for k in ("values", "soft_mask", "token_spans"):
        if getattr(b, k) is not None:
            arrays[k] = getattr(b, k)
    if b.names is not None:
        arrays["obs_names"] = np.asarray(b.names).astype(str)
    for k, v in b.obs.items():
        arrays[f"obs/{k}"] = _plain(v)
    # through a file object: np.savez given a path appends ".npz" to one without it, so the file
    # would not be where the caller asked ("x.out" -> "x.out.npz")
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: str | os.PathLike) -> "Batch":
    """A :class:`~omicskern.batch.Batch` from a file of :func:`save_npz` (or of the cell
    tokenizers' earlier ``save_npz``: same keys)."""
    from omicskern.batch import Batch

    with np.load(path, allow_pickle=False) as z:
        files = set(z.files)

        def get(*keys):
            for k in keys:
                if k in files:
                    return z[k]
            return None

        ids = get("input_ids")
        cu = get("cu_seqlens", "offsets")
        if ids is None or cu is None:
            raise KeyError(f"{path}: not a token batch file (needs 'input_ids' and 'cu_seqlens' or 'offsets'; "
                           f"has {', '.join(sorted(files)) or 'nothing'})")
        obs = {k[4:]: z[k] for k in z.files if k.startswith("obs/")}
        return Batch(ids, cu, values=get("values"), soft_mask=get("soft_mask"), token_spans=get("token_spans"),
                     source=get("source", "obs_index"), names=get("names", "obs_names"), obs=obs)


# ---- arrow / parquet / datasets -----------------------------------------------------------------

def to_arrow(batch: "Batch"):
    """A ``pyarrow.Table``, one row per batch row: ``input_ids`` large_list<int32>, ``length``
    int64 (+ ``values``, ``soft_mask``, ``token_spans``, ``obs_names``, obs columns). Built from the
    flat arrays without per-row Python."""
    pa = _require("pyarrow", "parquet / datasets output")
    b = _numpy(batch)
    offs = pa.array(b.cu_seqlens.astype(np.int64, copy=False))
    cols = {"input_ids": pa.LargeListArray.from_arrays(offs, pa.array(b.input_ids)),
            "length": pa.array(np.diff(b.cu_seqlens))}
    if b.values is not None:
        cols["values"] = pa.LargeListArray.from_arrays(offs, pa.array(b.values))
    if b.soft_mask is not None:
        cols["soft_mask"] = pa.LargeListArray.from_arrays(offs, pa.array(np.asarray(b.soft_mask, bool)))
    if b.token_spans is not None:
        spans = np.ascontiguousarray(b.token_spans, np.int64)
        pairs = pa.FixedSizeListArray.from_arrays(pa.array(spans.reshape(-1)), 2)
        cols["token_spans"] = pa.LargeListArray.from_arrays(offs, pairs)
    if b.names is not None:
        cols["obs_names"] = pa.array(np.asarray(b.names).astype(str))
    for k, v in b.obs.items():
        if k in cols:
            raise ValueError(f"obs column {k!r} clashes with a token column of the output; rename it")
        cols[k] = pa.array(_plain(v))
    return pa.table(cols)


def save_parquet(batch: "Batch", path: str | os.PathLike) -> None:
    """One row per batch row (needs ``pyarrow``)."""
    pq = _require("pyarrow.parquet", "parquet output")
    pq.write_table(to_arrow(batch), str(path))


def save_dataset(batch: "Batch", path: str | os.PathLike) -> None:
    """A Hugging Face ``datasets`` folder (``Dataset.save_to_disk``) with ``input_ids`` and
    ``length`` columns (+ ``values`` and obs columns), as Geneformer's pipelines read."""
    datasets = _require("datasets", "Hugging Face dataset output")
    pa = _require("pyarrow", "Hugging Face dataset output")
    table = to_arrow(batch)
    # datasets' default Sequence feature is a list<int>, not a large_list
    fields = []
    for f in table.schema:
        t = pa.list_(f.type.value_type) if pa.types.is_large_list(f.type) else f.type
        fields.append(pa.field(f.name, t))
    table = table.cast(pa.schema(fields))
    datasets.Dataset(table).save_to_disk(str(path))


# ---- output location ----------------------------------------------------------------------------

def check_writable(path: str | os.PathLike, *, what: str = "output") -> None:
    """Raises before any work when an output cannot be created at ``path`` (a file, or a folder of
    shards / a ``datasets`` folder): the folder that would hold it, or ``path`` itself when it is
    an existing folder, must be a writable folder. The test creates and removes a temporary file
    there (``os.access`` says yes to root on a read-only folder and knows nothing of read-only
    mounts). Missing parent folders are fine when the nearest existing one is writable (they are
    created). Raises :class:`~omicskern.errors.OutputNotWritableError` (a ``PermissionError``) or
    ``NotADirectoryError``, naming ``path`` and the folder."""
    import tempfile

    from omicskern.errors import OutputNotWritableError

    path = os.path.abspath(os.fspath(path))
    probe = path if os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise NotADirectoryError(f"cannot write the {what} {path}: {probe} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".omicskern-write-test-", dir=probe)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise OutputNotWritableError(f"cannot write the {what} {path}: folder {probe} is not writable ({why})",
                                     path=path) from None
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass


# ---- helpers ------------------------------------------------------------------------------------

def _numpy(batch: "Batch") -> "Batch":
    from omicskern.batch import Batch

    if not isinstance(batch, Batch):
        raise TypeError(f"expected an omicskern.batch.Batch, got {type(batch).__name__}")
    return batch.to_numpy()


def _plain(v) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype == object or a.dtype.kind == "U":
        return a.astype(str)
    return a


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = module.split(".")[0]
        raise ImportError(f"{what} needs the optional package '{pkg}': pip install {pkg}") from e
