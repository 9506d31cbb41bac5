"""`SFTLoader`: fixed-length rows of tokenized instruction examples, with loss masks.

It has the interface of the pretraining `SequenceLoader`, so the Trainer uses it unchanged:
``next_batch(batch_size) -> (inputs, targets)`` int64 (B, seq_len), targets -100 where no loss
is taken; ``position`` (rows consumed, global over ranks, settable); ``state_dict()`` /
``load_state_dict()`` (a few ints and strs; GrowlmError when the data changed).

Each epoch visits every example once, in an order drawn from (seed, epoch). Rows are built
one of two ways:

* packing (default): examples are placed whole, in that order, into rows of ``seq_len + 1``
  tokens; an example that does not fit starts the next row, and the row's tail is padding.
  No example is split across rows. Attention is plain causal over the row, so a packed
  example also sees the examples before it in its row: the model has no document mask. Each
  example starts with EOS, the same document separator the model saw in pretraining (where
  attention crosses documents in the same way), and the loss never covers the boundary.
* padding: one example per row.

Padding tokens are `pad_id` (the EOS id) with target -100. Each row holds at least one target.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from growlm.errors import GrowlmError
from growlm.sft.data import Examples

IGNORE = -100


def build_row(
    tokens: list[np.ndarray], train: list[np.ndarray], seq_len: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of one row holding the given examples back to back, padded."""
    toks = np.concatenate(tokens) if len(tokens) > 1 else tokens[0]
    mask = np.concatenate(train) if len(train) > 1 else train[0]
    n = len(toks)
    row = np.full(seq_len + 1, pad_id, dtype=np.int64)
    row[:n] = toks
    keep = np.zeros(seq_len + 1, dtype=bool)
    keep[:n] = mask
    return row[:-1], np.where(keep[1:], row[1:], IGNORE)


def pack_rows(lengths: np.ndarray, order: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Greedy in-order packing: example indices per row, each row at most `capacity` tokens."""
    rows, current, used = [], [], 0
    for i in order.tolist():
        n = int(lengths[i])
        if current and used + n > capacity:
            rows.append(np.asarray(current))
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        rows.append(np.asarray(current))
    return rows


class SFTLoader:
    def __init__(
        self,
        examples: Examples,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        packing: bool = True,
        pad_id: int = 0,
    ):
        if not len(examples):
            raise GrowlmError("no training examples")
        self.lengths = np.asarray([len(t) for t in examples.tokens], dtype=np.int64)
        if int(self.lengths.max()) > seq_len + 1:
            raise ValueError(
                f"an example has {int(self.lengths.max())} tokens; rows hold {seq_len + 1}"
            )
        if not all(m[1:].any() for m in examples.train):
            raise ValueError("every example needs at least one trained token after the first")
        self.examples = examples
        self.seq_len, self.seed = seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.packing, self.pad_id = packing, pad_id
        key = f"{examples.fingerprint()}|{seq_len}|{seed}|{packing}|{pad_id}"
        self.fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        self._counts: list[int] = []  # rows in each epoch seen so far
        self._rows: dict[int, list[np.ndarray]] = {}  # a couple of recent epochs
        self._position = 0

    # ------------------------------------------------------------------ epochs
    def epoch_rows(self, epoch: int) -> list[np.ndarray]:
        """Example indices of every row of `epoch` (deterministic from seed and epoch)."""
        if epoch not in self._rows:
            order = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch]).permutation(
                len(self.lengths)
            )
            if self.packing:
                rows = pack_rows(self.lengths, order, self.seq_len + 1)
            else:
                rows = [order[i : i + 1] for i in range(len(order))]
            if len(self._rows) >= 2:
                self._rows.pop(min(self._rows))
            self._rows[epoch] = rows
        return self._rows[epoch]

    def rows_in_epoch(self, epoch: int = 0) -> int:
        while len(self._counts) <= epoch:
            self._counts.append(len(self.epoch_rows(len(self._counts))))
        return self._counts[epoch]

    def locate(self, position: int) -> tuple[int, int]:
        """(epoch, row within the epoch) of a global row index."""
        epoch = 0
        while position >= self.rows_in_epoch(epoch):
            position -= self.rows_in_epoch(epoch)
            epoch += 1
        return epoch, position

    @property
    def epoch(self) -> float:
        """Epochs completed, fractional."""
        e, r = self.locate(self._position)
        return e + r / self.rows_in_epoch(e)

    # ------------------------------------------------------------------ batches
    def row(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, i = self.locate(position)
        idx = self.epoch_rows(epoch)[i]
        ex = self.examples
        return build_row(
            [ex.tokens[j] for j in idx], [ex.train[j] for j in idx], self.seq_len, self.pad_id
        )

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's `batch_size` rows; every rank advances by batch_size × world_size rows."""
        start = self._position + self.rank * batch_size
        pairs = [self.row(start + i) for i in range(batch_size)]
        self._position += batch_size * self.world_size
        inputs = torch.from_numpy(np.stack([p[0] for p in pairs]))
        targets = torch.from_numpy(np.stack([p[1] for p in pairs]))
        return inputs, targets

    @property
    def position(self) -> int:
        return self._position

    @position.setter
    def position(self, value: int) -> None:
        self._position = int(value)

    def state_dict(self) -> dict:
        return {"kind": "sft", "position": self._position, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "sft" or state.get("fingerprint") != self.fingerprint:
            raise GrowlmError(
                "the instruction data, template, seq_len, packing or seed differ from the ones "
                "the run was started with; resume with the same inputs or start a new run"
            )
        self._position = int(state["position"])


def padded_batches(
    examples: Examples, seq_len: int, pad_id: int, batch_size: int, max_rows: int | None = None
):
    """(inputs, targets) batches of one example per row, in order (for validation loss)."""
    n = len(examples) if max_rows is None else min(len(examples), max_rows)
    for start in range(0, n, batch_size):
        pairs = [
            build_row([examples.tokens[i]], [examples.train[i]], seq_len, pad_id)
            for i in range(start, min(start + batch_size, n))
        ]
        yield (
            torch.from_numpy(np.stack([p[0] for p in pairs])),
            torch.from_numpy(np.stack([p[1] for p in pairs])),
        )
