"""Training-step throughput: growlm's Transformer vs HF `LlamaForCausalLM`.

Both models get the same config, weights, batch, dtype, loss (fp32 cross entropy on the
logits) and optimizer (AdamW), and run in the same process. After a warmup the two alternate,
rep by rep (the order flips each rep so neither always runs on a warmer cache), and the script
prints the median tokens/s of each and the median per-rep ratio growlm/HF. On CUDA it also
prints MFU from the 6·N + attention FLOP count.

    python benchmarks/throughput.py                      # CPU, ~10M params
    python benchmarks/throughput.py --device cuda --d-model 1024 --n-layers 16 --batch 16 \
        --seq 1024 --vocab 32000 [--compile]
    python benchmarks/throughput.py --profile growlm     # where the time goes (torch.profiler)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from growlm.model import ModelConfig, Transformer
from growlm.model.hf import to_hf_config, to_hf_name

# Dense bf16 tensor-core peak per GPU (vendor datasheets, SXM parts; no sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


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
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model")
    p.add_argument("--reps", type=int, default=5, help="timed reps per model (alternating)")
    p.add_argument("--steps", type=int, default=3, help="steps per rep")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: this process's CPU time, steadier on a shared machine (use with --threads 1)",
    )
    p.add_argument("--profile", choices=["growlm", "hf"], help="print a profile instead")
    return p.parse_args()


def build_models(cfg: ModelConfig, device: torch.device) -> dict[str, torch.nn.Module]:
    from transformers import LlamaConfig, LlamaForCausalLM

    ours = Transformer(cfg).to(device)
    hf_cfg = LlamaConfig.from_dict(to_hf_config(cfg))
    hf = LlamaForCausalLM._from_config(hf_cfg, attn_implementation="sdpa").to(device)
    hf.load_state_dict({to_hf_name(k): v for k, v in ours.state_dict().items()}, strict=True)
    hf.config.use_cache = False
    return {"growlm": ours.train(), "hf": hf.train()}


def logits_of(name: str, model, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens) if name == "growlm" else model(input_ids=tokens, use_cache=False).logits


def make_step(name, model, opt, batch, autocast: bool, compile_model: bool):
    fwd = torch.compile(model) if compile_model else model
    tokens, targets = batch

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(tokens.device.type, torch.bfloat16, enabled=autocast):
            logits = logits_of(name, fwd, tokens)
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


def gpu_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


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
    torch.manual_seed(0)
    models = build_models(cfg, device)
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=gen).to(device)
    batch = (data[:, :-1], data[:, 1:])
    autocast = device.type == "cuda"
    steps = {}
    for name, model in models.items():
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                weight_decay=0.1, fused=device.type == "cuda")
        steps[name] = make_step(name, model, opt, batch, autocast, args.compile)

    print(f"config: {cfg.params_total / 1e6:.1f}M params (d {cfg.d_model}, {cfg.n_layers} layers, "
          f"{cfg.n_heads} heads, vocab {cfg.vocab_size}), batch {args.batch}x{args.seq}, "
          f"{'bf16 autocast' if autocast else 'fp32'} on {device.type}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if autocast else ''}, "
          f"threads {torch.get_num_threads()}, {args.clock} clock, torch {torch.__version__}"
          f"{', compiled' if args.compile else ''}")
    if args.profile:
        for _ in range(args.warmup):
            steps[args.profile]()
        profile(steps[args.profile], device)
        return

    losses = {name: float(step()) for name, step in steps.items()}  # first step (+compile)
    print("first-step loss: " + ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
    for step in steps.values():
        timed(step, args.warmup, device)
    tokens = args.batch * args.seq * args.steps
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(args.reps):
        order = list(steps) if rep % 2 == 0 else list(reversed(steps))
        for name in order:
            rates[name].append(tokens / timed(steps[name], args.steps, device, clock))
    ratios = [g / h for g, h in zip(rates["growlm"], rates["hf"])]
    flops_per_token = cfg.flops_per_token(args.seq)
    peak = gpu_peak(device)
    for name, r in rates.items():
        med = statistics.median(r)
        mfu = f", MFU {flops_per_token * med / peak:.1%}" if peak else ""
        gflops = flops_per_token * med / 1e9
        print(f"{name:>7}: {med:10.0f} tokens/s (median of {len(r)}; "
              f"min {min(r):.0f}, max {max(r):.0f}); {gflops:.1f} GFLOP/s{mfu}")
    print(f"  ratio growlm/HF: {statistics.median(ratios):.3f} (median; per rep "
          + " ".join(f"{x:.2f}" for x in ratios) + ")")


if __name__ == "__main__":
    main()
