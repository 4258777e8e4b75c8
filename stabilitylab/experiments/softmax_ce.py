"""softmax_ce: cross-entropy -log softmax(x)_y in four formulations.

With m = max_i x_i, z = x - m and k = argmax x:

* ``naive_softmax_log``   p = exp(x) / sum exp(x), loss = -log p_y
  (exp overflows once x > ln(max));
* ``shifted_softmax_log`` p = exp(z) / sum exp(z), loss = -log p_y
  (no overflow, but exp(z_y) underflows to 0 and log(0) = -inf);
* ``log_softmax``         loss = log(sum exp(z)) - z_y  (log-sum-exp);
* ``log_softmax_log1p``   loss = log1p(sum_{i != k} exp(z_i)) - z_y
  (the accurate form of Blanchard, Higham & Higham 2021 and scipy's logsumexp:
  when the true class dominates, the loss ~ sum exp(z_i) is not lost in 1 + s).

A batch is a (rows, K) matrix of logits and a label per row; rows with the same
number of classes run together.  Exact reference: ``log1p(sum_{i != y} exp(x_i - x_y))`` with mpmath.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import mpmath
import numpy as np
from mpmath.libmp import from_float, mpf_exp, mpf_sub, mpf_sum

from ..numerics import blockscale, kernel
from ..numerics.arith import Arith
from ..numerics.formats import Format
from ..numerics.reference import exp_sum_scaled, from_longdouble
from ..numerics.wide import LONGDOUBLE_IS_WIDE
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

__all__ = ["Logits", "SOFTMAX_CE", "logits_case", "wide_cases", "WIDE", "realistic_cases", "REALISTIC"]


@dataclass(frozen=True)
class Logits(Batch):
    """Cases ``logits`` (rows, K) float64 and ``labels`` (rows,); a row with fewer
    classes is padded (with 0) past ``widths[row]``.  Rows of one width run
    together: no padding value is neutral in every format (float8_e4m3fn has no
    -inf)."""

    names: tuple[str, ...]
    logits: np.ndarray
    labels: np.ndarray
    widths: np.ndarray


def _fmt_list(values) -> str:
    return "[" + ",".join(shortest(float(v)) for v in values) + "]"


def logits_case(logits, label: int, name: str | None = None) -> Logits:
    x = np.asarray(logits, dtype=np.float64)
    return Logits((name or f"{_fmt_list(x)},y={label}",), x[None, :], np.array([label], dtype=np.int64),
                  np.array([x.size], dtype=np.int64))


def concat(batches: list[Logits]) -> Logits:
    return Logits(sum((b.names for b in batches), ()),
                  stack_padded([b.logits for b in batches], fill=0.0),
                  np.concatenate([b.labels for b in batches]), np.concatenate([b.widths for b in batches]))


def default_cases() -> Logits:
    return concat([
        logits_case([10, 9.9, 9.9], 0, "article:[10,9.9,9.9],y=0"),
        logits_case([-0.1, -0.1, 0.1], 2, "article:[-0.1,-0.1,0.1],y=2"),
        # article 001: prediction (0.1, 0.7, 0.2), label (0, 1, 0): loss -ln 0.7
        logits_case(np.log([0.1, 0.7, 0.2]), 1, "article:probs=(0.1,0.7,0.2),y=1"),
        logits_case([12, 0, -12], 0, "moderate:[12,0,-12],y=0"),
        logits_case([1000, 0, -1000], 0, "large:[1000,0,-1000],y=0"),
        logits_case([1000, 0, -1000], 2, "large:[1000,0,-1000],y=2"),
        logits_case([0, -40], 0, "gap:[0,-40],y=0 (true class is the max)"),
        logits_case([0, -40], 1, "gap:[0,-40],y=1 (true class is the min)"),
    ])


WIDE = 2**15  # a language model's vocabulary


def wide_cases() -> Logits:
    """Rows of :data:`WIDE` classes whose loss a correct kernel gets right in every format, but whose
    denominator a *sequential* low-precision sum gets wrong: once the running sum is large, each
    small exp term is below half its ulp and is lost (float16 stops at 512 for terms of e**-2:
    the loss comes out 6.24 for 8.40; bfloat16 sooner).  The true class is the max, or just below
    it; the rest is a few blocks of one value each (so an emitted test stays small).  The audit runs
    them beside the default cases and keeps a witness of each (see auditing/core.py)."""
    flat = np.full(WIDE, -2.0)
    flat[0] = 0.0
    blocks = np.full(WIDE, -4.0)
    blocks[: WIDE // 2] = -1.0
    blocks[:2] = (0.0, -0.5)
    return concat([
        logits_case(flat, 0, f"wide:[0,-2 x{WIDE - 1}],y=0 (true class the max)"),
        logits_case(blocks, 1, f"wide:[0,-0.5,-1 x{WIDE // 2 - 2},-4 x{WIDE // 2}],y=1 (true class near the max)"),
    ])


REALISTIC = {"rows": 2000, "classes": 50, "wide_rows": 8, "sigma": 3.0, "seed": 20261207}


def realistic_cases(rows: int = REALISTIC["rows"], classes: int = REALISTIC["classes"],
                    wide_rows: int = REALISTIC["wide_rows"], sigma: float = REALISTIC["sigma"],
                    seed: int = REALISTIC["seed"]) -> list[Logits]:
    """Realistic rows for the audit's *resembles* (seeded ``numpy.random.default_rng(seed)``, PCG64), as
    two batches (rows of one width each: no padding): ``rows`` rows of ``classes`` logits drawn from
    N(0, sigma**2), and ``wide_rows`` rows of :data:`WIDE` classes drawn the same way; labels uniform
    over the classes.  A kernel that sums its exponentials in another order than the simulated formulas
    (pairwise) agrees with them within 1 ulp on nearly every narrow row, not on the wide ones: a
    sequential float16 / bfloat16 sum of 32768 terms stalls far below the true sum."""
    rng = np.random.default_rng(seed)
    out = []
    for n, k in ((rows, classes), (wide_rows, WIDE)):
        x = rng.normal(0.0, sigma, size=(n, k))
        y = rng.integers(0, k, size=n).astype(np.int64)
        out.append(Logits(tuple(f"realistic:N(0,{sigma:g}) x{k} #{i}" for i in range(n)), x, y,
                          np.full(n, k, dtype=np.int64)))
    return out


@dataclass(frozen=True)
class Loaded(Rows):
    logits: np.ndarray  # in the format
    labels: np.ndarray


def load(arith: Arith, cases: Logits) -> Loaded:
    return Loaded(arith.load(cases.logits), cases.labels)


def naive_softmax_log(a: Arith, x: Loaded):
    e = a.exp(x.logits)
    return a.neg(a.log(a.div(a.pick(e, x.labels), a.tree(a.add, e, 0.0))))


def shifted_softmax_log(a: Arith, x: Loaded):
    e = a.exp(a.shift(x.logits))
    return a.neg(a.log(a.div(a.pick(e, x.labels), a.tree(a.add, e, 0.0))))


# (z_y is picked first, an exact read, and z let go: a wide row holds no more copies than needed, issue #18)
def log_softmax(a: Arith, x: Loaded):
    z = a.shift(x.logits)
    zy, e = a.pick(z, x.labels), a.exp(z)
    del z
    return a.sub(a.log(a.tree(a.add, e, 0.0)), zy)


def log_softmax_log1p(a: Arith, x: Loaded):
    z = a.shift(x.logits)
    zy, e = a.pick(z, x.labels), a.exp(z)
    del z
    e = a.drop(e, a.argmax(x.logits))  # leave the max's exp(0) = 1 out of the sum
    return a.sub(a.log1p(a.tree(a.add, e, 0.0)), zy)


def exact_rows(x: Loaded):
    with np.errstate(invalid="ignore"):  # a signalling NaN is quieted by the cast, as any NaN input: no warning
        logits = x.logits.astype(np.float64)
    return [(tuple(row), int(y)) for row, y in zip(logits.tolist(), x.labels.tolist())]


def exact_cross_entropy(logits: tuple[float, ...], label: int):
    """-log softmax(x)_y = log1p(sum_{i != y} exp(x_i - x_y)), exact to DIGITS digits.

    Finite rows take mpmath's own operations on its raw values (``from_float``, ``mpf_sub``, ``mpf_exp``,
    ``mpf_sum`` at the working precision, as ``mpf(v) - xy``, ``exp`` and ``fsum`` do), without an mpf object
    per term: the same value, ~2x faster on wide rows.  A term is a function of its logit's value (0.0 and -0.0
    give the same mpf zero), so each distinct value's exponential is computed once and repeated in the list
    ``mpf_sum`` adds (the same list, in the same order): the default cases' rows of 32768 classes hold a few
    values each (:func:`wide_cases`), ~10 us of ``mpf_exp`` per term otherwise."""
    if all(math.isfinite(v) for v in logits):
        prec, rounding = mpmath.mp._prec_rounding
        xy = from_float(logits[label])
        seen: dict[float, tuple] = {}
        terms = []
        for i, v in enumerate(logits):
            if i == label:
                continue
            term = seen.get(v)
            if term is None:
                term = seen[v] = mpf_exp(mpf_sub(from_float(v), xy, prec, rounding), prec, rounding)
            terms.append(term)
        return mpmath.log1p(mpmath.mp.make_mpf(mpf_sum(terms, prec, rounding)))
    xy = mpmath.mpf(logits[label])
    rest = [mpmath.mpf(v) for i, v in enumerate(logits) if i != label]
    if mpmath.isnan(xy) or any(mpmath.isnan(v) for v in rest):
        return mpmath.mpf("nan")
    if mpmath.isinf(xy):
        if xy < 0:  # the true class has probability 0
            return mpmath.mpf("inf") if any(v > xy for v in rest) else mpmath.mpf("nan")
        ties = sum(1 for v in rest if v == xy)  # exp(inf - inf) is undefined unless alone
        return mpmath.mpf(0) if ties == 0 else mpmath.mpf("nan")
    return mpmath.log1p(mpmath.fsum(mpmath.exp(v - xy) for v in rest))


def _pair_cases(first: np.ndarray, second: np.ndarray, label: int, names) -> Logits:
    rows = len(first)
    return Logits(names, np.stack([first, second], axis=1), np.full(rows, label, dtype=np.int64),
                  np.full(rows, 2, dtype=np.int64))


def overflow_cases(d: np.ndarray, settings: Settings) -> Logits:
    """[d, 0], label 0: exp(d) overflows the naive form; loss log1p(e**-d)."""
    return _pair_cases(d, np.zeros_like(d), 0, ParamNames("d", d))


def underflow_cases(d: np.ndarray, settings: Settings) -> Logits:
    """[0, -d], label 1: exp(-d) underflows and log(0) = -inf; loss d + log1p(e**-d)."""
    return _pair_cases(np.zeros_like(d), -d, 1, ParamNames("d", d))


def confident_cases(d: np.ndarray, settings: Settings) -> Logits:
    """[0, -d], label 0: the true class dominates; loss log1p(e**-d) ~ e**-d."""
    return _pair_cases(np.zeros_like(d), -d, 0, ParamNames("d", d))


def overflow_predict(fmt: Format, method: str, settings: Settings) -> Prediction | None:
    if method != "naive_softmax_log" or fmt.saturates:  # (saturating: exp(d) is max, no failure to predict)
        return None
    limit, _ = predict.overflow_bound(fmt)  # ln(limit) is irrational: the tie never decides
    d = predict.first_value_above(fmt, mpmath.log(limit))
    return Prediction(d, "first_failure",
                      "d* = first format value above ln(max + ulp(max)/2) ~ ln(max): exp(d) rounds to inf (NaN "
                      "in float8_e4m3fn), inf/inf = NaN; below it every intermediate is finite", proof=True)


def underflow_predict(fmt: Format, method: str, settings: Settings) -> Prediction | None:
    if method not in ("naive_softmax_log", "shifted_softmax_log"):
        return None
    bound = predict.zero_bound(fmt, settings.ftz)
    d = predict.first_value_above(fmt, -mpmath.log(bound))
    what = "tiny - smallest_subnormal/2 (flush to zero)" if settings.ftz else "smallest_subnormal/2"
    return Prediction(d, "first_failure",
                      f"d* = first format value above -ln({what}): exp(-d) rounds to 0, log(0) = -inf; "
                      "below it exp(-d) > 0 and the loss is finite", proof=not settings.ftz)


FAMILIES = (
    Family("overflow", "d", "logits [d, 0], label 0", overflow_cases, predict=overflow_predict),
    Family("underflow", "d", "logits [0, -d], label 1", underflow_cases, predict=underflow_predict),
    Family("confident", "d", "logits [0, -d], label 0 (the loss ~ exp(-d) is lost by plain log-softmax)",
           confident_cases),
)


def block_spread_cases(d: np.ndarray, settings: Settings) -> Logits:
    """[d, 1], label 1: the true logit 1 shares its block with the largest logit d (spread d); under block
    storage it flushes to 0 once d reaches the format's flush spread.  Exact loss log1p(e**(d - 1))."""
    return _pair_cases(d, np.ones_like(d), 1, ParamNames("d", d))


@lru_cache(maxsize=None)
def first_flush(block_name: str) -> float:
    """The first float32 d >= 1 at which the true logit 1 of [d, 1] flushes to 0 in the block format: the
    smallest d with 1 <= T(d), T = :func:`blockscale.flush_threshold` of a block of amax d (the case is its
    own tensor: NVFP4's tensor amax is d).  T is nondecreasing in d (MX: 2^(floor(log2 d) - emax) s_min / 2;
    NVFP4: s_t s_b s_min / 2 with s_t = float32(d / 2688) nondecreasing and s_b = 448 for every normal d),
    so a bisection over the float32 bit patterns of [1, max] finds it exactly."""
    block = blockscale.BLOCK_FORMATS[block_name]

    def flushes(i: int) -> bool:
        d = float(np.array([i], np.uint32).view(np.float32)[0])
        return bool(1.0 <= blockscale.flush_threshold(block, np.array([d]), d)[0])

    lo = int(np.array([1.0], np.float32).view(np.uint32)[0])
    hi = int(np.array([np.finfo(np.float32).max], np.float32).view(np.uint32)[0])
    assert not flushes(lo) and flushes(hi)
    while hi - lo > 1:  # invariant: lo does not flush, hi does
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if flushes(mid) else (mid, hi)
    return float(np.array([hi], np.uint32).view(np.float32)[0])


def block_spread_predict(fmt: Format, method: str, settings: Settings) -> Prediction | None:
    block = getattr(fmt, "block", None)
    if block is None:
        return None
    return Prediction(first_flush(block), "first_flush",
                      f"first float32 d at which the true logit 1 flushes to 0 in {block} (quantization alone: "
                      "1 <= the flush threshold of a block of amax d, nondecreasing in d; bisection over float32)")


BLOCK_FAMILIES = (
    Family("block_spread", "d", "logits [d, 1], label 1, under block storage: the true logit 1 in the block of the "
           "largest logit d flushes to 0 once the spread d reaches the format's flush spread",
           block_spread_cases, lower=1.0, predict=block_spread_predict),
)


def _two_diff(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a - b = hi + lo exactly (Knuth's TwoSum on float64)."""
    hi = a - b
    bb = hi - a
    lo = (a - (hi - bb)) - (b + bb)
    return hi, lo


_LOW29 = np.uint64(2**29 - 1)  # the low 29 of float64's 52 stored significand bits


def _differences_exact(X: np.ndarray) -> bool:
    """Whether every ``x - m`` of float64 ``X`` (m any of X's values, a row's max) is exact in float64, by a
    sufficient test in a few passes (:func:`_two_diff`'s ``lo`` would be 0 everywhere): every significand
    fits in 24 bits (the low 29 stored bits are 0: float32 logits) and every non-zero ``|x|`` lies in
    ``[2**-1000, 2**(E + 29))`` with ``2**E <= min |x|`` (zeros are not allowed: the test then says no).
    Proof: x = a 2**(e_x - 23), m = b 2**(e_m - 23) with integers |a|, |b| < 2**24 and e = floor(log2 |.|);
    both are multiples of 2**(E - 23) (e_x, e_m >= E), and |x - m| <= 2 max|X| < 2**(E + 30); so
    x - m = c 2**(E - 23) with an integer |c| < 2**53: a float64 (E - 23 >= -1023 - 23 > -1074)."""
    if not X.size or np.bitwise_and(X.view(np.uint64), _LOW29).any():
        return False
    with np.errstate(all="ignore"):
        small, big = np.abs(X).min(), max(X.max(), -X.min())
    if not (small >= 2.0**-1000) or not np.isfinite(big):
        return False
    return bool(big < np.ldexp(1.0, int(np.frexp(small)[1]) - 1 + 29))


def _rows_differences_exact(X: np.ndarray) -> np.ndarray:
    """Per row of float64 ``X``, :func:`_differences_exact`'s test on that row alone (the same proof, with
    the row's own smallest and largest ``|x|``).  Where the whole block passes, every row does (a row's
    smallest ``|x|`` is at least the block's, so its E too, and its largest at most the block's): True
    everywhere after the block's test alone, the usual case."""
    if not X.size or np.bitwise_and(X.view(np.uint64), _LOW29).any():
        return np.zeros(len(X), dtype=bool)
    if _differences_exact(X):
        return np.ones(len(X), dtype=bool)
    with np.errstate(all="ignore"):
        a = np.abs(X)
        if X.shape[1] <= 16:  # column by column (a reduction over a short last axis is ~4x slower): the same values
            small, big = a[:, 0].copy(), a[:, 0].copy()
            for j in range(1, X.shape[1]):
                np.minimum(small, a[:, j], out=small)
                np.maximum(big, a[:, j], out=big)
        else:
            small, big = a.min(axis=1), a.max(axis=1)
        top = np.ldexp(1.0, np.frexp(small)[1].astype(np.int32) - 1 + 29)
        return (small >= 2.0**-1000) & np.isfinite(big) & (big < top)


def _tree_sum(t: np.ndarray) -> np.ndarray:
    """Pairwise sum along the last axis, level by level: a sum of K >= 0 terms with relative
    error at most ceil(log2 K) u (whatever numpy's own summation order is).  Rows of 2 to 16 terms
    are summed column by column (the same additions of the same pairs, a 0 added to an odd level's
    last term: ~5x faster than slicing a short last axis)."""
    if t.ndim == 2 and 1 < t.shape[1] <= 16:
        columns = [t[:, j] for j in range(t.shape[1])]
        while len(columns) > 1:
            if len(columns) % 2:
                columns.append(np.zeros(len(t), t.dtype))
            columns = [columns[i] + columns[i + 1] for i in range(0, len(columns), 2)]
        return columns[0]
    while t.shape[-1] > 1:
        if t.shape[-1] % 2:
            t = np.concatenate([t, np.zeros(t.shape[:-1] + (1,), t.dtype)], axis=-1)
        t = t[..., 0::2] + t[..., 1::2]
    return t[..., 0]


_BLOCK = 2**20  # columns per block of a wide row's reference (fast_cross_entropy): 2**20 terms at a time


def _tree_levels(t: np.ndarray, levels: int) -> np.ndarray:
    """``levels`` levels of :func:`_tree_sum` on a block of columns, padding with 0 at every odd
    length (even a length of 1).  On blocks of ``2**levels`` columns from the start of a row (and
    the rest of the row as the last block), concatenating the results and finishing with
    :func:`_tree_sum` gives the whole row's :func:`_tree_sum` bit for bit: the whole row's level
    has an odd length exactly when its last block's has (the others' are even), and its
    padding 0 goes at the end of that last block."""
    for _ in range(levels):
        if t.shape[-1] % 2:
            t = np.concatenate([t, np.zeros(t.shape[:-1] + (1,), t.dtype)], axis=-1)
        t = t[..., 0::2] + t[..., 1::2]
    return t


def _block_minus(L: np.ndarray, start: int, m: np.ndarray, wide: np.dtype):
    """x - m on the block of columns from ``start``, as :func:`fast_cross_entropy` makes it: (hi, None)
    rounded once in float64 for a float64 reference, else exactly (hi, lo)."""
    X = L[:, start:start + _BLOCK].astype(np.float64)
    if wide == np.dtype(np.float64):
        return X - m[:, None], None
    return _two_diff(X, m[:, None])


def _wide_cross_entropy(x: Loaded, wide: np.dtype):
    """:func:`fast_cross_entropy` on one row of more than ``_BLOCK`` logits, the same value bit
    for bit, in blocks of ``_BLOCK`` columns (a few times 2**20 values in memory, not a few
    copies of the row: issue #18).  The row's max, argmax and label's term are taken first; each
    block's terms are then made and summed pairwise (:func:`_tree_levels`)."""
    L, k = x.logits, x.logits.shape[1]
    label = int(x.labels[0])
    m = np.array([L[0].max()], dtype=np.float64)  # (exact in float64; NaN propagates as in X.max)
    top = int(np.argmax(L[0]))
    handled = np.array([all(bool(np.isfinite(_block_minus(L, start, m, wide)[0]).all())
                            for start in range(0, k, _BLOCK))])
    levels = _BLOCK.bit_length() - 1
    xy = np.array([L[0, label]], dtype=np.float64)
    if wide == np.dtype(np.float64):
        gap_hi, gap_lo = xy - m, None
    else:
        gap_hi, gap_lo = _two_diff(xy, m)
    if not handled[0]:
        gap_hi = np.zeros(1)
        gap_lo = None if gap_lo is None else np.zeros(1)
    gap = -gap_hi.astype(wide)
    if gap_lo is not None:
        gap -= gap_lo.astype(wide)
    partial = []
    for start in range(0, k, _BLOCK):
        hi, lo = _block_minus(L, start, m, wide)
        if not handled[0]:
            hi = np.zeros_like(hi)
            lo = None if lo is None else np.zeros_like(lo)
        terms = np.exp(hi.astype(wide))
        if lo is not None:
            inexact = (lo != 0) & (terms > 0)
            terms[inexact] *= np.exp(lo[inexact].astype(wide))
        if start <= top < start + _BLOCK:
            terms[0, top - start] = 0
        del hi, lo
        partial.append(_tree_levels(terms, levels))
    total = _tree_sum(np.concatenate(partial, axis=-1))
    tiny = handled & (gap == 0) & (total <= np.finfo(wide).tiny * 2.0**62)
    loss = np.log1p(total) + gap
    handled &= np.isfinite(loss)
    zero = np.zeros(1, dtype=bool)
    if not tiny.any() or not LONGDOUBLE_IS_WIDE:
        return loss, zero, handled & ~tiny
    X = L.astype(np.float64)  # (rare: the whole row, as fast_cross_entropy does)
    use = np.ones((1, k), dtype=bool)
    use[0, top] = False
    small, ok = exp_sum_scaled(*_two_diff(X, m[:, None]), use)
    return from_longdouble(loss, zero).put(np.array([0]), small), zero, ok


_COLUMNS = 2**13  # columns per block of _blocked_exp_sum: a few longdouble blocks of a row stay in cache


def _blocked_exp_sum(hi: np.ndarray, top: np.ndarray, wide) -> np.ndarray:
    """:func:`_tree_sum` of ``e^hi`` in ``wide`` with each row's column ``top`` set to 0, bit for bit, in
    blocks of :data:`_COLUMNS` columns (:func:`_tree_levels`' argument): the conversion, the exps and the
    first 13 levels of the sum on cache-resident blocks instead of whole-chunk longdouble arrays."""
    rows, k = hi.shape
    levels = _COLUMNS.bit_length() - 1
    partial = []
    for start in range(0, k, _COLUMNS):
        t = np.exp(hi[:, start:start + _COLUMNS].astype(wide))
        here = np.flatnonzero((top >= start) & (top < start + _COLUMNS))
        t[here, top[here] - start] = 0  # the max's own e^0 = 1
        partial.append(_tree_levels(t, levels))
    return _tree_sum(np.concatenate(partial, axis=-1))


def max_argmax_short(xt) -> tuple[np.ndarray, np.ndarray]:
    """Per column of (K, n) ``xt`` (a row of logits each, 1 <= K <= 256; any sequence of K columns): the maximum
    ``m`` (``np.maximum`` column after column) and the index ``k`` of its first occurrence, counted as
    ``k = #{j < K - 1: xt[0..j] all != m}`` -- a few contiguous elementwise passes per column (numpy's
    reduction over a short last axis costs ~20-40 ns a row; a masked assignment per column ~4 ns a value).
    Where a column holds no NaN these are ``np.max`` / ``np.argmax``'s but for the sign of a zero maximum
    (``-0 == +0``: the first of them is the index either way); where it holds one, ``m`` is NaN and ``k``
    is K - 1 (such rows are never ordinary)."""
    m = np.array(xt[0], copy=True)
    for j in range(1, len(xt)):
        np.maximum(m, xt[j], out=m)
    k = np.zeros(len(m), dtype=np.uint8)  # (K <= 256 here; uint8 sums are SIMD, bool into intp is not)
    before = np.ones(len(m), dtype=bool)  # no maximum in xt[0..j] yet
    differs = np.empty(len(m), dtype=bool)
    for j in range(len(xt) - 1):
        np.not_equal(xt[j], m, out=differs)
        before &= differs
        k += before.view(np.uint8)
    return m, k.astype(np.intp)


def _max_argmax(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of float64 ``X``, the max and the (first) argmax (rows of at most 16 columns:
    :func:`max_argmax_short` on the columns of the transposed block, contiguous: ~1.6 ns a value instead of ~9
    on strided columns, the same elementwise operations; a row with a NaN has a NaN max either way, and its
    argmax, K - 1 there, is read by no caller: such rows are not handled)."""
    k = X.shape[1]
    if k <= 16:  # column by column: reductions over a short axis are slow
        return max_argmax_short(np.ascontiguousarray(X.T))
    return X.max(axis=1), np.argmax(X, axis=1)


def bounded_cross_entropy(x: Loaded):
    """The float64 tier of the longdouble reference (float64 inputs): ``(values, bound, handled)``, values an
    :class:`~stabilitylab.numerics.reference.Exact` within ``bound`` (relative, per row) of the exact loss
    where ``handled`` (:func:`stabilitylab.numerics.expsum64.log1p_exp_sum`: proof there), which needs every
    ``x_i - m`` of the row exact (:func:`_rows_differences_exact`: other rows, non-finite ones included, are
    not handled); None where it does not apply (1 or more than 2**20 classes, no such row)."""
    from ..numerics import expsum64
    from ..numerics.reference import Exact

    k = x.logits.shape[1]
    if not 2 <= k <= expsum64.MAX_TERMS or x.logits.dtype != np.float64:
        return None
    X = x.logits
    got = _bounded_kernel(X, x.labels)
    if got is not None:
        exact, (A, B, d2, g) = got
        if not exact.any():
            return None
        hi, lo, bound, handled = expsum64.finish(A, B, d2, g, k)
    else:
        exact = _rows_differences_exact(X)  # (also False for non-finite logits)
        if not exact.any():
            return None
        m, top = _max_argmax(X)
        d = X - m[:, None]  # exact where `exact`
        if not exact.all():
            d[~exact] = 0.0  # (those rows are not handled)
        g = -np.take(d, np.arange(len(X)) * k + x.labels)  # m - x_y >= 0, exact
        hi, lo, bound, handled = expsum64.log1p_exp_sum(d, top, g, _tree_sum)
    handled &= exact
    bound = np.where(handled, bound, np.inf)
    n = len(X)
    hi, lo = np.where(handled, hi, 0.0), np.where(handled, lo, 0.0)
    return Exact(hi + 0.0, lo, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)), bound, handled


def _bounded_kernel(X: np.ndarray, labels: np.ndarray):
    """``(exact, (A, B, d2, g))`` of :func:`bounded_cross_entropy` (its rows' test and the sums of
    :func:`~stabilitylab.numerics.expsum64.log1p_exp_sum`'s steps 1-4) by the compiled kernel's ``ref_expsum64``,
    a row at a time in cache (the same values bit for bit: tests/test_softmax_kernel.py); None where it is not
    loaded."""
    from ..numerics import expsum64

    module = kernel.load()
    if module is None:
        return None
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, k = X.shape
    out = np.empty((4, n))
    exact = np.empty(n, dtype=np.uint8)
    module.ref_expsum64(n, k, X, np.ascontiguousarray(labels, dtype=np.int64), expsum64.LOG2E, out, exact)
    return exact.view(bool), out


_SHORT = 48  # rows of at most this many logits: the float64 reference works on them transposed (measured:
# faster than the blocks of _float64_wide up to 48-64 logits, 2x at 17)
_TILE = 2**18  # values a block of the float64 reference's work holds (2 MiB of float64: few numpy calls a value)
_TILE_COLUMNS = 2**17  # columns a block holds of a row wider than that (a power of 2)
_TILE_LEVELS = 6  # levels of the pairwise sum done in a block (then on the blocks' 2**-6 as many partial sums)


def _loss(total: np.ndarray, gap: np.ndarray, k: int, wide) -> tuple[np.ndarray, np.ndarray]:
    """``log1p(total) + gap``, and the rows to sum scaled: the true class is the max (``gap`` = 0) and the
    sum is within 2**62 of ``wide``'s smallest normal (its terms may have underflowed)."""
    tiny = total <= np.finfo(wide).tiny * 2.0**62
    if k > 1 and tiny.any():  # (rarely: two passes fewer)
        tiny &= gap == 0
    else:
        tiny[:] = False
    return np.log1p(total) + gap, tiny


def _float64_short(L: np.ndarray, labels: np.ndarray):
    """The float64 reference's ``(loss, tiny, m, top)`` (:func:`fast_cross_entropy`; ``m`` and ``top`` of the
    ``tiny`` rows alone) on rows of at most :data:`_SHORT` logits, in blocks of about :data:`_TILE` values
    worked transposed (a row per column: each step a few contiguous passes of the block's rows; numpy's
    inner loops over a short last axis are slow), or None if a difference ``x_i - m`` is not finite (then
    every row goes the general way).  The same values bit for bit as the general way:

    * ``m, top``: :func:`max_argmax_short` on the block's columns (the logits cast to float64, exactly): the
      general way's max and first argmax but for the sign of a zero max, which changes no value (below);
    * ``hi = x - m`` in float64; ``gap = -hi_y``; the terms ``e^hi``, the max's set to +0;
    * the pairwise sum of the K columns, level by level (:func:`_tree_sum`'s pairs), in place; where a
      level has an odd length its last column goes up alone instead of being added to 0: every term is +0
      or positive (``exp`` and the zeroed term give no -0), so is every partial sum, and ``v + 0 = v`` for those.

    A zero max's sign: ``x_i - (+-0)`` differs only where ``x_i`` is a zero, where ``e^(+-0) = 1``; ``gap`` may
    then be -0 instead of +0, and ``log1p(s) + gap`` is the same for both (``s >= +0``: a non-zero sum
    absorbs it, ``+0 + -0 = +0``), as is ``gap == 0``."""
    n, k = L.shape
    labels = np.asarray(labels, dtype=np.intp)
    rows = max(1, _TILE // k)
    loss, tiny = np.empty(n), np.empty(n, dtype=bool)
    scaled = []  # (m, top) of each block's tiny rows
    buf = np.empty(k * min(n, rows))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        b = r1 - r0
        terms = buf[:k * b].reshape(k, b)
        np.copyto(terms, L[r0:r1].T)
        m, top = max_argmax_short(terms)
        if not (m.min() > -np.inf and m.max() < np.inf):  # (a NaN max fails both)
            return None
        np.subtract(terms, m, out=terms)
        if not terms.min() > -np.inf:  # (x_i - m <= 0: finite unless it overflowed or x_i = -inf)
            return None
        cols = np.arange(b)
        gap = -np.take(terms, labels[r0:r1] * b + cols)
        np.exp(terms, out=terms)
        terms.reshape(-1)[top * b + cols] = 0  # the max's own e^0 = 1 (a view: ~3x faster than np.put)
        level = list(terms)
        while len(level) > 1:
            for i in range(0, len(level) - 1, 2):
                np.add(level[i], level[i + 1], out=level[i])
            level = level[::2]
        loss[r0:r1], tiny[r0:r1] = _loss(level[0], gap, k, np.float64)
        if tiny[r0:r1].any():
            here = np.flatnonzero(tiny[r0:r1])
            scaled.append((m[here], top[here]))
    if not scaled:
        return loss, tiny, None, None
    return loss, tiny, np.concatenate([m for m, _ in scaled]), np.concatenate([t for _, t in scaled])


def _levels_length(length: int, levels: int) -> int:
    """The length of a row of ``length`` terms after ``levels`` levels of :func:`_tree_levels`."""
    for _ in range(levels):
        length = (length + 1) // 2
    return length


def _float64_wide(L: np.ndarray, labels: np.ndarray):
    """The float64 reference's ``(loss, tiny, m, top)`` (:func:`fast_cross_entropy`; ``m`` and ``top`` of the
    ``tiny`` rows alone) on rows of more than :data:`_SHORT` logits, in blocks of about :data:`_TILE` values,
    or None if a difference ``x_i - m`` is not finite (then every row goes the general way).  The same values
    bit for bit:

    * per group of rows, ``top`` = ``np.argmax`` of ``L``'s own dtype (an exact, order-keeping cast away from
      float64's), and ``m`` the logit there: the general way's max but for the sign of a zero max, which
      changes no value (:func:`_float64_short` says why); ``gap = -(x_y - m)``, the label's term alone;
    * a block is the group's rows and ``c`` columns (``c`` = K, or :data:`_TILE_COLUMNS` = 2^q on rows wider
      than that): ``x - m`` in float64, ``e^(x - m)`` in place, the max's term set to +0, then p =
      min(:data:`_TILE_LEVELS`, q) levels of the pairwise sum (:func:`_tree_levels`); the blocks' results,
      side by side in the row's order, are then summed by :func:`_tree_sum`.  That is the whole row's
      pairwise tree: at each of the first p levels every block but the row's last has an even length
      (2^(q - level + 1)), so no pair straddles two blocks, and the whole row's level has an odd length
      exactly when the last block's has, whose padding 0 :func:`_tree_levels` puts at that block's end,
      where the whole row's goes; after p levels the results side by side are the whole row's level p."""
    n, k = L.shape
    labels = np.asarray(labels, dtype=np.intp)
    c = min(k, _TILE_COLUMNS)
    group = max(1, _TILE // c)
    blocks = -(-k // c)
    levels = min(_TILE_LEVELS, c.bit_length() - 1)
    per = _levels_length(c, levels)  # (c is 2^q where blocks > 1)
    partial = np.empty((n, (blocks - 1) * per + _levels_length(k - (blocks - 1) * c, levels)))
    m, top = np.empty(n), np.empty(n, dtype=np.intp)
    buf = np.empty(min(n, group) * c)
    for r0 in range(0, n, group):
        r1 = min(n, r0 + group)
        tops = top[r0:r1] = np.argmax(L[r0:r1], axis=1)
        m[r0:r1] = np.take(L[r0:r1], np.arange(r1 - r0) * k + tops)
        if not (m[r0:r1].min() > -np.inf and m[r0:r1].max() < np.inf):  # (a NaN max fails both)
            return None
        for b in range(blocks):
            c0, c1 = b * c, min(k, (b + 1) * c)
            t = buf[:(r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
            np.subtract(L[r0:r1, c0:c1], m[r0:r1, None], out=t)
            if not t.min() > -np.inf:  # (x_i - m <= 0: finite unless it overflowed or x_i = -inf)
                return None
            np.exp(t, out=t)
            here = np.flatnonzero((tops >= c0) & (tops < c1))
            np.put(t, here * (c1 - c0) + (tops[here] - c0), 0)  # the max's own e^0 = 1
            t = _tree_levels(t, levels)
            partial[r0:r1, b * per:b * per + t.shape[1]] = t
    gap = -(np.take(L, np.arange(n) * k + labels).astype(np.float64) - m)
    loss, tiny = _loss(_tree_sum(partial), gap, k, np.float64)
    return loss, tiny, m[tiny], top[tiny]


def _float64_kernel(L: np.ndarray, labels: np.ndarray):
    """:func:`_float64_short` / :func:`_float64_wide`'s result on float32 logits by the compiled kernel
    (:mod:`~stabilitylab.numerics.kernel`: ``ref_terms`` and ``ref_tree``) around numpy's own ``np.exp``, in
    blocks of about :data:`_TILE` values; None where the kernel is not loaded, the logits are not float32 or
    one is not finite (then the numpy way decides).  The same values bit for bit: per row ``top`` = the first
    maximum (``np.argmax``'s), ``m = x_top``, ``x - m`` in float64, ``gap = -(x_y - m)``; the terms' exps by
    ``np.exp`` in place; the max's own term then set to the +0 the numpy way puts there, and the row's pairwise
    tree of :func:`_tree_sum` (which the numpy way's blocks give too).  (The kernel's ``ref_terms`` writes 0 for
    the max's term and ``ref_tree`` puts the +0 there after the exp: a -inf among the terms, whose exp is that +0
    too, sends numpy's SIMD exp to its slow path, ~4 ns a value instead of ~0.8 on rows of 10.)"""
    module = kernel.load()
    if module is None or L.dtype != np.float32:
        return None
    n, k = L.shape
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    total, gap, m = np.empty(n), np.empty(n), np.empty(n)
    top = np.empty(n, dtype=np.int64)
    rows = max(1, _TILE // k)
    buf = np.empty(min(n, rows) * k)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        t = buf[:(r1 - r0) * k]
        if not module.ref_terms(r1 - r0, k, L[r0:r1], labels[r0:r1], t, gap[r0:r1], m[r0:r1], top[r0:r1]):
            return None
        np.exp(t, out=t)
        module.ref_tree(r1 - r0, k, t, top[r0:r1], total[r0:r1])
    loss, tiny = _loss(total, gap, k, np.float64)
    return loss, tiny, m[tiny], top[tiny].astype(np.intp)


def fast_cross_entropy(x: Loaded, dtype=np.longdouble):
    """log1p(sum_{i != k} e^(x_i - m)) + (m - x_y) in ``dtype`` (longdouble, or float64 for
    inputs of at most 24 bits).  In longdouble x_i - m is split exactly into float64 hi + lo
    and e^(x_i - m) = e^hi e^lo; in float64 x_i - m is rounded once (a relative error of at
    most 745 * 2**-53 = 2**-43.5 in e^(x_i - m) where it matters).  Relative error bound:
    :func:`stabilitylab.numerics.reference.fast_error` (exp and log1p of the wide type, one rounding
    per product, a pairwise sum of depth ceil(log2 K), the final addition of m - x_y >= 0).

    Rows where the true class is the max and the sum is within 2**62 of the wide type's
    smallest normal (terms may have underflowed) are summed scaled
    (:func:`stabilitylab.numerics.reference.exp_sum_scaled`), and the result is then an
    :class:`~stabilitylab.numerics.reference.Exact`.  Rows it does not handle (non-finite logits,
    sums near e**-7.6e11) go to mpmath.

    In float64, on float32 or float64 logits whose every ``x_i - m`` is finite (the usual case), the
    values are made in blocks of rows and columns that need no copy of the chunk (:func:`_float64_short`,
    :func:`_float64_wide`); otherwise, and in longdouble, whole chunks at a time.  The same values either way."""
    k = x.logits.shape[1]
    wide = np.dtype(dtype)
    if wide == np.dtype(np.float64) and x.logits.dtype in (np.float32, np.float64) and x.logits.size:
        L = np.ascontiguousarray(x.logits)
        got = _float64_kernel(L, x.labels)
        if got is None:
            got = (_float64_short if k <= _SHORT else _float64_wide)(L, x.labels)
        if got is not None:
            return _finished(L, k, np.ones(len(L), dtype=bool), *got)
    if k > _BLOCK and len(x.logits) == 1 and x.logits.dtype in (np.float32, np.float64):
        return _wide_cross_entropy(x, wide)
    X = np.asarray(x.logits, dtype=np.float64)  # (read only: no copy of float64 logits)
    rows = np.arange(len(X))
    m, top = _max_argmax(X)
    if wide == np.dtype(np.float64):  # x - m rounded once: e^(d (1 + 2**-53)), |d| <= 745: 2**-43.5 relative
        hi, lo = X - m[:, None], None
    elif _differences_exact(X):  # lo = 0 everywhere (float32 logits, as usual): the same values, 5 passes fewer
        hi, lo = X - m[:, None], None
    else:
        hi, lo = _two_diff(X, m[:, None])
    if hi.size and np.isfinite(hi.min()) and np.isfinite(hi.max()):  # (NaN propagates into both)
        handled = np.ones(len(hi), dtype=bool)  # the usual case: every row finite, in two reductions
    else:
        finite = np.isfinite(hi)
        handled = finite.all(axis=1) if k > 16 else np.logical_and.reduce([finite[:, j] for j in range(k)])
    if not handled.all():
        hi = np.where(handled[:, None], hi, 0.0)
        lo = None if lo is None else np.where(handled[:, None], lo, 0.0)
    at_label = rows * k + x.labels  # (flat indices into (rows, k) arrays: faster than [rows, labels])
    gap = -np.take(hi, at_label).astype(wide)  # m - x_y >= 0
    if lo is None and wide != hi.dtype and k >= 2 * _COLUMNS:  # wide rows in longdouble: blocks of columns
        total = _blocked_exp_sum(hi, top, wide)
    else:
        # (in place where hi is a float64 temporary of its own: no second array of the chunk's size)
        terms = np.exp(hi, out=hi) if lo is None and wide == hi.dtype else np.exp(hi.astype(wide))
        if lo is not None:  # e^lo = 1 where x_i - m is exact in float64, as it usually is; where e^hi
            inexact = (lo != 0) & (terms > 0)  # is 0, so is e^(hi + lo) (|lo| <= ulp(hi) / 2), even for lo = +inf
            terms[inexact] *= np.exp(lo[inexact].astype(wide))
            gap -= np.take(lo, at_label).astype(wide)
        np.put(terms, rows * k + top, 0)  # the max's own e^0 = 1
        total = _tree_sum(terms)
    loss, tiny = _loss(total, gap, k, wide)
    tiny &= handled
    return _finished(X, k, handled, loss, tiny, m[tiny], top[tiny])


def _finished(X: np.ndarray, k: int, handled: np.ndarray, loss: np.ndarray, tiny: np.ndarray, m, top):
    """:func:`fast_cross_entropy`'s result from :func:`_loss`'s ``(loss, tiny)`` (``handled``: the rows of
    finite differences, changed in place; ``m``, ``top``: the max and argmax of the ``tiny`` rows; ``X``: the
    logits, any float dtype)."""
    handled &= np.isfinite(loss)  # (finite logits give a finite loss: anything else is left to mpmath)
    zero = np.full(len(X), k == 1)
    if not tiny.any() or not LONGDOUBLE_IS_WIDE:
        return loss, zero, handled & ~tiny
    # the true class is the max and the rest sums to below 2**-960 (longdouble: 2**-16320): the loss
    # is log1p(s) = s (1 - s/2 ...) = s to far below any bound, s summed scaled (exact, not rounded to 0)
    rows = np.flatnonzero(tiny)
    use = np.ones((len(rows), k), dtype=bool)
    use[np.arange(len(rows)), top] = False
    X = np.asarray(X[rows], dtype=np.float64)  # (x - m exactly, also in the float64 tier)
    small, ok = exp_sum_scaled(*_two_diff(X, m[:, None]), use)
    out = from_longdouble(loss, zero).put(rows, small)
    handled[rows] = ok
    return out, zero, handled


fast_cross_entropy.bounded = bounded_cross_entropy  # (engine._classified's float64 tier; Truth has no field for it)


SOFTMAX_CE = Experiment(
    name="softmax_ce",
    title="Softmax cross-entropy: naive, shifted, log-softmax, log1p",
    question="Which formulation of -log softmax(x)_y overflows, underflows or loses the loss, and for which logits?",
    methods=(
        Method("naive_softmax_log", "-log(exp(x_y) / sum_i exp(x_i))", naive_softmax_log),
        Method("shifted_softmax_log", "-log(exp(x_y - m) / sum_i exp(x_i - m))", shifted_softmax_log),
        Method("log_softmax", "log(sum_i exp(x_i - m)) - (x_y - m)", log_softmax, stable=True),
        Method("log_softmax_log1p", "log1p(sum_{i != k} exp(x_i - m)) - (x_y - m)", log_softmax_log1p, stable=True),
    ),
    default_cases=default_cases,
    load=load,
    truth=Truth(exact_cross_entropy, exact_rows, fast_cross_entropy, fast_float64=True),
    families=FAMILIES,
    block_families=BLOCK_FAMILIES,
)
