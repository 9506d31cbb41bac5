"""Distributed hooks (torchrun). Single-process runs get `None` and pay nothing."""

from __future__ import annotations

import os


def maybe_init_distributed(cfg):
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from growlm.errors import GrowlmError

    raise GrowlmError("multi-process training is not available in this version of growlm")
