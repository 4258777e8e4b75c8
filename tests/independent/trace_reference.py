"""Independent local references for a few aten ops: a deliberately plain checker for stabilitylab.tracing.

Nothing here imports stabilitylab or torch.  Each function takes nested Python lists of floats (the op's
inputs, already upcast exactly to float64) and returns the exact result rounded once to float64, computed
element by element with mpmath at 60 decimal digits (sums and dot products are formed exactly first, then
rounded once):

  exp(x), log1p(x)                       elementwise; log1p(-1) = -inf, exp overflow past float64 = inf
  sum_last(x)                            the sum over the last axis, keepdim
  matmul(a, b)                           batched (..., n, k) @ (..., k, m)
  softmax_last(x)                        exp(x_i - max) / sum_j exp(x_j - max) over the last axis
"""

from __future__ import annotations

import mpmath

mpmath.mp.dps = 60


def _f(x) -> float:
    """An mpmath value rounded to the nearest float64 (inf beyond float64's range)."""
    if mpmath.isinf(x):
        return float("inf") if x > 0 else float("-inf")
    return float(mpmath.mpf(x))


def _map(fn, x):
    return [_map(fn, v) for v in x] if isinstance(x, list) else fn(x)


def exp(x):
    return _map(lambda v: _f(mpmath.exp(mpmath.mpf(v))), x)


def log1p(x):
    def one(v):
        if v == -1.0:
            return float("-inf")
        return _f(mpmath.log1p(mpmath.mpf(v)))

    return _map(one, x)


def sum_last(x):
    if isinstance(x[0], list):
        return [sum_last(row) for row in x]
    return [_f(mpmath.fsum(mpmath.mpf(v) for v in x))]


def matmul(a, b):
    if isinstance(a[0][0], list):
        return [matmul(p, q) for p, q in zip(a, b)]
    cols = list(zip(*b))
    return [[_f(mpmath.fsum(mpmath.mpf(p) * mpmath.mpf(q) for p, q in zip(row, col))) for col in cols] for row in a]


def softmax_last(x):
    if isinstance(x[0], list):
        return [softmax_last(row) for row in x]
    top = max(x)
    e = [mpmath.exp(mpmath.mpf(v) - mpmath.mpf(top)) for v in x]
    total = mpmath.fsum(e)
    return [_f(v / total) for v in e]
