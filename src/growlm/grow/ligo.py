"""G_learn: learned linear growth maps (LiGO, Wang et al., ICLR 2023, "Learning to Grow
Pretrained Models for Efficient Transformer Training"; Gstack, Du et al. 2024, re-implements it
as its G_learn operator). Pure functions: maps in, weights out.

Every weight of the large model is a linear function of the small model's weights, through a
few small learned matrices ("maps"):

depth (`op = "learn"`). For each role (each tensor of a layer: input norm, q, k, v, o, q/k
  biases and norms, post norm, gate, up, down) an L_new × L_old matrix M mixes the old layers:
  new layer i = Σ_j M[i, j] · old layer j. M starts as stacked identities, M[i, i mod L_old] = 1,
  so the model starts exactly as Gstack's stack. Embedding, final norm and head are copied.

width (`op = "width_learn"`). One expansion matrix per role: the residual stream B_d (D × d;
  embedding, norms, o_proj and down_proj outputs, every reader of the stream), the FFN hidden
  units B_f (F × f), and the attention heads B_q, B_k, B_v. A widened weight is
  B_out · W · B_inᵀ; a vector (norm weight, bias) is B · w. The head maps act on whole heads
  (H × h for queries, H_kv × h_kv for keys and values, each entry scaling a head_dim block),
  so a new head is a combination of old heads: RoPE rotates every head alike and so commutes
  with them, and under grouped-query attention K and V are mapped per key/value head. LiGO's
  code maps the q/k/v rows dimension by dimension, which mixes RoPE's frequency pairs; a
  head-level map keeps them apart. o_proj reads the attention output, which is laid out by
  query head, so its columns use B_q (LiGO's multi-head code uses B_v, which has the same
  shape there). The per-head q/k norms act inside a head (head_dim is kept) and are copied.
  Each map starts as the identity on the units that continue old ones — placed where the
  width operators place them (growlm.grow.width.inplace_sources: old units first, heads
  group by group) — and random rows N(0, 1/rows) for new units, as LiGO's code draws them.
  The old block of every weight therefore starts as a plain copy.

Maps are applied right factor first, W·B_inᵀ then B_out·(…), and every product is a matmul
whose FLOPs `apply_maps` can tally (2·m·n·k forward; the same again for each operand that
needs a gradient), so the cost the trainer counts is the cost of this code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from growlm.grow.common import EMBED, FINAL_NORM, HEAD, expected_shapes, layer_name, layer_suffixes
from growlm.grow.provenance import Provenance, copied, derived
from growlm.model.config import ModelConfig

WIDTH_MAPS = ("d", "f", "q", "k", "v")
# (row map, column map) of each tensor under width_learn; None = that side is unchanged
_ROLES = {
    EMBED: (None, "d"),
    HEAD: (None, "d"),
    FINAL_NORM: ("d", None),
    "input_layernorm.weight": ("d", None),
    "post_attention_layernorm.weight": ("d", None),
    "self_attn.q_proj.weight": ("q", "d"),
    "self_attn.k_proj.weight": ("k", "d"),
    "self_attn.v_proj.weight": ("v", "d"),
    "self_attn.o_proj.weight": ("d", "q"),
    "mlp.gate_proj.weight": ("f", "d"),
    "mlp.up_proj.weight": ("f", "d"),
    "mlp.down_proj.weight": ("d", "f"),
    "self_attn.q_proj.bias": ("q", None),
    "self_attn.k_proj.bias": ("k", None),
    "self_attn.v_proj.bias": ("v", None),
    "self_attn.o_proj.bias": ("d", None),
    "self_attn.q_norm.weight": (None, None),
    "self_attn.k_norm.weight": (None, None),
}


@dataclass
class FlopTally:
    """FLOPs of the matmuls that build the weights: `forward`, and `backward` (the gradients
    of the operands that need one)."""

    forward: int = 0
    backward: int = 0


def _mm(a: Tensor, b: Tensor, tally: FlopTally | None) -> Tensor:
    if tally is not None:
        flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
        tally.forward += flops
        tally.backward += flops * (int(a.requires_grad) + int(b.requires_grad))
    return a @ b


def is_depth(spec) -> bool:
    return spec.op == "learn"


def _role(name: str) -> str:
    return name.split(".", 2)[2] if name.startswith("layers.") else name


# ---------------------------------------------------------------- maps

def map_shapes(old: ModelConfig, new: ModelConfig, spec) -> dict[str, tuple[int, int]]:
    """Name → (rows, columns) of every map of the growth (see the module docstring)."""
    if is_depth(spec):
        return {f"depth:{s}": (new.n_layers, old.n_layers) for s in layer_suffixes(new)}
    return {"width:d": (new.d_model, old.d_model), "width:f": (new.hidden_dim, old.hidden_dim),
            "width:q": (new.n_heads, old.n_heads), "width:k": (new.kv_heads, old.kv_heads),
            "width:v": (new.kv_heads, old.kv_heads)}


def _width_sources(old: ModelConfig, new: ModelConfig) -> dict[str, Tensor]:
    from growlm.grow.width import inplace_sources

    src = inplace_sources(old, new)
    return {"width:d": src["d"], "width:f": src["f"], "width:q": src["q_heads"],
            "width:k": src["kv_heads"], "width:v": src["kv_heads"]}


def init_maps(old: ModelConfig, new: ModelConfig, spec, *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The maps at initialisation (module docstring), fp32. On the meta device nothing is
    allocated. Random rows are drawn on the CPU from `generator` (the global RNG without one)."""
    shapes = map_shapes(old, new, spec)
    if torch.device(device).type == "meta":
        return {k: torch.empty(shape, device="meta", dtype=dtype) for k, shape in shapes.items()}
    out = {}
    if is_depth(spec):
        for name, (rows, cols) in shapes.items():
            m = torch.zeros(rows, cols, dtype=dtype)
            m[torch.arange(rows), torch.arange(rows) % cols] = 1.0
            out[name] = m
    else:
        for name, src in _width_sources(old, new).items():
            rows, cols = shapes[name]
            m = torch.randn(rows, cols, generator=generator, dtype=torch.float64) * (1.0 / rows) ** 0.5
            kept = src >= 0
            m[kept] = 0.0
            m[torch.nonzero(kept).squeeze(1), src[kept]] = 1.0
            out[name] = m.to(dtype)
    return {k: v.to(device) for k, v in out.items()}


def generated_names(new: ModelConfig, spec) -> set[str]:
    """Tensors of the large model computed from maps; the others are copies of old tensors."""
    names = expected_shapes(new)
    if is_depth(spec):
        return {n for n in names if n.startswith("layers.")}
    return {n for n in names if _ROLES[_role(n)] != (None, None)}


# ---------------------------------------------------------------- applying them

def stack_layers(state: dict[str, Tensor], old: ModelConfig, new: ModelConfig) -> dict[str, Tensor]:
    """Depth: each role's old tensors stacked and flattened, (L_old, numel); the depth maps
    multiply these. Computed once per learning phase, not per step."""
    return {s: torch.stack([state[layer_name(j, s)].reshape(-1) for j in range(old.n_layers)])
            for s in layer_suffixes(new)}


def _left(w: Tensor, b: Tensor, tally: FlopTally | None) -> Tensor:
    """b · w along w's first dimension, in blocks of w.shape[0] / b.shape[1] rows."""
    rest = w.shape[1:]
    block = w.shape[0] // b.shape[1]
    out = _mm(b, w.reshape(b.shape[1], -1), tally)
    return out.reshape(b.shape[0] * block, *rest)


def _right(w: Tensor, b: Tensor, tally: FlopTally | None) -> Tensor:
    """w · bᵀ along w's columns, in blocks of w.shape[1] / b.shape[1] columns."""
    rows = w.shape[0]
    n_old, n_new = b.shape[1], b.shape[0]
    block = w.shape[1] // n_old
    if block == 1:
        return _mm(w, b.t(), tally)
    cols = w.reshape(rows, n_old, block).transpose(1, 2).reshape(rows * block, n_old)
    out = _mm(cols, b.t(), tally)
    return out.reshape(rows, block, n_new).transpose(1, 2).reshape(rows, n_new * block)


def _widen(w: Tensor, roles: tuple[str | None, str | None], maps: dict[str, Tensor],
           tally: FlopTally | None) -> Tensor:
    row, col = roles
    if col is not None:
        w = _right(w, maps[f"width:{col}"], tally)
    if row is not None:
        w = _left(w, maps[f"width:{row}"], tally)
    return w


def apply_maps(maps: dict[str, Tensor], state: dict[str, Tensor], old: ModelConfig, new: ModelConfig,
               spec, *, stacked: dict[str, Tensor] | None = None,
               tally: FlopTally | None = None) -> dict[str, Tensor]:
    """The large model's state from the small one's (`state`, shape `old`) through `maps`.

    Copied tensors are the input tensors themselves (no copy); generated ones carry the maps'
    autograd graph when the maps require gradients. `stacked` (from `stack_layers`) saves the
    stacking in depth. With tied embeddings both names hold one tensor. `tally`, when given,
    adds the FLOPs of the matmuls."""
    out: dict[str, Tensor] = {}
    if is_depth(spec):
        stacked = stacked if stacked is not None else stack_layers(state, old, new)
        for name in (EMBED, FINAL_NORM, HEAD):
            out[name] = state[name]
        shapes = expected_shapes(new)
        for suffix in layer_suffixes(new):
            mixed = _mm(maps[f"depth:{suffix}"], stacked[suffix], tally)
            for i in range(new.n_layers):
                name = layer_name(i, suffix)
                out[name] = mixed[i].reshape(shapes[name])
    else:
        for name in expected_shapes(new):
            if new.tie_embeddings and name == HEAD:
                continue
            out[name] = _widen(state[name], _ROLES[_role(name)], maps, tally)
    if new.tie_embeddings:
        out[HEAD] = out[EMBED]
    return {k: out[k] for k in expected_shapes(new)}


def map_flops(old: ModelConfig, new: ModelConfig, spec) -> FlopTally:
    """FLOPs of one application of the maps with gradients (counted on the meta device)."""
    maps = {k: v.requires_grad_() for k, v in init_maps(old, new, spec, device="meta").items()}
    with torch.device("meta"):
        from growlm.model.llama import Transformer

        state = Transformer(old).state_dict()
    tally = FlopTally()
    stacked = stack_layers(state, old, new) if is_depth(spec) else None
    apply_maps(maps, state, old, new, spec, stacked=stacked, tally=tally)
    return tally


# ---------------------------------------------------------------- the growth op

def grow_learn(state: dict[str, Tensor], old: ModelConfig, new: ModelConfig, spec,
               maps: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Provenance]]:
    """The large state the maps give at their initialisation (a plain copy of the old weights
    in depth, as Gstack stacks; a copy of each old block plus random rows in width), with its
    provenance: generated tensors are "derived" from the old tensors of their role; in depth
    the first copy of each old layer continues it (inherited), as with stack."""
    ref = state[EMBED]
    with torch.no_grad():
        values = apply_maps({k: v.to(device=ref.device, dtype=torch.float32) for k, v in maps.items()},
                            {k: v.float() if ref.device.type != "meta" else v for k, v in state.items()},
                            old, new, spec)
    out = {k: v.to(ref.dtype).clone() for k, v in values.items()}
    generated = generated_names(new, spec)
    prov: dict[str, Provenance] = {}
    for name in out:
        if name not in generated:
            prov[name] = copied(name)
        elif is_depth(spec):
            i, suffix = int(name.split(".")[1]), name.split(".", 2)[2]
            prov[name] = derived([layer_name(j, suffix) for j in range(old.n_layers)],
                                 inherited=i < old.n_layers)
        else:
            prov[name] = derived([name], inherited=True)
    if new.tie_embeddings:
        out[HEAD] = out[EMBED]
    return out, prov
