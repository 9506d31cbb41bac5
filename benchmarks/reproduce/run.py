"""Tiny reproduction of the seed papers' comparisons, at equal FLOPs, in one command.

    python benchmarks/reproduce/run.py --scale smoke       # minutes: checks every code path
    python benchmarks/reproduce/run.py --scale chinchilla  # 20 tokens/parameter, 3 seeds, ~90 min
    python benchmarks/reproduce/run.py --scale cpu         # the first CPU scale (0.33 tokens/param)
    python benchmarks/reproduce/run.py --scale gpu         # one GPU

Steps (each resumable: re-running the command skips what is done):
1. prepare the enwiki corpus (train + validation files of the shared data folder) with a
   byte-level BPE trained on it, its vocabulary sized so that embedding + head are ~23% of the
   final model's parameters, as in the seeds' models;
2. for each method, an LR search (search.py; the reuse methods first search the small model's
   LR alone and keep the best, as Lee et al. do), every run at the baseline's exact FLOPs; with
   `--operators gstack-lr` (the chinchilla scale's default) the operator family instead runs
   once each at gstack's best LR;
3. the baseline's and each searched method's best LR again with seeds 2 … n;
4. claim (a) on the GPT-2 vocabulary (a side run), where the scale defines one;
5. evaluate: WikiText-2 test perplexity and zero-shot tasks of seed 1, word similarity of every
   seed;
6. write the report: the claims with their seed spread, the seeds and search tables, the
   `growlm compare` report, hardware, versions and date.
Tasks run in parallel single-threaded processes (tasks.py), `--jobs` at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import methods as M  # noqa: E402  (the sibling modules of this script)
import pipeline as P  # noqa: E402
from tasks import Progress, Task, run_tasks  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=list(M.SCALES), help="default: chinchilla")
    p.add_argument("--smoke", action="store_true", help="the same as --scale smoke")
    p.add_argument("--gpu", action="store_true", help="the same as --scale gpu (needs CUDA)")
    p.add_argument("--data-dir", help="shared data folder (default: $GROWLM_DATA, else "
                                      "../shared/data beside the repository)")
    p.add_argument("--work", help="runs and shards (default: runs/reproduce-<scale>)")
    p.add_argument("--results", help="report folder (default: benchmarks/reproduce/results/"
                                     "<scale>; smoke: <work>/report)")
    p.add_argument("--operators", choices=("searched", "gstack-lr"),
                   help="the operator family: its own LR searches and seeds, or one run each at "
                        "gstack's best LR (default: the scale's; gstack-lr at chinchilla)")
    p.add_argument("--methods", help="comma-separated subset of: "
                                     + ", ".join(m.name for m in M.METHODS))
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report what has finished so far")
    p.add_argument("--jobs", type=int, help="tasks at a time, each in a single-threaded process "
                                            "(default: the CPU count; 1 with CUDA)")
    p.add_argument("--threads", type=int, help="torch threads per task (default: 1 with several "
                                               "jobs; else all cores, or 1 when the load average "
                                               "exceeds the core count)")
    p.add_argument("--task", help=argparse.SUPPRESS)  # run one task (the scheduler's children)
    args = p.parse_args(argv)
    given = [s for s, on in (("smoke", args.smoke), ("gpu", args.gpu)) if on]
    if args.scale:
        given.append(args.scale)
    if len(set(given)) > 1:
        p.error(f"choose one scale, not {' and '.join(sorted(set(given)))}")
    args.scale = given[0] if given else "chinchilla"
    if args.jobs is not None and args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def find_data(given: str | None) -> Path:
    path = Path(given or os.environ.get("GROWLM_DATA") or REPO.parent / "shared" / "data")
    if not (path / P.CORPUS / "train.jsonl.gz").is_file():
        sys.exit(f"enwiki corpus not found under {path / P.CORPUS}; pass --data-dir or set GROWLM_DATA")
    return path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def set_threads(requested: int | None) -> int:
    """On a CPU already busier than its cores, one thread per process beats two by far (OpenMP
    threads wait on each other when descheduled)."""
    import torch

    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    n = requested or (1 if busy and not torch.cuda.is_available() else os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def build_tasks(ctx: P.Context, chosen: list[str], child: list[str]) -> list[Task]:
    """Every method's run at lr0 first (so that an interrupted run still compares them all),
    then the searches, the seeds, claim (a)'s side run and the evaluations."""
    ms = sorted((m for m in M.METHODS if m.name in chosen), key=lambda m: m.small is None)
    side = (ctx.scale.wordsim_side is not None
            and all(n in chosen for n in P.SIDE_MODELS.values()))
    source = {m.name: M.lr_source(m, ctx.scale) for m in ms}
    searched = [m for m in ms if source[m.name] is None]

    def seeds(m):
        return range(2, M.seed_count(m, ctx.scale) + 1)

    names: list[tuple[str, tuple[str, ...]]] = [("prepare-side", ())] if side else []
    centre = tuple(f"centre:{m.name}" for m in searched)
    names += [(c, ()) for c in centre]
    names += [(f"search:{m.name}", centre) for m in searched]
    # a borrowed LR: one run, once the search it borrows from has finished
    names += [(f"search:{m.name}", (f"search:{source[m.name]}",)) for m in ms if source[m.name]]
    names += [(f"seed{k}:{m.name}", (f"search:{m.name}",)) for m in ms for k in seeds(m)]
    if side:
        first = {"standard": "search:standard", "one-layer": "centre:reuse-one-layer-attn"}
        names += [(f"side:{which}:seed{k}", ("prepare-side", first[which]))
                  for k in range(1, ctx.scale.seeds + 1) for which in P.SIDE_MODELS]
    names += [(f"eval:{m.name}", (f"search:{m.name}", *(f"seed{k}:{m.name}" for k in seeds(m))))
              for m in ms]
    return [Task(n, after, [*child, "--task", n]) for n, after in names]


def run_task(ctx: P.Context, name: str) -> None:
    kind, *rest = name.split(":")
    if kind == "prepare-side":
        P.prepare_side(ctx)
    elif kind == "centre":
        P.task_centre(ctx, M.method(rest[0]))
    elif kind == "search":
        P.task_search(ctx, M.method(rest[0]))
    elif kind.startswith("seed"):
        P.task_seed(ctx, M.method(rest[0]), int(kind[len("seed"):]))
    elif kind == "side":
        P.task_side(ctx, rest[0], int(rest[1][len("seed"):]))
    elif kind == "eval":
        P.task_evaluate(ctx, M.method(rest[0]))
    else:
        raise ValueError(f"unknown task {name!r}")


def run_in_process(ctx: P.Context, tasks: list[Task], progress: Progress) -> None:
    """One task at a time in this process (--jobs 1)."""
    for t in tasks:
        log(f"task {t.name}")
        wall, cpu = time.time(), _cpu()
        run_task(ctx, t.name)
        progress.record(t.name, time.time() - wall, _cpu() - cpu, "done")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> int:
    args = parse_args(argv)
    scale = M.SCALES[args.scale]
    if args.operators:
        scale = dataclasses.replace(scale, operators=args.operators)
    data_dir = find_data(args.data_dir)
    work = Path(args.work or f"runs/reproduce-{scale.name}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    ctx = P.Context(scale, data_dir, work, log)
    if args.task:  # a child of the scheduler
        set_threads(args.threads or 1)
        run_task(ctx, args.task)
        return 0
    results = Path(args.results or (work / "report" if scale.name == "smoke" else
                                    HERE / "results" / scale.name)).resolve()
    chosen = args.methods.split(",") if args.methods else [m.name for m in M.METHODS]
    unknown = set(chosen) - {m.name for m in M.METHODS}
    if unknown or M.BASELINE not in chosen:
        sys.exit(f"--methods: unknown {sorted(unknown)}" if unknown
                 else "--methods must include standard (the baseline)")
    lenders = {M.lr_source(M.method(n), scale) for n in chosen} - {None} - set(chosen)
    if lenders:
        sys.exit(f"--methods must include {', '.join(sorted(lenders))}: at the {scale.name} scale "
                 f"the operator family runs at its best LR (or pass --operators searched)")
    import torch

    jobs = args.jobs or (1 if torch.cuda.is_available() else os.cpu_count() or 1)
    threads = set_threads(args.threads or (1 if jobs > 1 else None))
    progress = Progress(work / "progress.json")
    progress.data.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    env = {"load_start": os.getloadavg(), "started": progress.data["started"], "jobs": jobs,
           "threads": threads}
    log(f"scale {scale.name}: {scale.params:,} parameters, {scale.tokens_per_param:.1f} tokens "
        f"per parameter; work {work}, results {results}; {jobs} job(s) x {threads} thread(s)")
    t = time.time()
    P.prepare_main(ctx)
    progress.add("prepare_s", time.time() - t)
    target = ctx.target()
    log(f"every method runs at {target:.3e} FLOPs (exact count), the baseline's")
    if not args.report_only:
        child = [sys.executable, str(Path(__file__).resolve()), "--scale", scale.name, "--work",
                 str(work), "--data-dir", str(data_dir), "--threads", str(threads),
                 "--operators", scale.operators]
        tasks = build_tasks(ctx, chosen, child)
        if jobs == 1:
            run_in_process(ctx, tasks, progress)
        else:
            rc = run_tasks(tasks, jobs, work / "logs", progress, say=log)
            if rc:
                log("stopped; run the same command again to continue")
                return rc
    env["load_end"] = os.getloadavg()
    from results import write_results

    outcomes = [P.outcome(ctx, m) for m in M.METHODS if m.name in chosen]
    side = P.side_outcome(ctx) if all(n in chosen for n in P.SIDE_MODELS.values()) else None
    path = write_results(outcomes, scale, work, ctx.shards, results, target, progress.data, env, side)
    log(f"report: {path}")
    return 0


if __name__ == "__main__":
    from growlm.errors import GrowlmError
    from growlm.files import WriteError
    from growlm.train.trainer import Stopped

    try:
        sys.exit(main())
    except Stopped as e:
        print(f"{e}; run the same command again to continue", file=sys.stderr)
        sys.exit(e.exit_code)
    except WriteError as e:  # a failed write (disk full, ...)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except GrowlmError as e:  # bad input
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
