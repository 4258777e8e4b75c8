"""Apple's Cut Cross-Entropy under the audit protocol (self-contained: ``--emit-pytest`` copies this file).

Protocol linear_ce, on numpy arrays of the format's dtype (bfloat16 arrays of ml_dtypes cross to torch
through an int16 view, bit for bit): ``f(hidden (N, D), weight (V, D), labels (N,) int64) -> loss (N,)``;
``linear_cross_entropy_grad`` returns ``(d sum(loss)/d hidden (N, D), d sum(loss)/d weight (V, D))`` by
autograd.

What it computes (read in cut_cross_entropy/torch_compile.py, release 25.1.1; the audit measures, it does
not assume): ``linear_cross_entropy(e, c, targets, impl="torch_compile", reduction="none")`` is
``F.cross_entropy((e @ c.T).float(), targets)`` under ``torch.compile``: the logits are formed in the
inputs' format, then the loss in float32 (its output is float32; the audit rounds it to the format).  The
other implementation, ``impl="cce"``, is a Triton kernel (GPU only).

On Linux the package imports its Triton kernels when it is imported (``cut_cross_entropy/
linear_cross_entropy.py``: ``if platform.system() != "Darwin": from cut_cross_entropy.cce import ...``),
so even the CPU path needs ``triton`` installed; ``torch.compile`` on the CPU needs a C++ compiler.
"""

import ml_dtypes
import numpy as np
import torch
from cut_cross_entropy import linear_cross_entropy as _cce


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


def _kernel(h, w, y):
    return _cce(h, w, y, impl="torch_compile", reduction="none")


def linear_cross_entropy(hidden, weight, labels):
    with torch.no_grad():
        return to_numpy(_kernel(to_torch(hidden), to_torch(weight), to_torch(labels)))


def linear_cross_entropy_grad(hidden, weight, labels):
    h = to_torch(hidden).requires_grad_(True)
    w = to_torch(weight).requires_grad_(True)
    loss = _kernel(h, w, to_torch(labels))
    gh, gw = torch.autograd.grad(loss, (h, w), grad_outputs=torch.ones_like(loss))
    return to_numpy(gh), to_numpy(gw)
