"""Issue #18, one NaN rule for black boxes and simulations: on rows whose loss is undefined (every logit -inf:
the exact reference is NaN), a simulated method that returns NaN got ``nan`` while a black box returning the
same NaN got ``ok``, giving "method fails, target ok" counts (and guards) where neither failed. Now both get
``ok`` (``range`` if an input was out of range): NaN is the faithful answer for an undefined loss."""

from __future__ import annotations

import numpy as np
import pytest

import stabilitylab
from stabilitylab.analysis.engine import evaluate
from stabilitylab.analysis.outcome import classify
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.softmax_ce import logits_case
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.numerics.reference import Exact

pytest.importorskip("scipy", reason="the scipy audit needs scipy (the test extra)")


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])  # scipy has no bfloat16
def test_all_neg_inf_rows_were_nan_for_a_simulation_and_ok_for_a_black_box(dtype):
    result = stabilitylab.audit("scipy.log_softmax", dtypes=[dtype], logits=np.full((3, 4), -np.inf), search=False)
    rows = result.user_rows
    assert np.isnan(rows["value"]).all() and np.isnan(rows["exact_hi"]).all()
    by_method = {}
    for method, status in zip(rows["method"], rows["status"]):
        by_method.setdefault(str(method), set()).add(str(status))
    assert by_method.pop("scipy.log_softmax") == {"ok"}
    assert by_method and all(statuses == {"ok"} for statuses in by_method.values()), by_method
    for pair in result.bulk.versus.values():  # no "method fails, target ok" (nor the reverse) on these rows
        assert (pair.target_only, pair.method_only) == (0, 0) and pair.guard is None


def test_classify_gives_the_same_status_to_the_same_nan_for_both_kinds():
    fmt = FORMATS["float32"]
    exact = Exact(np.array([np.nan, np.nan, 1.5]), np.zeros(3), np.zeros(3, dtype=np.int64), np.zeros(3, dtype=bool))
    value = np.array([np.nan, np.nan, np.nan])
    white = classify(fmt, value, exact, Arith(fmt, 3), black_box=False).status
    black = classify(fmt, value, exact, Arith(fmt, 3), black_box=True).status
    assert list(white) == list(black) == ["ok", "ok", "nan"]  # a NaN where the loss is defined still fails


def test_simulated_methods_on_a_fully_masked_row_are_ok():
    """The corpus' fully masked row (every logit -inf) through the engine, every softmax_ce method."""
    experiment = EXPERIMENTS["softmax_ce"]
    cases = logits_case([-np.inf, -np.inf, -np.inf], 0)
    for dtype in ("float16", "float32", "float64"):
        out = evaluate(experiment, FORMATS[dtype], cases, fast_reference=False)
        for method in experiment.methods:
            assert np.isnan(out[method.name].value).all()
            assert list(out[method.name].status) == ["ok"], (dtype, method.name, out[method.name].status)
