"""Floating-point formats: names, aliases, and every constant taken from ``finfo``.

A :class:`Format` wraps a numpy / ml_dtypes dtype.  Nothing here is a typed-in
table: ``max``, ``tiny``, ``eps`` ... come from ``numpy.finfo`` (float16/32/64) or
``ml_dtypes.finfo`` (bfloat16, float8), and derived facts (unit roundoff, whether
the format has an infinity) are computed from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import ml_dtypes
import numpy as np

__all__ = ["Format", "FORMATS", "DEFAULT_FORMATS", "ALL_FORMATS", "get_format", "format_names"]


@dataclass(frozen=True)
class Format:
    """One binary floating-point format.

    Attributes derived from finfo: ``max`` (largest finite), ``tiny`` (smallest
    positive normal), ``smallest_subnormal``, ``eps`` (spacing of numbers just
    above 1, ``2**(1-p)``), ``precision`` (significand bits p, hidden bit
    included) and ``unit_roundoff`` ``u = eps / 2`` (round-to-nearest bound on
    the relative error of one operation).
    """

    name: str
    dtype: np.dtype
    aliases: tuple[str, ...] = field(default=())

    @cached_property
    def finfo(self):
        if self.dtype in _NUMPY_NATIVE:
            return np.finfo(self.dtype)
        return ml_dtypes.finfo(self.dtype)

    @cached_property
    def max(self) -> float:
        return float(self.finfo.max)

    @cached_property
    def tiny(self) -> float:
        return float(self.finfo.smallest_normal)

    @cached_property
    def smallest_subnormal(self) -> float:
        return float(self.finfo.smallest_subnormal)

    @cached_property
    def eps(self) -> float:
        return float(self.finfo.eps)

    @cached_property
    def precision(self) -> int:
        """Significand bits p, including the hidden bit (float32: 24)."""
        return int(self.finfo.nmant) + 1

    @cached_property
    def unit_roundoff(self) -> float:
        """u = eps / 2 = 2**-p."""
        return self.eps / 2

    @cached_property
    def min_exponent(self) -> int:
        """e such that tiny = 2**e."""
        return math.frexp(self.tiny)[1] - 1

    @cached_property
    def has_inf(self) -> bool:
        """False for float8_e4m3fn, whose overflow (and inf input) gives NaN."""
        with np.errstate(all="ignore"):
            return bool(np.isinf(np.array(np.inf).astype(self.dtype)))

    @cached_property
    def ln_max(self) -> float:
        """ln(max): the largest x with finite exp(x) is just below this."""
        return math.log(self.max)

    @cached_property
    def ln_smallest_subnormal(self) -> float:
        """ln(smallest subnormal): exp(x) rounds to 0 a little below this."""
        return math.log(self.smallest_subnormal)

    @cached_property
    def default_tolerance(self) -> float:
        """sqrt(u): a result with larger relative error lost over half its bits."""
        return math.sqrt(self.unit_roundoff)

    def round(self, x) -> np.ndarray:
        """Correctly round float64 values to this format (round to nearest even).

        numpy converts float64 to float16/32 correctly, but ml_dtypes converts
        float64 via float32, which double-rounds (1 + 2**-8 + 2**-30 becomes
        bfloat16 1, not 1 + 2**-7).  We round to float32 *to odd* first (an
        inexact result with an even last bit moves one ulp towards x); rounding
        that to p <= 22 bits is then correct (Boldo & Melquiond, 2008).
        """
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(all="ignore"):
            if self.dtype in _NUMPY_NATIVE:
                return x.astype(self.dtype)
            y = x.astype(np.float32)
            towards_x = np.where(x > y, np.inf, -np.inf).astype(np.float32)
            to_odd = (y != x) & np.isfinite(y) & ((y.view(np.uint32) & 1) == 0)
            y = np.where(to_odd, np.nextafter(y, towards_x), y)
            return y.astype(self.dtype)

    def ulp(self, r) -> np.ndarray:
        """Spacing of the format at |r|: 2**(max(floor(log2|r|), emin) - (p - 1)).

        Values beyond ``max`` use the exponent they would have; 0 maps to the
        smallest subnormal.
        """
        r = np.abs(np.asarray(r, dtype=np.float64))
        with np.errstate(all="ignore"):
            _, e = np.frexp(r)
        e = np.where(r == 0, self.min_exponent, np.maximum(e - 1, self.min_exponent))
        return np.ldexp(1.0, e - (self.precision - 1))

    def __str__(self) -> str:
        return self.name


_NUMPY_NATIVE = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _fmt(name: str, dtype, *aliases: str) -> Format:
    return Format(name, np.dtype(dtype), tuple(aliases))


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        _fmt("float16", np.float16, "fp16", "half", "f16"),
        _fmt("bfloat16", ml_dtypes.bfloat16, "bf16"),
        _fmt("float32", np.float32, "fp32", "single", "f32"),
        _fmt("float64", np.float64, "fp64", "double", "f64"),
        _fmt("float8_e4m3fn", ml_dtypes.float8_e4m3fn, "e4m3", "e4m3fn", "fp8_e4m3"),
        _fmt("float8_e5m2", ml_dtypes.float8_e5m2, "e5m2", "fp8_e5m2"),
    )
}
DEFAULT_FORMATS: tuple[Format, ...] = tuple(FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64"))
ALL_FORMATS: tuple[Format, ...] = tuple(FORMATS.values())

_BY_NAME = {key: f for f in FORMATS.values() for key in (f.name, *f.aliases)}


def format_names() -> list[str]:
    """Canonical names, then 'all'."""
    return [*FORMATS, "all"]


def get_format(name: str) -> Format:
    """Look a format up by name or alias (case-insensitive); KeyError lists valid names."""
    try:
        return _BY_NAME[name.strip().lower()]
    except KeyError:
        valid = ", ".join(f"{f.name} ({'/'.join(f.aliases)})" for f in FORMATS.values())
        raise KeyError(f"unknown format {name!r}; valid: {valid}, all") from None
