"""Memory of one training stage: parameter counts, model state, activations.

**Model state** (mixed precision with Adam, as both STEP and the reuse paper count it):
a trainable parameter costs 16 bytes — bf16 weight (2) and gradient (2), fp32 master copy (4)
and two fp32 Adam moments (8) — a frozen one only its bf16 weight (2 bytes), and an adapter
parameter is trainable (16 bytes): ``16·P_trainable + 2·P_frozen + 16·P_adapter``.

**GaLore** (Zhao et al. 2024) keeps Adam's moments on a rank-r projection of each projected
m×n gradient: such a weight costs its bf16 weight and gradient and fp32 master copy
(8·m·n), two fp32 moments of r·max(m, n) values and the fp32 projector of r·min(m, n)
values, ``8·m·n + 8·r·max(m, n) + 4·r·min(m, n)`` bytes instead of 16·m·n. The weights it
does not project (embedding, head, norms) cost the usual 16 bytes.

**Activations** per micro-batch of B sequences of T tokens, in the spirit of Korthikanti et
al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", whose GPT layer
keeps ``T·B·d·(34 + 5·heads·T/d)`` bytes), redone for this model: RMSNorm, SwiGLU, no dropout,
and a fused (flash / memory-efficient) attention kernel that keeps no T×T matrix. With
``u = bytes_per_activation·T·B`` a layer keeps:

=====================================  ==============  =====================================
tensor                                 size            kept when
=====================================  ==============  =====================================
input of input_layernorm               u·d             norm trainable or gradient reaches it
its output (input of q, k, v)          u·d             q, k or v trainable / adapted
inputs of the q/k norms (Qwen3)        u·(q + kv)      a gradient must reach q / k
Q, K, V after RoPE                     u·(q + 2·kv)    the attention core needs a backward
attention output (input of o_proj)     u·q             core backward (the kernel needs it) or
                                                       o_proj trainable / adapted
softmax log-sum-exp (fp32)             4·heads·T·B     core backward
input of post_attention_layernorm      u·d             as for the first norm
its output (input of gate, up)         u·d             gate or up trainable / adapted
gate, up outputs and SiLU(gate)        3·u·f           a gradient must reach gate/up
product (input of down_proj)           u·f             down trainable / adapted
adapter bottleneck (A·x)               u·r             per adapted linear
=====================================  ==============  =====================================

Here q = n_heads·head_dim and kv = kv_heads·head_dim (q = d unless head_dim is set apart).
For a trainable layer this is ``u·(16·d + 8·f)`` (MHA, no q/k norms), i.e. ≈ ``T·B·d·37`` bytes in bf16 with
f = 8d/3 — the analogue of Korthikanti's 34. With ``fused_attention=False`` (eager softmax) the
probabilities add ``bytes·heads·T²·B`` per layer (Korthikanti's 5·a·s/h term without the
dropout mask and output). After the layers: the final norm's input (u·d), its output when the
head trains (u·d), and the loss: fp32 log-probabilities plus their gradient at the start of the
backward, ``8·T·B·V`` bytes. Frozen layers that no gradient reaches keep nothing.

**Activation checkpointing** (each block recomputed in the backward): every layer the backward
passes through keeps only its input (u·d), and one layer's full set is alive at a time while
it is recomputed: ``Σ u·d + max_layer(full) + head and loss``.

Workspace, fragmentation and temporary buffers are not modelled; measured peaks run higher.
"""

from __future__ import annotations

import fnmatch

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.plan.layout import GATE_UP_SLOT, POST_NORM_SLOT, Trainability, layer_base

BYTES_TRAINABLE = 16
BYTES_FROZEN = 2
BYTES_ADAPTER = 16
LOSS_BYTES_PER_LOGIT = 8  # fp32 log-probs kept for the backward + their gradient


def model_state_bytes(trainable: int, frozen: int, adapter: int = 0) -> int:
    """Bytes of weights, gradients and Adam state (see the module docstring)."""
    for what, n in (("trainable", trainable), ("frozen", frozen), ("adapter", adapter)):
        if n < 0:
            raise GrowlmError(f"{what} parameter count must be ≥ 0, got {n}")
    return BYTES_TRAINABLE * trainable + BYTES_FROZEN * frozen + BYTES_ADAPTER * adapter


def galore_matrix_bytes(shape: tuple[int, int], rank: int) -> int:
    """Model state of one GaLore-projected m×n weight (see the module docstring)."""
    m, n = shape
    r = min(rank, m, n)  # the SVD of an m×n gradient has min(m, n) directions
    return 8 * m * n + 8 * r * max(m, n) + 4 * r * min(m, n)


def galore_saving_bytes(shapes, rank: int) -> int:
    """Bytes GaLore saves against AdamW's 16 per parameter on the projected `shapes`."""
    return sum(BYTES_TRAINABLE * m * n - galore_matrix_bytes((m, n), rank) for m, n in shapes)


def galore_groups_saving(param_groups) -> int:
    """`galore_saving_bytes` over a live GaLore optimizer's groups (those with a `rank`)."""
    return sum(galore_saving_bytes([tuple(p.shape) for p in g["params"] if p.dim() == 2], g["rank"])
               for g in param_groups if g.get("rank") is not None)


def galore_shapes(cfg: ModelConfig, frozen: set[str]) -> list[tuple[int, int]]:
    """Shapes of the trainable weights growlm's GaLore projects: the 2-D ones outside the
    embedding and head (`growlm.optim.galore.DEFAULT_REGULAR`), each parameter once."""
    from growlm.optim.galore import DEFAULT_REGULAR

    state = Trainability(cfg, frozen)
    seen: set[str] = set()
    out = []
    for w in state.weights:
        if w.param in seen or len(w.shape) != 2 or not state.trainable(w):
            continue
        seen.add(w.param)
        if not any(fnmatch.fnmatchcase(w.param, g) for g in DEFAULT_REGULAR):
            out.append(w.shape)
    return out


# ---------------------------------------------------------------- parameters

def adapter_params_by_linear(cfg: ModelConfig, spec, frozen: set[str]) -> dict[str, int]:
    """Adapter parameters per targeted linear: rank·(in + out) for each linear whose module name
    (e.g. ``layers.3.self_attn.q_proj``) matches one of ``spec.targets`` (globs); with
    ``spec.on == "frozen"`` only linears whose weight is frozen. `spec` is an AdapterSpec."""
    if spec is None:
        return {}
    state = Trainability(cfg, frozen)
    out: dict[str, int] = {}
    for module, w in state.by_module.items():
        if not any(fnmatch.fnmatchcase(module, pattern) for pattern in spec.targets):
            continue
        if spec.on == "frozen" and state.trainable(w):
            continue
        out[module] = spec.rank * sum(w.shape)
    return out


def adapter_params(cfg: ModelConfig, adapter_spec, frozen: set[str]) -> int:
    """Total adapter parameters of a stage (see `adapter_params_by_linear`)."""
    return sum(adapter_params_by_linear(cfg, adapter_spec, frozen).values())


def param_counts(cfg: ModelConfig, frozen: set[str], adapters: dict[str, int] | int = 0) -> dict:
    """Parameters by part (embedding, head, layers, norm, adapters) and trainable / frozen.

    A tied head adds no parameters (``head`` is 0) and trains or freezes with the embedding."""
    state = Trainability(cfg, frozen, adapters)
    parts = {"embedding": 0, "head": 0, "layers": 0, "norm": 0}
    trainable = frozen_n = 0
    seen: set[str] = set()
    for w in state.weights:
        if w.param in seen:
            continue
        seen.add(w.param)
        part = ("embedding" if w.kind == "embedding" else "head" if w.name == "lm_head.weight"
                else "norm" if w.layer is None else "layers")
        parts[part] += w.params
        if state.trainable(w):
            trainable += w.params
        else:
            frozen_n += w.params
    adapter = sum(state.adapter_params.values())
    return {**parts, "adapter": adapter, "trainable": trainable, "frozen": frozen_n,
            "total": trainable + frozen_n + adapter}


def tensor_bytes(tensors) -> int:
    """Bytes held by the given tensors (non-tensors are skipped): what model-state memory
    measures on live weights, gradients and optimizer state."""
    import torch

    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


# ---------------------------------------------------------------- activations

def _layer_activations(state: Trainability, i: int, u: int, lse: int, probs: int) -> int:
    """Bytes layer i keeps for its backward (table in the module docstring); u = bytes·T·B."""
    cfg = state.cfg
    d, f = cfg.d_model, cfg.hidden_dim
    base = layer_base(i)
    up = state.grad_reaches
    p = f"layers.{i}."
    w = {n.removeprefix(p): x for n, x in state.by_name.items() if x.layer == i}
    act = state.active
    needs = {x: state.projection_needs_grad(i, x) for x in "qkv"}
    core = any(needs.values())
    total = 0
    if state.trainable(w["input_layernorm.weight"]) or up(base):
        total += u * d
    if any(act(w[f"self_attn.{x}_proj.weight"]) for x in "qkv"):
        total += u * d
    if core:
        total += u * (cfg.q_dim + 2 * cfg.kv_dim) + lse + probs
    if cfg.qk_norm:  # the norms keep their inputs (q_proj and k_proj outputs)
        total += u * (cfg.q_dim * needs["q"] + cfg.kv_dim * needs["k"])
    if core or act(w["self_attn.o_proj.weight"]):
        total += u * cfg.q_dim
    if cfg.block == "full":
        gate, up_proj = w["mlp.gate_proj.weight"], w["mlp.up_proj.weight"]
        if state.trainable(w["post_attention_layernorm.weight"]) or up(base + POST_NORM_SLOT):
            total += u * d
        if act(gate) or act(up_proj):
            total += u * d
        if up(base + GATE_UP_SLOT) or act(gate) or act(up_proj):
            total += 3 * u * f
        if act(w["mlp.down_proj.weight"]):
            total += u * f
    total += sum(u * state.adapter_rank(x) for x in w.values() if state.adapted(x))
    return total


def _after_layers(state: Trainability, u: int, batch: int, seq_len: int) -> int:
    cfg = state.cfg
    norm, head = (x for x in state.weights if x.name in ("norm.weight", "lm_head.weight"))
    total = 0
    if state.trainable(norm) or state.grad_reaches(norm.slot):
        total += u * cfg.d_model
    if state.active(head):
        total += u * cfg.d_model
    if state.first_active_slot <= head.slot:  # any backward at all starts at the loss
        total += LOSS_BYTES_PER_LOGIT * batch * seq_len * cfg.vocab_size
    return total


def activation_bytes(cfg: ModelConfig, batch: int, seq_len: int, frozen: set[str],
                     adapters: dict[str, int] | int = 0, *, checkpointing: bool = False,
                     fused_attention: bool = True, bytes_per_activation: int = 2) -> int:
    """Estimated activation bytes for one micro-batch of `batch` × `seq_len` tokens."""
    if batch <= 0 or seq_len <= 0:
        raise GrowlmError(f"micro-batch size and sequence length must be positive, got {batch}, {seq_len}")
    state = Trainability(cfg, frozen, adapters)
    u = bytes_per_activation * batch * seq_len
    lse = 4 * cfg.n_heads * batch * seq_len
    probs = 0 if fused_attention else bytes_per_activation * cfg.n_heads * seq_len * seq_len * batch
    layers = [_layer_activations(state, i, u, lse, probs) for i in range(cfg.n_layers)]
    tail = _after_layers(state, u, batch, seq_len)
    if not checkpointing:
        return sum(layers) + tail
    kept_inputs = sum(u * cfg.d_model for n in layers if n > 0)
    return kept_inputs + max(layers, default=0) + tail
