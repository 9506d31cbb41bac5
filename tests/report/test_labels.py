"""Stage numbers from 1 and memory figures under their honest names, old run folders included."""

import pytest

from growlm.report import compare as cmp
from growlm.report import load_run, write_report
from growlm.report.runs import one_based_stages, stage_memory

CURVE = [(1e12, 4.5), (1e13, 3.5), (2e13, 2.9), (5e13, 2.3)]
STAGES = [1, 1, 2, 2]


@pytest.mark.parametrize("legacy", [False, True])
def test_stages_are_numbered_from_one_in_new_and_old_files(runs_root, shards, make_run, legacy):
    run = load_run(make_run(runs_root, "r", CURVE, n_stages=2, stage_of_point=STAGES, shards=shards,
                            legacy=legacy))
    assert [s["stage"] for s in run.stages()] == [1, 2]
    assert run.complete and run.finished_stages == {1, 2}
    assert run.final_model_stages() == {2}
    assert run.stage_starts("flops") == [(1e13, "s2")]
    assert run.curve("flops", final_model=True) == ([2e13, 5e13], [2.9, 2.3])


def test_an_unfinished_old_run_reports_its_stage_from_one(runs_root, shards, make_run):
    run = load_run(make_run(runs_root, "r", CURVE[:3], n_stages=2, stage_of_point=[1, 1, 2],
                            stage_ends=[1], shards=shards, legacy=True))
    assert run.status == "in progress (stage 2/2, step 3)"


def test_one_based_stages_shifts_only_old_files():
    new = [{"kind": "step", "stage": 1}, {"kind": "stage", "stage": 2}]
    assert one_based_stages(new) == new
    old = [{"kind": "step", "stage": 0}, {"kind": "stage", "stage": 1}, {"kind": "eval"}]
    assert one_based_stages(old) == [{"kind": "step", "stage": 1}, {"kind": "stage", "stage": 2},
                                     {"kind": "eval"}]


def test_memory_figures_keep_their_names():
    new = stage_memory({"model_state_estimated_bytes": 100, "model_state_bytes": 120,
                        "peak_estimated_bytes": 300, "peak_measured_bytes": None,
                        "peak_measured_by": "cpu allocator"})
    assert new == {"model_state_estimated_bytes": 100, "model_state_bytes": 120,
                   "peak_estimated_bytes": 300, "peak_measured_bytes": None, "peak_measured_by": None,
                   "estimate_precision": None}
    old = {"estimated_bytes": 100, "measured_peak_bytes": 150}
    # on CPU the old "measured peak" counted weights, gradients and optimizer state
    assert stage_memory(old, "cpu") == {"model_state_estimated_bytes": 100, "model_state_bytes": 150,
                                        "peak_estimated_bytes": None, "peak_measured_bytes": None,
                                        "peak_measured_by": None, "estimate_precision": None}
    assert stage_memory(old, "cuda")["peak_measured_bytes"] == 150
    assert stage_memory(old, "cuda")["peak_measured_by"] == "cuda max_memory_allocated"
    assert stage_memory(old, "cuda")["model_state_bytes"] is None


@pytest.mark.parametrize("device, mfu, expected", [("cpu", None, "cpu"), ("cuda", None, "cuda"),
                                                   ("auto", None, "cpu"), ("auto", 0.4, "cuda")])
def test_where_an_old_run_trained(runs_root, shards, make_run, device, mfu, expected):
    run = load_run(make_run(runs_root, "r", CURVE[:2], shards=shards, legacy=True, device=device, mfu=mfu))
    assert run.legacy_device == expected


def _mem(est, state, peak_est=None, peak=None, by=None):
    return {"model_state_estimated_bytes": est, "model_state_bytes": state,
            "peak_estimated_bytes": peak_est, "peak_measured_bytes": peak, "peak_measured_by": by}


def test_report_shows_each_memory_figure_under_its_name(runs_root, shards, make_run, tmp_path):
    base = make_run(runs_root, "base", CURVE, shards=shards,
                    memory=[_mem(2**30, 2**31, 3 * 2**30, 5 * 2**30, "cuda max_memory_allocated")])
    staged = make_run(runs_root, "staged", CURVE, n_stages=2, stage_of_point=STAGES, shards=shards,
                      memory=[_mem(2**29, 2**30, 2**30, 2**31, "cuda max_memory_allocated"),
                              _mem(2**29, 2**30, 2**31, 4 * 2**30, "cuda max_memory_allocated")])
    rows = {r.name: r for r in cmp.summarize(*cmp.load_runs([staged], base))}
    row = rows["staged"]
    assert row.memory["peak_measured_bytes"] == 4 * 2**30
    assert row.memory_reduction["peak_measured_bytes"] == pytest.approx(0.2)
    assert row.memory_reduction["model_state_estimated_bytes"] == pytest.approx(0.5)
    md = write_report([staged], base, tmp_path / "rep").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run | model state, estimated"))
    assert header.split(" | ")[1:9:2] == ["model state, estimated", "model state, measured",
                                          "peak, estimated", "peak, measured"]
    assert "| staged | 512 MiB | +50.0% | 1 GiB | +50.0% | 2 GiB | +33.3% | 4 GiB | +20.0% |" in md
    assert "Peak measured by: cuda max_memory_allocated." in md
    assert "peak mem measured" not in md


def test_cpu_runs_never_call_model_state_a_peak(runs_root, shards, make_run, tmp_path):
    base = make_run(runs_root, "base", CURVE, shards=shards, legacy=True, device="cpu",
                    memory=[(1000, 4000)])
    staged = make_run(runs_root, "staged", CURVE, shards=shards, memory=[(500, 3000)])
    md = write_report([staged], base, tmp_path / "rep").read_text()
    assert "peak, measured" not in md and "peak mem" not in md
    assert "| base (baseline)" not in md  # the baseline's name is in bold
    assert "| **base** (baseline) | 1000 B | +0.0% | 3.91 KiB | +0.0% |" in md
    assert "no measured peak is shown" in md and "base: memory records from an older growlm" in md


def test_stage_table_sets_the_measured_peak_against_the_runs_own_estimate(runs_root, shards, make_run,
                                                                          tmp_path):
    own = {**_mem(2**29, 2**30, 2**31, int(2.2 * 2**30), "torch CPU allocator events, stage steps 1-2"),
           "estimate_precision": "fp32"}
    paper = _mem(2**29, 2**30, 2**31, int(2.2 * 2**30), "cuda max_memory_allocated")  # no precision
    base = make_run(runs_root, "base", CURVE, shards=shards, memory=[own])
    staged = make_run(runs_root, "staged", CURVE, shards=shards, memory=[paper])
    md = write_report([staged], base, tmp_path / "rep").read_text()
    header = next(line for line in md.splitlines() if "| done |" in line)
    assert "peak measured / estimated" in header
    rows = [line for line in md.splitlines() if line.startswith(("| base | 1: s1", "| staged | 1: s1"))]
    # the run's own (fp32) estimate is compared; a record without a precision held the papers'
    # bf16 figure, which is not
    assert "| 1.100 |" in rows[0] and "| - |" in rows[1]
