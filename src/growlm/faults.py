"""Fault injection for the reliability tests and the kill harness (benchmarks/faults).

Nothing here runs unless the environment asks for it, so a normal run pays one dictionary
lookup per call.
"""

from __future__ import annotations

import os
import signal

_fault_hits: dict[str, int] = {}


def fault(point: str) -> None:
    """Test hook: GROWLM_FAULT=<point>[:N[:kill|term]] ends the process the N-th time it
    passes here (only the rank GROWLM_FAULT_RANK when that is set): os._exit(17), SIGKILL with
    ":kill", or, with ":term", a SIGTERM to itself after which it goes on as after a real one
    (the trainer stops at its next chance). Points: train_step (after backward, before the
    optimizer step), relora_merge (before a ReLoRA merge-and-reset), checkpoint_mid_write,
    checkpoint_before_rename, checkpoint_prune (an old checkpoint renamed aside, not yet
    deleted), stage_boundary (right after a stage's boundary checkpoint)."""
    spec = os.environ.get("GROWLM_FAULT")
    if not spec:
        return
    only = os.environ.get("GROWLM_FAULT_RANK")
    if only is not None and only != os.environ.get("RANK", "0"):
        return
    name, _, rest = spec.partition(":")
    nth, _, how = rest.partition(":")
    if name == point:
        _fault_hits[point] = _fault_hits.get(point, 0) + 1
        if _fault_hits[point] == int(nth or 1):
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "term":
                os.kill(os.getpid(), signal.SIGTERM)
                return
            os._exit(17)
