"""Depth operators put exactly the right source layers in each target layer."""

import pytest
import torch

from growlm.config import GrowSpec
from growlm.grow import grow
from growlm.grow.common import layer_suffixes
from growlm.grow.depth import LayerInit, insertion_counts, layer_plan
from growlm.model import Transformer


def _layer(state, i, cfg):
    return [state[f"layers.{i}.{s}"] for s in layer_suffixes(cfg)]


def _assert_copy(new_state, i, old_state, j, cfg):
    for a, b in zip(_layer(new_state, i, cfg), _layer(old_state, j, cfg)):
        assert torch.equal(a, b), f"target layer {i} is not source layer {j}"


def _assert_io_copied(new_state, old_state, prov):
    for name in ("embed_tokens.weight", "norm.weight", "lm_head.weight"):
        assert torch.equal(new_state[name], old_state[name])
        assert prov[name] == {"kind": "copied", "sources": [name], "inherited": True}


@pytest.mark.parametrize("factor", [2, 3])
def test_stack_repeats_the_whole_model(factor, tiny, make_model):
    old = tiny(n_layers=3)
    new = old.with_(n_layers=3 * factor)
    src = make_model(old).state_dict()
    out, prov = grow(src, old, new, GrowSpec(op="stack", factor=factor))
    for i in range(new.n_layers):
        _assert_copy(out, i, src, i % 3, new)
        q = f"layers.{i}.self_attn.q_proj.weight"
        assert prov[q]["kind"] == "copied"
        assert prov[q]["sources"] == [f"layers.{i % 3}.self_attn.q_proj.weight"]
        assert prov[q]["inherited"] == (i < 3)  # the first copy continues the old layer
    _assert_io_copied(out, src, prov)


def test_partial_stacking_from_explicit_sources(tiny, make_model):
    old = tiny(n_layers=3)
    sources = [0, 1, 1, 2, 0]
    new = old.with_(n_layers=len(sources))
    src = make_model(old).state_dict()
    out, prov = grow(src, old, new, GrowSpec(op="stack", sources=sources))
    for i, j in enumerate(sources):
        _assert_copy(out, i, src, j, new)
    inherited = [prov[f"layers.{i}.mlp.up_proj.weight"]["inherited"] for i in range(5)]
    assert inherited == [True, True, False, True, False]


def test_duplicate_repeats_each_layer_in_place(tiny, make_model):
    old = tiny(n_layers=2)
    new = old.with_(n_layers=6)
    src = make_model(old).state_dict()
    out, prov = grow(src, old, new, GrowSpec(op="duplicate", factor=3))
    for i in range(6):
        _assert_copy(out, i, src, i // 3, new)
    assert [prov[f"layers.{i}.input_layernorm.weight"]["inherited"] for i in range(6)] == [
        True, False, False, True, False, False,
    ]


def test_insertion_counts():
    assert insertion_counts(4, 2, "even") == [1, 0, 1, 0]
    assert insertion_counts(4, 2, "top") == [0, 1, 1, 0]
    assert insertion_counts(4, 1, "even") == [0, 1, 0, 0]
    assert insertion_counts(4, 5, "even") == [2, 1, 2, 0]  # a second round: more than gaps
    assert insertion_counts(4, 5, "top") == [1, 2, 2, 0]
    assert insertion_counts(1, 3, "even") == [3]  # top edge of a 1-layer model
    # STEP-like 11 → 19: one new layer in 8 of the 10 interior gaps, spread out
    assert insertion_counts(11, 8, "even") == [1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0]


def test_interpolate_inserts_means_between_neighbours(tiny, make_model):
    old = tiny(n_layers=4)
    new = old.with_(n_layers=6)
    src = make_model(old).state_dict()
    out, prov = grow(src, old, new, GrowSpec(op="interpolate", add=2))
    # even: new layers in gaps 0 and 2 → [0, mean(0,1), 1, 2, mean(2,3), 3]
    for i, j in [(0, 0), (2, 1), (3, 2), (5, 3)]:
        _assert_copy(out, i, src, j, new)
    for i, (a, b) in [(1, (0, 1)), (4, (2, 3))]:
        for s in layer_suffixes(new):
            name = f"layers.{i}.{s}"
            expected = (src[f"layers.{a}.{s}"] + src[f"layers.{b}.{s}"]) / 2
            assert torch.equal(out[name], expected)
            assert prov[name] == {
                "kind": "derived",
                "sources": [f"layers.{a}.{s}", f"layers.{b}.{s}"],
                "inherited": False,
            }
    assert prov["layers.5.mlp.down_proj.weight"]["sources"] == ["layers.3.mlp.down_proj.weight"]
    assert prov["layers.5.mlp.down_proj.weight"]["inherited"] is True
    _assert_io_copied(out, src, prov)


def test_interpolate_top_and_several_layers_per_gap(tiny, make_model):
    old = tiny(n_layers=3)
    src = make_model(old).state_dict()
    top = layer_plan(3, 4, GrowSpec(op="interpolate", add=1, position="top"))
    assert top == [LayerInit(0), LayerInit(1), LayerInit(1, 2, 0.5), LayerInit(2)]
    # 4 new layers, 2 gaps → 2 per gap at 1/3 and 2/3 of the way up
    new = old.with_(n_layers=7)
    out, _ = grow(src, old, new, GrowSpec(op="interpolate", add=4))
    a, b = src["layers.0.mlp.up_proj.weight"], src["layers.1.mlp.up_proj.weight"]
    torch.testing.assert_close(out["layers.1.mlp.up_proj.weight"], a + (b - a) / 3)
    torch.testing.assert_close(out["layers.2.mlp.up_proj.weight"], a + 2 * (b - a) / 3)


def test_interpolate_at_the_top_edge_copies_the_last_layer(tiny, make_model):
    old = tiny(n_layers=1)
    new = old.with_(n_layers=3)
    src = make_model(old).state_dict()
    out, prov = grow(src, old, new, GrowSpec(op="interpolate", add=2))
    for i in range(3):
        _assert_copy(out, i, src, 0, new)
    assert [prov[f"layers.{i}.self_attn.o_proj.weight"]["inherited"] for i in range(3)] == [
        True, False, False,
    ]


def test_identity_and_random_take_new_layers_from_fresh(tiny, make_model):
    old = tiny(n_layers=2, n_kv_heads=2)
    new = old.with_(n_layers=3)
    src = make_model(old).state_dict()
    fresh = make_model(new, seed=5).state_dict()
    for op in ("identity", "random"):
        out, prov = grow(src, old, new, GrowSpec(op=op, add=1), fresh=fresh)
        # one interior gap: [0, new, 1]
        _assert_copy(out, 0, src, 0, new)
        _assert_copy(out, 2, src, 1, new)
        for s in layer_suffixes(new):
            name = f"layers.1.{s}"
            assert prov[name] == {"kind": "new", "sources": [], "inherited": False}
            if op == "identity" and s.endswith(("o_proj.weight", "down_proj.weight")):
                assert torch.all(out[name] == 0)
            else:
                assert torch.equal(out[name], fresh[name])


def test_random_from_a_bigram_model_uses_fresh_layers(tiny, make_model):
    old = tiny(n_layers=0)
    new = old.with_(n_layers=2)
    src = make_model(old).state_dict()
    out, prov = grow(src, old, new, GrowSpec(op="random"))
    assert sorted(k for k, v in prov.items() if v["inherited"]) == [
        "embed_tokens.weight", "lm_head.weight", "norm.weight",
    ]
    Transformer(new).load_state_dict(out)  # complete and well-shaped
