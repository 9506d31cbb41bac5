"""Supervised fine-tuning on instruction data (`growlm sft`) and generation (`growlm generate`).

template.py renders records as prompt/response text, data.py reads and tokenizes records with
loss masks, loader.py batches them for the Trainer, cli.py runs SFT as a one-stage run and
generate.py decodes from a checkpoint or HF folder.
"""

from growlm.sft.data import (
    Examples,
    Record,
    TokenizeStats,
    read_records,
    split_holdout,
    tokenize_records,
)
from growlm.sft.loader import SFTLoader, padded_batches
from growlm.sft.template import ALPACA, BUILTIN, PLAIN, Segment, Template, load_template

__all__ = [
    "ALPACA",
    "BUILTIN",
    "PLAIN",
    "Examples",
    "Record",
    "SFTLoader",
    "Segment",
    "Template",
    "TokenizeStats",
    "load_template",
    "padded_batches",
    "read_records",
    "split_holdout",
    "tokenize_records",
]
