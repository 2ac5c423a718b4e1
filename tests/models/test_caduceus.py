"""Caduceus (PS and Ph) against the reference fixture (the original caduceus + mamba_ssm 1.2.0.post1
code on CPU, ../shared/fixtures/caduceus_tiny), the released checkpoint format, its tokenizer, and
reverse-complement equivariance on random weights.

Tolerance: the fixture README's suggestion for an fp32 implementation, atol = rtol = 1e-4 (its
float64 re-implementation agrees with the arrays to <= 2.4e-6). Unpadded outputs are compared with
unpadded references, padded with padded.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from omicskern.batch import Batch
from omicskern.errors import CheckpointError
from omicskern.models import Caduceus
from omicskern.models.caduceus import CaduceusConfig
from tests.models._util import fixture_weights, save_safetensors

FIX = "fixtures/caduceus_tiny"
ATOL, RTOL = 1e-4, 1e-4


def close(got, want, what):
    np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=RTOL, err_msg=what)


@pytest.fixture(scope="module")
def ps(fix):
    return Caduceus.from_pretrained(fix[0])


@pytest.fixture(scope="module")
def ph(fix):
    d = fix[0] / "ph"
    return Caduceus.from_pretrained(d), np.load(d / "outputs.npz")


def _rows(inp):
    ids, lengths = inp["input_ids"], inp["lengths"]
    return [ids[i, :n] for i, n in enumerate(lengths)]


def test_tokenizer_reproduces_fixture_ids(ps, fix):
    """The pretraining setting (no special tokens) gives the fixture's ids from the raw windows
    (lower case and 'n' included); the default appends [SEP] and pads on the left."""
    _, inp, _ = fix
    seqs = [str(s) for s in inp["sequences"]]
    tok = ps.get_tokenizer(add_special_tokens=False)
    b = tok.encode_batch(seqs, padding=False)
    for i, row in enumerate(_rows(inp)):
        assert list(b)[i].tolist() == row.tolist()
    dflt = ps.get_tokenizer()
    assert list(dflt.encode("ACGTn")) == [7, 8, 9, 10, 11, 1]  # CaduceusTokenizer: bases then [SEP]
    p = dflt.encode_batch(["AC", "ACGT"])
    assert p.input_ids[0].tolist() == [4, 4, 7, 8, 1] and p.attention_mask[0].tolist() == [0, 0, 1, 1, 1]
    assert list(dflt.encode("AXC")) == [7, 6, 8, 1]  # other characters -> [UNK], as CaduceusTokenizer


def test_ps_parity_ragged(ps, fix):
    """The tokenizer's ragged batch (each row alone, never padded) = the unpadded references."""
    _, inp, out = fix
    b = ps.get_tokenizer(add_special_tokens=False).encode_batch([str(s) for s in inp["sequences"]], padding=False)
    with torch.no_grad():
        o = ps(b, return_logits=True, output_hidden_states=True)
    for i in range(len(b)):
        s, t = int(o.cu_seqlens[i]), int(o.cu_seqlens[i + 1])
        close(o.last_hidden_state[s:t], out[f"last_hidden_state_unpadded_{i}"], f"hidden row {i}")
        close(o.logits[s:t], out[f"logits_unpadded_{i}"], f"logits row {i}")
    s, t = int(o.cu_seqlens[1]), int(o.cu_seqlens[2])
    assert len(o.hidden_states) == 3
    for k in range(3):  # embedding, layer 0's mixer output, final normed output
        close(o.hidden_states[k][s:t], out[f"hidden_states_unpadded_1_{k}"], f"hidden_states[{k}]")
    assert o.last_hidden_state.shape[1] == 128  # 2 d_model (RCPS)


def test_ps_parity_padded(ps, fix):
    """Without a mask the padded batch runs as the reference runs it: pads are input."""
    _, inp, out = fix
    with torch.no_grad():
        o = ps(torch.from_numpy(inp["input_ids"]), return_logits=True)
    close(o.last_hidden_state, out["last_hidden_state"], "padded hidden")
    close(o.logits, out["logits"], "padded logits")
    # with a mask the rows run unpadded (Caduceus has no mask): the unpadded references
    mask = np.arange(1000)[None] < inp["lengths"][:, None]
    with torch.no_grad():
        om = ps(inp["input_ids"], mask, return_logits=True)
    close(om.logits[1, :131], out["logits_unpadded_1"], "masked row 1")
    assert float(om.last_hidden_state[1, 131:].abs().max()) == 0.0


def test_ph_parity(ph, fix):
    model, out = ph
    _, inp, _ = fix
    assert not model.config.rcps and model.config.d_model == 64
    b = Batch(np.concatenate(_rows(inp)).astype(np.int32), np.concatenate([[0], np.cumsum(inp["lengths"])]))
    with torch.no_grad():
        o = model(b, return_logits=True)
        padded = model(torch.from_numpy(inp["input_ids"]), return_logits=True)
    for i in range(3):
        s, t = int(o.cu_seqlens[i]), int(o.cu_seqlens[i + 1])
        close(o.last_hidden_state[s:t], out[f"last_hidden_state_unpadded_{i}"], f"Ph hidden row {i}")
        close(o.logits[s:t], out[f"logits_unpadded_{i}"], f"Ph logits row {i}")
    close(padded.last_hidden_state, out["last_hidden_state"], "Ph padded hidden")
    close(padded.logits, out["logits"], "Ph padded logits")


def test_unfused_add_norm_is_another_function(fix, tmp_path):
    """fused_add_norm=false (norm keys renamed to *.norm.submodule.weight): the fixture's unfused
    outputs, which differ from the fused ones by up to ~1 (the fused blocks swap strands)."""
    d, inp, out = fix
    cfg = json.loads((d / "config.json").read_text()) | {"fused_add_norm": False}
    sd = {k.replace(".norm.weight", ".norm.submodule.weight").replace("norm_f.weight", "norm_f.submodule.weight"): v
          for k, v in fixture_weights(d).items()}
    m = Caduceus.from_state_dict(sd, cfg)
    with torch.no_grad():
        for i, row in enumerate(_rows(inp)):
            o = m(torch.from_numpy(row[None]), return_logits=True)
            close(o.logits[0], out[f"logits_unfused_unpadded_{i}"], f"unfused logits row {i}")
            close(o.last_hidden_state[0], out[f"last_hidden_state_unfused_unpadded_{i}"], f"unfused hidden row {i}")


def test_released_format_reties_and_checks(fix, tmp_path):
    d = fix[0]
    m = Caduceus.from_pretrained(d)
    lay = m.caduceus.backbone.layers[0].mixer.submodule
    assert lay.mamba_rev.in_proj.weight is lay.mamba_fwd.in_proj.weight
    assert lay.mamba_rev.out_proj.weight is lay.mamba_fwd.out_proj.weight
    assert not torch.equal(lay.mamba_rev.x_proj.weight, lay.mamba_fwd.x_proj.weight)
    sd = fixture_weights(d)
    assert "lm_head.lm_head.weight" not in sd and "caduceus.backbone.layers.0.mixer.submodule.mamba_rev.in_proj.weight" not in sd
    # complement_map by integer key: a lexicographically re-sorted JSON loads the same model
    cfg = json.loads((d / "config.json").read_text())
    cfg["complement_map"] = dict(sorted(cfg["complement_map"].items()))
    assert list(cfg["complement_map"])[:3] == ["0", "1", "10"]
    m2 = Caduceus.from_state_dict(sd, cfg)
    assert m2.config.complement_list() == m.config.complement_list() == [0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11, 12,
                                                                         13, 14, 15]
    # a complement map that disagrees with the checkpoint's buffer, a missing key: named
    bad = dict(cfg, complement_map={**cfg["complement_map"], "7": 7, "10": 10})
    with pytest.raises(CheckpointError, match="complement_map"):
        Caduceus.from_state_dict(sd, bad)
    sd2 = dict(sd)
    sd2.pop("caduceus.backbone.layers.1.mixer.submodule.mamba_rev.A_log")
    with pytest.raises(CheckpointError, match="1 keys missing.*mamba_rev.A_log"):
        Caduceus.from_state_dict(sd2, cfg)
    # the omicskern.load path detects the type
    import omicskern

    folder = save_safetensors(sd, tmp_path / "ck", config_from=d)
    assert type(omicskern.load(folder)) is Caduceus


def _random(rcps: bool, seed: int) -> Caduceus:
    cfg = dict(d_model=16, n_layer=2, vocab_size=12, rcps=rcps, ssm_cfg={"d_state": 4},
               complement_map={str(i): i for i in range(16)} | {"7": 10, "10": 7, "8": 9, "9": 8})
    torch.manual_seed(seed)
    m = Caduceus(CaduceusConfig.from_dict(cfg)).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n or n.endswith("bias") or n.endswith(".D"):
                p.add_(0.3 * torch.randn_like(p))
    return m


def test_ps_rc_equivariance_random_weights():
    """H(rc(x)) = flipLC(H(x)) and logits(rc(x))[l, v] = logits(x)[L-1-l, comp(v)], on random
    weights (fused add-norm, the strands swapping at every layer) and a real-ish row."""
    m = _random(True, 11)
    ids = torch.randint(7, 12, (1, 57), generator=torch.Generator().manual_seed(2))
    rc = m.reverse_complement_ids(ids)
    with torch.no_grad():
        a, b = m(ids, return_logits=True), m(rc, return_logits=True)
    torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state.flip(1, 2), atol=1e-5, rtol=1e-5)
    comp = torch.tensor(m.config.complement_list())
    torch.testing.assert_close(b.logits, a.logits.flip(1)[..., comp], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rcps", [False, True], ids=["Ph", "PS"])
def test_rc_average_embeddings_are_rc_invariant(rcps):
    m = _random(rcps, 12)
    tok = m.get_tokenizer(add_special_tokens=False)
    seqs = ["ACGTTGCAAGGCTTAAC", "GGGATCCAT"]
    rcs = ["".join({"A": "T", "C": "G", "G": "C", "T": "A"}[c] for c in reversed(s)) for s in seqs]
    e = m.embed(tok.encode_batch(seqs, padding=False), rc="average")
    r = m.embed(tok.encode_batch(rcs, padding=False), rc="average")
    torch.testing.assert_close(e.pooled, r.pooled, atol=1e-5, rtol=1e-5)
    # token states too, in reversed order within each row
    for i in range(2):
        torch.testing.assert_close(e.row(i), r.row(i).flip(0), atol=1e-5, rtol=1e-5)
    assert e.tokens.shape[1] == 16
    plain = m.embed(tok.encode_batch(seqs, padding=False))
    if rcps:  # equivariant by construction: the two strands of the plain states, averaged
        torch.testing.assert_close(e.tokens, (plain.tokens[:, :16] + plain.tokens[:, 16:].flip(-1)) / 2)
    else:
        assert not torch.allclose(plain.pooled, m.embed(tok.encode_batch(rcs, padding=False)).pooled, atol=1e-3)
    with pytest.raises(ValueError, match="rc must be"):
        m.embed(tok.encode_batch(seqs, padding=False), rc="sum")


def test_bad_configs():
    with pytest.raises(CheckpointError, match="missing field 'd_model'"):
        CaduceusConfig.from_dict({"n_layer": 2, "vocab_size": 12})
    with pytest.raises(CheckpointError, match="rms_norm=false"):
        CaduceusConfig.from_dict({"d_model": 8, "n_layer": 1, "vocab_size": 12, "rms_norm": False})
    with pytest.raises(CheckpointError, match="not an involution"):
        CaduceusConfig.from_dict({"d_model": 8, "n_layer": 1, "vocab_size": 12, "rcps": True,
                                  "complement_map": {"7": 10}})
