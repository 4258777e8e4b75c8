"""Exact first-failure search along a family's parameter.

For each family x method x format we find

* ``first_inaccurate``: the smallest parameter whose status is not ``ok``;
* ``first_failure``: the smallest parameter whose value is non-finite (inf or NaN);

over the integers (n) or over the *representable values of the format* (d, z),
ordered by bit pattern (for x >= 0 the bit pattern grows with the value).

Formats of at most 16 bits are scanned completely: every representable value
is evaluated, so their thresholds are exact even where the status flickers
(an error hovering around the tolerance), and ``monotone`` says whether any ok
value follows the first failing one.

Wider grids (float32, float64, the integers) use a vectorized k-ary bisection:
each round evaluates up to ``k`` points inside every open bracket, for all
methods at once, so a float64 parameter (2**63 patterns) needs ~16 rounds.  It
relies on the predicate being monotone, and checks that on the bracket: the
``k`` points just below and above the answer and ``k`` points spread below it
are evaluated; an earlier failure restarts the search below it, and
``monotone`` is false if an ok point was seen above the answer.  Where the
status flickers, the answer is the first failure the search and these checks
found, not necessarily the global first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import mpmath
import numpy as np

from .engine import evaluate
from .experiments import Experiment
from .experiments.base import Family, Settings
from .formats import Format

__all__ = ["Threshold", "Grid", "family_thresholds", "thresholds", "INTEGER_UPPER"]

INTEGER_UPPER = 2**62
EXHAUSTIVE_POINTS = 2**16  # grids this small (float16, bfloat16, float8) are scanned completely
KINDS = ("first_inaccurate", "first_failure")


@dataclass(frozen=True)
class Threshold:
    """One row of ``stabilitylab thresholds --format json``."""

    experiment: str
    family: str
    method: str
    dtype: str
    parameter: str
    first_inaccurate: float | int | None
    first_failure: float | int | None
    failure: str | None
    inaccurate_status: str | None  # the status at first_inaccurate (inaccurate, or a 0 that under/overflowed)
    predicted: float | int | None
    predicted_for: str | None
    formula: str
    agrees: bool | None
    monotone: bool
    search_range: tuple[float | int, float | int]

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.family}/{self.method}/{self.dtype}"


class Grid:
    """Ordered parameter points: integers [lo, hi], or format values in [lo, max] by bit pattern."""

    def __init__(self, family: Family, fmt: Format):
        self.integer = family.integer
        self.fmt = fmt
        if self.integer:
            self.start, self.end = int(family.lower), family.upper or INTEGER_UPPER
        else:
            self._bits = np.dtype(f"u{fmt.dtype.itemsize}")
            self.start = self._index(float(fmt.round(family.lower).astype(np.float64)))
            self.end = self._index(fmt.max)

    def _index(self, value: float) -> int:
        return int(np.array([value]).astype(self.fmt.dtype).view(self._bits)[0])

    def params(self, indices: list[int]) -> np.ndarray:
        if self.integer:
            return np.array(indices, dtype=np.int64)
        return np.array(indices, dtype=np.uint64).astype(self._bits).view(self.fmt.dtype).astype(np.float64)

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


class _Search:
    """Brackets (a, b) per (method, kind): a is known good (or start - 1), b known bad (or end + 1)."""

    def __init__(self, experiment: Experiment, family: Family, fmt: Format, settings: Settings,
                 tolerance: float | None, k: int):
        self.experiment, self.family, self.fmt = experiment, family, fmt
        self.settings, self.tolerance, self.k = settings, tolerance, k
        self.grid = Grid(family, fmt)
        self.seen: dict[int, dict[str, tuple[str, bool]]] = {}  # index -> method -> (status, finite)

    def _evaluate(self, indices: list[int]) -> None:
        todo = sorted(set(indices) - set(self.seen))
        if not todo:
            return
        cases = self.family.cases(self.grid.params(todo), self.settings)
        out = evaluate(self.experiment, self.fmt, cases, tolerance=self.tolerance, ftz=self.settings.ftz,
                       fast_reference=True)
        for j, idx in enumerate(todo):
            self.seen[idx] = {m: (str(o.status[j]), bool(np.isfinite(o.value[j]))) for m, o in out.items()}

    def bad(self, idx: int, method: str, kind: str) -> bool:
        status, finite = self.seen[idx][method]
        return status != "ok" if kind == "first_inaccurate" else not finite

    def scan(self) -> dict[tuple[str, str], tuple[int | None, bool]]:
        """Every point of the grid (formats of <= 16 bits): exact, monotone or not."""
        g = self.grid
        indices = np.arange(g.start, g.end + 1)
        cases = self.family.cases(self.grid.params(indices.tolist()), self.settings)
        outcomes = evaluate(self.experiment, self.fmt, cases, tolerance=self.tolerance, ftz=self.settings.ftz,
                            fast_reference=True)
        out = {}
        for m, o in outcomes.items():
            for kind, bad in (("first_inaccurate", o.status != "ok"), ("first_failure", ~np.isfinite(o.value))):
                first = int(np.argmax(bad)) if bad.any() else None
                out[(m, kind)] = (None if first is None else int(indices[first]),
                                  first is None or bool(bad[first:].all()))
                if first is not None:
                    self.seen.setdefault(int(indices[first]), {})[m] = (str(o.status[first]),
                                                                         bool(np.isfinite(o.value[first])))
        return out

    def run(self) -> dict[tuple[str, str], tuple[int | None, bool]]:
        g = self.grid
        if not g.integer and g.end - g.start < EXHAUSTIVE_POINTS:
            return self.scan()
        keys = [(m, kind) for m in self.experiment.method_names for kind in KINDS]
        brackets = {key: (g.start - 1, g.end + 1) for key in keys}
        verified: dict[tuple[str, str], bool] = {}
        while True:
            open_keys = [key for key, (a, b) in brackets.items() if b - a > 1]
            if not open_keys:
                # verify on the bracket; an earlier failure re-opens the search below it
                checks = {key: self._checks(*brackets[key]) for key in keys if key not in verified}
                if not checks:
                    break
                self._evaluate([i for pts in checks.values() for i in pts])
                for key, pts in checks.items():
                    a, b = brackets[key]
                    earlier = [i for i in pts if i < b and self.bad(i, *key)]
                    if earlier:
                        brackets[key] = (g.start - 1, min(earlier))
                    else:
                        later_ok = [i for i in pts if i > b and not self.bad(i, *key)]
                        verified[key] = not later_ok
                continue
            points = {key: _spread(*brackets[key], self.k) for key in open_keys}
            self._evaluate([i for pts in points.values() for i in pts])
            for key, pts in points.items():
                a, b = brackets[key]
                for i in pts:
                    if self.bad(i, *key):
                        b = i
                        break
                    a = i
                brackets[key] = (a, b)
        return {key: (b if b <= g.end else None, verified[key]) for key, (a, b) in brackets.items()}

    def _checks(self, a: int, b: int) -> list[int]:
        g, k = self.grid, self.k
        top = min(b, g.end + 1)
        below = range(max(g.start, top - k), top)
        above = range(top + 1, min(g.end, top + k) + 1) if b <= g.end else range(0)
        spread = _spread(g.start - 1, top, k)
        return sorted(set(below) | set(above) | set(spread) | ({b} if b <= g.end else set()))


def family_thresholds(experiment: Experiment, family: Family, fmt: Format, settings: Settings = Settings(),
                      tolerance: float | None = None, k: int = 16) -> list[Threshold]:
    """Thresholds of every method of ``experiment`` along ``family`` in one format."""
    search = _Search(experiment, family, fmt, settings, tolerance, k)
    found = search.run()
    g = search.grid
    rows = []
    for method in experiment.method_names:
        inacc, mono_i = found[(method, "first_inaccurate")]
        fail, mono_f = found[(method, "first_failure")]
        failure = search.seen[fail][method][0] if fail is not None else None
        degraded = search.seen[inacc][method][0] if inacc is not None else None
        with mpmath.workdps(50):
            pred = family.predict(fmt, method, replace(settings, tolerance=tolerance))
        measured = {"first_inaccurate": g.value(inacc), "first_failure": g.value(fail)}
        agrees = None
        if pred is not None:
            m = measured[pred.kind]
            if m is None:  # consistent only if the prediction lies beyond the search range
                agrees = pred.value > g.value(g.end)
            else:
                agrees = abs(m - pred.value) <= pred.slack * abs(pred.value)
        rows.append(Threshold(
            experiment.name, family.name, method, fmt.name, family.parameter,
            measured["first_inaccurate"], measured["first_failure"], failure, degraded,
            None if pred is None else pred.value, None if pred is None else pred.kind,
            "" if pred is None else pred.formula, agrees, mono_i and mono_f, g.range()))
    return rows


def thresholds(experiments, formats, settings: Settings = Settings(), tolerance: float | None = None,
               families: set[str] | None = None) -> list[Threshold]:
    """Every family of every experiment, every method, every format."""
    rows = []
    for experiment in experiments:
        for family in experiment.families:
            if families and f"{experiment.name}/{family.name}" not in families and family.name not in families:
                continue
            for fmt in formats:
                rows += family_thresholds(experiment, family, fmt, settings, tolerance)
    return rows
