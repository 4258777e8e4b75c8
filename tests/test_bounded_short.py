"""float64's bounded reference tier on short rows (10 classes), on by default since streaming.TIER_CLASSES = 6:
the summaries run_chunk gives with it are the longdouble-only ones, bit for bit, on rows where the two references
give different error-bits bins; the bin decision (engine._same_binade) against a plain exact checker; and both
checks fail when the decision is wrong."""

from fractions import Fraction

import numpy as np

from stabilitylab.analysis import engine, streaming
from stabilitylab.analysis.outcome import errors
from stabilitylab.experiments.softmax_ce import Loaded, bounded_cross_entropy
from stabilitylab.numerics.formats import FORMATS

F64 = (FORMATS["float64"],)


def _cells(x, y):
    cells, *_ = streaming.run_chunk(F64, 0, x, y, np.ones(len(x), bool), tolerance=None, ftz=False, keep=10,
                                    cap=100, all_rows=False)
    return cells


def _same(a, b) -> bool:
    return all(np.array_equal(c.counts, b[key].counts) and np.array_equal(c.bits, b[key].bits)
               and all(getattr(c, n).tobytes() == getattr(b[key], n).tobytes() for n in ("worst", "failing", "first"))
               for key, c in a.items())


def _straddling_rows():
    """3000 rows of 10 float32 logits plus the rows of 40000 where the tier's value and the longdouble one give a
    method different error-bits bins (found with every row's columns, which never use the tier)."""
    rng = np.random.default_rng(7)
    n = 40_000
    x = (rng.standard_normal((n, 10)) * rng.choice([0.3, 1, 3, 10], (n, 1))).astype(np.float32)
    y = rng.integers(0, 10, n)
    _, columns, *_ = streaming.run_chunk(F64, 0, x, y, np.ones(n, bool), tolerance=None, ftz=False, keep=10, cap=100,
                                         all_rows=True)
    approx, _, _ = bounded_cross_entropy(Loaded(x.astype(np.float64), y))
    straddle = np.zeros(n, bool)
    for c in columns.values():
        straddle |= np.floor(errors(FORMATS["float64"], c["value"], approx)[2]) != np.floor(c["error_bits"])
    rows = np.unique(np.concatenate([np.flatnonzero(straddle), np.arange(3000)]))
    return x[rows], y[rows], int(straddle.sum())


def test_the_tier_is_on_for_10_classes_and_gives_the_longdouble_summaries(monkeypatch):
    x, y, straddling = _straddling_rows()
    assert straddling >= 10
    used = []
    original = engine._bounded

    def spy(*a, **k):
        got = original(*a, **k)
        used.append(got is not None and len(got[1]) < len(x))  # (some rows kept the tier's value)
        return got

    monkeypatch.setattr(engine, "_bounded", spy)
    tier = _cells(x, y)
    assert used == [True]
    monkeypatch.setattr(streaming, "TIER_CLASSES", 10**9)
    plain = _cells(x, y)
    assert used == [True]  # (not called without the tier)
    assert _same(plain, tier)
    # a bin decision that keeps the tier's value in every row: the straddling rows' bins then differ
    monkeypatch.setattr(streaming, "TIER_CLASSES", 2)
    monkeypatch.setattr(engine, "_same_binade", lambda lo, hi: np.ones(len(lo), bool))
    assert not _same(plain, _cells(x, y))


def _plain_same_bin(lo: float, hi: float) -> bool:
    """Exact: every x in [lo, hi] (lo >= 1) has the same floor(log2 x), 2**-41 relative inside the binade's ends,
    or hi < 2 (bin 0)."""
    lo_, hi_ = Fraction(lo), Fraction(hi)
    if hi_ < 2:
        return True
    j = 0
    while Fraction(2) ** (j + 1) <= lo_:
        j += 1
    margin = Fraction(1, 2**41)
    return Fraction(2) ** j * (1 + margin) <= lo_ and hi_ <= Fraction(2) ** (j + 1) * (1 - margin)


def test_same_binade_against_an_exact_checker():
    rng = np.random.default_rng(11)
    edges = 2.0 ** rng.integers(0, 60, 4000)
    lo = np.maximum(edges * (1 + rng.choice([-1, 1], 4000) * 2.0 ** rng.uniform(-52, -1, 4000)), 1.0)
    hi = lo * (1 + 2.0 ** rng.uniform(-53, 0, 4000))
    lo[:5] = [1.0, 1.0, 1.99, 3.999999, 1.0]
    hi[:5] = [1.5, 1.9999, 2.01, 4.000001, 2.0]
    got = engine._same_binade(lo, hi)
    want = np.array([_plain_same_bin(a, b) for a, b in zip(lo, hi)])
    assert not (got & ~want).any()  # never decided where the checker says the bin may change
    assert got[:2].all() and not got[2:5].any()
    assert got.sum() >= 0.8 * want.sum()  # and decided in most rows the checker decides
    assert not engine._same_binade(np.array([np.nan, 1.0, 1.0]), np.array([np.nan, np.inf, np.nan])).any()
