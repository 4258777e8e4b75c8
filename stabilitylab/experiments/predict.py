"""Analytic thresholds: where IEEE rounding says a formulation must break.

Rounding facts used (round to nearest, ties to even):

* a result overflows iff its exact value exceeds ``T = max + ulp(max)/2``, or
  equals T and T rounds up (IEEE formats: max has an odd last bit, so the tie
  goes to inf; float8_e4m3fn's max 448 is even and its tie stays 448);
* a positive result rounds to 0 iff it is at most ``smallest_subnormal / 2``
  (the tie goes to 0, which is even); under flush-to-zero iff it rounds below
  ``tiny``, i.e. is below ``tiny - smallest_subnormal / 2``.

All arithmetic here is mpmath at 50 digits; results are format values or integers.
"""

from __future__ import annotations

import mpmath
import numpy as np

from ..numerics.formats import Format

__all__ = ["overflow_bound", "zero_bound", "first_power_at_most", "first_value_above"]

_DPS = 50


def overflow_bound(fmt: Format) -> tuple[mpmath.mpf, bool]:
    """(T, tie_overflows): values above T overflow, T itself iff tie_overflows."""
    t = mpmath.mpf(fmt.max) + mpmath.mpf(float(fmt.ulp(fmt.max))) / 2
    tie = not np.isfinite(fmt.held_twin.round(float(t), np.float64))  # (a saturating format: its twin overflows)
    return t, bool(tie)


def zero_bound(fmt: Format, ftz: bool = False) -> mpmath.mpf:
    """Positive values at most this (strictly below, under FTZ) round to zero."""
    half = mpmath.mpf(fmt.smallest_subnormal) / 2
    return mpmath.mpf(fmt.tiny) - half if ftz else half


def first_power_at_most(p: float, bound: mpmath.mpf, strict: bool = False) -> int | None:
    """Smallest n >= 1 with p**n <= bound (< bound if ``strict``); None if p >= 1."""
    with mpmath.workdps(_DPS):
        p = mpmath.mpf(p)
        if p >= 1:
            return None
        n = max(1, int(mpmath.floor(mpmath.log(bound) / mpmath.log(p))) - 1)
        while not (p**n < bound or (not strict and p**n == bound)):
            n += 1
        return n


def first_value_above(fmt: Format, x: mpmath.mpf) -> float:
    """The smallest value of the format strictly greater than the real number x >= 0."""
    with mpmath.workdps(_DPS):
        guess = float(fmt.round(float(x), np.float64))
        values = _neighbours(fmt, guess)
        return min(v for v in values if mpmath.mpf(v) > x)


def _neighbours(fmt: Format, v: float) -> list[float]:
    """v and the two format values on each side of it (via the bit pattern)."""
    if not fmt.native:  # (the formats of <= 16 bits ml_dtypes holds: their bits without importing it)
        b = int(fmt.pattern([v])[0])
        values = fmt.value_of(np.arange(max(b - 2, 0), b + 3) % (1 << fmt.bits))
        return [float(x) for x in values if np.isfinite(x)]
    bits_type = np.dtype(f"u{fmt.dtype.itemsize}")
    b = int(np.array([v], dtype=np.float64).astype(fmt.dtype).view(bits_type)[0])
    out = []
    for k in range(max(b - 2, 0), b + 3):
        x = np.array([k], dtype=bits_type).view(fmt.dtype).astype(np.float64)[0]
        if np.isfinite(x):
            out.append(float(x))
    return out
