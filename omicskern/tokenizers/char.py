"""Single-nucleotide (character) tokenizer with HyenaDNA's / Caduceus's vocabulary."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from omicskern._native import load_C
from omicskern.tokenizers._dna import (DEFAULT_CHUNK, call_encoder, check_on_invalid, join_tokens,
                                       letters_any_case)
from omicskern.tokenizers.base import SequenceTokenizer, row_positions, spans_from_starts

#: HyenaDNA's CharacterTokenizer special tokens, ids 0..6; characters start at 7.
SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
ALPHABETS = {
    "dna": "ACGTN",
    "rna": "ACGUN",
    # ACGTN keep HyenaDNA's ids 7..11; the IUPAC ambiguity codes follow.
    "iupac": "ACGTNRYSWKMBDHV",
}


class CharTokenizer(SequenceTokenizer):
    """One token per nucleotide.

    Default vocabulary = HyenaDNA's / Caduceus's ``CharacterTokenizer``: ``[CLS]=0 [SEP]=1 [BOS]=2
    [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6 A=7 C=8 G=9 T=10 N=11``; with special tokens every
    sequence becomes ``[CLS] bases... [SEP]`` and batches are left-padded with ``[PAD]``, as in
    HyenaDNA.

    Args:
        characters: ``"dna"`` (ACGTN), ``"rna"`` (ACGUN), ``"iupac"`` (ACGTN + RYSWKMBDHV) or any
            string of distinct ASCII characters; character ``i`` gets id ``7 + i``.
        uppercase: read lower-case (soft-masked) letters as their upper case (default). With
            False, lower case is outside the alphabet (unless listed in ``characters``).
        on_invalid: a byte outside the alphabet: ``"error"`` raises
            :class:`~omicskern.errors.InvalidSequenceError` (sequence index and position),
            ``"unk"`` gives ``[UNK]``, ``"n"`` gives the id of ``N``.
        add_special_tokens, padding_side, truncation_side, max_length, num_threads: defaults of
            :meth:`encode_batch` (see :class:`~omicskern.tokenizers.base.SequenceTokenizer`).
        pad_token_id: id used for padding (default: ``[PAD]`` = 4).

    Vocabulary API (``vocab``, ``token_to_id``, ``id_to_token``, ...): see
    :class:`~omicskern.tokenizers.base.SequenceTokenizer`. As in HyenaDNA's ``CharacterTokenizer``,
    ``bos_token_id`` is ``[BOS]`` (2, defined but never added) and ``eos_token_id`` is ``[SEP]`` (1).

    Example:
        >>> tok = CharTokenizer()
        >>> tok.encode("ACGTn")          # [0, 7, 8, 9, 10, 11, 1]
        >>> tok.token_to_id("G"), tok.token_to_id("X")   # (9, None)
    """

    def __init__(self, characters: str | Sequence[str] = "dna", *, uppercase: bool = True, on_invalid: str = "error",
                 add_special_tokens: bool = True, padding_side: str = "left", truncation_side: str = "right",
                 max_length: int | None = None, num_threads: int = 0, pad_token_id: int | None = None):
        super().__init__(add_special_tokens=add_special_tokens, padding_side=padding_side,
                         truncation_side=truncation_side, max_length=max_length, num_threads=num_threads,
                         pad_token_id=pad_token_id)
        if isinstance(characters, str) and characters.lower() in ALPHABETS:
            characters = ALPHABETS[characters.lower()]
        chars = "".join(characters)
        if len(chars) != len(list(characters)) or not chars:
            raise ValueError("characters must be a non-empty sequence of single characters")
        if not chars.isascii() or not all(c.isprintable() and not c.isspace() for c in chars):
            raise ValueError(f"characters must be printable ASCII, got {chars!r}")
        if len(set(chars)) != len(chars):
            raise ValueError(f"characters must be distinct, got {chars!r}")
        self.characters = chars
        self.uppercase = bool(uppercase)
        self.on_invalid = check_on_invalid(on_invalid)
        self._tokens = SPECIAL_TOKENS + tuple(chars)
        self._vocab = {t: i for i, t in enumerate(self._tokens)}
        self.unk_token_id = self._vocab["[UNK]"]
        self.cls_token_id, self.sep_token_id = self._vocab["[CLS]"], self._vocab["[SEP]"]
        self.mask_token_id = self._vocab["[MASK]"]
        self.bos_token_id, self.eos_token_id = self._vocab["[BOS]"], self._vocab["[SEP]"]
        self.pad_token_id = self._vocab["[PAD]"]
        self._set_vocab(self._vocab, size=len(self._tokens))
        self.prefix_ids = (self.cls_token_id,)
        self.suffix_ids = (self.sep_token_id,)
        self.special_ids = frozenset(i for i, t in enumerate(SPECIAL_TOKENS) if t != "[UNK]")

        lut = np.full(256, -1, dtype=np.int32)
        for byte, c in letters_any_case(chars, self.uppercase):
            lut[byte] = self._vocab[c]
        if self.on_invalid == "unk":
            lut[lut < 0] = self.unk_token_id
        elif self.on_invalid == "n":
            if "N" not in self._vocab:
                raise ValueError("on_invalid='n' needs 'N' in the alphabet")
            lut[lut < 0] = self._vocab["N"]
        self._lut = lut
        self._allowed = chars + (" (either case)" if self.uppercase else "")
        self._chunk = DEFAULT_CHUNK
        # Decoding: [UNK] stands for one unknown base, written N.
        self._decode_table = np.array(list(self._tokens), dtype=object)
        self._decode_table[self.unk_token_id] = "N"

    def _encode_raw(self, seqs: list, num_threads: int, return_soft_mask: bool):
        return self._encode_with_specials(seqs, num_threads, return_soft_mask, (), ())

    def _encode_with_specials(self, seqs: list, num_threads: int, return_soft_mask: bool, prefix, suffix):
        C = load_C()
        return call_encoder(C.dna_char_encode, seqs, self._lut, self._allowed, bool(return_soft_mask),
                            int(num_threads), int(self._chunk), list(prefix), list(suffix))

    def _raw_token_spans(self, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        # one token per byte: token i covers [i, i + 1)
        return spans_from_starts(row_positions(offsets), 1)

    def _decode_ids(self, ids: np.ndarray) -> str:
        return join_tokens(self._decode_table, ids)

    def __repr__(self) -> str:
        return (f"CharTokenizer(characters={self.characters!r}, uppercase={self.uppercase}, "
                f"on_invalid={self.on_invalid!r}, vocab_size={self.vocab_size})")
