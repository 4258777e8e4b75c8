"""Exact references: :class:`Exact` holds each row's exact value as ``(hi + lo) * 2**scale``.

``hi`` is the float64 nearest to ``x * 2**-scale`` and ``lo`` the float64 nearest
to the remainder, so ``hi + lo`` carries ~106 bits: enough to measure errors of a
float64 computation in fractions of an ulp.  ``scale`` is 0 unless the exact
value is below ``2**-960``; then it brings ``hi`` into float64's normal range,
so that a loss of ``5e-435`` or a float64 subnormal loss is still measured to
full relative precision (a plain float64 pair cannot hold anything below
``2**-1074``).  Likewise a finite exact value of at least ``2**1023`` is held
scaled (``scale > 0``): a loss of ``2e308`` is that number, beyond float64's range
(status ``range`` where a method gives inf), not an infinite loss.  References
are always for the *format-rounded* inputs, so a measured error is the
arithmetic's alone.

Two paths:

* :func:`exact` evaluates the experiment's mpmath formula at ``DIGITS``
  digits, memoised per distinct row.  Used for every metric that is printed.
* :func:`fast` evaluates the experiment's vectorized extended-precision
  formula (x86 80-bit ``longdouble``: 64-bit significand, relative error below
  ``FAST_ERROR`` for our formulas; measured: below 2**-62 on the families).
  Used for formats of at most 24 bits (where that is below 2**-24 ulp) and by
  the threshold search; :func:`engine.evaluate` re-runs with :func:`exact` any
  row whose status the fast reference cannot decide.  Where ``longdouble`` is
  not wider than float64, :func:`fast` is :func:`exact`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import mpmath
import numpy as np

from . import wide
from .formats import FORMATS, Format

__all__ = ["DIGITS", "FAST_ERROR", "SCALE_ABOVE", "SCALE_BELOW", "Exact", "exact", "fast", "fast_error",
           "exp_sum_scaled", "fast_tier", "longdouble_error"]

DIGITS = 40
FAST_ERROR = 2.0**-48  # bound on a fast reference's relative error: (K + 4) 2**-63 for K <= 2**14 terms
SCALE_BELOW = 2.0**-960  # exact values below this are held scaled (scale < 0)
SCALE_ABOVE = 2.0**1023  # finite exact values at least this large are held scaled (scale > 0)
SCALE_FLOOR = -(2**40)  # the lowest scale: values below 2**SCALE_FLOOR (e**-7.6e11) are held at it


@dataclass
class Exact:
    """Exact values ``(hi + lo) * 2**scale`` per row, and a mask of exact zeros.

    Non-finite exact values (an infinite loss, NaN for undefined inputs) have
    ``hi`` = that value, ``lo = 0``, ``scale = 0``.
    """

    hi: np.ndarray
    lo: np.ndarray
    scale: np.ndarray  # int64
    zero: np.ndarray  # bool: the exact value is 0
    _memo: dict = field(default_factory=dict, repr=False, compare=False)  # rounded(), _exponent(): read-only

    def __len__(self) -> int:
        return len(self.hi)

    def take(self, rows) -> "Exact":
        return Exact(self.hi[rows], self.lo[rows], self.scale[rows], self.zero[rows])

    def put(self, rows, other: "Exact") -> "Exact":
        """A copy with ``rows`` replaced by ``other``'s values."""
        out = Exact(self.hi.copy(), self.lo.copy(), self.scale.copy(), self.zero.copy())
        out.hi[rows], out.lo[rows], out.scale[rows], out.zero[rows] = other.hi, other.lo, other.scale, other.zero
        return out

    def _memoized(self, key, compute) -> np.ndarray:
        """``compute()`` once per key (the arrays are not changed after construction but by
        :meth:`put`, which copies); the result is read-only, as it is shared."""
        out = self._memo.get(key)
        if out is None:
            out = self._memo[key] = compute()
            out.setflags(write=False)
        return out

    def _exponent(self) -> np.ndarray:
        """floor(log2 |x|) - scale, from hi and the sign of lo (hi a power of 2 and lo of the
        other sign: |hi + lo| < |hi|, one binade down).  Meaningless where hi is 0 or non-finite."""
        return self._memoized("exponent", self._compute_exponent)

    def _compute_exponent(self) -> np.ndarray:
        with np.errstate(all="ignore"):
            mant, e = np.frexp(self.hi)
        e = e.astype(np.int64) - 1
        if not self._lo_any():  # (every lo 0: no row is one binade down; the float64 tier's values)
            return e
        below = (np.abs(mant) == 0.5) & (self.lo != 0) & (np.sign(self.lo) != np.sign(self.hi))
        return e - below

    def _lo_any(self) -> bool:
        """Whether some ``lo`` is not 0 (memoized): the float64 tier's values have ``lo = 0`` in every row."""
        return bool(self._memoized("lo_any", lambda: np.array(self.lo.any())))

    def _magnitude(self) -> np.ndarray:
        """``|hi|`` (memoized, read-only: the methods classified against these values share it)."""
        return self._memoized("magnitude", lambda: np.abs(self.hi))

    def _plain(self) -> bool:
        """Whether every row is an ordinary number (memoized): ``hi`` finite and not 0, ``scale`` 0, ``lo`` 0
        (also every ``zero`` False: an exact zero has ``hi`` 0)."""
        return bool(self._memoized("plain", lambda: np.array(
            bool(len(self.hi)) and not self._lo_any() and not self.scale.any()
            and bool(np.isfinite(self.hi).all()) and bool(self.hi.all()))))

    def rounded(self, fmt: Format) -> np.ndarray:
        """The exact values correctly rounded to ``fmt`` (nearest, ties to even), as float64
        (read-only: computed once per format).

        Overflow gives what the format's conversion gives (``fmt.overflow``): +-inf, NaN (a format
        without infinity) or +-max (a saturating one); values at most half the smallest subnormal
        give 0 (+0 where there is no -0).  Exponent-only formats (float8_e8m0fnu) are not handled.
        """
        return self._memoized(("rounded", fmt.name), lambda: self._round(fmt))

    def _rounded_normal(self, fmt: Format) -> bool:
        """Whether every value of :meth:`rounded` is a normal number of ``fmt`` (finite, at least ``fmt.tiny``
        in magnitude): known where it was made by :meth:`_round_plain` (False otherwise: not known)."""
        self.rounded(fmt)
        return ("normal", fmt.name) in self._memo

    def _round(self, fmt: Format) -> np.ndarray:
        out = self._round_plain(fmt)
        if out is not None:
            self._memo["normal", fmt.name] = True
            return out
        hi, lo, s = self.hi, self.lo, self.scale
        finite = np.isfinite(hi) & (hi != 0)
        e = np.where(finite, self._exponent() + s, 0)
        q = np.maximum(e, fmt.min_exponent) - (fmt.precision - 1)  # log2 of the quantum at x
        q = np.where(finite, q, 0)
        with np.errstate(all="ignore"):
            shift = np.clip(s - q, -2000, 2000).astype(np.int32)  # (numpy's ldexp is fast for int32)
            t = np.ldexp(hi, shift)  # x / quantum, exact unless x is far below the format (then t -> 0)
            frac = t - np.floor(t)
            n = np.rint(t)
            n = np.where((frac == 0.5) & (lo > 0), np.floor(t) + 1, n)
            n = np.where((frac == 0.5) & (lo < 0), np.floor(t), n)
            out = np.ldexp(n, np.clip(q, -2000, 2000).astype(np.int32))
        out = np.where(finite, out, hi)  # zeros, infinities, NaN as they are
        big = np.abs(out) > fmt.max  # (and +-inf)
        if big.any():
            if fmt.overflow == "inf":
                out = np.where(big, np.copysign(np.inf, out), out)
            elif fmt.saturates:
                out = np.where(big, np.copysign(fmt.max, out), out)
            else:
                out = np.where(big, np.nan, out)
        if not fmt.signed_zero:
            out = np.where(out == 0, 0.0, out)
        return out + 0.0

    def _round_plain(self, fmt: Format) -> np.ndarray | None:
        """:meth:`_round` where every row is :meth:`_plain` (x = hi, a float64) and ``fmt`` has fewer bits than
        float64, with every result a normal number of ``fmt`` (checked; else None): round to nearest, ties to
        even, on hi's bits.  For a normal x of ``fmt``, ``_round`` scales x to ``t = x / quantum`` in
        ``[2**(p-1), 2**p)`` (exact), takes ``rint(t)`` (ties to even; ``lo = 0`` breaks no tie) and scales back;
        on the bit pattern b of x (sign and magnitude) that is dropping its ``k = 53 - p`` low significand bits
        with round to nearest even: ``b + (2**(k-1) - 1) + ((b >> k) & 1)``, the low k bits then cleared (a carry
        out of the significand is the next binade, as ``rint(t) = 2**p`` is).  None where some |x| is below
        ``fmt.tiny`` (the quantum is then fixed: subnormal results or 0) or some result beyond ``fmt.max``
        (the format's overflow convention), and for exponent-only formats (float8_e8m0fnu, which
        :meth:`rounded` does not handle: it keeps what the general code gives)."""
        k = 53 - fmt.precision
        if not (0 < k < 52) or fmt.fraction_bits < 1 or not self._plain():  # (not exponent-only formats)
            return None
        if not self._magnitude().min() >= fmt.tiny:
            return None
        b = self.hi.view(np.uint64)
        r = b + np.uint64(2 ** (k - 1) - 1)
        r += (b >> np.uint64(k)) & np.uint64(1)
        r &= np.uint64(~(2**k - 1) & (2**64 - 1))
        out = r.view(np.float64)
        if not (-fmt.max <= out.min() and out.max() <= fmt.max):
            return None
        return out

    def text(self, digits: int = 10) -> list[str]:
        """Each exact value to ``digits`` significant digits, also below float64's range; a value
        held at the floor (below 2**SCALE_FLOOR, where only that bound is kept) as the bound,
        e.g. ``<2^-1099511627776`` (``-<...`` for a negative one)."""
        out = []
        for hi, lo, s in zip(self.hi.tolist(), self.lo.tolist(), self.scale.tolist()):
            if s == 0 or not np.isfinite(hi):
                out.append(f"{hi + lo:.{digits}g}")
            elif s == SCALE_FLOOR and abs(hi) < 1:  # held below 2**SCALE_FLOOR (hi not normalized)
                out.append(f"{'-' if math.copysign(1, hi) < 0 else ''}<2^{SCALE_FLOOR}")
            else:
                out.append(mpmath.nstr(mpmath.ldexp(mpmath.mpf(hi) + lo, s), digits))
        return out

    @property
    def value(self) -> np.ndarray:
        """The float64 nearest to each exact value (for display; 0 below float64's range)."""
        return self.rounded(FORMATS["float64"])

    def near_boundary(self, fmt: Format, error: float) -> np.ndarray:
        """Rows whose exact value lies within ``error * |x|`` of a rounding boundary of ``fmt``
        (a midpoint between neighbours, half the smallest subnormal, the overflow threshold):
        an approximation that good may round either way there."""
        finite = np.isfinite(self.hi) & (self.hi != 0)
        e = np.where(finite, self._exponent() + self.scale, 0)
        q = np.maximum(e, fmt.min_exponent) - (fmt.precision - 1)
        with np.errstate(all="ignore"):
            t = np.ldexp(self.hi, np.clip(self.scale - q, -2000, 2000).astype(np.int32))
            dist = np.abs(np.abs(t - np.floor(t)) - 0.5)  # distance to the midpoint, in quanta
            slack = np.abs(t) * error * 2 + 2.0**-40
        return finite & (dist <= slack)


def from_mpmath(values) -> Exact:
    """Split exact mpmath values into an :class:`Exact` (scaled below ``SCALE_BELOW``)."""
    n = len(values)
    hi, lo = np.zeros(n), np.zeros(n)
    scale, zero = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    for i, r in enumerate(values):
        if mpmath.isnan(r) or mpmath.isinf(r):
            hi[i] = float(r)
            continue
        if r == 0:
            zero[i] = True
            continue
        s = 0
        if abs(r) >= SCALE_ABOVE:  # (float(r) could be inf: the loss would read as infinite)
            s = int(mpmath.frexp(r)[1]) - 1
            r = mpmath.ldexp(r, -s)
        elif abs(r) < SCALE_BELOW:
            # below 2**SCALE_FLOOR the value is held at that scale (hi -> 0): it rounds to 0 in every format
            s = max(int(mpmath.floor(mpmath.log(abs(r), 2))), SCALE_FLOOR)
            r = mpmath.ldexp(r, -s)
        h = float(r)
        hi[i], scale[i] = h, s
        if np.isfinite(h):
            lo[i] = float(r - mpmath.mpf(h))
    return Exact(hi, lo, scale, zero)


def from_longdouble(r: np.ndarray, zero: np.ndarray) -> Exact:
    """Split extended-precision values into an :class:`Exact` (``zero`` decided exactly by the caller).
    float64 values (the float64 tier's) are split in float64: the same hi, scale and lo (= 0) without
    longdouble's slow x87 passes."""
    wide = np.float64 if np.asarray(r).dtype == np.float64 else np.longdouble
    r = np.asarray(r, dtype=wide)
    if wide is np.float64 and r.ndim == 1 and r.size:
        a = np.abs(r)
        if a.min() >= SCALE_BELOW and a.max() < SCALE_ABOVE:  # (the usual case; NaN fails both)
            # every value finite, non-zero and in range: scale 0, hi = r (+ 0.0 changes no non-zero value),
            # lo = r - hi = +0 (below: the same values in a few passes)
            z = np.asarray(zero, dtype=bool)
            n = len(r)
            return Exact(np.where(z, 0.0, r), np.zeros(n), np.zeros(n, dtype=np.int64), z.copy())
    with np.errstate(all="ignore"):
        tiny = np.isfinite(r) & (r != 0) & ((np.abs(r) < SCALE_BELOW) | (np.abs(r) >= SCALE_ABOVE))
        scale = np.zeros(r.shape, dtype=np.int64)
        scaled = r
        if tiny.any():  # (frexp and ldexp of longdouble are slow: only where needed; also above 2**1023)
            _, e = np.frexp(r[tiny])
            scale[tiny] = e.astype(np.int64) - 1
            scaled = r.copy()
            scaled[tiny] = np.ldexp(r[tiny], -scale[tiny])
        hi = scaled.astype(np.float64) + 0.0  # -0 -> +0, as mpmath gives
        lo = np.where(np.isfinite(hi), (scaled - hi.astype(wide)).astype(np.float64), 0.0)
    hi = np.where(zero, 0.0, hi)
    return Exact(hi, np.where(zero, 0.0, lo), np.where(zero, 0, scale), np.asarray(zero, dtype=bool).copy())


@functools.cache
def _ln2_parts() -> tuple:
    """ln 2 = L1 + L2 + L3 (+ ~2**-108): L1 and L2 of 22 bits (j L1 and j L2 are exact in
    longdouble for |j| < 2**42), L3 the longdouble nearest the rest."""
    with mpmath.workprec(200):
        ln2 = +mpmath.ln2
        l1 = mpmath.floor(ln2 * 2**22) / 2**22
        l2 = mpmath.floor((ln2 - l1) * 2**44) / 2**44
        rest = ln2 - l1 - l2
        a = float(rest)
        b = float(rest - a)
    return np.longdouble(float(l1)), np.longdouble(float(l2)), np.longdouble(a) + np.longdouble(b)


def exp_sum_scaled(hi: np.ndarray, lo: np.ndarray, use: np.ndarray) -> tuple[Exact, np.ndarray]:
    """Per row, sum_i e^(hi_i + lo_i) over the terms ``use`` marks, as an :class:`Exact`, also
    far below longdouble's range (where ``np.exp`` gives 0): ``(values, handled)``.

    Each term is 2**j e^r with j = rint(hi / ln 2) and r = ((hi - j L1) - j L2 - j L3) + lo
    (Cody-Waite with a 3-part ln 2: the first two differences are exact, so r is within
    2**-62 of the true reduced argument, |r| < 0.6); the terms are scaled by the row's
    largest 2**j and summed in longdouble.  Relative error at most 2 E + (K + 2) 2**-63 for
    K terms (E: :data:`crmath.WIDE_REL_ERROR` of longdouble).  hi is taken as at least
    -2**41 (a term below 2**(-2**41) is negligible beside any row that is not held at the
    floor).  Rows need a term and finite terms; a row whose value is below
    2**(SCALE_FLOOR - 1100) is held as :func:`from_mpmath` holds it (hi = 0 at scale
    SCALE_FLOOR); rows between that and 2**SCALE_FLOOR are not handled."""
    l1, l2, l3 = _ln2_parts()
    h = np.where(use, np.maximum(hi, -(2.0**41)), 0.0)
    low = np.where(use & (hi >= -(2.0**41)), lo, 0.0)  # (a clamped term's lo, up to ulp(hi) / 2, would overflow)
    j = np.rint(h / float(l1 + l2 + l3)).astype(np.int64)
    jl = j.astype(np.longdouble)
    r = (h.astype(np.longdouble) - jl * l1) - jl * l2
    r = (r - jl * l3) + low.astype(np.longdouble)
    some = use.any(axis=1)
    big = np.where(some, np.where(use, j, -(2**62)).max(axis=1), 0)  # the row's largest 2**j
    rel = np.where(use, np.maximum(j - big[:, None], -20000), 0).astype(np.int32)  # (2**-16000 below: vanish)
    total = np.where(use, np.ldexp(np.exp(r), rel), 0).sum(axis=1)
    mant, e = np.frexp(np.where(some, total, 1))
    top = 2 * mant
    out_hi = top.astype(np.float64)
    out_lo = (top - out_hi.astype(np.longdouble)).astype(np.float64)
    scale = big + e.astype(np.int64) - 1
    floor = scale < SCALE_FLOOR - 1100
    handled = some & ((scale >= SCALE_FLOOR) | floor) & np.isfinite(total)
    out_hi, out_lo = np.where(floor, 0.0, out_hi), np.where(floor, 0.0, out_lo)
    return Exact(out_hi, out_lo, np.where(floor, SCALE_FLOOR, scale), np.zeros(len(hi), dtype=bool)), handled


WIDE_ROW = 64  # rows of at least this many values are remembered across calls (see exact)
WIDE_MEMO_VALUES = 2**20  # at most this many values in the rows remembered (then it starts again)
_WIDE_MEMO: dict[tuple, mpmath.mpf] = {}
_wide_memo_values = 0


def exact(truth, inputs) -> Exact:
    """The truth's mpmath value per row of ``inputs``, exact to ``DIGITS`` digits.

    Rows are tuples of Python floats (exactly the format-rounded inputs);
    repeated rows cost once.  Wide rows (a tuple of at least ``WIDE_ROW`` floats in its arguments:
    mpmath takes ~10 us per value) are also remembered across calls in this process, keyed by the
    reference function and the row's exact values, up to ``WIDE_MEMO_VALUES`` values: the value is a
    pure function of them (the report's audits of several kernels on one worker ask for the same wide
    rows in each format).
    """
    global _wide_memo_values
    fn: Callable = truth.reference_fn
    cache: dict[tuple, mpmath.mpf] = {}
    out = []
    with mpmath.workdps(DIGITS):
        for row in truth.exact_rows(inputs):
            r = cache.get(row)
            if r is None:
                width = sum(len(a) for a in row if isinstance(a, tuple))
                if width >= WIDE_ROW:
                    key = (fn, row)
                    r = _WIDE_MEMO.get(key)
                    if r is None:
                        r = fn(*row)
                        if _wide_memo_values + width > WIDE_MEMO_VALUES:
                            _WIDE_MEMO.clear()
                            _wide_memo_values = 0
                        _WIDE_MEMO[key] = r
                        _wide_memo_values += width
                else:
                    r = fn(*row)
                cache[row] = r
            out.append(r)
        return from_mpmath(out)


def fast_error(dtype, terms: int) -> float:
    """Bound on the relative error of a fast reference evaluated in ``dtype`` (float64, or
    longdouble: also None, as in :func:`fast`) over rows of ``terms`` terms:
    ``2 E + (ceil(log2 terms) + 6) u``, with E the wide functions' bound (:data:`crmath.WIDE_REL_ERROR`)
    and u the wide unit roundoff (float64: plus 2**-43.5 for arguments rounded once).
    The longdouble bound is at least ``FAST_ERROR`` (the families' proofs use that)."""
    from .crmath import WIDE_REL_ERROR

    depth = max(int(terms) - 1, 1).bit_length() + 6
    if dtype is not None and np.dtype(dtype) == np.float64:  # + 2**-43.5: x_i - m rounded once (see softmax_ce)
        return 2 * WIDE_REL_ERROR["float64"] + 2.0**-43.5 + depth * 2.0**-53
    return max(FAST_ERROR, longdouble_error(terms))


def longdouble_error(terms: int) -> float:
    """The longdouble fast reference's own bound over rows of ``terms`` terms, without
    :data:`FAST_ERROR`'s floor: ``2 E + (ceil(log2 terms) + 6) 2**-64`` (E = :data:`crmath.WIDE_REL_ERROR`
    of longdouble; ~2**-58.4 for 10 terms).  What a bounded float64 reference must stay away from to
    know what the longdouble one gives (:func:`stabilitylab.analysis.engine._classified`)."""
    from .crmath import WIDE_REL_ERROR

    return 2 * WIDE_REL_ERROR["longdouble"] + (max(int(terms) - 1, 1).bit_length() + 6) * 2.0**-64


def fast_tier(truth, fmt: Format, inputs) -> tuple:
    """``(dtype, error)`` of the quickest fast reference of ``truth`` for ``inputs`` in ``fmt``:
    float64 where the truth supports it and the format has at most 24 bits (error
    :func:`fast_error` for the row width), else longdouble (None, ``FAST_ERROR``)."""
    if truth.fast_float64 and wide.wide_dtype(fmt) == np.float64:
        return np.float64, fast_error(np.float64, terms(inputs))
    return None, FAST_ERROR


def terms(inputs) -> int:
    """The number of terms a fast reference sums per row: the row width of logits, else 1."""
    return int(np.shape(getattr(inputs, "logits", np.zeros((1, 1))))[-1])


def fast(truth, inputs, dtype=None) -> Exact:
    """Like :func:`exact` (relative error below :func:`fast_error`), vectorized in ``dtype``
    (default longdouble; float64 where the truth supports it, for inputs of <= 24 bits).

    The truth's ``fast_reference(inputs)`` returns the value in longdouble (or as an :class:`Exact`),
    the exact-zero mask (decided exactly, not from the rounded value) and a mask
    of rows it handles; other rows (non-finite inputs) go through mpmath.
    """
    if truth.fast_reference is None or (dtype is None and not wide.LONGDOUBLE_IS_WIDE):
        return exact(truth, inputs)
    with np.errstate(all="ignore"):
        if dtype is None:
            r, zero, handled = truth.fast_reference(inputs)
        else:
            r, zero, handled = truth.fast_reference(inputs, dtype=dtype)
    out = r if isinstance(r, Exact) else from_longdouble(r, zero)
    if not handled.all():
        rows = np.flatnonzero(~handled)
        out = out.put(rows, exact(truth, inputs.take(rows)))
    return out
