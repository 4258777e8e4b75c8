"""log_softmax_log1p (and gradient's mse_sigmoid) on float32's subnormal staircase: whole ranges of d proven
correctly rounded at once.

softmax_ce's families ``overflow`` (logits [d, 0]) and ``confident`` (logits [0, -d]), label 0, in float32
without flush-to-zero.  For every float32 d > 0 with e**-d <= u**2 = 2**-48 (d >= 33.3), the kernel
``log_softmax_log1p`` computes exactly

    v(d) = cr(E(d)),   E(d) = e**-d,

a step function of d: the shift's maximum is entry 0 (d > 0), so z = [0, -d] (0 - d and -d - 0 are exact)
and z_y = 0; the max's own exp(0) = 1 is dropped; the sum 0 + s of s = cr(exp(-d)) is exact; log1p(s) = s
(the nearest float32 value to log1p(s), which lies in (s - s**2, s], is s itself for 0 <= s <= 2**-48:
s**2 is far below half the spacing at s); s - 0 = s.  The exact loss is L(d) = log1p(E(d)), with
E - E**2 / 2 < L < E.

The engine blames no value that is the correctly rounded exact loss (:func:`outcome.classify`: ``inaccurate``
and the lost statuses need v != cr(L)).  Where E(d) <= 2**-137 (d from ~94.97: the steps k 2**-149, k < 2**12,
whose relative error 1/(2k) can exceed 2**-12 at their edges, so the interval error bound proves nothing
there) v(d) = cr(L(d)) unless a rounding boundary of the subnormals, a midpoint b_j = (2j + 1) 2**-150, lies
in (L(d), E(d)] (L < E lie between the same two midpoints otherwise; below b_0 both round to 0).  E(d) >= b_j
exactly for d <= d_j = -ln b_j = 150 ln 2 - ln(2j + 1), where E(d) - b_j = b_j (e**(d_j - d) - 1) >=
b_j (d_j - d); and E(d) - L(d) < E(d)**2 / 2 < 2 b_j**2 while E(d) < b_{j+1} <= 3 b_j... so a float32 d below
d_j with d_j - d >= 8 b_j (< 2**-130) is safe.  Between 64 and 128 float32 values are the multiples of 2**-17,
so it suffices that every d_j (j < 2**12, all in [94.9, 104)) lies at least 8 b_j above the multiple of 2**-17
just below it.  :func:`_table` computes the d_j in float64 (error below 2**-44: 150 ln 2 as a float64
constant, one ulp of log, one subtraction, each at most 2**-46 here) and calls every multiple of 2**-17 within
2**-40 of a d_j unsafe (none is, for these j; the ranges containing one would simply not be proven).  A
range of float32 d in [D0, 128), D0 = d_{2**12 - 1} rounded up to float32, containing no unsafe value, is then
proven: every point's status is ok or range.

**gradient's mse_sigmoid** (family ``vanishing``: logits [-d, 0], target 1) has the same staircase, with the
same table: there z = -d - 0 = -d is exact, the stable sigmoid's e = cr(exp(-|z|)) = cr(E(d)) = s, 1 + s = 1
(s <= 2**-137, far below u / 2), s / 1 = s; then s - 1 = -1, -1 * s = -s, 1 - s = 1 and -s * 1 = -s, each
exact or correctly rounded to those values: v(d) = -cr(E(d)).  The exact gradient is G = -(1 - p)**2 p with
p = 1 / (1 + e**d) = E / (1 + E), so |G| = E / (1 + E)**3 and 0 < E - |G| < 3 E**2 < 27 b_j**2 while E <
b_{j+1} <= 3 b_j; a float32 d below d_j with d_j - d > 27 b_j (< 2**-132, still far below ``MARGIN``) has
E(d) - b_j >= b_j (d_j - d) > E - |G|, so |G| and E round alike, and cr(G) = -cr(|G|) = v (rounding to
nearest is symmetric; -0 == 0 where both round to 0).

The table of the d_j is a pure function of these constants (computed once per process, nothing to go stale).
``tests/test_log1p_staircase.py`` compares the proof with the engine's status at every float32 d of the span.
"""

from __future__ import annotations

import functools

import numpy as np

from ..numerics.formats import Format

__all__ = ["applies", "proven"]

# (experiment, family) -> the method on the staircase: softmax_ce's logits [d, 0] / [0, -d], label 0, and
# gradient's logits [-d, 0], target 1 (the MSE gradient through the sigmoid)
FAMILIES = {("softmax_ce", "overflow"): "log_softmax_log1p", ("softmax_ce", "confident"): "log_softmax_log1p",
            ("gradient", "vanishing"): "mse_sigmoid"}
MIDPOINTS = 2**12  # b_j for j < this: E(d) <= 2**-137 from D0 on
GRID = 2.0**-17  # the spacing of float32 values in [64, 128)
MARGIN = 2.0**-40  # far above the float64 error of d_j (2**-44) plus 8 b_j (< 2**-130)


def applies(experiment: str, family: str, method: str, fmt: Format, ftz: bool) -> bool:
    """Whether :func:`proven` holds for this method's search (float32, no flush-to-zero)."""
    return FAMILIES.get((experiment, family)) == method and fmt.name == "float32" and not ftz


@functools.lru_cache(maxsize=1)
def _table() -> tuple[float, np.ndarray]:
    """(D0, the unsafe float32 d values: multiples of 2**-17 within MARGIN of some computed d_j)."""
    j = np.arange(MIDPOINTS, dtype=np.float64)
    d = 150 * np.log(2.0) - np.log(2 * j + 1)  # d_j, decreasing in j, all in [94.9, 104)
    below = np.floor(d / GRID) * GRID  # (exact: d / 2**-17 and back are exact scalings)
    # the multiple of 2**-17 just below the true d_j is `below` or, where the computed d_j may have
    # crossed a multiple, the one above it: within MARGIN of the computed d_j, either is called unsafe
    unsafe = np.concatenate([below[d - below < MARGIN], (below + GRID)[below + GRID - d < MARGIN]])
    d0 = float(np.nextafter(np.float32(d[-1] + MARGIN), np.float32(np.inf)))
    return d0, np.sort(unsafe)


def proven(d_lo: np.ndarray, d_hi: np.ndarray) -> np.ndarray:
    """Per range [d_lo, d_hi] of float32 values: every point's value is the correctly rounded loss."""
    d0, unsafe = _table()
    d_lo, d_hi = np.asarray(d_lo, dtype=np.float64), np.asarray(d_hi, dtype=np.float64)
    ok = (d_lo >= d0) & (d_hi < 128.0) & (d_lo <= d_hi)
    if len(unsafe):  # no unsafe value inside
        ok &= np.searchsorted(unsafe, d_lo, side="left") == np.searchsorted(unsafe, d_hi, side="right")
    return ok
