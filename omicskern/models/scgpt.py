"""scGPT (``bowang-lab/scGPT``): the ``TransformerModel`` of a released checkpoint folder, run on
the binned-value tokenizer's ragged output without padding.

A released folder holds ``best_model.pt`` (a state dict with flash-attn ``FlashMHA`` names:
``transformer_encoder.layers.N.self_attn.Wqkv`` / ``out_proj``), ``args.json`` (``embsize``,
``nheads``, ``d_hid``, ``nlayers``, ``n_layers_cls``, ``pad_token``, ``pad_value``,
``input_emb_style``, ...) and ``vocab.json`` (gene symbol -> id). ``model.safetensors`` with the
same names loads too. Loading is strict: a missing, unexpected or wrong-shape key raises
:class:`~omicskern.errors.CheckpointError` naming it (scGPT's ``load_pretrained(strict=False)``
drops such keys silently).

What is computed, as scGPT's ``TransformerModel._encode`` (``pre_norm=False``):

* gene embedding then LayerNorm (``encoder.embedding``, ``encoder.enc_norm``);
* value embedding from ``input_emb_style``: ``"continuous"``: ``clamp(v, max=512)``, Linear(1, d),
  ReLU, Linear(d, d), LayerNorm; ``"category"``: ``Embedding(n_input_bins, d)`` (row
  ``pad_value`` is the padding row) on ``v.long()``, then LayerNorm;
* the two summed -- no positional encoding, no sqrt(d) scale -- then ``nlayers`` post-norm layers
  ``x = LN1(x + SA(x)); x = LN2(x + W2 relu(W1 x))`` (eps 1e-5) and no final norm.

Rows are ragged (``cu_seqlens``) and attention is the varlen op, so no position sees a pad and
no FLOP goes to padding. The cell embedding is the ``<cls>`` output of the last layer
(``pooling="cls"``, raw: scGPT's ``forward()["cell_emb"]``); ``pooling="cls_normalized"`` divides
it by its L2 norm as ``embed_data`` does (``adata.obsm["X_scGPT"]``). Per-gene states are
``embed(...).tokens``; :meth:`ScGPT.predict` gives the MLM expression output (``ExprDecoder``),
the MVC output and the classifier output as well.

Example:
    >>> model = ScGPT.from_pretrained("scGPT_human/")
    >>> cells = model.get_tokenizer().tokenize("cells.h5ad")              # <cls> + binned genes
    >>> emb = model.embed(cells, pooling="cls_normalized").pooled          # [N, 512], as embed_data
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from omicskern.batch import Batch, PaddedBatch
from omicskern.errors import CheckpointError
from omicskern.models._common import check_ids, check_mask, finish_load
from omicskern.models._loading import load_strict, read_state_dict
from omicskern.models.base import ModelOutput, OmicsModel, as_tensor, check_device, pool_rows
from omicskern.modules.bert import _Attn, set_attention_backend
from omicskern.ops.attention import attention
from omicskern.ops.packing import packing_from_mask

__all__ = ["ScGPT", "ScGPTConfig", "ScGPTOutput", "WEIGHT_FILES"]

#: the weight files of a scGPT folder, in the order they are looked for
WEIGHT_FILES = ("model.safetensors", "best_model.pt")
#: scGPT's ContinuousValueEncoder clamps values at this
MAX_VALUE = 512.0
INPUT_EMB_STYLES = ("continuous", "category")


@dataclass
class ScGPTConfig:
    """The ``args.json`` fields that shape the model (scGPT_human defaults) plus what the
    checkpoint's shapes say (``vocab_size``, ``n_cls``, the optional heads)."""

    vocab_size: int = 60697
    embsize: int = 512
    nheads: int = 8
    d_hid: int = 512
    nlayers: int = 12
    n_layers_cls: int = 3
    n_cls: int = 1
    dropout: float = 0.2
    pad_token: str = "<pad>"
    pad_value: int = -2
    mask_value: int = -1
    input_emb_style: str = "continuous"
    n_input_bins: int | None = None
    n_bins: int = 51
    cell_emb_style: str = "cls"
    max_seq_len: int = 1200
    do_mvc: bool = True
    explicit_zero_prob: bool = False
    #: args.json keys kept as they are (for the record; they do not change the math)
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict, where: str = "args.json") -> "ScGPTConfig":
        for f in ("embsize", "nheads", "d_hid", "nlayers"):
            if f not in d:
                raise CheckpointError(f"{where}: missing field {f!r} (a scGPT args.json has embsize, nheads, "
                                      "d_hid, nlayers, n_layers_cls, pad_token, pad_value, ...)")
        style = d.get("input_emb_style", "continuous")
        if style not in INPUT_EMB_STYLES:
            raise CheckpointError(f"{where}: input_emb_style {style!r} is not supported "
                                  f"(one of {', '.join(INPUT_EMB_STYLES)})")
        if d.get("cell_emb_style", "cls") not in ("cls", "avg-pool"):
            raise CheckpointError(f"{where}: cell_emb_style {d['cell_emb_style']!r} is not supported (cls, avg-pool)")
        if d.get("pre_norm"):
            raise CheckpointError(f"{where}: pre_norm=true is not supported (released checkpoints are post-norm)")
        if int(d["embsize"]) % int(d["nheads"]):
            raise CheckpointError(f"{where}: embsize {d['embsize']} is not a multiple of nheads {d['nheads']}")
        n_bins = int(d.get("n_bins", 51) or 51)
        n_input_bins = d.get("n_input_bins")
        if style == "category" and n_input_bins is None:
            n_input_bins = n_bins + 2  # scGPT's tutorials: n_bins + 2 (pad_value = n_bins, mask = n_bins + 1)
        known = set(cls.__dataclass_fields__) - {"extra"}
        return cls(vocab_size=int(d.get("vocab_size", cls.vocab_size)), embsize=int(d["embsize"]),
                   nheads=int(d["nheads"]), d_hid=int(d["d_hid"]), nlayers=int(d["nlayers"]),
                   n_layers_cls=int(d.get("n_layers_cls", 3)), n_cls=int(d.get("n_cls", 1)),
                   dropout=float(d.get("dropout", 0.2)), pad_token=str(d.get("pad_token", "<pad>")),
                   pad_value=int(d.get("pad_value", -2)), mask_value=int(d.get("mask_value", -1)),
                   input_emb_style=style, n_input_bins=None if n_input_bins is None else int(n_input_bins),
                   n_bins=n_bins, cell_emb_style=d.get("cell_emb_style", "cls"),
                   max_seq_len=int(d.get("max_seq_len", 1200) or 1200), do_mvc=bool(d.get("do_mvc", True)),
                   explicit_zero_prob=bool(d.get("explicit_zero_prob", False)),
                   extra={k: v for k, v in d.items() if k not in known})

    @property
    def head_dim(self) -> int:
        return self.embsize // self.nheads


# ---------------------------------------------------------------------------------------------
# modules, named as scGPT's (released) state dict names them


class _GeneEncoder(nn.Module):
    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.enc_norm = nn.LayerNorm(d)

    def forward(self, ids):
        return self.enc_norm(self.embedding(ids))


class _ContinuousValueEncoder(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.linear1 = nn.Linear(1, d)
        self.linear2 = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, v):
        x = torch.clamp(v.unsqueeze(-1), max=MAX_VALUE)
        return self.norm(self.linear2(torch.relu(self.linear1(x))))


class _CategoryValueEncoder(nn.Module):
    def __init__(self, n: int, d: int):
        super().__init__()
        self.embedding = nn.Embedding(n, d)
        self.enc_norm = nn.LayerNorm(d)

    def forward(self, v):
        return self.enc_norm(self.embedding(v.long()))


class _FlashMHA(_Attn):
    """flash-attn 1.x ``FlashMHA`` names: ``Wqkv`` rows are ``[q; k; v]``, heads contiguous
    (the same layout as ``nn.MultiheadAttention.in_proj_weight``)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.Wqkv = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x, cu_seqlens, max_seqlen):
        t = x.shape[0]
        q, k, v = self.Wqkv(x).view(t, 3, self.heads, self.head_dim).unbind(1)
        o = attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, backend=self.backend)
        return self.out_proj(o.reshape(t, -1))


class _EncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer(batch_first=True)`` / scGPT's ``FlashTransformerEncoderLayer``
    with ``norm_scheme="post"``, ReLU, eps 1e-5, on packed tokens ``[T, C]``."""

    def __init__(self, d: int, heads: int, d_hid: int):
        super().__init__()
        self.self_attn = _FlashMHA(d, heads)
        self.linear1 = nn.Linear(d, d_hid)
        self.linear2 = nn.Linear(d_hid, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x, cu_seqlens, max_seqlen):
        x = self.norm1(x + self.self_attn(x, cu_seqlens, max_seqlen))
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))


class _Stack(nn.Module):
    def __init__(self, c: ScGPTConfig):
        super().__init__()
        self.layers = nn.ModuleList([_EncoderLayer(c.embsize, c.nheads, c.d_hid) for _ in range(c.nlayers)])


def _mlp3(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, 1))


class _ExprDecoder(nn.Module):
    def __init__(self, d: int, explicit_zero_prob: bool):
        super().__init__()
        self.fc = _mlp3(d)
        self.zero_logit = _mlp3(d) if explicit_zero_prob else None

    def forward(self, h):
        pred = self.fc(h).squeeze(-1)
        zero = None if self.zero_logit is None else torch.sigmoid(self.zero_logit(h).squeeze(-1))
        return pred, zero


class _ClsDecoder(nn.Module):
    def __init__(self, d: int, n_cls: int, nlayers: int):
        super().__init__()
        self._decoder = nn.ModuleList()
        for _ in range(nlayers - 1):
            self._decoder.extend([nn.Linear(d, d), nn.ReLU(), nn.LayerNorm(d)])
        self.out_layer = nn.Linear(d, n_cls)

    def forward(self, x):
        for m in self._decoder:
            x = m(x)
        return self.out_layer(x)


class _MVCDecoder(nn.Module):
    """``arch_style="inner product"``: ``W(sigmoid(gene2query(gene_embs))) . cell_emb``."""

    def __init__(self, d: int, explicit_zero_prob: bool):
        super().__init__()
        self.gene2query = nn.Linear(d, d)
        self.W = nn.Linear(d, d, bias=False)
        self.W_zero_logit = nn.Linear(d, d) if explicit_zero_prob else None


class _Tokens(NamedTuple):
    """What ``_prepare`` hands ``_encode``: ids int64 ``[T]`` and their values float ``[T]``."""

    ids: torch.Tensor
    values: torch.Tensor


@dataclass
class ScGPTOutput:
    """:meth:`ScGPT.predict`: every output of scGPT's ``forward(..., CLS=True, MVC=True)``, ragged.

    cell_emb: ``[N, C]`` the ``<cls>`` output (raw); cell_emb_normalized: ``[N, C]`` divided by its
    L2 norm (``embed_data``'s output); gene_states: ``[T, C]`` last-layer states of every token;
    mlm_output: ``[T]`` ExprDecoder prediction (``<cls>``'s is computed and means nothing);
    mlm_zero_probs: ``[T]`` or None; mvc_output: ``[T]`` or None (no MVC head);
    cls_output: ``[N, n_cls]``; cu_seqlens: int32 ``[N + 1]``.
    """

    cell_emb: torch.Tensor
    cell_emb_normalized: torch.Tensor
    gene_states: torch.Tensor
    mlm_output: torch.Tensor
    mlm_zero_probs: torch.Tensor | None
    mvc_output: torch.Tensor | None
    cls_output: torch.Tensor
    cu_seqlens: torch.Tensor


def _rename(key: str) -> str:
    """PyTorch-path and flash-attn-2-wrapper names -> the released FlashMHA names (the tensors
    are the same; scGPT's load_pretrained maps the other way)."""
    key = key.replace(".self_attn._impl.", ".self_attn.")
    key = key.replace(".self_attn.in_proj_weight", ".self_attn.Wqkv.weight")
    key = key.replace(".self_attn.in_proj_bias", ".self_attn.Wqkv.bias")
    return key


class ScGPT(OmicsModel):
    """scGPT's ``TransformerModel`` (see the module docstring) behind the OmicsModel interface.

    Batches are the :class:`~omicskern.tokenizers.BinnedValueTokenizer`'s (``get_tokenizer()``):
    ``input_ids`` ``<cls>`` then genes, ``values`` the bins (``pad_value`` at ``<cls>``). A batch
    without ``values`` is an error. Poolings: ``cls`` (the cell embedding, raw),
    ``cls_normalized`` (L2-normalised, what ``embed_data`` returns), ``mean``/``max`` over every
    token of the row (``<cls>`` included, scGPT's ``avg-pool``), ``last``. The default
    ``layer=-1`` is the last layer's output (there is no final norm).

    ``max_length`` is ``args.json``'s ``max_seq_len`` (1200, ``<cls>`` included): the tokenizer
    samples longer cells down to it as scGPT's embedding path does; the model has no positions and
    runs longer rows too (``max_length_is_hard=False``).

    The padded form: ``forward(input_ids [B, L], attention_mask [B, L] (True = real), values=[B, L])``
    (scGPT's ``src_key_padding_mask`` is ``~attention_mask``), states 0 at padding, as scGPT's
    eval fast path returns them.
    """

    model_type = "scgpt"
    kind = "cell"
    config_class = ScGPTConfig
    ops = ("attention",)
    extra_poolings = ("cls_normalized",)
    default_layer = -1
    weight_files = WEIGHT_FILES
    max_length_is_hard = False

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        c = self.config = config
        self.encoder = _GeneEncoder(c.vocab_size, c.embsize)
        if c.input_emb_style == "continuous":
            self.value_encoder = _ContinuousValueEncoder(c.embsize)
        else:
            if not c.n_input_bins or c.n_input_bins < 1:
                raise CheckpointError("input_emb_style 'category' needs n_input_bins >= 1")
            self.value_encoder = _CategoryValueEncoder(c.n_input_bins, c.embsize)
        self.transformer_encoder = _Stack(c)
        self.decoder = _ExprDecoder(c.embsize, c.explicit_zero_prob)
        self.cls_decoder = _ClsDecoder(c.embsize, c.n_cls, c.n_layers_cls)
        self.mvc_decoder = _MVCDecoder(c.embsize, c.explicit_zero_prob) if c.do_mvc else None
        #: gene symbol -> id (``vocab.json``; ``None`` after ``from_state_dict`` until ``get_tokenizer(vocab=)``)
        self.vocab: dict | None = None
        self.cls_token_id: int | None = None
        self.pad_token_id: int | None = None

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, *, device=None, dtype=None, weights: str | None = None) -> "ScGPT":
        """A released scGPT folder: ``args.json`` + ``vocab.json`` + ``model.safetensors`` or
        ``best_model.pt`` (``weights=`` names another file of the folder). Strict; the vocabulary
        must match the gene embedding and hold ``<cls>`` and ``pad_token``."""
        folder = Path(path)
        if not folder.exists():
            raise CheckpointError(f"ScGPT.from_pretrained: {folder} does not exist")
        if not folder.is_dir():
            raise CheckpointError(f"ScGPT.from_pretrained: {folder} is a file; pass the checkpoint folder "
                                  "(args.json, vocab.json, best_model.pt)")
        check_device(device)
        args = read_args(folder)
        vocab_file = folder / "vocab.json"
        if not vocab_file.is_file():
            raise CheckpointError(f"{folder}: no vocab.json (scGPT's gene symbol -> id table)")
        if weights is not None:
            wfile = folder / weights
            if not wfile.is_file():
                raise CheckpointError(f"{folder}: no weight file {weights!r}")
        else:
            found = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
            if not found:
                raise CheckpointError(f"{folder}: no weights (expected {' or '.join(WEIGHT_FILES)})")
            wfile = found[0]
        sd = read_state_dict(wfile)
        model = cls._build(sd, args, source=str(wfile), device=device, dtype=dtype, folder=folder)
        model.source_path = folder
        return model

    @classmethod
    def from_state_dict(cls, state_dict: dict, config, *, device=None, dtype=None, source: str = "state_dict",
                        vocab=None) -> "ScGPT":
        """Tensors (released or PyTorch-path names) + an ``args.json`` dict or :class:`ScGPTConfig`;
        ``vocab`` (dict or ``vocab.json``) is optional here (``get_tokenizer(vocab=...)`` later)."""
        if isinstance(config, ScGPTConfig):
            config = {**{k: getattr(config, k) for k in config.__dataclass_fields__ if k != "extra"}, **config.extra}
        if not isinstance(config, dict):
            raise TypeError(f"ScGPT.from_state_dict: config must be a ScGPTConfig or an args.json dict, "
                            f"got {type(config).__name__}")
        model = cls._build(dict(state_dict), config, source=source, device=device, dtype=dtype, folder=None)
        if vocab is not None:
            model._set_vocab(vocab, where="vocab")
        return model

    @classmethod
    def _build(cls, sd, config, *, source, device, dtype, folder, **kwargs) -> "ScGPT":
        sd = {_rename(k): v for k, v in sd.items()}
        args = dict(config) if isinstance(config, dict) else {}
        emb = sd.get("encoder.embedding.weight")
        if emb is None:
            raise CheckpointError(f"1 keys missing in {source}: encoder.embedding.weight")
        # the checkpoint's shapes decide what scGPT's constructor arguments decided
        args.setdefault("vocab_size", int(emb.shape[0]))
        if "cls_decoder.out_layer.weight" in sd:
            args["n_cls"] = int(sd["cls_decoder.out_layer.weight"].shape[0])
        args["do_mvc"] = any(k.startswith("mvc_decoder.") for k in sd)
        args["explicit_zero_prob"] = any(k.startswith("decoder.zero_logit.") for k in sd)
        if args.get("input_emb_style") == "category" and "value_encoder.embedding.weight" in sd:
            args.setdefault("n_input_bins", int(sd["value_encoder.embedding.weight"].shape[0]))
        where = str(Path(folder) / "args.json") if folder is not None else "config"
        c = ScGPTConfig.from_dict(args, where=where)
        unsupported = sorted({k.split(".")[0] for k in sd} & {"batch_encoder", "dsbn", "bn",
                                                             "grad_reverse_discriminator"})
        if unsupported:
            raise CheckpointError(f"{source}: keys of {', '.join(unsupported)} (batch labels / domain batch norm / "
                                  "adversarial heads) are not supported: omicskern's scGPT embeds without batch labels")
        if any(k.startswith("mvc_decoder.fc1.") for k in sd):
            raise CheckpointError(f"{source}: an MVC decoder of arch_style 'concat query'/'sum query' "
                                  "(mvc_decoder.fc1.*) is not supported ('inner product' only)")
        model = cls(c)
        load_strict(model, sd, source=source)
        if folder is not None:
            model._set_vocab(Path(folder) / "vocab.json", where=str(Path(folder) / "vocab.json"))
        return finish_load(model, dtype, device)

    def _set_vocab(self, vocab, where: str) -> None:
        from omicskern.io.gene_dict import load_scgpt_vocab

        v = load_scgpt_vocab(vocab)
        n = self.config.vocab_size
        if len(v) != n:
            raise CheckpointError(f"{where}: {len(v):,} entries, but the checkpoint's gene embedding "
                                  f"(encoder.embedding.weight) has {n:,} rows: the vocabulary is not this model's")
        ids = list(v.values())
        if min(ids) < 0 or max(ids) >= n:
            raise CheckpointError(f"{where}: ids must be in [0, {n}), found {min(ids)}..{max(ids)}")
        for tok in ("<cls>", self.config.pad_token):
            if tok not in v:
                raise CheckpointError(f"{where}: no {tok!r} token (scGPT's embedding path puts <cls> first and pads "
                                      f"with {self.config.pad_token!r}); this vocabulary is not a scGPT model's")
        self.vocab = v
        self.cls_token_id = v["<cls>"]
        self.pad_token_id = v[self.config.pad_token]

    @classmethod
    def matches(cls, config: dict, folder) -> bool:
        folder = Path(folder)
        return ((folder / "args.json").is_file() and (folder / "vocab.json").is_file()
                and all(k in config for k in ("embsize", "nheads", "nlayers")))

    @property
    def max_length(self) -> int:
        return self.config.max_seq_len

    def _num_states(self) -> int:
        return self.config.nlayers + 1

    def _tokenizer(self, folder, *, vocab=None, **kwargs):
        """:class:`~omicskern.tokenizers.BinnedValueTokenizer` as scGPT's ``embed_data`` builds input:
        ``<cls>`` first with value ``pad_value``; the cell's nonzero in-vocabulary genes in column
        order; per-cell binning of the raw values with 51 bins (the collator's hard-coded n_bins);
        at most ``max_seq_len`` tokens, longer cells sampled keeping ``<cls>`` (binning first, over
        all genes, as the collator does). Deterministic by default (``tie_break="deterministic"``,
        ``truncate="sample"`` seeded by ``seed``): same input, same tokens. ``tie_break="random",
        seed=s`` reproduces scGPT's random tie-break after ``np.random.seed(s)`` in one process,
        ``truncate="randperm"`` its collator's ``torch.randperm`` sampling after
        ``torch.manual_seed(s)``. Other keywords go to the tokenizer."""
        from omicskern.tokenizers import BinnedValueTokenizer

        if vocab is not None:
            self._set_vocab(vocab, where=str(vocab) if not isinstance(vocab, dict) else "vocab")
        if self.vocab is None:
            raise FileNotFoundError("ScGPT.get_tokenizer: the model was not loaded from a folder, so there is no "
                                    "vocab.json: pass get_tokenizer(vocab='vocab.json')")
        kw = dict(n_bins=51, max_length=self.config.max_seq_len, truncate="sample", tie_break="deterministic",
                  cls_token="<cls>", pad_token=self.config.pad_token, pad_value=self.config.pad_value,
                  cls_value=self.config.pad_value, append_cls=True)
        kw.update(kwargs)
        return BinnedValueTokenizer(self.vocab, **kw)

    def _set_backends(self, ops: dict) -> None:
        set_attention_backend(self, ops["attention"])

    # -- compute ---------------------------------------------------------------------------------
    def _prepare(self, batch: Batch):
        ids, cu, max_len = super()._prepare(batch)
        if batch.values is None:
            raise ValueError("scGPT needs per-token values (the binned expression): this Batch has no values; "
                             "tokenize with model.get_tokenizer() (a BinnedValueTokenizer)")
        values = torch.as_tensor(batch.values).to(self.device)
        if values.shape != ids.shape:
            raise ValueError(f"values has shape {tuple(values.shape)} but input_ids has {tuple(ids.shape)}")
        return _Tokens(ids, self._check_values(values, cu)), cu, max_len

    def _check_values(self, values: torch.Tensor, cu: torch.Tensor | None = None) -> torch.Tensor:
        bad = ~torch.isfinite(values.float())
        where = "values"
        if self.config.input_emb_style == "category":
            bad |= (values < 0) | (values >= self.config.n_input_bins) | (values != values.round())
            where = f"values (category bins must be whole numbers in [0, {self.config.n_input_bins}))"
        if bool(bad.any()):
            t = int(torch.nonzero(bad.reshape(-1))[0])
            at = f"[{t}]"
            if cu is not None:
                row = int(torch.searchsorted(cu[1:].long(), torch.tensor(t, device=cu.device), right=True))
                at = f"[{t}] (row {row}, position {t - int(cu[row])})"
            raise ValueError(f"{where}{at} = {float(values.reshape(-1)[t])} cannot be embedded")
        return values

    def _embed_tokens(self, ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gene-encoder output, its sum with the value embedding) for ``[T]`` tokens."""
        g = self.encoder(ids)
        v = values.to(g.dtype) if self.config.input_emb_style == "continuous" else values
        return g, g + self.value_encoder(v)

    def _run(self, ids, values, cu, max_len, keep_states):
        _, x = self._embed_tokens(ids, values)
        states = [x] if keep_states else None
        for layer in self.transformer_encoder.layers:
            x = layer(x, cu, max_len)
            if keep_states:
                states.append(x)
        return x, states

    def _encode(self, tokens: _Tokens, cu, max_len, keep_states):
        return self._run(tokens.ids, tokens.values, cu, max_len, keep_states)

    def _lm_head(self, h):
        """``[T, 1]``: the ExprDecoder's expression prediction (scGPT's ``mlm_output``)."""
        return self.decoder(h)[0].unsqueeze(-1)

    def _pool(self, h, tokens, cu, pooling):
        if pooling in ("cls", "cls_normalized"):
            ids = tokens.ids if isinstance(tokens, _Tokens) else tokens
            starts = cu[:-1].long()
            if self.cls_token_id is not None and starts.numel() and bool((ids[starts] != self.cls_token_id).any()):
                n = int(torch.nonzero(ids[starts] != self.cls_token_id)[0])
                raise ValueError(f"pooling={pooling!r}: cell {n} does not start with <cls> (id {self.cls_token_id}); "
                                 "tokenize with model.get_tokenizer()")
            emb = pool_rows(h, cu, "cls")
            return _l2_normalize(emb) if pooling == "cls_normalized" else emb
        return pool_rows(h, cu, pooling)

    @torch.no_grad()
    def predict(self, batch) -> ScGPTOutput:
        """Every output of scGPT's ``forward(src, values, mask, CLS=True, MVC=True)`` for a ragged
        batch (see :class:`ScGPTOutput`)."""
        tokens, cu, max_len = self._prepare(self._to_batch(batch))
        gene_embs, x = self._embed_tokens(tokens.ids, tokens.values)
        for layer in self.transformer_encoder.layers:
            x = layer(x, cu, max_len)
        cell = pool_rows(x, cu, "cls") if self.config.cell_emb_style == "cls" else pool_rows(x, cu, "mean")
        mlm, zero = self.decoder(x)
        mvc = None
        if self.mvc_decoder is not None:
            q = torch.sigmoid(self.mvc_decoder.gene2query(gene_embs))
            rid = torch.repeat_interleave(torch.arange(len(cu) - 1, device=x.device), (cu[1:] - cu[:-1]).long())
            mvc = (self.mvc_decoder.W(q) * cell[rid]).sum(-1)
        return ScGPTOutput(cell, _l2_normalize(cell), x, mlm, zero, mvc, self.cls_decoder(cell), cu)

    def forward(self, batch, attention_mask=None, values=None, **kwargs) -> ModelOutput:
        """A ragged :class:`~omicskern.batch.Batch` (with ``values``) -> ragged :class:`ModelOutput`
        (``return_logits=True``: ``[T, 1]`` expression predictions); a
        :class:`~omicskern.batch.PaddedBatch` or padded ``(input_ids, attention_mask, values)`` ->
        :meth:`forward_padded`."""
        if isinstance(batch, PaddedBatch):
            if attention_mask is not None or values is not None:
                raise TypeError("a PaddedBatch carries its own attention_mask and values")
            return self.forward_padded(batch.input_ids, batch.attention_mask, batch.values, **kwargs)
        if isinstance(batch, Batch):
            if values is not None:
                raise TypeError("a Batch carries its own values")
            return super().forward(batch, attention_mask, **kwargs)
        return self.forward_padded(batch, attention_mask, values, **kwargs)

    def forward_padded(self, input_ids, attention_mask=None, values=None, *, return_logits: bool = False,
                       output_hidden_states: bool = False) -> ModelOutput:
        """Padded ``input_ids``/``values`` ``[B, L]`` (tensors or numpy), ``attention_mask`` True =
        real token: ``last_hidden_state`` ``[B, L, C]`` (0 at padding), ``pooler_output`` the raw
        cell embedding ``[B, C]``, ``logits`` ``[B, L, 1]`` expression predictions when asked."""
        ids = as_tensor(input_ids, device=self.device, name="input_ids")
        if values is None:
            raise ValueError("scGPT needs values= (the binned expression, [B, L]) with input_ids")
        vals = as_tensor(values, device=self.device, name="values")
        check_ids(ids, self.config.vocab_size)
        if tuple(vals.shape) != tuple(ids.shape):
            raise ValueError(f"values shape {tuple(vals.shape)} does not match input_ids shape {tuple(ids.shape)}")
        mask = check_mask(None if attention_mask is None else as_tensor(attention_mask, device=self.device,
                                                                       name="attention_mask"), ids)
        pk = packing_from_mask(mask)
        v = self._check_values(pk.pack(vals))
        x, states = self._run(pk.pack(ids).long(), v, pk.cu_seqlens, pk.max_seqlen, output_hidden_states)
        hidden = pk.unpack(x)
        logits = pk.unpack(self._lm_head(x)) if return_logits else None
        hs = tuple(pk.unpack(s) for s in states) if output_hidden_states else None
        return ModelOutput(hidden, hidden[:, 0], logits, hs)


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / ||x||_2`` per row, the norm accumulated in float32 (embed_data: numpy float32)."""
    xf = x.float()
    return (xf / torch.linalg.vector_norm(xf, dim=-1, keepdim=True)).to(x.dtype)


def read_args(folder: Path) -> dict:
    """``args.json`` of a scGPT folder, with errors naming the file."""
    f = Path(folder) / "args.json"
    if not f.is_file():
        raise CheckpointError(f"{folder}: no args.json (a scGPT folder has args.json, vocab.json, best_model.pt)")
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{f}: expected a JSON object")
    return d


def scgpt_padded_reference(model: ScGPT, gene_ids: torch.Tensor, values: torch.Tensor,
                           src_key_padding_mask: torch.Tensor) -> torch.Tensor:
    """scGPT's non-fast path, padded, as its ``TransformerModel._encode`` runs it: the same
    weights in ``torch.nn.TransformerEncoder`` (``nn.MultiheadAttention.in_proj_weight`` = the
    released ``Wqkv``), ``src_key_padding_mask`` True = pad. ``[B, L]`` -> ``[B, L, C]``; padded
    positions are whatever PyTorch leaves there (0 on its eval fast path). The reference for
    tests and the benchmark's padded route; never used by the model."""
    c = model.config
    layer = nn.TransformerEncoderLayer(c.embsize, c.nheads, c.d_hid, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, c.nlayers, enable_nested_tensor=True).to(device=model.device,
                                                                              dtype=model.dtype).eval()
    with torch.no_grad():
        for mine, theirs in zip(model.transformer_encoder.layers, enc.layers):
            theirs.self_attn.in_proj_weight.copy_(mine.self_attn.Wqkv.weight)
            theirs.self_attn.in_proj_bias.copy_(mine.self_attn.Wqkv.bias)
            theirs.self_attn.out_proj.load_state_dict(mine.self_attn.out_proj.state_dict())
            for n in ("linear1", "linear2", "norm1", "norm2"):
                getattr(theirs, n).load_state_dict(getattr(mine, n).state_dict())
        _, x = model._embed_tokens(gene_ids.long(), values)
        with warnings.catch_warnings():  # torch's "nested tensors are a prototype" notice
            warnings.simplefilter("ignore", UserWarning)
            return enc(x, src_key_padding_mask=src_key_padding_mask.bool())
