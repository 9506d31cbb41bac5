"""Checkpoint disk use: an upper-bound estimate made before a run starts, checked against
`run.disk_budget` and the free space of the output disk.

Per stage, a checkpoint holds fp32 weights (adapters included) and AdamW's two moments for
every trainable parameter; a stage-boundary checkpoint holds the weights, plus the moments
only when the next stage maps them. Retention keeps every boundary checkpoint and the newest
`keep_last` others, and one more exists for a moment while a new one is written before the
oldest is pruned. So the bound is

    sum over stages of boundary bytes  +  (keep_last + 1) × the largest mid-stage checkpoint.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from growlm.units import human_bytes

WEIGHT_BYTES = 4  # fp32 master weights
MOMENT_BYTES = 8  # AdamW exp_avg + exp_avg_sq, fp32
SMALL_FILES_BYTES = 64 * 1024  # meta.json (with provenance), loader/RNG state, file-system slack


def stage_checkpoint_bytes(cfg, stages, built=None) -> list[tuple[int, int]]:
    """(weight bytes, optimizer bytes) of one checkpoint of each stage. `built`: the stages
    built on the meta device (growlm.train.boundary.check_recipe), made here when not given."""
    from growlm.train.boundary import check_recipe, stage_accounting

    out = []
    for b in built or check_recipe(cfg, stages):
        counts = stage_accounting(b, cfg)["params"]
        out.append((WEIGHT_BYTES * counts["total"], MOMENT_BYTES * (counts["trainable"] + counts["adapter"])))
    return out


def estimate_checkpoint_bytes(cfg, stages, tokenizer: Path | None = None, built=None) -> int:
    """Upper bound of the bytes a run's checkpoints occupy at any one time (module docstring).
    Each checkpoint also holds a copy of `tokenizer` and a few small files."""
    extra = SMALL_FILES_BYTES + (Path(tokenizer).stat().st_size if tokenizer and Path(tokenizer).is_file() else 0)
    sizes = stage_checkpoint_bytes(cfg, stages, built)
    boundary = 0
    for i, (weights, moments) in enumerate(sizes):
        maps = i + 1 < len(stages) and stages[i + 1].spec.optimizer_state == "map"
        boundary += weights + (moments if maps else 0) + extra
    rolling = (cfg.run.keep_last + 1) * (max(w + m for w, m in sizes) + extra) if cfg.run.ckpt_every else 0
    return boundary + rolling


def _free_bytes(path: Path) -> int | None:
    for parent in (path, *path.parents):
        if parent.exists():
            return shutil.disk_usage(parent).free
    return None


def check_disk_budget(cfg, stages, out_dir: Path, tokenizer: Path | None = None, built=None) -> str | None:
    """Print (and return) a one-line warning when the estimate exceeds run.disk_budget or the
    free space of the output disk; None when it fits."""
    need = estimate_checkpoint_bytes(cfg, stages, tokenizer, built)
    budget, free = cfg.run.disk_budget, _free_bytes(Path(out_dir).resolve())
    if budget is not None and need > budget:
        limit = f"more than run.disk_budget = {human_bytes(budget)}"
    elif free is not None and need > free:
        limit = f"more than the {human_bytes(free)} free on the disk of {out_dir}"
    else:
        return None
    message = (f"warning: the checkpoints of this run may need up to {human_bytes(need)} "
               f"(keep_last = {cfg.run.keep_last} plus {len(stages)} stage-boundary checkpoints), "
               f"{limit}; lower run.keep_last or run.ckpt_every, or free some space")
    print(message, file=sys.stderr, flush=True)
    return message
