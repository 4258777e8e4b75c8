"""The fused softmax_ce kernels (analysis/softmax_bulk.py) against the general engine, bit for bit, on rows
built around every boundary the module's "ordinary row" test relies on: exp overflowing / underflowing /
going subnormal (naive and shifted), sums overflowing, x - max overflowing, logits that overflow or
underflow when stored, subnormal and signed-zero logits, ties, odd widths, non-finite logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stabilitylab.analysis import engine, softmax_bulk
from stabilitylab.analysis.outcome import NEVER
from stabilitylab.experiments.base import ParamNames
from stabilitylab.experiments.softmax_ce import SOFTMAX_CE, Logits
from stabilitylab.numerics.formats import FORMATS

FUSED = [FORMATS[name] for name in softmax_bulk.FORMATS + softmax_bulk.SHORT_FORMATS]


def _around(v: float, n: int = 6) -> np.ndarray:
    """float32 values within n ulps of v, both sides."""
    c = np.float32(v)
    out = [c]
    up = down = c
    for _ in range(n):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        out += [up, down]
    return np.array(out, np.float32)


def adversarial(fmt, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    f32 = np.finfo(np.float32)
    edges = [fmt.ln_max, fmt.ln_smallest_subnormal - math.log(2), math.log(fmt.tiny), fmt.ln_smallest_subnormal,
             fmt.ln_max - math.log(classes), fmt.ln_max - math.log(2)]
    gaps = np.concatenate([_around(e) for e in edges] + [_around(-e) for e in edges])
    rows = []
    for g in gaps:  # [g, 0, ...]: naive exp(g) at its edges; [0, g, ...]: shifted exp(g) at its edges
        rows.append(np.r_[g, np.zeros(classes - 1, np.float32)])
        rows.append(np.r_[np.zeros(classes - 1, np.float32), g])
        rows.append(np.full(classes, g, np.float32))  # every term at the edge (sums overflow)
    big = np.float32(f32.max)
    specials = [big, -big, big * np.float32(0.6), -big * np.float32(0.6), np.float32(3.39e38), f32.tiny,
                np.float32(1e-45), np.float32(-1e-40), np.float32(0.0), np.float32(-0.0), np.inf, -np.inf, np.nan]
    for s in specials:
        for j in range(min(classes, 3)):
            r = rng.standard_normal(classes).astype(np.float32)
            r[j] = s
            rows.append(r)
    for scale in (1e-3, 1, 10, 60, 100, 1e3, 1e5):
        rows += list((rng.standard_normal((40, classes)) * scale).astype(np.float32))
    x = np.array(rows, np.float32)
    x[::7, -1] = x[::7, 0]  # ties
    y = rng.integers(0, classes, len(x))
    y[::3] = np.argmax(np.where(np.isnan(x[::3]), -np.inf, x[::3]), axis=1)  # the true class the max
    return x, y


@pytest.mark.parametrize("classes", [1, 2, 3, 5, 16, 17])
@pytest.mark.parametrize("fmt", FUSED, ids=lambda f: f.name)
def test_fused_equals_the_general_engine(fmt, classes):
    x, y = adversarial(fmt, classes)
    cases = Logits(ParamNames("row", np.arange(len(x))), x, y, np.full(len(x), classes))
    fused = softmax_bulk.evaluate_fused(fmt, cases)
    general = engine.evaluate(SOFTMAX_CE, fmt, cases, fast_reference=True, fast=True)
    _, ordinary, _ = softmax_bulk._values(fmt, x, y)
    # the adversarial rows reach both sides of the ordinary test (else this test could not fail)
    assert 20 <= ordinary.sum() <= len(x) - 20
    for method, o in general.items():
        f = fused[method]
        assert np.array_equal(f.value.view(np.int64), o.value.view(np.int64)) or \
            np.array_equal(f.value, o.value, equal_nan=True), method
        assert np.array_equal(np.signbit(f.value), np.signbit(o.value)), method
        assert np.array_equal(f.status, o.status), (method, np.flatnonzero(f.status != o.status)[:5])
        for name in ("rel_error", "ulps", "error_bits"):
            assert np.array_equal(getattr(f, name), getattr(o, name), equal_nan=True), (method, name)
        for name in ("hi", "lo", "scale", "zero"):
            assert np.array_equal(getattr(f.exact, name), getattr(o.exact, name), equal_nan=True), (method, name)
        # the module's claim: on an ordinary row the engine saw no overflow, underflow or pole
        for event in (0, 1, 3):  # EVENTS: overflow, underflow, divide_by_zero
            assert (o.first_steps[event][ordinary] == NEVER).all(), (method, event)


def test_fused_covers_pure_formats_only():
    from stabilitylab.numerics.policies import format_or_policy

    assert softmax_bulk.supported(FORMATS["bfloat16"], ftz=False)
    assert not softmax_bulk.supported(FORMATS["bfloat16"], ftz=True)
    assert softmax_bulk.supported(FORMATS["float64"], ftz=False, classes=2**20)
    assert not softmax_bulk.supported(FORMATS["float64"], ftz=False, classes=2**20 + 1)
    assert softmax_bulk.supported(FORMATS["float16"], ftz=False, classes=softmax_bulk.SHORT)
    assert not softmax_bulk.supported(FORMATS["float16"], ftz=False, classes=softmax_bulk.SHORT + 1)
    assert not softmax_bulk.supported(FORMATS["float16"], ftz=True, classes=2)
    for name in ("float8_e4m3fn", "bf16@fp32", "mxfp8"):
        assert not softmax_bulk.supported(format_or_policy(name), ftz=False)


@pytest.mark.parametrize("fmt", FUSED, ids=lambda f: f.name)
def test_block_shortcuts_equal_the_row_tests(fmt):
    """_stored_whole and _positive_finite decide a clean block from its min, max and counts: one bad
    entry anywhere (each kind) sends them to the row test, whose answer they then are."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 7)).astype(np.float32)
    x[0, 0] = 0.0
    x[1, 1] = -0.0
    xl = softmax_bulk._store(fmt, x)
    assert softmax_bulk._stored_whole(fmt, x, xl).all()
    e = np.exp(xl)
    assert softmax_bulk._positive_finite(e).all()
    for bad in (np.nan, np.inf, -np.inf, np.float32(1e-45), np.float32(3.3999e38), -np.float32(3.3999e38)):
        y = x.copy()
        y[4, 5] = bad
        yl = softmax_bulk._store(fmt, y)
        want = softmax_bulk._all(((np.abs(yl) <= fmt.max) & (yl != 0)) | (y == 0))
        assert np.array_equal(softmax_bulk._stored_whole(fmt, y, yl), want)
        lost = bool(np.isnan(bad) or np.isinf(bad) or yl[4, 5] == 0 or abs(yl[4, 5]) > fmt.max)
        assert want.tolist() == [True] * 4 + [not lost, True]
    for bad in (0.0, np.inf, np.nan):
        f = e.copy()
        f[2, 3] = bad
        assert softmax_bulk._positive_finite(f).tolist() == [True, True, False, True, True, True]


@pytest.mark.parametrize("fmt", FUSED, ids=lambda f: f.name)
def test_float64_logits_stored_as_the_engine_stores_them(fmt):
    """float64 logits (a float64 .npy file reaches the bulk path as float64): stored by one correct
    rounding, not via float32 (1 + 2**-8 + 2**-31 is bfloat16 1 + 2**-7, via float32 it is 1), and a
    logit that storing in float32 turns to 0 (1e-50) is an input lost at load (status range), as the
    engine says: the block shortcut may not assume xl = x."""
    x = np.array([[1 + 2**-8 + 2**-31, 0.0, 0.5], [1e-50, 0.0, 0.5], [2.0, 1e-60, -1e-50], [1.0, 0.0, 0.25]])
    y = np.array([0, 2, 0, 1])
    cases = Logits(ParamNames("row", np.arange(len(x))), x, y, np.full(len(x), 3))
    fused = softmax_bulk.evaluate_fused(fmt, cases)
    general = engine.evaluate(SOFTMAX_CE, fmt, cases, fast_reference=True, fast=True)
    if fmt.name == "float32":
        assert general["log_softmax"].status[1] == "range"
    for method, o in general.items():
        f = fused[method]
        assert np.array_equal(f.value.view(np.int64), o.value.view(np.int64)), method
        assert np.array_equal(f.status, o.status), method
        assert np.array_equal(f.rel_error, o.rel_error, equal_nan=True), method
