"""Shared pieces for the SFT tests: a made-up instruction set, a tiny tokenizer and model.

Tests reach the constants and helpers through the `kit` fixture (pytest runs with
--import-mode=importlib, so test modules cannot import a helper module from this folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from growlm.model.config import ModelConfig
from growlm.sft.template import Template

# Invented countries and codes (nothing here is real data).
CAPITALS = [
    ("Velmora", "VM-12"),
    ("Quistan", "QS-07"),
    ("Brandor", "BD-33"),
    ("Ozaria", "OZ-58"),
    ("Kelthia", "KT-21"),
    ("Pyrene", "PY-90"),
    ("Suvala", "SV-46"),
    ("Tarnis", "TR-64"),
]
QA = Template(
    name="qa",
    prompt="Q: {instruction}\nContext: {input}\nA: ",
    prompt_no_input="Q: {instruction}\nA: ",
)
QA_TOML = (
    'name = "qa"\n'
    'prompt = "Q: {instruction}\\nContext: {input}\\nA: "\n'
    'prompt_no_input = "Q: {instruction}\\nA: "\n'
)
SEQ_LEN = 48
TINY = ModelConfig(
    vocab_size=300, d_model=64, n_layers=2, n_heads=4, ffn_dim=128, max_seq_len=SEQ_LEN
)


def question(name: str) -> str:
    return f"What is the capital code of {name}?"


def capital_records() -> list[dict]:
    return [{"instruction": question(n), "output": code} for n, code in CAPITALS]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def trainer_modules():
    """The checkpoint module, or skip while the trainer package cannot be imported."""
    try:
        from growlm import checkpoint
        from growlm.train.trainer import Trainer  # noqa: F401
    except ImportError as e:
        pytest.skip(f"growlm.train is not importable yet: {e}")
    return checkpoint


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    return SimpleNamespace(
        CAPITALS=CAPITALS,
        QA=QA,
        QA_TOML=QA_TOML,
        SEQ_LEN=SEQ_LEN,
        TINY=TINY,
        question=question,
        capital_records=capital_records,
        write_jsonl=write_jsonl,
        trainer_modules=trainer_modules,
    )


@pytest.fixture(scope="session")
def tokenizer():
    from growlm.data.tokenizer import train_bpe

    texts = [QA.prompt_text(r["instruction"]) + r["output"] for r in capital_records()] * 4
    return train_bpe(texts, TINY.vocab_size)


@pytest.fixture
def data_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "capitals.jsonl", capital_records())


@pytest.fixture
def qa_toml(tmp_path) -> Path:
    path = tmp_path / "qa.toml"
    path.write_text(QA_TOML, encoding="utf-8")
    return path


@pytest.fixture
def one_thread():
    # Tiny models run faster on one thread, and far faster when the machine is busy.
    torch.set_num_threads(1)


@pytest.fixture
def tiny_checkpoint(tmp_path, tokenizer) -> Path:
    """A growlm checkpoint of a freshly initialised tiny model with its tokenizer.json."""
    checkpoint = trainer_modules()
    from growlm.model.llama import Transformer

    tok_file = tmp_path / "tokenizer.json"
    tok_file.write_text(tokenizer.to_str(), encoding="utf-8")
    model = Transformer(TINY)
    meta = {
        "model": TINY.model_dump(),
        "stage": 0,
        "stage_name": "pre",
        "global_step": 1,
        "stage_step": 1,
        "tokens": 0,
        "flops": 0,
        "stage_complete": True,
        "provenance": {},
        "adapters": None,
    }
    return checkpoint.save_checkpoint(
        tmp_path / "pre" / "checkpoints", 1, model.state_dict(), {}, meta, tokenizer=tok_file
    )
