"""Zero-shot scoring with lm-evaluation-harness's definitions.

- acc: the choice with the highest summed log-likelihood of its continuation tokens is right.
- acc_norm: the same after dividing each log-likelihood by the choice string's length in
  characters (lm-eval's definition; not per token).
- LAMBADA: acc is 1 when greedy decoding reproduces every token of the last word; perplexity is
  exp(-mean over examples of the word's summed log-likelihood).

All choices of all questions go through one batched scorer (see `scoring.py`), so many
questions share a forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from growlm.data.tokenizer import BosPolicy, bos_policy
from growlm.eval.scoring import Request, score_requests
from growlm.eval.tasks import Example, Task, get_task, load_examples


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]],
                 policy: BosPolicy | None = None) -> list[Request]:
    """Token ids of each (context, continuation), split the way lm-eval splits them.

    Trailing whitespace of the context moves to the continuation; context + continuation is
    encoded as one string and the continuation is what follows the context's own tokens, so
    the tokens at the seam are those the model would see in running text. Both encodings open
    with the BOS policy's `start` tokens (growlm.data.tokenizer); an empty context becomes
    the policy's prefix token, unless the continuation itself starts with it (lm-eval's rule).
    """
    policy = policy or bos_policy(tokenizer)
    moved = []
    for ctx, cont in pairs:
        n_space = len(ctx) - len(ctx.rstrip())
        if n_space and ctx.strip():
            ctx, cont = ctx[:-n_space], ctx[-n_space:] + cont
        moved.append((ctx, cont))
    texts = sorted({c for c, _ in moved if c} | {c + k for c, k in moved if c})
    ids = dict(zip(texts, policy.encode(tokenizer, texts)))
    out: list[Request] = []
    for ctx, cont in moved:
        if not ctx:
            cont_ids = policy.encode(tokenizer, [cont], start=False)[0]
            prefix = policy.prefix_id
            if cont_ids and cont_ids[0] == prefix:
                out.append((cont_ids[:1], cont_ids[1:]))
            else:
                out.append(([prefix], cont_ids))
            continue
        ctx_ids = ids[ctx]
        out.append((ctx_ids, ids[ctx + cont][len(ctx_ids):]))
    return out


def _stderr(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def score_examples(task: Task, examples: Sequence[Example], lls: Sequence[float],
                   greedy: Sequence[bool]) -> dict:
    """Task metrics from per-pair log-likelihoods (flattened in example/choice order)."""
    acc, acc_norm, pos = [], [], 0
    for ex in examples:
        n = len(ex.pairs)
        ll = np.asarray(lls[pos: pos + n], dtype=np.float64)
        if task.kind == "last_word":
            acc.append(float(all(greedy[pos: pos + n])))
        else:
            lengths = np.asarray([float(len(c)) for c in ex.choices])
            acc.append(float(np.argmax(ll) == ex.gold))
            acc_norm.append(float(np.argmax(ll / np.maximum(lengths, 1.0)) == ex.gold))
        pos += n
    out: dict = {"n": len(examples)}
    out["acc"], out["acc_stderr"] = float(np.mean(acc)), _stderr(np.asarray(acc))
    if "acc_norm" in task.metrics:
        out["acc_norm"], out["acc_norm_stderr"] = (float(np.mean(acc_norm)),
                                                   _stderr(np.asarray(acc_norm)))
    if "perplexity" in task.metrics:
        out["perplexity"] = math.exp(-float(np.mean(lls)))
    out["score"] = out[task.headline]
    return out


def evaluate_task(model, tokenizer, task: Task | str, examples: Sequence[Example],
                  batch_size: int = 32, progress: bool = False,
                  max_length: int | None = None, bos: str = "auto") -> dict:
    """acc (and acc_norm / perplexity where the task has them) of `model` on `examples`;
    `bos` is the BOS policy setting (growlm.data.tokenizer.bos_policy)."""
    task = get_task(task) if isinstance(task, str) else task
    pairs = [p for ex in examples for p in ex.pairs]
    requests = encode_pairs(tokenizer, pairs, bos_policy(tokenizer, bos))
    scored = score_requests(model, requests, batch_size=batch_size, max_length=max_length,
                            progress=progress, desc=task.name)
    return score_examples(task, examples, [s for s, _ in scored], [g for _, g in scored])


def run_task(model, tokenizer, name: str, data_dir=None, source: str = "local",
             limit: int | None = None, batch_size: int = 32, progress: bool = False,
             max_length: int | None = None, bos: str = "auto") -> dict:
    task = get_task(name)
    examples = load_examples(task.name, data_dir=data_dir, source=source, limit=limit)
    return evaluate_task(model, tokenizer, task, examples, batch_size, progress, max_length,
                         bos)
