"""The full path for every family: HF folder → data prepared with its tokenizer → 2-stage run
(identity blocks with inherited layers frozen, then SOLAR-style partial stacking) → export →
`transformers` loads the same family with the same logits and the source's special tokens.

The source folders are tiny random models made with transformers' own classes, each with a
tokenizer.json in its family's layout (Llama 3 and Mistral add a BOS; Qwen and SmolLM do not).
"""

import json
from pathlib import Path

import pytest
import torch
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from growlm.model.hf import load_hf_folder

transformers = pytest.importorskip("transformers")
pytest.importorskip("growlm.train.trainer")

CORPUS = "builtin:python:60KB"
COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
               "rope_theta": 500000.0}
# family: (config class, HF class, config extras, tokenizer specials, BOS the tokenizer adds, EOS)
FAMILIES = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM",
               dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True),
               ["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>", "<|end_of_text|>"),
    "smollm": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True),
               ["<|endoftext|>", "<|im_start|>"], None, "<|endoftext|>"),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(head_dim=16, sliding_window=None),
                ["<unk>", "<s>", "</s>"], "<s>", "</s>"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True),
              ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|endoftext|>"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16),
              ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|endoftext|>"),
}
VOCAB = 320  # the tokenizer's size; the models embed 336 ids, as Qwen's pad their vocabulary


TEXTS = ["def grow(model, factor):\n    return [layer for layer in model for _ in range(factor)]\n",
         'class Stage:\n    """One stage of a run."""\n    def __init__(self, name):\n        self.name = name\n'
         ] * 20


# Qwen's pre-tokenizer (its tokenizer.json): transformers 5 rebuilds every qwen2 folder's
# tokenizer with it (Qwen2Tokenizer), whatever the folder's tokenizer.json says.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _tokenizer(family: str, path: Path) -> Tokenizer:
    *_, specials, bos, _ = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if family.startswith("qwen"):
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    tok.save(str(path))
    return tok


def _source_folder(family: str, folder: Path) -> Path:
    config_cls, _, extra, _, bos, eos = FAMILIES[family]
    folder.mkdir()
    tok = _tokenizer(family, folder / "tokenizer.json")
    ids = {"bos_token_id": tok.token_to_id(bos or eos), "eos_token_id": tok.token_to_id(eos)}
    config = getattr(transformers, config_cls)(vocab_size=VOCAB + 16, **(COMMON | extra), **ids)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((0.5 + torch.rand_like(p)) if "norm" in name else 0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


RECIPE = """
[run]
name = "{family}"
out_dir = "{out}"
eval_tokens = 256
ckpt_every = 0

[model]
vocab_size = {vocab}
d_model = 32
n_layers = 6
n_heads = 4
n_kv_heads = 2
ffn_dim = 64
max_seq_len = 64

[data]
train = "{data}"
seq_len = 32

[train]
global_batch_tokens = 256
micro_batch_size = 4

[[stage]]
name = "expand"             # LLaMA-Pro style: identity blocks, only they train
init = "{source}"
grow = {{ op = "identity", add = 2 }}
freeze = ["inherited"]
steps = 3
lr = 1e-2

[[stage]]
name = "upscale"            # SOLAR style: two overlapping copies of the 4 layers
grow = {{ op = "stack", sources = [0, 1, 2, 1, 2, 3] }}
steps = 3
lr = 1e-2
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_import_grow_train_export_load(family, tmp_path):
    from growlm import checkpoint
    from growlm.cli import main as cli_main
    from growlm.config import load_recipe
    from growlm.data import prepare
    from growlm.train.trainer import Trainer

    source = _source_folder(family, tmp_path / "source")
    src_cfg, src_state = load_hf_folder(source)
    shards = tmp_path / "shards"
    prepare(shards, [CORPUS], tokenizer=source, val_fraction=0.1, progress=False, log=lambda *_: None)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(family=family, out=(tmp_path / "runs").as_posix(),
                                    data=shards.as_posix(), source=source.as_posix(),
                                    vocab=src_cfg.vocab_size))
    trainer = Trainer(load_recipe(recipe), quiet=True)
    trainer.run()
    cfg, state, meta = checkpoint.load_model_state(trainer.out)
    assert cfg.n_layers == 6 and meta["model"]["model_type"] == src_cfg.model_type
    for field in src_cfg.architecture_fields():  # RoPE, biases, norms, head_dim... all kept
        assert getattr(cfg, field) == getattr(src_cfg, field), field

    assert cli_main(["export", str(trainer.out), str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(hf).__name__ == FAMILIES[family][1]
    from growlm.model import Transformer

    model = Transformer(cfg)
    model.load_state_dict(state)
    tokens = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model.eval()(tokens) - hf(tokens).logits).abs().max().item() <= 1e-5
        # training changed the model: the comparison is not with the source's weights
        assert not torch.equal(state["lm_head.weight"], src_state["lm_head.weight"])

    # the folder speaks the source's tokenizer, with the source's special tokens
    source_config = json.loads((source / "config.json").read_text())
    exported = json.loads((out / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "model_type", "architectures"):
        assert exported[key] == source_config[key], key
    src_tok = Tokenizer.from_file(str(source / "tokenizer.json"))
    out_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "def grow(model):\n    return model"
    assert out_tok(text)["input_ids"] == src_tok.encode(text).ids
