"""Overflow conventions of the formats without infinity (issue #19, item 4): ``nan`` (ml_dtypes, the default)
against ``saturate`` (``-d e4m3fn:sat``: +-max, as torch's CPU cast to float8_e4m3fn), the events Arith records
when it saturates, and the status the one rule gives a saturated value.

The reference for the casts is torch itself (skipped without torch): its conversion of float32 values, compared
bit for bit (as values) with Format.round32 on every float32 near each format value, midpoint and overflow
threshold, and on random float32 bit patterns."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitylab.analysis.outcome import classify
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import EVERY_FORMAT, FORMATS, get_format
from stabilitylab.numerics.policies import chosen
from stabilitylab.numerics.reference import from_longdouble

SAT = FORMATS["float8_e4m3fn:saturate"]
E4M3FN = FORMATS["float8_e4m3fn"]


def float32_probe() -> np.ndarray:
    """Every float32 at or 1-2 ulps off a value or midpoint of every 8-bit format's grid, plus 2**20 random bit
    patterns and the special values."""
    rng = np.random.default_rng(19)
    grid = np.arange(256, dtype=np.uint8)
    values = []
    import ml_dtypes

    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
        with np.errstate(all="ignore"):
            v = grid.view(getattr(ml_dtypes, name)).astype(np.float64)
        v = np.unique(v[np.isfinite(v)])
        values += [v, (v[1:] + v[:-1]) / 2, [2 * v[-1] - v[-2] / 2 - v[-1] / 2]]  # (the one above max)
    x = np.concatenate(values).astype(np.float32)
    near = [x]
    for k in (1, 2):
        up, down = x, x
        for _ in range(k):
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        near += [up, down]
    x = np.concatenate(near)
    random = rng.integers(0, 2**32, 2**20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30], dtype=np.float32)
    return np.concatenate([x, -x, random, special])


def same(got, want) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # (signalling NaN patterns)
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return ((got == want) & (np.signbit(got) == np.signbit(want))) | (np.isnan(got) & np.isnan(want))


@pytest.mark.parametrize("name, torch_name", [
    ("float8_e4m3fn:saturate", "float8_e4m3fn"),  # torch's CPU cast saturates (inf too), NaN stays NaN
    ("float8_e5m2", "float8_e5m2"),  # IEEE: overflow to inf
    ("float8_e4m3fnuz", "float8_e4m3fnuz"),  # NaN (0x80)
    ("float8_e5m2fnuz", "float8_e5m2fnuz"),
])
def test_round32_is_torch_cast(name, torch_name):
    torch = pytest.importorskip("torch")
    fmt = FORMATS[name]
    x = float32_probe()
    want = torch.from_numpy(x).to(getattr(torch, torch_name)).to(torch.float32).numpy()
    got = fmt.round32(x)
    ok = same(got, want)
    assert ok.all(), f"{(~ok).sum()} of {ok.size} differ, e.g. {x[~ok][:5]} -> {got[~ok][:5]}, torch {want[~ok][:5]}"


def test_torch_e4m3fn_is_not_the_nan_convention():
    """The default float8_e4m3fn (ml_dtypes) and torch differ exactly where the value overflows or is infinite."""
    torch = pytest.importorskip("torch")
    x = float32_probe()
    torch_values = torch.from_numpy(x).to(torch.float8_e4m3fn).to(torch.float32).numpy()
    differ = ~same(E4M3FN.round32(x), torch_values)
    with np.errstate(invalid="ignore"):
        beyond = np.isinf(x) | (np.abs(x) >= 464)  # 464 = max + ulp(max)/2 rounds to 448 (even): the tie stays
    beyond &= np.abs(x) != 464
    assert np.array_equal(differ, beyond & ~np.isnan(x))


def test_saturate_spellings():
    for spelling in ("e4m3fn:sat", "E4M3:saturate", "float8_e4m3fn:saturate", "fp8_e4m3fn:sat"):
        assert get_format(spelling) is SAT
    assert get_format("e4m3") is E4M3FN and E4M3FN.overflow == "nan"  # the old alias keeps its meaning
    assert get_format("float8_e4m3").has_inf  # IEEE e4m3 is float8_e4m3 only
    assert get_format("fp4:sat") is get_format("fp4") and get_format("fp4").saturates  # saturates already
    with pytest.raises(KeyError):
        get_format("e5m2:sat")  # has an infinity: no saturating variant
    assert SAT.max == E4M3FN.max and SAT.dtype == E4M3FN.dtype and SAT.held_twin.overflow == "inf"


def test_every_and_all():
    assert [f.name for f in chosen("all")] == ["float16", "bfloat16", "float32", "float64", "float8_e4m3fn",
                                               "float8_e5m2"]
    every = chosen("every")
    assert every == EVERY_FORMAT and {f.name for f in every} == {n for n, f in FORMATS.items() if f.signed}
    with pytest.raises(ValueError, match="scale format"):
        chosen("e8m0")
    assert chosen("e8m0", scales=True) == (FORMATS["float8_e8m0fnu"],)


@pytest.mark.parametrize("name", ["float8_e4m3fn:saturate", "float4_e2m1fn", "float6_e3m2fn"])
def test_arith_records_the_overflow_it_saturates(name):
    """x * 4 beyond max: +-max, and the overflow event at that step; an infinite operand saturates without an
    overflow (as inf is no overflow in IEEE); a pole (x / 0) saturates too, as divide_by_zero."""
    fmt = FORMATS[name]
    m = fmt.max
    a = Arith(fmt, 4)
    x = a.load(np.array([m / 2, -m / 2, 1.0, m / 4]))
    assert a.events() == [(), (), (), ()]
    y = a.mul(x, a.const(np.full(4, 4.0)))
    assert y.tolist() == [m, -m, 4.0, m]
    assert a.events() == [("overflow",), ("overflow",), (), ()]  # m / 4 * 4 = m exactly: no overflow
    assert a.saturated.tolist() == [True, True, False, False]
    z = a.div(x, a.const(np.zeros(4)))
    assert z.tolist() == [m, -m, m, m] and a.events()[2] == ("divide_by_zero",)


def test_arith_keeps_nan_where_the_format_has_none():
    """fp4 has no NaN (ml_dtypes stores NaN as a zero); the simulation keeps 0/0 a NaN, with its event."""
    fmt = FORMATS["float4_e2m1fn"]
    assert np.signbit(fmt.round(np.array([np.nan]))).tolist() == [True] and fmt.round(np.array([np.nan]))[0] == 0
    a = Arith(fmt, 1)
    zero = a.load(np.array([0.0]))
    assert np.isnan(a.div(zero, zero)).all() and a.events() == [("invalid",)]


def test_a_saturated_value_is_an_overflow():
    """-log(p) with p = 0 (an underflowed probability) is +inf in e4m3fn (status: the first event), +max in the
    saturating variant, which the rule calls lost too: the same status.  A +-max that is the correctly rounded
    exact value (the exact one beyond the range) is 'range', as inf is; a +-max never saturated is judged by its
    relative error."""
    exact_values = np.array([10.0, 600.0, 440.0])
    exact = from_longdouble(exact_values, exact_values == 0)
    statuses = {}
    for fmt in (E4M3FN, SAT):
        a = Arith(fmt, 3)
        p = a.load(np.array([2.0**-12, 1.0, 1.0]))  # 2**-12 underflows (smallest subnormal 2**-9)
        loss = a.neg(a.log(p))
        big = a.mul(a.load(np.array([1.0, 300.0, 440.0])), a.const(np.array([1.0, 2.0, 1.0])))
        v = np.where([True, False, False], loss, big)
        statuses[fmt.name] = classify(fmt, v, exact, a).status.tolist()
    assert statuses["float8_e4m3fn"] == ["underflow", "range", "ok"]
    assert statuses["float8_e4m3fn:saturate"] == ["underflow", "range", "ok"]
    # a saturated value whose exact value is in range: lost, by overflow
    a = Arith(SAT, 1)
    x = a.load(np.array([[300.0, 300.0, -200.0]]))
    s = a.add(a.add(x[:, 0], x[:, 1]), x[:, 2])  # 600 -> 448 (overflow), 448 - 200 = 248 -> 256 (tie, even)
    total = a.add(a.add(x[:, 0], x[:, 1]), a.const(np.array([0.0])))
    assert s.tolist() == [256.0] and total.tolist() == [448.0]
    exact = from_longdouble(np.array([400.0]), np.array([False]))
    assert classify(SAT, total, exact, a).status.tolist() == ["overflow"]
    assert classify(SAT, s, exact, a).status.tolist() == ["inaccurate"]  # finite and wrong: rule 3


def test_running_sums_record_the_overflow_they_saturate():
    """The sequential and Kahan loops (computed outside Arith's operations) saturate at every step in a
    saturating format and record the overflow (found by the same loop in the held twin); NaN in float8_e4m3fn.
    240 + 240 = 480 -> 448 (saturated); + 240: 448 again.  Kahan in the saturating format: t = 448,
    c = (448 - 240) - 240 = -32, y = 240 + 32 = 272, t = 448 + 272 -> 448: 448."""
    from stabilitylab.experiments import accumulation

    for fmt, want in ((SAT, [448.0, 96.0]), (E4M3FN, [np.nan, 96.0])):
        for kernel in (accumulation.sequential, accumulation.kahan):
            a = Arith(fmt, 2)
            x = accumulation.load(a, accumulation.Terms(("big", "small"), np.array([240.0, 32.0]), np.array([3, 3])))
            got = kernel(a, x)
            np.testing.assert_array_equal(got, want)
            assert a.events() == [("overflow",), ()]
            assert a.saturated.tolist() == [fmt.saturates, False]


def test_saturated_rows_respect_where_and_shared_results():
    """Rows outside ``where`` are computed but not used: their saturation is not theirs (as their events); a
    fork that reuses a shared result gets its saturated rows too."""
    a = Arith(SAT, 2)
    x = a.load(np.array([300.0, 300.0]))
    a.add(x, x, where=np.array([False, True]))
    assert a.saturated.tolist() == [False, True]
    b = Arith(SAT, 1)
    z = b.load(np.array([[300.0, 300.0]]))
    first, second = b.fork(), b.fork()
    first.shift(first.exp(z))  # exp(300) saturates; shared by the forks
    assert first.saturated.tolist() == [True]
    second.exp(z)
    assert second.saturated.tolist() == [True] and second.events() == [("overflow",)]


def test_thresholds_first_failure_counts_a_saturated_infinity(capsys):
    """A +-max that replaced an infinity is the saturating format's 'first failure', where the nan convention's
    value is NaN: the same parameters for the sums that overflow."""
    from stabilitylab.cli import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["thresholds", "-e", "accumulation", "-e", "likelihood", "-d", "e4m3fn", "-d", "e4m3fn:sat",
                  "--format", "json"], prog_name="stabilitylab")
    assert done.value.code == 0
    import json

    rows = json.loads(capsys.readouterr().out)["thresholds"]
    by = {(r["family"], r["method"], r["dtype"]): r["first_failure"] for r in rows}
    for family, method in (("ones", "pairwise"), ("ones", "wide"), ("iid", "sum_log"), ("iid", "product")):
        plain, sat = by[(family, method, "float8_e4m3fn")], by[(family, method, "float8_e4m3fn:saturate")]
        assert plain is not None and sat == plain, (family, method, plain, sat)
