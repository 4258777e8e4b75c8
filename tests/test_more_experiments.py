"""binary_ce, epsilon_clip, accumulation, gradient, float8 and flush-to-zero: the
remaining article claims, against IEEE reasoning, brute force and mpmath."""

from __future__ import annotations

import json
import math
import random

import mpmath
import numpy as np
import pytest

from stabilitylab.analysis import thresholds as th
from stabilitylab.analysis.engine import compare, evaluate
from stabilitylab.cli import main
from stabilitylab.experiments import DEFAULT_EXPERIMENTS, EXPERIMENTS
from stabilitylab.experiments.accumulation import terms
from stabilitylab.experiments.base import Settings
from stabilitylab.experiments.binary_ce import article_case, binary_case
from stabilitylab.experiments.epsilon_clip import EPSILON, facts
from stabilitylab.experiments.gradient import LOSS_SCALES, loss_scaling
from stabilitylab.experiments.softmax_ce import logits_case
from stabilitylab.numerics import running
from stabilitylab.numerics.formats import ALL_FORMATS, FORMATS

F16, BF16, F32, F64 = (FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64"))
E4M3, E5M2 = FORMATS["float8_e4m3fn"], FORMATS["float8_e5m2"]
BCE, EPS, ACC, GRAD = (EXPERIMENTS[n] for n in ("binary_ce", "epsilon_clip", "accumulation", "gradient"))


def float16_values() -> np.ndarray:
    return np.arange(0x7C00, dtype=np.uint16).view(np.float16)


def family_rows(experiment, fmt, **kw):
    return {r.method: r for r in th.family_thresholds(experiment, experiment.families[0], fmt, **kw)}


# ------------------------------------------------------------------ binary_ce
def test_article_binary_log_loss():
    """Article 002: -sum log of [0.6, 0.6, 0.9, 0.9] = -ln 0.2916 = 1.2324."""
    out = evaluate(BCE, F64, article_case())
    for name, o in out.items():
        assert o.status[0] == "ok", name
        assert o.value[0] == pytest.approx(-math.log(0.2916), rel=1e-14), name


def test_sigmoid_saturation_brute_force_float16():
    """First float16 z >= 0 where numpy's own float16 1/(1 + exp(-z)) is exactly 1:
    then log(1 - p) = log(0) and the label-0 loss is inf."""
    z = float16_values()
    one = np.float16(1)
    with np.errstate(all="ignore"):
        p = one / (one + np.exp(-z))
    first = float(z[np.argmax(p == one)])
    r = family_rows(BCE, F16)
    assert r["sigmoid_log"].first_failure == first
    assert r["sigmoid_log"].predicted == first and r["sigmoid_log"].agrees
    assert r["logits"].first_failure is None and r["sigmoid_log_clamped"].first_failure is None


def test_clamping_hides_the_failure():
    """PyTorch's clamp of log at -100 turns the inf of z = 1000, y = 0 into a finite, wrong 100."""
    out = evaluate(BCE, F32, binary_case("z", 1000, 0))
    assert out["sigmoid_log"].value[0] == np.inf
    assert out["sigmoid_log_clamped"].value[0] == 100 and out["sigmoid_log_clamped"].status[0] == "inaccurate"
    assert out["logits"].value[0] == 1000 and out["logits"].status[0] == "ok"


def test_confident_right_answer_gives_nan_through_the_sigmoid():
    """z = 20, y = 1 in float32: p rounds to 1 (e**-20 < u), so (1 - y) log(1 - p) = 0 * -inf = NaN."""
    assert math.exp(-20) < F32.unit_roundoff
    out = evaluate(BCE, F32, binary_case("z", 20, 1))
    assert np.isnan(out["sigmoid_log"].value[0]) and out["sigmoid_log"].status[0] == "nan"
    assert "invalid" in out["sigmoid_log"].events[0]
    assert out["logits"].status[0] == "ok"


# --------------------------------------------------------------- epsilon_clip
def test_epsilon_facts_by_reasoning():
    headers, rows = facts(list(ALL_FORMATS))
    by = {r[0]: dict(zip(headers, r)) for r in rows}
    assert F16.smallest_subnormal < EPSILON < F16.tiny and by["float16"]["class"] == "subnormal"
    for fmt in (E4M3, E5M2):  # below half the smallest subnormal: rounds to 0
        assert EPSILON < fmt.smallest_subnormal / 2 and by[fmt.name]["class"] == "zero"
    assert by["float32"]["class"] == "normal"
    # 1 - 1e-7 rounds to 1 iff 1e-7 is at most half the spacing below 1 (eps/4)
    for fmt in (F16, BF16, F32, F64):
        assert (by[fmt.name]["1 - eps rounds to 1"] == "yes") == (EPSILON <= fmt.eps / 4)
    ceiling = float(np.float32(-np.log(np.float32(EPSILON))))
    assert np.float32(by["float32"]["ceiling -log(eps)"]) == np.float32(ceiling)  # shortest float32 text


def test_epsilon_bias_ceiling_and_article_values():
    cases = EPS.default_cases()
    out = evaluate(EPS, F32, cases)
    names = list(cases.names)
    confident, wrong = names.index("[20,0],t=0 (confident, right)"), names.index("[0,-100],t=1 (very wrong)")
    assert out["clip_add"].value[confident] < 0  # -log(y + eps) with y + eps > 1: a negative loss
    capped = float(np.float32(-np.log(np.float32(EPSILON))))
    assert out["clip_max"].value[wrong] == capped and out["clip_max"].status[wrong] == "inaccurate"
    assert out["from_logits"].value[wrong] == 100 and out["from_logits"].status[wrong] == "ok"
    f64 = evaluate(EPS, F64, cases)["from_logits"]
    assert f64.value[0] == pytest.approx(-math.log(0.6), rel=1e-15)  # article 003: 0.51
    assert f64.value[1] == pytest.approx(-math.log(0.1), rel=1e-15)  # article 003: 2.30


# --------------------------------------------------------------- accumulation
def brute_force(fmt, v, n, compensated):
    fl = running.rounder(fmt)
    s = c = 0.0
    for _ in range(n):
        if compensated:
            y = fl(v - c)
            t = fl(s + y)
            c = fl(fl(t - s) - y)
            s = t
        else:
            s = fl(s + v)
    return s


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=str)
def test_running_sums_match_a_step_by_step_loop(fmt):
    rng = random.Random(fmt.name)
    for _ in range(12):
        v = float(fmt.round(rng.choice([1.0, 0.1, -2.302585, rng.uniform(0.001, 3)])).astype(np.float64))
        n = rng.randint(1, 5000)
        for compensated in (False, True):
            with np.errstate(all="ignore"):
                want = brute_force(fmt, v, n, compensated)
            got = running._batch(fmt, np.array([v]), np.array([n]), compensated, False)[0][0]
            assert got == want or (math.isnan(got) and math.isnan(want)), (v, n, compensated)


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=str)
def test_running_sums_of_every_count_at_once_match_the_loop(fmt):
    """One pass asked for every n in 1..N (as a threshold scan asks): each sum is the loop's,
    also for the counts a periodic stretch jumps over."""
    fl = running.rounder(fmt)
    for v in (1.0, 0.1, 3.0):
        v = float(fmt.round(v).astype(np.float64))
        for compensated in (False, True):
            running._CHECKPOINTS.clear()
            counts = np.arange(1, 3001)
            with np.errstate(all="ignore"):
                got = running._batch(fmt, np.full(len(counts), v), counts, compensated, False)[0]
                s = c = 0.0
                want = []
                for _ in counts:
                    if compensated:
                        y = fl(v - c)
                        t = fl(s + y)
                        s, c = t, fl(fl(t - s) - y)
                    else:
                        s = fl(s + v)
                    want.append(s)
            assert np.array_equal(got, np.array(want), equal_nan=True), (fmt.name, v, compensated)


def test_rounder_is_correct_rounding():
    rng = np.random.default_rng(0)
    for fmt in (F16, BF16, F32, E4M3, E5M2):
        x = rng.standard_normal(3000) * 10.0 ** rng.integers(-45, 40, 3000)
        with np.errstate(all="ignore"):
            want = fmt.round(x).astype(np.float64)
        got = np.array([running.rounder(fmt)(float(v)) for v in x])
        assert np.array_equal(got, want, equal_nan=True), fmt.name


@pytest.mark.parametrize("fmt", [F16, BF16, F32], ids=str)
def test_sequential_sum_of_ones_stalls_at_two_to_the_p(fmt):
    """1 + 2**p is a tie between 2**p and 2**p + 2 that rounds to the even 2**p: the loop stops."""
    stall = 2**fmt.precision
    out = evaluate(ACC, fmt, terms([("a", 1.0, stall), ("b", 1.0, stall + 1), ("c", 1.0, 4 * stall)]))
    assert out["sequential"].value.tolist() == [stall, stall, stall]
    assert out["kahan"].value[2] == 4 * stall or fmt is BF16  # bfloat16's compensation itself stalls
    r = family_rows(ACC, fmt)["sequential"]
    tol = fmt.default_tolerance
    expected = math.floor(stall / (1 - tol)) + 1  # first n with (n - 2**p) / n > sqrt(u)
    assert (expected - 1 - stall) / (expected - 1) <= tol < (expected - stall) / expected
    assert r.first_inaccurate == expected == r.predicted and r.first_failure is None


def test_wide_accumulation_rescues_float16():
    out = evaluate(ACC, F16, terms([("ones", 1.0, 4096)]))
    assert out["sequential"].value[0] == 2048 and out["wide"].value[0] == 4096 and out["wide"].status[0] == "ok"


# ------------------------------------------------------------------- gradient
def test_mse_gradient_vanishes_where_it_drops_below_float16():
    """Logits [-d, 0], target 1, stable sigmoid p = e / (1 + e) with e = exp(-d): the MSE
    gradient -p (1 - p)**2 is exactly 0 from the first d where e rounds to 0 (brute force:
    float64 exp rounded to float16), and that 0 is the correctly rounded gradient (status
    range, not a failure); the cross-entropy gradient stays at -1."""
    d = float16_values()
    e = np.exp(-d.astype(np.float64)).astype(np.float16)
    first_zero = float(d[np.argmax(e == 0)])
    cases = GRAD.families[0].cases(d.astype(np.float64), Settings())
    out = evaluate(GRAD, F16, cases, fast_reference=True)
    mse = out["mse_sigmoid"]
    at = int(np.argmax(mse.value == 0))
    assert float(d[at]) == first_zero == 17.34375
    assert mse.status[at] == "range"
    assert np.all(out["ce_sigmoid"].value[d.astype(np.float64) > first_zero] == -1)  # never vanishes


def test_loss_scaling_table_by_reasoning():
    headers, rows = loss_scaling([F16, BF16])
    table = {(r[0], r[1]): dict(zip(headers, r)) for r in rows}
    assert float(table[("float16", "1")]["flushed to 0"].rstrip("%")) > 1  # magnitudes below 3e-8 exist
    assert float(table[("float16", "2^16")]["flushed to 0"].rstrip("%")) < float(
        table[("float16", "1")]["flushed to 0"].rstrip("%"))
    assert float(table[("float16", "2^24")]["overflow (inf/NaN)"].rstrip("%")) > 1  # |g| 2**24 > 65504
    assert len(rows) == 2 * len(LOSS_SCALES)
    for scale in ("1", "2^8", "2^16", "2^24"):  # bfloat16 has float32's exponent range
        assert table[("bfloat16", scale)]["flushed to 0"] == "0.00%"


# ------------------------------------------------------- float8 and --ftz, CLI
def test_dtype_all_covers_every_experiment_and_format(capsys):
    assert main(["compare", "-d", "all", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    seen = {(r["experiment"], r["dtype"]) for r in doc["results"]}
    assert seen == {(e, f.name) for e in (x.name for x in DEFAULT_EXPERIMENTS) for f in ALL_FORMATS}


def test_e4m3fn_overflow_is_nan_and_classified_overflow():
    """float8_e4m3fn has no inf: exp(10) = 22026 > 448 gives NaN, and the status says overflow."""
    assert not E4M3.has_inf and E4M3.max == 448
    out = evaluate(EXPERIMENTS["softmax_ce"], E4M3, logits_case([10, 9.9, 9.9], 0))["naive_softmax_log"]
    assert np.isnan(out.value[0]) and out.status[0] == "overflow" and out.events[0][0] == "overflow"


def test_ftz_flag_changes_compare(capsys):
    """0.1**40 = 1e-40 is a float32 subnormal: kept by IEEE gradual underflow, flushed by FTZ."""
    assert F32.smallest_subnormal < 1e-40 < F32.tiny
    args = ["compare", "-e", "likelihood", "-d", "float32", "--p", "0.1", "--n", "40", "--format", "json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*args, "--ftz"]) == 0
    flushed = json.loads(capsys.readouterr().out)
    status = {doc_name: {r["method"]: r["status"] for r in doc["results"]}
              for doc_name, doc in (("plain", plain), ("ftz", flushed))}
    assert status["plain"]["product"] == "inaccurate" or status["plain"]["product"] == "ok"
    assert status["ftz"]["product"] == "underflow" and status["ftz"]["sum_log"] == "ok"
    assert flushed["settings"]["ftz"] is True


def test_ftz_reference_is_unchanged():
    """FTZ changes the arithmetic, not the exact loss."""
    plain = compare([EXPERIMENTS["likelihood"]], [F32])
    flushed = compare([EXPERIMENTS["likelihood"]], [F32], ftz=True)
    assert [r.reference for r in plain.results] == [r.reference for r in flushed.results]
    with mpmath.workdps(30):
        assert plain.results[0].reference == float(-100 * mpmath.log(mpmath.mpf(float(F32.round(0.1)))))


def test_input_that_underflows_on_load_is_out_of_range():
    """p = 1e-300 rounds to 0 in float32: log(0) = -inf is the exact loss of the rounded
    input, but the input itself was lost on the way in: status range (not ok, not a method
    failure), and the underflow event says why."""
    out = evaluate(EXPERIMENTS["likelihood"], F32, __import__("stabilitylab.experiments.likelihood",
                   fromlist=["iid"]).iid(1e-300, 3))
    for name in ("product", "sum_log"):
        assert out[name].value[0] == np.inf and out[name].status[0] == "range"
        assert out[name].events[0][0] == "underflow"


def test_running_sum_past_e4m3fn_max_is_out_of_range():
    """96 x 10 = 960 passes 448 (float8_e4m3fn's max, no inf): NaN, which is the correctly
    rounded 960 in that format: status range, the same for every summation."""
    out = evaluate(ACC, E4M3, terms([("v", 96.0, 10)]))
    for name in ("sequential", "kahan", "pairwise"):
        assert np.isnan(out[name].value[0]) and out[name].status[0] == "range", name


@pytest.mark.parametrize("args,words", [
    (["compare", "-e", "likelihood", "--logits", "x.npy"], "--logits"),
    (["compare", "-e", "softmax_ce", "--p", "0.5"], "--p / --n"),
    (["thresholds", "-e", "softmax_ce", "--family", "iid"], "no family 'iid'"),
    (["compare", "--tolerance", "inf"], "finite"),
    (["thresholds", "--tolerance", "nan"], "finite"),
])
def test_options_that_cannot_apply_are_refused(capsys, args, words):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
