"""G_learn (growlm.grow.ligo): LiGO's maps at initialisation, their application, their FLOPs."""

import pytest
import torch

from growlm.config import GrowSpec
from growlm.errors import GrowlmError
from growlm.grow import check_growth, grow
from growlm.grow.ligo import apply_maps, init_maps, map_flops, map_shapes
from growlm.grow.width import inplace_sources


def _maps_with_noise(old, new, spec, seed=3):
    """Maps moved away from their initialisation, as after some learning."""
    gen = torch.Generator().manual_seed(seed)
    maps = init_maps(old, new, spec, generator=gen)
    return {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in maps.items()}


@pytest.mark.parametrize("extra", [{}, {"qkv_bias": True, "o_bias": True}, {"model_type": "qwen3", "qk_norm": True},
                                   {"tie_embeddings": True}], ids=["plain", "biases", "qk_norm", "tied"])
def test_depth_maps_at_init_reproduce_gstacks_weights_exactly(tiny, make_model, extra):
    old = tiny(n_kv_heads=2, **extra)
    new = old.with_(n_layers=8)
    state = make_model(old).state_dict()
    learned, prov = grow(state, old, new, GrowSpec(op="learn", factor=4))
    stacked, _ = grow(state, old, new, GrowSpec(op="stack", factor=4))
    assert learned.keys() == stacked.keys()
    for k in stacked:
        assert torch.equal(learned[k], stacked[k]), k
    # the same layers continue the old ones as with stack; their value is a learned mix
    assert prov["layers.1.mlp.up_proj.weight"] == {
        "kind": "derived", "sources": ["layers.0.mlp.up_proj.weight", "layers.1.mlp.up_proj.weight"],
        "inherited": True}
    assert prov["layers.5.mlp.up_proj.weight"]["inherited"] is False
    assert prov["embed_tokens.weight"]["kind"] == "copied"


def test_depth_maps_need_a_layer_and_take_any_larger_depth(tiny, make_model):
    old = tiny()
    spec = GrowSpec(op="learn")
    state = make_model(old).state_dict()
    out, _ = grow(state, old, old.with_(n_layers=5), spec)  # not a multiple: i mod L
    assert torch.equal(out["layers.4.self_attn.q_proj.weight"], state["layers.0.self_attn.q_proj.weight"])
    with pytest.raises(GrowlmError, match="needs a source with at least one layer"):
        check_growth(old.with_(n_layers=0), old, spec, "stage.2")


@pytest.mark.parametrize("shape", [dict(n_heads=8, n_kv_heads=4), dict(n_heads=8, n_kv_heads=2)],
                         ids=["same-groups", "wider-groups"])
def test_width_maps_copy_each_old_block_in_place(tiny, make_model, shape):
    old = tiny(n_kv_heads=2, qkv_bias=True, o_bias=True)
    new = old.with_(d_model=64, ffn_dim=128, **shape)
    spec = GrowSpec(op="width_learn", factor=2)
    state = make_model(old).state_dict()
    out, prov = grow(state, old, new, spec)
    src = inplace_sources(old, new)
    hd = old.head_size
    q = (src["q_heads"][:, None] * hd + torch.arange(hd)).flatten()
    q = q[src["q_heads"].repeat_interleave(hd) >= 0]
    kv = (src["kv_heads"][:, None] * hd + torch.arange(hd)).flatten()
    kv = kv[src["kv_heads"].repeat_interleave(hd) >= 0]
    q_pos = torch.nonzero(src["q_heads"].repeat_interleave(hd) >= 0).squeeze(1)
    kv_pos = torch.nonzero(src["kv_heads"].repeat_interleave(hd) >= 0).squeeze(1)
    d, f = old.d_model, old.hidden_dim
    w = "layers.1."
    assert torch.equal(out[w + "self_attn.q_proj.weight"][q_pos, :d], state[w + "self_attn.q_proj.weight"][q])
    assert torch.equal(out[w + "self_attn.k_proj.weight"][kv_pos, :d], state[w + "self_attn.k_proj.weight"][kv])
    assert torch.equal(out[w + "self_attn.o_proj.weight"][:d][:, q_pos], state[w + "self_attn.o_proj.weight"][:, q])
    assert torch.equal(out[w + "self_attn.v_proj.bias"][kv_pos], state[w + "self_attn.v_proj.bias"][kv])
    assert torch.equal(out[w + "mlp.down_proj.weight"][:d, :f], state[w + "mlp.down_proj.weight"])
    assert torch.equal(out["embed_tokens.weight"][:, :d], state["embed_tokens.weight"])
    assert torch.equal(out["norm.weight"][:d], state["norm.weight"])
    if shape["n_kv_heads"] == 4:  # the group size is kept: the old heads are a prefix, the top-left
        assert torch.equal(out[w + "self_attn.q_proj.weight"][: old.q_dim, :d], state[w + "self_attn.q_proj.weight"])
    assert prov[w + "mlp.up_proj.weight"] == {"kind": "derived", "sources": [w + "mlp.up_proj.weight"],
                                              "inherited": True}


def _kron(b, hd):
    return torch.kron(b, torch.eye(hd, dtype=b.dtype))


def test_materialised_weights_equal_the_maps_applied(tiny, make_model):
    """The blocked head maps and the right-first order against plain Kronecker products."""
    old = tiny(n_kv_heads=2, qkv_bias=True, o_bias=True)
    new = old.with_(d_model=64, n_heads=8, n_kv_heads=4, ffn_dim=96)
    spec = GrowSpec(op="width_learn", factor=2)
    maps = _maps_with_noise(old, new, spec)
    state = make_model(old).state_dict()
    out = apply_maps(maps, state, old, new, spec)
    hd = old.head_size
    B = {k.split(":")[1]: v for k, v in maps.items()}
    Q, K, V = (_kron(B[x], hd) for x in "qkv")
    p = "layers.0."
    expect = {
        "embed_tokens.weight": state["embed_tokens.weight"] @ B["d"].T,
        "lm_head.weight": state["lm_head.weight"] @ B["d"].T,
        "norm.weight": B["d"] @ state["norm.weight"],
        p + "self_attn.q_proj.weight": Q @ state[p + "self_attn.q_proj.weight"] @ B["d"].T,
        p + "self_attn.k_proj.weight": K @ state[p + "self_attn.k_proj.weight"] @ B["d"].T,
        p + "self_attn.v_proj.weight": V @ state[p + "self_attn.v_proj.weight"] @ B["d"].T,
        p + "self_attn.o_proj.weight": B["d"] @ state[p + "self_attn.o_proj.weight"] @ Q.T,
        p + "self_attn.q_proj.bias": Q @ state[p + "self_attn.q_proj.bias"],
        p + "self_attn.o_proj.bias": B["d"] @ state[p + "self_attn.o_proj.bias"],
        p + "mlp.gate_proj.weight": B["f"] @ state[p + "mlp.gate_proj.weight"] @ B["d"].T,
        p + "mlp.down_proj.weight": B["d"] @ state[p + "mlp.down_proj.weight"] @ B["f"].T,
    }
    for k, v in expect.items():
        assert torch.allclose(out[k], v, atol=1e-5), k
    # depth: new layer i = Σ_j M[i, j] · old layer j, per role
    dspec = GrowSpec(op="learn", factor=3)
    deep = old.with_(n_layers=6)
    dmaps = _maps_with_noise(old, deep, dspec)
    dout = apply_maps(dmaps, state, old, deep, dspec)
    M = dmaps["depth:mlp.up_proj.weight"]
    want = M[4, 0] * state["layers.0.mlp.up_proj.weight"] + M[4, 1] * state["layers.1.mlp.up_proj.weight"]
    assert torch.allclose(dout["layers.4.mlp.up_proj.weight"], want, atol=1e-6)
    assert dout["embed_tokens.weight"] is state["embed_tokens.weight"]  # copied roles are not mapped


def test_map_shapes_and_flops_follow_the_matmuls(tiny):
    """Counted by hand for one layer: (forward, backward) of every product, right factor first;
    a product's backward pays once per operand that needs a gradient (the old weight never)."""
    old = tiny(n_layers=1, n_kv_heads=2)  # d 32, FFN 64, 4 heads of 8, 2 kv heads, vocab 97
    new = old.with_(d_model=64, n_heads=8, n_kv_heads=4, ffn_dim=128)
    spec = GrowSpec(op="width_learn", factor=2)
    assert map_shapes(old, new, spec) == {"width:d": (64, 32), "width:f": (128, 64), "width:q": (8, 4),
                                          "width:k": (4, 2), "width:v": (4, 2)}

    def mm(m, n, k, grads):
        return 2 * m * n * k, 2 * m * n * k * grads

    products = [
        *[mm(97, 64, 32, 1)] * 2,  # embedding and head: W·B_dᵀ
        *[mm(64, 1, 32, 1)] * 3,  # three norm weights: B_d·w
        mm(32, 64, 32, 1), mm(8, 8 * 64, 4, 2),  # q: W·B_dᵀ, then B_q on head blocks
        *[mm(16, 64, 32, 1), mm(4, 8 * 64, 2, 2)] * 2,  # k and v
        mm(32 * 8, 8, 4, 1), mm(64, 64, 32, 2),  # o: head blocks·B_qᵀ, then B_d·(…)
        *[mm(64, 64, 32, 1), mm(128, 64, 64, 2)] * 2,  # gate and up
        mm(32, 128, 64, 1), mm(64, 128, 32, 2),  # down
    ]
    tally = map_flops(old, new, spec)
    assert (tally.forward, tally.backward) == (sum(f for f, _ in products), sum(b for _, b in products))
    depth = map_flops(old, old.with_(n_layers=4), GrowSpec(op="learn", factor=4))
    per_layer = old.params_per_layer
    assert depth.forward == depth.backward == 2 * 4 * 1 * per_layer  # (4×1)·(1×n) per role, grads for M


def test_width_learn_refuses_a_head_count_that_does_not_divide(tiny):
    old = tiny(n_kv_heads=2)  # d 32, 4 heads of 8
    spec = GrowSpec(op="width_learn", d_model=60, n_heads=6, n_kv_heads=2)
    with pytest.raises(GrowlmError, match=r"stage\.2\.grow: 'width_learn' keeps head_dim = 8") as e:
        check_growth(old, old.with_(d_model=60, n_heads=6, n_kv_heads=2, head_dim=None), spec, "stage.2")
    assert "\n" not in str(e.value)
    with pytest.raises(GrowlmError, match="cannot shrink query heads per kv head"):
        check_growth(old, old.with_(d_model=64, n_heads=8, n_kv_heads=8), spec, "stage.2")


def test_width_learn_keeps_per_head_norms_and_a_set_head_dim(tiny, make_model):
    old = tiny(model_type="qwen3", qk_norm=True, head_dim=16, n_heads=2)  # head_dim apart from d/n
    new = old.with_(d_model=64, n_heads=4, ffn_dim=128)
    state = make_model(old).state_dict()
    out, prov = grow(state, old, new, GrowSpec(op="width_learn", factor=2))
    for name in ("layers.0.self_attn.q_norm.weight", "layers.1.self_attn.k_norm.weight"):
        assert torch.equal(out[name], state[name]) and prov[name]["kind"] == "copied"
    assert torch.equal(out["layers.0.self_attn.q_proj.weight"][:32, :32], state["layers.0.self_attn.q_proj.weight"])
    assert out["layers.0.self_attn.q_proj.weight"].shape == (4 * 16, 64)
