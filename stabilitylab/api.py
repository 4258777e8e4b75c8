"""The Python API: ``stabilitylab.compare``, ``audit``, ``thresholds``, ``train``.

Each command has one implementation, here; the command line is a thin layer that parses
and validates its options, calls the same function and renders the result.  Each returns a
result object with ``.to_json()`` (the CLI's ``--format json``), ``.to_markdown()`` and
``_repr_markdown_`` (a notebook cell shows its tables: a summary, never one line per row of
a large input) and ``.rows`` (the rows as numpy columns); an audit's result also writes
regression tests with ``.to_pytest(path)``.

User data (``compare`` and ``audit``): ``logits`` is a file name (.npy, .npz,
.safetensors, .pt / .pth, .csv, .txt) or an array (numpy, or anything ``numpy.asarray``
takes), of shape (rows, classes) or (..., classes); ``labels`` a file name, an array of
shape ``logits.shape[:-1]`` or (rows,), or None (the file's ``labels`` tensor, else each
row's argmax); ``key`` / ``labels_key`` pick tensors in a container; rows labelled
``ignore_index`` (default -100, PyTorch's padding label) are skipped and counted in a note.
Any size: the rows are read and evaluated in chunks (:mod:`stabilitylab.analysis.streaming`).

Wrong arguments raise :class:`InputError` (bad data or option) or :class:`AuditError` (a target
that cannot be audited), both subclasses of ``ValueError``, with one line naming what is allowed.

>>> import stabilitylab
>>> result = stabilitylab.audit("scipy.log_softmax", dtypes=["float32"])  # doctest: +SKIP
>>> result.resembles[0].method                                            # doctest: +SKIP
'log_softmax'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .analysis import engine
from .analysis.outcome import STATUSES
from .errors import AuditError
from .experiments import DEFAULT_EXPERIMENTS, EXPERIMENTS
from .experiments.base import Settings
from .experiments.likelihood import iid
from .io import atomic
from .io.userdata import (
    InputError,
    UserLogits,
    binary_cases,
    is_path,
    logits_cases,
    user_binary,
    user_logits,
    user_source,
)
from .numerics.formats import DEFAULT_FORMATS, EVERY_FORMAT, FORMATS, Format
from .numerics.policies import chosen, format_or_policy
from .numerics.policies import notes as policy_notes
from .render import jsonout
from .render.markdown import sections_md
from .render.model import (
    Section,
    audit_sections,
    compare_sections,
    formulas_section,
    summary_section,
    thresholds_table,
    train_sections,
)

if TYPE_CHECKING:  # imported where used: ``stabilitylab compare`` does not load the audit, the search or a baseline
    from .analysis import streaming
    from .analysis import thresholds as _thresholds
    from .auditing import core as _audit

__all__ = ["audit", "compare", "thresholds", "train", "trace", "adapters_table", "AuditResult", "CompareResult",
           "ThresholdsResult", "TrainResult", "AuditError", "InputError"]

MAX_CASES, MAX_FINDINGS = 60, 40  # a summary's limits: per experiment, cases and findings shown
WORST_SHOWN, FAILING_SHOWN = 1, 3  # a summary's limits: per format and method, user rows shown
KEEP_ROWS = 2**21  # rows x formats x methods kept in ``.rows`` by default (each ~80 bytes)
MAX_N = 2**63 - 1


# ------------------------------------------------------------------ arguments
def _formats(dtypes: str | Format | Iterable[str | Format] | None, default=DEFAULT_FORMATS) -> tuple[Format, ...]:
    """Formats by name or alias (or ``"all"``, ``"every"``); an unknown name or a scale format is an InputError
    naming the valid ones."""
    if dtypes is None:
        return tuple(default)
    if isinstance(dtypes, (str, Format)):
        dtypes = [dtypes]
    out: list[Format] = []
    for d in dtypes:
        if isinstance(d, Format):
            out.append(d)
        else:
            try:
                out.extend(chosen(str(d)))
            except (KeyError, ValueError) as exc:
                raise InputError(exc.args[0], "--dtype") from None
    if not out:
        raise InputError("no format given; valid: " + ", ".join(f.name for f in EVERY_FORMAT) + ", all, every",
                         "--dtype")
    return tuple(dict.fromkeys(out))


def _names(value: str | Sequence[str] | None, valid: Sequence[str], what: str, option: str) -> list[str]:
    """Names chosen from ``valid`` (None: none chosen); an unknown one is an InputError naming the valid ones."""
    names = [value] if isinstance(value, str) else list(value or ())
    for name in names:
        if name not in valid:
            raise InputError(f"unknown {what} {name!r}; valid: {', '.join(valid)}", option)
    return list(dict.fromkeys(names))


def _experiments(value) -> list:
    names = _names(value, list(EXPERIMENTS), "experiment", "--experiment")
    return [EXPERIMENTS[n] for n in names] or list(DEFAULT_EXPERIMENTS)


def _tolerance(tolerance: float | None) -> None:
    if tolerance is not None and not (0 < tolerance < float("inf")):
        raise InputError(f"tolerance = {tolerance}; it must be a finite number > 0", "--tolerance")


def _timeout(timeout) -> float | None:
    """``timeout`` as seconds (None: no limit); anything but a finite number > 0 is an :class:`InputError`."""
    if timeout is None:
        return None
    try:
        seconds = float(timeout) if not isinstance(timeout, (bool, str, bytes)) else float("nan")
    except (TypeError, ValueError, OverflowError):
        seconds = float("nan")
    if not (0 < seconds < float("inf")):
        raise InputError(f"timeout = {timeout!r}; it must be a finite number of seconds > 0 (leave it out for "
                         "no limit)", "--timeout")
    return seconds


def _user(logits, labels, key, labels_key, ignore_index) -> UserLogits:
    return user_source(logits, key=key, labels=labels, labels_key=labels_key, ignore_index=ignore_index)


# ------------------------------------------------------------------ results
class _Document:
    """Shared by the result objects: JSON text, markdown text, the notebook view and the rows as columns."""

    def to_dict(self) -> dict:
        raise NotImplementedError

    def sections(self, full: bool = True) -> list[Section]:
        """The document's sections; ``full=False``: a summary (at most a few rows of each table)."""
        raise NotImplementedError

    def to_json(self) -> str:
        """The JSON document (the same as the CLI's ``--format json``)."""
        return jsonout.dumps(self.to_dict())

    def to_markdown(self, full: bool = False) -> str:
        """Markdown tables: a summary (``full=False``; what a terminal shows), or every row (what ``-o`` writes)."""
        return sections_md(self.sections(full))

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def _case_columns(results: list[engine.Result]) -> dict[str, np.ndarray]:
    """``results`` (one per case, method and format) as numpy columns."""
    text = ("experiment", "case", "method", "dtype", "exact", "status")
    numbers = ("value", "reference", "rel_error", "ulps", "error_bits")
    out: dict[str, np.ndarray] = {k: np.array([getattr(r, k) for r in results], dtype=str) for k in text}
    out.update({k: np.array([getattr(r, k) for r in results], dtype=np.float64) for k in numbers})
    return out


def _row_columns(parts: list[dict]) -> dict[str, np.ndarray]:
    """Per-row columns of user rows (chunks of ``{(format, method): streaming.ROW array}``) as numpy columns."""
    from .analysis import streaming

    blocks = [(dtype, method, rows) for part in parts for (dtype, method), rows in part.items()]
    rows = np.concatenate([b[2] for b in blocks]) if blocks else np.zeros(0, streaming.ROW)
    out = {"dtype": np.concatenate([np.full(len(b[2]), b[0]) for b in blocks]) if blocks else np.zeros(0, str),
           "method": np.concatenate([np.full(len(b[2]), b[1]) for b in blocks]) if blocks else np.zeros(0, str)}
    for name in streaming.ROW.names:
        out[name] = np.asarray(STATUSES)[rows[name]] if name == "status" else rows[name]
    return out


class _Collector:
    """Keeps the per-row columns of user rows (and hands them on to ``forward``, if given)."""

    def __init__(self, forward: Callable[[dict], None] | None):
        self.forward, self.parts = forward, []

    def __call__(self, columns: dict) -> None:
        if self.forward is not None:
            self.forward(columns)
        self.parts.append(columns)

    def columns(self) -> dict[str, np.ndarray]:
        return _row_columns(self.parts)


def _collector(rows: bool | None, entries: int, on_rows) -> _Collector | None:
    """A collector of every row when ``rows`` is True, or None and ``entries`` (rows x formats x methods) is
    at most :data:`KEEP_ROWS`; else None (the summary only)."""
    keep = rows if rows is not None else entries <= KEEP_ROWS
    return _Collector(on_rows) if keep else None


@dataclass
class CompareResult(_Document):
    """``compare``.

    ``results`` (one :class:`~stabilitylab.analysis.engine.Result` per case, method and format of the
    simulated cases) and ``summary`` (their counts); with user logits, ``bulk`` (a
    :class:`~stabilitylab.analysis.streaming.Summary`: counts, error-bit histogram, worst and first
    failing rows per format and method) and ``source`` (what was read).

    ``rows``: numpy columns (a dict of equal-length 1-D arrays).  With user logits, one entry per
    evaluated row, format and method: ``dtype``, ``method``, ``row`` (index in the flattened logits),
    ``label``, ``value``, ``exact_hi`` / ``exact_lo`` / ``exact_scale`` / ``exact_zero`` (the exact loss is
    ``(hi + lo) * 2**scale``, exactly 0 where ``zero``), ``status``, ``rel_error``, ``ulps``, ``error_bits``;
    kept when there are at most :data:`KEEP_ROWS` such entries or ``compare(rows=True)`` (else None:
    the summary only).  Without user logits, one entry per result: ``experiment``, ``case``,
    ``method``, ``dtype``, ``value``, ``reference``, ``exact`` (text), ``status``, ``rel_error``,
    ``ulps``, ``error_bits``.
    """

    comparison: engine.Comparison | None
    bulk: streaming.Summary | None = None
    source: str = ""
    user_rows: dict[str, np.ndarray] | None = field(default=None, repr=False)
    linear: Any = None  # compare -e linear_ce --problem: an analysis.linear_bulk.LinearBulk

    @property
    def results(self) -> list[engine.Result]:
        return [] if self.comparison is None else self.comparison.results

    @property
    def summary(self) -> list[engine.Count]:
        return [] if self.comparison is None else self.comparison.summary

    @property
    def notes(self) -> list[str]:
        return [*([] if self.comparison is None else self.comparison.notes),
                *([] if self.bulk is None else self.bulk.notes),
                *([] if self.linear is None else self.linear.notes)]

    @property
    def rows(self) -> dict[str, np.ndarray] | None:
        if self.bulk is not None:
            return self.user_rows
        return _case_columns(self.results)

    def bulk_document(self) -> dict:
        """The ``user_logits`` part of the JSON document (also the summary line of ``--rows all``)."""
        from .render import bulk as _bulk

        return _bulk.bulk_document(self.bulk, self.source)

    def to_dict(self) -> dict:
        if self.comparison is not None:
            doc = jsonout.compare_document(self.comparison)
        elif self.bulk is not None:
            doc = jsonout.empty_compare_document(self.bulk.formats, self.bulk.tolerance, self.bulk.ftz)
        else:
            doc = jsonout.empty_compare_document(self.linear.formats, self.linear.tolerance, False)
        if self.bulk is not None:
            doc["user_logits"] = self.bulk_document()
        if self.linear is not None:
            from .render import linear_bulk as _linear

            doc["linear_ce_problem"] = _linear.linear_document(self.linear)
        return doc

    def sections(self, full: bool = True) -> list[Section]:
        sections = []
        if self.comparison is not None:
            sections = [summary_section(self.comparison),
                        *compare_sections(self.comparison, *((None, None) if full else (MAX_CASES, MAX_FINDINGS)))]
        if self.bulk is not None:
            from .render import bulk as _bulk

            sections.append(_bulk.bulk_section(self.bulk, self.source,
                                               *((None, None) if full else (WORST_SHOWN, FAILING_SHOWN))))
        if self.linear is not None:
            from .render import linear_bulk as _linear

            sections.append(_linear.linear_section(self.linear, None if full else WORST_SHOWN))
        return sections


@dataclass
class AuditResult(_Document):
    """An audit (see :func:`audit`): ``target``, ``resembles``, ``thresholds``, ``witnesses``,
    ``comparison`` (the rows as in ``compare``; empty on user logits), ``bulk`` (on user logits: the
    summary of the rows, as ``compare``'s), ``versus``, ``notes`` and ``rows`` (numpy columns, as
    :attr:`CompareResult.rows`)."""

    audit: _audit.Audit
    user_rows: dict[str, np.ndarray] | None = field(default=None, repr=False)

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
    def gradient_entries(self) -> list[_audit.GradientEntries]:
        """linear_ce with ``grad``: every entry of both gradients, summarized per format (else empty)."""
        return self.audit.gradient_entries

    @property
    def comparison(self) -> engine.Comparison:
        return self.audit.comparison

    @property
    def bulk(self) -> streaming.Summary | None:
        return self.audit.bulk

    @property
    def notes(self) -> list[str]:
        return self.audit.notes

    @property
    def rows(self) -> dict[str, np.ndarray] | None:
        if self.audit.bulk is not None:
            return self.user_rows
        return _case_columns(self.audit.comparison.results)

    def to_dict(self) -> dict:
        doc = jsonout.audit_document(self.audit)
        if self.audit.bulk is not None:
            from .render import bulk as _bulk

            doc["user_logits"] = _bulk.bulk_document(self.audit.bulk, self.audit.bulk_text)
        return doc

    def sections(self, full: bool = True) -> list[Section]:
        limits = (None, None) if full else (MAX_CASES, MAX_FINDINGS)
        if self.audit.bulk is None:
            return audit_sections(self.audit, *limits)
        from .render import bulk as _bulk

        rows = _bulk.bulk_section(self.audit.bulk, self.audit.bulk_text,
                                  *((None, None) if full else (WORST_SHOWN, FAILING_SHOWN)))
        return audit_sections(self.audit, *limits, cases=[rows])

    def to_pytest(self, path: str | os.PathLike) -> int:
        """Write a standalone pytest module (atomically) guarding the witnesses; returns the number of tests."""
        from .auditing.emit import write_pytest
        return write_pytest(self.audit, path)

    @atomic.transactional
    def save_baseline(self, path: str | os.PathLike) -> int:
        """Add this audit's thresholds to a baseline file (created if missing; its other entries and
        settings are kept); ``stabilitylab check`` then guards them.  Returns the number of entries written."""
        from .auditing import core as _audit
        from .guard import baseline

        previous, settings, tolerance = {}, Settings(), self.audit.tolerance
        atomic.lock(path)  # held from this read to the rename: concurrent writers merge, one after the other
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
class ThresholdsResult(_Document):
    """``thresholds``: ``rows``, one :class:`~stabilitylab.analysis.thresholds.Threshold` per family, method
    and format."""

    rows: list[_thresholds.Threshold]
    formats: tuple[Format, ...]
    settings: Settings
    tolerance: float | None

    def to_dict(self) -> dict:
        return jsonout.thresholds_document(self.rows, self.settings, self.tolerance)

    def sections(self, full: bool = True) -> list[Section]:
        return [Section("Thresholds", tables=[thresholds_table(self.rows, list(self.formats))]),
                formulas_section(self.rows)]


@dataclass
class TrainResult(_Document):
    """``train``: ``runs`` (one per scenario, method and format, with per-step numpy columns: ``loss``,
    ``status``, ``grad_norm``, ...), ``scenarios`` and ``findings``.  ``rows``: the runs' scalar fields
    as numpy columns."""

    runs: list
    scenarios: dict
    findings: list[tuple[str, str]]

    @property
    def rows(self) -> dict[str, np.ndarray]:
        runs = self.runs
        return {"scenario": np.array([r.scenario for r in runs], dtype=str),
                "method": np.array([r.method for r in runs], dtype=str),
                "dtype": np.array([r.dtype for r in runs], dtype=str),
                "final_loss": np.array([r.loss[-1] for r in runs], dtype=np.float64),
                "final_accuracy": np.array([r.final_accuracy for r in runs], dtype=np.float64),
                "first_nonfinite_step": np.array([-1 if r.first_nonfinite_step is None else r.first_nonfinite_step
                                                  for r in runs], dtype=np.int64)}

    def to_dict(self) -> dict:
        return jsonout.train_document(self.runs, self.scenarios, self.findings)

    def sections(self, full: bool = True) -> list[Section]:
        return train_sections(self.runs, self.scenarios, self.findings)


# ------------------------------------------------------------------ commands
def _cases(experiment: str, logits, labels):
    """(cases, notes) in memory from arrays or file paths, for the protocols that do not stream
    (binary_ce, gradients); (None, []) without logits."""
    if logits is None:
        if labels is not None:
            raise InputError("labels need logits", "--labels")
        return None, []
    base = experiment.removesuffix("_grad")
    if base == "softmax_ce":
        if is_path(logits):
            return user_logits(logits, labels)
        return logits_cases(np.asarray(logits), None if labels is None else np.asarray(labels))
    if is_path(logits):
        return user_binary(logits, labels)
    if labels is None:
        raise InputError("binary_ce needs labels: one 0/1 label per logit, shape (rows, K)", "--labels")
    return binary_cases(np.asarray(logits), np.asarray(labels))


def audit(target: str | Callable, experiment: str | None = None, dtypes=None, *, logits=None, labels=None,
          key: str | None = None, labels_key: str | None = None, ignore_index: int | None = -100,
          families: Sequence[str] | None = None, tolerance: float | None = None, grad: bool = False,
          search: bool = True, rows: bool | None = None, on_rows: Callable[[dict], None] | None = None,
          progress: Callable[[str], None] = lambda step: None, timeout: float | None = None) -> AuditResult:
    """Audit a real loss: a built-in adapter (``"torch.cross_entropy"``; see :func:`adapters_table`),
    ``"module:function"``, ``"path/to/file.py:function"`` or a callable.

    ``experiment``: the protocol of a user function, ``"softmax_ce"`` (``f(logits (rows, K),
    labels (rows,) int64) -> loss (rows,)``) or ``"binary_ce"`` (``f(logits (rows, K), labels
    (rows, K)) -> loss (rows,)`` summed over K) or ``"cast"`` (``f(x (rows,) float32, format name) -> x
    stored in the format (rows,)``); adapters know theirs.  ``dtypes``: format
    names (default: float16, bfloat16, float32, float64 as the target supports them, a cast target every
    format it supports; ``"all"``;
    with logits stored as bfloat16 / float16 / float8, that format).
    ``logits`` / ``labels`` / ``key`` / ``labels_key`` / ``ignore_index``: user data (see the module
    docstring) replacing the default cases and the bug-report corpus.  For a softmax_ce loss it
    is streamed in chunks of rows, any size: the target runs on each chunk beside the simulated
    methods, and the result holds the summary (``bulk``) and, up to :data:`KEEP_ROWS` entries or
    with ``rows=True``, every row (``rows``); ``on_rows`` receives each chunk's rows as they come.
    binary_ce and gradient audits read their (rows, K) data into memory (at most 10**6 values).
    ``families``: limit the threshold search (``search=False`` skips it).  ``grad``: audit the
    gradient with respect to the logits (torch, jax and optax targets).
    ``timeout``: seconds (a finite number > 0), or None for no limit: each call of the target, and the
    import of a user's module, that runs longer is stopped; that call's rows become ``error`` rows
    ("took longer than 5 s (--timeout)"), a timed-out import or first call an :class:`AuditError`.  It
    uses SIGALRM: on the main thread, where the platform has it (else an :class:`AuditError`).

    Raises :class:`AuditError` (the target cannot be audited) or :class:`InputError` (bad data).
    """
    from .auditing import core as _audit

    t = _audit.resolve(target, experiment, grad, timeout=_timeout(timeout))
    # a cast's question is the narrow formats: by default every format the target supports (not the four)
    formats = _formats(dtypes, EVERY_FORMAT if t.experiment == "cast" else DEFAULT_FORMATS)
    _tolerance(tolerance)
    known = [f.name for f in _audit.audit_experiment(t.audited_experiment).families]
    for name in families or ():
        if name not in known:
            raise AuditError(f"no family {name!r} in {t.audited_experiment}; valid: {', '.join(known)}")
    if t.experiment == "cast" and (logits is not None or labels is not None):
        raise InputError(f"{t.name} is a cast (protocol cast): it takes no logits or labels; its cases are the "
                         "default values and the bug-report corpus", "--logits" if logits is not None else "--labels")
    if logits is not None and t.experiment == "linear_ce":
        raise InputError(f"{t.name} is a linear_ce target (hidden, weight, labels); it runs the linear_ce problems, "
                         "not logits: leave --logits out", "--logits")
    streamed = logits is not None and t.experiment == "softmax_ce" and not t.grad
    if streamed:
        user = _user(logits, labels, key, labels_key, ignore_index)
        notes = []
        if dtypes is None:
            formats, notes = _audit_formats(t, user)
        entries = int(user.keep.sum()) * len(formats) * (1 + len(_audit.SOFTMAX_CE.methods))
        collector = _collector(rows, entries, on_rows)
        result = _audit.run_bulk(t, formats, user, families, tolerance, search, progress,
                                 on_rows=collector if collector is not None else on_rows)
        result.notes[:0] = notes
        return AuditResult(result, None if collector is None else collector.columns())
    if key is not None or labels_key is not None:
        raise InputError(f"key / labels_key pick tensors of softmax_ce logits; {t.audited_experiment} reads a "
                         "file holding one array", "--key" if key is not None else "--labels-key")
    if dtypes is None:
        formats = tuple(f for f in formats if f.name in t.formats) or formats
    cases, notes = _cases(t.audited_experiment, logits, labels)
    result = _audit.run(t, formats, cases, families, tolerance, search, progress)
    result.notes.extend(notes)
    return AuditResult(result)


def _audit_formats(t: "_audit.Target", user: UserLogits) -> tuple[tuple[Format, ...], list[str]]:
    """The formats of an audit on user logits when none are chosen: the storage format of logits
    stored narrower than float32, if the target supports it (else float32, where those values are
    exact); otherwise the default formats the target supports."""
    stored = user.source.format
    if stored is None:
        return tuple(f for f in DEFAULT_FORMATS if f.name in t.formats) or tuple(DEFAULT_FORMATS), []
    if stored in t.formats:
        return (FORMATS[stored],), [f"-d {stored}: the format the logits are stored in (choose others with -d)"]
    wider = next((n for n in ("float32", "float64") if n in t.formats), None)
    if wider is None:
        return (FORMATS[stored],), []  # refused by the audit, naming the formats the target supports
    return (FORMATS[wider],), [f"-d {wider}: the logits are stored as {stored}, which {t.name} does not support; "
                               f"{wider} holds those values exactly (choose others with -d)"]


def compare(experiments: str | Sequence[str] | None = None, dtypes=None, *, logits=None, labels=None,
            key: str | None = None, labels_key: str | None = None, ignore_index: int | None = -100,
            p: float | None = None, n: int | None = None, tolerance: float | None = None, ftz: bool = False,
            rows: bool | None = None, on_rows: Callable[[dict], None] | None = None,
            loss_options=None, problem=None, chunks: int | None = None, vocab_chunk: int | None = None,
            keep_entries: bool = False) -> CompareResult:
    """Every simulated method of the experiments (default: all; with ``logits`` alone: softmax_ce)
    on their cases, in each format (default: float16, bfloat16, float32, float64; with logits
    stored as bfloat16 / float16 / float8, that format).

    ``p`` / ``n``: a likelihood case of ``n`` samples of true-class probability ``p`` replaces
    its default cases.  ``logits`` and the other user-data arguments (see the module docstring)
    replace the softmax_ce cases and are streamed in chunks, any size; ``rows`` / ``on_rows`` as
    in :func:`audit`.  ``loss_options`` (a :class:`~stabilitylab.experiments.loss_options.LossOptions`,
    checked): the softmax_ce_variants cases' inputs under those options instead of each case's own, and
    linear_ce's problems under them (its loss methods only, see :func:`linear_ce.with_options`).

    ``problem`` (a folder with hidden.npy, weight.npy, labels.npy, or a .safetensors file with those
    tensors): linear_ce on that real-size problem by the fused dot-product model
    (:mod:`stabilitylab.analysis.linear_bulk`; default formats bf16 and bf16@fp32), every loss and gradient
    entry judged, summarized per row (``.linear``); ``chunks`` token chunks (default 8), ``vocab_chunk``
    columns per online block (default 4096); ``keep_entries``: keep every entry (small problems).
    """
    _tolerance(tolerance)
    if problem is None:
        for used, what in ((chunks is not None, "chunks"), (vocab_chunk is not None, "vocab_chunk"),
                           (keep_entries, "keep_entries")):
            if used:
                raise InputError(f"{what} needs problem", f"--{what.replace('_', '-')}")
    else:
        return _compare_problem(experiments, dtypes, problem, chunks, vocab_chunk, tolerance, ftz, keep_entries,
                                logits)
    if p is not None and not (0 < p <= 1):
        raise InputError(f"p = {p} is outside (0, 1]", "--p")
    if n is not None and not 1 <= n <= MAX_N:
        raise InputError(f"n = {n}; n must be an integer from 1 to 2**63 - 1", "--n")
    if logits is None:
        for used, what in ((labels is not None, "labels"), (key is not None, "key"),
                           (labels_key is not None, "labels_key")):
            if used:
                raise InputError(f"{what} needs logits", f"--{what.replace('_', '-')}")
    names = _names(experiments, list(EXPERIMENTS), "experiment", "--experiment")
    chosen = [EXPERIMENTS[x] for x in names or (("softmax_ce",) if logits is not None
                                                 else [e.name for e in DEFAULT_EXPERIMENTS])]
    given = {e.name for e in chosen}
    for used, option, needs in ((p is not None or n is not None, "--p / --n", "likelihood"),
                                (logits is not None, "--logits", "softmax_ce")):
        if used and needs not in given:
            raise InputError(f"{option} sets {needs} cases, but {needs} is not among the experiments chosen "
                             "with -e", option.split(" ")[0])
    cases = {}
    if p is not None or n is not None:
        cases["likelihood"] = iid(0.1 if p is None else p, 100 if n is None else n)
    if loss_options is not None:
        from .experiments import linear_ce, softmax_ce_variants

        if not given & {"softmax_ce_variants", "linear_ce"}:
            raise InputError("the loss options set softmax_ce_variants or linear_ce cases, but neither is among the "
                             "experiments chosen with -e", "--reduction")
        if "softmax_ce_variants" in given:
            cases["softmax_ce_variants"] = softmax_ce_variants.with_options(softmax_ce_variants.default_cases(),
                                                                            loss_options)
        if "linear_ce" in given:  # its loss methods (and the per-block z-loss) under the options
            cases["linear_ce"] = linear_ce.with_options(linear_ce.default_cases(), loss_options)
            chosen = [linear_ce.with_options_experiment() if e.name == "linear_ce" else e for e in chosen]
    formats = _formats(dtypes)
    user = None
    if logits is not None:
        user = _user(logits, labels, key, labels_key, ignore_index)
        if dtypes is None and user.source.format:
            formats = (format_or_policy(user.source.format),)
            user.notes.append(f"-d {user.source.format}: the format the logits are stored in (choose others with -d)")
        chosen = [e for e in chosen if e.name != "softmax_ce"]
    comparison = engine.compare(chosen, formats, cases, tolerance=tolerance, ftz=ftz) if chosen else None
    if user is None:
        return CompareResult(comparison)
    from .analysis import streaming

    collector = _collector(rows, int(user.keep.sum()) * len(formats) * len(streaming.SOFTMAX_CE.methods), on_rows)
    try:
        summary = streaming.summarize(user.source, user.labels, user.keep, formats, tolerance=tolerance, ftz=ftz,
                                      on_rows=collector if collector is not None else on_rows)
    except MemoryError:  # the whole-file arrays, a block, or a worker's results
        raise user.source.out_of_memory("compute the losses of") from None
    summary.notes.extend(user.notes + [n for n in policy_notes(formats) if not comparison or n not in comparison.notes])
    return CompareResult(comparison, summary, user.text, None if collector is None else collector.columns())


def _compare_problem(experiments, dtypes, problem, chunks, vocab_chunk, tolerance, ftz, keep, logits) -> CompareResult:
    """compare -e linear_ce --problem PATH (see :func:`compare`)."""
    from .analysis import linear_bulk
    from .io.problem import open_problem

    names = _names(experiments, list(EXPERIMENTS), "experiment", "--experiment") or ["linear_ce"]
    if names != ["linear_ce"]:
        raise InputError("--problem sets linear_ce's inputs; choose -e linear_ce alone", "--problem")
    if logits is not None:
        raise InputError("--problem and --logits cannot be combined: --problem gives linear_ce hidden, weight and "
                         "labels", "--problem")
    if ftz:
        raise InputError("--ftz does not apply to --problem (the bulk path models no flush-to-zero)", "--ftz")
    for value, option, low in ((chunks, "--chunks", 1), (vocab_chunk, "--vocab-chunk", 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low):
            raise InputError(f"{option} = {value!r}; a positive integer is required", option)
    formats = _formats(dtypes, default=(FORMATS["bfloat16"], format_or_policy("bf16@fp32")))
    for fmt in formats:
        why = linear_bulk.supported(fmt)
        if why is not None:
            raise InputError(f"-d {fmt.name}: --problem runs formats of at most 16 bits, float32, float64 and their "
                             f"policies; not {why}", "--dtype")
    opened = open_problem(problem)
    if chunks is not None and chunks > opened.tokens:
        raise InputError(f"--chunks = {chunks} is more than the {opened.tokens:,} tokens", "--chunks")
    result = linear_bulk.run(opened, formats,
                             chunks=min(linear_bulk.DEFAULT_CHUNKS, opened.tokens) if chunks is None else chunks,
                             vocab_chunk=linear_bulk.DEFAULT_VOCAB_CHUNK if vocab_chunk is None else vocab_chunk,
                             tolerance=tolerance, keep=keep)
    result.notes.extend(policy_notes(formats))
    return CompareResult(None, linear=result)


def thresholds(experiments: str | Sequence[str] | None = None, dtypes=None, *, families: Sequence[str] | None = None,
               p: float = 0.1, ftz: bool = False, tolerance: float | None = None) -> ThresholdsResult:
    """The exact first failure of every method along every family (see :mod:`stabilitylab.analysis.thresholds`).
    ``families``: names (``iid``) or ``experiment/family`` of the chosen experiments (default: all)."""
    from .analysis import thresholds as _thresholds

    chosen = _experiments(experiments)
    _tolerance(tolerance)
    if p is None or not (0 < p <= 1):
        raise InputError(f"p = {p} is outside (0, 1]", "--p")
    known = {f"{e.name}/{f.name}" for e in chosen for f in (*e.families, *e.block_families)}
    short = {k.split("/")[1] for k in known}
    picked = [families] if isinstance(families, str) else list(families or ())
    for name in picked:
        if name not in known and name not in short:
            raise InputError(f"no family {name!r} in the chosen experiments; valid: {', '.join(sorted(known))}",
                             "--family")
    formats = _formats(dtypes)
    settings = Settings(p=p, ftz=ftz)
    rows = _thresholds.thresholds(chosen, formats, settings, tolerance, set(picked) or None)
    return ThresholdsResult(rows, formats, settings, tolerance)


def train(scenarios: str | Sequence[str] | None = None, dtypes=None, *, steps: int | None = None,
          lr: float | None = None, seed: int | None = None) -> TrainResult:
    """Train softmax / logistic regression with SGD, every operation rounded to the format (see
    :mod:`stabilitylab.training.train`).  ``scenarios``: names or ``"all"`` (default: overflow, saturated,
    loss_scale_none, loss_scale_static); ``steps`` / ``lr`` / ``seed`` override the scenario's."""
    from .training import train as _train

    problem = _train.check_settings(steps, lr)
    if problem:
        raise InputError(problem, "--steps" if problem.startswith("steps") else "--lr")
    if seed is not None and not 0 <= seed <= 2**32 - 1:
        raise InputError(f"seed = {seed}; it must be an integer from 0 to 2**32 - 1", "--seed")
    names: list[str] = []
    for name in [scenarios] if isinstance(scenarios, str) else list(scenarios or ()):
        if name.strip().lower() == "all":
            names += list(_train.SCENARIOS)
        elif name in _train.SCENARIOS:
            names.append(name)
        else:
            raise InputError(f"unknown scenario {name!r}; valid: {', '.join(_train.SCENARIOS)}, all", "--scenario")
    formats = _formats(dtypes)
    policies = [f.name for f in formats if f.is_policy]
    if policies:  # (its weights, gradients and updates would each need a format of their own: not modelled)
        raise InputError(f"train simulates one format per run; precision policies ({', '.join(policies)}) are not "
                         f"supported; choose from {', '.join(FORMATS)}", "--dtype")
    chosen = {x: _train.with_settings(_train.SCENARIOS[x], steps, lr, seed)
              for x in dict.fromkeys(names or _train.DEFAULT_SCENARIOS)}
    runs = [r for s in chosen.values() for r in _train.run_scenario(s, list(formats))]
    return TrainResult(runs, chosen, _train.findings(runs))


def adapters_table() -> list[dict[str, Any]]:
    """The built-in targets: name, experiment, formats, gradient, installed (with the library's version)."""
    from .auditing import adapters

    out = []
    for a in adapters.ADAPTERS.values():
        versions = {lib: adapters.library_version(lib) for lib in a.requires}
        out.append({"target": a.name, "experiment": a.experiment, "formats": list(a.formats),
                    "gradient": a.grad is not None, "installed": a.installed,
                    "versions": versions, "extra": a.extra, "computes": a.formula})
    return out


def trace(target=None, dtype="bfloat16", *, rows: int | None = None, backward: bool = True,
          tolerance: float | None = None, model_file: str | None = None, inputs_file: str | None = None):
    """Trace a PyTorch model in low-precision formats (see :mod:`stabilitylab.tracing`).

    ``trace("model.py:build", dtype=["bf16", "fp16"], rows=4)`` runs one step (forward, and backward when the
    step returns a scalar loss) of the target in each format and returns a :class:`TraceResult`;
    ``with stabilitylab.trace(dtype="bf16") as t: loss = model(x); loss.backward()`` traces the block, then
    ``t.summary``, ``t.findings``, ``t.to_json()``.  ``model_file`` / ``inputs_file``: a TorchScript module
    and a weights-only batch file instead of a target (the command line's ``--model`` / ``--inputs``)."""
    from . import tracing

    if model_file is not None or inputs_file is not None:
        if model_file is None or inputs_file is None:
            raise InputError("model_file and inputs_file go together", "--model")
        return tracing.run(None, tracing.formats_of(dtype), rows=rows, backward=backward, tolerance=tolerance,
                           model_file=model_file, inputs_file=inputs_file)
    return tracing.trace(target, dtype, rows=rows, backward=backward, tolerance=tolerance)


def headroom(target, dtype=None, *, rows: int | None = None, model_file: str | None = None,
             inputs_file: str | None = None):
    """``stabilitylab trace --headroom``: "can this model run in fp16 / fp8 / MXFP4?" from one float32 forward
    with a hook on every module (no shadow): each module's output amax against each format's max (margin in
    binades), the fraction of its nonzeros below the smallest normal and flushed to 0, and for block formats the
    fraction flushed by the block scale (:mod:`stabilitylab.tracing.headroom`).  ``dtype`` None: fp16, bf16, e4m3,
    e5m2, mxfp8, mxfp4, nvfp4."""
    from . import tracing

    if (model_file is None) != (inputs_file is None):
        raise InputError("model_file and inputs_file go together", "--model")
    return tracing.run_headroom(target, dtype, rows=rows, model_file=model_file, inputs_file=inputs_file)


def __getattr__(name: str):
    if name == "TraceResult":
        from .tracing import TraceResult

        return TraceResult
    raise AttributeError(f"module 'stabilitylab.api' has no attribute {name!r}")
