"""Gstack's growth factor and growth timing (Du et al., 2024, "Stacking Your Transformers").

Gstack trains a model with L/g layers for d tokens, then stacks it g times and trains on.
The paper recommends g = 4 and fits the growth timing d (tokens) as a function of the target
size N (parameters) and the compute budget C = 6·N·D (FLOPs, D = total tokens):

    log10(d) = 0.88·log10(N) + 163.27 / log10(C) − 5.74

The fit was made on runs of roughly 1e20–1e22 FLOPs and extrapolates badly below that: the
163.27/log10(C) term grows as C shrinks, so for 410M parameters at 8.2B tokens it asks for
d ≈ 19.8B > D. Outside the fitted range (C < 1e20, or d ≥ D) we warn and use a fixed fraction
of the budget instead:

    d = D / 30

Basis: the paper's main experiments stack at d = 10B tokens in runs of 300B tokens (3B and 7B
targets), i.e. 1/30 of the run, and its growth-timing ablations find the loss flat over a wide
band of small d. A fixed fraction keeps the small model's share of compute (≈ d·N/(g·D·N)
< 1%) and of the run's tokens the same at any scale, which stays sensible for the tiny models
we train on CPU; the fitted rule gives fractions in the same range where it is valid (e.g.
11.1B of 2T tokens for Llama2-7B, 20.5B of 300B for a 7B model).
"""

from __future__ import annotations

import math
import warnings

from growlm.errors import GrowlmError

GROWTH_FACTOR = 4
FIT_MIN_FLOPS = 1e20
FALLBACK_FRACTION = 1 / 30


class GrowthTimingWarning(UserWarning):
    """The fitted growth-timing rule is used outside its range; a fallback was applied."""


def fitted_growth_tokens(params: float, flops: float) -> float:
    """d from the paper's fit (tokens), valid for `flops` ≳ 1e20."""
    return 10 ** (0.88 * math.log10(params) + 163.27 / math.log10(flops) - 5.74)


def gstack_timing(N: float, D: float, C: float | None = None) -> dict:
    """Growth factor and timing for a target of `N` parameters trained on `D` tokens.

    `C` (FLOPs) defaults to 6·N·D. Returns ``growth_factor``, ``growth_tokens`` (int),
    ``fit_tokens`` (the fit's raw answer, or None when it cannot be evaluated), ``flops``,
    ``rule`` ("fit" or "fallback") and ``warning`` (None, or why the fallback was used).
    """
    for what, value in (("parameter count", N), ("token count", D)):
        if not value or value <= 0 or not math.isfinite(value):
            raise GrowlmError(f"{what} must be a positive number, got {value}")
    if C is not None and (C <= 0 or not math.isfinite(C)):
        raise GrowlmError(f"compute budget must be a positive number of FLOPs, got {C}")
    flops = float(C) if C is not None else 6.0 * N * D
    fit = fitted_growth_tokens(N, flops) if flops > 10 else None
    warning = None
    if flops < FIT_MIN_FLOPS:
        warning = f"compute {flops:.3g} FLOPs is below the fitted range (≥ {FIT_MIN_FLOPS:.0e})"
    elif fit is not None and fit >= D:
        warning = f"the fitted growth timing {fit:.3g} tokens is not below the budget of {D:.3g} tokens"
    if warning is None:
        tokens, rule = fit, "fit"
    else:
        tokens, rule = D * FALLBACK_FRACTION, "fallback"
        warning += f"; using D/{round(1 / FALLBACK_FRACTION)} = {tokens:.3g} tokens instead"
        warnings.warn(warning, GrowthTimingWarning, stacklevel=2)
    return {
        "growth_factor": GROWTH_FACTOR,
        "growth_tokens": max(1, int(round(tokens))),
        "fit_tokens": fit,
        "flops": flops,
        "params": N,
        "tokens": D,
        "rule": rule,
        "warning": warning,
    }
