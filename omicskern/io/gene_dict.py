"""Gene dictionaries of the cell tokenizers: reading, writing and building them.

* Geneformer's pickles (Ensembl ID -> token id, Ensembl ID -> nonzero median), JSON or two-column
  TSV/CSV (:func:`load_token_dictionary`, :func:`load_gene_medians`, :func:`load_gene_dict`);
  scGPT's vocab JSON (symbol -> id, :func:`load_scgpt_vocab`); a symbol -> Ensembl table
  (:func:`load_symbol_table`); :func:`save_gene_dict` writes pickle / JSON / TSV.
* :func:`build_gene_dictionary` builds a token dictionary and exact nonzero medians from your own
  h5ad corpus, streamed (memory bounded whatever the corpus size).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from omicskern.errors import InvalidFileError, MissingColumnError
from omicskern.io.cells import open_cells

__all__ = ["load_gene_dict", "load_token_dictionary", "load_gene_medians", "load_scgpt_vocab", "load_symbol_table",
           "save_gene_dict", "build_gene_dictionary"]


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
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a directory, not a gene dictionary file")
        suffix = path.suffix.lower()
        if suffix in (".pkl", ".pickle"):
            with open(path, "rb") as f:
                try:
                    d = pickle.load(f)
                except Exception as e:  # UnpicklingError, EOFError, ImportError, AttributeError...
                    why = "the file is empty" if path.stat().st_size == 0 else f"{type(e).__name__}: {e}"
                    raise InvalidFileError(f"{path}: not a readable pickled gene dictionary ({why})",
                                           path=path) from None
            if not isinstance(d, dict):
                raise InvalidFileError(f"{path}: expected a pickled dict, got {type(d).__name__}", path=path)
        elif suffix == ".json":
            try:
                with open(path, encoding="utf-8") as f:
                    d = json.load(f)
            except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                raise InvalidFileError(f"{path}: not a readable JSON gene dictionary ({e})", path=path) from None
            if not isinstance(d, dict):
                raise InvalidFileError(f"{path}: expected a JSON object (gene -> value), got "
                                       f"{type(d).__name__}", path=path)
        elif suffix in (".tsv", ".txt", ".csv", ".tab"):
            sep = "," if suffix == ".csv" else "\t"
            d = {}
            try:
                with open(path, encoding="utf-8", errors="strict") as f:
                    for lineno, line in enumerate(f, 1):
                        line = line.rstrip("\n\r")
                        if not line:
                            continue
                        parts = line.split(sep)
                        if len(parts) < 2:
                            raise InvalidFileError(f"{path}, line {lineno}: expected 2 columns separated by {sep!r}",
                                                   path=path)
                        key, val = parts[0].strip(), parts[1].strip()
                        if lineno == 1 and value_type in (int, float):
                            try:
                                value_type(val)
                            except ValueError:
                                continue  # header
                        d[key] = val
            except UnicodeDecodeError:
                raise InvalidFileError(f"{path}: not a text gene dictionary (bytes that are not UTF-8 text)",
                                       path=path) from None
        else:
            raise ValueError(f"{path}: unknown gene dictionary format {suffix!r} (use .pkl, .json, .tsv or .csv)")
    if value_type is not None:
        where = "" if isinstance(source, dict) else f"{source}: "
        try:
            d = {str(k): value_type(v) for k, v in d.items()}
        except (TypeError, ValueError) as e:
            err = InvalidFileError if where else ValueError
            kw = {"path": str(source)} if where else {}
            raise err(f"{where}gene dictionary values must be {value_type.__name__}: {e}", **kw) from None
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
