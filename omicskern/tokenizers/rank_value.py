"""Geneformer's rank-value encoding, in C++ over CSR row chunks.

Per cell, over the genes of the token dictionary with a nonzero count:
``value = ((count / total_counts) * target_sum) / gene_median`` in float64 (this operation order,
as Geneformer's numpy code, so exact ties are the same), genes ranked by value descending,
truncated to ``model_input_size`` (V2 adds ``<cls>`` first and ``<eos>`` last within it).

Tie rule: equal values go by ascending column index (the first column of a merged duplicate gene);
Geneformer's ``np.argsort(-v)`` is an unstable introsort that leaves tie order unspecified, so
omicskern's output equals Geneformer's whenever a cell has no tied values among its kept genes,
and equals ``np.argsort(-v, kind="stable")`` always.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from omicskern.batch import Batch
from omicskern.errors import NoMatchingGenesError
from omicskern.io.cells import CellMatrix, Chunk
from omicskern.io.gene_dict import load_gene_medians, load_symbol_table, load_token_dictionary
from omicskern.tokenizers.cells_base import CellTokenizer, TokenizeReport

PRESETS = {
    # Geneformer V1 (2021, ~30M cells): 2048 genes, no special tokens
    "V1": {"model_input_size": 2048, "special_tokens": False},
    # Geneformer V2 (~104M cells): 4096 tokens = <cls> + 4094 genes + <eos>
    "V2": {"model_input_size": 4096, "special_tokens": True},
}



class RankValueTokenizer(CellTokenizer):
    """Geneformer rank-value tokenizer (``TranscriptomeTokenizer`` semantics, C++ core).

    Args:
        token_dictionary: gene ID -> token id (dict, or a Geneformer pickle / JSON / TSV path);
            must hold ``<cls>``/``<eos>`` when special tokens are on.
        gene_medians: gene ID -> nonzero median (dict or path). Genes of the token dictionary
            without a median are not tokenized (as Geneformer's gene list).
        preset: ``"V1"`` (2048, no specials) or ``"V2"`` (4096 with ``<cls>``/``<eos>``);
            ``model_input_size`` / ``special_tokens`` override it.
        model_input_size: Geneformer's name for the most tokens per cell, specials included
            (the tokenizer's ``max_length``).
        gene_column: var column holding the gene IDs (``None``: var_names).
        symbol_table: symbol -> Ensembl ID (dict or TSV path, e.g. GENCODE's table) applied to
            the gene keys first, for inputs labelled by symbol. Keys absent from it are kept.
        upper_case_ids: upper-case gene keys before lookup (Geneformer does, for Ensembl IDs).
        total_counts_column: obs column with each cell's total counts (Geneformer's
            ``n_counts``); when the input has no such column, totals are summed over ALL genes
            of the cell (also those outside the dictionary), as Geneformer's loom path does.
        filter_column: obs column; only cells where it equals 1/True are tokenized (Geneformer's
            ``filter_pass``). Ignored when absent; ``None`` turns it off.
        obs_columns: obs columns carried into the output (``{"in": "out"}`` renames).
        target_sum: 10,000 in Geneformer.
        integer_check: what a non-integer float count does: ``"warn"``, ``"error"``, ``"ignore"``.
            Negative, NaN and infinite counts are always errors.
        skip_empty: cells with no dictionary gene are left out (Geneformer drops them with a
            warning); otherwise they give an empty (or ``<cls>, <eos>``) sequence.
        chunk_size: cells per C++ call (and per read from a backed h5ad).
        num_threads: C++ threads (``<= 0``: all cores).

    Attributes: ``max_length`` (= ``model_input_size``), ``pad_token_id`` / ``cls_token_id`` /
    ``eos_token_id`` (``<pad>``, ``<cls>``, ``<eos>`` of the dictionary; ``None`` / -1 when absent
    or unused).

    Example:
        >>> tok = RankValueTokenizer("token_dictionary.pkl", "gene_median_dictionary.pkl", preset="V2")
        >>> out = tok.tokenize("cells.h5ad"); out[0][:5], out.report.summary()
    """

    filter_column_required = False  # Geneformer's filter_pass: used when the column exists
    _non_integer_error_hint = (" (rank-value encoding expects raw counts; pass integer_check='warn' or 'ignore' "
                               "to accept them)")
    _non_integer_warning = ("{n} cells hold non-integer counts (first: {first}); rank-value encoding expects "
                            "raw counts")

    def __init__(self, token_dictionary, gene_medians, *, preset: str = "V2", model_input_size: int | None = None,
                 special_tokens: bool | None = None, gene_column: str | None = "ensembl_id", symbol_table=None,
                 upper_case_ids: bool = True, total_counts_column: str | None = "n_counts",
                 filter_column: str | None = "filter_pass", obs_columns: Sequence[str] | dict = (),
                 target_sum: float = 10_000.0, integer_check: str = "warn", skip_empty: bool = True,
                 chunk_size: int = 8192, num_threads: int = 0):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        super().__init__(gene_column=gene_column, filter_column=filter_column, obs_columns=obs_columns,
                         integer_check=integer_check, skip_empty=skip_empty, chunk_size=chunk_size,
                         num_threads=num_threads)
        cfg = dict(PRESETS[preset])
        if model_input_size is not None:
            cfg["model_input_size"] = int(model_input_size)
        if special_tokens is not None:
            cfg["special_tokens"] = bool(special_tokens)
        self.preset = preset
        self.model_input_size = cfg["model_input_size"]
        self.special_tokens = cfg["special_tokens"]
        self.token_dict = load_token_dictionary(token_dictionary)
        self.gene_medians = load_gene_medians(gene_medians)
        self.pad_token_id = self.token_dict.get("<pad>")
        self.cls_token_id = self.eos_token_id = -1
        if self.special_tokens:
            missing = [t for t in ("<cls>", "<eos>") if t not in self.token_dict]
            if missing:
                raise ValueError(f"special tokens {missing} are not in the token dictionary; the V2 preset needs "
                                 "them (use preset='V1' or special_tokens=False for a V1 dictionary)")
            self.cls_token_id, self.eos_token_id = self.token_dict["<cls>"], self.token_dict["<eos>"]
        self.max_genes = self.model_input_size - (2 if self.special_tokens else 0)
        if self.max_genes < 1:
            raise ValueError(f"model_input_size {self.model_input_size} leaves no room for genes")
        bad = [(k, v) for k, v in self.gene_medians.items() if not (np.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"gene medians must be positive and finite; {len(bad)} are not, e.g. {bad[:3]}")
        self.symbol_table = load_symbol_table(symbol_table) if symbol_table is not None else None
        self.upper_case_ids = upper_case_ids
        self.total_counts_column = total_counts_column
        self.target_sum = float(target_sum)
        # slots: genes with a token and a median, in token-dictionary order
        genes = [g for g in self.token_dict if g in self.gene_medians]
        self._slot_of = {g: i for i, g in enumerate(genes)}
        self._slot_token = np.array([self.token_dict[g] for g in genes], np.int32)
        self._slot_median = np.array([self.gene_medians[g] for g in genes], np.float64)

    @property
    def max_length(self) -> int:
        """The most tokens per cell, specials included (Geneformer's ``model_input_size``)."""
        return self.model_input_size

    # ---- gene matching ----------------------------------------------------------------------
    def _match_genes(self, m: CellMatrix, gene_ids, rep: TokenizeReport) -> np.ndarray:
        """Column -> gene slot (-1: not a gene of both dictionaries); fills the gene counts of ``rep``."""
        keys = m.gene_keys(self.gene_column, gene_ids=gene_ids)
        rep.method = f"rank-value ({self.preset}, {self.model_input_size} tokens)"
        import pandas as pd

        ser = pd.Series(keys, dtype=object)
        if self.symbol_table is not None:
            mapped = ser.map(self.symbol_table)
            rep.n_symbol_mapped = int(mapped.notna().sum())
            ser = mapped.where(mapped.notna(), ser)
        slot_of = pd.Series(self._slot_of, dtype=np.int64) if self._slot_of else pd.Series([], dtype=np.int64)
        slots = ser.map(slot_of)
        if self.upper_case_ids:  # as Geneformer (ensembl_id.str.upper()); only keys not found as given
            miss = slots.isna().to_numpy()
            if miss.any():
                slots[miss] = ser[miss].str.upper().map(slot_of)
        col_slot = slots.fillna(-1).to_numpy(np.int64).astype(np.int32)
        matched = col_slot >= 0
        rep.n_genes_matched = int(matched.sum())
        rep.n_genes_missing = m.n_vars - rep.n_genes_matched
        rep.n_duplicate_columns = rep.n_genes_matched - len(np.unique(col_slot[matched]))
        rep.missing_examples = [str(k) for k in ser[~matched].head(20) if k][:5]
        if rep.n_genes_matched == 0:
            where = f"var column {self.gene_column!r}" if gene_ids is None and self.gene_column else "gene IDs"
            raise NoMatchingGenesError(
                f"none of the {m.n_vars} genes ({where}, e.g. {', '.join(map(str, keys[:3]))}) is in the token "
                f"dictionary with a median ({len(self._slot_of)} genes, e.g. {', '.join(list(self._slot_of)[:3])}). "
                "Check gene_column, or pass symbol_table= for symbols.")
        return col_slot

    # ---- tokenizing -------------------------------------------------------------------------
    def _begin(self, m: CellMatrix, col_slot: np.ndarray, rep: TokenizeReport, total_counts=None) -> dict:
        slot_col = None
        if rep.n_duplicate_columns:
            # tie position of a duplicated gene: its first column, whichever columns are nonzero
            slot_col = np.full(len(self._slot_token), np.iinfo(np.int32).max, np.int32)
            matched = np.flatnonzero(col_slot >= 0).astype(np.int32)
            np.minimum.at(slot_col, col_slot[matched], matched)
        totals_all = None
        if total_counts is not None:
            totals_all = np.asarray(total_counts, np.float64)
            if totals_all.shape != (m.n_obs,):
                raise ValueError(f"total_counts has shape {totals_all.shape}, expected ({m.n_obs},)")
            rep.total_counts_source = "total_counts argument"
        elif self.total_counts_column:
            col = m.obs_column(self.total_counts_column, required=False)
            if col is not None:
                try:
                    totals_all = np.asarray(col, np.float64)
                except (TypeError, ValueError):
                    raise ValueError(f"obs column {self.total_counts_column!r} is not numeric") from None
                rep.total_counts_source = f"obs column {self.total_counts_column!r}"
        if totals_all is None:
            rep.total_counts_source = "sum over all genes of each cell"
        return {"col_slot": col_slot, "slot_col": slot_col, "totals": totals_all}

    def _encode_chunk(self, C, m: CellMatrix, ch: Chunk, rows, sel_rows, state: dict) -> dict:
        tot = None
        if state["totals"] is not None:
            tot = state["totals"][ch.start:ch.stop]
            if rows is not None:
                tot = tot[rows]
            tot = np.ascontiguousarray(tot, np.float64)
        return C.cells_rank_value(ch.indptr, ch.indices, ch.data, m.n_vars, state["col_slot"], self._slot_token,
                                  self._slot_median, totals=tot, rows=rows, base=ch.base,
                                  max_genes=self.max_genes, cls_id=self.cls_token_id, eos_id=self.eos_token_id,
                                  target_sum=self.target_sum, skip_empty=self.skip_empty,
                                  slot_col=state["slot_col"], num_threads=self.num_threads)

    def iter_tokenize(self, data, *, gene_ids=None, total_counts=None, layer: str | None = None,
                      progress: bool = False, report: TokenizeReport | None = None) -> Iterator[Batch]:
        """Tokenizes chunk by chunk (bounded memory for backed inputs): yields one
        :class:`~omicskern.batch.Batch` per chunk of ``chunk_size`` input cells (``source``: the
        global input row). ``total_counts`` [n_cells] overrides the totals. ``report`` (a fresh
        :class:`TokenizeReport`, if given) is filled in as chunks go."""
        return self._run(data, gene_ids=gene_ids, layer=layer, progress=progress, report=report,
                         total_counts=total_counts)

    def tokenize(self, data, *, gene_ids=None, total_counts=None, layer: str | None = None,
                 progress: bool = False) -> Batch:
        """Tokenizes every cell of ``data`` (AnnData in memory or backed, ``.h5ad`` path, scipy
        sparse, dense numpy; plain matrices need ``gene_ids``). Returns a ragged
        :class:`~omicskern.batch.Batch` (``input_ids`` int32, ``cu_seqlens``, ``source`` = input
        row, ``names`` = obs names, ``obs``; ``.to_padded()``, ``.save(...)``) with ``.report``."""
        return self._tokenize_all(data, gene_ids=gene_ids, layer=layer, progress=progress,
                                  total_counts=total_counts)


__all__ = ["RankValueTokenizer", "PRESETS"]
