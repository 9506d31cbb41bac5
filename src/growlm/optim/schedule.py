"""Learning-rate multipliers: pure functions of the step, returning a factor of the peak LR.

`step` is the 0-based index of the optimizer step about to be taken, the convention of
`torch.optim.lr_scheduler.LambdaLR` (factor(0) is used for the first update). Warmup is
linear and never returns 0, so no step is wasted: factor = (step+1)/(warmup+1).

ReLoRA's jagged schedule (Lialin et al. 2023, with a cosine envelope) generalises to every
envelope here: after each reset (at multiples of `reset_every`) the LR falls to about zero and
re-warms linearly over `rewarmup` steps up to the envelope's value at the end of the re-warmup.

`lr_schedule` is the one place that turns a stage's settings into its schedule; the trainer
and the recipe checks both call it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal

from growlm.errors import GrowlmError

Schedule = Callable[[int], float]


def _warmup(step: int, warmup: int) -> float:
    return (step + 1) / (warmup + 1)


def _progress(step: int, warmup: int, horizon: int) -> float:
    """0 at the end of warmup, 1 at `horizon` and after."""
    return min(1.0, max(0.0, (step - warmup) / max(1, horizon - warmup)))


def warmup_cosine(step: int, warmup: int, horizon: int, min_ratio: float = 0.0) -> float:
    """Linear warmup, then cosine from 1 down to `min_ratio` at `horizon`; flat after."""
    if step < warmup:
        return _warmup(step, warmup)
    cos = 0.5 * (1.0 + math.cos(math.pi * _progress(step, warmup, horizon)))
    return min_ratio + (1.0 - min_ratio) * cos


def linear(step: int, warmup: int, horizon: int, min_ratio: float = 0.0) -> float:
    """Linear warmup, then linear decay from 1 to `min_ratio` at `horizon`; flat after."""
    if step < warmup:
        return _warmup(step, warmup)
    return 1.0 - (1.0 - min_ratio) * _progress(step, warmup, horizon)


def constant(step: int, warmup: int = 0, horizon: int = 0, min_ratio: float = 1.0) -> float:
    """Linear warmup, then 1. (`horizon` and `min_ratio` are accepted for a uniform signature.)"""
    return _warmup(step, warmup) if step < warmup else 1.0


def jagged(envelope: Schedule, step: int, reset_every: int, rewarmup: int) -> float:
    """`envelope(step)`, re-warmed from ~0 over `rewarmup` steps after every reset."""
    if reset_every <= 0:
        raise ValueError(f"reset_every must be positive, got {reset_every}")
    cycle, into = divmod(step, reset_every)
    if cycle >= 1 and into < rewarmup:
        return _warmup(into, rewarmup) * envelope(cycle * reset_every + rewarmup)
    return envelope(step)


def jagged_cosine(
    step: int,
    warmup: int,
    horizon: int,
    min_ratio: float,
    reset_every: int,
    rewarmup: int,
) -> float:
    """ReLoRA's schedule: `warmup_cosine`, re-warmed from ~0 after every reset."""
    envelope = partial(warmup_cosine, warmup=warmup, horizon=horizon, min_ratio=min_ratio)
    return jagged(envelope, step, reset_every, rewarmup)


_KINDS = {"cosine": warmup_cosine, "linear": linear, "constant": constant}


def _jagged(step: int, *, envelope: Schedule, reset_every: int, rewarmup: int) -> float:
    return jagged(envelope, step, reset_every, rewarmup)


def lr_schedule(
    kind: Literal["cosine", "linear", "constant"],
    *,
    warmup: int,
    horizon: int,
    min_ratio: float,
    reset_every: int | None = None,
    rewarmup: int = 0,
) -> Schedule:
    """A step → factor function (picklable, for LambdaLR): the `kind` envelope, re-warmed after
    every ReLoRA reset when `reset_every` is given. Raises GrowlmError naming the key at fault."""
    if kind not in _KINDS:
        raise GrowlmError(f"schedule: unknown kind {kind!r}; allowed: {', '.join(_KINDS)}")
    if warmup < 0 or horizon < 0:
        raise GrowlmError(f"warmup_steps: warmup ({warmup}) and horizon ({horizon}) must be >= 0")
    if not 0.0 <= min_ratio <= 1.0:
        raise GrowlmError(f"min_lr_ratio: must be in [0, 1], got {min_ratio}")
    envelope = partial(_KINDS[kind], warmup=warmup, horizon=horizon, min_ratio=min_ratio)
    if reset_every is None:
        return envelope
    if reset_every <= 0 or not 0 <= rewarmup < reset_every:
        raise GrowlmError(
            f"adapters.rewarmup_steps: re-warmup ({rewarmup} steps) must be >= 0 and shorter than "
            f"the reset interval ({reset_every} steps)"
        )
    return partial(_jagged, envelope=envelope, reset_every=reset_every, rewarmup=rewarmup)
