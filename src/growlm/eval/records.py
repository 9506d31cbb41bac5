"""Reading evaluation data files into records, and checked access to their fields.

Every reader yields (record, where) pairs, `where` naming the file and line (or array index)
so that a record of the wrong shape is reported as one line naming the file and the field.

- `read_jsonl`: one JSON object per line, optionally gzip-compressed (.gz).
- `read_json_array`: one JSON array of objects (SciQ's original test.json).
- `read_logiqa_text`: the original LogiQA Test.txt, turned into the hub dataset's records the
  way the EleutherAI/logiqa loader builds them (lm-eval's `logiqa` source): the stripped file
  is cut at blank lines; in each block line 1 is the answer letter, line 2 the passage, line 3
  the question, and every further line an option with its first two characters (the "A." label)
  cut off. Each text field then gets a space after every "." and is stripped, exactly as the
  loader does, so that the prompts equal lm-eval's character for character.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from growlm.errors import GrowlmError

Records = Iterator[tuple[dict, str]]


def get_field(rec: dict, field: str, kind: type, where: str):
    """rec[field], checked to be of `kind`; the error names the file, line and field."""
    if not isinstance(rec, dict):
        raise GrowlmError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if field not in rec:
        raise GrowlmError(f"{where}: missing field {field!r} (has {sorted(rec)[:8]})")
    value = rec[field]
    if kind is int and isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise GrowlmError(f"{where}: field {field!r} should be {kind.__name__}, "
                          f"got {type(value).__name__}")
    return value


def str_list(rec: dict, field: str, where: str, n: int | None = None) -> list[str]:
    """rec[field] as a non-empty list of strings (of exactly `n` when given)."""
    value = get_field(rec, field, list, where)
    if not value or not all(isinstance(v, str) for v in value) or (n and len(value) != n):
        size = f"{n} " if n else ""
        raise GrowlmError(f"{where}: field {field!r} should be a list of {size}strings")
    return value


def gold_index(rec: dict, field: str, n_choices: int, where: str) -> int:
    gold = get_field(rec, field, int, where)
    if not 0 <= gold < n_choices:
        raise GrowlmError(f"{where}: field {field!r} = {gold} is not a choice index "
                          f"(0..{n_choices - 1})")
    return gold


def labelled_choices(rec: dict, key_field: str, where: str) -> tuple[list[str], int]:
    """Hub layout `choices: {text: [...], label: [...]}` + an answer key → (texts, gold)."""
    choices = get_field(rec, "choices", dict, where)
    texts, labels = choices.get("text"), choices.get("label")
    if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
        raise GrowlmError(f"{where}: field 'choices' should hold equal-length 'text' and "
                          "'label' lists")
    key = str(get_field(rec, key_field, str, where)).strip()
    if key not in labels:
        raise GrowlmError(f"{where}: field {key_field!r} = {key!r} is not one of {labels}")
    return texts, labels.index(key)


def _read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise GrowlmError(f"cannot read {path}: {e}") from None


def read_jsonl(path: Path) -> Records:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    yield json.loads(line), where
                except json.JSONDecodeError as e:
                    raise GrowlmError(f"{where}: not valid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise GrowlmError(f"cannot read {path}: {e}") from None


def read_json_array(path: Path) -> Records:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise GrowlmError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise GrowlmError(f"{path}: expected a JSON array of records, got "
                          f"{type(data).__name__}")
    for i, rec in enumerate(data):
        yield rec, f"{path}[{i}]"


def _logiqa_normalize(text: str) -> str:
    return text.replace(".", ". ").strip()


def read_logiqa_text(path: Path) -> Records:
    text = _read_text(path)
    body = text.strip()
    line = 1 + text[: len(text) - len(text.lstrip())].count("\n")
    for block in body.split("\n\n"):
        lines = block.split("\n")
        where = f"{path}:{line}"
        line += len(lines) + 1
        if len(lines) < 4:
            raise GrowlmError(f"{where}: a LogiQA question needs an answer line, a passage, a "
                              f"question and options; this block has {len(lines)} lines")
        yield {"label": lines[0].strip(), "context": _logiqa_normalize(lines[1]),
               "question": _logiqa_normalize(lines[2]),
               "options": [_logiqa_normalize(o[2:]) for o in lines[3:]]}, where
