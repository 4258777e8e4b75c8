"""The wide type: the numpy type in which a format's values are evaluated before rounding.

The rule, in one place (:func:`wide_dtype`):

* a format of at most 24 significand bits (float8, float16, bfloat16, float32): ``float64``.
  Its values convert exactly, and float64's 53 bits hold a product of two of them exactly
  (2 * 24 <= 53, and the exponent range of the product fits);
* a format of at most 53 bits (float64): ``np.longdouble``, where it has at least 64
  significand bits (:data:`LONGDOUBLE_IS_WIDE`: x87 80-bit extended on x86 Linux, IEEE quad on
  aarch64 Linux);
* otherwise none (``None``): on Windows and macOS on ARM ``np.longdouble`` is float64 itself,
  and float64 values are then evaluated with mpmath or exact rules instead.

The error bounds the callers assume for the wide type (``crmath.WIDE_REL_ERROR``, the interval
arithmetic's slack, ``reference.fast_error``) are stated for these two types only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .formats import Format

__all__ = ["LONGDOUBLE_IS_WIDE", "wide_dtype"]

LONGDOUBLE_IS_WIDE: bool = bool(np.finfo(np.longdouble).nmant >= 63)
"""Whether ``np.longdouble`` has at least 64 significand bits (63 stored), i.e. is wider than float64."""

_FLOAT64 = np.dtype(np.float64)
_LONGDOUBLE = np.dtype(np.longdouble)


def wide_dtype(fmt: Format) -> np.dtype | None:
    """The wide type of ``fmt`` (see the module docstring): float64 for p <= 24 bits,
    longdouble for p <= 53 bits where :data:`LONGDOUBLE_IS_WIDE`, else None."""
    if fmt.precision <= 24:
        return _FLOAT64
    if fmt.precision <= 53 and LONGDOUBLE_IS_WIDE:
        return _LONGDOUBLE
    return None
