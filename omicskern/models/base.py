"""The one model interface: every omicskern model class derives from :class:`OmicsModel`.

A model pairs with its tokenizer (:meth:`OmicsModel.get_tokenizer`) and consumes the one batch type
(:class:`omicskern.batch.Batch`), ragged, with no padding anywhere:

=====================  ==============================================================================
``from_pretrained``    ``(path, *, device=None, dtype=None)``: strict load of a local checkpoint folder
``from_state_dict``    ``(state_dict, config, *, device=None, dtype=None)``
``config``             the model's config dataclass; ``max_length``: most tokens per row
``kind``               ``"masked_lm"``, ``"causal_lm"`` or ``"cell"``
``forward``            ``(batch)`` -> :class:`ModelOutput` with ragged ``[T, C]`` states; the padded
                       ``(input_ids [B, L], attention_mask)`` form keeps the reference semantics
``embed``              ``(batch, pooling="mean", layer=None)`` -> :class:`EmbedOutput`
``token_logits``       ``(batch)`` -> ``[T, V]`` (models with an LM / MLM head)
``set_backend``        ``(**ops)``, the op names as keywords (``attention=``, ``fft_conv=``, ...)
``get_tokenizer``      the omicskern tokenizer configured exactly as the checkpoint expects
=====================  ==============================================================================

Pooling names are shared: ``mean`` (over the row's tokens, fp32 accumulation), ``cls`` (first
token), ``last`` (last token), ``max`` (per-channel max); a model may add its own (DNABERT-2's
``pooler``) and may document which tokens ``mean`` leaves out (Geneformer: ``<cls>``/``<eos>``).
``layer`` indexes hidden states as transformers' ``hidden_states`` tuple does: 0 = embeddings,
``k`` = after block ``k``, -1 = the final output.

**Batch invariance.** An item's outputs from :meth:`forward`/:meth:`embed` on a :class:`Batch` are
the ones it gets alone, whatever it is batched with (to float tolerance): attention runs varlen,
causal convolutions run right-padded so real positions never see a pad.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from omicskern.batch import Batch, PaddedBatch
from omicskern.errors import CheckpointError
from omicskern.models._common import check_ids
from omicskern.ops.packing import row_ids

POOLINGS = ("mean", "cls", "last", "max")
KINDS = ("masked_lm", "causal_lm", "cell")


@dataclass
class ModelOutput:
    """What ``forward`` returns. Unused fields are ``None``.

    last_hidden_state: ``[T, C]`` for a :class:`Batch` (rows back to back, see ``cu_seqlens``), or
        ``[B, L, C]`` for the padded form (padded positions as each model documents).
    pooler_output: ``[N, C]`` where the model has a pooler.
    logits: ``[T, V]`` / ``[B, L, V]`` (LM head) when asked for.
    hidden_states: per-layer states, same layout as ``last_hidden_state``, when asked for.
    cu_seqlens: int32 ``[N + 1]`` row starts of the ragged layout (``None`` for padded outputs).
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple | None = None
    cu_seqlens: torch.Tensor | None = None

    def __getitem__(self, i):  # tuple-style access like transformers outputs: out[0]
        return [getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None][i]


@dataclass
class EmbedOutput:
    """What :meth:`OmicsModel.embed` returns.

    tokens: ``[T, C]`` per-token states of every row, back to back (ragged).
    pooled: ``[N, C]`` one vector per row.
    cu_seqlens: int32 ``[N + 1]``: row ``i``'s tokens are ``tokens[cu_seqlens[i]:cu_seqlens[i + 1]]``.
    pooling, layer: what was computed.

    ``tokens, pooled = model.embed(batch)`` unpacks.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    cu_seqlens: torch.Tensor
    pooling: str = "mean"
    layer: int = -1

    def __iter__(self):
        return iter((self.tokens, self.pooled))

    def __len__(self) -> int:
        return self.pooled.shape[0]

    def row(self, i: int) -> torch.Tensor:
        """``[L_i, C]``: the token states of row ``i``."""
        return self.tokens[int(self.cu_seqlens[i]):int(self.cu_seqlens[i + 1])]

    def to_padded(self, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``([N, L, C] right-padded states, [N, L] bool mask)``."""
        from omicskern.ops.packing import pad_packed

        out, mask, _ = pad_packed(self.tokens, self.cu_seqlens, fill=fill)
        return out, mask


def as_tensor(x, *, device=None, name: str = "input") -> torch.Tensor:
    """numpy arrays, lists and tensors -> a tensor on ``device`` (numpy is accepted wherever tensors are)."""
    if isinstance(x, torch.Tensor):
        return x if device is None else x.to(device)
    if isinstance(x, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(x), device=device)
    raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")


def pool_rows(h: torch.Tensor, cu: torch.Tensor, pooling: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``[T, C]`` ragged states -> ``[N, C]`` by one of :data:`POOLINGS` (mean in fp32; ``weights``
    ``[T]`` bool restricts ``mean``/``max`` to selected tokens)."""
    cu = cu.long()
    n, t = cu.numel() - 1, h.shape[0]
    lengths = cu[1:] - cu[:-1]
    if n and bool((lengths == 0).any()):
        i = int(torch.nonzero(lengths == 0)[0])
        raise ValueError(f"row {i} has no tokens; there is nothing to pool")
    if pooling == "cls":
        return h[cu[:-1]]
    if pooling == "last":
        return h[cu[1:] - 1]
    rid = row_ids(cu, t)
    if weights is not None:
        keep = weights.to(device=h.device, dtype=torch.bool)
        cnt = torch.zeros(n, device=h.device, dtype=torch.long).index_add_(0, rid, keep.long())
        if n and bool((cnt == 0).any()):
            i = int(torch.nonzero(cnt == 0)[0])
            raise ValueError(f"row {i} has no token left to pool after dropping special tokens")
        h, rid = h[keep], rid[keep]
    if pooling == "mean":
        s = torch.zeros(n, h.shape[1], device=h.device, dtype=torch.float32).index_add_(0, rid, h.float())
        c = torch.zeros(n, device=h.device, dtype=torch.float32).index_add_(0, rid, torch.ones_like(rid, dtype=torch.float32))
        return (s / c[:, None]).to(h.dtype)
    if pooling == "max":
        out = torch.full((n, h.shape[1]), float("-inf"), device=h.device, dtype=h.dtype)
        return out.scatter_reduce_(0, rid[:, None].expand(-1, h.shape[1]), h, "amax", include_self=True)
    raise ValueError(f"unknown pooling {pooling!r}")


class OmicsModel(nn.Module):
    """Base class of every omicskern model (see the module docstring for the interface).

    A subclass sets the class attributes below and implements ``_encode`` (ragged tensors in,
    ``[T, C]`` states out), ``forward_padded`` (the reference's padded semantics), ``_lm_head``
    when it has one, ``max_length``, ``_tokenizer`` and the classmethods ``_config_from_dict``,
    ``_build`` (state dict + config -> loaded model) and ``matches`` (registry detection).
    """

    #: registry name, e.g. "dnabert2"
    model_type: ClassVar[str] = ""
    #: "masked_lm", "causal_lm" or "cell"
    kind: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    #: the op names ``set_backend`` takes as keywords
    ops: ClassVar[tuple[str, ...]] = ()
    #: model-specific pooling names beyond :data:`POOLINGS`
    extra_poolings: ClassVar[tuple[str, ...]] = ()
    #: the hidden-state index ``embed`` uses by default
    default_layer: ClassVar[int] = -1
    #: weight files ``from_pretrained`` looks for, in order
    weight_files: ClassVar[tuple[str, ...]] = ("model.safetensors", "pytorch_model.bin")

    #: rows longer than ``max_length`` raise (learned positions, a filter of that length); False
    #: where the positions extrapolate (ALiBi, rotary) and ``max_length`` is the trained length
    max_length_is_hard: ClassVar[bool] = True

    #: True where a batch runs padded to its longest row internally (causal convolutions), so
    #: token budgets (``Batch.plan(padded=True)``) count rows x longest row
    pads_rows: ClassVar[bool] = False

    #: the checkpoint folder the model came from (``None`` after ``from_state_dict``)
    source_path: Path | None = None

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, *, device=None, dtype=None, **kwargs) -> "OmicsModel":
        """Strict load of a local checkpoint folder (``config.json`` + weights): a missing,
        unexpected or wrong-shape key raises :class:`~omicskern.errors.CheckpointError` naming it."""
        from omicskern.models._loading import find_weights, read_config, read_state_dict

        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{cls.__name__}.from_pretrained: {path} does not exist")
        config = cls._config_from_dict(read_config(path))
        wfile = find_weights(path, cls.weight_files)
        model = cls._build(read_state_dict(wfile), config, source=str(wfile), device=device, dtype=dtype,
                           folder=path, **kwargs)
        model.source_path = path if path.is_dir() else path.parent
        return model

    @classmethod
    def from_state_dict(cls, state_dict: dict, config, *, device=None, dtype=None,
                        source: str = "state_dict") -> "OmicsModel":
        """A model from tensors (checkpoint key names) and a config (the config dataclass or a
        ``config.json`` dict); as strict as :meth:`from_pretrained`."""
        if isinstance(config, dict):
            config = cls._config_from_dict(config)
        if not isinstance(config, cls.config_class):
            raise TypeError(f"{cls.__name__}.from_state_dict: config must be a {cls.config_class.__name__} "
                            f"or a config.json dict, got {type(config).__name__}")
        return cls._build(dict(state_dict), config, source=source, device=device, dtype=dtype, folder=None)

    @classmethod
    def _config_from_dict(cls, d: dict):
        return cls.config_class.from_dict(d)

    @classmethod
    def _build(cls, sd: dict, config, *, source: str, device, dtype, folder: Path | None, **kwargs) -> "OmicsModel":
        raise NotImplementedError

    @classmethod
    def matches(cls, config: dict, folder: Path) -> bool:
        """True when ``config.json`` (and the folder's files) are this model type's."""
        return False

    @classmethod
    def converts_hf(cls, config: dict, state_dict: dict) -> bool:
        """True when a loaded ``transformers`` model (its config dict and state dict) is this type's."""
        return False

    # -- interface -------------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        """The most tokens per row the model takes (positions, or the filter length)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def get_tokenizer(self, **kwargs):
        """The omicskern tokenizer configured as the checkpoint expects: the tokenizer files of the
        checkpoint folder, else the model's released default. A missing file raises naming it."""
        return self._tokenizer(self.source_path, **kwargs)

    def _tokenizer(self, folder: Path | None, **kwargs):
        raise NotImplementedError

    def set_backend(self, **ops: str | None) -> "OmicsModel":
        """Pin op backends by op name (``None`` = best available), e.g.
        ``model.set_backend(attention="sdpa")``; ops not named keep their choice. Unknown op names
        raise. A named backend that can't run raises when the op runs, with the install hint."""
        bad = [k for k in ops if k not in self.ops]
        if bad:
            raise TypeError(f"{type(self).__name__}.set_backend: unknown op {', '.join(map(repr, bad))}; "
                            f"this model's ops: {', '.join(self.ops)}")
        chosen = dict(self.backends)
        chosen.update(ops)
        self._set_backends(chosen)
        self._backends = chosen
        return self

    @property
    def backends(self) -> dict:
        """The backend pinned for each op (``None`` = best available)."""
        return dict(getattr(self, "_backends", None) or {k: None for k in self.ops})

    def _set_backends(self, ops: dict) -> None:
        raise NotImplementedError

    def forward(self, batch, attention_mask=None, **kwargs) -> ModelOutput:
        """A :class:`~omicskern.batch.Batch` -> :class:`ModelOutput` with ragged ``[T, C]`` states
        (``return_logits=True`` adds ``[T, V]`` logits, ``output_hidden_states=True`` every layer).
        Padded ``(input_ids [B, L], attention_mask [B, L])`` tensors or numpy arrays, or a
        :class:`~omicskern.batch.PaddedBatch`: the reference's padded semantics (:meth:`forward_padded`)."""
        if isinstance(batch, Batch):
            if attention_mask is not None:
                raise TypeError("a Batch is ragged and takes no attention_mask")
            return self.forward_batch(batch, **kwargs)
        if isinstance(batch, PaddedBatch):
            if attention_mask is not None:
                raise TypeError("a PaddedBatch carries its own attention_mask")
            batch, attention_mask = batch.input_ids, batch.attention_mask
        ids = as_tensor(batch, device=self.device, name="input_ids")
        mask = None if attention_mask is None else as_tensor(attention_mask, device=self.device, name="attention_mask")
        return self.forward_padded(ids, mask, **kwargs)

    def forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       **kwargs) -> ModelOutput:
        raise NotImplementedError

    def forward_batch(self, batch: Batch, *, return_logits: bool = False,
                      output_hidden_states: bool = False) -> ModelOutput:
        ids, cu, max_len = self._prepare(batch)
        h, states = self._encode(ids, cu, max_len, output_hidden_states)
        logits = self._lm_head(h) if return_logits else None
        return ModelOutput(h, None, logits, None if states is None else tuple(states), cu)

    @torch.no_grad()
    def embed(self, batch, pooling: str = "mean", layer: int | None = None, attention_mask=None) -> EmbedOutput:
        """Per-token states (ragged ``[T, C]``) and pooled vectors ``[N, C]`` of a batch.

        Args:
            batch: a :class:`~omicskern.batch.Batch` (a tokenizer's ``padding=False`` output, or a
                cell tokenizer's), or a :class:`~omicskern.batch.PaddedBatch` / padded
                ``input_ids`` + ``attention_mask``, whose real tokens are taken as rows.
            pooling: ``mean``, ``cls``, ``last``, ``max`` or a model-specific name.
            layer: hidden-state index (0 = embeddings, -1 = final output); ``None``: the model's
                default (:attr:`default_layer`).
        """
        b = self._to_batch(batch, attention_mask)
        if pooling not in POOLINGS + self.extra_poolings:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS + self.extra_poolings)}, got {pooling!r}")
        layer = self.default_layer if layer is None else int(layer)
        ids, cu, max_len = self._prepare(b)
        n_states = self._num_states()
        if not -n_states <= layer < n_states:
            raise ValueError(f"layer must be in [{-n_states}, {n_states - 1}] ({n_states} hidden states), got {layer}")
        h, states = self._encode(ids, cu, max_len, layer not in (-1, n_states - 1))
        if states is not None:
            h = states[layer]
        pooled = self._pool(h, ids, cu, pooling)
        return EmbedOutput(h, pooled, cu, pooling, layer)

    @torch.no_grad()
    def token_logits(self, batch, attention_mask=None) -> torch.Tensor:
        """``[T, V]`` LM / MLM logits of every token of a batch (ragged, rows back to back)."""
        ids, cu, max_len = self._prepare(self._to_batch(batch, attention_mask))
        h, _ = self._encode(ids, cu, max_len, False)
        return self._lm_head(h)

    # -- pieces for subclasses -------------------------------------------------------------------
    def _encode(self, ids: torch.Tensor, cu: torch.Tensor, max_len: int, keep_states: bool):
        """ids int64 ``[T]``, cu int32 ``[N+1]`` -> (final ``[T, C]``, all hidden states or None)."""
        raise NotImplementedError

    def _lm_head(self, h: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"this {type(self).__name__} has no LM head")

    def _num_states(self) -> int:
        return self.config.num_hidden_layers + 1

    def _pool(self, h, ids, cu, pooling: str) -> torch.Tensor:
        return pool_rows(h, cu, pooling)

    def _vocab_size(self) -> int:
        return self.config.vocab_size

    def _to_batch(self, batch, attention_mask=None) -> Batch:
        if isinstance(batch, Batch):
            return batch
        if isinstance(batch, PaddedBatch):
            return batch.to_ragged()
        ids = as_tensor(batch, name="input_ids")
        if ids.dim() == 1:
            raise TypeError("a flat [T] id array needs its row boundaries: pass a Batch(input_ids, cu_seqlens)")
        mask = (torch.ones_like(ids, dtype=torch.bool) if attention_mask is None
                else as_tensor(attention_mask, name="attention_mask").bool().to(ids.device))
        if tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} does not match input_ids shape "
                             f"{tuple(ids.shape)}")
        lengths = mask.sum(1)
        cu = torch.zeros(ids.shape[0] + 1, dtype=torch.int32, device=ids.device)
        cu[1:] = torch.cumsum(lengths, 0)
        return Batch(ids[mask], cu)

    def _prepare(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """A Batch -> (ids int64 on the model's device, int32 cu_seqlens, longest row), checked."""
        if not isinstance(batch, Batch):
            raise TypeError(f"expected an omicskern.batch.Batch, got {type(batch).__name__}")
        tb = batch.to_torch(self.device)
        ids, cu = tb.input_ids, tb.cu_seqlens.to(torch.int32)
        if int(cu[-1]) != ids.numel():
            raise ValueError(f"cu_seqlens end at {int(cu[-1])} but input_ids holds {ids.numel()} tokens")
        check_ids(ids, self._vocab_size(), "input_ids", dims=1, cu_seqlens=cu)
        lengths = cu[1:] - cu[:-1]
        max_len = int(lengths.max()) if lengths.numel() else 0
        if max_len > self.max_length and self.max_length_is_hard:
            row = int(torch.argmax(lengths))
            raise ValueError(f"row {row} has {max_len} tokens, more than this model's max_length="
                             f"{self.max_length}; truncate it when tokenizing (truncation=True, max_length=...)")
        return ids.long(), cu, max_len

    def extra_repr(self) -> str:
        return f"model_type={self.model_type!r}, kind={self.kind!r}"


def check_device(device) -> None:
    """A clear error for a device this machine does not have (instead of torch's AssertionError)."""
    if device is None:
        return
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={str(device)!r}, but CUDA is not available here (torch {torch.__version__}, "
                           f"cuda build: {torch.version.cuda or 'none'}); use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"device={str(device)!r}, but only {torch.cuda.device_count()} CUDA device(s) exist")


def find_file(folder: Path | None, patterns: tuple[str, ...], *, search_parents: bool = False) -> Path | None:
    """The first file in ``folder`` (and optionally its parent and ``parent/geneformer``) matching
    one of the glob ``patterns``, or None."""
    if folder is None:
        return None
    dirs = [Path(folder)]
    if search_parents:
        dirs += [Path(folder).parent, Path(folder).parent / "geneformer"]
    for d in dirs:
        for pat in patterns:
            hits = sorted(d.glob(pat)) if d.is_dir() else []
            if hits:
                return hits[0]
    return None


__all__ = ["OmicsModel", "ModelOutput", "EmbedOutput", "POOLINGS", "KINDS", "pool_rows"]
