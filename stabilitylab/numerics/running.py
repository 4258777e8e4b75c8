"""Sequential (running) sums of n equal terms, exactly as a loop in the format would
compute them, in a number of steps that does not grow with n.

A loop ``s = fl(s + y)`` (plain) or Kahan's compensated loop keeps the running
sum s in one binade [2**e, 2**(e+1)) (spacing U) for many steps.  While s and
s + y stay in that binade, one step depends on s only through the parity of
s / U (round half to even) and on the loop's auxiliary state (Kahan's c): the
step is a function of ``key = (aux, parity)``.  So once a key repeats, the steps
since its first occurrence repeat too, adding the same increment D: we jump
over as many whole periods as keep the sum inside the binade (with a margin of
one period plus one term), then go on step by step.  Every executed step is
the format's own arithmetic; the jumps are exact consequences of it.

``plain`` is the textbook loop; ``kahan`` is Kahan's compensated summation
(y = v - c; t = s + y; c = (t - s) - y; s = t).  Terms of either sign work
(round to nearest is symmetric: the sum of n copies of -v is minus that of v).
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Callable

import numpy as np

from .formats import Format

__all__ = ["rounder", "plain", "kahan"]

_STRUCT_CODES = {"float32": "f", "float16": "e"}
MAX_EXPLICIT = 1_000_000  # safety net: explicit steps per row (never reached by the tests' cases)


def rounder(fmt: Format) -> Callable[[float], float]:
    """x -> fl(x) in the format, for a Python float (correct rounding)."""
    if fmt.dtype_name == "float64":
        return float
    if fmt.dtype_name in _STRUCT_CODES:  # the C conversion (float) and CPython's half packing round correctly
        code = _STRUCT_CODES[fmt.dtype_name]
        pack, unpack = struct.Struct(code).pack, struct.Struct(code).unpack

        def native(x: float) -> float:
            try:
                return unpack(pack(x))[0]
            except OverflowError:  # a finite x that rounds beyond max (IEEE: to inf)
                return math.copysign(math.inf, x)
        return native
    p, tiny, sub = fmt.precision, fmt.tiny, fmt.smallest_subnormal
    limit = fmt.max + float(fmt.ulp(fmt.max)) / 2  # at or above: overflow (tie: to even)
    tie_up = not np.isfinite(float(fmt.held_twin.round(np.array([limit]), np.float64)[0]))
    overflow = {"inf": math.inf, "nan": math.nan, "saturate": fmt.max}[fmt.overflow]

    def python(x: float) -> float:
        """Round to nearest, ties to even, on the format's grid (round() is half-even)."""
        if not math.isfinite(x):
            return x if x != x else math.copysign(overflow, x)
        a = abs(x)
        if a > limit or (a == limit and tie_up):
            return math.copysign(overflow, x)
        if a < tiny:
            return math.copysign(round(a / sub) * sub, x)
        m, e = math.frexp(a)
        return math.copysign(math.ldexp(round(math.ldexp(m, p)), e - p), x)
    return python


def _grid(fmt: Format, s: float) -> tuple[float, float]:
    """(spacing U, upper end of the binade) for s >= 0."""
    if s < fmt.tiny:
        return fmt.smallest_subnormal, fmt.tiny
    m, e = math.frexp(s)  # s = m 2**e, m in [0.5, 1)
    upper = math.ldexp(1.0, e)
    return math.ldexp(1.0, e - fmt.precision), upper


def _stepper(fmt: Format, v: float, compensated: bool, ftz: bool) -> Callable[[float, float], tuple[float, float]]:
    """One step of the loop, (s, c) -> (s, c) as Python floats, each operation rounded to the format.

    float64 runs on Python's float and float16 / float32 on numpy's scalars, whose + and - are the
    format's own.  bfloat16 and float8 run on Python floats: each sum or difference is computed in
    float64 and rounded once with :func:`rounder`, which is the exact result correctly rounded
    (float64 has 53 >= 2p + 2 bits for their p <= 11, so the double rounding is innocuous: Figueroa,
    1995) — the same values as ml_dtypes' scalars, without importing ml_dtypes.
    """
    tiny = fmt.tiny
    if fmt.native:
        kind = float if fmt.dtype_name == "float64" else fmt.dtype.type
        zero, term = kind(0.0), kind(v)

        def flush(x):
            return zero if 0 < abs(x) < tiny else x

        if not compensated:
            if ftz:
                return lambda s, c: (float(flush(kind(s) + term)), 0.0)
            return lambda s, c: (float(kind(s) + term), 0.0)

        def kahan_step(s: float, c: float) -> tuple[float, float]:
            s = kind(s)
            y = term - kind(c)
            t = s + y
            return float(t), float((t - s) - y)

        def kahan_step_ftz(s: float, c: float) -> tuple[float, float]:
            s = kind(s)
            y = flush(term - kind(c))
            t = flush(s + y)
            return float(t), float(flush(flush(t - s) - y))

        return kahan_step_ftz if ftz else kahan_step

    fl = rounder(fmt)
    if ftz:
        def fl(x: float, _round=fl) -> float:  # noqa: F811 - the rounding, then the flush to zero
            x = _round(x)
            return 0.0 if 0 < abs(x) < tiny else x
    if not compensated:
        return lambda s, c: (fl(s + v), 0.0)

    def kahan_step_rounded(s: float, c: float) -> tuple[float, float]:
        y = fl(v - c)
        t = fl(s + y)
        return t, fl(fl(t - s) - y)

    return kahan_step_rounded


def _run(fmt: Format, v: float, targets: list[int], compensated: bool, ftz: bool) -> tuple[np.ndarray, np.ndarray]:
    """(value, overflowed) of the loop for a term v >= 0 (format value) at each n in ``targets``
    (ascending, distinct), as two arrays in the targets' order, in one pass: jumps stop at every
    target (the targets inside a jump are read off its period at once)."""
    step = _stepper(fmt, v, compensated, ftz)

    at = np.asarray(targets, dtype=np.int64)
    values, flags = np.empty(len(targets)), np.zeros(len(targets), dtype=bool)
    marks = _checkpoints(fmt, v, compensated, ftz)
    i, last = 0, targets[-1]  # targets[i] is the next one to reach
    k, s, c, overflowed = marks[bisect.bisect_right(marks, (targets[0], math.inf)) - 1]
    explicit = 0
    seen: dict[tuple[float, int], tuple[int, float]] = {}
    trail: list[float] = []  # s at steps trail_start, trail_start + 1, ... (the steps recorded in seen)
    trail_start = k
    binade = None
    while i < len(targets):
        if k == targets[i]:
            values[i], flags[i] = s, overflowed
            i += 1
            if len(marks) < MAX_CHECKPOINTS and math.isfinite(s):
                bisect.insort(marks, (k, s, c, overflowed))
            continue
        goal = targets[i]
        if not math.isfinite(s):
            # inf and NaN are absorbing for the plain loop; Kahan turns inf into NaN within 2 steps
            for _ in range(min(goal - k, 2)):
                s, c = step(s, c)
                k += 1
            if k < goal:
                k = goal
            continue
        unit, upper = _grid(fmt, s)
        if binade != upper:
            binade, seen, trail, trail_start = upper, {}, [], k
        key = (c, int(s / unit) % 2)
        if key in seen:
            k0, s0 = seen[key]
            period, gain = k - k0, s - s0
            if gain == 0:  # the whole state repeats: a fixed point for ever
                values[i:], flags[i:] = s, overflowed
                break
            room = upper - s - gain - abs(v) - abs(c) - unit
            jumps = min(int(room // gain) if room > 0 else 0, (last - k) // period)
            if jumps > 0:
                # every step jumped over is step k0 + r of the period moved up by whole gains:
                # the targets among them are read off the period (exact: multiples of U in the binade)
                end = k + jumps * period
                first = np.array(trail[k0 - trail_start:k - trail_start])
                stop = bisect.bisect_left(targets, end, lo=i)
                j, r = np.divmod(at[i:stop] - k0, period)
                values[i:stop], flags[i:stop] = first[r] + j * gain, overflowed  # (float64, as Python's floats)
                i = stop
                s += jumps * gain  # exact: a multiple of U inside the binade
                k = end
                seen, trail, trail_start = {}, [], k
                continue
        seen[key] = (k, s)
        trail.append(s)
        s_next, c = step(s, c)
        if not math.isfinite(s_next) and math.isfinite(s):
            overflowed = True  # finite + finite: only an overflow leaves the range (NaN in float8_e4m3fn)
        s, k, explicit = s_next, k + 1, explicit + 1
        if explicit > MAX_EXPLICIT:
            raise ValueError(f"the running sum of {v!r} x {goal} in {fmt.name} has no short period; "
                             f"at most {MAX_EXPLICIT:,} steps are simulated")
    return values, flags


_CHECKPOINTS: dict[tuple, list[tuple[int, float, float, bool]]] = {}
MAX_CHECKPOINTS = 4096


def _checkpoints(fmt: Format, v: float, compensated: bool, ftz: bool) -> list:
    """States (k, s, c, overflowed) already reached by this loop, sorted by k: a new
    query resumes from the nearest one below it (the loop is deterministic)."""
    key = (fmt.name, v, compensated, ftz)
    if key not in _CHECKPOINTS:
        if len(_CHECKPOINTS) > 256:
            _CHECKPOINTS.clear()
        _CHECKPOINTS[key] = [(0, 0.0, 0.0, False)]
    return _CHECKPOINTS[key]


def _batch(fmt: Format, values: np.ndarray, counts: np.ndarray, compensated: bool, ftz: bool):
    """Rows with the same term share one pass over their counts."""
    values = values.astype(np.float64)
    out, over = np.empty(len(values)), np.zeros(len(values), dtype=bool)
    nan = np.isnan(values)
    distinct = sorted(set(values[~nan].tolist()))  # not np.unique, which imports numpy.ma (~8 ms)
    for v in distinct + ([math.nan] if nan.any() else []):
        rows = np.flatnonzero(nan if v != v else values == v)
        if not math.isfinite(v):
            # inf + inf = inf; Kahan: c = (inf - s) - inf = NaN after the first step
            out[rows] = [v if not compensated or n == 1 else math.nan for n in counts[rows].tolist()]
            continue
        targets = sorted(set(counts[rows].tolist()))
        with np.errstate(all="ignore"):  # the steps' numpy scalars: an overflow is a result here
            totals, overflowed = _run(fmt, abs(v), targets, compensated, ftz)
        where = np.searchsorted(np.asarray(targets, dtype=np.int64), counts[rows])
        total = totals[where]
        out[rows] = np.where(np.isnan(total), total, np.copysign(total, v))
        over[rows] = overflowed[where]
    return out, over


def plain(fmt: Format, values: np.ndarray, counts: np.ndarray, ftz: bool = False):
    """s_k = fl(s_{k-1} + v), n times, per row: (float64 values, overflow mask)."""
    return _batch(fmt, values, counts, False, ftz)


def kahan(fmt: Format, values: np.ndarray, counts: np.ndarray, ftz: bool = False):
    """Kahan's compensated loop over n copies of v, per row: (float64 values, overflow mask)."""
    return _batch(fmt, values, counts, True, ftz)
