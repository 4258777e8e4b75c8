"""The narrow-row bulk path's shortcuts (issue #22) against the plain computations they replace, frozen below
as oracles (every pass on every row): the engine's re-check of undecided rows (``engine._undecided_rows``
against ``np.any([_undecided(...)])`` with ``near_boundary`` on every row), on adversarial relative errors and
values at every boundary of the test (the tolerance +- the margin, tol / 2, 0, NaN, +-inf, subnormals, tiny,
+-max), alone and in batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from stabilitylab.analysis import engine
from stabilitylab.analysis.outcome import Outcome
from stabilitylab.numerics.formats import FORMATS, Format
from stabilitylab.numerics.reference import Exact


def old_undecided(o, tol: float, near: np.ndarray, fmt: Format, error: float) -> np.ndarray:
    with np.errstate(all="ignore"):
        flip = np.isfinite(o.rel_error) & (np.abs(o.rel_error - tol) <= (1 + o.rel_error) * 4 * error)
        special = ~(np.abs(o.value) >= fmt.tiny) | np.isinf(o.value)
        if fmt.saturates:
            special |= np.abs(o.value) == fmt.max
    return flip | (near & special)


def old_undecided_rows(outcomes, tol, exact: Exact, fmt: Format, error: float) -> np.ndarray:
    near = exact.near_boundary(fmt, 4 * error)
    return np.flatnonzero(np.any([old_undecided(o, tol, near, fmt, error) for o in outcomes], axis=0))


def rel_errors(tol: float, error: float) -> list[float]:
    margin = (1 + tol) * 4 * error
    out = [0.0, tol / 2, np.nextafter(tol / 2, 0), np.nextafter(tol / 2, 1), tol, tol - margin, tol + margin,
           np.nan, np.inf, 1.0, 2 * tol, tol / 3]
    for t in (tol - margin, tol + margin, tol):
        out += [np.nextafter(t, 0), np.nextafter(t, 1), np.nextafter(np.nextafter(t, 0), 0)]
    return out


def values(fmt: Format) -> list[float]:
    tiny, top = fmt.tiny, fmt.max
    return [1.0, -1.0, 0.0, -0.0, tiny, np.nextafter(tiny, 0), -tiny, fmt.smallest_subnormal, np.nan, np.inf,
            -np.inf, top, -top, np.nextafter(top, 0), 0.3]


def exacts(fmt: Format) -> list[float]:
    """Exact values on and near rounding boundaries (midpoints) and far from them."""
    one = 1 + 2.0 ** -fmt.precision  # the midpoint above 1
    return [one, np.nextafter(one, 2), 1.25, fmt.smallest_subnormal / 2, 3.0]


def outcome(value: np.ndarray, rel: np.ndarray) -> Outcome:
    n = len(value)
    return Outcome(value, None, None, None, rel, np.zeros(n), np.zeros(n), np.zeros((1, n), np.int64))


@pytest.mark.parametrize("name", ["bfloat16", "float32", "float16", "float64", "float8_e4m3fn:saturate"])
@pytest.mark.parametrize("tol", [None, 0.6, 1e-300])
def test_undecided_rows_equal_the_plain_test(name, tol):
    fmt = FORMATS[name]
    tol = fmt.default_tolerance if tol is None else tol
    error = 2.0**-40
    grid = list(itertools.product(rel_errors(tol, error), values(fmt), exacts(fmt)))
    rel = np.array([g[0] for g in grid])
    v = np.array([g[1] for g in grid])
    hi = np.array([g[2] for g in grid])
    n = len(grid)
    x = Exact(hi, np.zeros(n), np.zeros(n, np.int64), np.zeros(n, bool))
    rng = np.random.default_rng(0)
    # one outcome, two outcomes (the second a shuffled copy), and each (value) group alone: every shortcut
    for outs in ([outcome(v, rel)], [outcome(v, rel), outcome(v[rng.permutation(n)], rel[rng.permutation(n)])]):
        want = old_undecided_rows(outs, tol, x, fmt, error)
        got = engine._undecided_rows(outs, tol, x, fmt, error)
        assert got.tolist() == want.tolist()
    for value in values(fmt):
        rows = np.flatnonzero((v == value) | (np.isnan(v) & np.isnan(value)))
        outs = [outcome(v[rows], rel[rows])]
        sub = x.take(rows)
        assert engine._undecided_rows(outs, tol, sub, fmt, error).tolist() == \
            old_undecided_rows(outs, tol, sub, fmt, error).tolist()
    assert found_some(rel, tol, error)


def found_some(rel, tol, error) -> bool:
    """(The grid does reach the flip test: some rows flip, some do not.)"""
    with np.errstate(all="ignore"):
        flip = np.isfinite(rel) & (np.abs(rel - tol) <= (1 + rel) * 4 * error)
    return bool(flip.any()) and not flip.all()
