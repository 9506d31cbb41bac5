"""The recipes for growing public checkpoints (recipes/hf/): SOLAR depth up-scaling, LLaMA Pro
block expansion, STEP continued from Qwen2.5.

Paper scale: each resolves and plans against a folder holding only the public model's
config.json (the weights are not needed to plan), with the documented depths and sizes.
Tiny: each runs end to end with the CLI — train the tiny source model, export it, grow it,
export the result — and the folder loads in transformers as the source's family.
"""

from pathlib import Path

import pytest
import torch

from growlm.cli import main as cli_main
from growlm.config import load_recipe
from growlm.recipe_library import library_root

transformers = pytest.importorskip("transformers")
pytest.importorskip("growlm.train.trainer")

HF = library_root() / "hf"
# recipe: (public model, final depth, total parameters, trainable parameters in the stage)
PAPER = {
    "solar-10.7b.toml": ("Mistral-7B-v0.3", 48, 10.7e9, "all"),
    "llama-pro-8b.toml": ("Llama-2-7b-hf", 40, 8.36e9, "new blocks"),
    "step-qwen2.5-0.5b.toml": ("Qwen2.5-0.5B", 32, 0.613e9, "new layers"),
}


@pytest.mark.parametrize("recipe", PAPER)
def test_paper_scale_recipes_resolve_and_plan(recipe, hf_init, hf_public):
    from growlm.stages import resolve_stages
    from growlm.train.plan import plan_recipe

    model, depth, params, trainable = PAPER[recipe]
    cfg = load_recipe(HF / recipe, hf_init(HF / recipe))
    (stage,) = resolve_stages(cfg)
    assert stage.model.n_layers == depth
    assert stage.model.params_total == pytest.approx(params, rel=0.01)
    for field in stage.model.architecture_fields():  # [model] documents the source's architecture
        assert getattr(stage.model, field) == getattr(cfg.model, field), field
    entry = plan_recipe(cfg)["stages"][0]
    counts = entry["params"]
    per_layer = stage.model.params_per_layer
    new = depth - hf_public[model]["num_hidden_layers"]
    if trainable == "all":
        assert counts["frozen"] == 0
    else:  # LLaMA Pro and STEP: only the new layers (and STEP's adapters) train
        assert counts["trainable"] == new * per_layer
        assert (counts["adapter"] > 0) == (recipe.startswith("step"))


CORPUS = "builtin:python:200KB"
TINY = [  # (source recipe, exported folder name, growth recipe, HF class, extra overrides)
    ("mistral-source", "tiny-mistral", "solar", "MistralForCausalLM", ()),
    ("llama3-source", "tiny-llama3", "llama-pro", "LlamaForCausalLM", ()),
    ("qwen2-source", "tiny-qwen2", "step-qwen2", "Qwen2ForCausalLM",
     ("stage.1.steps=4", "stage.1.adapters.reset_every=2", "stage.1.adapters.rewarmup_steps=1")),
]
SHORT = ["stage.1.steps=2", "run.eval_tokens=256", "train.global_batch_tokens=256",
         "train.micro_batch_size=2"]


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    from growlm.data import prepare

    out = tmp_path_factory.mktemp("shards") / "tiny"
    prepare(out, [CORPUS], train_vocab=512, val_fraction=0.05, progress=False, log=lambda *_: None)
    return out


def _train(recipe: Path, *overrides: str):
    from growlm.train.trainer import Trainer

    trainer = Trainer(load_recipe(recipe, list(overrides)), quiet=True)
    trainer.run()
    return trainer.out


@pytest.mark.parametrize("source, folder, growth, hf_class, extra", TINY, ids=[t[2] for t in TINY])
def test_tiny_recipes_run_end_to_end(source, folder, growth, hf_class, extra, tiny_shards, tmp_path):
    from growlm.model.hf import load_hf_folder

    data = f"data.train={tiny_shards}"
    src_run = _train(HF / "tiny" / f"{source}.toml", data, f"run.out_dir={tmp_path / 'src'}", *SHORT)
    assert cli_main(["export", str(src_run), str(tmp_path / folder)]) == 0
    src_cfg, _ = load_hf_folder(tmp_path / folder)
    run = _train(HF / "tiny" / f"{growth}.toml", data, f"run.out_dir={tmp_path / 'grown'}",
                 f"stage.1.init={tmp_path / folder}", *SHORT, *extra)
    assert cli_main(["export", str(run), str(tmp_path / "out")]) == 0
    cfg, state = load_hf_folder(tmp_path / "out")
    recipe_cfg = load_recipe(HF / "tiny" / f"{growth}.toml", [f"stage.1.init={tmp_path / folder}"])
    assert cfg.n_layers == recipe_cfg.model.n_layers > src_cfg.n_layers
    for field in cfg.architecture_fields():
        assert getattr(cfg, field) == getattr(src_cfg, field) == getattr(recipe_cfg.model, field), field
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(hf).__name__ == hf_class
    from growlm.model import Transformer

    model = Transformer(cfg)
    model.load_state_dict(state)
    tokens = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.eval()(tokens) - hf.eval()(tokens).logits).abs().max().item() <= 1e-5
