"""Depth growth: add layers, keep the width. Embeddings, final norm and head are copied.

  stack        target layer i ← source layer (i mod L) (Gstack, Du et al. 2024: the small model
               repeated g times); with `sources`, target i ← sources[i] (partial stacking).
  duplicate    target layer i ← source layer ⌊i/g⌋ (each layer repeated in place).
  interpolate  STEP (Yano et al. 2025): new layers are inserted between existing ones; a new
               layer is the element-wise mean of the layers just below and above it.
  identity     new layers whose residual output projections (o_proj, down_proj) are zero, so
               every new block adds nothing to the residual stream: the function is unchanged.
               Their other tensors come from the fresh initialisation.
  random       new layers freshly initialised (with `mask_steps`, MSG's masked growth: see
               growlm.grow.masks).
  learn        Gstack's G_learn in depth (LiGO): new layer i starts as a copy of layer i mod L,
               like stack, and each role's layer-mixing matrix is then learned
               (growlm.grow.ligo; this module only places the copies).

Placement of new layers (interpolate, identity, random). With L old layers there are L - 1
interior gaps (between old layers i and i+1). New layers are dealt out in rounds, one per
interior gap per round; the last, partial round picks its gaps evenly spread
(`position = "even"`: gaps ⌊(j + ½)·(L-1)/r⌋ for j < r) or the topmost ones (`"top"`), so the
upper part of the network gets them first. `"end"` puts every new layer above the old ones, as
MSG's code and Gstack's G_random do (the old layers keep their depth). No layer is ever placed
below layer 0.
When a gap receives k new layers, the m-th (m = 1..k) interpolates linearly between the layer
below (B) and above (A): (1 - m/(k+1))·B + m/(k+1)·A; with k = 1 that is the mean.
Top edge: a 1-layer source has no interior gap, so its new layers go above it, and since
there is no layer above, interpolation copies the layer below. From a 0-layer (bigram) model
identity/random build all layers new.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from growlm.grow.common import (
    EMBED,
    FINAL_NORM,
    HEAD,
    RESIDUAL_OUT,
    as_like,
    layer_name,
    layer_suffixes,
)
from growlm.grow.provenance import Provenance, copied, derived, new
from growlm.model.config import ModelConfig


@dataclass(frozen=True)
class LayerInit:
    """How one target layer starts: fresh (below None), a copy of old layer `below`
    (above None), or (1 - t)·below + t·above."""

    below: int | None = None
    above: int | None = None
    t: float = 0.0


def insertion_counts(n_old: int, n_add: int, position: str = "even") -> list[int]:
    """How many new layers go right above each old layer (index = old layer)."""
    if n_old == 0:
        return []
    gaps = n_old - 1
    if gaps == 0:  # top edge: a single layer gets everything above it
        return [n_add]
    if position == "end":
        return [0] * gaps + [n_add]
    rounds, rest = divmod(n_add, gaps)
    counts = [rounds] * gaps + [0]
    if position == "top":
        chosen = range(gaps - rest, gaps)
    else:
        chosen = [int((j + 0.5) * gaps / rest) for j in range(rest)]
    for g in chosen:
        counts[g] += 1
    return counts


def layer_plan(n_old: int, n_new: int, spec) -> list[LayerInit]:
    """One LayerInit per target layer, for an op that `check_growth` accepted."""
    op = spec.op
    if op in ("stack", "learn"):
        sources = spec.sources if spec.sources is not None else [i % n_old for i in range(n_new)]
        return [LayerInit(below=s) for s in sources]
    if op == "duplicate":
        factor = n_new // n_old
        return [LayerInit(below=i // factor) for i in range(n_new)]
    if n_old == 0:
        return [LayerInit() for _ in range(n_new)]
    plan: list[LayerInit] = []
    for i, k in enumerate(insertion_counts(n_old, n_new - n_old, spec.position)):
        plan.append(LayerInit(below=i))
        for m in range(1, k + 1):
            if op != "interpolate":
                plan.append(LayerInit())
            elif i + 1 < n_old:
                plan.append(LayerInit(below=i, above=i + 1, t=m / (k + 1)))
            else:
                plan.append(LayerInit(below=i))  # top edge: nothing above, copy the layer below
    return plan


def _mix(below: Tensor, above: Tensor, t: float) -> Tensor:
    # fp32 so that bf16 layers are averaged without an extra rounding step
    return ((1.0 - t) * below.float() + t * above.float()).to(below.dtype)


def grow_depth(
    state: dict[str, Tensor], old: ModelConfig, new_cfg: ModelConfig, spec, fresh: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Provenance]]:
    out: dict[str, Tensor] = {}
    prov: dict[str, Provenance] = {}
    for name in (EMBED, FINAL_NORM, HEAD):
        out[name] = state[name].clone()
        prov[name] = copied(name)
    ref = state[EMBED]
    continued: set[int] = set()  # old layers that already have their continuation
    for i, init in enumerate(layer_plan(old.n_layers, new_cfg.n_layers, spec)):
        for suffix in layer_suffixes(new_cfg):
            target = layer_name(i, suffix)
            if init.below is None:
                value = as_like(fresh[target], ref)
                if spec.op == "identity" and suffix in RESIDUAL_OUT:
                    value = torch.zeros_like(value)
                out[target], prov[target] = value, new()
            elif init.above is None:
                source = layer_name(init.below, suffix)
                out[target] = state[source].clone()
                prov[target] = copied(source, inherited=init.below not in continued)
            else:
                below, above = layer_name(init.below, suffix), layer_name(init.above, suffix)
                out[target] = _mix(state[below], state[above], init.t)
                prov[target] = derived([below, above])
        if init.below is not None and init.above is None:
            continued.add(init.below)
    return out, prov
