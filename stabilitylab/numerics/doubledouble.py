"""Double-double arithmetic on float64 arrays, and exp, expm1, log, log1p to ~104 bits with it.

A double-double ``(h, l)`` is the unevaluated sum ``h + l`` with ``|l| <= ulp(h) / 2``:
about 106 significant bits.  The error-free transformations (Knuth's TwoSum,
Dekker's split product) make every step vectorized numpy float64 arithmetic;
numpy has no fused multiply-add, so products split each factor in two 26-bit
halves (valid for ``|a| < 2**995``: the domains keep every factor below 2**966).

These serve :mod:`stabilitylab.numerics.crmath` as the stage between longdouble and mpmath
for float64 arguments: they decide all but ~2**-36 of the elements longdouble
leaves undecided, at ~1 us each instead of mpmath's ~15 us.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from math import factorial

import numpy as np

__all__ = ["REL_ERROR", "EXP_DOMAIN", "LOG_DOMAIN", "LOG1P_DOMAIN", "exp", "expm1", "log", "log1p", "within"]

REL_ERROR = 2.0**-90
"""Relative error bound of :func:`exp`, :func:`expm1`, :func:`log` and :func:`log1p` on their domains.

The argument reduction r = x - k ln 2 is exact to 2**-126 (ln 2 in three parts, the
first two of 42 bits: k L1 and k L2 are exact for |k| <= 2**11, x - k L1 is exact by
Sterbenz's lemma); r / 256 is exact; the Taylor polynomial of degree 12 of e**s - 1 on
|s| <= 2**-9.4 is within 2**-137 relative; each double-double operation adds at most
~2**-104 relative, about 60 of them in the Horner scheme and the 8 squarings
(q <- q (2 + q), which keep e**s - 1 rather than e**s, so nothing cancels): below
2**-97 in all.  log and log1p take one Newton step from the longdouble value (error
2**-58 squared), whose correction is computed without cancellation (see each).
``tests/test_doubledouble.py`` measures all four against mpmath (below 2**-100).
2**-90 leaves a margin of 2**7."""

EXP_DOMAIN = (-670.0, 709.0)
"""Arguments :func:`exp` takes: both parts of its results are normal float64 values
(e**-670 > 2**-967, so the low part, ~2**-53 of it, is above 2**-1022)."""

DEGREE = 12
SQUARINGS = 8


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a + b = s + e exactly, s = fl(a + b) (Knuth)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def fast_two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a + b = s + e exactly for |a| >= |b| (or a = 0) (Dekker)."""
    s = a + b
    return s, b - (s - a)


def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a = hi + lo, each of at most 26 significant bits (Veltkamp)."""
    c = 134217729.0 * a  # 2**27 + 1
    hi = c - (c - a)
    return hi, a - hi


def two_prod(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a * b = p + e exactly, p = fl(a b) (Dekker)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def mul(ah, al, bh, bl) -> tuple[np.ndarray, np.ndarray]:
    """(ah + al)(bh + bl) as a double-double."""
    p, e = two_prod(ah, bh)
    e = e + (ah * bl + al * bh)
    return fast_two_sum(p, e)


def add(ah, al, bh, bl) -> tuple[np.ndarray, np.ndarray]:
    """(ah + al) + (bh + bl) as a double-double (the accurate variant: both low parts summed exactly)."""
    s, e = two_sum(ah, bh)
    t, f = two_sum(al, bl)
    e = e + t
    s, e = fast_two_sum(s, e)
    e = e + f
    return fast_two_sum(s, e)


def _pair(x: Fraction) -> tuple[float, float]:
    h = float(x)
    return h, float(x - Fraction(h))


@functools.cache
def _constants() -> tuple:
    """(L1, L2, L3) with ln 2 = L1 + L2 + L3 + O(2**-137), L1 and L2 of 42 bits; the Taylor
    coefficients 1/n!, n = 1..DEGREE, as double-doubles."""
    import mpmath

    with mpmath.workprec(300):
        ln2 = +mpmath.ln2
        l1 = mpmath.floor(ln2 * 2**42) / 2**42
        l2 = mpmath.floor((ln2 - l1) * 2**84) / 2**84
        l3 = ln2 - l1 - l2
        parts = (float(l1), float(l2), float(l3))
    coefficients = [_pair(Fraction(1, factorial(n))) for n in range(1, DEGREE + 1)]
    return parts, coefficients


def _exp_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k, qh, ql) with e**x = 2**k (1 + q): x = k ln 2 + r, q = e**r - 1 = (1 + e**(r/256) - 1)**256 - 1,
    e**s - 1 from its Taylor polynomial and squared as q (2 + q)."""
    (l1, l2, l3), coefficients = _constants()
    k = np.rint(x / (l1 + l2))
    r1 = x - k * l1  # exact
    rh, rl = two_sum(r1, -(k * l2))  # k * l2 exact
    rh, rl = fast_two_sum(rh, rl - k * l3)
    sh, sl = rh / 2.0**SQUARINGS, rl / 2.0**SQUARINGS
    qh, ql = (np.full_like(x, coefficients[-1][0]), np.full_like(x, coefficients[-1][1]))
    for ch, cl in reversed(coefficients[:-1]):
        qh, ql = mul(qh, ql, sh, sl)
        qh, ql = add(qh, ql, np.full_like(x, ch), np.full_like(x, cl))
    qh, ql = mul(qh, ql, sh, sl)  # e**s - 1
    two, zero = np.full_like(x, 2.0), np.zeros_like(x)
    for _ in range(SQUARINGS):  # (1 + q)**2 - 1 = q (2 + q)
        th, tl = add(two, zero, qh, ql)
        qh, ql = mul(qh, ql, th, tl)
    return k, qh, ql


def exp(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """e**x as a double-double (h, l), relative error below :data:`REL_ERROR`, for float64
    ``x`` in :data:`EXP_DOMAIN` (1-d)."""
    x = np.asarray(x, dtype=np.float64)
    return _scaled(*_exp_parts(x))


def _scaled(k, qh, ql) -> tuple[np.ndarray, np.ndarray]:
    """2**k (1 + q) as a double-double."""
    eh, el = add(np.ones_like(qh), np.zeros_like(qh), qh, ql)
    scale = k.astype(np.int64)
    return np.ldexp(eh, scale), np.ldexp(el, scale)


def expm1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """e**x - 1 as a double-double, relative error below :data:`REL_ERROR`, for float64 ``x``
    in :data:`EXP_DOMAIN` with |x| >= 2**-900 (q itself where k = 0, so nothing cancels; else
    |e**x - 1| > 0.29)."""
    x = np.asarray(x, dtype=np.float64)
    k, qh, ql = _exp_parts(x)
    eh, el = _scaled(k, qh, ql)
    mh, ml = add(eh, el, np.full_like(x, -1.0), np.zeros_like(x))
    return np.where(k == 0, qh, mh), np.where(k == 0, ql, ml)


LOG_DOMAIN = (2.0**-960, 2.0**966)
"""Arguments of :func:`log`: e**-y0 stays in :data:`EXP_DOMAIN` and below 2**960 (products
split their factors: 2**27 times them must stay finite)."""

LOG1P_DOMAIN = (-1.0, 2.0**966)
"""Arguments of :func:`log1p`: -1 < t <= 2**966 (excluded: -1), and |t| >= 2**-500 (the
low parts of the terms near t stay normal)."""


def within(name: str, x: np.ndarray) -> np.ndarray:
    """Where ``x`` is in the domain of ``name`` (exp, log, log1p)."""
    if name == "exp":
        return (x >= EXP_DOMAIN[0]) & (x <= EXP_DOMAIN[1])
    if name == "log":
        return (x >= LOG_DOMAIN[0]) & (x <= LOG_DOMAIN[1])
    return (x > LOG1P_DOMAIN[0]) & (x <= LOG1P_DOMAIN[1]) & (np.abs(x) >= 2.0**-500)


def _exp_minus(yh: np.ndarray, yl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """e**-(yh + yl) = e**-yh (1 - yl + yl**2 / 2) (|yl| <= 2**-43: the rest is below 2**-130)."""
    eh, el = exp(-yh)
    ch, cl = two_sum(np.ones_like(yl), -yl)
    return mul(eh, el, ch, cl + yl * yl / 2)


def _split_wide(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A longdouble as the double-double it equals (64 bits fit in two float64)."""
    yh = w.astype(np.float64)
    return yh, (w - yh.astype(w.dtype)).astype(np.float64)


def _newton_far(uh, ul, yh, yl) -> tuple[np.ndarray, np.ndarray]:
    """y1 = y0 + (u e**-y0 - 1): ln u for |ln u| >= ln 2 - 2**-50, from y0 = yh + yl near it
    (the correction's absolute error, ~2**-104, is then 2**-103 of |y1|)."""
    eh, el = _exp_minus(yh, yl)
    ph, pl = mul(uh, ul, eh, el)
    dh, dl = add(ph, pl, np.full_like(uh, -1.0), np.zeros_like(uh))
    return add(yh, yl, dh, dl)


def _newton_near(t, yh, yl) -> tuple[np.ndarray, np.ndarray]:
    """y1 = y0 + (1 + t) e**-y0 - 1 for t in [-1/2, 1], the correction computed as t + m + t m
    with m = e**-y0 - 1 (no cancellation against 1: every term is within a factor 2 of |y1|)."""
    mh, ml = expm1(-yh)  # e**-y0 - 1 = (e**-yh - 1) + e**-yh (e**-yl - 1)
    ch, cl = mul(mh + 1.0, ml, -yl, yl * yl / 2)
    mh, ml = add(mh, ml, ch, cl)
    zero = np.zeros_like(t)
    ah, al = mul(t, zero, mh, ml)
    bh, bl = add(t, zero, mh, ml)
    dh, dl = add(ah, al, bh, bl)
    return add(yh, yl, dh, dl)


def log1p(t: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ln(1 + t) as a double-double from an approximation ``w`` (longdouble, relative error
    below 2**-58) by one Newton step (it squares w's error: 2**-116): for t in [-1/2, 1]
    :func:`_newton_near`, else :func:`_newton_far` on u = 1 + t (exact as a double-double).
    Relative error below :data:`REL_ERROR`."""
    t = np.asarray(t, dtype=np.float64)
    yh, yl = _split_wide(w)
    near = (t >= -0.5) & (t <= 1.0)
    out_h, out_l = np.empty_like(t), np.empty_like(t)
    if near.any():
        out_h[near], out_l[near] = _newton_near(t[near], yh[near], yl[near])
    far = ~near
    if far.any():
        uh, ul = two_sum(np.ones(int(far.sum())), t[far])
        out_h[far], out_l[far] = _newton_far(uh, ul, yh[far], yl[far])
    return out_h, out_l


def log(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ln x as a double-double from an approximation ``w`` (as :func:`log1p`), for x in
    :data:`LOG_DOMAIN`: for x in [1/2, 2], log1p(x - 1) (x - 1 exact by Sterbenz's lemma),
    else :func:`_newton_far`.  Relative error below :data:`REL_ERROR`."""
    x = np.asarray(x, dtype=np.float64)
    near = (x >= 0.5) & (x <= 2.0)
    yh, yl = _split_wide(w)
    out_h, out_l = np.empty_like(x), np.empty_like(x)
    if near.any():
        out_h[near], out_l[near] = log1p(x[near] - 1.0, w[near])
    far = ~near
    if far.any():
        out_h[far], out_l[far] = _newton_far(x[far], np.zeros(int(far.sum())), yh[far], yl[far])
    return out_h, out_l
