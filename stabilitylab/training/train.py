"""train: small real models trained by mini-batch SGD, every operation rounded to the format.

Two models on Fisher's Iris data (``stabilitylab/data/iris.csv``, features
standardized in float64 before they are rounded to the format):

* ``softmax`` regression (3 classes), loss by one of the ``softmax_ce`` kernels
  (``naive_softmax_log``, ``shifted_softmax_log``, ``log_softmax``,
  ``log_softmax_log1p``);
* ``logistic`` regression (2 classes), loss by ``sigmoid_log`` or ``logits``
  (the ``binary_ce`` kernels) or ``mse_sigmoid`` ((p - y)**2 / 2 on the sigmoid).

Forward and backward pass, loss scaling and the update ``w <- w - lr g`` are
all :class:`~stabilitylab.numerics.arith.Arith` operations (each correctly rounded to the
format), vectorized over the mini-batch.  The methods of a scenario train side by
side in each format: in the operations they share (matvec, batch mean, backward
products and sums, update, accuracy) method m is row m of one Arith; each method's
loss kernel runs in an Arith of its own, which its backward pass forks (what it
repeats of the forward, exp(x) and its sum say, is computed once).  The gradient
of each method is formed from that method's own forward quantities, by the kernels of
:mod:`stabilitylab.experiments.grad_kernels`:

* ``naive_softmax_log`` / ``shifted_softmax_log``: ``p - onehot(y)`` with p the
  method's softmax (``exp(x) / sum exp(x)``, resp. with x - max): an overflowed
  exp gives inf / inf = NaN, and NaN weights from then on (``softmax_minus_onehot``);
* ``log_softmax`` / ``log_softmax_log1p``: p = exp(log_softmax(x)), and the true
  class's entry p_y - 1 = -sum_{j != y} p_j (no cancellation; ``log_softmax_others``);
* ``sigmoid_log``: p - y with p = 1 / (1 + exp(-z)) (the naive sigmoid; ``sigmoid_minus_y``);
* ``logits``: p - y = sigmoid(z) for y = 0, -sigmoid(-z) for y = 1, with the
  sign-branched sigmoid (no cancellation, exp never overflows; ``sigmoid_minus_y_branched``);
* ``mse_sigmoid``: ``(p - y) p (1 - p)`` with the same sigmoid (``mse_sigmoid``).

dL/dz is multiplied by ``S / B`` (loss scale S, batch size B), multiplied by
the features (the per-sample terms of the weight gradient), summed over the batch
(a tree), divided by S and applied.  Dynamic scaling follows PyTorch's GradScaler:
start at 2**16, on a non-finite gradient skip the step and halve S, double S
after ``growth_interval`` good steps.

Status of each step's loss: :func:`outcome.classify` against the loss of the
float64 run of the same scenario and method at the same step (the reference
trajectory: "exact" here means that float64 trajectory, not an mpmath value),
with the IEEE events of the step's forward pass (matvec, loss kernel, batch mean).
classify reads events only where the loss is NaN, +-inf or 0, so only those
forward passes record them: a method's forward records events when its previous
step's loss was NaN, inf or 0, and runs again with events when its loss is and the
previous one was not; every other pass is a quiet Arith (the same values, no event
bookkeeping).  Gradient norms are measured in float64 from the format's gradient
(a measurement, not part of training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources

import numpy as np

from ..analysis.outcome import classify
from ..experiments import binary_ce, grad_kernels, softmax_ce
from ..numerics.arith import EVENTS, NEVER, Arith
from ..numerics.formats import FORMATS, Format
from ..numerics.reference import from_longdouble

__all__ = ["Scenario", "SCENARIOS", "Run", "run", "run_scenario", "iris", "SOFTMAX_METHODS", "LOGISTIC_METHODS"]

SOFTMAX_METHODS = ("naive_softmax_log", "shifted_softmax_log", "log_softmax", "log_softmax_log1p")
LOGISTIC_METHODS = ("sigmoid_log", "logits", "mse_sigmoid")
DYNAMIC_START = 2.0**16
MAX_SCALE = 2.0**24  # 1/S stays a float16 value (its smallest subnormal is 2**-24)


@lru_cache(maxsize=None)
def iris() -> tuple[np.ndarray, np.ndarray]:
    """(features (150, 4) float64, species (150,) int) from the packaged CSV."""
    text = resources.files("stabilitylab").joinpath("data/iris.csv").read_text(encoding="utf-8")
    rows = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")][1:]
    data = np.array([[float(v) for v in r[:4]] for r in rows])
    return data, np.array([int(r[4]) for r in rows], dtype=np.int64)


@lru_cache(maxsize=None)
def task_data(task: str) -> tuple[np.ndarray, np.ndarray]:
    """Standardized features with a trailing column of ones (the bias), and labels."""
    x, species = iris()
    if task == "iris3":
        y = species
    elif task == "setosa":
        y = (species == 0).astype(np.int64)
    elif task == "virginica":
        keep = species > 0
        x, y = x[keep], (species[keep] == 2).astype(np.int64)
    else:
        raise KeyError(task)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    return np.hstack([z, np.ones((len(z), 1))]), y


@dataclass(frozen=True)
class Scenario:
    """One training setting, as data.  ``init`` is ``zero`` or a dict of bias / weight values
    (``bias``: every bias; ``weights``: (features,) weights of the logistic model)."""

    name: str
    description: str
    claim: str
    model: str  # softmax | logistic
    task: str
    methods: tuple[str, ...]
    steps: int
    lr: float
    batch: int
    seed: int = 0
    bias: float = 0.0
    weights: tuple[float, ...] | None = None
    scaling: str = "none"  # none | static | dynamic
    scale: float = 1.0
    growth_interval: int = 50
    chance: float = 0.5
    track_chance: bool = False  # the claim is about epochs spent at chance accuracy: say them


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("overflow", "softmax regression, learning rate 2, from zero weights",
             "the learning rate drives the logits past ln(max) of float16 (11.09): the naive softmax's exp "
             "overflows and its loss becomes NaN; log-sum-exp forms train on",
             "softmax", "iris3", SOFTMAX_METHODS, steps=150, lr=2.0, batch=30, chance=1 / 3),
    Scenario("saturated", "logistic regression from a saturated start (every bias 12: every sample "
             "predicted 1 with p = 1 - 6e-6)",
             "sigmoid + MSE's gradient carries sigma'(z) ~ 6e-6 and stays at chance accuracy; cross-entropy's "
             "gradient p - y does not vanish",
             "logistic", "virginica", LOGISTIC_METHODS, steps=160, lr=0.5, batch=20, bias=12.0, track_chance=True),
    Scenario("loss_scale_none", "logistic regression (BCE from logits) from a confident start (margins ~ 8-30), "
             "no loss scale",
             "dL/dz = (p - y)/B is tiny for confident samples: in float16 the backward pass underflows to 0",
             "logistic", "setosa", ("logits",), steps=60, lr=0.5, batch=30,
             weights=(0.0, 0.0, -5.0, -5.0), bias=-6.0, chance=2 / 3),
    Scenario("loss_scale_static", "as loss_scale_none, static loss scale 2**10",
             "multiplying the loss by S = 1024 keeps the backward pass's small gradients in float16's range",
             "logistic", "setosa", ("logits",), steps=60, lr=0.5, batch=30,
             weights=(0.0, 0.0, -5.0, -5.0), bias=-6.0, scaling="static", scale=2.0**10, chance=2 / 3),
    Scenario("loss_scale_dynamic", "as loss_scale_none, dynamic loss scale (GradScaler: 2**16, halve and skip "
             "on inf/NaN, double after 10 good steps, at most 2**24)",
             "the scale finds itself: halved on overflow, grown while the gradients stay finite",
             "logistic", "setosa", ("logits",), steps=60, lr=0.5, batch=30,
             weights=(0.0, 0.0, -5.0, -5.0), bias=-6.0, scaling="dynamic", scale=DYNAMIC_START,
             growth_interval=10, chance=2 / 3),
)}
DEFAULT_SCENARIOS = ("overflow", "saturated", "loss_scale_none", "loss_scale_static")


@dataclass
class Run:
    """One scenario x method x format: columns per step (1..steps) and per epoch."""

    scenario: str
    model: str
    method: str
    dtype: str
    steps: int
    lr: float
    seed: int
    loss: np.ndarray  # float64, per step: the mini-batch mean loss before the update
    status: np.ndarray  # str per step, against the float64 run's loss at the same step
    grad_norm: np.ndarray  # float64 norm of the (unscaled) weight gradient
    zero_grad: np.ndarray  # fraction of weight-gradient entries that are exactly 0
    grad_underflow: np.ndarray  # fraction of per-sample gradient terms lost to underflow in the backward pass
    scale: np.ndarray  # loss scale used at each step
    skipped: np.ndarray  # bool: the step was skipped (dynamic scaling, non-finite gradient)
    accuracy: np.ndarray  # per epoch, on the whole data set, after the epoch's last step
    final_accuracy: float
    steps_per_epoch: int
    chance: float
    reference: np.ndarray = field(default=None)  # the float64 run's loss

    @property
    def first_nonfinite_step(self) -> int | None:
        bad = np.flatnonzero(~np.isfinite(self.loss))
        return int(bad[0]) + 1 if bad.size else None

    def epochs_at_chance(self, margin: float = 0.1) -> int:
        """Epochs before the accuracy first exceeds chance + ``margin`` (all epochs if never)."""
        above = np.flatnonzero(self.accuracy > self.chance + margin)
        return int(above[0]) if above.size else len(self.accuracy)


# ---------------------------------------------------------------- the model
def _matvec(a: Arith, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Logits of every method (row m of ``a``): x (B, D) with w (M, K, D) -> (M, B, K), or
    w (M, D) -> (M, B); each a sum over D as a tree."""
    if w.ndim == 3:
        return a.tree(a.add, a.mul(x[None, :, None, :], w[:, None]), 0.0)
    return a.tree(a.add, a.mul(x[None], w[:, None]), 0.0)


def _loss(a: Arith, method: str, logits: np.ndarray, y: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-sample loss by the experiments' kernels.  ``y``: the labels; ``target``: them as format
    values (logistic: 0 / 1, (B,); softmax: one-hot, (B, K))."""
    if method in SOFTMAX_METHODS:
        return getattr(softmax_ce, method)(a, softmax_ce.Loaded(logits, y))
    if method == "sigmoid_log":
        return binary_ce.sigmoid_log(a, binary_ce.Loaded(logits[:, None], target[:, None]))
    if method == "logits":
        return binary_ce.from_logits(a, binary_ce.Loaded(logits[:, None], target[:, None]))
    if method == "mse_sigmoid":
        r = a.sub(a.sigmoid(logits)[0], target)
        return a.mul(a.mul(r, r), a.const(np.full(len(y), 0.5)))
    raise KeyError(method)


_GRADIENTS = {  # method -> dL/dlogits (a, logits, labels, target), by the kernels of grad_kernels
    "naive_softmax_log": lambda a, z, y, t: grad_kernels.softmax_minus_onehot(a, z, t),
    "shifted_softmax_log": lambda a, z, y, t: grad_kernels.softmax_minus_onehot(a, z, t, shift=True),
    "log_softmax": lambda a, z, y, t: grad_kernels.log_softmax_others(a, z, y),
    "log_softmax_log1p": lambda a, z, y, t: grad_kernels.log_softmax_others(a, z, y, log1p=True),
    "sigmoid_log": lambda a, z, y, t: grad_kernels.sigmoid_minus_y(a, z, t),
    "logits": lambda a, z, y, t: grad_kernels.sigmoid_minus_y_branched(a, z, y == 1),
    "mse_sigmoid": lambda a, z, y, t: grad_kernels.mse_sigmoid(a, z, t),
}


def _dloss(a: Arith, method: str, logits: np.ndarray, y: np.ndarray, target: np.ndarray) -> np.ndarray:
    """dL/dlogits per sample (unscaled, before the 1/B of the mean); ``target`` as for :func:`_loss`.
    ``a``: a fork of the forward's Arith, so that the forward quantities it repeats (exp(x), its
    sum, ...) are shared (:func:`arith._shared`), not computed again."""
    try:
        gradient = _GRADIENTS[method]
    except KeyError:
        raise KeyError(method) from None
    return gradient(a, logits, y, target)


def _predict(fmt: Format, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Predicted class per method and sample, (M, N) (-1 where the logits are not all finite:
    counted wrong)."""
    logits = _matvec(Arith(fmt, len(w), quiet=True), x, w)
    if w.ndim == 3:
        finite = np.isfinite(logits).all(axis=-1)
        return np.where(finite, np.argmax(np.where(finite[..., None], logits, 0), axis=-1), -1)
    return np.where(np.isfinite(logits), (logits >= 0).astype(np.int64), -1)


def _initial(scenario: Scenario, fmt: Format, features: int, classes: int, methods: int,
             dtype=None) -> np.ndarray:
    """The starting weights of every method, (M, K, D) or (M, D), the format's values in ``dtype`` (default:
    the format's own; the training loop gives its Arith's held dtype, in which every later weight is held:
    bfloat16's values in float32, without importing ml_dtypes)."""
    if scenario.model == "softmax":
        w = np.zeros((methods, classes, features + 1))
    else:
        w = np.zeros((methods, features + 1))
        if scenario.weights is not None:
            w[:, :-1] = scenario.weights
    w[..., -1] = scenario.bias
    return fmt.round(w, dtype)


def _after(first: np.ndarray, offset) -> np.ndarray:
    """Steps of events counted from ``offset`` (NEVER stays NEVER)."""
    return np.where(first == NEVER, NEVER, first + offset)


def _forward(fmt: Format, methods: tuple[str, ...], batch: tuple[np.ndarray, ...], w: np.ndarray,
             loud: np.ndarray):
    """The forward pass of ``methods`` (weights w, (M, ...)) on the mini-batch (x, y, target).

    Returns per method (logits, the Arith of its loss kernel: the backward pass forks it),
    the mean losses (M,) and the step events (M, len(EVENTS)) of the methods where ``loud``
    (NEVER for the others: their Ariths are quiet): those of the matvec (row m of a shared
    Arith), then of the method's loss kernel, then of the batch mean, in the order of one
    Arith doing all three.
    """
    x, y, target = batch
    quiet = not loud.any()
    a = Arith(fmt, len(methods), quiet=quiet)
    logits = _matvec(a, x, w)
    kernels, per_sample = [], []
    first = np.full((len(methods), len(EVENTS)), NEVER, dtype=np.int64)
    mean_from = np.zeros(len(methods), dtype=np.int64)  # the step before the batch mean's first
    for k, method in enumerate(methods):
        f, z = Arith(fmt, len(y), quiet=not loud[k]), logits[k]
        per_sample.append(_loss(f, method, z, y, target))
        kernels.append((z, f))
        if loud[k]:
            first[k] = np.minimum(a.first[:, k], _after(f.first.min(axis=1), a.step))
            mean_from[k] = a.step + f.step
    s = Arith(fmt, len(methods), quiet=quiet)
    total = s.div(s.tree(s.add, np.stack(per_sample), 0.0), s.const(float(len(y))))
    if not quiet:
        first = np.where(loud[:, None], np.minimum(first, _after(s.first.T, mean_from[:, None])), NEVER)
    return kernels, total.astype(np.float64), first


def _backward(fmt: Format, methods: tuple[str, ...], kernels: list, batch: tuple[np.ndarray, ...],
              scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The weight gradient of the mean loss of every method, (M, ...) like the weights, and per
    method the fraction of per-sample gradient terms lost to underflow.

    ``kernels``: per method (logits, Arith of its loss kernel) from :func:`_forward`; ``scale``:
    the loss scale S per method.  dL/dz (:func:`_dloss`) times S / B, times the features (the
    per-sample terms of the weight gradient), summed over the batch as a tree, times 1/S (an
    exact power of two: S itself is not a float16 value from 2**16 on).
    """
    x, y, target = batch
    m, size = len(methods), len(y)
    dz = np.stack([_dloss(f.fork(), method, z, y, target) for method, (z, f) in zip(methods, kernels)])
    column = (m,) + (1,) * (dz.ndim - 1)  # a value per method, against (M, B, ...) dL/dz or (M, ...) weights
    g = Arith(fmt, m, quiet=True)
    dzs = g.mul(dz, g.const(scale / size).reshape(column))
    if dz.ndim == 3:
        terms = g.mul(dzs[..., None], x[None, :, None, :])  # (M, B, K, D)
        nonzero = (dz != 0)[..., None] & (x != 0)[None, :, None, :]
    else:
        terms = g.mul(dzs[..., None], x[None])  # (M, B, D)
        nonzero = (dz != 0)[..., None] & (x != 0)[None]
    underflow = np.mean((terms == 0) & nonzero, axis=tuple(range(1, terms.ndim)))
    summed = g.tree(g.add, np.moveaxis(terms, 1, -1), 0.0)
    grad, scaled = summed, (scale != 1).reshape(column)
    if scaled.any():
        grad = np.where(scaled, g.mul(summed, g.const(1.0 / scale).reshape(column)), summed)
    return grad, underflow


def _train(scenario: Scenario, fmt: Format, methods: tuple[str, ...]) -> list[tuple[dict, np.ndarray]]:
    """The training loop of ``methods`` side by side; per method its per-step and per-epoch
    columns and its step events (len(EVENTS), steps; NEVER where not recorded: see above)."""
    x64, y_all = task_data(scenario.task)
    n, width = x64.shape
    classes = int(y_all.max()) + 1
    data = Arith(fmt, n)
    x_all = data.load(x64)
    targets = data.const(np.eye(classes)[y_all] if scenario.model == "softmax" else y_all.astype(float))
    lr = data.const(scenario.lr)
    m = len(methods)
    w = _initial(scenario, fmt, width - 1, classes, m, data.dtype)
    axes = tuple(range(1, w.ndim))  # the weight axes of (M, ...) arrays
    column = (m,) + (1,) * len(axes)  # a value per method, against (M, ...) weights or (M, B, ...) dL/dz
    batch = scenario.batch
    per_epoch = n // batch
    rng = np.random.default_rng(scenario.seed)
    steps = scenario.steps
    loss, grad_norm, zero_grad, underflow, scales = (np.empty((m, steps)) for _ in range(5))
    skipped = np.zeros((m, steps), dtype=bool)
    first = np.full((m, len(EVENTS), steps), NEVER, dtype=np.int64)
    accuracy = []
    scale, good = np.full(m, scenario.scale), np.zeros(m, dtype=np.int64)
    loud = np.zeros(m, dtype=bool)  # the methods whose forward records events
    order = None
    for t in range(steps):
        if t % per_epoch == 0:
            order = rng.permutation(n)
        idx = order[(t % per_epoch) * batch:(t % per_epoch + 1) * batch]
        xb, yb, tb = x_all[idx], y_all[idx], targets[idx]
        # forward, with events where classify reads them: a NaN, inf or 0 loss (expected where the
        # previous step's was; where it was not, the method's forward runs again, with events)
        kernels, loss[:, t], first[:, :, t] = _forward(fmt, methods, (xb, yb, tb), w, loud)
        lost = ~np.isfinite(loss[:, t]) | (loss[:, t] == 0)
        again = np.flatnonzero(lost & ~loud)
        if again.size:
            first[again, :, t] = _forward(fmt, tuple(methods[k] for k in again), (xb, yb, tb), w[again],
                                          np.ones(again.size, dtype=bool))[2]
        loud = lost
        grad, underflow[:, t] = _backward(fmt, methods, kernels, (xb, yb, tb), scale)
        with np.errstate(all="ignore"):
            g64 = grad.astype(np.float64)
            grad_norm[:, t] = np.sqrt(np.sum((g64 * g64).reshape(m, -1), axis=1))
        zero_grad[:, t] = np.mean(g64 == 0, axis=axes)
        scales[:, t] = scale
        g = Arith(fmt, m, quiet=True)
        updated = g.sub(w, g.mul(lr, grad))
        if scenario.scaling == "dynamic":
            bad = ~np.isfinite(g64).all(axis=axes)
            skipped[:, t] = bad
            w = np.where(bad.reshape(column), w, updated)
            good = np.where(bad, 0, good + 1)
            grow = good == scenario.growth_interval
            scale = np.where(bad, scale / 2, np.where(grow, np.minimum(scale * 2, MAX_SCALE), scale))
            good[grow] = 0
        else:
            w = updated
        if (t + 1) % per_epoch == 0:
            accuracy.append(np.mean(_predict(fmt, x_all, w) == y_all, axis=1))
    final = np.mean(_predict(fmt, x_all, w) == y_all, axis=1)
    accuracy = np.array(accuracy).reshape(-1, m)
    return [(dict(loss=loss[k], grad_norm=grad_norm[k], zero_grad=zero_grad[k], grad_underflow=underflow[k],
                  scale=scales[k], skipped=skipped[k], accuracy=accuracy[:, k].copy(), final_accuracy=float(final[k]),
                  steps_per_epoch=per_epoch), first[k]) for k in range(m)]


def _status(fmt: Format, loss: np.ndarray, first: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each step's status by the project's rule, the float64 trajectory as the 'exact' value."""
    ref = np.asarray(reference, dtype=np.float64)
    exact = from_longdouble(ref, ref == 0)
    events = Arith(fmt, len(loss))
    events.first = first.copy()
    return classify(fmt, loss, exact, events).status


def _runs(scenario: Scenario, fmt: Format, methods: tuple[str, ...],
          references: list[np.ndarray] | None = None) -> list[Run]:
    """Train ``methods`` in ``fmt`` (side by side); ``references``: the float64 runs' losses,
    one per method (computed here when not given)."""
    for method in methods:
        if method not in scenario.methods:
            raise KeyError(f"method {method!r} is not in scenario {scenario.name!r}")
    trained = _train(scenario, fmt, methods)
    if references is None:
        f64 = FORMATS["float64"]
        references = [c["loss"] for c, _ in (trained if fmt is f64 else _train(scenario, f64, methods))]
    return [Run(scenario.name, scenario.model, method, fmt.name, scenario.steps, scenario.lr, scenario.seed,
                status=_status(fmt, columns["loss"], first, reference), reference=np.asarray(reference),
                chance=scenario.chance, **columns)
            for method, (columns, first), reference in zip(methods, trained, references)]


def run(scenario: Scenario, fmt: Format, method: str, reference: np.ndarray | None = None) -> Run:
    """Train ``method`` in ``fmt`` under ``scenario``.  ``reference``: the float64 run's loss per
    step (computed here when not given)."""
    return _runs(scenario, fmt, (method,), None if reference is None else [reference])[0]


def with_settings(scenario: Scenario, steps: int | None = None, lr: float | None = None,
                  seed: int | None = None) -> Scenario:
    """The scenario with --steps / --lr / --seed applied."""
    changes = {k: v for k, v in (("steps", steps), ("lr", lr), ("seed", seed)) if v is not None}
    return replace(scenario, **changes)


def run_scenario(scenario: Scenario, formats: list[Format]) -> list[Run]:
    """Every method of the scenario in every format (methods x formats, in that order); the
    methods of a format train side by side, the float64 runs once."""
    f64 = FORMATS["float64"]
    references = _runs(scenario, f64, scenario.methods)
    losses = [r.loss for r in references]
    by_format = [references if fmt is f64 else _runs(scenario, fmt, scenario.methods, losses) for fmt in formats]
    return [runs[k] for k in range(len(scenario.methods)) for runs in by_format]


def check_settings(steps: int | None, lr: float | None) -> str | None:
    """A one-line problem with --steps / --lr, or None."""
    if steps is not None and not 1 <= steps <= 100_000:
        return f"steps = {steps}; it must be an integer from 1 to 100000"
    if lr is not None and not (0 < lr < math.inf):
        return f"lr = {lr}; it must be a finite number > 0"
    return None


# ---------------------------------------------------------------- sentences
def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def findings(runs: list[Run]) -> list[tuple[str, str]]:
    """Generated sentences per scenario, every number from the runs."""
    out = []
    by = {(r.scenario, r.method, r.dtype): r for r in runs}
    for scenario in dict.fromkeys(r.scenario for r in runs):
        mine = [r for r in runs if r.scenario == scenario]
        for r in mine:
            if r.dtype == "float64":
                continue
            ref = by.get((scenario, r.method, "float64"))
            ref_text = f" (float64: {_pct(ref.final_accuracy)})" if ref is not None else ""
            if r.first_nonfinite_step is not None:
                kind = "NaN" if np.isnan(r.loss[r.first_nonfinite_step - 1]) else "inf"
                after = "; the run ends at" if not np.isfinite(r.loss[-1]) else "; it ends finite, at"
                out.append((scenario, f"In {r.dtype} the {r.method} loss becomes {kind} at step "
                                      f"{r.first_nonfinite_step}{after} {_pct(r.final_accuracy)} accuracy{ref_text}."))
        stable = [r for r in mine if r.dtype != "float64" and r.first_nonfinite_step is None]
        for dtype in dict.fromkeys(r.dtype for r in stable):
            same = [r for r in stable if r.dtype == dtype]
            texts = []
            for r in same:
                ref = by.get((scenario, r.method, "float64"))
                if ref is None:
                    continue
                close = abs(r.final_accuracy - ref.final_accuracy) <= 0.01
                texts.append(f"{r.method} trains to {_pct(r.final_accuracy)}" +
                             (", as in float64" if close else f" (float64: {_pct(ref.final_accuracy)})"))
            if texts:
                out.append((scenario, f"In {dtype} with finite losses throughout: " + "; ".join(texts) + "."))
        for r in mine:
            epochs = len(r.accuracy)
            if epochs and SCENARIOS[scenario].track_chance:
                stuck = r.epochs_at_chance()
                out.append((scenario, f"{r.method} in {r.dtype}: " + (
                    f"at chance accuracy ({_pct(r.chance)} + 10 points or less) for all {epochs} epochs"
                    if stuck == epochs else f"above chance after {stuck} epoch{'s' if stuck != 1 else ''}") +
                    f"; the weight gradient is exactly 0 at {int((r.zero_grad == 1).sum())} of {r.steps} steps."))
            if r.grad_underflow.max() > 0 or r.scale.max() != 1:
                lost = int((r.grad_underflow > 0).sum())
                text = (f"{r.method} in {r.dtype} (loss scale {_scale_text(r)}): per-sample gradient terms lost to "
                        f"underflow in the backward pass at {lost} of {r.steps} steps"
                        + (f" (up to {_pct(r.grad_underflow.max())} of them)" if lost else ""))
                if r.skipped.any():
                    text += f"; {int(r.skipped.sum())} step(s) skipped on an overflowed gradient"
                out.append((scenario, text + "."))
    return out


def _scale_text(r: Run) -> str:
    if (r.scale == r.scale[0]).all():
        return f"{r.scale[0]:g}"
    return f"dynamic, {r.scale[0]:g} -> {r.scale[-1]:g}"
