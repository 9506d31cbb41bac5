"""open_training_data: one folder as before, weighted mixes, and the recipe's data.train."""

import json
import shutil

import numpy as np
import pytest
import torch

from growlm.config import config_from_dict, load_recipe
from growlm.data import SequenceLoader, prepare
from growlm.data.mix import MixedLoader
from growlm.data.training import open_training_data
from growlm.errors import GrowlmError

T = 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three shard folders sharing one tokenizer (a, b, c) and one with another (other)."""
    root = tmp_path_factory.mktemp("mix")
    words = ("stages grow frozen layers train adapters merge weights tokens flops memory "
             "schedule warmup cosine").split()
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        rng = np.random.default_rng(seed)
        (root / f"{name}.txt").write_text("\n\n".join(
            " ".join(rng.choice(words, 40)) + f" {name}" for _ in range(60)))
    out = {"a": prepare(root / "a", [root / "a.txt"], train_vocab=300, txt_docs="paragraph",
                        val_fraction=0.1, progress=False, log=lambda *_: None)}
    for name in ("b", "c"):
        out[name] = prepare(root / name, [root / f"{name}.txt"], tokenizer=out["a"].tokenizer_path,
                            txt_docs="paragraph", val_fraction=0.1, progress=False,
                            log=lambda *_: None)
    out["other"] = prepare(root / "other", [root / "b.txt"], train_vocab=280, txt_docs="paragraph",
                           val_fraction=0.1, progress=False, log=lambda *_: None)
    return {name: shards.path for name, shards in out.items()}


def _take(loader, steps: int, batch: int = 4) -> torch.Tensor:
    return torch.cat([loader.next_batch(batch)[0] for _ in range(steps)])


@pytest.mark.parametrize("spec", ["string", "list of one"])
def test_one_source_is_the_old_loader_bit_for_bit(folders, spec):
    train = str(folders["a"]) if spec == "string" else [{"path": str(folders["a"]), "weight": 3}]
    data = open_training_data(train, None, T, seed=5, rank=1, world_size=2)
    from growlm.data import open_shards

    shards = open_shards(folders["a"])
    old = SequenceLoader(shards.tokens("train"), T, 5, rank=1, world_size=2)
    assert type(data.loader) is SequenceLoader
    assert data.loader.state_dict() == old.state_dict()
    assert torch.equal(_take(data.loader, 10), _take(old, 10))
    assert np.array_equal(np.asarray(data.val_tokens), np.asarray(shards.tokens("val")))
    assert data.tokenizer_path == shards.tokenizer_path and data.vocab_size == 300
    assert data.tokens_available == shards.num_tokens("train")
    assert data.sources == [{"path": str(shards.path), "weight": 1.0,
                             "tokens": shards.num_tokens("train")}]


def test_a_mix_opens_every_source_with_its_weight(folders):
    spec = [{"path": str(folders["a"]), "weight": 0.75}, {"path": str(folders["b"]), "weight": 0.25}]
    data = open_training_data(spec, str(folders["c"]), T, seed=0)
    assert isinstance(data.loader, MixedLoader)
    assert [s["weight"] for s in data.sources] == [0.75, 0.25]
    assert data.tokens_available == sum(s["tokens"] for s in data.sources)
    from growlm.data import open_shards

    assert np.array_equal(np.asarray(data.val_tokens),
                          np.asarray(open_shards(folders["c"]).tokens("val")))
    rows = _take(data.loader, 50)
    tok = open_shards(folders["a"]).tokenizer()
    # the last word of every document names its source: count where the rows come from
    a_id, b_id = (tok.encode(f" {n}").ids[-1] for n in ("a", "b"))
    assert (rows == a_id).sum() > 2 * (rows == b_id).sum() > 0


def test_mix_errors_name_the_recipe_key(folders, tmp_path):
    a, b = str(folders["a"]), str(folders["b"])
    cases = [
        ([{"path": a, "weight": 1}, {"path": str(folders["other"]), "weight": 1}], a,
         r"data\.train\.2: .*other was prepared with another tokenizer than data\.train\.1"),
        ([{"path": a, "weight": 1}, {"path": str(tmp_path / "nope"), "weight": 1}], a,
         r"data\.train\.2: shard folder not found: .*nope"),
        ([{"path": a, "weight": 1}, {"path": a + "/", "weight": 1}], a,
         r"data\.train\.2: .* holds the same shards as data\.train\.1"),
        ([{"path": a, "weight": 1}, {"path": b, "weight": 0}], a,
         r"data\.train\.2\.weight: must be a positive finite number, got 0"),
        ([{"path": a, "weight": 1}, {"path": b, "weight": float("nan")}], a,
         r"data\.train\.2\.weight: must be a positive finite"),
        ([{"path": a, "weight": 1}, {"weight": 1}], a, r"data\.train\.2\.path: give the shard"),
        ([], a, r"data\.train: give a shard folder, or a non-empty list"),
        ([{"path": a, "weight": 1}, {"path": b, "weight": 1}], None,
         r"data\.val: data\.train mixes 2 sources; name the validation shards"),
        (a, str(folders["other"]), r"data\.val: shards were made with a different tokenizer"),
    ]
    for train, val, match in cases:
        with pytest.raises(GrowlmError, match=match):
            open_training_data(train, val, T, seed=0)
    with pytest.raises(GrowlmError, match=r"data\.train: .* fewer than one sequence \(data\.seq_len"):
        open_training_data(a, None, 10**6, seed=0)


def test_data_val_without_a_validation_split_is_refused(folders, tmp_path):
    no_val = prepare(tmp_path / "noval", [folders["a"].parent / "c.txt"],
                     tokenizer=folders["a"] / "tokenizer.json", txt_docs="paragraph",
                     val_fraction=0, progress=False, log=lambda *_: None)
    with pytest.raises(GrowlmError, match=r"data\.val: .*noval has no validation split"):
        open_training_data(str(folders["a"]), str(no_val.path), T, seed=0)
    assert open_training_data(str(no_val.path), None, T, seed=0).val_tokens is None


RECIPE = {"model": {"vocab_size": 300, "d_model": 32, "n_layers": 1, "n_heads": 2,
                    "max_seq_len": 64},
          "data": {"seq_len": 32}, "stage": [{"steps": 2}]}


@pytest.mark.parametrize("train,match", [
    ([{"path": "a", "weight": 0.9}, {"path": "b", "weight": -1}],
     r"data\.train\.2\.weight: Input should be greater than 0"),
    ([{"path": "a", "weight": 0.9}, {"path": "b", "weight": float("inf")}],
     r"data\.train\.2\.weight: Input should be a finite number"),
    ([{"path": "a", "weight": 0.9}, {"path": "b"}], r"data\.train\.2\.weight: Field required"),
    ([{"path": "a", "weight": 1, "wieght": 2}], r"data\.train\.1\.wieght: unknown key"),
    ([{"path": "a", "weight": 1}, {"path": "a", "weight": 2}],
     r"data\.train\.2\.path: the folder of data\.train\.1 again"),
    ([], r"data\.train: give a shard folder, or a non-empty list"),
    (7, r"data\.train: give a shard folder"),
])
def test_recipe_data_train_errors_are_one_line_naming_the_entry(train, match):
    with pytest.raises(GrowlmError, match=match) as info:
        config_from_dict({**RECIPE, "data": {**RECIPE["data"], "train": train}}, "r.toml")
    assert "\n" not in str(info.value)


def test_recipe_accepts_a_path_or_a_weighted_list(tmp_path):
    mixed = [{"path": "shards/a", "weight": 0.9}, {"path": "shards/b", "weight": 0.1}]
    cfg = config_from_dict({**RECIPE, "data": {**RECIPE["data"], "train": mixed}})
    assert [(s.path, s.weight) for s in cfg.data.train] == [("shards/a", 0.9), ("shards/b", 0.1)]
    assert cfg.model_dump(mode="json")["data"]["train"] == mixed
    assert config_from_dict({**RECIPE, "data": {**RECIPE["data"], "train": "x"}}).data.train == "x"
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\nvocab_size = 300\nd_model = 32\nn_layers = 1\nn_heads = 2\n'
                      'max_seq_len = 64\n[data]\nseq_len = 32\n[[data.train]]\npath = "a"\n'
                      'weight = 2\n[[data.train]]\npath = "b"\nweight = 1\n[[stage]]\nsteps = 1\n')
    cfg = load_recipe(recipe, ["data.train.2.weight=3"])
    assert [(s.path, s.weight) for s in cfg.data.train] == [("a", 2.0), ("b", 3.0)]


MIX_RECIPE = """
[run]
name = "mix"
out_dir = "{out}"
eval_tokens = 256
ckpt_every = 2
keep_last = 10
[model]
vocab_size = 300
d_model = 32
n_layers = 2
n_heads = 2
max_seq_len = 64
[data]
train = [{{path = "{a}", weight = 0.7}}, {{path = "{b}", weight = 0.3}}]
val = "{c}"
seq_len = 16
[train]
global_batch_tokens = 128
micro_batch_size = 4
[schedule]
warmup_steps = 1
[[stage]]
steps = 6
lr = 3e-3
"""


def _losses(run_dir) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "step"]


def test_a_mixed_recipe_trains_and_resumes_bit_identically(folders, tmp_path):
    from growlm import checkpoint as ckpt
    from growlm.train.trainer import Trainer

    def recipe(name: str):
        path = tmp_path / f"{name}.toml"
        path.write_text(MIX_RECIPE.format(out=(tmp_path / name).as_posix(), a=folders["a"],
                                          b=folders["b"], c=folders["c"]))
        return path

    ref = Trainer(load_recipe(recipe("ref")), quiet=True)
    ref.run()
    assert isinstance(ref.loader, MixedLoader) and ref.loader.position == 6 * 8
    # The same run as if killed after its step-2 checkpoint: later checkpoints are gone.
    shutil.copytree(tmp_path / "ref", tmp_path / "cut")
    for path in ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints"):
        if ckpt.read_meta(path)["global_step"] > 2:
            shutil.rmtree(path)
    resumed = Trainer(load_recipe(recipe("cut")), resume=True, quiet=True)
    resumed.run()
    assert resumed.loader.state_dict()["kind"] == "mix"
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "ref")
    assert len(_losses(tmp_path / "ref")) == 6
