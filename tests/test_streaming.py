"""The bulk path (streaming.run_chunk: Arith(fast=True), float64 / longdouble references)
against the general engine (format dtypes, longdouble / mpmath references): the same values,
bit for bit, and the same statuses, on a 10**5-row sample."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitylab.analysis import engine, parallel, streaming
from stabilitylab.analysis.outcome import STATUSES
from stabilitylab.experiments.base import ParamNames
from stabilitylab.experiments.softmax_ce import SOFTMAX_CE, Logits
from stabilitylab.numerics import reference
from stabilitylab.numerics.formats import ALL_FORMATS, FORMATS
from stabilitylab.numerics.policies import format_or_policy

ROWS, K = 100_000, 10


def sample(rows: int = ROWS, classes: int = K, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits at every scale (overflow, underflow, confident rows, ties), a few non-finite rows."""
    rng = np.random.default_rng(seed)
    scale = rng.choice([0.01, 1, 5, 30, 100, 1e3, 1e5], size=(rows, 1))
    x = rng.standard_normal((rows, classes)) * scale
    x[::101, 0] = x[::101, 1]  # ties
    x[::997, 2] += 1e4  # one huge logit
    x[5::1009, 3] = np.inf
    x[7::1013, 4] = np.nan
    x[9::1019] = -np.inf
    y = rng.integers(0, classes, rows)
    return x.astype(np.float32), y


def _bulk(fmt, x, y):
    cells, columns, *_ = streaming.run_chunk((fmt,), 0, x, y, np.ones(len(x), bool), tolerance=None, ftz=False,
                                            keep=10, cap=100, all_rows=True)
    return cells, columns


POLICIES = ("bf16@fp32", "bf16+fp32", "fp16@fp32", "bf16@autocast", "fp32@bf16", "float8_e4m3fn:saturate")


@pytest.mark.parametrize("fmt", [*ALL_FORMATS, *(pytest.param(format_or_policy(p), marks=pytest.mark.slow)
                                                  for p in POLICIES)], ids=lambda f: f.name)
def test_bulk_path_equals_the_general_engine(fmt):
    rows = ROWS if fmt.precision <= 24 else 20_000  # float64's general engine runs mpmath per row
    x, y = sample(rows)
    _, columns = _bulk(fmt, x, y)
    cases = Logits(ParamNames("row", np.arange(rows)), x.astype(np.float64), y, np.full(rows, K))
    general = engine.evaluate(SOFTMAX_CE, fmt, cases)
    bound = reference.fast_error(np.float64 if fmt.precision <= 24 else np.longdouble, K)
    for method, o in general.items():
        got = columns[fmt.name, method]
        assert np.array_equal(got["row"], np.arange(rows))
        with np.errstate(invalid="ignore"):
            same = (got["value"] == o.value) | (np.isnan(got["value"]) & np.isnan(o.value))
        assert same.all(), (method, np.flatnonzero(~same)[:5])
        assert np.array_equal(np.signbit(got["value"][~np.isnan(o.value)]), np.signbit(o.value[~np.isnan(o.value)]))
        status = np.array(STATUSES)[got["status"]]
        assert np.array_equal(status, o.status), (method, np.flatnonzero(status != o.status)[:5])
        # the bulk references agree with the general ones within the stated bound
        finite = np.isfinite(o.exact.hi) & (o.exact.hi != 0) & (o.exact.scale == 0)
        with np.errstate(invalid="ignore"):
            rel = np.abs(got["exact_hi"][finite] - o.exact.hi[finite]) / np.abs(o.exact.hi[finite])
        assert rel.max() <= 2 * bound
    statuses = {s for o in general.values() for s in o.status}
    assert len(statuses) >= 3  # the sample reaches several statuses in every format


def test_summary_counts_add_up_across_chunks_and_workers():
    x, y = sample(20_000, seed=1)

    class Source:
        rows, classes = x.shape

        def chunks(self, n):
            for i in range(0, len(x), n):
                yield i, x[i:i + n]

    keep = np.ones(len(x), bool)
    keep[::3] = False
    fmts = (FORMATS["bfloat16"], FORMATS["float32"])
    one = streaming.summarize(Source(), y, keep, fmts, rows_per_chunk=len(x), workers=1)
    many = streaming.summarize(Source(), y, keep, fmts, rows_per_chunk=1234, workers=2)
    for key, cell in one.cells.items():
        other = many.cells[key]
        assert cell.counts.sum() == keep.sum() == one.rows
        assert np.array_equal(cell.counts, other.counts)
        assert np.array_equal(cell.bits, other.bits)
        for kept in ("worst", "failing"):
            a, b = getattr(cell, kept), getattr(other, kept)
            for name in a.dtype.names:
                assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), (kept, name)
        assert len(cell.worst) == 10 and len(cell.failing) == min(100, cell.failures)
        assert not np.isin(cell.failing["row"], np.flatnonzero(~keep)).any()
        assert np.all(np.diff(cell.failing["row"]) > 0)


def test_forked_workers_give_the_same_summary_once_formats_were_used(monkeypatch):
    """A Format whose ``finfo`` is cached does not survive pickling: the workers get format
    names (before, every chunk sent to a worker broke the pool)."""
    x, y = sample(2**20 // K + 1000, seed=2)  # large enough for the pool

    class Source:
        rows, classes = x.shape

        def chunks(self, n):
            for i in range(0, len(x), n):
                yield i, x[i:i + n]

    fmts = (FORMATS["bfloat16"], FORMATS["float32"])
    assert all(f.max > 0 for f in fmts)  # finfo cached
    pools = []
    monkeypatch.setattr(streaming, "fork_pool", lambda n: pools.append(n) or parallel.fork_pool(n))
    keep = np.ones(len(x), bool)
    many = streaming.summarize(Source(), y, keep, fmts, rows_per_chunk=2**14, workers=2)
    one = streaming.summarize(Source(), y, keep, fmts, rows_per_chunk=2**14, workers=1)
    assert pools == [2, 1]
    assert one.reference_error == many.reference_error
    for key, cell in one.cells.items():
        assert np.array_equal(cell.counts, many.cells[key].counts)
        assert np.array_equal(cell.bits, many.cells[key].bits)


def test_saturated_max_at_the_overflow_boundary_is_rechecked():
    """float8_e4m3fn:saturate, logits whose rounded exact loss is 464 + ~1e-16 (max 448 + half its ulp,
    the overflow boundary, plus a term far below float64's ulp there): naive_softmax_log gives the
    saturated 448, which is ok below the boundary and range beyond it.  The bulk path's float64 reference
    reads 464 exactly; the row must be re-checked (a saturated +-max is a value whose status the
    reference's side of the boundary decides), as the general engine does: range, both."""
    x = np.array([[24.838934, 182.22444, 39.859818, -27.080265, 139.154, -166.92148, 10.221827, 135.38719,
                   -82.73219, -293.78265]], dtype=np.float32)
    y = np.array([9])
    fmt = format_or_policy("float8_e4m3fn:saturate")
    _, columns = _bulk(fmt, x, y)
    cases = Logits(ParamNames("row", np.arange(1)), x.astype(np.float64), y, np.full(1, K))
    general = engine.evaluate(SOFTMAX_CE, fmt, cases)
    for method, o in general.items():
        assert np.array(STATUSES)[columns[fmt.name, method]["status"]].tolist() == o.status.tolist(), method
    assert general["naive_softmax_log"].status.tolist() == ["range"]


def test_workers_read_their_chunks_from_an_npy_file(tmp_path):
    """Where the file can be read anywhere (.npy), forked workers read their own chunks: the parent does not
    read the logits (its chunks() would raise here), and the summary is the one-process summary."""
    from stabilitylab.errors import InputError
    from stabilitylab.io import sources

    x, y = sample(2**20 // K + 1000, seed=4)
    path = tmp_path / "logits.npy"
    np.save(path, x)
    source = sources.open_logits(path)
    assert source.readable_anywhere
    keep = np.ones(len(x), bool)
    keep[::5] = False
    fmts = (FORMATS["bfloat16"],)
    one = streaming.summarize(source, y, keep, fmts, rows_per_chunk=2**14, workers=1)

    def no_reading(n):
        raise AssertionError("the parent read the logits")

    source.chunks = no_reading
    many = streaming.summarize(source, y, keep, fmts, rows_per_chunk=2**14, workers=2)
    for key, cell in one.cells.items():
        other = many.cells[key]
        assert np.array_equal(cell.counts, other.counts) and np.array_equal(cell.bits, other.bits)
        for kept in ("worst", "failing", "first"):
            a, b = getattr(cell, kept), getattr(other, kept)
            for name in a.dtype.names:
                assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), (kept, name)
    assert one.notes == many.notes
    # a file cut short after it was opened: the same one-line error, naming --logits, as reading in order gives
    data = path.read_bytes()
    errors = []
    for workers in (1, 2):
        path.write_bytes(data)
        source = sources.open_logits(path)
        path.write_bytes(data[: 128 + 3 * K * 4 * 2**14 + 100])  # (ends inside the fourth chunk)
        with pytest.raises(InputError) as caught:
            streaming.summarize(source, y, keep, fmts, rows_per_chunk=2**14, workers=workers)
        errors.append((str(caught.value), caught.value.option))
    assert errors[0] == errors[1] and errors[0][1] == "--logits" and "truncated" in errors[0][0]
