"""Growth phases in a run (growlm.train.growth): G_learn's learning phase and the MSG mask ramp
train, count, log, checkpoint and resume like any step; what they do not support is refused
before the first step."""

import json
from types import SimpleNamespace

import pytest
import torch

from growlm.config import config_from_dict, load_recipe, load_toml
from growlm.errors import GrowlmError
from growlm.stages import resolve_stages
from growlm.train import boundary
from growlm.train.growth import check_runtime
from growlm.train.plan import plan_recipe
from growlm.train.trainer import Trainer

SMALL = """
[[stage]]
name = "small"
{small}
steps = 4
lr = 3e-3
[[stage]]
name = "grown"
grow = {grow}
steps = 6
lr = 3e-3
"""
DEPTH_LEARN = SMALL.format(small="n_layers = 1", grow='{ op = "learn", factor = 4, learn_steps = 3 }')
DEPTH_STACK = SMALL.format(small="n_layers = 1", grow='{ op = "stack", factor = 4 }')
NARROW = "d_model = 16\nn_heads = 1"  # the FFN keeps its width (256)
WIDTH_MASK = SMALL.format(small=NARROW, grow='{ op = "width_random", d_model = 32, n_heads = 2, mask_steps = 3 }')
WIDTH_LEARN = SMALL.format(small=NARROW, grow='{ op = "width_learn", d_model = 32, n_heads = 2, learn_steps = 3 }')


def _records(out, kind):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _run(recipe, resume=False):
    trainer = Trainer(load_recipe(recipe), resume=resume, quiet=True)
    trainer.run()
    return trainer.out


def test_learning_phase_starts_as_gstack_counts_its_flops_and_logs_the_materialisation(write_recipe):
    learn = _run(write_recipe(DEPTH_LEARN, n_layers=4, name="learn"))
    stack = _run(write_recipe(DEPTH_STACK, n_layers=4, name="stack"))
    steps, ref = _records(learn, "step"), _records(stack, "step")
    # the first learning step runs the stacked model (maps at their identity start) on the same batch
    assert steps[4]["phase"] == "learn" and steps[4]["loss"] == pytest.approx(ref[4]["loss"], abs=1e-6)
    assert [r.get("phase") for r in steps[4:]] == ["learn"] * 3 + [None] * 3
    event = _records(learn, "growth")
    assert [(e["event"], e["step"]) for e in event] == [("materialised", 7)]
    # the trainer's counters are the planner's exact count: the learning phase's FLOPs included
    plan = plan_recipe(load_recipe(learn.parent / "learn.toml"))
    grown = plan["stages"][1]
    assert steps[-1]["flops"] == plan["total"]["flops"]["exact"]
    assert steps[-1]["flops_6nd"] == plan["total"]["flops"]["6nd"]
    g = grown["growth_phase"]
    per_step = g["flops_per_token"]["exact"] * 256 + g["map_flops_per_step"]
    assert steps[5]["flops"] - steps[4]["flops"] == per_step
    assert steps[8]["flops"] - steps[7]["flops"] == grown["flops_per_token"]["exact"] * 256
    assert g["map_params"] == 4 * 1 * 9  # a 4×1 matrix per role, 9 roles per layer
    start = [r for r in _records(learn, "stage") if r["event"] == "start"][1]
    assert start["memory"]["peak_estimated_bytes"] == grown["memory"]["peak_estimated_bytes"]


def test_learning_phase_lowers_the_loss(write_recipe):
    """The maps alone, trained on one fixed batch of the large model's loss."""
    cfg = load_recipe(write_recipe(WIDTH_LEARN, n_layers=2, name="w"))
    stages = resolve_stages(cfg, cfg.source)
    small = boundary.enter_stage(cfg, stages[0], None)
    handoff = boundary.leave_stage(small, stages[1])
    built = boundary.enter_stage(cfg, stages[1], handoff, stages[0])
    phase = built.growth
    assert phase.kind == "learn" and phase.steps == 3
    x = torch.randint(0, 320, (4, 33), generator=torch.Generator().manual_seed(0))
    batch = [(x[:, :-1], x[:, 1:])]
    maps0 = {k: v.detach().clone() for k, v in phase.maps.items()}
    losses = [phase.train_step(built, batch, lr=1e-2, grad_clip=1.0, autocast=_no_autocast).loss
              for _ in range(12)]
    assert losses[-1] < losses[0] - 0.05
    # the model holds what the maps now generate, from the small weights that stayed fixed
    from growlm.grow.ligo import apply_maps

    with torch.no_grad():
        want = apply_maps(phase.maps, handoff.state, phase.old, phase.new, phase.spec)
    for name, p in built.model.named_parameters():
        assert torch.allclose(p, want[name], atol=1e-6), name
    assert any(not torch.equal(maps0[k], v) for k, v in phase.maps.items())


def _no_autocast():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize("stages", [DEPTH_LEARN, WIDTH_MASK], ids=["learn", "mask"])
def test_kill_in_the_middle_of_the_phase_resumes_bit_identically(write_recipe, tmp_path, run_cli, step_losses,
                                                                stages):
    ref = _run(write_recipe(stages, n_layers=4, name="ref"))
    recipe = write_recipe(stages, n_layers=4, name="killed")
    # checkpoints every 2 steps: step 6 is stage 2's second step, inside the 3-step phase
    proc = run_cli("train", str(recipe), "--quiet", env={"GROWLM_FAULT": "train_step:7"})
    assert proc.returncode == 17
    from growlm import checkpoint as ckpt

    latest = ckpt.latest_valid(tmp_path / "killed" / "checkpoints")
    assert latest[1]["global_step"] == 6 and latest[1]["stage_step"] == 2
    assert "growth" in ckpt.load_train_state(latest[0])
    _run(recipe, resume=True)
    assert step_losses(tmp_path / "killed") == step_losses(ref)
    masks = [r.get("mask") for r in _records(ref, "step")]
    if stages is WIDTH_MASK:  # the ramp: 0, 1/3, 2/3, then folded
        assert masks == [None] * 4 + [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3)] + [None] * 3
        assert [(e["event"], e["step"]) for e in _records(ref, "growth")] == [("folded", 7)]
    assert _records(tmp_path / "killed", "growth") == _records(ref, "growth")


@pytest.mark.parametrize("grow,extra,message", [
    ('{ op = "learn", factor = 2, learn_steps = 7 }', "",
     r"stage\.2\.grow\.learn_steps: the learning phase \(7 steps\) is longer than the stage \(6 steps\)"),
    ('{ op = "learn", factor = 2 }', "", r"learning phase \(100 steps\) is longer"),
    ('{ op = "random", add = 1, mask_steps = 9 }', "",
     r"stage\.2\.grow\.mask_steps: the mask ramp \(9 steps\) is longer than the stage \(6 steps\)"),
    ('{ op = "learn", factor = 2, learn_steps = 2 }', 'adapters = { kind = "lora", rank = 2 }',
     r"stage\.2\.adapters: 'learn' trains its growth maps"),
    ('{ op = "stack", factor = 2, mask_steps = 2 }', "", r"stage\.2\.grow: 'stack' does not take mask_steps"),
    ('{ op = "learn", factor = 2, learn_steps = 2, mask_steps = 2 }', "", r"'learn' does not take mask_steps"),
])
def test_growth_phase_settings_are_checked_when_the_recipe_loads(write_recipe, grow, extra, message):
    text = SMALL.format(small="n_layers = 1", grow=grow) + extra
    recipe = write_recipe(text, n_layers=2)
    with pytest.raises(GrowlmError, match=message) as e:
        config_from_dict(load_toml(recipe), "recipe.toml")
    assert "\n" not in str(e.value)


def test_runtime_refusals_come_before_the_first_step(write_recipe):
    cfg = load_recipe(write_recipe(WIDTH_MASK, n_layers=4))
    stages = resolve_stages(cfg, cfg.source)
    fsdp, ddp = SimpleNamespace(sharded=True), SimpleNamespace(sharded=False)
    with pytest.raises(GrowlmError, match=r"stage\.2\.grow\.mask_steps: growth masks are forward hooks that FSDP"):
        check_runtime(stages, fsdp, cfg.run)
    check_runtime(stages, ddp, cfg.run)  # DDP runs the hooks inside each replica
    with pytest.raises(GrowlmError, match="set run.compile = false"):
        check_runtime(stages, None, cfg.run.model_copy(update={"compile": True}))
    learn = load_recipe(write_recipe(DEPTH_LEARN, n_layers=4, name="l"))
    with pytest.raises(GrowlmError, match=r"stage\.2\.grow: 'learn' learns its growth maps in one process"):
        check_runtime(resolve_stages(learn, learn.source), ddp, learn.run)


def test_every_stage_is_checked_on_meta_with_its_growth_phase(write_recipe):
    cfg = load_recipe(write_recipe(WIDTH_LEARN, n_layers=2))
    built = boundary.check_recipe(cfg)
    phase = built[1].growth
    assert phase.kind == "learn" and all(p.device.type == "meta" for p in phase.maps.values())
    assert {k: tuple(p.shape) for k, p in phase.maps.items()} == {
        "width:d": (32, 16), "width:f": (256, 256), "width:q": (2, 1), "width:k": (2, 1), "width:v": (2, 1)}
    mask = boundary.check_recipe(load_recipe(write_recipe(WIDTH_MASK, n_layers=2, name="m")))[1].growth
    assert mask.kind == "mask" and mask.steps == 3


def test_masked_width_growth_carries_the_old_slices_adam_moments(write_recipe):
    """optimizer_state = "map" after width_random: MSG's moments, old slice kept, new units zero."""
    cfg = load_recipe(write_recipe(WIDTH_MASK + 'optimizer_state = "map"\n', n_layers=2))  # the grown stage's
    stages = resolve_stages(cfg, cfg.source)
    small = boundary.enter_stage(cfg, stages[0], None)
    x = torch.randint(0, 320, (2, 17), generator=torch.Generator().manual_seed(0))
    small.model(x[:, :-1], labels=x[:, 1:]).backward()
    small.optimizer.step()
    handoff = boundary.leave_stage(small, stages[1])
    built = boundary.enter_stage(cfg, stages[1], handoff, stages[0])
    assert built.opt_state == f"mapped ({sum(1 for p in built.model.parameters())} tensors)"
    params = dict(built.model.named_parameters())
    q = built.optimizer.state[params["layers.0.self_attn.q_proj.weight"]]["exp_avg"]
    old = handoff.moments["layers.0.self_attn.q_proj.weight"]["exp_avg"]
    assert torch.equal(q[:16, :16], old) and not q[16:].any() and not q[:, 16:].any()
    up = built.optimizer.state[params["layers.1.mlp.up_proj.weight"]]["exp_avg_sq"]
    old_up = handoff.moments["layers.1.mlp.up_proj.weight"]["exp_avg_sq"]
    assert torch.equal(up[:, :16], old_up) and not up[:, 16:].any()  # FFN kept its width: rows all old
