"""Exported folders encode text exactly as the run's tokenizer.json does, with its BOS/EOS.

Tokenizers in the layouts of the supported families are built here with `tokenizers`: Llama 3
(byte-level BPE, `<|begin_of_text|>` added by the post-processor), Llama 2 / Mistral (`<s>`
added, `</s>` ends documents) and Qwen / SmolLM (byte-level BPE, `<|endoftext|>` only).
"""

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from growlm.cli import main as cli_main
from growlm.model import ModelConfig, Transformer
from growlm.model.hf import export_hf

transformers = pytest.importorskip("transformers")

TEXT = ["hello world, growing models in stages", "the quick brown fox jumps over it"] * 20
LAYOUTS = {
    # name: (special tokens, token the post-processor prepends, eos, model_type)
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>", "<|end_of_text|>", "llama"),
    "mistral": (["<unk>", "<s>", "</s>"], "<s>", "</s>", "mistral"),
    "qwen": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|endoftext|>", "qwen2"),
}


def _tokenizer(layout: str, path: Path) -> Path:
    specials, bos, _, _ = LAYOUTS[layout]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=320, special_tokens=specials))
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    tok.save(str(path))
    return path


def _cfg(layout: str) -> ModelConfig:
    family = LAYOUTS[layout][3]
    extra = dict(qkv_bias=True) if family == "qwen2" else {}
    return ModelConfig(vocab_size=320, d_model=32, n_layers=1, n_heads=2, max_seq_len=64,
                       model_type=family, **extra)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_exported_tokenizer_encodes_like_the_source(layout, tmp_path):
    src = _tokenizer(layout, tmp_path / "tokenizer.json")
    cfg = _cfg(layout)
    out = export_hf(cfg, Transformer(cfg).state_dict(), tmp_path / "hf", tokenizer_json=src)
    ours = Tokenizer.from_file(str(src))
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for text in ("hello world", "the fox, in stages"):
        assert theirs(text)["input_ids"] == ours.encode(text).ids
    _, bos, eos, _ = LAYOUTS[layout]
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == ours.token_to_id(eos) and theirs.eos_token == eos
    want_bos = bos or eos  # no BOS of its own: one marker for both, as GPT-2/SmolLM/Qwen do
    assert config["bos_token_id"] == ours.token_to_id(want_bos) and theirs.bos_token == want_bos
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (config["bos_token_id"], config["eos_token_id"])
    if bos is not None:  # the BOS really is added, as the source tokenizer adds it
        assert theirs("hi")["input_ids"][0] == ours.token_to_id(bos)


def test_reexport_keeps_the_folders_own_tokenizer_files(tmp_path):
    src = _tokenizer("qwen", tmp_path / "tokenizer.json")
    cfg = _cfg("qwen")
    torch.manual_seed(0)
    a = export_hf(cfg, Transformer(cfg).state_dict(), tmp_path / "a", tokenizer_json=src)
    side = {"tokenizer_config.json": {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None,
                                      "eos_token": "<|endoftext|>", "chat_template": "{{ x }}"},
            "generation_config.json": {"bos_token_id": 0, "eos_token_id": [0, 2], "top_p": 0.8}}
    for name, data in side.items():
        (a / name).write_text(json.dumps(data))
    config = json.loads((a / "config.json").read_text()) | {"bos_token_id": None, "eos_token_id": 0}
    (a / "config.json").write_text(json.dumps(config))
    assert cli_main(["export", str(a), str(tmp_path / "b")]) == 0
    b = tmp_path / "b"
    for name in (*side, "tokenizer.json"):
        assert (b / name).read_bytes() == (a / name).read_bytes(), name
    exported = json.loads((b / "config.json").read_text())
    assert exported["bos_token_id"] is None and exported["eos_token_id"] == 0


def test_init_folder_tokenizer_must_match_the_data(tmp_path):
    from growlm.data.tokenizer import load_tokenizer, tokenizer_sha256
    from growlm.errors import GrowlmError
    from growlm.init_source import check_init_tokenizer

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # an HF folder; its tokenizer is what matters here
    check_init_tokenizer(str(folder), "0" * 64, "stage.1.init")  # no tokenizer.json: nothing to compare
    _tokenizer("llama3", folder / "tokenizer.json")
    own = tokenizer_sha256(load_tokenizer(folder / "tokenizer.json"))
    check_init_tokenizer(str(folder), own, "stage.1.init")
    other = tokenizer_sha256(load_tokenizer(_tokenizer("qwen", tmp_path / "other.json")))
    with pytest.raises(GrowlmError, match=r"stage.1.init: .* --tokenizer"):
        check_init_tokenizer(str(folder), other, "stage.1.init")
