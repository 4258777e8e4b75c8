"""softmax_ce's four formulations fused for the bulk path (``compare --logits``): the same values and
statuses as the general engine, bit for bit, with each shared quantity computed once.

The general engine (:func:`~stabilitylab.analysis.engine.evaluate`) runs each method's kernel through
:class:`~stabilitylab.numerics.arith.Arith`, every operation followed by its event bookkeeping.  Here, for
a pure format ``F`` in :data:`FORMATS` (and float16 on rows of at most :data:`SHORT` logits) without flush
to zero, the operations are the same ones on the same operands, each rounded to ``F`` exactly as Arith rounds
it (held dtype ``h``: float32 for bfloat16, float16 and float32, float64 for float64; ``rnd`` = ``F.round32``
for bfloat16 and float16, the identity for float32 / float64,
whose ``+ - /`` are IEEE in their own dtype; ``exp``, ``log``, ``log1p`` by
:mod:`~stabilitylab.numerics.crmath`):

* ``xl`` = the logits stored in F; ``m`` = max xl, ``z = rnd(xl - m)``, ``k`` = argmax xl;
* ``ez = exp(z)`` (shared by shifted_softmax_log, log_softmax, log_softmax_log1p), ``ex = exp(xl)`` (naive);
* ``S = T(ez)`` and ``Sn = T(ex)``, T the pairwise tree of :meth:`Arith.tree` (level by level, neighbours
  added and rounded, a 0 appended to an odd level);
* ``S1`` = T(ez with ez_k set to 0) (log_softmax_log1p).  S1 differs from S only along the path of leaf
  k: at level l the node ``k >> l`` (its sibling ``(k >> l) ^ 1`` is S's own node, the padding 0 included),
  so S1 is the ``ceil(log2 K)`` additions ``v <- rnd(v + sibling)`` from ``v = 0`` (addition is
  commutative in IEEE arithmetic: the left/right order does not change a sum);
* naive ``-log(rnd(ex_y / Sn))``, shifted ``-log(rnd(ez_y / S))``, log_softmax ``rnd(log(S) - z_y)``,
  log_softmax_log1p ``rnd(log1p(S1) - z_y)``.

**Speed without other values.**  Rows of at most :data:`SHORT` logits are worked on transposed (a row per
column: every step a few contiguous passes of n values; :func:`_sums_short`).  In bfloat16 and float16,
``exp``, ``log`` and ``log1p`` are read from tables of crmath's own results at each of the 2**16 patterns
(:func:`_cr`; ~1 ns a value instead of crmath's ~3 ns for exp and ~9 ns for log).

**Events.**  A status depends on the events only through the rows' first overflow and underflow steps,
a pole (divide_by_zero), inputs lost at load and saturation (:func:`~stabilitylab.analysis.outcome.classify`;
subnormal results never change a status, and the bulk outputs show no event list).  A row is *ordinary*
when none of these can have happened, checked from the values (IEEE, finite operands; no flush to zero):

* load: every logit finite, and zero or stored as a non-zero value of magnitude <= max (no overflow, no
  underflow to 0);
* every ``ex`` and ``ez`` finite and > 0 (exp overflows to inf, underflows to 0); then ``z`` is finite
  (``z = rnd(xl - m) <= 0`` overflows only to -inf, whose exp is 0);
* ``Sn``, ``S`` finite: the terms are >= 0, so every partial sum is at most the (monotone) rounded sum
  above it, finite too; S1's partials are at most S's;
* ``ex_y / Sn`` and ``ez_y / S`` > 0 and finite (then no underflow, no pole: ``Sn >= ex_y > 0``), so their
  log has no pole; ``log1p(S1)`` is 0 only where S1 = 0 (no underflow); every method's value finite
  (a subtraction overflows only to inf).

Each check looks at the whole chunk first (min, max, counts of non-zeros) and row by row only where that
fails.  Ordinary rows are classified by the one rule with no event (an ``Arith`` that saw nothing: their
outcomes' ``first_steps`` are all NEVER, where the engine may have noted a subnormal result, which no
bulk output shows); every other row goes through the general engine.  Rows of more than
:data:`MAX_CLASSES` logits go through the engine whole.  Both use the same reference
(:func:`~stabilitylab.analysis.engine._classified`: the vectorized reference, mpmath where it cannot
decide a status), which is per row: the rows' outcomes are the engine's, bit for bit
(tests/test_softmax_bulk.py compares them on adversarial rows, and the 10**5-row identity test on the
whole bulk path).
"""

from __future__ import annotations

import numpy as np

from ..experiments.softmax_ce import SOFTMAX_CE, Loaded, Logits, max_argmax_short
from ..numerics import crmath, kernel
from ..numerics.arith import Arith, _row_argmax, _row_max, rows_any
from ..numerics.formats import Format, get_format
from .engine import _classified, evaluate
from .outcome import Outcome, gather

__all__ = ["FORMATS", "supported", "evaluate_fused"]

FORMATS = ("bfloat16", "float32", "float64")
"""Pure formats the fused path covers (others: the general engine)."""

SHORT = 16
"""Rows of at most this many logits are worked on transposed (:func:`_sums_short`)."""


SHORT_FORMATS = ("float16",)
"""Pure formats the fused path covers on rows of at most :data:`SHORT` logits only: a wide row's ``exp(z)``
underflows to 0 in float16 somewhere in nearly every row (so nearly every row would go to the engine after
the kernel), a short row's rarely."""


MAX_CLASSES = 2**20
"""Rows wider than this go through the engine, which works through a wide row in blocks of columns (a few
temporaries of the row's size here: issue #18's memory bound)."""


def supported(fmt: Format, ftz: bool, classes: int = 1) -> bool:
    """Whether :func:`evaluate_fused` covers ``fmt`` (a pure format of :data:`FORMATS`, no flush to zero)
    on rows of ``classes`` logits (at most :data:`MAX_CLASSES`; at most :data:`SHORT` for
    :data:`SHORT_FORMATS`)."""
    if ftz or fmt.is_policy or fmt.block is not None:
        return False
    return (fmt.name in FORMATS and classes <= MAX_CLASSES) or (fmt.name in SHORT_FORMATS and classes <= SHORT)


_TABLES: dict[tuple[str, str], np.ndarray] = {}


def _table(name: str, fmt: Format) -> np.ndarray:
    """``crmath.<name>(fmt, v)`` at every 16-bit pattern v of a 16-bit format held in float32 (bfloat16: the
    pattern is the float32's high half; float16: numpy's float16 bits), made once per process: 2**16 float32
    values (256 KiB)."""
    table = _TABLES.get((name, fmt.name))
    if table is None:
        if fmt.name == "bfloat16":
            every = (np.arange(2**16, dtype=np.uint32) << np.uint32(16)).view(np.float32)
        else:
            every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
        with np.errstate(all="ignore"):
            table = _TABLES[name, fmt.name] = getattr(crmath, name)(fmt, every)
        table.setflags(write=False)
    return table


def _cr(name: str, fmt: Format, x: np.ndarray) -> np.ndarray:
    """``crmath.<name>(fmt, x)`` (exp, log, log1p: correctly rounded to ``fmt``), elementwise.  In bfloat16,
    whose values are held in float32 with a zero low half, read from :func:`_table` at each value's high
    half (in float16 at its float16 bits): crmath's own results, computed once per pattern, so the same values
    but where ``x`` is a NaN of another payload (``round32`` returns a NaN as it is): there the table gives a
    NaN, NaN either way, and a row holding such a NaN (in a logit, an exp, a sum or a quotient) is not
    ordinary, so its values are the general engine's (see the module)."""
    if fmt.name not in ("bfloat16", "float16") or x.dtype != np.float32 or not x.flags.c_contiguous:
        return getattr(crmath, name)(fmt, x)
    if fmt.name == "float16":  # (a float16 value held in float32 converts to float16 exactly)
        return np.take(_table(name, fmt), x.astype(np.float16).view(np.uint16))
    return np.take(_table(name, fmt), x.view(np.uint32) >> np.uint32(16))


def _rounder(fmt: Format):
    """The rounding of a held result to ``fmt``, as :meth:`Arith._rounded` does it."""
    if fmt.precision <= 11:
        return fmt.held_twin.round32
    return lambda y: y


def _store(fmt: Format, x: np.ndarray) -> np.ndarray:
    """The logits stored in ``fmt`` and held, as :meth:`Arith.load` stores them: float32 ``x`` by
    ``round32``, float64 ``x`` (a float64 file) by one correct rounding (:meth:`Format.round`; via float32
    it would round twice: 1 + 2**-8 + 2**-31 would be bfloat16 1, not 1 + 2**-7)."""
    with np.errstate(all="ignore"):
        if fmt.precision <= 11:
            if x.dtype == np.float32:
                return fmt.held_twin.round32(x)
            return fmt.held_twin.round(x, np.float32)
        return x.astype(fmt.dtype, copy=False)  # (x itself where it is held as stored: nothing writes to it)


def _levels(e: np.ndarray, rnd) -> tuple[np.ndarray, list[np.ndarray]]:
    """The pairwise tree of :meth:`Arith.tree` on the rows of ``e``: (sums, each level's operands, padded)."""
    levels = []
    t = e
    while t.shape[1] > 1:
        if t.shape[1] % 2:
            t = np.concatenate([t, np.zeros((len(t), 1), t.dtype)], axis=1)
        levels.append(t)
        t = rnd(t[:, 0::2] + t[:, 1::2])
    return t[:, 0], levels


def _tree(e: np.ndarray, rnd) -> np.ndarray:
    t = e
    while t.shape[1] > 1:
        if t.shape[1] % 2:
            t = np.concatenate([t, np.zeros((len(t), 1), t.dtype)], axis=1)
        t = rnd(t[:, 0::2] + t[:, 1::2])
    return t[:, 0]


def _dropped_sum(levels: list[np.ndarray], k: np.ndarray, rnd, dtype) -> np.ndarray:
    """The tree's sum with leaf k[row] set to 0, from the levels of the whole tree (see the module)."""
    rows = np.arange(len(k))
    v = np.zeros(len(k), dtype)
    j = k.astype(np.intp)
    for level in levels:
        v = rnd(v + level.reshape(-1)[rows * level.shape[1] + (j ^ 1)])  # (flat indices: ~3x faster than [rows, j])
        j >>= 1
    return v


def _all(mask: np.ndarray) -> np.ndarray:
    """Per row, whether every entry of (rows, K) ``mask`` is True (short rows column by column)."""
    return ~rows_any(~mask, len(mask))


def _positive_finite(e: np.ndarray) -> np.ndarray:
    """Per row, whether every entry of (rows, K) ``e`` is in (0, inf): from min and max of the whole
    block first (NaN fails both), row by row only where that fails."""
    if e.size and e.min() > 0 and e.max() < np.inf:
        return np.ones(len(e), dtype=bool)
    return _all((e > 0) & (e < np.inf))


def _stored_whole(fmt: Format, x: np.ndarray, xl: np.ndarray) -> np.ndarray:
    """Per row, whether storing ``x`` as ``xl`` lost nothing: every logit finite, stored within the range,
    and 0 only where it was 0 (no overflow, no underflow to 0).  From the block's min and max first: then
    no underflow is possible where xl's dtype holds every value of x's (float32 x in float32 or float64,
    float64 x in float64: xl = x; not float64 x in float32, where 1e-50 becomes 0), nor where no xl is 0
    (min |xl| > 0; else the counts of non-zeros tell: xl is 0 where x is, so they are equal exactly when
    no x != 0 became 0)."""
    if xl.size and -fmt.max <= xl.min() and xl.max() <= fmt.max and (
            (fmt.precision >= 24 and x.dtype.itemsize <= xl.dtype.itemsize) or np.abs(xl).min() > 0
            or np.count_nonzero(xl) == np.count_nonzero(x)):
        return np.ones(len(x), dtype=bool)
    return _all(((np.abs(xl) <= fmt.max) & (xl != 0)) | (x == 0))


def _levels_short(et: np.ndarray, rnd) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`_levels` on (K, n) ``et`` (a row per column): the same additions on the same operands, level
    by level, each level's operands padded with a row of 0 where their count is odd."""
    levels = []
    t = et
    while len(t) > 1:
        if len(t) % 2:
            t = np.concatenate([t, np.zeros((1, t.shape[1]), t.dtype)])
        levels.append(t)
        t = rnd(t[0::2] + t[1::2])
    return t[0], levels


def _dropped_sum_short(levels: list[np.ndarray], k: np.ndarray, rnd, dtype) -> np.ndarray:
    """:func:`_dropped_sum` on the transposed levels of :func:`_levels_short`."""
    n = len(k)
    cols = np.arange(n)
    v = np.zeros(n, dtype)
    j = k.astype(np.intp)
    for level in levels:
        v = rnd(v + np.take(level.reshape(-1), (j ^ 1) * n + cols))  # (np.take: ~2x faster than [...] here)
        j >>= 1
    return v


def _positive_finite_short(et: np.ndarray) -> np.ndarray:
    """:func:`_positive_finite` on (K, n) ``et``: per column."""
    if et.size and et.min() > 0 and et.max() < np.inf:
        return np.ones(et.shape[1], dtype=bool)
    return np.logical_and.reduce((et > 0) & (et < np.inf), axis=0)


def _sums_short(fmt: Format, x: np.ndarray, y: np.ndarray):
    """:func:`_sums` on rows of at most :data:`SHORT` logits, worked on transposed: with a row per
    column, each step (the shift, each level of the pairwise trees, the max) is a few contiguous passes of
    n values instead of strided ones over rows of K (numpy's inner loops are slow on a short last axis).
    The same operations on the same operands, elementwise, so the same values; ``m`` (the rows' max)
    differs from :func:`_values`' only in the sign of a zero max, which changes no value: ``z = xl - m``
    then differs only where ``xl = -0`` (``-0`` or ``+0``), ``exp(+-0) = 1``, and the methods read z only
    through ``log(S) - z_y`` and ``log1p(S1) - z_y``, whose subtrahend's zero sign cannot change a
    rounded-to-nearest difference but where both operands are zeros (``+0 - (+-0) = +0``, as log and log1p
    give +0, never -0)."""
    rnd = _rounder(fmt)
    n = len(x)
    cols = np.arange(n)
    with np.errstate(all="ignore"):
        xl = _store(fmt, x)
        ok = _stored_whole(fmt, x, xl)
        xt = np.ascontiguousarray(xl.T)
        m, k = max_argmax_short(xt)
        zt = rnd(xt - m)
        ezt = _cr("exp", fmt, zt)
        ok &= _positive_finite_short(ezt)
        S, levels = _levels_short(ezt, rnd)
        S1 = _dropped_sum_short(levels, k, rnd, xl.dtype)
        del levels
        at = y * n + cols
        zy, ezy = np.take(zt.reshape(-1), at), np.take(ezt.reshape(-1), at)
        del ezt, zt
        ext = _cr("exp", fmt, xt)
        ok &= _positive_finite_short(ext)
        exy = np.take(ext.reshape(-1), at)
        Sn = _levels_short(ext, rnd)[0]
        del ext
    return ok, xl, (S, S1, Sn, exy, ezy, zy)


def _tail(fmt: Format, rnd, ok: np.ndarray, S, S1, Sn, exy, ezy, zy) -> dict[str, np.ndarray]:
    """The four methods' per-row tails (:func:`_values`), ``ok`` narrowed in place to the ordinary rows."""
    with np.errstate(all="ignore"):
        ok &= np.isfinite(S) & np.isfinite(Sn)
        rn, rs = rnd(exy / Sn), rnd(ezy / S)
        ok &= (rn > 0) & (rn < np.inf) & (rs > 0) & (rs < np.inf)
        L1 = _cr("log1p", fmt, S1)
        ok &= (L1 != 0) | (S1 == 0)
        values = {
            "naive_softmax_log": -_cr("log", fmt, rn),
            "shifted_softmax_log": -_cr("log", fmt, rs),
            "log_softmax": rnd(_cr("log", fmt, S) - zy),
            "log_softmax_log1p": rnd(L1 - zy),
        }
        for v in values.values():
            ok &= np.isfinite(v)
    return values


def _values(fmt: Format, x: np.ndarray, y: np.ndarray):
    """(values per method, ordinary rows, loaded inputs) of the fused kernels on finite-or-not logits ``x``:
    :func:`_sums` (by the compiled kernel where it applies: :func:`_sums_kernel`), then :func:`_tail`."""
    got = _sums_kernel(fmt, x, y)
    if got is None:
        ok, xl, sums = _sums(fmt, x, y)
        return _tail(fmt, _rounder(fmt), ok, *sums), ok, xl
    ok, xl, sums = got
    return _tail_kernel(fmt, ok, sums), ok, xl


def _sums(fmt: Format, x: np.ndarray, y: np.ndarray):
    """(ordinary rows so far, loaded inputs, (S, S1, Sn, ex_y, ez_y, z_y)) on finite-or-not logits ``x``
    (see the module); ``ok`` is narrowed further by :func:`_tail`."""
    if 1 < x.shape[1] <= SHORT:
        return _sums_short(fmt, x, y)
    rnd = _rounder(fmt)
    rows = np.arange(len(x))
    with np.errstate(all="ignore"):
        xl = _store(fmt, x)
        ok = _stored_whole(fmt, x, xl)
        m = _row_max(xl)
        z = rnd(xl - m[:, None])  # (z = -inf gives ez = 0, flagged below; z <= 0 and finite logits: no NaN)
        ez = _cr("exp", fmt, z)
        ok &= _positive_finite(ez)
        S, levels = _levels(ez, rnd)
        S1 = _dropped_sum(levels, _row_argmax(xl), rnd, xl.dtype)
        del levels
        zy, ezy = z[rows, y], ez[rows, y]
        del ez, z
        ex = _cr("exp", fmt, xl)
        ok &= _positive_finite(ex)
        exy = ex[rows, y]
        Sn = _tree(ex, rnd)
        del ex
    return ok, xl, (S, S1, Sn, exy, ezy, zy)


KERNEL_FORMATS = {"bfloat16": 0, "float32": 1, "float64": 2}
"""Formats of the compiled kernel (:mod:`~stabilitylab.numerics.kernel`), with its code for each (float64: its
``softmax_sums64`` and ``softmax_tail64``)."""

FIX_BUDGET = 256
"""At most this many of the kernel's undecided exps per call are computed by crmath one by one (its float32 exp
leaves about 2 in 10**7 arguments of normal results undecided, its float64 stages nearly none but arguments with
subnormal or near-overflow results); beyond it (and for float32's subnormal results it cannot decide) the kernel
leaves the row to the numpy path."""


def kernel_covers(fmt: Format, ftz: bool, dtype: np.dtype) -> bool:
    """Whether the compiled kernel computes :func:`_sums` of blocks of ``dtype`` logits in ``fmt`` here (built
    and loaded, a format of :data:`KERNEL_FORMATS`, float32 logits, no flush to zero)."""
    return (fmt.name in KERNEL_FORMATS and supported(fmt, ftz) and np.dtype(dtype) == np.float32
            and kernel.load() is not None)


def warm(fmt: Format) -> None:
    """Make the tables the kernel path reads in ``fmt`` (bfloat16's exp, log and log1p; ~18 ms) now: before
    worker processes fork, which then share them instead of each making its own."""
    if KERNEL_FORMATS.get(fmt.name) == 0:
        for name in ("exp", "log", "log1p"):
            _table(name, fmt)


def _fix_exp(z: float) -> float:
    """crmath's float32 exp of one float32 argument (the kernel's undecided ones)."""
    return float(crmath.exp(get_format("float32"), np.array([z], dtype=np.float32))[0])


def _fix_exp64(z: float) -> float:
    """crmath's float64 exp of one float64 argument (those the kernel's two stages leave)."""
    return float(crmath.exp(get_format("float64"), np.array([z], dtype=np.float64))[0])


def _tail_kernel(fmt: Format, ok: np.ndarray, sums: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`_tail` by the compiled kernel on the (6, n) ``sums`` of :func:`_sums_kernel` (float32; float64 for
    float64), ``ok`` narrowed in place, as there: the same values and rows (its float32 and float64 log and
    log1p are checked against crmath's; a row with an undecided one is done by :func:`_tail`)."""
    code = KERNEL_FORMATS[fmt.name]
    n = sums.shape[1]
    out = np.empty((4, n), dtype=sums.dtype)
    flag = ok.view(np.uint8).copy()
    if code == 2:  # float64: crmath's first stage for log and log1p (its softmax_tail64)
        kernel.load().softmax_tail64(n, sums, out, flag)
    else:
        log, log1p = (_table("log", fmt), _table("log1p", fmt)) if code == 0 else (np.zeros(0, np.float32),) * 2
        kernel.load().softmax_tail(code, n, sums, log, log1p, out, flag)
    redo = np.flatnonzero(flag == 2)
    if redo.size:
        sub = ok[redo].copy()
        again = _tail(fmt, _rounder(fmt), sub, *(s[redo] for s in sums))
        for q, name in enumerate(again):
            out[q, redo] = again[name]
        flag[redo] = sub
    ok &= flag == 1
    return {m.name: out[q] for q, m in enumerate(SOFTMAX_CE.methods)}


def _sums_kernel(fmt: Format, x: np.ndarray, y: np.ndarray):
    """:func:`_sums` by the compiled kernel (:mod:`~stabilitylab.numerics.kernel`): float32 logits in bfloat16,
    float32 or float64; None where it does not apply or is not built.  The rows it leaves to numpy (flag 2) are
    computed by :func:`_sums` and put in place: the same values either way (the kernel's are the numpy path's,
    bit for bit; tests/test_softmax_kernel.py)."""
    code = KERNEL_FORMATS.get(fmt.name)
    if code is None or x.dtype != np.float32 or not x.size:
        return None
    module = kernel.load()
    if module is None:
        return None
    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y, dtype=np.int64)
    n, k = x.shape
    flag = np.empty(n, dtype=np.uint8)
    if code == 2:  # float64: the logits' float64 values are exact (as _store's cast, which quiets a signalling NaN)
        with np.errstate(all="ignore"):
            xl = x.astype(np.float64)
        out = np.empty((6, n), dtype=np.float64)
        module.softmax_sums64(n, k, x, y, out, flag, _fix_exp64, FIX_BUDGET)
    else:
        xl = np.empty_like(x) if code == 0 else x  # (float32 logits are stored as they are: xl is x)
        out = np.empty((6, n), dtype=np.float32)
        table = _table("exp", fmt) if code == 0 else np.zeros(0, np.float32)
        module.softmax_sums(code, n, k, x, y, table, xl if code == 0 else table, out, flag, _fix_exp, FIX_BUDGET)
    ok = flag == 1
    redo = np.flatnonzero(flag == 2)
    if redo.size:
        ok_r, xl_r, sums_r = _sums(fmt, x[redo], y[redo])
        ok[redo] = ok_r
        if code != 1:
            xl[redo] = xl_r
        for q, v in enumerate(sums_r):
            out[q, redo] = v
    return ok, xl, out


def evaluate_fused(fmt: Format, cases: Logits, *, tolerance: float | None = None,
                   printed: tuple[int, int] | None = None, defer: bool = False) -> dict[str, Outcome]:
    """:func:`engine.evaluate` of softmax_ce on ``cases`` (rows of one width) in ``fmt``
    (:func:`supported`) with ``fast=True``: the same outcomes (see the module).

    ``printed = (keep, cap)``: the caller reads only the statuses, the error-bits bins and the columns of the
    ``keep`` worst rows, the first ``cap`` failing rows and the first row of each status (a chunk's
    :class:`~stabilitylab.analysis.streaming.Cell`), so the ordinary rows' reference may come from the
    bounded float64 tier where that provably changes none of these (:func:`engine._classified`; float64
    only).  Every such row of the chunk is one of the ordinary rows' such rows or one of the other rows
    (which the engine evaluates on the longdouble reference): the keep-th worst of the ordinary rows is at
    most the chunk's, the first failing / first of a status of the chunk is the first among the ordinary
    rows or among the others.  ``defer`` (with ``printed``): the tier is kept in printed rows too, marked
    by the outcomes' ``window`` (see ``engine._classified``; the caller recomputes what it prints)."""
    x = cases.logits
    values, ordinary, xl = _values(fmt, x, cases.labels)
    tol = fmt.default_tolerance if tolerance is None else tolerance
    good = np.flatnonzero(ordinary)
    rest = np.flatnonzero(~ordinary)
    parts: dict[str, list] = {m.name: [] for m in SOFTMAX_CE.methods}
    if good.size:
        every = good.size == len(x)
        inputs = Loaded(xl if every else xl[good], cases.labels if every else cases.labels[good])
        none = Arith(fmt, good.size, quiet=True)  # no event (its `first` a broadcast of NEVER, not filled)
        runs = [(m, none, values[m.name] if every else values[m.name][good]) for m in SOFTMAX_CE.methods]
        tier = {} if printed is None else {"printed": printed, "defer": defer}
        for (m, _, _), outcome in zip(runs, _classified(SOFTMAX_CE.truth, runs, inputs, fmt, tolerance, tol,
                                                        True, True, eventless=True, **tier)):
            parts[m.name].append((good, outcome))
    if rest.size:
        for name, outcome in evaluate(SOFTMAX_CE, fmt, cases.take(rest), tolerance=tolerance,
                                      fast_reference=True, fast=True).items():
            parts[name].append((rest, outcome))
    return {name: gather(p, len(x)) for name, p in parts.items()}
