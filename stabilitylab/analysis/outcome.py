"""Classify a computed value against its exact reference: one rule, used everywhere.

For a computed value v, the exact value x of the same (format-rounded) inputs
(an :class:`~stabilitylab.numerics.reference.Exact`) and cr = x correctly rounded to the
format (round to nearest, ties to even; see :meth:`Exact.rounded`):

1. **v equals cr** (numerically: -0 == 0; a NaN from overflow in a format with
   no infinity equals an exact value beyond its range; a NaN equals an exact
   value that is itself undefined, NaN, as the loss of a row whose logits are
   all -inf: there is no right number to give, and NaN is the faithful answer,
   for a simulated method and a black box alike): the arithmetic did the
   best the format allows, so this is never a failure.  Status

   * ``range``  if the exact value itself is not representable: it overflows
     the format, or is non-zero but at most half the smallest subnormal (so cr
     is 0), or an input was already out of range when rounded to the format
     (p = 1e-300 is 0 in float32, and -log(0) = inf is then exact);
   * ``ok``     otherwise (including a correctly rounded subnormal result, whose
     relative error may exceed the tolerance: the metrics still show it).

2. **v is NaN, +-inf or 0** (and not cr), or **+-max where an infinity was
   saturated** in a saturating format (``float8_e4m3fn:saturate``, fp6, fp4: the
   finite value it gives where others give inf): the value is lost.  Its status names
   the root cause, the same in every format (float8_e4m3fn included, where an
   overflow *is* a NaN, and the saturating ones, where it is +-max):

   * the first ``overflow`` / ``underflow`` event seen while computing v, if any
     (0.1**100 underflows to 0, then -log(0) = inf: ``underflow``; exp(d)
     overflows, then inf/inf = NaN: ``overflow``);
   * else, for +-inf (or the NaN a format without infinity gives in its place):
     ``underflow`` if a pole was hit (an intermediate rounded to exactly 0
     without an IEEE underflow, as 1 - p with p rounded to 1, then log(0)),
     else ``overflow``;
   * else ``nan`` for NaN, and ``inaccurate`` for 0 (a result lost to rounding,
     as log(1 + s) with 1 + s rounded to 1).

3. **otherwise** ``inaccurate`` if ``rel_error > tolerance`` (default sqrt(u):
   more than half of the significand bits lost), else ``ok``.

**Black boxes** (an audited framework kernel or a user's function,
``Method.black_box``) show no IEEE event, so a cause is never named.  Steps 1 and
3 are the same (they look at the value only); step 2 becomes:

* ``nan``  the value is NaN (in float8_e4m3fn also where others would give inf:
  the box does not tell us which);
* ``inf``  the value is +-inf and the correctly rounded exact loss is finite;
* 0 (where the exact loss rounds to a non-zero value) falls to step 3:
  ``inaccurate`` (relative error 1).

NaN where the exact loss itself is undefined (NaN: every logit -inf, say) is
step 1 for both kinds: ``ok`` (``range`` if an input was out of range), never
``nan``; one rule, so that a simulated method and a black box computing the
same NaN get the same status (it used to be ``nan`` for the one and ``ok`` for
the other, counting "method fails, target ok" where neither did).

A row whose call raised is ``error`` (its value NaN; the exception's first line
is kept in :attr:`Outcome.errors`), for black boxes only.

**Storage** (``Truth.storage``: the exact value is the input itself, the ``cast``
experiment): no formula did its best here, the format's range *is* the question, so
there is no ``range``: the value is ``overflow`` where the exact value is beyond the
format's range (cr is +-inf, or NaN in a format without infinity), whatever came back
(+-inf, NaN, or a saturated +-max: 1e4 stored in float8_e4m3fn by torch's cast, 448),
``underflow`` where x != 0 and the value is 0 (x <= half the smallest subnormal, or
a subnormal x flushed to zero), and ``nan`` where x is NaN and either the format has no
NaN (fp6, fp4: ml_dtypes stores a zero there, the simulation keeps NaN; either way the
NaN is lost) or the value is not NaN (a cast that turned a NaN into a number).  White and
black boxes alike: the cause is read off the input, not an event.  (A call that raised
stays ``error``.)

Examples (float32 unless stated; tolerance sqrt(u) = 2**-12):

============================================  ========  =================
case                                          v         status
============================================  ========  =================
[1000, 0, -1000], y=0, log1p form (x ~ 5e-435)  0         range
[0, -40], y=0 in float16 (x = 4.2e-18)          0         range
[0, -740], y=0 in float64 (x = 4.2e-322)        4.2e-322  ok (rel 2.6e-3)
0.1**100, product (float8_e4m3fn: NaN)          inf / NaN underflow
[d, 0], naive softmax, d > ln(max)              NaN       overflow
sigmoid_log, z = 17 (p rounds to 1)             inf       underflow
[0, -20], y=0, plain log-softmax                0         inaccurate
============================================  ========  =================

Metrics: ``rel_error = |v - x| / |x|`` (0 if v == x, inf if x == 0 != v, NaN if
v is NaN), ``ulps = |v - x| / ulp(x)`` with ulp in the format (see
:meth:`Format.ulp`; below the format's range the smallest subnormal), and
``error_bits = log2(ulps + 1)`` (Herbie's bits of error: 0 exact, 1 for 1 ulp).
All are computed from the scaled exact value, so they stay right below
float64's range.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..numerics.arith import NEVER, Arith, events_from_steps
from ..numerics.formats import Format
from ..numerics.reference import Exact

__all__ = ["STATUSES", "FAILURES", "METHOD_FAILURES", "BLACK_BOX_STATUSES", "WHITE_BOX_STATUSES", "SEVERITY",
           "RANK", "Outcome", "blame", "classify", "errors", "stored_beyond", "worst_status"]

STATUSES: tuple[str, ...] = ("ok", "range", "inaccurate", "overflow", "underflow", "nan", "inf", "error")
FAILURES: tuple[str, ...] = ("overflow", "underflow", "nan", "inf", "error")
METHOD_FAILURES: tuple[str, ...] = ("inaccurate", *FAILURES)  # statuses that blame the formulation
BLACK_BOX_STATUSES: tuple[str, ...] = ("ok", "range", "inaccurate", "inf", "nan", "error")
WHITE_BOX_STATUSES: tuple[str, ...] = ("ok", "range", "inaccurate", "overflow", "underflow", "nan")

SEVERITY: tuple[str, ...] = ("error", "nan", "inf", "overflow", "underflow", "inaccurate", "range", "ok")
"""Every status, the most severe first: the call raised; the value is lost (NaN, inf, overflow,
underflow); it is inaccurate; it is correctly rounded (``range``: the exact value itself is not
representable; ``ok``).  Findings list statuses in this order; a table cell shows its worst."""

RANK: dict[str, int] = {s: 2 if s in FAILURES else 1 if s in METHOD_FAILURES else 0 for s in SEVERITY}
"""The coarse severity of :data:`SEVERITY`: 0 correctly rounded (ok, range), 1 inaccurate, 2 lost or raised.
A status is no worse than another if its rank is not higher (the ``--emit-pytest`` tests' check)."""


_CODE: dict[str, int] = {s: i for i, s in enumerate(STATUSES)}
_NAMES = np.array(STATUSES, dtype="<U10")  # code -> status string


def _names(codes: np.ndarray) -> np.ndarray:
    """The status strings of codes: "ok" everywhere, then the others where they are (a gather of 40-byte
    strings on every row costs more than filling and patching the few)."""
    out = np.full(codes.shape, STATUSES[0], dtype="<U10")
    other = np.flatnonzero(codes)
    if other.size:
        out[other] = _NAMES[codes[other]]
    return out


def worst_status(present: Iterable[str], among: Collection[str] = STATUSES) -> str:
    """The most severe (:data:`SEVERITY`) of the statuses ``present`` that are ``among`` the
    given ones; ``"ok"`` if there is none."""
    present = set(present)
    return next((s for s in SEVERITY if s in present and s in among), "ok")


@dataclass
class Outcome:
    """Columnar outcome of one method in one format over a batch of cases."""

    value: np.ndarray  # float64, the loss the method produced
    _reference: np.ndarray | None  # float64 nearest to the exact loss (None: made when read, see :attr:`reference`)
    exact: Exact  # the exact loss, also below float64's range
    _status: np.ndarray | None  # str (None: made from ``codes`` when first read, see :attr:`status`)
    rel_error: np.ndarray
    ulps: np.ndarray
    error_bits: np.ndarray
    first_steps: np.ndarray  # (len(EVENTS), rows): step of each event's first occurrence
    errors: np.ndarray | None = None  # black boxes: per row the exception's first line ('' if none)
    codes: np.ndarray | None = None  # uint8 indices into STATUSES of ``status`` (None: not kept)
    # the bulk path's deferred rows (engine._classified's ``defer``): per row, the ulps window w where the
    # exact value and the error columns are the bounded float64 tier's (true ulps within ulps (1 +- 2**-50) +- w;
    # status and error-bits bin already final), 0 where every column is final; None: every row final
    window: np.ndarray | None = None

    @property
    def reference(self) -> np.ndarray:
        """Per row, the float64 nearest to the exact loss (:attr:`Exact.value`, a function of each row's exact
        value alone).  Made when first read: the bulk path keeps the exact values themselves."""
        if self._reference is None:
            self._reference = self.exact.value
        return self._reference

    @property
    def status(self) -> np.ndarray:
        """Per row, the status (str, ``<U10``).  Made from :attr:`codes` when first read: the bulk path
        counts and keeps codes only, and a column of 40-byte strings costs it more than the rule itself."""
        if self._status is None:
            self._status = _names(self.codes)
        return self._status

    @cached_property
    def events(self) -> list[tuple[str, ...]]:
        """Per row, the IEEE events in order of first occurrence (built on demand)."""
        return events_from_steps(self.first_steps)


def _small(e) -> np.ndarray:
    """Exponents clipped to [-2000, 2000] (beyond, ldexp gives 0 or inf for every float64 anyway) as
    int32: numpy's ldexp is ten times faster with int32 exponents than with int64 ones (same values)."""
    return np.clip(e, -2000, 2000).astype(np.int32)


def errors(fmt: Format, value, exact: Exact):
    """(rel_error, ulps, error_bits) of ``value`` against the exact values."""
    v = np.asarray(value, dtype=np.float64)
    return _errors(fmt, v, exact, bool(np.isfinite(v).all()))


def _exact_facts(exact: Exact) -> np.ndarray:
    """(any scaled, any zero, any infinite hi, any NaN hi) of the exact values: what lets :func:`_errors`
    skip passes that change nothing (shared by every method's classification, computed once)."""
    if exact._plain():  # (every hi finite and not 0, every scale 0: none of them)
        return _NO_FACTS
    return exact._memoized("facts", lambda: np.array([exact.scale.any(), exact.zero.any(),
                                                        np.isinf(exact.hi).any(), np.isnan(exact.hi).any()]))


_NO_FACTS = np.zeros(4, dtype=bool)
_NO_FACTS.setflags(write=False)


def _ulp_shift(fmt: Format, exact: Exact) -> np.ndarray:
    """``-ulp_exp`` as int32 (:func:`_small`) for unscaled exact values: ``ulp_exp = max(e, emin) - (p - 1)``,
    the exponent of an ulp of ``fmt`` at each exact value (once per format, shared by the methods)."""
    return exact._memoized(("ulp_shift", fmt.name), lambda: _small(
        -(np.maximum(exact._exponent(), fmt.min_exponent) - (fmt.precision - 1))))


def _errors(fmt: Format, v: np.ndarray, exact: Exact, v_finite: bool):
    """:func:`errors` of float64 ``v`` (``v_finite``: every v finite).  Steps whose result is known are
    skipped, the same values: where no hi is infinite, ``v == hi`` gives ``|(v - hi) - lo| = |0 - lo| = |lo|``
    already (+0 for lo = +-0); the infinite and NaN rules change nothing where neither v nor hi has any."""
    hi, lo, s = exact.hi, exact.lo, exact.scale
    scaled, zero, hi_inf, hi_nan = _exact_facts(exact).tolist()
    with np.errstate(all="ignore"):
        if scaled:  # (the usual case has none: the scale's passes are skipped, the same values)
            e = exact._exponent() + s
            ulp_exp = np.maximum(e, fmt.min_exponent) - (fmt.precision - 1)
            vs = np.ldexp(v, _small(-s))  # v in the units of hi (exact for s <= 0;
            # s > 0 only above 2**1023, where it drops bits of a v below 2**(s - 1074) only: relative error ~1 there)
        else:
            vs = v
        diff = vs - hi
        if exact._lo_any():  # (every lo 0: (v - hi) - 0 is v - hi, -0 only where v - hi is, and |.| drops that sign)
            diff -= lo
        np.abs(diff, out=diff)
        if hi_inf:
            diff = np.where(vs == hi, np.abs(lo), diff)  # v == hi == +-inf
        rel = diff / exact._magnitude()
        if zero:
            rel = np.where(exact.zero, np.where(v == 0, 0.0, np.inf), rel)
        ulps = np.ldexp(diff, _small(s - ulp_exp) if scaled else _ulp_shift(fmt, exact))
        if zero:
            ulps = np.where(exact.zero, np.where(v == 0, 0.0, np.abs(v) / fmt.smallest_subnormal), ulps)
        if hi_inf or not v_finite:
            infinite = np.isinf(hi) | np.isinf(v)
            if infinite.any():
                same_inf = np.isinf(hi) & (v == hi)
                rel = np.where(infinite, np.where(same_inf, 0.0, np.inf), rel)
                ulps = np.where(infinite, np.where(same_inf, 0.0, np.inf), ulps)
        if hi_nan or not v_finite:
            nan = np.isnan(v) | np.isnan(hi)
            if nan.any():
                rel = np.where(nan, np.nan, rel)
                ulps = np.where(nan, np.nan, ulps)
        bits = ulps + 1
        np.log2(bits, out=bits)
    return rel, ulps, bits


def blame(fmt: Format, value, approx: Exact, error, events: np.ndarray,
          tolerance: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Whether :func:`classify` blames the method (a status in ``METHOD_FAILURES``), decided
    from an approximate exact value: ``(bad, decided)`` per row.  White boxes only.

    ``events``: per row, whether an ``overflow`` or ``underflow`` event was recorded.
    ``error`` (a number, or one per row): how far, relatively, the exact value classify
    is given may be from ``approx``.  A row is *decided* when classify gives the same
    answer for every exact value x within that band:

    * not bad: v is finite, not a 0 that followed an overflow / underflow event, and its
      relative error r is below ``tolerance`` by more than ``2 e (1 + r) + 2**-48 r``: over
      the band, rel_error moves by at most ``e (1 + r) / (1 - e)`` (|v - x'| / |x'| with
      x' = x (1 + d), |d| <= e), and its float64 rounding by a few ulps; so the status is
      ok or range whatever cr is (for e < 1/2; a wider band decides nothing);
    * bad: v would fail unless it is cr (NaN, +-inf, 0 after an event, or a relative error
      above the tolerance by that margin), and it is known not to be cr: v is too far from
      x to be its rounding (more than half an ulp of the format away, a 0 where |x| is
      above half the smallest subnormal, a NaN or inf where |x| is below ``max``; in a
      saturating format not where the band reaches ``max``, beyond which cr is +-max), or every
      x of the band rounds to the same cr (:meth:`Exact.near_boundary`) and v is not it.
      In a saturating format a +-max with an event is never decided "not bad" (it may be a
      saturated infinity, which classify calls lost: :attr:`Arith.saturated`).

    An approximate value of 0 (flagged exactly zero, or below the reference's range) is
    taken as it is, as classify takes it: v fails there unless it is 0.  Rows whose
    approximate exact value is not finite are never decided.
    """
    tol = fmt.default_tolerance if tolerance is None else tolerance
    v = np.asarray(value).astype(np.float64)
    hi, lo, s = approx.hi, approx.lo, approx.scale
    error = np.asarray(error, dtype=np.float64)
    wide = np.where(error < 0.5, 2 * error, np.inf)
    scaled = bool(s.any())
    with np.errstate(all="ignore"):
        # the common case first, on every row: a relative error clearly within the tolerance
        vs = np.ldexp(v, _small(-s)) if scaled else v  # v in the units of hi, as errors()
        diff = np.abs((vs - hi) - lo)  # where vs == hi (finite), |lo| as errors() has it
        rel = diff / np.abs(hi)
        passes = rel <= tol - ((1 + rel) * wide + rel * 2.0**-48)  # False for NaN and inf
        passes &= np.isfinite(hi) & ~approx.zero
        if tol >= 0.5:  # only then can a 0 (relative error 1) be within the tolerance
            passes &= ~((v == 0) & events)
        if fmt.saturates:  # a +-max after an overflow may be a saturated infinity (lost): not decided here
            passes &= ~((np.abs(v) == fmt.max) & events)
    zero = hi == 0
    bad = np.where(zero, v != 0, False)
    decided = passes | zero
    rows = np.flatnonzero(~decided & np.isfinite(hi) & ~approx.zero)
    if not len(rows):
        return bad, decided
    # the others: v fails unless it is cr; is it cr?
    w, m, r, d = v[rows], np.abs(hi[rows]), rel[rows], diff[rows]
    e = wide if wide.ndim == 0 else wide[rows]
    with np.errstate(all="ignore"):
        finite = np.isfinite(w)
        fails = ~finite | ((w == 0) & events[rows]) | (r > tol + ((1 + r) * e + r * 2.0**-48))
        band = e * m
        # too far from x to be cr (only where x is held unscaled: s == 0)
        apart = np.where(finite & (w != 0), d > fmt.ulp(m + band) / 2 + band,
                         np.where(w == 0, m - band > fmt.smallest_subnormal / 2, m + band < fmt.max))
        apart &= s[rows] == 0
        if fmt.saturates:  # where x may lie beyond max, cr is +-max: a finite v far from x may still be it
            apart &= ~(finite & (m + band >= fmt.max))
    bad[rows] = fails & apart
    decided[rows] = fails & apart
    near = np.flatnonzero(fails & ~apart)  # is v cr? only if the whole band rounds alike
    if len(near):
        sub = rows[near]
        x = approx.take(sub)
        alike = ~x.near_boundary(fmt, error if error.ndim == 0 else error[sub])
        cr, w = x.rounded(fmt), v[sub]
        same = (w == cr) | (np.isnan(w) & np.isnan(cr))
        bad[sub] = alike & ~same
        decided[sub] = alike
    return bad, decided


def stored_beyond(fmt: Format, exact: Exact) -> np.ndarray:
    """Where an exact value x is beyond the format's range, whatever its overflow convention: |x| above
    the rounding boundary ``T = max + ulp(max)/2``, or equal to T where the tie rounds away from max
    (max's significand is odd: IEEE formats), or infinite in a format without infinity.  Computed from
    max and its ulp, not from the rounded value (a saturating format rounds 1e4 to its max)."""
    ulp = float(fmt.ulp(fmt.max))
    boundary = fmt.max + ulp / 2  # exact in float64 below float64's own max (float64: inf, nothing beyond)
    odd = int(fmt.max / ulp) % 2 == 1
    with np.errstate(all="ignore"):
        x = np.abs(np.ldexp(exact.hi, _small(exact.scale)))
        outward = exact.lo * np.sign(exact.hi)  # > 0: |x| is a little above |hi|
        at = (x == boundary) & ((outward > 0) | ((outward == 0) & odd))
        return (np.isfinite(exact.hi) & ((x > boundary) | at)) | (np.isinf(exact.hi) & (not fmt.has_inf))


def _with_errors(v, exact, rel, ulps, bits, arith, status: np.ndarray) -> Outcome:
    """A black box's outcome: ``status`` with the rows where the call raised set to ``error`` (their messages
    kept), no blame."""
    messages = np.full(v.shape, "", dtype=object)
    if arith.errors:
        rows = np.fromiter(arith.errors, dtype=np.int64)
        status[rows] = _CODE["error"]
        messages[rows] = list(arith.errors.values())
    return Outcome(v, None, exact, None, rel, ulps, bits, _steps(arith), messages, status)


def classify(fmt: Format, value, exact: Exact, arith: Arith, tolerance: float | None = None,
             black_box: bool = False, storage: bool = False) -> Outcome:
    """Apply the rule above to a batch; ``arith`` holds the events of the computation
    (and, for a black box, the rows whose call raised); ``storage``: the exact value is the
    input itself (``Truth.storage``)."""
    tol = fmt.default_tolerance if tolerance is None else tolerance
    v = np.asarray(value).astype(np.float64)
    if not storage and not (fmt.saturates and not black_box):
        plain = _classify_plain(fmt, v, exact, arith, tol, black_box)
        if plain is not None:
            return plain
    v_finite = bool(np.isfinite(v).all())  # (the usual case: the NaN and inf rules below match no row)
    rel, ulps, bits = _errors(fmt, v, exact, v_finite)
    cr = exact.rounded(fmt)
    # (what depends on the exact values alone is computed once per format and shared by the methods)
    beyond, unrepresentable = exact._memoized(("beyond", fmt.name), lambda: _beyond(fmt, exact))
    nan, inf = (False, False) if v_finite else (np.isnan(v), np.isinf(v))
    if not v_finite and nan.any():
        undefined = nan & np.isnan(exact.hi)  # NaN for an undefined loss: the faithful answer (step 1, both kinds)
        same = (v == cr) | (nan & np.isnan(cr) & beyond) | undefined
    else:
        same = v == cr
    out_of_range = unrepresentable | arith.input_lost
    # a saturating format gives +-max where others give +-inf: lost too, where an infinity was saturated
    saturated = (np.abs(v) == fmt.max) & arith.saturated if fmt.saturates and not black_box else False
    lost = ~same & (nan | inf | (v == 0) | saturated)

    # (status codes, indices into STATUSES, assigned in this order: a later rule overrides an earlier one;
    # the first two rules' rows are disjoint, same and not same: the first is a product, not an assignment)
    status = (~same & (rel > tol)).view(np.uint8) * np.uint8(_CODE["inaccurate"])
    if out_of_range.any():
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
        return _with_errors(v, exact, rel, ulps, bits, arith, status)
    if any_lost:  # (the usual case has no lost value: nothing below applies)
        over, under = arith.first_step("overflow"), arith.first_step("underflow")
        pole = arith.first_step("divide_by_zero") != NEVER
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
    return Outcome(v, None, exact, None, rel, ulps, bits, _steps(arith), codes=status)


def _classify_plain(fmt: Format, v: np.ndarray, exact: Exact, arith: Arith, tol: float,
                    black_box: bool) -> Outcome | None:
    """:func:`classify` of a batch where the rule's special cases match no row (None otherwise): every exact
    value finite, not 0, held unscaled (:func:`_exact_facts`), every value finite and > 0 (told by the values'
    min and max: NaN fails both), not the storage rule, and no saturated infinity to look for (a white box in a
    saturating format goes the general way).  Then no value is NaN, +-inf or 0, so none is lost (step 2 matches
    no row), and the statuses are: ``inaccurate`` where ``rel_error > tol`` and v is not cr (step 3; compared
    with cr only where some rel_error is above the tolerance), ``range`` where v is cr and the exact value is
    unrepresentable or an input was lost (step 1; compared only where some row is either), else ``ok``; for a
    black box, ``error`` where the call raised.  The same codes, columns and steps as the general path."""
    if not v.size or _exact_facts(exact).any():
        return None
    low = v.min()
    if not (low >= 0 and v.max() < np.inf):
        return None
    rel, ulps, bits = _errors(fmt, v, exact, True)
    cr = exact.rounded(fmt)
    inaccurate = rel > tol
    if inaccurate.any():
        inaccurate &= v != cr
        status = inaccurate.view(np.uint8) * np.uint8(_CODE["inaccurate"])
    else:
        status = np.zeros(v.shape, np.uint8)
    unrepresentable = exact._memoized(("beyond", fmt.name), lambda: _beyond(fmt, exact))[1]
    if _any(exact, ("unrepresentable", fmt.name), unrepresentable) or arith.input_lost.any():
        status[(v == cr) & (unrepresentable | arith.input_lost)] = _CODE["range"]
    if black_box:
        return _with_errors(v, exact, rel, ulps, bits, arith, status)
    if low == 0:  # (a 0 that is not cr is lost: its cause is the first overflow / underflow event, if any)
        zeros = np.flatnonzero(v == 0)
        lost = zeros[cr[zeros] != 0]  # (v != cr where v is 0; NaN != 0 too)
        if lost.size:
            over, under = arith.first_step("overflow")[lost], arith.first_step("underflow")[lost]
            seen = (over != NEVER) | (under != NEVER)
            status[lost[seen & (over <= under)]] = _CODE["overflow"]
            status[lost[seen & (under < over)]] = _CODE["underflow"]
    return Outcome(v, None, exact, None, rel, ulps, bits, _steps(arith), codes=status)


def _any(exact: Exact, key, mask: np.ndarray) -> bool:
    """``mask.any()`` of a mask memoized on ``exact`` under ``key`` (memoized too)."""
    return bool(exact._memoized(("any",) + key, lambda: np.array(mask.any())))


def _steps(arith: Arith) -> np.ndarray:
    """A copy of ``arith``'s first steps (the Arith may go on recording); where it recorded nothing (every
    step NEVER, told by the min), a read-only broadcast of NEVER instead: no copy of (events x rows) int64s.  A
    quiet Arith's steps are such a broadcast already (told by its zero strides, not by a scan of every row)."""
    first = arith.first
    if first.ndim == 2 and first.strides == (0, 0) and not first.flags.writeable and first.size \
            and first[0, 0] == NEVER:
        return first  # (a quiet Arith's: a read-only broadcast of NEVER already, never written)
    if first.size and first.min() == NEVER:
        never = _NEVER_STEPS.get(first.shape)
        if never is None:  # (one per shape: np.broadcast_to costs ~5 us a call, a chunk's fixed cost)
            if len(_NEVER_STEPS) >= 64:
                _NEVER_STEPS.clear()
            never = _NEVER_STEPS[first.shape] = np.broadcast_to(np.int64(NEVER), first.shape)
        return never
    return first.copy()


_NEVER_STEPS: dict[tuple, np.ndarray] = {}  # shape -> a read-only broadcast of NEVER

def _beyond(fmt: Format, exact: Exact) -> np.ndarray:
    """(beyond, unrepresentable) stacked, per row: the exact value overflows the format (or is infinite where
    the format has no inf: cr is NaN; a saturating format's cr is +-max there, so its twin that overflows
    to +-inf tells); it overflows or is non-zero but rounds to 0."""
    cr = exact.rounded(fmt)
    if not fmt.saturates and exact._rounded_normal(fmt):  # (every cr a normal number of fmt: none of them)
        return np.zeros((2, len(cr)), dtype=bool)
    wide_cr = exact.rounded(fmt.held_twin) if fmt.saturates else cr
    if np.isfinite(wide_cr).all():  # (the usual case: nothing is beyond, every term below is False)
        return np.stack([np.zeros(len(cr), dtype=bool), (cr == 0) & ~exact.zero])
    beyond = ~np.isnan(exact.hi) & ~np.isfinite(wide_cr) & (np.isfinite(exact.hi) | np.isnan(wide_cr))
    return np.stack([beyond, beyond | ((cr == 0) & ~exact.zero)])


def _stored_lost(fmt: Format, v: np.ndarray, exact: Exact) -> dict[str, np.ndarray]:
    """The storage rule's failures (disjoint rows): ``overflow`` x beyond the range (:func:`stored_beyond`),
    ``underflow`` x != 0 stored as 0, ``nan`` x NaN where the format has no NaN or the value is a number."""
    undefined = np.isnan(exact.hi)
    return {"overflow": stored_beyond(fmt, exact), "underflow": (v == 0) & ~exact.zero & ~undefined,
            "nan": undefined & ((fmt.nan == "none") | ~np.isnan(v))}


def gather(parts: list[tuple[np.ndarray, Outcome]], rows: int) -> Outcome:
    """Reassemble outcomes computed on groups of rows (``(row indices, outcome)``)."""
    if len(parts) == 1 and np.array_equal(parts[0][0], np.arange(rows)):
        return parts[0][1]
    columns = {"_status": None, "_reference": None}  # (the reference is made from the gathered exact values)
    names = ["value", "rel_error", "ulps", "error_bits"]
    # the status codes where every part has them (the status strings then made when read), else the strings
    names.append("codes" if all(part.codes is not None for _, part in parts) else "_status")
    if parts[0][1].errors is not None:
        names.append("errors")
    if any(part.window is not None for _, part in parts):
        columns["window"] = np.zeros(rows)
        for idx, part in parts:
            if part.window is not None:
                columns["window"][idx] = part.window
    for name in names:
        read = "status" if name == "_status" else name
        first = getattr(parts[0][1], read)
        out = np.empty(rows, dtype=first.dtype)
        for idx, part in parts:
            out[idx] = getattr(part, read)
        columns[name] = out
    steps = np.full((parts[0][1].first_steps.shape[0], rows), NEVER, dtype=np.int64)
    # (each part's exact values put into one set of arrays: Exact.put would copy all of them per part)
    exact = Exact(np.zeros(rows), np.zeros(rows), np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=bool))
    for idx, part in parts:
        steps[:, idx] = part.first_steps
        exact.hi[idx], exact.lo[idx] = part.exact.hi, part.exact.lo
        exact.scale[idx], exact.zero[idx] = part.exact.scale, part.exact.zero
    return Outcome(**columns, exact=exact, first_steps=steps)
