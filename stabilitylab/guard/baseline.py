"""Threshold baselines: a stable JSON file, and the comparison CI runs against it.

File layout (``stabilitylab.baseline/1``), keys sorted, one entry per
``experiment/family/method/dtype``::

    {"schema": ..., "version": ..., "environment": {...},
     "settings": {"p": 0.1, "ftz": false, "tolerance": null},
     "entries": {"likelihood/iid/product/float32":
                    {"first_failure": 46, "first_inaccurate": 45, "failure": "underflow"}, ...}}

Tolerance: integers (n) and statuses must match exactly; a float parameter (a
value of the entry's format) may move by at most ``ulps * ulp(baseline)`` in
that format (default 0: bit-exact).  ``null`` (never fails in the search
range) only matches ``null``.

Audit entries name their target; a baseline is data, so recomputing it never runs user code by
itself: a user target (``module:function``, ``file.py:function``, a file's path relative to the
baseline's folder) is recomputed only if allowed (``check --allow-target PATTERN``, or
``allow_targets`` in ``[tool.stabilitylab]`` of the nearest ``pyproject.toml`` at or above the
baseline's folder: :func:`allowed_targets`); built-in adapters always are.

Direction of a change (:func:`change`), so that ``check`` tells a regression
from an improvement:

* ``first_inaccurate`` / ``first_failure`` are the first parameter, searched
  upwards from the start of the family's range, where the method goes wrong.
  Moving to a larger input (the method fails later), or to ``null`` (never
  fails in the search range) where the baseline had a value, is an
  **improvement**; moving to a smaller input, or from ``null`` to a value, is a
  **regression**.
* ``failure`` (the status at ``first_failure``) is not ranked on its own: a
  different status at an unchanged ``first_failure`` is a regression (the same
  input now fails differently); a different status that comes with a
  ``first_failure`` that moved later, or vanished (``null``), is part of that
  improvement; with a ``first_failure`` that moved earlier it is a regression.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.outcome import STATUSES
from ..analysis.thresholds import Threshold
from ..auditing.core import ALLOW_HINT, audit_key, baseline_rows, is_user_target
from ..errors import BaselineError, InputError, shown
from ..experiments import EXPERIMENTS
from ..experiments.base import Settings
from ..io import atomic, schemas
from ..io.environment import fingerprint, package_version
from ..numerics.formats import Format
from ..numerics.policies import format_or_policy

__all__ = ["METRICS", "BaselineError", "Row", "CheckResult", "entries_of", "load", "write",
           "compare", "within", "allowed_targets", "audit_rows", "change", "REGRESSION", "IMPROVEMENT"]

METRICS = ("first_inaccurate", "first_failure", "failure")


def entries_of(rows: list[Threshold]) -> dict[str, dict]:
    return {r.key: {"first_inaccurate": r.first_inaccurate, "first_failure": r.first_failure,
                    "failure": r.failure} for r in rows}


def document(rows: list[Threshold], settings: Settings, tolerance: float | None,
             previous: dict | None = None) -> dict:
    """A baseline document; entries of ``previous`` that were not recomputed are kept."""
    entries = dict(previous or {})
    entries.update(entries_of(rows))
    return {"schema": schemas.BASELINE, "version": package_version(), "environment": fingerprint(),
            "settings": {"p": settings.p, "ftz": settings.ftz, "tolerance": tolerance},
            "entries": entries}


def write(path: str | os.PathLike, doc: dict) -> None:
    atomic.write_text(path, json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n")


MAX_BYTES = 64 * 2**20  # a baseline of every entry of every format is about 50 kB
MAX_INT = 2**63 - 1  # integer thresholds are int64 parameters (n)


def load(path: str | os.PathLike, update_flag: str = "--update") -> dict:
    """Read and validate a baseline; BaselineError says what is wrong in one line.

    Validation is complete (types, ranges, numbers too large for a float), so a
    loaded baseline can be compared and rewritten without surprises.
    ``update_flag`` is named in messages: how this caller creates a baseline.
    """
    p = Path(path)
    if not p.exists():
        raise BaselineError(f"baseline {p} does not exist (create it with {update_flag})", missing=True)
    if not p.is_file():
        raise BaselineError(f"baseline {p} is not a regular file; give a baseline JSON file")
    try:
        if p.stat().st_size > MAX_BYTES:
            raise BaselineError(f"baseline {p} is larger than {MAX_BYTES >> 20} MiB; it is not a baseline")
        doc = json.loads(p.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"baseline {p} could not be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BaselineError(f"baseline {p} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                            f"fix it, or delete it and create a new one with {update_flag}") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep; an integer of over 4300 digits
        raise BaselineError(f"baseline {p} is not a baseline ({str(exc).splitlines()[0]})") from None
    problem = _problem(doc)
    if problem:
        raise BaselineError(f"baseline {p}: {problem}")
    return doc


def _problem(doc) -> str | None:
    """What is wrong with a parsed baseline document, in a few words (None if nothing)."""
    if not isinstance(doc, dict) or doc.get("schema") != schemas.BASELINE:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        return f"schema is {_short(found)}; expected {schemas.BASELINE!r} (not a stabilitylab baseline)"
    entries = doc.get("entries")
    settings = doc.get("settings", {})
    if not isinstance(entries, dict) or not isinstance(settings, dict):
        return "lacks an 'entries' object (and 'settings', if any, must be an object)"
    if not isinstance(doc.get("environment", {}), dict):
        return "'environment' must be an object"
    problem = _settings_problem(settings)
    if problem:
        return f"settings {problem}"
    for key, entry in entries.items():
        if not isinstance(entry, dict) or any(m not in entry for m in METRICS):
            return f"entry {_short(key)} must hold {', '.join(METRICS)}"
        for metric in ("first_inaccurate", "first_failure"):
            if not _threshold_value(entry[metric]):
                return (f"entry {_short(key)} {metric} is {_short(entry[metric])}; allowed: null, an integer "
                        f"of magnitude at most 2**63 - 1, or a finite number")
        if entry["failure"] is not None and entry["failure"] not in STATUSES:
            return (f"entry {_short(key)} failure is {_short(entry['failure'])}; "
                    f"allowed: null or one of {', '.join(STATUSES)}")
    return None


def _short(value, limit: int = 60) -> str:
    """repr for a message: one line, at most ``limit`` characters."""
    if isinstance(value, int) and abs(value) >= 10**limit:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _float(x) -> float | None:
    """``x`` as a finite float, or None (not a number, a bool, or too large: JSON's 10**400)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        f = float(x)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _threshold_value(x) -> bool:
    if x is None:
        return True
    if isinstance(x, int) and not isinstance(x, bool):
        return abs(x) <= MAX_INT
    return isinstance(x, float) and math.isfinite(x)


def _settings_problem(settings: dict) -> str | None:
    p = _float(settings.get("p", 0.1))
    if p is None or not 0 < p <= 1:
        return f"p is {_short(settings.get('p'))}; allowed: a number in (0, 1]"
    if not isinstance(settings.get("ftz", False), bool):
        return f"ftz is {_short(settings.get('ftz'))}; allowed: true or false"
    tol = settings.get("tolerance")
    if tol is not None and not (_float(tol) or 0) > 0:
        return f"tolerance is {_short(tol)}; allowed: null or a finite number > 0"
    return None


def settings_of(doc: dict) -> tuple[Settings, float | None]:
    """The (validated) settings a baseline was made with."""
    s = doc.get("settings", {})
    tolerance = s.get("tolerance")
    return (Settings(p=float(s.get("p", 0.1)), ftz=s.get("ftz", False)),
            None if tolerance is None else float(tolerance))


def entry_format(dtype: str) -> Format | None:
    """The format or precision policy a key's dtype names, spelled canonically (``bfloat16``,
    ``bfloat16@float32``), or None."""
    try:
        fmt = format_or_policy(dtype)
    except KeyError:
        return None
    return fmt if fmt.name == dtype else None


def split_key(key: str) -> tuple[str, str, str, str] | None:
    """(experiment, family, method, dtype) if the key names something that exists now: a
    simulated method, or an audit target (see :func:`audit_key`)."""
    parts = key.split("/")
    if len(parts) == 4:
        experiment, family, method, dtype = parts
        e = EXPERIMENTS.get(experiment)
        if (e is not None and entry_format(dtype) is not None and method in e.method_names
                and family in {f.name for f in e.families_for(entry_format(dtype))}):
            return experiment, family, method, dtype
    return audit_key(key)


def within(baseline, current, fmt: Format, ulps: int) -> bool:
    """The tolerance rule stated in the module docstring."""
    if baseline is None or current is None or isinstance(baseline, str) or isinstance(current, str):
        return baseline == current
    if isinstance(baseline, int) and isinstance(current, int) and not isinstance(baseline, bool):
        return baseline == current
    return abs(float(current) - float(baseline)) <= ulps * float(fmt.ulp(float(baseline)))


REGRESSION, IMPROVEMENT = "!", "↑"  # Row marks (the ASCII stand-in of '↑' is '^', see io/output.py)


def change(metric: str, base, cur, fmt: Format, ulps: int, failure_moved: str = "") -> str:
    """'' within tolerance, :data:`IMPROVEMENT` or :data:`REGRESSION` (the rule in the module docstring).
    ``failure_moved``: for the ``failure`` metric, the change of ``first_failure`` of the same entry."""
    if within(base, cur, fmt, ulps):
        return ""
    if metric == "failure":
        return IMPROVEMENT if failure_moved == IMPROVEMENT else REGRESSION
    if base is None:
        return REGRESSION  # never failed; now fails
    if cur is None:
        return IMPROVEMENT  # failed; now never fails in the search range
    return IMPROVEMENT if float(cur) > float(base) else REGRESSION


@dataclass(frozen=True)
class Row:
    """One metric of one entry: mark '' ok, '!' regression, '↑' improvement (fails later, or never),
    '+' missing from the baseline, 'x' in the baseline but not comparable (unknown now)."""

    mark: str
    entry: str
    metric: str
    baseline: object
    current: object
    tolerance: str


@dataclass
class CheckResult:
    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count(self, mark: str) -> int:
        """Entries with a row of this mark; for :data:`IMPROVEMENT`, only those that did not also regress."""
        marked = {r.entry for r in self.rows if r.mark == mark}
        if mark == IMPROVEMENT:
            marked -= {r.entry for r in self.rows if r.mark == REGRESSION}
        return len(marked)

    def improved(self) -> list[str]:
        """The improved entries (none of their metrics regressed), sorted."""
        regressed = {r.entry for r in self.rows if r.mark == REGRESSION}
        return sorted({r.entry for r in self.rows if r.mark == IMPROVEMENT} - regressed)

    @property
    def compared(self) -> int:
        return len({r.entry for r in self.rows if r.mark in ("", REGRESSION, IMPROVEMENT)})


def compare(doc: dict, rows: list[Threshold], ulps: int, problems: dict[str, str] | None = None) -> CheckResult:
    """Compare recomputed thresholds with a loaded baseline; ``problems``: audit entries that
    could not be recomputed, and why (marked not comparable)."""
    result = CheckResult()
    env = doc.get("environment", {})
    now = fingerprint()
    for name, value in sorted(now.items()):
        if env.get(name) not in (None, value):
            result.warnings.append(f"baseline made with {name} {env.get(name)}; now {value}")
    current = {r.key: r for r in rows}
    for key, entry in sorted(doc["entries"].items()):
        if split_key(key) is None:
            result.rows.append(Row("x", key, "-", "-", "-", "unknown entry"))
            continue
        r = current.get(key)
        if r is None:
            if problems and key in problems:
                result.rows.append(Row("x", key, "-", "-", "-", problems[key]))
            continue  # not recomputed (outside the selected formats)
        fmt = format_or_policy(r.dtype).storage_format  # (the parameter's values are the storage format's)
        moved = change("first_failure", entry["first_failure"], r.first_failure, fmt, ulps)
        for metric in METRICS:
            base, cur = entry[metric], getattr(r, metric)
            integer = isinstance(base, int) or metric == "failure" or base is None
            tol = "exact" if integer or ulps == 0 else f"{ulps} ulp"
            result.rows.append(Row(change(metric, base, cur, fmt, ulps, moved), key, metric, base, cur, tol))
    for key in sorted(set(current) - set(doc["entries"])):
        result.rows.append(Row("+", key, "-", "missing", "-", "not in baseline"))
    return result


# ------------------------------------------------------------------ audit entries
def allowed_targets(path: str | os.PathLike) -> tuple[tuple[str, ...], Path | None]:
    """The user targets the baseline ``path`` may run: ``allow_targets`` (a list of fnmatch patterns) under
    ``[tool.stabilitylab]`` of the nearest ``pyproject.toml`` in the baseline's folder or above it, and that
    file (``((), None)`` if there is none or it has no such entry).  A file that cannot be read, or a value
    that is not a list of strings, is an :class:`~stabilitylab.errors.InputError` naming it."""
    folder = Path(os.path.abspath(path)).parent
    found = next((d / "pyproject.toml" for d in (folder, *folder.parents) if (d / "pyproject.toml").is_file()), None)
    if found is None:
        return (), None
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            return (), None  # the patterns cannot be read: nothing is allowed (--allow-target still works)
    try:
        doc = tomllib.loads(found.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{shown(found)}: could not read it for [tool.stabilitylab] allow_targets: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         option="pyproject.toml") from None
    section = doc.get("tool", {}).get("stabilitylab", {}) if isinstance(doc.get("tool", {}), dict) else {}
    value = section.get("allow_targets", []) if isinstance(section, dict) else []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{shown(found)}: [tool.stabilitylab] allow_targets is {_short(value)}; it must be a list "
                         "of patterns (strings) of the audit targets the baselines below it may run",
                         option="pyproject.toml")
    return tuple(value), (found if value else None)


def audit_rows(path: str | os.PathLike, keys, tolerance: float | None, formats: set[str] | None = None,
               allow: tuple[str, ...] = (), hint: str = ALLOW_HINT
               ) -> tuple[list[Threshold], dict[str, str], list[str]]:
    """Recompute the audit entries among ``keys`` of the baseline ``path``: (thresholds, per key not recomputed
    why, notes).  User targets run only if they match ``allow`` or :func:`allowed_targets` (read only when the
    baseline names one); file targets are relative to the baseline's folder (see
    :func:`stabilitylab.auditing.core.baseline_rows`)."""
    patterns = tuple(allow)
    if any((parts := audit_key(key)) is not None and is_user_target(parts[2]) for key in keys):
        patterns += allowed_targets(path)[0]
    notes: list[str] = []
    rows, problems = baseline_rows(keys, tolerance, formats, folder=Path(os.path.abspath(path)).parent,
                                   allow=patterns, notes=notes, hint=hint)
    return rows, problems, notes
