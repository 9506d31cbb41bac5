"""The misuse sweep's cases for `growlm train` (recipes, --set, run folders, resume, divergence,
a full disk, a second writer) and `growlm sweep`. Other commands: misuse_cases_io.py."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import torch
from misuse_cases_io import IO_CASES
from misuse_workspace import (
    TWO_STAGES,
    Case,
    Launch,
    Workspace,
    add,
    build_workspace,
    growlm,
    newest,
    rehash,
    section,
    sub,
)

__all__ = ["CASES", "Launch", "Workspace", "build_workspace"]


def train(edit=lambda t: t, *flags: str, **launch):
    return lambda ws, t: Launch(["train", ws.recipe(t, edit), "--quiet", *flags], **launch)


def setting(*items: str, **launch):
    return lambda ws, t: Launch(["train", ws.recipe(t), "--quiet", *[x for i in items for x in ("--set", i)]],
                                **launch)


def stage(line: str):
    return sub("steps = 2\n", f"steps = 2\n{line}\n")


def model(line: str):
    return sub("max_seq_len = 64\n", f"max_seq_len = 64\n{line}\n")


def two_stage(second: str):
    """A 1-layer stage, then a second stage given as TOML lines."""
    return sub("[[stage]]\nsteps = 2\n", f"[[stage]]\nn_layers = 1\nsteps = 2\n[[stage]]\n{second}\nsteps = 2\n")


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


# ---------------------------------------------------------------- recipes

RECIPE_CASES = [
    Case("train/recipe-is-a-folder", lambda ws, t: ["train", str(t), "--quiet"]),
    Case("train/recipe-not-utf8", lambda ws, t: ["train", str(write(t / "r.toml", b"\xff\xfe[run]\n")), "--quiet"]),
    Case("train/recipe-empty", lambda ws, t: ["train", str(write(t / "r.toml", "")), "--quiet"]),
    Case("train/recipe-is-json", lambda ws, t: ["train", str(write(t / "r.toml", '{"model": {}}')), "--quiet"]),
    Case("train/recipe-duplicate-key", train(sub("d_model = 32\n", "d_model = 32\nd_model = 64\n"))),
    Case("train/no-model-table", train(sub("[model]\n", "[modelx]\n"))),
    Case("train/no-data-table", train(sub('[data]\ntrain = "', '[datax]\ntrain = "'))),
    Case("train/steps-and-tokens", train(stage('tokens = "4K"'))),
    Case("train/stage-without-length", train(sub("[[stage]]\nsteps = 2\n", '[[stage]]\nname = "x"\n'))),
    Case("train/tokens-in-words", train(sub("steps = 2", 'tokens = "12 billion"'))),
    Case("train/tokens-zero", train(sub("steps = 2", "tokens = 0"))),
    Case("train/tokens-negative", train(sub("steps = 2", "tokens = -4096"))),
    Case("train/tokens-fraction-of-a-step", train(sub("steps = 2", "tokens = 100"), expect="warn",
                                                  match="not a whole number of steps")),
    Case("train/steps-zero", train(sub("steps = 2", "steps = 0"))),
    Case("train/steps-fractional", train(sub("steps = 2", "steps = 1.5"))),
    Case("train/stage-lr-negative", train(stage("lr = -1e-3"))),
    Case("train/lr-zero", train(section("optim", "lr = 0"))),
    Case("train/lr-as-words", train(section("optim", 'lr = "fast"'))),
    Case("train/d-model-negative", train(sub("d_model = 32", "d_model = -32"))),
    Case("train/n-heads-zero", train(sub("n_heads = 2", "n_heads = 0"))),
    Case("train/kv-heads-not-dividing", train(model("n_kv_heads = 3"))),
    Case("train/kv-heads-more-than-heads", train(model("n_kv_heads = 4"))),
    Case("train/vocab-zero", train(sub("vocab_size = 300", "vocab_size = 0"))),
    Case("train/seq-len-zero", train(sub("seq_len = 32", "seq_len = 0"))),
    Case("train/batch-not-whole-sequences", train(sub("global_batch_tokens = 128", "global_batch_tokens = 100"))),
    Case("train/batch-below-one-sequence", train(sub("global_batch_tokens = 128", "global_batch_tokens = 16"))),
    Case("train/warmup-negative", train(sub("warmup_steps = 1", "warmup_steps = -1"))),
    Case("train/min-lr-ratio-above-one", train(section("schedule", "min_lr_ratio = 1.5"))),
    Case("train/grad-clip-nan", train(section("optim", "grad_clip = nan"))),
    Case("train/grad-clip-negative", train(section("optim", "grad_clip = -1.0"))),
    Case("train/betas-three", train(section("optim", "betas = [0.9, 0.95, 0.99]"))),
    Case("train/betas-one", train(section("optim", "betas = [0.9]"))),
    Case("train/keep-last-zero", train(sub("keep_last = 2", "keep_last = 0"))),
    Case("train/ckpt-every-negative", train(sub("ckpt_every = 1", "ckpt_every = -1"))),
    Case("train/eval-tokens-zero", train(sub("eval_tokens = 256", "eval_tokens = 0"))),
    Case("train/log-every-zero", train(section("run", "log_every = 0"))),
    Case("train/device-tpu", train(section("run", 'device = "tpu"'))),
    Case("train/device-cuda-absent", train(section("run", 'device = "cuda"'))),
    Case("train/run-name-empty", train(sub('name = "mu"', 'name = ""'))),
    Case("train/run-name-with-slash", train(sub('name = "mu"', 'name = "a/b"'))),
    Case("train/run-name-dotdot", train(sub('name = "mu"', 'name = ".."'))),
    Case("train/run-name-nul", train(sub('name = "mu"', 'name = "a\\u0000b"'))),
    Case("train/out-dir-nul", train(sub('out_dir = "', 'out_dir = "x\\u0000'))),
    Case("train/data-path-nul", train(sub('train = "', 'train = "\\u0000'))),
    Case("train/rope-theta-zero", train(model("rope_theta = 0.0"))),
    Case("train/rope-theta-nan", train(model("rope_theta = nan"))),
    Case("train/norm-eps-negative", train(model("norm_eps = -1e-5"))),
    Case("train/max-seq-len-zero", train(sub("max_seq_len = 64", "max_seq_len = 0"))),
    Case("train/ffn-dim-zero", train(model("ffn_dim = 0"))),
    Case("train/tie-embeddings-word", train(model('tie_embeddings = "maybe"'))),
    Case("train/schedule-kind-unknown", train(section("schedule", 'kind = "exponential"'))),
    Case("train/max-bad-steps-zero", train(sub("micro_batch_size = 4", "micro_batch_size = 4\nmax_bad_steps = 0"))),
    Case("train/rollback-factor-above-one", train(sub("micro_batch_size = 4", "micro_batch_size = 4\nrollback_lr_factor = 1.5"))),
    Case("train/rollback-factor-nan", train(sub("micro_batch_size = 4", "micro_batch_size = 4\nrollback_lr_factor = nan"))),
    Case("train/disk-budget-negative", train(section("run", 'disk_budget = "-5GiB"'))),
    Case("train/schedule-steps-shorter-than-stage", train(stage("schedule_steps = 1"))),
    Case("train/grow-factor-one", train(two_stage('grow = { op = "stack", factor = 1 }'))),
    Case("train/grow-without-op", train(two_stage("grow = { factor = 2 }"))),
    Case("train/interpolate-add-zero", train(two_stage('grow = { op = "interpolate", add = 0 }'))),
    Case("train/freeze-matches-nothing", train(stage('freeze = ["layers.7.*"]'))),
    Case("train/adapter-rank-zero", train(stage('freeze = ["layers.*"]\nadapters = { kind = "lora", rank = 0 }'))),
    Case("train/adapter-alpha-negative", train(stage('freeze = ["layers.*"]\nadapters = { kind = "lora", rank = 2, alpha = -1 }'))),
    Case("train/adapter-dropout-one", train(stage('freeze = ["layers.*"]\nadapters = { kind = "lora", rank = 2, dropout = 1.0 }'))),
    Case("train/init-missing", train(stage('init = "/nonexistent/run"'))),
    Case("train/init-is-the-shards", lambda ws, t: Launch(["train", ws.recipe(t, stage(f'init = "{ws.shards}"')), "--quiet"])),
    Case("train/init-best-of-no-sweep", lambda ws, t: Launch(["train", ws.recipe(t, stage(f'init = "best:{t}"')), "--quiet"])),
    Case("train/eval-task-unknown", train(add('[eval]\ntasks = ["nosuch"]\n'))),
    Case("train/wandb-without-login", train(section("run", "wandb = true"), env={"WANDB_API_KEY": "",
                                                                             "WANDB_MODE": "online"})),
    Case("train/data-mix-weight-zero", lambda ws, t: Launch(["train", ws.recipe(
        t, sub(f'train = "{ws.shards.as_posix()}"', f'train = [{{ path = "{ws.shards.as_posix()}", weight = 0 }}]')),
        "--quiet"])),
    Case("train/data-is-a-file", lambda ws, t: Launch(["train", ws.recipe(t, data=ws.tokenizer), "--quiet"])),
    Case("train/data-empty-string", lambda ws, t: Launch(["train", ws.recipe(t, data=""), "--quiet"])),
    Case("train/val-missing", train(sub("seq_len = 32\n", 'seq_len = 32\nval = "/nonexistent/val"\n'))),
    Case("train/val-of-another-tokenizer", lambda ws, t: Launch(["train", ws.recipe(
        t, sub("seq_len = 32\n", f'seq_len = 32\nval = "{ws.other.as_posix()}"\n')), "--quiet"])),
    Case("train/data-of-another-tokenizer-in-a-mix", lambda ws, t: Launch(["train", ws.recipe(
        t, sub(f'train = "{ws.shards.as_posix()}"', f'train = [{{ path = "{ws.shards.as_posix()}", weight = 1 }}, '
                                                    f'{{ path = "{ws.other.as_posix()}", weight = 1 }}]')), "--quiet"])),
]


# ---------------------------------------------------------------- --set and command-line paths

SET_CASES = [
    Case("set/unknown-key", setting("optim.lrr=1e-3")),
    Case("set/nan", setting("model.d_model=nan")),
    Case("set/stage-zero", setting("stage.0.lr=1e-3")),
    Case("set/stage-negative", setting("stage.-1.lr=1e-3")),
    Case("set/empty-key", setting("=5")),
    Case("set/lr-infinite", setting("optim.lr=inf")),
    Case("set/lr-overflow", setting("optim.lr=1e400")),
    Case("set/lr-above-range", setting("optim.lr=1e38")),
    Case("set/tokens-overflow", setting("stage.1.tokens=1e400", "stage.1.steps=null")),
    Case("set/seed-fraction", setting("run.seed=1.5")),
    Case("set/seed-bool", setting("run.seed=true")),
    Case("set/out-dir-nul", setting('run.out_dir="a\\u0000b"')),
    Case("set/table-to-number", setting("model=5")),
    Case("set/through-a-number", setting("optim.lr.x=1")),
    Case("set/key-with-spaces", setting("optim .lr=1e-3")),
    Case("cli/out-is-a-file", lambda ws, t: ["train", ws.recipe(t), "--quiet", "--out", str(write(t / "f", "x"))]),
    Case("cli/out-under-a-file", lambda ws, t: ["train", ws.recipe(t), "--quiet", "--out", str(write(t / "f", "x") / "run")]),
    Case("cli/out-empty", lambda ws, t: ["train", ws.recipe(t), "--quiet", "--out", ""]),
    Case("cli/dry-run-out-under-a-file", lambda ws, t: ["train", ws.recipe(t), "--dry-run", "--out",
                                                        str(write(t / "f", "x") / "run")]),
    Case("cli/lock-file-is-a-folder", lambda ws, t: (
        (t / "run" / ".lock").mkdir(parents=True), ["train", ws.recipe(t, out=t / "run"), "--quiet"])[1]),
]


# ---------------------------------------------------------------- resuming a run

def resume(damage=None, *sets: str, drop_final: bool = True, **launch):
    """A copy of the finished run without its final checkpoint (so --resume has work to do),
    damaged by `damage(run)`, resumed (with `--set` items)."""
    def setup(ws: Workspace, t: Path) -> Launch:
        recipe, run = ws.copy_run(t)
        if drop_final:
            import shutil

            shutil.rmtree(newest(run))
        if damage is not None:
            damage(run)
        # a folder the case damaged on purpose must stay as it was (any write is "late")
        protect = [] if damage is not None else [("run", run)]
        return Launch(["train", recipe, "--resume", "--quiet", *[x for s in sets for x in ("--set", s)]],
                      protect=protect, **launch)
    return setup


def _train_state(value):
    def damage(run: Path) -> None:
        c = newest(run)
        torch.save(value, c / "train_state.pt")
        rehash(c)
    return damage


def _meta(**changes):
    def damage(run: Path) -> None:
        c = newest(run)
        meta = json.loads((c / "meta.json").read_text())
        meta.update(changes)
        (c / "meta.json").write_text(json.dumps(meta))
        rehash(c)
    return damage


def _state_entry(key: str, changes: dict):
    """train_state.pt of the newest checkpoint with `changes` merged into its `key` entry."""
    def damage(run: Path) -> None:
        c = newest(run)
        state = torch.load(c / "train_state.pt", weights_only=True)
        state[key] = {**state[key], **changes} if key != "rng" else changes
        torch.save(state, c / "train_state.pt")
        rehash(c)
    return damage


def _dry_run_resume(ws: Workspace, t: Path) -> Launch:
    recipe, run = ws.copy_run(t)
    _meta(stage_step=7)(run)
    return Launch(["train", recipe, "--dry-run", "--resume"], match="stage_step 7")


def _wrong_shape_weights(run: Path) -> None:
    from safetensors.torch import load_file, save_file

    c = newest(run)
    state = load_file(c / "model.safetensors")
    state["embed_tokens.weight"] = torch.zeros(3, 3)
    save_file(state, c / "model.safetensors")
    rehash(c)


def _replace(name: str, data: bytes | None = None, folder: bool = False):
    def damage(run: Path) -> None:
        path = run / name
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        if folder:
            path.mkdir()
        else:
            path.write_bytes(data or b"")
    return damage


def _bad_metrics_line(line: bytes):
    def damage(run: Path) -> None:
        lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
        lines.insert(2, line + b"\n")
        (run / "metrics.jsonl").write_bytes(b"".join(lines))
    return damage


RESUME_CASES = [
    Case("resume/changed-seq-len", resume(None, "data.seq_len=16")),
    Case("resume/changed-seed", resume(None, "run.seed=7")),
    Case("resume/changed-vocab", resume(None, "model.vocab_size=320")),
    Case("resume/changed-stage-steps", resume(None, "stage.2.steps=5")),
    Case("resume/changed-grow-op", resume(None, 'stage.2.grow={op="duplicate", factor=2}')),
    Case("resume/train-state-wrong-types", resume(_train_state({"loader": 5, "rng": {}, "counters": {}}))),
    Case("resume/train-state-a-list", resume(_train_state([1, 2, 3]))),
    Case("resume/meta-stage-out-of-range", resume(_meta(stage=9))),
    Case("resume/meta-stage-zero", resume(_meta(stage=0))),
    Case("resume/meta-step-negative", resume(_meta(global_step=-3, stage_step=-3))),
    Case("resume/meta-provenance-garbage", resume(_meta(provenance={"layers.0.attn": 5}))),
    Case("resume/meta-model-shape-edited", resume(_meta(model={"vocab_size": 300, "d_model": 48, "n_layers": 2,
                                                               "n_heads": 2, "max_seq_len": 64}))),
    Case("resume/meta-fingerprint-edited", resume(_meta(fingerprint="another recipe"))),
    Case("resume/weights-wrong-shape", resume(_wrong_shape_weights)),
    Case("resume/metrics-not-utf8-line", resume(_bad_metrics_line(b"\xff\xfe{\"kind\": 1}"), expect="warn",
                                                match=r"metrics\.jsonl.*line 3", writes=True)),
    Case("resume/metrics-is-a-folder", resume(_replace("metrics.jsonl", folder=True))),
    Case("resume/checkpoints-is-a-file", resume(_replace("checkpoints", b"x"))),
    Case("resume/run-json-is-a-folder", resume(_replace("run.json", folder=True))),
    Case("resume/run-json-fingerprint-number", resume(_replace("run.json", b'{"fingerprint": 5}'))),
    Case("resume/run-json-not-utf8", resume(_replace("run.json", b"\xff\xfe"))),
    Case("resume/counters-garbage", resume(_state_entry("counters", {"global_step": "3"}))),
    Case("resume/counters-disagree-with-meta", resume(_state_entry("counters", {"global_step": 1}))),
    Case("resume/rng-garbage", resume(_state_entry("rng", {"torch": [1, 2, 3]}))),
    Case("resume/loader-position-negative", resume(_state_entry("loader", {"position": -5}))),
    Case("resume/loader-fingerprint-garbage", resume(_state_entry("loader", {"fingerprint": 5}))),
    Case("resume/dry-run-on-damaged-checkpoint", lambda ws, t: _dry_run_resume(ws, t)),
    Case("resume/dry-run-without-resume-flag", lambda ws, t: Launch(["train", ws.copy_run(t)[0], "--dry-run"],
                                                                    protect=[("run", t / "run")])),
    Case("resume/finished-run-with-more-steps", resume(None, "stage.2.steps=4", drop_final=False)),
    Case("resume/without-resume-flag", lambda ws, t: Launch(["train", ws.copy_run(t)[0], "--quiet"],
                                                            protect=[("run", t / "run")])),
    Case("resume/tokenizer-replaced-in-data", lambda ws, t: _resume_on_other_data(ws, t)),
]


def _resume_on_other_data(ws: Workspace, t: Path) -> Launch:
    """The shard folder a run trained on, prepared again in place with another tokenizer."""
    import shutil

    from growlm.config import load_recipe
    from growlm.train.trainer import stages_fingerprint

    shards = Path(shutil.copytree(ws.shards, t / "shards"))
    recipe, run = ws.copy_run(t)
    Path(recipe).write_text(Path(recipe).read_text().replace(ws.shards.as_posix(), shards.as_posix()))
    cfg = load_recipe(recipe)
    record = json.loads((run / "run.json").read_text())
    record["fingerprint"] = stages_fingerprint(cfg)
    (run / "run.json").write_text(json.dumps(record))
    for c in (run / "checkpoints").glob("step_*"):
        meta = json.loads((c / "meta.json").read_text())
        meta["fingerprint"] = record["fingerprint"]
        (c / "meta.json").write_text(json.dumps(meta))
        rehash(c)
    shutil.rmtree(newest(run))
    shutil.rmtree(shards)
    shutil.copytree(ws.other, shards)
    return Launch(["train", recipe, "--resume", "--quiet"], protect=[("run", run)])


# ---------------------------------------------------------------- divergence

# An update that overflows leaves an infinite weight behind (GROWLM_FAULT_NAN "N:weights"
# poisons one after step N's update): the next step's loss is non-finite, and whatever the
# policy then does, the run must not end green. (A real LR far too high is refused at load,
# config.MAX_LR, or trains to chance with finite numbers, which is not a crash.)
def diverge(policy: str, steps: int = 2, poisoned: int = 1):
    def edit(text: str) -> str:
        text = text.replace("steps = 2", f"steps = {steps}")
        return text.replace("micro_batch_size = 4", f'micro_batch_size = 4\nnonfinite = "{policy}"')
    return lambda ws, t: Launch(["train", ws.recipe(t, edit), "--quiet"], writes=True, match="diverged|non-finite",
                                env={"GROWLM_FAULT_NAN": f"{poisoned}:weights"})


DIVERGE_CASES = [
    Case("diverge/skip-policy", diverge("skip")),
    Case("diverge/stop-policy", diverge("stop")),
    Case("diverge/rollback-policy", diverge("rollback")),
    Case("diverge/skip-policy-longer-stage", diverge("skip", steps=4, poisoned=2)),
    Case("diverge/skip-policy-last-step", diverge("skip", steps=3, poisoned=3)),
    Case("diverge/every-step-poisoned", lambda ws, t: Launch(
        ["train", ws.recipe(t, sub("steps = 2", "steps = 3")), "--quiet"], env={"GROWLM_FAULT_NAN": "1,2,3"},
        writes=True)),
]


# ---------------------------------------------------------------- a full disk while training

def _same_as_reference(ws: Workspace, run: Path) -> list[str]:
    from growlm import checkpoint as ckpt
    from growlm.train.metrics import read_metrics

    def losses(path: Path) -> list:
        return [(r["step"], r["loss"]) for r in read_metrics(path / "metrics.jsonl") if r["kind"] == "step"]

    problems = []
    if losses(run) != losses(ws.run):
        problems.append("the resumed run's losses differ from the uninterrupted run's")
    _, a, _ = ckpt.load_model_state(ckpt.list_checkpoints(run / "checkpoints")[-1])
    _, b, _ = ckpt.load_model_state(ckpt.list_checkpoints(ws.run / "checkpoints")[-1])
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        problems.append("the resumed run's final weights differ from the uninterrupted run's")
    return problems


def _resume_after(ws: Workspace, recipe: str, run: Path, cwd: Path) -> list[str]:
    problems = ws.verify("run", run)
    done = growlm("train", recipe, "--resume", "--quiet", cwd=cwd)
    if done.returncode != 0:
        return [*problems, f"--resume after space was freed failed: {done.stderr.strip()[-300:]}"]
    return problems + _same_as_reference(ws, run)


def disk_limit(ws: Workspace, t: Path) -> Launch:
    """RLIMIT_FSIZE lets stage 1's checkpoints through and stops stage 2's: a full disk in
    the middle of training; freed (no limit), --resume must end bit-identical."""
    recipe = ws.recipe(t, sub("ckpt_every = 1", "ckpt_every = 0"), out=t / "run", stages=TWO_STAGES, n_layers=2)
    first, last = (ckpt / "model.safetensors" for ckpt in _boundaries(ws))
    limit = (first.stat().st_size + last.stat().st_size) // 2
    return Launch(["train", recipe, "--quiet"], fsize=limit, writes=True, match="while writing .*step_00000004",
                  after=lambda f, r, h: _resume_after(ws, recipe, t / "run", t))


def _boundaries(ws: Workspace) -> list[Path]:
    """The reference run's two stage-boundary checkpoints (steps 2 and 4)."""
    return [ws.run / "checkpoints" / f"step_0000000{n}" for n in (2, 4)]


def disk_tmpfs(ws: Workspace, t: Path) -> Launch:
    """A real full disk: the run folder on a tmpfs too small for stage 2's checkpoints."""
    disk = t / "disk"
    disk.mkdir()
    first = sum(p.stat().st_size for p in _boundaries(ws)[0].rglob("*"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={first + 64 * 1024}", "tmpfs", str(disk)], check=True)
    recipe = ws.recipe(t, sub("ckpt_every = 1", "ckpt_every = 0"), out=disk / "run", stages=TWO_STAGES, n_layers=2)

    def after(folder, result, handle):
        try:
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            return _resume_after(ws, recipe, disk / "run", t)
        finally:
            subprocess.run(["umount", str(disk)], check=False)
    return Launch(["train", recipe, "--quiet"], writes=True, match="No space left on device", after=after)


# ---------------------------------------------------------------- two writers on one run folder

HOLDER_STEPS = 600  # long enough that the first run is still training when the second one is refused


def second_writer(ws: Workspace, t: Path) -> Launch:
    def edit(text: str) -> str:
        return text.replace("steps = 2", f"steps = {HOLDER_STEPS}").replace("ckpt_every = 1", "ckpt_every = 200")
    recipe = ws.recipe(t, edit, out=t / "run")
    return Launch(["train", recipe, "--resume", "--quiet"], writes=True, match=r"in use by growlm pid \d+",
                  before=lambda f: _start_holder(recipe, t / "run"), after=_holder_unharmed)


def _start_holder(recipe: str, run: Path):
    import os
    import sys

    src = Path(__file__).resolve().parents[2] / "src"
    proc = subprocess.Popen([sys.executable, "-m", "growlm", "train", recipe, "--quiet"],
                            env={**os.environ, "PYTHONPATH": str(src)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").is_file() or b'"kind": "step"' not in (run / "metrics.jsonl").read_bytes():
        if proc.poll() is not None or time.time() > deadline:
            break
        time.sleep(0.05)
    return proc, run


def _holder_unharmed(folder: Path, result: dict, handle) -> list[str]:
    proc, run = handle
    still_running = proc.poll() is None
    out, err = proc.communicate(timeout=600)
    problems = [] if still_running else ["the first run had finished before the second started"]
    if proc.returncode != 0:
        problems.append(f"the first run failed: {err.strip()[-300:]}")
    from growlm.train.metrics import read_metrics

    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "step"]
    if steps != list(range(1, HOLDER_STEPS + 1)):
        problems.append(f"the first run's steps are {steps[:5]}... not 1..{HOLDER_STEPS}")
    return problems


# ---------------------------------------------------------------- sweeps

def sweep(*sets: str, out=None, **launch):
    def setup(ws: Workspace, t: Path) -> Launch:
        target = out(t) if out else t / "sweep"
        return Launch(["sweep", ws.recipe(t), "--quiet", "--out", str(target),
                       *[x for s in sets for x in ("--set", s)]], **launch)
    return setup


def _copied_sweep(damage, *sets: str):
    def setup(ws: Workspace, t: Path) -> Launch:
        import shutil

        target = Path(shutil.copytree(ws.sweep, t / "sweep"))
        damage(target)
        return Launch(["sweep", str(ws.sweep_recipe), "--quiet", "--out", str(target),
                       *[x for s in (sets or ("optim.lr=1e-3,3e-3",)) for x in ("--set", s)]])
    return setup


def killed_in_final_checkpoint(ws: Workspace, t: Path) -> Launch:
    """A sweep SIGKILLed with its only variant's final checkpoint complete but not yet renamed
    into place: the rerun must finish the variant, not trust its end record."""
    argv = ["sweep", ws.recipe(t), "--quiet", "--out", str(t / "sweep"), "--set", "optim.lr=1e-3"]
    done = growlm(*argv, env={"GROWLM_FAULT": "checkpoint_before_rename:2:kill"})
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-300:])
    status = json.loads((t / "sweep" / "sweep.json").read_text())["variants"][0]["status"]

    def after(folder, result, handle):
        problems = [] if status != "complete" else ["the killed variant was marked complete"]
        if result["rc"] != 0:
            problems.append("the rerun failed")
        return problems
    return Launch(argv, expect="ok", protect=[("sweep", t / "sweep")], after=after)


def sigterm_in_final_checkpoint(ws: Workspace, t: Path) -> Launch:
    """SIGTERM while the first variant writes its final checkpoint: that variant is complete,
    and the sweep must stop there (exit 143), not start the next one."""
    argv = ["sweep", ws.recipe(t), "--quiet", "--out", str(t / "sweep"), "--set", "optim.lr=1e-3,2e-3"]

    def after(folder, result, handle):
        variants = {e["name"]: e["status"] for e in json.loads((t / "sweep" / "sweep.json").read_text())["variants"]}
        problems = [] if result["rc"] == 143 else [f"exit {result['rc']}, not 143"]
        if variants != {"optim.lr=1e-3": "complete", "optim.lr=2e-3": "pending"}:
            problems.append(f"sweep.json says {variants}")
        again = growlm(*argv, cwd=t)
        if again.returncode != 0 or "optim.lr=1e-3: complete, skipped" not in again.stdout:
            problems.append(f"the rerun did not finish the sweep: {again.stderr.strip()[-200:]}")
        return problems
    return Launch(argv, env={"GROWLM_FAULT": "checkpoint_before_rename:2:term"}, writes=True,
                  match="stopped by SIGTERM", after=after, protect=[("sweep", t / "sweep")])


SWEEP_CASES = [
    Case("sweep/bad-value-in-second-variant", sweep("optim.lr=1e-3,fast")),
    Case("sweep/zero-steps-in-grid", sweep("stage.1.steps=2,0")),
    Case("sweep/nan-in-grid", sweep("optim.lr=1e-3,nan")),
    Case("sweep/unknown-key-axis", sweep("optim.lrr=1e-3,2e-3")),
    Case("sweep/second-stage-that-does-not-exist", sweep("stage.2.lr=1e-3,2e-3")),
    Case("sweep/empty-value", sweep("optim.lr=1e-3,,2e-3")),
    Case("sweep/no-equals", sweep("optim.lr")),
    Case("sweep/names-collide", sweep('stage.1.name="a/b","a_b"')),
    Case("sweep/out-is-a-file", sweep("optim.lr=1e-3,2e-3", out=lambda t: write(t / "f", "x"))),
    Case("sweep/out-under-a-file", sweep("optim.lr=1e-3,2e-3", out=lambda t: write(t / "f", "x") / "sweep")),
    Case("sweep/recipe-missing", lambda ws, t: ["sweep", str(t / "nope.toml"), "--quiet"]),
    Case("sweep/run-name-nul", sweep('run.name="a\\u0000b",b')),
    Case("sweep/every-variant-diverges", sweep("optim.lr=1e-3,2e-3", writes=True, match="every variant failed",
                                               env={"GROWLM_FAULT_NAN": "1:weights"})),
    # only the 3-step variant reaches the poisoned step
    Case("sweep/one-variant-diverges", sweep("stage.1.steps=2,3", expect="warn", match=r"stage\.1\.steps=3\s+failed",
                                             env={"GROWLM_FAULT_NAN": "3:weights"})),
    Case("sweep/sigterm-in-final-checkpoint", sigterm_in_final_checkpoint),
    Case("sweep/set-run-name", sweep("run.name=a,b")),
    Case("sweep/set-out-dir", sweep('run.out_dir="x"')),
    Case("sweep/out-empty", sweep("optim.lr=1e-3,2e-3", out=lambda t: "")),
    Case("sweep/garbled-sweep-json", _copied_sweep(lambda s: (s / "sweep.json").write_text("{"))),
    Case("sweep/sweep-json-a-list", _copied_sweep(lambda s: (s / "sweep.json").write_text("[1]"))),
    Case("sweep/sweep-json-variants-garbage", _copied_sweep(lambda s: (s / "sweep.json").write_text('{"variants": [5]}'))),
    Case("sweep/other-grid-in-same-folder", _copied_sweep(lambda s: None, "optim.weight_decay=0.0,0.2")),
    Case("sweep/killed-in-final-checkpoint", killed_in_final_checkpoint),
]

PROCESS_CASES = [
    Case("disk/file-size-limit-while-training", disk_limit),
    Case("disk/tmpfs-full-while-training", disk_tmpfs),
    Case("lock/second-train-on-a-running-folder", second_writer),
]

CASES = [*RECIPE_CASES, *SET_CASES, *RESUME_CASES, *DIVERGE_CASES, *SWEEP_CASES, *PROCESS_CASES, *IO_CASES]
