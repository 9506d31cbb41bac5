"""Bad-input sweep: recipes, CLI arguments, data, checkpoints, HF folders and a full disk.

Every case runs `growlm.cli.main` in-process and must give a non-zero exit, exactly one line
on stderr that names the problem (a regex per case), no traceback, and leave every file that
existed before (the shared workspace and the case's own inputs) byte-for-byte unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from growlm.cli import main

RECIPE = """
[run]
name = "bad"
out_dir = "{out}"
eval_tokens = 256
ckpt_every = 1
[model]
vocab_size = 300
d_model = 32
n_layers = 1
n_heads = 2
max_seq_len = 64
[data]
train = "{data}"
seq_len = 32
[train]
global_batch_tokens = 128
micro_batch_size = 4
[schedule]
warmup_steps = 1
[[stage]]
steps = 2
"""


@dataclass
class Ctx:
    root: Path
    shards: Path
    run: Path
    hf: Path

    def recipe(self, folder: Path, edit: Callable[[str], str] = lambda t: t, name: str = "r",
               out: Path | None = None, data: Path | None = None) -> str:
        text = RECIPE.format(out=(out or folder / f"{name}-run").as_posix(),
                             data=(data or self.shards).as_posix())
        path = folder / f"{name}.toml"
        path.write_text(edit(text))
        return str(path)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Ctx:
    from growlm.data import prepare

    root = tmp_path_factory.mktemp("workspace")
    shards = root / "shards"
    prepare(shards, ["builtin:python:100KB"], train_vocab=300, val_fraction=0.2, progress=False,
            log=lambda *_: None)
    c = Ctx(root, shards, root / "run", root / "hf")
    assert main(["train", c.recipe(root, out=c.run, name="good"), "--quiet"]) == 0
    assert main(["export", str(c.run), str(c.hf)]) == 0
    return c


# ---------------------------------------------------------------- helpers for the cases

def copy(src: Path, dest: Path) -> Path:
    return Path(shutil.copytree(src, dest))


def flip(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: int = -8) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def rehash(ckpt_dir: Path) -> None:
    """Make meta.json agree with the files (and with itself), so only the loader itself can
    refuse them."""
    from growlm.checkpoint import _meta_digest, sha256_file

    meta = json.loads((ckpt_dir / "meta.json").read_text())
    for name in meta["files"]:
        meta["files"][name] = {"bytes": (ckpt_dir / name).stat().st_size, "sha256": sha256_file(ckpt_dir / name)}
    meta["meta_sha256"] = _meta_digest(meta)
    (ckpt_dir / "meta.json").write_text(json.dumps(meta))


def copy_run(c: Ctx, tmp: Path, edit: Callable[[str], str] = lambda t: t) -> str:
    """A copy of the finished run in tmp/run and a recipe (possibly edited) for it."""
    return c.recipe(tmp, edit, out=copy(c.run, tmp / "run"))


def adopt_run(c: Ctx, tmp: Path) -> str:
    """copy_run, with the copy's run.json made exactly what the trainer writes for it (it
    rewrites run.json before loading the checkpoint), so a refused resume must leave every
    byte of the copy as it was."""
    from growlm.config import load_recipe
    from growlm.train.trainer import stages_fingerprint

    recipe = copy_run(c, tmp)
    cfg = load_recipe(recipe)
    (tmp / "run" / "run.json").write_text(json.dumps(
        {"fingerprint": stages_fingerprint(cfg), "recipe": cfg.source, "config": cfg.model_dump(mode="json")},
        indent=1) + "\n")
    return recipe


def newest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*"))[-1]


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def disk_full(target: str) -> Callable:
    """A replacement for a writer function: write a few bytes, then fail with ENOSPC."""
    def fake(*args, **kwargs):
        path = next((a for a in args if isinstance(a, (str, Path))), None)
        if path is not None:
            Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path or target))
    return fake


def _shard_write_fails(self, ids):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.folder / f"{self.split}_00000.bin"))


# ---------------------------------------------------------------- the cases

def _sub(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new)
    return edit


def _add(extra: str) -> Callable[[str], str]:
    return lambda text: text + extra


GROWN = _sub("[[stage]]\nsteps = 2", '[[stage]]\nn_layers = 1\nsteps = 2\n[[stage]]\n'
             'grow = { op = "stack", factor = 2 }\nsteps = 2')


def _optim(line: str) -> Callable[[str], str]:
    return _sub("[train]", f"[optim]\n{line}\n[train]")


def _run(line: str) -> Callable[[str], str]:
    return _sub('name = "bad"', f'name = "bad"\n{line}')


# Three stages, the last one impossible in a way only building it shows: refused before any
# step, by train, train --dry-run and plan alike.
THREE = ('[[stage]]\nn_layers = 1\nsteps = 2\n[[stage]]\ngrow = { op = "stack", factor = 2 }\n'
         'steps = 2\nSECOND[[stage]]\ngrow = { op = "stack", factor = 2 }\nsteps = 2\nTHIRD')


def _three(third: str, second: str = "", command: str = "train") -> Callable:
    def setup(c: Ctx, t: Path) -> list[str]:
        edit = _sub("n_layers = 1\n", "n_layers = 4\n")
        text = THREE.replace("SECOND", second).replace("THIRD", third)
        recipe = c.recipe(t, lambda r: edit(r).replace("[[stage]]\nsteps = 2\n", text))
        return {"train": ["train", recipe, "--quiet"], "dry": ["train", recipe, "--dry-run"],
                "plan": ["plan", recipe, "--out", str(t / "plan")]}[command]
    return setup


@dataclass
class Case:
    id: str
    setup: Callable[[Ctx, Path], list[str]]  # makes the bad input, returns argv
    match: str  # regex the one stderr line must match
    patch: tuple[str, Callable] | None = None  # (dotted target, replacement) during the call
    new_outputs: bool = False  # the run may create its own (new) run dir, never a checkpoint


def _train(edit=lambda t: t, *flags):
    return lambda c, t: ["train", c.recipe(t, edit), "--quiet", *flags]


def _shards_case(damage: Callable[[Path], None], command: str):
    def setup(c: Ctx, t: Path) -> list[str]:
        shards = copy(c.shards, t / "shards")
        damage(shards)
        if command == "train":
            return ["train", c.recipe(t, data=shards), "--quiet"]
        return ["data", command, str(shards)]
    return setup


def _ckpt_case(damage: Callable[[Path], None], command: str = "export"):
    def setup(c: Ctx, t: Path) -> list[str]:
        ckpt_dir = copy(newest(c.run), t / "ckpt")
        damage(ckpt_dir)
        if command == "eval":
            return ["eval", str(ckpt_dir), "--tasks", "ppl", "--val-shards", str(c.shards), "--quiet"]
        return ["export", str(ckpt_dir), str(t / "out")]
    return setup


def _hf_case(damage: Callable[[Path], None]):
    def setup(c: Ctx, t: Path) -> list[str]:
        folder = copy(c.hf, t / "hf")
        damage(folder)
        return ["export", str(folder), str(t / "out")]
    return setup


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _drop_tensor(folder: Path) -> None:
    state = load_file(folder / "model.safetensors")
    state.pop("model.layers.0.mlp.up_proj.weight")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _resume_pickled_state(c: Ctx, t: Path) -> list[str]:
    recipe = adopt_run(c, t)
    ckpt_dir = newest(t / "run")
    (ckpt_dir / "train_state.pt").write_bytes(pickle.dumps(_Payload(t / "pwned")))
    rehash(ckpt_dir)
    return ["train", recipe, "--resume", "--quiet"]


def _resume_without_run_json(c: Ctx, t: Path) -> list[str]:
    recipe = copy_run(c, t, _sub("warmup_steps = 1", "warmup_steps = 2"))
    (t / "run" / "run.json").unlink()
    return ["train", recipe, "--resume", "--quiet"]


def _resume_garbled_run_json(c: Ctx, t: Path) -> list[str]:
    recipe = copy_run(c, t)
    (t / "run" / "run.json").write_text('{"fingerprint": ')
    return ["train", recipe, "--resume", "--quiet"]


def _resume_run_json_list(c: Ctx, t: Path) -> list[str]:
    recipe = copy_run(c, t)
    (t / "run" / "run.json").write_text("[1, 2]")
    return ["train", recipe, "--resume", "--quiet"]


def _resume_empty_train_state(c: Ctx, t: Path) -> list[str]:
    recipe = adopt_run(c, t)
    for ckpt_dir in (t / "run" / "checkpoints").glob("step_*"):
        torch.save({}, ckpt_dir / "train_state.pt")
        rehash(ckpt_dir)
    return ["train", recipe, "--resume", "--quiet"]


def _meta_as_list(d: Path) -> None:
    (d / "meta.json").write_text("[1, 2, 3]")


def _meta_files_without_bytes(d: Path) -> None:
    meta = json.loads((d / "meta.json").read_text())
    del meta["files"]["model.safetensors"]["bytes"]
    (d / "meta.json").write_text(json.dumps(meta))


def _resume_all_damaged(c: Ctx, t: Path) -> list[str]:
    recipe = copy_run(c, t)
    for ckpt_dir in (t / "run" / "checkpoints").glob("step_*"):
        truncate(ckpt_dir / "train_state.pt")
    return ["train", recipe, "--resume", "--quiet"]


def _prepare_empty_file(c: Ctx, t: Path) -> list[str]:
    (t / "empty.txt").write_text("")
    return _prepare(t, str(t / "empty.txt"))


def _train_on_empty_folder(c: Ctx, t: Path) -> list[str]:
    (t / "empty").mkdir()
    return ["train", c.recipe(t, data=t / "empty"), "--quiet"]


def _export_pickle_file(c: Ctx, t: Path) -> list[str]:
    torch.save({"w": torch.zeros(2)}, t / "model.pt")
    return ["export", str(t / "model.pt"), str(t / "out")]


def _prepare(t: Path, *inputs: str) -> list[str]:
    return ["data", "prepare", str(t / "out"), *inputs, "--train-tokenizer", "300", "--quiet",
            "--val-fraction", "0.2"]


CASES = [
    # recipes
    Case("recipe/unknown-top-level-key", _train(_add("\n[modle]\nd_model = 64\n")), r"modle: unknown key"),
    Case("recipe/unknown-stage-key", _train(_add("lrr = 0.1\n")), r"stage\.1\.lrr: unknown key"),
    Case("recipe/wrong-type-int", _train(_sub("d_model = 32", 'd_model = "big"')),
         r"model\.d_model: .*valid integer.*'big'"),
    Case("recipe/wrong-type-list", _train(_add('freeze = "inherited"\n')), r"stage\.1\.freeze: .*valid list"),
    Case("recipe/zero-batch", _train(_sub("micro_batch_size = 4", "micro_batch_size = 0")),
         r"train\.micro_batch_size: .*greater than 0"),
    Case("recipe/impossible-heads", _train(_sub("d_model = 32", "d_model = 30")), r"head dim .* must be even"),
    Case("recipe/grow-first-stage", _train(_add('grow = { op = "stack", factor = 2 }\n')),
         r"stage\.1\.grow: the first stage has nothing to grow from"),
    Case("recipe/growth-misses-final-shape", _train(GROWN), r"last stage's shape does not match \[model\]"),
    Case("recipe/unknown-grow-op", _train(_sub("[[stage]]\nsteps = 2", '[[stage]]\nn_layers = 1\nsteps = 2\n'
                                                '[[stage]]\ngrow = { op = "explode" }\nsteps = 2')),
         r"stage\.2\.grow\.op: Input should be"),
    Case("recipe/seq-len-over-max", _train(_sub("seq_len = 32", "seq_len = 128")),
         r"data\.seq_len \(128\) is larger than model\.max_seq_len \(64\)"),
    Case("recipe/missing-data-path", lambda c, t: ["train", c.recipe(t, data=t / "nope"), "--quiet"],
         r"shard folder not found: .*nope"),
    Case("recipe/malformed-toml", _train(_add("\n[[[\n")), r"malformed TOML"),
    Case("recipe/not-found", lambda c, t: ["train", str(t / "missing.toml")], r"recipe not found: .*missing\.toml"),
    Case("recipe/bad-nonfinite-policy", _train(_sub("micro_batch_size = 4", 'micro_batch_size = 4\nnonfinite = "ignore"')),
         r"train\.nonfinite: Input should be 'skip', 'rollback' or 'stop'"),
    Case("recipe/bad-disk-budget", _train(_sub('name = "bad"', 'name = "bad"\ndisk_budget = "lots"')),
         r"run\.disk_budget: cannot read disk_budget 'lots'"),
    Case("recipe/relora-longer-than-stage", _train(_add('adapters = { kind = "relora", rank = 2, reset_every = 5 }\n')),
         r"stage\.1\.adapters\.reset_every: 5 steps is longer than the stage"),
    Case("recipe/batch-not-divisible", _train(_sub("micro_batch_size = 4", "micro_batch_size = 3")),
         r"not divisible by micro_batch_size"),
    Case("recipe/plan-unknown-key", lambda c, t: ["plan", c.recipe(t, _add("\n[modle]\n"))], r"modle: unknown key"),
    Case("recipe/changed-since-run-started",
         lambda c, t: ["train", copy_run(c, t, _sub("steps = 2", "steps = 3")), "--resume", "--quiet"],
         r"changed since the run started"),
    Case("recipe/existing-run-without-resume", lambda c, t: ["train", copy_run(c, t), "--quiet"],
         r"already holds checkpoints; pass --resume"),
    Case("resume/changed-lr-on-the-command-line",
         lambda c, t: ["train", adopt_run(c, t), "--resume", "--quiet", "--set", "optim.lr=0.5"],
         r"settings changed since the run started"),
    Case("resume/changed-schedule", lambda c, t: ["train", copy_run(c, t, _sub("warmup_steps = 1", "warmup_steps = 2")),
                                                  "--resume", "--quiet"], r"settings changed since the run started"),
    Case("resume/changed-data", lambda c, t: ["train", copy_run(c, t), "--resume", "--quiet", "--set",
                                              f"data.train={json.dumps(str(copy(c.shards, t / 'other')))}"],
         r"settings changed since the run started"),
    Case("resume/run-json-deleted-then-changed", _resume_without_run_json,
         r"this checkpoint was written by a recipe with other settings"),
    Case("resume/garbled-run-json", _resume_garbled_run_json, r"run\.json: run record is not valid JSON"),
    Case("resume/run-json-a-list", _resume_run_json_list, r"run\.json: run record must be a JSON object, got list"),
    Case("resume/empty-train-state", _resume_empty_train_state, r"train_state\.pt: training state lacks 'loader'"),
    Case("recipe/lr-infinite", _train(_optim("lr = inf")), r"optim\.lr: .*finite"),
    # finite, but Adam's first update would overflow fp32 inside torch (a traceback before)
    Case("recipe/lr-huge", _train(_optim("lr = 1e38")), r"optim\.lr: Input should be less than or equal to 1000"),
    Case("recipe/stage-lr-huge", _train(_sub("steps = 2", "steps = 2\nlr = 1e30")), r"stage\.1\.lr: .*less than or equal to 1000"),
    Case("recipe/weight-decay-infinite", _train(_optim("weight_decay = inf")), r"optim\.weight_decay: .*finite"),
    Case("recipe/eps-infinite", _train(_optim("eps = inf")), r"optim\.eps: .*finite"),
    Case("recipe/eps-nan", _train(_optim("eps = nan")), r"optim\.eps: .*finite"),
    Case("recipe/beta-above-one", _train(_optim("betas = [1.5, 0.9]")), r"optim\.betas: each beta must be in \[0, 1\)"),
    Case("recipe/beta-nan", _train(_optim("betas = [nan, 0.9]")), r"optim\.betas\.0: .*finite"),
    Case("recipe/tokens-infinite", _train(_sub("steps = 2", "tokens = inf")), r"stage\.1\.tokens: .*finite"),
    Case("recipe/tokens-overflow", _train(_sub("steps = 2", 'tokens = "1e400"')), r"stage\.1\.tokens: .*finite"),
    Case("recipe/disk-budget-infinite", _train(_run("disk_budget = inf")), r"run\.disk_budget: .*finite"),
    Case("recipe/seed-negative", _train(_run("seed = -1")), r"run\.seed: .*greater than or equal to 0"),
    Case("recipe/seed-too-large", lambda c, t: ["train", c.recipe(t), "--set", "run.seed=18446744073709551616"],
         r"run\.seed: .*less than or equal to 4294967295"),
    Case("recipe/max-seq-len-absurd", _train(_sub("max_seq_len = 64", "max_seq_len = 4e9")),
         r"model\.max_seq_len: .*less than or equal to"),
    Case("recipe/run-name-escapes", _train(_sub('name = "bad"', 'name = "../../escaped"')),
         r"run\.name: must be a single folder name"),
    Case("recipe/eval-every-negative", _train(_run("eval_every = -1")), r"run\.eval_every: must be >= 0"),
    Case("recipe/no-stages", lambda c, t: ["train", c.recipe(t), "--set", "stage=[]"],
         r"the stage list cannot be replaced"),
    Case("recipe/stage-set-to-number", lambda c, t: ["train", c.recipe(t), "--set", "stage.1=5"],
         r"stage\.1 is a table; set one of its keys"),
    Case("recipe/init-on-a-later-stage", _train(_sub("[[stage]]\nsteps = 2", '[[stage]]\nsteps = 1\n[[stage]]\n'
                                                    'init = "somewhere"\nsteps = 1')),
         r"stage\.2\.init: only the first stage can start from an init source"),
    Case("recipe/map-on-first-stage", _train(_add('optimizer_state = "map"\n')),
         r"stage\.1\.optimizer_state: 'map' needs a previous stage"),
    Case("recipe/lora-with-reset-interval", _train(_add('freeze = ["layers"]\nadapters = { kind = "lora", '
                                                         'rank = 2, reset_every = 1, rewarmup_steps = 0 }\n')),
         r"stage\.1\.adapters\.reset_every: plain LoRA never merges"),
    # the later stage cannot be built: found before stage 1 trains
    Case("stage3/adapter-rank-too-large", _three('freeze = ["inherited"]\nadapters = { rank = 999, reset_every = 1, rewarmup_steps = 0 }\n'),
         r"stage\.3\.adapters\.rank: 999 exceeds the smaller dimension of layers\.0\."),
    Case("stage3/adapter-rank-too-large-dry-run",
         _three('freeze = ["inherited"]\nadapters = { rank = 999, reset_every = 1, rewarmup_steps = 0 }\n', command="dry"),
         r"stage\.3\.adapters\.rank: 999"),
    Case("stage3/adapter-rank-too-large-plan",
         _three('freeze = ["inherited"]\nadapters = { rank = 999, reset_every = 1, rewarmup_steps = 0 }\n', command="plan"),
         r"stage\.3\.adapters\.rank: 999"),
    Case("stage3/alpha-and-scale-disagree",
         _three('freeze = ["inherited"]\nadapters = { rank = 2, alpha = 4, scale = 0.5, reset_every = 1, rewarmup_steps = 0 }\n'),
         r"stage\.3\.adapters\.scale: alpha \(4\.0\) / rank \(2\) != scale \(0\.5\)"),
    Case("stage3/everything-frozen", _three('freeze = ["*"]\n'), r"stage\.3\.freeze: every parameter is frozen"),
    Case("stage3/adapters-with-nothing-frozen", _three('adapters = { rank = 2, reset_every = 1, rewarmup_steps = 0 }\n'),
         r"stage\.3\.adapters\.targets: no frozen linear layer matches"),
    Case("stage3/freeze-pattern-matches-nothing", _three('freeze = ["layers.9.*"]\n'),
         r"stage\.3\.freeze: pattern 'layers\.9\.\*' matches no parameter"),
    Case("stage2/galore-moments-into-adamw", _three('optimizer_state = "map"\n', second='optimizer = "galore"\n'),
         r"stage\.3\.optimizer_state: 'map' carries optimizer state between stages with the same optimizer"),
    Case("stage2/adamw-moments-into-galore", _three('optimizer = "galore"\noptimizer_state = "map"\n'),
         r"stage\.3\.optimizer_state: .*'adamw' and this one 'galore'"),
    # CLI arguments
    Case("cli/unknown-flag", lambda c, t: ["train", c.recipe(t), "--bogus"], r"unrecognized arguments: --bogus"),
    Case("cli/missing-argument", lambda c, t: ["train"], r"arguments are required: recipe"),
    Case("cli/unknown-command", lambda c, t: ["frobnicate"], r"invalid choice: 'frobnicate'"),
    Case("cli/set-without-equals", lambda c, t: ["train", c.recipe(t), "--set", "optim.lr"],
         r"--set 'optim\.lr': expected key=value"),
    Case("cli/set-missing-stage", lambda c, t: ["train", c.recipe(t), "--set", "stage.5.lr=1"], r"no stage 5"),
    Case("cli/set-wrong-type", lambda c, t: ["train", c.recipe(t), "--set", "optim.lr=fast"],
         r"optim\.lr: .*valid number"),
    Case("cli/plan-step-not-an-int", lambda c, t: ["plan", "step", "--layers", "x"], r"--layers: invalid int value"),
    Case("cli/plan-gstack-negative", lambda c, t: ["plan", "gstack", "--params", "-5", "--tokens", "1B"],
         r"--params"),
    Case("cli/eval-zero-batch", lambda c, t: ["eval", str(c.run), "--batch-size", "0"],
         r"--batch-size must be a positive integer"),
    Case("cli/eval-unknown-task", lambda c, t: ["eval", str(c.run), "--tasks", "nosuch"], r"unknown task 'nosuch'"),
    Case("cli/eval-missing-path", lambda c, t: ["eval", str(t / "nope")], r"nope does not exist"),
    Case("cli/export-missing-source", lambda c, t: ["export", str(t / "nope"), str(t / "out")], r"nope does not exist"),
    Case("cli/export-into-non-empty-dir", lambda c, t: ["export", str(c.run), str(c.hf)],
         r"is not empty; use --overwrite"),
    Case("cli/data-without-subcommand", lambda c, t: ["data"], r"arguments are required"),
    Case("cli/data-prepare-no-inputs", lambda c, t: ["data", "prepare", str(t / "out")], r"no inputs given"),
    Case("cli/data-prepare-bad-vocab", lambda c, t: ["data", "prepare", str(t / "out"), "builtin:python",
                                                     "--train-tokenizer", "abc"],
         r"cannot read --train-tokenizer 'abc'"),
    # data
    Case("data/missing-input-file", lambda c, t: _prepare(t, str(t / "missing.txt")), r"input path not found"),
    Case("data/empty-input-file", _prepare_empty_file, r"empty corpus"),
    Case("data/empty-shard-folder", _train_on_empty_folder, r"meta\.json is missing"),
    Case("data/truncated-shard", _shards_case(lambda s: truncate(s / "train_00000.bin", -6), "verify"),
         r"is \d+ bytes but meta\.json says"),
    Case("data/missing-shard", _shards_case(lambda s: (s / "train_00000.bin").unlink(), "train"),
         r"missing shard .*train_00000\.bin"),
    Case("data/bit-flipped-shard", _shards_case(lambda s: flip(s / "train_00000.bin", 1000), "verify"),
         r"train_00000\.bin is corrupted: its sha256 differs"),
    Case("data/garbled-meta", _shards_case(lambda s: (s / "meta.json").write_text("{"), "info"),
         r"cannot read .*meta\.json"),
    Case("data/wrong-tokenizer-file", _shards_case(
        lambda s: (s / "tokenizer.json").write_text((s / "tokenizer.json").read_text().replace('"<', '"<x', 1)),
        "verify"), r"does not match the tokenizer hash"),
    Case("data/vocab-larger-than-model", _train(_sub("vocab_size = 300", "vocab_size = 256")),
         r"shards use a tokenizer with 300 tokens but model\.vocab_size is 256"),
    # checkpoints
    Case("ckpt/incomplete-dir", _ckpt_case(lambda d: (d / "meta.json").unlink()), r"no meta\.json"),
    Case("ckpt/truncated-safetensors", _ckpt_case(lambda d: truncate(d / "model.safetensors")),
         r"model\.safetensors: corrupted checkpoint file \(size \d+, expected \d+\)"),
    Case("ckpt/bit-flipped", _ckpt_case(lambda d: flip(d / "model.safetensors"), "eval"),
         r"model\.safetensors: corrupted checkpoint file \(checksum mismatch\)"),
    Case("ckpt/garbled-meta", _ckpt_case(lambda d: (d / "meta.json").write_text("{")),
         r"corrupted checkpoint metadata"),
    Case("ckpt/meta-is-a-list", _ckpt_case(_meta_as_list), r"meta\.json: corrupted checkpoint metadata \(a JSON list"),
    Case("ckpt/meta-file-entry-without-bytes", _ckpt_case(_meta_files_without_bytes),
         r"files\.model\.safetensors needs bytes and sha256"),
    Case("ckpt/meta-edited", _ckpt_case(lambda d: _edit_json(d / "meta.json", stage_step=999)),
         r"meta\.json: checkpoint metadata was modified \(checksum mismatch\)"),
    Case("ckpt/pickle-file-offered", _export_pickle_file, r"model\.pt: is a pickle file"),
    Case("ckpt/pickle-as-train-state", _resume_pickled_state, r"refused or unreadable training state"),
    Case("ckpt/all-checkpoints-damaged", _resume_all_damaged,
         r"no readable checkpoint to resume from; all 2 are damaged"),
    # HF folders
    Case("hf/missing-config", _hf_case(lambda f: (f / "config.json").unlink()), r"no meta\.json"),
    Case("hf/pytorch-model-bin-only", _hf_case(lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin")),
         r"only has pickled weights \(pytorch_model\.bin\)"),
    Case("hf/wrong-model-type", _hf_case(lambda f: _edit_json(f / "config.json", model_type="gpt2")),
         r"model_type='gpt2' is not supported"),
    Case("hf/garbled-config", _hf_case(lambda f: (f / "config.json").write_text("{")), r"config\.json: HF config is not valid JSON"),
    Case("hf/truncated-weights", _hf_case(lambda f: truncate(f / "model.safetensors", 100)),
         r"not a readable safetensors file"),
    Case("hf/missing-tensor", _hf_case(_drop_tensor), r"does not match the model config: missing"),
    # a full disk
    Case("disk/full-during-checkpoint", _train(), r"No space left on device while writing .*step_00000001; free some space",
         patch=("growlm.checkpoint.save_file", disk_full("model.safetensors")), new_outputs=True),
    Case("disk/full-during-prepare", lambda c, t: _prepare(t, "builtin:python:50KB"),
         r"No space left on device while writing .*train_00000\.bin",
         patch=("growlm.data.shards.ShardWriter.write", _shard_write_fails)),
    Case("disk/full-during-export-overwrite", lambda c, t: ["export", str(c.run), str(c.hf), "--overwrite"],
         r"No space left on device", patch=("growlm.model.hf.save_file", disk_full("model.safetensors"))),
]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under the roots: sha256 of files, "dir" for folders."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            out[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_line(case: Case, ctx: Ctx, tmp_path, capsys, monkeypatch):
    argv = case.setup(ctx, tmp_path)
    before = snapshot(ctx.root, tmp_path)
    capsys.readouterr()
    if case.patch is not None:
        monkeypatch.setattr(*case.patch)
    with warnings.catch_warnings(record=True) as warned:  # a real CLI would print them too
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except SystemExit as e:  # argparse errors
            code = e.code
    out, err = capsys.readouterr()
    assert not warned, [str(w.message) for w in warned]
    lines = err.strip().splitlines()
    assert code not in (0, None), (argv, out, err)
    assert "Traceback" not in err + out
    assert len(lines) == 1, err
    assert re.search(case.match, lines[0]), lines[0]
    after = snapshot(ctx.root, tmp_path)
    if case.new_outputs:
        changed = [p for p in before if after.get(p) != before[p]]
        created = [p for p in after if p not in before]
        assert not changed, changed
        assert not [p for p in created if "/step_" in p or "/.tmp-" in p], created
    else:
        assert after == before, sorted(set(after.items()) ^ set(before.items()))[:5]
    assert not (tmp_path / "pwned").exists()


def test_the_sweep_is_broad():
    kinds = {c.id.split("/")[0] for c in CASES}
    assert len(CASES) >= 90 and kinds == {"recipe", "resume", "stage2", "stage3", "cli", "data", "ckpt",
                                          "hf", "disk"}
