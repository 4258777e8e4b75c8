"""Whether two outputs of one format agree: bit for bit, or within 1 ulp of the format.

Both arrays hold values of the format ``fmt`` (as float64 or float32).  The definitions, used by
``audit``'s *resembles* and by the streaming path's target-versus-method counts:

* **identical**: ``a == b`` (so -0 = +0, and an infinity equals only the infinity of its sign), or
  both NaN (every NaN is one value);
* **within 1 ulp**: identical, or both finite and neighbours in the format: ``b`` is ``a`` or the
  next format value above or below it, which for format values is
  ``|a - b| <= ulp(min(|a|, |b|))`` with ``ulp(r) = 2**(max(floor(log2 r), emin) - (p - 1))``
  (:meth:`Format.ulp`; across a power of two the step below is half the step above, and the
  smaller magnitude's ulp is the step between them; -0 and +0 count as one value, so the smallest
  subnormals of the two signs are 2 steps apart).  A finite value is never within 1 ulp of an
  infinity (``max`` and ``inf`` are not neighbours: overflow is not a rounding difference), and
  NaN is within 1 ulp of NaN only;
* **within a tolerance** ``tol`` (relative): identical, or both finite and
  ``|a - b| <= tol * max(|a|, |b|)``: the looser agreement of two orders of one long sum (a sum of
  32768 terms in float32 in another order than pairwise is often several ulps away, and within
  ``sqrt(u)`` of it).
"""

from __future__ import annotations

import numpy as np

from .formats import Format

__all__ = ["identical", "within_one_ulp", "within_tolerance"]


def identical(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask: equal values, -0 = +0, NaN = NaN."""
    a, b = np.asarray(a), np.asarray(b)
    return (a == b) | (np.isnan(a) & np.isnan(b))


def within_one_ulp(fmt: Format, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask: identical, or both finite and adjacent in ``fmt`` (see the module docstring)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        near = np.isfinite(a) & np.isfinite(b) & (np.abs(a - b) <= fmt.ulp(np.minimum(np.abs(a), np.abs(b))))
    return identical(a, b) | near


def within_tolerance(tol: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask: identical, or both finite and ``|a - b| <= tol * max(|a|, |b|)`` (relative difference)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        close = np.isfinite(a) & np.isfinite(b) & (np.abs(a - b) <= tol * np.maximum(np.abs(a), np.abs(b)))
    return identical(a, b) | close
