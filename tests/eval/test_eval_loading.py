import shutil

import pytest
import torch

from growlm.errors import GrowlmError
from growlm.eval.loading import load_for_eval, merge_lora
from growlm.model.hf import export_hf


def logits(model, ids=(1, 5, 9, 2)):
    with torch.no_grad():
        return model(torch.tensor([list(ids)]))


@pytest.fixture
def tok_file(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_hf_folder_round_trip(tmp_path, model, tok_file):
    folder = export_hf(model.cfg, model.state_dict(), tmp_path / "hf", tokenizer_json=tok_file)
    loaded, tok, info = load_for_eval(folder)
    assert info["source"] == "hf" and tok.get_vocab_size() == model.cfg.vocab_size
    assert torch.allclose(logits(loaded), logits(model), atol=1e-5)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_tied_embeddings_stay_tied(tmp_path, make_model, tok_file, tokenizer):
    model = make_model(tokenizer.get_vocab_size(), tie_embeddings=True)
    folder = export_hf(model.cfg, model.state_dict(), tmp_path / "hf", tokenizer_json=tok_file)
    loaded, _, _ = load_for_eval(folder)
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    assert torch.allclose(logits(loaded), logits(model), atol=1e-5)


def test_checkpoint_with_lora_is_merged(tmp_path, model, tok_file):
    checkpoint = pytest.importorskip("growlm.checkpoint")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 32, generator=gen)
    b = torch.randn(32, 2, generator=gen)
    state["layers.0.self_attn.q_proj.lora_A"], state["layers.0.self_attn.q_proj.lora_B"] = a, b
    meta = {"model": model.cfg.model_dump(), "stage": 1, "global_step": 7,
            "adapters": {"scale": 0.5, "rank": 2}}
    checkpoint.save_checkpoint(tmp_path / "run" / "checkpoints", 7, state, {}, meta,
                               tokenizer=tok_file)
    loaded, tok, info = load_for_eval(tmp_path / "run")
    expected = model.state_dict()["layers.0.self_attn.q_proj.weight"] + 0.5 * b @ a
    assert torch.allclose(loaded.layers["0"].self_attn.q_proj.weight, expected, atol=1e-6)
    assert info["global_step"] == 7 and tok is not None
    assert info["stage"] == 1  # meta.json counts stages from 1, as users do


def test_own_merge_matches_formula():
    w = torch.randn(4, 3)
    a, b = torch.randn(2, 3), torch.randn(4, 2)
    out = merge_lora({"x.weight": w, "x.lora_A": a, "x.lora_B": b}, 2.0)
    assert set(out) == {"x.weight"} and torch.allclose(out["x.weight"], w + 2.0 * b @ a)
    with pytest.raises(GrowlmError, match="lora_B"):
        merge_lora({"x.weight": w, "x.lora_A": a}, 1.0)


@pytest.mark.parametrize("vocab", [200, 1000])
def test_vocab_mismatch_refused(tmp_path, make_model, tok_file, vocab):
    model = make_model(vocab)
    folder = export_hf(model.cfg, model.state_dict(), tmp_path / "hf")
    shutil.copyfile(tok_file, folder / "tokenizer.json")  # export itself would refuse the pair
    with pytest.raises(GrowlmError, match=rf"vocabulary \({vocab}\) does not match"):
        load_for_eval(folder)


def test_missing_path_refused(tmp_path):
    with pytest.raises(GrowlmError, match="does not exist"):
        load_for_eval(tmp_path / "nope")
