"""The output folder of `prepare`: written whole or not at all.

All files are written into a hidden temporary folder beside OUT_DIR (`.OUT.tmp-PID`), meta.json
last, and the folder is renamed into place at the end. An interrupted or failed run removes its
temporary folder; one killed outright leaves it behind, and the next run removes it (its PID is
no longer alive). A failed write (full disk, file-size limit, permissions) becomes one line
naming the output file, never a traceback.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

from growlm.errors import GrowlmError
from growlm.files import WriteError, write_failure


def make_temp_dir(out: Path) -> Path:
    """A fresh `.OUT.tmp-PID` beside `out`, after removing leftovers of dead runs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of killed runs: their temp folder, or the old output they were replacing.
    for kind in ("tmp", "old"):
        for stale in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if not (pid.isdigit() and _pid_alive(int(pid))):
                shutil.rmtree(stale, ignore_errors=True)
    tmp = temp_dir_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def temp_dir_name(out: Path) -> Path:
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def install(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`, replacing an older `out` (put back if that fails)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def as_write_error(exc: BaseException, tmp: Path, out: Path) -> WriteError | None:
    """A one-line error for a failed write inside `tmp`, naming the file under its final
    name in `out`; None when `exc` is not a write failure."""
    if isinstance(exc, GrowlmError):
        return None
    path = getattr(exc, "filename", None)
    if path:
        try:
            path = out / Path(path).relative_to(tmp)
        except ValueError:
            pass
    return write_failure(exc, path or out)


def write_text(path: Path, text: str) -> None:
    """Write and fsync a small file; an OSError names it (a bare write error has no name)."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e
