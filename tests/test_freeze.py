"""Freezing by glob and provenance; frozen parameters get no gradient."""

import warnings

import pytest
import torch

from growlm.config import GrowSpec
from growlm.errors import GrowlmError
from growlm.freeze import apply_freeze, check_trainable, parameter_names, select_frozen
from growlm.grow import grow
from growlm.model import ModelConfig, Transformer

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=16)


def _grown():
    """A 2 → 3 layer STEP-style interpolation: layers 0 and 2 are old, layer 1 is new."""
    old = CFG
    new = old.with_(n_layers=3)
    state, prov = grow(Transformer(old).state_dict(), old, new, GrowSpec(op="interpolate", add=1))
    model = Transformer(new)
    model.load_state_dict(state)
    return model, prov


def test_globs_and_keywords_select_the_right_names():
    names = parameter_names(Transformer(CFG))
    assert select_frozen(names, ["layers.*.mlp.*"]) == {
        f"layers.{i}.mlp.{p}_proj.weight" for i in range(2) for p in ("gate", "up", "down")
    }
    assert select_frozen(names, ["embedding", "head"]) == {"embed_tokens.weight", "lm_head.weight"}
    assert select_frozen(names, ["norms"]) == {
        "norm.weight", *(f"layers.{i}.{n}_layernorm.weight" for i in range(2) for n in ("input", "post_attention"))
    }
    assert select_frozen(names, ["layers"]) == {n for n in names if n.startswith("layers.")}
    assert select_frozen(names, ["layers.1.*", "embed_tokens.*"]) == {
        "embed_tokens.weight", *(n for n in names if n.startswith("layers.1."))
    }


def test_inherited_and_new_follow_provenance():
    model, prov = _grown()
    names = parameter_names(model)
    inherited = select_frozen(names, ["inherited"], prov)
    assert inherited == {n for n in names if not n.startswith("layers.1.")}
    assert select_frozen(names, ["new"], prov) == {n for n in names if n.startswith("layers.1.")}
    # entries without the flag (a stage that did not grow) count as inherited unless "new"
    plain = {n: {"kind": "copied", "sources": [n]} for n in names if n != "norm.weight"}
    plain["norm.weight"] = {"kind": "new", "sources": []}
    assert select_frozen(names, ["inherited"], plain) == set(names) - {"norm.weight"}
    assert select_frozen(names, ["new"], plain) == {"norm.weight"}


@pytest.mark.parametrize(
    "patterns,provenance,words",
    [
        (["layers.*.mlp.*"], None, "pattern 'layers.*.mlp.*' matches no parameter"),
        (["inherited"], None, "'inherited' needs provenance"),
        (["new"], None, "'new' needs provenance"),
        (["embeddings"], None, "pattern 'embeddings' matches no parameter"),
        (["new"], {"embed_tokens.weight": {"kind": "copied", "sources": ["embed_tokens.weight"], "inherited": True}},
         "pattern 'new' matches no parameter"),
    ],
)
def test_bad_patterns_are_refused(patterns, provenance, words):
    names = parameter_names(Transformer(CFG.with_(block="attn_only")))
    with pytest.raises(GrowlmError) as err:
        select_frozen(names, patterns, provenance, where="recipe.toml: stage.2.freeze")
    assert str(err.value).startswith("recipe.toml: stage.2.freeze: ")
    assert words in str(err.value)


def test_frozen_parameters_get_no_gradient_and_counts_add_up():
    model, prov = _grown()
    frozen = select_frozen(parameter_names(model), ["inherited"], prov)
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # stale gradients from an earlier stage
    counts = apply_freeze(model, frozen)
    total = sum(p.numel() for p in model.parameters())
    new_layer = sum(p.numel() for n, p in model.named_parameters() if n.startswith("layers.1."))
    assert counts == {"trainable": new_layer, "frozen": total - new_layer}
    tokens = torch.randint(0, 64, (2, 8))
    model(tokens).float().square().mean().backward()
    for name, p in model.named_parameters():
        if name.startswith("layers.1."):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0
        else:
            assert not p.requires_grad and p.grad is None
    check_trainable(model)


def test_apply_freeze_unfreezes_what_is_no_longer_selected():
    model = Transformer(CFG)
    apply_freeze(model, {"embed_tokens.weight"})
    counts = apply_freeze(model, set())
    assert counts["frozen"] == 0 and all(p.requires_grad for p in model.parameters())
    with pytest.raises(GrowlmError, match="no parameter named layers.9"):
        apply_freeze(model, {"layers.9.mlp.up_proj.weight"})


def test_tied_embeddings_freeze_only_when_both_names_are_selected():
    model = Transformer(CFG.with_(tie_embeddings=True))
    names = parameter_names(model)
    assert {"embed_tokens.weight", "lm_head.weight"} <= set(names)
    with pytest.warns(UserWarning, match="tied"):
        counts = apply_freeze(model, select_frozen(names, ["embedding"]))
    assert model.embed_tokens.weight.requires_grad and counts["frozen"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = apply_freeze(model, select_frozen(names, ["embedding", "head"]))
    assert not model.lm_head.weight.requires_grad
    assert counts["frozen"] == CFG.vocab_size * CFG.d_model  # the shared tensor counted once


def test_a_stage_with_nothing_trainable_is_refused():
    model = Transformer(CFG)
    apply_freeze(model, set(parameter_names(model)))
    with pytest.raises(GrowlmError, match="^recipe: stage.2: every parameter is frozen"):
        check_trainable(model, "recipe: stage.2")
