"""The threshold searches' memo of mpmath reference rows (``thresholds._reference``) and the pool units that
let one family's searches share it (issue #22): the same values, the same thresholds, and each search in one
unit."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitylab.analysis import thresholds
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.base import Settings
from stabilitylab.numerics import reference
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import FORMATS

VARIANTS = EXPERIMENTS["softmax_ce_variants"]


def _inputs(family: str, fmt: str, ns):
    f = VARIANTS.family(family)
    return VARIANTS.load(Arith(FORMATS[fmt], len(ns)), f.cases(np.asarray(ns, dtype=np.int64), Settings()))


def _same(a: reference.Exact, b: reference.Exact) -> None:
    for name in ("hi", "lo", "scale", "zero"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=True), name


@pytest.mark.parametrize("family", ["z_loss", "softcap", "count"])
def test_remembered_rows_are_mpmaths_values(monkeypatch, family):
    """Every row _reference gives, computed now or remembered from another format's search (and after the memo
    filled up and started again), is reference.exact's value of that row."""
    monkeypatch.setattr(thresholds, "_EXACT_ROWS", {})
    monkeypatch.setattr(thresholds, "_exact_values", 0)
    monkeypatch.setattr(thresholds, "EXACT_MEMO_VALUES", 400)
    monkeypatch.setattr(thresholds, "EXACT_MEMO_ROW", 100)
    filled = 0
    truth = VARIANTS.truth_of(VARIANTS.methods[0])
    assert truth.fast_reference is None  # (the premise: these rows are mpmath's)
    for fmt, ns in (("float32", range(1, 30)), ("float16", range(10, 45, 2)), ("float32", [3, 3, 60, 2, 1]),
                    ("float64", range(1, 30))):
        inputs = _inputs(family, fmt, list(ns))
        _same(thresholds._reference(truth, inputs), reference.exact(truth, inputs))
        held = sum(thresholds._width(row) for _, row in thresholds._EXACT_ROWS)
        assert held == thresholds._exact_values <= 400
        filled = max(filled, held)
    assert filled > 0 or family == "count"  # (count's cases grow past 100 values)
    assert all(thresholds._width(row) <= thresholds.EXACT_MEMO_ROW for _, row in thresholds._EXACT_ROWS)
    empty = _inputs(family, "float32", [1]).take(np.zeros(0, dtype=np.int64))
    assert len(thresholds._reference(truth, empty)) == 0


def test_a_truth_with_a_vectorized_reference_is_not_remembered(monkeypatch):
    monkeypatch.setattr(thresholds, "_EXACT_ROWS", {})
    e = EXPERIMENTS["softmax_ce"]
    truth = e.truth_of(e.methods[0])
    inputs = e.load(Arith(FORMATS["float32"], 3), e.family("overflow").cases(np.array([1.0, 50.0, 90.0]), Settings()))
    _same(thresholds._reference(truth, inputs), reference.fast(truth, inputs))
    assert thresholds._EXACT_ROWS == {}


def test_thresholds_do_not_depend_on_what_is_remembered(monkeypatch):
    """A family's thresholds with an empty memo, and after the same family's search in two other formats filled
    it, are the same rows (and the memo did serve rows: the searches share them)."""
    family = VARIANTS.family("z_loss")
    monkeypatch.setattr(thresholds, "_EXACT_ROWS", {})
    cold = thresholds._family_thresholds(VARIANTS, family, FORMATS["float32"], Settings(), None, 16)
    monkeypatch.setattr(thresholds, "_EXACT_ROWS", {})
    for fmt in ("float64", "float16"):
        thresholds._family_thresholds(VARIANTS, family, FORMATS[fmt], Settings(), None, 16)
    real = reference.exact

    def counting(into):
        return lambda truth, inputs: into.append(len(truth.exact_rows(inputs))) or real(truth, inputs)

    calls = []
    monkeypatch.setattr(reference, "exact", counting(calls))
    warm = thresholds._family_thresholds(VARIANTS, family, FORMATS["float32"], Settings(), None, 16)
    assert warm == cold
    monkeypatch.setattr(thresholds, "_EXACT_ROWS", {})
    fresh = []
    monkeypatch.setattr(reference, "exact", counting(fresh))
    assert thresholds._family_thresholds(VARIANTS, family, FORMATS["float32"], Settings(), None, 16) == cold
    assert sum(calls) < sum(fresh)


def test_one_familys_mpmath_searches_share_a_unit():
    """softmax_ce_variants' searches of one family go to one unit, whatever the format; the others alone;
    every search in exactly one unit."""
    names = [(e, f, fmt) for e, f in (("softmax_ce_variants", "z_loss"), ("softmax_ce_variants", "count"),
                                      ("softmax_ce", "overflow"))
             for fmt in ("float16", "float64", "bfloat16", "float32")]
    units = thresholds._bundles(names, 2)
    assert sorted(t for u in units for t in u) == sorted(names)
    shared = [u for u in units if u[0][0] == "softmax_ce_variants"]
    assert [sorted(t[2] for t in u) for u in shared] == [["bfloat16", "float16", "float32", "float64"]] * 2
    assert {u[0][1] for u in shared} == {"z_loss", "count"} and all(len({t[1] for t in u}) == 1 for u in shared)
    assert all(len(u) == 1 for u in units if u[0][0] == "softmax_ce")
    assert thresholds._shares_rows("softmax_ce_variants") and not thresholds._shares_rows("softmax_ce")
    lce = [("linear_ce", "vocab", fmt) for fmt in ("float16", "float64", "bfloat16", "float32")]
    assert not thresholds._shares_rows("linear_ce")  # (its searches take seconds each: shared out, not queued)
    assert sorted(thresholds._bundles(lce, 2)) == sorted([t] for t in lce)


def test_width_counts_input_values():
    assert thresholds._width(((1.0, 2.0, 3.0), 0)) == 4
    assert thresholds._width((((1.0, 2.0), (3.0, 4.0), (5.0, 6.0)), (0, 1, 1), 0, None, 0.1)) == 12
    assert thresholds._width((2.5, 7)) == 2


def test_wide_rows_are_not_held(monkeypatch):
    """Rows of more than EXACT_MEMO_ROW values are not held (a vocabulary of 2**18 classes would fill it)."""
    monkeypatch.setattr(thresholds, "_EXACT_ROWS", {})
    monkeypatch.setattr(thresholds, "_exact_values", 0)
    e = EXPERIMENTS["softmax_ce"]
    inputs = e.load(Arith(FORMATS["float32"], 2), e.family("overflow").cases(np.array([1.0, 3.0]), Settings()))

    class Narrowless:  # softmax_ce's truth as if it had no vectorized reference, on wide rows
        fast_reference = None
        reference_fn = staticmethod(e.truth.reference_fn)

        @staticmethod
        def exact_rows(x):
            return [(tuple(float(v) for v in range(thresholds.EXACT_MEMO_ROW)), 0) for _ in range(len(x.labels))]

    got = thresholds._reference(Narrowless, inputs)
    assert len(got) == 2 and thresholds._EXACT_ROWS == {} and thresholds._exact_values == 0
