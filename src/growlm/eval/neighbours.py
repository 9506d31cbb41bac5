"""Top-k nearest-neighbour overlap between two vocabulary matrices (reuse paper, Table 5).

For every token: its k nearest other tokens by cosine similarity in matrix A and in matrix B;
overlap = |N_A ∩ N_B| / k, averaged over the vocabulary. The two matrices must index the same
vocabulary but may have different widths. Rows are processed in chunks, so only a
(chunk × vocabulary) block of similarities exists at a time, never the full V × V.
"""

from __future__ import annotations

import torch

from growlm.errors import GrowlmError
from growlm.progress import progress as progress_bar


def _unit_rows(m: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(m.detach().float(), dim=1)


def _top_k(unit: torch.Tensor, lo: int, hi: int, k: int) -> torch.Tensor:
    """Indices of the k nearest other rows for rows lo..hi (self excluded)."""
    sims = unit[lo:hi] @ unit.T
    rows = torch.arange(hi - lo, device=sims.device)
    sims[rows, rows + lo] = float("-inf")
    return sims.topk(k, dim=1).indices


def neighbour_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 100, chunk: int = 1024,
                      per_token: bool = False, progress: bool = False, desc: str = "neighbours"):
    """Mean top-k neighbour overlap (a float in [0, 1]); per-token overlaps too if asked.
    `progress` reports the rows done (growlm.progress)."""
    if a.dim() != 2 or b.dim() != 2:
        raise GrowlmError("neighbour overlap needs two 2-D (vocabulary × width) matrices")
    if a.shape[0] != b.shape[0]:
        raise GrowlmError(f"cannot compare vocabularies of different sizes ({a.shape[0]} vs "
                          f"{b.shape[0]} rows); both models must use the same tokenizer")
    vocab = a.shape[0]
    if not 1 <= k <= vocab - 1:
        raise GrowlmError(f"k={k} is out of range: with self excluded, k must be between 1 and "
                          f"the vocabulary size minus one ({vocab - 1})")
    ua, ub = _unit_rows(a), _unit_rows(b.to(a.device))
    overlaps = torch.empty(vocab, dtype=torch.float64)
    with progress_bar(vocab, desc, enabled=progress, unit="tok") as bar:
        for lo in range(0, vocab, chunk):
            hi = min(lo + chunk, vocab)
            na, nb = _top_k(ua, lo, hi, k), _top_k(ub, lo, hi, k)
            member = torch.zeros(hi - lo, vocab, dtype=torch.bool, device=na.device)
            member.scatter_(1, na, True)
            overlaps[lo:hi] = member.gather(1, nb).sum(1).double().cpu() / k
            bar.update(hi - lo)
    mean = float(overlaps.mean())
    return (mean, overlaps) if per_token else mean


def same_vocabulary(tok_a, tok_b) -> bool:
    """Two tokenizers map every token string to the same id."""
    return tok_a.get_vocab(with_added_tokens=True) == tok_b.get_vocab(with_added_tokens=True)
