"""Width growth: larger d_model, FFN width and head count; same depth, same head_dim.

Biases go with their units (a q/k/v bias entry with its head dim, an o_proj bias entry with
its residual dim, scaled like that dim's writers); the per-head q/k norm weights act inside a
head and are copied unchanged, since head_dim is kept.

Every weight is indexed along "axes": the residual stream (d_model), the FFN hidden units,
the query-head dims and the key/value-head dims. head_dim is kept, because RoPE rotates
within a head: more width means more heads. With grouped-query attention the new layout is
built group by group (group m holds its key/value head and the query heads that read it),
so each query head still reads the key/value head it read before.

clone / split (function-preserving). New unit j copies old unit j mod n (round-robin), on
every axis; a unit copied c times has c copies in the new model.
  - A linear layer's rows (its output units) are copied; its columns (input units) are copied
    and divided by c, so the copies' contributions add up to the old one (Net2Net, Chen et
    al. 2016; bert2BERT's function-preserving init, Chen et al. 2022).
  - The residual stream needs care because RMSNorm looks at the whole vector. A residual unit
    copied c times carries α·h with α = sqrt(d'/(d·c)): then mean(h'²) = mean(h²) exactly, so
    RMSNorm (eps included) returns α·(normalised h) times the copied norm weight. Writers to
    the stream (embedding columns, o_proj and down_proj rows) are scaled by α, readers (q, k,
    v, gate, up and head columns) by 1/(c·α).
  - When every unit has the same count (integer factors) α = 1: this is HyperCloning's
    symmetric expansion (Samragh et al. 2024): weights W.repeat(a, b)/b, norm weights tiled,
    heads duplicated. `clone` demands integer factors on every axis; `split` takes any larger
    size. With tied embeddings the head cannot take its own 1/(c·α), so the final norm weight
    is scaled by d/d' instead.
  Caveat: with symmetric copies and a deterministic optimizer the copies receive identical
  updates and stay identical; only the non-uniform part of `split` (and noise from dropout or
  low precision) breaks the symmetry. HyperCloning's noisy variants are not implemented.

zero (Gstack's G_zero, Du et al. 2024; Gesmundo & Maile 2023). Old units keep their values;
new units' outgoing weights are zero (down_proj columns of new FFN units, o_proj columns of
new heads) and their incoming weights come from the fresh initialisation, so they receive
gradients. New residual dims start at zero (embedding columns, o_proj/down_proj rows), read by
fresh columns. Zero dims dilute RMSNorm's mean square by d/d', so the old norm weights are
scaled by sqrt(d/d'): the function is preserved up to the norm's eps (exactly when d_model is
unchanged, or with eps → 0).

width_random (Gstack's G_random). Old values are kept in place; every entry that touches a
new unit comes from the fresh initialisation. Not function-preserving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from growlm.grow.common import EMBED, FINAL_NORM, HEAD, expected_shapes
from growlm.grow.provenance import Provenance, copied, derived
from growlm.model.config import ModelConfig

# (axis, role) of a tensor's rows and columns. "write": adds into the residual stream;
# "read": consumes an axis as input; "in": a unit's own incoming weights; "norm": a norm weight.
_LAYOUT = {
    EMBED: (None, ("d", "write")),
    HEAD: (None, ("d", "read")),
    FINAL_NORM: (("d", "norm"), None),
    "input_layernorm.weight": (("d", "norm"), None),
    "post_attention_layernorm.weight": (("d", "norm"), None),
    "self_attn.q_proj.weight": (("q", "in"), ("d", "read")),
    "self_attn.k_proj.weight": (("kv", "in"), ("d", "read")),
    "self_attn.v_proj.weight": (("kv", "in"), ("d", "read")),
    "self_attn.o_proj.weight": (("d", "write"), ("q", "read")),
    "mlp.gate_proj.weight": (("f", "in"), ("d", "read")),
    "mlp.up_proj.weight": (("f", "in"), ("d", "read")),
    "mlp.down_proj.weight": (("d", "write"), ("f", "read")),
    # A bias is its unit's own constant input: it follows the unit like the weight's row does.
    "self_attn.q_proj.bias": (("q", "in"), None),
    "self_attn.k_proj.bias": (("kv", "in"), None),
    "self_attn.v_proj.bias": (("kv", "in"), None),
    "self_attn.o_proj.bias": (("d", "write"), None),
    # Per-head q/k norms act within a head, and width growth keeps head_dim: they are copied.
    "self_attn.q_norm.weight": (None, None),
    "self_attn.k_norm.weight": (None, None),
}


@dataclass
class _Side:
    """How one dimension of a tensor is rebuilt."""

    src: Tensor  # (n_new,) old unit taken by each new unit; -1 = a new unit
    scale: Tensor | None  # (n_new,) float64 multiplier, None = all ones
    zero_new: bool  # zero mode: entries on new units start at zero

    @property
    def is_identity(self) -> bool:
        n = self.src.numel()
        return self.scale is None and bool(torch.equal(self.src, torch.arange(n)))


def _units(n_old: int, n_new: int, copy: bool) -> Tensor:
    idx = torch.arange(n_new)
    return idx % n_old if copy else torch.where(idx < n_old, idx, -1)


def _head_maps(old: ModelConfig, new: ModelConfig, copy: bool) -> tuple[Tensor, Tensor]:
    """Old query head and old key/value head behind each new one (-1 = new), group by group."""
    g_old, g_new = old.n_heads // old.kv_heads, new.n_heads // new.kv_heads
    q_src, kv_src = [], []
    for m in range(new.kv_heads):
        kv = m if m < old.kv_heads else (m % old.kv_heads if copy else -1)
        kv_src.append(kv)
        for s in range(g_new):
            fresh_slot = kv < 0 or (not copy and s >= g_old)
            q_src.append(-1 if fresh_slot else kv * g_old + s % g_old)
    return torch.tensor(q_src), torch.tensor(kv_src)


def _per_dim(head_src: Tensor, head_dim: int) -> Tensor:
    heads = head_src.repeat_interleave(head_dim)
    dims = heads * head_dim + torch.arange(head_dim).repeat(head_src.numel())
    return torch.where(heads < 0, -1, dims)


def inplace_sources(old: ModelConfig, new: ModelConfig) -> dict[str, Tensor]:
    """Where each unit of `new` sits in `old` when old units keep their places (zero,
    width_random, width_learn, masked growth): old unit index per new unit, -1 for a new one.

    Keys: "d" (residual dims), "f" (FFN units), "q_heads" and "kv_heads" (attention heads,
    laid out group by group as in the module docstring)."""
    q_heads, kv_heads = _head_maps(old, new, copy=False)
    return {"d": _units(old.d_model, new.d_model, copy=False),
            "f": _units(old.hidden_dim, new.hidden_dim, copy=False),
            "q_heads": q_heads, "kv_heads": kv_heads}


def inplace_positions(old: ModelConfig, new: ModelConfig) -> dict[str, list]:
    """For ops that keep old units in place (zero, width_random): per tensor name of `new`, per
    dimension, (new positions, old indices) of the entries that continue old ones, or None
    where the dimension keeps its size. What carries an old tensor's optimizer moments into
    its slice of the new one (growlm.optim.build.map_moments)."""
    plan = _Plan(old, new, "zero")
    out = {}
    for name in expected_shapes(new):
        roles = _LAYOUT[name.split(".", 2)[2] if name.startswith("layers.") else name]
        dims = []
        for role in roles[: len(expected_shapes(new)[name])]:
            if role is None:
                dims.append(None)
                continue
            src = plan.maps[role[0]]
            keep = torch.nonzero(src >= 0).squeeze(1)
            dims.append((keep, src[keep]))
        out[name] = dims
    return out


class _Plan:
    """Index maps and scales of every (axis, role) for one width growth."""

    def __init__(self, old: ModelConfig, new: ModelConfig, mode: str):
        copy = mode == "copy"
        q_heads, kv_heads = _head_maps(old, new, copy)
        hd = old.head_size
        self.mode = mode
        self.maps = {
            "d": _units(old.d_model, new.d_model, copy),
            "f": _units(old.hidden_dim, new.hidden_dim, copy),
            "q": _per_dim(q_heads, hd),
            "kv": _per_dim(kv_heads, hd),
        }
        self.n_old = {"d": old.d_model, "f": old.hidden_dim, "q": old.q_dim, "kv": old.kv_dim}
        self.width_ratio = new.d_model / old.d_model  # d'/d

    def side(self, axis: str, role: str) -> _Side:
        src = self.maps[axis]
        scale = None
        if self.mode == "copy":
            count = torch.bincount(src, minlength=self.n_old[axis]).double()[src]
            if axis == "d":
                alpha = torch.sqrt(self.width_ratio / count)
                scale = {"write": alpha, "read": 1.0 / (count * alpha), "norm": None}[role]
            elif role == "read":
                scale = 1.0 / count
        elif self.mode == "zero" and axis == "d" and role == "norm" and self.width_ratio != 1:
            scale = torch.full((src.numel(),), math.sqrt(1.0 / self.width_ratio), dtype=torch.float64)
        if scale is not None and bool((scale == 1).all()):
            scale = None
        zero_new = self.mode == "zero" and (role == "write" or (role == "read" and axis in ("f", "q")))
        return _Side(src, scale, zero_new)


def _rebuild(w: Tensor, fresh_w: Tensor, rows: _Side | None, cols: _Side | None) -> Tensor:
    """New tensor: old entries gathered and scaled, new entries from fresh (or zero)."""
    dev = w.device
    work = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
    masks = []  # (is-new mask, zero_new) per dimension
    for dim, side in enumerate((rows, cols)[: w.dim()]):
        if side is None:
            masks.append((torch.zeros(w.shape[dim], dtype=torch.bool), False))
            continue
        work = work.index_select(dim, side.src.clamp(min=0).to(dev))
        if side.scale is not None:
            shape = [1] * w.dim()
            shape[dim] = -1
            work = work * side.scale.to(device=dev, dtype=work.dtype).view(shape)
        masks.append((side.src < 0, side.zero_new))
    if any(bool(m.any()) for m, _ in masks):
        if w.dim() == 1:
            is_new, zero = masks[0][0], masks[0][0] & masks[0][1]
        else:
            (r_new, r_zero), (c_new, c_zero) = masks
            is_new = r_new[:, None] | c_new[None, :]
            zero = (r_new & r_zero)[:, None] | (c_new & c_zero)[None, :]
        base = fresh_w.to(device=dev, dtype=work.dtype).masked_fill(zero.to(dev), 0)
        work = torch.where(is_new.to(dev), base, work)
    out = work.to(w.dtype)
    return out.clone() if out is w else out


def grow_width(
    state: dict[str, Tensor], old: ModelConfig, new_cfg: ModelConfig, spec, fresh: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Provenance]]:
    mode = "copy" if spec.op in ("clone", "split") else spec.op
    plan = _Plan(old, new_cfg, mode)
    out: dict[str, Tensor] = {}
    prov: dict[str, Provenance] = {}
    for name in expected_shapes(new_cfg):
        if new_cfg.tie_embeddings and name == HEAD:
            continue  # the head is the (rebuilt) embedding
        role_rows, role_cols = _LAYOUT[name.split(".", 2)[2] if name.startswith("layers.") else name]
        rows = plan.side(*role_rows) if role_rows else None
        cols = plan.side(*role_cols) if role_cols else None
        value = _rebuild(state[name], fresh[name], rows, cols)
        unchanged = all(s is None or s.is_identity for s in (rows, cols))
        if name == FINAL_NORM and new_cfg.tie_embeddings and mode == "copy" and plan.width_ratio != 1:
            # a tied head reads the α-scaled embedding copies c·α² = d'/d times over
            value = (value.float() / plan.width_ratio).to(value.dtype)
            unchanged = False
        out[name] = value
        prov[name] = copied(name) if unchanged else derived([name], inherited=True)
    if new_cfg.tie_embeddings:
        out[HEAD], prov[HEAD] = out[EMBED], dict(prov[EMBED], sources=[HEAD])
    return out, prov
