"""The optional compiled kernel (csrc/softmax_values.c through analysis/softmax_kernel.py) against the numpy
path it replaces, bit for bit: the sums of softmax_bulk._sums on adversarial rows of every width class, the
rows it leaves to numpy (subnormal exps, a spent budget of crmath calls), and its float32 exp against crmath
(a sample here; every float32 argument in the slow run).  Skipped where the kernel is not built (.ci/run
checks that it is there)."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import mpmath
import numpy as np
import pytest
from test_softmax_bulk import adversarial

from stabilitylab.analysis import softmax_bulk
from stabilitylab.experiments.base import ParamNames
from stabilitylab.experiments.softmax_ce import Logits
from stabilitylab.numerics import crmath
from stabilitylab.numerics import kernel as softmax_kernel
from stabilitylab.numerics.formats import FORMATS

KERNEL = softmax_kernel.load()
pytestmark = pytest.mark.skipif(KERNEL is None, reason="the compiled kernel is not built (no C compiler at install)")

KERNEL_FORMATS = [FORMATS[name] for name in softmax_bulk.KERNEL_FORMATS]
F32 = FORMATS["float32"]


def _numpy(monkeypatch, fn, *args):
    """fn(*args) with the kernel switched off (STABILITYLAB_KERNEL=0)."""
    with monkeypatch.context() as m:
        m.setenv("STABILITYLAB_KERNEL", "0")
        assert softmax_kernel.load() is None
        return fn(*args)


def _same_sums(fmt, x, y):
    """The kernel's (ok, xl, sums) equal numpy's, bit for bit on every ordinary row (z_y up to the sign of a
    zero: the kernel's max of a row whose max is 0 may be either zero, as numpy's reduction may; the module
    softmax_bulk shows that no value depends on it); returns the number of ordinary rows."""
    got = softmax_bulk._sums_kernel(fmt, x, y)
    assert got is not None
    ok, xl, sums = got
    ok0, xl0, sums0 = softmax_bulk._sums(fmt, x, y)
    assert np.array_equal(ok, ok0), np.flatnonzero(ok != ok0)[:5]
    assert xl.dtype == xl0.dtype and sums.dtype == xl0.dtype  # (float32, or float64 for float64)
    bits = np.uint32 if xl0.dtype == np.float32 else np.uint64
    assert np.array_equal(xl[ok].view(bits), xl0[ok].view(bits))
    for q, (a, b) in enumerate(zip(sums, sums0)):
        assert np.asarray(b).dtype == xl0.dtype
        a, b = a[ok], np.asarray(b)[ok]
        if q == 5:
            a, b = a + 0, b + 0
        bad = np.flatnonzero(a.view(bits) != b.view(bits))
        assert not bad.size, (q, bad[:5], a[bad[:3]], b[bad[:3]])
    return int(ok.sum())


@pytest.mark.parametrize("classes", [1, 2, 3, 5, 10, 16, 17, 33, 409, 4095, 4097])
@pytest.mark.parametrize("fmt", KERNEL_FORMATS, ids=lambda f: f.name)
def test_kernel_sums_equal_numpy(fmt, classes):
    x, y = adversarial(fmt, classes)
    ordinary = _same_sums(fmt, x, y)
    assert 20 <= ordinary <= len(x) - 20  # both sides of the ordinary test (else this could not fail)


@pytest.mark.parametrize("fmt", KERNEL_FORMATS, ids=lambda f: f.name)
def test_kernel_wide_rows(fmt):
    """Rows wider than the kernel's block (one row per block), logits spread like an LLM's and ties."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((6, 20011)) * 4).astype(np.float32)
    x[1, 7] = x[1, 9000] = x[1].max() + 1  # a tied max
    x[2] = np.float32(0)  # a zero max, every term 1
    x[3, ::2] = -0.0
    y = np.array([0, 9000, 5, 4, 20010, int(np.argmax(x[5]))])
    assert _same_sums(fmt, x, y) == 6


@pytest.mark.parametrize("fmt", KERNEL_FORMATS, ids=lambda f: f.name)
def test_kernel_short_rows_in_tiles(fmt):
    """Short rows go through the kernel 256 at a time, transposed: counts that are not a multiple of 256, each
    row's own label and max, a few rows not whole (NaN, inf, a logit beyond the format) among ordinary ones."""
    rng = np.random.default_rng(11)
    for rows, k in ((1, 2), (255, 7), (257, 10), (1000, 16), (513, 1)):
        x = (rng.standard_normal((rows, k)) * rng.choice([0.1, 3, 40], size=(rows, 1))).astype(np.float32)
        x[rows // 3, 0] = np.nan
        x[rows // 2, k - 1] = np.inf
        x[-1, 0] = np.float32(3.4e38)
        y = rng.integers(0, k, rows)
        assert _same_sums(fmt, x, y) >= rows // 2


def test_kernel_rows_left_to_numpy(monkeypatch):
    """float32 exps with subnormal results (z in (-104, -87)) are decided by the kernel too; undecided exps go to
    crmath one by one until the budget is spent, then their rows to numpy (flag 2), put in place."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((300, 9)) * 2).astype(np.float32)
    x[::5, 3] = np.float32(-95.5)  # shifted exp subnormal: left to numpy
    sub = x.copy()
    y = rng.integers(0, 9, len(x))
    assert _same_sums(F32, sub, y) == len(x)
    # arguments whose exp the kernel leaves undecided (normal results; found by scanning every float32 of
    # [-64, 64] with KERNEL.exp32_many): it still says so
    hard = np.array([0x3FE67199, 0x4001B249, 0x40315B33, 0xBAE0E25C, 0xBBF0EDF1, 0xC16912CD],
                    np.uint32).view(np.float32)
    out, dec = np.empty_like(hard), np.empty(hard.size, np.uint8)
    KERNEL.exp32_many(hard, out, dec)
    assert not dec.any()
    x2 = np.zeros((len(hard) * 4, 4), np.float32)
    x2[:, 1] = np.tile(hard, 4)  # exp(x) undecided in the naive pass (and z = x - max where max is 0)
    x2[:, 2] = -1.0
    y2 = np.arange(len(x2)) % 4
    calls = []
    real = softmax_bulk._fix_exp
    monkeypatch.setattr(softmax_bulk, "_fix_exp", lambda v: calls.append(v) or real(v))
    assert _same_sums(F32, x2, y2) > 0
    assert calls  # crmath was asked
    monkeypatch.setattr(softmax_bulk, "FIX_BUDGET", 0)
    calls.clear()
    assert _same_sums(F32, x2, y2) > 0
    assert not calls  # budget 0: every such row left to numpy instead


@pytest.mark.parametrize("classes", [1, 2, 3, 10, 17, 409])
@pytest.mark.parametrize("fmt", KERNEL_FORMATS, ids=lambda f: f.name)
def test_kernel_values_equal_numpy(fmt, classes, monkeypatch):
    """The four methods' values (the kernel's tail: its float32 log and log1p, bfloat16's tables) on the rows
    both call ordinary, bit for bit, and the same ordinary rows."""
    x, y = adversarial(fmt, classes, seed=4)
    values, ok, _ = softmax_bulk._values(fmt, x, y)
    values0, ok0, _ = _numpy(monkeypatch, softmax_bulk._values, fmt, x, y)
    assert np.array_equal(ok, ok0), np.flatnonzero(ok != ok0)[:5]
    assert 20 <= ok.sum() <= len(x) - 20
    for name, v in values0.items():
        assert np.array_equal(values[name][ok].view(np.uint32), v[ok].view(np.uint32)), name


def test_kernel_tail_rows_left_to_numpy(monkeypatch):
    """A row whose float32 log the kernel cannot decide (a subnormal ratio) is done by numpy's tail."""
    x = np.array([[0.0, -90.0, 1.0], [0.0, 1.0, 2.0]], np.float32)  # exp(-92) / (1 + e + ...) is subnormal
    y = np.array([1, 0])
    values, ok, _ = softmax_bulk._values(F32, x, y)
    values0, ok0, _ = _numpy(monkeypatch, softmax_bulk._values, F32, x, y)
    assert np.array_equal(ok, ok0)
    for name, v in values0.items():
        assert np.array_equal(values[name][ok].view(np.uint32), v[ok].view(np.uint32)), name


@pytest.mark.parametrize("classes", [1, 2, 3, 10, 48, 49, 409, 4097])
def test_kernel_float64_reference_equals_numpy(classes, monkeypatch):
    """fast_cross_entropy in float64 on float32 logits with the kernel's terms and tree around np.exp: the same
    Exact / loss, zero and handled masks bit for bit (the numpy way is checked against the old code by
    tests/test_reference_float64_blocks.py), rows not finite included (then the numpy way takes the chunk)."""
    from stabilitylab.experiments import softmax_ce

    real = softmax_ce._float64_kernel
    for seed, finite in ((0, True), (1, False)):
        x, y = adversarial(F32, classes, seed=seed)
        if finite:  # (and rows whose loss is about the sum itself: its last bits show, another order would)
            keep = np.isfinite(x).all(axis=1)
            sensitive = (np.random.default_rng(classes).standard_normal((16, classes)) - 20).astype(np.float32)
            sensitive[:, 0] = 0.0
            x, y = np.concatenate([x[keep], sensitive]), np.concatenate([y[keep], np.zeros(16, y.dtype)])
        used = []
        monkeypatch.setattr(softmax_ce, "_float64_kernel", lambda *a: used.append(real(*a)) or used[-1])
        cases = softmax_ce.Loaded(x, y.astype(np.int64))
        with np.errstate(all="ignore"):
            got = softmax_ce.fast_cross_entropy(cases, dtype=np.float64)
            want = _numpy(monkeypatch, softmax_ce.fast_cross_entropy, cases, np.float64)
        assert (used[0] is not None) == finite
        (v, zero, handled), (w, zero0, handled0) = got, want
        assert np.array_equal(zero, zero0) and np.array_equal(handled, handled0)
        if hasattr(w, "hi"):
            for name in ("hi", "lo", "scale", "zero"):
                assert np.array_equal(getattr(v, name), getattr(w, name), equal_nan=True), name
        else:
            assert np.array_equal(np.asarray(v).view(np.uint64), np.asarray(w).view(np.uint64))


@pytest.mark.parametrize("fmt", KERNEL_FORMATS, ids=lambda f: f.name)
def test_fused_outcomes_with_and_without_the_kernel(fmt, monkeypatch):
    x, y = adversarial(fmt, 10, seed=3)
    cases = Logits(ParamNames("row", np.arange(len(x))), x, y, np.full(len(x), 10))
    fused = softmax_bulk.evaluate_fused(fmt, cases)
    plain = _numpy(monkeypatch, softmax_bulk.evaluate_fused, fmt, cases)
    for method, o in plain.items():
        f = fused[method]
        assert np.array_equal(f.value, o.value, equal_nan=True), method
        assert np.array_equal(np.signbit(f.value), np.signbit(o.value)), method
        assert np.array_equal(f.status, o.status), method
        assert np.array_equal(f.error_bits, o.error_bits, equal_nan=True), method


def test_exp_constants_are_the_correctly_rounded_values():
    table, inv, hi, lo = softmax_kernel.exp_constants()
    mpmath.mp.prec = 300
    try:
        for j in range(64):
            assert table[j] == float(mpmath.power(2, mpmath.mpf(j) / 64)), j
        c = mpmath.log(2) / 64
        assert hi + lo == pytest.approx(float(c), rel=2**-52)
        assert abs(mpmath.mpf(hi) + mpmath.mpf(lo) - c) < mpmath.mpf(2) ** -95
        assert math.frexp(hi)[0] * 2**38 == int(math.frexp(hi)[0] * 2**38)  # 38 significant bits
        assert inv == float(64 / mpmath.log(2))
    finally:
        mpmath.mp.prec = 53


def _log_against_crmath(x: np.ndarray, one: bool) -> tuple[int, int]:
    """(decided, undecided among normal arguments) of the kernel's float32 log (log1p with ``one``) on ``x``;
    every decided value equal to crmath's."""
    out, dec = np.empty_like(x), np.empty(x.size, np.uint8)
    KERNEL.log32_many(x, out, dec, one)
    d = dec.astype(bool)
    ref = (crmath.log1p if one else crmath.log)(F32, x[d])
    bad = np.flatnonzero(out[d].view(np.uint32) != ref.view(np.uint32))
    assert not bad.size, (x[d][bad[:5]], out[d][bad[:5]], ref[bad[:5]])
    return int(d.sum()), int((~d & (x >= np.finfo(np.float32).tiny) & (x < np.inf)).sum())


@pytest.mark.parametrize("one", [False, True], ids=["log", "log1p"])
def test_kernel_log_is_crmath_on_a_sample(one):
    rng = np.random.default_rng(8)
    x = np.concatenate([np.exp(rng.uniform(-87, 88, 2**19)), rng.uniform(0.5, 2, 2**18),
                        1 + rng.uniform(-2**-10, 2**-10, 2**16), rng.uniform(0, 2**-6, 2**16),
                        [1.0, 0.0, 2**-126, 3e38, 0.0078125, 0.0078124]]).astype(np.float32)
    decided, undecided = _log_against_crmath(x, one)
    assert decided >= x.size - 10
    assert undecided <= 5


@pytest.mark.slow
@pytest.mark.parametrize("one", [False, True], ids=["log", "log1p"])
def test_kernel_log_is_crmath_for_every_float32(one):
    """Every positive finite float32 (and +0): the kernel's decided log / log1p are crmath's, bit for bit."""
    undecided = 0
    top = int(np.float32(np.inf).view(np.uint32))
    for start in range(0, top, 2**24):
        bits = np.arange(start, min(start + 2**24, top), dtype=np.uint32)
        undecided += _log_against_crmath(bits.view(np.float32), one)[1]
    assert undecided < 4000


def _exp_against_crmath(z: np.ndarray) -> tuple[int, int]:
    """(decided, undecided of normal results) of the kernel's exp on float32 ``z``; every decided value equal
    to crmath's correctly rounded one."""
    out, dec = np.empty_like(z), np.empty(z.size, np.uint8)
    KERNEL.exp32_many(z, out, dec)
    d = dec.astype(bool)
    ref = crmath.exp(F32, z[d])
    bad = np.flatnonzero(out[d].view(np.uint32) != ref.view(np.uint32))
    assert not bad.size, (z[d][bad[:5]], out[d][bad[:5]], ref[bad[:5]])
    normal = (z > -87.3) & (z < 88.0)  # (results in [2**-126, 2**127): the top binade is left aside)
    return int(d.sum()), int((~d & normal).sum())


def test_kernel_exp_is_crmath_on_a_sample():
    rng = np.random.default_rng(7)
    z = np.concatenate([rng.uniform(-104, 89, 2**20), rng.uniform(-1e-3, 1e-3, 2**16),
                        [0.0, -0.0, 1e-45, -1e-45, 88.72283, -87.33654, -103.97, -86.64]]).astype(np.float32)
    decided, undecided = _exp_against_crmath(z)
    assert decided > 0.9 * z.size
    assert undecided <= 5  # about 2 in 10**7 arguments of normal results


def _decided_outside(z: np.ndarray) -> np.ndarray:
    """The arguments of float32 ``z`` (all outside (-104, 89), or NaN) whose exp the kernel says it decided."""
    out, dec = np.empty_like(z), np.empty(z.size, np.uint8)
    KERNEL.exp32_many(z, out, dec)
    return z[dec.astype(bool)]


def test_kernel_exp_decides_nothing_outside_its_domain(monkeypatch):
    """Beyond 89 the exp's 2**e wraps around: exp32_sub took e**102114.375 for the subnormal 1e-41 (review9), and
    a row of such logits for an ordinary one (naive softmax's overflow missed).  Outside (-104, 89) nothing is
    decided (the callers then give inf or 0, or leave the row to numpy), and such rows are numpy's."""
    big = np.geomspace(89, 3.4e38, 2**16).astype(np.float32)
    z = np.concatenate([big, -big - np.float32(15), [np.inf, -np.inf, np.nan, 102114.375, 710.67, 89.0, -104.0]])
    assert _decided_outside(z.astype(np.float32)).size == 0
    x = np.repeat(np.array([[102114.375], [5000.0], [3e38]], np.float32), 10, axis=1)
    x[:, 1::2] -= np.float32(1.0)
    y = np.zeros(len(x), np.int64)
    values, ok, _ = softmax_bulk._values(F32, x, y)
    values0, ok0, _ = _numpy(monkeypatch, softmax_bulk._values, F32, x, y)
    assert np.array_equal(ok, ok0) and not ok.any()


@pytest.mark.slow
def test_kernel_exp_decides_no_float32_outside_its_domain():
    """Every float32 argument outside (-104, 89) (and every NaN): none decided."""
    lo, hi = int(np.float32(-104.0).view(np.uint32)), int(np.float32(89.0).view(np.uint32))
    for first, last in ((hi, 0x80000000), (lo, 2**32)):
        for start in range(first, last, 2**24):
            bits = np.arange(start, min(start + 2**24, last), dtype=np.uint32)
            assert _decided_outside(bits.view(np.float32)).size == 0, hex(start)


@pytest.mark.slow
def test_kernel_exp_is_crmath_for_every_float32():
    """Every float32 argument in [-104, 89], in blocks:
    the kernel's decided results are crmath's, bit for bit, and it leaves few undecided."""
    lo, hi = np.float32(-104.0).view(np.uint32), np.float32(89.0).view(np.uint32)
    undecided = 0
    for start in range(0, int(lo) - 0x80000000 + 1, 2**24):  # negative z: bits 0x80000000 .. lo
        bits = np.arange(0x80000000 + start, min(0x80000000 + start + 2**24, int(lo) + 1), dtype=np.uint32)
        undecided += _exp_against_crmath(bits.view(np.float32))[1]
    for start in range(0, int(hi) + 1, 2**24):
        bits = np.arange(start, min(start + 2**24, int(hi) + 1), dtype=np.uint32)
        undecided += _exp_against_crmath(bits.view(np.float32))[1]
    assert undecided < 2000


F64 = FORMATS["float64"]


def _exp64_against_crmath(x: np.ndarray) -> np.ndarray:
    """The stage (1 or 2; 0: left to crmath) at which the kernel's float64 exp decided each of ``x``; every
    decided value equal to crmath's correctly rounded one, bit for bit."""
    out, stage = np.empty_like(x), np.empty(x.size, np.uint8)
    KERNEL.exp64_many(x, out, stage)
    d = stage > 0
    ref = crmath.exp(F64, x[d], stats={})  # (stats: crmath's own numpy stages, not the kernel)
    bad = np.flatnonzero(out[d].view(np.uint64) != ref.view(np.uint64))
    assert not bad.size, (x[d][bad[:5]], out[d][bad[:5]], ref[bad[:5]])
    return stage


def test_crmath_float64_uses_the_kernel_and_gives_its_numpy_values(monkeypatch):
    """crmath's float64 exp / log / log1p take the kernel's stages first where it is loaded (no stats asked): the
    same values as crmath's numpy stages, special and out-of-domain arguments included (those go the numpy way)."""
    rng = np.random.default_rng(15)
    x = np.concatenate([rng.uniform(-750, 712, 2**14), np.exp(rng.uniform(-745, 709, 2**14)), rng.uniform(-1, 3, 2**12),
                        [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 5e-324, 2.0**-1022, 1.7e308]])
    calls = []
    real = crmath._compiled64
    monkeypatch.setattr(crmath, "_compiled64", lambda *a: calls.append(a[0]) or real(*a))
    with np.errstate(all="ignore"):
        for name in ("exp", "log", "log1p"):
            got = getattr(crmath, name)(F64, x)
            want = getattr(crmath, name)(F64, x, stats={})
            assert np.array_equal(got.view(np.uint64), want.view(np.uint64)) or np.array_equal(got, want,
                                                                                             equal_nan=True), name
            assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(np.signbit(got[~np.isnan(got)]),
                                                                                      np.signbit(want[~np.isnan(want)]))
    assert calls == ["exp", "log", "log1p"]


def test_kernel_exp64_is_crmath_on_a_sample():
    """The float64 exp (softmax_sums64's): stage 1 (exp64's pair) decides all but ~0.3%, stage 2 (the
    double-double) nearly all of the rest, inside their domains; outside them (subnormal results, near overflow)
    nothing is decided by the kernel."""
    rng = np.random.default_rng(9)
    grid = rng.integers(-2**20, 2**20, 2**16) * (math.log(2) / 2048)  # near the reduction's table points
    x = np.concatenate([rng.uniform(-707, 709, 2**19), rng.standard_normal(2**18) * 5, grid, np.nextafter(grid, 1),
                        -np.abs(rng.standard_normal(2**17) * 30).astype(np.float32),
                        rng.uniform(-1e-6, 1e-6, 2**14), [0.0, -0.0, 709.0, -707.0, -670.0, 1e-300, -5e-324]])
    stage = _exp64_against_crmath(x)
    assert 0.99 * x.size < (stage == 1).sum() < x.size  # (both stages used: else this could not fail)
    assert (stage == 2).sum() > 1000 and ((stage == 0) & (x >= -670)).sum() <= 5  # (stage 2's domain: >= -670)
    outside = np.array([-707.5, -745.0, -800.0, 709.5, 710.0, np.inf, -np.inf, np.nan])
    assert not _exp64_against_crmath(outside).any()


@pytest.mark.parametrize("one", [False, True], ids=["log", "log1p"])
def test_kernel_log64_is_crmath_on_a_sample(one):
    """The float64 log / log1p of softmax_tail64 (crmath's first stage from the kernel's own log_wide, log1p_near
    near 1 / 0, then the x87 stage, 2 in ``dec``, and the double-double one, 3): decided values are crmath's bit
    for bit; it decides nearly every argument, the first stages none outside their domain, the x87 ones only positive
    finite ones; the double-double stage is reached (rarely: arguments near a rounding midpoint)."""
    rng = np.random.default_rng(13)
    x = np.concatenate([np.exp(rng.uniform(-680, 680, 2**18)), rng.uniform(0.5, 2, 2**18), rng.uniform(0, 1e-3, 2**14),
                        1 + rng.uniform(-1e-9, 1e-9, 2**12), [1.0, 0.0, -0.0, 2.0**-990, 2.0**990, 1.5]])
    out, dec = np.empty_like(x), np.empty(x.size, np.uint8)
    KERNEL.log64_many(x, out, dec, one)
    d = dec.astype(bool)
    ref = (crmath.log1p if one else crmath.log)(F64, x[d], stats={})
    bad = np.flatnonzero(out[d].view(np.uint64) != ref.view(np.uint64))
    assert not bad.size, (x[d][bad[:5]], out[d][bad[:5]], ref[bad[:5]])
    with np.errstate(divide="ignore"):
        big = np.abs(np.log1p(x) if one else np.log(x)) >= 0.5
    assert (~d & big).sum() <= 0.01 * big.sum() and d.sum() > 0.6 * x.size
    assert ((dec == 2) & (x < 2.0**990)).sum() > 100  # (the x87 stage decides some the first leaves)
    assert (dec == 3).sum() > 10 and (dec == 0).sum() <= 5 + (0 if one else 1)  # (log 0: undecided)
    outside = np.array([-0.25, -1e-300, 2.0**991, np.inf, np.nan] + ([] if one else [2.0**-991, 0.0]))
    o, d = out[:outside.size], dec[:outside.size]
    KERNEL.log64_many(outside, o, d, one)
    assert not (d == 1).any() and not d[[0, 1, 3, 4]].any()  # (the x87 stages take positive finite arguments)
    ref = (crmath.log1p if one else crmath.log)(F64, outside[d >= 2], stats={})
    assert np.array_equal(o[d >= 2].view(np.uint64), ref.view(np.uint64))


@pytest.mark.slow
def test_kernel_exp64_is_crmath_on_many():
    """2**26 random float64 arguments over both stages' domain [-670, 709]: decided ones are crmath's."""
    rng = np.random.default_rng(10)
    left = 0
    for _ in range(16):
        x = np.concatenate([rng.uniform(-670, 709, 2**21), rng.standard_normal(2**21) * 20])
        left += int((_exp64_against_crmath(x) == 0).sum())
    assert left <= 10


@pytest.mark.slow
@pytest.mark.parametrize("one", [False, True], ids=["log", "log1p"])
def test_kernel_log64_near_is_crmath_on_many(one):
    """log1p_near's region on 2**23 arguments (x within 2**-7 of 1 for log, t in [2**-480, 2**-7] for log1p, and
    the float64 neighbours of 1): every decided value crmath's, and nearly all decided."""
    rng = np.random.default_rng(14 + one)
    if one:
        x = np.concatenate([2.0 ** rng.uniform(-480, -7, 2**22), rng.uniform(0, 2**-7, 2**22)])
    else:
        x = np.concatenate([1 + rng.uniform(-2**-7, 2**-7, 2**22), 1 + np.arange(-2**21, 2**21) * 2.0**-53])
    out, dec = np.empty_like(x), np.empty(x.size, np.uint8)
    KERNEL.log64_many(x, out, dec, one)
    d = dec > 0
    ref = (crmath.log1p if one else crmath.log)(F64, x[d], stats={})
    assert np.array_equal(out[d].view(np.uint64), ref.view(np.uint64))
    assert d.mean() > 0.995


def test_kernel_float64_rows_left_to_numpy(monkeypatch):
    """float64 exps the kernel's stages leave (subnormal results: z in (-746, -707)) go to crmath one by one
    until the budget is spent, then their rows to numpy (flag 2), put in place: the same sums either way."""
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((300, 9)) * 2).astype(np.float32)
    x[::5, 3] = np.float32(-720.25)  # e**(z) subnormal in float64
    x[1::7, 4] = np.float32(-800.0)  # 0: not ordinary
    y = rng.integers(0, 9, len(x))
    calls = []
    real = softmax_bulk._fix_exp64
    monkeypatch.setattr(softmax_bulk, "_fix_exp64", lambda v: calls.append(v) or real(v))
    assert 100 < _same_sums(F64, x, y) < len(x)
    assert calls
    monkeypatch.setattr(softmax_bulk, "FIX_BUDGET", 0)
    calls.clear()
    assert 100 < _same_sums(F64, x, y) < len(x)
    assert not calls


@pytest.mark.parametrize("classes", [2, 3, 10, 16, 17, 33, 409, 4097])
def test_kernel_bounded_reference_equals_numpy(classes, monkeypatch):
    """bounded_cross_entropy (float64's bounded tier) with the kernel's ref_expsum64: the same values, bounds
    and handled rows bit for bit, on float32-valued rows (ties, a row near the FLOOR, zeros, tiny and huge
    logits: rows not exact) and on a block with one value that is not a float32 (then no row is handled)."""
    from stabilitylab.experiments import softmax_ce

    rng = np.random.default_rng(classes)
    x = (rng.standard_normal((64, classes)) * rng.choice([0.01, 1, 30, 300], size=(64, 1))).astype(np.float32)
    x[1, :] = x[1, 0]  # every logit tied
    x[2, 0] = 0.0  # a zero: not exact
    x[3, 0], x[3, 1:] = 0.0, -650.0  # d2 below the FLOOR
    x[4, -1] = 1e-30  # tiny beside large: not exact
    x[5] = -x[5]
    x[7, -1], x[8, 0] = np.nan, -np.inf  # not finite: not exact
    y = rng.integers(0, classes, len(x))
    y[6] = int(np.argmax(x[6]))
    X = x.astype(np.float64)
    for block in (X, np.where(np.arange(classes) == 0, X + 2.0**-40, X)):
        cases = softmax_ce.Loaded(block, y.astype(np.int64))
        with np.errstate(all="ignore"):
            got = softmax_ce.bounded_cross_entropy(cases)
            want = _numpy(monkeypatch, softmax_ce.bounded_cross_entropy, cases)
        assert (got is None) == (want is None)
        if want is None:
            assert block is not X
            continue
        (v, b, h), (w, b0, h0) = got, want
        assert 40 <= h0.sum() <= len(x) - 3 and np.array_equal(h, h0)
        assert np.array_equal(b, b0)
        for name in ("hi", "lo", "scale", "zero"):
            assert np.array_equal(getattr(v, name), getattr(w, name)), name


def test_kernel_bounded_reference_refuses_labels_outside_the_row():
    """review8: ref_expsum64 read X[i, y[i]] without checking y; now a ValueError, as numpy's take raises."""
    from stabilitylab.experiments import softmax_ce

    x = np.zeros((3, 4))
    x[:, 1] = 1.0
    for y in ([0, 4, 1], [0, -1, 1]):
        with pytest.raises(ValueError, match="label outside"):
            softmax_ce._bounded_kernel(x + 1.0, np.array(y))


@pytest.mark.parametrize("classes", [1, 2, 3, 10, 16, 17, 40, 1000])
def test_kernel_argmax_is_numpys(classes):
    """The labels of a file without labels (streaming._labels): each row's first maximum, NaN as -inf."""
    rng = np.random.default_rng(classes)
    x = rng.choice(np.array([0.0, -0.0, 1.0, 2.0, np.inf, -np.inf, np.nan, 3e38, -1e-45], np.float32),
                   size=(4000, classes))
    x[::3] = rng.standard_normal((len(x[::3]), classes)).astype(np.float32)
    x[5] = np.nan
    x[6] = -np.inf
    x[7, 0], x[7, 1:] = np.nan, -np.inf
    want = np.argmax(np.where(np.isnan(x), -np.inf, x), axis=1)
    top, finite = softmax_kernel.argmax_rows(x)
    assert np.array_equal(top, want)
    assert finite.dtype == bool and np.array_equal(finite, np.isfinite(x).all(axis=1))
    assert 0 < np.count_nonzero(finite) < len(x)


C_SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "softmax_values.c"
C_SOURCE_SHA256 = "a41f3e59065a0dcbcb008e00d145dc3aec796d5f665087a2ff1484379821e3f5"


def test_the_c_file_is_the_one_of_this_api_number():
    """A change to csrc/softmax_values.c must bump KERNEL_API there and kernel.API (a stale build of the same
    number would be loaded and called with the new arguments), then pin the new hash here (a change of comments
    alone need not bump it)."""
    assert softmax_kernel.API == 12
    assert f"#define KERNEL_API {softmax_kernel.API} " in C_SOURCE.read_text()
    assert hashlib.sha256(C_SOURCE.read_bytes()).hexdigest() == C_SOURCE_SHA256


def test_loading_the_kernel_leaves_subnormals_alone():
    """A build linked with fast-math would flush subnormals to zero in the whole process when loaded."""
    code = ("import numpy as np\nfrom stabilitylab.numerics import kernel\nassert kernel.load() is not None\n"
            "print(float(np.float32(1e-40) * np.float32(1)), float(np.float64(1e-310) * 1.0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) > 0 and float(out[1]) > 0


def test_version_says_whether_the_kernel_is_in_use(monkeypatch):
    from click.testing import CliRunner

    from stabilitylab.cli import cli

    got = CliRunner().invoke(cli, ["--version"])
    assert got.exit_code == 0 and "compiled kernel: in use (" in got.output, got.output
    monkeypatch.setenv("STABILITYLAB_KERNEL", "0")
    got = CliRunner().invoke(cli, ["--version"])
    assert "compiled kernel: off (STABILITYLAB_KERNEL=0)" in got.output


def test_ref_tree_zeroes_the_max_term_and_refuses_tops_outside_the_row():
    """ref_tree sums each row pairwise with +0 in place of its ``top`` term (ref_terms leaves e^0 = 1 there: a -inf
    would slow numpy's exp), and a ``top`` outside [0, K) is refused before anything is written."""
    module = softmax_kernel.load()
    if module is None:
        pytest.skip("the compiled kernel is not built here")
    t = np.array([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]])
    total = np.full(2, np.nan)
    module.ref_tree(2, 3, t, np.array([2, 0], np.int64), total)
    assert total.tolist() == [(1.0 + 2.0) + (0.0 + 0.0), (0.0 + 16.0) + (32.0 + 0.0)]
    for top in ([3, 0], [0, -1]):
        with pytest.raises(ValueError, match="ref_tree"):
            module.ref_tree(2, 3, t.copy(), np.array(top, np.int64), total)


@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("width", [10, 24])
def test_run_chunk_scan_is_numpys(width, labelled, monkeypatch):
    """run_chunk on float32 logits of a file without labels, or rows of more than SHORT logits, takes the block's
    finiteness, its rows with a non-finite logit and (without labels) each row's argmax from one kernel pass
    (streaming._scan): the same non-finite rows, labels and cells as with the kernel off."""
    from stabilitylab.analysis import streaming

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((40, width)) * 3).astype(np.float32)
    x[3, 5], x[7, 0], x[11, :] = np.nan, np.inf, -np.inf
    x[13, 2] = x[13].max()  # (a tie: the first maximum)
    y = rng.integers(0, width, len(x)) if labelled else None
    keep = np.ones(len(x), bool)
    keep[7] = False
    calls, real = [], softmax_kernel.argmax_rows
    with monkeypatch.context() as m:
        m.setattr(softmax_kernel, "argmax_rows", lambda a: calls.append(a) or real(a))
        top = streaming._scan(x, labelled)[2]
    assert bool(calls) == (not labelled or width > softmax_bulk.SHORT) and (top is None) == labelled

    def run():
        return streaming.run_chunk((F32, FORMATS["bfloat16"]), 100, x, y, keep, tolerance=None, ftz=False, keep=5,
                                   cap=5, all_rows=True)

    got, want = run(), _numpy(monkeypatch, run)
    assert got[2][0] == want[2][0] == 2 and np.array_equal(got[2][1], want[2][1])
    assert np.array_equal(got[2][1], [103, 111])
    for key, cell in want[0].items():
        assert str(got[0][key]) == str(cell), key
    for key, column in want[1].items():
        assert got[1][key].tobytes() == column.tobytes(), key
