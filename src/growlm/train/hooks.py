"""Hooks around the train step: progress and log lines, fault injection, scheduled benchmarks.

A hook implements any of

    stage_start(trainer, built, start_step)     a stage begins (or resumes)
    step_start(trainer, built, stage_step)      a step begins (0-based step of the stage)
    pre_backward(loss, micro) -> loss           a micro-batch's loss, before its backward
    post_backward(built)                        every micro-batch's backward is done
    post_update(built)                          the optimizer stepped; gradients still alive
    step_record(trainer, built, record)         the step is done; may add to its record
    step_end(trainer, built, record, last)      the step's metrics record was written
    stage_end(trainer, built)                   the stage's steps are done, before the boundary

so the step itself (growlm.train.step) and the stage loop stay short. Benchmarks scored during
training (`[eval]`) are a hook made by the command layer from growlm.eval, which the trainer
does not import.
"""

from __future__ import annotations

import math
import os

import torch

from growlm.faults import fault
from growlm.units import human_bytes, human_count


class Hook:
    def stage_start(self, trainer, built, start_step: int) -> None:
        pass

    def step_start(self, trainer, built, stage_step: int) -> None:
        pass

    def pre_backward(self, loss: torch.Tensor, micro: int) -> torch.Tensor:
        return loss

    def post_backward(self, built) -> None:
        pass

    def post_update(self, built) -> None:
        pass

    def step_record(self, trainer, built, record: dict) -> None:
        pass

    def step_end(self, trainer, built, record: dict, last: bool) -> None:
        pass

    def stage_end(self, trainer, built) -> None:
        pass


class ModelStateBytes(Hook):
    """Bytes of the live weights, gradients and optimizer state, counted once per stage right
    after its first update (when all three exist): the quantity the planner's model-state
    estimate describes, measured on the tensors."""

    def __init__(self):
        self.bytes: int | None = None

    def stage_start(self, trainer, built, start_step) -> None:
        self.bytes = None

    def post_update(self, built) -> None:
        if self.bytes is None:
            from growlm.plan.memory import tensor_bytes

            params = {id(p): p for p in built.model.parameters()}.values()
            grads = [p.grad for p in params if p.grad is not None]
            states = [v for s in built.optimizer.state.values() for v in s.values()]
            self.bytes = tensor_bytes(params) + tensor_bytes(grads) + tensor_bytes(states)


class PeakMemoryProbe(Hook):
    """The peak of live bytes during whole training steps, activations included
    (growlm.memory_probe.PeakMemory: the CPU allocator's events, or CUDA's
    max_memory_allocated reset at each step), on the first `first` steps of every stage (of a
    resumed stage too) and on every `every`-th step of a stage (0: never). Each probed step's
    record gets its `peak_measured_bytes`; `peak_bytes` and `measured_by` hold the stage's
    largest so far, for its end record. The probe only observes the allocator: no computed
    number changes (tests/train/test_trainer.py)."""

    LABELS = {"cuda_allocator": "torch.cuda.max_memory_allocated",
              "cpu_allocator_events": "torch CPU allocator events",
              "process_rss": "process peak resident size (profiler in use)",
              "process_rss_lifetime": "process lifetime peak resident size (profiler in use)"}

    def __init__(self, first: int, every: int, device: torch.device):
        self.first, self.every, self.device = first, every, device
        self.peak_bytes: int | None = None
        self.method: str | None = None
        self.steps: list[int] = []  # stage steps probed, from 1
        self._until = 0
        self._window = None

    def close(self) -> None:
        """End a window a step left open by raising (a rollback, a stop): the profiler must
        not keep running in the process."""
        if self._window is not None:
            self._window.stop()
            self._window = None

    def stage_start(self, trainer, built, start_step) -> None:
        self.close()
        self.peak_bytes, self.method, self.steps = None, None, []
        self._until = start_step + self.first

    def step_start(self, trainer, built, stage_step) -> None:
        from growlm.memory_probe import PeakMemory

        self.close()
        if stage_step < self._until or (self.every and (stage_step + 1) % self.every == 0):
            self._window = PeakMemory(self.device).start()
            self.steps.append(stage_step + 1)

    def step_record(self, trainer, built, record) -> None:
        if self._window is None:
            return
        window, self._window = self._window.stop(), None
        record["peak_measured_bytes"] = window.peak_bytes
        if self.peak_bytes is None or window.peak_bytes > self.peak_bytes:
            self.peak_bytes, self.method = window.peak_bytes, window.method

    @property
    def measured_by(self) -> str | None:
        if self.peak_bytes is None:
            return None
        return f"{self.LABELS.get(self.method, self.method)}, stage steps {_ranges(self.steps)}"


def _ranges(steps: list[int], most: int = 6) -> str:
    """[1, 2, 3, 10, 20] → "1-3, 10, 20" (at most `most` runs, then "...")."""
    runs: list[list[int]] = []
    for s in steps:
        if runs and runs[-1][1] == s - 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    text = [f"{a}-{b}" if b > a else str(a) for a, b in runs[:most]]
    return ", ".join(text) + (", ..." if len(runs) > most else "")


class FaultInjection(Hook):
    """Test hooks. GROWLM_FAULT_NAN="5,9:inf,12:grad,14:weights" makes the loss NaN (or inf),
    one gradient NaN ("grad"), or, after the optimizer's update, one weight infinite ("weights":
    what an update that overflows leaves behind) at those global steps (1-based); each listed
    step is poisoned only the first time it is reached, so a rollback that replays it trains on. GROWLM_FAULT=train_step
    (growlm.faults) ends the process after the backward, before the optimizer step."""

    def __init__(self):
        self.done: set[int] = set()
        self.step = 0
        self.kind: str | None = None

    def begin_step(self, global_step: int) -> None:
        self.step, self.kind = global_step, None
        spec = os.environ.get("GROWLM_FAULT_NAN")
        if not spec or global_step in self.done:
            return
        for item in spec.split(","):
            step, _, kind = item.strip().partition(":")
            if step.isdigit() and int(step) == global_step:
                self.done.add(global_step)
                self.kind = kind or "nan"

    def pre_backward(self, loss, micro):
        if self.kind in ("nan", "inf") and micro == 0:
            return loss * float(self.kind)
        return loss

    def post_backward(self, built) -> None:
        if self.kind == "grad":
            next(p for p in built.trainable if p.grad is not None).grad.view(-1)[0] = math.nan
        fault("train_step")

    def post_update(self, built) -> None:
        if self.kind == "weights":  # a norm's weight: every token's forward reads it
            norm = next((p for p in built.trainable if p.dim() == 1), built.trainable[0])
            with torch.no_grad():
                norm.view(-1)[0] = math.inf


class CompileWatch(Hook):
    """Counts the graphs torch.compile builds in each stage (`run.compile = true`).

    A stage compiles its graphs in its first step (in this process: a resumed stage compiles
    again). A graph built after that is a recompilation, which on a GPU can cost as much as
    hundreds of steps; the stage's end warns about it. `stages` maps the stage number to
    {"first_step": graphs built in the first step, "later": graphs built after it}. The count
    is torch._dynamo's process-wide `unique_graphs` counter, which `torch.compiler.reset()`
    (called at every stage boundary) leaves alone.
    """

    def __init__(self):
        self.stages: dict[int, dict[str, int]] = {}
        self._start = self._first = None

    @staticmethod
    def graphs() -> int:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    def stage_start(self, trainer, built, start_step) -> None:
        self._start, self._first = self.graphs(), None

    def step_end(self, trainer, built, record, last) -> None:
        if self._first is None:
            self._first = self.graphs()

    def stage_end(self, trainer, built) -> None:
        now = self.graphs()
        first = now if self._first is None else self._first
        counts = {"first_step": first - self._start, "later": now - first}
        self.stages[built.stage.number] = counts
        if counts["later"]:
            trainer.warn(f"stage {built.stage.number}: torch.compile built {counts['later']} more "
                         f"graph(s) after the stage's first step (recompilation; "
                         "TORCH_LOGS=recompiles says why)")


def describe_stage(stage, acct: dict, opt_state: str) -> str:
    """The line printed when a stage starts."""
    m, p, f = stage.model, acct["params"], acct["flops_per_token"]
    layers = f"{m.n_layers} layer{'s' if m.n_layers != 1 else ''}"
    return (f"stage {stage.number} '{stage.name}': {layers} × d{m.d_model}, {stage.steps} steps "
            f"(schedule horizon {stage.schedule_steps}), lr {stage.lr:g} | params trainable "
            f"{human_count(p['trainable'])}, frozen {human_count(p['frozen'])}, adapter "
            f"{human_count(p['adapter'])} | FLOPs/token exact {human_count(f['exact'])} (6·N·D formula "
            f"{human_count(f['6nd'])}) | est. peak memory {human_bytes(acct['memory']['peak_estimated_bytes'])} "
            f"(model state {human_bytes(acct['memory']['model_state_estimated_bytes'])}; "
            f"{acct['memory'].get('estimate_precision', 'bf16-mixed')}) | optimizer state {opt_state}"
            f"{_growth_note(stage, acct)}")


def _growth_note(stage, acct: dict) -> str:
    learn, grow = acct.get("growth_phase"), stage.spec.grow
    if learn:
        return (f" | first {learn['steps']} steps train {human_count(learn['map_params'])} growth-map "
                f"parameters at lr {learn['lr']:g}")
    if grow is not None and grow.mask_steps:
        return f" | growth masks ramp 0 → 1 over {grow.mask_steps} steps"
    return ""


class Progress(Hook):
    """A bar (terminal) or plain lines (log), plus a line every `run.log_every` steps that
    stays on screen: step, loss, LR, grad norm, tokens/s."""

    def __init__(self, log_every: int):
        self.log_every = log_every
        self.bar = None

    def stage_start(self, trainer, built, start_step):
        from growlm.progress import progress

        stage = built.stage
        if start_step == 0:
            trainer.log(describe_stage(stage, trainer.accounting, built.opt_state))
        # in a log file the log_every lines are the progress; a terminal also gets a bar
        self.bar = progress(stage.steps, stage.name, enabled=trainer.verbose, initial=start_step,
                            unit="step", every=0)

    def step_end(self, trainer, built, record, last):
        if self.bar is None:
            return
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
        self.bar.update(1)
        if record["stage_step"] % self.log_every == 0 or last:
            trainer.log(f"{built.stage.name} step {record['stage_step']}/{built.stage.steps} "
                        f"(global {record['step']}) loss {record['loss']:.4f} lr {record['lr']:.3g} "
                        f"grad norm {record['grad_norm']:.3g} {record['tokens_per_s']:,.0f} tok/s")

    def stage_end(self, trainer, built):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
