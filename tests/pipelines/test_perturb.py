"""In-silico perturbation (:func:`omicskern.pipelines.perturb.perturb_cells`) against the naive loop:
one perturbation at a time, its padded ids built by hand (Python list edits, Geneformer's
definitions), the model's padded forward, pooled by hand; on real PBMC cells with a tiny
Geneformer (V2 layout, its own dictionaries). Plus the row builder on random rows, the cell
filters, the output files and the bad inputs."""

from __future__ import annotations

import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from omicskern.errors import MissingColumnError, NoMatchingGenesError
from omicskern.pipelines.perturb import build_perturbed_rows, perturb_cells, read_report
from tests._numerics import F32, assert_close
from tests.models import _folders

PBMC = _folders.DATA / "sc" / "pbmc_10x_v3_small.h5ad"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folders.geneformer(tmp_path_factory.mktemp("perturb") / "gf")


@pytest.fixture(scope="module")
def model(folder):
    import omicskern

    return omicskern.load(folder)


@pytest.fixture(scope="module")
def token_dict(folder):
    with open(next(folder.glob("token_dictionary*.pkl")), "rb") as f:
        return pickle.load(f)


def _tokenizer(model, **kw):
    return model.get_tokenizer(skip_empty=False, filter_column=None, **kw)


# -- the naive reference -------------------------------------------------------------------------
def _naive(model, tok, data, rows, mode, gene_tokens=None, emb_layer=-1, pooling="cls", shifts=False):
    """{(obs row, gene token): (cosine, {affected token: cosine})}, one padded forward per perturbation."""
    cells = tok.tokenize(data)
    specials = tok.special_tokens
    cls_id, eos_id = (tok.cls_token_id, tok.eos_token_id) if specials else (None, None)
    hidx = model.config.num_hidden_layers + emb_layer
    max_len = tok.max_length

    def embed_pair(a, b):
        width = max(len(a), len(b))
        ids = torch.zeros(2, width, dtype=torch.long)
        mask = torch.zeros(2, width, dtype=torch.bool)
        for i, r in enumerate((a, b)):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = True
        with torch.no_grad():
            h = model(ids, mask, output_hidden_states=True).hidden_states[hidx].double()
        return h[0, :len(a)], h[1, :len(b)]

    def pool(h, r):
        if pooling == "cls":
            return h[0]
        keep = torch.ones(len(r), dtype=torch.bool)
        if r[0] == cls_id:
            keep[0] = False
        if r[-1] == eos_id:
            keep[-1] = False
        return h[keep].mean(0)

    def cos(a, b):
        return float(torch.dot(a, b) / (a.norm() * b.norm()))

    out = {}
    f = 1 if specials else 0
    for obs_row in rows:
        row = [int(x) for x in cells[int(obs_row)]]
        genes_in = row[f:len(row) - (1 if specials else 0)]
        for t in (genes_in if gene_tokens is None else gene_tokens):
            orig, pert = list(row), list(row)
            if t in genes_in:
                p = row.index(t)
                if mode == "delete":
                    del pert[p]
                    if not pert[f:len(pert) - (1 if specials else 0)] and pooling == "mean":
                        continue
                else:
                    if p == f:
                        continue
                    pert.insert(f, pert.pop(p))
            else:
                if mode == "delete" or not genes_in:
                    continue
                pert.insert(f, t)
                if len(pert) > max_len:  # Geneformer: drop the last gene of both
                    if specials:
                        pert, orig = pert[:max_len - 1] + [pert[-1]], orig[:-2] + [orig[-1]]
                    else:
                        pert, orig = pert[:max_len], orig[:-1]
            ho, hp = embed_pair(orig, pert)
            gene_cos = {}
            if shifts:
                end = len(pert) - (1 if specials else 0)
                for jp in range(f, end):
                    g = pert[jp]
                    if g == t:
                        continue
                    gene_cos[g] = cos(hp[jp], ho[orig.index(g)])
            out[(int(obs_row), t)] = (cos(pool(hp, pert), pool(ho, orig)), gene_cos)
    return out


def _check_against(res, ref, token_dict, mode, shifts=False):
    tab = res.table
    scored = tab[tab["status"].isin(["ok", "inserted"])]
    assert len(scored) == len(ref) > 0
    got, want = [], []
    for r in scored.itertuples():
        got.append(r.cosine)
        want.append(ref[(r.cell_index, token_dict[r.gene])][0])
    assert_close(torch.tensor(got), torch.tensor(want), dtype=F32, what=f"{mode} cell cosine")
    first = tab[tab["status"] == "already_first"]
    assert (first["cosine"] == 1.0).all()
    if shifts:
        gs = res.gene_shifts
        names = dict(zip(tab["cell"], tab["cell_index"]))
        got, want = [], []
        for r in gs.itertuples():
            key = (names[r.cell], token_dict[r.gene])
            if key not in ref:  # already_first rows have no shifts computed
                continue
            got.append(r.cosine)
            want.append(ref[key][1][token_dict[r.affected_gene]])
        n_ref = sum(len(v[1]) for v in ref.values())
        assert len(got) == n_ref > 0
        assert_close(torch.tensor(got), torch.tensor(want), dtype=F32, what=f"{mode} gene shifts")
        # mean_gene_cosine is the mean of the cell's gene shifts (Geneformer V1's cell score)
        for r in scored.itertuples():
            v = list(ref[(r.cell_index, token_dict[r.gene])][1].values())
            if v:
                assert abs(r.mean_gene_cosine - np.mean(v)) < 1e-5


# -- against the naive loop ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["delete", "overexpress"])
def test_genes_equal_naive_loop(model, token_dict, mode):
    a = ad.read_h5ad(PBMC)
    genes = list(token_dict)[4:64:15] + ["ENSG00000000001"]  # one gene that no dictionary has
    rows = np.arange(6)
    res = perturb_cells(PBMC, model, genes=genes, mode=mode, cells=rows)
    tab = res.table
    assert len(tab) == len(rows) * len(genes)  # one row per (cell, requested gene), whatever happened
    assert (tab.loc[tab["gene"] == "ENSG00000000001", "status"] == "not_in_dictionary").all()
    assert res.report["genes_not_in_dictionary"] == ["ENSG00000000001"]
    if mode == "delete":
        assert (tab["status"] == "not_in_cell").any()
        assert tab.loc[tab["status"] == "not_in_cell", "cosine"].isna().all()
    else:
        assert (tab["status"] == "inserted").any()
    assert tab["status"].isin(["ok", "already_first"]).eq(tab["rank"].notna()).all()
    sym = dict(zip(a.var["ensembl_id"], a.var["gene_symbol"]))
    assert (tab.loc[tab["status"] == "ok", "symbol"] == tab.loc[tab["status"] == "ok", "gene"].map(sym)).all()
    ref = _naive(model, _tokenizer(model), PBMC, rows, mode, [token_dict[g] for g in genes[:-1]])
    _check_against(res, ref, token_dict, mode)


@pytest.mark.parametrize("mode", ["delete", "overexpress"])
def test_all_expressed_with_gene_shifts_equal_naive_loop(model, token_dict, mode):
    rows = np.array([10, 3])  # the order given is the table's order (cells of 6 and 11 genes)
    # delete: chunks of a few rows, originals reused across chunks; overexpress: one chunk, where
    # on CPU the 10 rows of one length of cell 3 are a group of their own and the rest go mixed
    kw = dict(batch_tokens=40, chunk_tokens=60) if mode == "delete" else {}
    res = perturb_cells(PBMC, model, all_expressed=True, mode=mode, cells=rows, gene_shifts=True, **kw)
    assert list(dict.fromkeys(res.table["cell_index"])) == rows.tolist()
    n = res.table.groupby("cell_index")["n_genes"].first()
    assert (res.table.groupby("cell_index").size() == n).all()
    ranks = res.table[res.table["status"] != "already_first"]["rank"]
    assert ranks.min() == (2 if mode == "overexpress" else 1)
    ref = _naive(model, _tokenizer(model), PBMC, rows, mode, None, shifts=True)
    _check_against(res, ref, token_dict, mode, shifts=True)


def test_v1_mean_pooling_last_layer_equal_naive_loop(model, token_dict):
    tok = _tokenizer(model, preset="V1", model_input_size=model.max_length)
    rows = np.array([28])
    res = perturb_cells(PBMC, model, all_expressed=True, mode="overexpress", cells=rows, tokenizer=tok,
                        emb_layer=0, gene_shifts=True)
    assert res.report["pooling"] == "mean" and res.report["layer"] == -1
    ref = _naive(model, tok, PBMC, rows, "overexpress", None, emb_layer=0, pooling="mean", shifts=True)
    _check_against(res, ref, token_dict, "overexpress", shifts=True)


def test_overexpress_into_a_full_cell_truncates_both(model, token_dict):
    """A gene inserted into a cell at the tokenizer's max_length: the last gene goes, from the
    perturbed and from the original cell (Geneformer's truncate_by_n_overflow)."""
    tok = _tokenizer(model, model_input_size=9)
    genes = [list(token_dict)[i] for i in (5, 61, 63)]  # rarely seen genes: mostly not among a cell's top 7
    rows = np.arange(5)
    res = perturb_cells(PBMC, model, genes=genes, mode="overexpress", cells=rows, tokenizer=tok, gene_shifts=True)
    tab = res.table
    assert (tab["truncated"] & (tab["status"] == "inserted")).any()
    assert (tab["truncated"] <= (tab["status"] == "inserted")).all()
    ref = _naive(model, tok, PBMC, rows, "overexpress", [token_dict[g] for g in genes], shifts=True)
    _check_against(res, ref, token_dict, "overexpress", shifts=True)


# -- the row builder -------------------------------------------------------------------------------
@pytest.mark.parametrize("specials", [True, False], ids=["V2", "V1"])
def test_row_builder_equals_list_edits(specials):
    rng = np.random.default_rng(7)
    lengths = rng.integers(2 if specials else 1, 12, size=9) + (2 if specials else 0)
    cu = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.permutation(1000)[:cu[-1]].astype(np.int32) + 10
    f = 1 if specials else 0
    first = np.full(len(lengths), f)
    last_gene = lengths - 1 - (1 if specials else 0)
    cell, kind, pos, token, trunc, want = [], [], [], [], [], []
    for c, ln in enumerate(lengths):
        row = ids[cu[c]:cu[c + 1]].tolist()
        for p in range(f, last_gene[c] + 1):
            for kd in (0, 1):
                r = list(row)
                if kd == 0:
                    del r[p]
                else:
                    r.insert(f, r.pop(p))
                cell.append(c), kind.append(kd), pos.append(p), token.append(0), trunc.append(False), want.append(r)
        for tr in (False, True):
            r = list(row)
            r.insert(f, 5)
            if tr:
                r = r[:-2] + [r[-1]] if specials else r[:-1]
            cell.append(c), kind.append(2), pos.append(-1), token.append(5), trunc.append(tr), want.append(r)
    got, gcu, src = build_perturbed_rows(ids, cu, np.array(cell), np.array(kind), np.array(pos), np.array(token),
                                         first, last_gene, np.array(trunc))
    assert [got[gcu[i]:gcu[i + 1]].tolist() for i in range(len(want))] == want
    # src: where each token came from in its original row (-1: the inserted one)
    for i, c in enumerate(cell):
        s = src[gcu[i]:gcu[i + 1]]
        row = ids[cu[c]:cu[c + 1]]
        assert np.array_equal(np.where(s >= 0, row[np.maximum(s, 0)], 5), got[gcu[i]:gcu[i + 1]])


# -- cells, output files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """12 PBMC cells with an obs label; cell 4 holds no gene of the dictionary (an empty cell)."""
    a = ad.read_h5ad(PBMC)[:12].copy()
    a.obs["group"] = pd.Categorical(["a", "b", "c"] * 4)
    d = tmp_path_factory.mktemp("labelled")
    return a, d


def _empty_cell_file(a, token_dict, d):
    X = a.X.toarray()
    in_dict = a.var["ensembl_id"].isin(list(token_dict)).to_numpy()
    X[4, in_dict] = 0
    X[4, ~in_dict][:3] = 2
    b = ad.AnnData(sp.csr_matrix(X), obs=a.obs.copy(), var=a.var.copy())
    p = d / "with_empty.h5ad"
    b.write_h5ad(p)
    return p


def test_cells_filters_select_the_same_rows(model, labelled):
    a, d = labelled
    p = d / "labelled.h5ad"
    a.write_h5ad(p)
    gene = [a.var["ensembl_id"].iloc[int(np.argmax(np.asarray((a.X > 0).sum(0)).ravel()))]]
    by_col = perturb_cells(p, model, genes=gene, cells={"group": "b"}).table
    assert by_col["cell_index"].tolist() == [1, 4, 7, 10]
    for sel in (("group", "b"), "group=b", list(a.obs_names[[1, 4, 7, 10]]), np.array([1, 4, 7, 10]),
                (a.obs["group"] == "b").to_numpy()):
        t = perturb_cells(p, model, genes=gene, cells=sel).table
        pd.testing.assert_frame_equal(t, by_col)
    names = d / "names.txt"
    names.write_text("\n".join(a.obs_names[[1, 4, 7, 10]]) + "\n")
    pd.testing.assert_frame_equal(perturb_cells(p, model, genes=gene, cells=f"@{names}").table, by_col)
    two = perturb_cells(p, model, genes=gene, cells="group=a,c").table
    assert two["cell_index"].tolist() == [0, 2, 3, 5, 6, 8, 9, 11]
    with pytest.raises(ValueError, match=r"no cell has obs column 'group' in \['z'\] \(values: a, b, c\)"):
        perturb_cells(p, model, genes=gene, cells={"group": "z"})
    with pytest.raises(MissingColumnError, match="adata.obs has no column 'nope'"):
        perturb_cells(p, model, genes=gene, cells="nope=1")
    with pytest.raises(KeyError, match="not obs names of the input, e.g. 'XYZ'"):
        perturb_cells(p, model, genes=gene, cells=["XYZ"])
    with pytest.raises(IndexError, match="obs index 12 out of range for 12 cells"):
        perturb_cells(p, model, genes=gene, cells=[12])


@pytest.mark.parametrize("suffix", [".tsv", ".parquet"])
def test_output_table_round_trips(model, token_dict, tmp_path, suffix):
    genes = list(token_dict)[4:7] + ["NOT_A_GENE"]
    res = perturb_cells(PBMC, model, genes=genes, cells=np.arange(5), out=tmp_path / f"t{suffix}",
                        gene_shifts=True, gene_shifts_out=tmp_path / f"s{suffix}")
    assert res.out == tmp_path / f"t{suffix}" and not list(tmp_path.glob(".*tmp*"))
    back = pd.read_csv(res.out, sep="\t", keep_default_na=False, na_values=[""]) if suffix == ".tsv" \
        else pd.read_parquet(res.out)
    assert list(back.columns) == ["cell", "cell_index", "gene", "symbol", "mode", "cosine", "rank", "n_genes",
                                  "status", "truncated", "mean_gene_cosine"]
    np.testing.assert_allclose(back["cosine"].to_numpy(float), res.table["cosine"].to_numpy(float), rtol=1e-12)
    assert back["status"].tolist() == res.table["status"].tolist()
    assert back["rank"].isna().tolist() == res.table["rank"].isna().tolist()
    shifts = pd.read_csv(res.gene_shifts_out, sep="\t") if suffix == ".tsv" else pd.read_parquet(res.gene_shifts_out)
    assert len(shifts) == len(res.gene_shifts) > 0
    if suffix == ".parquet":
        rep = read_report(res.out)
        assert rep["genes_not_in_dictionary"] == ["NOT_A_GENE"] and rep["n_rows"] == len(back)


# -- bad input -------------------------------------------------------------------------------------
def test_empty_cell_and_genes_not_in_cell_are_rows_not_gaps(model, token_dict, labelled):
    a, d = labelled
    p = _empty_cell_file(a, token_dict, d)
    genes = list(token_dict)[4:8]
    res = perturb_cells(p, model, genes=genes)
    tab = res.table
    assert len(tab) == 12 * 4
    assert (tab.loc[tab["cell_index"] == 4, "status"] == "empty_cell").all()
    assert res.report["n_empty_cells"] == 1 and "1 cells without any gene of the dictionary" in res.summary()
    allx = perturb_cells(p, model, all_expressed=True, mode="overexpress").table
    row = allx[allx["cell_index"] == 4]
    assert len(row) == 1 and row["status"].iloc[0] == "empty_cell" and row["gene"].iloc[0] == ""
    assert allx["cell_index"].is_monotonic_increasing
    assert set(allx["cell_index"]) == set(range(12))


def test_bad_inputs_are_clear_errors(model, token_dict, labelled, tmp_path):
    a, d = labelled
    p = d / "labelled.h5ad"
    a.write_h5ad(p)
    g = list(token_dict)[4:6]
    with pytest.raises(NoMatchingGenesError, match="none of NOPE, ALSO_NOPE is in the model's token dictionary"):
        perturb_cells(p, model, genes="NOPE,ALSO_NOPE")
    with pytest.raises(MissingColumnError, match="adata.var has no column 'gene_ids'"):
        perturb_cells(p, model, genes=g, gene_column="gene_ids")
    with pytest.raises(ValueError, match="exactly one"):
        perturb_cells(p, model, genes=g, all_expressed=True)
    with pytest.raises(ValueError, match="exactly one"):
        perturb_cells(p, model)
    with pytest.raises(ValueError, match="mode must be one of delete, overexpress"):
        perturb_cells(p, model, genes=g, mode="knockdown")
    with pytest.raises(ValueError, match=r"emb_layer must be in \[-2, 0\]"):
        perturb_cells(p, model, genes=g, emb_layer=-3)
    with pytest.raises(ValueError, match=r"out=.*x\.csv: the table is written as \.tsv or \.parquet"):
        perturb_cells(p, model, genes=g, out=tmp_path / "x.csv")
    with pytest.raises(ValueError, match="pooling='cls' needs <cls> tokens"):
        perturb_cells(p, model, genes=g, pooling="cls", tokenizer=_tokenizer(model, preset="V1", model_input_size=128))
    with pytest.raises(ValueError, match="symbol 'X' names 2 genes"):
        b = a.copy()
        b.var["gene_symbol"] = b.var["gene_symbol"].astype(str)
        b.var.loc[b.var["ensembl_id"].isin(g), "gene_symbol"] = "X"
        b.write_h5ad(d / "dup.h5ad")
        perturb_cells(d / "dup.h5ad", model, genes=["X"])
    # a symbol of the input names its gene
    sym = a.var.set_index("ensembl_id")["gene_symbol"][g[0]]
    t = perturb_cells(p, model, genes=[sym], cells=[0, 1]).table
    assert t["gene"].tolist() == [g[0], g[0]] and t["symbol"].tolist() == [sym, sym]
