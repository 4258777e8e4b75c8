"""softmax_ce's float64 reference (fast_cross_entropy(x, dtype=np.float64), what the bulk path uses for formats
of at most 24 bits) works in cache-sized blocks of rows and columns (_float64_wide) and column by column on short
rows (_float64_short): the same values, bit for bit, as the whole-chunk code it replaced, which is frozen below
as the oracle (issue #22).  Adversarial rows: ties for the max, the label at the max, -0 / +0, huge spreads,
subnormal terms, sums that underflow (the scaled tier), non-finite rows, widths around every block boundary."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from stabilitylab.experiments import softmax_ce
from stabilitylab.experiments.softmax_ce import Loaded
from stabilitylab.numerics.reference import SCALE_ABOVE, SCALE_BELOW, Exact, exp_sum_scaled
from stabilitylab.numerics.wide import LONGDOUBLE_IS_WIDE

# ---- the oracle: main's fast_cross_entropy at c86e0ac (2026-12-07), float64 and longdouble, frozen ----------


def _old_from_longdouble(r, zero):
    wide = np.float64 if np.asarray(r).dtype == np.float64 else np.longdouble
    r = np.asarray(r, dtype=wide)
    with np.errstate(all="ignore"):
        tiny = np.isfinite(r) & (r != 0) & ((np.abs(r) < SCALE_BELOW) | (np.abs(r) >= SCALE_ABOVE))
        scale = np.zeros(r.shape, dtype=np.int64)
        scaled = r
        if tiny.any():
            _, e = np.frexp(r[tiny])
            scale[tiny] = e.astype(np.int64) - 1
            scaled = r.copy()
            scaled[tiny] = np.ldexp(r[tiny], -scale[tiny])
        hi = scaled.astype(np.float64) + 0.0
        lo = np.where(np.isfinite(hi), (scaled - hi.astype(wide)).astype(np.float64), 0.0)
    hi = np.where(zero, 0.0, hi)
    return Exact(hi, np.where(zero, 0.0, lo), np.where(zero, 0, scale), np.asarray(zero, dtype=bool).copy())


def _old_two_diff(a, b):
    hi = a - b
    bb = hi - a
    lo = (a - (hi - bb)) - (b + bb)
    return hi, lo


_OLD_LOW29 = np.uint64(2**29 - 1)


def _old_differences_exact(X):
    if not X.size or np.bitwise_and(X.view(np.uint64), _OLD_LOW29).any():
        return False
    with np.errstate(all="ignore"):
        small, big = np.abs(X).min(), max(X.max(), -X.min())
    if not (small >= 2.0**-1000) or not np.isfinite(big):
        return False
    return bool(big < np.ldexp(1.0, int(np.frexp(small)[1]) - 1 + 29))


def _old_tree_sum(t):
    if t.ndim == 2 and 1 < t.shape[1] <= 16:
        columns = [t[:, j] for j in range(t.shape[1])]
        while len(columns) > 1:
            if len(columns) % 2:
                columns.append(np.zeros(len(t), t.dtype))
            columns = [columns[i] + columns[i + 1] for i in range(0, len(columns), 2)]
        return columns[0]
    while t.shape[-1] > 1:
        if t.shape[-1] % 2:
            t = np.concatenate([t, np.zeros(t.shape[:-1] + (1,), t.dtype)], axis=-1)
        t = t[..., 0::2] + t[..., 1::2]
    return t[..., 0]


_OLD_BLOCK = 2**20
_OLD_COLUMNS = 2**13


def _old_tree_levels(t, levels):
    for _ in range(levels):
        if t.shape[-1] % 2:
            t = np.concatenate([t, np.zeros(t.shape[:-1] + (1,), t.dtype)], axis=-1)
        t = t[..., 0::2] + t[..., 1::2]
    return t


def _old_block_minus(L, start, m, wide):
    X = L[:, start:start + _OLD_BLOCK].astype(np.float64)
    if wide == np.dtype(np.float64):
        return X - m[:, None], None
    return _old_two_diff(X, m[:, None])


def _old_wide_cross_entropy(x, wide):
    L, k = x.logits, x.logits.shape[1]
    label = int(x.labels[0])
    m = np.array([L[0].max()], dtype=np.float64)
    top = int(np.argmax(L[0]))
    handled = np.array([all(bool(np.isfinite(_old_block_minus(L, start, m, wide)[0]).all())
                            for start in range(0, k, _OLD_BLOCK))])
    levels = _OLD_BLOCK.bit_length() - 1
    xy = np.array([L[0, label]], dtype=np.float64)
    if wide == np.dtype(np.float64):
        gap_hi, gap_lo = xy - m, None
    else:
        gap_hi, gap_lo = _old_two_diff(xy, m)
    if not handled[0]:
        gap_hi = np.zeros(1)
        gap_lo = None if gap_lo is None else np.zeros(1)
    gap = -gap_hi.astype(wide)
    if gap_lo is not None:
        gap -= gap_lo.astype(wide)
    partial = []
    for start in range(0, k, _OLD_BLOCK):
        hi, lo = _old_block_minus(L, start, m, wide)
        if not handled[0]:
            hi = np.zeros_like(hi)
            lo = None if lo is None else np.zeros_like(lo)
        terms = np.exp(hi.astype(wide))
        if lo is not None:
            inexact = (lo != 0) & (terms > 0)
            terms[inexact] *= np.exp(lo[inexact].astype(wide))
        if start <= top < start + _OLD_BLOCK:
            terms[0, top - start] = 0
        del hi, lo
        partial.append(_old_tree_levels(terms, levels))
    total = _old_tree_sum(np.concatenate(partial, axis=-1))
    tiny = handled & (gap == 0) & (total <= np.finfo(wide).tiny * 2.0**62)
    loss = np.log1p(total) + gap
    handled &= np.isfinite(loss)
    zero = np.zeros(1, dtype=bool)
    if not tiny.any() or not LONGDOUBLE_IS_WIDE:
        return loss, zero, handled & ~tiny
    X = L.astype(np.float64)
    use = np.ones((1, k), dtype=bool)
    use[0, top] = False
    small, ok = exp_sum_scaled(*_old_two_diff(X, m[:, None]), use)
    return _old_from_longdouble(loss, zero).put(np.array([0]), small), zero, ok


def _old_blocked_exp_sum(hi, top, wide):
    rows, k = hi.shape
    levels = _OLD_COLUMNS.bit_length() - 1
    partial = []
    for start in range(0, k, _OLD_COLUMNS):
        t = np.exp(hi[:, start:start + _OLD_COLUMNS].astype(wide))
        here = np.flatnonzero((top >= start) & (top < start + _OLD_COLUMNS))
        t[here, top[here] - start] = 0
        partial.append(_old_tree_levels(t, levels))
    return _old_tree_sum(np.concatenate(partial, axis=-1))


def _old_max_argmax_short(xt):
    m = np.array(xt[0], copy=True)
    for j in range(1, len(xt)):
        np.maximum(m, xt[j], out=m)
    k = np.zeros(len(m), dtype=np.uint8)
    before = np.ones(len(m), dtype=bool)
    differs = np.empty(len(m), dtype=bool)
    for j in range(len(xt) - 1):
        np.not_equal(xt[j], m, out=differs)
        before &= differs
        k += before.view(np.uint8)
    return m, k.astype(np.intp)


def _old_max_argmax(X):
    k = X.shape[1]
    if k <= 16:
        return _old_max_argmax_short([X[:, j] for j in range(k)])
    return X.max(axis=1), np.argmax(X, axis=1)


def old_fast_cross_entropy(x, dtype=np.longdouble):
    k = x.logits.shape[1]
    if k > _OLD_BLOCK and len(x.logits) == 1 and x.logits.dtype in (np.float32, np.float64):
        return _old_wide_cross_entropy(x, np.dtype(dtype))
    X = np.asarray(x.logits, dtype=np.float64)
    rows = np.arange(len(X))
    wide = np.dtype(dtype)
    m, top = _old_max_argmax(X)
    if wide == np.dtype(np.float64):
        hi, lo = X - m[:, None], None
    elif _old_differences_exact(X):
        hi, lo = X - m[:, None], None
    else:
        hi, lo = _old_two_diff(X, m[:, None])
    if hi.size and np.isfinite(hi.min()) and np.isfinite(hi.max()):
        handled = np.ones(len(hi), dtype=bool)
    else:
        finite = np.isfinite(hi)
        handled = finite.all(axis=1) if k > 16 else np.logical_and.reduce([finite[:, j] for j in range(k)])
    if not handled.all():
        hi = np.where(handled[:, None], hi, 0.0)
        lo = None if lo is None else np.where(handled[:, None], lo, 0.0)
    at_label = rows * k + x.labels
    gap = -np.take(hi, at_label).astype(wide)
    if lo is None and wide != hi.dtype and k >= 2 * _OLD_COLUMNS:
        total = _old_blocked_exp_sum(hi, top, wide)
    else:
        terms = np.exp(hi, out=hi) if lo is None and wide == hi.dtype else np.exp(hi.astype(wide))
        if lo is not None:
            inexact = (lo != 0) & (terms > 0)
            terms[inexact] *= np.exp(lo[inexact].astype(wide))
            gap -= np.take(lo, at_label).astype(wide)
        np.put(terms, rows * k + top, 0)
        total = _old_tree_sum(terms)
    tiny = handled & (gap == 0) & (total <= np.finfo(wide).tiny * 2.0**62) & (k > 1)
    loss = np.log1p(total) + gap
    handled &= np.isfinite(loss)
    zero = np.full(len(X), k == 1)
    if not tiny.any() or not LONGDOUBLE_IS_WIDE:
        return loss, zero, handled & ~tiny
    rows = np.flatnonzero(tiny)
    use = np.ones((len(rows), k), dtype=bool)
    use[np.arange(len(rows)), top[rows]] = False
    small, ok = exp_sum_scaled(*_old_two_diff(X[rows], m[rows, None]), use)
    out = _old_from_longdouble(loss, zero).put(rows, small)
    handled[rows] = ok
    return out, zero, handled


# ---- the comparison ---------------------------------------------------------------------------------------------


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.itemsize > 8:  # (x87's 80 bits in 16 bytes: the 6 padding bytes are not the value's)
        return a.view(np.uint8).reshape(len(a), -1)[:, :10]
    return a.view(np.uint64)


def _same(new, old) -> bool:
    """Bit for bit: the values (an Exact field by field, NaN payloads and zero signs included; longdouble by
    its 10 bytes), the zero masks and the handled masks."""
    (v, zero, handled), (w, zero_old, handled_old) = new, old
    if isinstance(v, Exact) != isinstance(w, Exact):
        return False
    if isinstance(v, Exact):
        pairs = [(v.hi, w.hi), (v.lo, w.lo), (v.scale, w.scale), (v.zero, w.zero)]
    else:
        pairs = [(_bits(v), _bits(w))] if v.dtype == w.dtype else [(v, w), (np.zeros(1), np.ones(1))]
    pairs += [(zero, zero_old), (handled, handled_old)]
    return all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in pairs)


def _check(x: np.ndarray, y: np.ndarray, dtype=np.float64, blocked: bool | None = None) -> None:
    """The new reference against the oracle on ``(x, y)``; ``blocked``: whether the float64 blocks must have
    been used (True), must not (False: a difference was not finite), or either."""
    cases = Loaded(x, np.asarray(y, dtype=np.int64))
    used = []
    short, wide = softmax_ce._float64_short, softmax_ce._float64_wide
    with pytest.MonkeyPatch.context() as mp, np.errstate(all="ignore"):
        mp.setenv("STABILITYLAB_KERNEL", "0")  # (the numpy blocks; tests/test_softmax_kernel.py: the kernel's)
        mp.setattr(softmax_ce, "_float64_short", lambda *a: used.append(short(*a)) or used[-1])
        mp.setattr(softmax_ce, "_float64_wide", lambda *a: used.append(wide(*a)) or used[-1])
        new = softmax_ce.fast_cross_entropy(cases, dtype=dtype)
        old = old_fast_cross_entropy(cases, dtype=dtype)
    assert _same(new, old), (x.shape, x.dtype)
    if np.dtype(dtype) != np.float64:
        assert not used  # (the float64 blocks are float64's alone)
    elif blocked is not None:
        assert [u is not None for u in used] == [blocked]


def _adversarial(rows: int, k: int, seed: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Rows of float32 (or float64) logits at several scales with: ties for the max (also +0 / -0 maxima), the
    label at the max, a huge spread, subnormal terms, a row whose sum underflows (the scaled tier), and bfloat16
    values."""
    rng = np.random.default_rng(seed)
    scale = rng.choice([1e-3, 1.0, 3.0, 30.0, 300.0], size=(rows, 1))
    x = rng.standard_normal((rows, k)) * scale
    y = rng.integers(0, k, rows)
    if k > 1:
        x[0, :] = -np.abs(x[0]) - 1
        x[0, [0, k - 1]] = 0.0  # a tie for the max at +0, its last copy -0
        x[0, k - 1] = -0.0
        y[0] = k - 1
        x[1 % rows, :] = 5.0  # every logit the max
        if rows > 2:
            x[2, k // 2], y[2] = 40.0, k // 2  # the label at the max
            x[2, (k // 2 + 1) % k] = 40.0  # ... tied
        if rows > 3:
            x[3] = -800.0 - np.abs(x[3])  # e^(x - m) subnormal or 0 for all but the max: the label there
            x[3, 1], y[3] = 0.0, 1  # (the sum underflows: the scaled tier)
        if rows > 4:
            x[4] = np.linspace(-1e30, 1e30, k)  # a huge spread
            y[4] = 0
        if rows > 5:
            x[5] = -745.0 + rng.uniform(-1, 1, k)  # subnormal terms beside the max
            x[5, 0], y[5] = -700.0, 0
        if rows > 6:
            x[6] = (-0.0, 0.0)[0] * np.ones(k)  # every logit -0: the max -0
            y[6] = k - 1
    x = x.astype(dtype)
    if rows > 7:
        x[7] = x[7].astype(ml_dtypes.bfloat16).astype(dtype)
    if rows >= 16:  # the same rows again at the end (in the last block of rows)
        x[-8:], y[-8:] = x[:8], y[:8]
    return x, y


@pytest.mark.parametrize("k", [1, 2, 3, 7, 16, 17, 33, 48, 49, 100, 8191, 8193, 16385])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float64_reference_is_the_old_one_bit_for_bit(k, dtype):
    rows = max(9, min(200, 2**17 // k))
    x, y = _adversarial(rows, k, seed=k, dtype=dtype)
    _check(x, y, blocked=True)
    if k > 1 and LONGDOUBLE_IS_WIDE:  # (row 3's sum underflows: the scaled tier was reached)
        with np.errstate(all="ignore"):
            assert isinstance(softmax_ce.fast_cross_entropy(Loaded(x, y), np.float64)[0], Exact)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 16, 17, 100, 16385])
def test_a_non_finite_row_sends_the_chunk_the_general_way(k):
    for bad in (np.nan, np.inf, -np.inf):
        x, y = _adversarial(12, k, seed=100 + k)
        x[8, k // 2] = bad
        _check(x, y, blocked=False)
    if k > 1:  # x - m overflows float64 (finite logits, not handled)
        x, y = _adversarial(12, k, seed=7, dtype=np.float64)
        x[9, 0], x[9, 1] = 1.7e308, -1.7e308
        _check(x, y, blocked=False)


@pytest.mark.parametrize("levels", [1, 2, 6])
def test_small_blocks_and_groups_are_the_same_tree(levels, monkeypatch):
    """Blocks of 2^4 columns (rows of 17 to 100 logits in many blocks, a ragged last one, the max in any of
    them), 1, 2 or all 4 levels of the sum in a block, and groups of rows that do not divide the chunk
    (short rows too): the same values."""
    monkeypatch.setattr(softmax_ce, "_TILE", 2**6)
    monkeypatch.setattr(softmax_ce, "_TILE_COLUMNS", 2**4)
    monkeypatch.setattr(softmax_ce, "_TILE_LEVELS", levels)
    for k in (3, 7, 16, 17, 31, 32, 33, 64, 65, 100):
        x, y = _adversarial(50, k, seed=k)
        _check(x, y, blocked=True)
        x[3, k - 1] = 1e3  # the max in the last block
        _check(x, y, blocked=True)
    monkeypatch.setattr(softmax_ce, "_TILE", 2**9)  # a whole row a block, several rows a group (7 of 50)
    _check(*_adversarial(50, 70, seed=1), blocked=True)


def test_more_than_2_to_the_20_classes():
    k = 2**20 + 3
    x, y = _adversarial(1, k, seed=3)
    x[0, 5] = 9.0
    _check(x, y, blocked=True)
    _check(x, np.array([5]))  # the label at the max
    x[0, k - 2] = 9.0  # tied in the last block
    _check(x, np.array([k - 2]))


def test_longdouble_is_unchanged():
    for k in (3, 16, 17, 16385):
        _check(*_adversarial(20, k, seed=k), dtype=np.longdouble)


def test_the_comparison_sees_another_order_of_the_sum(monkeypatch):
    """The oracle comparison can fail: with each block's pairwise levels replaced by numpy's own sum (another
    order), or the short rows' argmax replaced by the argmin, rows differ.  (Rows whose loss ~ the sum itself:
    the true class the max, the rest far below, so the sum's last bits show in the loss.)"""
    rng = np.random.default_rng(11)
    monkeypatch.setenv("STABILITYLAB_KERNEL", "0")  # (the numpy blocks)

    def differs(k: int) -> bool:
        x = (rng.standard_normal((16, k)) - 20).astype(np.float32)
        x[:, 0] = 0.0
        cases = Loaded(x, np.zeros(16, dtype=np.int64))
        with np.errstate(all="ignore"):
            new, old = softmax_ce.fast_cross_entropy(cases, np.float64), old_fast_cross_entropy(cases, np.float64)
        return not _same(new, old)

    assert not differs(2**16 + 5) and not differs(7)
    monkeypatch.setattr(softmax_ce, "_tree_levels", lambda t, levels: t.sum(axis=-1, keepdims=True))
    assert differs(2**16 + 5)
    monkeypatch.setattr(softmax_ce, "max_argmax_short", lambda xt: (np.max(xt, axis=0), np.argmin(xt, axis=0)))
    assert differs(7)


def test_from_longdouble_is_the_old_split():
    """reference.from_longdouble's float64 shortcut (every value finite, non-zero, in [2^-960, 2^1023)) against
    the old split, field by field, on such arrays and on arrays with one value outside (each kind), with and
    without rows marked zero; longdouble input unchanged."""
    from stabilitylab.numerics.reference import from_longdouble

    rng = np.random.default_rng(4)
    outside = [0.0, -0.0, np.nan, np.inf, -np.inf, 2.0**-961, -(2.0**-1000), 5e-324, 2.0**1023, -1.7e308]
    for trial in range(40):
        r = rng.standard_normal(50) * 10.0 ** rng.uniform(-280, 300, 50)
        if trial % 2:
            r[int(rng.integers(50))] = outside[trial // 2 % len(outside)]
        zero = rng.random(50) < 0.1 if trial % 4 > 1 else np.zeros(50, dtype=bool)
        for values in (r, r.astype(np.longdouble)):
            new, old = from_longdouble(values, zero), _old_from_longdouble(values, zero)
            for name in ("hi", "lo", "scale", "zero"):
                a, b = getattr(new, name), getattr(old, name)
                assert a.dtype == b.dtype and np.array_equal(_bits(a) if a.dtype.kind == "f" else a,
                                                             _bits(b) if b.dtype.kind == "f" else b), name


def test_random_chunks_of_every_kind(monkeypatch):
    """300 random chunks (1 to 40 rows, 1 to 300 logits, float32 or float64, values from a mixture of scales,
    exact ties and zeros of both signs, sometimes a non-finite logit), with small tiles so that wide rows take
    several: the same bits as the oracle."""
    monkeypatch.setattr(softmax_ce, "_TILE", 2**8)
    monkeypatch.setattr(softmax_ce, "_TILE_COLUMNS", 2**6)
    rng = np.random.default_rng(2026)
    pool = np.array([0.0, -0.0, 1.0, -1.0, 88.7, -745.5, -1e5, 3e38, -3e38, 1e-45, 2.0**-126, 7.5])
    for trial in range(300):
        rows, k = int(rng.integers(1, 41)), int(rng.choice([1, 2, 3, 5, 16, 31, 48, 49, 64, 65, 130, 300]))
        x = rng.standard_normal((rows, k)) * 10.0 ** rng.uniform(-3, 3, (rows, 1))
        pick = rng.random((rows, k)) < 0.2
        x[pick] = rng.choice(pool, int(pick.sum()))
        if trial % 7 == 0:
            x[int(rng.integers(rows)), int(rng.integers(k))] = rng.choice([np.nan, np.inf, -np.inf])
        dtype = np.float64 if trial % 3 == 0 else np.float32
        with np.errstate(all="ignore"):
            x = x.astype(dtype)
        _check(x, rng.integers(0, k, rows))
