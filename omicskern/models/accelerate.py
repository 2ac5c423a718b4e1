"""Drop-in acceleration of models users already loaded with ``transformers``, and conversion.

``accelerate(model)`` swaps the attention of a recognized model for omicskern's
:func:`~omicskern.ops.attention.attention`, in place, and returns an :class:`AccelerateReport`
naming what it patched:

* transformers ``BertModel``/``BertForMaskedLM``/... (Geneformer) and ``EsmModel``/
  ``EsmForMaskedLM``/... (Nucleotide Transformer v1, ESM-2): their attention goes through
  transformers' ``AttentionInterface``; omicskern registers an ``"omicskern"`` implementation
  (plus a mask function that hands over the ``[B, L]`` padding mask instead of a ``[B, 1, L, L]``
  tensor) and switches the model to it. Everything else (weights, rotary, LayerNorms, heads)
  is unchanged.
* Any other model is left untouched; the report says why (``report.recognized`` is False) and a
  warning is issued.

``from_hf(model)`` converts such a model (and the remote-code DNABERT-2, NT-v2 and HyenaDNA
classes, recognized from their config) into the omicskern class with the same weights.

Example:
    >>> hf = transformers.BertForMaskedLM.from_pretrained("Geneformer/")
    >>> print(omicskern.accelerate(hf))        # patched 12 attention modules ...
    >>> gf = omicskern.models.from_hf(hf)       # omicskern Geneformer, same weights
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from torch import nn

IMPL = "omicskern"
_SUPPORTED = {"bert": ("BertSelfAttention",), "esm": ("EsmSelfAttention",)}
_state = {"backend": None, "fallbacks": 0}


@dataclass
class AccelerateReport:
    """What :func:`accelerate` did. ``patched`` lists module paths whose attention now runs on
    omicskern; ``recognized`` is False when the model was left untouched (see ``message``)."""

    model: str
    recognized: bool
    patched: list[str] = field(default_factory=list)
    backend: str | None = None
    previous: str | None = None
    message: str = ""

    def __str__(self) -> str:
        if not self.recognized:
            return f"omicskern.accelerate: {self.model} left untouched: {self.message}"
        head = (f"omicskern.accelerate: {self.model}: {len(self.patched)} attention modules now use omicskern "
                f"attention (backend {self.backend or 'auto'}; was {self.previous!r})")
        return head + (f"; {self.message}" if self.message else "")


def _hf_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
             **kwargs):
    """Mask function for the "omicskern" implementation: a plain bidirectional padding mask stays
    ``[B, L]`` (None when nothing is padded); anything else falls back to transformers' 4-D SDPA mask."""
    from transformers.masking_utils import bidirectional_mask_function, sdpa_mask

    if (mask_function is bidirectional_mask_function and q_offset == 0 and kv_offset == 0
            and q_length == kv_length and (attention_mask is None or attention_mask.dim() == 2)):
        if attention_mask is None:
            return None
        m = attention_mask.bool()
        return None if bool(m.all()) else m
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask, **kwargs)


def _hf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention-interface function: query/key/value ``[B, H, L, D]`` -> ``[B, L, H, D]``."""
    from omicskern.ops.attention import attention

    causal = bool(getattr(module, "is_causal", False))
    same_len = query.shape[2] == key.shape[2]
    if (attention_mask is not None and attention_mask.dim() != 2) or not same_len:
        # a custom 4-D mask, cross-attention or a KV cache: transformers' own SDPA path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        _state["fallbacks"] += 1
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    out = attention(q, k, v, causal=causal, key_padding_mask=attention_mask, softmax_scale=scaling,
                    dropout_p=dropout if module.training else 0.0, backend=_state["backend"])
    return out, None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPL, _hf_attention)
    AttentionMaskInterface.register(IMPL, _hf_mask)


def _is_hf(model) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def accelerate(model: nn.Module, *, backend: str | None = None, quiet: bool = False) -> AccelerateReport:
    """Swap the attention of a ``transformers`` BERT or ESM model for omicskern's, in place.

    Args:
        model: e.g. ``BertForMaskedLM`` (Geneformer), ``EsmForMaskedLM`` (NT v1, ESM-2).
        backend: attention backend for every patched module (None = best available).
        quiet: no warning when the model is not recognized.
    Returns:
        :class:`AccelerateReport`; the model keeps its weights and API, its outputs agree with
        the original within the attention op's tolerance (positions of padded queries excepted,
        which omicskern sets to 0).

    Example:
        >>> report = accelerate(hf_model); print(report)
    """
    name = type(model).__name__
    if not _is_hf(model):
        rep = AccelerateReport(name, False, message="not a transformers PreTrainedModel; omicskern patches "
                                                    "BertModel/BertForMaskedLM and EsmModel/EsmForMaskedLM "
                                                    "(use the omicskern.models classes for DNABERT-2 and HyenaDNA)")
    else:
        mtype = getattr(model.config, "model_type", None)
        targets = [n for n, m in model.named_modules() if type(m).__name__ in _SUPPORTED.get(mtype, ())]
        if mtype not in _SUPPORTED or not targets:
            rep = AccelerateReport(name, False, message=f"model_type {mtype!r} with no recognized attention "
                                                        f"modules (supported: {', '.join(_SUPPORTED)})")
        elif not model._can_set_attn_implementation():
            rep = AccelerateReport(name, False, message="this transformers version does not dispatch its attention "
                                                        "through AttentionInterface")
        else:
            _register()
            previous = model.config._attn_implementation
            _state["backend"] = backend
            model.set_attn_implementation(IMPL)
            rep = AccelerateReport(name, True, targets, backend, previous,
                                   message="custom 4-D masks, cross-attention and KV caches fall back to "
                                           "transformers' SDPA")
    if not rep.recognized and not quiet:
        warnings.warn(str(rep), stacklevel=2)
    return rep


def restore(model: nn.Module, implementation: str = "sdpa") -> None:
    """Undo :func:`accelerate`: switch the model back to transformers' ``implementation``."""
    model.set_attn_implementation(implementation)


def from_hf(model: nn.Module, *, dtype=None, device=None) -> nn.Module:
    """Convert a loaded transformers model into the omicskern class with the same weights.

    * ``model_type == "bert"`` with DNABERT-2's fused ``Wqkv`` (remote code) -> :class:`DNABERT2`;
      plain ``BertModel``/``BertForMaskedLM`` -> :class:`Geneformer`;
    * ``model_type == "esm"`` or an NT-v2 remote config -> :class:`NucleotideTransformer`;
    * HyenaDNA remote classes (``hyena.backbone.*``/``backbone.*`` keys) -> :class:`HyenaDNA`.

    Raises ``TypeError`` for anything else.
    """
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise TypeError(f"from_hf: {type(model).__name__} has no .config; expected a transformers model")
    d = cfg.to_dict()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    dtype = dtype if dtype is not None else next(model.parameters()).dtype
    device = device if device is not None else next(model.parameters()).device
    mtype = d.get("model_type")
    if any(".attention.self.Wqkv." in k for k in sd):
        from omicskern.models.dnabert2 import DNABERT2, DNABERT2Config

        return DNABERT2.from_state_dict(DNABERT2Config.from_dict(d), sd, source=type(model).__name__, dtype=dtype,
                                        device=device)
    if mtype == "esm" or "add_bias_fnn" in d:
        from omicskern.models.nucleotide_transformer import NucleotideTransformer, NucleotideTransformerConfig

        return NucleotideTransformer.from_state_dict(NucleotideTransformerConfig.from_dict(d), sd,
                                                     source=type(model).__name__, dtype=dtype, device=device)
    if mtype == "bert":
        from omicskern.models.geneformer import Geneformer, GeneformerConfig

        return Geneformer.from_state_dict(GeneformerConfig.from_dict(d), sd, source=type(model).__name__,
                                          dtype=dtype, device=device)
    if any(k.startswith(("hyena.backbone.", "backbone.")) for k in sd) and "d_model" in d:
        from omicskern.models._common import finish_load
        from omicskern.models._loading import load_strict
        from omicskern.models.hyenadna import HyenaDNA, HyenaDNAConfig, normalize_keys

        m = HyenaDNA(HyenaDNAConfig.from_dict(d))
        load_strict(m, normalize_keys(sd), source=type(model).__name__)
        return finish_load(m, dtype, device)
    raise TypeError(f"from_hf: {type(model).__name__} (model_type {mtype!r}) is not a model omicskern can convert "
                    "(BERT/Geneformer, ESM/Nucleotide Transformer, DNABERT-2, HyenaDNA)")


__all__ = ["accelerate", "from_hf", "restore", "AccelerateReport"]
