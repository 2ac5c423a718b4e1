"""DNABERT-2 (``zhihan1996/DNABERT-2-117M``): BERT with ALiBi, fused Wqkv, gated GELU MLP, post-LN.

Runs unpadded: the real tokens of a padded batch are packed into one stream, every projection and
MLP runs on them only, and attention is the varlen op with ALiBi slopes (no ``[B, H, L, L]`` bias
tensor, so there is no 512-token table to rebuild and sequences longer than 512 tokens just work).
Outputs match the released remote code (``bert_layers.py``): padded positions of
``last_hidden_state`` are exactly 0, MLM logits there are ``head(0)``.

Example:
    >>> model = DNABERT2.from_pretrained("DNABERT-2-117M/")
    >>> tokens, pooled = model.embed(input_ids, attention_mask)   # [B, L, 768], [B, 768]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from omicskern.errors import CheckpointError
from omicskern.models._common import ModelOutput, _ragged_inputs, check_ids, check_mask, finish_load
from omicskern.models._loading import config_get, load_strict, read_config, read_state_dict
from omicskern.modules.bert import AlibiBertLayer, set_attention_backend
from omicskern.modules.embeddings import BertEmbeddings
from omicskern.modules.mlp import gelu_erf, init_linear_
from omicskern.modules.padding import Packing, packing_from_mask
from omicskern.ops.attention import alibi_slopes


@dataclass
class DNABERT2Config:
    """The fields of DNABERT-2's ``config.json`` that shape the model (117M defaults)."""

    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "DNABERT2Config":
        kw = {f: config_get(d, f, default=getattr(cls, f)) for f in cls.__dataclass_fields__}
        kw["pad_token_id"] = d.get("pad_token_id")
        for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if f not in d:
                raise CheckpointError(f"config.json: missing field {f!r}")
        return cls(**kw)


class _Encoder(nn.Module):
    def __init__(self, c: DNABERT2Config):
        super().__init__()
        self.layer = nn.ModuleList([
            AlibiBertLayer(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.layer_norm_eps)
            for _ in range(c.num_hidden_layers)])


class _Pooler(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(first))


class _Bert(nn.Module):
    def __init__(self, c: DNABERT2Config, pooler: bool):
        super().__init__()
        self.embeddings = BertEmbeddings(c.vocab_size, c.hidden_size, c.type_vocab_size, position=False,
                                         eps=c.layer_norm_eps, padding_idx=c.pad_token_id)
        self.encoder = _Encoder(c)
        self.pooler = _Pooler(c.hidden_size) if pooler else None


class _Transform(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        # eps 1e-12 is hard-coded in the reference head, whatever the config says
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x):
        return self.LayerNorm(gelu_erf(self.dense(x)))


class _Predictions(nn.Module):
    def __init__(self, word_embeddings: nn.Embedding):
        super().__init__()
        v, h = word_embeddings.weight.shape
        self.transform = _Transform(h)
        self.decoder = nn.Linear(h, v)
        self.decoder.weight = word_embeddings.weight  # tied, as in the reference


class _Cls(nn.Module):
    def __init__(self, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = _Predictions(word_embeddings)

    def forward(self, h):
        p = self.predictions
        return p.decoder(p.transform(h))


class DNABERT2(nn.Module):
    """DNABERT-2 encoder (+ optional pooler and tied MLM head), keys as in the released checkpoint.

    ``forward(input_ids: [B, L], attention_mask: [B, L] | None)`` returns a :class:`ModelOutput`
    with ``last_hidden_state: [B, L, C]`` (0 at padded positions), ``pooler_output: [B, C]`` (if the
    checkpoint has a pooler) and, with ``return_logits=True``, ``logits: [B, L, V]``.
    """

    def __init__(self, config: DNABERT2Config, *, pooler: bool = True, mlm_head: bool = True):
        super().__init__()
        self.config = config
        self.bert = _Bert(config, pooler)
        self.cls = _Cls(self.bert.embeddings.word_embeddings) if mlm_head else None
        self._slopes: dict = {}
        init_linear_(self)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype=None, device=None) -> "DNABERT2":
        """Load ``config.json`` + ``model.safetensors``/``pytorch_model.bin`` from a folder.

        Accepts the ``BertForMaskedLM`` key format (``bert.*``, ``cls.predictions.*``) and the bare
        ``BertModel``/``AutoModel`` format (no ``bert.`` prefix). The pooler and the MLM head are
        built when the checkpoint holds them. Mismatches raise :class:`CheckpointError`.
        """
        path = Path(path)
        config = DNABERT2Config.from_dict(read_config(path))
        sd = read_state_dict(path)
        return cls.from_state_dict(config, sd, source=str(path), dtype=dtype, device=device)

    @classmethod
    def from_state_dict(cls, config: DNABERT2Config, sd: dict, *, source: str = "state_dict", dtype=None,
                        device=None) -> "DNABERT2":
        if not any(k.startswith("bert.") for k in sd):
            sd = {("bert." + k if k.split(".")[0] in ("embeddings", "encoder", "pooler") else k): v
                  for k, v in sd.items()}
        model = cls(config, pooler=any(k.startswith("bert.pooler.") for k in sd),
                    mlm_head=any(k.startswith("cls.") for k in sd))
        # position_ids / token_type_ids: buffers older transformers versions saved; recomputed here
        load_strict(model, sd, source=source, ignore=[r"bert\.embeddings\.(position_ids|token_type_ids)"],
                    tied={"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"})
        return finish_load(model, dtype, device)

    def set_backend(self, attention: str | None = None) -> "DNABERT2":
        """Use attention backend ``attention`` (``None`` = best available) in every layer."""
        set_attention_backend(self, attention)
        return self

    # -- compute ---------------------------------------------------------------------------------
    def alibi_slopes(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._slopes:
            self._slopes[key] = alibi_slopes(self.config.num_attention_heads).to(device)
        return self._slopes[key]

    def forward_packed(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                       token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder on packed tokens. input_ids: ``[T]``, cu_seqlens: int32 ``[N+1]`` -> ``[T, C]``."""
        x = self.bert.embeddings(input_ids, token_type_ids)
        slopes = self.alibi_slopes(x.device)
        for layer in self.bert.encoder.layer:
            x = layer(x, cu_seqlens, max_seqlen, slopes)
        return x

    def forward_ragged(self, ids, offsets=None) -> torch.Tensor:
        """Encoder on a ragged batch (the BPE tokenizer's output, no padding at all).

        ids: int ``[T]`` and offsets ``[N+1]`` (tensors or numpy arrays), or a tokenizer
        ``RaggedBatch`` as ``ids`` alone -> ``[T, C]``.
        """
        ids, cu, max_len = _ragged_inputs(ids, offsets, self.bert.embeddings.word_embeddings.weight.device)
        check_ids(ids, self.config.vocab_size, "ids", dims=1)
        return self.forward_packed(ids.long(), cu, max_len)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, return_logits: bool = False) -> ModelOutput:
        check_ids(input_ids, self.config.vocab_size)
        mask = check_mask(attention_mask, input_ids)
        pk = packing_from_mask(mask)
        tt = None if token_type_ids is None else pk.pack(token_type_ids.to(input_ids.device))
        h = self.forward_packed(pk.pack(input_ids), pk.cu_seqlens, pk.max_seqlen, tt)
        hidden = pk.unpack(h)
        pooled = self.bert.pooler(hidden[:, 0]) if self.bert.pooler is not None else None
        logits = self._logits(h, pk) if return_logits else None
        return ModelOutput(hidden, pooled, logits)

    def _logits(self, h: torch.Tensor, pk: Packing) -> torch.Tensor:
        if self.cls is None:
            raise RuntimeError("this DNABERT2 has no MLM head (the checkpoint has no cls.predictions.* keys)")
        # The reference runs the head on the zero-filled padded output: padded rows are head(0).
        fill = self.cls(h.new_zeros(1, h.shape[1]))[0]
        return pk.unpack(self.cls(h), fill=fill)

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              pooling: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``[B, L, C]`` (0 at padding) and pooled ``[B, C]`` embeddings.

        pooling: ``"mean"`` over the real tokens ([CLS] and [SEP] included, as DNABERT-2's README
        computes sequence embeddings), ``"cls"`` (first token) or ``"pooler"`` (tanh dense of it).
        """
        out = self.forward(input_ids, attention_mask)
        h = out.last_hidden_state
        if pooling == "mean":
            m = check_mask(attention_mask, input_ids).to(h.dtype)
            pooled = (h.float().sum(1) / m.float().sum(1, keepdim=True)).to(h.dtype)
        elif pooling == "cls":
            pooled = h[:, 0]
        elif pooling == "pooler":
            if out.pooler_output is None:
                raise RuntimeError("pooling='pooler' needs a checkpoint with bert.pooler.* weights")
            pooled = out.pooler_output
        else:
            raise ValueError(f"pooling must be 'mean', 'cls' or 'pooler', got {pooling!r}")
        return h, pooled


def dnabert2_padded_reference(model: DNABERT2, input_ids: torch.Tensor,
                              attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """DNABERT-2's own PyTorch path, written out: padded ``[B, L]`` batch, one additive
    ``[B, H, L, L]`` bias (key mask ``-10000`` + ALiBi) for every layer, dense softmax attention, and
    the output zero-filled at padding. Used by tests as an independent check and by the benchmark
    as the reference path. Returns ``last_hidden_state: [B, L, C]``.
    """
    c = model.config
    mask = check_mask(attention_mask, input_ids)
    b, l = input_ids.shape
    nh, hd = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    x = model.bert.embeddings(input_ids)
    dt = x.dtype
    pos = torch.arange(l, device=x.device)
    alibi = -model.alibi_slopes(x.device)[:, None, None] * (pos[None, :] - pos[:, None]).abs()[None].float()
    bias = ((1.0 - mask[:, None, None, :].float()) * -10000.0 + alibi[None]).to(dt)  # [B, H, L, L]
    for layer in model.bert.encoder.layer:
        att = layer.attention
        qkv = att.self.Wqkv(x).view(b, l, 3, nh, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, L, D]
        s = torch.matmul(q, k.transpose(-1, -2)) / hd ** 0.5 + bias
        o = torch.matmul(torch.softmax(s, dim=-1), v).transpose(1, 2).reshape(b, l, -1)
        x = layer.mlp(att.output(o, x))
    return x * mask[..., None].to(dt)
