"""Floating-point formats: names, aliases, the parameters that define them, and the constants they imply.

A :class:`Format` is declared by its encoding (exponent bits, stored fraction bits, whether the top
exponent holds infinities) and names the numpy / ml_dtypes dtype that stores it.  ``max``, ``tiny``,
``eps`` ... are computed from those parameters with the IEEE 754 formulas, not typed in, and the
conformance tests (``tests/test_format_conformance.py``) check every one against ``numpy.finfo`` /
``ml_dtypes.finfo``.  Why not read ``ml_dtypes.finfo`` directly, as before: importing ml_dtypes costs
0.5-1.2 s (version 0.7), ten times the rest of the start-up, and most commands never need a bfloat16 or
float8 *dtype*: their values are held in float32 / float64 and rounded with :func:`round_bits`.
``Format.dtype`` and ``Format.finfo`` import ml_dtypes on first use.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

__all__ = ["Format", "FORMATS", "DEFAULT_FORMATS", "ALL_FORMATS", "get_format", "format_names", "round_bits"]

_NUMPY_NATIVE = ("float16", "float32", "float64")


@dataclass(frozen=True)
class Format:
    """One binary floating-point format, round to nearest, ties to even.

    Declared: ``exponent_bits`` e, ``fraction_bits`` m (stored significand bits, without the hidden bit)
    and ``has_inf``.  Exponent bias ``2**(e-1) - 1``.  With infinities (IEEE 754: float16, bfloat16,
    float32, float64, float8_e5m2) the top exponent field holds only inf and NaN, so
    ``max = (2 - 2**-m) * 2**(2**e - 2 - bias)``; without (``float8_e4m3fn``: the ``fn`` formats of the
    OCP FP8 spec) the top exponent holds finite values and one NaN pattern (all ones), so
    ``max = (2 - 2**(1-m)) * 2**(2**e - 1 - bias)`` and overflow (and an inf input) gives NaN.
    Derived: ``tiny = 2**(1 - bias)`` (smallest positive normal), ``smallest_subnormal = tiny * 2**-m``,
    ``eps = 2**-m`` (spacing just above 1), ``precision`` p = m + 1, ``unit_roundoff`` u = eps / 2.
    """

    name: str
    dtype_name: str
    exponent_bits: int
    fraction_bits: int
    has_inf: bool = True
    aliases: tuple[str, ...] = field(default=())
    # a precision policy (numerics/policies.py): the formats inputs are stored in, operations compute in and
    # reductions accumulate in; None: this format itself (a pure format).  The encoding fields above are then
    # those of the policy's OUTPUT format, so max, ulp, round ... are the output's.
    storage: Format | None = None
    compute: Format | None = None
    accumulate: Format | None = None
    # a block-scaled storage policy (numerics/policies.py): the name of the BlockFormat
    # (numerics/blockscale.py) inputs are quantized to, per block along their last axis, before they
    # are held in ``storage`` (the compute format: a block format holds no single value of its own)
    block: str | None = None

    @property
    def is_policy(self) -> bool:
        """Storage, compute or accumulation differ from the format itself (see :mod:`.policies`)."""
        return self.storage is not None or self.compute is not None or self.accumulate is not None

    @property
    def storage_format(self) -> Format:
        """The format inputs are rounded to when loaded (a pure format: itself)."""
        return self if self.storage is None else self.storage

    @property
    def compute_format(self) -> Format:
        """The format every operation (+ - * / exp log log1p) rounds to (a pure format: itself)."""
        return self if self.compute is None else self.compute

    @property
    def accumulate_format(self) -> Format:
        """The format the additions of sums (tree and running) round to (default: the compute format)."""
        return self.compute_format if self.accumulate is None else self.accumulate

    @cached_property
    def output_format(self) -> Format:
        """The pure format the result is delivered in: this format's own encoding (a pure format: itself)."""
        if not self.is_policy:
            return self
        known = _BY_NAME.get(self.dtype_name)
        if known is not None and known.encoding == self.encoding:
            return known
        return replace(self, name=self.dtype_name, aliases=(), storage=None, compute=None, accumulate=None,
                       block=None)

    @property
    def encoding(self) -> tuple:
        """(dtype_name, exponent_bits, fraction_bits, has_inf): what the values are."""
        return (self.dtype_name, self.exponent_bits, self.fraction_bits, self.has_inf)

    @property
    def native(self) -> bool:
        """numpy has the dtype itself (float16, float32, float64): no ml_dtypes needed."""
        return self.dtype_name in _NUMPY_NATIVE

    @cached_property
    def dtype(self) -> np.dtype:
        """The numpy dtype that stores the format (ml_dtypes' for bfloat16 and float8: imported here)."""
        if self.native:
            return np.dtype(self.dtype_name)
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, self.dtype_name))

    @cached_property
    def finfo(self):
        """``numpy.finfo`` / ``ml_dtypes.finfo`` of the dtype (what the constants below are checked against)."""
        if self.native:
            return np.finfo(self.dtype)
        import ml_dtypes

        return ml_dtypes.finfo(self.dtype)

    @property
    def bits(self) -> int:
        """Storage width: sign + exponent + fraction bits (bfloat16: 16)."""
        return 1 + self.exponent_bits + self.fraction_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @cached_property
    def max_exponent(self) -> int:
        """e such that max = (1.f...) * 2**e."""
        top = 2**self.exponent_bits - (2 if self.has_inf else 1)
        return top - self.bias

    @cached_property
    def max(self) -> float:
        """Largest finite value."""
        reserved = 0 if self.has_inf else 1  # no-inf formats give the all-ones significand to NaN
        return math.ldexp(2.0 - math.ldexp(1.0, reserved - self.fraction_bits), self.max_exponent)

    @cached_property
    def tiny(self) -> float:
        """Smallest positive normal, 2**(1 - bias)."""
        return math.ldexp(1.0, 1 - self.bias)

    @cached_property
    def smallest_subnormal(self) -> float:
        return math.ldexp(1.0, 1 - self.bias - self.fraction_bits)

    @cached_property
    def eps(self) -> float:
        return math.ldexp(1.0, -self.fraction_bits)

    @cached_property
    def precision(self) -> int:
        """Significand bits p, including the hidden bit (float32: 24)."""
        return self.fraction_bits + 1

    @cached_property
    def unit_roundoff(self) -> float:
        """u = eps / 2 = 2**-p."""
        return self.eps / 2

    @cached_property
    def min_exponent(self) -> int:
        """e such that tiny = 2**e."""
        return math.frexp(self.tiny)[1] - 1

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
            if self.native:
                y = x.astype(self.dtype)
            else:  # exact in float32; ml_dtypes converts float32 quickly
                y = round_bits(x, self).astype(np.float32)
            return y.astype(dtype, copy=False)

    def round32(self, y) -> np.ndarray:
        """Correctly round float32 values to this format (<= 16 bits), as float32.

        A float32 result of + - * / on the format's values, rounded again to p <= 11
        bits, is the correctly rounded result (float32 has 24 >= 2p + 2 bits: double
        rounding is innocuous), so simulating in float32 costs one call of this.
        Large bfloat16 arrays go through ml_dtypes' conversion (float32's exponent range: 2x
        faster than the bit operations, which the tests check it against), once ml_dtypes is
        imported or worth importing; everything else through :func:`round_bits` (faster than
        numpy's float16 and ml_dtypes' float8 casts).  Both give the same bits.
        """
        y = np.asarray(y, dtype=np.float32)
        if self.dtype_name == "float32":
            return y
        with np.errstate(all="ignore"):
            if self.name == "bfloat16" and (y.size >= _ML_DTYPES_WORTH or "ml_dtypes" in sys.modules):
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

    def text(self, value) -> str:
        """The value rounded to the format, as numpy / ml_dtypes print it: numpy's shortest round-trip
        text for float16/32/64; ``%g`` of the float32 value for the others (ml_dtypes' ``str``: 6
        significant digits, after its float64 -> float32 -> format conversion, which this repeats).
        Equal to ``str(fmt.dtype.type(value))`` (checked by the conformance tests) without importing
        ml_dtypes."""
        if self.native:
            return str(self.dtype.type(value))
        with np.errstate(all="ignore"):
            y = round_bits(np.array([value], dtype=np.float64).astype(np.float32), self)
        return "%g" % float(y[0])

    def __str__(self) -> str:
        return self.name


_ML_DTYPES_WORTH = 1 << 20  # elements: from here ml_dtypes' faster bfloat16 cast repays its import
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


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("float16", "float16", exponent_bits=5, fraction_bits=10, aliases=("fp16", "half", "f16")),
        Format("bfloat16", "bfloat16", exponent_bits=8, fraction_bits=7, aliases=("bf16",)),
        Format("float32", "float32", exponent_bits=8, fraction_bits=23, aliases=("fp32", "single", "f32")),
        Format("float64", "float64", exponent_bits=11, fraction_bits=52, aliases=("fp64", "double", "f64")),
        Format("float8_e4m3fn", "float8_e4m3fn", exponent_bits=4, fraction_bits=3, has_inf=False,
               aliases=("e4m3", "e4m3fn", "fp8_e4m3")),
        Format("float8_e5m2", "float8_e5m2", exponent_bits=5, fraction_bits=2, aliases=("e5m2", "fp8_e5m2")),
    )
}
DEFAULT_FORMATS: tuple[Format, ...] = tuple(FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64"))
ALL_FORMATS: tuple[Format, ...] = tuple(FORMATS.values())

_BY_NAME = {key: f for f in FORMATS.values() for key in (f.name, *f.aliases)}


def format_names() -> list[str]:
    """Canonical names, then 'all'."""
    return [*FORMATS, "all"]


def get_format(name: str) -> Format:
    """Look a format up by name or alias (case-insensitive); KeyError lists valid names.  (Formats and
    precision policies alike: :func:`.policies.format_or_policy`.)"""
    try:
        return _BY_NAME[name.strip().lower()]
    except KeyError:
        valid = ", ".join(f"{f.name} ({'/'.join(f.aliases)})" for f in FORMATS.values())
        raise KeyError(f"unknown format {name!r}; valid: {valid}, all") from None
