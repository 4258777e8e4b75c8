"""Audit real code: a framework kernel or a user's function, through the same machinery.

A *target* becomes one more :class:`~stabilitylab.experiments.base.Method`: its
kernel calls the target through :meth:`Arith.external` (whole batches, the
result rounded to the format, no IEEE event observed; ``black_box=True``), so an
audit is ``dataclasses.replace(SOFTMAX_CE, methods=(target,))`` run by the same
:func:`engine.compare` (default cases + the bug-report corpus, or the user's
logits), the same threshold search (every family; exhaustive for formats of at
most 16 bits, else bisection and point scans with honest ``exact`` flags), the
same exact references, renderers and baseline keys.

While it runs, the method's ``observe`` hook (a :class:`Recorder`) sees every
batch: it runs the :func:`candidates` (the experiment's simulated methods) on the
same format-rounded inputs, for ``resembles`` (per candidate, the share of points
where its output is bit-identical to the target's and within 1 ulp of it, on the
case rows and on the threshold points apart; the match is decided on the case rows:
:data:`MATCH_SHARE`) and for "rows the target fails that a simulated method gets
right", and keeps the witnesses (per source and status, the first failing input
and the worst one).  Beside the default cases it runs seeded realistic rows
(:func:`realistic_audit_cases`), for ``resembles`` only.

On a user's logits (:func:`run_bulk`) the rows go through the same streaming path as
``compare --logits`` (:func:`stabilitylab.analysis.streaming.summarize`: chunks of rows,
the fast reference with its bound and the mpmath fallback, the one status rule), with
the target as one more method beside the simulated ones: counts, error-bit histogram,
worst and first failing rows, and per simulated method the rows where its value equals
the target's (``resembles``) and the rows only one of the two fails (``versus``).  The
witnesses among those rows are computed again on just those rows.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
import io
import os
import signal
import sys
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis import streaming
from ..analysis.engine import Comparison, compare, evaluate
from ..analysis.outcome import METHOD_FAILURES, STATUSES, Outcome, classify
from ..analysis.thresholds import Threshold, family_thresholds
from ..errors import AuditError, TargetTimeout, Terminated, described
from ..experiments.base import Experiment, Method, Settings
from ..experiments.binary_ce import BINARY_CE
from ..experiments.binary_ce import concat as concat_binary
from ..experiments.softmax_ce import SOFTMAX_CE, Logits
from ..experiments.softmax_ce import concat as concat_logits
from ..io.usercode import is_file, load_callable
from ..numerics.agreement import identical, within_one_ulp, within_tolerance
from ..numerics.arith import Arith, TargetError
from ..numerics.formats import EVERY_FORMAT, FORMATS, Format
from ..numerics.policies import format_or_policy
from . import adapters

__all__ = ["AuditError", "Target", "Witness", "Agreement", "Candidate", "Resemblance", "Versus", "Audit", "resolve",
           "run", "run_bulk", "PROTOCOLS", "audit_experiment", "candidates", "MATCH_SHARE", "WIDE_ROWS",
           "GradientEntries", "gradient_entries", "GRADIENT_ENTRIES"]

PROTOCOLS = {
    "softmax_ce": "f(logits (rows, K), labels (rows,) int64) -> loss (rows,)",
    "binary_ce": "f(logits (rows, K), labels (rows, K) of 0/1) -> loss (rows,), summed over K",
    "cast": "f(x (rows,) float32, dtype: str, the format's name) -> x stored in the format (rows,)",
    "linear_ce": "f(hidden (N, D), weight (V, D), labels (N,) int64) -> loss (N,), per token",
}
GRAD_PROTOCOL = "f(logits (rows, K), labels) -> d(loss)/d(logits) (rows, K)"
LINEAR_GRAD_PROTOCOL = ("f(hidden (N, D), weight (V, D), labels (N,) int64) -> (d sum(loss)/d hidden (N, D), "
                        "d sum(loss)/d weight (V, D))")
ARGUMENTS = {"softmax_ce": 2, "binary_ce": 2, "linear_ce": 3, "cast": 2}  # arguments a protocol's function takes


def protocol(experiment: str, grad: bool) -> str:
    """The calling convention of a target of ``experiment`` (its gradient with ``grad``)."""
    if grad:
        return LINEAR_GRAD_PROTOCOL if experiment == "linear_ce" else GRAD_PROTOCOL
    return PROTOCOLS[experiment]
WIDE_WITNESS = 2**15  # default cases this wide are always witnesses (Recorder._keep_wide)


# ----------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """What is audited.

    ``fn`` follows the experiment's protocol (:data:`PROTOCOLS`; with ``grad`` it
    returns the gradient with respect to the logits).  ``spec`` is how a
    standalone test imports it again: an adapter name, ``module:function`` or
    ``path/to/file.py:function`` (None for a callable that cannot be imported by
    name).  ``environment``: the framework's version and device.
    """

    name: str
    experiment: str
    fn: Callable = field(compare=False, hash=False)
    formats: tuple[str, ...]
    formula: str
    environment: dict[str, str] = field(compare=False, hash=False)
    spec: str | None = None
    adapter: adapters.Adapter | None = None
    grad: bool = False

    @property
    def audited_experiment(self) -> str:
        return f"{self.experiment}_grad" if self.grad else self.experiment


def resolve(target: str | Callable, experiment: str | None = None, grad: bool = False,
            timeout: float | None = None) -> Target:
    """A :class:`Target` from an adapter name, ``module:function``, ``file.py:function`` or a callable.

    ``timeout``: seconds, or None (no limit): each call of the target, and the import of a user's module,
    that runs longer is stopped (:func:`_time_limit`; a call's rows become ``error`` rows, the import or
    the first call an :class:`AuditError`).  It needs SIGALRM and the main thread (else an
    :class:`AuditError`); the value is checked by the caller (:func:`stabilitylab.api.audit`)."""
    if timeout is not None:
        _check_time_limit()
    if isinstance(target, Target):
        return target if timeout is None else replace(target, fn=_limited(target.fn, timeout))
    if callable(target):
        return _user_target(target, _spec_of(target), experiment, grad, timeout)
    if not isinstance(target, str) or not target.strip():
        raise AuditError(f"target {target!r} is neither an adapter name, module:function, file.py:function "
                         "nor a callable")
    if target in adapters.ADAPTERS:
        return _adapter_target(adapters.ADAPTERS[target], experiment, grad, timeout)
    if ":" not in target:
        known = ", ".join(adapters.ADAPTERS)
        raise AuditError(f"unknown target {target!r}; give a built-in adapter ({known}), module:function or "
                         "path/to/file.py:function (see stabilitylab audit --list)")
    return _user_target(_load_user_function(target, timeout), target, experiment, grad, timeout)


def _adapter_target(adapter: adapters.Adapter, experiment: str | None, grad: bool,
                    timeout: float | None = None) -> Target:
    if experiment is not None and experiment != adapter.experiment:
        raise AuditError(f"{adapter.name} is a {adapter.experiment} target; -e {experiment} does not apply "
                         f"(leave -e out, or give -e {adapter.experiment})")
    if grad and adapter.grad is None:
        raise AuditError(f"{adapter.name} has no gradient: --grad works for torch, jax and optax targets")
    try:
        fn = adapter.callable(grad)
    except adapters.MissingLibrary as exc:
        raise AuditError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a broken installation: one line
        raise AuditError(f"{adapter.name}: importing {adapter.library} failed: {described(exc)}") from None
    env = {}
    for lib in adapter.requires:
        env[lib] = adapters.library_version(lib) or "unknown"
    env["device"] = "cpu"
    if adapter.library in ("jax", "optax"):
        import jax
        env["device"] = str(jax.devices()[0].platform)
    if timeout is not None:
        fn = _limited(fn, timeout)
    return Target(adapter.name, adapter.experiment, fn, adapter.formats, adapter.formula, env, adapter.name,
                  adapter, grad)


def _user_target(fn: Callable, spec: str | None, experiment: str | None, grad: bool,
                 timeout: float | None = None) -> Target:
    if experiment is None:
        raise AuditError("name the protocol of a user function with -e softmax_ce, -e binary_ce, -e linear_ce or "
                         f"-e cast (softmax_ce: {PROTOCOLS['softmax_ce']}; binary_ce: {PROTOCOLS['binary_ce']}; "
                         f"linear_ce: {PROTOCOLS['linear_ce']}; cast: {PROTOCOLS['cast']})")
    if experiment not in PROTOCOLS:
        raise AuditError(f"-e {experiment}: a user function follows the softmax_ce, binary_ce, linear_ce or cast "
                         "protocol")
    if grad and experiment != "linear_ce":
        raise AuditError("--grad works for torch, jax and optax adapters and for a user function of the linear_ce "
                         f"protocol ({LINEAR_GRAD_PROTOCOL}): another user function's gradient is not known to "
                         "stabilitylab")
    if not callable(fn):
        raise AuditError(f"{spec} is not callable (it is a {type(fn).__name__})")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None  # builtins without a signature: the probe call decides
    if signature is not None:
        try:
            signature.bind(*[None] * ARGUMENTS[experiment])
        except TypeError:
            calls = {"linear_ce": "f(hidden, weight, labels)", "cast": "f(x, dtype)"}
            call = calls.get(experiment, "f(logits, labels)")
            raise AuditError(f"{spec or _name_of(fn)}{signature} cannot be called as {call}; the "
                             f"{experiment} protocol is {PROTOCOLS[experiment]}") from None
    name = spec or _name_of(fn)
    env = {"device": "not known (a user function runs where it chooses)"}
    # every format an experiment can run in: not the scale formats, which -d refuses (policies.chosen)
    formats = tuple(f.name for f in EVERY_FORMAT)
    return Target(name, experiment, _guarded(fn, timeout), formats, f"user function {name}", env, spec, None, grad)


class TargetExit(Exception):
    """A user function (or its module) tried to end the process (``sys.exit``, ``SystemExit`` or another
    exception that is not an ``Exception``): a failure of the target, reported as one."""


class _Expired(BaseException):
    """Raised by :func:`_time_limit`'s SIGALRM handler inside the user's code: no ``Exception``, so that the
    user's own ``except Exception`` does not swallow it; it becomes :class:`~stabilitylab.errors.TargetTimeout`
    once the user's code has unwound."""


_MAX_TIMER = 1e9  # seconds: setitimer overflows near 9.2e9 (nanoseconds in an int64); 1e9 s is no limit


def _check_time_limit() -> None:
    """An :class:`AuditError` where :func:`_time_limit` cannot work: no SIGALRM / setitimer (Windows), or not
    the main thread (Python runs signal handlers there only)."""
    if not hasattr(signal, "SIGALRM") or not hasattr(signal, "setitimer"):
        raise AuditError(f"--timeout needs SIGALRM, which this platform ({sys.platform}) does not have; "
                         "leave --timeout out")
    if threading.current_thread() is not threading.main_thread():
        raise AuditError("--timeout works on the main thread only (it uses SIGALRM); audit from the main "
                         "thread or leave --timeout out")


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Any:
    """Stop the code inside after ``seconds`` (None: no limit) with :class:`~stabilitylab.errors.TargetTimeout`
    ("took longer than 5 s (--timeout)").

    ``signal.setitimer(ITIMER_REAL)`` and a SIGALRM handler raising :class:`_Expired`; on the way out the
    timer is stopped and the previous handler and timer are restored (a previous timer with the time spent
    here taken off; one already due fires at once).  The handler raises once: an alarm that arrives after the
    code returned (before the timer was stopped) still counts as a timeout, and code that swallows
    :class:`_Expired` (a bare ``except``) runs on but its call is a timeout all the same.  Python runs the
    handler between bytecodes: a sleep or a wait is interrupted, a single long call into C code (a native
    kernel) is stopped only when it returns.  Outside the main thread or without SIGALRM,
    :class:`~stabilitylab.errors.TargetError` (refused earlier by :func:`_check_time_limit`)."""
    if seconds is None:
        yield
        return
    try:
        _check_time_limit()
    except AuditError as exc:
        raise TargetError(str(exc)) from None
    fired, message = [False], f"took longer than {seconds:g} s (--timeout)"

    def expire(signum, frame) -> None:
        if not fired[0]:
            fired[0] = True
            raise _Expired(message)

    previous = signal.signal(signal.SIGALRM, expire)
    before, started = (0.0, 0.0), time.monotonic()
    try:
        try:
            before = signal.setitimer(signal.ITIMER_REAL, min(max(seconds, 1e-6), _MAX_TIMER))
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)  # an alarm due just now raises here: caught below
        if fired[0]:  # the code swallowed _Expired
            raise _Expired(message)
    except _Expired:
        raise TargetTimeout(message) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
        if before[0] > 0:
            left = before[0] - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), before[1])


def _limited(fn: Callable, seconds: float) -> Callable:
    """``fn`` run under :func:`_time_limit` (a built-in adapter's callable: no other guard)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            with _time_limit(seconds):
                return fn(*args, **kwargs)
        except _Expired as exc:  # due between the timer's start and the with block's (see _user_code)
            raise TargetTimeout(str(exc)) from None
    return call


@contextlib.contextmanager
def _user_code(timeout: float | None = None) -> Any:
    """Around user code: what it prints to standard output goes to standard error (stdout is the report,
    ``--format json``), an attempt to end the process becomes :class:`TargetExit`, and with ``timeout``
    (seconds) a run longer than that becomes :class:`~stabilitylab.errors.TargetTimeout` (:func:`_time_limit`).
    Ctrl-C and :class:`~stabilitylab.errors.Terminated` pass."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), _time_limit(timeout):
            yield
    except (Exception, KeyboardInterrupt, Terminated):
        raise
    except _Expired as exc:  # due in the few bytecodes of _time_limit's with statement outside its try
        raise TargetTimeout(str(exc)) from None
    except BaseException as exc:  # noqa: BLE001 - SystemExit and the like: the target's failure
        code = f"({exc.code!r})" if isinstance(exc, SystemExit) else f": {exc}" if str(exc) else ""
        raise TargetExit(f"{type(exc).__name__}{code} inside the target (it tried to end the process)") from None
    finally:
        text = printed.getvalue()
        if text:
            try:
                sys.stderr.write(text)
            except (OSError, ValueError):  # stderr closed: the target's output is dropped
                pass


def _guarded(fn: Callable, timeout: float | None = None) -> Callable:
    """``fn`` run under :func:`_user_code` (with its time limit)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with _user_code(timeout):
            return fn(*args, **kwargs)
    return call


def _failure(exc: BaseException) -> str:
    """How a failure of user code is quoted: its type and first line; a timeout as its message ("it took
    longer than 5 s (--timeout)")."""
    return f"it {exc}" if isinstance(exc, TargetTimeout) else described(exc)


def _name_of(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _spec_of(fn: Callable) -> str | None:
    """module:qualname if the callable can be imported back by that name."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def _load_user_function(spec: str, timeout: float | None = None) -> Callable:
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise AuditError(f"target {spec!r}: expected module:function or path/to/file.py:function")
    return load_callable(where, name, AuditError, lambda: _user_code(timeout), _failure)


# ------------------------------------------------------------- experiments
def audit_experiment(name: str) -> Experiment:
    """The simulated experiment an audit of protocol ``name`` runs beside the target.

    linear_ce: :data:`~stabilitylab.experiments.linear_ce.LINEAR_CE` with its loss methods only (the mean loss
    of a problem); linear_ce_grad: with its dL/dW methods only, the entry ``weight_entry`` of each problem
    (where token chunks accumulate; the other gradient methods measure other quantities)."""
    from ..experiments import linear_ce, logit_gradient
    from ..experiments.cast import CAST

    table = {"softmax_ce": SOFTMAX_CE, "binary_ce": BINARY_CE, "cast": CAST,
             "softmax_ce_grad": logit_gradient.SOFTMAX_CE_GRAD, "binary_ce_grad": logit_gradient.BINARY_CE_GRAD,
             "linear_ce": linear_ce_audit(linear_ce.LINEAR_CE, False),
             "linear_ce_grad": linear_ce_audit(linear_ce.LINEAR_CE, True)}
    try:
        return table[name]
    except KeyError:
        raise AuditError(f"no audit experiment {name!r}; valid: {', '.join(table)}") from None


def linear_ce_audit(experiment: Experiment, grad: bool) -> Experiment:
    """The linear_ce experiment as an audit compares a target with it: the loss methods (no ``truth`` of their
    own), or with ``grad`` the methods whose truth is dL/dW (that truth becomes the experiment's)."""
    from ..experiments import linear_ce

    if not grad:
        return replace(experiment, methods=tuple(m for m in experiment.methods if m.truth is None))
    truth = linear_ce.GRAD_WEIGHT
    methods = tuple(replace(m, truth=None) for m in experiment.methods if m.truth is truth)
    return replace(experiment, name="linear_ce_grad", truth=truth, methods=methods,
                   title="Linear cross-entropy: the gradient dL/dW at one entry",
                   question="Which way of accumulating dL/dW[v, j] = (1/N) sum_n (p_nv - [v = y_n]) h_nj loses it?")


def default_audit_cases(experiment: str):
    """The experiment's default cases followed by the bug-report corpus; softmax_ce and its gradient also the
    wide rows of :func:`softmax_ce.wide_cases` (a gradient audit runs at most three components of each row,
    :func:`logit_gradient.components`: the label, the largest and the smallest logit; each component is
    ``p_i - [i = y]`` with ``p_i = exp(x_i - lse)``, so a denominator summed sequentially in the format
    shifts every one of them, and only wide rows show it)."""
    from ..experiments import cast, corpus, linear_ce, logit_gradient, softmax_ce

    if experiment == "cast":
        return cast.concat([cast.CAST.default_cases(), corpus.corpus("cast")])
    base = experiment.removesuffix("_grad")
    if base == "linear_ce":
        return linear_ce.concat([linear_ce.default_cases(), wide_linear_cases()])
    simulated = SOFTMAX_CE if base == "softmax_ce" else BINARY_CE
    concat = concat_logits if base == "softmax_ce" else concat_binary
    batches = [simulated.default_cases(), corpus.corpus(base)]
    if base == "softmax_ce":
        batches.append(softmax_ce.wide_cases())
    cases = concat(batches)
    return logit_gradient.components(cases) if experiment.endswith("_grad") else cases


def wide_linear_cases():
    """The rows of :func:`softmax_ce.wide_cases` (32768 classes) as linear_ce problems: one token, D = 1,
    hidden [[1]], weight the row as a column (so the logits are the row, exactly), the same label; dL/dW at
    the last class, ``p_v h = exp(x_v - lse)``, inversely proportional to the denominator (at the label,
    ``p_y - 1`` is within 0.2 % of -1 on these rows whatever the denominator, so it would tell nothing).
    A denominator summed sequentially in
    bfloat16 / float16 loses its small terms there (8.40 comes out 6.24), and a target that gets them right
    keeps a *wide* witness of each (:meth:`Recorder._keep_wide`)."""
    from ..experiments import linear_ce, softmax_ce

    rows = softmax_ce.wide_cases()
    return linear_ce.concat([linear_ce.problem([[1.0]], row[:, None], [int(y)], name, weight_entry=(len(row) - 1, 0))
                             for row, y, name in zip(rows.logits, rows.labels, rows.names)])


def case_widths(cases) -> np.ndarray | None:
    """Classes per case: a logits batch's ``widths``; a linear_ce problem's vocabulary V; else None."""
    widths = getattr(cases, "widths", None)
    if widths is None and hasattr(cases, "weight"):
        widths = np.array([w.shape[0] for w in cases.weight], dtype=np.int64)
    return widths


GRAD_REALISTIC = {"rows": 200, "wide_rows": 2}  # a gradient audit's realistic rows (each gives up to 3 components)


def realistic_audit_cases(experiment: str):
    """Seeded realistic rows beside the default cases, for ``resembles`` only (no witnesses, not listed with
    the cases), as batches of one width each: :func:`softmax_ce.realistic_cases` /
    :func:`binary_ce.realistic_cases`; for a gradient audit the components
    (:func:`logit_gradient.components`) of fewer of them (:data:`GRAD_REALISTIC`)."""
    from ..experiments import binary_ce, logit_gradient, softmax_ce

    if not experiment.startswith(("softmax_ce", "binary_ce")):
        return []  # a cast: its default cases and families are the whole story; each linear_ce case is a whole
                   # problem and its default cases hold the random one
    module = softmax_ce if experiment.startswith("softmax_ce") else binary_ce
    if not experiment.endswith("_grad"):
        return module.realistic_cases()
    return [logit_gradient.components(b) for b in module.realistic_cases(rows=GRAD_REALISTIC["rows"],
                                                                          wide_rows=GRAD_REALISTIC["wide_rows"])]


def realistic_text(experiment: str) -> str:
    """What :func:`realistic_audit_cases` holds, in words, from the generators' parameters."""
    from ..experiments import binary_ce, softmax_ce

    grad = experiment.endswith("_grad")
    if experiment.startswith("softmax_ce"):
        r = softmax_ce.REALISTIC
        narrow, wide, k, wide_k = r["rows"], r["wide_rows"], r["classes"], softmax_ce.WIDE
        what = "classes, logits N(0, {s:g}**2), labels uniform"
    else:
        r = binary_ce.REALISTIC
        narrow, wide, k, wide_k = r["rows"], r["wide_rows"], r["outputs"], r["wide_outputs"]
        what = "outputs, logits N(0, {s:g}**2), labels 1 with probability sigmoid(logit)"
    if grad:
        narrow, wide = GRAD_REALISTIC["rows"], GRAD_REALISTIC["wide_rows"]
    text = (f"{narrow:,} rows of {k} and {wide} of {wide_k:,} " + what.format(s=r["sigma"]) +
            f", seed {r['seed']}")
    return text + (", as gradient components" if grad else "")


def _kernel(fn: Callable, grad: bool, experiment: str = "softmax_ce"):
    if experiment == "cast":
        # the wide input (float64 holding float32 values, not format values: external hands it on as it is)
        # reaches the target as float32, the cast's input, with the format's name
        def kernel(a, x):
            name = a.fmt.name
            return a.external(lambda v: fn(v.astype(np.float32), name), x.x)
        return kernel
    if experiment == "linear_ce":
        per_case = _linear_ce_case(fn, grad)

        def kernel(a, x):
            return a.external(per_case, x.hidden, x.weight, x.labels, x.weight_entry)
        return kernel
    if grad:
        def kernel(a, x):
            width = x.logits.shape[1]
            return a.pick(a.external(fn, x.logits, x.labels, shape=(width,)), x.component)
    else:
        def kernel(a, x):
            return a.external(fn, x.logits, x.labels)
    return kernel


def _linear_ce_case(fn: Callable, grad: bool) -> Callable:
    """The linear_ce target on a batch of problems (hidden (c, N, D), weight (c, V, D), labels (c, N),
    weight_entry (c, 2)), one call per problem, one value per problem as the experiment measures it:

    * the loss: the mean of the target's N per-token losses, summed exactly (``math.fsum`` of its format
      values) and divided by N in float64; the audit rounds that once to the format (N = 1: the target's
      value itself);
    * the gradient: the target's dL/dW of sum(loss) at ``weight_entry`` divided by N (exact for the powers of
      two N of the cases), rounded once to the format: dL/dW of the mean loss.
    """
    import math

    def call(hidden, weight, labels, entry):
        out = np.empty(len(hidden), dtype=np.float64)
        for c in range(len(hidden)):
            n = hidden[c].shape[0]
            result = fn(hidden[c], weight[c], labels[c])
            if grad:
                if not isinstance(result, (tuple, list)) or len(result) != 2:
                    raise TargetError(f"it returned {type(result).__name__}; the gradient protocol is "
                                      f"{LINEAR_GRAD_PROTOCOL}")
                gw = np.asarray(result[1])
                if gw.shape != weight[c].shape:
                    raise TargetError(f"its d/d weight has shape {gw.shape}, not {weight[c].shape}")
                out[c] = float(gw[int(entry[c, 0]), int(entry[c, 1])]) / n
            else:
                loss = np.asarray(result)
                if loss.shape != (n,):
                    raise TargetError(f"it returned shape {loss.shape}, not ({n},): the loss of each token")
                out[c] = math.fsum(loss.astype(np.float64).tolist()) / n
        return out
    return call


# ------------------------------------------------------- every gradient entry (linear_ce --grad)
GRADIENT_ENTRIES = 2**15
"""A linear_ce gradient audit checks every entry of both gradients of the problems whose d/d weight and d/d hidden
have at most this many entries together (the default problems and the corpus; the 32768-class wide rows, 32769
entries each, are left out: their d/d weight entry is what the cases measure)."""


@dataclass(frozen=True)
class GradientEntries:
    """Every entry of one gradient of sum(loss) of a linear_ce target (``gradient``: "weight", d/d weight
    (V, D), or "hidden", d/d hidden (N, D)) over the audit's small problems (:data:`GRADIENT_ENTRIES`, each
    distinct problem once) in one format, against its exact value (mpmath on the format's inputs), each entry's
    status by the black-box rule: ``counts`` per status; ``worst_bits`` the largest error in bits (NaN if no
    entry has a finite one); ``witness`` the worst entry (the worst failing one if any fails): ``case``,
    ``entry`` (row, column), ``value``, ``exact`` (text), ``error_bits``, ``status``."""

    dtype: str
    gradient: str
    problems: int
    entries: int
    counts: dict[str, int]
    worst_bits: float
    witness: dict[str, Any] | None

    @property
    def failing(self) -> int:
        return sum(n for status, n in self.counts.items() if status != "ok")


def gradient_entries(target: Target, formats: Sequence[Format], cases, tolerance: float | None) -> list:
    """:class:`GradientEntries` of d/d weight and d/d hidden per format: the target called once per distinct small
    problem (through :meth:`Arith.external`: format inputs, its outputs rounded to the format), every entry
    against :func:`~stabilitylab.experiments.linear_ce.exact_sum_gradients`."""
    import mpmath

    from ..experiments import linear_ce
    from ..numerics import reference

    seen, keep = set(), []
    for i, (h, w, y) in enumerate(zip(cases.hidden, cases.weight, cases.labels)):
        key = (h.tobytes(), w.tobytes(), y.tobytes(), h.shape, w.shape)
        if w.size + h.size <= GRADIENT_ENTRIES and key not in seen:
            seen.add(key)
            keep.append(i)
    small = cases.take(np.array(keep, dtype=np.int64))
    out = []
    for fmt in formats:
        parts: dict[str, list] = {"weight": [], "hidden": []}  # (case name, shape, values, Exact, errors)
        for group in small.groups():
            batch = small.take(group)
            a = Arith(fmt, len(batch))
            x = linear_ce.load(a, batch)
            (n, d), v = x.hidden.shape[1:], x.weight.shape[1]

            def flat(hidden, weight, labels, n=n, d=d, v=v):
                rows = []
                for c in range(len(hidden)):
                    result = target.fn(hidden[c], weight[c], labels[c])
                    if not isinstance(result, (tuple, list)) or len(result) != 2:
                        raise TargetError(f"it returned {type(result).__name__}; the gradient protocol is "
                                          f"{LINEAR_GRAD_PROTOCOL}")
                    gh, gw = (np.asarray(g, dtype=np.float64) for g in result)
                    if gw.shape != (v, d) or gh.shape != (n, d):
                        raise TargetError(f"its gradients have shapes {gh.shape}, {gw.shape}, not ({n}, {d}), "
                                          f"({v}, {d})")
                    rows.append(np.concatenate([gw.ravel(), gh.ravel()]))
                return np.stack(rows)

            values = a.external(flat, x.hidden, x.weight, x.labels, shape=(v * d + n * d,))
            with mpmath.workdps(reference.DIGITS):
                for c, row in enumerate(linear_ce.exact_rows(x)):
                    exact = reference.from_mpmath(linear_ce.exact_sum_gradients(*row[:3]))
                    error = a.errors.get(c, "")
                    parts["weight"].append((batch.names[c], (v, d), values[c, :v * d], exact.take(np.arange(v * d)),
                                            error))
                    parts["hidden"].append((batch.names[c], (n, d), values[c, v * d:],
                                            exact.take(np.arange(v * d, v * d + n * d)), error))
        for gradient, items in parts.items():
            out.append(_entries_summary(fmt, gradient, items, tolerance))
    return out


def _entries_summary(fmt: Format, gradient: str, items: list, tolerance: float | None) -> GradientEntries:
    """Statuses, the largest error in bits and the witness entry of ``items`` (case name, gradient shape,
    the target's values, their Exact, the problem's error message or "")."""
    counts: dict[str, int] = defaultdict(int)
    worst_bits, witness, worst_key, total = -np.inf, None, None, 0
    for name, shape, values, exact, error in items:
        arith = Arith(fmt, len(values))
        if error:
            arith.errors.update({i: error for i in range(len(values))})
        o = classify(fmt, values, exact, arith, tolerance, black_box=True)
        total += len(values)
        for status in o.status.tolist():
            counts[status] += 1
        bits = np.where(np.isfinite(o.error_bits), o.error_bits, -np.inf)
        worst_bits = max(worst_bits, float(bits.max()))
        failing = o.status != "ok"
        i = int(np.lexsort((bits, failing))[-1])  # the worst failing entry, else the worst entry
        key = (bool(failing[i]), float(bits[i]))
        if worst_key is None or key > worst_key:
            worst_key = key
            witness = {"case": name, "entry": [int(k) for k in np.unravel_index(i, shape)],
                       "value": float(o.value[i]), "exact": exact.take(np.array([i])).text()[0],
                       "error_bits": float(o.error_bits[i]), "status": str(o.status[i])}
    return GradientEntries(fmt.name, gradient, len(items), total, dict(sorted(counts.items())),
                           worst_bits if np.isfinite(worst_bits) else float("nan"), witness)


# --------------------------------------------------------------- recording
@dataclass(frozen=True)
class Witness:
    """An input on which the target failed: the first one (by case order or parameter) of its
    status (``kind`` "first"), or the worst (largest error) for ``inaccurate`` ("worst"); or a
    *guard*: the first input where the simulated method M fails and the target does not
    ("guard:M"), which tells a stable formula from an unstable one in a regression test; or, in
    formats of at most 16 bits, a default case of at least ``WIDE_WITNESS`` classes the target
    gets right ("wide:<i>": a sum that loses small terms fails there, see
    :func:`softmax_ce.wide_cases`).
    ``inputs``: the format-rounded inputs as float64 lists (int for labels); the exact value
    is ``(hi + lo) * 2**scale`` (``zero``: exactly 0), ``rounded`` its correctly rounded
    value in the format."""

    source: str  # "cases" or a family name
    dtype: str
    status: str
    kind: str  # first | worst | guard:<simulated method> | wide:<case index>
    case: str
    parameter: float | int | None
    inputs: dict[str, Any]
    value: float
    exact: str
    reference: float
    hi: float
    lo: float
    scale: int
    zero: bool
    rounded: float
    rel_error: float
    error_bits: float
    error: str = ""


MATCH_SHARE = 0.90
"""A candidate *matches* the target when its output is within 1 ulp of the target's on at least this share
of the case rows and, when there are any, within the tolerance (relative) of it on at least this share of
the wide case rows (:data:`WIDE_ROWS`); below it the audit says "no simulated formula matches" (it still
lists the best candidates and their shares)."""
WIDE_ROWS = 1024
"""Case rows of at least this many classes (outputs) are also counted apart as the *wide* case rows: the
order of a long sum shows there, not on narrow rows (a sequential bfloat16 sum of 50 terms is within 1 ulp
of the pairwise one on ~98 % of N(0, 3) rows), and there two orders of a correct sum may differ by several
ulps (torch's float32 sum of 32768 terms: up to 9) while staying far within the tolerance, which a
sequential float16 / bfloat16 sum is not."""
CASE_SOURCES = ("cases", "realistic")  # recorder sources whose rows are case rows (the rest: threshold families)


def candidates(experiment: Experiment, fmt: Format) -> list[tuple[Method, Format]]:
    """The simulated formulas an audit in format ``fmt`` compares the target with, as (method, the format it
    computes in): every simulated method of ``experiment`` in ``fmt``, then under the precision policies a
    kernel on ``fmt`` inputs commonly runs with (:func:`policy_candidates`).  A candidate in another format
    has its output rounded once to ``fmt`` before it is compared, and is shown as ``method in <policy>``
    (:func:`candidate_label`)."""
    policies = () if experiment.truth.storage else policy_candidates(fmt)  # (a cast computes nothing)
    return [(m, computed) for computed in (fmt, *policies) for m in experiment.methods]


def policy_candidates(fmt: Format) -> tuple[Format, ...]:
    """The policies a framework kernel on ``fmt`` inputs is compared with besides ``fmt`` itself: every
    operation in float32 (``fmt@float32``: what torch's CPU kernels and fused GPU kernels do on 16-bit
    inputs) and sums accumulated in float32 (``fmt+float32``), for formats narrower than float32; every
    operation in float64 for float32.  None for float64 or for a policy (already a choice of arithmetic)."""
    if fmt.is_policy or fmt.name == "float64":
        return ()
    if fmt.name == "float32":
        return (format_or_policy("float32@float64"),)
    return (format_or_policy(f"{fmt.name}@float32"), format_or_policy(f"{fmt.name}+float32"))


def candidate_label(method: Method, computed: Format, fmt: Format) -> str:
    """How a candidate is named: the method's name, with ``in <format>`` when it computes in another
    format than the audit's."""
    return method.name if computed.name == fmt.name else f"{method.name} in {computed.name}"


@dataclass(frozen=True)
class Agreement:
    """The target beside one candidate over a set of points: ``points`` run, ``identical`` (bit for bit:
    NaN = NaN, -0 = +0), ``within_ulp`` (identical or adjacent in the output format) and ``within_tolerance``
    (relative difference at most the audit's tolerance) counts (see :mod:`stabilitylab.numerics.agreement`),
    and their shares of ``points`` (NaN when there are none)."""

    points: int = 0
    identical: int = 0
    within_ulp: int = 0
    within_tolerance: int = 0

    @property
    def identical_share(self) -> float:
        return self.identical / self.points if self.points else float("nan")

    @property
    def within_ulp_share(self) -> float:
        return self.within_ulp / self.points if self.points else float("nan")

    @property
    def within_tolerance_share(self) -> float:
        return self.within_tolerance / self.points if self.points else float("nan")


@dataclass(frozen=True)
class Candidate:
    """One simulated formula (``method`` computed in ``format``; ``label`` as shown) beside the target in one
    output format: its :class:`Agreement` on the case rows (``cases``), on the wide ones among them
    (``wide``, rows of at least :data:`WIDE_ROWS` classes) and on the threshold-family points
    (``thresholds``)."""

    method: str
    format: str
    label: str
    cases: Agreement
    wide: Agreement
    thresholds: Agreement

    @property
    def score(self) -> float:
        """The share that decides a match: the smaller of the within-1-ulp share on the case rows and the
        within-tolerance share on the wide case rows (the first alone when there are no wide ones; 0 with no
        case rows)."""
        if not self.cases.points:
            return 0.0
        if not self.wide.points:
            return self.cases.within_ulp_share
        return min(self.cases.within_ulp_share, self.wide.within_tolerance_share)

    @property
    def matches(self) -> bool:
        """Within 1 ulp on at least :data:`MATCH_SHARE` of the case rows, and within the tolerance on at least
        that share of the wide case rows."""
        return self.score >= MATCH_SHARE


def _rank(c: Candidate, stable: bool, i: int) -> tuple:
    """Best first: the candidates that match, then by bit-identical share on the case rows, then on the
    threshold points, then by the match score (a format of 8 significant bits puts many formulas within 1
    ulp of a target; the bit-identical share tells which arithmetic it runs); where the points cannot tell
    candidates apart (every float64 formula rounds to the same float32 on realistic rows), the recommended
    (``stable``) formulation first, then in listed order."""
    share = lambda a: -float(np.nan_to_num(a.identical_share, nan=0.0))  # noqa: E731
    return (not c.matches, share(c.cases), share(c.thresholds), -c.score, not stable, i)


@dataclass(frozen=True)
class Resemblance:
    """Which simulated formula the target resembles in one format, decided on the case rows (the default
    cases, the bug-report corpus and the realistic rows, or the user's rows), not on the threshold points.

    ``candidates``: every candidate, best first (largest :attr:`Candidate.score`, then largest bit-identical
    share on the case rows, then the experiment's order).  ``method``: the best candidate's label if it
    matches (:attr:`Candidate.matches`), else None: "no simulated formula matches".  ``best`` names it either
    way, ``share`` is its within-1-ulp share on the ``points`` case rows.  ``rows``: per case row in the order
    run, ``width`` (classes), ``target`` (the target's value) and each candidate's value under its label
    (float64 arrays; empty on a user's logits file, whose rows :attr:`AuditResult.rows` holds)."""

    dtype: str
    method: str | None
    best: str
    share: float
    points: int
    candidates: tuple[Candidate, ...]
    rows: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    match_share: float = MATCH_SHARE  # the rule's constants, for the renderers
    wide_rows: int = WIDE_ROWS

    @property
    def matches(self) -> bool:
        return self.method is not None


@dataclass(frozen=True)
class Versus:
    """On the audited cases (not the threshold scans), in one format: rows where the target
    fails (inaccurate or worse) but the simulated ``method`` is ok / range, and the reverse."""

    dtype: str
    method: str
    target_only: int
    method_only: int
    examples: tuple[str, ...]  # the first few cases the target fails and the method does not


class Recorder:
    """The target method's ``observe`` hook: resembles tallies, versus counts and witnesses.

    ``witnesses=False``: keep no witnesses (for a caller that shows none, as the report): the points of a
    threshold search's dense windows, which give witnesses only, are not looked at, and the simulated
    methods' statuses are classified only where versus needs them (the default cases).  Resembles,
    versus and the thresholds are the same either way."""

    EXAMPLES = 5

    def __init__(self, simulated: Experiment, tolerance: float | None, witnesses: bool = True):
        self.simulated, self.tolerance = simulated, tolerance
        self.keeps_witnesses = witnesses
        self.source = "cases"
        self._order: dict[str, int] = {}
        # per format, per candidate label, per part ("cases", "wide", "thresholds"):
        # [points, identical, within 1 ulp, within the tolerance]
        self.tally: dict[str, dict[str, dict[str, list[int]]]] = defaultdict(
            lambda: defaultdict(lambda: {"cases": [0, 0, 0, 0], "wide": [0, 0, 0, 0], "thresholds": [0, 0, 0, 0]}))
        self.candidates: dict[str, list[tuple[str, str, str]]] = {}  # format -> (method, format, label) in order
        self.rows: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
        self.versus: dict[tuple[str, str], list] = {}
        self.found: dict[tuple[str, str, str, str], tuple[Any, Witness]] = {}
        # set by the threshold search while it scans a dense window below a failure found: those
        # points give witnesses but are left out of ``resembles`` (a share over spread points)
        self.windowed = False

    def start(self, source: str, names: Sequence[str] = ()) -> None:
        self.source = source
        self._order = {name: i for i, name in enumerate(names)}

    def add(self, fmt: Format, label: str, part: str, points: int, same: int, near: int, close: int) -> None:
        """Add counts to a candidate's tally (``part``: cases, wide or thresholds)."""
        entry = self.tally[fmt.name][label][part]
        for i, count in enumerate((points, same, near, close)):
            entry[i] += count

    def tolerance_of(self, fmt: Format) -> float:
        return fmt.default_tolerance if self.tolerance is None else self.tolerance

    def __call__(self, fmt: Format, cases, inputs, outcome: Outcome) -> None:
        if self.windowed and not self.keeps_witnesses:
            return  # a dense window's points give witnesses only
        n = len(outcome.value)
        v = outcome.value
        case_rows = self.source in CASE_SOURCES
        # realistic rows count for resembles only
        witnesses = self.source != "realistic" and self.keeps_witnesses
        widths = case_widths(cases)
        wide = (np.asarray(widths) >= WIDE_ROWS) if case_rows and widths is not None else np.zeros(n, dtype=bool)
        if case_rows and not self.windowed:
            kept = self.rows[fmt.name]
            kept["width"].append(np.full(n, -1) if widths is None else np.asarray(widths, dtype=np.int64))
            kept["target"].append(np.asarray(v, dtype=np.float64))
        target_fails = np.isin(outcome.status, METHOD_FAILURES)
        keys = None
        listed = self.candidates.setdefault(fmt.name, [])
        for m, computed in candidates(self.simulated, fmt):
            label = candidate_label(m, computed, fmt)
            if (m.name, computed.name, label) not in listed:
                listed.append((m.name, computed.name, label))
            # its status gives guard witnesses, and versus on the default cases
            guard = m.truth is None and computed.name == fmt.name and (witnesses or self.source == "cases")
            if self.windowed and not (guard and self._may_guard(fmt, cases, outcome, target_fails, m.name)):
                continue  # a dense window's points count for witnesses only
            arith = Arith(computed, n)
            with np.errstate(all="ignore"):
                sim = np.asarray(arith.deliver(m.kernel(arith, inputs))).astype(np.float64)
                if computed.name != fmt.name:
                    sim = fmt.round(sim).astype(np.float64)  # rounded once to the output format
            if not self.windowed:
                same, near = identical(sim, v), within_one_ulp(fmt, sim, v)
                close = within_tolerance(self.tolerance_of(fmt), sim, v)
                self.add(fmt, label, "cases" if case_rows else "thresholds", n, int(same.sum()), int(near.sum()),
                         int(close.sum()))
                if wide.any():
                    self.add(fmt, label, "wide", int(wide.sum()), int(same[wide].sum()), int(near[wide].sum()),
                             int(close[wide].sum()))
                if case_rows:
                    self.rows[fmt.name][label].append(sim)
            if not guard:
                continue
            status = classify(fmt, sim, outcome.exact, arith, self.tolerance,
                              storage=self.simulated.truth_of(m).storage).status
            method_fails = np.isin(status, METHOD_FAILURES)
            guards = np.flatnonzero(method_fails & ~target_fails)
            if self.source == "cases":
                entry = self.versus.setdefault((fmt.name, m.name), [0, 0, []])
                only = np.flatnonzero(target_fails & ~method_fails)
                entry[0] += len(only)
                entry[1] += len(guards)
                entry[2].extend(cases.names[i] for i in only[: self.EXAMPLES].tolist())
            if guards.size and witnesses:
                keys = self._keys(cases, np.arange(n)) if keys is None else keys
                j = int(guards[np.argmin(keys[guards])])
                self._keep(fmt, cases, inputs, outcome, str(outcome.status[j]), f"guard:{m.name}", j, float(keys[j]),
                           smaller=True)
        if not witnesses:
            return
        self._keep_wide(fmt, cases, inputs, outcome)
        failing = np.flatnonzero(target_fails)
        if not failing.size:
            return
        keys = self._keys(cases, failing)
        for status in np.unique(outcome.status[failing]).tolist():
            mine = outcome.status[failing] == status
            idx, key = failing[mine], keys[mine]
            j = int(np.argmin(key))
            self._keep(fmt, cases, inputs, outcome, status, "first", int(idx[j]), float(key[j]), smaller=True)
            bits = outcome.error_bits[idx]
            if status == "inaccurate" and np.isfinite(bits).any():
                j = int(np.nanargmax(np.where(np.isfinite(bits), bits, -np.inf)))
                self._keep(fmt, cases, inputs, outcome, status, "worst", int(idx[j]), float(bits[j]), smaller=False)

    def _may_guard(self, fmt, cases, outcome, target_fails, method: str) -> bool:
        """Whether a guard witness of ``method`` from these points could be kept: False when, for every status
        the target has on its points that do not fail, that status's guard witness is held already at a key at
        most the smallest key of those points (whichever point the method then failed on, :meth:`_keep` would
        keep the one held)."""
        right = np.flatnonzero(~target_fails)
        if not right.size:
            return False
        keys = None
        for status in np.unique(outcome.status[right]).tolist():
            held = self.found.get((self.source, fmt.name, status, f"guard:{method}"))
            if held is None:
                return True
            keys = self._keys(cases, right) if keys is None else keys
            if float(keys[outcome.status[right] == status].min()) < held[0]:
                return True
        return False

    def _keep_wide(self, fmt, cases, inputs, outcome) -> None:
        """In formats of at most 16 bits, a witness of every default case of at least ``WIDE_WITNESS``
        classes where the target is right (ok or range; kind "wide:<i>"): it must stay right, and a sum
        that loses the small terms of a wide row (sequential, in the format) is wrong there while every
        narrow case and every simulated formula (pairwise sums) is fine.  (A row the target fails has
        witnesses of its status already; in float32 a sequential sum of these rows is within the
        tolerance, and each witness costs the whole row in --format json.)"""
        widths = case_widths(cases)
        if self.source != "cases" or widths is None or fmt.dtype.itemsize > 2:
            return
        right = ~np.isin(outcome.status, METHOD_FAILURES)
        for i in np.flatnonzero((np.asarray(widths) >= WIDE_WITNESS) & right).tolist():
            order = self._order.get(cases.names[i], len(self._order))
            self._keep(fmt, cases, inputs, outcome, str(outcome.status[i]), f"wide:{order}", i, float(order),
                       smaller=True)

    def _keys(self, cases, rows: np.ndarray) -> np.ndarray:
        """The order of rows within their source: the parameter (families) or the case's position."""
        values = getattr(cases.names, "values", None)
        if values is not None:
            return np.asarray(values, dtype=np.float64)[rows]
        return np.array([self._order.get(cases.names[i], len(self._order)) for i in rows.tolist()], dtype=np.float64)

    def _keep(self, fmt, cases, inputs, outcome, status, kind, row, key, smaller: bool) -> None:
        slot = (self.source, fmt.name, status, kind)
        held = self.found.get(slot)
        if held is not None and (key >= held[0] if smaller else key <= held[0]):
            return
        self.found[slot] = (key, self._witness(fmt, cases, inputs, outcome, status, kind, row))

    def _witness(self, fmt, cases, inputs, outcome, status, kind, i) -> Witness:
        values = getattr(cases.names, "values", None)
        parameter = None
        if values is not None:
            p = values[i]
            parameter = int(p) if np.issubdtype(np.asarray(values).dtype, np.integer) else float(p)
        row = {}
        for f in fields(inputs):
            a = getattr(inputs, f.name)
            if isinstance(a, np.ndarray):
                item = a[i]
                if np.issubdtype(a.dtype, np.integer):
                    row[f.name] = item.tolist()
                else:
                    row[f.name] = np.asarray(item).astype(np.float64).tolist()
        ex = outcome.exact.take(np.array([i]))
        errors = outcome.errors
        return Witness(self.source, fmt.name, status, kind, cases.names[i], parameter, row, float(outcome.value[i]),
                       ex.text()[0], float(outcome.reference[i]), float(ex.hi[0]), float(ex.lo[0]), int(ex.scale[0]),
                       bool(ex.zero[0]), float(ex.rounded(fmt)[0]), float(outcome.rel_error[i]),
                       float(outcome.error_bits[i]), "" if errors is None else str(errors[i]))

    # ---------------------------------------------------------- summaries
    def resembles(self, formats: Sequence[Format]) -> list[Resemblance]:
        """Per format run: every candidate's agreement, best first, and the match decided on the case rows
        (see :class:`Resemblance`)."""
        out = []
        for fmt in formats:
            listed = self.candidates.get(fmt.name)
            if not listed:
                continue
            tally = self.tally[fmt.name]
            found = [Candidate(method, computed, label, Agreement(*tally[label]["cases"]),
                               Agreement(*tally[label]["wide"]), Agreement(*tally[label]["thresholds"]))
                     for method, computed, label in listed]
            stable = {m.name for m in self.simulated.methods if m.stable}
            order = sorted(range(len(found)), key=lambda i: _rank(found[i], found[i].method in stable, i))
            ranked = tuple(found[i] for i in order)
            best = ranked[0]
            kept = self.rows.get(fmt.name, {})
            rows = {k: np.concatenate(parts) for k, parts in kept.items() if parts}
            out.append(Resemblance(fmt.name, best.label if best.matches else None, best.label,
                                   float(np.nan_to_num(best.cases.within_ulp_share, nan=0.0)), best.cases.points,
                                   ranked, rows))
        return out

    def versus_list(self, formats: Sequence[Format]) -> list[Versus]:
        out = []
        for fmt in formats:
            for m in self.simulated.methods:
                entry = self.versus.get((fmt.name, m.name))
                if entry is not None:
                    out.append(Versus(fmt.name, m.name, entry[0], entry[1], tuple(entry[2][: self.EXAMPLES])))
        return out

    def witnesses(self) -> list[Witness]:
        def order(w: Witness):
            kind = {"first": 0, "worst": 1}.get(w.kind, 2)
            return (w.source != "cases", w.source, list(FORMATS).index(w.dtype), kind, w.status, w.kind)
        return sorted((w for _, w in self.found.values()), key=order)


# ------------------------------------------------------------------ running
@dataclass
class Audit:
    """Everything an audit found (rendered by render.model.audit_sections / jsonout.audit_document)."""

    target: Target
    experiment: Experiment  # the simulated experiment with the target as its only method
    simulated: Experiment  # the experiment whose simulated methods the target is compared with
    formats: tuple[Format, ...]
    comparison: Comparison
    thresholds: list[Threshold]
    resembles: list[Resemblance]
    versus: list[Versus]
    witnesses: list[Witness]
    tolerance: float | None = None
    notes: list[str] = field(default_factory=list)
    skipped: tuple[str, ...] = ()  # formats asked for that the target does not support
    bulk: streaming.Summary | None = None  # on a user's logits (run_bulk): the rows' summary; comparison is empty
    bulk_text: str = ""  # what the rows are (file, tensor, shape, dtype)
    gradient_entries: list["GradientEntries"] = field(default_factory=list)  # linear_ce --grad: every entry


def probe(target: Target) -> None:
    """Call the target once on a plain batch; a call that raises, or a result of the wrong
    shape or type, is an :class:`AuditError` (the target cannot be audited at all)."""
    fmt = FORMATS["float32"] if "float32" in target.formats else FORMATS[target.formats[0]]
    if target.experiment == "linear_ce":
        _probe_linear(target, fmt)
        return
    if target.experiment == "cast":
        logits, labels = np.array([1.0, 0.5], dtype=np.float32), fmt.name
        shown = f"x [1, 0.5] (float32), dtype {fmt.name!r}"
    elif target.experiment == "softmax_ce":
        logits, labels = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]]), np.array([0, 1], dtype=np.int64)
        shown = "logits [[0, 0, 0], [1, 0, -1]], labels [0, 1]"
    else:
        logits, labels = np.array([[0.0, 1.0], [-1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])
        shown = "logits [[0, 1], [-1, 0]], labels [[0, 1], [1, 0]]"
        labels = fmt.round(labels)
    if target.experiment != "cast":
        logits = fmt.round(logits)
    shape = (2, 3 if target.experiment == "softmax_ce" else 2) if target.grad else (2,)
    _probe_call(target, fmt, f"batch ({shown})",
                lambda: Arith(fmt, 2)._converted(target.fn(logits, labels), shape))


def _probe_linear(target: Target, fmt: Format) -> None:
    """:func:`probe` for linear_ce: hidden [[1, 0], [0, 1]], weight [[1, 0], [0, 1], [0, 0]], labels [0, 1]."""
    hidden = fmt.round(np.array([[1.0, 0.0], [0.0, 1.0]]))
    weight = fmt.round(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    labels = np.array([0, 1], dtype=np.int64)
    shown = "hidden [[1, 0], [0, 1]], weight [[1, 0], [0, 1], [0, 0]], labels [0, 1]"
    call = _linear_ce_case(target.fn, target.grad)
    _probe_call(target, fmt, f"problem ({shown})",
                lambda: call(hidden[None], weight[None], labels[None], np.array([[0, 0]])))


def _probe_call(target: Target, fmt: Format, what: str, call: Callable[[], Any]) -> None:
    """``call()`` (the target on a plain input, its result checked): a result of the wrong shape or type, a
    timeout or an exception is an :class:`AuditError` naming ``what`` was passed and the protocol."""
    rule = f"the {target.experiment} protocol is {protocol(target.experiment, target.grad)}"
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            call()
    except TargetError as exc:
        raise AuditError(f"{target.name}: {exc}; {rule}") from None
    except TargetTimeout as exc:
        raise AuditError(f"{target.name} {exc} on a plain {fmt.name} {what}: raise the limit or leave "
                         "--timeout out") from None
    except Exception as exc:  # noqa: BLE001
        raise AuditError(f"{target.name} raised on a plain {fmt.name} {what}: {described(exc)}; {rule}") from None


def run(target: Target, formats: Sequence[Format], cases=None, families: Sequence[str] | None = None,
        tolerance: float | None = None, search: bool = True,
        progress: Callable[[str], None] = lambda step: None, witnesses: bool = True) -> Audit:
    """Run the audit: cases (default + corpus, or ``cases``), every family's thresholds, resembles, witnesses.

    ``formats`` the target does not support are skipped (listed in ``Audit.skipped``).  ``witnesses=False``:
    none are kept (``Audit.witnesses`` is empty; the rest is the same, see :class:`Recorder`).
    Raises :class:`AuditError` for a target that cannot be audited (probe, wrong
    shape or type of a result).
    """
    chosen, skipped = _supported(target, formats)
    probe(target)
    simulated = audit_experiment(target.audited_experiment)
    recorder = Recorder(simulated, tolerance, witnesses)
    method = target_method(target, recorder)
    own_cases = cases is not None
    if cases is None:
        cases = default_audit_cases(target.audited_experiment)
    elif target.experiment == "linear_ce":
        raise AuditError(f"{target.name}: a linear_ce audit runs the linear_ce problems; it takes no cases")
    elif target.grad:
        from ..experiments import logit_gradient
        cases = logit_gradient.components(cases)
    what = "your cases" if own_cases else "the default cases and inputs from public bug reports"
    experiment = replace(simulated, methods=(method,), facts=None,
                         title=f"{target.name} on {what}",
                         question=f"Protocol {target.audited_experiment}: "
                                  f"{protocol(target.experiment, target.grad)}.")
    recorder.start("cases", cases.names)
    progress("running the cases")
    notes = []
    try:
        comparison = compare([experiment], chosen, {experiment.name: cases}, tolerance=tolerance)
        batches = [] if own_cases else realistic_audit_cases(target.audited_experiment)
        if batches:
            progress("running the realistic rows")
            for batch in batches:
                recorder.start("realistic", batch.names)
                for fmt in chosen:
                    evaluate(experiment, fmt, batch, tolerance=tolerance, fast_reference=True)
            notes.append(f"'Which formula is it?' also counts {sum(len(b) for b in batches):,} realistic rows "
                         f"({realistic_text(target.audited_experiment)}); they are not listed with the cases")
        entries = []
        if target.experiment == "linear_ce" and target.grad:
            progress("checking every gradient entry")
            entries = gradient_entries(target, chosen, cases, tolerance)
        rows = _search(experiment, chosen, families, tolerance, recorder, progress) if search else []
    except TargetError as exc:
        raise AuditError(f"{target.name}: {exc}") from None
    if skipped:
        notes.append(f"{target.name} does not support {', '.join(skipped)} (supported: {', '.join(target.formats)}); "
                     "skipped")
    return Audit(target, experiment, simulated, chosen, comparison, rows, recorder.resembles(chosen),
                 recorder.versus_list(chosen), recorder.witnesses(), tolerance, notes, skipped,
                 gradient_entries=entries)


def _supported(target: Target, formats: Sequence[Format]) -> tuple[tuple[Format, ...], tuple[str, ...]]:
    chosen = tuple(f for f in formats if f.name in target.formats)
    skipped = tuple(f.name for f in formats if f.name not in target.formats)
    if not chosen:
        raise AuditError(f"{target.name} supports {', '.join(target.formats)}; none of "
                         f"{', '.join(f.name for f in formats)} is among them")
    return chosen, skipped


def _search(experiment: Experiment, chosen, families, tolerance, recorder: Recorder, progress) -> list[Threshold]:
    rows: list[Threshold] = []
    for family in experiment.families:
        if families and family.name not in families:
            continue
        recorder.start(family.name)
        progress(f"searching {family.name}")
        for fmt in chosen:
            rows += family_thresholds(experiment, family, fmt, Settings(), tolerance)
    return rows


def run_bulk(target: Target, formats: Sequence[Format], user, families: Sequence[str] | None = None,
             tolerance: float | None = None, search: bool = True,
             progress: Callable[[str], None] = lambda step: None, on_rows: Callable[[dict], None] | None = None
             ) -> Audit:
    """Audit a softmax_ce target on a user's logits of any size (``user``: an
    :class:`~stabilitylab.io.userdata.UserLogits`), chunk by chunk; then the threshold search as :func:`run`.

    The target runs on each chunk's kept rows (``f(logits (rows, K), labels (rows,) int64) -> loss (rows,)``,
    logits in the format's dtype) beside the simulated methods, through
    :func:`stabilitylab.analysis.streaming.summarize` (``Audit.bulk``).  ``on_rows``: as there.
    """
    if target.experiment != "softmax_ce" or target.grad:
        raise AuditError(f"{target.name}: streaming a logits file audits a softmax_ce loss (not its gradient); "
                         f"this target is {target.audited_experiment}")
    chosen, skipped = _supported(target, formats)
    probe(target)
    simulated = SOFTMAX_CE
    recorder = Recorder(simulated, tolerance)
    experiment = replace(simulated, methods=(target_method(target), *simulated.methods), facts=None,
                         title=f"{target.name} on your logits",
                         question=f"Protocol {target.audited_experiment}: {PROTOCOLS[target.experiment]}.")
    progress("running your rows")
    try:
        summary = streaming.summarize(user.source, user.labels, user.keep, chosen, tolerance=tolerance,
                                      experiment=experiment, versus=target.name, on_rows=on_rows)
    except TargetError as exc:
        raise AuditError(f"{target.name}: {exc}") from None
    summary.notes.extend(user.notes)
    wide = summary.classes >= WIDE_ROWS
    for fmt in chosen:
        listed = recorder.candidates.setdefault(fmt.name, [])
        for m, computed in candidates(simulated, fmt):
            if computed.name != fmt.name:  # the streaming path runs the simulated methods in the audit's format
                continue
            listed.append((m.name, computed.name, m.name))
            pair = summary.versus[fmt.name, m.name]
            recorder.add(fmt, m.name, "cases", summary.rows, pair.same, pair.near, pair.close)
            if wide:
                recorder.add(fmt, m.name, "wide", summary.rows, pair.same, pair.near, pair.close)
            if m.truth is None:
                recorder.versus[fmt.name, m.name] = [pair.target_only, pair.method_only,
                                                     [f"row={r}" for r in pair.examples]]
    audited = replace(simulated, methods=(target_method(target, recorder),))
    try:
        _row_witnesses(target, audited, chosen, summary, user, recorder, tolerance)
        thresholds = _search(audited, chosen, families, tolerance, recorder, progress) if search else []
    except TargetError as exc:
        raise AuditError(f"{target.name}: {exc}") from None
    notes = [f"{target.name} ran on {summary.rows:,} rows of {user.text} beside the simulated methods; "
             "'Which formula is it?' counts those rows" + (" and the threshold scans" if thresholds else "")]
    if skipped:
        notes.append(f"{target.name} does not support {', '.join(skipped)} (supported: {', '.join(target.formats)}); "
                     "skipped")
    empty = Comparison((audited,), chosen, [], [], tolerance=tolerance)
    return Audit(target, audited, simulated, chosen, empty, thresholds, recorder.resembles(chosen),
                 recorder.versus_list(chosen), recorder.witnesses(), tolerance, notes, skipped, summary, user.text)


def _row_witnesses(target: Target, audited: Experiment, formats, summary, user, recorder: Recorder,
                   tolerance) -> None:
    """Witnesses among the user's rows: the summary names the candidates (per format, the first row of each
    failing status, the worst inaccurate rows, the first row each simulated method fails and the target does
    not); those rows alone are read and run again, observed by the recorder (it keeps the same witnesses as
    if it had seen every row).  The recorder's tallies of the re-run are dropped."""
    rows: set[int] = set()
    for fmt in formats:
        cell = summary.cells[fmt.name, target.name]
        rows.update(int(r["row"]) for r in cell.first if STATUSES[int(r["status"])] in METHOD_FAILURES)
        rows.update(int(r["row"]) for r in cell.worst if STATUSES[int(r["status"])] == "inaccurate")
        rows.update(p.guard for (f, _), p in summary.versus.items() if f == fmt.name and p.guard is not None)
    if not rows:
        return
    picked = np.array(sorted(rows), dtype=np.int64)
    x = user.source.take(picked).astype(np.float64)
    y = (user.labels[picked] if user.labels is not None
         else np.argmax(np.where(np.isnan(x), -np.inf, x), axis=1))
    names = tuple(f"row={r}" for r in picked.tolist())
    cases = Logits(names, x, y.astype(np.int64), np.full(len(picked), x.shape[1], dtype=np.int64))
    rerun = Recorder(recorder.simulated, tolerance)
    rerun.start("cases", names)
    for fmt in formats:
        evaluate(replace(audited, methods=(target_method(target, rerun),)), fmt, cases, tolerance=tolerance)
    recorder.found.update(rerun.found)


def target_method(target: Target, observe: Callable | None = None) -> Method:
    """The target as a black-box :class:`Method` of its audit experiment."""
    return Method(target.name, target.formula, _kernel(_quiet(target.fn), target.grad, target.experiment),
                  black_box=True,
                  exact_formula=False, observe=observe)


AUDIT_EXPERIMENTS = ("softmax_ce", "binary_ce", "softmax_ce_grad", "binary_ce_grad", "linear_ce", "linear_ce_grad",
                     "cast")

# how a baseline's user targets are allowed to run (named in the line of an entry that was not)
ALLOW_HINT = ("--allow-target PATTERN, or allow_targets = [PATTERN, ...] under [tool.stabilitylab] in a "
              "pyproject.toml beside or above the baseline")


def audit_key(key: str) -> tuple[str, str, str, str] | None:
    """(experiment, family, target, dtype) for an audit entry ``experiment/family/<target>/dtype``:
    the target is a built-in adapter (``torch.cross_entropy``) or a user function
    (``module:function``, ``path/to/file.py:function``: it may hold slashes; a path is relative to the
    baseline's folder, see :func:`baseline_target`)."""
    parts = key.split("/")
    if len(parts) < 4:
        return None
    experiment, family, dtype, target = parts[0], parts[1], parts[-1], "/".join(parts[2:-1])
    if experiment not in AUDIT_EXPERIMENTS or dtype not in FORMATS:
        return None
    e = audit_experiment(experiment)
    if family not in {f.name for f in e.families} or target in e.method_names:
        return None
    if target not in adapters.ADAPTERS and ":" not in target:
        return None
    return experiment, family, target, dtype


def is_user_target(target: str) -> bool:
    """Whether a baseline's target is user code (``module:function``, ``file.py:function``), which a baseline
    runs only when allowed; a built-in adapter imports only its framework."""
    return target not in adapters.ADAPTERS


def target_allowed(target: str, patterns: Sequence[str]) -> bool:
    """A built-in adapter, or a user target matching one of ``patterns`` (:func:`fnmatch.fnmatchcase`,
    against the target as the baseline names it: ``*`` matches any characters, ``/`` included)."""
    return not is_user_target(target) or any(fnmatch.fnmatchcase(target, p) for p in patterns)


def baseline_target(spec: str, folder: str | os.PathLike) -> str:
    """How a baseline in ``folder`` names the target ``spec``: a file target's path relative to that folder
    (``/`` as separator), so that ``check`` finds it from any current directory; adapters and modules as
    they are."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name or not is_user_target(spec) or not is_file(where):
        return spec
    try:
        relative = os.path.relpath(os.path.abspath(where), os.path.abspath(folder))
    except ValueError:  # another drive (Windows): no relative path
        return spec
    return f"{Path(relative).as_posix()}:{name}"


def baseline_thresholds(rows: Sequence[Threshold], folder: str | os.PathLike) -> list[Threshold]:
    """``rows`` keyed as a baseline in ``folder`` holds them (:func:`baseline_target`)."""
    return [r if audit_key(r.key) is None else replace(r, method=baseline_target(r.method, folder)) for r in rows]


def _baseline_resolve(name: str, protocol: str, grad: bool, folder: Path | None, allow: Sequence[str],
                      notes: list[str], hint: str) -> Target:
    """The target a baseline names: an adapter, or (only if ``allow`` matches it) user code, a file's path
    relative to ``folder`` (else, as older baselines wrote it, to the current directory, with a note)."""
    if not is_user_target(name):
        return resolve(name, None, grad)
    if not target_allowed(name, allow):
        raise AuditError(f"not recomputed: {name} is user code, which a baseline runs only when allowed ({hint})")
    where, _, function = name.rpartition(":")
    spec = name
    if where and function and is_file(where) and folder is not None and not Path(where).is_absolute():
        beside = folder / where
        if beside.is_file() or not Path(where).is_file():
            spec = f"{beside}:{function}"
        else:
            notes.append(f"{name}: no such file beside the baseline ({folder}); read from the current directory, "
                         "as older baselines named it (audit it again with --save-baseline to name it relative to "
                         "the baseline)")
    return replace(resolve(spec, protocol, grad), name=name)


def baseline_rows(keys, tolerance: float | None, formats: set[str] | None = None, *,
                  folder: str | os.PathLike | None = None, allow: Sequence[str] = (),
                  notes: list[str] | None = None, hint: str = ALLOW_HINT) -> tuple[list[Threshold], dict[str, str]]:
    """Recompute the audit entries among baseline ``keys`` (``experiment/family/<target>/dtype``).

    Returns the thresholds and, per key that cannot be recomputed (the target is not
    installed or cannot be imported, the format is not supported), why.  Keys of
    simulated methods are ignored; ``formats`` limits the formats recomputed.

    A baseline never runs code it names unless told to: a user target (``module:function``,
    ``file.py:function``) is imported only if it matches a pattern of ``allow`` (:func:`target_allowed`);
    otherwise its keys are not recomputed, and say so and how to allow them (``hint``).  Built-in adapters
    are always recomputed.  A file target's path is relative to ``folder`` (the baseline's), else to the
    current directory (a line in ``notes``).
    """
    notes = [] if notes is None else notes
    where = None if folder is None else Path(os.path.abspath(folder))
    wanted: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for key in keys:
        parts = audit_key(key)
        if parts is not None:
            experiment, family, name, dtype = parts
            if formats is None or dtype in formats:
                wanted[(experiment, name)].add((family, dtype))
    rows: list[Threshold] = []
    problems: dict[str, str] = {}
    for (experiment, name), pairs in sorted(wanted.items()):
        grad, protocol = experiment.endswith("_grad"), experiment.removesuffix("_grad")
        try:
            target = _baseline_resolve(name, protocol, grad, where, allow, notes, hint)
            if target.experiment != protocol:
                raise AuditError(f"{name} is a {target.experiment} target, not {protocol}")
            probe(target)
        except AuditError as exc:
            for family, dtype in pairs:
                problems[f"{experiment}/{family}/{name}/{dtype}"] = str(exc)
            continue
        audited = replace(audit_experiment(experiment), methods=(target_method(target),))
        for family, dtype in sorted(pairs):
            if dtype not in target.formats:
                problems[f"{experiment}/{family}/{name}/{dtype}"] = f"{name} does not support {dtype}"
                continue
            try:
                rows += family_thresholds(audited, audited.family(family), FORMATS[dtype], Settings(), tolerance)
            except TargetError as exc:
                problems[f"{experiment}/{family}/{name}/{dtype}"] = f"{name}: {exc}"
    return rows, problems


def _quiet(fn: Callable) -> Callable:
    """The target with its warnings silenced: a library's RuntimeWarning is not an audit result."""
    def call(*args):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args)
    return call
