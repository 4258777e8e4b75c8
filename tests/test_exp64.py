"""numerics.exp64 (float64 exp as a pair with a proven bound) and crmath's float64 exp built on it.

The checker here is deliberately plain and shares nothing with the code under test: mpmath at 200 bits
for e**x, Python's float() of it (round to nearest even) for the correctly rounded float64, and a
midpoint test in exact mpmath arithmetic.  Inputs are adversarial (near rounding midpoints, near the
powers of two the decision treats specially, at the reduction's rint ties and table wrap, at the domain
ends, tiny and signed zero) and random; and crmath's result must be bit for bit its longdouble path's
(the one it replaced) on 10**6 random arguments.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from stabilitylab.numerics import crmath, exp64
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.numerics.wide import LONGDOUBLE_IS_WIDE

F64 = FORMATS["float64"]
CTX = mpmath.MPContext()
CTX.prec = 200


def true_exp(x: float):
    return CTX.exp(CTX.mpf(x))


def correctly_rounded(x: float) -> float:
    """e**x rounded to the nearest float64 (ties to even; an exact tie cannot happen for x != 0), from
    200 bits: the value must not lie within 2**-190 of a midpoint (else this checker could not tell)."""
    v = true_exp(x)
    if v < CTX.mpf(2) ** -1022:  # subnormal spacing 2**-1074 (float() would round to 53 bits first)
        return math.ldexp(int(CTX.nint(CTX.ldexp(v, 1074))), -1074)
    f = float(v)  # mpmath: round to nearest from the 200-bit value
    if f != 0 and math.isfinite(f):
        below, above = math.nextafter(f, -math.inf), math.nextafter(f, math.inf)
        for mid in ((CTX.mpf(f) + CTX.mpf(below)) / 2, (CTX.mpf(f) + CTX.mpf(above)) / 2):
            assert abs(v / mid - 1) > CTX.mpf(2) ** -190, x
    return f


def midpoint_distance(x: float) -> float:
    """|e**x - nearest midpoint| in ulps of the result (0.5: on a float64; 0: on a midpoint)."""
    v = true_exp(x)
    f = float(v)
    ulp = math.ulp(f)
    t = (v - CTX.mpf(f)) / ulp  # in [-1/2, 1/2]
    return float(0.5 - abs(t))


def adversarial(n: int, seed: int) -> np.ndarray:
    """Arguments where the decision is hard or the reduction has an edge."""
    rng = np.random.default_rng(seed)
    inv, c1, c2, _, _ = exp64._constants()
    c = c1 + c2
    k = rng.integers(-2088000, 2094000, n).astype(np.float64)
    ties = np.concatenate([(k + 0.5) * c + d for d in (-1e-13, 0.0, 1e-13)])  # rint's ties in x / C
    wrap = np.array([(m * 2048 + j) * c for m in rng.integers(-1000, 1000, n // 4).tolist() for j in (-1, 0, 2047)])
    pow2 = np.concatenate([np.arange(-1020, 1023) * math.log(2) + d * 2.0**-40 for d in (-3, -1, 0, 1, 3)])
    ends = np.concatenate([np.array([exp64.DOMAIN[0], exp64.DOMAIN[1]]) + np.arange(-50, 51)[:, None] * 2.0**-42,
                           np.array([[math.nextafter(exp64.DOMAIN[0], -1), math.nextafter(exp64.DOMAIN[1], 1000)]])])
    tiny = np.array([0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300, 2.0**-54, -(2.0**-54), 2.0**-53, -(2.0**-53),
                     2.0**-54 - 2.0**-107, -(2.0**-54) + 2.0**-108, 2.0**-55, -(2.0**-55)])
    return np.concatenate([ties, wrap, pow2, ends.ravel(), tiny])


def near_midpoints(n: int, seed: int) -> np.ndarray:
    """Random arguments whose e**x lies within 2**-8 ulp of a rounding midpoint, found with numpy's
    longdouble exp (independent of exp64, good to 2**-63 relative) and then confirmed with mpmath:
    the elements around the decision threshold (E s / ulp(s) ~ 2**-10 ulp) and the undecided."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(-707, 709, 400000), rng.normal(0, 3, 400000)])
    if LONGDOUBLE_IS_WIDE:
        w = np.exp(x.astype(np.longdouble))
        f = w.astype(np.float64)
        d = np.abs((w - f.astype(np.longdouble)) / np.spacing(np.abs(f)).astype(np.longdouble))
        pick = x[np.abs(d - 0.5) < 2.0**-8][:n]
    else:  # pragma: no cover
        pytest.skip("finding near-midpoint arguments needs a longdouble wider than float64")
    return pick[[midpoint_distance(v) < 2.0**-7 for v in pick.tolist()]]


def test_proof_terms_add_up():
    """The module docstring's error terms, re-added: the total is at most 2**-63.35 < REL_ERROR / 2.5."""
    u = 2.0**-53
    reduction = 2.0**-66 + 2.0**-77 + 2.0**-76
    poly = 2.0**-66 + 4.0001 * u * 2.0**-25 * 0.5001 + 1.001 * (2.0**-12.5) ** 6 / 720
    grow = 1 / (1 - 2.0**-12.4)
    total = reduction + grow * (poly + 3 * u * 2.0**-12.49 + 2.0**-106)
    assert math.log2(reduction) <= -65.99 and math.log2(poly) <= -65.99
    assert math.log2(total) <= -63.35
    assert total * 2.5 < exp64.REL_ERROR
    # the constants the proof relies on, from their definitions
    inv, c1, c2, t_hi, t_lo = exp64._constants()
    c = CTX.ln2 / 2048
    assert 2.0**-12 <= c1 < 2.0**-11 and (c1 * 2.0**43).is_integer() and abs(CTX.mpf(c1) - c) <= CTX.mpf(2) ** -44
    assert abs(c - CTX.mpf(c1) - CTX.mpf(c2)) <= CTX.mpf(2) ** -97
    assert max(abs(exp64.DOMAIN[0]), exp64.DOMAIN[1]) * inv < 2094840 < 2**21
    assert np.all(np.abs(t_lo) <= u * t_hi)
    table = [abs((CTX.mpf(h) + CTX.mpf(lo)) / CTX.power(2, CTX.mpf(j) / 2048) - 1)
             for j, (h, lo) in enumerate(zip(t_hi.tolist(), t_lo.tolist()))]
    assert max(table) <= CTX.mpf(2) ** -106 and len(table) == 2048
    k_low = math.floor(exp64.DOMAIN[0] * inv) - 1
    assert k_low >> 11 >= -1020 and (math.ceil(exp64.DOMAIN[1] * inv) + 1) >> 11 <= 1022


def measured(x: np.ndarray) -> float:
    """log2 of the largest relative error of exp64.parts on x, against mpmath."""
    s, err, e = exp64.parts(x)
    worst = CTX.mpf(0)
    for xi, si, ri, ei in zip(x.tolist(), s.tolist(), err.tolist(), e.tolist()):
        assert si == si + ri and 1 - 2.0**-12.5 <= si < 2
        worst = max(worst, abs(CTX.ldexp(CTX.mpf(si) + CTX.mpf(ri), ei) / true_exp(xi) - 1))
    return float(CTX.log(worst, 2)) if worst else -math.inf


def test_pair_within_its_bound():
    rng = np.random.default_rng(640)
    x = np.concatenate([adversarial(300, 641), rng.uniform(*exp64.DOMAIN, 4000), rng.normal(0, 2, 2000),
                        rng.uniform(-1, 1, 500) * 2.0 ** rng.integers(-80, 0, 500)])
    x = x[exp64.within(x)]
    worst = measured(x)
    assert worst <= math.log2(exp64.REL_ERROR)
    assert worst <= -63.35  # the proof's total; measured ~2**-64
    assert worst >= -66  # (the check can fail: the errors are there)


def test_within():
    x = np.array([np.nan, np.inf, -np.inf, -707.0, 709.0, math.nextafter(709.0, 710), math.nextafter(-707.0, -708),
                  0.0])
    assert exp64.within(x).tolist() == [False, False, False, True, True, False, False, True]


def check_crmath(x: np.ndarray) -> dict:
    stats = {}
    got = crmath.exp(F64, x, stats=stats)
    want = np.array([correctly_rounded(v) for v in x.tolist()])
    bad = np.flatnonzero(got.view(np.uint64) != want.view(np.uint64))
    assert bad.size == 0, [(x[i], got[i], want[i]) for i in bad[:5]]
    return stats


def test_crmath_exp_adversarial():
    x = adversarial(300, 642)
    stats = check_crmath(np.concatenate([x, -x]))
    assert stats["float64_decided"] > 0.9 * x.size


def test_crmath_exp_near_midpoints():
    """Elements on both sides of the decision threshold: decided by the pair, or passed on; all right."""
    x = near_midpoints(1500, 643)
    assert x.size > 300
    stats = check_crmath(x)
    assert stats["double_double"] > 0.1 * x.size and stats["float64_decided"] > 0.1 * x.size


def test_crmath_exp_random():
    rng = np.random.default_rng(644)
    x = np.concatenate([rng.uniform(-750, 712, 3000), rng.normal(0, 10, 3000)])
    check_crmath(x)


def test_crmath_exp_without_wide_longdouble(monkeypatch):
    """Where longdouble is float64 itself, the float64 stage still decides most elements (the rest:
    double-double, then mpmath)."""
    monkeypatch.setattr(crmath, "wide_type", lambda fmt: None if fmt.precision > 24 else "float64")
    rng = np.random.default_rng(645)
    x = np.concatenate([rng.uniform(-750, 712, 500), near_midpoints(100, 646)])
    stats = check_crmath(x)
    assert stats["float64_decided"] > 0.5 * x.size


@pytest.mark.skipif(not LONGDOUBLE_IS_WIDE, reason="the longdouble path is not there to compare with")
def test_crmath_exp_same_bits_as_the_longdouble_path():
    """10**6 random arguments: the float64 stage changes no result of the longdouble path it replaced."""
    rng = np.random.default_rng(647)
    x = np.concatenate([rng.uniform(-707, 709, 400000), rng.normal(0, 20, 400000),
                        rng.uniform(-1, 1, 200000) * 2.0 ** rng.integers(-60, 1, 200000)])
    new = crmath.exp(F64, x)
    old = crmath._evaluate("exp", F64, x, None, stage64=False)
    assert np.array_equal(new.view(np.uint64), old.view(np.uint64))


def test_crmath_exp_shapes():
    """Empty, 0-d, 2-d and strided float64 arrays: the same values, each shape kept."""
    assert crmath.exp(F64, np.array([])).shape == (0,)
    assert crmath.exp(F64, np.array(1.0)).tolist() == correctly_rounded(1.0)
    x = np.array([[0.5, 1000.0], [np.nan, -800.0]])
    got = crmath.exp(F64, x)
    assert got.shape == (2, 2) and got[0, 0] == correctly_rounded(0.5) and got[0, 1] == np.inf
    assert np.isnan(got[1, 0]) and got[1, 1] == 0.0
    y = np.linspace(-700, 700, 30001)[::7]
    assert crmath.exp(F64, y).tolist() == [correctly_rounded(v) for v in y.tolist()]
