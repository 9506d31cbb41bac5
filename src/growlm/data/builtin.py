"""The built-in offline corpus: the Python standard library's own source and text files.

Every Python installation ships it, so the demo needs no download. Input spec:
`builtin:python` (default cap, about 3 MB of text) or `builtin:python:SIZE` with SIZE such as
`1MB`, `500KiB` or `all`. One file is one document.

The file order is a hash of each file's path relative to the library folder: deterministic on
every machine with the same Python version, and a capped sample spans the whole library
instead of the alphabetically first packages.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from growlm.errors import GrowlmError
from growlm.units import parse_bytes

PREFIX = "builtin:"
DEFAULT_MAX_BYTES = 3_000_000
_SUFFIXES = (".py", ".txt", ".rst")
# Test suites hold deliberately odd files (bad encodings, huge data); installed packages are
# not part of the standard library and differ between machines.
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
_MAX_FILE_BYTES = 512 * 1024


@dataclass(frozen=True)
class BuiltinCorpus:
    """The standard-library corpus, capped at `max_bytes` of file bytes (None = no cap)."""

    max_bytes: int | None = DEFAULT_MAX_BYTES

    def files(self) -> list[Path]:
        root = stdlib_dir()
        chosen, total = [], 0
        for path in _ordered_files(root):
            size = path.stat().st_size
            if self.max_bytes is not None and total + size > self.max_bytes:
                continue  # a smaller file later in the order may still fit
            chosen.append(path)
            total += size
        return chosen

    def documents(self) -> Iterator[str]:
        for path in self.files():
            text = _read_utf8(path)
            if text is not None:
                yield text

    def describe(self) -> dict:
        import platform

        files = self.files()
        listing = "\n".join(f"{p.relative_to(stdlib_dir()).as_posix()}:{p.stat().st_size}"
                            for p in files)
        return {"kind": "builtin", "name": "python", "python": platform.python_version(),
                "max_bytes": self.max_bytes, "files": len(files),
                "bytes": sum(p.stat().st_size for p in files),
                "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()}


def is_builtin(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def parse_builtin(spec: str) -> BuiltinCorpus:
    """`builtin:python[:SIZE]` → BuiltinCorpus; GrowlmError for anything else."""
    parts = str(spec)[len(PREFIX):].split(":")
    if parts[0] != "python" or len(parts) > 2:
        raise GrowlmError(f"unknown built-in corpus {spec!r}: use builtin:python or "
                          "builtin:python:SIZE (e.g. builtin:python:2MB, builtin:python:all)")
    if len(parts) == 1:
        return BuiltinCorpus()
    if parts[1].lower() == "all":
        return BuiltinCorpus(max_bytes=None)
    max_bytes = parse_bytes(parts[1], "built-in corpus size")
    if max_bytes <= 0:
        raise GrowlmError(f"built-in corpus size must be positive, got {parts[1]!r}")
    return BuiltinCorpus(max_bytes=max_bytes)


def stdlib_dir() -> Path:
    path = Path(sysconfig.get_paths()["stdlib"])
    if not path.is_dir():
        raise GrowlmError(f"the Python standard library folder {path} is missing; "
                          "the built-in corpus needs it")
    return path


@functools.lru_cache(maxsize=4)
def _ordered_files(root: Path) -> tuple[Path, ...]:
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]  # prune: the test suite is large
        for name in names:
            path = Path(folder, name)
            if path.suffix not in _SUFFIXES or path.is_symlink():
                continue
            if path.stat().st_size <= _MAX_FILE_BYTES:
                rel = path.relative_to(root).as_posix()
                found.append((hashlib.sha256(rel.encode()).hexdigest(), path))
    found.sort()
    return tuple(p for _, p in found)


def _read_utf8(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # a few library files use other encodings; skipping them is deterministic
