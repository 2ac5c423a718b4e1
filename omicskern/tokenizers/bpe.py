"""BPETokenizer: Hugging Face ``tokenizer.json`` BPE (DNABERT-2 and alike) with HF-exact ids, in C++.

Loading a ``tokenizer.json`` gives exactly the ids ``tokenizers.Tokenizer`` gives for the same file,
for every input (lower case, N, whitespace, punctuation, literal special tokens, non-ASCII), in
linear time and in parallel over sequences: words made only of vocabulary letters (DNA) go through an
exact backtracking encoder (greedy longest match over a trie of the tokens, checked by an O(depth)
pair-compatibility test), everything else through HF's merge order on a bucket queue over ranks.
``BPETokenizer.train`` learns a vocabulary from strings or FASTA files, as DNABERT-2 did with HF's
``BpeTrainer`` (same merges on the same corpus), and writes a ``tokenizer.json`` that HF loads.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from omicskern._native import load_C
from omicskern.errors import UnknownTokensWarning
from omicskern.io.fasta import iter_records
from omicskern.tokenizers._dna import user_stacklevel
from omicskern.tokenizers.base import SequenceTokenizer
from omicskern.tokenizers.hf_json import BpeSpec, build_tokenizer_json, parse_tokenizer_json

__all__ = ["BPETokenizer"]

_FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".fas", ".fa.gz", ".fasta.gz", ".fna.gz", ".fas.gz")
# auto: backtracking for words of vocabulary letters when the table allows it, else "windows".
# backtrack: the same (explicit). windows: bucket queue (heap for short words / non-monotone
# tables) with long words in cache-sized windows. heap / bucket: one engine on whole words.
# small_windows: "windows" with 64-symbol windows (tests of the seams).
_ROLE_TOKENS = {"cls": ("[CLS]", "<cls>", "<s>"), "sep": ("[SEP]", "<sep>", "</s>"), "mask": ("[MASK]", "<mask>"),
                "bos": ("[BOS]", "<bos>"), "eos": ("[EOS]", "<eos>")}
#: A call whose tokens are more than this fraction unknown tokens warns (UnknownTokensWarning).
UNK_WARN_FRACTION = 0.5
_ALGOS = {"auto": 0, "heap": 1, "bucket": 2, "small_windows": 3, "backtrack": 4, "windows": 5}


def _fasta_corpus(path: str | os.PathLike, uppercase: bool, chunk_length: int | None) -> Iterator[str]:
    """Training strings from a plain, gzip or bgzip FASTA file: records (upper-cased when asked),
    cut into ``chunk_length`` pieces when given; empty records are skipped."""
    for _, seq in iter_records(path):
        if uppercase:
            seq = seq.upper()
        if not seq:
            continue
        if chunk_length:
            for i in range(0, len(seq), chunk_length):
                yield seq[i:i + chunk_length]
        else:
            yield seq


def _has_lower_ascii(seq) -> bool:
    """True when a sequence (str or bytes-like) holds an ASCII letter a-z."""
    if isinstance(seq, str):
        return seq != seq.upper()
    try:
        b = bytes(memoryview(seq))
    except TypeError:
        return False
    return b != b.upper()


def _is_fasta_path(x: object) -> bool:
    if isinstance(x, os.PathLike):
        return True
    return isinstance(x, str) and x.lower().endswith(_FASTA_SUFFIXES) and os.path.isfile(x)


class BPETokenizer(SequenceTokenizer):
    """Byte-pair-encoding tokenizer over a Hugging Face ``tokenizer.json`` (e.g. DNABERT-2's).

    ``encode(seq)`` -> int32 [L]; ``encode_batch(seqs)`` -> padded int32 [N, L] + mask, or ragged
    (``padding=False``). Ids equal HF ``tokenizers``' for the same file, special tokens of the
    ``TemplateProcessing`` post-processor included (``add_special_tokens``).

    Args:
        spec: a parsed tokenizer.json (use :meth:`from_file`, :meth:`from_json_str`, :meth:`train`).
        uppercase: opt-in: upper-case ASCII a-z before tokenizing (soft-masked bases -> their
            upper-case tokens instead of HF's [UNK] for a vocabulary without lower-case letters).
        pad_token: token used for padding (default: [PAD] when the vocabulary has it, else the
            file's ``padding.pad_id``, else id 0); or give its id as ``pad_token_id``.
        add_special_tokens, padding_side, truncation_side, max_length, num_threads, pad_token_id:
            see :class:`~omicskern.tokenizers.base.SequenceTokenizer`.

    Vocabulary API: see :class:`~omicskern.tokenizers.base.SequenceTokenizer` (``token_to_id`` /
    ``id_to_token`` give None for unknown tokens / ids, as HF). ``unk_token_id`` is the model's
    ``unk_token``; ``cls_token_id`` / ``sep_token_id`` / ``mask_token_id`` / ``bos_token_id`` /
    ``eos_token_id`` are ``[CLS]``/``<cls>``/``<s>``, ``[SEP]``/``<sep>``/``</s>``, ``[MASK]``/``<mask>``,
    ``[BOS]``/``<bos>``, ``[EOS]``/``<eos>`` when the vocabulary has one, else None.

    A result that is mostly unknown tokens (more than half of the tokens of an ``encode`` /
    ``encode_batch`` call, special tokens not counted) warns with :class:`UnknownTokensWarning`:
    usually lower-case (soft-masked) input and a vocabulary without lower-case tokens, which HF
    also turns into [UNK]; the ids stay exactly HF's.

    Example:
        >>> tok = BPETokenizer.from_file("tokenizer.json")
        >>> tok.encode("ACGTAGCATCGGATCTATCTATCGAC")   # [CLS] ... [SEP]
    """

    def __init__(self, spec: BpeSpec, *, uppercase: bool = False, pad_token: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(spec, BpeSpec):
            raise TypeError("BPETokenizer(spec) takes a parsed tokenizer.json; use BPETokenizer.from_file(path), "
                            "from_json_str(text) or train(...)")
        if pad_token is not None and kwargs.get("pad_token_id") is not None:
            raise ValueError("pass pad_token or pad_token_id, not both")
        self._spec = spec
        self._model = load_C().BpeModel(**spec.model_args)
        self.uppercase = bool(uppercase)
        self.prefix_ids = spec.prefix_ids
        self.suffix_ids = spec.suffix_ids
        self.special_ids = spec.special_ids
        vocab = spec.vocab
        if pad_token is not None:
            if pad_token not in vocab:
                raise ValueError(f"pad_token {pad_token!r} is not in the vocabulary")
            self.pad_token_id = vocab[pad_token]
        else:
            pad = (spec.data.get("padding") or {}).get("pad_id")
            self.pad_token_id = vocab.get("[PAD]", pad if isinstance(pad, int) else 0)
        unk = spec.data["model"].get("unk_token")
        self.unk_token_id = vocab.get(unk) if isinstance(unk, str) else None
        self._unk_token = unk if self.unk_token_id is not None else None
        for role, names in _ROLE_TOKENS.items():
            setattr(self, f"{role}_token_id", next((vocab[t] for t in names if t in vocab), None))
        self._set_vocab(vocab, size=len(spec.id_to_token))
        self.algorithm = "auto"  # or a key of _ALGOS: force one engine (tests, benchmarks)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_json_str(cls, text: str | bytes, **kwargs) -> "BPETokenizer":
        """Tokenizer from the text of a tokenizer.json."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"from_json_str expects str or bytes, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid tokenizer.json: {e}") from None
        return cls(parse_tokenizer_json(data), **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> "BPETokenizer":
        """Tokenizer from a tokenizer.json file (or a directory holding one).

        Example:
            >>> tok = BPETokenizer.from_file("DNABERT-2-117M/tokenizer.json", uppercase=True)
        """
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer.json not found: {p}")
        try:
            return cls.from_json_str(p.read_text(encoding="utf-8"), **kwargs)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None

    def to_json_str(self, indent: int | None = 2) -> str:
        return json.dumps(self._spec.data, indent=indent, ensure_ascii=False)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the tokenizer.json (``tokenizers.Tokenizer.from_file`` loads it)."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        p.write_text(self.to_json_str(), encoding="utf-8")

    @classmethod
    def train(cls, sequences_or_fasta_paths: Iterable[str | bytes | os.PathLike] | str | os.PathLike, *,
              vocab_size: int = 4096,
              special_tokens: Sequence[str] = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"),
              unk_token: str | None = "[UNK]", cls_token: str | None = "[CLS]", sep_token: str | None = "[SEP]",
              pre_tokenizer: str = "whitespace", min_frequency: int = 0, initial_alphabet: str = "",
              limit_alphabet: int | None = None, uppercase_corpus: bool = True, chunk_length: int | None = None,
              **kwargs) -> "BPETokenizer":
        """Learns a BPE vocabulary (C++, as HF's ``BpeTrainer``; DNABERT-2 used 4096 tokens).

        Args:
            sequences_or_fasta_paths: sequences (str/bytes), FASTA paths (``Path`` objects, or str
                ending in .fa/.fasta/.fna[.gz] naming an existing file; plain, gzip or bgzip), or one path.
            vocab_size: final vocabulary size, special tokens and alphabet included.
            special_tokens: ids 0.. in this order; ``unk_token``/``cls_token``/``sep_token`` must be
                among them (or None): the file gets ``unk_token`` and a ``cls $A sep`` template.
            pre_tokenizer: "whitespace" (DNABERT-2), "whitespace_split" or "none".
            min_frequency: stop when the best pair occurs fewer times.
            uppercase_corpus: upper-case the corpus first (soft-masked genomes).
            chunk_length: cut FASTA records into pieces of this many bases (None: whole records).

        Merge order: highest pair count first (overlapping occurrences counted, as HF does); ties
        go to the smallest (left id, right id). Ids: specials, then characters by code point, then
        merges. The same corpus gives the same merges as HF ``BpeTrainer``.

        Example:
            >>> tok = BPETokenizer.train(["ACGTTGCA" * 100], vocab_size=64)
            >>> tok.save("tokenizer.json")
        """
        if isinstance(sequences_or_fasta_paths, (str, os.PathLike)) and _is_fasta_path(sequences_or_fasta_paths):
            sequences_or_fasta_paths = [sequences_or_fasta_paths]
        if isinstance(sequences_or_fasta_paths, (str, bytes, bytearray)):
            raise TypeError("train expects a list of sequences or FASTA paths, not a single sequence")
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
        specials = list(special_tokens)
        if len(set(specials)) != len(specials):
            raise ValueError(f"special_tokens has duplicates: {specials}")
        for name, tok in (("unk_token", unk_token), ("cls_token", cls_token), ("sep_token", sep_token)):
            if tok is not None and tok not in specials:
                raise ValueError(f"{name} {tok!r} is not among special_tokens {specials}")
        corpus: list[str | bytes] = []
        for i, item in enumerate(sequences_or_fasta_paths):
            if _is_fasta_path(item):
                corpus.extend(_fasta_corpus(item, uppercase_corpus, chunk_length))
            elif isinstance(item, (str, bytes, bytearray)):
                if uppercase_corpus:
                    item = item.upper()
                corpus.append(bytes(item) if isinstance(item, bytearray) else item)
            else:
                raise TypeError(f"training item {i}: expected a sequence (str/bytes) or a FASTA path, got "
                                f"{type(item).__name__}")
        vocab, merges = load_C().bpe_train(corpus, vocab_size, specials, int(min_frequency), pre_tokenizer,
                                           initial_alphabet, -1 if limit_alphabet is None else int(limit_alphabet))
        data = build_tokenizer_json(vocab, merges, specials, unk_token=unk_token, pre_tokenizer=pre_tokenizer,
                                    template=(cls_token, sep_token))
        return cls(parse_tokenizer_json(data), **kwargs)

    # -- SequenceTokenizer ----------------------------------------------------------------------
    def _encode_raw(self, seqs: list, num_threads: int, return_soft_mask: bool):
        ids, offsets, soft = self._model.encode(seqs, num_threads, return_soft_mask, self.uppercase,
                                                _ALGOS[self.algorithm])
        self._check_unknown(seqs, ids)
        return ids, offsets, soft

    def _encode_raw_spans(self, seqs: list, num_threads: int, return_soft_mask: bool):
        # The encoder reports each token's byte span as HF's Encoding.offsets does (cumulative byte
        # lengths of a word's initial symbols: one [UNK] per unknown character or per fused run,
        # byte-fallback tokens one byte each; added tokens their match; words their place).
        ids, offsets, soft, spans = self._model.encode(seqs, num_threads, return_soft_mask, self.uppercase,
                                                       _ALGOS[self.algorithm], True)
        self._check_unknown(seqs, ids)
        return ids, offsets, soft, spans

    def _check_unknown(self, seqs: list, ids: np.ndarray) -> None:
        if self.unk_token_id is not None and ids.size:
            # one vectorised pass over the int32 ids: ~0.15 ms per million tokens, ~0.1% of the encoding
            n_unk = int(np.count_nonzero(ids == self.unk_token_id))
            if n_unk > UNK_WARN_FRACTION * ids.size:
                self._warn_unknown(seqs, n_unk, int(ids.size))

    def _warn_unknown(self, seqs: list, n_unk: int, n_tokens: int) -> None:
        pct = math.floor(n_unk / n_tokens * 1e6) / 1e4  # floor: 99.99995% is not "100%"
        head = f"{pct:.4f}".rstrip("0").rstrip(".")
        msg = f"{head}% of {n_tokens:,} tokens are {self._unk_token}: "
        has_lower_tokens = any(c.islower() for t in self._spec.vocab for c in t)
        if not self.uppercase and not has_lower_tokens and any(_has_lower_ascii(s) for s in seqs):
            msg += ("this tokenizer.json has no lower-case tokens; pass uppercase=True (or upper-case the sequences) "
                    "for soft-masked genomes")
        else:
            msg += ("most of the input has no token in this vocabulary (runs of N, other letters or non-DNA text?); "
                    "the ids follow the tokenizer.json exactly")
        warnings.warn(msg, UnknownTokensWarning, stacklevel=user_stacklevel())

    def _decode_ids(self, ids: np.ndarray) -> str:
        """Concatenates the tokens (continuing-subword prefix / end-of-word suffix removed)."""
        table = self._spec.id_to_token
        pre, suf = self._spec.continuing_subword_prefix, self._spec.end_of_word_suffix
        out = []
        for i in ids.tolist():
            t = table[i]
            if pre and t.startswith(pre):
                t = t[len(pre):]
            if suf and t.endswith(suf):
                t = t[:-len(suf)]
            out.append(t)
        return "".join(out)

    @property
    def backtracking(self) -> bool:
        """True when words made only of vocabulary letters use the backtracking encoder (see docs/bpe.md)."""
        return bool(self._model.backtrack)

    @property
    def monotone_merges(self) -> bool:
        """True when the merge table allows the linear bucket-queue engine (any trained BPE)."""
        return bool(self._model.monotone)

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self._spec.model_args['merge_a'])}, "
                f"uppercase={self.uppercase}, special={sorted(self.special_ids)})")
