"""Seed statistics, and the rule that lets a difference decide a verdict only when it exceeds
the seed-to-seed spread.

Spread: the min–max range over the seeds (with 3 seeds a sample standard deviation is itself
too noisy to lean on, and the range assumes no distribution). A comparison of two methods A and
B is decided when the margin between their means exceeds the sum of their half-ranges — for
ranges centred on their means, exactly when the two ranges do not overlap. With one seed on
either side the spread is unknown; the comparison is then made on the single numbers and says
so ("1 seed").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HELD, NOT_HELD, OPEN = True, False, None  # a comparison's outcome: held, reversed, within spread


@dataclass(frozen=True)
class Stat:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def range(self) -> float:
        return self.hi - self.lo

    @property
    def half_range(self) -> float:
        return self.range / 2

    def fmt(self, digits: int = 4, scale: float = 1.0, suffix: str = "", sci: bool = False) -> str:
        """"5.1234 (5.1100–5.1340, 3 seeds)"; a single value says "(1 seed)". Values are
        multiplied by `scale` and followed by `suffix` ("%"); `sci`: 3.172e+12 style."""
        def f(x: float) -> str:
            return (f"{x * scale:.3e}" if sci else f"{x * scale:.{digits}f}") + suffix

        if self.n == 1:
            return f"{f(self.mean)} (1 seed)"
        return f"{f(self.mean)} ({f(self.lo)}–{f(self.hi)}, {self.n} seeds)"


def stat(values) -> Stat | None:
    """The finite values as a Stat; None when there are none."""
    kept = tuple(float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v))
    return Stat(kept) if kept else None


def spread(a: Stat, b: Stat) -> float:
    return a.half_range + b.half_range


def decide(margin: float, width: float) -> bool | None:
    """HELD when margin > width, NOT_HELD when margin < −width, else OPEN (within the spread)."""
    if margin > width:
        return HELD
    if margin < -width:
        return NOT_HELD
    return OPEN


def lower(a: Stat, b: Stat, offset: float = 0.0) -> tuple[bool | None, float, float]:
    """Is a's mean below b's mean + offset, by more than the spread? (outcome, margin, spread)"""
    margin = b.mean + offset - a.mean
    width = spread(a, b)
    return decide(margin, width), margin, width


def seeds_note(*stats: Stat) -> str:
    return " (1 seed: spread not measured)" if any(s.n < 2 for s in stats) else ""
