"""Reliability of the single-cell tokenizers: the C++ core called from several Python threads,
uint64 counts too large for int64, Geneformer's own (h5ad path) arithmetic bit for bit, its
duplicate-gene layout, and scGPT's all-zero cells."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from omicskern._native import load_C
from omicskern.errors import InvalidCountsError
from omicskern.tokenizers import BinnedValueTokenizer, RankValueTokenizer

from .cells_reference import geneformer_scipy, geneformer_values, random_counts

PBMC = Path(__file__).resolve().parents[1] / "data" / "sc" / "pbmc_10x_v3_small.h5ad"


# ---- 1. the C++ core from several Python threads -----------------------------------------------
def _csr(seed, dtype, n_cells=3000, n_genes=600):
    rng = np.random.default_rng(seed)
    A = rng.negative_binomial(1, 0.3, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < 0.25)
    A[::17] = 0
    return sp.csr_matrix(A.astype(dtype))


def _encode_all(C, X, n_genes):
    col = np.arange(n_genes, dtype=np.int32)
    tok = np.arange(n_genes, dtype=np.int32) + 10
    med = np.linspace(0.5, 3.0, n_genes)
    data = X.data if X.data.dtype in (np.float32, np.float64, np.int32, np.int64) else X.data.astype(np.int64)
    r = C.cells_rank_value(X.indptr, X.indices, data, n_genes, col, tok, med, max_genes=300, cls_id=2, eos_id=3,
                           num_threads=2, arithmetic=1)
    b = C.cells_bin_values(X.indptr, X.indices, data, n_genes, tok, np.linspace(0, 1, 50), cls_id=1,
                           skip_empty=False, num_threads=2)
    k, _ = C.cells_bin_count(X.indptr, X.indices, data, n_genes, tok, num_threads=2)
    return r["ids"].copy(), r["offsets"].copy(), b["ids"].copy(), b["values"].copy(), k.copy()


def test_encoders_from_many_threads_equal_single_threaded():
    """dispatch() runs with the GIL released; it used to call py::isinstance<py::array_t<T>>
    there (numpy dtype objects built and freed without the GIL: refcount races in release
    builds, a PyGILState_Check abort in debug / sanitizer builds). Many threads on different
    dtypes at once must give exactly the single-threaded results."""
    C = load_C()
    inputs = [_csr(i, dt) for i, dt in enumerate([np.float32, np.float64, np.int32, np.uint16] * 2)]
    expected = [_encode_all(C, X, X.shape[1]) for X in inputs]
    barrier = threading.Barrier(len(inputs))

    def work(i):
        barrier.wait()
        out = []
        for _ in range(6):
            out.append(_encode_all(C, inputs[i], inputs[i].shape[1]))
        return i, out

    with ThreadPoolExecutor(len(inputs)) as ex:
        results = list(ex.map(work, range(len(inputs))))
    for i, outs in results:
        for got in outs:
            for g, e in zip(got, expected[i]):
                np.testing.assert_array_equal(g, e)


def test_tokenizers_from_many_threads():
    X = [_csr(10 + i, dt, 800, 200) for i, dt in enumerate([np.float32, np.float64, np.int32, np.uint16])]
    genes = [f"G{j}" for j in range(200)]
    td = {g: j + 5 for j, g in enumerate(genes)} | {"<cls>": 0, "<eos>": 1, "<pad>": 2}
    med = {g: 0.5 + (j % 7) / 3 for j, g in enumerate(genes)}
    rank = RankValueTokenizer(td, med, preset="V2", integer_check="ignore")
    binr = BinnedValueTokenizer(td, n_bins=21, tie_break="random", seed=3)
    want = [(rank.tokenize(x, gene_ids=genes).input_ids, binr.tokenize(x, gene_ids=genes).values) for x in X]

    def work(i):
        return [(rank.tokenize(X[i], gene_ids=genes).input_ids, binr.tokenize(X[i], gene_ids=genes).values)
                for _ in range(4)]

    with ThreadPoolExecutor(4) as ex:
        for i, outs in enumerate(ex.map(work, range(4))):
            for ids, vals in outs:
                np.testing.assert_array_equal(ids, want[i][0])
                np.testing.assert_array_equal(vals, want[i][1])


# ---- 1b. uint64 counts ---------------------------------------------------------------------------
def test_uint64_count_too_large_is_not_called_negative():
    A = np.array([[1, 2, 0], [0, 2**63 + 5, 1]], dtype=np.uint64)
    genes = ["A", "B", "C"]
    td = {"A": 5, "B": 6, "C": 7, "<cls>": 0, "<eos>": 1}
    med = {"A": 1.0, "B": 1.0, "C": 1.0}
    for tok in (RankValueTokenizer(td, med, preset="V2"), BinnedValueTokenizer(td)):
        with pytest.raises(InvalidCountsError, match="too large") as ei:
            tok.tokenize(sp.csr_matrix(A), gene_ids=genes)
        assert "negative" not in str(ei.value)
        assert ei.value.row == 1 and ei.value.column == 1 and ei.value.kind == "too_large"
    # below 2**63 uint64 is fine
    ok = RankValueTokenizer(td, med, preset="V2").tokenize(sp.csr_matrix(A[:1]), gene_ids=genes)
    assert list(ok[0]) == [0, 6, 5, 1]


# ---- 2. Geneformer's arithmetic ------------------------------------------------------------------
def _tok(medians, **kw):
    genes = [f"ENSG{j:011d}" for j in range(len(medians))]
    td = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3} | {g: 10 + j for j, g in enumerate(genes)}
    return genes, RankValueTokenizer(td, dict(zip(genes, medians)), **kw)


def test_issue_example_a_last_bit_rounding():
    med = [384.61538461538464, 256.4102564102564]
    # upstream: scipy's X / n * 1e4 / med multiplies by reciprocals
    assert 3 * (1 / 120) * 1e4 * (1 / med[0]) == 0.65
    assert 2 * (1 / 120) * 1e4 * (1 / med[1]) == 0.6499999999999999
    X = sp.csr_matrix(np.array([[3, 2]], np.float32))
    np.testing.assert_array_equal(geneformer_scipy(X, np.array([120.0]), med).data, [0.65, 0.6499999999999999])
    genes, tok = _tok(med)
    assert tok.arithmetic == "geneformer"
    assert list(tok.tokenize(X, gene_ids=genes, total_counts=np.array([120.0]))[0]) == [2, 10, 11, 3]
    _, exact = _tok(med, arithmetic="exact")
    assert list(exact.tokenize(X, gene_ids=genes, total_counts=np.array([120.0]))[0]) == [2, 11, 10, 3]


def test_issue_example_b_float32_n_counts():
    import anndata as ad
    import pandas as pd

    med = [625.0, 357.1428571428571]
    X = sp.csr_matrix(np.array([[7, 4]], np.float32))
    # float32, as adata.X.sum(axis=1) on float32 X (the cell's other genes are not in X here)
    n32 = np.asarray(X.sum(axis=1)).ravel() + np.float32(110)
    assert n32.dtype == np.float32 and n32[0] == 121
    up = geneformer_scipy(X, n32, med).data
    np.testing.assert_array_equal(up, [0.92561982421875, 0.9256197753906251])
    genes, tok = _tok(med, preset="V2")
    adata = ad.AnnData(X, obs=pd.DataFrame({"n_counts": n32}, index=["c0"]),
                       var=pd.DataFrame({"ensembl_id": genes}, index=genes))
    assert list(tok.tokenize(adata)[0]) == [2, 10, 11, 3]  # upstream: 0.9256198242 > 0.9256197754
    _, exact = _tok(med, arithmetic="exact")
    assert list(exact.tokenize(adata)[0]) == [2, 11, 10, 3]
    # float64 n_counts: float64 throughout, as upstream
    adata.obs["n_counts"] = n32.astype(np.float64)
    up64 = geneformer_scipy(X, adata.obs["n_counts"].to_numpy(), med).data
    want = [2] + list(np.array([10, 11])[np.argsort(-up64, kind="stable")]) + [3]
    assert list(tok.tokenize(adata)[0]) == want


def _upstream_ids(X, n_counts, medians, tokens, n_genes):
    """Geneformer's tokenize_anndata on the dictionary columns: the scipy expression, then a
    stable descending argsort of each row's stored values (column order)."""
    Xn = geneformer_scipy(X, n_counts, medians)
    out = []
    for i in range(Xn.shape[0]):
        a, b = Xn.indptr[i], Xn.indptr[i + 1]
        order = np.argsort(-Xn.data[a:b], kind="stable")
        out.append(tokens[Xn.indices[a:b][order]][:n_genes])
    return out


@pytest.mark.parametrize("xdt", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("ndt", [np.float32, np.float64, np.int64])
def test_random_near_ties_match_upstream_expression(xdt, ndt):
    rng = np.random.default_rng(7)
    n_genes = 40
    X = random_counts(3, n_cells=200, n_genes=n_genes, tie_values=True, dtype=xdt)
    X.sum_duplicates()
    X.sort_indices()
    # medians made of few distinct ratios: many exact and last-bit near ties
    base = np.array([1.3, 2.6, 3.9, 256.4102564102564, 384.61538461538464, 357.1428571428571, 625.0])
    med = base[rng.integers(0, len(base), n_genes)] * rng.choice([1, 2, 3], n_genes)
    n = np.asarray(X.sum(axis=1)).ravel().astype(ndt) + rng.integers(0, 3, X.shape[0]).astype(ndt)
    n[n == 0] = 1
    genes, tok = _tok(list(med), preset="V1", integer_check="ignore")
    tokens = np.arange(n_genes) + 10
    got = tok.tokenize(X, gene_ids=genes, total_counts=n)
    want = _upstream_ids(X, n, med, tokens, 2048)
    nonempty = [i for i in range(X.shape[0]) if X[i].nnz]
    assert list(got.source) == nonempty
    for k, i in enumerate(nonempty):
        np.testing.assert_array_equal(got[k], want[i])
        # the numpy transcription equals scipy's expression bit for bit
        row = X[i]
        v = geneformer_values(row.data, n[i:i + 1], med[row.indices])
        np.testing.assert_array_equal(v, geneformer_scipy(row, n[i:i + 1], med).data)


@pytest.mark.parametrize("ndt", [np.float32, np.float64])
def test_real_pbmc_matches_upstream_expression(ndt):
    import anndata as ad

    a = ad.read_h5ad(PBMC)
    genes = list(a.var["ensembl_id"])
    rng = np.random.default_rng(0)
    med = rng.choice([0.5, 1.0, 1.5, 2.0, 3.0, 384.61538461538464, 256.4102564102564], len(genes))
    td = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3} | {g: 10 + j for j, g in enumerate(genes)}
    a.obs["n_counts"] = np.asarray(a.X.sum(axis=1)).ravel().astype(ndt)
    tok = RankValueTokenizer(td, dict(zip(genes, med)), preset="V2")
    got = tok.tokenize(a)
    X = a.X.tocsr()
    want = _upstream_ids(X, a.obs["n_counts"].to_numpy(), med, np.arange(len(genes)) + 10, 4094)
    kept = [i for i in range(X.shape[0]) if X[i].nnz]
    assert list(got.source) == kept
    n_diff_exact = 0
    exact = RankValueTokenizer(td, dict(zip(genes, med)), preset="V2", arithmetic="exact").tokenize(a)
    for k, i in enumerate(kept):
        np.testing.assert_array_equal(got[k], np.concatenate([[2], want[i], [3]]))
        n_diff_exact += not np.array_equal(exact[k], got[k])
    assert n_diff_exact > 0  # the data does exercise the difference


# ---- 3. duplicate genes as Geneformer lays them out -----------------------------------------------
def test_literal_duplicate_id_appears_twice_with_geneformer_layout():
    genes = ["ENSG1", "ENSG2", "ENSG1", "ENSG3"]
    td = {"ENSG1": 5, "ENSG2": 6, "ENSG3": 7}
    med = {"ENSG1": 1.0, "ENSG2": 2.0, "ENSG3": 4.0}
    X = sp.csr_matrix(np.array([[3, 2, 1, 4]], np.float32))
    summed = RankValueTokenizer(td, med, preset="V1").tokenize(X, gene_ids=genes, total_counts=[10.0])
    assert list(summed[0]) == [5, 6, 7]          # 4/1, 2/2, 4/4 (tie: first column)
    gf = RankValueTokenizer(td, med, preset="V1", duplicate_genes="geneformer")
    out = gf.tokenize(X, gene_ids=genes, total_counts=[10.0])
    assert list(out[0]) == [5, 6, 5, 7]          # 3/1, 2/2 = 1/1 (column 1 before 2), 4/4


def test_collapsed_genes_go_last_with_geneformer_layout():
    # two symbols mapping to one Ensembl ID: summed and placed after the other genes
    genes = ["SYMA", "ENSG2", "SYMA2", "ENSG3"]
    table = {"SYMA": "ENSG1", "SYMA2": "ENSG1"}
    td = {"ENSG1": 5, "ENSG2": 6, "ENSG3": 7}
    med = {"ENSG1": 2.0, "ENSG2": 1.0, "ENSG3": 1.0}
    X = sp.csr_matrix(np.array([[1, 2, 1, 2]], np.float64))
    # values: ENSG1 (1+1)/2 = 1, ENSG2 2, ENSG3 2 -> ties at 2 by column; ENSG1 alone at 1
    X2 = sp.csr_matrix(np.array([[2, 1, 2, 1]], np.float64))  # ENSG1 (4)/2 = 2, ENSG2 1, ENSG3 1
    for dup, want in (("sum", [5, 6, 7]), ("geneformer", [5, 6, 7])):
        tok = RankValueTokenizer(td, med, preset="V1", symbol_table=table, duplicate_genes=dup)
        assert list(tok.tokenize(X2, gene_ids=genes, total_counts=[6.0])[0]) == want
    X3 = sp.csr_matrix(np.array([[2, 4, 2, 0]], np.float64))  # ENSG1 4/2 = 2 ties ENSG2 4/2... med 1
    med3 = {"ENSG1": 2.0, "ENSG2": 2.0, "ENSG3": 1.0}
    s = RankValueTokenizer(td, med3, preset="V1", symbol_table=table).tokenize(X3, gene_ids=genes,
                                                                               total_counts=[8.0])
    g = RankValueTokenizer(td, med3, preset="V1", symbol_table=table, duplicate_genes="geneformer").tokenize(
        X3, gene_ids=genes, total_counts=[8.0])
    assert list(s[0]) == [5, 6]   # tie at 2: ENSG1 sits at its first column (0)
    assert list(g[0]) == [6, 5]   # upstream: the collapsed ENSG1 is the last column


# ---- 4. scGPT keeps all-zero cells -----------------------------------------------------------------
def test_binned_keeps_empty_cells_as_cls_by_default():
    genes = ["A", "B", "C"]
    vocab = {"<cls>": 0, "<pad>": 1, "A": 2, "B": 3, "C": 4}
    X = sp.csr_matrix(np.array([[0, 0, 0], [1, 2, 0], [0, 0, 0], [0, 0, 5]], np.float32))
    out = BinnedValueTokenizer(vocab, n_bins=5).tokenize(X, gene_ids=genes)
    assert list(out.source) == [0, 1, 2, 3]
    assert list(out[0]) == [0] and list(out.row_values(0)) == [0]
    assert list(out[2]) == [0] and list(out[1]) == [0, 2, 3]
    assert out.report.n_empty == 0 and out.report.n_tokenized == 4
    old = BinnedValueTokenizer(vocab, n_bins=5, skip_empty=True).tokenize(X, gene_ids=genes)
    assert list(old.source) == [1, 3] and old.report.n_empty == 2
    # chunks: source stays the input row
    parts = list(BinnedValueTokenizer(vocab, n_bins=5, chunk_size=3).iter_tokenize(X, gene_ids=genes))
    assert [list(p.source) for p in parts] == [[0, 1, 2], [3]]


@pytest.mark.parametrize("threads", [2.5, True, "2"], ids=["float", "bool", "str"])
def test_cell_tokenizers_refuse_non_integer_threads(threads):
    from omicskern.tokenizers import BinnedValueTokenizer, RankValueTokenizer

    with pytest.raises(TypeError, match="num_threads must be an int"):
        RankValueTokenizer({"<pad>": 0, "G1": 1}, {"G1": 1.0}, num_threads=threads)
    with pytest.raises(TypeError, match="num_threads must be an int"):
        BinnedValueTokenizer({"<pad>": 0, "<cls>": 1, "G1": 2}, num_threads=threads)
