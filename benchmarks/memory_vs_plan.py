"""Model-state memory of a training stage: the planner's estimate against the live tensors.

For each setup (the stages of `frozen_speed.py` plus GaLore) the script builds the model and
the trainer's optimizer, runs 2 training steps, and measures, after the second optimizer step
and before gradients are released (when weights, gradients and optimizer state are all alive,
as the trainer measures):

* the bytes of the distinct storages behind parameters, gradients and optimizer-state tensors;
* on CUDA also `torch.cuda.max_memory_allocated` over the whole build + 2 steps.

It prints them next to two estimates:

* **paper**: `growlm.plan.memory.model_state_bytes` = 16·P_trainable + 2·P_frozen +
  16·P_adapter. Both seed papers assume bf16 mixed precision: bf16 weight (2) and gradient (2),
  fp32 master copy (4) and Adam moments (8) for a trainable parameter, only the bf16 weight (2)
  for a frozen one; a GaLore-projected m×n weight 8·m·n plus its fp32 moments (8·r·max(m, n))
  and projector (4·r·min(m, n)), as `growlm.plan.memory.galore_matrix_bytes` counts it.
* **dtype-aware**: the same accounting for how the tensors are really stored here. growlm keeps
  weights in fp32 (on CUDA bf16 is autocast compute, not storage), so a trainable parameter is
  4 (weight) + 4 (gradient) + 8 (Adam) = 16 bytes — the same 16, with no separate master copy —
  but a frozen parameter is its fp32 weight, 4 bytes, not 2. Adam's `step` is a 4-byte tensor
  per parameter tensor. GaLore keeps, per projected m×n matrix, two moments of r·max(m, n) and
  a projector of r·min(m, n) values instead of 2·m·n.

So on fp32 storage the paper formula undercounts frozen weights by half (the ratio measured /
paper grows with the frozen share), while measured / dtype-aware should be ≈ 1. On CUDA the
allocator peak is compared with dtype-aware model state + `activation_bytes` (bf16
activations, fused attention); autocast's bf16 weight copies, the loss's temporaries and
allocator rounding are not in the estimate.

    python benchmarks/memory_vs_plan.py                    # CPU, same shape as frozen_speed.py
    python benchmarks/memory_vs_plan.py --device cuda --d-model 1024 --n-layers 16 \
        --vocab 32000 --seq 1024 --batch 8 --frozen-layers 12 --rank 64 --galore-rank 256
"""

from __future__ import annotations

import argparse
import gc

import torch
from frozen_speed import Setup, build_setup, train_step  # benchmarks/ is on sys.path as script dir

from growlm.model import ModelConfig, Transformer
from growlm.optim.galore import GaLoreAdamW
from growlm.plan.memory import activation_bytes, galore_groups_saving, model_state_bytes

SETUPS = ("full", "frozen_embed_head", "frozen_lower", "step_relora", "galore")
MiB = 2**20


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views and tied weights count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if torch.is_tensor(t):
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def measured_state(s: Setup) -> dict[str, int]:
    params = list(s.model.parameters())
    states = [v for st in s.opt.state.values() for v in st.values()]
    return {"params": storage_bytes(params),
            "grads": storage_bytes(p.grad for p in params if p.grad is not None),
            "optimizer": storage_bytes(states)}


def _galore_state_bytes(p: torch.Tensor, rank: int) -> int:
    m, n = p.shape
    r = min(rank, m, n)
    return p.element_size() * (2 * r * max(m, n) + r * min(m, n))


def dtype_aware_bytes(s: Setup) -> int:
    """Weights, gradients and optimizer state as they are stored (see the module docstring)."""
    galore = {}
    if isinstance(s.opt, GaLoreAdamW):
        galore = {id(p): g["rank"] for g in s.opt.param_groups if g["rank"] is not None
                  for p in g["params"] if p.dim() == 2}
    total = 0
    for p in {id(p): p for p in s.model.parameters()}.values():
        size = p.numel() * p.element_size()
        total += size
        if not p.requires_grad:
            continue
        total += size  # gradient, same dtype as the weight
        if id(p) in galore:
            total += _galore_state_bytes(p, galore[id(p)])
        else:
            total += 2 * size + (0 if isinstance(s.opt, GaLoreAdamW) else 4)  # moments + step
    return total


def paper_bytes(s: Setup) -> int:
    adapter = sum(s.adapters.values())
    trainable = s.count(True) - adapter
    return model_state_bytes(trainable, s.count(False), adapter) - galore_groups_saving(s.opt.param_groups)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frozen-layers", type=int, default=4)
    p.add_argument("--rank", type=int, default=16, help="ReLoRA rank")
    p.add_argument("--galore-rank", type=int, default=16, help="GaLore rank")
    return p.parse_args()


def run_setup(name: str, cfg: ModelConfig, state: dict, batch, device, args) -> dict:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)  # the batch and anything left over
    s = build_setup(name, cfg, state, device, frozen_layers=args.frozen_layers, rank=args.rank,
                    seq_len=args.seq, galore_rank=args.galore_rank)
    for _ in range(2):
        train_step(s, batch, device)  # ends after opt.step(): gradients still alive
    row = {"name": name, "measured": measured_state(s), "paper": paper_bytes(s),
           "dtype_aware": dtype_aware_bytes(s), "adapter": sum(s.adapters.values()),
           "trainable": s.count(True), "frozen": s.count(False)}
    if device.type == "cuda":
        row["peak"] = torch.cuda.max_memory_allocated(device) - base
        row["activations"] = activation_bytes(cfg, args.batch, args.seq, s.frozen, s.adapters,
                                              bytes_per_activation=2, fused_attention=True)
    return row


def report(rows: list[dict], cuda: bool) -> None:
    print(f"\n{'setup':<18}{'trainable':>11}{'frozen':>11}{'adapter':>9}"
          f"{'params':>9}{'grads':>8}{'optim':>8}{'measured':>10}{'paper':>9}{'dtype-aw':>10}"
          f"{'meas/paper':>11}{'meas/dtype':>11}{'vs full':>9}")
    full = sum(rows[0]["measured"].values())
    for r in rows:
        m = r["measured"]
        total = sum(m.values())
        print(f"{r['name']:<18}{r['trainable'] - r['adapter']:>11,}{r['frozen']:>11,}"
              f"{r['adapter']:>9,}{m['params'] / MiB:9.1f}{m['grads'] / MiB:8.1f}"
              f"{m['optimizer'] / MiB:8.1f}{total / MiB:10.1f}{r['paper'] / MiB:9.1f}"
              f"{r['dtype_aware'] / MiB:10.1f}{total / r['paper']:11.3f}"
              f"{total / r['dtype_aware']:11.3f}{total / full:9.3f}")
    print("MiB; measured = distinct storages of parameters + gradients + optimizer state after "
          "step 2; paper = 16·P_trainable + 2·P_frozen + 16·P_adapter (GaLore: its projected state); "
          "dtype-aware = as stored "
          "(fp32 weights: frozen 4 B/param, trainable 4+4+8).")
    if cuda:
        print(f"\n{'setup':<18}{'peak':>10}{'state (dt)':>11}{'activ.':>10}{'estimate':>10}"
              f"{'peak/est':>9}{'paper+act':>11}{'peak/paper+act':>15}")
        for r in rows:
            est = r["dtype_aware"] + r["activations"]
            paper = r["paper"] + r["activations"]
            print(f"{r['name']:<18}{r['peak'] / MiB:10.1f}{r['dtype_aware'] / MiB:11.1f}"
                  f"{r['activations'] / MiB:10.1f}{est / MiB:10.1f}{r['peak'] / est:9.3f}"
                  f"{paper / MiB:11.1f}{r['peak'] / paper:15.3f}")
        print("MiB; peak = torch.cuda.max_memory_allocated over build + 2 steps (bf16 autocast); "
              "activ. = plan.memory.activation_bytes (bf16, fused attention, no checkpointing).")


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers,
                      n_heads=args.n_heads, max_seq_len=args.seq)
    torch.manual_seed(0)
    state = Transformer(cfg).state_dict()
    data = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1),
                         generator=torch.Generator().manual_seed(1)).to(device)
    batch = (data[:, :-1], data[:, 1:])
    print(f"config: {cfg.params_total / 1e6:.1f}M params (d {cfg.d_model}, {cfg.n_layers} layers, "
          f"vocab {cfg.vocab_size}), batch {args.batch}x{args.seq}, {args.frozen_layers} frozen "
          f"lower layers, ReLoRA rank {args.rank}, GaLore rank {args.galore_rank}, "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'} on {device.type}")
    rows = [run_setup(n, cfg, state, batch, device, args) for n in SETUPS]
    report(rows, device.type == "cuda")


if __name__ == "__main__":
    main()
