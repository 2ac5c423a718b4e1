"""What every sequence tokenizer shares: batch results and the common encode/decode API.

A concrete tokenizer implements only ``_encode_raw`` (sequences -> ragged ids without special
tokens, in C++) and ``_decode_ids``, and hands its vocabulary to :meth:`SequenceTokenizer._set_vocab`.
Special tokens, truncation and padding are applied here, by the C++ helpers
``_C.ragged_finalize`` / ``_C.ragged_pad`` (parallel, GIL released), and so is the vocabulary API
(``vocab``, ``get_vocab``, ``vocab_size``, ``token_to_id``, ``id_to_token``, the special-token ids),
with Hugging Face ``tokenizers``' behaviour for unknown tokens and ids: ``None``, not an error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from operator import methodcaller
from typing import Iterable, Literal, Sequence, Union

import numpy as np

from omicskern._native import load_C
from omicskern.batch import Batch, PaddedBatch

SeqLike = Union[str, bytes, bytearray]
_COMPLEMENT = bytes.maketrans(b"ACGTUNRYKMSWBDHVacgtunrykmswbdhv", b"TGCAANYRMKSWVHDBtgcaanyrmkswvhdb")


def _check_side(side: str, what: str) -> bool:
    if side not in ("right", "left"):
        raise ValueError(f"{what} must be 'right' or 'left', got {side!r}")
    return side == "left"


def check_num_threads(value, what: str = "num_threads") -> int:
    """``value`` as a thread count: an int (numpy ints too; not a bool, a float or a str), ``<= 0``
    meaning all cores. Raises ``TypeError`` naming ``what`` otherwise (2.5 is not rounded)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int (0 or less = all cores), got {value!r} "
                        f"({type(value).__name__})")
    return int(value)


def as_sequence_list(seqs: Iterable[SeqLike] | SeqLike) -> list:
    """Materialises the batch as a list the C++ core can read without copies."""
    if isinstance(seqs, (str, bytes, bytearray)):
        raise TypeError("encode_batch expects a list of sequences; use encode() for a single sequence")
    if isinstance(seqs, np.ndarray) and seqs.dtype.kind in "US":
        return [s for s in seqs.tolist()]
    if isinstance(seqs, (list, tuple)):
        return seqs if isinstance(seqs, list) else list(seqs)
    try:
        return list(seqs)
    except TypeError:
        raise TypeError(f"expected a list of str or bytes sequences, got {type(seqs).__name__}") from None


def row_positions(offsets: np.ndarray) -> np.ndarray:
    """int64 ``[T]``: the position of every token inside its row (``offsets`` = ``cu_seqlens``)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    pos = np.arange(offsets[-1], dtype=np.int64)
    pos -= np.repeat(offsets[:-1], np.diff(offsets))
    return pos


def spans_from_starts(starts: np.ndarray, width: int) -> np.ndarray:
    """int64 ``[T, 2]``: ``[starts, starts + width)`` (written in place, no stacking copy)."""
    out = np.empty((starts.size, 2), dtype=np.int64)
    out[:, 0] = starts
    np.add(starts, width, out=out[:, 1])
    return out


def spans_from_lengths(lengths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """int64 ``[T, 2]`` spans of tokens laid back to back from position 0 of each row: token ``j``
    of a row covers ``[sum(lengths[:j]), sum(lengths[:j + 1]))`` (one cumsum, no loop)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    ends = np.cumsum(lengths)
    start_of = np.concatenate([[0], ends])[offsets[:-1]]  # total length before each row
    out = np.empty((lengths.size, 2), dtype=np.int64)
    out[:, 1] = ends - np.repeat(start_of, np.diff(offsets))
    out[:, 0] = out[:, 1] - lengths
    return out


def _input_lengths(seqs: list) -> np.ndarray:
    """int64 ``[N]``: each sequence's length in its own units (characters of a str, bytes otherwise)."""
    return np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))


def _non_ascii_str_rows(seqs: list) -> np.ndarray:
    """Indices of the ``str`` sequences holding a non-ASCII character (C-speed scan of the rows)."""
    try:
        ascii_ = np.fromiter(map(methodcaller("isascii"), seqs), dtype=bool, count=len(seqs))
    except AttributeError:  # buffers (memoryview, numpy uint8): positions are bytes anyway
        ascii_ = np.fromiter((not isinstance(q, str) or q.isascii() for q in seqs), dtype=bool, count=len(seqs))
    rows = np.flatnonzero(~ascii_)
    if rows.size == 0:
        return rows
    return rows[np.fromiter((isinstance(seqs[i], str) for i in rows.tolist()), dtype=bool, count=rows.size)]


def bytes_to_char_spans(seqs: list, spans: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Token spans in UTF-8 byte positions (what the C++ encoders see) -> positions in characters
    for ``str`` sequences with non-ASCII characters (ASCII and bytes input: unchanged, no work).

    As Hugging Face ``tokenizers`` converts offsets: a span starts at the character holding its first
    byte and ends after the character holding its last byte (a token made of one byte of a multi-byte
    character, e.g. an unknown or byte-fallback token, covers that whole character)."""
    rows = _non_ascii_str_rows(seqs)
    if rows.size == 0:
        return spans
    spans = spans.copy()
    for i in rows.tolist():  # only the rare non-ASCII str rows
        a, b = int(offsets[i]), int(offsets[i + 1])
        if a == b:
            continue
        raw = np.frombuffer(seqs[i].encode("utf-8"), dtype=np.uint8)
        char_of = np.empty(raw.size + 1, dtype=np.int64)  # char holding each byte; [nbytes] = nchars
        np.cumsum((raw & 0xC0) != 0x80, out=char_of[:-1])
        char_of[:-1] -= 1
        char_of[-1] = len(seqs[i])
        st, en = spans[a:b, 0], spans[a:b, 1]
        new_st = char_of[st]
        new_en = np.where(en > st, char_of[np.maximum(en - 1, 0)] + 1, new_st)
        spans[a:b, 0], spans[a:b, 1] = new_st, new_en
    return spans


def finalize_spans(spans: np.ndarray, raw_offsets: np.ndarray, offsets: np.ndarray, n_prefix: int, n_suffix: int,
                   keep_end: bool, seq_lengths: np.ndarray) -> np.ndarray:
    """The spans of ``ragged_finalize``'s output: content tokens keep their span (in the original
    sequence, also after truncation), prefix tokens get ``[0, 0)``, suffix tokens ``[len, len)``."""
    raw_len = np.diff(raw_offsets)
    out_len = np.diff(offsets)
    kept = out_len - n_prefix - n_suffix
    if n_prefix == 0 and n_suffix == 0 and np.array_equal(kept, raw_len):
        return spans
    total = int(offsets[-1])
    if spans.shape[0] == 0:  # only special tokens
        out = np.zeros((total, 2), dtype=np.int64)
    else:
        # one gather (np.take on axis 0: a 2-D fancy index is ~20x slower): output token q of row i
        # is raw token q - offsets[i] - n_prefix + first[i]; the specials are written afterwards
        first = raw_offsets[:-1] + (raw_len - kept if keep_end else 0)
        src = np.arange(total, dtype=np.int64)
        src += np.repeat(first - offsets[:-1] - n_prefix, out_len)
        np.clip(src, 0, spans.shape[0] - 1, out=src)
        out = np.take(spans, src, axis=0)
    if n_prefix:
        out[(offsets[:-1, None] + np.arange(n_prefix)).ravel()] = 0
    if n_suffix:
        at = ((offsets[1:] - n_suffix)[:, None] + np.arange(n_suffix)).ravel()
        out[at] = np.repeat(seq_lengths, n_suffix)[:, None]
    return out


def reverse_complement(seq: SeqLike) -> SeqLike:
    """Reverse complement of a DNA/RNA sequence (IUPAC codes and case kept; U -> A, A -> T).

    Returns the same type as the input (str or bytes).
    """
    if isinstance(seq, str):
        return seq.encode("latin-1").translate(_COMPLEMENT)[::-1].decode("latin-1")
    if isinstance(seq, (bytes, bytearray)):
        return bytes(seq).translate(_COMPLEMENT)[::-1]
    raise TypeError(f"expected str or bytes, got {type(seq).__name__}")


class SequenceTokenizer(ABC):
    """Common API of the DNA tokenizers (char, k-mer, BPE).

    Constructor arguments shared by every tokenizer (keyword-only, the defaults of
    :meth:`encode_batch`): ``add_special_tokens``, ``padding_side``, ``truncation_side``,
    ``max_length``, ``num_threads`` and ``pad_token_id`` (None: the vocabulary's pad token).

    Vocabulary API (same behaviour everywhere, as Hugging Face ``tokenizers``):

    - ``vocab`` / ``get_vocab()``: a new dict token -> id; ``vocab_size``: ids are ``0..vocab_size-1``;
    - ``token_to_id(token)``: the id, or ``None`` for a token not in the vocabulary;
    - ``id_to_token(id)``: the token, or ``None`` for an id outside the vocabulary;
    - ``pad_token_id``, ``unk_token_id``, ``cls_token_id``, ``sep_token_id``, ``mask_token_id``,
      ``bos_token_id``, ``eos_token_id``: the id, or ``None`` when the vocabulary has no such token.

    Subclasses set ``prefix_ids``/``suffix_ids`` (special tokens around every sequence when
    ``add_special_tokens``), the special-token ids, call :meth:`_set_vocab` and implement
    ``_encode_raw`` and ``_decode_ids``.

    Example:
        >>> tok = CharTokenizer()
        >>> tok.token_to_id("A"), tok.token_to_id("Z"), tok.id_to_token(7), tok.id_to_token(99)
        (7, None, 'A', None)
    """

    prefix_ids: tuple[int, ...] = ()
    suffix_ids: tuple[int, ...] = ()
    pad_token_id: int | None = 0
    unk_token_id: int | None = None
    cls_token_id: int | None = None
    sep_token_id: int | None = None
    mask_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    #: Special-token ids that ``decode(skip_special_tokens=True)`` drops.
    special_ids: frozenset[int] = frozenset()

    def __init__(self, *, add_special_tokens: bool = True, padding_side: str = "right",
                 truncation_side: str = "right", max_length: int | None = None, num_threads: int = 0,
                 pad_token_id: int | None = None):
        _check_side(padding_side, "padding_side")
        _check_side(truncation_side, "truncation_side")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer))
                                       or max_length < 0):
            raise ValueError(f"max_length must be None or an int >= 0, got {max_length!r}")
        if pad_token_id is not None and (isinstance(pad_token_id, bool)
                                         or not isinstance(pad_token_id, (int, np.integer))):
            raise TypeError(f"pad_token_id must be an int or None, got {pad_token_id!r}")
        self.add_special_tokens = add_special_tokens
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.max_length = max_length
        self.num_threads = num_threads  # checked by the property below
        self._pad_token_id_arg = None if pad_token_id is None else int(pad_token_id)
        self._vocab: dict[str, int] = {}
        self._id_tokens: list[str | None] = []

    def _set_vocab(self, vocab: dict[str, int], size: int | None = None) -> None:
        """Installs the vocabulary (token -> id; ids below ``size``, default max id + 1) and applies
        the ``pad_token_id`` argument. Call at the end of the subclass constructor."""
        n = (max(vocab.values(), default=-1) + 1) if size is None else int(size)
        table: list[str | None] = [None] * n
        for tok, i in vocab.items():
            if not 0 <= i < n:
                raise ValueError(f"token {tok!r} has id {i}, outside the vocabulary (size {n})")
            table[i] = tok
        self._vocab = dict(vocab)
        self._id_tokens = table
        if self._pad_token_id_arg is not None:
            if not 0 <= self._pad_token_id_arg < n:
                raise ValueError(f"pad_token_id {self._pad_token_id_arg} is outside the vocabulary (size {n})")
            self.pad_token_id = self._pad_token_id_arg

    @property
    def num_threads(self) -> int:
        """Threads of the C++ core (``<= 0``: all cores); setting it checks it is an int."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value) -> None:
        self._num_threads = check_num_threads(value)

    # -- to implement ---------------------------------------------------------------------------
    @abstractmethod
    def _encode_raw(self, seqs: list, num_threads: int, return_soft_mask: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Sequences -> (ids int32 [T], offsets int64 [N+1], soft_mask uint8 [T] or None), no specials."""

    #: Optional: ``(seqs, num_threads, return_soft_mask, prefix, suffix) -> (ids, offsets, soft_mask)``
    #: like ``_encode_raw`` with ``prefix``/``suffix`` ids already around every sequence. Used
    #: instead of ``_encode_raw`` + ``ragged_finalize`` when there is no truncation.
    _encode_with_specials = None

    def _encode_raw_spans(self, seqs: list, num_threads: int, return_soft_mask: bool
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Like ``_encode_raw`` plus int64 ``[T, 2]`` token spans in UTF-8 byte positions of each
        sequence (the base class converts them to characters). Default: ``_encode_raw`` then
        ``_raw_token_spans`` on its ids."""
        ids, offsets, soft = self._encode_raw(seqs, num_threads, return_soft_mask)
        return ids, offsets, soft, self._raw_token_spans(ids, offsets)

    def _raw_token_spans(self, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """int64 ``[T, 2]`` byte spans of ``_encode_raw``'s tokens (no specials), from the ids alone."""
        raise NotImplementedError(f"{type(self).__name__} does not produce token spans")

    @abstractmethod
    def _decode_ids(self, ids: np.ndarray) -> str:
        """Token ids (specials already removed if asked) -> sequence text."""

    # -- vocabulary -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids: every id is in ``0..vocab_size-1``."""
        return len(self._id_tokens)

    @property
    def vocab(self) -> dict[str, int]:
        """token -> id (a new dict; same as :meth:`get_vocab`)."""
        return dict(self._vocab)

    def get_vocab(self) -> dict[str, int]:
        """token -> id (a new dict)."""
        return dict(self._vocab)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or ``None`` when it is not in the vocabulary (as HF ``tokenizers``)."""
        if not isinstance(token, str):
            raise TypeError(f"token_to_id expects a str token, got {type(token).__name__}")
        return self._vocab.get(token)

    def id_to_token(self, id: int) -> str | None:  # noqa: A002  (HF's parameter name)
        """The token of ``id``, or ``None`` when the id is outside the vocabulary (as HF ``tokenizers``)."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            raise TypeError(f"id_to_token expects an int id, got {type(id).__name__}")
        i = int(id)
        return self._id_tokens[i] if 0 <= i < len(self._id_tokens) else None

    # -- common API -----------------------------------------------------------------------------
    def encode(self, seq: SeqLike, *, add_special_tokens: bool | None = None, max_length: int | None = None,
               truncation: bool = False) -> np.ndarray:
        """One sequence -> int32 ids [L].

        Example:
            >>> tok.encode("ACGTN")
        """
        if not isinstance(seq, (str, bytes, bytearray)):
            raise TypeError(f"expected a str or bytes sequence, got {type(seq).__name__}")
        return self.encode_batch([seq], add_special_tokens=add_special_tokens, max_length=max_length,
                                 truncation=truncation, padding=False).input_ids

    def encode_batch(self, seqs: Iterable[SeqLike], *, add_special_tokens: bool | None = None,
                     padding: bool | Literal["longest", "max_length"] = "longest", max_length: int | None = None,
                     truncation: bool = False, padding_side: str | None = None, truncation_side: str | None = None,
                     return_soft_mask: bool = False, return_token_spans: bool = False,
                     num_threads: int | None = None) -> PaddedBatch | Batch:
        """Many sequences -> a padded batch (default) or a ragged one (``padding=False``).

        Args:
            seqs: list of str/bytes.
            add_special_tokens: add this tokenizer's special tokens (default: the constructor's).
            padding: ``"longest"``/True -> [N, longest]; ``"max_length"`` -> [N, max_length];
                False -> :class:`~omicskern.batch.Batch` (flat ids + ``cu_seqlens``, no padding).
            max_length: with ``truncation``, the most tokens a sequence keeps (specials included).
            truncation: cut sequences longer than ``max_length`` (``truncation_side`` end).
            return_soft_mask: also return which tokens came from lower-case bases.
            return_token_spans: the ragged batch also carries ``token_spans``, int64 [T, 2]: the
                ``[start, end)`` of each token in its input sequence, in characters of a ``str``
                (bytes of a bytes-like input). Needs ``padding=False``. Char: token ``i`` covers
                ``[i, i + 1)``; k-mer NT: a k-mer its k bases, a single-base/N/unknown token one;
                k-mer overlap (DNABERT-1): window ``i`` covers ``[i, i + k)`` (spans overlap); BPE:
                Hugging Face ``tokenizers``' ``Encoding.offsets`` for the same tokenizer.json. Special
                tokens added around the sequence are empty: the prefix ``[0, 0)``, the suffix
                ``[len, len)`` (HF gives ``(0, 0)`` to both). After truncation the kept tokens keep
                their spans in the original sequence (left truncation: the end's real positions).
                Costs nothing when False.
            num_threads: threads of the C++ core (<= 0: all cores; default: the constructor's).

        Returns:
            :class:`PaddedBatch` with ``input_ids`` int32 [N, L] and ``attention_mask`` bool [N, L],
            or :class:`~omicskern.batch.Batch` with ``input_ids`` int32 [T] and ``cu_seqlens``
            int64 [N + 1].

        Example:
            >>> batch = tok.encode_batch(["ACGTAC", "GGN"], padding=False)
            >>> batch.to_torch().input_ids, batch.to_torch().cu_seqlens
        """
        C = load_C()
        seqs = as_sequence_list(seqs)
        threads = self.num_threads if num_threads is None else check_num_threads(num_threads)
        add = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        max_length = self.max_length if max_length is None else max_length
        if max_length is not None and max_length < 0:
            raise ValueError(f"max_length must be >= 0, got {max_length}")
        if padding is True:
            padding = "longest"
        if padding not in ("longest", "max_length", False):
            raise ValueError(f"padding must be 'longest', 'max_length', True or False, got {padding!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        keep_end = _check_side(truncation_side or self.truncation_side, "truncation_side")
        pad_side = padding_side or self.padding_side
        _check_side(pad_side, "padding_side")
        if return_token_spans and padding is not False:
            raise ValueError("token_spans need padding=False (a ragged Batch); a PaddedBatch carries no spans")

        prefix = list(self.prefix_ids) if add else []
        suffix = list(self.suffix_ids) if add else []
        limit = max_length if (truncation and max_length is not None) else -1
        fused = limit < 0 and self._encode_with_specials is not None and not return_token_spans
        spans = None
        if return_token_spans:
            ids, offsets, soft, spans = self._encode_raw_spans(seqs, threads, return_soft_mask)
            spans = bytes_to_char_spans(seqs, spans, offsets)
        elif fused:  # the encoder writes the special tokens itself: no second pass over the ids
            ids, offsets, soft = self._encode_with_specials(seqs, threads, return_soft_mask, prefix, suffix)
        else:
            ids, offsets, soft = self._encode_raw(seqs, threads, return_soft_mask)
        if not fused and (prefix or suffix or limit >= 0):
            new_ids, new_offsets = C.ragged_finalize(ids, offsets, prefix, suffix, limit, keep_end, threads)
            if soft is not None:
                soft, _ = C.ragged_finalize(soft, offsets, [0] * len(prefix), [0] * len(suffix), limit,
                                            keep_end, threads)
            if spans is not None:
                spans = finalize_spans(spans, offsets, new_offsets, len(prefix), len(suffix), keep_end,
                                       _input_lengths(seqs))
            ids, offsets = new_ids, new_offsets
        ragged = Batch(ids, offsets, soft_mask=None if soft is None else soft.view(bool), token_spans=spans)
        if padding is False:
            return ragged
        length = max_length if padding == "max_length" else "longest"
        return ragged.to_padded(self.pad_token_id, pad_side, length, num_threads=threads)

    __call__ = encode_batch

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special_tokens: bool = True) -> str:
        """Token ids -> sequence text (specials dropped unless ``skip_special_tokens=False``)."""
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"decode expects a 1-D list of ids, got shape {arr.shape}; use decode_batch")
        if arr.size and (arr.dtype.kind not in "iu"):
            raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        bad = (arr < 0) | (arr >= self.vocab_size)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ValueError(f"token id {int(arr[pos])} at position {pos} is outside the vocabulary "
                             f"(size {self.vocab_size})")
        if skip_special_tokens and self.special_ids:
            arr = arr[~np.isin(arr, np.fromiter(self.special_ids, dtype=np.int64))]
        return self._decode_ids(arr)

    def decode_batch(self, batch: PaddedBatch | Batch | Sequence[Sequence[int]], *,
                     skip_special_tokens: bool = True) -> list[str]:
        """Decodes every sequence of a batch (padding dropped via the attention mask)."""
        if isinstance(batch, PaddedBatch):
            rows = [r[m] for r, m in zip(batch.input_ids, batch.attention_mask)]
        else:
            rows = list(batch)
        return [self.decode(r, skip_special_tokens=skip_special_tokens) for r in rows]

    @staticmethod
    def reverse_complement(seq: SeqLike) -> SeqLike:
        return reverse_complement(seq)
