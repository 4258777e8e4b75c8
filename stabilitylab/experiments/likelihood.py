"""likelihood: product of probabilities vs sum of log-probabilities.

A case is a block of true-class probabilities q_1..q_K repeated n times (n
samples of probability p is the block [p] repeated n times).  Both methods
reduce pairwise (as numpy and PyTorch reductions do), the block first and then
the n block results, every partial rounded to the format:

* ``product``: ``-log(prod q)``: the product underflows long before the loss
  is large (0.1**100 = 1e-100 is 0 in float32, so the NLL is inf);
* ``sum_log``: ``-sum(log q)``: the same loss with no tiny intermediate.

Exact reference: ``-n * sum_k ln(q_k)`` for the format-rounded q (mpmath).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mpmath
import numpy as np

from ..numerics.arith import Arith
from ..numerics.formats import Format
from . import predict
from .base import (
    Batch,
    Experiment,
    Family,
    Method,
    ParamNames,
    Prediction,
    Rows,
    Settings,
    Truth,
    shortest,
    stack_padded,
)

__all__ = ["Samples", "LIKELIHOOD", "iid", "samples"]


@dataclass(frozen=True)
class Samples(Batch):
    """Likelihood cases: ``probs`` (rows, K) padded with 1.0 (exact in every format:
    x * 1 = x and log(1) = 0), each row's block repeated ``repeat`` (rows,) times."""

    names: tuple[str, ...]
    probs: np.ndarray
    repeat: np.ndarray


def iid(p, n, names=None) -> Samples:
    """n samples of true-class probability p (arrays broadcast)."""
    p, n = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(n, dtype=np.int64))
    p, n = p.ravel(), n.ravel()
    if names is None:
        names = tuple(f"p={shortest(float(pi))},n={int(ni)}" for pi, ni in zip(p, n))
    return Samples(names, p[:, None].copy(), n.copy())


def samples(name: str, probs, repeat: int = 1) -> Samples:
    """One case from an explicit list of true-class probabilities."""
    return Samples((name,), np.asarray(probs, dtype=np.float64)[None, :], np.array([repeat], dtype=np.int64))


def concat(batches: list[Samples]) -> Samples:
    return Samples(sum((b.names for b in batches), ()),
                 stack_padded([b.probs for b in batches], fill=1.0),
                 np.concatenate([b.repeat for b in batches]))


def article_case() -> Samples:
    """Article 002: P(True) = [0.4, 0.6, 0.9, 0.1], labels [0, 1, 1, 0].

    The true-class probability is p for label 1 and 1 - p for label 0:
    [0.6, 0.6, 0.9, 0.9], whose product is 0.2916.
    """
    p = np.array([0.4, 0.6, 0.9, 0.1])
    y = np.array([0, 1, 1, 0])
    q = np.where(y == 1, p, 1 - p)
    return samples("article:P=[0.4,0.6,0.9,0.1],y=[0,1,1,0]", q)


def default_cases() -> Samples:
    return concat([
        iid(0.1, 100),  # the seed claim: 0.1**100 = 1e-100
        article_case(),
        iid([0.5, 0.9, 0.999], [1000, 10_000, 10**9]),
    ])


@dataclass(frozen=True)
class Loaded(Rows):
    probs: np.ndarray  # in the format
    repeat: np.ndarray


def load(arith: Arith, cases: Samples) -> Loaded:
    return Loaded(arith.load(cases.probs), cases.repeat)


def product(a: Arith, x: Loaded):
    block = a.tree(a.mul, x.probs, 1.0)
    return a.neg(a.log(a.repeat(a.mul, block, x.repeat)))


def sum_log(a: Arith, x: Loaded):
    block = a.tree(a.add, a.log(x.probs), 0.0)
    return a.neg(a.repeat(a.add, block, x.repeat))


def exact_rows(x: Loaded):
    probs = x.probs.astype(np.float64)
    return [(tuple(row), int(n)) for row, n in zip(probs.tolist(), x.repeat.tolist())]


def exact_nll(probs: tuple[float, ...], n: int):
    """-n * sum(ln q) for the rounded q (padding 1.0 contributes 0)."""
    return -n * mpmath.fsum(mpmath.log(mpmath.mpf(q)) for q in probs)


def iid_cases(n: np.ndarray, settings: Settings) -> Samples:
    return iid(settings.p, n, names=ParamNames("n", np.asarray(n, dtype=np.int64)))


def iid_predict(fmt: Format, method: str, settings: Settings) -> Prediction | None:
    """product: the tree product is ~ fl(p)**n, 0 once that rounds to 0;
    sum_log: the sum ~ n |fl(log fl(p))| overflows once it passes max + ulp/2."""
    p = float(fmt.round(settings.p, np.float64))
    if p == 0:  # the input itself rounds to 0: the loss is out of range from n = 1, no formula to show
        return None
    if method == "product":
        n = predict.first_power_at_most(p, predict.zero_bound(fmt, settings.ftz), strict=settings.ftz)
        bound = "tiny - smallest_subnormal/2 (flush to zero)" if settings.ftz else "smallest_subnormal/2"
        relation = "<" if settings.ftz else "<="
        return None if n is None else Prediction(
            n, "first_failure", f"n* = min{{n : fl(p)^n {relation} {bound}}}: the product rounds to 0, -log(0) = inf")
    if method == "sum_log":
        with np.errstate(all="ignore"):
            step = abs(float(np.log(fmt.round(p, np.float64))))
        if step == 0 or fmt.saturates:  # (saturating: the sum stops at max, no failure to predict)
            return None
        limit, tie_overflows = predict.overflow_bound(fmt)
        n = int(mpmath.floor(limit / step))
        if n * mpmath.mpf(step) < limit or not tie_overflows:  # n step = limit exactly: the tie decides
            n += 1
        return Prediction(n, "first_failure",
                          "n* = min{n : n |fl(log fl(p))| > max + ulp(max)/2, or = it where that tie rounds up}: "
                          "the sum passes the largest finite value (tree rounding moves it by up to log2(n) u)",
                          slack=(math.log2(n) + 1) * fmt.unit_roundoff)
    return None


IID = Family("iid", "n", "n samples of true-class probability p (default 0.1, --p)", iid_cases,
             integer=True, lower=1, predict=iid_predict)


def fast_nll(x: Loaded):
    """-n * sum(ln q) in longdouble: ln of exact inputs, a sum of same-sign terms."""
    q = x.probs.astype(np.float64)
    handled = np.all((q > 0) & np.isfinite(q), axis=1)
    logs = np.log(np.where(handled[:, None], q, 1.0).astype(np.longdouble))
    loss = -x.repeat.astype(np.longdouble) * logs.sum(axis=1)
    return loss, np.all(q == 1, axis=1), handled


LIKELIHOOD = Experiment(
    name="likelihood",
    title="Product of probabilities vs sum of log-probabilities",
    question="When does the likelihood as a product of probabilities underflow, and does the sum of logs survive?",
    methods=(
        Method("product", "-log(prod_i q_i)", product),
        Method("sum_log", "-sum_i log(q_i)", sum_log, stable=True),
    ),
    default_cases=default_cases,
    load=load,
    truth=Truth(exact_nll, exact_rows, fast_nll),
    families=(IID,),
)
