"""grow() is pure: input untouched, no shared storage, any dtype, meta device, JSON provenance."""

import json

import pytest
import torch

from growlm.config import GrowSpec
from growlm.errors import GrowlmError
from growlm.grow import check_provenance, grow, inherited_names, new_names, summarize

# (source changes, target changes, spec) covering every op
ALL_OPS = [
    (dict(n_layers=2), dict(n_layers=4), GrowSpec(op="stack", factor=2)),
    (dict(n_layers=2), dict(n_layers=4), GrowSpec(op="duplicate")),
    (dict(n_layers=3), dict(n_layers=5), GrowSpec(op="interpolate", add=2)),
    (dict(n_layers=2), dict(n_layers=3), GrowSpec(op="identity")),
    (dict(n_layers=2), dict(n_layers=3), GrowSpec(op="random", position="top")),
    (dict(n_kv_heads=2), dict(n_kv_heads=4, d_model=64, n_heads=8, ffn_dim=128), GrowSpec(op="clone")),
    (dict(n_kv_heads=2), dict(n_kv_heads=3, d_model=48, n_heads=6, ffn_dim=80), GrowSpec(op="split")),
    (dict(n_kv_heads=2), dict(d_model=64, n_heads=8, ffn_dim=80), GrowSpec(op="zero")),
    ({}, dict(d_model=64, n_heads=8, ffn_dim=80), GrowSpec(op="width_random")),
    (dict(n_layers=1), dict(n_layers=3), GrowSpec(op="reuse", layer0="attn_ffn")),
]
IDS = [c[2].op for c in ALL_OPS]


@pytest.mark.parametrize("src,dst,spec", ALL_OPS, ids=IDS)
def test_input_untouched_and_output_independent(src, dst, spec, tiny, make_model):
    old = tiny(**src)
    new = old.with_(**dst)
    state = make_model(old).state_dict()
    fresh = make_model(new, seed=3).state_dict()
    before = {k: v.clone() for k, v in state.items()}
    fresh_before = {k: v.clone() for k, v in fresh.items()}
    out, prov = grow(state, old, new, spec, fresh=fresh)
    for v in out.values():
        v.add_(1.0)  # must not leak into the inputs
    for k in state:
        assert torch.equal(state[k], before[k])
    for k in fresh:
        assert torch.equal(fresh[k], fresh_before[k])
    assert list(prov) == list(out)
    json.dumps(prov)  # goes into meta.json as is
    assert check_provenance(json.loads(json.dumps(prov))) == prov


@pytest.mark.parametrize("src,dst,spec", ALL_OPS, ids=IDS)
def test_meta_device_gives_the_same_shapes_and_provenance(src, dst, spec, tiny, make_model):
    from growlm.model import Transformer

    old = tiny(**src)
    new = old.with_(**dst)
    real_out, real_prov = grow(make_model(old).state_dict(), old, new, spec)
    with torch.device("meta"):
        meta_state = Transformer(old).state_dict()
    meta_out, meta_prov = grow(meta_state, old, new, spec)
    assert meta_prov == real_prov
    for k, v in meta_out.items():
        assert v.is_meta and v.shape == real_out[k].shape


@pytest.mark.parametrize("src,dst,spec", ALL_OPS, ids=IDS)
def test_low_precision_dtype_is_kept(src, dst, spec, tiny, make_model):
    old = tiny(**src)
    new = old.with_(**dst)
    state = {k: v.to(torch.bfloat16) for k, v in make_model(old).state_dict().items()}
    out, _ = grow(state, old, new, spec)  # fresh built here, then cast to the state's dtype
    assert all(v.dtype == torch.bfloat16 for v in out.values())


def test_without_fresh_the_global_rng_decides(tiny, make_model):
    old = tiny(n_layers=2)
    new = old.with_(n_layers=3)
    state = make_model(old).state_dict()
    torch.manual_seed(7)
    a, _ = grow(state, old, new, GrowSpec(op="random"))
    torch.manual_seed(7)
    b, _ = grow(state, old, new, GrowSpec(op="random"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_width_provenance(tiny, make_model):
    old = tiny(n_kv_heads=2)
    new = old.with_(ffn_dim=128)  # only the FFN grows
    out, prov = grow(make_model(old).state_dict(), old, new, GrowSpec(op="clone"))
    assert prov["layers.0.self_attn.q_proj.weight"] == {
        "kind": "copied", "sources": ["layers.0.self_attn.q_proj.weight"], "inherited": True,
    }
    assert prov["layers.0.mlp.down_proj.weight"] == {
        "kind": "derived", "sources": ["layers.0.mlp.down_proj.weight"], "inherited": True,
    }
    assert inherited_names(prov) == set(prov) and new_names(prov) == set()
    assert summarize(prov) == {"copied": 15, "derived": 6, "new": 0, "inherited": 21}


def test_tied_width_growth_keeps_one_tensor(tiny, make_model):
    old = tiny(tie_embeddings=True)
    new = old.with_(d_model=64, n_heads=8)
    state = make_model(old).state_dict()
    out, prov = grow(state, old, new, GrowSpec(op="clone"))
    assert out["lm_head.weight"] is out["embed_tokens.weight"]
    assert prov["lm_head.weight"]["sources"] == ["lm_head.weight"]
    # the head reads both copies of each unit, so the final norm halves instead
    torch.testing.assert_close(out["norm.weight"], state["norm.weight"].repeat(2) / 2)


def test_check_provenance_rejects_malformed_entries():
    with pytest.raises(GrowlmError, match="bad entry for 'x'"):
        check_provenance({"x": {"kind": "borrowed", "sources": [], "inherited": False}})
    with pytest.raises(GrowlmError, match="expected a mapping"):
        check_provenance([1, 2])
