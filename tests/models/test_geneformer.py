"""Geneformer against transformers' BertForMaskedLM / BertModel on random weights, fed ragged."""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from omicskern.batch import Batch
from omicskern.errors import CheckpointError
from omicskern.models import Geneformer
from tests.models._util import backends_on_cpu, save_safetensors

VOCAB, PAD, CLS, EOS = 60, 0, 2, 3
DATA = Path(__file__).resolve().parents[1] / "data"
# fp32 through 3 post-LN layers; observed max abs error ~1e-6
ATOL, RTOL = 2e-5, 1e-4


def _hf_bert(tmp_path, *, act="relu", masked_lm=True, seed=0, max_pos=96):
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=96, hidden_act=act, max_position_embeddings=max_pos, pad_token_id=PAD,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
    hf = (BertForMaskedLM(cfg) if masked_lm else BertModel(cfg, add_pooling_layer=True)).eval()
    hf.set_attn_implementation("eager")
    with torch.no_grad():  # non-trivial biases and LayerNorms
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    return hf


def _cells(lengths, seed=1, v2=True):
    """Ragged rank-value cells: [<cls>] genes [<eos>] (V2 layout) or genes only (V1)."""
    g = torch.Generator().manual_seed(seed)
    cells = []
    for n in lengths:
        genes = torch.randperm(VOCAB - 4, generator=g)[: n - (2 if v2 else 0)] + 4
        cells.append(torch.cat([torch.tensor([CLS]), genes, torch.tensor([EOS])]) if v2 else genes)
    ids = torch.cat(cells)
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in cells])])
    return Batch(ids.numpy().astype(np.int32), offsets), offsets, cells


def _padded(cells):
    L = max(len(c) for c in cells)
    ids = torch.full((len(cells), L), PAD)
    am = torch.zeros(len(cells), L, dtype=torch.long)
    for i, c in enumerate(cells):
        ids[i, : len(c)] = c
        am[i, : len(c)] = 1
    return ids, am


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("gf")
    hf = _hf_bert(d)
    return hf, Geneformer.from_pretrained(d)


@pytest.mark.parametrize("backend", backends_on_cpu("attention"))
def test_ragged_matches_bert_for_masked_lm(pair, backend):
    hf, m = pair
    lengths = [37, 5, 1 + 2, 19] if backend != "triton" else [17, 5]
    ids, offsets, cells = _cells(lengths)
    pids, am = _padded(cells)
    m.set_backend(attention=backend)
    try:
        with torch.no_grad():
            ref = hf(input_ids=pids, attention_mask=am, output_hidden_states=True)
            o = m(ids, output_hidden_states=True, return_logits=True)
            states, logits = o.hidden_states, o.logits
    finally:
        m.set_backend(attention=None)
    real = am.bool()
    assert len(states) == len(ref.hidden_states)
    for s, r in zip(states, ref.hidden_states):
        torch.testing.assert_close(s, r[real], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(logits, ref.logits[real], atol=ATOL, rtol=RTOL)


def _geneformer_folder(tmp_path, v2=True):
    """A Geneformer checkpoint folder as released: BERT weights next to its token and median
    dictionaries, here over the 56 genes seen in most cells of the real PBMC file."""
    import anndata as ad

    hf = _hf_bert(tmp_path)
    adata = ad.read_h5ad(DATA / "sc" / "pbmc_10x_v3_small.h5ad")
    X = adata.X.tocsc() if hasattr(adata.X, "tocsc") else adata.X
    seen = np.asarray((X > 0).sum(0)).ravel()
    genes = adata.var["ensembl_id"].to_numpy()[np.argsort(-seen, kind="stable")[: VOCAB - 4]]
    tokens = {"<pad>": PAD, "<mask>": 1, **({"<cls>": CLS, "<eos>": EOS} if v2 else {})}
    tokens.update({g: 4 + i for i, g in enumerate(genes)})
    with open(tmp_path / "token_dictionary_test.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(tmp_path / "gene_median_dictionary_test.pkl", "wb") as f:
        pickle.dump({g: 1.0 + 0.5 * (i % 7) for i, g in enumerate(genes)}, f)
    return hf, adata


@pytest.mark.parametrize("v2", [True, False], ids=["V2", "V1"])
def test_real_tokenizer_output_goes_in(tmp_path, v2):
    """omicskern.load -> get_tokenizer() -> tokenize(real h5ad) -> embed, against transformers'
    BertForMaskedLM on the same cells computed as Geneformer's EmbExtractor does."""
    import omicskern

    hf, adata = _geneformer_folder(tmp_path, v2=v2)
    m = omicskern.load(tmp_path)
    assert isinstance(m, Geneformer) and m.kind == "cell"
    tok = m.get_tokenizer()
    batch = tok.tokenize(adata)
    assert isinstance(batch, Batch) and len(batch) > 1000
    batch = batch[:40]  # keep the transformers reference quick
    cells = [torch.from_numpy(r.astype(np.int64)) for r in batch]
    assert all(c[0] == CLS and c[-1] == EOS for c in cells) == v2
    pids, am = _padded(cells)
    with torch.no_grad():
        hs = hf(input_ids=pids, attention_mask=am, output_hidden_states=True).hidden_states
    lens = am.sum(1)
    for layer, emb_layer in ((-2, -1), (-1, 0)):  # EmbExtractor's emb_layer -1 / 0
        h = hs[3 + emb_layer]
        cut = (1, 1) if v2 else (0, 0)
        ref = torch.stack([h[i, cut[0]: lens[i] - cut[1]].mean(0) for i in range(len(cells))])
        got = m.embed(batch, pooling="mean", layer=layer)
        torch.testing.assert_close(got.pooled, ref, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(got.tokens, h[am.bool()], atol=ATOL, rtol=RTOL)
    if v2:
        torch.testing.assert_close(m.embed(batch, pooling="cls").pooled, hs[2][:, 0], atol=ATOL, rtol=RTOL)
    else:
        with pytest.raises(ValueError, match="does not start with <cls>") if m.cls_token_id is not None \
                else contextlib.nullcontext():
            m.embed(batch, pooling="cls")
    assert m.embed(batch).layer == -2  # Geneformer's default: the second-to-last layer


def test_padded_api_matches(pair):
    hf, m = pair
    _, _, cells = _cells([23, 7, 11])
    pids, am = _padded(cells)
    with torch.no_grad():
        ref = hf(input_ids=pids, attention_mask=am)
        o = m(pids, am, return_logits=True)
    real = am.bool()
    torch.testing.assert_close(o.logits[real], ref.logits[real], atol=ATOL, rtol=RTOL)
    assert (o.last_hidden_state[~real] == 0).all()


@pytest.mark.parametrize("mode,emb_layer,v2", [
    pytest.param("mean", -1, False, id="V1-mean-penultimate"),
    pytest.param("mean", -1, True, id="V2-mean-penultimate-no-cls-eos"),
    pytest.param("mean", 0, True, id="V2-mean-last"),
    pytest.param("cls", -1, True, id="V2-cls"),
])
def test_cell_embeddings_as_emb_extractor(pair, mode, emb_layer, v2):
    hf, m = pair
    ids, offsets, cells = _cells([30, 9, 4, 16], v2=v2)
    pids, am = _padded(cells)
    with torch.no_grad():
        ref_h = hf(input_ids=pids, attention_mask=am, output_hidden_states=True).hidden_states
    # Geneformer: layer_to_quant = num_layers + emb_layer; mean over non-padding, <cls>/<eos> dropped
    h = ref_h[3 + emb_layer]
    lens = am.sum(1)
    if mode == "cls":
        ref = h[:, 0]
    elif v2:
        ref = torch.stack([h[i, 1: lens[i] - 1].mean(0) for i in range(len(cells))])
    else:
        ref = torch.stack([h[i, : lens[i]].mean(0) for i in range(len(cells))])
    m.cls_token_id, m.eos_token_id = (CLS, EOS) if v2 else (None, None)
    try:
        got = m.embed(ids, pooling=mode, layer=emb_layer - 1).pooled  # EmbExtractor's emb_layer -1 = layer -2
    finally:
        m.cls_token_id = m.eos_token_id = None
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)


def test_bert_model_with_pooler(tmp_path):
    hf = _hf_bert(tmp_path, masked_lm=False, act="gelu")
    m = Geneformer.from_pretrained(tmp_path)
    assert m.cls is None and m.bert.pooler is not None
    _, _, cells = _cells([12, 40])
    pids, am = _padded(cells)
    with torch.no_grad():
        ref = hf(input_ids=pids, attention_mask=am)
        o = m(pids, am)
    real = am.bool()
    torch.testing.assert_close(o.last_hidden_state[real], ref.last_hidden_state[real], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(o.pooler_output, ref.pooler_output, atol=ATOL, rtol=RTOL)


def test_gradients_backends_agree(tmp_path):
    _hf_bert(tmp_path)
    m = Geneformer.from_pretrained(tmp_path, dtype=torch.float64)
    ids, offsets, _ = _cells([13, 6])
    grads = {}
    for be in ("reference", "sdpa"):
        m.zero_grad()
        m.set_backend(attention=be)
        (m(ids).last_hidden_state ** 2).sum().backward()
        grads[be] = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    for n, g in grads["reference"].items():
        torch.testing.assert_close(grads["sdpa"][n], g, atol=1e-9, rtol=1e-7, msg=f"grad {n}")


def test_errors(pair, tmp_path):
    hf, m = pair
    ids, offsets, _ = _cells([10, 5])
    flat = ids.input_ids
    with pytest.raises(ValueError, match="cu_seqlens must start at 0 and end at len"):
        Batch(flat[:-1], offsets)
    with pytest.raises(ValueError, match="must not decrease"):
        Batch(flat, [0, 10, 5, 15])
    with pytest.raises(ValueError, match="row 0 has 100 tokens, more than this model's max_length=96"):
        m(Batch(np.full(100, 5, np.int32), [0, 100]))
    m.cls_token_id = EOS
    try:
        with pytest.raises(ValueError, match="does not start with <cls>"):
            m.embed(ids, pooling="cls")
    finally:
        m.cls_token_id = None
    with pytest.raises(ValueError, match="no tokens"):
        m.embed(Batch(flat, [0, 15, 15]))
    with pytest.raises(FileNotFoundError, match=r"no token dictionary \(token_dictionary\*\.pkl\)"):
        m.get_tokenizer()
    sd = {k: v for k, v in hf.state_dict().items() if "layer.2.output.dense" not in k}
    save_safetensors(sd, tmp_path / "trunc")
    (tmp_path / "trunc" / "config.json").write_text(hf.config.to_json_string())
    with pytest.raises(CheckpointError, match=r"2 keys missing .*bert\.encoder\.layer\.2\.output\.dense\.bias"):
        Geneformer.from_pretrained(tmp_path / "trunc")


@pytest.mark.gpu
def test_gpu_bf16_parity(pair):
    hf, m = pair
    ids, offsets, cells = _cells([60, 17, 33])
    pids, am = _padded(cells)
    with torch.no_grad():
        ref = hf(input_ids=pids, attention_mask=am).logits[am.bool()]
        got = m.to("cuda", torch.bfloat16).token_logits(ids).float().cpu()
    m.to("cpu", torch.float32)
    torch.testing.assert_close(got, ref, atol=0.1, rtol=0.05)


@pytest.mark.gpu
def test_gpu_bf16_released_size():
    # Geneformer V2-104M shape on ragged cells: omicskern bf16 within 2x transformers' bf16 (SDPA) error
    from transformers import BertConfig, BertForMaskedLM

    from omicskern.models import from_hf

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=20275, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, hidden_act="relu", max_position_embeddings=4096, pad_token_id=0)
    hf = BertForMaskedLM(cfg).cuda().eval()
    hf.set_attn_implementation("sdpa")
    lens = [4096, 2000, 731, 64]
    g = torch.Generator().manual_seed(1)
    cells = [torch.randint(4, 20275, (n,), generator=g) for n in lens]
    pids, am = _padded(cells)
    pids, am = pids.cuda(), am.cuda()
    ids = torch.cat(cells).cuda()
    offsets = np.concatenate([[0], np.cumsum(lens)])
    real = am.bool()
    with torch.no_grad():
        ref32 = hf(input_ids=pids, attention_mask=am, output_hidden_states=True).hidden_states[-1][real]
        hf16 = hf.to(torch.bfloat16)
        ref16 = hf16(input_ids=pids, attention_mask=am, output_hidden_states=True).hidden_states[-1][real].float()
        got = from_hf(hf16)(Batch(ids, offsets)).last_hidden_state.float()
    err_ref = (ref16 - ref32).abs().max().item()
    err = (got - ref32).abs().max().item()
    assert err <= 2 * err_ref + 1e-2, (err, err_ref)
