"""The interval layer (stabilitylab.numerics.interval) on subnormal and near-tiny ranges.

Property: for random ranges of format values whose results are subnormal or near the
smallest normal, at every sampled point of the range the point :class:`Arith` result lies
in the computed enclosure ``[lo, hi]``, the exact value of the same formula (mpmath) in
``[xlo, xhi]``, and ``|computed - exact| <= err``.  A rounding to a subnormal result has an
absolute error (up to smallest_subnormal / 2 = 2**-1075 in float64, which float64 itself
rounds to 0): the old bound dropped it in float64 and failed here.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from stabilitylab.numerics import interval
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import FORMATS


def _prec(fmt) -> int:
    """Bits for mpmath: log1p(s) - s ~ s**2 / 2 of a subnormal s is ~ smallest_subnormal * s
    (2**-1075 s in float64), and must not be lost (mpmath's exponents are unbounded)."""
    return 2 * (fmt.precision - fmt.min_exponent) + 64
FORMAT_NAMES = [name for name, fmt in FORMATS.items()
                if (fmt.precision <= 24 or interval.supported(fmt)) and not fmt.scale_only]


def _mp(x) -> mpmath.mpf:
    """The exact value of a float64 or longdouble number."""
    x = np.asarray(x)
    if x.dtype == np.longdouble:
        if not np.isfinite(x):
            return mpmath.mpf(float(x))
        m, e = np.frexp(x)
        return mpmath.ldexp(mpmath.mpf(int(np.ldexp(m, 64))), int(e) - 64)
    return mpmath.mpf(float(x))


def _values(fmt, lo: float, hi: float, n: int, rng) -> np.ndarray:
    """n random positive format values in [lo, hi] (uniform over bit patterns)."""
    bits = np.dtype(f"u{fmt.dtype.itemsize}")
    a = int(fmt.round(np.array([lo])).view(bits)[0])
    b = int(fmt.round(np.array([hi])).view(bits)[0])
    pats = rng.integers(a, b + 1, size=n).astype(bits)
    return pats.view(fmt.dtype).astype(np.float64)


def _ranges(fmt, lo: float, hi: float, n: int, rng, sign: float = 1.0):
    """n ranges [a, b] of format values within [lo, hi] (a few to a few thousand values wide)."""
    bits = np.dtype(f"u{fmt.dtype.itemsize}")
    a = _values(fmt, lo, hi, n, rng)
    width = rng.integers(0, 2 ** rng.integers(0, 12, size=n))
    top = int(fmt.round(np.array([hi])).view(bits)[0])
    b_bits = np.minimum(fmt.round(a).view(bits).astype(np.int64) + width, top).astype(bits)
    b = b_bits.view(fmt.dtype).astype(np.float64)
    return (a, b) if sign > 0 else (-b, -a)


def _points(fmt, a: np.ndarray, b: np.ndarray, k: int, rng) -> np.ndarray:
    """(len(a), k) format values in each [a_i, b_i]: both ends and k - 2 random ones."""
    bits = np.dtype(f"u{fmt.dtype.itemsize}")
    out = np.empty((len(a), k))
    for i, (x, y) in enumerate(zip(a, b)):
        s = -1.0 if y <= 0 and x < 0 else 1.0
        lo, hi = sorted((abs(x), abs(y)))
        p = fmt.round(np.array([lo, hi])).view(bits).astype(np.int64)
        pats = np.concatenate([p, rng.integers(p[0], p[1] + 1, size=k - 2)]).astype(bits)
        out[i] = s * pats.view(fmt.dtype).astype(np.float64)
    return out


# Each case: (name, operand ranges (fmt, rng, n) -> list of (lo, hi) arrays, interval kernel,
# point kernel, exact formula on mpmath operands).  The point and interval kernels are the same
# code: IntervalArith and Arith offer the same operations.

def _exp_range(fmt, rng, n):  # exp results from below half the smallest subnormal up to a few tiny
    low = max(-(math.log(fmt.tiny) + 2), fmt.smallest_subnormal)  # (fp6 / fp4: tiny >= e**-2, x below 0 only)
    return [_ranges(fmt, low, -(math.log(fmt.smallest_subnormal) - 1), n, rng, sign=-1.0)]


def _tiny_range(fmt, rng, n):  # subnormal and near-tiny values
    return [_ranges(fmt, fmt.smallest_subnormal, 4 * fmt.tiny, n, rng)]


def _product_ranges(fmt, rng, n):  # operands whose product is subnormal or near tiny
    half = math.log2(fmt.tiny) / 2
    return [_ranges(fmt, 2.0 ** (half - 2), 2.0 ** (half + 2), n, rng),
            _ranges(fmt, 2.0 ** (half - fmt.precision), 2.0 ** (half + 2), n, rng)]


def _quotient_ranges(fmt, rng, n):  # a subnormal or near-tiny dividend, a divisor in [1/2, 4]
    return [_ranges(fmt, fmt.smallest_subnormal, 8 * fmt.tiny, n, rng), _ranges(fmt, 0.5, 4.0, n, rng)]


def _sum_ranges(fmt, rng, n):  # subnormal operands of both signs
    return [_ranges(fmt, fmt.smallest_subnormal, 2 * fmt.tiny, n, rng),
            _ranges(fmt, fmt.smallest_subnormal, 2 * fmt.tiny, n, rng, sign=-1.0)]


def _naive_softmax(a, x):
    """-log(exp(x) / (1 + exp(x))): the naive softmax of [0, x], label 1 (x < 0)."""
    e = a.exp(x)
    one = a.const(np.ones(np.shape(x.lo if isinstance(x, interval.Bounds) else x)))
    return a.neg(a.log(a.div(e, a.add(one, e))))


def _scaled_exp(a, x):
    """exp(x) * 3 - exp(x) / 2: errors of a subnormal result carried through * / -."""
    e = a.exp(x)
    three = a.const(np.full(np.shape(x.lo if isinstance(x, interval.Bounds) else x), 3.0))
    two = a.const(np.full(np.shape(x.lo if isinstance(x, interval.Bounds) else x), 2.0))
    return a.sub(a.mul(e, three), a.div(e, two))


CASES = {
    "exp": (_exp_range, lambda a, x: a.exp(x), mpmath.exp),
    "mul": (_product_ranges, lambda a, x, y: a.mul(x, y), lambda x, y: x * y),
    "div": (_quotient_ranges, lambda a, x, y: a.div(x, y), lambda x, y: x / y),
    "add": (_sum_ranges, lambda a, x, y: a.add(x, y), lambda x, y: x + y),
    "sub": (_sum_ranges, lambda a, x, y: a.sub(x, y), lambda x, y: x - y),
    "log": (_tiny_range, lambda a, x: a.log(x), mpmath.log),
    "log1p": (_tiny_range, lambda a, x: a.log1p(x), mpmath.log1p),
    "log1p(exp)": (_exp_range, lambda a, x: a.log1p(a.exp(x)), lambda x: mpmath.log1p(mpmath.exp(x))),
    "naive_softmax": (_exp_range, _naive_softmax, lambda x: -mpmath.log(mpmath.exp(x) / (1 + mpmath.exp(x)))),
    "scaled_exp": (_exp_range, _scaled_exp, lambda x: mpmath.exp(x) * 3 - mpmath.exp(x) / 2),
}


def _check(fmt_name: str, case: str, ftz: bool, seed: int, n: int = 24, k: int = 6) -> None:
    fmt = FORMATS[fmt_name]
    make, kernel, exact = CASES[case]
    rng = np.random.default_rng(seed)
    ranges = make(fmt, rng, n)
    points = [_points(fmt, lo, hi, k, rng) for lo, hi in ranges]
    ia = interval.IntervalArith(fmt, n, ftz=ftz)
    bounds = kernel(ia, *(ia.load(interval.Bounds(lo, hi)) for lo, hi in ranges))
    for j in range(k):
        ar = Arith(fmt, n, ftz=ftz)
        loaded = [ar.load(p[:, j].astype(fmt.dtype)) for p in points]
        with np.errstate(all="ignore"):
            value = np.asarray(kernel(ar, *loaded)).astype(np.float64)
        for i in range(n):
            v = value[i]
            if np.isnan(v):  # float8_e4m3fn has no inf: its log(0) is NaN (the bounds hold -inf)
                assert not fmt.has_inf and not (np.isfinite(bounds.lo[i]) and np.isfinite(bounds.hi[i]))
                continue
            assert bounds.lo[i] <= v <= bounds.hi[i], (case, fmt_name, i, j, v, bounds.lo[i], bounds.hi[i])
            with mpmath.workprec(_prec(fmt)):
                operands = [mpmath.mpf(float(np.asarray(x[i]).astype(np.float64))) for x in loaded]
                if case == "div" and operands[1] == 0:  # (fp6 / fp4 under ftz: a divisor flushed to 0)
                    continue
                x = exact(*operands)
                if not (np.isfinite(v) and mpmath.isfinite(x)):
                    continue
                assert _mp(bounds.xlo[i]) <= x <= _mp(bounds.xhi[i]), (case, fmt_name, i, j, x)
                err = _mp(bounds.err[i])
                assert abs(mpmath.mpf(float(v)) - x) <= err, (
                    f"{case} in {fmt_name} (ftz={ftz}) at {[float(o) for o in operands]}: computed {v!r}, "
                    f"exact {mpmath.nstr(x, 20)}, |error| {mpmath.nstr(abs(mpmath.mpf(float(v)) - x), 6)} "
                    f"> bound {mpmath.nstr(err, 6)}")


@pytest.mark.parametrize("ftz", [False, True], ids=["gradual", "ftz"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_interval_error_bound_holds_on_subnormal_ranges(fmt_name, case, ftz):
    for seed in range(2):
        _check(fmt_name, case, ftz, seed)


def test_float64_subnormal_exp_error_bound_is_absolute_not_zero():
    """The regression of issue #18: exp(-733.36...) is subnormal in float64, off by up to
    2**-1075 (absolute); the bound held it as float64, where smallest_subnormal / 2 is 0, and
    proved a relative error u instead (the underflow threshold 733.97 was flagged exact)."""
    fmt = FORMATS["float64"]
    ia = interval.IntervalArith(fmt, 1)
    x = -733.362470436718
    e = ia.exp(ia.load(interval.Bounds(np.array([x]), np.array([x]))))
    assert e.lo[0] == e.hi[0] and 0 < e.lo[0] < fmt.tiny
    assert _mp(e.err[0]) >= mpmath.ldexp(1, -1075)
    assert ia.eta == np.longdouble(2) ** -1075
