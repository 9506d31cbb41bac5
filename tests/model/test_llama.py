import math

import pytest
import torch

from growlm.model import ModelConfig, Transformer
from growlm.model.llama import cross_entropy

BASE = ModelConfig(vocab_size=128, d_model=32, n_layers=3, n_heads=4, max_seq_len=32)
CONFIGS = {
    "full": BASE,
    "gqa": BASE.with_(n_kv_heads=2, ffn_dim=48),
    "tied": BASE.with_(tie_embeddings=True),
    "attn_only": BASE.with_(block="attn_only", n_layers=1),
    "no_layer": BASE.with_(n_layers=0),
}


def _counted(model: Transformer) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied weight is counted once


@pytest.mark.parametrize("name", CONFIGS)
def test_param_counts_match_the_module(name):
    cfg = CONFIGS[name]
    model = Transformer(cfg)
    assert cfg.params_total == _counted(model)
    assert cfg.params_embedding == model.embed_tokens.weight.numel()
    if cfg.n_layers:
        layer = model.layers["0"]
        assert cfg.params_per_layer == sum(p.numel() for p in layer.parameters())
        assert cfg.params_attention == sum(p.numel() for p in layer.self_attn.parameters())
    assert cfg.params_head == (0 if cfg.tie_embeddings else model.lm_head.weight.numel())


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_trains_a_step(name):
    cfg = CONFIGS[name]
    model = Transformer(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, 16))
    logits = model(tokens)
    assert logits.shape == (2, 16, cfg.vocab_size)
    loss = cross_entropy(logits[:, :-1], tokens[:, 1:])
    assert math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_structure_of_attention_only_and_bigram_models():
    names = set(Transformer(CONFIGS["attn_only"]).state_dict())
    assert "layers.0.self_attn.q_proj.weight" in names
    assert not any("mlp" in n or "post_attention_layernorm" in n for n in names)
    bigram = set(Transformer(CONFIGS["no_layer"]).state_dict())
    assert bigram == {"embed_tokens.weight", "norm.weight", "lm_head.weight"}


def test_bigram_model_ignores_context():
    model = Transformer(CONFIGS["no_layer"])
    a = torch.tensor([[5, 7, 9]])
    b = torch.tensor([[1, 2, 9]])
    with torch.no_grad():
        assert torch.equal(model(a)[0, -1], model(b)[0, -1])


@pytest.mark.parametrize("name", ["full", "gqa", "attn_only"])
def test_causal(name):
    cfg = CONFIGS[name]
    model = Transformer(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (1, 20))
    changed = tokens.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[0, :12], b[0, :12], atol=1e-6)
    assert not torch.allclose(a[0, 12:], b[0, 12:], atol=1e-3)


def test_sequence_longer_than_max_seq_len_is_refused():
    model = Transformer(BASE)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, BASE.max_seq_len + 1, dtype=torch.long))


def test_flops_per_token():
    cfg = BASE
    seq = 16
    dense = 6 * (cfg.n_layers * (cfg.params_attention + cfg.params_ffn)
                 + cfg.vocab_size * cfg.d_model)
    attn = 12 * cfg.n_layers * cfg.d_model * seq
    # norms are the only parameters without a matmul; they are counted but tiny
    norms = 6 * (cfg.n_layers * 2 + 1) * cfg.d_model
    assert cfg.flops_per_token(seq) == dense + attn + norms
    assert cfg.flops_per_token(seq) > 6 * cfg.params_non_embedding  # attention adds FLOPs
    assert cfg.flops_per_token(2 * seq) > cfg.flops_per_token(seq)
    tied = cfg.with_(tie_embeddings=True)  # a tied head is still a matmul
    assert tied.flops_per_token(seq) == cfg.flops_per_token(seq)
    bigram = cfg.with_(n_layers=0)
    assert bigram.flops_per_token(seq) == 6 * (cfg.vocab_size * cfg.d_model + cfg.d_model)


def test_init_std_and_scaled_residual_projections():
    cfg = ModelConfig(vocab_size=512, d_model=128, n_layers=8, n_heads=4, max_seq_len=16)
    model = Transformer(cfg)
    expected_out = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            assert torch.all(p == 1.0), name
            continue
        want = expected_out if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
        assert p.std().item() == pytest.approx(want, rel=0.1), name
    plain = Transformer(cfg.with_(residual_init="plain"))
    assert plain.layers["0"].mlp.down_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_init_is_reproducible_with_a_generator():
    a, b = Transformer(BASE), Transformer(BASE)
    a.init_weights(torch.Generator().manual_seed(3))
    b.init_weights(torch.Generator().manual_seed(3))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_cross_entropy_ignores_minus_100():
    logits = torch.randn(1, 4, 10)
    targets = torch.tensor([[1, 2, -100, -100]])
    full = cross_entropy(logits[:, :2], targets[:, :2])
    assert torch.allclose(cross_entropy(logits, targets), full)


def _reference_rms_norm(x, weight, eps):  # HF's formulation, left to autograd
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def _reference_rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def test_rms_norm_backward_is_exact():
    from growlm.model.llama import RMSNorm
    from growlm.model.llama import _RMSNormFunction as _RMSNorm

    norm = RMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))
    assert torch.autograd.gradcheck(lambda w: _RMSNorm.apply(x, w, 1e-5), (norm.weight,))
    norm.weight.requires_grad_(False)  # frozen: still a correct input gradient
    assert torch.autograd.gradcheck(norm, (x,))


def test_rms_norm_matches_reference_in_bf16():
    from growlm.model.llama import RMSNorm

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
    from growlm.model.llama import apply_rope, rope_tables

    cos, sin = rope_tables(BASE, 12)
    x = torch.randn(2, 4, 12, BASE.head_dim, dtype=torch.double, requires_grad=True)
    cos, sin = cos.double(), sin.double()
    assert torch.allclose(apply_rope(x, cos, sin), _reference_rope(x, cos, sin), atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin), (x,))
