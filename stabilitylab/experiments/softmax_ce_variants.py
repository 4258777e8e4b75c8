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

import numpy as np

from .base import Experiment, Method, Truth
from .loss_options import (
    LossBatch,
    LossOptions,
    concat,
    exact_rows,
    exact_variant_loss,
    load,
    loss_case,
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
)
