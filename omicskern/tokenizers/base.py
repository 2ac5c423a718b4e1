"""What every sequence tokenizer shares: batch results and the common encode/decode API.

A concrete tokenizer implements only ``_encode_raw`` (sequences -> ragged ids without special
tokens, in C++) and ``_decode_ids``. Special tokens, truncation and padding are applied here, by
the C++ helpers ``_C.ragged_finalize`` / ``_C.ragged_pad`` (parallel, GIL released).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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

    Subclasses set ``prefix_ids``/``suffix_ids`` (special tokens around every sequence when
    ``add_special_tokens``), ``pad_token_id`` and implement ``_encode_raw`` and ``_decode_ids``.
    """

    prefix_ids: tuple[int, ...] = ()
    suffix_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    #: Special-token ids that ``decode(skip_special_tokens=True)`` drops.
    special_ids: frozenset[int] = frozenset()

    def __init__(self, *, add_special_tokens: bool = True, padding_side: str = "right",
                 truncation_side: str = "right", max_length: int | None = None, num_threads: int = 0):
        _check_side(padding_side, "padding_side")
        _check_side(truncation_side, "truncation_side")
        self.add_special_tokens = add_special_tokens
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.max_length = max_length
        self.num_threads = num_threads

    # -- to implement ---------------------------------------------------------------------------
    @abstractmethod
    def _encode_raw(self, seqs: list, num_threads: int, return_soft_mask: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Sequences -> (ids int32 [T], offsets int64 [N+1], soft_mask uint8 [T] or None), no specials."""

    #: Optional: ``(seqs, num_threads, return_soft_mask, prefix, suffix) -> (ids, offsets, soft_mask)``
    #: like ``_encode_raw`` with ``prefix``/``suffix`` ids already around every sequence. Used
    #: instead of ``_encode_raw`` + ``ragged_finalize`` when there is no truncation.
    _encode_with_specials = None

    @abstractmethod
    def _decode_ids(self, ids: np.ndarray) -> str:
        """Token ids (specials already removed if asked) -> sequence text."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def get_vocab(self) -> dict[str, int]: ...

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
                     return_soft_mask: bool = False, num_threads: int | None = None) -> PaddedBatch | Batch:
        """Many sequences -> a padded batch (default) or a ragged one (``padding=False``).

        Args:
            seqs: list of str/bytes.
            add_special_tokens: add this tokenizer's special tokens (default: the constructor's).
            padding: ``"longest"``/True -> [N, longest]; ``"max_length"`` -> [N, max_length];
                False -> :class:`~omicskern.batch.Batch` (flat ids + ``cu_seqlens``, no padding).
            max_length: with ``truncation``, the most tokens a sequence keeps (specials included).
            truncation: cut sequences longer than ``max_length`` (``truncation_side`` end).
            return_soft_mask: also return which tokens came from lower-case bases.
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
        threads = self.num_threads if num_threads is None else num_threads
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

        prefix = list(self.prefix_ids) if add else []
        suffix = list(self.suffix_ids) if add else []
        limit = max_length if (truncation and max_length is not None) else -1
        fused = limit < 0 and self._encode_with_specials is not None
        if fused:  # the encoder writes the special tokens itself: no second pass over the ids
            ids, offsets, soft = self._encode_with_specials(seqs, threads, return_soft_mask, prefix, suffix)
        else:
            ids, offsets, soft = self._encode_raw(seqs, threads, return_soft_mask)
        if not fused and (prefix or suffix or limit >= 0):
            new_ids, new_offsets = C.ragged_finalize(ids, offsets, prefix, suffix, limit, keep_end, threads)
            if soft is not None:
                soft, _ = C.ragged_finalize(soft, offsets, [0] * len(prefix), [0] * len(suffix), limit,
                                            keep_end, threads)
            ids, offsets = new_ids, new_offsets
        ragged = Batch(ids, offsets, soft_mask=None if soft is None else soft.view(bool))
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
