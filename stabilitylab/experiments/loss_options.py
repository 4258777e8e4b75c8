"""The options of a language-model cross-entropy, as data: written once against :class:`Arith`.

The loss of a batch of T rows (tokens) of K logits x_t and labels y_t, with options
``reduction``, ``ignore_index``, ``label_smoothing`` eps, ``z_loss`` z, ``softcap`` c and
``temperature`` tau (defaults: none, no ignored label, 0, 0, no cap, 1):

1. logits: x' = c * tanh(x / c) (Gemma's soft-capping; first) then x' / tau (the temperature);
2. per row, with lse = log(sum_i exp(x'_i)) and the log-probabilities lp_i = x'_i - lse:
   ``l_t = (1 - eps) * (-lp_y) + (eps / K) * sum_i (-lp_i) + z * lse**2``
   (PyTorch's label smoothing: the uniform term summed over the whole vocabulary; PaLM's z-loss);
3. rows whose label is ``ignore_index`` count 0 and are left out of the count n of used rows;
4. ``none``: l_t (one row per case); ``sum``: sum_t l_t; ``mean``: sum_t l_t / n, where n is
   held in the compute format as a kernel holds it (a bfloat16 count of 257 is 256).  A kernel's
   mean over n = 0 rows is 0 / 0 = NaN, as PyTorch gives on purpose since its PR #64572 (torchtune
   #2341, OpenRLHF #583: the loss is NaN and training dies); the exact value follows the convention
   the fixes return, ``sum_t l_t / max(n, 1)`` = 0 (OpenRLHF #583 pads with zeros, NeMo Automodel's
   masked cross-entropy returns ``loss * 0.0``), so that NaN is status ``nan``.

A *case* is a small batch: logits (T, K), labels (T,) and its options; its value is the reduced
loss (for ``none``, T = 1 and the value is that row's loss).  Options are columns, one value per
case, so cases with different options run together (:class:`LossBatch`).

Kernels (:func:`variant_loss`) run the steps above through an :class:`Arith`: every operation is
rounded to the compute format, sums to the accumulation format.  ``centered=False`` forms
the log-probabilities as ``x' - logsumexp(x')`` (MLX #4188, PyTorch #11752: a correct logsumexp,
but at |x'| ~ 1e8 the gaps between logits are below its ulp: the loss of [1e8, 1e8] comes out
0 for ln 2); ``mask_smoothing=False`` adds the smoothing term of the
ignored rows too (PyTorch before the fix of #73205).

Exact reference (:func:`exact_variant_loss`): the same formula with mpmath at
:data:`stabilitylab.numerics.reference.DIGITS` digits on the format-rounded logits, the count n
exact.  The softcap c = 0, which :meth:`LossOptions.check` refuses (a cap is a finite c > 0 or
absent), is read by the reference as NeMo / Unsloth read it: no cap
(``logit_softcapping=0`` switches it off there).  A kernel that applies c * tanh(x / c) with c = 0
collapses every logit to 0 (x / 0 = +-inf, 0 * tanh(+-inf) = 0) or to NaN (0 / 0 at a zero logit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import mpmath
import numpy as np

from ..errors import InputError
from ..numerics.arith import Arith
from .base import Batch, Rows

__all__ = ["REDUCTIONS", "LossOptions", "LossBatch", "Loaded", "loss_case", "concat", "load", "variant_loss",
           "naive_loss", "transform", "ignored_rows", "reduced", "exact_rows", "exact_variant_loss", "with_options",
           "OPTION_COLUMNS", "option_columns"]

REDUCTIONS: tuple[str, ...] = ("none", "sum", "mean")


@dataclass(frozen=True)
class LossOptions:
    """The options of one loss (see the module docstring); :meth:`check` refuses bad values."""

    reduction: str | None = "none"
    ignore_index: int | None = None
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    temperature: float = 1.0

    def check(self) -> "LossOptions":
        """These options, or :class:`~stabilitylab.errors.InputError` (one line, naming the option).
        A ``reduction`` of None is each experiment's own (:meth:`resolved`)."""
        if self.reduction is not None and self.reduction not in REDUCTIONS:
            raise InputError(f"reduction {self.reduction!r} is not one of {', '.join(REDUCTIONS)}", "--reduction")
        if not (0.0 <= self.label_smoothing <= 1.0):
            raise InputError(f"label smoothing {self.label_smoothing!r} is outside [0, 1]", "--label-smoothing")
        if not (math.isfinite(self.z_loss) and self.z_loss >= 0):
            raise InputError(f"z-loss coefficient {self.z_loss!r} must be a finite number >= 0", "--z-loss")
        if self.softcap is not None and not (math.isfinite(self.softcap) and self.softcap > 0):
            raise InputError(f"softcap {self.softcap!r} must be a finite number > 0 (c * tanh(x / c) divides by c; "
                             "leave the option out for no cap)", "--softcap")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(f"temperature {self.temperature!r} must be a finite number > 0 (the logits are divided "
                             "by it)", "--temperature")
        return self

    def resolved(self, reduction: str) -> "LossOptions":
        """These options with ``reduction`` where none was given (softmax_ce_variants: none; linear_ce: mean)."""
        return self if self.reduction is not None else replace(self, reduction=reduction)

    def label(self) -> str:
        """Short text naming the options that differ from the defaults: ``mean,ignore=-100,ls=0.1``."""
        parts = [self.reduction]
        if self.ignore_index is not None:
            parts.append(f"ignore={self.ignore_index}")
        for name, value, default in (("ls", self.label_smoothing, 0.0), ("z", self.z_loss, 0.0),
                                     ("T", self.temperature, 1.0)):
            if value != default:
                parts.append(f"{name}={value:g}")
        if self.softcap is not None:
            parts.append(f"cap={self.softcap:g}")
        return ",".join(parts)


@dataclass(frozen=True)
class LossBatch(Batch):
    """Cases: ``logits`` (cases, T, K) float64 and ``labels`` (cases, T), padded past each case's
    ``tokens`` x ``classes``; the options as columns (``reduction`` an index into
    :data:`REDUCTIONS`; ``ignore`` with ``ignoring``; ``cap`` NaN for no cap)."""

    names: tuple[str, ...]
    logits: np.ndarray
    labels: np.ndarray
    tokens: np.ndarray
    classes: np.ndarray
    reduction: np.ndarray
    ignore: np.ndarray
    ignoring: np.ndarray
    smoothing: np.ndarray
    z: np.ndarray
    cap: np.ndarray
    temperature: np.ndarray

    def groups(self) -> list[np.ndarray]:
        """Rows of one shape (T, K) run together."""
        keys = (self.tokens * (int(self.classes.max()) + 1) + self.classes).tolist() if len(self) else []
        return [np.flatnonzero(np.array(keys) == k) for k in sorted(set(keys))]

    def options(self, i: int) -> LossOptions:
        return LossOptions(REDUCTIONS[int(self.reduction[i])], int(self.ignore[i]) if self.ignoring[i] else None,
                           float(self.smoothing[i]), float(self.z[i]),
                           None if np.isnan(self.cap[i]) else float(self.cap[i]), float(self.temperature[i]))


def loss_case(name: str, logits, labels, options: LossOptions) -> LossBatch:
    """One case: logits (T, K) (a 1-D row is T = 1), labels (T,), its options (not checked: a
    default case may hold a value the command line refuses, softcap 0)."""
    x = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    y = np.atleast_1d(np.asarray(labels, dtype=np.int64))
    if y.shape != x.shape[:1]:
        raise ValueError(f"{name}: {x.shape[0]} rows of logits, {y.size} labels")
    if options.reduction == "none" and x.shape[0] != 1:
        raise ValueError(f"{name}: reduction none is one row per case")
    return LossBatch((name,), x[None], y[None], np.array([x.shape[0]]), np.array([x.shape[1]]),
                     **option_columns(options, 1))


OPTION_COLUMNS = ("reduction", "ignore", "ignoring", "smoothing", "z", "cap", "temperature")


def option_columns(options: LossOptions, cases: int) -> dict[str, np.ndarray]:
    """The columns of :data:`OPTION_COLUMNS` holding ``options`` for ``cases`` cases (``reduction`` an
    index into :data:`REDUCTIONS`; ``ignore`` with ``ignoring``; ``cap`` NaN for no cap)."""
    o = options
    return {"reduction": np.full(cases, REDUCTIONS.index(o.reduction)),
            "ignore": np.full(cases, 0 if o.ignore_index is None else o.ignore_index, dtype=np.int64),
            "ignoring": np.full(cases, o.ignore_index is not None),
            "smoothing": np.full(cases, float(o.label_smoothing)),
            "z": np.full(cases, float(o.z_loss)), "cap": np.full(cases, np.nan if o.softcap is None else o.softcap),
            "temperature": np.full(cases, float(o.temperature))}


_COLUMNS = ("tokens", "classes", *OPTION_COLUMNS)


def concat(batches: list[LossBatch]) -> LossBatch:
    t = max(int(b.logits.shape[1]) for b in batches)
    k = max(int(b.logits.shape[2]) for b in batches)
    logits = np.concatenate([np.pad(b.logits, ((0, 0), (0, t - b.logits.shape[1]), (0, k - b.logits.shape[2])))
                             for b in batches])
    labels = np.concatenate([np.pad(b.labels, ((0, 0), (0, t - b.labels.shape[1]))) for b in batches])
    columns = {f: np.concatenate([getattr(b, f) for b in batches]) for f in _COLUMNS}
    return LossBatch(sum((b.names for b in batches), ()), logits, labels, **columns)


def with_options(cases: LossBatch, options: LossOptions) -> LossBatch:
    """The same inputs under ``options`` (checked) for every case; a case of T > 1 rows under
    ``none`` becomes T cases of one row.  Rows whose label is no class (a case's own ignored
    label) are left out unless ``options.ignore_index`` is that label; a case left with no
    row is left out."""
    options = options.check().resolved("none")
    out = []
    for i, name in enumerate(cases.names):
        t, k = int(cases.tokens[i]), int(cases.classes[i])
        x, y = cases.logits[i, :t, :k], cases.labels[i, :t]
        keep = ((y >= 0) & (y < k)) | (y == options.ignore_index if options.ignore_index is not None else False)
        if not keep.any():
            continue
        x, y, t = x[keep], y[keep], int(keep.sum())
        if options.reduction == "none":
            out += [loss_case(f"{name} row {j} | {options.label()}", x[j], y[j:j + 1], options) for j in range(t)]
        else:
            out.append(loss_case(f"{name} | {options.label()}", x, y, options))
    return concat(out)


@dataclass(frozen=True)
class Loaded(Rows):
    """A group's inputs in the format: logits (cases, T, K), labels (cases, T), the option columns."""

    logits: np.ndarray
    labels: np.ndarray
    reduction: np.ndarray
    ignore: np.ndarray
    ignoring: np.ndarray
    smoothing: np.ndarray
    z: np.ndarray
    cap: np.ndarray
    temperature: np.ndarray


def load(arith: Arith, cases: LossBatch) -> Loaded:
    """The group's logits (one shape T x K) rounded to the (storage) format."""
    t, k = int(cases.tokens[0]), int(cases.classes[0])
    return Loaded(arith.load(cases.logits[:, :t, :k]), cases.labels[:, :t], cases.reduction, cases.ignore,
                  cases.ignoring, cases.smoothing, cases.z, cases.cap, cases.temperature)


def _column(a: Arith, values: np.ndarray, ndim: int) -> np.ndarray:
    """A per-case constant rounded to the compute format, shaped to broadcast over ``ndim`` axes."""
    return a.const(np.asarray(values, dtype=np.float64).reshape((-1,) + (1,) * (ndim - 1)))


def transform(a: Arith, logits: np.ndarray, x) -> np.ndarray:
    """Step 1 on logits (cases, ..., K): x' = c * tanh(x / c) on the capped cases, then x' / tau on the
    cases whose temperature is not 1 (``x`` holds the ``cap`` and ``temperature`` columns)."""
    capped = ~np.isnan(x.cap)
    shape = (-1,) + (1,) * (logits.ndim - 1)
    if capped.any():  # c * tanh(x / c), on the capped cases' rows only
        c = _column(a, np.where(capped, x.cap, 1.0), logits.ndim)
        logits = np.where(capped.reshape(shape),
                          a.mul(c, a.tanh(a.div(logits, c, where=capped), where=capped), where=capped),
                          logits).astype(a.dtype, copy=False)
    warm = x.temperature != 1
    if warm.any():
        tau = _column(a, x.temperature, logits.ndim)
        logits = np.where(warm.reshape(shape), a.div(logits, tau, where=warm), logits).astype(a.dtype, copy=False)
    return logits


def ignored_rows(x) -> tuple[np.ndarray, np.ndarray]:
    """(ignored (cases, T), the labels with 0 in place of the ignored ones: an index to pick with)."""
    ignored = x.ignoring[:, None] & (x.labels == x.ignore[:, None])
    return ignored, np.where(ignored, 0, x.labels)


def _pick(values: np.ndarray, label: np.ndarray) -> np.ndarray:
    return np.take_along_axis(values, label[..., None], axis=-1)[..., 0]


def reduced(a: Arith, x, nll: np.ndarray, k: int, *, uniform, square, mask_smoothing: bool = True) -> np.ndarray:
    """Steps 2-4 from one formulation's pieces, per row (cases, T): ``nll`` = -lp_y, ``uniform()`` =
    sum_i -lp_i (called only for cases with label smoothing) and ``square(where)`` = the z-loss's lse**2
    (on the cases ``where`` z > 0); K = ``k`` classes.  ``mask_smoothing=False`` adds the ignored rows'
    smoothing term (eps / K) * sum_i -lp_i too (PyTorch before #73205)."""
    ignored, _ = ignored_rows(x)
    t = nll.shape[1]
    row = nll
    smooth = x.smoothing > 0
    if smooth.any():
        eps = x.smoothing
        smoothed = a.add(a.mul(_column(a, 1 - eps, 2), nll, where=smooth),
                         a.mul(_column(a, eps / k, 2), uniform(), where=smooth), where=smooth)
        row = np.where(smooth[:, None], smoothed, row).astype(a.dtype, copy=False)
    zl = x.z > 0
    if zl.any():
        with_z = a.add(row, a.mul(_column(a, x.z, 2), square(zl), where=zl), where=zl)
        row = np.where(zl[:, None], with_z, row).astype(a.dtype, copy=False)
    kept = np.where(ignored, 0, row).astype(a.dtype, copy=False)
    if not mask_smoothing and smooth.any():  # the ignored rows' smoothing term counted too (#73205)
        extra = a.mul(_column(a, x.smoothing / k, 2), uniform(), where=smooth)
        kept = np.where(ignored & smooth[:, None], extra, kept).astype(a.dtype, copy=False)
    if t == 1:
        total = kept[:, 0]
    else:
        total = a.tree(a.add, kept, 0.0)
    mean = x.reduction == REDUCTIONS.index("mean")
    if mean.any():
        n = _column(a, (~ignored).sum(axis=1), 1)  # the count held in the compute format
        total = np.where(mean, a.div(total, n, where=mean), total).astype(a.dtype, copy=False)
    return total


def variant_loss(a: Arith, x: Loaded, *, centered: bool = True, mask_smoothing: bool = True) -> np.ndarray:
    """The reduced loss of each case (module docstring, steps 1-4), every operation through ``a``.

    With m = max x' and s = sum exp(x' - m): ``centered``: lp = (x' - m) - log(s) (else
    lp = x' - (m + log(s)), a correct logsumexp minus x': MLX #4188); z-loss's lse = m + log(s);
    ``mask_smoothing``: ignored rows add nothing (else their smoothing term is added)."""
    logits = transform(a, x.logits, x)
    m = a.max(logits)
    z = a.sub(logits, m[..., None])  # x' - m: every exp(z) <= 1
    log_sum = a.log(a.tree(a.add, a.exp(z), 0.0))
    if centered:
        lp = a.sub(z, log_sum[..., None])  # log-probabilities from the shifted logits
    else:  # lse = m + log_sum (a correct logsumexp), then x' - lse: the gaps are lost in lse
        lp = a.sub(logits, a.add(m, log_sum)[..., None])
    _, label = ignored_rows(x)

    def square(where):
        lse = a.add(m, log_sum, where=where)
        return a.mul(lse, lse, where=where)

    return reduced(a, x, a.neg(_pick(lp, label)), logits.shape[-1],
                   uniform=lambda: a.neg(a.tree(a.add, lp, 0.0)), square=square, mask_smoothing=mask_smoothing)


def naive_loss(a: Arith, x: Loaded) -> np.ndarray:
    """The options with unshifted exponentials: with e = exp(x') and S = sum_i e_i, -lp_y =
    -log(e_y / S), sum_i -lp_i = -sum_i log(e_i / S), lse = log(S) (exp overflows with a common offset)."""
    logits = transform(a, x.logits, x)
    e = a.exp(logits)
    total = a.tree(a.add, e, 0.0)
    _, label = ignored_rows(x)

    def square(where):
        lse = a.log(total, where=where)
        return a.mul(lse, lse, where=where)

    return reduced(a, x, a.neg(a.log(a.div(_pick(e, label), total))), logits.shape[-1],
                   uniform=lambda: a.neg(a.tree(a.add, a.log(a.div(e, total[..., None])), 0.0)), square=square)


def exact_rows(x: Loaded):
    """Per case: (logits as a tuple of row tuples, labels, reduction, ignore index or None, eps, z,
    cap or None, temperature), Python floats of the format-rounded logits."""
    logits = x.logits.astype(np.float64)
    return [(tuple(tuple(r) for r in logits[i].tolist()), tuple(x.labels[i].tolist()), int(x.reduction[i]),
             int(x.ignore[i]) if x.ignoring[i] else None, float(x.smoothing[i]), float(x.z[i]),
             None if np.isnan(x.cap[i]) else float(x.cap[i]), float(x.temperature[i]))
            for i in range(len(logits))]


def _exact_row(row, y, eps, z, cap, tau):
    """One row's l_t (module docstring, steps 1-2) in mpmath."""
    xs = [mpmath.mpf(v) for v in row]
    if cap:
        c = mpmath.mpf(cap)
        xs = [c * mpmath.tanh(v / c) for v in xs]
    xs = [v / tau for v in xs]
    m = max(xs)
    lse = m + mpmath.log(mpmath.fsum(mpmath.exp(v - m) for v in xs))
    return (1 - eps) * (lse - xs[y]) + eps / len(xs) * mpmath.fsum(lse - v for v in xs) + z * lse**2


def exact_variant_loss(logits, labels, reduction, ignore, eps, z, cap, tau):
    """The loss of the module docstring in mpmath (the working precision set by the caller);
    a mean over no rows is sum / max(n, 1) = 0 (the convention the fixes of the all-ignored NaN
    return: OpenRLHF #583, NeMo Automodel); a cap of 0 or None is no cap."""
    eps, z, tau = mpmath.mpf(eps), mpmath.mpf(z), mpmath.mpf(tau)
    rows, n, seen = [], 0, {}
    for row, y in zip(logits, labels):
        if ignore is not None and y == ignore:
            continue
        n += 1
        if (row, y) not in seen:  # (a batch often repeats a row: each distinct one costs once)
            seen[(row, y)] = _exact_row(row, y, eps, z, cap, tau)
        rows.append(seen[(row, y)])
    total = mpmath.fsum(rows) if rows else mpmath.mpf(0)
    if REDUCTIONS[reduction] == "mean":
        return total / max(n, 1)
    return total
