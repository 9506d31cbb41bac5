"""Training FLOPs per token of one stage, counted two ways (all numbers forward + backward).

**The papers' 6·N·D formula** (Lee et al.; STEP; Gstack): ``6·N_trainable + 2·N_frozen`` over the
non-embedding parameters — every weight except the embedding lookup, the head counted as a
matmul (a tied head once, trainable with the embedding) — plus ``6·N`` for adapter parameters.
It ignores that a frozen weight must still pass the gradient on to trainable weights below it.

**Exact count.** A weight W of N parameters used as ``y = x·Wᵀ`` costs, per token,

* forward ``2·N``;
* input gradient ``dx = dy·W``: ``2·N``, needed iff anything trainable lies *upstream* of W,
  i.e. strictly earlier in the forward order of `growlm.plan.layout` (embedding < layer 0 <
  … < final norm < head; inside a layer input norm < q,k,v < q/k norms < attention core < o <
  post norm < gate,up < down). Weights that read the same input (q/k/v, gate/up) are not
  upstream of each other. A trainable norm, bias or embedding counts as trainable; an adapter
  makes its linear's position trainable;
* weight gradient ``dW = dyᵀ·x``: ``2·N``, needed iff W itself is trainable.

So a trainable weight costs 6·N, or 4·N when it is the first trainable thing in the network; a
frozen weight costs 4·N below trainable ones' gradient path (frozen head, frozen layers above a
trainable embedding or above trainable layers) and 2·N only when nothing trainable is upstream.
Norm weights and biases (vectors) are charged like matrices of their size, so that a fully
trainable model comes out at exactly ``6·N + attention``; their true cost is elementwise and
negligible.

A LoRA adapter of rank r on a linear of shape (out, in) has ``P = r·(in+out)`` parameters and
costs forward 2·P, weight gradients 2·P, the gradient into the rank-r bottleneck ``2·r·out``
and — iff something trainable is upstream — the input gradient ``2·r·in``: 6·P in the usual
case, slightly less at the bottom of the network. The frozen base weight keeps its own cost.

**Attention core** (QKᵀ and AV, not parameter matmuls; full T×T counted as nanoGPT/PaLM do):
forward ``4·n_heads·head_dim·T`` per layer and token. The backward consists of four matmuls of
half that each — dV (needed iff v_proj's output needs a gradient), dP (iff q's or k's does),
dQ, dK — where a projection's output needs a gradient iff the projection (weight, adapter,
bias or q/k norm) trains or anything trainable is upstream of it. A trainable layer thus pays
3× forward; the core of a layer with nothing trainable at or below its q/k/v pays 1×. It is
kept as a separate field and included in `exact_total`; the 6·N·D formula leaves it out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.plan.layout import Trainability


@dataclass(frozen=True)
class FlopCount:
    """Training FLOPs per token (forward + backward)."""

    six_nd: int  # the papers' formula: 6·N_trainable + 2·N_frozen (+ 6·N_adapter), no attention
    exact: int  # parameter matmuls with the upstream rule, no attention
    attention: int  # attention core (scores and AV), stage-aware

    @property
    def exact_total(self) -> int:
        return self.exact + self.attention

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "exact_total": self.exact_total}


def count_flops(cfg: ModelConfig, frozen: set[str], adapter_params: dict[str, int] | int,
                seq_len: int) -> FlopCount:
    """FLOPs per token of a stage whose model is `cfg`, with parameters `frozen` (names) and
    adapters (linear module name → parameter count, or a total; see `Trainability`)."""
    if seq_len <= 0:
        raise GrowlmError(f"sequence length must be positive, got {seq_len}")
    state = Trainability(cfg, frozen, adapter_params)
    return FlopCount(
        six_nd=_six_nd(state), exact=_exact(state), attention=_attention(state, seq_len)
    )


def _six_nd(state: Trainability) -> int:
    total = 6 * sum(state.adapter_params.values())
    for w in state.weights:
        if w.kind != "embedding":
            total += (6 if state.trainable(w) else 2) * w.params
    return total


def _exact(state: Trainability) -> int:
    total = 0
    for w in state.weights:
        if w.kind == "embedding":
            continue  # a lookup: no matmul, its gradient is a scatter-add
        needs_dx = state.grad_reaches(w.slot)
        total += 2 * w.params * (1 + needs_dx + state.trainable(w))
        p = state.adapter_params.get(w.module, 0) if w.kind == "linear" else 0
        if p:
            out_dim, in_dim = w.shape
            total += 4 * p + (2 * p * out_dim) // (in_dim + out_dim)
            if needs_dx:
                total += (2 * p * in_dim) // (in_dim + out_dim)
    return total


def _attention(state: Trainability, seq_len: int) -> int:
    cfg = state.cfg
    unit = 2 * cfg.q_dim * seq_len  # one of the core's matmuls, per token
    total = 0
    for i in range(cfg.n_layers):
        needs = {x: state.projection_needs_grad(i, x) for x in "qkv"}
        backward = needs["v"] + (needs["q"] or needs["k"]) + needs["q"] + needs["k"]
        total += unit * (2 + backward)
    return total
