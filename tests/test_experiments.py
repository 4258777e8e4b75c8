"""The articles' claims as measured results, against IEEE reasoning and mpmath."""

from __future__ import annotations

import math
import time

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab.analysis.engine import compare, evaluate
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.likelihood import LIKELIHOOD, article_case, iid
from stabilitylab.experiments.softmax_ce import SOFTMAX_CE, concat, logits_case
from stabilitylab.numerics.formats import ALL_FORMATS, DEFAULT_FORMATS, FORMATS

F16, BF16, F32, F64 = (FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64"))


def run(experiment, fmt, cases, **kw):
    return evaluate(experiment, fmt, cases, **kw)


# ---------------------------------------------------------------- likelihood
@pytest.mark.parametrize("fmt", [F16, BF16, F32], ids=str)
def test_seed_product_of_100_tenths_underflows(fmt):
    """0.1**100 = 1e-100 is below half the smallest subnormal of float16 (6e-8),
    bfloat16 (9e-41) and float32 (1.4e-45), so the product rounds to 0 and the
    NLL -log(0) is inf; the sum of logs stays finite."""
    assert 1e-100 < fmt.smallest_subnormal / 2
    out = run(LIKELIHOOD, fmt, iid(0.1, 100))
    product, sum_log = out["product"], out["sum_log"]
    assert product.value[0] == np.inf and product.status[0] == "underflow"
    assert product.events[0][0] == "underflow" and "divide_by_zero" in product.events[0]
    assert np.isfinite(sum_log.value[0]) and sum_log.status[0] == "ok"


def test_seed_product_is_fine_in_float64():
    """1e-100 is a normal float64 (tiny = 2.2e-308): the product is exact to a few ulps."""
    out = run(LIKELIHOOD, F64, iid(0.1, 100))
    exact = float(-100 * mpmath.log(mpmath.mpf(0.1)))  # mpf(0.1) is float64's 0.1 exactly
    assert out["product"].status[0] == "ok" and out["sum_log"].status[0] == "ok"
    for name in ("product", "sum_log"):
        assert abs(out[name].value[0] - exact) <= 4 * np.spacing(exact)
    assert out["product"].reference[0] == exact
    assert f"{exact:.4f}" == "230.2585"


def test_article_likelihood_product_is_0_2916():
    """0.6 * 0.6 * 0.9 * 0.9 = 0.2916: the product in float64 and the NLL -ln 0.2916."""
    out = run(LIKELIHOOD, F64, article_case())
    nll = out["product"].value[0]
    assert math.exp(-nll) == pytest.approx(0.2916, rel=1e-15)
    assert out["sum_log"].value[0] == pytest.approx(-math.log(0.2916), rel=1e-15)


def test_reference_is_for_the_rounded_inputs():
    """float16's 0.1 is 0.0999755859375 (= 1638 / 2**14), so its exact NLL differs."""
    assert float(F16.round(0.1)) == 1638 / 2**14
    out = run(LIKELIHOOD, F16, iid(0.1, 100))
    exact = float(-100 * mpmath.log(mpmath.mpf(1638) / 2**14))
    assert out["sum_log"].reference[0] == exact


def test_huge_n_runs_in_bounded_memory_and_seconds():
    t0 = time.perf_counter()
    out = run(LIKELIHOOD, F32, iid([0.999, 0.5], [10**9, 10**18]))
    assert time.perf_counter() - t0 < 5  # O(log n): milliseconds in practice
    exact = -(10**9) * mpmath.log(mpmath.mpf(float(F32.round(0.999))))
    assert out["sum_log"].status[0] == "ok"
    assert abs(out["sum_log"].value[0] - float(exact)) / float(exact) < 1e-5
    # 0.5**(10**18) underflows in every format; its sum of logs is 6.9e17, finite in float32
    assert out["product"].status[1] == "underflow"
    assert out["sum_log"].value[1] == pytest.approx(10**18 * math.log(2), rel=1e-6)


def test_float16_sum_of_logs_is_out_of_range_when_the_loss_itself_exceeds_max():
    # 10**9 * -ln(fl16(0.999)) = 9.8e5 > 65504: no float16 can hold the loss
    out = run(LIKELIHOOD, F16, iid(0.999, 10**9))
    assert out["sum_log"].reference[0] > F16.max
    assert out["sum_log"].status[0] == "range"  # the loss itself is not representable


# ---------------------------------------------------------------- softmax_ce
def exact_ce(logits, label):
    x = [mpmath.mpf(float(v)) for v in logits]
    with mpmath.workdps(50):
        return -(x[label] - mpmath.log(mpmath.fsum(mpmath.exp(v) for v in x)))


def test_article_logits_match_mpmath_in_float64():
    cases = concat([logits_case([10, 9.9, 9.9], 0), logits_case([-0.1, -0.1, 0.1], 2),
                    logits_case(np.log([0.1, 0.7, 0.2]), 1)])
    out = run(SOFTMAX_CE, F64, cases)
    for i, (x, y) in enumerate([([10, 9.9, 9.9], 0), ([-0.1, -0.1, 0.1], 2), (np.log([0.1, 0.7, 0.2]), 1)]):
        r = float(exact_ce(x, y))
        assert out["log_softmax_log1p"].reference[i] == r
        for name, o in out.items():
            assert o.status[i] == "ok", name
            assert abs(o.value[i] - r) <= 4 * np.spacing(r), name
    # article 001: prediction (0.1, 0.7, 0.2), label 1: the loss is -ln 0.7
    assert out["log_softmax_log1p"].value[2] == pytest.approx(-math.log(0.7), rel=1e-15)


@pytest.mark.parametrize("fmt", DEFAULT_FORMATS, ids=str)
def test_naive_softmax_overflow_edge_is_ln_max(fmt):
    """exp(x) is finite iff x <= ln(max) (up to rounding of exp): logits [d, 0],
    label 1 (loss ~ d), with d just below / above ln(max) straddle the naive
    method's failure (exp(d) = inf, then 1 / inf = 0 and -log(0) = inf)."""
    below = float(fmt.round(fmt.ln_max * (1 - 4 * fmt.eps)))
    above = float(fmt.round(fmt.ln_max * (1 + 4 * fmt.eps)))
    out = run(SOFTMAX_CE, fmt, concat([logits_case([below, 0], 1), logits_case([above, 0], 1)]))
    naive = out["naive_softmax_log"]
    assert naive.status[0] == "ok"
    assert naive.status[1] == "overflow" and naive.value[1] == np.inf and naive.events[1][0] == "overflow"
    for stable in ("shifted_softmax_log", "log_softmax", "log_softmax_log1p"):
        assert list(out[stable].status) == ["ok", "ok"]


def test_shifted_softmax_underflows_where_log_softmax_does_not():
    # [0, -40], label 1 in float16: exp(-40) = 4e-18 rounds to 0, log(0) = -inf
    out = run(SOFTMAX_CE, F16, logits_case([0, -40], 1))
    assert out["shifted_softmax_log"].status[0] == "underflow"
    assert out["shifted_softmax_log"].value[0] == np.inf
    assert out["log_softmax"].value[0] == out["log_softmax_log1p"].value[0] == 40.0


@pytest.mark.parametrize("fmt", [BF16, F32, F64], ids=str)
def test_confident_loss_is_lost_by_log_softmax_kept_by_log1p(fmt):
    """[0, -40], label 0: loss = log1p(e**-40) = 4.25e-18.  log(1 + e**-40) rounds
    1 + 4e-18 to 1 in every format (e**-40 < u), so log_softmax returns 0;
    log1p keeps it (e**-40 is a normal number in these formats)."""
    assert math.exp(-40) < fmt.unit_roundoff and math.exp(-40) > fmt.tiny
    out = run(SOFTMAX_CE, fmt, logits_case([0, -40], 0))
    assert out["log_softmax"].value[0] == 0 and out["log_softmax"].status[0] == "inaccurate"
    assert out["log_softmax_log1p"].status[0] == "ok"
    assert out["log_softmax_log1p"].ulps[0] <= 2


finite16 = st.floats(min_value=-30000, max_value=30000, allow_nan=False, width=16)


@settings(max_examples=150, deadline=None)
@given(fmt=st.sampled_from(ALL_FORMATS),
       logits=st.lists(st.floats(min_value=-1e4, max_value=1e4, allow_nan=False), min_size=1, max_size=6),
       data=st.data())
def test_log_softmax_log1p_is_nonnegative_and_finite_when_representable(fmt, logits, data):
    """The log-probability from the log1p form is <= 0 (loss >= 0) for every
    finite input, finite whenever the inputs and the exact loss are
    representable (the exact loss is at most max - min of the logits), and ok
    unless the exact loss is below the format's normal range."""
    label = data.draw(st.integers(min_value=0, max_value=len(logits) - 1))
    x = fmt.round(np.array(logits)).astype(np.float64)
    out = run(SOFTMAX_CE, fmt, logits_case(x, label))["log_softmax_log1p"]
    v = out.value[0]
    if np.all(np.isfinite(x)):
        assert not v < 0, v  # loss >= 0 (NaN is caught below)
        if (x.max() - x.min()) * 2 < fmt.max:
            assert np.isfinite(v), v
            # accurate, unless the exact loss itself is subnormal (or below) in the format
            assert out.status[0] == "ok" or abs(out.reference[0]) < fmt.tiny, (v, out.status[0])


def test_compare_covers_every_method_case_and_format():
    comparison = compare(list(EXPERIMENTS.values()), ALL_FORMATS)
    for e in EXPERIMENTS.values():
        cases = len(e.default_cases())
        rows = [r for r in comparison.results if r.experiment == e.name]
        assert len(rows) == cases * len(e.methods) * len(ALL_FORMATS)
    assert any(r.case.startswith("p=0.1,n=100") for r in comparison.results)
    counts = {(c.experiment, c.method, c.dtype): c for c in comparison.summary}
    c = counts[("likelihood", "product", "float32")]
    assert c.ok + c.overflow + c.underflow + c.nan + c.inaccurate == c.cases
