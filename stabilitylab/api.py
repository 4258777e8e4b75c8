"""The Python API: ``stabilitylab.audit``, ``stabilitylab.compare``, ``stabilitylab.thresholds``.

For notebooks and scripts; the command line is a thin layer over the same
functions.  Each returns a result object with ``.to_json()``, ``.to_markdown()``
and ``_repr_markdown_`` (a notebook cell shows its tables); an audit's result
also writes regression tests with ``.to_pytest(path)``.

>>> import stabilitylab
>>> result = stabilitylab.audit("scipy.log_softmax", dtypes=["float32"])  # doctest: +SKIP
>>> result.resembles[0].method                                            # doctest: +SKIP
'log_softmax'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .analysis import engine
from .analysis import thresholds as _thresholds
from .auditing import adapters
from .auditing import core as _audit
from .experiments import EXPERIMENTS
from .experiments.base import Settings
from .guard import baseline
from .io.userdata import InputError, binary_cases, logits_cases, user_binary, user_logits
from .numerics.formats import ALL_FORMATS, DEFAULT_FORMATS, Format, get_format
from .render import jsonout
from .render.markdown import sections_md
from .render.model import Section, audit_sections, compare_sections, formulas_section, thresholds_table

__all__ = ["audit", "compare", "thresholds", "adapters_table", "AuditResult", "CompareResult", "ThresholdsResult",
           "AuditError", "InputError"]

AuditError = _audit.AuditError


def _formats(dtypes: str | Format | Iterable[str | Format] | None, default=DEFAULT_FORMATS) -> tuple[Format, ...]:
    if dtypes is None:
        return tuple(default)
    if isinstance(dtypes, (str, Format)):
        dtypes = [dtypes]
    out: list[Format] = []
    for d in dtypes:
        if isinstance(d, Format):
            out.append(d)
        elif str(d).strip().lower() == "all":
            out.extend(ALL_FORMATS)
        else:
            out.append(get_format(str(d)))
    return tuple(dict.fromkeys(out))


class _Document:
    """Shared by the result objects: JSON text, markdown text and the notebook view."""

    def to_dict(self) -> dict:
        raise NotImplementedError

    def sections(self) -> list[Section]:
        raise NotImplementedError

    def to_json(self) -> str:
        """The JSON document (the same as the CLI's ``--format json``)."""
        return jsonout.dumps(self.to_dict())

    def to_markdown(self) -> str:
        return sections_md(self.sections())

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


@dataclass
class AuditResult(_Document):
    """An audit (see :func:`audit`): ``target``, ``resembles``, ``thresholds``, ``witnesses``,
    ``comparison`` (the rows as in ``compare``), ``versus`` and ``notes``."""

    audit: _audit.Audit

    @property
    def target(self) -> _audit.Target:
        return self.audit.target

    @property
    def resembles(self) -> list[_audit.Resemblance]:
        return self.audit.resembles

    @property
    def thresholds(self) -> list[_thresholds.Threshold]:
        return self.audit.thresholds

    @property
    def witnesses(self) -> list[_audit.Witness]:
        return self.audit.witnesses

    @property
    def versus(self) -> list[_audit.Versus]:
        return self.audit.versus

    @property
    def comparison(self) -> engine.Comparison:
        return self.audit.comparison

    @property
    def notes(self) -> list[str]:
        return self.audit.notes

    def to_dict(self) -> dict:
        return jsonout.audit_document(self.audit)

    def sections(self) -> list[Section]:
        return audit_sections(self.audit)

    def to_pytest(self, path: str | os.PathLike) -> int:
        """Write a standalone pytest module (atomically) guarding the witnesses; returns the number of tests."""
        from .auditing.emit import write_pytest
        return write_pytest(self.audit, path)

    def save_baseline(self, path: str | os.PathLike) -> int:
        """Add this audit's thresholds to a baseline file (created if missing; its other entries and
        settings are kept); ``stabilitylab check`` then guards them.  Returns the number of entries written."""
        previous, settings, tolerance = {}, Settings(), self.audit.tolerance
        if os.path.exists(path):
            old = baseline.load(path)
            previous, (settings, tolerance) = old["entries"], baseline.settings_of(old)
            if tolerance != self.audit.tolerance:
                raise AuditError(f"baseline {path} was made with tolerance {tolerance}; this audit used "
                                 f"{self.audit.tolerance}: audit with the baseline's tolerance")
        rows = _audit.baseline_thresholds(self.audit.thresholds, os.path.dirname(os.path.abspath(path)))
        baseline.write(path, baseline.document(rows, settings, tolerance, previous))
        return len(self.audit.thresholds)


@dataclass
class CompareResult(_Document):
    """``compare``: ``results`` (one row per case, method and format), ``summary`` (counts), ``notes``."""

    comparison: engine.Comparison

    @property
    def results(self) -> list[engine.Result]:
        return self.comparison.results

    @property
    def summary(self) -> list[engine.Count]:
        return self.comparison.summary

    def to_dict(self) -> dict:
        return jsonout.compare_document(self.comparison)

    def sections(self) -> list[Section]:
        return compare_sections(self.comparison)


@dataclass
class ThresholdsResult(_Document):
    """``thresholds``: ``rows``, one :class:`~stabilitylab.analysis.thresholds.Threshold` per family, method
    and format."""

    rows: list[_thresholds.Threshold]
    formats: tuple[Format, ...]
    settings: Settings
    tolerance: float | None

    def to_dict(self) -> dict:
        return jsonout.thresholds_document(self.rows, self.settings, self.tolerance)

    def sections(self) -> list[Section]:
        return [Section("Thresholds", tables=[thresholds_table(self.rows, list(self.formats))]),
                formulas_section(self.rows)]


def _cases(experiment: str, logits, labels):
    """(cases, notes) from arrays or file paths; (None, []) without logits."""
    if logits is None:
        if labels is not None:
            raise InputError("labels need logits", "--labels")
        return None, []
    base = experiment.removesuffix("_grad")
    from_file = isinstance(logits, (str, os.PathLike))
    if base == "softmax_ce":
        if from_file:
            return user_logits(logits, labels)
        return logits_cases(np.asarray(logits), None if labels is None else np.asarray(labels))
    if from_file:
        return user_binary(logits, labels)
    if labels is None:
        raise InputError("binary_ce needs labels: one 0/1 label per logit, shape (rows, K)", "--labels")
    return binary_cases(np.asarray(logits), np.asarray(labels))


def audit(target: str | Callable, experiment: str | None = None, dtypes=None, *, logits=None, labels=None,
          families: Sequence[str] | None = None, tolerance: float | None = None, grad: bool = False,
          search: bool = True, progress: Callable[[str], None] = lambda step: None) -> AuditResult:
    """Audit a real loss: a built-in adapter (``"torch.cross_entropy"``; see :func:`adapters_table`),
    ``"module:function"``, ``"path/to/file.py:function"`` or a callable.

    ``experiment``: the protocol of a user function, ``"softmax_ce"`` (``f(logits (rows, K),
    labels (rows,) int64) -> loss (rows,)``) or ``"binary_ce"`` (``f(logits (rows, K), labels
    (rows, K)) -> loss (rows,)`` summed over K); adapters know theirs.  ``dtypes``: format
    names (default: float16, bfloat16, float32, float64 as the target supports them; ``"all"``).
    ``logits`` / ``labels``: arrays or files replacing the default cases and the bug-report
    corpus.  ``families``: limit the threshold search (``search=False`` skips it).  ``grad``:
    audit the gradient with respect to the logits (torch, jax and optax targets).

    Raises :class:`AuditError` (the target cannot be audited) or :class:`InputError` (bad data).
    """
    t = _audit.resolve(target, experiment, grad)
    explicit = dtypes is not None
    formats = _formats(dtypes)
    if not explicit:
        formats = tuple(f for f in formats if f.name in t.formats) or formats
    if tolerance is not None and not (0 < tolerance < float("inf")):
        raise ValueError(f"tolerance = {tolerance}; it must be a finite number > 0")
    known = [f.name for f in _audit.audit_experiment(t.audited_experiment).families]
    for name in families or ():
        if name not in known:
            raise AuditError(f"no family {name!r} in {t.audited_experiment}; valid: {', '.join(known)}")
    cases, notes = _cases(t.audited_experiment, logits, labels)
    result = _audit.run(t, formats, cases, families, tolerance, search, progress)
    result.notes.extend(notes)
    return AuditResult(result)


def compare(experiments: str | Sequence[str] | None = None, dtypes=None, *, logits=None, labels=None,
            tolerance: float | None = None, ftz: bool = False) -> CompareResult:
    """Every simulated method of the experiments (default: all) on their cases, in each format.
    ``logits`` / ``labels`` (arrays or files) replace the softmax_ce cases."""
    names = [experiments] if isinstance(experiments, str) else list(experiments or EXPERIMENTS)
    chosen = [EXPERIMENTS[n] for n in names]
    cases, notes = {}, []
    if logits is not None:
        cases["softmax_ce"], notes = _cases("softmax_ce", logits, labels)
    comparison = engine.compare(chosen, _formats(dtypes), cases, tolerance=tolerance, ftz=ftz)
    comparison.notes.extend(notes)
    return CompareResult(comparison)


def thresholds(experiments: str | Sequence[str] | None = None, dtypes=None, *, families: Sequence[str] | None = None,
               p: float = 0.1, ftz: bool = False, tolerance: float | None = None) -> ThresholdsResult:
    """The exact first failure of every method along every family (see :mod:`stabilitylab.analysis.thresholds`)."""
    names = [experiments] if isinstance(experiments, str) else list(experiments or EXPERIMENTS)
    chosen = [EXPERIMENTS[n] for n in names]
    formats = _formats(dtypes)
    settings = Settings(p=p, ftz=ftz)
    rows = _thresholds.thresholds(chosen, formats, settings, tolerance, set(families) if families else None)
    return ThresholdsResult(rows, formats, settings, tolerance)


def adapters_table() -> list[dict[str, Any]]:
    """The built-in targets: name, experiment, formats, gradient, installed (with the library's version)."""
    out = []
    for a in adapters.ADAPTERS.values():
        versions = {lib: adapters.library_version(lib) for lib in a.requires}
        out.append({"target": a.name, "experiment": a.experiment, "formats": list(a.formats),
                    "gradient": a.grad is not None, "installed": a.installed,
                    "versions": versions, "extra": a.extra, "computes": a.formula})
    return out

