import json
from pathlib import Path

import pytest
import torch

from growlm.cli import main
from growlm.errors import GrowlmError
from growlm.init_source import load_init, resolve_best, resolve_init
from growlm.sweep import parse_grid, run_sweep, split_values, variants


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    """~150 KB of the built-in corpus with a 320-token BPE (a few seconds)."""
    from growlm.data import prepare

    out = tmp_path_factory.mktemp("shards") / "tiny"
    prepare(out, ["builtin:python:150KB"], train_vocab=320, val_fraction=0.2, progress=False,
            log=lambda *_: None)
    return out


RECIPE = """
[run]
name = "t"
eval_tokens = 256
[model]
vocab_size = 320
d_model = 32
n_layers = 1
n_heads = 2
max_seq_len = 32
[data]
train = "{data}"
seq_len = 32
[train]
global_batch_tokens = 128
micro_batch_size = 4
[schedule]
warmup_steps = 1
{stages}
"""

ONE_STAGE = """
[[stage]]
name = "only"
steps = 3
"""


def _writer(folder: Path, shards: Path):
    def write(stages: str = ONE_STAGE, name: str = "recipe") -> Path:
        path = folder / f"{name}.toml"
        path.write_text(RECIPE.format(data=shards.as_posix(), stages=stages))
        return path

    return write


@pytest.fixture
def recipe(tmp_path, tiny_shards):
    return _writer(tmp_path, tiny_shards)


def _quiet(*_):
    pass


# ---------------------------------------------------------------- grid parsing

def test_split_values_respects_brackets_and_quotes():
    assert split_values("1e-3, 3e-3,1e-2") == ["1e-3", "3e-3", "1e-2"]
    assert split_values("[0.9,0.95],[0.9,0.99]") == ["[0.9,0.95]", "[0.9,0.99]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]


def test_parse_grid_separates_axes_from_fixed_values():
    fixed, axes = parse_grid(["stage.1.lr=1e-3,3e-3", "optim.weight_decay=0.0", "seed=1,2"])
    assert fixed == ["optim.weight_decay=0.0"]
    assert axes == [("stage.1.lr", ["1e-3", "3e-3"]), ("seed", ["1", "2"])]
    names = [v["name"] for v in variants(axes)]
    assert names == ["stage.1.lr=1e-3__seed=1", "stage.1.lr=1e-3__seed=2",
                     "stage.1.lr=3e-3__seed=1", "stage.1.lr=3e-3__seed=2"]


@pytest.mark.parametrize("item, message", [
    ("stage.1.lr", "expected key=value"),
    ("=1,2", "empty key"),
    ("lr=1,,2", "empty value"),
    ("lr=1,1", "repeated values"),
])
def test_bad_grid_items_are_refused(item, message):
    with pytest.raises(GrowlmError, match=message):
        parse_grid([item])


def test_a_key_given_twice_is_refused():
    with pytest.raises(GrowlmError, match="given twice"):
        parse_grid(["optim.lr=1,2", "optim.lr=3"])


# ---------------------------------------------------------------- running

def test_sweep_runs_the_grid_picks_the_best_and_skips_finished_variants(recipe, tmp_path):
    out = tmp_path / "sweep"
    summary = run_sweep(recipe(), ["optim.lr=1e-4,2e-2"], out, quiet=True, log=_quiet)
    entries = {e["name"]: e for e in summary["variants"]}
    assert set(entries) == {"optim.lr=1e-4", "optim.lr=2e-2"}
    assert all(e["status"] == "complete" for e in entries.values())
    losses = {n: e["final_val_loss"] for n, e in entries.items()}
    assert summary["best"] == min(losses, key=losses.get)
    on_disk = json.loads((out / "sweep.json").read_text())
    assert on_disk["best"] == summary["best"] and on_disk["grid"] == {"optim.lr": ["1e-4", "2e-2"]}
    cfg = json.loads((out / "optim.lr=2e-2" / "run.json").read_text())["config"]
    assert cfg["optim"]["lr"] == 2e-2 and cfg["run"]["name"] == "t-optim.lr=2e-2"
    # a second invocation trains nothing
    before = {n: (out / n / "metrics.jsonl").stat().st_mtime_ns for n in entries}
    messages = []
    again = run_sweep(recipe(), ["optim.lr=1e-4,2e-2"], out, quiet=True, log=messages.append)
    assert again["best"] == summary["best"]
    assert all("complete, skipped" in m for m in messages)
    assert before == {n: (out / n / "metrics.jsonl").stat().st_mtime_ns for n in entries}


def test_interrupted_variant_resumes(recipe, tmp_path, monkeypatch):
    """A variant killed after a mid-stage checkpoint continues from it on the next invocation."""
    from growlm.train import trainer as trainer_mod

    out = tmp_path / "sweep"
    stages = ONE_STAGE.replace("steps = 3", "steps = 4")
    path = recipe(stages)
    text = path.read_text().replace('name = "t"', 'name = "t"\nckpt_every = 2')
    path.write_text(text)
    real_run = trainer_mod.Trainer.run
    calls = {"n": 0}

    def stop_after_first_checkpoint(self):
        calls["n"] += 1
        if calls["n"] == 1:  # the first variant: stop at step 2 as SIGTERM would
            self._stop_signal = 15
        return real_run(self)

    monkeypatch.setattr(trainer_mod.Trainer, "run", stop_after_first_checkpoint)
    with pytest.raises(trainer_mod.Stopped):
        run_sweep(path, ["optim.lr=1e-3,2e-3"], out, quiet=True, log=_quiet)
    first = out / "optim.lr=1e-3"
    assert json.loads((out / "sweep.json").read_text())["variants"][0]["status"] == "in progress"
    assert (first / "checkpoints").is_dir()
    messages = []
    summary = run_sweep(path, ["optim.lr=1e-3,2e-3"], out, quiet=True, log=messages.append)
    assert any(m.startswith("sweep: optim.lr=1e-3: resuming") for m in messages)
    assert all(e["status"] == "complete" for e in summary["variants"])
    steps = [json.loads(line)["step"] for line in (first / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert steps == [1, 2, 3, 4]


def test_only_runs_the_named_variants_and_leaves_the_rest_pending(recipe, tmp_path):
    out = tmp_path / "sweep"
    summary = run_sweep(recipe(), ["optim.lr=1e-3,2e-3"], out, quiet=True, log=_quiet,
                        only=["optim.lr=2e-3"])
    status = {e["name"]: e["status"] for e in summary["variants"]}
    assert status == {"optim.lr=1e-3": "pending", "optim.lr=2e-3": "complete"}
    assert summary["best"] == "optim.lr=2e-3" and not (out / "optim.lr=1e-3").exists()
    with pytest.raises(GrowlmError, match="finished"):
        resolve_best(out)
    with pytest.raises(GrowlmError, match="no variant named 'optim.lr=5'"):
        run_sweep(recipe(), ["optim.lr=1e-3,2e-3"], out, quiet=True, log=_quiet, only=["optim.lr=5"])


def test_diverged_variant_is_recorded_and_not_retried(recipe, tmp_path, monkeypatch):
    from growlm.train import trainer as trainer_mod

    def diverge(self):
        if "lr=5" in str(self.out):
            raise GrowlmError("training diverged: 10 consecutive non-finite steps at step 3")
        return real_run(self)

    real_run = trainer_mod.Trainer.run
    monkeypatch.setattr(trainer_mod.Trainer, "run", diverge)
    out = tmp_path / "sweep"
    summary = run_sweep(recipe(), ["optim.lr=1e-3,5"], out, quiet=True, log=_quiet)
    failed = next(e for e in summary["variants"] if e["name"] == "optim.lr=5")
    assert failed["status"] == "failed" and "diverged" in failed["error"]
    assert summary["best"] == "optim.lr=1e-3"
    messages = []
    run_sweep(recipe(), ["optim.lr=1e-3,5"], out, quiet=True, log=messages.append)
    assert "sweep: optim.lr=5: failed, skipped" in messages


def test_cli_prints_the_table_and_refuses_bad_input(recipe, tmp_path, capsys):
    out = tmp_path / "cli-sweep"
    assert main(["sweep", str(recipe()), "--set", "optim.lr=1e-3,3e-3", "--out", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "optim.lr=1e-3" in printed and "best: optim.lr=" in printed
    assert main(["sweep", str(recipe()), "--set", "optim.lr", "--out", str(out)]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert main(["sweep", str(recipe()), "--set", "optim.nope=1,2", "--out", str(out)]) == 2


# ---------------------------------------------------------------- best:<sweep dir>

@pytest.fixture(scope="module")
def finished_sweep(tiny_shards, tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("finished")
    out = folder / "s1"
    recipe = _writer(folder, tiny_shards)()
    return out, run_sweep(recipe, ["optim.lr=1e-4,2e-2"], out, quiet=True, log=_quiet)


def test_resolve_best_gives_the_best_runs_final_checkpoint(finished_sweep):
    from growlm.checkpoint import read_meta

    out, summary = finished_sweep
    ckpt = resolve_best(out)
    assert ckpt.parent.parent == out / summary["best"]
    assert read_meta(ckpt)["stage_complete"] and read_meta(ckpt)["global_step"] == 3
    assert resolve_init(f"best:{out}") == ckpt
    assert resolve_init("runs/plain") == Path("runs/plain")


def test_a_stage_starts_from_the_best_run_of_a_sweep(finished_sweep, recipe, tmp_path):
    from growlm.checkpoint import load_model_state

    out, summary = finished_sweep
    _, state = load_init(f"best:{out}", "stage.1")
    _, best_state, _ = load_model_state(out / summary["best"])
    assert all(torch.equal(state[k], best_state[k]) for k in best_state)
    # and through the trainer: a continuation run of the same shape
    stages = f'[[stage]]\nname = "more"\ninit = "best:{out.as_posix()}"\nsteps = 1\nlr = 1e-9\n'
    path = recipe(stages, name="continue")
    run_dir = tmp_path / "continued"
    assert main(["train", str(path), "--out", str(run_dir), "--quiet"]) == 0
    first_loss = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[1])["loss"]
    best_final = [json.loads(line) for line in
                  (out / summary["best"] / "metrics.jsonl").read_text().splitlines()]
    fresh_first = next(r["loss"] for r in best_final if r["kind"] == "step")
    assert first_loss < fresh_first  # starts from trained weights, not a fresh init


def test_best_of_an_unfinished_or_missing_sweep_is_refused(finished_sweep, tmp_path):
    finished, _ = finished_sweep
    with pytest.raises(GrowlmError, match="not a sweep directory"):
        resolve_best(tmp_path / "nothing")
    data = json.loads((finished / "sweep.json").read_text())
    data["variants"][0]["status"] = "in progress"
    out = tmp_path / "unfinished"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps(data))
    with pytest.raises(GrowlmError, match=r"stage.2.init: sweep .* is not finished \(1 of 2"):
        resolve_best(out, "stage.2.init")
    with pytest.raises(GrowlmError, match="'best:' needs a sweep directory"):
        resolve_init("best:")
