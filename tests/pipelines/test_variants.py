"""score-variants: every score equals a naive per-variant loop (one ref and one alt window, each
tokenized alone and run padded), at record edges, for indels, N nearby and soft-masked bases, on
both strands; bad VCFs and unsupported scores get clear errors or per-variant flags."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import omicskern
from omicskern.pipelines.variants import read_table, read_vcf, score_variants

HEADER = "##fileformat=VCFv4.2\n{contigs}#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
_COMP = str.maketrans("ACGTN", "TGCAN")


def _genome(tmp_path) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    a = "".join(rng.choice(list("ACGT"), 1500))
    a = a[:600] + "NNNN" + a[604:900] + a[900:960].lower() + a[960:]  # N and a soft-masked stretch
    b = "".join(rng.choice(list("ACGT"), 333))
    recs = {"chr1": a, "chr2": b}
    p = tmp_path / "ref.fa"
    with open(p, "w") as f:
        for n, s in recs.items():
            f.write(f">{n}\n" + "\n".join(s[i:i + 70] for i in range(0, len(s), 70)) + "\n")
    return p, recs


def _vcf(path: Path, rows: list[tuple], contigs=("chr1", "chr2")) -> Path:
    text = HEADER.format(contigs="".join(f"##contig=<ID={c}>\n" for c in contigs))
    for chrom, pos, ref, alt in rows:
        text += f"{chrom}\t{pos}\t.\t{ref}\t{alt}\t.\t.\t.\n"
    path.write_text(text)
    return path


def _variants(recs):
    a, b = recs["chr1"], recs["chr2"]
    sub = lambda s, i: "ACGT"[("ACGT".index(s[i].upper()) + 1) % 4]  # noqa: E731
    return [
        ("chr1", 1, a[0].upper(), sub(a, 0)),                       # first base: the window shifts right
        ("chr1", 1500, a[1499].upper(), sub(a, 1499)),              # last base: shifts left
        ("chr1", 598, a[597].upper(), sub(a, 597)),                 # N nearby
        ("chr1", 930, a[929].upper(), sub(a, 929)),                 # inside the soft-masked stretch
        ("chr1", 700, a[699:702].upper(), a[699].upper()),          # 2-base deletion
        ("chr1", 750, a[749].upper(), a[749].upper() + "GTA"),      # 3-base insertion
        ("chr2", 100, b[99].upper(), sub(b, 99) + "," + sub(b, 99) + "C"),  # multi-allelic: SNV + insertion
        ("chr2", 333, b[332].upper(), sub(b, 332)),                 # record shorter than the window
        ("chr1", 300, a[299].upper(), sub(a, 299)),
    ]


def _window(L, s0, r, w):
    return max(0, min(s0 + r // 2 - w // 2, L - w))


def _encode(tok, s):
    b = tok.encode_batch([s], padding=False, return_token_spans=True)
    return np.asarray(b.input_ids).astype(np.int64), np.asarray(b.token_spans).reshape(-1, 2)


def _logits(model, ids):
    with torch.no_grad():
        out = model.forward_padded(torch.as_tensor(ids)[None], return_logits=True)
    return torch.log_softmax(out.logits[0].double(), -1)


def _naive_llr(model, tok, ref_w, alt_w):
    tot = []
    for s in (ref_w, alt_w):
        ids, sp = _encode(tok, s)
        lp = _logits(model, ids)
        real = np.nonzero(sp[:, 1] > sp[:, 0])[0]
        real = real[real >= 1]
        tot.append(float(lp[torch.as_tensor(real - 1), torch.as_tensor(ids[real])].sum()))
    return tot[1] - tot[0]


def _common(ids_r, sp_r, ids_a, sp_a):
    p = 0
    while p < min(len(ids_r), len(ids_a)) and ids_r[p] == ids_a[p] and (sp_r[p] == sp_a[p]).all():
        p += 1
    Lr, La = sp_r[:, 1].max(), sp_a[:, 1].max()
    q = 0
    while (q < min(len(ids_r), len(ids_a)) - p and ids_r[-1 - q] == ids_a[-1 - q]
           and (Lr - sp_r[-1 - q] == La - sp_a[-1 - q]).all()):
        q += 1
    return p, len(ids_r) - q, len(ids_a) - q


def _naive_masked(model, tok, ref_w, alt_w):
    ids_r, sp_r = _encode(tok, ref_w)
    ids_a, sp_a = _encode(tok, alt_w)
    m = tok.mask_token_id
    if len(ids_r) == len(ids_a) and (sp_r == sp_a).all():  # aligned: one masked pass
        diff = np.nonzero(ids_r != ids_a)[0]
        x = ids_r.copy()
        x[diff] = m
        lp = _logits(model, x)
        d = torch.as_tensor(diff)
        return float((lp[d, torch.as_tensor(ids_a[diff])] - lp[d, torch.as_tensor(ids_r[diff])]).sum()), "masked"
    p, er, ea = _common(ids_r, sp_r, ids_a, sp_a)
    pll = []
    for ids, hi in ((ids_a, ea), (ids_r, er)):
        tot = 0.0
        for t in range(p, hi):
            x = ids.copy()
            x[t] = m
            tot += float(_logits(model, x)[t, ids[t]])
        pll.append(tot)
    return pll[0] - pll[1], "pll"


def _naive_embed(model, tok, ref_w, alt_w):
    e = []
    for s in (ref_w, alt_w):
        ids, _ = _encode(tok, s)
        with torch.no_grad():
            e.append(model.forward_padded(torch.as_tensor(ids)[None]).last_hidden_state[0].double().mean(0).numpy())
    return float(e[0] @ e[1] / np.linalg.norm(e[0]) / np.linalg.norm(e[1])), float(np.linalg.norm(e[0] - e[1]))


def _naive(model, recs, rows, score, w, strand):
    out = []
    tok = model.get_tokenizer()
    for chrom, pos, ref, alts in rows:
        for alt in alts.split(","):
            s = recs[chrom]
            s0 = pos - 1
            ws = _window(len(s), s0, len(ref), w)
            rw = s[ws:ws + w].upper()
            o = s0 - ws
            aw = rw[:o] + alt + rw[o + len(ref):]
            vals = []
            for a, b in ((rw, aw),) + (((rw.translate(_COMP)[::-1], aw.translate(_COMP)[::-1]),) if strand == "both" else ()):
                if score == "llr":
                    vals.append([_naive_llr(model, tok, a, b)])
                elif score == "masked-llr":
                    vals.append([_naive_masked(model, tok, a, b)[0]])
                else:
                    vals.append(list(_naive_embed(model, tok, a, b)))
            out.append((pos, alt, ws, np.mean(vals, axis=0)))
    return out


@pytest.mark.parametrize("name,score,strand", [
    ("hyenadna", "llr", "forward"), ("hyenadna", "llr", "both"),
    ("nucleotide_transformer", "masked-llr", "forward"),
    ("dnabert2", "masked-llr", "forward"), ("dnabert2", "embedding", "both"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_equals_the_naive_loop(tmp_path, folders, name, score, strand):
    fa, recs = _genome(tmp_path)
    rows = _variants(recs)
    if name != "hyenadna":  # bound the PLL cost of the naive loop: SNVs plus one indel
        rows = [r for r in rows if len(r[2]) == 1 and "," not in r[3] and len(r[3]) == 1] + [rows[4]]
    order = [3, 0, 2, 1] + list(range(4, len(rows)))
    vcf = _vcf(tmp_path / "v.vcf", [rows[i] for i in order])  # unsorted: accepted, sorted internally
    model = omicskern.load(folders[name])
    w = 300
    res = score_variants(fa, vcf, model, tmp_path / "s.tsv", scores=[score], window=w, strand=strand, batch_tokens=900)
    t = read_table(tmp_path / "s.tsv")
    assert t["scored"].all() and (t["flags"] == "").all()
    want = _naive(model, recs, rows, score, w, strand)
    got = {(c, int(p), a): i for i, (c, p, a) in enumerate(zip(t["chrom"], t["pos"], t["alt"]))}
    k = 0
    for chrom, pos, ref, alts in rows:
        for alt in alts.split(","):
            i = got[(chrom, pos, alt)]
            _, _, ws, vals = want[k]
            k += 1
            assert t["window_start"][i] == ws and t["variant_offset"][i] == pos - 1 - ws
            if score == "embedding":
                np.testing.assert_allclose([t["cosine"][i], t["l2"][i]], vals, rtol=1e-4, atol=1e-5)
            else:
                col = "llr" if score == "llr" else "masked_llr"
                np.testing.assert_allclose(t[col][i], vals[0], rtol=1e-4, atol=2e-3)
    assert list(t["pos"]) == sorted(t["pos"][t["chrom"] == "chr1"].tolist()) + sorted(t["pos"][t["chrom"] == "chr2"].tolist())
    assert res.windows < res.variants or name != "hyenadna"  # the multi-allelic site shares its window
    if score == "masked-llr":
        assert set(t["method"]) == ({"masked", "pll"} if name == "nucleotide_transformer" else set(t["method"]))


def test_flags_and_skips(tmp_path, folders):
    fa, recs = _genome(tmp_path)
    a = recs["chr1"]
    rows = [("chr1", 10, a[9].upper(), "<DEL>"), ("chr1", 20, "A" * 60, "A"), ("chr1", 30, a[29].upper(), "N"),
            ("chr1", 40, a[39].upper(), "R"), ("chr1", 50, "G" if a[49].upper() != "G" else "C", "T"),
            ("chrX", 5, "A", "C"), ("chr1", 1499, a[1498:1500].upper() + "A", "A"), ("chr1", 60, a[59].upper(), "*")]
    vcf = _vcf(tmp_path / "v.vcf", rows, contigs=("chr1", "chr2", "chrX"))
    res = score_variants(fa, vcf, folders["hyenadna"], tmp_path / "s.tsv", window=200)
    t = read_table(tmp_path / "s.tsv")
    flags = dict(zip(t["pos"].tolist(), t["flags"].tolist()))
    assert flags == {5: "unknown_contig", 10: "symbolic", 20: "too_long", 30: "non_acgt", 40: "non_acgt",
                     50: "ref_mismatch", 60: "symbolic", 1499: "out_of_record"}
    assert not t["scored"].any() and np.isnan(t["llr"]).all() and len(t["pos"]) == 8  # nothing dropped
    r = score_variants(fa, vcf, folders["hyenadna"], tmp_path / "s2.tsv", window=200, allow_ref_mismatch=True)
    t2 = read_table(tmp_path / "s2.tsv")
    i = int(np.nonzero(t2["pos"] == 50)[0][0])
    assert t2["scored"][i] and np.isfinite(t2["llr"][i]) and t2["flags"][i] == "ref_mismatch"
    assert r.flagged["ref_mismatch"] == 1


def test_vcf_formats_and_errors(tmp_path, folders):
    import pysam

    fa, recs = _genome(tmp_path)
    a = recs["chr1"]
    plain = _vcf(tmp_path / "v.vcf", [("chr1", 400, a[399].upper(), "A" if a[399].upper() != "A" else "C")])
    gz = tmp_path / "v.vcf.gz"
    pysam.tabix_compress(str(plain), str(gz))
    t1 = score_variants(fa, plain, folders["hyenadna"], window=200).table
    t2 = score_variants(fa, gz, folders["hyenadna"], window=200).table
    assert np.array_equal(t1["llr"], t2["llr"]) and np.isfinite(t1["llr"]).all()
    empty = _vcf(tmp_path / "e.vcf", [])
    r = score_variants(fa, empty, folders["hyenadna"], tmp_path / "e.tsv", window=200)
    assert r.variants == 0 and read_table(tmp_path / "e.tsv")["pos"].size == 0
    nohead = tmp_path / "n.vcf"
    nohead.write_text("chr1\t5\t.\tA\tC\t.\t.\t.\n")
    with pytest.raises(ValueError, match=r"n.vcf has no header"):
        read_vcf(nohead)
    trunc = tmp_path / "t.vcf.gz"
    trunc.write_bytes(gz.read_bytes()[:-30])
    with pytest.raises(ValueError, match=r"t.vcf.gz"):
        read_vcf(trunc)
    renamed = _vcf(tmp_path / "r.vcf", [("1", 400, a[399].upper(), "A" if a[399].upper() != "A" else "C")],
                   contigs=("1",))
    with pytest.raises(KeyError, match=r"VCF contigs 1; FASTA records chr1, chr2.*contig_map='auto'"):
        score_variants(fa, renamed, folders["hyenadna"], window=200)
    t3 = score_variants(fa, renamed, folders["hyenadna"], window=200, contig_map="auto").table
    np.testing.assert_allclose(t3["llr"], t1["llr"])


def test_unsupported_scores_name_the_supported_ones(tmp_path, folders):
    fa, recs = _genome(tmp_path)
    vcf = _vcf(tmp_path / "v.vcf", [("chr1", 400, recs["chr1"][399].upper(), "T")])
    with pytest.raises(ValueError, match="cannot give llr; the scores it supports: masked-llr, embedding"):
        score_variants(fa, vcf, folders["dnabert2"], scores=["llr"], window=200)
    with pytest.raises(ValueError, match="max_length"):
        score_variants(fa, vcf, folders["hyenadna"], window=5000)
    # an insertion at the largest window: the reference window shrinks so the alternate still fits
    ins = _vcf(tmp_path / "i.vcf", [("chr1", 800, recs["chr1"][799].upper(), recs["chr1"][799].upper() + "GATTA")])
    t = score_variants(fa, ins, folders["hyenadna"]).table
    assert t["window_len"][0] == 512 - 5 and np.isfinite(t["llr"][0])


def test_cli(tmp_path, folders):
    from omicskern.cli import main

    fa, recs = _genome(tmp_path)
    vcf = _vcf(tmp_path / "v.vcf", [("chr1", 400, recs["chr1"][399].upper(), "T"), ("chr2", 7, recs["chr2"][6].upper(), "G")])
    out = tmp_path / "s.parquet"
    assert main(["score-variants", "--fasta", str(fa), "--vcf", str(vcf), "--model", str(folders["hyenadna"]),
                 "--out", str(out), "--window", "200", "--strand", "both"]) == 0
    t = read_table(out)
    assert t["pos"].tolist() == [400, 7] and np.isfinite(t["llr"]).all()
    assert main(["score-variants", "--fasta", str(fa), "--vcf", str(vcf), "--model", str(folders["hyenadna"]),
                 "--out", str(out)]) == 1  # exists: refused without --overwrite
    assert main(["score-variants", "--fasta", str(fa), "--vcf", str(tmp_path / "nope.vcf"), "--out", str(out)]) == 2


def _many(recs, n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        c = "chr1" if rng.random() < 0.7 else "chr2"
        s = recs[c]
        p = int(rng.integers(1, len(s) + 1))
        ref = s[p - 1].upper()
        if ref == "N":
            continue
        rows.append((c, p, ref, "ACGT"[("ACGT".index(ref) + int(rng.integers(1, 4))) % 4]))
    return rows


def test_resume_and_torchrun_equal_one_run(tmp_path, folders):
    """Shards of scores are recorded; a run SIGKILLed after some shards resumes to the same table,
    and two torchrun ranks write the same table as one process."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    fa, recs = _genome(tmp_path)
    vcf = _vcf(tmp_path / "v.vcf", _many(recs, 40, 3))
    one = tmp_path / "one.tsv"
    score_variants(fa, vcf, folders["hyenadna"], one, window=200, unit_variants=7, threads=1)
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMICSKERN_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "omicskern", "score-variants", "--fasta", str(fa), "--vcf", str(vcf),
           "--model", str(folders["hyenadna"]), "--window", "200", "--threads", "1", "--unit-variants", "7"]
    # a real SIGKILL once two shards are recorded; the rerun redoes only the rest
    import signal
    import time

    part = tmp_path / "part.tsv"
    work = tmp_path / ".part.tsv.omicskern-job"
    p = subprocess.Popen(cli + ["--out", str(part)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t = time.monotonic()
    while p.poll() is None and time.monotonic() - t < 120 and len(list(work.glob("shard-*.npz"))) < 2:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not part.exists() and len(list(work.glob("shard-*.npz"))) >= 2
    r = subprocess.run(cli + ["--out", str(part)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert part.read_bytes() == one.read_bytes()
    assert not work.exists()
    two = tmp_path / "two.tsv"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "omicskern", "score-variants", "--fasta", str(fa), "--vcf", str(vcf), "--model", str(folders["hyenadna"]), "--out", str(two), "--window", "200",
                        "--threads", "1", "--unit-variants", "7"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert two.read_bytes() == one.read_bytes()
    assert read_table(one)["scored"].all()
