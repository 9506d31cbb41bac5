"""Numbers that must not depend on how the work is split or where settings come from.

- The loss of a step is the sum of token losses over every target token of the step divided by
  their count, so the gradient does not change with micro_batch_size or the number of ranks,
  even when micro-batches hold different numbers of target tokens (instruction tuning).
- An init source's model settings (RoPE base, norm eps, ...) are inherited, not replaced by
  the recipe's defaults.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from growlm.config import load_recipe
from growlm.stages import resolve_stages
from growlm.train.boundary import enter_stage
from growlm.train.hooks import Hook
from growlm.train.step import IGNORE_INDEX, train_step

RECIPE = """
[run]
name = "n"
out_dir = "{out}"
[model]
vocab_size = 64
d_model = 32
n_layers = 2
n_heads = 2
max_seq_len = 16
[data]
train = "unused"
seq_len = 16
[train]
global_batch_tokens = 128
micro_batch_size = 8
[optim]
grad_clip = 0
[[stage]]
steps = 1
"""


class Grads(Hook):
    def post_backward(self, built) -> None:
        self.grads = {n: p.grad.clone() for n, p in built.model.named_parameters() if p.grad is not None}


def masked_batch(rows: int = 8, seq: int = 16, seed: int = 0):
    """Rows whose number of target tokens differs a lot (a prompt masked out, as in SFT)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (rows, seq), generator=g)
    y = torch.randint(0, 64, (rows, seq), generator=g)
    for r in range(rows):
        y[r, : (r * 5) % (seq - 1)] = IGNORE_INDEX
    return x, y


def _built(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.format(out=tmp_path.as_posix()))
    cfg = load_recipe(path)
    return enter_stage(cfg, resolve_stages(cfg)[0], None)


def step_with(built, x, y, micro: int):
    hook = Grads()
    built.module = built.model
    batches = [(x[i: i + micro], y[i: i + micro]) for i in range(0, len(x), micro)]
    result = train_step(built, batches, lr=0.0, grad_clip=0.0, hooks=[hook])
    return result, hook.grads


def test_gradient_and_loss_do_not_depend_on_the_micro_batch_size(tmp_path):
    x, y = masked_batch()
    results = {}
    for micro in (8, 2, 1):
        built = _built(tmp_path)  # the same seeded weights each time
        results[micro] = step_with(built, x, y, micro)
    full, grads = results[8]
    n = int((y != IGNORE_INDEX).sum())
    assert full.target_tokens == n
    for micro in (2, 1):
        result, other = results[micro]
        assert result.loss == pytest.approx(full.loss, rel=1e-6)
        for name, g in grads.items():
            torch.testing.assert_close(other[name], g, rtol=1e-5, atol=1e-7)
    # the per-micro-batch mean (the old normalisation) would weigh rows differently
    built = _built(tmp_path)
    means = [built.model(x[i: i + 1], labels=y[i: i + 1]).item() / int((y[i] != IGNORE_INDEX).sum())
             for i in range(8)]
    assert abs(sum(means) / 8 - full.loss) > 1e-3


WORKER = Path(__file__).with_name("grad_worker.py")


def test_two_gloo_ranks_give_one_process_gradient(tmp_path):
    """2 ranks × micro-batch 4 against 1 process × micro-batch 8, same global batch."""
    out = tmp_path / "grads"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranked = torch.load(out / "rank0.pt", weights_only=True)
    x, y = masked_batch()
    single = step_with(_built(tmp_path), x, y, 8)
    assert ranked["loss"] == pytest.approx(single[0].loss, rel=1e-6)
    assert ranked["target_tokens"] == single[0].target_tokens
    for name, g in single[1].items():
        torch.testing.assert_close(ranked["grads"][name], g, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- settings of an init source

SOURCE = dict(vocab_size=320, d_model=32, n_layers=2, n_heads=2, max_seq_len=64,
              rope_theta=500000.0, norm_eps=1e-6)


@pytest.fixture
def llama3_like_folder(tmp_path):
    """An HF folder whose RoPE base and norm eps are Llama-3's, not growlm's defaults."""
    from growlm.model import ModelConfig
    from growlm.model.hf import export_hf
    from growlm.train.boundary import new_model

    cfg = ModelConfig(**SOURCE)
    model = new_model(cfg, 3)
    return export_hf(cfg, model.state_dict(), tmp_path / "hf"), model


CONTINUE = """
[run]
name = "c"
out_dir = "{out}"
eval_tokens = 256
[model]
vocab_size = 320
d_model = 32
n_layers = 2
n_heads = 2
max_seq_len = 64
{extra}
[data]
train = "{data}"
seq_len = 32
[train]
global_batch_tokens = 128
micro_batch_size = 4
[optim]
lr = 1e-12
[[stage]]
init = "{init}"
steps = 1
"""


def _continue(tmp_path, folder, data, extra=""):
    path = tmp_path / "c.toml"
    path.write_text(CONTINUE.format(out=(tmp_path / "run").as_posix(), data=data.as_posix(),
                                    init=Path(folder).as_posix(), extra=extra))
    return path


def test_an_init_folder_settings_are_inherited(tmp_path, tiny_shards, llama3_like_folder):
    from growlm import checkpoint as ckpt
    from growlm.model.hf import load_hf_folder
    from growlm.model.llama import Transformer
    from growlm.train.trainer import Trainer

    folder, source = llama3_like_folder
    cfg = load_recipe(_continue(tmp_path, folder, tiny_shards))
    assert (cfg.model.rope_theta, cfg.model.norm_eps) == (500000.0, 1e-6) and not cfg.init_overrides
    Trainer(cfg, quiet=True).run()
    run_cfg, state, _ = ckpt.load_model_state(tmp_path / "run")
    assert (run_cfg.rope_theta, run_cfg.norm_eps) == (500000.0, 1e-6)
    # one step at LR ≈ 0 later, the model computes what the source computes
    model = Transformer(run_cfg)
    model.load_state_dict(state)
    tokens = torch.randint(0, 320, (2, 32), generator=torch.Generator().manual_seed(1))
    src_cfg, src_state = load_hf_folder(folder)
    reference = Transformer(src_cfg)
    reference.load_state_dict(src_state)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens), reference.eval()(tokens), rtol=0, atol=1e-5)
        # and growlm's old behaviour (the recipe's default RoPE base) would have moved them
        wrong = Transformer(src_cfg.with_(rope_theta=10000.0, norm_eps=1e-5))
        wrong.load_state_dict(src_state)
        assert (wrong.eval()(tokens) - reference(tokens)).abs().max() > 1e-3  # 100× the tolerance


def test_a_recipe_setting_that_differs_is_a_logged_override(tmp_path, tiny_shards, llama3_like_folder, capsys):
    from growlm.cli import main

    folder, _ = llama3_like_folder
    recipe = _continue(tmp_path, folder, tiny_shards, extra="rope_theta = 10000.0")
    cfg = load_recipe(recipe)
    assert cfg.model.rope_theta == 10000.0 and cfg.init_overrides == [("rope_theta", 500000.0, 10000.0)]
    assert main(["train", str(recipe), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "stage.1.init: [model] sets rope_theta = 10000.0; the init source has 500000.0" in out
    assert main(["plan", str(recipe), "--out", str(tmp_path / "plan")]) == 0
    assert "deliberate override" in capsys.readouterr().out


def test_a_recipe_setting_that_changes_the_parameters_is_refused(tmp_path, tiny_shards, llama3_like_folder):
    from growlm.errors import GrowlmError

    folder, _ = llama3_like_folder
    with pytest.raises(GrowlmError, match=r"stage\.1\.init: \[model\] sets tie_embeddings \(False → True\), "
                                          r"which changes the parameters"):
        load_recipe(_continue(tmp_path, folder, tiny_shards, extra="tie_embeddings = true"))
