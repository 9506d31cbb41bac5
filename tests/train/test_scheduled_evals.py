"""A recipe's [eval] section: benchmarks scored while training, logged to metrics.jsonl."""

import json

import pytest

from growlm.cli import main
from growlm.config import load_recipe
from growlm.errors import GrowlmError
from growlm.eval.scheduled import benchmark_hooks
from growlm.train.distributed import check_supported
from growlm.train.trainer import Trainer


def _train(recipe):
    cfg = load_recipe(recipe)
    Trainer(cfg, quiet=True, hooks=benchmark_hooks(cfg)).run()

TWO_STAGES = """
[[stage]]
name = "small"
n_layers = 1
steps = 4
[[stage]]
name = "grown"
grow = { op = "stack", factor = 2 }
steps = 4
"""


def _records(run_dir, kind):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def _eval_section(data_dir, tasks='["ppl", "hellaswag", "wikitext", "wordsim"]', every=3):
    return (f'[eval]\ntasks = {tasks}\nevery = {every}\nlimit = 4\nbatch_size = 8\n'
            f'data_dir = "{data_dir.as_posix()}"\n')


def test_scores_are_logged_on_schedule_and_leave_training_alone(write_recipe, tmp_path, shared_data,
                                                                step_losses):
    plain = write_recipe(TWO_STAGES, n_layers=2, name="plain")
    _train(plain)
    scored = write_recipe(TWO_STAGES + _eval_section(shared_data), n_layers=2, name="scored")
    _train(scored)

    # scoring reads no RNG and touches no weights: the training is the same step for step
    assert step_losses(tmp_path / "scored") == step_losses(tmp_path / "plain")
    tasks = _records(tmp_path / "scored", "tasks")
    # every 3 stage steps (not on a stage's last step) and at each stage's end
    assert [(r["stage"], r["step"]) for r in tasks] == [(1, 3), (1, 4), (2, 7), (2, 8)]
    last = tasks[-1]
    assert 0.0 <= last["hellaswag/acc_norm"] <= 1.0 and last["hellaswag/acc"] <= 1.0
    assert last["wikitext/word_perplexity"] > 1.0 and last["ppl/loss"] > 0.0
    assert last["flops"] == _records(tmp_path / "scored", "step")[-1]["flops"]
    assert all(isinstance(v, (int, float)) for v in last.values() if not isinstance(v, str))
    # with no eval.json, reports read the last scheduled scores
    from growlm.report.compare import eval_value
    from growlm.report.runs import load_run

    run = load_run(tmp_path / "scored")
    assert run.eval_results["hellaswag"]["acc_norm"] == last["hellaswag/acc_norm"]
    assert eval_value(run, "wikitext/word_perplexity") == last["wikitext/word_perplexity"]
    from growlm.report import plots

    name, caption = plots.task_scores([run], tmp_path)
    assert (tmp_path / name).stat().st_size > 0 and caption.startswith("Zero-shot average")
    assert plots.task_scores([load_run(tmp_path / "plain")], tmp_path) is None


def test_unknown_task_is_refused_before_the_run_starts(write_recipe, tmp_path, capsys):
    recipe = write_recipe(TWO_STAGES + '[eval]\ntasks = ["hellaswag", "squad"]\n', n_layers=2, name="unknown")
    with pytest.raises(GrowlmError, match=r"eval\.tasks: unknown task 'squad'") as err:
        benchmark_hooks(load_recipe(recipe))
    assert "\n" not in str(err.value)
    with pytest.raises(GrowlmError, match="benchmark hook"):  # no silent skipping either
        Trainer(load_recipe(recipe), quiet=True)
    assert main(["train", str(recipe)]) == 2
    assert "unknown task 'squad'" in capsys.readouterr().err
    assert not (tmp_path / "unknown").exists()


def test_missing_data_folder_fails_before_the_run_starts(write_recipe, tmp_path):
    recipe = write_recipe(TWO_STAGES + _eval_section(tmp_path / "nowhere"), n_layers=2, name="nodata")
    with pytest.raises(GrowlmError, match="hellaswag, wikitext, wordsim need the eval data folder"):
        _train(recipe)
    assert not (tmp_path / "nodata").exists()


def test_a_bad_task_file_fails_before_the_run_starts(write_recipe, tmp_path):
    data = tmp_path / "data"
    (data / "eval").mkdir(parents=True)
    recipe = write_recipe(TWO_STAGES + _eval_section(data, tasks='["hellaswag"]'), n_layers=2, name="badfile")
    with pytest.raises(GrowlmError, match="hellaswag"):
        _train(recipe)
    assert not (tmp_path / "badfile").exists()


def test_fsdp_refuses_scheduled_benchmarks(write_recipe, tmp_path):
    cfg = load_recipe(write_recipe(TWO_STAGES + _eval_section(tmp_path, tasks='["ppl"]'), n_layers=2))
    with pytest.raises(GrowlmError, match="eval.tasks.*FSDP shards"):
        check_supported(cfg, "fsdp")
    check_supported(cfg, "ddp")
