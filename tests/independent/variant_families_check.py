"""Independent checker for the threshold families of softmax_ce_variants (a deliberately plain one).

Nothing here imports or reuses code from the ``stabilitylab`` package: the families, the kernels'
arithmetic and the status rule are written down again from the documentation
(docs/guides/loss-options.md, docs/guides/thresholds.md), and every parameter value of a family is
evaluated (an exhaustive scan of n from the family's lower end to its upper end).

FORMATS   bfloat16 (p = 8 significant bits, smallest normal 2**-126, largest 3.3895e38) and float16
          (p = 11, 2**-14, 65504); rounding to nearest, ties to even, beyond the largest value +-inf
          (``loss_reference.round_to``, integer arithmetic).
OPERATIONS every operation of a kernel is the exact result (mpmath at 60 digits: exp, log and tanh are
          correctly rounded unless within 10**-60 of a midpoint) rounded to the format; a sum of many
          terms is pairwise: level by level, neighbours (0, 1), (2, 3), ... added, an odd last term
          passing up unchanged.
KERNELS   (one row x of K logits, label y, options; x rounded to the format first)
          cap c: x_i <- c * tanh(x_i / c) (c rounded, then three rounded operations);
          m = max x; z_i = x_i - m; e_i = exp(z_i); s = pairwise sum of e; ls = log(s);
          log_softmax and smoothing_counts_ignored (the same here: no label smoothing in these families):
          lp_y = z_y - ls; logsumexp_minus_logit: lp_y = x_y - (m + ls);
          row = -lp_y, and with a z-loss z: row + z * (lse * lse), lse = m + ls;
          ignored rows count 0; mean: the pairwise sum of the rows (0 for the ignored) / n, n rounded.
EXACT     the loss of the rounded logits with loss_reference.loss (80 digits).
STATUS    a value that is not finite fails (first_failure, and first_inaccurate); a finite value is
          inaccurate when it is not the exact value rounded and its relative error exceeds sqrt(2**-p).
FAMILIES  offset: [n, n], y = 0, n = 0..512; z_loss: [n, n-2, n-5], y = 1, z = 1e-4, n = 0..512;
          softcap: [300, 298, 295], y = 1, z = 1e-4, cap c = n = 1..512; count: 256 rows [16, 16] with
          z-loss 1, label 0 on the first n rows and ignored on the others, mean, n = 1..256.
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import mpmath

_spec = importlib.util.spec_from_file_location("loss_reference", Path(__file__).with_name("loss_reference.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

FORMATS = {"bfloat16": (8, -126, 3.3895313892515355e38), "float16": (11, -14, 65504.0)}
FAMILIES = {"offset": (0, 512), "z_loss": (0, 512), "softcap": (1, 512), "count": (1, 256)}
METHODS = ("log_softmax", "logsumexp_minus_logit", "smoothing_counts_ignored")
COUNT_ROWS = 256


@lru_cache(maxsize=None)
def rnd(value: float | str, fmt: str) -> float:
    """A float64-held or mpmath-text value rounded to the format (NaN and +-inf pass)."""
    p, emin, largest = FORMATS[fmt]
    with mpmath.workdps(60):
        v = mpmath.mpf(value)
        if mpmath.isnan(v) or mpmath.isinf(v):
            return float(v)
        return ref.round_to(v, p, emin, largest)


def _op(fn, fmt: str, *args: float) -> float:
    if any(math.isnan(a) for a in args):
        return math.nan
    with mpmath.workdps(60):
        out = fn(*[mpmath.mpf(a) for a in args])
    return rnd(str(out) if mpmath.isfinite(out) else float(out), fmt)


def add(a, b, fmt):
    if math.isinf(a) or math.isinf(b):
        return a + b
    return _op(lambda x, y: x + y, fmt, a, b)


def sub(a, b, fmt):
    return add(a, -b, fmt)


def mul(a, b, fmt):
    if math.isinf(a) or math.isinf(b):
        return a * b if a != 0 and b != 0 else math.nan
    return _op(lambda x, y: x * y, fmt, a, b)


def div(a, b, fmt):
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1, b)
    if math.isinf(a):
        return a / b if not math.isinf(b) else math.nan
    if math.isinf(b):
        return 0.0
    return _op(lambda x, y: x / y, fmt, a, b)


def exp(a, fmt):
    if math.isinf(a):
        return 0.0 if a < 0 else math.inf
    return _op(mpmath.exp, fmt, a)


def log(a, fmt):
    if a == 0:
        return -math.inf
    if a < 0:
        return math.nan
    if math.isinf(a):
        return a
    return _op(mpmath.log, fmt, a)


def tanh(a, fmt):
    if math.isinf(a):
        return math.copysign(1.0, a)
    return _op(mpmath.tanh, fmt, a)


def pairwise(values: list[float], fmt: str) -> float:
    vals = list(values)
    while len(vals) > 1:
        nxt = [add(vals[i], vals[i + 1], fmt) for i in range(0, len(vals) - 1, 2)]
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    return vals[0]


def row_loss(x: list[float], y: int, fmt: str, method: str, z: float = 0.0, cap: float | None = None) -> float:
    """One row's loss (x already rounded to the format)."""
    if cap is not None:
        c = rnd(cap, fmt)
        x = [mul(c, tanh(div(v, c, fmt), fmt), fmt) for v in x]
    m = max(x)
    zs = [sub(v, m, fmt) for v in x]
    ls = log(pairwise([exp(v, fmt) for v in zs], fmt), fmt)
    if method == "logsumexp_minus_logit":
        lp = sub(x[y], add(m, ls, fmt), fmt)
    else:
        lp = sub(zs[y], ls, fmt)
    row = -lp
    if z:
        lse = add(m, ls, fmt)
        row = add(row, mul(rnd(z, fmt), mul(lse, lse, fmt), fmt), fmt)
    return row


def case(family: str, n: int, fmt: str):
    """(rows of rounded logits, labels, z, cap, mean?) of the family at n."""
    if family == "offset":
        return [[rnd(float(n), fmt)] * 2], [0], 0.0, None, False
    if family == "z_loss":
        return [[rnd(float(n - d), fmt) for d in (0, 2, 5)]], [1], 1e-4, None, False
    if family == "softcap":
        return [[rnd(v, fmt) for v in (300.0, 298.0, 295.0)]], [1], 1e-4, float(n), False
    return [[16.0, 16.0]], [0], 1.0, None, True  # count: the one used row; n of COUNT_ROWS used


def value(family: str, n: int, fmt: str, method: str) -> float:
    rows, labels, z, cap, mean = case(family, n, fmt)
    row = row_loss(rows[0], labels[0], fmt, method, z, cap)
    if not mean:
        return row
    total = pairwise([row] * n + [0.0] * (COUNT_ROWS - n), fmt)
    return div(total, rnd(float(n), fmt), fmt)


@lru_cache(maxsize=None)
def exact(family: str, n: int, fmt: str):
    rows, labels, z, cap, mean = case(family, n, fmt)
    return ref.loss(rows, labels, "mean" if mean else "none", None, 0.0, z, cap, 1.0)  # (n equal rows: one)


def bad(family: str, n: int, fmt: str, method: str) -> tuple[bool, bool]:
    """(inaccurate-or-worse, not finite) at n."""
    v = value(family, n, fmt, method)
    if not math.isfinite(v):
        return True, True
    e = exact(family, n, fmt)
    if v == rnd(str(e), fmt):
        return False, False
    p = FORMATS[fmt][0]
    with mpmath.workdps(40):
        rel = abs(mpmath.mpf(v) - e) / abs(e)
    return bool(rel > math.sqrt(2.0**-p)), False


def scan(family: str, fmt: str) -> dict[str, tuple[int | None, int | None]]:
    """Per method: (first inaccurate n, first failure n) over the whole range (None: never)."""
    lo, hi = FAMILIES[family]
    out = {}
    for method in METHODS:
        first = [None, None]
        for n in range(lo, hi + 1):
            flags = bad(family, n, fmt, method)
            for k in (0, 1):
                if flags[k] and first[k] is None:
                    first[k] = n
            if None not in first:
                break
        out[method] = (first[0], first[1])
    return out
