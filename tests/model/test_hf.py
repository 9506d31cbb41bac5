import json
from pathlib import Path

import pytest
import torch

from growlm.cli import main as cli_main
from growlm.errors import GrowlmError
from growlm.model import ModelConfig, Transformer
from growlm.model.hf import (
    export_hf,
    from_hf_config,
    load_hf_folder,
    to_hf_config,
    to_hf_name,
)

transformers = pytest.importorskip("transformers")

MHA = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=64)
GQA = MHA.with_(n_kv_heads=2, ffn_dim=96, rope_theta=500000.0, norm_eps=1e-6)


def _model(cfg: ModelConfig) -> Transformer:
    model = Transformer(cfg)
    with torch.no_grad():  # norms away from 1 so a norm-weight mix-up shows in the logits
        for _name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model.eval()


def _hf_model(folder: Path):
    return transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def _tiny_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"])
    tok.train_from_iterator(["hello world, growing models in stages"] * 20, trainer)
    tok.save(str(path))
    return path


@pytest.mark.parametrize("cfg", [MHA, GQA], ids=["mha", "gqa"])
def test_logits_match_transformers(cfg, tmp_path):
    model = _model(cfg)
    export_hf(cfg, model.state_dict(), tmp_path / "hf")
    hf = _hf_model(tmp_path / "hf")
    tokens = torch.randint(0, cfg.vocab_size, (2, 48))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_round_trip_through_transformers_is_exact(tmp_path):
    model = _model(GQA)
    state = model.state_dict()
    export_hf(GQA, state, tmp_path / "a")
    _hf_model(tmp_path / "a").save_pretrained(tmp_path / "b")
    cfg, loaded = load_hf_folder(tmp_path / "b")
    assert cfg == GQA
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    Transformer(cfg).load_state_dict(loaded)  # strict


def test_tied_embeddings(tmp_path):
    cfg = MHA.with_(tie_embeddings=True)
    model = _model(cfg)
    export_hf(cfg, model.state_dict(), tmp_path / "hf")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # the tied head is written once
    hf = _hf_model(tmp_path / "hf")
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    tokens = torch.randint(0, cfg.vocab_size, (1, 16))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max().item() <= 1e-5
    cfg2, state = load_hf_folder(tmp_path / "hf")
    assert cfg2.tie_embeddings
    assert state["lm_head.weight"] is state["embed_tokens.weight"]


def test_tied_export_refuses_a_different_head(tmp_path):
    cfg = MHA.with_(tie_embeddings=True)
    state = {k: v.clone() for k, v in _model(cfg).state_dict().items()}
    state["lm_head.weight"] += 1
    with pytest.raises(GrowlmError, match="lm_head.weight differs"):
        export_hf(cfg, state, tmp_path / "hf")


@pytest.mark.parametrize(
    "changes, words",
    [({"block": "attn_only"}, "attn_only"), ({"n_layers": 0}, "0-layer")],
)
def test_export_refuses_shapes_hf_cannot_express(changes, words, tmp_path):
    cfg = MHA.with_(**changes)
    with pytest.raises(GrowlmError, match=words):
        export_hf(cfg, Transformer(cfg).state_dict(), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_refuses_unmerged_lora(tmp_path):
    state = dict(_model(MHA).state_dict())
    state["layers.0.self_attn.q_proj.lora_A"] = torch.zeros(4, 64)
    with pytest.raises(GrowlmError, match="merge the adapters"):
        export_hf(MHA, state, tmp_path / "hf")


def test_export_refuses_state_that_does_not_fit_config(tmp_path):
    state = dict(_model(MHA).state_dict())
    del state["layers.1.mlp.up_proj.weight"]
    with pytest.raises(GrowlmError, match="missing.*layers.1.mlp.up_proj.weight"):
        export_hf(MHA, state, tmp_path / "hf")
    state = dict(_model(MHA).state_dict())
    state["norm.weight"] = torch.ones(65)
    with pytest.raises(GrowlmError, match="norm.weight has shape"):
        export_hf(MHA, state, tmp_path / "hf")


def test_export_overwrite_rules_and_atomicity(tmp_path, monkeypatch):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    state = _model(MHA).state_dict()
    with pytest.raises(GrowlmError, match="not empty"):
        export_hf(MHA, state, out)

    import growlm.model.hf as hf_mod

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf_mod, "save_file", crash)
    with pytest.raises(RuntimeError):
        export_hf(MHA, state, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temp dir left behind
    assert (out / "keep.txt").read_text() == "old"  # the old folder is untouched
    monkeypatch.undo()

    export_hf(MHA, state, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_tokenizer_files_load_with_auto_tokenizer(tmp_path):
    tok_file = _tiny_tokenizer(tmp_path / "tokenizer.json")
    export_hf(MHA.with_(vocab_size=300), _model(MHA.with_(vocab_size=300)).state_dict(),
              tmp_path / "hf", tokenizer_json=tok_file)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tok.decode(tok("hello world")["input_ids"]) == "hello world"
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == 0
    small = MHA.with_(vocab_size=16)  # the tokenizer has more tokens than the model
    with pytest.raises(GrowlmError, match="vocab_size is 16"):
        export_hf(small, _model(small).state_dict(), tmp_path / "hf2", tokenizer_json=tok_file)
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 0


def test_config_round_trip_and_refusals():
    assert from_hf_config(to_hf_config(GQA)) == GQA
    base = to_hf_config(MHA)
    legacy = {k: v for k, v in base.items() if k != "rope_parameters"} | {"rope_theta": 1e6}
    assert from_hf_config(legacy).rope_theta == 1e6  # transformers < 5 layout
    bad = [
        ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
        ("mlp_bias", True),
        ("hidden_act", "gelu"),
        ("model_type", "gemma"),
        ("architectures", ["LlamaForSequenceClassification"]),
        ("attention_dropout", 0.1),
        ("partial_rotary_factor", 0.5),
        ("sliding_window", 4096),
    ]
    for field, value in bad:
        with pytest.raises(GrowlmError, match=field):
            from_hf_config(base | {field: value})
    with pytest.raises(GrowlmError, match="hidden_size"):
        from_hf_config({k: v for k, v in base.items() if k != "hidden_size"})


def _export(tmp_path: Path) -> Path:
    return export_hf(MHA, _model(MHA).state_dict(), tmp_path / "hf")


def test_load_refuses_truncated_safetensors(tmp_path):
    folder = _export(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # header intact, tensor data cut off
    with pytest.raises(GrowlmError, match="truncated or corrupt"):
        load_hf_folder(folder)
    weights.write_bytes(data[:20])  # header cut off
    with pytest.raises(GrowlmError, match="truncated or corrupt"):
        load_hf_folder(folder)


def test_load_refuses_pickle_only_folder(tmp_path):
    folder = _export(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(GrowlmError, match="never unpickles"):
        load_hf_folder(folder)


def test_load_refuses_missing_files(tmp_path):
    with pytest.raises(GrowlmError, match="does not exist"):
        load_hf_folder(tmp_path / "nowhere")
    folder = _export(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(GrowlmError, match=r"no model\.safetensors"):
        load_hf_folder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(GrowlmError, match="no config.json"):
        load_hf_folder(folder)


def test_load_sharded_folder(tmp_path):
    from safetensors.torch import save_file

    state = _model(MHA).state_dict()
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(to_hf_config(MHA)))
    names = list(state)
    shards = {"model-00001-of-00002.safetensors": names[:7],
              "model-00002-of-00002.safetensors": names[7:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({to_hf_name(k): state[k] for k in keys}, str(folder / file))
        weight_map |= {to_hf_name(k): file for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cfg, loaded = load_hf_folder(folder)
    assert cfg == MHA and all(torch.equal(loaded[k], v) for k, v in state.items())
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(GrowlmError, match="model-00002-of-00002.safetensors.*missing"):
        load_hf_folder(folder)


def test_cli_reexports_a_hf_folder(tmp_path, capsys):
    tok_file = _tiny_tokenizer(tmp_path / "tokenizer.json")
    cfg = MHA.with_(vocab_size=300)
    model = _model(cfg)
    export_hf(cfg, model.state_dict(), tmp_path / "a", tokenizer_json=tok_file)
    assert cli_main(["export", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "tokenizer.json").is_file()
    _, state = load_hf_folder(tmp_path / "b")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert cli_main(["export", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "a"), str(tmp_path / "b"), "--overwrite"]) == 0


def _checkpoint_module():
    try:
        from growlm import checkpoint
    except ImportError as e:
        pytest.skip(f"growlm.checkpoint not importable: {e}")
    return checkpoint


def _save_checkpoint(checkpoint, run: Path, cfg: ModelConfig, state: dict, tokenizer=None):
    meta = {"format": "growlm-checkpoint", "version": 1, "model": cfg.model_dump(), "stage": 0,
            "stage_name": "s", "global_step": 3, "stage_step": 3, "tokens": 0, "flops": 0,
            "provenance": {}, "adapters": None}
    return checkpoint.save_checkpoint(run / "checkpoints", 3, state, {}, meta, tokenizer)


def test_cli_exports_a_run(tmp_path):
    checkpoint = _checkpoint_module()
    tok_file = _tiny_tokenizer(tmp_path / "tokenizer.json")
    cfg = MHA.with_(vocab_size=300, tie_embeddings=True)
    model = _model(cfg)
    _save_checkpoint(checkpoint, tmp_path / "run", cfg, model.state_dict(), tok_file)
    assert cli_main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    hf = _hf_model(tmp_path / "out")
    tokens = torch.randint(0, cfg.vocab_size, (1, 12))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max().item() <= 1e-5


def test_cli_refuses_attention_only_run(tmp_path, capsys):
    checkpoint = _checkpoint_module()
    cfg = MHA.with_(block="attn_only")
    _save_checkpoint(checkpoint, tmp_path / "run", cfg, Transformer(cfg).state_dict())
    assert cli_main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "attn_only" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_export_copes_with_layers_that_share_storage(tmp_path):
    state = dict(_model(MHA).state_dict())
    for name in [k for k in state if k.startswith("layers.0.")]:
        state[name.replace("layers.0.", "layers.1.")] = state[name]  # duplicated by reference
    export_hf(MHA, state, tmp_path / "hf")
    _, loaded = load_hf_folder(tmp_path / "hf")
    assert torch.equal(loaded["layers.1.mlp.up_proj.weight"], state["layers.0.mlp.up_proj.weight"])


def test_cli_refuses_pickle_and_truncated_inputs(tmp_path, capsys):
    _checkpoint_module()
    pickle_file = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickle_file)
    assert cli_main(["export", str(pickle_file), str(tmp_path / "out")]) == 2
    assert "pickle" in capsys.readouterr().err
    folder = _export(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert cli_main(["export", str(folder), str(tmp_path / "out")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
