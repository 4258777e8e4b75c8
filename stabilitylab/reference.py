"""High-precision references with mpmath, returned as float64 pairs ``hi + lo``.

``hi`` is the float64 nearest to the exact value and ``lo`` the float64 nearest
to the remainder, so ``hi + lo`` carries ~106 bits: enough to measure errors of
a float64 computation in fractions of an ulp.  References are computed at
``DIGITS`` decimal digits on the *format-rounded* inputs, so a measured error is
the arithmetic's alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import mpmath
import numpy as np

__all__ = ["DIGITS", "hi_lo", "evaluate"]

DIGITS = 40


def hi_lo(values: Iterable[mpmath.mpf]) -> tuple[np.ndarray, np.ndarray]:
    """Split exact values into float64 (hi, lo) arrays; non-finite: lo = 0."""
    his, los = [], []
    for r in values:
        if mpmath.isnan(r) or mpmath.isinf(r):
            his.append(float(r))
            los.append(0.0)
            continue
        hi = float(r)
        his.append(hi)
        los.append(float(r - mpmath.mpf(hi)) if np.isfinite(hi) else 0.0)
    return np.array(his, dtype=np.float64), np.array(los, dtype=np.float64)


def evaluate(fn: Callable[..., mpmath.mpf], rows: Iterable[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """hi, lo of ``fn(*row)`` for each row, at DIGITS digits, memoised per distinct row.

    Rows are tuples of Python floats (exactly the format-rounded inputs);
    repeated rows, common when several formats round inputs alike, cost once.
    """
    cache: dict[tuple, mpmath.mpf] = {}
    out = []
    with mpmath.workdps(DIGITS):
        for row in rows:
            r = cache.get(row)
            if r is None:
                r = cache[row] = fn(*row)
            out.append(r)
        return hi_lo(out)
