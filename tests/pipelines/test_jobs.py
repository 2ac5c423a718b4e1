"""Job mechanics: units split by rank, job keys on content, atomic writes, sharded resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from omicskern.pipelines.jobs import (JobKey, JobMismatchError, ShardedJob, atomic_write, check_output, read_job,
                                      record_job, temp_path)
from omicskern.pipelines.tokenize import fasta_fingerprint, tokenize_fasta, tokenizer_identity, write_npz
from omicskern.pipelines.units import WorkUnit, cell_units, fasta_units, split_by_rank
from omicskern.tokenizers import CharTokenizer, KmerTokenizer


def _fasta(path, records):
    path.write_text("".join(f">{n}\n{s}\n" for n, s in records.items()))
    return path


RECS = {f"r{i}": ("ACGTTGCA" * (i + 3))[: 20 + 7 * i] for i in range(12)}


@pytest.mark.parametrize("how", ["contiguous", "round_robin"])
@pytest.mark.parametrize("world", [1, 2, 3, 5, 20])
def test_split_by_rank_partitions(how, world):
    units = fasta_units(list(RECS), [len(s) for s in RECS.values()], window=10, max_unit_bases=30)
    parts = [split_by_rank(units, r, world, how) for r in range(world)]
    got = sorted(u.index for p in parts for u in p)
    assert got == list(range(len(units)))  # each unit exactly once
    assert parts == [split_by_rank(units, r, world, how) for r in range(world)]  # deterministic
    if how == "contiguous" and world <= len(units):
        sizes = [sum(u.size for u in p) for p in parts]
        assert max(sizes) - min(sizes) <= 2 * max(u.size for u in units)


def test_units():
    u = fasta_units(["a", "b"], [95, 0], window=10, stride=5, max_unit_bases=20)
    assert [(x.name, x.start, x.stop) for x in u] == [("a", 0, 4), ("a", 4, 8), ("a", 8, 12), ("a", 12, 16), ("a", 16, 18),
                                                    ("b", 0, 1)]
    assert u[0].size == 25 and u[0].shard == "shard-00000.npz"
    assert [(c.start, c.stop) for c in cell_units(7, 3)] == [(0, 3), (3, 6), (6, 7)]
    with pytest.raises(ValueError, match="rank"):
        split_by_rank(u, 2, 2)


def test_job_key_is_content_not_path(tmp_path):
    from omicskern.io.fasta import FastaFile

    a = _fasta(tmp_path / "a.fa", RECS)
    b = tmp_path / "moved" / "renamed.fasta"
    b.parent.mkdir()
    wrap = lambda s: "\n".join(s[i:i + 7] for i in range(0, len(s), 7))  # noqa: E731
    b.write_text("".join(f">{n} some description\n{wrap(s)}\n" for n, s in RECS.items()))  # re-wrapped
    with FastaFile(a) as fa, FastaFile(b) as fb:
        assert fasta_fingerprint(fa, fa.names) == fasta_fingerprint(fb, fb.names)
    c = _fasta(tmp_path / "c.fa", {**RECS, "r3": "T" + RECS["r3"][1:]})
    with FastaFile(a) as fa, FastaFile(c) as fc:
        assert fasta_fingerprint(fa, fa.names) != fasta_fingerprint(fc, fc.names)
    # tokenizer identity: settings matter, threads do not
    assert tokenizer_identity(KmerTokenizer(6)) == tokenizer_identity(KmerTokenizer(6, num_threads=1))
    assert tokenizer_identity(KmerTokenizer(6)) != tokenizer_identity(KmerTokenizer(5))
    assert tokenizer_identity(CharTokenizer()) != tokenizer_identity(CharTokenizer(on_invalid="unk"))
    k = JobKey("t", {"x": 1}, {"p": 1}, {"window": 10})
    assert "window 10 -> 20" in JobKey("t", {"x": 1}, {"p": 1}, {"window": 20}).differences(k.to_dict())


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "x.npz"
    atomic_write(p, lambda t: write_npz(t, {"a": np.arange(3)}))
    before = p.read_bytes()

    def boom(t):
        t.write_bytes(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["x.npz"]
    assert temp_path(p).parent == tmp_path and temp_path(p).name.endswith(".npz")
    # reproducible bytes
    q = tmp_path / "y.npz"
    atomic_write(q, lambda t: write_npz(t, {"a": np.arange(3)}))
    assert q.read_bytes() == before


def test_single_file_outputs_record_their_job(tmp_path):
    key, other = JobKey("t", {"x": 1}, {}, {}), JobKey("t", {"x": 2}, {}, {})
    p = tmp_path / "o.npz"
    assert check_output(p, key) is False
    atomic_write(p, lambda t: (write_npz(t, {"a": np.arange(2)}), record_job(t, key)))
    assert read_job(p)["input"] == {"x": 1} and np.load(p)["a"].tolist() == [0, 1]
    assert check_output(p, key) is True
    with pytest.raises(JobMismatchError, match="another job .*input content"):
        check_output(p, other)
    assert check_output(p, other, overwrite=True) is False
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.arange(2))
    with pytest.raises(JobMismatchError, match="not an omicskern output"):
        check_output(foreign, key)
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pp = tmp_path / "o.parquet"
    atomic_write(pp, lambda t: (pq.write_table(pa.table({"a": [1, 2]}), str(t)), record_job(t, key)))
    assert check_output(pp, key) is True and pq.read_table(pp)["a"].to_pylist() == [1, 2]


def test_sharded_job_resume_and_refusal(tmp_path):
    units = [WorkUnit(i, f"u{i}", 0, 1, 10) for i in range(4)]
    key = JobKey("t", {"x": 1}, {}, {})
    out = tmp_path / "out"
    job = ShardedJob(out, key, units).open()
    for u in job.pending(0, 2):
        job.write_shard(u, lambda t, i=u.index: write_npz(t, {"i": np.array(i)}), rows=1)
    assert [u.index for u in ShardedJob(out, key, units).open().pending()] == [2, 3]
    job2 = ShardedJob(out, key, units).open()
    for u in job2.pending(1, 2):
        job2.write_shard(u, lambda t, i=u.index: write_npz(t, {"i": np.array(i)}))
    job2.finish()
    assert job2.complete and json.loads((out / "manifest.json").read_text())["complete"]
    with pytest.raises(JobMismatchError, match="output belongs to another job"):
        ShardedJob(out, JobKey("t", {"x": 2}, {}, {}), units).open()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(JobMismatchError, match="no manifest"):
        ShardedJob(tmp_path / "junk", key, units).open()
    # a dead writer's temporary file is cleaned up on open
    stale = out / ".shard-00000.npz.tmp-{host}-999999999-0123abcd.npz"
    from omicskern.pipelines import jobs

    stale = out / stale.name.replace("{host}", jobs._HOST)
    stale.write_bytes(b"partial")
    ShardedJob(out, key, units).open()
    assert not stale.exists()


def test_tokenize_fasta_moved_input_resumes_changed_refused(tmp_path):
    a = _fasta(tmp_path / "a.fa", RECS)
    out = tmp_path / "tok"
    r = tokenize_fasta(a, KmerTokenizer(4, mode="overlap"), out=out, window=16, max_unit_bases=32)
    assert r.complete and r.units_done == r.units_total > len(RECS)
    moved = tmp_path / "elsewhere.fa"
    os.replace(a, moved)
    r2 = tokenize_fasta(moved, KmerTokenizer(4, mode="overlap"), out=out, window=16, max_unit_bases=32)
    assert r2.units_done == 0 and r2.units_skipped == r.units_total
    changed = _fasta(tmp_path / "c.fa", {**RECS, "r5": RECS["r5"][:-1] + "A"})
    with pytest.raises(JobMismatchError, match="input content"):
        tokenize_fasta(changed, KmerTokenizer(4, mode="overlap"), out=out, window=16, max_unit_bases=32)
    with pytest.raises(JobMismatchError, match="tokenizer"):
        tokenize_fasta(moved, KmerTokenizer(5, mode="overlap"), out=out, window=16, max_unit_bases=32)
    # ranks: two halves = one run
    out2 = tmp_path / "ranked"
    for rank in (1, 0):
        tokenize_fasta(moved, KmerTokenizer(4, mode="overlap"), out=out2, window=16, max_unit_bases=32,
                       rank=rank, world_size=2)
    assert sorted(os.listdir(out2)) == sorted(os.listdir(out))
    for name in os.listdir(out):
        if name.startswith("shard-"):
            assert (out / name).read_bytes() == (out2 / name).read_bytes()


def test_tokenize_cells_api_keys_on_the_tokenizers_content(tmp_path):
    """Without an explicit identity, the job key holds the cell tokenizer's tables by content: a
    changed median is another job, another thread count is the same job."""
    import anndata as ad

    from omicskern.errors import JobMismatchError as _Mismatch
    from omicskern.pipelines.tokenize import tokenize_cells
    from omicskern.tokenizers import RankValueTokenizer

    h5ad = Path(__file__).resolve().parents[1] / "data" / "sc" / "pbmc_10x_v3_small.h5ad"
    genes = ad.read_h5ad(h5ad, backed="r").var["ensembl_id"].tolist()
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, **{g: 4 + i for i, g in enumerate(genes)}}
    medians = {g: 1.0 + i % 3 for i, g in enumerate(genes)}
    out = tmp_path / "cells.npz"
    first = tokenize_cells(h5ad, RankValueTokenizer(tokens, medians), out)
    again = tokenize_cells(h5ad, RankValueTokenizer(tokens, medians, num_threads=1), out)
    assert not first.reused and again.reused and again.job_key == first.job_key
    changed = dict(medians)
    changed[genes[0]] = 9.0
    with pytest.raises(_Mismatch, match="another job"):
        tokenize_cells(h5ad, RankValueTokenizer(tokens, changed), out)


def test_tokenize_fasta_api_refuses_repeated_records_and_unwritable_outputs(tmp_path):
    from omicskern.pipelines.tokenize import tokenize_fasta
    from omicskern.tokenizers import CharTokenizer

    fasta = Path(__file__).resolve().parents[1] / "data" / "lambda_phage.fa"
    from omicskern.io.fasta import FastaFile

    with FastaFile(fasta) as fa:
        name = fa.names[0]
    with pytest.raises(ValueError, match="given more than once"):
        tokenize_fasta(fasta, CharTokenizer(), records=[name, name])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError):
        tokenize_fasta(fasta, CharTokenizer(), out=blocker / "tokens.npz")
