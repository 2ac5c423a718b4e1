"""Single-cell inputs and outputs: dictionary formats, building dictionaries from h5ad files,
matrix sources (chunks), writers."""

from __future__ import annotations

import json
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from omicskern.errors import MissingColumnError
from omicskern.tokenizers import RankValueTokenizer
from omicskern.tokenizers.cells_io import (build_gene_dictionary, load_gene_medians, load_scgpt_vocab,
                                           load_symbol_table, load_token_dictionary, open_cells, save_gene_dict)
from omicskern.tokenizers.cells_result import CellTokens

from .cells_reference import dense, random_counts


@pytest.mark.parametrize("suffix", [".pkl", ".json", ".tsv"])
def test_dictionary_formats_round_trip(tmp_path, suffix):
    tokens = {"<pad>": 0, "<mask>": 1, "ENSG00000000003": 2, "ENSG00000000005": 3}
    medians = {"ENSG00000000003": 1.25, "ENSG00000000005": 0.1 + 0.2}
    save_gene_dict(tokens, tmp_path / f"tok{suffix}")
    save_gene_dict(medians, tmp_path / f"med{suffix}")
    assert load_token_dictionary(tmp_path / f"tok{suffix}") == tokens
    assert load_gene_medians(tmp_path / f"med{suffix}") == medians  # floats exact (repr)


def test_geneformer_pickles_and_headers(tmp_path):
    with open(tmp_path / "token_dictionary.pkl", "wb") as f:
        pickle.dump({"<pad>": 0, "ENSG1": 5}, f)
    assert load_token_dictionary(tmp_path / "token_dictionary.pkl") == {"<pad>": 0, "ENSG1": 5}
    (tmp_path / "m.tsv").write_text("ensembl_id\tmedian\nENSG1\t2.5\n")
    assert load_gene_medians(tmp_path / "m.tsv") == {"ENSG1": 2.5}
    (tmp_path / "vocab.json").write_text(json.dumps({"<pad>": 0, "<cls>": 1, "CD3E": 2}))
    assert load_scgpt_vocab(tmp_path / "vocab.json")["CD3E"] == 2
    with pytest.raises(FileNotFoundError, match="gene dictionary file not found"):
        load_token_dictionary(tmp_path / "x.yaml")
    (tmp_path / "x.yaml").write_text("")
    with pytest.raises(ValueError, match="unknown gene dictionary format"):
        load_token_dictionary(tmp_path / "x.yaml")
    (tmp_path / "bad.json").write_text(json.dumps({"A": "x"}))
    with pytest.raises(ValueError, match="must be int"):
        load_token_dictionary(tmp_path / "bad.json")


def test_symbol_table(tmp_path, shared_dir):
    (tmp_path / "t.tsv").write_text("ensembl_id\tsymbol\nENSG1\tSHOX\nENSG2\tSHOX\nENSG3\tCD4\n")
    assert load_symbol_table(tmp_path / "t.tsv") == {"SHOX": "ENSG1", "CD4": "ENSG3"}  # first ID wins
    with pytest.raises(MissingColumnError, match="no column 'gene'"):
        load_symbol_table(tmp_path / "t.tsv", symbol_column="gene")
    full = load_symbol_table(shared_dir / "data" / "genes" / "gencode_v44_ensembl_to_symbol.tsv")
    assert full["SHOX"] == "ENSG00000185960"  # chrX copy listed first


def _write_corpus(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    keys_all = [f"ENSG{j:011d}" for j in range(30)]
    for f in range(2):
        X = random_counts(f + 1, n_cells=40 + 13 * f, n_genes=25, dtype=np.float32)
        keys = keys_all[f * 5:f * 5 + 25]
        obs = pd.DataFrame(index=[f"f{f}c{i}" for i in range(X.shape[0])])
        if f == 1:
            obs["n_counts"] = dense(X).sum(1) + rng.integers(1, 9, X.shape[0])
        a = ad.AnnData(X, obs=obs, var=pd.DataFrame({"ensembl_id": keys}, index=keys))
        p = tmp_path / f"corpus{f}.h5ad"
        a.write_h5ad(p)
        files.append((p, a))
    return files


@pytest.mark.parametrize("budget", [1 << 30, 64], ids=["one-pass", "many-groups"])
def test_build_gene_dictionary_exact_medians(tmp_path, budget):
    files = _write_corpus(tmp_path)
    tokens, medians = build_gene_dictionary([p for p, _ in files], chunk_size=16, memory_budget=budget)
    # reference: all normalised nonzero values per gene, then the median
    vals: dict = {}
    order: list = []
    for _, a in files:
        D = dense(a.X)
        tot = a.obs["n_counts"].to_numpy() if "n_counts" in a.obs else D.sum(1)
        for j, k in enumerate(a.var["ensembl_id"]):
            if k not in vals:
                vals[k] = []
                order.append(k)
            nz = D[:, j] != 0
            vals[k].extend(list(D[nz, j] / tot[nz] * 10_000))
    expect = {k: float(np.median(v)) for k, v in vals.items() if v}
    assert medians == expect
    assert list(tokens)[:4] == ["<pad>", "<mask>", "<cls>", "<eos>"]
    assert [k for k in tokens if k.startswith("ENSG")] == [k for k in order if k in expect]
    # and the result drives the tokenizer
    out = RankValueTokenizer(tokens, medians, preset="V2").tokenize(str(files[0][0]))
    assert len(out) > 0


def test_open_cells_sources_and_chunks(tmp_path, data_dir):
    path = data_dir / "sc" / "pbmc_10x_v3_small.h5ad"
    a = ad.read_h5ad(path)
    ref = a.X.toarray()
    for src in (a, str(path), ad.read_h5ad(path, backed="r"), a.X, a.X.toarray(), sp.csc_matrix(a.X),
                a.X.astype(np.uint16), a.X.astype(np.int64), a.X.toarray().astype(np.float16)):
        m = open_cells(src)
        assert (m.n_obs, m.n_vars) == a.shape
        got = np.zeros_like(ref)
        for ch in m.chunks(300):
            ip = ch.indptr.astype(np.int64) - ch.base
            for r in range(ch.stop - ch.start):
                s, e = ip[r], ip[r + 1]
                got[ch.start + r, ch.indices[s:e]] += ch.data[s:e]
            assert ch.data.dtype in (np.float32, np.float64, np.int32, np.int64)
        np.testing.assert_array_equal(got, ref)
        m.close()
    with pytest.raises(MissingColumnError, match="layers has no layer 'counts'"):
        open_cells(a, layer="counts")
    with pytest.raises(TypeError, match="cannot read cells"):
        open_cells([1, 2, 3])
    with pytest.raises(ValueError, match="gene_ids has 3 entries but the matrix has 507 columns"):
        open_cells(a.X, gene_ids=["a", "b", "c"])
    with pytest.raises(FileNotFoundError):
        open_cells(str(tmp_path / "missing.h5ad"))


def test_backed_csc_is_refused_with_advice(tmp_path, data_dir):
    a = ad.read_h5ad(data_dir / "sc" / "pbmc_10x_v3_small.h5ad")
    a.X = sp.csc_matrix(a.X)
    a.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(ValueError, match="CSC"):
        open_cells(str(tmp_path / "csc.h5ad"))


def _tokens():
    return CellTokens(np.array([5, 6, 7, 8, 9, 10], np.int32), np.array([0, 2, 2, 6], np.int64),
                      np.array([0, 3, 1, 2, 2, 4], np.int32), np.array([0, 3, 4], np.int64),
                      np.array(["a", "b", "c"]), {"cell_type": np.array(["T", "B", "T"])})


def test_npz_round_trip(tmp_path):
    t = _tokens()
    t.save(tmp_path / "out.npz")
    back = CellTokens.load_npz(tmp_path / "out.npz")
    for k in ("input_ids", "offsets", "values", "obs_index", "obs_names"):
        np.testing.assert_array_equal(getattr(back, k), getattr(t, k))
    np.testing.assert_array_equal(back.obs["cell_type"], t.obs["cell_type"])
    assert list(back[2]) == [7, 8, 9, 10] and len(back[1]) == 0


def test_parquet_and_dataset_writers(tmp_path):
    pa = pytest.importorskip("pyarrow")
    t = _tokens()
    t.save(tmp_path / "out.parquet")
    import pyarrow.parquet as pq

    tab = pq.read_table(tmp_path / "out.parquet")
    assert tab.column("input_ids").to_pylist() == [[5, 6], [], [7, 8, 9, 10]]
    assert tab.column("length").to_pylist() == [2, 0, 4]
    datasets = pytest.importorskip("datasets")
    t.save(tmp_path / "out.dataset")
    ds = datasets.load_from_disk(str(tmp_path / "out.dataset"))
    assert ds["input_ids"] == [[5, 6], [], [7, 8, 9, 10]] and ds["length"] == [2, 0, 4]
    assert ds["cell_type"] == ["T", "B", "T"]
    assert pa is not None


def test_concat_keeps_order():
    t = _tokens()
    both = CellTokens.concat([t, _tokens()])
    assert len(both) == 6
    np.testing.assert_array_equal(both[5], t[2])
    np.testing.assert_array_equal(both.values[-4:], t.values[-4:])
