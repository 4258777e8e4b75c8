"""Independent float32 threshold scanner for stabilitylab (a deliberately plain checker).

Nothing here imports or reuses code from the ``stabilitylab`` package: the simulator, the exact
references and the scan are written from the spec alone, so a test can compare the two.

ARITHMETIC MODEL
    Every operation (+ - * /, exp, log, log1p) is the real operation on float32 operands,
    correctly rounded to float32 (round to nearest, ties to even; overflow -> inf; IEEE specials:
    log(0) = -inf, 0 * inf = NaN, inf / inf = NaN, inf - inf = NaN). max and comparisons exact.
    * + - * / : numpy's own float32 ufuncs (IEEE-754 binary32, correctly rounded; numpy does not
      switch on flush-to-zero, so subnormals are kept -- ``selfcheck`` verifies this).
    * exp, log, log1p: computed in float64 on the (exact) float64 value of the float32 operand,
      then rounded to float32 by a float64 -> float32 cast. Double rounding can only be wrong if the
      float64 result lies within its own error of a float32 rounding midpoint. numpy's float64
      exp/log/log1p err by < 1 ulp (measured by ``selfcheck`` against mpmath); every element whose
      float64 value lies within K_ULPS = 64 float64 ulps of a float32 midpoint (normal or subnormal
      spacing, and the overflow boundary 2^128 - 2^103) is recomputed with mpmath at 300 bits and
      rounded to float32 with exact integer rounding (``mp_to_f32``).

STATUS RULE (tol = sqrt(2^-24) = 2^-12)
    r = the exact real loss of the same float32 inputs, cr = r correctly rounded to float32.
    v is NOT OK  iff  v != cr (numerically: -0 == 0, NaN equals nothing) and
                      (v is NaN or +-inf or v == 0 or |v - r| / |r| > tol).
    first_inaccurate = smallest parameter at which v is not ok; first_failure = smallest parameter
    at which v is inf or NaN; None if none up to float32 max.
    The reference r is evaluated in float64 from softplus / sigmoid formulas (relative error below
    8 float64 ulps < 2^-49: one < 1 ulp exp, then log1p or a few adds/divides; see ``_ref64``). Its
    float32 rounding is recomputed with mpmath when the float64 value is within K_ULPS ulps of a
    float32 midpoint, and the test |v - r| > tol |r| is recomputed with mpmath whenever
    | |v - r| - tol |r| | is within 2^-40 |r| (the float64 error of that comparison is < 2^-47 |r|).
    Statuses are decided per element; a per-chunk memo only avoids recomputing the same exp/log
    of the same operands (e.g. exp(-d) shared by all methods and families).

WHAT IS SCANNED
    The parameter d (or z) runs over every float32 value >= 0: bit patterns 0 .. 0x7f7fffff.
    By default every float32 value in [1, 104) is evaluated (bit patterns 0x3f800000 .. 0x42cfffff,
    55.6 million values per family), in chunks. The two other sub-ranges are argued below, and
    ``check_arguments`` spot-checks each argument's conclusion (d = 0, subnormals, 2^14 random
    values of [0, 1), sample points of the tail). ``--full`` scans every value 0 .. 0x7f7fffff
    instead, arguing nothing (slow: minutes per family).

SKIPPED RANGE 1: 0 <= d < 1 (all six families): every method's relative error is <= 17u + O(u^2)
    (u = 2^-24), far below tol = 4096u, and v is finite and nonzero. Forward error analysis:
    each rounded operation returns exact * (1 + delta), |delta| <= u, because every intermediate
    below lies in [1/16, 4] in magnitude (or is exactly 0, 1, d or eps) -- no overflow, no
    underflow. A relative error a on the operand of f becomes <= kappa a on f, kappa = sup |x f'(x) / f(x)|:
    exp(x), |x| <= 1.4: kappa <= 1.4; log x for x in [0.26, 0.74] or [1.36, 2]: kappa = 1/|log x|
    <= 3.4 (|log x| >= 0.30); log x for x in [0.26, 0.5]: kappa <= 1/ln 2 < 1.45; log1p x, x > 0:
    kappa = x / ((1 + x) log1p x) <= 1; sums of positives: <= 1; products/quotients add errors.
    E- = fl(exp(-d)) in [0.36, 1] and E+ = fl(exp(d)) in [1, 2.72], each rel. error <= u.
    Each method evaluated in exact arithmetic gives exactly r (clip_add: r + its eps bias, below), so
    bounding the relative error of v against its exact-arithmetic value bounds it against r.
    * softmax_ce (all three families): z = [0, -d] exactly (overflow: m = d; the others: m = 0).
      s = fl(1 + E-) <= 1.5u (E-'s share of the sum is <= 1/2), s in [1.36, 2].
      naive (overflow, x = [d, 0]): fl(E+ + 1) <= 2u, q = fl(E+ / that) <= 4u, q in [0.5, 0.74],
        v = -fl(log q) <= 3.4 * 4u + u < 15u.
      shifted, and naive of underflow/confident (x = z): q = fl(1 / s) <= 2.5u or fl(E- / s) <= 3.5u,
        q in [0.26, 0.74], v <= 3.4 * 3.5u + u < 13u.
      log_softmax: fl(log s) <= 3.4 * 1.5u + u < 6.1u; minus z_y = 0 exact, or plus d (positive
        summands) <= 7.1u.
      log_softmax_log1p: k = 0 (first on ties at d = 0), e = [0, E-], s = E- exactly,
        fl(log1p(E-)) <= 2u; minus z_y = 0, or plus d: <= 3u.
    * binary_ce (z = d): p = fl(1 / fl(1 + E-)) <= 2.5u, p in [0.5, 0.74]; 1 - p is exact
      (Sterbenz) but carries p's absolute error 2.5u * 0.74 on a value >= 0.26: <= 7.2u; lq =
      fl(log(1 - p)), 1 - p in [0.26, 0.5]: <= 1.45 * 7.2u + u < 11.5u; lp, lq > -100 so the
      clamps do nothing; t = (0 * lp) + lq = lq exactly (0 * lp = -0), v = -lq (exact softplus).
      logits: fl(d + fl(log1p(E-))) <= 3u.
    * epsilon_clip (x = [0, -d], y = 1): y_t = fl(E- / s) <= 3.5u, in [0.26, 0.5]. clip_add:
      y_t + eps = y_t (1 + eps / y_t), eps / y_t <= 1e-7 / 0.26 < 6.5u, so fl(y_t + eps) is within
      3.5u + 6.5u + u = 11u of the exact y_t*, v <= 1.45 * 11u + u < 17u. clip_max: max(y_t, eps) =
      y_t, v <= 1.45 * 3.5u + u < 6.1u. from_logits: as log_softmax_log1p, <= 3u.
    * gradient (x = [-d, 0], z = -d): q = fl(E- / fl(E- + 1)) <= 3.5u, q in [0.26, 0.5] (= the
      exact sigmoid(z) up to that error); q - 1 in [-0.74, -0.5]: absolute error <= 3.5u * 0.5
      on a value >= 0.5, plus rounding: <= 4.5u. ce_from_probs and ce_sigmoid (z >= 0 only at
      z = -0, where both branches give 1/2 exactly) are q - 1: <= 4.5u. ce_from_log_softmax: k = 1,
      e = [E-, 0], L = fl(fl(log1p(E-)) - z_0) = fl(fl(log1p(E-)) + d) <= 3u (at d = 0, x = [-0, 0]
      is a tie, k = 0, e = [0, 1], L = fl(log1p(1)) - 0: the same formula's value), L in
      [0.69, 1.32]; fl(exp(-L)) <= 1.32 * 3u + u < 5u, in [0.26, 0.5]; minus 1: <= 5u * 0.5 / 0.5
      + u = 6u. mse_sigmoid: (p - 1) <= 4.5u, times p: <= 9u, 1 - p in [0.5, 0.74]
      <= 3.5u * 0.5 / 0.5 + u = 4.5u, product <= 14.5u.
    The exact losses satisfy |r| >= 1/8 here, so v is nonzero and finite. Hence no d in [0, 1) is
    inaccurate or a failure. ``check_arguments`` asserts relative error <= 2^-19 (> 17u) at d = 0,
    subnormal d and 2^14 random d in [0, 1).
SKIPPED RANGE 2: d >= 104 up to float32 max (all six families).
    Facts: (F1) for t >= 104, e^-t <= e^-104 = 6.8e-46 < 2^-150 = 7.0e-46 (half the smallest
    subnormal) so exp(-t) rounds to 0; (F2) e^t > 2^128 so exp(t) = inf; (F3) softplus(d) =
    d + log1p(e^-d) with 0 < log1p(e^-d) < 2^-150 < ulp(d)/2 (ulp(d) >= 2^-17), so cr = d;
    (F4) 0 < log1p(e^-d) < 2^-150, so cr = 0; (F5) -1/(1+e^-d) in (-1, -1 + 2^-150): cr = -1;
    -e^-d/(1+e^-d)^3 in (-2^-150, 0): cr = -0.
    softmax_ce/overflow, x = [d, 0], y = 0, m = d, k = 0, z = [0, -d], cr = 0 (F4):
        naive: exp(d) = inf, s = inf + 1 = inf, inf/inf = NaN          -> not ok, non-finite
        shifted: e = [1, 0], s = 1, -log(1/1) = -0 == cr                  -> ok
        log_softmax: log(1 + 0) - 0 = 0 == cr                              -> ok
        log_softmax_log1p: e_k = 0, e1 = 0, log1p(0) - 0 = 0 == cr          -> ok
    softmax_ce/underflow, x = [0, -d], y = 1, m = 0, k = 0, z = [0, -d], cr = d (F3):
        naive = shifted: e = [1, 0], s = 1, -log(0/1) = inf                -> not ok, non-finite
        log_softmax: log(1) - (-d) = d == cr                               -> ok
        log_softmax_log1p: log1p(0) - (-d) = d == cr                       -> ok
    softmax_ce/confident, x = [0, -d], y = 0, cr = 0 (F4):
        naive = shifted: -log(1/1) = -0; log_softmax: log(1) - 0 = 0; log1p: log1p(0) - 0 = 0 -> ok
    binary_ce/saturation, z = d, cr = d (F3): exp(-z) = 0, p = 1/(1+0) = 1, log(p) = 0,
        1 - p = 0, log(0) = -inf:
        sigmoid_log: t = 0*0 + 1*(-inf) = -inf, v = inf                    -> not ok, non-finite
        sigmoid_log_clamped: lq = max(-inf, -100) = -100, t = 0 + -100, v = 100 != d, and
            |100 - d| / d >= 4/104 > tol                                   -> not ok, finite
        logits: (z - z*0) + log1p(0) = d == cr                             -> ok
    epsilon_clip/ceiling, x = [0, -d], y = 1, cr = d (F3): e = [1, 0], s = 1, y_t = 0/1 = 0:
        clip_add: -log(0 + eps) = -log(eps) = 16.118... (finite); clip_max: -log(max(0, eps)) the
            same; both != d and |v - d| / d > 0.8 > tol                     -> not ok, finite
        from_logits: log1p(0) - (-d) = d == cr                             -> ok
    gradient/vanishing, x = [-d, 0], label 0, z = -d, cr_ce = -1, cr_mse = -0 (F5):
        ce_from_probs: e = [0, 1], 0/(0+1) - 1 = -1 == cr                  -> ok
        ce_from_log_softmax: m = 0, k = 1, e = [0, 0] (e_k = 0), L = log1p(0) - (-d) = d,
            exp(-d) - 1 = 0 - 1 = -1 == cr                                 -> ok
        ce_sigmoid: z < 0, e = exp(-d) = 0, p = 0/(1+0) = 0, v = 0 - 1 = -1 == cr -> ok
        mse_sigmoid: ((0 - 1) * 0) * (1 - 0) = -0 == cr                      -> ok
    These tail statuses are the TAIL tables below; a threshold not found in the scan is 104.0
    (the first value of the tail) if the tail status is bad, else None. ``check_arguments``
    evaluates the simulator at sample tail points and asserts the listed statuses.

Run: python tests/independent/float32_scan.py [--all] [--full]  (prints JSON).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import mpmath
import numpy as np

F32 = np.float32
F64 = np.float64
TOL = 2.0**-12
K_ULPS = 64
ALL_MPMATH = False  # True: recompute every exp/log/log1p and reference rounding with mpmath (self-test)
MP_PREC = 300

LO_BITS = 0x3F800000  # 1.0: first scanned value (range 1 is [0, 1))
HI_BITS = 0x42D00000  # 104.0: first value of the argued tail (range 2)
MAX_BITS = 0x7F7FFFFF  # float32 max
CHUNK = 1 << 16

assert np.uint32(LO_BITS).view(F32) == F32(1.0)
assert np.uint32(HI_BITS).view(F32) == F32(104.0)


# --------------------------------------------------------------------------------------------
# exact rounding of a high-precision mpmath value to float32
# --------------------------------------------------------------------------------------------
def mp_to_f32(y) -> np.float32:
    """Round the mpmath number y (computed at MP_PREC bits) to float32: nearest, ties to even,
    subnormals with quantum 2^-149, overflow to inf at >= 2^128 - 2^103."""
    if mpmath.isnan(y):
        return F32("nan")
    if mpmath.isinf(y):
        return F32(float(y))
    if y == 0:
        return F32(0.0)
    sign = -1.0 if y < 0 else 1.0
    a = abs(y)
    _, e = mpmath.frexp(a)  # a = m 2^e, 1/2 <= m < 1, so a in [2^(e-1), 2^e)
    expo = max(int(e) - 1, -126)
    if expo > 127:
        return F32(sign * float("inf"))
    q = mpmath.ldexp(1, expo - 23)  # the float32 quantum at a
    n = a / q  # exact: division by a power of two
    whole = mpmath.floor(n)
    frac = n - whole
    if abs(frac - mpmath.mpf(0.5)) < mpmath.ldexp(1, -200):
        raise ArithmeticError(f"cannot round {y} to float32: too close to a midpoint")
    k = int(whole)
    if frac > 0.5:
        k += 1
    val = k * 2.0 ** (expo - 23)  # exact in float64 (k <= 2^24, expo - 23 >= -149)
    if val >= 2.0**128:
        return F32(sign * float("inf"))
    return F32(sign * val)


def _near_f32_midpoint(y: np.ndarray) -> np.ndarray:
    """Mask of float64 values within K_ULPS float64 ulps of a float32 rounding midpoint."""
    if ALL_MPMATH:
        return np.ones(y.shape, dtype=bool)
    u = y.view(np.uint64)
    # normal float32 range: the midpoint has the 29 low significand bits equal to 2^28
    flag = ((u - np.uint64(2**28 - K_ULPS)) & np.uint64(2**29 - 1)) <= np.uint64(2 * K_ULPS)
    # float32-subnormal range 0 < |y| < 2^-126: the quantum is 2^-149 (more bits are dropped)
    if np.fmin.reduce(np.abs(y), initial=np.inf) < 2.0**-126:  # fmin ignores NaN
        sub = np.flatnonzero((np.abs(y) < 2.0**-126) & (y != 0))
        t = np.abs(y[sub]) * 2.0**149  # exact; the float32 quantum becomes 1
        frac = t - np.floor(t)
        flag[sub] = np.abs(frac - 0.5) <= K_ULPS * np.spacing(t)
    return flag


# Per-chunk memo: the same transcendental of the same float32 operands (bit for bit) is computed
# once per chunk and shared by every method and family (e.g. exp(-d)). Only a cache: the result
# is the same as recomputing.
_MEMO: dict | None = None


def _memo_get(key, x: np.ndarray):
    if _MEMO is None:
        return None
    xb = x.view(np.uint32)
    for kb, res in _MEMO.get(key, ()):
        if kb.shape == xb.shape and kb[0] == xb[0] and kb[-1] == xb[-1] and np.array_equal(kb, xb):
            return res
    return None


def _memo_put(key, x: np.ndarray, res: np.ndarray):
    if _MEMO is not None:
        res.flags.writeable = False
        _MEMO.setdefault(key, []).append((x.view(np.uint32), res))


def _cr(np_fn, mp_name: str, x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=F32)
    out = _memo_get(np_fn.__name__, x)
    if out is not None:
        return out
    with np.errstate(all="ignore"):
        y = np_fn(x.astype(F64))
        out = y.astype(F32)
    idx = np.flatnonzero(_near_f32_midpoint(y))
    if idx.size:  # recompute with mpmath, once per distinct operand (bit pattern)
        ops, inverse = np.unique(x[idx].view(np.uint32), return_inverse=True)
        exact = np.array([_mp_op(mp_name, float(b)) for b in ops.view(F32)], dtype=F32)
        out[idx] = exact[inverse]
    _memo_put(np_fn.__name__, x, out)
    return out


@functools.lru_cache(maxsize=1 << 16)
def _mp_op(name: str, x: float) -> np.float32:
    """Correctly rounded float32 of exp/log/log1p of the float32 value x, via mpmath (cached:
    the same operand, e.g. s = 1 + 2^-23, recurs for many parameters)."""
    with mpmath.workprec(MP_PREC):
        return mp_to_f32(getattr(mpmath, name)(mpmath.mpf(x)))


def EXP(x):
    return _cr(np.exp, "exp", x)


def LOG(x):
    return _cr(np.log, "log", x)


def LOG1P(x):
    return _cr(np.log1p, "log1p", x)


# --------------------------------------------------------------------------------------------
# the methods, written literally from the spec (all arrays float32; numpy float32 ops round
# correctly). `errstate` silences the IEEE specials that the model wants.
# --------------------------------------------------------------------------------------------
ZERO, ONE = F32(0.0), F32(1.0)
EPS = F32(1e-7)


def _argmax2(x0, x1):
    """k = 1 where x1 > x0 (first index on ties), m = the max."""
    k1 = x1 > x0
    return k1, np.where(k1, x1, x0)


def naive_softmax_log(x0, x1, y):
    e0, e1 = EXP(x0), EXP(x1)
    s = e0 + e1
    return -LOG((e1 if y else e0) / s)


def shifted_softmax_log(x0, x1, y):
    _, m = _argmax2(x0, x1)
    return naive_softmax_log(x0 - m, x1 - m, y)


def log_softmax(x0, x1, y):
    _, m = _argmax2(x0, x1)
    z0, z1 = x0 - m, x1 - m
    s = EXP(z0) + EXP(z1)
    return LOG(s) - (z1 if y else z0)


def log_softmax_log1p(x0, x1, y):
    k1, m = _argmax2(x0, x1)
    z0, z1 = x0 - m, x1 - m
    e0 = np.where(k1, EXP(z0), ZERO)  # e_k = 0 for k = index of the max
    e1 = np.where(k1, ZERO, EXP(z1))
    s = e0 + e1
    return LOG1P(s) - (z1 if y else z0)


def sigmoid_log(z, clamp=False):
    y, one_minus_y = F32(0.0), F32(1.0)
    e = EXP(-z)
    p = ONE / (ONE + e)
    lp = LOG(p)
    lq = LOG(ONE - p)
    if clamp:
        lp = np.maximum(lp, F32(-100.0))
        lq = np.maximum(lq, F32(-100.0))
    t = (y * lp) + (one_minus_y * lq)
    return -t


def bce_logits(z):
    y = F32(0.0)
    return (np.maximum(z, ZERO) - z * y) + LOG1P(EXP(-np.abs(z)))


def clip_add(x0, x1):  # label 1, shifted probabilities
    _, m = _argmax2(x0, x1)
    e0, e1 = EXP(x0 - m), EXP(x1 - m)
    yt = e1 / (e0 + e1)
    return -LOG(yt + EPS)


def clip_max(x0, x1):
    _, m = _argmax2(x0, x1)
    e0, e1 = EXP(x0 - m), EXP(x1 - m)
    yt = e1 / (e0 + e1)
    return -LOG(np.maximum(yt, EPS))


def ce_from_probs(x0, x1):
    e0, e1 = EXP(x0), EXP(x1)
    return e0 / (e0 + e1) - ONE


def ce_from_log_softmax(x0, x1):
    L = log_softmax_log1p(x0, x1, 0)
    return EXP(-L) - ONE


def _stable_sigmoid(z):
    e = EXP(-np.abs(z))
    return np.where(z >= 0, ONE / (ONE + e), e / (ONE + e))


def ce_sigmoid(x0, x1):
    return _stable_sigmoid(x0 - x1) - ONE


def mse_sigmoid(x0, x1):
    p = _stable_sigmoid(x0 - x1)
    return ((p - ONE) * p) * (ONE - p)


# --------------------------------------------------------------------------------------------
# exact references: float64 evaluation (error < 2^-47 relative) and mpmath for re-checks
# --------------------------------------------------------------------------------------------
def _ref64(kind, d32):
    """r for parameter d (exact float32 inputs), in float64.
    softplus_neg: log1p(e^-d); softplus: log1p(e^d) = d + log1p(e^-d);
    grad_ce: sigmoid(-d) - 1 = -1/(1 + e^-d); grad_mse: -e^-d / (1 + e^-d)^3.
    Each is one exp (< 1 ulp), then log1p (< 1 ulp, and log1p damps the relative error of its
    argument) or one add/divide/cube: relative error < 8 float64 ulps < 2^-49."""
    d = d32.astype(F64)
    with np.errstate(all="ignore"):
        em = np.exp(-d)
        if kind == "softplus_neg":
            return np.log1p(em)
        if kind == "softplus":
            return d + np.log1p(em)
        if kind == "grad_ce":
            return -1.0 / (1.0 + em)
        if kind == "grad_mse":
            return -em / ((1.0 + em) * (1.0 + em) * (1.0 + em))
    raise ValueError(kind)


def _ref_mp(kind, d: float):
    d = mpmath.mpf(d)
    em = mpmath.exp(-d)
    if kind == "softplus_neg":
        return mpmath.log1p(em)
    if kind == "softplus":
        return d + mpmath.log1p(em)
    if kind == "grad_ce":
        return -1 / (1 + em)
    if kind == "grad_mse":
        return -em / (1 + em) ** 3
    raise ValueError(kind)


# --------------------------------------------------------------------------------------------
# families
# --------------------------------------------------------------------------------------------
def _softmax_family(make_x, y):
    def mk(fn):
        return lambda d: fn(*make_x(d), y)

    return {
        "naive_softmax_log": mk(naive_softmax_log),
        "shifted_softmax_log": mk(shifted_softmax_log),
        "log_softmax": mk(log_softmax),
        "log_softmax_log1p": mk(log_softmax_log1p),
    }


def _zeros(d):
    return np.zeros_like(d)


def _x_d_0(d):
    return d, _zeros(d)


def _x_0_negd(d):
    return _zeros(d), -d


def _x_negd_0(d):
    return -d, _zeros(d)


NOT_OK, FAIL, OK = (True, False), (True, True), (False, False)  # tail (not ok, non-finite)

FAMILIES = {
    "softmax_ce/overflow": {
        "ref": "softplus_neg",
        "methods": _softmax_family(_x_d_0, 0),
        "tail": {"naive_softmax_log": FAIL, "shifted_softmax_log": OK, "log_softmax": OK, "log_softmax_log1p": OK},
    },
    "softmax_ce/underflow": {
        "ref": "softplus",
        "methods": _softmax_family(_x_0_negd, 1),
        "tail": {"naive_softmax_log": FAIL, "shifted_softmax_log": FAIL, "log_softmax": OK, "log_softmax_log1p": OK},
    },
    "softmax_ce/confident": {
        "ref": "softplus_neg",
        "methods": _softmax_family(_x_0_negd, 0),
        "tail": {"naive_softmax_log": OK, "shifted_softmax_log": OK, "log_softmax": OK, "log_softmax_log1p": OK},
    },
    "binary_ce/saturation": {
        "ref": "softplus",
        "methods": {
            "sigmoid_log": lambda z: sigmoid_log(z),
            "sigmoid_log_clamped": lambda z: sigmoid_log(z, clamp=True),
            "logits": bce_logits,
        },
        "tail": {"sigmoid_log": FAIL, "sigmoid_log_clamped": NOT_OK, "logits": OK},
    },
    "epsilon_clip/ceiling": {
        "ref": "softplus",
        "methods": {
            "clip_add": lambda d: clip_add(*_x_0_negd(d)),
            "clip_max": lambda d: clip_max(*_x_0_negd(d)),
            "from_logits": lambda d: log_softmax_log1p(*_x_0_negd(d), 1),
        },
        "tail": {"clip_add": NOT_OK, "clip_max": NOT_OK, "from_logits": OK},
    },
    "gradient/vanishing": {
        "ref": {"ce_from_probs": "grad_ce", "ce_from_log_softmax": "grad_ce", "ce_sigmoid": "grad_ce",
                "mse_sigmoid": "grad_mse"},
        "methods": {
            "ce_from_probs": lambda d: ce_from_probs(*_x_negd_0(d)),
            "ce_from_log_softmax": lambda d: ce_from_log_softmax(*_x_negd_0(d)),
            "ce_sigmoid": lambda d: ce_sigmoid(*_x_negd_0(d)),
            "mse_sigmoid": lambda d: mse_sigmoid(*_x_negd_0(d)),
        },
        "tail": {"ce_from_probs": OK, "ce_from_log_softmax": OK, "ce_sigmoid": OK, "mse_sigmoid": OK},
    },
}
TEST_FAMILIES = ["softmax_ce/overflow", "softmax_ce/underflow", "softmax_ce/confident", "binary_ce/saturation"]


def _ref_kind(family, method):
    ref = FAMILIES[family]["ref"]
    return ref[method] if isinstance(ref, dict) else ref


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------
class Reference:
    """r (float64), cr = fl32(r) (exact), tol |r| and 2^-28 tol |r| for one chunk of parameters."""

    def __init__(self, kind, d32):
        self.kind, self.d = kind, d32
        self.r = _ref64(kind, d32)
        with np.errstate(all="ignore"):
            self.cr = self.r.astype(F32)
        for i in np.flatnonzero(_near_f32_midpoint(self.r)):
            with mpmath.workprec(MP_PREC):
                self.cr[i] = mp_to_f32(_ref_mp(kind, float(d32[i])))
        self.thr = TOL * np.abs(self.r)
        self.near = self.thr * 2.0**-28


def _mp_not_ok(v: np.float32, kind, d: float) -> bool:
    with mpmath.workprec(MP_PREC):
        r = _ref_mp(kind, d)
        cr = mp_to_f32(r)
        if v == cr:
            return False
        if not np.isfinite(v) or v == 0:
            return True
        diff, thr = abs(mpmath.mpf(float(v)) - r), TOL * abs(r)
        if abs(diff - thr) < mpmath.ldexp(abs(r), -200):
            raise ArithmeticError(f"|v - r| / |r| too close to tol at d = {d!r}")
        return bool(diff > thr)


def status(v: np.ndarray, ref: Reference) -> np.ndarray:
    """not_ok boolean array for computed values v against the reference.
    v != cr and: NaN (gap is NaN, caught by v != v), inf (gap = inf > 0), 0 (gap = (1 - tol)|r| > 0;
    r = 0 cannot occur with v == 0 != cr), or |v - r| > tol |r| (gap > 0)."""
    neq = v != ref.cr
    if not neq.any():
        return neq
    with np.errstate(all="ignore"):
        gap = np.abs(v.astype(F64) - ref.r) - ref.thr
    not_ok = neq & ((gap > 0) | (v != v))
    # re-check, exactly, the values whose comparison is within 2^-40 |r| of tol (finite, nonzero)
    for i in np.flatnonzero(neq & (np.abs(gap) <= ref.near)):
        not_ok[i] = _mp_not_ok(v[i], ref.kind, float(ref.d[i]))
    return not_ok


# --------------------------------------------------------------------------------------------
# arguments: spot checks of skipped ranges 1 and 2
# --------------------------------------------------------------------------------------------
def _eval(family, method, d):
    d = np.asarray(d, dtype=F32)
    with np.errstate(all="ignore"):
        return FAMILIES[family]["methods"][method](d)


def check_arguments(family, seed=0):
    """Spot-check the conclusions of the two skip arguments (module docstring) for one family."""
    fam = FAMILIES[family]
    rng = np.random.default_rng(seed)
    small = np.concatenate([
        np.array([0.0, 1e-45, 2.0**-149, 2.0**-126, 1e-30, 2.0**-25, 0.5, np.nextafter(F32(1), F32(0))], dtype=F32),
        rng.uniform(0, 1, 1 << 13).astype(F32),
        np.exp2(rng.uniform(-149, 0, 1 << 13)).astype(F32),
    ])
    small = small[(small >= 0) & (small < 1)]
    tail = np.array([104.0, np.nextafter(F32(104), F32(200)), 105, 150, 1e3, 88e4, 1e10, 1e20, 1e30,
                     3e38, np.finfo(F32).max], dtype=F32)
    for method in fam["methods"]:
        kind = _ref_kind(family, method)
        # range 1: finite, nonzero, relative error <= 2^-19 (the argument gives <= 17u < 2^-19.9)
        v = _eval(family, method, small)
        r = _ref64(kind, small)
        assert np.all(np.isfinite(v) & (v != 0)), (family, method)
        rel = np.abs(v.astype(F64) - r) / np.abs(r)
        assert rel.max() <= 2.0**-19, (family, method, small[np.argmax(rel)], rel.max())
        # range 2: the listed tail status at sample points
        want_bad, want_fail = fam["tail"][method]
        v = _eval(family, method, tail)
        not_ok, nonfinite = status(v, Reference(kind, tail)), ~np.isfinite(v)
        assert np.all(not_ok == want_bad) and np.all(nonfinite == want_fail), (family, method, v, not_ok)


# --------------------------------------------------------------------------------------------
# the scan
# --------------------------------------------------------------------------------------------
def scan_many(families, full=False, chunk=CHUNK, progress=False):
    """{family: {method: (first_inaccurate, first_failure)}}: float32 values as Python floats (exact)
    or None. One pass over the parameter for all the families (they share exps via the memo).
    full=True scans every value 0 .. float32 max instead of relying on the two arguments."""
    global _MEMO
    for family in families:
        check_arguments(family)
    jobs = [(f, m) for f in families for m in FAMILIES[f]["methods"]]
    found = {job: [None, None] for job in jobs}
    t0 = time.perf_counter()
    for a, b in [(0, MAX_BITS + 1)] if full else [(LO_BITS, HI_BITS)]:
        for start in range(a, b, chunk):
            active = [job for job in jobs if found[job][1] is None]  # first_failure >= first_inaccurate
            if not active:
                break
            d = np.arange(start, min(start + chunk, b), dtype=np.uint32).view(F32)
            _MEMO, refs, statuses = {}, {}, []
            try:
                for job in active:
                    family, method = job
                    with np.errstate(all="ignore"):
                        v = FAMILIES[family]["methods"][method](d)
                    if found[job][0] is None:
                        kind = _ref_kind(family, method)
                        if kind not in refs:
                            refs[kind] = Reference(kind, d)
                        vb = v.view(np.uint32)
                        for k, kb, st in statuses:  # same values, same reference: same status
                            if k == kind and kb[0] == vb[0] and np.array_equal(kb, vb):
                                not_ok = st
                                break
                        else:
                            not_ok = status(v, refs[kind])
                            statuses.append((kind, vb, not_ok))
                        if not_ok.any():
                            found[job][0] = float(d[np.argmax(not_ok)])
                    if not np.isfinite(v).all():
                        found[job][1] = float(d[np.argmin(np.isfinite(v))])
            finally:
                _MEMO = None
            if progress and (start // chunk) % 1024 == 0:
                print(f"  d={float(d[0]):.4g} {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    # range 2 (d >= 104): the argued tail status (range 1 has none: all ok)
    tail_first = float(np.uint32(HI_BITS).view(F32))
    for job in jobs if not full else []:
        bad, fail = FAMILIES[job[0]]["tail"][job[1]]
        if found[job][0] is None and bad:
            found[job][0] = tail_first
        if found[job][1] is None and fail:
            found[job][1] = tail_first
    return {f: {m: tuple(found[(f, m)]) for m in FAMILIES[f]["methods"]} for f in families}


def scan(family, full=False, chunk=CHUNK, progress=False):
    """{method: (first_inaccurate, first_failure)} for one family (see scan_many)."""
    return scan_many([family], full=full, chunk=chunk, progress=progress)[family]


# --------------------------------------------------------------------------------------------
# self-check of the arithmetic model's building blocks
# --------------------------------------------------------------------------------------------
def selfcheck(n=2000, seed=0):
    """numpy float64 exp/log/log1p within 1 ulp (<< K_ULPS) of mpmath on random float32 operands;
    float64 -> float32 casts (incl. subnormals and overflow) equal mp_to_f32; float32 division
    keeps subnormals. Raises AssertionError on failure."""
    rng = np.random.default_rng(seed)
    cases = [
        (np.exp, mpmath.exp, rng.uniform(-104, 89, n)),
        (np.log, mpmath.log, np.exp(rng.uniform(-104, 2, n))),
        (np.log1p, mpmath.log1p, np.exp(rng.uniform(-104, 2, n))),
    ]
    with mpmath.workprec(MP_PREC):
        for np_fn, mp_fn, xs in cases:
            x = xs.astype(F32)
            x = x[x > 0]
            y = np_fn(x.astype(F64))
            for xi, yi in zip(x, y):
                t = mp_fn(mpmath.mpf(float(xi)))
                ulp = mpmath.mpf(float(np.spacing(abs(yi))))
                assert abs(mpmath.mpf(float(yi)) - t) <= ulp, (np_fn, xi)
        mid = float(2**128 - 2**103)  # overflow midpoint (an exact tie: not given to mp_to_f32)
        for y in np.concatenate([np.exp(rng.uniform(-110, 89, n)), [np.nextafter(mid, 0), np.nextafter(mid, 2 * mid)]]):
            with np.errstate(over="ignore"):
                a, b = F32(y), mp_to_f32(mpmath.mpf(float(y)))
            assert a == b, (y, a, b)
        assert EPS == mp_to_f32(mpmath.mpf(1) / 10**7)
    assert F32(2.0**-140) / F32(2.0**3) == F32(2.0**-143)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="also epsilon_clip/ceiling and gradient/vanishing")
    ap.add_argument("--full", action="store_true", help="scan every float32 value, arguing nothing (slow)")
    ap.add_argument("--family", action="append", help="scan only this family (repeatable)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    families = args.family or (list(FAMILIES) if args.all else TEST_FAMILIES)
    selfcheck()
    t0 = time.perf_counter()
    res = scan_many(families, full=args.full, progress=not args.quiet)
    out = {f: {m: {"first_inaccurate": a, "first_failure": b} for m, (a, b) in r.items()} for f, r in res.items()}
    if not args.quiet:
        print(f"total {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
