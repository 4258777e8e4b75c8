"""The classification rule and the error metrics, on hand-made values."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stabilitylab.analysis.outcome import (
    FAILURES,
    METHOD_FAILURES,
    RANK,
    SEVERITY,
    STATUSES,
    classify,
    errors,
    worst_status,
)
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.numerics.reference import Exact, from_mpmath

F16, F32, F64, E4M3 = FORMATS["float16"], FORMATS["float32"], FORMATS["float64"], FORMATS["float8_e4m3fn"]


def exact(*values) -> Exact:
    with mpmath.workdps(60):
        return from_mpmath([mpmath.mpf(v) if not isinstance(v, mpmath.mpf) else v for v in values])


def status_of(value, ref, events=(), fmt=F32, tolerance=None, input_lost=False):
    a = Arith(fmt, 1)
    for ev in events:  # record events in this order
        a.step += 1
        a._note(ev, np.array([True]), None)
    a.input_lost[:] = input_lost
    return classify(fmt, np.array([value]), exact(ref), a, tolerance).status[0]


def test_lost_values_are_named_after_the_first_over_or_underflow():
    assert status_of(np.nan, 1.0) == "nan"
    assert status_of(np.inf, 230.0, ["underflow", "divide_by_zero"]) == "underflow"
    assert status_of(np.inf, 230.0, ["overflow"]) == "overflow"
    assert status_of(np.inf, 230.0, ["underflow", "overflow"]) == "underflow"  # the first one counts
    assert status_of(np.nan, 230.0, ["overflow", "invalid"]) == "overflow"  # inf / inf: the overflow is the cause
    assert status_of(0.0, 1e-18, ["underflow"]) == "underflow"
    assert status_of(np.inf, 17.0, ["divide_by_zero"]) == "underflow"  # 1 - p rounded to 0, then log(0)
    # 0 where the exact loss is representable, with no over/underflow behind it (1 + tiny rounded to 1)
    assert status_of(0.0, 1e-18) == "inaccurate"


def test_float8_e4m3fn_names_the_same_cause_as_formats_with_infinity():
    """e4m3fn has no inf: log(0) and overflow give NaN there; the status is the cause, as in e5m2."""
    assert status_of(np.nan, 230.0, ["underflow", "divide_by_zero"], fmt=E4M3) == "underflow"
    assert status_of(np.nan, 2.0, ["divide_by_zero"], fmt=E4M3) == "underflow"
    assert status_of(np.nan, 2.0, ["overflow"], fmt=E4M3) == "overflow"
    assert status_of(np.nan, 2.0, ["invalid"], fmt=E4M3) == "nan"


def test_a_correctly_rounded_value_is_never_a_failure():
    tiny_loss = mpmath.exp(-1000)  # ~5e-435: 0 in every format
    assert status_of(0.0, tiny_loss, ["underflow"]) == "range"
    assert status_of(-0.0, -tiny_loss) == "range"
    assert status_of(0.0, 4.248354255291589e-18, fmt=F16) == "range"  # [0, -40], y = 0: 4e-18 is 0 in float16
    assert status_of(np.inf, 1e39, ["overflow"]) == "range"  # the exact loss overflows float32 itself
    assert status_of(np.nan, 1000.0, ["overflow"], fmt=E4M3) == "range"  # 1000 > 464: NaN is e4m3fn's rounding
    assert status_of(np.inf, np.inf) == "ok"  # an infinite exact loss, computed as such
    assert status_of(np.inf, np.inf, ["underflow"], input_lost=True) == "range"  # p = 1e-300 -> 0 on load
    # a correctly rounded subnormal: relative error over the tolerance, still ok
    sub = float(np.float32(3e-44))
    assert status_of(sub, 3e-44) == "ok"


def test_tolerance():
    assert status_of(1.0 + 1e-3, 1.0) == "inaccurate"  # 1e-3 > sqrt(2**-24) = 2.4e-4
    assert status_of(1.0 + 1e-4, 1.0) == "ok"
    assert status_of(1.0 + 1e-4, 1.0, tolerance=1e-5) == "inaccurate"


def test_error_metrics():
    # one float32 ulp above 1 is 2**-23: 1 ulp, 1 bit of error
    rel, ulps, bits = errors(F32, np.array([1 + 2.0**-23]), exact(1.0))
    assert rel[0] == 2.0**-23 and ulps[0] == 1.0 and bits[0] == 1.0
    # the low part of the reference is seen: value 1, exact 1 + 2**-60
    with mpmath.workdps(60):
        one_plus = mpmath.mpf(1) + mpmath.mpf(2) ** -60
    rel, ulps, bits = errors(F32, np.array([1.0]), exact(one_plus))
    assert rel[0] == 2.0**-60 and ulps[0] == 2.0**-37
    rel, ulps, bits = errors(F32, np.array([0.0]), exact(0))
    assert rel[0] == 0 and ulps[0] == 0 and bits[0] == 0
    rel, ulps, bits = errors(F32, np.array([np.inf]), exact(5.0))
    assert np.isinf(rel[0]) and np.isinf(ulps[0])
    rel, ulps, bits = errors(F32, np.array([np.nan]), exact(5.0))
    assert np.isnan(rel[0]) and np.isnan(ulps[0]) and np.isnan(bits[0])  # a NaN value has NaN metrics


def test_metrics_below_float64s_range():
    """[0, -740], y = 0 in float64: the loss log1p(e**-740) ~ 4.2e-322 is a float64 subnormal;
    the correctly rounded value has relative error ~ 2.6e-3, measured from the scaled reference."""
    with mpmath.workdps(60):
        x = mpmath.log1p(mpmath.exp(-740))
        v = float(x)  # Python rounds correctly, also to subnormals
        want = abs((mpmath.mpf(v) - x) / x)
    ex = exact(x)
    assert ex.scale[0] < 0 and ex.rounded(F64)[0] == v
    rel, ulps, _ = errors(F64, np.array([v]), ex)
    assert rel[0] == pytest.approx(float(want), rel=1e-12) and 2.5e-3 < rel[0] < 2.7e-3
    assert ulps[0] <= 0.5
    assert status_of(v, x, fmt=F64) == "ok"


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32", "float64"])
def test_default_tolerance_is_half_the_bits(name):
    fmt = FORMATS[name]
    assert fmt.default_tolerance == pytest.approx(2.0 ** (-fmt.precision / 2), rel=1e-15)


def test_one_severity_order_of_every_status():
    assert sorted(SEVERITY) == sorted(STATUSES)
    assert SEVERITY[0] == "error" and SEVERITY[-2:] == ("range", "ok")
    ranks = [RANK[s] for s in SEVERITY]
    assert ranks == sorted(ranks, reverse=True)  # the coarse ranks follow the order
    assert {s for s in STATUSES if RANK[s] == 0} == {"ok", "range"}
    assert {s for s in STATUSES if RANK[s] == 2} == set(FAILURES)


@pytest.mark.parametrize(("present", "among", "expected"), [
    ([], STATUSES, "ok"),
    (["ok", "range"], STATUSES, "range"),
    (["ok", "range"], METHOD_FAILURES, "ok"),
    (["inaccurate", "underflow", "overflow"], STATUSES, "overflow"),
    (["inf", "nan", "error"], STATUSES, "error"),
    (["inf", "nan"], METHOD_FAILURES, "nan"),
])
def test_worst_status(present, among, expected):
    assert worst_status(present, among) == expected
