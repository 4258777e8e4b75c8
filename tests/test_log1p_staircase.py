"""log_softmax_log1p on float32's subnormal staircase, and the interval bound that proves it on ranges.

For logits [d, 0] (softmax_ce/overflow, label 0) with exp(-d) subnormal in float32, the module docstring of
:mod:`stabilitylab.numerics.interval` (**A log1p at a tiny operand**) says the kernel's value is exactly
cr(exp(-d)) = k 2**-149, a step function of d, and that the interval error bound there carries exp's one
absolute rounding (2**-150) and not a second one for log1p.  Checked here against a deliberately plain
checker: mpmath at 300 bits, every float32 d of windows of consecutive values (the top of the normal
range, k ~ 2**12, the last steps before k = 2**11, the last values before exp(-d) rounds to 0) and random d
in between.  The bound's soundness on random tiny ranges of every format is tests/test_interval.py's
``log1p`` and ``log1p(exp)`` cases.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stabilitylab.analysis import staircase
from stabilitylab.analysis.engine import evaluate
from stabilitylab.analysis.outcome import METHOD_FAILURES
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.base import Settings
from stabilitylab.experiments.softmax_ce import Loaded, log_softmax_log1p
from stabilitylab.numerics import interval
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import FORMATS

FP32 = FORMATS["float32"]
ETA = mpmath.ldexp(1, -150)  # half the smallest float32 subnormal


def _window(start: float, n: int) -> np.ndarray:
    """n consecutive float32 values from start up."""
    first = int(np.float32(start).view(np.uint32))
    return np.arange(first, first + n, dtype=np.uint32).view(np.float32).astype(np.float64)


def _plain_cr_exp(d: float) -> float:
    """cr(exp(-d)) in float32 for a subnormal (or zero) result: the nearest multiple of 2**-149 (ties to even)."""
    with mpmath.workprec(300):
        scaled = mpmath.exp(-mpmath.mpf(d)) * mpmath.mpf(2) ** 149
        k = int(mpmath.nint(scaled))  # (nint: ties to even; e**-d is irrational for d != 0, so never a tie)
        assert k < 2**23, d  # the window is in the subnormal range
        return k * 2.0**-149


def _loss(d: float) -> mpmath.mpf:
    with mpmath.workprec(300):
        return mpmath.log1p(mpmath.exp(-mpmath.mpf(d)))


def _kernel_points(d: np.ndarray) -> np.ndarray:
    a = Arith(FP32, len(d))
    logits = a.load(np.stack([d, np.zeros_like(d)], axis=1).astype(np.float32))
    with np.errstate(all="ignore"):
        return np.asarray(log_softmax_log1p(a, Loaded(logits, np.zeros(len(d), dtype=np.int64)))).astype(np.float64)


def _kernel_range(d_lo: float, d_hi: float) -> interval.Bounds:
    ia = interval.IntervalArith(FP32, 1)
    logits = ia.load(interval.Bounds(np.array([[d_lo, 0.0]]), np.array([[d_hi, 0.0]])))
    return log_softmax_log1p(ia, Loaded(logits, np.zeros(1, dtype=np.int64)))


def test_kernel_is_the_step_function_cr_exp_on_the_subnormal_staircase():
    rng = np.random.default_rng(20261207)
    first_sub = float(np.log(2.0) * 126)  # exp(-d) < 2**-126 from here (the window starts just below)
    d = np.concatenate([_window(first_sub - 0.0005, 512), _window(94.9, 512), _window(95.63, 1024),
                        _window(103.97, 512),
                        rng.uniform(87.4, 103.9, 1024).astype(np.float32).astype(np.float64)])
    d = d[np.exp(-d) < 2.0**-126 * (1 - 2.0**-20)]  # (the window's first values may still be normal)
    values = _kernel_points(d)
    expected = np.array([_plain_cr_exp(x) for x in d.tolist()])
    assert len(d) > 3000
    assert np.array_equal(values, expected)
    assert (expected > 0).any() and (np.diff(expected[:400]) <= 0).all()  # a decreasing staircase


def test_range_bound_proves_the_steps_above_k_2_11_with_one_absolute_rounding():
    """On d in [94, 95.64] (k from ~10,000 down to ~2,070) the error bound is below 2**-12 times the
    smallest exact loss, which two absolute roundings (2 * 2**-150) would not be: the range is proven
    in one piece.  At sampled points of the range (both ends' windows and random ones) the kernel's
    value lies in the enclosure and within the bound of the exact loss."""
    d_lo, d_hi = 94.0, float(np.float32(95.64))
    v = _kernel_range(d_lo, d_hi)
    err = mpmath.mpf(float(v.err[0]))
    smallest = _loss(d_hi)
    tol = mpmath.ldexp(1, -12)
    assert err < tol * smallest * (1 - mpmath.ldexp(1, -30))  # proven (the search's condition)
    assert 2 * ETA > tol * smallest  # ... which log1p's own absolute rounding would have spoilt
    assert ETA <= err  # exp's subnormal rounding is still there
    rng = np.random.default_rng(7)
    d = np.concatenate([_window(d_lo, 256), _window(float(np.nextafter(np.float32(d_hi), np.float32(0)) - 2.0**-10),
                                                    256),
                        rng.uniform(d_lo, d_hi, 512).astype(np.float32).astype(np.float64)])
    d = d[(d >= d_lo) & (d <= d_hi)]
    values = _kernel_points(d)
    assert (values >= v.lo[0]).all() and (values <= v.hi[0]).all()
    with mpmath.workprec(300):
        worst = max(abs(mpmath.mpf(float(x)) - _loss(p)) for x, p in zip(values.tolist(), d.tolist()))
    assert worst <= err
    assert worst > ETA * (1 - mpmath.ldexp(1, -6))  # the bound is nearly attained: not loose by a factor


def test_float64_and_ftz_keep_one_rounding_for_log1p():
    """The new bound is for formats of at most 24 bits without flush-to-zero only (float64's sampled bounds
    depend on which ranges are proven)."""
    for fmt, ftz in ((FORMATS["float64"], False), (FP32, True)):
        ia = interval.IntervalArith(fmt, 1, ftz=ftz)
        x = fmt.smallest_subnormal * 3 if not ftz else fmt.tiny * 3
        b = ia.log1p(ia.load(interval.Bounds(np.array([x]), np.array([x]))))
        assert b.err[0] >= (ia.eta if not ftz else x * fmt.unit_roundoff)  # one rounding, not x**2
    ia = interval.IntervalArith(FP32, 1)
    x = FP32.smallest_subnormal * 3
    b = ia.log1p(ia.load(interval.Bounds(np.array([x]), np.array([x]))))
    assert b.lo[0] == b.hi[0] == x  # cr(log1p(x)) = x
    assert 0 < b.err[0] <= 2 * x * x


def test_sum_with_an_operand_that_is_zero_over_the_range_is_not_rounded():
    """x - 0, 0 - x, x + 0, 0 + x with x over a range reaching into the subnormals: the computed value is
    x or -x (checked at every point of the range with Arith), so no rounding is added to the bound (here
    0: exact operands); under flush-to-zero (a subnormal result flushed) and in float64 it still is."""
    lo, hi = FP32.smallest_subnormal, 2 * FP32.tiny
    first = int(np.float32(lo).view(np.uint32))
    points = np.arange(first, first + 2**12, dtype=np.uint32).view(np.float32)
    for ftz, fmt in ((False, FP32), (True, FP32), (False, FORMATS["float64"])):
        ia = interval.IntervalArith(fmt, 1, ftz=ftz)
        x = ia.load(interval.Bounds(np.array([lo]), np.array([hi])))
        zero = ia.load(interval.Bounds(np.array([0.0]), np.array([0.0])))
        for op, sign, args in (("sub", 1, (x, zero)), ("sub", -1, (zero, x)), ("add", 1, (x, zero)),
                               ("add", 1, (zero, x))):
            b = getattr(ia, op)(*args)
            assert (b.err[0] == 0) == (not ftz and fmt is FP32), (op, ftz, fmt.name)
            if fmt is FP32 and not ftz:
                a = Arith(FP32, len(points))
                p, z = a.load(points), a.load(np.zeros(len(points), dtype=np.float32))
                value = np.asarray(getattr(a, op)(*((p, z) if args[0] is x else (z, p)))).astype(np.float64)
                assert np.array_equal(value, sign * points.astype(np.float64))
                assert (value >= b.lo[0]).all() and (value <= b.hi[0]).all()


def _engine_ok(family: str, d: np.ndarray) -> np.ndarray:
    """Per d: the engine's status of log_softmax_log1p is not a method failure (at the default tolerance and
    at 1e-7, where every step is 'inaccurate' unless correctly rounded), and its value is the plain cr(exp(-d))
    where that is subnormal."""
    e = EXPERIMENTS["softmax_ce"]
    ok = np.ones(len(d), dtype=bool)
    for part in np.array_split(np.arange(len(d)), max(1, len(d) // 2**16)):
        cases = e.family(family).cases(d[part], Settings())
        for tol in (None, 1e-7):
            out = evaluate(e, FP32, cases, methods=["log_softmax_log1p"], tolerance=tol, fast_reference=True)
            ok[part] &= ~np.isin(out["log_softmax_log1p"].status, METHOD_FAILURES)
    return ok


def _around_midpoints(width: int) -> np.ndarray:
    """The float32 d within ``width`` values of every d_j = 150 ln 2 - ln(2j + 1), j < 2**12 (mpmath)."""
    out = []
    with mpmath.workprec(200):
        ln2 = mpmath.log(2)
        for j in range(staircase.MIDPOINTS):
            centre = float(np.float32(float(150 * ln2 - mpmath.log(2 * j + 1))))
            out.append(_window(float(centre) - width * 2.0**-17, 2 * width + 1))
    return np.unique(np.concatenate(out))


def test_staircase_proof_agrees_with_the_engine_next_to_every_midpoint():
    """:mod:`stabilitylab.analysis.staircase` proves [D0, 128) for both families; the engine agrees at the
    float32 d next to every rounding boundary d_j of the steps (the only places where the argument could
    fail) and at random d of the span.  The proof holds only for log_softmax_log1p in float32 without
    flush-to-zero, on those two families."""
    d0, unsafe = staircase._table()
    assert len(unsafe) == 0 and 94.9 < d0 < 95.0
    assert staircase.proven(np.array([d0, 100.0, d0]), np.array([127.99, 103.0, 128.0])).tolist() == [True, True, False]
    assert not staircase.proven(np.array([float(np.nextafter(np.float32(d0), np.float32(0)))]), np.array([96.0]))[0]
    rng = np.random.default_rng(11)
    d = np.concatenate([_around_midpoints(3), rng.uniform(d0, 104.5, 2**13).astype(np.float32).astype(np.float64)])
    d = d[d >= d0]
    assert len(d) > 2**14
    for family in ("overflow", "confident"):
        assert _engine_ok(family, d).all(), family
    assert staircase.applies("softmax_ce", "overflow", "log_softmax_log1p", FP32, False)
    assert not staircase.applies("softmax_ce", "overflow", "log_softmax_log1p", FP32, True)
    assert not staircase.applies("softmax_ce", "overflow", "log_softmax", FP32, False)
    assert not staircase.applies("softmax_ce", "underflow", "log_softmax_log1p", FP32, False)
    assert not staircase.applies("softmax_ce", "overflow", "log_softmax_log1p", FORMATS["float64"], False)
    for (experiment, family), method in staircase.FAMILIES.items():  # every name is a family's and a method's
        assert EXPERIMENTS[experiment].family(family) and EXPERIMENTS[experiment].method(method)


@pytest.mark.slow
def test_staircase_proof_agrees_with_the_engine_at_every_float32_d_of_the_span():
    """Every float32 d from D0 to 104.5 (~1.2 million per family; beyond, exp(-d) rounds to 0 and so does
    the loss)."""
    d0, _ = staircase._table()
    first, last = (int(np.float32(x).view(np.uint32)) for x in (d0, 104.5))
    d = np.arange(first, last + 1, dtype=np.uint32).view(np.float32).astype(np.float64)
    for family in ("overflow", "confident"):
        assert _engine_ok(family, d).all(), family


def test_float32_overflow_thresholds_are_the_same_without_the_staircase_proof(monkeypatch):
    """The proof changes how the search verifies (ranges instead of ~230,000 points), not what it finds."""
    from stabilitylab.analysis import thresholds

    e = EXPERIMENTS["softmax_ce"]
    with_proof = thresholds._family_thresholds(e, e.family("overflow"), FP32, Settings(), None, 16)
    monkeypatch.setattr(staircase, "applies", lambda *args: False)
    without = thresholds._family_thresholds(e, e.family("overflow"), FP32, Settings(), None, 16)
    assert with_proof == without
    assert [r.first_inaccurate for r in with_proof if r.method == "log_softmax_log1p"] == [None]
