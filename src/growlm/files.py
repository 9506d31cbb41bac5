"""Writing files safely, and turning write failures into one-line errors.

Every file growlm writes goes through a temporary name and `os.replace`, so a crash or a full
disk never leaves a half-written file under the real name. Libraries report a full disk in
their own words — `OSError(ENOSPC)` from Python, ``SafetensorError("... No space left on
device (os error 28)")`` from safetensors, ``RuntimeError("[enforce fail at
inline_container.cc:...] unexpected pos ...")`` from `torch.save` — and `write_failure`
recognises each of them, so the CLI can print one line instead of a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

from growlm.errors import GrowlmError

# What safetensors (Rust) appends to an I/O error: "... (os error 28)".
_RUST_OS_ERROR = re.compile(r"os error (\d+)")
# torch.save's zip writer reports a short write this way (the errno is lost).
_TORCH_SHORT_WRITE = ("unexpected pos", "inline_container", "PytorchStreamWriter failed")


class WriteError(GrowlmError):
    """A file could not be written (disk full, permissions, a path through a file, ...)."""


def check_path(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path, refusing what no file system accepts (a NUL byte, an empty string)."""
    text = os.fspath(path)
    if not text:
        raise GrowlmError(f"{what}: empty path")
    if "\x00" in text:
        raise GrowlmError(f"{what}: {text!r} contains a NUL byte")
    return Path(text)


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Refuse an output folder that cannot be created: a NUL byte, or an existing file at the
    path or at one of its parents. Nothing is created."""
    p = check_path(path, what)
    for parent in (p, *p.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == p else f"lies under {parent}, which is a file"
                raise GrowlmError(f"{what}: {p} {where}, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise GrowlmError(f"{what}: {parent} is not writable")
            break
    return p


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Refuse an output file that cannot be written: an empty path, a NUL byte, an existing
    folder at the path, or a regular file among its parents. Nothing is created, so a command
    checks its outputs before it does any work."""
    p = check_path(path, what)
    if p.is_dir():
        raise GrowlmError(f"{what}: {p} is a folder; give a file name")
    check_output_dir(p.parent, what)
    return p


def check_apart(out: str | os.PathLike, inputs, what: str) -> None:
    """Refuse an output folder that is one of the `inputs`, lies inside one, or holds one:
    replacing it (--overwrite) would delete what the command reads. Symlinks are resolved."""
    target = Path(out).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source:
            raise GrowlmError(f"{what}: {out} is the input {given} itself; write somewhere else")
        if source in target.parents:
            raise GrowlmError(f"{what}: {out} lies inside the input {given}; write somewhere else")
        if target in source.parents:
            raise GrowlmError(f"{what}: {out} holds the input {given}; write somewhere else")


def errno_of(exc: BaseException) -> int | None:
    """The OS error number behind a write failure from Python, safetensors or torch.save."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    text = str(exc)
    m = _RUST_OS_ERROR.search(text)
    if m:
        return int(m.group(1))
    if isinstance(exc, RuntimeError) and any(s in text for s in _TORCH_SHORT_WRITE):
        return errno.ENOSPC  # a short write; on a local disk that means it is full
    return None


def write_failure(exc: BaseException, path: str | os.PathLike | None = None) -> WriteError | None:
    """A one-line WriteError for an exception raised while writing `path`, or None when `exc`
    is not a write failure (then it is a bug and keeps its traceback)."""
    if isinstance(exc, GrowlmError):
        return None
    code = errno_of(exc)
    if code is None:
        if isinstance(exc, ValueError) and "null byte" in str(exc):
            return WriteError(f"{path or 'a path'} contains a NUL byte")
        return None
    where = path or getattr(exc, "filename", None)
    where = f" while writing {where}" if where else ""
    reason = os.strerror(code)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(f"{reason}{where}; free some space and run again (nothing partial was kept)")
    return WriteError(f"{reason}{where}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` under a temporary name beside `path`, fsync, then rename into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        failure = write_failure(e, path)
        if failure is not None:
            raise failure from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> None:
    """JSON that any parser reads: NaN and infinities are written as null."""
    atomic_write_text(path, json.dumps(to_json_safe(obj), indent=indent, allow_nan=False) + "\n")


def to_json_safe(obj):
    """`obj` with every non-finite float replaced by None (standard JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    return obj


def read_json(path: str | os.PathLike, what: str, expect: type = dict):
    """Parse a JSON file growlm wrote (or a user gave); one line naming the file when it is
    missing, not UTF-8, not JSON, or not of the `expect`ed top-level type."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GrowlmError(f"{path}: {what} not found") from None
    except UnicodeDecodeError:
        raise GrowlmError(f"{path}: {what} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise GrowlmError(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise GrowlmError(f"{path}: cannot read {what} ({os.strerror(e.errno or 0)})") from None
    if not isinstance(data, expect):
        raise GrowlmError(f"{path}: {what} must be a JSON {expect.__name__.replace('dict', 'object')}, "
                          f"got {type(data).__name__}")
    return data
