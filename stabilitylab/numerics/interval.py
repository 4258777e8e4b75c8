"""Run the kernels over whole ranges of inputs at once, with proven bounds.

The threshold search uses this to *prove* that a method is ok (or finite) on a
range of the parameter without evaluating every representable value in it.
Every value a kernel computes becomes a :class:`Bounds` with, for every point of
the range at once,

* ``[lo, hi]``  an enclosure of the value the format computes (rounded at every
  operation).  Sound because every operation is monotone in each operand and
  rounding to nearest is monotone (a <= b implies fl(a) <= fl(b)): the rounded
  results over the operands' ranges lie between the rounded results at the
  corners, which are computed exactly as :class:`Arith` computes them (the
  format's own IEEE + - * /, :mod:`stabilitylab.numerics.crmath` for exp, log, log1p, tanh).
  Flush-to-zero is monotone too.
* ``[xlo, xhi]`` an enclosure of the value the same formula has in exact
  arithmetic (in a wider type: float64 for formats of at most 24 bits, x86
  ``longdouble`` for float64, moved outwards by more than that type's own error:
  one ulp for + - * /, ``FUNCTION_SLACK`` relative for exp, log, log1p, tanh), and
* ``err``       a bound on |computed - exact formula| at each point: a running
  error analysis.  A rounding adds at most ``u * |y| + smallest_subnormal / 2``
  (``tiny`` under flush-to-zero): relative in the normal range, *absolute* for a
  subnormal result (a subnormal exp(-d) is off by up to 2**-1075 in float64,
  whatever its size); an operation passes its operands' errors on through a bound
  of its derivative over the enclosures (Lipschitz bounds:
  ``|exp(a') - exp(a)| <= exp(max) |a' - a|``, ``|log a' - log a| <= |a' - a| /
  min`` ...).

  The error bound is itself computed soundly: it is held in the wide type (whose
  range reaches far below the format's: ``smallest_subnormal / 2`` is an exact,
  non-zero power of two there, 2**-1075 for float64, which float64 itself would
  round to 0), and every sum, product and quotient of bounds is rounded upward
  (:func:`_up`: the next wide value above the rounded-to-nearest one, which is
  above the exact result, also where that underflows to 0).

The enclosures lose the dependency between operands (x - x is not 0, and
e/(e + 1) spreads), so comparing them with the exact loss only works where the
loss varies slowly; the error bound keeps it: for a method whose formula is the
exact loss (``Method.exact_formula``), |computed - exact| <= err at every point,
which proves ``rel_error <= tolerance`` wherever err <= tolerance * min |exact|.
A bound that is NaN or infinite proves nothing: a range is then simply not
certified, never wrongly certified.

The kernels run unchanged: :class:`IntervalArith` offers the operations of
:class:`~stabilitylab.numerics.arith.Arith`.  :meth:`IntervalArith.shift` knows that the
row maximum's own entry of x - max(x) is exactly 0 when the maximum is the same
entry over the whole range.

**A softmax probability as one function** (:meth:`IntervalArith.div`).  The quotient
``e_y / S`` of an entry ``e_y = pick(e, y)`` of a row and the pairwise sum ``S =
tree(add, e)`` of that same row has e_y on both sides; its corners ``[lo(e_y) / hi(S),
hi(e_y) / lo(S)]`` spread by the whole width of the range (near a float32 threshold of
logits [d, 0] that is hundreds of ulps of p where every point is within one).  Where

1. every entry of the row is >= 0 over the range, and
2. every addition of the tree is *exact* for every combination of values in the
   entries' enclosures (:func:`_exact_tree`: for non-negative format values a in
   [a1, a2] and b in [b1, b2], every a is a multiple of ulp(a1) and every b of ulp(b1)
   (a format value is a multiple of the spacing of its binade, which grows with the
   magnitude; powers of two; where a1 = a2, of a1's own lowest set bit: :func:`_grain`),
   so a + b is a multiple of g, the smaller of the two grains; if ulp(a2 + b2) <= g and
   a2 + b2 <= max, every such sum (at most a2 + b2, so ulp(a + b) <= g) is a multiple of
   the spacing at its own magnitude and in range: a format value, so the rounded sum is
   the exact one; a node's enclosure is then the exact sums of its children's ends),

the computed sum is S = e_y + R exactly, R = sum of the other entries, and the computed
quotient is fl(e_y / (e_y + R)).  The exact function x / (x + r) increases with x >= 0
and decreases with r >= 0 (derivatives r / (x + r)**2 and -x / (x + r)**2), and rounding
is monotone, so over the range the quotient lies in ``[fl(lo(e_y) / (lo(e_y) + hi(R))),
fl(hi(e_y) / (hi(e_y) + lo(R)))]``, each denominator a combination of the entries' bounds
(summed by the same exact tree).  That enclosure, intersected with the corners', is
tight where e_y and R move apart (logits [d, 0]: e_y = exp(d) grows, R = 1) and never
wrong where they do not.  Not under flush-to-zero (a flushed partial sum is not exact), and not in
float64: its thresholds are sampled where the error hovers at the tolerance, and a tighter enclosure
proves other ranges, so the points sampled and the bound reported (``exact: false``) would move (at
tolerance 1e-3 the naive overflow's 30.543432624664195 became 30.52720561344854); float64's searches
were no faster with it.

**A log1p at a tiny operand** (:meth:`IntervalArith.log1p`).  The correctly rounded log1p(x') of a format
value x' is the format value nearest to log1p(x'), and x' is itself a format value, so the operation's own
error is |cr(log1p(x')) - log1p(x')| <= |x' - log1p(x')| <= x'**2 (for |x'| <= 1/2: x - log1p(x) lies in
[0, x**2 / 2] for x >= 0, and |log1p(x) - x| <= x**2 / (2 (1 - |x|)) <= x**2 for -1/2 <= x < 0).  Where the
computed operand's enclosure lies within ``u**2`` of 0, x'**2 <= u**2 |x'|, far below the one rounding
(``u |y| + smallest_subnormal / 2``) bounded otherwise, which for a subnormal result is absolute: so the
error bound carried through there is the operand's (through the Lipschitz bound) plus x'**2 (in fact
cr(log1p(x')) = x' there, but the bound does not need it).  This is what proves softmax_ce's
log_softmax_log1p in float32 on the subnormal staircase of logits [d, 0] / [0, -d] (label 0): for d from
~87.3 (exp(-d) below 2**-126) to ~103.97 (exp(-d) rounds to 0) its value is cr(exp(-d)) = k 2**-149, a step
function of d (z = -d is exact, the max's own exp(0) is dropped, 0 + s is exact, log1p(s) = s, s - 0 = s),
whose relative error 1/(2k) at most reaches the tolerance 2**-12 only near k = 2**11; with one absolute
rounding (exp's) instead of two (exp's and log1p's) the error bound proves every step above k ~ 2**11 on
ranges of any width, instead of splitting each step's edge down to ``LEAF`` values.  Only for formats of at
most 24 bits and not under flush-to-zero (float64's sampled bounds depend on which ranges are proven: they
stay as they were).
"""

from __future__ import annotations

import functools

import numpy as np

from . import crmath
from .arith import Arith
from .formats import Format
from .wide import wide_dtype

__all__ = ["Bounds", "IntervalArith", "FUNCTION_SLACK", "supported"]

FUNCTION_SLACK = 2.0**-44  # relative: far above numpy's float64 exp, log, log1p errors (a few ulps)
_LONG_SLACK = 2.0**-58  # the same for libm's longdouble functions


def supported(fmt: Format) -> bool:
    """Whether bounds can be computed for this format (float64 needs a wider longdouble).  Not for a
    precision policy: these bounds assume every operation rounds to one format (its thresholds are
    established point by point, or flagged ``exact: false``)."""
    return not fmt.is_policy and wide_dtype(fmt) is not None


def _up(x):
    """x moved up to the next value of its type: applied to a sum, product or quotient of
    non-negative bounds computed with rounding to nearest, the result is at least the exact
    one (if fl(t) < t, both lie in one binade or fl(t) is subnormal or 0, and t - fl(t) is at
    most half the spacing there).  inf and NaN stay."""
    return np.nextafter(x, np.asarray(np.inf, dtype=np.asarray(x).dtype))


def _unit(x: "Bounds") -> np.ndarray:
    """Where the computed value is exactly +-1 over the whole range (a product or quotient by
    it is exact: its operand is already a format value, flushed under flush-to-zero)."""
    return (x.lo == x.hi) & (np.abs(x.lo) == 1)


def _grain(fmt: Format, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A power of two that every format value in [lo, hi] (0 <= lo <= hi) is a multiple of: ulp(lo) (the
    values from lo up lie in binades whose spacing is at least lo's); for one value (lo == hi) its own lowest
    set bit, which may be far coarser (1 is a multiple of 1, not only of ulp(1)); inf for 0 alone."""
    with np.errstate(all="ignore"):
        m, e = np.frexp(lo)
        significand = (m * 2.0**53).astype(np.int64)  # (lo is a float64: its significand is an integer below 2**53)
        own = np.ldexp((significand & -significand).astype(np.float64), e - 53)
    return np.where(lo == hi, np.where(lo == 0, np.inf, own), fmt.ulp(lo))


class Bounds:
    """Per element: computed value in [lo, hi]; exact-formula value in [xlo, xhi]; |computed - exact| <= err."""

    __slots__ = ("lo", "hi", "xlo", "xhi", "err")

    def __init__(self, lo, hi, xlo=None, xhi=None, err=None):
        self.lo, self.hi = np.asarray(lo), np.asarray(hi)
        self.xlo = self.lo if xlo is None else np.asarray(xlo)
        self.xhi = self.hi if xhi is None else np.asarray(xhi)
        self.err = np.zeros(self.lo.shape) if err is None else np.asarray(err)

    @property
    def shape(self):
        return self.lo.shape

    def __len__(self) -> int:
        return len(self.lo)

    def __getitem__(self, index) -> "Bounds":
        return Bounds(self.lo[index], self.hi[index], self.xlo[index], self.xhi[index], self.err[index])

    @staticmethod
    def of(x) -> "Bounds":
        return x if isinstance(x, Bounds) else Bounds(np.asarray(x, dtype=np.float64), np.asarray(x, dtype=np.float64))

    def magnitude(self):
        """max |value| over both enclosures."""
        return np.maximum(np.maximum(np.abs(self.lo), np.abs(self.hi)), np.maximum(np.abs(self.xlo), np.abs(self.xhi)))

    def floor(self):
        """min |value| over both enclosures (0 if they reach zero)."""
        low = np.minimum(self.lo, self.xlo)
        high = np.maximum(self.hi, self.xhi)
        return np.where((low <= 0) & (high >= 0), 0.0, np.minimum(np.abs(low), np.abs(high)))


def _bad(x) -> np.ndarray:
    return np.isnan(x)


def _unless_nan(x: np.ndarray, fill: float) -> np.ndarray:
    """x with its NaNs replaced by ``fill`` (x itself where it has none)."""
    bad = _bad(x)
    return np.where(bad, fill, x) if bad.any() else x


def _once(f, fmt: Format, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f(fmt, lo) and f(fmt, hi) (crmath: correctly rounded), as float64, with each input that
    crmath may have to settle with mpmath evaluated once per distinct value (by bit pattern:
    -0 and +0 stay apart).  Enclosures repeat values (a saturated probability's 1 - 2**-23
    in float32, whose log is such an input, appeared 19000 times in one search), and every
    repeat would cost mpmath again.  Which inputs those are is guessed generously (see
    ``_maybe_hard``); a wrong guess costs time only, never a different value.  float64's exp, log and
    log1p where the compiled kernel is loaded (:func:`_compiled_float64`): every input at once (the kernel
    decides ~all of them at a few ns each; sorting out the distinct ones cost ten times that)."""
    x = np.concatenate([np.ravel(lo), np.ravel(hi)])
    if fmt.precision > 24 and _compiled_float64(f.__name__, fmt):
        out = f(fmt, x).astype(np.float64)
        return out[:lo.size].reshape(np.shape(lo)), out[lo.size:].reshape(np.shape(hi))
    bits = x.view(np.dtype(f"u{x.dtype.itemsize}"))
    if fmt.precision > 24:  # crmath costs far more per input than finding the distinct ones
        keys, inverse = np.unique(bits, return_inverse=True)
        out = f(fmt, keys.view(x.dtype)).astype(np.float64)[inverse]
    else:
        hard = _maybe_hard(f.__name__, fmt, x)
        if hard.any():
            out = np.empty(x.shape, dtype=np.float64)
            out[~hard] = f(fmt, x[~hard]).astype(np.float64)
            keys, inverse = np.unique(bits[hard], return_inverse=True)
            out[hard] = f(fmt, keys.view(x.dtype)).astype(np.float64)[inverse]
        else:
            out = f(fmt, x).astype(np.float64)
    return out[:lo.size].reshape(np.shape(lo)), out[lo.size:].reshape(np.shape(hi))


_NUMPY_FUNCTIONS = {"exp": np.exp, "log": np.log, "log1p": np.log1p, "tanh": np.tanh}


def _compiled_float64(name: str, fmt: Format) -> bool:
    """Whether crmath's ``name`` in ``fmt`` (float64) goes to the compiled kernel first (:mod:`.kernel`
    loaded; crmath's ``_COMPILED64`` functions): the same values as crmath's numpy stages, whichever way."""
    from . import kernel

    return fmt.precision == 53 and name in crmath._COMPILED64 and kernel.load() is not None


def _maybe_hard(name: str, fmt: Format, x: np.ndarray) -> np.ndarray:
    """Inputs whose function value lies near a rounding boundary of the format: those crmath
    cannot decide from its float64 evaluation (within ``WIDE_REL_ERROR`` of a boundary),
    found with four times that margin."""
    with np.errstate(all="ignore"):
        w = _NUMPY_FUNCTIONS[name](x.astype(np.float64))
        err = np.abs(w) * (4 * crmath.WIDE_REL_ERROR["float64"])
        below, above = fmt.round(w - err), fmt.round(w + err)
    unit = np.dtype(f"u{below.dtype.itemsize}")
    return below.view(unit) != above.view(unit)


def _operand(a):
    """How an operand enters the key of a shared operation: arrays and bounds by identity
    (they are never written in place), operations by name, numbers by value."""
    if isinstance(a, (Bounds, np.ndarray)):
        return id(a)
    return getattr(a, "__name__", None) or a if callable(a) else a


def _shared(op):
    """``op`` computed once per :class:`IntervalArith` and identical operands: the kernels of
    one experiment share their first steps (``shift(x)``, ``exp(z)``, a sigmoid ...), and
    every operation here is a function of its operands only."""
    @functools.wraps(op)
    def shared(self, *args, **kwargs):
        try:
            key = (op.__name__, *(_operand(a) for a in args))
            hit = self._shared.get(key)
        except TypeError:  # an unhashable operand: not shared
            return op(self, *args, **kwargs)
        if hit is None:  # the arrays among the operands are kept with the result, so their ids stay theirs
            kept = tuple(a for a in args if isinstance(a, (Bounds, np.ndarray)))  # (not bound methods: a cycle)
            hit = self._shared[key] = (op(self, *args, **kwargs), kept)
        return hit[0]
    return shared


class IntervalArith:
    """The operations of :class:`Arith` on :class:`Bounds`, for ``rows`` cases in ``fmt``.

    The steps kernels share (exp, shift, a tree sum ...), applied again to the very same
    operands, return their first result (see ``_shared``): run the kernels of one
    experiment on one instance and their common steps are computed once."""

    def __init__(self, fmt: Format, rows: int, ftz: bool = False):
        # a saturating format is bounded through its twin that overflows to +-inf: an enclosure reaching
        # +-inf contains the +-max the format gives, and an infinite error bound certifies nothing there
        # (the error of a saturated result is not u |y|)
        self.fmt, self.rows, self.ftz = fmt.held_twin, rows, ftz
        self._saturate = fmt.max if fmt.saturates else None  # see _result
        self._shared: dict = {}
        self.dtype = np.dtype(np.float64)
        self.wide = wide_dtype(fmt)
        self.u = self.wide.type(fmt.unit_roundoff)  # a power of two: exact in the wide type
        # the absolute error of one rounding near 0, exact in the wide type (a power of two; in
        # float64 2**-1075, which float64 itself rounds to 0: never compute it in the format)
        self.eta = self.wide.type(fmt.tiny) if ftz else self.wide.type(fmt.smallest_subnormal) / 2
        assert self.eta > 0 and (ftz or self.eta * 2 == self.wide.type(fmt.smallest_subnormal))
        self.wide_tiny = np.finfo(self.wide).smallest_subnormal
        self.step = 0
        # results of pick and of a tree of adds, by id: id -> (kind, result, row[, index]) (the result is kept,
        # so the id stays its own): what :meth:`div` needs to see a softmax probability (module docstring)
        self._origins: dict[int, tuple] = {}

    # ------------------------------------------------------------ helpers
    def _w(self, x):
        return np.asarray(x).astype(self.wide)

    def _outward(self, lo, hi, slack: float | None):
        """Move wide-type bounds outwards by the wide type's own error."""
        with np.errstate(all="ignore"):
            if slack is None:  # correctly rounded in the wide type: one ulp
                return (np.nextafter(lo, self.wide.type(-np.inf)), np.nextafter(hi, self.wide.type(np.inf)))
            # (4 ulps of the wide type's subnormals: the functions' absolute error there)
            tiny = 4 * self.wide_tiny
            down, up = lo - np.abs(lo) * slack - tiny, hi + np.abs(hi) * slack + tiny
            finite_lo, finite_hi = np.isfinite(lo), np.isfinite(hi)  # (infinite ends stay)
            return (down if finite_lo.all() else np.where(finite_lo, down, lo),
                    up if finite_hi.all() else np.where(finite_hi, up, hi))

    def _e(self, x) -> np.ndarray:
        """An error bound (or a factor of one) in the wide type."""
        return np.asarray(x).astype(self.wide)

    def _own(self, x) -> np.ndarray:
        """Format values in the format's dtype, or in float32 for a twin (whose conversion the dtype's is not)."""
        return np.asarray(x, dtype=np.float64).astype(np.float32 if self.fmt.held else self.fmt.dtype)

    def _flush(self, x: np.ndarray) -> np.ndarray:
        return np.where(np.abs(x) < self.fmt.tiny, 0.0, x) if self.ftz else x

    def _result(self, lo, hi, xlo, xhi, carried, slack: float | None = None, absolute: bool = True,
                exact=None) -> Bounds:
        """Assemble an operation's bounds: the computed enclosure (format values), the exact
        enclosure moved outwards in the wide type, and the carried error plus one rounding's.

        The absolute part (eta) is added only where the computed enclosure reaches below tiny;
        ``absolute=False``: none at all (a sum of format values is exact when it is subnormal,
        without flush-to-zero); ``exact``: where the computed operation is exact over the whole
        range (a product or quotient by exactly +-1): no rounding."""
        xlo, xhi = self._outward(self._w(xlo), self._w(xhi), slack)
        with np.errstate(all="ignore"):
            lo = self._flush(np.asarray(lo, dtype=np.float64))
            hi = self._flush(np.asarray(hi, dtype=np.float64))
            # |fl(y) - y| <= max(u |fl(y)|, eta) <= u * size + eta: relative above tiny, absolute below
            # (eta = smallest_subnormal / 2 exactly, never 0); in the wide type, every step rounded upward
            size = _up(self._e(np.maximum(np.abs(lo), np.abs(hi))) * (1 + 2 * self.u))
            rounding = _up(size * self.u)
            if absolute or self.ftz:
                # the absolute part only where a result may be below tiny (subnormal, flushed or 0):
                # a result of at least tiny is off by at most u |fl(y)| (also when y rounded up to tiny)
                below = ~((lo >= self.fmt.tiny) | (hi <= -self.fmt.tiny))
                if below.any():  # (each np.where below is skipped where it would change nothing)
                    rounding = np.where(below, _up(rounding + self.eta), rounding)
            if exact is not None:
                rounding = np.where(exact, 0.0, rounding)
            carried = self._e(carried)
            err = _up(carried + rounding)
            exact_here = rounding == 0
            if exact_here.any():
                err = np.where(exact_here, carried, err)
            # infinite bounds are sound (log(0) = -inf is a value); NaN bounds enclose nothing
            lo, hi = _unless_nan(lo, -np.inf), _unless_nan(hi, np.inf)
            xlo, xhi = _unless_nan(xlo, -np.inf), _unless_nan(xhi, np.inf)
            lost = _bad(err) | ~np.isfinite(size)
            if lost.any():
                err = np.where(lost, np.inf, err)
            if self._saturate is not None:  # the format gives +-max for +-inf: an end at +inf (below: -inf)
                top = self._saturate        # moves to +max; the other infinite ends stay (NaN, a pole: the
                lo, hi = np.minimum(lo, top), np.maximum(hi, -top)  # range proves nothing finite); the error
                # bound stays infinite there (size above)
        return Bounds(lo, hi, xlo, xhi, err)

    def _op(self, f, *args) -> np.ndarray:
        """f on format arrays, as Arith computes it (correctly rounded), as float64."""
        with np.errstate(all="ignore"):
            y = np.asarray(f(*(self._own(a) for a in args)))
            if self.fmt.held:  # float32 + - * / of format values, rounded once: as Arith computes
                y = self.fmt.round32(y)
            return y.astype(np.float64)

    # ------------------------------------------------------------ bookkeeping Arith offers
    def fork(self) -> "IntervalArith":
        return self

    def record(self, event: str, mask, where=None) -> None:
        """Events are not tracked: only values are bounded."""

    # ------------------------------------------------------------ operations
    def load(self, x, where=None) -> Bounds:
        """Inputs (already format values: the threshold grids are)."""
        x = Bounds.of(x)
        with np.errstate(all="ignore"):
            lo = self.fmt.round(x.lo, np.float64)
            hi = self.fmt.round(x.hi, np.float64)
        if not (np.array_equal(lo, x.lo, equal_nan=True) and np.array_equal(hi, x.hi, equal_nan=True)):
            raise ValueError("interval inputs must be values of the format")
        lo, hi = self._flush(lo), self._flush(hi)  # denormals-are-zero, as Arith.load
        return Bounds(lo, hi)

    def store(self, x, where=None) -> Bounds:
        """Values of a wider format (ranges of a cast's float32 inputs) rounded to this one.  Rounding
        is monotone, so [fl(lo), fl(hi)] encloses every point's stored value (an overflow end, inf or
        the NaN of a format without inf, makes the enclosure infinite); the exact value is x itself,
        and each point is off by one rounding (:meth:`_result`'s bound)."""
        x = Bounds.of(x)
        with np.errstate(all="ignore"):
            lo = self.fmt.round(x.lo).astype(np.float64)
            hi = self.fmt.round(x.hi).astype(np.float64)
        return self._result(lo, hi, x.lo, x.hi, 0.0)

    def const(self, value):
        """As Arith.const: rounded (held in float64), +-inf saturated where the format saturates."""
        v = self.fmt.round(value, np.float64)
        return v if self._saturate is None else np.where(np.isinf(v), np.copysign(self._saturate, v), v)

    def add(self, a, b, where=None) -> Bounds:
        a, b = Bounds.of(a), Bounds.of(b)
        w = self._w
        with np.errstate(all="ignore"):
            return self._result(self._op(np.add, a.lo, b.lo), self._op(np.add, a.hi, b.hi),
                                w(a.xlo) + w(b.xlo), w(a.xhi) + w(b.xhi), self._sum(a.err, b.err), absolute=False,
                                exact=self._zero_operand(a, b))

    def sub(self, a, b, where=None) -> Bounds:
        a, b = Bounds.of(a), Bounds.of(b)
        w = self._w
        with np.errstate(all="ignore"):
            return self._result(self._op(np.subtract, a.lo, b.hi), self._op(np.subtract, a.hi, b.lo),
                                w(a.xlo) - w(b.xhi), w(a.xhi) - w(b.xlo), self._sum(a.err, b.err),
                                absolute=False, exact=self._zero_operand(a, b))

    def _zero_operand(self, a: Bounds, b: Bounds):
        """Where one computed operand of a + or - is 0 over the whole range: the computed result is the
        other operand (a format value), or its negation, with no rounding (module docstring, **A log1p at
        a tiny operand**).  Formats of at most 24 bits without flush-to-zero only (None elsewhere)."""
        if self.ftz or self.fmt.precision > 24:
            return None
        zero = ((a.lo == 0) & (a.hi == 0)) | ((b.lo == 0) & (b.hi == 0))
        return zero if zero.any() else None

    def _sum(self, a, b):
        """a + b of error bounds, rounded upward (0 stays 0: an exact operand pair)."""
        e = self._e
        return np.where((a == 0) & (b == 0), 0.0, _up(e(a) + e(b))).astype(self.wide, copy=False)

    def _times(self, a, b):
        """a * b of non-negative bounds, rounded upward (0 where either is 0: an exact operand)."""
        e = self._e
        with np.errstate(all="ignore"):
            return np.where((a == 0) | (b == 0), 0.0, _up(e(a) * e(b))).astype(self.wide, copy=False)

    def _corners(self, f, alo, ahi, blo, bhi, computed: bool):
        """min and max of f over the four corners: in the format (``computed``) or in the wide type."""
        g = (lambda x, y: self._op(f, x, y)) if computed else (lambda x, y: f(self._w(x), self._w(y)))
        with np.errstate(all="ignore"):
            c = np.stack(np.broadcast_arrays(g(alo, blo), g(alo, bhi), g(ahi, blo), g(ahi, bhi)))
            bad = np.isnan(c).any(axis=0)
            return np.where(bad, -np.inf, c.min(axis=0)), np.where(bad, np.inf, c.max(axis=0))

    def mul(self, a, b, where=None) -> Bounds:
        a, b = Bounds.of(a), Bounds.of(b)
        vlo, vhi = self._corners(np.multiply, a.lo, a.hi, b.lo, b.hi, True)
        xlo, xhi = self._corners(np.multiply, a.xlo, a.xhi, b.xlo, b.xhi, False)
        with np.errstate(all="ignore"):  # |a'b' - ab| <= |b'| |a' - a| + |a| |b' - b|
            carried = self._sum(self._times(b.magnitude(), a.err), self._times(a.magnitude(), b.err))
        return self._result(vlo, vhi, xlo, xhi, carried, exact=_unit(a) | _unit(b))

    def div(self, a, b, where=None) -> Bounds:
        a, b = Bounds.of(a), Bounds.of(b)
        vlo, vhi = self._corners(np.divide, a.lo, a.hi, b.lo, b.hi, True)
        xlo, xhi = self._corners(np.divide, a.xlo, a.xhi, b.xlo, b.xhi, False)
        pole = ((b.lo <= 0) & (b.hi >= 0)) | ((b.xlo <= 0) & (b.xhi >= 0))
        with np.errstate(all="ignore"):  # a'/b' - a/b = ((a' - a) b - a (b' - b)) / (b' b)
            low = self._e(b.floor())  # (|b'| |b| >= low**2: divided by low twice, each rounded upward)
            carried = self._sum(self._times(a.err, b.magnitude()), self._times(a.magnitude(), b.err))
            carried = np.where(carried == 0, 0.0, _up(_up(carried / low) / low))
        inf = np.full(np.shape(vlo), np.inf)
        out = self._result(np.where(pole, -inf, vlo), np.where(pole, inf, vhi), np.where(pole, -inf, xlo),
                           np.where(pole, inf, xhi), np.where(pole, np.inf, carried), exact=_unit(b) & ~pole)
        tight = self._probability(a, b)
        if tight is not None:  # (both enclose every point's computed value: so does their intersection)
            ok, q_lo, q_hi = tight
            out.lo = np.where(ok, np.maximum(out.lo, q_lo), out.lo)
            out.hi = np.where(ok, np.minimum(out.hi, q_hi), out.hi)
        return out

    def _probability(self, a: Bounds, b: Bounds):
        """For ``a = pick(e, y)`` over ``b = tree(add, e)`` (the same row e): per row, whether the
        enclosure of the module docstring's softmax probability applies, and its two ends (else None)."""
        picked, summed = self._origins.get(id(a)), self._origins.get(id(b))
        if (self.ftz or self.fmt.precision > 24 or picked is None or summed is None or picked[0] != "pick"
                or summed[0] != "sum" or picked[1] is not a or summed[1] is not b or picked[2] is not summed[2]):
            return None
        row, index = picked[2], np.asarray(picked[3])
        if np.ndim(row.lo) != 2:
            return None
        lo, hi = row.lo.astype(np.float64), row.hi.astype(np.float64)
        valid = index >= 0
        kk = np.where(valid, index, 0)[:, None]
        with np.errstate(all="ignore"):
            ok = valid & (lo >= 0).all(axis=1) & np.isfinite(hi).all(axis=1) & self._exact_tree(lo, hi)
            y_lo, y_hi = np.take_along_axis(lo, kk, axis=1)[:, 0], np.take_along_axis(hi, kk, axis=1)[:, 0]
            low_sum, high_sum = hi.copy(), lo.copy()  # (the others at their highest: the smallest quotient)
            np.put_along_axis(low_sum, kk, y_lo[:, None], axis=1)
            np.put_along_axis(high_sum, kk, y_hi[:, None], axis=1)
            s_low, s_high = self._tree_sum(low_sum), self._tree_sum(high_sum)
            ok &= (s_low > 0) & (s_high > 0)
            q_lo = self._op(np.divide, y_lo, np.where(ok, s_low, 1.0))
            q_hi = self._op(np.divide, y_hi, np.where(ok, s_high, 1.0))
        return ok, q_lo, q_hi

    def _tree_sum(self, x: np.ndarray) -> np.ndarray:
        """The pairwise sum of each row of format values, in the format (:meth:`Arith.tree`'s order)."""
        while x.shape[-1] > 1:
            if x.shape[-1] % 2:
                x = np.concatenate([x, np.zeros(x.shape[:-1] + (1,))], axis=-1)
            x = self._op(np.add, x[..., 0::2], x[..., 1::2])
        return x[..., 0]

    def _exact_tree(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Per row: every addition of the pairwise tree over entries in [lo, hi] (format values >= 0) is
        exact, for every combination of values in those enclosures (the module docstring's criterion,
        node by node; a node's enclosure is the exact sums of its children's ends)."""
        fmt = self.fmt
        ok = np.ones(lo.shape[0], dtype=bool)
        with np.errstate(all="ignore"):
            while lo.shape[-1] > 1:
                if lo.shape[-1] % 2:
                    pad = np.zeros(lo.shape[:-1] + (1,))
                    lo, hi = np.concatenate([lo, pad], axis=-1), np.concatenate([hi, pad], axis=-1)
                a1, a2, b1, b2 = lo[..., 0::2], hi[..., 0::2], lo[..., 1::2], hi[..., 1::2]
                top = a2 + b2
                exact = ((a1 >= 0) & (b1 >= 0) & (top <= fmt.max)
                         & (fmt.ulp(top) <= np.minimum(_grain(fmt, a1, a2), _grain(fmt, b1, b2))))
                ok &= exact.all(axis=-1)
                lo, hi = self._op(np.add, a1, b1), self._op(np.add, a2, b2)
        return ok

    def neg(self, a):
        a = Bounds.of(a)
        return Bounds(-a.hi, -a.lo, -a.xhi, -a.xlo, a.err)

    def abs(self, a) -> Bounds:
        a = Bounds.of(a)

        def hull(lo, hi):
            top = np.maximum(np.abs(lo), np.abs(hi))
            return np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi))), top

        return Bounds(*hull(a.lo, a.hi), *hull(a.xlo, a.xhi), a.err)

    def maximum(self, a, b) -> Bounds:
        a, b = Bounds.of(a), Bounds.of(b)
        return Bounds(np.maximum(a.lo, b.lo), np.maximum(a.hi, b.hi), np.maximum(a.xlo, b.xlo),
                      np.maximum(a.xhi, b.xhi), np.maximum(a.err, b.err))

    def _function(self, f, exact, lipschitz, a, domain_low: float, identity: bool = False) -> Bounds:
        """A monotone increasing function: ``f(fmt, x)`` as computed (correctly rounded),
        ``exact`` in the wide type; ``lipschitz(lowest, highest)`` bounds |f'| over the operand.

        ``identity``: f(x) = x + O(x**2) with |f(x) - x| <= x**2 for |x| <= 1/2 (log1p), so where the
        computed operand x' lies within ``u**2`` of 0 the correctly rounded f(x') is x' itself and the
        operation's own error is |x' - f(x')| <= x'**2 instead of one rounding (module docstring, **A
        log1p at a tiny operand**)."""
        a = Bounds.of(a)
        w = self._w
        with np.errstate(all="ignore"):
            vlo, vhi = _once(f, self.fmt, self._own(a.lo), self._own(a.hi))
            w_xlo, w_xhi = w(a.xlo), w(a.xhi)
            xlo, xhi = exact(w_xlo), exact(w_xhi)
            lowest = np.minimum(w(a.lo), w_xlo)  # the computed and the exact operand both lie in [lowest, highest]
            highest = np.maximum(w(a.hi), w_xhi)
            # the derivative bound in the wide type, widened by its own relative error (2**-40) and
            # its absolute error below the wide type's normal range (a few of its subnormals)
            lip = _unless_nan(_up(lipschitz(lowest, highest) * (1 + 2.0**-40) + 4 * self.wide_tiny), np.inf)
            carried = self._times(lip, a.err)
        v_out = (a.lo < domain_low) | np.isnan(a.lo) | np.isnan(a.hi)  # the computed operand may leave the domain
        x_out = (a.xlo < domain_low) | np.isnan(a.xlo) | np.isnan(a.xhi)
        slack = FUNCTION_SLACK if self.wide == np.float64 else _LONG_SLACK
        out = v_out | x_out
        kept = None
        if out.any():  # (each np.where here is skipped where it would change nothing)
            carried = np.where(out, np.inf, carried)
        if identity and not self.ftz and self.fmt.precision <= 24:
            with np.errstate(all="ignore"):
                size = self._e(np.maximum(np.abs(a.lo), np.abs(a.hi)))
                kept = (size <= self.u * self.u) & ~v_out & ~x_out
                if kept.any():  # (the wide type is float64: size**2 >= 2**-300 is no underflow)
                    carried = np.where(kept, _up(carried + _up(size * size)), carried)
                else:
                    kept = None
        if v_out.any():
            vlo, vhi = np.where(v_out, -np.inf, vlo), np.where(v_out, np.inf, vhi)
        if x_out.any():
            xlo, xhi = np.where(x_out, -np.inf, xlo), np.where(x_out, np.inf, xhi)
        return self._result(vlo, vhi, xlo, xhi, carried, slack, exact=kept)

    def exp(self, x, where=None) -> Bounds:
        return self._function(crmath.exp, np.exp, lambda lowest, highest: np.exp(highest), x, -np.inf)

    def log(self, x, where=None) -> Bounds:
        return self._function(crmath.log, np.log, lambda lowest, highest: 1 / lowest, x, 0.0)

    def log1p(self, x, where=None) -> Bounds:
        return self._function(crmath.log1p, np.log1p, lambda lowest, highest: 1 / (1 + lowest), x, -1.0,
                              identity=True)

    def tanh(self, x, where=None) -> Bounds:
        """tanh: increasing, |tanh'| = 1 - tanh**2 <= 1."""
        return self._function(crmath.tanh, np.tanh, lambda lowest, highest: np.ones(np.shape(lowest)), x, -np.inf)

    def max(self, x) -> Bounds:
        x = Bounds.of(x)
        return Bounds(np.max(x.lo, axis=-1), np.max(x.hi, axis=-1), np.max(x.xlo, axis=-1), np.max(x.xhi, axis=-1),
                      np.max(x.err, axis=-1))

    def argmax(self, x) -> np.ndarray:
        """The maximum's index where it is the same entry for every point of the range
        (its lower bound is at least every other entry's upper bound, computed and exact); -1 elsewhere."""
        x = Bounds.of(x)
        k = np.argmax(x.lo, axis=-1)
        kk = k[..., None]
        kept = np.ones(k.shape, dtype=bool)
        for low, high in ((x.lo, x.hi), (x.xlo, x.xhi)):
            others = np.array(high, copy=True)
            np.put_along_axis(others, kk, -np.inf, axis=-1)
            kept &= np.take_along_axis(low, kk, axis=-1)[..., 0] >= np.max(others, axis=-1)
        return np.where(kept, k, -1)

    def shift(self, x) -> Bounds:
        """x - max(x) per row: the max's own entry is exactly 0 (error 0), the others x_i - x_k."""
        x = Bounds.of(x)
        k = self.argmax(x)
        known = k >= 0
        kk = np.where(known, k, 0)[:, None]
        z = self.sub(x, self.pick(x, np.where(known, k, 0))[:, None])
        own = np.zeros(x.shape, dtype=bool)
        np.put_along_axis(own, kk, True, axis=1)
        own &= known[:, None]
        fields = [np.where(own, 0.0, getattr(z, name)) for name in Bounds.__slots__]
        for i in range(4):
            fields[i] = np.where(known[:, None], fields[i], -np.inf if i % 2 == 0 else np.inf)
        fields[4] = np.where(known[:, None], fields[4], np.inf)
        return Bounds(*fields)

    def pick(self, x, index) -> Bounds:
        row = x
        x = Bounds.of(x)
        idx = np.asarray(index)
        bad = idx < 0
        kk = np.where(bad, 0, idx)[:, None]
        fields = [np.take_along_axis(getattr(x, name), kk, axis=1)[:, 0] for name in Bounds.__slots__]
        out = Bounds(*(np.where(bad, np.inf if name in ("hi", "xhi", "err") else -np.inf, f)
                       for name, f in zip(Bounds.__slots__, fields)))
        if isinstance(row, Bounds):
            self._origins[id(out)] = ("pick", out, row, idx)
        return out

    def drop(self, x, index) -> Bounds:
        x = Bounds.of(x)
        idx = np.asarray(index)
        bad = idx < 0
        kk = np.where(bad, 0, idx)[:, None]
        fields = []
        for name in Bounds.__slots__:
            f = np.array(getattr(x, name), dtype=np.float64, copy=True)
            np.put_along_axis(f, kk, 0.0, axis=1)
            f[bad] = np.inf if name in ("hi", "xhi", "err") else -np.inf
            fields.append(f)
        return Bounds(*fields)

    def where_nonneg(self, z, if_nonneg, if_neg) -> Bounds:
        """The branch taken over the whole range, or the hull of both where z (computed or
        exact) changes sign.  Both branches must compute the same exact function."""
        z, a, b = Bounds.of(z), Bounds.of(if_nonneg), Bounds.of(if_neg)
        pos = (z.lo >= 0) & (z.xlo >= 0)
        neg = (z.hi < 0) & (z.xhi < 0)

        def pick(fa, fb, combine):
            return np.where(pos, fa, np.where(neg, fb, combine(fa, fb)))

        return Bounds(pick(a.lo, b.lo, np.minimum), pick(a.hi, b.hi, np.maximum), pick(a.xlo, b.xlo, np.minimum),
                      pick(a.xhi, b.xhi, np.maximum), pick(a.err, b.err, np.maximum))

    def external(self, fn, *arrays, shape: tuple[int, ...] = ()) -> Bounds:
        """A black box (see :meth:`Arith.external`): nothing about it can be proven on a
        range, so its bounds are unbounded and its error bound infinite (never certified)."""
        full = (self.rows, *shape)
        inf = np.full(full, np.inf)
        return Bounds(-inf, inf, -inf, inf, inf)

    def tree(self, op, x, identity: float):
        """:meth:`Arith.tree`, the same pairwise tree, on bounds (a sum's row is remembered: see :meth:`div`)."""
        out = Arith.tree(self, op, x, identity)
        if getattr(op, "__func__", None) is IntervalArith.add and identity == 0 and isinstance(x, Bounds):
            self._origins[id(out)] = ("sum", out, x)
        return out

    def _sum_op(self, op):
        """A tree's operation as it is (pure formats only: see :func:`supported`)."""
        return op, False
    sigmoid = Arith.sigmoid  # the same sign-branched sigmoid, on bounds

    def _pad(self, x: Bounds, identity: float) -> Bounds:
        pad = np.full(x.shape[:-1] + (1,), identity)
        zero = np.zeros(x.shape[:-1] + (1,))
        return Bounds(*(np.concatenate([getattr(x, name), zero if name == "err" else pad], axis=-1)
                        for name in Bounds.__slots__))


for _name in ("exp", "log", "log1p", "tanh", "max", "argmax", "shift", "pick", "tree",
              "sigmoid"):  # the steps kernels share
    setattr(IntervalArith, _name, _shared(getattr(IntervalArith, _name)))
del _name
