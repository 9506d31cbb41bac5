"""ReLoRA (Lialin et al. 2023): LoRA whose adapters are merged and restarted periodically.

Every `reset_every` steps the controller merges each adapter into its (frozen) weight,
re-draws A and zeroes B, and prunes the adapters' optimizer state so that the new
adapters do not inherit the old direction's momentum. Resets land on multiples of
`reset_every` in stage steps, where `jagged_cosine` re-warms the LR.

Step conventions (shared with `growlm.optim.schedule`, whose `lr_schedule(...,
reset_every=...)` gives the matching jagged LR):
  - the LR schedule takes the 0-based index of the step about to be taken;
  - `maybe_reset(done)` (alias `step`) takes the number of optimizer steps completed in
    the stage, and is called right after `optimizer.step()`.
So after the reset at done = k·reset_every, step k·reset_every runs at the re-warm LR.

ReLoRA's full-rank warm start is a stage of its own in growlm: a stage of the same shape
without adapters before the adapter stage (see recipes/step/*-relora.toml).

Randomness (A's re-draw, random pruning) comes from a generator seeded by (seed, reset
index), so a resumed run repeats the same resets without saving generator state.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from growlm.adapters.lora import adapter_parameters, merge_adapters
from growlm.errors import GrowlmError
from growlm.faults import fault

DEFAULT_RESET_EVERY = 5000  # ReLoRA's and STEP's baseline setting
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # torch Adam/AdamW (fused too)


def reset_interval(spec) -> int | None:
    """Steps between merges: `reset_every`, ReLoRA's 5000 for relora, None for plain LoRA."""
    if spec.kind == "lora":
        return spec.reset_every
    return spec.reset_every or DEFAULT_RESET_EVERY


def check_relora(spec, stage_steps: int) -> None:
    """GrowlmError when the reset schedule does not fit a stage of `stage_steps` steps."""
    every = reset_interval(spec)
    if every is not None and every > stage_steps:
        raise GrowlmError(
            f"adapters.reset_every: {every} steps is longer than the stage ({stage_steps} "
            f"steps); use reset_every <= {stage_steps}"
        )
    if every is not None and spec.rewarmup_steps >= every:
        raise GrowlmError(
            f"adapters.rewarmup_steps: {spec.rewarmup_steps} must be shorter than "
            f"reset_every ({every})"
        )


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))


@torch.no_grad()
def _prune_magnitude(t: torch.Tensor, n_prune: int) -> None:
    keep = t.numel() - n_prune
    if keep == 0:
        t.zero_()
        return
    flat = t.view(-1)
    idx = torch.topk(flat.abs(), keep, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[idx] = True
    flat.mul_(mask)


@torch.no_grad()
def _prune_random(t: torch.Tensor, n_prune: int, gen: torch.Generator) -> None:
    idx = torch.randperm(t.numel(), generator=gen)[:n_prune].to(t.device)
    t.view(-1)[idx] = 0


@torch.no_grad()
def reset_optimizer_state(
    optimizer: torch.optim.Optimizer,
    params: Iterable[torch.Tensor],
    mode: str = "prune",
    prune_ratio: float = 0.99,
    generator: torch.Generator | None = None,
) -> int:
    """Zero a `prune_ratio` fraction of the Adam moments of `params`; return entries zeroed.

    "prune" keeps the largest-magnitude (1 − prune_ratio) fraction of each moment tensor,
    "random" keeps a random such fraction, "zero" clears them. The step counts stay, as in
    ReLoRA, so bias correction does not restart.
    """
    if mode not in ("prune", "random", "zero"):
        raise GrowlmError(f"adapters: optimizer_reset {mode!r}; allowed: prune, random, zero")
    gen = generator or torch.Generator().manual_seed(0)
    zeroed = 0
    for p in params:
        state = optimizer.state.get(p, {})
        for key in MOMENT_KEYS:
            t = state.get(key)
            if not isinstance(t, torch.Tensor) or t.shape != p.shape:
                continue
            n_prune = t.numel() if mode == "zero" else round(t.numel() * prune_ratio)
            if n_prune >= t.numel():
                t.zero_()
            elif mode == "prune":
                _prune_magnitude(t, n_prune)
            elif n_prune > 0:
                _prune_random(t, n_prune, gen)
            zeroed += n_prune
    return zeroed


class ReLoRA:
    """Merge-and-restart controller for a model whose adapters come from `apply_adapters`."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        spec,
        *,
        stage_steps: int | None = None,
        seed: int = 0,
        allow_bf16_merge: bool = False,
    ):
        if stage_steps is not None:
            check_relora(spec, stage_steps)
        self.model, self.spec, self.optimizer = model, spec, optimizer
        self.reset_every = reset_interval(spec)
        self.seed, self.allow_bf16_merge = seed, allow_bf16_merge
        self.resets = 0

    # ---- resets
    def is_reset_step(self, done: int) -> bool:
        """Whether a reset follows the `done`-th optimizer step of the stage."""
        every = self.reset_every
        return every is not None and done > 0 and done % every == 0

    def maybe_reset(self, done: int) -> bool:
        """Call after each optimizer step with the stage's completed-step count."""
        if not self.is_reset_step(done):
            return False
        fault("relora_merge")
        self.reset()
        return True

    step = maybe_reset

    def reset(self) -> dict[str, int]:
        """Merge, re-init adapters, prune their optimizer state. Returns what was done."""
        gen = _generator(self.seed, self.resets)
        merged = merge_adapters(
            self.model, allow_bf16_merge=self.allow_bf16_merge, reinit=True, generator=gen
        )
        zeroed = 0
        if self.optimizer is not None:
            zeroed = reset_optimizer_state(
                self.optimizer, adapter_parameters(self.model), self.spec.optimizer_reset,
                self.spec.prune_ratio, generator=gen,
            )
        self.resets += 1
        return {"merged_layers": len(merged), "zeroed_state": zeroed, "resets": self.resets}

    # ---- resume
    def state_dict(self) -> dict[str, int]:
        return {"resets": self.resets}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resets = int(state["resets"])
