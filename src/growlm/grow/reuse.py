"""Embedding/head reuse (Lee et al.): transplant the I/O layers of a small model into a fresh one.

The target model is freshly initialised (from `fresh`) except the token embedding, the final
norm and the output head, which are copied from the stage-1 model (a 0-layer bigram model, an
attention-only block, one full layer, or a full baseline for "Base Reuse"). `layer0` also
copies stage-1 layer 0's sublayers into the target's layer 0, as in the paper's variants:

  none      (None)      nothing else
  attn      (Attn)      input_layernorm + q/k/v/o projections (with their biases and q/k norms)
  ffn       (FFN)       post_attention_layernorm + gate/up/down projections
  attn_ffn  (Attn&FFN)  both
"""

from __future__ import annotations

from torch import Tensor

from growlm.grow.common import (
    EMBED,
    FFN_SUFFIXES,
    FINAL_NORM,
    HEAD,
    as_like,
    attn_suffixes,
    expected_shapes,
    layer_name,
)
from growlm.grow.provenance import Provenance, copied, new
from growlm.model.config import ModelConfig

LAYER0_PARTS = ("none", "attn", "ffn", "attn_ffn")


def reused_names(layer0: str, cfg: ModelConfig) -> list[str]:
    """Names copied from the stage-1 model (same name in both models) for a model like `cfg`."""
    parts = {"none": (), "attn": attn_suffixes(cfg), "ffn": FFN_SUFFIXES,
             "attn_ffn": attn_suffixes(cfg) + FFN_SUFFIXES}[layer0]
    return [EMBED, FINAL_NORM, HEAD] + [layer_name(0, s) for s in parts]


def grow_reuse(
    state: dict[str, Tensor], old: ModelConfig, new_cfg: ModelConfig, spec, fresh: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Provenance]]:
    keep = set(reused_names(spec.layer0, new_cfg))
    ref = state[EMBED]
    out: dict[str, Tensor] = {}
    prov: dict[str, Provenance] = {}
    for name in expected_shapes(new_cfg):
        if name in keep:
            out[name], prov[name] = state[name].clone(), copied(name)
        else:
            out[name], prov[name] = as_like(fresh[name], ref), new()
    return out, prov
