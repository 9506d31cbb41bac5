"""The trainer's peak-memory probe: measured peaks in the records, and nothing else changed."""

import json

from growlm.config import load_recipe
from growlm.train.hooks import Hook
from growlm.train.trainer import Trainer


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _run(recipe, *overrides, hooks=()):
    trainer = Trainer(load_recipe(recipe, list(overrides)), quiet=True, hooks=hooks)
    trainer.run()
    return trainer, _rows(trainer.out)


def test_stage_records_measure_a_peak_above_model_state(write_recipe):
    trainer, rows = _run(write_recipe(), "run.memory_probe_every=4")
    ends = [r for r in rows if r["kind"] == "stage" and r["event"] == "end"]
    starts = [r for r in rows if r["kind"] == "stage" and r["event"] == "start"]
    assert len(ends) == 2
    for end in ends:
        mem = end["memory"]
        # the peak of live bytes includes activations, logits and workspace: above model state
        assert mem["peak_measured_bytes"] > mem["model_state_bytes"] > 0
        assert mem["peak_measured_by"] == "torch CPU allocator events, stage steps 1-2, 4"
        assert mem["estimate_precision"] == "fp32"  # the estimate is for this run's device
        assert mem["peak_estimated_bytes"] > mem["model_state_estimated_bytes"]
    # nothing measured yet when a stage starts (not the previous stage's figures)
    assert all(s["memory"]["peak_measured_bytes"] is None and s["memory"]["model_state_bytes"] is None
               for s in starts)
    steps = [r for r in rows if r["kind"] == "step"]
    probed = [r["stage_step"] for r in steps if "peak_measured_bytes" in r]
    assert probed == [1, 2, 4, 1, 2, 4]
    for end in ends:
        stage = [r for r in steps if r["stage"] == end["stage"] and "peak_measured_bytes" in r]
        assert end["memory"]["peak_measured_bytes"] == max(r["peak_measured_bytes"] for r in stage)


def test_probing_changes_no_computed_number(write_recipe, step_losses):
    off, _ = _run(write_recipe(name="off"), "run.memory_probe_steps=0")
    on, rows = _run(write_recipe(name="on"), "run.memory_probe_every=1")
    assert step_losses(on.out) == step_losses(off.out)
    assert all("peak_measured_bytes" in r for r in rows if r["kind"] == "step")
    off_rows = _rows(off.out)
    assert not any("peak_measured_bytes" in r for r in off_rows if r["kind"] == "step")
    end = next(r for r in off_rows if r["kind"] == "stage" and r["event"] == "end")
    assert end["memory"]["peak_measured_bytes"] is None and end["memory"]["peak_measured_by"] is None


class _HandOffWatch(Hook):
    def __init__(self):
        self.held = []

    def step_start(self, trainer, built, stage_step):
        self.held.append(trainer._handoff is not None)


def test_previous_stage_weights_are_not_held_while_training(write_recipe):
    """The hand-off (the previous stage's full weights) is dropped once the stage is built."""
    watch = _HandOffWatch()
    _run(write_recipe(name="handoff"), hooks=[watch])
    assert len(watch.held) == 12 and not any(watch.held)


def test_plan_sets_the_measured_peak_beside_the_runs_estimate(write_recipe):
    from growlm.train.plan import format_plan, plan_recipe

    recipe = write_recipe(name="planned")
    trainer, _ = _run(recipe)
    plan = plan_recipe(load_recipe(recipe))
    for stage in plan["stages"]:
        m = stage["measured"]
        assert m["estimate_precision"] == "fp32" == stage["as_run"]["precision"]
        assert m["peak_estimated_bytes"] == stage["as_run"]["peak_bytes"]
        assert m["peak_measured_bytes"] > m["model_state_bytes"]
    text = format_plan(plan)
    assert text.count("memory as run (fp32): model state") == 2 and "measured/estimated" in text


def test_a_run_failing_in_a_probed_step_leaves_no_profiler_running(write_recipe, monkeypatch):
    import pytest
    import torch

    from growlm.errors import GrowlmError

    monkeypatch.setenv("GROWLM_FAULT_NAN", "1")  # the first (probed) step's loss is NaN
    with pytest.raises(GrowlmError, match="non-finite"):
        _run(write_recipe(name="stopped"), "train.nonfinite=stop")
    assert not torch.autograd._profiler_enabled()


def test_a_resumed_stage_probes_its_first_steps_after_the_resume(write_recipe, run_cli):
    recipe = write_recipe(name="resumed")
    # the second checkpoint write (step 4) dies: the run resumes from step 2, inside stage 1
    proc = run_cli("train", str(recipe), "--quiet", env={"GROWLM_FAULT": "checkpoint_mid_write:2"})
    assert proc.returncode == 17
    trainer = Trainer(load_recipe(recipe), resume=True, quiet=True)
    trainer.run()
    ends = [r for r in _rows(trainer.out) if r["kind"] == "stage" and r["event"] == "end"]
    assert [e["memory"]["peak_measured_by"].rsplit(", ", 1)[-1] for e in ends] == \
        ["stage steps 3-4", "stage steps 1-2"]
    assert all(e["memory"]["peak_measured_bytes"] > e["memory"]["model_state_bytes"] for e in ends)
