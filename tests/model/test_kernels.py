"""The hand-written autograd kernels (RMSNorm, RoPE) and the RoPE tables, against references."""

import pytest
import torch

from growlm.model import ModelConfig
from growlm.model.config import RopeScaling
from growlm.model.kernels import _RMSNormFunction, apply_rope, rms_norm
from growlm.model.llama import RMSNorm
from growlm.model.rope import inv_frequencies, rope_tables

BASE = ModelConfig(vocab_size=128, d_model=32, n_layers=3, n_heads=4, max_seq_len=32)


def _reference_rms_norm(x, weight, eps):  # HF's formulation, left to autograd
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def _reference_rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def test_rms_norm_backward_is_exact():
    norm = RMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))
    assert torch.autograd.gradcheck(lambda w: _RMSNormFunction.apply(x, w, 1e-5), (norm.weight,))
    norm.weight.requires_grad_(False)  # frozen: still a correct input gradient
    assert torch.autograd.gradcheck(norm, (x,))


def test_rms_norm_over_heads_is_per_head():
    """q/k norms normalise each head's vector on its own (Qwen3), with one shared weight."""
    x = torch.randn(2, 5, 3, 8, dtype=torch.double)
    w = torch.rand(8, dtype=torch.double) + 0.5
    out = rms_norm(x, w, 1e-6)
    for h in range(3):
        assert torch.allclose(out[:, :, h], _reference_rms_norm(x[:, :, h], w, 1e-6), atol=1e-12)


def test_rms_norm_matches_reference_in_bf16():
    norm = RMSNorm(16, eps=1e-5)
    x = torch.randn(4, 16).to(torch.bfloat16).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, ref = norm(x), _reference_rms_norm(x_ref, norm.weight, 1e-5)
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    out.sum().backward()
    grad_w = norm.weight.grad.clone()
    norm.weight.grad = None
    ref.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert torch.allclose(x.grad.float(), x_ref.grad.float(), atol=1e-2)
    assert torch.allclose(grad_w, norm.weight.grad, atol=1e-5)


def test_rope_matches_hf_formulation_and_its_gradient():
    cos, sin = rope_tables(BASE, 12)
    x = torch.randn(2, 4, 12, BASE.head_size, dtype=torch.double, requires_grad=True)
    cos, sin = cos.double(), sin.double()
    assert torch.allclose(apply_rope(x, cos, sin), _reference_rope(x, cos, sin), atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin), (x,))


LLAMA3 = RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_position_embeddings=64)


@pytest.mark.parametrize("scaling", [None, RopeScaling(rope_type="linear", factor=4.0), LLAMA3],
                         ids=["default", "linear", "llama3"])
def test_inverse_frequencies_equal_transformers(scaling):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    # head_dim 128 and theta 500000 as in Llama 3.1: the llama3 rule's three bands all occur
    cfg = ModelConfig(vocab_size=8, d_model=512, n_heads=4, n_layers=1, max_seq_len=256,
                      rope_theta=500000.0, rope_scaling=scaling)
    params = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    params |= scaling.model_dump(exclude_none=True) if scaling else {}
    hf_cfg = transformers.LlamaConfig(hidden_size=512, num_attention_heads=4, head_dim=128,
                                      max_position_embeddings=256, rope_parameters=params)
    if scaling is None:
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        theirs = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_cfg)[0]
    else:
        theirs = ROPE_INIT_FUNCTIONS[scaling.rope_type](hf_cfg, "cpu")[0]
    ours = inv_frequencies(cfg)
    assert torch.equal(ours, theirs)
    if scaling is not None:  # the scaling changed something, so the test can fail
        assert not torch.equal(ours, inv_frequencies(cfg.with_(rope_scaling=None)))
