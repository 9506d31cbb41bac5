"""The report's setup (scale, data, stage proportions, searches) and environment (hardware,
versions, date, load, time and CPU by task) blocks."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import methods as M

from growlm.report.document import Bullets, Heading, Table


def setup_blocks(scale: M.Scale, shards: Path, target: int, outcomes: list[dict]) -> list:
    from growlm.data import open_shards

    sh = open_shards(shards)
    two, three = M.step_split(scale, 2), M.step_split(scale, 3)
    growth, timing = M.gstack_growth_steps(scale)
    phases = M.operator_phases(scale)
    low, high = scale.ladder
    rows = [[o["method"], str(o["stages"].get("steps")), f"{o['stages'].get('flops_ratio', 1.0):.4f}",
             str(o.get("lr_s1") or "-"), str(o.get("best_lr") or "-")] for o in outcomes]
    return [
        Heading("Setup"),
        Bullets([
            f"Corpus: enwiki 2015 (WikiExtractor) train file, {sh.num_tokens('train'):,} tokens; "
            f"validation: its separate validation file, {sh.num_tokens('val'):,} tokens. Byte-level "
            f"BPE with {sh.vocab_size} tokens trained on the training text.",
            f"Final shape (all methods): {scale.n_layers} layers, d_model {scale.d_model}, "
            f"{scale.n_heads} heads, FFN {scale.ffn}, context {scale.seq_len}: {scale.params:,} "
            f"parameters, embedding + head {M.params_share(scale):.1%} of them.",
            f"Baseline: {scale.steps} steps of {scale.batch_tokens:,} tokens "
            f"({scale.steps * scale.batch_tokens:,} tokens, {scale.tokens_per_param:.3g} per "
            f"parameter, all parameters counted as Chinchilla counts them); every method's last "
            f"stage is sized so that its exact FLOPs equal the baseline's ({target:.3e}).",
            f"Stage lengths: reuse stage 1 = 1/2 of the baseline's steps (the small model; stage 2 "
            f"re-reads the same data); STEP splits {two} and {three} layers (its integer program, "
            f"growlm.plan.step_ip), each non-final stage 75% of its planned schedule (3/8 of a 1/2 "
            f"plan; 3/10 of 4/10 plans); Gstack stacks ×4 after {growth} steps "
            f"({timing['rule']} rule of growlm.plan.gstack: {timing['growth_tokens']:,} tokens), its "
            f"LR planned over the whole run; ReLoRA's full-rank warm start 1/4. The operator study "
            f"grows at Gstack's point too, from a quarter of the layers (depth) or every width "
            f"halved (width); G_learn's maps learn for the grown stage's first "
            f"{phases['learn_steps']} steps (B/36), G_random's masks ramp over "
            f"{phases['mask_steps']} (B/12).",
            f"LR search (every method, and the reuse methods' small model alone first, keeping its "
            f"lowest validation loss as Lee et al. do): rungs lr0 · 2^k, lr0 = {scale.lr:g}, k from "
            f"{low} to {high}, walked until the best is bracketed. Every run has the full budget."
            + (" The operator study's other seven methods are not searched: each runs once, seed "
               "1, at gstack's best LR (its verdicts (f) and (g) are on single runs)."
               if scale.operators == "gstack-lr" else ""),
            f"Seeds: {scale.seeds} for the baseline and each searched method's best LR (seed 1 is "
            f"the search's run).",
            f"Validation loss: {scale.eval_tokens:,} tokens of the validation split every "
            f"{scale.eval_every} steps. Evaluation of seed 1: WikiText-2 test (lm-eval's word "
            f"perplexity) and zero-shot tasks on at most {scale.eval_limit} examples each; word "
            f"similarity of every seed.",
        ]),
        Table(["method", "steps per stage", "FLOPs / baseline", "stage-1 LR", "best LR"], rows,
              "lrrrr"),
    ]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment_blocks(progress: dict, env: dict) -> list:
    import numpy
    import tokenizers
    import torch

    from growlm import __version__

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    tasks = progress.get("tasks", {})
    cpu = sum(t["cpu_s"] for t in tasks.values()) / 60
    by_kind: dict[str, list[float]] = {}
    for name, t in tasks.items():
        kind = name.split(":")[0].rstrip("0123456789")
        w = by_kind.setdefault(kind, [0.0, 0.0])
        w[0] += t["wall_s"] / 60
        w[1] += t["cpu_s"] / 60
    timing = ", ".join(f"{k} {w:.1f} min wall / {c:.1f} CPU-min" for k, (w, c) in by_kind.items())
    wall = (progress.get("scheduler_wall_s", 0) + progress.get("prepare_s", 0)) / 60
    return [Heading("Environment"), Bullets([
        f"Date: started {env['started']}, report written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        f"Hardware: {cpu_name()}, {os.cpu_count()} logical CPUs; {env['jobs']} task(s) at a time, "
        f"{env['threads']} torch thread(s) each; GPU: {device}.",
        f"Load average (1/5/15 min) at start {tuple(round(x, 1) for x in env['load_start'])}, at "
        f"end {tuple(round(x, 1) for x in env['load_end'])}: on a machine shared with other "
        f"jobs, wall times are upper bounds of what it needs.",
        f"Versions: Python {platform.python_version()}, torch {torch.__version__}, numpy "
        f"{numpy.__version__}, tokenizers {tokenizers.__version__}, growlm {__version__}.",
        f"Time (all sessions of the command): {wall:.1f} min wall, {cpu:.1f} CPU-min in tasks; "
        f"by kind of task: {timing or 'none'}.",
    ])]
