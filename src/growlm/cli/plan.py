"""`growlm plan`: a recipe's FLOP/memory plan, STEP's layer split, Gstack's growth timing.

    growlm plan RECIPE [--set k=v ...] [--precision P] [--json [FILE]] [--out DIR]
    growlm plan step --layers L --stages K --d-model D [--ffn-dim F] [--n-heads H] [--vocab V]
                     [--adapter-rank R] [--budget 10GiB] [--paper-formula] [--json [FILE]]
                     [--memory peak --micro-batch B --seq-len T [--checkpointing]]
                     [--write-recipe out.toml]
    growlm plan gstack --params N --tokens D [--flops C] [--json [FILE]]

RECIPE is a TOML file or a recipe of growlm's library by name (growlm recipes list).

Exit codes: 0 ok, 2 bad input, 1 when a STEP budget cannot be met (the best split is still
printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

from growlm.cli.json_out import STDOUT, add_json_option, check_json_target, emit_json
from growlm.errors import GrowlmError
from growlm.files import atomic_write_text, check_path
from growlm.units import human_bytes, human_count, parse_bytes, parse_count

RELORA_RESET_EVERY = 5000  # steps, as in STEP's recipes (ReLoRA's reset interval)
PRECISION_CHOICES = ("bf16-mixed", "fp32", "bf16-autocast")  # growlm.plan.precision.PRECISIONS

EPILOG = """forms:
  growlm plan RECIPE [--set k=v ...] [--precision P] [--json [FILE]] [--out DIR]
  growlm plan step --layers L --stages K --d-model D [options]          (growlm plan step --help)
  growlm plan gstack --params N --tokens D [--flops C] [--json [FILE]]  (growlm plan gstack --help)

RECIPE: a TOML file, or a library recipe by name such as step/1.2b-3stage (growlm recipes list).
--json alone prints the JSON on stdout instead of the text; --json FILE writes it to FILE."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # no abbreviations, like the top-level parser
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):  # one line and exit 2, like the top-level parser
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("target", metavar="RECIPE|step|gstack",
                        help="a recipe to plan (file or library name), or the STEP / Gstack planner")
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="OPTIONS",
                        help="options of that form")


def run(args: argparse.Namespace) -> int:
    forms = {"step": (_step_parser, _run_step), "gstack": (_gstack_parser, _run_gstack)}
    make, handler = forms.get(args.target, (_recipe_parser, _run_recipe))
    parser = make()
    argv = args.rest if args.target in forms else [args.target, *args.rest]
    parsed = parser.parse_args(argv)
    check_json_target(parsed.json)
    return handler(parsed)


# ---------------------------------------------------------------- recipe

def _recipe_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="growlm plan", description="FLOP and memory plan of a recipe")
    p.add_argument("recipe", help="recipe TOML file, or a library name such as step/1.2b-3stage")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.micro_batch_size=8")
    add_json_option(p, "plan.json")
    p.add_argument("--out", default=None,
                   help="where plan.json and plan.png go (default: the run's out_dir)")
    p.add_argument("--no-chart", action="store_true", help="skip plan.png")
    p.add_argument("--precision", choices=[*PRECISION_CHOICES, "run"], default="bf16-mixed",
                   help="what the memory columns assume: bf16-mixed (the papers' accounting, the "
                        "default), fp32 (growlm on CPU), bf16-autocast (growlm on CUDA), or run "
                        "(as this recipe trains on its device); measured figures are always set "
                        "beside the run's own estimate")
    return p


def _run_recipe(a: argparse.Namespace) -> int:
    from growlm.config import load_recipe
    from growlm.train.plan import format_plan, plan_recipe

    cfg = load_recipe(a.recipe, a.overrides)
    plan = plan_recipe(cfg, memory_precision=a.precision)
    out = check_path(a.out, "--out") if a.out is not None else cfg.out_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GrowlmError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    atomic_write_text(out / "plan.json", json.dumps(plan, indent=2) + "\n")
    if not a.no_chart:
        from growlm.report.plan_chart import plot_plan

        plot_plan(plan, out / "plan.png")
    emit_json(a.json, plan)
    if a.json != STDOUT:
        print(format_plan(plan))
        print(f"wrote {out / 'plan.json'}" + ("" if a.no_chart else f" and {out / 'plan.png'}")
              + (f"; --json {a.json}" if a.json else ""))
    return 0


# ---------------------------------------------------------------- step

def _step_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="growlm plan step",
                description="STEP's integer program: layers per stage minimising peak memory")
    p.add_argument("--layers", type=int, required=True, help="final depth L")
    p.add_argument("--stages", type=int, default=None,
                   help="number of stages K (with --budget: the most stages to consider)")
    p.add_argument("--d-model", type=int, required=True)
    p.add_argument("--ffn-dim", type=int, default=None, help="default: LLaMA's SwiGLU rule")
    p.add_argument("--n-heads", type=int, default=None, help="default: d_model / 128")
    p.add_argument("--n-kv-heads", type=int, default=None)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--tie-embeddings", action="store_true")
    p.add_argument("--adapter-rank", type=int, default=0,
                   help="ReLoRA rank on q,k,v,o,gate,up,down of each frozen layer (0: none)")
    p.add_argument("--embed-head", choices=("trainable", "frozen"), default="frozen",
                   help="embedding, final norm and head after stage 1: frozen with the inherited "
                        "layers as in STEP (default), or trainable (ignored with --paper-formula)")
    p.add_argument("--budget", default=None, help="memory budget, e.g. 10GiB: smallest K that fits")
    p.add_argument("--memory", choices=("model-state", "peak"), default="model-state",
                   help="what the split minimises and --budget must hold: model state (STEP's P_i, "
                        "the default) or a training step's whole estimated peak, activations and "
                        "workspace included, for --micro-batch × --seq-len tokens")
    p.add_argument("--micro-batch", type=int, default=1,
                   help="--memory peak: sequences per micro-batch (default 1)")
    p.add_argument("--checkpointing", action="store_true",
                   help="--memory peak: with activation checkpointing")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="bf16-mixed",
                   help="--memory peak: bytes per tensor (default bf16-mixed, the papers'; fp32 as "
                        "growlm on CPU; bf16-autocast as growlm on CUDA)")
    p.add_argument("--paper-formula", action="store_true",
                   help="STEP's P_i exactly (no embedding / head terms)")
    add_json_option(p, "the split and its per-stage model state")
    p.add_argument("--write-recipe", default=None, metavar="OUT.toml",
                   help="write a runnable STEP recipe with this split")
    p.add_argument("--tokens", default="1B",
                   help="recipe: tokens per stage, one value or K comma-separated (default 1B)")
    p.add_argument("--seq-len", type=int, default=1024,
                   help="sequence length of --memory peak and of the written recipe (default 1024)")
    p.add_argument("--data", default="data/shards", help="recipe: prepared token shards folder")
    return p


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise GrowlmError(f"{name} must be a positive integer, got {value}")


def _step_model(a: argparse.Namespace):
    from growlm.model.config import ModelConfig

    for name in ("layers", "d_model", "ffn_dim", "n_heads", "n_kv_heads", "vocab", "seq_len",
                 "micro_batch"):
        _positive("--" + name.replace("_", "-"), getattr(a, name))
    _positive("--stages", a.stages)
    if a.adapter_rank < 0:
        raise GrowlmError(f"--adapter-rank must be ≥ 0, got {a.adapter_rank}")
    heads = a.n_heads or max(1, a.d_model // 128)
    try:
        return ModelConfig(vocab_size=a.vocab, d_model=a.d_model, n_layers=a.layers,
                           n_heads=heads, n_kv_heads=a.n_kv_heads, ffn_dim=a.ffn_dim,
                           tie_embeddings=a.tie_embeddings, max_seq_len=max(a.seq_len, 1))
    except ValueError as e:  # pydantic's ValidationError
        msg = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
        raise GrowlmError(f"impossible model shape: {msg.removeprefix('Value error, ')}") from None


def _step_solver(a: argparse.Namespace, cfg, problem):
    """(problem or peak table, solver, what the bytes are) for the chosen --memory."""
    from growlm.plan.step_ip import solve_step

    if a.memory == "model-state":
        return problem, solve_step, "model state"
    from growlm.plan.precision import precision
    from growlm.plan.step_peak import PeakTable, solve_step_peak

    if a.paper_formula:
        raise GrowlmError("--memory peak counts the embedding, head and loss, which --paper-formula "
                          "leaves out; drop one of the two")
    table = PeakTable(cfg, a.adapter_rank, a.micro_batch, a.seq_len, precision(a.precision),
                      a.checkpointing, a.embed_head)
    ckpt = ", activation checkpointing" if a.checkpointing else ""
    what = (f"step peak ({a.precision}, micro-batch {a.micro_batch} × {a.seq_len} tokens{ckpt}: "
            "model state + activations + workspace)")
    return table, solve_step_peak, what


def _run_step(a: argparse.Namespace) -> int:
    from growlm.plan.step_ip import solve_step_budget, step_problem

    cfg = _step_model(a)
    problem = step_problem(cfg, a.adapter_rank, paper_formula=a.paper_formula,
                           embed_head=a.embed_head)
    target, solve, what = _step_solver(a, cfg, problem)
    if a.budget is not None:
        sol = solve_step_budget(target, parse_bytes(a.budget, "--budget"), a.stages, solve=solve)
    elif a.stages is None:
        raise GrowlmError("give --stages K, or --budget to find the smallest K that fits")
    else:
        sol = solve(target, a.stages)
    result = {**sol.as_dict(), "memory": a.memory, "bytes_are": what,
              "params_per_layer": problem.params_per_layer,
              "adapter_params_per_layer": problem.adapter_params_per_layer,
              "embed_head_params": problem.embed_head_params, "paper_formula": a.paper_formula}
    emit_json(a.json, result)
    if a.json != STDOUT:
        print(f"STEP split of {cfg.n_layers} layers (d_model {cfg.d_model}, ffn {cfg.hidden_dim}, "
              f"adapter rank {a.adapter_rank}): layers per stage {sol.layers_per_stage}")
        for i, (n, b) in enumerate(zip(sol.layers_per_stage, sol.per_stage_bytes), 1):
            print(f"  stage {i}: +{n:<3} layers  {what.split(' (')[0]} {human_bytes(b)}")
        print(f"  peak {human_bytes(sol.peak_bytes)} ({sol.peak_bytes} bytes) of {what}")
    if sol.fits is False:
        print(f"growlm plan step: does not fit: the budget {human_bytes(sol.budget_bytes)} is below "
              f"the best achievable peak {human_bytes(sol.peak_bytes)} "
              f"({len(sol.layers_per_stage)} stages, {sol.layers_per_stage})", file=sys.stderr)
        return 1
    if a.write_recipe is not None:
        _write_step_recipe(a, cfg, sol.layers_per_stage)
        if a.json != STDOUT:
            print(f"wrote {a.write_recipe}")
    return 0


def _stage_tokens(text: str, k: int) -> list[int]:
    parts = [s for s in str(text).split(",") if s.strip()]
    if len(parts) not in (1, k):
        raise GrowlmError(f"--tokens: give one value or {k} comma-separated values, got {len(parts)}")
    tokens = [parse_count(s.strip(), "--tokens") for s in parts]
    if any(t <= 0 for t in tokens):
        raise GrowlmError(f"--tokens must be positive, got {text}")
    return tokens * k if len(tokens) == 1 else tokens


def _inherited_layer_globs(cfg, split: list[int]) -> list[list[str]]:
    """Per stage after the first: globs naming exactly the layers it inherits (worked out by
    running the interpolation on meta tensors), for recipes that keep the embedding trainable."""
    from growlm.config import GrowSpec
    from growlm.grow import grow, inherited_names
    from growlm.plan.layout import meta_state

    out, prev = [], cfg.with_(n_layers=split[0])
    for n in split[1:]:
        new = prev.with_(n_layers=prev.n_layers + n)
        _, prov = grow(meta_state(prev), prev, new, GrowSpec(op="interpolate", add=n),
                       fresh=meta_state(new))
        layers = sorted({int(k.split(".")[1]) for k in inherited_names(prov) if k.startswith("layers.")})
        out.append([f"layers.{i}.*" for i in layers])
        prev = new
    return out


def step_recipe_toml(cfg, split: list[int], tokens: list[int], adapter_rank: int,
                     seq_len: int, data: str, embed_head: str = "frozen") -> str:
    """A STEP recipe: stage 1 trains n_1 layers, each later stage interpolates n_i new layers,
    freezes the inherited ones (with the embedding, norms and head unless `embed_head` is
    "trainable") and puts ReLoRA adapters on them. Stages before the last plan their LR
    schedule over tokens/0.75 because STEP grows at 75% of a stage's schedule."""
    q = json.dumps  # TOML basic strings are JSON strings
    lines = [
        f"# STEP recipe written by `growlm plan step` (layers per stage {split}).",
        "[run]", f"name = {q(f'step-{cfg.n_layers}l-{len(split)}stages')}", "",
        "[model]", f"vocab_size = {cfg.vocab_size}", f"d_model = {cfg.d_model}",
        f"n_layers = {cfg.n_layers}", f"n_heads = {cfg.n_heads}", f"ffn_dim = {cfg.hidden_dim}",
        f"max_seq_len = {max(seq_len, cfg.max_seq_len)}",
    ]
    if cfg.n_kv_heads is not None:
        lines.append(f"n_kv_heads = {cfg.n_kv_heads}")
    if cfg.tie_embeddings:
        lines.append("tie_embeddings = true")
    batch_tokens = seq_len * 512
    lines += ["", "[data]", f"train = {q(data + '/train')}", f"val = {q(data + '/val')}",
              f"seq_len = {seq_len}", "", "[train]", f"global_batch_tokens = {batch_tokens}"]
    freezes = ([["inherited"]] * (len(split) - 1) if embed_head == "frozen"
               else _inherited_layer_globs(cfg, split))
    for i, (n, t) in enumerate(zip(split, tokens)):
        lines += ["", "[[stage]]", f"name = {q(f'stage{i + 1}')}"]
        if i == 0:
            lines.append(f"n_layers = {n}")
        else:
            lines.append(f'grow = {{ op = "interpolate", add = {n} }}')
            lines.append(f"freeze = {json.dumps(freezes[i - 1])}")
            if adapter_rank > 0:
                lines.append(_relora_line(adapter_rank, math.ceil(t / batch_tokens)))
        lines.append(f"tokens = {t}")
        if i < len(split) - 1:
            lines.append(f"schedule_tokens = {math.ceil(t / 0.75)}")
    return "\n".join(lines) + "\n"


def _relora_line(rank: int, steps: int) -> str:
    """ReLoRA merges and restarts every 5000 steps at most (never longer than the stage), with a
    re-warmup shorter than the interval."""
    every = max(1, min(RELORA_RESET_EVERY, steps))
    rewarm = "" if every > 50 else f", rewarmup_steps = {every // 2}"
    return f'adapters = {{ kind = "relora", rank = {rank}, reset_every = {every}{rewarm} }}'


def _write_step_recipe(a: argparse.Namespace, cfg, split: list[int]) -> None:
    from growlm.config import load_recipe

    text = step_recipe_toml(cfg, split, _stage_tokens(a.tokens, len(split)), a.adapter_rank,
                            a.seq_len, a.data, a.embed_head)
    path = check_path(a.write_recipe, "--write-recipe")
    if path.parent and not path.parent.is_dir():
        raise GrowlmError(f"--write-recipe {path}: folder {path.parent} does not exist")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        load_recipe(tmp)  # never leave a recipe behind that growlm cannot load
    except GrowlmError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


# ---------------------------------------------------------------- gstack

def _gstack_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="growlm plan gstack",
                description="Gstack growth factor and growth timing (tokens before stacking)")
    p.add_argument("--params", required=True, help="target model parameters N, e.g. 7B")
    p.add_argument("--tokens", required=True, help="total training tokens D, e.g. 300B")
    p.add_argument("--flops", default=None, help="compute budget C in FLOPs (default 6·N·D)")
    add_json_option(p, "the growth factor and timing")
    return p


def _run_gstack(a: argparse.Namespace) -> int:
    from growlm.plan.gstack import GrowthTimingWarning, gstack_timing

    n = parse_count(a.params, "--params")
    d = parse_count(a.tokens, "--tokens")
    c = None if a.flops is None else float(parse_count(a.flops, "--flops"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrowthTimingWarning)  # reported below instead
        result = gstack_timing(n, d, c)
    if result["warning"]:
        print(f"growlm plan gstack: warning: {result['warning']}", file=sys.stderr)
    emit_json(a.json, result)
    if a.json != STDOUT:
        print(f"Gstack for {human_count(n)} parameters on {human_count(d)} tokens "
              f"({result['flops']:.3g} FLOPs): growth factor g = {result['growth_factor']}, "
              f"grow after {human_count(result['growth_tokens'])} tokens ({result['rule']})")
    return 0
