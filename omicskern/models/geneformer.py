"""Geneformer (``ctheodoris/Geneformer`` V1 and V2): a transformers ``BertForMaskedLM``, run on the
rank-value tokenizer's ragged output without padding.

A batch of cells is ``ids: int64 [T]`` (every cell's ranked gene tokens, concatenated) plus
``offsets: [N+1]`` (cell ``n`` is ``ids[offsets[n]:offsets[n+1]]``), exactly what
:class:`omicskern.tokenizers.RankValueTokenizer` returns; positions restart at 0 in every cell and
attention is the varlen op, so no FLOP goes to padding. Cell embeddings follow Geneformer's
``EmbExtractor``: by default from the second-to-last layer (``emb_layer=-1``), mean over the gene
tokens (``<cls>``/``<eos>`` excluded when present), or the ``<cls>`` token (V2, ``emb_mode="cls"``).

Example:
    >>> model = Geneformer.from_pretrained("Geneformer-V2-104M/")
    >>> cells = model.cell_embeddings(ids, offsets, mode="cls", cls_token_id=2)   # [N, 768]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from omicskern.errors import CheckpointError
from omicskern.models._common import ModelOutput, check_ids, check_mask, finish_load
from omicskern.models._loading import load_strict, read_config, read_state_dict
from omicskern.modules.bert import BertLayer, set_attention_backend
from omicskern.modules.embeddings import BertEmbeddings
from omicskern.modules.mlp import activation, init_linear_
from omicskern.modules.padding import cu_seqlens_from_offsets, packing_from_mask, positions_in_rows, segment_mean


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


class Geneformer(nn.Module):
    """BERT encoder (+ MLM head, + pooler when the checkpoint has one) with transformers' key names.

    Ragged API: ``forward_ragged(ids: [T], offsets: [N+1])`` -> ``[T, C]``;
    ``cell_embeddings(ids, offsets)`` -> ``[N, C]``. Padded API like transformers:
    ``forward(input_ids: [B, L], attention_mask)`` -> :class:`ModelOutput` (0 at padding).
    """

    def __init__(self, config: GeneformerConfig, *, mlm_head: bool = True, pooler: bool = False):
        super().__init__()
        self.config = config
        self.bert = _Bert(config, pooler)
        self.cls = _Cls(config) if mlm_head else None
        init_linear_(self)
        if self.cls is not None and config.tie_word_embeddings:
            self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype=None, device=None) -> "Geneformer":
        """Load ``config.json`` + ``model.safetensors``/``pytorch_model.bin`` in ``BertForMaskedLM``
        (``bert.*``, ``cls.predictions.*``) or ``BertModel`` (no prefix) format."""
        path = Path(path)
        config = GeneformerConfig.from_dict(read_config(path))
        return cls.from_state_dict(config, read_state_dict(path), source=str(path), dtype=dtype, device=device)

    @classmethod
    def from_state_dict(cls, config: GeneformerConfig, sd: dict, *, source: str = "state_dict", dtype=None,
                        device=None) -> "Geneformer":
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
        return finish_load(model, dtype, device)

    def set_backend(self, attention: str | None = None) -> "Geneformer":
        set_attention_backend(self, attention)
        return self

    # -- compute ---------------------------------------------------------------------------------
    def _encode(self, ids, positions, cu_seqlens, max_seqlen, token_type_ids=None, keep_states=False):
        x = self.bert.embeddings(ids, token_type_ids, positions)
        states = [x] if keep_states else None
        for layer in self.bert.encoder.layer:
            x = layer(x, cu_seqlens, max_seqlen)
            if keep_states:
                states.append(x)
        return x, states

    def _ragged(self, ids, offsets):
        if offsets is None:
            if not (hasattr(ids, "ids") and hasattr(ids, "offsets")):
                raise TypeError("pass ids and offsets, or a tokenizer RaggedBatch (with .ids and .offsets)")
            ids, offsets = ids.ids, ids.offsets
        return torch.as_tensor(ids, device=self.bert.embeddings.word_embeddings.weight.device), offsets

    def forward_ragged(self, ids, offsets=None, *, output_hidden_states: bool = False):
        """Encoder on ragged cells. ids: int ``[T]``, offsets: ``[N+1]`` (tensors or numpy arrays),
        or a tokenizer ``RaggedBatch`` as ``ids`` alone -> ``[T, C]`` (and, with
        ``output_hidden_states``, the ``num_hidden_layers + 1`` states ``[T, C]`` as transformers'
        ``hidden_states`` tuple)."""
        ids, offsets = self._ragged(ids, offsets)
        check_ids(ids, self.config.vocab_size, "ids", dims=1)
        cu, max_len = cu_seqlens_from_offsets(offsets)
        cu = cu.to(ids.device)
        if int(cu[-1]) != ids.numel():
            raise ValueError(f"offsets end at {int(cu[-1])} but ids holds {ids.numel()} tokens")
        if max_len > self.config.max_position_embeddings:
            n = int(torch.argmax(cu[1:] - cu[:-1]))
            raise ValueError(f"cell {n} has {max_len} tokens, more than max_position_embeddings="
                             f"{self.config.max_position_embeddings}; truncate it when tokenizing")
        pos = positions_in_rows(cu, ids.numel())
        x, states = self._encode(ids.long(), pos, cu, max_len, keep_states=output_hidden_states)
        return (x, tuple(states)) if output_hidden_states else x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
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
        x, states = self._encode(pk.pack(input_ids), pk.columns(), pk.cu_seqlens, pk.max_seqlen, tt,
                                 keep_states=output_hidden_states)
        hidden = pk.unpack(x)
        pooled = self.bert.pooler(hidden[:, 0]) if self.bert.pooler is not None else None
        logits = pk.unpack(self.mlm_logits(x)) if return_logits else None
        hs = tuple(pk.unpack(s) for s in states) if output_hidden_states else None
        return ModelOutput(hidden, pooled, logits, hs)

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.cls is None:
            raise RuntimeError("this Geneformer has no MLM head (no cls.predictions.* keys in the checkpoint)")
        return self.cls(h)

    @torch.no_grad()
    def cell_embeddings(self, ids, offsets=None, *, mode: str = "mean", emb_layer: int = -1,
                        cls_token_id: int | None = None, eos_token_id: int | None = None) -> torch.Tensor:
        """Cell embeddings ``[N, C]`` as Geneformer's ``EmbExtractor`` computes them.

        Args:
            mode: ``"mean"`` (``emb_mode="cell"``): mean over the cell's gene tokens, skipping a leading
                ``<cls>`` and a trailing ``<eos>`` when their ids are given (V2 input); ``"cls"``
                (V2's ``emb_mode="cls"``): the first token, which must be ``<cls>``.
            emb_layer: Geneformer's convention: ``-1`` = the second-to-last layer (its default),
                ``0`` = the last layer.
        """
        if emb_layer not in (-1, 0):
            raise ValueError(f"emb_layer must be -1 (second-to-last layer) or 0 (last layer), got {emb_layer}")
        ids, offsets = self._ragged(ids, offsets)
        _, states = self.forward_ragged(ids, offsets, output_hidden_states=True)
        h = states[self.config.num_hidden_layers + emb_layer]
        cu, _ = cu_seqlens_from_offsets(offsets)
        cu = cu.to(h.device)
        starts, ends = cu[:-1].long(), cu[1:].long()
        if bool((ends == starts).any()):
            n = int(torch.nonzero(ends == starts)[0])
            raise ValueError(f"cell {n} has no tokens")
        if mode == "cls":
            if cls_token_id is not None and bool((ids[starts] != cls_token_id).any()):
                n = int(torch.nonzero(ids[starts] != cls_token_id)[0])
                raise ValueError(f"mode='cls': cell {n} does not start with <cls> (id {cls_token_id}); "
                                 "tokenize with the V2 special tokens")
            return h[starts]
        if mode != "mean":
            raise ValueError(f"mode must be 'mean' or 'cls', got {mode!r}")
        keep = torch.ones(ids.numel(), dtype=torch.bool, device=h.device)
        if cls_token_id is not None:
            first = starts[ids[starts] == cls_token_id]
            keep[first] = False
        if eos_token_id is not None:
            last = ends - 1
            keep[last[ids[last] == eos_token_id]] = False
        return segment_mean(h, cu, keep)

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              pooling: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """Padded convenience API: last-layer tokens ``[B, L, C]`` and the mean over real tokens
        (``pooling="mean"``) or the first token (``"cls"``) ``[B, C]``."""
        h = self.forward(input_ids, attention_mask).last_hidden_state
        if pooling == "cls":
            return h, h[:, 0]
        if pooling != "mean":
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        m = check_mask(attention_mask, input_ids).float()
        return h, ((h.float() * m[..., None]).sum(1) / m.sum(1, keepdim=True)).to(h.dtype)

