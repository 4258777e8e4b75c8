"""Format facts and rounding, checked against finfo and exhaustive enumeration."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from stabilitylab.numerics.formats import ALL_FORMATS, DEFAULT_FORMATS, FORMATS, get_format, round_bits

SMALL = [f for f in ALL_FORMATS if f.dtype.itemsize <= 2]  # enumerable: <= 65536 bit patterns


def all_finite_values(fmt) -> np.ndarray:
    """Every finite value of a <= 16-bit format, sorted, as float64 (from the bit patterns)."""
    bits = np.arange(2 ** (8 * fmt.dtype.itemsize), dtype=np.uint32).astype(f"u{fmt.dtype.itemsize}")
    with np.errstate(invalid="ignore"):  # NaN bit patterns
        values = bits.view(fmt.dtype).astype(np.float64)
    return np.unique(values[np.isfinite(values)])


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=str)
def test_facts_come_from_finfo(fmt):
    info = np.finfo(fmt.dtype) if fmt.dtype in (np.float16, np.float32, np.float64) else ml_dtypes.finfo(fmt.dtype)
    assert fmt.max == float(info.max)
    assert fmt.tiny == float(info.smallest_normal)
    assert fmt.smallest_subnormal == float(info.smallest_subnormal)
    assert fmt.eps == float(info.eps)
    # IEEE-style identities that tie the finfo numbers together
    assert fmt.eps == 2.0 ** (1 - fmt.precision)
    assert fmt.unit_roundoff == 2.0 ** -fmt.precision
    assert fmt.tiny == 2.0 ** fmt.min_exponent
    assert fmt.smallest_subnormal == fmt.tiny * fmt.eps  # p - 1 fraction bits below tiny
    assert fmt.ln_max == pytest.approx(math.log(fmt.max), rel=1e-15)


@pytest.mark.parametrize("fmt", SMALL, ids=str)
def test_enumerated_extremes_match_finfo(fmt):
    values = all_finite_values(fmt)
    positive = values[values > 0]
    assert positive.max() == fmt.max
    assert positive.min() == fmt.smallest_subnormal
    normal = positive[positive >= fmt.tiny]
    assert normal.min() == fmt.tiny
    assert np.nextafter(1.0, 2.0) < 1 + fmt.eps == values[values > 1].min()


def test_has_inf_only_e4m3fn_lacks_it():
    assert {f.name for f in ALL_FORMATS if not f.has_inf} == {"float8_e4m3fn"}


def test_known_values_by_reasoning():
    # float16: 5 exponent bits (bias 15), 10 fraction bits: max = (2 - 2**-10) * 2**15
    assert FORMATS["float16"].max == (2 - 2.0**-10) * 2.0**15 == 65504.0
    # bfloat16 keeps float32's exponent range: same tiny, 8-bit significand
    assert FORMATS["bfloat16"].tiny == FORMATS["float32"].tiny == float.fromhex("0x1p-126")
    assert FORMATS["bfloat16"].precision == 8
    # float32's largest x with finite exp(x) is just below ln(max) = 88.7228...
    assert 88.72 < FORMATS["float32"].ln_max < 88.73


@pytest.mark.parametrize("alias,name", [("fp16", "float16"), ("half", "float16"), ("bf16", "bfloat16"),
                                        ("fp32", "float32"), ("single", "float32"), ("fp64", "float64"),
                                        ("double", "float64"), ("E4M3", "float8_e4m3fn"), ("e5m2", "float8_e5m2")])
def test_aliases(alias, name):
    assert get_format(alias).name == name


def test_unknown_format_lists_valid_names():
    with pytest.raises(KeyError) as err:
        get_format("float12")
    assert "float16" in err.value.args[0] and "bfloat16" in err.value.args[0] and "all" in err.value.args[0]


def test_default_formats():
    assert [f.name for f in DEFAULT_FORMATS] == ["float16", "bfloat16", "float32", "float64"]


@pytest.mark.parametrize("fmt", SMALL, ids=str)
def test_round_is_correct_rounding_exhaustively(fmt):
    """At every midpoint between neighbours: ties go to the even one, and a hair
    above/below goes up/down (ml_dtypes alone double-rounds via float32 here)."""
    v = all_finite_values(fmt)
    v = v[v >= 0]
    lo, hi = v[:-1], v[1:]
    mid = (lo + hi) / 2  # exact in float64
    assert np.array_equal(fmt.round(lo).astype(np.float64), lo)
    up = fmt.round(np.nextafter(mid, np.inf)).astype(np.float64)
    down = fmt.round(np.nextafter(mid, -np.inf)).astype(np.float64)
    assert np.array_equal(up, hi)
    assert np.array_equal(down, lo)
    tie = fmt.round(mid).astype(np.float64)
    lo_even = (fmt.round(lo).view(f"u{fmt.dtype.itemsize}") & 1) == 0
    assert np.array_equal(tie, np.where(lo_even, lo, hi))
    # sign symmetry
    assert np.array_equal(fmt.round(-mid).astype(np.float64), -tie)


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=str)
def test_round_of_a_scalar_is_the_round_of_an_array(fmt):
    """Format.round(scalar) (a 0-d array) rounds subnormals and overflow like arrays do (it once
    returned the normal-range bit rounding there: bfloat16 2**-129 * 1.2189 gave 20 * 2**-133,
    not 19 * 2**-133)."""
    rng = np.random.default_rng(5)
    with np.errstate(all="ignore"):
        x = np.concatenate([fmt.smallest_subnormal * rng.uniform(0, 200, 300), fmt.max * rng.uniform(0.9, 1.1, 100),
                            [float.fromhex("0x1.371p-129"), np.inf, -np.inf, np.nan, 0.0, -0.0]])
        whole = fmt.round(x).astype(np.float64)
        one = np.array([float(np.asarray(fmt.round(v)).astype(np.float64)) for v in x.tolist()])
    assert np.array_equal(whole, one, equal_nan=True)
    assert np.array_equal(np.signbit(whole), np.signbit(one))
    assert np.asarray(fmt.round(1.0)).shape == ()
    # the same for arrays that are not C-ordered (Fortran order, transposed, strided)
    grid = x[: 2 * (len(x) // 2)].reshape(2, -1)
    for view in (np.asfortranarray(grid), grid.T, grid[:, ::3]):
        with np.errstate(all="ignore"):
            got = fmt.round(view).astype(np.float64)
            want = fmt.round(np.ascontiguousarray(view)).astype(np.float64)
        assert got.shape == view.shape and np.array_equal(got, want, equal_nan=True)
    if fmt.precision <= 11:
        with np.errstate(all="ignore"):
            y = grid.astype(np.float32).T
            assert np.array_equal(fmt.round32(y), fmt.round32(np.ascontiguousarray(y)), equal_nan=True)


def test_round_beyond_max():
    f16 = FORMATS["float16"]
    # half an ulp above max (ulp 32 at max): ties to even -> inf; just below stays max
    assert np.isinf(f16.round(65504.0 + 16))
    assert f16.round(65504.0 + 15.99) == 65504.0
    e4m3 = FORMATS["float8_e4m3fn"]
    assert np.isnan(e4m3.round(1e6).astype(np.float64))


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=str)
def test_ulp(fmt):
    assert fmt.ulp(1.0) == fmt.eps
    assert fmt.ulp(1.5) == fmt.eps
    assert fmt.ulp(0.75) == fmt.eps / 2
    assert fmt.ulp(fmt.tiny) == fmt.smallest_subnormal
    assert fmt.ulp(0.0) == fmt.smallest_subnormal
    assert fmt.ulp(fmt.smallest_subnormal) == fmt.smallest_subnormal


def _plain_round_to_odd(fmt, x):
    """Format.round as it was written first (float32 rounded to odd, then ml_dtypes): a separate check."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        y = x.astype(np.float32)
        towards_x = np.where(x > y, np.inf, -np.inf).astype(np.float32)
        to_odd = (y != x) & np.isfinite(y) & ((y.view(np.uint32) & 1) == 0)
        y = np.where(to_odd, np.nextafter(y, towards_x), y)
        return y.astype(fmt.dtype).astype(np.float64)


NARROW = [FORMATS[n] for n in ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")]


@pytest.mark.parametrize("fmt", NARROW, ids=lambda f: f.name)
def test_round_float64_by_bits_matches_round_to_odd(fmt):
    """Random float64 at every magnitude, every format value, every midpoint and its neighbours."""
    rng = np.random.default_rng(7)
    n = 200_000
    x = rng.standard_normal(n) * 10.0 ** rng.integers(-60, 45, n)
    width = 8 * fmt.dtype.itemsize
    values = np.arange(2**width, dtype=np.uint32).astype(f"u{width // 8}").view(fmt.dtype)
    with np.errstate(all="ignore"):
        values = np.unique(values.astype(np.float64))
    values = values[np.isfinite(values)]
    mids = (values[1:] + values[:-1]) / 2
    edges = [np.inf, -np.inf, np.nan, 0.0, -0.0, 5e-324, fmt.max * 2]
    x = np.concatenate([x, values, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf), edges])
    with np.errstate(all="ignore"):
        got = fmt.round(x).astype(np.float64)
    want = _plain_round_to_odd(fmt, x)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got[~np.isnan(got)]), np.signbit(want[~np.isnan(want)]))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", NARROW, ids=lambda f: f.name)
def test_round32_matches_the_dtype_conversion(fmt):
    """Format.round32 and round_bits (integer bit operations; round32 is ml_dtypes' cast for
    bfloat16) equal numpy's / ml_dtypes' own conversion from
    float32 (correctly rounded) on 2**26 random float32 bit patterns, and on every format
    value's float32 neighbourhood: the value, the midpoints to its neighbours and the float32
    values next to those (ties, carries into the exponent, subnormals, overflow)."""
    rng = np.random.default_rng(11)
    width = 8 * fmt.dtype.itemsize
    values = np.arange(2**width, dtype=np.uint32).astype(f"u{width // 8}").view(fmt.dtype)
    with np.errstate(all="ignore"):
        values = np.unique(values.astype(np.float64))
    values = values[np.isfinite(values)]
    mids = ((values[1:] + values[:-1]) / 2).astype(np.float32)  # exact: midpoints of <= 11-bit values
    near = [values.astype(np.float32), mids]
    for k in range(1, 4):
        near += [np.nextafter(mids, np.float32(np.inf) * k), np.nextafter(mids, -np.float32(np.inf) * k)]
    with np.errstate(over="ignore"):
        beyond = np.float32(fmt.max) * np.float32([1, 1.0001, 1.01, 2])
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-45, fmt.tiny], dtype=np.float32)
    for y in [np.concatenate(near + [beyond, -beyond, special])] + [
            rng.integers(0, 2**32, 2**22, dtype=np.uint64).astype(np.uint32).view(np.float32) for _ in range(16)]:
        with np.errstate(all="ignore"):
            want = y.astype(fmt.dtype).astype(np.float64)
            results = fmt.round32(y).astype(np.float64), round_bits(y, fmt).astype(np.float64)
        for got in results:
            same = (got == want) | (np.isnan(got) & np.isnan(want))
            assert same.all(), (fmt.name, y[~same][:5])
            zero = got == 0
            assert np.array_equal(np.signbit(got[zero]), np.signbit(want[zero]))
