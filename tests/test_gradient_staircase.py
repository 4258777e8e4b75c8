"""gradient's mse_sigmoid on float32's subnormal staircase (:mod:`stabilitylab.analysis.staircase`).

For logits [-d, 0], target 1, the module docstring says the kernel's value is exactly -cr(exp(-d)) once
exp(-d) <= 2**-137 (d >= D0 ~ 94.96), and that the exact gradient -(1 - p)**2 p rounds to the same value at
every float32 d there.  Checked against plain checkers: the kernel's value against mpmath's nearest multiple
of 2**-149 on windows of consecutive d, the engine's status next to every rounding boundary d_j and at random d
(and, ``slow``, at every float32 d of the span), and the thresholds with the proof switched off.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stabilitylab.analysis import staircase, thresholds
from stabilitylab.analysis.engine import evaluate
from stabilitylab.analysis.outcome import METHOD_FAILURES
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.base import Settings
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import FORMATS

FP32 = FORMATS["float32"]
GRADIENT = EXPERIMENTS["gradient"]
FAMILY = GRADIENT.family("vanishing")


def _window(start: float, n: int) -> np.ndarray:
    """n consecutive float32 values from start up."""
    first = int(np.float32(start).view(np.uint32))
    return np.arange(first, first + n, dtype=np.uint32).view(np.float32).astype(np.float64)


def _plain_cr_exp(d: float) -> float:
    """cr(exp(-d)) in float32 for a subnormal (or zero) result: the nearest multiple of 2**-149."""
    with mpmath.workprec(300):
        k = int(mpmath.nint(mpmath.exp(-mpmath.mpf(d)) * mpmath.mpf(2) ** 149))
        assert k < 2**12, d
        return k * 2.0**-149


def _kernel(d: np.ndarray) -> np.ndarray:
    a = Arith(FP32, len(d))
    with np.errstate(all="ignore"):
        inputs = GRADIENT.load(a, FAMILY.cases(d, Settings()))
        return np.asarray(GRADIENT.method("mse_sigmoid").kernel(a, inputs)).astype(np.float64)


def test_kernel_is_minus_cr_exp_on_the_staircase():
    d0, _ = staircase._table()
    rng = np.random.default_rng(5)
    d = np.concatenate([_window(d0, 300), _window(100.0, 300), _window(103.9, 300),
                        rng.uniform(d0, 104.0, 300).astype(np.float32).astype(np.float64)])
    expected = np.array([-_plain_cr_exp(x) for x in d])
    assert np.array_equal(_kernel(d), expected)
    assert (expected < 0).any() and (expected == 0).any()


def _engine_ok(d: np.ndarray) -> np.ndarray:
    """Per d: mse_sigmoid's status is not a method failure, at the default tolerance and at 1e-7 (where every
    step is 'inaccurate' unless correctly rounded)."""
    ok = np.ones(len(d), dtype=bool)
    for part in np.array_split(np.arange(len(d)), max(1, len(d) // 2**16)):
        cases = FAMILY.cases(d[part], Settings())
        for tol in (None, 1e-7):
            out = evaluate(GRADIENT, FP32, cases, methods=["mse_sigmoid"], tolerance=tol, fast_reference=True)
            ok[part] &= ~np.isin(out["mse_sigmoid"].status, METHOD_FAILURES)
    return ok


def test_proof_agrees_with_the_engine_next_to_every_midpoint():
    d0, _ = staircase._table()
    near = []
    with mpmath.workprec(200):
        for j in range(staircase.MIDPOINTS):
            centre = float(np.float32(float(150 * mpmath.log(2) - mpmath.log(2 * j + 1))))
            near.append(_window(centre - 3 * 2.0**-17, 7))
    rng = np.random.default_rng(12)
    d = np.concatenate([*near, rng.uniform(d0, 104.5, 2**12).astype(np.float32).astype(np.float64)])
    d = np.unique(d[d >= d0])
    assert len(d) > 2**14
    assert _engine_ok(d).all()
    assert staircase.applies("gradient", "vanishing", "mse_sigmoid", FP32, False)
    assert not staircase.applies("gradient", "vanishing", "ce_sigmoid", FP32, False)
    assert not staircase.applies("gradient", "vanishing", "mse_sigmoid", FP32, True)
    assert not staircase.applies("gradient", "vanishing", "mse_sigmoid", FORMATS["float64"], False)


def test_the_steps_are_ok_only_because_correctly_rounded():
    """What makes the engine check above able to fail: on the staircase the relative error of the kernel's
    value (mpmath's exact gradient, a plain checker) far exceeds 1e-7 and even the default tolerance 2**-12,
    so a step that was not the correctly rounded value would be blamed."""
    d = _window(100.0, 200)  # (k ~ 26 here: steps of relative error up to ~1/52)
    with mpmath.workprec(300):
        exact = [-(mpmath.exp(-mpmath.mpf(x)) / (1 + mpmath.exp(-mpmath.mpf(x))) ** 3) for x in d]
        rel = [abs((mpmath.mpf(v) - g) / g) for v, g in zip(_kernel(d), exact)]
    assert max(rel) > 2.0**-12


@pytest.mark.slow
def test_proof_agrees_with_the_engine_at_every_float32_d_of_the_span():
    d0, _ = staircase._table()
    first, last = (int(np.float32(x).view(np.uint32)) for x in (d0, 104.5))
    d = np.arange(first, last + 1, dtype=np.uint32).view(np.float32).astype(np.float64)
    assert _engine_ok(d).all()


def test_float32_thresholds_are_the_same_without_the_staircase_proof(monkeypatch):
    """The proof changes how the search verifies (counted: points evaluated), not what it finds."""
    counted = []
    flags = thresholds._Search._flags

    def counting(self, indices, methods=None, blocks=None):
        counted.append(len(indices))
        return flags(self, indices, methods, blocks)

    monkeypatch.setattr(thresholds._Search, "_flags", counting)
    with_proof = thresholds._family_thresholds(GRADIENT, FAMILY, FP32, Settings(), None, 16)
    points_with = sum(counted)
    counted.clear()
    monkeypatch.setattr(staircase, "applies", lambda *args: False)
    without = thresholds._family_thresholds(GRADIENT, FAMILY, FP32, Settings(), None, 16)
    assert with_proof == without
    assert all(r.exact_inaccurate and r.exact_failure for r in with_proof)
    assert 20 * points_with < sum(counted), (points_with, sum(counted))
