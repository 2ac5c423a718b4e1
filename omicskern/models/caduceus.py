"""Caduceus (Schiff et al. 2024; ``kuleshov-group/caduceus-{ph,ps}_seqlen-131k_*``): bidirectional
Mamba (BiMamba) DNA language models, Caduceus-PS reverse-complement equivariant by parameter sharing.

Two variants, one class (:class:`Caduceus`, ``CaduceusForMaskedLM`` with its tied LM head):

* **Caduceus-Ph** (``rcps=false``): embedding -> ``n_layer`` pre-norm blocks ``res = h + res;
  h = BiMamba(RMSNorm(res))`` -> ``RMSNorm(h + res)``; hidden states have ``d_model`` channels.
* **Caduceus-PS** (``rcps=true``): hidden states have ``2 d_model`` channels, the forward strand
  first, and ``h[..., d:].flip(L, C)`` the reverse complement's own states. The embedding is
  ``cat[E[ids], flipLC(E[rc(ids)])]``; each mixer runs the same BiMamba on both strands
  (``cat[m(x_f), flipLC(m(flipLC(x_r)))]``). With ``fused_add_norm=true`` (the released setting)
  each block builds its forward stream from the *second* half of the channels (the strands swap
  at every layer); with ``false`` from the first half. They are different functions, both
  RC-equivariant: ``H(rc(x)) = flipLC(H(x))`` exactly.

Numerics follow the original code (mamba_ssm 1.2.0.post1 slow path, ``rms_norm_ref``
formulas), checked against ``../shared/fixtures/caduceus_tiny`` (PS and ``ph/``) at 1e-4.

**No attention mask.** Caduceus is bidirectional and has no mask, so padding changes every real
position's output. The ragged :class:`~omicskern.batch.Batch` path runs each row at its own
length (rows of equal length together); ``forward(input_ids)`` without a mask is the reference's
padded semantics (pads are input); with an ``attention_mask`` the rows run unpadded and padded
positions are 0.

Checkpoint format (read by :meth:`Caduceus.from_pretrained`): ``config.json`` (``model_type:
caduceus``) + ``model.safetensors`` with the released key names (``caduceus.backbone.*``,
``lm_head.*``; a bare backbone's ``backbone.*`` too). The tied aliases the release omits
(``mamba_rev.{in,out}_proj.weight``, the LM head weight) are re-tied; ``complement_map`` is read
by integer key and extended with identity entries to the padded vocabulary.

Example:
    >>> model = Caduceus.from_pretrained("caduceus-ps_seqlen-131k_d_model-256_n_layer-16/")
    >>> tok = model.get_tokenizer(add_special_tokens=False)       # the pretraining setting
    >>> batch = tok.encode_batch(["ACGTTGCA" * 10, "ACG"], padding=False)
    >>> out = model.embed(batch)          # each row alone, never padded: [T, 2 d_model], [2, 2 d_model]
    >>> logits = model.token_logits(batch)                         # [T, padded vocab]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from omicskern.errors import CheckpointError
from omicskern.models._common import check_ids, check_mask, finish_load
from omicskern.models._loading import load_strict
from omicskern.models.base import ModelOutput, OmicsModel, pool_rows
from omicskern.modules.mamba import BiMamba
from omicskern.ops.rmsnorm import rms_norm

# DNA complement over Caduceus' character vocabulary: A7<->T10, C8<->G9, the rest to itself
_DEFAULT_COMPLEMENT = {i: i for i in range(12)} | {7: 10, 10: 7, 8: 9, 9: 8}


def _flip_lc(x: torch.Tensor) -> torch.Tensor:
    """Flip the length and channel axes of [B, L, C]: a reverse-complement strand's layout."""
    return x.flip(-2, -1)


@dataclass
class CaduceusConfig:
    """The fields of a Caduceus ``config.json`` that shape the model (fixture-tiny defaults)."""

    d_model: int = 64
    n_layer: int = 2
    vocab_size: int = 12
    ssm_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    fused_add_norm: bool = True
    residual_in_fp32: bool = False
    norm_epsilon: float = 1e-5
    pad_vocab_size_multiple: int = 8
    bidirectional: bool = True
    bidirectional_strategy: str = "add"
    bidirectional_weight_tie: bool = True
    rcps: bool = False
    complement_map: dict = field(default_factory=lambda: dict(_DEFAULT_COMPLEMENT))
    max_length: int = 131072

    @property
    def padded_vocab(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size + (-self.vocab_size) % m if m and m > 1 else self.vocab_size

    def complement_list(self) -> list[int]:
        """complement[i] for i < padded_vocab (by integer key; identity beyond the map)."""
        return [int(self.complement_map.get(i, i)) for i in range(self.padded_vocab)]

    @classmethod
    def from_dict(cls, d: dict) -> "CaduceusConfig":
        for f in ("d_model", "n_layer", "vocab_size"):
            if f not in d:
                raise CheckpointError(f"config.json: missing field {f!r}")
        kw = {f: d[f] for f in cls.__dataclass_fields__ if f in d and d[f] is not None
              and f not in ("complement_map", "max_length")}
        kw["ssm_cfg"] = dict(d.get("ssm_cfg") or {})
        if not kw.get("rms_norm", True):
            raise CheckpointError("config.json: rms_norm=false (LayerNorm blocks) is not supported; the released "
                                  "Caduceus checkpoints use rms_norm=true")
        cmap = d.get("complement_map")
        if cmap is None:
            if d.get("rcps"):
                raise CheckpointError("config.json: rcps=true needs a complement_map")
            cmap = _DEFAULT_COMPLEMENT
        try:  # JSON gives string keys; their order means nothing
            kw["complement_map"] = {int(k): int(v) for k, v in dict(cmap).items()}
        except (TypeError, ValueError):
            raise CheckpointError(f"config.json: complement_map must map token ids to token ids, got {cmap!r}") from None
        kw["max_length"] = int(d.get("max_length") or d.get("model_max_length") or 131072)
        c = cls(**kw)
        comp = c.complement_list()
        bad = [i for i, j in enumerate(comp) if not 0 <= j < c.padded_vocab or comp[j] != i]
        if bad:
            raise CheckpointError(f"config.json: complement_map is not an involution on the vocabulary (token {bad[0]} "
                                  f"-> {comp[bad[0]]})")
        return c

    def mamba_kwargs(self) -> dict:
        s = self.ssm_cfg
        return dict(d_state=int(s.get("d_state", 16)), d_conv=int(s.get("d_conv", 4)), expand=s.get("expand", 2),
                    dt_rank=s.get("dt_rank", "auto"), bias=bool(s.get("bias", False)),
                    conv_bias=bool(s.get("conv_bias", True)))


class _Norm(nn.Module):
    """mamba's RMSNorm (a ``weight`` only) over omicskern's ``rms_norm`` op."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps
        self.backend: str | None = None

    def forward(self, x, residual=None, residual_dtype=None):
        """-> (normed, x + residual)."""
        return rms_norm(x, self.weight, residual, self.eps, return_residual=True, residual_dtype=residual_dtype,
                        backend=self.backend)


class _RCPSEmbedding(nn.Module):
    def __init__(self, vocab: int, d: int, complement: list[int]):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.register_buffer("complement_map", torch.tensor(complement, dtype=torch.long))

    def forward(self, ids):
        rc = self.complement_map[ids.flip(-1)]
        return torch.cat([self.embedding(ids), _flip_lc(self.embedding(rc))], dim=-1)


class _Mixer(nn.Module):
    """BiMamba, wrapped as RCPS (``submodule``) for Caduceus-PS."""

    def __init__(self, c: CaduceusConfig):
        super().__init__()
        self.rcps = c.rcps
        bi = BiMamba(c.d_model, bidirectional=c.bidirectional, strategy=c.bidirectional_strategy,
                     weight_tie=c.bidirectional_weight_tie, **c.mamba_kwargs())
        if c.rcps:
            self.submodule = bi
        else:
            self.mamba_fwd, self.mamba_rev = bi.mamba_fwd, bi.mamba_rev
            self._bi = [bi]  # not a submodule: its mixers are registered here, under the Ph key names

    @property
    def bimamba(self) -> BiMamba:
        return self.submodule if self.rcps else self._bi[0]

    def forward(self, x):
        m = self.bimamba
        if not self.rcps:
            return m(x)
        d = x.shape[-1] // 2
        return torch.cat([m(x[..., :d]), _flip_lc(m(_flip_lc(x[..., d:])))], dim=-1)


class _Block(nn.Module):
    def __init__(self, c: CaduceusConfig):
        super().__init__()
        self.mixer = _Mixer(c)
        self.norm = _Norm(c.d_model, c.norm_epsilon)
        self.rcps, self.fused = c.rcps, c.fused_add_norm
        self.res_dtype = torch.float32 if c.residual_in_fp32 else None

    def forward(self, h, residual):
        """(mixer output, residual stream); residual None at layer 0."""
        if not self.rcps:  # mamba's Block: fused or not, the same math
            normed, residual = self.norm(h, residual, self.res_dtype)
            return self.mixer(normed), residual
        d = h.shape[-1] // 2
        lo, hi = (slice(d, None), slice(None, d)) if self.fused else (slice(None, d), slice(d, None))
        r_f = None if residual is None else residual[..., lo]
        r_r = None if residual is None else _flip_lc(residual[..., hi])
        n_f, s_f = self.norm(h[..., lo], r_f, self.res_dtype)
        n_r, s_r = self.norm(_flip_lc(h[..., hi]), r_r, self.res_dtype)
        normed = torch.cat([n_f, _flip_lc(n_r)], dim=-1)
        return self.mixer(normed), torch.cat([s_f, _flip_lc(s_r)], dim=-1)


class _Backbone(nn.Module):
    def __init__(self, c: CaduceusConfig):
        super().__init__()
        if c.rcps:
            self.embeddings = nn.Module()
            self.embeddings.word_embeddings = _RCPSEmbedding(c.padded_vocab, c.d_model, c.complement_list())
        else:
            self.embeddings = nn.Module()
            self.embeddings.word_embeddings = nn.Embedding(c.padded_vocab, c.d_model)
        self.layers = nn.ModuleList([_Block(c) for _ in range(c.n_layer)])
        self.norm_f = _Norm(c.d_model, c.norm_epsilon)
        self.rcps = c.rcps

    def forward(self, ids, keep_states=False):
        """[B, L] ids -> ([B, L, C] after norm_f, the reference's hidden_states or None)."""
        h = self.embeddings.word_embeddings(ids)
        residual = None
        states = [] if keep_states else None
        for layer in self.layers:
            if keep_states:
                states.append(h)  # the input of each layer (embedding, then mixer outputs)
            h, residual = layer(h, residual)
        s = h if residual is None else h + residual
        if not self.rcps:
            out = self.norm_f(s.to(self.norm_f.weight.dtype))[0]
        else:
            d = s.shape[-1] // 2
            w = self.norm_f.weight.dtype
            out = torch.cat([self.norm_f(s[..., :d].to(w))[0],
                             _flip_lc(self.norm_f(_flip_lc(s[..., d:]).to(w))[0])], dim=-1)
        if keep_states:
            states.append(out)
        return out, states


class _CaduceusModel(nn.Module):
    def __init__(self, c: CaduceusConfig):
        super().__init__()
        self.backbone = _Backbone(c)


class _RCPSLMHead(nn.Module):
    def __init__(self, complement: list[int]):
        super().__init__()
        self.register_buffer("complement_map", torch.tensor(complement, dtype=torch.long))


class Caduceus(OmicsModel):
    """Caduceus backbone + tied masked-LM head (``CaduceusForMaskedLM``), Ph or PS by ``rcps``.

    The :class:`~omicskern.models.base.OmicsModel` interface on the character tokenizer's ragged
    :class:`~omicskern.batch.Batch`: each row runs at its own length, never padded (rows of
    equal length share one batched run), so a row's outputs are the ones it gets alone. States
    are ``[T, d_model]`` (Ph) or ``[T, 2 d_model]`` (PS, forward strand first). ``embed(...,
    rc="average")`` gives RC-invariant embeddings ``[T, d_model]``: each base's forward- and
    reverse-strand states averaged (Ph runs the reverse complement too; PS has both strands by
    construction). Ops: ``selective_scan``, ``conv1d``,
    ``rmsnorm`` (``set_backend(selective_scan="reference")``, ...).
    """

    model_type = "caduceus"
    kind = "masked_lm"
    config_class = CaduceusConfig
    ops = ("selective_scan", "conv1d", "rmsnorm")
    # rows longer than the trained context (config max_length, 131072 by default) raise; the
    # scan itself has no length limit: set config.max_length to run longer rows
    max_length_is_hard = True

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.config = config
        self.caduceus = _CaduceusModel(config)
        if config.rcps:
            self.lm_head = _RCPSLMHead(config.complement_list())
        # the LM head weight is the word embedding's: lm_logits reads it (no second Parameter)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def matches(cls, config: dict, folder) -> bool:
        archs = " ".join(config.get("architectures") or [])
        auto = " ".join(str(v) for v in (config.get("auto_map") or {}).values())
        return config.get("model_type") == "caduceus" or "Caduceus" in archs or "modeling_caduceus" in auto

    def tied_keys(self) -> dict:
        """Aliases absent from released files: the reverse mixers' in/out_proj (weight tie) and the
        LM head weight (tied to the word embedding), alias -> stored key."""
        c = self.config
        tied = {}
        if c.bidirectional and c.bidirectional_weight_tie:
            for i in range(c.n_layer):
                p = f"caduceus.backbone.layers.{i}.mixer.{'submodule.' if c.rcps else ''}"
                for proj in ("in_proj", "out_proj"):
                    for par in ("weight", "bias"):
                        tied[f"{p}mamba_rev.{proj}.{par}"] = f"{p}mamba_fwd.{proj}.{par}"
        return tied

    @staticmethod
    def _normalize_keys(sd: dict, c: CaduceusConfig) -> dict:
        out = {}
        for k, v in sd.items():
            if k.startswith("backbone."):  # a bare Caduceus (AutoModel) checkpoint
                k = "caduceus." + k
            if c.rcps and not c.fused_add_norm:  # the unfused RCPSAddNormWrapper's norm names
                k = re.sub(r"\.norm(_f)?\.submodule\.weight$", r".norm\1.weight", k)
            if k in ("lm_head.weight", "lm_head.lm_head.weight"):
                continue  # tied to the word embedding (transformers drops it on save; equal if kept)
            out[k] = v
        return out

    @classmethod
    def _build(cls, sd, config, *, source, device, dtype, folder) -> "Caduceus":
        model = cls(config)
        sd = cls._normalize_keys(sd, config)
        for key in ("caduceus.backbone.embeddings.word_embeddings.complement_map", "lm_head.complement_map"):
            if key in sd and sd[key].tolist() != config.complement_list():
                raise CheckpointError(f"{source}: {key} = {sd[key].tolist()} disagrees with config.json's "
                                      f"complement_map {config.complement_list()}")
        load_strict(model, sd, source=source, tied=model.tied_keys(), optional=[r"lm_head\.complement_map"])
        return finish_load(model, dtype, device)

    # -- interface -------------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        """The trained context (131072 for the released checkpoints; ``max_length`` in config.json
        overrides it)."""
        return self.config.max_length

    def _tokenizer(self, folder, **kwargs):
        from omicskern.tokenizers import CharTokenizer

        # CaduceusTokenizer: [SEP] appended (no [CLS]); released tokenizer_config pads on the
        # left; upper-cases; other characters -> [UNK]. Pretraining used add_special_tokens=False.
        kwargs.setdefault("padding_side", "left")
        kwargs.setdefault("max_length", self.config.max_length)
        kwargs.setdefault("on_invalid", "unk")
        tok = CharTokenizer("dna", **kwargs)
        tok.prefix_ids = ()
        return tok

    def _num_states(self) -> int:
        return self.config.n_layer + 1

    def _vocab_size(self) -> int:
        return self.config.padded_vocab

    def _set_backends(self, ops: dict) -> None:
        bb = self.caduceus.backbone
        for layer in bb.layers:
            layer.mixer.bimamba.set_backends(ops["selective_scan"], ops["conv1d"])
            layer.norm.backend = ops["rmsnorm"]
        bb.norm_f.backend = ops["rmsnorm"]

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The tied LM head (no bias) -> float32 ``[..., padded_vocab]``. PS:
        ``h[..., :d] W^T + h[..., d:].flip(-1) W[complement]^T``."""
        bb = self.caduceus.backbone
        if not self.config.rcps:
            return (h @ bb.embeddings.word_embeddings.weight.T).float()
        W = bb.embeddings.word_embeddings.embedding.weight
        d = W.shape[1]
        return (h[..., :d] @ W.T + h[..., d:].flip(-1) @ W[self.lm_head.complement_map].T).float()

    def _lm_head(self, h):
        return self.lm_logits(h)

    def reverse_complement_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[..., L]`` of the reverse-complement strand (Caduceus' complement_map)."""
        comp = torch.tensor(self.config.complement_list(), device=ids.device)
        return comp[ids.flip(-1)]

    def forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                       return_logits: bool = False, output_hidden_states: bool = False) -> ModelOutput:
        """``[B, L]`` ids. Without a mask (or an all-ones one): the reference's semantics, pads are
        input like any token. With a mask marking padding: each row runs on its real tokens only
        (Caduceus has no mask), padded positions of the outputs are 0."""
        check_ids(input_ids, self.config.padded_vocab)
        mask = check_mask(attention_mask, input_ids)
        if attention_mask is not None and not bool(mask.all()):
            b = self._to_batch(input_ids, mask)
            out = self.forward_batch(b, return_logits=return_logits, output_hidden_states=output_hidden_states)
            put = lambda x: x.new_zeros(*mask.shape, x.shape[-1]).masked_scatter_(mask[..., None], x)  # noqa: E731
            return ModelOutput(put(out.last_hidden_state), None,
                               put(out.logits) if out.logits is not None else None,
                               None if out.hidden_states is None else tuple(put(s) for s in out.hidden_states))
        h, states = self.caduceus.backbone(input_ids, keep_states=output_hidden_states)
        logits = self.lm_logits(h) if return_logits else None
        return ModelOutput(h, None, logits, None if states is None else tuple(states))

    def _encode(self, ids, cu, max_len, keep_states):
        # No mask exists: rows never see padding. Rows of equal length run as one batch.
        cu64 = cu.long()
        lengths = (cu64[1:] - cu64[:-1]).tolist()
        bb = self.caduceus.backbone
        width = 2 * self.config.d_model if self.config.rcps else self.config.d_model
        dtype = self.dtype
        out = torch.empty(ids.numel(), width, device=ids.device, dtype=dtype)
        states = [torch.empty_like(out) for _ in range(self._num_states())] if keep_states else None
        by_len: dict[int, list[int]] = {}
        for i, L in enumerate(lengths):
            if L:
                by_len.setdefault(L, []).append(i)
        for L, rows in by_len.items():
            starts = cu64[rows]
            idx = (starts[:, None] + torch.arange(L, device=ids.device)[None]).reshape(-1)
            h, st = bb(ids[idx].view(len(rows), L), keep_states=keep_states)
            out[idx] = h.reshape(-1, width).to(dtype)
            if keep_states:
                for k, s in enumerate(st):
                    states[k][idx] = s.reshape(-1, width).to(dtype)
        return out, states

    @torch.no_grad()
    def embed(self, batch, pooling: str = "mean", layer: int | None = None, attention_mask=None, *,
              rc: str | None = None):
        """As :meth:`OmicsModel.embed`; ``rc="average"`` gives RC-invariant embeddings: every base's
        state is the average of the forward strand's and the reverse-complement strand's states
        *at that base*, so a sequence and its reverse complement get the same pooled vectors (and
        the same token states, in reversed order).

        * Ph: the model also runs on each row's reverse complement; token ``l`` is
          ``(H(x)[l] + H(rc(x))[L-1-l]) / 2``, ``[T, d_model]``.
        * PS: the RC strand is already inside the states (``h[l, d:].flip(-1)`` is its state at
          base l), so no second run: ``(h[:, :d] + h[:, d:].flip(-1)) / 2``, ``[T, d_model]``.
        """
        if rc not in (None, "average"):
            raise ValueError(f"rc must be None or 'average', got {rc!r}")
        e = super().embed(batch, pooling, layer, attention_mask)
        if rc is None:
            return e
        d = self.config.d_model
        if self.config.rcps:
            tokens = (e.tokens[:, :d] + e.tokens[:, d:].flip(-1)) / 2
        else:
            ids, cu, _ = self._prepare(self._to_batch(batch, attention_mask))
            cu64 = cu.long()
            comp = torch.tensor(self.config.complement_list(), device=ids.device)
            rc_ids = ids.clone()
            for i in range(cu.numel() - 1):
                s, t = int(cu64[i]), int(cu64[i + 1])
                rc_ids[s:t] = comp[ids[s:t].flip(0)]
            from omicskern.batch import Batch

            e_rc = super().embed(Batch(rc_ids, cu), pooling, layer)
            back = torch.empty_like(e_rc.tokens)
            for i in range(cu.numel() - 1):
                s, t = int(cu64[i]), int(cu64[i + 1])
                back[s:t] = e_rc.tokens[s:t].flip(0)
            tokens = (e.tokens + back) / 2
        return type(e)(tokens, pool_rows(tokens, e.cu_seqlens, pooling), e.cu_seqlens, pooling, e.layer)


__all__ = ["Caduceus", "CaduceusConfig"]
