"""Growth operators: pure functions (state, old config, new config, spec) → (state, provenance).

    grow(state, old, new, spec, fresh=None) -> (new_state, provenance)

dispatches on `spec.op` (a `growlm.config.GrowSpec`):
  depth  stack, duplicate, interpolate, identity, random        (growlm.grow.depth)
  width  clone, split, zero, width_random                       (growlm.grow.width)
  reuse  embedding/final norm/head (+ layer-0 parts) transplant  (growlm.grow.reuse)
  learn  learn, width_learn: LiGO's linear maps at initialisation (growlm.grow.ligo; `maps`,
         else maps drawn from the global RNG); the maps are trained by growlm.train.growth

`fresh` is the state dict of a freshly initialised `Transformer(new)` (the trainer builds it
with the run's seed); it supplies every value that does not come from the old model. Without
it one is built from the global RNG. The input state and `fresh` are never modified and the
output shares no storage with them; outputs keep the input's device and dtype. On the meta
device nothing is allocated, so the planner can learn provenance for free. With tied
embeddings, `embed_tokens.weight` and `lm_head.weight` are the same output tensor, as in
`Transformer.state_dict()`. See growlm.grow.provenance for what provenance records.
"""

from __future__ import annotations

from torch import Tensor

from growlm.errors import GrowlmError
from growlm.grow.checks import DEPTH_OPS, LEARN_OPS, WIDTH_OPS, check_growth
from growlm.grow.common import EMBED, HEAD, check_state, expected_shapes, fresh_state
from growlm.grow.provenance import (
    Provenance,
    check_provenance,
    inherited_names,
    new_names,
    summarize,
)
from growlm.model.config import ModelConfig

__all__ = [
    "Provenance",
    "check_growth",
    "check_provenance",
    "grow",
    "inherited_names",
    "new_names",
    "summarize",
]


def grow(
    state: dict[str, Tensor],
    old: ModelConfig,
    new: ModelConfig,
    spec,
    fresh: dict[str, Tensor] | None = None,
    *,
    maps: dict[str, Tensor] | None = None,
    where: str = "",
) -> tuple[dict[str, Tensor], dict[str, Provenance]]:
    """Grow `state` (a model of shape `old`) into a state of shape `new` with `spec.op`."""
    check_growth(old, new, spec, where)
    prefix = f"{where}: " if where else ""
    state = check_state(state, old, f"{prefix}grow: source state")
    ref = state[EMBED]
    if fresh is None:
        fresh = fresh_state(new, ref.device, ref.dtype)
    else:
        fresh = check_state(fresh, new, f"{prefix}grow: fresh state")
    if spec.op in LEARN_OPS:
        from growlm.grow.ligo import grow_learn, init_maps

        if maps is None:
            maps = init_maps(old, new, spec, device=ref.device)
        out, prov = grow_learn(state, old, new, spec, maps)
        return out, prov
    if spec.op in DEPTH_OPS:
        from growlm.grow.depth import grow_depth as op_fn
    elif spec.op in WIDTH_OPS:
        from growlm.grow.width import grow_width as op_fn
    elif spec.op == "reuse":
        from growlm.grow.reuse import grow_reuse as op_fn
    else:  # check_growth already refused it; keep the guard for direct callers
        raise GrowlmError(f"{prefix}grow: unknown op {spec.op!r}")
    out, prov = op_fn(state, old, new, spec, fresh)
    if new.tie_embeddings:
        out[HEAD] = out[EMBED]  # one tensor under both names, like Transformer.state_dict()
    order = list(expected_shapes(new))
    return {k: out[k] for k in order}, {k: prov[k] for k in order}
