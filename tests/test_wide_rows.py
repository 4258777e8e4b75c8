"""Wide rows (issue #18: a 1 x 3*10**7 row peaked at 2.2 GB): a row is rounded, checked, exponentiated
and summed by the reference in blocks of columns, and its methods share no intermediates.  The same
bits as doing each step on the whole row at once, and a peak memory that stays bounded per logit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stabilitylab.analysis import engine, streaming
from stabilitylab.experiments import softmax_ce
from stabilitylab.experiments.base import ParamNames
from stabilitylab.experiments.softmax_ce import SOFTMAX_CE, Logits
from stabilitylab.numerics import arith, crmath
from stabilitylab.numerics.formats import ALL_FORMATS

REPO = Path(__file__).resolve().parents[1]


def _rows(rows: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits that overflow and underflow the narrow formats, with ties, and -inf / inf / NaN."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 30, (rows, width))
    x[:, 7] = x[:, 3]
    x[0, 11] = 1e-40  # (a subnormal input in float32, 0 in the narrow formats)
    if rows > 1:
        x[0, 5], x[1, 9], x[1, 13] = -np.inf, np.inf, np.nan
    return x.astype(np.float32), rng.integers(0, width, rows)


def _evaluate(fmt, x, y, blocked: bool, monkeypatch) -> dict:
    with monkeypatch.context() as m:
        if blocked:  # small blocks (the row's width is many blocks, with a ragged last one)
            m.setattr(arith, "_BLOCK", 2**8)
            m.setattr(crmath, "_BLOCK", 2**7)
            m.setattr(softmax_ce, "_BLOCK", 2**9)
            m.setattr(engine, "SHARED_BYTES", 0)
        else:  # the whole row at once, intermediates shared between methods
            m.setattr(arith, "_BLOCK", 2**40)
            m.setattr(crmath, "_BLOCK", 2**40)
            m.setattr(softmax_ce, "_BLOCK", 2**40)
            m.setattr(engine, "SHARED_BYTES", 2**60)
        cases = Logits(ParamNames("row", np.arange(len(x))), x, y, np.full(len(x), x.shape[1]))
        outcomes = engine.evaluate(SOFTMAX_CE, fmt, cases, fast_reference=True, fast=True)
        cells = streaming.run_chunk((fmt,), 0, x, y, np.ones(len(x), bool), tolerance=None, ftz=False, keep=10,
                                    cap=100, all_rows=True)[1]
    return {"outcomes": outcomes, "columns": cells}


@pytest.mark.parametrize("rows, width", [(1, 5003), (2, 2100)])
@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=lambda f: f.name)
def test_a_wide_row_in_blocks_is_the_same_bits(fmt, rows, width, monkeypatch):
    x, y = _rows(rows, width, seed=width)
    whole, blocked = (_evaluate(fmt, x, y, b, monkeypatch) for b in (False, True))
    for method, o in whole["outcomes"].items():
        b = blocked["outcomes"][method]
        assert np.array_equal(o.value, b.value, equal_nan=True)
        assert np.array_equal(np.signbit(o.value), np.signbit(b.value))
        assert np.array_equal(o.status, b.status)
        assert np.array_equal(o.first_steps, b.first_steps), method  # events, and the step of each
        for name in ("hi", "lo", "scale", "zero"):
            assert np.array_equal(getattr(o.exact, name), getattr(b.exact, name), equal_nan=True), (method, name)
    for key, column in whole["columns"].items():
        other = blocked["columns"][key]
        for name in column.dtype.names:
            assert np.array_equal(column[name], other[name], equal_nan=column[name].dtype.kind == "f"), (key, name)


@pytest.mark.parametrize("wide", [np.float64, np.longdouble])
@pytest.mark.parametrize("width", [2**12, 2**12 + 1, 3 * 2**12 - 5])
def test_the_blocked_reference_sums_in_the_same_tree(wide, width, monkeypatch):
    rng = np.random.default_rng(width)
    x = rng.normal(0, 1, (1, width)).astype(np.float32)  # terms of one size: the order of the sum shows
    loaded = softmax_ce.Loaded(x, np.array([width // 3]))
    with np.errstate(all="ignore"):
        whole = softmax_ce.fast_cross_entropy(loaded, wide)
        for block in (2**5, 2**9):  # (a cumulative sum of the blocks' partial sums fails this at 4097)
            monkeypatch.setattr(softmax_ce, "_BLOCK", block)
            blocked = softmax_ce.fast_cross_entropy(loaded, wide)
            for a, b in zip(whole, blocked):
                assert np.array_equal(a, b) and np.array_equal(np.signbit(a), np.signbit(b)), block


WIDTH = 5_000_000
FIXED_MB = 250  # the interpreter, numpy, mpmath, crmath's tables: what a 1 x 1 file costs, with room
PER_LOGIT = 10**9 / 30_000_000  # bytes: 1 GB for the 1 x 3*10**7 row of issue #18


def test_a_wide_row_stays_within_its_memory_bound(tmp_path):
    """1 x 5*10**6 float32 logits, every default format: the peak RSS (of the compare process,
    measured by a parent of its own) within FIXED_MB + PER_LOGIT per logit (~417 MB; ~350 MB
    measured; 776 MB before issue #18's fix, 2.2-4.1 GB at 3*10**7)."""
    path = tmp_path / "wide.npy"
    np.save(path, np.random.default_rng(0).normal(0, 3, (1, WIDTH)).astype(np.float32))
    out = tmp_path / "out.json"
    command = [sys.executable, "-m", "stabilitylab", "compare", "--logits", str(path), "--format", "json", "-o",
               str(out)]
    measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")
    proc = subprocess.run([sys.executable, "-c", measure, *command], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    peak_kb, code = map(int, proc.stdout.split()[-2:])
    assert code in (0, 1), proc.stderr  # (1: a method fails some row, which is the point of compare)
    assert out.exists()
    bound_kb = (FIXED_MB * 2**20 + PER_LOGIT * WIDTH) / 1024
    assert peak_kb < bound_kb, f"peak RSS {peak_kb / 1024:.0f} MB, bound {bound_kb / 1024:.0f} MB"
