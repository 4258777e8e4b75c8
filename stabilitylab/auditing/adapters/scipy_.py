"""SciPy kernels under the audit protocol (self-contained: ``--emit-pytest`` copies this file).

Protocol (softmax_ce): ``f(logits (rows, K), labels (rows,) int64) -> loss (rows,)``
on numpy arrays of the format's dtype; the loss is returned in that dtype.

* ``log_softmax``: ``-scipy.special.log_softmax(x, axis=-1)[y]``.  SciPy computes
  ``tmp = x - max(x)`` (a non-finite max replaced by 0), then
  ``tmp - log(sum(exp(tmp)))`` (scipy/special/_logsumexp.py, ``log_softmax``): the
  plain log-sum-exp, never the log1p form, so the loss of a confident prediction
  (``[0, -40]``, label 0: exact 4.2e-18) comes out 0.
* ``logsumexp``: ``scipy.special.logsumexp(x, axis=-1) - x[y]``.  Since SciPy 1.15
  (PR #21597, after issue #18295) ``logsumexp`` separates the maximum's own term:
  ``log1p(s / m) + log(m) + max`` with ``s = sum_{i != k} exp(x_i - max)``, the
  log1p form; the subtraction of ``x[y]`` is done here, in the format (numpy).

NumPy evaluates float16 in float32 and rounds once per operation; SciPy's
``logsumexp`` promotes bfloat16 / float8 arrays of ml_dtypes to float64 or
float32, so only float16, float32 and float64 are audited.
"""

import numpy as np
import scipy.special


def _label_entries(x, labels):
    return np.take_along_axis(x, np.asarray(labels)[:, None], axis=1)[:, 0]


def log_softmax(logits, labels):
    """-scipy.special.log_softmax(logits, axis=-1)[row, label]."""
    return -_label_entries(scipy.special.log_softmax(logits, axis=-1), labels)


def logsumexp(logits, labels):
    """scipy.special.logsumexp(logits, axis=-1) - logits[row, label] (the subtraction in the format)."""
    lse = np.asarray(scipy.special.logsumexp(logits, axis=-1))
    return lse - _label_entries(logits, labels).astype(lse.dtype)
