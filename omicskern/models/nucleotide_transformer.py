"""Nucleotide Transformer (InstaDeep): the ESM-style encoder of NT v1 and NT-v2, unpadded.

* v1 (``nucleotide-transformer-*-human-ref`` / ``-1000g`` / ``-multi-species``, transformers'
  native ``EsmForMaskedLM``): learned absolute positions (ESM indexing, from ``pad_token_id + 1``),
  GELU feed-forward.
* v2 (``nucleotide-transformer-v2-*-multi-species``, remote ``modeling_esm.py``): rotary
  embeddings (half-split ``rotate_half``, q scaled before rotation), SiLU-gated feed-forward of
  width ``2 * intermediate_size`` with ``add_bias_fnn`` biases.

Both: pre-LN layers, final ``emb_layer_norm_after``, LM head ``dense -> gelu -> layer_norm ->
decoder + bias``. A config is v2 when it has ``add_bias_fnn`` (the NT-v2 remote config's field).
Tokens are packed from the attention mask and attention runs varlen; the outputs at padded
positions are 0 (the reference computes values there from padding queries; they carry no
information and are excluded from every comparison).

Example:
    >>> model = NucleotideTransformer.from_pretrained("nucleotide-transformer-v2-50m-multi-species/")
    >>> batch = model.get_tokenizer().encode_batch(["ACGTACGTACGTAAN"], padding=False)
    >>> tokens, pooled = model.embed(batch)          # [T, 512] ragged, [1, 512]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from omicskern.errors import CheckpointError
from omicskern.models._common import check_ids, check_mask, finish_load
from omicskern.models._loading import load_strict
from omicskern.models.base import ModelOutput, OmicsModel, find_file
from omicskern.modules.bert import EsmLayer, set_attention_backend
from omicskern.modules.embeddings import EsmEmbeddings
from omicskern.modules.mlp import gelu_erf, init_linear_
from omicskern.ops.packing import packing_from_mask, row_ids


@dataclass
class NucleotideTransformerConfig:
    vocab_size: int = 4107
    hidden_size: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 16
    intermediate_size: int = 2048
    max_position_embeddings: int = 2050
    position_embedding_type: str = "rotary"
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    mask_token_id: int | None = 2
    emb_layer_norm_before: bool = False
    token_dropout: bool = False
    glu: bool = True  # NT-v2's gated feed-forward
    add_bias_fnn: bool = False
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "NucleotideTransformerConfig":
        for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if f not in d:
                raise CheckpointError(f"config.json: missing field {f!r}")
        pe = d.get("position_embedding_type", "absolute")
        if pe not in ("absolute", "rotary"):
            raise CheckpointError(f"config.json: position_embedding_type {pe!r} is not supported (absolute, rotary)")
        glu = "add_bias_fnn" in d
        return cls(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_hidden_layers=d["num_hidden_layers"],
                   num_attention_heads=d["num_attention_heads"], intermediate_size=d["intermediate_size"],
                   max_position_embeddings=d.get("max_position_embeddings", 1026), position_embedding_type=pe,
                   layer_norm_eps=d.get("layer_norm_eps", 1e-12), pad_token_id=d.get("pad_token_id", 1),
                   mask_token_id=d.get("mask_token_id"), emb_layer_norm_before=bool(d.get("emb_layer_norm_before")),
                   token_dropout=bool(d.get("token_dropout", False)), glu=glu,
                   add_bias_fnn=bool(d.get("add_bias_fnn", True)) if glu else True,
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", True)))


class _Encoder(nn.Module):
    def __init__(self, c: NucleotideTransformerConfig):
        super().__init__()
        self.layer = nn.ModuleList([
            EsmLayer(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.layer_norm_eps,
                     rotary=c.position_embedding_type == "rotary", glu=c.glu, bias=c.add_bias_fnn)
            for _ in range(c.num_hidden_layers)])
        self.emb_layer_norm_after = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _Esm(nn.Module):
    def __init__(self, c: NucleotideTransformerConfig):
        super().__init__()
        self.embeddings = EsmEmbeddings(c.vocab_size, c.hidden_size, c.max_position_embeddings,
                                        absolute=c.position_embedding_type == "absolute",
                                        layer_norm=c.emb_layer_norm_before, eps=c.layer_norm_eps,
                                        padding_idx=c.pad_token_id, token_dropout=c.token_dropout,
                                        mask_token_id=c.mask_token_id)
        self.encoder = _Encoder(c)


class LMHead(nn.Module):
    """ESM's LM head: ``decoder(layer_norm(gelu(dense(h)))) + bias``."""

    def __init__(self, c: NucleotideTransformerConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, h):
        return self.decoder(self.layer_norm(gelu_erf(self.dense(h)))) + self.bias


class NucleotideTransformer(OmicsModel):
    """NT v1/v2 encoder + LM head with the released ``EsmForMaskedLM`` key names.

    The :class:`~omicskern.models.base.OmicsModel` interface on the k-mer tokenizer's ragged
    :class:`~omicskern.batch.Batch` (``mean`` pooling averages every token, ``<cls>`` included, as
    InstaDeep's examples do with the attention mask). The padded form
    ``forward(input_ids: [B, L], attention_mask: [B, L] | None)`` -> :class:`ModelOutput` with
    ``last_hidden_state: [B, L, C]`` (after ``emb_layer_norm_after``; 0 at padding), ``logits: [B, L, V]``
    with ``return_logits=True``, and ``hidden_states`` (embeddings, every layer, last one normed:
    the reference's ``output_hidden_states`` tuple) with ``output_hidden_states=True``.
    """

    model_type = "nucleotide_transformer"
    kind = "masked_lm"
    config_class = NucleotideTransformerConfig
    ops = ("attention", "rotary")

    def __init__(self, config: NucleotideTransformerConfig, *, lm_head: bool = True):
        super().__init__()
        self.config = config
        self.esm = _Esm(config)
        self.lm_head = LMHead(config) if lm_head else None
        init_linear_(self)
        if self.lm_head is not None and config.tie_word_embeddings:
            self.lm_head.decoder.weight = self.esm.embeddings.word_embeddings.weight

    @classmethod
    def matches(cls, config: dict, folder) -> bool:
        archs = " ".join(config.get("architectures") or [])
        remote = " ".join(map(str, (config.get("auto_map") or {}).values()))
        return config.get("model_type") == "esm" or "Esm" in archs or "modeling_esm" in remote

    @classmethod
    def converts_hf(cls, config: dict, sd: dict) -> bool:
        return config.get("model_type") == "esm" or "add_bias_fnn" in config

    @classmethod
    def _build(cls, sd, config, *, source, device, dtype, folder) -> "NucleotideTransformer":
        """``EsmForMaskedLM`` or bare ``EsmModel`` keys. Unused keys of the release (contact head,
        NT-v2's unused position table, a pooler) are skipped; anything else that does not fit raises
        :class:`CheckpointError`."""
        if not any(k.startswith("esm.") for k in sd):
            sd = {("esm." + k if k.split(".")[0] in ("embeddings", "encoder", "contact_head", "pooler",
                                                     "rotary_embeddings") else k): v for k, v in sd.items()}
        sd = dict(sd)
        # transformers >= 5 keeps one inv_freq per model, saved as "esm.rotary_embeddings.inv_freq" or
        # under a wildcard layer name "esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq"
        shared_inv = sd.pop("esm.rotary_embeddings.inv_freq", None)
        wildcard = sd.pop("esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq", None)
        shared_inv = wildcard if shared_inv is None else shared_inv
        if shared_inv is not None:
            for i in range(config.num_hidden_layers):
                sd.setdefault(f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq", shared_inv)
        tied = {}
        if config.tie_word_embeddings:
            # transformers ties the decoder to the input embedding, whatever the file says
            sd.pop("lm_head.decoder.weight", None)
            tied = {"lm_head.decoder.weight": "esm.embeddings.word_embeddings.weight"}
        model = cls(config, lm_head=any(k.startswith("lm_head.") for k in sd))
        # contact head and pooler: unused by the encoder; position_ids: a buffer older transformers saved
        ignore = [r"esm\.contact_head\..*", r"esm\.pooler\..*", r"esm\.embeddings\.position_ids"]
        if config.position_embedding_type == "rotary":
            ignore.append(r"esm\.embeddings\.position_embeddings\.weight")
        load_strict(model, sd, source=source, ignore=ignore, tied=tied,
                    optional=[r".*rotary_embeddings\.inv_freq"])
        return finish_load(model, dtype, device)

    @property
    def is_v2(self) -> bool:
        return self.config.position_embedding_type == "rotary"

    @property
    def max_length_is_hard(self) -> bool:  # rotary (v2) positions extrapolate; v1's table does not
        return not self.is_v2

    @property
    def max_length(self) -> int:
        # v1 numbers positions from pad_token_id + 1 (ESM), so the table holds that many fewer tokens
        c = self.config
        return c.max_position_embeddings if self.is_v2 else c.max_position_embeddings - c.pad_token_id - 1

    def _tokenizer(self, folder, *, vocab_file=None, **kwargs):
        from omicskern.tokenizers import KmerTokenizer

        path = vocab_file or find_file(folder, ("vocab.txt",))
        if path is not None:
            return KmerTokenizer.from_vocab_file(path, **kwargs)
        if not self.is_v2:
            # NT v1 and v2 checkpoints number the 6-mers differently (ACGTACGN: v1 [3, 726, 4103, 4104],
            # v2 [3, 728, 4105, 4106]): never guess v1's layout
            where = f"in {folder}" if folder is not None else "(the model was not loaded from a folder)"
            raise FileNotFoundError(
                f"NucleotideTransformer.get_tokenizer: no vocab.txt {where}. NT v1 checkpoints number their "
                "6-mers differently from v2, so the checkpoint's own vocab.txt must decide: copy it from the "
                "checkpoint repository into the folder or pass get_tokenizer(vocab_file=...)")
        return KmerTokenizer(k=6, mode="nt", **kwargs)  # the released NT-v2 vocabulary

    def _set_backends(self, ops: dict) -> None:
        set_attention_backend(self, ops["attention"], ops["rotary"])

    def _positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        # ESM's create_position_ids_from_input_ids: non-pad tokens count from pad_token_id + 1
        pad = self.config.pad_token_id
        ne = (input_ids != pad).long()
        return torch.cumsum(ne, dim=1) * ne + pad

    def _encode(self, ids, cu, max_len, keep_states):
        pos = None
        if self.esm.embeddings.position_embeddings is not None:
            # ESM numbering: non-pad tokens count from pad_token_id + 1 within each sequence
            pad = self.config.pad_token_id
            ne = (ids != pad).long()
            seg = row_ids(cu, ids.numel())
            csum = torch.cumsum(ne, 0)
            starts = torch.nn.functional.pad(csum, (1, 0))[cu[:-1].long()]
            pos = (csum - starts[seg]) * ne + pad
        x = self.esm.embeddings(ids, positions=pos, row=row_ids(cu, ids.numel()), n_rows=cu.numel() - 1)
        states = [x] if keep_states else None
        for layer in self.esm.encoder.layer:
            x = layer(x, cu, max_len)
            if keep_states:
                states.append(x)
        x = self.esm.encoder.emb_layer_norm_after(x)
        if keep_states:
            states[-1] = x
        return x, states

    def _lm_head(self, h):
        if self.lm_head is None:
            raise RuntimeError("this NucleotideTransformer has no LM head (no lm_head.* keys in the checkpoint)")
        return self.lm_head(h)

    def forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                       return_logits: bool = False, output_hidden_states: bool = False) -> ModelOutput:
        check_ids(input_ids, self.config.vocab_size)
        mask = check_mask(attention_mask, input_ids)
        pk = packing_from_mask(mask)
        ids = pk.pack(input_ids)
        pos = pk.pack(self._positions(input_ids)) if self.esm.embeddings.position_embeddings is not None else None
        x = self.esm.embeddings(ids, positions=pos, row=row_ids(pk.cu_seqlens, ids.numel()), n_rows=pk.batch)
        states = [x]
        for layer in self.esm.encoder.layer:
            x = layer(x, pk.cu_seqlens, pk.max_seqlen)
            states.append(x)
        x = self.esm.encoder.emb_layer_norm_after(x)
        states[-1] = x
        logits = None
        if return_logits:
            logits = pk.unpack(self._lm_head(x))
        hs = tuple(pk.unpack(s) for s in states) if output_hidden_states else None
        return ModelOutput(pk.unpack(x), None, logits, hs)
