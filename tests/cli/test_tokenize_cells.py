"""``omicskern tokenize-cells``: end to end on the small 10x file, both methods, and its errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from omicskern.cli import main
from omicskern.tokenizers import BinnedValueTokenizer, RankValueTokenizer
from omicskern.io.writers import load_npz


@pytest.fixture()
def pbmc(data_dir):
    return data_dir / "sc" / "pbmc_10x_v3_small.h5ad"


def _geneformer_files(tmp_path, a):
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
    medians = {}
    rng = np.random.default_rng(0)
    for k in a.var["ensembl_id"][::2]:
        tokens[k] = len(tokens)
        medians[k] = float(rng.uniform(0.5, 3))
    with open(tmp_path / "token_dictionary.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(tmp_path / "gene_median_dictionary.pkl", "wb") as f:
        pickle.dump(medians, f)
    return tokens, medians


def test_rank_npz(tmp_path, pbmc, capsys):
    a = ad.read_h5ad(pbmc)
    tokens, medians = _geneformer_files(tmp_path, a)
    rc = main(["tokenize-cells", str(pbmc), "--method", "rank", "--token-dict", str(tmp_path / "token_dictionary.pkl"),
               "--gene-medians", str(tmp_path / "gene_median_dictionary.pkl"), "--preset", "V2",
               "--chunk-size", "200", "--out", str(tmp_path / "out.npz"), "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "of 1,107 cells tokenized" in err and "254 of 507 matched" in err and "with no gene in the dictionary" in err
    got = load_npz(tmp_path / "out.npz")
    ref = RankValueTokenizer(tokens, medians, preset="V2").tokenize(a)
    np.testing.assert_array_equal(got.input_ids, ref.input_ids)
    np.testing.assert_array_equal(got.cu_seqlens, ref.cu_seqlens)
    np.testing.assert_array_equal(got.names, np.asarray(a.obs_names)[ref.source])


def test_bin_dataset(tmp_path, pbmc, capsys):
    pytest.importorskip("datasets")
    a = ad.read_h5ad(pbmc)
    vocab = {"<pad>": 0, "<cls>": 1}
    for s in a.var["gene_symbol"]:
        vocab.setdefault(s, len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    rc = main(["tokenize-cells", str(pbmc), "--method", "bin", "--vocab", str(tmp_path / "vocab.json"),
               "--gene-column", "gene_symbol", "--tie-break", "random", "--seed", "4", "--max-len", "16",
               "--out", str(tmp_path / "out.dataset"), "--no-progress"])
    assert rc == 0
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "out.dataset"))
    ref = BinnedValueTokenizer(vocab, gene_column="gene_symbol", tie_break="random", seed=4, max_length=16).tokenize(a)
    assert ds.num_rows == len(ref)
    assert ds["length"] == ref.lengths.tolist()
    assert ds["input_ids"][5] == ref[5].tolist() and ds["values"][5] == ref.row_values(5).tolist()


def test_errors_are_reported_not_raised(tmp_path, pbmc, capsys):
    rc = main(["tokenize-cells", str(pbmc), "--method", "rank", "--out", str(tmp_path / "o.npz")])
    assert rc == 2 and "needs --token-dict" in capsys.readouterr().err
    a = ad.read_h5ad(pbmc)
    _geneformer_files(tmp_path, a)
    rc = main(["tokenize-cells", str(pbmc), "--method", "rank", "--token-dict", str(tmp_path / "token_dictionary.pkl"),
               "--gene-medians", str(tmp_path / "gene_median_dictionary.pkl"), "--gene-column", "gene_ids",
               "--out", str(tmp_path / "o.npz"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "adata.var has no column 'gene_ids' (columns: ensembl_id, gene_symbol, feature_type)" in err


def test_subprocess_help():
    r = subprocess.run([sys.executable, "-m", "omicskern", "tokenize-cells", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--method" in r.stdout


def test_empty_cells_default_per_method(tmp_path):
    """scGPT keeps an all-zero cell as [<cls>] (bin keeps it by default); Geneformer drops it (rank
    skips by default); the other behaviour is one flag away, and both flags together are refused."""
    import scipy.sparse as sp

    X = sp.csr_matrix(np.array([[3, 0, 1], [0, 0, 0], [0, 2, 5]], dtype=np.float32))
    a = ad.AnnData(X)
    a.var_names = ["GA", "GB", "GC"]
    a.var["ensembl_id"] = ["E1", "E2", "E3"]
    path = tmp_path / "cells.h5ad"
    a.write_h5ad(path)
    (tmp_path / "vocab.json").write_text(json.dumps({"<pad>": 0, "<cls>": 1, "<eoc>": 2, "GA": 3, "GB": 4, "GC": 5}))
    with open(tmp_path / "td.pkl", "wb") as f:
        pickle.dump({"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, "E1": 4, "E2": 5, "E3": 6}, f)
    with open(tmp_path / "gm.pkl", "wb") as f:
        pickle.dump({"E1": 1.0, "E2": 2.0, "E3": 3.0}, f)
    bin_args = [str(path), "--method", "bin", "--vocab", str(tmp_path / "vocab.json"), "--no-progress"]
    rank_args = [str(path), "--method", "rank", "--token-dict", str(tmp_path / "td.pkl"),
                 "--gene-medians", str(tmp_path / "gm.pkl"), "--no-progress"]
    cases = [(bin_args, [], [0, 1, 2]), (bin_args, ["--skip-empty"], [0, 2]),
             (rank_args, [], [0, 2]), (rank_args, ["--keep-empty"], [0, 1, 2])]
    for i, (args, extra, rows) in enumerate(cases):
        out = tmp_path / f"out{i}.npz"
        assert main(["tokenize-cells", *args, *extra, "--out", str(out)]) == 0
        got = load_npz(out)
        assert got.source.tolist() == rows, (args[2], extra)
    assert main(["tokenize-cells", *bin_args, "--keep-empty", "--skip-empty", "--out", str(tmp_path / "x.npz")]) == 2
