"""Gene dictionaries (omicskern.io.gene_dict): formats, Geneformer pickles, symbol tables, and
building a dictionary with exact medians from h5ad files."""

from __future__ import annotations

import json
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from omicskern.errors import MissingColumnError
from omicskern.io.gene_dict import (build_gene_dictionary, load_gene_medians, load_scgpt_vocab, load_symbol_table,
                                    load_token_dictionary, save_gene_dict)
from omicskern.tokenizers import RankValueTokenizer

from ..tokenizers.cells_reference import dense, random_counts


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
