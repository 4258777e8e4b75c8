"""Block-scaled formats (MX, NVFP4): quantize() agrees with the independent plain checker
(tests/independent/block_quantizer_check.py) on random and adversarial blocks, the flush findings agree with a
scan, the format constants agree with ml_dtypes, and the docs' facts table is what the code says."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from stabilitylab.numerics import blockscale
from stabilitylab.numerics.blockscale import (
    BLOCK_FORMATS,
    ELEMENT_FORMATS,
    error_summary,
    facts_table,
    first_failing_spread,
    flush_threshold,
    flushed_fraction,
    get_block_format,
    quantize,
)

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("block_quantizer_check",
                                               ROOT / "tests" / "independent" / "block_quantizer_check.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)
NAMES = list(BLOCK_FORMATS)


def _compare(name: str, x: np.ndarray, tensor_amax: float | None = None) -> None:
    """quantize() and the checker agree exactly on values, flushed, saturated and block scales."""
    fmt = get_block_format(name)
    q = quantize(fmt, x, tensor_amax)
    rows = x.reshape(-1, x.shape[-1]).tolist()
    values, flushed, saturated, scales = check.quantize_rows(name, rows, tensor_amax)
    got_v = q.values.reshape(len(rows), -1)
    bad = []
    for i, row in enumerate(values):
        for j, want in enumerate(row):
            got = float(got_v[i, j])
            ok = math.isnan(got) if isinstance(want, float) else (not math.isnan(got) and Fraction(got) == want)
            if not ok:
                bad.append((i, j, rows[i][j], got, want))
    assert bad == [], f"{name}: {len(bad)} values differ (row, col, x, got, wanted): {bad[:5]}"
    assert q.flushed.reshape(len(rows), -1).tolist() == flushed
    assert q.saturated.reshape(len(rows), -1).tolist() == saturated
    got_s = q.scale.reshape(len(rows), -1)
    for i, row in enumerate(scales):
        for j, want in enumerate(row):
            got = float(got_s[i, j])
            assert (math.isnan(got) if isinstance(want, float) else Fraction(got) == want), (name, i, j, got, want)


# ---------------------------------------------------------------------------------------------------------
# constants


@pytest.mark.parametrize("elem", list(ELEMENT_FORMATS.values()), ids=lambda e: e.name)
def test_element_constants_match_ml_dtypes(elem):
    fi = ml_dtypes.finfo(getattr(ml_dtypes, elem.name))
    assert (elem.max, elem.min_normal, elem.min_subnormal) == (float(fi.max), float(fi.smallest_normal),
                                                               float(fi.smallest_subnormal))
    assert elem.bits == fi.bits


@pytest.mark.parametrize("name", list(check.ELEMENTS))
def test_checker_decodes_every_finite_value_ml_dtypes_has(name):
    dt = np.dtype(getattr(ml_dtypes, name))
    bits = 8 if dt.itemsize == 1 else 16
    allv = np.arange(2 ** bits, dtype=np.uint8 if bits == 8 else np.uint16).view(dt).astype(np.float64)
    if name.startswith(("float6", "float4")):  # stored in a byte: only the low patterns are the format's
        allv = np.arange(2 ** ELEMENT_FORMATS[name].bits, dtype=np.uint8).view(dt).astype(np.float64)
    ml = sorted({Fraction(float(v)) for v in allv if math.isfinite(v) and v >= 0})
    mine = sorted({v for v, _ in check.table(name)})
    assert mine == ml


def test_scale_codes_decode_to_the_scales():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 96)) * np.exp(rng.uniform(-30, 30, (4, 1)))).astype(np.float32)
    for name in NAMES:
        q = quantize(get_block_format(name), x)
        if name == "nvfp4":
            s_b = q.scale_code.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
            np.testing.assert_array_equal(s_b * q.tensor_scale, q.scale)
        else:
            np.testing.assert_array_equal(q.scale_code.view(ml_dtypes.float8_e8m0fnu).astype(np.float64), q.scale)


def test_aliases_and_unknown_names():
    assert get_block_format("MXFP8") is BLOCK_FORMATS["mxfp8_e4m3"]
    assert get_block_format("mxfp6") is BLOCK_FORMATS["mxfp6_e2m3"]
    with pytest.raises(KeyError, match="nvfp4"):
        get_block_format("mxfp5")


# ---------------------------------------------------------------------------------------------------------
# against the checker


def _random_rows(rng, rows: int, n: int, dtype) -> np.ndarray:
    mag = np.exp2(rng.uniform(-24, 24, (rows, n)) + rng.uniform(-40, 40, (rows, 1)))
    x = (mag * rng.choice([-1.0, 1.0], (rows, n))).astype(dtype)
    x[rng.random((rows, n)) < 0.05] = 0
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_random_blocks_agree_with_the_checker(name, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{name} {np.dtype(dtype).name}".encode()))
    _compare(name, _random_rows(rng, 5, 70, dtype))  # 70 = 2 * 32 + 6 = 4 * 16 + 6: a short last block
    narrow = (rng.standard_normal((4, 48)) * 3).astype(dtype)  # a spread the elements can mostly hold
    _compare(name, narrow)


def _adversarial(name: str, dtype) -> list[list[float]]:
    fmt = get_block_format(name)
    B, top, sub = fmt.block_size, fmt.element_max, fmt.element_min_subnormal
    f = np.dtype(dtype).type
    up = float(np.nextafter(f(8.0), f(np.inf)))
    blocks = [
        [top * 2.0 ** k for k in (0,)] + [top * 0.5, -top, 1.0] + [0.0] * (B - 4),  # amax at the element max
        [top * 4] + [top * 4 * v for v in (0.99, 0.5, 0.25, 0.126)] + [0.0] * (B - 5),
        [up, 8.0, -7.999, 1.0, 0.5, 0.25, 0.125, 0.0625] + [0.0] * (B - 8),  # amax just above a power of two
        [0.0] * B,  # all zero
        [-0.0, 0.0] * (B // 2),
        [sub * m for m in range(B)],  # every element a subnormal of the element grid (scale 1 for MX)
        [1e4, 1e-30, -1e-30, 3.0, 1e-3] + [1e-20] * (B - 5),  # flush the small ones
        [1.0, float("nan")] + [0.5] * (B - 2),
        [float("inf"), 1.0] + [0.0] * (B - 2),
        [-float("inf"), -1.0] + [2.0] * (B - 2),
        [-v for v in range(B)],  # negative values
        [k + 0.5 for k in range(B)],  # ties in the element grid
        [4.0, 2.5, 0.25, 0.75, 5.0, 7.5, 3.5, 1.25, 0.375, 0.125] + [0.0] * (B - 10),  # ties for e2m1 at X = 1
        [1e-40, 3e-41, -1e-42] + [0.0] * (B - 3),  # float32 subnormals: MX scale clamped at 2^-127
    ]
    if dtype == np.float64:
        blocks += [[1e300, 1.0] + [0.0] * (B - 2), [1e-300, -3e-301] + [0.0] * (B - 2)]
    return blocks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_adversarial_blocks_agree_with_the_checker(name, dtype):
    B = get_block_format(name).block_size
    rows = _adversarial(name, dtype)
    with np.errstate(over="ignore", under="ignore"):
        x = np.array(rows, dtype=dtype)
    assert x.shape == (len(rows), B)
    _compare(name, x)
    # the same blocks one after another in one row, with a short block at the end
    _compare(name, np.concatenate([x.reshape(-1), x[0, :5]]).reshape(1, -1))


@pytest.mark.parametrize("tensor_amax", [None, 1000.0, 3.0, 0.0])
def test_nvfp4_tensor_amax_from_the_caller(tensor_amax):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 40)) * 10).astype(np.float32)
    x[2] = 0
    if tensor_amax == 0.0:
        x[:] = 0
    _compare("nvfp4", x, tensor_amax)
    q = quantize(get_block_format("nvfp4"), x, tensor_amax)
    if tensor_amax == 3.0:  # below the blocks' amax: the block scales saturate at 448, then the elements
        assert q.scale_saturated.any() and q.saturated.any()
    else:
        assert not q.scale_saturated.any()


def test_nvfp4_float64_inputs_next_to_midpoints():
    """float64 x within a few ulps of an e2m1 midpoint times the block scale (and of 6 X, the saturation edge):
    quantize() rounds the float64 quotient, the checker the exact one; they agree (the module's Exactness
    argument), on both sides of every midpoint."""
    fmt = get_block_format("nvfp4")
    amax = 6.0 * 448.0 * 0.001
    X = float(quantize(fmt, np.array([[amax]])).scale[0, 0])
    row = [amax]
    for mid in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0):
        x = np.float64(mid * X)
        row += [float(x), float(np.nextafter(x, 0)), float(np.nextafter(x, np.inf)),
                float(np.nextafter(np.nextafter(x, 0), 0))]
    row += [0.0] * (-len(row) % 16)
    _compare("nvfp4", np.array([row]), tensor_amax=amax)
    q = quantize(fmt, np.array([row]), amax)
    assert q.saturated[0, 1:].any() and q.flushed.any()


# ---------------------------------------------------------------------------------------------------------
# flushed / saturated counts, findings


def test_flushed_and_saturated_counts_on_a_constructed_block():
    """MXFP4, amax 7.9: X = 2^(2 - 2) = 1, so |x| <= 0.25 flushes (0.25 is a tie: to 0, the even one) and
    |x| > 6 saturates."""
    x = np.array([7.9, 0.25, 0.2, 0.3, -0.25, 0.0, 1e-30, -6.5, 6.0, 0.26, -0.1] + [0.0] * 21, dtype=np.float32)
    q = quantize(get_block_format("mxfp4"), x)
    assert q.n_flushed == 5  # 0.25, 0.2, -0.25, 1e-30, -0.1
    assert np.flatnonzero(q.flushed).tolist() == [1, 2, 4, 6, 10]
    assert np.flatnonzero(q.saturated).tolist() == [0, 7]
    assert q.n_nonzero == 10
    assert flushed_fraction(q) == 0.5
    assert q.values[:3].tolist() == [6.0, 0.0, 0.0] and math.copysign(1, q.values[4]) == -1  # -0.25 -> -0


@pytest.mark.parametrize("name", NAMES)
def test_first_failing_spread_matches_a_scan(name):
    """For several amax, quantize [amax, x] for x around amax / spread: x flushes iff amax / x >= spread."""
    fmt = get_block_format(name)
    for amax in (1.0, 1.5, 4.0, 5.0, 7.99, 448.0, 1e-3, 3e5):
        T = float(flush_threshold(fmt, amax))
        R = float(first_failing_spread(fmt, amax))
        assert R == amax / T
        xs = [T]
        lo = hi = np.float64(T)
        for _ in range(3):
            lo, hi = np.nextafter(lo, 0), np.nextafter(hi, np.inf)
            xs += [float(lo), float(hi)]
        xs += [T * f for f in (0.5, 0.9, 1.1, 2.0)]
        row = np.array([amax] + xs + [0.0] * (fmt.block_size - 1 - len(xs)))
        q = quantize(fmt, row)
        flushed = q.flushed[1:1 + len(xs)].tolist()
        assert flushed == [amax / x >= R if name != "nvfp4" else x <= T for x in xs], (amax, T)


def test_flush_ratio_is_the_smallest_over_power_of_two_amax():
    """MX: first_failing_spread is 2^(emax - emin + m + 1) times amax's significand: the table's ratio at a
    power of two, approaching twice it just below the next."""
    for name in NAMES[:-1]:
        fmt = get_block_format(name)
        assert first_failing_spread(fmt, 8.0) == fmt.flush_ratio
        assert fmt.flush_ratio < first_failing_spread(fmt, 15.99) < 2 * fmt.flush_ratio
    assert first_failing_spread(get_block_format("nvfp4"), 2.625) == 24.0  # s_t = 2^-10, s_b = 448: exact


def test_error_summary():
    x = np.array([7.9, 0.25, 0.3, 5.0] + [0.0] * 28, dtype=np.float32)
    q = quantize(get_block_format("mxfp4"), x)
    s = error_summary(x, q)
    want_abs = max(abs(float(v) - float(w)) for v, w in zip(q.values, x))
    assert s["max_abs_error"] == want_abs
    assert s["max_rel_error"] == 1.0  # 0.25 flushed


# ---------------------------------------------------------------------------------------------------------
# shapes, tiles, inputs


def test_tiles_do_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(3)
    x = _random_rows(rng, 3, 1000, np.float32)
    for name in ("mxfp8_e4m3", "nvfp4"):
        whole = quantize(get_block_format(name), x)
        monkeypatch.setattr(blockscale, "_TILE", 48)  # tiles cut rows
        tiled = quantize(get_block_format(name), x)
        monkeypatch.setattr(blockscale, "_TILE", 5000)  # tiles of several rows
        rows = quantize(get_block_format(name), x)
        monkeypatch.undo()
        for q in (tiled, rows):
            np.testing.assert_array_equal(q.values, whole.values)
            np.testing.assert_array_equal(q.flushed, whole.flushed)
            np.testing.assert_array_equal(q.scale, whole.scale)


def test_shapes_and_dtypes():
    fmt = get_block_format("mxfp8")
    x = np.random.default_rng(2).standard_normal((2, 3, 40)).astype(np.float32)
    q = quantize(fmt, x)
    assert q.values.shape == x.shape and q.values.dtype == np.float32 and q.scale.shape == (2, 3, 2)
    assert q.short_block
    nc = quantize(fmt, x.transpose(1, 0, 2))  # not contiguous
    np.testing.assert_array_equal(nc.values, q.values.transpose(1, 0, 2))
    assert quantize(fmt, x.astype(np.float16)).values.dtype == np.float32
    assert quantize(fmt, x.astype(np.float64)).values.dtype == np.float64
    assert quantize(get_block_format("nvfp4"), x).values.dtype == np.float64
    assert quantize(fmt, np.float32(3.0)).values.shape == ()
    assert quantize(fmt, np.zeros((2, 0), np.float32)).values.shape == (2, 0)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="float16, float32 or float64"):
        quantize(get_block_format("mxfp4"), np.arange(4))
    with pytest.raises(ValueError, match="nvfp4 only"):
        quantize(get_block_format("mxfp4"), np.ones(4), tensor_amax=1.0)
    with pytest.raises(ValueError, match="finite"):
        quantize(get_block_format("nvfp4"), np.ones(4), tensor_amax=float("inf"))


def test_import_and_quantize_do_not_import_ml_dtypes():
    code = ("import sys, numpy as np\nfrom stabilitylab.numerics.blockscale import quantize, get_block_format\n"
            "[quantize(get_block_format(n), np.ones((2, 40), np.float32)) for n in ('mxfp4', 'nvfp4')]\n"
            "print('ml_dtypes' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"


def test_docs_facts_table_is_what_the_code_says():
    page = (ROOT / "docs" / "reference" / "block-formats.md").read_text(encoding="utf-8")
    generated = page.split("<!-- generated: stabilitylab.numerics.blockscale.facts_table() -->\n")[1]
    generated = generated.split("\n<!--")[0]
    assert generated.splitlines() == facts_table().splitlines()


def test_nvfp4_spread_ranges_stated_in_the_docs():
    """docs: 24 * 17/18 .. 25.5 for a normal e4m3 block scale, (12, 36) for a subnormal one (s_t = 1)."""
    fmt = get_block_format("nvfp4")
    c = np.exp2(np.random.default_rng(9).uniform(-12, 8.8, 200_000))
    c = np.concatenate([c, [1.0625, 17 / 16 * 2.0 ** -3, 2.5 * 2.0 ** -9],
                        np.nextafter([2.0 ** -10, 1.5 * 2.0 ** -9, 1.0625], np.inf)])
    r = first_failing_spread(fmt, 6 * c, 2688.0)
    normal, sub = c >= 2.0 ** -6, (c < 2.0 ** -6) & (r > 0)
    assert r[normal].min() == pytest.approx(24 * 17 / 18) and r[normal].max() == 25.5
    assert 12 < r[sub].min() < 12.001 and 35.99 < r[sub].max() < 36


def test_block_flags_at_the_edges():
    mx = get_block_format("mxfp8")
    x = np.zeros((5, 32))
    x[0, :2] = [1e-40, 3e-41]  # float32 subnormals: shared_exp = -133 - 8 < -127, clamped
    x[2, 0] = np.inf
    x[3, :2] = [1e300, 1.0]  # float64 only: shared_exp = 996 - 8 > 127, NaN
    x[4, :2] = [1.0, -2.0 ** -20]  # shared_exp = -8; 2^-20 / 2^-8 = 2^-12 <= 2^-10: flushed
    q = quantize(mx, x)
    assert q.exponent[:, 0].tolist() == [-127, -127, 128, 128, -8]
    assert q.scale_saturated[:, 0].tolist() == [True, False, False, True, False]
    assert q.all_zero[:, 0].tolist() == [False, True, False, False, False]
    assert q.nan_blocks[:, 0].tolist() == [False, False, True, True, False]
    assert np.isnan(q.values[2:4]).all() and not q.flushed[2:4].any()
    assert q.flushed[4].tolist() == [False, True] + [False] * 30 and math.copysign(1, q.values[4, 1]) == -1
    assert q.n_nonzero == 6
    nv = get_block_format("nvfp4")
    y = np.zeros((2, 16), np.float32)
    y[0, 0], y[1, :2] = 1.0, [1e-7, 3e-7]  # amax_block / (6 s_t) = 448e-7 / 1 < 2^-10: s_b = 0
    q = quantize(nv, y)
    assert q.scale_code[:, 0].tolist() == [0x7E, 0] and q.scale[1, 0] == 0  # 448 = 0x7E
    assert q.scale_saturated[:, 0].tolist() == [False, True] and q.flushed[1, :2].all()
    assert quantize(nv, np.array([1e300, 1.0])).tensor_scale_saturated
    tiny = quantize(nv, np.array([1e-45], np.float32))
    assert tiny.tensor_scale == 2.0 ** -149 and tiny.tensor_scale_saturated
