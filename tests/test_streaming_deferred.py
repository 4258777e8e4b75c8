"""float64 on wide rows: the bounded float64 reference tier kept through the chunk merge (run_chunk's
``defer``, the rows' ulps windows) and the printed rows recomputed on the longdouble reference at the end of
the run (streaming._settle).  The summaries must be those of the longdouble reference alone, byte for byte;
without the end-of-run recompute they are not (a printed column differs between the two references)."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitylab.analysis import streaming
from stabilitylab.io.sources import open_logits
from stabilitylab.numerics.formats import FORMATS

K = 2**16  # 8 rows a chunk by default (2**19 logits): at most keep = 10, so every chunk defers
ROWS = 20


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((ROWS, K)) * rng.choice([0.5, 2, 4], (ROWS, 1))).astype(np.float32)
    x[3, 7] = 60  # a confident row
    path = tmp_path_factory.mktemp("wide") / "logits.npy"
    np.save(path, x)
    y = rng.integers(0, K, ROWS)
    y[3] = 7
    return open_logits(path), y


def _cells(source, y, keep, rows_seen=None, **kwargs):
    """The summary's cells; ``rows_seen``: a list, then every row's columns are written (no tier at all)."""
    on_rows = None if rows_seen is None else rows_seen.append
    s = streaming.summarize(source, y, np.ones(source.rows, bool), (FORMATS["float64"],), keep=keep,
                            on_rows=on_rows, **kwargs)
    return s.cells


def _same(a, b) -> bool:
    return all(np.array_equal(c.counts, b[k].counts) and np.array_equal(c.bits, b[k].bits)
               and all(getattr(c, n).tobytes() == getattr(b[k], n).tobytes() for n in ("worst", "failing", "first"))
               for k, c in a.items())


def test_deferred_rows_give_the_longdouble_summaries_and_are_recomputed(wide, monkeypatch):
    source, y = wide
    monkeypatch.setattr(streaming, "DEFER_ROWS", 0)  # (a small file: by default its chunks would not defer)
    for keep, per_chunk in ((3, 2), (10, None)):  # (chunks of at most keep rows defer)
        plain = _cells(source, y, keep, [], workers=1, rows_per_chunk=per_chunk)
        assert all(c.worst.dtype == streaming.ROW for c in plain.values())
        settled = []
        original = streaming._settle

        def spy(cells, *args):
            settled.append(sum(int((a["window"] > 0).sum()) for c in cells.values()
                               for a in (c.worst, c.failing, c.first) if a.dtype == streaming.ROW_T))
            return original(cells, *args)

        monkeypatch.setattr(streaming, "_settle", spy)
        assert _same(plain, _cells(source, y, keep, workers=1, rows_per_chunk=per_chunk))
        # (ROW_T cells merged from forked workers)
        assert _same(plain, _cells(source, y, keep, workers=2, rows_per_chunk=per_chunk))
        assert settled[0] >= 4 * keep  # the tier was kept in printed rows: there was something to recompute
        # the end-of-run recompute skipped: the windows dropped, the float64 tier's columns printed
        monkeypatch.setattr(streaming, "_settle", lambda cells, *args: [
            setattr(c, n, streaming._as_rows(streaming._worst(getattr(c, n), keep) if n == "worst"
                                              else getattr(c, n), streaming.ROW))
            for c in cells.values() for n in ("worst", "failing", "first")])
        assert not _same(plain, _cells(source, y, keep, workers=1, rows_per_chunk=per_chunk))
        monkeypatch.setattr(streaming, "_settle", original)


def test_small_files_do_not_defer(wide, monkeypatch):
    source, y = wide
    seen = []
    original = streaming.run_chunk
    monkeypatch.setattr(streaming, "run_chunk",
                        lambda *a, **k: (seen.append(k.get("defer", False)), original(*a, **k))[1])
    _cells(source, y, 10, workers=1)  # 20 rows < 16 x 10
    assert seen and not any(seen)
    seen.clear()
    _cells(source, y, 1, workers=1)  # 20 rows >= 16 x 1 (chunks of 8 rows, or one of 20 with the compiled kernel,
    assert seen and all(seen)  # which takes float64's chunks larger where small ones would hold more than keep rows)


def test_worst_candidates_hold_the_true_worst_rows():
    """Plain check of _worst_candidates: rows with a window whose true ulps lie anywhere inside it; the
    ``keep`` worst by the true values (sorted plainly) are always among the candidates, which are fewer
    than all rows; with the windows ignored they are not (the check can fail)."""
    rng = np.random.default_rng(5)
    missed_without_windows = 0
    for trial in range(300):
        n, keep = int(rng.integers(11, 60)), int(rng.integers(1, 11))
        true = rng.choice([0.25, 0.5, 0.51, 0.75, 1.0, 3.0], n) + rng.uniform(0, 0.05, n)
        w = np.where(rng.random(n) < 0.8, rng.uniform(0.001, 0.1, n), 0.0)
        shown = np.maximum(true + rng.uniform(-1, 1, n) * w, 0.0)  # the tier's ulps, within w of the true
        rows = np.zeros(n, streaming.ROW_T)
        rows["row"] = rng.permutation(n)
        rows["ulps"], rows["window"] = shown, w
        rows["error_bits"] = np.log2(shown + 1)
        candidates = set(streaming._worst_candidates(rows, keep)["row"].tolist())
        bits = np.log2(true + 1)
        order = sorted(range(n), key=lambda i: (-bits[i], rows["row"][i]))
        truth = {int(rows["row"][i]) for i in order[:keep]}
        assert truth <= candidates, trial
        plain = rows.copy()
        plain["window"] = 0.0
        missed_without_windows += not truth <= set(streaming._worst(plain, keep)["row"].tolist())
    assert missed_without_windows > 10


def test_printed_tier_on_64_classes_gives_the_longdouble_cells(monkeypatch):
    """run_chunk without rows' columns (the tier where the cells cannot tell, its kept rows classified once:
    engine._spliced) against run_chunk with them (longdouble only), on logits at several scales with ties and huge
    logits: the same cells, byte for byte, and the tier was used; with the refined rows not classified again
    (their columns the tier's) the cells differ."""
    from stabilitylab.analysis import engine

    rng = np.random.default_rng(8)
    rows, k = 4000, 64
    x = rng.standard_normal((rows, k)) * rng.choice([0.01, 1, 5, 30, 100], size=(rows, 1))
    x[::101, 0] = x[::101, 1]
    x[50::97, 2] += 1e3  # (some rows to the engine: no NaN or infinite logit, whose rows would be all the worst)
    x, y = x.astype(np.float32), rng.integers(0, k, rows)
    from stabilitylab.analysis import softmax_bulk

    promised = []
    classified = softmax_bulk._classified

    def checked(truth, runs, *args, **kw):  # the fused path's promise: its Ariths recorded nothing classify reads
        promised.append(kw.get("eventless", False) and all(engine._eventless(a) for _, a, _ in runs))
        return classified(truth, runs, *args, **kw)

    monkeypatch.setattr(softmax_bulk, "_classified", checked)
    used = []
    original = engine._bounded
    monkeypatch.setattr(engine, "_bounded", lambda *a, **kw: (lambda got: (used.append(got is not None), got)[1])(
        original(*a, **kw)))

    def cells(all_rows):
        got, *_ = streaming.run_chunk((FORMATS["float64"],), 0, x, y, np.ones(rows, bool), tolerance=None, ftz=False,
                                      keep=10, cap=100, all_rows=all_rows)
        return got

    plain = cells(True)
    assert not used
    assert _same(plain, cells(False))
    assert used == [True]
    assert promised and all(promised)
    assert sum(int((c.counts > 0).sum()) for c in plain.values()) >= 8  # several statuses
    monkeypatch.setattr(engine, "_spliced", lambda fmt, o, value, exact, *rest: engine.Outcome(
        o.value, None, exact, None, o.rel_error, o.ulps, o.error_bits, o.first_steps, codes=o.codes))
    assert not _same(plain, cells(False))


def test_a_file_changed_before_the_end_of_run_reread_is_refused(tmp_path, monkeypatch):
    """_settle reads the deferred rows again by path: a file rewritten after the pass must not mix the pass's
    values with the new logits' reference (a silent wrong error); the re-read rows are checked against the
    pass's (CRC-32 of their logits) and a change is one InputError line."""
    from stabilitylab.errors import InputError

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((40, 64)) * 8).astype(np.float32)
    path = tmp_path / "logits.npy"
    np.save(path, x)
    source, y = open_logits(path), rng.integers(0, 64, 40)
    settle = streaming._settle

    def rewritten_first(*args, **kwargs):
        np.save(path, x * np.float32(1.5))  # (same shape and dtype: only the values differ)
        return settle(*args, **kwargs)

    monkeypatch.setattr(streaming, "DEFER_ROWS", 0)  # (a small file: by default its chunks would not defer)
    monkeypatch.setattr(streaming, "_settle", rewritten_first)
    with pytest.raises(InputError, match="changed"):
        _cells(source, y, 10, workers=1, rows_per_chunk=3)
    np.save(path, x)  # unchanged: the same summaries as without the check
    monkeypatch.setattr(streaming, "_settle", settle)
    assert _same(_cells(source, y, 10, workers=1, rows_per_chunk=3), _cells(source, y, 10, [], workers=1,
                                                                             rows_per_chunk=3))


def test_settling_reference_in_parts_is_the_whole(wide):
    """The end-of-run reference on the pool's workers, in parts of the rows (and 1 row alone), equals the reference
    of all the rows at once, bit for bit.  (Rows of more than 2**20 classes, one at a time, take fast_cross_entropy's
    single-row wide path: review9 compared parts, one row and the whole there too, at 2**20 + 1 and 3,000,000
    classes, by hand: too large for this suite.)"""
    from stabilitylab.analysis import parallel

    source, y = wide
    rows = np.array([0, 3, 5, 8, 13])
    xl, labels = np.asarray(source.take(rows), dtype=np.float64), y[rows]
    f64 = FORMATS["float64"]
    whole = streaming._settling_reference(f64, xl, labels, None, 1)
    pool = parallel.fork_pool(2)
    if pool is None:
        pytest.skip("no fork here")
    sent = []
    with pool:
        submit = pool.submit
        pool.submit = lambda fn, *a: (sent.append(len(a[1])), submit(fn, *a))[1]
        parts = streaming._settling_reference(f64, xl, labels, pool, 2)
        alone = streaming._settling_reference(f64, xl[1:2], labels[1:2], pool, 2)
    assert sent == [2, 3]  # (two parts; one row is computed here)
    assert len(parts) == 5 and len(alone) == 1
    for name in ("hi", "lo", "scale", "zero"):
        assert getattr(parts, name).tobytes() == getattr(whole, name).tobytes(), name
        assert getattr(alone, name).tobytes() == getattr(whole, name)[1:2].tobytes(), name
