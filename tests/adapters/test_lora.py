import pytest
import torch
from torch import nn

from growlm.adapters import (
    LoRALinear,
    adapter_parameters,
    adapter_scale,
    apply_adapters,
    merge_adapters,
    merged_state_dict,
    unwrap_adapters,
)
from growlm.config import AdapterSpec
from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer

CFG = ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=16)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _model(dtype=torch.float32) -> Transformer:
    return Transformer(CFG).to(dtype)


def _frozen(layers=(0,)) -> set[str]:
    return {f"layers.{i}.{lin}.weight" for i in layers for lin in LINEARS}


def _train_adapters(model, steps=3, lr=1e-2):
    """Make the adapters non-trivial so merges have something to merge."""
    opt = torch.optim.AdamW(adapter_parameters(model), lr=lr)
    tokens = torch.randint(0, CFG.vocab_size, (2, 8))
    for _ in range(steps):
        model(tokens).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return opt


def test_adapter_starts_at_zero_but_learns():
    model = _model()
    tokens = torch.randint(0, CFG.vocab_size, (2, 8))
    ref = model(tokens)
    apply_adapters(model, AdapterSpec(rank=4), _frozen())
    torch.testing.assert_close(model(tokens), ref, rtol=0, atol=0)
    model(tokens).square().mean().backward()
    q = model.get_submodule("layers.0.self_attn.q_proj")
    assert q.lora_A.abs().sum() > 0  # random A, not the zero-both of the official ReLoRA code
    assert q.lora_B.grad is not None and q.lora_B.grad.abs().sum() > 0


def test_apply_on_frozen_only_and_names_kept():
    model = _model()
    names_before = set(model.state_dict())
    wrapped = apply_adapters(model, AdapterSpec(rank=4), _frozen((0,)))
    assert wrapped == [f"layers.0.{lin}" for lin in LINEARS]
    assert isinstance(model.get_submodule("layers.0.mlp.up_proj"), LoRALinear)
    assert type(model.get_submodule("layers.1.mlp.up_proj")) is nn.Linear
    lora_names = {f"layers.0.{lin}.lora_{x}" for lin in LINEARS for x in "AB"}
    assert set(model.state_dict()) == names_before | lora_names
    assert model.get_submodule("layers.0.self_attn.q_proj").lora_A.shape == (4, 32)
    assert model.get_submodule("layers.0.mlp.down_proj").lora_B.shape == (32, 4)


def test_on_all_freezes_wrapped_weights():
    model = _model()
    wrapped = apply_adapters(model, AdapterSpec(rank=4, on="all", targets=["*.q_proj"]), set())
    assert wrapped == ["layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj"]
    for name in wrapped:
        assert not model.get_submodule(name).weight.requires_grad


def test_scale_from_alpha_scale_and_default():
    assert adapter_scale(AdapterSpec(rank=8)) == 0.25
    assert adapter_scale(AdapterSpec(rank=8, alpha=16)) == 2.0
    assert adapter_scale(AdapterSpec(rank=8, scale=0.5)) == 0.5
    with pytest.raises(GrowlmError, match="alpha or scale"):
        adapter_scale(AdapterSpec(rank=8, alpha=16, scale=0.5))


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_merge_equivalence_and_same_parameters(dtype, atol):
    model = _model(dtype)
    apply_adapters(model, AdapterSpec(rank=4, scale=1.0), _frozen((0, 1)))
    _train_adapters(model)
    tokens = torch.randint(0, CFG.vocab_size, (2, 8))
    params_before = {n: p for n, p in model.named_parameters()}
    q = model.get_submodule("layers.1.self_attn.q_proj")
    w_before = q.weight.detach().clone()
    expected_delta = q.scale * (q.lora_B.detach().double() @ q.lora_A.detach().double())
    with torch.no_grad():
        ref = model(tokens)
    merged = merge_adapters(model)
    assert len(merged) == 14
    with torch.no_grad():
        out = model(tokens)
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)
    params_after = dict(model.named_parameters())
    assert params_after.keys() == params_before.keys()
    assert all(params_after[n] is params_before[n] for n in params_before)
    torch.testing.assert_close(q.weight.double() - w_before.double(), expected_delta,
                               rtol=0, atol=atol)
    # after the merge the adapters restart: zero output, fresh random A
    assert q.lora_B.abs().sum() == 0 and q.lora_A.abs().sum() > 0


def test_unwrap_restores_plain_linear_with_same_weight():
    model = _model()
    apply_adapters(model, AdapterSpec(rank=4), _frozen())
    _train_adapters(model)
    tokens = torch.randint(0, CFG.vocab_size, (2, 8))
    weight = model.get_submodule("layers.0.self_attn.q_proj").weight
    with torch.no_grad():
        ref = model(tokens)
    unwrap_adapters(model)
    lin = model.get_submodule("layers.0.self_attn.q_proj")
    assert type(lin) is nn.Linear and lin.weight is weight
    assert not any("lora_" in n for n in model.state_dict())
    assert set(model.state_dict()) == set(Transformer(CFG).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref, rtol=0, atol=1e-5)


def test_merged_state_dict_matches_in_model_merge():
    model = _model()
    apply_adapters(model, AdapterSpec(rank=4, alpha=8), _frozen((0, 1)))
    _train_adapters(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    exported = merged_state_dict(state, scale=2.0)
    merge_adapters(model)
    assert not any("lora_" in k for k in exported)
    for k, v in exported.items():
        torch.testing.assert_close(v, model.state_dict()[k], rtol=0, atol=1e-6)
    del state["layers.0.self_attn.q_proj.lora_B"]
    with pytest.raises(GrowlmError, match="layers.0.self_attn.q_proj needs lora_A, lora_B"):
        merged_state_dict(state, scale=2.0)


def test_merged_state_dict_bf16_rounds_once():
    w = torch.randn(8, 16).bfloat16()
    a, b = torch.randn(2, 16), torch.randn(8, 2) * 1e-3
    out = merged_state_dict({"x.weight": w, "x.lora_A": a, "x.lora_B": b}, scale=0.25)
    expected = (w.float() + 0.25 * b @ a).bfloat16()
    assert out["x.weight"].dtype == torch.bfloat16
    assert torch.equal(out["x.weight"], expected)


def test_count_and_parameters():
    model = _model()
    apply_adapters(model, AdapterSpec(rank=2, targets=["*.q_proj", "*.down_proj"]), _frozen())
    # q: 2·(32+32); down: 2·(64+32)
    assert sum(p.numel() for p in adapter_parameters(model)) == 2 * 32 * 2 + 2 * (64 + 32)
    assert len(adapter_parameters(model)) == 4


# ---------------------------------------------------------------- bad inputs

def test_rank_larger_than_layer():
    model = _model()
    with pytest.raises(GrowlmError, match=r"adapters\.rank: 40 exceeds .* layers\.0\.self_attn\.q_proj"):
        apply_adapters(model, AdapterSpec(rank=40), _frozen())
    # nothing was wrapped on error
    assert sum(p.numel() for p in adapter_parameters(model)) == 0


def test_target_not_linear():
    with pytest.raises(GrowlmError, match=r"layers\.0\.mlp is a FeedForward, not a linear"):
        apply_adapters(_model(), AdapterSpec(rank=2, targets=["*.mlp"]), _frozen())


def test_nothing_matches():
    with pytest.raises(GrowlmError, match="no frozen linear layer matches"):
        apply_adapters(_model(), AdapterSpec(rank=2), set())
    with pytest.raises(GrowlmError, match="no linear layer matches"):
        apply_adapters(_model(), AdapterSpec(rank=2, on="all", targets=["*.nope"]), set())


def test_apply_twice():
    model = _model()
    apply_adapters(model, AdapterSpec(rank=2), _frozen())
    with pytest.raises(GrowlmError, match="already has a LoRA adapter"):
        apply_adapters(model, AdapterSpec(rank=2), _frozen())


def test_bf16_merge_needs_fp32_path():
    model = _model(torch.bfloat16)
    apply_adapters(model, AdapterSpec(rank=4), _frozen())
    q = model.get_submodule("layers.0.self_attn.q_proj")
    assert q.lora_A.dtype == torch.float32  # trainable adapters stay fp32 over a bf16 weight
    with torch.no_grad():
        q.lora_B.normal_(0, 0.02)
    w_before = q.weight.detach().clone()
    with pytest.raises(GrowlmError, match=r"bfloat16.*allow_bf16_merge=True"):
        merge_adapters(model)
    assert torch.equal(q.weight, w_before)  # the failed merge changed nothing
    expected = (w_before.float() + q.delta()).bfloat16()
    merge_adapters(model, allow_bf16_merge=True)
    assert torch.equal(q.weight, expected)  # fp32 compute, one rounding
