"""Optimizers (GaLore) and learning-rate schedules."""

from growlm.optim.galore import GaLoreAdamW, build_galore
from growlm.optim.schedule import constant, jagged_cosine, linear, lr_schedule, warmup_cosine

__all__ = [
    "GaLoreAdamW",
    "build_galore",
    "constant",
    "jagged_cosine",
    "linear",
    "lr_schedule",
    "warmup_cosine",
]
