"""FLOP accounting: hand-derived cases and a cross-check against PyTorch's own FLOP counter."""

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer
from growlm.plan.flops import count_flops
from growlm.plan.layout import Trainability, parameter_names

T = 16
CFG = ModelConfig(vocab_size=96, d_model=32, n_layers=3, n_heads=4, max_seq_len=T)
NAMES = parameter_names(CFG)


def layer(i: int) -> set[str]:
    return {n for n in NAMES if n.startswith(f"layers.{i}.")}


def part(cfg: ModelConfig, which: str) -> int:
    """Parameters of one part of a layer (or the head)."""
    d, f = cfg.d_model, cfg.hidden_dim
    return {"layer": cfg.params_per_layer, "head": cfg.vocab_size * d, "norm": d,
            "attn": cfg.params_attention, "ffn": 3 * d * f}[which]


@pytest.mark.parametrize("cfg", [
    CFG,
    CFG.with_(tie_embeddings=True),
    CFG.with_(n_kv_heads=2, ffn_dim=48),
    CFG.with_(block="attn_only"),
    CFG.with_(n_layers=0),
])
def test_all_trainable_is_6n_plus_attention(cfg):
    fc = count_flops(cfg, set(), {}, T)
    assert fc.six_nd == 6 * cfg.params_non_embedding
    assert fc.exact_total == 6 * cfg.params_non_embedding + cfg.attention_flops_per_token(T)
    assert fc.attention == cfg.attention_flops_per_token(T)


def test_only_head_trainable():
    frozen = set(NAMES) - {"lm_head.weight"}
    fc = count_flops(CFG, frozen, {}, T)
    head = part(CFG, "head")
    rest = CFG.params_non_embedding - head
    assert fc.six_nd == 6 * head + 2 * rest
    # the head is the first trainable thing: no input gradient; everything below: forward only
    assert fc.exact == 4 * head + 2 * rest
    assert fc.attention == CFG.attention_flops_per_token(T) // 3


def test_frozen_embedding_and_head():
    fc = count_flops(CFG, {"embed_tokens.weight", "lm_head.weight"}, {}, T)
    head, d = part(CFG, "head"), CFG.d_model
    body = CFG.params_layers + d  # layers + final norm, all trainable
    assert fc.six_nd == 6 * body + 2 * head
    # layer 0's input norm is first (no input grad); the frozen head passes gradients back: 4·N
    assert fc.exact == 6 * body - 2 * d + 4 * head
    assert fc.attention == CFG.attention_flops_per_token(T)


def test_frozen_lower_vs_frozen_upper_layers():
    emb, head, d, P = "embed_tokens.weight", part(CFG, "head"), CFG.d_model, CFG.params_per_layer
    lower = count_flops(CFG, {emb} | layer(0), {}, T)
    upper = count_flops(CFG, {emb} | layer(2), {}, T)
    assert lower.six_nd == upper.six_nd  # the 6·N·D formula cannot tell them apart
    # frozen bottom layer: forward only; layer 1's input norm is the first trainable thing
    assert lower.exact == 2 * P + (6 * P - 2 * d) + 6 * P + 6 * d + 6 * head
    # frozen top layer sits above trainable ones: it still computes input gradients (4·N)
    assert upper.exact == (6 * P - 2 * d) + 6 * P + 4 * P + 6 * d + 6 * head
    assert upper.exact > lower.exact
    per_layer_attn = CFG.attention_flops_per_token(T) // CFG.n_layers
    assert lower.attention == per_layer_attn // 3 + 2 * per_layer_attn
    assert upper.attention == 3 * per_layer_attn


def test_adapters_on_frozen_bottom_layer():
    """STEP-like: embedding and layer 0 frozen, LoRA (rank r) on layer 0's q and down."""
    r, d, f = 2, CFG.d_model, CFG.hidden_dim
    adapters = {"layers.0.self_attn.q_proj": r * (d + d), "layers.0.mlp.down_proj.weight": r * (f + d)}
    frozen = {"embed_tokens.weight"} | layer(0)
    fc = count_flops(CFG, frozen, adapters, T)
    plain = count_flops(CFG, frozen, {}, T)
    n_adapter = sum(adapters.values())
    assert fc.six_nd == plain.six_nd + 6 * n_adapter
    # q's adapter is the first trainable thing: forward 2P, weight grads 2P, B-side grad 2·r·out;
    # no input gradient. Downstream of it, layer 0's frozen o..down now pass gradients (+2·N),
    # and so does layer 1's input norm, which was the first trainable weight before.
    q_adapter = 4 * r * 2 * d + 2 * r * d
    down_adapter = 6 * r * (f + d)
    after_q = CFG.params_per_layer - d - 3 * d * d  # o, post norm, gate, up, down
    assert fc.exact == plain.exact + q_adapter + down_adapter + 2 * after_q + 2 * d
    assert fc.attention > plain.attention  # the q adapter needs dQ (and dP)


def test_adapter_total_as_int_matches_placement():
    frozen = {"embed_tokens.weight"} | layer(0)
    # an int is placed at the earliest frozen linear (layer 0's q/k/v slot)
    by_name = count_flops(CFG, frozen, {"layers.0.self_attn.q_proj": 4 * 64}, T)
    total = count_flops(CFG, frozen, 4 * 64, T)
    assert (by_name.exact, by_name.six_nd, by_name.attention) == (total.exact, total.six_nd, total.attention)


def test_adapted_linear_counts_as_frozen():
    """LoRA on a trainable linear (on = "all") freezes its weight, as growlm.adapters does."""
    a = count_flops(CFG, set(), {"lm_head": 2 * (96 + 32)}, T)
    b = count_flops(CFG, {"lm_head.weight"}, {"lm_head": 2 * (96 + 32)}, T)
    assert a == b


def test_bad_inputs():
    with pytest.raises(GrowlmError, match="layers.7.self_attn.q_proj.weight"):
        count_flops(CFG, {"layers.7.self_attn.q_proj.weight"}, {}, T)
    with pytest.raises(GrowlmError, match="no such linear"):
        count_flops(CFG, set(), {"layers.0.self_attn.x_proj": 10}, T)
    with pytest.raises(GrowlmError, match="sequence length"):
        count_flops(CFG, set(), {}, 0)
    with pytest.raises(GrowlmError, match="≥ 0"):
        count_flops(CFG, set(), -5, T)


# ---------------------------------------------------------------- against torch's counter

class _LoRA(nn.Module):
    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, base.in_features) * 0.1)
        self.B = nn.Parameter(torch.randn(base.out_features, rank) * 0.1)

    def forward(self, x):
        return self.base(x) + nn.functional.linear(nn.functional.linear(x, self.A), self.B)


def _measured(cfg: ModelConfig, frozen: set[str], lora: dict[str, int]) -> float:
    model = Transformer(cfg)
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    for name, rank in lora.items():
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, _LoRA(getattr(owner, child), rank))
    tokens = torch.randint(0, cfg.vocab_size, (2, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens).float().mean().backward()
    return counter.get_total_flops() / tokens.numel()


def _norm_flops(cfg, frozen, adapters) -> int:
    """Norm weights are charged like matrices in count_flops; torch counts no FLOPs for them."""
    st = Trainability(cfg, frozen, adapters)
    return sum(2 * w.params * (1 + st.grad_reaches(w.slot) + st.trainable(w))
               for w in st.weights if w.kind == "norm")


@pytest.mark.parametrize("frozen, lora", [
    (set(), {}),
    ({"embed_tokens.weight", "lm_head.weight"}, {}),
    ({"embed_tokens.weight"} | layer(0), {}),
    ({"embed_tokens.weight"} | layer(2), {}),
    (set(NAMES) - {"lm_head.weight"}, {}),
    (set(NAMES) - {"layers.1.self_attn.v_proj.weight"}, {}),
    (set(NAMES) - {"layers.1.self_attn.q_proj.weight"}, {}),
    (set(NAMES) - {"layers.0.self_attn.o_proj.weight"}, {}),
    ({"embed_tokens.weight"} | layer(0) | layer(1),
     {f"layers.{i}.{m}": 2 for i in (0, 1) for m in
      ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}),
    ({"embed_tokens.weight"} | layer(0), {"layers.0.self_attn.v_proj": 3}),
])
def test_exact_count_matches_torch_flop_counter(frozen, lora):
    adapters = {}
    for name, rank in lora.items():
        out_dim, in_dim = Trainability(CFG, set()).by_module[name].shape
        adapters[name] = rank * (in_dim + out_dim)
    fc = count_flops(CFG, frozen, adapters, T)
    assert fc.exact_total - _norm_flops(CFG, frozen, adapters) == _measured(CFG, frozen, lora)
