"""Planning: per-stage FLOP and memory accounting, STEP's integer program, Gstack's timing.

The trainer imports `count_flops` every stage, so this package imports only the accounting
eagerly; the STEP solver (scipy) and the rest load on first use. A recipe's plan
(`growlm.train.plan`) builds the stages with the trainer's boundary code, so it lives with
the trainer.
"""

from growlm.plan.flops import FlopCount, count_flops
from growlm.plan.memory import (
    PeakEstimate,
    activation_bytes,
    adapter_params,
    adapter_params_by_linear,
    estimate_peak,
    model_state_bytes,
    param_counts,
)

_LAZY = {
    "gstack_timing": "growlm.plan.gstack",
    "StepProblem": "growlm.plan.step_ip",
    "StepSolution": "growlm.plan.step_ip",
    "solve_step": "growlm.plan.step_ip",
    "solve_step_budget": "growlm.plan.step_ip",
    "step_problem": "growlm.plan.step_ip",
    "PeakTable": "growlm.plan.step_peak",
    "solve_step_peak": "growlm.plan.step_peak",
}

__all__ = ["FlopCount", "count_flops", "PeakEstimate", "activation_bytes", "adapter_params",
           "adapter_params_by_linear", "estimate_peak", "model_state_bytes", "param_counts", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'growlm.plan' has no attribute {name!r}")
