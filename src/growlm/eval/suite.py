"""`evaluate(model, tokenizer, tasks)`: run several evaluations and collect one results dict.

Used by `growlm eval` and by the trainer for evals scheduled during training (flatten the
result with `flatten_results` for a metrics.jsonl line).

Named suites stand for the task sets the seed papers report; a suite's name in a task list
expands to its tasks, and whenever all of a suite's zero-shot tasks were scored the results
carry the suite's average the way its paper computes it:

- gstack (Du et al. 2024): LAMBADA, ARC-c, ARC-e, LogiQA, PIQA, SciQ, WinoGrande accuracy
  (`acc` for every task), averaged; plus WikiText perplexity, reported beside the average.
- reuse_step (the embedding/head reuse and STEP papers): LAMBADA, HellaSwag, PIQA, ARC-e,
  ARC-c, OpenBookQA, WinoGrande, each task's headline score (acc_norm where lm-eval has it,
  acc for LAMBADA and WinoGrande), averaged; plus WikiText perplexity.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import growlm.eval.perplexity as perplexity
import growlm.eval.wordsim as wordsim
import growlm.eval.zeroshot as zeroshot
from growlm.errors import GrowlmError
from growlm.eval.scoring import max_context
from growlm.eval.tasks import ALIASES, TASKS, load_examples
from growlm.progress import progress as progress_bar

WIKITEXT_FILE = "corpus/wikitext-2-raw/wiki.test.raw"
OTHER_TASKS = ("ppl", "wikitext", "wordsim")
ALL_TASKS = ("ppl", "wikitext", *TASKS, "wordsim")
DEFAULT_TASKS = ("wikitext", *TASKS, "wordsim")


@dataclass(frozen=True)
class Suite:
    zero_shot: tuple[str, ...]  # averaged
    others: tuple[str, ...]  # reported beside the average
    metric: str | None  # the metric averaged; None: each task's headline score


SUITES: dict[str, Suite] = {
    "gstack": Suite(("lambada", "arc_challenge", "arc_easy", "logiqa", "piqa", "sciq",
                     "winogrande"), ("wikitext",), "acc"),
    "reuse_step": Suite(("lambada", "hellaswag", "piqa", "arc_easy", "arc_challenge",
                         "openbookqa", "winogrande"), ("wikitext",), None),
}


def _allowed() -> str:
    return f"{', '.join(ALL_TASKS)}; suites: {', '.join(SUITES)}"


def parse_tasks(spec: str | Sequence[str]) -> list[str]:
    """Canonical task names from "a,b,c" or a list, suites expanded; unknown names refused."""
    names = [t.strip() for t in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for name in filter(None, names):
        if name in SUITES:
            expanded = [*SUITES[name].zero_shot, *SUITES[name].others]
        else:
            expanded = [ALIASES.get(name, name)]
            if expanded[0] not in ALL_TASKS:
                raise GrowlmError(f"unknown task {name!r}; allowed: {_allowed()}")
        out += [t for t in expanded if t not in out]
    if not out:
        raise GrowlmError(f"no tasks given; allowed: {_allowed()}")
    return out


def suite_averages(results: dict) -> dict:
    """{suite: {"score", "metric", "tasks"}} for every suite whose zero-shot tasks all have
    results."""
    out = {}
    for name, suite in SUITES.items():
        if not all(t in results for t in suite.zero_shot):
            continue
        key = suite.metric or "score"
        scores = [results[t][key] for t in suite.zero_shot]
        out[name] = {"score": float(sum(scores) / len(scores)), "metric": suite.metric or "headline",
                     "tasks": list(suite.zero_shot)}
    return out


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """--data-dir when given, else $GROWLM_DATA, else None (tasks needing data then refuse)."""
    chosen = data_dir or os.environ.get("GROWLM_DATA")
    return Path(chosen) if chosen else None


def _needs_tokenizer(tokenizer, task: str) -> None:
    if tokenizer is None:
        raise GrowlmError(f"task {task} needs the model's tokenizer, and none was found "
                          "(no tokenizer.json beside the weights; pass --tokenizer)")


def evaluate(
    model,
    tokenizer,
    tasks: str | Sequence[str],
    *,
    data_dir: str | os.PathLike | None = None,
    val_shards: str | os.PathLike | None = None,
    val_tokens=None,
    source: str = "local",
    limit: int | None = None,
    batch_size: int = 32,
    seq_len: int | None = None,
    stride: int | None = None,
    progress: bool = False,
    bos: str = "auto",
) -> dict:
    """{task: metrics} for each task, plus "average" (the mean headline score of the zero-shot
    tasks run) and each complete suite's average (module docstring) under its name.

    ppl: held-out loss from `val_tokens` (a 1-D token array) or the "val" split of
    `val_shards`; `limit` caps its windows. wikitext: lm-eval's WikiText task on the data
    folder's wiki.test.raw; `limit` caps its documents. Zero-shot tasks: `limit` caps examples.
    wordsim: Spearman rho of embedding and head on each word-similarity set.
    `seq_len` (≤ the model's context) caps the window of every task; `stride` is WikiText's.
    `bos` is the BOS policy setting (growlm.data.tokenizer.bos_policy) for every text task.
    `progress` reports each task as it starts and the scoring inside it (growlm.progress).
    """
    names = parse_tasks(tasks)
    data = resolve_data_dir(data_dir)
    if seq_len is not None and not 1 <= seq_len <= max_context(model):
        raise GrowlmError(f"--seq-len {seq_len} must be between 1 and the model's context "
                          f"length {max_context(model)}")
    if stride is not None:  # honoured or refused: only WikiText's rolling windows have a stride
        window = seq_len or max_context(model)
        if "wikitext" not in names:
            raise GrowlmError(f"--stride applies to the wikitext task only; the tasks are {', '.join(names)}")
        if not 1 <= stride <= window:
            raise GrowlmError(f"--stride {stride} must be between 1 and the context window {window}")
    inputs = _load_inputs(model, tokenizer, names, data, val_shards, val_tokens, source, limit)
    was_training = getattr(model, "training", False)
    model.eval()
    results: dict = {}
    try:
        with progress_bar(len(names), "eval", enabled=progress, unit="task") as bar:
            for name in names:
                bar.set_postfix(task=name)
                results[name] = _run_one(model, tokenizer, name, inputs[name], data, limit,
                                         batch_size, seq_len, stride, progress, bos)
                bar.update(1)
    finally:
        model.train(was_training)
    zs = [n for n in names if n in TASKS]
    if zs:
        scores = [results[n]["score"] for n in zs]
        results["average"] = {"score": float(sum(scores) / len(scores)), "tasks": zs}
    results.update(suite_averages(results))
    return results


def _needs_data(data: Path | None, name: str) -> Path:
    if data is None:
        raise GrowlmError(f"task {name} needs the data folder: pass --data-dir or set "
                          "GROWLM_DATA")
    return data


def _load_inputs(model, tokenizer, names, data, val_shards, val_tokens, source, limit) -> dict:
    """Every task's data, read and checked before anything is scored, so that a missing or
    malformed file is reported in seconds, not after the tasks before it have run."""
    inputs: dict = {}
    for name in names:
        if name == "ppl":
            if val_tokens is None and val_shards is None:
                raise GrowlmError("task ppl needs held-out tokens: pass --val-shards DIR "
                                  "(a prepared growlm shard directory)")
            inputs[name] = (val_tokens if val_tokens is not None
                            else perplexity.shard_tokens(model, val_shards, tokenizer=tokenizer))
            continue
        _needs_tokenizer(tokenizer, name)
        if name == "wikitext":
            pages = perplexity.read_wikitext(_needs_data(data, name) / WIKITEXT_FILE)
            inputs[name] = pages[:limit] if limit else pages
        elif name == "wordsim":
            folder = _needs_data(data, "wordsim")
            for spec in (wordsim.DATASETS[d] for d in wordsim.DEFAULT_DATASETS):
                wordsim.read_pairs(spec, folder / spec.path)
            inputs[name] = folder
        else:
            inputs[name] = load_examples(name, data_dir=data, source=source, limit=limit)
    return inputs


def _run_one(model, tokenizer, name, data_in, data, limit, batch_size, seq_len, stride,
             progress, bos) -> dict:
    if name == "ppl":
        max_tokens = limit * (seq_len or max_context(model)) if limit else None
        return perplexity.token_perplexity(model, data_in, seq_len=seq_len,
                                           batch_size=batch_size, progress=progress,
                                           max_tokens=max_tokens)
    if name == "wikitext":
        return perplexity.wikitext_pages_perplexity(model, tokenizer, data_in,
                                                    max_length=seq_len, stride=stride,
                                                    batch_size=batch_size, bos=bos,
                                                    progress=progress)
    if name == "wordsim":
        return wordsim.word_similarity(model, tokenizer, data_in)
    return zeroshot.evaluate_task(model, tokenizer, name, data_in, batch_size=batch_size,
                                  progress=progress, max_length=seq_len, bos=bos)


def flatten_results(results: dict) -> dict[str, float]:
    """{"hellaswag/acc_norm": 0.31, "wordsim/simlex999/embedding": 0.12, ...}, numbers only."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = float(value)

    walk("", results)
    return flat


def format_table(results: dict) -> str:
    """A plain-text table: task, metric, value (coverage for word similarity)."""
    rows = [("task", "metric", "value")]
    for task, metrics in results.items():
        if task in SUITES:
            rows.append((task, f"average {metrics['metric']} of {len(metrics['tasks'])} tasks",
                         _fmt(metrics["score"])))
            continue
        if task == "wordsim":
            for ds, r in metrics.items():
                rows.append((f"wordsim/{ds}", "rho embedding / head",
                             f"{_fmt(r['embedding'])} / {_fmt(r['head'])}  "
                             f"(coverage {r['kept']}/{r['total']})"))
            continue
        for metric, value in metrics.items():
            if isinstance(value, float) and not metric.endswith("stderr"):
                rows.append((task, metric, _fmt(value)))
            elif metric in ("n", "tokens", "documents"):
                rows.append((task, metric, str(value)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "nan"
    return f"{x:.4f}" if abs(x) < 1000 else f"{x:.1f}"
