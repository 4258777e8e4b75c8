"""binary_ce: binary cross-entropy through the sigmoid vs from the logit.

Loss of logits z_i with labels y_i in {0, 1}, summed over the samples of a case:
``-sum_i [y_i log p_i + (1 - y_i) log(1 - p_i)]`` with ``p = sigmoid(z)``.

* ``sigmoid_log``          p = 1 / (1 + exp(-z)) in the format, then both logs
  exactly as written: once p rounds to 1, log(1 - p) = -inf (and 0 * -inf = NaN
  for a confident correct sample);
* ``sigmoid_log_clamped``  the same with each log clamped at -100, as PyTorch's
  BCELoss does: finite, but the loss is capped (it hides the failure);
* ``logits``               max(z, 0) - z y + log1p(exp(-|z|)), the stable
  BCE-with-logits form (softplus with log1p).

Exact reference: ``sum_i y_i softplus(-z_i) + (1 - y_i) softplus(z_i)`` with
softplus(x) = log1p(e^x), mpmath.
"""

from __future__ import annotations

from dataclasses import dataclass

import mpmath
import numpy as np

from ..numerics.arith import Arith
from ..numerics.formats import Format
from . import predict
from .base import Batch, Experiment, Family, Method, ParamNames, Prediction, Rows, Settings, Truth, stack_padded

__all__ = ["Binary", "BINARY_CE", "binary_case", "realistic_cases", "REALISTIC"]

LOG_CLAMP = -100.0  # PyTorch BCELoss clamps log outputs at -100


@dataclass(frozen=True)
class Binary(Batch):
    """Cases: ``logits`` and ``labels`` (rows, K); rows of the same width K run together."""

    names: tuple[str, ...]
    logits: np.ndarray
    labels: np.ndarray
    widths: np.ndarray


def binary_case(name: str, logits, labels) -> Binary:
    z = np.atleast_1d(np.asarray(logits, dtype=np.float64))
    y = np.atleast_1d(np.asarray(labels, dtype=np.float64))
    return Binary((name,), z[None, :], y[None, :], np.array([z.size]))


def concat(batches: list[Binary]) -> Binary:
    return Binary(sum((tuple(b.names) for b in batches), ()), stack_padded([b.logits for b in batches], 0.0),
                  stack_padded([b.labels for b in batches], 0.0), np.concatenate([b.widths for b in batches]))


def article_case() -> Binary:
    """Article 002: P(True) = [0.4, 0.6, 0.9, 0.1], labels [0, 1, 1, 0], as logits ln(p / (1 - p))."""
    p = np.array([0.4, 0.6, 0.9, 0.1])
    return binary_case("article:P=[0.4,0.6,0.9,0.1],y=[0,1,1,0]", np.log(p / (1 - p)), [0, 1, 1, 0])


def default_cases() -> Binary:
    return concat([
        article_case(),
        binary_case("z=20,y=1 (confident, right)", 20, 1),
        binary_case("z=20,y=0 (confident, wrong)", 20, 0),
        binary_case("z=-20,y=1 (confident, wrong)", -20, 1),
        binary_case("z=1000,y=0", 1000, 0),
    ])


REALISTIC = {"rows": 2000, "outputs": 10, "wide_rows": 8, "wide_outputs": 2**15, "sigma": 3.0, "seed": 20261207}


def realistic_cases(rows: int = REALISTIC["rows"], outputs: int = REALISTIC["outputs"],
                    wide_rows: int = REALISTIC["wide_rows"], wide_outputs: int = REALISTIC["wide_outputs"],
                    sigma: float = REALISTIC["sigma"], seed: int = REALISTIC["seed"]) -> list[Binary]:
    """Realistic rows for the audit's *resembles* (seeded ``numpy.random.default_rng(seed)``, PCG64), as
    two batches (rows of one width each: no padding): ``rows`` rows of ``outputs`` logits drawn from
    N(0, sigma**2) with labels 0 / 1 drawn with probability sigmoid(logit) (a calibrated model), then
    ``wide_rows`` rows of ``wide_outputs`` drawn the same way: the loss sums over the outputs, and a sum
    in another order than the simulated formulas' (pairwise) tells itself apart on the wide rows."""
    rng = np.random.default_rng(seed)
    batches = []
    for n, k in ((rows, outputs), (wide_rows, wide_outputs)):
        z = rng.normal(0.0, sigma, size=(n, k))
        y = (rng.random(size=(n, k)) < 1.0 / (1.0 + np.exp(-z))).astype(np.float64)
        batches.append(Binary(tuple(f"realistic:N(0,{sigma:g}) x{k} #{i}" for i in range(n)), z, y,
                              np.full(n, k, dtype=np.int64)))
    return batches


@dataclass(frozen=True)
class Loaded(Rows):
    logits: np.ndarray
    labels: np.ndarray


def load(arith: Arith, cases: Binary) -> Loaded:
    return Loaded(arith.load(cases.logits), arith.const(cases.labels))


def _sigmoid_terms(a: Arith, x: Loaded, clamp: bool):
    one = a.const(np.ones_like(x.labels))
    p = a.div(one, a.add(one, a.exp(a.neg(x.logits))))
    log_p, log_q = a.log(p), a.log(a.sub(one, p))
    if clamp:
        floor = a.const(np.full(x.labels.shape, LOG_CLAMP))
        log_p, log_q = a.maximum(log_p, floor), a.maximum(log_q, floor)
    terms = a.add(a.mul(x.labels, log_p), a.mul(a.sub(one, x.labels), log_q))
    return a.neg(a.tree(a.add, terms, 0.0))


def sigmoid_log(a: Arith, x: Loaded):
    return _sigmoid_terms(a, x, clamp=False)


def sigmoid_log_clamped(a: Arith, x: Loaded):
    return _sigmoid_terms(a, x, clamp=True)


def from_logits(a: Arith, x: Loaded):
    z = x.logits
    zero = a.const(np.zeros(z.shape))
    softplus_tail = a.log1p(a.exp(a.neg(a.abs(z))))
    terms = a.add(a.sub(a.maximum(z, zero), a.mul(z, x.labels)), softplus_tail)
    return a.tree(a.add, terms, 0.0)


def exact_rows(x: Loaded):
    z, y = x.logits.astype(np.float64), x.labels.astype(np.float64)
    return [(tuple(zr), tuple(yr)) for zr, yr in zip(z.tolist(), y.tolist())]


def _softplus(v):
    return mpmath.log1p(mpmath.exp(v))


def exact_bce(logits: tuple[float, ...], labels: tuple[float, ...]):
    """sum_i y softplus(-z) + (1 - y) softplus(z); padding (z = 0, y = 0) is not counted."""
    total = []
    for z, y in zip(logits, labels):
        z = mpmath.mpf(z)
        if mpmath.isnan(z):
            return mpmath.mpf("nan")
        total.append(_softplus(-z) if y else _softplus(z))
    return mpmath.fsum(total)


def fast_bce(x: Loaded):
    """max(v, 0) + log1p(exp(-|v|)) with v = +-z exact: a sum of non-negative terms."""
    z, y = x.logits.astype(np.float64), x.labels.astype(np.float64)
    handled = np.all(np.isfinite(z), axis=1)
    v = np.where(y == 1, -z, z).astype(np.longdouble)
    terms = np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v)))
    return terms.sum(axis=1), np.zeros(len(z), dtype=bool), handled


def saturation_cases(z: np.ndarray, settings: Settings) -> Binary:
    """One sample, label 0, logit z >= 0: the loss softplus(z) ~ z.

    ``sigmoid_log_clamped`` has a bias monotone in z (``Family.monotone_bias``): evaluated exactly, with
    p = 1 / (1 + e**-z) in (0, 1) and label 0, its formula is -(0 max(log p, -100) + 1 max(log(1 - p), -100))
    = min(-log(1 - p), 100) = min(L, 100), L = log(1 + e**z) the exact loss; so formula - L = min(0, 100 - L),
    non-increasing in z (L increases)."""
    return Binary(ParamNames("z", z), z[:, None].copy(), np.zeros((len(z), 1)), np.ones(len(z), dtype=np.int64))


def saturation_predict(fmt: Format, method: str, settings: Settings) -> Prediction | None:
    """1 + e rounds to 1 iff e <= u (u = 2**-p; the tie at u goes to the even 1), and
    fl(exp(-z)) <= u iff exp(-z) <= u + u**2 (half the spacing above the power of two u;
    that tie goes to the even u).  Then p = 1, log(1 - p) = log(0) = -inf: the loss is
    non-finite.  Below, 1 + e > 1, so p < 1 and every log is finite."""
    if method != "sigmoid_log":
        return None
    with mpmath.workdps(50):
        u = mpmath.mpf(fmt.unit_roundoff)
        z = predict.first_value_above(fmt, -mpmath.log(u + u * u))
    return Prediction(z, "first_failure",
                      "z* = first format value above -ln(u + u^2) = p ln 2 - ln(1 + 2^-p): there exp(-z) rounds to at "
                      "most u, 1 + exp(-z) rounds to 1, p = 1 and log(1 - p) = -inf", proof=True)


BINARY_CE = Experiment(
    name="binary_ce",
    title="Binary cross-entropy: through the sigmoid vs from the logit",
    question="When does -[y log p + (1-y) log(1-p)] with p = sigmoid(z) break, and does clamping the log fix it?",
    methods=(
        Method("sigmoid_log", "-[y log p + (1-y) log(1-p)], p = 1/(1+exp(-z))", sigmoid_log),
        Method("sigmoid_log_clamped", "the same with each log clamped at -100 (PyTorch BCELoss)",
               sigmoid_log_clamped, exact_formula=False),
        Method("logits", "max(z,0) - z y + log1p(exp(-|z|)) (BCE with logits)", from_logits, stable=True),
    ),
    default_cases=default_cases,
    load=load,
    truth=Truth(exact_bce, exact_rows, fast_bce),
    families=(Family("saturation", "z", "logit z >= 0, label 0 (sigmoid rounds to 1)", saturation_cases,
                     predict=saturation_predict, monotone_bias=("sigmoid_log_clamped",)),),
)
