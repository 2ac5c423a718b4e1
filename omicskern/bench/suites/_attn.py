"""Attention callables shared by the ops, long-context and gpu suites: omicskern's ``attention`` and
the baselines users run without it (torch SDPA with a bias-tensor ALiBi, eager attention)."""

from __future__ import annotations

import torch

from omicskern.ops import backends

DESCS = {
    "omicskern triton": "omicskern attention, Triton kernel (varlen, in-kernel ALiBi)",
    "omicskern flash_attn": "omicskern attention dispatched to flash-attn",
    "omicskern sdpa": "omicskern attention on its CPU path: torch SDPA with ALiBi as a bias tensor",
    "sdpa+bias": "baseline: torch scaled_dot_product_attention on [B,H,L,D], ALiBi/causal as an explicit "
                 "[1,H,L,L] additive bias (what DNABERT-2 users fall back to); no bias: is_causal / no mask",
    "eager": "baseline: plain PyTorch attention in the input dtype (QK^T, softmax, PV; materialises the L x L scores)",
    "flash_attn": "baseline: flash_attn.flash_attn_func called directly",
}


def alibi_bias(slopes: torch.Tensor, L: int, causal: bool, dtype) -> torch.Tensor:
    pos = torch.arange(L, device=slopes.device, dtype=torch.float32)
    bias = -slopes[:, None, None].float() * (pos[None, :, None] - pos[None, None, :]).abs()
    if causal:
        bias = bias.masked_fill(torch.ones(L, L, dtype=torch.bool, device=slopes.device).triu(1), float("-inf"))
    return bias[None].to(dtype)


def impls(device: str, alibi: bool, include_triton: bool | None = None) -> list[str]:
    """Implementations real on this device: on CPU the Triton kernels only run in the interpreter
    (not a speed measure), so omicskern runs its sdpa path; on CUDA triton (+ flash_attn)."""
    cuda = str(device).startswith("cuda")
    out = []
    if cuda or include_triton:
        out.append("omicskern triton")
    else:
        out.append("omicskern sdpa")
    out += ["sdpa+bias", "eager"]
    if cuda and backends.has_flash_attn():
        out.append("flash_attn")
    return out


def make_call(name: str, q, k, v, causal: bool, slopes):
    """A zero-argument call of implementation ``name`` on [B, L, H, D] inputs (leaves may require grad)."""
    from omicskern.ops.attention import attention, attention_ref

    if name.startswith("omicskern"):
        be = name.split()[1]
        return lambda: attention(q, k, v, causal=causal, alibi_slopes=slopes, backend=be)
    if name == "eager":
        return lambda: attention_ref(q, k, v, causal=causal, alibi_slopes=slopes, upcast=False)
    if name == "flash_attn":
        from flash_attn import flash_attn_func

        return lambda: flash_attn_func(q, k, v, causal=causal, alibi_slopes=slopes)
    if name == "sdpa+bias":
        import torch.nn.functional as F

        L = q.shape[1]
        bias = alibi_bias(slopes, L, causal, q.dtype) if slopes is not None else None

        def call():
            qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if bias is None:
                o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            else:
                o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias)
            return o.transpose(1, 2)
        return call
    raise ValueError(f"unknown attention implementation {name!r}")


def flops(B: int, L: int, H: int, D: int, causal: bool, mode: str) -> float:
    """Useful FLOPs: 4 L^2 H D per sequence forward, half when causal, x3.5 for forward+backward
    (FlashAttention's count)."""
    f = 4.0 * B * L * L * H * D * (0.5 if causal else 1.0)
    return f * (3.5 if mode == "fwd+bwd" else 1.0)
