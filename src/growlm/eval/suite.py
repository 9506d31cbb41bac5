"""`evaluate(model, tokenizer, tasks)`: run several evaluations and collect one results dict.

Used by `growlm eval` and by the trainer for evals scheduled during training (flatten the
result with `flatten_results` for a metrics.jsonl line).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from growlm.errors import GrowlmError
from growlm.eval import perplexity, wordsim, zeroshot
from growlm.eval.scoring import max_context
from growlm.eval.tasks import ALIASES, TASKS

WIKITEXT_FILE = "corpus/wikitext-2-raw/wiki.test.raw"
OTHER_TASKS = ("ppl", "wikitext", "wordsim")
ALL_TASKS = ("ppl", "wikitext", *TASKS, "wordsim")
DEFAULT_TASKS = ("wikitext", *TASKS, "wordsim")


def parse_tasks(spec: str | Sequence[str]) -> list[str]:
    """Canonical task names from "a,b,c" or a list; unknown names are refused."""
    names = [t.strip() for t in spec.split(",")] if isinstance(spec, str) else list(spec)
    out = []
    for name in filter(None, names):
        canonical = ALIASES.get(name, name)
        if canonical not in ALL_TASKS:
            raise GrowlmError(f"unknown task {name!r}; allowed: {', '.join(ALL_TASKS)}")
        if canonical not in out:
            out.append(canonical)
    if not out:
        raise GrowlmError(f"no tasks given; allowed: {', '.join(ALL_TASKS)}")
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
) -> dict:
    """{task: metrics} for each task, plus "average" (the seeds' zero-shot average).

    ppl: held-out loss from `val_tokens` (a 1-D token array) or the "val" split of
    `val_shards`; `limit` caps its windows. wikitext: lm-eval's WikiText task on the data
    folder's wiki.test.raw; `limit` caps its documents. Zero-shot tasks: `limit` caps examples.
    wordsim: Spearman rho of embedding and head on each word-similarity set.
    `seq_len` (≤ the model's context) caps the window of every task; `stride` is WikiText's.
    """
    names = parse_tasks(tasks)
    data = resolve_data_dir(data_dir)
    if seq_len is not None and not 1 <= seq_len <= max_context(model):
        raise GrowlmError(f"--seq-len {seq_len} must be between 1 and the model's context "
                          f"length {max_context(model)}")
    was_training = getattr(model, "training", False)
    model.eval()
    results: dict = {}
    try:
        for name in names:
            results[name] = _run_one(model, tokenizer, name, data, val_shards, val_tokens,
                                     source, limit, batch_size, seq_len, stride, progress)
    finally:
        model.train(was_training)
    zs = [n for n in names if n in TASKS]
    if zs:
        scores = [results[n]["score"] for n in zs]
        results["average"] = {"score": float(sum(scores) / len(scores)), "tasks": zs}
    return results


def _run_one(model, tokenizer, name, data, val_shards, val_tokens, source, limit, batch_size,
             seq_len, stride, progress) -> dict:
    if name == "ppl":
        kwargs = {"seq_len": seq_len, "batch_size": batch_size, "progress": progress,
                  "max_tokens": limit * (seq_len or max_context(model))
                  if limit else None}
        if val_tokens is not None:
            return perplexity.token_perplexity(model, val_tokens, **kwargs)
        if val_shards is None:
            raise GrowlmError("task ppl needs held-out tokens: pass --val-shards DIR "
                              "(a prepared growlm shard directory)")
        return perplexity.shard_perplexity(model, val_shards, **kwargs)
    _needs_tokenizer(tokenizer, name)
    if name == "wikitext":
        if data is None:
            raise GrowlmError("task wikitext needs the data folder: pass --data-dir or set "
                              "GROWLM_DATA")
        return perplexity.wikitext_perplexity(model, tokenizer, data / WIKITEXT_FILE, limit,
                                              max_length=seq_len, stride=stride,
                                              batch_size=batch_size, progress=progress)
    if name == "wordsim":
        return wordsim.word_similarity(model, tokenizer, data)
    return zeroshot.run_task(model, tokenizer, name, data_dir=data, source=source, limit=limit,
                             batch_size=batch_size, progress=progress, max_length=seq_len)


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


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    return f"{x:.4f}" if abs(x) < 1000 else f"{x:.1f}"
