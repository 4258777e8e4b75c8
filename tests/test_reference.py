"""Fast references against a plain mpmath evaluation, where their sums fall below longdouble's range."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stabilitylab import reference
from stabilitylab.arith import Arith
from stabilitylab.experiments.base import ParamNames
from stabilitylab.experiments.softmax_ce import SOFTMAX_CE, Logits
from stabilitylab.formats import FORMATS

pytestmark = pytest.mark.skipif(not reference.HAVE_EXTENDED, reason="the scaled sums need an 80-bit longdouble")


def plain(x: np.ndarray, y: int) -> tuple[float, float, int]:
    """-log softmax(x)_y by mpmath at 60 digits, as (mantissa in [1, 2) as float64 hi + lo, exponent);
    (hi, lo, floor) of 2**-floor times the loss below 2**floor."""
    with mpmath.workdps(60):
        xs = [mpmath.mpf(float(v)) for v in x]
        loss = mpmath.log1p(mpmath.fsum(mpmath.exp(v - xs[y]) for i, v in enumerate(xs) if i != y))
        e = int(mpmath.floor(mpmath.log(loss, 2)))
        e = max(e, reference.SCALE_FLOOR)
        m = mpmath.ldexp(loss, -e)
        return float(m), float(m - float(m)), e


@pytest.mark.parametrize("name", ["bfloat16", "float32", "float64"])
def test_true_class_far_above_the_rest_is_summed_scaled(name):
    """Rows whose loss e**-d lies below longdouble's range (d from 11355 up to float64's max) get
    their exact value, scaled, from the vectorized path: within 2**-60 of mpmath, at the same
    exponent, and held at the floor below 2**SCALE_FLOOR (as mpmath's path holds it)."""
    fmt = FORMATS[name]
    rng = np.random.default_rng(3)
    d = np.concatenate([10.0 ** rng.uniform(3.9, 14, 300), [11355.0, 7.62e11, 1e13, 3e38]])
    d = np.asarray(fmt.round(d), dtype=np.float64)
    d = d[np.isfinite(d)]
    k = 4
    x = np.zeros((len(d), k))
    x[:, 1] = -d  # the others: -d, -d - 3, -2d
    x[:, 2] = fmt.round(-d - 3)
    x[:, 3] = fmt.round(-2 * d)
    x[:, 3] = np.where(np.isfinite(x[:, 3]), x[:, 3], -d)
    y = np.zeros(len(d), dtype=np.int64)
    cases = Logits(ParamNames("row", np.arange(len(d))), x, y, np.full(len(d), k))
    inputs = SOFTMAX_CE.load(Arith(fmt, len(d)), cases)
    for dtype in ([None, np.float64] if fmt.precision <= 24 else [None]):
        got = reference.fast(SOFTMAX_CE, inputs) if dtype is None else reference.fast(SOFTMAX_CE, inputs, dtype)
        scaled = 0
        for i in range(len(d)):
            want, want_lo, e = plain(x[i], 0)
            assert got.scale[i] == e, (name, d[i])
            assert not got.zero[i]
            if want == 0:
                assert got.hi[i] == 0
            else:
                assert abs((got.hi[i] - want) + (got.lo[i] - want_lo)) <= 2.0**-60 * want, (name, d[i], got.hi[i], want)
            scaled += e < -16382
        assert scaled > 200  # most rows are below longdouble's range


def test_rows_at_the_floor_boundary_go_to_mpmath():
    """A sum just below 2**SCALE_FLOOR (hi a float64 subnormal there) is left to mpmath."""
    hi = np.array([[-(2.0**40) * np.log(2) - 100.0], [-(2.0**40) * np.log(2) + 100.0], [-1e13]])
    values, handled = reference.exp_sum_scaled(hi, np.zeros_like(hi), np.ones_like(hi, dtype=bool))
    assert handled.tolist() == [False, True, True]
    assert values.scale[2] == reference.SCALE_FLOOR and values.hi[2] == 0
