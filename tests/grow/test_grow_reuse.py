"""Reuse copies exactly the embedding, final norm, head and the chosen layer-0 parts."""

import pytest
import torch

from growlm.config import GrowSpec
from growlm.grow import grow

IO = {"embed_tokens.weight", "norm.weight", "lm_head.weight"}
ATTN0 = {f"layers.0.{s}" for s in (
    "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
    "self_attn.v_proj.weight", "self_attn.o_proj.weight",
)}
FFN0 = {f"layers.0.{s}" for s in (
    "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)}


@pytest.mark.parametrize(
    "stage1,layer0,copied",
    [
        (dict(n_layers=0), "none", IO),
        (dict(n_layers=1, block="attn_only"), "none", IO),
        (dict(n_layers=1, block="attn_only"), "attn", IO | ATTN0),
        (dict(n_layers=1), "attn", IO | ATTN0),
        (dict(n_layers=1), "ffn", IO | FFN0),
        (dict(n_layers=1), "attn_ffn", IO | ATTN0 | FFN0),
        (dict(n_layers=4), "none", IO),  # "Base Reuse": a full baseline of the same shape
    ],
)
def test_reuse_copies_exactly_the_chosen_tensors(stage1, layer0, copied, tiny, make_model):
    deep = tiny(n_layers=4)
    small = deep.with_(**stage1)
    src = make_model(small, seed=1).state_dict()
    fresh = make_model(deep, seed=2).state_dict()
    out, prov = grow(src, small, deep, GrowSpec(op="reuse", layer0=layer0), fresh=fresh)
    assert set(out) == set(fresh)
    for name, value in out.items():
        if name in copied:
            assert torch.equal(value, src[name])
            assert prov[name] == {"kind": "copied", "sources": [name], "inherited": True}
        else:
            assert torch.equal(value, fresh[name])
            assert prov[name] == {"kind": "new", "sources": [], "inherited": False}


def test_reuse_with_tied_embeddings_keeps_one_tensor(tiny, make_model):
    deep = tiny(n_layers=3, tie_embeddings=True)
    small = deep.with_(n_layers=0)
    src = make_model(small).state_dict()
    del src["lm_head.weight"]  # a checkpoint may store the shared tensor once
    out, _ = grow(src, small, deep, GrowSpec(op="reuse"))
    assert out["lm_head.weight"] is out["embed_tokens.weight"]
    assert torch.equal(out["embed_tokens.weight"], src["embed_tokens.weight"])
