"""Model-state bytes, parameter and adapter counts, the activation and peak estimates."""

import pytest
import torch

from growlm.config import AdapterSpec
from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer
from growlm.plan.layout import parameter_names
from growlm.plan.memory import (
    activation_bytes,
    adapter_params,
    adapter_params_by_linear,
    estimate_peak,
    galore_matrix_bytes,
    galore_shapes,
    model_state_bytes,
    param_counts,
)
from growlm.plan.precision import BF16_AUTOCAST, FP32

CFG = ModelConfig(vocab_size=256, d_model=64, n_layers=4, n_heads=4, max_seq_len=64)
NAMES = parameter_names(CFG)
LOWER = {"embed_tokens.weight"} | {n for n in NAMES if n.startswith(("layers.0.", "layers.1."))}


def test_model_state_bytes():
    assert model_state_bytes(10, 100, 3) == 16 * 10 + 2 * 100 + 16 * 3
    with pytest.raises(GrowlmError, match="frozen parameter count"):
        model_state_bytes(1, -1)


def test_galore_matrix_bytes():
    # 8 bytes per weight; moments on the r×max side, the projector on the r×min side
    assert galore_matrix_bytes((384, 128), 32) == 8 * 384 * 128 + 8 * 32 * 384 + 4 * 32 * 128
    assert galore_matrix_bytes((128, 384), 32) == galore_matrix_bytes((384, 128), 32)
    assert galore_matrix_bytes((64, 16), 100) == 8 * 64 * 16 + 8 * 16 * 64 + 4 * 16 * 16


@pytest.mark.parametrize("tied", [False, True])
def test_galore_projects_the_trainable_layer_matrices(tied):
    cfg = CFG.with_(tie_embeddings=tied)
    shapes = galore_shapes(cfg, LOWER)
    d, f = cfg.d_model, cfg.hidden_dim
    per_layer = [(d, d)] * 4 + [(f, d), (f, d), (d, f)]
    assert sorted(shapes) == sorted(per_layer * (cfg.n_layers - 2))  # no embedding, head, norms


@pytest.mark.parametrize("tied", [False, True])
def test_param_counts_match_the_model(tied):
    cfg = CFG.with_(tie_embeddings=tied)
    model = Transformer(cfg)
    counts = param_counts(cfg, {"embed_tokens.weight", "lm_head.weight"})
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == cfg.params_total
    assert counts["head"] == (0 if tied else cfg.vocab_size * cfg.d_model)
    assert counts["layers"] == cfg.params_layers and counts["norm"] == cfg.d_model
    assert counts["frozen"] == cfg.params_embedding + cfg.params_head
    assert counts["trainable"] == cfg.params_total - counts["frozen"]
    # as in growlm.freeze: a tied tensor freezes only when both of its names are frozen
    one = param_counts(cfg, {"embed_tokens.weight"})
    assert one["frozen"] == (0 if tied else cfg.params_embedding)


def test_adapter_params_counts_rank_times_in_plus_out():
    d, f, r = CFG.d_model, CFG.hidden_dim, 8
    spec = AdapterSpec(rank=r)  # default targets: q, k, v, o, gate, up, down; on frozen linears
    per_layer = r * (4 * 2 * d + 3 * (d + f))
    assert adapter_params(CFG, spec, LOWER) == 2 * per_layer  # layers 0 and 1 are frozen
    assert adapter_params(CFG, spec, set()) == 0
    assert adapter_params(CFG, spec.model_copy(update={"on": "all"}), set()) == 4 * per_layer
    only_q = adapter_params_by_linear(CFG, AdapterSpec(rank=r, targets=["*.q_proj"]), LOWER)
    assert only_q == {"layers.0.self_attn.q_proj": 2 * r * d, "layers.1.self_attn.q_proj": 2 * r * d}
    assert adapter_params(CFG, None, LOWER) == 0


def test_adapter_params_with_gqa():
    cfg = CFG.with_(n_kv_heads=2)
    spec = AdapterSpec(rank=4, targets=["layers.0.self_attn.k_proj"], on="all")
    assert adapter_params(cfg, spec, set()) == 4 * (64 + 2 * 16)


def _saved_bytes(cfg: ModelConfig, frozen: set[str], batch: int, seq: int) -> int:
    """Bytes autograd keeps for the backward (unique storages that are not parameters or
    buffers) through the model's own chunked loss."""
    model = Transformer(cfg)
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in owned:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    tokens = torch.randint(0, cfg.vocab_size, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(tokens, labels=tokens)
    return sum(kept.values())


@pytest.mark.parametrize("frozen", [set(), {"embed_tokens.weight", "lm_head.weight"}, LOWER])
def test_activation_estimate_tracks_what_autograd_keeps(frozen):
    batch, seq = 4, 64
    measured = _saved_bytes(CFG, frozen, batch, seq)
    estimate = activation_bytes(CFG, batch, seq, frozen, precision=FP32)  # as on CPU
    # torch's chunked loss also saves the head weight's gradient, made in the forward, which
    # the estimate counts as a gradient
    head_grad = 0 if "lm_head.weight" in frozen else CFG.vocab_size * CFG.d_model * 4
    assert 0.95 < (estimate + head_grad) / measured < 1.05


def test_activation_estimate_structure():
    full = activation_bytes(CFG, 2, 64, set())
    lower = activation_bytes(CFG, 2, 64, LOWER)
    ckpt = activation_bytes(CFG, 2, 64, set(), checkpointing=True)
    assert lower < full  # frozen bottom layers that no gradient reaches keep nothing
    assert ckpt < full
    # per token, except RoPE's tables (2 per layer of seq × head_dim, twice in bf16: sin and cos)
    rope = CFG.n_layers * 2 * 2 * 64 * CFG.head_size * 2
    assert activation_bytes(CFG, 4, 64, set()) - rope == 2 * (full - rope)
    eager = activation_bytes(CFG, 2, 64, set(), fused_attention=False)
    assert eager - full == CFG.n_layers * 2 * CFG.n_heads * 64 * 64 * 2
    assert activation_bytes(CFG, 2, 64, set(), precision=FP32) > full  # fp32 activations
    with pytest.raises(GrowlmError, match="micro-batch"):
        activation_bytes(CFG, 0, 64, set())


def test_model_state_per_precision():
    # growlm stores fp32 weights: a frozen parameter is 4 bytes, not the papers' 2
    assert model_state_bytes(10, 100, 3, FP32) == 16 * 10 + 4 * 100 + 16 * 3
    assert model_state_bytes(10, 100, 3, BF16_AUTOCAST) == model_state_bytes(10, 100, 3, FP32)
    # fp32 weight + gradient (4 + 4) take what bf16 weight + gradient + fp32 master take
    assert galore_matrix_bytes((384, 128), 32, FP32) == galore_matrix_bytes((384, 128), 32)


def test_peak_estimate_parts_and_moments():
    est = estimate_peak(CFG, set(), {}, 4, 64, precision=FP32)
    params = CFG.params_total
    assert est.weights == 4 * params and est.gradients == 4 * params
    n_tensors = len({w for w in parameter_names(CFG)})
    assert est.optimizer_state == 8 * params + 4 * n_tensors  # moments + AdamW's step counters
    assert est.model_state == model_state_bytes(params, 0, 0, FP32) + 4 * n_tensors
    assert est.peak == est.weights + est.optimizer_state + est.buffers + est.batches + max(
        m.bytes for m in est.moments)
    assert est.moment in {m.name for m in est.moments}
    # the optimizer step holds every gradient; activations and gradients never all coexist
    step = next(m for m in est.moments if m.name == "optimizer step")
    assert step.bytes >= est.gradients
    assert est.peak < est.model_state + est.activations + est.buffers + est.batches + 2**20
    # accumulation: later micro-batches run with every gradient alive
    acc = estimate_peak(CFG, set(), {}, 4, 64, precision=FP32, accumulation=2)
    assert acc.peak > est.peak
    assert estimate_peak(CFG, set(), {}, 4, 64, checkpointing=True).peak < estimate_peak(CFG, set(), {}, 4, 64).peak
    with pytest.raises(GrowlmError, match="accumulation"):
        estimate_peak(CFG, set(), {}, 4, 64, accumulation=0)
