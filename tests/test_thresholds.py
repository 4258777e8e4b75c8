"""Thresholds proved against independent reasoning and brute force."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stabilitylab.analysis import thresholds as th
from stabilitylab.analysis.engine import evaluate
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.base import Settings
from stabilitylab.numerics.formats import FORMATS

LIK, SCE = EXPERIMENTS["likelihood"], EXPERIMENTS["softmax_ce"]
F16, F32, F64 = FORMATS["float16"], FORMATS["float32"], FORMATS["float64"]


def rows(experiment, family, fmt, **kw):
    return {r.method: r for r in th.family_thresholds(experiment, experiment.family(family), fmt, **kw)}


def float16_values() -> np.ndarray:
    """Every finite float16 >= 0, ascending (bit patterns 0 .. 0x7bff)."""
    return np.arange(0x7C00, dtype=np.uint16).view(np.float16)


@pytest.mark.parametrize("fmt,n", [(F32, 46), (F64, 324)], ids=["float32", "float64"])
def test_product_of_tenths_first_infinite_at(fmt, n):
    """fl(0.1)**n first drops to at most smallest_subnormal/2 (so rounds to 0) at n."""
    p, half = mpmath.mpf(float(fmt.round(0.1))), mpmath.mpf(fmt.smallest_subnormal) / 2
    with mpmath.workdps(60):
        assert p ** (n - 1) > half >= p**n
    r = rows(LIK, "iid", fmt)["product"]
    assert r.first_failure == n and r.failure == "underflow"
    assert r.predicted == n and r.agrees
    assert r.first_inaccurate <= n


def test_ftz_moves_the_float32_product_threshold_to_38():
    """Flush-to-zero: the product dies as soon as it is below tiny = 1.18e-38:
    0.1**37 = 1e-37 is normal, 0.1**38 = 1e-38 < tiny."""
    r = rows(LIK, "iid", F32, settings=Settings(ftz=True))["product"]
    assert r.first_failure == 38 and r.predicted == 38


def test_float32_naive_softmax_overflow_is_past_88_72283172607422():
    """The largest float32 x with finite exp(x) is 88.72283172607422, so the naive
    softmax of [d, 0] first fails at the next float32."""
    last = np.float32(88.72283172607422)
    with np.errstate(over="ignore"):
        assert np.isfinite(np.exp(last)) and np.isinf(np.exp(np.nextafter(last, np.float32(np.inf))))
    r = rows(SCE, "overflow", F32)["naive_softmax_log"]
    assert r.first_failure == float(np.nextafter(last, np.float32(np.inf))) == 88.72283935546875
    assert r.failure == "overflow"  # inf / inf = NaN, caused by the overflow of exp
    assert r.exact_failure and r.predicted == r.first_failure and r.agrees


def test_float16_naive_thresholds_by_brute_force():
    """Scan every float16 with numpy directly (no stabilitylab arithmetic)."""
    d = float16_values()
    with np.errstate(all="ignore"):
        first_exp_inf = d[np.argmax(np.isinf(np.exp(d)))]
        first_exp_zero = d[np.argmax(np.exp(-d) == 0)]
    assert rows(SCE, "overflow", F16)["naive_softmax_log"].first_failure == float(first_exp_inf)
    under = rows(SCE, "underflow", F16)
    assert under["naive_softmax_log"].first_failure == float(first_exp_zero)
    assert under["shifted_softmax_log"].first_failure == float(first_exp_zero)
    assert under["log_softmax"].first_failure is None and under["log_softmax_log1p"].first_failure is None


def test_float16_sum_of_logs_overflow_by_independent_pairwise_sum():
    """The float16 tree sum of n copies of log(fl16(0.1)) first overflows at n = 28451."""
    r = rows(LIK, "iid", F16)["sum_log"]
    n = r.first_failure
    step = np.log(np.float16(0.1))  # numpy's float16 log, as the kernel computes it

    def tree(k):
        level = [step] * k
        with np.errstate(over="ignore"):
            while len(level) > 1:
                level = [level[i] + level[i + 1] for i in range(0, len(level) - 1, 2)] + (
                    [level[-1]] if len(level) % 2 else [])
        return level[0]

    assert np.isfinite(tree(n - 1)) and np.isinf(tree(n))
    assert r.failure == "overflow" and n == 28451


FLOAT_FAMILIES = [(e, f) for e in EXPERIMENTS.values() for f in e.families if not f.integer]


@pytest.mark.parametrize("fmt,settings", [(F16, Settings()), (FORMATS["bfloat16"], Settings()),
                                          (F16, Settings(ftz=True))], ids=["float16", "bfloat16", "float16-ftz"])
@pytest.mark.parametrize("experiment,family", FLOAT_FAMILIES, ids=[f"{e.name}/{f.name}" for e, f in FLOAT_FAMILIES])
def test_proof_search_agrees_with_exhaustive_scan(monkeypatch, fmt, settings, experiment, family):
    """Force the path float32 and float64 take (bisection, interval proofs, point-by-point
    scans) on a 16-bit format and compare with the scan of every value: every threshold,
    first_inaccurate included (where the error flickers around the tolerance), equal and exact."""
    scanned = {r.method: r for r in th._family_thresholds(experiment, family, fmt, settings, None, 16)}
    monkeypatch.setattr(th, "EXHAUSTIVE_POINTS", 0)
    monkeypatch.setattr(th, "LEAF", 4)  # prove as much as possible, so that the proofs are what is tested
    proved = th._family_thresholds(experiment, family, fmt, settings, None, 16)
    for r in proved:
        s = scanned[r.method]
        assert (r.first_inaccurate, r.first_failure, r.failure) == (s.first_inaccurate, s.first_failure, s.failure)
        assert r.exact_inaccurate and r.exact_failure and s.exact_inaccurate and s.exact_failure


def test_thresholds_json_and_table(capsys):
    import json

    from stabilitylab.cli import main

    assert main(["thresholds", "-d", "float32", "--family", "iid", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "stabilitylab.thresholds/1"
    first = doc["thresholds"][0]
    assert list(first)[:11] == ["experiment", "family", "method", "dtype", "parameter", "first_inaccurate",
                                "first_failure", "failure", "predicted", "formula", "search_range"]
    product = next(t for t in doc["thresholds"] if t["method"] == "product")
    assert product["first_failure"] == 46 and isinstance(product["first_failure"], int)
    assert product["search_range"] == [1, th.INTEGER_UPPER]
    assert main(["thresholds", "-d", "float32", "--family", "softmax_ce/overflow", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    naive = next(t for t in doc["thresholds"] if t["method"] == "naive_softmax_log")
    assert naive["first_failure"] == 88.72283935546875  # repr round-trips exactly
    assert main(["thresholds", "--family", "nope"]) == 2
    assert "no family 'nope'" in capsys.readouterr().err


def test_float64_underflow_first_inaccurate_is_733_362470436718_not_a_false_exact_733_97():
    """Issue #18: the interval proof held a subnormal exp(-d)'s error as relative (its absolute
    term smallest_subnormal / 2 is 0 in float64), certified the range containing the true first
    failure and flagged 733.9748642608339 exact.  The first failure is 733.362470436718 (relative
    error 1.05367122570e-8 > sqrt(u) = 1.05367121277e-8), the float64 just below it is ok."""
    out = rows(SCE, "underflow", F64)
    first = 733.362470436718
    for method in ("naive_softmax_log", "shifted_softmax_log"):
        r = out[method]
        assert r.first_inaccurate == first and r.exact_inaccurate, r
        assert r.inaccurate_status == "inaccurate"
    below = float(np.nextafter(first, 0.0))
    cases = SCE.family("underflow").cases(np.array([below, first]), Settings())
    got = evaluate(SCE, F64, cases, methods=["naive_softmax_log", "shifted_softmax_log"])
    for o in got.values():
        assert list(o.status) == ["ok", "inaccurate"]


def test_float64_never_fails_in_the_subnormal_range_is_not_claimed_exact_without_a_proof():
    """Issue #18: 'never fails' of the log1p form (confident, overflow families) rested on the same
    unsound step: its loss is a subnormal exp(-d) there, ok only because it is the correctly rounded
    loss at every d, which no range bound proves.  It is reported as none found, not as exact,
    with the value below which every d was verified."""
    for family in ("confident", "overflow"):
        r = rows(SCE, family, F64)["log_softmax_log1p"]
        assert r.first_inaccurate is None and not r.exact_inaccurate, r
        assert r.verified_inaccurate is not None and 700 < r.verified_inaccurate < 745.2


def test_ftz_float64_log1p_fails_from_708_3964185322642_not_none_found():
    """Issue #18: under flush-to-zero the log1p form's loss exp(-d) is flushed to 0 from
    d = -ln(tiny) on, while the exact loss still rounds to a subnormal (up to
    -ln(smallest_subnormal / 2)): it fails in a window of 2**-11 of float64's grid, between the
    bisection's points ('none found').  The search now also tries the range landmarks, and the
    interval bound adds its absolute term (tiny under ftz) only where a result may be below tiny,
    so every d below is proven: exact."""
    settings = Settings(ftz=True)
    first = 708.3964185322642
    for family in ("confident", "overflow"):
        r = rows(SCE, family, F64, settings=settings)["log_softmax_log1p"]
        assert r.first_inaccurate == first and r.exact_inaccurate, r
    cases = SCE.family("confident").cases(np.array([float(np.nextafter(first, 0.0)), first]), settings)
    o = evaluate(SCE, F64, cases, methods=["log_softmax_log1p"], ftz=True)["log_softmax_log1p"]
    assert list(o.status) == ["ok", "underflow"] and o.value[1] == 0  # (exp(-d) flushed: an underflow)
    assert r.inaccurate_status == "underflow"


@pytest.mark.parametrize("dtype", ["float8_e5m2", "float16", "float32"])
def test_integer_scan_in_runs_gives_the_point_by_point_answers(monkeypatch, dtype):
    """The integer scan decides runs of n from the exact values at their ends only where the format holds
    every input that moves with n: float8_e5m2 rounds z_loss's [n, n - 2, n - 5] (at n = 37 to [36, 36, 32],
    whose exact loss is not between its neighbours': decided from the ends, 37 was called inaccurate),
    float16 and float32 hold them.  Every threshold equals the scan without runs."""
    variants = EXPERIMENTS["softmax_ce_variants"]
    family, fmt = variants.family("z_loss"), FORMATS[dtype]
    search = th._Search(variants, family, fmt, Settings(), None, 16)
    held = search._held(np.arange(search.grid.start, search.grid.start + 64))
    assert held.all() if dtype != "float8_e5m2" else not held[37:].all()
    with_runs = th._family_thresholds(variants, family, fmt, Settings(), None, 16)
    monkeypatch.setattr(th, "INTEGER_RUN", 2**40)  # (no whole run: every n alone)
    assert th._family_thresholds(variants, family, fmt, Settings(), None, 16) == with_runs
    if dtype == "float8_e5m2":
        first = {r.method: (r.first_inaccurate, r.inaccurate_status) for r in with_runs}
        assert first["log_softmax"] == (240, "underflow")
