"""``omicskern embed-cells``: the real command on real cells (scGPT fixture folder, the PBMC
file with a Geneformer folder), its summary on stderr, and the convention (exit 2 for bad flags,
exit 1 with one line naming the thing for bad data / another job's output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omicskern.cli import main
from tests.models import _folders

DATA = Path(__file__).resolve().parents[1] / "data"
SCGPT = DATA / "fixtures" / "scgpt_tiny"


def test_scgpt_summary_and_rerun(tmp_path, capsys):
    out = tmp_path / "e.npy"
    args = ["embed-cells", str(SCGPT / "cells.h5ad"), "--model", str(SCGPT), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "4 of 4 cells embedded (64-d, pooling=cls_normalized, layer=-1)" in err
    assert "genes: 300 of 3,741 matched" in err and "reading+tokenizing" in err and "model " in err
    emb = np.load(out)
    assert emb.shape == (4, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert main(args) == 0
    assert "already complete: nothing recomputed" in capsys.readouterr().err
    assert main(args[:-1] + ["--pooling", "cls", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("omicskern embed-cells: error: ") and "another job" in err and "--overwrite" in err


def test_geneformer_real_cells_with_gene_embeddings(tmp_path, capsys):
    gf = _folders.geneformer(tmp_path / "gf")
    out = tmp_path / "pbmc.zarr"
    assert main(["embed-cells", str(DATA / "sc" / "pbmc_10x_v3_small.h5ad"), "--model", str(gf), "--out", str(out),
                 "--emb", "gene", "--chunk-cells", "500", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "of 1,107 cells embedded (32-d, pooling=cls, layer=-2)" in err and "gene embeddings: " in err
    import zarr

    g = zarr.open_group(str(out), mode="r")
    assert g["embeddings"].shape == (1107, 32) and g["gene_embeddings"].shape[1] == 32
    assert str(g["gene_ids"][0]).startswith("ENSG")


@pytest.mark.parametrize("extra, says", [
    (["--out", "x.h5"], "--out x.h5: name a .zarr store or a .npy file"),
    (["--out", "x.npy", "--emb", "gene"], "--emb gene needs a .zarr --out"),
    (["--out", "x.zarr", "--batch-tokens", "0"], "--batch-tokens must be >= 1"),
    (["--out", "x.zarr", "--chunk-cells", "0"], "--chunk-cells must be >= 1"),
])
def test_bad_flags_exit_2(tmp_path, capsys, extra, says):
    extra = [str(tmp_path / e) if e.endswith((".h5", ".npy", ".zarr")) and "/" not in e else e for e in extra]
    assert main(["embed-cells", str(SCGPT / "cells.h5ad"), "--model", str(SCGPT), *extra]) == 2
    assert says.replace("x.h5", str(tmp_path / "x.h5")) in capsys.readouterr().err


def test_bad_data_exit_1_naming_it(tmp_path, capsys):
    assert main(["embed-cells", str(tmp_path / "nope.h5ad"), "--model", str(SCGPT), "--out", str(tmp_path / "o.zarr")]) == 2
    assert "input: not found" in capsys.readouterr().err
    junk = tmp_path / "junk.h5ad"
    junk.write_bytes(b"\x00" * 600)
    assert main(["embed-cells", str(junk), "--model", str(SCGPT), "--out", str(tmp_path / "o.zarr")]) == 1
    assert f"error: {junk}: not an .h5ad file" in capsys.readouterr().err
    assert main(["embed-cells", str(SCGPT / "cells.h5ad"), "--model", str(SCGPT), "--out", str(tmp_path / "o.zarr"),
                 "--gene-column", "symbols", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "adata.var has no column 'symbols'" in err and "--gene-column" in err
    gf = _folders.geneformer(tmp_path / "gf")
    assert main(["embed-cells", str(SCGPT / "cells.h5ad"), "--model", str(gf), "--out", str(tmp_path / "g.zarr"),
                 "--tie-break", "random"]) == 2
    assert "--tie-break / --seed apply to scGPT only" in capsys.readouterr().err
