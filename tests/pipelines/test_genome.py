"""embed-genome: equal to the loop a user writes (one window, one padded forward), resumable after a
real SIGKILL, identical under torchrun, keyed on content, and clear about bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import omicskern
from omicskern.errors import JobMismatchError
from omicskern.io.genome_store import GenomeEmbeddings, parse_region
from omicskern.pipelines.genome import NPolicy, embed_genome

ROOT = Path(__file__).resolve().parents[2]
LAMBDA = ROOT / "tests" / "data" / "lambda_phage.fa"
_COMP = str.maketrans("ACGTN", "TGCAN")


def _fasta(path: Path, records: dict) -> Path:
    with open(path, "w") as f:
        for name, seq in records.items():
            f.write(f">{name}\n")
            for i in range(0, len(seq), 60):
                f.write(seq[i:i + 60] + "\n")
    return path


def _rand(n, seed):
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), size=n))


def _naive(model, seqs: list[str]) -> np.ndarray:
    """The user's loop: one window at a time, tokenized alone, one padded forward, mean over its tokens."""
    tok = model.get_tokenizer()
    out = []
    with torch.no_grad():
        for s in seqs:
            p = tok.encode_batch([s], padding="longest")
            ids = torch.as_tensor(np.asarray(p.input_ids), dtype=torch.long)
            mask = torch.as_tensor(np.asarray(p.attention_mask)).bool()
            h = model.forward_padded(ids, mask).last_hidden_state[0]
            out.append(h[mask[0]].float().mean(0).numpy())
    return np.stack(out)


@pytest.mark.parametrize("name", ["hyenadna", "dnabert2"])
@pytest.mark.parametrize("rc", ["none", "average"])
def test_equals_the_naive_loop(tmp_path, folders, name, rc):
    """Odd windows and stride, two records (one shorter than the window), a soft-masked stretch:
    every stored row equals the one-window-at-a-time loop (float16 storage tolerance)."""
    a = _rand(1301, 1)
    a = a[:400] + a[400:470].lower() + a[470:]
    fa = _fasta(tmp_path / "g.fa", {"chrA": a, "chrB": _rand(97, 2)})
    model = omicskern.load(folders[name])
    res = embed_genome(fa, model, tmp_path / "o.zarr", window=301, stride=250, rc=rc, shard_windows=3,
                       batch_tokens=700, out_dtype="float32")
    assert res.complete
    s = res.store
    w = s.windows
    seqs = [{"chrA": a, "chrB": _rand(97, 2)}[r][st:en] for r, st, en in zip(w["record_name"], w["start"], w["end"])]
    assert w["start"].tolist() == [0, 250, 500, 750, 1000, 0] and w["end"].tolist()[4:] == [1301, 97]
    assert w["record_name"].tolist() == ["chrA"] * 5 + ["chrB"]  # a record shorter than the window: one short window
    ref = _naive(model, [x.upper() for x in seqs])
    if rc == "average":
        ref = (ref + _naive(model, [x.upper().translate(_COMP)[::-1] for x in seqs])) / 2
    np.testing.assert_allclose(np.asarray(s.embeddings[:]), ref, rtol=2e-4, atol=2e-5)
    assert (w["status"] == 0).all() and (w["tokens"] > 0).all()


def test_per_token_states_and_tracks(tmp_path, folders):
    """Per-token states are the model's token states of each window; a track bin is the mean of
    its bases' states (each base from the window that owns it)."""
    seq = _rand(1000, 5)
    fa = _fasta(tmp_path / "g.fa", {"c": seq})
    model = omicskern.load(folders["hyenadna"])
    res = embed_genome(fa, model, tmp_path / "o.zarr", window=300, stride=300, per_token=True, track_bin=64,
                       out_dtype="float32", shard_windows=2)
    s = res.store
    tok = model.get_tokenizer()
    b = tok.encode_batch([seq[i:i + 300] for i in range(0, 1000, 300)], padding=False)
    ref = model.embed(b)
    for i in range(4):
        st, sp = s.token_states(i)
        np.testing.assert_allclose(st, ref.row(i).numpy(), rtol=1e-5, atol=1e-6)
        assert sp[0].tolist() == [0, 0] and sp[1].tolist() == [0, 1]  # [CLS], then base 0
    # tracks: per-base states ([CLS]/[SEP] left out) averaged over 64-base bins
    per_base = np.concatenate([ref.row(i).numpy()[1:-1] for i in range(4)])
    assert per_base.shape[0] == 1000
    want = np.stack([per_base[k:k + 64].mean(0) for k in range(0, 1000, 64)])
    np.testing.assert_allclose(s.track("c"), want, rtol=1e-5, atol=1e-6)


def test_overlapping_windows_tracks_count_each_base_once(tmp_path, folders):
    fa = _fasta(tmp_path / "g.fa", {"c": _rand(777, 6)})
    res = embed_genome(fa, folders["hyenadna"], tmp_path / "o.zarr", window=200, stride=90, track_bin=50,
                       pooling="none", shard_windows=4)
    s = res.store
    tr = s.track("c")
    assert tr.shape == (16, 32) and np.isfinite(tr).all()
    assert not s.store.has("embeddings")


def test_n_policy_skips_and_records(tmp_path, folders):
    seq = _rand(600, 7)
    seq = seq[:200] + "N" * 200 + seq[400:]
    fa = _fasta(tmp_path / "g.fa", {"c": seq, "empty": ""})
    res = embed_genome(fa, folders["hyenadna"], tmp_path / "o.zarr", window=100, n_policy="skip:0.5")
    s = res.store
    w = s.windows
    assert w["status"].tolist() == [0, 0, 1, 1, 0, 0]
    assert np.isnan(np.asarray(s.embeddings[2:4], np.float32)).all()
    assert np.isfinite(np.asarray(s.embeddings[[0, 1, 4, 5]], np.float32)).all()
    assert w["n_frac"][2] == 1.0 and w["tokens"][2] == 0
    assert s.records["n_windows"].tolist() == [6, 0] and s.attrs["n_policy"] == "skip:0.5"
    kept = embed_genome(fa, folders["hyenadna"], tmp_path / "k.zarr", window=100, n_policy="keep").store
    assert (kept.windows["status"] == 0).all()
    with pytest.raises(ValueError, match="n_policy='drop'"):
        NPolicy.parse("drop")


def test_regions_from_bed_and_region_query(tmp_path, folders):
    fa = _fasta(tmp_path / "g.fa", {"c1": _rand(900, 8), "c2": _rand(500, 9)})
    bed = tmp_path / "r.bed"
    bed.write_text("track name=x\nc2\t100\t350\nc1\t0\t250\n")
    s = embed_genome(fa, folders["hyenadna"], tmp_path / "o.zarr", window=100, regions=bed).store
    w = s.windows
    assert list(zip(w["record_name"], w["start"], w["end"])) == [
        ("c2", 100, 200), ("c2", 200, 300), ("c2", 300, 350), ("c1", 0, 100), ("c1", 100, 200), ("c1", 200, 250)]
    hits = s.region("c1:150-201")  # 1-based inclusive = [149, 201)
    assert hits.windows["start"].tolist() == [100, 200] and hits.embeddings.shape == (2, 32)
    assert parse_region("chr2:1,000,000-1,200,000") == ("chr2", 999_999, 1_200_000)
    with pytest.raises(KeyError, match="no record 'c3'"):
        s.region("c3:1-10")
    bad = tmp_path / "bad.bed"
    bad.write_text("c1\t0\t5000\n")
    with pytest.raises(ValueError, match=r"bad.bed, line 1: region c1:0-5000 is not within \[0, 900\)"):
        embed_genome(fa, folders["hyenadna"], tmp_path / "b.zarr", window=100, regions=bad)


def test_npy_format_reads_back_the_same(tmp_path, folders):
    fa = _fasta(tmp_path / "g.fa", {"c": _rand(700, 10)})
    z = embed_genome(fa, folders["dnabert2"], tmp_path / "o.zarr", window=200).store
    n = embed_genome(fa, folders["dnabert2"], tmp_path / "o_npy", window=200, fmt="npy").store
    assert np.array_equal(np.asarray(z.embeddings[:]), np.asarray(n.embeddings[:]))
    assert (tmp_path / "o_npy" / "embeddings.npy").is_file()
    assert np.load(tmp_path / "o_npy" / "windows.start.npy").tolist() == [0, 200, 400, 600]


def test_job_is_keyed_on_content(tmp_path, folders):
    fa = _fasta(tmp_path / "g.fa", {"c": _rand(500, 11)})
    out = tmp_path / "o.zarr"
    embed_genome(fa, folders["hyenadna"], out, window=100)
    moved = tmp_path / "moved.fa"
    fa.rename(moved)  # a moved input is the same job: nothing redone
    r = embed_genome(moved, folders["hyenadna"], out, window=100)
    assert r.complete and r.shards_done == 0
    with pytest.raises(JobMismatchError, match="window"):
        embed_genome(moved, folders["hyenadna"], out, window=120)
    _fasta(moved, {"c": _rand(500, 12)})  # one genome changed: another job
    with pytest.raises(JobMismatchError, match="another job"):
        embed_genome(moved, folders["hyenadna"], out, window=100)
    r = embed_genome(moved, folders["hyenadna"], out, window=100, overwrite=True)
    assert r.complete and r.shards_done == 1


def test_bad_input(tmp_path, folders):
    empty = tmp_path / "e.fa"
    empty.write_text("")
    with pytest.raises(ValueError, match="e.fa.*does not contain a valid sequence"):
        embed_genome(empty, folders["hyenadna"], tmp_path / "a.zarr")
    fa = _fasta(tmp_path / "g.fa", {"c": "ACGT" * 50 + "ACGX" + "ACGT" * 50})
    with pytest.raises(omicskern.errors.InvalidSequenceError, match=r"record 'c', position 203"):
        embed_genome(fa, folders["hyenadna"], tmp_path / "b.zarr", window=100)
    with pytest.raises(ValueError, match="max_length=.* use window <= "):
        embed_genome(fa, folders["hyenadna"], tmp_path / "c.zarr", window=10_000)
    with pytest.raises(ValueError, match="per_token=True stores the forward strand"):
        embed_genome(fa, folders["hyenadna"], tmp_path / "d.zarr", per_token=True, rc="average")
    # a checkpoint folder holding another model's tokenizer file
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(folders["dnabert2"], mixed)
    big = omicskern.load(folders["dnabert2"]).get_tokenizer()
    small_cfg = (mixed / "config.json").read_text().replace('"vocab_size": 4096', '"vocab_size": 1000')
    (mixed / "config.json").write_text(small_cfg)
    from safetensors.torch import load_file, save_file

    sd = load_file(mixed / "model.safetensors")
    sd = {k: (v[:1000] if v.shape[:1] == (4096,) else v) for k, v in sd.items()}
    save_file(sd, str(mixed / "model.safetensors"))
    assert big.vocab_size == 4096
    with pytest.raises(omicskern.errors.CheckpointError, match="has 4,096 tokens but the model's embedding has 1,000"):
        embed_genome(fa, mixed, tmp_path / "m.zarr", window=100)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root can write anywhere
            with pytest.raises(Exception, match="not writable|Permission"):
                embed_genome(fa, folders["hyenadna"], ro / "x.zarr", window=100)
    finally:
        ro.chmod(0o700)


# -- real processes ----------------------------------------------------------------------------------
def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMICSKERN_CACHE": str(tmp_path / "cache")}


def _arrays(path: Path) -> dict:
    s = GenomeEmbeddings(path)
    out = {"embeddings": np.asarray(s.embeddings[:])}
    out.update({f"w_{k}": v for k, v in s.windows.items() if k != "record_name"})
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def test_sigkill_then_rerun_gives_identical_store(tmp_path, folders):
    args = [sys.executable, "-m", "omicskern", "embed-genome", str(LAMBDA), "--model", str(folders["hyenadna"]),
            "--window", "256", "--shard-windows", "4", "--threads", "1", "--quiet"]
    ref = tmp_path / "ref.zarr"
    r = subprocess.run(args + ["--out", str(ref)], env=_env(tmp_path), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "o.zarr"
    for n_done in (2, 15):  # two kills, at different points, then a run to the end
        p = subprocess.Popen(args + ["--out", str(out)], env=_env(tmp_path), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        t = time.monotonic()
        while p.poll() is None and time.monotonic() - t < 120:
            if len(list((out / ".omicskern-job").glob("shard-*.npz"))) >= n_done:
                break
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not GenomeEmbeddings(out).complete
    r = subprocess.run(args + ["--out", str(out)], env=_env(tmp_path), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "already done" in r.stderr
    _same(_arrays(out), _arrays(ref))
    assert GenomeEmbeddings(out).complete and not (out / ".omicskern-job").exists()


def test_torchrun_two_ranks_equal_one_process(tmp_path, folders):
    common = ["embed-genome", str(LAMBDA), "--model", str(folders["dnabert2"]), "--window", "400",
              "--shard-windows", "8", "--threads", "1", "--quiet", "--track-bin", "100"]
    one = tmp_path / "one.zarr"
    r = subprocess.run([sys.executable, "-m", "omicskern", *common, "--out", str(one)], env=_env(tmp_path),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    two = tmp_path / "two.zarr"
    # --standalone: torchrun picks a free port for its rendezvous (no collisions between test runs)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "omicskern", *common, "--out", str(two)],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "rank 0 of 2" in r.stderr
    _same(_arrays(two), _arrays(one))
    name = GenomeEmbeddings(one).records["name"][0]
    assert np.array_equal(GenomeEmbeddings(two).track(name), GenomeEmbeddings(one).track(name), equal_nan=True)
