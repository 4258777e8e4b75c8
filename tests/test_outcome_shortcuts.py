"""classify's shortcuts (passes skipped where their result is known from the batch: no NaN or inf value,
no infinite / NaN / zero / scaled exact value, no lost value, no event recorded) against the rule applied to
every row: the previous implementation, frozen below as the oracle (every pass on every row).  Rows at each
boundary of the rule -- the correctly rounded value and its neighbours, 0, -0, NaN, +-inf, +-max, exact values
at the subnormal and overflow boundaries, beyond the range, scaled, zero, infinite, undefined -- with and
without overflow / underflow / pole events, lost inputs and saturated infinities, as white and black boxes
and for the storage rule, each alone (every shortcut taken) and all in one batch (none taken)."""

from __future__ import annotations

import itertools

import mpmath
import numpy as np
import pytest

from stabilitylab.analysis.outcome import _CODE, _names, _small, classify, stored_beyond
from stabilitylab.numerics.arith import NEVER, Arith
from stabilitylab.numerics.formats import FORMATS, Format
from stabilitylab.numerics.reference import Exact, from_mpmath


def old_errors(fmt: Format, value, exact: Exact):
    """(rel_error, ulps, error_bits) of ``value`` against the exact values."""
    v = np.asarray(value, dtype=np.float64)
    hi, lo, s = exact.hi, exact.lo, exact.scale
    scaled = bool(s.any())  # (the usual case has none: the scale's passes are skipped, the same values)
    e = exact._exponent() + s if scaled else exact._exponent()
    ulp_exp = np.maximum(e, fmt.min_exponent) - (fmt.precision - 1)
    with np.errstate(all="ignore"):
        vs = np.ldexp(v, _small(-s)) if scaled else v  # v in the units of hi (exact for s <= 0;
        # s > 0 only above 2**1023, where it drops bits of a v below 2**(s - 1074) only: relative error ~1 there)
        diff = np.abs((vs - hi) - lo)
        diff = np.where(vs == hi, np.abs(lo), diff)  # also v == hi == +-inf
        rel = diff / np.abs(hi)
        zero = exact.zero.any()
        if zero:
            rel = np.where(exact.zero, np.where(v == 0, 0.0, np.inf), rel)
        ulps = np.ldexp(diff, _small(s - ulp_exp if scaled else -ulp_exp))
        if zero:
            ulps = np.where(exact.zero, np.where(v == 0, 0.0, np.abs(v) / fmt.smallest_subnormal), ulps)
        infinite = np.isinf(hi) | np.isinf(v)
        if infinite.any():
            same_inf = np.isinf(hi) & (v == hi)
            rel = np.where(infinite, np.where(same_inf, 0.0, np.inf), rel)
            ulps = np.where(infinite, np.where(same_inf, 0.0, np.inf), ulps)
        nan = np.isnan(v) | np.isnan(hi)
        if nan.any():
            rel = np.where(nan, np.nan, rel)
            ulps = np.where(nan, np.nan, ulps)
        bits = np.log2(ulps + 1)
    return rel, ulps, bits



def _beyond(fmt: Format, exact: Exact) -> np.ndarray:
    """(beyond, unrepresentable) stacked, per row: the exact value overflows the format (or is infinite where
    the format has no inf: cr is NaN; a saturating format's cr is +-max there, so its twin that overflows
    to +-inf tells); it overflows or is non-zero but rounds to 0."""
    cr = exact.rounded(fmt)
    wide_cr = exact.rounded(fmt.held_twin) if fmt.saturates else cr
    beyond = ~np.isnan(exact.hi) & ~np.isfinite(wide_cr) & (np.isfinite(exact.hi) | np.isnan(wide_cr))
    return np.stack([beyond, beyond | ((cr == 0) & ~exact.zero)])


def _stored_lost(fmt: Format, v: np.ndarray, exact: Exact) -> dict[str, np.ndarray]:
    """The storage rule's failures (disjoint rows): ``overflow`` x beyond the range (:func:`stored_beyond`),
    ``underflow`` x != 0 stored as 0, ``nan`` x NaN where the format has no NaN or the value is a number."""
    undefined = np.isnan(exact.hi)
    return {"overflow": stored_beyond(fmt, exact), "underflow": (v == 0) & ~exact.zero & ~undefined,
            "nan": undefined & ((fmt.nan == "none") | ~np.isnan(v))}



def old_classify(fmt: Format, value, exact: Exact, arith: Arith, tolerance: float | None = None,
             black_box: bool = False, storage: bool = False):
    """Apply the rule above to a batch; ``arith`` holds the events of the computation
    (and, for a black box, the rows whose call raised); ``storage``: the exact value is the
    input itself (``Truth.storage``)."""
    tol = fmt.default_tolerance if tolerance is None else tolerance
    v = np.asarray(value).astype(np.float64)
    rel, ulps, bits = old_errors(fmt, v, exact)
    cr = exact.rounded(fmt)
    # (what depends on the exact values alone is computed once per format and shared by the methods)
    beyond, unrepresentable = _beyond(fmt, exact)
    nan, inf = np.isnan(v), np.isinf(v)
    if nan.any():
        undefined = nan & np.isnan(exact.hi)  # NaN for an undefined loss: the faithful answer (step 1, both kinds)
        same = (v == cr) | (nan & np.isnan(cr) & beyond) | undefined
    else:
        same = v == cr
    out_of_range = unrepresentable | arith.input_lost
    over, under = arith.first_step("overflow"), arith.first_step("underflow")
    pole = arith.first_step("divide_by_zero") != NEVER
    # a saturating format gives +-max where others give +-inf: lost too, where an infinity was saturated
    saturated = (np.abs(v) == fmt.max) & arith.saturated if fmt.saturates and not black_box else False
    lost = ~same & (nan | inf | (v == 0) | saturated)

    # (status codes, indices into STATUSES, assigned in this order: a later rule overrides an earlier one)
    status = np.zeros(v.shape, dtype=np.uint8)
    status[~same & (rel > tol)] = _CODE["inaccurate"]
    status[same & out_of_range] = _CODE["range"]
    stored_lost = _stored_lost(fmt, v, exact) if storage else None
    any_lost = bool(lost.any())
    if black_box:
        if any_lost:
            status[lost & nan] = _CODE["nan"]
            status[lost & inf] = _CODE["inf"]
        if stored_lost is not None:
            for name, rows in stored_lost.items():
                status[rows] = _CODE[name]
        messages = np.full(v.shape, "", dtype=object)
        if arith.errors:
            rows = np.fromiter(arith.errors, dtype=np.int64)
            status[rows] = _CODE["error"]
            messages[rows] = list(arith.errors.values())
        return _names(status), rel, ulps, bits, arith.first.copy(), messages
    if any_lost:  # (the usual case has no lost value: nothing below applies)
        # a format without infinity (float8_e4m3fn) gives NaN where others give inf: the same cause
        infinite = inf | saturated | (nan & (not fmt.has_inf) & (pole | (over != NEVER)))
        status[lost & nan] = _CODE["nan"]
        status[lost & infinite] = _CODE["overflow"]
        status[lost & infinite & pole] = _CODE["underflow"]
        seen = (over != NEVER) | (under != NEVER)
        status[lost & seen & (over <= under)] = _CODE["overflow"]
        status[lost & seen & (under < over)] = _CODE["underflow"]
    if stored_lost is not None:
        for name, rows in stored_lost.items():
            status[rows] = _CODE[name]
    return _names(status), rel, ulps, bits, arith.first.copy(), None




def exact_values(fmt: Format) -> list:
    """Exact losses at every boundary of the rule in ``fmt`` (mpmath numbers, NaN and inf included)."""
    mp = mpmath.mpf
    ulp1 = mp(2) ** (1 - fmt.precision)
    tiny = mp(fmt.smallest_subnormal)
    top = mp(fmt.max)
    return [mp(1), mp(1) + ulp1 / 2, mp(1) + ulp1 / 3, mp("0.3"), tiny / 2, tiny / 2 * mp("0.999"),
            tiny / 2 * mp("1.001"), tiny * 3, top, top * (1 + ulp1 / 4), top * (1 + ulp1 / 2), top * 2, mp(10) ** 300,
            mp(2) ** 1100, mp(10) ** -400, mp(0), mp("inf"), mp("nan"), mp(-2)]


def values_for(fmt: Format, x: Exact) -> np.ndarray:
    """Per exact value, the computed values to classify: its correct rounding and neighbours, a value off
    by about the tolerance, and the special values."""
    cr = x.rounded(fmt)
    out = []
    for c in cr.tolist():
        step = abs(c) * 2.0 ** (1 - fmt.precision) if np.isfinite(c) and c != 0 else fmt.smallest_subnormal
        tol = fmt.default_tolerance
        out.append([c, c + step, c - step, c * (1 + 2 * tol) if np.isfinite(c) else 1.0, 0.0, -0.0, np.nan, np.inf,
                    -np.inf, fmt.max, -fmt.max])
    return np.array(out)


EVENTS = [(), ("overflow",), ("underflow",), ("underflow", "overflow"), ("divide_by_zero",)]


def batch(fmt: Format, black_box: bool):
    """(values, exact, arith) over every (exact value, computed value, events, input lost, saturated) combination."""
    with mpmath.workdps(60):
        x = from_mpmath(exact_values(fmt))
    vals = values_for(fmt, x)
    rows = list(itertools.product(range(len(x)), range(vals.shape[1]), range(len(EVENTS)), (False, True),
                                  (False, True) if fmt.saturates else (False,)))
    which = np.array([r[0] for r in rows])
    value = np.array([vals[r[0], r[1]] for r in rows])
    arith = Arith(fmt, len(rows))
    if not black_box:
        for i, r in enumerate(rows):
            for step, event in enumerate(EVENTS[r[2]]):
                arith.first[_INDEX[event], i] = step + 1
        arith.input_lost[:] = [r[3] for r in rows]
        arith.saturated[:] = [r[4] for r in rows]
    else:
        arith.errors = {i: "raised" for i in range(0, len(rows), 37)}
    return value, x.take(which), arith


from stabilitylab.numerics.arith import _INDEX  # noqa: E402


def sub_arith(arith: Arith, rows: np.ndarray) -> Arith:
    out = Arith(arith.fmt, len(rows))
    out.first[:] = arith.first[:, rows]
    out.input_lost[:] = arith.input_lost[rows]
    out.saturated[:] = arith.saturated[rows]
    out.errors = {int(j): arith.errors[int(i)] for j, i in enumerate(rows) if int(i) in arith.errors}
    return out


def same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def check(fmt: Format, value, x: Exact, arith: Arith, black_box: bool, storage: bool, tolerance) -> None:
    new = classify(fmt, value, x, arith, tolerance, black_box, storage)
    status, rel, ulps, bits, steps, messages = old_classify(fmt, value, Exact(x.hi, x.lo, x.scale, x.zero), arith,
                                                            tolerance, black_box, storage)
    assert new.status.tolist() == status.tolist()
    assert same_floats(new.rel_error, rel) and same_floats(new.ulps, ulps) and same_floats(new.error_bits, bits)
    assert np.array_equal(new.first_steps, steps)
    assert np.array_equal(new.reference, x.value, equal_nan=True)
    if messages is not None:
        assert new.errors.tolist() == messages.tolist()


FMTS = ["float32", "bfloat16", "float16", "float64", "float8_e4m3fn", "float8_e4m3fn:saturate"]


def groups(value, x: Exact, pairs: bool) -> list[np.ndarray]:
    """Rows of each exact value (and with ``pairs``, of each exact value and computed value)."""
    out: dict = {}
    for i in range(len(x)):
        key = x.hi[i].tobytes() + x.lo[i].tobytes() + x.scale[i].tobytes() + bytes([int(x.zero[i])])
        out.setdefault(key + (value[i].tobytes() if pairs else b""), []).append(i)
    return [np.array(rows) for rows in out.values()]


CASES = [(name, False, False, None) for name in FMTS] + [(name, True, False, None) for name in FMTS] + [
    ("float32", False, True, None), ("float8_e4m3fn", False, True, None), ("float8_e4m3fn:saturate", False, True, None),
    ("float32", False, False, 0.6), ("bfloat16", True, False, 0.6)]


@pytest.mark.parametrize("name,black_box,storage,tolerance", CASES)
def test_classify_equals_the_rule_on_every_row(name, black_box, storage, tolerance):
    fmt = FORMATS[name]
    value, x, arith = batch(fmt, black_box)
    check(fmt, value, x, arith, black_box, storage, tolerance)  # all in one batch: no shortcut
    for rows in groups(value, x, pairs=False):  # each exact value alone: the shortcuts on the exact values
        check(fmt, value[rows], x.take(rows), sub_arith(arith, rows), black_box, storage, tolerance)
        rows = rows[np.isfinite(value[rows])]  # and with finite values only: the shortcuts on the values too
        check(fmt, value[rows], x.take(rows), sub_arith(arith, rows), black_box, storage, tolerance)


@pytest.mark.slow
@pytest.mark.parametrize("name,black_box,storage,tolerance", CASES)
def test_classify_equals_the_rule_on_each_pair(name, black_box, storage, tolerance):
    """Each (exact value, computed value) alone: every shortcut the batch allows (no NaN / inf value...)."""
    fmt = FORMATS[name]
    value, x, arith = batch(fmt, black_box)
    for rows in groups(value, x, pairs=True):
        check(fmt, value[rows], x.take(rows), sub_arith(arith, rows), black_box, storage, tolerance)


def test_no_event_steps_are_shared_read_only():
    fmt = FORMATS["float32"]
    x = from_mpmath([mpmath.mpf(1), mpmath.mpf(2)])
    o = classify(fmt, np.array([1.0, 2.0]), x, Arith(fmt, 2))
    assert (o.first_steps == NEVER).all() and not o.first_steps.flags.writeable
    a = Arith(fmt, 2)
    a.first[0, 1] = 3
    o = classify(fmt, np.array([1.0, 2.0]), x, a)
    a.first[0, 0] = 5  # the Arith goes on recording: the outcome's steps are its own copy
    assert o.first_steps[0].tolist() == [NEVER, 3]
