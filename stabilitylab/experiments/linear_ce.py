"""linear_ce: cross-entropy of a linear layer's logits, ``loss = mean_n CE(hidden_n @ weight.T, y_n)``,
with its gradients, as fused and chunked kernels compute them.

**What a case is.**  A case is one *problem*: ``hidden`` (N, D), ``weight`` (V, D), ``labels`` (N,),
the number of token ``chunks`` the chunked methods split the N tokens into, the ``vocab_chunk``
(columns per block of the vocabulary-chunked method), and the two gradient entries reported:
``weight_entry`` = (v, j) of dL/dweight and ``hidden_entry`` = (n, j) of dL/dhidden.  Every method
gives one value per case (the engine's model):

* the *loss methods* give the mean loss ``L = (1/N) sum_n (lse(x_n) - x_{n,y_n})``, x = hidden @ weight.T;
* the *gradient methods* give one gradient entry each, measured against its own exact value
  (``Method.truth``), as the ``gradient`` experiment does:
  ``dL/dW[v, j] = (1/N) sum_n (p_{n,v} - [v = y_n]) h_{n,j}``,
  ``dL/dH[n, j] = (1/N) sum_v (p_{n,v} - [v = y_n]) W_{v,j}``, and the true-class gradient of one
  token's own loss ``p_{n,y} - 1`` (token n of ``hidden_entry``), p = softmax(x_n).

Gradients are therefore outcomes *per chosen entry*, not every entry of (N, D) and (V, D) with a
summary per row: the engine keeps one value per case (see docs/guides/large-vocabulary.md).

**Inputs** (stable names, used by the audit adapters): :class:`LinearCEBatch` (the cases, float64,
one problem per case, arrays per case in tuples so that problems of different shapes share a batch;
rows of one shape and chunking run together) and :class:`LinearCEInputs` (what kernels take: the
format-rounded ``hidden`` (c, N, D), ``weight`` (c, V, D), ``labels`` (c, N) of one group of c cases).

**The dot products** ``x_{n,v} = sum_j h_{n,j} W_{v,j}`` are simulated operation by operation
through :class:`~stabilitylab.numerics.arith.Arith`: each product rounded to the policy's compute
format (a bfloat16 x bfloat16 product is exact in float32: 8 + 8 <= 24 bits), the D products summed
pairwise with every addition rounded to the accumulation format and the sum rounded once to the compute
format (``-d bf16``: everything bfloat16; ``-d bf16@fp32``: bfloat16 inputs, float32 products and sums;
``-d bf16+fp32``: float32 sums).  Memory is c * N * V * D held values: small problems only.

**Methods** (L = loss, G = gradient entry):

* ``materialized_log_softmax`` (L): logits, then per token ``log(sum exp(x - m)) - (x_y - m)``;
* ``materialized_naive`` (L): logits, then ``-log(exp(x_y) / sum exp(x))`` (overflows with a common offset);
* ``vocab_chunks_online`` (L): the vocabulary in blocks of ``vocab_chunk`` columns, an online
  log-sum-exp: running max m and running sum s <- s exp(m_old - m) + sum_block exp(x - m), each update
  one accumulating addition then rounded to the compute format (as a fused kernel keeps s in registers
  of the compute format); the logits of a block are the same dot products;
* ``grad_weight`` (G): dL/dW[v, j] in one pass over the tokens: g = (exp(z - lse) - onehot) / N in the
  compute format, the N products g h summed pairwise (accumulation format);
* ``grad_weight_chunks_storage`` (G): the tokens in ``chunks`` chunks; each chunk's partial sum as in
  ``grad_weight``; the partials accumulated across chunks in a buffer of the *storage* format (Liger-Kernel
  #512: a bfloat16 ``grad_weight`` += each chunk's gradient);
* ``grad_weight_chunks_fp32`` (G): the same with a float32 buffer (Liger's ``accum_dtype=float32``; in the
  compute format when that has 24 bits or more), written to the storage format at the end;
* ``grad_hidden`` (G): dL/dH[n, j], the V products g W summed pairwise;
* ``grad_logit_true`` (G): p_y - 1 of token n in the compute format;
* ``grad_logit_true_storage`` (G): p_y written to the storage format, then p_y - 1 in the storage
  format (Liger-Kernel #1329: bfloat16 p_y - 1 cancels: p_y = 0.99 has an error of about 20 %).

**Exact references.**  The logits of the format-rounded inputs are exact sums of exact products: with
mpmath at :data:`~stabilitylab.numerics.reference.DIGITS` digits every product of two float64 values is
exact and ``mpmath.fsum`` of the D products is their sum to 40 digits (relative to the sum of the
products' magnitudes); for inputs of at most 26 bits the products are exact in float64 and are summed as
a hi + lo pair (:func:`_dot2`: within about D**2 2**-106 of the sum of the products' magnitudes).  The
loss per token is then softmax_ce's exact form
``log1p(sum_{v != y} exp(x_v - x_y))``; ``p_{n,v} = exp(x_v - lse)`` and
``p_y - 1 = -s / (1 + s)`` with s = sum_{v != y} exp(x_v - x_y) (no cancellation); the gradient entries are
mpmath sums of those exact terms (each exp(x_v - max) once; s = sum_{v != y} e_v / e_y).  Errors: far
below 2**-90 relative (absolute in the logits), beyond any format's ulp.  There is no vectorized
reference yet: families are sized so that mpmath finishes (a problem's reference is computed once and
shared by the four truths and by cases that differ only in chunking).

**Families** (all over integers, scanned completely, so every threshold is exact):

* ``confident`` n: logits [0, -n/16], label 0 (p_y -> 1 as n grows: the loss ~ e**-d and p_y - 1 cancel);
* ``offset`` n: logits [n, n - 1, n - 2, n - 3] through a hidden coordinate equal to n (common offset:
  the naive form's exp overflows);
* ``vocab`` n: V = 2**n classes, logits [0, -2, -2, ...], label 0, blocks of 128 columns (the online
  sum adds 2**n / 128 block sums in the compute format and stalls once they fall below half its ulp);
* ``chunks`` n: 1024 tokens in 2**n chunks, dL/dW at a class no token has as its label (every term has
  one sign): the storage-format buffer adds 2**n partials;
* ``hidden`` n: D = 2**n, hidden all ones, weight rows [1.5, 1, 1, ...] and [1, 1, ...], label 0: the
  logits D + 0.5 and D differ by 0.5 whatever D, which a format stops resolving once D reaches 2**p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache

import mpmath
import numpy as np

from ..numerics.arith import Arith
from ..numerics.formats import FORMATS
from .base import Batch, Experiment, Family, Method, Rows, Settings, Truth
from .loss_options import (
    OPTION_COLUMNS,
    Loaded,
    LossOptions,
    exact_variant_loss,
    ignored_rows,
    naive_loss,
    option_columns,
    reduced,
    transform,
)

__all__ = ["LinearCEBatch", "LinearCEInputs", "LINEAR_CE", "problem", "concat", "default_cases",
           "CHUNK_TOKENS", "VOCAB_BLOCK", "with_options", "with_options_experiment", "exact_sum_gradients"]

MEAN = LossOptions("mean")  # linear_ce's loss without options: the mean over the N tokens
CHUNK_TOKENS = 1024  # tokens of the chunks family and of the default chunk cases
VOCAB_BLOCK = 128  # columns per block of the vocab family's online log-sum-exp


@dataclass(frozen=True)
class LinearCEBatch(Batch):
    """Cases (problems) of ``linear_ce``: per case ``hidden[i]`` (N, D), ``weight[i]`` (V, D) float64,
    ``labels[i]`` (N,) int64; ``chunks`` (cases,) token chunks of the chunked methods; ``vocab_chunk``
    (cases,) columns per vocabulary block; ``weight_entry`` / ``hidden_entry`` (cases, 2) the gradient
    entries reported: (v, j) of dL/dW and (n, j) of dL/dH (n is also the token of p_y - 1)."""

    names: tuple[str, ...]
    hidden: tuple[np.ndarray, ...]
    weight: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    chunks: np.ndarray
    vocab_chunk: np.ndarray
    weight_entry: np.ndarray
    hidden_entry: np.ndarray
    # the loss options (loss_options.OPTION_COLUMNS, one value per case; default: the mean, nothing else)
    reduction: np.ndarray
    ignore: np.ndarray
    ignoring: np.ndarray
    smoothing: np.ndarray
    z: np.ndarray
    cap: np.ndarray
    temperature: np.ndarray

    def take(self, rows: np.ndarray) -> "LinearCEBatch":
        rows = np.asarray(rows).tolist()
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            picked[f.name] = tuple(value[i] for i in rows) if isinstance(value, tuple) else value[rows]
        return replace(self, **picked)

    def groups(self) -> list[np.ndarray]:
        """Cases of one shape (N, V, D), token chunking and vocabulary block run together."""
        keys = [(h.shape, w.shape, int(c), int(b)) for h, w, c, b in
                zip(self.hidden, self.weight, self.chunks.tolist(), self.vocab_chunk.tolist())]
        order: dict = {}
        for i, k in enumerate(keys):
            order.setdefault(k, []).append(i)
        return [np.array(v, dtype=np.int64) for v in order.values()]


def problem(hidden, weight, labels, name: str, *, chunks: int = 1, vocab_chunk: int | None = None,
            weight_entry: tuple[int, int] | None = None, hidden_entry: tuple[int, int] = (0, 0),
            options: LossOptions = MEAN) -> LinearCEBatch:
    """One case.  Defaults: one token chunk, one vocabulary block, dL/dW at (label of token 0, 0), the
    mean loss without other options."""
    h = np.asarray(hidden, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if h.ndim != 2 or w.ndim != 2 or h.shape[1] != w.shape[1] or y.shape != (h.shape[0],):
        raise ValueError(f"hidden (N, D), weight (V, D), labels (N,) expected; got {h.shape}, {w.shape}, {y.shape}")
    entry = (int(y[0]) if 0 <= y[0] < w.shape[0] else 0, 0) if weight_entry is None else weight_entry
    return LinearCEBatch((name,), (h,), (w,), (y,), np.array([chunks], dtype=np.int64),
                         np.array([w.shape[0] if vocab_chunk is None else vocab_chunk], dtype=np.int64),
                         np.array([entry], dtype=np.int64), np.array([hidden_entry], dtype=np.int64),
                         **option_columns(options, 1))


_COLUMNS = ("chunks", "vocab_chunk", "weight_entry", "hidden_entry", *OPTION_COLUMNS)


def concat(batches: Sequence[LinearCEBatch]) -> LinearCEBatch:
    return LinearCEBatch(sum((b.names for b in batches), ()), sum((b.hidden for b in batches), ()),
                         sum((b.weight for b in batches), ()), sum((b.labels for b in batches), ()),
                         **{f: np.concatenate([getattr(b, f) for b in batches]) for f in _COLUMNS})


# ------------------------------------------------------------------ inputs and kernels
@dataclass(frozen=True)
class LinearCEInputs(Rows):
    """Format-rounded inputs of one group of c cases: ``hidden`` (c, N, D), ``weight`` (c, V, D) held
    values, ``labels`` (c, N), and per case ``chunks``, ``vocab_chunk``, ``weight_entry``, ``hidden_entry``
    (equal chunking within a group)."""

    hidden: np.ndarray
    weight: np.ndarray
    labels: np.ndarray
    chunks: np.ndarray
    vocab_chunk: np.ndarray
    weight_entry: np.ndarray
    hidden_entry: np.ndarray
    reduction: np.ndarray
    ignore: np.ndarray
    ignoring: np.ndarray
    smoothing: np.ndarray
    z: np.ndarray
    cap: np.ndarray
    temperature: np.ndarray


def load(arith: Arith, cases: LinearCEBatch) -> LinearCEInputs:
    return LinearCEInputs(arith.load(np.stack(cases.hidden)), arith.load(np.stack(cases.weight)),
                          np.stack(cases.labels), **{f: getattr(cases, f) for f in _COLUMNS})


def _pick(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """x[..., index[...]] along the last axis (an exact read)."""
    return np.take_along_axis(x, np.asarray(index)[..., None], axis=-1)[..., 0]


def logits(a: Arith, x: LinearCEInputs) -> np.ndarray:
    """x_{c,n,v} = sum_j h_{c,n,j} W_{c,v,j}: products in the compute format, summed pairwise in the
    accumulation format, rounded to the compute format (see the module docstring)."""
    products = a.mul(x.hidden[:, :, None, :], x.weight[:, None, :, :])
    return a.tree(a.add, products, 0.0)


def _lse(a: Arith, z: np.ndarray) -> np.ndarray:
    """log(sum_v exp(z_v)) of shifted logits (max 0), pairwise sum."""
    return a.log(a.tree(a.add, a.exp(z), 0.0))


def _as_loss(a: Arith, x: LinearCEInputs) -> Loaded:
    """The materialized logits (c, N, V) with the labels and options: a batch of loss_options' kernels."""
    return Loaded(logits(a, x), x.labels, **{f: getattr(x, f) for f in OPTION_COLUMNS})


def materialized_log_softmax(a: Arith, x: LinearCEInputs):
    """The options (loss_options, steps 1-4) on the materialized logits: with z = x' - max x' and
    log_sum = log(sum exp(z)), -lp_y = log_sum - z_y, sum_i -lp_i = -sum_i (z_i - log_sum), lse = max + log_sum."""
    xs = transform(a, logits(a, x), x)
    m = a.max(xs)
    z = a.sub(xs, m[..., None])
    log_sum = _lse(a, z)
    _, label = ignored_rows(x)

    def square(where):
        lse = a.add(m, log_sum, where=where)
        return a.mul(lse, lse, where=where)

    return reduced(a, x, a.sub(log_sum, _pick(z, label)), xs.shape[-1],
                   uniform=lambda: a.neg(a.tree(a.add, a.sub(z, log_sum[..., None]), 0.0)), square=square)


def materialized_naive(a: Arith, x: LinearCEInputs):
    return naive_loss(a, _as_loss(a, x))


def _block_lse(a: Arith, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max, sum exp(x - max)) of one block of columns."""
    top = a.max(part)
    return top, a.tree(a.add, a.exp(a.sub(part, top[..., None])), 0.0)


def online_lse(a: Arith, xs: np.ndarray, block: int) -> np.ndarray:
    """log-sum-exp over the last axis in blocks of ``block`` columns with a running max m and a running
    sum s: s <- s exp(m_old - m_new) + sum_block exp(x - m_new), the addition an accumulating one (a
    two-term tree) rounded to the compute format; result log(s) + m."""
    m = s = None
    for start in range(0, xs.shape[-1], block):
        part = xs[..., start:start + block]
        if m is None:
            m, s = _block_lse(a, part)
            continue
        new = a.maximum(m, a.max(part))
        block_sum = a.tree(a.add, a.exp(a.sub(part, new[..., None])), 0.0)
        s = a.tree(a.add, np.stack([a.mul(s, a.exp(a.sub(m, new))), block_sum], axis=-1), 0.0)
        m = new
    return a.add(a.log(s), m)


def _online(a: Arith, x: LinearCEInputs, square=None):
    """The options (loss_options, steps 1-4) with the online lse over vocabulary blocks: -lp_y = lse - x'_y,
    sum_i -lp_i = V lse - sum_i x'_i, the z-loss's lse**2 from the final lse (or ``square(xs, where)``)."""
    xs = transform(a, logits(a, x), x)
    lse = online_lse(a, xs, int(x.vocab_chunk[0]))
    _, label = ignored_rows(x)
    k = xs.shape[-1]
    return reduced(a, x, a.sub(lse, np.take_along_axis(xs, label[..., None], axis=-1)[..., 0]), k,
                   uniform=lambda: a.sub(a.mul(a.const(np.full(lse.shape, float(k))), lse), a.tree(a.add, xs, 0.0)),
                   square=(lambda w: a.mul(lse, lse, where=w)) if square is None else (lambda w: square(xs, w)))


def vocab_chunks_online(a: Arith, x: LinearCEInputs):
    return _online(a, x)


def vocab_chunks_z_per_chunk(a: Arith, x: LinearCEInputs):
    """``vocab_chunks_online`` whose z-loss is z * sum_b lse_b**2 over the vocabulary blocks b, lse_b the
    block's own log-sum-exp (the bug class issue #20 names: lse = log(sum_b exp(lse_b)), and lse**2 is not
    sum_b lse_b**2); equal to the online method when z = 0 or when the vocabulary is one block."""
    block = int(x.vocab_chunk[0])

    def square(xs, where):
        parts = []
        for start in range(0, xs.shape[-1], block):
            top, total = _block_lse(a, xs[..., start:start + block])
            lse_b = a.add(a.log(total, where=where), top, where=where)
            parts.append(a.mul(lse_b, lse_b, where=where))
        return a.tree(a.add, np.stack(parts, axis=-1), 0.0)

    return _online(a, x, square)


def _onehot(a: Arith, x: LinearCEInputs, shape) -> np.ndarray:
    return a.const((np.arange(shape[-1]) == x.labels[..., None]).astype(np.float64))


def _probabilities(a: Arith, x: LinearCEInputs) -> np.ndarray:
    """p = exp(z - lse(z)), z = x - max x (the backward of log_softmax)."""
    z = a.shift(logits(a, x))
    return a.exp(a.sub(z, _lse(a, z)[..., None]))


def dlogits(a: Arith, x: LinearCEInputs) -> np.ndarray:
    """g = (p - onehot) / N in the compute format: the gradient of the mean loss w.r.t. the logits."""
    p = _probabilities(a, x)
    n = p.shape[1]
    return a.div(a.sub(p, _onehot(a, x, p.shape)), a.const(np.full(p.shape, float(n))))


def _weight_terms(a: Arith, x: LinearCEInputs) -> np.ndarray:
    """g_{n,v} h_{n,j} (c, N) at each case's (v, j)."""
    g = dlogits(a, x)
    c = np.arange(g.shape[0])
    v, j = x.weight_entry[:, 0], x.weight_entry[:, 1]
    return a.mul(g[c, :, v], x.hidden[c, :, j])


def grad_weight(a: Arith, x: LinearCEInputs):
    return a.tree(a.add, _weight_terms(a, x), 0.0)


def _chunk_partials(a: Arith, x: LinearCEInputs) -> np.ndarray:
    """Per token chunk, its partial sum of g h (c, chunks): chunks of ceil(N / chunks) tokens, each
    summed pairwise (zeros pad the last chunk: adding 0 is exact and leaves a pairwise tree unchanged)."""
    terms = _weight_terms(a, x)
    k = int(x.chunks[0])
    size = -(-terms.shape[1] // k)
    padded = np.zeros((terms.shape[0], k * size), dtype=terms.dtype)
    padded[:, :terms.shape[1]] = terms
    return a.tree(a.add, padded.reshape(terms.shape[0], k, size), 0.0)


def _accumulated(a: Arith, partials: np.ndarray, fmt) -> np.ndarray:
    buffer = np.zeros(partials.shape[0], dtype=partials.dtype)
    for i in range(partials.shape[1]):
        buffer = a.add_in(fmt, buffer, partials[:, i])
    return buffer


def grad_weight_chunks_storage(a: Arith, x: LinearCEInputs):
    return _accumulated(a, _chunk_partials(a, x), a.storage)


def grad_weight_chunks_fp32(a: Arith, x: LinearCEInputs):
    fmt = a.compute if a.compute.precision >= 24 else FORMATS["float32"]
    return a.write_back(_accumulated(a, _chunk_partials(a, x), fmt))  # (cast back to the weight's dtype)


def grad_hidden(a: Arith, x: LinearCEInputs):
    g = dlogits(a, x)
    c = np.arange(g.shape[0])
    n, j = x.hidden_entry[:, 0], x.hidden_entry[:, 1]
    return a.tree(a.add, a.mul(g[c, n, :], x.weight[c, :, j]), 0.0)


def _true_probability(a: Arith, x: LinearCEInputs) -> np.ndarray:
    p = _probabilities(a, x)
    c = np.arange(p.shape[0])
    n = x.hidden_entry[:, 0]
    return p[c, n, x.labels[c, n]]


def grad_logit_true(a: Arith, x: LinearCEInputs):
    py = _true_probability(a, x)
    return a.sub(py, a.const(np.ones(py.shape)))


def grad_logit_true_storage(a: Arith, x: LinearCEInputs):
    py = a.write_back(_true_probability(a, x))
    return a.add_in(a.storage, py, a.neg(a.const(np.ones(py.shape))))


# ------------------------------------------------------------------ exact references
def exact_rows(x: LinearCEInputs) -> list[tuple]:
    """Per case: (hidden, weight, labels as nested tuples of floats, weight entry, hidden entry)."""
    rows = []
    for c in range(x.hidden.shape[0]):
        h = tuple(map(tuple, x.hidden[c].astype(np.float64).tolist()))
        w = tuple(map(tuple, x.weight[c].astype(np.float64).tolist()))
        rows.append((h, w, tuple(x.labels[c].tolist()), tuple(x.weight_entry[c].tolist()),
                     tuple(x.hidden_entry[c].tolist())))
    return rows


def _dot2(hidden: np.ndarray, weight: np.ndarray):
    """hidden @ weight.T as float64 pairs (hi, lo), or None where this is not exact enough.

    For inputs of at most 26 significant bits (every format of <= 24 bits) each product h_j w_j is exact in
    float64; the D products are then summed by Ogita, Rump and Oishi's Sum2 (a cascade of TwoSum: the
    running sum and the exact error of each addition, the errors summed apart), kept as the unevaluated
    pair hi + lo: |hi + lo - sum_j h_j w_j| <= gamma_{D-1}**2 sum_j |h_j w_j|, gamma_k = k u / (1 - k u),
    u = 2**-53, i.e. about D**2 2**-106 of the sum of the products' magnitudes.  None for wider inputs or
    non-finite sums (mpmath then sums the products itself)."""
    with np.errstate(all="ignore"):
        if not all(np.array_equal(a, a.astype(np.float32).astype(np.float64)) for a in (hidden, weight)):
            return None
        if np.abs(hidden).max() * np.abs(weight).max() > 2.0**400:
            return None
        products = hidden[:, None, :] * weight[None, :, :]
        hi = products[..., 0].copy()
        lo = np.zeros_like(hi)
        for j in range(1, products.shape[-1]):
            b = products[..., j]
            total = hi + b
            bb = total - hi
            lo += (hi - (total - bb)) + (b - bb)
            hi = total
        return (hi, lo) if np.isfinite(hi).all() and np.isfinite(lo).all() else None


@lru_cache(maxsize=8)
def _exact_logits(hidden: tuple, weight: tuple, prec: int):
    """(H, W, X): the inputs and the exact logits X = H W^T of one problem as mpf (mpmath at ``prec``), or
    None for non-finite inputs."""
    with mpmath.workprec(prec):
        if not all(math.isfinite(v) for row in hidden + weight for v in row):
            return None
        mp: dict[float, mpmath.mpf] = {}  # (constructed problems repeat values: each converted and exp'd once)
        H = [[mp.get(v) or mp.setdefault(v, mpmath.mpf(v)) for v in row] for row in hidden]
        W = [[mp.get(v) or mp.setdefault(v, mpmath.mpf(v)) for v in row] for row in weight]
        pair = _dot2(np.array(hidden), np.array(weight)) if len(H[0]) > 1 else None
        if len(H[0]) == 1:  # one exact product each
            X = [[h[0] * w[0] for w in W] for h in H]
        elif pair is not None:
            X = [[mpmath.mpf(a) + mpmath.mpf(b) for a, b in zip(*rows)] for rows in zip(*(p.tolist() for p in pair))]
        else:
            X = [[mpmath.fsum(hv * wv for hv, wv in zip(h, w)) for w in W] for h in H]
        return H, W, X


@lru_cache(maxsize=8)
def _solve(hidden: tuple, weight: tuple, labels: tuple, prec: int):
    """Exact logits, losses, probabilities and true-class gradients of one problem (mpmath at ``prec``)."""
    logits = _exact_logits(hidden, weight, prec)
    if logits is None:
        return None
    H, W, X = logits
    with mpmath.workprec(prec):
        losses, P, G = [], [], []
        for xs, y in zip(X, labels):
            m = max(xs)
            seen: dict = {}
            e = [seen.get(v) or seen.setdefault(v, mpmath.exp(v - m)) for v in xs]
            s = mpmath.fsum(v for i, v in enumerate(e) if i != y) / e[y]  # sum_{v != y} exp(x_v - x_y)
            losses.append(mpmath.log1p(s))  # softmax_ce's exact form, log1p(sum_{v != y} exp(x_v - x_y))
            total = e[y] * (1 + s)
            p = [v / total for v in e]
            p[y] = 1 / (1 + s)
            P.append(p)
            G.append(-s / (1 + s))  # p_y - 1 without cancellation
        return H, W, losses, P, G


def _problem(hidden, weight, labels):
    return _solve(hidden, weight, labels, mpmath.mp.prec)


def exact_loss(hidden, weight, labels, weight_entry, hidden_entry):
    """(1/N) sum_n log1p(sum_{v != y_n} exp(x_{n,v} - x_{n,y_n})) with the exact logits."""
    solved = _problem(hidden, weight, labels)
    if solved is None:
        return mpmath.mpf("nan")
    losses = solved[2]
    return mpmath.fsum(losses) / len(losses)


def exact_loss_options(hidden, weight, labels, weight_entry, hidden_entry, reduction, ignore, eps, z, cap, tau):
    """The loss with options (loss_options' exact formula, written once there) of the exact logits."""
    logits = _exact_logits(hidden, weight, mpmath.mp.prec)
    if logits is None:
        return mpmath.mpf("nan")
    return exact_variant_loss(tuple(map(tuple, logits[2])), labels, reduction, ignore, eps, z, cap, tau)


def exact_rows_options(x: LinearCEInputs) -> list[tuple]:
    """:func:`exact_rows` with each case's options: (reduction, ignore index or None, eps, z, cap or None, tau)."""
    return [row + (int(x.reduction[c]), int(x.ignore[c]) if x.ignoring[c] else None, float(x.smoothing[c]),
                   float(x.z[c]), None if np.isnan(x.cap[c]) else float(x.cap[c]), float(x.temperature[c]))
            for c, row in enumerate(exact_rows(x))]


def _dlogit(P, G, labels, n: int, v: int):
    """p_{n,v} - [v = y_n], exact: the true class's p_y - 1 from G (no cancellation), the others' p_{n,v}."""
    return G[n] if labels[n] == v else P[n][v]


def exact_grad_weight(hidden, weight, labels, weight_entry, hidden_entry):
    """(1/N) sum_n (p_{n,v} - [v = y_n]) h_{n,j} at (v, j) = weight_entry."""
    solved = _problem(hidden, weight, labels)
    if solved is None:
        return mpmath.mpf("nan")
    H, _, _, P, G = solved
    v, j = weight_entry
    return mpmath.fsum(_dlogit(P, G, labels, n, v) * H[n][j] for n in range(len(H))) / len(H)


def exact_grad_hidden(hidden, weight, labels, weight_entry, hidden_entry):
    """(1/N) sum_v (p_{n,v} - [v = y_n]) W_{v,j} at (n, j) = hidden_entry."""
    solved = _problem(hidden, weight, labels)
    if solved is None:
        return mpmath.mpf("nan")
    H, W, _, P, G = solved
    n, j = hidden_entry
    return mpmath.fsum(_dlogit(P, G, labels, n, v) * W[v][j] for v in range(len(W))) / len(H)


def exact_grad_logit_true(hidden, weight, labels, weight_entry, hidden_entry):
    """p_{n,y_n} - 1 = -s / (1 + s), s = sum_{v != y} exp(x_v - x_y), at n = hidden_entry[0]."""
    solved = _problem(hidden, weight, labels)
    if solved is None:
        return mpmath.mpf("nan")
    return solved[4][hidden_entry[0]]


def exact_sum_gradients(hidden, weight, labels) -> list:
    """Every entry of the gradients of sum_n loss_n (the protocol's ``d sum(loss)``): d/d weight (V, D) then
    d/d hidden (N, D), row-major, as mpf (the caller's precision): ``sum_n g_nv h_nj`` and ``sum_v g_nv W_vj``,
    g_nv = p_nv - [v = y_n] (p_y - 1 = -s / (1 + s) without cancellation); NaN for non-finite inputs."""
    solved = _problem(hidden, weight, labels)
    if solved is None:
        return [mpmath.mpf("nan")] * (len(weight) * len(weight[0]) + len(hidden) * len(hidden[0]))
    H, W, _, P, G = solved
    g = [[_dlogit(P, G, labels, n, v) for v in range(len(W))] for n in range(len(H))]
    gt, ht, wt = list(zip(*g)), list(zip(*H)), list(zip(*W))  # columns: g[:, v], H[:, j], W[:, j]
    dw = [mpmath.fdot(gt[v], ht[j]) for v in range(len(W)) for j in range(len(ht))]
    dh = [mpmath.fdot(g[n], wt[j]) for n in range(len(H)) for j in range(len(wt))]
    return dw + dh


LOSS = Truth(exact_loss, exact_rows)
GRAD_WEIGHT = Truth(exact_grad_weight, exact_rows)
GRAD_HIDDEN = Truth(exact_grad_hidden, exact_rows)
GRAD_LOGIT_TRUE = Truth(exact_grad_logit_true, exact_rows)
LOSS_OPTIONS = Truth(exact_loss_options, exact_rows_options)


# ------------------------------------------------------------------ cases
def _chunk_problem() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1024 tokens, V = 8, D = 4 (seeded): hidden in [0.5, 1.5), weight N(0, 1), labels among the first
    7 classes, so that dL/dW[7, j] = (1/N) sum_n p_{n,7} h_{n,j} is a sum of positive terms."""
    rng = np.random.default_rng(20261207)
    hidden = rng.uniform(0.5, 1.5, size=(CHUNK_TOKENS, 4))
    weight = rng.normal(0.0, 1.0, size=(8, 4))
    labels = rng.integers(0, 7, size=CHUNK_TOKENS)
    return hidden, weight, labels


def _confident(d: float, name: str) -> LinearCEBatch:
    return problem([[1.0]], [[0.0], [-d]], [0], name)


def default_cases() -> LinearCEBatch:
    rng = np.random.default_rng(7)
    out = [_confident(float(np.log(p / (1 - p))), f"confident:p_y={p:g} (logits [0,-ln(p/(1-p))],y=0)")
           for p in (0.9, 0.99, 0.999)]
    hidden, weight, labels = _chunk_problem()
    out += [problem(hidden, weight, labels, f"chunks={k} (N={CHUNK_TOKENS},V=8,D=4; dW[7,0], no label 7)",
                    chunks=k, weight_entry=(7, 0)) for k in (1, 4, 16, 64, 256, 1024)]
    out.append(problem([[1.0, 100.0]], [[0.0, 1.0], [-1.0, 1.0], [-2.0, 1.0], [-3.0, 1.0]], [1],
                       "offset:logits [100,99,98,97],y=1"))
    out.append(problem(rng.normal(0, 1, (16, 32)), rng.normal(0, 0.5, (512, 32)), rng.integers(0, 512, 16),
                       "random:N=16,V=512,D=32 (seeded), vocab blocks of 64", vocab_chunk=64))
    return concat(out)


def _names(parameter: str, values) -> tuple[str, ...]:
    return tuple(f"{parameter}={int(v)}" for v in values)


def confident_cases(n: np.ndarray, settings: Settings) -> LinearCEBatch:
    """logits [0, -n/16], label 0 (D = 1: hidden [[1]], weight [[0], [-n/16]])."""
    return concat([_confident(float(v) / 16, name) for v, name in zip(n.tolist(), _names("n", n))])


def offset_cases(n: np.ndarray, settings: Settings) -> LinearCEBatch:
    """logits [n, n-1, n-2, n-3], label 1: hidden [[1, n]], weight rows [-i, 1]."""
    weight = [[0.0, 1.0], [-1.0, 1.0], [-2.0, 1.0], [-3.0, 1.0]]
    return concat([problem([[1.0, float(v)]], weight, [1], name) for v, name in zip(n.tolist(), _names("n", n))])


def vocab_cases(n: np.ndarray, settings: Settings) -> LinearCEBatch:
    """V = 2**n classes, logits [0, -2, ..., -2], label 0, vocabulary blocks of VOCAB_BLOCK columns."""
    out = []
    for v, name in zip(n.tolist(), _names("n", n)):
        weight = np.full((2 ** int(v), 1), -2.0)
        weight[0, 0] = 0.0
        out.append(problem([[1.0]], weight, [0], name, vocab_chunk=VOCAB_BLOCK))
    return concat(out)


def chunks_cases(n: np.ndarray, settings: Settings) -> LinearCEBatch:
    """The 1024-token problem of the default cases in 2**n token chunks; dL/dW[7, 0]."""
    hidden, weight, labels = _chunk_problem()
    return concat([problem(hidden, weight, labels, name, chunks=2 ** int(v), weight_entry=(7, 0))
                   for v, name in zip(n.tolist(), _names("n", n))])


def hidden_cases(n: np.ndarray, settings: Settings) -> LinearCEBatch:
    """D = 2**n: hidden all ones, weight rows [1.5, 1, ..., 1] and [1, ..., 1], label 0: logits D + 0.5, D."""
    out = []
    for v, name in zip(n.tolist(), _names("n", n)):
        d = 2 ** int(v)
        weight = np.ones((2, d))
        weight[0, 0] = 1.5
        out.append(problem(np.ones((1, d)), weight, [0], name))
    return concat(out)


FAMILIES = (
    Family("confident", "n", "logits [0, -n/16], label 0: p_y -> 1 (the loss ~ e**-d, p_y - 1 cancels)",
           confident_cases, integer=True, lower=1, upper=1024),
    Family("offset", "n", "logits [n, n-1, n-2, n-3], label 1 (a common offset n)", offset_cases,
           integer=True, lower=0, upper=1024),
    Family("vocab", "n", f"V = 2**n classes, logits [0, -2, ..., -2], label 0, blocks of {VOCAB_BLOCK}",
           vocab_cases, integer=True, lower=10, upper=18),
    Family("chunks", "n", f"{CHUNK_TOKENS} tokens in 2**n chunks, dL/dW of a class no token has", chunks_cases,
           integer=True, lower=0, upper=CHUNK_TOKENS.bit_length() - 1),
    Family("hidden", "n", "D = 2**n, logits D + 0.5 and D, label 0", hidden_cases, integer=True, lower=0, upper=14),
)

LINEAR_CE = Experiment(
    name="linear_ce",
    title="Linear cross-entropy: materialized, vocabulary-chunked, token-chunked; loss and gradients",
    question="Which way of computing mean_n CE(hidden @ weight.T) and its gradients loses the loss or the "
             "gradient, and for which inputs?",
    methods=(
        Method("materialized_log_softmax", "mean_n [log sum_v exp(x_nv - m_n) - (x_ny - m_n)], x = h W^T",
               materialized_log_softmax, stable=True),
        Method("materialized_naive", "mean_n -log(exp(x_ny) / sum_v exp(x_nv))", materialized_naive),
        Method("vocab_chunks_online", "mean_n [online lse over vocabulary blocks - x_ny]", vocab_chunks_online,
               stable=True),
        Method("grad_weight", "dL/dW[v,j] = sum_n g_nv h_nj, g = (p - onehot)/N", grad_weight, stable=True,
               truth=GRAD_WEIGHT),
        Method("grad_weight_chunks_storage", "dL/dW[v,j]: token-chunk partials added in a storage-format buffer",
               grad_weight_chunks_storage, truth=GRAD_WEIGHT),
        Method("grad_weight_chunks_fp32", "dL/dW[v,j]: token-chunk partials added in a float32 buffer",
               grad_weight_chunks_fp32, stable=True, truth=GRAD_WEIGHT),
        Method("grad_hidden", "dL/dH[n,j] = sum_v g_nv W_vj", grad_hidden, stable=True, truth=GRAD_HIDDEN),
        Method("grad_logit_true", "p_y - 1 in the compute format", grad_logit_true, stable=True,
               truth=GRAD_LOGIT_TRUE),
        Method("grad_logit_true_storage", "p_y - 1 with p_y written to the storage format",
               grad_logit_true_storage, truth=GRAD_LOGIT_TRUE),
    ),
    default_cases=default_cases,
    load=load,
    truth=LOSS,
    families=FAMILIES,
    default=False,  # its thresholds take 10-17 s per format: it runs when named (-e linear_ce)
)


# ------------------------------------------------------------------ loss options (compare --reduction ... -e linear_ce)
def with_options(cases: LinearCEBatch, options: LossOptions) -> LinearCEBatch:
    """The problems' inputs under ``options`` (checked) instead of the mean.

    Problems that differ only in their token chunking are one problem here (the loss does not depend on
    it); every vocabulary is split into at least two blocks (so a per-block z-loss differs from the whole
    row's); with an ``ignore_index`` two problems are added: the seeded random problem with every other
    label set to it, and the same with every label set to it (a mean over no rows); ``none`` makes each
    token of a problem a case of its own; a reduction left out (None) is the mean.
    """
    options = options.check().resolved("mean")
    seen, out = set(), []
    for i, name in enumerate(cases.names):
        h, w, y = cases.hidden[i], cases.weight[i], cases.labels[i]
        key = (h.tobytes(), w.tobytes(), y.tobytes(), h.shape, w.shape)
        if key in seen:
            continue
        seen.add(key)
        if int(cases.chunks[i]) > 1 or name.startswith("chunks="):  # (the loss does not depend on the chunking)
            name = f"tokens:N={h.shape[0]},V={w.shape[0]},D={h.shape[1]} (seeded; the chunks cases' problem)"
        out.append((name, h, w, y, min(int(cases.vocab_chunk[i]), -(-w.shape[0] // 2))))
    if options.ignore_index is not None:
        h, w, y, block = next(((h, w, y, b) for name, h, w, y, b in out if name.startswith("random")), out[-1][1:])
        some = np.where(np.arange(len(y)) % 2 == 1, options.ignore_index, y)
        every = np.full_like(y, options.ignore_index)
        out += [(f"every other label {options.ignore_index}", h, w, some, block),
                (f"every label {options.ignore_index} (a mean over no rows)", h, w, every, block)]
    label = options.label()
    batch = []
    for name, h, w, y, block in out:
        if options.reduction == "none":
            batch += [problem(h[n:n + 1], w, y[n:n + 1], f"{name} token {n} | {label}", vocab_chunk=block,
                              options=options) for n in range(len(y))]
        else:
            batch.append(problem(h, w, y, f"{name} | {label}", vocab_chunk=block, options=options))
    return concat(batch)


LOSS_METHODS = ("materialized_log_softmax", "materialized_naive", "vocab_chunks_online")


def with_options_experiment() -> Experiment:
    """linear_ce under loss options: its loss methods measured against the loss with the options (exact:
    loss_options' formula on the exact logits), and ``vocab_chunks_z_per_chunk``.  The gradient methods are
    left out: they compute the gradient of the mean loss without options."""
    return replace(LINEAR_CE, methods=tuple(LINEAR_CE.method(m) for m in LOSS_METHODS) + (
        Method("vocab_chunks_z_per_chunk", "vocab_chunks_online with z * sum_b lse_b**2 over the vocabulary blocks",
               vocab_chunks_z_per_chunk, exact_formula=False),), truth=LOSS_OPTIONS, families=())
