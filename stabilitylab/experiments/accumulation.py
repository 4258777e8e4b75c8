"""accumulation: summing n equal terms (log-probabilities, or ones) four ways.

* ``sequential``  s = fl(s + v), n times: the textbook loop; it stagnates once
  v is below half an ulp of s (float16 summing ones stops at 2048);
* ``pairwise``    the pairwise tree (numpy's and PyTorch's reductions), error
  ~ log2(n) u;
* ``kahan``       Kahan's compensated loop, error ~ 2u independent of n;
* ``wide``        the loop in a wider format (float32 for formats of at most
  16 bits, float64 for float32) and one rounding at the end, as frameworks
  accumulate half-precision inputs; float64 has no wider hardware format, so
  there the sum is accumulated exactly (as ``math.fsum`` or a long accumulator
  does) and rounded once: n v correctly rounded.

The loops are simulated exactly, step by step, with periodic stretches jumped
over (see :mod:`stabilitylab.numerics.running`).  Exact reference: n v for the
format-rounded v (mpmath).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mpmath
import numpy as np

from ..numerics import running
from ..numerics.arith import Arith
from ..numerics.formats import FORMATS, Format
from . import predict
from .base import Batch, Experiment, Family, Method, ParamNames, Prediction, Rows, Settings, Truth

__all__ = ["Terms", "ACCUMULATION", "terms"]


@dataclass(frozen=True)
class Terms(Batch):
    """Cases: the term ``values`` (rows,) summed ``repeat`` (rows,) times."""

    names: tuple[str, ...]
    values: np.ndarray
    repeat: np.ndarray


def terms(cases: list[tuple[str, float, int]]) -> Terms:
    names, values, counts = zip(*cases)
    return Terms(tuple(names), np.array(values, dtype=np.float64), np.array(counts, dtype=np.int64))


def default_cases() -> Terms:
    log_tenth = math.log(0.1)
    return terms([
        ("ones,n=4096", 1.0, 4096),
        ("ones,n=10^8", 1.0, 10**8),
        ("log(0.1),n=1000", log_tenth, 1000),
        ("log(0.1),n=10^4", log_tenth, 10**4),
    ])


@dataclass(frozen=True)
class Loaded(Rows):
    values: np.ndarray  # in the format
    repeat: np.ndarray


def load(arith: Arith, cases: Terms) -> Loaded:
    return Loaded(arith.load(cases.values), cases.repeat)


def _finish(a: Arith, values: np.ndarray, overflowed: np.ndarray) -> np.ndarray:
    """A running sum's total (accumulation-format values) and its overflow, as the arithmetic's value:
    rounded to the compute format when a policy accumulates in another format (:meth:`Arith.reduced`)."""
    a.record("overflow", overflowed)
    if a.accumulate is not a.compute:
        return a.reduced(values)
    with np.errstate(all="ignore"):
        return values.astype(a.dtype)


def _loop(a: Arith, loop, x: Loaded) -> np.ndarray:
    """A running-sum loop in the format, every step rounded by its own convention (a saturating format: +-max
    at each step, as its hardware would).  Its overflow mask comes from the same loop in the format's held twin
    (overflow to +-inf): both take the same steps up to the first overflow, so they overflow alike."""
    fmt = a.accumulate  # the sums' format (a pure format: itself)
    values, overflowed = loop(fmt, x.values, x.repeat, a.ftz)
    twin = fmt.held_twin
    if twin is not fmt:
        _, overflowed = loop(twin, x.values, x.repeat, a.ftz)
        if fmt.saturates:
            a.saturated |= overflowed  # the status rule reads a +-max of these rows as an overflow
    return _finish(a, values, overflowed)


def sequential(a: Arith, x: Loaded):
    return _loop(a, running.plain, x)


def pairwise(a: Arith, x: Loaded):
    return a.repeat(a.add, x.values, x.repeat)


def kahan(a: Arith, x: Loaded):
    return _loop(a, running.kahan, x)


def wider(fmt: Format) -> Format | None:
    """The accumulator format of the ``wide`` method (None for float64: exact accumulation)."""
    if fmt.precision >= FORMATS["float64"].precision:
        return None
    return FORMATS["float32"] if fmt.precision < 24 and fmt.bits <= 16 else FORMATS["float64"]


def wide(a: Arith, x: Loaded):
    accumulator = wider(a.compute)
    if accumulator is None:
        return _exact_then_rounded(a, x)
    total, overflowed = running.plain(accumulator, x.values.astype(np.float64), x.repeat, a.ftz)
    a.record("overflow", overflowed)
    return a.reduced(total)  # the one rounding back to the (compute) format (records its overflow)


def _exact_then_rounded(a: Arith, x: Loaded):
    """The exact sum n v, rounded once: one correctly rounded product where n is exact in
    the format (n <= 2**53), else Python's correctly rounded float(Fraction)."""
    exact_n = x.repeat <= 2**53
    total = a.mul(x.repeat.astype(a.dtype), x.values, where=exact_n)
    for i in np.flatnonzero(~exact_n):
        from fractions import Fraction  # imported only for n > 2**53 (fractions imports decimal)

        with np.errstate(all="ignore"):
            try:
                total[i] = float(Fraction(float(x.values[i])) * int(x.repeat[i]))
            except OverflowError:
                total[i] = math.copysign(math.inf, float(x.values[i]))
    a.record("overflow", ~exact_n & ~np.isfinite(total) & np.isfinite(x.values))
    return total


def exact_rows(x: Loaded):
    return [(float(v), int(n)) for v, n in zip(x.values.astype(np.float64).tolist(), x.repeat.tolist())]


def exact_sum(value: float, n: int):
    return n * mpmath.mpf(value)


def fast_sum(x: Loaded):
    v = x.values.astype(np.float64)
    return (x.repeat.astype(np.longdouble) * v.astype(np.longdouble), v == 0, np.isfinite(v))


def ones_cases(n: np.ndarray, settings: Settings) -> Terms:
    n = np.asarray(n, dtype=np.int64)
    return Terms(ParamNames("n", n), np.ones(len(n)), n)


def ones_predict(fmt: Format, method: str, settings: Settings) -> Prediction | None:
    """sequential: the sum of ones is exact up to S = 2**p (every s + 1 <= S is
    representable), then stays at S (S + 1 is a tie that rounds to the even S), so
    for n <= S the loss is exact and above it the relative error is (n - S) / n:
    it first exceeds the tolerance t at n = floor(S / (1 - t)) + 1 (none if t >= 1).
    A proof, not an estimate: a measured threshold equal to it is exact.  pairwise keeps n exact-ish
    until the sum passes max + ulp(max)/2.  Kahan has no prediction: its
    compensation itself stalls in formats of few bits (bfloat16, float8)."""
    if method == "sequential":
        stall = 2**fmt.precision
        tol = mpmath.mpf(fmt.default_tolerance if settings.tolerance is None else settings.tolerance)
        if tol >= 1:
            return None
        n = int(mpmath.floor(stall / (1 - tol))) + 1
        return Prediction(n, "first_inaccurate",
                          "n* = floor(2^p / (1 - t)) + 1: the loop stops growing at 2^p (s + 1 rounds back "
                          "to s), and the relative error (n - 2^p)/n passes the tolerance t (default sqrt(u))",
                          proof=True)
    if method == "pairwise" and not fmt.saturates:  # (saturating: the sum stops at max, no failure to predict)
        limit, tie = predict.overflow_bound(fmt)
        n = int(mpmath.floor(limit)) + (0 if tie and limit == int(limit) else 1)
        return Prediction(n, "first_failure", "n* ~ max + ulp(max)/2: the sum of n ones passes the largest finite "
                          "value (pairwise rounding moves it by up to log2(n) u)",
                          slack=(math.log2(n) + 1) * fmt.unit_roundoff)
    return None


ACCUMULATION = Experiment(
    name="accumulation",
    title="Accumulating many terms: sequential, pairwise, Kahan, wide",
    question="How does summing n log-probabilities (or ones) go wrong as n grows, and which summation survives?",
    methods=(
        Method("sequential", "s = fl(s + v), n times", sequential),
        Method("pairwise", "pairwise tree of the n terms", pairwise),
        Method("kahan", "Kahan: y = v - c; t = s + y; c = (t - s) - y; s = t", kahan, stable=True),
        Method("wide", "the loop in float32 (float64 for float32 inputs; float64: exact accumulation), "
               "rounded once", wide, stable=True),
    ),
    default_cases=default_cases,
    load=load,
    truth=Truth(exact_sum, exact_rows, fast_sum),
    # n <= 2**32: Kahan's loop is simulated step by step where it has no short period, and in float32
    # its compensation counts one step at a time once ulp(s) > 2 (2**17 steps per increment at n ~ 2**40)
    families=(Family("ones", "n", "summing n ones (stagnation, then overflow)", ones_cases, integer=True,
                     lower=1, upper=2**32, predict=ones_predict),),
)
