"""Tiny tokenizer and models for the eval tests (no shared data needed)."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from growlm.model import ModelConfig, Transformer

CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "A man is sitting on a roof. He starts pulling up roofing on a roof.",
    "Question: What do plants need to grow?\nAnswer: water and sunlight.",
    "The quick brown fox jumps over the lazy dog, and the cat runs away.",
    "Sarah was a much better surgeon than Maria so Maria always got the harder cases.",
    "cat dog car automobile river water sun sunlight king queen man woman",
] * 20


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """A byte-level BPE (GPT-2 style, 'Ġ' space marker) with a 480-entry vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=480, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def build_model(vocab_size: int = 300, n_layers: int = 2, max_seq_len: int = 64,
               seed: int = 0, **kw) -> Transformer:
    cfg = ModelConfig(**{"vocab_size": vocab_size, "d_model": 32, "n_layers": n_layers,
                         "n_heads": 2, "max_seq_len": max_seq_len, **kw})
    model = Transformer(cfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    # Larger weights than the init make predictions peaked, so scores differ between choices.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return model.eval()


@pytest.fixture
def make_model():
    """Factory fixture: make_model(vocab_size=..., n_layers=..., max_seq_len=..., seed=...)."""
    return build_model


@pytest.fixture
def model(tokenizer) -> Transformer:
    return build_model(tokenizer.get_vocab_size())


def make_llama_tokenizer() -> Tokenizer:
    """The Llama-2 / TinyLlama tokenizer.json layout in miniature: a SentencePiece-style BPE
    ('▁' for spaces, byte fallback) with <unk>, <s>, </s> and a post-processor adding <s>."""
    from tokenizers import normalizers, processors

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


@pytest.fixture(scope="session")
def llama_tokenizer() -> Tokenizer:
    return make_llama_tokenizer()
