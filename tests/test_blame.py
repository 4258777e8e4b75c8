"""outcome.blame decides, from an approximate exact value, what classify decides from the exact one.

The threshold search evaluates millions of points with blame and sends only the rows it
leaves undecided to the engine; a row it decides must get the answer classify gives
(status in METHOD_FAILURES or not), for every exact value within the stated error.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stabilitylab.analysis.outcome import METHOD_FAILURES, blame, classify
from stabilitylab.numerics.arith import NEVER, Arith
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.numerics.reference import Exact, from_mpmath

ERROR = 2.0**-40


def _cases(fmt, rng, n=3000):
    """Exact values across the format's range (subnormal, beyond max, below half the smallest
    subnormal, exact zeros), computed values near and far from them, and random events."""
    lo, hi = max(np.log2(fmt.smallest_subnormal) - 4, -1074), min(np.log2(fmt.max) + 2, 1023)
    mag = np.exp2(rng.uniform(lo, hi, n))
    x = np.where(rng.random(n) < 0.5, mag, -mag)
    with mpmath.workdps(40):
        exact = [mpmath.mpf(float(v)) * (1 + mpmath.mpf(float(rng.normal())) * mpmath.mpf(2) ** -30) for v in x]
    exact[:20] = [mpmath.mpf(0)] * 20
    ref = from_mpmath(exact)
    with np.errstate(all="ignore"):
        cr = ref.rounded(fmt)
        ulp = fmt.ulp(cr)
        kind = rng.integers(0, 7, n)
        tol = fmt.default_tolerance
        v = np.select([kind == 0, kind == 1, kind == 2, kind == 3, kind == 4, kind == 5],
                      [cr, cr + ulp * rng.integers(-3, 4, n), x * (1 + tol * rng.uniform(0.5, 1.5, n)),
                       np.zeros(n), np.full(n, np.inf), np.full(n, np.nan)],
                      x * (1 + rng.uniform(-1, 1, n)))
        v = fmt.round(v).astype(np.float64)
    arith = Arith(fmt, n)
    for event in ("overflow", "underflow"):
        arith.step += 1
        arith._note(event, rng.random(n) < 0.2, None)
    if fmt.saturates:  # rows whose +-max replaced an infinity (classify calls them lost; blame cannot tell)
        arith.saturated = (arith.first_step("overflow") != NEVER) & (rng.random(n) < 0.5)
    return v, ref, arith


def _nudged(ref: Exact, rng, size: float) -> Exact:
    """The same values moved by a relative amount below ``size`` (zeros stay zeros)."""
    hi = ref.hi * (1 + rng.uniform(-size, size, len(ref.hi)) / 2)
    return Exact(np.where(ref.zero, 0.0, hi), ref.lo, ref.scale, ref.zero)


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("tolerance", [None, 1e-3, 0.75])
def test_blame_decides_what_classify_decides(name, tolerance):
    fmt = FORMATS[name]
    rng = np.random.default_rng(2024)
    v, ref, arith = _cases(fmt, rng)
    truth = np.isin(classify(fmt, v, ref, arith, tolerance).status, METHOD_FAILURES)
    events = (arith.first_step("overflow") != NEVER) | (arith.first_step("underflow") != NEVER)
    for error in (ERROR, np.full(len(v), ERROR), np.geomspace(2.0**-50, 2.0**-6, len(v))):
        bad, decided = blame(fmt, v, _nudged(ref, rng, np.min(error)), error, events, tolerance)
        wrong = np.flatnonzero(decided & (bad != truth))
        assert not len(wrong), (name, tolerance, v[wrong[:5]], ref.hi[wrong[:5]])
        assert decided.mean() > 0.5  # the test says something


def test_an_approximate_zero_is_taken_as_classify_takes_it():
    fmt = FORMATS["float32"]
    v = np.array([0.0, -0.0, 1e-45, np.nan, np.inf])
    ref = Exact(np.zeros(5), np.zeros(5), np.zeros(5, dtype=np.int64), np.zeros(5, dtype=bool))
    arith = Arith(fmt, 5)
    truth = np.isin(classify(fmt, v, ref, arith).status, METHOD_FAILURES)
    bad, decided = blame(fmt, v, ref, ERROR, np.zeros(5, dtype=bool))
    assert decided.all() and (bad == truth).all() and list(bad) == [False, False, True, True, True]
