"""k-mer tokenizers: Nucleotide Transformer (non-overlapping) and DNABERT-1 (overlapping)."""

from __future__ import annotations

import functools
import itertools

import numpy as np

from omicskern._native import load_C
from omicskern.tokenizers._dna import DEFAULT_CHUNK, call_encoder, check_on_invalid, join_tokens
from omicskern.tokenizers.base import SequenceTokenizer

#: Base order of both vocabularies: k-mer code = sum idx(c_j) * 4^(k-1-j).
BASES = "ATCG"
NT_SPECIAL_TOKENS = ("<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>")
DNABERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_CLS_N, _CLS_UNK, _CLS_BAD = 4, 5, 6


@functools.lru_cache(maxsize=None)
def all_kmers(k: int) -> tuple[str, ...]:
    """Every k-mer in vocabulary order (A, T, C, G; last base fastest): AAA, AAT, AAC, AAG, ATA, ..."""
    return tuple("".join(p) for p in itertools.product(BASES, repeat=k))


class KmerTokenizer(SequenceTokenizer):
    """k-mer tokens, k = 3..8, with Nucleotide Transformer's or DNABERT-1's rules and vocabulary.

    ``mode="nt"`` (Nucleotide Transformer, non-overlapping): the sequence is split at every N;
    each N-free piece is cut into k-mers from its start; the 1..k-1 leftover bases at a piece end
    become single-base tokens; each N is its own token; ``<cls>`` is prepended, nothing appended.
    Vocabulary (4107 for k=6): ``<unk>=0 <pad>=1 <mask>=2 <cls>=3 <eos>=4 <bos>=5``, then the 4^k
    k-mers at ``6 + code``, then ``A T C G N``. ``code = sum_j idx(c_j) * 4^(k-1-j)`` with
    ``A=0 T=1 C=2 G=3`` (``AAAAAA=6``, ``ACGTAC=728``); identical to the released NT ``vocab.txt``.

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

    Example:
        >>> tok = KmerTokenizer(6, mode="nt")
        >>> tok.encode("ACGTACGN")       # [3, 728, 4105, 4106]  (<cls>, ACGTAC, G, N)
    """

    def __init__(self, k: int = 6, mode: str = "nt", *, uppercase: bool = True, on_invalid: str = "error",
                 add_special_tokens: bool = True, padding_side: str = "right", truncation_side: str = "right",
                 max_length: int | None = None, num_threads: int = 0):
        super().__init__(add_special_tokens=add_special_tokens, padding_side=padding_side,
                         truncation_side=truncation_side, max_length=max_length, num_threads=num_threads)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 3 <= int(k) <= 8:
            raise ValueError(f"k must be an integer from 3 to 8, got {k!r}")
        if mode not in ("nt", "overlap"):
            raise ValueError(f"mode must be 'nt' or 'overlap', got {mode!r}")
        self.k = int(k)
        self.mode = mode
        self.uppercase = bool(uppercase)
        self.on_invalid = check_on_invalid(on_invalid)
        kmers = all_kmers(self.k)
        if mode == "nt":
            specials = NT_SPECIAL_TOKENS
            self._tokens = specials + kmers + tuple(BASES) + ("N",)
            self.kmer_base = len(specials)
            self.single_base = self.kmer_base + len(kmers)
            self.n_token_id = self.single_base + 4
            self.unk_token_id, self.pad_token_id, self.mask_token_id = 0, 1, 2
            self.cls_token_id, self.eos_token_id, self.bos_token_id = 3, 4, 5
            self.prefix_ids, self.suffix_ids = (self.cls_token_id,), ()
            self.special_ids = frozenset({1, 2, 3, 4, 5})
        else:
            specials = DNABERT_SPECIAL_TOKENS
            self._tokens = specials + kmers
            self.kmer_base = len(specials)
            self.single_base = self.n_token_id = -1  # no single-base tokens in DNABERT's vocabulary
            self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id = range(5)
            self.prefix_ids, self.suffix_ids = (self.cls_token_id,), (self.sep_token_id,)
            self.special_ids = frozenset({0, 2, 3, 4})
        self._vocab = {t: i for i, t in enumerate(self._tokens)}

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
        self._decode_table = np.array(list(self._tokens), dtype=object)
        self._decode_table[self.unk_token_id] = "N"  # an unknown token stands for one unknown base (NT)

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def token_to_id(self, token: str) -> int:
        return self._vocab[token]

    def _encode_raw(self, seqs: list, num_threads: int, return_soft_mask: bool):
        return self._encode_with_specials(seqs, num_threads, return_soft_mask, (), ())

    def _encode_with_specials(self, seqs: list, num_threads: int, return_soft_mask: bool, prefix, suffix):
        C = load_C()
        return call_encoder(C.dna_kmer_encode, seqs, self.k, self.mode == "overlap", self._cls_lut, self.kmer_base,
                            max(self.single_base, 0), max(self.n_token_id, 0), self.unk_token_id, self._allowed,
                            bool(return_soft_mask), int(num_threads), int(self._chunk), list(prefix), list(suffix))

    def _decode_ids(self, ids: np.ndarray) -> str:
        if self.mode == "nt":
            return join_tokens(self._decode_table, ids)
        # Overlapping windows: rebuild each run of k-mer/[UNK] tokens base by base; a base that no
        # known window covers is N. Other special tokens (kept when not skipped) are written as is.
        is_window = (ids >= self.kmer_base) | (ids == self.unk_token_id)
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
        known = np.flatnonzero(windows >= self.kmer_base)
        codes = windows[known].astype(np.int64) - self.kmer_base
        letters = np.frombuffer(BASES.encode(), dtype=np.uint8)
        for m in range(k):
            out[known + m] = letters[(codes >> (2 * (k - 1 - m))) & 3]
        return out.tobytes().decode("ascii")

    def __repr__(self) -> str:
        return (f"KmerTokenizer(k={self.k}, mode={self.mode!r}, uppercase={self.uppercase}, "
                f"on_invalid={self.on_invalid!r}, vocab_size={self.vocab_size})")
