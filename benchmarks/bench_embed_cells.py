"""embed-cells against the reference routes, same weights, one run, interleaved, each measurement
in a fresh process (so peak RSS is that route's own):

* Geneformer: ``omicskern.pipelines.cells`` vs Geneformer-style tokenization in numpy
  (backed h5ad read in chunks of 512 cells, counts / total * 10,000 / gene median, genes ranked
  per cell, ``<cls>``/``<eos>`` for V2) into batches padded to their longest cell through
  ``transformers`` ``BertForMaskedLM(output_hidden_states=True)``, ``hidden_states[-2]``, ``<cls>``
  -- what ``TranscriptomeTokenizer`` + ``EmbExtractor`` do.
* scGPT: ``embed_cells`` vs ``embed_data``'s recipe: per cell the nonzero in-vocab genes, numpy
  quantile binning (51 bins), ``<cls>`` with ``pad_value``, batches of 64 padded to their longest
  cell through ``torch.nn.TransformerEncoder`` (scGPT's non-flash path, with PyTorch's eval
  nested-tensor fast path), ``<cls>`` / L2 norm.

Cases: the fixture-size models on the real ``../shared/data/sc`` files; synthetic cells with
realistic sparsity (~8% of genes detected, geometric counts); a Geneformer-V2-104M-shaped model
(12 layers, 768 wide, random weights) on a few synthetic cells of ~1,000 genes; and the memory
case: omicskern on N vs 10 N synthetic cells (peak RSS must stay flat). Everything is scaled to
minutes on a 2-core CPU (the sizes are in the table). Each route's outputs are compared (max abs
difference) so a fast wrong route would show.

Usage: ``python benchmarks/bench_embed_cells.py [--quick] [--reps N]``; writes
``benchmarks/results/embed_cells_cpu[_quick].md``. ``run(quick) -> list[dict]`` for the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED, cpu_name, load_note  # noqa: E402

SC = SHARED / "data" / "sc"
FIXTURE = ROOT / "tests" / "data" / "fixtures" / "scgpt_tiny"


# -- inputs and models ---------------------------------------------------------------------------------
def synthetic(path: Path, n: int, genes, detect: float = 0.08, seed: int = 0, chunk: int = 50_000) -> Path:
    """n cells x len(genes), ``detect`` of the genes detected per cell, geometric counts; written
    in row blocks (so making a 1M-cell file holds one block)."""
    import anndata as ad
    import h5py
    import scipy.sparse as sp

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    g = len(genes)
    a = ad.AnnData(sp.csr_matrix((1, g), dtype=np.float32))
    a.var_names = list(genes)
    a.var["gene_symbol"] = list(genes)
    a.var["ensembl_id"] = list(genes)
    tmp = path.with_suffix(".tmp.h5ad")
    a.write_h5ad(tmp)
    with h5py.File(tmp, "r+") as f:
        del f["X"]
        del f["obs"]
        X = f.create_group("X")
        X.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n, g)})
        d = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(1 << 16,))
        ix = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(1 << 16,))
        ip = [np.zeros(1, np.int64)]
        tot = 0
        for a0 in range(0, n, chunk):
            k = min(chunk, n - a0)
            nnz = np.maximum(rng.binomial(g, detect, size=k), 1)
            cols = np.concatenate([np.sort(rng.choice(g, m, replace=False)) for m in nnz]).astype(np.int32)
            vals = rng.geometric(0.35, size=len(cols)).astype(np.float32)
            d.resize((tot + len(cols),))
            ix.resize((tot + len(cols),))
            d[tot:] = vals
            ix[tot:] = cols
            ip.append(tot + np.cumsum(nnz))
            tot += len(cols)
        X.create_dataset("indptr", data=np.concatenate(ip))
        obs = f.create_group("obs")
        obs.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index",
                          "column-order": np.array([], dtype="S")})
        obs.create_dataset("_index", data=np.array([f"cell{i}" for i in range(n)], dtype=object),
                           dtype=h5py.string_dtype())
        obs["_index"].attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
    os.replace(tmp, path)
    return path


def geneformer_folder(folder: Path, genes, *, layers: int, hidden: int, heads: int, inter: int,
                      max_pos: int = 4096) -> Path:
    """A Geneformer V2 layout (BertForMaskedLM + dictionaries) with random weights over ``genes``."""
    import torch

    from omicskern.models.geneformer import Geneformer, GeneformerConfig

    if (folder / "model.safetensors").is_file():
        return folder
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, **{g: 4 + i for i, g in enumerate(genes)}}
    cfg = dict(model_type="bert", architectures=["BertForMaskedLM"], vocab_size=len(tokens), hidden_size=hidden,
               num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter, hidden_act="relu",
               max_position_embeddings=max_pos, pad_token_id=0, layer_norm_eps=1e-12)
    torch.manual_seed(0)
    m = Geneformer(GeneformerConfig.from_dict(cfg))
    sd, seen = {}, set()
    for k, v in m.state_dict().items():  # tied tensors once, as transformers saves them
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            sd[k] = v.contiguous()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    with open(folder / "token_dictionary_bench.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(folder / "gene_median_dictionary_bench.pkl", "wb") as f:
        pickle.dump({g: float(rng.uniform(0.5, 4)) for g in genes}, f)
    return folder


# -- reference routes -------------------------------------------------------------------------------------
def _backed_chunks(path: Path, size: int = 512):
    import anndata as ad

    a = ad.read_h5ad(path, backed="r")
    for s in range(0, a.n_obs, size):
        yield a, s, a[s:s + size].to_memory()


def geneformer_reference(path: Path, folder: Path, batch_size: int = 32) -> np.ndarray:
    """Geneformer-style numpy tokenization + transformers BertForMaskedLM on padded batches."""
    import torch
    from transformers import BertForMaskedLM

    tokens = pickle.load(open(next(folder.glob("token_dictionary*.pkl")), "rb"))
    medians = pickle.load(open(next(folder.glob("gene_median_dictionary*.pkl")), "rb"))
    model = BertForMaskedLM.from_pretrained(str(folder)).eval()
    max_genes = model.config.max_position_embeddings - 2
    cells = []
    for a, s, chunk in _backed_chunks(path):
        keys = chunk.var["ensembl_id"].astype(str).to_numpy() if "ensembl_id" in chunk.var else chunk.var_names
        coding = np.array([k in tokens and k in medians for k in keys])
        tok = np.array([tokens[k] for k in keys[coding]])
        norm = np.array([medians[k] for k in keys[coding]])
        X = chunk.X.tocsr()
        n_counts = np.asarray(X.sum(1)).ravel()
        Xc = X[:, np.flatnonzero(coding)].tocsr()
        Xn = Xc.multiply(1.0 / n_counts[:, None]).multiply(10_000 / norm[None, :]).tocsr()
        for i in range(Xn.shape[0]):
            lo, hi = Xn.indptr[i], Xn.indptr[i + 1]
            if hi == lo:
                continue
            order = np.argsort(-Xn.data[lo:hi], kind="stable")
            cells.append(np.concatenate([[tokens["<cls>"]], tok[Xn.indices[lo:hi][order]][:max_genes],
                                         [tokens["<eos>"]]]))
    out = []
    with torch.no_grad():
        for b in range(0, len(cells), batch_size):
            rows = cells[b:b + batch_size]
            L = max(len(r) for r in rows)
            ids = torch.zeros(len(rows), L, dtype=torch.long)
            mask = torch.zeros(len(rows), L, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, :len(r)] = torch.from_numpy(r)
                mask[i, :len(r)] = 1
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
            out.append(hs[:, 0].float().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), np.float32)


def scgpt_reference(path: Path, folder: Path, batch_size: int = 64, max_length: int = 1200) -> np.ndarray:
    """embed_data's recipe with numpy binning, padded batches through nn.TransformerEncoder."""
    import torch
    from torch import nn

    import omicskern

    m = omicskern.load(folder)
    c = m.config
    layer = nn.TransformerEncoderLayer(c.embsize, c.nheads, c.d_hid, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, c.nlayers).eval()
    with torch.no_grad():
        for mine, theirs in zip(m.transformer_encoder.layers, enc.layers):
            theirs.self_attn.in_proj_weight.copy_(mine.self_attn.Wqkv.weight)
            theirs.self_attn.in_proj_bias.copy_(mine.self_attn.Wqkv.bias)
            theirs.self_attn.out_proj.load_state_dict(mine.self_attn.out_proj.state_dict())
            for n in ("linear1", "linear2", "norm1", "norm2"):
                getattr(theirs, n).load_state_dict(getattr(mine, n).state_dict())
    vocab, cls, pad = m.vocab, m.cls_token_id, m.pad_token_id
    qs = np.linspace(0, 1, 50)
    cells = []
    for a, s, chunk in _backed_chunks(path):
        keys = chunk.var["gene_symbol"].astype(str).to_numpy() if "gene_symbol" in chunk.var else chunk.var_names
        gid = np.array([vocab.get(k, -1) for k in keys])
        X = chunk.X[:, np.flatnonzero(gid >= 0)].tocsr()
        g2 = gid[gid >= 0]
        for i in range(X.shape[0]):
            lo, hi = X.indptr[i], X.indptr[i + 1]
            v = X.data[lo:hi]
            nz = v > 0
            if not nz.any():
                continue
            v, cols = v[nz], X.indices[lo:hi][nz]
            bins = np.digitize(v, np.quantile(v, qs))
            ids = np.concatenate([[cls], g2[cols]])
            vals = np.concatenate([[c.pad_value], bins]).astype(np.float32)
            if len(ids) > max_length:
                keep = np.concatenate([[0], np.sort(np.random.default_rng(0).choice(len(ids) - 1, max_length - 1,
                                                                                    replace=False)) + 1])
                ids, vals = ids[keep], vals[keep]
            cells.append((ids, vals))
    out = []
    with torch.no_grad():
        for b in range(0, len(cells), batch_size):
            rows = cells[b:b + batch_size]
            L = max(len(r[0]) for r in rows)
            ids = torch.full((len(rows), L), pad, dtype=torch.long)
            vals = torch.full((len(rows), L), float(c.pad_value))
            for i, (r, v) in enumerate(rows):
                ids[i, :len(r)] = torch.from_numpy(r.astype(np.int64))
                vals[i, :len(r)] = torch.from_numpy(v)
            _, x = m._embed_tokens(ids, vals)
            h = enc(x, src_key_padding_mask=ids == pad)[:, 0]
            out.append((h / h.norm(dim=1, keepdim=True)).numpy())
    return np.concatenate(out)


# -- one measurement, in its own process ---------------------------------------------------------------
def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec.get("threads", os.cpu_count() or 1))
    import warnings

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    src, model = Path(spec["input"]), Path(spec["model"])
    if spec["route"] == "omicskern":
        from omicskern.pipelines.cells import embed_cells

        import shutil

        out = Path(spec["out"])
        for p in (out, out.with_suffix(".obs.csv"), out.with_suffix(".job.json")):
            p.unlink(missing_ok=True)
        for p in (out, Path(str(out) + ".parts")):
            if p.is_dir():
                shutil.rmtree(p)
        r = embed_cells(src, model, out, cells_per_unit=spec.get("unit", 4096), batch_tokens=spec.get("tokens", 16384),
                        threads=spec.get("threads"))
        emb = np.load(out) if out.suffix == ".npy" else None
        n = r.n_embedded
        split = {"tokenize_s": r.tokenize_s, "model_s": r.model_s, "wait_s": r.wait_s}
    elif spec["kind"] == "geneformer":
        emb = geneformer_reference(src, model)
        n, split = len(emb), {}
    else:
        emb = scgpt_reference(src, model)
        n, split = len(emb), {}
    wall = time.perf_counter() - t0
    if emb is not None and spec.get("save"):
        np.save(spec["save"], emb[~np.isnan(emb).any(1)])
    return {"wall_s": wall, "cells": int(n), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **split}


def measure(spec: dict) -> dict:
    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode:
        raise RuntimeError(f"worker failed: {spec}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _case(name, kind, src, model, work: Path, reps: int, routes=("omicskern", "reference"), **kw) -> list[dict]:
    rows = {r: [] for r in routes}
    saved = {}
    for rep in range(reps):  # interleaved: route A, route B, A, B ...
        for r in routes:
            save = str(work / f"{name}-{r}.npy") if rep == 0 else None
            suffix = kw.pop("suffix", None) or ".npy"
            spec = {"route": r, "kind": kind, "input": str(src), "model": str(model),
                    "out": str(work / f"case{len(name)}-{abs(hash(name)) % 10**8}-{r}-out{suffix}"), "save": save, **kw}
            kw["suffix"] = suffix
            rows[r].append(measure(spec))
            if save:
                saved[r] = save
    out = []
    for r in routes:
        ms = rows[r]
        med = float(np.median([m["wall_s"] for m in ms]))
        cells = ms[0]["cells"]
        out.append({"case": name, "route": r, "cells": cells, "wall_s": med, "cells_per_s": cells / med,
                    "peak_rss_mb": max(m["peak_rss_mb"] for m in ms), "reps": reps,
                    **{k: float(np.median([m[k] for m in ms])) for k in ("tokenize_s", "model_s", "wait_s") if k in ms[0]}})
    if len(routes) == 2 and all(k in saved for k in routes):
        a, b = np.load(saved[routes[0]]), np.load(saved[routes[1]])
        diff = float(np.abs(a - b).max()) if a.shape == b.shape else float("nan")
        for o in out:
            o["max_abs_diff"] = diff
        out[0]["speedup"] = out[0]["cells_per_s"] / out[1]["cells_per_s"]
    return out


def memory_cases(sizes, work: Path) -> list[dict]:
    """omicskern on N vs 10 N synthetic cells (scGPT tiny, .zarr out): peak RSS must stay flat."""
    vocab = json.loads((FIXTURE / "vocab.json").read_text())
    genes = [g for g in vocab if not g.startswith("<")] + [f"OTHER{i}" for i in range(300)]
    results = []
    for n in sizes:
        src = synthetic(work / f"mem_{n}.h5ad", n, genes, detect=0.05, seed=3)
        results += _case(f"memory: scGPT tiny, {n:,} synthetic cells", "scgpt", src, FIXTURE, work, 1,
                         routes=("omicskern",), unit=4096, suffix=".zarr")
        Path(src).unlink()
    return results


def run(quick: bool = True, reps: int | None = None) -> list[dict]:
    import anndata as ad

    reps = reps or (1 if quick else 3)
    work = Path(tempfile.mkdtemp(prefix="bench_embed_cells-"))
    results = []
    # fixture-size models on real files
    wu = SC / "wu2020_200.h5ad"
    if wu.is_file():
        results += _case("scGPT tiny, wu2020_200 (real, 200 cells)", "scgpt", wu, FIXTURE, work, reps)
    vocab = json.loads((FIXTURE / "vocab.json").read_text())
    genes = [g for g in vocab if not g.startswith("<")] + [f"OTHER{i}" for i in range(2700)]
    n_syn = 5_000 if quick else 20_000
    syn = synthetic(work / f"syn_scgpt_{n_syn}.h5ad", n_syn, genes)
    results += _case(f"scGPT tiny, synthetic {n_syn:,} cells x 3,000 genes", "scgpt", syn, FIXTURE, work, reps)
    pbmc = SC / "pbmc_10x_v3_small.h5ad"
    if pbmc.is_file():
        a = ad.read_h5ad(pbmc, backed="r")
        gf = geneformer_folder(work / "gf_small", list(a.var["ensembl_id"].astype(str)), layers=4, hidden=256, heads=4,
                               inter=512)
        results += _case("Geneformer 4x256, pbmc_10x_v3_small (real, 1,107 cells)", "geneformer", pbmc, gf, work, reps)
    mouse = SC / "mouse_10x_10k_subset.h5ad"
    if mouse.is_file() and not quick:
        a = ad.read_h5ad(mouse, backed="r")
        gfm = geneformer_folder(work / "gf_mouse", list(a.var["ensembl_id"].astype(str)), layers=4, hidden=256,
                                heads=4, inter=512)
        results += _case("Geneformer 4x256, mouse_10x_10k (real, 10,000 cells)", "geneformer", mouse, gfm, work, reps)
    # V2-104M-shaped
    big_genes = [f"ENSG{i:011d}" for i in range(12_000)]
    n_big = 8 if quick else 24
    big_src = synthetic(work / f"syn_big_{n_big}.h5ad", n_big, big_genes, detect=0.085, seed=2)
    gfb = geneformer_folder(work / "gf_104m", big_genes, layers=12, hidden=768, heads=12, inter=3072)
    results += _case(f"Geneformer V2-104M-shaped (12x768), synthetic {n_big} cells x ~1,000 genes", "geneformer",
                     big_src, gfb, work, reps, tokens=4096)
    # memory: N vs 10 N
    results += memory_cases((20_000, 200_000) if quick else (100_000, 1_000_000), work)
    return results


def table(results: list[dict], quick: bool) -> str:
    import torch

    lines = [f"# embed-cells vs the reference routes (CPU{', --quick' if quick else ''})", "",
             f"Device: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads. {load_note()}",
             "Each number: the median of interleaved runs, each in a fresh process (wall time of the whole route: "
             "reading, tokenizing, model, writing; peak RSS of that process). Command: "
             f"`python benchmarks/bench_embed_cells.py{' --quick' if quick else ''}`.", "",
             "| case | route | cells | wall s | cells/s | speed-up | peak RSS MB | max abs diff | tokenize s | model s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['case']} | {r['route']} | {r['cells']:,} | {r['wall_s']:.2f} | {r['cells_per_s']:,.0f} | "
                     f"{r.get('speedup', float('nan')):.2f}x | {r['peak_rss_mb']:,.0f} | {r.get('max_abs_diff', float('nan')):.1e} | "
                     f"{r.get('tokenize_s', float('nan')):.2f} | {r.get('model_s', float('nan')):.2f} |".replace("nanx", "").replace("nan", ""))
    lines += ["", "Notes: the sizes are scaled to minutes on a shared 2-core CPU (synthetic cells: ~8% of genes "
              "detected, geometric counts; the V2-104M-shaped model has random weights and ~1,000 genes per cell). "
              "`max abs diff`: the two routes' cell vectors against each other (Geneformer: `<cls>` of hidden_states[-2]; "
              "scGPT: L2-normalised `<cls>`). `tokenize s` is the input thread's time (it overlaps the model). "
              "The memory rows are one process each, `.zarr` output; peak RSS includes the interpreter, torch and "
              "anndata (about 450 MB here)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--memory", action="store_true", help="only the memory case, 100k vs 1M cells")
    ap.add_argument("--worker", default=None)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.memory:
        res = memory_cases((100_000, 1_000_000), Path(tempfile.mkdtemp(prefix="bench_embed_cells-")))
        name = "embed_cells_memory_cpu.md"
    else:
        res = run(args.quick, args.reps)
        name = f"embed_cells_cpu{'_quick' if args.quick else ''}.md"
    text = table(res, args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
