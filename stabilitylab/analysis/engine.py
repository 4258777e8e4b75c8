"""Run experiments: methods x formats x cases (vectorized over cases) -> results.

``evaluate`` is the one place a method meets a format; ``compare`` assembles the
rows and counts that every renderer, the report and the baseline check consume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..experiments import Experiment
from ..numerics import policies, reference
from ..numerics.arith import BLOCK_COUNTS, NEVER, Arith, rows_any
from ..numerics.formats import FORMATS, Format
from ..numerics.reference import Exact
from ..numerics.wide import wide_dtype
from .outcome import METHOD_FAILURES, STATUSES, Outcome, classify, gather

__all__ = ["Result", "Comparison", "evaluate", "compare", "user_exact", "input_changes", "relative_change"]


@dataclass(frozen=True)
class Result:
    """One method on one case in one format (a row of ``compare --format json``)."""

    experiment: str
    case: str
    method: str
    dtype: str
    value: float
    reference: float  # the float64 nearest to the exact loss
    exact: str  # the exact loss to 10 significant digits (also below float64's range)
    status: str
    rel_error: float
    ulps: float
    error_bits: float
    events: tuple[str, ...]
    error: str = ""  # black boxes: the first line of the exception the call raised on this row
    # the exact loss of the user's own inputs (float64, not rounded to the format) where rounding the
    # inputs to the format changes it materially (see :func:`input_changes`), else ""
    input_exact: str = ""
    input_change: str = ""  # why, in words ("an input rounds to 1"), where input_exact is set


@dataclass(frozen=True)
class Count:
    """How many cases of one method in one format ended in each status."""

    experiment: str
    method: str
    dtype: str
    cases: int
    ok: int
    range: int
    overflow: int
    underflow: int
    nan: int
    inaccurate: int
    inf: int = 0  # black boxes only (see outcome.py)
    error: int = 0


@dataclass
class Comparison:
    experiments: tuple[Experiment, ...]
    formats: tuple[Format, ...]
    results: list[Result]
    summary: list[Count]
    notes: list[str] = field(default_factory=list)
    tolerance: float | None = None
    ftz: bool = False
    # block-scaled storage: (experiment, format name) -> per case, the quantization counts
    # (numerics.arith.BLOCK_COUNTS x cases, int64, summed over the case's inputs)
    blocks: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


SHARED_BYTES = 2**26  # loaded inputs above this share no results between methods (issue #18)


def _nbytes(inputs: Any) -> int:
    """Bytes of the arrays a batch's loaded inputs hold (the fields of its dataclass)."""
    fields = vars(inputs) if hasattr(inputs, "__dict__") else {}
    return sum(v.nbytes for v in fields.values() if isinstance(v, np.ndarray))


def evaluate(experiment: Experiment, fmt: Format, cases: Any, *, methods: Sequence[str] | None = None,
             tolerance: float | None = None, ftz: bool = False,
             fast_reference: bool | None = None, fast: bool = False, tensor_amax: float | None = None,
             block_counts: np.ndarray | None = None) -> dict[str, Outcome]:
    """Outcome of each method on a batch of cases in one format.

    Inputs are rounded to the format once; the exact reference is computed for
    those rounded inputs; each method then runs on a fork of the input events.
    ``fast_reference``: use the vectorized longdouble reference (relative error
    below ``reference.FAST_ERROR``) and re-check with mpmath any row whose status
    it cannot decide (relative error within that margin of the tolerance).  The
    default (None) uses it for formats of at most 24 bits, where its error is
    below 2**-24 ulp, and mpmath for float64, whose metrics need more.
    ``fast``: the bulk path for real-size data: the fast reference is evaluated in
    float64 for formats of <= 24 bits (bound
    :func:`reference.fast_error`, far below their ulp) and in longdouble for float64.
    Block-scaled storage (``fmt.block``): ``tensor_amax`` is NVFP4's tensor amax (None: each case is its
    own tensor); ``block_counts``, if given ((len(BLOCK_COUNTS), len(cases)) int64), receives each row's
    quantization counts (:attr:`Arith.block_counts`).
    """
    chosen = [m for m in experiment.methods if methods is None or m.name in methods]
    if fast_reference is None:
        fast_reference = fmt.precision <= 24
    parts: dict[str, list] = {m.name: [] for m in chosen}
    groups = cases.groups()
    for rows in groups:
        group = cases if len(groups) == 1 else cases.take(rows)
        loaded = Arith(fmt, len(group), ftz=ftz, tensor_amax=tensor_amax)
        inputs = experiment.load(loaded, group)
        if block_counts is not None and loaded.block is not None:
            block_counts[:, rows] = loaded.block_counts
        if _nbytes(inputs) > SHARED_BYTES:  # wide rows: each method's intermediates freed as it goes (issue #18)
            loaded.unshared()
        tol = fmt.default_tolerance if tolerance is None else tolerance
        runs = []
        for method in chosen:
            arith = loaded.fork()
            runs.append((method, arith, arith.deliver(method.kernel(arith, inputs))))
        truths = {}
        for method, _, _ in runs:  # methods share the experiment's exact loss unless they define their own
            truths.setdefault(id(experiment.truth_of(method)), (experiment.truth_of(method), []))
        for truth, _ in truths.values():
            members = [r for r in runs if experiment.truth_of(r[0]) is truth]
            for (method, _, _), outcome in zip(members, _classified(truth, members, inputs, fmt, tolerance, tol,
                                                                   fast_reference, fast)):
                parts[method.name].append((rows, outcome))
                if method.observe is not None:
                    method.observe(fmt, group, inputs, outcome)
        loaded.forget()
    return {name: gather(p, len(cases)) for name, p in parts.items()}


def _classified(truth, runs, inputs, fmt: Format, tolerance, tol: float, fast: bool,
                bulk: bool = False, printed: tuple[int, int] | None = None, defer: bool = False,
                exact: Exact | None = None, eventless: bool = False) -> list[Outcome]:
    """Outcomes of ``runs`` against ``truth``'s exact value (fast path re-checked where undecided).

    ``printed = (keep, cap)`` (bulk path, a caller that shows only the statuses, the error-bits bins,
    the ``keep`` worst rows, the first ``cap`` failing rows and the first row of each status: not every
    row's columns): the longdouble reference is first replaced by its bounded float64 tier where the
    truth has one (:func:`_bounded`); the outcomes are the same, bit for bit, in every row those read.
    With ``defer`` too, the tier is also kept in rows that are printed (as long as their status and
    error-bits bin are decided): each outcome's :attr:`~.outcome.Outcome.window` is then, per row, the
    ulps window ``w`` of :func:`_bounded` where the row's columns are the tier's (0 where they are final),
    and the caller must recompute the columns it prints of those rows on the longdouble reference
    (``streaming.summarize`` does, at the end of a run).  ``exact``: the fast reference's values of
    ``inputs``, already computed (``fast`` and ``bulk``; then no tier).  ``eventless``: the caller's promise
    that every run's Arith recorded nothing :func:`classify` reads (:func:`_eventless`: the fused path's);
    then rows whose exact value changes after a first classification are classified alone (:func:`_spliced`)."""
    dtype = wide_dtype(fmt) if bulk else None
    window = outcomes = None
    splice = eventless and not any(m.black_box for m, _, _ in runs)
    if exact is None and fast and printed:
        got = _bounded(truth, runs, inputs, fmt, tolerance, tol, dtype, printed, defer)
        if got is not None:
            exact, refined, first, window = got
            if splice:
                outcomes = [_spliced(fmt, o, value, exact, refined, tolerance, truth.storage)
                            for (_, _, value), o in zip(runs, first)]
    if exact is None:
        exact = reference.fast(truth, inputs, dtype) if fast else reference.exact(truth, inputs)
    if outcomes is None:
        outcomes = [classify(fmt, value, exact, arith, tolerance, m.black_box, truth.storage)
                    for m, arith, value in runs]
    if fast:
        error = reference.fast_error(dtype, reference.terms(inputs))
        undecided = _undecided_rows(outcomes, tol, exact, fmt, error)
        if undecided.size:
            exact = exact.put(undecided, reference.exact(truth, inputs.take(undecided)))
            if splice:
                outcomes = [_spliced(fmt, o, value, exact, undecided, tolerance, truth.storage)
                            for (_, _, value), o in zip(runs, outcomes)]
            else:
                outcomes = [classify(fmt, value, exact, arith, tolerance, m.black_box, truth.storage)
                            for m, arith, value in runs]
            if window is not None:  # (none of them kept the tier's value: _bounded refined them; all final now)
                window = window.copy()
                window[undecided] = 0.0
    if window is not None:
        for o in outcomes:
            o.window = window
    return outcomes


def _eventless(arith: Arith) -> bool:
    """Whether ``arith`` recorded nothing that :func:`classify` reads (no event, no input lost, no saturated
    infinity, no error): then a fresh ``Arith(fmt, k)`` stands for it on any k of its rows.  (What
    ``_classified``'s ``eventless`` promises; a pass over the Arith's first steps: the callers know it, the
    tests check it.)"""
    return not (arith.errors or arith.input_lost.any() or arith.saturated.any()
                or (arith.first.size and arith.first.min() != NEVER))


def _spliced(fmt: Format, o: Outcome, value, exact: Exact, rows: np.ndarray, tolerance, storage: bool) -> Outcome:
    """``o`` (an outcome against other exact values, computed on an eventless Arith) with ``rows`` classified
    again against ``exact`` (equal to o's exact values elsewhere): ``classify`` is per row, so this is
    ``classify`` of every row against ``exact``, without a second pass over the rows that kept theirs."""
    if not rows.size:
        return Outcome(o.value, None, exact, None, o.rel_error, o.ulps, o.error_bits, o.first_steps, codes=o.codes)
    sub = classify(fmt, np.asarray(value)[rows], exact.take(rows), Arith(fmt, len(rows)), tolerance, False, storage)
    columns = []
    for name in ("rel_error", "ulps", "error_bits", "codes"):
        column = getattr(o, name).copy()
        column[rows] = getattr(sub, name)
        columns.append(column)
    rel, ulps, bits, codes = columns
    return Outcome(o.value, None, exact, None, rel, ulps, bits, o.first_steps, codes=codes)


def _bounded(truth, runs, inputs, fmt: Format, tolerance, tol: float, dtype, printed: tuple[int, int],
             defer: bool = False):
    """The longdouble fast reference (``reference.fast(truth, inputs, longdouble)``) in every row that
    ``printed = (keep, cap)`` outputs read and every row whose status or error-bits bin it could change;
    elsewhere its bounded float64 tier (``truth.fast_reference.bounded``: values within ``b`` per row,
    relative): ``(values, refined, outcomes, window)``, ``refined`` the rows given the longdouble values and
    ``outcomes`` each run's outcome against the float64 values before that (the same in every other row);
    None where there is no such tier or it cannot help (as many rows as ``keep``).

    Let F be :func:`reference.fast_error` (the bound the re-check after this uses) and D the
    longdouble reference's own bound (:func:`reference.longdouble_error`, ~2**-58.4).  A row keeps the
    float64 value only where, for every method (o: its outcome against the float64 values):

    * the row is handled, the method's value is not special (0, subnormal, +-inf, NaN, a saturated
      +-max: :func:`_undecided`'s ``special``, whose status the reference's side of a rounding boundary
      decides) and ``|rel_error - tol| > 6 F (1 + rel_error)``: then the longdouble value (within
      ``(b + F)(1 + rel_error) < 2 F (1 + rel_error)`` of it in relative error) gives the same status and
      the re-check flags the row in neither case (its margin is ``4 F``);
    * no input was lost (``range`` where the value is the correctly rounded exact value: an equality the
      float64 value does not decide);
    * the error-bits bin is decided: both values' binade is (``hi``'s significand farther than
      ``2**-52 + 2 (b + D)`` from 1/2 and from 1), so ulps moves by at most ``w = (b + D) 2**53 (1 + 2**-40)``
      (|x| / ulp(x) < 2**53) plus its own rounding (``2**-50`` relative): ``ulps + 1`` over that window
      stays strictly inside one ``[2**j, 2**(j+1))``, 2**-40 away from its ends (np.log2's own error is
      far smaller);
    * it is not one that is printed: not a candidate for the ``keep`` worst (``ulps + w`` at least the
      keep-th largest ``ulps - w`` of the chunk, with margins: a row below is below ``keep`` others
      whatever the reference), nor among the first ``cap`` failing rows, nor the first row of its status
      (statuses being decided, these are the same rows under either reference).

    The rows left then get the longdouble values, and the re-check with F (mpmath where undecided)
    flags exactly the rows it flags on the longdouble reference alone.

    ``defer``: the last condition is left out (any number of rows, even fewer than ``keep``), and ``window``
    (None without ``defer``) is ``w`` in the rows that keep the float64 value, 0 elsewhere.  The
    statuses and bins are then the longdouble reference's, every row's; the columns of the rows with a
    window are not (the caller recomputes those it prints), and a row's true ``ulps`` is within
    ``[ulps (1 - 2**-50) - w, ulps (1 + 2**-50) + w]`` of its float64 one."""
    bounded = getattr(truth.fast_reference, "bounded", None)
    keep, cap = printed
    if bounded is None or dtype is None or np.dtype(dtype) != np.longdouble or (len(runs[0][2]) <= keep
                                                                                and not defer):
        return None
    got = bounded(inputs)
    if got is None:
        return None
    approx, b, handled = got
    n = len(approx)
    terms = reference.terms(inputs)
    F = reference.fast_error(dtype, terms)
    apart = b + reference.longdouble_error(terms)  # |float64 tier - longdouble| / |x|, at most
    w = apart * 2.0**53 * (1 + 2.0**-40)
    refine = ~handled
    with np.errstate(all="ignore"):
        mant = np.abs(np.frexp(approx.hi)[0])
        binade = (mant > 0.5 + 2.0**-52 + 2 * apart) & (mant < 1 - 2.0**-52 - 2 * apart)
        refine |= ~binade
        known = handled & binade  # rows whose ulps window below holds
        everywhere = np.ones(n, dtype=bool)
        first = []
        for m, arith, value in runs:
            o = classify(fmt, value, approx, arith, tolerance, m.black_box, truth.storage)
            first.append(o)
            refine |= _undecided(o, tol, everywhere, fmt, 1.5 * F)
            refine |= arith.input_lost  # (range where v is the rounded exact value: that equality is not decided)
            lo = np.maximum(o.ulps * (1 - 2.0**-50) - w, 0.0) + 1
            hi = o.ulps * (1 + 2.0**-50) + w + 1
            refine |= ~_same_binade(lo, hi)
            if defer:
                continue
            if keep > 0:
                kth = _kth_largest(np.where(known, lo, -np.inf), keep)  # (the other rows are refined anyway)
                refine |= hi * (1 + 2.0**-40) + 2.0**-60 >= kth
            codes = o.codes
            failing = np.flatnonzero(_FAILING[codes])[:cap]
            refine[failing] = True
            present = np.flatnonzero(np.bincount(codes, minlength=len(STATUSES)))
            refine[[int(np.argmax(codes == c)) for c in present]] = True
    rows = np.flatnonzero(refine)
    if rows.size:
        approx = approx.put(rows, reference.fast(truth, inputs.take(rows), dtype))
    return approx, rows, first, np.where(refine, 0.0, w) if defer else None


_FAILING = np.isin(np.arange(256), [STATUSES.index(s) for s in METHOD_FAILURES])  # by status code


def _same_binade(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per row, whether ``log2(x)`` floors alike for every x in ``[lo, hi]`` (``lo >= 1``; the error-bits bin
    of :func:`_bounded`): ``lo (1 - 2**-40)`` and ``hi (1 + 2**-40)`` have the same float64 exponent field
    (the same ``[2**j, 2**(j+1))``, 2**-40 inside its ends: np.log2's own error is far smaller), or
    ``hi (1 + 2**-40) < 2`` (bin 0: ``log2(x) >= 0`` for every ``x >= 1``, ``log2(1) = 0`` exactly, whatever
    the margin below 1).  False where hi is infinite or NaN.  The exponent field of a positive finite float64
    is its bits >> 52: one shift a bound instead of ``np.floor(np.log2(...))``."""
    a = (lo * (1 - 2.0**-40)).view(np.int64) >> 52
    top = hi * (1 + 2.0**-40)
    same = (a == (top.view(np.int64) >> 52)) & (top < np.inf)
    same |= top < 2.0
    return same


def _kth_largest(low: np.ndarray, keep: int) -> float:
    """The ``keep``-th largest of ``low`` (``1 <= keep <= len(low)``) as ``np.partition`` orders it (NaN above
    everything): ``np.partition`` of every value, or, on long arrays, of those not below ``t``, the ``keep``-th
    largest of every 16th value (at most the whole array's: the keep values at or above it in the sample are
    in ``low``), which hold the keep largest and every NaN (t NaN: every value).  The same value, a pass and
    a partition of n / 16 values instead of a partition of n."""
    n = len(low)
    if n >= 64 * keep:
        sample = low[::16]
        t = np.partition(sample, len(sample) - keep)[len(sample) - keep]
        low = low[~(low < t)]
        n = len(low)
    return np.partition(low, n - keep)[n - keep]


def _undecided_rows(outcomes: list[Outcome], tol: float, exact: Exact, fmt: Format, error: float) -> np.ndarray:
    """The rows (sorted indices) where :func:`_undecided` holds for some outcome, with ``near`` =
    ``exact.near_boundary(fmt, 4 * error)``: ``np.flatnonzero(np.any([_undecided(o, tol, near, fmt, error)
    for o in outcomes], axis=0))``.  The same rows, from each outcome's candidates (:func:`_flip_rows`,
    :func:`_special_rows`), and ``near_boundary`` evaluated only on the rows where some value is special (none:
    the usual case, where every value is a normal finite number)."""
    flips = [_flip_rows(o.rel_error, tol, error) for o in outcomes]
    specials = [_special_rows(o.value, fmt) for o in outcomes]
    n = len(exact)
    special = _union(specials, n)
    if special.size:
        near = exact.take(special).near_boundary(fmt, 4 * error)
        special = special[near]
    return _union(flips + [special], n)


def _union(rows: list[np.ndarray], n: int) -> np.ndarray:
    """The sorted union of index arrays (each sorted) into ``range(n)``: marked on a mask of n (``np.unique``
    of their concatenation takes ~0.2 ms for a few thousand indices)."""
    rows = [r for r in rows if r.size]
    if len(rows) <= 1:
        return rows[0] if rows else np.zeros(0, np.intp)
    mask = np.zeros(n, dtype=bool)
    for r in rows:
        mask[r] = True
    return np.flatnonzero(mask)


def _flip_rows(rel: np.ndarray, tol: float, error: float) -> np.ndarray:
    """``np.flatnonzero(np.isfinite(rel) & (np.abs(rel - tol) <= (1 + rel) * 4 * error))`` (:func:`_undecided`'s
    ``flip``), tested only on the rows with ``tol - c <= rel <= tol + c``, ``c = tol 2**-10``, where that is
    enough: outside, ``|rel - tol| >= c`` exactly, and ``rel (1 - 4 error) - tol - 4 error`` (above the
    tolerance) or ``tol - rel - (1 + rel) 4 error`` (below) is monotone in rel, so
    ``|rel - tol| - (1 + rel) 4 error >= c - (1 + tol + c) 4 error``: positive by a factor 2 (far more than
    both sides' float64 roundings, a few ulps) whenever ``c >= 8 error (1 + tol + c)`` (checked; else every row
    is tested).  NaN and inf fail both tests."""
    c = tol * 2.0**-10
    with np.errstate(all="ignore"):
        if tol > 0 and c >= 8 * error * (1 + tol + c):
            cand = np.flatnonzero((rel >= tol - c) & (rel <= tol + c))
            if not cand.size:
                return cand
            r = rel[cand]
            return cand[np.isfinite(r) & (np.abs(r - tol) <= (1 + r) * 4 * error)]
        return np.flatnonzero(np.isfinite(rel) & (np.abs(rel - tol) <= (1 + rel) * 4 * error))


def _special_rows(value: np.ndarray, fmt: Format) -> np.ndarray:
    """``np.flatnonzero(special)`` of :func:`_undecided` (0, subnormal, +-inf, NaN, and +-max in a saturating
    format): none where every value is within ``[tiny, max)`` in magnitude (for a saturating format) or
    ``[tiny, inf)``, told by the values' min and max (NaN fails both tests: then row by row); where every value
    is in ``[0, max)`` (or ``[0, inf)``), those below tiny."""
    with np.errstate(all="ignore"):
        if value.size:
            low, high = value.min(), value.max()
            top = fmt.max if fmt.saturates else np.inf
            if (low >= fmt.tiny and high < top) or (high <= -fmt.tiny and -low < top):  # (one sign, in range)
                return np.zeros(0, np.intp)
            if low >= 0 and high < top:  # (none NaN, none beyond: the special ones are the values below tiny)
                return np.flatnonzero(value < fmt.tiny)
        special = ~(np.abs(value) >= fmt.tiny) | np.isinf(value)
        if fmt.saturates:
            special |= np.abs(value) == fmt.max
    return np.flatnonzero(special)


def _undecided(o: Outcome, tol: float, near: np.ndarray, fmt: Format, error: float) -> np.ndarray:
    """Rows whose status could change within the fast reference's error: ok / inaccurate
    near the tolerance, or a value that may or may not be the correctly rounded exact
    value (which matters only for 0, subnormal and non-finite values, and for +-max in a saturating
    format: there the exact value's side of the overflow boundary decides ok or range)."""
    with np.errstate(all="ignore"):
        flip = np.isfinite(o.rel_error) & (np.abs(o.rel_error - tol) <= (1 + o.rel_error) * 4 * error)
        special = ~(np.abs(o.value) >= fmt.tiny) | np.isinf(o.value)
        if fmt.saturates:
            special |= np.abs(o.value) == fmt.max
    return flip | (near & special)


class _Watch(Arith):
    """An :class:`Arith` that also notes, per row, inputs that rounding to the format made exactly 1."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.to_one = np.zeros(self.rows, dtype=bool)

    def load(self, x, where=None) -> np.ndarray:
        y = super().load(x, where)
        x = np.asarray(x, dtype=np.float64)
        per_row = rows_any((np.abs(y) == 1) & (np.abs(x) != 1), self.rows)
        self.to_one |= per_row if where is None else per_row & where
        return y


def _loaded(experiment: Experiment, fmt: Format, cases: Any, ftz: bool = False):
    """``[(rows, watched Arith, inputs)]`` per group of rows of ``cases``."""
    groups = cases.groups()
    out = []
    for rows in groups:
        group = cases if len(groups) == 1 else cases.take(rows)
        arith = _Watch(fmt, len(group), ftz=ftz)
        out.append((rows, arith, experiment.load(arith, group)))
    return out


def _zeros(rows: int) -> Exact:
    return Exact(np.zeros(rows), np.zeros(rows), np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=bool))


def user_exact(experiment: Experiment, truth, cases: Any) -> Exact:
    """The exact value of ``truth`` on the user's own inputs: the cases as given (float64), not
    rounded to any narrower format (and no flush to zero)."""
    exact = _zeros(len(cases))
    for rows, _, inputs in _loaded(experiment, FORMATS["float64"], cases):
        exact = exact.put(rows, reference.exact(truth, inputs))
    return exact


def relative_change(a: Exact, b: Exact) -> np.ndarray:
    """|a - b| / |b| per row: 0 where both are 0 or the same infinity, inf where b is 0 and a is not
    (or exactly one is NaN or infinite)."""
    with np.errstate(all="ignore"):
        av = np.ldexp(a.hi + a.lo, np.clip(a.scale - b.scale, -2000, 2000).astype(np.int32))  # a in the units of b
        bv = b.hi + b.lo
        rel = np.abs(av - bv) / np.abs(bv)
        rel = np.where(a.zero | b.zero, np.where(a.zero & b.zero, 0.0, np.where(b.zero, np.inf, 1.0)), rel)
        special = ~np.isfinite(a.hi) | ~np.isfinite(b.hi)
        same = (a.hi == b.hi) | (np.isnan(a.hi) & np.isnan(b.hi))
        return np.where(special, np.where(same, 0.0, np.inf), rel)


def input_changes(experiment: Experiment, fmt: Format, cases: Any, rounded: Exact, user: Exact,
                  tolerance: float | None = None, ftz: bool = False) -> np.ndarray:
    """Per row, why rounding the inputs to ``fmt`` changes the problem, or "" where it does not
    materially: the exact loss of the rounded inputs (``rounded``) differs from that of the user's own
    (``user``, :func:`user_exact`) by more than the tolerance (relatively), or an input overflows or
    underflows to 0 (always).  The reason names the input event when there is one: an input
    overflows, underflows to 0 or rounds to 1 (a logit rounding to 1 is common and harmless, so
    rounding to 1 alone marks a row only where the exact loss changes)."""
    tol = fmt.default_tolerance if tolerance is None else tolerance
    changed = relative_change(rounded, user) > tol
    out = np.full(len(cases), "", dtype=object)
    for rows, arith, _ in _loaded(experiment, fmt, cases, ftz):
        over = arith.first_step("overflow") != NEVER
        under = arith.first_step("underflow") != NEVER
        for i, row in enumerate(rows.tolist()):
            if not (changed[row] or arith.input_lost[i]):
                continue
            causes = [text for flag, text in ((over[i], "an input overflows"), (under[i], "an input underflows to 0"),
                                              (arith.to_one[i], "an input rounds to 1")) if flag]
            out[row] = ", ".join(causes) if causes else "inputs rounded"
    return out


def compare(experiments: Sequence[Experiment], formats: Sequence[Format],
            cases: Mapping[str, Any] | None = None, *, tolerance: float | None = None,
            ftz: bool = False) -> Comparison:
    """Every method of every experiment on its cases, in every format.

    ``cases`` maps an experiment name to its batch; missing names use the
    experiment's default cases.
    """
    results: list[Result] = []
    summary: list[Count] = []
    blocks: dict[tuple[str, str], np.ndarray] = {}
    for experiment in experiments:
        batch = (cases or {}).get(experiment.name) or experiment.default_cases()
        by_format = {}
        for fmt in formats:
            counts = None
            if fmt.block is not None:
                counts = blocks[experiment.name, fmt.name] = np.zeros((len(BLOCK_COUNTS), len(batch)), np.int64)
            by_format[fmt.name] = evaluate(experiment, fmt, batch, tolerance=tolerance, ftz=ftz, block_counts=counts)
        users: dict[int, tuple[Exact, list[str]]] = {}  # per truth: the exact loss of the user's own inputs
        changes: dict[tuple[int, str], np.ndarray] = {}
        for method in experiment.methods:
            truth = experiment.truth_of(method)
            if id(truth) not in users:
                f64 = by_format.get("float64")  # its inputs are the user's own (float64, no flush): the same exact
                user = f64[method.name].exact if f64 is not None and not ftz else user_exact(experiment, truth, batch)
                users[id(truth)] = (user, user.text())
            for fmt in formats:
                o = by_format[fmt.name][method.name]
                key = (id(truth), fmt.name)
                if key not in changes:
                    changes[key] = input_changes(experiment, fmt, batch, o.exact, users[id(truth)][0], tolerance, ftz)
                change, user_texts = changes[key], users[id(truth)][1]
                texts = o.exact.text()
                for i, name in enumerate(batch.names):
                    results.append(Result(experiment.name, name, method.name, fmt.name, float(o.value[i]),
                                          float(o.reference[i]), texts[i], str(o.status[i]), float(o.rel_error[i]),
                                          float(o.ulps[i]), float(o.error_bits[i]), o.events[i],
                                          "" if o.errors is None else str(o.errors[i]),
                                          user_texts[i] if change[i] else "", change[i]))
                counts = {s: int((o.status == s).sum()) for s in STATUSES}
                summary.append(Count(experiment.name, method.name, fmt.name, len(batch), **counts))
    return Comparison(tuple(experiments), tuple(formats), results, summary, notes=policies.notes(formats),
                      tolerance=tolerance, ftz=ftz, blocks=blocks)
