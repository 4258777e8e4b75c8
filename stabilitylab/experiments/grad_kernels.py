"""Gradient kernels: the derivatives of the losses with respect to the logits, written once.

Like the loss kernels, each is written once against the arithmetic context ``a``
(:class:`~stabilitylab.numerics.arith.Arith` on points, :class:`~stabilitylab.numerics.interval.IntervalArith`
on ranges) and does all its arithmetic through it.  They are the one set of gradient formulas
of the package: the ``gradient`` experiment, the ``softmax_ce_grad`` / ``binary_ce_grad``
experiments (``audit --grad``) and the training loop (:mod:`stabilitylab.training.train`) call them.

Softmax cross-entropy, ``L = -log softmax(x)_y`` of a row of logits ``x`` (axis -1) with label y::

    dL/dx_j = softmax(x)_j - [j == y]

* :func:`softmax_minus_onehot`  ``exp(x_j) / sum_i exp(x_i) - [j == y]`` (``shift``: with
  ``z = x - max x`` in place of x: no overflow, but exp(z_j) may underflow to 0);
* :func:`exp_log_softmax_minus_onehot`  ``exp(z_j - lse) - [j == y]`` with
  ``lse = log(sum_i exp(z_i))`` (``log1p``: ``log1p(sum_{i != k} exp(z_i))``, k = argmax x);
  the backward of log_softmax + nll_loss;
* :func:`log_softmax_others`  ``p_j = exp(z_j - lse)`` for ``j != y`` and, at the label,
  ``p_y - 1 = -sum_{j != y} p_j`` (no cancellation where p_y is close to 1).

These take ``onehot`` (the values ``[j == y]`` in the format) or the labels, and ``c``: None for
the whole gradient (rows, K), or a component index per row for the entries ``dL/dx_c`` (rows,)
(only that component's divisions and subtractions are evaluated, so only they record events).

Binary cross-entropy from a logit z with target y (``L = -y log s - (1 - y) log(1 - s)``,
``s = sigmoid(z)``), elementwise::

    dL/dz = sigmoid(z) - y

* :func:`sigmoid_minus_y`  ``1 / (1 + exp(-z)) - y`` (exp(-z) overflows for z < -ln(max));
* :func:`stable_sigmoid_minus_y`  the sigmoid branched on the sign of z (:meth:`Arith.sigmoid`), minus y;
* :func:`sigmoid_minus_y_branched`  ``sigmoid(z)`` where y = 0, ``-sigmoid(-z)`` where y = 1
  (the same branched sigmoid; no subtraction, so nothing cancels).

Squared error through the sigmoid, ``L = (s - y)**2 / 2``, elementwise::

    dL/dz = (s - y) s (1 - s)

* :func:`mse_sigmoid`  with the branched sigmoid: the factor ``s (1 - s) = sigmoid'(z)`` makes it
  vanish when the output saturates.

At +-inf and NaN the kernels give what the formulas give in IEEE arithmetic (``inf / inf``
= NaN in the unshifted softmax of a logit above ln(max), ...): they are the formulations under
study, not guarded versions of them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["softmax_minus_onehot", "exp_log_softmax_minus_onehot", "log_softmax_others", "sigmoid_minus_y",
           "stable_sigmoid_minus_y", "sigmoid_minus_y_branched", "mse_sigmoid"]


# ------------------------------------------------------------------ helpers
def _entries(a, v, c):
    """The entries of a (rows, K) ``v`` the caller asked for: all (``c`` None) or v[row, c[row]]."""
    return v if c is None else a.pick(v, c)


def _per_row(s, c):
    """A value per row, against those entries: (rows, 1) against all of them, (rows,) against one each."""
    return s[:, None] if c is None else s


def _select(a, chosen: np.ndarray, if_chosen, otherwise):
    """``if_chosen`` where the boolean array ``chosen`` holds, else ``otherwise`` (broadcast).

    A choice fixed by the labels, made with the context's branch on a sign (``where_nonneg``) on a
    constant: 0 where chosen, -1 elsewhere (a constant never straddles 0, so on ranges the branch
    taken is exact too, never a hull)."""
    return a.where_nonneg(np.where(chosen, 0.0, -1.0), if_chosen, otherwise)


def _lse(a, logits, z, log1p: bool):
    """log sum_i exp(z_i) with z = x - max x: ``log`` of the whole sum, or ``log1p`` of the sum
    without the argmax's term exp(0) = 1."""
    if log1p:
        return a.log1p(a.tree(a.add, a.drop(a.exp(z), a.argmax(logits)), 0.0))
    return a.log(a.tree(a.add, a.exp(z), 0.0))


# ------------------------------------------------------------------ softmax cross-entropy
def softmax_minus_onehot(a, logits, onehot, c=None, *, shift: bool = False):
    """``exp(x_j) / sum_i exp(x_i) - [j == y]``; ``shift``: ``exp(z_j) / sum_i exp(z_i) - [j == y]``,
    ``z = x - max x``.

    ``logits`` (rows, K); ``onehot``: ``[j == y]`` as format values, (rows, K) for the whole
    gradient or (rows,) for the components ``c`` (index per row; None: every component)."""
    e = a.exp(a.shift(logits) if shift else logits)
    return a.sub(a.div(_entries(a, e, c), _per_row(a.tree(a.add, e, 0.0), c)), onehot)


def exp_log_softmax_minus_onehot(a, logits, onehot, c=None, *, log1p: bool = False):
    """``exp(z_j - lse) - [j == y]``, ``z = x - max x``, ``lse = log(sum_i exp(z_i))`` or, with
    ``log1p``, ``log1p(sum_{i != k} exp(z_i))`` (k = argmax x).  Arguments as
    :func:`softmax_minus_onehot`."""
    z = a.shift(logits)
    return a.sub(a.exp(a.sub(_entries(a, z, c), _per_row(_lse(a, logits, z, log1p), c))), onehot)


def log_softmax_others(a, logits, labels: np.ndarray, c=None, *, log1p: bool = False):
    """``p_j = exp(z_j - lse)`` for ``j != y`` and ``-sum_{j != y} p_j`` at ``j = y`` (= p_y - 1,
    without its cancellation), ``z`` and ``lse`` as :func:`exp_log_softmax_minus_onehot`.

    ``labels``: y per row (integers); ``c``: None for the whole gradient (rows, K), or an index
    per row for those entries (every p_j is computed either way: the label's entry sums them)."""
    z = a.shift(logits)
    p = a.exp(a.sub(z, _lse(a, logits, z, log1p)[:, None]))
    others = a.tree(a.add, a.drop(p, labels), 0.0)  # sum_{j != y} p_j
    at_label = np.arange(p.shape[-1])[None, :] == np.asarray(labels)[:, None]
    return _entries(a, _select(a, at_label, a.neg(others)[:, None], p), c)


# ------------------------------------------------------------------ binary cross-entropy
def _ones(a, z):
    return a.const(np.ones(z.shape))


def sigmoid_minus_y(a, z, y):
    """``1 / (1 + exp(-z)) - y``, elementwise (``y``: format values)."""
    one = _ones(a, z)
    return a.sub(a.div(one, a.add(one, a.exp(a.neg(z)))), y)


def stable_sigmoid_minus_y(a, z, y):
    """``sigmoid(z) - y`` with the sigmoid branched on the sign of z (exp never overflows)."""
    return a.sub(a.sigmoid(z)[0], y)


def sigmoid_minus_y_branched(a, z, ones: np.ndarray):
    """``sigmoid(z) - y`` without a subtraction: ``sigmoid(z)`` where y = 0, ``-sigmoid(-z)``
    where y = 1 (``ones``: the boolean y == 1); both sigmoids branched on the sign of z."""
    p, q = a.sigmoid(z)
    return _select(a, np.asarray(ones, dtype=bool), a.neg(q), p)


def mse_sigmoid(a, z, y):
    """``(s - y) s (1 - s)``, ``s = sigmoid(z)`` branched on the sign of z: dL/dz of
    ``(s - y)**2 / 2``."""
    s = a.sigmoid(z)[0]
    return a.mul(a.mul(a.sub(s, y), s), a.sub(_ones(a, s), s))
