"""The misuse sweep's shared workspace (prepared shards, a finished staged run, its HF export, a
finished sweep, SFT records) and the helpers cases use to build their bad inputs from it.

Cases never write into the workspace: they copy what they damage into their own folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RECIPE = """\
[run]
name = "mu"
out_dir = "{out}"
eval_tokens = 256
ckpt_every = 1
keep_last = 2
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
global_batch_tokens = 128
micro_batch_size = 4
[schedule]
warmup_steps = 1
{stages}"""

ONE_STAGE = "[[stage]]\nsteps = 2\n"
# the finished run every resume case copies: 1 layer, then stacked to 2
TWO_STAGES = ('[[stage]]\nname = "small"\nn_layers = 1\nsteps = 2\n'
              '[[stage]]\nname = "stacked"\ngrow = { op = "stack", factor = 2 }\nsteps = 2\n')


@dataclass
class Launch:
    """One command of a case. `argv` follows `python -m growlm`."""
    argv: list[str]
    env: dict = field(default_factory=dict)
    fsize: int | None = None  # RLIMIT_FSIZE (bytes): every write past it fails with EFBIG
    protect: list = field(default_factory=list)  # [(kind, folder)] that must still verify after
    writes: bool = False  # a failure only the run itself can meet (a full disk): may write, never corrupt
    expect: str = "error"  # "error": refused in one line; "warn": handled, with a warning (match)
    match: str | None = None  # regex the one line (or the warning) must match
    stdin: str | None = None
    before: Callable | None = None  # before(folder) -> handle (e.g. a process already running)
    after: Callable | None = None  # after(folder, result, handle) -> [problems]


@dataclass
class Case:
    id: str
    setup: Callable  # setup(ws, folder) -> Launch | argv


@dataclass
class Workspace:
    root: Path
    shards: Path
    run: Path
    run_recipe: Path
    hf: Path
    sweep: Path
    sweep_recipe: Path
    sft_data: Path
    docs: Path
    tokenizer: Path
    other: Path  # shards made with another tokenizer of a smaller vocabulary (280)
    big: Path  # shards whose tokenizer has more tokens (400) than the run's model embeds

    def recipe(self, folder: Path, edit: Callable[[str], str] = lambda t: t, *, name: str = "r",
               out: Path | None = None, data: Path | str | None = None, stages: str = ONE_STAGE,
               n_layers: int = 1) -> str:
        text = RECIPE.format(out=Path(out or folder / f"{name}-run").as_posix(), n_layers=n_layers,
                             data=Path(self.shards if data is None else data).as_posix() if data != "" else "", stages=stages)
        path = folder / f"{name}.toml"
        path.write_text(edit(text))
        return str(path)

    def copy_run(self, folder: Path, edit: Callable[[str], str] = lambda t: t) -> tuple[str, Path]:
        """(recipe, run folder): a copy of the finished run and the recipe that made it."""
        run = Path(shutil.copytree(self.run, folder / "run"))
        return self.recipe(folder, edit, out=run, stages=TWO_STAGES, n_layers=2), run

    def verify(self, kind: str, path: Path) -> list[str]:
        """[] when `path` is still a readable folder of its kind, else what is wrong."""
        try:
            VERIFY[kind](path)
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            return [f"{kind} folder {path.name} damaged: {type(e).__name__}: {str(e)[:200]}"]
        return []


def _verify_run(path: Path) -> None:
    from growlm import checkpoint as ckpt
    from growlm.files import read_json
    from growlm.train.metrics import read_metrics

    root = path / "checkpoints"
    for c in ckpt.list_checkpoints(root):
        ckpt.verify_checkpoint(c)
        ckpt.load_train_state(c)
        ckpt.load_model_state(c)
    visible = ckpt.list_checkpoints(root)
    newest = ckpt.latest_valid(root)
    assert newest is None or newest[0] == visible[-1], "resume would have to fall back"
    read_json(path / "run.json", "run record")
    problems: list[str] = []
    read_metrics(path / "metrics.jsonl", problems)
    assert not problems, problems[0]


def _verify_shards(path: Path) -> None:
    from growlm.data.shards import open_shards

    open_shards(path).verify()


def _verify_hf(path: Path) -> None:
    from growlm.model.hf import load_hf_folder

    load_hf_folder(path)


def _verify_sweep(path: Path) -> None:
    from growlm import checkpoint as ckpt
    from growlm.init_source import SWEEP_FILE, read_sweep_file

    summary = read_sweep_file(path / SWEEP_FILE)
    for entry in summary["variants"]:
        if entry["status"] == "complete":
            found = ckpt.latest_valid(path / entry["name"] / "checkpoints")
            assert found and found[1]["stage_complete"], f"{entry['name']} marked complete without its final checkpoint"


VERIFY = {"run": _verify_run, "shards": _verify_shards, "hf": _verify_hf, "sweep": _verify_sweep}


# ---------------------------------------------------------------- building the workspace

def growlm(*argv: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    src = Path(__file__).resolve().parents[2] / "src"
    full = {**os.environ, "PYTHONPATH": str(src), **(env or {})}
    return subprocess.run([sys.executable, "-m", "growlm", *argv], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=900)


def _must(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        raise SystemExit(f"workspace: {what} failed: {done.stderr.strip()[-800:]}")


SFT_RECORDS = [{"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
               for i in range(48)]


def build_workspace(root: Path) -> Workspace:
    from growlm.data import prepare

    root.mkdir(parents=True, exist_ok=True)
    shards = root / "shards"
    ws = Workspace(root, shards, root / "run", root / "run.toml", root / "hf", root / "sweep",
                   root / "sweep.toml", root / "sft.jsonl", root / "docs.jsonl", root / "tokenizer.json",
                   root / "other-shards", root / "big-shards")
    for folder, vocab, size in ((shards, 300, "100KB"), (ws.other, 280, "60KB"), (ws.big, 400, "60KB")):
        if not (folder / "meta.json").is_file():
            prepare(folder, [f"builtin:python:{size}"], train_vocab=vocab, val_fraction=0.2, progress=False,
                    log=lambda *_: None)
    shutil.copyfile(shards / "tokenizer.json", ws.tokenizer)
    words = "the model grows in stages and each stage reuses what the last one learned".split()
    ws.docs.write_text("".join(json.dumps({"text": " ".join(words[(i * j) % len(words)] for j in range(80))}) + "\n"
                               for i in range(200)))
    ws.sft_data.write_text("".join(json.dumps(r) + "\n" for r in SFT_RECORDS))
    if not (ws.run / "run.json").is_file():
        ws.recipe(root, out=ws.run, stages=TWO_STAGES, n_layers=2, name="run")
        _must(growlm("train", str(ws.run_recipe), "--quiet"), "training the reference run")
    if not (ws.hf / "config.json").is_file():
        _must(growlm("export", str(ws.run), str(ws.hf)), "exporting the reference run")
    if not (ws.sweep / "sweep.json").is_file():
        ws.recipe(root, out=root / "unused", name="sweep")
        _must(growlm("sweep", str(ws.sweep_recipe), "--set", "optim.lr=1e-3,3e-3", "--out", str(ws.sweep),
                     "--quiet"), "the reference sweep")
    return ws


# ---------------------------------------------------------------- small edits for cases

def sub(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)
    return edit


def add(extra: str) -> Callable[[str], str]:
    return lambda text: text + extra


def section(name: str, line: str) -> Callable[[str], str]:
    """Put `line` into [name] (adding the table before [train] when the recipe lacks it)."""
    def edit(text: str) -> str:
        if f"[{name}]\n" in text:
            return text.replace(f"[{name}]\n", f"[{name}]\n{line}\n", 1)
        return text.replace("[train]\n", f"[{name}]\n{line}\n[train]\n", 1)
    return edit


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def newest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*"))[-1]


def rehash(ckpt_dir: Path) -> None:
    """Make meta.json agree with the files again, so only the loader can refuse them."""
    from growlm.checkpoint import _meta_digest, sha256_file

    meta = json.loads((ckpt_dir / "meta.json").read_text())
    for name in meta["files"]:
        meta["files"][name] = {"bytes": (ckpt_dir / name).stat().st_size, "sha256": sha256_file(ckpt_dir / name)}
    meta["meta_sha256"] = _meta_digest(meta)
    (ckpt_dir / "meta.json").write_text(json.dumps(meta))
