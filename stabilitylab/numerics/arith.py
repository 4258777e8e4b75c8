"""Arithmetic in one format, every operation rounded to it, with IEEE events per case.

:class:`Arith` is the only place kernels do arithmetic.  Each operation takes
arrays whose first axis is the case ("row"), computes the result correctly
rounded to the format (the IEEE 754 model of Higham's analyses), and records,
for each row, the first operation at which each IEEE event happened:

* ``+ - * /`` in the format's dtype: IEEE for float16/32/64; numpy / ml_dtypes
  evaluate float16, bfloat16 and float8 in float32 and round once, which is
  correctly rounded because float32 has at least 2p + 2 bits;
* ``exp``, ``log``, ``log1p``, ``tanh`` by :mod:`stabilitylab.numerics.crmath`, correctly rounded
  in every format (not numpy's / ml_dtypes' own functions, which differ between
  CPUs): results and thresholds are facts about the formula and the format,
  identical on every machine.

numpy's floating-point flags are neither per row nor raised in every format (a
float16 multiply that underflows to 0 sets no flag), so events are detected from
the operands and the result:

``overflow``
    finite operands, non-finite result, and the operation was neither invalid nor
    at a pole (float8_e4m3fn has no infinity: its overflow gives NaN);
``underflow``
    the exact result is non-zero but the rounded result is 0;
``subnormal``
    an inexact result in the subnormal range (gradual underflow: bits lost);
``divide_by_zero``
    a pole: ``x / 0`` with x != 0, ``log(0)``, ``log1p(-1)``;
``invalid``
    a mathematically undefined operation on non-NaN operands:
    ``0 / 0``, ``inf - inf``, ``0 * inf``, ``log(x < 0)``.

A format whose conversion hides an event (``:saturate`` variants and fp6 / fp4: overflow and
infinities become +-max; fp6 / fp4 store a NaN as a zero) is computed in its
:attr:`~stabilitylab.numerics.formats.Format.held_twin` (the same values, overflow to +-inf, NaN
kept), so the events above are seen; then +-inf becomes +-max.  A NaN stays NaN in those formats
(the values are held in float32): a lost value is shown as lost, not as ml_dtypes' zero.

With ``ftz=True`` every subnormal input and result is flushed to (signed) zero,
as GPUs and CPUs do in flush-to-zero / denormals-are-zero modes; a flushed
non-zero value is an ``underflow``.

Precision policies (:mod:`stabilitylab.numerics.policies`): ``fmt`` may name a storage, a compute
and an accumulation format and deliver its result in its own (output) format.  Inputs are rounded
to the storage format when loaded (input events against it), and converted once to the compute
format if it does not hold them; ``+ - * / exp log log1p tanh`` and constants round to the compute
format; the additions inside ``tree(add, ...)`` / ``repeat(add, ...)`` and running sums round to
the accumulation format, and a sum's result is rounded to the compute format once complete;
:meth:`Arith.deliver` rounds a kernel's result to the output format.  Each rounding's events are
judged against the format it rounds to.  A pure format is the case where all four are the format.

Block-scaled storage (``-d mxfp4``, ``-d nvfp4@bf16``: a policy whose ``block`` names a
:class:`~.blockscale.BlockFormat`): :meth:`load` quantizes the inputs per block along the last axis of
each input array (a 1-D input, one value per case: each case's value is its own block of one) with
:func:`.blockscale.quantize`, then rounds the dequantized values to the compute format (where they are
held).  NVFP4's per-tensor scale: ``tensor_amax`` if given (the caller's whole tensor, e.g. a user's
logits file), else each case (row) is its own tensor.  Events, per input: a finite non-zero input
flushed to 0 by its block's scale (or by the conversion) is an ``underflow``, a finite input that
becomes inf / NaN (a NaN block scale: an inf or NaN in its block, or a scale beyond E8M0) an
``overflow``; both mark the input lost (status ``range`` by the one rule when the result is then
correctly rounded).  An element saturated to the element's largest value is part of the format's
rounding (the MX spec clamps), not an event; :attr:`Arith.block_counts` counts it with the flushes.

With ``quiet=True`` the results are the same and no event is looked for (``first``
stays NEVER, a read-only broadcast): for values whose events nobody reads
(:mod:`stabilitylab.training.train`: a step's backward pass, and its forward pass where the loss is
finite and non-zero; the fused softmax_ce path, whose rows have none).
"""

from __future__ import annotations

import numpy as np

from ..errors import TargetError, TargetTimeout, Terminated, described
from . import blockscale, crmath
from .formats import FORMATS, Format
from .policies import block_of, contains
from .wide import wide_dtype

__all__ = ["Arith", "EVENTS", "BLOCK_COUNTS", "TargetError", "events_from_steps", "EXTERNAL_CHUNK", "rows_any"]

EVENTS: tuple[str, ...] = ("overflow", "underflow", "subnormal", "divide_by_zero", "invalid")
BLOCK_COUNTS: tuple[str, ...] = ("nonzero", "flushed", "saturated", "scale_saturated")
"""Block-scaled storage, per row (:attr:`Arith.block_counts`): finite non-zero inputs; those flushed to 0 by
their block's scale; elements saturated to the element's largest magnitude; blocks whose scale saturated
(see :mod:`.blockscale`)."""
_INDEX = {name: i for i, name in enumerate(EVENTS)}
_SATURATED = "saturated"  # recorded beside the events for _shared's replay
NEVER = np.iinfo(np.int64).max
_BLOCK = 2**20  # values per block where a wide row is rounded or checked piecewise (issue #18)
EXTERNAL_CHUNK = 2**16  # rows per call of an external function (a 32k-point scan is one call)
EXTERNAL_CALLS = 4096  # calls spent, per external(), locating the rows of a batch that raised



def _numeric(dtype: np.dtype) -> bool:
    """Real numbers: numpy integers and floats, and ml_dtypes' floats (kind 'V')."""
    if dtype.kind in "iuf":
        return True
    return any(dtype == f.dtype for f in FORMATS.values())


def rows_any(mask, rows: int) -> np.ndarray:
    """Per row, whether any entry of ``mask`` (rows first, any shape) is True.  A short row (at most 16
    entries) is reduced column by column: numpy's reduction over a short last axis costs ~20 ns a row,
    the columns' ``logical_or`` ~1 ns a value.  The same booleans either way."""
    m = np.asarray(mask, dtype=bool).reshape(rows, -1)
    if m.shape[1] > 16 or m.shape[1] == 0:
        return m.any(axis=1)
    out = m[:, 0].copy()
    for j in range(1, m.shape[1]):
        np.logical_or(out, m[:, j], out=out)
    return out


def _short_rows(x: np.ndarray) -> bool:
    """Rows of 2 to 16 floats: reduced column by column (see :func:`rows_any`)."""
    return x.ndim == 2 and 1 < x.shape[1] <= 16 and x.dtype.kind == "f"


def _row_max(x: np.ndarray) -> np.ndarray:
    """``np.max(x, axis=-1)``, the same values: short rows column by column with ``np.maximum``, and the
    rows whose maximum is 0 or NaN again with ``np.max`` (which of -0 / +0, which NaN: as it gives)."""
    if not _short_rows(x):
        return np.max(x, axis=-1)
    m = x[:, 0].copy()
    for j in range(1, x.shape[1]):
        np.maximum(m, x[:, j], out=m)
    again = np.flatnonzero((m == 0) | np.isnan(m))
    if again.size:
        m[again] = np.max(x[again], axis=-1)
    return m


def _row_argmax(x: np.ndarray) -> np.ndarray:
    """``np.argmax(x, axis=-1)`` (the first maximum; the first NaN where there is one), the same indices:
    short rows column by column, rows holding a NaN again with ``np.argmax``."""
    if not _short_rows(x):
        return np.argmax(x, axis=-1)
    top = np.zeros(len(x), dtype=np.intp)
    m = x[:, 0].copy()
    for j in range(1, x.shape[1]):
        top[x[:, j] > m] = j  # (strictly: the first of equal maxima stays)
        np.maximum(m, x[:, j], out=m)
    again = np.flatnonzero(np.isnan(m))
    if again.size:
        top[again] = np.argmax(x[again], axis=-1)
    return top


def _opposite_infinities(a, b):
    return np.isinf(a) & np.isinf(b) & (np.sign(a) != np.sign(b))


def _equal_infinities(a, b):
    return np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))


def events_from_steps(first: np.ndarray) -> list[tuple[str, ...]]:
    """Event tuples from a (len(EVENTS), rows) matrix of first steps.

    Rows share few distinct patterns, so tuples are built once per pattern.
    """
    if first.shape[1] == 0:
        return []
    order = np.argsort(first, axis=0, kind="stable")
    seen = np.take_along_axis(first, order, axis=0) != NEVER
    key = np.where(seen, order, len(EVENTS))
    patterns, inverse = np.unique(key.T, axis=0, return_inverse=True)
    tuples = [tuple(EVENTS[i] for i in p if i < len(EVENTS)) for p in patterns]
    return [tuples[i] for i in inverse.ravel()]


def _identity(operand):
    """What identifies an operand in the memo: the array object, the function (not the bound
    method, a new object at each access), or the value of a scalar."""
    if isinstance(operand, np.ndarray):
        return ("array", id(operand))
    if callable(operand):
        return ("function", id(getattr(operand, "__func__", operand)))
    return ("value", operand if operand is None or np.isscalar(operand) else id(operand))


def _shared(method):
    """Share a pure operation between the forks of one :class:`Arith` (several kernels on the
    same loaded inputs: ``exp(x - max x)`` once for three softmax formulations).

    The first call computes and records the events it notes, relative to its first step;
    a call on the same operand objects by any fork returns the same (read-only) result and
    replays those events from its own step counter, so its first-step matrix is exactly
    what computing again would give.  Operands are kept alive with the entry, so their
    ``id`` cannot be reused while the entry lives.
    """
    def wrapper(self, *args, **kwargs):
        memo = getattr(self, "_memo", None)
        if memo is None:
            return method(self, *args, **kwargs)
        key = (method.__name__, *map(_identity, args), *((k, _identity(v)) for k, v in sorted(kwargs.items())))
        hit = memo.get(key)
        if hit is None:
            start, log = self.step, []
            self._logs.append(log)
            try:
                result = method(self, *args, **kwargs)
            finally:
                self._logs.pop()
            memo[key] = (result, [(step - start, event, rows) for step, event, rows in log], self.step - start,
                         (args, kwargs))
            return result
        result, log, steps, _ = hit
        for offset, event, rows in log:
            if event == _SATURATED:  # (not an IEEE event: the rows whose infinity became +-max)
                self.saturated |= rows
                continue
            row = self.first[_INDEX[event]]
            np.copyto(row, self.step + offset, where=rows & (row == NEVER))
        self.step += steps
        return result

    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


class Arith:
    """Operations on a batch of ``rows`` cases in ``fmt``, recording IEEE events.

    Every method takes format arrays with the case on axis 0 and an optional
    ``where`` (bool per row): events of rows outside ``where`` are not recorded
    (used when a result is computed for all rows but used by some).
    """

    def __init__(self, fmt: Format, rows: int, ftz: bool = False, fast: bool = True, quiet: bool = False,
                 tensor_amax: float | None = None):
        self.fmt = fmt
        self.quiet = quiet  # no event bookkeeping; forks (and so the memo's entries) share it
        # the policy's formats (a pure format: fmt four times)
        self.storage, self.compute = fmt.storage_format, fmt.compute_format
        self.accumulate, self.output = fmt.accumulate_format, fmt.output_format
        # fast (the default): hold the values of a format of <= 16 bits in float32 (exactly) and compute
        # there, rounding each result with integer bit operations (Format.round32): the same values, bit
        # for bit, as the format's own dtype, whose arithmetic numpy / ml_dtypes emulate slowly (and whose
        # import costs 0.5-1.2 s); external() hands a black box its inputs in the format's own dtype.
        # A policy is held in float32 when float32 holds every value of its storage, compute and
        # accumulation formats (+ - * / of float32 values rounded in float32 and then to a format of
        # p <= 11 bits is correctly rounded: 24 >= 2p + 2), else in float64 (53 >= 2 * 24 + 2 for float32).
        # Every rounding to a format F goes through F.held_twin (the same values, but overflow gives +-inf and
        # NaN stays NaN, so events are seen) and then F's own convention (_settle: +-max where F saturates).
        if fmt.is_policy:
            f32 = FORMATS["float32"]
            self.fast = all(contains(f32, f) for f in (self.storage, self.compute, self.accumulate))
            self.dtype = np.dtype(np.float32) if self.fast else np.dtype(np.float64)
        else:
            self.fast = (fast or fmt.held_twin is not fmt) and fmt.precision <= 11
            self.dtype = np.dtype(np.float32) if self.fast else fmt.dtype
        # inputs converted to the compute format after storage rounding (it does not hold the storage format)
        self._convert = fmt.is_policy and not contains(self.compute, self.storage)
        self.rows = rows
        self.ftz = ftz
        # (quiet: a read-only broadcast of NEVER, never written: no (events x rows) array to fill and scan)
        self.first = (np.broadcast_to(np.int64(NEVER), (len(EVENTS), rows)) if quiet
                      else np.full((len(EVENTS), rows), NEVER, dtype=np.int64))
        self.step = 0
        self.input_lost = np.zeros(rows, dtype=bool)  # an input over/underflowed when rounded to the format
        self.saturated = np.zeros(rows, dtype=bool)  # an infinity became +-max in the row (saturating formats)
        # block-scaled storage: the block format, NVFP4's tensor amax (None: each row is its tensor) and, per
        # row, the counts of BLOCK_COUNTS over every input loaded
        self.block = block_of(fmt)
        self.tensor_amax = tensor_amax if self.block is not None and self.block.tensor_scale else None
        self.block_counts = np.zeros((len(BLOCK_COUNTS), rows if self.block is not None else 0), dtype=np.int64)
        self.errors: dict[int, str] = {}  # row -> first line of the exception an external call raised there
        self._wides = {f.name: wide_dtype(f) for f in (fmt, self.storage, self.compute, self.accumulate, self.output)}
        self._memo: dict = {}  # shared by forks: see _shared
        self._logs: list[list] = []  # events being recorded for the memo (nested shared operations)

    def fork(self) -> "Arith":
        """A copy with the same events so far (inputs loaded once, several kernels)."""
        other = Arith.__new__(Arith)
        other.__dict__.update(self.__dict__)
        other.first = self.first if self.quiet else self.first.copy()  # (quiet: read-only, never written)
        other.input_lost = self.input_lost.copy()
        other.saturated = self.saturated.copy()
        other.block_counts = self.block_counts.copy()
        other.errors = dict(self.errors)
        other._logs = []
        return other

    def unshared(self) -> None:
        """Share no results between this Arith and its later forks (see ``_shared``): every operation
        computes again (the same values and events: sharing is only a saving), and holds nothing
        once its kernel drops it.  For inputs so large that a few kept intermediates matter (issue #18)."""
        self._memo = None

    def forget(self) -> None:
        """Drop the results shared so far (when no fork will compute any more).  A shared tree's
        entry holds its operation, a fork's bound method, and so the fork and the memo itself:
        without this the cycle keeps every shared intermediate until the garbage collector
        runs, which large arrays do not prompt (issue #18: a wide row's were kept format after format)."""
        if self._memo is not None:
            self._memo.clear()

    # ---------------------------------------------------------------- events
    def events(self) -> list[tuple[str, ...]]:
        """Per row, the events seen, in order of first occurrence (ties: EVENTS order)."""
        return events_from_steps(self.first)

    def first_step(self, event: str) -> np.ndarray:
        """Per row, the step at which ``event`` first happened (NEVER if it did not)."""
        return self.first[_INDEX[event]]

    def _note(self, event: str, mask, where) -> None:
        if self.quiet:
            return
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():  # the usual case, and a row-wise any over a short last axis is slow
            return
        per_row = rows_any(mask, self.rows)
        if where is not None:
            per_row &= where
        for log in self._logs:
            log.append((self.step, event, per_row))
        row = self.first[_INDEX[event]]
        np.copyto(row, self.step, where=per_row & (row == NEVER))

    def _flush(self, y: np.ndarray, fmt: Format | None = None) -> np.ndarray:
        if not self.ftz:
            return y
        sub = (y != 0) & (np.abs(y) < (self.compute if fmt is None else fmt).tiny)
        if sub.any():
            y = np.where(sub, y * 0, y).astype(self.dtype)
        return y

    def _rounded(self, y: np.ndarray, fmt: Format) -> np.ndarray:
        """Held values rounded to ``fmt`` (correctly: see __init__), in the held dtype."""
        held = fmt.held_twin
        if self.fast:
            if y.size > _BLOCK and y.base is None and y.dtype == np.float32:  # (a fresh result: rounded in place,
                flat = y.reshape(-1)                                         # in blocks, elementwise)
                for start in range(0, flat.size, _BLOCK):
                    flat[start:start + _BLOCK] = held.round32(flat[start:start + _BLOCK])
                return y
            return held.round32(y)
        if not self.fmt.is_policy or fmt.precision == 53:
            return y  # (a pure format computes in its own dtype; float64 results are float64 values)
        return held.round(y, self.dtype)

    def _finish(self, y, operands, *, where, invalid=None, pole=None, exact_nonzero=None, wide=None,
                rounded=False, fmt: Format | None = None):
        """Bookkeeping shared by every operation; returns the (flushed) result.

        ``invalid``, ``pole``, ``exact_nonzero`` are functions of the operands
        giving masks (undefined operation; a pole; exact result non-zero), called
        only when the result could show that event (None: it cannot happen).
        ``wide`` computes the result in a wider dtype, to tell exact subnormal
        results from inexact ones (None: subnormal results are always exact, as
        for + and -).  ``rounded``: y is already a format value (crmath's results).  ``fmt``: the format
        the operation rounds to, whose range the events are judged against (default: the compute format).
        """
        fmt = self.compute if fmt is None else fmt
        self.step += 1
        y = np.asarray(y)
        if not rounded:
            y = self._rounded(y, fmt)
        y = self._flush(y, fmt)
        if self.quiet:
            return self._settle(y, where, fmt)
        if self._finite_normal(y, fmt=fmt):
            return y  # finite, normal, non-zero results: no event is possible
        if exact_nonzero is None and self._finite_normal(y, tiny=0, fmt=fmt):
            return y  # finite results of an operation that cannot underflow: no event either
        checks = dict(invalid=invalid, pole=pole, exact_nonzero=exact_nonzero, wide=wide, fmt=fmt)
        if y.ndim == 2 and y.shape[0] == self.rows and y.size > _BLOCK:  # a wide row: in blocks of columns
            whole = [np.broadcast_to(np.asarray(a), y.shape) for a in operands]  # (views: elementwise checks,
            width = max(1, _BLOCK // self.rows)                                   # events noted per row)
            for start in range(0, y.shape[1], width):
                cols = slice(start, start + width)
                self._look(y[:, cols], [a[:, cols] for a in whole], where, **checks)
        else:
            self._look(y, operands, where, **checks)
        return self._settle(y, where, fmt)

    def _settle(self, y, where=None, fmt: Format | None = None):
        """``fmt``'s own convention (default: the compute format) applied after the events were noted:
        +-inf -> +-max where it saturates (NaN stays NaN); the rows where that happened are marked in
        :attr:`saturated` (the running sums, which round by the format's own convention, mark theirs
        themselves)."""
        fmt = self.compute if fmt is None else fmt
        if not fmt.saturates:
            return y
        inf = np.isinf(y)
        if inf.any():
            y = np.where(inf, np.copysign(y.dtype.type(fmt.max), y), y).astype(y.dtype, copy=False)
            if not self.quiet and inf.ndim and inf.shape[0] == self.rows:
                rows = rows_any(inf, self.rows)
                if where is not None:  # (as events: rows outside where are computed, not used)
                    rows &= where
                self.saturated |= rows
                for log in self._logs:  # replayed by the forks that share this result (see _shared)
                    log.append((self.step, _SATURATED, rows))
        return y

    def _look(self, y, operands, where, *, invalid, pole, exact_nonzero, wide, fmt: Format) -> None:
        """Note the events of results ``y`` of ``operands`` (see :meth:`_finish`).  Each event's mask
        is elementwise and implies a result that is not finite (invalid, pole, overflow), zero
        (underflow) or below tiny (subnormal), so looking at blocks of columns notes the same rows."""
        magnitude = np.abs(y)
        finite_y = magnitude <= fmt.max  # False for inf and NaN
        all_finite = bool(finite_y.all())
        finite_in = np.logical_and.reduce([np.isfinite(a) for a in np.broadcast_arrays(*operands)])
        if not all_finite:
            nan_in = np.logical_or.reduce([np.isnan(a) for a in np.broadcast_arrays(*operands)])
            bad = invalid(*operands) & ~nan_in if invalid else np.zeros(y.shape, bool)
            at_pole = pole(*operands) & finite_in if pole else np.zeros(y.shape, bool)
            self._note("invalid", bad, where)
            self._note("divide_by_zero", at_pole, where)
            self._note("overflow", ~finite_y & finite_in & ~at_pole & ~bad, where)
        if exact_nonzero is None:
            return
        zero = magnitude == 0
        if zero.any():
            self._note("underflow", zero & exact_nonzero(*operands) & finite_in, where)
        if wide is not None:
            tiny = (magnitude < fmt.tiny) & ~zero & finite_in
            if tiny.any():
                wide_type = self._wides[fmt.name]  # where * / exp of the format's values are (nearly) exact
                if wide_type is None:
                    inexact = tiny
                else:
                    with np.errstate(all="ignore"):
                        exact = wide(*(np.asarray(a).astype(wide_type) for a in operands))
                    inexact = tiny & (exact != y.astype(wide_type))
                self._note("subnormal", inexact, where)

    def _finite_normal(self, y: np.ndarray, tiny: float | None = None, fmt: Format | None = None) -> bool:
        """Whether every |y| is in [tiny, max] of ``fmt`` (default: the compute format; not NaN; default
        tiny: its smallest normal), looked at in blocks (no temporary the size of a wide row's y)."""
        fmt = self.compute if fmt is None else fmt
        flat = y.reshape(-1)
        low = fmt.tiny if tiny is None else tiny
        if flat.size and flat.dtype.kind == "f":  # one sign (exp, sums of exps...): min and max tell, two passes
            with np.errstate(invalid="ignore"):
                lowest, highest = flat.min(), flat.max()  # (NaN propagates: no shortcut, below decides)
            if (low <= lowest and highest <= fmt.max) or (-fmt.max <= lowest and highest <= -low):
                return True
        for start in range(0, flat.size, _BLOCK):
            magnitude = np.abs(flat[start:start + _BLOCK])
            if not bool(((magnitude <= fmt.max) & (magnitude >= low)).all()):
                return False
        return True

    def record(self, event: str, mask, where=None) -> None:
        """Record an event found by a kernel that computes outside these operations."""
        self.step += 1
        self._note(event, mask, where)

    # ------------------------------------------------------------ operations
    def load(self, x, where=None) -> np.ndarray:
        """Round float64 inputs to the (storage) format (correctly; DAZ under ftz); a policy whose compute
        format does not hold the storage format then converts them to it (:meth:`_converted_inputs`).

        A wide input (more than 2**20 values per row... or in all) is rounded in blocks of columns:
        elementwise, the same values and per-row events, without float64 temporaries of its size."""
        x = np.asarray(x)
        self.step += 1
        amax = self._row_amax(x)
        given = np.float32 if self._rounds32(x) else np.float64  # (float32 inputs: rounded as they are)
        if x.ndim != 2 or x.size <= _BLOCK or self.rows != x.shape[0]:
            with np.errstate(invalid="ignore"):  # a signalling NaN input is quieted by the cast: no warning
                held = np.asarray(x, dtype=given)
            y, masks = self._load_block(held, amax)
        else:
            y = np.empty(x.shape, self.dtype)
            masks = [np.zeros(self.rows, dtype=bool) for _ in range(3)]
            width = max(1, _BLOCK // max(self.rows, 1))
            if self.block is not None:  # whole blocks per piece (the blocks run along the last axis)
                width = max(self.block.block_size, width - width % self.block.block_size)
            for start in range(0, x.shape[1], width):
                part, found = self._load_block(np.asarray(x[:, start:start + width], dtype=given), amax)
                y[:, start:start + width] = part
                for total, mask in zip(masks, found):
                    total |= rows_any(mask, self.rows)
        self._note("overflow", masks[0], where)
        self._note("underflow", masks[1], where)
        per_row = rows_any(masks[0] | masks[1], self.rows)
        self.input_lost |= per_row if where is None else per_row & where
        self._note("subnormal", masks[2], where)
        if self._convert:
            return self._converted_inputs(y, where)
        return self._settle(y, where, self.storage)

    def _row_amax(self, x: np.ndarray) -> np.ndarray | None:
        """NVFP4 with each row its own tensor: per row, the largest finite |x| (else None)."""
        if self.block is None or not self.block.tensor_scale or self.tensor_amax is not None:
            return None
        with np.errstate(all="ignore"):
            a = np.abs(np.asarray(x, dtype=np.float64).reshape(self.rows, -1))
            return np.max(np.where(np.isfinite(a), a, 0.0), axis=1, initial=0.0)

    def _rounds32(self, x: np.ndarray) -> bool:
        """Whether float32 inputs ``x`` are stored from float32 (:meth:`_store`): held in float32, no block
        scaling, a storage format of at most 11 bits (:meth:`Format.round32`) or float32 itself.  float32
        converts to float64 exactly, so rounding the float32 values is rounding the float64 ones: the same
        values, bit for bit, and the same masks, without a float64 copy of the inputs."""
        storage = self.storage.held_twin
        return (x.dtype == np.float32 and self.dtype == np.float32 and self.block is None
                and not storage.scale_only and (storage.precision <= 11 or storage.dtype_name == "float32"))

    def _load_block(self, x: np.ndarray, amax: np.ndarray | None = None):
        """Inputs (float64, or float32 where :meth:`_rounds32`) stored (:meth:`_store`), and the masks of
        inputs that overflow, underflow to 0 and become inexact subnormals."""
        with np.errstate(all="ignore"):
            y = self._flush(self._store(x, amax), self.storage)
            finite = np.isfinite(x)
            masks = [finite & ~np.isfinite(y), finite & (x != 0) & (y == 0),
                     (y != 0) & (np.abs(y) < self.storage.tiny) & (y != x)]
        return y, masks

    def _store(self, x: np.ndarray, amax: np.ndarray | None = None) -> np.ndarray:
        """The storage step: float64 inputs to storage-format values, held in the held dtype.  Elementwise
        correct rounding; for block-scaled storage, :meth:`_quantized` first (``amax``: NVFP4's per-row
        tensor amax, see :meth:`_row_amax`)."""
        if self.block is not None:
            x = self._quantized(x, amax)
        if x.dtype == np.float32:  # (only where _rounds32: Format.round32, correct from float32)
            y = self.storage.held_twin.round32(x)
            return y.copy() if y is x else y
        return self.storage.held_twin.round(x, self.dtype)

    def _quantized(self, x: np.ndarray, amax: np.ndarray | None) -> np.ndarray:
        """Inputs quantized to the block format (dequantized values, float32 or float64), blocks along the
        last axis (a 1-D input: one block of one value per row); counts added to :attr:`block_counts`.
        ``amax``: NVFP4 with each row its own tensor, the rows' tensor amax (:meth:`_row_amax`)."""
        shape = x.shape
        x2 = x.reshape(self.rows, 1) if x.ndim == 1 else x.reshape(self.rows, -1, shape[-1])
        tensor = self.tensor_amax if amax is None else (amax if x2.ndim == 2 else np.repeat(amax, x2.shape[1])
                                                         .reshape(x2.shape[:-1]))
        q = blockscale.quantize(self.block, x2, tensor)
        n = self.rows
        with np.errstate(all="ignore"):
            self.block_counts[0] += (np.isfinite(x2) & (x2 != 0)).reshape(n, -1).sum(axis=1)
        self.block_counts[1] += q.flushed.reshape(n, -1).sum(axis=1)
        self.block_counts[2] += q.saturated.reshape(n, -1).sum(axis=1)
        self.block_counts[3] += q.scale_saturated.reshape(n, -1).sum(axis=1)
        return q.values.reshape(shape)

    def _converted_inputs(self, y: np.ndarray, where) -> np.ndarray:
        """Stored inputs converted to a compute format that does not hold them (``fp32@bf16``: the code
        casts to bfloat16 before computing); the conversion's overflow / underflow count as input losses."""
        r = self._narrow(y, self.compute, where)
        with np.errstate(all="ignore"):
            lost = (np.isfinite(y) & ~np.isfinite(r)) | ((y != 0) & (r == 0))
        per_row = rows_any(lost, self.rows)
        self.input_lost |= per_row if where is None else per_row & where
        return r

    def _narrow(self, y, fmt: Format, where=None) -> np.ndarray:
        """Held values rounded to ``fmt`` (one step), noting that rounding's events against ``fmt``:
        overflow (finite -> inf or NaN), underflow (non-zero -> 0), subnormal (an inexact subnormal)."""
        y = np.asarray(y, dtype=self.dtype)
        self.step += 1
        with np.errstate(all="ignore"):
            r = self._flush(self._rounded(np.array(y), fmt), fmt)
            if not self.quiet and not self._finite_normal(r, fmt=fmt):
                finite = np.isfinite(y)
                self._note("overflow", finite & ~(np.abs(r) <= fmt.max), where)
                self._note("underflow", finite & (y != 0) & (r == 0), where)
                self._note("subnormal", (r != 0) & (np.abs(r) < fmt.tiny) & (r != y), where)
        return self._settle(r, where, fmt)

    def deliver(self, y) -> np.ndarray:
        """A kernel's result rounded once to the output format, with that rounding's events (overflow,
        underflow, subnormal against the output format).  The identity for a pure format, and for
        results that are not held values (a kernel that returns something else)."""
        if not self.fmt.is_policy:
            return y
        a = np.asarray(y)
        if a.dtype.kind != "f" or a.ndim == 0 or a.shape[0] != self.rows:
            return y
        return self._narrow(a, self.output)

    def reduced(self, total) -> np.ndarray:
        """A sum computed outside these operations (a running sum's float64 total) rounded to the
        compute format with its events.  A pure format: :meth:`load` (an overflow there marks the row
        as ``range``, as it always has)."""
        if not self.fmt.is_policy:
            return self.load(total)
        return self._narrow(np.asarray(total, dtype=np.float64).astype(self.dtype), self.compute)

    def store(self, x, where=None) -> np.ndarray:
        """Values of a wider format (a cast's float32 input) stored in this one: :meth:`load`'s
        rounding and events (overflow, underflow, subnormal), as one operation of a kernel."""
        return self.load(x, where)

    def const(self, value) -> np.ndarray:
        """A constant, rounded to the compute format (no events: constants are chosen)."""
        with np.errstate(all="ignore"):
            return self._settle(self.compute.held_twin.round(value, self.dtype), fmt=self.compute)

    def add(self, a, b, where=None):
        return self._add(a, b, where, None)

    def _add(self, a, b, where, fmt):
        with np.errstate(all="ignore"):
            return self._finish(a + b, (a, b), where=where, invalid=_opposite_infinities,
                                exact_nonzero=(lambda a, b: a != -b) if self.ftz else None, fmt=fmt)

    def add_in(self, fmt: Format, a, b, where=None):
        """a + b rounded to ``fmt``, events judged against ``fmt``: a buffer a kernel keeps in a named
        format whatever the policy (a float32 gradient accumulator, a bfloat16 one).  ``fmt`` must be
        held exactly by the held dtype (float32 holds every format of <= 24 bits, float64 every format).
        The sum is computed in the held dtype and rounded to ``fmt``: correctly rounded when both operands
        are values of a format of at most (held precision - 2) / 2 bits, else rounded twice, as torch's
        ``bf16_tensor += fp32_tensor`` is (computed in float32, then written as bfloat16)."""
        return self._add(a, b, where, fmt)

    def write_back(self, x, where=None) -> np.ndarray:
        """Held values rounded to the storage format (a result written to a tensor of the storage
        dtype: a float32 accumulator cast back), with that rounding's events against it.  The identity on
        values of the storage format."""
        return self._narrow(x, self.storage, where)

    def _accumulating_add(self, a, b, where=None):
        """An addition of a sum: rounded to the accumulation format."""
        return self._add(a, b, where, self.accumulate)

    def _sum_op(self, op):
        """``op`` as a reduction uses it, and whether its result must be rounded back to the compute
        format: this Arith's add becomes the accumulation format's when a policy accumulates in
        another format than it computes in; anything else stays."""
        if self.accumulate is self.compute or getattr(op, "__func__", None) is not Arith.add:
            return op, False
        return self._accumulating_add, True

    def sub(self, a, b, where=None):
        with np.errstate(all="ignore"):
            return self._finish(a - b, (a, b), where=where, invalid=_equal_infinities,
                                exact_nonzero=(lambda a, b: a != b) if self.ftz else None)

    def mul(self, a, b, where=None):
        with np.errstate(all="ignore"):
            return self._finish(a * b, (a, b), where=where,
                                invalid=lambda a, b: ((a == 0) & np.isinf(b)) | (np.isinf(a) & (b == 0)),
                                exact_nonzero=lambda a, b: (a != 0) & (b != 0), wide=np.multiply)

    def div(self, a, b, where=None):
        with np.errstate(all="ignore"):
            return self._finish(a / b, (a, b), where=where,
                                invalid=lambda a, b: ((a == 0) & (b == 0)) | (np.isinf(a) & np.isinf(b)),
                                pole=lambda a, b: (b == 0) & (a != 0),
                                exact_nonzero=lambda a, b: a != 0, wide=np.divide)

    def neg(self, a):
        """-a: exact, no events."""
        return -a

    @_shared
    def exp(self, x, where=None):
        with np.errstate(all="ignore"):
            return self._finish(self._crmath(crmath.exp, x), (x,), where=where,
                                exact_nonzero=lambda x: np.ones(np.shape(x), bool), wide=np.exp, rounded=True)

    @_shared
    def log(self, x, where=None):
        with np.errstate(all="ignore"):
            return self._finish(self._crmath(crmath.log, x), (x,), where=where, invalid=lambda x: x < 0,
                                pole=lambda x: x == 0, rounded=True)

    @_shared
    def log1p(self, x, where=None):
        with np.errstate(all="ignore"):
            return self._finish(self._crmath(crmath.log1p, x), (x,), where=where, invalid=lambda x: x < -1,
                                pole=lambda x: x == -1, exact_nonzero=lambda x: x != 0, wide=np.log1p,
                                rounded=True)

    @_shared
    def tanh(self, x, where=None):
        """tanh(x), correctly rounded (bounded by 1: no overflow; tanh of a subnormal is that subnormal
        or its neighbour, never 0: no underflow; an inexact subnormal result is noted)."""
        with np.errstate(all="ignore"):
            return self._finish(self._crmath(crmath.tanh, x), (x,), where=where,
                                exact_nonzero=lambda x: x != 0, wide=np.tanh, rounded=True)

    def _own(self, x) -> np.ndarray:
        """x as an array of the held dtype (its values already are format values)."""
        x = np.asarray(x)
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def _crmath(self, f, x) -> np.ndarray:
        """crmath's ``f`` in the compute format on x (compute-format values), in the held dtype."""
        fmt = self.compute.held_twin
        x = self._own(x)
        if not self.fmt.is_policy or (self.fast and fmt.precision <= 11) or x.dtype == fmt.dtype:
            return f(fmt, x)
        with np.errstate(all="ignore"):
            return f(fmt, x.astype(fmt.dtype)).astype(self.dtype)

    @_shared
    def max(self, x):
        """Maximum along the last axis (exact; NaN propagates)."""
        with np.errstate(all="ignore"):
            return _row_max(np.asarray(x))

    @_shared
    def shift(self, x):
        """z = x - max(x) along the last axis (the max's own entry is exactly 0)."""
        return self.sub(x, self.max(x)[..., None])

    @_shared
    def argmax(self, x) -> np.ndarray:
        """Index of the (first) maximum along the last axis."""
        return _row_argmax(np.asarray(x))

    def pick(self, x, index):
        """x[row, index[row]] for a (rows, K) array."""
        return np.take_along_axis(x, np.asarray(index)[:, None], axis=1)[:, 0]

    @_shared
    def drop(self, x, index):
        """A copy of (rows, K) x with x[row, index[row]] set to 0 (a term left out of a sum)."""
        x = np.array(x, copy=True)
        np.put_along_axis(x, np.asarray(index)[:, None], 0, axis=1)
        return x

    def maximum(self, a, b):
        """Elementwise max(a, b) (exact)."""
        return np.maximum(a, b)

    def abs(self, a):
        """|a| (exact)."""
        return np.abs(a)

    def sigmoid(self, z):
        """(sigmoid(z), sigmoid(-z)) branched on the sign of z, so that exp never sees a positive
        argument: with e = exp(-|z|), 1 / (1 + e) and e / (1 + e), each on its side of 0."""
        one = self.const(np.ones(z.shape))
        e = self.exp(self.neg(self.abs(z)))
        d = self.add(one, e)
        big, small = self.div(one, d), self.div(e, d)
        return self.where_nonneg(z, big, small), self.where_nonneg(z, small, big)

    def where_nonneg(self, z, if_nonneg, if_neg):
        """``if_nonneg`` where z >= 0, else ``if_neg`` (a branch on the sign of z)."""
        return np.where(z >= 0, if_nonneg, if_neg).astype(self.dtype, copy=False)

    # ------------------------------------------------------------ black boxes
    def external(self, fn, *arrays, shape: tuple[int, ...] = ()):
        """``fn(*arrays)`` for code we cannot see (an audited kernel, a user's function).

        ``arrays`` have the case on axis 0 (format values in the format's dtype,
        integer labels; arrays of another dtype as they are: a cast's input is held
        in float64, not rounded to the format, and reaches ``fn`` unchanged); ``fn`` is called on whole batches, at most
        ``EXTERNAL_CHUNK`` rows per call.  Its result, anything ``numpy.asarray``
        takes, must be real numbers of shape ``(rows, *shape)``; it is rounded
        correctly to the format (exact when it already is a format value).  No
        IEEE event is recorded: none is observed.  A call that raises is split
        until the rows that raise are found (at most ``EXTERNAL_CALLS`` calls; then
        the rest of the batch that raised is marked); those rows get NaN and, in
        :attr:`errors`, the exception's first line (``SystemExit`` and other exceptions that are not
        ``Exception`` too: a target's ``sys.exit`` never ends stabilitylab; Ctrl-C does).  A result of
        the wrong shape or type raises :class:`TargetError`.

        A call stopped by its time limit (:class:`~stabilitylab.errors.TargetTimeout`, ``--timeout``) is
        not split: each half could take the limit again, a batch of n rows up to 2n - 1 limits.  Every
        row of that batch is marked with the timeout's message (naming the batch's size when it held
        more than one row), and the search for raising rows stops in this call (its budget is spent):
        a later batch that raises is marked whole too.  So one ``external`` spends at most the limit
        once per chunk plus once per pending half of a split begun before the timeout (at most 16).
        """
        self.step += 1
        out = np.full((self.rows, *shape), np.nan, dtype=np.float64)
        budget = [EXTERNAL_CALLS]

        def mark(rows: np.ndarray, message: str) -> None:
            for r in rows.tolist():
                self.errors[r] = message

        def call(rows: np.ndarray) -> None:
            part = [self._native(a[rows]) for a in arrays]
            budget[0] -= 1
            try:
                with np.errstate(all="ignore"):
                    result = fn(*part)
            except (KeyboardInterrupt, Terminated, TargetError):
                raise
            except TargetTimeout as exc:  # the whole batch: splitting would spend the limit again and again
                budget[0] = 0
                mark(rows, str(exc) + (f" on a batch of {len(rows):,} rows holding this one" if len(rows) > 1 else ""))
                return
            except BaseException as exc:  # noqa: BLE001 - the target's own failure (sys.exit too) is a result
                if len(rows) == 1 or budget[0] <= 0:
                    mark(rows, described(exc) + (f" (raised on a batch of {len(rows)} rows holding this one)"
                                                 if len(rows) > 1 else ""))
                    return
                half = len(rows) // 2
                call(rows[:half])
                call(rows[half:])
                return
            out[rows] = self._converted(result, (len(rows), *shape))

        for start in range(0, self.rows, EXTERNAL_CHUNK):
            call(np.arange(start, min(start + EXTERNAL_CHUNK, self.rows)))
        with np.errstate(all="ignore"):
            return self._settle(self.output.held_twin.round(out, self.dtype), fmt=self.output)

    def _native(self, a: np.ndarray) -> np.ndarray:
        """Format values as the (storage) format's own dtype (``fast`` holds them in float32; the target
        must see the format's dtype, as its protocol says); other arrays (labels, a cast's float64 input)
        as they are."""
        if (self.fast or self.fmt.is_policy) and a.dtype == self.dtype:
            return a.astype(self.storage.dtype)
        return a

    def _converted(self, result, expected: tuple[int, ...]) -> np.ndarray:
        """An external result as float64 (exact for every format value), checked."""
        try:
            r = np.asarray(result)
        except Exception as exc:  # noqa: BLE001 - e.g. a bfloat16 torch tensor
            raise TargetError(f"its result could not be read with numpy.asarray ({described(exc)})") from None
        if not _numeric(r.dtype):
            raise TargetError(f"it returned an array of {r.dtype} values; real numbers are required")
        if r.shape != expected:
            what = "one loss per row" if len(expected) == 1 else "one value per logit"
            raise TargetError(f"it returned shape {r.shape} for {expected[0]} rows; expected {expected} ({what})")
        with np.errstate(all="ignore"):
            return r.astype(np.float64)

    # ------------------------------------------------------------ reductions
    @_shared
    def tree(self, op, x, identity: float):
        """Pairwise (tree) reduction along the last axis, each partial rounded.

        Level by level, neighbours (x0, x1), (x2, x3), ... are combined; an odd
        last element passes up unchanged (implemented as pairing with the exact
        identity, 0 for +, 1 for *).  Error bound of the sum: ~ log2(n) u.
        """
        op, back = self._sum_op(op)
        while x.shape[-1] > 1:
            if x.shape[-1] % 2:
                x = self._pad(x, identity)
            x = op(x[..., 0::2], x[..., 1::2])
        return self._narrow(x[..., 0], self.compute) if back else x[..., 0]

    def _pad(self, x, identity: float):
        """x with one more entry, ``identity``, along the last axis."""
        x = np.asarray(x)
        return np.concatenate([x, np.full(x.shape[:-1] + (1,), identity, dtype=x.dtype)], axis=-1)

    def repeat(self, op, v, n):
        """The same tree reduction over ``n[row]`` copies of ``v[row]``, in O(log n).

        The tree over n equal leaves is square-and-multiply: at each level the
        full pairs give one value V (V <- op(V, V)) and, when the count is odd,
        the last V joins the pending tail T.  Exactly equal to :meth:`tree` on the
        expanded array, for any n >= 1, in bounded memory.
        """
        op, back = self._sum_op(op)
        n = np.asarray(n, dtype=np.int64).copy()
        value = np.asarray(v).copy()
        tail = np.zeros_like(value)
        has_tail = np.zeros(value.shape, dtype=bool)
        while (n > 0).any():
            odd = (n % 2 == 1)
            joined = op(value, tail, where=odd & has_tail)
            tail = np.where(odd, np.where(has_tail, joined, value), tail).astype(value.dtype, copy=False)
            has_tail |= odd
            n //= 2
            more = n > 0
            if more.any():
                value = np.where(more, op(value, value, where=more), value).astype(value.dtype, copy=False)
        return self._narrow(tail, self.compute) if back else tail
