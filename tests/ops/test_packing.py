"""Packing padded batches into token streams (omicskern.ops.packing)."""

from __future__ import annotations

import pytest
import torch

from omicskern.models.base import pool_rows
from omicskern.ops.packing import full_packing, packing_from_mask, pad_packed, positions_in_rows, row_ids


@pytest.mark.parametrize("mask", [
    pytest.param([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], id="right-padded-with-empty-row"),
    pytest.param([[0, 1, 1, 1], [0, 0, 0, 1]], id="left-padded"),
    pytest.param([[1, 1, 1, 1]], id="no-padding"),
])
def test_pack_unpack_roundtrip(mask):
    m = torch.tensor(mask)
    x = torch.randn(*m.shape, 5, generator=torch.Generator().manual_seed(0))
    pk = packing_from_mask(m)
    packed = pk.pack(x)
    assert packed.shape == (int(m.sum()), 5)
    torch.testing.assert_close(packed, x[m.bool()])
    assert pk.cu_seqlens.dtype == torch.int32
    assert pk.cu_seqlens.tolist() == [0] + torch.cumsum(m.sum(1), 0).tolist()
    assert pk.max_seqlen == int(m.sum(1).max())
    back = pk.unpack(packed)
    torch.testing.assert_close(back, x * m[..., None])
    fill = torch.arange(5.0)
    assert (pk.unpack(packed, fill=fill)[~m.bool()] == fill).all()
    cols = torch.nonzero(m)[:, 1]
    assert pk.columns().tolist() == cols.tolist()
    assert pk.rows().tolist() == torch.nonzero(m)[:, 0].tolist()


def test_full_packing():
    pk = full_packing(3, 7)
    assert pk.cu_seqlens.tolist() == [0, 7, 14, 21] and pk.max_seqlen == 7 and pk.indices.numel() == 21


def test_positions_rows_and_pooling():
    cu = torch.tensor([0, 3, 3, 7], dtype=torch.int32)
    assert positions_in_rows(cu, 7).tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert row_ids(cu, 7).tolist() == [0, 0, 0, 2, 2, 2, 2]
    x = torch.arange(14.0).view(7, 2)
    with pytest.raises(ValueError, match="row 1 has no tokens"):
        pool_rows(x, cu, "mean")
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    torch.testing.assert_close(pool_rows(x, cu, "mean"), torch.stack([x[:3].mean(0), x[3:].mean(0)]))
    torch.testing.assert_close(pool_rows(x, cu, "max"), torch.stack([x[2], x[6]]))
    torch.testing.assert_close(pool_rows(x, cu, "cls"), x[[0, 3]])
    torch.testing.assert_close(pool_rows(x, cu, "last"), x[[2, 6]])
    keep = torch.tensor([0, 1, 1, 1, 1, 1, 0], dtype=torch.bool)
    torch.testing.assert_close(pool_rows(x, cu, "mean", keep)[1], x[3:6].mean(0))
    with pytest.raises(ValueError, match="row 0 has no token left"):
        pool_rows(x, cu, "mean", torch.tensor([0, 0, 0, 1, 1, 1, 1], dtype=torch.bool))
    lo = x.half()  # accumulated in fp32, returned in the input dtype
    assert pool_rows(lo, cu, "mean").dtype == torch.float16


@pytest.mark.parametrize("lengths", [[3, 1, 4], [0, 2], [5]], ids=["3-1-4", "empty-row", "one-row"])
def test_pad_packed_round_trip(lengths):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(lengths), 3, generator=g)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    out, mask, idx = pad_packed(x, cu, fill=-1.0)
    assert out.shape == (len(lengths), max(lengths), 3) and mask.sum().item() == x.shape[0]
    torch.testing.assert_close(out[mask], x)
    assert (out[~mask] == -1).all()
    torch.testing.assert_close(out.reshape(-1, 3)[idx], x)
    pk = packing_from_mask(mask)  # and back through the mask
    torch.testing.assert_close(pk.pack(out), x)


def test_mask_shape_error():
    with pytest.raises(ValueError, match=r"must be \[B, L\]"):
        packing_from_mask(torch.ones(3))
