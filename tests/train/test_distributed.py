"""torchrun with DDP and FSDP2 on CPU (gloo, 2 processes).

Tolerance for comparing losses with a single process: with 2 ranks the gradient all-reduce
computes (g₀ + g₁)/2, which in binary floating point equals the single process's
g₀/2 + g₁/2 exactly, so these runs match bit for bit (measured: 0 difference). Another world
size or backend sums in another order, ~1e-7 relative per reduction, which stays far below
the 1e-5 relative asserted here over a dozen Adam steps.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from growlm import checkpoint as ckpt
from growlm.config import load_recipe
from growlm.errors import GrowlmError

pytestmark = pytest.mark.skipif(not (tdist.is_available() and tdist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

RTOL = 1e-5

RECIPE = """
[run]
name = "d"
out_dir = "{out}"
eval_tokens = 512
ckpt_every = 2
keep_last = 10
{run}
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

GALORE = """
[optim]
name = "galore"
galore = { rank = 4, update_gap = 2 }
[[stage]]
steps = 4
lr = 3e-3
"""


def _env(**extra) -> dict:
    # one thread per process: 2 ranks on 2 cores
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _growlm(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "growlm", *args], capture_output=True, text=True,
                          env=_env(**(env or {})), timeout=300)


def _torchrun(*args, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "growlm", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(**(env or {})), timeout=300)


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "step"]


def _assert_close(got, want) -> None:
    assert [s for s, _ in got] == [s for s, _ in want]
    for (step, a), (_, b) in zip(got, want):
        assert abs(a - b) <= RTOL * abs(b), f"step {step}: {a} vs {b}"


@pytest.fixture(scope="module")
def recipes(tiny_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")

    def write(name: str, stages: str = STAGED, run: str = "") -> Path:
        path = root / f"{name}.toml"
        path.write_text(RECIPE.format(out=(root / name).as_posix(), data=tiny_shards.as_posix(),
                                      run=run) + stages)
        return path

    return write


@pytest.fixture(scope="module")
def reference(recipes) -> list[tuple[int, float]]:
    """The staged recipe (growth, frozen layers, ReLoRA) in one process."""
    recipe = recipes("ref")
    proc = _growlm("train", str(recipe), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return _losses(recipe.parent / "ref")


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_across_growth(recipes, reference, mode):
    run = f'distributed = "{mode}"' + ("\nactivation_checkpointing = true" if mode == "fsdp" else "")
    recipe = recipes(mode, run=run)
    proc = _torchrun("train", str(recipe), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = recipe.parent / mode
    _assert_close(_losses(out), reference)  # one metrics writer: no duplicated steps
    assert proc.stdout.count("done: 12 steps") == 1, "only rank 0 reports"
    final_ref, final = (ckpt.load_model_state(d / "checkpoints" / "step_00000012")[1]
                        for d in (recipe.parent / "ref", out))
    assert final.keys() == final_ref.keys()
    for name, tensor in final_ref.items():
        torch.testing.assert_close(final[name], tensor, rtol=RTOL, atol=1e-7)
    metas = {p.name: ckpt.read_meta(p) for p in ckpt.list_checkpoints(out / "checkpoints")}
    sharded = sorted(name for name, m in metas.items() if "sharded" in m)
    if mode == "fsdp":
        # mid-stage: one shard file per rank; stage ends: whole model.safetensors
        assert sharded == ["step_00000002", "step_00000004", "step_00000008", "step_00000010"]
        assert metas["step_00000008"]["sharded"]["world_size"] == 2
        assert (out / "checkpoints" / "step_00000006" / ckpt.MODEL_FILE).is_file()
        assert proc.stderr.count("saves little memory") == 2, "warned once per stage, on rank 0"
    else:
        assert sharded == []


def test_fsdp_checkpoint_resumes_on_one_rank(recipes, reference):
    recipe = recipes("fsdp_kill", run='distributed = "fsdp"')
    out = recipe.parent / "fsdp_kill"
    # every rank dies in step 9, just before the first ReLoRA merge of stage 2
    proc = _torchrun("train", str(recipe), "--quiet", env={"GROWLM_FAULT": "train_step:9"})
    assert proc.returncode != 0
    path, meta = ckpt.latest_valid(out / "checkpoints")
    assert meta["global_step"] == 8 and meta["sharded"]["world_size"] == 2
    # export and eval read a sharded checkpoint in one process, LoRA factors included
    cfg, state, _ = ckpt.load_model_state(path)
    assert cfg.n_layers == 3 and "layers.0.self_attn.q_proj.lora_A" in state
    assert state["embed_tokens.weight"].shape == (320, 32)

    # a model of another shape does not load silently from the shards
    from growlm.model import ModelConfig, Transformer
    from growlm.train.dcp import load_sharded

    other = Transformer(ModelConfig(vocab_size=320, d_model=64, n_layers=3, n_heads=2, max_seq_len=64))
    with pytest.raises(GrowlmError, match="does not fit"):
        load_sharded(path, meta, ckpt.load_train_state(path), other, torch.optim.AdamW(other.parameters()))

    cfg = load_recipe(recipe, ["stage.2.lr=1e-3"])
    from growlm.train.trainer import Trainer

    with pytest.raises(GrowlmError, match="changed since the run started"):
        Trainer(cfg, resume=True, quiet=True).run()
    proc = _growlm("train", str(recipe), "--quiet", "--resume")
    assert proc.returncode == 0, proc.stderr
    _assert_close(_losses(out), reference)


def test_one_rank_checkpoint_resumes_under_fsdp(recipes, reference):
    recipe = recipes("single_kill", run='distributed = "fsdp"')
    out = recipe.parent / "single_kill"
    proc = _growlm("train", str(recipe), "--quiet", env={"GROWLM_FAULT": "train_step:9"})
    assert proc.returncode == 17
    assert "sharded" not in ckpt.latest_valid(out / "checkpoints")[1]
    proc = _torchrun("train", str(recipe), "--quiet", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_close(_losses(out), reference)


def test_galore_under_ddp_and_refused_under_fsdp(recipes):
    single, ddp = recipes("galore1", GALORE), recipes("galore2", GALORE, run='distributed = "ddp"')
    assert _growlm("train", str(single), "--quiet").returncode == 0
    proc = _torchrun("train", str(ddp), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_close(_losses(ddp.parent / "galore2"), _losses(single.parent / "galore1"))

    from growlm.train.distributed import check_supported

    cfg = load_recipe(single, ['run.distributed="fsdp"'])
    with pytest.raises(GrowlmError, match="galore.*ddp"):
        check_supported(cfg, "fsdp")


def test_world_size_not_dividing_the_batch_fails_on_every_rank(recipes):
    recipe = recipes("indivisible", "[[stage]]\nsteps = 2\n")
    # 128 tokens / 32 = 4 sequences per step; micro_batch_size 4 × 2 ranks = 8
    proc = _torchrun("train", str(recipe), "--quiet", "--set", "train.global_batch_tokens=128")
    assert proc.returncode != 0
    message = "is not divisible by micro_batch_size × world size = 8"
    assert (proc.stdout + proc.stderr).count(message) == 2, proc.stderr[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_killed_rank_makes_the_other_exit(recipes):
    """No torchrun agent here to clean up: the survivor must notice by itself."""
    recipe = recipes("dead", "[[stage]]\nsteps = 200\n", run='distributed = "ddp"\ndist_timeout_s = 20')
    port = _free_port()
    procs = []
    for rank in range(2):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   GROWLM_FAULT="train_step:3", GROWLM_FAULT_RANK="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "growlm", "train", str(recipe), "--quiet"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        _, err1 = procs[1].communicate(timeout=240)
        assert procs[1].returncode == 17, err1
        died = time.monotonic()
        # generous bound for a loaded machine; a hang would run the 200 steps or block forever
        _, err0 = procs[0].communicate(timeout=20 + 60)
        assert procs[0].returncode == 1, err0
        assert time.monotonic() - died < 80
        assert "Traceback" not in err0
        assert "rank 0 lost contact with another rank" in err0 and "--resume" in err0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_activation_checkpointing_keeps_names_and_gradients():
    from growlm.model import ModelConfig, Transformer
    from growlm.model.llama import cross_entropy
    from growlm.train.distributed import apply_activation_checkpointing

    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=16)
    plain, ckpt_model = Transformer(cfg), Transformer(cfg)
    ckpt_model.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(ckpt_model)
    assert list(ckpt_model.state_dict()) == list(plain.state_dict())
    x = torch.randint(0, 64, (2, 8))
    for m in (plain, ckpt_model):
        cross_entropy(m(x), x).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt_model.named_parameters()):
        assert torch.equal(a.grad, b.grad), name


def test_multi_process_needs_a_distributed_mode(recipes, monkeypatch):
    from growlm.train.distributed import maybe_init_distributed

    cfg = load_recipe(recipes("none", "[[stage]]\nsteps = 2\n"), ['run.distributed="none"'])
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert maybe_init_distributed(cfg) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(GrowlmError, match="run.distributed = 'none'"):
        maybe_init_distributed(cfg)


MASKED = """
[[stage]]
name = "small"
n_layers = 1
steps = 4
lr = 3e-3
[[stage]]
name = "grown"
grow = { op = "random", add = 2, position = "end", mask_steps = 3 }
steps = 4
lr = 3e-3
"""


def test_masked_growth_under_ddp_matches_one_process_and_learning_is_refused(recipes):
    """MSG's masks are hooks inside each DDP replica; a G_learn stage learns in one process."""
    single, ddp = recipes("masked1", MASKED), recipes("masked2", MASKED, run='distributed = "ddp"')
    assert _growlm("train", str(single), "--quiet").returncode == 0
    proc = _torchrun("train", str(ddp), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_close(_losses(ddp.parent / "masked2"), _losses(single.parent / "masked1"))
    learn = recipes("learn2", MASKED.replace('op = "random", add = 2, position = "end", mask_steps = 3',
                                              'op = "learn", factor = 3, learn_steps = 2'))
    proc = _torchrun("train", str(learn), "--quiet")
    assert proc.returncode != 0
    message = "stage.2.grow: 'learn' learns its growth maps in one process"
    assert (proc.stdout + proc.stderr).count(message) == 2, proc.stderr[-2000:]  # one line per rank
