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

__all__ = ["Format", "FORMATS", "DEFAULT_FORMATS", "ALL_FORMATS", "get_format", "format_names", "round_bits"]


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

    def round(self, x, dtype=None) -> np.ndarray:
        """Correctly round float64 values to this format (round to nearest, ties to even).

        Returns the format's values in ``dtype`` (default: the format's own
        dtype; float32 or float64 hold every value of a format of <= 16 bits
        exactly).  numpy converts float64 to float16/32 correctly; ml_dtypes
        converts float64 via float32, which double-rounds (1 + 2**-8 + 2**-30
        becomes bfloat16 1, not 1 + 2**-7), so the other formats are rounded
        here with integer operations on float64's bits (:func:`round_bits`).
        """
        x = np.asarray(x, dtype=np.float64)
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        with np.errstate(all="ignore"):
            if self.dtype in _NUMPY_NATIVE:
                y = x.astype(self.dtype)
            else:  # exact in float32; ml_dtypes converts float32 quickly
                y = round_bits(x, self).astype(np.float32)
            return y.astype(dtype, copy=False)

    def round32(self, y) -> np.ndarray:
        """Correctly round float32 values to this format (<= 16 bits), as float32.

        A float32 result of + - * / on the format's values, rounded again to p <= 11
        bits, is the correctly rounded result (float32 has 24 >= 2p + 2 bits: double
        rounding is innocuous), so simulating in float32 costs one call of this.
        bfloat16 goes through ml_dtypes' conversion (float32's exponent range: 2x faster
        than the bit operations, which the tests check it against); the others through
        :func:`round_bits` (faster than numpy's float16 and ml_dtypes' float8 casts).
        """
        y = np.asarray(y, dtype=np.float32)
        if self.dtype == np.dtype(np.float32):
            return y
        with np.errstate(all="ignore"):
            if self.name == "bfloat16":
                return y.astype(self.dtype).astype(np.float32)
            return round_bits(y, self)

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
_UINT = {4: np.uint32, 8: np.uint64}


def round_bits(x: np.ndarray, fmt: Format) -> np.ndarray:
    """Round float32 or float64 ``x`` to ``fmt`` (p significand bits, min exponent emin) in
    the same dtype: round to nearest, ties to even, with IEEE overflow.

    Normal range: on the bits of x, add ``half - 1`` plus the last kept bit, then clear the
    dropped bits (a carry into the exponent is the correct next binade).  Below ``tiny``
    the spacing is fixed at ``q = 2**(emin - p + 1)``: ``(|x| + c) - c`` with ``c = q * 2**t``
    (t = x's significand bits) rounds |x| to a multiple of q in one hardware rounding.
    Beyond ``max`` (after rounding): +-inf, or NaN for a format without infinity.
    NaN stays NaN.  Checked against numpy / ml_dtypes on every float32 (tests).
    """
    if x.ndim == 0:  # (the fixes below write through a flat view, which only a C-ordered array of
        return round_bits(x.reshape(1), fmt).reshape(())  # at least one dimension gives)
    x = np.ascontiguousarray(x)
    info = np.finfo(x.dtype)
    uint = _UINT[x.dtype.itemsize]
    drop = info.nmant - (fmt.precision - 1)  # significand bits cleared
    bits = x.view(uint)
    rounded = (bits >> uint(drop)) & uint(1)
    rounded += bits
    rounded += uint((1 << (drop - 1)) - 1)
    rounded &= ~uint((1 << drop) - 1)
    y = rounded.view(x.dtype)
    magnitude = np.abs(y)
    fix = np.flatnonzero(~((magnitude >= fmt.tiny) & (magnitude <= fmt.max)))  # small, big, NaN (rare)
    if fix.size:
        v = x.reshape(-1)[fix]
        c = x.dtype.type(2.0 ** (fmt.min_exponent - fmt.precision + 1 + info.nmant))
        out = np.copysign((np.abs(v) + c) - c, v)  # |v| < tiny: a multiple of the subnormal spacing
        big = ~(np.abs(y.reshape(-1)[fix]) < fmt.tiny)
        out[big] = np.copysign(x.dtype.type(np.inf), v[big]) if fmt.has_inf else np.nan
        out[np.isnan(v)] = v[np.isnan(v)]
        y.reshape(-1)[fix] = out
    return y


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
