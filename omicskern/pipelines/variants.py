"""Zero-shot variant-effect scores from a VCF: ``omicskern score-variants``.

Every variant (multi-allelic records split into one row per ALT) is scored in a window of the
reference centred on it, sized to what the model's ``max_length`` holds
(:func:`omicskern.pipelines.genome.default_window`); near a record's edge the window shifts to
stay inside the record and the variant's offset in it is recorded. The alternate window is the
reference window with REF replaced by ALT (so an indel changes its length); for an insertion that
would take the alternate window past a model's hard token limit, the reference window is shortened
by the insertion's length (``window_len`` records each variant's window). Scores, by model kind
(the exact definitions, also in ``docs/variants.md``):

* ``llr`` (causal LMs, e.g. HyenaDNA): ``sum_i log p(alt_i | alt_<i) - sum_i log p(ref_i | ref_<i)``
  over the window's base tokens (special tokens left out), as Evo 2's zero-shot scoring. The
  tokens before the first changed token have the same prefix in both windows, so a causal model
  gives them identical log-probabilities: they cancel exactly and are not computed (the sums start
  at the first token that differs).
* ``masked-llr`` (masked LMs: NT, DNABERT-2, character MLMs): tokenize both windows and find the
  tokens that differ. When both tokenizations have the same token boundaries (SNVs with character
  or NT k-mer tokens): one forward pass on the reference window with the differing tokens masked,
  and ``sum_j log p(alt_j) - log p(ref_j)`` over them. Otherwise (indels, or BPE re-tokenizing the
  alternate differently): the pseudo-log-likelihood difference over the tokens that changed,
  ``PLL(alt changed) - PLL(ref changed)``, each token masked alone in its own window (one pass per
  changed token); the ``method`` column says which was used.
* ``embedding``: cosine similarity and L2 distance between the pooled embeddings (``pooling``) of
  the reference and alternate windows.

``strand="both"`` averages each score over the forward windows and their reverse complements.
Reference windows are computed once and shared by every allele that uses them; all rows run in
ragged token-budget batches (:mod:`omicskern.pipelines.engine`).

Flags (a ``flags`` column; a flagged variant that is not scored has NaN scores, never a missing
row): ``ref_mismatch`` (REF differs from the FASTA; scored only with ``allow_ref_mismatch``),
``symbolic`` (``<DEL>``, ``*``, breakends), ``too_long`` (an allele over ``max_allele``),
``non_acgt`` (an allele with N or an IUPAC code), ``unknown_contig``, ``out_of_record``.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from omicskern.batch import Batch
from omicskern.pipelines.distributed import Ranks
from omicskern.pipelines.engine import Clock, configure_threads, embed_rows
from omicskern.pipelines.jobs import JobKey, ShardedJob, digest
from omicskern.pipelines.units import WorkUnit

__all__ = ["score_variants", "read_vcf", "Variant", "ScoreVariantsResult", "SCORES", "token_logprobs"]

SCORES = ("llr", "masked-llr", "embedding")
_ACGT = frozenset("ACGT")
_COMP = str.maketrans("ACGTNacgtn", "TGCANtgcan")


@dataclass
class Variant:
    """One ALT of a VCF record: ``pos`` is 1-based as in the VCF; ``flags`` say why it is not scored."""

    chrom: str
    pos: int
    id: str
    ref: str
    alt: str
    line: int = 0
    flags: list = field(default_factory=list)
    contig: str | None = None  # the FASTA record it maps to


@dataclass
class ScoreVariantsResult:
    out: Path | None
    table: dict
    variants: int = 0
    scored: int = 0
    flagged: dict = field(default_factory=dict)
    windows: int = 0
    forward_rows: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    scores: tuple = ()

    def summary(self) -> str:
        fl = ", ".join(f"{v:,} {k}" for k, v in sorted(self.flagged.items())) or "none"
        rate = self.variants / self.wall_s if self.wall_s > 0 else 0.0
        return (f"{self.variants:,} variants ({self.scored:,} scored; flagged: {fl}); scores: {', '.join(self.scores)}\n"
                f"{self.windows:,} reference windows (shared by alleles), {self.forward_rows:,} rows through the model; "
                f"wall {self.wall_s:.1f} s ({rate:,.1f} variants/s), model {self.model_s:.1f} s")


# -- VCF ----------------------------------------------------------------------------------------------
def read_vcf(path, *, max_allele: int = 50) -> list[Variant]:
    """Every ALT of every record of a VCF (plain, bgzipped, or BCF) through pysam, in file order.

    Multi-allelic records are split; symbolic alleles (``<DEL>``, ``*``, breakends), alleles
    longer than ``max_allele`` and alleles with N/IUPAC codes are kept with a flag (not scored).
    A file without a header, or truncated, raises naming the file."""
    try:
        import pysam
    except ImportError:  # pragma: no cover - a dependency on Linux/macOS
        raise ImportError("reading VCF needs pysam: pip install pysam") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VCF not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b":
        import gzip

        try:
            with gzip.open(path, "rb") as f:
                first = f.read(16)
        except (OSError, EOFError) as e:
            raise ValueError(f"VCF {path}: not a readable gzip/bgzip file ({e})") from None
    else:
        with open(path, "rb") as f:
            first = f.read(16)
    if not first:
        raise ValueError(f"VCF {path} is empty (no header, no records)")
    if not first.startswith(b"##fileformat=") and not first.startswith(b"BCF"):
        raise ValueError(f"VCF {path} has no header: the first line must be ##fileformat=VCFv4.x "
                         f"(it starts with {first[:16]!r})")
    out: list[Variant] = []
    try:
        vf = pysam.VariantFile(str(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"VCF {path}: cannot read the header ({e})") from None
    n = 0
    try:
        with vf:
            for rec in vf:
                n += 1
                alts = rec.alts or ()
                ref = rec.ref or ""
                for alt in alts:
                    v = Variant(rec.chrom, int(rec.pos), rec.id or ".", ref, alt, line=n)
                    if alt.startswith("<") or alt == "*" or "[" in alt or "]" in alt or alt == ".":
                        v.flags.append("symbolic")
                    elif len(ref) > max_allele or len(alt) > max_allele:
                        v.flags.append("too_long")
                    elif not set(ref.upper()) <= _ACGT or not set(alt.upper()) <= _ACGT:
                        v.flags.append("non_acgt")
                    out.append(v)
                if not alts:
                    v = Variant(rec.chrom, int(rec.pos), rec.id or ".", ref, ".", line=n, flags=["symbolic"])
                    out.append(v)
    except (OSError, ValueError) as e:
        raise ValueError(f"VCF {path}: cannot read record {n + 1} (truncated or malformed: {e})") from None
    return out


def _map_contigs(variants: list[Variant], names: Sequence[str], contig_map, vcf, fasta) -> None:
    known = set(names)
    mapping: dict = {}
    if isinstance(contig_map, dict):
        mapping = dict(contig_map)
    elif contig_map == "auto":  # chr1 <-> 1
        for n in {v.chrom for v in variants}:
            if n in known:
                continue
            alt = n[3:] if n.startswith("chr") else "chr" + n
            if alt in known:
                mapping[n] = alt
    elif contig_map not in (None, "none"):
        raise ValueError(f"contig_map must be a dict, 'auto' or None, got {contig_map!r}")
    chroms = list(dict.fromkeys(v.chrom for v in variants))
    hits = [c for c in chroms if mapping.get(c, c) in known]
    if chroms and not hits:
        raise KeyError(f"no contig of VCF {vcf} is a record of FASTA {fasta}: VCF contigs "
                       f"{', '.join(chroms[:8])}{', ...' if len(chroms) > 8 else ''}; FASTA records "
                       f"{', '.join(list(names)[:8])}{', ...' if len(names) > 8 else ''}. Map them with "
                       "contig_map='auto' (--contig-map auto: chr1 <-> 1) or a two-column file (--contig-map FILE)")
    for v in variants:
        c = mapping.get(v.chrom, v.chrom)
        if c in known:
            v.contig = c
        else:
            v.flags.append("unknown_contig")


def read_contig_map(path) -> dict:
    """Two whitespace-separated columns per line: VCF contig, FASTA record."""
    out = {}
    for ln, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split()
        if len(f) != 2:
            raise ValueError(f"contig map {path}, line {ln}: expected 2 columns (VCF name, FASTA name), got {len(f)}")
        out[f[0]] = f[1]
    return out


# -- the model's log-probabilities ----------------------------------------------------------------------
def token_logprobs(model, batch: Batch, row: np.ndarray, pos: np.ndarray, target: np.ndarray, *,
                   max_tokens: int = 4096, shift: int = 0, clock: Clock | None = None) -> np.ndarray:
    """``log p(target[j])`` read at token ``pos[j] - shift`` of row ``row[j]`` of ``batch`` (float64).

    ``shift=1`` for causal LMs (the logits at ``i - 1`` predict token ``i``); 0 for masked LMs. Rows
    run in token-budget groups; only the needed positions go through log-softmax."""
    import torch

    clock = clock or Clock()
    out = np.zeros(len(row), np.float64)
    if not len(row):
        return out
    cu = np.asarray(batch.cu_seqlens, np.int64)
    order = np.argsort(row, kind="stable")
    plan = batch.plan(max_tokens, padded=getattr(model, "pads_rows", False))
    need_by_row: dict = {}
    for j in order:
        need_by_row.setdefault(int(row[j]), []).append(j)
    with torch.inference_mode():
        for rows in plan.groups:
            want = [j for r in rows for j in need_by_row.get(int(r), ())]
            if not want:
                continue
            sub = batch.select(rows)
            local_start = np.zeros(len(rows) + 1, np.int64)
            np.cumsum(cu[np.asarray(rows) + 1] - cu[np.asarray(rows)], out=local_start[1:])
            where = {int(r): int(local_start[i]) for i, r in enumerate(rows)}
            with clock("model"):
                logits = model.token_logits(sub)
                idx = torch.as_tensor([where[int(row[j])] + int(pos[j]) - shift for j in want], dtype=torch.long)
                lp = torch.log_softmax(logits[idx].double(), dim=-1)
                vals = lp[torch.arange(len(want)), torch.as_tensor(target[want], dtype=torch.long)]
            out[want] = vals.cpu().numpy()
    return out


def _has_lm_head(model) -> bool:
    try:
        tok = model.get_tokenizer()
        model.token_logits(tok.encode_batch(["ACGTACGT"], padding=False))
        return True
    except RuntimeError as e:
        if "head" in str(e):
            return False
        raise


# -- windows and rows ----------------------------------------------------------------------------------
def _window(length: int, start: int, ref_len: int, w: int) -> int:
    """Start of the ``w``-base window centred on bases ``[start, start + ref_len)``, kept inside the record."""
    s = start + ref_len // 2 - w // 2
    return int(max(0, min(s, length - w)))


def _rc(s: str) -> str:
    return s.translate(_COMP)[::-1]


def _spans_of(b: Batch, i: int) -> tuple[np.ndarray, np.ndarray]:
    cu = np.asarray(b.cu_seqlens, np.int64)
    ids = np.asarray(b.input_ids)[cu[i]:cu[i + 1]]
    sp = np.asarray(b.token_spans).reshape(-1, 2)[cu[i]:cu[i + 1]]
    return ids, sp


def _diff(ids_r, sp_r, ids_a, sp_a):
    """(first differing token, end of the differing stretch in ref, in alt): the common prefix
    and suffix of the two token sequences (ids and base spans measured from the ends) removed."""
    n_r, n_a = len(ids_r), len(ids_a)
    p = 0
    while p < min(n_r, n_a) and ids_r[p] == ids_a[p] and sp_r[p, 0] == sp_a[p, 0] and sp_r[p, 1] == sp_a[p, 1]:
        p += 1
    L_r, L_a = int(sp_r[:, 1].max(initial=0)), int(sp_a[:, 1].max(initial=0))
    q = 0
    while (q < min(n_r, n_a) - p and ids_r[n_r - 1 - q] == ids_a[n_a - 1 - q]
           and L_r - sp_r[n_r - 1 - q, 0] == L_a - sp_a[n_a - 1 - q, 0]
           and L_r - sp_r[n_r - 1 - q, 1] == L_a - sp_a[n_a - 1 - q, 1]):
        q += 1
    return p, n_r - q, n_a - q


def score_variants(fasta, vcf, model, out=None, *, scores: Sequence[str] | None = None, window: int | None = None,
                   strand: str = "forward", pooling: str = "mean", max_allele: int = 50,
                   allow_ref_mismatch: bool = False, contig_map=None, batch_tokens: int = 8192,
                   device: str | None = None, dtype: str | None = None, threads: int | None = None,
                   overwrite: bool = False, progress: bool = False, unit_variants: int = 512,
                   on_note: Callable[[str], None] | None = None, ranks: Ranks | None = None) -> ScoreVariantsResult:
    """Scores every variant of ``vcf`` against ``fasta`` with ``model`` (see the module docstring).

    Args:
        fasta: the reference (plain or BGZF). vcf: plain, bgzipped or BCF, sorted or not.
        model: a checkpoint folder, ``"builtin"``, or a loaded model.
        out: ``.tsv`` / ``.parquet`` (written atomically), or None.
        scores: any of :data:`SCORES`; default: ``llr`` for causal LMs, ``masked-llr`` for masked
            LMs, plus ``embedding`` for models without an LM head.
        window: bases (default: what the model's max length holds). strand: ``forward`` or ``both``.
        allow_ref_mismatch: score variants whose REF differs from the FASTA (flagged either way).
        contig_map: ``None``, ``"auto"`` (chr1 <-> 1) or a dict VCF name -> FASTA name.
        unit_variants: variants per shard. With ``out``, the job is resumable: every shard of
            scores is recorded under ``.<out>.omicskern-job/`` and a rerun of the same command (same
            content, model and settings) redoes only what is missing; under ``torchrun`` each rank
            scores its share of the shards and rank 0 writes the table.

    Returns:
        :class:`ScoreVariantsResult` with ``table`` (column -> array, one row per ALT, VCF order
        sorted by position).
    """
    t0 = time.perf_counter()
    if strand not in ("forward", "both"):
        raise ValueError(f"strand must be 'forward' or 'both', got {strand!r}")
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    out = Path(out) if out is not None else None
    if out is not None:
        if out.suffix.lower() not in (".tsv", ".parquet"):
            raise ValueError(f"out must end in .tsv or .parquet, got {out.name}")
        from omicskern.io.writers import check_writable

        check_writable(out)
        if out.exists() and not overwrite:
            from omicskern.errors import JobMismatchError

            raise JobMismatchError(f"{out} exists; use overwrite=True or another output path")
    if unit_variants < 1:
        raise ValueError(f"unit_variants must be >= 1, got {unit_variants}")
    ranks = ranks or Ranks.from_env()
    device = ranks.device(device)
    ranks.init(device)
    try:
        return _score(fasta, vcf, model, out, scores, window, strand, pooling, max_allele, allow_ref_mismatch,
                      contig_map, batch_tokens, device, dtype, threads, overwrite, unit_variants, ranks, t0)
    finally:
        ranks.close()


def _score(fasta, vcf, model, out, scores, window, strand, pooling, max_allele, allow_ref_mismatch, contig_map,
           batch_tokens, device, dtype, threads, overwrite, unit_variants, ranks, t0) -> ScoreVariantsResult:
    from omicskern.io.fasta import FastaFile
    from omicskern.pipelines.genome import _load_model, default_window

    configure_threads(threads)
    model, _ = _load_model(model, device, dtype)
    model.eval()
    head = _has_lm_head(model)
    if scores is None:
        scores = ("llr",) if model.kind == "causal_lm" and head else ("masked-llr",) if head else ("embedding",)
    scores = tuple(scores)
    bad = [s for s in scores if s not in SCORES]
    if bad:
        raise ValueError(f"unknown score {', '.join(bad)}; scores: {', '.join(SCORES)}")
    supported = (["llr"] if model.kind == "causal_lm" and head else []) + \
        (["masked-llr"] if model.kind == "masked_lm" and head else []) + ["embedding"]
    unsupported = [s for s in scores if s not in supported]
    if unsupported:
        why = "has no LM head" if not head else f"is a {model.kind.replace('_', ' ')}"
        raise ValueError(f"this {type(model).__name__} {why}: it cannot give {', '.join(unsupported)}; "
                         f"the scores it supports: {', '.join(supported)}")
    tok = model.get_tokenizer()
    if getattr(tok, "uppercase", None) is False:
        tok = copy.copy(tok)
        tok.uppercase = True
    if "masked-llr" in scores and getattr(tok, "mask_token_id", None) is None:
        raise ValueError(f"masked-llr needs a mask token; {type(tok).__name__} has none")
    variants = read_vcf(vcf, max_allele=max_allele)
    with FastaFile(fasta) as fa:
        _map_contigs(variants, fa.names, contig_map, vcf, fasta)
        lengths = dict(zip(fa.names, fa.lengths))
        order = {n: i for i, n in enumerate(fa.names)}
        variants.sort(key=lambda v: (order.get(v.contig, len(order)), v.pos, v.line))
        w = int(window) if window else default_window(model, tok)
        fit = default_window(model, tok)
        if w > fit and model.max_length_is_hard and not hasattr(tok, "to_json_str"):
            raise ValueError(f"window={w} bases needs more tokens than this model's max_length={model.max_length}; "
                             f"use window <= {fit}")
        seq_cache: dict = {}

        def seq(name):
            if name not in seq_cache:
                seq_cache.clear()
                seq_cache[name] = fa.sequence(name)
            return seq_cache[name]

        n = len(variants)
        win_start = np.full(n, -1, np.int64)
        win_len = np.zeros(n, np.int64)
        # char / k-mer tokens: a window's token count is known, so the model's hard limit is checked
        # per variant here (BPE windows are checked once tokenized)
        known_len = model.max_length_is_hard and not hasattr(tok, "to_json_str")
        offset = np.full(n, -1, np.int64)
        ref_seqs, alt_seqs = {}, []  # ref windows shared: (contig, start) -> string
        todo = []
        for i, v in enumerate(variants):
            if v.flags:  # symbolic, too long, non-ACGT, unknown contig: not scored
                continue
            s0 = v.pos - 1
            L = lengths[v.contig]
            if s0 < 0 or s0 + len(v.ref) > L:
                v.flags.append("out_of_record")
                continue
            genome_ref = seq(v.contig)[s0:s0 + len(v.ref)]
            if genome_ref.upper() != v.ref.upper():
                v.flags.append("ref_mismatch")
                if not allow_ref_mismatch:
                    continue
            wv = w
            grow = len(v.alt) - len(v.ref)
            if grow > 0 and known_len and w + grow > fit:
                wv = fit - grow  # an insertion: a shorter reference window, so the alternate still fits
            ws = _window(L, s0, len(v.ref), wv)
            key = (v.contig, ws, wv)
            if key not in ref_seqs:
                ref_seqs[key] = seq(v.contig)[ws:ws + wv].upper()
            r = ref_seqs[key]
            o = s0 - ws
            alt_seqs.append(r[:o] + v.alt.upper() + r[o + len(v.ref):])
            win_start[i], offset[i], win_len[i] = ws, o, len(r)
            todo.append((i, key))
    table = {"chrom": np.array([v.chrom for v in variants], dtype=object),
             "pos": np.array([v.pos for v in variants], np.int64),
             "id": np.array([v.id for v in variants], dtype=object),
             "ref": np.array([v.ref for v in variants], dtype=object),
             "alt": np.array([v.alt for v in variants], dtype=object),
             "window_start": win_start, "window_len": win_len, "variant_offset": offset}
    res = ScoreVariantsResult(out, table, variants=n, windows=len(ref_seqs), scores=scores)
    clock = Clock()
    cols = _columns(scores) + (["method"] if "masked-llr" in scores else [])
    units = [WorkUnit(u, "variants", a, min(a + unit_variants, len(todo)), min(a + unit_variants, len(todo)) - a)
             for u, a in enumerate(range(0, len(todo), unit_variants))]
    job = None
    if out is not None:
        from omicskern.pipelines.genome import model_identity
        from omicskern.pipelines.tokenize import fasta_fingerprint, tokenizer_identity

        with FastaFile(fasta) as fa:
            fp, _ = fasta_fingerprint(fa, sorted({v.contig for v in variants if v.contig}, key=order.get))
        vdigest = digest([(v.chrom, v.pos, v.ref, v.alt, v.contig) for v in variants])
        key = JobKey("score-variants", {"fasta": fp, "variants": vdigest, "n": n},
                     {"model": model_identity(model), "tokenizer": tokenizer_identity(tok)},
                     {"scores": list(scores), "window": w, "strand": strand, "pooling": pooling,
                      "max_allele": max_allele, "allow_ref_mismatch": bool(allow_ref_mismatch),
                      "dtype": str(dtype) if dtype else None, "unit_variants": unit_variants})
        job = ShardedJob(_work(out), key, units, config={"out": out.name}).open(overwrite=overwrite)
        mine = job.pending(ranks.rank, ranks.world_size)
    else:
        mine = units
    err = None
    try:
        for u in mine:
            part = todo[u.start:u.stop]
            vals = _score_unit(model, tok, part, ref_seqs, alt_seqs[u.start:u.stop], scores, strand, pooling,
                               batch_tokens, clock, res)
            if job is not None:
                arrays = {k: (v.astype(str) if v.dtype == object else v) for k, v in vals.items()}
                job.write_shard(u, lambda tmp, a=arrays: _savez(tmp, a), variants=u.stop - u.start)
            else:
                _fill(table, n, cols, part, vals)
    except BaseException as e:  # raised below, after telling the other ranks
        err = e
    finally:
        if job is not None:
            job.finish()
    if not ranks.all_ok(err is None):
        if err is not None:
            raise err
        raise RuntimeError("another rank failed; rerun the same command to resume (done shards are kept)")
    ranks.barrier()
    if job is not None and ranks.is_main:
        for u in units:
            with np.load(job.out / u.shard, allow_pickle=False) as z:
                vals = {k: (z[k].astype(object) if k == "method" else z[k]) for k in z.files}
            _fill(table, n, cols, todo[u.start:u.stop], vals)
    for c in cols:
        if c not in table:
            table[c] = np.full(n, np.nan) if c != "method" else np.array([""] * n, dtype=object)
    flags = [",".join(v.flags) for v in variants]
    scored = np.zeros(n, bool)
    scored[[i for i, _ in todo]] = True
    table["scored"] = scored
    table["flags"] = np.array(flags, dtype=object)
    res.scored = int(scored.sum())
    for v in variants:
        for f in v.flags:
            res.flagged[f] = res.flagged.get(f, 0) + 1
    res.model_s = clock.get("model")
    if out is not None and ranks.is_main:
        _write_table(out, table)
        import shutil

        shutil.rmtree(job.out, ignore_errors=True)
    ranks.barrier()
    res.wall_s = time.perf_counter() - t0
    return res


def _work(out: Path) -> Path:
    return out.with_name(f".{out.name}.omicskern-job")


def _savez(tmp: Path, arrays: dict) -> None:
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _fill(table: dict, n: int, cols: list, part: list, vals: dict) -> None:
    idx = np.array([i for i, _ in part], np.int64)
    for c in cols:
        if c not in table:
            table[c] = np.full(n, np.nan) if c != "method" else np.array([""] * n, dtype=object)
        if len(idx):
            table[c][idx] = vals[c]


def _score_unit(model, tok, part, ref_seqs, alt_seqs, scores, strand, pooling, batch_tokens, clock, res) -> dict:
    """Scores of one unit's variants: their reference windows (each once) and alternate windows."""
    keys = list(dict.fromkeys(k for _, k in part))
    kidx = {k: j for j, k in enumerate(keys)}
    ref_of = np.array([kidx[k] for _, k in part], np.int64)
    strands = ("+", "-") if strand == "both" else ("+",)
    m = len(part)
    acc = {c: np.zeros(m, np.float64) for c in _columns(scores)}
    method = np.array([""] * m, dtype=object)
    for sd in strands:
        refs = [ref_seqs[k] for k in keys]
        alts = list(alt_seqs)
        if sd == "-":
            refs, alts = [_rc(x) for x in refs], [_rc(x) for x in alts]
        rb = tok.encode_batch(refs, padding=False, return_token_spans=True)
        ab = tok.encode_batch(alts, padding=False, return_token_spans=True)
        _check_len(model, rb, "reference window")
        _check_len(model, ab, "alternate window")
        if "embedding" in scores:
            er = embed_rows(model, rb, pooling=pooling, max_tokens=batch_tokens, clock=clock).pooled
            ea = embed_rows(model, ab, pooling=pooling, max_tokens=batch_tokens, clock=clock).pooled
            r_, a_ = er[ref_of].astype(np.float64), ea.astype(np.float64)
            acc["cosine"] += (r_ * a_).sum(1) / (np.linalg.norm(r_, axis=1) * np.linalg.norm(a_, axis=1))
            acc["l2"] += np.linalg.norm(r_ - a_, axis=1)
            res.forward_rows += len(rb) + len(ab)
        if "llr" in scores:
            acc["llr"] += _llr(model, tok, rb, ab, ref_of, batch_tokens, clock, res)
        if "masked-llr" in scores:
            v, mt = _masked_llr(model, tok, rb, ab, ref_of, batch_tokens, clock, res)
            acc["masked_llr"] += v
            method = mt
    out = {c: v / len(strands) for c, v in acc.items()}
    if "masked-llr" in scores:
        out["method"] = method
    return out


def _columns(scores) -> list[str]:
    cols = []
    for s in scores:
        cols += {"llr": ["llr"], "masked-llr": ["masked_llr"], "embedding": ["cosine", "l2"]}[s]
    return cols


def _check_len(model, b, what: str) -> None:
    if b is None or not model.max_length_is_hard:
        return
    lens = np.diff(np.asarray(b.cu_seqlens))
    if len(lens) and lens.max() > model.max_length:
        raise ValueError(f"a {what} has {int(lens.max())} tokens, more than the model's max_length={model.max_length}: "
                         "use a smaller window (--window)")


def _real(sp: np.ndarray) -> np.ndarray:
    return sp[:, 1] > sp[:, 0]


def _llr(model, tok, rb, ab, ref_of, max_tokens, clock, res) -> np.ndarray:
    """Causal LLR from the first differing token on (the shared prefix cancels exactly)."""
    n = len(ref_of)
    rows_r, pos_r, tgt_r, own_r = [], [], [], []
    rows_a, pos_a, tgt_a, own_a = [], [], [], []
    for j in range(n):
        ids_r, sp_r = _spans_of(rb, int(ref_of[j]))
        ids_a, sp_a = _spans_of(ab, j)
        p, _, _ = _diff(ids_r, sp_r, ids_a, sp_a)
        for ids, sp, rows, pos, tgt, own, r in ((ids_r, sp_r, rows_r, pos_r, tgt_r, own_r, int(ref_of[j])),
                                                 (ids_a, sp_a, rows_a, pos_a, tgt_a, own_a, j)):
            keep = np.nonzero(_real(sp))[0]
            keep = keep[(keep >= max(p, 1))]  # token 0 has no prediction (it follows nothing)
            rows.append(np.full(len(keep), r))
            pos.append(keep)
            tgt.append(ids[keep])
            own.append(np.full(len(keep), j))
    cat = lambda x: np.concatenate(x).astype(np.int64) if x else np.zeros(0, np.int64)  # noqa: E731
    lr = token_logprobs(model, rb, cat(rows_r), cat(pos_r), cat(tgt_r), max_tokens=max_tokens, shift=1, clock=clock)
    la = token_logprobs(model, ab, cat(rows_a), cat(pos_a), cat(tgt_a), max_tokens=max_tokens, shift=1, clock=clock)
    out = np.zeros(n)
    np.add.at(out, cat(own_a), la)
    np.subtract.at(out, cat(own_r), lr)
    res.forward_rows += len(np.unique(cat(rows_r))) + n
    return out


def _masked_llr(model, tok, rb, ab, ref_of, max_tokens, clock, res):
    """One masked pass per aligned variant; PLL over the changed tokens otherwise."""
    mask_id = int(tok.mask_token_id)
    n = len(ref_of)
    rows_ids, methods = [], []
    # masked rows: (ids with masks) -> targets (position, id, sign, variant)
    tgt_row, tgt_pos, tgt_id, tgt_sign, tgt_var = [], [], [], [], []
    for j in range(n):
        ids_r, sp_r = _spans_of(rb, int(ref_of[j]))
        ids_a, sp_a = _spans_of(ab, j)
        p, er, ea = _diff(ids_r, sp_r, ids_a, sp_a)
        aligned = er - p == ea - p and np.array_equal(sp_r[p:er], sp_a[p:ea])
        if aligned:
            masked = ids_r.copy()
            masked[p:er] = mask_id
            r = len(rows_ids)
            rows_ids.append(masked)
            for t in range(p, er):
                tgt_row += [r, r]
                tgt_pos += [t, t]
                tgt_id += [int(ids_a[t]), int(ids_r[t])]
                tgt_sign += [1.0, -1.0]
                tgt_var += [j, j]
            methods.append("masked")
        else:
            for ids, lo, hi, sign in ((ids_a, p, ea, 1.0), (ids_r, p, er, -1.0)):
                for t in range(lo, hi):
                    masked = ids.copy()
                    masked[t] = mask_id
                    r = len(rows_ids)
                    rows_ids.append(masked)
                    tgt_row.append(r)
                    tgt_pos.append(t)
                    tgt_id.append(int(ids[t]))
                    tgt_sign.append(sign)
                    tgt_var.append(j)
            methods.append("pll")
    out = np.zeros(n)
    if rows_ids:
        b = Batch.from_rows(rows_ids)
        lp = token_logprobs(model, b, np.asarray(tgt_row), np.asarray(tgt_pos), np.asarray(tgt_id),
                            max_tokens=max_tokens, shift=0, clock=clock)
        np.add.at(out, np.asarray(tgt_var), lp * np.asarray(tgt_sign))
        res.forward_rows += len(rows_ids)
    return out, np.array(methods, dtype=object)


def _write_table(out: Path, table: dict) -> None:
    from omicskern.pipelines.jobs import atomic_write

    if out.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {k: (v.tolist() if v.dtype == object else v) for k, v in table.items()}
        atomic_write(out, lambda tmp: pq.write_table(pa.table(cols), str(tmp)))
        return
    keys = list(table)

    def fmt(x):
        if isinstance(x, (float, np.floating)):
            return "nan" if np.isnan(x) else repr(float(x))
        if isinstance(x, (bool, np.bool_)):
            return "true" if x else "false"
        return str(x)

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write("\t".join(keys) + "\n")
            for i in range(len(table["pos"])):
                f.write("\t".join(fmt(table[k][i]) for k in keys) + "\n")

    atomic_write(out, write)


def read_table(path) -> dict:
    """A score table written by :func:`score_variants` back as column -> numpy array."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(str(path))
        return {k: np.asarray(t.column(k).to_pylist(), dtype=object if t.column(k).type == "string" else None)
                for k in t.column_names}
    lines = path.read_text().splitlines()
    keys = lines[0].split("\t")
    rows = [ln.split("\t") for ln in lines[1:]]
    out = {}
    for c, k in enumerate(keys):
        vals = [r[c] for r in rows]
        if k in ("pos", "window_start", "window_len", "variant_offset"):
            out[k] = np.array(vals, np.int64)
        elif k in ("llr", "masked_llr", "cosine", "l2"):
            out[k] = np.array(vals, np.float64)
        elif k == "scored":
            out[k] = np.array([v == "true" for v in vals])
        else:
            out[k] = np.array(vals, dtype=object)
    return out
