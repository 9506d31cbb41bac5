import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """Token shards of ~300 KB of the built-in corpus with a 320-token BPE (a few seconds)."""
    from growlm.data import prepare

    out = tmp_path_factory.mktemp("shards") / "tiny"
    prepare(out, ["builtin:python:300KB"], train_vocab=320, val_fraction=0.05, progress=False,
            log=lambda *_: None)
    return out


TINY = """
[run]
name = "t"
out_dir = "{out}"
eval_tokens = 512
ckpt_every = {ckpt_every}
keep_last = 10
[model]
vocab_size = 320
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
[schedule]
warmup_steps = 2
"""

STAGED = """
[[stage]]
name = "small"
n_layers = 2
steps = 6
lr = 3e-3
[[stage]]
name = "grown"
grow = { op = "interpolate", add = 1 }
freeze = ["inherited"]
adapters = { kind = "relora", rank = 2, reset_every = 3, rewarmup_steps = 1 }
steps = 6
lr = 3e-3
"""


@pytest.fixture
def write_recipe(tmp_path, tiny_shards):
    def write(stages: str = STAGED, n_layers: int = 3, ckpt_every: int = 2, name: str = "recipe",
              **extra) -> Path:
        text = TINY.format(out=(tmp_path / name).as_posix(), data=tiny_shards.as_posix(),
                           ckpt_every=ckpt_every, n_layers=n_layers) + stages
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return path

    return write


def _run_cli(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """`growlm ...` in a fresh process (needed where a fault hook kills the process)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "growlm", *args], capture_output=True, text=True,
                          env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def _step_losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "step"]


@pytest.fixture
def run_cli():
    return _run_cli


@pytest.fixture
def step_losses():
    return _step_losses
