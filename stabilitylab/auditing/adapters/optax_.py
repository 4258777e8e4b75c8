"""Optax losses under the audit protocol (self-contained: ``--emit-pytest`` copies this file).

Protocols, on numpy arrays of the format's dtype (jax takes ml_dtypes' bfloat16
and float8 arrays as they are):

* softmax_ce ``f(logits (rows, K), labels (rows,) int64) -> loss (rows,)``;
* binary_ce ``f(logits (rows, K), labels (rows, K)) -> loss (rows,)`` (summed over K);
* the ``*_grad`` functions return d(loss)/d(logits), shape (rows, K), by ``jax.grad``.

What each computes (read in optax/losses/_classification.py; the audit measures,
it does not assume):

* ``softmax_cross_entropy``: ``optax.softmax_cross_entropy(x, one_hot(y))`` =
  ``-sum(labels * jax.nn.log_softmax(x))``; a -inf logit whose label weight is 0
  gives 0 * -inf = NaN (optax #896).  The one-hot labels are an input, as in a
  training step (built inside the same jit, XLA folds the product into a select
  and the NaN disappears: the audit would then measure another program);
* ``softmax_cross_entropy_with_integer_labels``: ``jax.nn.logsumexp(x) - x[y]``
  (logsumexp: ``max + log(sum(exp(x - max)))``, no log1p form);
* ``sigmoid_binary_cross_entropy``: ``-y log_sigmoid(z) - (1 - y) log_sigmoid(-z)``,
  summed over K here.

Every call runs with ``jax.enable_x64(True)`` (without it jax computes float64
inputs in float32) and is jit-compiled; batches are padded to a power of 8
rows (copies of the first row, dropped from the result).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

try:
    _x64 = jax.enable_x64  # a context manager (jax >= 0.7)
except AttributeError:  # older jax
    from jax.experimental import enable_x64 as _x64
import optax


def _softmax_cross_entropy(x, one_hot):
    return optax.softmax_cross_entropy(x, one_hot)


def _one_hot(logits, labels):
    """The one-hot labels as an input array of the logits' dtype, made outside jit: built inside
    the same jitted graph, XLA folds one_hot * log_probs into a select and 0 * -inf never happens."""
    out = np.zeros(np.shape(logits), dtype=np.asarray(logits).dtype)
    np.put_along_axis(out, np.asarray(labels)[:, None], 1, axis=1)
    return out


def _softmax_cross_entropy_with_integer_labels(x, y):
    return optax.softmax_cross_entropy_with_integer_labels(x, y)


def _sigmoid_binary_cross_entropy(z, y):
    return optax.sigmoid_binary_cross_entropy(z, y).sum(-1)


@functools.lru_cache(maxsize=None)
def _compiled(kernel, grad):
    if grad:
        return jax.jit(lambda x, y: jax.grad(lambda v: kernel(v, y).sum())(x))
    return jax.jit(kernel)


def _call(kernel, logits, labels, grad=False):
    logits, labels = np.asarray(logits), np.asarray(labels)
    n = logits.shape[0]
    size = 8
    while size < n:
        size *= 8
    if size != n:  # pad with copies of the first row: one compiled shape per power of 8 rows
        logits = np.concatenate([logits, np.repeat(logits[:1], size - n, axis=0)])
        labels = np.concatenate([labels, np.repeat(labels[:1], size - n, axis=0)])
    with _x64(True):
        out = _compiled(kernel, grad)(jnp.asarray(logits), jnp.asarray(labels))
        return np.asarray(out)[:n]


def softmax_cross_entropy(logits, labels):
    return _call(_softmax_cross_entropy, logits, _one_hot(logits, labels))


def softmax_cross_entropy_grad(logits, labels):
    return _call(_softmax_cross_entropy, logits, _one_hot(logits, labels), grad=True)


def softmax_cross_entropy_with_integer_labels(logits, labels):
    return _call(_softmax_cross_entropy_with_integer_labels, logits, labels)


def softmax_cross_entropy_with_integer_labels_grad(logits, labels):
    return _call(_softmax_cross_entropy_with_integer_labels, logits, labels, grad=True)


def sigmoid_binary_cross_entropy(logits, labels):
    return _call(_sigmoid_binary_cross_entropy, logits, labels)


def sigmoid_binary_cross_entropy_grad(logits, labels):
    return _call(_sigmoid_binary_cross_entropy, logits, labels, grad=True)
