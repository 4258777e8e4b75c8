"""Independent checker for ``compare -e linear_ce --problem`` (a deliberately plain one).

Nothing here imports or reuses code from the ``stabilitylab`` package (rnd, exp, log and the pairwise sum are
linear_ce_check.py's, the small engine's independent checker).

INPUTS: the caller's problem holds values of the storage format already (so storage rounding is the
identity), with few significant bits and a narrow exponent range, so that every float64 dot product of
D terms is exact: the fused model's logit is then the exact dot rounded once to the compute format.

EXACT VALUES (fractions.Fraction for the dot products, mpmath at 60 digits after that):
    loss_n = log(sum_v exp(x_nv - m)) + m - x_ny; p_y - 1 = -s / (1 + s), s = sum_{v != y} exp(x_v - x_y);
    g_nv = (p_nv - [v = y_n]) / N; dH = g @ W; dW = g^T @ h.

FUSED-MODEL VALUES (policy (ps, pc, pa), result rounded to ps; rnd(x, p) = mpmath's nearest rounding to p
bits; exp / log at 200 bits then rounded):
    x = rnd(dot, pc); z = rnd(x - max x, pc); S = pairwise sum (level by level, neighbours, odd last element
    passes up; each addition rounded to pa) of rnd(exp z, pc), rounded to pc; lse = rnd(log S, pc);
    materialized loss = rnd(lse - z_y, pc); naive = rnd(-rnd(log(rnd(e_y / S', pc)), pc)) with e = rnd(exp x, pc)
    and S' their pairwise sum; online: blocks of B columns, running max m and sum s, s <- pairwise(rnd(s *
    rnd(exp(rnd(m - new, pc)), pc), block sum), loss = rnd(rnd(rnd(log s, pc) + m, pc) - x_y, pc);
    p_y = rnd(exp(rnd(z_y - lse, pc)), pc); p_y - 1 = rnd(p_y - 1, pc); storage: rnd(rnd(rnd(p_y, ps) - 1, 24), ps);
    g = rnd(rnd(p - onehot, pc) / rnd(N, pc), pc);
    dW one pass = rnd(sum_n g h, pc) (the sum exact), chunks of ceil(N/K): partial = rnd(sum_chunk g h, pc),
    storage buffer b = rnd(rnd(b + partial, 24), ps), float32 buffer rnd(rnd(b + partial, 24), 24) then ps;
    dH = rnd(sum_v g W, pc).

STATUS (plain): v equal to the exact value rounded to the output format -> ok; NaN -> nan; +-inf ->
overflow; 0 -> inaccurate; else inaccurate if |v - x| / |x| > 2**-(p_o / 2) else ok.  Error bits:
log2(|v - x| / ulp(x) + 1), ulp(x) = 2**(floor(log2 |x|) - p_o + 1).
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import mpmath

# the same plain roundings and pairwise sum as the small engine's checker (a sibling file, not the package)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from linear_ce_check import _exp, _log, pairwise, rnd  # noqa: E402

DIGITS = 60


def dots(hidden, weight):
    """Exact logits as mpmath numbers (Fraction sums)."""
    out = []
    for h in hidden:
        row = []
        for w in weight:
            s = sum((Fraction(a) * Fraction(b) for a, b in zip(h, w)), Fraction(0))
            with mpmath.workprec(400):
                row.append(mpmath.mpf(s.numerator) / s.denominator)
        out.append(row)
    return out


def exact(hidden, weight, labels):
    """{"loss": [N], "p_y - 1": [N], "grad_hidden": N x D, "grad_weight": V x D} as mpmath numbers."""
    n_tok, d, v = len(hidden), len(hidden[0]), len(weight)
    X = dots(hidden, weight)
    with mpmath.workdps(DIGITS):
        losses, py1, G = [], [], []
        for xs, y in zip(X, labels):
            m = max(xs)
            total = sum(mpmath.exp(t - m) for t in xs)
            lse = m + mpmath.log(total)
            losses.append(lse - xs[y])
            rest = sum(mpmath.exp(t - xs[y]) for i, t in enumerate(xs) if i != y)
            g = [mpmath.exp(t - lse) / n_tok for t in xs]
            g[y] = -rest / (1 + rest) / n_tok
            py1.append(-rest / (1 + rest))
            G.append(g)
        dH = [[sum(G[n][k] * mpmath.mpf(weight[k][j]) for k in range(v)) for j in range(d)] for n in range(n_tok)]
        dW = [[sum(G[n][k] * mpmath.mpf(hidden[n][j]) for n in range(n_tok)) for j in range(d)] for k in range(v)]
    return {"loss": losses, "p_y - 1": py1, "grad_hidden": dH, "grad_weight": dW}


def fused(hidden, weight, labels, ps, pc, pa, chunks, block):
    """The fused model's values (see the module docstring) by method name (without the ``fused:`` prefix)."""
    n_tok, d, v = len(hidden), len(hidden[0]), len(weight)
    X = [[rnd(t, pc) for t in row] for row in dots(hidden, weight)]
    out = {k: [] for k in ("materialized_log_softmax", "materialized_naive", "vocab_chunks_online",
                           "grad_logit_true", "grad_logit_true_storage")}
    G = []
    with mpmath.workprec(400):
        n_c = rnd(mpmath.mpf(n_tok), pc)
        for xs, y in zip(X, labels):
            m = max(xs)
            z = [rnd(t - m, pc) for t in xs]
            lse = _log(pairwise([_exp(t, pc) for t in z], pa, pc), pc)
            out["materialized_log_softmax"].append(rnd(rnd(lse - z[y], pc), ps))
            e = [_exp(t, pc) for t in xs]
            q = rnd(e[y] / pairwise(e, pa, pc), pc)
            out["materialized_naive"].append(rnd(-_log(q, pc), ps))
            m_run = s_run = None
            for a in range(0, v, block):
                part = xs[a:a + block]
                top = max(part)
                if m_run is None:
                    m_run, s_run = top, pairwise([_exp(rnd(t - top, pc), pc) for t in part], pa, pc)
                    continue
                new = max(m_run, top)
                bsum = pairwise([_exp(rnd(t - new, pc), pc) for t in part], pa, pc)
                s_run = pairwise([rnd(s_run * _exp(rnd(m_run - new, pc), pc), pc), bsum], pa, pc)
                m_run = new
            out["vocab_chunks_online"].append(rnd(rnd(rnd(_log(s_run, pc) + m_run, pc) - xs[y], pc), ps))
            p = [_exp(rnd(t - lse, pc), pc) for t in z]
            out["grad_logit_true"].append(rnd(rnd(p[y] - 1, pc), ps))
            out["grad_logit_true_storage"].append(rnd(rnd(rnd(rnd(p[y], ps) - 1, 24), ps), ps))
            G.append([rnd(rnd(p[k] - (1 if k == y else 0), pc) / n_c, pc) for k in range(v)])
        H = [[mpmath.mpf(t) for t in row] for row in hidden]
        W = [[mpmath.mpf(t) for t in row] for row in weight]
        out["grad_hidden"] = [[rnd(rnd(mpmath.fsum(G[n][k] * W[k][j] for k in range(v)), pc), ps) for j in range(d)]
                              for n in range(n_tok)]
        size = -(-n_tok // chunks)
        spans = [(a, min(n_tok, a + size)) for a in range(0, n_tok, size)]
        one, st, f32 = [], [], []
        for k in range(v):
            rows = ([], [], [])
            for j in range(d):
                parts = [mpmath.fsum(G[n][k] * H[n][j] for n in range(a, b)) for a, b in spans]
                rows[0].append(rnd(rnd(mpmath.fsum(parts), pc), ps))
                bs = bf = mpmath.mpf(0)
                for part in parts:
                    pcv = rnd(part, pc)
                    bs = rnd(rnd(bs + pcv, 24), ps)
                    bf = rnd(rnd(bf + pcv, 24), max(pc, 24))
                rows[1].append(rnd(bs, ps))
                rows[2].append(rnd(rnd(bf, ps), ps))
            one.append(rows[0])
            st.append(rows[1])
            f32.append(rows[2])
        out["grad_weight"], out["grad_weight_chunks_storage"], out["grad_weight_chunks_fp32"] = one, st, f32
    return out


def status(value: float, x, p_out: int) -> str:
    """The plain status of a computed value against the exact x (output precision p_out)."""
    import math

    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "overflow"
    cr = float(rnd(x, p_out))
    if value == cr:
        return "ok"
    if value == 0:
        return "inaccurate"
    with mpmath.workdps(DIGITS):
        rel = abs(mpmath.mpf(value) - x) / abs(x)
    return "inaccurate" if rel > mpmath.mpf(2) ** (-(p_out / 2)) else "ok"


def error_bits(value: float, x, p_out: int) -> float:
    with mpmath.workdps(DIGITS):
        e = mpmath.floor(mpmath.log(abs(x), 2))
        ulp = mpmath.mpf(2) ** (e - p_out + 1)
        return float(mpmath.log(abs(mpmath.mpf(value) - x) / ulp + 1, 2))
