"""Tiny reproduction of the seed papers' comparisons, at equal FLOPs, in one command.

    python benchmarks/reproduce/run.py --smoke        # a few minutes: checks the pipeline
    python benchmarks/reproduce/run.py                # CPU scale, ~1 hour on 2 cores
    python benchmarks/reproduce/run.py --gpu          # one GPU: 16x the parameters, 22x the tokens

Steps (each resumable: re-running the command skips what is done):
1. prepare the enwiki corpus (train + validation files of the shared data folder) with a
   byte-level BPE trained on it, its vocabulary sized so that embedding + head are ~23% of the
   final model's parameters, as in the seeds' models;
2. for each method, an LR sweep with `growlm sweep` (the reuse methods first sweep the small
   model's LR alone and keep the best, as Lee et al. do, then sweep stage 2's LR); every
   variant runs at the baseline's exact FLOPs;
3. evaluate each method's best run: WikiText-2 test perplexity, zero-shot tasks (--limit),
   word similarity of embedding and head;
4. write the `growlm compare` report with the sweep table, the seeds' claims checked, and the
   hardware, versions and date.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import methods as M  # noqa: E402  (the sibling module of this script)

CORPUS = "corpus/enwiki_2015_wikiextractor"
TASKS = "wikitext,lambada,hellaswag,piqa,arc_easy,arc_challenge,openbookqa,winogrande,wordsim"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny pipeline check (minutes)")
    size.add_argument("--gpu", action="store_true", help="the GPU scale (needs CUDA)")
    p.add_argument("--data-dir", help="shared data folder (default: $GROWLM_DATA, else "
                                      "../shared/data beside the repository)")
    p.add_argument("--work", help="runs and shards (default: runs/reproduce-<scale>)")
    p.add_argument("--results", help="report folder (default: benchmarks/reproduce/results[/gpu]; "
                                     "smoke: <work>/report)")
    p.add_argument("--methods", help="comma-separated subset of: "
                                     + ", ".join(m.name for m in M.METHODS))
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: evaluate and report the best finished run of each sweep "
                        "so far (for a run that could not finish)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores, but 1 when "
                                               "the load average already exceeds the core count: "
                                               "on a busy machine 2 threads ran 6x slower than 1)")
    return p.parse_args(argv)


def find_data(given: str | None) -> Path:
    path = Path(given or os.environ.get("GROWLM_DATA") or REPO.parent / "shared" / "data")
    if not (path / CORPUS / "train.jsonl.gz").is_file():
        sys.exit(f"enwiki corpus not found under {path / CORPUS}; pass --data-dir or set GROWLM_DATA")
    return path


class Log:
    """Timestamped progress on stdout and in <work>/progress.json (phase wall times)."""

    def __init__(self, work: Path):
        self.path = work / "progress.json"
        self.t0 = time.time()
        self.phases: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.threads: int | None = None  # --threads
        self.gpu = False

    def __call__(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{(time.time() - self.t0) / 60:5.1f} min] {msg}", flush=True)

    def phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds
        self.path.write_text(json.dumps(self.phases, indent=1))


def prepare_data(scale: M.Scale, data_dir: Path, out: Path, log: Log) -> Path:
    from growlm.data import prepare

    t = time.time()
    corpus = data_dir / CORPUS
    shards = prepare(out, [corpus / "train.jsonl.gz"], val_inputs=[corpus / "validation.jsonl.gz"],
                     train_vocab=scale.vocab, progress=False, log=log, **scale.prepare)
    log.phase("prepare data", time.time() - t)
    log(f"shards: {shards.num_tokens('train'):,} train / {shards.num_tokens('val'):,} val tokens, "
        f"vocab {shards.vocab_size}")
    return out


def set_threads(requested: int | None, gpu: bool) -> None:
    """On a CPU already busier than its cores, one thread per process beats two by far (OpenMP
    threads wait on each other when descheduled); decided again before every sweep."""
    import torch

    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    torch.set_num_threads(requested or (1 if busy and not gpu else os.cpu_count() or 1))


def _sweep(recipe_text: str, name: str, key: str, values: list[str], work: Path, log: Log,
           mode: str, centre: str | None = None) -> dict:
    """Run a sweep: all variants ("full"), only the `centre` value ("centre"), or none
    ("report": read what sweep.json says so far)."""
    from growlm.sweep import SWEEP_FILE, best_variant, run_sweep, variants

    recipe = work / "recipes" / f"{name}.toml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(recipe_text)
    grid = variants([(key, values)])
    if mode == "report":
        path = work / "sweeps" / name / SWEEP_FILE
        known = {v["name"]: v for v in json.loads(path.read_text())["variants"]} if path.is_file() else {}
        entries = [known.get(v["name"], {**v, "status": "pending"}) for v in grid]
        return {"variants": entries, "best": best_variant(entries)}
    set_threads(log.threads, log.gpu)
    only = [grid[values.index(centre)]["name"]] if mode == "centre" and centre in values else None
    t = time.time()
    summary = run_sweep(recipe, [f"{key}={','.join(values)}"], work / "sweeps" / name, quiet=True,
                        log=log, only=only)
    log.phase(f"train {name}", time.time() - t)
    return summary


def _best_value(summary: dict, key: str) -> str | None:
    best = next((v for v in summary["variants"] if v["name"] == summary["best"]), None)
    if best is None:
        return None
    return next(o.split("=", 1)[1] for o in best["overrides"] if o.startswith(key + "="))


def run_method(method: M.Method, scale: M.Scale, shards: Path, work: Path, target: int,
               log: Log, mode: str = "full") -> dict:
    """Sweep one method; return {"method", "sweeps": [...], "best_dir", "stages"}.

    mode "centre" runs only the LR grid's centre (lr0) and the cheap stage-1 sweeps, "full"
    the whole grid, "report" nothing (it reads the sweeps' state)."""
    out: dict = {"method": method.name, "sweeps": []}
    lr_s1 = None
    centre = M.lr_values(scale, (1.0,))[0]
    if method.small is not None:
        values = M.lr_values(scale, method.stage1_grid)
        s1 = _sweep(M.stage1_recipe(method, scale, shards), f"{method.name}-stage1", "optim.lr",
                    values, work, log, "report" if mode == "report" else "full")
        lr_s1 = _best_value(s1, "optim.lr") or values[0]
        out["sweeps"].append({"what": "stage 1 (small model alone)", "key": "optim.lr", **s1})
        log(f"{method.name}: best stage-1 LR {lr_s1}")
    text, info = M.method_recipe(method, scale, shards, target, lr_s1)
    summary = _sweep(text, method.name, method.sweep_key, M.lr_values(scale, method.grid), work, log,
                     mode, centre)
    out["sweeps"].append({"what": "full run", "key": method.sweep_key, **summary})
    out["stages"] = info
    out["lr_s1"] = lr_s1
    out["best_lr"] = _best_value(summary, method.sweep_key)
    out["best_dir"] = str(work / "sweeps" / method.name / summary["best"]) if summary["best"] else None
    log(f"{method.name}: best {method.sweep_key} {out['best_lr']}")
    return out


def evaluate(run_dir: Path, data_dir: Path, scale: M.Scale, log: Log) -> None:
    from growlm.cli import main as growlm

    if (run_dir / "eval.json").is_file():
        return
    t = time.time()
    rc = growlm(["eval", str(run_dir), "--tasks", TASKS, "--data-dir", str(data_dir),
                 "--limit", str(scale.eval_limit), "--json", str(run_dir / "eval.json"),
                 "--quiet", "--batch-size", "32"])
    log.phase("evaluate", time.time() - t)
    if rc != 0:
        log(f"evaluation of {run_dir} failed (exit {rc})")


def main(argv=None) -> int:
    args = parse_args(argv)
    scale = M.SCALES["smoke" if args.smoke else "gpu" if args.gpu else "cpu"]
    data_dir = find_data(args.data_dir)
    work = Path(args.work or f"runs/reproduce-{scale.name}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = Path(args.results or (work / "report" if args.smoke else
                                    HERE / "results" / ("gpu" if args.gpu else ""))).resolve()
    chosen = args.methods.split(",") if args.methods else [m.name for m in M.METHODS]
    unknown = set(chosen) - {m.name for m in M.METHODS}
    if unknown or "standard" not in chosen:
        sys.exit(f"--methods: unknown {sorted(unknown)} (standard is always needed)" if unknown
                 else "--methods must include standard (the baseline)")
    log = Log(work)
    log.threads, log.gpu = args.threads, args.gpu
    set_threads(args.threads, args.gpu)
    env = {"load_start": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    log(f"scale {scale.name}: work {work}, results {results}")
    shards = prepare_data(scale, data_dir, work / "shards", log)
    target = M.baseline_flops(scale, shards)
    log(f"every method runs at {target:.3e} FLOPs (exact count), the baseline's")
    todo = [m for m in M.METHODS if m.name in chosen]
    if not args.report_only:
        # every method's centre LR first, so that an interrupted run still compares them all
        for m in todo:
            run_method(m, scale, shards, work, target, log, "centre")
    mode = "report" if args.report_only else "full"
    outcomes = [run_method(m, scale, shards, work, target, log, mode) for m in todo]
    for o in outcomes:
        if o["best_dir"]:
            log(f"evaluating {o['method']}")
            evaluate(Path(o["best_dir"]), data_dir, scale, log)
    env["load_end"] = os.getloadavg()
    from claims import write_results

    path = write_results(outcomes, scale, work, shards, results, target, log.phases, env, data_dir)
    log(f"report: {path}")
    return 0


if __name__ == "__main__":
    from growlm.errors import GrowlmError
    from growlm.train.trainer import Stopped

    try:
        sys.exit(main())
    except Stopped as e:
        sys.exit(f"{e}; run the same command again to continue")
    except GrowlmError as e:
        sys.exit(f"error: {e}")
