"""Small pieces of training state that a checkpoint saves: counters and random-number state.

Each has `state_dict()` / `load_state_dict()`, like torch's modules and optimizers and the data
loader, so `growlm.train.manager.CheckpointManager` treats them all alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from growlm.errors import GrowlmError


@dataclass
class Counters:
    """Run-wide counters. `flops` is the exact count, `flops_6nd` the papers' 6·N·D formula
    (6·N_trainable + 2·N_frozen per token; see growlm.plan.flops)."""

    global_step: int = 0
    tokens: int = 0
    flops: int = 0
    flops_6nd: int = 0
    bad_steps: int = 0
    skipped_steps: int = 0
    elapsed: float = 0.0
    last_val_loss: float | None = None
    # non-finite rollbacks: total, and the LR multiplier they left on one stage (0-based index)
    rollbacks: int = 0
    stage_rollbacks: int = 0
    lr_scale: float = 1.0
    lr_scale_stage: int = -1

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise GrowlmError(f"counters: expected a dict, got {type(state).__name__}")
        known = {f.name for f in fields(self)}
        renamed = {"flops_seed": "flops_6nd"}  # checkpoints written before the rename
        for key, value in state.items():
            key = renamed.get(key, key)
            if key in known:
                setattr(self, key, value)

    def lr_scale_for(self, stage_index: int) -> float:
        return self.lr_scale if stage_index == self.lr_scale_stage else 1.0


class RNGState:
    """The global torch (and CUDA) generators. Stage weights are drawn from their own seeded
    generators, so only what draws from the global ones (dropout) depends on this."""

    def state_dict(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or not torch.is_tensor(state.get("torch")):
            raise GrowlmError("rng: expected a dict with a 'torch' generator state")
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
