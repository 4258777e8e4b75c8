"""``g + log1p(sum_i e**d_i)`` per row in float64 arithmetic with a proven relative error bound (no longdouble).

:func:`log1p_exp_sum` is the float64 tier of softmax_ce's reference for float64 (``g = m - x_y``,
``d_i = x_i - m``, the max's own term left out): it returns ``(hi, lo, bound, handled)`` with
``|hi + lo - v| <= bound |v|`` per handled row, v the exact value, at about 2**-62 (x87's
``expl`` costs ~31 ns a value; this ~8 ns of :mod:`~stabilitylab.numerics.exp64` and a few passes).  It
decides what the outputs read of most rows; the caller recomputes the others with the longdouble
reference (:func:`stabilitylab.analysis.engine._classified`).

Inputs: ``d`` (rows, K) float64 with ``2 <= K <= 2**20``, every ``d_i <= 0`` finite and exact (the
caller's ``x_i - m``; :func:`stabilitylab.experiments.softmax_ce._differences_exact`), ``skip`` the column
per row left out of the sum (argmax), ``g >= 0`` exact.  A row is handled where ``d2``, its largest
``d_i`` other than ``skip``, is at least -600 (so ``S >= e**-600 > 2**-866``).

Proof (u = 2**-53, L = ceil(log2 K), S the exact sum, all terms ``t_i`` of it ``<= e**d2``)
------------------------------------------------------------------------------------------
1. **Terms.**  ``exp64.parts(max(d_i, -707))`` gives ``e**d_i = (s_i + err_i) 2**e_i (1 + delta_i)``,
   ``|delta_i| <= 2**-62``; ``T_i = s_i 2**e_i`` and ``F_i = err_i 2**e_i`` (scaling by a power of 2: exact
   but where F_i is subnormal, at most 2**-1075 each).  A clamped term (``d_i < -707``) counts
   ``e**-707`` instead of at most that: with the subnormal roundings at most ``2 K 2**-1020 <= 2**-100 S``.
   ``|err_i| <= ulp(s_i) / 2 <= 2**-53`` and ``s_i >= 1 - 2**-12.5``: ``|F_i| <= 2**-52.99 T_i``.
2. **Scale.**  ``E = floor(fl(d2 log2 e)) + 2``: fl(d2 log2 e) is within ``600 * 2**-52 < 2**-42`` of
   ``d2 log2 e``, so every ``T_i < 2**(E - 0.9)`` and ``S >= e**d2 >= 2**(E - 2.001)``.
3. **Split.**  ``C = 1.5 * 2**(E + L)``, ``Q = ulp(C) = 2**(E + L - 52)``; ``H_i = fl(fl(T_i + C) - C)`` is
   ``T_i`` rounded to a multiple of Q (``T_i + C`` stays in C's binade as ``T_i < 2**E <= 2**(E + L - 1)``;
   the subtraction is exact) and ``R_i = T_i - H_i`` is exact (``|R_i| <= Q / 2``; a multiple of ulp(T_i)
   with at most 53 bits, or ``T_i`` itself where ``H_i = 0``).  Each ``H_i`` is a multiple of Q of at most
   ``2**E = 2**(52 - L) Q``, so every partial sum of at most ``K <= 2**L`` of them is at most ``2**52 Q``:
   **A = sum H_i is exact in any order** (numpy's own).
4. **Low parts.**  ``R'_i = fl(R_i + F_i)`` (rounding ``<= u |R'_i|``), ``B`` their pairwise sum
   (``softmax_ce._tree_sum``: depth L, error ``<= 1.0001 L u sum |R'_i|``), and
   ``sum |R'_i| <= 1.0001 (K Q / 2 + sum |F_i|) <= 1.0001 (2**(2L - 50.99) + 2**-52.98) S``
   (``K Q / 2 <= 2**(E + 2L - 53)`` and step 2).
   So ``|A + B - S| <= rel_S S`` with
   ``rel_S = 2**-62 + 1.0002 (L + 1) u (2**(2L - 50.99) + 2**-52.98) + 2**-100`` (:func:`sum_bound`).
5. **Normalize.**  ``A >= S 2**-0.01 / 4 > |B|`` (for L <= 20), so Fast2Sum gives ``sigma + tau = A + B``
   exactly.
6. **log1p.**  ``y0 = np.log1p(sigma)``, within ``2**-44`` relative (:data:`crmath.WIDE_REL_ERROR`, the
   bound the project assumes of the C library's float64 functions).  One Newton step on
   ``e**y = 1 + S'`` (``S' = sigma + tau``): ``y1 = y0 + c``, ``c = (1 + S') e**-y0 - 1``.  With
   ``e**-y0 = (s + err) 2**e (1 + delta)`` (:mod:`exp64`, ``-y0`` in ``[-14.6, 0]``), ``1 + sigma = p + pl``
   (TwoSum), ``pl' = fl(pl + tau)`` (``<= 2**-104 (1 + S')``), ``W = s 2**e``,
   ``p W = ph + pe`` (Dekker's product, exact), ``c = fl(fl(ph - 1) + fl(fl(pe + fl(p fl(err 2**e)))
   + fl(pl' W)))``: ``ph - 1`` is exact (Sterbenz: ``ph`` is within 2**-39 of 1), the three small terms
   (each ``<= 2**-51``) carry at most 2**-102 of rounding, ``pl' err 2**e`` (omitted) is below 2**-106, the
   last addition ``<= u |c| <= 2**-92``; delta moves c by at most ``2**-61.99``.  Newton's own error is
   ``e**h - 1 - h <= 0.51 h**2`` with ``|h| = |log1p(S') - y0| <= 2**-40.2`` (y0 <= log1p(2**20 + 1) < 14):
   below 2**-81.4.  In all ``|y1 - log1p(S')| <= 2**-61.98`` (absolute), and
   ``|log1p(S') - log1p(S)| <= 1.0001 rel_S S / (1 + S) <= 1.0001 rel_S log1p(S)``.
7. **Add g.**  ``g + y0 = h1 + l1`` (TwoSum), ``l2 = fl(l1 + c)`` (``<= u |l2| <= 2**-106 v + 2**-92``),
   ``(hi, lo) = Fast2Sum(h1, l2)``.  So ``|hi + lo - v| <= (1.0001 rel_S + 2**-106) v + 2**-61.97``, and the
   returned bound is ``1.0001 rel_S + 2**-106 + 2**-61.97 / (hi (1 - 2**-50))`` (``v >= hi (1 - 2**-50)``).

For K = 10 the bound is about ``2**-62 (1 + 1 / v)``; tests/test_expsum64.py measures the value against
mpmath at 200 bits (a separate checker) on adversarial rows and checks the bound holds.
"""

from __future__ import annotations

import numpy as np

from . import exp64
from .crmath import WIDE_REL_ERROR
from .doubledouble import fast_two_sum, two_sum

__all__ = ["MAX_TERMS", "FLOOR", "LOG2E", "log1p_exp_sum", "finish", "sum_bound"]

MAX_TERMS = 2**20
"""Widest rows :func:`log1p_exp_sum` takes (the proof's step 5 needs L <= 20)."""

FLOOR = -600.0
"""Rows whose largest kept ``d_i`` is below this are not handled (S could be near float64's underflow)."""

_LOG1P_ERROR = WIDE_REL_ERROR["float64"]
assert _LOG1P_ERROR <= 2.0**-44  # (the proof's step 6)
_CLAMP = exp64.DOMAIN[0]


def _depth(k: int) -> int:
    return max(int(k) - 1, 1).bit_length()


def sum_bound(k: int) -> float:
    """rel_S of the module's step 4 for rows of ``k`` terms (``L = ceil(log2 k)``)."""
    L = _depth(k)
    return 2.0**-62 + 1.0002 * (L + 1) * 2.0**-53 * (2.0 ** (2 * L - 50.99) + 2.0**-52.98) + 2.0**-100


def _row_max_skipping(d: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """Per row, the largest d other than column ``skip`` (-inf for K = 1)."""
    rows, k = d.shape
    if k <= 16:
        out = np.full(rows, -np.inf)
        for j in range(k):
            np.maximum(out, np.where(skip == j, -np.inf, d[:, j]), out=out)
        return out
    dd = d.copy()
    np.put(dd, np.arange(rows) * k + skip, -np.inf)
    return dd.max(axis=1)


def _sums(d: np.ndarray, skip: np.ndarray, C: np.ndarray, tree_sum) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of the module's steps 1-4 on a block of rows (C = 1.5 * 2**(E + L) per row)."""
    rows, k = d.shape
    s, err, e = exp64.parts(np.maximum(d, _CLAMP).ravel())
    p2 = exp64.pow2(e)
    del e
    T = s
    T *= p2  # T_i = s_i 2**e_i
    F = err
    F *= p2  # F_i = err_i 2**e_i
    del p2
    at = np.arange(rows) * k + skip
    T[at] = 0.0
    F[at] = 0.0
    T = T.reshape(rows, k)
    H = T + C[:, None]
    H -= C[:, None]  # H_i: T_i rounded to a multiple of Q = ulp(C)
    T -= H  # R_i = T_i - H_i, exact
    T += F.reshape(rows, k)  # R'_i
    if k <= 16:  # (any order is exact: column by column, numpy's reduction over a short last axis is slow)
        A = H[:, 0].copy()
        for j in range(1, k):
            A += H[:, j]
        return A, tree_sum(T)
    return H.sum(axis=1), tree_sum(T)  # A exact (step 3), B


LOG2E = float(np.log2(np.e))
"""``fl(log2(fl(e)))``, the scale's factor (step 2; the compiled kernel is given this value)."""


def log1p_exp_sum(d: np.ndarray, skip: np.ndarray, g: np.ndarray, tree_sum) -> tuple:
    """``(hi, lo, bound, handled)``: per row ``hi + lo`` within ``bound`` (relative) of
    ``g + log1p(sum_{i != skip} e**d_i)`` where ``handled`` (see the module: inputs and proof).
    ``tree_sum``: the pairwise sum of the proof's step 4 (depth ceil(log2 K), error at most that many u)."""
    rows, k = d.shape
    if not 2 <= k <= MAX_TERMS:
        raise ValueError(f"rows of 2 to {MAX_TERMS} terms, not {k}")
    step = max(1, (16 if k <= 16 else 1) * exp64.BLOCK // k)  # blocks of rows whose temporaries stay in L2
    # (one row where wider; 16 x more rows where short: fewer numpy calls a row, measured ~2 ns a value)
    L = _depth(k)
    d2 = _row_max_skipping(d, skip)
    A, B = np.empty(rows), np.empty(rows)
    with np.errstate(all="ignore"):
        E = np.floor(np.where(d2 >= FLOOR, d2, 0.0) * LOG2E).astype(np.int64) + 2
        C = np.ldexp(1.5, (E + L).astype(np.int32))
        for i in range(0, rows, step):
            A[i:i + step], B[i:i + step] = _sums(d[i:i + step], skip[i:i + step], C[i:i + step], tree_sum)
        del C
    return finish(A, B, d2, g, k)


def finish(A: np.ndarray, B: np.ndarray, d2: np.ndarray, g: np.ndarray, k: int) -> tuple:
    """:func:`log1p_exp_sum`'s result from the steps 1-4's sums ``A`` and ``B``, each row's largest kept ``d_i``
    ``d2`` and ``g`` (steps 5-7; the compiled kernel's ``ref_expsum64`` computes A, B, d2 and g as
    :func:`log1p_exp_sum` does, bit for bit)."""
    handled = d2 >= FLOOR
    with np.errstate(all="ignore"):
        sigma, tau = fast_two_sum(A, B)
        y0 = np.log1p(sigma)
        p, pl = two_sum(np.ones_like(sigma), sigma)
        pl += tau
        c = exp64.log_newton(p, pl, y0)  # (step 6)
        h1, l1 = two_sum(g, y0)
        l1 += c
        hi, lo = fast_two_sum(h1, l1)
        bound = 1.0001 * sum_bound(k) + 2.0**-106 + 2.0**-61.97 / (hi * (1 - 2.0**-50))
    handled &= np.isfinite(hi) & (hi > 0)
    return hi, lo, np.where(handled, bound, np.inf), handled
