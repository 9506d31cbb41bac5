"""`builtin:tiny-instructions`: growlm's own offline instruction set for trying `growlm sft`."""

import json

import pytest

from growlm.errors import GrowlmError
from growlm.sft.builtin import N_RECORDS, builtin_records
from growlm.sft.data import read_records

NAME = "builtin:tiny-instructions"


def test_the_set_is_fixed_alpaca_records_and_correct():
    records = builtin_records(NAME)
    assert len(records) == N_RECORDS and records == builtin_records(NAME)  # same everywhere
    assert all(set(r) == {"instruction", "input", "output"} and r["instruction"] and r["output"]
               for r in records)
    assert len({json.dumps(r) for r in records}) > N_RECORDS // 2  # varied, not one template
    for r in records:  # the templated answers are right
        words = r["instruction"].split()
        if r["instruction"].startswith("What is") and "plus" in words:
            a, b = int(words[2]), int(words[4].rstrip("?"))
            assert r["output"] == f"{a} plus {b} is {a + b}."
        elif r["instruction"].startswith("Sort"):
            numbers = [int(x) for x in r["input"].split(", ")]
            assert r["output"] == ", ".join(map(str, sorted(numbers)))
        elif r["instruction"].startswith("Write these words in reverse"):
            assert r["output"].split() == r["input"].split()[::-1]
        elif r["instruction"].startswith("How many words"):
            assert r["output"] == f"There are {len(r['input'].split())} words."
        elif r["instruction"].startswith("Write this text in capital"):
            assert r["output"] == r["input"].upper()


def test_read_records_takes_the_builtin_name(tmp_path, monkeypatch):
    records = read_records(NAME)
    assert len(records) == N_RECORDS and records[0].where == f"{NAME}: record 1"
    assert records[0].alpaca[0] == builtin_records(NAME)[0]["instruction"]
    monkeypatch.chdir(tmp_path)  # a file of that name wins, as for every path
    (tmp_path / "builtin:tiny-instructions").write_text('{"instruction": "a", "output": "b"}\n')
    assert [r.alpaca for r in read_records(NAME)] == [("a", "", "b")]


def test_an_unknown_builtin_set_is_one_line():
    with pytest.raises(GrowlmError, match="builtin:tiny-instructions") as e:
        read_records("builtin:alpaca")
    assert "unknown built-in instruction set 'builtin:alpaca'" in str(e.value)
