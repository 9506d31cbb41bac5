"""Training-step throughput: growlm's Transformer vs HF `LlamaForCausalLM`, eager and compiled.

Every variant (growlm and HF, each eager and/or under `torch.compile`) gets the same config,
weights, batch, dtype, loss (fp32 cross entropy on the logits) and optimizer (AdamW), and runs
in the same process. The first step of each variant is timed on its own (it includes
compilation). After a warmup the variants alternate rep by rep (the order rotates each rep so
none always runs on a warmer cache), and the script prints the median tokens/s of each, the
median per-rep ratios growlm/HF (eager and compiled) and compiled/eager (growlm and HF). On a
GPU that `growlm.train.trainer.peak_flops` knows it also prints MFU from the exact FLOP count
(`ModelConfig.flops_per_token`: 6·N plus attention).

    python benchmarks/throughput.py                      # CPU, ~10M params, eager and compiled
    python benchmarks/throughput.py --compile no         # eager only (no compile time)
    python benchmarks/throughput.py --device cuda --d-model 1024 --n-layers 24 --n-heads 16 \
        --batch 16 --seq 1024 --vocab 32000
    python benchmarks/throughput.py --profile growlm     # where the time goes (torch.profiler)

`measure(...)` is the same measurement as a function (benchmarks/gpu_check.py uses it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from growlm.model import ModelConfig, Transformer
from growlm.model.hf import to_hf_config, to_hf_name
from growlm.train.trainer import peak_flops

LIBRARIES = ("growlm", "hf")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--n-kv-heads", type=int, default=None)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    p.add_argument("--reps", type=int, default=5, help="timed reps per variant (alternating)")
    p.add_argument("--steps", type=int, default=3, help="steps per rep")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--compile", default="both", choices=["no", "yes", "both"],
                   help="run the models eager, under torch.compile, or both side by side")
    p.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: this process's CPU time, steadier on a shared machine (use with --threads 1)",
    )
    p.add_argument("--profile", choices=["growlm", "hf"], help="print a profile instead")
    return p.parse_args()


def build_model(library: str, cfg: ModelConfig, state: dict, device: torch.device):
    if library == "growlm":
        model = Transformer(cfg)
        model.load_state_dict(state)
        return model.to(device).train()
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM._from_config(LlamaConfig.from_dict(to_hf_config(cfg)),
                                       attn_implementation="sdpa")
    hf.load_state_dict({to_hf_name(k): v for k, v in state.items()}, strict=True)
    hf.config.use_cache = False
    return hf.to(device).train()


def logits_of(library: str, model, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens) if library == "growlm" else model(input_ids=tokens, use_cache=False).logits


def make_step(library: str, model, batch, autocast: bool, compile_model: bool):
    """One training step (zero_grad, forward, fp32 cross entropy, backward, AdamW); returns
    the loss tensor."""
    device = batch[0].device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")
    fwd = torch.compile(model) if compile_model else model
    tokens, targets = batch

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            logits = logits_of(library, fwd, tokens)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, n: int, device: torch.device, clock=time.perf_counter) -> float:
    sync(device)
    start = clock()
    for _ in range(n):
        step()
    sync(device)
    return clock() - start


def variant_names(compile_mode: str) -> list[str]:
    modes = {"no": ["eager"], "yes": ["compiled"], "both": ["eager", "compiled"]}[compile_mode]
    return [f"{lib} {mode}" for mode in modes for lib in LIBRARIES]


def build_steps(cfg: ModelConfig, names: list[str], batch, device: torch.device, autocast: bool):
    torch.manual_seed(0)
    state = Transformer(cfg).state_dict()
    return {name: make_step(name.split()[0], build_model(name.split()[0], cfg, state, device),
                            batch, autocast, name.endswith("compiled")) for name in names}


def measure(cfg: ModelConfig, device: torch.device, *, batch: int, seq: int,
            compile_mode: str = "both", warmup: int = 3, reps: int = 5, steps: int = 3,
            clock=time.perf_counter, log=print) -> dict:
    """Tokens/s of each variant and the ratios between them (see the module doc).

    Returns {"variants": {name: {"tokens_per_s", "min", "max", "first_step_s",
    "first_loss", "gflops_per_s", "mfu"}}, "ratios": {...}, "flops_per_token": ...,
    "params": ...}; "mfu" is None where the GPU's peak is unknown (and on CPU).
    """
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=gen).to(device)
    autocast = device.type == "cuda"
    names = variant_names(compile_mode)
    step_fns = build_steps(cfg, names, (data[:, :-1], data[:, 1:]), device, autocast)
    out: dict = {name: {} for name in names}
    for name, step in step_fns.items():  # first step alone: it includes compilation
        sync(device)
        start = time.perf_counter()
        out[name]["first_loss"] = float(step())
        out[name]["first_step_s"] = time.perf_counter() - start
        log(f"  {name}: first step {out[name]['first_step_s']:.1f} s, "
            f"loss {out[name]['first_loss']:.5f}")
        timed(step, warmup, device)
    tokens = batch * seq * steps
    rates: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            rates[name].append(tokens / timed(step_fns[name], steps, device, clock))
    fpt, peak = cfg.flops_per_token(seq), peak_flops(device)
    for name, r in rates.items():
        med = statistics.median(r)
        out[name].update(tokens_per_s=med, min=min(r), max=max(r), gflops_per_s=fpt * med / 1e9,
                         mfu=fpt * med / peak if peak else None)
    ratios = {}
    for a, b, key in ratio_pairs(names):
        ratios[key] = {"median": statistics.median(x / y for x, y in zip(rates[a], rates[b])),
                       "per_rep": [x / y for x, y in zip(rates[a], rates[b])]}
    return {"variants": out, "ratios": ratios, "flops_per_token": fpt,
            "params": cfg.params_total, "tokens_per_step": batch * seq}


def ratio_pairs(names: list[str]) -> list[tuple[str, str, str]]:
    pairs = []
    for mode in ("eager", "compiled"):
        if f"growlm {mode}" in names:
            pairs.append((f"growlm {mode}", f"hf {mode}", f"growlm/hf {mode}"))
    for lib in LIBRARIES:
        if f"{lib} compiled" in names and f"{lib} eager" in names:
            pairs.append((f"{lib} compiled", f"{lib} eager", f"{lib} compiled/eager"))
    return pairs


def profile(step, device: torch.device) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tprofile(activities=acts) as prof:
        for _ in range(3):
            step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30))


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers,
                      n_heads=args.n_heads, n_kv_heads=args.n_kv_heads, max_seq_len=args.seq)
    autocast = device.type == "cuda"
    print(f"config: {cfg.params_total / 1e6:.1f}M params (d {cfg.d_model}, {cfg.n_layers} layers, "
          f"{cfg.n_heads} heads, vocab {cfg.vocab_size}), batch {args.batch}x{args.seq}, "
          f"{'bf16 autocast' if autocast else 'fp32'} on {device.type}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if autocast else ''}, "
          f"threads {torch.get_num_threads()}, {args.clock} clock, torch {torch.__version__}")
    if args.profile:
        gen = torch.Generator().manual_seed(1)
        data = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=gen).to(device)
        mode = "compiled" if args.compile == "yes" else "eager"
        name = f"{args.profile} {mode}"
        step = build_steps(cfg, [name], (data[:, :-1], data[:, 1:]), device, autocast)[name]
        for _ in range(args.warmup + 1):
            step()
        profile(step, device)
        return
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    result = measure(cfg, device, batch=args.batch, seq=args.seq, compile_mode=args.compile,
                     warmup=args.warmup, reps=args.reps, steps=args.steps, clock=clock)
    for name, v in result["variants"].items():
        mfu = f", MFU {v['mfu']:.1%}" if v["mfu"] is not None else ""
        print(f"{name:>15}: {v['tokens_per_s']:10.0f} tokens/s (median of {args.reps}; "
              f"min {v['min']:.0f}, max {v['max']:.0f}); {v['gflops_per_s']:.1f} GFLOP/s{mfu}")
    for key, r in result["ratios"].items():
        print(f"  ratio {key}: {r['median']:.3f} (median; per rep "
              + " ".join(f"{x:.2f}" for x in r["per_rep"]) + ")")


if __name__ == "__main__":
    main()
