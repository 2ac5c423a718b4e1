"""Packing padded batches into token streams (omicskern.modules.padding)."""

from __future__ import annotations

import pytest
import torch

from omicskern.modules.padding import (cu_seqlens_from_offsets, full_packing, packing_from_mask, positions_in_rows,
                                       row_ids, segment_mean)


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


def test_offsets_positions_rows_and_mean():
    cu, mx = cu_seqlens_from_offsets([0, 3, 3, 7])
    assert cu.tolist() == [0, 3, 3, 7] and cu.dtype == torch.int32 and mx == 4
    assert positions_in_rows(cu, 7).tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert row_ids(cu, 7).tolist() == [0, 0, 0, 2, 2, 2, 2]
    x = torch.arange(14.0).view(7, 2)
    mean = segment_mean(x, cu)
    torch.testing.assert_close(mean[0], x[:3].mean(0))
    assert torch.isnan(mean[1]).all(), "an empty row has no mean"
    torch.testing.assert_close(mean[2], x[3:].mean(0))
    keep = torch.tensor([0, 1, 1, 1, 1, 1, 0], dtype=torch.bool)
    torch.testing.assert_close(segment_mean(x, cu, keep)[2], x[3:6].mean(0))


@pytest.mark.parametrize("offsets,msg", [
    ([1, 3], "start at 0"),
    ([0, 4, 2], "must not decrease"),
    ([[0, 1]], "1-D"),
])
def test_offsets_errors(offsets, msg):
    with pytest.raises(ValueError, match=msg):
        cu_seqlens_from_offsets(offsets)


def test_mask_shape_error():
    with pytest.raises(ValueError, match=r"must be \[B, L\]"):
        packing_from_mask(torch.ones(3))
