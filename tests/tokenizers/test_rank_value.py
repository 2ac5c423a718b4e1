"""RankValueTokenizer (Geneformer rank-value encoding) against the numpy reference in
cells_reference.py: random matrices with the awkward cases, real 10x data, backed h5ad, and bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from omicskern.errors import InvalidCountsError, MissingColumnError, NoMatchingGenesError
from omicskern.tokenizers import RankValueTokenizer

from .cells_reference import dense, rank_value_ref, random_counts

SPECIALS = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}


def make_dicts(keys, seed=0, medians=(0.5, 1.0, 2.0, 3.7), skip=()):
    """Token dictionary (specials first) and medians drawn from a few values (so ties happen)."""
    rng = np.random.default_rng(seed)
    tok = dict(SPECIALS)
    med = {}
    for k in keys:
        if k in skip or k in tok:
            continue
        tok[k] = len(tok)
        med[k] = float(rng.choice(medians))
    return tok, med


def assert_same(out, ref_tokens, ref_rows):
    assert len(out) == len(ref_tokens)
    np.testing.assert_array_equal(out.source, ref_rows)
    for i, ref in enumerate(ref_tokens):
        np.testing.assert_array_equal(out[i], ref, err_msg=f"output cell {i} (input row {ref_rows[i]})")


KEYS40 = [f"ENSG{j:011d}" for j in range(40)]


@pytest.mark.parametrize("dtype", [
    pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64"),
    pytest.param(np.int32, id="i32"), pytest.param(np.int64, id="i64"),
    pytest.param(np.uint16, id="u16-cast")])
@pytest.mark.parametrize("layout", ["sorted", "unsorted", "dup-entries", "explicit-zeros"])
def test_random_matrices_match_reference(dtype, layout):
    X = random_counts(11, n_cells=61, n_genes=40, dtype=dtype, unsorted=layout == "unsorted",
                      duplicates=layout == "dup-entries", explicit_zeros=layout == "explicit-zeros")
    tok, med = make_dicts(KEYS40, skip=KEYS40[30:33])  # three genes missing from the dictionary
    for preset, size in (("V1", 2048), ("V1", 5), ("V2", 2048), ("V2", 7)):
        t = RankValueTokenizer(tok, med, preset=preset, model_input_size=size, chunk_size=17, num_threads=2)
        out = t.tokenize(X, gene_ids=KEYS40)
        ref, rows = rank_value_ref(X, KEYS40, tok, med, model_input_size=size, special=preset == "V2")
        assert_same(out, ref, rows)
        assert out.report.n_empty == 61 - len(rows)
        assert out.report.n_genes_missing == 3


@pytest.mark.parametrize("threads", [1, 2])
def test_ties_follow_column_order(threads):
    # every value equal within a cell: the order is the column order (stable rule), and with
    # > 96 genes the radix path must keep it too
    n_genes = 300
    keys = [f"G{j}" for j in range(n_genes)]
    tok, med = make_dicts(keys, medians=(1.0,))
    X = sp.csr_matrix(np.ones((3, n_genes), np.float32))
    X[1, ::2] = 2  # two tie groups
    X = sp.csr_matrix(X)
    out = RankValueTokenizer(tok, med, preset="V1", gene_column=None, num_threads=threads).tokenize(X, gene_ids=keys)
    np.testing.assert_array_equal(out[0], [tok[k] for k in keys])
    exp1 = [tok[k] for k in keys[::2]] + [tok[k] for k in keys[1::2]]
    np.testing.assert_array_equal(out[1], exp1)


def test_radix_path_near_equal_and_wide_range():
    # long cells (radix sort) whose values differ by one ulp or span many decades, unsorted indices
    rng = np.random.default_rng(5)
    n_genes = 2500
    keys = [f"G{j}" for j in range(n_genes)]
    base = np.array([1.0, np.nextafter(1.0, 2), np.nextafter(np.nextafter(1.0, 2), 2), 1e-6, 3e5, 7.25])
    tok = dict(SPECIALS)
    med = {}
    for j, k in enumerate(keys):
        tok[k] = len(tok)
        med[k] = float(base[j % len(base)] * (1 if j % 11 else rng.uniform(0.1, 10)))
    A = rng.integers(0, 4, size=(20, n_genes)).astype(np.float64)
    A[3] = np.where(rng.random(n_genes) < 0.9, 1.0, 0.0)
    X = sp.csr_matrix(A.astype(np.float32))
    for i in range(X.shape[0]):  # shuffle each row's stored entries
        s, e = X.indptr[i], X.indptr[i + 1]
        p = rng.permutation(e - s)
        X.indices[s:e] = X.indices[s:e][p]
        X.data[s:e] = X.data[s:e][p]
    X.has_sorted_indices = False
    for size in (2048, 4096):
        t = RankValueTokenizer(tok, med, preset="V1", model_input_size=size, num_threads=2)
        out = t.tokenize(X, gene_ids=keys)
        ref, rows = rank_value_ref(X, keys, tok, med, model_input_size=size)
        assert_same(out, ref, rows)


def test_duplicate_gene_ids_are_summed():
    keys = list(KEYS40)
    keys[7] = keys[2]  # columns 2 and 7 are the same gene
    keys[20] = keys[2]
    keys[9] = keys[4]
    X = random_counts(3, n_cells=50, n_genes=40)
    tok, med = make_dicts(KEYS40)
    out = RankValueTokenizer(tok, med, preset="V2").tokenize(X, gene_ids=keys)
    ref, rows = rank_value_ref(X, keys, tok, med, model_input_size=4096, special=True)
    assert_same(out, ref, rows)
    assert out.report.n_duplicate_columns == 3


def test_total_counts_from_obs_column_and_sum_over_all_genes():
    X = random_counts(4, n_cells=40, n_genes=40)
    tok, med = make_dicts(KEYS40, skip=KEYS40[::3])  # a third of the genes are not in the dictionary
    rng = np.random.default_rng(1)
    n_counts = dense(X).sum(1) + rng.integers(1, 50, X.shape[0])
    a = ad.AnnData(X, obs=pd.DataFrame({"n_counts": n_counts}, index=[f"c{i}" for i in range(40)]),
                   var=pd.DataFrame({"ensembl_id": KEYS40}, index=[f"g{j}" for j in range(40)]))
    t = RankValueTokenizer(tok, med, preset="V1")
    out = t.tokenize(a)
    ref, rows = rank_value_ref(X, KEYS40, tok, med, totals=n_counts)
    assert_same(out, ref, rows)
    assert "n_counts" in out.report.total_counts_source
    # without the column: the sum over ALL genes (not only dictionary genes)
    a2 = a.copy()
    del a2.obs["n_counts"]
    out2 = t.tokenize(a2)
    ref2, rows2 = rank_value_ref(X, KEYS40, tok, med)
    assert_same(out2, ref2, rows2)
    assert out2.names[0] == f"c{rows2[0]}"


def test_filter_column_obs_columns_and_keep_empty():
    X = random_counts(6, n_cells=30, n_genes=40)
    tok, med = make_dicts(KEYS40)
    keep = np.arange(30) % 4 != 1
    obs = pd.DataFrame({"filter_pass": keep.astype(int), "cell_type": [f"t{i % 3}" for i in range(30)]},
                       index=[f"c{i}" for i in range(30)])
    a = ad.AnnData(X, obs=obs, var=pd.DataFrame({"ensembl_id": KEYS40}, index=KEYS40))
    t = RankValueTokenizer(tok, med, preset="V2", obs_columns={"cell_type": "label"}, chunk_size=8)
    out = t.tokenize(a)
    ref, rows = rank_value_ref(X, KEYS40, tok, med, model_input_size=4096, special=True, keep=keep)
    assert_same(out, ref, rows)
    np.testing.assert_array_equal(out.obs["label"], obs["cell_type"].to_numpy()[rows])
    assert out.report.n_filtered == int((~keep).sum())
    # empty cells kept: just <cls>, <eos>
    t2 = RankValueTokenizer(tok, med, preset="V2", filter_column=None, skip_empty=False)
    out2 = t2.tokenize(a)
    assert len(out2) == 30
    np.testing.assert_array_equal(out2[0], [2, 3])  # row 0 is empty


def test_symbol_table_maps_symbols_to_ensembl():
    X = random_counts(8, n_cells=20, n_genes=40)
    symbols = [f"SYM{j}" for j in range(40)]
    table = {s: k for s, k in zip(symbols, KEYS40) if not s.endswith("5")}
    tok, med = make_dicts(KEYS40)
    a = ad.AnnData(X, var=pd.DataFrame({"gene_symbol": symbols}, index=symbols))
    out = RankValueTokenizer(tok, med, preset="V1", gene_column="gene_symbol", symbol_table=table).tokenize(a)
    mapped = [table.get(s, s) for s in symbols]
    ref, rows = rank_value_ref(X, mapped, tok, med)
    assert_same(out, ref, rows)
    assert out.report.n_symbol_mapped == len(table)
    assert out.report.n_genes_missing == 40 - len(table)


def test_real_pbmc_in_memory_backed_dense_csc(data_dir):
    path = data_dir / "sc" / "pbmc_10x_v3_small.h5ad"
    a = ad.read_h5ad(path)
    keys = list(a.var["ensembl_id"])
    tok, med = make_dicts(keys, seed=3, medians=(0.2, 0.5, 1.0, 1.5, 4.0), skip=keys[::10])
    ref, rows = rank_value_ref(a.X, keys, tok, med, model_input_size=4096, special=True)
    t = RankValueTokenizer(tok, med, preset="V2", chunk_size=100)
    out_mem = t.tokenize(a)
    assert_same(out_mem, ref, rows)
    assert out_mem.report.n_cells == a.n_obs and out_mem.report.n_genes_missing == len(keys[::10])
    out_path = t.tokenize(str(path))  # backed, streamed from HDF5
    out_backed = t.tokenize(ad.read_h5ad(path, backed="r"))
    for o in (out_path, out_backed):
        np.testing.assert_array_equal(o.input_ids, out_mem.input_ids)
        np.testing.assert_array_equal(o.cu_seqlens, out_mem.cu_seqlens)
        np.testing.assert_array_equal(o.names, out_mem.names)
    out_dense = t.tokenize(a.X.toarray(), gene_ids=keys)
    out_csc = t.tokenize(sp.csc_matrix(a.X), gene_ids=keys)
    for o in (out_dense, out_csc):
        np.testing.assert_array_equal(o.input_ids, out_mem.input_ids)
        np.testing.assert_array_equal(o.cu_seqlens, out_mem.cu_seqlens)


def test_real_wu2020_symbols_through_gencode_table(shared_dir):
    # real T cells labelled by symbol; var['ensembl_id'] was made from the same GENCODE table
    a = ad.read_h5ad(shared_dir / "data" / "sc" / "wu2020_200.h5ad")
    ids = [k for k in a.var["ensembl_id"] if k]
    tok, med = make_dicts(sorted(set(ids)), seed=9, medians=(0.3, 0.9, 1.0, 2.5, 6.0))
    t = RankValueTokenizer(tok, med, preset="V1", gene_column=None,
                           symbol_table=shared_dir / "data" / "genes" / "gencode_v44_ensembl_to_symbol.tsv")
    out = t.tokenize(a)
    ref, rows = rank_value_ref(a.X, list(a.var["ensembl_id"]), tok, med)
    assert_same(out, ref, rows)


def test_padded_output():
    X = random_counts(2, n_cells=25, n_genes=40)
    tok, med = make_dicts(KEYS40)
    out = RankValueTokenizer(tok, med, preset="V2").tokenize(X, gene_ids=KEYS40)
    pad = out.to_padded(pad_id=0)
    L = int(out.lengths.max())
    assert pad["input_ids"].shape == (len(out), L)
    for i in range(len(out)):
        n = out.lengths[i]
        np.testing.assert_array_equal(pad["input_ids"][i, :n], out[i])
        assert (pad["input_ids"][i, n:] == 0).all()
        assert pad["attention_mask"][i].sum() == n
    cut = out.to_padded(pad_id=0, length=4, truncate=True)
    long_cell = int(np.argmax(out.lengths))
    assert out.lengths[long_cell] > 4
    np.testing.assert_array_equal(cut["input_ids"][long_cell], out[long_cell][:4])
    assert cut["attention_mask"][long_cell].all()


# ---- bad input ----------------------------------------------------------------------------------

def _adata(X, n=None):
    n = X.shape[0]
    return ad.AnnData(X, obs=pd.DataFrame(index=[f"cell{i}" for i in range(n)]),
                      var=pd.DataFrame({"ensembl_id": KEYS40[:X.shape[1]]}, index=KEYS40[:X.shape[1]]))


@pytest.mark.parametrize("bad, kind", [(-2.0, "negative"), (np.nan, "not_finite"), (np.inf, "not_finite")])
def test_negative_nan_inf_counts_name_the_cell(bad, kind):
    X = random_counts(1, n_cells=30, n_genes=40).tocsr()
    X.sort_indices()
    X.data[X.indptr[12] + 1] = bad
    col = int(X.indices[X.indptr[12] + 1])
    tok, med = make_dicts(KEYS40)
    t = RankValueTokenizer(tok, med, chunk_size=5, num_threads=2)
    with pytest.raises(InvalidCountsError, match=r"cell 12 \('cell12'\), column %d" % col) as e:
        t.tokenize(_adata(X))
    assert e.value.row == 12 and e.value.column == col and e.value.kind == kind


def test_first_bad_cell_is_reported_whatever_the_threads():
    X = random_counts(1, n_cells=200, n_genes=40).tocsr()
    for r in (150, 40, 170):
        X.data[X.indptr[r]] = -1
    tok, med = make_dicts(KEYS40)
    for threads in (1, 2):
        with pytest.raises(InvalidCountsError, match=r"cell 40 "):
            RankValueTokenizer(tok, med, num_threads=threads).tokenize(_adata(X))


def test_non_integer_counts_warn_error_ignore():
    X = random_counts(1, n_cells=20, n_genes=40).tocsr()
    X.data[X.indptr[7]] += 0.5
    tok, med = make_dicts(KEYS40)
    with pytest.warns(UserWarning, match=r"non-integer.*cell 7 \('cell7'\)"):
        out = RankValueTokenizer(tok, med).tokenize(_adata(X))
    assert out.report.n_non_integer_cells == 1
    with pytest.raises(InvalidCountsError, match=r"cell 7 \('cell7'\).*whole numbers"):
        RankValueTokenizer(tok, med, integer_check="error").tokenize(_adata(X))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RankValueTokenizer(tok, med, integer_check="ignore").tokenize(_adata(X))


def test_missing_var_column_lists_columns():
    tok, med = make_dicts(KEYS40)
    a = _adata(random_counts(1, n_cells=10, n_genes=40))
    with pytest.raises(MissingColumnError, match=r"adata.var has no column 'gene_ids' \(columns: ensembl_id\)"):
        RankValueTokenizer(tok, med, gene_column="gene_ids").tokenize(a)
    with pytest.raises(MissingColumnError, match=r"adata.obs has no column 'donor'"):
        RankValueTokenizer(tok, med, obs_columns=["donor"]).tokenize(a)


def test_no_gene_in_dictionary():
    tok, med = make_dicts([f"OTHER{j}" for j in range(10)])
    with pytest.raises(NoMatchingGenesError, match=r"none of the 40 genes"):
        RankValueTokenizer(tok, med).tokenize(_adata(random_counts(1, n_cells=10, n_genes=40)))


def test_mismatched_shapes_and_bad_totals():
    tok, med = make_dicts(KEYS40)
    X = random_counts(1, n_cells=10, n_genes=40)
    t = RankValueTokenizer(tok, med)
    with pytest.raises(ValueError, match=r"gene_ids has 39 entries but the input has 40 genes"):
        t.tokenize(X, gene_ids=KEYS40[:39])
    with pytest.raises(ValueError, match=r"total_counts has shape \(9,\), expected \(10,\)"):
        t.tokenize(X, gene_ids=KEYS40, total_counts=np.ones(9))
    totals = dense(X).sum(1)
    totals[3] = 0
    with pytest.raises(InvalidCountsError, match=r"cell 3: total counts must be a positive"):
        t.tokenize(X, gene_ids=KEYS40, total_counts=totals)
    with pytest.raises(ValueError, match=r"no gene names"):
        t.tokenize(X)


def test_dictionary_checks():
    tok, med = make_dicts(KEYS40)
    del tok["<eos>"]
    with pytest.raises(ValueError, match=r"special tokens \['<eos>'\]"):
        RankValueTokenizer(tok, med, preset="V2")
    RankValueTokenizer(tok, med, preset="V1")  # V1 needs no specials
    tok2, med2 = make_dicts(KEYS40)
    med2[KEYS40[0]] = 0.0
    with pytest.raises(ValueError, match=r"positive and finite"):
        RankValueTokenizer(tok2, med2)


def test_threaded_path_on_a_large_matrix():
    # >= 2^18 stored values: the C++ core runs multi-threaded (small calls stay on one thread)
    rng = np.random.default_rng(17)
    n_genes = 1500
    keys = [f"G{j}" for j in range(n_genes)]
    A = np.where(rng.random((260, n_genes)) < 0.75, rng.integers(1, 6, (260, n_genes)), 0).astype(np.float32)
    X = sp.csr_matrix(A)
    assert X.nnz >= 1 << 18
    tok, med = make_dicts(keys, medians=(0.5, 1.0, 2.0, 3.7, 11.0))
    out = RankValueTokenizer(tok, med, preset="V1", model_input_size=300, num_threads=2).tokenize(X, gene_ids=keys)
    ref, rows = rank_value_ref(X, keys, tok, med, model_input_size=300)
    assert_same(out, ref, rows)
    for r in (200, 77, 250):
        X.data[X.indptr[r] + 3] = -1
    with pytest.raises(InvalidCountsError, match=r"cell 77,"):
        RankValueTokenizer(tok, med, num_threads=2).tokenize(X, gene_ids=keys)


def test_gene_keys_are_upper_cased_like_geneformer():
    X = random_counts(12, n_cells=15, n_genes=40)
    tok, med = make_dicts(KEYS40)
    lower = [k.lower() for k in KEYS40]
    out = RankValueTokenizer(tok, med, preset="V1").tokenize(X, gene_ids=lower)
    ref, rows = rank_value_ref(X, KEYS40, tok, med)
    assert_same(out, ref, rows)
    with pytest.raises(NoMatchingGenesError):
        RankValueTokenizer(tok, med, preset="V1", upper_case_ids=False).tokenize(X, gene_ids=lower)


def test_equals_geneformer_argsort_when_values_are_distinct(data_dir):
    # Geneformer's own call is np.argsort(-v) (unstable): on cells without tied values it must
    # give exactly our order
    a = ad.read_h5ad(data_dir / "sc" / "pbmc_10x_v3_small.h5ad")
    keys = list(a.var["ensembl_id"])
    rng = np.random.default_rng(4)
    tok = dict(SPECIALS)
    med = {}
    for k in keys:
        tok[k] = len(tok)
        med[k] = float(rng.uniform(0.1, 5.0))  # continuous medians: ties are rare
    out = RankValueTokenizer(tok, med, preset="V1").tokenize(a)
    X = a.X.tocsr()
    gtok = np.array([tok[k] for k in keys])
    gmed = np.array([med[k] for k in keys])
    checked = 0
    for i, row in enumerate(out.source):
        s, e = X.indptr[row], X.indptr[row + 1]
        cols, x = X.indices[s:e], X.data[s:e].astype(np.float64)
        v = x / x.sum() * 10_000 / gmed[cols]
        if len(np.unique(v)) < len(v):
            continue
        np.testing.assert_array_equal(out[i], gtok[cols][np.argsort(-v)][:2048])
        checked += 1
    assert checked > 1000


def test_output_is_a_batch_and_the_report_fills_while_streaming():
    from omicskern.batch import Batch
    from omicskern.tokenizers.cells_base import TokenizeReport

    X = random_counts(6, n_cells=30, n_genes=40)
    tok, med = make_dicts(KEYS40)
    obs = pd.DataFrame({"cell_type": [f"t{i % 3}" for i in range(30)]}, index=[f"c{i}" for i in range(30)])
    a = ad.AnnData(X, obs=obs, var=pd.DataFrame({"ensembl_id": KEYS40}, index=KEYS40))
    t = RankValueTokenizer(tok, med, preset="V2", obs_columns=["cell_type"], chunk_size=8)
    assert (t.max_length, t.pad_token_id, t.cls_token_id, t.eos_token_id) == (4096, 0, 2, 3)
    out = t.tokenize(a)
    assert isinstance(out, Batch) and out.values is None
    assert out.input_ids.dtype == np.int32 and out.cu_seqlens.dtype == np.int64 and out.source.dtype == np.int64
    np.testing.assert_array_equal(out.names, np.asarray(a.obs_names)[out.source])
    np.testing.assert_array_equal(out.obs["cell_type"], obs["cell_type"].to_numpy()[out.source])
    rep = TokenizeReport()
    parts = list(t.iter_tokenize(a, report=rep))
    assert len(parts) == 4 and all(isinstance(p, Batch) and p.report is rep for p in parts)
    assert rep.n_cells == 30 and rep.n_tokenized == len(out) and rep.n_genes == 40
    assert rep.to_dict() == out.report.to_dict()
    joined = Batch.concat(parts)
    np.testing.assert_array_equal(joined.input_ids, out.input_ids)
    np.testing.assert_array_equal(joined.source, out.source)
    p = out.to_padded(pad_id=t.pad_token_id)
    np.testing.assert_array_equal(p.to_ragged().input_ids, out.input_ids)
