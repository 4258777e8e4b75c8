"""Issue #20 item 3: audit targets for linear cross-entropy kernels, ``f(hidden (N, D), weight (V, D),
labels (N,)) -> loss (N,)`` and, with --grad, the gradients of sum(loss) with respect to hidden and weight.

Each runnable adapter is checked against a plain float64 numpy reference written here (it shares nothing with
stabilitylab): ``loss_i = logsumexp(h_i . W^T) - h_i . W_{y_i}``, ``dL/dh = (P - Y) W``, ``dL/dW = (P - Y)^T h``
with ``P = softmax(h W^T)`` row by row and ``Y`` the one-hot labels."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitylab.auditing import adapters

torch = pytest.importorskip("torch", reason="the linear CE adapters need torch (the torch extra)")
ml_dtypes = pytest.importorskip("ml_dtypes")

RUNNABLE = [n for n, a in adapters.ADAPTERS.items() if a.experiment == "linear_ce" and a.installed]
MISSING = [n for n, a in adapters.ADAPTERS.items() if a.experiment == "linear_ce" and not a.installed]
DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32, "float64": np.float64}
# float64 of the format's inputs against the format's output: relative (loss, gradients in max-norm) bounds met
# by a kernel that forms the logits and the loss with float32 (or float64) accumulation and rounds once
LOOSE = {"bfloat16": 2.0**-6, "float16": 2.0**-8, "float32": 2.0**-18, "float64": 2.0**-45}


def reference(h, w, y):
    """float64 loss (N,), dL/dh (N, D), dL/dW (V, D) of sum(loss), plain numpy."""
    h, w = np.asarray(h, dtype=np.float64), np.asarray(w, dtype=np.float64)
    z = h @ w.T
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    loss = (m[:, 0] + np.log(s[:, 0])) - z[np.arange(len(y)), y]
    p = e / s
    p[np.arange(len(y)), y] -= 1.0
    return loss, p @ w, p.T @ h


def inputs(dtype, n=6, d=16, v=300, seed=20):
    rng = np.random.default_rng(seed)
    h = rng.normal(0.0, 1.0, size=(n, d)).astype(dtype)
    w = rng.normal(0.0, 0.5, size=(v, d)).astype(dtype)
    y = rng.integers(0, v, size=n).astype(np.int64)
    return h, w, y


def relative(got, want):
    got = np.asarray(got, dtype=np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_registered_with_their_formats():
    table = {a.name: a for a in adapters.ADAPTERS.values() if a.experiment == "linear_ce"}
    assert set(table) == {"torch.linear_cross_entropy", "torch.linear_cross_entropy_chunked",
                          "cce.linear_cross_entropy"}
    assert all(a.grad is not None for a in table.values())
    assert {"bfloat16", "float16", "float32"} <= set(table["torch.linear_cross_entropy"].formats)
    assert "triton" in table["cce.linear_cross_entropy"].requires  # imported by the package even on the CPU


@pytest.mark.parametrize("name", MISSING)
def test_missing_library_is_one_clear_line(name):
    with pytest.raises(adapters.MissingLibrary, match=r"not installed: pip install"):
        adapters.ADAPTERS[name].module_object()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", RUNNABLE)
def test_values_and_gradients_against_float64(name, dtype):
    adapter = adapters.ADAPTERS[name]
    if dtype not in adapter.formats:
        pytest.skip(f"{name} does not support {dtype}")
    h, w, y = inputs(DTYPES[dtype])
    loss, gh, gw = reference(h, w, y)
    got = adapter.callable()(h, w, y)
    assert got.shape == (len(y),) and got.dtype == np.dtype(DTYPES[dtype])
    assert relative(got, loss) <= LOOSE[dtype], relative(got, loss)
    got_h, got_w = adapter.callable(grad=True)(h, w, y)
    assert got_h.shape == h.shape and got_w.shape == w.shape
    assert got_h.dtype == got_w.dtype == np.dtype(DTYPES[dtype])
    assert relative(got_h, gh) <= LOOSE[dtype], relative(got_h, gh)
    assert relative(got_w, gw) <= LOOSE[dtype], relative(got_w, gw)


def test_the_check_can_fail():
    """The reference tells a wrong kernel: a loss without the true-class logit, a gradient without the -1."""
    h, w, y = inputs(np.float32)
    loss, gh, _ = reference(h, w, y)
    assert relative(loss + 1.0, loss) > LOOSE["bfloat16"]
    z = h.astype(np.float64) @ w.T.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert relative(p @ w, gh) > LOOSE["bfloat16"]
