"""Single-cell tokenizers: omicskern (C++) vs the numpy reference algorithms, side by side.

Cells/s of Geneformer rank-value encoding (V2 preset, 4096 tokens) and scGPT value binning
(51 bins, deterministic digitize) from an in-memory CSR matrix and from a backed ``.h5ad``
(streamed from HDF5 in chunks), against numpy references written the way the reference
tokenizers work (Geneformer: per 512-cell chunk, vectorised normalisation, then one
``np.argsort(-v)`` per cell; scGPT: one ``np.quantile`` + ``np.digitize`` per cell). The numpy
references run on a prefix of the cells (they are slow) and their cells/s are compared.

Data: a synthetic matrix (negative-binomial-like counts, ~2k nonzero genes per cell out of 20k,
written once to a temp h5ad in chunks and reused) and the real files of ../shared/data/sc.
Peak memory: one subprocess per configuration (clean ``ru_maxrss``), tokenizing a backed h5ad
chunk by chunk (output streamed away, ``iter_tokenize``) for two cell counts: it should be flat.

    python benchmarks/bench_cell_tokenizers.py            # 200k cells (first run writes ~3.3 GB to /tmp)
    python benchmarks/bench_cell_tokenizers.py --quick    # 20k cells, < 2 min

Writes ``benchmarks/results/cell_tokenizers_<cpu>[_quick].md``. Timings on a shared machine
are noisy: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, SHARED, cpu_name, load_note  # noqa: E402  (also puts the checkout on sys.path)

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


# ---- timing -------------------------------------------------------------------------------------

def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_file(label, path, n_ref, repeats, rows_out, gene_column="ensembl_id", bin_column=None):
    import anndata as ad
    import scipy.sparse as sp

    from omicskern.tokenizers import BinnedValueTokenizer, RankValueTokenizer
    from omicskern.tokenizers.cells_base import TokenizeReport

    t_load = time.perf_counter()
    a = ad.read_h5ad(path)
    X = a.X if sp.isspmatrix_csr(a.X) else sp.csr_matrix(a.X)
    t_load = time.perf_counter() - t_load
    n = X.shape[0]
    keys = list(a.var[gene_column]) if gene_column else list(a.var_names)
    tokens, medians = dictionaries([k for k in keys if k])
    rank = RankValueTokenizer(tokens, medians, preset="V2", gene_column=gene_column, integer_check="ignore")
    bkeys = list(a.var[bin_column]) if bin_column else list(a.var_names)
    vocab = {"<pad>": 0, "<cls>": 1}
    for k in bkeys:
        vocab.setdefault(k, len(vocab))
    # skip_empty=True: the same cells as the numpy references (which drop all-zero cells), as in
    # the earlier tables; the default now keeps them as [<cls>], as scGPT does
    binner = BinnedValueTokenizer(vocab, gene_column=bin_column, skip_empty=True)
    # numpy references on a prefix
    n_ref = min(n_ref, n)
    col_slot = rank._match_genes(_open(a), None, TokenizeReport())
    col_token = binner._match_genes(_open(a), None, TokenizeReport())
    Xr = X[:n_ref]
    t_rank_ref = best_of(lambda: rank_value_numpy(Xr, col_slot, rank._slot_token, rank._slot_median, 4094, 2, 3), 1)
    t_bin_ref = best_of(lambda: bin_numpy(Xr, col_token), 1)
    n_path = min(n_ref, 1_000)
    Xp = X[:n_path]
    t_rank_path = best_of(lambda: rank_value_geneformer_path(Xp, col_slot, rank._slot_token, rank._slot_median,
                                                             4094, 2, 3), 1)
    t_bin_path = best_of(lambda: bin_scgpt_path(Xp, col_token), 1)
    # check that the timed outputs agree on the prefix (ties aside for rank: compare sets)
    mine = rank.tokenize(Xr, gene_ids=keys)
    ref = rank_value_numpy(Xr, col_slot, rank._slot_token, rank._slot_median, 4094, 2, 3)
    ref = [r for r in ref if len(r) > 2]
    assert len(mine) == len(ref) and all(np.array_equal(np.sort(mine[i]), np.sort(ref[i])) for i in range(len(ref)))
    mb = binner.tokenize(Xr, gene_ids=bkeys)
    rb = bin_numpy(Xr, col_token)
    assert all(np.array_equal(mb.row_values(i), rb[i][1][:]) for i in range(len(rb)))
    res = {}
    for name, tok in (("rank-value (Geneformer V2)", rank), ("binned-value (scGPT, 51 bins)", binner)):
        # both sources streamed the same way (chunks consumed, not accumulated): the rates compare
        # tokenization, not the copy of a multi-GB output
        ids = keys if tok is rank else bkeys
        t_mem = best_of(lambda: sum(len(c) for c in tok.iter_tokenize(X, gene_ids=ids)), repeats)
        t_backed = best_of(lambda: sum(len(c) for c in tok.iter_tokenize(str(path))), repeats)
        t_ref = t_rank_ref if tok is rank else t_bin_ref
        t_path = t_rank_path if tok is rank else t_bin_path
        res[name] = (n / t_mem, n / t_backed, n_ref / t_ref)
        rows_out.append((label, name, n, n / t_mem, n / t_backed, n_ref / t_ref, n_path / t_path))
        print(f"  {label:28s} {name:30s} mem {n / t_mem:>10,.0f}/s  backed {n / t_backed:>10,.0f}/s  "
              f"numpy {n_ref / t_ref:>8,.0f}/s ({(n / t_mem) / (n_ref / t_ref):.1f}x)  "
              f"ref-path {n_path / t_path:>8,.0f}/s ({(n / t_mem) / (n_path / t_path):.1f}x)", flush=True)
    return res


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k synthetic cells, one repeat (< 2 min)")
    ap.add_argument("--cells", type=int, default=None, help="synthetic cells (default 200k, quick 20k)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from omicskern._native import load_C

    n_cells = args.cells or (20_000 if args.quick else 200_000)
    n_small = n_cells // 4
    n_ref = 1_000 if args.quick else 5_000
    repeats = 1 if args.quick else 2
    threads = load_C().hardware_threads()
    print(f"cpu: {cpu_name()}, {threads} threads; synthetic {n_cells:,} x {N_GENES:,}", flush=True)
    big = synthetic_path(n_cells)
    small = synthetic_path(n_small)
    rows: list = []
    bench_file(f"synthetic {n_cells // 1000}k cells", big, n_ref, repeats, rows)
    real = [("pbmc_10x_v3_small (1,107 cells)", "pbmc_10x_v3_small.h5ad", "ensembl_id", "gene_symbol"),
            ("mouse_10x_10k_subset (10k cells)", "mouse_10x_10k_subset.h5ad", "ensembl_id", "gene_symbol"),
            ("wu2020_200 (200 cells)", "wu2020_200.h5ad", None, None)]
    for label, fname, gcol, bcol in real:
        p = SHARED / "data" / "sc" / fname
        if p.exists():
            bench_file(label, p, 2_000, 3, rows, gene_column=gcol, bin_column=bcol)
    mem_rows = []
    for method in ("rank", "bin"):
        for path, n in ((small, n_small), (big, n_cells)):
            nn, n_tok, base, peak, dt = peak_memory(path, method, chunk=1024 if args.quick else 8192)
            mem_rows.append((method, n, n_tok, base, peak, dt))
            print(f"  peak {method} {n:,} cells: {peak / 2**20:,.0f} MiB (after imports {base / 2**20:,.0f} MiB), "
                  f"{nn / dt:,.0f} cells/s backed, {n_tok:,} tokens streamed", flush=True)
    # ---- table
    lines = [f"# Single-cell tokenizers: omicskern C++ vs numpy reference algorithms ({'quick' if args.quick else 'full'})",
             "",
             f"Device: {cpu_name()} ({threads} threads available to the run). " + load_note() + " omicskern: C++ over CSR chunks, "
             f"{threads} threads, chunk 8192 cells, output chunks consumed as they come (`iter_tokenize`). numpy: the reference tokenizers' algorithms (Geneformer "
             "per-cell argsort after chunk-wise normalisation; scGPT per-cell quantile + digitize), on the first "
             f"{n_ref:,} cells (synthetic) or 2,000 (real).", "",
             f"Synthetic: {n_cells:,} cells x {N_GENES:,} genes, ~{NNZ_PER_CELL:,} nonzero genes per cell, "
             "1 + negative-binomial counts, float32 CSR in an uncompressed h5ad. Rank value: V2 preset (4096 "
             "tokens); binning: 51 bins, deterministic digitize.", "",
             "Two numpy baselines: **numpy** = the algorithm on CSR rows with per-cell numpy calls (a lean "
             "rewrite); **reference path** = the operations the reference tokenizers actually run (Geneformer "
             "`tokenize_anndata`: chunk densified by scipy's sparse/dense division, `X_norm[i]` row extraction "
             "per cell; scGPT: dense rows, `nonzero`/`quantile`/`digitize` per row, then `tokenize_batch`), "
             "on the first 1,000 cells. omicskern's rates include its per-call setup (matching the genes to the "
             "dictionary, ~10-20 ms for 30k genes; opening a backed file, ~50-100 ms), which the numpy columns leave "
             "out and which dominates the smallest files.", "",
             "| data | tokenizer | cells | in-memory CSR (cells/s) | backed h5ad (cells/s) | numpy (cells/s) "
             "| reference path (cells/s) | in-memory / numpy | in-memory / reference path | backed / in-memory |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, name, n, mem, backed, ref, path_rate in rows:
        lines.append(f"| {label} | {name} | {n:,} | {mem:,.0f} | {backed:,.0f} | {ref:,.0f} | {path_rate:,.0f} "
                     f"| {mem / ref:.1f}x | {mem / path_rate:.1f}x | {backed / mem:.2f} |")
    lines += ["", "Peak memory (VmHWM, one subprocess per row), tokenizing a backed h5ad chunk by chunk "
              f"({1024 if args.quick else 8192} cells per chunk) with the output streamed away (`iter_tokenize`):",
              "",
              "| tokenizer | cells | tokens | peak RSS | RSS after imports | peak - imports | cells/s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for method, n, n_tok, base, peak, dt in mem_rows:
        lines.append(f"| {method} | {n:,} | {n_tok:,} | {peak / 2**20:,.0f} MiB | {base / 2**20:,.0f} MiB | "
                     f"{(peak - base) / 2**20:,.0f} MiB | {n / dt:,.0f} |")
    slug = re.sub(r"[^a-z0-9]+", "_", cpu_name().lower()).strip("_")[:40]
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        f"cell_tokenizers_{slug}{'_quick' if args.quick else ''}.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
