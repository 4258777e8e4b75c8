"""``_Search._flags`` decides the rows the fast reference leaves open on mpmath's exact value
(``outcome.blame`` with error 0) before it calls the engine (issue #22, thr8): its flags must be the
engine's own statuses, row for row, where that path is taken (float64 near exp's overflow and underflow and near the
top of float64's range, flush-to-zero, float8_e4m3fn's integer grid)."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitylab.analysis import thresholds
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.base import Settings
from stabilitylab.numerics import reference
from stabilitylab.numerics.policies import format_or_policy

CASES = [  # (experiment, family, format, ftz, parameter values near which the fast reference leaves rows open)
    ("softmax_ce", "overflow", "float64", False, (19.245648, 671.188899, 745.1332191019413)),
    ("softmax_ce", "underflow", "float64", False, (733.362470436718, 733.974864, 1.7976931348623157e308)),
    ("binary_ce", "saturation", "float64", False, (21.530814, 1.7976931348623157e308)),
    ("epsilon_clip", "ceiling", "float64", True, (16.118096, 1.7976931348623157e308)),
    ("gradient", "vanishing", "float64", True, (708.396419, 709.782713, 745.133219)),
    ("accumulation", "ones", "float8_e4m3fn", False, (496, 608, 31744)),
]


def _indices(search, values) -> np.ndarray:
    g = search.grid
    out = set()
    for v in values:
        at = int(v) if g.integer else g._index(float(v))
        out.update(i for i in range(at - 40, at + 41) if g.start <= i <= g.end)
    return np.array(sorted(out), dtype=np.int64)


@pytest.mark.parametrize("experiment, family, fmt, ftz, values", CASES)
def test_flags_are_the_engines_statuses(monkeypatch, experiment, family, fmt, ftz, values):
    e = EXPERIMENTS[experiment]
    search = thresholds._Search(e, e.family(family), format_or_policy(fmt), Settings(ftz=ftz), None, 16)
    indices = _indices(search, values)
    exact_rows = []
    original = reference.exact

    def counted(truth, inputs):
        exact_rows.append(len(truth.exact_rows(inputs)))
        return original(truth, inputs)

    monkeypatch.setattr(reference, "exact", counted)
    got = search._flags(indices)
    monkeypatch.setattr(reference, "exact", original)
    want = search._outcomes(indices.tolist())
    for name, o in want.items():
        assert np.array_equal(got[name][0], thresholds._bad("first_inaccurate", o.status, o.value, search.fmt)), name
        assert np.array_equal(got[name][1], thresholds._bad("first_failure", o.status, o.value, search.fmt)), name
    if search.lean:
        assert sum(exact_rows) > 0  # the rows the fast reference left open went through mpmath's values


def test_engine_only_for_rows_mpmath_leaves_open(monkeypatch):
    """softmax_ce's overflow in float64 where the fast reference leaves rows open: mpmath's values decide most,
    so the engine sees fewer rows than there were open ones (the saving this path is for)."""
    e = EXPERIMENTS["softmax_ce"]
    search = thresholds._Search(e, e.family("overflow"), format_or_policy("float64"), Settings(), None, 16)
    indices = _indices(search, (19.245648, 671.188899, 745.1332191019413))
    opened, engine = [], []
    original_exact, original_outcomes = reference.exact, thresholds._Search._outcomes

    def counted(truth, inputs):
        opened.append(len(truth.exact_rows(inputs)))
        return original_exact(truth, inputs)

    def outcomes(self, idx, methods=None):
        engine.append(len(idx))
        return original_outcomes(self, idx, methods)

    monkeypatch.setattr(reference, "exact", counted)
    monkeypatch.setattr(thresholds._Search, "_outcomes", outcomes)
    search._flags(indices)
    assert sum(opened) > 0
    assert sum(engine) < sum(opened)


@pytest.mark.parametrize("experiment, family, fmt", [("likelihood", "iid", "float8_e4m3fn"),
                                                     ("likelihood", "iid", "float64"),
                                                     ("accumulation", "ones", "float16")])
def test_integer_bisection_ahead_gives_the_plain_bisections_answers(monkeypatch, experiment, family, fmt):
    """Integer grids' bisection evaluates up to ``BISECT_AHEAD`` rounds ahead on the all-ok branch: the same
    answers as with none, in fewer calls where a key never fails (likelihood: 1-2 calls after its scan, not ~11)."""
    e = EXPERIMENTS[experiment]
    answers, calls = {}, {}
    original = thresholds._Search._flags
    for ahead in (0, thresholds.BISECT_AHEAD):
        monkeypatch.setattr(thresholds, "BISECT_AHEAD", ahead)
        search = thresholds._Search(e, e.family(family), format_or_policy(fmt), Settings(), None, 16)
        count = []

        def flags(self, *args, _count=count, **kwargs):
            _count.append(1)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(thresholds._Search, "_flags", flags)
        answers[ahead] = search._integers()  # (the scan of the first n, then the bisection of the keys left)
        calls[ahead] = len(count)
        monkeypatch.setattr(thresholds._Search, "_flags", original)
    assert answers[0] == answers[thresholds.BISECT_AHEAD]
    assert calls[thresholds.BISECT_AHEAD] <= calls[0]
    if experiment == "likelihood":
        assert calls[thresholds.BISECT_AHEAD] <= 3 < calls[0]
