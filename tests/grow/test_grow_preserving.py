"""Function-preserving operators give the same logits before and after growth (fp32)."""

import pytest
import torch

from growlm.config import GrowSpec
from growlm.grow import grow

TOL = dict(atol=1e-5, rtol=1e-5)

# (source shape changes, target shape changes)
WIDTH_CASES = {
    "mha_x2": ({}, dict(d_model=64, n_heads=8, ffn_dim=128)),
    "mha_x3_ffn_x2": ({}, dict(d_model=96, n_heads=12, ffn_dim=128)),
    "gqa_kv_x2": (dict(n_kv_heads=2), dict(d_model=64, n_heads=8, n_kv_heads=4, ffn_dim=128)),
    "gqa_group_x2": (dict(n_kv_heads=2), dict(d_model=64, n_heads=8, n_kv_heads=2, ffn_dim=128)),
    "tied_gqa": (dict(n_kv_heads=2, tie_embeddings=True), dict(d_model=64, n_heads=8, n_kv_heads=4, ffn_dim=128)),
    "attn_only": (dict(block="attn_only"), dict(d_model=64, n_heads=8)),
    "ffn_only": ({}, dict(ffn_dim=192)),
    "bigram": (dict(n_layers=0), dict(d_model=64, n_heads=8)),
}
SPLIT_CASES = {
    "mha_1.5": ({}, dict(d_model=48, n_heads=6, ffn_dim=80)),
    "gqa_1.5": (dict(n_kv_heads=2), dict(d_model=48, n_heads=6, n_kv_heads=3, ffn_dim=100)),
    "gqa_group_grows": (dict(n_kv_heads=2), dict(d_model=64, n_heads=8, n_kv_heads=2, ffn_dim=70)),
    "tied_1.25": (dict(tie_embeddings=True), dict(d_model=40, n_heads=5, ffn_dim=64)),
}


def _check_same_logits(tiny, make_model, logits_of, tokens, src, dst, spec):
    old = tiny(**src)
    new = old.with_(**dst)
    model = make_model(old)
    state, _ = grow(model.state_dict(), old, new, spec)
    with torch.no_grad():
        before = model(tokens)
    after = logits_of(new, state, tokens)
    assert before.abs().max() > 1.0  # the comparison is not between near-zero numbers
    torch.testing.assert_close(after, before, **TOL)


@pytest.mark.parametrize("case", WIDTH_CASES)
def test_clone_preserves_logits(case, tiny, make_model, logits_of, tokens):
    src, dst = WIDTH_CASES[case]
    _check_same_logits(tiny, make_model, logits_of, tokens, src, dst, GrowSpec(op="clone"))


@pytest.mark.parametrize("case", {**SPLIT_CASES, "mha_x2": WIDTH_CASES["mha_x2"]})
def test_split_preserves_logits(case, tiny, make_model, logits_of, tokens):
    src, dst = {**SPLIT_CASES, "mha_x2": WIDTH_CASES["mha_x2"]}[case]
    _check_same_logits(tiny, make_model, logits_of, tokens, src, dst, GrowSpec(op="split"))


@pytest.mark.parametrize(
    "src,dst,spec",
    [
        ({}, dict(n_layers=5), GrowSpec(op="identity", add=3)),
        ({}, dict(n_layers=6), GrowSpec(op="identity", add=4, position="top")),
        (dict(n_kv_heads=2, tie_embeddings=True), dict(n_layers=4), GrowSpec(op="identity")),
        (dict(block="attn_only", n_layers=1), dict(n_layers=3), GrowSpec(op="identity")),
        (dict(n_layers=0), dict(n_layers=2), GrowSpec(op="identity", add=2)),
    ],
)
def test_identity_preserves_logits(src, dst, spec, tiny, make_model, logits_of, tokens):
    _check_same_logits(tiny, make_model, logits_of, tokens, src, dst, spec)


def test_zero_preserves_logits_up_to_norm_eps(tiny, make_model, logits_of, tokens):
    dst = dict(d_model=64, n_heads=8, n_kv_heads=2, ffn_dim=80)
    # exact when the norm's eps is negligible ...
    src = dict(n_kv_heads=2, norm_eps=1e-12)
    _check_same_logits(tiny, make_model, logits_of, tokens, src, dst, GrowSpec(op="zero"))
    # ... and close with the default eps (it acts like eps·d'/d on the old mean square)
    old = tiny(n_kv_heads=2)
    model = make_model(old)
    state, _ = grow(model.state_dict(), old, old.with_(**dst), GrowSpec(op="zero"))
    with torch.no_grad():
        before = model(tokens)
    after = logits_of(old.with_(**dst), state, tokens)
    torch.testing.assert_close(after, before, atol=1e-2, rtol=1e-2)


def test_zero_without_residual_growth_is_exact(tiny, make_model, logits_of, tokens):
    # only FFN units and heads-per-group change: no norm rescaling, exact with the default eps
    old = tiny(n_kv_heads=2)
    new = old.with_(ffn_dim=96)
    _check_same_logits(tiny, make_model, logits_of, tokens, dict(n_kv_heads=2), dict(ffn_dim=96), GrowSpec(op="zero"))
    state, _ = grow(make_model(old).state_dict(), old, new, GrowSpec(op="zero"))
    assert torch.all(state["layers.0.mlp.down_proj.weight"][:, 64:] == 0)
    assert torch.all(state["layers.0.mlp.up_proj.weight"][64:] != 0)  # new units can learn


def test_random_ops_change_the_function(tiny, make_model, logits_of, tokens):
    old = tiny()
    model = make_model(old)
    with torch.no_grad():
        before = model(tokens)
    for new, spec in [
        (old.with_(n_layers=4), GrowSpec(op="random", add=2)),
        (old.with_(d_model=64, n_heads=8), GrowSpec(op="width_random")),
    ]:
        state, _ = grow(model.state_dict(), old, new, spec)
        assert not torch.allclose(logits_of(new, state, tokens), before, atol=1e-3)
