"""Progress for every long operation, in a terminal or in a log file.

In a terminal (stdout and stderr both TTYs) a tqdm bar is drawn and left on screen when it
ends. Anywhere else (a log file, a batch job, torchrun's prefixed output) carriage-return
frames would pile up in the log, so a plain line is printed instead: every 5% of a known total,
or at most once a minute otherwise, and always at the end.

    with progress(total=len(items), desc="scoring hellaswag", unit="ex") as bar:
        for item in items:
            ...
            bar.update(1)
            bar.set_postfix(acc=f"{acc:.3f}")

`enabled=False` (the commands' `--quiet`) gives an object whose methods do nothing.
"""

from __future__ import annotations

import sys
import time


def is_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


def _fmt_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


class LineProgress:
    """Plain lines on stdout: every 5% of `total` (or every `min_interval_s` when the total is
    unknown or the steps are slow), and at the end."""

    def __init__(self, desc: str, total: int | None, initial: int = 0, unit: str = "it",
                 min_interval_s: float = 60.0, every: int | None = None):
        self.desc, self.total, self.n, self.unit = desc, total, initial, unit
        # every=0: only the once-a-minute heartbeat (the caller prints its own lines)
        self.heartbeat_only = every == 0
        self.every = None if every == 0 else every or (max(1, total // 20) if total else None)
        self.min_interval_s = min_interval_s
        self.start = self.last = time.monotonic()
        self.postfix: dict = {}
        self._last_printed = initial
        self._closed = False

    def update(self, k: int = 1) -> None:
        before = self.n
        self.n += k
        now = time.monotonic()
        crossed = self.every is not None and self.n // self.every != before // self.every
        done = self.total is not None and self.n >= self.total and not self.heartbeat_only
        if crossed or done or now - self.last >= self.min_interval_s:
            self._print(now)

    def set_postfix(self, refresh: bool = True, **fields) -> None:
        self.postfix = fields

    def _print(self, now: float) -> None:
        self.last = now
        self._last_printed = self.n
        shown = "".join(f" {k} {v}" for k, v in self.postfix.items())
        if self.total:  # "grown step 5/6 loss 4.21"
            print(f"{self.desc} {self.unit} {self.n}/{self.total}{shown}", flush=True)
        else:  # "tokenizing 1.2M tok (310K tok/s)"
            rate = self.n / max(now - self.start, 1e-9)
            print(f"{self.desc} {_fmt_count(self.n)} {self.unit}{shown} ({_fmt_count(rate)} {self.unit}/s)",
                  flush=True)

    def write(self, msg: str) -> None:
        print(msg, flush=True)

    def close(self) -> None:
        if not self._closed and self.n != self._last_printed and not self.heartbeat_only:
            self._print(time.monotonic())
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NoProgress:
    n = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix(self, refresh: bool = True, **fields) -> None:
        pass

    def write(self, msg: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: int | None = None, desc: str = "", *, enabled: bool = True, initial: int = 0,
             unit: str = "it", every: int | None = None):
    """A progress reporter (module docstring). `every`: print a line every this many units
    when the output is not a terminal (default: every 5% of `total`; 0: only a line a minute,
    for callers that print their own lines)."""
    if not enabled:
        return NoProgress()
    if not is_terminal():
        return LineProgress(desc, total, initial, unit, every=every)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit != "it",
                dynamic_ncols=True, leave=True)


def log_line(msg: str) -> None:
    """A message that must not tear a terminal progress bar."""
    if is_terminal():
        from tqdm.auto import tqdm

        tqdm.write(msg)
    else:
        print(msg, flush=True)
