"""cast: what does storing x in the format give?

One value x per case, **a float32 value** (what a training step holds: a case given as a float64
number is rounded to float32 first, once, when the case is made; ``1e-10`` is the float32 nearest
1e-10), stored in the format:

* ``round``  fl(x): x rounded to the format, to nearest, ties to even, with the format's overflow
  convention as ml_dtypes converts (+-inf; NaN for float8_e4m3fn and the fnuz formats; +-max for fp6,
  fp4 and the ``:saturate`` variants), the events of :meth:`Arith.store` (= :meth:`Arith.load`:
  overflow, underflow, subnormal).  A NaN stays NaN, also in fp6 / fp4, which have no NaN (ml_dtypes
  stores a zero there; :class:`Arith` keeps NaN so a lost value shows as lost).  The only simulated
  method: an audited cast (``torch.cast``, ``jax.cast``) is compared with it.

The exact value is x itself (:class:`Truth` with ``storage``).  Status: the usual rule (a correctly
rounded value is ``ok``), except that a value the format cannot hold is a failure here, never ``range``
(the format's range is the question): ``overflow`` where |x| is beyond the format's range, whatever
came back (inf, NaN or a saturated +-max), ``underflow`` where x != 0 and the value is 0, ``nan``
where x is NaN and the format has no NaN (fp6, fp4) or the value is a number; see
:mod:`stabilitylab.analysis.outcome`.

Families (the parameter runs over the **float32** values, ``Family.grid``: the cast's input):

* ``overflow``  x = d >= 1.  The first failure is the rounding boundary ``T = max + ulp(max)/2``
  where the tie rounds away (IEEE formats: max has an odd last significand bit, so the even
  neighbour of T is the next binade, which overflows), else the first float32 above T
  (float8_e4m3fn: 464 ties to 448, even; 464.00003 overflows).
* ``underflow`` x = fl32(1/d), d >= 1 (x shrinks as d grows; fl32 is monotone).  x rounds to 0
  iff x <= s/2 (s the smallest subnormal; the tie at s/2 goes to 0, which is even): the first
  failure is d = 2/s (1/d is then exactly s/2; for the float32 d just below 2/s, 1/d lies above
  s/2 by more than half a float32 ulp of s/2, so fl32(1/d) > s/2).  A format whose every float32
  value is its own (float32, float64) never fails either family.
"""

from __future__ import annotations

from dataclasses import dataclass

import mpmath
import numpy as np

from ..numerics.arith import Arith
from .base import Batch, Experiment, Family, Method, ParamNames, Rows, Settings, Truth

__all__ = ["CAST", "Values", "value_cases", "concat", "INPUT_FORMAT"]

INPUT_FORMAT = "float32"  # what a cast's input is: the grid of the families and the target's input dtype


@dataclass(frozen=True)
class Values(Batch):
    """Cases: one float32 value per row, held as float64 (``x``, shape (rows,))."""

    names: tuple[str, ...]
    x: np.ndarray


def value_cases(named: list[tuple[str, float]]) -> Values:
    """Cases ``(name, x)``; each x rounded to float32 (the cast's input) once, here."""
    with np.errstate(all="ignore"):
        x = np.array([v for _, v in named], dtype=np.float64).astype(np.float32).astype(np.float64)
    return Values(tuple(n for n, _ in named), x)


def concat(batches: list[Values]) -> Values:
    return Values(sum((tuple(b.names) for b in batches), ()), np.concatenate([b.x for b in batches]))


def default_cases() -> Values:
    """Named values around the float8 and float16 limits: the e4m3fn max 448, its rounding boundary 464
    (a tie, to 448) and 480 (the first value past it on e4m3fn's grid), e5m2's max 57344, float16's boundary
    65520, the infinities and NaN, and the smallest subnormals of float8_e4m3fn (2**-9), float8_e5m2
    (2**-16), float16 (2**-24) and half of them (ties to 0)."""
    return value_cases([
        ("1e4", 1e4), ("+inf", np.inf), ("-inf", -np.inf), ("nan", np.nan), ("448 (e4m3fn max)", 448.0),
        ("464 (e4m3fn boundary: ties to 448)", 464.0), ("480", 480.0), ("-480", -480.0),
        ("57344 (e5m2 max)", 57344.0), ("65520 (float16 boundary: ties to inf)", 65520.0), ("1e5", 1e5),
        ("1", 1.0), ("0.1", 0.1), ("1e-10", 1e-10), ("2**-9 (e4m3fn smallest subnormal)", 2.0**-9),
        ("2**-10 (half of it: ties to 0)", 2.0**-10), ("2**-16 (e5m2 smallest subnormal)", 2.0**-16),
        ("2**-24 (float16 smallest subnormal)", 2.0**-24), ("2**-25 (half of it: ties to 0)", 2.0**-25),
        ("0", 0.0), ("-0", -0.0),
    ])


@dataclass(frozen=True)
class Stored(Rows):
    """What kernels take: the wide input x itself (float32 values as float64; or their ranges),
    not rounded to the format: storing it is the method's work."""

    x: np.ndarray


def load(arith: Arith, cases: Values) -> Stored:
    """The input as it is (float64 holding float32 values): a black box receives it as float32, and the
    simulated method rounds it (:meth:`Arith.store`), so its events are the method's."""
    return Stored(cases.x)


def round_to_format(a: Arith, x: Stored):
    return a.store(x.x)


def exact_rows(x: Stored):
    return [(v,) for v in np.asarray(x.x, dtype=np.float64).tolist()]


def exact_value(x: float):
    """The exact value of a cast is its input."""
    return mpmath.mpf(x)


def fast_value(x: Stored, dtype=None):
    """x itself, exactly (any float64 is held exactly in float64 and longdouble); non-finite rows
    go to the mpmath path."""
    v = np.asarray(x.x, dtype=np.float64)
    return v.astype(np.longdouble if dtype is None else dtype), v == 0, np.isfinite(v)


def overflow_cases(d: np.ndarray, settings: Settings) -> Values:
    """x = d (a float32 value, d >= 1)."""
    return Values(ParamNames("x", d), np.asarray(d, dtype=np.float64).copy())


def underflow_cases(d: np.ndarray, settings: Settings) -> Values:
    """x = fl32(1 / d): monotone non-increasing in d."""
    with np.errstate(all="ignore"):
        x = (np.float32(1) / np.asarray(d, dtype=np.float32)).astype(np.float64)
    return Values(ParamNames("d", d), x)


CAST = Experiment(
    name="cast",
    title="Storing a float32 value in the format (a cast)",
    question="What does storing x in the format give: where does it overflow, saturate or underflow to 0?",
    methods=(Method("round", "fl(x): x rounded to the format, nearest-even; overflow to inf, NaN or +-max (the "
                             "format's convention)", round_to_format, stable=True),),
    default_cases=default_cases,
    load=load,
    truth=Truth(exact_value, exact_rows, fast_value, fast_float64=True, storage=True),
    families=(
        Family("overflow", "x", "x = d >= 1, a float32 value (the first failure: the format's rounding boundary)",
               overflow_cases, lower=1.0, figure="magnitude", grid=INPUT_FORMAT),
        Family("underflow", "d", "x = fl32(1/d), d >= 1 (the first failure: the first x that rounds to 0)",
               underflow_cases, lower=1.0, figure="magnitude", grid=INPUT_FORMAT),
    ),
)
