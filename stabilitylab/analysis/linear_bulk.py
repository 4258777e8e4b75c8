"""linear_ce on a user's real-size problem (``compare -e linear_ce --problem PATH``): every loss, every
``p_y - 1`` and every gradient entry, judged by the one status rule and summarized per row.

**The fused dot-product model.**  The small engine (:mod:`stabilitylab.experiments.linear_ce`) simulates
each logit ``x = sum_j h_j w_j`` operation by operation (products and a pairwise tree through
:class:`~stabilitylab.numerics.arith.Arith`): N V D held values, small problems only.  This module models a
*fused* dot product instead: the float64 matmul of the storage-rounded inputs, rounded ONCE to the policy's
compute format.  For inputs of at most 26 significant bits (every format up to float32) each product is
exact in float64, and any float64 summation of the D products (BLAS order, blocking, FMA) is within
``gamma_D sum_j |h_j w_j| <= gamma_D ||h_n||_2 ||w_v||_2`` of the exact dot (the standard bound, then
Cauchy-Schwarz), ``gamma_k = k u / (1 - k u)``, ``u = 2**-53``; the model value is that float64 sum
rounded to the compute format, which may differ from the correctly rounded dot where the exact dot lies
within that bound of a rounding boundary.  It is a *model*: a GEMM tile that accumulates in float32
differs from it by its own roundings.  The same model gives the matmuls of the gradients (``g @ W``,
``g^T @ h`` and each token chunk's ``g_chunk^T @ h_chunk``): the float64 matmul of the compute-format
``g`` rounded once.  Method names carry the prefix ``fused:`` so that they are not mistaken for the small
engine's op-by-op methods.  Everything after the dot products is the small engine's sequence of
operations, each rounded (``+ - * /`` in the held dtype and rounded to the format, ``exp`` / ``log``
correctly rounded by :mod:`~stabilitylab.numerics.crmath`, sums as the same pairwise tree): where the dot
products are exact in the compute format (D = 1, say) the values equal the small engine's bit for bit.

**Methods** (per policy ``-d``; "compute" c, "accumulate" a, "storage" s, "output" o of the policy; every
result delivered in o):

* ``fused:materialized_log_softmax`` per token ``log(sum exp(z)) - z_y``, z = x - max x;
* ``fused:materialized_naive`` per token ``-log(exp(x_y) / sum exp(x))``;
* ``fused:vocab_chunks_online`` per token: running max and running sum over blocks of ``vocab_chunk``
  columns (the small engine's :func:`~stabilitylab.experiments.linear_ce.online_lse`), minus x_y;
* ``fused:grad_logit_true`` ``p_y - 1`` in c; ``fused:grad_logit_true_storage`` with p_y written to s
  (Liger-Kernel #1329);
* ``fused:grad_hidden`` every entry of ``dL/dH = g @ W``, g = (p - onehot) / N in c (mean reduction);
* ``fused:grad_weight`` every entry of ``dL/dW = g^T @ h`` in one pass; ``..._chunks_storage`` the N tokens
  in K chunks of ceil(N/K), each chunk's partial rounded to c and added to a buffer of the storage format
  (Liger-Kernel #512); ``..._chunks_fp32`` the same buffer in float32, written to s at the end.  The one
  pass is the float64 sum of the same K partials, rounded once.

**Exact reference** (float64, from the same float64 logits, each number with a stated bound): per token,
m = max x, e_v = exp(x_v - m), T = sum_{v != y} e_v, s = T / e_y; the loss ``log1p(s)`` (``(m - x_y) +
log(e_y + T)`` where e_y < 2**-900), ``p_y - 1 = -s / (1 + s)`` (no cancellation), ``p_v = e_v / (e_y + T)``;
the gradients are float64 matmuls of the reference g.  Relative bound of row n's loss, p_y - 1 and every
p_v (libm's exp / log / log1p within 1 ulp assumed): ``rho_n = 2 (expm1(2 delta_n + (A_n + 2) u) + gamma_V)
+ V 2**-1074 + 4 u``, ``delta_n = gamma_D ||h_n|| max_v ||w_v||`` (the logits' absolute bound), A_n = min(max_v
(m - x_v), 746) (the rounding of the exponent's argument; beyond 746 a term underflows, which the
V 2**-1074 covers); the loss adds 2u.  Absolute bound of each gradient entry (Cauchy-Schwarz on the
matmul's standard bound): ``dL/dH[n, j]``: ``(r_n + gamma_V) ||g_n|| ||W_{:,j}|| (1 + 4 gamma_M)`` with
r_n = (rho_n + 2u) / (1 - rho_n - 2u), M = max(N, V, D); ``dL/dW[v, j]``: ``(r + gamma_N) ||g_{:,v}||
||h_{:,j}|| (1 + 4 gamma_M)`` with r = max_n r_n.  An entry whose bound is not below 2**-8 of half an ulp
of the format at the reference is *flagged*: its status and error bits are measured against a value
that may be that far off (counted as ``bound`` in every output).

**Statuses** by the one rule (:func:`~stabilitylab.analysis.outcome.classify`) with the reference as the
exact value; the common case (a finite non-zero value, a reference within the format's normal range, a
relative error within the tolerance: status ``ok`` whatever the rounding) is decided in bulk, the rest
goes through classify itself.  IEEE events recorded: an ``exp`` that overflows (naive) and a ``log`` of 0
(a pole); a lost gradient entry's cause is read off its value (inf: overflow; NaN: nan).

**Passes and memory** (N = 1024, D = 1024, V = 128256: the weight held in its storage format, 263 MB in
bfloat16): pass A over blocks of ``TOKEN_BLOCK`` (64) tokens holding their full logits rows (float64; the
weight converted to float64 a vocabulary sub-block at a time) computes max, log-sum-exp, losses and p_y - 1
per policy and the reference; pass B over blocks of ``VOCAB_BLOCK`` (512) vocabulary rows recomputes the
block's logits, g per policy from pass A's lse, the weight-gradient block and its K chunk partials,
accumulates dL/dH in float64, summarizes every weight row and drops the block.  Neither the (N, V)
logits, nor a float64 (V, D) weight, nor a full (V, D) gradient is ever held.  Float64 GEMMs of size
N x D x V: 4 shared (logits twice, the two reference gradients) + 2 per policy.  Several policies run side by
side in ``THREADS`` threads (each writes only its own cells and accumulators: the values do not depend on it).
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..io.problem import Problem
from ..numerics import crmath
from ..numerics.arith import Arith
from ..numerics.formats import FORMATS, Format
from ..numerics.reference import Exact
from .outcome import STATUSES, classify
from .streaming import BITS_BINS, status_codes

__all__ = ["run", "LinearBulk", "Cell", "METHODS", "KINDS", "DEFAULT_CHUNKS", "DEFAULT_VOCAB_CHUNK",
           "BOUND_FRACTION", "HIST_STEPS", "supported", "round_to"]

U = 2.0**-53
DEFAULT_CHUNKS = 8
DEFAULT_VOCAB_CHUNK = 4096  # columns per block of the online log-sum-exp
TOKEN_BLOCK = 64  # tokens per block of pass A (their full logits rows: 64 V float64)
THREADS = 2  # policies run side by side in threads (pass A and pass B)
WEIGHT_BLOCK = 2048  # vocabulary rows per conversion of the weight to float64 (reading, pass A)
VOCAB_BLOCK = 512  # vocabulary rows per block of pass B (its (N, 512) and (512, D) arrays stay in cache)
BOUND_FRACTION = 2.0**-8  # a reference is flagged when its bound is not below this fraction of half an ulp
HIST_STEPS = 16  # error-bits histogram bins per bit (the median is read to 1/16 bit)
WITNESSES = 5

METHODS: tuple[tuple[str, str, str], ...] = (  # name, kind, formula
    ("fused:materialized_log_softmax", "loss", "log sum_v exp(x_v - m) - (x_y - m), x the fused dot products"),
    ("fused:materialized_naive", "loss", "-log(exp(x_y) / sum_v exp(x_v))"),
    ("fused:vocab_chunks_online", "loss", "online lse over vocabulary blocks - x_y"),
    ("fused:grad_logit_true", "p_y - 1", "p_y - 1 in the compute format"),
    ("fused:grad_logit_true_storage", "p_y - 1", "p_y written to the storage format, then p_y - 1 there"),
    ("fused:grad_hidden", "grad_hidden", "dL/dH = g @ W, g = (p - onehot) / N"),
    ("fused:grad_weight", "grad_weight", "dL/dW = g^T @ h, one pass (float64 sum of the K chunk partials)"),
    ("fused:grad_weight_chunks_storage", "grad_weight", "K token-chunk partials added in a storage-format buffer"),
    ("fused:grad_weight_chunks_fp32", "grad_weight", "K token-chunk partials added in a float32 buffer"),
)
KINDS = {"loss": "token", "p_y - 1": "token", "grad_hidden": "token", "grad_weight": "weight row"}
_N_STATUS = len(STATUSES)
_INACCURATE = STATUSES.index("inaccurate")


def _gamma(k: int) -> float:
    return k * U / (1 - k * U)


# ------------------------------------------------------------------ rounding and operations
def supported(fmt: Format) -> str | None:
    """Why ``fmt`` cannot run on --problem (None: it can): plain IEEE-like formats and their policies only."""
    parts = (fmt.storage_format, fmt.compute_format, fmt.accumulate_format, fmt.output_format)
    if getattr(fmt, "block", None):
        return "block-scaled storage"
    for f in parts:
        if f.held_twin is not f:
            return f"{f.name} (a saturating format)"
        if f.precision not in (24, 53) and f.precision > 11:
            return f"{f.name}"
    return None


def round_to(fmt: Format, x, held) -> np.ndarray:
    """``x`` (float64, or float32 values that are results of one + - * / on values of a format of p <= 11
    bits, or values of a wider format) correctly rounded to ``fmt``, held in ``held``.

    float64 -> a format of p <= 11 bits: numpy's float32 conversion (correct), then the format's rounding
    of that float32 (:meth:`Format.round32`); the two roundings differ from one correct rounding only
    where the float32 lies exactly halfway between two values of the format and is inexact, which needs its
    lowest 23 - p bits zero: those few values are rounded again from float64 by :meth:`Format.round`."""
    x = np.asarray(x)
    with np.errstate(all="ignore"):
        if fmt.precision == 53:
            return x.astype(np.float64, copy=False)
        if fmt.precision == 24:
            return x.astype(np.float32, copy=False).astype(held, copy=False)
        if x.dtype != np.float64:
            return fmt.round32(x.astype(np.float32, copy=False)).astype(held, copy=False)
        y = x.astype(np.float32)
        out = fmt.round32(y)
        low = np.uint32((1 << (23 - fmt.precision)) - 1)
        suspect = np.flatnonzero((y.view(np.uint32) & low) == 0)
        if len(suspect):
            flat, xf = out.reshape(-1), x.reshape(-1)
            suspect = suspect[y.reshape(-1)[suspect] != xf[suspect]]
            if len(suspect):
                flat[suspect] = fmt.round(xf[suspect], np.float32)
        return out.astype(held, copy=False)


class _Ops:
    """One policy's operations on held values (float32 when every format of the policy fits, else float64),
    each result rounded as :class:`~stabilitylab.numerics.arith.Arith` rounds it."""

    def __init__(self, fmt: Format):
        self.fmt = fmt
        self.s, self.c = fmt.storage_format, fmt.compute_format
        self.a, self.o = fmt.accumulate_format, fmt.output_format
        self.held = np.dtype(np.float32 if max(f.precision for f in (self.s, self.c, self.a, self.o)) <= 24
                             else np.float64)
        self.buffer32 = self.c if self.c.precision >= 24 else FORMATS["float32"]

    def r(self, f: Format, x) -> np.ndarray:
        return round_to(f, x, self.held)

    def c_(self, x) -> np.ndarray:
        return self.r(self.c, x)

    def exp(self, x) -> np.ndarray:
        return self._crmath(crmath.exp, x)

    def log(self, x) -> np.ndarray:
        return self._crmath(crmath.log, x)

    def _crmath(self, f, x) -> np.ndarray:
        with np.errstate(all="ignore"):
            if self.c.precision <= 24:
                return f(self.c, np.asarray(x, dtype=np.float32)).astype(self.held, copy=False)
            return f(self.c, np.asarray(x, dtype=np.float64))

    def tree(self, x: np.ndarray) -> np.ndarray:
        """Arith.tree(add, x, 0) along the last axis: neighbours paired level by level (an odd last element
        passes up), each addition rounded to the accumulation format, the sum then rounded to compute."""
        with np.errstate(all="ignore"):
            while x.shape[-1] > 1:
                k = x.shape[-1] // 2
                pairs = self.r(self.a, x[..., 0:2 * k:2] + x[..., 1:2 * k:2])
                x = np.concatenate([pairs, x[..., 2 * k:] + 0.0], axis=-1) if x.shape[-1] % 2 else pairs
            out = x[..., 0]
        return self.c_(out) if self.a is not self.c else out


# ------------------------------------------------------------------ judging entries
def _judge(fmt: Format, value: np.ndarray, ref: np.ndarray, bound: np.ndarray, tol: float,
           overflow: np.ndarray | None = None, pole: np.ndarray | None = None):
    """Status codes (indices into STATUSES), error bits (float32) and flags of entries (any shape) against
    float64 references with absolute bounds ``bound``.  The rule is classify's; the common case is decided
    here in bulk, as classify decides it: a finite non-zero value with tiny <= |ref| <= max is ``ok`` if it
    is the reference correctly rounded or its relative error is within the tolerance, else ``inaccurate``
    (no event, no input lost: steps 1 and 3 of the rule); every other entry goes through classify."""
    v = np.asarray(value, dtype=np.float64)
    shape = v.shape
    v, ref, bound = v.reshape(-1), np.asarray(ref, np.float64).reshape(-1), np.asarray(bound, np.float64).reshape(-1)
    with np.errstate(all="ignore"):
        d = np.abs(v - ref)
        a = np.abs(ref)
        _, e = np.frexp(ref)
        ulp_exp = np.where(ref == 0, fmt.min_exponent, np.maximum(e - 1, fmt.min_exponent)) - (fmt.precision - 1)
        ulps = np.ldexp(d, -ulp_exp)
        easy = np.isfinite(v) & (v != 0) & (a >= fmt.tiny) & (a <= fmt.max)
        bits = np.log2(ulps.astype(np.float32) + np.float32(1))
        flagged = ~(bound <= np.ldexp(BOUND_FRACTION / 2, ulp_exp))
    codes = np.zeros(v.shape, np.uint8)
    far = np.flatnonzero(easy & ~(d <= tol * a))  # ok if v is the reference rounded, else inaccurate
    if len(far):
        cr = round_to(fmt, ref[far], np.float64)
        codes[far[v[far] != cr]] = _INACCURATE
    hard = np.flatnonzero(~easy)
    if len(hard):
        r = ref[hard]
        exact = Exact(r.copy(), np.zeros(len(hard)), np.zeros(len(hard), np.int64), (r == 0) & (bound[hard] == 0))
        arith = Arith(fmt, len(hard))
        if overflow is not None:
            arith.record("overflow", overflow.reshape(-1)[hard])
        if pole is not None:
            arith.record("divide_by_zero", pole.reshape(-1)[hard])
        o = classify(fmt, v[hard], exact, arith, tol)
        codes[hard] = status_codes(o.status)
        bits[hard] = o.error_bits
    return codes.reshape(shape), bits.reshape(shape), flagged.reshape(shape)


@dataclass
class Cell:
    """One method in one format: per-status ``counts`` of its entries, ``flagged`` entries (reference bound
    not below 2**-8 of half an ulp), the error-bits histogram (``HIST_STEPS`` bins per bit up to
    BITS_BINS bits, then inf and NaN), and per row (token, or weight row for grad_weight): the worst error
    bits, the column of that entry, its value and reference, and the row's status counts."""

    method: str
    kind: str
    rows: int
    columns: int
    counts: np.ndarray = None
    flagged: int = 0
    hist: np.ndarray = None
    row_bits: np.ndarray = None
    row_col: np.ndarray = None
    row_value: np.ndarray = None
    row_ref: np.ndarray = None
    row_counts: np.ndarray = None
    entries: dict | None = None  # keep-everything: value, reference, bound, status, error_bits (full arrays)

    def __post_init__(self):
        self.counts = np.zeros(_N_STATUS, np.int64)
        self.hist = np.zeros(BITS_BINS * HIST_STEPS + 2, np.int64)
        self.row_bits = np.full(self.rows, -1.0, np.float32)
        self.row_col = np.zeros(self.rows, np.int64)
        self.row_value = np.zeros(self.rows)
        self.row_ref = np.zeros(self.rows)
        self.row_counts = np.zeros((self.rows, _N_STATUS), np.int64)

    def add(self, first: int, value, ref, codes, bits, flagged, keep: bool, bound=None) -> None:
        """Absorb rows [first, first + len) of (rows, columns) entries."""
        value, ref = np.asarray(value, np.float64).reshape(len(codes), -1), np.asarray(ref).reshape(len(codes), -1)
        codes, bits = codes.reshape(len(codes), -1), bits.reshape(len(codes), -1)
        n = len(codes)
        self.counts += np.bincount(codes.reshape(-1), minlength=_N_STATUS)
        self.flagged += int(np.count_nonzero(flagged))
        b = bits.reshape(-1)
        finite = np.isfinite(b)
        self.hist[:BITS_BINS * HIST_STEPS] += np.bincount(
            np.minimum(b[finite] * HIST_STEPS, BITS_BINS * HIST_STEPS - 1).astype(np.int64),
            minlength=BITS_BINS * HIST_STEPS)
        self.hist[-2] += int(np.isinf(b).sum())
        self.hist[-1] += int(np.isnan(b).sum())
        rank = np.where(np.isnan(bits), np.inf, bits)
        col = np.argmax(rank, axis=1)
        rows = np.arange(n)
        sl = slice(first, first + n)
        self.row_bits[sl] = bits[rows, col]
        self.row_col[sl], self.row_value[sl], self.row_ref[sl] = col, value[rows, col], ref[rows, col]
        if codes.shape[1] == 1:
            self.row_counts[sl, :] = 0
            self.row_counts[first + rows, codes[:, 0]] = 1
        else:
            self.row_counts[sl, :] = 0
            self.row_counts[sl, 0] = codes.shape[1]
            bad = np.flatnonzero(codes.reshape(-1))
            if len(bad):
                r = bad // codes.shape[1]
                c = codes.reshape(-1)[bad].astype(np.int64)
                extra = np.bincount(r * _N_STATUS + c, minlength=n * _N_STATUS).reshape(n, _N_STATUS)
                self.row_counts[sl] += extra
                self.row_counts[sl, 0] -= extra.sum(axis=1)
        if keep:
            if self.entries is None:
                self.entries = {k: [] for k in ("value", "reference", "bound", "status", "error_bits")}
            for k, x in (("value", value), ("reference", ref), ("bound", bound), ("status", codes),
                         ("error_bits", bits)):
                self.entries[k].append(np.asarray(x).reshape(n, -1))

    def finish(self) -> None:
        if self.entries is not None:
            self.entries = {k: np.concatenate(v) for k, v in self.entries.items()}

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def worst_bits(self) -> float:
        b = self.row_bits
        return float(np.nan) if np.isnan(b).any() else float(b.max()) if len(b) else 0.0

    @property
    def median_bits(self) -> float:
        """The median entry's error bits, to 1/HIST_STEPS bit (the lower edge of its histogram bin;
        inf if the median entry's error is infinite or NaN)."""
        half = (self.total + 1) // 2
        where = int(np.searchsorted(np.cumsum(self.hist), half))
        return where / HIST_STEPS if where < BITS_BINS * HIST_STEPS else math.inf

    def witnesses(self, k: int = WITNESSES) -> np.ndarray:
        """The k rows with the largest worst error bits (NaN first), ties by row."""
        rank = np.where(np.isnan(self.row_bits), np.inf, self.row_bits)
        k = min(k, len(rank))
        top = np.argpartition(-rank, k - 1)[:k] if k < len(rank) else np.arange(len(rank))
        return top[np.lexsort((top, -rank[top]))]


@dataclass
class LinearBulk:
    """The result of :func:`run`: per (format name, method) a :class:`Cell`; per format the per-token
    columns ``token`` (loss statuses by method live in the cells); notes."""

    formats: tuple[Format, ...]
    tokens: int
    hidden_size: int
    vocabulary: int
    chunks: int
    vocab_chunk: int
    cells: dict[tuple[str, str], Cell]
    tolerance: float | None
    source: str
    notes: list[str] = field(default_factory=list)
    bounds: dict[str, float] = field(default_factory=dict)  # largest bound of each kind (relative or absolute)
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per phase (for benchmarks)

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def clock(self, phase: str):
        """Add the wall seconds of the block to ``seconds[phase]`` (summed over the policies' threads)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m, _, _ in METHODS)


# ------------------------------------------------------------------ reading
def _stored(problem: Problem, fmt: Format) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """hidden and weight rounded to the storage format ``fmt`` block by block, held compactly (the format's
    own dtype up to 16 bits, else float32 / float64), and notes on inputs lost to the rounding."""
    held = np.float64 if fmt.precision > 24 else np.float32
    compact = fmt.dtype if fmt.precision <= 11 else np.dtype(held)
    notes = []
    out = []
    for name, rows in (("hidden", problem.tokens), ("weight", problem.vocabulary)):
        arr = np.empty((rows, problem.hidden_size), dtype=compact)
        lost = nonfinite = 0
        for a in range(0, rows, WEIGHT_BLOCK):
            b = min(rows, a + WEIGHT_BLOCK)
            raw = problem.rows(name, a, b).astype(np.float64)
            r = round_to(fmt, raw, held)
            with np.errstate(all="ignore"):
                finite = np.isfinite(raw)
                nonfinite += int(np.count_nonzero(~finite))
                lost += int(np.count_nonzero((finite & ~np.isfinite(r)) | ((raw != 0) & (r == 0))))
            arr[a:b] = r
        if nonfinite:
            notes.append(f"{name}: {nonfinite:,} non-finite input value(s); rows that touch them get NaN or inf")
        if lost:
            notes.append(f"{name}: {lost:,} value(s) overflow or underflow to 0 when rounded to {fmt.name}; the "
                         "references are those of the rounded inputs")
        out.append(arr)
    return out[0], out[1], notes


# ------------------------------------------------------------------ the run
def run(problem: Problem, formats: tuple[Format, ...], *, chunks: int = DEFAULT_CHUNKS,
        vocab_chunk: int = DEFAULT_VOCAB_CHUNK, tolerance: float | None = None, keep: bool = False) -> LinearBulk:
    """Every method of :data:`METHODS` in every format on ``problem`` (see the module docstring).
    ``keep``: also every entry's value, reference, bound, status and error bits (:attr:`Cell.entries`;
    small problems only)."""
    n, d, v = problem.tokens, problem.hidden_size, problem.vocabulary
    cells: dict[tuple[str, str], Cell] = {}
    for fmt in formats:
        for name, kind, _ in METHODS:
            rows, cols = (v, d) if kind == "grad_weight" else (n, d) if kind == "grad_hidden" else (n, 1)
            cells[fmt.name, name] = Cell(name, kind, rows, cols)
    result = LinearBulk(tuple(formats), n, d, v, chunks, vocab_chunk, cells, tolerance, problem.text)
    groups: dict[str, list[Format]] = {}
    for fmt in formats:
        groups.setdefault(fmt.storage_format.name, []).append(fmt)
    for storage, members in groups.items():
        with result.clock("read and round"):
            h_store, w_store, notes = _stored(problem, FORMATS[storage])
        result.notes.extend(notes)
        _run_group(problem, h_store, w_store, members, result, keep)
        del h_store, w_store
    for cell in cells.values():
        cell.finish()
    return result


def _weight64(w_store: np.ndarray, a: int, b: int) -> np.ndarray:
    return w_store[a:b].astype(np.float64)


def _run_group(problem: Problem, h_store, w_store, formats: list[Format], result: LinearBulk, keep: bool) -> None:
    n, d, v = problem.tokens, problem.hidden_size, problem.vocabulary
    y = problem.labels
    tol_of = {f.name: f.default_tolerance if result.tolerance is None else result.tolerance for f in formats}
    ops = {f.name: _Ops(f) for f in formats}
    h64 = h_store.astype(np.float64)
    # norms (float64; each within gamma_{D+1} relative of its exact value: the (1 + 4 gamma_M) slack covers them)
    hn = np.sqrt(np.einsum("ij,ij->i", h64, h64))
    hcol = np.sqrt(np.einsum("ij,ij->j", h64, h64))
    wn2max, wcol2 = 0.0, np.zeros(d)
    for a in range(0, v, WEIGHT_BLOCK):
        wb = _weight64(w_store, a, min(v, a + WEIGHT_BLOCK))
        wn2max = max(wn2max, float(np.einsum("ij,ij->i", wb, wb).max()))
        wcol2 += np.einsum("ij,ij->j", wb, wb)
    wcol = np.sqrt(wcol2)
    slack = 1 + 4 * _gamma(max(n, v, d) + 2)
    delta = _gamma(d) * hn * math.sqrt(wn2max) * slack  # |x_hat - x| per token row (absolute)

    # ---------------- pass A: token blocks with their full logits rows
    m_ref, s_ref, py1_ref, rho = (np.zeros(n) for _ in range(4))
    state = {f.name: {"m": None, "lse": None} for f in formats}
    per_token = {f.name: {name: np.zeros(n) for name, kind, _ in METHODS if kind in ("loss", "p_y - 1")}
                 for f in formats}
    events = {f.name: (np.zeros(n, bool), np.zeros(n, bool)) for f in formats}  # naive: overflow, pole
    loss_ref = np.zeros(n)
    for f in formats:
        state[f.name]["m"] = np.zeros(n, ops[f.name].held)
        state[f.name]["lse"] = np.zeros(n, ops[f.name].held)
    for r0 in range(0, n, TOKEN_BLOCK):
        r1 = min(n, r0 + TOKEN_BLOCK)
        rows = np.arange(r1 - r0)
        yb = y[r0:r1]
        x = np.empty((r1 - r0, v))
        with result.clock("A: logits"):
            for a in range(0, v, WEIGHT_BLOCK):
                b = min(v, a + WEIGHT_BLOCK)
                x[:, a:b] = h64[r0:r1] @ _weight64(w_store, a, b).T
        with np.errstate(all="ignore"), result.clock("A: reference"):
            m = x.max(axis=1)
            t = x - m[:, None]
            big = np.minimum(-t.min(axis=1), 746.0)
            np.exp(t, out=t)
            ey = t[rows, yb].copy()
            t[rows, yb] = 0.0
            tt = t.sum(axis=1)
            del t
            total = ey + tt
            s = tt / ey
            small = ~(ey >= 2.0**-900)
            loss_ref[r0:r1] = np.where(small, (m - x[rows, yb]) + np.log(total), np.log1p(s))
            py1_ref[r0:r1] = np.where(small, -1.0 + ey / total, -s / (1 + s))
            m_ref[r0:r1], s_ref[r0:r1] = m, total
            rho[r0:r1] = 2 * (np.expm1(2 * delta[r0:r1] + (big + 2) * U) + _gamma(v)) + v * 2.0**-1074 + 4 * U
        with result.clock("A: policies"):
            _each(formats, lambda f, x=x: _pass_a_policy(ops[f.name], x, yb, rows, r0, r1, result.vocab_chunk,
                                                         state[f.name], per_token[f.name], events[f.name]))
        del x
    # judge the per-token methods
    for f in formats:
        tol = tol_of[f.name]
        for name, kind, _ in METHODS:
            if kind not in ("loss", "p_y - 1"):
                continue
            ref = loss_ref if kind == "loss" else py1_ref
            bound = np.abs(ref) * (rho + (2 * U if kind == "loss" else 0.0))
            value = per_token[f.name][name]
            ov, pole = events[f.name] if name == "fused:materialized_naive" else (None, None)
            codes, bits, flagged = _judge(f, value, ref, bound, tol, ov, pole)
            result.cells[f.name, name].add(0, value[:, None], ref[:, None], codes[:, None], bits[:, None],
                                           flagged, keep, bound[:, None])
    result.bounds["loss (relative)"] = max(result.bounds.get("loss (relative)", 0.0), float(rho.max()) + 2 * U)
    result.bounds["p_y - 1 (relative)"] = max(result.bounds.get("p_y - 1 (relative)", 0.0), float(rho.max()))

    # ---------------- pass B: vocabulary blocks
    r_n = (rho + 2 * U) / (1 - rho - 2 * U)
    r_max = float(r_n.max())
    gh_ref = np.zeros((n, d))
    g_norm2 = np.zeros(n)
    gh_acc = {f.name: np.zeros((n, d)) for f in formats}
    k = max(1, min(result.chunks, n))
    size = -(-n // k)
    spans = [(i * size, min(n, (i + 1) * size)) for i in range(k) if i * size < n]
    n_c = {f.name: ops[f.name].c_(np.array([float(n)]))[0] for f in formats}  # N in the compute format
    w_bound_max = 0.0
    for a in range(0, v, VOCAB_BLOCK):
        b = min(v, a + VOCAB_BLOCK)
        with result.clock("B: logits"):
            wb = _weight64(w_store, a, b)
            x = h64 @ wb.T  # (N, Vb)
        lab = np.flatnonzero((y >= a) & (y < b))
        cols = y[lab] - a
        with np.errstate(all="ignore"), result.clock("B: reference g"):
            g = np.exp(x - m_ref[:, None])
            g /= s_ref[:, None]
            g[lab, cols] = py1_ref[lab]
            g /= n
            g_norm2 += np.einsum("ij,ij->i", g, g)
            gcol = np.sqrt(np.einsum("ij,ij->j", g, g))
        with result.clock("B: reference matmuls"):
            gh_ref += g @ wb
            gw_ref = g.T @ h64  # (Vb, D)
        w_bound = (r_max + _gamma(n)) * slack * gcol[:, None] * hcol[None, :]
        w_bound_max = max(w_bound_max, float(w_bound.max()) if w_bound.size else 0.0)
        del g

        def policy(f: Format, x=x, gw_ref=gw_ref, w_bound=w_bound, wb=wb, a=a, b=b, lab=lab, cols=cols) -> None:
            o = ops[f.name]
            st = state[f.name]
            with np.errstate(all="ignore"), result.clock("B: policy g"):
                xc = o.c_(x)
                z = o.c_(xc - st["m"][:, None])
                del xc
                p = o.exp(o.c_(z - st["lse"][:, None]))
                del z
                p[lab, cols] = o.c_(p[lab, cols] - o.held.type(1))
                g64 = o.c_(p / n_c[f.name]).astype(np.float64)
                del p
            with result.clock("B: policy matmuls"):
                gh_acc[f.name] += g64 @ wb
            with np.errstate(all="ignore"), result.clock("B: chunks"):
                total = np.zeros((b - a, d))
                buf_s = np.zeros((b - a, d), o.held)
                buf_f = np.zeros((b - a, d), o.held)
                for c0, c1 in spans:
                    part = g64[c0:c1].T @ h64[c0:c1]
                    total += part
                    pc = o.c_(part)
                    del part
                    buf_s = o.r(o.s, np.add(buf_s, pc, out=buf_s))
                    buf_f = o.r(o.buffer32, np.add(buf_f, pc, out=buf_f))
                    del pc
                del g64
                values = {"fused:grad_weight": o.r(o.o, o.c_(total)),
                          "fused:grad_weight_chunks_storage": o.r(o.o, buf_s),
                          "fused:grad_weight_chunks_fp32": o.r(o.o, o.r(o.s, buf_f))}
                del total, buf_s, buf_f
            for name, value in values.items():
                with result.clock("B: judge"):
                    codes, bits, flagged = _judge(f, value, gw_ref, w_bound, tol_of[f.name])
                with result.clock("B: summarize"):
                    result.cells[f.name, name].add(a, value, gw_ref, codes, bits, flagged, keep, w_bound)

        _each(formats, policy)
        del x, gw_ref, w_bound
    h_bound = (r_n[:, None] + _gamma(v)) * slack * np.sqrt(g_norm2)[:, None] * wcol[None, :]
    result.bounds["grad_weight (absolute)"] = max(result.bounds.get("grad_weight (absolute)", 0.0), w_bound_max)
    result.bounds["grad_hidden (absolute)"] = max(result.bounds.get("grad_hidden (absolute)", 0.0),
                                                  float(h_bound.max()))
    for f in formats:
        o = ops[f.name]
        value = o.r(o.o, o.c_(gh_acc[f.name]))
        codes, bits, flagged = _judge(f, value, gh_ref, h_bound, tol_of[f.name])
        result.cells[f.name, "fused:grad_hidden"].add(0, value, gh_ref, codes, bits, flagged, keep, h_bound)


def _each(formats, work) -> None:
    """``work(fmt)`` for every format: in threads when there are several (numpy's element-wise operations and
    the matmuls release the GIL; each policy writes only its own cells and accumulators)."""
    if len(formats) == 1:
        work(formats[0])
        return
    with ThreadPoolExecutor(max_workers=min(len(formats), THREADS)) as pool:
        for future in [pool.submit(work, f) for f in formats]:
            future.result()


def _pass_a_policy(o: _Ops, x: np.ndarray, yb, rows, r0: int, r1: int, block: int, st: dict, out: dict,
                   events) -> None:
    """The per-token methods of one policy on a block of full logits rows (float64 fused dots)."""
    with np.errstate(all="ignore"):
        xc = o.c_(x)
        # materialized log_softmax (and the lse the gradients use)
        mc = xc.max(axis=1)
        z = o.c_(xc - mc[:, None])
        lse = o.log(o.tree(o.exp(z)))
        zy = z[rows, yb]
        del z
        st["m"][r0:r1], st["lse"][r0:r1] = mc, lse
        out["fused:materialized_log_softmax"][r0:r1] = o.r(o.o, o.c_(lse - zy))
        py = o.exp(o.c_(zy - lse))
        out["fused:grad_logit_true"][r0:r1] = o.r(o.o, o.c_(py - o.held.type(1)))
        pys = o.r(o.s, py)
        out["fused:grad_logit_true_storage"][r0:r1] = o.r(o.o, o.r(o.s, pys + o.held.type(-1)))
        # naive
        ex = o.exp(xc)
        events[0][r0:r1] = (np.isinf(ex) & np.isfinite(xc)).any(axis=1)
        sx = o.tree(ex)
        q = o.c_(ex[rows, yb] / sx)
        del ex
        events[1][r0:r1] = q == 0
        out["fused:materialized_naive"][r0:r1] = o.r(o.o, -o.log(q))
        # online log-sum-exp over vocabulary blocks
        m_run = s_run = None
        for a in range(0, x.shape[1], block):
            part = xc[:, a:a + block]
            top = part.max(axis=1)
            if m_run is None:
                m_run, s_run = top, o.tree(o.exp(o.c_(part - top[:, None])))
                continue
            new = np.maximum(m_run, top)
            block_sum = o.tree(o.exp(o.c_(part - new[:, None])))
            s_run = o.tree(np.stack([o.c_(s_run * o.exp(o.c_(m_run - new))), block_sum], axis=-1))
            m_run = new
        lse_on = o.c_(o.log(s_run) + m_run)
        out["fused:vocab_chunks_online"][r0:r1] = o.r(o.o, o.c_(lse_on - xc[rows, yb]))
