"""Independent exhaustive scan of softmax_ce thresholds under the policies bf16@fp32 and fp16@fp32
(a deliberately plain checker).

Nothing here imports or reuses code from the ``stabilitylab`` package: the arithmetic, the exact loss,
the rounding to the output format and the status rule are written from the spec alone.

POLICY MODEL (``STORAGE@float32``)
    The logits are values of the storage format (bfloat16 or float16).  Every operation is the real
    operation on float32 operands correctly rounded to float32; the loss is then rounded once to the
    storage format (the output format).
    * + - / : numpy's own float32 ufuncs (IEEE binary32, round to nearest even, subnormals kept).
    * exp, log, log1p: numpy's float64 function on the exact float64 value of the float32 operand,
      then cast to float32 (numpy's float64 -> float32 cast rounds correctly, subnormals and overflow
      included).  numpy's float64 functions err by less than one float64 ulp, so the double rounding
      can only go wrong where the float64 value lies within a float64 ulp of a float32 rounding
      midpoint: every element within 4 float64 ulps of one is recomputed with mpmath at 200 bits and
      placed on its side of the midpoint (exact: the midpoint is a float64 number).
    * the final rounding to bfloat16 / float16 (``round_to``): Python's exact power-of-two scaling and
      round-half-even on the float32 value (exact), overflow to inf.

THE KERNELS (two logits, label y; m = max, z = x - m; argmax is the first maximum)
    naive_softmax_log   -log(exp(x_y) / (exp(x_0) + exp(x_1)))
    shifted_softmax_log -log(exp(z_y) / (exp(z_0) + exp(z_1)))
    log_softmax         log(exp(z_0) + exp(z_1)) - z_y
    log_softmax_log1p   log1p(exp(z_j)) - z_y, j the class that is not the argmax
    Families: overflow x = [d, 0], y = 0 (exact loss log1p(e^-d)); underflow x = [0, -d], y = 1 (exact
    loss d + log1p(e^-d)); d runs over every storage value >= 0 up to the format's max.

STATUS RULE (tol = sqrt(u), u = 2^-p of the OUTPUT format: bfloat16 2^-4, float16 2^-5.5)
    r = exact loss (mpmath, 60 digits), cr = r rounded to the output format.  v is bad iff v != cr
    (numerically; NaN equals nothing) and (v is NaN or +-inf or 0 or |v - r| / |r| > tol), the
    relative error evaluated in mpmath.  cr is computed from the float64 nearest to r: wrong only
    if r lies within 2^-53 relative of a rounding midpoint of the output format, which for these
    transcendental values has never been observed (and would need r to agree with a midpoint to
    ~45 bits beyond the format's precision).
    first_inaccurate = the smallest d where v is bad; first_failure = the smallest d where v is inf
    or NaN (None: never up to max).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np

POLICIES = {  # name -> (storage grid, precision p of the output, min exponent, max)
    "bfloat16@float32": ("bfloat16", 8, -126, float((2 - 2.0**-7) * 2.0**127)),
    "float16@float32": ("float16", 11, -14, 65504.0),
}
FAMILIES = ("overflow", "underflow")
METHODS = ("naive_softmax_log", "shifted_softmax_log", "log_softmax", "log_softmax_log1p")


def grid(storage: str) -> np.ndarray:
    """Every storage value >= 0 and finite, ascending (as float32)."""
    if storage == "bfloat16":
        bits = np.arange(0, 0x7F80, dtype=np.uint32) << np.uint32(16)
        return bits.view(np.float32)
    return np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)


def _cr32(np_fn, mp_fn, x: np.ndarray) -> np.ndarray:
    """np_fn correctly rounded to float32 (see the module docstring)."""
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        y = np_fn(x64)
        r = y.astype(np.float32)
        up = np.nextafter(r, np.float32(np.inf))
        down = np.nextafter(r, np.float32(-np.inf))
        top = np.float64(2.0**128 - 2.0**103)  # the overflow threshold of float32
        mid_up = np.where(np.isinf(up), top, (r.astype(np.float64) + up.astype(np.float64)) / 2)
        mid_down = np.where(np.isinf(r), top, (r.astype(np.float64) + down.astype(np.float64)) / 2)
        slack = 4 * np.spacing(np.abs(y))
        near = np.isfinite(y) & ((np.abs(y - mid_up) <= slack) | (np.abs(y - mid_down) <= slack))
    for i in np.flatnonzero(near):
        with mpmath.workprec(200):
            v = mp_fn(mpmath.mpf(float(x64[i])))
            candidates = sorted({float(down[i]), float(r[i]), float(up[i])})
            best = candidates[0]
            for c in candidates[1:]:  # the last candidate whose lower midpoint v passes
                lower = (best + c) / 2 if math.isfinite(c) else float(top)
                if v > mpmath.mpf(lower):
                    best = c
            r[i] = np.float32(best)
    return r


def exp32(x):
    return _cr32(np.exp, mpmath.exp, x)


def log32(x):
    return _cr32(np.log, mpmath.log, x)


def log1p32(x):
    return _cr32(np.log1p, mpmath.log1p, x)


def kernel(method: str, x0: np.ndarray, x1: np.ndarray, y: int) -> np.ndarray:
    """The loss in float32 for logits [x0, x1] (float32 arrays of storage values) and label y."""
    with np.errstate(all="ignore"):
        if method == "naive_softmax_log":
            e0, e1 = exp32(x0), exp32(x1)
            return -log32((e0 if y == 0 else e1) / (e0 + e1))
        m = np.maximum(x0, x1)
        z0, z1 = x0 - m, x1 - m
        zy = z0 if y == 0 else z1
        e0, e1 = exp32(z0), exp32(z1)
        if method == "shifted_softmax_log":
            return -log32((e0 if y == 0 else e1) / (e0 + e1))
        if method == "log_softmax":
            return log32(e0 + e1) - zy
        other = np.where(x0 >= x1, e1, e0)  # argmax: the first maximum
        return log1p32(other) - zy


def round_to(v: np.ndarray, p: int, emin: int, top: float) -> np.ndarray:
    """float32 or float64 values rounded to a binary format of precision p, min exponent emin, max
    ``top``: round half to even on the format's grid (Python's round on an exact power-of-two
    scaling), beyond ``top`` inf."""
    out = np.empty(len(v), dtype=np.float64)
    for i, x in enumerate(np.asarray(v).astype(np.float64).tolist()):
        if not math.isfinite(x) or x == 0:
            out[i] = x
            continue
        e = max(math.frexp(abs(x))[1] - 1, emin)
        q = math.ldexp(1.0, e - (p - 1))
        r = round(abs(x) / q) * q
        out[i] = math.copysign(math.inf if r > top else r, x)
    return out


def exact_loss(family: str, d: float) -> mpmath.mpf:
    d = mpmath.mpf(d)
    base = mpmath.log1p(mpmath.exp(-d))
    return base if family == "overflow" else d + base


def scan(policy: str) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """{(family, method): (first_inaccurate, first_failure)} over the whole storage grid."""
    storage, p, emin, top = POLICIES[policy]
    d = grid(storage)
    tol = mpmath.sqrt(mpmath.mpf(2) ** -p)
    zeros = np.zeros_like(d)
    out = {}
    with mpmath.workdps(60):
        for family in FAMILIES:
            exact = [exact_loss(family, float(t)) for t in d.tolist()]
            cr = round_to(np.array([float(r) for r in exact], dtype=np.float64), p, emin, top)  # (see docstring)
            x0, x1, y = (d, zeros, 0) if family == "overflow" else (zeros, -d, 1)
            for method in METHODS:
                v = round_to(kernel(method, x0, x1, y), p, emin, top)
                with np.errstate(all="ignore"):
                    differs = ~((v == cr) | (np.isnan(v) & np.isnan(cr)))
                    lost = ~np.isfinite(v) | (v == 0)
                bad = differs & lost
                for i in np.flatnonzero(differs & ~lost):
                    r = exact[i]
                    bad[i] = abs(mpmath.mpf(float(v[i])) - r) > tol * abs(r)
                first_bad = np.flatnonzero(bad)
                first_fail = np.flatnonzero(~np.isfinite(v))
                out[(family, method)] = (float(d[first_bad[0]]) if len(first_bad) else None,
                                         float(d[first_fail[0]]) if len(first_fail) else None)
    return out


if __name__ == "__main__":
    for name in POLICIES:
        for key, value in scan(name).items():
            print(name, *key, *value)
