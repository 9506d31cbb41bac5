"""The GPU measurements in one command, written to one JSON summary.

    bash benchmarks/gpu_check.sh [OUT_DIR]                        # one H100/H200, < 10 minutes
    python benchmarks/gpu_check.py --out gpu_check.json           # the same without the wrapper
    python benchmarks/gpu_check.py --cpu-smoke --out smoke.json   # every code path, tiny, on CPU

Checks, in the order they run (sizes for a GPU; `--cpu-smoke` runs each at a tiny size):

- `throughput.{125m,350m}.eager`: training-step tokens/s and MFU of growlm's model against HF
  `LlamaForCausalLM` (benchmarks/throughput.py's `measure`), bf16 autocast, same weights and
  batch; `.compiled` (run last: compiling is the slowest part) measures both under
  torch.compile next to their eager runs, giving growlm/HF compiled and compiled/eager.
- `chunked_loss`: peak memory of a forward + backward with the plain (batch, seq, vocab)
  logits against `model(x, labels=y)`'s chunked loss (benchmarks/chunked_loss.py).
- `frozen_speed`: step time of frozen stages (embedding + head; STEP's frozen lower layers,
  with and without ReLoRA) against the exact FLOP count's prediction (benchmarks/frozen_speed.py).
- `memory.full`, `memory.step`: the trainer itself on a ~350M full stage and a 2-stage STEP
  recipe (12 → 24 layers by interpolation, inherited layers frozen, ReLoRA merging inside the
  stage); per stage the planner's estimated peak (`stage_accounting`) against the measured
  one (`growlm.memory_probe.PeakMemory`: `max_memory_allocated` from the stage's start).
- `step.eager`, `step.compiled`: a ~125M STEP recipe (6 → 12 layers), eager and with
  `run.compile = true`, bf16 autocast: losses against eager across the boundary and the
  in-stage merges, graphs built per stage (growlm.train.hooks.CompileWatch), speed, memory.
- `fsdp2`: the same recipe under FSDP2 on one device (a world of one rank: the sharding,
  mixed-precision gather, sharded ReLoRA and DCP checkpoint code), against `step.eager`.

On CPU (`--cpu-smoke`) the measured peaks come from the profiler, which also slows the steps:
the smoke run's speeds mean nothing.

Every check is guarded: one that fails records its error and the others still run. The JSON
is rewritten atomically after every check, so a run killed at its limit keeps what it
measured. A check whose rough cost no longer fits in `--budget-s` is recorded as skipped.
Exit status: 0 when every check ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

from growlm.files import atomic_write_json  # noqa: E402
from growlm.model import ModelConfig  # noqa: E402
from growlm.train.hooks import Hook  # noqa: E402
from growlm.train.trainer import peak_flops  # noqa: E402


@dataclass
class Profile:
    """Sizes of every check: `GPU` (the real measurement) or `SMOKE` (tiny, CPU)."""

    device: str
    vocab: int
    seq: int
    sizes: dict[str, dict]  # name → ModelConfig shape for the throughput checks
    batch: int
    reps: dict = field(default_factory=lambda: {"warmup": 3, "reps": 5, "steps": 3})
    frozen: dict = field(default_factory=dict)  # frozen_speed: shape, frozen_layers, rank, batch
    # STEP recipes: final shape, stage 1's layers, steps per stage, ReLoRA, batch
    big_step: dict = field(default_factory=dict)  # memory.full / memory.step (~350M)
    small_step: dict = field(default_factory=dict)  # step.eager / step.compiled / fsdp2
    chunked: dict = field(default_factory=dict)
    data: tuple[str, int] = ("builtin:python:4MB", 4096)  # corpus, tokenizer vocab
    budget_s: float = 540.0
    costs: dict = field(default_factory=dict)  # rough seconds per check, for the budget


GPU = Profile(
    device="cuda", vocab=32000, seq=1024, batch=16,
    sizes={"125m": dict(d_model=768, n_layers=12, n_heads=12),
           "350m": dict(d_model=1024, n_layers=24, n_heads=16)},
    frozen=dict(shape=dict(d_model=1024, n_layers=24, n_heads=16), frozen_layers=16, rank=64,
                batch=8, reps={"warmup": 2, "reps": 4, "steps": 2}),
    big_step=dict(model=dict(d_model=1024, n_layers=24, n_heads=16), first_layers=12,
                  steps=(3, 4), reset_every=2, rank=64, micro=8, global_tokens=16384),
    small_step=dict(model=dict(d_model=768, n_layers=12, n_heads=12), first_layers=6,
                    steps=(3, 5), reset_every=2, rank=32, micro=8, global_tokens=16384),
    chunked=dict(vocab=[32000, 128256], d_model=1024, n_layers=2, n_heads=16, batch=8, seq=2048),
    costs={"throughput.eager": 30, "chunked_loss": 20, "frozen_speed": 40, "memory": 45,
           "step.eager": 20, "step.compiled": 90, "fsdp2": 30, "throughput.compiled": 120},
)

SMOKE = Profile(
    device="cpu", vocab=512, seq=64, batch=4,
    sizes={"tiny": dict(d_model=64, n_layers=2, n_heads=4)},
    reps={"warmup": 1, "reps": 2, "steps": 1},
    frozen=dict(shape=dict(d_model=64, n_layers=4, n_heads=4), frozen_layers=2, rank=4, batch=4,
                reps={"warmup": 1, "reps": 2, "steps": 1}),
    big_step=dict(model=dict(d_model=64, n_layers=4, n_heads=4), first_layers=2, steps=(2, 3),
                  reset_every=2, rank=4, micro=4, global_tokens=512),
    small_step=dict(model=dict(d_model=64, n_layers=4, n_heads=4), first_layers=2,
                    steps=(2, 3), reset_every=2, rank=4, micro=4, global_tokens=512),
    chunked=dict(vocab=[512], d_model=64, n_layers=1, n_heads=4, batch=4, seq=64),
    data=("builtin:python:300KB", 320),
    budget_s=0.0,
)


def model_cfg(p: Profile, shape: dict) -> ModelConfig:
    return ModelConfig(vocab_size=p.vocab, max_seq_len=p.seq, **shape)


# ---------------------------------------------------------------- throughput, loss, frozen

def check_throughput(p: Profile, size: str, compile_mode: str) -> dict:
    from throughput import measure

    cfg = model_cfg(p, p.sizes[size])
    return measure(cfg, torch.device(p.device), batch=p.batch, seq=p.seq,
                   compile_mode=compile_mode, log=lambda *_: None, **p.reps)


def check_chunked_loss(p: Profile) -> dict:
    from chunked_loss import run

    c, device = p.chunked, torch.device(p.device)
    args = argparse.Namespace(d_model=c["d_model"], n_layers=c["n_layers"], n_heads=c["n_heads"],
                              batch=c["batch"], seq=c["seq"])
    out = {}
    for vocab in c["vocab"]:
        plain, chunked, ckpt, impl = run(vocab, args, device)
        out[str(vocab)] = {
            "impl": impl, "plain_peak_bytes": plain["peak"], "chunked_peak_bytes": chunked["peak"],
            "checkpointed_peak_bytes": ckpt["peak"], "saving": plain["peak"] / chunked["peak"],
            "saving_checkpointed": plain["peak"] / ckpt["peak"], "method": plain["method"],
            "loss_rel_diff": max(abs(plain["loss"] - r["loss"]) for r in (chunked, ckpt))
            / abs(plain["loss"]), "seconds": {"plain": plain["seconds"],
                                              "chunked": chunked["seconds"],
                                              "checkpointed": ckpt["seconds"]}}
    return out


def check_frozen_speed(p: Profile) -> dict:
    import statistics

    from frozen_speed import SETUPS, build_setup, train_step

    from growlm.model import Transformer

    f, device = p.frozen, torch.device(p.device)
    cfg = model_cfg(p, f["shape"])
    torch.manual_seed(0)
    state = Transformer(cfg).state_dict()
    setups = [build_setup(n, cfg, state, device, frozen_layers=f["frozen_layers"], rank=f["rank"],
                          seq_len=p.seq) for n in SETUPS]
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, cfg.vocab_size, (f["batch"], p.seq + 1), generator=gen).to(device)
    batch, r = (data[:, :-1], data[:, 1:]), f["reps"]
    for s in setups:
        for _ in range(r["warmup"]):
            train_step(s, batch, device)
    means: dict[str, list[float]] = {s.name: [] for s in setups}
    for rep in range(r["reps"]):
        for s in setups[rep % len(setups):] + setups[:rep % len(setups)]:
            means[s.name].append(statistics.fmean(
                sum(train_step(s, batch, device).values()) for _ in range(r["steps"])))
    full = setups[0]
    out = {}
    for s in setups:
        t_ratio = statistics.median(a / b for a, b in zip(means[s.name], means[full.name]))
        exact = s.flops.exact_total / full.flops.exact_total
        out[s.name] = {"step_s": statistics.median(means[s.name]), "time_ratio": t_ratio,
                       "exact_flops_ratio": exact,
                       "six_nd_ratio": s.flops.six_nd / full.flops.six_nd,
                       "saving_measured": 1 - t_ratio, "saving_exact": 1 - exact}
    return {"params": cfg.params_total, "setups": out}


# ---------------------------------------------------------------- the trainer

RECIPE = """
[run]
name = "{name}"
out_dir = "{out}"
device = "{device}"
compile = {compile}
eval_tokens = {eval_tokens}
eval_every = 0
ckpt_every = {ckpt_every}
keep_last = 2
[model]
vocab_size = {vocab}
d_model = {d_model}
n_layers = {n_layers}
n_heads = {n_heads}
max_seq_len = {seq}
[data]
train = "{data}"
seq_len = {seq}
[train]
global_batch_tokens = {global_tokens}
micro_batch_size = {micro}
[schedule]
warmup_steps = 1
"""

FULL_STAGE = """
[[stage]]
name = "full"
steps = {steps}
lr = 3e-4
"""

STEP_STAGES = """
[[stage]]
name = "small"
n_layers = {first_layers}
steps = {steps1}
lr = 3e-4
[[stage]]
name = "grown"
grow = {{ op = "interpolate", add = {added} }}
freeze = ["inherited"]
adapters = {{ kind = "relora", rank = {rank}, reset_every = {reset_every}, rewarmup_steps = 1 }}
steps = {steps2}
lr = 3e-4
"""


class StageMemory(Hook):
    """A trainer hook: per stage, the planner's estimate and the measured peak from the
    stage's start (growlm.memory_probe.PeakMemory), and the median tokens/s and MFU of the
    steps after the first."""

    def __init__(self, device: torch.device):
        self.device, self.stages, self.probe = device, {}, None

    def stage_start(self, trainer, built, start_step):
        from growlm.memory_probe import PeakMemory

        self.probe = PeakMemory(self.device).start()
        self.stages[built.stage.number] = {"tokens_per_s": [], "mfu": []}

    def step_end(self, trainer, built, record, last):
        row = self.stages[built.stage.number]
        row["tokens_per_s"].append(record["tokens_per_s"])
        row["mfu"].append(record["mfu"])

    def stage_end(self, trainer, built):
        self.probe.stop()
        est = trainer.accounting["memory"]
        row = self.stages[built.stage.number]
        later = row.pop("tokens_per_s")[1:] or [None]  # the first step warms up (and compiles)
        mfu = row.pop("mfu")[1:] or [None]
        row.update(est, peak_measured_bytes=self.probe.peak_bytes, measured_by=self.probe.method,
                   measured_over_estimated=self.probe.peak_bytes / est["peak_estimated_bytes"],
                   params=trainer.accounting["params"], tokens_per_s=_median(later),
                   mfu=_median(mfu))


def _median(xs):
    xs = [x for x in xs if x is not None]
    return sorted(xs)[len(xs) // 2] if xs else None


def write_recipe(work: Path, p: Profile, name: str, model: dict, stages: str, *,
                 compile: bool = False, data: Path, micro: int, global_tokens: int,
                 ckpt_every: int = 0) -> Path:
    """A recipe in `work`; without `ckpt_every` only the stage ends are saved (a ~350M
    checkpoint with its optimizer state takes GBs of disk and seconds to write)."""
    text = RECIPE.format(name=name, out=(work / name).as_posix(), device=p.device,
                         ckpt_every=ckpt_every, compile=str(compile).lower(),
                         eval_tokens=4 * p.seq, vocab=p.vocab,
                         seq=p.seq, data=data.as_posix(), global_tokens=global_tokens,
                         micro=micro, **model) + stages
    path = work / f"{name}.toml"
    path.write_text(text)
    return path


def step_stages(model: dict, r: dict) -> str:
    return STEP_STAGES.format(first_layers=r["first_layers"], steps1=r["steps"][0],
                              added=model["n_layers"] - r["first_layers"], rank=r["rank"],
                              reset_every=r["reset_every"], steps2=r["steps"][1])


def train(recipe: Path, device: torch.device, dist=None) -> dict:
    from growlm.config import load_recipe
    from growlm.train.trainer import Trainer

    hook = StageMemory(device)
    trainer = Trainer(load_recipe(recipe), quiet=True, hooks=[hook], dist=dist)
    summary = trainer.run()
    rows = [json.loads(x) for x in (trainer.out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "step"]
    watch = trainer.compile_watch.stages if trainer.compile_watch else None
    from growlm import checkpoint as ckpt

    saved = [ckpt.read_meta(d) for d in ckpt.list_checkpoints(trainer.out / "checkpoints")]
    shutil.rmtree(trainer.out / "checkpoints")  # the disk is needed by the next checks
    return {"stages": hook.stages, "losses": losses, "compile_graphs": watch,
            "val_loss": summary["val_loss"], "elapsed_s": summary["elapsed_s"],
            "checkpoints": [{"step": m["global_step"], "sharded": "sharded" in m} for m in saved]}


def rel_diff(a: list[float], b: list[float]) -> float | None:
    if not a or len(a) != len(b):
        return None
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def check_memory(p: Profile, work: Path, data: Path, kind: str) -> dict:
    """The ~350M full stage ("full") or STEP recipe ("step"), eager, per-stage memory."""
    model, r = p.big_step["model"], p.big_step
    stages = FULL_STAGE.format(steps=sum(r["steps"])) if kind == "full" else step_stages(model, r)
    recipe = write_recipe(work, p, f"memory_{kind}", model, stages, data=data, micro=r["micro"],
                          global_tokens=r["global_tokens"])
    return train(recipe, torch.device(p.device))


def small_step_recipe(p: Profile, work: Path, data: Path, name: str, compile: bool = False):
    """The smaller STEP recipe shared by step.eager, step.compiled and fsdp2 (mid-stage
    checkpoints every 2 steps, so a compiled and a sharded save happen too)."""
    r = p.small_step
    return write_recipe(work, p, name, r["model"], step_stages(r["model"], r), compile=compile,
                        data=data, micro=r["micro"], global_tokens=r["global_tokens"],
                        ckpt_every=2)


def check_step(p: Profile, work: Path, data: Path, state: dict, compile: bool) -> dict:
    """The small STEP recipe eager (the reference) or compiled, against the eager run."""
    name = "step_compiled" if compile else "step_eager"
    out = train(small_step_recipe(p, work, data, name, compile), torch.device(p.device))
    if not compile:
        state["step.eager"] = out
        return out
    eager = state.get("step.eager")
    out["eager_losses"] = eager["losses"] if eager else None
    out["loss_max_rel_diff_vs_eager"] = rel_diff(out["losses"], out["eager_losses"] or [])
    out["recompiled_within_a_stage"] = any(s["later"] for s in out["compile_graphs"].values())
    if eager:
        out["speedup_vs_eager"] = {n: (s["tokens_per_s"] / eager["stages"][n]["tokens_per_s"]
                                       if s["tokens_per_s"] else None)
                                   for n, s in out["stages"].items()}
    return out


def check_fsdp2(p: Profile, work: Path, data: Path, state: dict) -> dict:
    """FSDP2 over a world of one rank, built the way maybe_init_distributed builds it (torchrun
    with one process gives no Dist at all, so the script makes the process group itself)."""
    import socket

    import torch.distributed as tdist
    from torch.distributed.device_mesh import init_device_mesh

    from growlm.train.distributed import Dist

    device = torch.device("cuda", 0) if p.device == "cuda" else torch.device("cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cuda = device.type == "cuda"
    tdist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1,
                             init_method=f"tcp://127.0.0.1:{port}", device_id=device if cuda else None)
    try:
        mesh = init_device_mesh(device.type, (1,))
        dist = Dist(rank=0, world_size=1, local_rank=0, device=device, mode="fsdp", mesh=mesh)
        out = train(small_step_recipe(p, work, data, "fsdp"), device, dist)
    finally:
        tdist.destroy_process_group()
    eager = state.get("step.eager")
    out["eager_losses"] = eager["losses"] if eager else None
    out["loss_max_rel_diff_vs_eager"] = rel_diff(out["losses"], out["eager_losses"] or [])
    return out


# ---------------------------------------------------------------- the driver

def environment(p: Profile) -> dict:
    from growlm.model.loss import loss_impl

    device = torch.device(p.device)
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "device": p.device,
           "device_name": torch.cuda.get_device_name(device) if p.device == "cuda" else
           platform.processor() or platform.machine(),
           "peak_flops_bf16": peak_flops(device), "threads": torch.get_num_threads()}
    with torch.autocast(p.device, torch.bfloat16, enabled=p.device == "cuda"):
        head = torch.nn.Linear(8, 8).to(device)
        env["train_loss_impl"] = loss_impl(torch.ones(1, 8, device=device, requires_grad=True), head)
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def run_checks(p: Profile, out_path: Path, work: Path, budget_s: float, only: set[str]) -> dict:
    from growlm.data import prepare

    start = time.monotonic()
    report = {"mode": "cpu-smoke" if p.device == "cpu" else "gpu", "budget_s": budget_s,
              "environment": environment(p), "checks": {}}
    atomic_write_json(out_path, report)
    state: dict = {}
    data = work / "shards"
    corpus, vocab = p.data
    prepare(data, [corpus], train_vocab=vocab, val_fraction=0.05, progress=False, log=lambda *_: None)
    checks = [(f"throughput.{s}.eager", "throughput.eager", lambda s=s: check_throughput(p, s, "no"))
              for s in p.sizes]
    checks += [("chunked_loss", "chunked_loss", lambda: check_chunked_loss(p)),
               ("frozen_speed", "frozen_speed", lambda: check_frozen_speed(p)),
               ("memory.full", "memory", lambda: check_memory(p, work, data, "full")),
               ("memory.step", "memory", lambda: check_memory(p, work, data, "step")),
               ("step.eager", "step.eager", lambda: check_step(p, work, data, state, False)),
               ("step.compiled", "step.compiled", lambda: check_step(p, work, data, state, True)),
               ("fsdp2", "fsdp2", lambda: check_fsdp2(p, work, data, state))]
    checks += [(f"throughput.{s}.compiled", "throughput.compiled",
                lambda s=s: check_throughput(p, s, "both")) for s in p.sizes]
    for name, kind, fn in checks:
        if only and not any(name.startswith(o) for o in only):
            continue
        left = budget_s - (time.monotonic() - start) if budget_s else None
        if left is not None and left < p.costs.get(kind, 0):
            report["checks"][name] = {"status": "skipped",
                                      "reason": f"{left:.0f} s of the budget left"}
        else:
            report["checks"][name] = run_one(name, fn)
        atomic_write_json(out_path, report)
    report["seconds"] = time.monotonic() - start
    report["summary"] = summarize(report["checks"])
    atomic_write_json(out_path, report)
    return report


def summarize(checks: dict) -> dict:
    """The headline figure of each check that ran, for a reader of the JSON."""
    def pick(name, fn):
        c = checks.get(name)
        if c and c["status"] == "ok":
            try:
                out[name] = fn(c["result"])
            except (KeyError, TypeError, ZeroDivisionError) as e:
                out[name] = f"no summary ({type(e).__name__}: {e})"

    out: dict = {}
    for name in checks:
        if name.startswith("throughput."):
            pick(name, lambda r: {**{k: {"tokens_per_s": round(v["tokens_per_s"]), "mfu": v["mfu"]}
                                     for k, v in r["variants"].items()},
                                  **{k: round(v["median"], 3) for k, v in r["ratios"].items()}})
    pick("chunked_loss", lambda r: {v: round(x["saving"], 2) for v, x in r.items()})
    pick("frozen_speed", lambda r: {k: {"saving_measured": round(v["saving_measured"], 3),
                                        "saving_exact": round(v["saving_exact"], 3)}
                                    for k, v in r["setups"].items() if k != "full"})
    for name in ("memory.full", "memory.step", "step.eager", "step.compiled", "fsdp2"):
        pick(name, lambda r: {
            "measured_over_estimated": {n: round(s["measured_over_estimated"], 3)
                                        for n, s in r["stages"].items()},
            "tokens_per_s": {n: s["tokens_per_s"] for n, s in r["stages"].items()},
            **({"loss_max_rel_diff_vs_eager": r["loss_max_rel_diff_vs_eager"]}
               if "loss_max_rel_diff_vs_eager" in r else {}),
            **({"compile_graphs": r["compile_graphs"]} if r["compile_graphs"] else {})})
    return out


def run_one(name: str, fn) -> dict:
    print(f"[gpu_check] {name} ...", flush=True)
    t0 = time.monotonic()
    try:
        result = {"status": "ok", "result": fn()}
    except Exception as e:  # one check's failure must not lose the others
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc()[-4000:]}
    finally:
        torch.compiler.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    result["seconds"] = time.monotonic() - t0
    print(f"[gpu_check] {name}: {result['status']} in {result['seconds']:.0f} s"
          + (f" ({result['error']})" if "error" in result else ""), flush=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json", help="the JSON summary (default %(default)s)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="every check at a tiny size on CPU (what the test suite runs)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip checks that would start too late (GPU default 540; 0: no limit)")
    ap.add_argument("--only", nargs="+", default=[], help="run only checks whose names start so")
    ap.add_argument("--workdir", default=None, help="shards and run folders (default: a temp dir)")
    args = ap.parse_args(argv)
    p = SMOKE if args.cpu_smoke else GPU
    if p.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run on a GPU machine, or pass --cpu-smoke",
              file=sys.stderr)
        return 2
    budget = p.budget_s if args.budget_s is None else args.budget_s
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = run_checks(p, Path(args.out), work, budget, set(args.only))
    failed = [n for n, c in report["checks"].items() if c["status"] != "ok"]
    print(f"[gpu_check] wrote {args.out}: {len(report['checks']) - len(failed)} ok"
          + (f", not ok: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
