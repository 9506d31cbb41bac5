import json
import sys
import types

import numpy as np
import pytest
import torch

from growlm.data.tokenizer import eos_id
from growlm.errors import GrowlmError
from growlm.model.llama import Transformer, cross_entropy
from growlm.sft.data import read_records, split_holdout, tokenize_records
from growlm.sft.loader import SFTLoader


def test_json_array_and_jsonl_give_the_same_records(kit, tmp_path, data_file):
    array = tmp_path / "capitals.json"
    array.write_text(json.dumps(kit.capital_records(), indent=2))
    from_array, from_lines = read_records(str(array)), read_records(str(data_file))
    assert [r.alpaca for r in from_array] == [r.alpaca for r in from_lines]
    assert from_lines[2].where.endswith("capitals.jsonl: line 3")
    assert from_array[1].where.endswith("capitals.json: line 6")  # indent=2: 4 lines per record
    assert from_lines[0].alpaca == ("What is the capital code of Velmora?", "", "VM-12")


def test_missing_field_names_file_and_line(kit, tmp_path):
    records = kit.capital_records()
    del records[2]["output"]
    path = kit.write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(GrowlmError, match=r"d\.jsonl: line 3: record has no 'output' field"):
        read_records(str(path))
    text = '[\n  {"instruction": "a", "output": "b"},\n\n  {"input": "x",\n   "output": "y"}\n]'
    (tmp_path / "d.json").write_text(text)
    with pytest.raises(GrowlmError, match=r"d\.json: line 4: record has no 'instruction' field"):
        read_records(str(tmp_path / "d.json"))


def test_bad_records_and_files(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "a", "output": 3}\n')
    with pytest.raises(GrowlmError, match=r"line 3: 'output' must be a string, got int"):
        read_records(str(path))
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(GrowlmError, match=r"line 2: not valid JSON"):
        read_records(str(path))
    path.write_text('["not an object"]\n')
    with pytest.raises(GrowlmError, match=r"line 1: a record must be a JSON object"):
        read_records(str(path))
    with pytest.raises(GrowlmError, match="not found"):
        read_records(str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("text", ["", "\n\n", "[]", " [ ]\n"])
def test_empty_dataset(tmp_path, text):
    path = tmp_path / "empty.json"
    path.write_text(text)
    with pytest.raises(GrowlmError, match="empty dataset"):
        read_records(str(path))


def test_chat_records(kit, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
    ]
    records = read_records(str(kit.write_jsonl(tmp_path / "c.jsonl", rows)))
    assert records[0].messages == (("user", "hi"), ("assistant", "yo"))
    assert records[1].messages == (("user", "a"), ("assistant", "b"))
    bad = [rows[0], {"messages": [{"role": "user", "content": "only a question"}]}]
    with pytest.raises(GrowlmError, match="line 2: conversation has no assistant message"):
        read_records(str(kit.write_jsonl(tmp_path / "c.jsonl", bad)))
    bad = [rows[0], {"messages": [{"role": "robot", "content": "x"}]}]
    with pytest.raises(GrowlmError, match="line 2: message 1 has unknown role 'robot'"):
        read_records(str(kit.write_jsonl(tmp_path / "c.jsonl", bad)))
    with pytest.raises(GrowlmError, match="line 2: record has no 'messages' field"):
        read_records(str(kit.write_jsonl(tmp_path / "c.jsonl", [rows[0], {"instruction": "x"}])))


def test_hub_dataset_rows_are_numbered(monkeypatch):
    calls = {}

    def load_dataset(name, split):
        calls["args"] = (name, split)
        return [{"instruction": "a", "output": "b"}, {"instruction": "c"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(
        GrowlmError, match=r"someone/alpaca-like \[train\]: row 2: record has no 'output'"
    ):
        read_records("someone/alpaca-like")
    assert calls["args"] == ("someone/alpaca-like", "train")


def test_tokenized_example_masks_the_prompt(kit, tokenizer, records_of):
    records = records_of(kit.capital_records()[:1])
    (ex, stats) = tokenize_records(records, kit.QA, tokenizer, eos_id(tokenizer), 64)
    prompt = tokenizer.encode(
        kit.QA.prompt_text(kit.capital_records()[0]["instruction"]), add_special_tokens=False
    ).ids
    answer = tokenizer.encode("VM-12", add_special_tokens=False).ids
    eos = eos_id(tokenizer)
    # A byte-level BPE puts nothing in front of a text (BOS policy), so the prompt comes first.
    assert ex.tokens[0].tolist() == [*prompt, *answer, eos]
    assert ex.train[0].tolist() == [False] * len(prompt) + [True] * (len(answer) + 1)
    assert stats.train_tokens == len(answer) + 1 and stats.truncated == stats.dropped == 0


def test_special_token_text_in_a_record_stays_text(kit, tokenizer, records_of):
    records = records_of([{"instruction": "say <|endoftext|>", "output": "<|endoftext|>"}])
    ex, _ = tokenize_records(records, kit.QA, tokenizer, eos_id(tokenizer), 64)
    eos = eos_id(tokenizer)
    assert (ex.tokens[0] == eos).sum() == 1  # only the final EOS


def test_too_long_examples_truncate_with_a_warning(kit, tokenizer, records_of):
    records = records_of(
        kit.capital_records()[:3]
        + [
            {
                "instruction": "long " * 40,
                "output": "x",
            },  # the prompt alone overflows: no response left
            {"instruction": "short", "output": "y " * 40},
        ]
    )
    with pytest.warns(
        UserWarning,
        match=r"2 of 5 examples are longer.*truncated 1 at the end; dropped 1 that kept no resp",
    ):
        ex, stats = tokenize_records(records, kit.QA, tokenizer, eos_id(tokenizer), 32)
    assert (stats.overlong, stats.truncated, stats.dropped, stats.examples) == (2, 1, 1, 4)
    assert len(ex.tokens[-1]) == 33 and ex.train[-1][-1]  # cut at seq_len + 1, response kept


def test_too_long_examples_drop_and_count(kit, tokenizer, records_of):
    records = records_of(
        kit.capital_records()[:3] + [{"instruction": "short", "output": "y " * 40}]
    )
    with pytest.warns(UserWarning, match=r"1 of 4 examples.*dropped 1"):
        ex, stats = tokenize_records(
            records, kit.QA, tokenizer, eos_id(tokenizer), 32, overlong="drop"
        )
    assert stats.dropped == 1 and len(ex) == 3
    with (
        pytest.raises(GrowlmError, match="all 4 examples are longer than the context"),
        pytest.warns(UserWarning),
    ):
        tokenize_records(records, kit.QA, tokenizer, eos_id(tokenizer), 4, overlong="drop")


def test_holdout_split_is_seeded_and_disjoint(kit, tokenizer, records_of):
    ex, _ = tokenize_records(
        records_of(kit.capital_records()), kit.QA, tokenizer, eos_id(tokenizer), 64
    )
    train, val = split_holdout(ex, 0.25, 100, seed=3)
    assert (len(train), len(val)) == (6, 2)
    seen = {t.tobytes() for t in train.tokens}
    assert not any(t.tobytes() in seen for t in val.tokens)
    again = split_holdout(ex, 0.25, 100, seed=3)[1]
    assert [t.tolist() for t in again.tokens] == [t.tolist() for t in val.tokens]
    assert split_holdout(ex, 0.1, 100, seed=3)[1] is None  # 10% of 8 rounds down to none


def test_prompt_targets_do_not_change_the_loss(kit, tokenizer, records_of):
    """The loss sees response tokens only: corrupting every prompt target leaves it unchanged,
    corrupting one response target changes it."""
    ex, _ = tokenize_records(
        records_of(kit.capital_records()), kit.QA, tokenizer, eos_id(tokenizer), 48
    )
    x, y = SFTLoader(ex, 48, seed=0, packing=True, pad_id=eos_id(tokenizer)).next_batch(4)
    trained = y != -100
    full = x.roll(-1, dims=1)  # unmasked next tokens (the last one is only known where trained)
    full[:, -1] = torch.where(trained[:, -1], y[:, -1], 0)
    assert torch.equal(y[trained], full[trained])
    model = Transformer(kit.TINY)
    logits = model(x)
    loss = cross_entropy(logits, y)
    g = torch.Generator().manual_seed(1)
    noisy = torch.where(
        trained, full, torch.randint(0, kit.TINY.vocab_size, full.shape, generator=g)
    )
    assert torch.equal(cross_entropy(logits, torch.where(trained, noisy, -100)), loss)
    # ...while the same targets unmasked would give a different loss, and so does a response change
    assert not torch.isclose(cross_entropy(logits, noisy), loss)
    changed = y.clone()
    first = trained.nonzero()[0]
    changed[first[0], first[1]] = (changed[first[0], first[1]] + 1) % kit.TINY.vocab_size
    assert not torch.isclose(cross_entropy(logits, changed), loss)
    prompt_mask = np.concatenate([~m[1:] for m in ex.train])
    assert prompt_mask.sum() > 2 * sum(m.sum() for m in ex.train)  # prompts dominate the tokens


@pytest.fixture
def records_of(kit, tmp_path):
    def read(rows):
        return read_records(str(kit.write_jsonl(tmp_path / "rows.jsonl", rows)))

    return read
