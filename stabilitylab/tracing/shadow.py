"""Shadow execution: every aten op of a PyTorch program, judged against two float64 references.

:class:`Shadow` is a ``TorchDispatchMode``.  For every aten op with floating tensors it runs

1. the **low** op: the op as the program asked for it, on its low-precision tensors.  bfloat16 and
   float16 tensors run natively (``native``: the CPU kernels compute most ops in float32 internally
   and round once, see :data:`WIDER_ON_CPU`); every other format is *emulated*: its values are held
   in float32 tensors, the op runs in float32 and each floating output is rounded in place to the
   format with the project's rounding (:meth:`Format.round32`, block formats by
   :func:`~stabilitylab.numerics.blockscale.quantize` along the last axis);
2. the **local** reference: the same op in float64 on the low inputs upcast (exact conversions).
   Its difference from the low output is the op's own fault;
3. the **propagated** twin: the same op in float64 on the float64 *twins* of its inputs.  Every
   tensor has a twin, the value it would hold had the whole program run in float64 from the same
   leaves; the difference from the low output is the drift accumulated since the start.

Twins are kept per storage (a ``WeakIdKeyDictionary`` from the low tensor's untyped storage to a
float64 tensor of the storage's length): a tensor's twin is ``base.as_strided(size, stride,
offset)``, so views, aliases and in-place ops keep it consistent for free, and the twin dies with
the low storage.  A leaf (a parameter, an input, a tensor made outside the mode) gets its twin from
its own values when first seen.  Random ops (``bernoulli_``, ``rand``, ``native_dropout``'s mask)
are not re-drawn: the twin reuses the low run's values (dropout: ``twin * mask / (1 - p)``).  Ops
with a dtype argument (``_to_copy``, ``sum(dtype=)``, ``_softmax(half_to_float=)``, factories) are
rewritten for the twin and the local reference: every floating dtype becomes float64.

**Statuses** are the project's one rule (:func:`stabilitylab.analysis.outcome.classify`), applied
per output element with the local reference as the exact value (float64 on the same inputs: a
reference with relative error <= 2**-52 times the op's condition, far below every judged format's
tolerance).  Elements whose relative error is at most half the tolerance, and finite non-zero values
equal to the reference correctly rounded to the format (step 1 of the rule), are ``ok`` without being
classified (the fast paths).  For ops that are not pointwise (``torch.Tag.pointwise``: matmuls,
reductions, softmax, norms), an element's relative error is not meaningful by itself (a dot product
that cancels), so ``inaccurate`` elements, and ``underflow`` elements that are 0, count only when the
normwise error ``||v - r||_2 / ||r||_2`` (over the finite elements) exceeds the tolerance; otherwise they
are ``ok``.

**Causes** (what makes an op a finding):

* ``local``: the op's own fault: a status ``overflow``, ``underflow``, ``nan`` or ``inaccurate``
  against the local reference, or an element whose status is ``range`` and whose value is +-inf /
  NaN / a saturated +-max although every input of that element was finite: the exact value is
  beyond the format's range (``exp(89)`` in bfloat16): cause ``overflow``.  A ``range`` element that
  became 0 (the exact value is below half the smallest subnormal) is counted, not a finding.
* ``exposed``: the op computed its inputs correctly, but it is where a value earlier rounding had
  made fragile is lost: an output element that is +-inf / NaN while its inputs are finite and its
  twin is finite (``log1p(-p)`` with ``p`` rounded to 1; the cause by the one rule against the
  twin: ``underflow`` at a pole, else ``overflow`` or ``nan``), or a normwise drift of the output
  above the tolerance while every input's normwise drift is within it (cancellation in ``p - 1``,
  a running sum that stagnates, ``sin`` of a rounded large phase): cause ``inaccurate``.
* an op whose inputs already held the lost value (an inf or NaN passed on) is a *propagator*:
  never a finding.  Masking ops (``masked_fill``, ``where``, ``fill``, ``index_put``) write what
  they are told (a ``-inf`` mask is intended): never a finding.

Error bits (``log2(ulps + 1)``, Herbie's bits, as :func:`~stabilitylab.analysis.outcome.errors`):
per element where classified; normwise ``log2(e / eps + 1)`` with ``e`` the normwise relative
error and ``eps`` the format's spacing at 1 (a normwise error of one ulp is 1 bit).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from ..analysis.outcome import classify
from ..errors import MissingLibrary
from ..numerics.arith import EVENTS, NEVER
from ..numerics.formats import Format, get_format
from ..numerics.reference import Exact

__all__ = ["Shadow", "OpRecord", "WIDER_ON_CPU", "MASK_OPS", "torch_module", "low_dtype"]

WIDER_ON_CPU: tuple[str, ...] = (
    "mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "sum", "mean", "cumsum", "_softmax", "_log_softmax",
    "native_layer_norm", "var_mean", "var", "linalg_vector_norm", "norm", "_scaled_dot_product_flash_attention_for_cpu",
    "(every pointwise op)")
"""Ops whose PyTorch CPU kernels compute bfloat16 / float16 in float32 internally and round the result once
(matmuls and reductions accumulate in float32; pointwise ops evaluate in float32, the ``opmath`` type).  On a
GPU, cuBLAS and fused kernels accumulate differently: a trace on the CPU sees the rounding of each op's
result, not the accumulation order of another device's kernels."""

MASK_OPS: frozenset[str] = frozenset({
    "masked_fill", "masked_fill_", "where", "fill", "fill_", "full", "full_like", "index_put", "index_put_",
    "masked_scatter", "masked_scatter_", "scatter", "scatter_", "new_full", "triu", "tril", "triu_", "tril_"})
"""Ops that write the values they are given (an intended ``-inf`` mask, a padding constant): never a finding."""

_EXACT_OPS: frozenset[str] = frozenset({
    "detach", "alias", "clone", "contiguous", "copy", "cat", "stack", "split", "split_with_sizes", "chunk",
    "unbind", "index_select", "gather", "embedding", "index", "select_scatter", "slice_scatter", "zeros_like",
    "ones_like", "empty_like", "new_zeros", "new_ones", "new_empty", "zero_", "empty", "zeros", "ones",
    "empty_strided", "new_empty_strided", "lift_fresh", "lift_fresh_copy", "constant_pad_nd", "repeat", "flip",
    "roll", "max_pool2d", "max", "min", "amax", "amin", "sort", "topk", "argmax", "argmin", "relu", "relu_",
    "threshold_backward", "sign", "abs", "neg", "neg_"}) | MASK_OPS
"""Ops that only move, select or compare values (exact in every format): not judged, twins still kept."""

_RANDOM_OPS: frozenset[str] = frozenset({
    "bernoulli", "bernoulli_", "rand", "randn", "rand_like", "randn_like", "randint", "randint_like", "normal",
    "normal_", "uniform_", "exponential_", "randperm", "multinomial", "native_dropout"})

_COPY_OPS: frozenset[str] = frozenset({"copy_", "_to_copy"})  # judged only where they narrow the dtype


def torch_module():
    """Import torch, or one line naming the extra that installs it."""
    try:
        import torch
    except ImportError:
        raise MissingLibrary('stabilitylab trace needs PyTorch: pip install "stabilitylab[torch]"') from None
    return torch


def low_dtype(fmt: Format):
    """The torch dtype a format runs natively in on the CPU (bfloat16, float16), else None (emulated)."""
    torch = torch_module()
    if fmt.is_policy or fmt.block is not None:
        return None
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(fmt.name)


@dataclass
class OpRecord:
    """One aten op call: where it ran and what the references say (plain values: JSON-ready)."""

    index: int
    op: str  # e.g. "aten.exp.default"
    phase: str  # "forward" | "backward"
    module: str
    source: str  # "file.py:line" of the user's frame (forward), "" if unknown
    node: str  # backward: the autograd node ("ExpBackward0"), else ""
    format: str  # the format the output was judged in
    elements: int
    counts: dict[str, int] = field(default_factory=dict)  # status -> elements (local rule)
    local_bits: float = 0.0  # worst error bits against the local reference (elementwise or normwise)
    drift_bits: float = 0.0  # normwise error bits of the output against its twin
    drift: float = 0.0  # normwise relative error of the output against its twin
    cause: str | None = None  # overflow | underflow | nan | inaccurate
    kind: str | None = None  # local | exposed
    offending: int = 0  # elements with the cause
    samples: list = field(default_factory=list)
    origin: dict | None = None  # a rounded constant upstream (clamp(max=1 - 1e-6) in bfloat16)
    pattern: str | None = None
    forward_op: str = ""  # backward: the forward op the autograd node belongs to
    kept: dict | None = None  # Shadow(keep=True): the op's float64 inputs and local reference
    replay: dict | None = None  # the first failing op's inputs (emit-pytest), in memory only
    note: str = ""


class _Events:
    """The per-element IEEE events of one op, in the shape :func:`classify` reads (duck-typed ``Arith``):
    ``overflow`` where the value became +-inf / NaN from finite inputs and the reference is neither,
    ``divide_by_zero`` (a pole) where the reference is +-inf from finite inputs, ``underflow`` where the
    value is 0 and the reference is not, but below the format's smallest normal (a 0 for a larger reference is
    cancellation: ``inaccurate`` by the rule)."""

    def __init__(self, n: int, overflow, pole, underflow, saturated):
        self.first = np.full((len(EVENTS), n), NEVER, dtype=np.int64)
        self.first[EVENTS.index("overflow")][overflow] = 0
        self.first[EVENTS.index("divide_by_zero")][pole] = 0
        self.first[EVENTS.index("underflow")][underflow] = 0
        self.input_lost = np.zeros(n, dtype=bool)
        self.saturated = saturated
        self.errors: dict = {}

    def first_step(self, event: str) -> np.ndarray:
        return self.first[EVENTS.index(event)]


def _all_finite(torch, t) -> bool:
    """Every element finite: a sum is finite only if every term is (an inf or NaN makes it inf or NaN); only a
    sum that overflows, or one that is not finite, needs the elementwise check."""
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def _exact(r: np.ndarray) -> Exact:
    r = np.asarray(r, dtype=np.float64)
    finite = np.isfinite(r)
    return Exact(r.copy(), np.zeros_like(r), np.zeros(r.shape, dtype=np.int64), finite & (r == 0))


def _short(func) -> str:
    """``aten.exp.default`` -> ``exp``."""
    return func._opname if hasattr(func, "_opname") else str(func).split(".")[1]


_NOISE = 2.0**-40  # an output whose twin is below this times its inputs' is float64 cancellation noise

def _module(parents) -> str:
    """The innermost module ModuleTracker reports, as a state_dict path (``ff.fc2``; the root: its class)."""
    names = [p for p in parents if p != "Global"]
    if not names:
        return ""
    inner = max(names, key=lambda p: (p.count("."), p))
    return inner.split(".", 1)[1] if "." in inner else inner


_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE = os.path.dirname(_HERE)
_MACHINERY = frozenset(os.path.join(_HERE, f"{m}.py") for m in ("shadow", "__init__", "target", "result", "emit",
                                                                   "catalogue")) | frozenset(
    os.path.join(_PACKAGE, f) for f in ("api.py", "__main__.py"))


def _user_frame() -> str:
    """``file:line`` of the innermost frame that is the model's: not torch's, not the trace's own machinery
    (a model defined inside stabilitylab, as ``tracing/models.py``, is the model's)."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if not (name in _MACHINERY or name.startswith(os.path.join(_PACKAGE, "cli")) or name.startswith("<")
                or os.sep + "torch" + os.sep in name or "contextlib" in name):
            return f"{os.path.basename(name)}:{f.f_lineno}"
        f = f.f_back
    return ""


class Shadow:
    """Build with a format; ``with shadow.mode():`` runs the program under the dispatch mode; the op records
    accumulate in :attr:`records`.  ``first_replay``: keep the inputs of the first op with a local cause."""

    def __init__(self, fmt: Format, tolerance: float | None = None, samples: int = 3, keep: bool = False):
        self.torch = torch = torch_module()
        from torch.utils.weak import WeakIdKeyDictionary

        self.fmt = fmt
        self.judge_format = fmt.compute_format if fmt.is_policy else fmt
        self.tol = self.judge_format.default_tolerance if tolerance is None else tolerance
        self.native = low_dtype(fmt)
        self.samples = samples
        self.keep = keep  # keep every judged op's float64 inputs and local reference (tests check them)
        self.records: list[OpRecord] = []
        self.twins = WeakIdKeyDictionary()  # low storage -> {dtype: float64 base}
        self.produced = WeakIdKeyDictionary()  # storages written by an op under the mode (emulation: rounded)
        self.leaf_copies = WeakIdKeyDictionary()  # emulation: a leaf's storage -> (version, rounded base)
        self.origins = WeakIdKeyDictionary()  # storage -> (origin dict, hops)
        self.twin_failures: dict[str, str] = {}
        self.lost_in_float64: dict | None = None  # the first op whose float64 twin is inf / NaN from finite twins
        self.forward_ops: dict[int, tuple[str, str, str]] = {}  # autograd sequence nr -> (op, module, source)
        self._formats = {torch.bfloat16: get_format("bfloat16"), torch.float16: get_format("float16"),
                         torch.float32: get_format("float32")}

    # ------------------------------------------------------------------ twins
    def _storage(self, t):
        return t.untyped_storage()

    def twin(self, t):
        """The float64 twin of a floating tensor (created from its own values for a leaf)."""
        torch = self.torch
        st = self._storage(t)
        per = self.twins.get(st)
        base = None if per is None else per.get(t.dtype)
        if base is None:
            base = self._leaf_base(t, st)
            self.twins.setdefault(st, {})[t.dtype] = base
        try:
            return base.as_strided(t.size(), t.stride(), t.storage_offset())
        except RuntimeError:
            return t.to(torch.float64)

    def _leaf_base(self, t, st):
        torch = self.torch
        n = st.nbytes() // t.element_size()
        flat = torch.empty(0, dtype=t.dtype).set_(st, 0, (n,), (1,))
        return flat.to(torch.float64)

    def _register(self, low, twin) -> None:
        """Write ``twin`` as the twin of the output ``low`` (a no-op where it already is its view)."""
        torch = self.torch
        st = self._storage(low)
        per = self.twins.get(st)
        base = None if per is None else per.get(low.dtype)
        if base is None:
            n = st.nbytes() // low.element_size()
            base = torch.empty(n, dtype=torch.float64)  # the op's output view is written below
            self.twins.setdefault(st, {})[low.dtype] = base
        if twin.untyped_storage().data_ptr() == base.untyped_storage().data_ptr():
            return
        try:
            base.as_strided(low.size(), low.stride(), low.storage_offset()).copy_(twin)
        except RuntimeError:
            pass

    # ------------------------------------------------------------------ rounding (emulation)
    def _store(self, x64: np.ndarray, fmt: Format) -> np.ndarray:
        """Values rounded to ``fmt``'s storage (block formats: quantized per block along the last axis)."""
        from ..numerics.blockscale import BLOCK_FORMATS, quantize

        if fmt.block is not None:
            q = quantize(BLOCK_FORMATS[fmt.block], np.asarray(x64, dtype=np.float32))
            return fmt.compute_format.round32(np.asarray(q.values, dtype=np.float32))
        return fmt.storage_format.round32(np.asarray(x64, dtype=np.float32))

    def _round_inplace(self, t, fmt: Format) -> None:
        a = t.detach().numpy()  # (an output that requires grad, as an RNN op's: the same storage)
        a[...] = fmt.round32(a)

    def _low_leaf(self, t):
        """Emulation: a floating leaf the mode did not produce is used rounded to the storage format (a
        rounded copy, cached per storage and version; the user's tensor is not changed)."""
        torch = self.torch
        st = self._storage(t)
        if st in self.produced:
            return t
        cached = self.leaf_copies.get(st)
        if cached is None or cached[0] != t._version:
            n = st.nbytes() // t.element_size()
            flat = torch.empty(0, dtype=t.dtype).set_(st, 0, (n,), (1,))
            rounded = torch.from_numpy(self._store(flat.numpy(), self.fmt).astype(np.float32))
            cached = (t._version, rounded)
            self.leaf_copies[st] = cached
            self.produced[rounded.untyped_storage()] = True
            self.twins.setdefault(rounded.untyped_storage(), {})[torch.float32] = flat.to(torch.float64)
        return cached[1].as_strided(t.size(), t.stride(), t.storage_offset())

    # ------------------------------------------------------------------ the mode
    def mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.module_tracker import ModuleTracker

        shadow = self
        tracker = ModuleTracker()

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return shadow.dispatch(func, args, kwargs or {}, tracker)

        class _Both:
            def __enter__(self_inner):
                tracker.__enter__()
                self_inner.mode = _Mode()
                self_inner.mode.__enter__()
                return shadow

            def __exit__(self_inner, *exc):
                self_inner.mode.__exit__(*exc)
                tracker.__exit__(*exc)
                return False

        return _Both()

    def _floating(self, a) -> bool:
        return isinstance(a, self.torch.Tensor) and a.is_floating_point() and not a.is_complex()

    def dispatch(self, func, args, kwargs, tracker):
        torch = self.torch
        from torch.utils._pytree import tree_flatten, tree_unflatten

        name = _short(func)
        flat, spec = tree_flatten((args, kwargs))
        if torch._C._current_graph_task_id() == -1:
            # forward: an autograd node takes its sequence number just before its op is dispatched, so the first
            # op seen after a number was taken is that node's (ops that make no node do not take one)
            seq = torch._C._autograd._get_sequence_nr() - 1
            if seq not in self.forward_ops:
                self.forward_ops[seq] = (str(func), _module(tracker.parents), _user_frame())
        emulate = self.native is None
        if emulate:
            flat = [self._low_leaf(a) if self._floating(a) and a.dtype == torch.float32 else a for a in flat]
            args, kwargs = tree_unflatten(flat, spec)
        floats = [a for a in flat if self._floating(a)]
        judged = (floats and name not in _EXACT_OPS and name not in _RANDOM_OPS and not func.is_view
                  and not name.startswith("_foreach"))
        local_flat = None
        if judged:
            local_flat = [a.to(torch.float64) if self._floating(a) else a for a in flat]
        inputs_low, pre_drift = flat, None
        if judged and name.endswith("_") and self._floating(flat[0]):  # in place: keep self as it was
            self_fmt = self._format_of(flat[0])
            if self_fmt is not None:
                pre_drift = self._normwise(self_fmt, flat[0].detach().to(torch.float64).reshape(-1),
                                           self.twin(flat[0]).reshape(-1))[0]
            inputs_low = [flat[0].clone(), *flat[1:]]

        out = func(*args, **kwargs)

        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if emulate and not func.is_view:
            for o in outs:
                if self._floating(o) and o.dtype == torch.float32 and (name not in _EXACT_OPS or name in MASK_OPS
                                                                      or name in _COPY_OPS):
                    self._round_inplace(o, self.judge_format)
        for o in outs:
            if self._floating(o):
                self.produced[self._storage(o)] = True

        twin_out = self._twin_run(func, name, flat, spec, out)
        if twin_out is not None:
            for o, t in zip(tree_flatten(out)[0], tree_flatten(twin_out)[0]):
                if self._floating(o) and isinstance(t, torch.Tensor) and t.shape == o.shape:
                    self._register(o, t.to(torch.float64))
        self._track_origin(func, name, flat, outs)

        if judged:
            first = next((o for o in outs if self._floating(o)), None)
            if first is not None and first.dtype != torch.float64:
                narrowing = name not in _COPY_OPS or any(a.dtype != first.dtype for a in floats)
                if narrowing:
                    self._judge(func, name, flat, spec, local_flat, inputs_low, first, out, tracker, pre_drift)
        return out

    # ------------------------------------------------------------------ the twin run
    def _rewrite(self, a):
        torch = self.torch
        if isinstance(a, torch.dtype) and a.is_floating_point:
            return torch.float64
        return a

    def _twin_args(self, flat, spec, source):
        """Arguments for a float64 run: floating tensors from ``source`` (twin or upcast), dtypes rewritten."""
        from torch.utils._pytree import tree_unflatten

        out = [source(a) if self._floating(a) else self._rewrite(a) for a in flat]
        args, kwargs = tree_unflatten(out, spec)
        if len(args) == 3 and isinstance(args[2], bool) and self._half_to_float:
            args = (*args[:2], False)  # _softmax / _log_softmax(x, dim, half_to_float): the input is float64
        return args, kwargs

    def _twin_run(self, func, name, flat, spec, out):
        torch = self.torch
        floats = [a for a in flat if self._floating(a)]
        outs = [o for o in torch.utils._pytree.tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if not any(self._floating(o) for o in outs):
            return None
        self._half_to_float = False
        if func.is_view and floats:
            args, kwargs = self._twin_args(flat, spec, self.twin)
            try:
                return func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a view the float64 twin cannot take: fall back
                self.twin_failures.setdefault(name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                return None
        if name == "native_dropout":
            x = self.twin(flat[0])
            p = float(flat[1]) if len(flat) > 1 and not isinstance(flat[1], torch.Tensor) else 0.5
            mask = out[1]
            scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
            return (x * mask.to(torch.float64) * scale, mask)
        if name in _RANDOM_OPS:  # the draw is the low run's: its values are the twin's (bernoulli_ in place too)
            return torch.utils._pytree.tree_map(
                lambda o: o.to(torch.float64) if self._floating(o) else o, out)
        if not floats and name not in ("arange", "full", "linspace", "scalar_tensor", "tensor", "full_like",
                                       "new_full", "_to_copy"):  # integers cast to a float: the twin is exact
            return None  # factories without a floating value argument: the low values are the twin
        self._half_to_float = name in ("_softmax", "_log_softmax")
        args, kwargs = self._twin_args(flat, spec, self.twin)
        if not floats and "dtype" not in kwargs:
            return None
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - an op float64 cannot run: the twin restarts from the low value
            self.twin_failures.setdefault(name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None

    # ------------------------------------------------------------------ origins (rounded constants)
    def _track_origin(self, func, name, flat, outs) -> None:
        """Remember a constant argument that does not survive rounding to the format (``clamp(max=1 - 1e-6)``
        in bfloat16 is ``clamp(max=1)``) on the op's output, and pass it on through three more pointwise ops."""
        torch = self.torch
        if not outs or not self._floating(outs[0]):
            return
        fmt = self._format_of(outs[0])
        if fmt is None:
            return
        origin = None
        if name in ("clamp", "clamp_", "clamp_min", "clamp_max", "clamp_min_", "clamp_max_", "add", "sub",
                    "rsub", "add_", "sub_"):
            for c in flat[1:]:
                if isinstance(c, float) and math.isfinite(c) and c != 0:
                    rounded = float(fmt.round(np.array([c]), np.float64)[0])
                    if rounded != c and rounded in (0.0, 1.0, -1.0):  # a bound or epsilon that became 0 or 1
                        origin = {"op": str(func), "constant": c, "rounded": rounded, "format": fmt.name}
                        break
        if origin is not None:
            self.origins[self._storage(outs[0])] = (origin, 0)
            return
        if torch.Tag.pointwise in getattr(func, "tags", ()):
            for a in flat:
                if self._floating(a):
                    got = self.origins.get(self._storage(a))
                    if got is not None and got[1] < 3:
                        self.origins[self._storage(outs[0])] = (got[0], got[1] + 1)
                        return

    # ------------------------------------------------------------------ judging
    def _format_of(self, t) -> Format | None:
        if self.native is None:
            return self.judge_format if t.dtype == self.torch.float32 else None
        return self._formats.get(t.dtype)

    def _where(self, tracker) -> tuple[str, str, str, str, str]:
        """(phase, module, autograd node, forward op, source): a backward op is placed at the forward op its
        autograd node belongs to (matched by the node's sequence number), in that op's module and line."""
        torch = self.torch
        module = _module(tracker.parents)
        if torch._C._current_graph_task_id() == -1:
            return "forward", module, "", "", _user_frame()
        n = torch._C._current_autograd_node()
        if n is None:
            return "backward", module, "", "", ""
        op, fmodule, source = self.forward_ops.get(n._sequence_nr(), ("", "", ""))
        return "backward", fmodule or module, n.name(), op, source

    def _judge(self, func, name, flat, spec, local_flat, inputs_low, low, out, tracker, pre_drift) -> None:
        torch = self.torch
        from torch.utils._pytree import tree_flatten, tree_unflatten

        fmt = self._format_of(low)
        if fmt is None:
            return
        phase, module, node, forward_op, source = self._where(tracker)
        rec = OpRecord(len(self.records), str(func), phase, module, source, node, fmt.name, low.numel())
        rec.forward_op = forward_op
        self.records.append(rec)
        if low.numel() == 0:
            rec.counts = {}
            return
        largs, lkwargs = tree_unflatten([self._rewrite(a) if not isinstance(a, torch.Tensor) else a
                                         for a in local_flat], spec)
        if len(largs) == 3 and isinstance(largs[2], bool) and name in ("_softmax", "_log_softmax"):
            largs = (*largs[:2], False)
        try:
            ref_out = func(*largs, **lkwargs)
        except Exception as exc:  # noqa: BLE001 - no float64 kernel: the op is not judged
            rec.note = f"not judged: float64 {name} failed ({type(exc).__name__})"
            return
        ref = next((o for o in tree_flatten(ref_out)[0] if isinstance(o, torch.Tensor) and o.is_floating_point()),
                   None)
        del largs, lkwargs, ref_out
        local_flat.clear()  # the float64 copies of the inputs are no longer needed: free them before judging
        if ref is None or ref.shape != low.shape:
            rec.note = "not judged: the float64 run gave another shape"
            return
        pointwise = torch.Tag.pointwise in getattr(func, "tags", ())
        if self.keep:
            rec.kept = {"inputs": [a.to(torch.float64).numpy().copy() for a in inputs_low if self._floating(a)],
                        "reference": ref.detach().numpy().copy(), "args": [a for a in inputs_low
                                                                           if not isinstance(a, torch.Tensor)]}
        # float64, flat; the numpy arrays share the tensors' memory (whole-array passes run in torch)
        v_t = low.detach().to(torch.float64).reshape(-1)
        r_t = ref.detach().reshape(-1).contiguous()
        tw_t = self.twin(low).reshape(-1).contiguous()
        v, r, tw = v_t.numpy(), r_t.numpy(), tw_t.numpy()
        floats_in = [a for a in inputs_low if self._floating(a)]
        nonfinite = not _all_finite(torch, v_t)
        fin = self._inputs_finite(floats_in, low, pointwise) if nonfinite or fmt.saturates else \
            np.ones(v.shape, dtype=bool)
        self._statuses(rec, fmt, v_t, r_t, fin, pointwise, nonfinite)
        rec.drift, rec.drift_bits = self._normwise(fmt, v_t, tw_t)
        originals = [a for a in flat if self._floating(a)]
        if self.lost_in_float64 is None and not _all_finite(torch, tw_t):
            self._float64_too(rec, tw_t, originals)
        if (rec.drift > self.tol or rec.cause == "inaccurate") and self._noise(tw_t, originals):
            rec.drift, rec.drift_bits = 0.0, 0.0  # the twin is float64 noise around 0: no drift to measure
            if rec.cause == "inaccurate":  # nor a value to lose: the program's result is 0 (d sum(softmax))
                rec.cause, rec.kind, rec.offending = None, None, 0
                rec.note = "inaccurate against its local reference, but its float64 twin is noise around 0"
        if rec.cause is None:
            self._exposed(rec, fmt, v, r, tw, fin, nonfinite, originals, pre_drift, inputs_low is not flat)
        if rec.cause is not None:
            origin = None
            for a in floats_in:
                got = self.origins.get(self._storage(a))
                if got is not None:
                    origin = got[0]
                    break
            rec.origin = origin
            operands = [a for a in inputs_low if self._floating(a) or
                        (isinstance(a, (int, float)) and not isinstance(a, bool))]
            rec.samples = self._samples(rec, fmt, v, r, tw, operands, low, pointwise)
            if rec.kind == "local" and not any(x.kind == "local" and x.replay is not None for x in self.records[:-1]):
                kept = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in inputs_low]
                rec.replay = {"op": str(func), "args": tree_unflatten(kept, spec), "reference": ref.detach().clone(),
                              "format": fmt.name, "dtype": str(low.dtype).replace("torch.", "")}

    def _float64_too(self, rec: OpRecord, tw_t, originals) -> None:
        """Remember the first op whose float64 twin output holds inf / NaN although every input's twin is finite:
        the program loses the value in float64 too (``sqrt`` of a negative number, ``log(0)``), so no format is
        to blame for it there (no finding: the statuses compare with the local reference, which is NaN too)."""
        torch = self.torch
        if not all(_all_finite(torch, self.twin(a)) for a in originals if a.dtype != torch.float64):
            return
        bad = ~torch.isfinite(tw_t)
        self.lost_in_float64 = {"op": rec.op, "phase": rec.phase, "module": rec.module, "source": rec.source,
                                "elements": int(bad.sum()), "nan": int(torch.isnan(tw_t).sum())}

    def _inputs_finite(self, floats_in, low, pointwise: bool) -> np.ndarray:
        """Per output element, whether the op's inputs were finite (pointwise ops: the broadcast inputs of that
        element; other ops: all of every input)."""
        torch = self.torch
        fin = np.ones(low.numel(), dtype=bool)
        for a in floats_in:
            ok = torch.isfinite(a)
            if pointwise and a.dim() <= low.dim():
                try:
                    fin &= ok.broadcast_to(low.shape).reshape(-1).numpy()
                    continue
                except RuntimeError:
                    pass
            if not bool(ok.all()):
                fin[:] = False
        return fin

    def _noise(self, tw_t, originals) -> bool:
        """Whether the twin output is float64 cancellation noise: its largest finite magnitude is below
        :data:`_NOISE` times the largest finite magnitude of its inputs' twins (the gradient of a sum of
        softmax outputs, exactly 0, comes out of float64 as 1e-19)."""
        torch = self.torch

        def top(t) -> float:
            t = t.reshape(-1)
            t = t[torch.isfinite(t)]
            return float(t.abs().max()) if t.numel() else 0.0

        scale = max((top(self.twin(a)) for a in originals), default=0.0)
        return top(tw_t) <= _NOISE * scale

    def _normwise(self, fmt: Format, v_t, r_t) -> tuple[float, float]:
        """(e, bits): e = ||v - r||_2 / ||r||_2 over the elements where both are finite; bits = log2(e / eps + 1);
        e = inf where an element is finite on one side only (a value lost: inf or NaN against a finite value, or
        the reverse), so that an overflowed output never reads as no drift."""
        torch = self.torch
        d = v_t - r_t
        if not _all_finite(torch, d):
            fv, fr = torch.isfinite(v_t), torch.isfinite(r_t)
            if not torch.equal(fv, fr):
                return math.inf, math.inf
            both = fv & fr
            d, r_t = d[both], r_t[both]
        if d.numel() == 0:
            return 0.0, 0.0
        num = float(torch.linalg.vector_norm(d))
        den = float(torch.linalg.vector_norm(r_t))
        e = 0.0 if num == 0 else (math.inf if den == 0 else num / den)
        return e, math.log2(e / fmt.eps + 1) if math.isfinite(e) else math.inf

    def _statuses(self, rec: OpRecord, fmt: Format, v_t, r_t, fin, pointwise: bool, nonfinite: bool) -> None:
        torch = self.torch
        tol = self.tol
        # easy: |v - r| <= tol/2 |r| with r finite (a NaN compares false; thr is 0 where r is inf or NaN, so a
        # finite v there is not easy), or v == r (+-inf alike); a v of 0 is easy only where r is 0
        thr = r_t.abs().mul_(tol / 2).nan_to_num_(nan=0.0, posinf=0.0)
        easy = torch.le((v_t - r_t).abs_(), thr)
        del thr
        if nonfinite:
            easy |= v_t == r_t
        idx = torch.nonzero(easy.logical_not_()).reshape(-1).numpy()
        del easy
        counts = {"ok": int(v_t.numel() - idx.size)}
        bits = 0.0
        cause, kind, offending = None, None, 0
        e, nbits = self._normwise(fmt, v_t, r_t)
        if idx.size:  # step 1 of the rule first: a finite non-zero v that is the reference correctly rounded is ok
            vs, rs = v_t.numpy()[idx], r_t.numpy()[idx]
            with np.errstate(all="ignore"):
                settled = np.isfinite(vs) & (vs != 0) & (vs == fmt.round(rs, np.float64))
                if fmt.saturates:  # +-max may be a saturated overflow: range or lost, for classify to say
                    settled &= np.abs(vs) != fmt.max
            if settled.any():
                counts["ok"] += int(np.count_nonzero(settled))
                idx, vs, rs = idx[~settled], vs[~settled], rs[~settled]
        if idx.size:
            fs = fin[idx]
            with np.errstate(all="ignore"):
                lost = ~np.isfinite(vs)
                overflow = lost & fs & np.isfinite(rs)
                pole = fs & np.isinf(rs)
                # underflow: a 0 where the exact value is below the smallest normal; a 0 where it is larger is
                # cancellation (log of a sum that rounded to 1), for the rule to call inaccurate
                underflow = (vs == 0) & (rs != 0) & (np.abs(rs) < fmt.tiny)
                saturated = (np.abs(vs) == fmt.max) & (np.abs(rs) > fmt.max) if fmt.saturates else \
                    np.zeros(vs.shape, dtype=bool)
            outcome = classify(fmt, vs, _exact(rs), _Events(vs.size, overflow, pole, underflow, saturated), tol)
            status = outcome.status.copy()
            if not pointwise and e <= tol:  # an element of a reduction is judged with the whole: normwise
                status[(status == "inaccurate") | ((status == "underflow") & (vs == 0))] = "ok"
            finite_bits = outcome.error_bits[np.isfinite(outcome.error_bits) & (status != "ok")]
            bits = float(finite_bits.max()) if finite_bits.size else 0.0
            for st in np.unique(status):
                counts[str(st)] = counts.get(str(st), 0) + int(np.count_nonzero(status == st))
            # the exact value is finite and beyond the range; an infinite reference (log(0), a pole float64 reaches
            # too) is not the format's: a format without inf can only say it as NaN (or +-max when saturating)
            range_over = (status == "range") & fs & (lost | saturated) & np.isfinite(rs)
            failing = {st: (status == st) for st in ("nan", "overflow", "underflow", "inaccurate")}
            failing["overflow"] = failing["overflow"] | range_over
            for st in ("nan", "overflow", "underflow", "inaccurate"):
                if failing[st].any():
                    cause, kind, offending = st, "local", int(np.count_nonzero(failing[st]))
                    rec._offenders = idx[failing[st]]
                    worst = outcome.error_bits[failing[st]]
                    worst = worst[~np.isnan(worst)]
                    bits = max(bits, float(worst.max()) if worst.size else math.inf)
                    break
        rec.local_bits = max(bits, nbits) if math.isfinite(nbits) else bits
        rec.counts = {k: n for k, n in counts.items() if n}
        rec.cause, rec.kind, rec.offending = cause, kind, offending

    def _exposed(self, rec: OpRecord, fmt: Format, v, r, tw, fin, nonfinite, originals, pre_drift,
                 in_place) -> None:
        torch = self.torch
        if nonfinite:
            with np.errstate(all="ignore"):
                lost = (~np.isfinite(v)) & fin & np.isfinite(tw)
            if lost.any():
                idx = np.flatnonzero(lost)
                vs, rs, ts = v[idx], r[idx], tw[idx]
                pole = np.isinf(rs)
                overflow = ~pole & ~np.isnan(rs)
                outcome = classify(fmt, vs, _exact(ts), _Events(vs.size, overflow, pole, np.zeros(vs.shape, bool),
                                                                np.zeros(vs.shape, bool)), self.tol)
                bad = np.isin(outcome.status, ("overflow", "underflow", "nan", "inaccurate"))
                if bad.any():
                    statuses, counts = np.unique(outcome.status[bad], return_counts=True)
                    rec.cause, rec.kind, rec.offending = str(statuses[np.argmax(counts)]), "exposed", int(bad.sum())
                    rec.drift_bits = math.inf  # a value lost: every bit
                    rec._offenders = idx[bad]
                    return
        if rec.drift > self.tol:
            drift_in = 0.0 if pre_drift is None else pre_drift
            for i, a in enumerate(originals):
                if a.dtype == torch.float64 or (in_place and i == 0):
                    continue
                drift_in = max(drift_in, self._normwise(fmt, a.detach().to(torch.float64).reshape(-1),
                                                        self.twin(a).reshape(-1))[0])
            if drift_in <= self.tol:
                rec.cause, rec.kind = "inaccurate", "exposed"
                with np.errstate(all="ignore"):
                    rel = np.abs(v - tw) / np.abs(tw)
                    worst = np.flatnonzero(np.isfinite(rel) & (rel > self.tol))
                rec.offending = int(worst.size)
                rec._offenders = worst[np.argsort(-rel[worst], kind="stable")]

    def _samples(self, rec, fmt, v, r, tw, floats_in, low, pointwise) -> list:
        out = []
        offenders = getattr(rec, "_offenders", np.array([], dtype=np.int64))
        for flat_i in offenders[: self.samples]:
            index = [int(i) for i in np.unravel_index(int(flat_i), tuple(low.shape))] if low.dim() else []
            entry = {"index": index, "value": float(v[flat_i]), "local_reference": float(r[flat_i]),
                     "twin": float(tw[flat_i])}
            if pointwise:
                ins = []
                for a in floats_in:
                    if isinstance(a, (int, float)) and not isinstance(a, bool):
                        ins.append(float(a))
                        continue
                    try:
                        b = a.broadcast_to(low.shape)
                        ins.append(float(b[tuple(index)]) if index else float(b))
                    except RuntimeError:
                        continue
                entry["inputs"] = ins
            out.append(entry)
        if hasattr(rec, "_offenders"):
            del rec._offenders
        return out
