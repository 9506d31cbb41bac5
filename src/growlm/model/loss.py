"""Next-token cross-entropy and log-probabilities without the full (positions, vocab) logits.

At GPT-2's vocabulary the logits are the largest activation of a step: a micro-batch of
8 × 1024 tokens has 8192 × 50,257 of them, 1.6 GB in fp32, and the plain path keeps them,
their log-softmax and their gradient. Here the output projection and the loss run over
chunks of positions, so at most one chunk's logits exist at a time.

`CHUNK_LOGITS` sets the chunk: `chunk_positions(vocab)` = CHUNK_LOGITS // vocab positions, so
one chunk's fp32 logits take at most 64 MiB whatever the vocabulary (333 positions at
50,257; 8192 at 2048).

`linear_cross_entropy_sum(hidden, head, labels)` picks one of four implementations
(`loss_impl` names the choice, so a log can say which ran):

- ``"liger"``: on CUDA, when Liger-Kernel is installed (the `liger` extra) and the head is a
  plain `nn.Linear`: its fused linear cross-entropy, which computes the gradients chunk by
  chunk during the forward and picks its own chunk size. Never used on CPU.
- ``"torch"``: a plain `nn.Linear` head computing in fp32 (no autocast) with torch's own
  chunked `F.linear_cross_entropy` (in torch 2.13; an older torch takes "checkpoint"), which
  also precomputes the gradients in the forward and needs no recomputation.
- ``"checkpoint"``: any other head (a LoRA-wrapped `lm_head`, an FSDP-wrapped one), or under
  autocast without Liger: each chunk runs through `torch.utils.checkpoint`, so the forward
  keeps only the chunk's input (a view of the hidden states) and the backward recomputes the
  chunk's logits, takes their gradient and frees them before the next chunk. The head's
  forward then runs twice. It calls the head module itself, so adapters, autocast and
  dropout (with the RNG state restored) behave as in the plain path. torch's chunked op is
  not used under autocast because it ignores autocast (it would compute the head in fp32)
  and, fed bf16 inputs, returns the summed loss in bf16 (a sum over 8k tokens rounded to
  8 bits of mantissa).
- ``"loop"``: without gradients (evaluation), a plain loop over chunks.

Every path returns the fp32 SUM of the token losses over labels ≠ -100, equal to
`F.cross_entropy(head(hidden).float(), labels, ignore_index=-100, reduction="sum")` within
fp32 rounding (tests/model/test_loss.py).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
CHUNK_LOGITS = 1 << 24  # logits per chunk: 64 MiB in fp32


def chunk_positions(vocab_size: int) -> int:
    """Positions per chunk: CHUNK_LOGITS // vocab_size, at least 1."""
    return max(1, CHUNK_LOGITS // max(int(vocab_size), 1))


@functools.cache
def _liger_loss():
    """Liger-Kernel's fused linear cross-entropy, or None when it is not installed."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    except Exception as exc:  # installed but broken (e.g. no working Triton): say so once
        warnings.warn(f"Liger-Kernel is installed but does not import ({exc}); "
                      "using the chunked PyTorch loss", stacklevel=2)
        return None
    return liger_fused_linear_cross_entropy


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    kind = hidden.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype


def loss_impl(hidden: torch.Tensor, head: nn.Module) -> str:
    """Which implementation `linear_cross_entropy_sum` uses for these inputs (see module doc)."""
    plain = type(head) is nn.Linear  # a subclass (an FSDP unit) must run its own forward
    fp32 = _compute_dtype(hidden) == torch.float32 and plain and head.weight.dtype == torch.float32
    return choose_loss_impl(hidden.device.type, grad=torch.is_grad_enabled(), plain_head=plain,
                            fp32=fp32)


def choose_loss_impl(device_type: str, *, grad: bool = True, plain_head: bool = True,
                     fp32: bool = True) -> str:
    """The rule behind `loss_impl`, for callers without tensors (the memory planner):
    `plain_head` = the head is a plain nn.Linear, `fp32` = it computes in fp32 (no autocast)."""
    if not grad:
        return "loop"
    if plain_head and device_type == "cuda" and _liger_loss() is not None:
        return "liger"
    if fp32 and plain_head and hasattr(nn, "LinearCrossEntropyOptions"):
        return "torch"
    return "checkpoint"


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def _chunked(hidden, head, labels, chunk: int, recompute: bool) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for h, y in zip(hidden.split(chunk), labels.split(chunk)):
        if recompute:
            total = total + checkpoint(_chunk_loss, head, h, y, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, h, y)
    return total


def _torch_chunked(hidden, head: nn.Linear, labels, chunk: int) -> torch.Tensor:
    options = nn.LinearCrossEntropyOptions(
        batch_chunk_size=chunk, chunking_method=None,
        # torch.compile forces this on with a warning; asking for it avoids the warning.
        allow_retain_graph=torch.compiler.is_compiling())
    return F.linear_cross_entropy(hidden, head.weight, labels, linear_bias=head.bias,
                                  reduction="sum", ignore_index=IGNORE_INDEX, options=options)


def linear_cross_entropy_sum(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor,
                             chunk_size: int | None = None) -> torch.Tensor:
    """Σ over positions with labels ≠ -100 of −log softmax(head(hidden))[label], as fp32.

    hidden: (..., d_model) final hidden states; labels: (...) int64 with the same leading
    shape, already aligned (labels[..., t] is the target of position t; no shift here);
    head: the output projection (d_model → vocab), called as a module. chunk_size:
    positions per chunk (default `chunk_positions(vocab)`; Liger picks its own). Returns a
    0-dim fp32 tensor: the sum, not the mean (the caller divides by its own token count).
    Raises ValueError when the shapes or the label dtype do not fit.
    """
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match hidden states "
                         f"of shape {tuple(hidden.shape)} (expected {tuple(hidden.shape[:-1])})")
    if labels.dtype != torch.long:
        raise ValueError(f"labels must be int64 token ids, got {labels.dtype}")
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    impl = loss_impl(hidden, head)
    if impl == "liger":
        return _liger_loss()(hidden, head.weight, labels, bias=head.bias,
                             ignore_index=IGNORE_INDEX, reduction="sum").float()
    chunk = chunk_size or chunk_positions(_vocab_size(head))
    if impl == "torch":
        return _torch_chunked(hidden, head, labels, chunk)
    return _chunked(hidden, head, labels, chunk, recompute=impl == "checkpoint")


def _vocab_size(head: nn.Module) -> int:
    out = getattr(head, "out_features", None)
    return int(out) if out is not None else int(head.weight.shape[0])


@torch.no_grad()
def token_logprobs(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor,
                   chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and whether the target is the argmax, per position, chunk by chunk.

    hidden: (N, d_model); targets: (N,) int64. Returns (N,) fp32 log-probabilities and (N,)
    bool. At most one chunk of logits (`chunk_positions(vocab)` positions) exists at a time.
    """
    chunk = chunk_size or chunk_positions(_vocab_size(head))
    logp = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    hit = torch.empty(len(targets), dtype=torch.bool, device=hidden.device)
    for lo in range(0, len(targets), chunk):
        sl = slice(lo, lo + chunk)
        logp[sl], hit[sl] = logprob_of_targets(head(hidden[sl]), targets[sl])
    return logp, hit


def logprob_of_targets(logits: torch.Tensor, targets: torch.Tensor):
    """(log p(target) in fp32, target == argmax) for logits (N, vocab) and targets (N,).

    logit[target] − logsumexp(logits): no (N, vocab) log-softmax is kept.
    """
    logits = logits.float()
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    return picked - torch.logsumexp(logits, dim=-1), logits.argmax(-1) == targets
