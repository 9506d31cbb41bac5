"""ReLoRA (Lialin et al. 2023): LoRA whose adapters are merged and restarted periodically.

Every `reset_every` steps the controller merges each adapter into its (frozen) weight,
re-draws A and zeroes B, and prunes the adapters' optimizer state so that the new
adapters do not inherit the old direction's momentum. Resets land on multiples of
`reset_every` in stage steps, where `jagged_cosine` re-warms the LR.

Step conventions (shared with `growlm.optim.schedule`):
  - `lr_factor(step)` takes the 0-based index of the step about to be taken;
  - `maybe_reset(done)` (alias `step`) takes the number of optimizer steps completed in
    the stage, and is called right after `optimizer.step()`.
So after the reset at done = k·reset_every, step k·reset_every runs at the re-warm LR.

Optional full-rank warm start: during steps < `full_rank_steps` the model has no adapters
and the trainer trains the weights directly; at step `full_rank_steps` it calls
`start_adapters(...)`, builds a new optimizer and `attach`es it. Pick `full_rank_steps` as a
multiple of `reset_every` so the switch coincides with an LR re-warm.

Randomness (A's re-draw, random pruning) comes from a generator seeded by (seed, reset
index), so a resumed run repeats the same resets without saving generator state.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from growlm.adapters.lora import adapter_parameters, apply_adapters, merge_adapters
from growlm.config import AdapterSpec
from growlm.errors import GrowlmError
from growlm.optim.schedule import jagged_cosine, warmup_cosine

DEFAULT_RESET_EVERY = 5000  # ReLoRA's and STEP's baseline setting
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # torch Adam/AdamW (fused too)


def reset_interval(spec: AdapterSpec) -> int | None:
    """Steps between merges: `reset_every`, ReLoRA's 5000 for relora, None for plain LoRA."""
    if spec.kind == "lora":
        return spec.reset_every
    return spec.reset_every or DEFAULT_RESET_EVERY


def check_relora(spec: AdapterSpec, stage_steps: int) -> None:
    """GrowlmError when the reset schedule does not fit a stage of `stage_steps` steps."""
    every = reset_interval(spec)
    if every is not None and every > stage_steps:
        raise GrowlmError(
            f"adapters: reset_every ({every} steps) is longer than the stage ({stage_steps} "
            f"steps); use reset_every <= {stage_steps}"
        )
    if every is not None and spec.rewarmup_steps >= every:
        raise GrowlmError(
            f"adapters: rewarmup_steps ({spec.rewarmup_steps}) must be shorter than "
            f"reset_every ({every})"
        )
    if spec.full_rank_steps >= stage_steps:
        raise GrowlmError(
            f"adapters: full_rank_steps ({spec.full_rank_steps}) must be shorter than the stage "
            f"({stage_steps} steps)"
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
        spec: AdapterSpec,
        *,
        stage_steps: int | None = None,
        seed: int = 0,
        allow_bf16_merge: bool = False,
    ):
        if stage_steps is not None:
            check_relora(spec, stage_steps)
        self.model, self.spec, self.optimizer = model, spec, optimizer
        self.reset_every = reset_interval(spec)
        self.full_rank_steps = spec.full_rank_steps
        self.seed, self.allow_bf16_merge = seed, allow_bf16_merge
        self.resets = 0

    # ---- warm start
    def full_rank(self, step: int) -> bool:
        """True while step `step` (0-based) belongs to the full-rank warm start."""
        return step < self.full_rank_steps

    def start_adapters(self, frozen: Iterable[str] = ()) -> list[str]:
        """Wrap the targeted linears (at stage start, or when the warm start ends)."""
        gen = _generator(self.seed, -1)
        return apply_adapters(self.model, self.spec, set(frozen), generator=gen)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    # ---- resets
    def is_reset_step(self, done: int) -> bool:
        """Whether a reset follows the `done`-th optimizer step of the stage."""
        every = self.reset_every
        return every is not None and done > self.full_rank_steps and done % every == 0

    def maybe_reset(self, done: int) -> bool:
        """Call after each optimizer step with the stage's completed-step count."""
        if not self.is_reset_step(done):
            return False
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

    # ---- schedule
    def lr_factor(self, step: int, *, warmup: int, horizon: int, min_ratio: float) -> float:
        """The jagged cosine matching this controller's resets."""
        if self.reset_every is None or self.spec.rewarmup_steps == 0:
            return warmup_cosine(step, warmup, horizon, min_ratio)
        return jagged_cosine(
            step, warmup, horizon, min_ratio, self.reset_every, self.spec.rewarmup_steps
        )

    # ---- resume
    def state_dict(self) -> dict[str, int]:
        return {"resets": self.resets}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resets = int(state["resets"])


def relora_trainable_params(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts split into adapters and the rest (for stage logs)."""
    adapter_ids = {id(p) for p in adapter_parameters(model)}
    adapters = rest = 0
    for p in model.parameters():
        if p.requires_grad:
            if id(p) in adapter_ids:
                adapters += p.numel()
            else:
                rest += p.numel()
    return {"adapter": adapters, "other_trainable": rest}
