"""Run the reproduction's tasks, several at once, each in its own single-threaded process.

Why processes: the models are small (the chinchilla scale's matrices are 32 wide), so a second
torch thread in the same process adds little (at d_model 128 one process with two threads ran
1.28x as fast as one thread), while two processes on two cores do twice the work. Each task is
resumable on its own (it runs sweeps, which skip what is finished), so the scheduler needs no
state of its own to continue: run the same command again.

A task starts when the tasks it depends on have finished, in list order among those ready. Its
output goes to <work>/logs/<task>.log. When a task fails or the scheduler is signalled, no new
task starts, the running ones are sent SIGINT (they checkpoint and stop) and the scheduler
returns the first non-zero exit code. Per-task wall and CPU seconds (from wait4's rusage)
accumulate in <work>/progress.json across sessions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Task:
    name: str
    after: tuple[str, ...] = ()  # tasks that must finish first
    args: list[str] = field(default_factory=list)  # the child's command line


def ready(tasks: list[Task], done: set[str], started: set[str]) -> list[Task]:
    """Tasks not yet started whose dependencies are all done, in list order."""
    return [t for t in tasks if t.name not in started and all(a in done for a in t.after)]


def check_graph(tasks: list[Task]) -> None:
    """Every dependency names a task of the list that comes before it (so no cycles)."""
    seen: set[str] = set()
    for t in tasks:
        missing = [a for a in t.after if a not in seen]
        if missing:
            raise ValueError(f"task {t.name} depends on {missing[0]}, which is not an earlier task")
        seen.add(t.name)


class Progress:
    """<work>/progress.json: per-task wall/CPU seconds and status, summed over sessions."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}
        self.data.setdefault("tasks", {})
        self.data.setdefault("sessions", [])

    def record(self, name: str, wall: float, cpu: float, status: str) -> None:
        entry = self.data["tasks"].setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "attempts": 0})
        entry["wall_s"] += wall
        entry["cpu_s"] += cpu
        entry["attempts"] += 1
        entry["status"] = status
        self.save()

    def add(self, key: str, seconds: float) -> None:
        self.data[key] = self.data.get(key, 0.0) + seconds
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def run_tasks(tasks: list[Task], jobs: int, logs: Path, progress: Progress, say=print,
              poll_s: float = 0.5) -> int:
    """Run `tasks` as child processes, at most `jobs` at a time; 0 when all succeeded, else the
    first failing exit code (130/143 when stopped by SIGINT/SIGTERM)."""
    check_graph(tasks)
    logs.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    started: set[str] = set()
    running: dict[int, tuple[Task, subprocess.Popen, float]] = {}
    stop = {"code": 0}

    def on_signal(signum, _frame):
        if not stop["code"]:
            stop["code"] = 128 + signum
            say(f"{signal.Signals(signum).name}: stopping the running tasks (they checkpoint)")
            for _, proc, _ in running.values():
                _signal(proc, signal.SIGINT)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.time()
    try:
        while True:
            if not stop["code"]:
                for task in ready(tasks, done, started)[: max(0, jobs - len(running))]:
                    started.add(task.name)
                    with open(logs / f"{task.name}.log", "ab") as out:
                        proc = subprocess.Popen(task.args, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)
                    running[proc.pid] = (task, proc, time.time())
                    say(f"started {task.name}")
            if not running:
                break
            for pid, (task, proc, start) in list(running.items()):
                got, status, usage = os.wait4(pid, os.WNOHANG)
                if got == 0:
                    continue
                proc.returncode = code = os.waitstatus_to_exitcode(status)
                del running[pid]
                wall, cpu = time.time() - start, usage.ru_utime + usage.ru_stime
                progress.record(task.name, wall, cpu, "done" if code == 0 else f"exit {code}")
                if code == 0:
                    done.add(task.name)
                    say(f"finished {task.name} ({wall / 60:.1f} min, {cpu / 60:.1f} CPU-min)")
                elif not stop["code"]:
                    stop["code"] = code if code > 0 else 128 - code
                    say(f"{task.name} failed (exit {code}); its log: {logs / (task.name + '.log')}")
                    say(_tail(logs / f"{task.name}.log"))
                    for _, other, _ in running.values():
                        _signal(other, signal.SIGINT)
            if len(done) == len(tasks):
                break
            time.sleep(poll_s)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        progress.add("scheduler_wall_s", time.time() - t0)
    return stop["code"]


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])
