"""Frozen means cheap: no .grad, no optimizer state, no weight-gradient matmuls.

Models are frozen and adapted through the library's own path (`select_frozen`, `apply_freeze`,
`apply_adapters`, the trainer's `build_optimizer`), then PyTorch's FLOP counter checks the
autograd graph against `count_flops`. Attention runs on the MATH SDPA backend, whose QKᵀ and AV
are plain bmm's that the counter sees, over the full T×T matrix as `count_flops` counts it (the
CPU flash kernel is not counted by FlopCounterMode at all). The only convention left that
differs: `count_flops` charges RMSNorm weights like d-parameter matrices (≈0.2% here), which
torch counts as zero — hence the 1% tolerance on totals.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from growlm.adapters.lora import adapter_modules, apply_adapters
from growlm.config import AdapterSpec, GaloreSection, OptimSection
from growlm.freeze import apply_freeze, parameter_names, select_frozen
from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer, cross_entropy
from growlm.optim.build import build_optimizer
from growlm.plan.flops import count_flops
from growlm.plan.memory import galore_saving_bytes, galore_shapes, model_state_bytes, param_counts

T, B = 16, 2
CFG = ModelConfig(vocab_size=256, d_model=32, n_layers=3, n_heads=4, max_seq_len=T)
INHERITED = ["embedding", "layers.0.*", "layers.1.*", "norm.weight", "head"]  # STEP, 2 of 3 old

SETUPS = {
    "full": ([], False),
    "frozen_embed_head": (["embedding", "head"], False),
    "frozen_lower": (["embedding", "layers.0.*", "layers.1.*"], False),
    "frozen_middle": (["layers.1.*"], False),  # frozen above a trainable layer
    "step_inherited": (INHERITED, False),
    "step_relora": (INHERITED, True),
}


def build(name: str, cfg: ModelConfig = CFG):
    """(model, frozen names, adapter params per linear) for setup `name`."""
    patterns, adapters = SETUPS[name]
    torch.manual_seed(0)
    model = Transformer(cfg)
    frozen = select_frozen(parameter_names(model), patterns) if patterns else set()
    apply_freeze(model, frozen)
    if adapters:
        apply_adapters(model, AdapterSpec(rank=2), frozen, generator=torch.Generator().manual_seed(0))
    sizes = {n: m.lora_A.numel() + m.lora_B.numel() for n, m in adapter_modules(model).items()}
    return model, frozen, sizes


def batch(cfg: ModelConfig = CFG) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(1))
    return data[:, :-1], data[:, 1:]


def frozen_params(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if not p.requires_grad]


# ---------------------------------------------------------------- gradients and optimizer state

@pytest.mark.parametrize("name, optimizer", [
    ("frozen_embed_head", "adamw"), ("frozen_lower", "galore"), ("step_relora", "adamw")])
def test_frozen_params_get_no_grad_and_no_optimizer_state(name, optimizer):
    model, frozen, _ = build(name)
    before = {id(p): p.detach().clone() for p in frozen_params(model)}
    assert len(before) >= 2
    opt = build_optimizer(model, OptimSection(galore=GaloreSection(rank=4)), optimizer, 1e-2,
                          torch.device("cpu"))
    x, y = batch()
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        cross_entropy(model(x), y).backward()
        assert all(p.grad is None for p in frozen_params(model))
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        opt.step()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in opt.state} == trainable
    assert all(torch.equal(p, before[id(p)]) for p in frozen_params(model))


@pytest.mark.parametrize("name, rank", [("full", 4), ("frozen_lower", 4), ("full", 1000)])
def test_galore_state_is_what_the_planner_counts(name, rank):
    """Live weights + gradients + optimizer state after a GaLore step against the estimate.

    Storage is fp32, so a frozen weight takes 4 bytes where the estimate's bf16 convention
    counts 2; every other byte must match exactly (rank 1000 exceeds every matrix: full rank)."""
    model, frozen, _ = build(name)
    opt = build_optimizer(model, OptimSection(galore=GaloreSection(rank=rank)), "galore", 1e-2,
                          torch.device("cpu"))
    x, y = batch()
    cross_entropy(model(x), y).backward()
    opt.step()
    params = {id(p): p for p in model.parameters()}.values()
    live = sum(p.numel() * 4 for p in params)
    live += sum(p.grad.numel() * 4 for p in params if p.grad is not None)
    live += sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                if torch.is_tensor(v))
    counts = param_counts(CFG, frozen)
    estimate = (model_state_bytes(counts["trainable"], counts["frozen"])
                - galore_saving_bytes(galore_shapes(CFG, frozen), rank))
    assert live == estimate + 2 * counts["frozen"]
    saving = galore_saving_bytes(galore_shapes(CFG, frozen), rank)
    assert saving > 0 if rank < CFG.d_model else saving < 0  # at full rank the projector is overhead


def test_tied_embedding_frozen_under_both_names():
    model, _, _ = build("frozen_embed_head", CFG.with_(tie_embeddings=True))
    opt = build_optimizer(model, OptimSection(), "adamw", 1e-2, torch.device("cpu"))
    x, y = batch()
    cross_entropy(model(x), y).backward()
    opt.step()
    emb = model.embed_tokens.weight
    assert emb is model.lm_head.weight and not emb.requires_grad and emb.grad is None
    assert emb not in opt.state


# ---------------------------------------------------------------- FLOPs of the autograd graph

def measured_flops(model) -> tuple[float, float]:
    """(forward, backward) FLOPs per token as torch's counter sees them."""
    x, y = batch()
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as fwd:
            loss = cross_entropy(model(x), y)
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
    return fwd.get_total_flops() / x.numel(), bwd.get_total_flops() / x.numel()


def forward_flops(cfg: ModelConfig, adapters: dict[str, int]) -> int:
    """2 FLOPs per matmul weight (adapters included; no norms, no lookup) + QKᵀ and AV."""
    matmul = cfg.params_non_embedding - cfg.d_model * (1 + 2 * cfg.n_layers)
    return 2 * (matmul + sum(adapters.values())) + cfg.attention_flops_per_token(T) // 3


@functools.cache
def full_backward_flops() -> float:
    return measured_flops(build("full")[0])[1]


@pytest.mark.parametrize("name", list(SETUPS))
def test_backward_flops_match_exact_count(name):
    model, frozen, adapters = build(name)
    fwd, bwd = measured_flops(model)
    predicted = count_flops(CFG, frozen, adapters, T)
    assert fwd == forward_flops(CFG, adapters)
    assert bwd == pytest.approx(predicted.exact_total - fwd, rel=0.01)
    assert fwd + bwd == pytest.approx(predicted.exact_total, rel=0.01)
    if name != "full":
        assert bwd < full_backward_flops()


def test_6nd_formula_misses_frozen_input_gradients():
    """A frozen head, or a frozen layer above trainable ones, still passes the gradient down
    (2·N more than the papers' 2·N): the graph does that work, the 6·N·D formula leaves it out."""
    n = CFG.params_per_layer - 2 * CFG.d_model
    norms = CFG.d_model * (2 * CFG.n_layers + 1)  # charged by count_flops, free in torch
    for name, missed in (("frozen_embed_head", CFG.vocab_size * CFG.d_model),
                         ("frozen_middle", n)):
        model, frozen, adapters = build(name)
        fwd, bwd = measured_flops(model)
        fc = count_flops(CFG, frozen, adapters, T)
        matmuls = fwd + bwd - CFG.attention_flops_per_token(T)
        assert matmuls - fc.six_nd == pytest.approx(2 * missed, abs=6 * norms)


def block_flops(model) -> dict[str, float]:
    """Forward + backward FLOPs per token attributed to each block and to the head."""
    x, y = batch()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        cross_entropy(model(x), y).backward()
    counts = counter.get_flop_counts()
    keys = [f"layers.{i}" for i in range(CFG.n_layers)] + ["lm_head"]
    return {k: sum(counts[f"Transformer.{k}"].values()) / x.numel() for k in keys}


def test_frozen_blocks_skip_weight_gradients():
    """Per block: a frozen block with nothing trainable below runs only its forward; a frozen
    block above trainable ones adds input gradients (2·N) but no weight gradients."""
    n = CFG.params_per_layer - 2 * CFG.d_model  # matmul weights of one block
    attn = CFG.attention_flops_per_token(T) // CFG.n_layers // 3  # one block's QKᵀ + AV forward
    head = CFG.vocab_size * CFG.d_model
    lower = block_flops(build("frozen_lower")[0])
    assert lower == {"layers.0": 2 * n + attn, "layers.1": 2 * n + attn,
                     "layers.2": 6 * n + 3 * attn, "lm_head": 6 * head}
    middle = block_flops(build("frozen_middle")[0])
    assert middle["layers.1"] == 4 * n + 3 * attn
    assert middle["layers.0"] == middle["layers.2"] == 6 * n + 3 * attn
    assert block_flops(build("frozen_embed_head")[0])["lm_head"] == 4 * head
