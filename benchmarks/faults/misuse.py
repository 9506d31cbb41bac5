"""Misuse sweep: realistic mistakes with every command, each run as a real `python -m growlm`
process, and each outcome classified.

A case builds its bad input in a folder of its own (a recipe, a damaged copy of a finished run,
a file where a folder should be, a full disk, a second process on the same run folder, ...),
runs one command there and inspects what happened:

  clean       non-zero exit, exactly one line on stderr, no traceback, nothing written (a
              failure only the run itself can meet, such as a full disk, may follow warnings)
  warned      the documented handling of a doubtful input: exit 0 with a warning naming it
  handled     a follow-up that must work (a rerun after a kill): exit 0 and its checks pass
  traceback   a Python traceback, or an exit status growlm never uses (a crash)
  silent      exit 0 on nonsense
  late        refused, but only after files were written or steps were taken
  corrupted   a run, shard, HF or sweep folder the case started from no longer verifies (or
              no longer resumes to the same numbers), or a follow-up check failed
  leftover    a temporary file or folder (.tmp-*, .old-*, .trash-*, *.growlm-export-tmp) left
  not-one-line a refusal without a traceback but not in exactly one stderr line
  hang        still running after --timeout seconds

It prints the counts and every failure, and writes a JSON summary (--json).

    python benchmarks/faults/misuse.py                       # every case, about 15 minutes
    python benchmarks/faults/misuse.py --only 'train/' --jobs 2 --workdir /tmp/mu --keep
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
sys.path[:0] = [str(HERE), str(SRC)]

from misuse_cases import CASES, Launch, Workspace, build_workspace  # noqa: E402

FAILURES = ("traceback", "silent", "late", "corrupted", "leftover", "not-one-line", "hang")
TEMP_NAME = re.compile(r"\.(tmp|trash|old)-|\.growlm-export-(tmp|old)$|^\.tmp-")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="regex: run the cases whose id matches")
    p.add_argument("--jobs", type=int, default=1, help="cases run at once (default 1)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per command")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", type=Path, default=None, help="write the summary here")
    p.add_argument("--list", action="store_true", help="list the case ids and exit")
    return p.parse_args()


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root: sha256 of a file, "dir" for a folder, "link" for a symlink."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path)] = "link"
        elif path.is_dir():
            out[str(path)] = "dir"
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def command_env(extra: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONWARNINGS": "default"}
    env.pop("GROWLM_FAULT", None)
    env.pop("GROWLM_FAULT_NAN", None)
    return {**env, **extra}


def _limits(fsize: int | None):
    if fsize is None:
        return None

    def apply() -> None:  # in the child, before exec
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return apply


def run_command(launch: Launch, cwd: Path, timeout: float) -> dict:
    argv = [sys.executable, "-m", "growlm", *launch.argv]
    t0 = time.time()
    try:
        done = subprocess.run(argv, cwd=cwd, env=command_env(launch.env), capture_output=True,
                              timeout=timeout, preexec_fn=_limits(launch.fsize),
                              input=launch.stdin, text=True, errors="replace")
        rc, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, _text(e.stdout), _text(e.stderr)
    return {"rc": rc, "stdout": out, "stderr": err, "seconds": round(time.time() - t0, 1)}


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def classify(launch: Launch, result: dict, changes: list[str], temps: list[str],
             problems: list[str]) -> tuple[str, str]:
    rc, err = result["rc"], result["stderr"]
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if rc is None:
        return "hang", "no exit"
    if "Traceback (most recent call last)" in err + result["stdout"] or rc not in (0, 1, 2, 130, 143):
        return "traceback", _last_lines(err)
    if problems:
        return "corrupted", "; ".join(problems)
    if temps:
        return "leftover", ", ".join(temps[:3])
    if launch.expect == "ok":
        return ("handled", _last_lines(result["stdout"], 1)) if rc == 0 else ("corrupted", _last_lines(err))
    if launch.expect == "warn":
        said = result["stdout"] + err
        if rc == 0 and re.search(launch.match or "warning", said):
            return "warned", next((s for s in said.splitlines() if re.search(launch.match or "warning", s)), "")
        return ("silent", "exit 0 without the warning") if rc == 0 else ("not-one-line", _last_lines(err))
    if rc == 0:
        return "silent", _last_lines(result["stdout"]) or "exit 0"
    if changes and not launch.writes:
        return "late", f"{lines[-1] if lines else ''} — but wrote {', '.join(changes[:3])}"
    if launch.writes:  # warnings the run printed before it failed
        lines = [line for line in lines if not line.startswith("warning:")]
    if len(lines) != 1:
        return "not-one-line", _last_lines(err)
    if launch.match and not re.search(launch.match, lines[0]):
        return "not-one-line", f"unexpected message: {lines[0]}"
    return "clean", lines[0]


def _last_lines(text: str, n: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-n:])[:600]


def run_case(case, ws: Workspace, root: Path, timeout: float) -> dict:
    folder = root / re.sub(r"[^A-Za-z0-9.-]+", "_", case.id)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    launch = case.setup(ws, folder)
    if isinstance(launch, list):
        launch = Launch(launch)
    handle = launch.before(folder) if launch.before else None
    before = snapshot(folder)
    result = run_command(launch, folder, timeout)
    problems = list(launch.after(folder, result, handle) if launch.after else [])
    after = snapshot(folder)
    # A run folder's lock file names its holder: taking the lock rewrites it, before any check
    # (the checks must run under the lock), so only a lock file that is new counts as a write.
    changes = [p for p, h in after.items() if before.get(p) != h and not TEMP_NAME.search(Path(p).name)
               and h != "dir" and not (Path(p).name == ".lock" and p in before)]
    changes += [p for p, h in after.items() if h == "dir" and p not in before]
    temps = [p for p in after if p not in before and TEMP_NAME.search(Path(p).name)]
    for kind, path in launch.protect:
        problems += ws.verify(kind, path)
    outcome, detail = classify(launch, result, [os.path.relpath(p, folder) for p in changes],
                               [os.path.relpath(p, folder) for p in temps], problems)
    return {"id": case.id, "outcome": outcome, "detail": detail, "exit": result["rc"],
            "seconds": result["seconds"], "argv": [a.replace(str(folder), "<case>") for a in launch.argv]}


def main() -> int:
    args = parse_args()
    cases = [c for c in CASES if not args.only or re.search(args.only, c.id)]
    if args.list:
        print("\n".join(c.id for c in cases))
        return 0
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="growlm-misuse-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ws = build_workspace(workdir / "workspace")
    shared_before = snapshot(ws.root)
    print(f"workspace ready in {time.time() - t0:.0f} s; {len(cases)} cases", flush=True)
    t1 = time.time()
    results = []

    def one(case):
        r = run_case(case, ws, workdir / "cases", args.timeout)
        print(f"{r['outcome']:>12}  {r['id']}  ({r['seconds']} s): {r['detail'][:160]}", flush=True)
        return r

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(one, cases))
    wall = time.time() - t1
    changed = sorted(set(shared_before.items()) ^ set(snapshot(ws.root).items()))
    counts = Counter(r["outcome"] for r in results)
    commands = Counter(r["argv"][0] if r["argv"] else "-" for r in results)
    failures = [r for r in results if r["outcome"] in FAILURES]
    print()
    print(f"cases: {len(results)} ({', '.join(f'{k} {v}' for k, v in sorted(commands.items()))})")
    print("| outcome | cases |\n|---|---:|")
    for outcome in ("clean", "warned", "handled", *FAILURES):
        print(f"| {outcome} | {counts.get(outcome, 0)} |")
    print(f"shared workspace changed: {len(changed) // 2 if changed else 0} paths")
    print(f"wall time {wall:.0f} s (workspace {t1 - t0:.0f} s)")
    if failures:
        print("\nfailures:")
        for r in failures:
            print(f"  {r['outcome']}: {r['id']}: growlm {' '.join(r['argv'])[:200]}\n      {r['detail'][:500]}")
    summary = {"cases": len(results), "counts": {k: counts.get(k, 0) for k in ("clean", "warned", "handled", *FAILURES)},
               "commands": dict(commands), "shared_workspace_changed": bool(changed),
               "wall_s": round(wall), "results": results}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print("ALL CLEAN" if not failures and not changed else f"FAILED: {len(failures)} cases")
    return 0 if not failures and not changed else 1


if __name__ == "__main__":
    sys.exit(main())
