"""Classify a computed loss against its exact reference: one rule, used everywhere.

For a computed value v and the exact reference r (held as a float64 pair
``hi + lo``, so that errors below one float64 ulp are still seen):

* ``nan``         v is NaN (but see float8_e4m3fn below);
* ``overflow`` /  v is +-inf, or 0 where r is not, and the first of the events
  ``underflow``   overflow / underflow seen while computing v is that one (a
                  product that became 0 and then ``log(0) = -inf`` is an
                  underflow).  v equal to an infinite r is ``ok`` when no
                  over/underflow happened (an input p = 1e-300 rounded to 0 in
                  float32 is an underflow, though its log is then exactly
                  -inf).  An infinite v with neither event reached a pole
                  because an intermediate was rounded to exactly 0 (1 - p with
                  p rounded to 1, then log(0)): ``underflow``;
* ``inaccurate``  otherwise, if ``rel_error > tolerance`` (default sqrt(u): more
                  than half the significand bits lost);
* ``ok``          otherwise.

float8_e4m3fn has no infinity: its overflow *is* NaN (and NaN then
propagates).  In a format without infinity a NaN whose first event was an
overflow, with no invalid operation before it, is classified ``overflow``.

Metrics: ``rel_error = |v - r| / |r|`` (0 if v == r, inf if r == 0 != v),
``ulps = |v - r| / ulp(r)`` with ulp in the format (see :meth:`Format.ulp`), and
``error_bits = log2(ulps + 1)`` (Herbie's bits of error: 0 exact, 1 for 1 ulp).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .arith import NEVER, Arith, events_from_steps
from .formats import Format

__all__ = ["STATUSES", "Outcome", "classify", "gather"]

STATUSES: tuple[str, ...] = ("ok", "inaccurate", "overflow", "underflow", "nan")
FAILURES: tuple[str, ...] = ("overflow", "underflow", "nan")


@dataclass
class Outcome:
    """Columnar outcome of one method in one format over a batch of cases."""

    value: np.ndarray  # float64, the loss the method produced
    reference: np.ndarray  # float64 nearest to the exact loss
    status: np.ndarray  # str
    rel_error: np.ndarray
    ulps: np.ndarray
    error_bits: np.ndarray
    first_steps: np.ndarray  # (len(EVENTS), rows): step of each event's first occurrence

    @cached_property
    def events(self) -> list[tuple[str, ...]]:
        """Per row, the IEEE events in order of first occurrence (built on demand)."""
        return events_from_steps(self.first_steps)


def errors(fmt: Format, value, hi, lo, zero=None):
    """(rel_error, ulps, error_bits) of value against the exact hi + lo.

    ``zero`` marks exact zeros; where it is False but hi = 0 the exact value is
    non-zero yet below float64's range: its relative error is 1 for v = 0.
    """
    v = np.asarray(value, dtype=np.float64)
    if zero is None:
        zero = (hi == 0) & (lo == 0)
    with np.errstate(all="ignore"):
        diff = np.abs((v - hi) - lo)
        diff = np.where(v == hi, np.abs(lo), diff)  # also v == hi == +-inf
        diff = np.where(np.isnan(v) | np.isnan(hi), np.nan, diff)
        rel = np.where(hi == 0, np.where(diff == 0, 0.0, np.inf), diff / np.abs(hi))
        rel = np.where((hi == 0) & ~zero, np.where(v == 0, 1.0, np.inf), rel)
        ulps = diff / fmt.ulp(hi)
        ulps = np.where(np.isinf(hi) & (v == hi), 0.0, ulps)
        bits = np.log2(ulps + 1)
    return rel, ulps, bits


def classify(fmt: Format, value, hi, lo, zero, arith: Arith, tolerance: float | None = None) -> Outcome:
    """Apply the rule above to a batch; ``arith`` holds the events of the computation;
    ``zero`` marks references that are exactly 0."""
    tol = fmt.default_tolerance if tolerance is None else tolerance
    v = np.asarray(value).astype(np.float64)
    rel, ulps, bits = errors(fmt, v, hi, lo, zero)
    over, under = arith.first_step("overflow"), arith.first_step("underflow")
    seen = (over != NEVER) | (under != NEVER)
    # an infinite exact loss computed as such is ok, unless an input or an
    # intermediate over/underflowed on the way (then the infinity is an artefact)
    lost = (np.isinf(v) & ((v != hi) | seen)) | ((v == 0) & ~zero)
    overflow_first = over <= under
    status = np.full(v.shape, "ok", dtype="<U10")
    status[rel > tol] = "inaccurate"
    status[lost & seen & overflow_first] = "overflow"
    status[lost & seen & ~overflow_first] = "underflow"
    # infinite with neither event: a pole reached because an intermediate was
    # rounded to exactly 0 (1 - p with p rounded to 1, then log(0)): underflow
    # when that pole is the first event, else overflow (the value left the range)
    pole = arith.first_step("divide_by_zero") != NEVER
    status[lost & ~seen & np.isinf(v)] = "overflow"
    status[lost & ~seen & np.isinf(v) & pole] = "underflow"
    nan = np.isnan(v)
    status[nan] = "nan"
    if not fmt.has_inf:  # e4m3fn: overflow gives NaN
        invalid = arith.first_step("invalid")
        status[nan & (over != NEVER) & (over <= under) & (over < invalid)] = "overflow"
    return Outcome(v, np.asarray(hi, dtype=np.float64), status, rel, ulps, bits, arith.first.copy())


def gather(parts: list[tuple[np.ndarray, Outcome]], rows: int) -> Outcome:
    """Reassemble outcomes computed on groups of rows (``(row indices, outcome)``)."""
    if len(parts) == 1 and np.array_equal(parts[0][0], np.arange(rows)):
        return parts[0][1]
    columns = {}
    for name in ("value", "reference", "status", "rel_error", "ulps", "error_bits"):
        first = getattr(parts[0][1], name)
        out = np.empty(rows, dtype=first.dtype)
        for idx, part in parts:
            out[idx] = getattr(part, name)
        columns[name] = out
    steps = np.full((parts[0][1].first_steps.shape[0], rows), NEVER, dtype=np.int64)
    for idx, part in parts:
        steps[:, idx] = part.first_steps
    return Outcome(**columns, first_steps=steps)
