"""epsilon_clip: the article's ``-sum(t * log(y + 1e-7))`` against the exact loss.

Probabilities y come from the logits by the (max-shifted) softmax in the format;
the true class t is one-hot, so the loss is ``-log(y_t + eps)`` with
``eps = fl(1e-7)``:

* ``clip_add``     -log(y_t + eps): biased by eps, capped at -log(eps), and for a
  confident right answer y_t + eps can round to 1 (loss 0) or above it
  (a negative loss);
* ``clip_max``     -log(max(y_t, eps)): unbiased above eps, capped below it;
* ``from_logits``  the log-softmax (log1p form): no epsilon needed.

1e-7 itself is not representable everywhere: it is subnormal in float16 and 0
in float8 (``facts`` shows this per format).  Exact reference: the
cross-entropy of the format-rounded logits (no epsilon), as in softmax_ce.
"""

from __future__ import annotations

import numpy as np

from ..numerics.arith import Arith
from ..numerics.formats import Format
from .base import Experiment, Family, Method, ParamNames, Settings, Truth
from .softmax_ce import (
    Logits,
    concat,
    exact_cross_entropy,
    exact_rows,
    fast_cross_entropy,
    load,
    log_softmax_log1p,
    logits_case,
)

__all__ = ["EPSILON", "EPSILON_CLIP", "facts"]

EPSILON = 1e-7  # the article's delta


def _probability(a: Arith, x) -> np.ndarray:
    """y_t = exp(z_t) / sum exp(z), z = x - max(x), in the format."""
    e = a.exp(a.shift(x.logits))
    return a.div(a.pick(e, x.labels), a.tree(a.add, e, 0.0))


def _eps(a: Arith, like: np.ndarray) -> np.ndarray:
    return a.const(np.full(like.shape, EPSILON))


def clip_add(a: Arith, x):
    y = _probability(a, x)
    return a.neg(a.log(a.add(y, _eps(a, y))))


def clip_max(a: Arith, x):
    y = _probability(a, x)
    return a.neg(a.log(a.maximum(y, _eps(a, y))))


def default_cases() -> Logits:
    # article 003: y = softmax output, true class 2 (y = 0.6) and class 7 (y = 0.1); logits ln(y)
    y = np.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0])
    with np.errstate(divide="ignore"):
        logits = np.log(y)
    return concat([
        logits_case(logits, 2, "article:y=[.1,.05,.6,0,.05,.1,0,.1,0,0],t=2"),
        logits_case(logits, 7, "article:y=[.1,.05,.6,0,.05,.1,0,.1,0,0],t=7"),
        logits_case([20, 0], 0, "[20,0],t=0 (confident, right)"),
        logits_case([0, -20], 1, "[0,-20],t=1 (confident, wrong)"),
        logits_case([0, -100], 1, "[0,-100],t=1 (very wrong)"),
    ])


def ceiling_cases(d: np.ndarray, settings: Settings) -> Logits:
    """[0, -d], label 1: the true class has probability ~ e**-d; exact loss ~ d.

    Both clipped forms have a bias monotone in d (``Family.monotone_bias``): evaluated exactly, with
    p = e**-d / (1 + e**-d) = 1 / (1 + e**d) (the shift by the row's maximum changes nothing in exact
    arithmetic) and the exact loss L = -log p, clip_add's formula minus L is -log(p + eps) + log p =
    -log(1 + eps (1 + e**d)), and clip_max's is -log(max(p, eps)) + log p = min(0, log(p / eps)); p decreases
    with d, so both are non-increasing in d (eps = fl(1e-7) > 0 in float32, the only format searched on ranges)."""
    rows = len(d)
    return Logits(ParamNames("d", d), np.stack([np.zeros_like(d), -d], axis=1), np.ones(rows, dtype=np.int64),
                  np.full(rows, 2, dtype=np.int64))


def facts(formats: list[Format]) -> tuple[list[str], list[list[str]]]:
    """Per format: fl(1e-7) and its class, whether 1 +- eps round to 1, the loss ceiling -log(eps)."""
    headers = ["format", "fl(1e-7)", "class", "1 - eps rounds to 1", "1 + eps rounds to 1", "ceiling -log(eps)"]
    rows = []
    for fmt in formats:
        a = Arith(fmt, 1)
        eps = a.const(np.array([EPSILON]))
        one = a.const(np.array([1.0]))
        value = float(eps.astype(np.float64)[0])
        kind = "zero" if value == 0 else ("subnormal" if value < fmt.tiny else "normal")
        down = bool(a.sub(one, eps).astype(np.float64)[0] == 1)
        up = bool(a.add(one, eps).astype(np.float64)[0] == 1)
        ceiling = float(a.neg(a.log(eps)).astype(np.float64)[0])
        rows.append([fmt.name, repr(value), kind, "yes" if down else "no", "yes" if up else "no",
                     fmt.text(ceiling)])
    return headers, rows


EPSILON_CLIP = Experiment(
    name="epsilon_clip",
    title="Clipping the log with an epsilon: log(y + 1e-7)",
    question="What does -log(y + 1e-7) cost against the exact loss: a bias, a ceiling, "
             "and an epsilon that may not exist?",
    methods=(
        Method("clip_add", "-log(y_t + eps), y = softmax(x), eps = fl(1e-7)", clip_add, exact_formula=False),
        Method("clip_max", "-log(max(y_t, eps))", clip_max, exact_formula=False),
        Method("from_logits", "log1p(sum_{i != k} exp(x_i - m)) - (x_t - m) (no epsilon)", log_softmax_log1p,
               stable=True),
    ),
    default_cases=default_cases,
    load=load,
    truth=Truth(exact_cross_entropy, exact_rows, fast_cross_entropy),
    families=(Family("ceiling", "d", "logits [0, -d], label 1 (the clipped loss is capped near -log(eps))",
                     ceiling_cases, monotone_bias=("clip_add", "clip_max")),),
    facts=facts,
)
