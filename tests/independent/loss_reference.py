"""A deliberately plain checker for the loss options and for tanh, sharing nothing with stabilitylab.

* :func:`round_to` rounds an mpmath value to a binary format given by its precision p, its
  smallest normal exponent emin and its largest finite value (integer arithmetic, ties to even).
* :func:`loss` is the cross-entropy with reduction / ignore_index / label smoothing / z-loss /
  softcap / temperature written the plainest way: probabilities p_i = exp(x_i) / sum_j exp(x_j)
  at 80 digits (no shift, no log-sum-exp), -log p_i, loops.  PyTorch's definitions: label
  smoothing (1 - eps) * (-log p_y) + eps / K * sum_i (-log p_i); PaLM's z-loss z * log(sum exp)**2;
  Gemma's cap c * tanh(x / c), then x / tau; ignored rows count 0 and are not counted in a mean;
  a mean over no rows is
  sum / max(n, 1) = 0 (the convention of the fixes of the all-ignored NaN: OpenRLHF #583).
  A cap of 0 is read as no cap (NeMo's / Unsloth's convention).
"""

from __future__ import annotations

import math

import mpmath

DIGITS = 80


def round_to(value, p: int, emin: int, largest: float) -> float:
    """``value`` (an mpf) rounded to nearest, ties to even, in a format of p significand bits whose
    smallest normal is 2**emin; beyond ``largest`` (after rounding) it is +-inf."""
    if value == 0:
        return 0.0
    a = abs(value)
    with mpmath.workprec(400):
        e = int(mpmath.floor(mpmath.log(a, 2)))
        while mpmath.mpf(2) ** e > a:
            e -= 1
        while mpmath.mpf(2) ** (e + 1) <= a:
            e += 1
        q = max(e, emin) - (p - 1)
        scaled = a / mpmath.mpf(2) ** q
        r = int(mpmath.floor(scaled))
        frac = scaled - r
        if frac > 0.5 or (frac == 0.5 and r % 2):
            r += 1
    out = math.ldexp(r, q)
    if out > largest:
        out = math.inf
    return -out if value < 0 else out


def loss(logits, labels, reduction="none", ignore_index=None, label_smoothing=0.0, z_loss=0.0, softcap=None,
         temperature=1.0):
    """The reduced loss of rows ``logits`` (lists of floats) with ``labels``, as an mpf (see the module)."""
    with mpmath.workdps(DIGITS):
        total = mpmath.mpf(0)
        used = 0
        for row, y in zip(logits, labels):
            if ignore_index is not None and y == ignore_index:
                continue
            used += 1
            xs = []
            for v in row:
                v = mpmath.mpf(v)
                if softcap:
                    v = mpmath.mpf(softcap) * mpmath.tanh(v / mpmath.mpf(softcap))
                xs.append(v / mpmath.mpf(temperature))
            denominator = mpmath.mpf(0)
            for v in xs:
                denominator += mpmath.exp(v)
            minus_log_p = [-mpmath.log(mpmath.exp(v) / denominator) for v in xs]
            eps = mpmath.mpf(label_smoothing)
            smooth = mpmath.mpf(0)
            for term in minus_log_p:
                smooth += term
            total += (1 - eps) * minus_log_p[y] + eps / len(xs) * smooth
            total += mpmath.mpf(z_loss) * mpmath.log(denominator) ** 2
        if reduction == "mean":
            return total / max(used, 1)
        return +total
