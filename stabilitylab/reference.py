"""Exact references, returned as float64 pairs ``hi + lo`` and an exact-zero mask.

``hi`` is the float64 nearest to the exact value and ``lo`` the float64 nearest
to the remainder, so ``hi + lo`` carries ~106 bits: enough to measure errors of
a float64 computation in fractions of an ulp.  References are always for the
*format-rounded* inputs, so a measured error is the arithmetic's alone.

Two paths:

* :func:`exact` evaluates the experiment's mpmath formula at ``DIGITS``
  digits, memoised per distinct row.  Used for every metric that is printed.
* :func:`fast` evaluates the experiment's vectorized extended-precision
  formula (x86 80-bit ``longdouble``: 64-bit significand, relative error below
  ``FAST_ERROR`` for our formulas; measured: below 2**-62 on the families).
  Used for formats of at most 24 bits (where that is below 2**-24 ulp) and by
  the threshold search; :func:`engine.evaluate` re-runs with :func:`exact` any
  row whose status the fast reference cannot decide.  Where ``longdouble`` is
  not wider than float64, :func:`fast` is :func:`exact`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import mpmath
import numpy as np

__all__ = ["DIGITS", "FAST_ERROR", "HAVE_EXTENDED", "hi_lo", "exact", "fast"]

DIGITS = 40
FAST_ERROR = 2.0**-48  # bound on a fast reference's relative error: (K + 4) 2**-63 for K <= 2**14 terms
HAVE_EXTENDED = np.finfo(np.longdouble).nmant >= 63


def hi_lo(values: Iterable[mpmath.mpf]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split exact values into float64 (hi, lo) arrays (non-finite: lo = 0), and a
    mask of exact zeros (a non-zero value below float64's range has hi = lo = 0)."""
    his, los, zeros = [], [], []
    for r in values:
        zeros.append(r == 0)
        if mpmath.isnan(r) or mpmath.isinf(r):
            his.append(float(r))
            los.append(0.0)
            continue
        hi = float(r)
        his.append(hi)
        los.append(float(r - mpmath.mpf(hi)) if np.isfinite(hi) else 0.0)
    return np.array(his, dtype=np.float64), np.array(los, dtype=np.float64), np.array(zeros, dtype=bool)


def exact(experiment, inputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """hi, lo, exact-zero mask of the experiment's mpmath loss, per row of ``inputs``.

    Rows are tuples of Python floats (exactly the format-rounded inputs);
    repeated rows cost once.
    """
    fn: Callable = experiment.reference_fn
    cache: dict[tuple, mpmath.mpf] = {}
    out = []
    with mpmath.workdps(DIGITS):
        for row in experiment.exact_rows(inputs):
            r = cache.get(row)
            if r is None:
                r = cache[row] = fn(*row)
            out.append(r)
        return hi_lo(out)


def fast(experiment, inputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`exact` (relative error < FAST_ERROR), vectorized in longdouble.

    The experiment's ``fast_reference(inputs)`` returns the loss in longdouble,
    the exact-zero mask (decided exactly, not from the rounded value) and a mask
    of rows it handles; other rows (non-finite inputs) go through mpmath.
    """
    if not HAVE_EXTENDED or experiment.fast_reference is None:
        return exact(experiment, inputs)
    with np.errstate(all="ignore"):
        r, zero, handled = experiment.fast_reference(inputs)
        hi = r.astype(np.float64) + 0.0  # -0 -> +0, as mpmath gives
        lo = np.where(np.isfinite(hi), (r - hi.astype(np.longdouble)).astype(np.float64), 0.0)
    if not handled.all():
        rows = np.flatnonzero(~handled)
        h2, l2, z2 = exact(experiment, inputs.take(rows))
        hi[rows], lo[rows], zero[rows] = h2, l2, z2
    return hi, lo, zero
