"""`SFTTrainer`: the pretraining Trainer fed by an `SFTLoader` instead of token shards.

Only the data hooks change: `_open_data` builds the loader over the tokenized instruction
examples, and `val_loss` averages the loss over the response tokens of the held-out examples.
Steps, checkpoints, resume, metrics and signals are the Trainer's.
"""

from __future__ import annotations

import torch

from growlm.sft.data import SFTData
from growlm.sft.loader import SFTLoader, padded_batches
from growlm.train.step import IGNORE_INDEX, token_loss_sum
from growlm.train.trainer import Trainer


class SFTTrainer(Trainer):
    """The pretraining Trainer with instruction data: only the data hooks differ."""

    def __init__(self, cfg, data: SFTData, **kwargs):
        self.sft_data = data
        super().__init__(cfg, **kwargs)

    def _open_data(self) -> None:
        d = self.sft_data
        self.tokenizer_path = d.tokenizer_path
        self.loader = SFTLoader(
            d.train,
            self.cfg.data.seq_len,
            self.cfg.run.seed,
            rank=self.rank,
            world_size=self.world,
            packing=d.packing,
            pad_id=d.pad_id,
        )
        self.val_tokens = None  # the pretraining val path is unused; see val_loss

    @torch.no_grad()
    def val_loss(self, model) -> float | None:
        """Mean loss over the response tokens of the held-out examples (one per row)."""
        val = self.sft_data.val
        if val is None:
            return None
        seq = self.cfg.data.seq_len
        max_rows = max(1, self.cfg.run.eval_tokens // seq)
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for x, y in padded_batches(
            val, seq, self.sft_data.pad_id, self.cfg.train.micro_batch_size, max_rows
        ):
            x, y = x.to(self.device), y.to(self.device)
            with self.autocast():
                total += float(token_loss_sum(model, x, y))
            count += int((y != IGNORE_INDEX).sum())
        model.train(was_training)
        return total / count
