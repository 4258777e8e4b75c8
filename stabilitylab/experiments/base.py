"""What an experiment is: data, not a script.

An :class:`Experiment` names a question, its :class:`Method` kernels, how to turn
a batch of cases into format-rounded inputs (``load``) and the exact loss of
those inputs (``reference``).  The engine, thresholds, renderers, report and
check are written once against this shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ..numerics.arith import Arith

__all__ = ["Truth", "ParamNames", "shortest", "Rows", "Batch", "Method", "Experiment", "Family", "Prediction",
           "Settings", "stack_padded"]


def stack_padded(blocks: Sequence[np.ndarray], fill: float) -> np.ndarray:
    """Stack 2-D blocks of rows, padding short rows on the right with ``fill``."""
    width = max(b.shape[1] for b in blocks)
    return np.vstack([np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=fill) for b in blocks])


def shortest(x: float) -> str:
    """The shortest text that round-trips (repr), without a needless ".0": 0.10000001, 100, 1e-05."""
    text = repr(x)
    return text[:-2] if text.endswith(".0") else text


class ParamNames(Sequence):
    """Case names ``<parameter>=<value>`` for a family's batch, formatted on access."""

    def __init__(self, parameter: str, values: np.ndarray):
        self.parameter, self.values = parameter, values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        v = self.values[i]
        if np.issubdtype(self.values.dtype, np.integer):
            return f"{self.parameter}={int(v)}"
        return f"{self.parameter}={shortest(float(v))}"


class Rows:
    """Arrays with one row per case (subclasses are frozen dataclasses).

    ``take(rows)`` selects rows of every array field (and of ``names``); when the
    class has ``widths``, 2-D fields are trimmed to the widest selected row.
    """

    def take(self, rows: np.ndarray):
        rows = np.asarray(rows)
        width = int(self.widths[rows].max()) if hasattr(self, "widths") else None
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "names":
                picked[f.name] = tuple(value[i] for i in rows.tolist())
            elif isinstance(value, np.ndarray):
                value = value[rows]
                picked[f.name] = value[:, :width] if width is not None and value.ndim == 2 else value
            else:
                picked[f.name] = value
        return replace(self, **picked)


class Batch(Rows):
    """Cases of one experiment as arrays, one row per case.

    ``groups()`` splits the rows into sets that kernels can run together: rows
    of the same ``widths`` when the batch has them (no padding value is neutral
    in every format: float8_e4m3fn has no -inf), else all rows.
    """

    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def groups(self) -> list[np.ndarray]:
        widths = getattr(self, "widths", None)
        if widths is not None and len(widths) and not (widths == widths[0]).all():
            # sorted(set()), not np.unique: that imports numpy.ma (~8 ms of a compare)
            return [np.flatnonzero(widths == w) for w in sorted(set(widths.tolist()))]
        return [np.arange(len(self))]


@dataclass(frozen=True)
class Truth:
    """An exact quantity: the mpmath ``reference_fn(*row)`` of each row (a tuple of floats) of
    ``exact_rows(inputs)``, and optionally its vectorized ``fast_reference(inputs)``: the same
    value in longdouble, ``(value, exact-zero mask, rows handled)``; with ``fast_float64`` it
    also takes ``dtype=np.float64`` (inputs of at most 24 bits; error bound
    :func:`stabilitylab.numerics.reference.fast_error`).  ``storage``: the exact value is the input
    itself (a cast): a value the format cannot hold is the failure looked for, so the status rule
    names it ``overflow`` / ``underflow``, never ``range`` (:func:`stabilitylab.analysis.outcome.classify`)."""

    reference_fn: Callable[..., Any]
    exact_rows: Callable[[Any], Sequence[tuple]]
    fast_reference: Callable[[Any], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    fast_float64: bool = False  # fast_reference(inputs, dtype=np.float64) is supported
    storage: bool = False


@dataclass(frozen=True)
class Method:
    """One formulation of the loss.

    ``kernel(arith, inputs) -> loss per case`` does all its arithmetic through
    ``arith`` (so every operation is rounded to the format and its IEEE events
    are recorded).  ``stable`` marks the formulations we recommend.  ``truth``
    overrides the experiment's exact value for a method that computes another
    quantity (the gradient experiment's MSE gradient).  ``exact_formula``: the
    formula, evaluated exactly, is the truth (False for deliberately biased
    forms such as log(y + eps)); the threshold search's error bounds rely on it.

    ``black_box``: the kernel calls code we cannot see (an audited framework
    kernel or a user's function, through :meth:`Arith.external`): no IEEE event
    is observed, so its status is decided from the value alone (see
    :mod:`stabilitylab.analysis.outcome`), and nothing about it can be proven on ranges.
    ``observe(fmt, cases, inputs, outcome)``, optional, is called by
    :func:`stabilitylab.analysis.engine.evaluate` with every batch the method ran on (the
    audit collects witnesses and the ``resembles`` tally there).
    """

    name: str
    formula: str
    kernel: Callable[[Arith, Any], np.ndarray]
    stable: bool = False
    truth: Truth | None = None
    exact_formula: bool = True
    black_box: bool = False
    observe: Callable[..., None] | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class Settings:
    """Knobs shared by families: ``p`` of the iid likelihood family, flush-to-zero, and
    (for predictions) the tolerance in force (None: each format's sqrt(u))."""

    p: float = 0.1
    ftz: bool = False
    tolerance: float | None = None


@dataclass(frozen=True)
class Prediction:
    """An analytic threshold: ``value`` of ``kind`` (first_failure or first_inaccurate),
    derived by ``formula``; measured values within ``slack`` (relative) agree.
    ``proof``: the derivation is exact under the arithmetic model (not an
    estimate), so a measured value equal to it is exact even where the search
    could not verify every value below it."""

    value: float | int
    kind: str
    formula: str
    slack: float = 0.0
    proof: bool = False


@dataclass(frozen=True)
class Family:
    """A one-parameter family of cases that get harder as the parameter grows.

    ``cases(params, settings)`` builds a batch for an array of parameter values.
    The parameter is searched over the integers in ``[lower, 2**62]``
    (``integer``) or over the representable values of the format in
    ``[lower, max]``, or, with ``grid`` (a format name), over that format's values in
    ``[lower, its max]`` whatever the format under test (a cast's float32 inputs).
    ``predict(fmt, method, settings)`` is the analytic threshold, or None where no closed form
    is known.  Every input entry of ``cases`` is monotone in the parameter, and every exact value is monotone
    between the ``turning`` points (the threshold search's interval proofs rely
    on both).

    ``monotone_bias``: names of methods with ``exact_formula`` False whose formula, evaluated exactly on the
    family's (format-rounded) inputs, minus the exact value is a monotone function of the parameter over the
    whole grid (the experiment's module states the proof where it names them).  The threshold search then
    bounds |computed - exact| on a range by the running error bound plus that difference's larger magnitude at
    the range's two ends (:mod:`stabilitylab.analysis.thresholds`, ``_bias_proven``).
    """

    name: str
    parameter: str
    description: str
    cases: Callable[[np.ndarray, Settings], Any]
    integer: bool = False
    lower: float = 0.0
    upper: int | None = None  # integer families: the search range's end (default thresholds.INTEGER_UPPER)
    figure: str = "error_bits"  # what the report plots against the parameter: error_bits or magnitude
    turning: tuple[float, ...] = ()  # parameter values where an exact value of the family may turn (else monotone)
    grid: str | None = None  # the format whose values the parameter runs over (None: the format under test)
    predict: Callable[[Any, str, Settings], Prediction | None] = lambda fmt, method, settings: None
    monotone_bias: tuple[str, ...] = ()  # methods whose (formula - exact value) is monotone in the parameter


@dataclass(frozen=True)
class Experiment:
    """A question, its methods, and how to run them on a batch of cases.

    ``load(arith, cases)`` rounds the cases' inputs to the format (recording
    input events) and returns what kernels take; ``truth`` is the exact loss of
    those inputs (a :class:`Truth`), which every method is measured against
    unless it has its own (:meth:`truth_of`).
    ``facts(formats)``, optional: a table (headers, rows of text) of format facts
    the experiment's question depends on, computed in each format.
    """

    name: str
    title: str
    question: str
    methods: tuple[Method, ...]
    default_cases: Callable[[], Any]
    load: Callable[[Arith, Any], Any]
    truth: Truth
    families: tuple[Family, ...] = field(default=())
    # families searched only under block-scaled storage (``-d mxfp4`` ...: numerics/blockscale.py), whose
    # question is the storage's own (an input flushed by its block's scale); not searched for other formats
    block_families: tuple[Family, ...] = field(default=())
    facts: Callable[[list], tuple[list[str], list[list[str]]]] | None = None
    # runs when no experiment is named (compare, thresholds, check, report); False for an experiment whose
    # exact references cost seconds per format (linear_ce: mpmath over vocabularies up to 2**18), which runs
    # when named (-e linear_ce) and is guarded by a baseline that names it
    default: bool = True

    def method(self, name: str) -> Method:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"unknown method {name!r} of {self.name}; valid: {', '.join(self.method_names)}")

    def truth_of(self, method: Method) -> Truth:
        """The exact quantity ``method`` is measured against: its own truth, else the experiment's."""
        return self.truth if method.truth is None else method.truth

    @property
    def method_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.methods)

    def family(self, name: str) -> Family:
        for f in (*self.families, *self.block_families):
            if f.name == name:
                return f
        raise KeyError(f"unknown family {name!r} of {self.name}; valid: "
                       f"{', '.join(f.name for f in (*self.families, *self.block_families))}")

    def families_for(self, fmt) -> tuple[Family, ...]:
        """The families searched in ``fmt``: :attr:`families`, and :attr:`block_families` under block storage."""
        return (*self.families, *self.block_families) if getattr(fmt, "block", None) else self.families
