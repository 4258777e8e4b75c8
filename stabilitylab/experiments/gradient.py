"""gradient: gradients of the losses, where they vanish or are lost.

A case is a binary logit z = x_0 - x_1 (logits [x_0, x_1]) with target
y = [label == 0]; p = sigmoid(z) = softmax(x)_0.  Methods:

* ``ce_from_probs``        dL/dz of cross-entropy, p - y, with p from the naive
  softmax exp(x_0) / sum exp(x) (article 001's softmax);
* ``ce_from_log_softmax``  p - y with p = exp(log_softmax(x)_0) (log1p form);
* ``ce_sigmoid``           sigmoid(z) - y with the stable sigmoid: 1 / (1 + e) for
  z >= 0, e / (1 + e) for z < 0, e = exp(-|z|) (exp never overflows);
* ``mse_sigmoid``          dL/dz of the squared error (p - y)**2 / 2 on the
  sigmoid output: (p - y) p (1 - p) (same stable sigmoid), the factor
  sigma'(z) = p (1 - p) that makes it vanish when the output saturates (article 004).

The formulas are the kernels of :mod:`.grad_kernels` (the softmax ones at component 0).

Exact references: ``sigmoid(z) - y`` for the three cross-entropy forms,
``(p - y) p (1 - p)`` for ``mse_sigmoid`` (its own :class:`Truth`).

``facts`` adds static loss scaling (Micikevicius et al. 2018): the fraction of
log-normally spread gradient magnitudes that flush to zero or overflow when
multiplied by 1, 2**8, 2**16 or 2**24 and cast to the format.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np

from ..numerics.arith import Arith
from ..numerics.formats import Format
from . import grad_kernels
from .base import Experiment, Family, Method, ParamNames, Settings, Truth
from .softmax_ce import Logits, _two_diff, concat, load, logits_case

__all__ = ["GRADIENT", "LOSS_SCALES", "loss_scaling"]

LOSS_SCALES = (1, 2**8, 2**16, 2**24)
GRADIENT_SAMPLES = 100_000
GRADIENT_SEED = 2018


def _target(a: Arith, x) -> np.ndarray:
    """y = 1 where the label is class 0, else 0, in the format."""
    return a.const((x.labels == 0).astype(np.float64))


def _component0(x) -> np.ndarray:
    return np.zeros(len(x.labels), dtype=np.int64)


def _z(a: Arith, x):
    """z = x_0 - x_1."""
    return a.sub(x.logits[:, 0], x.logits[:, 1])


def ce_from_probs(a: Arith, x):
    return grad_kernels.softmax_minus_onehot(a, x.logits, _target(a, x), _component0(x))


def ce_from_log_softmax(a: Arith, x):
    return grad_kernels.exp_log_softmax_minus_onehot(a, x.logits, _target(a, x), _component0(x), log1p=True)


def ce_sigmoid(a: Arith, x):
    return grad_kernels.stable_sigmoid_minus_y(a, _z(a, x), _target(a, x))


def mse_sigmoid(a: Arith, x):
    return grad_kernels.mse_sigmoid(a, _z(a, x), _target(a, x))


def exact_rows(x):
    logits = x.logits.astype(np.float64)
    return [(float(r[0]), float(r[1]), int(y)) for r, y in zip(logits.tolist(), x.labels.tolist())]


def _sigma(x0, x1):
    return 1 / (1 + mpmath.exp(mpmath.mpf(x1) - mpmath.mpf(x0)))


def exact_ce_gradient(x0: float, x1: float, label: int):
    """sigmoid(x_0 - x_1) - y: computed as -sigmoid(-z) for y = 1 to keep its digits."""
    if label == 0:
        return -_sigma(x1, x0)
    return _sigma(x0, x1)


def exact_mse_gradient(x0: float, x1: float, label: int):
    p, q = _sigma(x0, x1), _sigma(x1, x0)  # p and 1 - p, each to full relative precision
    return (-q if label == 0 else p) * p * q


def _fast_sigmoids(x):
    """p = sigmoid(z) and q = 1 - p = sigmoid(-z) in longdouble, z = x_0 - x_1 split exactly."""
    X = x.logits.astype(np.float64)
    hi, lo = _two_diff(X[:, 0], X[:, 1])
    handled = np.isfinite(X).all(axis=1) & np.isfinite(hi)
    hi, lo = np.where(handled, hi, 0.0), np.where(handled, lo, 0.0)
    ez = np.exp(hi.astype(np.longdouble)) * np.exp(lo.astype(np.longdouble))  # e**z
    return 1 / (1 + 1 / ez), 1 / (1 + ez), handled


def fast_ce_gradient(x):
    p, q, handled = _fast_sigmoids(x)
    return np.where(x.labels == 0, -q, p), np.zeros(len(p), dtype=bool), handled


def fast_mse_gradient(x):
    p, q, handled = _fast_sigmoids(x)
    return np.where(x.labels == 0, -q, p) * p * q, np.zeros(len(p), dtype=bool), handled


def vanishing_cases(d: np.ndarray, settings: Settings) -> Logits:
    """Logits [-d, 0], label 0 (y = 1): confidently wrong; the MSE gradient ~ -e**-d vanishes."""
    rows = len(d)
    return Logits(ParamNames("d", d), np.stack([-d, np.zeros_like(d)], axis=1), np.zeros(rows, dtype=np.int64),
                  np.full(rows, 2, dtype=np.int64))


def default_cases() -> Logits:
    return concat([
        logits_case([0, 0], 0, "z=0,y=1"),
        logits_case([5, 0], 0, "z=5,y=1 (right)"),
        logits_case([20, 0], 0, "z=20,y=1 (confidently right)"),
        logits_case([-20, 0], 0, "z=-20,y=1 (confidently wrong)"),
        logits_case([-100, 0], 0, "z=-100,y=1 (very wrong)"),
    ])


def loss_scaling(formats: list[Format]) -> tuple[list[str], list[list[str]]]:
    """Fractions of |g| * scale that round to 0 / overflow / land in the subnormal range,
    for GRADIENT_SAMPLES magnitudes with log10|g| ~ Normal(-5, 2) (seed GRADIENT_SEED)."""
    rng = np.random.default_rng(GRADIENT_SEED)
    g = 10.0 ** rng.normal(-5.0, 2.0, GRADIENT_SAMPLES)
    headers = ["format", "loss scale", "flushed to 0", "subnormal", "overflow (inf/NaN)"]
    rows = []
    for fmt in formats:
        for scale in LOSS_SCALES:
            with np.errstate(all="ignore"):
                cast = fmt.round(g * scale, np.float64)
            zero = float(np.mean(cast == 0))
            sub = float(np.mean((cast != 0) & (np.abs(cast) < fmt.tiny)))
            over = float(np.mean(~np.isfinite(cast)))
            label = "1" if scale == 1 else f"2^{int(np.log2(scale))}"
            rows.append([fmt.name, label, f"{zero:.2%}", f"{sub:.2%}", f"{over:.2%}"])
    return headers, rows


MSE_TRUTH = Truth(exact_mse_gradient, exact_rows, fast_mse_gradient)

GRADIENT = Experiment(
    name="gradient",
    title="Gradients: softmax cross-entropy, and MSE vs cross-entropy on a sigmoid",
    question="Where do loss gradients vanish or get lost: p - y from probabilities, and the sigmoid MSE factor?",
    methods=(
        Method("ce_from_probs", "p - y, p = exp(x_0) / sum exp(x) (naive softmax)", ce_from_probs),
        Method("ce_from_log_softmax", "exp(log_softmax(x)_0) - y", ce_from_log_softmax, stable=True),
        Method("ce_sigmoid", "sigmoid(z) - y, sigmoid branched on the sign of z (exp(-|z|))", ce_sigmoid,
               stable=True),
        Method("mse_sigmoid", "(p - y) p (1 - p): the MSE gradient through the sigmoid", mse_sigmoid,
               truth=MSE_TRUTH),
    ),
    default_cases=default_cases,
    load=load,
    truth=Truth(exact_ce_gradient, exact_rows, fast_ce_gradient),
    families=(Family("vanishing", "d", "logits [-d, 0], target 1: confidently wrong (MSE's gradient vanishes)",
                     vanishing_cases, figure="magnitude", turning=(math.log(2),)),),
    facts=loss_scaling,
)
