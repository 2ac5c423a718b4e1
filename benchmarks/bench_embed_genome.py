"""Whole-genome embedding, end to end: ``omicskern embed-genome`` vs the loop users write today.

Same weights, same genome, same windows, one process per implementation and case (so peak memory
is that run's alone), implementations alternated (A B A B ...) so that a busy machine slows both.

* **omicskern**: :func:`omicskern.pipelines.genome.embed_genome` into a Zarr store: C++ tokenizer in a
  background thread, length-sorted token-budget batches, ragged varlen attention (DNABERT-2),
  omicskern ``fft_conv`` (HyenaDNA), float16 store with the region table.
* **user loop**: ``pyfaidx.Fasta`` -> windows (Python slicing, ``.upper()``) -> the model's
  reference tokenizer path (HF ``tokenizers`` ``Tokenizer.from_file(tokenizer.json)`` for BPE; a
  Python ``dict`` character lookup for HyenaDNA's char vocabulary) -> padded batches of 8 windows ->
  the reference model path (DNABERT-2: one ``[B, H, L, L]`` ALiBi + mask bias tensor and dense
  softmax, :func:`omicskern.models.dnabert2.dnabert2_padded_reference`; HyenaDNA: its own
  ``torch.fft`` convolution at 2L in fp32 with separate bias and gate ops, and its short filter as
  the grouped ``nn.Conv1d`` it builds) -> mean over real tokens -> ``np.save`` of the stacked
  embeddings.

Cases: E. coli K-12 with the built-in HyenaDNA (``omicskern.load("builtin")``; a random HyenaDNA of
the same shape if the built-in is not there), P. falciparum with a DNABERT-2-shaped model with
random weights at a reduced size (hidden 256, 4 layers, 4 heads, the released 4,096-token BPE
vocabulary) on 512-token windows. ``--quick`` embeds the first bases of each genome
(``--bases``). Metric: bp/s end to end (reading, tokenizing, model, writing); peak RSS growth.

    python benchmarks/bench_embed_genome.py --quick      # ~5 min on 2 CPU cores
    python benchmarks/bench_embed_genome.py              # whole genomes

Writes ``benchmarks/results/embed_genome_<device>.md`` (and ``.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, SHARED, device_name, load_note, slug  # first: puts this checkout on sys.path

CASES = {
    "ecoli-builtin": dict(fasta="dna/ecoli_k12_mg1655.fa.gz", model="builtin", window=None, quick_bases=400_000),
    "pfalciparum-dnabert2": dict(fasta="dna/pfalciparum_3d7.fa.gz", model="dnabert2", window=2000,
                                 quick_bases=200_000),
}


def _dnabert2_folder(folder: Path) -> Path:
    import torch

    from omicskern.models.dnabert2 import DNABERT2, DNABERT2Config
    from tests.models._folders import _save  # tied tensors saved once, as transformers does

    cfg = dict(vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
               max_position_embeddings=512, architectures=["BertForMaskedLM"],
               auto_map={"AutoConfig": "configuration_bert.BertConfig", "AutoModel": "bert_layers.BertModel",
                         "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM"})
    torch.manual_seed(0)
    m = DNABERT2(DNABERT2Config.from_dict(cfg))
    _save(m, folder, cfg)
    tok = ROOT / "tests" / "data" / "dnabert2_tokenizer.json"
    (folder / "tokenizer.json").write_bytes(tok.read_bytes())
    return folder


def _slice_fasta(src: Path, dst: Path, bases: int | None) -> Path:
    """The genome's records (upper-cased: P. falciparum is all lower case, and the user loop upper-cases
    too), cut after ``bases`` bases in total."""
    from omicskern.io.fasta import FastaFile

    left = bases if bases else float("inf")
    with FastaFile(src) as fa, open(dst, "w") as f:
        for name in fa.names:
            if left <= 0:
                break
            seq = fa.sequence(name)[: int(min(left, 1 << 62))].upper()
            left -= len(seq)
            f.write(f">{name}\n")
            for i in range(0, len(seq), 80):
                f.write(seq[i:i + 80] + "\n")
    return dst


# -- the implementations (each runs in its own process: `--run IMPL CASE.json`) -----------------------
def _user_loop(case: dict) -> dict:
    import numpy as np
    import pyfaidx
    import torch

    import omicskern

    torch.set_num_threads(case["threads"])
    model = omicskern.load(case["model_dir"]).eval()
    window = case["window"]
    t0 = time.perf_counter()
    fa = pyfaidx.Fasta(case["fasta"])
    out, bases = [], 0
    if model.model_type == "dnabert2":
        from tokenizers import Tokenizer

        from omicskern.models.dnabert2 import dnabert2_padded_reference

        tk = Tokenizer.from_file(str(Path(case["model_dir"]) / "tokenizer.json"))
        tk.enable_padding(pad_id=3, pad_token="[PAD]")
        tk.enable_truncation(max_length=model.max_length)

        def run(batch):
            enc = tk.encode_batch(batch)
            ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc])
            h = dnabert2_padded_reference(model, ids, mask)
            m = mask[..., None].float()
            return ((h * m).sum(1) / m.sum(1)).numpy()
    else:
        import omicskern.modules.hyena as hy
        from omicskern.ops.fftconv import fft_conv_hyenadna_ref

        vocab = model.get_tokenizer().get_vocab()
        cls, sep, pad = vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"]
        # HyenaDNA's own fftconv (standalone_hyenadna.py): rfft/irfft at 2L in fp32, then + u*D, then
        # the gate, as separate ops (this process only runs the user loop)
        hy.fft_conv = lambda u, k, bias=None, *, gate=None, causal=True, backend=None: fft_conv_hyenadna_ref(
            u, k, bias, gate=gate)
        # and its short filter as HyenaDNA builds it: nn.Conv1d(C, C, 3, groups=C, padding=2), cut to L
        import torch.nn.functional as F

        hy.causal_conv1d = lambda x, w, b=None, *, activation=None, backend=None: F.conv1d(
            x, w.unsqueeze(1), b, padding=w.shape[1] - 1, groups=x.shape[1])[..., :x.shape[-1]]

        def run(batch):
            rows = [[cls] + [vocab.get(ch, vocab["N"]) for ch in s] + [sep] for s in batch]
            n = max(map(len, rows))
            ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows])  # HyenaDNA pads on the left
            mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
            h = model.forward_padded(ids).last_hidden_state
            m = mask[..., None].float()
            return ((h * m).sum(1) / m.sum(1)).numpy()

    with torch.no_grad():
        for name in fa.keys():
            seq = str(fa[name][:]).upper()
            batch = []
            for s in range(0, len(seq), window):
                batch.append(seq[s:s + window])
                bases += len(batch[-1])
                if len(batch) == 8:
                    out.append(run(batch))
                    batch = []
            if batch:
                out.append(run(batch))
    np.save(Path(case["tmp"]) / "user.npy", np.concatenate(out).astype(np.float16))
    return {"bases": bases, "wall_s": time.perf_counter() - t0}


def _omicskern(case: dict) -> dict:
    import omicskern
    from omicskern.pipelines.genome import embed_genome

    model = omicskern.load(case["model_dir"])
    t0 = time.perf_counter()
    out = Path(case["tmp"]) / f"omk-{time.time_ns()}.zarr"
    res = embed_genome(case["fasta"], model, out, window=case["window"], threads=case["threads"],
                       batch_tokens=case["batch_tokens"], n_policy="keep")
    return {"bases": res.bases, "wall_s": time.perf_counter() - t0, "model_s": res.model_s,
            "input_wait_s": res.input_wait_s}


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return ru.ru_utime + ru.ru_stime


def _child(impl: str, case_json: str) -> None:
    case = json.loads(Path(case_json).read_text())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c0 = _cpu_s()
    r = (_omicskern if impl == "omicskern" else _user_loop)(case)
    r["cpu_s"] = _cpu_s() - c0  # includes model loading in both (small beside the job)
    r["peak_rss_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print("RESULT " + json.dumps(r))


def _spawn(impl: str, case_file: Path) -> dict:
    p = subprocess.run([sys.executable, __file__, "--run", impl, str(case_file)], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{impl} failed:\n{p.stderr[-3000:]}")
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[7:])


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bases", type=int, default=None, help="quick mode: bases per genome (default per case)")
    ap.add_argument("--run", nargs=2, metavar=("IMPL", "CASE_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run:
        _child(*args.run)
        return []
    import torch

    torch.set_num_threads(args.threads)
    dev = device_name("cpu")
    load = load_note()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.cases:
            spec = CASES[name]
            bases = (args.bases or spec["quick_bases"]) if args.quick else None
            fasta = _slice_fasta(SHARED / "data" / spec["fasta"], tmp / f"{name}.fa", bases)
            if spec["model"] == "builtin":
                from omicskern.models.registry import load as _load

                try:
                    m = _load("builtin")
                    model_dir, model_desc = str(m.source_path), "built-in HyenaDNA (trained)"
                except Exception:  # noqa: BLE001 - the built-in is not there: a random one of its shape
                    sys.path.insert(0, str(ROOT))
                    from tests.models import _folders

                    model_dir, model_desc = str(_folders.hyenadna(tmp / "hy")), "random tiny HyenaDNA"
            else:
                model_dir, model_desc = str(_dnabert2_folder(tmp / "db2")), "DNABERT-2-shaped, random (256 wide, 4 layers)"
            window = spec["window"]
            if window is None:  # what the model's max length holds
                import omicskern
                from omicskern.pipelines.genome import default_window

                m = omicskern.load(model_dir)
                window = default_window(m, m.get_tokenizer())
            case = {"fasta": str(fasta), "model_dir": model_dir, "window": window, "threads": args.threads,
                    "batch_tokens": 16384, "tmp": str(tmp)}
            cf = tmp / f"{name}.json"
            cf.write_text(json.dumps(case))
            runs = {"omicskern": [], "user loop": []}
            for _ in range(args.reps):
                for impl in ("omicskern", "user loop"):
                    runs[impl].append(_spawn(impl, cf))
            best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
            cpu = {k: min(r["cpu_s"] for r in v) for k, v in runs.items()}
            bp = best["omicskern"]["bases"]
            assert bp == best["user loop"]["bases"], (bp, best["user loop"]["bases"])
            rows.append({"suite": "pipelines", "case": f"embed-genome/{name}", "model": model_desc,
                         "bases": bp, "window": window, "device": dev, "threads": args.threads,
                         "omicskern_bp_s": bp / best["omicskern"]["wall_s"],
                         "user_bp_s": bp / best["user loop"]["wall_s"],
                         "ratio": best["user loop"]["wall_s"] / best["omicskern"]["wall_s"],
                         "omicskern_cpu_s": cpu["omicskern"], "user_cpu_s": cpu["user loop"],
                         "cpu_ratio": cpu["user loop"] / cpu["omicskern"],
                         "omicskern_peak_mib": best["omicskern"]["peak_rss_mib"],
                         "user_peak_mib": best["user loop"]["peak_rss_mib"],
                         "model_share": best["omicskern"]["model_s"] / best["omicskern"]["wall_s"],
                         "input_wait_s": best["omicskern"]["input_wait_s"], "reps": args.reps,
                         "quick": bool(args.quick), "load": load})
    _write(rows, dev, args)
    return rows


def _write(rows, dev, args) -> None:
    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / f"embed_genome_{slug(dev.split(' (')[0])}{'_quick' if args.quick else ''}"
    with open(base.with_suffix(".jsonl"), "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    lines = [f"# embed-genome end to end vs the user's loop ({dev})", "",
             f"`python benchmarks/bench_embed_genome.py{' --quick' if args.quick else ''}` — best of {args.reps} "
             "alternated runs per implementation, each in its own process, same weights and windows. "
             + rows[0]["load"] if rows else "", "",
             "| case | model | bases | window | omicskern kbp/s | user loop kbp/s | wall ratio | CPU-time ratio | "
             "omicskern peak MiB | user peak MiB | model share of omicskern wall |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['model']} | {r['bases']:,} | {r['window']} | {r['omicskern_bp_s'] / 1e3:,.1f} | "
                     f"{r['user_bp_s'] / 1e3:,.1f} | **{r['ratio']:.2f}x** | {r['cpu_ratio']:.2f}x | {r['omicskern_peak_mib']:,.0f} | "
                     f"{r['user_peak_mib']:,.0f} | {r['model_share']:.0%} |")
    lines += ["", "user loop = pyfaidx + the reference tokenizer path (HF `tokenizers` for BPE, a Python dict for "
              "HyenaDNA's characters) + padded batches of 8 + the reference model path (bias-tensor ALiBi for "
              "DNABERT-2, HyenaDNA's torch.fft convolution) + np.save. wall ratio = user loop wall / omicskern wall "
              "(best of the alternated runs); CPU-time ratio = the same with each process's CPU time (all threads), "
              "the steadier figure on a shared machine.", ""]
    base.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def run(quick: bool) -> list[dict]:
    """The ``embed-genome`` suite of ``omicskern bench``: this script's rows as schema records."""
    out = []
    for r in main(["--quick"] if quick else []):
        params = {"model": r["model"], "bases": r["bases"], "window": r["window"], "threads": r["threads"]}
        out.append(dict(case=r["case"], params=params, impl="omicskern", impl_desc="embed_genome into Zarr",
                        metric="throughput", unit="bp/s", value=r["omicskern_bp_s"], baseline="user loop",
                        baseline_desc="pyfaidx + reference tokenizer + padded reference model + np.save",
                        baseline_value=r["user_bp_s"]))
        out.append(dict(case=r["case"], params=params, impl="omicskern", metric="peak memory", unit="MiB",
                        value=r["omicskern_peak_mib"], baseline="user loop", baseline_value=r["user_peak_mib"]))
    return out


if __name__ == "__main__":
    main()
