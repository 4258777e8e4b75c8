"""Issue 8's statuses across every row of `compare -d all`, checked with plain mpmath rounding."""

from __future__ import annotations

import mpmath
import numpy as np

from stabilitylab.analysis.engine import evaluate
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.likelihood import iid
from stabilitylab.experiments.softmax_ce import logits_case
from stabilitylab.numerics.formats import ALL_FORMATS, FORMATS
from stabilitylab.render.model import exact_text


def plain_round(fmt, x: mpmath.mpf) -> float | None:
    """x rounded to the format through the float64 nearest to it (None when x lies too close to a
    rounding boundary for that double rounding to be trusted)."""
    h = float(x)  # correctly rounded to float64 by mpmath (0 below float64's range)
    with np.errstate(all="ignore"):
        y = float(np.array([h]).astype(fmt.dtype).astype(np.float64)[0]) if fmt.dtype != np.float64 else h
    bits = np.dtype(f"u{fmt.dtype.itemsize}")
    if np.isfinite(y) and y != 0:
        b = int(np.array([y]).astype(fmt.dtype).view(bits)[0])
        neighbours = np.array([b - 1, b + 1]).astype(bits).view(fmt.dtype).astype(np.float64)
        mids = [(mpmath.mpf(y) + mpmath.mpf(float(n))) / 2 for n in neighbours if np.isfinite(n)]
        if any(abs(x - m) <= abs(x) * mpmath.mpf(2) ** -45 for m in mids):
            return None
    return y


def test_no_correctly_rounded_value_is_a_failure():
    """Every row of compare -d all: a value equal to the exact loss correctly rounded to the
    format never has a failure status (ok or range only)."""
    checked = 0
    for experiment in EXPERIMENTS.values():
        cases = experiment.default_cases()
        for fmt in ALL_FORMATS:
            out = evaluate(experiment, fmt, cases, fast_reference=False)
            for method in experiment.methods:
                o = out[method.name]
                for i in range(len(cases)):
                    hi, lo, s = o.exact.hi[i], o.exact.lo[i], int(o.exact.scale[i])
                    if not np.isfinite(hi):
                        continue
                    with mpmath.workdps(60):
                        x = mpmath.ldexp(mpmath.mpf(hi) + mpmath.mpf(lo), s)
                        cr = plain_round(fmt, x)
                    v = o.value[i]
                    if cr is not None and (v == cr or (np.isnan(v) and np.isnan(cr))):
                        assert o.status[i] in ("ok", "range"), (experiment.name, cases.names[i], method.name,
                                                                fmt.name, v, o.status[i])
                        checked += 1
    assert checked > 300


def test_the_product_of_tenths_in_e4m3fn_is_an_underflow():
    out = evaluate(EXPERIMENTS["likelihood"], FORMATS["float8_e4m3fn"], iid(0.1, 100))
    assert np.isnan(out["product"].value[0]) and out["product"].status[0] == "underflow"
    e5m2 = evaluate(EXPERIMENTS["likelihood"], FORMATS["float8_e5m2"], iid(0.1, 100))
    assert e5m2["product"].status[0] == "underflow"  # the same root cause in both float8 formats


def test_a_float64_subnormal_loss_is_measured_and_not_a_failure():
    """[0, -740], label 0, float64: log_softmax_log1p gives the correctly rounded 4.2e-322,
    whose relative error is ~2.6e-3 (the subnormal spacing): measured, and ok."""
    out = evaluate(EXPERIMENTS["softmax_ce"], FORMATS["float64"], logits_case([0, -740], 0))["log_softmax_log1p"]
    with mpmath.workdps(60):
        x = mpmath.log1p(mpmath.exp(-740))
        want = abs((mpmath.mpf(float(x)) - x) / x)
    assert out.value[0] == float(x) and out.status[0] == "ok"
    assert abs(out.rel_error[0] - float(want)) <= 1e-12 * float(want) and 2.5e-3 < out.rel_error[0] < 2.7e-3


def test_a_loss_above_float64s_range_is_range_with_its_exact_value_not_exact_inf_ok():
    """Issue #18: logits [1e308, -1e308], y = 1 has the exact loss 2e308, above float64's range.
    The exact value was held as float64, i.e. inf, so it read as an infinite (representable)
    loss: 'exact inf', status ok.  It is held scaled now: every method's inf is the correctly
    rounded loss of a value beyond the format, status range, and the exact value reads 2.0e+308."""
    sce = EXPERIMENTS["softmax_ce"]
    case = logits_case([1e308, -1e308], 1)
    for fast in (False, True):
        out = evaluate(sce, FORMATS["float64"], case, fast_reference=fast)
        for name, o in out.items():
            assert np.isinf(o.value[0]), name
            assert o.status[0] == "range", (name, o.status[0], fast)
            assert o.exact.text()[0] == "2.0e+308", o.exact.text()
            assert np.isfinite(o.exact.hi[0]) and o.exact.scale[0] > 0
    with mpmath.workdps(30):
        exact = mpmath.mpf(2e308)
        held = mpmath.ldexp(mpmath.mpf(float(o.exact.hi[0])) + float(o.exact.lo[0]), int(o.exact.scale[0]))
        assert abs(held - exact) <= exact * mpmath.mpf(2) ** -100  # (log1p(e**-2e308) is far below)
    assert exact_text("2.0e+308") == "2.0e+308" and exact_text("inf") == "inf"  # tables: not 'inf'
