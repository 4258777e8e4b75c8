"""The report's large-vocabulary section: ``linear_ce`` under the bfloat16 precision policies.

Two sets of curves, each computed by running ``linear_ce`` through the engine
(:func:`~stabilitylab.analysis.engine.evaluate`, exact references, the status rule), per policy of
:data:`POLICIES`:

* **chunks**: dL/dW[7, 0] of the ``chunks`` family (1024 tokens in k = 2**n chunks, n = 0..10), the
  chunk partials added in a buffer of the storage format (``grad_weight_chunks_storage``) or of float32
  (``grad_weight_chunks_fp32``), error bits against k;
* **p_y**: the ``confident`` family (logits [0, -n/16], label 0) on :data:`CONFIDENT_GRID`: the mean
  loss (``materialized_log_softmax``) and p_y - 1 formed in the compute format (``grad_logit_true``) or
  with p_y written to the storage format first (``grad_logit_true_storage``), error bits against
  1 - p_y, where 1 - p_y = -(exact p_y - 1) of the inputs *as stored in that policy* (so each policy's
  curve has its own x values: bfloat16 rounds n/16).

Error bits are log2(ulps + 1) in the policy's output format (precision p: 8 for every bfloat16 policy,
24 for float32); the figure draws them as a percentage of p.  The sentences are computed from the same
curves: counts of statuses other than ok, and the first grid point at which each curve is not ok.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis.engine import evaluate
from ..experiments.base import Settings
from ..experiments.linear_ce import LINEAR_CE
from ..numerics.policies import format_or_policy

__all__ = ["POLICIES", "CHUNK_METHODS", "PY_METHODS", "FIGURE", "HEADING", "Curve", "curves", "sentences",
           "section", "CONFIDENT_GRID"]

POLICIES = ("bf16", "bf16+fp32", "bf16@fp32", "float32")
CHUNK_METHODS = ("grad_weight_chunks_storage", "grad_weight_chunks_fp32")
PY_METHODS = ("materialized_log_softmax", "grad_logit_true", "grad_logit_true_storage")
FIGURE = "figures/large_vocabulary.png"
HEADING = "## Large-vocabulary losses (linear_ce)"
_CONFIDENT = LINEAR_CE.family("confident")
_CHUNKS = LINEAR_CE.family("chunks")
# n of the confident family (d = n/16): log-spaced integers 1..upper (97 points rounded, the repeats dropped)
CONFIDENT_GRID = np.unique(np.round(np.logspace(0, np.log10(_CONFIDENT.upper), 97)).astype(np.int64))
CHUNK_GRID = np.arange(_CHUNKS.lower, _CHUNKS.upper + 1, dtype=np.int64)  # k = 2**n chunks


@dataclass(frozen=True)
class Curve:
    """One method in one policy along a family: ``x`` (chunks k, or 1 - p_y), the engine's ``value``,
    ``error_bits`` and ``status`` per point; ``precision``: p of the policy's output format."""

    panel: str  # "chunks" or "p_y"
    policy: str
    method: str
    x: np.ndarray
    value: np.ndarray
    error_bits: np.ndarray
    status: np.ndarray
    precision: int


def curves(policy: str, settings: Settings = Settings()) -> list[Curve]:
    """The chunks and p_y curves of one policy (see the module docstring)."""
    fmt = format_or_policy(policy)
    out = []
    chunk = evaluate(LINEAR_CE, fmt, _CHUNKS.cases(CHUNK_GRID, settings), methods=CHUNK_METHODS)
    for m in CHUNK_METHODS:
        o = chunk[m]
        out.append(Curve("chunks", policy, m, (2 ** CHUNK_GRID).astype(np.float64), o.value, o.error_bits,
                         o.status, fmt.precision))
    conf = evaluate(LINEAR_CE, fmt, _CONFIDENT.cases(CONFIDENT_GRID, settings), methods=PY_METHODS)
    one_minus_py = -np.asarray(conf["grad_logit_true"].reference, dtype=np.float64)  # exact -(p_y - 1)
    for m in PY_METHODS:
        o = conf[m]
        out.append(Curve("p_y", policy, m, one_minus_py, o.value, o.error_bits, o.status, fmt.precision))
    return out


def _first(c: Curve):
    """Index of the first grid point whose status is not ok (None: all ok)."""
    bad = np.flatnonzero(c.status != "ok")
    return None if not len(bad) else int(bad[0])


def sentences(all_curves: list[Curve]) -> list[str]:
    """Findings, per policy, counted from the curves."""
    by = {(c.panel, c.policy, c.method): c for c in all_curves}
    out = []
    for policy in dict.fromkeys(c.policy for c in all_curves):
        store, wide = by[("chunks", policy, CHUNK_METHODS[0])], by[("chunks", policy, CHUNK_METHODS[1])]
        bad = int((store.status != "ok").sum())
        first = _first(store)
        text = f"{policy}, dL/dW[7, 0] over {len(store.x)} chunk counts (1 to {int(store.x[-1])} chunks): "
        if bad:
            text += (f"with a storage-format buffer it is not ok at {bad} of the {len(store.x)} chunk counts (first "
                     f"{store.status[first]} at {int(store.x[first])} chunks), {store.error_bits[-1]:.2f} of "
                     f"{store.precision} bits lost at {int(store.x[-1])} chunks")
        else:
            text += (f"with a storage-format buffer it is ok at every chunk count (at most "
                     f"{np.max(store.error_bits):.2f} of {store.precision} bits lost)")
        wide_bad = int((wide.status != "ok").sum())
        text += ("; with a float32 buffer it is " + (f"not ok at {wide_bad} of them" if wide_bad else
                                                     "ok at every one") +
                 f", at most {np.max(wide.error_bits):.2f} bits lost.")
        out.append(text)
        parts = []
        for m in PY_METHODS:
            c = by[("p_y", policy, m)]
            i = _first(c)
            parts.append(f"{m} is ok at every point" if i is None else
                         f"{m} is first {c.status[i]} at 1 - p_y = {c.x[i]:.3g} (n = {int(CONFIDENT_GRID[i])})")
        out.append(f"{policy}, the confident family on {len(CONFIDENT_GRID)} values of n (1 - p_y from "
                   f"{np.max(c.x):.3g} to {np.min(c.x):.3g}): " + "; ".join(parts) + ".")
    return out + _coinciding(all_curves)


def _coinciding(all_curves: list[Curve]) -> list[str]:
    """Pairs of policies whose values are bit-identical at every point of a panel, every method."""
    policies = list(dict.fromkeys(c.policy for c in all_curves))
    out = []
    for panel, name in (("chunks", "the chunks panel"), ("p_y", "the p_y panel")):
        values = {pol: [c.value for c in all_curves if c.panel == panel and c.policy == pol] for pol in policies}
        for i, a in enumerate(policies):
            for b in policies[i + 1:]:
                if all(np.array_equal(u, v, equal_nan=True) for u, v in zip(values[a], values[b])):
                    points = sum(len(v) for v in values[a])
                    out.append(f"{a} and {b} give bit-identical values at all {points} points of {name} "
                               "(their curves coincide).")
    return out


def section(all_curves: list[Curve]) -> list[str]:
    """The section's markdown lines (the figure is :data:`FIGURE`)."""
    return [HEADING, "",
            "Chunked and fused linear cross-entropy kernels (`linear_ce`, see the guide on large-vocabulary "
            "losses) under the precision policies " + ", ".join(f"`{p}`" for p in dict.fromkeys(
                c.policy for c in all_curves)) + ". Left: the weight-gradient entry dL/dW[7, 0] of the `chunks` "
            "family (1024 tokens, V = 8, D = 4, no token labelled 7) with the token chunks' partials added in "
            "a buffer of the storage format or of float32. Right: the `confident` family (logits [0, -n/16], "
            "label 0) against 1 - p_y of the inputs as each policy stores them: the mean loss and the "
            "true-class gradient p_y - 1, formed in the compute format or from p_y written to the storage "
            "format. Errors are in bits lost, as a percentage of the output format's precision p (8 bits for "
            "the bfloat16 policies, 24 for float32); every point is the engine's, against an exact reference. "
            "Statuses below are the status rule's on the figure's points (not a threshold search between them).",
            "", f"![linear_ce: weight-gradient error vs chunks, loss and gradient error vs p_y]({FIGURE})", "",
            *[f"- {s}" for s in sentences(all_curves)], ""]
