"""`growlm sweep RECIPE --set stage.1.lr=1e-3,3e-3 [--set ...] [--out DIR]`: a grid of runs.

Every `--set` with comma-separated values is one axis of the grid (commas inside [...], {...}
or quotes do not split); a single value is applied to every variant. The variants run one
after another, each in its own run directory under DIR (default runs/sweep-<run.name>), named
after its values. Re-running the same command skips finished variants, resumes an interrupted
one from its checkpoint and skips variants recorded as failed (diverged). The best variant is
the one with the lowest final validation loss; sweep.json records every variant and the best.

A recipe stage can start from the best variant of a finished sweep with
``init = "best:<sweep dir>"`` (see `growlm.init_source`): the embedding/head reuse paper picks
its stage-1 model as the lowest-validation-loss run of an LR sweep.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from pathlib import Path

from growlm.errors import GrowlmError
from growlm.init_source import SWEEP_FILE, best_variant, read_sweep_file

SWEEP_OWNS = ("run.name", "run.out_dir")  # set by the sweep for every variant

# ---------------------------------------------------------------- the grid

def split_values(raw: str) -> list[str]:
    """Split on commas that are not inside brackets, braces or quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    if any(not p for p in parts):
        raise GrowlmError(f"--set value {raw!r}: empty value in the list (write a,b,c)")
    return parts


def parse_grid(items: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(fixed overrides, [(key, values)] axes) from `--set key=v1,v2` items."""
    fixed, axes = [], []
    for item in items:
        if "=" not in item:
            raise GrowlmError(f"--set {item!r}: expected key=value or key=v1,v2,...")
        key, raw = (s.strip() for s in item.split("=", 1))
        if not key:
            raise GrowlmError(f"--set {item!r}: empty key")
        if key in SWEEP_OWNS:  # honoured or refused: the sweep names and places every variant
            raise GrowlmError(f"--set {key}: the sweep sets {key} for each variant (<run.name>-<variant> "
                              "under --out); set it in the recipe, or use --out")
        if key in [k for k, _ in axes] or any(f.split("=", 1)[0] == key for f in fixed):
            raise GrowlmError(f"--set {key}: given twice; list all its values in one --set")
        values = split_values(raw)
        if len(values) == 1:
            fixed.append(f"{key}={values[0]}")
        else:
            if len(set(values)) != len(values):
                raise GrowlmError(f"--set {key}: repeated values in {raw!r}")
            axes.append((key, values))
    return fixed, axes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def variants(axes: list[tuple[str, list[str]]]) -> list[dict]:
    """[{"name": dir name, "overrides": ["key=value", ...]}] over the grid, in order."""
    if not axes:
        return [{"name": "run", "overrides": []}]
    out = []
    for combo in itertools.product(*(values for _, values in axes)):
        pairs = [(k, v) for (k, _), v in zip(axes, combo)]
        name = "__".join(f"{_slug(k)}={_slug(v)}" for k, v in pairs)
        out.append({"name": name, "overrides": [f"{k}={v}" for k, v in pairs]})
    if len({v["name"] for v in out}) != len(out):
        raise GrowlmError("two grid values give the same directory name; write them differently")
    return out


# ---------------------------------------------------------------- running

def _write_sweep(path: Path, data: dict) -> None:
    from growlm.files import atomic_write_json

    atomic_write_json(path, data)


def _variant_config(recipe, fixed: list[str], entry: dict, base_name: str, run_dir: Path):
    from growlm.config import load_recipe

    name = f"{base_name}-{entry['name']}"
    return load_recipe(recipe, [*fixed, *entry["overrides"], f"run.out_dir={json.dumps(run_dir.as_posix())}",
                                f"run.name={json.dumps(name)}"])


def _check_folder(out_dir: Path, grid: list[dict], configs: dict, previous: dict) -> None:
    """Refuse a sweep folder that holds another sweep: variants this grid does not have (its
    sweep.json would lose them), or a variant folder trained with other settings (it would be
    skipped as finished, or resumed, under this grid's name)."""
    from growlm.files import read_json
    from growlm.train.trainer import stages_fingerprint

    names = {v["name"] for v in grid}
    other = sorted(set(previous) - names)
    if other:
        raise GrowlmError(f"{out_dir} holds another sweep (its variant {other[0]} is not in this grid); "
                          "use another --out, or give a grid that includes its values")
    for name, cfg in configs.items():
        run_file = out_dir / name / "run.json"
        if run_file.is_file():
            recorded = read_json(run_file, "run record").get("fingerprint")
            if recorded != stages_fingerprint(cfg):
                raise GrowlmError(f"{out_dir / name}: this variant was trained with other settings "
                                  "(recipe or fixed --set values); use another --out")


def _variant_state(run_dir: Path) -> dict:
    """Status and numbers of a variant's run directory."""
    from growlm.report.runs import load_run

    if not (run_dir / "metrics.jsonl").is_file() and not (run_dir / "run.json").is_file():
        return {"status": "pending"}
    run = load_run(run_dir)
    loss = run.final_val_loss
    return {"status": "complete" if run.complete and _final_checkpoint_saved(run_dir, run) else "in progress",
            "final_val_loss": loss if loss is not None and math.isfinite(loss) else None,
            "flops": run.total("flops"), "tokens": run.total("tokens"), "wall_time": run.wall_time}


def _final_checkpoint_saved(run_dir: Path, run) -> bool:
    """The last stage's boundary checkpoint exists and verifies (its end record is logged just
    before it is written, so the record alone does not prove the variant finished)."""
    from growlm.checkpoint import latest_valid

    found = latest_valid(run_dir / "checkpoints")
    return (found is not None and found[1]["stage_complete"]
            and found[1]["global_step"] == run.total("step"))


def run_sweep(recipe: str | Path, sets: list[str], out: str | Path | None = None,
              quiet: bool = False, log=print, only: list[str] | None = None) -> dict:
    """Run (or continue) the grid; return the sweep summary written to sweep.json.

    `only`: names of the variants to run now (the others stay pending), so that a caller can
    run the most informative variants of several sweeps first."""
    from growlm import checkpoint as ckpt
    from growlm.config import load_recipe
    from growlm.eval.scheduled import benchmark_hooks
    from growlm.files import check_output_dir
    from growlm.train.trainer import Stopped, Trainer

    fixed, axes = parse_grid(sets)
    grid = variants(axes)
    base_cfg = load_recipe(recipe, fixed)  # refuse a bad recipe or fixed value before any run
    out_dir = check_output_dir(f"runs/sweep-{base_cfg.run.name}" if out is None else out, "sweep folder")
    # every variant is checked before the first one trains: a bad value in the last must not
    # cost the runs before it
    configs = {v["name"]: _variant_config(recipe, fixed, v, base_cfg.run.name, out_dir / v["name"])
               for v in grid}
    sweep_path = out_dir / SWEEP_FILE
    previous = {e["name"]: e for e in (read_sweep_file(sweep_path) or {}).get("variants", [])}
    _check_folder(out_dir, grid, configs, previous)
    unknown = sorted(set(only or []) - {v["name"] for v in grid})
    if unknown:
        raise GrowlmError(f"sweep: no variant named {unknown[0]!r}; the grid has "
                          f"{', '.join(v['name'] for v in grid)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"format": "growlm-sweep", "version": 1, "recipe": str(recipe), "fixed": fixed,
               "grid": {k: v for k, v in axes}, "metric": "final validation loss (lower is better)",
               "variants": [], "best": None}
    for v in grid:
        run_dir = out_dir / v["name"]
        entry = {"name": v["name"], "overrides": v["overrides"], **_variant_state(run_dir)}
        if previous.get(v["name"], {}).get("status") == "failed":
            entry = {**previous[v["name"]], "name": v["name"], "overrides": v["overrides"]}
        summary["variants"].append(entry)
    for entry in summary["variants"]:
        if entry["status"] in ("complete", "failed"):
            log(f"sweep: {entry['name']}: {entry['status']}, skipped")
            continue
        if only is not None and entry["name"] not in only:
            continue
        run_dir = out_dir / entry["name"]
        cfg = configs[entry["name"]]
        resume = bool(ckpt.list_checkpoints(run_dir / "checkpoints"))
        log(f"sweep: {entry['name']}: {'resuming' if resume else 'starting'} ({run_dir})")
        _write_sweep(sweep_path, {**summary, "best": best_variant(summary["variants"])})
        try:
            trainer = Trainer(cfg, resume=resume, quiet=quiet, hooks=benchmark_hooks(cfg))
            trainer.run()
            if trainer.stop_signal is not None:  # a signal during the variant's last checkpoint
                raise Stopped(trainer.stop_signal, trainer.counters.global_step)
        except GrowlmError as e:
            if "diverged" not in str(e):
                raise
            entry.update(status="failed", error=str(e), final_val_loss=None)
            log(f"sweep: {entry['name']}: failed: {e}")
        finally:  # also when stopped by a signal: sweep.json shows where the variant got to
            if entry["status"] != "failed":
                entry.update(_variant_state(run_dir))
            summary["best"] = best_variant(summary["variants"])
            _write_sweep(sweep_path, summary)
    summary["best"] = best_variant(summary["variants"])
    _write_sweep(sweep_path, summary)
    return summary


def format_sweep(summary: dict) -> str:
    from growlm.report.document import plain_table
    from growlm.report.write import fmt_flops, fmt_loss, fmt_time

    rows = [[("* " if e["name"] == summary.get("best") else "  ") + e["name"], e["status"],
             fmt_loss(e.get("final_val_loss")), fmt_flops(e.get("flops")),
             fmt_time(e.get("wall_time") or 0)] for e in summary["variants"]]
    table = plain_table(["variant", "status", "final val loss", "FLOPs", "time"], rows, "llrrr")
    best = summary.get("best")
    return table + "\n" + (f"best: {best}" if best else "no variant finished with a validation loss")


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="TOML recipe file, or a library name such as "
                        "tiny/step-2stage (growlm recipes list)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a grid axis (several values) or a fixed override (one value), "
                             "e.g. --set stage.2.lr=1e-3,3e-3,1e-2")
    parser.add_argument("--out", help="sweep directory (default: runs/sweep-<run.name>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or stage logs")


def run(args: argparse.Namespace) -> int:
    from growlm.files import check_path
    from growlm.train.trainer import Stopped

    out = None if args.out is None else check_path(args.out, "--out")
    try:
        summary = run_sweep(args.recipe, args.sets, out, quiet=args.quiet)
    except Stopped as e:
        print(f"growlm sweep: {e}; run the same growlm sweep command to continue", file=sys.stderr)
        return e.exit_code
    print(format_sweep(summary))
    failed = [e for e in summary["variants"] if e["status"] == "failed"]
    if failed and len(failed) == len(summary["variants"]):
        raise GrowlmError(f"every variant failed ({failed[0]['name']}: {failed[0].get('error')}); "
                          "no run to pick")
    return 0
