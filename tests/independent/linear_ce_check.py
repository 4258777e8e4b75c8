"""Independent checker for the linear_ce experiment (a deliberately plain one).

Nothing here imports or reuses code from the ``stabilitylab`` package.

EXACT VALUES (inputs: float64 numbers, taken as exact)
    logits x[n][v] = sum_j h[n][j] * W[v][j] computed with fractions.Fraction (exact);
    then mpmath at 80 digits: loss_n = log(sum_v exp(x_nv)) - x_ny (max-shifted), mean over n;
    p_nv = exp(x_nv - lse_n); g_nv = p_nv - [v = y_n] (for v = y_n: -(sum_{v != y} exp(x_v - x_y)) / (1 + that
    sum)); dW[v][j] = sum_n g_nv h_nj / N; dH[n][j] = sum_v g_nv W_vj / N; true-class gradient g_{n,y_n}.

SIMULATED KERNELS (the model the experiment documents)
    Every value is an mpmath number; rnd(x, p) rounds to p significant bits, nearest-even, with mpmath's
    own rounding (``workprec(p): +x``); exp / log are evaluated at 200 bits and then rounded (correct
    unless within 2**-200 of a midpoint).  Exponent range is not modelled: the test problems stay far
    inside bfloat16's and float32's range.  A policy is (storage p_s, compute p_c, accumulate p_a):
    * inputs rounded to p_s;
    * logits: products rounded to p_c; the D products summed pairwise (level by level, neighbours
      (0,1), (2,3), ...; an odd last element passes up), each addition rounded to p_a; the sum rounded
      to p_c;
    * z = rnd_c(x - max x); S = pairwise sum of rnd_c(exp z); lse = rnd_c(log S);
      p = rnd_c(exp(rnd_c(z - lse))); g = rnd_c(rnd_c(p - onehot) / N);
    * dW token chunks: tokens split in k chunks of ceil(N/k), each chunk's products rnd_c(g h) summed
      pairwise (no padding); the partials added one by one to a buffer starting at 0:
      buffer = rnd_buf(rnd_24(buffer + partial)) (the addition computed in float32, as torch's
      ``bf16_tensor += fp32_tensor`` does, then written to the buffer's format);
    * p_y - 1 in storage: rnd_s(rnd_24(rnd_s(p_y) - 1));
    * the result rounded once to the storage format (the output format of ``STORAGE@COMPUTE``).
"""

from __future__ import annotations

from fractions import Fraction

import mpmath

DIGITS = 80


def exact(hidden, weight, labels):
    """(mean loss, dW matrix, dH matrix, true-class gradient per token) as mpmath numbers."""
    N = len(hidden)
    with mpmath.workdps(DIGITS):
        X = []
        for h in hidden:
            row = []
            for w in weight:
                s = sum((Fraction(a) * Fraction(b) for a, b in zip(h, w)), Fraction(0))
                row.append(mpmath.mpf(s.numerator) / s.denominator)
            X.append(row)
        losses, G = [], []
        for xs, y in zip(X, labels):
            m = max(xs)
            total = sum(mpmath.exp(v - m) for v in xs)
            lse = m + mpmath.log(total)
            losses.append(lse - xs[y])
            g = [mpmath.exp(v - lse) for v in xs]
            rest = sum(mpmath.exp(v - xs[y]) for i, v in enumerate(xs) if i != y)
            g[y] = -rest / (1 + rest)
            G.append(g)
        loss = sum(losses) / N
        dW = [[sum(G[n][v] * mpmath.mpf(hidden[n][j]) for n in range(N)) / N for j in range(len(weight[0]))]
              for v in range(len(weight))]
        dH = [[sum(G[n][v] * mpmath.mpf(weight[v][j]) for v in range(len(weight))) / N
               for j in range(len(weight[0]))] for n in range(N)]
        return loss, dW, dH, [G[n][labels[n]] for n in range(N)]


def rnd(x, p):
    with mpmath.workprec(p):
        return +x


def _exp(x, p):
    with mpmath.workprec(200):
        e = mpmath.exp(x)
    return rnd(e, p)


def _log(x, p):
    with mpmath.workprec(200):
        e = mpmath.log(x)
    return rnd(e, p)


def pairwise(values, pa, pc):
    vals = list(values)
    if not vals:
        return mpmath.mpf(0)
    with mpmath.workprec(400):
        while len(vals) > 1:
            nxt = [rnd(vals[i] + vals[i + 1], pa) for i in range(0, len(vals) - 1, 2)]
            if len(vals) % 2:
                nxt.append(vals[-1])
            vals = nxt
    return rnd(vals[0], pc)


def simulate(hidden, weight, labels, ps, pc, pa, chunks, entry_w, entry_n):
    """(grad_weight_chunks_storage, grad_weight_chunks_fp32, grad_logit_true_storage, grad_logit_true,
    materialized_log_softmax) under the policy (ps, pc, pa), each rounded to ps at the end."""
    N = len(hidden)
    with mpmath.workprec(400):
        H = [[rnd(mpmath.mpf(v), ps) for v in row] for row in hidden]
        W = [[rnd(mpmath.mpf(v), ps) for v in row] for row in weight]
        X = [[pairwise([rnd(a * b, pc) for a, b in zip(h, w)], pa, pc) for w in W] for h in H]
        P, losses = [], []
        for xs, y in zip(X, labels):
            m = max(xs)
            z = [rnd(v - m, pc) for v in xs]
            lse = _log(pairwise([_exp(v, pc) for v in z], pa, pc), pc)
            P.append([_exp(rnd(v - lse, pc), pc) for v in z])
            losses.append(rnd(lse - z[y], pc))
        loss = rnd(pairwise(losses, pa, pc) / rnd(mpmath.mpf(N), pc), pc)
        G = [[rnd(rnd(P[n][v] - (1 if v == labels[n] else 0), pc) / rnd(mpmath.mpf(N), pc), pc)
              for v in range(len(W))] for n in range(N)]
        v, j = entry_w
        terms = [rnd(G[n][v] * H[n][j], pc) for n in range(N)]
        size = -(-N // chunks)
        partials = [pairwise(terms[i:i + size], pa, pc) for i in range(0, N, size)]
        partials += [mpmath.mpf(0)] * (chunks - len(partials))

        def accumulate(p_buffer):
            buffer = mpmath.mpf(0)
            for part in partials:
                buffer = rnd(rnd(buffer + part, 24), p_buffer)
            return buffer

        storage = accumulate(ps)
        fp32 = accumulate(max(pc, 24))
        n = entry_n
        py = P[n][labels[n]]
        true_storage = rnd(rnd(rnd(py, ps) - 1, 24), ps)
        true_compute = rnd(py - 1, pc)
        return tuple(rnd(r, ps) for r in (storage, fp32, true_storage, true_compute, loss))
