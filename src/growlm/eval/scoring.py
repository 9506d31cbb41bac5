"""Batched log-likelihood of continuations given contexts: the core of every eval here.

A request is (context token ids, continuation token ids). Like lm-evaluation-harness, the
model sees (context + continuation) cut to its last `max_length + 1` tokens minus the final
one, and the continuation's log-probabilities are summed. Three things make it fast:

- Requests are sorted by length and right-padded into batches.
- The vocabulary projection and log-softmax run only at the continuation positions, which
  is most of the work with a 50k vocabulary, and in chunks of positions (the training loss's
  `growlm.model.loss.chunk_positions`), so at most one chunk's logits exist at a time.
- Choices that share a context are packed into one row: the context once, then each
  continuation, with an attention mask that lets a continuation see the context and itself
  only, and position ids that restart after the context for every continuation. A 4-way
  question then costs about one context plus four endings, not four contexts.

Packing needs to run the layers with a mask and per-token positions, which growlm's
`Transformer.forward` does not take, so `_packed_hidden` walks the blocks itself; any other
model (a compiled or FSDP wrapper) gets one plain forward per padded batch instead: its full
logits are that forward's own output, read here chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from growlm.model import Transformer
from growlm.model.loss import chunk_positions, logprob_of_targets, token_logprobs
from growlm.progress import progress as progress_bar

Request = tuple[Sequence[int], Sequence[int]]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def max_context(model: torch.nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    return int(cfg.max_seq_len) if cfg is not None else 2048


@dataclass
class _Row:
    """One model input row: a context and the continuations scored after it.

    tokens = context + cont_1[:-1] + cont_2[:-1] + ...; continuation j's first token is
    predicted at the context's last position, its t-th token at its own segment's (t-1)-th.
    """

    context: list[int]
    conts: list[list[int]]
    slots: list[int]  # result index of each continuation

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(c) - 1 for c in self.conts)


def _split(req: Request, max_length: int) -> tuple[list[int], list[int]]:
    """(effective context, scored continuation) after lm-eval's left truncation."""
    ctx, cont = list(req[0]), list(req[1])
    if not ctx:
        raise ValueError("a context must have at least one token (use a BOS/EOS prefix)")
    whole = (ctx + cont)[-(max_length + 1):]
    n_cont = min(len(cont), len(whole) - 1)
    return whole[:-n_cont], whole[-n_cont:]


def _rows(keys: list, todo: list[int], max_length: int, pack: bool) -> list[_Row]:
    """Group continuations by shared context into rows no longer than `max_length`."""
    by_context: dict[tuple[int, ...], _Row] = {}
    rows: list[_Row] = []
    for i in todo:
        ctx, cont = _split(keys[i], max_length)
        row = by_context.get(tuple(ctx)) if pack else None
        if row is not None and row.length + len(cont) - 1 <= max_length:
            row.conts.append(cont)
            row.slots.append(i)
            continue
        row = _Row(ctx, [cont], [i])
        rows.append(row)
        by_context[tuple(ctx)] = row
    return rows


def _layout(rows: list[_Row]):
    """Padded tokens, positions and (for packed rows) the attention mask of one batch,
    plus each scored position (row, column, target, result slot)."""
    width = max(r.length for r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    packed = any(len(r.conts) > 1 for r in rows)
    mask = torch.zeros(len(rows), width, width, dtype=torch.bool) if packed else None
    where, cols, targets, slots = [], [], [], []
    for b, row in enumerate(rows):
        n_ctx = len(row.context)
        seq = list(row.context)
        if mask is not None:
            mask[b, :n_ctx, :n_ctx] = torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril()
        for cont, slot in zip(row.conts, row.slots):
            start = len(seq)
            seg = cont[:-1]
            seq += seg
            positions[b, start: start + len(seg)] = torch.arange(n_ctx, n_ctx + len(seg))
            if mask is not None and seg:
                mask[b, start: start + len(seg), :n_ctx] = True
                mask[b, start: start + len(seg), start: start + len(seg)] = torch.ones(
                    len(seg), len(seg), dtype=torch.bool).tril()
            where += [b] * len(cont)
            cols += [n_ctx - 1, *range(start, start + len(seg))]
            targets += cont
            slots += [slot] * len(cont)
        tokens[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        positions[b, :n_ctx] = torch.arange(n_ctx)
        if mask is not None:  # padding attends to itself only, so no row of the mask is empty
            idle = torch.arange(len(seq), width)
            mask[b, idle, idle] = True
    return tokens, positions, mask, (where, cols, targets, slots)


def _packed_hidden(model: Transformer, tokens, positions, mask):
    """Final hidden states with per-token positions and an explicit attention mask.

    Mirrors `Block.forward`/`Attention.forward` of growlm.model.llama (tests check the two
    agree); a plain causal batch uses the model's own blocks.
    """
    x = model.embed_tokens(tokens)
    if mask is None:
        seq = tokens.shape[1]
        cos, sin = model.rope_cos[:seq], model.rope_sin[:seq]
        for block in model.layers.values():
            x = block(x, cos, sin)
        return model.norm(x)
    bsz, seq = tokens.shape
    cos, sin = model.rope_cos[positions][:, :, None], model.rope_sin[positions][:, :, None]
    attn_mask = mask[:, None]
    for block in model.layers.values():
        attn = block.self_attn
        h = block.input_layernorm(x)
        q, k, v = attn.qkv(h, cos, sin)  # projections, q/k norms and RoPE as in the model
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask,
            enable_gqa=attn.n_kv != attn.n_heads)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(bsz, seq, -1))
        if block.mlp is not None:
            x = x + block.mlp(block.post_attention_layernorm(x))
    return model.norm(x)


@torch.inference_mode()
def _score_rows(model, rows: list[_Row], device, sums: torch.Tensor,
                misses: torch.Tensor) -> None:
    """Add each continuation's log-prob to sums[slot] and its greedy misses to misses[slot]."""
    tokens, positions, mask, (where, cols, targets, slots) = _layout(rows)
    tokens = tokens.to(device)
    fast = type(model) is Transformer
    if fast:
        hidden = _packed_hidden(model, tokens, positions.to(device),
                                None if mask is None else mask.to(device))
    else:
        full = model(tokens)
    rows_t, cols_t = torch.tensor(where, device=device), torch.tensor(cols, device=device)
    target_t = torch.tensor(targets, device=device)
    if fast:
        # The head runs chunk by chunk at the scored positions only (growlm.model.loss).
        token_lp, hit = token_logprobs(hidden[rows_t, cols_t], model.lm_head, target_t)
    else:
        token_lp = torch.empty(len(targets), dtype=torch.float32, device=device)
        hit = torch.empty(len(targets), dtype=torch.bool, device=device)
        step = chunk_positions(full.shape[-1])
        for lo in range(0, len(targets), step):
            sl = slice(lo, lo + step)
            token_lp[sl], hit[sl] = logprob_of_targets(full[rows_t[sl], cols_t[sl]], target_t[sl])
    slots_t = torch.tensor(slots)
    sums.index_add_(0, slots_t, token_lp.double().cpu())
    misses.index_add_(0, slots_t, (~hit).long().cpu())


def score_requests(
    model: torch.nn.Module,
    requests: Sequence[Request],
    batch_size: int = 32,
    max_length: int | None = None,
    max_batch_tokens: int | None = None,
    progress: bool = False,
    desc: str = "scoring",
    pack: bool = True,
) -> list[tuple[float, bool]]:
    """(sum of log-probs, whether greedy decoding reproduces it) for each request, in order.

    Identical requests are scored once; with `pack`, continuations of the same context share
    a row (growlm Transformers only). Batches hold at most `batch_size` rows and, when given,
    at most `max_batch_tokens` padded tokens.
    """
    max_length = max_length or max_context(model)
    device = model_device(model)
    unique: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    order = [unique.setdefault((tuple(c), tuple(k)), len(unique)) for c, k in requests]
    keys = list(unique)
    todo = [i for i, (_, cont) in enumerate(keys) if cont]  # empty continuation: log 1 = 0
    rows = _rows(keys, todo, max_length, pack and type(model) is Transformer)
    # Longest first: padding waste stays small and an out-of-memory error shows up at once.
    rows.sort(key=lambda r: -r.length)
    sums = torch.zeros(len(keys), dtype=torch.float64)
    misses = torch.zeros(len(keys), dtype=torch.long)
    bar = progress_bar(len(todo), desc, enabled=progress, unit="seq")
    pos = 0
    while pos < len(rows):
        n = batch_size
        if max_batch_tokens:
            n = max(1, min(n, max_batch_tokens // max(rows[pos].length, 1)))
        batch = rows[pos: pos + n]
        _score_rows(model, batch, device, sums, misses)
        pos += len(batch)
        bar.update(sum(len(r.conts) for r in batch))
    bar.close()
    sums_l, greedy = sums.tolist(), (misses == 0).tolist()
    return [(sums_l[i], greedy[i]) for i in order]
