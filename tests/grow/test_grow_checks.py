"""Every impossible growth is refused with one clear line."""

import pytest
import torch

from growlm.config import GrowSpec, config_from_dict
from growlm.errors import GrowlmError
from growlm.grow import check_growth, grow

BAD = [
    # (source changes, target changes, spec kwargs, expected words in the message)
    (dict(n_layers=4), dict(n_layers=2), dict(op="stack"), "fewer layers than the source"),
    (dict(n_layers=4), dict(n_layers=4), dict(op="interpolate"), "must add layers"),
    (dict(n_layers=4), dict(n_layers=3), dict(op="identity"), "fewer layers"),
    (dict(n_layers=0), dict(n_layers=2), dict(op="stack"), "at least one layer"),
    (dict(n_layers=2), dict(n_layers=3), dict(op="stack", sources=[0, 1, 2]), "out of range"),
    (dict(n_layers=2), dict(n_layers=3), dict(op="stack", sources=[0, -1, 1]), "out of range"),
    (dict(n_layers=2), dict(n_layers=4), dict(op="stack", sources=[0, 1, 1]), "one per target layer"),
    (dict(n_layers=2), dict(n_layers=6), dict(op="stack", factor=2), "factor 2 makes 4 layers"),
    (dict(n_layers=2), dict(n_layers=5), dict(op="duplicate"), "multiple"),
    (dict(n_layers=2), dict(n_layers=5), dict(op="interpolate", add=2), "add 2 makes 4"),
    (dict(n_layers=2), dict(n_layers=4), dict(op="duplicate", sources=[0, 0, 1, 1]), "does not take sources"),
    (dict(n_layers=2), dict(n_layers=4), dict(op="stack", position="top"), "does not take position"),
    (dict(n_layers=2), dict(n_layers=4), dict(op="identity", layer0="attn"), "does not take layer0"),
    ({}, dict(n_layers=4, d_model=64, n_heads=8), dict(op="stack"), "depth op and cannot change d_model"),
    ({}, dict(n_layers=4, ffn_dim=128), dict(op="interpolate"), "cannot change hidden_dim"),
    ({}, dict(d_model=48, n_heads=6), dict(op="clone"), "integer factor"),
    ({}, dict(d_model=64, n_heads=8, ffn_dim=96), dict(op="clone"), "ffn_dim to grow by an integer"),
    (dict(n_kv_heads=2), dict(d_model=48, n_heads=6, n_kv_heads=3), dict(op="clone"), "integer factor"),
    ({}, dict(d_model=64, n_heads=4), dict(op="clone"), "keeps head_dim = 8"),
    ({}, dict(d_model=64, n_heads=8, n_layers=4), dict(op="split"), "width op and cannot change n_layers"),
    ({}, dict(d_model=64, n_heads=8, block="attn_only"), dict(op="zero"), "cannot change block"),
    ({}, dict(ffn_dim=32), dict(op="split"), "cannot shrink ffn_dim"),
    (dict(n_kv_heads=2), dict(n_kv_heads=1), dict(op="width_random"), "cannot shrink n_kv_heads"),
    ({}, {}, dict(op="split"), "does not change the width"),
    ({}, dict(d_model=96, n_heads=12), dict(op="clone", factor=2), "factor 2 makes d_model 64"),
    ({}, dict(vocab_size=101), dict(op="reuse"), "same vocab_size"),
    ({}, dict(d_model=64, n_heads=8), dict(op="reuse"), "same width"),
    ({}, dict(vocab_size=101, n_layers=4), dict(op="stack"), "same vocab_size"),
    ({}, dict(tie_embeddings=True, n_layers=4), dict(op="stack"), "cannot change tie_embeddings"),
    (dict(n_layers=0), dict(n_layers=4), dict(op="reuse", layer0="attn"), "copies layer 0"),
    (dict(n_layers=1, block="attn_only"), dict(n_layers=4), dict(op="reuse", layer0="ffn"), "full blocks"),
    (dict(n_layers=1), dict(n_layers=4, n_heads=2), dict(op="reuse", layer0="attn"), "same heads"),
    (dict(n_layers=1), dict(n_layers=4, ffn_dim=96), dict(op="reuse", layer0="attn_ffn"), "same ffn_dim"),
    (dict(n_layers=1), dict(n_layers=4), dict(op="reuse", add=2), "does not take add"),
]


@pytest.mark.parametrize("src,dst,spec,words", BAD, ids=[b[3] for b in BAD])
def test_bad_growth_is_refused(src, dst, spec, words, tiny):
    old = tiny(**src)
    new = old.with_(**dst)
    with pytest.raises(GrowlmError) as err:
        check_growth(old, new, GrowSpec(**spec), "recipe.toml: stage.2")
    msg = str(err.value)
    assert msg.startswith("recipe.toml: stage.2.grow")
    assert words in msg
    assert "\n" not in msg


def test_grow_checks_before_touching_tensors(tiny, make_model):
    old = tiny(n_layers=4)
    with pytest.raises(GrowlmError, match="fewer layers"):
        grow(make_model(old).state_dict(), old, old.with_(n_layers=2), GrowSpec(op="stack"))


def test_grow_refuses_a_state_of_another_shape(tiny, make_model):
    old = tiny(n_layers=2)
    state = make_model(old).state_dict()
    new = old.with_(n_layers=4)
    with pytest.raises(GrowlmError, match="missing tensors layers.1"):
        grow({k: v for k, v in state.items() if not k.startswith("layers.1.")}, old, new, GrowSpec(op="stack"))
    with pytest.raises(GrowlmError, match="unexpected tensors .*lora_A"):
        grow({**state, "layers.0.self_attn.q_proj.lora_A": torch.zeros(2, 32)}, old, new, GrowSpec(op="stack"))
    bad = {**state, "norm.weight": torch.ones(16)}
    with pytest.raises(GrowlmError, match=r"norm.weight has shape \(16,\), expected \(32,\)"):
        grow(bad, old, new, GrowSpec(op="stack"))
    fresh = make_model(old.with_(n_layers=3)).state_dict()
    with pytest.raises(GrowlmError, match="fresh state: missing tensors layers.3"):
        grow(state, old, new, GrowSpec(op="stack"), fresh=fresh)


def _recipe(stages):
    return {
        "model": dict(vocab_size=97, d_model=32, n_layers=4, n_heads=4, ffn_dim=64, max_seq_len=64),
        "data": {"train": "shards", "seq_len": 16},
        "train": {"global_batch_tokens": 64},
        "stage": stages,
    }


def test_recipes_are_checked_at_load_time():
    ok = _recipe([{"n_layers": 2, "steps": 1}, {"grow": {"op": "stack", "factor": 2}, "steps": 1}])
    assert config_from_dict(ok).stage[1].grow.op == "stack"
    bad = _recipe([
        {"n_layers": 4, "d_model": 16, "n_heads": 2, "ffn_dim": 32, "steps": 1},
        {"grow": {"op": "clone", "d_model": 32, "n_heads": 4, "ffn_dim": 48}, "steps": 1},
    ])
    with pytest.raises(GrowlmError, match=r"^recipe: stage\.2\.grow: 'clone' needs ffn_dim"):
        config_from_dict(bad)
