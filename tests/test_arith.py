"""Arithmetic in a format: events from the values themselves, tree and repeat reductions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import ALL_FORMATS, FORMATS

F16, BF16, F32, F64 = (FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64"))
E4M3 = FORMATS["float8_e4m3fn"]
NARROW = [f for f in ALL_FORMATS if f.precision <= 24]  # float64 computes their + and * exactly enough


def events_of(fmt, fn, *values, ftz=False):
    a = Arith(fmt, 1, ftz=ftz)
    args = [a.load(np.array([v])) for v in values]
    y = fn(a, *args)
    return y.astype(np.float64)[0], a.events()[0]


def test_float16_multiply_underflow_is_seen_without_numpy_flags():
    # 2**-12 * 2**-13 = 2**-25 is half the smallest subnormal 2**-24: ties to even -> 0
    y, ev = events_of(F16, lambda a, x, z: a.mul(x, z), 2.0**-12, 2.0**-13)
    assert y == 0 and ev == ("underflow",)


def test_inexact_subnormal_result_is_gradual_underflow():
    # 3 * 2**-20 * 2**-5 = 3 * 2**-25 = 1.5 * 2**-24: inexact in the subnormal range
    y, ev = events_of(F16, lambda a, x, z: a.mul(x, z), 3 * 2.0**-20, 2.0**-5)
    assert 0 < y < F16.tiny and ev == ("subnormal",)
    # 2**-10 * 2**-10 = 2**-20 is subnormal but exact: no event
    y, ev = events_of(F16, lambda a, x, z: a.mul(x, z), 2.0**-10, 2.0**-10)
    assert y == 2.0**-20 and ev == ()


def test_exp_overflow_and_e4m3fn_overflow_is_nan():
    # exp(12) = 162754.8 > 65504 = float16 max
    y, ev = events_of(F16, lambda a, x: a.exp(x), 12.0)
    assert np.isinf(y) and ev == ("overflow",)
    # float8_e4m3fn has no infinity: exp(10) = 22026 > 448 gives NaN, and it is an overflow
    y, ev = events_of(E4M3, lambda a, x: a.exp(x), 10.0)
    assert np.isnan(y) and ev == ("overflow",)


def test_poles_and_invalid_operations():
    assert events_of(F32, lambda a, x: a.log(x), 0.0) == (-np.inf, ("divide_by_zero",))
    y, ev = events_of(F32, lambda a, x: a.log(x), -1.0)
    assert np.isnan(y) and ev == ("invalid",)
    y, ev = events_of(F32, lambda a, x, z: a.div(x, z), 0.0, 0.0)
    assert np.isnan(y) and ev == ("invalid",)
    y, ev = events_of(F32, lambda a, x, z: a.sub(x, z), np.inf, np.inf)
    assert np.isnan(y) and ev == ("invalid",)
    assert events_of(F32, lambda a, x, z: a.div(x, z), 1.0, 0.0) == (np.inf, ("divide_by_zero",))
    # NaN in, NaN out: nothing new happened
    y, ev = events_of(F32, lambda a, x, z: a.add(x, z), np.nan, 1.0)
    assert np.isnan(y) and ev == ()


def test_events_are_ordered_by_first_occurrence():
    # float32: (1e-30 * 1e-30) underflows to 0, then log(0) is a pole
    y, ev = events_of(F32, lambda a, x: a.log(a.mul(x, x)), 1e-30)
    assert y == -np.inf and ev == ("underflow", "divide_by_zero")


def test_input_rounding_events():
    a = Arith(F16, 3)
    a.load(np.array([1e5, 1e-9, 1e-6]))
    assert a.events() == [("overflow",), ("underflow",), ("subnormal",)]


def test_where_masks_rows():
    a = Arith(F16, 2)
    x = a.load(np.array([20.0, 20.0]))
    a.exp(x, where=np.array([True, False]))
    assert a.events() == [("overflow",), ()]


def test_quiet_gives_the_same_values_and_no_events():
    x64 = np.array([[12.0, -20.0, 0.0], [1e-4, 2.0, -1.0]])
    out = {}
    for quiet in (False, True):
        a = Arith(F16, 2, quiet=quiet)
        x = a.load(x64)
        e = a.exp(x)
        out[quiet] = (a.sub(a.div(e, a.tree(a.add, e, 0.0)[:, None]), a.mul(x, x)), a)
    (loud, a), (quiet, q) = out[False], out[True]
    assert loud.tobytes() == quiet.tobytes() and loud.dtype == quiet.dtype
    assert a.events()[0] == ("overflow", "underflow", "invalid") and q.events() == [(), ()]


def test_drop_is_shared_between_forks():
    # the log1p form's sum without the max's exp(0) = 1, once for both kernels: events replayed
    a = Arith(F16, 1)
    x = a.load(np.array([[0.0, -20.0, -30.0]]))
    forks = [a.fork(), a.fork()]
    sums = [f.tree(f.add, f.drop(f.exp(x), f.argmax(x)), 0.0) for f in forks]
    assert sums[0] is sums[1] and forks[0].events() == forks[1].events() == [("underflow",)]


def test_ftz_flushes_subnormal_results_and_inputs():
    # float32: 1e-20 * 1e-20 = 1e-40 is subnormal (tiny = 1.18e-38): kept, or flushed under FTZ
    y, ev = events_of(F32, lambda a, x: a.mul(x, x), 1e-20)
    assert 0 < y < F32.tiny and ev == ("subnormal",)
    y, ev = events_of(F32, lambda a, x: a.mul(x, x), 1e-20, ftz=True)
    assert y == 0 and ev == ("underflow",)
    y, ev = events_of(F32, lambda a, x: x, 1e-40, ftz=True)
    assert y == 0 and ev == ("underflow",)


def pairwise_reference(fmt, op, values):
    """Independent pairwise tree in plain Python: combine neighbours level by level,
    an odd last element passes up; each result is float64's (exact or once-rounded)
    result rounded to the format, which is correct rounding for p <= 24 formats."""
    level = [float(v) for v in values]
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            exact = level[i] + level[i + 1] if op == "add" else level[i] * level[i + 1]
            nxt.append(float(fmt.round(exact).astype(np.float64)))
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(NARROW), op=st.sampled_from(["add", "mul"]),
       values=st.lists(st.floats(min_value=-8, max_value=8, allow_nan=False), min_size=1, max_size=37))
def test_tree_matches_independent_pairwise(fmt, op, values):
    a = Arith(fmt, 1)
    x = a.load(np.array([values]))
    got = a.tree(getattr(a, op), x, 0.0 if op == "add" else 1.0).astype(np.float64)[0]
    want = pairwise_reference(fmt, op, fmt.round(np.array(values)).astype(np.float64))
    assert got == want or (np.isnan(got) and np.isnan(want))


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(ALL_FORMATS), op=st.sampled_from(["add", "mul"]),
       v=st.floats(min_value=0.01, max_value=2.0), n=st.integers(min_value=1, max_value=600))
def test_repeat_equals_tree_over_copies(fmt, op, v, n):
    a = Arith(fmt, 1)
    x = a.load(np.array([v]))
    b = Arith(fmt, 1)
    xs = b.load(np.full((1, n), v))
    got = a.repeat(getattr(a, op), x, np.array([n])).astype(np.float64)[0]
    want = b.tree(getattr(b, op), xs, 0.0 if op == "add" else 1.0).astype(np.float64)[0]
    assert got == want or (np.isnan(got) and np.isnan(want))
    # the same operations happen (in another order): the same events
    assert set(a.events()[0]) == set(b.events()[0])


def test_repeat_is_vectorized_over_rows_and_handles_huge_n():
    a = Arith(F64, 3)
    v = a.load(np.array([1.0, 1.0, 0.5]))
    n = np.array([1, 2**62, 3])
    out = a.repeat(a.add, v, n).astype(np.float64)
    # sums of 1.0 in a tree are exact (powers of two) until 2**53 is passed; 2**62 is a power of two
    assert out.tolist() == [1.0, 2.0**62, 1.5]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_short_row_max_and_argmax_are_numpys(dtype):
    """Arith.max / argmax reduce rows of <= 16 values column by column: the same values as np.max /
    np.argmax, bit for bit, with signed zeros, infinities, NaN (first NaN for argmax) and ties; the row
    any of arith.rows_any is np.any's."""
    from stabilitylab.numerics.arith import _row_argmax, _row_max, rows_any

    rng = np.random.default_rng(11)
    values = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, 1.0, -1.0, 2.0])
    for k in (2, 5, 16, 17):
        x = rng.choice(values, size=(20_000, k)).astype(dtype)
        got, want = _row_max(x), np.max(x, axis=-1)
        assert np.array_equal(got, want, equal_nan=True) and np.array_equal(np.signbit(got), np.signbit(want))
        assert np.array_equal(_row_argmax(x), np.argmax(x, axis=-1))
        assert np.array_equal(rows_any(x > 1, len(x)), (x > 1).any(axis=1))
