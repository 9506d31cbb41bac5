"""Human-friendly counts and sizes: "12B" tokens, "10GiB" of memory."""

from __future__ import annotations

import math
import re

from growlm.errors import GrowlmError

MAX_COUNT = 10**18  # far above any token count or byte size a run can have

_COUNT = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BYTES = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _split(text: str, what: str) -> tuple[float, str]:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m:
        raise GrowlmError(f"cannot read {what} {text!r}")
    return float(m.group(1)), m.group(2).upper()


def _finite_int(number: float, value, what: str) -> int:
    if not math.isfinite(number) or abs(number) > MAX_COUNT:
        raise GrowlmError(f"{what} {value!r} is not a finite number of at most {MAX_COUNT:.0e}")
    return int(number)


def parse_count(value: int | float | str, what: str = "count") -> int:
    """12B → 12e9; 500M → 5e8; plain numbers pass through. Non-finite or absurdly large
    values are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise GrowlmError(f"{what} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return _finite_int(value, value, what)
    number, suffix = _split(value, what)
    if suffix not in _COUNT:
        raise GrowlmError(f"{what} {value!r}: unknown suffix {suffix!r} (use K, M, B or T)")
    return _finite_int(number * _COUNT[suffix], value, what)


def parse_bytes(value: int | float | str, what: str = "size") -> int:
    """10GiB → 10·2^30; 512MB → 5.12e8. Non-finite or absurdly large values are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise GrowlmError(f"{what} must be a size, got {value!r}")
    if isinstance(value, (int, float)):
        return _finite_int(value, value, what)
    number, suffix = _split(value, what)
    if suffix not in _BYTES:
        raise GrowlmError(f"{what} {value!r}: unknown unit {suffix!r} (use B, KB, MB, GB, KiB, MiB, GiB, TiB)")
    return _finite_int(number * _BYTES[suffix], value, what)


def human_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def human_bytes(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def lower_or_higher(reduction: float) -> str:
    """A relative reduction as words: 0.382 → "38.2% lower", -0.05 → "5.0% higher"."""
    return f"{reduction:.1%} lower" if reduction >= 0 else f"{-reduction:.1%} higher"
