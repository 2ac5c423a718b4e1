"""``omicskern.pipelines.cells``: Geneformer (EmbExtractor's definition, checked through
transformers' BertForMaskedLM on padded batches) and scGPT (embed_data's) on real cells; one row
per input cell in order with NaN + status for cells that can't be embedded; zarr and npy; gene
embeddings; --write-obsm; resume after a real SIGKILL; torchrun with 2 CPU ranks = 1 process;
bad inputs named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import omicskern
from omicskern.errors import (CheckpointError, InvalidCountsError, InvalidFileError, JobMismatchError,
                              MissingColumnError, NoMatchingGenesError)
from omicskern.pipelines.cells import FILTERED, NO_GENES, EMBEDDED, embed_cells, matrix_fingerprint
from tests.models import _folders

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SCGPT = DATA / "fixtures" / "scgpt_tiny"
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _zarr(path):
    import zarr

    return zarr.open_group(str(path), mode="r")


@pytest.fixture(scope="module")
def geneformer_dir(tmp_path_factory):
    return _folders.geneformer(tmp_path_factory.mktemp("gf"))


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """41 real PBMC cells (odd count): cell 3 emptied (no counts at all), cell 5 with only genes
    outside every vocabulary, cell 7 left out by filter_pass; var has Ensembl IDs and symbols."""
    a = ad.read_h5ad(DATA / "sc" / "pbmc_10x_v3_small.h5ad")[:41].copy()
    X = a.X.tolil()
    X[3, :] = 0
    row5 = np.zeros(a.n_vars)
    row5[:2] = 4  # two rarely seen genes, not in the 60-gene test vocabularies
    X[5, :] = row5
    a.X = X.tocsr()
    a.X.eliminate_zeros()
    a.obs["filter_pass"] = np.where(np.arange(41) == 7, 0, 1)
    a.var_names = a.var["ensembl_id"].astype(str).to_numpy()
    p = tmp_path_factory.mktemp("cells") / "cells.h5ad"
    a.write_h5ad(p)
    return p


@pytest.fixture(scope="module")
def scgpt_dir(tmp_path_factory):
    return _folders.scgpt(tmp_path_factory.mktemp("scgpt"))


def test_geneformer_matches_emb_extractor_through_transformers(geneformer_dir, cells, tmp_path):
    """The cell vectors = EmbExtractor's: transformers' BertForMaskedLM on padded batches,
    hidden_states[-2] (its emb_layer=-1), <cls> (V2 emb_mode='cls') or the mean over the gene
    tokens with <cls>/<eos> left out (emb_mode='cell'). Tokens are the model's own tokenizer's."""
    from transformers import BertForMaskedLM

    model = omicskern.load(geneformer_dir)
    tok = model.get_tokenizer()
    batch = tok.tokenize(str(cells))  # the real tokenizer output: empty and filtered cells left out
    ref_model = BertForMaskedLM.from_pretrained(str(geneformer_dir)).eval()
    p = batch.to_padded(0, "right")
    with torch.no_grad():
        hs = ref_model(input_ids=torch.from_numpy(p.input_ids).long(),
                       attention_mask=torch.from_numpy(p.attention_mask).long(), output_hidden_states=True).hidden_states[-2]
    lengths = np.diff(batch.cu_seqlens)
    ref_cls = hs[:, 0].numpy()
    ref_mean = np.stack([hs[i, 1:lengths[i] - 1].mean(0).numpy() for i in range(len(batch))])
    rows = np.asarray(batch.source)
    for pooling, ref in (("cls", ref_cls), ("mean", ref_mean)):
        out = tmp_path / f"{pooling}.zarr"
        r = embed_cells(cells, model, out, pooling=None if pooling == "cls" else pooling, cells_per_unit=8,
                        batch_tokens=300)
        assert r.pooling == pooling and r.layer == -2 and r.n_cells == 41
        g = _zarr(out)
        emb, status = g["embeddings"][:], g["status"][:]
        assert emb.shape == (41, 32) and g.attrs["complete"] and g.attrs["format"] == "omicskern.cell-embeddings/1"
        assert g.attrs["pooling"] == pooling and g.attrs["status_codes"]["1"] == "no gene of the model's vocabulary"
        np.testing.assert_allclose(emb[rows], ref, atol=2e-5, rtol=1e-4)
        assert status[3] == NO_GENES and status[5] == NO_GENES and status[7] == FILTERED
        assert np.isnan(emb[[3, 5, 7]]).all() and (status[rows] == EMBEDDED).all()
        assert set(rows) == set(range(41)) - {3, 5, 7}
        assert list(g["obs_names"][:]) == list(ad.read_h5ad(cells, backed="r").obs_names)
        assert r.not_embedded == {"no gene of the model's vocabulary": 2, "left out by the filter column": 1}


def test_scgpt_matches_embed_data_path(scgpt_dir, cells, tmp_path):
    """scGPT: <cls> of the last layer, L2-normalised, on get_tokenizer()'s tokens (symbols)."""
    model = omicskern.load(scgpt_dir)
    batch = model.get_tokenizer(gene_column="gene_symbol").tokenize(str(cells))
    ref = model.embed(batch, pooling="cls_normalized").pooled.numpy()
    real = np.diff(batch.cu_seqlens) > 1
    r = embed_cells(cells, model, tmp_path / "s.npy", gene_column="gene_symbol", cells_per_unit=16)
    emb = np.load(tmp_path / "s.npy")
    rows = np.asarray(batch.source)
    np.testing.assert_allclose(emb[rows[real]], ref[real], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb[rows[real]], axis=1), 1.0, atol=1e-5)
    obs = (tmp_path / "s.obs.csv").read_text().splitlines()
    assert obs[0] == "obs_name,status,reason" and len(obs) == 42
    assert obs[4].endswith(",1,no gene of the model's vocabulary")
    assert np.isnan(emb[3]).all() and r.n_embedded == int(real.sum())
    assert not (tmp_path / "s.npy.parts").exists()  # the work folder goes once complete
    # the same job again: nothing recomputed; another setting: refused, named
    assert embed_cells(cells, model, tmp_path / "s.npy", gene_column="gene_symbol", cells_per_unit=16).reused
    with pytest.raises(JobMismatchError, match="another job.*pooling"):
        embed_cells(cells, model, tmp_path / "s.npy", gene_column="gene_symbol", cells_per_unit=16, pooling="cls")
    r = embed_cells(cells, model, tmp_path / "s.npy", gene_column="gene_symbol", cells_per_unit=16, pooling="cls",
                    overwrite=True)
    assert r.pooling == "cls" and not r.reused


def test_scgpt_fixture_file_end_to_end(tmp_path):
    """The fixture's own cells (made by scGPT's embed_data) through the pipeline: within the
    spread scGPT's random tie-break gives (seed 7 vs 8 moved them by up to 4.3e-3)."""
    r = embed_cells(SCGPT / "cells.h5ad", SCGPT, tmp_path / "f.zarr", cells_per_unit=3)
    emb = _zarr(tmp_path / "f.zarr")["embeddings"][:]
    ref = np.load(SCGPT / "outputs.npz")["cell_emb_normalized"]
    assert r.n_embedded == 4 and np.abs(emb - ref).max() < 2e-2
    # and exactly the model on the fixture's tokenizer output
    m = omicskern.load(SCGPT)
    direct = m.embed(m.get_tokenizer().tokenize(str(SCGPT / "cells.h5ad")), pooling="cls_normalized").pooled.numpy()
    np.testing.assert_allclose(emb, direct, atol=1e-6, rtol=1e-5)


def test_gene_embeddings_are_means_over_cells(scgpt_dir, cells, tmp_path):
    model = omicskern.load(scgpt_dir)
    batch = model.get_tokenizer(gene_column="gene_symbol").tokenize(str(cells))
    e = model.embed(batch, pooling="cls", layer=-1)
    toks, ids = e.tokens.numpy().astype(np.float64), np.asarray(batch.input_ids)
    embed_cells(cells, model, tmp_path / "g.zarr", gene_column="gene_symbol", emb="gene", cells_per_unit=10,
                batch_tokens=200)
    g = _zarr(tmp_path / "g.zarr")
    names, vecs, ncell = g["gene_ids"][:], g["gene_embeddings"][:], g["gene_cells"][:]
    for name, v, c in list(zip(names, vecs, ncell))[::7]:
        sel = ids == model.vocab[name]
        assert c == sel.sum()
        np.testing.assert_allclose(v, toks[sel].mean(0), atol=1e-5, rtol=1e-5)
    assert "<cls>" not in set(names) and len(names) == len(set(ids) - {model.cls_token_id})


def test_write_obsm_and_input_untouched_otherwise(scgpt_dir, cells, tmp_path):
    import h5py

    src = tmp_path / "in.h5ad"
    src.write_bytes(cells.read_bytes())
    before = src.read_bytes()
    embed_cells(src, scgpt_dir, tmp_path / "a.zarr", gene_column="gene_symbol")
    assert src.read_bytes() == before  # never changed unless asked
    key0 = matrix_fingerprint(src)
    r = embed_cells(src, scgpt_dir, tmp_path / "a.zarr", gene_column="gene_symbol", write_obsm=True)
    assert r.reused and r.obsm_written == "/obsm/X_scgpt"
    a = ad.read_h5ad(src)
    np.testing.assert_array_equal(a.obsm["X_scgpt"], _zarr(tmp_path / "a.zarr")["embeddings"][:])
    assert (a.X != ad.read_h5ad(cells).X).nnz == 0
    assert matrix_fingerprint(src) == key0  # obsm is not part of the job: it still resumes
    with pytest.raises(JobMismatchError, match="already has /obsm/X_scgpt"):
        embed_cells(src, scgpt_dir, tmp_path / "a.zarr", gene_column="gene_symbol", write_obsm=True)
    with h5py.File(src, "r") as f:
        assert f["obsm"]["X_scgpt"].attrs["encoding-type"] == "array"
    assert not [q for q in tmp_path.iterdir() if ".tmp-" in q.name]


def test_dense_and_layer_inputs_give_the_same_rows(scgpt_dir, cells, tmp_path):
    """Dense X (streamed by rows, never read at once), a layer and CSC X equal the CSR X run."""
    a = ad.read_h5ad(cells)
    dense = a.copy()
    dense.X = a.X.toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    lay = a.copy()
    lay.layers["counts"] = a.X.copy()
    lay.X = sp.csr_matrix(a.shape, dtype=np.float32)
    lay.write_h5ad(tmp_path / "layer.h5ad")
    csc = a.copy()
    csc.X = a.X.tocsc()
    csc.write_h5ad(tmp_path / "csc.h5ad")
    outs = []
    for name, kw in (("csr", {}), ("dense", {}), ("layer", {"layer": "counts"}), ("csc", {})):
        src = cells if name == "csr" else tmp_path / f"{name}.h5ad"
        embed_cells(src, scgpt_dir, tmp_path / f"{name}.zarr", gene_column="gene_symbol", cells_per_unit=9, **kw)
        outs.append(_zarr(tmp_path / f"{name}.zarr")["embeddings"][:])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    np.testing.assert_array_equal(outs[0], outs[3])
    assert not [q for q in tmp_path.iterdir() if ".csc-" in q.name]  # the row-order copy is removed


def test_csc_rewrite_in_small_blocks_equals_csr(cells, tmp_path):
    """The CSC -> row-order pass with blocks far smaller than the matrix (many blocks, columns
    split nowhere): the same CSR rows, columns increasing within each row."""
    from omicskern.io.cells import open_cells_csc

    a = ad.read_h5ad(cells)
    b = a.copy()
    b.X = a.X.tocsc()
    b.write_h5ad(tmp_path / "c.h5ad")
    m = open_cells_csc(tmp_path / "c.h5ad", tmp_path / "work", block_nnz=97)
    ref = a.X.tocsr()
    ref.sort_indices()
    got = [(ch.indptr - ch.indptr[0], ch.indices[ch.indptr[0] - ch.base:ch.indptr[-1] - ch.base],
            ch.data[ch.indptr[0] - ch.base:ch.indptr[-1] - ch.base]) for ch in m.chunks(7)]
    m.close()
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), ref.indices)
    np.testing.assert_array_equal(np.concatenate([g[2] for g in got]), ref.data)


def test_bad_inputs_are_named(scgpt_dir, geneformer_dir, cells, tmp_path):
    trunc = tmp_path / "trunc.h5ad"
    trunc.write_bytes(cells.read_bytes()[:5000])
    with pytest.raises(InvalidFileError, match="trunc.h5ad.*truncated"):
        embed_cells(trunc, scgpt_dir, tmp_path / "o.zarr")
    junk = tmp_path / "junk.h5ad"
    junk.write_text("cell,gene\n")
    with pytest.raises(InvalidFileError, match="junk.h5ad: not an .h5ad file"):
        embed_cells(junk, scgpt_dir, tmp_path / "o.zarr")
    with pytest.raises(MissingColumnError, match="cells.h5ad: adata.var has no column 'symbol'"):
        embed_cells(cells, scgpt_dir, tmp_path / "o.zarr", gene_column="symbol")
    with pytest.raises(NoMatchingGenesError, match="cells.h5ad: none of the 507 genes"):
        embed_cells(cells, scgpt_dir, tmp_path / "o.zarr")  # var_names are Ensembl IDs, scGPT wants symbols
    assert not (tmp_path / "o.zarr").exists()  # checked before any output is made
    a = ad.read_h5ad(cells)
    for what, value, says in (("negative", -1.0, "negative"), ("NaN", np.nan, r"not finite \(nan\)")):
        b = a.copy()
        X = b.X.tolil()
        X[30, 100] = value
        b.X = X.tocsr()
        p = tmp_path / f"{what}.h5ad"
        b.write_h5ad(p)
        out = tmp_path / f"{what}.zarr"
        with pytest.raises(InvalidCountsError, match=rf"{what}.h5ad: cell 30 \('{a.obs_names[30]}'\), column 100.*{says}"):
            embed_cells(p, scgpt_dir, out, gene_column="gene_symbol", cells_per_unit=8)
        g = _zarr(out)
        assert not g.attrs["complete"]  # nothing half-written looks complete
        assert (g["status"][24:32] == -1).all()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="a .zarr store or a .npy file"):
        embed_cells(cells, scgpt_dir, other, gene_column="gene_symbol")
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(JobMismatchError, match="x.zarr is not empty and is not an embed-cells store"):
        embed_cells(cells, scgpt_dir, tmp_path / "x.zarr", gene_column="gene_symbol")
    # a Geneformer output folder refused for a scGPT job
    embed_cells(cells, geneformer_dir, tmp_path / "gf.zarr")
    with pytest.raises(JobMismatchError, match="gf.zarr holds the output of another job"):
        embed_cells(cells, scgpt_dir, tmp_path / "gf.zarr", gene_column="gene_symbol")
    nocls = tmp_path / "nocls"
    nocls.mkdir()
    for f in scgpt_dir.iterdir():
        (nocls / f.name).write_bytes(f.read_bytes())
    v = json.loads((nocls / "vocab.json").read_text())
    v["<CLS>"] = v.pop("<cls>")
    (nocls / "vocab.json").write_text(json.dumps(v))
    with pytest.raises(CheckpointError, match="vocab.json: no '<cls>' token"):
        embed_cells(cells, nocls, tmp_path / "n.zarr", gene_column="gene_symbol")


# -- real processes --------------------------------------------------------------------------------
def _synthetic(path: Path, n: int, genes, seed: int = 0) -> Path:
    """n cells with realistic sparsity (~8% of genes detected, Poisson-ish counts)."""
    rng = np.random.default_rng(seed)
    g = len(genes)
    nnz = rng.binomial(g, 0.08, size=n)
    indptr = np.concatenate([[0], np.cumsum(nnz)])
    indices = np.concatenate([np.sort(rng.choice(g, k, replace=False)) for k in nnz]).astype(np.int32)
    data = (rng.geometric(0.4, size=int(indptr[-1]))).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix((data, indices, indptr), shape=(n, g)))
    a.obs_names = [f"c{i}" for i in range(n)]
    a.var_names = list(genes)
    a.var["gene_symbol"] = list(genes)
    a.write_h5ad(path)
    return path


def _cli(args, env=ENV):
    return subprocess.Popen([sys.executable, "-m", "omicskern", "embed-cells", *args, "--no-progress", "--threads", "1"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_resumes_to_identical_arrays(scgpt_dir, tmp_path):
    """``omicskern embed-cells`` killed with SIGKILL after some units, rerun: the arrays equal an
    uninterrupted run's exactly and every cell is written once (the manifest has each unit once)."""
    vocab = json.loads((scgpt_dir / "vocab.json").read_text())
    genes = [g for g in vocab if not g.startswith("<")] + [f"NOVEL{i}" for i in range(40)]
    src = _synthetic(tmp_path / "syn.h5ad", 1500, genes)
    args = lambda out: [str(src), "--model", str(scgpt_dir), "--out", str(out), "--gene-column", "gene_symbol",
                        "--chunk-cells", "50", "--batch-tokens", "2048"]
    ref = tmp_path / "ref.zarr"  # uninterrupted, in this process (the same pipeline)
    embed_cells(src, scgpt_dir, ref, gene_column="gene_symbol", cells_per_unit=50, batch_tokens=2048, threads=1)
    out = tmp_path / "out.zarr"
    for n_done in (4,):
        p = _cli(args(out))
        t = time.monotonic()
        while p.poll() is None and time.monotonic() - t < 120:
            if len(list(out.glob(".omicskern-job/shard-*.npz"))) >= n_done:
                break
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not _zarr(out).attrs["complete"]
    p = _cli(args(out))
    assert p.wait(timeout=300) == 0, p.stderr.read()
    a, b = _zarr(ref), _zarr(out)
    for name in ("embeddings", "status", "obs_names"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    assert b.attrs["complete"] and b.attrs["omicskern_job"]["key"] == a.attrs["omicskern_job"]["key"]
    man = json.loads((out / ".omicskern-job" / "manifest.json").read_text())
    assert [e["index"] for e in man["units"]] == list(range(30)) and all(e["done"] for e in man["units"])
    assert sum(e["rows"] for e in man["units"]) == 1500
    assert not [q for q in out.rglob("*") if ".tmp-" in q.name]


def test_torchrun_two_cpu_ranks_equal_one_process(geneformer_dir, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU): each rank its share of the units, the store the
    same as one process's, written once."""
    import pickle

    with open(next(geneformer_dir.glob("token_dictionary*.pkl")), "rb") as f:
        td = pickle.load(f)
    genes = [g for g in td if not g.startswith("<")] + [f"ENSG_NOVEL{i}" for i in range(30)]
    src = _synthetic(tmp_path / "syn.h5ad", 700, genes, seed=1)
    a = ad.read_h5ad(src)
    a.var["ensembl_id"] = a.var_names
    a.write_h5ad(src)
    common = [str(src), "--model", str(geneformer_dir), "--chunk-cells", "64", "--no-progress", "--threads", "1"]
    embed_cells(src, geneformer_dir, tmp_path / "one.zarr", cells_per_unit=64, threads=1)  # one process
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "omicskern", "embed-cells", *common, "--out", str(tmp_path / "two.zarr")],
                         env={**ENV, "OMP_NUM_THREADS": "1"}, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert "700 of 700 cells" in two.stderr or "of 700 cells embedded" in two.stderr
    x, y = _zarr(tmp_path / "one.zarr"), _zarr(tmp_path / "two.zarr")
    np.testing.assert_array_equal(x["embeddings"][:], y["embeddings"][:])
    np.testing.assert_array_equal(x["status"][:], y["status"][:])
    assert y.attrs["complete"]
    man = json.loads((tmp_path / "two.zarr" / ".omicskern-job" / "manifest.json").read_text())
    assert len(man["units"]) == 11 and all(e["done"] for e in man["units"])
