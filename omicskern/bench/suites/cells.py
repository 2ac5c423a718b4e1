"""Single-cell tokenizers: cells/s of omicskern's Geneformer rank-value encoding (V2 preset, 4096
tokens) and scGPT value binning (51 bins) from an in-memory CSR matrix and from a backed
``.h5ad``, against numpy references written the way the reference tokenizers work (Geneformer:
per 512-cell chunk normalisation then one ``argsort`` per cell; scGPT: ``quantile`` + ``digitize``
per cell), and against the operations the reference code actually runs ("reference path"); plus
peak memory while streaming a backed file (one subprocess per row: clean VmHWM). Folds in the
former ``benchmarks/bench_cell_tokenizers.py``.

Data: a synthetic matrix (negative-binomial-like counts, ~2k nonzero genes of 20k per cell,
written once to a temp h5ad and reused; ``OMICSKERN_BENCH_DIR`` chooses the folder) and the real
files of the shared ``data/sc`` folder when present. Outputs are checked equal to the numpy
references on the prefix they share.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from omicskern.bench.cases import ab_records
from omicskern.bench.runner import ROOT, Context
from omicskern.bench.timing import interleaved

N_GENES = 20_000
NNZ_PER_CELL = 2_000


# ---- synthetic data -----------------------------------------------------------------------------

def write_synthetic_h5ad(path: Path, n_cells: int, seed: int = 0, chunk: int = 2_000) -> None:
    """Cells x 20k genes, ~2k nonzero per cell: gene detection rates and means drawn once
    (log-normal), counts 1 + NegBin(r=2, mean=mu_g). Written chunk by chunk (bounded memory)."""
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    rng = np.random.default_rng(seed)
    rate = rng.lognormal(0, 1.0, N_GENES)
    rate *= NNZ_PER_CELL / rate.sum()
    rate = np.minimum(rate, 0.95).astype(np.float32)
    mu = rng.lognormal(0.0, 1.0, N_GENES)
    p_nb = (2.0 / (2.0 + mu)).astype(np.float64)
    tmp = path.with_suffix(".partial")
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]))
        genes = [f"ENSG{j:011d}" for j in range(N_GENES)]
        write_elem(f, "var", pd.DataFrame({"ensembl_id": genes, "gene_symbol": [f"G{j}" for j in range(N_GENES)]},
                                          index=genes))
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = (n_cells, N_GENES)
        indptr = np.zeros(n_cells + 1, np.int64)
        ds_i = g.create_dataset("indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 20,))
        ds_d = g.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 20,))
        nnz = 0
        for s in range(0, n_cells, chunk):
            e = min(n_cells, s + chunk)
            mask = rng.random((e - s, N_GENES), dtype=np.float32) < rate
            rows, cols = np.nonzero(mask)
            vals = (1 + rng.negative_binomial(2, p_nb[cols])).astype(np.float32)
            counts = np.bincount(rows, minlength=e - s)
            indptr[s + 1:e + 1] = nnz + np.cumsum(counts)
            ds_i.resize((nnz + len(cols),))
            ds_d.resize((nnz + len(cols),))
            ds_i[nnz:] = cols.astype(np.int32)
            ds_d[nnz:] = vals
            nnz += len(cols)
        g.create_dataset("indptr", data=indptr)
        for k in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            f.create_group(k).attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
    tmp.rename(path)


def synthetic_path(n_cells: int) -> Path:
    d = Path(os.environ.get("OMICSKERN_BENCH_DIR", tempfile.gettempdir())) / "omicskern_bench"
    d.mkdir(exist_ok=True)
    p = d / f"synthetic_{n_cells}x{N_GENES}_nnz{NNZ_PER_CELL}_v1.h5ad"
    if not p.exists():
        t = time.perf_counter()
        write_synthetic_h5ad(p, n_cells)
        print(f"  wrote {p} ({p.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s", flush=True)
    return p


def dictionaries(gene_keys, seed=1):
    rng = np.random.default_rng(seed)
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
    medians = {}
    for k in gene_keys:
        if k not in tokens:
            tokens[k] = len(tokens)
            medians[k] = float(rng.lognormal(0, 1))
    return tokens, medians


# ---- numpy references (the reference tokenizers' algorithms) -------------------------------------

def rank_value_numpy(X, col_slot, slot_token, slot_median, max_genes, cls_id, eos_id, chunk=512):
    """Geneformer's tokenize_anndata: per chunk, X / n_counts * 10000 / medians over the
    dictionary genes, then one argsort per cell; totals are the sums over all genes."""
    out = []
    keep = np.flatnonzero(col_slot >= 0)
    tok = slot_token[col_slot[keep]]
    med = slot_median[col_slot[keep]]
    for s in range(0, X.shape[0], chunk):
        Xc = X[s:s + chunk]
        n_counts = np.asarray(Xc.sum(axis=1)).ravel()
        Xk = Xc[:, keep].tocsr()
        Xk.data = (Xk.data / np.repeat(n_counts, np.diff(Xk.indptr)) * 10_000) / med[Xk.indices]
        for i in range(Xk.shape[0]):
            a, b = Xk.indptr[i], Xk.indptr[i + 1]
            order = np.argsort(-Xk.data[a:b])[:max_genes]
            out.append(np.concatenate([[cls_id], tok[Xk.indices[a:b][order]], [eos_id]]))
    return out


def rank_value_geneformer_path(X, col_slot, slot_token, slot_median, max_genes, cls_id, eos_id, chunk=512):
    """The same algorithm through the operations Geneformer's tokenize_anndata performs: per
    512-cell chunk, ``X_view / n_counts * target_sum / norm_factor_vector`` (scipy divides a sparse
    matrix by a dense column by densifying it), ``sp.csr_matrix`` back, then per cell
    ``rank_genes(X_norm[i].data, tokens[X_norm[i].indices])`` (two scipy row extractions)."""
    import scipy.sparse as sp

    keep = np.flatnonzero(col_slot >= 0)
    tok = slot_token[col_slot[keep]]
    med = slot_median[col_slot[keep]]
    out = []
    for s in range(0, X.shape[0], chunk):
        Xc = X[s:s + chunk]
        n_counts = np.asarray(Xc.sum(axis=1))
        X_view = Xc[:, keep]
        X_norm = sp.csr_matrix(X_view / n_counts * 10_000 / med)
        for i in range(X_norm.shape[0]):
            v = X_norm[i].data
            order = np.argsort(-v)
            ids = tok[X_norm[i].indices][order][:max_genes]
            out.append(np.concatenate([[cls_id], ids, [eos_id]]))
    return out


def bin_scgpt_path(X, col_token, n_bins=51, chunk=512):
    """scGPT's Preprocessor binning (dense rows: ``layer_data.A``, here per 512-cell chunk to bound
    memory) then tokenize_batch (``np.nonzero`` of each binned row, gene ids, ``<cls>``)."""
    keep = np.flatnonzero(col_token >= 0)
    toks = col_token[keep]
    qs = np.linspace(0, 1, n_bins - 1)
    out = []
    for s in range(0, X.shape[0], chunk):
        dense = X[s:s + chunk][:, keep].toarray()
        for row in dense:
            if row.max() == 0:
                continue
            nz = row.nonzero()
            x = row[nz]
            binned = np.zeros_like(row, dtype=np.int64)
            binned[nz] = np.digitize(x, np.quantile(x, qs))
            idx = np.nonzero(binned)[0]
            out.append((np.insert(toks[idx], 0, 0), np.insert(binned[idx], 0, 0)))
    return out


def bin_numpy(X, col_token, n_bins=51):
    """scGPT's binning + tokenize_batch: per cell, quantile edges of the nonzero values, digitize."""
    qs = np.linspace(0, 1, n_bins - 1)
    keep = np.flatnonzero(col_token >= 0)
    Xk = X[:, keep].tocsr()
    toks = col_token[keep]
    out = []
    for i in range(Xk.shape[0]):
        a, b = Xk.indptr[i], Xk.indptr[i + 1]
        x = Xk.data[a:b]
        if len(x) == 0:
            continue
        digits = np.digitize(x, np.quantile(x, qs))
        out.append((np.concatenate([[0], toks[Xk.indices[a:b]]]), np.concatenate([[0], digits])))
    return out


def _open(a):
    from omicskern.io.cells import open_cells

    return open_cells(a)


PEAK_SCRIPT = r"""
import resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from omicskern.tokenizers import RankValueTokenizer, BinnedValueTokenizer
rng = np.random.default_rng(1)
genes = [f"ENSG{{j:011d}}" for j in range({n_genes})]
tokens = {{"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}}
medians = {{}}
for k in genes:
    tokens[k] = len(tokens); medians[k] = float(rng.lognormal(0, 1))
if {method!r} == "rank":
    tok = RankValueTokenizer(tokens, medians, preset="V2", chunk_size={chunk})
else:
    tok = BinnedValueTokenizer({{**tokens, "<cls>": 2}}, gene_column="ensembl_id", chunk_size={chunk})
def hwm():  # peak RSS of this process image (VmHWM resets at exec; ru_maxrss may not)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base = hwm()
n = n_tok = 0
t = time.perf_counter()
for part in tok.iter_tokenize({path!r}):
    n += len(part); n_tok += len(part.input_ids)
dt = time.perf_counter() - t
peak = hwm()
print(n, n_tok, base * 1024, peak * 1024, dt)
"""


def peak_memory(path, method, chunk=8192):
    code = PEAK_SCRIPT.format(root=str(ROOT), n_genes=N_GENES, method=method, chunk=chunk, path=str(path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    n, n_tok, base, peak, dt = r.stdout.split()
    return int(n), int(n_tok), int(base), int(peak), float(dt)


DESCS = {
    "omicskern in-memory CSR": "omicskern (C++) over an in-memory CSR matrix, chunks consumed as they come "
                               "(iter_tokenize), all threads",
    "omicskern backed h5ad": "omicskern streaming the .h5ad from HDF5 in chunks (iter_tokenize), all threads",
    "numpy": "baseline: the reference algorithm on CSR rows with per-cell numpy calls (a lean rewrite)",
    "reference path": "baseline: the operations the reference tokenizer runs (Geneformer tokenize_anndata's scipy "
                      "densifying division and X_norm[i] rows; scGPT's dense rows, quantile/digitize, tokenize_batch)",
}


def bench_file(ctx: Context, label: str, path: Path, n_ref: int, gene_column="ensembl_id", bin_column=None) -> list:
    import anndata as ad
    import scipy.sparse as sp

    from omicskern.tokenizers import BinnedValueTokenizer, RankValueTokenizer
    from omicskern.tokenizers.cells_base import TokenizeReport

    a = ad.read_h5ad(path)
    X = a.X if sp.isspmatrix_csr(a.X) else sp.csr_matrix(a.X)
    n = X.shape[0]
    keys = list(a.var[gene_column]) if gene_column else list(a.var_names)
    tokens, medians = dictionaries([k for k in keys if k])
    rank = RankValueTokenizer(tokens, medians, preset="V2", gene_column=gene_column, integer_check="ignore")
    bkeys = list(a.var[bin_column]) if bin_column else list(a.var_names)
    vocab = {"<pad>": 0, "<cls>": 1}
    for k in bkeys:
        vocab.setdefault(k, len(vocab))
    # skip_empty=True: the same cells as the numpy references (which drop all-zero cells)
    binner = BinnedValueTokenizer(vocab, gene_column=bin_column, skip_empty=True)
    n_ref = min(n_ref, n)
    n_path = min(n_ref, ctx.pick(100, 1_000, 1_000))
    col_slot = rank._match_genes(_open(a), None, TokenizeReport())
    col_token = binner._match_genes(_open(a), None, TokenizeReport())
    Xr, Xp = X[:n_ref], X[:n_path]
    # the timed outputs agree on the prefix (ties aside for rank: compare sets)
    mine = rank.tokenize(Xr, gene_ids=keys)
    ref = [r for r in rank_value_numpy(Xr, col_slot, rank._slot_token, rank._slot_median, 4094, 2, 3) if len(r) > 2]
    same_rank = len(mine) == len(ref) and all(np.array_equal(np.sort(mine[i]), np.sort(ref[i])) for i in range(len(ref)))
    mb = binner.tokenize(Xr, gene_ids=bkeys)
    rb = bin_numpy(Xr, col_token)
    same_bin = len(mb) == len(rb) and all(np.array_equal(mb.row_values(i), rb[i][1]) for i in range(len(rb)))
    out = []
    for name, tok, ids, same in (("rank-value (Geneformer V2)", rank, keys, same_rank),
                                 ("binned-value (scGPT, 51 bins)", binner, bkeys, same_bin)):
        if tok is rank:
            ref_fn = lambda: rank_value_numpy(Xr, col_slot, rank._slot_token, rank._slot_median, 4094, 2, 3)  # noqa: E731
            path_fn = lambda: rank_value_geneformer_path(Xp, col_slot, rank._slot_token, rank._slot_median,  # noqa: E731
                                                         4094, 2, 3)
        else:
            ref_fn = lambda: bin_numpy(Xr, col_token)  # noqa: E731
            path_fn = lambda: bin_scgpt_path(Xp, col_token)  # noqa: E731
        fns = {"omicskern in-memory CSR": lambda tok=tok, ids=ids: sum(len(c) for c in tok.iter_tokenize(X, gene_ids=ids)),
               "omicskern backed h5ad": lambda tok=tok: sum(len(c) for c in tok.iter_tokenize(str(path))),
               "numpy": ref_fn, "reference path": path_fn}
        t = interleaved(fns, clock="wall", repeats=ctx.pick(1, 1, 2), min_repeats=1, warmup=ctx.pick(0, 0, 1),
                        budget_s=0.0)
        cells = {"omicskern in-memory CSR": n, "omicskern backed h5ad": n, "numpy": n_ref, "reference path": n_path}
        note = f"outputs equal to the numpy reference on the first {n_ref:,} cells: {'yes' if same else 'NO'}"
        for impl, tm in t.items():
            r = ab_records(name, dict(data=label, cells=cells[impl]), {impl: tm}, DESCS, None, "throughput",
                           "cells/s", per=cells[impl], rate=True, note=note)[0]
            if impl.startswith("omicskern"):
                base = t["numpy"]
                r.update(baseline="numpy", baseline_desc=DESCS["numpy"], baseline_value=n_ref / base.median)
            out.append(r)
    return out


def synthetic(ctx: Context, n_cells: int) -> Path:
    d = Path(os.environ.get("OMICSKERN_BENCH_DIR", tempfile.gettempdir())) / "omicskern_bench"
    d.mkdir(exist_ok=True)
    p = d / f"synthetic_{n_cells}x{N_GENES}_nnz{NNZ_PER_CELL}_v1.h5ad"
    if not p.exists():
        t = time.perf_counter()
        write_synthetic_h5ad(p, n_cells)
        ctx.log(f"  wrote {p} ({p.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    return p


def run(ctx: Context) -> list[dict]:
    n_cells = ctx.pick(400, 20_000, 200_000)
    n_ref = ctx.pick(200, 1_000, 5_000)
    big = synthetic(ctx, n_cells)
    out = bench_file(ctx, f"synthetic {n_cells:,} cells", big, n_ref)
    if not ctx.tiny:
        for label, fname, gcol, bcol in (
                ("pbmc_10x_v3_small (1,107 cells)", "pbmc_10x_v3_small.h5ad", "ensembl_id", "gene_symbol"),
                ("mouse_10x_10k_subset (10k cells)", "mouse_10x_10k_subset.h5ad", "ensembl_id", "gene_symbol"),
                ("wu2020_200 (200 cells)", "wu2020_200.h5ad", None, None)):
            p = ctx.data("data", "sc", fname)
            if p is not None:
                out += bench_file(ctx, label, p, 2_000, gene_column=gcol, bin_column=bcol)
        small = synthetic(ctx, n_cells // 4)
        for method in ("rank", "bin"):
            for path, n in ((small, n_cells // 4), (big, n_cells)):
                nn, n_tok, base, peak, dt = peak_memory(path, method, chunk=1024 if ctx.quick else 8192)
                out.append(dict(case="peak memory, backed h5ad streamed", params=dict(method=method, cells=n,
                                tokens=n_tok, mem_method="VmHWM of a fresh process"),
                                impl=f"omicskern {method}", metric="peak_mem", unit="MiB", value=(peak - base) / 2**20,
                                repeats=1, note=f"peak RSS {peak / 2**20:,.0f} MiB, after imports "
                                                f"{base / 2**20:,.0f} MiB; {nn / dt:,.0f} cells/s"))
    return out
