"""benchmarks/gpu_check.py --cpu-smoke: every GPU check's code path, at a tiny size on CPU.

The GPU run itself needs a GPU; this runs the same functions (throughput eager and compiled,
the chunked loss, frozen speed, the trainer's memory on a full and a STEP recipe, the STEP
recipe compiled across its boundary, FSDP2 over one rank) so that they cannot rot unseen.
Numbers measured here mean nothing (2 shared cores); the test checks that each check ran and
that its figures are there and consistent.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "smoke.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out),
                           "--workdir", str(tmp / "work")],
                          capture_output=True, text=True, timeout=1800)
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_every_check_runs(smoke):
    proc, report = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["mode"] == "cpu-smoke" and report["environment"]["device"] == "cpu"
    assert set(report["checks"]) == {
        "throughput.tiny.eager", "chunked_loss", "frozen_speed", "memory.full", "memory.step",
        "step.eager", "step.compiled", "fsdp2", "throughput.tiny.compiled"}
    assert all(c["status"] == "ok" for c in report["checks"].values())


@pytest.mark.slow
def test_throughput_reports_every_variant_and_ratio(smoke):
    checks = smoke[1]["checks"]
    compiled = checks["throughput.tiny.compiled"]["result"]
    assert set(compiled["variants"]) == {"growlm eager", "hf eager", "growlm compiled",
                                         "hf compiled"}
    assert set(compiled["ratios"]) == {"growlm/hf eager", "growlm/hf compiled",
                                       "growlm compiled/eager", "hf compiled/eager"}
    first = [v["first_loss"] for v in compiled["variants"].values()]
    assert max(first) - min(first) < 1e-4 * abs(first[0]), "same weights, same batch"
    assert all(v["tokens_per_s"] > 0 and v["mfu"] is None for v in compiled["variants"].values())
    assert set(checks["throughput.tiny.eager"]["result"]["variants"]) == {"growlm eager", "hf eager"}


@pytest.mark.slow
def test_memory_and_compile_checks_cover_both_stages(smoke):
    checks = smoke[1]["checks"]
    step = checks["memory.step"]["result"]
    assert set(step["stages"]) == {"1", "2"}
    grown = step["stages"]["2"]
    assert grown["params"]["frozen"] > 0 and grown["params"]["adapter"] > 0
    assert grown["peak_measured_bytes"] > 0 and grown["peak_estimated_bytes"] > 0
    compiled = checks["step.compiled"]["result"]
    assert compiled["compile_graphs"] == {"1": {"first_step": 1, "later": 0},
                                          "2": {"first_step": 1, "later": 0}}
    assert len(compiled["losses"]) == 5
    assert compiled["loss_max_rel_diff_vs_eager"] < 1e-5  # fp32 on CPU
    fsdp = checks["fsdp2"]["result"]
    assert fsdp["loss_max_rel_diff_vs_eager"] < 1e-5
    # mid-stage checkpoints through torch.distributed.checkpoint, stage ends whole
    assert {c["sharded"] for c in fsdp["checkpoints"]} == {True, False}
    assert set(checks["frozen_speed"]["result"]["setups"]) == {
        "full", "frozen_embed_head", "frozen_lower", "step_relora"}
    assert checks["chunked_loss"]["result"]["512"]["loss_rel_diff"] < 1e-5


def test_gpu_mode_without_cuda_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gpu_check: no CUDA device; run on a GPU machine, or pass --cpu-smoke"
    assert not (tmp_path / "x.json").exists()
