"""TensorBoard and wandb sinks of MetricsWriter: curves on three x-axes, the recipe as config,
resume continuing the same run. wandb runs offline (no network); both skip when not installed."""

import json
import sys

import pytest

from growlm.errors import GrowlmError
from growlm.train.metrics import TRACKING_FILE, MetricsWriter, flatten

RECIPE = {"run": {"name": "tiny", "wandb_project": "growlm-tests", "wandb_tags": ["a", "b"],
                  "wandb_group": "sweep-1", "wandb_notes": "note"},
          "optim": {"lr": 0.003, "betas": [0.9, 0.95]},
          "stage": [{"name": "small", "steps": 4}, {"name": "big", "steps": 4, "grow": None}]}


def _step(step: int, loss: float, stage: int = 1) -> dict:
    return {"kind": "step", "stage": stage, "stage_name": "small", "step": step, "stage_step": step,
            "tokens": 1000 * step, "flops": 3 * 10**11 * step, "flops_6nd": 2 * 10**11 * step,
            "loss": loss, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 900.0, "mfu": None,
            "time": float(step), "skipped_steps": 0, "rollbacks": 0}


def _log_run(writer: MetricsWriter, steps: range, offset: float = 0.0) -> None:
    for i in steps:
        writer.log(_step(i, 5.0 - 0.1 * i + offset))
        if i % 2 == 0:
            writer.log({"kind": "eval", "stage": 1, "step": i, "tokens": 1000 * i,
                        "flops": 3 * 10**11 * i, "flops_6nd": 2 * 10**11 * i, "val_loss": 6.0 - 0.1 * i})


def test_flatten_numbers_stages_from_one():
    flat = flatten(RECIPE)
    assert flat["optim.lr"] == 0.003 and flat["optim.betas"] == "[0.9, 0.95]"
    assert flat["stage.1.name"] == "small" and flat["stage.2.grow"] == "null"


# ---------------------------------------------------------------- TensorBoard

def _scalars(folder) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_curves_on_steps_tokens_and_flops(tmp_path):
    pytest.importorskip("tensorboard")
    writer = MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=True, config=RECIPE)
    writer.log({"kind": "stage", "event": "start", "stage": 1, "name": "small", "step": 0,
                "params": {"trainable": 10}, "memory": {"model_state_estimated_bytes": 160}})
    _log_run(writer, range(1, 5))
    writer.log({"kind": "tasks", "stage": 1, "step": 4, "tokens": 4000, "flops": 12 * 10**11,
                "seconds": 3.0, "piqa/acc_norm": 0.55, "piqa/n": 10})
    writer.log({"kind": "stage", "event": "end", "stage": 1, "name": "small", "step": 4,
                "memory": {"model_state_estimated_bytes": 160, "model_state_bytes": 200,
                           "peak_measured_bytes": None, "peak_measured_by": "cpu allocator"}})
    writer.close()
    root = tmp_path / "tensorboard"
    steps = _scalars(root / "steps")
    assert steps["train/loss"] == [(i, round(5.0 - 0.1 * i, 6)) for i in range(1, 5)]
    assert steps["val/loss"] == [(2, 5.8), (4, 5.6)]
    assert steps["tasks/piqa/acc_norm"] == [(4, 0.55)] and "tasks/piqa/n" not in steps
    assert steps["memory/model_state_bytes"] == [(4, 200.0)]
    # counters are axes, not curves; a None (no MFU on CPU, no measured peak) is not a point
    assert not {"train/tokens", "train/flops", "train/stage", "train/time", "train/mfu",
                "memory/peak_measured_bytes"} & set(steps)
    tokens = _scalars(root / "tokens")
    assert tokens["val/loss_vs_tokens"] == [(2000, 5.8), (4000, 5.6)]
    assert tokens["train/loss_vs_tokens"][0] == (1000, 4.9)
    assert "train/lr_vs_tokens" not in tokens  # only losses and scores get the extra axes
    gflops = _scalars(root / "gflops")
    assert gflops["val/loss_vs_gflops"] == [(600, 5.8), (1200, 5.6)]
    assert gflops["tasks/piqa/acc_norm_vs_gflops"] == [(1200, 0.55)]


def test_tensorboard_gets_the_recipe(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=True, config=RECIPE).close()
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "steps"), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"wandb_project": "growlm-tests"' in text
    hparams = acc.PluginTagToContent("hparams")
    start = next(v for k, v in hparams.items() if "session_start" in k)
    assert b"optim.lr" in start and b"stage.2.name" in start


def test_tensorboard_hides_what_a_resume_redoes(tmp_path):
    pytest.importorskip("tensorboard")
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path, tensorboard=True)
    _log_run(writer, range(1, 7))  # killed after step 6; the checkpoint was at step 4
    writer.close()
    MetricsWriter.truncate(path, 4)
    writer = MetricsWriter(path, tensorboard=True)
    _log_run(writer, range(5, 7), offset=1.0)  # redone, with different numbers
    writer.close()
    for folder, tag, x in (("steps", "train/loss", 1), ("tokens", "train/loss_vs_tokens", 1000)):
        points = _scalars(tmp_path / "tensorboard" / folder)[tag]
        assert points == [(i * x, round(5.0 - 0.1 * i + (1.0 if i > 4 else 0.0), 6)) for i in range(1, 7)]


def test_missing_tensorboard_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(GrowlmError, match="run.tensorboard = true but tensorboard is not installed"):
        MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=True)


# ---------------------------------------------------------------- wandb

@pytest.fixture
def offline_wandb(monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def test_wandb_gets_the_recipe_settings_and_x_axes(tmp_path, offline_wandb):
    writer = MetricsWriter(tmp_path / "metrics.jsonl", wandb=True, run_name="tiny", config=RECIPE)
    run = writer._wandb
    assert run.project == "growlm-tests" and run.group == "sweep-1" and run.notes == "note"
    assert list(run.tags) == ["a", "b"] and run.name == "tiny"
    assert run.config["optim"]["lr"] == 0.003 and run.config["stage"][1]["name"] == "big"
    _log_run(writer, range(1, 3))
    assert run.summary["val/loss"] == pytest.approx(5.8)
    assert run.summary["tokens"] == 2000 and run.summary["flops"] == 6 * 10**11
    writer.close()
    saved = json.loads((tmp_path / TRACKING_FILE).read_text())["wandb"]
    assert saved["id"] == run.id and saved["project"] == "growlm-tests"
    assert (tmp_path / "wandb").is_dir()  # wandb's files stay in the run folder


def test_wandb_resume_continues_the_same_run(tmp_path, offline_wandb):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path, wandb=True, config=RECIPE)
    first = writer._wandb.id
    _log_run(writer, range(1, 3))
    writer.close()
    writer = MetricsWriter(path, wandb=True, config=RECIPE)  # records exist: a resume
    assert writer._wandb.id == first
    writer.close()
    path.unlink()  # a fresh start in the same folder (no checkpoint was kept) is a new run
    writer = MetricsWriter(path, wandb=True, config=RECIPE)
    assert writer._wandb.id != first
    writer.close()
    assert json.loads((tmp_path / TRACKING_FILE).read_text())["wandb"]["id"] != first


def test_wandb_switched_on_when_resuming_gets_the_earlier_records(tmp_path, offline_wandb):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)  # the run started without wandb
    _log_run(writer, range(1, 5))
    writer.close()
    writer = MetricsWriter(path, wandb=True, config=RECIPE)
    assert writer._wandb.summary["val/loss"] == pytest.approx(5.6)
    assert writer._wandb.summary["step"] == 4
    writer.close()


def test_missing_wandb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(GrowlmError, match="run.wandb = true but wandb is not installed"):
        MetricsWriter(tmp_path / "metrics.jsonl", wandb=True)


def test_a_wandb_run_that_cannot_start_is_one_line(tmp_path, offline_wandb, monkeypatch):
    import wandb

    def refuse(**_kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty).\ncall wandb.login(key=...)")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(GrowlmError) as err:
        MetricsWriter(tmp_path / "metrics.jsonl", wandb=True)
    assert str(err.value).startswith("run.wandb: could not start a wandb run (api_key not configured")
    assert "WANDB_MODE=offline" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- with the trainer

TINY = """
[run]
name = "tracked"
out_dir = "{out}"
eval_tokens = 256
eval_every = 2
tensorboard = true
wandb = true
[model]
vocab_size = 320
d_model = 32
n_layers = 3
n_heads = 2
max_seq_len = 64
[data]
train = "{data}"
seq_len = 32
[train]
global_batch_tokens = 256
micro_batch_size = 4
[[stage]]
name = "small"
n_layers = 2
steps = 4
[[stage]]
name = "grown"
grow = {{ op = "interpolate", add = 1 }}
steps = 4
"""


def test_a_trained_run_is_mirrored(tmp_path, offline_wandb):
    pytest.importorskip("tensorboard")
    from growlm.config import load_recipe
    from growlm.data import prepare
    from growlm.report import load_run
    from growlm.train.trainer import Trainer

    shards = tmp_path / "shards"
    prepare(shards, ["builtin:python:100KB"], train_vocab=320, val_fraction=0.2, progress=False,
            log=lambda *_: None)
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY.format(out=(tmp_path / "run").as_posix(), data=shards.as_posix()))
    Trainer(load_recipe(recipe), quiet=True).run()
    run = load_run(tmp_path / "run")
    steps = _scalars(tmp_path / "run" / "tensorboard" / "steps")
    assert [s for s, _ in steps["val/loss"]] == [2, 4, 6, 8]
    assert [v for _, v in steps["val/loss"]] == pytest.approx([r["val_loss"] for r in run.evals], rel=1e-5)
    tokens = _scalars(tmp_path / "run" / "tensorboard" / "tokens")
    assert [s for s, _ in tokens["train/loss_vs_tokens"]] == [256 * i for i in range(1, 9)]
    assert json.loads((tmp_path / "run" / TRACKING_FILE).read_text())["wandb"]["id"]
    assert run.complete and [s["stage"] for s in run.stages()] == [1, 2]
