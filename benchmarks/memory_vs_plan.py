"""The planner's peak-memory estimate against the measured peak of real training steps.

Each configuration of the grid is a stage built by the trainer's own boundary code
(`growlm.train.boundary.enter_stage`, the second stage of a two-stage recipe for STEP) and
trained by its train step (`growlm.train.step.train_step`) on random tokens. The second step
(the optimizer state exists by then, as in every later step) runs under
`growlm.memory_probe.PeakMemory`, the trainer's probe: the CPU allocator's running total from
the profiler's memory events, on top of the live tensors at the step's start. The estimate is
`growlm.train.boundary.stage_memory` — what the trainer logs as `peak_estimated_bytes` — for
the run's device and precision (fp32 on CPU).

Grid: stage kinds (everything trainable; embedding and head frozen, Lee et al.; embedding,
head, final norm and the lower half of the layers frozen; a STEP stage: interpolated new
layers, the inherited ones frozen with ReLoRA adapters; GaLore) × micro-batch sizes ×
sequence lengths × activation checkpointing off/on × vocabularies. For each it prints the
measured and estimated peak, their ratio (estimated / measured), the ratio of what the step
added above its starting bytes, and the moment of the step the estimate puts the peak at.
The goal is a ratio within 10% everywhere.

    python benchmarks/memory_vs_plan.py                       # the full grid, ~10 minutes on 2 cores
    python benchmarks/memory_vs_plan.py --setups full,galore --vocab 2048 --batch 4 --seq 64
    python benchmarks/memory_vs_plan.py --accumulation 2      # two micro-batches per step
    python benchmarks/memory_vs_plan.py --json results.json   # the rows as JSON too

On CUDA (`--device cuda`) the probe reads `torch.cuda.max_memory_allocated` and the estimate is
for bf16 autocast over fp32 weights; this project's machines had no GPU to check it on.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import time

import torch

from growlm.config import config_from_dict
from growlm.memory_probe import PeakMemory
from growlm.stages import resolve_stages
from growlm.train import boundary
from growlm.train.parallel import Parallelism
from growlm.train.step import train_step

MiB = 2**20
SETUPS = ("full", "frozen_embed_head", "frozen_lower", "step_relora", "galore")
TOLERANCE = 0.10


def stages_of(setup: str, n_layers: int, d_model: int) -> tuple[list[dict], dict]:
    """The recipe's [[stage]] list and [optim] section for a setup."""
    half = n_layers // 2
    one = {"name": "s", "steps": 4}
    if setup == "full":
        return [one], {"name": "adamw"}
    if setup == "frozen_embed_head":
        return [{**one, "freeze": ["embedding", "head"]}], {"name": "adamw"}
    if setup == "frozen_lower":
        lower = [f"layers.{i}.*" for i in range(half)]
        return [{**one, "freeze": ["embedding", "head", "norm.weight", *lower]}], {"name": "adamw"}
    if setup == "step_relora":
        relora = {"kind": "relora", "rank": 8, "reset_every": 4, "rewarmup_steps": 1}
        return [{"name": "a", "n_layers": half, "steps": 4},
                {"name": "b", "steps": 4, "grow": {"op": "interpolate", "add": n_layers - half},
                 "freeze": ["inherited"], "adapters": relora}], {"name": "adamw"}
    if setup == "galore":
        return [one], {"name": "galore", "galore": {"rank": max(1, d_model // 4)}}
    raise SystemExit(f"unknown setup {setup!r}; choose from {', '.join(SETUPS)}")


def recipe(args, setup: str, vocab: int, batch: int, seq: int, checkpointing: bool):
    stages, optim = stages_of(setup, args.n_layers, args.d_model)
    return config_from_dict({
        "run": {"name": "bench", "device": args.device, "activation_checkpointing": checkpointing},
        "model": {"vocab_size": vocab, "d_model": args.d_model, "n_layers": args.n_layers,
                  "n_heads": args.n_heads, "max_seq_len": seq},
        "data": {"train": "unused", "seq_len": seq},
        "train": {"global_batch_tokens": seq * batch * args.accumulation, "micro_batch_size": batch},
        "optim": optim, "stage": stages}, f"memory_vs_plan:{setup}")


def measure(cfg, device: torch.device) -> dict:
    """Build the recipe's last stage, take one step, probe the second; return the figures."""
    stages = resolve_stages(cfg, cfg.source)
    handoff = previous = None
    if len(stages) > 1:  # the previous stage's weights, handed on (not trained: shapes matter)
        previous = stages[-2]
        handoff = boundary.HandOff(previous.model, boundary.new_model(previous.model, 1).state_dict())
    parallel = Parallelism(cfg.run, None, device)
    built = boundary.enter_stage(cfg, stages[-1], handoff, previous, parallel=parallel, device=device)
    built.module = parallel.wrap(built.model, built.optimizer)
    del handoff  # as the trainer does once a stage is built
    estimate = boundary.stage_memory(built, cfg, device_type=device.type)
    gen = torch.Generator().manual_seed(0)
    accumulation = boundary.accumulation_steps(cfg)
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda"
                else contextlib.nullcontext)

    def step():
        batches = []
        for _ in range(accumulation):
            x = torch.randint(0, cfg.model.vocab_size, (cfg.train.micro_batch_size, cfg.data.seq_len + 1),
                              generator=gen).to(device)
            batches.append((x[:, :-1].contiguous(), x[:, 1:].contiguous()))
        train_step(built, batches, lr=1e-3, grad_clip=1.0, autocast=autocast)

    step()
    with PeakMemory(device) as probe:
        step()
    above = estimate.peak - estimate.weights - estimate.optimizer_state - estimate.buffers
    return {"measured": probe.peak_bytes, "estimated": estimate.peak,
            "measured_above_start": probe.peak_above_baseline_bytes, "estimated_above_start": above,
            "ratio": estimate.peak / probe.peak_bytes,
            "ratio_above_start": above / probe.peak_above_baseline_bytes,
            "moment": estimate.moment, "method": probe.method,
            "model_state_estimated": estimate.model_state}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--setups", default=",".join(SETUPS))
    p.add_argument("--vocab", default="2048,8192,50257", help="comma-separated vocabulary sizes")
    p.add_argument("--batch", default="1,4", help="comma-separated micro-batch sizes")
    p.add_argument("--seq", default="64,256", help="comma-separated sequence lengths")
    p.add_argument("--checkpointing", default="off,on", help="off, on or off,on")
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches per step")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    grid = list(itertools.product(args.setups.split(","), ints(args.vocab), ints(args.batch),
                                  ints(args.seq), [c == "on" for c in args.checkpointing.split(",")]))
    print(f"d_model {args.d_model}, {args.n_layers} layers, {args.n_heads} heads, {args.accumulation} "
          f"micro-batch(es) per step, {device.type}, torch {torch.__version__}; {len(grid)} configurations")
    head = (f"{'setup':<18}{'vocab':>7}{'batch':>6}{'seq':>5}{'ckpt':>5}{'measured':>11}{'estimated':>11}"
            f"{'est/meas':>9}{'above start':>13}{'est/meas':>9}  peak moment")
    print(head + "\n" + "-" * len(head))
    rows, t0 = [], time.perf_counter()
    for setup, vocab, batch, seq, ckpt in grid:
        row = {"setup": setup, "vocab": vocab, "batch": batch, "seq": seq, "checkpointing": ckpt,
               **measure(recipe(args, setup, vocab, batch, seq, ckpt), device)}
        rows.append(row)
        print(f"{setup:<18}{vocab:>7}{batch:>6}{seq:>5}{'on' if ckpt else 'off':>5}"
              f"{row['measured'] / MiB:>11.1f}{row['estimated'] / MiB:>11.1f}{row['ratio']:>9.3f}"
              f"{row['measured_above_start'] / MiB:>13.1f}{row['ratio_above_start']:>9.3f}  {row['moment']}",
              flush=True)
        gc.collect()
    ratios = [r["ratio"] for r in rows]
    above = [r["ratio_above_start"] for r in rows]
    inside = sum(abs(r - 1) <= TOLERANCE for r in ratios)
    print(f"\nMiB. estimated / measured peak: {min(ratios):.3f}–{max(ratios):.3f} "
          f"({inside}/{len(rows)} within {TOLERANCE:.0%}); above the step's starting bytes: "
          f"{min(above):.3f}–{max(above):.3f}. Measured by {rows[0]['method']}; "
          f"{time.perf_counter() - t0:.0f} s.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
