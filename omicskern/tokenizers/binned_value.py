"""scGPT's value binning + gene tokens, in C++ over CSR row chunks.

Per cell, over its nonzero values in the genes kept (in the vocabulary and in the optional gene
subset): ``edges = numpy.quantile(values, numpy.linspace(0, 1, n_bins - 1))``, each value gets
``numpy.digitize(value, edges)`` in ``1 .. n_bins - 1`` (zeros are not tokens). With
``tie_break="random"`` it gets scGPT's ``_digitize(..., side="both")`` instead: a uniform draw
between the left and right digitization, the draws taken from ``numpy.random.RandomState(seed)``
in scGPT's order (one ``rand(n)`` per non-empty cell, in cell order), so output equals scGPT's
``binning`` after ``np.random.seed(seed)``. Tokens: ``<cls>`` (value ``cls_value``, 0 as in scGPT)
then the genes in column order with their bins; ``max_length`` (including ``<cls>``) keeps a seeded
random subset (scGPT's ``pad_batch`` samples too, from numpy's global stream: the subset differs)
or the most expressed genes.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from omicskern.batch import Batch
from omicskern.errors import MissingColumnError, NoMatchingGenesError
from omicskern.io.cells import CellMatrix, Chunk
from omicskern.io.gene_dict import load_scgpt_vocab
from omicskern.tokenizers.cells_base import CellTokenizer, TokenizeReport


#: ``truncate=`` choices (see :class:`BinnedValueTokenizer`)
TRUNCATE_MODES = ("sample", "top", "scgpt", "randperm")


class BinnedValueTokenizer(CellTokenizer):
    """scGPT binned-value tokenizer (``binning`` + ``tokenize_and_pad_batch`` semantics).

    Args:
        vocab: gene symbol -> id (dict, or scGPT's ``vocab.json``).
        n_bins: 51 in scGPT (bins 1..50 for nonzero values; 0 would be a zero).
        gene_column: var column with the symbols (``None``: var_names).
        gene_subset: genes to keep (e.g. highly variable genes): a list of symbols, a boolean
            mask [n_genes], or the name of a boolean var column (``"highly_variable"``).
        tie_break: ``"deterministic"`` (``numpy.digitize``) or ``"random"`` (scGPT's default
            ``side="both"`` digitize with draws from ``numpy.random.RandomState(seed)``).
        seed: seed of the random tie-break and of the gene sampling.
        max_length: tokens per cell including ``<cls>`` (``None``: all nonzero genes); scGPT's
            ``max_len``.
        truncate: ``"sample"`` (seeded random subset in C++, kept genes in column order),
            ``"top"`` (most expressed genes, column order) or ``"scgpt"``: scGPT's ``pad_batch``
            replayed exactly - ``np.random.choice(n - 1, max_length - 1, replace=False)`` per cell
            longer than ``max_length``, from ``RandomState(seed)``, in numpy's permutation order (a
            Python loop over the long cells only; for reproducing a scGPT run); ``"randperm"``:
            scGPT's ``DataCollator._sample`` (the embedding path, ``embed_data``) replayed -
            ``torch.randperm(n - 1)[:max_length - 1]`` per long cell from a torch generator seeded
            with ``seed`` (= after ``torch.manual_seed(seed)`` in one process), ``<cls>`` kept first,
            the genes in the permutation's order. Binning always comes first, over all the genes.
        cls_token / pad_token / pad_value: scGPT's ``"<cls>"``, ``"<pad>"``, -2.
        append_cls: prepend ``<cls>`` (value ``cls_value``).
        filter_column, obs_columns, integer_check, skip_empty, chunk_size, num_threads: as
            :class:`~omicskern.tokenizers.RankValueTokenizer` (``integer_check`` defaults to
            ``"ignore"``: binned values are usually normalised / log1p; a ``filter_column`` that
            is named must exist). ``skip_empty`` defaults to ``False`` here, as scGPT: a cell with
            no nonzero kept gene stays, as ``[<cls>]`` with value ``cls_value`` (an empty row
            without ``append_cls``), and keeps its obs row in ``source``; ``True`` drops such cells
            (the earlier default: pass it to keep the earlier output).

    Attributes: ``pad_token_id`` / ``cls_token_id`` (ids of ``pad_token`` / ``cls_token``;
    ``None`` / -1 when absent or unused).

    Example:
        >>> tok = BinnedValueTokenizer("vocab.json", n_bins=51, max_length=1200)
        >>> out = tok.tokenize(adata); padded = tok.pad(out)  # genes, values, attention_mask
    """

    filter_column_required = True

    def __init__(self, vocab, *, n_bins: int = 51, gene_column: str | None = None, gene_subset=None,
                 tie_break: str = "deterministic", seed: int = 0, max_length: int | None = None,
                 truncate: str = "sample", cls_token: str = "<cls>", pad_token: str = "<pad>",
                 pad_value: int = -2, cls_value: int = 0, append_cls: bool = True,
                 filter_column: str | None = None, obs_columns: Sequence[str] | dict = (),
                 integer_check: str = "ignore", skip_empty: bool = False, chunk_size: int = 8192,
                 num_threads: int = 0):
        if int(n_bins) < 3:
            raise ValueError(f"n_bins must be >= 3, got {n_bins}")
        if tie_break not in ("deterministic", "random"):
            raise ValueError(f"tie_break must be 'deterministic' or 'random', got {tie_break!r}")
        if truncate not in TRUNCATE_MODES:
            raise ValueError(f"truncate must be one of {', '.join(map(repr, TRUNCATE_MODES))}, got {truncate!r}")
        super().__init__(gene_column=gene_column, filter_column=filter_column, obs_columns=obs_columns,
                         integer_check=integer_check, skip_empty=skip_empty, chunk_size=chunk_size,
                         num_threads=num_threads)
        self.vocab = load_scgpt_vocab(vocab)
        self.n_bins = int(n_bins)
        self.quantiles = np.linspace(0, 1, self.n_bins - 1)
        self.gene_subset = gene_subset
        self.tie_break = tie_break
        self.seed = int(seed)
        self.max_length = None if max_length is None else int(max_length)
        if self.max_length is not None and self.max_length < (2 if append_cls else 1):
            raise ValueError(f"max_length {max_length} leaves no room for genes")
        self.truncate = truncate
        self.append_cls = append_cls
        self.cls_token, self.pad_token = cls_token, pad_token
        self.cls_token_id = -1
        if append_cls:
            if cls_token not in self.vocab:
                raise ValueError(f"{cls_token!r} is not in the vocabulary (append_cls=True needs it)")
            self.cls_token_id = self.vocab[cls_token]
        self.pad_token_id = self.vocab.get(pad_token, None)
        self.pad_value = int(pad_value)
        self.cls_value = int(cls_value)

    # ---- gene matching ----------------------------------------------------------------------
    def _match_genes(self, m: CellMatrix, gene_ids, rep: TokenizeReport) -> np.ndarray:
        """Column -> token id (-1: not in the vocabulary or the subset); fills the gene counts of ``rep``."""
        keys = m.gene_keys(self.gene_column, gene_ids=gene_ids)
        rep.method = f"binned-value ({self.n_bins} bins, {self.tie_break} ties)"
        import pandas as pd

        col_token = pd.Series(keys, dtype=object).map(self.vocab).fillna(-1).to_numpy(np.int64).astype(np.int32)
        in_vocab = col_token >= 0
        rep.n_genes_missing = int((~in_vocab).sum())
        rep.missing_examples = [k for k in keys[~in_vocab][:5] if k]
        if self.gene_subset is not None:
            sub = self.gene_subset
            if isinstance(sub, str):
                mask = np.asarray(m.var[sub], bool) if m.var is not None and sub in m.var.columns else None
                if mask is None:
                    cols = [] if m.var is None else list(map(str, m.var.columns))
                    raise MissingColumnError(f"adata.var has no column {sub!r} for gene_subset "
                                             f"(columns: {', '.join(cols) or 'none'})")
            else:
                arr = np.asarray(sub)
                if arr.dtype == bool:
                    if arr.shape != (m.n_vars,):
                        raise ValueError(f"gene_subset mask has shape {arr.shape}, expected ({m.n_vars},)")
                    mask = arr
                else:
                    mask = np.isin(keys, arr.astype(str))
            rep.n_genes_excluded = int((in_vocab & ~mask).sum())
            col_token[~mask] = -1
        rep.n_genes_matched = int((col_token >= 0).sum())
        if rep.n_genes_matched == 0:
            raise NoMatchingGenesError(
                f"none of the {m.n_vars} genes (e.g. {', '.join(map(str, keys[:3]))}) is in the vocabulary"
                + (" and the gene subset" if self.gene_subset is not None else "")
                + f" ({len(self.vocab)} entries, e.g. {', '.join(list(self.vocab)[:3])}); check gene_column")
        return col_token

    # ---- tokenizing -------------------------------------------------------------------------
    def _begin(self, m: CellMatrix, col_token: np.ndarray, rep: TokenizeReport) -> dict:
        # the random streams continue across chunks, so results do not depend on chunk_size
        rs = np.random.RandomState(self.seed) if self.tie_break == "random" else None
        rs_pad = None
        if self.max_length and self.truncate == "scgpt":
            rs_pad = np.random.RandomState(self.seed)
        elif self.max_length and self.truncate == "randperm":
            import torch

            rs_pad = torch.Generator().manual_seed(self.seed)
        return {"col_token": col_token, "rs": rs, "rs_pad": rs_pad}

    def _encode_chunk(self, C, m: CellMatrix, ch: Chunk, rows, sel_rows, state: dict) -> dict:
        col_token, rs, rs_pad = state["col_token"], state["rs"], state["rs_pad"]
        rands = None
        if rs is not None:
            kept, _ = C.cells_bin_count(ch.indptr, ch.indices, ch.data, m.n_vars, col_token, rows=rows,
                                        base=ch.base, num_threads=self.num_threads)
            rands = rs.random_sample(int(kept.sum()))
        r = C.cells_bin_values(ch.indptr, ch.indices, ch.data, m.n_vars, col_token, self.quantiles,
                               rands=rands, rows=rows, base=ch.base,
                               max_len=0 if rs_pad is not None else (self.max_length or 0),
                               truncate="sample" if self.truncate in ("scgpt", "randperm") else self.truncate,
                               seed=self.seed, global_rows=ch.start + sel_rows, cls_id=self.cls_token_id,
                               cls_value=self.cls_value, skip_empty=self.skip_empty,
                               num_threads=self.num_threads)
        if rs_pad is not None:
            r = self._pad_batch_sample(r, rs_pad)
        return r

    def _pad_batch_sample(self, r: dict, rs) -> dict:
        """scGPT's sampling of the cells longer than max_length, in cell order: pad_batch's
        ``np.random.choice`` (``rs`` a RandomState) or DataCollator's ``torch.randperm`` (``rs`` a
        torch Generator)."""
        ids, vals, offs = r["ids"], r["values"], r["offsets"]
        lengths = np.diff(offs)
        long = np.flatnonzero(lengths > self.max_length)
        if long.size == 0:
            return r
        cls = self.append_cls
        pieces, cursor = [], 0
        for i in long:
            a, n = int(offs[i]), int(lengths[i])
            pieces.append(np.arange(cursor, a))
            k = self.max_length - 1 if cls else self.max_length
            if isinstance(rs, np.random.RandomState):
                idx = rs.choice(n - cls, k, replace=False)
            else:
                import torch

                idx = torch.randperm(n - cls, generator=rs)[:k].numpy()
            idx = np.insert(idx + 1, 0, 0) if cls else idx
            pieces.append(a + idx)
            cursor = int(offs[i + 1])
        pieces.append(np.arange(cursor, len(ids)))
        take = np.concatenate(pieces)
        new_len = np.minimum(lengths, self.max_length)
        out = dict(r)
        out["ids"], out["values"] = ids[take], vals[take]
        out["offsets"] = np.concatenate([[0], np.cumsum(new_len)]).astype(np.int64)
        return out

    def iter_tokenize(self, data, *, gene_ids=None, layer: str | None = None, progress: bool = False,
                      report: TokenizeReport | None = None) -> Iterator[Batch]:
        """Tokenizes chunk by chunk (bounded memory for backed inputs): one
        :class:`~omicskern.batch.Batch` per chunk (``values``: the bins); the random tie-break
        stream continues across chunks, so results do not depend on ``chunk_size``."""
        return self._run(data, gene_ids=gene_ids, layer=layer, progress=progress, report=report)

    def tokenize(self, data, *, gene_ids=None, layer: str | None = None, progress: bool = False) -> Batch:
        """Tokenizes every cell: a ragged :class:`~omicskern.batch.Batch` with ``input_ids`` (gene
        tokens, ``<cls>`` first) and ``values`` (bins, ``cls_value`` for ``<cls>``); ``.report``
        says what was kept."""
        return self._tokenize_all(data, gene_ids=gene_ids, layer=layer, progress=progress)

    def pad(self, tokens: Batch, max_length: int | None = None) -> dict:
        """scGPT-style padded batch: ``genes`` [N, L] (``pad_token``'s id), ``values`` [N, L]
        (``pad_value``), ``attention_mask`` bool [N, L]; ``L`` = min(longest cell, max_length)
        (default: the tokenizer's ``max_length``; longer cells keep their first ``L`` tokens)."""
        if self.pad_token_id is None:
            raise ValueError(f"pad token {self.pad_token!r} is not in the vocabulary")
        limit = max_length or self.max_length
        width = tokens.max_seqlen if limit is None else min(tokens.max_seqlen, int(limit))
        p = tokens.to_padded(pad_id=self.pad_token_id, length=width, pad_value=self.pad_value, truncate=True,
                             num_threads=self.num_threads)
        return {"genes": p.input_ids, "values": p.values, "attention_mask": p.attention_mask}


__all__ = ["BinnedValueTokenizer"]
