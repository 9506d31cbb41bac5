"""benchmarks/reproduce: every method's recipe at every scale, at the baseline's FLOPs.

Builds the recipes only (the training is the benchmark's job): they must load as growlm
recipes, keep the seeds' stage proportions, and land on the baseline's exact FLOP count.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from growlm.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def methods():
    spec = importlib.util.spec_from_file_location("reproduce_methods",
                                                  REPO / "benchmarks" / "reproduce" / "methods.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("scale_name", ["cpu", "gpu"])
def test_every_method_lands_on_the_baselines_flops(methods, scale_name, tmp_path):
    scale = methods.SCALES[scale_name]
    target = methods.baseline_flops(scale, tmp_path)
    B = scale.steps
    first_stage = {"reuse-one-layer-attn": B // 2, "reuse-one-attn-attn": B // 2,
                   "reuse-no-layer": B // 2, "step-2stage": B * 3 // 8,
                   "step-3stage": B * 3 // 10, "gstack": B // 4, "relora": B // 4,
                   **{name: B // 4 for name in methods.OPERATORS}}
    for m in methods.METHODS:
        text, info = methods.method_recipe(m, scale, tmp_path, target)
        cfg = config_from_dict(methods.tomllib.loads(text), m.name)
        assert (cfg.model.d_model, cfg.model.n_layers) == (scale.d_model, scale.n_layers), m.name
        if m.name in ("standard", "galore"):
            assert info["steps"] == B
            continue
        # whole steps: off by at most half a last-stage step, which costs at most a baseline step
        assert info["flops_ratio"] == pytest.approx(1.0, abs=0.5 / B), m.name
        assert info["steps"][0] == first_stage[m.name], m.name


def test_embedding_share_is_near_the_seeds(methods):
    for scale in methods.SCALES.values():
        assert 0.20 <= methods.params_share(scale) <= 0.25, scale.name


def test_reuse_small_models_have_the_seeds_shapes(methods, tmp_path):
    scale = methods.SCALES["smoke"]
    shapes = {}
    for m in methods.METHODS:
        if m.small is None:
            continue
        cfg = config_from_dict(methods.tomllib.loads(methods.stage1_recipe(m, scale, tmp_path)), m.name)
        shapes[m.name] = (cfg.model.n_layers, cfg.model.block)
    assert shapes == {"reuse-one-layer-attn": (1, "full"), "reuse-one-attn-attn": (1, "attn_only"),
                      "reuse-no-layer": (0, "full")}


def test_the_operator_study_is_a_family_of_eight(methods, tmp_path):
    """Gstack's four operators in depth and width, each grown 4x from the seeds' small model."""
    scale = methods.SCALES["cpu"]
    study = methods.OPERATOR_STUDY
    assert sorted(study.values()) == sorted((op, d) for op in ("G_direct", "G_learn", "G_zero", "G_random")
                                            for d in ("depth", "width"))
    assert {m.name for m in methods.METHODS if m.family == "operators"} == set(study)
    target = methods.baseline_flops(scale, tmp_path)
    ops = {}
    for m in methods.METHODS:
        if m.name not in study or m.name == "gstack":
            continue
        text, _ = methods.method_recipe(m, scale, tmp_path, target)
        cfg = config_from_dict(methods.tomllib.loads(text), m.name)
        small, grown = cfg.stage
        ops[m.name] = grown.grow.op
        if study[m.name][1] == "width":
            assert (small.d_model, small.n_heads, small.ffn_dim) == (64, 2, 192)
        else:
            assert small.n_layers == 2
    assert ops == {"ops-depth-learn": "learn", "ops-depth-zero": "identity", "ops-depth-random": "random",
                   "ops-width-direct": "clone", "ops-width-learn": "width_learn", "ops-width-zero": "zero",
                   "ops-width-random": "width_random"}
