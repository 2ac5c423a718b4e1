"""The two sorting paths of the C++ binning (csrc/cells/bin.cpp), both against the numpy
reference: cells of small whole counts (counting sort, bins looked up per distinct value) and
cells with fractional, large (>= 65536) or widely spread whole counts (radix sort + merge walk),
mixed in one matrix, with numpy.digitize and with scGPT's random tie-break."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from omicskern.tokenizers import BinnedValueTokenizer

from .cells_reference import bin_ref, random_counts

SYMS = [f"GENE{j}" for j in range(40)]


def _mixed_paths_matrix(dtype):
    X = random_counts(5, n_cells=48, n_genes=40, dtype=np.float64, max_count=60)
    A = X.toarray()
    A[8] = np.where(A[8] > 0, A[8] + 0.5, 0)           # fractional: radix path
    A[9] = np.where(A[9] > 0, A[9] * 70_000, 0)         # >= 65536: radix path
    A[10, np.flatnonzero(A[10])[:1]] = 5_000            # one count > 8 n + 256: radix path
    A[11] = np.where(A[11] > 0, 65_535, 0)              # all equal (65535 > 8 n + 256: radix path)
    A[12] = np.where(A[12] > 0, (A[12] % 3) + 1, 0)     # heavy ties: counting path
    if dtype in (np.float32, np.float64):
        A[13] = np.where(A[13] > 0, A[13] * 1e-3, 0)    # small fractions
    else:
        A = np.floor(A)
    return sp.csr_matrix(A.astype(dtype))


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64"),
                                   pytest.param(np.int32, id="i32"), pytest.param(np.int64, id="i64")])
@pytest.mark.parametrize("tie_break", ["deterministic", "random"])
def test_counting_and_radix_paths_match_reference(dtype, tie_break):
    X = _mixed_paths_matrix(dtype)
    vocab = {"<pad>": 0, "<cls>": 1}
    for k in SYMS:
        vocab[k] = len(vocab)
    col_token = np.array([vocab[k] for k in SYMS])
    for n_bins in (51, 4):
        out = BinnedValueTokenizer(vocab, n_bins=n_bins, tie_break=tie_break, seed=3, num_threads=1).tokenize(
            X, gene_ids=SYMS)
        toks, vals, rows = bin_ref(X, col_token, n_bins=n_bins, cls_id=1, rand_seed=3 if tie_break == "random" else None)
        assert len(out) == len(toks)
        np.testing.assert_array_equal(out.source, rows)
        for i in range(len(toks)):
            np.testing.assert_array_equal(out[i], toks[i], err_msg=f"ids of output cell {i}")
            np.testing.assert_array_equal(out.row_values(i), vals[i], err_msg=f"bins of output cell {i}")
