"""Built-in audit targets: ``LIBRARY.NAME -> (experiment, formats, callable)``.

Each adapter module (``scipy_``, ``torch_``, ``cce_``, ``jax_``, ``optax_``) is imported
only when one of its targets is used, and is self-contained (numpy, ml_dtypes
and its library only) so that ``--emit-pytest`` can copy it into a standalone
test module.  Its docstring says which formula the library computes and where
that was read.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from ...errors import MissingLibrary

__all__ = ["Adapter", "ADAPTERS", "MissingLibrary", "installed", "library_version"]

NUMPY_FORMATS = ("float16", "float32", "float64")
TORCH_FORMATS = ("float16", "bfloat16", "float32", "float64")
LCE_CPU_FORMATS = ("float16", "bfloat16", "float32")  # cut-cross-entropy's torch_compile path on the CPU
JAX_FORMATS = ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2")
# casts (the cast protocol): the formats each framework converts float32 to on the CPU (checked by
# tests/test_casts.py against the adapter modules' own tables), but the scale formats (-d refuses them)
TORCH_CAST_FORMATS = ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e4m3fn:saturate",
                      "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
JAX_CAST_FORMATS = ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                    "float8_e5m2fnuz", "float8_e4m3", "float8_e3m4", "float4_e2m1fn")


@dataclass(frozen=True)
class Adapter:
    """A framework kernel: ``module.function`` under the experiment's protocol.

    ``requires``: the import names it needs (all must be installed); ``extra``:
    the pip extra that installs them; ``grad``: the function giving d(loss)/d(logits)
    (linear_ce: the pair d(sum loss)/d(hidden), d(sum loss)/d(weight)), or None; ``formula``:
    one line on what the library computes.
    """

    name: str
    experiment: str
    formats: tuple[str, ...]
    module: str
    function: str
    requires: tuple[str, ...]
    extra: str
    formula: str
    grad: str | None = None

    @property
    def library(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def installed(self) -> bool:
        return installed(self.requires)

    def module_object(self):
        if not self.installed:
            missing = [r for r in self.requires if not _findable(r)]
            raise MissingLibrary(f"{self.name} needs {', '.join(missing)}, which is not installed: "
                                 f'pip install "stabilitylab[{self.extra}]"')
        return importlib.import_module(f"{__name__}.{self.module}")

    def callable(self, grad: bool = False):
        module = self.module_object()
        if grad:
            if self.grad is None:
                raise ValueError(f"{self.name} has no gradient adapter; --grad works for torch, jax and optax targets")
            return getattr(module, self.grad)
        return getattr(module, self.function)


def installed(requires) -> bool:
    return all(_findable(r) for r in requires)


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (import blocked)
        return False


def library_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _a(name, experiment, formats, module, function, requires, extra, formula, grad=True):
    return Adapter(name, experiment, formats, module, function, requires, extra, formula,
                   f"{function}_grad" if grad else None)


ADAPTERS: dict[str, Adapter] = {a.name: a for a in (
    _a("scipy.log_softmax", "softmax_ce", NUMPY_FORMATS, "scipy_", "log_softmax", ("scipy",), "scipy",
       "-log_softmax(x)[y]; log_softmax = (x - max) - log(sum exp(x - max)), no log1p", grad=False),
    _a("scipy.logsumexp", "softmax_ce", NUMPY_FORMATS, "scipy_", "logsumexp", ("scipy",), "scipy",
       "logsumexp(x) - x[y]; logsumexp = log1p(sum_{i!=k} exp(x_i - max)) + max (SciPy >= 1.15)", grad=False),
    _a("torch.cross_entropy", "softmax_ce", TORCH_FORMATS, "torch_", "cross_entropy", ("torch",), "torch",
       "F.cross_entropy(reduction='none') = nll_loss(log_softmax(x)); x - max - log(sum exp(x - max))"),
    _a("torch.log_softmax", "softmax_ce", TORCH_FORMATS, "torch_", "log_softmax", ("torch",), "torch",
       "-F.log_softmax(x, -1)[y]"),
    _a("torch.bce_with_logits", "binary_ce", TORCH_FORMATS, "torch_", "bce_with_logits", ("torch",), "torch",
       "F.binary_cross_entropy_with_logits(reduction='none').sum(-1) = (1 - y) z - log_sigmoid(z)"),
    _a("torch.bce", "binary_ce", TORCH_FORMATS, "torch_", "bce", ("torch",), "torch",
       "F.binary_cross_entropy(sigmoid(z), y).sum(-1): (y - 1) max(log1p(-p), -100) - y max(log p, -100)"),
    _a("torch.cast", "cast", TORCH_CAST_FORMATS, "torch_", "cast", ("torch",), "torch",
       "torch.from_numpy(x).to(dtype): float8_e4m3fn saturates (overflow and +-inf give +-448)", grad=False),
    _a("jax.cast", "cast", JAX_CAST_FORMATS, "jax_", "cast", ("jax",), "jax",
       "jnp.asarray(x).astype(ml_dtypes dtype): overflow to inf, or NaN without inf (ml_dtypes' convention)",
       grad=False),
    _a("jax.log_softmax", "softmax_ce", JAX_FORMATS, "jax_", "log_softmax", ("jax",), "jax",
       "-jax.nn.log_softmax(x)[y] = -(x - max - log(sum exp(x - max)))[y]"),
    _a("optax.softmax_cross_entropy", "softmax_ce", JAX_FORMATS, "optax_", "softmax_cross_entropy",
       ("jax", "optax"), "jax",
       "-sum(one_hot(y) * log_softmax(x)) (integer labels made one-hot, passed in as an array)"),
    _a("optax.softmax_cross_entropy_with_integer_labels", "softmax_ce", JAX_FORMATS, "optax_",
       "softmax_cross_entropy_with_integer_labels", ("jax", "optax"), "jax",
       "jax.nn.logsumexp(x) - x[y]"),
    _a("optax.sigmoid_binary_cross_entropy", "binary_ce", JAX_FORMATS, "optax_", "sigmoid_binary_cross_entropy",
       ("jax", "optax"), "jax", "(-y log_sigmoid(z) - (1 - y) log_sigmoid(-z)).sum(-1)"),
    _a("torch.linear_cross_entropy", "linear_ce", TORCH_FORMATS, "torch_", "linear_cross_entropy", ("torch",),
       "torch", "F.linear_cross_entropy(h, W, y, reduction='none'), options=None: cross_entropy(linear(h, W), y), "
       "the (N, V) logits rounded to the format (torch >= 2.13)"),
    _a("torch.linear_cross_entropy_chunked", "linear_ce", TORCH_FORMATS, "torch_", "linear_cross_entropy_chunked",
       ("torch",), "torch", "F.linear_cross_entropy(..., options=LinearCrossEntropyOptions()): the batch in "
       "chunks, logits never whole; CPU 'auto': acc_policy 'accurate', acc_dtype float32 for 16-bit inputs"),
    _a("cce.linear_cross_entropy", "linear_ce", LCE_CPU_FORMATS, "cce_", "linear_cross_entropy",
       ("torch", "cut_cross_entropy", "triton"), "cce",
       "cut_cross_entropy.linear_cross_entropy(e, c, y, impl='torch_compile'): "
       "F.cross_entropy((e @ c.T).float(), y) under torch.compile (imports triton on Linux)"),
)}
