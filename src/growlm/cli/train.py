"""`growlm train RECIPE [--set key=value ...] [--resume] [--dry-run]`; RECIPE is a TOML file or a
recipe of growlm's library by name (growlm.recipe_library)."""

from __future__ import annotations

import json
import re
import shlex
import sys

# What gloo and NCCL raise when a peer process is gone; any other RuntimeError stays a bug.
_PEER_LOST = re.compile(r"Connection (reset|closed|refused)|Broken pipe|Timed out|timeout|"
                        r"NCCL|gloo", re.IGNORECASE)


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="TOML recipe file, or a library name such as "
                        "tiny/step-2stage (growlm recipes list)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set optim.lr=1e-3 --set stage.2.tokens=20M; "
                             "KEY=null removes a key")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--out", help="run folder (overrides run.out_dir)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the whole recipe (every stage built on the meta device, the data, the "
                             "run folder) and exit without training")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or stage log")


def run(args) -> int:
    from growlm.config import load_recipe
    from growlm.eval.scheduled import benchmark_hooks
    from growlm.train.distributed import maybe_init_distributed
    from growlm.train.trainer import Trainer

    overrides = list(args.overrides)
    if args.out is not None:  # given empty, it is refused (run.out_dir), not ignored
        overrides.append(f"run.out_dir={json.dumps(args.out)}")
    cfg = load_recipe(args.recipe, overrides)
    hooks = benchmark_hooks(cfg)
    if args.dry_run:
        return dry_run(cfg, hooks, args.resume)
    dist = maybe_init_distributed(cfg)
    hint = shlex.join(["growlm", "train", args.recipe, *[x for o in args.overrides for x in ("--set", o)],
                       *(["--out", args.out] if args.out is not None else []), "--resume"])
    try:
        trainer = Trainer(cfg, resume=args.resume, dist=dist, quiet=args.quiet, hooks=hooks)
        return run_to_end(trainer, dist, resume_hint=hint)
    finally:
        if dist is not None:
            dist.close()


def dry_run(cfg, hooks, resume: bool = False) -> int:
    """Everything `growlm train` checks before its first step (the run folder and, with
    --resume, the checkpoint it would continue from, included), and nothing written."""
    from growlm.stages import recipe_notes
    from growlm.train.trainer import Trainer

    trainer = Trainer(cfg, resume=resume, quiet=True, hooks=hooks)
    trainer._open_data()
    trainer._check_run_dir(trainer._manager())  # read-only: an existing run must match the recipe
    for note in [*recipe_notes(cfg, trainer.stages), *trainer._data_notes()]:
        print(f"note: {note}")
    steps = sum(s.steps for s in trainer.stages)
    print(f"{cfg.source}: {len(trainer.stages)} stage{'s' if len(trainer.stages) > 1 else ''}, "
          f"{steps:,} steps, every stage builds; nothing was written (dry run)")
    return 0


def run_to_end(trainer, dist, command: str = "train", resume_hint: str | None = None) -> int:
    """Run a built trainer. A clean stop exits 128 + the signal (SIGINT 130, SIGTERM 143) with
    the command that resumes; a lost peer rank exits 1; each with one line."""
    from growlm.train.trainer import Stopped

    try:
        summary = trainer.run()
    except Stopped as e:
        if trainer.rank == 0:
            print(f"growlm {command}: {e}; resume with: {resume_hint or 'the same command and --resume'}",
                  file=sys.stderr)
        return e.exit_code
    except RuntimeError as e:
        if dist is None or not _peer_lost(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"growlm {command}: error: rank {dist.rank} lost contact with another rank "
              f"({first[:200]}); the run resumes from its last checkpoint with --resume",
              file=sys.stderr)
        return 1
    if trainer.rank == 0:
        print(format_summary(summary))
    return 0


def format_summary(s: dict) -> str:
    from growlm.units import human_count

    loss = "-" if s["val_loss"] is None else f"{s['val_loss']:.4f}"
    extra = "".join(f", {s[k]} {k.replace('_', ' ')}" for k in ("skipped_steps", "rollbacks") if s[k])
    return (f"done: {s['steps']:,} steps, {human_count(s['tokens'])} tokens, {s['flops']:.3g} FLOPs, "
            f"final val loss {loss}, {s['elapsed_s'] / 60:.1f} min training{extra} → {s['out_dir']}")


def _peer_lost(e: RuntimeError) -> bool:
    import torch.distributed as tdist

    return isinstance(e, tdist.DistError) or bool(_PEER_LOST.search(str(e)))
