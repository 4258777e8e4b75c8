"""Double-double exp / expm1 / log / log1p against mpmath at 300 bits, over their whole domains."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stabilitylab.numerics import doubledouble as dd

HAS_WIDE_LONGDOUBLE = np.finfo(np.longdouble).nmant >= 63
MEASURED = 2.0**-100  # what the docstring says is measured; the bound used is REL_ERROR = 2**-90


def worst_error(x: np.ndarray, got: tuple[np.ndarray, np.ndarray], exact) -> float:
    """max over x of |h + l - f(x)| / |f(x)|, in mpmath (h + l summed exactly)."""
    h, lo = got
    assert h.shape == x.shape and np.isfinite(h).all() and np.isfinite(lo).all()
    worst = mpmath.mpf(0)
    with mpmath.workprec(300):
        for xi, hi, li in zip(x.tolist(), h.tolist(), lo.tolist()):
            f = exact(mpmath.mpf(xi))
            worst = max(worst, abs((mpmath.mpf(hi) + mpmath.mpf(li)) - f) / abs(f))
    return float(worst)


def edges(lo: float, hi: float) -> np.ndarray:
    return np.array([lo, np.nextafter(lo, hi), hi, np.nextafter(hi, lo)])


def test_exp_and_expm1():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(*dd.EXP_DOMAIN, 3000), rng.uniform(-1, 1, 1000),
                        rng.uniform(-1, 1, 500) * 2.0 ** rng.integers(-900, -1, 500), edges(*dd.EXP_DOMAIN),
                        np.log(2) * np.arange(-900, 1000, 37) / 2, [2.0**-900, -(2.0**-900), 0.5, -0.5]])
    assert worst_error(x, dd.exp(x), mpmath.exp) < MEASURED
    small = x[np.abs(x) >= 2.0**-900]
    assert worst_error(small, dd.expm1(small), mpmath.expm1) < MEASURED


@pytest.mark.skipif(not HAS_WIDE_LONGDOUBLE, reason="log and log1p refine a longdouble value")
def test_log_and_log1p():
    rng = np.random.default_rng(2)
    x = np.concatenate([2.0 ** rng.uniform(-960, 966, 3000), rng.uniform(0.25, 4, 1000),
                        1 + rng.uniform(-1, 1, 500) * 2.0 ** rng.integers(-52, -1, 500), edges(*dd.LOG_DOMAIN),
                        [0.5, 2.0, np.nextafter(0.5, 0), np.nextafter(2.0, 3), 1 + 2.0**-52, 1 - 2.0**-53]])
    x = x[x != 1]  # log(1) = 0 is exact: crmath settles it before any evaluation
    assert worst_error(x, dd.log(x, np.log(x.astype(np.longdouble))), mpmath.log) < MEASURED
    t = np.concatenate([2.0 ** rng.uniform(-500, 966, 2000), -(2.0 ** rng.uniform(-500, -1e-9, 1000)),
                        rng.uniform(-0.75, 1.5, 1000), -1 + np.arange(1, 50) * 2.0**-53,
                        [-0.5, 1.0, np.nextafter(-0.5, -1), np.nextafter(1.0, 2), 2.0**-500, -(2.0**-500),
                         2.0**966]])
    assert dd.within("log1p", t).all()
    assert worst_error(t, dd.log1p(t, np.log1p(t.astype(np.longdouble))), mpmath.log1p) < MEASURED


def test_domains():
    assert dd.within("exp", np.array([-670.0, 709.0])).all()
    assert not dd.within("exp", np.array([-671.0, 709.5, np.nan, np.inf])).any()
    assert not dd.within("log", np.array([0.0, 2.0**-961, 2.0**967, np.nan, -1.0])).any()
    assert not dd.within("log1p", np.array([-1.0, 0.0, 2.0**-501, 2.0**967, np.nan])).any()


def test_error_free_transformations():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(1000) * 2.0 ** rng.integers(-40, 40, 1000), rng.standard_normal(1000)
    for fn, op in ((dd.two_sum, lambda x, y: x + y), (dd.two_prod, lambda x, y: x * y)):
        s, e = fn(a, b)
        for ai, bi, si, ei in zip(a.tolist(), b.tolist(), s.tolist(), e.tolist()):
            with mpmath.workprec(400):
                assert mpmath.mpf(si) + mpmath.mpf(ei) == op(mpmath.mpf(ai), mpmath.mpf(bi))
