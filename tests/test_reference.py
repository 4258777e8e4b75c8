"""Fast references against a plain mpmath evaluation, where their sums fall below longdouble's range."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stabilitylab.experiments.base import ParamNames
from stabilitylab.experiments.softmax_ce import SOFTMAX_CE, Logits
from stabilitylab.numerics import reference
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.numerics.wide import LONGDOUBLE_IS_WIDE

TRUTH = SOFTMAX_CE.truth
pytestmark = pytest.mark.skipif(not LONGDOUBLE_IS_WIDE, reason="the scaled sums need an 80-bit longdouble")


def plain(x: np.ndarray, y: int) -> tuple[float, float, int]:
    """-log softmax(x)_y by mpmath at 60 digits, as (mantissa in [1, 2) as float64 hi + lo, exponent);
    (hi, lo, floor) of 2**-floor times the loss below 2**floor."""
    with mpmath.workdps(60):
        xs = [mpmath.mpf(float(v)) for v in x]
        loss = mpmath.log1p(mpmath.fsum(mpmath.exp(v - xs[y]) for i, v in enumerate(xs) if i != y))
        e = int(mpmath.floor(mpmath.log(loss, 2)))
        e = max(e, reference.SCALE_FLOOR)
        m = mpmath.ldexp(loss, -e)
        return float(m), float(m - float(m)), e


@pytest.mark.parametrize("name", ["bfloat16", "float32", "float64"])
def test_true_class_far_above_the_rest_is_summed_scaled(name):
    """Rows whose loss e**-d lies below longdouble's range (d from 11355 up to float64's max) get
    their exact value, scaled, from the vectorized path: within 2**-60 of mpmath, at the same
    exponent, and held at the floor below 2**SCALE_FLOOR (as mpmath's path holds it)."""
    fmt = FORMATS[name]
    rng = np.random.default_rng(3)
    d = np.concatenate([10.0 ** rng.uniform(3.9, 14, 300), [11355.0, 7.62e11, 1e13, 3e38]])
    d = np.asarray(fmt.round(d), dtype=np.float64)
    d = d[np.isfinite(d)]
    k = 4
    x = np.zeros((len(d), k))
    x[:, 1] = -d  # the others: -d, -d - 3, -2d
    x[:, 2] = fmt.round(-d - 3)
    x[:, 3] = fmt.round(-2 * d)
    x[:, 3] = np.where(np.isfinite(x[:, 3]), x[:, 3], -d)
    y = np.zeros(len(d), dtype=np.int64)
    cases = Logits(ParamNames("row", np.arange(len(d))), x, y, np.full(len(d), k))
    inputs = SOFTMAX_CE.load(Arith(fmt, len(d)), cases)
    for dtype in ([None, np.float64] if fmt.precision <= 24 else [None]):
        got = reference.fast(TRUTH, inputs) if dtype is None else reference.fast(TRUTH, inputs, dtype)
        scaled = 0
        for i in range(len(d)):
            want, want_lo, e = plain(x[i], 0)
            assert got.scale[i] == e, (name, d[i])
            assert not got.zero[i]
            if want == 0:
                assert got.hi[i] == 0
            else:
                assert abs((got.hi[i] - want) + (got.lo[i] - want_lo)) <= 2.0**-60 * want, (name, d[i], got.hi[i], want)
            scaled += e < -16382
        assert scaled > 200  # most rows are below longdouble's range


def test_rows_at_the_floor_boundary_go_to_mpmath():
    """A sum just below 2**SCALE_FLOOR (hi a float64 subnormal there) is left to mpmath."""
    hi = np.array([[-(2.0**40) * np.log(2) - 100.0], [-(2.0**40) * np.log(2) + 100.0], [-1e13]])
    values, handled = reference.exp_sum_scaled(hi, np.zeros_like(hi), np.ones_like(hi, dtype=bool))
    assert handled.tolist() == [False, True, True]
    assert values.scale[2] == reference.SCALE_FLOOR and values.hi[2] == 0


@pytest.mark.parametrize("name", ["bfloat16", "float32", "float64"])
def test_logits_spread_beyond_2_to_the_67(name):
    """x_i - m split as hi + lo with |lo| huge (|x_i - m| >= 2**67) once gave e^hi e^lo = 0 * inf = NaN
    (kept as the reference: the stable methods were blamed), and a clamped term's lo overflowed the
    scaled sum.  The fast references (both tiers) agree with mpmath's (reference.exact) on such rows."""
    fmt = FORMATS[name]
    big = float(fmt.max)
    rows = [([3e22, -big], 0), ([-30000.0, -big], 0), ([-30000.0, -big], 1), ([-30000.0, -50000.0, -big], 0),
            ([0.0, -big, 1e4], 2), ([-big, 5.0, -big / 3], 1), ([1e30, -1e30, -big], 0)]
    k = max(len(r) for r, _ in rows)
    x = np.array([np.pad(np.asarray(fmt.round(np.array(r)), dtype=np.float64), (0, k - len(r)),
                         constant_values=-big) for r, _ in rows])
    y = np.array([label for _, label in rows])
    cases = Logits(ParamNames("row", np.arange(len(rows))), x, y, np.full(len(rows), k))
    inputs = SOFTMAX_CE.load(Arith(fmt, len(rows)), cases)
    want = reference.exact(TRUTH, inputs)
    for dtype in ([None, np.float64] if fmt.precision <= 24 else [None]):
        got = reference.fast(TRUTH, inputs) if dtype is None else reference.fast(TRUTH, inputs, dtype)
        bound = reference.fast_error(np.longdouble if dtype is None else dtype, k)
        assert np.isfinite(got.hi).all() and np.array_equal(got.scale, want.scale), (name, dtype, got, want)
        held = want.hi == 0  # below 2**SCALE_FLOOR: held at the floor, as mpmath's path holds it
        assert np.array_equal(got.hi[held], want.hi[held])
        rel = np.abs((got.hi - want.hi) + (got.lo - want.lo))[~held] / np.abs(want.hi[~held])
        assert (rel <= bound).all(), (name, dtype, rel)
        assert np.array_equal(got.rounded(fmt), want.rounded(fmt))


def test_scaled_sum_of_a_clamped_term_with_a_large_low_part():
    values, handled = reference.exp_sum_scaled(np.array([[-20000.0, -3e38]]), np.array([[0.0, 30000.0]]),
                                               np.ones((1, 2), dtype=bool))
    with mpmath.workdps(40):
        want = mpmath.exp(-20000) + mpmath.exp(mpmath.mpf(-3e38) + 30000)
        e = int(mpmath.floor(mpmath.log(want, 2)))
        mantissa = float(mpmath.ldexp(want, -e))
    assert handled.tolist() == [True] and values.scale[0] == e
    assert abs(values.hi[0] - mantissa) <= 2.0**-60 * mantissa


def test_a_value_held_at_the_floor_prints_as_the_bound():
    """Below 2**SCALE_FLOOR only the bound is kept: the text says so instead of printing 0."""
    with mpmath.workdps(30):
        tiny = mpmath.exp(mpmath.mpf(-3e38))  # far below the floor
        near = mpmath.ldexp(mpmath.mpf(1.5), reference.SCALE_FLOOR + 3)  # above it: digits as usual
        held = reference.from_mpmath([tiny, -tiny, near])
    assert held.text() == [f"<2^{reference.SCALE_FLOOR}", f"-<2^{reference.SCALE_FLOOR}", mpmath.nstr(near, 10)]
    assert not held.zero.any() and (held.rounded(FORMATS["float64"]) == 0).all()


def test_wide_rows_remembered_across_calls_give_each_row_its_own_value(monkeypatch):
    """Wide rows are remembered across calls (the report's audits ask for the same ones): a second
    call returns the same values, a row that differs in one value gets its own (checked against
    plain mpmath, not the memo), and the memo holds at most WIDE_MEMO_VALUES values."""
    monkeypatch.setattr(reference, "_WIDE_MEMO", {})
    monkeypatch.setattr(reference, "_wide_memo_values", 0)
    monkeypatch.setattr(reference, "WIDE_MEMO_VALUES", 3 * 100)
    rng = np.random.default_rng(5)
    rows = [np.round(rng.normal(0, 3, 100), 3) for _ in range(4)]
    rows[1] = rows[0].copy()
    rows[1][7] += 0.5  # one value apart from row 0
    batches = []
    for _ in range(2):
        for x in rows:
            loaded = Logits(ParamNames("row", np.zeros(1)), x[None, :], np.array([2]), np.array([100]))
            out = reference.exact(TRUTH, SOFTMAX_CE.load(Arith(FORMATS["float64"], 1), loaded))
            batches.append((float(out.hi[0]), float(out.lo[0]), int(out.scale[0])))
    assert batches[:4] == batches[4:]
    for x, got in zip(rows, batches[:4]):
        hi, lo, e = plain(x, 2)
        value = mpmath.ldexp(mpmath.mpf(got[0]) + mpmath.mpf(got[1]), got[2])
        assert abs(value - mpmath.ldexp(mpmath.mpf(hi) + mpmath.mpf(lo), e)) <= 2.0**-100 * abs(value)
    assert batches[0] != batches[1]
    assert reference._wide_memo_values <= 3 * 100 and len(reference._WIDE_MEMO) <= 3


def test_float64_differences_exact_test_is_sufficient():
    """softmax_ce's shortcut (x - m without TwoSum's lo where _differences_exact says every difference is
    exact; per row for the bounded float64 tier) against TwoSum itself, on float32-valued rows at every
    scale and spread, and rows it must refuse."""
    from stabilitylab.experiments.softmax_ce import _differences_exact, _rows_differences_exact, _two_diff

    rng = np.random.default_rng(5)
    said = rowed = 0
    for _ in range(3000):
        k = int(rng.integers(1, 12))
        spread = np.exp2(rng.uniform(-1, 1, (3, k)) * rng.uniform(0, 25))
        x = rng.standard_normal((3, k)) * 10.0 ** rng.uniform(-20, 20) * spread
        x = x.astype(np.float32).astype(np.float64)
        _, lo = _two_diff(x, x.max(axis=1)[:, None])
        rows = _rows_differences_exact(x)
        assert not lo[rows].any()
        if _differences_exact(x):  # (the whole block's test: stricter than its rows')
            said += 1
            assert rows.all()
        rowed += int(rows.sum())
    assert 300 < said < 3000 and said * 3 < rowed < 9000  # both answers are exercised, per row too
    assert not _differences_exact(np.array([[1.0, 2.0**-29]]))  # a spread of 29 binades: refused (sufficient only)
    assert not _differences_exact(np.array([[1.0 + 2.0**-30, 0.5]]))  # 25 significant bits
    assert not _differences_exact(np.array([[1.0, 0.0]]))  # a zero: refused (not needed, but simple)
    assert not _differences_exact(np.array([[1.0, np.nan]]))
    assert _differences_exact(np.array([[1.0, 2.0**-28 * 1.5]]))


def test_longdouble_reference_in_blocks_of_columns_is_the_whole_rows(monkeypatch):
    """softmax_ce's longdouble reference sums a wide row's exps in blocks of columns (_blocked_exp_sum):
    the same values, bit for bit, as the whole-row pairwise sum, at widths around the block's multiples,
    with the max in the first, a middle and the last block."""
    from stabilitylab.experiments import softmax_ce
    from stabilitylab.experiments.softmax_ce import Loaded, fast_cross_entropy

    rng = np.random.default_rng(9)
    for k in (2 * softmax_ce._COLUMNS, 2 * softmax_ce._COLUMNS + 1, 3 * softmax_ce._COLUMNS - 1, 40_001):
        x = (rng.standard_normal((3, k)) * 4).astype(np.float32).astype(np.float64)
        x[0, 5], x[1, k // 2], x[2, k - 1] = 30.0, 30.0, 30.0
        cases = Loaded(x, rng.integers(0, k, 3))
        blocked = fast_cross_entropy(cases)
        monkeypatch.setattr(softmax_ce, "_COLUMNS", 2**40)
        whole = fast_cross_entropy(cases)
        monkeypatch.undo()
        assert np.array_equal(blocked[0], whole[0]) and np.array_equal(blocked[2], whole[2])
