"""The recipe library (recipes/**/*.toml) and the one-line errors of bad recipes.

Every recipe must load and resolve; the paper-scale ones must have the shapes, stage depths
and schedules that recipes/README.md documents, and the tiny ones must stay tiny. These tests
use the schema and `resolve_stages` only; they hold whether or not `growlm.grow.check_growth`
is strict, as long as it accepts the growth the papers use (stack ×4, interpolate, reuse,
clone ×2), which is what the library exercises.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import torch

from growlm.config import load_recipe
from growlm.errors import GrowlmError
from growlm.model.llama import Transformer
from growlm.recipe_library import library_root
from growlm.stages import SHAPE_KEYS, resolve_stages

RECIPES = library_root()  # the installed library; recipes/ in a clone links to it
# hf/ start from public checkpoints (an init folder): tests/model/test_hf_recipes.py
ALL = sorted(p for p in RECIPES.rglob("*.toml") if "hf" not in p.relative_to(RECIPES).parts)
TINY = [p for p in ALL if p.parent.name == "tiny"]
PAPER = [p for p in ALL if p.parent.name != "tiny"]


def _id(path: Path) -> str:
    return str(path.relative_to(RECIPES))


def _load(rel: str):
    path = RECIPES / rel
    cfg = load_recipe(path)
    return cfg, resolve_stages(cfg, str(path))


def _depths(stages) -> list[int]:
    return [s.model.n_layers for s in stages]


# ------------------------------------------------------------------ the whole library

def test_library_has_every_family():
    names = {_id(p) for p in ALL}
    expected = {
        "reuse/570m-baseline.toml", "reuse/570m-base-reuse.toml", "reuse/570m-no-layer.toml",
        "reuse/570m-one-attn-none.toml", "reuse/570m-one-attn-attn.toml",
        "reuse/570m-one-layer-none.toml", "reuse/570m-one-layer-attn.toml",
        "reuse/570m-one-layer-attn-ffn.toml", "reuse/1b-baseline.toml",
        "reuse/1b-one-layer-attn.toml", "reuse/1b-no-layer.toml",
        "gstack/410m.toml", "gstack/1.1b.toml", "gstack/3b.toml", "gstack/7b.toml",
        *(f"step/{size}-{kind}.toml" for size in ("368m", "680m", "1.2b")
          for kind in ("2stage", "3stage", "standard", "relora", "galore")),
        *(f"tiny/{name}.toml" for name in (
            "standard", "reuse-one-layer-attn", "reuse-no-layer", "reuse-one-attn", "gstack",
            "step-2stage", "step-3stage", "relora", "galore", "clone-width")),
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_recipe_loads_and_resolves(path: Path):
    cfg = load_recipe(path)
    stages = resolve_stages(cfg, str(path))
    final = stages[-1].model
    assert all(getattr(final, k) == getattr(cfg.model, k) for k in SHAPE_KEYS)
    assert cfg.data.seq_len <= cfg.model.max_seq_len
    assert all(s.steps > 0 and s.schedule_steps >= s.steps for s in stages)


def test_run_names_are_unique():
    names = [load_recipe(p).run.name for p in ALL]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, f"recipes share run.name (their run folders would collide): {dupes}"


@pytest.mark.parametrize("path", PAPER, ids=_id)
def test_paper_data_matches_vocab(path: Path):
    # GPT-2 shards cannot feed a 32000-token model, and the reverse wastes the head.
    cfg = load_recipe(path)
    folder = {50257: "shards/fineweb-edu", 32000: "shards/fineweb-edu-llama"}
    assert cfg.data.train == folder[cfg.model.vocab_size]


# ------------------------------------------------------------------ tiny recipes

@pytest.mark.parametrize("path", TINY, ids=_id)
def test_tiny_recipe_is_tiny(path: Path):
    cfg = load_recipe(path)
    stages = resolve_stages(cfg, str(path))
    assert cfg.data.train == "shards/tiny"
    assert cfg.model.vocab_size == 2048 and cfg.data.seq_len == 128
    for s in stages:
        assert s.model.params_total < 5_000_000, f"{s.name}: {s.model.params_total:,} params"
        assert 64 <= s.model.d_model <= 128 and s.model.n_layers <= 8
    assert sum(s.steps for s in stages) <= 1000


def test_tiny_recipes_share_the_final_shape():
    # so that their final losses and FLOPs are comparable with tiny/standard
    shapes = {_id(p): load_recipe(p).model for p in TINY if p.stem != "clone-width"}
    reference = shapes.pop("tiny/standard.toml")
    for name, shape in shapes.items():
        assert shape == reference, name


# ------------------------------------------------------------------ parameter counts

# growlm's counts, as documented in recipes/README.md (total, layers only).
DOCUMENTED = {
    "reuse/570m-baseline.toml": (616.3e6, 487.6e6),
    "reuse/1b-baseline.toml": (1032.5e6, 871.7e6),
    "gstack/410m.toml": (421.1e6, 355.5e6),
    "gstack/1.1b.toml": (1213.3e6, 1082.2e6),
    "gstack/3b.toml": (2397.5e6, 2233.6e6),
    "gstack/7b.toml": (5933.1e6, 5671.0e6),
    "step/368m-standard.toml": (476.0e6, 373.6e6),
    "step/680m-standard.toml": (777.9e6, 679.6e6),
    "step/1.2b-standard.toml": (1364.3e6, 1233.2e6),
}


@pytest.mark.parametrize("rel", sorted(DOCUMENTED))
def test_documented_parameter_counts(rel: str):
    cfg = load_recipe(RECIPES / rel)
    total, layers = DOCUMENTED[rel]
    assert cfg.model.params_total == pytest.approx(total, rel=0.002)
    assert cfg.model.params_layers == pytest.approx(layers, rel=0.002)


@pytest.mark.parametrize("rel, nominal", [
    ("reuse/570m-baseline.toml", 570e6), ("reuse/1b-baseline.toml", 1e9),
    ("gstack/410m.toml", 410e6), ("gstack/1.1b.toml", 1.1e9),
    ("step/1.2b-2stage.toml", 1.2e9), ("step/1.2b-3stage.toml", 1.2e9),
])
def test_total_parameters_near_the_papers_size(rel: str, nominal: float):
    assert load_recipe(RECIPES / rel).model.params_total == pytest.approx(nominal, rel=0.15)


@pytest.mark.parametrize("size, nominal", [("368m", 368e6), ("680m", 680e6), ("1.2b", 1.2e9)])
def test_step_sizes_are_non_embedding_sizes(size: str, nominal: float):
    # the STEP widths are inferred so that the layers alone give the published size
    for kind in ("2stage", "3stage", "standard", "relora", "galore"):
        cfg = load_recipe(RECIPES / f"step/{size}-{kind}.toml")
        assert cfg.model.params_layers == pytest.approx(nominal, rel=0.03)


# ------------------------------------------------------------------ STEP

STEP_DEPTHS = {
    "368m-2stage": [7, 12], "368m-3stage": [6, 10, 12],
    "680m-2stage": [14, 24], "680m-3stage": [11, 19, 24],
    "1.2b-2stage": [14, 24], "1.2b-3stage": [11, 19, 24],  # the paper's {14,10} and {11,8,5}
}


@pytest.mark.parametrize("name", sorted(STEP_DEPTHS))
def test_step_stages(name: str):
    cfg, stages = _load(f"step/{name}.toml")
    assert _depths(stages) == STEP_DEPTHS[name]
    for s in stages[:-1]:
        assert 4 * s.steps == 3 * s.schedule_steps, f"{s.name} must grow at 75% of its plan"
    assert stages[-1].schedule_steps == stages[-1].steps
    assert all(s.lr == stages[0].lr for s in stages), "the LR re-warms to the stage-1 value"
    for s in stages[1:]:
        spec = s.spec
        assert spec.grow.op == "interpolate" and spec.freeze == ["inherited"]
        assert s.warmup_steps > 0
        a = spec.adapters
        assert (a.kind, a.on, a.rank, a.reset_every, a.scale) == ("relora", "frozen", 128, 5000, 0.25)
    size = name.split("-")[0]
    _, baseline = _load(f"step/{size}-standard.toml")
    assert sum(s.steps for s in stages) == baseline[0].steps


def _linear_weight_names(cfg) -> list[str]:
    with torch.device("meta"):
        model = Transformer(cfg.model.with_(n_layers=2))
    return [n for n, p in model.named_parameters() if p.dim() == 2]


@pytest.mark.parametrize("rel", ["step/368m-relora.toml", "step/1.2b-relora.toml",
                                 "tiny/relora.toml"])
def test_relora_baseline_freezes_exactly_the_projections(rel: str):
    # Freeze globs are fnmatch patterns over parameter names, like adapters.targets.
    cfg, stages = _load(rel)
    warm, relora = stages
    assert warm.spec.adapters is None and not warm.spec.freeze
    assert warm.schedule_steps == warm.steps + relora.steps, "warm start is not annealed"
    frozen = {n for n in _linear_weight_names(cfg)
              if any(fnmatchcase(n, g) for g in relora.spec.freeze)}
    projections = {n for n in _linear_weight_names(cfg) if n.endswith("_proj.weight")}
    assert frozen == projections and len(projections) == 2 * 7
    assert relora.spec.adapters.kind == "relora" and relora.spec.adapters.on == "frozen"
    assert relora.model == warm.model


@pytest.mark.parametrize("size", ["368m", "680m", "1.2b"])
def test_galore_baseline(size: str):
    cfg, stages = _load(f"step/{size}-galore.toml")
    assert [s.optimizer for s in stages] == ["galore"]
    g = cfg.optim.galore
    assert (g.rank, g.update_gap, g.scale) == (128, 200, 0.25)


# ------------------------------------------------------------------ Gstack

GSTACK_TOKENS = {"410m": 750e9, "1.1b": 100e9, "3b": 300e9, "7b": 300e9}


@pytest.mark.parametrize("size", sorted(GSTACK_TOKENS))
def test_gstack_stages(size: str):
    cfg, (small, stacked) = _load(f"gstack/{size}.toml")
    assert cfg.model.n_layers % 4 == 0
    assert small.model.n_layers == cfg.model.n_layers // 4
    assert stacked.spec.grow.op == "stack" and stacked.spec.grow.factor == 4
    assert small.tokens == pytest.approx(10e9, rel=0.06)  # growth timing d = 10B tokens
    total = small.tokens + stacked.tokens
    assert total == pytest.approx(GSTACK_TOKENS[size], rel=0.001)
    assert small.schedule_steps >= small.steps + stacked.steps, "small model must not be annealed"
    assert stacked.spec.optimizer_state == "reset" and stacked.warmup_steps > 0
    assert small.lr > stacked.lr


OPERATORS = {  # Gstack's operator study: (direction, operator) → growlm's op
    ("depth", "direct"): "stack", ("depth", "learn"): "learn", ("depth", "zero"): "identity",
    ("depth", "random"): "random", ("width", "direct"): "clone", ("width", "learn"): "width_learn",
    ("width", "zero"): "zero", ("width", "random"): "width_random",
}


@pytest.mark.parametrize("direction, operator", sorted(OPERATORS))
@pytest.mark.parametrize("scale", ["1.1b", "tiny"])
def test_gstack_operator_study(direction: str, operator: str, scale: str):
    rel = (f"gstack/operators/1.1b-{direction}-{operator}.toml" if scale == "1.1b"
           else f"gstack/operators/tiny/{direction}-{operator}.toml")
    cfg, (small, grown) = _load(rel)
    g = grown.spec.grow
    assert g.op == OPERATORS[direction, operator]
    target = cfg.model
    if direction == "depth":  # growth factor 4: a quarter of the layers, the same width
        assert small.model.n_layers * 4 == target.n_layers and small.model.d_model == target.d_model
    else:  # 4x the layer parameters: every width halved, the same depth and head_dim
        assert small.model.d_model * 2 == target.d_model and small.model.n_layers == target.n_layers
        assert small.model.head_size == target.head_size
        assert target.params_layers == pytest.approx(4 * small.model.params_layers, rel=0.01)
    if operator == "learn":
        assert g.learn_steps == (100 if scale == "1.1b" else 20)
    if operator == "random":
        assert g.mask_steps == (5000 if scale == "1.1b" else 30)
        assert direction == "width" or g.position == "end"
    assert small.schedule_steps >= small.steps + grown.steps  # the small model is not annealed
    if scale == "1.1b":
        assert small.tokens == pytest.approx(10e9, rel=0.06)
        assert small.tokens + grown.tokens == pytest.approx(100e9, rel=0.001)
        assert grown.spec.optimizer_state == "reset"


def test_tiny_gstack_is_not_annealed_at_growth():
    _, (small, stacked) = _load("tiny/gstack.toml")
    assert small.schedule_steps == small.steps + stacked.steps
    assert stacked.model.n_layers == 4 * small.model.n_layers


# ------------------------------------------------------------------ embedding/head reuse

REUSE_STAGE1 = {  # variant → (stage-1 depth, block, layer0)
    "base-reuse": (None, "full", "none"), "no-layer": (0, "full", "none"),
    "one-attn-none": (1, "attn_only", "none"), "one-attn-attn": (1, "attn_only", "attn"),
    "one-layer-none": (1, "full", "none"), "one-layer-attn": (1, "full", "attn"),
    "one-layer-attn-ffn": (1, "full", "attn_ffn"),
}
REUSE = [(size, v) for size in ("570m",) for v in REUSE_STAGE1] + [
    ("1b", "no-layer"), ("1b", "one-layer-attn")]


@pytest.mark.parametrize("size, variant", REUSE)
def test_reuse_stages(size: str, variant: str):
    cfg, (small, deep) = _load(f"reuse/{size}-{variant}.toml")
    _, (baseline,) = _load(f"reuse/{size}-baseline.toml")
    depth, block, layer0 = REUSE_STAGE1[variant]
    assert small.model.n_layers == (cfg.model.n_layers if depth is None else depth)
    assert small.model.block == block
    g = deep.spec.grow
    assert (g.op, g.layer0) == ("reuse", layer0)
    assert {"embedding", "head"} <= set(deep.spec.freeze)
    assert deep.spec.data == "restart"
    assert small.steps == deep.steps == baseline.steps == 20000
    assert deep.lr > baseline.lr
    seqs = cfg.train.global_batch_tokens // cfg.data.seq_len
    assert seqs == {"570m": 560, "1b": 1008}[size] and cfg.data.seq_len == 1024


def test_reuse_published_learning_rates():
    _, (baseline,) = _load("reuse/570m-baseline.toml")
    _, (_, deep) = _load("reuse/570m-one-layer-attn.toml")
    assert (baseline.lr, deep.lr) == (8e-4, 3e-3)


# ------------------------------------------------------------------ bad recipes

GOOD = """
[model]
vocab_size = 256
d_model = 64
n_layers = 4
n_heads = 4
max_seq_len = 64

[data]
train = "shards/tiny"
seq_len = 64

[train]
global_batch_tokens = 256
micro_batch_size = 4
"""

TWO_STAGES = """
[[stage]]
n_layers = 2
steps = 10

[[stage]]
steps = 10
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def test_good_base_recipe_loads(tmp_path: Path):
    # the bad recipes below are this one with one thing broken
    load_recipe(_write(tmp_path, GOOD + "[[stage]]\nsteps = 10\n"))
    load_recipe(_write(tmp_path, GOOD + TWO_STAGES + 'grow = { op = "interpolate", add = 2 }\n'))


@pytest.mark.parametrize("text, expected", [
    pytest.param("[model\nd_model = 64\n", ["malformed TOML"], id="malformed-toml"),
    pytest.param(GOOD.replace("d_model = 64", "d_modle = 64"), ["model.d_modle", "unknown key"],
                 id="unknown-key"),
    pytest.param(GOOD.replace("n_layers = 4", 'n_layers = "four"'), ["model.n_layers", "four"],
                 id="wrong-type"),
    pytest.param(GOOD.replace("d_model = 64", "d_model = 66"),
                 ["d_model (66)", "divisible by n_heads (4)"], id="heads-do-not-divide"),
    pytest.param(GOOD + TWO_STAGES + 'grow = { op = "interpolate", add = 1 }\n',
                 ["last stage", "n_layers 3 vs 4"], id="stages-do-not-add-up"),
    pytest.param(GOOD + TWO_STAGES + 'n_layers = 1\ngrow = { op = "interpolate" }\n',
                 ["stage.2.grow", "must add layers", "2 → 1"], id="grow-to-fewer-layers"),
    pytest.param(GOOD + TWO_STAGES + 'grow = { op = "stack", sources = [0, 1, 2, 1] }\n',
                 ["stage.2.grow.sources", "[2]", "out of range"], id="stack-index-out-of-range"),
    pytest.param(GOOD.replace("\nseq_len = 64", "\nseq_len = 128") + "[[stage]]\nsteps = 10\n",
                 ["data.seq_len (128)", "model.max_seq_len (64)"], id="seq-len-too-long"),
])
def test_bad_recipe_gives_one_line_naming_the_problem(tmp_path: Path, text: str, expected):
    path = _write(tmp_path, text)
    with pytest.raises(GrowlmError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
