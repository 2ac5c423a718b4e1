"""k-mer tokenizers: Nucleotide Transformer (non-overlapping) and DNABERT-1 (overlapping)."""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from omicskern._native import load_C
from omicskern.tokenizers._dna import DEFAULT_CHUNK, call_encoder, check_on_invalid, join_tokens
from omicskern.tokenizers.base import SequenceTokenizer, row_positions, spans_from_lengths, spans_from_starts

#: Base order of both vocabularies: k-mer code = sum idx(c_j) * 4^(k-1-j).
BASES = "ATCG"
NT_SPECIAL_TOKENS = ("<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>")
DNABERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_CLS_N, _CLS_UNK, _CLS_BAD = 4, 5, 6


@functools.lru_cache(maxsize=None)
def all_kmers(k: int) -> tuple[str, ...]:
    """Every k-mer in vocabulary order (A, T, C, G; last base fastest): AAA, AAT, AAC, AAG, ATA, ..."""
    return tuple("".join(p) for p in itertools.product(BASES, repeat=k))


def builtin_vocab_tokens(k: int, mode: str) -> tuple[str, ...]:
    """The built-in vocabulary in id order: NT v2's (``mode="nt"``) or DNABERT-1's (``"overlap"``)."""
    if mode == "nt":
        return NT_SPECIAL_TOKENS + all_kmers(k) + tuple(BASES) + ("N",)
    return DNABERT_SPECIAL_TOKENS + all_kmers(k)


def infer_k(tokens: Sequence[str]) -> int:
    """k of a k-mer vocabulary: the length of its tokens made of A, C, G, T only (longer than 1)."""
    lengths = {len(t) for t in tokens if len(t) > 1 and not t.strip("ACGT")}
    if len(lengths) != 1:
        found = "none" if not lengths else "lengths " + ", ".join(map(str, sorted(lengths)))
        raise ValueError(f"cannot infer k: expected k-mer tokens of one length, found {found}; pass k=")
    return lengths.pop()


class KmerTokenizer(SequenceTokenizer):
    """k-mer tokens, k = 3..8, with Nucleotide Transformer's or DNABERT-1's rules and vocabulary.

    ``mode="nt"`` (Nucleotide Transformer, non-overlapping): the sequence is split at every N;
    each N-free piece is cut into k-mers from its start; the 1..k-1 leftover bases at a piece end
    become single-base tokens; each N is its own token; ``<cls>`` is prepended, nothing appended.
    Built-in vocabulary = NT v2's (4107 for k=6): ``<unk>=0 <pad>=1 <mask>=2 <cls>=3 <eos>=4
    <bos>=5``, then the 4^k k-mers at ``6 + code``, then ``A T C G N``. ``code = sum_j idx(c_j) *
    4^(k-1-j)`` with ``A=0 T=1 C=2 G=3`` (``AAAAAA=6``, ``ACGTAC=728``). NT v1 checkpoints use
    another id layout: load their ``vocab.txt`` with :meth:`from_vocab_file`.

    ``mode="overlap"`` (DNABERT-1): one token per window of k bases, stride 1 (a sequence of L
    bases gives L-k+1 tokens, none when L < k), ``[CLS] ... [SEP]``. Vocabulary: ``[PAD]=0
    [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4`` then the k-mers at ``5 + code`` (same order), as in
    DNABERT's ``vocab.txt``. A window holding N (or any non-ACGT byte allowed by ``on_invalid``)
    is ``[UNK]``.

    Args:
        k: 3..8.
        mode: ``"nt"`` or ``"overlap"``.
        uppercase: read lower-case (soft-masked) bases as upper case (default); with False they
            are invalid bytes. With ``return_soft_mask=True`` a token is soft-masked when any of
            its bases is lower case.
        on_invalid: a byte other than ACGTN: ``"error"`` raises
            :class:`~omicskern.errors.InvalidSequenceError` (sequence index and position);
            ``"unk"``: NT mode emits ``<unk>`` for it (like N, it ends the current piece),
            overlap mode makes every window holding it ``[UNK]``; ``"n"``: read as N.
        vocab_tokens: the tokens in id order (token ``i`` has id ``i``, as the lines of a
            ``vocab.txt``); default: the built-in vocabulary above. Every id is looked up in it:
            it must hold all 4^k k-mers (and ``A T C G N`` in NT mode); special tokens are found
            by name (NT: ``<unk> <pad> <mask> <cls> <eos> <bos>``; overlap: ``[PAD] [UNK] [CLS]
            [SEP] [MASK]``), any one may be missing except those needed (the pad token unless
            ``pad_token_id`` is given, ``[UNK]`` in overlap mode, ``<unk>`` with ``on_invalid="unk"``).
        add_special_tokens, padding_side, truncation_side, max_length, num_threads, pad_token_id:
            see :class:`~omicskern.tokenizers.base.SequenceTokenizer`.

    Example:
        >>> tok = KmerTokenizer(6, mode="nt")
        >>> tok.encode("ACGTACGN")       # [3, 728, 4105, 4106]  (<cls>, ACGTAC, G, N)
        >>> KmerTokenizer.from_vocab_file("nucleotide-transformer-500m-human-ref/vocab.txt").encode("ACGTACGN")
        ... # [3, 726, 4103, 4104]: NT v1's layout
    """

    def __init__(self, k: int = 6, mode: str = "nt", *, uppercase: bool = True, on_invalid: str = "error",
                 vocab_tokens: Sequence[str] | None = None, add_special_tokens: bool = True,
                 padding_side: str = "right", truncation_side: str = "right", max_length: int | None = None,
                 num_threads: int = 0, pad_token_id: int | None = None):
        super().__init__(add_special_tokens=add_special_tokens, padding_side=padding_side,
                         truncation_side=truncation_side, max_length=max_length, num_threads=num_threads,
                         pad_token_id=pad_token_id)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 3 <= int(k) <= 8:
            raise ValueError(f"k must be an integer from 3 to 8, got {k!r}")
        if mode not in ("nt", "overlap"):
            raise ValueError(f"mode must be 'nt' or 'overlap', got {mode!r}")
        self.k = int(k)
        self.mode = mode
        self.uppercase = bool(uppercase)
        self.on_invalid = check_on_invalid(on_invalid)
        if vocab_tokens is None:
            vocab_tokens = builtin_vocab_tokens(self.k, mode)
        self._setup_vocab(list(vocab_tokens), pad_given=pad_token_id is not None)

        cls = np.full(256, _CLS_BAD, dtype=np.uint8)
        if self.on_invalid == "unk":
            cls[:] = _CLS_UNK
        elif self.on_invalid == "n":
            cls[:] = _CLS_N
        for code, b in enumerate(BASES):
            cls[ord(b)] = code
            if self.uppercase:
                cls[ord(b.lower())] = code
        cls[ord("N")] = _CLS_N
        if self.uppercase:
            cls[ord("n")] = _CLS_N
        self._cls_lut = cls
        self._allowed = "ACGTN" + (" (either case)" if self.uppercase else "")
        self._chunk = DEFAULT_CHUNK

    def _setup_vocab(self, tokens: list[str], pad_given: bool) -> None:
        """Every id from ``tokens`` (id = position): k-mers, single bases, N and the specials."""
        k, nt = self.k, self.mode == "nt"
        vocab: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if not isinstance(t, str):
                raise TypeError(f"vocabulary token {i}: expected str, got {type(t).__name__}")
            if not t:
                continue  # an empty line keeps its id unused
            if t in vocab:
                raise ValueError(f"vocabulary token {t!r} appears twice (ids {vocab[t]} and {i})")
            vocab[t] = i
        kmers = all_kmers(k)
        kmer_ids = np.fromiter((vocab.get(m, -1) for m in kmers), dtype=np.int64, count=len(kmers))
        if (kmer_ids < 0).any():
            missing = [kmers[j] for j in np.flatnonzero(kmer_ids < 0)[:3]]
            raise ValueError(f"the vocabulary lacks {int((kmer_ids < 0).sum())} of the {len(kmers)} {k}-mers "
                             f"(e.g. {', '.join(missing)}); is k={k} right?")
        names = dict(zip(("unk", "pad", "mask", "cls", "eos", "bos"), NT_SPECIAL_TOKENS)) if nt else \
            dict(zip(("pad", "unk", "cls", "sep", "mask"), DNABERT_SPECIAL_TOKENS))
        for role in ("unk", "pad", "mask", "cls", "sep", "eos", "bos"):
            setattr(self, f"{role}_token_id", vocab.get(names[role]) if role in names else None)
        if nt:
            single = [vocab.get(b, -1) for b in BASES + "N"]
            if min(single) < 0:
                lacking = [b for b, i in zip(BASES + "N", single) if i < 0]
                raise ValueError(f"mode='nt' needs the single-base tokens A T C G N; the vocabulary lacks "
                                 f"{' '.join(lacking)} (a DNABERT-style vocabulary? use mode='overlap')")
            if self.on_invalid == "unk" and self.unk_token_id is None:
                raise ValueError("on_invalid='unk' needs '<unk>' in the vocabulary")
            self.prefix_ids = () if self.cls_token_id is None else (self.cls_token_id,)
            self.suffix_ids = ()
        else:
            single = []
            if self.unk_token_id is None:
                raise ValueError("mode='overlap' needs '[UNK]' in the vocabulary (windows holding N)")
            self.prefix_ids = () if self.cls_token_id is None else (self.cls_token_id,)
            self.suffix_ids = () if self.sep_token_id is None else (self.sep_token_id,)
        if self.pad_token_id is None and not pad_given:
            raise ValueError(f"the vocabulary has no pad token {names['pad']!r}; pass pad_token_id=")
        regular = set(kmer_ids.tolist()) | set(single)
        self.special_ids = frozenset(i for i in vocab.values() if i not in regular and i != self.unk_token_id)

        # The C++ encoder writes k-mer id = kmer_base + code, single base = single_base + idx. When
        # the file's ids are laid out that way (every released vocabulary) it writes them directly;
        # otherwise it writes dense internal ids that one gather maps to the file's ids.
        n_kmers = len(kmers)
        affine = bool((kmer_ids == kmer_ids[0] + np.arange(n_kmers)).all()) and \
            (not nt or single[:4] == list(range(single[0], single[0] + 4)))
        unk = -1 if self.unk_token_id is None else self.unk_token_id
        self.kmer_base = int(kmer_ids[0])
        self.single_base = single[0] if nt else -1
        self.n_token_id = single[4] if nt else -1
        if affine:
            self._remap = None
            self._enc_ids = (self.kmer_base, max(self.single_base, 0), max(self.n_token_id, 0), max(unk, 0))
        else:
            self._remap = np.concatenate([kmer_ids, np.asarray(single, np.int64), [unk]]).astype(np.int32)
            self._enc_ids = (0, n_kmers, n_kmers + 4, len(self._remap) - 1)
            self._encode_with_specials = None  # specials are added after the gather (base class)
        self._set_vocab(vocab, size=len(tokens))
        self._tokens = tuple(tokens)
        self._code_of = np.full(self.vocab_size, -1, dtype=np.int64)
        self._code_of[kmer_ids] = np.arange(n_kmers)
        # Bases each token covers (token spans, NT mode): k for a k-mer, 1 for every other token the
        # encoder writes (single bases, N, unknown bytes).
        self._span_len = np.ones(self.vocab_size, dtype=np.int64)
        self._span_len[kmer_ids] = k
        self._decode_table = np.array(list(self._tokens), dtype=object)
        if self.unk_token_id is not None:
            self._decode_table[self.unk_token_id] = "N"  # an unknown token stands for one unknown base (NT)

    # -- vocab.txt --------------------------------------------------------------------------------
    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, *, k: int | None = None, mode: str | None = None,
                        **kwargs) -> "KmerTokenizer":
        """A tokenizer whose ids are those of a checkpoint's ``vocab.txt`` (one token per line,
        line ``i`` = id ``i``, as Hugging Face's ``EsmTokenizer`` / ``BertTokenizer`` read it).

        ``k`` (the length of the k-mer tokens) and ``mode`` (``"nt"`` when the file has the
        single-base tokens ``A T C G N``, else ``"overlap"``) are inferred unless given. Every id
        is looked up in the file, so NT v1 (``<unk> <pad> <mask> <cls>``, k-mers from 4, ...) and
        NT v2 (six specials first, k-mers from 6) checkpoints both get their own ids.

        Args:
            path: the ``vocab.txt`` file, or a checkpoint folder holding one.
            k, mode: override the inferred values.
            kwargs: the other constructor arguments (``uppercase``, ``on_invalid``, ...).

        Example:
            >>> tok = KmerTokenizer.from_vocab_file("nucleotide-transformer-v2-50m-multi-species")
            >>> tok.encode("ACGTACGN").tolist()
            [3, 728, 4105, 4106]
        """
        p = Path(path)
        if p.is_dir():
            p = p / "vocab.txt"
        if not p.is_file():
            raise FileNotFoundError(f"vocab.txt not found: {p}")
        tokens = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
        try:
            if k is None:
                k = infer_k(tokens)
            if mode is None:
                mode = "nt" if all(b in tokens for b in BASES + "N") else "overlap"
            return cls(k, mode, vocab_tokens=tokens, **kwargs)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None

    def save_vocab_file(self, path: str | os.PathLike) -> Path:
        """Writes the vocabulary as a ``vocab.txt`` (line ``i`` = token of id ``i``); ``path`` may
        be a folder. :meth:`from_vocab_file` reads it back to the same tokenizer."""
        p = Path(path)
        if p.is_dir():
            p = p / "vocab.txt"
        p.write_text("".join(t + "\n" for t in self._tokens), encoding="utf-8")
        return p

    def _encode_raw(self, seqs: list, num_threads: int, return_soft_mask: bool):
        ids, offsets, soft = KmerTokenizer._encode_with_specials(self, seqs, num_threads, return_soft_mask, (), ())
        if self._remap is not None:
            ids = self._remap[ids]
        return ids, offsets, soft

    def _encode_with_specials(self, seqs: list, num_threads: int, return_soft_mask: bool, prefix, suffix):
        C = load_C()
        kmer_base, single_base, n_id, unk_id = self._enc_ids
        return call_encoder(C.dna_kmer_encode, seqs, self.k, self.mode == "overlap", self._cls_lut, kmer_base,
                            single_base, n_id, unk_id, self._allowed, bool(return_soft_mask), int(num_threads),
                            int(self._chunk), list(prefix), list(suffix))

    def _raw_token_spans(self, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        if self.mode == "overlap":  # window i covers [i, i + k)
            return spans_from_starts(row_positions(offsets), self.k)
        # NT: the tokens tile the sequence; each covers _span_len[id] bases
        return spans_from_lengths(self._span_len[ids], offsets)

    def _decode_ids(self, ids: np.ndarray) -> str:
        if self.mode == "nt":
            return join_tokens(self._decode_table, ids)
        # Overlapping windows: rebuild each run of k-mer/[UNK] tokens base by base; a base that no
        # known window covers is N. Other special tokens (kept when not skipped) are written as is.
        is_window = (self._code_of[ids] >= 0) | (ids == self.unk_token_id)
        parts: list[str] = []
        start = 0
        n = len(ids)
        while start < n:
            if not is_window[start]:
                parts.append(self._tokens[int(ids[start])])
                start += 1
                continue
            stop = start
            while stop < n and is_window[stop]:
                stop += 1
            parts.append(self._rebuild(ids[start:stop]))
            start = stop
        return "".join(parts)

    def _rebuild(self, windows: np.ndarray) -> str:
        k = self.k
        out = np.full(len(windows) + k - 1, ord("N"), dtype=np.uint8)
        codes = self._code_of[windows]
        known = np.flatnonzero(codes >= 0)
        codes = codes[known]
        letters = np.frombuffer(BASES.encode(), dtype=np.uint8)
        for m in range(k):
            out[known + m] = letters[(codes >> (2 * (k - 1 - m))) & 3]
        return out.tobytes().decode("ascii")

    def __repr__(self) -> str:
        return (f"KmerTokenizer(k={self.k}, mode={self.mode!r}, uppercase={self.uppercase}, "
                f"on_invalid={self.on_invalid!r}, vocab_size={self.vocab_size})")
