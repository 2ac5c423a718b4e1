"""omicskern.accelerate (in-place attention swap) and from_hf (conversion) on transformers models."""

from __future__ import annotations

import pytest
import torch

import omicskern
import omicskern.ops.attention as attn_mod
from omicskern.models import Geneformer, NucleotideTransformer, from_hf
from omicskern.models.hf import restore
from tests.models._util import backends_on_cpu

# fp32, 2 layers; observed differences ~1e-6 (reference/triton vs transformers' eager softmax)
ATOL, RTOL = 2e-5, 1e-4


def _bert(masked_lm=True, seed=0):
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64, hidden_act="relu", hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return (BertForMaskedLM(cfg) if masked_lm else BertModel(cfg)).eval()


def _esm(position="absolute", seed=0):
    from transformers import EsmConfig, EsmForMaskedLM

    torch.manual_seed(seed)
    cfg = EsmConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=70, position_embedding_type=position, pad_token_id=1, mask_token_id=2,
                    emb_layer_norm_before=False, token_dropout=False, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    return EsmForMaskedLM(cfg).eval()


def _batch(lengths=(29, 11, 1), vocab=40, seed=5):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(4, vocab, (len(lengths), L), generator=g)
    am = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    return ids * am + 1 * (1 - am), am


class _Spy:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = attn_mod.attention

        def spy(*a, **k):
            self.calls += 1
            return real(*a, **k)

        monkeypatch.setattr(attn_mod, "attention", spy)


@pytest.mark.parametrize("backend", backends_on_cpu("attention"))
@pytest.mark.parametrize("make", [
    pytest.param(lambda: _bert(), id="BertForMaskedLM"),
    pytest.param(lambda: _esm("absolute"), id="EsmForMaskedLM-absolute"),
    pytest.param(lambda: _esm("rotary"), id="EsmForMaskedLM-rotary"),
])
def test_accelerate_keeps_outputs(make, backend, monkeypatch):
    model = make()
    model.set_attn_implementation("eager")
    ids, am = _batch((13, 5) if backend == "triton" else (29, 11, 1))
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=am).logits
    spy = _Spy(monkeypatch)
    rep = omicskern.accelerate(model, backend=backend)
    assert rep.recognized and len(rep.patched) == 2 and rep.previous == "eager"
    assert all(p.endswith("attention.self") for p in rep.patched)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=am).logits
    assert spy.calls == 2, "every layer's attention must run through omicskern"
    real = am.bool()
    torch.testing.assert_close(got[real], ref[real], atol=ATOL, rtol=RTOL)
    restore(model, "eager")
    with torch.no_grad():
        back = model(input_ids=ids, attention_mask=am).logits
    assert spy.calls == 2
    torch.testing.assert_close(back, ref)


@pytest.mark.parametrize("backend", backends_on_cpu("attention"))
def test_accelerate_left_padding(backend):
    # left padding: the Triton backend takes right-padded masks only, so accelerate packs the tokens itself
    model = _bert(masked_lm=False)
    model.set_attn_implementation("eager")
    ids, am = _batch((11, 4))
    ids, am = ids.flip(1), am.flip(1)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=am).last_hidden_state
        omicskern.accelerate(model, backend=backend)
        got = model(input_ids=ids, attention_mask=am).last_hidden_state
    real = am.bool()
    torch.testing.assert_close(got[real], ref[real], atol=ATOL, rtol=RTOL)


def test_accelerate_gradients(monkeypatch):
    model = _bert()
    model.set_attn_implementation("eager")
    ids, am = _batch((9, 4))
    model(input_ids=ids, attention_mask=am).logits[am.bool()].square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    omicskern.accelerate(model, backend="sdpa")
    model(input_ids=ids, attention_mask=am).logits[am.bool()].square().sum().backward()
    for n, g in ref.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, atol=1e-5, rtol=1e-4, msg=n)


def test_custom_4d_mask_falls_back():
    model = _bert(masked_lm=False)
    model.set_attn_implementation("eager")
    ids, _ = _batch((7, 7))
    # an additive causal 4-D mask (transformers' eager convention): not a padding mask
    m4 = torch.zeros(2, 1, 7, 7).masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=m4).last_hidden_state
        omicskern.accelerate(model)
        got = model(input_ids=ids, attention_mask=m4).last_hidden_state
    fallbacks = [getattr(m, "_omicskern_fallbacks", 0) for m in model.modules()]
    assert sum(fallbacks) == 2 and max(fallbacks) == 1  # each of the 2 layers fell back once
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)


def test_unknown_model_left_untouched():
    lin = torch.nn.Linear(3, 3)
    w = lin.weight.clone()
    with pytest.warns(UserWarning, match="left untouched"):
        rep = omicskern.accelerate(lin)
    assert not rep.recognized and rep.patched == [] and torch.equal(lin.weight, w)
    from transformers import GPT2Config, GPT2Model

    gpt = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=16))
    impl = gpt.config._attn_implementation
    rep = omicskern.accelerate(gpt, quiet=True)
    assert not rep.recognized and "model_type 'gpt2'" in rep.message
    assert gpt.config._attn_implementation == impl


@pytest.mark.parametrize("kind", ["BertForMaskedLM", "BertModel", "EsmForMaskedLM", "EsmForMaskedLM-rotary"])
def test_from_hf(kind):
    hf = {"BertForMaskedLM": lambda: _bert(), "BertModel": lambda: _bert(masked_lm=False),
          "EsmForMaskedLM": lambda: _esm(), "EsmForMaskedLM-rotary": lambda: _esm("rotary")}[kind]()
    hf.set_attn_implementation("eager")
    ours = from_hf(hf)
    assert isinstance(ours, Geneformer if kind.startswith("Bert") else NucleotideTransformer)
    ids, am = _batch()
    real = am.bool()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, output_hidden_states=True)
        o = ours(ids, am, return_logits=kind != "BertModel")
    if kind == "BertModel":
        torch.testing.assert_close(o.last_hidden_state[real], ref.last_hidden_state[real], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(o.pooler_output, ref.pooler_output, atol=ATOL, rtol=RTOL)
    else:
        torch.testing.assert_close(o.logits[real], ref.logits[real], atol=ATOL, rtol=RTOL)


def test_from_hf_rejects_unknown():
    from transformers import GPT2Config, GPT2Model

    with pytest.raises(TypeError, match="not a model omicskern can convert"):
        from_hf(GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=16)))
    with pytest.raises(TypeError, match="has no .config"):
        from_hf(torch.nn.Linear(2, 2))


def test_backend_choice_lives_on_the_model():
    """Two accelerated models keep their own backends (no process-global state)."""
    a, b = _bert(masked_lm=False), _bert(masked_lm=False)
    omicskern.accelerate(a, backend="reference")
    omicskern.accelerate(b, backend="sdpa")
    got = {type(m).__name__: m._omicskern_backend for m in a.modules() if hasattr(m, "_omicskern_backend")}
    assert set(got.values()) == {"reference"}
    assert {m._omicskern_backend for m in b.modules() if hasattr(m, "_omicskern_backend")} == {"sdpa"}
