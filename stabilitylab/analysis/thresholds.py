"""Exact first-failure search along a family's parameter, with an honest exactness flag.

For each family x method x format we find

* ``first_inaccurate``: the smallest parameter whose status blames the method
  (``inaccurate``, ``overflow``, ``underflow`` or ``nan``; ``ok`` and ``range``,
  a correctly rounded loss the format cannot hold, do not count);
* ``first_failure``: the smallest parameter whose value is non-finite (inf or
  NaN; in a saturating format also the +-max that replaced an infinity), with its status;

over the integers (n) or over the *representable values of the format* (d, z),
ordered by bit pattern (for x >= 0 the bit pattern grows with the value).

How each number is established, and its ``exact`` flag:

1. Formats of at most 16 bits: every representable value is evaluated.  Exact.
2. Wider float grids (float32, float64): a k-ary bisection finds a failing point
   b (the candidate).  Then every value below b is *verified*: ranges of the
   parameter are proven ok (or finite) by running the kernels on intervals
   (:mod:`stabilitylab.numerics.interval`: the format-rounded result of every point of the
   range lies in the enclosure, and so does the exact loss; if every value in the
   one is within the tolerance of every value in the other, no point of the range
   can fail), and ranges that cannot be proven are halved until they are small,
   then evaluated point by point.  Each range not proven is also evaluated at its
   midpoint: a failure there prunes every range above it at once.  An earlier
   failure found on the way replaces b.
   If every value below b was proven or evaluated, the threshold is exact;
   otherwise (more than ``POINT_BUDGET`` points would need evaluating, or more than
   ``RANGE_BUDGET`` ranges proving, with smaller budgets for float64: a float64
   error that hovers around the tolerance does so over 2**40 values) it is the smallest
   failing value found, flagged ``exact: false``, and shown as a bound ("<= x").
   "Never fails" is exact only if the whole range was verified.  (A range not proven is
   halved; in a grid of at most 24 bits it is split into up to ``SPLIT_NARROW`` parts,
   which changes no answer there: every such threshold is verified to its end.)
3. Integer grids (n): every n below the candidate is evaluated when there are at
   most ``INTEGER_SCAN`` of them; otherwise the bisection's answer is a bound.
   (The first ``INTEGER_SCAN`` values are evaluated first, and only the keys that
   do not fail there are bisected, unless the scan reached the grid's end: the same
   answers.)  They are evaluated in runs of ``INTEGER_RUN`` consecutive n, each row's
   status first decided from the exact values at its run's two ends (below), where the
   format holds every input that moves with n: a
   rounded input makes the loaded case another one, whose exact value need not lie between
   the ends' (float8_e5m2 holds z_loss's [37, 35, 32] as [36, 36, 32]).

Evaluating a point means its status, exactly as :func:`engine.evaluate` gives it
(the reported statuses come from the engine).  To get there with less work, the
kernels run once and :func:`outcome.blame` decides each status from the fast
reference wherever every exact value that close to it gets the same answer; a
run of consecutive points being verified first tries the span of the references
at its two ends (the exact value is monotone between turning points, so it lies
in that span).  Only the points neither settles go through the engine.

The interval proofs keep one correlation: a softmax probability e_y / sum(e) is bounded
as the one function e_y / (e_y + R), increasing in e_y and decreasing in R, where the
row's pairwise sum is exact over the range (the lemma and its proof:
:mod:`stabilitylab.numerics.interval`); near float32's thresholds of logits [d, 0] that
proves the ranges whose corners spread over hundreds of ulps of the probability.

Black boxes (``Method.black_box``: audited framework kernels, users' functions)
run through the same search, called on whole batches.  Nothing about them can
be proven on a range, so step 2 verifies by evaluating points only, within
``BLACK_BOX_POINT_BUDGET`` (float64: ``POINT_BUDGET_WIDE``): a float32 or
float64 threshold of a black box whose candidate lies further from the start is
a bound (``exact: false``), found by the bisection and then lowered by
``PROBE`` points spread below it and by a contiguous window of
``BLACK_BOX_WINDOW`` points scanned just below it (``Threshold.window_*``, JSON
``verified_from``: every input from there up to the bound was evaluated ok;
``verified_below`` stays what was verified from the start).  Formats of at most 16 bits are scanned
completely, black boxes included: exact.  Black boxes are not memoised (the
function may change between calls).

Precision policies (:mod:`stabilitylab.numerics.policies`): the parameter takes the values of the
policy's storage format, so a storage of at most 16 bits is scanned completely (exact, whatever the
compute format).  The interval proofs assume one rounding format and are not used for a policy: a
wider storage (``fp32@fp64``) is verified by points as black boxes are, and a value beyond that budget
is a bound.  Analytic predictions are for pure formats only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass, replace

import mpmath
import numpy as np

from ..experiments import EXPERIMENTS, Experiment
from ..experiments.base import Family, Settings
from ..numerics import interval, reference
from ..numerics.arith import NEVER, Arith
from ..numerics.formats import FORMATS, Format
from ..numerics.policies import format_or_policy
from . import staircase
from .engine import evaluate
from .outcome import METHOD_FAILURES, blame
from .parallel import fork_pool, worker_count

__all__ = ["Threshold", "Grid", "family_thresholds", "thresholds", "INTEGER_UPPER", "AGREEMENT_SLACK"]

INTEGER_UPPER = 2**62
EXHAUSTIVE_POINTS = 2**16  # grids this small (float16, bfloat16, float8) are scanned completely
POINT_BUDGET = 2**24  # points a verification may evaluate one by one, per key (float32: ~2**31 values)
POINT_BUDGET_WIDE = 2**14  # the same for float64: where its error hovers at the tolerance it does so over 2**40 values
RANGE_BUDGET = 2**22  # ranges a verification may try to prove, per key
RANGE_BUDGET_WIDE = 2**13  # the same for float64
BLACK_BOX_POINT_BUDGET = 2**20  # the same for black boxes in float32 (no interval proofs: points only)
BLACK_BOX_WINDOW = 2**20  # points a black box's float32 search evaluates just below its failure found
INTEGER_SCAN = 2**15  # integer thresholds up to this far from the start are verified point by point
INTEGER_RUN = 2**5  # ... in runs of this many n, each first tried on the exact values at its two ends
SPLIT_NARROW = 2**3  # an unproven range of a grid of at most 24 bits is split into this many parts (_children)
LEAF = 2**5  # ranges this small are evaluated point by point instead of halved
ROUND_POINTS = 2**16  # points evaluated per round of the verification
ROUND_CHUNKS = 2**15  # ranges certified per vectorized call
AHEAD = 2**8  # a certification call with fewer ranges also certifies their halves, quarters ... up to this many
BISECT_AHEAD = 16  # integer grids: rounds of the bisection evaluated ahead on the all-ok branch (_bisect; 16: to 2**62)
PROBE_AHEAD = 2**6  # a verification round probing fewer midpoints also evaluates the next rounds' (_probe)
PROBE = 2**12  # points spread above the verified part of a given-up key, looking for an earlier failure
AGREEMENT_SLACK = 2.0**-8  # a prediction whose slack is wider does not get an agreement mark
KINDS = ("first_inaccurate", "first_failure")


@dataclass(frozen=True)
class Threshold:
    """One row of ``stabilitylab thresholds --format json``.

    ``exact_inaccurate`` / ``exact_failure``: the value (or "never") was
    established for every representable input below it; when False it is the
    smallest failing value a search found: an upper bound (None: none found),
    ``verified_*`` is the value below which every input was verified ok, and
    ``window_*`` (black boxes) the value from which every input up to the bound
    was evaluated ok (JSON ``verified_from``; None: no such window was scanned).
    """

    experiment: str
    family: str
    method: str
    dtype: str
    parameter: str
    first_inaccurate: float | int | None
    first_failure: float | int | None
    failure: str | None
    inaccurate_status: str | None  # the status at first_inaccurate
    predicted: float | int | None
    predicted_for: str | None
    formula: str
    agrees: bool | None  # None: no prediction, or one that cannot discriminate (see AGREEMENT_SLACK)
    exact_inaccurate: bool
    exact_failure: bool
    search_range: tuple[float | int, float | int]
    verified_inaccurate: float | int | None = None  # every parameter below this is verified not to fail
    verified_failure: float | int | None = None
    # black boxes: every parameter from this up to the (bound) value was evaluated, and none failed
    # (a contiguous window scanned down from the failure found; None if there is none)
    window_inaccurate: float | int | None = None
    window_failure: float | int | None = None

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.family}/{self.method}/{self.dtype}"

    @property
    def exact(self) -> dict[str, bool]:
        return {"first_inaccurate": self.exact_inaccurate, "first_failure": self.exact_failure}


class Grid:
    """Ordered parameter points: integers [lo, hi], or format values in [lo, max] by bit pattern
    (the values of ``family.grid`` when it names a format, else of the format under test)."""

    def __init__(self, family: Family, fmt: Format):
        """``fmt``: the format whose values the parameter takes (a policy's storage format)."""
        self.integer = family.integer
        self.fmt = FORMATS[family.grid] if family.grid else fmt  # whose values the parameter runs over
        if self.integer:
            self.start, self.end = int(family.lower), family.upper or INTEGER_UPPER
        else:
            if self.fmt.native:
                self._bits = np.dtype(f"u{self.fmt.dtype.itemsize}")
            self.start = self._index(float(self.fmt.round(family.lower, np.float64)))
            self.end = self._index(self.fmt.max)

    def _index(self, value: float) -> int:
        if not self.fmt.native:  # (no ml_dtypes: its import costs more than most searches of these formats)
            return int(self.fmt.pattern([value])[0])
        return int(np.array([value]).astype(self.fmt.dtype).view(self._bits)[0])

    def params(self, indices) -> np.ndarray:
        if self.integer:
            return np.asarray(indices, dtype=np.int64)
        if not self.fmt.native:
            return self.fmt.value_of(indices)
        return np.asarray(indices, dtype=np.uint64).astype(self._bits).view(self.fmt.dtype).astype(np.float64)

    def value(self, index: int | None):
        if index is None:
            return None
        return int(index) if self.integer else float(self.params([index])[0])

    def range(self) -> tuple:
        return (self.value(self.start), self.value(self.end))


def _spread(a: int, b: int, k: int) -> list[int]:
    """Up to k integers strictly between a and b, evenly spread (Python ints: no overflow)."""
    if b - a <= 1:
        return []
    if b - a - 1 <= k:
        return list(range(a + 1, b))
    return sorted({a + (b - a) * i // (k + 1) for i in range(1, k + 1)} - {a, b})


def _bad(kind: str, status: np.ndarray, value: np.ndarray, fmt: Format) -> np.ndarray:
    if kind == "first_inaccurate":
        return np.isin(status, METHOD_FAILURES)
    lost = ~np.isfinite(value)
    if fmt.saturates:  # a +-max the rule calls lost (overflow / underflow) is a saturated infinity
        lost |= (np.abs(value) == fmt.max) & np.isin(status, ("overflow", "underflow"))
    return lost


def _hull(lo_cases, hi_cases):
    """A batch whose float fields are intervals spanning the two batches (entries are
    monotone in the parameter, so each entry's range over the span is between its ends)."""
    changed = {}
    for f in fields(lo_cases):
        a, b = getattr(lo_cases, f.name), getattr(hi_cases, f.name)
        if isinstance(a, np.ndarray) and a.dtype.kind == "f" and not np.array_equal(a, b):
            changed[f.name] = interval.Bounds(np.minimum(a, b), np.maximum(a, b))
    return replace(lo_cases, **changed)


class _Search:
    """The search of one family in one format, for every method and both kinds."""

    def __init__(self, experiment: Experiment, family: Family, fmt: Format, settings: Settings,
                 tolerance: float | None, k: int):
        self.experiment, self.family, self.fmt = experiment, family, fmt
        self.settings, self.tolerance, self.k = settings, tolerance, k
        self.tol = fmt.default_tolerance if tolerance is None else tolerance
        self.grid = Grid(family, fmt.storage_format)  # a policy's parameter takes its storage format's values
        self.keys = [(m, kind) for m in experiment.method_names for kind in KINDS]
        self.black_box = any(m.black_box for m in experiment.methods)
        self.seen: dict[int, dict[str, tuple[bool, bool]]] = {}  # index -> method -> bad per kind
        # (storage experiments: their status rule is not blame()'s, so every point goes through the engine)
        self.lean = not self.black_box and not any(m.observe or experiment.truth_of(m).storage
                                                   for m in experiment.methods)
        # no interval proofs (black boxes; precision policies, see interval.supported): verified by points
        # from the start within a budget, and by a window scanned down from the failure found
        self.points_only = self.black_box or fmt.is_policy
        self.window: dict[tuple[str, str], int] = {}  # black boxes: see _scan_down
        self.probed: dict[int, tuple[bool, ...]] = {}  # midpoints evaluated ahead: index -> bad per key (_probe)

    # ------------------------------------------------------------ point evaluation
    def _outcomes(self, indices, methods=None):
        cases = self.family.cases(self.grid.params(indices), self.settings)
        return evaluate(self.experiment, self.fmt, cases, methods=methods, tolerance=self.tolerance,
                        ftz=self.settings.ftz, fast_reference=True)

    def _flags(self, indices, methods=None, blocks=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per method, at each index: (first_inaccurate is bad, first_failure is bad).

        The same answers as the statuses :func:`engine.evaluate` gives (``_bad``), found with
        less work: the kernels run once, and each row's status is decided by
        :func:`outcome.blame` wherever every exact value near enough to a reference gets the
        same answer.  The reference is the
        fast one at each index, or first, with ``blocks`` (runs of consecutive indices: arrays
        of their first and last index, and the run of each index), the span of the fast
        references at the two ends of its run: the exact value is monotone between turning
        points, so it lies in that span.  The rows neither decides are then decided by ``blame``
        on mpmath's exact value (:func:`reference.exact`, error 0: the value the engine's
        :func:`outcome.classify` is given for them, so ``blame`` answers as it does), and only the
        rows left after that (a relative error within ``2**-48`` of the tolerance, a value at a
        rounding boundary, a saturated +-max) are evaluated by the engine: the same flags
        without running the kernels and the fast reference again for them (float64's searches
        met ~15 such rows a call, near its range's ends, in ~75 calls).
        """
        indices = np.asarray(indices, dtype=np.int64)
        cases = self.family.cases(self.grid.params(indices), self.settings)
        if not self.lean or len(cases.groups()) > 1:
            out = self._outcomes(indices.tolist(), methods)
            return {m: (_bad(KINDS[0], o.status, o.value, self.fmt), _bad(KINDS[1], o.status, o.value, self.fmt))
                    for m, o in out.items()}
        fmt, n = self.fmt, len(indices)
        loaded = Arith(fmt, n, ftz=self.settings.ftz)
        inputs = self.experiment.load(loaded, cases)
        chosen = [m for m in self.experiment.methods if methods is None or m.name in methods]
        flags, unsure, by_truth = {}, np.zeros(n, dtype=bool), {}
        for method in chosen:
            arith = loaded.fork() if len(chosen) > 1 else loaded  # (a fork copies every row's events)
            value = np.asarray(arith.deliver(method.kernel(arith, inputs)))
            events = (arith.first_step("overflow") != NEVER) | (arith.first_step("underflow") != NEVER)
            with np.errstate(all="ignore"):
                lost = ~np.isfinite(value.astype(np.float64))
                if fmt.saturates:  # (a +-max that replaced an infinity: lost too)
                    lost |= (np.abs(value) == fmt.max) & arith.saturated
                flags[method.name] = (np.zeros(n, dtype=bool), lost)
            truth = self.experiment.truth_of(method)
            by_truth.setdefault(id(truth), (truth, []))[1].append((method.name, value, events))
        for truth, runs in by_truth.values():
            todo = np.ones(n, dtype=bool)
            if blocks is not None:
                approx, error = self._span_reference(truth, *blocks)
                todo = self._blame(runs, approx, error, flags, todo)
            if todo.any():
                rows = np.flatnonzero(todo)
                part = inputs if len(rows) == n else inputs.take(rows)
                dtype, error = reference.fast_tier(truth, fmt, part)
                unsure |= self._blame(runs, _reference(truth, part, dtype), 2 * error, flags, todo)
        if unsure.any():  # mpmath's exact values first; the engine for the rows even they leave undecided
            rows = np.flatnonzero(unsure)
            part = inputs.take(rows)
            left = np.zeros(n, dtype=bool)
            for truth, runs in by_truth.values():  # (the mpmath rows of a truth with no fast reference: remembered)
                exact = _reference(truth, part) if truth.fast_reference is None else reference.exact(truth, part)
                left |= self._blame(runs, exact, 0.0, flags, unsure)
            rows = np.flatnonzero(left)
        if unsure.any() and len(rows):
            out = self._outcomes(indices[rows].tolist(), sorted(flags))
            for m, o in out.items():
                flags[m][0][rows] = _bad(KINDS[0], o.status, o.value, fmt)
        return flags

    def _blame(self, runs, approx, error, flags, todo: np.ndarray) -> np.ndarray:
        """Decide the rows in ``todo`` (approx holds one per such row) for every run; returns
        the rows some run left undecided."""
        rows = np.flatnonzero(todo)
        every = len(rows) == len(todo)
        left = np.zeros(len(todo), dtype=bool)
        for name, value, events in runs:
            v, ev = (value, events) if every else (value[rows], events[rows])
            bad, decided = blame(self.fmt, v, approx, error, ev, self.tolerance)
            flags[name][0][rows] = bad
            left[rows] |= ~decided
        return left

    def _span_reference(self, truth, run_lo: np.ndarray, run_hi: np.ndarray, run: np.ndarray):
        """Per row, an approximate exact value and its relative error bound, from the fast
        references at the ends of its run (error inf where that proves nothing: a turning
        point inside, a sign change, a zero or non-finite end)."""
        k = len(run_lo)
        params = self.grid.params(np.concatenate([run_lo, run_hi]))
        inputs = self.experiment.load(Arith(self.fmt, 2 * k, ftz=self.settings.ftz),
                                      self.family.cases(params, self.settings))
        x = _reference(truth, inputs)
        a, b = slice(0, k), slice(k, 2 * k)
        with np.errstate(all="ignore"):
            mid = (x.hi[a] + x.hi[b]) / 2
            half = np.abs(x.hi[a] - x.hi[b]) / 2 + np.abs(x.lo[a]) + np.abs(x.lo[b])
            error = half / np.abs(mid) + 3 * reference.FAST_ERROR + 2.0**-52
            usable = ((x.scale[a] == x.scale[b]) & (np.sign(x.hi[a]) == np.sign(x.hi[b])) & (x.hi[a] != 0)
                      & ~x.zero[a] & ~x.zero[b] & np.isfinite(error))
            p_lo, p_hi = params[a], params[b]
            for t in self.family.turning:
                usable &= ~((p_lo <= t * (1 + 2.0**-50)) & (p_hi >= t * (1 - 2.0**-50)))
        mid, error, scale = np.where(usable, mid, np.nan)[run], np.where(usable, error, np.inf)[run], x.scale[a][run]
        n = len(run)
        return reference.Exact(mid, np.zeros(n), np.where(usable[run], scale, 0), np.zeros(n, dtype=bool)), error

    def _evaluate(self, indices: list[int], methods: list[str]) -> None:
        """Flags of ``methods`` at each index (those not known yet)."""
        todo = sorted(i for i in set(indices) if any(m not in self.seen.get(i, ()) for m in methods))
        if not todo:
            return
        out = self._flags(todo, methods)
        for j, idx in enumerate(todo):
            self.seen.setdefault(idx, {}).update({m: (bool(f[0][j]), bool(f[1][j])) for m, f in out.items()})

    def bad(self, idx: int, method: str, kind: str) -> bool:
        return self.seen[idx][method][KINDS.index(kind)]

    def statuses(self, indices: list[int]) -> dict[int, dict[str, str]]:
        """The status of every method at each index (from the engine)."""
        todo = sorted(set(indices))
        if not todo:
            return {}
        out = self._outcomes(todo)
        return {idx: {m: str(o.status[j]) for m, o in out.items()} for j, idx in enumerate(todo)}

    # ------------------------------------------------------------ strategies
    def run(self) -> dict[tuple[str, str], tuple[int | None, bool, int]]:
        """Per key: (first bad index or None, exact, index below which every point is verified ok)."""
        g = self.grid
        if not g.integer and g.end - g.start < EXHAUSTIVE_POINTS:
            best = self._scan_points(np.arange(g.start, g.end + 1), {key: g.end + 1 for key in self.keys})
            verified = dict(best)
        elif g.integer:
            best, verified = self._integers()
        else:
            best = self._bisect()
            candidate = dict(best)
            missed = [key for key in self.keys if best[key] > g.end and not self.black_box]
            marks = self._landmarks() if missed else []
            if marks:  # no failure found: one there is the candidate (failures can lie in a narrow window)
                self._evaluate(marks, sorted({m for m, _ in missed}))
                for key in missed:
                    best[key] = min([i for i in marks if self.bad(i, *key)], default=best[key])
            if self.points_only:
                verified = self._verify_points(best)
            else:
                verified = self._verify(best)
            for key in self.keys:  # given up: look for an earlier failure above the verified part
                if verified[key] < best[key] and not g.integer:  # (spread up to the bisection's candidate)
                    top = max(best[key], candidate[key])
                    self._scan_points(np.array(_spread(verified[key] - 1, top, PROBE), dtype=np.int64), best)
            if self.points_only:
                self.window = self._scan_down(best, verified)
        return {key: (b if b <= g.end else None, verified[key] >= b, verified[key]) for key, b in best.items()}

    def _scan_points(self, indices: np.ndarray, best: dict, methods=None, runs=None) -> dict:
        """Evaluate every index (ascending); lower ``best`` to the first bad index per key.
        ``runs``: the indices are those of runs of consecutive indices (arrays of their first
        and last index, and the run of each index)."""
        for part in np.array_split(np.arange(len(indices)), max(1, len(indices) // 2**15)):
            if not len(part):
                continue
            chunk = indices[part]
            blocks = None
            if runs is not None:
                first, last = runs[2][part[0]], runs[2][part[-1]] + 1
                blocks = (runs[0][first:last], runs[1][first:last], runs[2][part] - first)
            out = self._flags(chunk, methods, blocks)
            for (m, kind) in self.keys:
                if m not in out:
                    continue
                bad = out[m][KINDS.index(kind)]
                if bad.any():
                    best[(m, kind)] = min(best[(m, kind)], int(chunk[int(np.argmax(bad))]))
        return best

    def _bisect(self, keys=None) -> dict[tuple[str, str], int]:
        """A failing index per key (or end + 1): the candidate the verification starts from.
        Each key's bisection depends on its own answers only.

        Integer grids (every point's flags are cheap next to a call's fixed cost: ``repeat`` runs ~124
        operations for n up to 2**62 whatever the rows): each round also evaluates the points of the
        next ``BISECT_AHEAD`` rounds on the branch where every point of the round is ok, the path of a
        key that never fails (likelihood's sum_log, most of accumulation's), so such keys need one call
        (16 rounds of 17 parts reach past 2**62; with 6, likelihood's searches made 11 calls of ~124
        operations each, 2 with 16; accumulation's keys fail, so its searches make as many calls as before,
        at about the same CPU: each extra point is one more target of its running sums).  A point's flags
        are a pure function of the point and only the round's own points move a bracket: the same answers
        (not where the engine decides every point: an observer would see points nobody asked for)."""
        g = self.grid
        brackets = {key: (g.start - 1, g.end + 1) for key in (self.keys if keys is None else keys)}
        while True:
            open_keys = [key for key, (a, b) in brackets.items() if b - a > 1]
            if not open_keys:
                return {key: b for key, (a, b) in brackets.items()}
            points = {key: _spread(*brackets[key], self.k) for key in open_keys}
            wanted = [i for pts in points.values() for i in pts]
            if self.lean and g.integer:  # look ahead on the branch where every point is ok (see below)
                for key in open_keys:
                    b = brackets[key][1]
                    ahead = points[key]
                    for _ in range(BISECT_AHEAD):
                        if not ahead:
                            break
                        ahead = _spread(ahead[-1], b, self.k)
                        wanted += ahead
            self._evaluate(wanted, sorted({m for m, _ in open_keys}))
            for key, pts in points.items():
                a, b = brackets[key]
                for i in pts:
                    if self.bad(i, *key):
                        b = i
                        break
                    a = i
                brackets[key] = (a, b)

    def _landmarks(self) -> list[int]:
        """Float grids: the format values at and next to the parameters where exp(+-parameter)
        crosses the format's range limits (ln max, -ln tiny, -ln smallest_subnormal and
        -ln(smallest_subnormal / 2)).  Failures that start there and stop again further up (the
        log1p form under flush-to-zero fails from -ln tiny to -ln(smallest_subnormal / 2) only,
        a window of 2**-11 of float64's grid) fall between the bisection's evenly spread points."""
        g, grid_fmt = self.grid, self.grid.fmt
        if g.integer:
            return []
        values = []
        for fmt in dict.fromkeys((self.fmt.storage_format, self.fmt.compute_format, self.fmt.accumulate_format,
                                  self.fmt.output_format)):  # (a policy: where each of its formats' exp crosses)
            tiny_sub = math.log(fmt.smallest_subnormal)
            values += [fmt.ln_max, -math.log(fmt.tiny), -tiny_sub, -(tiny_sub - math.log(2))]
        low = g.value(g.start)
        out = set()
        for v in values:
            if not low <= v <= grid_fmt.max:
                continue
            with np.errstate(all="ignore"):
                at = g._index(float(grid_fmt.round(np.array([v])).astype(np.float64)[0]))
            out.update(i for i in range(at - 2, at + 3) if g.start <= i <= g.end)
        return sorted(out)

    def _integers(self) -> tuple[dict, dict]:
        """Integer grids: per key, (first failure or bisection candidate, index below which
        every n is verified).

        The search bisects every key, then evaluates every n from the start up to the
        largest candidate, at most ``INTEGER_SCAN`` of them.  The same answers, cheaper:
        those n are evaluated first, and a key that fails among them ends at its first
        failure whatever its bisection would have found, so only the other keys are
        bisected (and their candidates, at or beyond the scan, are kept as they are).
        The scan goes in runs of ``INTEGER_RUN`` consecutive n, each first decided from the
        exact values at its two ends (:meth:`_flags`: the exact value is monotone between
        turning points), where the format holds every input of the run exactly (:meth:`_held`),
        which spares the experiments whose exact value costs mpmath most of it
        (softmax_ce_variants); the answers are the same.
        """
        g = self.grid
        stop = min(g.end + 1, g.start + INTEGER_SCAN)
        indices = np.arange(g.start, stop)
        best = {key: g.end + 1 for key in self.keys}
        # runs of consecutive n whose inputs the format holds exactly (see _flags); the other n alone.
        # (Not where the engine decides every point, as for black boxes and observed methods: there
        # runs would only change the order in which an observer sees the points.)
        whole = len(indices) // INTEGER_RUN * INTEGER_RUN if self.lean else 0  # (a last, shorter part: alone)
        held = self._held(indices[:whole]).reshape(-1, INTEGER_RUN).all(axis=1) if whole else np.zeros(0, bool)
        firsts = indices[:whole:INTEGER_RUN][held]
        if len(firsts):
            runs = (firsts, firsts + INTEGER_RUN - 1, np.repeat(np.arange(len(firsts)), INTEGER_RUN))
            self._scan_points((firsts[:, None] + np.arange(INTEGER_RUN)).ravel(), best, runs=runs)
        alone = np.concatenate([np.repeat(~held, INTEGER_RUN), np.ones(len(indices) - whole, dtype=bool)])
        if alone.any():
            self._scan_points(indices[alone], best)
        return self._scan_after(best, stop)

    def _held(self, indices: np.ndarray) -> np.ndarray:
        """Per index: every float input of its case that moves with n is a value of the storage format (not
        flushed under flush-to-zero), so the loaded case is the family's own and its exact value is monotone
        between turning points (the family's contract; a rounded input breaks it: float8_e5m2 holds z_loss's
        [n, n - 2, n - 5] as [36, 36, 32] at n = 37, whose exact loss is not between its neighbours')."""
        cases, fmt = self.family.cases(self.grid.params(indices), self.settings), self.fmt.storage_format
        held = np.full(len(indices), is_dataclass(cases))
        for f in fields(cases) if held.any() else ():
            x = getattr(cases, f.name)
            if not (isinstance(x, np.ndarray) and x.dtype.kind == "f" and len(x) == len(indices)):
                continue
            x = x.reshape(len(indices), -1).astype(np.float64)
            if np.array_equal(x, np.broadcast_to(x[:1], x.shape), equal_nan=True):  # (an option, the same for
                continue  # every n (NaN: none): not an input that moves with n)
            with np.errstate(all="ignore"):
                rounded = fmt.round(x, np.float64)
                same = (rounded == x) | (np.isnan(rounded) & np.isnan(x))
                if self.settings.ftz:
                    same &= (x == 0) | (np.abs(x) >= fmt.tiny)
            held &= same.all(axis=1)
        return held

    def _scan_after(self, best: dict, stop: int) -> tuple[dict, dict]:
        """The end of :meth:`_integers`: the keys that did not fail in the scan are bisected (not where the
        scan reached the grid's end: every n was evaluated, none failed, and a point's flags are the same
        however it is evaluated, so the bisection would find nothing; those keys stay at end + 1.  Except
        where the engine decides every point: an observer, such as an audit's recorder, is shown the
        bisection's points as before)."""
        left = [key for key in self.keys if best[key] >= stop]
        if left and (stop <= self.grid.end or not self.lean):
            best.update(self._bisect(left))
        return best, {key: b if b <= stop else stop for key, b in best.items()}

    def _verify_points(self, best: dict) -> dict[tuple[str, str], int]:
        """Black boxes: evaluate every index from the start up to the furthest candidate that
        is within the point budget; per key, the index below which every point is verified."""
        g = self.grid
        allowance = BLACK_BOX_POINT_BUDGET if self.grid.fmt.precision <= 24 else POINT_BUDGET_WIDE
        within = [b for b in best.values() if b - g.start <= allowance]
        stop = max(within, default=g.start)
        if stop > g.start:
            self._scan_points(np.arange(g.start, stop), best)
        return {key: b if b <= stop else stop for key, b in best.items()}

    def _scan_down(self, best: dict, verified: dict) -> dict[tuple[str, str], int]:
        """Black boxes whose failure found lies beyond the point budget from the start: evaluate
        every index in a contiguous window just below it, block by block downwards, within the
        budget (``BLACK_BOX_WINDOW``); a failure found there lowers it.  Per such key, the low
        end of the window: every index from there up to the key's failure was evaluated ok.
        (A black box's first failures need not lie near the start: scipy's float32
        log_softmax is first inaccurate at d = 8.318987846374512, a billion float32 values up,
        and sporadically so: the bisection's candidate was 9.16.)"""
        allowance = BLACK_BOX_WINDOW if self.grid.fmt.precision <= 24 else POINT_BUDGET_WIDE
        window = {}
        # an observer (the audit's recorder) is told which points are a dense window, not spread points
        observers = [m.observe for m in self.experiment.methods if hasattr(m.observe, "windowed")]
        for observer in observers:
            observer.windowed = True
        try:
            self._scan_windows(best, verified, allowance, window)
        finally:
            for observer in observers:
                observer.windowed = False
        return window

    def _scan_windows(self, best: dict, verified: dict, allowance: int, window: dict) -> None:
        g = self.grid
        for method in self.experiment.method_names:
            spent = 0
            for kind in KINDS:
                key = (method, kind)
                if not verified[key] < best[key] <= g.end:
                    continue
                low = best[key]
                while spent < allowance and low > verified[key]:
                    block = min(ROUND_POINTS, allowance - spent, low - verified[key])
                    self._scan_points(np.arange(low - block, low, dtype=np.int64), best, [method])
                    spent += block
                    low -= block  # (a failure found in the block is its first: [low, best) stays ok)
                window[key] = low

    def _verify(self, best: dict) -> dict[tuple[str, str], int]:
        """Prove or evaluate every index below each key's candidate (see the module docstring).

        The pending ranges are columns (start, end, bitmask of keys still to verify),
        kept in ascending order and worked on from the lowest, so that an early failure
        prunes everything above it.  A key that would need more than its budget of
        points or ranges is given up (its result stays a bound).  Returns, per key, the
        index below which every point is verified ok.
        """
        g, keys = self.grid, self.keys
        bit = {key: 1 << j for j, key in enumerate(keys)}
        spent = {key: 0 for key in keys}
        narrow = self.grid.fmt.precision <= 24
        allowance = POINT_BUDGET if narrow else POINT_BUDGET_WIDE
        range_allowance = RANGE_BUDGET if narrow else RANGE_BUDGET_WIDE
        tried = {key: 0 for key in keys}
        exact = {key: True for key in keys}
        can_certify = interval.supported(self.fmt)
        lo = np.array([g.start], dtype=np.int64)
        hi = np.array([max(best.values()) - 1], dtype=np.int64)
        mask = np.array([(1 << len(keys)) - 1], dtype=np.int64)
        lowest: dict[tuple[str, str], int] = {}  # given-up keys: their lowest unverified index
        window = 2**12
        ahead: dict[tuple[int, int], int] = {}  # ranges certified ahead: keys proven (_certify_ahead)
        while len(lo):
            # Each round works on the lowest entries only (a window, widened until it holds the
            # whole round): entries further up are pruned, clipped and dropped when they reach
            # the window, with the first failures known then, which gives the same masks as
            # doing it to every entry in every round (first failures only move down).
            while True:
                w = min(window, len(lo))
                h_lo, h_hi, h_mask = lo[:w], hi[:w], mask[:w].copy()
                for key in keys:  # prune: nothing at or above a key's current first failure
                    h_mask[h_lo >= best[key]] &= ~bit[key]
                    if not exact[key]:
                        if key not in lowest:
                            pending = h_lo[(h_mask & bit[key]) != 0]
                            if not len(pending):
                                t_lo, t_mask = lo[w:], mask[w:]
                                pending = t_lo[((t_mask & bit[key]) != 0) & (t_lo < best[key])]
                            lowest[key] = int(pending.min()) if len(pending) else best[key]
                        h_mask &= ~bit[key]
                keep = h_mask != 0
                h_lo, h_hi, h_mask = h_lo[keep], h_hi[keep], h_mask[keep]
                top = np.full(len(h_lo), g.start - 1, dtype=np.int64)
                for key in keys:
                    top = np.where(h_mask & bit[key], np.maximum(top, best[key] - 1), top)
                h_hi = np.minimum(h_hi, top)
                size = h_hi - h_lo + 1
                leaf = (size <= LEAF) | (not can_certify)
                # this round: the lowest entries, up to ROUND_CHUNKS ranges and ROUND_POINTS leaf points
                take = np.cumsum(~leaf) <= ROUND_CHUNKS
                if len(h_lo):
                    take &= np.cumsum(np.where(leaf, size, 0)) <= max(ROUND_POINTS, int(size[0]) if leaf[0] else 0)
                if w == len(lo) or (len(h_lo) and not take.all()):
                    break
                window *= 2
            lo, hi, mask = (np.concatenate([h, t[w:]]) for h, t in ((h_lo, lo), (h_hi, hi), (h_mask, mask)))
            if not len(h_lo):  # everything was pruned
                continue
            n = int(np.argmin(take)) if not take.all() else len(h_lo)
            n = max(n, 1)
            window = max(2**12, 2 * n)  # about the size of the next round
            cur_lo, cur_hi, cur_mask, cur_leaf = h_lo[:n], h_hi[:n], h_mask[:n], leaf[:n]
            rest = (lo[n:], hi[n:], mask[n:])
            if cur_leaf.any():
                l_lo, l_hi, l_mask = cur_lo[cur_leaf], cur_hi[cur_leaf], cur_mask[cur_leaf]
                for key in keys:
                    spent[key] += int((l_hi - l_lo + 1)[(l_mask & bit[key]) != 0].sum())
                    if spent[key] > allowance:
                        exact[key] = False
                any_bit = int(np.bitwise_or.reduce(l_mask))
                wanted = [key for key in keys if exact[key] and any_bit & bit[key]]
                if wanted:
                    sizes = l_hi - l_lo + 1
                    run = np.repeat(np.arange(len(l_lo)), sizes)
                    indices = l_lo[run] + (np.arange(len(run)) - (np.cumsum(sizes) - sizes)[run])
                    self._scan_points(indices, best, sorted({m for m, _ in wanted}), (l_lo, l_hi, run))
            new = [np.empty(0, np.int64)] * 3
            ranges = ~cur_leaf
            if ranges.any():
                r_lo, r_hi, r_mask = cur_lo[ranges], cur_hi[ranges], cur_mask[ranges]
                for key in keys:
                    tried[key] += int(np.count_nonzero(r_mask & bit[key]))
                    if tried[key] > range_allowance:
                        exact[key] = False
                pending = {key: (r_mask & bit[key]) != 0 for key in keys}
                proven = self._certify_ahead(r_lo, r_hi, {key: rows for key, rows in pending.items() if rows.any()},
                                             ahead)
                for key in keys:
                    if key in proven:
                        r_mask = np.where(proven[key], r_mask & ~bit[key], r_mask)
                left = r_mask != 0
                r_lo, r_hi, r_mask = r_lo[left], r_hi[left], r_mask[left]
                mid = r_lo + (r_hi - r_lo) // 2  # no int64 overflow near the top of float64
                if len(mid):  # probe each unproven range at its midpoint: a failure there prunes
                    # every range above it now, instead of after they have all been halved down
                    # to leaves (a candidate far above the first failure spent the whole budget)
                    # (every method: a given-up key's bound is lowered too)
                    self._probe(np.unique(mid), best, r_lo, r_hi)
                c_lo, c_hi, parent = self._children(r_lo, r_hi)
                new = [c_lo, c_hi, r_mask[parent]]
            # still ascending: the ranges are disjoint, and the halves of this round's lowest
            # entries lie below every entry left for later rounds
            lo = np.concatenate([new[0], rest[0]])
            hi = np.concatenate([new[1], rest[1]])
            mask = np.concatenate([new[2], rest[2]])
        return {key: best[key] if exact[key] else lowest.get(key, g.start) for key in keys}

    def _probe(self, mid: np.ndarray, best: dict, r_lo: np.ndarray, r_hi: np.ndarray) -> None:
        """``_scan_points(mid, best)`` for every method (the midpoints of a round's unproven ranges
        ``[r_lo, r_hi]``), with fewer calls: a round with fewer than ``PROBE_AHEAD`` midpoints also
        evaluates the midpoints the next rounds would probe if those ranges' halves, quarters ... stay
        unproven (up to ``PROBE_AHEAD`` points in all), and keeps their flags in ``probed``; a later round
        takes a midpoint's flags from there.  A point's flags are a pure function of the point, and only the
        midpoints a round probes lower ``best`` (the minimum of their first failures, in any grouping), so
        the answers are the ones :meth:`_scan_points` gives; a float64 search whose frontier is one or two
        ranges wide for dozens of rounds pays one call per few rounds instead of one per round.  Not where
        the engine decides every point (an observer would see points nobody asked for)."""
        if not self.lean:
            self._scan_points(mid, best)
            return
        if self.probed:
            hit = np.fromiter((i in self.probed for i in mid.tolist()), dtype=bool, count=len(mid))
            for i in mid[hit].tolist():
                for key, bad in zip(self.keys, self.probed.pop(i)):
                    if bad and i < best[key]:
                        best[key] = i
            mid = mid[~hit]
        extra = self._ahead_midpoints(r_lo, r_hi) if 0 < len(mid) < PROBE_AHEAD else []
        if not extra:
            if len(mid):
                self._scan_points(mid, best)
            return
        extra = np.array(extra, dtype=np.int64)
        out = self._flags(np.concatenate([mid, extra]))
        k = len(mid)
        bad = np.stack([out[m][KINDS.index(kind)] for m, kind in self.keys])  # (keys, points)
        for j, key in enumerate(self.keys):
            row = bad[j, :k]
            if row.any():
                best[key] = min(best[key], int(mid[int(np.argmax(row))]))
        for i, flags in zip(extra.tolist(), bad[:, k:].T.tolist()):
            self.probed[i] = tuple(flags)

    def _ahead_midpoints(self, r_lo: np.ndarray, r_hi: np.ndarray) -> list[int]:
        """The midpoints of the halves, quarters ... of the ranges [r_lo, r_hi] (those larger than ``LEAF``,
        which a round probes), level by level, up to ``PROBE_AHEAD`` in all, not probed yet."""
        out: list[int] = []
        a, b = r_lo, r_hi
        while True:
            a, b, _ = self._children(a, b)
            keep = b - a + 1 > LEAF
            a, b = a[keep], b[keep]
            mids = [i for i in (a + (b - a) // 2).tolist() if i not in self.probed]
            if not len(a) or len(out) + len(mids) > PROBE_AHEAD:
                return out
            out += mids

    def _children(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The parts an unproven range [lo, hi] is split into, in ascending order, and each part's range
        (its index in ``lo``): halves ([lo, mid], [mid + 1, hi], mid = lo + (hi - lo) // 2), or, for grids
        of at most 24 bits, ``SPLIT_NARROW`` nearly equal parts.  How a range is split changes which ranges
        are proven and which points evaluated, never a point's status, so a verification that reaches its
        end (every float32 threshold of a float grid does) finds the same first failure either way; fewer,
        wider levels mean fewer rounds, each of which pays its calls' fixed cost.  float64 stays with halves:
        its searches stop at their budgets, and the bounds they report depend on the order."""
        if self.grid.fmt.precision > 24:
            mid = lo + (hi - lo) // 2  # (no int64 overflow near the top of float64)
            return (np.stack([lo, mid + 1], axis=1).ravel(), np.stack([mid, hi], axis=1).ravel(),
                    np.repeat(np.arange(len(lo)), 2))
        size = hi - lo + 1  # (indices below 2**32: no overflow below)
        parts = np.clip(size // (2 * LEAF), 2, SPLIT_NARROW)[:, None]  # (near the leaves: halves, as before)
        j = np.arange(SPLIT_NARROW + 1)
        cuts = lo[:, None] + (size[:, None] * np.minimum(j, parts)) // parts
        c_lo, c_hi = cuts[:, :-1], cuts[:, 1:] - 1
        keep = (j[:-1] < parts) & (c_hi >= c_lo)
        return c_lo[keep], c_hi[keep], np.broadcast_to(np.arange(len(lo))[:, None], c_lo.shape)[keep]

    # ------------------------------------------------------------ interval proof
    def _certify_ahead(self, lo: np.ndarray, hi: np.ndarray, pending: dict, ahead: dict) -> dict:
        """:meth:`_certify`, with the answers of ranges certified ahead taken from ``ahead``.

        A range's answer for a key depends on the range and the key only, and a range is
        asked for no key its parent was not asked for; so when a round has few ranges to
        certify (a narrow search, which pays a call's fixed cost per level), their halves,
        quarters ... down to ``LEAF`` are certified in the same call, for their parent's
        keys, and kept in ``ahead`` (a range clipped in the meantime is just certified anew).
        """
        bit = {key: j for j, key in enumerate(self.keys)}  # (``ahead``: per range, a bitmask of the keys proven)
        found = np.array([ahead.pop(span, -1) for span in zip(lo.tolist(), hi.tolist())], dtype=np.int64)
        known = found >= 0
        out = {key: known & rows & (((found >> bit[key]) & 1) == 1) for key, rows in pending.items()}
        if known.all():
            return out
        todo = np.flatnonzero(~known)
        parts = [(lo[todo], hi[todo], {key: rows[todo] for key, rows in pending.items()})]
        count = len(todo)
        while count < AHEAD:
            a, b, asked = parts[-1]
            c_lo, c_hi, parent = self._children(a, b)
            keep = c_hi - c_lo + 1 > LEAF  # the halves a round would certify
            if not keep.any() or count + int(keep.sum()) > AHEAD:
                break
            halves = {key: rows[parent][keep] for key, rows in asked.items()}
            parts.append((c_lo[keep], c_hi[keep], halves))
            count += int(keep.sum())
        all_lo, all_hi = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        asked = {key: np.concatenate([p[2][key] for p in parts]) for key in pending}
        proven = self._certify(all_lo, all_hi, {key: rows for key, rows in asked.items() if rows.any()})
        for key, rows in proven.items():
            out[key][todo] = rows[:len(todo)]
        later = slice(len(todo), len(all_lo))
        mask = np.zeros(len(all_lo) - len(todo), dtype=np.int64)
        for key, rows in proven.items():
            mask |= (rows[later] & asked[key][later]).astype(np.int64) << bit[key]
        ahead.update(zip(zip(all_lo[later].tolist(), all_hi[later].tolist()), mask.tolist()))
        return out

    def _certify(self, lo: np.ndarray, hi: np.ndarray, pending: dict[tuple[str, str], np.ndarray]) -> dict:
        """Per key, per range [lo, hi] of indices: True if no index of the range can be bad
        (proven on intervals).  ``pending``: per key, the ranges it is asked for; a key is
        proven on those only (elsewhere its answer is False), and a method runs on the
        ranges some key of its asks for (every step is per range: the answers are the same)."""
        g, fmt = self.grid, self.fmt
        n = len(lo)
        # each method runs on the ranges some key of its asks for; methods asked on the same
        # ranges share one IntervalArith (their common steps run once), group after group
        groups: dict[bytes, list] = {}
        for method in self.experiment.methods:
            asked = np.zeros(n, dtype=bool)
            for kind in KINDS:
                if (method.name, kind) in pending:
                    asked |= pending[(method.name, kind)]
            if asked.any():
                groups.setdefault(asked.tobytes(), [asked, []])[1].append(method)
        out, enclosures = {}, {}
        for asked, methods in groups.values():
            rows = np.flatnonzero(asked)
            lo_p, hi_p = g.params(lo[rows]), g.params(hi[rows])
            ia = interval.IntervalArith(fmt, len(rows), ftz=self.settings.ftz)
            inputs = self.experiment.load(ia, _hull(self.family.cases(lo_p, self.settings),
                                                    self.family.cases(hi_p, self.settings)))
            for method in methods:
                self._certify_method(method, ia, inputs, rows, lo_p, hi_p, lo, hi, pending, enclosures, out)
            del ia, inputs  # (the shared steps it holds)
        return out

    def _certify_method(self, method, ia, inputs, rows, lo_p, hi_p, lo, hi, pending, enclosures, out) -> None:
        """One method of :meth:`_certify`, on its ranges ``rows`` (parameters ``lo_p``..``hi_p``):
        its answers go to ``out``; ``enclosures`` holds the exact values' bounds per truth."""
        g, fmt, n = self.grid, self.fmt, len(lo)
        v = interval.Bounds.of(method.kernel(ia, inputs))
        if (method.name, "first_failure") in pending:
            out[(method.name, "first_failure")] = proven = np.zeros(n, dtype=bool)
            proven[rows] = np.isfinite(v.lo) & np.isfinite(v.hi)
        inaccurate = pending.get((method.name, "first_inaccurate"))
        if inaccurate is None:
            return
        truth = self.experiment.truth_of(method)
        if id(truth) not in enclosures:  # the exact value's bounds, on every range a method of it asks for
            wanted = np.zeros(n, dtype=bool)
            for m in self.experiment.methods:
                if self.experiment.truth_of(m) is truth and (m.name, "first_inaccurate") in pending:
                    wanted |= pending[(m.name, "first_inaccurate")]
            at = np.flatnonzero(wanted)
            ends = [self.experiment.load(Arith(fmt, len(at), ftz=self.settings.ftz),
                                         self.family.cases(g.params(x[at]), self.settings)) for x in (lo, hi)]
            position = np.full(n, -1)
            position[at] = np.arange(len(at))
            values = [_end_values(truth, inputs) for inputs in ends]
            enclosures[id(truth)] = (position, *_exact_enclosure(truth, ends, values), values)
        position, r_lo, r_hi, values = enclosures[id(truth)]
        here = inaccurate[rows]  # the method's ranges that ask for this key
        sub, at = rows[here], position[rows[here]]
        v, r_lo, r_hi, sub_lo, sub_hi = v[here], r_lo[at], r_hi[at], lo_p[here], hi_p[here]
        ok = _within(v, r_lo, r_hi, self.tol) | _rounds_to(fmt, v, r_lo, r_hi)
        if method.exact_formula:  # |computed - exact| <= err at every point of the range
            with np.errstate(all="ignore"):
                ok |= v.err < min(self.tol, 0.5) * np.minimum(np.abs(r_lo), np.abs(r_hi)) * (1 - 2.0**-30)
        elif self._bias_bounded(method):  # |computed - exact| <= err + the formula's bias at the worse end
            ok |= self._bias_proven(method, v, sub_lo, sub_hi, r_lo, r_hi, [x[at] for x in values])
        if staircase.applies(self.experiment.name, self.family.name, method.name, fmt, self.settings.ftz):
            ok |= staircase.proven(sub_lo, sub_hi)  # every point correctly rounded (its docstring)
        for t in self.family.turning:
            ok &= ~((sub_lo <= t * (1 + 2.0**-50)) & (sub_hi >= t * (1 - 2.0**-50)))
        if truth.storage:  # a stored value fails where x is beyond the range or lost to 0: prove neither can be
            ok &= _inside(fmt, v, r_lo, r_hi)
        out[(method.name, "first_inaccurate")] = proven = np.zeros(n, dtype=bool)
        proven[sub] = ok

    def _bias_bounded(self, method) -> bool:
        """Whether :meth:`_bias_proven` applies: the family names the method's bias monotone, in a format of
        at most 24 bits (float32: every threshold of its float grids is exact however it is verified; float64's
        sampled bounds depend on which ranges are proven, so they stay as they were)."""
        return method.name in self.family.monotone_bias and self.fmt.precision <= 24

    def _bias_proven(self, method, v: interval.Bounds, d_lo, d_hi, r_lo, r_hi, ends) -> np.ndarray:
        """Per range [d_lo, d_hi]: every point's relative error is within the tolerance, for a method whose
        formula F is not the exact value L but whose bias F - L is monotone in the parameter
        (``Family.monotone_bias``).

        At every point d of the range, |c(d) - L(d)| <= |c(d) - F(d)| + |F(d) - L(d)| <= err + B, where err is
        the interval kernel's running error bound over the range (``v.err``, which keeps the correlation
        between the computed value and its formula) and B = max(|b(d_lo)|, |b(d_hi)|), b = F - L: a monotone
        function's magnitude is largest at an end.  F at an end is the interval kernel's exact-formula
        enclosure on the one-value range (``xlo``..``xhi``, moved outwards in the wide type), L the fast
        reference there (``ends``: its values at the two ends, widened by its error as
        :func:`_exact_enclosure` widens them).  With L of one sign over the range and |L| >= m = min(|r_lo|,
        |r_hi|) (the exact value is monotone between turning points, which the caller excludes), the
        relative error is at most (err + B) / m; the range is proven where that is below the tolerance (and
        below 1/2), the computed enclosure finite.  This keeps the correlation the enclosures lose: near
        epsilon_clip's threshold the clipped value and the loss both move with d by far more than their
        difference."""
        with np.errstate(all="ignore"):
            params = np.concatenate([d_lo, d_hi])
            ia = interval.IntervalArith(self.fmt, len(params), ftz=self.settings.ftz)
            f = interval.Bounds.of(method.kernel(ia, self.experiment.load(ia, self.family.cases(params,
                                                                                               self.settings))))
            k = len(d_lo)
            slack, tiny = 4 * reference.FAST_ERROR, np.finfo(np.longdouble).smallest_subnormal
            bias = []
            for part, value in zip((slice(0, k), slice(k, 2 * k)), ends):
                l_lo = value - np.abs(value) * slack - tiny
                l_hi = value + np.abs(value) * slack + tiny
                x_lo, x_hi = f.xlo[part].astype(np.longdouble), f.xhi[part].astype(np.longdouble)
                bias.append(np.maximum(np.abs(x_hi - l_lo), np.abs(x_lo - l_hi)))
            total = (v.err.astype(np.longdouble) + np.maximum(bias[0], bias[1])) * (1 + 2.0**-40)
            floor = np.minimum(np.abs(r_lo), np.abs(r_hi))
            one_sign = (r_lo > 0) | (r_hi < 0)
            finite = np.isfinite(v.lo) & np.isfinite(v.hi) & np.isfinite(total)
            return one_sign & finite & (total < min(self.tol, 0.5) * floor * (1 - 2.0**-30))


def _within(v: interval.Bounds, r_lo, r_hi, tol: float) -> np.ndarray:
    """Every value in v is within relative ``tol`` of every exact value in [r_lo, r_hi]
    (so each point's status is ok, whatever it computes)."""
    lo, hi = v.lo.astype(np.longdouble), v.hi.astype(np.longdouble)
    with np.errstate(all="ignore"):
        finite = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(r_lo) & np.isfinite(r_hi)
        one_sign = ((lo > 0) & (r_lo > 0)) | ((hi < 0) & (r_hi < 0))
        spread = np.maximum(hi - r_lo, r_hi - lo) * (1 + 2.0**-40)
        return finite & one_sign & (spread <= tol * np.minimum(np.abs(r_lo), np.abs(r_hi)))


def _inside(fmt: Format, v: interval.Bounds, r_lo, r_hi) -> np.ndarray:
    """Every exact value is non-zero, of one sign and below the rounding boundary max + ulp(max)/2 in
    magnitude, and every computed value is finite and non-zero: the storage rule's overflow and
    underflow (:func:`outcome.classify`) cannot apply."""
    boundary = np.longdouble(fmt.max) + np.longdouble(float(fmt.ulp(fmt.max))) / 2
    with np.errstate(all="ignore"):
        exact = ((r_lo > 0) | (r_hi < 0)) & (np.maximum(np.abs(r_lo), np.abs(r_hi)) < boundary)
        computed = np.isfinite(v.lo) & np.isfinite(v.hi) & ((v.lo > 0) | (v.hi < 0))
    return exact & computed


def _rounds_to(fmt: Format, v: interval.Bounds, r_lo, r_hi) -> np.ndarray:
    """v is one value c over the range, and every exact value rounds to c (strictly inside
    c's rounding interval): each point's result is the correctly rounded one (ok or range)."""
    c = v.lo
    one = (v.lo == v.hi) & np.isfinite(c)
    below, above = _neighbours(fmt, np.where(one, c, 0.0))
    c_ld = c.astype(np.longdouble)
    with np.errstate(all="ignore"):
        low_mid = (below.astype(np.longdouble) + c_ld) / 2
        high_mid = (above.astype(np.longdouble) + c_ld) / 2
        return one & np.isfinite(low_mid) & np.isfinite(high_mid) & (r_lo > low_mid) & (r_hi < high_mid)


def _neighbours(fmt: Format, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The format values just below and just above each format value c (0's are +-smallest subnormal)."""
    bits = np.dtype(f"u{fmt.dtype.itemsize}")
    with np.errstate(all="ignore"):
        b = fmt.round(c).view(bits).astype(np.int64)
    positive = c > 0
    up = np.where(positive, b + 1, b - 1)
    down = np.where(positive, b - 1, b + 1)
    as_value = lambda x: np.asarray(x).astype(bits).view(fmt.dtype).astype(np.float64)  # noqa: E731
    with np.errstate(all="ignore"):
        above, below = as_value(up), as_value(down)
    zero = c == 0
    s = fmt.smallest_subnormal
    return np.where(zero, -s, below), np.where(zero, s, above)


def _end_values(truth, inputs) -> np.ndarray:
    """The fast reference's value (longdouble; NaN where not finite) of each row of ``inputs``."""
    ex = _reference(truth, inputs)
    with np.errstate(all="ignore"):
        v = np.ldexp(ex.hi.astype(np.longdouble) + ex.lo.astype(np.longdouble), ex.scale)
    return np.where(np.isfinite(v), v, np.nan)


def _exact_enclosure(truth, ends, values=None) -> tuple[np.ndarray, np.ndarray]:
    """Bounds (longdouble) of the exact value over each range, from its two ends (the exact
    value is monotone between turning points), widened by the fast reference's error.
    ``values``: :func:`_end_values` of the two ends, if computed already."""
    vals = [_end_values(truth, inputs) for inputs in ends] if values is None else values
    lo, hi = np.minimum(vals[0], vals[1]), np.maximum(vals[0], vals[1])
    slack = 4 * reference.FAST_ERROR
    tiny = np.finfo(np.longdouble).smallest_subnormal  # (a value below longdouble's range is held as 0)
    with np.errstate(all="ignore"):
        return lo - np.abs(lo) * slack - tiny, hi + np.abs(hi) * slack + tiny


EXACT_MEMO_VALUES = 2**18  # input values of the mpmath rows remembered in a process (then it starts again)
EXACT_MEMO_ROW = 2**12  # ... each of at most this many values (linear_ce's vocabularies of 2**18 classes are not)
_EXACT_ROWS: dict[tuple, tuple] = {}  # (reference function, row) -> (hi, lo, scale, zero) of its Exact
_exact_values = 0


def _width(row: tuple) -> int:
    """The number of input values in a row of :attr:`Truth.exact_rows` (tuples of floats, or of such tuples)."""
    return sum(sum(len(b) if isinstance(b, tuple) else 1 for b in a) if isinstance(a, tuple) else 1 for a in row)


def _reference(truth, inputs, dtype=None) -> reference.Exact:
    """:func:`reference.fast` of ``truth`` on ``inputs`` (in ``dtype``, as there).

    A truth with no vectorized reference (``fast_reference`` None: softmax_ce_variants, linear_ce) takes
    mpmath's value of every row (:func:`reference.exact`, ~100 us a row): here each distinct row of at most
    ``EXACT_MEMO_ROW`` input values costs once per process, whichever search asks (the searches of one family
    in several formats ask for many of the same rows: integer logits are values of every format).  A row's
    value is a pure function of the reference function and the row's exact inputs (the tuple
    :attr:`Truth.exact_rows` gives, which is what :func:`reference.exact` evaluates), so a remembered one
    cannot go stale; rows of at most ``EXACT_MEMO_VALUES`` input values in all are held."""
    global _exact_values
    if truth.fast_reference is not None:
        return reference.fast(truth, inputs) if dtype is None else reference.fast(truth, inputs, dtype)
    fn = truth.reference_fn
    keys = [(fn, row) for row in truth.exact_rows(inputs)]
    known = {key: _EXACT_ROWS[key] for key in keys if key in _EXACT_ROWS}
    missing = [i for i, key in enumerate(keys) if key not in known]
    if missing:
        got = reference.exact(truth, inputs.take(np.asarray(missing, dtype=np.int64)))
        for j, i in enumerate(missing):
            known[keys[i]] = (got.hi[j], got.lo[j], got.scale[j], got.zero[j])
        for i in missing:
            width = _width(keys[i][1])
            if width > EXACT_MEMO_ROW or keys[i] in _EXACT_ROWS:
                continue
            if _exact_values + width > EXACT_MEMO_VALUES:
                _EXACT_ROWS.clear()
                _exact_values = 0
            _EXACT_ROWS[keys[i]] = known[keys[i]]
            _exact_values += width
    hi, lo, scale, zero = zip(*(known[key] for key in keys)) if keys else ((),) * 4
    return reference.Exact(np.array(hi, dtype=np.float64), np.array(lo, dtype=np.float64),
                           np.array(scale, dtype=np.int64), np.array(zero, dtype=bool))


_MEMO: dict[tuple, list[Threshold]] = {}  # thresholds are pure functions of these arguments


def family_thresholds(experiment: Experiment, family: Family, fmt: Format, settings: Settings = Settings(),
                      tolerance: float | None = None, k: int = 16) -> list[Threshold]:
    """Thresholds of every method of ``experiment`` along ``family`` in one format (memoised,
    except for black boxes)."""
    if any(m.black_box for m in experiment.methods):
        return _family_thresholds(experiment, family, fmt, settings, tolerance, k)
    key = (experiment.name, family.name, fmt.name, settings, tolerance, k)
    if key not in _MEMO:
        _MEMO[key] = _family_thresholds(experiment, family, fmt, settings, tolerance, k)
    return list(_MEMO[key])


def _family_thresholds(experiment: Experiment, family: Family, fmt: Format, settings: Settings,
                       tolerance: float | None, k: int) -> list[Threshold]:
    search = _Search(experiment, family, fmt, settings, tolerance, k)
    found = search.run()
    g = search.grid
    status = search.statuses([i for i, _, _ in found.values() if i is not None])
    rows = []
    for method in experiment.method_names:
        inacc, exact_i, below_i = found[(method, "first_inaccurate")]
        fail, exact_f, below_f = found[(method, "first_failure")]
        failure = status[fail][method] if fail is not None else None
        degraded = status[inacc][method] if inacc is not None else None
        pred = None
        if not fmt.is_policy or family in experiment.block_families:  # (the formulas are derived for one
            # arithmetic; a policy gets none, except a block family's, which is about the storage alone)
            with mpmath.workdps(50):
                pred = family.predict(fmt, method, replace(settings, tolerance=tolerance))
        measured = {"first_inaccurate": g.value(inacc), "first_failure": g.value(fail)}
        agrees = None
        if (pred is not None and pred.kind in measured and pred.slack <= AGREEMENT_SLACK
                and g.value(g.start) <= pred.value <= g.value(g.end)):
            m = measured[pred.kind]
            agrees = m is not None and abs(m - pred.value) <= pred.slack * abs(pred.value)
            if pred.proof and m == pred.value:  # the derivation is exact: so is the value
                exact_i, exact_f = (True, exact_f) if pred.kind == "first_inaccurate" else (exact_i, True)
        rows.append(Threshold(
            experiment.name, family.name, method, fmt.name, family.parameter,
            measured["first_inaccurate"], measured["first_failure"], failure, degraded,
            None if pred is None else pred.value, None if pred is None else pred.kind,
            "" if pred is None else pred.formula, agrees, exact_i, exact_f, g.range(),
            None if exact_i else g.value(below_i), None if exact_f else g.value(below_f),
            None if exact_i else g.value(search.window.get((method, "first_inaccurate"))),
            None if exact_f else g.value(search.window.get((method, "first_failure")))))
    return rows


def thresholds(experiments, formats, settings: Settings = Settings(), tolerance: float | None = None,
               families: set[str] | None = None, jobs: int | None = None) -> list[Threshold]:
    """Every family of every experiment, every method, every format.

    Searches not memoised yet run in ``jobs`` processes (default: :func:`parallel.worker_count`);
    the result does not depend on it.
    """
    tasks = [(experiment, family, fmt) for experiment in experiments
             for family in (*experiment.families, *experiment.block_families)
             if not families or f"{experiment.name}/{family.name}" in families or family.name in families
             for fmt in formats if family in experiment.families_for(fmt)]
    todo = [(e.name, f.name, fmt.name) for e, f, fmt in tasks  # simulations only: a black box stays here
            if EXPERIMENTS.get(e.name) is e and (e.name, f.name, fmt.name, settings, tolerance, 16) not in _MEMO]
    jobs = worker_count() if jobs is None else jobs
    pool = fork_pool(jobs) if len(todo) > 1 else None
    if pool is not None:
        bundles = _bundles(todo, jobs)
        with pool:
            found = pool.map(_search_bundle, bundles, [settings] * len(bundles), [tolerance] * len(bundles))
            for bundle, rows_of in zip(bundles, found):
                for (e, f, fmt), rows in zip(bundle, rows_of):
                    _MEMO[(e, f, fmt, settings, tolerance, 16)] = rows
    return [r for e, f, fmt in tasks for r in family_thresholds(e, f, fmt, settings, tolerance)]


def _needs_ml_dtypes(names: tuple[str, str, str]) -> bool:
    """The search of ``(experiment, family, format)`` may touch a dtype numpy does not have (bfloat16, float8,
    ...), so its process may import ml_dtypes (~0.5 s of CPU): a precision policy with such a part.  A pure
    format's search never does (its grid and predictions read the bits with :attr:`Format.magnitudes`, its
    arithmetic holds the values in float32; the tests check that ml_dtypes stays out)."""
    fmt, family = format_or_policy(names[2]), EXPERIMENTS[names[0]].family(names[1])
    if not fmt.is_policy:
        return False
    parts = (fmt.storage_format, fmt.compute_format, fmt.accumulate_format, fmt.output_format)
    return not all(p.native for p in parts) or (family.grid is not None and not FORMATS[family.grid].native)


def _bundles(todo: list[tuple[str, str, str]], jobs: int) -> list[list[tuple[str, str, str]]]:
    """The work units of a pool of ``jobs`` workers: each search alone, the long ones (float64, float32
    grids) first, except

    * the searches of one family of an experiment whose references are mpmath's row by row
      (:func:`_shares_rows`): one unit, so that the rows one format's search computed serve the others'
      (:func:`_reference`; integer logits are values of every format);
    * the searches that may need ml_dtypes (:func:`_needs_ml_dtypes`: policies with a bfloat16 / float8
      part): beside other searches they go together in one unit, first (with the import it is one of the
      longest), so one worker imports ml_dtypes instead of every worker; alone they are dealt round-robin
      into ``jobs`` units.

    The results do not depend on it."""
    todo = sorted(todo, key=lambda t: -format_or_policy(t[2]).storage_format.precision)
    narrow = [t for t in todo if _needs_ml_dtypes(t)]
    wide, together = [], {}
    for t in todo:
        if t in narrow:
            continue
        if _shares_rows(t[0]):  # one family's searches in one process: they share mpmath's rows (_reference)
            if (t[0], t[1]) not in together:
                together[(t[0], t[1])] = []
                wide.append(together[(t[0], t[1])])
            together[(t[0], t[1])].append(t)
        else:
            wide.append([t])
    if not narrow:
        return wide
    if not wide:
        return [narrow[i::jobs] for i in range(min(jobs, len(narrow)))]
    return [narrow] + wide


def _shares_rows(experiment: str) -> bool:
    """Whether one family's searches of the experiment go to one unit of the pool (:func:`_bundles`): a method
    has a truth with no vectorized reference (mpmath per row, which :func:`_reference` remembers), and the
    experiment is a default one.  Not linear_ce (``default`` False: its exact references cost seconds per
    format; its vocab family's search takes ~12 s of CPU in each format and shares nothing across them): its
    searches stay one unit each, so the workers share them out."""
    e = EXPERIMENTS[experiment]
    return e.default and any(e.truth_of(m).fast_reference is None for m in e.methods)


def _search_bundle(bundle: list[tuple[str, str, str]], settings: Settings, tolerance: float | None):
    return [_search_task(names, settings, tolerance) for names in bundle]


def _search_task(names: tuple[str, str, str], settings: Settings, tolerance: float | None) -> list[Threshold]:
    experiment = EXPERIMENTS[names[0]]
    return family_thresholds(experiment, experiment.family(names[1]), format_or_policy(names[2]), settings, tolerance)
