"""softmax_ce on a user's logits at real size: chunks of rows in, summaries out.

A file of (rows, classes) logits is read chunk by chunk (:mod:`stabilitylab.io.sources`);
each chunk runs through the general engine (:func:`engine.evaluate` with ``fast=True``:
the same kernels, format values held in float32, references in float64 / longdouble)
and is reduced at once to columns that add up across chunks:

* counts of each status per method x format;
* a histogram of error bits (bin b holds rows with b <= error_bits < b + 1; then one
  bin for an infinite and one for a NaN error);
* the ``worst`` rows (largest error, NaN and inf first) and the first ``cap`` failing
  rows, as structured arrays (row, value, exact, status, rel_error, ulps, error_bits),
  and the first row of each status;
* with ``versus`` (an audit: the target's method name), per format and other method:
  rows where both give the same value, rows only the target fails and rows only the
  method fails (:class:`Pair`);
* with ``rows="all"``, every row's columns, handed to a writer as they come (JSON Lines).

In bfloat16, float32 and float64 without flush to zero (rows of at most 2**20 classes), and float16 on rows
of at most 16 classes, softmax_ce's chunk goes through :mod:`.softmax_bulk` instead: the engine's values and
statuses, bit for bit, with the quantities the four formulations share computed once.  A chunk's summaries
(:func:`_cell`) take a few passes per method: the histogram, the worst rows and the first rows read what
they need without sorting or scanning the whole chunk where they can (each helper says why the result is
the same).

In float64 the fused path may take its reference from the bounded float64 tier where the rows' columns are not
written (:func:`run_chunk`): where the summaries cannot tell, and, on chunks of at most ``keep`` rows (wide
rows), also in the printed rows, which then carry their ulps window through the merge (:data:`ROW_T`) and are
recomputed on the longdouble reference at the end of the run (:func:`_settle`, their logits read again).

Only these summaries cross chunks, so memory is bounded by the chunk size whatever the
file size.  Chunks run on forked worker processes (one per CPU: :mod:`.parallel`), with a
bounded window of chunks in flight (in this process when a method is a black box, whose library
may hold threads or state a fork would break); results are merged in row order, so the output
does not depend on the scheduling.

The experiment is softmax_ce, or softmax_ce with an audited target as one more
(black-box) method: an audit on a user's logits is this same path.

Block-scaled storage (``-d mxfp4``, ``-d nvfp4``...): each chunk's rows are quantized per block of the
class axis (a block never spans two rows); NVFP4's per-tensor scale is the whole file's: a first
streaming pass finds the largest finite |logit| of every row of the file (ignored rows included: they are
part of the tensor) and every chunk is quantized with it, so results do not depend on the chunk size
or the worker count.  Per block format a :class:`BlockTally` adds up, over the rows: the logits flushed to
zero by their block's scale, saturated elements and block scales, and the split of the error between the
quantization alone (the exact loss of the quantized logits against the exact loss of the logits as given,
both from the vectorized reference) and the arithmetic (the status counts, which judge the computed loss
against the exact loss of the quantized logits).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..experiments.base import Experiment, ParamNames
from ..experiments.softmax_ce import SOFTMAX_CE, Loaded, Logits
from ..io.sources import default_rows_per_chunk
from ..numerics import kernel, reference
from ..numerics.agreement import identical, within_one_ulp, within_tolerance
from ..numerics.arith import BLOCK_COUNTS, Arith
from ..numerics.formats import FORMATS, Format
from ..numerics.policies import block_of, format_or_policy
from ..numerics.wide import wide_dtype
from . import softmax_bulk
from .engine import _classified, evaluate, relative_change
from .outcome import METHOD_FAILURES, STATUSES, Outcome
from .parallel import fork_pool, worker_count

__all__ = ["ROW", "Summary", "Cell", "Pair", "BlockTally", "summarize", "BITS_BINS", "file_amax"]

BITS_BINS = 66  # error_bits 0..64 by integer bins (a float64 value is off by at most ~64 bits), then inf, NaN
ROW = np.dtype([("row", np.int64), ("label", np.int64), ("value", np.float64), ("exact_hi", np.float64),
                ("exact_lo", np.float64), ("exact_scale", np.int64), ("exact_zero", np.bool_),
                ("status", np.uint8), ("rel_error", np.float64), ("ulps", np.float64), ("error_bits", np.float64)])
# a row whose columns may still be the bounded float64 tier's (run_chunk's ``defer``): its ulps window, 0 where final,
# and (where the window is not 0) the CRC-32 of its logits (_logits_crcs), which _settle checks when it reads them again
ROW_T = np.dtype(ROW.descr + [("window", np.float64), ("crc", np.uint32)])
TIER_CLASSES = 6  # float64's bounded reference tier on rows of at least this many classes (run_chunk's CPU, one
# process, tier on against off: 2 classes +25%, 4 about even, 6 -7%, 8 -8.5%, 10 -9%, 16 -17%; docs/reference/speed.md)
# summarize lets chunks defer (run_chunk's ``defer``) only on files of at least this many rows per kept worst row:
# _settle then re-reads and recomputes ~2.5 keep rows (the four methods' worst, their windows overlapping), at ~3.5x
# what deferring saves a row (longdouble reference ~70 ns a value against the tier's saving of ~20, measured on
# 128256 classes): on 80 rows (keep 10) deferring saved nothing (27 rows recomputed), on 800 ~23% of the CPU
DEFER_ROWS = 16
WIDE_ROW = 2**22  # classes above which chunks (of one row) run in this process, one at a time
# logits per chunk by default: large enough that a chunk's ~100 numpy calls per value pass are not mostly
# Python (a wide row's pairwise sum has 17 levels), small enough for its temporaries (float64 / longdouble,
# a few dozen of a chunk's size, kept for reuse: parallel.keep_freed_memory) to stay ~100 MiB a worker
CHUNK_VALUES = 2**19
# logits per chunk where every format's sums are the compiled kernel's (softmax_bulk.kernel_covers): it keeps no
# temporaries of a chunk's size but a few float32 columns and the tiled float64 reference's tiles, so a chunk can
# be larger and its fixed costs (~1.5 ms: the summaries, classification, pickling) fewer (128256 classes, bfloat16,
# CPU per value in one process: 4 rows 6.2 ns, 16 rows 5.5 ns; float32 8.1 and 6.9)
CHUNK_VALUES_KERNEL = 2**21
_STATUS_KEYS = np.array([sum(ord(c) << (21 * i) for i, c in enumerate(s[:3])) for s in STATUSES], dtype=np.int64)
_KEY_ORDER = np.argsort(_STATUS_KEYS)


def status_codes(status: np.ndarray) -> np.ndarray:
    """Indices into STATUSES of a string status column, from the first three characters
    (distinct for every status), without a pass per status or a sort of strings."""
    chars = np.ascontiguousarray(status, dtype="<U10").view(np.uint32).reshape(len(status), 10)[:, :3]
    keys = chars[:, 0].astype(np.int64) | (chars[:, 1].astype(np.int64) << 21) | (chars[:, 2].astype(np.int64) << 42)
    where = np.searchsorted(_STATUS_KEYS[_KEY_ORDER], keys)
    return _KEY_ORDER[np.minimum(where, len(STATUSES) - 1)].astype(np.uint8)
_FAILING = np.array([s in METHOD_FAILURES for s in STATUSES])
# the failing codes are those from this one up (STATUSES lists ok and range first): a comparison, not a table lookup
_FAILING_FROM = int(np.argmax(_FAILING))
assert _FAILING[_FAILING_FROM:].all() and not _FAILING[:_FAILING_FROM].any()


@dataclass
class Cell:
    """The summary of one method in one format: counts, histogram, worst and failing rows."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(STATUSES), np.int64))
    bits: np.ndarray = field(default_factory=lambda: np.zeros(BITS_BINS + 2, np.int64))
    worst: np.ndarray = field(default_factory=lambda: np.zeros(0, ROW))
    failing: np.ndarray = field(default_factory=lambda: np.zeros(0, ROW))
    first: np.ndarray = field(default_factory=lambda: np.zeros(0, ROW))  # the first row of each status seen

    def merge(self, other: "Cell", keep: int, cap: int) -> None:
        self.counts += other.counts
        self.bits += other.bits
        self.worst = _worst(_join(self.worst, other.worst), keep)
        if len(self.failing) < cap:
            self.failing = _join(self.failing, other.failing[: cap - len(self.failing)])
        seen = set(self.first["status"].tolist())
        new = other.first[[s not in seen for s in other.first["status"].tolist()]]
        if len(new):
            both = _join(self.first, new)
            self.first = both[np.argsort(both["status"], kind="stable")]

    @property
    def failures(self) -> int:
        return int(self.counts[_FAILING].sum())


@dataclass
class Pair:
    """An audited target beside one other method, in one format, over the rows: ``same`` (equal values,
    NaN = NaN, -0 = +0), ``near`` (within 1 ulp of the format, ``same`` rows included) and ``close``
    (within the tolerance, relative; see :mod:`stabilitylab.numerics.agreement`), ``target_only`` (the
    target fails, inaccurate or worse, and the method does not), ``method_only`` (the reverse), the first
    ``target_only`` rows (``examples``) and the first ``method_only`` row (``guard``, None if none)."""

    same: int = 0
    target_only: int = 0
    method_only: int = 0
    examples: list[int] = field(default_factory=list)
    guard: int | None = None
    near: int = 0
    close: int = 0

    EXAMPLES = 5

    def merge(self, other: "Pair") -> None:
        self.same += other.same
        self.near += other.near
        self.close += other.close
        self.target_only += other.target_only
        self.method_only += other.method_only
        self.examples = (self.examples + other.examples)[: self.EXAMPLES]
        if self.guard is None:
            self.guard = other.guard


@dataclass
class BlockTally:
    """A block-scaled storage format over the rows: ``counts`` (:data:`~stabilitylab.numerics.arith.BLOCK_COUNTS`:
    finite non-zero logits, those flushed to 0 by their block's scale, saturated elements, saturated block
    scales), ``changed`` rows whose exact loss the quantization alone changes by more than the tolerance
    (relative: |L(quantized) - L(given)| / |L(given)|, from the vectorized references, each within its
    bound) and the largest such change ``max_change`` (0.0 if none; inf where one loss is 0 or infinite
    and the other is not)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(BLOCK_COUNTS), np.int64))
    changed: int = 0
    max_change: float = 0.0

    def merge(self, other: "BlockTally") -> None:
        self.counts += other.counts
        self.changed += other.changed
        self.max_change = max(self.max_change, other.max_change)

    def count(self, name: str) -> int:
        return int(self.counts[BLOCK_COUNTS.index(name)])


@dataclass
class Summary:
    """Per format, per method: a :class:`Cell`; plus what was read and skipped."""

    formats: tuple[Format, ...]
    methods: tuple[str, ...]
    rows: int  # rows evaluated (not ignored)
    classes: int
    cells: dict[tuple[str, str], Cell]  # (format name, method name) -> cell
    reference_error: dict[str, float]  # format name -> bound on the references' relative error
    notes: list[str] = field(default_factory=list)
    worst_kept: int = 10
    cap: int = 100
    tolerance: float | None = None
    ftz: bool = False
    black_box: tuple[str, ...] = ()  # methods whose status follows the black-box rule (an audited target)
    versus: dict[tuple[str, str], Pair] = field(default_factory=dict)  # (format, other method) -> Pair
    blocks: dict[str, BlockTally] = field(default_factory=dict)  # block-scaled format name -> its tally
    tensor_amax: float | None = None  # NVFP4's tensor amax: the file's largest finite |logit| (None: no NVFP4)


def _worst_order(error_bits: np.ndarray, rows: np.ndarray, keep: int | None = None) -> np.ndarray:
    """Rows by decreasing error: NaN first, then inf, then the largest; ties by row index.
    With ``keep``, only the first ``keep`` (rows below the keep-th largest error are not sorted)."""
    rank = np.where(np.isnan(error_bits), np.inf, error_bits)
    candidates = np.arange(len(rank))
    if keep is not None and len(rank) > keep:
        kth = np.partition(rank, len(rank) - keep)[len(rank) - keep]
        candidates = np.flatnonzero(rank >= kth)
    order = np.lexsort((rows[candidates], -rank[candidates], ~np.isnan(error_bits[candidates])))
    return candidates[order][:keep]


def _worst(rows: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` worst of ``rows`` (a ROW array; a ROW_T array: :func:`_worst_candidates`)."""
    if rows.dtype == ROW_T and len(rows) > keep and rows["window"].any():
        return _worst_candidates(rows, keep)
    return rows[_worst_order(rows["error_bits"], rows["row"], keep)]


def _worst_candidates(rows: np.ndarray, keep: int) -> np.ndarray:
    """Every row of a ROW_T array that may be among its ``keep`` worst once the rows with a window are
    recomputed (``run_chunk``'s ``defer``): a row's true ``ulps`` is within ``[lo, hi] = [ulps (1 - 2**-50) - w,
    ulps (1 + 2**-50) + w]`` (w = 0: the row's own), so its error bits ``log2(ulps + 1)`` within
    ``[log2(lo + 1) - 2**-40, log2(hi + 1) + 2**-40]`` (np.log2's error is far below 2**-40).  A row whose upper
    end is below the keep-th largest lower end has ``keep`` rows of strictly larger error bits above it (ties by
    row index cannot matter): it is not among the ``keep`` worst, now or after any merge.  The rest, in
    :func:`_worst_order`'s order of the columns as they are (NaN and inf rows have no window)."""
    lo, hi = _error_bits_window(rows)
    kth = np.partition(lo, len(lo) - keep)[len(lo) - keep]
    sub = rows[~(hi < kth)]
    return sub[_worst_order(sub["error_bits"], sub["row"])]


def _error_bits_window(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per row of a ROW_T array: the error bits (NaN as inf) where the window is 0, else the ends of
    :func:`_worst_candidates`' interval."""
    w, u = rows["window"], rows["ulps"]
    with np.errstate(invalid="ignore"):
        rank = np.where(np.isnan(rows["error_bits"]), np.inf, rows["error_bits"])
        lo = np.where(w > 0, np.log2(np.maximum(u * (1 - 2.0**-50) - w, 0.0) + 1) - 2.0**-40, rank)
        hi = np.where(w > 0, np.log2(u * (1 + 2.0**-50) + w + 1) + 2.0**-40, rank)
    return lo, hi


def _logits_crcs(x: np.ndarray) -> np.ndarray:
    """Per row of the block ``x`` the CRC-32 of its logits' bytes, as float32 where ``x`` is float32, else as
    float64 (run_chunk's block: a source's ``block_dtype``): what :func:`_settle` compares with the rows it
    reads again (a file rewritten during the run would otherwise mix the pass's values with the new logits'
    reference).  ~0.06 ms per row of 60000 float32 logits: under 1% of a deferred chunk's CPU (170 x 60000,
    measured)."""
    x = np.ascontiguousarray(x, dtype=np.float32 if x.dtype == np.float32 else np.float64)
    return np.array([zlib.crc32(r) for r in x], dtype=np.uint32)


def _join(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a`` and ``b`` (ROW or ROW_T arrays) concatenated, as ROW_T where either is (window 0 where absent)."""
    if a.dtype == b.dtype:
        return np.concatenate([a, b])
    return np.concatenate([_as_rows(a, ROW_T), _as_rows(b, ROW_T)])


def _as_rows(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` (ROW or ROW_T) as ``dtype``: ROW's fields copied (a ROW_T's window fields 0 where ``a`` has none)."""
    if a.dtype == dtype:
        return a
    out = np.zeros(len(a), dtype)
    for name in ROW.names:
        out[name] = a[name]
    return out


def _columns(o: Outcome, rows: np.ndarray, labels: np.ndarray, codes: np.ndarray, pick=None) -> np.ndarray:
    sel = slice(None) if pick is None else pick
    if o.window is not None:
        out = np.empty(len(rows[sel]), ROW_T)
        out["window"] = o.window[sel]
    else:
        out = np.empty(len(rows[sel]), ROW)
    out["row"], out["label"] = rows[sel], labels[sel]
    out["value"], out["status"] = o.value[sel], codes[sel]
    out["exact_hi"], out["exact_lo"] = o.exact.hi[sel], o.exact.lo[sel]
    out["exact_scale"], out["exact_zero"] = o.exact.scale[sel], o.exact.zero[sel]
    out["rel_error"], out["ulps"], out["error_bits"] = o.rel_error[sel], o.ulps[sel], o.error_bits[sel]
    return out


def _cell(o: Outcome, rows: np.ndarray, labels: np.ndarray, keep: int, cap: int, everything: list | None) -> Cell:
    codes = status_codes(o.status) if o.codes is None else o.codes
    c = Cell()
    c.counts[:] = _status_counts(codes)
    e = o.error_bits
    c.bits[:] = _bits_histogram(e)
    worst = _worst_rows(e, rows, keep, c.bits)
    failing = _first_where(lambda block: block >= _FAILING_FROM, codes, min(cap, int(c.counts[_FAILING].sum())))
    # the first row of each status present, by status code
    first = np.array([_first_where(lambda block, k=k: block == k, codes, 1)[0] for k in np.flatnonzero(c.counts)],
                     dtype=np.intp)
    # (one ROW array of the three sets of rows, then split: a field-by-field gather costs ~1 us a field and call)
    both = _columns(o, rows, labels, codes, np.concatenate([worst, failing, first]))
    a, b = len(worst), len(worst) + len(failing)
    c.worst, c.failing, c.first = both[:a], both[a:b], both[b:]
    if everything is not None:
        everything.append(_columns(o, rows, labels, codes))
    return c


def _status_counts(codes: np.ndarray) -> np.ndarray:
    """``np.bincount(codes, minlength=len(STATUSES))``: the non-zero codes (not ``ok``) counted code by code,
    until they are all found (a ``bincount`` converts every uint8 code to an intp first)."""
    counts = np.zeros(len(STATUSES), np.int64)
    left = np.count_nonzero(codes)
    counts[0] = len(codes) - left
    for k in range(1, len(STATUSES)):
        if not left:
            break
        counts[k] = np.count_nonzero(codes == k)
        left -= counts[k]
    return counts


def _bits_histogram(e: np.ndarray) -> np.ndarray:
    """The error-bits histogram of a :class:`Cell` (``BITS_BINS + 2`` counts): bin b < 65 holds the rows with
    ``b <= e < b + 1``, bin 65 those with ``e >= 65``, then inf, then NaN.  (e = log2(ulps + 1) >= 0.)
    Where every e is finite (told by the max, NaN fails it) and below 16, from the counts of ``e >= b``
    (bin b = #(e >= b) - #(e >= b + 1): a handful of comparisons, no integer copy of e); below 65, by a
    ``bincount`` of e truncated to uint8 (its floor, e >= 0: a copy of one byte a row, not eight)."""
    out = np.zeros(BITS_BINS + 2, np.int64)
    top = e.max() if e.size else 0.0
    if top < 16:  # (False for NaN)
        above = [len(e)] + [np.count_nonzero(e >= b) for b in range(1, int(top) + 1)] + [0]
        out[:len(above) - 1] = -np.diff(above)
        return out
    if top < BITS_BINS - 1:  # (every e finite, in [0, 64]: its integer part, the bin, is exact in uint8)
        out[:BITS_BINS] = np.bincount(e.astype(np.uint8), minlength=BITS_BINS)
        return out
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(e)
        out[:BITS_BINS] = np.bincount(np.minimum(e[finite], BITS_BINS - 1).astype(np.int64), minlength=BITS_BINS)
    out[BITS_BINS] = int(np.isinf(e).sum())
    out[BITS_BINS + 1] = int(np.isnan(e).sum())
    return out


def _worst_rows(e: np.ndarray, rows: np.ndarray, keep: int, bits: np.ndarray) -> np.ndarray:
    """:func:`_worst_order` (``keep`` rows) of the rows whose error is at least the lowest integer ``b`` with
    at least ``keep`` rows at or above it (NaN and inf above every bin), read from their histogram ``bits``
    (:func:`_bits_histogram`).  The same rows in the same order: the keep-th largest error is then at least
    b, so every row ``_worst_order`` keeps is among them, and its order is total (ties by row)."""
    if len(e) <= keep:
        return _worst_order(e, rows, keep)
    at_or_above = np.cumsum(bits[BITS_BINS - 1::-1]) + bits[BITS_BINS] + bits[BITS_BINS + 1]  # bin 65, 64, ...
    if bits[BITS_BINS] + bits[BITS_BINS + 1] >= keep:
        b = np.inf
    else:
        b = BITS_BINS - 1 - int(np.argmax(at_or_above >= keep))
    with np.errstate(invalid="ignore"):
        sub = np.flatnonzero(~(e < b))  # (NaN too)
    return sub[_worst_order(e[sub], rows[sub], keep)]


def _first_where(test, codes: np.ndarray, want: int) -> np.ndarray:
    """The first ``want`` indices where ``test(codes[...])`` holds (at least ``want`` exist), scanning blocks of
    growing size (4096 values, then 4x larger): a status present early is found without a pass over all."""
    if want <= 0:
        return np.zeros(0, np.intp)
    hits = np.flatnonzero(test(codes[:4096]))  # (the usual case: found in the first block)
    if len(hits) >= want or len(codes) <= 4096:
        return hits[:want]
    found: list[np.ndarray] = []
    start, step, got = 0, 4096, 0
    while got < want and start < len(codes):
        hits = np.flatnonzero(test(codes[start:start + step]))[: want - got] + start
        found.append(hits)
        got += len(hits)
        start += step
        step *= 4
    return np.concatenate(found) if found else np.zeros(0, np.intp)


def _pairs(outcomes: dict[str, Outcome], target: str, rows: np.ndarray, fmt: Format,
           tolerance: float | None) -> dict[str, Pair]:
    """The target beside every other method on one chunk (see :class:`Pair`)."""
    t = outcomes[target]
    v = t.value
    target_fails = np.isin(t.status, METHOD_FAILURES)
    out = {}
    for method, o in outcomes.items():
        if method == target:
            continue
        method_fails = np.isin(o.status, METHOD_FAILURES)
        only, guards = np.flatnonzero(target_fails & ~method_fails), np.flatnonzero(method_fails & ~target_fails)
        same = int(np.count_nonzero(identical(o.value, v)))
        near = int(np.count_nonzero(within_one_ulp(fmt, o.value, v)))
        tol = fmt.default_tolerance if tolerance is None else tolerance
        close = int(np.count_nonzero(within_tolerance(tol, o.value, v)))
        out[method] = Pair(same, len(only), len(guards), rows[only[: Pair.EXAMPLES]].tolist(),
                           int(rows[guards[0]]) if len(guards) else None, near, close)
    return out


def _given_exact(experiment: Experiment, cases: Logits):
    """The exact loss of the logits as given (float32 or float64, not quantized), vectorized."""
    given = FORMATS["float32" if cases.logits.dtype == np.float32 else "float64"]
    inputs = experiment.load(Arith(FORMATS["float64"], len(cases), quiet=True), cases)
    return reference.fast(experiment.truth_of(experiment.methods[0]), inputs, wide_dtype(given))


def _tally(counts: np.ndarray, quantized, given, tol: float) -> BlockTally:
    change = relative_change(quantized, given)
    changed = change > tol
    return BlockTally(counts.sum(axis=1), int(np.count_nonzero(changed)),
                      float(change[changed].max()) if changed.any() else 0.0)


def _scan(x: np.ndarray, labelled: bool) -> tuple[bool, np.ndarray | None, np.ndarray | None]:
    """``(finite, rows_finite, top)`` of a chunk's logits: whether every logit is finite, which rows are (None
    where all are), and, for a file without labels (``labelled`` False), each row's argmax with NaN taken as -inf
    (``np.argmax(np.where(np.isnan(x), -np.inf, x), axis=1)``, its labels; None with labels).  float32 logits of a
    file without labels, or rows of more than :data:`softmax_bulk.SHORT` logits, in one pass by the compiled
    kernel where it is loaded (:func:`~stabilitylab.numerics.kernel.argmax_rows`: the same indices, and each row's
    finiteness on the way; 1.3 ms for 209,715 rows of 10 against 2.4 for numpy's transposed argmax and the block's
    min and max); otherwise the block's min and max tell (NaN fails both), row by row only where that fails, and
    the labels are :func:`_labels`'."""
    wanted = x.ndim == 2 and (not labelled or x.shape[1] > softmax_bulk.SHORT)
    got = kernel.argmax_rows(x) if wanted else None
    if got is not None:
        top, rows_finite = got
        finite = bool(rows_finite.all())
        return finite, None if finite else rows_finite, None if labelled else top
    finite = not x.size or bool(x.min() > -np.inf) and bool(x.max() < np.inf)
    return finite, None if finite else np.isfinite(x).all(axis=1), None if labelled else _labels(x, finite)


def _labels(x: np.ndarray, finite: bool) -> np.ndarray:
    """Each row's argmax, NaN taken as -inf (``np.argmax(np.where(np.isnan(x), -np.inf, x), axis=1)``), by numpy
    (:func:`_scan` takes the compiled kernel's where it is loaded): where every logit is ``finite``, of x itself
    (no NaN to replace), and for short rows by :func:`softmax_bulk.max_argmax_short` on the transposed block (the
    first maximum: the same indices)."""
    if finite and 1 < x.shape[1] <= softmax_bulk.SHORT:  # (~8 ns a row of 10)
        return softmax_bulk.max_argmax_short(np.ascontiguousarray(x.T))[1]
    return np.argmax(x if finite else np.where(np.isnan(x), -np.inf, x), axis=1)


def run_chunk(formats: tuple[Format, ...], first_row: int, logits: np.ndarray, labels: np.ndarray,
              keep_rows: np.ndarray, *, tolerance, ftz: bool, keep: int, cap: int, all_rows: bool,
              experiment: Experiment = SOFTMAX_CE, versus: str | None = None, tensor_amax: float | None = None,
              defer: bool = False):
    """Every method in every format on one chunk: ({(format, method): Cell}, rows or None,
    (count, first rows) of rows with non-finite logits, {(format, method): Pair}, {format: BlockTally}).
    ``tensor_amax``: NVFP4's tensor amax (the file's, :func:`file_amax`).

    Without ``all_rows``, only the cells are read, so float64's fused path may take its reference from the
    bounded float64 tier where that changes none of them (``softmax_bulk.evaluate_fused``'s ``printed``; on
    rows of at least :data:`TIER_CLASSES` classes).  With
    ``defer`` too (``summarize``, which then calls :func:`_settle`), a chunk of at most ``keep`` rows (whose
    rows are all printed) keeps the tier in its printed rows as well: its cells' rows are ROW_T arrays
    whose ``window`` marks the rows to recompute at the end."""
    idx = np.flatnonzero(keep_rows)
    rows = first_row + idx
    # float32 logits stay float32 (Arith.load rounds them from float64 exactly the same): a wide row
    # is not held twice more in float64 (issue #18); all rows kept: no copy of the block
    kept = logits if len(idx) == len(logits) else logits[idx]
    x = np.ascontiguousarray(kept, dtype=np.float32 if kept.dtype == np.float32 and experiment is SOFTMAX_CE
                             else np.float64)
    finite, rows_finite, top = _scan(x, labels is not None)
    odd = rows[:0] if finite else rows[~rows_finite]
    nonfinite = (len(odd), odd[:5])
    y = labels[idx] if labels is not None else top
    cells: dict[tuple[str, str], Cell] = {}
    columns: dict[tuple[str, str], list] | None = {} if all_rows else None
    pairs: dict[tuple[str, str], Pair] = {}
    blocks: dict[str, BlockTally] = {}
    if not len(idx):
        return cells, columns, nonfinite, pairs, blocks
    cases = Logits(ParamNames("row", rows), x, y, np.full(len(idx), x.shape[1], dtype=np.int64))
    given = None
    crcs: dict[int, int] = {}  # row -> the CRC-32 of its logits, each row's computed once (it is kept in many cells)
    for fmt in formats:
        counts = None if fmt.block is None else np.zeros((len(BLOCK_COUNTS), len(idx)), np.int64)
        if experiment is SOFTMAX_CE and softmax_bulk.supported(fmt, ftz, x.shape[1]):
            # (every row's columns are read with all_rows: then none of them on the bounded float64 tier)
            tier = not all_rows and x.shape[1] >= TIER_CLASSES
            outcomes = softmax_bulk.evaluate_fused(fmt, cases, tolerance=tolerance,
                                                   printed=(keep, cap) if tier else None,
                                                   defer=tier and defer and len(idx) <= keep)
        else:
            outcomes = evaluate(experiment, fmt, cases, tolerance=tolerance, ftz=ftz, fast_reference=True, fast=True,
                                tensor_amax=tensor_amax if block_of(fmt) is not None and block_of(fmt).tensor_scale
                                else None, block_counts=counts)
        if counts is not None:
            given = _given_exact(experiment, cases) if given is None else given
            tol = fmt.default_tolerance if tolerance is None else tolerance
            blocks[fmt.name] = _tally(counts, next(iter(outcomes.values())).exact, given, tol)
        for method, o in outcomes.items():
            everything = [] if all_rows else None
            cells[fmt.name, method] = _cell(o, rows, y, keep, cap, everything)
            if o.window is not None:  # the CRCs of the rows _settle reads again (those kept with a window)
                for name in ("worst", "failing", "first"):
                    a = getattr(cells[fmt.name, method], name)
                    held = np.flatnonzero(a["window"] > 0)
                    new = [r for r in np.unique(a["row"][held]).tolist() if r not in crcs]
                    crcs.update(zip(new, _logits_crcs(x[np.searchsorted(rows, new)]).tolist()))
                    crc = np.zeros(len(a), a.dtype["crc"])
                    crc[held] = [crcs[r] for r in a["row"][held].tolist()]
                    a["crc"] = crc
            if columns is not None:
                columns[fmt.name, method] = everything[0]
        if versus is not None:
            for method, pair in _pairs(outcomes, versus, rows, fmt, tolerance).items():
                pairs[fmt.name, method] = pair
    return cells, columns, nonfinite, pairs, blocks


def file_amax(source, rows_per_chunk: int) -> float:
    """The largest finite |logit| of the whole file (every row), in one streaming pass: NVFP4's tensor amax."""
    top = 0.0
    for _, block in source.chunks(rows_per_chunk):
        a = np.abs(np.asarray(block))
        finite = a[np.isfinite(a)]
        if finite.size:
            top = max(top, float(finite.max()))
    return top


def _chunks_in_order(source, labels, keep_rows, rows_per_chunk) -> Iterator[tuple[int, np.ndarray, np.ndarray,
                                                                                     np.ndarray]]:
    for first, block in source.chunks(rows_per_chunk):
        stop = first + len(block)
        yield first, block, None if labels is None else labels[first:stop], keep_rows[first:stop]


def summarize(source, labels: np.ndarray, keep_rows: np.ndarray, formats: tuple[Format, ...], *,
              tolerance: float | None = None, ftz: bool = False, keep: int = 10, cap: int = 100,
              rows_per_chunk: int | None = None, workers: int | None = None,
              on_rows: Callable[[dict], None] | None = None, experiment: Experiment = SOFTMAX_CE,
              versus: str | None = None) -> Summary:
    """Summarize softmax_ce over every kept row of ``source`` (a :class:`sources.LogitsSource`).

    ``labels`` (rows,) int64 (None: each row's argmax) and ``keep_rows`` (rows,) bool are
    whole-file arrays (9 bytes per row); ``on_rows``, if given, receives each chunk's per-row columns in row order
    ({(format, method): ROW array}).  ``workers``: processes (default: :func:`parallel.worker_count`;
    1 runs in this process, as do inputs of under 2**20 values, and always when a method is a black box).
    ``experiment``: softmax_ce, or softmax_ce whose methods include an audited target (named by
    ``versus``: the target beside each other method, :attr:`Summary.versus`).
    """
    methods = experiment.method_names
    black_box = tuple(m.name for m in experiment.methods if m.black_box)
    if rows_per_chunk is None:
        # (but not with float64 where a chunk of CHUNK_VALUES logits holds at most `keep` rows: such chunks defer the
        # longdouble reference of their printed rows (run_chunk), larger ones could not)
        defers = default_rows_per_chunk(source.classes, CHUNK_VALUES) <= max(keep, 1)
        by_kernel = experiment is SOFTMAX_CE and formats and all(
            softmax_bulk.kernel_covers(f, ftz, getattr(source, "block_dtype", np.float64))
            and not (f.name == "float64" and defers) for f in formats)
        rows_per_chunk = default_rows_per_chunk(source.classes, CHUNK_VALUES_KERNEL if by_kernel else CHUNK_VALUES)
        for f in formats if by_kernel else ():
            softmax_bulk.warm(f)  # (before the workers fork: they share the tables)
    if workers is None:
        workers = worker_count()
    if source.rows * source.classes < 2**20 or black_box or source.rows <= rows_per_chunk or source.classes > WIDE_ROW:
        workers = 1  # (one chunk, or rows so wide that each worker would hold several copies of one: issue #18)
    cells = {(f.name, m): Cell() for f in formats for m in methods}
    pairs = {(f.name, m): Pair() for f in formats for m in methods if versus is not None and m != versus}
    kwargs = dict(tolerance=tolerance, ftz=ftz, keep=keep, cap=cap, all_rows=on_rows is not None, versus=versus)
    if experiment is not SOFTMAX_CE:  # (only then: worker processes receive the kwargs pickled)
        kwargs["experiment"] = experiment
    elif on_rows is None and int(keep_rows.sum()) >= DEFER_ROWS * max(keep, 1):
        kwargs["defer"] = True  # (the cells' deferred rows recomputed below: _settle)
    tensor_amax = None
    if any(block_of(f) is not None and block_of(f).tensor_scale for f in formats):
        tensor_amax = kwargs["tensor_amax"] = file_amax(source, rows_per_chunk)
    blocks = {f.name: BlockTally() for f in formats if f.block is not None}

    nonfinite = [0, []]

    def absorb(result) -> None:
        chunk_cells, columns, (count, examples), chunk_pairs, chunk_blocks = result
        nonfinite[0] += count
        nonfinite[1] = (nonfinite[1] + examples.tolist())[:5]
        for key, cell in chunk_cells.items():
            cells[key].merge(cell, keep, cap)
        for key, pair in chunk_pairs.items():
            pairs[key].merge(pair)
        for key, tally in chunk_blocks.items():
            blocks[key].merge(tally)
        if on_rows is not None and columns:
            on_rows(columns)

    global _SOURCE
    reading = workers > 1 and getattr(source, "readable_anywhere", False)
    _SOURCE = source if reading else None  # (before the workers fork: they inherit it)
    try:
        pool = fork_pool(workers)
        if pool is None:
            for first, block, y, k in _chunks_in_order(source, labels, keep_rows, rows_per_chunk):
                absorb(run_chunk(formats, first, block, y, k, **kwargs))
            _settle(cells, source, labels, formats, tolerance, keep)
        else:
            with pool:  # (the workers also share the settling's reference: idle by then)
                if reading:
                    _parallel_reading(pool, source, labels, keep_rows, rows_per_chunk, formats, kwargs, workers,
                                      absorb)
                else:
                    _parallel(pool, _chunks_in_order(source, labels, keep_rows, rows_per_chunk), formats, kwargs,
                              workers, absorb)
                _settle(cells, source, labels, formats, tolerance, keep, pool, workers)
    finally:
        _SOURCE = None
    bounds = {f.name: reference.fast_error(wide_dtype(f), source.classes) for f in formats}
    notes = []
    if nonfinite[0]:
        shown = ", ".join(f"row={i}" for i in nonfinite[1]) + (" ..." if nonfinite[0] > 5 else "")
        notes.append(f"{nonfinite[0]:,} row(s) with non-finite logits ({shown}): allowed; their exact loss is the "
                     "limit where one exists, else NaN")
    return Summary(tuple(formats), methods, int(keep_rows.sum()), source.classes, cells, bounds, notes,
                   worst_kept=keep, cap=cap, tolerance=tolerance, ftz=ftz, black_box=black_box, versus=pairs,
                   blocks=blocks, tensor_amax=tensor_amax)


def _settle(cells: dict[tuple[str, str], Cell], source, labels, formats, tolerance, keep: int, pool=None,
            workers: int = 1) -> None:
    """The cells' rows whose columns are still the bounded float64 tier's (``window > 0``: ``run_chunk``'s
    ``defer``) recomputed on the longdouble reference, as a chunk of those rows alone would (the fused path,
    ``engine._classified`` without the tier: the reference is per row, and those rows had no event), their
    logits read again from ``source``; then the ``keep`` worst of each cell, and every array back to ROW.

    The statuses (so the failing and first rows) were final already: those rows are recomputed in the first
    round.  A cell's worst holds every row that may be among its ``keep`` worst (:func:`_worst_candidates`);
    each round recomputes, per cell, the rows with a window among its ``keep`` of largest upper end (all its
    rows with a window where there is none there), then prunes again with the recomputed values, until no
    candidate has a window: the ``keep`` worst are then those of the longdouble reference.  On a wide file
    ~40 rows of 800 (the four methods' worst, the first row of each status, failing rows), in two or three
    readings of the source.  With a ``pool`` of ``workers`` processes (the chunks' own, idle by then), each
    reading's reference is computed on up to ``workers`` parts of its rows at once (:func:`_settling_reference`)."""
    methods = {m.name: m for m in SOFTMAX_CE.methods}
    for fmt in formats:
        mine = [(key[1], cell) for key, cell in cells.items() if key[0] == fmt.name]
        tol = fmt.default_tolerance if tolerance is None else tolerance
        done: dict[int, int] = {}  # row -> index into the recomputed rows (xl, y, exact)
        crc: dict[int, int] = {}  # row -> the CRC-32 of its logits as the pass read them (_logits_crcs)
        got: list = []
        while True:
            for method, cell in mine:
                if got:
                    for name in ("worst", "failing", "first"):
                        setattr(cell, name, _recomputed(getattr(cell, name), method, methods, fmt, tolerance, tol,
                                                        done, got))
                cell.worst = _worst(cell.worst, keep)
            want = set()
            for _, cell in mine:
                for a in (cell.failing, cell.first, cell.worst):
                    if a.dtype == ROW_T:
                        w = a["window"] > 0
                        crc.update(zip(a["row"][w].tolist(), a["crc"][w].tolist()))
                for a in (cell.failing, cell.first):
                    if a.dtype == ROW_T:
                        want.update(a["row"][a["window"] > 0].tolist())
                a = cell.worst
                if a.dtype == ROW_T and a["window"].any():
                    top = np.argsort(-_error_bits_window(a)[1], kind="stable")[:keep]
                    pick = top[a["window"][top] > 0]
                    want.update(a["row"][pick if pick.size else np.flatnonzero(a["window"] > 0)].tolist())
            want.difference_update(done)
            if not want:
                break
            rows = np.array(sorted(want), dtype=np.int64)
            x = source.take(rows)
            xl = np.asarray(x, dtype=np.float64)  # (float64: the fused path's stored logits, exact)
            for row, now in zip(rows.tolist(), _logits_crcs(x).tolist()):
                if now != crc[row]:
                    raise InputError(f"the logits file {source.path} changed during the run (row {row} read again "
                                     "at the end differs from its first reading); run again once it is no longer "
                                     "being written", "--logits")
            y = labels[rows] if labels is not None else _scan(x, False)[2]
            exact = _settling_reference(fmt, xl, y, pool, workers)
            for i, row in enumerate(rows.tolist()):
                done[row] = len(done)
                got.append((xl[i], y[i], exact.take([i])))
        for _, cell in mine:
            cell.worst = _as_rows(_worst(cell.worst, keep), ROW)
            cell.failing, cell.first = _as_rows(cell.failing, ROW), _as_rows(cell.first, ROW)


def _settling_reference(fmt: Format, xl: np.ndarray, y: np.ndarray, pool, workers: int) -> reference.Exact:
    """``reference.fast`` of softmax_ce on rows ``xl`` (float64) with labels ``y`` in ``fmt``'s wide type
    (longdouble for float64), on ``pool`` in up to ``workers`` parts of consecutive rows where there is a pool and
    more than one row.  The same values: each row's reference is its own, whichever rows are computed with it
    (tests/test_streaming_deferred.py compares the parts with the whole)."""
    parts = min(workers, len(xl)) if pool is not None else 1
    if parts <= 1:
        return reference.Exact(*_reference_rows(fmt.name, xl, y))
    cuts = np.linspace(0, len(xl), parts + 1).round().astype(int)
    futures = [pool.submit(_reference_rows, fmt.name, xl[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]
    got = [f.result() for f in futures]
    return reference.Exact(*(np.concatenate([g[q] for g in got]) for q in range(4)))


def _reference_rows(name: str, xl: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """(hi, lo, scale, zero) of :func:`_settling_reference`'s reference on these rows (in a worker: the format
    sent by name, the result as plain arrays)."""
    e = reference.fast(SOFTMAX_CE.truth, Loaded(xl, y), wide_dtype(format_or_policy(name)))
    return e.hi, e.lo, e.scale, e.zero


def _recomputed(a: np.ndarray, method: str, methods, fmt: Format, tolerance, tol: float, done: dict,
                got: list) -> np.ndarray:
    """``a`` (ROW or ROW_T) with the columns of its rows with a window whose reference :func:`_settle` has
    computed recomputed (window 0): ``engine._classified`` of the method's values on those rows alone."""
    if a.dtype != ROW_T:
        return a
    sel = np.flatnonzero((a["window"] > 0) & np.isin(a["row"], np.fromiter(done, np.int64, len(done))))
    if not sel.size:
        return a
    at = [done[r] for r in a["row"][sel].tolist()]
    xl, y = np.stack([got[i][0] for i in at]), np.array([got[i][1] for i in at])
    hi, lo, scale, zero = (np.concatenate([getattr(got[i][2], f) for i in at]) for f in ("hi", "lo", "scale", "zero"))
    run = (methods[method], Arith(fmt, len(sel)), a["value"][sel])  # (no event: the tier is on ordinary rows only)
    o = _classified(SOFTMAX_CE.truth, [run], Loaded(xl, y), fmt, tolerance, tol, True, True,
                    exact=reference.Exact(hi, lo, scale, zero), eventless=True)[0]
    fresh = _columns(o, a["row"][sel], a["label"][sel], status_codes(o.status) if o.codes is None else o.codes)
    out = a.copy()
    for column in ROW.names:
        out[column][sel] = fresh[column]
    out["window"][sel] = 0.0
    return out


def _parallel(pool, chunks, formats, kwargs, workers: int, absorb) -> None:
    """Run chunks on ``pool`` (``workers`` forked processes, in the caller's ``with`` block), at most 2 per worker
    in flight, absorbing results in row order."""
    from collections import deque

    names = tuple(f.name for f in formats)
    pending: deque = deque()
    for first, block, y, k in chunks:
        pending.append(pool.submit(_run_chunk_named, names, first, np.array(block),
                                   None if y is None else np.array(y), np.array(k), **kwargs))
        while len(pending) >= 2 * workers:
            absorb(pending.popleft().result())
    while pending:
        absorb(pending.popleft().result())


_SOURCE = None  # the source forked workers read their chunks from (summarize, where it is readable_anywhere)


def _parallel_reading(pool, source, labels, keep_rows, rows_per_chunk: int, formats, kwargs, workers: int,
                      absorb) -> None:
    """:func:`_parallel` where the workers read their chunks from the file themselves (``_SOURCE``, inherited
    when they forked): only row numbers, labels and kept rows are sent.  A chunk whose reading failed in
    its worker is read again here, which raises what reading it in order would (the same message, the same
    option named); should it then succeed, the chunk runs here."""
    from collections import deque

    names = tuple(f.name for f in formats)
    pending: deque = deque()

    def finish() -> None:
        first, n, y, k, future = pending.popleft()
        result = future.result()
        if result is None:
            result = run_chunk(formats, first, source.read(first, first + n), y, k, **kwargs)
        absorb(result)

    for first in range(0, source.rows, rows_per_chunk):
        n = min(rows_per_chunk, source.rows - first)
        y = None if labels is None else np.array(labels[first:first + n])
        k = np.array(keep_rows[first:first + n])
        pending.append((first, n, y, k, pool.submit(_run_chunk_reading, names, first, n, y, k, **kwargs)))
        while len(pending) >= 2 * workers:
            finish()
    while pending:
        finish()


def _run_chunk_reading(names: tuple[str, ...], first: int, n: int, *args, **kwargs):
    """:func:`_run_chunk_named` on rows ``first:first + n`` read in the worker from ``_SOURCE``; None where
    reading them failed (the parent reads them again and raises)."""
    try:
        block = _SOURCE.read(first, first + n)
    except (InputError, MemoryError):
        return None
    return _run_chunk_named(names, first, block, *args, **kwargs)


def _run_chunk_named(names: tuple[str, ...], *args, **kwargs):
    """:func:`run_chunk` in a worker, the formats sent by name (a Format whose ``finfo`` is cached
    does not survive pickling)."""
    return run_chunk(tuple(format_or_policy(n) for n in names), *args, **kwargs)
