"""Deterministic, resumable, rank-aware packed sequences cut from a token stream.

Sequence i is the window `tokens[i*T : i*T + T + 1]` (T = seq_len): inputs are its first T
tokens and targets its last T. Consecutive windows overlap by one token, so each token after
the first is a target exactly once per epoch and no token is wasted; there are
`(len(tokens) - 1) // T` sequences. Documents are packed across sequence boundaries (they are
separated by EOS in the stream).

Order: epoch e visits the sequences in `np.random.default_rng([seed, e]).permutation(n)`.
`position` counts sequences consumed since the start over all ranks and epochs, so the state
{seed, epoch, position, fingerprint} resumes exactly, and a new batch size (or world size)
simply continues at the next unseen sequence. A global batch is the `batch_size * world_size`
sequences from `position`; rank r takes the r-th contiguous `batch_size` of them, so the union
over ranks equals the single-process batch.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from growlm.errors import GrowlmError

_SAMPLE_TOKENS = 1 << 20  # tokens hashed to fingerprint an array that carries no fingerprint


def data_fingerprint(tokens) -> str:
    """The stream's own fingerprint (TokenStream) or a hash of its length and a strided sample."""
    own = getattr(tokens, "fingerprint", None)
    if isinstance(own, str):
        return own
    n = len(tokens)
    step = max(1, n // _SAMPLE_TOKENS)
    sample = np.ascontiguousarray(np.asarray(tokens[::step] if step > 1 else tokens[:n]))
    h = hashlib.sha256(f"{n}:{sample.dtype.str}:".encode())
    h.update(sample.tobytes())
    return "array:" + h.hexdigest()[:32]


class SequenceLoader:
    def __init__(self, tokens, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if seq_len <= 0:
            raise GrowlmError(f"seq_len must be positive, got {seq_len}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise GrowlmError(f"rank {rank} is not in a world of size {world_size}")
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self._perms: dict[int, np.ndarray] = {}
        self.reseed(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_sequences = (len(tokens) - 1) // self.seq_len
        if self.num_sequences <= 0:
            raise GrowlmError(f"the data holds {len(tokens)} tokens, fewer than seq_len + 1 = "
                              f"{self.seq_len + 1}: prepare more data or lower seq_len")
        digest = hashlib.sha256(f"{data_fingerprint(tokens)}|seq_len={self.seq_len}".encode())
        self.fingerprint = digest.hexdigest()[:32]
        self.position = 0

    def reseed(self, seed: int) -> None:
        """Use another order seed (numpy's generators take only seeds ≥ 0)."""
        if int(seed) < 0:
            raise GrowlmError(f"the data order seed must be ≥ 0 (run.seed), got {seed}")
        self.seed = int(seed)
        self._perms.clear()

    @property
    def position(self) -> int:
        """Sequences consumed so far, summed over ranks and epochs. Set it to 0 to restart."""
        return self._position

    @position.setter
    def position(self, value: int) -> None:
        if int(value) < 0:
            raise GrowlmError(f"loader position must be ≥ 0, got {value}")
        self._position = int(value)

    @property
    def epoch(self) -> int:
        return self._position // self.num_sequences

    @property
    def tokens_per_epoch(self) -> int:
        return self.num_sequences * self.seq_len

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a batch spans at most two epochs (or one very long)
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed, epoch])
            self._perms[epoch] = rng.permutation(self.num_sequences)
        return self._perms[epoch]

    def sequence_ids(self, start: int, count: int) -> np.ndarray:
        """Which sequences the global positions [start, start + count) stand for."""
        out = np.empty(count, dtype=np.int64)
        pos, filled = start, 0
        while filled < count:
            epoch, offset = divmod(pos, self.num_sequences)
            take = min(count - filled, self.num_sequences - offset)
            out[filled:filled + take] = self._perm(epoch)[offset:offset + take]
            filled += take
            pos += take
        return out

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (inputs, targets), int64 tensors of shape (batch_size, seq_len)."""
        if batch_size <= 0:
            raise GrowlmError(f"batch size must be positive, got {batch_size}")
        start = self._position + self.rank * batch_size
        ids = self.sequence_ids(start, batch_size)
        self._position += batch_size * self.world_size
        windows = np.empty((batch_size, self.seq_len + 1), dtype=np.int64)
        for row, seq in enumerate(ids):
            lo = int(seq) * self.seq_len
            windows[row] = self.tokens[lo:lo + self.seq_len + 1]
        batch = torch.from_numpy(windows)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self._position,
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        try:
            fingerprint, seed, position = state["fingerprint"], state["seed"], state["position"]
        except (KeyError, TypeError):
            raise GrowlmError("loader state is malformed: it needs seed, position and "
                              "fingerprint") from None
        if fingerprint != self.fingerprint:
            raise GrowlmError("the loader state was saved for different data or seq_len "
                              f"(fingerprint {fingerprint} ≠ {self.fingerprint}); resume with the "
                              "same shards and seq_len, or restart the data order")
        self.reseed(seed)
        self.position = int(position)


def sequential_batches(tokens, seq_len: int, batch_size: int, max_tokens: int | None = None):
    """Non-shuffled batches from the start of a stream, for evaluation: yields (inputs, targets)
    until `max_tokens` target tokens (or the stream) are used up; the last batch may be smaller."""
    n_seq = (len(tokens) - 1) // seq_len
    if max_tokens is not None:
        n_seq = min(n_seq, max(1, max_tokens // seq_len))
    if n_seq <= 0:
        raise GrowlmError(f"the data holds {len(tokens)} tokens, fewer than seq_len + 1 = "
                          f"{seq_len + 1}")
    for first in range(0, n_seq, batch_size):
        count = min(batch_size, n_seq - first)
        flat = np.asarray(tokens[first * seq_len:(first + count) * seq_len + 1], dtype=np.int64)
        body = torch.from_numpy(flat[:-1].reshape(count, seq_len))
        shifted = torch.from_numpy(flat[1:].reshape(count, seq_len))
        yield body, shifted
