"""JAX kernels under the audit protocol (self-contained: ``--emit-pytest`` copies this file).

Protocol (softmax_ce), on numpy arrays of the format's dtype (jax takes ml_dtypes'
bfloat16 and float8 arrays as they are): ``f(logits (rows, K), labels (rows,) int64)
-> loss (rows,)``; ``log_softmax_grad`` returns d(loss)/d(logits), (rows, K), by ``jax.grad``.

``log_softmax``: ``-jax.nn.log_softmax(x)[y]``; jax (jax/_src/nn/functions.py)
computes ``shifted = x - max(x)`` (max with ``initial=-inf``), then
``shifted - log(sum(exp(shifted)))``: no log1p form.  In float8_e4m3fn, which has
no infinity, that ``initial=-inf`` is NaN.

Protocol cast ``f(x (rows,) float32, dtype: str) -> x stored in the format (rows,)``:
``cast`` is ``jnp.asarray(x).astype(dtype)`` with ml_dtypes' dtype of that name, read back as
float64 (exact).  XLA's conversions give ml_dtypes' values (overflow to inf, or NaN for a format
without inf; float4_e2m1fn, which has neither, saturates).  jax 0.10 has no float6 (XLA: "Invalid
XLA PrimitiveType: F6E2M3FN"): not offered.

Every call runs with ``jax.enable_x64(True)`` (without it jax computes float64
inputs in float32) and is jit-compiled; batches are padded to a power of 8
rows (copies of the first row, dropped from the result) so a threshold scan
compiles a handful of shapes, not one per batch, and are passed as numpy arrays
(``jnp.asarray`` compiles a copy of its own per shape).
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

try:
    _x64 = jax.enable_x64  # a context manager (jax >= 0.7)
except AttributeError:  # older jax
    from jax.experimental import enable_x64 as _x64


def _pick(x, labels):
    return jnp.take_along_axis(x, labels[:, None], axis=-1)[:, 0]


def _log_softmax(x, y):
    return -_pick(jax.nn.log_softmax(x, axis=-1), y)


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
    with _x64(True):  # (numpy arrays go to the compiled function as they are: jnp.asarray would compile a
        # copy per shape, as many compilations again as the kernel's)
        out = _compiled(kernel, grad)(logits, labels)
        return np.asarray(out)[:n]


def log_softmax(logits, labels):
    return _call(_log_softmax, logits, labels)


def log_softmax_grad(logits, labels):
    return _call(_log_softmax, logits, labels, grad=True)


# the formats XLA converts float32 to on the CPU (no float6), but the scale format float8_e8m0fnu: a cast
# audit judges values by the status rule, which does not apply to a format with no zero and no sign (as -d
# refuses it everywhere)
CAST_FORMATS = ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                "float8_e5m2fnuz", "float8_e4m3", "float8_e3m4", "float4_e2m1fn")


def cast(x, dtype):
    target = np.dtype(dtype) if dtype in ("float16", "float32", "float64") else np.dtype(getattr(ml_dtypes, dtype))
    with _x64(True):
        return np.asarray(jnp.asarray(np.asarray(x, dtype=np.float32)).astype(target)).astype(np.float64)
