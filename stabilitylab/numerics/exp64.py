"""e**x for float64 x in float64 arithmetic, as an unevaluated pair with a proven relative error bound.

:func:`parts` returns ``(s, err, e)`` with ``e**x = (s + err) 2**e (1 + d)``, ``|d| <= REL_ERROR = 2**-62``,
for every float64 ``x`` in :data:`DOMAIN`; ``s = fl(s + err)`` (so ``|err| <= ulp(s) / 2``),
``1 - 2**-12.5 <= s < 2`` and ``2**e s`` a normal float64.  It is vectorized numpy float64
arithmetic (no longdouble: x87's scalar ``expl`` costs ~30 ns per value, this ~8 ns), in blocks of
:data:`BLOCK` values with reused buffers (:func:`blocks`).  :mod:`stabilitylab.numerics.crmath`
decides float64's correctly rounded exp from the pair.

Method
------
N = 2048, C = ln 2 / N.  ``k = rint(fl(x fl(1/C)))``, ``r = x - k C``, ``j = k mod N``,
``e = floor(k / N)``, so ``x = e ln 2 + j C + r`` and ``e**x = 2**e 2**(j/N) e**r``.
``2**(j/N) = T_hi + T_lo`` is a table of double-doubles computed from 200-bit integers at first use
(:func:`_constants`); ``q = e**r - 1`` is ``r + r**2 P(r)``, ``P(r) = 1/2 + r/6 + r**2/24 + r**3/120``
by Horner.  Then ``lo = fl(fl(T_hi q) + T_lo)``, ``s = fl(T_hi + lo)`` and ``err = (T_hi - s) + lo``
(Fast2Sum, exact as ``|T_hi| >= |lo|``): ``s + err = T_hi + lo`` exactly.

Passes: k is rounded by adding ``1.5 * 2**52`` (a float64 in ``[2**52, 2**53)`` has spacing 1, so the sum is
``fl(x INV)`` rounded to an integer, ties to even, as ``rint``) and read as an integer from the sum's bits
(``bits(1.5 * 2**52) + k``, the shifter's low 51 bits being 0: ``j`` and ``e`` by a mask and a shift, no
float-to-int cast pass); the table is read with ``np.take(..., mode="wrap")`` (``0 <= j < N``, so the mode
changes nothing; ``mode="raise"`` with ``out=`` copies through a buffer).  The pairs are the same, bit for
bit, as with ``rint``, a cast and ``mode="raise"`` (13% less CPU time, measured in one process).

Error bound
-----------
u = 2**-53 (float64's unit roundoff).  Errors are relative to ``2**(j/N) e**r_true``, the true value
over ``2**e``.

* Range of k: on :data:`DOMAIN` ``|x| <= 709``, ``|x / C| <= 709 * 2954.64 < 2094840 < 2**21``.
* Reduction.  ``C = C1 + C2 + c3``: C is in ``[2**-12, 2**-11)``; C1 is C rounded to 32 significant
  bits (a multiple of 2**-43), so ``k C1`` (at most 21 + 32 bits) is exact and ``|C - C1| <= 2**-44``;
  C2 is the float64 nearest ``C - C1``, ``|c3| <= 2**-97``.  ``fl(x fl(1/C))`` is within
  ``2.0001 u |x / C| < 2**-31`` of ``x / C``, so ``|x / C - k| <= 1/2 + 2**-31`` and
  ``|x - k C1| <= C (1/2 + 2**-31) + 2**21 * 2**-44 < 2**-12.52``.  ``r1 = x - k C1`` is exact: for
  ``k = 0`` it is x; otherwise ``|fl(x / C)| >= 1/2`` gives ``|x| > 2**-13``, a multiple of
  ``2**-65``, as is ``k C1``, and a multiple of ``2**-65`` below ``2**-12`` has at most 53 bits.
  ``p = fl(k C2)``: ``|k C2| <= 2**-23``, rounding error ``<= 2**-77``; the dropped ``k c3``:
  ``<= 2**-76``.  ``r = fl(r1 - p)``, ``|r| < 2**-12.5`` (binade ``2**-13``): rounding error
  ``<= 2**-66``.  In all ``|r - r_true| <= 2**-66 + 2**-77 + 2**-76 <= 2**-65.99``: that relative error
  in ``e**r``.
* Polynomial.  Truncation: ``sum_{n >= 6} |r|**n / n! <= 1.001 (2**-12.5)**6 / 720 < 2**-84``.
  Evaluation: ``h = fl(P(r))`` (coefficients rounded, three multiply-adds whose products are below
  2**-13.5 of the sums) within ``2 u`` of P(r) relative; ``w = fl(r fl(r h))`` within
  ``(1 + u)**2 (1 + 2 u) - 1 <= 4.0001 u`` relative of ``r**2 P(r)``, ``|r**2 P(r)| <= 2**-25 * 0.5001``:
  ``|w - r**2 P(r)| <= 2**-76.99``.
  ``q = fl(r + w)``, ``|q| < 2**-12.49`` (binade ``2**-13``): rounding ``<= 2**-66``.
  ``|q - (e**r - 1)| <= 2**-66 + 2**-76.99 + 2**-84 <= 2**-65.99`` (absolute).
* Table: ``|T_hi + T_lo - 2**(j/N)| <= u |T_lo| + 2**-189 <= 2**-106 T_hi``.
* Reconstruction: ``T_hi + lo`` stands for ``(T_hi + T_lo)(1 + q)``; it differs by the rounding of
  ``T_hi q`` (``<= u |T_hi q| <= 2**-65.49 T_hi``), that of adding T_lo (``<= u (|T_hi q| + |T_lo|)
  <= 2**-65.49 T_hi``) and the omitted ``T_lo q`` (``<= u 2**-12.49 T_hi = 2**-65.49 T_hi``).  The
  value is at least ``T_hi (1 - 2**-12.4)``, so ``T_hi``-relative terms grow by at most 1.0002.
* Sum: ``2**-65.99 + 1.0002 (2**-65.99 + 3 * 2**-65.49 + 2**-106) <= 2**-63.35``.

``REL_ERROR = 2**-62`` leaves a margin of 2**1.35 (2.5x) over that; tests/test_exp64.py measures the
pair against mpmath at 200 bits (a separate checker) on adversarial and random inputs and re-adds the
terms above.  (The bound sets the cost of crmath's decision: about ``E 2**52`` of the elements, 0.3%,
are too near a rounding midpoint for the pair and go on to the double-double stage.)

Domain
------
:data:`DOMAIN` is ``[-707, 709]``: there ``e`` is in ``[-1020, 1022]`` (``k >= -707 * 2954.64 - 1``),
so ``2**e s`` is a normal float64 below ``2**1023``: scaling by ``2**e`` is exact, and rounding
``2**e (s + err)`` to float64 is rounding ``s + err`` (no subnormal spacing, no overflow).  NaN,
infinities, results near overflow (x > 709) and subnormal or zero results (x < -707) are outside:
:func:`within` is False there and callers take another path.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

__all__ = ["BLOCK", "DOMAIN", "LOG_NEWTON_ERROR", "REL_ERROR", "blocks", "parts", "within"]

REL_ERROR = 2.0**-62
"""Bound on the relative error of :func:`parts` on :data:`DOMAIN` (proof in the module docstring:
at most 2**-63.35)."""

LOG_NEWTON_ERROR = 2.0**-61.9
"""The absolute part of the bound ``2**-78 |hi| + LOG_NEWTON_ERROR`` of a float64 log / log1p from one Newton step
with :func:`log_newton` (proof at :func:`stabilitylab.numerics.crmath._log_float64`, which uses it as
``crmath.LOG64_ERROR``; the compiled kernel's float64 log takes it from here)."""

DOMAIN = (-707.0, 709.0)
"""Arguments :func:`parts` takes (both ends included)."""

BLOCK = 8192
"""Values per block: a block's float64 temporaries (64 KiB each) stay in L2 and below glibc's mmap
threshold, where numpy reuses its buffers cheaply (measured: 8192 the fastest of 2**11 to 2**15 per value)."""

_LOG2N = 11
_N = 1 << _LOG2N

_SHIFT = 1.5 * 2.0**52  # adding it rounds |y| < 2**51 to an integer, which its low bits then hold
_SHIFT_BITS = int(np.array(_SHIFT).view(np.int64))  # 0x4338000000000000: its low 51 bits are 0

# P(r) = (e**r - 1 - r) / r**2 to degree 3, highest first: 1/120, 1/24, 1/6, 1/2 (each rounded once)
_P = (1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5)


@functools.cache
def _constants() -> tuple:
    """(INV, C1, C2, T_hi, T_lo): INV = fl(N / ln 2); C1 = ln 2 / N rounded to 32 significant bits
    (ln 2 / N is in [2**-12, 2**-11)), C2 the float64 nearest ln 2 / N - C1; T_hi + T_lo = 2**(j/N),
    j = 0..N-1, T_hi the float64 nearest, T_lo the float64 nearest the rest (200-bit integers, ~3 ms)."""
    import mpmath

    ctx = mpmath.MPContext()  # private: mpmath.mp's precision is left alone
    ctx.prec = 200
    c = ctx.ln2 / _N
    c1 = ctx.ldexp(ctx.nint(ctx.ldexp(c, 43)), -43)
    # 2**(j/N) in fixed point with 200 fractional bits, t_j = t_(j-1) 2**(1/N): base rounded, each product
    # truncated, j 2**-199 relative in all (below 2**-189), far below the 2**-106 of the pair kept
    one = 1 << 200
    base = int(ctx.nint(ctx.ldexp(ctx.power(2, ctx.mpf(1) / _N), 200)))
    t, hi, lo = one, [], []
    for _ in range(_N):
        h = t / one  # (Python's int / int is correctly rounded: the float64 nearest)
        hi.append(h)
        lo.append((t - (int(h * 2.0**52) << 148)) / one)  # h in [1, 2): h 2**52 is an integer
        t = t * base >> 200
    t_hi, t_lo = np.array(hi), np.array(lo)
    return float(_N / ctx.ln2), float(c1), float(c - c1), t_hi, t_lo


def within(x: np.ndarray) -> np.ndarray:
    """Where float64 ``x`` is in :data:`DOMAIN` (False for NaN and infinities)."""
    return (x >= DOMAIN[0]) & (x <= DOMAIN[1])


def _block(x, s, err, e, k, r, q, j) -> None:
    """One block: ``x`` float64 in :data:`DOMAIN`; fills ``s``, ``err`` (float64) and ``e`` (int64), with
    ``k``, ``r``, ``q`` (float64) and ``j`` (int64) of the same length as scratch."""
    inv, c1, c2, t_hi, t_lo = _constants()
    np.multiply(x, inv, out=k)
    k += _SHIFT  # fl(fl(x INV) + 1.5 * 2**52): fl(x INV) rounded to an integer k (ties to even, as rint)
    bits = k.view(np.int64)  # = bits(1.5 * 2**52) + k: the integer k without a float -> int64 cast pass
    np.bitwise_and(bits, _N - 1, out=j)  # k mod N (the shifter's low 51 bits are 0)
    np.right_shift(bits, _LOG2N, out=e)
    e -= _SHIFT_BITS >> _LOG2N  # floor(k / N)
    k -= _SHIFT  # k, an integer held in float64 (|k| < 2**21), exactly
    np.multiply(k, c1, out=r)
    np.subtract(x, r, out=r)  # r1 = x - k C1, exact
    np.multiply(k, c2, out=q)
    np.subtract(r, q, out=r)  # r = fl(r1 - fl(k C2))
    np.multiply(r, _P[0], out=q)  # Horner: h = P(r)
    for c in _P[1:-1]:
        q += c
        q *= r
    q += _P[-1]
    q *= r
    q *= r  # w = fl(r fl(r h))
    q += r  # q = fl(r + w) ~ e**r - 1
    np.take(t_hi, j, out=k, mode="wrap")  # (0 <= j < N: "wrap" changes nothing, but spares the copy through a
    np.take(t_lo, j, out=r, mode="wrap")  # buffer that mode="raise" makes with out=: ~0.9 ns a value each)
    np.multiply(k, q, out=q)
    q += r  # lo = fl(fl(T_hi q) + T_lo)
    np.add(k, q, out=s)  # s = fl(T_hi + lo)
    np.subtract(k, s, out=err)
    err += q  # err = (T_hi - s) + lo, exact (Fast2Sum)


def blocks(x: np.ndarray) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """``(start, stop, s, err, e)`` for each block ``x[start:stop]`` of :data:`BLOCK` values of float64 ``x``
    (1-d, every element in :data:`DOMAIN`), as :func:`parts` defines them; the three arrays are buffers
    reused by the next block (use them, or copy them, before asking for it): a caller that finishes
    each block at once works on cache-resident data."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    b = min(BLOCK, n)
    s, err, e = np.empty(b), np.empty(b), np.empty(b, dtype=np.int64)
    k, r, q, j = np.empty(b), np.empty(b), np.empty(b), np.empty(b, dtype=np.int64)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        m = stop - start
        if m < b:
            s, err, e, k, r, q, j = (a[:m] for a in (s, err, e, k, r, q, j))
        _block(x[start:stop], s, err, e, k, r, q, j)
        yield start, stop, s, err, e


def parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(s, err, e)`` for float64 ``x`` (1-d, every element in :data:`DOMAIN`: see :func:`within`):
    ``e**x = (s + err) 2**e (1 + d)``, ``|d| <= REL_ERROR``; s and err float64 with ``s = fl(s + err)``,
    ``1 - 2**-12.5 <= s < 2``, e int64 with ``2**e s`` a normal float64."""
    x = np.asarray(x, dtype=np.float64)
    s, err, e = np.empty(x.size), np.empty(x.size), np.empty(x.size, dtype=np.int64)
    for start, stop, bs, berr, be in blocks(x):
        s[start:stop], err[start:stop], e[start:stop] = bs, berr, be
    return s, err, e


def pow2(e: np.ndarray) -> np.ndarray:
    """2**e as float64 for int64 ``e`` in [-1022, 1023] (the exponent field: exact, no ldexp)."""
    return ((e + 1023) << 52).view(np.float64)


def log_newton(a: np.ndarray, al: np.ndarray | None, y0: np.ndarray) -> np.ndarray:
    """``c`` with ``y0 + c`` one Newton step on ``e**y = a + al`` from ``y0``, in float64 arithmetic with
    :func:`parts`' ``e**-y0 = (s + err) 2**e``: ``W = s 2**e``, ``F = err 2**e``, ``a W = ph + pe``
    (Dekker), ``c = fl(fl(ph - 1) + fl(fl(pe + fl(a F)) + fl(al W)))`` (``al`` None: 0, the term left out).
    The error of c is stated where it is used, with its bounds on ``a``, ``al`` and ``y0``:
    :func:`stabilitylab.numerics.crmath._log_float64` and :mod:`stabilitylab.numerics.expsum64` (step 6)."""
    from .doubledouble import two_prod

    s, err, e = parts(-y0)
    p2 = pow2(e)
    del e
    W = s * p2
    ph, pe = two_prod(a, W)
    rest = pe + a * (err * p2)
    if al is not None:
        rest += al * W
    return (ph - 1.0) + rest
