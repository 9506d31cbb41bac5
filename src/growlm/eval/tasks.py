"""Zero-shot tasks in one internal format, read from local files or the Hugging Face hub.

Every task becomes a list of `Example`s: the (context, continuation) pairs to score, one per
choice, the gold index, and the choice strings whose length acc_norm divides by. The prompts
are lm-evaluation-harness's (v0.4) zero-shot templates:

- ARC-Easy/Challenge: "Question: {question}\\nAnswer:" + " {choice}"
- PIQA: "Question: {goal}\\nAnswer:" + " {solution}"
- OpenBookQA: "{question_stem}" + " {choice}"
- HellaSwag: "{activity_label}: {ctx_a} {ctx_b capitalised}" + " {ending}", after lm-eval's
  clean-up of WikiHow artefacts ("[title]" → ". ", other "[...]" tags removed, double spaces)
- WinoGrande (partial scoring): "{sentence up to the blank}{option}" + " {rest of sentence}"
- LAMBADA (OpenAI): "{text without its last word}" + " {last word}"

Local files are MosaicML llm-foundry's jsonl copies and a HellaSwag jsonl (see the shared data
folder's SOURCES.md); they hold the same examples in other layouts, converted here.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from growlm.errors import GrowlmError


@dataclass(frozen=True)
class Example:
    pairs: tuple[tuple[str, str], ...]  # (context, continuation) scored for each choice
    gold: int
    choices: tuple[str, ...]  # the choice strings; acc_norm divides by their length in chars


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "choice": argmax over choices; "last_word": greedy match + perplexity
    metrics: tuple[str, ...]
    headline: str  # the metric the seed papers report (acc_norm where lm-eval has it)
    local_file: str  # relative to the data folder
    from_local: Callable[[dict, str], Example]
    hf: tuple[str, str | None, str]  # (dataset path, config name, split)
    from_hf: Callable[[dict, str], Example]


# ---------------------------------------------------------------- field access


def _get(rec: dict, field: str, kind: type, where: str):
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


def _str_list(rec: dict, field: str, where: str, n: int | None = None) -> list[str]:
    value = _get(rec, field, list, where)
    if not value or not all(isinstance(v, str) for v in value) or (n and len(value) != n):
        size = f"{n} " if n else ""
        raise GrowlmError(f"{where}: field {field!r} should be a list of {size}strings")
    return value


def _gold(rec: dict, field: str, n_choices: int, where: str) -> int:
    gold = _get(rec, field, int, where)
    if not 0 <= gold < n_choices:
        raise GrowlmError(f"{where}: field {field!r} = {gold} is not a choice index "
                          f"(0..{n_choices - 1})")
    return gold


def _labelled_choices(rec: dict, key_field: str, where: str) -> tuple[list[str], int]:
    """Hub layout `choices: {text: [...], label: [...]}` + an answer key → (texts, gold)."""
    choices = _get(rec, "choices", dict, where)
    texts, labels = choices.get("text"), choices.get("label")
    if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
        raise GrowlmError(f"{where}: field 'choices' should hold equal-length 'text' and "
                          "'label' lists")
    key = str(_get(rec, key_field, str, where)).strip()
    if key not in labels:
        raise GrowlmError(f"{where}: field {key_field!r} = {key!r} is not one of {labels}")
    return texts, labels.index(key)


def _choice_example(context: str, choices: list[str], gold: int) -> Example:
    return Example(tuple((context, " " + c) for c in choices), gold, tuple(choices))


# ---------------------------------------------------------------- per-task converters


def _arc_context(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def arc_local(rec: dict, where: str) -> Example:
    query = _get(rec, "query", str, where)
    question = query.removeprefix("Question: ")
    choices = _str_list(rec, "choices", where)
    return _choice_example(_arc_context(question), choices, _gold(rec, "gold", len(choices), where))


def arc_hf(rec: dict, where: str) -> Example:
    texts, gold = _labelled_choices(rec, "answerKey", where)
    return _choice_example(_arc_context(_get(rec, "question", str, where)), texts, gold)


def piqa_local(rec: dict, where: str) -> Example:
    # llm-foundry stores "Question: {goal}\n"; lm-eval's prompt is "Question: {goal}\nAnswer:".
    goal = _get(rec, "query", str, where).removeprefix("Question: ").removesuffix("\n")
    choices = _str_list(rec, "choices", where, n=2)
    return _choice_example(_arc_context(goal), choices, _gold(rec, "gold", 2, where))


def piqa_hf(rec: dict, where: str) -> Example:
    choices = [_get(rec, "sol1", str, where), _get(rec, "sol2", str, where)]
    return _choice_example(_arc_context(_get(rec, "goal", str, where)), choices,
                           _gold(rec, "label", 2, where))


def obqa_local(rec: dict, where: str) -> Example:
    choices = _str_list(rec, "choices", where)
    return _choice_example(_get(rec, "query", str, where), choices,
                           _gold(rec, "gold", len(choices), where))


def obqa_hf(rec: dict, where: str) -> Example:
    texts, gold = _labelled_choices(rec, "answerKey", where)
    return _choice_example(_get(rec, "question_stem", str, where), texts, gold)


def hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag clean-up of WikiHow artefacts."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


_SENTENCE_END = re.compile(r"^(.*[.!?\"']) (\S.*)$")


def hellaswag_capitalise_tail(ctx: str) -> str:
    """Capitalise ctx_b inside a joined "label: ctx_a ctx_b" string (local files lack the split).

    lm-eval builds the context from ctx_a + " " + ctx_b.capitalize(); the local file only has
    the joined text. ctx_b is the unfinished sentence at the end: when the context does not end
    in sentence punctuation, the part after the last sentence end is ctx_b. When it does end in
    punctuation ctx_b was empty (WikiHow) and nothing changes. An approximation: it cannot see a
    ctx_b that itself contains a sentence end.
    """
    label, sep, body = ctx.partition(": ")
    if not sep or not body or body.rstrip()[-1:] in ".!?\"'":
        return ctx
    m = _SENTENCE_END.match(body)
    if m is None:
        return ctx
    return f"{label}: {m.group(1)} {m.group(2).capitalize()}"


def hellaswag_local(rec: dict, where: str) -> Example:
    ctx = hellaswag_capitalise_tail(_get(rec, "ctx", str, where))
    endings = _str_list(rec, "endings", where)
    return _choice_example(hellaswag_clean(ctx), [hellaswag_clean(e) for e in endings],
                           _gold(rec, "label", len(endings), where))


def hellaswag_hf(rec: dict, where: str) -> Example:
    ctx = (_get(rec, "ctx_a", str, where) + " "
           + _get(rec, "ctx_b", str, where).capitalize())
    query = hellaswag_clean(_get(rec, "activity_label", str, where) + ": " + ctx)
    endings = _str_list(rec, "endings", where)
    return _choice_example(query, [hellaswag_clean(e) for e in endings],
                           _gold(rec, "label", len(endings), where))


def _winogrande_example(contexts: list[str], rest: str, gold: int) -> Example:
    cont = " " + rest.strip()
    return Example(tuple((c, cont) for c in contexts), gold, tuple(contexts))


def winogrande_local(rec: dict, where: str) -> Example:
    contexts = _str_list(rec, "context_options", where, n=2)
    return _winogrande_example(contexts, _get(rec, "continuation", str, where),
                               _gold(rec, "gold", 2, where))


def winogrande_hf(rec: dict, where: str) -> Example:
    sentence = _get(rec, "sentence", str, where)
    if "_" not in sentence:
        raise GrowlmError(f"{where}: field 'sentence' has no '_' blank to fill")
    blank = sentence.index("_")
    options = [_get(rec, "option1", str, where), _get(rec, "option2", str, where)]
    answer = _get(rec, "answer", str, where)
    if answer not in ("1", "2"):
        raise GrowlmError(f"{where}: field 'answer' should be '1' or '2', got {answer!r}")
    return _winogrande_example([sentence[:blank] + o for o in options], sentence[blank + 1:],
                               int(answer) - 1)


def lambada_local(rec: dict, where: str) -> Example:
    word = _get(rec, "continuation", str, where)
    return Example(((_get(rec, "context", str, where), " " + word),), 0, (word,))


def lambada_hf(rec: dict, where: str) -> Example:
    words = _get(rec, "text", str, where).split(" ")
    return Example(((" ".join(words[:-1]), " " + words[-1]),), 0, (words[-1],))


# ---------------------------------------------------------------- registry

_ICL = "eval/llm_foundry_icl"
_BOTH = ("acc", "acc_norm")
TASKS: dict[str, Task] = {
    t.name: t for t in (
        Task("lambada", "last_word", ("acc", "perplexity"), "acc",
             f"{_ICL}/lambada_openai.jsonl", lambada_local,
             ("EleutherAI/lambada_openai", "default", "test"), lambada_hf),
        Task("hellaswag", "choice", _BOTH, "acc_norm", "eval/hellaswag/hellaswag_val.jsonl.gz",
             hellaswag_local, ("Rowan/hellaswag", None, "validation"), hellaswag_hf),
        Task("piqa", "choice", _BOTH, "acc_norm", f"{_ICL}/piqa.jsonl", piqa_local,
             ("baber/piqa", None, "validation"), piqa_hf),
        Task("arc_easy", "choice", _BOTH, "acc_norm", f"{_ICL}/arc_easy.jsonl", arc_local,
             ("allenai/ai2_arc", "ARC-Easy", "test"), arc_hf),
        Task("arc_challenge", "choice", _BOTH, "acc_norm", f"{_ICL}/arc_challenge.jsonl",
             arc_local, ("allenai/ai2_arc", "ARC-Challenge", "test"), arc_hf),
        Task("openbookqa", "choice", _BOTH, "acc_norm", f"{_ICL}/openbook_qa.jsonl", obqa_local,
             ("allenai/openbookqa", "main", "test"), obqa_hf),
        Task("winogrande", "choice", ("acc",), "acc", f"{_ICL}/winogrande.jsonl",
             winogrande_local, ("allenai/winogrande", "winogrande_xl", "validation"),
             winogrande_hf),
    )
}
ALIASES = {"lambada_openai": "lambada", "obqa": "openbookqa", "arc_e": "arc_easy",
           "arc_c": "arc_challenge"}


def get_task(name: str) -> Task:
    task = TASKS.get(ALIASES.get(name, name))
    if task is None:
        raise GrowlmError(f"unknown zero-shot task {name!r}; allowed: {', '.join(TASKS)}")
    return task


def _read_jsonl(path: Path) -> Iterator[tuple[dict, str]]:
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


def load_local(task: Task, data_dir: str | os.PathLike | None = None,
               path: str | os.PathLike | None = None, limit: int | None = None) -> list[Example]:
    """The task's examples from its local file (`path`, or its place under `data_dir`)."""
    if path is None:
        if data_dir is None:
            raise GrowlmError(f"task {task.name} needs the data folder: pass --data-dir or set "
                              "GROWLM_DATA (or use --source hf)")
        path = Path(data_dir) / task.local_file
    path = Path(path)
    if not path.is_file():
        raise GrowlmError(f"task {task.name}: data file {path} not found")
    out = []
    for rec, where in _read_jsonl(path):
        if limit is not None and len(out) >= limit:
            break
        out.append(task.from_local(rec, where))
    if not out:
        raise GrowlmError(f"task {task.name}: {path} holds no examples")
    return out


def load_hf(task: Task, limit: int | None = None) -> list[Example]:
    """The task's examples from the Hugging Face hub (needs `datasets` and network/cache)."""
    try:
        import datasets
    except ImportError:
        raise GrowlmError("--source hf needs the `datasets` package "
                          "(pip install growlm[datasets])") from None
    path, name, split = task.hf
    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # network, cache or hub errors all mean "cannot get the data"
        raise GrowlmError(f"cannot load {path} ({name or 'default'}, {split}) from the hub: "
                          f"{type(e).__name__}: {e}") from None
    n = len(ds) if limit is None else min(limit, len(ds))
    return [task.from_hf(ds[i], f"{path}[{split}][{i}]") for i in range(n)]


def load_examples(name: str, data_dir=None, source: str = "local", limit: int | None = None,
                  path=None) -> list[Example]:
    task = get_task(name)
    if source == "hf":
        return load_hf(task, limit)
    if source != "local":
        raise GrowlmError(f"unknown data source {source!r}; allowed: local, hf")
    return load_local(task, data_dir, path, limit)
