"""Gradients with respect to the logits, one component per case (used by ``audit --grad``).

``softmax_ce_grad``: d/dx_c of -log softmax(x)_y = softmax(x)_c - [c == y].
``binary_ce_grad``:  d/dz_c of the summed BCE = sigmoid(z_c) - y_c.

A case is a row of logits, its label(s) and a component ``c``: the audit calls
the target's gradient on whole rows and keeps component c, so each component
gets its own status.  :func:`components` turns loss cases into gradient cases:
for softmax rows the components at the label, the argmax and the argmin (the
one that vanishes when the prediction is confident, the largest, the smallest);
for binary rows every component (at most ``BINARY_COMPONENTS``).  The families
are the loss experiments' families with ``c`` = the label (softmax) or 0 (binary).

These experiments are not in the registry of ``compare``: they exist so that a
framework's autograd has something exact to be measured against, and simulated
forms to be told apart by ``resembles``:

* softmax: ``naive_softmax`` (exp(x) / sum exp(x) - onehot), ``shifted_softmax``
  (exp(z) / sum exp(z), z = x - max), ``exp_log_softmax`` (exp(z_c - log sum exp(z)) -
  onehot: the backward of log_softmax + nll_loss), ``exp_log_softmax_log1p`` (the same
  with the log1p form of the log-sum-exp);
* binary: ``sigmoid_minus_y`` (1 / (1 + exp(-z)) - y) and ``stable_sigmoid_minus_y``
  (the sigmoid branched on the sign of z).

The formulas are the kernels of :mod:`.grad_kernels`, evaluated at the case's component.
"""

from __future__ import annotations

from dataclasses import dataclass

import mpmath
import numpy as np

from ..numerics.arith import Arith
from . import grad_kernels
from .base import Batch, Experiment, Family, Method, Rows, Truth
from .binary_ce import BINARY_CE, Binary
from .softmax_ce import SOFTMAX_CE, _two_diff

__all__ = ["SOFTMAX_CE_GRAD", "BINARY_CE_GRAD", "components", "BINARY_COMPONENTS"]

BINARY_COMPONENTS = 8


@dataclass(frozen=True)
class GradLogits(Batch):
    names: tuple[str, ...]
    logits: np.ndarray
    labels: np.ndarray
    widths: np.ndarray
    component: np.ndarray


@dataclass(frozen=True)
class GradBinary(Batch):
    names: tuple[str, ...]
    logits: np.ndarray
    labels: np.ndarray
    widths: np.ndarray
    component: np.ndarray


def components(cases):
    """Gradient cases from loss cases (see the module docstring for which components)."""
    rows, comps = [], []
    names = []
    binary = isinstance(cases, Binary)
    for i, name in enumerate(cases.names):
        w = int(cases.widths[i])
        x = cases.logits[i, :w]
        if binary:
            chosen = list(range(min(w, BINARY_COMPONENTS)))
        else:
            finite = np.where(np.isnan(x), -np.inf, x)
            chosen = sorted({int(cases.labels[i]), int(np.argmax(finite)), int(np.argmin(np.where(np.isnan(x), np.inf,
                                                                                                  x)))})
        for c in chosen:
            rows.append(i)
            comps.append(c)
            names.append(f"{name},grad[{c}]")
    rows = np.array(rows, dtype=np.int64)
    cls = GradBinary if binary else GradLogits
    return cls(tuple(names), cases.logits[rows], cases.labels[rows], cases.widths[rows],
               np.array(comps, dtype=np.int64))


# ------------------------------------------------------------------ softmax
@dataclass(frozen=True)
class LoadedGrad(Rows):
    logits: np.ndarray
    labels: np.ndarray
    component: np.ndarray


def load(arith: Arith, cases) -> LoadedGrad:
    labels = cases.labels if cases.labels.dtype.kind in "iu" else arith.const(cases.labels)
    return LoadedGrad(arith.load(cases.logits), labels, cases.component)


def _onehot(a: Arith, x: LoadedGrad):
    return a.const((x.component == x.labels).astype(np.float64))


def naive_softmax(a: Arith, x: LoadedGrad):
    return grad_kernels.softmax_minus_onehot(a, x.logits, _onehot(a, x), x.component)


def shifted_softmax(a: Arith, x: LoadedGrad):
    return grad_kernels.softmax_minus_onehot(a, x.logits, _onehot(a, x), x.component, shift=True)


def exp_log_softmax(a: Arith, x: LoadedGrad):
    return grad_kernels.exp_log_softmax_minus_onehot(a, x.logits, _onehot(a, x), x.component)


def exp_log_softmax_log1p(a: Arith, x: LoadedGrad):
    return grad_kernels.exp_log_softmax_minus_onehot(a, x.logits, _onehot(a, x), x.component, log1p=True)


def softmax_rows(x: LoadedGrad):
    logits = x.logits.astype(np.float64)
    return [(tuple(r), int(y), int(c)) for r, y, c in zip(logits.tolist(), x.labels.tolist(), x.component.tolist())]


def exact_softmax_grad(logits: tuple[float, ...], label: int, c: int):
    """softmax(x)_c - [c == y], exact to DIGITS digits (limits where an input is infinite)."""
    x = [mpmath.mpf(v) for v in logits]
    if any(mpmath.isnan(v) for v in x):
        return mpmath.mpf("nan")
    xc = x[c]
    if c == label:  # -(sum_{j != y} e^(x_j - x_y)) / (1 + that sum): no cancellation
        if mpmath.isinf(xc):
            return mpmath.mpf("nan") if any(v == xc for j, v in enumerate(x) if j != c) else (
                mpmath.mpf(0) if xc > 0 else mpmath.mpf(-1))
        s = mpmath.fsum(mpmath.exp(v - xc) for j, v in enumerate(x) if j != c)
        return mpmath.mpf(-1) if mpmath.isinf(s) else -s / (1 + s)
    if mpmath.isinf(xc):
        return mpmath.mpf("nan") if any(v == xc for j, v in enumerate(x) if j != c) else (
            mpmath.mpf(1) if xc > 0 else mpmath.mpf(0))
    t = mpmath.fsum(mpmath.exp(v - xc) for v in x)
    return mpmath.mpf(0) if mpmath.isinf(t) else 1 / t


def fast_softmax_grad(x: LoadedGrad):
    X = x.logits.astype(np.float64)
    m = X.max(axis=1, keepdims=True)
    hi, lo = _two_diff(X, m)
    handled = np.all(np.isfinite(X), axis=1)
    hi, lo = np.where(handled[:, None], hi, 0.0), np.where(handled[:, None], lo, 0.0)
    terms = np.exp(hi.astype(np.longdouble)) * np.exp(lo.astype(np.longdouble))
    total = terms.sum(axis=1)
    c = x.component[:, None]
    own = np.take_along_axis(terms, c, axis=1)[:, 0]
    others = total - own
    mine = x.component == x.labels
    value = np.where(mine, -(others / total), own / total)
    zero = mine & (X.shape[1] == 1)
    return value, zero, handled


def _softmax_families():
    out = []
    for f in SOFTMAX_CE.families:
        def cases(d, settings, base=f.cases):
            b = base(d, settings)
            return GradLogits(b.names, b.logits, b.labels, b.widths, b.labels.copy())
        out.append(Family(f.name, f.parameter, f"{f.description}; gradient component at the label", cases))
    return tuple(out)


SOFTMAX_CE_GRAD = Experiment(
    name="softmax_ce_grad",
    title="Gradient of softmax cross-entropy with respect to the logits",
    question="Is d/dx_c of -log softmax(x)_y = softmax(x)_c - [c == y] computed accurately?",
    methods=(
        Method("naive_softmax", "exp(x_c) / sum exp(x) - [c == y]", naive_softmax),
        Method("shifted_softmax", "exp(z_c) / sum exp(z) - [c == y], z = x - max", shifted_softmax),
        Method("exp_log_softmax", "exp(z_c - log sum exp(z)) - [c == y]", exp_log_softmax, stable=True),
        Method("exp_log_softmax_log1p", "exp(z_c - log1p(sum_{i != k} exp(z_i))) - [c == y]",
               exp_log_softmax_log1p, stable=True),
    ),
    default_cases=lambda: components(SOFTMAX_CE.default_cases()),
    load=load,
    truth=Truth(exact_softmax_grad, softmax_rows, fast_softmax_grad),
    families=_softmax_families(),
)


# ------------------------------------------------------------------- binary
def _picked(a: Arith, x: LoadedGrad):
    z = a.pick(x.logits, x.component)
    y = a.pick(x.labels, x.component)
    return z, y


def sigmoid_minus_y(a: Arith, x: LoadedGrad):
    return grad_kernels.sigmoid_minus_y(a, *_picked(a, x))


def stable_sigmoid_minus_y(a: Arith, x: LoadedGrad):
    return grad_kernels.stable_sigmoid_minus_y(a, *_picked(a, x))


def binary_rows(x: LoadedGrad):
    z = np.take_along_axis(x.logits.astype(np.float64), x.component[:, None], axis=1)[:, 0]
    y = np.take_along_axis(x.labels.astype(np.float64), x.component[:, None], axis=1)[:, 0]
    return [(float(a), float(b)) for a, b in zip(z.tolist(), y.tolist())]


def exact_binary_grad(z: float, y: float):
    """sigmoid(z) - y, with 1 - sigmoid(z) = sigmoid(-z) so that no digit cancels."""
    z = mpmath.mpf(z)
    if mpmath.isnan(z):
        return mpmath.mpf("nan")
    y = mpmath.mpf(y)
    if y == 1:
        return -1 / (1 + mpmath.exp(z))
    return 1 / (1 + mpmath.exp(-z)) - y


def fast_binary_grad(x: LoadedGrad):
    z = np.take_along_axis(x.logits.astype(np.float64), x.component[:, None], axis=1)[:, 0]
    y = np.take_along_axis(x.labels.astype(np.float64), x.component[:, None], axis=1)[:, 0]
    handled = (np.abs(z) < 11000) & ((y == 0) | (y == 1))  # exp(|z|) within longdouble's range
    zl = np.where(handled, z, 0.0).astype(np.longdouble)
    value = np.where(y == 1, -1 / (1 + np.exp(zl)), 1 / (1 + np.exp(-zl)))
    return value, np.zeros(len(z), dtype=bool), handled


def _binary_families():
    out = []
    for f in BINARY_CE.families:
        def cases(z, settings, base=f.cases):
            b = base(z, settings)
            return GradBinary(b.names, b.logits, b.labels, b.widths, np.zeros(len(b.names), dtype=np.int64))
        out.append(Family(f.name, f.parameter, f"{f.description}; gradient sigmoid(z) - y", cases))
    return tuple(out)


BINARY_CE_GRAD = Experiment(
    name="binary_ce_grad",
    title="Gradient of binary cross-entropy with respect to the logits",
    question="Is d/dz_c of the summed BCE = sigmoid(z_c) - y_c computed accurately?",
    methods=(
        Method("sigmoid_minus_y", "1 / (1 + exp(-z)) - y", sigmoid_minus_y),
        Method("stable_sigmoid_minus_y", "sigmoid branched on the sign of z, minus y", stable_sigmoid_minus_y,
               stable=True),
    ),
    default_cases=lambda: components(BINARY_CE.default_cases()),
    load=load,
    truth=Truth(exact_binary_grad, binary_rows, fast_binary_grad),
    families=_binary_families(),
)
