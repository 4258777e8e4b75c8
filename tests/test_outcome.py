"""The classification rule and the error metrics, on hand-made values."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitylab.arith import Arith
from stabilitylab.formats import FORMATS
from stabilitylab.outcome import classify, errors

F32 = FORMATS["float32"]


def status_of(value, ref, events=(), fmt=F32, tolerance=None):
    a = Arith(fmt, 1)
    for ev in events:  # record events in this order
        a.step += 1
        a._note(ev, np.array([True]), None)
    hi = np.array([ref], dtype=np.float64)
    return classify(fmt, np.array([value]), hi, np.zeros(1), hi == 0, a, tolerance).status[0]


def test_rule():
    assert status_of(np.nan, 1.0) == "nan"
    assert status_of(np.inf, 230.0, ["underflow", "divide_by_zero"]) == "underflow"
    assert status_of(np.inf, 230.0, ["overflow"]) == "overflow"
    assert status_of(np.inf, 230.0, ["underflow", "overflow"]) == "underflow"  # the first one counts
    assert status_of(0.0, 1e-18, ["underflow"]) == "underflow"
    # 0 where r != 0 with no over/underflow behind it (1 + tiny rounded to 1): inaccurate
    assert status_of(0.0, 1e-18) == "inaccurate"
    assert status_of(np.inf, np.inf) == "ok"  # the exact loss is infinite
    assert status_of(1.0 + 1e-3, 1.0) == "inaccurate"  # 1e-3 > sqrt(2**-24) = 2.4e-4
    assert status_of(1.0 + 1e-4, 1.0) == "ok"
    assert status_of(1.0 + 1e-4, 1.0, tolerance=1e-5) == "inaccurate"


def test_error_metrics():
    # one float32 ulp above 1 is 2**-23: 1 ulp, 1 bit of error
    rel, ulps, bits = errors(F32, np.array([1 + 2.0**-23]), np.array([1.0]), np.zeros(1))
    assert rel[0] == 2.0**-23 and ulps[0] == 1.0 and bits[0] == 1.0
    # the low part of the reference is seen: value 1, exact 1 + 2**-60
    rel, ulps, bits = errors(F32, np.array([1.0]), np.array([1.0]), np.array([2.0**-60]))
    assert rel[0] == 2.0**-60 and ulps[0] == 2.0**-37
    rel, ulps, bits = errors(F32, np.array([0.0]), np.array([0.0]), np.zeros(1))
    assert rel[0] == 0 and ulps[0] == 0 and bits[0] == 0
    rel, ulps, bits = errors(F32, np.array([np.inf]), np.array([5.0]), np.zeros(1))
    assert np.isinf(rel[0]) and np.isinf(ulps[0])


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32", "float64"])
def test_default_tolerance_is_half_the_bits(name):
    fmt = FORMATS[name]
    assert fmt.default_tolerance == pytest.approx(2.0 ** (-fmt.precision / 2), rel=1e-15)
