"""The CLI convention through the real paths: exit codes, error prefix, stderr summaries, refused
flags, flag names in messages, ``| head``, single-file job records, BPE case, and a real killed
process resumed to byte-identical output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from omicskern.cli import main

ENV = {**os.environ, "PYTHONWARNINGS": "default"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMICSKERN_CACHE", str(tmp_path / "cache"))
    ENV["OMICSKERN_CACHE"] = str(tmp_path / "cache")


def _lambda_seq(data_dir) -> str:
    return "".join((data_dir / "lambda_phage.fa").read_text().split("\n")[1:]).strip()


@pytest.fixture
def many_records(tmp_path, data_dir):
    """Lambda cut into 300 records of ~80 bp, 60 bases a line."""
    seq = _lambda_seq(data_dir)
    p = tmp_path / "many.fa"
    with open(p, "w") as f:
        for i in range(300):
            s = seq[i * 80:(i + 1) * 80 + i % 7]
            f.write(f">rec{i}\n" + "\n".join(s[j:j + 60] for j in range(0, len(s), 60)) + "\n")
    return p


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "omicskern", *args], capture_output=True, text=True, env=ENV,
                          timeout=120, **kw)


@pytest.mark.parametrize("argv, flag", [
    (["--tokenizer", "char", "--k", "4"], "--k"),
    (["--kmer-mode", "overlap"], "--kmer-mode"),
    (["--tokenizer", "kmer", "--tokenizer-json", "x.json"], "--tokenizer-json"),
    (["--keep-case"], "--keep-case"),
    (["--tokenizer", "bpe", "--tokenizer-json", "x.json", "--on-invalid", "unk"], "--on-invalid"),
    (["--rank", "1"], "--rank"),
    (["--out", "o.npz", "--world-size", "2"], "--world-size"),
    (["--overwrite"], "--overwrite"),
])
def test_flags_that_do_not_apply_are_refused(argv, flag, capsys):
    assert main(["tokenize", *argv]) == 2
    err = capsys.readouterr().err
    assert f"omicskern tokenize: error: {flag}" in err and "does not apply" in err


def test_cells_flags_that_do_not_apply_are_refused(data_dir, capsys):
    h5 = str(data_dir / "sc" / "pbmc_10x_v3_small.h5ad")
    assert main(["tokenize-cells", h5, "--method", "bin", "--vocab", h5, "--token-dict", h5, "--out", "x.npz"]) == 2
    assert "omicskern tokenize-cells: error: --token-dict does not apply to --method bin" in capsys.readouterr().err
    assert main(["tokenize-cells", h5, "--method", "rank", "--n-bins", "5", "--out", "x.npz"]) == 2
    assert "--n-bins does not apply to --method rank" in capsys.readouterr().err


def test_cells_errors_name_flags_and_outputs_remember_their_job(tmp_path, data_dir, capsys):
    import anndata as ad

    from tests.cli.test_tokenize_cells import _geneformer_files

    h5 = data_dir / "sc" / "pbmc_10x_v3_small.h5ad"
    _geneformer_files(tmp_path, ad.read_h5ad(h5, backed="r"))
    base = ["tokenize-cells", str(h5), "--method", "rank", "--token-dict", str(tmp_path / "token_dictionary.pkl"),
            "--gene-medians", str(tmp_path / "gene_median_dictionary.pkl"), "--no-progress"]
    assert main(base + ["--gene-column", "nope", "--out", str(tmp_path / "o.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("omicskern tokenize-cells: error: ") and "--gene-column" in err and "gene_column=" not in err
    out = tmp_path / "o.parquet"
    pytest.importorskip("pyarrow")
    assert main(base + ["--out", str(out)]) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert main(base + ["--out", str(out)]) == 0  # same job: nothing to do
    assert "already holds this job's output" in capsys.readouterr().err and out.read_bytes() == first
    assert main(base + ["--preset", "V1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "output belongs to another job" in err and "use --overwrite" in err and "overwrite=True" not in err
    assert main(base + ["--preset", "V1", "--out", str(out), "--overwrite"]) == 0


def test_single_npz_records_its_job(tmp_path, data_dir, capsys):
    out = tmp_path / "t.npz"
    fa = tmp_path / "l.fa"
    fa.write_text((data_dir / "lambda_phage.fa").read_text())
    assert main(["tokenize", str(fa), "--window", "1000", "--out", str(out), "--quiet"]) == 0
    assert main(["tokenize", str(fa), "--window", "1000", "--out", str(out), "--quiet"]) == 0  # same job
    assert main(["tokenize", str(fa), "--window", "500", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "omicskern tokenize: error:" in err and "output belongs to another job" in err and "--overwrite" in err
    assert "window 1000 -> 500" in err
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(1))
    assert main(["tokenize", str(fa), "--out", str(foreign), "--quiet"]) == 1
    assert main(["tokenize", str(fa), "--out", str(foreign), "--quiet", "--overwrite"]) == 0
    # one changed base is another job
    text = fa.read_text().split("\n")
    text[5] = ("A" if text[5][0] != "A" else "C") + text[5][1:]
    fa.write_text("\n".join(text))
    assert main(["tokenize", str(fa), "--window", "1000", "--out", str(out), "--quiet"]) == 1
    assert "input content" in capsys.readouterr().err


def test_bpe_lower_case_input_is_upper_cased(tmp_path, data_dir, capsys):
    from omicskern.tokenizers.bpe import BPETokenizer

    tj = data_dir / "dnabert2_tokenizer.json"
    low = tmp_path / "lower.fa"
    text = (data_dir / "lambda_phage.fa").read_text().split("\n", 1)
    low.write_text(text[0] + "\n" + text[1].lower())
    out = tmp_path / "bpe.npz"
    argv = ["tokenize", str(low), "--tokenizer", "bpe", "--tokenizer-json", str(tj), "--window", "2000", "--quiet"]
    assert main(argv + ["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "upper-casing" in err and "--keep-case" in err and "keep_case" not in err
    z = np.load(out)
    tok = BPETokenizer.from_file(tj)
    unk = tok.token_to_id("[UNK]")
    assert np.count_nonzero(z["ids"] == unk) == 0
    assert z["ids"][z["offsets"][0]:z["offsets"][1]].tolist() == tok.encode(_lambda_seq(data_dir)[:2000]).tolist()
    # --keep-case: HF's behaviour (mostly [UNK]), said readably on stderr, once
    assert main(argv + ["--keep-case"]) == 0
    err = capsys.readouterr().err
    warn = [line for line in err.splitlines() if "warning" in line]
    assert len(warn) == 1 and warn[0].startswith("omicskern tokenize: warning: ") and "[UNK]" in warn[0]


def test_subprocess_exit_codes_and_streams(tmp_path):
    r = _cli("tokenize", "--quiet")
    assert r.returncode == 0 and r.stdout == "" and "48,502 bases" in r.stderr  # summary on stderr
    r = _cli("tokenize", str(tmp_path / "missing.fa"))
    assert r.returncode == 2 and "omicskern tokenize: error:" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.fa.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 30)  # gzip, not BGZF: unreadable data
    r = _cli("tokenize", str(bad))
    assert r.returncode == 1 and "omicskern tokenize: error:" in r.stderr and "Traceback" not in r.stderr
    r = _cli("tokenize", "--tokenizer", "kmer", "--k", "2")
    assert r.returncode == 2 and "--k must" in r.stderr
    r = _cli("tokenize-cells", str(tmp_path / "none.h5ad"), "--method", "bin", "--vocab", "v.json", "--out", "o")
    assert r.returncode == 2 and r.stderr.startswith("usage:") and "omicskern tokenize-cells: error:" in r.stderr


def test_pipe_into_head_ends_quietly(tmp_path):
    r = subprocess.run(f"{sys.executable} -m omicskern tokenize --window 50 --out - | head -3; "
                       "echo rc=${PIPESTATUS[0]} >&2", shell=True, executable="/bin/bash", capture_output=True,
                       text=True, env=ENV, timeout=120)
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split("\t")[:3] == ["gi|9626243|ref|NC_001416.1|", "0", "50"]
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr and "Exception ignored" not in r.stderr
    assert "rc=141" in r.stderr or "rc=0" in r.stderr


def _tree(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != ".manifest.lock"}


def test_killed_run_resumes_to_identical_output(tmp_path, many_records):
    args = ["tokenize", str(many_records), "--tokenizer", "kmer", "--k", "3", "--kmer-mode", "overlap",
            "--window", "32", "--stride", "16", "--quiet"]
    ref = tmp_path / "ref"
    assert _cli(*args, "--out", str(ref)).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "omicskern", *args, "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and sum(1 for p in out.iterdir() if p.name.startswith("shard-")) >= 40:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the run finished before it could be killed")
    manifest = json.loads((out / "manifest.json").read_text())
    done = sum(1 for p in out.iterdir() if p.name.startswith("shard-"))
    assert 0 < done < 300 and not manifest["complete"] and len(manifest["records"]) == 300
    r = _cli(*args, "--out", str(out))
    assert r.returncode == 0 and "already done" in r.stderr
    assert _tree(out) == _tree(ref)
