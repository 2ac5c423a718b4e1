"""Cell matrices (omicskern.io.cells): every input kind read back in chunks, and the errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from omicskern.errors import MissingColumnError
from omicskern.io.cells import open_cells


def test_open_cells_sources_and_chunks(tmp_path, data_dir):
    path = data_dir / "sc" / "pbmc_10x_v3_small.h5ad"
    a = ad.read_h5ad(path)
    ref = a.X.toarray()
    for src in (a, str(path), ad.read_h5ad(path, backed="r"), a.X, a.X.toarray(), sp.csc_matrix(a.X),
                a.X.astype(np.uint16), a.X.astype(np.int64), a.X.toarray().astype(np.float16)):
        m = open_cells(src)
        assert (m.n_obs, m.n_vars) == a.shape
        got = np.zeros_like(ref)
        for ch in m.chunks(300):
            ip = ch.indptr.astype(np.int64) - ch.base
            for r in range(ch.stop - ch.start):
                s, e = ip[r], ip[r + 1]
                got[ch.start + r, ch.indices[s:e]] += ch.data[s:e]
            assert ch.data.dtype in (np.float32, np.float64, np.int32, np.int64)
        np.testing.assert_array_equal(got, ref)
        m.close()
    with pytest.raises(MissingColumnError, match="layers has no layer 'counts'"):
        open_cells(a, layer="counts")
    with pytest.raises(TypeError, match="cannot read cells"):
        open_cells([1, 2, 3])
    with pytest.raises(ValueError, match="gene_ids has 3 entries but the matrix has 507 columns"):
        open_cells(a.X, gene_ids=["a", "b", "c"])
    with pytest.raises(FileNotFoundError):
        open_cells(str(tmp_path / "missing.h5ad"))


def test_backed_csc_is_refused_with_advice(tmp_path, data_dir):
    a = ad.read_h5ad(data_dir / "sc" / "pbmc_10x_v3_small.h5ad")
    a.X = sp.csc_matrix(a.X)
    a.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(ValueError, match="CSC"):
        open_cells(str(tmp_path / "csc.h5ad"))
