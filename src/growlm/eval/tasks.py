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
- SciQ: "{support, left-stripped}\nQuestion: {question}\nAnswer:" + " {choice}", the choices
  being distractor1, distractor2, distractor3 and the correct answer (gold: the last)
- LogiQA: "Passage: {context}\nQuestion: {question}\nChoices:\nA. {o1}\n...D. {o4}\nAnswer:"
  + " {option text}" (the option texts are scored, not their letters)

Local files are MosaicML llm-foundry's jsonl copies and a HellaSwag jsonl (see the shared data
folder's SOURCES.md); they hold the same examples in other layouts, converted here. SciQ and
LogiQA are read from their original release files (test.json, Test.txt), the sources of the
hub datasets lm-eval uses (llm-foundry's LogiQA copy has damaged options; see records.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from growlm.errors import GrowlmError
from growlm.eval.records import (
    Records,
    get_field,
    gold_index,
    labelled_choices,
    read_json_array,
    read_jsonl,
    read_logiqa_text,
    str_list,
)


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
    hub: tuple[str, str | None, str]  # (dataset path, config name, split)
    from_hub: Callable[[dict, str], Example]
    reader: Callable[[Path], Records] = read_jsonl  # the local file's format


def _choice_example(context: str, choices: list[str], gold: int) -> Example:
    return Example(tuple((context, " " + c) for c in choices), gold, tuple(choices))


# ---------------------------------------------------------------- per-task converters


def _arc_context(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def arc_local(rec: dict, where: str) -> Example:
    query = get_field(rec, "query", str, where)
    question = query.removeprefix("Question: ")
    choices = str_list(rec, "choices", where)
    return _choice_example(_arc_context(question), choices, gold_index(rec, "gold", len(choices), where))


def arc_hub(rec: dict, where: str) -> Example:
    texts, gold = labelled_choices(rec, "answerKey", where)
    return _choice_example(_arc_context(get_field(rec, "question", str, where)), texts, gold)


def piqa_local(rec: dict, where: str) -> Example:
    # llm-foundry stores "Question: {goal}\n"; lm-eval's prompt is "Question: {goal}\nAnswer:".
    goal = get_field(rec, "query", str, where).removeprefix("Question: ").removesuffix("\n")
    choices = str_list(rec, "choices", where, n=2)
    return _choice_example(_arc_context(goal), choices, gold_index(rec, "gold", 2, where))


def piqa_hub(rec: dict, where: str) -> Example:
    choices = [get_field(rec, "sol1", str, where), get_field(rec, "sol2", str, where)]
    return _choice_example(_arc_context(get_field(rec, "goal", str, where)), choices,
                           gold_index(rec, "label", 2, where))


def obqa_local(rec: dict, where: str) -> Example:
    choices = str_list(rec, "choices", where)
    return _choice_example(get_field(rec, "query", str, where), choices,
                           gold_index(rec, "gold", len(choices), where))


def obqa_hub(rec: dict, where: str) -> Example:
    texts, gold = labelled_choices(rec, "answerKey", where)
    return _choice_example(get_field(rec, "question_stem", str, where), texts, gold)


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
    ctx = hellaswag_capitalise_tail(get_field(rec, "ctx", str, where))
    endings = str_list(rec, "endings", where)
    return _choice_example(hellaswag_clean(ctx), [hellaswag_clean(e) for e in endings],
                           gold_index(rec, "label", len(endings), where))


def hellaswag_hub(rec: dict, where: str) -> Example:
    ctx = (get_field(rec, "ctx_a", str, where) + " "
           + get_field(rec, "ctx_b", str, where).capitalize())
    query = hellaswag_clean(get_field(rec, "activity_label", str, where) + ": " + ctx)
    endings = str_list(rec, "endings", where)
    return _choice_example(query, [hellaswag_clean(e) for e in endings],
                           gold_index(rec, "label", len(endings), where))


def _winogrande_example(contexts: list[str], rest: str, gold: int) -> Example:
    cont = " " + rest.strip()
    return Example(tuple((c, cont) for c in contexts), gold, tuple(contexts))


def winogrande_local(rec: dict, where: str) -> Example:
    contexts = str_list(rec, "context_options", where, n=2)
    return _winogrande_example(contexts, get_field(rec, "continuation", str, where),
                               gold_index(rec, "gold", 2, where))


def winogrande_hub(rec: dict, where: str) -> Example:
    sentence = get_field(rec, "sentence", str, where)
    if "_" not in sentence:
        raise GrowlmError(f"{where}: field 'sentence' has no '_' blank to fill")
    blank = sentence.index("_")
    options = [get_field(rec, "option1", str, where), get_field(rec, "option2", str, where)]
    answer = get_field(rec, "answer", str, where)
    if answer not in ("1", "2"):
        raise GrowlmError(f"{where}: field 'answer' should be '1' or '2', got {answer!r}")
    return _winogrande_example([sentence[:blank] + o for o in options], sentence[blank + 1:],
                               int(answer) - 1)


def lambada_local(rec: dict, where: str) -> Example:
    word = get_field(rec, "continuation", str, where)
    return Example(((get_field(rec, "context", str, where), " " + word),), 0, (word,))


def lambada_hub(rec: dict, where: str) -> Example:
    words = get_field(rec, "text", str, where).split(" ")
    return Example(((" ".join(words[:-1]), " " + words[-1]),), 0, (words[-1],))


def sciq_hub(rec: dict, where: str) -> Example:
    """lm-eval `sciq`: the support passage (left-stripped; empty leaves a leading newline),
    then the question; the three distractors and the answer, the answer always last."""
    support = get_field(rec, "support", str, where)
    context = f"{support.lstrip()}\nQuestion: {get_field(rec, 'question', str, where)}\nAnswer:"
    choices = [get_field(rec, f, str, where)
               for f in ("distractor1", "distractor2", "distractor3", "correct_answer")]
    return _choice_example(context, choices, 3)


_LOGIQA_LETTERS = "abcd"


def logiqa_hub(rec: dict, where: str) -> Example:
    """lm-eval `logiqa`: passage, question and the lettered options; the option texts are
    scored."""
    options = str_list(rec, "options", where, n=4)
    label = get_field(rec, "label", str, where).strip()
    if label not in _LOGIQA_LETTERS:
        raise GrowlmError(f"{where}: field 'label' = {label!r} should be one of a, b, c, d")
    context = (f"Passage: {get_field(rec, 'context', str, where)}\n"
               f"Question: {get_field(rec, 'question', str, where)}\nChoices:\n"
               + "".join(f"{letter.upper()}. {o}\n" for letter, o in zip(_LOGIQA_LETTERS, options))
               + "Answer:")
    return _choice_example(context, options, _LOGIQA_LETTERS.index(label))


# ---------------------------------------------------------------- registry

_ICL = "eval/llm_foundry_icl"
_BOTH = ("acc", "acc_norm")
TASKS: dict[str, Task] = {
    t.name: t for t in (
        Task("lambada", "last_word", ("acc", "perplexity"), "acc",
             f"{_ICL}/lambada_openai.jsonl", lambada_local,
             ("EleutherAI/lambada_openai", "default", "test"), lambada_hub),
        Task("hellaswag", "choice", _BOTH, "acc_norm", "eval/hellaswag/hellaswag_val.jsonl.gz",
             hellaswag_local, ("Rowan/hellaswag", None, "validation"), hellaswag_hub),
        Task("piqa", "choice", _BOTH, "acc_norm", f"{_ICL}/piqa.jsonl", piqa_local,
             ("baber/piqa", None, "validation"), piqa_hub),
        Task("arc_easy", "choice", _BOTH, "acc_norm", f"{_ICL}/arc_easy.jsonl", arc_local,
             ("allenai/ai2_arc", "ARC-Easy", "test"), arc_hub),
        Task("arc_challenge", "choice", _BOTH, "acc_norm", f"{_ICL}/arc_challenge.jsonl",
             arc_local, ("allenai/ai2_arc", "ARC-Challenge", "test"), arc_hub),
        Task("openbookqa", "choice", _BOTH, "acc_norm", f"{_ICL}/openbook_qa.jsonl", obqa_local,
             ("allenai/openbookqa", "main", "test"), obqa_hub),
        Task("winogrande", "choice", ("acc",), "acc", f"{_ICL}/winogrande.jsonl",
             winogrande_local, ("allenai/winogrande", "winogrande_xl", "validation"),
             winogrande_hub),
        # Local files are the originals the hub datasets were built from; their readers give
        # hub-layout records, so one converter serves both sources.
        Task("sciq", "choice", _BOTH, "acc_norm", "eval/sciq/test.json", sciq_hub,
             ("allenai/sciq", None, "test"), sciq_hub, reader=read_json_array),
        Task("logiqa", "choice", _BOTH, "acc_norm", "eval/logiqa/Test.txt", logiqa_hub,
             ("EleutherAI/logiqa", "logiqa", "test"), logiqa_hub, reader=read_logiqa_text),
    )
}
ALIASES = {"lambada_openai": "lambada", "obqa": "openbookqa", "arc_e": "arc_easy",
           "arc_c": "arc_challenge"}
SOURCES = ("local", "hub")


def get_task(name: str) -> Task:
    task = TASKS.get(ALIASES.get(name, name))
    if task is None:
        raise GrowlmError(f"unknown zero-shot task {name!r}; allowed: {', '.join(TASKS)}")
    return task


def load_local(task: Task, data_dir: str | os.PathLike | None = None,
               path: str | os.PathLike | None = None, limit: int | None = None) -> list[Example]:
    """The task's examples from its local file (`path`, or its place under `data_dir`)."""
    if path is None:
        if data_dir is None:
            raise GrowlmError(f"task {task.name} needs the data folder: pass --data-dir or set "
                              "GROWLM_DATA (or use --source hub)")
        path = Path(data_dir) / task.local_file
    path = Path(path)
    if not path.is_file():
        raise GrowlmError(f"task {task.name}: data file {path} not found")
    out = []
    for rec, where in task.reader(path):
        if limit is not None and len(out) >= limit:
            break
        out.append(task.from_local(rec, where))
    if not out:
        raise GrowlmError(f"task {task.name}: {path} holds no examples")
    return out


def load_hub(task: Task, limit: int | None = None) -> list[Example]:
    """The task's examples from the Hugging Face hub (needs `datasets` and network/cache)."""
    try:
        import datasets
    except ImportError:
        raise GrowlmError("--source hub needs the `datasets` package "
                          "(pip install growlm[datasets])") from None
    path, name, split = task.hub
    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # network, cache or hub errors all mean "cannot get the data"
        raise GrowlmError(f"cannot load {path} ({name or 'default'}, {split}) from the hub: "
                          f"{type(e).__name__}: {e}") from None
    n = len(ds) if limit is None else min(limit, len(ds))
    return [task.from_hub(ds[i], f"{path}[{split}][{i}]") for i in range(n)]


def load_examples(name: str, data_dir=None, source: str = "local", limit: int | None = None,
                  path=None) -> list[Example]:
    task = get_task(name)
    if source == "hub":
        return load_hub(task, limit)
    if source != "local":
        raise GrowlmError(f"unknown data source {source!r}; allowed: {', '.join(SOURCES)}")
    return load_local(task, data_dir, path, limit)
