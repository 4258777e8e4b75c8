"""A chunk's summaries (streaming._cell: status counts, the error-bits histogram, the worst, failing and first
rows) against a deliberately plain summary of the same outcome: one sort of every row, one bin per row.
The rows are built at each boundary of the shortcuts: errors below and above 16 bits (the histogram's
comparison path and its bincount path), at 65 bits and above, NaN and inf, ties at the keep-th worst error,
more NaN / inf rows than are kept, statuses first seen late in a chunk (past the first scanned block)."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitylab.analysis import softmax_bulk, streaming
from stabilitylab.analysis.outcome import METHOD_FAILURES, STATUSES, Outcome
from stabilitylab.numerics.arith import EVENTS, NEVER
from stabilitylab.numerics.reference import Exact

KEEP, CAP = 10, 100


def plain(e: np.ndarray, codes: np.ndarray, rows: np.ndarray):
    """(counts, bits, worst rows, failing rows, first row of each status) by the definitions."""
    counts = [int(np.sum(codes == k)) for k in range(len(STATUSES))]
    bits = [0] * (streaming.BITS_BINS + 2)
    for b in e.tolist():
        if b != b:
            bits[-1] += 1
        elif b == float("inf"):
            bits[-2] += 1
        else:
            bits[min(int(b), streaming.BITS_BINS - 1)] += 1
    # NaN first, then inf, then the largest; ties by row
    key = [(0 if b != b else 1, -(b if b == b else 0.0), r) for b, r in zip(e.tolist(), rows.tolist())]
    worst = [r for _, _, r in sorted(key)[:KEEP]]
    failing = [int(r) for r, c in zip(rows, codes) if STATUSES[c] in METHOD_FAILURES][:CAP]
    first = [int(rows[list(codes).index(k)]) for k in range(len(STATUSES)) if k in set(codes.tolist())]
    return counts, bits, worst, failing, first


def outcome(e: np.ndarray, codes: np.ndarray) -> Outcome:
    n = len(e)
    exact = Exact(np.ones(n), np.zeros(n), np.zeros(n, np.int64), np.zeros(n, bool))
    return Outcome(np.ones(n), np.ones(n), exact, None, e, e, e, np.full((len(EVENTS), n), NEVER), codes=codes)


def cases():
    rng = np.random.default_rng(7)
    n = 20_000
    yield "small errors", rng.random(n) * 3, np.zeros(n, np.uint8)
    e = rng.random(n) * 3
    e[[5, 900, 15_000]] = 2.999  # ties at the top
    e[-3:] = 2.999
    yield "ties at the top", e, (rng.random(n) < 0.1).astype(np.uint8) * 2
    e = np.floor(rng.random(n) * 8)  # integers: ties everywhere, the threshold bin's edge exactly
    yield "integer errors", e, rng.integers(0, len(STATUSES), n).astype(np.uint8)
    e = rng.random(n) * 15.999
    e[12] = 15.999
    yield "just below 16", e, np.zeros(n, np.uint8)
    e = rng.random(n) * 3
    e[19_000] = 16.0
    yield "16 late", e, np.where(np.arange(n) == 19_500, 5, 0).astype(np.uint8)
    e = rng.random(n) * 80
    e[[3, 4]] = 65.0
    e[7] = 64.999
    yield "65 bits and above", e, np.full(n, 2, np.uint8)
    e = rng.random(n)
    e[[100, 18_000]] = np.inf
    e[[50, 17_000]] = np.nan
    yield "NaN and inf", e, np.zeros(n, np.uint8)
    e = rng.random(n)
    e[::997] = np.inf
    e[::1999] = np.nan
    yield "more non-finite than kept", e, np.where(np.isnan(e), 5, 0).astype(np.uint8)
    codes = np.zeros(n, np.uint8)
    codes[-150:] = 2
    codes[5000] = 7
    yield "failing late", rng.random(n), codes
    yield "a few rows", np.array([np.nan, 1.0, 0.0, np.inf, 1.0]), np.array([5, 0, 1, 6, 2], np.uint8)
    yield "no rows", np.zeros(0), np.zeros(0, np.uint8)


@pytest.mark.parametrize("name,e,codes", list(cases()), ids=[c[0] for c in cases()])
def test_cell_equals_a_plain_summary(name, e, codes):
    rows = np.arange(len(e)) * 3 + 11
    cell = streaming._cell(outcome(e, codes), rows, np.zeros(len(e), np.int64), KEEP, CAP, None)
    counts, bits, worst, failing, first = plain(e, codes, rows)
    assert cell.counts.tolist() == counts
    assert cell.bits.tolist() == bits
    assert cell.worst["row"].tolist() == worst
    assert cell.failing["row"].tolist() == failing
    assert cell.first["row"].tolist() == first
    assert cell.first["status"].tolist() == sorted(set(codes.tolist()))


@pytest.mark.parametrize("classes", [1, 2, 3, 10, 16, 17])
def test_labels_are_numpys_argmax_with_nan_as_minus_infinity(classes):
    """A chunk's labels (no label file): the first maximum, NaN as -inf; finite chunks take the shortcut."""
    rng = np.random.default_rng(classes)
    pool = np.array([-0.0, 0.0, 1.0, -1.0, 3.0, -3e38, 3e38, 1e-45], np.float32)
    x = rng.choice(pool, size=(4000, classes))  # ties everywhere, both zeros
    plain = [int(np.argmax([v if v == v else -np.inf for v in row])) for row in x.tolist()]
    assert streaming._labels(x, True).tolist() == plain
    assert streaming._scan(x, False)[2].tolist() == plain  # (the kernel's, where it is built)
    x[::7, classes // 2] = np.nan
    x[::5, 0] = -np.inf
    x[::11] = np.nan
    plain = [int(np.argmax([v if v == v else -np.inf for v in row])) for row in x.tolist()]
    assert streaming._labels(x, False).tolist() == plain
    assert streaming._scan(x, False)[2].tolist() == plain


def test_short_rows_max_and_first_argmax():
    rng = np.random.default_rng(3)
    for classes in (1, 2, 5, 16):
        x = rng.choice(np.array([-0.0, 0.0, 2.0, -1.0, np.inf, -np.inf], np.float32), size=(3000, classes))
        m, k = softmax_bulk.max_argmax_short(np.ascontiguousarray(x.T))
        assert m.tolist() == [max(row) for row in x.tolist()]
        assert k.tolist() == [row.index(max(row)) for row in x.tolist()]
