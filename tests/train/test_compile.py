"""torch.compile (inductor, C++ kernels built with the system compiler) on CPU across growth.

The staged recipe grows 2 → 3 layers, freezes what it inherited and puts ReLoRA adapters on
every frozen linear, the LM head included, merging them in place every 3 steps. So the compiled
graphs meet: parameters whose requires_grad changed at the boundary, in-place weight updates
that no optimizer made, both chunked-loss paths (stage 1: torch's fused linear cross-entropy
for a plain head; stage 2: the checkpointed chunks for a LoRA head) and a resume.

Tolerance: compiled and eager runs share the BLAS matmuls and differ only in fused elementwise
kernels, which round differently in the last bits (measured: gradients 7e-7 apart, losses
at most 9e-8 relative over the 12 steps). 1e-5 relative leaves room for that and catches any
real fault (a stale weight or a dropped gradient moves the loss by far more).

Compile time dominates: each new graph costs tens of seconds on 2 cores when inductor's cache
is cold, so the file compiles few distinct graphs: the two stages' model graphs (the resume
finds stage 2's in inductor's caches), one small module, and the DDP ranks' graphs (slow).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from growlm import checkpoint as ckpt
from growlm.config import load_recipe
from growlm.errors import GrowlmError
from growlm.train.hooks import CompileWatch
from growlm.train.trainer import Trainer

RTOL = 1e-5

RECIPE = """
[run]
name = "c"
out_dir = "{out}"
eval_tokens = 512
ckpt_every = 2
keep_last = 10
compile = {compile}
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
[[stage]]
name = "small"
n_layers = 2
steps = 6
lr = 3e-3
[[stage]]
name = "grown"
grow = {{ op = "interpolate", add = 1 }}
freeze = ["inherited"]
adapters = {{ kind = "relora", rank = 2, reset_every = 3, rewarmup_steps = 1, targets = ["*_proj", "lm_head"] }}
steps = 6
lr = 3e-3
"""


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "step"]


def _assert_close(got, want) -> None:
    assert [s for s, _ in got] == [s for s, _ in want]
    for (step, a), (_, b) in zip(got, want):
        assert abs(a - b) <= RTOL * abs(b), f"step {step}: {a} vs {b}"


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def recipes(tiny_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")

    def write(name: str, compile: bool = True, run: str = "") -> Path:
        path = root / f"{name}.toml"
        path.write_text(RECIPE.format(out=(root / name).as_posix(), data=tiny_shards.as_posix(),
                                      compile=str(compile).lower(), run=run))
        return path

    return write


def _train(recipe: Path, resume: bool = False) -> Trainer:
    trainer = Trainer(load_recipe(recipe), resume=resume, quiet=True)
    trainer.run()
    return trainer


@pytest.fixture(scope="module")
def eager(recipes) -> Path:
    recipe = recipes("eager", compile=False)
    before = CompileWatch.graphs()
    trainer = _train(recipe)
    assert trainer.compile_watch is None and CompileWatch.graphs() == before
    return trainer.out


@pytest.fixture(scope="module")
def compiled(recipes) -> Trainer:
    return _train(recipes("compiled"))


@pytest.mark.slow
def test_compiled_training_matches_eager_across_growth(eager, compiled):
    _assert_close(_losses(compiled.out), _losses(eager))
    # The merged weights at the end (frozen ones changed only through in-place merges), by
    # norm: Adam divides by sqrt(v), so an entry whose gradient is ~0 can move 1e-3 relative
    # on a last-bit gradient difference. A lost merge would move a weight by ~5%.
    (_, want, _), (_, got, _) = (ckpt.load_model_state(d / "checkpoints" / "step_00000012")
                                 for d in (eager, compiled.out))
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert (got[name] - tensor).norm() <= 1e-4 * tensor.norm(), name


@pytest.mark.slow
def test_each_stage_compiles_once_and_its_steps_reuse_the_graph(compiled):
    # one graph per stage (no graph break in the model, its LoRA layers or either chunked
    # loss), built in the stage's first step: the boundary recompiles, the 5 later steps of
    # each stage (in stage 2, steps 4-6 follow a ReLoRA merge) do not
    assert compiled.compile_watch.stages == {1: {"first_step": 1, "later": 0},
                                             2: {"first_step": 1, "later": 0}}


def test_a_graph_built_after_the_first_step_is_warned():
    """A real recompilation (a new input shape under static shapes), counted by CompileWatch
    the way the trainer calls it; the cheap "eager" backend builds graphs without kernels."""
    from types import SimpleNamespace

    double = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    warnings: list[str] = []
    trainer, built = SimpleNamespace(warn=warnings.append), SimpleNamespace(stage=SimpleNamespace(number=2))
    watch = CompileWatch()
    watch.stage_start(trainer, built, 0)
    double(torch.ones(2))
    watch.step_end(trainer, built, {}, False)
    double(torch.ones(2))  # the same graph
    watch.step_end(trainer, built, {}, False)
    double(torch.ones(3))  # another shape: recompiled
    watch.step_end(trainer, built, {}, True)
    watch.stage_end(trainer, built)
    assert watch.stages == {2: {"first_step": 1, "later": 1}}
    assert warnings == ["stage 2: torch.compile built 1 more graph(s) after the stage's first step "
                        "(recompilation; TORCH_LOGS=recompiles says why)"]


def test_compiled_graph_sees_in_place_weight_changes():
    """ReLoRA merges into frozen weights in place, outside autograd and the optimizer: the
    compiled graph must read the weights as inputs, not bake them in as constants."""
    from growlm.adapters.lora import LoRALinear, merge_adapters

    torch.manual_seed(0)
    base = torch.nn.Linear(16, 16)
    base.weight.requires_grad_(False)
    model = torch.nn.Sequential(LoRALinear(base, rank=4, scale=1.0))
    compiled = torch.compile(model)
    x = torch.randn(8, 16)
    compiled(x).sum().backward()  # a training graph, as the train step compiles
    with torch.no_grad():
        model[0].lora_B.normal_()  # as if trained: the merge moves W by B·A
    before = model(x).detach()
    old_weight = base.weight.detach().clone()
    merge_adapters(model, generator=torch.Generator().manual_seed(1))
    assert (base.weight - old_weight).abs().max() > 0.1, "the merge must change the weight"
    after = compiled(x)
    # B is zero again: a graph holding the old W would now drop the whole B·A·x term
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_run_resumes_from_a_mid_stage_checkpoint(recipes, compiled, eager):
    """The compiled run's folder as a run killed in step 9 leaves it (stage 2, right before its
    first ReLoRA merge; the kill itself is tested without compile in test_trainer.py)."""
    recipe = recipes("resumed")
    out = recipe.parent / "resumed"
    shutil.copytree(compiled.out, out)
    for path in ckpt.list_checkpoints(out / "checkpoints"):
        if ckpt.read_meta(path)["global_step"] > 8:
            shutil.rmtree(path)
    trainer = _train(recipe, resume=True)
    # the resumed stage compiles in its first step in this run, and not again
    assert trainer.compile_watch.stages == {2: {"first_step": 1, "later": 0}}
    assert _losses(out) == _losses(compiled.out), "a compiled run resumes bit-identically on CPU"
    _assert_close(_losses(out), _losses(eager))


@pytest.mark.slow
@pytest.mark.skipif(not (tdist.is_available() and tdist.is_gloo_available()),
                    reason="torch.distributed with the gloo backend is not available")
def test_ddp_compiled_matches_one_eager_process(recipes, eager):
    # 2 micro-batches per rank per step: the first backward runs under DDP's no_sync
    recipe = recipes("ddp", run='distributed = "ddp"')
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "growlm", "train", str(recipe), "--quiet", "--set", "train.micro_batch_size=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_close(_losses(recipe.parent / "ddp"), _losses(eager))
    assert "torch.compile built" not in proc.stdout + proc.stderr, "no recompilation in a stage"


def test_compile_without_a_cxx_compiler_is_refused_at_load(recipes, monkeypatch):
    from torch._inductor import config

    monkeypatch.setattr(config.cpp, "cxx", (None, "no-such-c++-compiler"))
    recipe = recipes("no_cxx")
    with pytest.raises(GrowlmError, match=r"run.compile = true on CPU needs a C\+\+ compiler.*"
                                          r"no-such-c\+\+-compiler"):
        Trainer(load_recipe(recipe), quiet=True)
    assert not (recipe.parent / "no_cxx").exists(), "refused before anything is written"
