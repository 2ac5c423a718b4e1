"""The model contract, for every registered model type: strict load from a checkpoint folder,
``omicskern.load`` detection, the model's own tokenizer on real data straight into ``forward`` and
``embed``, ragged = padded, batch invariance, every backend agreeing, pooling names and shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import omicskern
from omicskern.batch import Batch
from omicskern.errors import CheckpointError
from omicskern.models import POOLINGS, REGISTRY, OmicsModel
from tests.models import _folders
from tests.models._util import backends_on_cpu

TYPES = list(REGISTRY)
ATOL, RTOL = 2e-5, 1e-4  # fp32, 2 layers: observed max abs error ~1e-6


def test_every_registered_type_has_a_checkpoint_builder():
    assert set(TYPES) == set(_folders.BUILDERS)


@pytest.fixture(scope="module", params=TYPES)
def folder(request, tmp_path_factory):
    return request.param, _folders.BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def model(folder):
    name, path = folder
    return omicskern.load(path)


def test_load_detects_type(folder, model):
    name, path = folder
    entry = REGISTRY[name]
    assert type(model) is entry.cls and isinstance(model, OmicsModel)
    assert model.model_type == name and model.kind in ("masked_lm", "causal_lm", "cell")
    assert model.source_path == path and not model.training
    assert omicskern.models.detect(path) is entry
    # the class's own strict load gives the same weights
    other = entry.cls.from_pretrained(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


def test_strict_load_names_missing_and_unexpected_keys(folder, tmp_path):
    from safetensors.torch import load_file, save_file

    name, path = folder
    sd = load_file(str(path / "model.safetensors"))
    dropped = sorted(sd)[len(sd) // 2]
    for label, change in (("missing", lambda d: d.pop(dropped)), ("unexpected", lambda d: d.update(extra=torch.zeros(1)))):
        d = dict(sd)
        change(d)
        bad = tmp_path / label
        bad.mkdir()
        save_file(d, str(bad / "model.safetensors"))
        for f in path.iterdir():  # config (config.json / args.json), vocabularies: all but the weights
            if f.is_file() and f.name != "model.safetensors":
                (bad / f.name).write_bytes(f.read_bytes())
        with pytest.raises(CheckpointError, match=f"keys? {label}|{label} keys"):
            REGISTRY[name].cls.from_pretrained(bad)


def test_from_state_dict_matches_from_pretrained(folder, model):
    from omicskern.models._loading import read_state_dict

    name, path = folder
    cfg = json.loads(_folders.config_file(path).read_text())
    m2 = REGISTRY[name].cls.from_state_dict(read_state_dict(path), cfg)
    assert m2.source_path is None
    if name == "scgpt":  # no folder: the vocabulary comes with get_tokenizer
        m2.get_tokenizer(vocab=path / "vocab.json")
        assert m2.cls_token_id == model.cls_token_id is not None
    if name == "geneformer":  # no folder: the dictionaries (and so <cls>/<eos>) come with get_tokenizer
        m2.get_tokenizer(token_dictionary=next(path.glob("token_dictionary*")),
                         gene_medians=next(path.glob("gene_median*")))
        assert (m2.cls_token_id, m2.eos_token_id) == (model.cls_token_id, model.eos_token_id) == (2, 3)
    b = _folders.real_batch(model)
    torch.testing.assert_close(m2.embed(b).pooled, model.embed(b).pooled, atol=0, rtol=0)


def test_tokenizer_output_goes_straight_in(model):
    batch = _folders.real_batch(model)
    assert isinstance(batch, Batch) and len(batch) >= 3
    out = model(batch)
    n, t = len(batch), batch.num_tokens
    assert out.last_hidden_state.shape[0] == t and out.cu_seqlens.tolist() == batch.cu_seqlens.tolist()
    e = model.embed(batch)
    c = out.last_hidden_state.shape[1]
    assert e.tokens.shape == (t, c) and e.pooled.shape == (n, c)
    assert torch.isfinite(e.pooled).all()
    if model.kind != "cell" or getattr(model, "cls", True) is not None:  # Geneformer without an MLM head
        assert model.token_logits(batch).shape[0] == t


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_names(model, pooling):
    batch = _folders.real_batch(model)
    e = model.embed(batch, pooling=pooling)
    assert e.pooled.shape == (len(batch), e.tokens.shape[1]) and e.pooling == pooling
    rows = [e.row(i) for i in range(len(batch))]
    if pooling == "cls":
        torch.testing.assert_close(e.pooled, torch.stack([r[0] for r in rows]))
    elif pooling == "last":
        torch.testing.assert_close(e.pooled, torch.stack([r[-1] for r in rows]))
    elif model.model_type != "geneformer":  # Geneformer's mean/max leave out <cls>/<eos> (test_geneformer)
        ref = torch.stack([r.mean(0) if pooling == "mean" else r.amax(0) for r in rows])
        torch.testing.assert_close(e.pooled, ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="pooling must be one of"):
        model.embed(batch, pooling="median")


def test_layers(model):
    batch = _folders.real_batch(model)
    out = model(batch, output_hidden_states=True)
    states = out.hidden_states
    assert len(states) == model._num_states()
    torch.testing.assert_close(states[-1], out.last_hidden_state)
    for layer in (0, 1, -1):
        torch.testing.assert_close(model.embed(batch, layer=layer).tokens, states[layer])
    with pytest.raises(ValueError, match="layer must be in"):
        model.embed(batch, layer=len(states))


def test_ragged_equals_padded(model):
    batch = _folders.real_batch(model)
    tok = model.get_tokenizer()
    pad_id = getattr(tok, "pad_token_id", 0)
    p = batch.to_padded(pad_id, "right")
    if model.kind == "causal_lm":  # no mask: right padding is never seen by the real positions
        h = model(p.input_ids).last_hidden_state
    else:
        h = model(p).last_hidden_state
    ragged = model(batch).last_hidden_state
    torch.testing.assert_close(ragged, h[torch.from_numpy(p.attention_mask)], atol=ATOL, rtol=RTOL)


def test_batch_invariance(model):
    """Each row's outputs are the ones it gets alone, whatever it is batched with."""
    batch = _folders.real_batch(model)
    whole = model.embed(batch, pooling="mean")
    order = np.arange(len(batch))[::-1].copy()
    rev = model.embed(batch[order], pooling="mean")
    for i in range(min(len(batch), 4)):
        alone = model.embed(batch[i:i + 1], pooling="mean")
        torch.testing.assert_close(alone.pooled[0], whole.pooled[i], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(alone.tokens, whole.row(i), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(rev.pooled[len(batch) - 1 - i], whole.pooled[i], atol=ATOL, rtol=RTOL)


def test_every_backend_agrees(model):
    batch = _folders.real_batch(model)[:2]  # the Triton interpreter is slow
    ref = model.embed(batch).tokens
    try:
        for op in model.ops:
            for be in backends_on_cpu(op if op != "fft_conv" else "fftconv"):
                model.set_backend(**{op: be})
                assert model.backends[op] == be
                torch.testing.assert_close(model.embed(batch).tokens, ref, atol=1e-4, rtol=1e-4,
                                           msg=lambda m, op=op, be=be: f"{op}={be}: {m}")
                model.set_backend(**{op: None})
    finally:
        model.set_backend(**{op: None for op in model.ops})
    with pytest.raises(TypeError, match="unknown op 'nope'"):
        model.set_backend(nope="x")


def test_numpy_inputs_and_bad_inputs(model):
    batch = _folders.real_batch(model)
    p = batch.to_padded(0, "right")
    if model.kind != "causal_lm":
        kw = {} if p.values is None else {"values": p.values}  # scGPT's bins go with its ids
        a = model(p.input_ids, p.attention_mask, **kw).last_hidden_state  # numpy accepted where tensors are
        b = model(torch.from_numpy(p.input_ids), torch.from_numpy(p.attention_mask),
                  **{k: torch.from_numpy(v) for k, v in kw.items()}).last_hidden_state
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bad = batch.input_ids.copy()
        bad[1] = 10**6
        model(Batch(bad, batch.cu_seqlens))
    long = Batch(np.full(model.max_length + 1, 5, np.int32), [0, model.max_length + 1],
                 values=_folders.values_like(model, model.max_length + 1))
    if model.max_length_is_hard:
        with pytest.raises(ValueError, match="more than this model's max_length"):
            model(long)
    else:  # ALiBi / rotary positions extrapolate: a longer row runs
        assert model(long).last_hidden_state.shape[0] == model.max_length + 1
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            type(model).from_pretrained(model.source_path, device="cuda")


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="omicskern loads local checkpoint folders.*huggingface-cli download"):
        omicskern.load("zhihan1996/DNABERT-2-117M")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"not a model type omicskern knows.*llama.*model\.safetensors.*"
                                              r"Supported: dnabert2"):
        omicskern.load(tmp_path)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="Geneformer's only next to its dictionaries"):
        omicskern.load(bert)
    with pytest.raises(CheckpointError, match="not found"):
        omicskern.load(tmp_path / "nowhere")


def test_public_names():
    assert "load" in dir(omicskern) and "Batch" in dir(omicskern)
    for name in ("DNABERT2", "HyenaDNA", "NucleotideTransformer", "Geneformer", "load", "REGISTRY", "OmicsModel"):
        assert name in dir(omicskern.models)
        getattr(omicskern.models, name)


def test_names_are_stable():
    """A public name means one thing before and after every submodule is imported."""
    import importlib
    import pkgutil

    before = {n: getattr(omicskern.models, n) for n in omicskern.models.__all__}
    top = {n: getattr(omicskern, n) for n in ("load", "accelerate", "Batch")}
    for info in pkgutil.iter_modules(omicskern.models.__path__):
        importlib.import_module(f"omicskern.models.{info.name}")
    for n, v in before.items():
        assert getattr(omicskern.models, n) is v, n
    for n, v in top.items():
        assert getattr(omicskern, n) is v, n
    assert callable(omicskern.accelerate) and callable(omicskern.models.accelerate)
