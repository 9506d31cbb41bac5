"""G_random with MSG's growth masks (growlm.grow.masks): exact at c = 0, plain at c = 1, and
nothing left behind once folded."""

import pytest
import torch

from growlm.config import GrowSpec
from growlm.grow import grow
from growlm.grow.masks import GrowthMasks, new_layers
from growlm.model import Transformer

WIDTH_CASES = {
    "mha": (dict(), dict(d_model=64, n_heads=8, ffn_dim=96)),
    "gqa-groups-kept": (dict(n_kv_heads=2), dict(d_model=64, n_heads=8, n_kv_heads=4, ffn_dim=128)),
    "gqa-groups-wider": (dict(n_kv_heads=2), dict(d_model=64, n_heads=8, n_kv_heads=2, ffn_dim=80)),
    "biases": (dict(qkv_bias=True, o_bias=True), dict(d_model=48, n_heads=6, ffn_dim=64)),
    "qk-norm": (dict(model_type="qwen3", qk_norm=True, head_dim=16, n_heads=2),
                dict(d_model=64, n_heads=4, ffn_dim=128)),
    "tied": (dict(tie_embeddings=True), dict(d_model=64, n_heads=8, ffn_dim=128)),
}


def _grown(tiny, make_model, small_kw, op, **shape):
    old = tiny(**small_kw)
    new = old.with_(**shape)
    small = make_model(old)
    spec = GrowSpec(op=op, mask_steps=10, **({"position": "end"} if op == "random" and "n_layers" in shape else {}))
    # fresh weights far from zero, so an unmasked new unit would show
    fresh = make_model(new, seed=5).state_dict()
    state, _ = grow(small.state_dict(), old, new, spec, fresh=fresh)
    big = Transformer(new)
    big.load_state_dict(state)
    return small, big.eval(), old, new, spec


@pytest.mark.parametrize("case", list(WIDTH_CASES), ids=list(WIDTH_CASES))
def test_width_masks_at_zero_give_the_small_models_logits(tiny, make_model, tokens, case):
    small_kw, shape = WIDTH_CASES[case]
    small, big, old, new, spec = _grown(tiny, make_model, small_kw, "width_random", **shape)
    masks = GrowthMasks(big, old, new, spec)
    masks.set(0.0)
    with torch.no_grad():
        want, got = small(tokens), big(tokens)
        assert (got - want).abs().max().item() <= 1e-5
        masks.set(0.5)  # the new units do contribute once the ramp moves
        assert (big(tokens) - want).abs().max().item() > 1e-3


@pytest.mark.parametrize("position", ["end", "even"])
def test_depth_masks_at_zero_give_the_small_models_logits(tiny, make_model, tokens, position):
    old = tiny(n_kv_heads=2, qkv_bias=True, o_bias=True)
    new = old.with_(n_layers=8)
    spec = GrowSpec(op="random", add=6, position=position, mask_steps=4)
    small = make_model(old)
    state, _ = grow(small.state_dict(), old, new, spec, fresh=make_model(new, seed=5).state_dict())
    big = Transformer(new)
    big.load_state_dict(state)
    big.eval()
    layers = new_layers(old, new, spec)
    assert layers == ([2, 3, 4, 5, 6, 7] if position == "end" else [1, 2, 3, 4, 5, 6])
    masks = GrowthMasks(big, old, new, spec)
    with torch.no_grad():
        assert (big(tokens) - small(tokens)).abs().max().item() <= 1e-5
        masks.set(0.25)
        assert (big(tokens) - small(tokens)).abs().max().item() > 1e-3


@pytest.mark.parametrize("op,shape", [("width_random", dict(d_model=64, n_heads=8, n_kv_heads=4, ffn_dim=128)),
                                      ("random", dict(n_layers=6))], ids=["width", "depth"])
def test_at_one_and_after_folding_the_model_is_a_plain_llama(tiny, make_model, tokens, op, shape, tmp_path):
    small, big, old, new, spec = _grown(tiny, make_model, dict(n_kv_heads=2), op, **shape)
    plain = Transformer(new)
    plain.load_state_dict(big.state_dict())
    masks = GrowthMasks(big, old, new, spec)
    masks.set(1.0)
    with torch.no_grad():
        at_one = big(tokens)
        assert torch.equal(at_one, plain.eval()(tokens))  # every mask 1 and the norms' scale 1
        masks.remove()
        assert torch.equal(big(tokens), at_one)
    hooked = [n for n, m in big.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == [] and not masks.attached
    transformers = pytest.importorskip("transformers")
    from growlm.model.hf import export_hf

    export_hf(new, big.state_dict(), tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    with torch.no_grad():
        assert (hf(tokens).logits - at_one).abs().max().item() <= 1e-5


def test_masks_train_the_new_units_through_the_ramp(tiny, make_model, tokens):
    """At c > 0 the new units get gradients scaled by the mask; at c = 0 they get none."""
    _, big, old, new, spec = _grown(tiny, make_model, dict(), "width_random", d_model=64, n_heads=8, ffn_dim=128)
    masks = GrowthMasks(big, old, new, spec)
    big.train()
    for c, moved in ((0.0, False), (0.3, True)):
        masks.set(c)
        big.zero_grad()
        big(tokens, labels=tokens).backward()
        grad = big.layers["0"].mlp.down_proj.weight.grad  # columns of new FFN units: read through the mask
        assert (grad[:, 64:].abs().max().item() > 0) is moved
