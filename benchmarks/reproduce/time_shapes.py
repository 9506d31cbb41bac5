"""CPU seconds per training step of candidate model shapes, to size a reproduction scale.

    python benchmarks/reproduce/time_shapes.py                       # the built-in candidates
    python benchmarks/reproduce/time_shapes.py --rounds 5 --steps 8

Each candidate trains `--steps` steps of AdamW on random tokens (forward with the chunked loss,
backward, clip, update: the trainer's step without its bookkeeping) on one torch thread, and is
measured by `time.process_time()`, the CPU seconds this process used. On a machine shared with
other jobs, wall time measures the load more than the shape, but a single-threaded process's
CPU seconds stay close to what an idle core would take (cache and memory-bandwidth contention
remain: the uncertainty the output reports is the spread over rounds). Candidates are measured
in interleaved rounds so that a change of load falls on all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer
from growlm.plan.flops import count_flops

# (d_model, n_heads, ffn_dim, vocab, micro-batch sequences) at 8 layers, context 128
CANDIDATES = [(32, 2, 96, 512, 16), (48, 2, 144, 768, 16), (64, 2, 192, 1024, 16),
              (128, 4, 384, 2048, 16)]


def params(cfg: ModelConfig) -> int:
    return sum(p.numel() for p in Transformer(cfg).parameters())


def time_steps(cfg: ModelConfig, batch: int, seq: int, steps: int, seed: int) -> float:
    """CPU seconds per step, after one warm-up step."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    x = torch.randint(0, cfg.vocab_size, (batch, seq))
    y = torch.randint(0, cfg.vocab_size, (batch, seq))

    def step():
        loss = model(x, labels=y) / y.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    t = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - t) / steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--shape", action="append", metavar="D,HEADS,FFN,VOCAB,BATCH",
                   help="a candidate (repeatable; default: the built-in list)")
    args = p.parse_args(argv)
    shapes = ([tuple(int(x) for x in s.split(",")) for s in args.shape] if args.shape
              else CANDIDATES)
    torch.set_num_threads(1)
    cfgs = [(ModelConfig(vocab_size=v, d_model=d, n_layers=args.layers, n_heads=h, ffn_dim=f,
                         max_seq_len=args.seq), b) for d, h, f, v, b in shapes]
    times: dict[int, list[float]] = {i: [] for i in range(len(cfgs))}
    for r in range(args.rounds):
        for i, (cfg, b) in enumerate(cfgs):
            times[i].append(time_steps(cfg, b, args.seq, args.steps, seed=r))
    print(f"{'d':>4} {'vocab':>6} {'params':>9} {'emb+head':>8} {'tokens/step':>11} "
          f"{'CPU s/step':>10} {'spread':>7} {'tokens/CPU-s':>12} {'GFLOP/CPU-s (exact)':>20}")
    for i, (cfg, b) in enumerate(cfgs):
        n = params(cfg)
        share = 2 * cfg.vocab_size * cfg.d_model / n
        flops = count_flops(cfg, set(), 0, args.seq).exact_total
        med = statistics.median(times[i])
        spread = (max(times[i]) - min(times[i])) / med
        tokens = b * args.seq
        print(f"{cfg.d_model:>4} {cfg.vocab_size:>6} {n:>9,} {share:>8.1%} {tokens:>11,} "
              f"{med:>10.4f} {spread:>7.1%} {tokens / med:>12,.0f} "
              f"{flops * tokens / med / 1e9:>20.1f}")


if __name__ == "__main__":
    main()
