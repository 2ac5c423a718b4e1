"""BinnedValueTokenizer (scGPT value binning) against the numpy reference in cells_reference.py:
deterministic and random tie-break (numpy's stream), random matrices, real data, truncation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from omicskern.errors import InvalidCountsError, MissingColumnError, NoMatchingGenesError
from omicskern.tokenizers import BinnedValueTokenizer

from .cells_reference import bin_ref, dense, random_counts

SYMS = [f"GENE{j}" for j in range(40)]


def make_vocab(keys, skip=()):
    vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2}
    for k in keys:
        if k not in skip and k not in vocab:
            vocab[k] = len(vocab)
    return vocab


def col_tokens(vocab, keys, subset=None):
    t = np.array([vocab.get(k, -1) for k in keys])
    if subset is not None:
        t[~np.isin(np.asarray(keys), list(subset))] = -1
    return t


def assert_same(out, toks, vals, rows):
    assert len(out) == len(toks)
    np.testing.assert_array_equal(out.source, rows)
    for i in range(len(toks)):
        np.testing.assert_array_equal(out[i], toks[i], err_msg=f"ids of output cell {i}")
        np.testing.assert_array_equal(out.row_values(i), vals[i], err_msg=f"bins of output cell {i}")


@pytest.mark.parametrize("dtype", [
    pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64"),
    pytest.param(np.int32, id="i32"), pytest.param(np.int64, id="i64")])
@pytest.mark.parametrize("layout", ["sorted", "unsorted", "dup-entries", "explicit-zeros", "ties"])
@pytest.mark.parametrize("tie_break", ["deterministic", "random"])
def test_random_matrices_match_reference(dtype, layout, tie_break):
    X = random_counts(21, n_cells=53, n_genes=40, dtype=dtype, unsorted=layout == "unsorted",
                      duplicates=layout == "dup-entries", explicit_zeros=layout == "explicit-zeros",
                      tie_values=layout == "ties")
    vocab = make_vocab(SYMS, skip=SYMS[10:13])
    for n_bins in (51, 5):
        tok = BinnedValueTokenizer(vocab, n_bins=n_bins, tie_break=tie_break, seed=7, chunk_size=9, num_threads=2)
        out = tok.tokenize(X, gene_ids=SYMS)
        toks, vals, rows = bin_ref(X, col_tokens(vocab, SYMS), n_bins=n_bins, cls_id=1,
                                   rand_seed=7 if tie_break == "random" else None)
        assert_same(out, toks, vals, rows)
        assert out.report.n_genes_missing == 3


def test_random_tie_break_does_not_depend_on_chunks_or_threads():
    X = random_counts(2, n_cells=80, n_genes=40, tie_values=True)
    vocab = make_vocab(SYMS)
    outs = [BinnedValueTokenizer(vocab, tie_break="random", seed=11, chunk_size=c, num_threads=t).tokenize(X, gene_ids=SYMS)
            for c, t in ((1000, 1), (7, 2), (1, 2))]
    for o in outs[1:]:
        np.testing.assert_array_equal(o.values, outs[0].values)
        np.testing.assert_array_equal(o.input_ids, outs[0].input_ids)
    other = BinnedValueTokenizer(vocab, tie_break="random", seed=12).tokenize(X, gene_ids=SYMS)
    assert not np.array_equal(other.values, outs[0].values)


def test_real_mouse_log1p_values_and_duplicate_symbols(shared_dir):
    # real 10x mouse cells; symbols repeat (Rp1 twice: same token for two columns, as scGPT);
    # binned on normalised log1p values (non-integer float32), as scGPT's preprocessing does
    a = ad.read_h5ad(shared_dir / "data" / "sc" / "mouse_10x_10k_subset.h5ad")[:1500].copy()
    X = a.X.astype(np.float32)
    tot = np.asarray(X.sum(1)).ravel()
    tot[tot == 0] = 1
    Xn = sp.csr_matrix(sp.diags((1e4 / tot).astype(np.float32)) @ X)
    Xn.data = np.log1p(Xn.data).astype(np.float32)
    a.layers["log1p"] = Xn
    syms = list(a.var["gene_symbol"])
    vocab = make_vocab(syms, skip=syms[::7])
    for tie in ("deterministic", "random"):
        tok = BinnedValueTokenizer(vocab, gene_column="gene_symbol", tie_break=tie, seed=0, chunk_size=500)
        out = tok.tokenize(a, layer="log1p")
        toks, vals, rows = bin_ref(Xn, col_tokens(vocab, syms), cls_id=1, rand_seed=0 if tie == "random" else None)
        assert_same(out, toks, vals, rows)


def test_real_pbmc_backed_equals_in_memory(data_dir):
    path = data_dir / "sc" / "pbmc_10x_v3_small.h5ad"
    a = ad.read_h5ad(path)
    syms = list(a.var["gene_symbol"])
    vocab = make_vocab(syms)
    tok = BinnedValueTokenizer(vocab, gene_column="gene_symbol", tie_break="random", seed=3, chunk_size=128)
    mem = tok.tokenize(a)
    toks, vals, rows = bin_ref(a.X, col_tokens(vocab, syms), cls_id=1, rand_seed=3)
    assert_same(mem, toks, vals, rows)
    for src in (str(path), ad.read_h5ad(path, backed="r")):
        o = tok.tokenize(src)
        np.testing.assert_array_equal(o.input_ids, mem.input_ids)
        np.testing.assert_array_equal(o.values, mem.values)
        np.testing.assert_array_equal(o.cu_seqlens, mem.cu_seqlens)


def test_gene_subset_list_mask_and_var_column():
    X = random_counts(5, n_cells=30, n_genes=40)
    vocab = make_vocab(SYMS)
    hvg = np.zeros(40, bool)
    hvg[::2] = True
    a = ad.AnnData(X, var=pd.DataFrame({"highly_variable": hvg}, index=SYMS))
    toks, vals, rows = bin_ref(X, col_tokens(vocab, SYMS, subset=[s for s, h in zip(SYMS, hvg) if h]), cls_id=1)
    for subset in ([s for s, h in zip(SYMS, hvg) if h], hvg, "highly_variable"):
        out = BinnedValueTokenizer(vocab, gene_subset=subset).tokenize(a)
        assert_same(out, toks, vals, rows)
        assert out.report.n_genes_excluded == 20
    with pytest.raises(MissingColumnError, match=r"no column 'hvg' for gene_subset \(columns: highly_variable\)"):
        BinnedValueTokenizer(vocab, gene_subset="hvg").tokenize(a)


def test_max_len_top_and_sample():
    X = random_counts(9, n_cells=40, n_genes=40, density=0.6)
    vocab = make_vocab(SYMS)
    full = BinnedValueTokenizer(vocab).tokenize(X, gene_ids=SYMS)
    D = dense(X)
    top = BinnedValueTokenizer(vocab, max_length=6, truncate="top").tokenize(X, gene_ids=SYMS)
    s1 = BinnedValueTokenizer(vocab, max_length=6, truncate="sample", seed=1).tokenize(X, gene_ids=SYMS)
    s1b = BinnedValueTokenizer(vocab, max_length=6, truncate="sample", seed=1, chunk_size=3,
                               num_threads=1).tokenize(X, gene_ids=SYMS)
    s2 = BinnedValueTokenizer(vocab, max_length=6, truncate="sample", seed=2).tokenize(X, gene_ids=SYMS)
    np.testing.assert_array_equal(s1.input_ids, s1b.input_ids)  # seeded per cell: chunking does not matter
    assert not np.array_equal(s1.input_ids, s2.input_ids)
    tok_col = {vocab[s]: j for j, s in enumerate(SYMS)}
    for i in range(len(full)):
        f_ids, f_vals = full[i], full.row_values(i)
        row = int(full.source[i])
        n = len(f_ids) - 1
        for o in (top, s1):
            ids, vals = o[i], o.row_values(i)
            assert ids[0] == 1 and vals[0] == 0
            assert len(ids) == 1 + min(n, 5)
            # a subset of the full tokens, in column order, with the bins of the full cell
            pos = np.searchsorted(f_ids[1:], ids[1:])  # token ids grow with columns here
            np.testing.assert_array_equal(f_ids[1:][pos], ids[1:])
            np.testing.assert_array_equal(f_vals[1:][pos], vals[1:])
            assert (np.diff(pos) > 0).all()
        if n > 5:
            # top: the 5 largest values, ties by lower column
            cols = np.array([tok_col[t] for t in f_ids[1:]])
            order = np.lexsort((cols, -D[row, cols]))[:5]
            np.testing.assert_array_equal(top[i][1:], np.sort(f_ids[1:][order]))


def test_pad_scgpt_style():
    X = random_counts(9, n_cells=12, n_genes=40)
    vocab = make_vocab(SYMS)
    tok = BinnedValueTokenizer(vocab, pad_value=-2)
    out = tok.tokenize(X, gene_ids=SYMS)
    p = tok.pad(out)
    L = int(out.lengths.max())
    assert p["genes"].shape == p["values"].shape == p["attention_mask"].shape == (len(out), L)
    i = int(np.argmin(out.lengths))
    n = out.lengths[i]
    assert (p["genes"][i, n:] == vocab["<pad>"]).all() and (p["values"][i, n:] == -2).all()
    np.testing.assert_array_equal(p["values"][i, :n], out.row_values(i))


def test_no_cls_and_keep_empty():
    X = random_counts(4, n_cells=12, n_genes=40)
    vocab = make_vocab(SYMS)
    out = BinnedValueTokenizer(vocab, append_cls=False, skip_empty=False).tokenize(X, gene_ids=SYMS)
    toks, vals, rows = bin_ref(X, col_tokens(vocab, SYMS), skip_empty=False)
    assert_same(out, toks, vals, rows)
    assert len(out[0]) == 0


def test_bad_input():
    X = random_counts(1, n_cells=20, n_genes=40).tocsr()
    X.data[X.indptr[9]] = -1
    vocab = make_vocab(SYMS)
    a = ad.AnnData(X, obs=pd.DataFrame(index=[f"bc{i}" for i in range(20)]), var=pd.DataFrame(index=SYMS))
    with pytest.raises(InvalidCountsError, match=r"cell 9 \('bc9'\), column \d+ \('GENE\d+'\): count is negative"):
        BinnedValueTokenizer(vocab).tokenize(a)
    X.data[X.indptr[9]] = np.nan
    with pytest.raises(InvalidCountsError, match=r"cell 9 \('bc9'\).*not finite"):
        BinnedValueTokenizer(vocab, tie_break="random").tokenize(a)
    with pytest.raises(NoMatchingGenesError):
        BinnedValueTokenizer(make_vocab(["X", "Y"])).tokenize(a)
    with pytest.raises(MissingColumnError, match=r"adata.var has no column 'gene_name'"):
        BinnedValueTokenizer(vocab, gene_column="gene_name").tokenize(a)
    with pytest.raises(ValueError, match=r"'<cls>' is not in the vocabulary"):
        BinnedValueTokenizer({"A": 0})
    with pytest.raises(ValueError, match=r"n_bins must be >= 3"):
        BinnedValueTokenizer(vocab, n_bins=2)


def test_threaded_path_on_a_large_matrix():
    # >= 2^18 stored values: the C++ core runs multi-threaded (small calls stay on one thread)
    rng = np.random.default_rng(3)
    n_genes = 1500
    syms = [f"S{j}" for j in range(n_genes)]
    A = np.where(rng.random((260, n_genes)) < 0.75, rng.integers(1, 6, (260, n_genes)), 0).astype(np.float32)
    X = sp.csr_matrix(A)
    assert X.nnz >= 1 << 18
    vocab = make_vocab(syms)
    out = BinnedValueTokenizer(vocab, tie_break="random", seed=5, num_threads=2).tokenize(X, gene_ids=syms)
    toks, vals, rows = bin_ref(X, col_tokens(vocab, syms), cls_id=1, rand_seed=5)
    assert_same(out, toks, vals, rows)


def test_scgpt_pad_batch_replay():
    # scGPT's pad_batch after np.random.seed(seed): per cell longer than max_len,
    # idx = np.random.choice(n - 1, max_len - 1, replace=False) + 1, <cls> kept first
    X = random_counts(13, n_cells=45, n_genes=40, density=0.5)
    vocab = make_vocab(SYMS)
    max_len = 9
    full = BinnedValueTokenizer(vocab).tokenize(X, gene_ids=SYMS)
    out = BinnedValueTokenizer(vocab, max_length=max_len, truncate="scgpt", seed=21, chunk_size=10).tokenize(X, gene_ids=SYMS)
    np.random.seed(21)
    assert len(out) == len(full)
    n_long = 0
    for i in range(len(full)):
        ids, vals = full[i], full.row_values(i)
        if len(ids) > max_len:
            n_long += 1
            idx = np.insert(np.random.choice(len(ids) - 1, max_len - 1, replace=False) + 1, 0, 0)
            ids, vals = ids[idx], vals[idx]
        np.testing.assert_array_equal(out[i], ids)
        np.testing.assert_array_equal(out.row_values(i), vals)
    assert n_long > 10


def test_output_is_a_batch_and_shared_names():
    from omicskern.batch import Batch

    X = random_counts(9, n_cells=12, n_genes=40)
    vocab = make_vocab(SYMS)
    tok = BinnedValueTokenizer(vocab, max_length=8, chunk_size=5)
    assert (tok.max_length, tok.pad_token_id, tok.cls_token_id) == (8, 0, 1)
    out = tok.tokenize(X, gene_ids=SYMS)
    assert isinstance(out, Batch) and out.report.n_cells == 12
    assert out.input_ids.dtype == np.int32 and out.values.dtype == np.int32 and out.cu_seqlens.dtype == np.int64
    assert out.max_seqlen <= 8 and out.names is None
    with pytest.raises(ValueError, match=r"max_length 1 leaves no room for genes"):
        BinnedValueTokenizer(vocab, max_length=1)


def test_filter_column_named_must_exist_and_plain_matrix_needs_gene_ids():
    X = random_counts(9, n_cells=12, n_genes=40)
    vocab = make_vocab(SYMS)
    keep = np.arange(12) % 3 != 0
    a = ad.AnnData(X, obs=pd.DataFrame({"qc": keep.astype(int)}, index=[f"c{i}" for i in range(12)]),
                   var=pd.DataFrame(index=SYMS))
    out = BinnedValueTokenizer(vocab, filter_column="qc").tokenize(a)
    toks, vals, rows = bin_ref(X[np.flatnonzero(keep)], col_tokens(vocab, SYMS), cls_id=1)
    np.testing.assert_array_equal(out.source, np.flatnonzero(keep)[rows])
    assert out.report.n_filtered == 4 and "'qc' == 1" in out.report.filter_source
    with pytest.raises(MissingColumnError, match=r"adata.obs has no column 'filter_pass' \(columns: qc\)"):
        BinnedValueTokenizer(vocab, filter_column="filter_pass").tokenize(a)
    with pytest.raises(ValueError, match=r"no gene names: pass gene_ids="):
        BinnedValueTokenizer(vocab).tokenize(X)
