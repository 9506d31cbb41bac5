"""One writer per run folder.

`growlm train` holds an exclusive `flock` on `<run>/.lock` while it runs; a second process on
the same folder is refused in one line naming the holder. The lock dies with its process (the
kernel releases it), so a killed run never leaves a stale lock behind. A folder the lock had to
create is removed again when the run fails before writing anything into it.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from growlm.errors import GrowlmError

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        from growlm.files import check_output_dir, write_failure

        check_output_dir(self.run_dir, "run folder")
        self._created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            failure = write_failure(e, self.run_dir)
            raise (failure or GrowlmError(f"run folder {self.run_dir}: {e.strerror}")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise GrowlmError(f"{self.run_dir} is in use by {holder}; wait for it to finish, or use "
                              "another run.name / --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"growlm pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fd is None:
            return
        lock = self.run_dir / LOCK_FILE
        if exc_type is not None and self._created and _only(self.run_dir, lock):
            lock.unlink(missing_ok=True)
            os.close(self._fd)
            self.run_dir.rmdir()
            return
        os.close(self._fd)


def _only(folder: Path, lock: Path) -> bool:
    return [p for p in folder.iterdir()] == [lock]
