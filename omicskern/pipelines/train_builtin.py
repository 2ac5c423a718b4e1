"""Train (``--out``) and evaluate (``--eval``) omicskern's built-in model, ``hyenadna-omk-tiny``.

A small HyenaDNA causal LM (:class:`~omicskern.models.hyenadna.HyenaDNA`, tied LM head) trained
for minutes on a CPU on genomes *other than* lambda: E. coli K-12 without the last 10% of its
chromosome (held out for evaluation) and P. falciparum 3D7 (soft-masked, so upper-cased). Each
step draws ``batch`` random windows of ``window`` bases (a genome with equal probability, then a
record by length, then a uniform start), reverse-complements each with probability 1/2, tokenizes
them with the model's own tokenizer (``[CLS] bases [SEP]``) and takes one AdamW step on the
next-base cross entropy (targets: the bases; ``[SEP]`` is not a target). The learning rate warms up
linearly, then follows a cosine decay to ``lr * min_lr_frac``.

Determinism: the weights are a function of the arguments (seed, steps, batch, ...), the thread
count (``--threads``; reduction order in CPU kernels depends on it) and the torch build. The
short depthwise conv runs its ``reference`` backend in training: the same op as ``torch``
(shifted multiply-adds in float64), whose backward is ~6x faster than ``F.conv1d``'s depthwise
backward on CPU.

Evaluation (``--eval MODEL_DIR``) reports bits per base on the held-out E. coli region and on the
lambda genome through the model's Batch path (:meth:`token_logits`), over the full softmax (the
padded vocabulary, not renormalised to ACGT), in non-overlapping windows of ``window`` bases (the
context restarts at every window). Baselines: 2.0 bits (uniform over ACGT) and order-k Markov
chains (Laplace/add-one smoothing) fitted on the same training bases, both strands, scored on the
same bases with the k preceding bases as context (across window boundaries, which favours the
baseline). Targets other than ACGT (N) are not scored by either. See :func:`evaluate` for the
three ways the baseline uses the two training genomes.

Example:
    $ python -m omicskern.pipelines.train_builtin --out /tmp/omk-tiny --steps 700 --seed 0
    $ python -m omicskern.pipelines.train_builtin --eval /tmp/omk-tiny --json eval.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DNA = Path(os.environ.get("OMICSKERN_DNA_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dna"))
ECOLI = "ecoli_k12_mg1655.fa.gz"
PFAL = "pfalciparum_3d7.fa.gz"
LAMBDA = Path(__file__).resolve().parents[1] / "data" / "lambda_phage.fa"
HOLDOUT_FRAC = 0.9  # E. coli bases [0, 0.9 L) train, [0.9 L, L) are held out

# The shipped architecture (HyenaDNA training-repo config format, which omicskern.load detects).
ARCH = dict(d_model=128, n_layer=2, d_inner=512, vocab_size=12, pad_vocab_size_multiple=8,
            layer_norm_epsilon=1e-5, residual_in_fp32=True,
            layer={"_name_": "hyena", "emb_dim": 5, "filter_order": 64, "w": 10, "modulate": True,
                   "l_max": 1026})

_ACGT = np.full(256, -1, dtype=np.int8)
for _i, _c in enumerate(b"ACGT"):
    _ACGT[_c] = _i


@dataclass
class Source:
    """Training bases of one FASTA: upper-cased records, each limited to ``[lo, hi)`` (fractions)."""

    name: str
    path: Path
    seqs: list[str]

    @property
    def length(self) -> int:
        return sum(len(s) for s in self.seqs)


def parse_spec(spec: str) -> tuple[Path, float, float]:
    """``PATH`` or ``PATH@LO:HI`` (fractions of every record) -> (path, lo, hi)."""
    path, _, rng = spec.partition("@")
    lo, hi = 0.0, 1.0
    if rng:
        try:
            lo, hi = (float(x) for x in rng.split(":"))
        except ValueError:
            raise ValueError(f"--train {spec!r}: the range must be LO:HI fractions, e.g. {path}@0:0.9") from None
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"--train {spec!r}: need 0 <= LO < HI <= 1, got {lo}:{hi}")
    return Path(path), lo, hi


def load_source(spec: str) -> Source:
    from omicskern.io.fasta import FastaFile

    path, lo, hi = parse_spec(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--train {spec!r}: FASTA not found: {path}")
    seqs = []
    with FastaFile(path) as fa:
        for _, s in fa.records():
            s = s[int(lo * len(s)):int(hi * len(s))].upper()  # soft-masked genomes: the vocab is upper case
            if s:
                seqs.append(s)
    if not seqs:
        raise ValueError(f"--train {spec!r}: no bases in the range")
    return Source(path.name + ("" if (lo, hi) == (0.0, 1.0) else f"[{lo}:{hi}]"), path, seqs)


def default_specs() -> list[str]:
    return [f"{DNA / ECOLI}@0:{HOLDOUT_FRAC}", str(DNA / PFAL)]


def init_weights(model, n_layer: int, std: float = 0.02) -> None:
    """HyenaDNA's initialisation (GPT-2 style): Linear and Embedding weights N(0, std), biases 0,
    and the two projections that write into the residual stream (``out_proj``, ``fc2``) scaled by
    1/sqrt(2 n_layer) so the residual's variance stays O(1) with depth. PyTorch's default
    N(0, 1) embedding makes the tied LM head's initial logits huge (loss ~70 nats)."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            torch.nn.init.normal_(mod.weight, std=std)
            if mod.bias is not None:
                torch.nn.init.zeros_(mod.bias)
        elif isinstance(mod, torch.nn.Embedding):
            torch.nn.init.normal_(mod.weight, std=std)
    for name, p in model.named_parameters():
        if name.endswith(("mixer.out_proj.weight", "mlp.fc2.weight")):
            torch.nn.init.normal_(p, std=std / math.sqrt(2 * n_layer))


def build_model(arch: dict, seed: int):
    from omicskern.models.hyenadna import HyenaDNA, HyenaDNAConfig

    torch.manual_seed(seed)
    model = HyenaDNA(HyenaDNAConfig.from_dict(arch))
    init_weights(model, arch["n_layer"])
    return model


class WindowSampler:
    """Random training windows, a pure function of the seed and the draw count."""

    def __init__(self, sources: list[Source], window: int, seed: int):
        self.sources = sources
        self.window = window
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.rec_p = []
        for src in sources:
            usable = np.array([max(len(s) - window + 1, 0) for s in src.seqs], dtype=np.float64)
            if usable.sum() == 0:
                raise ValueError(f"{src.name}: no record holds a window of {window} bases")
            self.rec_p.append(usable / usable.sum())

    def draw(self, n: int) -> list[str]:
        from omicskern.tokenizers import reverse_complement

        out = []
        for _ in range(n):
            g = int(self.rng.integers(len(self.sources)))
            src = self.sources[g]
            r = int(self.rng.choice(len(src.seqs), p=self.rec_p[g]))
            s = src.seqs[r]
            start = int(self.rng.integers(len(s) - self.window + 1))
            w = s[start:start + self.window]
            out.append(reverse_complement(w) if self.rng.random() < 0.5 else w)
        return out


def lr_at(step: int, steps: int, lr: float, warmup: int, min_lr_frac: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def _ids(tok, windows: list[str], window: int) -> torch.Tensor:
    b = tok.encode_batch(windows, padding=False)  # all rows have window + 2 tokens
    return torch.as_tensor(np.asarray(b.input_ids), dtype=torch.long).reshape(len(windows), window + 2)


def train(out: str | Path, *, steps: int, seed: int = 0, batch: int = 8, window: int | None = None,
          lr: float = 2e-3, warmup: int = 50, min_lr_frac: float = 0.1, weight_decay: float = 0.1,
          clip: float = 1.0, threads: int = 1, arch: dict | None = None, train_specs: list[str] | None = None,
          log_every: int = 10, quiet: bool = False) -> dict:
    """Train the built-in model into folder ``out`` (``config.json``, ``model.safetensors``,
    ``training.json`` with the arguments and figures, ``train_log.csv`` with the loss curve).

    Returns the ``training.json`` dict. Same arguments + threads + torch build -> same weights.

    Example:
        >>> train("/tmp/omk", steps=3, batch=2, window=126, arch=dict(ARCH, layer=dict(ARCH["layer"], l_max=128)),
        ...       train_specs=["omicskern/data/lambda_phage.fa@0:0.5"], quiet=True)["steps"]
        3
    """
    from safetensors.torch import save_file

    arch = json.loads(json.dumps(arch or ARCH))
    l_max = arch["layer"]["l_max"]
    window = window or l_max - 2
    if window + 2 > l_max:
        raise ValueError(f"--window {window}: window + [CLS] + [SEP] must fit l_max={l_max}")
    if steps <= 0 or batch <= 0:
        raise ValueError(f"steps and batch must be positive, got steps={steps}, batch={batch}")
    torch.set_num_threads(threads)
    specs = train_specs or default_specs()
    sources = [load_source(s) for s in specs]
    model = build_model(arch, seed)
    model.set_backend(fft_conv="torch", conv1d="reference")
    model.train()
    tok = model.get_tokenizer()
    sampler = WindowSampler(sources, window, seed + 1)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos_emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "pos_emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_rows = []
    t0 = time.perf_counter()
    for step in range(steps):
        cur = lr_at(step, steps, lr, warmup, min_lr_frac)
        for g in opt.param_groups:
            g["lr"] = cur
        ids = _ids(tok, sampler.draw(batch), window)
        logits = model.forward_padded(ids, return_logits=True).logits
        # position p predicts token p+1; targets = the bases (positions 1..window), not [SEP]
        loss = F.cross_entropy(logits[:, :window].reshape(-1, logits.shape[-1]), ids[:, 1:window + 1].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        bits = loss.item() / math.log(2)
        log_rows.append((step + 1, bits, cur, float(gnorm), time.perf_counter() - t0))
        if not quiet and ((step + 1) % log_every == 0 or step == 0 or step + 1 == steps):
            el = time.perf_counter() - t0
            print(f"step {step + 1}/{steps}  loss {bits:.4f} bits/base  lr {cur:.2e}  "
                  f"{(step + 1) / el:.2f} steps/s  eta {el / (step + 1) * (steps - step - 1):.0f} s", flush=True)
    elapsed = time.perf_counter() - t0
    model.eval()
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for k in model.tied_keys():  # shared freq tensors: stored once (HyenaDNA.tied_keys restores them)
        sd.pop(k, None)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(arch, indent=2) + "\n")
    with open(out / "train_log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss_bits_per_base", "lr", "grad_norm", "elapsed_s"])
        for r in log_rows:
            w.writerow([r[0], f"{r[1]:.6f}", f"{r[2]:.6g}", f"{r[3]:.4f}", f"{r[4]:.2f}"])
    tail = [r[1] for r in log_rows[-max(1, min(100, steps // 10)):]]
    info = dict(steps=steps, seed=seed, batch=batch, window=window, lr=lr, warmup=warmup, min_lr_frac=min_lr_frac,
                weight_decay=weight_decay, clip=clip, threads=threads, train=[s.name for s in sources],
                train_bases={s.name: s.length for s in sources}, tokens_seen=steps * batch * window,
                elapsed_s=round(elapsed, 1), steps_per_s=round(steps / elapsed, 3),
                final_loss_bits_per_base=round(float(np.mean(tail)), 4), torch=torch.__version__,
                parameters=sum(p.numel() for p in model.parameters()))
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# -- evaluation ------------------------------------------------------------------------------------

def bits_per_base(model, seq: str, *, window: int | None = None, batch_size: int = 16) -> tuple[float, int]:
    """(total bits, scored bases) of ``seq`` under a causal ``model``, through its tokenizer and
    :meth:`token_logits`: non-overlapping windows of ``window`` bases (default ``max_length - 2``),
    each ``[CLS] bases [SEP]``; every ACGT base is scored given the bases before it in its window,
    with the full softmax over the model's vocabulary."""
    window = window or model.max_length - 2
    tok = model.get_tokenizer()
    seq = seq.upper()
    windows = [seq[i:i + window] for i in range(0, len(seq), window)]
    total, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            b = tok.encode_batch(windows[i:i + batch_size], padding=False)
            logp = torch.log_softmax(model.token_logits(b).double(), dim=-1)
            ids = torch.as_tensor(np.asarray(b.input_ids), dtype=torch.long)
            cu = np.asarray(b.cu_seqlens)
            pos = np.concatenate([np.arange(cu[r], cu[r + 1] - 2) for r in range(len(cu) - 1)])  # predict 1..n
            pos = torch.as_tensor(pos)
            tgt = ids[pos + 1]
            keep = (tgt >= 7) & (tgt <= 10)  # A C G T (not N)
            total += -logp[pos[keep], tgt[keep]].sum().item() / math.log(2)
            n += int(keep.sum())
    return total, n


def _codes(seq: str) -> np.ndarray:
    return _ACGT[np.frombuffer(seq.upper().encode("latin-1"), dtype=np.uint8)]


def _kmer_index(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of all (k+1)-mers (base-4 numbers, last base least significant) and a mask of
    those without a non-ACGT base."""
    n = len(codes) - k
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    idx = np.zeros(n, np.int64)
    ok = np.ones(n, bool)
    for j in range(k + 1):
        c = codes[j:j + n]
        ok &= c >= 0
        idx = idx * 4 + np.maximum(c, 0)
    return idx, ok


def markov_counts(train_seqs: list[str], k: int) -> np.ndarray:
    """Counts ``[4**k, 4]`` of (context, next base) over ``train_seqs`` and their reverse complements."""
    from omicskern.tokenizers import reverse_complement

    counts = np.zeros(4 ** (k + 1), np.int64)
    for s in train_seqs:
        for strand in (s, reverse_complement(s)):
            idx, ok = _kmer_index(_codes(strand), k)
            counts += np.bincount(idx[ok], minlength=4 ** (k + 1))
    return counts.reshape(4 ** k, 4)


def markov_bits(counts: np.ndarray, context: str, seq: str) -> tuple[float, int]:
    """(total bits, scored bases) of ``seq`` under the add-one smoothed order-k chain ``counts``;
    ``context`` (may be empty) holds the bases before ``seq``: the first k bases of ``seq`` get
    their context from it, or are scored with what is available (shorter context = order 0
    counts marginalised) when it is too short."""
    k = int(round(math.log(counts.shape[0], 4)))
    ctx = context[-k:] if k else ""
    codes = _codes(ctx + seq)
    idx, ok = _kmer_index(codes, k)
    c = counts.reshape(-1)
    ctx_tot = counts.sum(1)
    p = (c[idx[ok]] + 1) / (ctx_tot[idx[ok] // 4] + 4)
    total, n = -np.log2(p).sum(), int(ok.sum())
    lead = k - len(ctx)  # bases of seq with fewer than k bases before them
    if lead > 0:
        for j in range(min(lead, len(seq))):
            sub = counts.reshape((4,) * k + (4,))
            pre = codes[:j]
            if (pre < 0).any() or codes[j] < 0:
                continue
            marg = sub[tuple(pre)].reshape(-1, 4).sum(0) if j else counts.sum(0)
            total += -math.log2((marg[codes[j]] + 1) / (marg.sum() + 4))
            n += 1
    return float(total), n


def evaluate(model_dir: str | Path | None, *, ks=range(1, 11), threads: int = 1, window: int | None = None,
             ecoli: Path | None = None, lambda_fa: Path = LAMBDA, train_specs: list[str] | None = None) -> dict:
    """The figures of docs/builtin_model.md: bits per base of the model (``model_dir``; None skips
    it) and of order-k Markov baselines on the held-out E. coli region and on lambda.

    Three baselines, all on the training bases of ``train_specs`` (default: E. coli's first 90% and
    P. falciparum), both strands: ``markov_pooled`` (counts pooled, so P. falciparum's 23 Mb
    dominate), ``markov_balanced`` (each genome's counts scaled to half the total: the mixture the
    model's sampler draws) and ``markov_ecoli_only`` (the first source alone: a specialist)."""
    from omicskern.io.fasta import FastaFile

    torch.set_num_threads(threads)
    ecoli = Path(ecoli or DNA / ECOLI)
    with FastaFile(ecoli) as fa:
        (_, chrom), = list(fa.records())
    cut = int(HOLDOUT_FRAC * len(chrom))
    with FastaFile(lambda_fa) as fa:
        (_, lam), = list(fa.records())
    held = {"ecoli_heldout": (chrom[:cut], chrom[cut:]), "lambda": ("", lam)}
    res = {"model": None if model_dir is None else str(model_dir), "sets": {}}
    for name, (ctx, seq) in held.items():
        res["sets"][name] = {"bases": int((_codes(seq) >= 0).sum()), "uniform_bits_per_base": 2.0}
    if model_dir is not None:
        import omicskern

        model = omicskern.load(model_dir if isinstance(model_dir, str) else Path(model_dir))
        model.eval()
        res["window"] = window or model.max_length - 2
        for name, (ctx, seq) in held.items():
            t = time.perf_counter()
            bits, n = bits_per_base(model, seq, window=window)
            assert n == res["sets"][name]["bases"]
            res["sets"][name].update(model_bits_per_base=bits / n, model_s=round(time.perf_counter() - t, 1))
    sources = [load_source(s) for s in (train_specs or default_specs())]
    keys = ("markov_pooled", "markov_balanced", "markov_ecoli_only")
    for k in ks:
        per = [markov_counts(src.seqs, k) for src in sources]
        pooled = sum(per)
        total = pooled.sum()
        balanced = sum(c * (total / (len(per) * c.sum())) for c in per)
        for name, (ctx, seq) in held.items():
            for key, counts in zip(keys, (pooled, balanced, per[0])):
                bits, n = markov_bits(counts, ctx, seq)
                res["sets"][name].setdefault(key, {})[k] = bits / n
    for r in res["sets"].values():
        for key in keys:
            best = min(r[key], key=r[key].get)
            r[key + "_best"] = {"k": best, "bits_per_base": r[key][best]}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m omicskern.pipelines.train_builtin", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="train into this folder (config.json, model.safetensors, training.json, train_log.csv)")
    p.add_argument("--eval", metavar="MODEL_DIR", help="evaluate this model folder ('builtin': the shipped one) "
                   "instead of training; 'none': the Markov baselines only")
    p.add_argument("--json", help="with --eval: write the figures to this JSON file")
    p.add_argument("--steps", type=int, default=700, help="optimizer steps (the shipped model: see its README)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="windows per step")
    p.add_argument("--window", type=int, default=None, help="bases per window (default l_max - 2 = 1024)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (part of what fixes the weights)")
    p.add_argument("--train", action="append", metavar="FASTA[@LO:HI]",
                   help="training FASTA, optionally a fraction range of every record (repeatable; default: "
                        f"{ECOLI}@0:{HOLDOUT_FRAC} and {PFAL} from {DNA})")
    p.add_argument("--d-model", type=int, default=ARCH["d_model"])
    p.add_argument("--n-layer", type=int, default=ARCH["n_layer"])
    p.add_argument("--l-max", type=int, default=ARCH["layer"]["l_max"])
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if bool(a.out) == bool(a.eval):
        p.error("give exactly one of --out DIR (train) or --eval MODEL_DIR")
    if a.eval:
        res = evaluate(None if a.eval == "none" else a.eval, threads=a.threads, window=a.window, train_specs=a.train)
        text = json.dumps(res, indent=2)
        if a.json:
            Path(a.json).write_text(text + "\n")
        print(text)
        return 0
    arch = json.loads(json.dumps(ARCH))
    arch.update(d_model=a.d_model, n_layer=a.n_layer, d_inner=4 * a.d_model)
    arch["layer"]["l_max"] = a.l_max
    info = train(a.out, steps=a.steps, seed=a.seed, batch=a.batch, window=a.window, lr=a.lr, warmup=a.warmup,
                 min_lr_frac=a.min_lr_frac, weight_decay=a.weight_decay, threads=a.threads, arch=arch,
                 train_specs=a.train, quiet=a.quiet)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
