"""Correctly rounded ``exp``, ``log``, ``log1p`` and ``tanh`` in every format.

``exp(fmt, x)``, ``log(fmt, x)``, ``log1p(fmt, x)`` and ``tanh(fmt, x)`` take an array of
``fmt.dtype`` (any shape) and return an array of the same dtype and shape
holding the real function's value at each element *correctly rounded to nearest,
ties to even* in the format: exactly what :meth:`Format.round` would give if it
were applied to the infinitely precise value.  Unlike ``np.exp`` on a
format-dtype array, the result does not depend on the CPU, numpy or ml_dtypes.

Method (Ziv's strategy)
-----------------------
1. Evaluate the function in the wide type ``W`` (:mod:`stabilitylab.numerics.wide`):
   ``float64`` for formats with ``p <= 24`` significand bits (float8, float16,
   bfloat16, float32), and ``np.longdouble`` for float64 when it has at least 64
   significand bits (x87 extended precision, as on x86 Linux).  Format values
   convert to ``W`` exactly, so the only error is the function's own.
2. Bound that error by a relative error ``E`` (:data:`WIDE_REL_ERROR`): the true
   value lies in ``[w - E|w|, w + E|w|]``.  Round both ends of this interval to
   the format.  Rounding is monotone, so when both ends round to the same format
   value, so does every point between them, and that value is the correctly
   rounded result.  This handles every rounding boundary at once: midpoints
   between adjacent normal or subnormal values, the underflow boundary
   ``smallest_subnormal / 2`` and the overflow threshold ``max + ulp(max) / 2``.
   (The ends are computed in ``W`` with one rounding each, which narrows the
   interval by at most one ulp of ``W``: the bound actually used is ``E`` minus
   one ulp of ``W``, still far above the measured errors.)
   For float32 from float64 and float64 from x87 longdouble (the bulk path's exp), the same decision
   is first taken on the bits of w alone (:func:`_decided_by_bits`, no interval arithmetic over the
   whole array): with P the wide significand bits, d = P - p the dropped ones and L their value,
   w's cast is the correctly rounded result when ``|L - 2**(d-1)| > ceil(E 2**P) + 1`` and w's
   exponent e satisfies ``emin < e < emax`` of the format (the true value is within
   ``E |w| < E 2**P`` wide ulps of w; the proof is in that function).  Only the elements it
   leaves go through the two ends.
3. The rare elements whose ends round differently lie within ``E`` of a
   rounding boundary ("undecided").  For float64 a double-double evaluation
   comes first (~104 bits, bound ``doubledouble.REL_ERROR = 2**-90``; log and
   log1p are one Newton step from the longdouble value), which decides nearly
   all of them (arguments in its domains: results and their low parts normal);
   tanh has no double-double stage and goes straight to mpmath.
   The others are recomputed with mpmath, again with
   an error bound: at ``P`` bits mpmath's exp / log / log1p are within 1 ulp
   (``2**-P`` relative; measured), we allow ``2**(8 - P)``, round both ends of
   the interval exactly with integer arithmetic and, if they still differ,
   double ``P`` and retry (starting at ``P = 2p + 32`` bits).  This terminates:
   ``exp``, ``log``, ``log1p`` and ``tanh`` of a non-trivial rational argument are
   transcendental (Lindemann; tanh x = (e**2x - 1) / (e**2x + 1)), so never exactly
   a rounding boundary; the trivial exact cases (``exp(0)``, ``log(1)``,
   ``log1p(0)``, ``tanh(0)``) are handled before any evaluation.

float64 ``exp`` comes first from :mod:`stabilitylab.numerics.exp64` (float64 arithmetic, no
longdouble): a pair ``(s + err) 2**e`` within ``exp64.REL_ERROR = 2**-62`` of e**x on
``[-707, 709]``, whose rounding is s where ``|err|`` is more than that bound from half an ulp of s
(:func:`_exp_float64`); it decides ~99.7% of those arguments at ~8 ns each instead of longdouble's
~30 ns ``expl``.  The rest of the domain goes to the double-double stage (then mpmath), the
arguments outside it to the steps above.  Results are the same bit for bit (the decision is
proven; tests/test_exp64.py also compares the two paths on 10**6 arguments).

float64 ``log`` and ``log1p`` (x87 longdouble, arrays of at least :data:`LOG64_MIN` elements) likewise come
first from float64 arithmetic (:func:`_log_float64`): one Newton step from numpy's value with exp64's
``e**-y0`` and Dekker's exact product, within ``2**-61.9 + 2**-78 |y|`` (proof there), which decides
~98-99% of typical arguments (2**19 uniform ones in (0.01, 1), (1, 10), e**+-700; fewer near 0) at
~30-35 ns each instead of the longdouble path's ~60-70; the rest, and arguments outside
:data:`LOG64_DOMAIN`, take the steps above.

If ``np.longdouble`` is no wider than float64 (Windows, macOS on ARM), float64
elements all go to the mpmath loop (correct, but ~20-40 us per element), except ``exp``'s
arguments in ``[-707, 709]``, which the float64 stage and the double-double stage decide.

Undecided elements, measured (benchmarks/crmath_speed.py, crmath_hard_cases.py):
none for the 8- and 16-bit formats; for float32 731 (exp), 2885 (log) and 2094
(log1p) of all 2**32 inputs, i.e. under 1 per 10**6; for float64 longdouble
leaves about 1.1% of inputs (~11000 per 10**6; exp's float64 stage ~0.3%), nearly all of which the
double-double stage decides: mpmath gets only exp's arguments below -670 or
above 709 (subnormal results, overflow) among them.  float64 costs ~0.05-0.2 us
per element (exp ~16 ns), float32 ~0.07 us.

Special values follow IEEE 754: ``exp(-inf) = +0``, ``exp(+inf) = inf``,
``exp(+-0) = 1``; ``log(+-0) = -inf``, ``log(x < 0) = NaN``, ``log(inf) = inf``,
``log(1) = +0``; ``log1p(-1) = -inf``, ``log1p(x < -1) = NaN``,
``log1p(+-0) = +-0``; ``tanh(+-0) = +-0``, ``tanh(+-inf) = +-1``; NaN inputs are
returned unchanged.  (tanh is odd and bounded by 1: it neither overflows nor underflows; it
rounds to +-1 once 1 - |tanh x| = 2 / (e**2|x| + 1) is below half the format's ulp under 1.)  Infinite results are
whatever ``fmt.round`` gives for infinity, so float8_e4m3fn, which has no
infinity, gives NaN for them, exactly as it does for a finite result beyond its
range (above 464 = max + ulp(max) / 2; 464 itself rounds to 448, whose last
significand bit is even).

The mpmath stage uses a private mpmath context (``mpmath.mp`` is untouched); it
is not thread-safe.
"""

from __future__ import annotations

import math
import sys

import mpmath
import numpy as np

from .exp64 import LOG_NEWTON_ERROR
from .formats import Format
from .wide import wide_dtype

__all__ = ["exp", "log", "log1p", "tanh", "WIDE_REL_ERROR", "wide_type"]

WIDE_REL_ERROR: dict[str, float] = {"float64": 2.0**-44, "longdouble": 2.0**-60}
"""Relative error bound ``E`` assumed for ``np.exp`` / ``np.log`` / ``np.log1p`` / ``np.tanh`` in each wide type.

``"float64"``: ``2**-44``, i.e. 256 to 512 ulps of float64 (an ulp is ``2**-53``
to ``2**-52`` relative).  The implementations numpy uses (the C library's libm,
numpy's own AVX512F code, Intel SVML) are accurate to a few ulps; measured here
at most 1.14 ulps on 10**5 samples spread over each function's range.  The
margin of over 100x costs almost nothing: an element is undecided only when its
value is within ``E`` of a boundary, about ``2 E / 2**-p`` of the elements:
under 1 per 10**6 for float32, none for narrower formats.

``"longdouble"`` (64-bit significand): ``2**-60``, i.e. 8 to 16 ulps of
longdouble.  glibc's ``expl`` / ``logl`` / ``log1pl`` aim at "a few ulps";
measured here at most 1.43 ulps (in units of ``2**-64`` relative) on 5 * 10**4
samples.  Only 11 bits separate longdouble from float64, so here the margin has
a price: about 1.1% of float64 elements are undecided and go on to the
double-double stage (and a few of those to mpmath).

Results of the wide function that are subnormal or zero in ``W`` (where a
relative bound does not hold) are far below half the target format's smallest
subnormal (``W`` has a much wider exponent range), so both interval ends round
to zero, which is then correct; likewise ``inf`` in ``W`` is far beyond the
format's overflow threshold.
"""

_WIDE_DTYPES = {"float64": np.dtype(np.float64), "longdouble": np.dtype(np.longdouble)}
_MP_SLACK_BITS = 8  # mpmath at P bits: relative error bound 2**(_MP_SLACK_BITS - P)
_MP_MAX_PREC = 1 << 16  # Ziv loop safety stop (never reached: boundaries differ from values by >> 2**-1000)


def wide_type(fmt: Format) -> str | None:
    """The key of :data:`WIDE_REL_ERROR` of the type ``fmt`` values are evaluated in first
    (:func:`wide.wide_dtype`); None: mpmath only."""
    wide = wide_dtype(fmt)
    if wide is None:
        return None
    return "float64" if wide == np.float64 else "longdouble"


# ----------------------------------------------------------------- rounding
def _round_wide(fmt: Format, kind: str, w: np.ndarray, dtype) -> np.ndarray:
    """Round wide values to ``fmt`` (correct rounding to nearest even), held in ``dtype``."""
    if kind == "float64":
        return fmt.round(w, dtype)
    # longdouble -> float64: a C cast, round-to-nearest-even, subnormals and
    # overflow included (tests/test_crmath.py checks ties in both ranges).
    return w.astype(np.float64).astype(fmt.dtype)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.dtype.itemsize}")


def _round_exact(fmt: Format, man: int, exp2: int) -> float:
    """Round ``man * 2**exp2`` (``man > 0``) to ``fmt``; return the value as a float.

    Integer arithmetic, ties to even.  Beyond the format's range (after rounding
    with an unbounded exponent, as IEEE 754 defines overflow) returns ``inf``.
    """
    p = fmt.precision
    e = exp2 + man.bit_length() - 1  # floor(log2(value))
    q = max(e, fmt.min_exponent) - (p - 1)  # exponent of the format's ulp there
    shift = q - exp2
    if shift <= 0:
        m = man << -shift  # exactly representable at that spacing
    else:
        m = man >> shift
        rem = man - (m << shift)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and m & 1):
            m += 1
    if q + m.bit_length() > 1024:  # beyond float64, hence beyond every format
        return math.inf
    value = math.ldexp(m, q)  # exact: m <= 2**p, q >= -1074
    return math.inf if value > fmt.max else value


_MP = mpmath.MPContext()  # private context: never changes mpmath.mp's precision


def _mp_correct(name: str, fmt: Format, x: float, stats: dict | None) -> float:
    """The correctly rounded ``name(x)`` as a float (``+-inf`` when beyond the range), by Ziv's loop."""
    prec = 2 * fmt.precision + 32
    while prec <= _MP_MAX_PREC:
        _MP.prec = prec
        value = getattr(_MP, name)(_MP.mpf(x))
        sign = value < 0
        man, exp2 = value.man_exp  # |value| = man * 2**exp2
        man = abs(man)
        k = prec - _MP_SLACK_BITS  # value * (1 +- 2**-k) = (man * 2**k +- man) * 2**(exp2 - k)
        lo = _round_exact(fmt, (man << k) - man, exp2 - k)
        hi = _round_exact(fmt, (man << k) + man, exp2 - k)
        if lo == hi:
            if stats is not None:
                stats["max_prec"] = max(stats.get("max_prec", 0), prec)
            return -lo if sign else lo
        prec *= 2
    raise ArithmeticError(f"{name}({x!r}) not decided at {_MP_MAX_PREC} bits")  # pragma: no cover


# ---------------------------------------------------------- special values
def _const(fmt: Format, value: float) -> np.ndarray:
    """``value`` rounded to the format, held in float64 (exact), to be stored in an array of any dtype."""
    with np.errstate(all="ignore"):
        return fmt.round(np.array(value), np.float64)


def _specials(name: str, fmt: Format, x: np.ndarray):
    """(mask, values): elements whose result is fixed by IEEE rules / exactness, and those results."""
    nan = np.isnan(x)
    out = x.copy()  # NaN inputs propagate unchanged
    nan_out = _const(fmt, math.nan)
    if name == "exp":
        pinf, minf, zero = x == np.inf, x == -np.inf, x == 0
        out[pinf] = _const(fmt, math.inf)
        out[minf] = 0
        out[zero] = 1
        mask = nan | pinf | minf | zero
    elif name == "log":
        neg, zero, pinf, one = x < 0, x == 0, x == np.inf, x == 1
        out[neg] = nan_out
        out[zero] = _const(fmt, -math.inf)
        out[pinf] = _const(fmt, math.inf)
        out[one] = 0
        mask = nan | neg | zero | pinf | one
    elif name == "tanh":
        pinf, minf, zero = x == np.inf, x == -np.inf, x == 0
        out[pinf] = 1
        out[minf] = -1
        # tanh(+-0) = +-0: out already holds x
        mask = nan | pinf | minf | zero
    else:  # log1p
        below, pole, pinf, zero = x < -1, x == -1, x == np.inf, x == 0
        out[below] = nan_out
        out[pole] = _const(fmt, -math.inf)
        out[pinf] = _const(fmt, math.inf)
        # log1p(+-0) = +-0: out already holds x
        mask = nan | below | pole | pinf | zero
    return mask, out


# ------------------------------------------------------------------- driver
_WIDE_FUNCS = {"exp": np.exp, "log": np.log, "log1p": np.log1p, "tanh": np.tanh}


_BLOCK = 2**18  # elements per block of one evaluation (its wide temporaries are a few times this)


def _x87() -> bool:
    """Whether ``np.longdouble`` is x87 extended precision stored in 16 little-endian bytes: the
    64-bit significand (explicit integer bit) in the first 8 bytes, sign and 15-bit exponent (bias
    16383) in the next 2 (checked on 1.5 = 0xC000000000000000 * 2**-63 * 2**0)."""
    if np.dtype(np.longdouble).itemsize != 16 or np.finfo(np.longdouble).nmant != 63:
        return False
    words = np.array([1.5, -0.75], dtype=np.longdouble).view(np.uint64).reshape(2, 2)
    return (words[:, 0].tolist() == [0xC000000000000000] * 2
            and (words[:, 1] & 0xFFFF).tolist() == [0x3FFF, 0x8000 | 0x3FFE])


_X87 = _x87()


_LITTLE = sys.byteorder == "little"


def _undecided_float32(fmt: Format, kind: str, w: np.ndarray) -> np.ndarray | None:
    """The indices where :func:`_decided_by_bits` fails, for float64 ``w`` (float32 from float64) whose
    values are all in ``[2**(emin + 1), 2**emax)`` (then only the dropped bits decide), found in fewer
    passes; None where that range test fails (a negative, tiny, huge or NaN element: conservative, as
    for a log's results), where no element is decided (the undecided ones, evaluated again, take the
    interval path) or the test does not apply.  The 29 dropped bits L are the low bits of each
    value's low 32-bit word (little-endian), and ``|L - h| > slack`` is ``(L - (h - slack)) mod 2**32 >
    2 slack`` (unsigned: L below h - slack wraps around); ``emin < e < emax`` is the range test."""
    if not (_LITTLE and kind == "float64" and fmt.dtype_name == "float32" and fmt.precision == 24
            and fmt.overflow == "inf" and w.dtype == np.float64 and w.size):
        return None
    if not (2.0 ** (fmt.min_exponent + 1) <= w.min() and w.max() < 2.0 ** fmt.max_exponent):
        return None
    slack = math.ceil(WIDE_REL_ERROR[kind] * 2.0**53) + 1
    t = w.view(np.uint32)[0::2] & np.uint32((1 << 29) - 1)
    t -= np.uint32((1 << 28) - slack)
    if t.min() > 2 * slack:
        return np.zeros(0, dtype=np.intp)
    left = np.flatnonzero(t <= 2 * slack)
    return None if left.size == w.size else left


def _decided_by_bits(fmt: Format, kind: str, w: np.ndarray) -> np.ndarray | None:
    """Where the wide value ``w`` alone decides the correctly rounded result in ``fmt`` (then ``w``
    cast to the format is it), for float32 from float64 and float64 from x87 longdouble; None for
    other pairs.

    Let w have P significand bits (53, or 64) and exponent e, so |w| < 2**(e+1) and its ulp is
    ``2**(e - P + 1)``; the format keeps p of them (24, or 53), dropping d = P - p.  The true value
    lies within ``E |w| < E 2**(e+1) = E 2**P`` ulps of w (E = :data:`WIDE_REL_ERROR`: 2**-44 * 2**53
    = 512 ulps of float64, 2**-60 * 2**64 = 16 ulps of longdouble).  The format's rounding
    boundaries in w's binade are the midpoints, whose dropped bits are exactly ``h = 2**(d-1)``; let
    L be w's dropped bits.  If ``|L - h| > slack = ceil(E 2**P) + 1``, no midpoint of the binade lies
    within E|w| of w; nor does one outside it: the power of two at either end is a format value,
    and the midpoints beyond it are at least 2**(d-2) ulps of w away from the binade (2**9 > 16,
    2**27 > 512).  So every point of [w - E|w|, w + E|w|] rounds like w, and w's round-to-nearest-even
    cast (a C cast) is the correctly rounded value.  Only where e is inside the format's normal range
    and below its top binade (min_exponent < e < max_exponent: no subnormal spacing, no overflow
    threshold); non-finite w have an exponent out of that range.  The remaining elements go through
    the interval ends as before; tests/test_crmath.py puts values within a few ulps of w on each side of
    the slack and checks every result against mpmath."""
    if kind == "float64" and fmt.dtype_name == "float32" and fmt.precision == 24 and fmt.overflow == "inf":
        bits = w.view(np.uint64)
        drop, ulps = 29, 2.0**53
        low = (bits & np.uint64((1 << drop) - 1)).astype(np.int64)
        e = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64) - 1023
    elif kind == "longdouble" and _X87 and fmt.dtype_name == "float64" and fmt.precision == 53:
        words = w.view(np.uint64).reshape(-1, 2)
        drop, ulps = 11, 2.0**64
        low = (words[:, 0] & np.uint64((1 << drop) - 1)).astype(np.int64)
        e = (words[:, 1] & np.uint64(0x7FFF)).astype(np.int64) - 16383
    else:
        return None
    slack = math.ceil(WIDE_REL_ERROR[kind] * ulps) + 1
    low -= 1 << (drop - 1)
    np.abs(low, out=low)
    return (low > slack) & (e > fmt.min_exponent) & (e < fmt.max_exponent)


def _evaluate(name: str, fmt: Format, x, stats: dict | None, stage32: bool = True,
              stage64: bool = True) -> np.ndarray:
    x = np.asarray(x)
    stored = stage32 and x.dtype == np.float32 and fmt.precision <= 11  # a narrow format's values in float32
    if not (x.dtype == np.float32 and fmt.precision <= 11) and x.dtype != fmt.dtype:
        raise TypeError(f"crmath.{name}: expected an array of {fmt.dtype}, got {x.dtype} (round it to {fmt} first)")
    flat = x.reshape(-1)
    if stats is None and stage64 and name in _COMPILED64 and fmt.precision == 53 and x.dtype == np.float64:
        got = _compiled64(name, flat)
        if got is not None:  # the compiled kernel's stages decided these; the others go the way below
            out, left = got
            if left.size:  # (the float64 stages would leave them too: the wide type's way, then mpmath)
                out[left] = _evaluate(name, fmt, flat[left], stats, stage32, stage64=False)
            return out.reshape(x.shape)
    if flat.size > _BLOCK:  # elementwise: in blocks, the same values, a few blocks' temporaries (issue #18)
        out = np.empty(flat.shape, x.dtype)
        for start in range(0, flat.size, _BLOCK):
            out[start:start + _BLOCK] = _evaluate(name, fmt, flat[start:start + _BLOCK], stats, stage32, stage64)
        return out.reshape(x.shape)
    if stage64 and name == "exp" and fmt.precision == 53 and x.dtype == np.float64:
        return _exp_float64(fmt, flat, stats).reshape(x.shape)
    if (stage64 and name in LOG64_DOMAIN and fmt.precision == 53 and x.dtype == np.float64 and _X87
            and flat.size >= LOG64_MIN):
        return _log_float64(name, fmt, flat, stats).reshape(x.shape)
    kind = wide_type(fmt)
    if kind is None:
        return _evaluate_mp(name, fmt, x, flat, stats)
    if stored and name == "exp":
        out, rest = _exp_float32(fmt, flat)
        if rest.size:
            out[rest] = _evaluate("exp", fmt, flat[rest], stats, stage32=False)
        if stats is not None:
            stats["float32_decided"] = stats.get("float32_decided", 0) + flat.size - rest.size
        return out.reshape(x.shape)
    wide = _WIDE_DTYPES[kind]
    with np.errstate(all="ignore"):
        w = _WIDE_FUNCS[name](flat.astype(wide))
        left = _undecided_float32(fmt, kind, w)
        if left is not None:  # the usual case for float32: w cast is the result but for a few (elementwise)
            out = w.astype(x.dtype)
            if left.size:
                out[left] = _evaluate(name, fmt, flat[left], stats, stage32)  # (all undecided: the path below)
            if stats is not None:
                stats["elements"] = stats.get("elements", 0) + flat.size - left.size
            return out.reshape(x.shape)
        quick = _decided_by_bits(fmt, kind, w)
        if quick is None:
            ends, wc = None, w
        else:  # w cast is the result where its bits decide; the interval ends for the rest
            out = w.astype(x.dtype)
            ends = np.flatnonzero(~quick)
            wc = w[ends]
        err = np.abs(wc)
        err *= wide.type(WIDE_REL_ERROR[kind])
        lower = _round_wide(fmt, kind, wc - err, x.dtype)
        hi = _round_wide(fmt, kind, wc + err, x.dtype)
        undecided = lower != hi  # also where w is not finite (fixed below)
        if not fmt.has_inf:  # beyond the range both ends are NaN: decided
            undecided &= ~(np.isnan(lower) & np.isnan(hi))
        lost = np.flatnonzero(~np.isfinite(wc))
        if lost.size:  # IEEE special values, and exp beyond the wide type's range
            special, values = _specials(name, fmt, flat[lost if ends is None else ends[lost]])
            lower[lost] = np.where(special, values, _round_wide(fmt, kind, wc[lost], x.dtype))
            undecided[lost] = False
    undecided = np.flatnonzero(undecided)
    if ends is None:
        out = lower
    else:
        out[ends] = lower
        undecided = ends[undecided]
    if undecided.size and kind == "longdouble" and fmt.precision == 53 and name != "tanh":
        undecided = _double_double(name, flat, w, undecided, out, stats)
    if undecided.size:
        values = [_mp_correct(name, fmt, float(v), stats) for v in flat[undecided]]
        with np.errstate(all="ignore"):
            out[undecided] = fmt.round(np.array(values, dtype=np.float64), x.dtype)
    if stats is not None:
        stats["elements"] = stats.get("elements", 0) + flat.size
        stats["undecided"] = stats.get("undecided", 0) + int(undecided.size)
    return out.reshape(x.shape)


_COMPILED64 = ("exp", "log", "log1p")
"""float64 functions the compiled kernel (:mod:`~stabilitylab.numerics.kernel`) decides first where it is loaded
and no ``stats`` are asked for (they count this module's own stages)."""


def _compiled64(name: str, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(out, left)``: float64 ``name`` of ``flat`` correctly rounded by the compiled kernel's stages (the same
    stages as this module's, in C: exp64's pair, then doubledouble; log and log1p from the kernel's own log, a
    series near 0, then the x87 and double-double stages; tests/test_softmax_kernel.py compares them with this
    module's numpy stages), ``left`` the indices it left (outside its domains: the caller computes them); None
    where the kernel is not loaded."""
    from . import kernel

    module = kernel.load()
    if module is None:
        return None
    x = np.ascontiguousarray(flat, dtype=np.float64)
    out, stage = np.empty_like(x), np.empty(x.size, dtype=np.uint8)
    if name == "exp":
        module.exp64_many(x, out, stage)
    else:
        module.log64_many(x, out, stage, name == "log1p")
    return out, np.flatnonzero(stage == 0)


def _double_double(name: str, flat: np.ndarray, w: np.ndarray, undecided: np.ndarray,
                   out: np.ndarray, stats: dict | None) -> np.ndarray:
    """Second stage for float64: the double-double value (:mod:`stabilitylab.numerics.doubledouble`, error
    below its ``REL_ERROR``; log and log1p refine the longdouble ``w``) decides the elements whose
    interval ends round alike (each end h + (l -+ E |h|) is one float64 addition, correctly
    rounded); sets them in ``out`` and returns the indices left to mpmath (outside the
    function's domain, or still undecided)."""
    from . import doubledouble

    x = flat[undecided].astype(np.float64)
    inside = np.flatnonzero(doubledouble.within(name, x))
    with np.errstate(all="ignore"):  # (inside the domains nothing overflows; were it to, NaN decides nothing)
        if name == "exp":
            h, lo = doubledouble.exp(x[inside])
        else:
            h, lo = getattr(doubledouble, name)(x[inside], w[undecided[inside]])
        err = np.abs(h) * doubledouble.REL_ERROR
        down, up = h + (lo - err), h + (lo + err)
    decided = (down == up) & np.isfinite(down)
    out[undecided[inside[decided]]] = down[decided]
    left = np.ones(len(undecided), dtype=bool)
    left[inside[decided]] = False
    if stats is not None:
        stats["double_double"] = stats.get("double_double", 0) + int(decided.sum())
    return undecided[left]


def _exp_float64(fmt: Format, x: np.ndarray, stats: dict | None) -> np.ndarray:
    """float64 exp, first stage in float64 arithmetic (:mod:`stabilitylab.numerics.exp64`, no
    longdouble): on its domain, e**x = (s + err) 2**e (1 + d) with |d| <= E = ``exp64.REL_ERROR``,
    ``1 - 2**-12.5 <= s < 2`` and 2**e s normal, so the correctly rounded result is 2**e times the
    rounding of y = e**x / 2**e, and y lies within E (s + |err|) of s + err.  Half the spacing of
    float64 around s is h = 2**-53 for s > 1 (both neighbours at 2**-52) and h = 2**-54 for s <= 1
    (at s = 1 the neighbour below is 1 - 2**-53: the smaller half, taken for both sides).  Where
    ``|err| < fl(h - fl(s E (1 + 2**-40)))`` (the computed threshold is below h - E (s + 2**-53):
    fl(s E (1 + 2**-40)) exceeds E (s + 2**-53) by at least E s 2**-41 = 2**-103 s, far more than
    the threshold's own two roundings, at most 2**-106), y lies strictly between the midpoints around s: the result
    is 2**e s, exact (a normal float64).  The rest of the domain (E 2**52 s of the elements: ~0.3%)
    goes to the double-double stage, then mpmath; arguments outside the domain (non-finite, results
    near overflow or subnormal) to the wide path."""
    from . import exp64

    out = np.empty(x.shape, np.float64)
    inside = exp64.within(x)
    every = bool(inside.all())
    idx = None if every else np.flatnonzero(inside)
    xi = x if every else x[idx]
    value = out if every else np.empty(xi.size)
    ok = np.empty(xi.size, dtype=bool)
    margin = -exp64.REL_ERROR * (1 + 2.0**-40)
    limit, above = np.empty(min(xi.size, exp64.BLOCK)), np.empty(min(xi.size, exp64.BLOCK), dtype=bool)
    with np.errstate(all="ignore"):
        for start, stop, s, err, e in exp64.blocks(xi):  # each block decided while it is in cache
            t, a = limit[:stop - start], above[:stop - start]
            np.multiply(s, margin, out=t)
            t += 2.0**-54
            np.greater(s, 1.0, out=a)
            np.add(t, 2.0**-54, out=t, where=a)  # h - fl(s E (1 + 2**-40))
            np.abs(err, out=err)
            np.less(err, t, out=ok[start:stop])
            e += 1023
            e <<= 52
            np.multiply(s, e.view(np.float64), out=value[start:stop])  # 2**e s, exact
    undecided = np.flatnonzero(~ok)
    if not every:
        out[idx] = value
        outside = np.flatnonzero(~inside)
        out[outside] = _evaluate("exp", fmt, x[outside], stats, stage64=False)
        undecided = idx[undecided]
    decided = xi.size - undecided.size
    if undecided.size:
        undecided = _double_double("exp", x, None, undecided, out, stats)
    if undecided.size:
        values = [_mp_correct("exp", fmt, float(v), stats) for v in x[undecided]]
        out[undecided] = np.array(values, dtype=np.float64)
    if stats is not None:
        stats["elements"] = stats.get("elements", 0) + xi.size
        stats["undecided"] = stats.get("undecided", 0) + int(undecided.size)
        stats["float64_decided"] = stats.get("float64_decided", 0) + decided
    return out


LOG64_DOMAIN = {"log": (2.0**-990, 2.0**990), "log1p": (-0.5, 2.0**990)}
"""Arguments :func:`_log_float64` takes (both ends included); the others go to the longdouble path."""


def _log_float64(name: str, fmt: Format, x: np.ndarray, stats: dict | None) -> np.ndarray:
    """float64 ``log`` / ``log1p``, first stage in float64 arithmetic (no x87 ``logl``, ~30-40 ns an element):
    one Newton step on ``e**y = X`` (X = x, or the exact 1 + x) from numpy's value, with
    :mod:`~stabilitylab.numerics.exp64`'s ``e**-y0``.  Elements it does not decide (and those outside
    :data:`LOG64_DOMAIN`) take the longdouble path as before.

    Proof (u = 2**-53; y* the exact result, ``|y*| <= 687``).  ``y0 = np.log(x)`` (``np.log1p``) is within
    ``2**-44 |y*|`` (:data:`WIDE_REL_ERROR`, the bound assumed of the C library's float64 functions);
    ``-y0`` is in exp64's domain, so ``e**-y0 = (s + err) 2**e (1 + delta)``, ``|delta| <= 2**-62``;
    ``W = s 2**e`` is exact and normal, ``F = err 2**e`` exact or, subnormal, within 2**-1075.  For log1p,
    ``1 + x = a + al`` exactly (TwoSum; ``a`` is x for log, ``al = 0``).  ``a W = ph + pe`` exactly (Dekker:
    both factors below 2**995, no underflow as ``a W`` is near 1); ``ph - 1`` is exact (Sterbenz: ``ph``
    is within 2**-33 of 1); ``c = fl(fl(ph - 1) + fl(fl(pe + fl(a F)) + fl(al W)))``: the small terms are
    below 2**-51.9 (their roundings at most ``3 * 2**-105``), the omitted ``al F`` below 2**-106, ``a``
    times F's subnormal error at most ``2**990 * 2**-1075 = 2**-85``, the last addition at most
    ``u |c| <= 2**-87`` (``|c| <= 2**-33``): c is within 2**-84.5 of ``X (s + err) 2**e - 1``, hence
    within ``2**-84.5 + 2**-62 (1 + 2**-33) <= 2**-61.99`` of ``c* = X e**-y0 - 1``.  Newton's own error:
    ``y0 + c* - y* = e**h - 1 - h`` with ``|h| = |y* - y0| <= 2**-34.5``: at most ``0.51 h**2 <=
    2**-78.5 |y*|``.  Where ``|y0| >= 2**-40`` (the others are left undecided), ``|y0| > |c|`` and
    Fast2Sum gives ``hi + lo = y0 + c`` exactly, so ``|hi + lo - y*| <= 2**-61.99 + 2**-78.4 |hi|``.
    With ``B = 2**-61.9 + 2**-78 |hi|`` (:data:`LOG64_ERROR`; margin for the roundings of ``lo -+ B``, at most
    ``u (|lo| + B)``), ``fl(hi + fl(lo - B)) <= RN(y*) <= fl(hi + fl(lo + B))`` by monotonicity; where
    the two are equal that is the correctly rounded result (normal: ``2**-53 <= |y*| <= 687``)."""
    low, high = LOG64_DOMAIN[name]
    out = np.empty(x.shape, np.float64)
    inside = (x >= low) & (x <= high)  # (NaN: False)
    every = bool(inside.all())
    idx = None if every else np.flatnonzero(inside)
    xi = x if every else x[idx]
    value, ok = np.empty(xi.size), np.empty(xi.size, dtype=bool)
    for start in range(0, xi.size, LOG64_BLOCK):  # (blocks whose temporaries stay in cache)
        stop = start + LOG64_BLOCK
        value[start:stop], ok[start:stop] = _log_block(name, xi[start:stop])
    rest_i = np.flatnonzero(~ok)
    if every:
        out = value
        left = rest_i
    else:
        out[idx] = value
        left = np.concatenate([np.flatnonzero(~inside), idx[rest_i]])
    if left.size:
        out[left] = _evaluate(name, fmt, x[left], stats, stage64=False)
    if stats is not None:
        stats["float64_decided"] = stats.get("float64_decided", 0) + xi.size - rest_i.size
    return out


LOG64_BLOCK = 8192
LOG64_MIN = 256  # smaller arrays take the longdouble path: the stage's ~60 numpy calls cost ~0.1 ms a call
LOG64_ERROR = LOG_NEWTON_ERROR
"""The absolute part of :func:`_log_float64`'s bound ``B = 2**-78 |hi| + LOG64_ERROR`` (proof there): 2**-61.9,
:data:`stabilitylab.numerics.exp64.LOG_NEWTON_ERROR`."""


def _log_block(name: str, xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value, decided) of :func:`_log_float64` on one block of arguments in its domain."""
    from . import exp64
    from .doubledouble import fast_two_sum, two_sum

    with np.errstate(all="ignore"):
        y0 = np.log(xi) if name == "log" else np.log1p(xi)
        if name == "log":
            c = exp64.log_newton(xi, None, y0)
        else:
            c = exp64.log_newton(*two_sum(np.ones_like(xi), xi), y0)
        hi, lo = fast_two_sum(y0, c)
        bound = np.abs(hi) * 2.0**-78 + LOG64_ERROR
        down = hi + (lo - bound)
        up = hi + (lo + bound)
        return down, (down == up) & (np.abs(y0) >= 2.0**-40)


FLOAT32_EXP_REL_ERROR = 2.0**-18
"""Relative error bound assumed for ``np.exp`` on float32 where its result is a normal float32.

numpy's float32 exp (SIMD on AVX2 / AVX512F, the C library's ``expf`` elsewhere) is
documented at under 4 ulps (``4 * 2**-23 = 2**-21`` relative); ``2**-18`` leaves a margin
of 8.  ``tests/test_crmath.py`` checks it on every float32 input whose exp is a normal
float32 (a slow test), on the machine that runs the tests.
"""


def _exp_float32(fmt: Format, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First stage for a format of <= 11 bits held in float32: ``w = np.exp(x)`` in float32
    (one SIMD pass), rounded to the format; decided where no rounding boundary lies within
    ``FLOAT32_EXP_REL_ERROR * w`` of w.  Normal range of the format: the bits of w below the
    format's last bit are at least ``slack`` float32 ulps from the half-way pattern.  Below
    ``tiny`` (fixed spacing q): ``u = w / q`` is at least ``E u`` from k + 1/2.  Returns the
    rounded values and the indices left to the float64 stage (also w not a normal float32)."""
    with np.errstate(all="ignore"):
        w = np.exp(x)
        out = fmt.round32(w)
        drop = 23 - (fmt.precision - 1)
        slack = math.ceil(FLOAT32_EXP_REL_ERROR * 2.0**24) + 1
        # |L - h| > slack for the dropped bits L (h = 2**(drop-1)) as (L - (h - slack)) mod 2**32 > 2 slack:
        # L below h - slack wraps around (unsigned)
        u = w.view(np.uint32) & np.uint32((1 << drop) - 1)
        u -= np.uint32((1 << (drop - 1)) - slack)
        if u.size and u.min() > 2 * slack and w.min() >= fmt.tiny and w.max() < np.inf:  # (e**x >= 0; NaN fails)
            return out, np.zeros(0, dtype=np.intp)  # every element decided: the usual case, in two passes
        t = w.view(np.int32) & np.int32((1 << drop) - 1)
        t -= np.int32(1 << (drop - 1))
        np.abs(t, out=t)
        undecided = t <= slack
        magnitude = np.abs(w)
        low = np.flatnonzero(~(magnitude >= fmt.tiny))  # also NaN
        if low.size:
            v = magnitude[low]
            u = v * np.float32(2.0 ** (fmt.precision - 1 - fmt.min_exponent))
            frac = np.abs((u - np.floor(u)) - np.float32(0.5))
            bad = ~(frac > u * np.float32(FLOAT32_EXP_REL_ERROR) + np.float32(2.0**-20)) | ~(v >= 2.0**-126)
            undecided[low] = bad
        big = np.flatnonzero(magnitude == np.inf)  # exp(x) beyond float32: the float64 stage decides
        undecided[big] = True
    return out, np.flatnonzero(undecided)


def _evaluate_mp(name: str, fmt: Format, x, flat, stats: dict | None) -> np.ndarray:
    """Formats wider than every wide type: special values, then mpmath for each element."""
    with np.errstate(all="ignore"):  # comparisons of ml_dtypes NaNs warn
        special, out = _specials(name, fmt, flat)
    todo = np.flatnonzero(~special)
    xs = flat[todo]
    res = np.empty(xs.shape, x.dtype)
    undecided = np.arange(xs.size)
    if name == "exp":  # exp(x) is far beyond the range / far below half the smallest subnormal
        over = xs > fmt.ln_max + 1
        under = xs < fmt.ln_smallest_subnormal - 1
        res[over] = _const(fmt, math.inf)
        res[under] = 0
        undecided = np.flatnonzero(~(over | under))
    if undecided.size:
        values = [_mp_correct(name, fmt, float(v), stats) for v in xs[undecided]]
        with np.errstate(all="ignore"):
            res[undecided] = fmt.round(np.array(values, dtype=np.float64), x.dtype)
    out[todo] = res
    if stats is not None:
        stats["elements"] = stats.get("elements", 0) + flat.size
        stats["undecided"] = stats.get("undecided", 0) + int(undecided.size)
    return out.reshape(x.shape)


def exp(fmt: Format, x, *, stats: dict | None = None) -> np.ndarray:
    """e**x correctly rounded to ``fmt`` (nearest, ties to even), elementwise.

    ``x``: array of ``fmt.dtype``, any shape; returns the same dtype and shape.
    ``stats``: optional dict to which ``elements``, ``undecided`` (elements
    recomputed with mpmath), ``double_double`` (float64 elements decided by the
    double-double stage), ``float64_decided`` (float64 elements decided by the
    :mod:`~stabilitylab.numerics.exp64` pair), ``float32_decided`` (narrow formats' elements
    decided by float32's exp) and ``max_prec`` (largest mpmath precision, bits) are added.
    Method and error bounds: see the module docstring.
    """
    return _evaluate("exp", fmt, x, stats)


def log(fmt: Format, x, *, stats: dict | None = None) -> np.ndarray:
    """Natural logarithm correctly rounded to ``fmt``, elementwise (see :func:`exp`)."""
    return _evaluate("log", fmt, x, stats)


def log1p(fmt: Format, x, *, stats: dict | None = None) -> np.ndarray:
    """ln(1 + x) (of the exact 1 + x) correctly rounded to ``fmt``, elementwise (see :func:`exp`)."""
    return _evaluate("log1p", fmt, x, stats)


def tanh(fmt: Format, x, *, stats: dict | None = None) -> np.ndarray:
    """tanh(x) = (e**x - e**-x) / (e**x + e**-x) correctly rounded to ``fmt``, elementwise (see :func:`exp`);
    in [-1, 1], odd, tanh(+-inf) = +-1."""
    return _evaluate("tanh", fmt, x, stats)
