"""Peak memory of one forward + backward: the plain loss against the chunked one.

For each vocabulary size the script builds the same small model twice over (same seed) and
measures, with `growlm.memory_probe.PeakMemory`, one forward + backward of a batch:

* **plain**: `model(tokens)` → (batch, seq, vocab) logits → `F.cross_entropy(logits.float(),
  reduction="sum")`, what a trainer does without the chunked path;
* **chunked**: `model(tokens, labels)`, the summed loss of `growlm.model.loss`, which never
  holds more than one chunk of logits (the implementation it picked is printed);
* **checkpointed**: the same call with the implementation forced to "checkpoint", the path a
  LoRA-wrapped head or autocast without Liger takes (the head's forward is recomputed).

Both run in one process, one after the other. The figures are the peak of live bytes above the
window's baseline (the model's weights, live before the window, are the same for both), so
their ratio is the saving of the loss alone plus the activations both share. The losses are
printed too: they agree to fp32 rounding. Wall times are printed for information; on 2 shared
CPU cores they are noisy.

    python benchmarks/chunked_loss.py                       # vocab 2048, 8192, 50257; 8 × 1024
    python benchmarks/chunked_loss.py --device cuda --d-model 1024 --n-layers 4
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.nn.functional as F

from growlm.memory_probe import PeakMemory
from growlm.model import ModelConfig, Transformer
from growlm.model import loss as loss_module
from growlm.model.loss import chunk_positions, loss_impl

MiB = 2**20


def _plain(model, tokens, labels):
    logits = model(tokens)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum")


def _chunked(model, tokens, labels):
    return model(tokens, labels)


def _checkpointed(model, tokens, labels):
    chosen = loss_module.loss_impl
    loss_module.loss_impl = lambda hidden, head: "checkpoint"
    try:
        return model(tokens, labels)
    finally:
        loss_module.loss_impl = chosen


def measure(model, tokens, labels, fn, device) -> dict:
    model.zero_grad(set_to_none=True)
    gc.collect()
    with PeakMemory(device) as probe:
        start = time.perf_counter()
        loss = fn(model, tokens, labels)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start  # the probe's own start and stop excluded
    return {"loss": loss.item(), "peak": probe.peak_above_baseline_bytes, "method": probe.method,
            "seconds": seconds}


def run(vocab: int, args, device) -> tuple[dict, dict, dict, str]:
    cfg = ModelConfig(vocab_size=vocab, d_model=args.d_model, n_layers=args.n_layers,
                      n_heads=args.n_heads, max_seq_len=args.seq)
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (args.batch, args.seq + 1), generator=gen).to(device)
    tokens, labels = tokens[:, :-1], tokens[:, 1:]
    hidden = torch.empty(1, args.d_model, device=device, requires_grad=True)
    impl = loss_impl(hidden, model.lm_head)
    plain = measure(model, tokens, labels, _plain, device)
    chunked = measure(model, tokens, labels, _chunked, device)
    checkpointed = measure(model, tokens, labels, _checkpointed, device)
    return plain, chunked, checkpointed, impl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[2048, 8192, 50257])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; batch "
          f"{args.batch} × seq {args.seq}, d_model {args.d_model}, {args.n_layers} layers")
    print(f"{'vocab':>7} {'fp32 logits':>11} {'plain peak':>11} {'chunked peak':>12} {'ratio':>6} "
          f"{'impl':>6} {'chunk':>6} {'ckpt peak':>10} {'ratio':>6} {'plain s':>8} "
          f"{'chunked s':>9} {'ckpt s':>7} {'loss rel. diff':>14}")
    with PeakMemory(device):  # the profiler's one-time start-up stays out of the timings
        pass
    for vocab in args.vocab:
        plain, chunked, ckpt, impl = run(vocab, args, device)
        logits = args.batch * args.seq * vocab * 4
        diff = max(abs(plain["loss"] - r["loss"]) for r in (chunked, ckpt)) / abs(plain["loss"])
        chunk = "auto" if impl == "liger" else str(chunk_positions(vocab))
        print(f"{vocab:>7} {logits / MiB:>7.0f} MiB {plain['peak'] / MiB:>7.0f} MiB "
              f"{chunked['peak'] / MiB:>8.0f} MiB {plain['peak'] / chunked['peak']:>5.1f}× "
              f"{impl:>6} {chunk:>6} {ckpt['peak'] / MiB:>6.0f} MiB "
              f"{plain['peak'] / ckpt['peak']:>5.1f}× {plain['seconds']:>8.2f} "
              f"{chunked['seconds']:>9.2f} {ckpt['seconds']:>7.2f} {diff:>14.1e}")
    print(f"peak = most live bytes above the window's baseline ({plain['method']})")


if __name__ == "__main__":
    main()
