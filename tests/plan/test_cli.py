"""`growlm plan` command line: recipe, step and gstack forms; exit codes; written recipes."""

import json

import pytest

from growlm.cli import main
from growlm.config import load_recipe
from growlm.stages import resolve_stages

TINY = """
[run]
name = "tiny"
[model]
vocab_size = 128
d_model = 32
n_layers = {layers}
n_heads = 4
max_seq_len = 64
[data]
train = "nowhere/train"
seq_len = 64
[train]
global_batch_tokens = 512
[[stage]]
n_layers = 2
tokens = 5120
[[stage]]
grow = {{ op = "stack", factor = 2 }}
tokens = 5120
"""


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_recipe_plan_writes_json_and_chart(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text(TINY.format(layers=4))
    code, out, _ = run(capsys, "plan", str(path), "--out", str(tmp_path / "o"), "--json",
                       "--set", "train.micro_batch_size=3")
    assert code == 0
    plan = json.loads(out)
    assert plan["micro_batch_size"] == 3 and len(plan["stages"]) == 2
    assert json.loads((tmp_path / "o" / "plan.json").read_text()) == plan
    assert (tmp_path / "o" / "plan.png").stat().st_size > 1000
    code, out, _ = run(capsys, "plan", str(path), "--out", str(tmp_path / "o"), "--no-chart")
    assert code == 0 and "baseline" in out and "same tokens" in out


def test_recipe_plan_says_its_memory_precision(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text(TINY.format(layers=4))
    code, out, _ = run(capsys, "plan", str(path), "--out", str(tmp_path / "o"), "--no-chart")
    assert code == 0 and "memory estimated in bf16-mixed: bf16 weights" in out
    code, out, _ = run(capsys, "plan", str(path), "--out", str(tmp_path / "o"), "--no-chart", "--json",
                       "--precision", "fp32")
    plan = json.loads(out)
    assert plan["memory_precision"]["name"] == "fp32"
    assert all(s["memory"]["precision"] == "fp32" for s in plan["stages"])
    code, out, _ = run(capsys, "plan", str(path), "--out", str(tmp_path / "o"), "--no-chart", "--json",
                       "--precision", "run")
    import torch

    as_run = "bf16-autocast" if torch.cuda.is_available() else "fp32"  # run.device = "auto"
    assert json.loads(out)["memory_precision"]["name"] == as_run
    assert plan["stages"][1]["as_run"]["precision"] == as_run


def test_recipe_whose_stages_do_not_reach_the_final_depth(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text(TINY.format(layers=6))  # 2 layers stacked ×2 = 4, not 6
    code, _, err = run(capsys, "plan", str(path), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "n_layers 4 vs 6" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_step_json(capsys):
    code, out, _ = run(capsys, "plan", "step", "--layers", "24", "--stages", "3", "--d-model",
                       "2048", "--n-heads", "16", "--adapter-rank", "128", "--paper-formula",
                       "--json")
    assert code == 0
    result = json.loads(out)
    assert result["layers_per_stage"] == [10, 8, 6]
    assert result["peak_bytes"] == max(result["per_stage_bytes"])
    assert len(result["per_stage_bytes"]) == 3


def test_step_budget(capsys):
    args = ["plan", "step", "--layers", "24", "--d-model", "2048", "--adapter-rank", "128", "--json"]
    code, out, _ = run(capsys, *args, "--budget", "9GiB")
    result = json.loads(out)
    assert code == 0 and result["fits"] is True and result["peak_bytes"] <= 9 * 2**30
    code, out, err = run(capsys, *args, "--budget", "3GiB", "--stages", "4")
    assert code == 1
    assert "does not fit" in err and "best achievable peak" in err
    result = json.loads(out)
    assert result["fits"] is False and result["peak_bytes"] > 3 * 2**30


@pytest.mark.parametrize("argv, message", [
    (["--layers", "4", "--stages", "5", "--d-model", "64"], "5 stages for 4 layers"),
    (["--layers", "0", "--stages", "1", "--d-model", "64"], "--layers must be a positive"),
    (["--layers", "4", "--stages", "2", "--d-model", "-64"], "--d-model must be a positive"),
    (["--layers", "4", "--stages", "2", "--d-model", "64", "--adapter-rank", "-1"], "--adapter-rank"),
    (["--layers", "4", "--stages", "2", "--d-model", "64", "--budget", "0GiB"], "budget must be positive"),
    (["--layers", "4", "--stages", "2", "--d-model", "64", "--budget", "lots"], "--budget"),
    (["--layers", "4", "--d-model", "64"], "give --stages"),
    (["--layers", "4", "--stages", "2", "--d-model", "100", "--n-heads", "3"], "divisible"),
])
def test_step_bad_inputs(capsys, argv, message):
    code, _, err = run(capsys, "plan", "step", *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("embed_head", ["frozen", "trainable"])
def test_step_writes_a_recipe_that_loads(tmp_path, capsys, embed_head):
    out = tmp_path / "step.toml"
    code, _, _ = run(capsys, "plan", "step", "--layers", "7", "--stages", "3", "--d-model", "64",
                     "--n-heads", "4", "--vocab", "256", "--adapter-rank", "4", "--seq-len", "32",
                     "--tokens", "64K", "--embed-head", embed_head, "--write-recipe", str(out))
    assert code == 0
    cfg = load_recipe(out)
    stages = resolve_stages(cfg)
    code, result, _ = run(capsys, "plan", "step", "--layers", "7", "--stages", "3", "--d-model",
                          "64", "--n-heads", "4", "--vocab", "256", "--adapter-rank", "4",
                          "--embed-head", embed_head, "--json")
    split = json.loads(result)["layers_per_stage"]
    depth = [s.model.n_layers for s in stages]
    assert depth == [sum(split[: i + 1]) for i in range(3)]
    assert cfg.stage[1].grow.op == "interpolate" and cfg.stage[1].adapters.rank == 4
    from growlm.train.plan import plan_recipe

    plan = plan_recipe(cfg)
    eh = cfg.model.params_embedding + cfg.model.params_head + cfg.model.d_model
    for i, stage in enumerate(plan["stages"][1:], 1):
        inherited = sum(split[:i]) * cfg.model.params_per_layer
        assert stage["params"]["frozen"] == inherited + (eh if embed_head == "frozen" else 0)


def test_gstack(capsys):
    code, out, err = run(capsys, "plan", "gstack", "--params", "8B", "--tokens", "15T", "--json")
    result = json.loads(out)
    assert code == 0 and err == ""
    assert result["growth_factor"] == 4 and round(result["growth_tokens"] / 1e9, 2) == 6.58
    code, out, err = run(capsys, "plan", "gstack", "--params", "410M", "--tokens", "8.2B")
    assert code == 0 and "warning" in err and "fallback" in out
    code, _, err = run(capsys, "plan", "gstack", "--params", "0", "--tokens", "1B")
    assert code == 2 and "parameter count" in err
    code, _, err = run(capsys, "plan", "gstack", "--params", "1B", "--tokens", "1B", "--flops", "x")
    assert code == 2 and "--flops" in err


@pytest.mark.parametrize("form", [
    ["step", "--layers", "24", "--stages", "3", "--d-model", "2048", "--adapter-rank", "128"],
    ["gstack", "--params", "7e9", "--tokens", "2e12"],
    ["RECIPE"],
])
def test_json_file_holds_what_json_alone_prints(tmp_path, capsys, form):
    """--json [FILE], as in every command: alone, the JSON on stdout and nothing else; with
    FILE, the same JSON in FILE and the usual text on stdout."""
    if form == ["RECIPE"]:
        path = tmp_path / "r.toml"
        path.write_text(TINY.format(layers=4))
        form = [str(path), "--out", str(tmp_path / "o"), "--no-chart"]
    code, printed, _ = run(capsys, "plan", *form, "--json")
    assert code == 0
    alone = json.loads(printed)
    target = tmp_path / "sub" / "plan-copy.json"
    target.parent.mkdir()
    code, text, _ = run(capsys, "plan", *form, "--json", str(target))
    assert code == 0 and json.loads(target.read_text()) == alone
    assert text.strip() and not text.lstrip().startswith("{")
    assert not [p for p in target.parent.iterdir() if p != target]  # no temporary left


@pytest.mark.parametrize("bad, message", [("FOLDER", "is a folder"), ("FILE/x.json", "is a file")])
def test_json_file_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, bad,
                                                                      message):
    (tmp_path / "FOLDER").mkdir()
    (tmp_path / "FILE").write_text("x")
    path = tmp_path / "r.toml"
    path.write_text(TINY.format(layers=4))
    for form in (["gstack", "--params", "7e9", "--tokens", "2e12"],
                 [str(path), "--out", str(tmp_path / "o")]):
        code, out, err = run(capsys, "plan", *form, "--json", str(tmp_path / bad))
        assert code == 2 and message in err and "--json" in err and out == ""
    assert not (tmp_path / "o").exists()  # the recipe's plan was not even written
