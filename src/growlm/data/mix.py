"""Weighted mixing of several token streams: deterministic, resumable, rank-aware.

Each source is a `SequenceLoader` (its own seeded permutation of its sequences, epoch after
epoch, so a small source with a large weight is repeated). The global sequence positions
0, 1, 2, ... are dealt to the sources in blocks of `BLOCK` positions:

- Counts. Source k owns C_k(b) = floor(b·BLOCK·w_k + 1/2) of the positions before block b
  (w = normalised weights, exact rational arithmetic on the given floats). So the share of
  every source converges to its weight without drift, and C_k(b) is a closed form: any
  position can be located without replaying the stream.
- Order inside block b. Source k's n_k = C_k(b+1) - C_k(b) slots sit at the times
  (j + u_k) / n_k, j = 0..n_k-1, with u_k uniform from `default_rng([seed, MIX_TAG, b])`;
  the block is these slots sorted by time. Every stretch of a block (so every batch) then
  holds each source within about one sequence of its share.

Position p therefore maps to (source k, the m-th sequence drawn from k), and the state is
just {seed, position, fingerprint}, like SequenceLoader's. Batches split over ranks the same
way: the global batch is the `batch_size * world_size` positions from `position`; rank r
takes the r-th contiguous `batch_size` of them.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import torch

from growlm.data.loader import SequenceLoader
from growlm.errors import GrowlmError

BLOCK = 4096
MAX_SOURCES = 256
MIX_TAG = 0x6D6978  # "mix": keeps the block RNG apart from the sources' permutation RNG


def source_seed(seed: int, fingerprint: str) -> int:
    """The permutation seed of one source: from the run seed and the source's own data, so
    it does not depend on the order in which sources are listed."""
    digest = hashlib.sha256(f"{int(seed)}|{fingerprint}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class MixedLoader:
    """(inputs, targets) batches drawn from `streams` in proportion to `weights`.

    streams: token streams (TokenStream or 1-D arrays), each with at least seq_len + 1 tokens.
    weights: positive finite numbers, one per stream (normalised here).
    Same interface as SequenceLoader: next_batch, position, state_dict, load_state_dict.
    """

    def __init__(self, streams, weights, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if not 1 <= len(streams) <= MAX_SOURCES or len(weights) != len(streams):
            raise GrowlmError(f"a mix needs 1 to {MAX_SOURCES} sources with one weight each, "
                              f"got {len(streams)} sources and {len(weights)} weights")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise GrowlmError(f"rank {rank} is not in a world of size {world_size}")
        self._fractions = _normalise(weights)
        self.weights = [float(f) for f in self._fractions]
        self.sources = [SequenceLoader(s, seq_len) for s in streams]
        self.seq_len = int(seq_len)
        self.rank, self.world_size = int(rank), int(world_size)
        self._reseed(seed)
        parts = [f"{s.fingerprint}:{f.numerator}/{f.denominator}"
                 for s, f in zip(self.sources, self._fractions)]
        self.fingerprint = hashlib.sha256(
            f"mix|block={BLOCK}|{'|'.join(parts)}".encode()).hexdigest()[:32]
        self.position = 0
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _reseed(self, seed: int) -> None:
        if int(seed) < 0:
            raise GrowlmError(f"the data order seed must be ≥ 0 (run.seed), got {seed}")
        self.seed = int(seed)
        for s in self.sources:
            s.reseed(source_seed(self.seed, s.fingerprint))

    @property
    def position(self) -> int:
        """Sequences consumed so far, summed over ranks and sources. Set it to 0 to restart."""
        return self._position

    @position.setter
    def position(self, value: int) -> None:
        if int(value) < 0:
            raise GrowlmError(f"loader position must be ≥ 0, got {value}")
        self._position = int(value)

    def drawn(self, position: int | None = None) -> list[int]:
        """Sequences taken from each source before `position` (default: the current one)."""
        p = self._position if position is None else int(position)
        b = self._block_of(p)
        src, _ = self._block(b)
        within = np.bincount(src[:p - self._start(b)], minlength=len(self.sources))
        return [self._count(k, b) + int(within[k]) for k in range(len(self.sources))]

    @property
    def epochs(self) -> list[float]:
        """Epochs of each source consumed so far."""
        return [n / s.num_sequences for n, s in zip(self.drawn(), self.sources)]

    def _count(self, k: int, b: int) -> int:
        """C_k(b): positions of source k before block b, floor(b·BLOCK·w_k + 1/2) exactly."""
        f = self._fractions[k]
        return (2 * b * BLOCK * f.numerator + f.denominator) // (2 * f.denominator)

    def _start(self, b: int) -> int:
        return sum(self._count(k, b) for k in range(len(self.sources)))

    def _block_of(self, p: int) -> int:
        b = p // BLOCK  # the start of block b is within half a slot per source of b·BLOCK
        while b > 0 and self._start(b) > p:
            b -= 1
        while self._start(b + 1) <= p:
            b += 1
        return b

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each slot, index of that slot among its source's sequences)."""
        if b not in self._blocks:
            if len(self._blocks) >= 4:
                self._blocks.pop(min(self._blocks))
            u = np.random.default_rng([self.seed, MIX_TAG, b]).random(len(self.sources))
            times, src, idx = [], [], []
            for k in range(len(self.sources)):
                first, n = self._count(k, b), self._count(k, b + 1) - self._count(k, b)
                j = np.arange(n)
                times.append((j + u[k]) / n)
                src.append(np.full(n, k, dtype=np.int64))
                idx.append(first + j)
            times, src, idx = map(np.concatenate, (times, src, idx))
            order = np.lexsort((src, times))
            self._blocks[b] = (src[order], idx[order])
        return self._blocks[b]

    def sequence_ids(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, sequence id within that source) of global positions [start, start+count)."""
        srcs, idxs = [], []
        pos, end = start, start + count
        while pos < end:
            b = self._block_of(pos)
            block_start = self._start(b)
            src, idx = self._block(b)
            hi = min(end - block_start, len(src))
            srcs.append(src[pos - block_start:hi])
            idxs.append(idx[pos - block_start:hi])
            pos = block_start + hi
        src, idx = np.concatenate(srcs), np.concatenate(idxs)
        seq = np.empty(count, dtype=np.int64)
        for k in np.unique(src):
            mine = src == k
            first = int(idx[mine].min())
            seq[mine] = self.sources[k].sequence_ids(first, int(idx[mine].max()) - first + 1)[
                idx[mine] - first]
        return src, seq

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (inputs, targets), int64 tensors of shape (batch_size, seq_len)."""
        if batch_size <= 0:
            raise GrowlmError(f"batch size must be positive, got {batch_size}")
        src, seq = self.sequence_ids(self._position + self.rank * batch_size, batch_size)
        self._position += batch_size * self.world_size
        windows = np.empty((batch_size, self.seq_len + 1), dtype=np.int64)
        for row, (k, s) in enumerate(zip(src, seq)):
            lo = int(s) * self.seq_len
            windows[row] = self.sources[k].tokens[lo:lo + self.seq_len + 1]
        batch = torch.from_numpy(windows)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return {"kind": "mix", "seed": self.seed, "position": self._position,
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        try:
            fingerprint, seed, position = state["fingerprint"], state["seed"], state["position"]
        except (KeyError, TypeError):
            raise GrowlmError("loader state is malformed: it needs seed, position and "
                              "fingerprint") from None
        if fingerprint != self.fingerprint:
            raise GrowlmError("the loader state was saved for a different data mix (sources, "
                              f"weights or seq_len; fingerprint {fingerprint} ≠ "
                              f"{self.fingerprint}); resume with the same data.train, or "
                              "restart the data order")
        self._reseed(seed)
        self._blocks.clear()
        self.position = int(position)


def _normalise(weights) -> list[Fraction]:
    exact = []
    for i, w in enumerate(weights, 1):
        try:
            value = Fraction(w)
        except (TypeError, ValueError, OverflowError):
            raise GrowlmError(f"weight {i} ({w!r}) is not a positive finite number") from None
        if value <= 0:
            raise GrowlmError(f"weight {i} ({w!r}) is not a positive finite number")
        exact.append(value)
    total = sum(exact)
    return [w / total for w in exact]
