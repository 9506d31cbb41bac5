"""Does freezing save the time the FLOP count says it saves? Training-step time of four stages.

One base model, copied into four setups that differ only in what trains:

  full               everything trainable (the reference)
  frozen_embed_head  embedding and LM head frozen (Lee et al.'s reuse stage)
  frozen_lower       STEP's `freeze = ["inherited"]` after growing by appending layers on
                     top: embedding, the lower `--frozen-layers` layers, final norm and head
                     frozen; the new top layers train
  step_relora        frozen_lower plus ReLoRA adapters (rank `--rank`) on every linear of the
                     frozen layers (a STEP stage; no merge happens inside the timed steps)

A step is what the trainer does: zero_grad, forward, fp32 cross entropy, backward, AdamW step
over the trainable parameters (built by the trainer's own `build_optimizer`), same batch every
time. After a warmup the setups alternate rep by rep (the order rotates each rep), and the
script prints, per setup, the median step time and its phases, the measured time ratio vs
`full` (median of per-rep ratios, so slow drifts of a shared machine cancel), the exact
FLOP-count ratio (`count_flops(...).exact_total`, attention included), the papers' 6·N·D formula's
ratio (6·N_trainable + 2·N_frozen), and whether the measured saving is within 10% (relative)
of the exact count's saving.

    python benchmarks/frozen_speed.py                          # CPU, ~13M params, vocab 16k
    python benchmarks/frozen_speed.py --clock cpu --threads 1  # steadier on a busy machine
    python benchmarks/frozen_speed.py --profile                # where the time goes, per setup
    python benchmarks/frozen_speed.py --device cuda --d-model 1024 --n-layers 16 \
        --vocab 32000 --seq 1024 --batch 8 --frozen-layers 12 --rank 64

What the count leaves out (see `--profile`, which splits each setup's time into matmuls,
attention and the rest): the exact count has parameter matmuls and the attention core, and
freezing removes only matmul work (plus the optimizer step and the gradient buffers of frozen
tensors). The fp32 cross entropy over the vocabulary, the norms, RoPE, SiLU and residual adds
cost the same in every setup, so on CPU they dilute the saving: there the matmul time alone
follows the exact count within a few points while the whole step saves less. LoRA's rank-r
matmuls run far below the dense ones' throughput and add elementwise ops, so `step_relora`
saves less than counted.

`benchmarks/memory_vs_plan.py` checks the memory of the same kinds of stage against the
planner's estimate.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import dataclass, field

import torch

from growlm.adapters.lora import adapter_modules, apply_adapters
from growlm.config import AdapterSpec, GaloreSection, OptimSection
from growlm.freeze import apply_freeze, parameter_names, select_frozen
from growlm.model import ModelConfig, Transformer
from growlm.model.llama import cross_entropy
from growlm.optim.build import build_optimizer
from growlm.plan.flops import FlopCount, count_flops

SETUPS = ("full", "frozen_embed_head", "frozen_lower", "step_relora")
TOLERANCE = 0.10  # the goal: measured saving within 10% of the exact count's


@dataclass
class Setup:
    name: str
    model: Transformer
    opt: torch.optim.Optimizer
    frozen: set[str]
    adapters: dict[str, int]  # adapted linear → adapter parameters (count_flops' format)
    flops: FlopCount
    times: dict[str, list[float]] = field(default_factory=lambda: {"fwd": [], "bwd": [], "opt": []})

    def count(self, trainable: bool) -> int:
        seen = {id(p): p for p in self.model.parameters()}.values()
        return sum(p.numel() for p in seen if p.requires_grad == trainable)


def freeze_patterns(name: str, frozen_layers: int) -> list[str]:
    if name in ("full", "galore"):
        return []
    if name == "frozen_embed_head":
        return ["embedding", "head"]
    lower = [f"layers.{i}.*" for i in range(frozen_layers)]
    return ["embedding", *lower, "norm.weight", "head"]  # what "inherited" selects after growth


def build_setup(name: str, cfg: ModelConfig, state: dict, device: torch.device, *,
                frozen_layers: int, rank: int, seq_len: int, optimizer: str = "adamw",
                galore_rank: int = 128) -> Setup:
    """A copy of the model with `state`, frozen and adapted as setup `name` says, and the
    trainer's optimizer over what trains. `name` is one of SETUPS, or "galore" (all trainable,
    GaLore optimizer)."""
    model = Transformer(cfg)
    model.load_state_dict(state)
    patterns = freeze_patterns(name, frozen_layers)
    frozen = select_frozen(parameter_names(model), patterns) if patterns else set()
    apply_freeze(model, frozen)
    if name == "step_relora":
        spec = AdapterSpec(kind="relora", rank=rank, reset_every=5000)
        apply_adapters(model, spec, frozen, generator=torch.Generator().manual_seed(0))
    model.to(device).train()
    adapters = {n: m.lora_A.numel() + m.lora_B.numel() for n, m in adapter_modules(model).items()}
    optim_cfg = OptimSection(galore=GaloreSection(rank=galore_rank))
    kind = "galore" if name == "galore" else optimizer
    opt = build_optimizer(model, optim_cfg, kind, 1e-4, device)
    flops = count_flops(cfg, frozen, adapters, seq_len)
    return Setup(name, model, opt, frozen, adapters, flops)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(s: Setup, batch, device: torch.device, clock=time.perf_counter) -> dict[str, float]:
    """One optimizer step; returns the seconds of forward (incl. loss), backward, optimizer."""
    tokens, targets = batch
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    sync(device)
    t0 = clock()
    s.opt.zero_grad(set_to_none=True)
    with autocast:
        loss = cross_entropy(s.model(tokens), targets)
    sync(device)
    t1 = clock()
    loss.backward()
    sync(device)
    t2 = clock()
    s.opt.step()
    sync(device)
    t3 = clock()
    return {"fwd": t1 - t0, "bwd": t2 - t1, "opt": t3 - t2}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frozen-layers", type=int, default=4,
                   help="inherited lower layers frozen in frozen_lower / step_relora")
    p.add_argument("--rank", type=int, default=16,
                   help="ReLoRA rank (default d/16, STEP's 128 at d 2048)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per setup")
    p.add_argument("--reps", type=int, default=6, help="alternating timed reps")
    p.add_argument("--steps", type=int, default=2, help="steps per setup per rep")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="cpu: this process's CPU time (steadier when the machine is shared; "
                        "use with --threads 1)")
    p.add_argument("--profile", action="store_true",
                   help="print the ops whose time differs between setups instead of timing")
    return p.parse_args()


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
                 "aten::_flash_attention_forward", "aten::_flash_attention_backward",
                 "aten::_efficient_attention_forward", "aten::_efficient_attention_backward")


def profile(setups: list[Setup], batch, device: torch.device, steps: int) -> None:
    """Self time per op (ms per step) in every setup, and how much of each step is matmuls."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    per_op: dict[str, dict[str, float]] = {}
    for s in setups:
        with tprofile(activities=acts) as prof:
            for _ in range(steps):
                train_step(s, batch, device)
        for ev in prof.key_averages():
            per_op.setdefault(ev.key, {})[s.name] = getattr(ev, attr) / 1e3 / steps
    names = [s.name for s in setups]
    rows = sorted(per_op.items(), key=lambda kv: -max(kv[1].values()))[:22]
    print("self time per step, ms (ops with the largest time in any setup):")
    print(f"{'op':<52}" + "".join(f"{n[:17]:>18}" for n in names))
    for op, t in rows:
        print(f"{op[:51]:<52}" + "".join(f"{t.get(n, 0.0):18.1f}" for n in names))

    def total(n: str, ops=None) -> float:
        return sum(t.get(n, 0.0) for op, t in per_op.items() if ops is None or op in ops)

    full = setups[0]
    print(f"\n{'setup':<18}{'all ops':>9}{'matmul':>9}{'attn':>8}{'other':>8}"
          f"{'matmul ratio':>14}{'exact ratio (no attn)':>23}{'all ratio':>11}")
    for s in setups:
        mm, at, al = total(s.name, MATMUL_OPS), total(s.name, ATTENTION_OPS), total(s.name)
        print(f"{s.name:<18}{al:9.0f}{mm:9.0f}{at:8.0f}{al - mm - at:8.0f}"
              f"{mm / total(full.name, MATMUL_OPS):14.3f}{s.flops.exact / full.flops.exact:23.3f}"
              f"{al / total(full.name):11.3f}")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers,
                      n_heads=args.n_heads, max_seq_len=args.seq)
    torch.manual_seed(0)
    state = Transformer(cfg).state_dict()
    setups = [build_setup(n, cfg, state, device, frozen_layers=args.frozen_layers,
                          rank=args.rank, seq_len=args.seq) for n in SETUPS]
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=gen).to(device)
    batch = (data[:, :-1], data[:, 1:])
    print(f"config: {cfg.params_total / 1e6:.1f}M params (d {cfg.d_model}, {cfg.n_layers} layers, "
          f"vocab {cfg.vocab_size}: embedding+head {2 * cfg.params_embedding / cfg.params_total:.0%}"
          f"), batch {args.batch}x{args.seq}, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}"
          f" on {device.type}, threads {torch.get_num_threads()}, {args.clock} clock, "
          f"torch {torch.__version__}")
    for s in setups:
        for _ in range(args.warmup):
            train_step(s, batch, device)
    if args.profile:
        profile(setups, batch, device, args.steps)
        return
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rep_means: dict[str, list[float]] = {s.name: [] for s in setups}
    for rep in range(args.reps):
        order = setups[rep % len(setups):] + setups[:rep % len(setups)]
        for s in order:
            steps = [train_step(s, batch, device, clock) for _ in range(args.steps)]
            for phase in s.times:
                s.times[phase] += [x[phase] for x in steps]
            rep_means[s.name].append(statistics.fmean(sum(x.values()) for x in steps))
    report(setups, rep_means, args.batch * args.seq)


def report(setups: list[Setup], rep_means: dict[str, list[float]], tokens: int) -> None:
    full = setups[0]
    print(f"\n{'setup':<18}{'trainable':>12}{'frozen':>12}{'adapter':>10}"
          f"{'step ms':>9}{'fwd':>7}{'bwd':>7}{'opt':>6}{'GFLOP/s':>9}"
          f"{'t ratio':>9}{'exact':>7}{'6ND':>7}{'saving meas/exact':>19}  within 10%")
    for s in setups:
        med = {k: statistics.median(v) * 1e3 for k, v in s.times.items()}
        step_ms = statistics.median(
            [sum(x) for x in zip(*s.times.values())]) * 1e3
        ratios = [a / b for a, b in zip(rep_means[s.name], rep_means[full.name])]
        t_ratio = statistics.median(ratios)
        exact = s.flops.exact_total / full.flops.exact_total
        six_nd = s.flops.six_nd / full.flops.six_nd
        gflops = s.flops.exact_total * tokens / (step_ms / 1e3) / 1e9
        adapter = sum(s.adapters.values())
        line = (f"{s.name:<18}{s.count(True) - adapter:>12,}{s.count(False):>12,}{adapter:>10,}"
                f"{step_ms:9.0f}{med['fwd']:7.0f}{med['bwd']:7.0f}{med['opt']:6.0f}{gflops:9.1f}"
                f"{t_ratio:9.3f}{exact:7.3f}{six_nd:7.3f}")
        if s is not full:
            saved, predicted = 1 - t_ratio, 1 - exact
            ok = abs(saved - predicted) <= TOLERANCE * predicted
            line += f"{saved:>10.1%} /{predicted:>6.1%}  {'yes' if ok else 'NO'}"
        print(line)
        if s is not full:
            print(f"{'':<18}per-rep time ratios: " + " ".join(f"{r:.3f}" for r in ratios))
    print("\nt ratio: median over reps of (setup's mean step time / full's, same rep); "
          "exact: count_flops exact_total ratio (attention incl.); 6ND: 6·N_trainable + "
          "2·N_frozen ratio; GFLOP/s by the exact count.")


if __name__ == "__main__":
    main()
