"""Numbers as a reader wants them in a table: a few significant digits, units, "-" for unknown.

Every number in `growlm compare`'s terminal table, report.md, report.html and plot captions
goes through one of these, so no raw float (4.923047304153442) reaches a reader.
"""

from __future__ import annotations

import math

from growlm.units import human_bytes

MEMORY_LABELS = {  # the four memory figures of docs/metrics.md, each under its own name
    "model_state_estimated_bytes": "model state, estimated",
    "model_state_bytes": "model state, measured",
    "peak_estimated_bytes": "peak, estimated",
    "peak_measured_bytes": "peak, measured",
}
MEMORY_SHORT = {"model_state_estimated_bytes": "state est.", "model_state_bytes": "state meas.",
                "peak_estimated_bytes": "peak est.", "peak_measured_bytes": "peak meas."}
MEMORY_MEANING = {
    "model_state_estimated_bytes": "weights, gradients and optimizer state by formula "
                                   "(growlm.plan.memory) in the run's precision: in growlm's fp32 "
                                   "storage 16 bytes per trainable and 4 per frozen parameter (runs "
                                   "from before the stage records named a precision: the papers' "
                                   "bf16 16 and 2)",
    "model_state_bytes": "the live bytes of weights, gradients and optimizer state after an "
                         "optimizer step (activations not included)",
    "peak_estimated_bytes": "the planner's estimate of a training step's peak for the run's device "
                            "and precision: weights and optimizer state plus the largest moment of "
                            "the step (loss, backward or optimizer step), activations included "
                            "(growlm.plan.memory)",
    "peak_measured_bytes": "the largest peak of live bytes over the stage's probed steps, "
                           "activations included (the CPU allocator's events, or CUDA's "
                           "max_memory_allocated; run.memory_probe_steps)",
}


def _bad(x) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def fmt_loss(x: float | None) -> str:
    """A loss to 4 decimals: differences of 0.001 matter when comparing runs."""
    return "-" if _bad(x) else f"{x:.4f}"


def fmt_delta(x: float | None) -> str:
    return "-" if _bad(x) else f"{x:+.4f}"


def fmt_flops(x: float | None) -> str:
    """3 significant digits in scientific notation: 4.00e13."""
    if _bad(x) or not x:
        return "-"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fmt_pct(x: float | None) -> str:
    return "-" if _bad(x) else f"{100 * x:+.1f}%"


def fmt_bytes(x: float | None) -> str:
    return "-" if _bad(x) or not x else human_bytes(x)


def fmt_time(seconds: float | None) -> str:
    if _bad(seconds) or not seconds:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def fmt_score(x: float | None) -> str:
    """An accuracy or correlation to 4 decimals; a perplexity to 1 or 2."""
    if _bad(x):
        return "-"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.4f}" if abs(x) <= 1 else f"{x:.2f}"


def fmt_rate(x: float | None) -> str:
    """Tokens per second with thousands separators: 12,345."""
    return "-" if _bad(x) or not x else f"{x:,.0f}"
