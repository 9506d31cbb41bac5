"""Accounting for the open families' parameters: biases, q/k norms, head_dim apart from d/heads.

The layout must list exactly the model's parameters; FLOPs are checked against PyTorch's FLOP
counter and activations against what autograd keeps, as for the plain model.
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from growlm.adapters.lora import adapter_modules, apply_adapters
from growlm.config import AdapterSpec
from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer, cross_entropy
from growlm.plan.flops import count_flops
from growlm.plan.layout import Trainability, parameter_names
from growlm.plan.memory import activation_bytes, adapter_params_by_linear, param_counts
from growlm.plan.precision import FP32

T = 16
BASE = ModelConfig(vocab_size=96, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=64)
CONFIGS = {
    "qwen2": BASE.with_(model_type="qwen2", qkv_bias=True, tie_embeddings=True),
    "qwen3": BASE.with_(model_type="qwen3", qk_norm=True, head_dim=12, qkv_bias=True, o_bias=True),
    "mistral": BASE.with_(model_type="mistral", head_dim=16),
}


def _layer(cfg, i):
    return {n for n in parameter_names(cfg) if n.startswith(f"layers.{i}.")}


@pytest.mark.parametrize("name", CONFIGS)
def test_layout_lists_the_model_parameters(name):
    cfg = CONFIGS[name]
    model = Transformer(cfg)
    assert parameter_names(cfg) == [n for n, _ in model.named_parameters(remove_duplicate=False)]
    counts = param_counts(cfg, _layer(cfg, 0))
    assert counts["total"] == cfg.params_total == sum(p.numel() for p in model.parameters())
    assert counts["frozen"] == cfg.params_per_layer


@pytest.mark.parametrize("name", CONFIGS)
def test_all_trainable_is_6n_plus_attention(name):
    cfg = CONFIGS[name]
    fc = count_flops(cfg, set(), {}, T)
    assert fc.exact_total == cfg.flops_per_token(T)
    assert fc.attention == 12 * cfg.n_layers * cfg.q_dim * T  # n_heads·head_dim, not d_model


def _measured(cfg, frozen, lora_targets=()):
    torch.manual_seed(0)
    model = Transformer(cfg)
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    if lora_targets:
        apply_adapters(model, AdapterSpec(rank=2, targets=list(lora_targets), on="all"), frozen)
    tokens = torch.randint(0, cfg.vocab_size, (2, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens).float().mean().backward()
    sizes = {n: m.lora_A.numel() + m.lora_B.numel() for n, m in adapter_modules(model).items()}
    return counter.get_total_flops() / tokens.numel(), sizes


def _vector_flops(cfg, frozen, adapters) -> int:
    """Norms and biases are charged like matrices by count_flops; torch counts them as zero."""
    st = Trainability(cfg, frozen, adapters)
    return sum(2 * w.params * (1 + st.grad_reaches(w.slot) + st.trainable(w))
               for w in st.weights if w.kind in ("norm", "bias"))


def _but(cfg, keep: set[str]) -> set[str]:
    return set(parameter_names(cfg)) - keep


QWEN3 = CONFIGS["qwen3"]


@pytest.mark.parametrize("frozen, lora", [
    (set(), ()),
    ({"embed_tokens.weight"} | _layer(QWEN3, 0), ()),
    (_but(QWEN3, {"layers.1.self_attn.q_norm.weight"}), ()),  # only a q norm trains
    (_but(QWEN3, {"layers.1.self_attn.k_proj.bias"}), ()),  # only a k bias trains
    (_but(QWEN3, {"layers.2.self_attn.o_proj.bias"}), ()),
    (_but(QWEN3, {"lm_head.weight"}), ("*.q_proj", "*.v_proj")),  # LoRA on biased linears
])
def test_exact_count_matches_torch_flop_counter(frozen, lora):
    measured, sizes = _measured(QWEN3, frozen, lora)
    fc = count_flops(QWEN3, frozen, sizes, T)
    assert fc.exact_total - _vector_flops(QWEN3, frozen, sizes) == measured


def test_adapters_target_biased_linears_by_their_weight_shape():
    cfg = CONFIGS["qwen3"]
    by_linear = adapter_params_by_linear(cfg, AdapterSpec(rank=4, targets=["*.q_proj", "*.k_proj"], on="all"), set())
    assert by_linear["layers.0.self_attn.q_proj"] == 4 * (cfg.d_model + cfg.q_dim)
    assert by_linear["layers.0.self_attn.k_proj"] == 4 * (cfg.d_model + cfg.kv_dim)
    assert len(by_linear) == 2 * cfg.n_layers  # biases are not linears


def _saved_bytes(cfg, frozen, batch, seq):
    model = Transformer(cfg)
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    tokens = torch.randint(0, cfg.vocab_size, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cross_entropy(model(tokens), tokens)
    return sum(kept.values())


@pytest.mark.parametrize("name", CONFIGS)
def test_activation_estimate_tracks_what_autograd_keeps(name):
    cfg = CONFIGS[name]
    for frozen in (set(), {"embed_tokens.weight", "lm_head.weight"} | _layer(cfg, 0)):
        measured = _saved_bytes(cfg, frozen, 4, 64)
        estimate = activation_bytes(cfg, 4, 64, frozen, precision=FP32)
        assert 0.8 < estimate / measured < 1.25, (frozen, estimate, measured)


def test_q_k_norm_inputs_are_counted():
    plain = QWEN3.with_(model_type="mistral", qk_norm=False, qkv_bias=False, o_bias=False)
    u = 4 * 2 * 64  # fp32, batch 2, seq 64
    extra = activation_bytes(QWEN3, 2, 64, set(), precision=FP32) \
        - activation_bytes(plain, 2, 64, set(), precision=FP32)
    assert extra == u * (QWEN3.q_dim + QWEN3.kv_dim) * QWEN3.n_layers  # q, k before the norms
