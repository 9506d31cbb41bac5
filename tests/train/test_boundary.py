"""The stage boundary (growlm.train.boundary): one code path for the trainer and the planner,
every stage of every shipped recipe built before anything trains, and optimizer moments carried
across a boundary where the recipe asks for it."""

import json

import pytest
import torch

from growlm.config import load_recipe
from growlm.plan.memory import param_counts
from growlm.recipe_library import library_root
from growlm.stages import resolve_stages
from growlm.train.boundary import (
    META,
    adapter_params_by_linear,
    check_recipe,
    enter_stage,
    leave_stage,
    stage_accounting,
)
from growlm.train.plan import plan_recipe

RECIPES = library_root()
ALL = sorted(RECIPES.rglob("*.toml"))


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(RECIPES)) for p in ALL])
def test_every_shipped_recipe_builds_on_meta_and_the_plan_counts_that_build(path, hf_init):
    cfg = load_recipe(path, hf_init(path))  # recipes/hf: a config-only folder for models/<name>
    built = check_recipe(cfg)
    plan = plan_recipe(cfg)
    assert len(built) == len(plan["stages"]) == len(cfg.stage)
    for b, entry in zip(built, plan["stages"]):
        assert all(p.device == META for p in b.model.parameters())
        acct = stage_accounting(b, cfg)
        assert entry["provenance"] == b.provenance
        for key in ("trainable", "frozen", "adapter", "total"):
            assert entry["params"][key] == acct["params"][key]
        # an independent count: the layout's formula over the same frozen set and adapters
        layout = param_counts(b.stage.model, b.frozen, adapter_params_by_linear(b.model))
        assert {k: layout[k] for k in ("trainable", "frozen", "adapter")} == \
            {k: acct["params"][k] for k in ("trainable", "frozen", "adapter")}


TINY = ["step-3stage", "reuse-one-layer-attn", "gstack", "clone-width", "galore", "relora"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_the_trainer_builds_what_the_planner_planned(name, tiny_shards, tmp_path):
    """A shipped tiny recipe, one step per stage: the parameters the trainer logs and the
    provenance its boundary checkpoints record equal the plan's."""
    from growlm import checkpoint as ckpt
    from growlm.train.trainer import Trainer

    path = RECIPES / "tiny" / f"{name}.toml"
    n = len(load_recipe(path).stage)
    overrides = [f"data.train={json.dumps(tiny_shards.as_posix())}", f"run.out_dir={json.dumps((tmp_path / 'r').as_posix())}",
                 "run.eval_tokens=256", "run.eval_every=0"]
    for i in range(1, n + 1):
        overrides += [f"stage.{i}.tokens=null", f"stage.{i}.steps=2", f"stage.{i}.schedule_steps=null",
                      f"stage.{i}.schedule_tokens=null", f"stage.{i}.warmup_steps=0"]
        spec = load_recipe(path).stage[i - 1]
        if spec.adapters is not None and spec.adapters.kind == "relora":
            overrides += [f"stage.{i}.adapters.reset_every=1", f"stage.{i}.adapters.rewarmup_steps=0"]
    cfg = load_recipe(path, overrides)
    plan = plan_recipe(cfg)
    trainer = Trainer(cfg, quiet=True)
    trainer.run()
    rows = [json.loads(x) for x in (trainer.out / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in rows if r["kind"] == "stage" and r["event"] == "start"]
    assert [r["params"] for r in starts] == [
        {k: e["params"][k] for k in ("trainable", "frozen", "adapter", "total")} for e in plan["stages"]]
    assert [r["flops_per_token"] for r in starts] == [e["flops_per_token"] for e in plan["stages"]]
    boundaries = [ckpt.read_meta(p) for p in ckpt.list_checkpoints(trainer.ckpt_root)
                  if ckpt.read_meta(p)["stage_complete"]]
    assert [m["provenance"] for m in boundaries] == [e["provenance"] for e in plan["stages"]]


MAPPED = """
[run]
name = "m"
out_dir = "{out}"
[model]
vocab_size = 64
d_model = 32
n_layers = 2
n_heads = 2
max_seq_len = 16
[data]
train = "unused"
seq_len = 16
[train]
global_batch_tokens = 64
micro_batch_size = 4
[optim]
name = "{optim}"
galore = {{ rank = 4, update_gap = 1 }}
[[stage]]
n_layers = 1
steps = 1
[[stage]]
grow = {{ op = "stack", factor = 2 }}
optimizer_state = "{mode}"
steps = 1
"""


def _two_stages(tmp_path, optim: str, mode: str):
    path = tmp_path / f"{optim}-{mode}.toml"
    path.write_text(MAPPED.format(out=tmp_path.as_posix(), optim=optim, mode=mode))
    cfg = load_recipe(path)
    return cfg, resolve_stages(cfg)


@pytest.mark.parametrize("optim", ["adamw", "galore"])
def test_moments_of_copied_weights_cross_the_boundary(tmp_path, optim):
    cfg, (first, second) = _two_stages(tmp_path, optim, "map")
    b1 = enter_stage(cfg, first, None)
    tokens = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    b1.model(tokens[:, :-1], labels=tokens[:, 1:]).backward()
    b1.optimizer.step()
    handoff = leave_stage(b1, second)
    assert handoff.moments and handoff.optimizer == optim
    b2 = enter_stage(cfg, second, handoff, first)
    assert b2.opt_state.startswith("mapped")
    names = {id(p): n for n, p in b2.model.named_parameters()}
    carried = 0
    for p, state in b2.optimizer.state.items():
        src = b2.provenance[names[id(p)]]["sources"][0]
        for key, value in handoff.moments[src].items():
            assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(value)), (names[id(p)], key)
        carried += 1
    # every parameter of stage 2 is a copy of one stage-1 parameter (stacking ×2), and all train
    assert carried == len(list(b2.model.parameters()))
    # and the stage trains from there
    b2.model(tokens[:, :-1], labels=tokens[:, 1:]).backward()
    b2.optimizer.step()


def test_reset_starts_the_optimizer_empty(tmp_path):
    cfg, (first, second) = _two_stages(tmp_path, "adamw", "reset")
    b1 = enter_stage(cfg, first, None)
    tokens = torch.randint(0, 64, (4, 17))
    b1.model(tokens[:, :-1], labels=tokens[:, 1:]).backward()
    b1.optimizer.step()
    handoff = leave_stage(b1, second)
    assert handoff.moments == {}
    b2 = enter_stage(cfg, second, handoff, first)
    assert b2.opt_state == "reset" and not b2.optimizer.state
