"""The network as an ordered list of weights, and which of them train in a stage.

FLOP and memory accounting both need to know, for every weight, where it sits in the forward
pass and whether anything trainable lies before it. The order is the network's data flow:

    embedding < layer 0 < layer 1 < ... < final norm < head

and inside a layer (pre-norm block):

    input_layernorm < {q, k, v}_proj < {q, k}_norm < attention core < o_proj
        < post_attention_layernorm < {gate, up}_proj < down_proj

Weights that read the same input (q/k/v, gate/up) share a slot: none of them is upstream of
another. A bias shares its linear's slot. The per-head q/k norms (Qwen3) have a slot of their
own after q/k/v; the attention core (QKᵀ and AV) sits between them and o_proj. (The norms'
slot also follows v_proj, which is not upstream of them: a trainable v_proj with nothing
trainable before it charges the q/k norms an input gradient they do not need, 4·head_dim
FLOPs per token and layer.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig

SLOTS_PER_LAYER = 7  # input norm, qkv, q/k norms, o, post norm, gate/up, down
QKV_SLOT, QK_NORM_SLOT, O_SLOT, POST_NORM_SLOT, GATE_UP_SLOT, DOWN_SLOT = 1, 2, 3, 4, 5, 6
_ATTN = {"q_proj": QKV_SLOT, "k_proj": QKV_SLOT, "v_proj": QKV_SLOT, "o_proj": O_SLOT}
_MLP = {"gate_proj": GATE_UP_SLOT, "up_proj": GATE_UP_SLOT, "down_proj": DOWN_SLOT}


@dataclass(frozen=True)
class Weight:
    name: str  # module path + ".weight" / ".bias" (a tied model's head is "lm_head.weight")
    param: str  # the parameter that holds it (differs from `name` only for a tied head)
    kind: str  # "embedding" | "linear" | "bias" | "norm"
    slot: int  # position in the forward pass; weights reading the same input share a slot
    shape: tuple[int, ...]  # (out, in) for linears, (dim,) for norms and biases, (vocab, d) embedding
    layer: int | None = None

    @property
    def params(self) -> int:
        return math.prod(self.shape)

    @property
    def module(self) -> str:
        return self.name.rsplit(".", 1)[0]


def layer_base(i: int) -> int:
    """Slot of layer i's input norm (the embedding is slot 0)."""
    return 1 + SLOTS_PER_LAYER * i


def network_weights(cfg: ModelConfig) -> list[Weight]:
    """Every weight in `Transformer.state_dict()` order, each with its forward-order slot; a
    tied head appears twice (as lookup and as matmul)."""
    d, f = cfg.d_model, cfg.hidden_dim
    q_out, kv_out = cfg.q_dim, cfg.kv_dim
    out = [Weight("embed_tokens.weight", "embed_tokens.weight", "embedding", 0, (cfg.vocab_size, d))]
    shapes = {"q_proj": (q_out, d), "k_proj": (kv_out, d), "v_proj": (kv_out, d),
              "o_proj": (d, q_out), "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f)}
    biased = {"q_proj": cfg.qkv_bias, "k_proj": cfg.qkv_bias, "v_proj": cfg.qkv_bias,
              "o_proj": cfg.o_bias}

    def add(name: str, kind: str, slot: int, shape: tuple[int, ...], layer: int) -> None:
        out.append(Weight(name, name, kind, slot, shape, layer))

    for i in range(cfg.n_layers):
        base = layer_base(i)
        p = f"layers.{i}."
        add(p + "input_layernorm.weight", "norm", base, (d,), i)
        for name, off in _ATTN.items():
            add(f"{p}self_attn.{name}.weight", "linear", base + off, shapes[name], i)
            if biased[name]:
                add(f"{p}self_attn.{name}.bias", "bias", base + off, shapes[name][:1], i)
        if cfg.qk_norm:
            for name in ("q_norm", "k_norm"):
                add(f"{p}self_attn.{name}.weight", "norm", base + QK_NORM_SLOT, (cfg.head_size,), i)
        if cfg.block == "full":
            add(p + "post_attention_layernorm.weight", "norm", base + POST_NORM_SLOT, (d,), i)
            for name, off in _MLP.items():
                add(f"{p}mlp.{name}.weight", "linear", base + off, shapes[name], i)
    end = layer_base(cfg.n_layers)
    out.append(Weight("norm.weight", "norm.weight", "norm", end, (d,)))
    head_param = "embed_tokens.weight" if cfg.tie_embeddings else "lm_head.weight"
    out.append(Weight("lm_head.weight", head_param, "linear", end + 1, (cfg.vocab_size, d)))
    return out


def meta_state(cfg: ModelConfig) -> dict:
    """A state dict of meta tensors (shapes only, no memory) in `Transformer.state_dict()`'s
    order; a tied head is the embedding tensor under a second name."""
    import torch

    state: dict = {}
    for w in network_weights(cfg):
        state[w.name] = state[w.param] if w.param in state else torch.empty(w.shape, device="meta")
    return state


def parameter_names(cfg: ModelConfig) -> list[str]:
    """Parameter names as the trainer lists them (`named_parameters(remove_duplicate=False)`):
    a tied head appears under both of its names."""
    return [w.name for w in network_weights(cfg)]


def linear_module_name(key: str) -> str:
    """Accept `x.q_proj`, `x.q_proj.weight` or `x.q_proj.lora_A` and return `x.q_proj`."""
    for suffix in (".weight", ".lora_A", ".lora_B", ".lora_A.weight", ".lora_B.weight"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


class Trainability:
    """Which weights train (or carry a trainable adapter) in one stage, and where grads flow.

    `frozen` holds parameter names; a tied embedding/head is frozen only when both of its names
    are (as in `growlm.freeze`). A linear that carries an adapter is frozen. `adapters` maps a linear's module name to its adapter parameter count; an int
    gives only the total, placed conservatively at the earliest frozen linear (the earliest
    linear if none is frozen), which is where adapters on frozen linears begin in practice.
    """

    def __init__(self, cfg: ModelConfig, frozen: set[str] | frozenset[str],
                 adapters: dict[str, int] | int | None = None):
        self.cfg = cfg
        self.weights = network_weights(cfg)
        known = {w.param for w in self.weights} | {w.name for w in self.weights}
        unknown = sorted(set(frozen) - known)
        if unknown:
            raise GrowlmError(
                f"frozen parameters not in a {cfg.n_layers}-layer model: {', '.join(unknown[:5])}"
                + (" ..." if len(unknown) > 5 else "")
            )
        frozen = set(frozen)
        tied = {"embed_tokens.weight", "lm_head.weight"}
        if cfg.tie_embeddings and not tied <= frozen:
            # as growlm.freeze does: a tied tensor freezes only when both of its uses do
            frozen -= tied
        self.frozen = frozen
        self.by_module = {w.module: w for w in self.weights if w.kind == "linear"}
        self.by_name = {w.name: w for w in self.weights}
        self.adapter_params = self._place_adapters(adapters)
        if isinstance(adapters, dict):
            # LoRA trains only A and B: growlm.adapters freezes every wrapped weight, also
            # with on="all" where the weight was trainable before.
            for module, n in self.adapter_params.items():
                if n:
                    self.frozen |= {self.by_module[module].name, self.by_module[module].param}
        slots = [w.slot for w in self.weights if self.trainable(w)]
        slots += [self.by_module[m].slot for m, n in self.adapter_params.items() if n > 0]
        self.first_active_slot = min(slots) if slots else math.inf

    def _place_adapters(self, adapters: dict[str, int] | int | None) -> dict[str, int]:
        if not adapters:
            return {}
        linears = self.by_module
        if isinstance(adapters, int):
            if adapters < 0:
                raise GrowlmError(f"adapter parameter count must be ≥ 0, got {adapters}")
            ordered = sorted(linears.values(), key=lambda w: w.slot)
            frozen = [w for w in ordered if not self.trainable(w)]
            return {(frozen or ordered)[0].module: adapters}
        placed: dict[str, int] = {}
        for key, count in adapters.items():
            module = linear_module_name(key)
            if module not in linears:
                raise GrowlmError(f"adapter on {key!r}: no such linear in the model")
            if count < 0:
                raise GrowlmError(f"adapter on {key!r}: parameter count must be ≥ 0, got {count}")
            placed[module] = placed.get(module, 0) + int(count)
        return placed

    def trainable(self, w: Weight) -> bool:
        return w.param not in self.frozen and w.name not in self.frozen

    def adapted(self, w: Weight) -> bool:
        return w.kind == "linear" and self.adapter_params.get(w.module, 0) > 0

    def active(self, w: Weight) -> bool:
        """Its own weight or its adapter needs a gradient."""
        return self.trainable(w) or self.adapted(w)

    def grad_reaches(self, slot: float) -> bool:
        """Something trainable lies strictly before `slot`, so the gradient must flow there."""
        return self.first_active_slot < slot

    def projection_needs_grad(self, layer: int, x: str) -> bool:
        """Whether the output of layer `layer`'s `x`_proj (x in "q", "k", "v"), after its bias
        and q/k norm, needs a gradient: something trainable lies before it, or the projection's
        weight, adapter, bias or norm trains."""
        if self.grad_reaches(layer_base(layer) + QKV_SLOT):
            return True
        p = f"layers.{layer}.self_attn."
        if self.active(self.by_module[f"{p}{x}_proj"]):
            return True
        own = [f"{p}{x}_proj.bias", f"{p}{x}_norm.weight"]
        return any(n in self.by_name and self.trainable(self.by_name[n]) for n in own)

    def adapter_rank(self, w: Weight) -> int:
        """Rank implied by an adapter's size on this linear (r·(in+out) parameters)."""
        return math.ceil(self.adapter_params.get(w.module, 0) / sum(w.shape))
