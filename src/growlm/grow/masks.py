"""Growth masks: G_random with MSG's masks (Yao et al., ICLR 2024, "Masked Structural Growth for
2x Faster Language Model Pre-training"; Gstack, Du et al. 2024, uses it for its G_random).

After `random` or `width_random` growth the new structures hold fresh random weights. Masks
multiply their contribution by a factor c that the trainer ramps linearly from 0 to 1
(growlm.train.growth), so at c = 0 the grown model computes exactly what the small one did,
whatever the new weights are, and at c = 1 it is the plain model:

depth  every new block computes x + c·F(x), F(x) = block(x) − x (MSG: y·c + x·(1 − c)).
width  the new units' outputs are scaled by c: new residual dims wherever the residual stream
       is written (embedding, attention output, FFN output), new query heads at o_proj's input
       (a new key/value head is read only by new query heads, so it needs no mask of its own)
       and new FFN units at down_proj's input. Old units keep a mask of 1.
       Each RMSNorm over the residual stream computes its statistic over the active dims only:
       with m the residual mask, y = (m⊙x) / sqrt(Σ(m⊙x)²/Σm + eps) · w. This is exact, eps
       included, as RMSNorm(s·m⊙x)/s with s = sqrt(D/Σm), so the model's own norm does the
       work (MSG normalises the same way with LayerNorm).

The masks are forward hooks and pre-hooks on the model's modules: the model stays a plain
Llama with the same parameter names, and `remove` (folding: every mask is 1 at ramp end) leaves
nothing behind. Which units are new comes from the growth op's layout (growlm.grow.depth's layer
plan, growlm.grow.width.inplace_sources), not from the weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig


def new_layers(old: ModelConfig, new: ModelConfig, spec) -> list[int]:
    """Indices of the layers a depth op creates from nothing (their block gets a mask)."""
    from growlm.grow.depth import layer_plan

    return [i for i, init in enumerate(layer_plan(old.n_layers, new.n_layers, spec)) if init.below is None]


def width_masks(old: ModelConfig, new: ModelConfig) -> dict[str, torch.Tensor]:
    """Boolean "is new" vectors of the residual dims ("d"), the query dims at o_proj's input
    ("q") and the FFN units ("f")."""
    from growlm.grow.width import inplace_sources

    src = inplace_sources(old, new)
    q = src["q_heads"].repeat_interleave(new.head_size)
    return {"d": src["d"] < 0, "q": q < 0, "f": src["f"] < 0}


class GrowthMasks:
    """Masks on a grown `nn.Module` (growlm.model.llama.Transformer) for `spec`'s growth from
    `old` to `new`. `set(c)` sets the ramp factor in [0, 1]; `remove()` takes the hooks off."""

    def __init__(self, model: nn.Module, old: ModelConfig, new: ModelConfig, spec):
        from growlm.grow.checks import DEPTH_OPS

        self.depth = spec.op in DEPTH_OPS
        self.c = 0.0
        self._handles: list = []
        device = model.embed_tokens.weight.device
        if self.depth:
            for i in new_layers(old, new, spec):
                self._handles.append(model.layers[str(i)].register_forward_hook(self._block))
            return
        masks = width_masks(old, new)
        self._d_total, self._d_new = masks["d"].numel(), int(masks["d"].sum())
        self._new = {k: v.to(device) for k, v in masks.items()}
        self._mask = {k: torch.ones(v.shape, device=device) for k, v in self._new.items()}
        self._scale = 1.0  # s = sqrt(D / Σm) for the norms
        self._hook(model.embed_tokens, out="d")
        for block in model.layers.values():
            self._norm(block.input_layernorm)
            self._hook(block.self_attn, out="d")
            self._hook(block.self_attn.o_proj, inp="q")
            if block.mlp is not None:
                self._norm(block.post_attention_layernorm)
                self._hook(block.mlp, out="d")
                self._hook(block.mlp.down_proj, inp="f")
        self._norm(model.norm)

    # ------------------------------------------------------------------ ramp
    def set(self, c: float) -> None:
        if not 0.0 <= c <= 1.0:
            raise GrowlmError(f"growth mask: factor {c} outside [0, 1]")
        self.c = float(c)
        if not self.depth:
            for k, is_new in self._new.items():
                self._mask[k].fill_(1.0).masked_fill_(is_new, self.c)
            active = self._d_total - self._d_new + self.c * self._d_new  # Σm, counted on the host
            self._scale = math.sqrt(self._d_total / active)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # ------------------------------------------------------------------ hooks
    def _block(self, module, args, output):
        x = args[0]
        return torch.lerp(x, output, self.c) if self.c != 1.0 else output

    def _hook(self, module: nn.Module, *, out: str | None = None, inp: str | None = None) -> None:
        if out is not None:
            def scale_out(_m, _args, output, key=out):
                return output * self._mask[key].to(output.dtype)
            self._handles.append(module.register_forward_hook(scale_out))
        if inp is not None:
            def scale_in(_m, args, key=inp):
                return (args[0] * self._mask[key].to(args[0].dtype), *args[1:])
            self._handles.append(module.register_forward_pre_hook(scale_in))

    def _norm(self, norm: nn.Module) -> None:
        def before(_m, args):
            x = args[0]
            return (x * (self._mask["d"] * self._scale).to(x.dtype), *args[1:])

        def after(_m, _args, output):
            return output / self._scale
        self._handles.append(norm.register_forward_pre_hook(before))
        self._handles.append(norm.register_forward_hook(after))
