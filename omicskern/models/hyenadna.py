"""HyenaDNA (``LongSafari/hyenadna-*-seqlen``): Hyena blocks over omicskern's ``fft_conv``.

Backbone = embedding -> ``n_layer`` pre-LN blocks (Hyena mixer, GELU-tanh MLP, residual carried
between blocks) -> final LayerNorm; plus the tied LM head and HyenaDNA's sequence classification
head (mean over all positions, then a Linear). Numerics follow ``standalone_hyenadna.py``; the
model is causal and takes no attention mask: left padding (as HyenaDNA's tokenizer pads) feeds
into later positions exactly as in the reference.

Checkpoint formats read by :meth:`HyenaDNA.from_pretrained` (see the fixture's key_map.json):
``backbone.*`` (``HyenaDNAModel``), ``model.backbone.*`` (Lightning ``weights.ckpt``, optionally
with ``checkpoint_mixer``'s ``.mixer.layer.``/``.mlp.layer.``), ``hyena.backbone.*`` (the ``-hf``
repos' ``HyenaDNAForCausalLM``). Both the training ``config.json`` (``layer: {...}``) and the
``-hf`` config fields (``max_seq_len``, ``activation_freq``, ...) are understood.

Example:
    >>> model = HyenaDNA.from_pretrained("hyenadna-small-32k-seqlen/")
    >>> batch = model.get_tokenizer().encode_batch(["ACGTTGCA" * 10, "ACG"], padding=False)
    >>> out = model.embed(batch, pooling="last")     # rows never see padding: [T, d], [2, d]
    >>> h = model(input_ids).last_hidden_state       # the reference's padded form: [B, L, d_model]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from omicskern.errors import CheckpointError
from omicskern.models._common import check_ids, finish_load
from omicskern.models._loading import WEIGHT_FILES, load_strict, read_state_dict
from omicskern.models.base import ModelOutput, OmicsModel, as_tensor
from omicskern.modules.hyena import HyenaOperator
from omicskern.ops.packing import pad_packed

# HyenaOperator keyword arguments a config's "layer" block may set
_OP_KEYS = ("emb_dim", "filter_order", "w", "num_inner_mlps", "modulate", "fast_decay_pct", "slow_decay_pct",
            "target", "shift", "lr_pos_emb", "order", "short_filter_order", "dropout", "filter_dropout")


@dataclass
class HyenaDNAConfig:
    """Shape-defining fields of a HyenaDNA ``config.json`` (tiny-1k defaults)."""

    d_model: int = 128
    n_layer: int = 2
    d_inner: int | None = None
    vocab_size: int = 12
    pad_vocab_size_multiple: int = 8
    layer_norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    l_max: int = 1026
    block_norm_eps: float | None = None  # None: layer_norm_epsilon (the -hf code uses 1e-5 in the blocks)
    layer: dict = field(default_factory=lambda: {"emb_dim": 5, "filter_order": 64, "w": 10, "modulate": True})

    @property
    def padded_vocab(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size + (-self.vocab_size) % m if m and m > 1 else self.vocab_size

    @classmethod
    def from_dict(cls, d: dict) -> "HyenaDNAConfig":
        for f in ("d_model", "n_layer", "vocab_size"):
            if f not in d:
                raise CheckpointError(f"config.json: missing field {f!r}")
        layer = dict(d.get("layer") or {})
        if "layer" in d:  # the training repo's config: layer: {_name_: hyena, l_max, ...}
            if layer.get("_name_", "hyena") != "hyena":
                raise CheckpointError(f"config.json: layer._name_ is {layer.get('_name_')!r}; only 'hyena' is supported")
            l_max = layer.get("l_max")
        else:  # the -hf repos' HyenaConfig fields
            l_max = d.get("max_seq_len")
            hf = {"emb_dim": "emb_dim", "filter_order": "filter_order", "activation_freq": "w",
                  "num_inner_mlps": "num_inner_mlps", "short_filter_order": "short_filter_order",
                  "hyena_order": "order", "hyena_dropout": "dropout", "hyena_filter_dropout": "filter_dropout"}
            layer = {ours: d[theirs] for theirs, ours in hf.items() if theirs in d}
            layer.setdefault("modulate", True)
        if l_max is None:
            raise CheckpointError("config.json: missing the filter length (layer.l_max or max_seq_len)")
        op = {k: v for k, v in layer.items() if k in _OP_KEYS}
        return cls(d_model=d["d_model"], n_layer=d["n_layer"], d_inner=d.get("d_inner"), vocab_size=d["vocab_size"],
                   pad_vocab_size_multiple=d.get("pad_vocab_size_multiple", 1),
                   layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
                   residual_in_fp32=d.get("residual_in_fp32", True), l_max=int(l_max), layer=op,
                   block_norm_eps=None if "layer" in d else 1e-5)


class Mlp(nn.Module):
    def __init__(self, d: int, inner: int):
        super().__init__()
        self.fc1 = nn.Linear(d, inner)
        self.fc2 = nn.Linear(inner, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LN block with the residual stream carried between blocks (``Block`` of the reference)."""

    def __init__(self, c: HyenaDNAConfig):
        super().__init__()
        self.mixer = HyenaOperator(c.d_model, l_max=c.l_max, **c.layer)
        eps = c.layer_norm_epsilon if c.block_norm_eps is None else c.block_norm_eps
        self.norm1 = nn.LayerNorm(c.d_model, eps=eps)
        self.mlp = Mlp(c.d_model, c.d_inner or 4 * c.d_model)
        self.norm2 = nn.LayerNorm(c.d_model, eps=eps)
        self.residual_in_fp32 = c.residual_in_fp32

    def forward(self, h, residual):
        residual = h if residual is None else h + residual
        h = self.mixer(self.norm1(residual.to(self.norm1.weight.dtype)))
        if self.residual_in_fp32:
            residual = residual.float()
        residual = h + residual
        h = self.mlp(self.norm2(residual.to(self.norm2.weight.dtype)))
        if self.residual_in_fp32:
            residual = residual.float()
        return h, residual


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, d)

    def forward(self, ids):
        return self.word_embeddings(ids)


class LMBackbone(nn.Module):
    def __init__(self, c: HyenaDNAConfig):
        super().__init__()
        self.embeddings = _Embeddings(c.padded_vocab, c.d_model)
        self.layers = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_epsilon)

    def forward(self, ids, keep_states: bool = False):
        """``[B, L]`` ids -> ``[B, L, d]`` after ``ln_f`` (and, with ``keep_states``, the residual
        stream after the embedding and after every block, the last one replaced by the output)."""
        h, res = self.embeddings(ids), None
        states = [h] if keep_states else None
        for layer in self.layers:
            h, res = layer(h, res)
            if keep_states:
                states.append(h + res)
        res = h if res is None else h + res
        out = self.ln_f(res.to(self.ln_f.weight.dtype))
        if keep_states:
            states[-1] = out
        return out, states


class SequenceDecoder(nn.Module):
    """HyenaDNA's classification head (``mode='pool'``): mean over **all** positions (padding
    included, as the reference), then ``output_transform``."""

    def __init__(self, d: int, n_classes: int):
        super().__init__()
        self.output_transform = nn.Linear(d, n_classes)

    def forward(self, h):
        return self.output_transform(h.mean(dim=1))


def normalize_keys(sd: dict, source: str = "checkpoint") -> dict:
    """Any released key format -> ``backbone.*`` / ``head.*`` (the ``HyenaDNAModel`` names)."""
    keys = list(sd)
    if any(k.startswith("model.backbone.") for k in keys):  # Lightning weights.ckpt
        # As HyenaDNA's huggingface.load_weights: only keys containing "backbone" are used.
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.") and "backbone" in k}
    elif any(k.startswith("hyena.backbone.") for k in keys):  # -hf HyenaDNAForCausalLM
        sd = {k[len("hyena."):]: v for k, v in sd.items() if k != "lm_head.weight"}  # lm_head is tied
    out = {}
    for k, v in sd.items():
        k = re.sub(r"\.mixer\.layer\.", ".mixer.", k)  # checkpoint_mixer: true
        k = re.sub(r"\.mlp\.layer\.", ".mlp.", k)
        out[k] = v
    return out


class HyenaDNA(OmicsModel):
    """HyenaDNA backbone + tied LM head + optional sequence classification head.

    The :class:`~omicskern.models.base.OmicsModel` interface on the char tokenizer's ragged
    :class:`~omicskern.batch.Batch`: rows are right-padded internally to the longest row, so (the
    model being causal) real positions never see a pad token and every row gets the outputs it
    gets alone. The padded form ``forward(input_ids: [B, L])`` keeps the reference's semantics
    (left padding is part of the causal context): :class:`ModelOutput` with
    ``last_hidden_state: [B, L, d]`` (after ``ln_f``); ``return_logits=True`` adds
    ``logits: [B, L, padded_vocab]`` from the tied LM head; ``classify(input_ids)`` gives
    ``[B, n_classes]`` from the head. ``pooling="last"`` (the last real token, which has seen the
    whole row) is the natural summary of a causal model.
    """

    model_type = "hyenadna"
    kind = "causal_lm"
    #: a batch runs padded to its longest row (see _encode): token budgets count rows x longest
    pads_rows = True
    config_class = HyenaDNAConfig
    ops = ("fft_conv", "conv1d")
    weight_files = WEIGHT_FILES + ("weights.ckpt",)

    def __init__(self, config: HyenaDNAConfig, n_classes: int | None = None):
        super().__init__()
        self.config = config
        self.backbone = LMBackbone(config)
        self.head = SequenceDecoder(config.d_model, n_classes) if n_classes else None

    @classmethod
    def matches(cls, config: dict, folder) -> bool:
        layer = config.get("layer")
        if isinstance(layer, dict) and layer.get("_name_") == "hyena":
            return True
        archs = " ".join(config.get("architectures") or [])
        return config.get("model_type") == "hyenadna" or "HyenaDNA" in archs

    @classmethod
    def converts_hf(cls, config: dict, sd: dict) -> bool:
        return "d_model" in config and any(k.startswith(("hyena.backbone.", "backbone.")) for k in sd)

    @classmethod
    def from_pretrained(cls, path, *, device=None, dtype=None, head=None) -> "HyenaDNA":
        """Load ``config.json`` + weights (``model.safetensors``, ``pytorch_model.bin`` or
        Lightning ``weights.ckpt``) from ``path``; ``head`` is an optional file with
        ``head.output_transform.{weight,bias}`` (e.g. ``head.safetensors``)."""
        return super().from_pretrained(path, device=device, dtype=dtype, head=head)

    @classmethod
    def _build(cls, sd, config, *, source, device, dtype, folder, head=None) -> "HyenaDNA":
        sd = normalize_keys(sd, source)
        if head is not None:
            sd.update(read_state_dict(head))
        n_classes = None
        if "head.output_transform.weight" in sd:
            n_classes = sd["head.output_transform.weight"].shape[0]
        model = cls(config, n_classes=n_classes)
        load_strict(model, sd, source=source + (f" + {head}" if head else ""), tied=model.tied_keys())
        return finish_load(model, dtype, device)

    @property
    def max_length(self) -> int:
        """The filter length ``l_max`` (HyenaDNA's tokenizer ``model_max_length``)."""
        return self.config.l_max

    def _tokenizer(self, folder, **kwargs):
        from omicskern.tokenizers import CharTokenizer

        # HyenaDNA's CharacterTokenizer: [CLS] bases [SEP], left padding, model_max_length = l_max
        kwargs.setdefault("padding_side", "left")
        kwargs.setdefault("max_length", self.config.l_max)
        return CharTokenizer("dna", **kwargs)

    def _num_states(self) -> int:
        return self.config.n_layer + 1

    def _vocab_size(self) -> int:
        return self.config.padded_vocab

    def tied_keys(self) -> dict:
        """The implicit filter's three Sin slots share one ``freq``; the ``-hf`` safetensors keep only
        ``implicit_filter.1.freq`` (the others are dropped as shared tensors on save)."""
        tied = {}
        for i, layer in enumerate(self.backbone.layers):
            mlp = layer.mixer.filter_fn.implicit_filter
            slots = [j for j, m in enumerate(mlp) if hasattr(m, "freq")]
            for j in slots[1:]:
                tied[f"backbone.layers.{i}.mixer.filter_fn.implicit_filter.{j}.freq"] = \
                    f"backbone.layers.{i}.mixer.filter_fn.implicit_filter.{slots[0]}.freq"
        return tied

    def _set_backends(self, ops: dict) -> None:
        for layer in self.backbone.layers:
            layer.mixer.fft_backend = ops["fft_conv"]
            layer.mixer.conv_backend = ops["conv1d"]

    def forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                       return_logits: bool = False) -> ModelOutput:
        """input_ids: ``[B, L]``, L <= l_max, run as given (the reference: padding is part of the
        causal context). HyenaDNA has no attention mask: a mask with padding raises (pass the
        tokenizer's ragged Batch instead, whose rows never see padding); an all-ones mask is fine."""
        check_ids(input_ids, self.config.padded_vocab)
        if attention_mask is not None and not bool(torch.as_tensor(attention_mask).bool().all()):
            raise ValueError("HyenaDNA takes no attention_mask: it is causal and cannot ignore padding. Pass the "
                             "tokenizer's ragged Batch (encode_batch(..., padding=False)), which runs without "
                             "padding in the context, or input_ids alone for the reference's padded semantics")
        if input_ids.shape[1] > self.config.l_max:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds this model's l_max={self.config.l_max}")
        h, _ = self.backbone(input_ids)
        logits = self.lm_logits(h) if return_logits else None
        return ModelOutput(h, None, logits)

    def _encode(self, ids, cu, max_len, keep_states):
        # Right padding inside the batch: a causal model's real positions never see what follows
        # them, so each row's outputs are the ones it gets alone.
        pad, _, idx = pad_packed(ids, cu, max_len, fill=4)  # [PAD]; never seen by a real position
        h, states = self.backbone(pad, keep_states=keep_states)
        take = lambda x: x.reshape(-1, x.shape[-1])[idx]  # noqa: E731
        return take(h), (None if states is None else [take(s) for s in states])

    def _lm_head(self, h):
        return self.lm_logits(h)

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Tied LM head (no bias): ``h @ word_embeddings.T`` -> ``[..., padded_vocab]``."""
        return F.linear(h, self.backbone.embeddings.word_embeddings.weight)

    def classify(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Sequence classification logits ``[B, n_classes]`` (head needed)."""
        if self.head is None:
            raise RuntimeError("this HyenaDNA has no classification head (pass head=... to from_pretrained)")
        return self.head(self.forward_padded(as_tensor(input_ids, device=self.device)).last_hidden_state)
