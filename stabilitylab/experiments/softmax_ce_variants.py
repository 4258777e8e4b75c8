"""softmax_ce_variants: the cross-entropy with the options language models train with.

A case is a small batch of rows (tokens) with its options (:mod:`stabilitylab.experiments.loss_options`:
reduction, ignore_index, label smoothing, z-loss, softcap, temperature); its value is the reduced
loss.  Three formulations of the same options:

* ``log_softmax``               log-probabilities (x' - m) - log(sum exp(x' - m)), ignored rows
  masked everywhere (the stable form);
* ``logsumexp_minus_logit``     x' - logsumexp(x'): a correct logsumexp, but the gaps between
  logits are lost in it at large |x'| (MLX #4188; PyTorch #11752: [1e8, 1e8] gives 0 for ln 2);
* ``smoothing_counts_ignored``  the stable form whose label-smoothing term also counts the ignored
  rows (PyTorch before the fix of #73205).

The default cases are one row per variant, each named after it and its public source.  With
``compare --reduction ... --softcap ...`` (:func:`with_options`) the same inputs run under the
options given instead.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .base import Experiment, Family, Method, ParamNames, Settings, Truth
from .loss_options import (
    LossBatch,
    LossOptions,
    concat,
    exact_rows,
    exact_variant_loss,
    load,
    loss_case,
    option_columns,
    variant_loss,
    with_options,
)

__all__ = ["SOFTMAX_CE_VARIANTS", "default_cases", "with_options"]

IGNORE = -100  # PyTorch's default ignore_index
# the case's name carries its note: a kernel's 0 / 0 is NaN (training dies), the exact value the convention 0
ALL_IGNORED = "all ignored, mean over n = 0 rows: 0/0 is NaN; exact sum/max(n,1) = 0 (torchtune#2341, OpenRLHF#583)"


def default_cases() -> LossBatch:
    """One case per variant (the rows issue #20's "Done means" asks for, and a few more)."""
    spread = [[2.0, 0.5, -1.0, -3.0], [6.0, -6.0, -6.0, -6.0], [0.0, 1.0, -2.0, 4.0]]
    many = np.tile([[1.0, -1.0]], (257, 1))
    return concat([
        loss_case(ALL_IGNORED, spread, [IGNORE] * 3,
                  LossOptions("mean", IGNORE)),
        loss_case("label smoothing 0.1, 1 of 3 rows ignored, mean (pytorch#73205)", spread, [0, IGNORE, 3],
                  LossOptions("mean", IGNORE, label_smoothing=0.1)),
        loss_case("label smoothing 0.1, none: [2,0.5,-1,-3],y=0", spread[0], [0], LossOptions(label_smoothing=0.1)),
        loss_case("softcap 0 (0 meant off; refused on the command line): [2,0.5,-1,-3],y=0", spread[0], [0],
                  LossOptions(softcap=0.0)),
        loss_case("softcap 30 (Gemma 2): [50,20,-10],y=1", [50.0, 20.0, -10.0], [1], LossOptions(softcap=30.0)),
        loss_case("z-loss 1e-4 (PaLM): [30,28,25],y=1", [30.0, 28.0, 25.0], [1], LossOptions(z_loss=1e-4)),
        loss_case("z-loss 1e-4 (PaLM): [300,298,295],y=1 (lse**2 > 65504)", [300.0, 298.0, 295.0], [1],
                  LossOptions(z_loss=1e-4)),
        loss_case("temperature 2: [10,9.9,9.9],y=0", [10.0, 9.9, 9.9], [0], LossOptions(temperature=2.0)),
        loss_case("mean over 257 tokens [1,-1],y=1 (a count of 257 held in the format)", many, [1] * 257,
                  LossOptions("mean")),
        loss_case("sum over 257 tokens [1,-1],y=1", many, [1] * 257, LossOptions("sum")),
        loss_case("no shift in the loss: [1e8,1e8],y=0 (mlx#4188, pytorch#11752)", [1e8, 1e8], [0], LossOptions()),
    ])


# ------------------------------------------------------------------ families (thresholds -e softmax_ce_variants)
COUNT_ROWS = 256  # rows of the count family's batch (the first n used, the others ignored)
UPPER = 512  # the other families' search range: 0 (or 1) to UPPER
Z_LOSS = 1e-4  # the z_loss family's coefficient (PaLM's)


def _family(n: np.ndarray, logits: np.ndarray, labels: np.ndarray, options: LossOptions) -> LossBatch:
    """A family's batch: one case per parameter value, logits (P, T, K), labels (P, T), one set of options."""
    cases, t, k = logits.shape
    return LossBatch(ParamNames("n", n), logits, labels, np.full(cases, t), np.full(cases, k),
                     **option_columns(options, cases))


def offset_cases(n: np.ndarray, settings: Settings) -> LossBatch:
    """logits [n, n], label 0, reduction none: the loss is ln 2 whatever n (MLX #4188's [1e8, 1e8])."""
    x = np.asarray(n, dtype=np.float64)
    return _family(n, np.stack([x, x], axis=-1)[:, None, :], np.zeros((len(x), 1), dtype=np.int64), LossOptions())


def z_loss_cases(n: np.ndarray, settings: Settings) -> LossBatch:
    """logits [n, n - 2, n - 5], label 1, z-loss 1e-4: lse ~ n + 0.13 and lse**2 grows as n**2."""
    x = np.asarray(n, dtype=np.float64)
    return _family(n, np.stack([x, x - 2, x - 5], axis=-1)[:, None, :], np.ones((len(x), 1), dtype=np.int64),
                   LossOptions(z_loss=Z_LOSS))


def softcap_cases(n: np.ndarray, settings: Settings) -> LossBatch:
    """The default z-loss case that overflows in float16, logits [300, 298, 295], label 1, z-loss 1e-4, under
    the cap c = n: c * tanh(x / c) holds every logit (and so lse) below c, so lse**2 is finite in float16 as
    long as the cap keeps lse below 256."""
    cases = len(n)
    batch = _family(n, np.tile([[[300.0, 298.0, 295.0]]], (cases, 1, 1)), np.ones((cases, 1), dtype=np.int64),
                    LossOptions(z_loss=Z_LOSS, softcap=1.0))
    return replace(batch, cap=np.asarray(n, dtype=np.float64))


def count_cases(n: np.ndarray, settings: Settings) -> LossBatch:
    """COUNT_ROWS rows of logits [16, 16] with z-loss 1 (each row's loss ln 2 + (16 + ln 2)**2 = 279.35, with no
    exponential below 1: no underflow on the way), label 0 on the first n rows and the ignore index on the
    others, mean: the sum of the kept rows (~279.35 n) over the count n held in the format."""
    cases = len(n)
    labels = np.where(np.arange(COUNT_ROWS)[None, :] < np.asarray(n)[:, None], 0, IGNORE)
    return _family(n, np.full((cases, COUNT_ROWS, 2), 16.0), labels, LossOptions("mean", IGNORE, z_loss=1.0))


FAMILIES = (
    Family("offset", "n", "logits [n, n], label 0: a common offset (the loss is ln 2)", offset_cases,
           integer=True, lower=0, upper=UPPER),
    Family("z_loss", "n", f"logits [n, n-2, n-5], label 1, z-loss {Z_LOSS:g}: lse**2 ~ n**2 (float16: > 65504 at "
           "n = 256)", z_loss_cases, integer=True, lower=0, upper=UPPER),
    Family("softcap", "n", f"logits [300, 298, 295], label 1, z-loss {Z_LOSS:g}, cap c = n: c * tanh(x / c) keeps "
           "lse below c", softcap_cases, integer=True, lower=1, upper=UPPER),
    Family("count", "n", f"{COUNT_ROWS} rows [16, 16] with z-loss 1, label 0 on the first n (the rest ignored), "
           "mean: a sum ~279.35 n over a count n held in the format", count_cases, integer=True, lower=1,
           upper=COUNT_ROWS),
)


SOFTMAX_CE_VARIANTS = Experiment(
    name="softmax_ce_variants",
    title="Cross-entropy options: reduction, ignore_index, label smoothing, z-loss, softcap, temperature",
    question="Which loss options lose the loss (an empty mean, smoothing over ignored rows, a cap of 0, z-loss in "
             "16 bits, a count held in bfloat16), and which formulation keeps it?",
    methods=(
        Method("log_softmax", "(x'-m) - log(sum exp(x'-m)); options as in loss_options", variant_loss, stable=True),
        Method("logsumexp_minus_logit", "x' - (m + log(sum exp(x'-m))) (mlx#4188)",
               lambda a, x: variant_loss(a, x, centered=False)),
        Method("smoothing_counts_ignored", "log_softmax, smoothing term over ignored rows too (pytorch#73205)",
               lambda a, x: variant_loss(a, x, mask_smoothing=False), exact_formula=False),
    ),
    default_cases=default_cases,
    load=load,
    truth=Truth(exact_variant_loss, exact_rows),
    families=FAMILIES,
)
