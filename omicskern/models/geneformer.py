"""Geneformer (``ctheodoris/Geneformer`` V1 and V2): a transformers ``BertForMaskedLM``, run on the
rank-value tokenizer's ragged output without padding.

A batch of cells is the :class:`~omicskern.batch.Batch` that
:class:`omicskern.tokenizers.RankValueTokenizer` returns (every cell's ranked gene tokens back to
back, ``cu_seqlens`` marking the cells); positions restart at 0 in every cell and attention is the
varlen op, so no FLOP goes to padding. Cell embeddings follow Geneformer's ``EmbExtractor``: by
default from the second-to-last layer (``layer=-2``, its ``emb_layer=-1``), mean over the gene
tokens (``<cls>``/``<eos>`` excluded), or the ``<cls>`` token (V2, its ``emb_mode="cls"``).

Example:
    >>> model = Geneformer.from_pretrained("Geneformer-V2-104M/")
    >>> cells = model.get_tokenizer().tokenize(adata)            # a Batch, one row per cell
    >>> emb = model.embed(cells, pooling="cls", layer=-1).pooled  # [N, 768]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from omicskern.errors import CheckpointError
from omicskern.models._common import check_ids, check_mask, finish_load
from omicskern.models._loading import load_strict
from omicskern.models.base import ModelOutput, OmicsModel, find_file, pool_rows
from omicskern.modules.bert import BertLayer, set_attention_backend
from omicskern.modules.embeddings import BertEmbeddings
from omicskern.modules.mlp import activation, init_linear_
from omicskern.ops.packing import packing_from_mask, positions_in_rows


@dataclass
class GeneformerConfig:
    """transformers ``BertConfig`` fields that shape the model (Geneformer V2-104M defaults)."""

    vocab_size: int = 20275
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "relu"
    max_position_embeddings: int = 4096
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    tie_word_embeddings: bool = True
    position_embedding_type: str = "absolute"

    @classmethod
    def from_dict(cls, d: dict) -> "GeneformerConfig":
        for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if f not in d:
                raise CheckpointError(f"config.json: missing field {f!r}")
        pe = d.get("position_embedding_type", "absolute")
        if pe != "absolute":
            raise CheckpointError(f"config.json: position_embedding_type {pe!r} is not supported (absolute only)")
        if d.get("is_decoder"):
            raise CheckpointError("config.json: is_decoder=true (a causal BERT) is not supported")
        act = d.get("hidden_act", "gelu")
        activation(act)  # unsupported activations fail here, at load
        return cls(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_hidden_layers=d["num_hidden_layers"],
                   num_attention_heads=d["num_attention_heads"], intermediate_size=d["intermediate_size"],
                   hidden_act=act, max_position_embeddings=d.get("max_position_embeddings", 512),
                   type_vocab_size=d.get("type_vocab_size", 2), layer_norm_eps=d.get("layer_norm_eps", 1e-12),
                   pad_token_id=d.get("pad_token_id", 0) or 0,
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", True)))


class _Encoder(nn.Module):
    def __init__(self, c: GeneformerConfig):
        super().__init__()
        self.layer = nn.ModuleList([
            BertLayer(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps)
            for _ in range(c.num_hidden_layers)])


class _Pooler(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, first):
        return torch.tanh(self.dense(first))


class _Bert(nn.Module):
    def __init__(self, c: GeneformerConfig, pooler: bool):
        super().__init__()
        self.embeddings = BertEmbeddings(c.vocab_size, c.hidden_size, c.type_vocab_size, c.max_position_embeddings,
                                         position=True, eps=c.layer_norm_eps, padding_idx=c.pad_token_id)
        self.encoder = _Encoder(c)
        self.pooler = _Pooler(c.hidden_size) if pooler else None


class _Transform(nn.Module):
    def __init__(self, c: GeneformerConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.act = activation(c.hidden_act)

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class _Predictions(nn.Module):
    def __init__(self, c: GeneformerConfig):
        super().__init__()
        self.transform = _Transform(c)
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size)
        self.bias = self.decoder.bias  # transformers' BertLMPredictionHead ties decoder.bias to .bias


class _Cls(nn.Module):
    def __init__(self, c: GeneformerConfig):
        super().__init__()
        self.predictions = _Predictions(c)

    def forward(self, h):
        p = self.predictions
        return p.decoder(p.transform(h))


#: where Geneformer keeps its dictionaries: next to the model, or in the repository's geneformer/
TOKEN_DICT_PATTERNS = ("token_dictionary*.pkl", "*token_dict*.pkl")
MEDIAN_DICT_PATTERNS = ("gene_median_dictionary*.pkl", "*median*.pkl")


class Geneformer(OmicsModel):
    """BERT encoder (+ MLM head, + pooler when the checkpoint has one) with transformers' key names.

    The :class:`~omicskern.models.base.OmicsModel` interface on the rank-value tokenizer's ragged
    :class:`~omicskern.batch.Batch` (positions restart at 0 in every cell, attention is varlen).
    ``embed`` follows Geneformer's ``EmbExtractor``: the default ``layer=-2`` is its
    ``emb_layer=-1`` (the second-to-last layer; ``layer=-1`` is its ``emb_layer=0``), ``mean``
    (its ``emb_mode="cell"``) averages the gene tokens, leaving out ``<cls>``/``<eos>`` when the
    token dictionary has them, and ``cls`` (V2's ``emb_mode="cls"``) takes the ``<cls>`` token.
    The dictionaries are found next to the checkpoint (or in its parent's ``geneformer/``); a model
    made with ``from_state_dict`` learns them from ``get_tokenizer(token_dictionary=...)``, and until
    then knows no ``<cls>``/``<eos>`` and averages every token.
    The padded form like transformers: ``forward(input_ids: [B, L], attention_mask)`` ->
    :class:`ModelOutput` (0 at padding).
    """

    model_type = "geneformer"
    kind = "cell"
    config_class = GeneformerConfig
    ops = ("attention",)
    default_layer = -2

    def __init__(self, config: GeneformerConfig, *, mlm_head: bool = True, pooler: bool = False):
        super().__init__()
        self.config = config
        self.bert = _Bert(config, pooler)
        self.cls = _Cls(config) if mlm_head else None
        init_linear_(self)
        if self.cls is not None and config.tie_word_embeddings:
            self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        #: ids of ``<cls>`` / ``<eos>`` (from the token dictionary; None when it has none or is unknown)
        self.cls_token_id: int | None = None
        self.eos_token_id: int | None = None

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def matches(cls, config: dict, folder) -> bool:
        if config.get("model_type") != "bert" or any("bert_layers" in str(v) for v in (config.get("auto_map") or {}).values()):
            return False
        return find_file(folder, TOKEN_DICT_PATTERNS, search_parents=True) is not None

    @classmethod
    def converts_hf(cls, config: dict, sd: dict) -> bool:
        return config.get("model_type") == "bert" and not any(".attention.self.Wqkv." in k for k in sd)

    @classmethod
    def _build(cls, sd, config, *, source, device, dtype, folder) -> "Geneformer":
        """``BertForMaskedLM`` (``bert.*``, ``cls.predictions.*``) or ``BertModel`` (no prefix) keys."""
        if not any(k.startswith("bert.") for k in sd):
            sd = {("bert." + k if k.split(".")[0] in ("embeddings", "encoder", "pooler") else k): v
                  for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not k.endswith("embeddings.position_ids")}  # old non-persistent buffer
        tied = {"cls.predictions.decoder.bias": "cls.predictions.bias",
                "cls.predictions.bias": "cls.predictions.decoder.bias"}
        if config.tie_word_embeddings:
            sd = {k: v for k, v in sd.items() if k != "cls.predictions.decoder.weight"}
            tied["cls.predictions.decoder.weight"] = "bert.embeddings.word_embeddings.weight"
        model = cls(config, mlm_head=any(k.startswith("cls.predictions.") for k in sd),
                    pooler=any(k.startswith("bert.pooler.") for k in sd))
        load_strict(model, sd, source=source, tied=tied)
        td = find_file(folder, TOKEN_DICT_PATTERNS, search_parents=True)
        if td is not None:
            model._read_special_ids(td)
        return finish_load(model, dtype, device)

    def _read_special_ids(self, token_dictionary) -> None:
        from omicskern.io.gene_dict import load_token_dictionary

        d = load_token_dictionary(token_dictionary)
        self.cls_token_id = d.get("<cls>")
        self.eos_token_id = d.get("<eos>")

    @property
    def max_length(self) -> int:
        return self.config.max_position_embeddings

    def _tokenizer(self, folder, *, token_dictionary=None, gene_medians=None, **kwargs):
        from omicskern.tokenizers import RankValueTokenizer

        td = token_dictionary or find_file(folder, TOKEN_DICT_PATTERNS, search_parents=True)
        gm = gene_medians or find_file(folder, MEDIAN_DICT_PATTERNS, search_parents=True)
        where = f"in {folder} (or its parent, or its parent's geneformer/)" if folder is not None \
            else "(the model was not loaded from a folder)"
        for value, what, pattern, kw in ((td, "token dictionary", TOKEN_DICT_PATTERNS[0], "token_dictionary"),
                                         (gm, "gene median dictionary", MEDIAN_DICT_PATTERNS[0], "gene_medians")):
            if value is None:
                raise FileNotFoundError(
                    f"Geneformer.get_tokenizer: no {what} ({pattern}) {where}. Geneformer ships it in its "
                    f"repository's geneformer/ folder: copy it next to the model or pass get_tokenizer({kw}=...)")
        self._read_special_ids(td)
        if "preset" not in kwargs:  # V2 dictionaries carry <cls>/<eos>; V1 ones don't
            kwargs["preset"] = "V2" if self.cls_token_id is not None else "V1"
        return RankValueTokenizer(td, gm, **kwargs)

    def _set_backends(self, ops: dict) -> None:
        set_attention_backend(self, ops["attention"])

    # -- compute ---------------------------------------------------------------------------------
    def _run(self, ids, positions, cu_seqlens, max_seqlen, token_type_ids=None, keep_states=False):
        x = self.bert.embeddings(ids, token_type_ids, positions)
        states = [x] if keep_states else None
        for layer in self.bert.encoder.layer:
            x = layer(x, cu_seqlens, max_seqlen)
            if keep_states:
                states.append(x)
        return x, states

    def _encode(self, ids, cu, max_len, keep_states):
        return self._run(ids, positions_in_rows(cu, ids.numel()), cu, max_len, keep_states=keep_states)

    def _lm_head(self, h):
        if self.cls is None:
            raise RuntimeError("this Geneformer has no MLM head (no cls.predictions.* keys in the checkpoint)")
        return self.cls(h)

    def _pool(self, h, ids, cu, pooling):
        starts, ends = cu[:-1].long(), cu[1:].long()
        if pooling == "cls":
            if self.cls_token_id is not None and bool((ids[starts] != self.cls_token_id).any()):
                n = int(torch.nonzero(ids[starts] != self.cls_token_id)[0])
                raise ValueError(f"pooling='cls': cell {n} does not start with <cls> (id {self.cls_token_id}); "
                                 "tokenize with the V2 special tokens")
            return pool_rows(h, cu, "cls")
        if pooling not in ("mean", "max"):
            return pool_rows(h, cu, pooling)
        if bool((ends == starts).any()):
            raise ValueError(f"cell {int(torch.nonzero(ends == starts)[0])} has no tokens")
        keep = torch.ones(ids.numel(), dtype=torch.bool, device=h.device)
        if self.cls_token_id is not None:  # EmbExtractor drops a leading <cls> and a trailing <eos>
            keep[starts[ids[starts] == self.cls_token_id]] = False
        if self.eos_token_id is not None:
            last = ends - 1
            keep[last[ids[last] == self.eos_token_id]] = False
        return pool_rows(h, cu, pooling, keep)

    def forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       token_type_ids: torch.Tensor | None = None, *, return_logits: bool = False,
                       output_hidden_states: bool = False) -> ModelOutput:
        """Padded batch (transformers' ``BertModel`` semantics: positions are the padded column)."""
        check_ids(input_ids, self.config.vocab_size)
        mask = check_mask(attention_mask, input_ids)
        pk = packing_from_mask(mask)
        if pk.seqlen > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {pk.seqlen} exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        tt = None if token_type_ids is None else pk.pack(token_type_ids.to(input_ids.device))
        x, states = self._run(pk.pack(input_ids), pk.columns(), pk.cu_seqlens, pk.max_seqlen, tt,
                              keep_states=output_hidden_states)
        hidden = pk.unpack(x)
        pooled = self.bert.pooler(hidden[:, 0]) if self.bert.pooler is not None else None
        logits = pk.unpack(self._lm_head(x)) if return_logits else None
        hs = tuple(pk.unpack(s) for s in states) if output_hidden_states else None
        return ModelOutput(hidden, pooled, logits, hs)
