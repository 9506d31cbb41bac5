"""A first stage can start from an external checkpoint: a growlm run or an HF Llama folder."""

import pytest
import torch

from growlm import checkpoint as ckpt
from growlm.config import load_recipe
from growlm.errors import GrowlmError
from growlm.model.hf import export_hf
from growlm.train.trainer import Trainer


def train(recipe, *overrides):
    trainer = Trainer(load_recipe(recipe, list(overrides)), quiet=True)
    trainer.run()
    return trainer


def first_stage_start(out):
    """Weights the first stage started from (boundary ckpt minus training is unknowable, so
    read the metrics-free way: the first step's loss is enough to compare inits)."""
    import json

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in rows if r["kind"] == "step")


def test_init_from_growlm_run_and_hf_folder(write_recipe, tmp_path):
    base = train(write_recipe('[[stage]]\nsteps = 4\nlr = 3e-3\n', n_layers=2, ckpt_every=0, name="base"))
    cfg, state, _ = ckpt.load_model_state(base.out)
    hf_dir = tmp_path / "hf"
    export_hf(cfg, state, hf_dir)
    stage = '[[stage]]\nsteps = 2\nlr = 1e-9\ninit = "{}"\n'
    from_run = train(write_recipe(stage.format(base.out.as_posix()), n_layers=2, ckpt_every=0, name="a"))
    from_hf = train(write_recipe(stage.format(hf_dir.as_posix()), n_layers=2, ckpt_every=0, name="b"))
    scratch = train(write_recipe('[[stage]]\nsteps = 2\nlr = 1e-9\n', n_layers=2, ckpt_every=0, name="c"))
    # started from trained weights: the first loss is the trained model's, not a fresh one's
    assert first_stage_start(from_run.out) == pytest.approx(first_stage_start(from_hf.out), abs=1e-5)
    assert first_stage_start(from_run.out) < first_stage_start(scratch.out) - 0.1
    _, end, _ = ckpt.load_model_state(from_run.out)
    assert torch.allclose(end["layers.0.mlp.up_proj.weight"], state["layers.0.mlp.up_proj.weight"], atol=1e-6)


def test_init_then_grow_from_external_run(write_recipe):
    base = train(write_recipe('[[stage]]\nsteps = 3\n', n_layers=2, ckpt_every=0, name="base"))
    stages = f'[[stage]]\ninit = "{base.out.as_posix()}"\ngrow = {{ op = "stack", factor = 2 }}\nsteps = 2\n'
    grown = train(write_recipe(stages, n_layers=4, ckpt_every=0, name="g"))
    _, src, _ = ckpt.load_model_state(base.out)
    _, out, meta = ckpt.load_model_state(grown.out)
    assert meta["model"]["n_layers"] == 4
    assert meta["provenance"]["layers.2.self_attn.q_proj.weight"]["sources"] == ["layers.0.self_attn.q_proj.weight"]


def test_init_shape_mismatch_is_refused(write_recipe):
    base = train(write_recipe('[[stage]]\nsteps = 2\n', n_layers=2, ckpt_every=0, name="base"))
    stage = f'[[stage]]\nsteps = 2\ninit = "{base.out.as_posix()}"\n'
    with pytest.raises(GrowlmError, match="init"):
        train(write_recipe(stage, n_layers=3, ckpt_every=0, name="x"))
