import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from growlm import checkpoint as ckpt
from growlm.config import load_recipe
from growlm.errors import GrowlmError
from growlm.train.trainer import Trainer


def train(recipe, *overrides, resume=False):
    cfg = load_recipe(recipe, list(overrides))
    trainer = Trainer(cfg, resume=resume, quiet=True)
    return trainer, trainer.run()


def test_staged_run_logs_stages_flops_and_checkpoints(write_recipe):
    trainer, summary = train(write_recipe())
    out = trainer.out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    starts = [r for r in rows if r["kind"] == "stage" and r["event"] == "start"]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert len(starts) == 2 and summary["steps"] == 12
    small, grown = starts
    # stage 2 freezes the inherited layers: fewer trainable params, adapters present
    assert grown["params"]["adapter"] > 0 and grown["params"]["frozen"] > 0
    assert small["params"]["frozen"] == 0
    # cumulative FLOPs follow each stage's exact per-token count
    tokens_per_step = 256
    assert steps[5]["flops"] == 6 * tokens_per_step * small["flops_per_token"]["exact"]
    assert steps[-1]["flops"] - steps[5]["flops"] == 6 * tokens_per_step * grown["flops_per_token"]["exact"]
    assert all(r["flops_6nd"] <= r["flops"] for r in steps)
    assert any(r["kind"] == "eval" for r in rows) and summary["val_loss"] > 0
    # boundary checkpoints hold plain (merged) weights that HF-style tools can read
    boundary = [p for p in ckpt.list_checkpoints(out / "checkpoints") if ckpt.read_meta(p)["stage_complete"]]
    assert len(boundary) == 2
    cfg, state, meta = ckpt.load_model_state(boundary[-1])
    assert cfg.n_layers == 3 and not any(".lora_" in k for k in state)


def test_killed_mid_checkpoint_write_resumes_bit_identically(write_recipe, tmp_path, run_cli, step_losses):
    ref, _ = train(write_recipe(name="ref"))
    recipe = write_recipe(name="killed")
    # 3rd checkpoint write: step 6 is the stage boundary (ckpt_every=2 → steps 2, 4, then 6)
    proc = run_cli("train", str(recipe), "--quiet", env={"GROWLM_FAULT": "checkpoint_mid_write:3"})
    assert proc.returncode == 17
    out = tmp_path / "killed"
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000002", "step_00000004"]
    assert list((out / "checkpoints").glob(".tmp-*")), "the half-written checkpoint stays hidden"
    _, summary = train(recipe, resume=True)
    assert step_losses(out) == step_losses(ref.out)
    assert summary["steps"] == 12


def test_resume_exactly_at_stage_boundary(write_recipe, tmp_path, run_cli, step_losses):
    ref, _ = train(write_recipe(name="ref"))
    recipe = write_recipe(name="b")
    # 4th write is the step-8 checkpoint: the run dies just after the boundary one was saved
    proc = run_cli("train", str(recipe), "--quiet", env={"GROWLM_FAULT": "checkpoint_mid_write:4"})
    assert proc.returncode == 17
    latest = ckpt.latest_valid(tmp_path / "b" / "checkpoints")
    assert latest[1]["stage_complete"] and latest[1]["global_step"] == 6
    train(recipe, resume=True)
    assert step_losses(tmp_path / "b") == step_losses(ref.out)


def test_resume_falls_back_when_latest_checkpoint_is_damaged(write_recipe, tmp_path, run_cli, step_losses,
                                                             capsys):
    ref, _ = train(write_recipe(name="ref"))
    recipe = write_recipe(name="d")
    proc = run_cli("train", str(recipe), "--quiet", env={"GROWLM_FAULT": "checkpoint_mid_write:4"})
    assert proc.returncode == 17
    latest = tmp_path / "d" / "checkpoints" / "step_00000006"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated
    capsys.readouterr()
    train(recipe, resume=True)
    assert "warning: skipping damaged checkpoint" in capsys.readouterr().out
    assert step_losses(tmp_path / "d") == step_losses(ref.out)


def test_sigterm_saves_a_checkpoint_and_resume_matches(write_recipe, tmp_path, step_losses):
    stages = '[[stage]]\nsteps = 40\nlr = 1e-3\n'
    ref, _ = train(write_recipe(stages, n_layers=2, ckpt_every=0, name="ref"))
    recipe = write_recipe(stages, n_layers=2, ckpt_every=0, name="s")
    proc = subprocess.Popen([sys.executable, "-m", "growlm", "train", str(recipe), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "s" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count('"kind": "step"') >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "resume with: growlm train" in err and "--resume" in err
    saved = ckpt.latest_valid(tmp_path / "s" / "checkpoints")
    assert saved is not None and 3 <= saved[1]["global_step"] < 40
    train(recipe, resume=True)
    assert step_losses(tmp_path / "s") == step_losses(ref.out)


def test_layer_unfrozen_at_boundary_trains(write_recipe):
    stages = ('[[stage]]\nsteps = 3\nlr = 1e-2\nfreeze = ["layers.1.*"]\n'
              '[[stage]]\nsteps = 3\nlr = 1e-2\noptimizer_state = "map"\n')
    trainer, _ = train(write_recipe(stages, n_layers=2, ckpt_every=0))
    boundary, end = ckpt.list_checkpoints(trainer.out / "checkpoints")[-2:]
    _, s1, _ = ckpt.load_model_state(boundary)
    _, s2, _ = ckpt.load_model_state(end)
    name = "layers.1.mlp.up_proj.weight"
    assert not torch.equal(s1[name], s2[name]), "layer 1 became trainable and must change"
    rows = [json.loads(x) for x in (trainer.out / "metrics.jsonl").read_text().splitlines()]
    modes = [r["optimizer_state"] for r in rows if r["kind"] == "stage" and r["event"] == "start"]
    assert modes[0] == "reset" and modes[1].startswith("mapped")


def test_unfreezing_under_torch_compile_needs_reset():
    from growlm.model import ModelConfig, Transformer

    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=16))
    x = torch.randint(0, 64, (2, 8))
    for p in model.layers["1"].parameters():
        p.requires_grad_(False)
    compiled = torch.compile(model, backend="aot_eager")
    compiled(x).sum().backward()
    assert model.layers["1"].mlp.up_proj.weight.grad is None
    for p in model.layers["1"].parameters():
        p.requires_grad_(True)
    torch.compiler.reset()  # what the trainer does at every stage boundary
    compiled = torch.compile(model, backend="aot_eager")
    compiled(x).sum().backward()
    assert model.layers["1"].mlp.up_proj.weight.grad is not None
    assert model.layers["1"].mlp.up_proj.weight.grad.abs().sum() > 0


def test_data_restart_and_continue(write_recipe):
    stages = '[[stage]]\nsteps = 3\n[[stage]]\nsteps = 2\ndata = "{}"\n'
    seqs_per_step = 256 // 32
    t1, _ = train(write_recipe(stages.format("continue"), n_layers=2, ckpt_every=0, name="c"))
    t2, _ = train(write_recipe(stages.format("restart"), n_layers=2, ckpt_every=0, name="r"))
    assert t1.loader.position == 5 * seqs_per_step
    assert t2.loader.position == 2 * seqs_per_step


def test_retention_keeps_last_n_and_boundaries(write_recipe):
    stages = '[[stage]]\nsteps = 4\n[[stage]]\nsteps = 6\n'
    trainer, _ = train(write_recipe(stages, n_layers=2, ckpt_every=1), "run.keep_last=2")
    names = [p.name for p in ckpt.list_checkpoints(trainer.out / "checkpoints")]
    assert names == ["step_00000004", "step_00000009", "step_00000010"]


def test_existing_run_needs_resume_and_same_recipe(write_recipe):
    recipe = write_recipe('[[stage]]\nsteps = 2\n', n_layers=2, ckpt_every=0)
    train(recipe)
    with pytest.raises(GrowlmError, match="--resume"):
        train(recipe)
    with pytest.raises(GrowlmError, match="changed since the run started"):
        train(recipe, "stage.1.steps=3", resume=True)


def test_batch_not_divisible_by_micro_batch(write_recipe):
    with pytest.raises(GrowlmError, match="not divisible"):
        train(write_recipe('[[stage]]\nsteps = 2\n', n_layers=2), "train.micro_batch_size=3")


def test_galore_stage_memory_estimate_matches_the_live_tensors(write_recipe):
    from growlm.train.plan import plan_recipe

    recipe = write_recipe("""
[optim]
name = "galore"
galore = { rank = 4, update_gap = 2 }
[[stage]]
name = "g"
steps = 3
lr = 3e-3
""", name="galore")
    trainer, _ = train(recipe)
    rows = [json.loads(x) for x in (trainer.out / "metrics.jsonl").read_text().splitlines()]
    end = next(r for r in rows if r["kind"] == "stage" and r["event"] == "end")
    # nothing frozen and fp32 storage: the model-state estimate equals the live tensors' bytes
    assert end["memory"]["model_state_estimated_bytes"] == end["memory"]["model_state_bytes"]
    plan = plan_recipe(load_recipe(recipe))
    assert plan["stages"][0]["memory"]["model_state_bytes"] == end["memory"]["model_state_estimated_bytes"]
    assert plan["stages"][0]["memory"]["model_state_bytes"] < plan["baseline"]["memory"]["model_state_bytes"]


def test_progress_in_a_log_is_plain_lines(write_recipe, run_cli):
    """stdout not a terminal (a log file, a batch job): a line every run.log_every steps and at
    each stage's end, no carriage-return bar."""
    proc = run_cli("train", str(write_recipe(name="logged")), "--set", "run.log_every=4", check=True)
    assert "\r" not in proc.stdout + proc.stderr
    lines = [x for x in proc.stdout.splitlines() if " step " in x and x.split()[0] in ("small", "grown")]
    assert [x.split()[:3] for x in lines] == [["small", "step", "4/6"], ["small", "step", "6/6"],
                                             ["grown", "step", "4/6"], ["grown", "step", "6/6"]]
    assert all("loss" in x and "tok/s" in x for x in lines)
