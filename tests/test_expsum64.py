"""The bounded float64 tier of softmax_ce's float64 reference (numerics/expsum64.py) against mpmath at 200
bits (a separate checker), and engine._classified's use of it (``printed``): the same summaries, bit for
bit, as the longdouble reference alone, on rows where the two references fall in different error-bits bins
(a bound too small would keep the float64 value there: the test then fails, checked below)."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stabilitylab.analysis import streaming
from stabilitylab.analysis.outcome import errors
from stabilitylab.experiments import softmax_ce
from stabilitylab.experiments.softmax_ce import Loaded, _tree_sum, bounded_cross_entropy
from stabilitylab.numerics import expsum64, reference
from stabilitylab.numerics.formats import FORMATS


def _exact(x: np.ndarray, y: int) -> mpmath.mpf:
    """-log softmax(x)_y at 200 bits, plainly: log1p(sum_{i != y} e**(x_i - x_y))."""
    with mpmath.workprec(200):
        xy = mpmath.mpf(float(x[y]))
        return mpmath.log1p(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v)) - xy) for i, v in enumerate(x) if i != y))


def _rows() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    out = []
    for k, scale in ((2, 1.0), (2, 300.0), (10, 0.01), (10, 1.0), (10, 30.0), (10, 300.0), (300, 3.0), (3000, 2.0)):
        rows = 40 if k <= 300 else 5
        x = rng.standard_normal((rows, k)) * scale
        x[0, :] = 0.0  # every term 1: ties with the max
        x[1:4, 0] = 0.0
        x[1, 1:] = -650.0  # the max dominates: S ~ e**-650 (not handled: below FLOOR), loss ~ S
        x[2, 1:] = -550.0  # S ~ e**-550, handled: a relative bound on a tiny loss
        x[3, 1:] = -800.0 if k > 2 else -100.0  # terms clamped at e**-707 (S still far above)
        x[3, 1] = -20.0
        x[4, 0] = x[4, 1] = x[4].max() + 1  # a tie for the max
        out.append((x.astype(np.float32).astype(np.float64), rng.integers(0, k, rows)))
    return out


def test_log1p_exp_sum_is_within_its_bound_of_mpmath():
    worst = 0.0
    for x, y in _rows():
        k = x.shape[1]
        m, top = x.max(axis=1), np.argmax(x, axis=1)
        d = x - m[:, None]
        g = -d[np.arange(len(x)), y]
        hi, lo, bound, handled = expsum64.log1p_exp_sum(d, top, g, _tree_sum)
        assert not handled[1] and handled[0] and handled[2] and handled[3]
        for i in np.flatnonzero(handled):
            v = _exact(x[i], int(y[i]))
            with mpmath.workprec(200):
                rel = float(abs(mpmath.mpf(float(hi[i])) + float(lo[i]) - v) / v)
            assert rel <= bound[i], (k, i, rel, bound[i])
            worst = max(worst, rel / bound[i])
            assert abs(lo[i]) <= np.spacing(hi[i]) / 2  # a normalized pair
        # the bound is what the proof says: ~2**-62 relative plus 2**-62 absolute for rows of moderate width
        typical = handled & (hi > 1)
        assert bound[typical].max() <= 2.0**-60 if k <= 300 else 2.0**-59
    assert worst > 2.0**-12  # the comparison is not vacuous: errors reach a fair fraction of the bound


def test_sum_bound_grows_with_the_width():
    assert expsum64.sum_bound(2) < expsum64.sum_bound(2**10) < expsum64.sum_bound(2**20) < 2.0**-59
    with pytest.raises(ValueError):
        expsum64.log1p_exp_sum(np.zeros((1, 1)), np.zeros(1, np.intp), np.zeros(1), _tree_sum)


def _pool(n: int = 40_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((n, 10)) * rng.choice([0.3, 1, 3, 10], (n, 1))).astype(np.float32)
    return x, rng.integers(0, 10, n)


def _summary(x, y, monkeypatch, printed):
    # (run_chunk passes printed = (keep, cap) itself on rows of at least TIER_CLASSES classes)
    assert printed in (None, (10, 100))
    monkeypatch.setattr(streaming, "TIER_CLASSES", 2 if printed else 10**9)
    cells, *_ = streaming.run_chunk((FORMATS["float64"],), 0, x, y, np.ones(len(x), bool), tolerance=None,
                                    ftz=False, keep=10, cap=100, all_rows=False)
    return cells


def _same(a, b) -> bool:
    for key, c in a.items():
        d = b[key]
        if not (np.array_equal(c.counts, d.counts) and np.array_equal(c.bits, d.bits)):
            return False
        if any(getattr(c, kept).tobytes() != getattr(d, kept).tobytes() for kept in ("worst", "failing", "first")):
            return False
    return True


def test_bounded_tier_gives_the_longdouble_summaries_where_the_two_references_straddle_a_bin(monkeypatch):
    x, y = _pool()
    # rows where the float64 tier's value and the longdouble one give different error-bits bins for a method
    _, columns, *_ = streaming.run_chunk((FORMATS["float64"],), 0, x, y, np.ones(len(x), bool), tolerance=None,
                                         ftz=False, keep=10, cap=100, all_rows=True)
    approx, _, _ = bounded_cross_entropy(Loaded(x.astype(np.float64), y))
    straddle = np.zeros(len(x), bool)
    for c in columns.values():
        straddle |= np.floor(errors(FORMATS["float64"], c["value"], approx)[2]) != np.floor(c["error_bits"])
    assert straddle.sum() >= 10
    rows = np.sort(np.concatenate([np.flatnonzero(straddle), np.arange(3000)]))
    rows = np.unique(rows)
    xs, ys = x[rows], y[rows]
    xs[5] = [0, -800, -800, -800, -800, -800, -800, -800, -800, 0.5]  # shifted_softmax_log underflows: 0 -> special
    ys[5] = 1
    plain = _summary(xs, ys, monkeypatch, None)
    assert _same(plain, _summary(xs, ys, monkeypatch, (10, 100)))
    # a bound 2**30 times too small keeps float64 values in straddling rows: the summaries then differ
    right = softmax_ce.bounded_cross_entropy

    def wrong(inputs):
        approx, bound, handled = right(inputs)
        return approx, bound * 2.0**-30, handled

    monkeypatch.setattr(softmax_ce.fast_cross_entropy, "bounded", wrong)
    monkeypatch.setattr(reference, "longdouble_error", lambda terms: 0.0)
    assert not _same(plain, _summary(xs, ys, monkeypatch, (10, 100)))


def test_bounded_tier_on_rows_of_every_status(monkeypatch):
    """Logits at every scale, ties, huge and non-finite logits (test_streaming's sample): overflow,
    underflow, range, inaccurate and NaN rows; the same summaries with and without the float64 tier."""
    rng = np.random.default_rng(3)
    rows, k = 20_000, 10
    x = rng.standard_normal((rows, k)) * rng.choice([0.01, 1, 5, 30, 100, 1e3, 1e5], size=(rows, 1))
    x[::101, 0] = x[::101, 1]
    x[::997, 2] += 1e4
    x[5::1009, 3] = np.inf
    x[7::1013, 4] = np.nan
    x[9::1019] = -np.inf
    x, y = x.astype(np.float32), rng.integers(0, k, rows)
    plain = _summary(x, y, monkeypatch, None)
    assert _same(plain, _summary(x, y, monkeypatch, (10, 100)))
    assert sum(int((c.counts > 0).sum()) for c in plain.values()) >= 16  # several statuses in every method
