"""Independent float64 check of a subnormal-range threshold (a deliberately plain checker).

Nothing here imports or reuses code from the ``stabilitylab`` package: the float64 model, the
exact reference and the scan are written from the spec alone, with Python floats and mpmath.

WHAT IS CHECKED
    softmax_ce/underflow in float64: logits [0, -d], label 1, exact loss r(d) = d + log1p(e^-d).
    Two formulations, each evaluated as IEEE float64 does (round to nearest, ties to even,
    gradual underflow; exp and log correctly rounded, as the spec says the tool models them):
        naive_softmax_log:   e = [exp(0), exp(-d)];  p = e[1] / (e[0] + e[1]);  v = -log(p)
        shifted_softmax_log: z = [0 - 0, -d - 0] = [0, -d];  the same with exp(z)
    Status (tol = sqrt(2^-53), the float64 value 1.0536712127723509e-08): v is NOT OK iff
    v != fl(r) and (v is NaN, +-inf or 0, or |v - r| / |r| > tol), decided exactly in mpmath.
    ``first_failure(formulation)`` is the smallest float64 d >= 0 that is not ok.

ARITHMETIC MODEL
    + and / are Python's float operations (IEEE binary64). exp and log are correctly rounded:
    the exact value (mpmath, MP_PREC bits) rounded to float64 by ``to_f64`` (exact integer
    rounding, subnormal quantum 2^-1074); math.exp / math.log are evaluated too and must agree
    (``libm_agrees``; a disagreement is counted, the correctly rounded value is used).

THE ARGUMENT (d < D_LOW = 733.25: no failure)
    Let c = fl(exp(-d)), so |c - e^-d| <= max(u e^-d, 2^-1075) (u = 2^-53; absolute below the
    normal range: a subnormal result is off by up to half its quantum).
    (a) d <= 708: c >= e^-708 (1 - u) > 2^-1022 is normal; s = fl(1 + c) in [1, 2], p = fl(c / s)
        >= 2^-1023.5 (gradual underflow: one more absolute 2^-1075 at most); so p = p*(1 + eps)
        with p* = e^-d / (1 + e^-d) and |eps| <= 3.01 u + 2^-1074 e^d (1 + e^-d) <= 2^-50.
        |log(1 + eps)| <= 1.01 |eps|, and r >= ln 2, so rel <= 1.01 |eps| / ln 2 + 1.01 u < 2^-48.
    (b) 708 < d < D_LOW: c < 2^-1021, so 1 + c rounds to 1 (c < u), s = 1 exactly and p = c / 1 = c
        exactly; p = p* (1 + eps) with |eps| <= max(u, 2^-1075 e^d) + 2 e^-d (the second term:
        p* = e^-d / (1 + e^-d), e^-d < 2^-1021). Then |v - r| <= 1.01 |eps| + u (r + 1.01 |eps|) and
        rel <= 1.01 |eps| / d + 1.01 u: increasing in d (e^d / d is), and below tol at D_LOW
        (``bound_below`` computes it: 9.6e-9 < 1.0537e-8).
    ``check_argument`` evaluates the bound at D_LOW and spot-checks rel <= bound at random d.

THE SCAN (D_LOW <= d <= the claimed threshold: every float64, by teeth)
    There e^-d < 2^-1057 is subnormal: c = k 2^-1074 is constant on each "tooth" of d between
    t_k = -ln((k + 1/2) 2^-1074) and t_(k-1) (about 2^27 float64 values each; t_k is never a
    float64, ln of a rational other than 1 being irrational), and so is v (the same operands
    everywhere after exp). r(d) increases, so f(d) = |v - r(d)| - tol r(d) decreases while
    v >= r and increases while v < r: on a tooth, the d that fail (f > 0) are a run at its start
    and/or a run at its end. The scan checks both end float64 values of every tooth, in
    ascending d; the first failing d is the start of the first tooth whose start fails, or, if
    an end fails first, the first failing d of that end run (found by bisection on f).
    About 7400 teeth lie between D_LOW and 733.3625.
"""

from __future__ import annotations

import functools
import math
import random
import struct

import mpmath

MP_PREC = 256  # bits: r(d) and its comparison with tol are decided far below any margin here
U = 2.0**-53
TOL = math.sqrt(U)  # the float64 value 1.0536712127723509e-08
QUANTUM = mpmath.ldexp(1, -1074)  # float64's smallest subnormal
D_LOW = 733.25
FORMULATIONS = ("naive_softmax_log", "shifted_softmax_log")

libm_disagreements = 0


def to_f64(x) -> float:
    """The mpmath number x rounded to float64: nearest, ties to even (exact integer rounding)."""
    if x == 0:
        return 0.0
    sign = -1.0 if x < 0 else 1.0
    a = abs(x)
    _, e = mpmath.frexp(a)  # a in [2^(e-1), 2^e)
    expo = max(int(e) - 1, -1022)
    if expo > 1023:
        return sign * math.inf
    q = mpmath.ldexp(1, expo - 52)  # the float64 quantum at a
    n = a / q  # exact (a power of two)
    whole = mpmath.floor(n)
    frac = n - whole
    if abs(frac - mpmath.mpf(0.5)) < mpmath.ldexp(1, -MP_PREC // 2):
        raise ArithmeticError(f"cannot round {x} to float64: too close to a midpoint")
    k = int(whole) + (1 if frac > 0.5 else 0)
    value = math.ldexp(k, expo - 52)  # exact: k <= 2^53
    return sign * value


@functools.lru_cache(maxsize=4096)  # (the two formulations share their exp and log operands)
def cr_exp(x: float) -> float:
    global libm_disagreements
    with mpmath.workprec(MP_PREC):
        y = to_f64(mpmath.exp(mpmath.mpf(x)))
    if math.exp(x) != y:
        libm_disagreements += 1
    return y


@functools.lru_cache(maxsize=4096)
def cr_log(x: float) -> float:
    global libm_disagreements
    if x == 0:
        return -math.inf
    with mpmath.workprec(MP_PREC):
        y = to_f64(mpmath.log(mpmath.mpf(x)))
    if math.log(x) != y:
        libm_disagreements += 1
    return y


def naive_softmax_log(d: float) -> float:
    e0, e1 = cr_exp(0.0), cr_exp(-d)
    return -cr_log(e1 / (e0 + e1))


def shifted_softmax_log(d: float) -> float:
    m = max(0.0, -d)
    z0, z1 = 0.0 - m, -d - m
    e0, e1 = cr_exp(z0), cr_exp(z1)
    return -cr_log(e1 / (e0 + e1))


KERNELS = {"naive_softmax_log": naive_softmax_log, "shifted_softmax_log": shifted_softmax_log}


@functools.lru_cache(maxsize=4096)
def reference(d: float):
    """r(d) = d + log1p(e^-d) at MP_PREC bits."""
    with mpmath.workprec(MP_PREC):
        return mpmath.mpf(d) + mpmath.log1p(mpmath.exp(-mpmath.mpf(d)))


def excess(v: float, d: float):
    """f = |v - r| - tol |r| (mpmath), for a finite non-zero v."""
    r = reference(d)
    return abs(mpmath.mpf(v) - r) - mpmath.mpf(TOL) * abs(r)


def not_ok(formulation: str, d: float) -> bool:
    v = KERNELS[formulation](d)
    with mpmath.workprec(MP_PREC):
        r = reference(d)
        if v == to_f64(r):
            return False
        if math.isnan(v) or math.isinf(v) or v == 0:
            return True
        return bool(excess(v, d) > 0)


def bound_below(d: float):
    """The argument's bound (b) on the relative error at d (708 < d): increasing in d."""
    with mpmath.workprec(MP_PREC):
        eps = max(mpmath.mpf(U), mpmath.ldexp(mpmath.exp(d), -1075)) + 2 * mpmath.exp(-d)
        return 1.01 * eps / d + 1.01 * U


def check_argument(samples: int = 300, seed: int = 0) -> None:
    """The bound at D_LOW is below tol; at random d below it the relative error is within the bound."""
    assert bound_below(D_LOW) < TOL, bound_below(D_LOW)
    rng = random.Random(seed)
    points = [rng.uniform(0, 708) for _ in range(samples // 3)] + [0.0, 708.0]
    points += [rng.uniform(708, D_LOW) for _ in range(samples - samples // 3)]
    for d in points:
        for f in FORMULATIONS:
            v = KERNELS[f](d)
            with mpmath.workprec(MP_PREC):
                r = reference(d)
                rel = abs(mpmath.mpf(v) - r) / r
                limit = bound_below(d) if d > 708 else mpmath.ldexp(1, -48)
                assert rel <= limit, (f, d, rel, limit)


@functools.lru_cache(maxsize=None)  # (both formulations walk the same teeth)
def _tooth_ends(k: int) -> tuple[float, float]:
    """The first and last float64 d with fl(exp(-d)) = k 2^-1074 (k >= 1)."""
    with mpmath.workprec(MP_PREC):
        lo = -mpmath.log((k + mpmath.mpf(0.5)) * QUANTUM)  # fl(exp(-d)) = k quantum for t_k < d < t_(k-1)
        hi = -mpmath.log((k - mpmath.mpf(0.5)) * QUANTUM)
        first, last = to_f64(lo), to_f64(hi)
        if first <= lo:
            first = math.nextafter(first, math.inf)
        if last >= hi:
            last = math.nextafter(last, -math.inf)
    return first, last


def _first_failing_in(formulation: str, a: float, b: float) -> float:
    """The first failing d in [a, b], given that b fails, a does not and the failures are a run
    at the end (bisection over the float64 values between)."""
    while math.nextafter(a, math.inf) < b:
        lo_bits = _bits(a)
        mid = _from_bits(lo_bits + (_bits(b) - lo_bits) // 2)
        if not_ok(formulation, mid):
            b = mid
        else:
            a = mid
    return b


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _from_bits(n: int) -> float:
    return struct.unpack("<d", struct.pack("<q", n))[0]


def first_failure(formulation: str, upto: float) -> float | None:
    """The first failing float64 d in [D_LOW, upto] (None if none), tooth by tooth; below
    D_LOW the argument holds (``check_argument``)."""
    with mpmath.workprec(MP_PREC):
        k = int(mpmath.nint(mpmath.exp(-mpmath.mpf(D_LOW)) / QUANTUM))  # the tooth of D_LOW (or the next)
        k_end = int(mpmath.nint(mpmath.exp(-mpmath.mpf(upto)) / QUANTUM))
    assert to_f64(mpmath.exp(-mpmath.mpf(D_LOW))) == math.ldexp(k, -1074)
    while k >= k_end:
        start, end = _tooth_ends(k)
        start = max(start, D_LOW)
        end = min(end, upto)
        if start <= end:
            if not_ok(formulation, start):
                return start
            if not_ok(formulation, end):
                return _first_failing_in(formulation, start, end)
        k -= 1
    return None


def check(formulation: str, claimed: float) -> dict:
    """Everything the test asserts, for one formulation and the tool's claimed threshold."""
    check_argument()
    below = math.nextafter(claimed, 0.0)
    return {
        "first_failure": first_failure(formulation, claimed),
        "claimed_fails": not_ok(formulation, claimed),
        "below_ok": not not_ok(formulation, below),
    }


if __name__ == "__main__":
    import json
    import sys

    claimed = float(sys.argv[1]) if len(sys.argv) > 1 else 733.362470436718
    print(json.dumps({f: check(f, claimed) for f in FORMULATIONS}, indent=2))
    print(f"libm disagreements with correct rounding: {libm_disagreements}", file=sys.stderr)
