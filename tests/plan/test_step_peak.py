"""STEP's split by the whole step peak (growlm.plan.step_peak) and its command-line option."""

import itertools
import json

import pytest

from growlm.cli import main
from growlm.config import AdapterSpec, GrowSpec
from growlm.grow import grow, inherited_names
from growlm.model.config import ModelConfig
from growlm.plan.layout import meta_state, parameter_names
from growlm.plan.memory import adapter_params_by_linear, estimate_peak
from growlm.plan.step_ip import solve_step, solve_step_budget, step_problem
from growlm.plan.step_peak import PeakTable, solve_step_peak, stage_layout

CFG = ModelConfig(vocab_size=512, d_model=64, n_layers=8, n_heads=4, max_seq_len=128)


def test_stage_layout_freezes_and_adapts_what_the_run_inherits():
    old, new = CFG.with_(n_layers=3), CFG.with_(n_layers=8)
    _, prov = grow(meta_state(old), old, new, GrowSpec(op="interpolate", add=5), fresh=meta_state(new))
    frozen = inherited_names(prov) & set(parameter_names(new))  # freeze = ["inherited"]
    adapters = adapter_params_by_linear(new, AdapterSpec(rank=4), frozen)
    shape, layout_frozen, layout_adapters = stage_layout(CFG, 3, 5, adapter_rank=4)
    assert shape == new and layout_frozen == frozen and layout_adapters == adapters
    assert stage_layout(CFG, 0, 3) == (CFG.with_(n_layers=3), set(), {})


def test_peak_split_is_the_exact_minimax():
    table = PeakTable(CFG, 4, batch=8, seq_len=128)
    for k in (2, 3):
        sol = solve_step_peak(table, k)
        splits = [s for s in itertools.product(range(1, 9), repeat=k) if sum(s) == 8]
        best = min(max(table.stage_bytes(list(s))) for s in splits)
        assert sol.peak_bytes == best == max(sol.per_stage_bytes) and sum(sol.layers_per_stage) == 8
    shape, frozen, adapters = stage_layout(CFG, 5, 3, 4)
    assert table.peak(5, 3) == estimate_peak(shape, frozen, adapters, 8, 128).peak


def test_activations_move_the_split():
    """With long micro-batches the activations, not the optimizer state, set the peak: the
    model-state optimum front-loads layers, the peak optimum does not."""
    state = solve_step(step_problem(CFG, 4), 3)
    peak = solve_step_peak(PeakTable(CFG, 4, batch=16, seq_len=128), 3)
    assert peak.layers_per_stage != state.layers_per_stage
    assert peak.peak_bytes > state.peak_bytes  # activations come on top of model state


def test_peak_budget_picks_the_fewest_stages_that_fit():
    table = PeakTable(CFG, 4, batch=8, seq_len=128)
    two = solve_step_peak(table, 2).peak_bytes
    sol = solve_step_budget(table, two, solve=solve_step_peak)
    assert sol.fits and sol.stages <= 2 and sol.peak_bytes <= two
    assert not solve_step_budget(table, 2**10, max_stages=3, solve=solve_step_peak).fits


def _cli(capsys, *argv):
    code = main(["plan", "step", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_peak_budget(capsys):
    args = ["--layers", "8", "--d-model", "64", "--n-heads", "4", "--vocab", "512", "--adapter-rank", "4"]
    code, out, _ = _cli(capsys, *args, "--stages", "3", "--json")
    state = json.loads(out)
    code, out, _ = _cli(capsys, *args, "--stages", "3", "--memory", "peak", "--micro-batch", "8",
                        "--seq-len", "128", "--json")
    peak = json.loads(out)
    assert code == 0 and peak["memory"] == "peak" and "micro-batch 8 × 128 tokens" in peak["bytes_are"]
    assert peak["peak_bytes"] > state["peak_bytes"]
    code, out, err = _cli(capsys, *args, "--memory", "peak", "--micro-batch", "8", "--seq-len", "128",
                          "--budget", str(state["peak_bytes"]))
    assert code == 1 and "does not fit" in err  # model state fits; the whole step does not
    code, out, _ = _cli(capsys, *args, "--memory", "peak", "--micro-batch", "8", "--seq-len", "128",
                        "--budget", str(peak["peak_bytes"]))
    assert code == 0 and "step peak" in out


@pytest.mark.parametrize("extra, message", [
    (["--memory", "peak", "--paper-formula"], "--paper-formula"),
    (["--memory", "peak", "--micro-batch", "0"], "--micro-batch must be a positive"),
])
def test_cli_peak_bad_inputs(capsys, extra, message):
    code, _, err = _cli(capsys, "--layers", "4", "--stages", "2", "--d-model", "64", *extra)
    assert code == 2 and message in err and "Traceback" not in err
