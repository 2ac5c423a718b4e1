"""``omicskern perturb-cells``: a real subprocess run on the PBMC file with a tiny Geneformer folder,
the table equal to the pipeline's, and the command line's errors (exit 2 / 1, flags named)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from omicskern.cli import main
from omicskern.pipelines.perturb import perturb_cells
from tests.models import _folders

PBMC = _folders.DATA / "sc" / "pbmc_10x_v3_small.h5ad"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folders.geneformer(tmp_path_factory.mktemp("cli_perturb") / "gf")


@pytest.fixture(scope="module")
def genes(folder):
    with open(next(folder.glob("token_dictionary*.pkl")), "rb") as f:
        return list(pickle.load(f))[4:7]


def test_subprocess_run_writes_the_pipelines_table(folder, genes, tmp_path):
    out = tmp_path / "effects.tsv"
    r = subprocess.run([sys.executable, "-m", "omicskern", "perturb-cells", str(PBMC), "--model", str(folder),
                        "--genes", ",".join(genes + ["NOT_A_GENE"]), "--mode", "overexpress",
                        "--cells", "AAACCCAAGGAGAGTA-1,AAACGCTTCAGCCCAG-1,AAAGAACAGACGACTG-1", "--out", str(out),
                        "--no-progress", "--threads", "1"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "perturb-cells (overexpress): 12 rows for 3 cells" in r.stderr
    assert "genes not in the token dictionary: NOT_A_GENE" in r.stderr and f"wrote 12 rows to {out}" in r.stderr
    got = pd.read_csv(out, sep="\t", keep_default_na=False, na_values=[""])
    ref = perturb_cells(PBMC, folder, genes=genes + ["NOT_A_GENE"], mode="overexpress", cells=[0, 1, 2]).table
    assert got["gene"].tolist() == ref["gene"].tolist() and got["status"].tolist() == ref["status"].tolist()
    np.testing.assert_allclose(got["cosine"].to_numpy(float), ref["cosine"].to_numpy(float), rtol=1e-6, atol=1e-7)


def test_all_expressed_parquet_with_gene_shifts(folder, tmp_path, capsys):
    rc = main(["perturb-cells", str(PBMC), "--model", str(folder), "--all-expressed", "--cells", "@" +
               str(_names(tmp_path)), "--out", str(tmp_path / "t.parquet"), "--gene-shifts",
               str(tmp_path / "s.parquet"), "--emb-layer", "0", "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "emb_layer 0 (hidden state -1)" in err and "gene shifts to" in err
    t = pd.read_parquet(tmp_path / "t.parquet")
    assert set(t["cell"]) == {"AAACGCTTCAGCCCAG-1"} and (t["status"] == "ok").all()
    assert "mean_gene_cosine" in t.columns and len(pd.read_parquet(tmp_path / "s.parquet")) == len(t) * (len(t) - 1)


def _names(tmp_path):
    p = tmp_path / "names.txt"
    p.write_text("AAACGCTTCAGCCCAG-1\n")
    return p


@pytest.mark.parametrize("argv, code, msg", [
    (["--genes", "G1", "--all-expressed"], 2, "argument --all-expressed: not allowed with argument --genes"),
    ([], 2, "one of the arguments --genes --all-expressed is required"),
    (["--genes", "G1", "--out", "x.csv"], 2, "--out x.csv: name a .tsv or .parquet file"),
    (["--genes", "G1", "--batch-tokens", "0"], 2, "--batch-tokens must be >= 1, got 0"),
    (["--genes", "G1", "--emb-layer", "1"], 2, "--emb-layer must be <= 0"),
    (["--genes", ","], 2, "--genes: no gene given"),
    (["--genes", "NOPE"], 1, "genes: none of NOPE is in the model's token dictionary"),
    (["--genes", "G1", "--gene-column", "gene_ids"], 1, "adata.var has no column 'gene_ids'"),
    (["--genes", "G1", "--cells", "group=a"], 1, "adata.obs has no column 'group'"),
    (["--genes", "G1", "--emb-layer", "-5"], 1, "emb_layer must be in [-2, 0]"),
])
def test_errors(folder, tmp_path, capsys, argv, code, msg):
    base = ["perturb-cells", str(PBMC), "--model", str(folder), "--no-progress"]
    if "--out" not in argv:
        argv = argv + ["--out", str(tmp_path / "o.tsv")]
    assert main(base + argv) == code
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(("omicskern perturb-cells: error:", "usage:")) or code == 2
    assert not (tmp_path / "o.tsv").exists()


def test_missing_model_folder_is_an_argument_error(tmp_path, capsys):
    assert main(["perturb-cells", str(PBMC), "--model", str(tmp_path / "nope"), "--genes", "G1",
                 "--out", str(tmp_path / "o.tsv")]) == 2
    assert "--model: not found" in capsys.readouterr().err
