"""The threshold search's proof for methods whose formula is biased on purpose (``Family.monotone_bias``).

epsilon_clip's ``clip_add`` / ``clip_max`` and binary_ce's ``sigmoid_log_clamped`` are not the exact loss even
in exact arithmetic, so the running error bound alone proves nothing for them; with a bias F - L monotone in the
parameter, |computed - L| <= err + max(|F - L| at the range's ends) (``thresholds._Search._bias_proven``).
Checked here against plain checkers: mpmath at 60 digits for the claimed monotone bias (the formulas written
out, not the kernels), the engine's status at every point of the ranges the proof accepts, and the thresholds
with the proof switched off.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stabilitylab.analysis import thresholds
from stabilitylab.analysis.engine import evaluate
from stabilitylab.analysis.outcome import METHOD_FAILURES
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.base import Settings
from stabilitylab.experiments.epsilon_clip import EPSILON
from stabilitylab.numerics.formats import FORMATS

FP32 = FORMATS["float32"]
CASES = [("epsilon_clip", "ceiling", "clip_add"), ("epsilon_clip", "ceiling", "clip_max"),
         ("binary_ce", "saturation", "sigmoid_log_clamped")]


def _bias(experiment: str, method: str, d: float) -> mpmath.mpf:
    """The method's formula minus the exact loss, evaluated with mpmath from the formulas as written."""
    with mpmath.workdps(60):
        d = mpmath.mpf(d)
        if experiment == "epsilon_clip":  # logits [0, -d], label 1
            p = mpmath.exp(-d) / (1 + mpmath.exp(-d))
            loss = mpmath.log1p(mpmath.exp(d))
            eps = mpmath.mpf(float(np.float32(EPSILON)))
            formula = -mpmath.log(p + eps) if method == "clip_add" else -mpmath.log(max(p, eps))
        else:  # one logit z = d, label 0
            q = mpmath.exp(-d) / (1 + mpmath.exp(-d))  # 1 - p, p = 1 / (1 + e**-d), written out (no cancellation)
            loss = mpmath.log1p(mpmath.exp(d))
            formula = -max(mpmath.log(q), -100)
        return formula - loss


def _float32_spread(lo: float, hi: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a, b = (int(np.float32(x).view(np.uint32)) for x in (lo, hi))
    return np.sort(rng.integers(a, b, n).astype(np.uint32)).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("experiment,family,method", CASES)
def test_the_named_biases_are_monotone(experiment, family, method):
    """The families' claims, on 300 float32 values from 2**-20 to 200 (a plain mpmath checker): b = F - L
    never increases (beyond 60 digits' noise: clip_max's is 0 where p >= eps), and it is not constant."""
    assert method in EXPERIMENTS[experiment].family(family).monotone_bias
    assert not EXPERIMENTS[experiment].method(method).exact_formula
    d = _float32_spread(2.0**-20, 200.0, 300, 7)
    b = [_bias(experiment, method, x) for x in d]
    assert all(b[i + 1] <= b[i] + mpmath.mpf(10) ** -50 for i in range(len(b) - 1))
    assert b[-1] < b[0] - 1


def _search(experiment: str, family: str) -> thresholds._Search:
    e = EXPERIMENTS[experiment]
    return thresholds._Search(e, e.family(family), FP32, Settings(), None, 16)


@pytest.mark.parametrize("experiment,family,method", CASES)
def test_ranges_the_proof_accepts_are_ok_at_every_point(experiment, family, method):
    """Ranges of 2**10 consecutive float32 values below and across the method's first inaccurate value (from
    thresholds): those the certification proves are ok at every point by the engine's statuses, some are
    proven, and none that contains a failing point is."""
    s = _search(experiment, family)
    first = {r.method: r.first_inaccurate for r in thresholds._family_thresholds(
        s.experiment, s.family, FP32, Settings(), None, 16)}[method]
    top = s.grid._index(first if first is not None else 30.0)
    width = 2**10
    lo = np.concatenate([top - width * np.array([1, 2, 3, 5, 8, 13, 40, 200, 1000, 5000]), [top - width // 2]])
    hi = lo + width - 1
    key = (method, "first_inaccurate")
    proven = s._certify(lo, hi, {key: np.ones(len(lo), dtype=bool)})[key]
    assert proven[:-1].sum() >= 5, proven  # the proof does its work near the threshold ...
    assert not proven[-1]  # ... and not across it
    for a, b in zip(lo[proven], hi[proven]):
        d = s.grid.params(np.arange(a, b + 1))
        out = evaluate(s.experiment, FP32, s.family.cases(d, s.settings), methods=[method])[method]
        assert not np.isin(out.status, METHOD_FAILURES).any(), (a, b)


@pytest.mark.parametrize("experiment,family", [("epsilon_clip", "ceiling"), ("binary_ce", "saturation")])
def test_thresholds_are_the_same_without_the_bias_proof(monkeypatch, experiment, family):
    """The proof changes how float32 is verified (counted: ranges certified), not what the search finds."""
    e = EXPERIMENTS[experiment]
    counted = []
    certify = thresholds._Search._certify

    def counting(self, lo, hi, pending):
        counted.append(len(lo))
        return certify(self, lo, hi, pending)

    monkeypatch.setattr(thresholds._Search, "_certify", counting)
    with_proof = thresholds._family_thresholds(e, e.family(family), FP32, Settings(), None, 16)
    ranges_with = sum(counted)
    counted.clear()
    monkeypatch.setattr(thresholds._Search, "_bias_bounded", lambda self, method: False)
    without = thresholds._family_thresholds(e, e.family(family), FP32, Settings(), None, 16)
    assert with_proof == without
    assert all(r.exact_inaccurate and r.exact_failure for r in with_proof)
    assert 4 * ranges_with < sum(counted), (ranges_with, sum(counted))


def test_the_proof_is_float32_only():
    """float64's sampled bounds depend on which ranges are proven: its searches do not use it."""
    e = EXPERIMENTS["epsilon_clip"]
    method = e.method("clip_add")
    assert _search("epsilon_clip", "ceiling")._bias_bounded(method)
    wide = thresholds._Search(e, e.family("ceiling"), FORMATS["float64"], Settings(), None, 16)
    assert not wide._bias_bounded(method)
    assert not _search("epsilon_clip", "ceiling")._bias_bounded(e.method("from_logits"))
