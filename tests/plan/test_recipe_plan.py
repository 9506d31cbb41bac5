"""`growlm plan RECIPE`: per-stage accounting on tiny recipes, measured numbers, the chart."""

import json

import pytest

from growlm.config import load_recipe
from growlm.plan.flops import count_flops
from growlm.plan.layout import parameter_names
from growlm.plan.memory import adapter_params_by_linear, model_state_bytes
from growlm.train.plan import format_plan, measured_by_stage, plan_recipe

HEAD = """
[run]
name = "tiny"
out_dir = "@OUT@"
[model]
vocab_size = 128
d_model = 32
n_layers = 6
n_heads = 4
max_seq_len = 64
[data]
train = "nowhere/train"
seq_len = 64
[train]
global_batch_tokens = 512
micro_batch_size = 2
"""

STEP = HEAD + """
[[stage]]
n_layers = 2
tokens = 5120
[[stage]]
grow = { op = "interpolate", add = 2 }
freeze = ["inherited"]
adapters = { kind = "relora", rank = 4, reset_every = 5, rewarmup_steps = 2 }
tokens = 5120
[[stage]]
grow = { op = "interpolate", add = 2 }
freeze = ["inherited"]
adapters = { kind = "relora", rank = 4, reset_every = 5, rewarmup_steps = 2 }
tokens = 10240
"""

REUSE = HEAD + """
[[stage]]
name = "bigram"
n_layers = 0
tokens = 5120
[[stage]]
name = "deep"
grow = { op = "reuse" }
freeze = ["embedding", "head"]
tokens = 5120
"""


def recipe(tmp_path, text: str):
    path = tmp_path / "recipe.toml"
    path.write_text(text.replace("@OUT@", (tmp_path / "run").as_posix()))
    return load_recipe(path)


def test_step_recipe_plan(tmp_path):
    cfg = recipe(tmp_path, STEP)
    plan = plan_recipe(cfg)
    s1, s2, s3 = plan["stages"]
    assert [s["model"]["n_layers"] for s in plan["stages"]] == [2, 4, 6]
    assert s1["params"]["frozen"] == 0 and s1["params"]["adapter"] == 0
    # stage 2 inherits stage 1's 2 layers plus embedding, norm and head: all frozen
    final = cfg.model
    layer = final.params_per_layer
    eh = final.params_embedding + final.params_head + final.d_model
    assert s2["params"]["frozen"] == 2 * layer + eh
    assert s3["params"]["frozen"] == 4 * layer + eh
    assert s3["params"]["trainable"] == 2 * layer
    r, d, f = 4, final.d_model, final.hidden_dim
    assert s3["params"]["adapter"] == 4 * r * (4 * 2 * d + 3 * (d + f))
    for s in plan["stages"]:
        p = s["params"]
        mem = s["memory"]
        assert mem["precision"] == "bf16-mixed"  # the papers' accounting by default
        assert mem["model_state_bytes"] == model_state_bytes(p["trainable"], p["frozen"], p["adapter"])
        # the step's peak: above the model state (the optimizer step alone holds all of it),
        # lower with checkpointing; the plan says when in the step it happens
        assert mem["model_state_bytes"] < mem["total_bytes"]
        assert mem["total_bytes_checkpointed"] < mem["total_bytes"] == mem["peak_estimated_bytes"]
        assert mem["peak_moment"].startswith(("loss", "backward", "optimizer"))
        # the run's own estimate, for its device (CPU here): fp32 storage
        assert s["as_run"]["precision"] == "fp32" and s["as_run"]["device"] == "cpu"
        assert s["as_run"]["model_state_bytes"] > mem["model_state_bytes"] or not p["frozen"]
        assert s["flops"]["exact"] == s["flops_per_token"]["exact"] * s["tokens"]
    assert s3["cumulative_flops"]["exact"] == sum(s["flops"]["exact"] for s in plan["stages"])
    assert plan["total"]["tokens"] == 5120 + 5120 + 10240 == plan["baseline"]["tokens"]
    assert plan["baseline"]["basis"] == "same tokens"
    assert plan["baseline"]["flops_per_token"]["exact"] == final.flops_per_token(64)
    assert plan["total"]["peak_bytes"] == max(s["memory"]["total_bytes"] for s in plan["stages"])
    assert plan["comparison"]["flops_ratio_exact"] < 1
    assert plan["measured_from"] is None and s1["measured"] is None
    lower = plan["comparison"]["peak_reduction"]
    assert f"{lower:.1%} {'lower' if lower >= 0 else 'higher'} (" in format_plan(plan)
    json.dumps(plan)  # plan.json must serialise


def test_step_plan_counts_what_the_run_will_freeze(tmp_path):
    """Stage 3's frozen set comes from growth provenance: the old layers sit between new ones."""
    cfg = recipe(tmp_path, STEP)
    plan = plan_recipe(cfg)
    s3 = plan["stages"][2]
    from growlm.grow import grow, inherited_names
    from growlm.plan.layout import meta_state

    m2, m3 = cfg.model.with_(n_layers=4), cfg.model
    _, prov = grow(meta_state(m2), m2, m3, cfg.stage[2].grow, fresh=meta_state(m3))
    frozen = inherited_names(prov) & set(parameter_names(m3))
    adapters = adapter_params_by_linear(m3, cfg.stage[2].adapters, frozen)
    assert s3["flops_per_token"]["exact"] == count_flops(m3, frozen, adapters, 64).exact_total


def test_reuse_recipe_freezes_embedding_and_head(tmp_path):
    plan = plan_recipe(recipe(tmp_path, REUSE))
    bigram, deep = plan["stages"]
    assert bigram["model"]["n_layers"] == 0 and bigram["flops_per_token"]["attention"] == 0
    cfg = recipe(tmp_path, REUSE).model
    assert deep["params"]["frozen"] == cfg.params_embedding + cfg.params_head
    frozen = {"embed_tokens.weight", "lm_head.weight"}
    assert deep["flops_per_token"]["exact"] == count_flops(cfg, frozen, {}, 64).exact_total
    text = format_plan(plan)
    assert "bigram" in text and "same tokens" in text and "peak" in text


def _write_metrics(run_dir, records):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + ['{"kind": "step", "stage": 1, "tok']  # torn line
    (run_dir / "metrics.jsonl").write_text("\n".join(lines))


def test_measured_numbers_from_metrics(tmp_path):
    cfg = recipe(tmp_path, REUSE)
    _write_metrics(cfg.out_dir, [
        {"kind": "stage", "event": "start", "stage": 1, "name": "bigram", "flops": 0, "tokens": 0,
         "memory": {"model_state_estimated_bytes": 1, "model_state_bytes": None}},
        {"kind": "step", "stage": 1, "step": 1, "tokens": 512, "flops": 1000, "flops_6nd": 900},
        {"kind": "step", "stage": 1, "step": 10, "tokens": 5120, "flops": 10000, "flops_6nd": 9000},
        {"kind": "stage", "event": "end", "stage": 1, "name": "bigram",
         "memory": {"model_state_estimated_bytes": 950, "model_state_bytes": 900, "peak_measured_bytes": 1500,
                    "peak_estimated_bytes": 1400, "estimate_precision": "fp32",
                    "peak_measured_by": "torch CPU allocator events, stage steps 1-2"}},
        {"kind": "stage", "event": "start", "stage": 2, "name": "deep", "flops": 10000,
         "flops_6nd": 9000, "tokens": 5120, "memory": {"model_state_bytes": None}},
        {"kind": "eval", "stage": 2, "step": 10, "val_loss": 3.0},
        {"kind": "step", "stage": 2, "step": 11, "tokens": 5632, "flops": 15000, "flops_6nd": 12000},
    ])
    measured = measured_by_stage(cfg.out_dir / "metrics.jsonl")
    assert measured[1] == {"peak_measured_bytes": 1500, "model_state_bytes": 900, "flops": 10000,
                           "flops_6nd": 9000, "tokens": 5120, "peak_estimated_bytes": 1400,
                           "model_state_estimated_bytes": 950, "estimate_precision": "fp32",
                           "peak_measured_by": "torch CPU allocator events, stage steps 1-2"}
    # a stage still running: no end record, so no memory figures yet
    assert measured[2] == {"peak_measured_bytes": None, "model_state_bytes": None, "flops": 5000,
                           "flops_6nd": 3000, "tokens": 512, "peak_estimated_bytes": None,
                           "model_state_estimated_bytes": None, "estimate_precision": None,
                           "peak_measured_by": None}
    plan = plan_recipe(cfg)
    assert plan["stages"][1]["measured"]["flops"] == 5000
    text = format_plan(plan)
    assert "measured" in text
    # measured memory is set beside the run's own (fp32) estimate, with the ratio
    assert "memory as run (fp32): model state 900 B measured / 950 B estimated (0.947); peak " \
           "1.46 KiB measured / 1.37 KiB estimated (1.071)" in text
    from growlm.report.plan_chart import plot_plan

    png = plot_plan(plan, tmp_path / "plan.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("text", [STEP, REUSE], ids=["step", "reuse"])
def test_plan_is_deterministic(tmp_path, text):
    cfg = recipe(tmp_path, text)
    assert plan_recipe(cfg) == plan_recipe(cfg)
