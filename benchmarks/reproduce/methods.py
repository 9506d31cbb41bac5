"""Scales, methods and their recipes for the reproduction, every method at the baseline's FLOPs.

A method's recipe is recipes/common.toml plus the method's stage file, filled from the scale.
Every stage but the last has a fixed length (a fraction of the baseline's B steps, from the
seeds' recipes); the last stage gets the steps that bring the run's exact FLOPs (as counted by
growlm.plan, the same count the trainer logs) to the baseline's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPES = Path(__file__).resolve().parent / "recipes"


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
    lr: float  # lr0: the centre of the LR grids
    eval_limit: int  # examples per zero-shot task (and WikiText documents)
    prepare: dict = field(default_factory=dict)  # extra growlm.data.prepare options

    @property
    def eval_every(self) -> int:
        return max(1, self.steps // 8)


SCALES = {
    # a few minutes: every code path, numbers meaningless
    "smoke": Scale("smoke", d_model=32, n_heads=2, ffn=96, n_layers=8, vocab=512, seq_len=32,
                   batch_tokens=256, micro_batch=8, steps=24, eval_tokens=1024, lr=3e-3,
                   eval_limit=10, prepare={"max_tokens": 300_000,
                                           "tokenizer_sample_chars": 3_000_000}),
    # ~55 min on 2 idle cores (29 runs, ~2 min per full-budget run): 2.2M parameters, 23% of
    # them embedding + head
    "cpu": Scale("cpu", d_model=128, n_heads=4, ffn=384, n_layers=8, vocab=2048, seq_len=128,
                 batch_tokens=2048, micro_batch=16, steps=360, eval_tokens=16384, lr=3e-3,
                 eval_limit=100),
    # one GPU: 35M parameters (24% embedding + head), 33k-token batches, ~16M tokens per run
    "gpu": Scale("gpu", d_model=512, n_heads=8, ffn=1536, n_layers=8, vocab=8192, seq_len=512,
                 batch_tokens=32768, micro_batch=64, steps=500, eval_tokens=262144, lr=1.5e-3,
                 eval_limit=500),
}


@dataclass(frozen=True)
class Method:
    name: str  # run/report name
    template: str  # recipes/<template>.toml
    grid: tuple[float, ...]  # LR multipliers of lr0 for the sweep
    sweep_key: str = "optim.lr"
    small: dict | None = None  # reuse: the stage-1 model ({"n_layers", "block", "layer0"})
    stage1_grid: tuple[float, ...] = ()  # reuse: LR multipliers for the stage-1-only sweep
    grow: str = ""  # operator study: the grow table, filled from the scale's fields
    family: str = ""  # "operators": one of Gstack's eight growth operators ("gstack" is G_direct ↑)


REUSE_S1_GRID = (1.0, 2.0)
METHODS = [
    Method("standard", "standard", (0.5, 1.0, 2.0, 4.0)),
    Method("reuse-one-layer-attn", "reuse", (1.0, 2.0, 4.0), "stage.2.lr",
           {"n_layers": 1, "block": "full", "layer0": "attn"}, REUSE_S1_GRID),
    Method("reuse-one-attn-attn", "reuse", (1.0, 2.0, 4.0), "stage.2.lr",
           {"n_layers": 1, "block": "attn_only", "layer0": "attn"}, REUSE_S1_GRID),
    Method("reuse-no-layer", "reuse", (1.0, 2.0, 4.0), "stage.2.lr",
           {"n_layers": 0, "block": "full", "layer0": "none"}, REUSE_S1_GRID),
    Method("step-2stage", "step-2stage", (1.0, 2.0)),
    Method("step-3stage", "step-3stage", (1.0, 2.0)),
    Method("gstack", "gstack", (1.0, 2.0), family="operators"),
    Method("relora", "relora", (1.0, 2.0)),
    Method("galore", "galore", (1.0, 3.0)),
]
# Gstack's operator study (Du et al. 2024, Section 3): G_learn, G_zero and G_random in depth and
# all four in width; `gstack` above is G_direct in depth. Stage lengths as gstack's; LiGO's maps
# learn for B/36 steps (100 of the paper's ~45k-step stage is shorter still; at least 1 step), and
# MSG's masks ramp over B/12 steps (the official 5000-step default is ~12% of that stage).
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
METHODS += [Method(name, f"ops-{direction}", (1.0, 2.0), grow=grow, family="operators")
            for name, (_, direction, grow) in OPERATORS.items()]
# every member of the study: method name → (operator, direction)
OPERATOR_STUDY = {"gstack": ("G_direct", "depth"), **{k: v[:2] for k, v in OPERATORS.items()}}


def lr_values(scale: Scale, grid: tuple[float, ...]) -> list[str]:
    return [f"{scale.lr * m:.3g}" for m in grid]


def _fields(scale: Scale, name: str, data: Path, n_layers: int | None = None,
            model_extra: str = "") -> dict:
    B = scale.steps
    n = scale.n_layers
    return {
        "name": name, "train": data.as_posix(), "vocab": scale.vocab, "d_model": scale.d_model,
        "n_layers": n if n_layers is None else n_layers, "n_heads": scale.n_heads, "ffn": scale.ffn,
        "seq_len": scale.seq_len, "model_extra": model_extra, "batch_tokens": scale.batch_tokens,
        "micro_batch": scale.micro_batch, "optimizer": "adamw", "lr": f"{scale.lr:.3g}",
        "galore_rank": max(1, scale.d_model // 4), "galore_gap": max(1, B // 8),
        "warmup": max(1, B // 20), "eval_every": scale.eval_every, "eval_tokens": scale.eval_tokens,
        "ckpt_every": max(1, B // 4),
        "steps": B, "lora_rank": max(1, scale.d_model // 16), "reset": max(2, B // 8),
        "rewarm": max(1, B // 40),
        "half": n // 2, "half_rest": n - n // 2, "third": n * 3 // 8, "third_rest": n - 2 * (n * 3 // 8),
        "quarter": n // 4, "quarter_rest": n - n // 4,
        "half_d": scale.d_model // 2, "half_heads": scale.n_heads // 2, "half_ffn": scale.ffn // 2,
        "learn_steps": max(1, B // 36), "mask_steps": max(1, B // 12),
        # stage lengths as fractions of B (the tiny seed recipes' proportions)
        "s1": max(1, B // 2), "s1_plan": max(1, B // 2), "s2": B, "s2_plan": B, "total_plan": B,
        "last": B,
    }


def _stage_lengths(template: str, B: int) -> dict:
    if template in ("step-2stage",):
        s1 = max(1, B * 3 // 8)
        return {"s1": s1, "s1_plan": max(s1, B // 2)}
    if template == "step-3stage":
        s = max(1, B * 3 // 10)
        return {"s1": s, "s1_plan": max(s, B * 4 // 10), "s2": s, "s2_plan": max(s, B * 4 // 10)}
    if template in ("gstack", "relora", "ops-depth", "ops-width"):
        return {"s1": max(1, B // 4)}
    if template in ("reuse", "reuse-stage1"):
        return {"s1": max(1, B // 2)}
    return {}


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
    fields.update(_stage_lengths(method.template, scale.steps))
    if method.small is not None:
        shape = [f"n_layers = {method.small['n_layers']}"]
        if method.small["block"] != "full":
            shape.append(f"block = \"{method.small['block']}\"")
        fields.update(small_shape="\n".join(shape), layer0=method.small["layer0"],
                      lr_s1=lr_s1 or f"{scale.lr:.3g}")
    if method.grow:
        fields["grow"] = method.grow.format(**fields)
    if method.template in ("standard", "galore"):
        return render(method.template, fields), {"steps": fields["steps"]}
    total, stages = _total_flops(render(method.template, fields))
    last = stages[-1]
    per_step = last["flops_per_token"]["exact"] * scale.batch_tokens
    before = total - last["flops"]["exact"]
    # a learning phase (G_learn) costs other FLOPs per step than the plain model: that
    # difference does not depend on the stage's length
    extra = last["flops"]["exact"] - last["steps"] * per_step
    fields["last"] = max(1, round((target_flops - before - extra) / per_step))
    fields["total_plan"] = sum(s["steps"] for s in stages[:-1]) + fields["last"]
    if method.template in ("gstack", "relora", "ops-depth", "ops-width"):
        fields["s1"] = min(fields["s1"], fields["total_plan"])
    text = render(method.template, fields)
    total, stages = _total_flops(text)
    return text, {"steps": [s["steps"] for s in stages], "flops_ratio": total / target_flops}


def stage1_recipe(method: Method, scale: Scale, data: Path) -> str:
    """The reuse method's small model alone, for its stage-1 LR sweep."""
    extra = "" if method.small["block"] == "full" else f"block = \"{method.small['block']}\""
    fields = _fields(scale, f"{method.name}-stage1", data, n_layers=method.small["n_layers"],
                     model_extra=extra)
    fields.update(_stage_lengths("reuse-stage1", scale.steps))
    return render("reuse-stage1", fields)


def params_share(scale: Scale) -> float:
    """Share of embedding + head in the final model's parameters."""
    d, f, n, v = scale.d_model, scale.ffn, scale.n_layers, scale.vocab
    layers = n * (4 * d * d + 3 * d * f + 2 * d) + d
    return 2 * v * d / (layers + 2 * v * d)
