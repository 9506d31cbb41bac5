"""Batched log-likelihood of continuations given contexts: the core of every eval here.

A request is (context token ids, continuation token ids). Like lm-evaluation-harness, the
model sees (context + continuation) cut to its last `max_length + 1` tokens minus the final
one, and the continuation's log-probabilities are summed. Unlike a naive loop, requests are
sorted by length and right-padded into batches (causal attention means padding after a
sequence never changes its logits), and the vocabulary projection and log-softmax are computed
only at the continuation positions, which is most of the work for a 50k vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from growlm.model import Transformer

Request = tuple[Sequence[int], Sequence[int]]
POSITIONS_PER_SLICE = 4096


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def max_context(model: torch.nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    return int(cfg.max_seq_len) if cfg is not None else 2048


def _hidden_and_head(model: torch.nn.Module, tokens: torch.Tensor):
    """Final hidden states (B,T,D) and the head, when the model is a growlm Transformer.

    Returns (None, None) for anything else (a compiled or FSDP-wrapped model, whose own
    forward must run); callers then use full logits.
    """
    if type(model) is not Transformer:
        return None, None
    seq = tokens.shape[1]
    x = model.embed_tokens(tokens)
    cos, sin = model.rope_cos[:seq], model.rope_sin[:seq]
    for block in model.layers.values():
        x = block(x, cos, sin)
    return model.norm(x), model.lm_head


def _prepare(req: Request, max_length: int) -> tuple[list[int], int]:
    """Model input ids and how many of its last positions predict the continuation."""
    ctx, cont = list(req[0]), list(req[1])
    if not cont:
        raise ValueError("a continuation must have at least one token")
    if not ctx:
        raise ValueError("a context must have at least one token (use a BOS/EOS prefix)")
    whole = (ctx + cont)[-(max_length + 1):]
    n_cont = min(len(cont), len(whole) - 1)
    return whole[:-1], n_cont


@torch.inference_mode()
def _score_batch(model, inputs: list[list[int]], conts: list[list[int]], device):
    """Summed log-prob and greedy flag of each continuation in one padded forward pass."""
    width = max(len(x) for x in inputs)
    tokens = torch.zeros(len(inputs), width, dtype=torch.long)
    rows, cols, targets = [], [], []
    for i, (inp, cont) in enumerate(zip(inputs, conts)):
        tokens[i, : len(inp)] = torch.tensor(inp, dtype=torch.long)
        start = len(inp) - len(cont)
        rows += [i] * len(cont)
        cols += range(start, len(inp))
        targets += cont
    tokens = tokens.to(device)
    rows_t = torch.tensor(rows, device=device)
    cols_t = torch.tensor(cols, device=device)
    target_t = torch.tensor(targets, device=device)
    hidden, head = _hidden_and_head(model, tokens)
    full = model(tokens) if hidden is None else None
    token_lp = torch.empty(len(targets), dtype=torch.float32, device=device)
    hit = torch.empty(len(targets), dtype=torch.int64, device=device)
    # Positions in slices, so a batch of long windows never holds (all positions × vocab).
    for lo in range(0, len(targets), POSITIONS_PER_SLICE):
        sl = slice(lo, lo + POSITIONS_PER_SLICE)
        r, c = rows_t[sl], cols_t[sl]
        logits = (head(hidden[r, c]) if hidden is not None else full[r, c]).float()
        token_lp[sl] = torch.log_softmax(logits, dim=-1).gather(1, target_t[sl, None]).squeeze(1)
        hit[sl] = (logits.argmax(-1) == target_t[sl]).to(torch.int64)
    sums = torch.zeros(len(inputs), dtype=torch.float64, device=device)
    sums.index_add_(0, rows_t, token_lp.double())
    misses = torch.zeros(len(inputs), dtype=torch.int64, device=device)
    misses.index_add_(0, rows_t, 1 - hit)
    return sums.cpu().tolist(), (misses == 0).cpu().tolist()


def score_requests(
    model: torch.nn.Module,
    requests: Sequence[Request],
    batch_size: int = 32,
    max_length: int | None = None,
    max_batch_tokens: int | None = None,
    progress: bool = False,
    desc: str = "scoring",
) -> list[tuple[float, bool]]:
    """(sum of log-probs, whether greedy decoding reproduces it) for each request, in order.

    Identical requests are scored once. Batches hold at most `batch_size` sequences and, when
    given, at most `max_batch_tokens` padded tokens.
    """
    from tqdm.auto import tqdm

    max_length = max_length or max_context(model)
    device = model_device(model)
    unique: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    slots = []
    for ctx, cont in requests:
        key = (tuple(ctx), tuple(cont))
        slots.append(unique.setdefault(key, len(unique)))
    keys = list(unique)
    results: list[tuple[float, bool] | None] = [None] * len(keys)
    todo = []
    for i, key in enumerate(keys):
        if key[1]:
            todo.append(i)
        else:  # nothing to predict: probability 1
            results[i] = (0.0, True)
    prepared = {i: _prepare(keys[i], max_length) for i in todo}
    # Longest first: padding waste stays small and an out-of-memory error shows up at once.
    order = sorted(todo, key=lambda i: -len(prepared[i][0]))
    bar = tqdm(total=len(order), desc=desc, disable=not progress, leave=False)
    pos = 0
    while pos < len(order):
        width = len(prepared[order[pos]][0])
        n = batch_size
        if max_batch_tokens:
            n = max(1, min(n, max_batch_tokens // max(width, 1)))
        chunk = order[pos: pos + n]
        inputs = [prepared[i][0] for i in chunk]
        conts = [list(keys[i][1])[-prepared[i][1]:] for i in chunk]
        sums, greedy = _score_batch(model, inputs, conts, device)
        for i, s, g in zip(chunk, sums, greedy):
            results[i] = (float(s), bool(g))
        pos += len(chunk)
        bar.update(len(chunk))
    bar.close()
    return [results[s] for s in slots]  # type: ignore[misc]
