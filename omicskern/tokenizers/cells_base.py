"""What the single-cell tokenizers share: :class:`CellTokenizer` (the chunk loop over a cell
matrix, the cell filter, carried obs columns, the integer-count check, the report and the progress
bar) and :class:`TokenizeReport` (what a run did).

A concrete tokenizer (:class:`~omicskern.tokenizers.RankValueTokenizer`,
:class:`~omicskern.tokenizers.BinnedValueTokenizer`) implements three steps:

- ``_match_genes(m, gene_ids, report)``: the per-column table the C++ core takes (gene slot or
  token, ``-1`` for columns left out), filling the gene counts of ``report``; raises
  :class:`~omicskern.errors.NoMatchingGenesError` when no column matches;
- ``_begin(m, table, report, **options)``: per-run state (totals, random streams...);
- ``_encode_chunk(C, m, chunk, rows, sel_rows, state)``: one C++ call over a chunk, returning a
  dict with ``ids``, ``offsets``, ``values`` (or no such key), ``out_rows`` (positions in
  ``sel_rows`` of the output cells), ``n_detected`` and ``non_integer`` (per selected cell).

Every chunk comes out as an :class:`omicskern.batch.Batch`: ``input_ids`` int32, ``cu_seqlens``
int64, ``values`` (bins, binned value only), ``source`` = the input (obs) row of each cell,
``names`` = its obs name, ``obs`` = the carried obs columns, ``report`` = the run's report.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from omicskern._native import load_C
from omicskern.batch import Batch
from omicskern.errors import InvalidCountsError
from omicskern.io.cells import (CellMatrix, Chunk, _fix_dtypes, cell_label, gene_label, open_cells,
                                rethrow_counts_error)
from omicskern.tokenizers.base import check_num_threads

__all__ = ["CellTokenizer", "TokenizeReport", "concat_reports", "INTEGER_CHECKS"]

INTEGER_CHECKS = ("warn", "error", "ignore")


@dataclass
class TokenizeReport:
    """What a tokenizer run did: cells in/out and why some were skipped, how genes matched."""

    method: str = ""
    n_cells: int = 0                 # rows in the input
    n_tokenized: int = 0             # rows in the output
    n_filtered: int = 0              # dropped by the filter column (e.g. filter_pass != 1)
    n_empty: int = 0                 # dropped: no nonzero gene of the dictionary / vocabulary
    n_genes: int = 0                 # columns in the input
    n_genes_matched: int = 0         # columns mapped to a token
    n_genes_missing: int = 0         # columns without a token (dropped)
    n_genes_excluded: int = 0        # columns in the vocabulary but left out by a gene subset
    n_duplicate_columns: int = 0     # matched columns sharing their gene with an earlier column (summed)
    n_symbol_mapped: int = 0         # columns whose key went through the symbol -> Ensembl table
    n_non_integer_cells: int = 0     # cells holding a non-integer float count
    total_counts_source: str = ""    # obs column name or "sum over all genes"
    filter_source: str = ""          # obs column used to filter, or "" when none
    missing_examples: list = field(default_factory=list)  # a few gene keys without a token

    def merge(self, other: "TokenizeReport") -> None:
        """Adds another chunk's cell counts (gene counts are per input, not per chunk)."""
        self.n_cells += other.n_cells
        self.n_tokenized += other.n_tokenized
        self.n_filtered += other.n_filtered
        self.n_empty += other.n_empty
        self.n_non_integer_cells += other.n_non_integer_cells

    def summary(self) -> str:
        lines = [
            f"{self.method}: {self.n_tokenized:,} of {self.n_cells:,} cells tokenized",
            f"  skipped: {self.n_filtered:,} by filter"
            + (f" ({self.filter_source})" if self.filter_source else "")
            + f", {self.n_empty:,} with no gene in the dictionary",
            f"  genes: {self.n_genes_matched:,} of {self.n_genes:,} matched, {self.n_genes_missing:,} missing"
            + (f", {self.n_genes_excluded:,} outside the gene subset" if self.n_genes_excluded else "")
            + (f", {self.n_duplicate_columns:,} duplicate columns summed" if self.n_duplicate_columns else "")
            + (f", {self.n_symbol_mapped:,} mapped through the symbol table" if self.n_symbol_mapped else ""),
        ]
        if self.total_counts_source:
            lines.append(f"  total counts: {self.total_counts_source}")
        if self.missing_examples:
            lines.append("  missing genes, e.g.: " + ", ".join(map(str, self.missing_examples)))
        if self.n_non_integer_cells:
            lines.append(f"  warning: {self.n_non_integer_cells:,} cells hold non-integer counts")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def concat_reports(reports: Iterable[TokenizeReport]) -> TokenizeReport:
    """One report for several runs: the first one's gene counts, every run's cell counts."""
    reports = list(reports)
    out = dataclasses.replace(reports[0]) if reports else TokenizeReport()
    for r in reports[1:]:
        out.merge(r)
    return out


class CellTokenizer:
    """Base of the single-cell tokenizers (see the module docstring for what subclasses add).

    Args (shared by both tokenizers):
        gene_column: var column holding the gene keys (``None``: var_names).
        filter_column: obs column; only cells where it equals 1/True are tokenized.
        obs_columns: obs columns carried into the output (``{"in": "out"}`` renames).
        integer_check: what a non-integer float count does: ``"warn"``, ``"error"``, ``"ignore"``.
            Negative, NaN and infinite counts are always errors.
        skip_empty: cells with no gene of the dictionary are left out; otherwise they give an
            empty (or specials-only) row.
        chunk_size: cells per C++ call (and per read from a backed h5ad).
        num_threads: C++ threads (``<= 0``: all cores).
    """

    #: whether a missing ``filter_column`` is an error (else the filter is skipped)
    filter_column_required: bool = True
    #: added to the error of ``integer_check="error"``
    _non_integer_error_hint: str = ""
    #: the warning of ``integer_check="warn"``: ``{n}`` cells, ``{first}`` the first one
    _non_integer_warning: str = "{n} cells hold non-integer values (first: {first})"

    #: the most tokens per cell (specials included), ``None`` for no limit
    max_length: int | None = None
    #: id of the padding token (``None`` when the vocabulary has none)
    pad_token_id: int | None = None

    def __init__(self, *, gene_column: str | None, filter_column: str | None, obs_columns: Sequence[str] | dict,
                 integer_check: str, skip_empty: bool, chunk_size: int, num_threads: int):
        if integer_check not in INTEGER_CHECKS:
            raise ValueError(f"integer_check must be one of {INTEGER_CHECKS}, got {integer_check!r}")
        self.gene_column = gene_column
        self.filter_column = filter_column
        self.obs_columns = dict(obs_columns) if isinstance(obs_columns, dict) else {c: c for c in obs_columns}
        self.integer_check = integer_check
        self.skip_empty = skip_empty
        self.chunk_size = int(chunk_size)
        self.num_threads = check_num_threads(num_threads)

    # ---- to implement -----------------------------------------------------------------------
    def _match_genes(self, m: CellMatrix, gene_ids, report: TokenizeReport) -> np.ndarray:
        raise NotImplementedError

    def _begin(self, m: CellMatrix, table: np.ndarray, report: TokenizeReport, **options):
        return None

    def _encode_chunk(self, C, m: CellMatrix, ch: Chunk, rows: np.ndarray | None, sel_rows: np.ndarray,
                      state) -> dict:
        raise NotImplementedError

    # ---- the run ----------------------------------------------------------------------------
    def iter_tokenize(self, data, *, gene_ids=None, layer: str | None = None, progress: bool = False,
                      report: TokenizeReport | None = None) -> Iterator[Batch]:
        """Tokenizes chunk by chunk (bounded memory for backed inputs): yields one
        :class:`~omicskern.batch.Batch` per chunk of ``chunk_size`` input cells (``source``: the
        global input row). ``report`` (a fresh :class:`TokenizeReport`, if given) is filled in as
        chunks go; every batch carries it as ``.report``."""
        return self._run(data, gene_ids=gene_ids, layer=layer, progress=progress, report=report)

    def tokenize(self, data, *, gene_ids=None, layer: str | None = None, progress: bool = False) -> Batch:
        """Tokenizes every cell of ``data`` (AnnData in memory or backed, ``.h5ad`` path, scipy
        sparse, dense numpy; plain matrices need ``gene_ids``): one ragged
        :class:`~omicskern.batch.Batch` (``.to_padded()``, ``.save(...)``) with ``.report``."""
        return self._tokenize_all(data, gene_ids=gene_ids, layer=layer, progress=progress)

    def _tokenize_all(self, data, **kw) -> Batch:
        rep = TokenizeReport()
        return Batch.concat(list(self._run(data, report=rep, **kw)), report=rep)

    def _run(self, data, *, gene_ids=None, layer: str | None = None, progress: bool = False,
             report: TokenizeReport | None = None, **options) -> Iterator[Batch]:
        m = data if isinstance(data, CellMatrix) else open_cells(data, layer=layer)
        try:
            if gene_ids is None and m.var is None and m.var_names is None:
                raise ValueError(f"a plain matrix has no gene names: pass gene_ids= (one per column, {m.n_vars})")
            rep = TokenizeReport() if report is None else report
            rep.n_genes = m.n_vars
            table = self._match_genes(m, gene_ids, rep)
            state = self._begin(m, table, rep, **options)
            keep_all = self._filter_mask(m, rep)
            carried = {dst: m.obs_column(src, required=True) for src, dst in self.obs_columns.items()}
            obs_names = None if m.obs_names is None else np.asarray(m.obs_names)
            bar = _progress(progress, m.n_obs)
            C = load_C()
            first_non_int = None
            for ch, raw_dtype, too_large in _chunks(m, self.chunk_size):
                n = ch.stop - ch.start
                rows = None if keep_all is None else np.flatnonzero(keep_all[ch.start:ch.stop]).astype(np.int64)
                sel_rows = np.arange(n, dtype=np.int64) if rows is None else rows
                if too_large is not None:
                    _check_too_large(m, ch, sel_rows, too_large)
                if isinstance(state, dict):
                    state["raw_dtype"] = raw_dtype  # the counts' dtype before the C++ cast
                try:
                    r = self._encode_chunk(C, m, ch, rows, sel_rows, state)
                except InvalidCountsError as e:
                    rethrow_counts_error(e, m, ch, rows)
                non_int = r["non_integer"]
                if self.integer_check != "ignore" and non_int.any():
                    where = cell_label(m, ch.start + int(sel_rows[int(np.argmax(non_int))]))
                    if self.integer_check == "error":
                        raise InvalidCountsError(f"{where}: counts are not whole numbers{self._non_integer_error_hint}")
                    if first_non_int is None:
                        first_non_int = where
                    rep.n_non_integer_cells += int(non_int.sum())
                gidx = ch.start + sel_rows[r["out_rows"]]
                rep.n_cells += n
                rep.n_filtered += n - len(sel_rows)
                rep.n_empty += int(np.count_nonzero(r["n_detected"] == 0)) if self.skip_empty else 0
                rep.n_tokenized += len(gidx)
                yield Batch(r["ids"], r["offsets"], values=r.get("values"), source=gidx,
                            names=None if obs_names is None else obs_names[gidx],
                            obs={k: v[gidx] for k, v in carried.items()}, report=rep)
                if bar is not None:
                    bar.update(n)
            if bar is not None:
                bar.close()
            if first_non_int is not None:
                warnings.warn(self._non_integer_warning.format(n=rep.n_non_integer_cells, first=first_non_int),
                              stacklevel=_user_stacklevel())
        finally:
            if m is not data:
                m.close()

    def _filter_mask(self, m: CellMatrix, rep: TokenizeReport) -> np.ndarray | None:
        if not self.filter_column:
            return None
        col = m.obs_column(self.filter_column, required=self.filter_column_required)
        if col is None:
            return None
        rep.filter_source = f"obs column {self.filter_column!r} == 1"
        return np.asarray(col == 1, bool) if col.dtype != bool else col.astype(bool)


def _chunks(m: CellMatrix, chunk_size: int):
    """``m.chunks(chunk_size)`` as ``(chunk, raw_dtype, too_large)``: the counts' dtype as stored
    (before the cast to a dtype of the C++ core: uint64 -> int64, uint16 -> int64...), and for
    uint64 counts of 2**63 or more (which that cast would wrap to negative numbers) their
    ``(mask over the chunk's stored values, the uint64 values)``, else ``None``."""
    chunk_size = max(1, int(chunk_size))
    for s in range(0, m.n_obs, chunk_size):
        e = min(m.n_obs, s + chunk_size)
        ip, ix, dt, base = m._reader(s, e)
        raw = np.dtype(dt.dtype)
        too_large = None
        if raw == np.uint64:
            lo, hi = int(ip[0]) - base, int(ip[-1]) - base
            vals = np.asarray(dt[lo:hi])
            big = vals >= np.uint64(2**63)
            if big.any():
                too_large = (big, vals)
        ip, ix, dt, base = _fix_dtypes(ip, ix, dt, base)
        yield Chunk(s, e, ip, ix, dt, base), raw, too_large


def _check_too_large(m: CellMatrix, ch: Chunk, sel_rows: np.ndarray, too_large) -> None:
    """Raises InvalidCountsError for the first selected cell holding a uint64 count >= 2**63
    (the chunk's stored values start at ``ch.indptr[0] - ch.base`` of the mask)."""
    big, vals = too_large
    off = int(ch.indptr[0]) - ch.base
    starts = ch.indptr[:-1].astype(np.int64) - ch.base - off
    ends = ch.indptr[1:].astype(np.int64) - ch.base - off
    for local in sel_rows:
        hit = np.flatnonzero(big[starts[local]:ends[local]])
        if hit.size:
            q = int(starts[local] + hit[0])
            col = int(ch.indices[off + q])
            row = ch.start + int(local)
            err = InvalidCountsError(f"{cell_label(m, row)}, {gene_label(m, col)}: count is too large "
                                     f"({int(vals[q])}; uint64 counts must be below 2**63)")
            err.row, err.column, err.value, err.kind = row, col, float(vals[q]), "too_large"
            raise err


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _user_stacklevel() -> int:
    """``stacklevel`` that points a warning at the first caller outside omicskern."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="cells", unit_scale=True, desc="tokenizing")
