"""How a built stage runs, applied from outside in one place: activation checkpointing,
FSDP sharding, the device, DDP, optimizer-state placement and torch.compile.

The model (growlm.model) stays a plain module; the stage boundary (growlm.train.boundary)
decides what it computes. `Parallelism` is handed to the boundary, which calls `shard` before
the optimizer sees the parameters (FSDP replaces every Parameter by a DTensor one) and `wrap`
once the optimizer holds its state.
"""

from __future__ import annotations

import torch
from torch import nn


class Parallelism:
    def __init__(self, run_cfg, dist, device: torch.device):
        self.run_cfg, self.dist, self.device = run_cfg, dist, device

    @property
    def sharded(self) -> bool:
        return self.dist is not None and self.dist.sharded

    def shard(self, model: nn.Module) -> nn.Module:
        """Activation checkpointing, FSDP (under torchrun with run.distributed = "fsdp"), then
        the device. Before the optimizer is built."""
        if self.run_cfg.activation_checkpointing:
            from growlm.train.distributed import apply_activation_checkpointing

            apply_activation_checkpointing(model)
        if self.dist is not None:
            model = self.dist.prepare(model)
        return model.to(self.device)

    def wrap(self, model: nn.Module, opt: torch.optim.Optimizer) -> nn.Module:
        """What the train step calls: the model, DDP-wrapped and/or compiled. Optimizer state
        loaded whole (from a checkpoint or the previous stage) becomes this rank's shards."""
        if self.dist is not None:
            self.dist.localize_optimizer_state(opt)
            model = self.dist.wrap(model)
        if self.run_cfg.compile:
            # compiled graphs do not notice requires_grad changes: a new stage starts clean
            torch.compiler.reset()
            model = torch.compile(model)
        return model

    def relora_class(self):
        from growlm.adapters.relora import ReLoRA

        return self.dist.relora_class() if self.dist is not None else ReLoRA

    def plain_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole state as CPU tensors (gathered from the shards under FSDP; a collective)."""
        if self.sharded:
            return self.dist.full_state(model)
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def reshard(self, model: nn.Module) -> None:
        if self.dist is not None:
            self.dist.reshard(model)

