"""Interop with ``transformers``: drop-in acceleration of models users already loaded, and conversion.

``accelerate(model)`` swaps the attention of a recognized model for omicskern's
:func:`~omicskern.ops.attention.attention`, in place, and returns an :class:`AccelerateReport`
naming what it patched:

* transformers ``BertModel``/``BertForMaskedLM``/... (Geneformer) and ``EsmModel``/
  ``EsmForMaskedLM``/... (Nucleotide Transformer v1, ESM-2): their attention goes through
  transformers' ``AttentionInterface``; omicskern registers an ``"omicskern"`` implementation
  (plus a mask function that hands over the ``[B, L]`` padding mask instead of a ``[B, 1, L, L]``
  tensor) and switches the model to it. Everything else (weights, rotary, LayerNorms, heads)
  is unchanged.
* DNABERT-2's remote code (``bert_layers.py``: ``BertUnpadSelfAttention`` with a fused ``Wqkv``,
  ``BertEncoder`` holding the ALiBi table): each self-attention runs omicskern's varlen attention
  with ALiBi slopes on the already-unpadded tokens (no re-padding, no ``[B, H, L, L]`` bias), and
  the encoder stops building the bias tensor.
* HyenaDNA's remote code (``HyenaFilter.forward(x, L, k, bias)`` around a ``torch.fft``
  ``fftconv``): the long convolution becomes omicskern's ``fft_conv``.
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

import torch
from torch import nn

IMPL = "omicskern"
_SUPPORTED = {"bert": ("BertSelfAttention",), "esm": ("EsmSelfAttention",)}


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
        head = (f"omicskern.accelerate: {self.model}: {len(self.patched)} modules now run on omicskern "
                f"(backend {self.backend or 'auto'}; was {self.previous!r})")
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
        if bool(m.all()):
            return None
        # the Triton/flash backends take right-padded masks; other layouts are packed here (once per forward)
        m._omicskern_right_padded = not bool((m[:, 1:] & ~m[:, :-1]).any())
        return m
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

        module._omicskern_fallbacks = getattr(module, "_omicskern_fallbacks", 0) + 1
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    p = dropout if module.training else 0.0
    if attention_mask is not None and not getattr(attention_mask, "_omicskern_right_padded", True) and not causal:
        # left/irregular padding: pack the real tokens and run varlen (valid for any padding layout
        # here because positions were already applied: absolute embeddings or rotary on q/k)
        from omicskern.ops.packing import packing_from_mask

        pk = getattr(attention_mask, "_omicskern_packing", None)
        if pk is None:
            pk = attention_mask._omicskern_packing = packing_from_mask(attention_mask)
        out = attention(pk.pack(q), pk.pack(k), pk.pack(v), cu_seqlens=pk.cu_seqlens, max_seqlen=pk.max_seqlen,
                        softmax_scale=scaling, dropout_p=p, backend=getattr(module, "_omicskern_backend", None))
        return pk.unpack(out), None
    out = attention(q, k, v, causal=causal, key_padding_mask=attention_mask, softmax_scale=scaling,
                    dropout_p=p, backend=getattr(module, "_omicskern_backend", None))
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


def _is_remote(m: nn.Module, cls_name: str) -> bool:
    return type(m).__name__ == cls_name and not type(m).__module__.startswith("omicskern")


def _patch_dnabert2(model: nn.Module, backend: str | None) -> list[str]:
    import types

    patched = []
    for name, m in model.named_modules():
        if _is_remote(m, "BertUnpadSelfAttention") and hasattr(m, "Wqkv") and hasattr(m, "num_attention_heads"):
            m.forward = types.MethodType(_dnabert2_self_attention_forward, m)
            m._omicskern_backend = backend
            patched.append(name)
        elif _is_remote(m, "BertEncoder") and hasattr(m, "rebuild_alibi_tensor") and hasattr(m, "layer"):
            m.forward = types.MethodType(_dnabert2_encoder_forward, m)
            patched.append(name)
    return patched


def _dnabert2_self_attention_forward(self, hidden_states, cu_seqlens, max_seqlen_in_batch, indices=None,
                                     attn_mask=None, bias=None):
    """Replaces ``BertUnpadSelfAttention.forward``: tokens arrive unpadded ([nnz, dim] + cu_seqlens),
    so the varlen op takes them as they are; ALiBi comes from the slopes (the reference's bias is
    ALiBi + the padding mask, both implied here)."""
    from omicskern.ops.attention import alibi_slopes, attention

    h, d = self.num_attention_heads, self.attention_head_size
    slopes = getattr(self, "_omicskern_slopes", None)
    if slopes is None or slopes.device != hidden_states.device:
        slopes = self._omicskern_slopes = alibi_slopes(h).to(hidden_states.device)
    qkv = self.Wqkv(hidden_states).view(hidden_states.shape[0], 3, h, d)
    p = float(getattr(self, "p_dropout", 0.0) or 0.0) if self.training else 0.0
    out = attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], alibi_slopes=slopes, cu_seqlens=cu_seqlens,
                    max_seqlen=int(max_seqlen_in_batch), dropout_p=p, backend=self._omicskern_backend)
    return out.reshape(hidden_states.shape[0], h * d)


def _dnabert2_encoder_forward(self, hidden_states, attention_mask, output_all_encoded_layers=True,
                              subset_mask=None):
    """Replaces DNABERT-2's ``BertEncoder.forward`` with the same inputs and outputs, minus the
    ``[B, H, L, L]`` ALiBi + mask bias (the patched attention does not read it)."""
    from omicskern.ops.packing import packing_from_mask

    batch, seqlen = hidden_states.shape[:2]
    pk = packing_from_mask(attention_mask)
    h = pk.pack(hidden_states)
    layers = list(self.layer)
    out = []
    n_full = len(layers) if subset_mask is None else len(layers) - 1
    for layer in layers[:n_full]:
        h = layer(h, pk.cu_seqlens, pk.max_seqlen, None, pk.indices, attn_mask=attention_mask, bias=None)
        if output_all_encoded_layers:
            out.append(h)
    if subset_mask is None:
        h = pk.unpack(h)
    else:
        subset_idx = torch.nonzero(subset_mask[attention_mask.bool()], as_tuple=False).flatten()
        h = layers[-1](h, pk.cu_seqlens, pk.max_seqlen, subset_idx=subset_idx, indices=pk.indices,
                       attn_mask=attention_mask, bias=None)
    if not output_all_encoded_layers:
        out.append(h)
    return out


def _patch_hyena(model: nn.Module, backend: str | None) -> list[str]:
    import inspect
    import types

    patched = []
    for name, m in model.named_modules():
        if _is_remote(m, "HyenaFilter") and hasattr(m, "implicit_filter") and hasattr(m, "filter"):
            params = list(inspect.signature(m.forward).parameters)
            if params[:4] != ["x", "L", "k", "bias"]:
                continue
            m._omicskern_original_forward = m.forward
            m._omicskern_backend = backend
            m.forward = types.MethodType(_hyena_filter_forward, m)
            patched.append(name)
    return patched


def _hyena_filter_forward(self, x, L, k=None, bias=None, *args, **kwargs):
    """Replaces HyenaDNA's ``HyenaFilter.forward``: ``fftconv(x, k, bias)`` -> omicskern ``fft_conv``
    (x: [B, D, L], k: [D, L], bias: [D]); other layouts go to the original."""
    from omicskern.ops.fftconv import fft_conv

    if k is None:
        k = self.filter(L)
    k = k[0] if type(k) is tuple else k
    if x.dim() != 3 or k.dim() != 2 or bias is None or k.shape[-1] != x.shape[-1]:
        return self._omicskern_original_forward(x, L, k=k, bias=bias, *args, **kwargs)
    return fft_conv(x, k, bias, causal=True, backend=self._omicskern_backend)


def accelerate(model: nn.Module, *, backend: str | None = None, quiet: bool = False) -> AccelerateReport:
    """Swap the attention / long-convolution internals of a recognized model for omicskern's, in place.

    Args:
        model: a transformers ``BertModel``/``BertForMaskedLM`` (Geneformer), ``EsmModel``/
            ``EsmForMaskedLM`` (NT v1, ESM-2), or DNABERT-2's / HyenaDNA's remote-code model.
        backend: backend for every patched op (attention, or fft_conv for HyenaDNA); None = best available.
        quiet: no warning when the model is not recognized.
    Returns:
        :class:`AccelerateReport`; the model keeps its weights and API, its outputs agree with
        the original within the op's tolerance (positions of padded queries excepted, which
        omicskern's attention sets to 0).

    Example:
        >>> report = accelerate(hf_model); print(report)
    """
    name = type(model).__name__
    patched = _patch_dnabert2(model, backend)
    if patched:
        rep = AccelerateReport(name, True, patched, backend, "DNABERT-2 remote code",
                               message="DNABERT-2 remote code: varlen ALiBi attention, no bias tensor")
    elif (patched := _patch_hyena(model, backend)):
        rep = AccelerateReport(name, True, patched, backend, "HyenaDNA remote code",
                               message="HyenaDNA remote code: HyenaFilter long convolutions use omicskern fft_conv")
    elif not _is_hf(model):
        rep = AccelerateReport(name, False, message="not a transformers PreTrainedModel; omicskern patches "
                                                    "BertModel/BertForMaskedLM, EsmModel/EsmForMaskedLM and "
                                                    "DNABERT-2's/HyenaDNA's remote-code models")
    else:
        mtype = getattr(model.config, "model_type", None)
        targets = [n for n, m in model.named_modules() if type(m).__name__ in _SUPPORTED.get(mtype, ())]
        if mtype not in _SUPPORTED or not targets:
            rep = AccelerateReport(name, False, message=f"model_type {mtype!r} with no recognized attention "
                                                        f"modules (supported: {', '.join(_SUPPORTED)}, DNABERT-2 "
                                                        "and HyenaDNA remote code)")
        elif not model._can_set_attn_implementation():
            rep = AccelerateReport(name, False, message="this transformers version does not dispatch its attention "
                                                        "through AttentionInterface")
        else:
            _register()
            previous = model.config._attn_implementation
            for n, m in model.named_modules():  # the backend choice lives on each patched module
                if n in targets:
                    m._omicskern_backend = backend
            model.set_attn_implementation(IMPL)
            rep = AccelerateReport(name, True, targets, backend, previous,
                                   message="custom 4-D masks, cross-attention and KV caches fall back to "
                                           "transformers' SDPA")
    if not rep.recognized and not quiet:
        warnings.warn(str(rep), stacklevel=2)
    return rep


def restore(model: nn.Module, implementation: str = "sdpa") -> None:
    """Undo :func:`accelerate`: remove the patched forwards (remote-code models) or switch a
    transformers BERT/ESM back to its attention ``implementation``."""
    undone = False
    for m in model.modules():
        if "forward" in m.__dict__ and getattr(m.__dict__["forward"], "__func__", None) in (
                _dnabert2_self_attention_forward, _dnabert2_encoder_forward, _hyena_filter_forward):
            del m.forward
            undone = True
    if not undone and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)


def from_hf(model: nn.Module, *, dtype=None, device=None) -> nn.Module:
    """Convert a loaded transformers model into the omicskern class with the same weights.

    The model registry decides (each class's ``converts_hf``): DNABERT-2's fused ``Wqkv`` (remote
    code) -> ``DNABERT2``; ``model_type == "esm"`` or an NT-v2 remote config ->
    ``NucleotideTransformer``; HyenaDNA remote classes (``hyena.backbone.*``/``backbone.*`` keys) ->
    ``HyenaDNA``; plain ``BertModel``/``BertForMaskedLM`` -> ``Geneformer``.
    Raises ``TypeError`` for anything else.
    """
    from omicskern.models.registry import REGISTRY

    cfg = getattr(model, "config", None)
    if cfg is None:
        raise TypeError(f"from_hf: {type(model).__name__} has no .config; expected a transformers model")
    d = cfg.to_dict()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    dtype = dtype if dtype is not None else next(model.parameters()).dtype
    device = device if device is not None else next(model.parameters()).device
    for entry in REGISTRY.values():  # registry order: the most specific first (DNABERT-2 before BERT)
        cls = entry.cls
        if cls.converts_hf(d, sd):
            return cls.from_state_dict(sd, d, source=type(model).__name__, dtype=dtype, device=device)
    raise TypeError(f"from_hf: {type(model).__name__} (model_type {d.get('model_type')!r}) is not a model omicskern "
                    f"can convert (registered: {', '.join(REGISTRY)})")


__all__ = ["accelerate", "from_hf", "restore", "AccelerateReport"]
