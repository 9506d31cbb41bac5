"""Growth of models with the open families' features: biases, q/k norms, head_dim, RoPE scaling.

Depth ops copy, average or zero the new tensors like every other layer tensor; width ops keep
them function-preserving where the plain model is; growth between architectures is refused.
"""

import pytest
import torch

from growlm.config import GrowSpec
from growlm.errors import GrowlmError
from growlm.freeze import select_frozen
from growlm.grow import check_growth, grow, inherited_names, new_names

TOL = dict(atol=1e-5, rtol=1e-5)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 4}
FAMILIES = {
    "qwen2": dict(model_type="qwen2", qkv_bias=True, n_kv_heads=2, tie_embeddings=True),
    "qwen3": dict(model_type="qwen3", qk_norm=True, head_dim=12, n_kv_heads=2,
                  qkv_bias=True, o_bias=True),
    "llama3_bias": dict(qkv_bias=True, o_bias=True, n_kv_heads=2, rope_theta=5e5, rope_scaling=LLAMA3),
    "mistral": dict(model_type="mistral", head_dim=16, n_kv_heads=2),
}
WIDER = dict(d_model=64, n_heads=8, n_kv_heads=4, ffn_dim=128)  # ×2 on every axis
SPLIT = dict(d_model=48, n_heads=6, n_kv_heads=3, ffn_dim=80)  # ×1.5


def _same_logits(old, new, spec, make_model, logits_of, tokens):
    model = make_model(old)
    state, prov = grow(model.state_dict(), old, new, spec)
    with torch.no_grad():
        before = model(tokens)
    assert before.abs().max() > 1.0
    torch.testing.assert_close(logits_of(new, state, tokens), before, **TOL)
    return state, prov


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", [GrowSpec(op="identity", add=2), GrowSpec(op="identity", add=3, position="top")],
                         ids=["even", "top"])
def test_identity_preserves_logits(family, spec, tiny, make_model, logits_of, tokens):
    old = tiny(**FAMILIES[family])
    state, prov = _same_logits(old, old.with_(n_layers=2 + spec.add), spec, make_model, logits_of, tokens)
    new_layers = {n.split(".")[1] for n in new_names(prov)}
    assert new_layers and all(
        torch.all(state[f"layers.{i}.self_attn.o_proj.weight"] == 0) for i in new_layers)
    if old.o_bias:  # the o_proj bias adds to the residual stream too: zeroed with its weight
        assert all(torch.all(state[f"layers.{i}.self_attn.o_proj.bias"] == 0) for i in new_layers)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("op, shape", [("clone", WIDER), ("split", SPLIT)])
def test_clone_and_split_preserve_logits(family, op, shape, tiny, make_model, logits_of, tokens):
    old = tiny(**FAMILIES[family])
    new = old.with_(**shape)
    assert new.head_size == old.head_size
    _same_logits(old, new, GrowSpec(op=op), make_model, logits_of, tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_preserves_logits(family, tiny, make_model, logits_of, tokens):
    old = tiny(**FAMILIES[family], norm_eps=1e-12)  # exact when the norm's eps is negligible
    state, _ = _same_logits(old, old.with_(**WIDER), GrowSpec(op="zero"), make_model, logits_of, tokens)
    if old.o_bias:  # new residual dims start at zero, the bias included
        assert torch.all(state["layers.0.self_attn.o_proj.bias"][32:] == 0)


def test_width_growth_moves_biases_with_their_units(tiny, make_model):
    old = tiny(**FAMILIES["qwen3"])
    src = make_model(old).state_dict()
    out, prov = grow(src, old, old.with_(**WIDER), GrowSpec(op="clone"))
    hd = old.head_size
    q_bias, new_q_bias = src["layers.0.self_attn.q_proj.bias"], out["layers.0.self_attn.q_proj.bias"]
    # kv heads 2, 3 copy kv heads 0, 1, each with its group of query heads: q heads 4-7 copy 0-3
    assert torch.equal(new_q_bias[: 4 * hd], q_bias)
    assert torch.equal(new_q_bias[4 * hd:], q_bias)
    assert torch.equal(out["layers.0.self_attn.q_norm.weight"], src["layers.0.self_attn.q_norm.weight"])
    assert prov["layers.0.self_attn.q_norm.weight"]["kind"] == "copied"
    assert prov["layers.0.self_attn.k_proj.bias"] == {
        "kind": "derived", "sources": ["layers.0.self_attn.k_proj.bias"], "inherited": True}
    fresh = make_model(old.with_(**WIDER), seed=5).state_dict()
    rand, _ = grow(src, old, old.with_(**WIDER), GrowSpec(op="width_random"), fresh=fresh)
    bias = rand["layers.1.self_attn.v_proj.bias"]
    assert torch.equal(bias[: old.kv_dim], src["layers.1.self_attn.v_proj.bias"])  # old units kept
    assert torch.equal(bias[old.kv_dim:], fresh["layers.1.self_attn.v_proj.bias"][old.kv_dim:])


def test_depth_ops_copy_and_average_the_new_tensors(tiny, make_model):
    old = tiny(**FAMILIES["qwen3"], n_layers=3)
    src = make_model(old).state_dict()
    names = ("self_attn.q_proj.bias", "self_attn.o_proj.bias", "self_attn.k_norm.weight")
    stacked, prov = grow(src, old, old.with_(n_layers=6), GrowSpec(op="stack", factor=2))
    for n in names:
        assert torch.equal(stacked[f"layers.4.{n}"], src[f"layers.1.{n}"])
        assert prov[f"layers.4.{n}"]["sources"] == [f"layers.1.{n}"]
    mixed, prov = grow(src, old, old.with_(n_layers=5), GrowSpec(op="interpolate", add=2))
    for n in names:  # new layer 1 sits between old layers 0 and 1
        torch.testing.assert_close(mixed[f"layers.1.{n}"], (src[f"layers.0.{n}"] + src[f"layers.1.{n}"]) / 2)
        assert prov[f"layers.1.{n}"]["kind"] == "derived"


def test_freezing_by_provenance_covers_the_new_tensors(tiny, make_model):
    """LLaMA-Pro: inherited blocks frozen, with their biases and q/k norms; new blocks train."""
    old = tiny(**FAMILIES["qwen3"])
    new = old.with_(n_layers=4)
    _, prov = grow(make_model(old).state_dict(), old, new, GrowSpec(op="identity", add=2))
    frozen = select_frozen(prov, ["inherited"], prov)
    assert frozen == inherited_names(prov)
    new_layers = {n.split(".")[1] for n in new_names(prov) if n.startswith("layers.")}
    for i in range(4):
        for n in ("self_attn.q_proj.bias", "self_attn.o_proj.bias", "self_attn.q_norm.weight"):
            assert (f"layers.{i}.{n}" in frozen) == (str(i) not in new_layers)
    assert select_frozen(prov, ["norms"]) >= {f"layers.{i}.self_attn.k_norm.weight" for i in range(4)}


def test_reuse_copies_attention_with_its_biases_and_norms(tiny, make_model):
    old = tiny(**FAMILIES["qwen3"], n_layers=1)
    src = make_model(old).state_dict()
    out, prov = grow(src, old, old.with_(n_layers=3), GrowSpec(op="reuse", layer0="attn"))
    for n in ("self_attn.q_proj.bias", "self_attn.k_norm.weight", "self_attn.o_proj.bias"):
        assert torch.equal(out[f"layers.0.{n}"], src[f"layers.0.{n}"])
        assert prov[f"layers.0.{n}"]["kind"] == "copied"
        assert prov[f"layers.1.{n}"]["kind"] == "new"


@pytest.mark.parametrize("src, dst, field", [
    (FAMILIES["qwen2"], dict(n_kv_heads=2, tie_embeddings=True), "model_type"),
    (FAMILIES["llama3_bias"], dict(n_kv_heads=2, rope_theta=5e5), "qkv_bias"),
    (FAMILIES["qwen3"], dict(model_type="qwen3", qk_norm=True, head_dim=12, n_kv_heads=2), "qkv_bias"),
    (FAMILIES["mistral"], dict(n_kv_heads=2, head_dim=16), "model_type"),
])
@pytest.mark.parametrize("spec", [GrowSpec(op="stack", factor=2), GrowSpec(op="clone"),
                                  GrowSpec(op="reuse", layer0="none")], ids=["depth", "width", "reuse"])
def test_mixed_architecture_growth_is_refused(src, dst, field, spec, tiny):
    old, new = tiny(**src), tiny(**dst)
    new = new.with_(n_layers=4) if spec.op == "stack" else new.with_(**WIDER) if spec.op == "clone" else new
    with pytest.raises(GrowlmError, match=f"stage.2.grow: '{spec.op}' cannot change {field}") as e:
        check_growth(old, new, spec, "stage.2")
    assert "\n" not in str(e.value)


def test_width_growth_keeps_an_explicit_head_dim(tiny):
    old = tiny(**FAMILIES["qwen3"])
    with pytest.raises(GrowlmError, match="keeps head_dim = 12"):
        check_growth(old, old.with_(**WIDER, head_dim=8), GrowSpec(op="clone"))
