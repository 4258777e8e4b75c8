"""PyTorch kernels under the audit protocol (self-contained: ``--emit-pytest`` copies this file).

Protocols, on numpy arrays of the format's dtype (bfloat16 arrays of ml_dtypes
cross to torch through an int16 view, bit for bit):

* softmax_ce ``f(logits (rows, K), labels (rows,) int64) -> loss (rows,)``;
* binary_ce ``f(logits (rows, K), labels (rows, K)) -> loss (rows,)`` (summed over K);
* the ``*_grad`` functions return d(loss)/d(logits), shape (rows, K), by autograd;
* linear_ce ``f(hidden (N, D), weight (V, D), labels (N,) int64) -> loss (N,)``; its ``*_grad``
  functions return ``(d sum(loss)/d hidden (N, D), d sum(loss)/d weight (V, D))`` by autograd.

What each computes (ATen, CPU; read in aten/src/ATen/native/LossNLL.cpp, Loss.cpp,
cpu/SoftMaxKernel.cpp; the audit measures, it does not assume):

* ``cross_entropy``: ``F.cross_entropy(x, y, reduction="none")`` = ``nll_loss(log_softmax(x))``;
  log_softmax on the last dim is ``x - max - log(sum exp(x - max))`` (no log1p form);
* ``log_softmax``: ``-F.log_softmax(x, dim=-1)[y]``, the same kernel, picked here;
* ``bce_with_logits``: ``F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1)``:
  ``(1 - y) z - log_sigmoid(z)`` in recent releases (older ones:
  ``max_val + log(exp(-max_val) + exp(-z - max_val))``); for z = +inf, y = 1 the
  ``(1 - y) z`` term is 0 * inf = NaN (pytorch #102894);
* ``bce``: ``F.binary_cross_entropy(torch.sigmoid(z), y, reduction="none").sum(-1)``: the
  probability is rounded to the format first, then ``(y - 1) max(log1p(-p), -100) -
  y max(log(p), -100)`` (BCELoss clamps each log at -100).

* ``linear_cross_entropy``: ``F.linear_cross_entropy(h, W, y, reduction="none")`` with ``options=None``,
  its reference path: ``cross_entropy(linear(h, W), y)``, the (N, V) logits rounded to the format;
* ``linear_cross_entropy_chunked``: the same with ``options=torch.nn.LinearCrossEntropyOptions()``, the
  chunked path (the batch in chunks, the logits never whole; the gradients formed in the forward).  Its
  ``"auto"`` defaults on the CPU are ``acc_policy="accurate"``, ``chunking_method="aspect_ratio"`` for
  bfloat16 / float16 and ``acc_dtype`` float32 (torch/nn/modules/linear_cross_entropy_options.py,
  ``_AUTO_DEFAULTS``: "only chunked policy with fp32 weight-grad mm").  ``F.linear_cross_entropy`` is new
  in torch 2.13; an older torch raises ``NotImplementedError``.

float8 tensors exist, but these CPU kernels are not implemented for them
("not implemented for 'Float8_e4m3fn'"): float16, bfloat16, float32, float64 only.

Protocol cast ``f(x (rows,) float32, dtype: str) -> x stored in the format (rows,)``:
``cast`` is ``torch.from_numpy(x).to(torch.<dtype>)``, read back as float64 (exact).  torch's
CPU conversions (c10/util/Float8_*.h) differ in their overflow convention: float8_e4m3fn
**saturates** (1e4 and +inf become 448: what ``float8_e4m3fn:saturate`` computes), float8_e5m2
overflows to inf, float8_e4m3fnuz / e5m2fnuz give their NaN.  float4_e2m1fn_x2 (two values
packed in a byte) cannot be cast to ("copy_kernel" not implemented for 'Float4_e2m1fn_x2',
torch 2.13): not offered.
"""

import ml_dtypes
import numpy as np
import torch
import torch.nn.functional as F


def to_torch(x):
    """A numpy array (ml_dtypes bfloat16 included) as a CPU tensor, bit for bit."""
    x = np.array(x, copy=True, order="C")
    if x.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


def to_numpy(t):
    """A tensor as a numpy array of the same format, bit for bit."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _pick(t, labels):
    return t.gather(1, labels[:, None])[:, 0]


def _ce(x, y):
    return F.cross_entropy(x, y, reduction="none")


def _ls(x, y):
    return -_pick(F.log_softmax(x, dim=-1), y)


def _bcel(z, y):
    return F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1)


def _bce(z, y):
    return F.binary_cross_entropy(torch.sigmoid(z), y, reduction="none").sum(-1)


def _loss(kernel, logits, labels):
    with torch.no_grad():
        return to_numpy(kernel(to_torch(logits), to_torch(labels)))


def _grad(kernel, logits, labels):
    x = to_torch(logits).requires_grad_(True)
    loss = kernel(x, to_torch(labels))
    (g,) = torch.autograd.grad(loss, x, grad_outputs=torch.ones_like(loss))
    return to_numpy(g)


def cross_entropy(logits, labels):
    return _loss(_ce, logits, labels)


def cross_entropy_grad(logits, labels):
    return _grad(_ce, logits, labels)


def log_softmax(logits, labels):
    return _loss(_ls, logits, labels)


def log_softmax_grad(logits, labels):
    return _grad(_ls, logits, labels)


def bce_with_logits(logits, labels):
    return _loss(_bcel, logits, labels)


def bce_with_logits_grad(logits, labels):
    return _grad(_bcel, logits, labels)


def bce(logits, labels):
    return _loss(_bce, logits, labels)


def bce_grad(logits, labels):
    return _grad(_bce, logits, labels)


# a format (stabilitylab's canonical name; ``:saturate`` names the saturating variant) -> the torch dtype; not
# the scale format float8_e8m0fnu (torch casts to it, but a cast audit's status rule does not apply to a
# format with no zero and no sign, and -d refuses it everywhere)
CAST_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float64",
               "float8_e4m3fn": "float8_e4m3fn", "float8_e4m3fn:saturate": "float8_e4m3fn",
               "float8_e5m2": "float8_e5m2", "float8_e4m3fnuz": "float8_e4m3fnuz",
               "float8_e5m2fnuz": "float8_e5m2fnuz"}


def cast(x, dtype):
    t = torch.from_numpy(np.array(x, dtype=np.float32, copy=True, order="C"))
    return t.to(getattr(torch, CAST_DTYPES[dtype])).to(torch.float64).numpy()


def _lce_function():
    fn = getattr(F, "linear_cross_entropy", None)
    if fn is None:
        raise NotImplementedError(f"torch {torch.__version__} has no F.linear_cross_entropy (new in torch 2.13)")
    return fn


def _lce(chunked):
    options = torch.nn.LinearCrossEntropyOptions() if chunked else None

    def kernel(h, w, y):
        return _lce_function()(h, w, y, reduction="none", options=options)
    return kernel


def _lce_loss(kernel, hidden, weight, labels):
    with torch.no_grad():
        return to_numpy(kernel(to_torch(hidden), to_torch(weight), to_torch(labels)))


def _lce_grad(kernel, hidden, weight, labels):
    h = to_torch(hidden).requires_grad_(True)
    w = to_torch(weight).requires_grad_(True)
    loss = kernel(h, w, to_torch(labels))
    gh, gw = torch.autograd.grad(loss, (h, w), grad_outputs=torch.ones_like(loss))
    return to_numpy(gh), to_numpy(gw)


def linear_cross_entropy(hidden, weight, labels):
    return _lce_loss(_lce(False), hidden, weight, labels)


def linear_cross_entropy_grad(hidden, weight, labels):
    return _lce_grad(_lce(False), hidden, weight, labels)


def linear_cross_entropy_chunked(hidden, weight, labels):
    return _lce_loss(_lce(True), hidden, weight, labels)


def linear_cross_entropy_chunked_grad(hidden, weight, labels):
    return _lce_grad(_lce(True), hidden, weight, labels)
