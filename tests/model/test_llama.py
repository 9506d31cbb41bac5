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
    # the open families' features (growlm.model.config): biases, q/k norms, head_dim apart
    "qwen2": BASE.with_(model_type="qwen2", qkv_bias=True, n_kv_heads=2, tie_embeddings=True),
    "qwen3": BASE.with_(model_type="qwen3", qk_norm=True, head_dim=12, n_kv_heads=2),
    "llama_bias": BASE.with_(qkv_bias=True, o_bias=True, head_dim=6),
    "mistral": BASE.with_(model_type="mistral", head_dim=16, n_kv_heads=1),
    "qwen3_attn_only": BASE.with_(model_type="qwen3", qk_norm=True, qkv_bias=True, o_bias=True,
                                  block="attn_only", n_layers=1),
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


@pytest.mark.parametrize("name", ["full", "gqa", "attn_only", "qwen2", "qwen3", "llama_bias"])
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


def test_new_features_have_hf_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in Transformer(CONFIGS["qwen3"]).state_dict().items()}
    assert shapes["layers.0.self_attn.q_norm.weight"] == (12,)  # per head, shared by heads
    assert shapes["layers.0.self_attn.k_norm.weight"] == (12,)
    assert shapes["layers.0.self_attn.q_proj.weight"] == (4 * 12, 32)  # n_heads·head_dim, d
    assert shapes["layers.0.self_attn.o_proj.weight"] == (32, 4 * 12)
    assert shapes["layers.0.self_attn.k_proj.weight"] == (2 * 12, 32)
    qwen2 = {k: tuple(v.shape) for k, v in Transformer(CONFIGS["qwen2"]).state_dict().items()}
    assert qwen2["layers.0.self_attn.q_proj.bias"] == (32,)
    assert qwen2["layers.0.self_attn.v_proj.bias"] == (16,)
    assert "layers.0.self_attn.o_proj.bias" not in qwen2  # Qwen2: q/k/v only
    assert "layers.0.self_attn.o_proj.bias" in Transformer(CONFIGS["llama_bias"]).state_dict()


def test_biases_start_at_zero_and_norms_at_one():
    model = Transformer(CONFIGS["llama_bias"].with_(model_type="qwen3", qk_norm=True))
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            assert torch.all(p == 0), name
        elif p.dim() == 1:
            assert torch.all(p == 1), name


def test_every_field_is_classified_once():
    groups = (ModelConfig.shape_fields(), ModelConfig.architecture_fields(), ModelConfig.init_fields())
    listed = [f for g in groups for f in g]
    assert sorted(listed) == sorted(ModelConfig.model_fields)  # a new field must be classified
    assert len(listed) == len(set(listed))


@pytest.mark.parametrize("changes, words", [
    (dict(model_type="qwen2"), "qkv_bias = true, o_bias = false"),
    (dict(model_type="qwen3"), "qk_norm = true"),
    (dict(model_type="mistral", qkv_bias=True, o_bias=True), "qkv_bias = false"),
    (dict(qkv_bias=True), "model_type 'llama' needs"),
    (dict(qk_norm=True), "qk_norm = false"),
    (dict(head_dim=7), "even"),
    (dict(d_model=30, head_dim=8), "model_type 'llama' needs d_model"),
    (dict(d_model=30), "unless head_dim is given"),
    (dict(sliding_window=16), "sliding-window"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "needs low_freq_factor"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0}), "only factor"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope_type"),
])
def test_configs_a_family_cannot_express_are_refused(changes, words):
    with pytest.raises(ValueError, match=words):
        BASE.with_(**changes)
    BASE.with_(model_type="mistral", d_model=30, head_dim=8, n_heads=4)  # head_dim frees d_model
