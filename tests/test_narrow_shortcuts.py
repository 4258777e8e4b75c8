"""The narrow-row bulk path's shortcuts (issue #22) against the plain computations they replace, frozen below
as oracles (every pass on every row):

* the engine's re-check of undecided rows (``engine._undecided_rows`` against ``np.any([_undecided(...)])``
  with ``near_boundary`` on every row), on adversarial relative errors and values at every boundary of the
  test (the tolerance +- the margin, the candidates' band, 0, NaN, +-inf, subnormals, tiny, +-max), alone and
  in batches;
* ``Exact.rounded`` and ``Exact._exponent`` on plain values (lo 0: the float64 tier's) against the general
  rounding, at every rounding boundary of every format (midpoints both ways, tiny, subnormals, max, beyond);
* ``classify``'s plain path against the rule on every row (``test_outcome_shortcuts.old_classify``), values
  at and beside the correct rounding, 0 and -0, with every event combination, lost inputs, black boxes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_outcome_shortcuts import _INDEX, EVENTS, old_classify, same_floats

from stabilitylab.analysis import engine
from stabilitylab.analysis import outcome as outcome_module
from stabilitylab.analysis.outcome import Outcome
from stabilitylab.numerics.arith import Arith
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
    c = tol * 2.0**-10  # (the candidates' band, engine._flip_rows)
    for t in (tol - margin, tol + margin, tol, tol - c, tol + c):
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
    top = fmt.max if fmt.saturates else np.inf
    groups = [np.flatnonzero((v == value) | (np.isnan(v) & np.isnan(value))) for value in values(fmt)]
    groups.append(np.flatnonzero((v >= 0) & (v < top)))  # (0, -0, subnormals and normal values of one sign)
    for rows in groups:
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


# --- Exact.rounded / _exponent on plain values (every hi finite, not 0, unscaled, lo 0: the float64 tier's) ---

def old_exponent(x: Exact) -> np.ndarray:
    with np.errstate(all="ignore"):
        mant, e = np.frexp(x.hi)
    e = e.astype(np.int64) - 1
    below = (np.abs(mant) == 0.5) & (x.lo != 0) & (np.sign(x.lo) != np.sign(x.hi))
    return e - below


def old_round(x: Exact, fmt: Format) -> np.ndarray:
    hi, lo, s = x.hi, x.lo, x.scale
    finite = np.isfinite(hi) & (hi != 0)
    e = np.where(finite, old_exponent(x) + s, 0)
    q = np.maximum(e, fmt.min_exponent) - (fmt.precision - 1)
    q = np.where(finite, q, 0)
    with np.errstate(all="ignore"):
        shift = np.clip(s - q, -2000, 2000).astype(np.int32)
        t = np.ldexp(hi, shift)
        frac = t - np.floor(t)
        n = np.rint(t)
        n = np.where((frac == 0.5) & (lo > 0), np.floor(t) + 1, n)
        n = np.where((frac == 0.5) & (lo < 0), np.floor(t), n)
        out = np.ldexp(n, np.clip(q, -2000, 2000).astype(np.int32))
    out = np.where(finite, out, hi)
    big = np.abs(out) > fmt.max
    if big.any():
        if fmt.overflow == "inf":
            out = np.where(big, np.copysign(np.inf, out), out)
        elif fmt.saturates:
            out = np.where(big, np.copysign(fmt.max, out), out)
        else:
            out = np.where(big, np.nan, out)
    if not fmt.signed_zero:
        out = np.where(out == 0, 0.0, out)
    return out + 0.0


ROUND_FORMATS = list(FORMATS)  # (float8_e8m0fnu, which rounded() does not handle, included: it keeps what it gave)


def boundary_values(fmt: Format) -> np.ndarray:
    """float64 values at every rounding boundary of ``fmt``: representable values, midpoints (even and odd
    neighbours below), their float64 neighbours, around tiny, the subnormals and max (and beyond), both signs."""
    with np.errstate(over="ignore"):
        return _boundary_values(fmt)


def _boundary_values(fmt: Format) -> np.ndarray:
    p = fmt.precision
    out = []
    for base in (1.0, 1.5, fmt.tiny, fmt.max / 2, fmt.max, 3.0 * 2.0**-7):
        for k in range(0, 4):
            v = base + k * base * 2.0 ** (1 - p)  # representable (for these bases) and the next ones
            half = v + base * 2.0 ** -p  # the midpoint above v
            for w in (v, half):
                out += [w, np.nextafter(w, 0), np.nextafter(w, np.inf)]
    out += [fmt.max * (1 + 2.0 ** -p), fmt.max * 2, fmt.tiny * 0.75, fmt.smallest_subnormal / 2, 2.0**-1000,
            2.0**1000, 1e300, 0.1, 1 / 3, np.pi, 5e-324 * 2**60]
    rng = np.random.default_rng(1)
    out += list(np.ldexp(rng.random(200) + 0.5, rng.integers(fmt.min_exponent - 3, 40, 200)))
    a = np.array([w for w in out if np.isfinite(w) and w != 0])
    return np.concatenate([a, -a])


@pytest.mark.parametrize("name", ROUND_FORMATS)
def test_rounded_plain_equals_the_general_rounding(name):
    fmt = FORMATS[name]
    hi = boundary_values(fmt)
    n = len(hi)
    plain = Exact(hi, np.zeros(n), np.zeros(n, np.int64), np.zeros(n, bool))
    assert plain._plain()
    assert np.array_equal(plain._exponent(), old_exponent(plain))
    assert np.array_equal(plain.rounded(fmt), old_round(plain, fmt), equal_nan=True)
    assert np.array_equal(np.signbit(plain.rounded(fmt)), np.signbit(old_round(plain, fmt)))
    # the shortcut taken where it applies: every |x| >= tiny and no result beyond max (one sign, then both)
    inside = hi[(np.abs(hi) >= fmt.tiny) & (np.abs(hi) <= fmt.max)]
    for part in (inside[inside > 0], inside):
        m = len(part)
        x = Exact(part, np.zeros(m), np.zeros(m, np.int64), np.zeros(m, bool))
        if fmt.precision < 53 and fmt.fraction_bits >= 1:  # (the shortcut taken: not exponent-only formats)
            assert x._round_plain(fmt) is not None or np.abs(old_round(x, fmt)).max() > fmt.max
        assert np.array_equal(x.rounded(fmt), old_round(x, fmt), equal_nan=True)
    # lo != 0 somewhere: not plain (the general rounding, ties broken by lo)
    lo = np.where(np.arange(n) % 3 == 0, hi * 2.0**-60, 0.0)
    y = Exact(hi, lo, np.zeros(n, np.int64), np.zeros(n, bool))
    assert not y._plain()
    assert np.array_equal(y._exponent(), old_exponent(y))
    assert np.array_equal(y.rounded(fmt), old_round(y, fmt), equal_nan=True)


def test_rounded_plain_reaches_ties_both_ways():
    """(The grid holds ties that round down to an even neighbour and up to an even one.)"""
    fmt = FORMATS["bfloat16"]
    one = 1 + 2.0**-8  # between 1 (even) and 1 + 2**-7 (odd): down
    three = 1 + 3 * 2.0**-8  # between 1 + 2**-7 (odd) and 1 + 2**-6 (even): up
    x = Exact(np.array([one, three]), np.zeros(2), np.zeros(2, np.int64), np.zeros(2, bool))
    assert x.rounded(fmt).tolist() == [1.0, 1 + 2.0**-6]


# --- classify's plain path (no special case in the batch) against the rule on every row ---


def plain_batch(fmt: Format, black_box: bool, lo_zero: bool, tol: float):
    """(values, exact, arith): plain exact values (finite, not 0, unscaled; lo 0 or not) on and beside the
    format's boundaries, each with its correct rounding and neighbours, 0 and -0, values off by about the
    tolerance, under every event combination, with and without a lost input."""
    hi = np.abs(boundary_values(fmt))
    hi = hi[(hi >= 2.0**-900) & (hi < 2.0**1000)][::3]
    lo = np.zeros(len(hi)) if lo_zero else hi * 2.0**-58 * np.where(np.arange(len(hi)) % 2, 1, -1)
    x = Exact(hi, lo, np.zeros(len(hi), np.int64), np.zeros(len(hi), bool))
    cr = x.rounded(fmt)
    rows, value = [], []
    for i, c in enumerate(cr.tolist()):
        if not np.isfinite(c):
            continue
        step = abs(c) * 2.0 ** (1 - fmt.precision) if c else fmt.smallest_subnormal
        for w in (c, c + step, max(c - step, 0.0), c * (1 + 2 * tol), c * (1 + tol / 2), 0.0, -0.0, hi[i]):
            for events in range(len(EVENTS) + 1):  # (and both at one step: a tie, overflow by the rule)
                for lost in (False, True):
                    rows.append((i, events, lost))
                    value.append(w)
    which = np.array([r[0] for r in rows])
    arith = Arith(fmt, len(rows))
    if black_box:
        arith.errors = {i: "raised" for i in range(0, len(rows), 29)}
    else:
        for j, (_, events, lost) in enumerate(rows):
            if events == len(EVENTS):
                arith.first[_INDEX["overflow"], j] = arith.first[_INDEX["underflow"], j] = 1
            else:
                for step, event in enumerate(EVENTS[events]):
                    arith.first[_INDEX[event], j] = step + 1
            arith.input_lost[j] = lost
    return np.array(value), x.take(which), arith


@pytest.mark.parametrize("name", ["bfloat16", "float32", "float16", "float64", "float8_e4m3fn",
                                  "float8_e4m3fn:saturate"])
@pytest.mark.parametrize("black_box", [False, True])
@pytest.mark.parametrize("lo_zero", [True, False])
@pytest.mark.parametrize("tolerance", [None, 1.5])
def test_classify_plain_equals_the_rule(name, black_box, lo_zero, tolerance):
    fmt = FORMATS[name]
    tol = fmt.default_tolerance if tolerance is None else tolerance
    value, x, arith = plain_batch(fmt, black_box, lo_zero, tol)
    taken = outcome_module._classify_plain(fmt, value, Exact(x.hi, x.lo, x.scale, x.zero), arith, tol, black_box)
    assert taken is not None  # (its own conditions met; classify takes it unless a white box saturates)
    normal = np.flatnonzero((x.hi >= fmt.tiny) & (x.hi <= fmt.max / 2))  # (every cr normal: no unrepresentable row)
    for rows in (slice(None), np.flatnonzero(value != 0), np.flatnonzero(np.arange(len(value)) % 7 == 0), normal):
        v, sub = value[rows], x.take(rows)
        a = Arith(fmt, len(v))
        a.first[:] = arith.first[:, rows]
        a.input_lost[:] = arith.input_lost[rows]
        if black_box:
            kept = np.arange(len(value))[rows]
            a.errors = {j: arith.errors[int(i)] for j, i in enumerate(kept) if int(i) in arith.errors}
        new = outcome_module.classify(fmt, v, sub, a, tolerance, black_box)
        status, rel, ulps, bits, steps, messages = old_classify(fmt, v, Exact(sub.hi, sub.lo, sub.scale, sub.zero),
                                                                a, tolerance, black_box)
        assert new.status.tolist() == status.tolist()
        assert same_floats(new.rel_error, rel) and same_floats(new.ulps, ulps) and same_floats(new.error_bits, bits)
        assert np.array_equal(new.first_steps, steps)
        if messages is not None:
            assert new.errors.tolist() == messages.tolist()
    if tolerance is None:  # (the batch reaches the statuses the plain path assigns)
        seen = set(status.tolist())
        assert {"ok", "inaccurate"} <= seen
        assert ("overflow" in seen and "underflow" in seen and "range" in seen) or black_box
