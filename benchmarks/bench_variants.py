"""Zero-shot variant scoring: ``omicskern score-variants`` vs the naive per-variant loop, same weights, one process.

* **omicskern**: :func:`omicskern.pipelines.variants.score_variants` — variants sorted, reference
  windows shared by the alleles that use them, every ref/alt/masked row in ragged token-budget
  batches, the causal LLR's shared prefix not scored.
* **naive loop** (what users write): for each variant, tokenize the reference window and the
  alternate window alone and run each through the model padded, batch of one (masked-llr: the
  masked reference window; PLL for indels, one masked pass per changed token), then the score.

Cases (random SNVs and 1-3 base indels over the first bases of E. coli K-12, seeded):

* ``llr``: the built-in causal HyenaDNA (``omicskern.load("builtin")``; a random tiny HyenaDNA if it
  is not there);
* ``masked-llr``: a Nucleotide-Transformer-shaped model (ESM + rotary, 6-mers; random, 2 layers x 128);
* ``embedding``: a DNABERT-2-shaped model (random, 4 layers x 256, the released BPE vocabulary).

Implementations alternate (omicskern, naive, omicskern, ...); the best of ``--reps`` is kept. Both
compute the same numbers (checked: the first variants' scores agree). Writes
``benchmarks/results/variants_<device>.md`` (and ``.jsonl``).

    python benchmarks/bench_variants.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, SHARED, device_name, load_note, slug  # first: puts this checkout on sys.path


def _vcf(path: Path, seq: str, name: str, n_snv: int, n_indel: int, seed: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for p in rng.choice(np.arange(10, len(seq) - 10), size=n_snv + n_indel, replace=False):
        ref = seq[p]
        if len(rows) < n_snv:
            alt = "ACGT"[("ACGT".index(ref) + int(rng.integers(1, 4))) % 4]
        elif rng.random() < 0.5:  # deletion of 1-3 bases
            k = int(rng.integers(1, 4))
            ref, alt = seq[p:p + k + 1], seq[p]
        else:  # insertion
            alt = ref + "".join(rng.choice(list("ACGT"), int(rng.integers(1, 4))))
        rows.append((int(p) + 1, ref, alt))
    text = f"##fileformat=VCFv4.2\n##contig=<ID={name}>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    text += "".join(f"{name}\t{p}\t.\t{r}\t{a}\t.\t.\t.\n" for p, r, a in rows)
    path.write_text(text)
    return path


def _naive(model, seq: str, vcf: Path, score: str, windows: dict):
    """One variant at a time, each window tokenized alone and run padded (batch of one); the
    windows (start, length) are the pipeline's (their choice is the definition, not the work)."""
    import numpy as np
    import torch

    from omicskern.pipelines.variants import _diff, read_vcf

    tok = model.get_tokenizer()
    out = []

    def enc(s):
        b = tok.encode_batch([s], padding=False, return_token_spans=True)
        return np.asarray(b.input_ids).astype(np.int64), np.asarray(b.token_spans).reshape(-1, 2)

    def logp(ids):
        o = model.forward_padded(torch.as_tensor(ids)[None], return_logits=True)
        return torch.log_softmax(o.logits[0].double(), -1)

    with torch.no_grad():
        for v in read_vcf(vcf):
            s0 = v.pos - 1
            ws, wl = windows[(v.pos, v.ref, v.alt)]
            rw = seq[ws:ws + wl].upper()
            aw = rw[:s0 - ws] + v.alt + rw[s0 - ws + len(v.ref):]
            (ir, sr), (ia, sa) = enc(rw), enc(aw)
            if score == "llr":
                tot = []
                for ids, sp in ((ir, sr), (ia, sa)):
                    lp = logp(ids)
                    real = np.nonzero(sp[:, 1] > sp[:, 0])[0]
                    real = real[real >= 1]
                    tot.append(float(lp[torch.as_tensor(real - 1), torch.as_tensor(ids[real])].sum()))
                out.append(tot[1] - tot[0])
            elif score == "masked-llr":
                m = tok.mask_token_id
                p, er, ea = _diff(ir, sr, ia, sa)
                if er - p == ea - p and np.array_equal(sr[p:er], sa[p:ea]):
                    x = ir.copy()
                    x[p:er] = m
                    lp = logp(x)
                    out.append(float(sum(lp[t, ia[t]] - lp[t, ir[t]] for t in range(p, er))))
                else:
                    pll = []
                    for ids, hi in ((ia, ea), (ir, er)):
                        tot = 0.0
                        for t in range(p, hi):
                            x = ids.copy()
                            x[t] = m
                            tot += float(logp(x)[t, ids[t]])
                        pll.append(tot)
                    out.append(pll[0] - pll[1])
            else:
                e = [model.forward_padded(torch.as_tensor(ids)[None]).last_hidden_state[0].double().mean(0)
                     for ids in (ir, ia)]
                out.append(float(torch.nn.functional.cosine_similarity(e[0], e[1], dim=0)))
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", nargs="+", default=["llr", "masked-llr", "embedding"])
    args = ap.parse_args(argv)
    import numpy as np
    import torch

    import omicskern
    from omicskern.io.fasta import FastaFile
    from omicskern.pipelines.genome import default_window
    from omicskern.pipelines.variants import score_variants

    sys.path.insert(0, str(ROOT))
    from bench_embed_genome import _dnabert2_folder
    from tests.models import _folders

    torch.set_num_threads(args.threads)
    dev, load = device_name("cpu"), load_note()
    # NT indels cost a masked pass per k-mer to the window's end (both implementations): few of them
    n_snv, n_indel = (40, 6) if args.quick else (400, 80)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with FastaFile(SHARED / "data" / "dna" / "ecoli_k12_mg1655.fa.gz") as fa:
            name = fa.names[0]
            seq = fa.sequence(name)[:300_000]
        fasta = tmp / "ecoli.fa"
        fasta.write_text(f">{name}\n" + "\n".join(seq[i:i + 80] for i in range(0, len(seq), 80)) + "\n")
        for score in args.cases:
            if score == "llr":
                try:
                    model, desc = omicskern.load("builtin"), "built-in HyenaDNA (trained)"
                except Exception:  # noqa: BLE001
                    model, desc = omicskern.load(_folders.hyenadna(tmp / "hy")), "random tiny HyenaDNA"
            elif score == "masked-llr":
                model, desc = omicskern.load(_folders.nucleotide_transformer(tmp / "nt")), "NT-v2-shaped, random (2 x 128)"
            else:
                model, desc = omicskern.load(_dnabert2_folder(tmp / "db2")), "DNABERT-2-shaped, random (4 x 256)"
            model.eval()
            w = min(default_window(model, model.get_tokenizer()), 2000)
            vcf = _vcf(tmp / f"{score}.vcf", seq, name, n_snv, n_indel, seed=1)
            times = {"omicskern": [], "naive": []}
            for rep in range(args.reps):
                t0 = time.perf_counter()
                res = score_variants(fasta, vcf, model, scores=[score], window=w, threads=args.threads)
                times["omicskern"].append(time.perf_counter() - t0)
                t = res.table
                wins = {(int(p), r, a): (int(s), int(ln)) for p, r, a, s, ln in
                        zip(t["pos"], t["ref"], t["alt"], t["window_start"], t["window_len"])}
                t0 = time.perf_counter()
                ref = _naive(model, seq, vcf, score, wins)
                times["naive"].append(time.perf_counter() - t0)
            col = {"llr": "llr", "masked-llr": "masked_llr", "embedding": "cosine"}[score]
            got = res.table[col][np.argsort(res.table["pos"], kind="stable")]
            from omicskern.pipelines.variants import read_vcf

            order = np.argsort([v.pos for v in read_vcf(vcf)], kind="stable")
            np.testing.assert_allclose(got, np.asarray(ref)[order], rtol=1e-3, atol=5e-3)
            n = res.variants
            best = {k: min(v) for k, v in times.items()}
            rows.append({"suite": "pipelines", "case": f"score-variants/{score}", "model": desc, "variants": n,
                         "snv": n_snv, "indel": n_indel, "window": w, "device": dev, "threads": args.threads,
                         "omicskern_variants_s": n / best["omicskern"], "naive_variants_s": n / best["naive"],
                         "ratio": best["naive"] / best["omicskern"], "forward_rows": res.forward_rows,
                         "reps": args.reps, "quick": bool(args.quick), "load": load})
            print(rows[-1], flush=True)
            _write(rows, dev, args, n_snv, n_indel, load)  # after every case: a long run keeps what it measured
    return rows


def _write(rows, dev, args, n_snv, n_indel, load) -> None:
    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / f"variants_{slug(dev.split(' (')[0])}{'_quick' if args.quick else ''}"
    with open(base.with_suffix(".jsonl"), "a") as f:
        f.write(json.dumps(rows[-1]) + "\n")
    # the table shows the latest row of every case in the file (a run of some cases keeps the others)
    latest = {}
    for line in base.with_suffix(".jsonl").read_text().splitlines():
        r = json.loads(line)
        latest[r["case"]] = r
    rows = list(latest.values())
    lines = [f"# score-variants vs the naive per-variant loop ({dev})", "",
             f"`python benchmarks/bench_variants.py{' --quick' if args.quick else ''}` — same weights, one process, "
             f"alternated, best of {args.reps}; {n_snv} SNVs + {n_indel} indels at random positions of the first "
             f"300 kbp of E. coli K-12; scores checked equal. {load}", "",
             "| score | model | variants | window (bp) | omicskern variants/s | naive variants/s | ratio |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['model']} | {r['variants']} | {r['window']} | "
                     f"{r['omicskern_variants_s']:,.1f} | {r['naive_variants_s']:,.1f} | **{r['ratio']:.2f}x** |")
    lines += ["", "naive = one variant at a time: the reference and alternate windows tokenized alone and run padded "
              "(batch of one), as a Python loop over the VCF.", ""]
    base.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def run(quick: bool) -> list[dict]:
    """The ``score-variants`` suite of ``omicskern bench``: this script's rows as schema records."""
    return [dict(case=r["case"], params={"model": r["model"], "variants": r["variants"], "window": r["window"]},
                 impl="omicskern", impl_desc="score_variants: shared windows, ragged token-budget batches",
                 metric="throughput", unit="variants/s", value=r["omicskern_variants_s"], baseline="naive loop",
                 baseline_desc="one variant at a time, each window alone, padded",
                 baseline_value=r["naive_variants_s"]) for r in main(["--quick"] if quick else [])]


if __name__ == "__main__":
    main()
