"""DNABERT-2 (``zhihan1996/DNABERT-2-117M``): BERT with ALiBi, fused Wqkv, gated GELU MLP, post-LN.

Runs unpadded: the real tokens of a padded batch are packed into one stream, every projection and
MLP runs on them only, and attention is the varlen op with ALiBi slopes (no ``[B, H, L, L]`` bias
tensor, so there is no 512-token table to rebuild and sequences longer than 512 tokens just work).
Outputs match the released remote code (``bert_layers.py``): padded positions of
``last_hidden_state`` are exactly 0, MLM logits there are ``head(0)``.

Example:
    >>> model = DNABERT2.from_pretrained("DNABERT-2-117M/")
    >>> batch = model.get_tokenizer().encode_batch(["ACGTAGCATCGG", "TTGACC"], padding=False)
    >>> tokens, pooled = model.embed(batch)          # [T, 768] ragged, [2, 768]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from omicskern.errors import CheckpointError
from omicskern.models._common import check_ids, check_mask, finish_load
from omicskern.models._loading import config_get, load_strict
from omicskern.models.base import ModelOutput, OmicsModel, find_file, pool_rows
from omicskern.modules.bert import AlibiBertLayer, set_attention_backend
from omicskern.modules.embeddings import BertEmbeddings
from omicskern.modules.mlp import gelu_erf, init_linear_
from omicskern.ops.packing import Packing, packing_from_mask
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
    max_position_embeddings: int = 512

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


class DNABERT2(OmicsModel):
    """DNABERT-2 encoder (+ optional pooler and tied MLM head), keys as in the released checkpoint.

    The :class:`~omicskern.models.base.OmicsModel` interface: ``model(batch)`` on the BPE
    tokenizer's ragged :class:`~omicskern.batch.Batch` gives ``[T, C]`` states; ``embed(batch,
    pooling=...)`` with the shared pooling names plus ``"pooler"`` (the tanh dense of ``[CLS]``);
    ``mean`` averages every token, ``[CLS]`` and ``[SEP]`` included, as DNABERT-2's README does.
    The padded form ``forward(input_ids: [B, L], attention_mask: [B, L] | None)`` returns
    ``last_hidden_state: [B, L, C]`` (0 at padded positions), ``pooler_output: [B, C]`` (if the
    checkpoint has a pooler) and, with ``return_logits=True``, ``logits: [B, L, V]``, as the
    released remote code does.
    """

    model_type = "dnabert2"
    kind = "masked_lm"
    config_class = DNABERT2Config
    ops = ("attention",)
    extra_poolings = ("pooler",)
    max_length_is_hard = False  # ALiBi: longer rows run (the trained length is max_length)

    def __init__(self, config: DNABERT2Config, *, pooler: bool = True, mlm_head: bool = True):
        super().__init__()
        self.config = config
        self.bert = _Bert(config, pooler)
        self.cls = _Cls(self.bert.embeddings.word_embeddings) if mlm_head else None
        self._slopes: dict = {}
        init_linear_(self)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def matches(cls, config: dict, folder) -> bool:
        # the released config: model_type "bert" with remote code in bert_layers.py
        return any("bert_layers" in str(v) for v in (config.get("auto_map") or {}).values())

    @classmethod
    def converts_hf(cls, config: dict, sd: dict) -> bool:
        return any(".attention.self.Wqkv." in k for k in sd)

    @classmethod
    def _build(cls, sd, config, *, source, device, dtype, folder) -> "DNABERT2":
        """Accepts the ``BertForMaskedLM`` key format (``bert.*``, ``cls.predictions.*``) and the bare
        ``BertModel``/``AutoModel`` format (no ``bert.`` prefix). The pooler and the MLM head are
        built when the checkpoint holds them. Mismatches raise :class:`CheckpointError`."""
        if not any(k.startswith("bert.") for k in sd):
            sd = {("bert." + k if k.split(".")[0] in ("embeddings", "encoder", "pooler") else k): v
                  for k, v in sd.items()}
        model = cls(config, pooler=any(k.startswith("bert.pooler.") for k in sd),
                    mlm_head=any(k.startswith("cls.") for k in sd))
        # position_ids / token_type_ids: buffers older transformers versions saved; recomputed here
        load_strict(model, sd, source=source, ignore=[r"bert\.embeddings\.(position_ids|token_type_ids)"],
                    tied={"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"})
        return finish_load(model, dtype, device)

    @property
    def max_length(self) -> int:
        """ALiBi has no position table; DNABERT-2 was trained to ``max_position_embeddings`` tokens."""
        return self.config.max_position_embeddings

    def _tokenizer(self, folder, *, tokenizer_file=None, **kwargs):
        from omicskern.tokenizers import BPETokenizer

        path = tokenizer_file or find_file(folder, ("tokenizer.json",))
        if path is None:
            where = f"in {folder}" if folder is not None else "(the model was not loaded from a folder)"
            raise FileNotFoundError(
                f"DNABERT2.get_tokenizer: no tokenizer.json {where}. DNABERT-2's tokenizer is the "
                "tokenizer.json of its checkpoint (zhihan1996/DNABERT-2-117M): put it in the checkpoint "
                "folder or pass get_tokenizer(tokenizer_file=...)")
        return BPETokenizer.from_file(path, **kwargs)

    def _set_backends(self, ops: dict) -> None:
        set_attention_backend(self, ops["attention"])

    # -- compute ---------------------------------------------------------------------------------
    def alibi_slopes(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._slopes:
            self._slopes[key] = alibi_slopes(self.config.num_attention_heads).to(device)
        return self._slopes[key]

    def forward_packed(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                       token_type_ids: torch.Tensor | None = None, keep_states: bool = False):
        """Encoder on packed tokens. input_ids: ``[T]``, cu_seqlens: int32 ``[N+1]`` -> ``[T, C]``
        (and every hidden state when ``keep_states``)."""
        x = self.bert.embeddings(input_ids, token_type_ids)
        states = [x] if keep_states else None
        slopes = self.alibi_slopes(x.device)
        for layer in self.bert.encoder.layer:
            x = layer(x, cu_seqlens, max_seqlen, slopes)
            if keep_states:
                states.append(x)
        return (x, states) if keep_states else x

    def _encode(self, ids, cu, max_len, keep_states):
        if keep_states:
            return self.forward_packed(ids, cu, max_len, keep_states=True)
        return self.forward_packed(ids, cu, max_len), None

    def _lm_head(self, h):
        if self.cls is None:
            raise RuntimeError("this DNABERT2 has no MLM head (the checkpoint has no cls.predictions.* keys)")
        return self.cls(h)

    def _pool(self, h, ids, cu, pooling):
        if pooling == "pooler":
            if self.bert.pooler is None:
                raise RuntimeError("pooling='pooler' needs a checkpoint with bert.pooler.* weights")
            return self.bert.pooler(h[cu[:-1].long()])
        return pool_rows(h, cu, pooling)

    def forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       token_type_ids: torch.Tensor | None = None, *, return_logits: bool = False) -> ModelOutput:
        check_ids(input_ids, self.config.vocab_size)
        mask = check_mask(attention_mask, input_ids)
        pk = packing_from_mask(mask)
        tt = None if token_type_ids is None else pk.pack(token_type_ids.to(input_ids.device))
        h = self.forward_packed(pk.pack(input_ids), pk.cu_seqlens, pk.max_seqlen, tt)
        hidden = pk.unpack(h)
        pooled = self.bert.pooler(hidden[:, 0]) if self.bert.pooler is not None else None
        logits = self._padded_logits(h, pk) if return_logits else None
        return ModelOutput(hidden, pooled, logits)

    def _padded_logits(self, h: torch.Tensor, pk: Packing) -> torch.Tensor:
        # The reference runs the head on the zero-filled padded output: padded rows are head(0).
        fill = self._lm_head(h.new_zeros(1, h.shape[1]))[0]
        return pk.unpack(self._lm_head(h), fill=fill)


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
