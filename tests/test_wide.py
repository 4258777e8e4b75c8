"""The wide-type rule (numerics/wide.py) and every user of it agreeing with it."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitylab.numerics import crmath, interval, reference, wide
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import ALL_FORMATS, FORMATS

F64 = FORMATS["float64"]
NARROW = [f for f in ALL_FORMATS if f.precision <= 24]


def test_longdouble_is_wide_means_at_least_64_significand_bits():
    assert wide.LONGDOUBLE_IS_WIDE == (np.finfo(np.longdouble).nmant + 1 >= 64)


@pytest.mark.parametrize("fmt", NARROW, ids=str)
def test_narrow_formats_are_evaluated_in_float64(fmt):
    assert wide.wide_dtype(fmt) == np.dtype(np.float64)


def test_float64_is_evaluated_in_longdouble_where_it_is_wider():
    assert wide.wide_dtype(F64) == (np.dtype(np.longdouble) if wide.LONGDOUBLE_IS_WIDE else None)


@pytest.mark.parametrize("wider", [True, False], ids=["longdouble wider", "longdouble is float64"])
@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=str)
def test_every_user_follows_the_rule(fmt, wider, monkeypatch):
    """Arith's subnormal check, crmath's first stage, the interval arithmetic and the fast
    reference's float64 tier all take the wide type from the one rule (the platform
    switched by patching the one longdouble test)."""
    monkeypatch.setattr(wide, "LONGDOUBLE_IS_WIDE", wider)
    dtype = wide.wide_dtype(fmt)
    assert (dtype is None) == (fmt.precision > 24 and not wider)
    assert Arith(fmt, 1)._wides[fmt.name] == dtype  # (per format: a policy has one per role)
    assert crmath.wide_type(fmt) == (None if dtype is None else "float64" if fmt.precision <= 24 else "longdouble")
    assert interval.supported(fmt) == (dtype is not None)
    if dtype is not None:
        assert interval.IntervalArith(fmt, 1).wide == dtype

    class Truth:
        fast_float64 = True

    assert (reference.fast_tier(Truth, fmt, None)[0] is np.float64) == (fmt.precision <= 24)
