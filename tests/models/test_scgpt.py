"""scGPT: parity with scGPT's own embed_data / TransformerModel outputs (the scgpt_tiny fixture,
copied into tests/data/fixtures/scgpt_tiny), the released folder format (best_model.pt with
FlashMHA names, model.safetensors), strict loading, the tokenizer as embed_data builds input
(real h5ad -> the fixture's exact gene ids), its seeded random modes, and bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import omicskern
from omicskern.batch import Batch
from omicskern.errors import CheckpointError
from omicskern.models.scgpt import ScGPT, ScGPTConfig, scgpt_padded_reference
from tests._numerics import assert_close

FIX = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "scgpt_tiny"
ATOL = RTOL = 1e-4  # the fixture README's fp32 tolerance (40-90x the fp64-vs-fp32 error)


@pytest.fixture(scope="module")
def model():
    return omicskern.load(FIX)


@pytest.fixture(scope="module")
def fx():
    return dict(np.load(FIX / "inputs.npz")), dict(np.load(FIX / "outputs.npz"))


def _ragged(inp) -> Batch:
    L = inp["lengths"]
    return Batch.from_rows([inp["gene_ids"][i, :L[i]] for i in range(len(L))],
                           values=[inp["values"][i, :L[i]] for i in range(len(L))])


def _real(out: np.ndarray, L) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([out[i, :L[i]] for i in range(len(L))]))


@pytest.mark.parametrize("weights", ["best_model.pt", "model.safetensors"])
def test_matches_scgpt_outputs(fx, weights):
    inp, out = fx
    m = ScGPT.from_pretrained(FIX, weights=weights)
    assert isinstance(m, ScGPT) and m.config.embsize == 64 and m.config.nlayers == 2 and not m.training
    L = inp["lengths"]
    b = _ragged(inp)
    o = m.predict(b)
    assert_close(o.cell_emb, torch.from_numpy(out["cell_emb"]), atol=ATOL, rtol=RTOL)
    assert_close(o.cell_emb_normalized, torch.from_numpy(out["cell_emb_normalized"]), atol=1e-5, rtol=0)
    assert_close(o.gene_states, _real(out["transformer_output"], L), atol=ATOL, rtol=RTOL)
    assert_close(o.mlm_output, _real(out["mlm_output"], L), atol=ATOL, rtol=RTOL)
    assert_close(o.mvc_output, _real(out["mvc_output"], L), atol=ATOL, rtol=RTOL)
    assert_close(o.cls_output, torch.from_numpy(out["cls_output"]), atol=ATOL, rtol=RTOL)
    # the interface: embed / forward / token_logits / every layer
    e = m.embed(b, pooling="cls_normalized")
    torch.testing.assert_close(e.pooled, o.cell_emb_normalized)
    torch.testing.assert_close(m.embed(b, pooling="cls").pooled, o.cell_emb)
    hs = m(b, output_hidden_states=True).hidden_states
    for k in range(2):
        assert_close(hs[k + 1], _real(out["layer_outputs"][k], L), atol=ATOL, rtol=RTOL)
    g, x0 = m._embed_tokens(torch.from_numpy(np.concatenate([inp["gene_ids"][i, :L[i]] for i in range(4)])),
                            b.to_torch().values)
    assert_close(g, _real(out["gene_token_embs"], L), atol=ATOL, rtol=RTOL)
    assert_close(x0 - g, _real(out["value_embs"], L), atol=ATOL, rtol=RTOL)
    assert_close(hs[0], x0, atol=0, rtol=0)
    assert_close(m.token_logits(b)[:, 0], o.mlm_output, atol=0, rtol=0)


def test_padded_form_matches_scgpt(model, fx):
    """forward(ids, attention_mask, values) = scGPT's model._encode(src, values, ~mask) with 0 at pads."""
    inp, out = fx
    real = ~inp["src_key_padding_mask"]
    o = model(inp["gene_ids"], real, values=inp["values"])
    h = o.last_hidden_state
    assert h.shape == (4, 256, 64)
    assert_close(h[torch.from_numpy(real)], torch.from_numpy(out["transformer_output"][real]), atol=ATOL, rtol=RTOL)
    assert bool((h[torch.from_numpy(~real)] == 0).all())
    assert_close(o.pooler_output, torch.from_numpy(out["cell_emb"]), atol=ATOL, rtol=RTOL)


def test_fp64_is_closer_to_the_fp32_reference_than_the_tolerance(fx):
    inp, out = fx
    m = ScGPT.from_pretrained(FIX, dtype=torch.float64)
    got = m.predict(_ragged(inp)).cell_emb
    # meta.json: fp64 vs these fp32 outputs differ by 6.7e-7 at most
    assert (got - torch.from_numpy(out["cell_emb"]).double()).abs().max() < 5e-6


def test_varlen_equals_torch_transformer_encoder_on_random_inputs(model):
    """The padded nn.TransformerEncoder route (scGPT's PyTorch path) on fresh inputs at odd lengths."""
    g = torch.Generator().manual_seed(0)
    lengths = [37, 1, 113, 64]
    ids = torch.randint(0, 300, (4, 113), generator=g)
    ids[:, 0] = model.cls_token_id
    vals = torch.randint(1, 51, (4, 113), generator=g).float()
    vals[:, 0] = -2.0
    mask = torch.arange(113)[None] >= torch.tensor(lengths)[:, None]
    ref = scgpt_padded_reference(model, ids, vals, mask)
    rows = [(ids[i, :n], vals[i, :n]) for i, n in enumerate(lengths)]
    b = Batch.from_rows([r[0].numpy() for r in rows], values=[r[1].numpy() for r in rows])
    got = model(b).last_hidden_state
    assert_close(got, ref[~mask], atol=ATOL, rtol=RTOL)


def test_real_tokenizer_path_builds_embed_datas_input(model, fx):
    """h5ad -> get_tokenizer(): exactly the ids that reached scGPT's model (<cls> first with
    pad_value, nonzero in-vocab genes in column order); every bin in the interval scGPT's random
    tie-break may pick, and the deterministic one is numpy.digitize (the interval's top)."""
    inp, _ = fx
    L, ro = inp["lengths"], inp["raw_offsets"]
    for tie in ("deterministic", "random"):
        b = model.get_tokenizer(tie_break=tie, seed=7).tokenize(str(FIX / "cells.h5ad"))
        assert len(b) == 4 and b.report.n_genes_matched == 300
        for i in range(4):
            s, e = int(b.cu_seqlens[i]), int(b.cu_seqlens[i + 1])
            np.testing.assert_array_equal(b.input_ids[s:e], inp["gene_ids"][i, :L[i]])
            v = b.values[s:e]
            assert v[0] == -2
            lo, hi = inp["raw_bin_lo"][ro[i]:ro[i + 1]], inp["raw_bin_hi"][ro[i]:ro[i + 1]]
            assert ((v[1:] >= lo) & (v[1:] <= hi)).all()
            if tie == "deterministic":
                np.testing.assert_array_equal(v[1:], hi)
    # straight into the model
    e = model.embed(b, pooling="cls_normalized").pooled
    assert e.shape == (4, 64) and torch.allclose(e.norm(dim=1), torch.ones(4))


def _scgpt_binning(row: np.ndarray, n_bins: int) -> np.ndarray:
    """scGPT's preprocess.binning on a row of positive values, random tie-break (its definition:
    quantile edges, a uniform draw between the right- and left-side digitization)."""
    edges = np.quantile(row, np.linspace(0, 1, n_bins - 1))
    left, right = np.digitize(row, edges), np.digitize(row, edges, right=True)
    return np.ceil(np.random.rand(len(row)) * (right - left) + left).astype(np.int64)


def test_seeded_random_tie_break_reproduces_scgpt_binning(model, fx):
    inp, _ = fx
    tok = model.get_tokenizer(tie_break="random", seed=11)
    b = tok.tokenize(str(FIX / "cells.h5ad"))
    np.random.seed(11)
    ro = inp["raw_offsets"]
    for i in range(4):
        ref = _scgpt_binning(inp["raw_counts"][ro[i]:ro[i + 1]].astype(np.float64), 51)
        np.testing.assert_array_equal(b.values[int(b.cu_seqlens[i]) + 1:int(b.cu_seqlens[i + 1])], ref)
    again = model.get_tokenizer(tie_break="random", seed=11).tokenize(str(FIX / "cells.h5ad"))
    np.testing.assert_array_equal(again.values, b.values)
    other = model.get_tokenizer(tie_break="random", seed=12).tokenize(str(FIX / "cells.h5ad"))
    assert (other.values != b.values).any()


def test_randperm_sampling_reproduces_the_collator(model):
    """Cells longer than max_length: binning over all genes first, then <cls> + the genes of
    torch.randperm(n - 1)[:max_length - 1] after torch.manual_seed(seed), as DataCollator._sample."""
    full = model.get_tokenizer().tokenize(str(FIX / "cells.h5ad"))
    tok = model.get_tokenizer(max_length=40, truncate="randperm", seed=3)
    b = tok.tokenize(str(FIX / "cells.h5ad"))
    torch.manual_seed(3)
    for i in range(4):
        ids, vals = full.input_ids[full.cu_seqlens[i]:full.cu_seqlens[i + 1]], full.values[full.cu_seqlens[i]:full.cu_seqlens[i + 1]]
        got_ids, got_vals = b.input_ids[b.cu_seqlens[i]:b.cu_seqlens[i + 1]], b.values[b.cu_seqlens[i]:b.cu_seqlens[i + 1]]
        if len(ids) > 40:
            idx = np.concatenate([[0], torch.randperm(len(ids) - 1)[:39].numpy() + 1])
            np.testing.assert_array_equal(got_ids, ids[idx])
            np.testing.assert_array_equal(got_vals, vals[idx])
        else:
            np.testing.assert_array_equal(got_ids, ids)
    det = model.get_tokenizer(max_length=40)  # the default: a seeded subset, same every run
    a1, a2 = det.tokenize(str(FIX / "cells.h5ad")), det.tokenize(str(FIX / "cells.h5ad"))
    np.testing.assert_array_equal(a1.input_ids, a2.input_ids)
    assert a1.max_seqlen == 40 and a1.input_ids[0] == model.cls_token_id


def test_tokenizer_defaults(model):
    tok = model.get_tokenizer()
    assert (tok.n_bins, tok.max_length, tok.tie_break, tok.cls_value, tok.pad_value) == (51, 1200, "deterministic", -2, -2)
    assert tok.cls_token_id == model.cls_token_id == 301 and tok.pad_token_id == model.pad_token_id == 300


def _copy(tmp_path, name="m") -> Path:
    d = tmp_path / name
    d.mkdir()
    for f in ("args.json", "vocab.json", "best_model.pt"):
        shutil.copy(FIX / f, d / f)
    return d


def test_strict_loading_names_the_key(tmp_path):
    sd = torch.load(FIX / "best_model.pt", weights_only=True)
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "mvc_decoder.W.weight"}, "keys missing.*mvc_decoder.W.weight"),
        "unexpected": ({**sd, "flag_encoder.weight": torch.zeros(2, 64)}, "unexpected keys.*flag_encoder.weight"),
        "shape": ({**sd, "transformer_encoder.layers.1.linear1.weight": torch.zeros(65, 64)},
                  r"wrong shape.*layers\.1\.linear1\.weight \(checkpoint \(65, 64\), model \(64, 64\)\)"),
    }
    for name, (d, pattern) in cases.items():
        folder = _copy(tmp_path, name)
        torch.save(d, folder / "best_model.pt")
        with pytest.raises(CheckpointError, match=pattern):
            ScGPT.from_pretrained(folder)


def test_pytorch_path_names_load_the_same(model, fx):
    """A state dict saved from scGPT's PyTorch path (in_proj_weight) is the same model."""
    sd = torch.load(FIX / "best_model.pt", weights_only=True)
    renamed = {k.replace("self_attn.Wqkv.weight", "self_attn.in_proj_weight")
               .replace("self_attn.Wqkv.bias", "self_attn.in_proj_bias"): v for k, v in sd.items()}
    m2 = ScGPT.from_state_dict(renamed, json.loads((FIX / "args.json").read_text()), vocab=FIX / "vocab.json")
    b = _ragged(fx[0])
    torch.testing.assert_close(m2.embed(b, pooling="cls").pooled, model.embed(b, pooling="cls").pooled, atol=0, rtol=0)


def test_bad_folders(tmp_path):
    d = _copy(tmp_path, "no_cls")
    vocab = json.loads((FIX / "vocab.json").read_text())
    vocab["<cls_renamed>"] = vocab.pop("<cls>")
    (d / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match="no '<cls>' token"):
        ScGPT.from_pretrained(d)
    d = _copy(tmp_path, "small_vocab")
    (d / "vocab.json").write_text(json.dumps({k: v for k, v in list(vocab.items())[:10]}))
    with pytest.raises(CheckpointError, match="10 entries, but the checkpoint's gene embedding.*303 rows"):
        ScGPT.from_pretrained(d)
    d = _copy(tmp_path, "args")
    args = json.loads((FIX / "args.json").read_text())
    (d / "args.json").write_text(json.dumps({k: v for k, v in args.items() if k != "nheads"}))
    with pytest.raises(CheckpointError, match="args.json: missing field 'nheads'"):
        ScGPT.from_pretrained(d)
    (d / "args.json").write_text(json.dumps({**args, "input_emb_style": "scaling"}))
    with pytest.raises(CheckpointError, match="input_emb_style 'scaling' is not supported"):
        ScGPT.from_pretrained(d)
    (d / "args.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="args.json: not valid JSON"):
        omicskern.load(d)
    d = _copy(tmp_path, "no_weights")
    (d / "best_model.pt").unlink()
    with pytest.raises(CheckpointError, match="no weights.*best_model.pt"):
        ScGPT.from_pretrained(d)


def test_category_value_encoder_is_built_and_used(tmp_path):
    """input_emb_style='category' (embed_data ignores it and runs a random value encoder): an
    Embedding on the bins, LayerNorm; checked against the padded reference route."""
    args = {**json.loads((FIX / "args.json").read_text()), "input_emb_style": "category", "n_bins": 51,
            "pad_value": 51}
    torch.manual_seed(0)
    m = ScGPT(ScGPTConfig.from_dict({**args, "vocab_size": 303})).eval()
    assert m.config.n_input_bins == 53 and isinstance(m.value_encoder.embedding, torch.nn.Embedding)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m2 = ScGPT.from_state_dict(m.state_dict(), args)
    assert m2.config.n_input_bins == 53
    ids = torch.tensor([[301, 4, 9, 200, 17], [301, 5, 6, 300, 300]])
    vals = torch.tensor([[51, 3, 50, 1, 7], [51, 2, 2, 51, 51]])
    mask = ids == 300
    ref = scgpt_padded_reference(m2, ids, vals, mask)
    got = m2(ids.numpy(), (~mask).numpy(), values=vals.numpy()).last_hidden_state
    assert_close(got[~mask], ref[~mask], atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match=r"category bins must be whole numbers in \[0, 53\)"):
        m2(ids, ~mask, values=vals + 10)


def test_bad_inputs(model):
    ids = np.array([301, 4, 9], np.int32)
    with pytest.raises(ValueError, match="scGPT needs per-token values"):
        model(Batch(ids, [0, 3]))
    with pytest.raises(ValueError, match=r"values\[2\] \(row 0, position 2\) = nan cannot be embedded"):
        model(Batch(ids, [0, 3], values=np.array([-2, 1, np.nan], np.float32)))
    with pytest.raises(ValueError, match="cell 1 does not start with <cls>"):
        model.embed(Batch(np.array([301, 4, 9, 4], np.int32), [0, 2, 4], values=np.ones(4, np.float32)),
                    pooling="cls")
    with pytest.raises(ValueError, match="scGPT needs values="):
        model(ids[None], np.ones((1, 3), bool))
    with pytest.raises(FileNotFoundError, match="get_tokenizer\\(vocab="):
        ScGPT.from_state_dict(model.state_dict(), model.config).get_tokenizer()
