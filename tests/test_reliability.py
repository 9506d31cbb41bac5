"""Reliability: kills at named points, corruption, non-finite values, safe loading, disk use.

The long randomized kill test is benchmarks/faults/kill_anywhere.py; here three kills at fixed
points of a staged run (growth + frozen layers + ReLoRA) are resumed and compared bit for bit.
"""

from __future__ import annotations

import ast
import errno
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from growlm import checkpoint as ckpt
from growlm.config import load_recipe
from growlm.errors import GrowlmError
from growlm.files import WriteError
from growlm.train.hooks import Hook
from growlm.train.metrics import read_metrics
from growlm.train.trainer import Stopped, Trainer

SRC = Path(__file__).resolve().parents[1] / "src" / "growlm"

RECIPE = """
[run]
name = "t"
out_dir = "{out}"
eval_tokens = 256
ckpt_every = {ckpt_every}
keep_last = {keep_last}
{run_extra}
[model]
vocab_size = 300
d_model = 32
n_layers = {n_layers}
n_heads = 2
max_seq_len = 64
[data]
train = "{data}"
seq_len = 32
[train]
global_batch_tokens = 256
micro_batch_size = 4
{train_extra}
[schedule]
warmup_steps = 2
"""

# 4 + 4 steps: grow 2 → 3 layers, freeze the inherited ones, ReLoRA merges every 2 steps
STAGED = """
[[stage]]
name = "small"
n_layers = 2
steps = 4
lr = 3e-3
[[stage]]
name = "grown"
grow = { op = "interpolate", add = 1 }
freeze = ["inherited"]
adapters = { kind = "relora", rank = 2, reset_every = 2, rewarmup_steps = 1 }
steps = 4
lr = 3e-3
"""
SINGLE = '[[stage]]\nsteps = 6\nlr = 3e-3\n'
SEQS_PER_STEP = 256 // 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from growlm.data import prepare

    out = tmp_path_factory.mktemp("shards") / "tiny"
    prepare(out, ["builtin:python:100KB"], train_vocab=300, val_fraction=0.2, progress=False,
            log=lambda *_: None)
    return out


def write_recipe(folder: Path, shards: Path, name: str, stages: str = STAGED, *, n_layers: int = 3,
                 ckpt_every: int = 2, keep_last: int = 10, run_extra: str = "",
                 train_extra: str = "") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(RECIPE.format(out=(folder / name).as_posix(), data=shards.as_posix(),
                                  ckpt_every=ckpt_every, keep_last=keep_last, n_layers=n_layers,
                                  run_extra=run_extra, train_extra=train_extra) + stages)
    return path


def train(recipe: Path, *overrides: str, resume: bool = False) -> tuple[Trainer, dict]:
    trainer = Trainer(load_recipe(recipe, list(overrides)), resume=resume, quiet=True)
    return trainer, trainer.run()


def outcome(run_dir: Path) -> dict:
    records = read_metrics(run_dir / "metrics.jsonl")
    final = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    return {"losses": [(r["step"], r["loss"]) for r in records if r["kind"] == "step"],
            "evals": [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"],
            "stages": [(r["stage"], r["event"]) for r in records if r["kind"] == "stage"],
            "state": ckpt.load_model_state(final)[1]}


def assert_same(a: dict, b: dict) -> None:
    assert a["losses"] == b["losses"] and a["evals"] == b["evals"] and a["stages"] == b["stages"]
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


def assert_all_readable(ckpt_root: Path) -> int:
    """Every visible checkpoint verifies (sizes, sha256) and its weights and state load."""
    from safetensors.torch import load_file

    visible = [p for p in ckpt_root.iterdir() if p.name.startswith("step_")]
    for path in visible:
        ckpt.verify_checkpoint(path)
        load_file(path / ckpt.MODEL_FILE)
        ckpt.load_train_state(path)
    return len(visible)


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ref")
    trainer, _ = train(write_recipe(folder, shards, "ref"))
    return outcome(trainer.out)


@pytest.fixture(scope="module")
def stopped_run(shards, tmp_path_factory) -> Path:
    """The staged recipe stopped (as by SIGTERM) at step 6: checkpoints 2, 4 (boundary), 6."""
    folder = tmp_path_factory.mktemp("stopped")
    recipe = write_recipe(folder, shards, "run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "stop_requested", property(lambda self: self.counters.global_step >= 6))
        with pytest.raises(Stopped):
            train(recipe)
    return folder / "run"


def copy_run(run: Path, dest: Path, shards: Path) -> Path:
    """A copy of a run dir and a recipe pointing at it."""
    shutil.copytree(run, dest / "run")
    return write_recipe(dest, shards, "run")


# ---------------------------------------------------------------- kill anywhere (fast)

def test_killed_at_three_points_resumes_bit_identically(shards, tmp_path, reference):
    recipe = write_recipe(tmp_path, shards, "k", keep_last=1)
    out = tmp_path / "k"
    # SIGKILL mid-step 3 (after backward), right after the stage-1 boundary checkpoint (step 4),
    # and before the ReLoRA merge after step 6; tests/train covers kills mid-checkpoint-write
    for i, point in enumerate(["train_step:3", "stage_boundary:1", "relora_merge:1"]):
        cmd = [sys.executable, "-m", "growlm", "train", str(recipe), "--quiet"] + (["--resume"] if i else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "GROWLM_FAULT": f"{point}:kill"})
        assert proc.returncode == -9, (point, proc.stderr[-2000:])
        assert assert_all_readable(out / "checkpoints") >= 1
    assert ckpt.latest_valid(out / "checkpoints")[1]["global_step"] == 4
    train(recipe, resume=True)
    assert_same(outcome(out), reference)


def test_crash_mid_prune_leaves_only_readable_checkpoints(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for step in range(1, 6):
        ckpt.save_checkpoint(root, step, {"w": torch.full((4,), float(step))}, {"s": step},
                             {"global_step": step, "stage_complete": step == 2})

    def crash(point):
        if point == "checkpoint_prune":
            raise KeyboardInterrupt  # dies between the rename and the delete
    monkeypatch.setattr(ckpt, "fault", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune_checkpoints(root, keep_last=2)
    assert list(root.glob(".trash-*"))
    assert assert_all_readable(root) == 4
    monkeypatch.setattr(ckpt, "fault", lambda point: None)
    ckpt.prune_checkpoints(root, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000004", "step_00000005"]


def test_failed_save_leaves_no_partial_directory(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 1, {"w": torch.ones(3)}, {}, {"global_step": 1})

    def full_disk(obj, path, *a, **k):
        Path(path).write_bytes(b"\x80partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(WriteError, match="No space left on device"):
        ckpt.save_checkpoint(root, 2, {"w": torch.ones(3)}, {}, {"global_step": 2})
    assert [p.name for p in root.iterdir()] == ["step_00000001"]
    ckpt.verify_checkpoint(root / "step_00000001")


# ---------------------------------------------------------------- corruption

def _flip(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:-8]), "size"),
    "bit-flipped weights": (lambda d: _flip(d / "model.safetensors"), "checksum mismatch"),
    "bit-flipped train state": (lambda d: _flip(d / "train_state.pt", 40), "checksum mismatch"),
    "missing train state": (lambda d: (d / "train_state.pt").unlink(), "missing train_state.pt"),
    "garbled meta.json": (lambda d: (d / "meta.json").write_text('{"format": "growlm-'),
                          "corrupted checkpoint metadata"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_detected_and_skipped(tmp_path, damage):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        ckpt.save_checkpoint(root, step, {"w": torch.arange(64.0) * step},
                             {"optimizer": {"m": torch.ones(64)}}, {"global_step": step, "model": {}})
    newest = root / "step_00000002"
    size = {f.name: f.stat().st_size for f in newest.iterdir()}
    hurt, message = DAMAGE[damage]
    hurt(newest)
    if "bit-flipped" in damage:  # same size: only the sha256 can tell
        assert {f.name: f.stat().st_size for f in newest.iterdir()} == size
    with pytest.raises(GrowlmError, match=message):
        ckpt.verify_checkpoint(newest)
    with pytest.warns(UserWarning, match="damaged"):
        path, meta = ckpt.latest_valid(root)
    assert path.name == "step_00000001" and meta["global_step"] == 1


def test_resume_falls_back_past_bit_flipped_checkpoint(stopped_run, shards, tmp_path, reference, capsys):
    recipe = copy_run(stopped_run, tmp_path, shards)
    newest = tmp_path / "run" / "checkpoints" / "step_00000006"
    _flip(newest / "model.safetensors", -100)
    capsys.readouterr()
    train(recipe, resume=True)  # from step 4, the stage-1 boundary
    assert re.search("warning: skipping damaged checkpoint: .*step_00000006.*checksum mismatch",
                     capsys.readouterr().out)
    assert_same(outcome(tmp_path / "run"), reference)


def test_shard_damage_is_detected(shards, tmp_path):
    from growlm.data import open_shards

    def copy(name):
        return Path(shutil.copytree(shards, tmp_path / name))
    missing = copy("missing")
    (missing / "val_00000.bin").unlink()
    with pytest.raises(GrowlmError, match="missing shard .*val_00000.bin"):
        open_shards(missing)
    short = copy("short")
    shard = short / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(GrowlmError, match="is .* bytes but meta.json says"):
        open_shards(short)
    flipped = copy("flipped")
    _flip(flipped / "train_00000.bin", 1000)
    open_shards(flipped)  # sizes and structure still look right ...
    with pytest.raises(GrowlmError, match="corrupted: its sha256 differs"):
        open_shards(flipped).verify()  # ... the hash does not (growlm data verify)


# ---------------------------------------------------------------- non-finite values

def step_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "step"]


def test_skip_policy_counts_nan_inf_and_gradient_faults(shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GROWLM_FAULT_NAN", "2,3:inf,5:grad")
    trainer, summary = train(write_recipe(tmp_path, shards, "s", SINGLE, n_layers=1))
    rows = step_records(trainer.out)
    assert summary["skipped_steps"] == 3 and summary["steps"] == 6
    assert [r["skipped_steps"] for r in rows] == [0, 1, 2, 2, 3, 3]
    # metrics.jsonl is standard JSON: a non-finite number is null, "nonfinite" says which it was
    assert rows[1]["loss"] is None and rows[1]["nonfinite"]["loss"] == "nan"
    assert rows[2]["loss"] is None and rows[2]["nonfinite"]["loss"] == "inf"
    assert math.isfinite(rows[4]["loss"]) and rows[4]["nonfinite"] == {"grad_norm": "nan"}
    assert all(math.isfinite(rows[i]["loss"]) for i in (0, 3, 5))
    _, state, _ = ckpt.load_model_state(trainer.out)
    assert all(torch.isfinite(t).all() for t in state.values()), "no garbage reached the weights"
    assert capsys.readouterr().out.count("step skipped") == 3


def test_repeated_nonfinite_steps_stop_the_run(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("GROWLM_FAULT_NAN", "2,3,4")
    recipe = write_recipe(tmp_path, shards, "r", SINGLE, n_layers=1, train_extra="max_bad_steps = 3")
    with pytest.raises(GrowlmError, match="diverged: 3 consecutive non-finite steps at step 4"):
        train(recipe)


def test_stop_policy_stops_at_the_first_nonfinite_step(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("GROWLM_FAULT_NAN", "3")
    recipe = write_recipe(tmp_path, shards, "x", SINGLE, n_layers=1, train_extra='nonfinite = "stop"')
    with pytest.raises(GrowlmError, match="non-finite loss/gradient .* at step 3; stopped as train.nonfinite"):
        train(recipe)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "x" / "checkpoints")] == ["step_00000002"]
    assert [r["step"] for r in step_records(tmp_path / "x")] == [1, 2]


def test_rollback_reloads_lowers_lr_and_skips_the_batch(shards, tmp_path, monkeypatch, capsys):
    # step 3: back to the step-2 checkpoint (stage 1); step 5, the first of stage 2: back to
    # the boundary checkpoint of step 4, so stage 2 is rebuilt from it
    monkeypatch.setenv("GROWLM_FAULT_NAN", "3,5")
    recipe = write_recipe(tmp_path, shards, "rb", train_extra='nonfinite = "rollback"')
    trainer, summary = train(recipe)
    rows = step_records(trainer.out)
    assert summary["rollbacks"] == 2 and summary["steps"] == 8
    assert [r["step"] for r in rows] == list(range(1, 9)), "replayed steps are logged once"
    assert all(math.isfinite(r["loss"]) for r in rows)
    for r in rows:  # LR halved from the bad step to the end of its stage
        stage = trainer.stages[r["stage"] - 1]
        scale = 0.5 if r["stage_step"] >= (3 if r["stage"] == 1 else 1) else 1.0
        assert r["lr"] == pytest.approx(stage.lr * stage.lr_factor(r["stage_step"] - 1) * scale)
    # each rollback skipped the data of the steps between its checkpoint and the bad step
    assert trainer.loader.position == (8 + 1 + 1) * SEQS_PER_STEP
    rollbacks = [r for r in read_metrics(trainer.out / "metrics.jsonl") if r["kind"] == "rollback"]
    assert [(r["step"], r["bad_step"]) for r in rollbacks] == [(2, 3), (4, 5)]
    assert capsys.readouterr().out.count("rolled back") == 2
    # the lowered LR is part of the saved state, so a resume keeps it
    state = ckpt.load_train_state(ckpt.list_checkpoints(trainer.out / "checkpoints")[-1])
    assert state["counters"]["lr_scale"] == 0.5 and state["counters"]["rollbacks"] == 2


def test_repeated_rollbacks_stop_with_a_clear_message(shards, tmp_path, monkeypatch):
    # no checkpoint before step 3: each rollback restarts from scratch; the third one stops
    monkeypatch.setenv("GROWLM_FAULT_NAN", "1,2,3")
    recipe = write_recipe(tmp_path, shards, "rr", SINGLE, n_layers=1, ckpt_every=4,
                          train_extra='nonfinite = "rollback"\nmax_rollbacks = 2')
    with pytest.raises(GrowlmError, match="diverged: .* at step 3 after 2 rollbacks in stage 1"):
        train(recipe)


# ---------------------------------------------------------------- safe loading

def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_source_never_unpickles_or_trusts_remote_code():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(SRC.parent)
        for call, name in _calls(tree):
            kw = {k.arg: k.value for k in call.keywords}
            if name.endswith("torch.load") or name == "load" and "weights_only" in kw:
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    problems.append(f"{where}:{call.lineno}: {name} without weights_only=True")
            if name.split(".")[-1] in ("loads", "load", "Unpickler") and name.split(".")[0] in (
                    "pickle", "cPickle", "dill", "cloudpickle", "joblib", "_pickle"):
                problems.append(f"{where}:{call.lineno}: {name}")
            for key in ("trust_remote_code", "allow_pickle"):
                if key in kw and not (isinstance(kw[key], ast.Constant) and kw[key].value is False):
                    problems.append(f"{where}:{call.lineno}: {key}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names):
                    problems.append(f"{where}:{node.lineno}: imports a pickle module")
            name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
            if name == "FileSystemReader":  # DCP's default reader unpickles its .metadata
                problems.append(f"{where}:{node.lineno}: FileSystemReader")
    assert not problems, problems


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _rehash(ckpt_dir: Path) -> None:
    """Make meta.json list the current files, so only the loader itself can refuse them."""
    meta = json.loads((ckpt_dir / "meta.json").read_text())
    for name in meta["files"]:
        f = ckpt_dir / name
        meta["files"][name] = {"bytes": f.stat().st_size, "sha256": ckpt.sha256_file(f)}
    meta["meta_sha256"] = ckpt._meta_digest(meta)
    (ckpt_dir / "meta.json").write_text(json.dumps(meta))


def test_payload_is_live_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "pwned"
    blob = tmp_path / "evil.pkl"
    blob.write_bytes(pickle.dumps(_Payload(marker)))
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.loads(open({str(blob)!r}, 'rb').read())"],
                   check=True, timeout=120)
    assert marker.exists(), "the crafted pickle must really run code, or the tests below prove nothing"


@pytest.mark.parametrize("fmt", ["raw pickle", "torch zip"])
@pytest.mark.parametrize("target", ["train_state.pt", "model.safetensors"])
def test_crafted_pickle_in_checkpoint_is_refused(stopped_run, shards, tmp_path, fmt, target):
    recipe = copy_run(stopped_run, tmp_path, shards)
    marker = tmp_path / "pwned"
    newest = tmp_path / "run" / "checkpoints" / "step_00000006"
    if fmt == "raw pickle":
        (newest / target).write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"optimizer": _Payload(marker)}, newest / target)  # saving runs nothing
    _rehash(newest)
    ckpt.verify_checkpoint(newest)  # an otherwise valid checkpoint
    with pytest.raises(GrowlmError, match="refused or unreadable training state|unreadable weights"):
        train(recipe, resume=True)
    with pytest.raises(GrowlmError):
        ckpt.load_model_state(newest) if target == "model.safetensors" else ckpt.load_train_state(newest)
    assert not marker.exists()


def _hf_folder(folder: Path) -> Path:
    from growlm.model import ModelConfig
    from growlm.model.hf import export_hf
    from growlm.train.boundary import new_model

    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    return export_hf(cfg, new_model(cfg, 0).state_dict(), folder)


def test_hf_import_never_runs_remote_code(tmp_path):
    from growlm.cli import main
    from growlm.model.hf import load_hf_folder

    folder = _hf_folder(tmp_path / "hf")
    marker = tmp_path / "pwned"
    (folder / "modeling_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
                          "AutoConfig": "modeling_evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    cfg, state = load_hf_folder(folder)  # auto_map is ignored: plain Llama
    assert cfg.n_layers == 1 and "layers.0.mlp.up_proj.weight" in state
    assert main(["export", str(folder), str(tmp_path / "out")]) == 0
    config["model_type"] = "evil"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GrowlmError, match="model_type='evil' is not supported"):
        load_hf_folder(folder)
    assert not marker.exists()


# ---------------------------------------------------------------- disk use

def test_retention_keeps_last_n_plus_boundaries(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 41):  # 40 checkpoints, boundaries at 10, 20 and 30
        ckpt.save_checkpoint(root, step, {"w": torch.zeros(2)}, {}, {"global_step": step,
                             "stage_complete": step % 10 == 0 and step < 40})
        ckpt.prune_checkpoints(root, keep_last=3)
        assert len(ckpt.list_checkpoints(root)) <= 3 + step // 10
    names = [int(p.name[5:]) for p in ckpt.list_checkpoints(root)]
    assert names == [10, 20, 30, 38, 39, 40]


def test_disk_use_stays_bounded_and_budget_warns(shards, tmp_path, monkeypatch, capsys):
    from growlm.train.disk import check_disk_budget, estimate_checkpoint_bytes

    counts, peak = [], [0]
    real_prune = ckpt.prune_checkpoints

    def watch(root, keep_last):
        real_prune(root, keep_last)
        counts.append(len(ckpt.list_checkpoints(root)))
        peak[0] = max(peak[0], sum(f.stat().st_size for f in root.rglob("*") if f.is_file()))
    monkeypatch.setattr(ckpt, "prune_checkpoints", watch)
    recipe = write_recipe(tmp_path, shards, "d", ckpt_every=1, keep_last=2, run_extra='disk_budget = "1KiB"')
    trainer, _ = train(recipe)
    assert len(counts) == 8 and max(counts) <= 2 + 2  # keep_last + 2 stage boundaries
    err = capsys.readouterr().err
    assert "warning: the checkpoints of this run may need up to" in err and "run.disk_budget = 1 KiB" in err
    estimate = estimate_checkpoint_bytes(trainer.cfg, trainer.stages)
    assert peak[0] <= estimate < 4 * peak[0], (peak[0], estimate)  # an upper bound, not a wild one
    roomy = load_recipe(recipe, ["run.disk_budget=\"1GiB\""])
    assert check_disk_budget(roomy, trainer.stages, tmp_path) is None
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- a diverged run never ends green

class _PoisonWeights(Hook):
    """A hook that turns one weight non-finite after a given step."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def step_end(self, trainer, built, record, last):
        if record["step"] == self.at_step:
            with torch.no_grad():
                next(built.model.parameters()).view(-1)[0] = math.inf


@pytest.mark.parametrize("policy", ["skip", "rollback", "stop"])
def test_non_finite_weights_or_val_loss_fail_the_run(shards, tmp_path, monkeypatch, policy):
    from growlm.train.trainer import Trainer as T

    recipe = write_recipe(tmp_path, shards, f"w-{policy}", SINGLE, n_layers=1,
                          train_extra=f'nonfinite = "{policy}"')
    trainer = T(load_recipe(recipe), quiet=True, hooks=[_PoisonWeights(at_step=4)])
    with pytest.raises(GrowlmError, match="training diverged: stage 1 ended with a non-finite weight"):
        trainer.run()
    monkeypatch.setattr(T, "val_loss", lambda self, model: math.nan)
    recipe = write_recipe(tmp_path, shards, f"v-{policy}", SINGLE, n_layers=1,
                          train_extra=f'nonfinite = "{policy}"')
    with pytest.raises(GrowlmError, match="non-finite validation loss nan"):
        T(load_recipe(recipe), quiet=True).run()
