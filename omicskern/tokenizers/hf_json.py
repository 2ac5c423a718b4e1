"""Reads and writes Hugging Face ``tokenizer.json`` files holding a BPE model.

:func:`parse_tokenizer_json` checks that every part of the pipeline is one the C++ core reproduces
exactly (and raises ``NotImplementedError`` naming the part otherwise), then compiles it to the
plain tables :class:`omicskern._C.BpeModel` takes. :func:`build_tokenizer_json` writes the file of a
freshly trained vocabulary in the format ``tokenizers.Tokenizer.from_str`` loads.

Supported: model ``BPE`` (``unk_token``, ``fuse_unk``, ``continuing_subword_prefix``,
``end_of_word_suffix``, ``byte_fallback``; ``dropout`` null or 0; ``ignore_merges`` false);
normalizer null or ``Lowercase`` (ASCII text only); pre-tokenizer null, ``Whitespace`` or
``WhitespaceSplit`` (alone or as a one-element ``Sequence``); post-processor null,
``TemplateProcessing`` (the ``single`` template), ``BertProcessing``, ``RobertaProcessing``; added
tokens with ``lstrip``/``rstrip``/``normalized`` (``single_word`` is not supported).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BpeSpec", "parse_tokenizer_json", "build_tokenizer_json"]


@dataclass
class BpeSpec:
    """A parsed tokenizer.json: the C++ model's arguments plus what the Python class needs."""

    data: dict                                   # the JSON document itself (saved back unchanged)
    vocab: dict[str, int]                        # model vocabulary + added tokens
    id_to_token: list[str]                       # id -> token ("" for unused ids)
    special_ids: frozenset[int]
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    model_args: dict[str, Any] = field(repr=False, default_factory=dict)
    continuing_subword_prefix: str | None = None
    end_of_word_suffix: str | None = None


def _unsupported(part: str, value: Any) -> NotImplementedError:
    text = json.dumps(value)
    if len(text) > 200:
        text = text[:200] + "..."
    return NotImplementedError(f"tokenizer.json: unsupported {part} {text} (omicskern's BPE reproduces HF ids "
                               f"exactly only for the parts listed in omicskern.tokenizers.hf_json)")


def _parse_normalizer(norm: Any) -> bool:
    """True for Lowercase, False for none."""
    if norm is None:
        return False
    if not isinstance(norm, dict):
        raise _unsupported("normalizer", norm)
    kind = norm.get("type")
    if kind == "Lowercase":
        return True
    if kind == "Sequence":
        parts = norm.get("normalizers") or []
        if len(parts) == 0:
            return False
        if len(parts) == 1:
            return _parse_normalizer(parts[0])
    raise _unsupported("normalizer", norm)


def _parse_pre_tokenizer(pre: Any) -> str:
    if pre is None:
        return "none"
    if not isinstance(pre, dict):
        raise _unsupported("pre_tokenizer", pre)
    kind = pre.get("type")
    if kind == "Whitespace":
        return "whitespace"
    if kind == "WhitespaceSplit":
        return "whitespace_split"
    if kind == "Sequence":
        parts = pre.get("pretokenizers") or []
        if len(parts) == 0:
            return "none"
        if len(parts) == 1:
            return _parse_pre_tokenizer(parts[0])
    raise _unsupported("pre_tokenizer", pre)


def _parse_post(post: Any, vocab: dict[str, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if post is None:
        return (), ()
    if not isinstance(post, dict):
        raise _unsupported("post_processor", post)
    kind = post.get("type")
    if kind in ("BertProcessing", "RobertaProcessing"):
        return (int(post["cls"][1]),), (int(post["sep"][1]),)
    if kind != "TemplateProcessing":
        raise _unsupported("post_processor", post)
    specials = post.get("special_tokens", {})
    prefix: list[int] = []
    suffix: list[int] = []
    seen_a = False
    for item in post.get("single", []):
        if "Sequence" in item:
            if item["Sequence"].get("id") != "A" or seen_a:
                raise _unsupported("post_processor single template", post.get("single"))
            seen_a = True
        elif "SpecialToken" in item:
            name = item["SpecialToken"]["id"]
            if name not in specials:
                raise ValueError(f"tokenizer.json: TemplateProcessing uses special token {name!r} missing from "
                                 f"its special_tokens")
            (suffix if seen_a else prefix).extend(int(i) for i in specials[name]["ids"])
        else:
            raise _unsupported("post_processor template item", item)
    if not seen_a:
        raise ValueError("tokenizer.json: TemplateProcessing single template has no $A sequence")
    return tuple(prefix), tuple(suffix)


def _char_tables(vocab: dict[str, int], prefix: str, suffix: str) -> list[tuple[list[int], list[int]]]:
    """Initial symbols: per variant (first / middle / only / last character) code point -> id.

    HF looks up ``c``, ``prefix + c`` (not first), ``c + suffix`` (last), as model.rs merge_word does.
    """
    tables = []
    for first, last in ((True, False), (False, False), (True, True), (False, True)):
        head = "" if first else prefix
        tail = suffix if last else ""
        cps, ids = [], []
        for tok, i in vocab.items():
            if len(tok) != len(head) + 1 + len(tail) or not tok.startswith(head) or not tok.endswith(tail):
                continue
            cps.append(ord(tok[len(head)]))
            ids.append(i)
        tables.append((cps, ids))
    return tables


def _parse_merges(merges: Any, vocab: dict[str, int], prefix: str) -> tuple[list[int], list[int], list[int]]:
    if not isinstance(merges, list):
        raise ValueError("tokenizer.json: model.merges must be a list")
    a_ids, b_ids, new_ids = [], [], []
    plen = len(prefix.encode("utf-8"))
    for rank, m in enumerate(merges):
        if isinstance(m, str):
            parts = m.split(" ")
        elif isinstance(m, (list, tuple)):
            parts = list(m)
        else:
            parts = []
        if len(parts) != 2 or not all(isinstance(p, str) for p in parts):
            raise ValueError(f"tokenizer.json: merge {rank} is not a pair of tokens: {m!r}")
        a, b = parts
        # HF: new token = a + b without the continuing-subword prefix's bytes
        new = a + b.encode("utf-8")[plen:].decode("utf-8", errors="strict")
        for t in (a, b, new):
            if t not in vocab:
                raise ValueError(f"tokenizer.json: merge {rank} ({a!r}, {b!r}) uses token {t!r} missing from the "
                                 f"vocabulary")
        a_ids.append(vocab[a])
        b_ids.append(vocab[b])
        new_ids.append(vocab[new])
    return a_ids, b_ids, new_ids


def _check_id_range(vocab: dict[str, int]) -> None:
    """Rejects ids far beyond the vocabulary size.

    The compiled model keeps dense per-id tables (id -> token, pair tables, backtracking data: about
    85 bytes per id up to the largest one), so one stray id of 4e7 costs 3.4 GB and 1e12 fails with an
    empty MemoryError. Real vocabularies are dense (0..n-1) or nearly so (a few holes left by removed
    tokens); allowing ids below ``4 * len(vocab) + 1024`` keeps such files loading while bounding the
    tables to a small multiple of what the file itself holds.
    """
    if not vocab:
        return
    limit = 4 * len(vocab) + 1024
    token, tid = max(vocab.items(), key=lambda kv: kv[1])
    if tid >= limit:
        raise ValueError(f"tokenizer.json: token {token!r} has id {tid}, far beyond the vocabulary's "
                         f"{len(vocab)} tokens (ids must be below 4 * {len(vocab)} + 1024 = {limit}; "
                         f"omicskern stores per-id tables up to the largest id)")


def parse_tokenizer_json(data: Any) -> BpeSpec:
    """Validates a tokenizer.json document (dict) and compiles it for ``omicskern._C.BpeModel``."""
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError("not a Hugging Face tokenizer.json document (no 'model' object)")
    model = data["model"]
    if not isinstance(model, dict):
        raise ValueError("tokenizer.json: 'model' must be an object")
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise NotImplementedError(f"tokenizer.json: model type {kind!r} is not supported; omicskern's "
                                  f"BPETokenizer reads BPE models only")
    dropout = model.get("dropout")
    if dropout not in (None, 0, 0.0):
        raise NotImplementedError(f"tokenizer.json: BPE dropout={dropout} is random; only null/0 is supported")
    if model.get("ignore_merges"):
        raise _unsupported("model option", {"ignore_merges": True})
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not all(isinstance(v, int) and v >= 0 for v in vocab.values()):
        raise ValueError("tokenizer.json: model.vocab must map tokens to non-negative integer ids")
    _check_id_range(vocab)
    prefix = model.get("continuing_subword_prefix") or ""
    suffix = model.get("end_of_word_suffix") or ""
    byte_fallback = bool(model.get("byte_fallback", False))
    if byte_fallback and (prefix or suffix):
        raise _unsupported("model option", {"byte_fallback": True, "continuing_subword_prefix": prefix,
                                            "end_of_word_suffix": suffix})
    unk = model.get("unk_token")
    if unk is not None and unk not in vocab:
        raise ValueError(f"tokenizer.json: unk_token {unk!r} is not in the vocabulary")
    a_ids, b_ids, new_ids = _parse_merges(model.get("merges", []), vocab, prefix)

    lowercase = _parse_normalizer(data.get("normalizer"))
    pre = _parse_pre_tokenizer(data.get("pre_tokenizer"))
    for key in ("truncation", "padding"):
        if data.get(key) is not None:
            warnings.warn(f"tokenizer.json: '{key}' settings are ignored; use encode_batch(truncation=, "
                          f"max_length=, padding=) instead", stacklevel=3)

    full_vocab = dict(vocab)
    added_raw, added_norm, special_ids = [], [], set()
    added_ids: dict[str, int] = {}
    for t in data.get("added_tokens") or []:
        content = t.get("content") if isinstance(t, dict) else None
        if not isinstance(content, str):
            raise ValueError(f"tokenizer.json: bad added token {t!r}")
        # HF ignores the file's "id": a token of the model vocabulary keeps its id, others get the
        # next id after the model vocabulary / the last added token (AddedVocabulary::add_tokens).
        if content in added_ids:
            tid = added_ids[content]
        elif content in vocab:
            tid = vocab[content]
        else:
            top = max(added_ids.values(), default=None)
            tid = len(vocab) if top is None or (top < len(vocab) and len(vocab) > 0) else top + 1
        added_ids[content] = tid
        if t.get("single_word"):
            raise _unsupported("added token option", {"content": content, "single_word": True})
        full_vocab[content] = tid
        if t.get("special"):
            special_ids.add(tid)
        entry_content = content.lower() if (t.get("normalized") and lowercase) else content
        entry = (entry_content.encode("utf-8"), tid, bool(t.get("lstrip")), bool(t.get("rstrip")))
        (added_norm if t.get("normalized") else added_raw).append(entry)
    prefix_ids, suffix_ids = _parse_post(data.get("post_processor"), full_vocab)

    size = max(full_vocab.values(), default=-1) + 1
    for i in prefix_ids + suffix_ids:
        if not 0 <= i < size:
            raise ValueError(f"tokenizer.json: post-processor id {i} is outside the vocabulary (size {size})")
    id_to_token = [""] * size
    for tok, i in vocab.items():
        id_to_token[i] = tok
    for content, tid in added_ids.items():
        id_to_token[tid] = content
    byte_ids = [vocab.get(f"<0x{b:02X}>", -1) for b in range(256)] if byte_fallback else []
    args = dict(vocab_size=size, chars=_char_tables(vocab, prefix, suffix),
                unk_id=-1 if unk is None else vocab[unk], fuse_unk=bool(model.get("fuse_unk", False)),
                byte_ids=byte_ids, merge_a=a_ids, merge_b=b_ids, merge_new=new_ids, pre_tokenizer=pre,
                lowercase=lowercase, added_raw=added_raw, added_norm=added_norm)
    return BpeSpec(data=data, vocab=full_vocab, id_to_token=id_to_token, special_ids=frozenset(special_ids),
                   prefix_ids=prefix_ids, suffix_ids=suffix_ids, model_args=args,
                   continuing_subword_prefix=prefix or None, end_of_word_suffix=suffix or None)


def build_tokenizer_json(vocab: list[str], merges: list[tuple[int, int]], special_tokens: list[str], *,
                         unk_token: str | None, pre_tokenizer: str, template: tuple[str | None, str | None]
                         ) -> dict:
    """The tokenizer.json document of a trained vocabulary (HF BpeTrainer's layout).

    ``template``: (cls, sep) special tokens of a ``TemplateProcessing`` single template
    ``cls $A sep`` (either may be None; both None: no post-processor).
    """
    ids = {t: i for i, t in enumerate(vocab)}
    added = [{"id": ids[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for t in special_tokens]
    pre = {"none": None, "whitespace": {"type": "Whitespace"},
           "whitespace_split": {"type": "WhitespaceSplit"}}[pre_tokenizer]
    cls, sep = template
    post = None
    if cls is not None or sep is not None:
        single: list[dict] = []
        pair: list[dict] = []
        st: dict[str, dict] = {}
        for name, where in ((cls, "before"), (sep, "after")):
            if name is None:
                continue
            if name not in ids:
                raise ValueError(f"post-processor token {name!r} is not among the special tokens")
            st[name] = {"id": name, "ids": [ids[name]], "tokens": [name]}
        if cls is not None:
            single.append({"SpecialToken": {"id": cls, "type_id": 0}})
        single.append({"Sequence": {"id": "A", "type_id": 0}})
        if sep is not None:
            single.append({"SpecialToken": {"id": sep, "type_id": 0}})
        pair = single + [{"Sequence": {"id": "B", "type_id": 1}}]
        if sep is not None:
            pair.append({"SpecialToken": {"id": sep, "type_id": 1}})
        post = {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": st}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": unk_token, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": ids, "merges": [[vocab[a], vocab[b]] for a, b in merges]},
    }
