"""Geneformer's rank-value encoding, in C++ over CSR row chunks.

Per cell, over the genes of the token dictionary with a nonzero count:
``value = ((count * (1 / total_counts)) * target_sum) * (1 / gene_median)`` in the dtypes scipy
uses in Geneformer's h5ad path (``arithmetic="geneformer"``, the V1/V2 default; float32 steps for
float32 ``n_counts``, see docs/cell_tokenizers.md), or ``((count / total) * target_sum) / median``
in float64 (``arithmetic="exact"``, Geneformer's loom path); genes ranked by value descending,
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
    "V1": {"model_input_size": 2048, "special_tokens": False, "arithmetic": "geneformer"},
    # Geneformer V2 (~104M cells): 4096 tokens = <cls> + 4094 genes + <eos>
    "V2": {"model_input_size": 4096, "special_tokens": True, "arithmetic": "geneformer"},
}

ARITHMETICS = ("geneformer", "exact")
DUPLICATE_GENES = ("sum", "geneformer")


def geneformer_arithmetic_code(counts_dtype, totals_dtype) -> int:
    """The C++ core's ``arithmetic`` code (csrc/cells/cells.h, RankParams) reproducing
    ``X / n_counts * target_sum / medians`` of Geneformer's h5ad path for scipy CSR ``X`` of
    ``counts_dtype`` and an ``n_counts`` column of ``totals_dtype``: scipy multiplies by
    ``np.true_divide(1., n_counts)`` (in n_counts' float dtype; float64 for integers), the
    product in ``np.result_type(X, that)``, times target_sum in that dtype, then by
    ``1 / medians`` in float64. 1: all float64; 2: the reciprocal in float32, products float64;
    3: reciprocal and the first two products in float32."""
    recip = np.true_divide(1.0, np.ones(1, np.dtype(totals_dtype))).dtype
    if recip == np.float64:
        return 1
    if recip != np.float32:
        raise ValueError(f"arithmetic='geneformer' does not reproduce n_counts of dtype {np.dtype(totals_dtype)} "
                         "(float16 / extended precision); cast the column to float32 or float64")
    stage = np.result_type(np.dtype(counts_dtype), recip)
    return 3 if stage == np.float32 else 2



class _ColSlots(np.ndarray):
    """column -> slot table carrying the duplicate_genes="geneformer" layout of its run."""

    layout = None

    def __array_finalize__(self, obj):
        self.layout = getattr(obj, "layout", None)


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
        arithmetic: ``"geneformer"`` (default of the V1/V2 presets): Geneformer's h5ad-path
            arithmetic bit for bit (scipy multiplies by ``1 / n_counts`` in n_counts' dtype, by
            ``target_sum``, then by ``1 / median``); ``"exact"``: ``((count / total) * target_sum)
            / median`` in float64 (the loom path; the earlier default).
        duplicate_genes: ``"sum"``: columns of one gene summed, tie position its first column;
            ``"geneformer"``: ``sum_ensembl_ids``' layout (literal duplicates kept as two genes
            when the mapping collapses nothing, else summed genes placed last).
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
                 arithmetic: str | None = None, duplicate_genes: str = "sum",
                 chunk_size: int = 8192, num_threads: int = 0):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        arithmetic = PRESETS[preset]["arithmetic"] if arithmetic is None else arithmetic
        if arithmetic not in ARITHMETICS:
            raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
        if duplicate_genes not in DUPLICATE_GENES:
            raise ValueError(f"duplicate_genes must be one of {DUPLICATE_GENES}, got {duplicate_genes!r}")
        self.arithmetic = arithmetic
        self.duplicate_genes = duplicate_genes
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
        raw_keys = ser
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
        layout = None
        if self.duplicate_genes == "geneformer" and matched.any():
            layout = self._geneformer_duplicates(raw_keys, col_slot)
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
        out = col_slot.view(_ColSlots)
        out.layout = layout
        return out

    def _geneformer_duplicates(self, keys, col_slot: np.ndarray):
        """Geneformer's ``sum_ensembl_ids`` layout of repeated genes: when the mapping (symbol
        table / upper-casing) merges no two distinct keys, the columns are left as they are, so a
        literal duplicate ID is a gene twice (its token appears twice); otherwise every gene of
        several columns is summed and goes after all other genes (``sc.concat([unique, summed])``),
        in order of first appearance. Returns ``(col_slot, slot_token, slot_median, slot_col)`` or
        ``None`` when no gene repeats."""
        matched = np.flatnonzero(col_slot >= 0)
        slots = col_slot[matched]
        if len(np.unique(slots)) == len(slots):
            return None
        raw = np.asarray(keys, dtype=object)[matched]
        n_cols = len(col_slot)
        if len(set(raw.tolist())) == len(np.unique(slots)):
            # nothing collapsed by the mapping: literal duplicates stay separate genes
            extra_tok, extra_med, new_slot = [], [], col_slot.copy()
            seen = set()
            nxt = len(self._slot_token)
            for c in matched:
                s = int(col_slot[c])
                if s in seen:
                    new_slot[c] = nxt
                    extra_tok.append(self._slot_token[s])
                    extra_med.append(self._slot_median[s])
                    nxt += 1
                seen.add(s)
            tok = np.concatenate([self._slot_token, np.asarray(extra_tok, np.int32)])
            med = np.concatenate([self._slot_median, np.asarray(extra_med, np.float64)])
            return new_slot.astype(np.int32), tok, med, None
        # collapsed: summed genes go last, in order of first appearance
        uniq, first, counts = np.unique(slots, return_index=True, return_counts=True)
        slot_col = np.full(len(self._slot_token), np.iinfo(np.int32).max, np.int32)
        for s_, f_, n_ in zip(uniq, first, counts):
            slot_col[s_] = matched[f_]
        dup = uniq[counts > 1]
        order = np.argsort(first[counts > 1], kind="stable")
        for rank, s_ in enumerate(dup[order]):
            slot_col[s_] = n_cols + rank
        return col_slot, self._slot_token, self._slot_median, slot_col

    # ---- tokenizing -------------------------------------------------------------------------
    def _begin(self, m: CellMatrix, col_slot: np.ndarray, rep: TokenizeReport, total_counts=None) -> dict:
        slot_col = None
        slot_token, slot_median = self._slot_token, self._slot_median
        layout = getattr(col_slot, "layout", None)
        col_slot = np.asarray(col_slot).view(np.ndarray)
        if layout is not None:
            col_slot, slot_token, slot_median, slot_col = layout
            rep.n_duplicate_columns = 0 if slot_col is None else rep.n_duplicate_columns
        elif rep.n_duplicate_columns:
            # tie position of a duplicated gene: its first column, whichever columns are nonzero
            slot_col = np.full(len(self._slot_token), np.iinfo(np.int32).max, np.int32)
            matched = np.flatnonzero(col_slot >= 0).astype(np.int32)
            np.minimum.at(slot_col, col_slot[matched], matched)
        totals_all = None
        totals_dtype = None  # dtype of given totals (Geneformer's arithmetic depends on it)
        if total_counts is not None:
            totals_dtype = np.asarray(total_counts).dtype
            totals_all = np.asarray(total_counts, np.float64)
            if totals_all.shape != (m.n_obs,):
                raise ValueError(f"total_counts has shape {totals_all.shape}, expected ({m.n_obs},)")
            rep.total_counts_source = "total_counts argument"
        elif self.total_counts_column:
            col = m.obs_column(self.total_counts_column, required=False)
            if col is not None:
                try:
                    totals_dtype = np.asarray(col).dtype
                    totals_all = np.asarray(col, np.float64)
                except (TypeError, ValueError):
                    raise ValueError(f"obs column {self.total_counts_column!r} is not numeric") from None
                rep.total_counts_source = f"obs column {self.total_counts_column!r}"
        if totals_all is None:
            rep.total_counts_source = "sum over all genes of each cell"
        if self.arithmetic == "geneformer" and totals_dtype is not None:
            geneformer_arithmetic_code(np.float64, totals_dtype)  # refuses float16 totals up front
        return {"col_slot": col_slot, "slot_col": slot_col, "totals": totals_all, "totals_dtype": totals_dtype,
                "slot_token": slot_token, "slot_median": slot_median}

    def _arithmetic_code(self, state: dict) -> int:
        if self.arithmetic == "exact":
            return 0
        counts = state.get("raw_dtype") or np.dtype(np.float64)
        if state["totals_dtype"] is not None:
            return geneformer_arithmetic_code(counts, state["totals_dtype"])
        # no n_counts column: Geneformer sums X (scipy keeps float32 sums float32, integer sums
        # int64), so the reciprocal is float32 exactly for float32 counts
        return geneformer_arithmetic_code(counts, np.float32 if counts == np.float32 else np.float64)

    def _encode_chunk(self, C, m: CellMatrix, ch: Chunk, rows, sel_rows, state: dict) -> dict:
        tot = None
        if state["totals"] is not None:
            tot = state["totals"][ch.start:ch.stop]
            if rows is not None:
                tot = tot[rows]
            tot = np.ascontiguousarray(tot, np.float64)
        return C.cells_rank_value(ch.indptr, ch.indices, ch.data, m.n_vars, state["col_slot"], state["slot_token"],
                                  state["slot_median"], totals=tot, rows=rows, base=ch.base,
                                  max_genes=self.max_genes, cls_id=self.cls_token_id, eos_id=self.eos_token_id,
                                  target_sum=self.target_sum, skip_empty=self.skip_empty,
                                  slot_col=state["slot_col"], num_threads=self.num_threads,
                                  arithmetic=self._arithmetic_code(state))

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
