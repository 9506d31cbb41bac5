"""Instruction data: read records, render them with a template, tokenize with loss masks.

Accepted inputs (`read_records`):
  * a local ``.json`` file holding a JSON array of records, or a JSON-lines file
    (``.jsonl``, ``.ndjson``, or ``.json`` whose first character is not ``[``);
  * a HF hub dataset name (read with `datasets`, imported only then), e.g. ``tatsu-lab/alpaca``;
  * ``builtin:tiny-instructions``, growlm's own small offline set (growlm.sft.builtin).

Record formats (decided by the first record unless given):
  * Alpaca: ``{"instruction": str, "input": str (optional), "output": str}``;
  * chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``,
    or ShareGPT's ``{"conversations": [{"from": "human"|"gpt"|"system", "value": str}]}``.

Tokenized layout of one example (`tokenize_records`)::

    START  prompt tokens  response tokens  EOS  [prompt  response  EOS ...]
    -------------------  ------------------------  ...
    masked (no loss)     loss

START is the BOS policy's start (growlm.data.tokenizer): `<s>` for a Llama-2-layout tokenizer,
nothing for GPT-2's, exactly as in pretraining documents. Prompt and response are tokenized
separately, so the prompt's tokens are the same ones `growlm generate` feeds the model, and
the prompt/response boundary is exact.
Literal special-token text inside records (e.g. "<|endoftext|>") is encoded as plain text.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from growlm.data.tokenizer import bos_policy
from growlm.errors import GrowlmError
from growlm.sft.builtin import builtin_records, is_builtin
from growlm.sft.template import ROLES, Segment, Template

ROLE_ALIASES = {**{r: r for r in ROLES}, "human": "user", "gpt": "assistant"}
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines")


@dataclass(frozen=True)
class Record:
    """One instruction record; `where` names it in messages ("data.jsonl: line 7")."""

    where: str
    alpaca: tuple[str, str, str] | None = None  # (instruction, input, output)
    messages: tuple[tuple[str, str], ...] | None = None  # ((role, content), ...)

    def render(self, template: Template) -> list[Segment]:
        if self.alpaca is not None:
            return template.render_alpaca(*self.alpaca)
        return template.render_chat(list(self.messages or ()))


# ---------------------------------------------------------------- reading


def read_records(spec: str, fmt: str = "auto", split: str = "train") -> list[Record]:
    """All records of a local JSON/JSONL file or a HF hub dataset (`split`).

    `fmt` is "auto", "alpaca" or "chat". Raises GrowlmError naming the file and the
    1-based line (row, for hub datasets) of the first bad record, or for an empty dataset.
    """
    if fmt not in ("auto", "alpaca", "chat"):
        raise GrowlmError(f"data format {fmt!r} is not one of auto, alpaca, chat")
    kind = None if fmt == "auto" else fmt
    records: list[Record] = []
    for where, obj in _raw_rows(spec, split):
        if not isinstance(obj, dict):
            raise GrowlmError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
        if kind is None:
            kind = "chat" if ("messages" in obj or "conversations" in obj) else "alpaca"
        records.append(_alpaca_record(obj, where) if kind == "alpaca" else _chat_record(obj, where))
    if not records:
        raise GrowlmError(f"{spec}: no records (empty dataset)")
    return records


def _raw_rows(spec: str, split: str) -> Iterator[tuple[str, object]]:
    path = Path(spec).expanduser()
    if is_builtin(spec) and not path.exists():
        return ((f"{spec}: record {i}", r) for i, r in enumerate(builtin_records(spec), 1))
    if path.is_dir():
        raise GrowlmError(f"{spec} is a directory; give a .json/.jsonl file or a HF dataset name")
    if path.is_file():
        text = _read_text(path)
        stripped = text.lstrip()
        if path.suffix.lower() not in JSONL_SUFFIXES and stripped.startswith("["):
            return _json_array_rows(path, text)
        return _jsonl_rows(path, text)
    if _looks_like_path(spec):
        raise GrowlmError(
            f"instruction data {spec!r} not found (give a .json/.jsonl file or a HF dataset name)"
        )
    return _hub_rows(spec, split)


def _looks_like_path(text: str) -> bool:
    return (
        text.lower().endswith((".json", *JSONL_SUFFIXES))
        or text.startswith((".", "/", "~", "\\"))
        or text.count("/") > 1
        or "\\" in text
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise GrowlmError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise GrowlmError(f"cannot read {path}: {e.strerror}") from None


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[str, object]]:
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028, which splitlines breaks on.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise GrowlmError(
                f"{path}: line {lineno}: not valid JSON ({e.msg}); expected one record per line"
            ) from None
        yield f"{path}: line {lineno}", obj


_WS = re.compile(r"[ \t\n\r]*")


def _json_array_rows(path: Path, text: str) -> Iterator[tuple[str, object]]:
    """Decode a JSON array element by element so each record knows the line it starts on."""
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        return _WS.match(text, i).end()

    def bad(i: int, what: str) -> GrowlmError:
        return GrowlmError(
            f"{path}: line {text.count(chr(10), 0, i) + 1}: malformed JSON array ({what})"
        )

    i = skip(text.index("[") + 1)
    line, counted = 1, 0
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise GrowlmError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
            line += text.count("\n", counted, i)
            counted = i
            yield f"{path}: line {line}", obj
            i = skip(end)
            if text.startswith(",", i):
                i = skip(i + 1)
            elif text.startswith("]", i):
                i += 1
                break
            else:
                raise bad(i, "expected ',' or ']'")
    if skip(i) != len(text):
        raise bad(i, "text after the closing ']'")


def _hub_rows(name: str, split: str) -> Iterator[tuple[str, object]]:
    try:
        import datasets
    except ImportError:
        raise GrowlmError(
            f"{name!r} is not a local file; reading HF hub datasets needs the `datasets` "
            "package (pip install 'growlm[datasets]')"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, missing dataset or split: keep it one line
        first = (str(e).strip() or type(e).__name__).splitlines()[0][:300]
        raise GrowlmError(f"cannot load HF dataset {name!r} (split {split!r}): {first}") from None
    for i, row in enumerate(ds, 1):
        yield f"{name} [{split}]: row {i}", row


def _alpaca_record(obj: dict, where: str) -> Record:
    for key in ("instruction", "output"):
        if key not in obj:
            raise GrowlmError(
                f"{where}: record has no {key!r} field (Alpaca records need 'instruction' "
                "and 'output'; 'input' is optional; chat records need 'messages')"
            )
    values = []
    for key in ("instruction", "input", "output"):
        value = obj.get(key)
        if value is None and key == "input":
            value = ""
        if not isinstance(value, str):
            raise GrowlmError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        values.append(value)
    return Record(where, alpaca=(values[0], values[1], values[2]))


def _chat_record(obj: dict, where: str) -> Record:
    if "messages" in obj:
        msgs, role_key, text_key = obj["messages"], "role", "content"
    elif "conversations" in obj:  # ShareGPT layout
        msgs, role_key, text_key = obj["conversations"], "from", "value"
    else:
        raise GrowlmError(
            f"{where}: record has no 'messages' field (chat records need "
            "messages = [{role, content}, ...])"
        )
    if not isinstance(msgs, list) or not msgs:
        raise GrowlmError(
            f"{where}: 'messages' must be a non-empty list of {{role, content}} objects"
        )
    out = []
    for j, m in enumerate(msgs, 1):
        if not isinstance(m, dict) or role_key not in m or text_key not in m:
            raise GrowlmError(f"{where}: message {j} needs {role_key!r} and {text_key!r} fields")
        role = ROLE_ALIASES.get(m[role_key]) if isinstance(m[role_key], str) else None
        if role is None:
            raise GrowlmError(
                f"{where}: message {j} has unknown role {m[role_key]!r} "
                f"(allowed: {', '.join(ROLE_ALIASES)})"
            )
        if not isinstance(m[text_key], str):
            raise GrowlmError(f"{where}: message {j}: {text_key!r} must be a string")
        out.append((role, m[text_key]))
    if not any(role == "assistant" for role, _ in out):
        raise GrowlmError(f"{where}: conversation has no assistant message (nothing to train on)")
    return Record(where, messages=tuple(out))


# ---------------------------------------------------------------- tokenizing


@dataclass
class Examples:
    """Tokenized examples: `tokens[i]` int32 ids; `train[i][t]` is True where token t is trained."""

    tokens: list[np.ndarray]
    train: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, index) -> Examples:
        return Examples([self.tokens[i] for i in index], [self.train[i] for i in index])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for toks, mask in zip(self.tokens, self.train):
            h.update(np.int64(len(toks)).tobytes())
            h.update(toks.astype("<i4").tobytes())
            h.update(np.packbits(mask).tobytes())
        return h.hexdigest()[:16]


@dataclass
class TokenizeStats:
    records: int
    examples: int
    overlong: int  # longer than the context
    truncated: int
    dropped: int
    tokens: int
    train_tokens: int

    def describe(self) -> str:
        return (
            f"{self.records:,} records → {self.examples:,} examples ({self.tokens:,} tokens, "
            f"{self.train_tokens:,} trained); {self.truncated:,} truncated, "
            f"{self.dropped:,} dropped"
        )


def text_encoder(tokenizer: Tokenizer) -> Tokenizer:
    """A copy that encodes special-token text found in records as plain text."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.encode_special_tokens = True
    return copy


def encode_example(
    segments: list[Segment], ids_of: list[list[int]], eos: int, start: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Assemble start + segments (+ EOS after each trained one) and the target mask."""
    tokens, train = list(start), [False] * len(start)
    for seg, ids in zip(segments, ids_of):
        tokens += ids
        train += [seg.train] * len(ids)
        if seg.train:
            tokens.append(eos)
            train.append(True)
    return np.asarray(tokens, dtype=np.int32), np.asarray(train, dtype=bool)


def tokenize_records(
    records: list[Record],
    template: Template,
    tokenizer: Tokenizer,
    eos_id: int,
    seq_len: int,
    overlong: str = "truncate",
) -> tuple[Examples, TokenizeStats]:
    """Tokenize records; examples longer than seq_len + 1 tokens are truncated or dropped.

    A row of `seq_len` inputs holds `seq_len + 1` tokens (inputs plus the last target), so that is
    the longest example that fits. A truncated example that keeps no response token is dropped.
    """
    if overlong not in ("truncate", "drop"):
        raise GrowlmError(f"overlong = {overlong!r}: use 'truncate' or 'drop'")
    rendered = [r.render(template) for r in records]
    texts = [s.text for segs in rendered for s in segs]
    encoded = text_encoder(tokenizer).encode_batch(texts, add_special_tokens=False)
    start = bos_policy(tokenizer).start
    limit = seq_len + 1
    tokens, train = [], []
    n_over = n_trunc = n_drop = 0
    k = 0
    for segs in rendered:
        ids = [encoded[k + j].ids for j in range(len(segs))]
        k += len(segs)
        toks, mask = encode_example(segs, ids, eos_id, start)
        if len(toks) > limit:
            n_over += 1
            if overlong == "drop" or not mask[:limit].any():
                n_drop += 1
                continue
            toks, mask = toks[:limit], mask[:limit]
            n_trunc += 1
        tokens.append(toks)
        train.append(mask)
    _warn_overlong(len(records), n_over, n_trunc, n_drop, limit, overlong)
    if not tokens:
        raise GrowlmError(
            f"all {len(records)} examples are longer than the context ({limit} tokens = "
            "seq_len + 1) or lost their response to truncation; raise data.seq_len"
        )
    stats = TokenizeStats(
        len(records),
        len(tokens),
        n_over,
        n_trunc,
        n_drop,
        sum(len(t) for t in tokens),
        sum(int(m.sum()) for m in train),
    )
    return Examples(tokens, train), stats


def _warn_overlong(
    total: int, n_over: int, n_trunc: int, n_drop: int, limit: int, mode: str
) -> None:
    if not n_over:
        return
    head = (
        f"{n_over:,} of {total:,} examples are longer than the context "
        f"({limit} tokens = seq_len + 1)"
    )
    if mode == "drop":
        warnings.warn(f"{head}: dropped {n_drop:,} (sft.overlong = 'drop')", stacklevel=3)
        return
    parts = [f"truncated {n_trunc:,} at the end"] if n_trunc else []
    if n_drop:
        parts.append(f"dropped {n_drop:,} that kept no response token")
    warnings.warn(f"{head}: {'; '.join(parts)} (sft.overlong = 'truncate')", stacklevel=3)


@dataclass
class SFTData:
    """What `growlm sft` hands the trainer: train/val examples and how to batch them."""

    train: Examples
    val: Examples | None
    tokenizer_path: Path
    pad_id: int
    packing: bool
    stats: TokenizeStats


def split_holdout(
    examples: Examples, fraction: float, max_examples: int, seed: int
) -> tuple[Examples, Examples | None]:
    """(train, val): a seeded random `fraction` (at most `max_examples`) held out for val loss."""
    n_val = min(int(len(examples) * fraction), max_examples, len(examples) - 1)
    if n_val <= 0:
        return examples, None
    order = np.random.default_rng([seed & 0xFFFFFFFF, 0x5F7]).permutation(len(examples))
    return examples.subset(np.sort(order[n_val:])), examples.subset(np.sort(order[:n_val]))
