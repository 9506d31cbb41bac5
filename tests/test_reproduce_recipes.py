"""benchmarks/reproduce: every method's recipe at every scale, at the baseline's FLOPs.

Builds the recipes only (the training is the benchmark's job): they must load as growlm
recipes, keep the seeds' stage proportions, and land on the baseline's exact FLOP count.
"""

import importlib
import sys
from pathlib import Path

import pytest
import torch

from growlm.config import config_from_dict, load_recipe
from growlm.model.llama import Transformer
from growlm.plan.step_ip import is_optimal, step_problem

REPRO = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce"


@pytest.fixture(scope="module")
def methods():
    sys.path.insert(0, str(REPRO))
    try:
        yield importlib.import_module("methods")
    finally:
        sys.path.remove(str(REPRO))
        sys.modules.pop("methods", None)


def _cfg(methods, text, name):
    return config_from_dict(methods.tomllib.loads(text), name)


@pytest.mark.parametrize("scale_name", ["cpu", "chinchilla", "gpu"])
def test_every_method_lands_on_the_baselines_flops(methods, scale_name, tmp_path):
    scale = methods.SCALES[scale_name]
    target = methods.baseline_flops(scale, tmp_path)
    B = scale.steps
    growth, _ = methods.gstack_growth_steps(scale)
    first_stage = {"reuse-one-layer-attn": B // 2, "reuse-one-attn-attn": B // 2,
                   "reuse-no-layer": B // 2, "step-2stage": B * 3 // 8,
                   "step-3stage": B * 3 // 10, "gstack": growth, "relora": B // 4,
                   "standard": B, "galore": B, **{name: growth for name in methods.OPERATORS}}
    for m in methods.METHODS:
        text, info = methods.method_recipe(m, scale, tmp_path, target)
        cfg = _cfg(methods, text, m.name)
        assert (cfg.model.d_model, cfg.model.n_layers) == (scale.d_model, scale.n_layers), m.name
        # whole steps: off by at most half a last-stage step, which costs at most half a
        # baseline step
        assert info["flops_ratio"] == pytest.approx(1.0, abs=0.5 / B), m.name
        assert info["steps"][0] == first_stage[m.name], m.name


def test_chinchilla_scale_trains_the_baseline_at_20_tokens_per_parameter(methods):
    scale = methods.SCALES["chinchilla"]
    with torch.device("meta"):
        counted = sum(p.numel() for p in Transformer(scale.model()).parameters())
    assert scale.params == counted  # every parameter, embedding and head included
    assert scale.steps * scale.batch_tokens / counted >= 20
    assert scale.tokens_per_param >= 20
    assert scale.seeds == 3
    assert methods.SCALES["cpu"].tokens_per_param < 1  # the scale this one replaces


def test_embedding_share_is_near_the_seeds(methods):
    for scale in methods.SCALES.values():
        assert 0.20 <= methods.params_share(scale) <= 0.25, scale.name


@pytest.mark.parametrize("scale_name", ["smoke", "cpu", "chinchilla", "gpu"])
def test_step_and_gstack_splits_are_integral_and_the_programs(methods, scale_name, tmp_path):
    scale = methods.SCALES[scale_name]
    target = methods.baseline_flops(scale, tmp_path)
    problem = step_problem(scale.model(), methods.lora_rank(scale))
    for name, k in (("step-2stage", 2), ("step-3stage", 3)):
        split = methods.step_split(scale, k)
        assert sum(split) == scale.n_layers and min(split) >= 1, (name, split)
        assert is_optimal(problem, split), (name, split)
        cfg = _cfg(methods, methods.method_recipe(methods.method(name), scale, tmp_path, target)[0],
                   name)
        assert cfg.stage[0].n_layers == split[0]
        assert [s.grow.add for s in cfg.stage[1:]] == split[1:]
    assert scale.n_layers % 4 == 0  # Gstack's g = 4 stacks L/4 layers into L
    gstack = _cfg(methods, methods.method_recipe(methods.method("gstack"), scale, tmp_path, target)[0],
                  "gstack")
    assert gstack.stage[0].n_layers * gstack.stage[1].grow.factor == scale.n_layers
    assert gstack.stage[1].grow.factor == 4
    # the small model warms up within its own stage, at most the run's warmup
    assert 1 <= gstack.stage[0].warmup_steps <= max(1, gstack.stage[0].steps * 3 // 5)


def test_gstack_grows_at_the_planners_timing(methods):
    from growlm.plan.gstack import FALLBACK_FRACTION

    scale = methods.SCALES["chinchilla"]
    steps, timing = methods.gstack_growth_steps(scale)
    assert timing["rule"] == "fallback"  # far below the fit's 1e20 FLOPs
    assert steps == pytest.approx(scale.steps * FALLBACK_FRACTION, abs=1)


def test_every_recipe_carries_the_seed_and_takes_another(methods, tmp_path):
    scale = methods.SCALES["chinchilla"]
    target = methods.baseline_flops(scale, tmp_path)
    for m in methods.METHODS:
        text, _ = methods.method_recipe(m, scale, tmp_path, target)
        assert _cfg(methods, text, m.name).run.seed == 1, m.name  # seed 1 is the search's run
        path = tmp_path / f"{m.name}.toml"
        path.write_text(text)
        assert load_recipe(path, ["run.seed=3"]).run.seed == 3, m.name


def test_reuse_small_models_have_the_seeds_shapes(methods, tmp_path):
    scale = methods.SCALES["smoke"]
    shapes = {}
    for m in methods.METHODS:
        if m.small is None:
            continue
        cfg = _cfg(methods, methods.stage1_recipe(m, scale, tmp_path), m.name)
        shapes[m.name] = (cfg.model.n_layers, cfg.model.block)
    assert shapes == {"reuse-one-layer-attn": (1, "full"), "reuse-one-attn-attn": (1, "attn_only"),
                      "reuse-no-layer": (0, "full")}


def test_word_similarity_side_run_has_the_large_vocabulary(methods, tmp_path):
    scale = methods.SCALES["chinchilla"]
    side = scale.wordsim_side
    recipes = methods.wordsim_side_recipes(scale, tmp_path)
    base, one = (_cfg(methods, recipes[k], k) for k in ("standard", "one-layer"))
    assert base.model.vocab_size == one.model.vocab_size == side.vocab == 50257
    assert (base.model.n_layers, one.model.n_layers) == (scale.n_layers, 1)
    assert base.model.d_model == one.model.d_model == scale.d_model
    assert (base.stage[0].steps, one.stage[0].steps) == (side.steps, side.steps // 2)


def test_every_family_is_known_and_every_method_in_one(methods):
    assert {m.family for m in methods.METHODS} <= set(methods.FAMILIES)
    assert len({m.name for m in methods.METHODS}) == len(methods.METHODS)
    for m in methods.METHODS:
        assert (methods.RECIPES / f"{m.template}.toml").is_file(), m.name


def test_the_operator_study_is_a_family_of_eight(methods, tmp_path):
    """Gstack's four operators in depth and width, each grown 4x from a quarter of the model;
    gstack (a seed method) is the study's G_direct in depth."""
    scale = methods.SCALES["cpu"]
    study = methods.OPERATOR_STUDY
    assert sorted(study.values()) == sorted((op, d) for op in ("G_direct", "G_learn", "G_zero", "G_random")
                                            for d in ("depth", "width"))
    assert {m.name for m in methods.METHODS if m.family == "operators"} == set(study) - {"gstack"}
    target = methods.baseline_flops(scale, tmp_path)
    ops = {}
    for m in methods.METHODS:
        if m.name not in study or m.name == "gstack":
            continue
        text, _ = methods.method_recipe(m, scale, tmp_path, target)
        cfg = _cfg(methods, text, m.name)
        small, grown = cfg.stage
        ops[m.name] = grown.grow.op
        if study[m.name][1] == "width":
            assert (small.d_model, small.n_heads, small.ffn_dim) == (64, 2, 192)
        else:
            assert small.n_layers == 2
    assert ops == {"ops-depth-learn": "learn", "ops-depth-zero": "identity", "ops-depth-random": "random",
                   "ops-width-direct": "clone", "ops-width-learn": "width_learn", "ops-width-zero": "zero",
                   "ops-width-random": "width_random"}


@pytest.mark.parametrize("scale_name, borrowed", [("chinchilla", True), ("smoke", False),
                                                  ("cpu", False), ("gpu", False)])
def test_the_operator_family_borrows_gstacks_lr_only_where_the_scale_says(methods, scale_name,
                                                                         borrowed):
    """At the chinchilla scale the seven other operators run once at gstack's best LR (the time
    budget); elsewhere they are searched and seeded like every method."""
    scale = methods.SCALES[scale_name]
    for m in methods.METHODS:
        lent = m.family == "operators" and borrowed
        assert methods.lr_source(m, scale) == ("gstack" if lent else None), m.name
        assert methods.seed_count(m, scale) == (1 if lent else scale.seeds), m.name
