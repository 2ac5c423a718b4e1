"""In-silico perturbation of cells (Geneformer's ``InSilicoPerturber``), batched without padding.

:func:`perturb_cells` is the job behind ``omicskern perturb-cells``. For every selected cell and
every gene asked for (``genes=[...]``, or every gene of the cell with ``all_expressed=True``):

* **delete**: the gene's token is removed from the cell's rank-value encoding;
* **overexpress**: the gene's token moves to the front, after ``<cls>`` where the encoding has
  one. A gene of the dictionary that is not among the cell's tokens is inserted there (Geneformer
  does the same for a gene list); when that makes the cell longer than the tokenizer's
  ``max_length``, the cell's last gene is dropped from both the perturbed and the original cell
  (Geneformer's ``truncate_by_n_overflow``), and the row says ``truncated``.

The effect is the cosine similarity between the original and the perturbed cell embedding
(``<cls>`` of V2 models, the mean over gene tokens for V1, at Geneformer's ``emb_layer``), and with
``gene_shifts=True`` also the cosine between every other gene's embedding in the original and the
perturbed cell (plus their mean, Geneformer's V1 ``emb_mode="cell"`` number).

Efficiency: each perturbation is one ragged row of an :class:`~omicskern.batch.Batch` built with
numpy from the tokenized cell (no per-row Python); rows of all cells are embedded together in
length-sorted token-budget groups (:func:`~omicskern.pipelines.engine.embed_rows`, no padding),
and each original cell is embedded once. Work goes in chunks of ``chunk_tokens`` perturbed tokens,
so ``all_expressed`` (about n^2 tokens per cell of n genes) runs in bounded memory.

Nothing is dropped silently: in ``genes=`` mode the table has one row per (selected cell,
requested gene), with a ``status`` saying why a pair has no score (``not_in_dictionary``,
``not_in_cell``, ``empty_cell``...); in ``all_expressed`` mode a cell without any gene of the
dictionary gets one ``empty_cell`` row. See docs/perturb.md for the exact definitions.

Example:
    >>> res = perturb_cells("cells.h5ad", "Geneformer-V2-104M/", genes=["ENSG00000142192"],
    ...                     out="effects.tsv")                            # doctest: +SKIP
    >>> res.table[["cell", "gene", "cosine", "rank", "status"]].head()    # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from omicskern.pipelines.engine import Clock, embed_rows

__all__ = ["perturb_cells", "PerturbResult", "MODES", "STATUSES", "build_perturbed_rows"]

MODES = ("delete", "overexpress")

#: why a row has (or has no) score
STATUSES = {
    "ok": "scored",
    "inserted": "overexpress of a dictionary gene that is not among the cell's tokens: its token was inserted",
    "already_first": "overexpress of the cell's first gene: nothing moves, cosine 1 by definition (no forward pass)",
    "not_in_cell": "delete of a gene that is not among the cell's tokens (not expressed, or ranked past the "
                   "tokenizer's max_length): nothing to delete, no score",
    "no_genes_left": "delete of the cell's only gene under mean pooling: the perturbed cell has no gene to pool",
    "empty_cell": "the cell has no gene of the token dictionary (with a median): nothing to perturb",
    "not_in_dictionary": "the requested gene is not in the model's token dictionary",
}

# perturbation kinds of the row builder
_DEL, _MOVE, _INS = 0, 1, 2

_SYMBOL_COLUMNS = ("gene_symbol", "symbol", "gene_symbols", "gene_name", "feature_name")
_TABLE_SUFFIXES = {".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_META_KEY = b"omicskern.perturb"
#: on CPU, a length shared by at least this many rows is embedded as its own groups (see _embed)
_MIN_SAME_LENGTH_ROWS = 8


@dataclass
class PerturbResult:
    """What :func:`perturb_cells` did.

    table: one row per (cell, perturbed gene): ``cell`` (obs name), ``cell_index`` (obs row),
        ``gene`` (dictionary id), ``symbol`` ("" when unknown), ``mode``, ``cosine`` (NaN when not
        scored), ``rank`` (1 = the cell's top gene; missing for genes not in the cell),
        ``n_genes`` (gene tokens of the cell), ``status`` (:data:`STATUSES`), ``truncated``;
        with gene shifts also ``mean_gene_cosine``.
    gene_shifts: with ``gene_shifts=True``: one row per (cell, perturbed gene, affected gene):
        ``cell``, ``gene``, ``affected_gene``, ``cosine``; else None.
    report: counts, settings and timings (also in the parquet metadata).
    out, gene_shifts_out: the paths written (None when not written).
    """

    table: "object"
    gene_shifts: "object | None"
    report: dict
    out: Path | None = None
    gene_shifts_out: Path | None = None

    def summary(self) -> str:
        r = self.report
        lines = [f"perturb-cells ({r['mode']}): {r['n_rows']:,} rows for {r['n_cells']:,} cells, "
                 f"{r['n_scored']:,} scored by {r['n_forward_rows']:,} forward rows "
                 f"({r['n_forward_tokens']:,} tokens) in {r['seconds']:.1f} s "
                 f"({r['perturbations_per_s']:,.1f} perturbations/s)"]
        st = {k: v for k, v in r["status_counts"].items() if k != "ok" and v}
        if st:
            lines.append("  not scored / special: " + ", ".join(f"{v:,} {k}" for k, v in st.items()))
        if r.get("genes_not_in_dictionary"):
            lines.append("  genes not in the token dictionary: " + ", ".join(r["genes_not_in_dictionary"][:10])
                         + (" ..." if len(r["genes_not_in_dictionary"]) > 10 else ""))
        if r.get("n_empty_cells"):
            lines.append(f"  {r['n_empty_cells']:,} cells without any gene of the dictionary (empty_cell rows)")
        lines.append(f"  embedding: {r['pooling']} pooling, emb_layer {r['emb_layer']} (hidden state {r['layer']})")
        return "\n".join(lines)


# -- the row builder ------------------------------------------------------------------------------
def build_perturbed_rows(ids: np.ndarray, cu: np.ndarray, cell: np.ndarray, kind: np.ndarray, pos: np.ndarray,
                         token: np.ndarray, first: np.ndarray, last_gene: np.ndarray, trunc: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perturbed rows, vectorised (no Python loop over rows).

    ``ids``/``cu``: the tokenized cells (ragged). Per perturbation ``k``: ``cell[k]`` (row of the
    cells), ``kind[k]`` (0 delete the token at ``pos[k]``; 1 move the token at ``pos[k]`` to
    ``first[cell]``; 2 insert ``token[k]`` at ``first[cell]``, dropping the cell's last gene at
    ``last_gene[cell]`` when ``trunc[k]``). ``first[c]`` is 1 after ``<cls>``, else 0.

    Returns ``(input_ids [T'], cu_seqlens [K + 1], src [T'])``: ``src`` is, for every token of the
    perturbed rows, its position in the original cell row, or -1 for an inserted token.
    """
    cell = np.asarray(cell, np.int64)
    kind = np.asarray(kind, np.int64)
    pos = np.asarray(pos, np.int64)
    lengths = np.diff(cu)[cell]
    out_len = lengths + np.where(kind == _DEL, -1, 0) + np.where((kind == _INS) & ~trunc, 1, 0)
    k_n = len(cell)
    out_cu = np.zeros(k_n + 1, np.int64)
    np.cumsum(out_len, out=out_cu[1:])
    r = np.repeat(np.arange(k_n, dtype=np.int64), out_len)
    j = np.arange(out_cu[-1], dtype=np.int64) - out_cu[:-1][r]
    kr, pr = kind[r], pos[r]
    fr = first[cell][r]
    src = j.copy()
    d = kr == _DEL
    src[d] += j[d] >= pr[d]
    mv = kr == _MOVE
    src[mv & (j == fr)] = pr[mv & (j == fr)]
    shift = mv & (j > fr) & (j <= pr)
    src[shift] -= 1
    ins = kr == _INS
    after = ins & (j > fr)
    src[after] -= 1
    tr = ins & trunc[r]
    lg = last_gene[cell][r]
    bump = tr & (j > fr) & (src >= lg)
    src[bump] += 1  # the dropped last gene is skipped
    src[ins & (j == fr)] = -1
    start = cu[:-1][cell][r]
    out = ids[start + np.maximum(src, 0)].astype(np.int32, copy=True)
    newtok = src < 0
    out[newtok] = np.asarray(token, np.int64)[r[newtok]]
    return out, out_cu, src


# -- inputs ---------------------------------------------------------------------------------------
def _load_model(model, device, dtype):
    from omicskern.models.base import OmicsModel, check_device

    check_device(device)
    if isinstance(model, (str, Path)):
        from omicskern import load

        model = load(model, device=device, dtype=dtype)
    elif not isinstance(model, OmicsModel):
        raise TypeError(f"model must be a checkpoint folder or an omicskern model, got {type(model).__name__}")
    elif device is not None:
        model = model.to(device)
    if getattr(model, "kind", None) != "cell":
        raise ValueError(f"perturb_cells needs a single-cell model with a rank-value tokenizer (Geneformer); "
                         f"got a {type(model).__name__} (kind {getattr(model, 'kind', None)!r})")
    model.eval()
    return model


def _tokenizer(model, tokenizer, gene_column):
    from omicskern.tokenizers.rank_value import RankValueTokenizer

    if tokenizer is None:
        kw = dict(gene_column=gene_column, skip_empty=False, filter_column=None)
        tokenizer = model.get_tokenizer(**kw)
        if tokenizer.max_length > model.max_length:  # the model's positions bound the encoding (Geneformer's
            tokenizer = model.get_tokenizer(model_input_size=model.max_length, **kw)  # model_input_size)
    if not isinstance(tokenizer, RankValueTokenizer):
        raise ValueError(f"perturb_cells works on rank-value encodings (Geneformer); the tokenizer is a "
                         f"{type(tokenizer).__name__}, whose tokens carry values a deletion would have to edit too")
    if tokenizer.max_length > model.max_length:
        raise ValueError(f"the tokenizer's max_length {tokenizer.max_length} exceeds the model's "
                         f"max_length {model.max_length}; pass a tokenizer with model_input_size={model.max_length}")
    if tokenizer.skip_empty or tokenizer.filter_column:
        import copy

        tokenizer = copy.copy(tokenizer)  # empty cells are reported, not dropped; cells= selects
        tokenizer.skip_empty, tokenizer.filter_column = False, None
    return tokenizer


def _select_cells(m, cells) -> tuple[np.ndarray, str]:
    """Rows of the cells to perturb and a description of the filter."""
    n = m.n_obs
    if cells is None:
        return np.arange(n, dtype=np.int64), "all cells"
    if isinstance(cells, str):
        cells = _parse_cell_filter(cells)
    if isinstance(cells, tuple) and len(cells) == 2 and isinstance(cells[0], str):
        cells = {cells[0]: cells[1]}
    if isinstance(cells, dict):
        keep = np.ones(n, bool)
        for col, want in cells.items():
            vals = m.obs_column(col, required=True)
            wanted = [want] if isinstance(want, (str, int, float, bool, np.generic)) else list(want)
            sv = np.asarray([str(v) for v in vals], dtype=object)
            hit = np.isin(sv, np.asarray([str(w) for w in wanted], dtype=object))
            if not hit.any():
                seen = list(dict.fromkeys(map(str, vals)))
                raise ValueError(f"cells: no cell has obs column {col!r} in {wanted!r} (values: "
                                 f"{', '.join(seen[:10])}{' ...' if len(seen) > 10 else ''})")
            keep &= hit
        rows = np.flatnonzero(keep).astype(np.int64)
        desc = " and ".join(f"{k} in {v!r}" if not isinstance(v, (str, int, float, bool)) else f"{k} == {v!r}"
                            for k, v in cells.items())
        if not rows.size:
            raise ValueError(f"cells: no cell matches {desc}")
        return rows, desc
    arr = np.asarray(cells)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"cells: a boolean mask must have one entry per cell ({n}), got shape {arr.shape}")
        rows = np.flatnonzero(arr).astype(np.int64)
        desc = f"{rows.size} cells by mask"
    elif arr.dtype.kind in "iu":
        rows = arr.astype(np.int64).ravel()
        bad = rows[(rows < 0) | (rows >= n)]
        if bad.size:
            raise IndexError(f"cells: obs index {int(bad[0])} out of range for {n} cells")
        desc = f"{rows.size} cells by index"
    else:
        names = np.asarray(m.obs_names).astype(str)
        where = {nm: i for i, nm in reversed(list(enumerate(names)))}
        want = [str(c) for c in arr.ravel()]
        missing = [c for c in want if c not in where]
        if missing:
            raise KeyError(f"cells: {len(missing)} names are not obs names of the input, e.g. "
                           f"{', '.join(map(repr, missing[:5]))} (obs names look like {names[0]!r})")
        rows = np.asarray([where[c] for c in want], np.int64)
        desc = f"{rows.size} cells by name"
    if not rows.size:
        raise ValueError("cells: the selection is empty")
    if len(np.unique(rows)) != rows.size:
        raise ValueError("cells: a cell is selected twice")
    return rows, desc


def _parse_cell_filter(text: str):
    """``COLUMN=VALUE[,VALUE...]`` -> dict; ``@FILE`` -> obs names (one a line); else
    comma-separated obs names."""
    if text.startswith("@"):
        p = Path(text[1:])
        if not p.is_file():
            raise FileNotFoundError(f"cells: {p}: no such file (a list of obs names, one a line)")
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        if not names:
            raise ValueError(f"cells: {p} lists no obs names")
        return names
    if "=" in text:
        col, _, vals = text.partition("=")
        if not col:
            raise ValueError(f"cells: {text!r}: expected COLUMN=VALUE")
        return {col: [v for v in vals.split(",")]}
    return [c for c in text.split(",") if c]


def _symbols(m, gene_column, symbol_column) -> dict:
    """gene key (upper case) -> symbol, from a var symbol column."""
    if m.var is None:
        return {}
    col = symbol_column
    if col is None:
        col = next((c for c in _SYMBOL_COLUMNS if c in m.var.columns), None)
        if col is None:
            return {}
    elif col not in m.var.columns:
        from omicskern.errors import MissingColumnError

        raise MissingColumnError(f"adata.var has no column {col!r} (columns: {', '.join(map(str, m.var.columns))}); "
                                 "name the symbol column with symbol_column=")
    keys = m.gene_keys(gene_column)
    syms = m.var[col].astype(object).where(m.var[col].notna(), "").astype(str).to_numpy()
    out = {}
    for k, s in zip(keys, syms):
        out.setdefault(k.upper(), s)
    return out


def _resolve_genes(genes, tok, symbols: dict) -> list[dict]:
    """Requested names -> ``{"request", "gene", "symbol", "token"}`` (token -1: not in the
    dictionary). A name is a dictionary key (as given, or upper-cased) or a symbol of the input."""
    if isinstance(genes, str):
        genes = [g for g in genes.split(",") if g]
    genes = [str(g).strip() for g in genes]
    if not genes:
        raise ValueError("genes: the list is empty")
    td = tok.token_dict
    specials = {"<pad>", "<mask>", "<cls>", "<eos>"}
    by_symbol: dict[str, list[str]] = {}
    for k, s in symbols.items():
        if s:
            by_symbol.setdefault(s, []).append(k)
            by_symbol.setdefault(s.upper(), []).append(k)
    out, seen = [], set()
    for g in genes:
        key = None
        if g in td and g not in specials:
            key = g
        elif g.upper() in td and g.upper() not in specials:
            key = g.upper()
        else:
            cands = list(dict.fromkeys(k for k in by_symbol.get(g, by_symbol.get(g.upper(), [])) if k in td))
            if len(cands) > 1:
                raise ValueError(f"genes: symbol {g!r} names {len(cands)} genes of the dictionary "
                                 f"({', '.join(cands[:5])}); give the gene id instead")
            if cands:
                key = cands[0]
        if key is None:
            rec = {"request": g, "gene": g, "symbol": symbols.get(g.upper(), ""), "token": -1}
            if g in seen:
                continue
            seen.add(g)
        else:
            if key in seen:
                continue
            seen.add(key)
            rec = {"request": g, "gene": key, "symbol": symbols.get(key.upper(), ""), "token": int(td[key])}
        out.append(rec)
    return out


# -- the job --------------------------------------------------------------------------------------
def perturb_cells(input_h5ad, model, *, genes: Sequence[str] | str | None = None, all_expressed: bool = False,
                  mode: str = "delete", cells=None, out=None, gene_shifts: bool = False, gene_shifts_out=None,
                  emb_layer: int = -1, pooling: str | None = None, batch_tokens: int = 16384,
                  chunk_tokens: int | None = None, device=None, dtype=None, gene_column: str | None = "ensembl_id",
                  symbol_column: str | None = None, layer_name: str | None = None, tokenizer=None,
                  progress: bool = False) -> PerturbResult:
    """In-silico deletion or overexpression of genes in cells (Geneformer's definitions).

    Args:
        input_h5ad: an ``.h5ad`` path (read backed) or an AnnData.
        model: a Geneformer checkpoint folder, or a loaded omicskern cell model.
        genes: gene ids of the token dictionary (or symbols of the input's var symbol column),
            a list or ``"G1,G2"``; each is perturbed on its own, one row per (cell, gene).
        all_expressed: perturb every gene of every selected cell instead (~n^2 tokens per cell).
        mode: ``"delete"`` or ``"overexpress"``.
        cells: which cells: None (all), ``{"obs column": value or [values]}``, ``("column", value)``,
            ``"column=v1,v2"``, ``"@names.txt"``, a list of obs names, int obs rows or a bool mask.
        out: ``.tsv`` or ``.parquet`` table written atomically (None: not written).
        gene_shifts: also the cosine of every other gene's embedding (original vs perturbed), into
            ``gene_shifts_out`` (a second table) and the ``mean_gene_cosine`` column.
        emb_layer: Geneformer's convention: 0 the last layer, -1 (default) the second to last...
            (omicskern hidden-state index ``emb_layer - 1``).
        pooling: ``"cls"`` (default when the encoding has ``<cls>``, Geneformer V2's ``emb_mode="cls"``)
            or ``"mean"`` over gene tokens (V1's ``emb_mode="cell"``).
        batch_tokens: token budget of one forward pass (ragged rows, no padding).
        chunk_tokens: perturbed tokens built and embedded per chunk (bounds memory; default
            64 x ``batch_tokens``, 8 x with gene shifts).
        device, dtype: where and in what dtype the model runs (a folder is loaded so).
        gene_column: var column of the gene ids (None: var_names). symbol_column: var column of
            symbols (default: the first of gene_symbol, symbol, gene_name, feature_name present).
        layer_name: read ``adata.layers[layer_name]`` instead of X.
        tokenizer: a :class:`~omicskern.tokenizers.RankValueTokenizer` (default: the model's own,
            keeping empty cells, no filter column).

    Returns:
        :class:`PerturbResult` (``table`` a pandas DataFrame, ``report``, ``summary()``).
    """
    import pandas as pd

    from omicskern.batch import Batch
    from omicskern.io.cells import open_cells

    t_start = time.perf_counter()
    clock = Clock()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if (genes is None) == (not all_expressed):
        raise ValueError("give either genes=[...] or all_expressed=True (exactly one)")
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    out_fmt = _table_format(out, "out") if out is not None else None
    if gene_shifts_out is not None:
        if not gene_shifts:
            raise ValueError("gene_shifts_out= needs gene_shifts=True")
        _table_format(gene_shifts_out, "gene_shifts_out")
    if out is not None:
        from omicskern.io.writers import check_writable

        check_writable(out, what="out")
        if gene_shifts_out is not None:
            check_writable(gene_shifts_out, what="gene_shifts_out")
    model = _load_model(model, device, dtype)
    n_layers = int(model.config.num_hidden_layers)
    emb_layer = int(emb_layer)
    if not -n_layers <= emb_layer <= 0:
        raise ValueError(f"emb_layer must be in [-{n_layers}, 0] (Geneformer's convention: 0 = the last layer, "
                         f"-1 = the second to last; this model has {n_layers} layers), got {emb_layer}")
    layer = emb_layer - 1
    tok = _tokenizer(model, tokenizer, gene_column)
    gene_column = tok.gene_column
    specials = bool(tok.special_tokens)
    if pooling is None:
        pooling = "cls" if specials else "mean"
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    if pooling == "cls" and not specials:
        raise ValueError("pooling='cls' needs <cls> tokens (a V2 token dictionary); this encoding has none: "
                         "use pooling='mean'")
    if chunk_tokens is None:
        chunk_tokens = batch_tokens * (8 if gene_shifts else 64)
    chunk_tokens = max(int(chunk_tokens), int(batch_tokens))

    with clock("tokenize"):
        m = open_cells(input_h5ad, layer=layer_name)
        try:
            rows_sel, cells_desc = _select_cells(m, cells)
            symbols = _symbols(m, gene_column, symbol_column)
            try:
                cells_tok = tok.tokenize(m)
            except Exception as e:
                from omicskern.errors import NoMatchingGenesError

                if isinstance(e, NoMatchingGenesError) and genes is not None:
                    raise NoMatchingGenesError(f"{e} (no requested gene can be found in any cell)") from None
                raise
            obs_names = np.asarray(m.obs_names).astype(str) if m.obs_names is not None else \
                np.asarray([str(i) for i in range(m.n_obs)])
        finally:
            m.close()
    if len(cells_tok) != m.n_obs or not np.array_equal(cells_tok.source, np.arange(m.n_obs)):
        raise RuntimeError("the tokenizer dropped cells although skip_empty=False and no filter column were set")
    cb = cells_tok.select(rows_sel)
    ids, cu = np.asarray(cb.input_ids), np.asarray(cb.cu_seqlens)
    n_cells = len(cb)
    lengths = np.diff(cu)
    first = np.full(n_cells, 1 if specials else 0, np.int64)
    last_gene = lengths - 1 - (1 if specials else 0)  # position of the cell's last gene
    n_genes = lengths - (2 if specials else 0)
    empty = n_genes <= 0
    max_len = int(tok.max_length)

    inv = _inverse_dictionary(tok.token_dict)
    # -- the perturbation list: (cell, kind, pos, token, status), in cell order --------------------
    if all_expressed:
        counts = np.where(empty, 0, n_genes)
        p_cell = np.repeat(np.arange(n_cells, dtype=np.int64), counts)
        off = np.arange(p_cell.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        p_pos = first[p_cell] + off
        p_tok = ids[cu[:-1][p_cell] + p_pos].astype(np.int64)
        p_gene = inv[p_tok]
        p_symbol = np.asarray([symbols.get(str(g).upper(), "") for g in p_gene], dtype=object) if symbols else \
            np.full(p_cell.size, "", dtype=object)
        p_status = np.full(p_cell.size, "ok", dtype=object)
        p_req_missing = np.zeros(p_cell.size, bool)
        # cells without genes: one row each
        e_cells = np.flatnonzero(empty)
        not_in_dict = []
        requested = None
    else:
        requested = _resolve_genes(genes, tok, symbols)
        not_in_dict = [r["request"] for r in requested if r["token"] < 0]
        if len(not_in_dict) == len(requested):
            from omicskern.errors import NoMatchingGenesError

            raise NoMatchingGenesError(
                f"genes: none of {', '.join(not_in_dict[:10])} is in the model's token dictionary "
                f"({len(tok.token_dict):,} entries, e.g. {', '.join(list(_gene_keys(tok.token_dict))[:3])}); "
                "give gene ids of the dictionary (or symbols of the input's var symbol column)")
        g_n = len(requested)
        g_tok = np.asarray([r["token"] for r in requested], np.int64)
        # position of each requested gene in each cell (-1 absent): one pass over all tokens
        lut = np.full(max(int(ids.max()) if ids.size else 0, int(g_tok.max())) + 1, -1, np.int64)
        valid = g_tok >= 0
        lut[g_tok[valid]] = np.flatnonzero(valid)
        pos_tab = np.full((n_cells, g_n), -1, np.int64)
        tok_gi = lut[ids]
        hit = np.flatnonzero(tok_gi >= 0)
        if specials:  # a gene token only between <cls> and <eos>
            tpos = cb.token_positions()
            trow = cb.token_rows()
            hit = hit[(tpos[hit] >= 1) & (tpos[hit] <= last_gene[trow[hit]])]
        else:
            tpos, trow = cb.token_positions(), cb.token_rows()
        # first occurrence wins (Geneformer's list.index): write in reverse order
        hit = hit[::-1]
        pos_tab[trow[hit], tok_gi[hit]] = tpos[hit]
        p_cell = np.repeat(np.arange(n_cells, dtype=np.int64), g_n)
        gi = np.tile(np.arange(g_n, dtype=np.int64), n_cells)
        p_pos = pos_tab.ravel()
        p_tok = g_tok[gi]
        p_gene = np.asarray([requested[i]["gene"] for i in range(g_n)], dtype=object)[gi]
        p_symbol = np.asarray([requested[i]["symbol"] for i in range(g_n)], dtype=object)[gi]
        p_status = np.full(p_cell.size, "ok", dtype=object)
        p_req_missing = p_tok < 0
        p_status[p_req_missing] = "not_in_dictionary"
        e_cells = np.zeros(0, np.int64)
    p_n = p_cell.size
    p_kind = np.full(p_n, _MOVE if mode == "overexpress" else _DEL, np.int64)
    p_trunc = np.zeros(p_n, bool)
    p_empty = empty[p_cell] & ~p_req_missing
    p_status[p_empty] = "empty_cell"
    live = ~p_req_missing & ~p_empty
    absent = live & (p_pos < 0)
    if mode == "delete":
        p_status[absent] = "not_in_cell"
        only = live & ~absent & (n_genes[p_cell] == 1) & ((pooling == "mean") | (not specials))
        p_status[only] = "no_genes_left"
    else:
        p_kind[absent] = _INS
        p_status[absent] = "inserted"
        p_trunc[absent] = lengths[p_cell[absent]] + 1 > max_len
        p_status[live & ~absent & (p_pos == first[p_cell])] = "already_first"
    compute = (p_status == "ok") | (p_status == "inserted")
    cos = np.full(p_n, np.nan)
    cos[p_status == "already_first"] = 1.0
    mean_gene_cos = np.full(p_n, np.nan) if gene_shifts else None
    if gene_shifts:
        mean_gene_cos[p_status == "already_first"] = 1.0
    shift_parts = []

    # -- chunks of perturbations, each original embedded once --------------------------------------
    comp_idx = np.flatnonzero(compute)
    plen = lengths[p_cell[comp_idx]] + np.where(p_kind[comp_idx] == _DEL, -1, 0) + \
        np.where((p_kind[comp_idx] == _INS) & ~p_trunc[comp_idx], 1, 0)
    csum = np.cumsum(plen)
    bounds = [0]
    while bounds[-1] < comp_idx.size:
        base = csum[bounds[-1] - 1] if bounds[-1] else 0
        nxt = int(np.searchsorted(csum, base + chunk_tokens, side="right"))
        bounds.append(max(nxt, bounds[-1] + 1))
    orig_cache: dict = {}  # (cell, truncated) -> (pooled [C], tokens [L, C] or None)
    n_fwd_rows = n_fwd_tokens = 0
    bar = _progress(progress, comp_idx.size)
    for a, b in zip(bounds[:-1], bounds[1:]):
        k = comp_idx[a:b]
        with clock("build"):
            kc = p_cell[k]
            # the originals this chunk compares with: the cell, or (truncated insertion) the cell
            # without its last gene, i.e. that gene deleted
            need = sorted({(int(c), bool(t)) for c, t in zip(kc, p_trunc[k])} - set(orig_cache))
            o_cell = np.asarray([c for c, _ in need], np.int64)
            o_tr = np.asarray([t for _, t in need], bool)
            full_cells, tr_cells = o_cell[~o_tr], o_cell[o_tr]
            n_full, n_tr = len(full_cells), len(tr_cells)
            # rows after the full originals: truncated originals (a delete of the last gene), then
            # the chunk's perturbations, all through the row builder
            pert_ids, pert_cu, pert_src = build_perturbed_rows(
                ids, cu, np.concatenate([tr_cells, kc]),
                np.concatenate([np.full(n_tr, _DEL, np.int64), p_kind[k]]),
                np.concatenate([last_gene[tr_cells], p_pos[k]]),
                np.concatenate([np.zeros(n_tr, np.int64), p_tok[k]]), first, last_gene,
                np.concatenate([np.zeros(n_tr, bool), p_trunc[k]]))
            parts = [Batch(pert_ids, pert_cu)]
            if n_full:
                ob = cb.select(full_cells)
                parts.insert(0, Batch(np.asarray(ob.input_ids), np.asarray(ob.cu_seqlens)))
            batch = Batch.concat(parts)
        emb = _embed(model, batch, pooling=pooling, layer=layer, max_tokens=batch_tokens, per_token=gene_shifts,
                     clock=clock)
        n_fwd_rows += len(batch)
        n_fwd_tokens += batch.num_tokens
        with clock("score"):
            bcu = np.asarray(batch.cu_seqlens)
            for i, (c, t) in enumerate([(int(c), False) for c in full_cells] + [(int(c), True) for c in tr_cells]):
                toks = emb.tokens[bcu[i]:bcu[i + 1]] if gene_shifts else None
                orig_cache[(c, t)] = (emb.pooled[i], toks)
            n_orig = n_full + n_tr
            pooled_p = emb.pooled[n_orig:].astype(np.float64)
            ref = np.stack([orig_cache[(int(c), bool(t))][0] for c, t in zip(kc, p_trunc[k])]).astype(np.float64)
            cos[k] = _cosine(pooled_p, ref)
            if gene_shifts:
                tok_p = emb.tokens[bcu[n_orig]:]
                _shifts(k, kc, p_kind, p_trunc, p_gene, pert_cu, pert_src, tok_p, orig_cache, first, last_gene,
                        ids, cu, inv, mean_gene_cos, shift_parts, n_tr, obs_names, rows_sel)
            # keep only what later chunks can still need (perturbations go in cell order)
            last_c = int(kc[-1])
            for key in [key for key in orig_cache if key[0] < last_c]:
                del orig_cache[key]
        if bar is not None:
            bar.update(len(k))
    if bar is not None:
        bar.close()

    # -- the table ---------------------------------------------------------------------------------
    with clock("write"):
        rank = np.where(p_pos >= 0, p_pos - first[p_cell] + 1, -1)
        cols = {
            "cell": obs_names[rows_sel][p_cell],
            "cell_index": rows_sel[p_cell],
            "gene": p_gene.astype(str) if p_n else np.zeros(0, str),
            "symbol": p_symbol.astype(str) if p_n else np.zeros(0, str),
            "mode": np.full(p_n, mode, dtype=object),
            "cosine": cos,
            "rank": pd.array(np.where(rank > 0, rank, 0), dtype="Int64"),
            "_sel": p_cell,
            "n_genes": np.maximum(n_genes[p_cell], 0),
            "status": p_status.astype(str) if p_n else np.zeros(0, str),
            "truncated": p_trunc,
        }
        df = pd.DataFrame(cols)
        df.loc[rank <= 0, "rank"] = pd.NA
        df["rank"] = df["rank"].astype("Int64")
        if gene_shifts:
            df["mean_gene_cosine"] = mean_gene_cos
        if e_cells.size:  # all_expressed: a cell without genes still gets its row
            er = pd.DataFrame({"cell": obs_names[rows_sel][e_cells], "cell_index": rows_sel[e_cells], "gene": "",
                               "symbol": "", "mode": mode, "cosine": np.nan,
                               "rank": pd.array([pd.NA] * len(e_cells), dtype="Int64"), "n_genes": 0,
                               "_sel": e_cells, "status": "empty_cell", "truncated": False})
            if gene_shifts:
                er["mean_gene_cosine"] = np.nan
            df = pd.concat([df, er], ignore_index=True).sort_values(["_sel"], kind="stable", ignore_index=True)
        df = df.drop(columns="_sel")
        shifts_df = None
        if gene_shifts:
            shifts_df = (pd.concat(shift_parts, ignore_index=True) if shift_parts else
                         pd.DataFrame({"cell": [], "gene": [], "affected_gene": [], "cosine": []}))
        seconds = time.perf_counter() - t_start
        st_counts = {s: int((df["status"] == s).sum()) for s in STATUSES}
        n_scored = int(np.isfinite(df["cosine"]).sum())
        report = {
            "mode": mode, "genes": None if requested is None else [r["gene"] for r in requested],
            "all_expressed": bool(all_expressed), "cells": cells_desc, "n_cells": int(n_cells),
            "n_empty_cells": int(empty.sum()), "n_rows": int(len(df)), "n_scored": n_scored,
            "n_computed": int(compute.sum()), "status_counts": st_counts,
            "genes_not_in_dictionary": not_in_dict, "pooling": pooling, "emb_layer": emb_layer, "layer": layer,
            "model": type(model).__name__, "tokenizer_max_length": max_len, "special_tokens": specials,
            "n_forward_rows": int(n_fwd_rows), "n_forward_tokens": int(n_fwd_tokens),
            "batch_tokens": int(batch_tokens), "chunk_tokens": int(chunk_tokens), "seconds": seconds,
            "perturbations_per_s": (int(compute.sum()) / seconds) if seconds > 0 else math.inf,
            "phases": dict(clock.phases), "statuses": STATUSES,
        }
        written = shifts_written = None
        if out is not None:
            written = _write_table(df, Path(out), out_fmt, report)
        if gene_shifts_out is not None:
            shifts_written = _write_table(shifts_df, Path(gene_shifts_out), _table_format(gene_shifts_out, ""), report)
    return PerturbResult(df, shifts_df, report, written, shifts_written)


def _shifts(k, kc, p_kind, p_trunc, p_gene, pert_cu, pert_src, tok_p, orig_cache, first, last_gene, ids, cu, inv,
            mean_gene_cos, shift_parts, n_trunc_refs, obs_names, rows_sel):
    """Per-gene cosines of one chunk: every perturbed token that is a gene of the original cell
    (not ``<cls>``/``<eos>``, not the moved / inserted gene) against that gene in the original."""
    import pandas as pd

    n_ref = n_trunc_refs  # truncated-original rows sit before the perturbed ones in pert_*
    sl = slice(int(pert_cu[n_ref]), None)
    src = pert_src[sl]
    pcu = pert_cu[n_ref:] - pert_cu[n_ref]
    kk = np.arange(len(k))
    r = np.repeat(kk, np.diff(pcu))
    j = np.arange(src.size) - pcu[:-1][r]
    cell = kc[r]
    kind = p_kind[k][r]
    trunc = p_trunc[k][r]
    gene_tok = (src >= first[cell]) & (src <= last_gene[cell]) & (src >= 0)
    moved = (kind == _MOVE) & (j == first[cell])
    sel = gene_tok & ~moved
    if trunc.any():
        sel &= ~(trunc & (src == last_gene[cell]))
    # position in the compared original: the truncated original lacks the last gene
    ref_pos = np.where(trunc & (src > last_gene[cell]), src - 1, src)
    idx = np.flatnonzero(sel)
    a = tok_p[idx].astype(np.float64)
    b = np.empty_like(a)
    for c_t in set(zip(cell[idx].tolist(), trunc[idx].tolist())):
        mask = (cell[idx] == c_t[0]) & (trunc[idx] == c_t[1])
        o = orig_cache[(int(c_t[0]), bool(c_t[1]))][1]
        b[mask] = o[ref_pos[idx][mask]]
    cs = _cosine(a, b)
    sums = np.bincount(r[idx], weights=cs, minlength=len(k))
    cnt = np.bincount(r[idx], minlength=len(k))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_gene_cos[k] = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
    affected = inv[ids[cu[:-1][cell[idx]] + src[idx]]]
    shift_parts.append(pd.DataFrame({"cell": obs_names[rows_sel][cell[idx]], "gene": p_gene[k][r[idx]].astype(str),
                                     "affected_gene": affected.astype(str), "cosine": cs}))


def _embed(model, batch, *, pooling, layer, max_tokens, per_token, clock):
    """:func:`embed_rows` of every row, in row order. On CPU, rows of a length shared by at least
    :data:`_MIN_SAME_LENGTH_ROWS` rows are embedded apart from the others: the CPU attention
    backend (torch sdpa) runs rows of one length as a plain ``[B, L]`` batch (its flash kernel, no
    mask) but mixed lengths through a padded ``[B, H, L, L]`` bias (the math kernel), which costs
    several times more for cells of hundreds of genes. The perturbations of one cell have one
    length (n - 1 for delete, n for overexpress), so with ``all_expressed`` nearly every row is in
    such a group; the rest (originals, a gene list over cells of different sizes) go together.
    On CUDA the varlen kernels take mixed lengths as they are."""
    from omicskern.batch import Batch

    if model.device.type != "cpu":
        return embed_rows(model, batch, pooling=pooling, layer=layer, max_tokens=max_tokens, per_token=per_token,
                          clock=clock)
    cu = np.asarray(batch.cu_seqlens)
    lengths = np.diff(cu)
    order = np.argsort(-lengths, kind="stable")
    buckets = [b for b in np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1) if b.size]
    # a length shared by few rows (the originals, a gene list over cells of different sizes)
    # would make a forward pass of its own: those rows go together, mixed, as embed_rows groups them
    mixed = [b for b in buckets if b.size < _MIN_SAME_LENGTH_ROWS]
    groups = [b for b in buckets if b.size >= _MIN_SAME_LENGTH_ROWS]
    if mixed:
        groups.append(np.sort(np.concatenate(mixed)))
    if len(groups) == 1:
        return embed_rows(model, batch, pooling=pooling, layer=layer, max_tokens=max_tokens, per_token=per_token,
                          clock=clock)
    pooled = tokens = None
    for rows in groups:
        sub = batch.select(rows)
        e = embed_rows(model, Batch(np.asarray(sub.input_ids), np.asarray(sub.cu_seqlens)), pooling=pooling,
                       layer=layer, max_tokens=max_tokens, per_token=per_token, clock=clock)
        if pooled is None:
            pooled = np.empty((len(batch), e.pooled.shape[1]), np.float32)
            if per_token:
                tokens = np.empty((int(cu[-1]), e.tokens.shape[1]), np.float32)
        pooled[rows] = e.pooled
        if per_token:
            ln = lengths[rows]
            start = np.repeat(cu[:-1][rows] - np.concatenate([[0], np.cumsum(ln)[:-1]]), ln)
            tokens[start + np.arange(int(ln.sum()))] = e.tokens
    from omicskern.pipelines.engine import RowEmbeddings

    return RowEmbeddings(pooled, tokens)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity in float64 (0-norm rows give NaN)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    num = np.einsum("ij,ij->i", a, b)
    den = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _gene_keys(td: dict):
    return (k for k in td if not (k.startswith("<") and k.endswith(">")))


def _inverse_dictionary(td: dict) -> np.ndarray:
    """token id -> dictionary key (object array)."""
    n = max(td.values()) + 1 if td else 0
    inv = np.full(n, "", dtype=object)
    for g, t in td.items():
        if inv[t] == "":
            inv[t] = g
    return inv


def _table_format(path, what: str) -> str:
    p = str(path).lower()
    for suf, fmt in _TABLE_SUFFIXES.items():
        if p.endswith(suf):
            return fmt
    raise ValueError(f"{what}={path}: the table is written as .tsv or .parquet (named by its suffix: "
                     f"{', '.join(_TABLE_SUFFIXES)})")


def _write_table(df, path: Path, fmt: str, report: dict) -> Path:
    from omicskern.pipelines.jobs import atomic_write

    meta = json.dumps({k: v for k, v in report.items() if k != "statuses"}, default=str)

    def write(tmp: Path) -> None:
        if fmt == "tsv":
            df.to_csv(tmp, sep="\t", index=False, na_rep="")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            t = pa.Table.from_pandas(df, preserve_index=False)
            t = t.replace_schema_metadata({**(t.schema.metadata or {}), _META_KEY: meta.encode()})
            pq.write_table(t, str(tmp))

    return atomic_write(path, write)


def _progress(enabled: bool, total: int):
    if not enabled or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="perturbations", unit_scale=True, desc="perturbing")


def read_report(path) -> dict | None:
    """The report recorded in a parquet table written by :func:`perturb_cells` (None for TSV)."""
    import pyarrow.parquet as pq

    md = pq.read_schema(str(path)).metadata or {}
    raw = md.get(_META_KEY)
    return json.loads(raw) if raw else None
