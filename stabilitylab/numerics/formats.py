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
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

__all__ = ["Format", "FORMATS", "DEFAULT_FORMATS", "ALL_FORMATS", "EVERY_FORMAT", "SATURATE_SUFFIXES",
           "get_format", "format_names", "round_bits"]

_NUMPY_NATIVE = ("float16", "float32", "float64")
_NAN_ENCODINGS = ("ieee", "fn", "fnuz", "none")


@dataclass(frozen=True)
class Format:
    """One binary floating-point format, round to nearest, ties to even.

    Declared by its encoding: ``exponent_bits`` e, ``fraction_bits`` m (stored significand bits, without
    the hidden bit), and the capability fields

    * ``has_inf``: the top exponent field holds +-inf and NaN only (IEEE 754: float16, bfloat16, float32,
      float64, float8_e5m2, float8_e4m3, float8_e3m4);
    * ``nan``: where NaN lives: ``"ieee"`` (top exponent, non-zero fraction), ``"fn"`` (only the all-ones
      pattern: float8_e4m3fn, the unsigned scales' 0xFF), ``"fnuz"`` (only 0x80, the pattern of -0, which
      therefore does not exist: float8_e4m3fnuz, float8_e5m2fnuz, float8_e4m3b11fnuz) or ``"none"``
      (float6_e2m3fn, float6_e3m2fn, float4_e2m1fn: every pattern is a number);
    * ``signed``: False for the unsigned scale formats (float8_e8m0fnu, float8_e5m3fnu: no sign bit);
    * ``has_zero``: False for float8_e8m0fnu, whose exponent field 0 is the normal binade ``2**-bias``
      (an exponent-only format: no zero, no subnormals);
    * ``exponent_bias``: None for the IEEE bias ``2**(e-1) - 1``; the fnuz formats declare theirs (one higher
      than IEEE, 11 for float8_e4m3b11fnuz), checked against ml_dtypes.finfo;
    * ``overflow``: what the conversion gives beyond the range (and for an infinite input): ``"inf"``
      (IEEE, +-inf), ``"nan"`` (ml_dtypes' fn/fnuz conversions) or ``"saturate"`` (+-max: the fp6/fp4 formats,
      which have nothing else, and the ``:saturate`` variants of the fn/fnuz formats, as torch's CPU cast to
      float8_e4m3fn does).  Default: ``"inf"`` with infinities, ``"saturate"`` without NaN, else ``"nan"``.

    Derived, never typed in: ``max`` is the value of the largest finite magnitude pattern (IEEE: top exponent
    field ``2**e - 2``, fraction all ones; fn: the all-ones pattern minus one; fnuz / none: the all-ones
    pattern), a pattern with exponent field E > 0 and fraction F being ``(1 + F / 2**m) * 2**(E - bias)`` and
    with E = 0 ``F * 2**(1 - bias - m)`` (exponent-only formats: ``2**(E - bias)`` for every E).
    ``tiny`` the smallest positive normal (``2**(1 - bias)``; exponent-only: ``2**-bias``),
    ``smallest_subnormal = tiny * 2**-m`` (exponent-only: tiny itself), ``eps = 2**-m`` (spacing just above
    1), ``precision`` p = m + 1, ``unit_roundoff`` u = eps / 2.

    A NaN input to a format without NaN becomes a zero whose sign is the opposite of the NaN's sign bit
    (np.nan gives -0), and an infinite input +-max: that is what ml_dtypes 0.7 does, and the conformance
    tests hold :func:`round_bits` to it.  :class:`~stabilitylab.numerics.arith.Arith` does not store such a
    NaN: it computes in the format's :attr:`held` twin (NaN kept, overflow to +-inf, so that the events are
    seen) and saturates afterwards.
    """

    name: str
    dtype_name: str
    exponent_bits: int
    fraction_bits: int
    has_inf: bool = True
    nan: str = "ieee"
    signed: bool = True
    has_zero: bool = True
    exponent_bias: int | None = None
    overflow: str = ""
    held: bool = False  # the computing twin of a format (see :attr:`held_twin`), never a user's choice
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

    def __post_init__(self):
        if self.nan not in _NAN_ENCODINGS:
            raise ValueError(f"{self.name}: nan must be one of {_NAN_ENCODINGS}, not {self.nan!r}")
        if self.has_inf != (self.nan == "ieee"):
            raise ValueError(f"{self.name}: a format has infinities exactly when its NaNs are IEEE ones")
        if not self.overflow:
            object.__setattr__(self, "overflow", "inf" if self.has_inf else "saturate" if self.nan == "none"
                               else "nan")
        allowed = ("inf",) if self.has_inf else ("saturate",) if self.nan == "none" else ("nan", "saturate")
        if self.overflow not in allowed and not self.held:
            raise ValueError(f"{self.name}: overflow {self.overflow!r} is not one of {allowed}")

    @property
    def signed_zero(self) -> bool:
        """Whether -0 exists (not in the fnuz formats, whose 0x80 is NaN, nor in the unsigned ones)."""
        return self.signed and self.has_zero and self.nan != "fnuz"

    @property
    def saturates(self) -> bool:
        """Overflow (and an infinite input) gives +-max: a finite value although the overflow happened."""
        return self.overflow == "saturate"

    @property
    def scale_only(self) -> bool:
        """An unsigned scale format (float8_e8m0fnu, float8_e5m3fnu): it cannot hold an experiment's
        values (no negative numbers; e8m0 not even zero), so ``-d`` refuses it; block quantizers and readers
        use its constants and :meth:`round`."""
        return not self.signed

    @property
    def base_name(self) -> str:
        """The name of the encoding (``float8_e4m3fn`` for ``float8_e4m3fn:saturate``)."""
        return self.name.split(":")[0]

    @cached_property
    def held_twin(self) -> "Format":
        """The format Arith computes in: the same values, but overflow gives +-inf and a NaN stays NaN
        (this format itself where it already does both)."""
        if self.overflow in ("inf", "nan") and self.nan != "none":
            return self
        return replace(self, name=self.base_name + ":held", overflow="inf", held=True, aliases=())

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
        """Width: sign (if signed) + exponent + fraction bits (bfloat16: 16, float4_e2m1fn: 4, stored in a byte)."""
        return int(self.signed) + self.exponent_bits + self.fraction_bits

    @property
    def bias(self) -> int:
        """Exponent bias: declared (fnuz formats), else IEEE's ``2**(e-1) - 1``."""
        return 2 ** (self.exponent_bits - 1) - 1 if self.exponent_bias is None else self.exponent_bias

    def _decode(self, pattern: int) -> float:
        """The value of a magnitude bit pattern (exponent field, then fraction field), see the class doc."""
        m = self.fraction_bits
        e, f = pattern >> m, pattern & ((1 << m) - 1)
        if e == 0 and self.has_zero:
            return math.ldexp(f, 1 - self.bias - m)
        return math.ldexp((1 << m) + f, e - self.bias - m)

    @cached_property
    def magnitudes(self) -> np.ndarray:
        """The value (float64) of every magnitude bit pattern 0 ... 2**(bits - 1) - 1 of a signed format
        with a zero and at most 16 bits, in pattern order, which is ascending value order (patterns above
        ``max``: inf or NaN, are NaN): :meth:`_decode` on every pattern at once.  What the bits of the
        format's dtype mean, without ml_dtypes (the conformance tests check it against ml_dtypes' bits)."""
        if not (self.signed and self.has_zero and self.bits <= 16):
            raise ValueError(f"{self.name}: magnitudes are tabled for signed formats with a zero of <= 16 bits")
        m = self.fraction_bits
        pattern = np.arange(1 << (self.bits - 1), dtype=np.int64)
        e, f = pattern >> m, (pattern & ((1 << m) - 1)).astype(np.float64)
        value = np.where(e == 0, np.ldexp(f, 1 - self.bias - m), np.ldexp(f + (1 << m), e - self.bias - m))
        value[~(value <= self.max)] = np.nan
        value.flags.writeable = False
        return value

    def pattern(self, value) -> np.ndarray:
        """The bit pattern (int64) of each format value (float64, exactly a value of this format of at most 16
        bits): the sign bit, then the magnitude's index in :attr:`magnitudes`."""
        v = np.asarray(value, dtype=np.float64)
        index = np.searchsorted(self.magnitudes[: int(np.searchsorted(self.magnitudes, self.max)) + 1], np.abs(v))
        return np.where(np.signbit(v), index | (1 << (self.bits - 1)), index).astype(np.int64)

    def value_of(self, pattern) -> np.ndarray:
        """The value (float64) of each bit pattern of this format of at most 16 bits (inverse of :meth:`pattern`;
        inf and NaN patterns give NaN, the fnuz formats' -0 pattern too)."""
        p = np.asarray(pattern, dtype=np.int64)
        magnitude = self.magnitudes[p & ((1 << (self.bits - 1)) - 1)]
        value = np.where((p >> (self.bits - 1)) & 1, -magnitude, magnitude)
        if self.nan == "fnuz":
            value = np.where(p == 1 << (self.bits - 1), np.nan, value)
        return value

    @cached_property
    def max_exponent(self) -> int:
        """e such that max = (1.f...) * 2**e."""
        return math.frexp(self.max)[1] - 1

    @cached_property
    def max(self) -> float:
        """Largest finite value: the largest magnitude pattern that is neither inf nor NaN."""
        e, m = self.exponent_bits, self.fraction_bits
        if self.has_inf:
            top = ((2**e - 2) << m) | ((1 << m) - 1)
        elif self.nan == "fn":
            top = 2 ** (e + m) - 2  # the all-ones pattern is NaN
        else:  # fnuz (NaN is 0x80, a sign pattern) and none: every magnitude pattern is a number
            top = 2 ** (e + m) - 1
        return self._decode(top)

    @cached_property
    def tiny(self) -> float:
        """Smallest positive normal, 2**(1 - bias) (exponent-only formats: 2**-bias)."""
        return self._decode(1 << self.fraction_bits if self.has_zero else 0)

    @cached_property
    def smallest_subnormal(self) -> float:
        """Smallest positive value: tiny * 2**-m (exponent-only formats: tiny)."""
        return self._decode(1 if self.has_zero else 0)

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
        bfloat16 (float32's exponent range) goes through :func:`round_bfloat16` (four integer passes,
        ~1.5x faster than :func:`round_bits` and 3x faster than ml_dtypes' conversion); everything else
        through :func:`round_bits` (faster than numpy's float16 and ml_dtypes' float8 casts).  The same
        bits (tests: every float32).
        """
        y = np.asarray(y, dtype=np.float32)
        if self.dtype_name == "float32":
            return y
        with np.errstate(all="ignore"):
            if self.name == "bfloat16":
                return round_bfloat16(y)
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
            x = np.array([value], dtype=np.float64)
            # (ml_dtypes converts a float64 to its unsigned scale formats directly: 1e-46 is not 0 -> NaN first)
            y = round_bits(x if self.scale_only else x.astype(np.float32), self)
        return "%g" % float(y[0])

    def __str__(self) -> str:
        return self.name


_UINT = {4: np.uint32, 8: np.uint64}


def round_bfloat16(y: np.ndarray) -> np.ndarray:
    """float32 ``y`` rounded to bfloat16 (to nearest, ties to even), as float32: :func:`round_bits`'s
    value for every float32, in four integer passes on the bits and one reduction.

    bfloat16 is float32 with 16 fewer significand bits (same exponent field), so on the bit pattern b
    (sign apart) ``b + 0x7FFF + ((b >> 16) & 1)`` with the low 16 bits cleared is the correctly rounded
    value everywhere except NaN: a normal value's carry into the exponent is the next binade (up to
    0x7F800000 = inf, bfloat16's overflow), a subnormal's bits are a linear encoding (spacing 2**-133,
    its carry gives the smallest normal), +-0 and +-inf are fixed points.  A NaN (seen by min: NaN
    propagates) is returned unchanged, as :func:`round_bits` does (its payload could carry into the sign)."""
    shape = np.shape(y)  # (np.ascontiguousarray makes a 0-d array 1-d: a scalar keeps its shape ())
    y = np.ascontiguousarray(y, dtype=np.float32)
    bits = y.view(np.uint32)
    r = bits >> np.uint32(16)
    r &= np.uint32(1)
    r += bits
    r += np.uint32(0x7FFF)
    r &= np.uint32(0xFFFF0000)
    out = r.view(np.float32).reshape(y.shape)
    if y.size and np.isnan(y.min()):
        nan = np.isnan(y)
        out[nan] = y[nan]
    return out.reshape(shape)


def round_bits(x: np.ndarray, fmt: Format) -> np.ndarray:
    """Round float32 or float64 ``x`` to ``fmt`` (p significand bits, min exponent emin) in
    the same dtype: round to nearest, ties to even, then the format's conventions.

    Normal range: on the bits of x, add ``half - 1`` plus the last kept bit, then clear the
    dropped bits (a carry into the exponent is the correct next binade).  Below ``tiny``
    the spacing is fixed at ``q = 2**(emin - p + 1)``: ``(|x| + c) - c`` with ``c = q * 2**t``
    (t = x's significand bits) rounds |x| to a multiple of q in one hardware rounding.
    Beyond ``max`` (after rounding), and for +-inf: ``fmt.overflow`` (+-inf, NaN or +-max).
    NaN stays NaN; in a format without NaN it becomes a zero of the opposite sign bit (ml_dtypes).
    No -0 in a format without it (fnuz, unsigned): +0.  Unsigned formats: a negative value (even one that
    would underflow) is NaN, -0 is +0.
    Exponent-only formats (float8_e8m0fnu): see :func:`_round_exponent_only`.
    Checked against numpy / ml_dtypes on every float32 (tests).
    """
    if x.ndim == 0:  # (the fixes below write through a flat view, which only a C-ordered array of
        return round_bits(x.reshape(1), fmt).reshape(())  # at least one dimension gives)
    x = np.ascontiguousarray(x)
    if not fmt.has_zero:
        return _round_exponent_only(x, fmt)
    info = np.finfo(x.dtype)
    uint = _UINT[x.dtype.itemsize]
    drop = info.nmant - (fmt.precision - 1)  # significand bits cleared
    bits = x.view(uint)
    rounded = (bits >> uint(drop)) & uint(1)
    rounded += bits
    rounded += uint((1 << (drop - 1)) - 1)
    rounded &= ~uint((1 << drop) - 1)
    y = rounded.view(x.dtype)
    if fmt.signed and y.size:  # the usual case, every |y| in [tiny, max], from the magnitudes' bit patterns (ordered
        low, high = _magnitude_bits(x.dtype, fmt)  # as the magnitudes are; NaN above inf): three passes, not six
        magnitudes = rounded & uint((1 << (8 * x.dtype.itemsize - 1)) - 1)  # (the sign bit cleared)
        if magnitudes.min() >= low and magnitudes.max() <= high:
            return y
    magnitude = np.abs(y)
    keep = (magnitude >= fmt.tiny) & (magnitude <= fmt.max)
    if not fmt.signed:
        keep &= y > 0
    fix = np.flatnonzero(~keep)  # small, big, NaN, negative where unsigned (rare)
    if fix.size:
        v = x.reshape(-1)[fix]
        c = x.dtype.type(2.0 ** (fmt.min_exponent - fmt.precision + 1 + info.nmant))
        out = np.copysign((np.abs(v) + c) - c, v)  # |v| < tiny: a multiple of the subnormal spacing
        big = ~(np.abs(y.reshape(-1)[fix]) < fmt.tiny)
        if fmt.overflow == "inf":
            out[big] = np.copysign(x.dtype.type(np.inf), v[big])
        elif fmt.overflow == "saturate":
            out[big] = np.copysign(x.dtype.type(fmt.max), v[big])
        else:
            out[big] = np.nan
        nan = np.isnan(v)
        if fmt.nan == "none" and not fmt.held:  # ml_dtypes: NaN -> the zero of the other sign bit
            out[nan] = np.where(np.signbit(v[nan]), x.dtype.type(0.0), x.dtype.type(-0.0))
        else:
            out[nan] = v[nan]
        if not fmt.signed_zero:
            out[out == 0] = 0.0
        if not fmt.signed:
            out[v < 0] = np.nan  # (-0 is +0)
        y.reshape(-1)[fix] = out
    return y


def _magnitude_bits(dtype: np.dtype, fmt: Format) -> tuple[int, int]:
    """The bit patterns, in ``dtype``, of the format's tiny and max as :func:`round_bits` compares them
    (a Python float against an array of ``dtype``: converted to ``dtype``)."""
    key = (np.dtype(dtype).str, fmt.name)
    if key not in _MAGNITUDE_BITS:
        values = np.array([fmt.tiny, fmt.max]).astype(dtype)
        _MAGNITUDE_BITS[key] = tuple(values.view(_UINT[np.dtype(dtype).itemsize]).tolist())
    return _MAGNITUDE_BITS[key]


_MAGNITUDE_BITS: dict[tuple[str, str], tuple[int, int]] = {}


def _round_exponent_only(x: np.ndarray, fmt: Format) -> np.ndarray:
    """Round to a format of powers of two only (float8_e8m0fnu: 2**k, -bias <= k <= max_exponent), as
    ml_dtypes 0.7 does: a tie (1.5 * 2**k) rounds up, to 2**(k+1); a positive value below tiny gives
    tiny (there is no zero); beyond max (from 1.5 * max on), +-inf, NaN, zero and negative values give
    NaN.  (torch 2.x's cast differs: it ignores the sign and rounds 464 up to 512; the OCP MX spec leaves
    this conversion to the implementation.)  Computed with frexp in float64: exact."""
    v = x.astype(np.float64)
    with np.errstate(all="ignore"):
        m, e = np.frexp(v)  # v = m * 2**e, 0.5 <= m < 1
        out = np.ldexp(np.where(m >= 0.75, 1.0, 0.5), e)
        out = np.maximum(out, fmt.tiny)
        out[~(out <= fmt.max) | ~(v > 0) | np.isinf(v)] = np.nan
    return out.astype(x.dtype)


_DECLARED = (
    Format("float16", "float16", exponent_bits=5, fraction_bits=10, aliases=("fp16", "half", "f16")),
    Format("bfloat16", "bfloat16", exponent_bits=8, fraction_bits=7, aliases=("bf16",)),
    Format("float32", "float32", exponent_bits=8, fraction_bits=23, aliases=("fp32", "single", "f32")),
    Format("float64", "float64", exponent_bits=11, fraction_bits=52, aliases=("fp64", "double", "f64")),
    Format("float8_e4m3fn", "float8_e4m3fn", exponent_bits=4, fraction_bits=3, has_inf=False, nan="fn",
           aliases=("e4m3", "e4m3fn", "fp8_e4m3", "fp8_e4m3fn")),
    Format("float8_e5m2", "float8_e5m2", exponent_bits=5, fraction_bits=2, aliases=("e5m2", "fp8_e5m2")),
    # ml_dtypes' other float formats (0.7), by their specs; the conformance tests hold them to ml_dtypes
    Format("float8_e4m3fnuz", "float8_e4m3fnuz", exponent_bits=4, fraction_bits=3, has_inf=False, nan="fnuz",
           exponent_bias=8, aliases=("e4m3fnuz", "fp8_e4m3fnuz")),
    Format("float8_e5m2fnuz", "float8_e5m2fnuz", exponent_bits=5, fraction_bits=2, has_inf=False, nan="fnuz",
           exponent_bias=16, aliases=("e5m2fnuz", "fp8_e5m2fnuz")),
    Format("float8_e4m3b11fnuz", "float8_e4m3b11fnuz", exponent_bits=4, fraction_bits=3, has_inf=False,
           nan="fnuz", exponent_bias=11, aliases=("e4m3b11fnuz", "e4m3b11", "fp8_e4m3b11fnuz")),
    Format("float8_e4m3", "float8_e4m3", exponent_bits=4, fraction_bits=3, aliases=("fp8_e4m3_ieee",)),
    Format("float8_e3m4", "float8_e3m4", exponent_bits=3, fraction_bits=4, aliases=("e3m4", "fp8_e3m4")),
    Format("float6_e2m3fn", "float6_e2m3fn", exponent_bits=2, fraction_bits=3, has_inf=False, nan="none",
           aliases=("e2m3", "e2m3fn", "fp6_e2m3")),
    Format("float6_e3m2fn", "float6_e3m2fn", exponent_bits=3, fraction_bits=2, has_inf=False, nan="none",
           aliases=("e3m2", "e3m2fn", "fp6_e3m2")),
    Format("float4_e2m1fn", "float4_e2m1fn", exponent_bits=2, fraction_bits=1, has_inf=False, nan="none",
           aliases=("e2m1", "e2m1fn", "fp4", "fp4_e2m1")),
    Format("float8_e8m0fnu", "float8_e8m0fnu", exponent_bits=8, fraction_bits=0, has_inf=False, nan="fn",
           signed=False, has_zero=False, aliases=("e8m0", "e8m0fnu", "fp8_e8m0")),
    Format("float8_e5m3fnu", "float8_e5m3fnu", exponent_bits=5, fraction_bits=3, has_inf=False, nan="fn",
           signed=False, aliases=("e5m3fnu", "fp8_e5m3fnu")),
)
SATURATE_SUFFIXES = ("saturate", "sat")
"""``-d NAME:saturate`` (or ``:sat``): overflow and an infinite input give +-max instead of NaN."""
_SATURATING = tuple(
    replace(f, name=f"{f.name}:saturate", overflow="saturate",
            aliases=tuple(f"{a}:{s}" for a in (f.name, *f.aliases) for s in SATURATE_SUFFIXES if f"{a}:{s}" !=
                          f"{f.name}:saturate"))
    for f in _DECLARED if f.signed and f.nan in ("fn", "fnuz"))

FORMATS: dict[str, Format] = {f.name: f for f in (*_DECLARED, *_SATURATING)}
"""Every format by canonical name: ml_dtypes' float formats and the saturating variants of the fn/fnuz ones."""
DEFAULT_FORMATS: tuple[Format, ...] = tuple(FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64"))
ALL_FORMATS: tuple[Format, ...] = tuple(FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64",
                                                            "float8_e4m3fn", "float8_e5m2"))
"""``-d all``: the six formats of the first releases (the baselines' set)."""
EVERY_FORMAT: tuple[Format, ...] = tuple(f for f in FORMATS.values() if not f.scale_only)
"""``-d every``: every format an experiment can run in (all of FORMATS but the unsigned scale formats)."""

_BY_NAME = {key: f for f in FORMATS.values() for key in (f.name, *f.aliases)}
for _f in _DECLARED:  # a format that saturates already (fp6, fp4) accepts the suffix too
    if _f.saturates:
        _BY_NAME.update({f"{a}:{s}": _f for a in (_f.name, *_f.aliases) for s in SATURATE_SUFFIXES})
assert len(_BY_NAME) == sum(1 + len(f.aliases) for f in FORMATS.values()) + sum(
    2 * (1 + len(f.aliases)) for f in _DECLARED if f.saturates), "an alias names two formats"


def format_names() -> list[str]:
    """Canonical names, then 'all' and 'every'."""
    return [*FORMATS, "all", "every"]


def get_format(name: str) -> Format:
    """Look a format up by name or alias (case-insensitive); KeyError lists valid names.  (Formats and
    precision policies alike: :func:`.policies.format_or_policy`.)"""
    try:
        return _BY_NAME[name.strip().lower()]
    except KeyError:
        valid = ", ".join(f"{f.name} ({'/'.join(f.aliases)})" if f.aliases and ":" not in f.name else f.name
                          for f in FORMATS.values())
        raise KeyError(f"unknown format {name!r}; valid: {valid}, all, every") from None
