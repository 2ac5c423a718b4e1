"""The sdpa backend's view fast path for packed rows of one length (genome windows of char / k-mer
tokens) equals the reference, forward and backward, with and without ALiBi and causality."""

from __future__ import annotations

import pytest
import torch

from omicskern.ops.attention.reference import attention_ref
from omicskern.ops.attention.sdpa import attention_sdpa


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("alibi", [False, True], ids=["plain", "alibi"])
def test_uniform_rows_equal_reference(causal, alibi):
    torch.manual_seed(7)
    n, L, H, D = 3, 37, 4, 16
    q, k, v = (torch.randn(n * L, H, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    cu = torch.arange(0, n * L + 1, L, dtype=torch.int32)
    slopes = torch.rand(H, dtype=torch.float64) if alibi else None
    got = attention_sdpa(q, k, v, cu_seqlens=cu, causal=causal, alibi_slopes=slopes)
    ref = attention_ref(q, k, v, cu_seqlens=cu, causal=causal, alibi_slopes=slopes)
    # the sdpa backend builds its ALiBi bias in fp32 (then casts), so fp64 runs differ ~1e-7 there
    tol = 1e-6 if alibi else 1e-10
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    # and the view equals the padded route of the same backend (max_seqlen past the rows forces it)
    padded = attention_sdpa(q, k, v, cu_seqlens=cu, max_seqlen=L + 2, causal=causal, alibi_slopes=slopes)
    torch.testing.assert_close(got, padded, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    dg = torch.autograd.grad(got, (q, k, v), g)
    dr = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(dg, dr):
        torch.testing.assert_close(a, b, rtol=10 * tol, atol=10 * tol)
    # rows of different lengths still take the padded path and agree
    cu2 = torch.tensor([0, 30, 67, n * L], dtype=torch.int32)
    torch.testing.assert_close(attention_sdpa(q, k, v, cu_seqlens=cu2, causal=causal, alibi_slopes=slopes),
                               attention_ref(q, k, v, cu_seqlens=cu2, causal=causal, alibi_slopes=slopes),
                               rtol=tol, atol=tol)
