"""Model inference: omicskern's models vs the plain-PyTorch / transformers path of each, random
weights, tokens/s (real tokens only) and peak memory of the forward. Folds in the former
``benchmarks/bench_models.py`` (same sizes and implementations):

* DNABERT-2 on a variable-length batch (BPE tokens of 1-10 kbp DNA): omicskern (unpadded, varlen
  ALiBi attention) vs DNABERT-2's PyTorch path (padded, one ``[B, H, L, L]`` ALiBi + mask bias);
* Nucleotide Transformer (ESM encoder with rotary): transformers ``EsmForMaskedLM`` (SDPA) vs the
  same after ``omicskern.accelerate`` vs ``omicskern.models.from_hf`` of it;
* Geneformer on ragged ranked cells: transformers ``BertForMaskedLM`` (SDPA, padded) vs
  accelerate vs omicskern ``Geneformer`` fed ids + offsets;
* HyenaDNA: the same omicskern model with HyenaDNA's own torch.fft convolution vs ``fft_conv``.

The implementations of one row run interleaved in one process on the same weights; on CPU the
time is the process CPU time with one torch thread.
"""

from __future__ import annotations

import torch

from omicskern.bench.cases import ab_records, memory_record, status_record
from omicskern.bench.runner import Context
from omicskern.bench.suites.long_context import hyenadna_fftconv
from omicskern.bench.timing import interleaved, peak_memory, pinned_threads

FULL = {
    "dnabert2": dict(hidden=768, layers=12, heads=12, inter=3072, vocab=4096, n=16, lo=200, hi=2000),
    "nt": dict(hidden=512, layers=12, heads=16, inter=3072, vocab=4107, lens=[(8, 1000), (4, 2000)]),
    "geneformer": dict(hidden=768, layers=12, heads=12, inter=3072, vocab=20275, n=32, lo=500, hi=4096),
    "hyenadna": dict(d_model=256, layers=4, lens=[(8, 1024), (1, 32768), (1, 262144), (1, 1_000_000)]),
}
QUICK = {
    "dnabert2": dict(hidden=128, layers=2, heads=4, inter=512, vocab=4096, n=8, lo=40, hi=400),
    "nt": dict(hidden=128, layers=2, heads=4, inter=384, vocab=4107, lens=[(4, 256)]),
    "geneformer": dict(hidden=128, layers=2, heads=4, inter=512, vocab=20275, n=8, lo=64, hi=512),
    "hyenadna": dict(d_model=128, layers=2, lens=[(2, 1024), (1, 8192)]),
}


def _lengths(n, lo, hi, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [int(x) for x in torch.randint(lo, hi + 1, (n,), generator=g)]


def _padded(lengths, vocab, pad, dev, first=None):
    g = torch.Generator().manual_seed(1)
    L = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), L), generator=g)
    if first is not None:
        ids[:, 0] = first
    am = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * am + pad * (1 - am)
    return ids.to(dev), am.to(dev)


# ------------------------------------------------------------------------------------------------
# one case (runs in a subprocess)
# ------------------------------------------------------------------------------------------------
def build(model: str, size: int, table: dict, dev: str, impls: list[str]) -> tuple[dict, list[int]]:
    """{impl: zero-argument forward} on one set of random weights (shared by every impl), and the
    real lengths of the batch."""
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    sz = table[model]
    torch.manual_seed(0)
    fns = {}
    if model == "dnabert2":
        from omicskern.models.dnabert2 import DNABERT2, DNABERT2Config, dnabert2_padded_reference

        m = DNABERT2(DNABERT2Config(vocab_size=sz["vocab"], hidden_size=sz["hidden"], num_hidden_layers=sz["layers"],
                                    num_attention_heads=sz["heads"], intermediate_size=sz["inter"]), mlm_head=False,
                     pooler=False).to(dev, dtype).eval()
        lens = _lengths(sz["n"], sz["lo"], sz["hi"])
        ids, am = _padded(lens, sz["vocab"], 3, dev, first=1)
        fns = {"omicskern": lambda: m(ids, am), "reference": lambda: dnabert2_padded_reference(m, ids, am)}
    elif model in ("nt", "geneformer"):
        import copy

        import omicskern
        from omicskern.models import from_hf

        if model == "nt":
            from transformers import EsmConfig, EsmForMaskedLM

            B, L = sz["lens"][size]
            lens = [L] * B
            cfg = EsmConfig(vocab_size=sz["vocab"], hidden_size=sz["hidden"], num_hidden_layers=sz["layers"],
                            num_attention_heads=sz["heads"], intermediate_size=sz["inter"],
                            max_position_embeddings=L + 2, position_embedding_type="rotary", pad_token_id=1,
                            mask_token_id=2, token_dropout=False, emb_layer_norm_before=False)
            hf = EsmForMaskedLM(cfg)
            ids, am = _padded(lens, sz["vocab"], 1, dev, first=3)
        else:
            from transformers import BertConfig, BertForMaskedLM

            cfg = BertConfig(vocab_size=sz["vocab"], hidden_size=sz["hidden"], num_hidden_layers=sz["layers"],
                             num_attention_heads=sz["heads"], intermediate_size=sz["inter"], hidden_act="relu",
                             max_position_embeddings=4096, pad_token_id=0)
            hf = BertForMaskedLM(cfg)
            lens = _lengths(sz["n"], sz["lo"], sz["hi"], seed=2)
            ids, am = _padded(lens, sz["vocab"], 0, dev, first=2)
        hf = hf.to(dev, dtype).eval()
        hf.set_attn_implementation("sdpa")
        if "omicskern" in impls:
            om = from_hf(hf)
            if model == "nt":
                fns["omicskern"] = lambda: om(ids, am, return_logits=True)
            else:
                flat = ids[am.bool()]
                offsets = [0]
                for n in lens:
                    offsets.append(offsets[-1] + n)
                from omicskern.batch import Batch

                batch = Batch(flat, torch.tensor(offsets, device=flat.device))
                fns["omicskern"] = lambda: om(batch, return_logits=True)
        if "accelerate" in impls:
            acc = copy.deepcopy(hf) if "reference" in impls else hf
            omicskern.accelerate(acc)
            fns["accelerate"] = lambda: acc(input_ids=ids, attention_mask=am)
        if "reference" in impls:
            fns["reference"] = lambda: hf(input_ids=ids, attention_mask=am)
    elif model == "hyenadna":
        from omicskern.models.hyenadna import HyenaDNA, HyenaDNAConfig

        B, L = sz["lens"][size]
        lens = [L] * B
        cfg = HyenaDNAConfig(d_model=sz["d_model"], n_layer=sz["layers"], d_inner=4 * sz["d_model"], vocab_size=12,
                             l_max=L + 2, layer={"emb_dim": 5, "filter_order": 64, "w": 10, "modulate": True})
        m = HyenaDNA(cfg).to(dev, dtype).eval()
        ids = torch.randint(7, 11, (B, L), device=dev)

        def ref():
            with hyenadna_fftconv():
                return m(ids)

        fns = {"omicskern": lambda: m(ids), "reference": ref}
    else:
        raise ValueError(model)
    return {k: v for k, v in fns.items() if k in impls}, lens


TINY = {
    "dnabert2": dict(hidden=32, layers=1, heads=2, inter=64, vocab=4096, n=2, lo=8, hi=24),
    "nt": dict(hidden=32, layers=1, heads=2, inter=64, vocab=4107, lens=[(2, 16)]),
    "geneformer": dict(hidden=32, layers=1, heads=2, inter=64, vocab=20275, n=2, lo=8, hi=24),
    "hyenadna": dict(d_model=32, layers=1, lens=[(1, 64)]),
}
IMPLS = {
    "dnabert2": [("reference", "baseline: DNABERT-2's PyTorch path (padded, [B,H,L,L] ALiBi bias)"),
                 ("omicskern", "omicskern DNABERT2 (unpadded, varlen)")],
    "nt": [("reference", "baseline: transformers EsmForMaskedLM (SDPA)"),
           ("accelerate", "the same model + omicskern.accelerate"),
           ("omicskern", "omicskern NucleotideTransformer (from_hf)")],
    "geneformer": [("reference", "baseline: transformers BertForMaskedLM (SDPA, padded)"),
                   ("accelerate", "the same model + omicskern.accelerate"),
                   ("omicskern", "omicskern Geneformer (ragged ids + offsets)")],
    "hyenadna": [("reference", "baseline: HyenaDNA fftconv (torch.fft at 2L, fp32) in the same model"),
                 ("omicskern", "omicskern HyenaDNA with fft_conv")],
}


def sizes(ctx: Context) -> dict:
    return ctx.pick(TINY, QUICK, FULL)


def run(ctx: Context) -> list[dict]:
    out = []
    dev = ctx.device
    sz_all = sizes(ctx)
    with pinned_threads(1 if not ctx.cuda else None):
        for model, impls in IMPLS.items():
            descs = dict(impls)
            n_sizes = len(sz_all[model].get("lens", [None]))
            for size in range(n_sizes):
                try:
                    fns, lens = _build(model, size, ctx, list(descs))
                except ImportError as e:
                    out.append(status_record(model, {}, "-", "throughput", "tokens/s", "skipped", str(e)))
                    continue
                params = dict(B=len(lens), L_max=max(lens), tokens=sum(lens),
                              dtype="float32" if not ctx.cuda else "bfloat16")

                def nograd(f):
                    def g():
                        with torch.no_grad():
                            f()
                    return g
                fns = {k: nograd(f) for k, f in fns.items()}
                try:
                    t = interleaved(fns, device=dev, repeats=ctx.pick(2, 3, 10), min_repeats=ctx.pick(2, 3, 5),
                                    budget_s=ctx.budget_s * len(fns))
                except torch.OutOfMemoryError as e:
                    out += [status_record(model, params, k, "throughput", "tokens/s", "oom", str(e).splitlines()[0])
                            for k in fns]
                    continue
                out += ab_records(model, params, t, descs, "reference", "throughput", "tokens/s", per=sum(lens),
                                  rate=True)
                mems = {k: peak_memory(f, device=dev, method=ctx.mem_method) for k, f in fns.items()}
                for k, (b, method) in mems.items():
                    out.append(memory_record(f"{model} peak memory", params, k, b, method, descs[k],
                                             *(("reference", mems["reference"][0]) if k != "reference" else (None, None))))
    return out


def _build(model, size, ctx, impls):
    return build(model, size, sizes(ctx), ctx.device, impls)
