"""The optional compiled kernel of the bulk softmax_ce path (``csrc/softmax_values.c``, the extension module
``_stabilitylab_kernels`` that ``pip install`` builds where a C compiler is present).

It computes, for rows of float32 logits in bfloat16, float32 or float64, what
:mod:`~stabilitylab.analysis.softmax_bulk` computes with numpy -- the stored logits, the shifted logits' and the
logits' exps, their pairwise sums, the label's terms and the four methods' values -- the float64 reference's
terms and sums around numpy's own exp (:func:`~stabilitylab.experiments.softmax_ce.fast_cross_entropy`), and the
sums of float64's bounded reference tier (:func:`~stabilitylab.experiments.softmax_ce.bounded_cross_entropy`),
a row (or 256 short rows) at a time in
buffers that stay in cache, instead of a dozen passes over whole-chunk arrays.  The operations and their
roundings are the same (see the C file's header), so the results are the same bit for bit;
tests/test_softmax_kernel.py checks that against the numpy path, and checks the kernel's float32 and float64 exp,
log and log1p against :mod:`~stabilitylab.numerics.crmath` (every float32 argument, and 2**26 float64 ones, in
the slow run).

:func:`load` returns the module, or None where it is not built (no compiler at install time), is of another
API version or lacks a function (a stale build), fails to import (a build with fast-math refuses to load: it
would flush subnormals to zero in the whole process), or is switched off with the environment variable
``STABILITYLAB_KERNEL=0`` (the numpy path then runs: the same output, slower).  :func:`status` says which, and
``stabilitylab --version`` prints it.

The float32 exp's and log's constants are made here with mpmath (:func:`exp_constants`, :func:`log_constants`),
not typed into the C file:
``T[j] = 2**(j/64)`` correctly rounded, ``64 / ln 2``, and ``ln 2 / 64`` split into a 38-bit ``c_hi``
(so ``k c_hi`` is exact for ``|k| < 2**14``) and ``c_lo``, the float64 nearest to the rest.
"""

from __future__ import annotations

import os

import mpmath
import numpy as np

__all__ = ["API", "FUNCTIONS", "load", "status", "exp_constants", "log_constants", "exp64_constants", "argmax_rows"]

API = 12
"""The kernel API this package calls (the C module's ``API``; tests/test_softmax_kernel.py pins the C file's hash
beside it, so that a change to the C file cannot keep the number)."""

FUNCTIONS = ("softmax_sums", "softmax_tail", "argmax_rows", "ref_terms", "ref_tree", "exp32_many", "log32_many",
             "set_exp_constants", "set_log_constants", "softmax_sums64", "set_exp64_constants", "exp64_many",
             "ref_expsum64", "log64_many", "softmax_tail64")
"""What this package calls in the module: a build without one of them is not loaded."""

_loaded: list = []  # [(module or None, why)], once per process


def exp_constants() -> tuple[np.ndarray, float, float, float]:
    """``(T, 64/ln2, c_hi, c_lo)`` for the kernel's float32 exp (see the module)."""
    ctx = mpmath.MPContext()
    ctx.prec = 200
    table = np.array([float(ctx.power(2, ctx.mpf(j) / 64)) for j in range(64)], dtype=np.float64)
    c = ctx.log(2) / 64
    c_hi = float(ctx.nint(c * 2**44)) / 2.0**44  # (ln2/64 is in [2**-7, 2**-6): 38 significant bits)
    return table, float(64 / ctx.log(2)), c_hi, float(c - c_hi)


def log_constants() -> tuple[np.ndarray, float, float]:
    """``(LOG_C, ln2_hi, ln2_lo)`` for the kernel's float32 log: ``log(i / 128)`` correctly rounded for i in
    [90, 180] (0 elsewhere: not read), and ln 2 split into a 40-bit ``ln2_hi`` (``e ln2_hi`` exact for
    ``|e| < 2**13``) and the float64 nearest to the rest; made with mpmath."""
    ctx = mpmath.MPContext()
    ctx.prec = 200
    table = np.zeros(256, dtype=np.float64)
    for i in range(90, 181):
        table[i] = float(ctx.log(ctx.mpf(i) / 128))
    ln2 = ctx.log(2)
    hi = float(ctx.nint(ln2 * 2**40)) / 2.0**40
    return table, hi, float(ln2 - hi)


def exp64_constants() -> tuple:
    """The float64 exp's constants, :mod:`~stabilitylab.numerics.exp64`'s and
    :mod:`~stabilitylab.numerics.doubledouble`'s own (made there with mpmath), as the kernel's
    ``set_exp64_constants`` takes them: ``(T_hi, T_lo, INV, C1, C2, (L1, L2, L3), the Taylor pairs 1/n!,
    n = 1..12, exp64.LOG_NEWTON_ERROR)``, arrays as bytes (the float64 log's bound is crmath's too)."""
    from . import doubledouble, exp64

    inv, c1, c2, t_hi, t_lo = exp64._constants()
    ln2, taylor = doubledouble._constants()
    assert doubledouble.DEGREE == 12 and doubledouble.SQUARINGS == 8 and len(t_hi) == 2048  # (the C file's)
    return (t_hi.astype(np.float64).tobytes(), t_lo.astype(np.float64).tobytes(), inv, c1, c2,
            np.array(ln2, dtype=np.float64).tobytes(), np.array(taylor, dtype=np.float64).tobytes(),
            exp64.LOG_NEWTON_ERROR)


def load():
    """The compiled module with its constants set, or None (see the module and :func:`status`)."""
    if os.environ.get("STABILITYLAB_KERNEL", "1") == "0":
        return None
    if not _loaded:
        _loaded.append(_import())
    return _loaded[0][0]


def _import():
    """(module, "") or (None, why not)."""
    try:
        import _stabilitylab_kernels as module
    except ImportError as e:  # (not built; or built with fast-math: its own message)
        return None, "not built" if "No module named" in str(e) else f"not loaded: {e}"
    except Exception as e:  # a broken build: never a crash of the command
        return None, f"not loaded: {type(e).__name__}: {e}"
    if getattr(module, "API", None) != API or not all(hasattr(module, f) for f in FUNCTIONS):
        return None, f"not loaded: API {getattr(module, 'API', None)} at {module.__file__}, this package calls {API}"
    try:
        table, inv, hi, lo = exp_constants()
        module.set_exp_constants(table.tobytes(), inv, hi, lo)
        table, hi, lo = log_constants()
        module.set_log_constants(table.tobytes(), hi, lo)
        module.set_exp64_constants(*exp64_constants())
    except Exception as e:
        return None, f"not loaded: {type(e).__name__}: {e}"
    return module, ""


def status() -> str:
    """One line: whether the compiled kernel is in use, and if not why (``stabilitylab --version`` prints it)."""
    if os.environ.get("STABILITYLAB_KERNEL", "1") == "0":
        return "compiled kernel: off (STABILITYLAB_KERNEL=0)"
    module = load()
    if module is not None:
        return f"compiled kernel: in use ({module.__file__})"
    return f"compiled kernel: {_loaded[0][1]} (the numpy path runs: the same output, slower)"


def argmax_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(top, finite)`` of float32 (rows, K) ``x`` by the kernel: each row's first maximum, NaN taken as -inf
    (``np.argmax(np.where(np.isnan(x), -np.inf, x), axis=1)``, the same indices, int64), and whether every value
    of the row is finite (``np.isfinite(x).all(axis=1)``, bool), in one pass over the rows; None where the kernel
    is not loaded or ``x`` is not float32 with K >= 1."""
    module = load()
    if module is None or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] < 1:
        return None
    x = np.ascontiguousarray(x)
    out = np.empty(len(x), dtype=np.int64)
    finite = np.empty(len(x), dtype=bool)
    module.argmax_rows(len(x), x.shape[1], x, out, finite.view(np.uint8))
    return out, finite
