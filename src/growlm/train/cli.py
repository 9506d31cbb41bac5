"""`growlm train RECIPE.toml [--set key=value ...] [--resume]`."""

from __future__ import annotations

import json
import re
import sys

# What gloo and NCCL raise when a peer process is gone; any other RuntimeError stays a bug.
_PEER_LOST = re.compile(r"Connection (reset|closed|refused)|Broken pipe|Timed out|timeout|"
                        r"NCCL|gloo", re.IGNORECASE)


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="TOML recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set optim.lr=1e-3 --set stage.2.tokens=20M")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--out", help="run directory (overrides run.out_dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or stage log")


def run(args) -> int:
    from growlm.config import load_recipe
    from growlm.train.distributed import maybe_init_distributed
    from growlm.train.trainer import Trainer

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run.out_dir={json.dumps(args.out)}")
    cfg = load_recipe(args.recipe, overrides)
    dist = maybe_init_distributed(cfg)
    try:
        return run_to_end(Trainer(cfg, resume=args.resume, dist=dist, quiet=args.quiet), dist)
    finally:
        if dist is not None:
            dist.close()


def run_to_end(trainer, dist, command: str = "train", resume_hint: str | None = None) -> int:
    """Run a built trainer; a clean stop exits 143, a lost peer rank 1, each with one line."""
    from growlm.train.trainer import Stopped

    try:
        summary = trainer.run()
    except Stopped as e:
        print(str(e).replace("growlm train RECIPE", resume_hint) if resume_hint else str(e))
        return 143
    except RuntimeError as e:
        if dist is None or not _peer_lost(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"growlm {command}: error: rank {dist.rank} lost contact with another rank "
              f"({first[:200]}); the run resumes from its last checkpoint with --resume",
              file=sys.stderr)
        return 1
    if trainer.rank == 0:
        print(json.dumps(summary, indent=1))
    return 0


def _peer_lost(e: RuntimeError) -> bool:
    import torch.distributed as tdist

    return isinstance(e, tdist.DistError) or bool(_PEER_LOST.search(str(e)))
