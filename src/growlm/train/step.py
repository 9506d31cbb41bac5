"""One optimizer step: forward and backward over the step's micro-batches, clip, update.

The loss of a step is the sum of the token losses over every target token of the step —
all micro-batches, all ranks — divided by the number of those target tokens. So the gradient
does not depend on `micro_batch_size` or the world size, which only say how the same global
batch is split, also when micro-batches hold different numbers of target tokens (a masked or
instruction-tuning loss). Each micro-batch's backward is scaled by world_size / N_target: DDP
and FSDP average gradients over ranks, which turns it back into 1 / N_target.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # targets that carry no loss (padding, prompts in instruction tuning)


@dataclass
class StepResult:
    loss: float  # sum of token losses / target tokens, over the whole step on every rank
    grad_norm: float
    target_tokens: int

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def token_loss_sum(module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropies over the targets of `y` that are not IGNORE_INDEX
    (fp32 scalar); x, y: (batch, seq) token ids. The model takes the loss itself, in chunks,
    so the (batch, seq, vocab) logits never exist (growlm.model.loss)."""
    return module(x, labels=y)


def train_step(built, batches: list[tuple[torch.Tensor, torch.Tensor]], *, lr: float,
               grad_clip: float, dist=None, autocast=contextlib.nullcontext, hooks=()) -> StepResult:
    """Run one step of `built` (a growlm.train.boundary.BuiltStage) on `batches`, the step's
    micro-batches on this rank. The update is skipped (and the gradients dropped) when the
    loss or the gradient norm is not finite; the caller decides what that means."""
    for group in built.optimizer.param_groups:
        group["lr"] = lr
    n_local = sum(int((y != IGNORE_INDEX).sum()) for _, y in batches)
    n_target = dist.sum_int(n_local) if dist else n_local
    scale = (dist.world_size if dist else 1) / max(n_target, 1)
    loss_sum = None
    for i, (x, y) in enumerate(batches):
        last = i == len(batches) - 1
        sync = dist.no_sync(built.module, not last) if dist else contextlib.nullcontext()
        with sync, autocast():
            loss = token_loss_sum(built.module, x, y)
            for hook in hooks:
                loss = hook.pre_backward(loss, i)
            (loss * scale).backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    for hook in hooks:
        hook.post_backward(built)
    if dist:
        loss_sum = dist.sum(loss_sum)
    clip = grad_clip if grad_clip > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(built.trainable, clip))
    result = StepResult(float(loss_sum) / max(n_target, 1), grad_norm, n_target)
    if result.finite:
        built.optimizer.step()
        for hook in hooks:  # weights, gradients and optimizer state are all alive here
            hook.post_update(built)
    built.optimizer.zero_grad(set_to_none=True)
    return result
