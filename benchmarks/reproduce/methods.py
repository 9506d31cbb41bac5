"""Scales, method families and their recipes for the reproduction, every method at the baseline's
FLOPs.

A method's recipe is recipes/common.toml plus the method's stage file, filled from the scale.
Every stage but the last has a fixed length (from the seeds' proportions, see `_stage_lengths`);
the last stage gets the steps that bring the run's exact FLOPs (as counted by growlm.plan, the
same count the trainer logs) to the baseline's.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPES = Path(__file__).resolve().parent / "recipes"


@dataclass(frozen=True)
class WordSimSide:
    """Claim (a) measured apart, on a vocabulary large enough for word similarity: the baseline
    and the One Layer stage-1 model of the scale's shape with this tokenizer, `seeds` seeds."""

    tokenizer: str  # relative to the shared data folder
    vocab: int
    steps: int  # the baseline's; the One Layer model trains half, as reuse stage 1 does


@dataclass(frozen=True)
class Scale:
    name: str
    d_model: int
    n_heads: int
    ffn: int
    n_layers: int
    vocab: int
    seq_len: int
    batch_tokens: int
    micro_batch: int
    steps: int  # B: the baseline's steps
    eval_tokens: int
    lr: float  # lr0: where every LR search starts
    eval_limit: int  # examples per zero-shot task (and WikiText documents)
    seeds: int = 1  # seeds of the baseline and of each method's best LR
    ladder: tuple[int, int] = (-4, 4)  # the LR search's rungs lr0 · 2^k, k from … to
    evals: int = 8  # validation evaluations per baseline run
    prepare: dict = field(default_factory=dict)  # extra growlm.data.prepare options
    wordsim_side: WordSimSide | None = None
    # The operator family (but gstack): "searched" — its own LR search and seeds, as every
    # method; "gstack-lr" — one run each, seed 1, at gstack's best LR, so that seven more
    # methods cost seven runs rather than a search and seeds each (see `lr_source`)
    operators: str = "searched"

    @property
    def eval_every(self) -> int:
        return max(1, self.steps // self.evals)

    def model(self, vocab: int | None = None):
        from growlm.model.config import ModelConfig

        return ModelConfig(vocab_size=vocab or self.vocab, d_model=self.d_model,
                           n_layers=self.n_layers, n_heads=self.n_heads, ffn_dim=self.ffn,
                           max_seq_len=self.seq_len)

    @property
    def params(self) -> int:
        """All parameters of the final model, embedding and head included (Chinchilla's N)."""
        return self.model().params_total

    @property
    def tokens_per_param(self) -> float:
        return self.steps * self.batch_tokens / self.params


SCALES = {
    # a few minutes: every code path, numbers meaningless
    "smoke": Scale("smoke", d_model=32, n_heads=2, ffn=96, n_layers=8, vocab=512, seq_len=32,
                   batch_tokens=256, micro_batch=8, steps=24, eval_tokens=1024, lr=3e-3,
                   eval_limit=10, seeds=2, ladder=(-1, 1), prepare={"max_tokens": 300_000,
                                                    "tokenizer_sample_chars": 3_000_000},
                   wordsim_side=WordSimSide("tokenizers/gpt2/tokenizer.json", 50257, 6)),
    # 2.2M parameters trained on 737K tokens (0.33 per parameter): the first CPU scale
    "cpu": Scale("cpu", d_model=128, n_heads=4, ffn=384, n_layers=8, vocab=2048, seq_len=128,
                 batch_tokens=2048, micro_batch=16, steps=360, eval_tokens=16384, lr=3e-3,
                 eval_limit=100),
    # 140K parameters trained on 2.8M tokens (20 per parameter, Chinchilla's ratio), 3 seeds;
    # sized by measurement to about 90 minutes on 2 idle cores (README.md, "Choosing the scale")
    "chinchilla": Scale("chinchilla", d_model=32, n_heads=2, ffn=96, n_layers=8, vocab=512,
                        seq_len=128, batch_tokens=2048, micro_batch=16, steps=1366,
                        eval_tokens=32768, lr=6e-3, eval_limit=100, seeds=3, evals=16,
                        wordsim_side=WordSimSide("tokenizers/gpt2/tokenizer.json", 50257, 300),
                        operators="gstack-lr"),
    # one GPU: 35M parameters (24% embedding + head), 33k-token batches, ~16M tokens per run
    "gpu": Scale("gpu", d_model=512, n_heads=8, ffn=1536, n_layers=8, vocab=8192, seq_len=512,
                 batch_tokens=32768, micro_batch=64, steps=500, eval_tokens=262144, lr=1.5e-3,
                 eval_limit=500),
}


@dataclass(frozen=True)
class Method:
    name: str  # run/report name
    template: str  # recipes/<template>.toml
    family: str = "seeds"  # a key of FAMILIES: the report's section
    sweep_key: str = "optim.lr"  # the LR searched (growlm --set key)
    small: dict | None = None  # reuse: the stage-1 model ({"n_layers", "block", "layer0"})
    grow: str = ""  # the operator family: the grown stage's grow table, filled from the fields


# The report has one section per family. A new family is one entry here and its methods in
# METHODS (each with a recipes/<template>.toml and, if it has stages, a case in _stage_lengths);
# every method of every family gets the same LR search, seeds and equal-FLOPs budget.
FAMILIES = {
    "seeds": "The seed papers' methods",
    "baselines": "STEP's parameter-efficient baselines",
    "operators": "Gstack's operator study (4 growth operators, depth and width)",
}

METHODS = [
    Method("standard", "standard", "baselines"),
    Method("reuse-one-layer-attn", "reuse", sweep_key="stage.2.lr",
           small={"n_layers": 1, "block": "full", "layer0": "attn"}),
    Method("reuse-one-attn-attn", "reuse", sweep_key="stage.2.lr",
           small={"n_layers": 1, "block": "attn_only", "layer0": "attn"}),
    Method("reuse-no-layer", "reuse", sweep_key="stage.2.lr",
           small={"n_layers": 0, "block": "full", "layer0": "none"}),
    Method("step-2stage", "step-2stage"),
    Method("step-3stage", "step-3stage"),
    Method("gstack", "gstack"),
    Method("relora", "relora", "baselines"),
    Method("galore", "galore", "baselines"),
]
# Gstack's operator study (Du et al. 2024, Section 3): G_learn, G_zero and G_random in depth and
# all four in width; `gstack` above is G_direct in depth. Each grows at gstack's growth point from
# a quarter of the final model (a quarter of the layers, or every width halved); LiGO's maps learn
# for B/36 steps (the paper's 100 steps of a ~45k-step stage are shorter still), and MSG's masks
# ramp over B/12 steps (the official default of 5000 steps is ~12% of that stage).
OPERATORS = {  # method name → (operator, direction, grow table)
    "ops-depth-learn": ("G_learn", "depth", '{{ op = "learn", factor = 4, learn_steps = {learn_steps} }}'),
    "ops-depth-zero": ("G_zero", "depth", '{{ op = "identity", add = {quarter_rest} }}'),
    "ops-depth-random": ("G_random", "depth",
                         '{{ op = "random", add = {quarter_rest}, position = "end", mask_steps = {mask_steps} }}'),
    "ops-width-direct": ("G_direct", "width", '{{ op = "clone", factor = 2 }}'),
    "ops-width-learn": ("G_learn", "width", '{{ op = "width_learn", factor = 2, learn_steps = {learn_steps} }}'),
    "ops-width-zero": ("G_zero", "width", '{{ op = "zero", factor = 2 }}'),
    "ops-width-random": ("G_random", "width", '{{ op = "width_random", factor = 2, mask_steps = {mask_steps} }}'),
}
METHODS += [Method(name, f"ops-{direction}", "operators", grow=grow)
            for name, (_, direction, grow) in OPERATORS.items()]
# every member of the study: method name → (operator, direction)
OPERATOR_STUDY = {"gstack": ("G_direct", "depth"), **{k: v[:2] for k, v in OPERATORS.items()}}
BASELINE = "standard"


def method(name: str) -> Method:
    return next(m for m in METHODS if m.name == name)


def lr_source(m: Method, scale: Scale) -> str | None:
    """The method whose best LR this one runs at, once and with seed 1, instead of searching its
    own; None for a method with its own search and seeds."""
    return "gstack" if scale.operators == "gstack-lr" and m.family == "operators" else None


def seed_count(m: Method, scale: Scale) -> int:
    """Seeds the method runs: one at a borrowed LR, else the scale's."""
    return 1 if lr_source(m, scale) else scale.seeds


def lr_value(scale: Scale, k: int) -> str:
    """The LR ladder's rung k: lr0 · 2^k, as the recipe writes it."""
    return f"{scale.lr * 2.0 ** k:.3g}"


# ---------------------------------------------------------------- the seeds' proportions

def lora_rank(scale: Scale) -> int:
    return max(1, scale.d_model // 16)


def step_split(scale: Scale, stages: int) -> list[int]:
    """Layers per STEP stage: the integer program that minimises the peak model-state memory
    (growlm.plan.step_ip, embedding and head counted: frozen after stage 1, as STEP does)."""
    from growlm.plan.step_ip import solve_step, step_problem

    problem = step_problem(scale.model(), lora_rank(scale))
    return solve_step(problem, stages).layers_per_stage


def gstack_growth_steps(scale: Scale) -> tuple[int, dict]:
    """Gstack's growth point in steps (g = 4) and the timing rule's record: the paper's fitted
    d(N, C) where it is valid, else D/30 (growlm.plan.gstack), as `tokens = "auto"` resolves."""
    from growlm.plan.gstack import GrowthTimingWarning, gstack_timing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrowthTimingWarning)
        timing = gstack_timing(scale.params, scale.steps * scale.batch_tokens)
    return max(1, math.ceil(timing["growth_tokens"] / scale.batch_tokens)), timing


def operator_phases(scale: Scale) -> dict:
    """The grown stage's first phase in the operator study: G_learn's map training (B/36 steps)
    and G_random's mask ramp (B/12); see OPERATORS."""
    return {"learn_steps": max(1, scale.steps // 36), "mask_steps": max(1, scale.steps // 12)}


def _stage_lengths(template: str, scale: Scale) -> dict:
    B = scale.steps
    if template == "step-2stage":  # growth at 75% of a stage planned over B/2 steps
        s1 = max(1, B * 3 // 8)
        return {"s1": s1, "s1_plan": max(s1, B // 2)}
    if template == "step-3stage":  # each non-final stage 75% of a 4/10 plan
        s = max(1, B * 3 // 10)
        return {"s1": s, "s1_plan": max(s, B * 4 // 10), "s2": s, "s2_plan": max(s, B * 4 // 10)}
    if template in ("gstack", "ops-depth", "ops-width"):  # the operator study grows where gstack does
        # Gstack's official scripts warm up for 3000 of the 5000 steps before the growth
        s1, _ = gstack_growth_steps(scale)
        return {"s1": s1, "s1_warmup": min(max(1, B // 20), max(1, s1 * 3 // 5))}
    if template == "relora":  # a quarter of the run as the full-rank warm start
        return {"s1": max(1, B // 4)}
    if template in ("reuse", "reuse-stage1"):  # the small model on half the baseline's tokens
        return {"s1": max(1, B // 2)}
    return {}


def _fields(scale: Scale, name: str, data: Path, n_layers: int | None = None,
            model_extra: str = "", seed: int = 1) -> dict:
    B = scale.steps
    n = scale.n_layers
    fields = {
        "name": name, "seed": seed, "train": data.as_posix(), "vocab": scale.vocab,
        "d_model": scale.d_model, "n_layers": n if n_layers is None else n_layers,
        "n_heads": scale.n_heads, "ffn": scale.ffn, "seq_len": scale.seq_len,
        "model_extra": model_extra, "batch_tokens": scale.batch_tokens,
        "micro_batch": scale.micro_batch, "optimizer": "adamw", "lr": f"{scale.lr:.3g}",
        "galore_rank": max(1, scale.d_model // 4), "galore_gap": max(1, B // 8),
        "warmup": max(1, B // 20), "eval_every": scale.eval_every, "eval_tokens": scale.eval_tokens,
        "ckpt_every": max(1, B // 4), "steps": B, "lora_rank": lora_rank(scale),
        "reset": max(2, B // 8), "rewarm": max(1, B // 40), "quarter": n // 4,
        "quarter_rest": n - n // 4, "half_d": scale.d_model // 2, "half_heads": scale.n_heads // 2,
        "half_ffn": scale.ffn // 2, **operator_phases(scale),
        "s1": max(1, B // 2), "s1_plan": max(1, B // 2), "s2": B, "s2_plan": B, "total_plan": B,
        "s1_warmup": max(1, B // 20), "last": B,
    }
    two, three = step_split(scale, 2), step_split(scale, 3)
    fields.update(step2_n1=two[0], step2_add=two[1], step3_n1=three[0], step3_add2=three[1],
                  step3_add3=three[2])
    return fields


def render(template: str, fields: dict) -> str:
    text = (RECIPES / "common.toml").read_text() + "\n" + (RECIPES / f"{template}.toml").read_text()
    return text.format(**fields)


def _total_flops(text: str) -> tuple[int, list[dict]]:
    from growlm.config import config_from_dict
    from growlm.train.plan import plan_recipe

    cfg = config_from_dict(tomllib.loads(text), "reproduction recipe")
    plan = plan_recipe(cfg)
    return plan["total"]["flops"]["exact"], plan["stages"]


def baseline_flops(scale: Scale, data: Path) -> int:
    return _total_flops(render("standard", _fields(scale, "standard", data)))[0]


def method_recipe(method: Method, scale: Scale, data: Path, target_flops: int,
                  lr_s1: str | None = None) -> tuple[str, dict]:
    """The method's recipe text with its last stage fitted to `target_flops`, and its stages."""
    fields = _fields(scale, method.name, data)
    fields.update(_stage_lengths(method.template, scale))
    if method.small is not None:
        shape = [f"n_layers = {method.small['n_layers']}"]
        if method.small["block"] != "full":
            shape.append(f"block = \"{method.small['block']}\"")
        fields.update(small_shape="\n".join(shape), layer0=method.small["layer0"],
                      lr_s1=lr_s1 or f"{scale.lr:.3g}")
    if method.grow:
        fields["grow"] = method.grow.format(**fields)
    total, stages = _total_flops(render(method.template, fields))
    if len(stages) == 1:
        return render(method.template, fields), {"steps": [fields["steps"]],
                                                 "flops_ratio": total / target_flops}
    last = stages[-1]
    per_step = last["flops_per_token"]["exact"] * scale.batch_tokens
    before = total - last["flops"]["exact"]
    # a learning phase (G_learn) costs other FLOPs per step than the plain model; that difference
    # does not depend on the stage's length
    extra = last["flops"]["exact"] - last["steps"] * per_step
    fields["last"] = max(1, round((target_flops - before - extra) / per_step))
    fields["total_plan"] = sum(s["steps"] for s in stages[:-1]) + fields["last"]
    text = render(method.template, fields)
    total, stages = _total_flops(text)
    return text, {"steps": [s["steps"] for s in stages], "flops_ratio": total / target_flops}


def stage1_recipe(method: Method, scale: Scale, data: Path) -> str:
    """The reuse method's small model alone, for its stage-1 LR search."""
    extra = "" if method.small["block"] == "full" else f"block = \"{method.small['block']}\""
    fields = _fields(scale, f"{method.name}-stage1", data, n_layers=method.small["n_layers"],
                     model_extra=extra)
    fields.update(_stage_lengths("reuse-stage1", scale))
    return render("reuse-stage1", fields)


def wordsim_side_recipes(scale: Scale, data: Path) -> dict[str, str]:
    """Claim (a)'s side run: {"standard": the baseline, "one-layer": One Layer's stage 1}, the
    scale's shape at the side vocabulary; their LRs are set from the main searches' best."""
    side = scale.wordsim_side
    sized = {"vocab": side.vocab, "steps": side.steps, "eval_every": max(1, side.steps // 4),
             "ckpt_every": max(1, side.steps // 2), "warmup": max(1, side.steps // 20),
             "s1": max(1, side.steps // 2)}
    base = {**_fields(scale, "wordsim-standard", data), **sized}
    small = {**_fields(scale, "wordsim-one-layer", data, n_layers=1), **sized}
    return {"standard": render("standard", base), "one-layer": render("reuse-stage1", small)}


def params_share(scale: Scale) -> float:
    """Share of embedding + head in the final model's parameters."""
    cfg = scale.model()
    return (cfg.params_embedding + cfg.params_head) / cfg.params_total
