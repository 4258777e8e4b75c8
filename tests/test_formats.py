"""Format: derived facts, names and aliases, rounding of scalars and strided arrays, round_bits.

The constants, rounding, ulp and crmath of every format: tests/test_format_conformance.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from stabilitylab.numerics.formats import ALL_FORMATS, DEFAULT_FORMATS, FORMATS, get_format, round_bits


def all_finite_values(fmt) -> np.ndarray:
    """Every finite value of a <= 16-bit format, sorted, as float64 (from the bit patterns)."""
    bits = np.arange(2 ** (8 * fmt.dtype.itemsize), dtype=np.uint32).astype(f"u{fmt.dtype.itemsize}")
    with np.errstate(invalid="ignore"):  # NaN bit patterns
        values = bits.view(fmt.dtype).astype(np.float64)
    return np.unique(values[np.isfinite(values)])


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=str)
def test_derived_facts(fmt):
    """The facts derived from the constants (the constants themselves: test_format_conformance.py)."""
    assert fmt.tiny == 2.0 ** fmt.min_exponent
    assert fmt.ln_max == pytest.approx(math.log(fmt.max), rel=1e-15)
    assert fmt.ln_smallest_subnormal == pytest.approx(math.log(fmt.smallest_subnormal), rel=1e-15)
    assert fmt.default_tolerance == math.sqrt(fmt.unit_roundoff)


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


BF16 = FORMATS["bfloat16"]


def test_round_bits_of_float32_for_bfloat16():
    """round_bits on float32 input for bfloat16 (round32's bfloat16 path: test_round_bfloat16_is_round_bits;
    round32 and round of every format: test_format_conformance.py): equal to ml_dtypes' cast on 2**22 random float32
    patterns and on every bfloat16 value's neighbourhood (midpoints and the float32 values next to them)."""
    rng = np.random.default_rng(11)
    values = all_finite_values(BF16)
    mids = ((values[1:] + values[:-1]) / 2).astype(np.float32)
    near = [values.astype(np.float32), mids]
    for k in range(1, 4):
        near += [np.nextafter(mids, np.float32(np.inf) * k), np.nextafter(mids, -np.float32(np.inf) * k)]
    with np.errstate(over="ignore"):
        beyond = np.float32(BF16.max) * np.float32([1, 1.0001, 1.01, 2])
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-45, BF16.tiny], dtype=np.float32)
    random = rng.integers(0, 2**32, 2**22, dtype=np.uint64).astype(np.uint32).view(np.float32)
    y = np.concatenate(near + [beyond, -beyond, special, random])
    with np.errstate(all="ignore"):
        want = y.astype(BF16.dtype).astype(np.float64)
        got = round_bits(y, BF16).astype(np.float64)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same.all(), y[~same][:5]
    zero = got == 0
    assert np.array_equal(np.signbit(got[zero]), np.signbit(want[zero]))


def _bfloat16_inputs() -> np.ndarray:
    rng = np.random.default_rng(12)
    values = all_finite_values(BF16).astype(np.float32)
    bits = values.view(np.uint32)
    # every bfloat16 value with each pattern of the dropped half that decides a rounding: below, at and above
    # the tie, the extremes; NaNs with payloads (quiet, signalling, all ones) of both signs
    low = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
    near = (bits[:, None] | low[None, :]).ravel()
    nans = np.array([0x7FC00000, 0x7F800001, 0x7FFFFFFF, 0xFFC00000, 0xFF800001, 0xFFFFFFFF, 0x7FBF8000], np.uint32)
    random = rng.integers(0, 2**32, 2**22, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([near, nans, random]).view(np.float32)


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.view(np.uint32) == b.view(np.uint32)


def test_round_bfloat16_is_round_bits():
    """round32's bfloat16 path (four integer passes) gives round_bits' bits, NaN payloads included."""
    from stabilitylab.numerics.formats import round_bfloat16

    y = _bfloat16_inputs()
    with np.errstate(all="ignore"):
        got, want = round_bfloat16(y), round_bits(y, BF16)
    same = _same_bits(got, want)
    assert same.all(), y[~same][:5]
    assert np.array_equal(BF16.round32(y[:1000]).view(np.uint32), want[:1000].view(np.uint32))
    two = y[: 2**12].reshape(64, 64).T  # (not contiguous)
    assert _same_bits(round_bfloat16(two), round_bits(np.ascontiguousarray(two), BF16)).all()
    # a 0-d array or a scalar keeps its shape (np.ascontiguousarray makes it 1-d), as round_bits keeps it
    for v in (np.float32(1 + 2**-8), np.array(1 + 2**-8, np.float32), 1 + 2**-8):
        assert round_bfloat16(v).shape == () and BF16.round32(v).shape == () and float(BF16.round32(v)) == 1.0


@pytest.mark.slow
def test_round_bfloat16_on_every_float32():
    from stabilitylab.numerics.formats import round_bfloat16

    for start in range(0, 2**32, 2**24):
        y = np.arange(start, start + 2**24, dtype=np.uint64).astype(np.uint32).view(np.float32)
        with np.errstate(all="ignore"):
            same = _same_bits(round_bfloat16(y), round_bits(y, BF16))
        assert same.all(), y[~same][:5]
