"""Reliability of the tokenize jobs: nothing on disk is trusted (shards checked by size and
blake2b on resume), resume keys on content (the tokenizer.json's, not its path), outputs are
atomic, work is linear in the number of records, and real SIGKILLs resume to identical bytes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from omicskern.cli import main
from omicskern.pipelines import jobs
from omicskern.pipelines.tokenize import tokenize_cells, tokenize_fasta
from omicskern.tokenizers import KmerTokenizer

ROOT = Path(__file__).resolve().parents[2]


def _reads(path, n, length=40, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(f">read{i}\n{''.join(rng.choices('ACGT', k=length))}\n")
    return path


def _tree(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and not p.name.startswith(".")}


# -- 3. shards are checked, not trusted ------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "flip", "unrecorded"])
def test_damaged_shard_is_redone(tmp_path, damage):
    fa = _reads(tmp_path / "r.fa", 300)
    out = tmp_path / "out"
    tok = KmerTokenizer(4, mode="overlap")
    r = tokenize_fasta(fa, tok, out=out, window=40, max_unit_bases=2000)
    assert r.complete and r.units_total == 6
    good = _tree(out)
    man = json.loads((out / "manifest.json").read_text())
    assert all(isinstance(e["blake2b"], str) and e["bytes"] > 0 for e in man["records"])
    shard = out / "shard-00002.npz"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-7])
    elif damage == "flip":
        b = bytearray(shard.read_bytes())
        b[len(b) // 2] ^= 0x01  # same size, one bit changed
        shard.write_bytes(bytes(b))
    else:  # a shard that nothing recorded (e.g. killed between rename and log): not trusted
        man["records"][2].pop("blake2b")
        (out / "manifest.json").write_text(json.dumps(man, indent=1))
    r2 = tokenize_fasta(fa, tok, out=out, window=40, max_unit_bases=2000)
    assert r2.units_done == 1 and r2.units_skipped == 5 and r2.complete
    now = _tree(out)
    if damage == "unrecorded":  # the edited manifest's key order differs; its content does not
        assert json.loads(now.pop("manifest.json")) == json.loads(good.pop("manifest.json"))
    assert now == good


def test_progress_log_records_checksums(tmp_path):
    fa = _reads(tmp_path / "r.fa", 50)
    out = tmp_path / "out"
    job_open = jobs.ShardedJob.open

    lines = []

    def spy_finish(self):
        if self._log.is_file():
            lines.extend(json.loads(x) for x in self._log.read_text().splitlines())
        return jobs.ShardedJob.flush(self)

    import unittest.mock as um

    with um.patch.object(jobs.ShardedJob, "finish", spy_finish):
        tokenize_fasta(fa, KmerTokenizer(4), out=out, window=40, max_unit_bases=400)
    assert lines and all({"index", "bytes", "blake2b", "rows", "tokens"} <= set(d) for d in lines)
    assert job_open is jobs.ShardedJob.open


# -- 3. stale temporaries and atomic single-file outputs --------------------------------------------
def test_stale_temp_of_killed_npz_run_is_removed(tmp_path):
    fa = _reads(tmp_path / "r.fa", 20)
    out = tmp_path / "t.npz"
    stale = tmp_path / f".t.npz.tmp-{jobs._HOST}-999999999-0123abcd.npz"
    stale.write_bytes(b"partial")
    other = tmp_path / f".other.npz.tmp-{jobs._HOST}-999999999-0123abcd.npz"  # not this output's
    other.write_bytes(b"partial")
    tokenize_fasta(fa, KmerTokenizer(4), out=out)
    assert not stale.exists() and other.exists() and out.is_file()


class _Result:
    def __init__(self, fail):
        self.fail = fail
        self.input_ids = [1, 2, 3]

    def __len__(self):
        return 1

    def save(self, path, fmt):
        Path(path).write_bytes(b"PK\x03\x04 half a file")
        if self.fail:
            raise OSError(28, "No space left on device")
        from omicskern.pipelines.tokenize import write_npz
        write_npz(path, {"input_ids": np.arange(3)})


class _Tok:
    def __init__(self, fail):
        self.fail = fail

    def tokenize(self, path, layer=None, progress=False):
        return _Result(self.fail)


def test_tokenize_cells_writes_atomically(tmp_path):
    """A failure (or a kill) while writing never leaves a truncated file at ``out``; an old
    complete output stays as it was."""
    src = tmp_path / "x.h5ad"
    src.write_bytes(b"not really an h5ad: the fake tokenizer does not read it")
    out = tmp_path / "cells.npz"
    with pytest.raises(OSError, match="No space"):
        tokenize_cells(src, _Tok(True), out)
    assert not out.exists() and os.listdir(tmp_path) == ["x.h5ad"]
    r = tokenize_cells(src, _Tok(False), out)
    before = out.read_bytes()
    assert r.cells == 1 and np.load(out)["input_ids"].tolist() == [0, 1, 2]
    with pytest.raises(OSError, match="No space"):
        tokenize_cells(src, _Tok(True), out, overwrite=True, settings={"other": 1})
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["cells.npz", "x.h5ad"]


# -- 2. resume keys on the tokenizer.json's content, through the CLI -------------------------------
def test_cli_resume_refused_when_tokenizer_json_content_changes(tmp_path, data_dir, capsys):
    fa = _reads(tmp_path / "r.fa", 200)
    tj = tmp_path / "tokenizer.json"
    tj.write_bytes((data_dir / "dnabert2_tokenizer.json").read_bytes())
    out = tmp_path / "out"
    args = ["tokenize", str(fa), "--tokenizer", "bpe", "--tokenizer-json", str(tj), "--out", str(out),
            "--window", "40", "--unit-bases", "800", "--quiet"]
    assert main(args) == 0
    (out / "shard-00003.npz").unlink()  # as if killed before this unit
    # same content under another path: resumes
    moved = tmp_path / "elsewhere.json"
    moved.write_bytes(tj.read_bytes())
    assert main([a if a != str(tj) else str(moved) for a in args]) == 0
    assert "skipped 9 unit(s)" in capsys.readouterr().err
    (out / "shard-00003.npz").unlink()
    # same path, other content (two tokens' ids swapped): refused
    d = json.loads(tj.read_text())
    v = d["model"]["vocab"]
    v["TT"], v["TG"] = v["TG"], v["TT"]
    tj.write_text(json.dumps(d))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "output belongs to another job" in err and "tokenizer/model" in err and "--overwrite" in err
    assert not (out / "shard-00003.npz").exists()


# -- 4. linear in the number of records ------------------------------------------------------------
def test_units_group_short_records():
    from omicskern.pipelines.units import fasta_units

    u = fasta_units([f"r{i}" for i in range(10)], [40] * 5 + [500] + [40] * 4, window=40, max_unit_bases=100,
                    group_bases=100)
    assert [x.names for x in u] == [("r0", "r1"), ("r2", "r3"), ("r4",)] + [("r5",)] * 7 + [("r6", "r7"), ("r8", "r9")]
    assert [(x.start, x.stop) for x in u if x.name == "r5"] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12),
                                                                (12, 13)]
    assert u[0].to_dict()["records"] == ["r0", "r1"] and "records" not in u[2].to_dict()


def test_scale_300k_records(tmp_path, monkeypatch):
    """300,000 40-bp records (12 Mbp), end to end through the CLI, as one .npz and as a folder
    whose units group records. Before: 614 s (a list test per record). Operations are counted:
    the manifest is written a bounded number of times, one shard per ~unit-bases."""
    fa = _reads(tmp_path / "r.fa", 300_000)
    saves = []
    real_save = jobs.Manifest.save
    monkeypatch.setattr(jobs.Manifest, "save", lambda self: (saves.append(1), real_save(self)))
    t0 = time.perf_counter()
    assert main(["tokenize", str(fa), "--out", str(tmp_path / "t.npz"), "--quiet"]) == 0
    t1 = time.perf_counter()
    out = tmp_path / "sharded"
    assert main(["tokenize", str(fa), "--out", str(out), "--window", "40", "--unit-bases", "1000000",
                 "--quiet"]) == 0
    t2 = time.perf_counter()
    assert t1 - t0 < 60 and t2 - t1 < 60  # hang guards only (about 7 s each on a 2-core CI box)
    z = np.load(tmp_path / "t.npz")
    assert len(z["names"]) == 300_000 and z["offsets"][-1] == 300_000 * 42
    shards = sorted(out.glob("shard-*.npz"))
    assert len(shards) == 12  # 25,000 records per unit
    assert len(saves) <= 5  # created, a few timed flushes, finished: not per record
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and sum(e["rows"] for e in man["records"]) == 300_000
    ids = np.concatenate([np.load(s)["ids"] for s in shards])
    assert np.array_equal(ids, z["ids"])


# -- 5. real kills -------------------------------------------------------------------------------
def _cli(args, env):
    return subprocess.Popen([sys.executable, "-m", "omicskern", "tokenize", *args, "--quiet"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(pred, proc, limit=20.0):
    t = time.monotonic()
    while time.monotonic() - t < limit and proc.poll() is None:
        if pred():
            return True
        time.sleep(0.0005)
    return False


def test_sigkill_at_random_points_resumes_to_identical_bytes(tmp_path):
    """``python -m omicskern tokenize`` killed with SIGKILL at seeded random points (during
    index building on a fresh FASTA with an empty cache, during shard writes, during the .npz
    write), then rerun to the end: the outputs equal an uninterrupted run's byte for byte."""
    base_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    fa = _reads(tmp_path / "src.fa", 20_000)
    ref_env = {**base_env, "OMICSKERN_CACHE": str(tmp_path / "refcache")}
    ref_dir, ref_npz = tmp_path / "ref", tmp_path / "ref.npz"
    shard_args = ["--window", "40", "--unit-bases", "20000"]
    t0 = time.monotonic()
    p = _cli([str(fa), "--out", str(ref_dir), *shard_args], ref_env)
    assert p.wait() == 0, p.stderr.read()
    total = time.monotonic() - t0
    assert _cli([str(fa), "--out", str(ref_npz)], ref_env).wait() == 0
    ref = _tree(ref_dir)
    rng = random.Random(1234)
    kinds = ["index", "shards", "random", "npz"]
    for trial, kind in enumerate(kinds):
        copy = tmp_path / f"copy{trial}.fa"  # fresh copy, empty cache: the index is built
        copy.write_bytes(fa.read_bytes())
        cache = tmp_path / f"cache{trial}"
        env = {**base_env, "OMICSKERN_CACHE": str(cache)}
        out = tmp_path / (f"out{trial}.npz" if kind == "npz" else f"out{trial}")
        args = [str(copy), "--out", str(out)] + ([] if kind == "npz" else shard_args)
        for attempt in range(2 if kind in ("shards", "random") else 1):  # one or two kills per trial
            p = _cli(args, env)
            if kind == "index" and attempt == 0:  # as soon as the index file is being written
                _wait_for(lambda: cache.is_dir() and any(".tmp-" in q.name for q in (cache / "faidx").glob("*")
                                                          ) if (cache / "faidx").is_dir() else False, p)
            elif kind == "shards":
                n = attempt + 2
                _wait_for(lambda: out.is_dir() and len(list(out.glob("shard-*.npz"))) >= n, p)
            elif kind == "npz":
                _wait_for(lambda: any(q.name.startswith(f".{out.name}.tmp-") for q in tmp_path.iterdir()), p)
            else:
                time.sleep(rng.uniform(0.05, total))
            p.send_signal(signal.SIGKILL)
            p.wait()
            if kind == "npz":
                assert not out.exists() or out.read_bytes() == ref_npz.read_bytes()
        p = _cli(args, env)
        assert p.wait() == 0, p.stderr.read()
        if kind == "npz":
            assert out.read_bytes() == ref_npz.read_bytes()
            assert not [q for q in tmp_path.iterdir() if q.name.startswith(f".{out.name}.tmp-")]
        else:
            assert _tree(out) == ref, f"trial {trial} ({kind})"
            assert not [q for q in out.iterdir() if ".tmp-" in q.name]
        fais = [q for q in (cache / "faidx").iterdir() if q.name.endswith(".fai") and not q.name.startswith(".")]
        assert len(fais) == 1 and fais[0].read_bytes() == next((tmp_path / "refcache" / "faidx").glob("*.fai")
                                                               ).read_bytes()
