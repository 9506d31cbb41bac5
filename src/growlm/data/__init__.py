"""Data: tokenizers, `prepare` (text → token shards), shard reading, and the sequence loader.

The loader (which needs torch) is imported on first use, so `growlm data ...` stays quick.
"""

from __future__ import annotations

import importlib

from growlm.data.prepare import prepare
from growlm.data.shards import TokenShards, TokenStream, open_shards
from growlm.data.sources import HFDataset
from growlm.data.tokenizer import eos_id, load_tokenizer, tokenizer_sha256, train_bpe

_LAZY = {"SequenceLoader", "sequential_batches"}

__all__ = ["HFDataset", "SequenceLoader", "TokenShards", "TokenStream", "eos_id",
           "load_tokenizer", "open_shards", "prepare", "sequential_batches", "tokenizer_sha256",
           "train_bpe"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module("growlm.data.loader"), name)
    raise AttributeError(f"module 'growlm.data' has no attribute {name!r}")
