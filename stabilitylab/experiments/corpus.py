"""Inputs taken from public bug reports, each case named after its source.

Audits append these to the experiment's default cases.  A case is the input a
report gives (or the row of it the report points at), not a claim that the bug
reproduces here: several were reported on GPUs or on older releases, and the
audit shows what the installed kernel does with them.  Sources are GitHub
issue / PR numbers of the projects named (see BUG-CORPUS in the project guide).
"""

from __future__ import annotations

import numpy as np

from .binary_ce import Binary, binary_case
from .binary_ce import concat as concat_binary
from .cast import Values, value_cases
from .softmax_ce import Logits, concat, logits_case

__all__ = ["corpus"]

WIDE_ROW = 2**16  # jax #40409: rows of 2**16 logits


def _softmax_ce() -> list[Logits]:
    rand_1025 = np.random.default_rng(85791).random(1025)
    uniform_100 = np.random.default_rng(1020).uniform(0.0, 1.0, size=(2, 100))
    return [
        # optax softmax_cross_entropy: NaN for logits [-inf, 0], label 1 (exact loss 0)
        logits_case([-np.inf, 0.0], 1, "optax#896:[-inf,0],y=1"),
        # scipy logsumexp([0, -40]) returned 0 instead of 4.248e-18 (fixed by the log1p form, PR #21597)
        logits_case([0.0, -40.0], 0, "scipy#18295:[0,-40],y=0"),
        # the row of uniform(-20260, -19740) (rng 432) at whose entry [0,0,0,0,5,0] float16 LogSoftmax(dim=2)
        # gave -inf on CPU (torch 2.7.1)
        logits_case([-19769.521998461314, -19884.088453547065], 0,
                    "pytorch#158310:row [0,0,:,0,5,0] of uniform(-20260,-19740) rng 432,y=0"),
        # rand(4, 3) - 1e7: CUDA log_softmax gave -1, -2 (reported on CUDA, float32)
        logits_case(np.array([0.2, 0.7, 0.4]) - 1e7, 1, "pytorch#38839:[0.2,0.7,0.4]-1e7 (GPU report),y=1"),
        # uniform logits, 100 classes: bfloat16 integer-label CE gave 4.75, 5, 4.59 for 4.7477, 4.9904 ...
        logits_case(uniform_100[0], 0, "optax#1020:uniform(0,1) K=100 rng 1020 row 0,y=0"),
        logits_case(uniform_100[1], 1, "optax#1020:uniform(0,1) K=100 rng 1020 row 1,y=1"),
        # float16 CrossEntropyLoss gave inf on CUDA for rand logits with 1025 classes
        logits_case(rand_1025, 0, "pytorch#85791:rand K=1025 rng 85791 (GPU report),y=0"),
        # jax log_softmax: float16 gradient all NaN for rows of 2**16 elements, forward finite
        logits_case(np.zeros(WIDE_ROW), 0, "jax#40409:zeros(2**16),y=0"),
        # a fully masked row: every logit -inf (the loss is undefined; libraries differ by convention)
        logits_case([-np.inf, -np.inf, -np.inf], 0, "pytorch#131060:[-inf,-inf,-inf] (masked row),y=0"),
        # logsumexp(x) - x_y without a shift: mlx cross_entropy gave 0.0 for [1e8, 1e8] (exact ln 2) and
        # 0.0625 for [2, -1] + 1e6, 0.0 for [2, -1] + 1e8 (exact 0.0486); fixed by shifting by the max (PR #4188)
        logits_case([1e8, 1e8], 0, "mlx#4188:[1e8,1e8],y=0"),
        logits_case([1e8 + 2, 1e8 - 1], 0, "mlx#4188:[2,-1]+1e8,y=0"),
        # the same pattern in PyTorch's CrossEntropyLoss 0.4.1 (CPU and GPU): 0.0 for [1e8, 1e8], label 1
        logits_case([1e8, 1e8], 1, "pytorch#11752:[1e8,1e8],y=1"),
        # a loss near 36 is a multiple of 0.25 in bfloat16 (its ulp there): what a bf16 loss without autocast
        # shows (constructed from the report's description, Modalities #464: thread not read here)
        logits_case([0.0, -36.1], 1, "modalities#464 (constructed):[0,-36.1],y=1 (bf16 loss quantum 0.25)"),
        # a widely spread row whose unshifted exponentials all underflow in float16: sum exp(x) = 0
        # (constructed from the report's title, pytorch #187053, fp16 softmax_denom underflow: thread not read)
        logits_case([-18.0, -30.0, -45.0], 1, "pytorch#187053 (constructed):[-18,-30,-45],y=1 (fp16 denominator)"),
    ]


def _binary_ce() -> list[Binary]:
    return [
        # BCEWithLogitsLoss: NaN for logit +inf, target 1 (exact loss 0) and -inf, target 0
        binary_case("pytorch#102894:z=+inf,y=1", np.inf, 1),
        binary_case("pytorch#49844:z=-inf,y=0", -np.inf, 0),
        # BCEWithLogits with pos_weight gave NaN for logits [0, -120], targets [0, 1] (here without pos_weight)
        binary_case("pytorch#13773:z=[0,-120],y=[0,1] (no pos_weight)", [0.0, -120.0], [0, 1]),
        # log1p(-p.clamp(max=1 - 1e-6)): 1 - 1e-6 rounds to 1 in bfloat16 and float16, so a saturated p = 1
        # passes the clamp and log1p(-1) = -inf (the loss of a confident wrong answer, z = 8, label 0)
        binary_case("gliner2#155:z=8,y=0 (p rounds to 1; the clamp 1-1e-6 is 1 in bf16)", 8.0, 0),
    ]


def _cast() -> Values:
    # stabilitylab issue #19 (conventions differ): torch's CPU cast to float8_e4m3fn saturates, 1e4 and +inf
    # become 448, where ml_dtypes (and stabilitylab's round) give NaN; torch's e4m3fnuz cast gives NaN
    return value_cases([("stabilitylab#19:1e4 (torch e4m3fn cast 448, ml_dtypes NaN)", 1e4),
                        ("stabilitylab#19:+inf (torch e4m3fn cast 448, ml_dtypes NaN)", np.inf),
                        ("stabilitylab#19:-1e4 (torch e4m3fn cast -448)", -1e4)])


def corpus(experiment: str):
    """The corpus cases of ``softmax_ce``, ``binary_ce`` or ``cast`` as one batch."""
    if experiment == "softmax_ce":
        return concat(_softmax_ce())
    if experiment == "binary_ce":
        return concat_binary(_binary_ce())
    if experiment == "cast":
        return _cast()
    raise KeyError(f"no corpus for {experiment!r}; valid: softmax_ce, binary_ce, cast")
