"""Kill anywhere, lose nothing: SIGKILL a staged training run at random moments, resume it
each time, and check that it ends bit-identical to a run that was never interrupted.

The recipe is tiny but has every moving part: stage 1 trains 2 layers, stage 2 grows to 3 by
interpolation, freezes the inherited layers and trains ReLoRA adapters that are merged and
reset every 3 steps; checkpoints every 2 steps, keep_last 2 (so pruning runs too).

Each trial starts a fresh run, interrupts it 2 to 6 times (each resume is a new process),
then lets a last launch run to the end. An interruption is one of:
  random          SIGKILL after a random delay once the process is training
  startup         SIGKILL after a random delay from launch (import, checkpoint loading, resume)
  <fault point>   GROWLM_FAULT=<point>:<N>:kill, a SIGKILL at the N-th pass of a named point
                  (N drawn among the passes the resumed process still has ahead of it):
                  train_step (after backward), relora_merge, checkpoint_mid_write,
                  checkpoint_before_rename, checkpoint_prune, stage_boundary
  sigterm/sigint  a clean stop (exit 143 after saving a checkpoint), also resumed
After every kill all step_* checkpoints on disk must verify (sizes, sha256) and load
(weights and training state). At the end of a trial the per-step losses, the evaluation
losses, the record structure of metrics.jsonl and the final weights must equal the
uninterrupted run's exactly.

    python benchmarks/faults/kill_anywhere.py                # >= 24 SIGKILLs, a few minutes
    python benchmarks/faults/kill_anywhere.py --kills 40 --seed 3 --workdir /tmp/ka --keep
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from growlm import checkpoint as ckpt
from growlm.train.metrics import read_metrics

RECIPE = """
[run]
name = "ka"
out_dir = "{out}"
eval_tokens = 512
ckpt_every = {ckpt_every}
keep_last = {keep_last}
[model]
vocab_size = 320
d_model = 32
n_layers = 3
n_heads = 2
max_seq_len = 64
[data]
train = "{data}"
seq_len = 32
[train]
global_batch_tokens = 256
micro_batch_size = 4
[schedule]
warmup_steps = 2
[[stage]]
name = "small"
n_layers = 2
steps = {steps1}
lr = 3e-3
[[stage]]
name = "grown"
grow = {{ op = "interpolate", add = 1 }}
freeze = ["inherited"]
adapters = {{ kind = "relora", rank = 2, reset_every = {reset_every}, rewarmup_steps = 1 }}
steps = {steps2}
lr = 3e-3
"""

CKPT_EVERY, KEEP_LAST, RESET_EVERY = 2, 2, 3  # as in RECIPE
FAULT_POINTS = ("train_step", "relora_merge", "checkpoint_mid_write", "checkpoint_before_rename",
                "checkpoint_prune", "stage_boundary")
KINDS = ("random", "random", "random", "startup", *FAULT_POINTS, "sigterm", "sigint")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=24, help="SIGKILLs to deliver in all (>= 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, nargs=2, default=(8, 9), metavar=("STAGE1", "STAGE2"))
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    return p.parse_args()


def prepare_data(workdir: Path) -> Path:
    from growlm.data import prepare

    out = workdir / "shards"
    if not (out / "meta.json").is_file():
        prepare(out, ["builtin:python:300KB"], train_vocab=320, val_fraction=0.05, progress=False,
                log=lambda *_: None)
    return out


def write_recipe(workdir: Path, name: str, data: Path, steps: tuple[int, int]) -> Path:
    path = workdir / f"{name}.toml"
    path.write_text(RECIPE.format(out=(workdir / name).as_posix(), data=data.as_posix(),
                                  steps1=steps[0], steps2=steps[1], ckpt_every=CKPT_EVERY,
                                  keep_last=KEEP_LAST, reset_every=RESET_EVERY))
    return path


def launch(recipe: Path, resume: bool, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "growlm", "train", str(recipe), "--quiet"]
    if resume:
        cmd.append("--resume")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def wait_for_step(proc: subprocess.Popen, metrics: Path, since: float, step: int) -> bool:
    """True once this process has logged `step` (0: anything) in metrics.jsonl; False if it
    exited first. Records older than the launch do not count: a resume truncates them first."""
    while proc.poll() is None:
        if metrics.exists() and metrics.stat().st_mtime > since:
            steps = [r["step"] for r in read_metrics(metrics) if r.get("kind") == "step"]
            if max(steps, default=0) >= step:
                return True
        time.sleep(0.01)
    return False


def check_checkpoints(root: Path) -> int:
    """Every visible checkpoint verifies and loads; returns how many were checked."""
    if not root.is_dir():
        return 0
    checked = 0
    for path in sorted(root.iterdir()):
        if not path.name.startswith("step_"):
            continue  # .tmp-*, .trash-*, .old-*: hidden by design, ignored by resume
        ckpt.verify_checkpoint(path)  # GrowlmError if incomplete or damaged
        ckpt.load_model_state(path)
        ckpt.load_train_state(path)
        checked += 1
    newest = ckpt.latest_valid(root)
    visible = ckpt.list_checkpoints(root)
    assert newest is None or newest[0] == visible[-1], "resume would have to fall back"
    return checked


def structure(records: list[dict]) -> list[tuple]:
    return [(r["kind"], r.get("stage"), r.get("event"), r.get("step")) for r in records]


def outcome(run_dir: Path) -> dict:
    records = read_metrics(run_dir / "metrics.jsonl")
    final = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    _, state, _ = ckpt.load_model_state(final)
    return {"losses": [(r["step"], r["loss"]) for r in records if r["kind"] == "step"],
            "evals": [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"],
            "structure": structure(records), "final": final.name, "state": state}


def same(a: dict, b: dict) -> list[str]:
    diffs = [k for k in ("losses", "evals", "structure", "final") if a[k] != b[k]]
    if a["state"].keys() != b["state"].keys() or not all(
            torch.equal(a["state"][k], b["state"][k]) for k in a["state"]):
        diffs.append("weights")
    return diffs


def remaining_hits(kind: str, steps: tuple[int, int], done: int, on_disk: list[int]) -> int:
    """How often a process resumed at global step `done` will still pass a fault point."""
    s1, s2 = steps
    boundaries = [s1, s1 + s2]
    saves = sorted(boundaries + [g for g in range(1, s1) if g % CKPT_EVERY == 0]
                   + [s1 + k for k in range(1, s2) if k % CKPT_EVERY == 0])
    resets = [s1 + k for k in range(1, s2 + 1) if k % RESET_EVERY == 0]
    if kind == "train_step":
        return s1 + s2 - done
    if kind == "relora_merge":
        return sum(g > done for g in resets)
    if kind == "stage_boundary":
        return sum(g > done for g in boundaries)
    if kind == "checkpoint_prune":  # replay retention: each removed checkpoint is one pass
        kept, hits = list(on_disk), 0
        for g in (g for g in saves if g > done):
            kept.append(g)
            for old in [c for c in kept[:-KEEP_LAST] if c not in boundaries]:
                kept.remove(old)
                hits += 1
        return hits
    return sum(g > done for g in saves)  # checkpoint_mid_write, checkpoint_before_rename


def plan_kill(kind: str, rng: random.Random, hits: int) -> dict:
    if kind in FAULT_POINTS:
        n = rng.randint(1, hits)
        return {"env": {"GROWLM_FAULT": f"{kind}:{n}:kill"}, "label": f"{kind}:{n}"}
    return {"env": {}, "label": kind}


def deliver(kind: str, proc, metrics: Path, started: float, rng: random.Random, timing: dict,
            done_steps: int, total_steps: int) -> None:
    """Send this launch's signal (fault-point kills need nothing: the process kills itself).
    Random kills pick a step still to run and land at a random moment of its wall time (its
    forward/backward, a checkpoint or merge after it, the evaluation at a stage end)."""
    if kind in FAULT_POINTS:
        return
    if kind == "startup":
        time.sleep(rng.uniform(0, timing["startup"]))
    else:
        target = rng.randint(min(done_steps, total_steps - 1), total_steps - 1)
        if not wait_for_step(proc, metrics, started, target):
            return
        time.sleep(rng.uniform(0, timing["step"]))
    if proc.poll() is None:
        proc.send_signal({"sigterm": signal.SIGTERM, "sigint": signal.SIGINT}.get(kind, signal.SIGKILL))


def run_trial(recipe: Path, run_dir: Path, steps: tuple[int, int], rng: random.Random, timing: dict,
              tally: Counter, log: list) -> tuple[int, int]:
    """Interrupt and resume 2 to 6 times, then let a last launch finish.
    Returns (SIGKILLs, checkpoints checked)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    kills = checked = 0
    total_steps = sum(steps)
    planned = rng.randint(2, 6)
    for launch_no in range(planned + 1):
        root = run_dir / "checkpoints"
        on_disk = [ckpt.read_meta(p)["global_step"] for p in ckpt.list_checkpoints(root)]
        latest = ckpt.latest_valid(root) if root.exists() else None
        done_steps = latest[1]["global_step"] if latest else 0
        hits = {k: remaining_hits(k, steps, done_steps, on_disk) for k in FAULT_POINTS}
        kinds = [k for k in KINDS if hits.get(k, 1) > 0]
        kind = rng.choice(kinds) if launch_no < planned and done_steps < total_steps else "none"
        plan = plan_kill(kind, rng, hits.get(kind, 0))
        started = time.time()
        proc = launch(recipe, launch_no > 0, plan["env"])
        if kind != "none":
            deliver(kind, proc, run_dir / "metrics.jsonl", started, rng, timing, done_steps, total_steps)
        out, err = proc.communicate(timeout=900)
        rc = proc.returncode
        if rc == 0:
            done = "ran to the end" if kind == "none" else f"completed ({plan['label']} did not fire)"
            log.append(f"  launch {launch_no + 1}: {done}")
            return kills, checked
        if kind in ("sigterm", "sigint") and rc == 143:
            saved = ckpt.latest_valid(run_dir / "checkpoints")
            logged = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "step"]
            assert saved is not None and saved[1]["global_step"] == logged[-1], "stop without checkpoint"
            tally[f"{kind} (clean stop)"] += 1
        elif rc in (-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT, 1, 130):
            # SIGTERM/SIGINT before the handlers are installed end the process like a kill
            label = plan["label"].split(":")[0]
            tally[label if rc == -signal.SIGKILL else f"{kind} (during startup)"] += 1
            kills += rc == -signal.SIGKILL
        else:
            raise AssertionError(f"unexpected exit {rc} after {plan['label']}: {err.strip()[-500:]}")
        checked += check_checkpoints(run_dir / "checkpoints")
        log.append(f"  launch {launch_no + 1}: {plan['label']} → exit {rc}, "
                   f"{len(ckpt.list_checkpoints(run_dir / 'checkpoints'))} checkpoints verified")
    raise AssertionError(f"the last launch did not complete (exit {rc}): {err.strip()[-500:]}")


def main() -> int:
    args = parse_args()
    rng = random.Random(args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="growlm-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(workdir)
    steps = tuple(args.steps)
    total = sum(steps)

    ref_recipe = write_recipe(workdir, "reference", data, steps)
    shutil.rmtree(workdir / "reference", ignore_errors=True)
    t0 = time.time()
    proc = launch(ref_recipe, resume=False)
    wait_for_step(proc, workdir / "reference" / "metrics.jsonl", t0, 1)
    t1 = time.time()
    _, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed: {err}")
    timing = {"startup": t1 - t0, "step": (time.time() - t1) / (total - 1)}
    reference = outcome(workdir / "reference")
    print(f"reference run: {total} steps, startup {timing['startup']:.1f} s, "
          f"{timing['step']:.2f} s per step, final loss {reference['losses'][-1][1]:.4f}")

    recipe = write_recipe(workdir, "killed", data, steps)
    tally: Counter = Counter()
    trials, kills, checked, passed, failures = 0, 0, 0, 0, []
    t_start = time.time()
    while kills < args.kills:
        trials += 1
        log: list[str] = []
        k, c = run_trial(recipe, workdir / "killed", steps, rng, timing, tally, log)
        kills, checked = kills + k, checked + c
        diffs = same(outcome(workdir / "killed"), reference)
        passed += not diffs
        if diffs:
            failures.append(f"trial {trials}: differs in {', '.join(diffs)}")
        print(f"trial {trials}: {k} SIGKILLs, {len(log) - 1} interruptions, "
              f"{'bit-identical' if not diffs else 'DIFFERENT: ' + ', '.join(diffs)}")
        for line in log:
            print(line)

    print()
    print("| interruption | count |")
    print("|---|---|")
    for kind, n in sorted(tally.items()):
        print(f"| {kind} | {n} |")
    print(f"| **SIGKILLs in all** | **{kills}** |")
    print()
    print(f"trials: {trials}, SIGKILLs: {kills}, other interruptions: {sum(tally.values()) - kills}, "
          f"checkpoint verifications after kills: {checked} (all readable), "
          f"trials bit-identical to the uninterrupted run: {passed}/{trials}, "
          f"wall time {time.time() - t_start:.0f} s")
    print("ALL PASSED" if passed == trials else "FAILED: " + "; ".join(failures))
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if passed == trials else 1


if __name__ == "__main__":
    sys.exit(main())
