"""The gradient kernels (experiments/grad_kernels.py) and train.py's backward pass, against exact
gradients written here from the formulas with mpmath, in float64.

Exact (mpmath, 60 digits, no framework), for a row of logits x with label y, z = x - max x,
p = softmax(x), and a logit z with target y, s = sigmoid(z):

* softmax cross-entropy  dL/dx_j = p_j - [j == y]; at j = y computed as -sum_{i != y} p_i (no
  cancellation, also when p_y is 1 to within 10**-60);
* binary cross-entropy   dL/dz = s - y; for y = 1 computed as -sigmoid(-z);
* MSE through the sigmoid  dL/dz = (s - y) s (1 - s), 1 - s = sigmoid(-z).

Error bounds (u = 2**-53, eta = 2**-1074, h = ceil(log2 K) the depth of the tree sum over K
classes; first-order analyses, every operation correctly rounded: IEEE + - * / and crmath's
exp / log / log1p), per entry, |computed - exact| <=

=================================  =====================================================================
``softmax_minus_onehot``           u [(h + 4) (p_j + |G_j|)] + 2 eta
``... shift=True``                 u [(h + 4) (p_j + |G_j|) + (|z_j| + Zbar) p_j] + 2 eta
``exp_log_softmax_minus_onehot``   u [(h + 4 + 2 ln K) (p_j + |G_j|) + (2 |z_j| + Zbar) p_j] + 2 eta
``log_softmax_others`` (j != y)    u [(h + 4 + 2 ln K) |G_j| + (2 |z_j| + Zbar) p_j] + 2 eta
``log_softmax_others`` (j = y)     u [(2h + 4 + 2 ln K + Zbar) |G_j| + 2 sum_{i != y} |z_i| p_i] + (K + 1) eta
``sigmoid_minus_y``                4 u (s + |G|)           (z >= -700: exp(-z) finite)
``stable_sigmoid_minus_y``         5 u (s + |G|) + eta
``sigmoid_minus_y_branched``       5 u |G| + eta            (relative: no cancellation)
``mse_sigmoid``                    9 u (|G| + s^2 (1 - s) + |s - y| s^2) + eta
=================================  =====================================================================

with Zbar = sum_i p_i |z_i| (<= K / e): x - max x is rounded (error u |z_i|), which exp turns into
a relative error u |z_i| of exp(z_i) (the |z| terms), and the sum into u Zbar.  The term
(p_j + |G_j|) is the size of what the final ``- [j == y]`` / ``- y`` subtracts: where it cancels
(p_y close to 1, s close to y) those forms lose relative accuracy, and only there.  The
unshifted softmax is checked where it is meant to work (|x| <= 700: exp(x) finite and normal);
beyond, its overflow to NaN is checked as such.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from stabilitylab.experiments import grad_kernels as gk
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.numerics.interval import Bounds, IntervalArith
from stabilitylab.training import train

F64 = FORMATS["float64"]
U = 2.0**-53
ETA = 2.0**-1074
MP = mpmath.MPContext()
MP.dps = 60


# ------------------------------------------------------------------ exact gradients, from the formulas
def exact_softmax(row, y):
    """(G, p, z) of one row: G_j = p_j - [j == y] (G_y = -sum_{i != y} p_i), p = softmax(x), z = x - max x."""
    x = [MP.mpf(v) for v in row]
    m = max(x)
    z = [v - m for v in x]
    p = [1 / MP.fsum(MP.exp(xi - xj) for xi in x) for xj in x]
    rest = MP.fsum(MP.exp(xi - x[y]) for i, xi in enumerate(x) if i != y)  # sum_{i != y} e^(x_i - x_y)
    G = list(p)
    G[y] = -rest / (1 + rest)
    return G, p, z


def exact_sigmoid(z, y):
    """(s - y, s, 1 - s) with s = sigmoid(z), 1 - s = sigmoid(-z); s - y = -(1 - s) for y = 1."""
    z = MP.mpf(z)
    s, q = 1 / (1 + MP.exp(-z)), 1 / (1 + MP.exp(z))
    return (-q if y == 1 else s - MP.mpf(y)), s, q


# ------------------------------------------------------------------ bounds
def tree_depth(n: int) -> int:
    return math.ceil(math.log2(n)) if n > 1 else 0


def softmax_row(kernel: str, row, y: int, **options):
    """The exact gradient G (mpf) of one row, the stated bound on |computed - G| per entry, and p."""
    G, p, z = exact_softmax(row, y)
    K = len(G)
    h, lnK = tree_depth(K), math.log(K)
    p, z, a = (np.array([float(v) for v in w]) for w in (p, z, [abs(v) for v in G]))
    zbar = float(np.sum(p * np.abs(z)))
    bound = np.empty(K)
    for j in range(K):
        if kernel == "softmax_minus_onehot":
            b = U * ((h + 4) * (p[j] + a[j]) + ((abs(z[j]) + zbar) * p[j] if options.get("shift") else 0)) + 2 * ETA
        elif kernel == "exp_log_softmax_minus_onehot":
            b = U * ((h + 4 + 2 * lnK) * (p[j] + a[j]) + (2 * abs(z[j]) + zbar) * p[j]) + 2 * ETA
        elif j != y:  # log_softmax_others
            b = U * ((h + 4 + 2 * lnK) * a[j] + (2 * abs(z[j]) + zbar) * p[j]) + 2 * ETA
        else:
            others = float(np.sum(np.abs(z) * p) - abs(z[j]) * p[j])
            b = U * ((2 * h + 4 + 2 * lnK + zbar) * a[j] + 2 * others) + (K + 1) * ETA
        bound[j] = b
    return G, bound, p


def softmax_bounds(kernel: str, logits: np.ndarray, labels: np.ndarray, **options):
    """Exact gradients G (rows of mpf) and the stated bounds (rows, K)."""
    rows = [softmax_row(kernel, logits[r].tolist(), int(labels[r]), **options) for r in range(len(logits))]
    return [r[0] for r in rows], np.array([r[1] for r in rows]).reshape(logits.shape)


def sigmoid_one(kernel: str, z, y: float):
    """The exact gradient G (mpf) at logit z with target y, the stated bound, s and 1 - s."""
    g, s, q = exact_sigmoid(z, y)
    if kernel == "mse_sigmoid":
        g, r = g * s * q, abs(float(g))
    s, q, a = float(s), float(q), abs(float(g))
    if kernel == "sigmoid_minus_y":
        bound = 4 * U * (s + a)
    elif kernel == "stable_sigmoid_minus_y":
        bound = 5 * U * (s + a) + ETA
    elif kernel == "sigmoid_minus_y_branched":
        bound = 5 * U * a + ETA
    else:
        bound = 9 * U * (a + s * s * q + r * s * s) + ETA
    return g, bound, s, q


def sigmoid_bounds(kernel: str, z: np.ndarray, y: np.ndarray):
    rows = [sigmoid_one(kernel, zi, yi) for zi, yi in zip(z.tolist(), y.tolist())]
    return [r[0] for r in rows], np.array([r[1] for r in rows])


SECOND_ORDER = 1 + 2.0**-20  # the bounds are first order in u: room for the O(u**2) terms


def check_within(name: str, got: np.ndarray, G, bound: np.ndarray) -> float:
    """|got - G| <= bound everywhere (scipy FuncData style: k of n bad points, with got, wanted and
    the error in units of the bound); returns the largest error / bound."""
    got = np.asarray(got, dtype=np.float64)
    flat_G = [v for row in G for v in row] if got.ndim == 2 else list(G)
    err = np.array([float(abs(MP.mpf(g) - w)) for g, w in zip(got.ravel().tolist(), flat_G)])
    ratio = err / (bound.ravel() * SECOND_ORDER)
    bad = np.flatnonzero(~(ratio <= 1))  # NaN is bad
    if bad.size:
        lines = [f"  at {np.unravel_index(i, got.shape)}: got {got.ravel()[i]!r}, wanted {MP.nstr(flat_G[i], 17)}, "
                 f"error {ratio[i]:.3g} x the bound" for i in bad[:8]]
        raise AssertionError(f"{name}: {bad.size} of {ratio.size} beyond the bound\n" + "\n".join(lines))
    return float(ratio.max())


# ------------------------------------------------------------------ inputs
def random_rows(rng, rows: int, K: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(0.0, sigma, (rows, K)), rng.integers(0, K, rows)


def adversarial_rows(K: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows that break the weaker forms: ties, one class dominating (p_y - 1 ~ -e**-d), spreads
    beyond exp's range, logits whose x - max is rounded (|z| ~ 700), huge and tiny logits."""
    rows = []
    for d in (0.0, 1e-9, 20.0, 36.7, 40.0, 100.0, 700.0, 745.5, 800.0, 1e5, 1e300):
        for where in (0, K - 1):
            row = np.zeros(K)
            row[where] = d
            rows += [row, -row]
    rows += [np.full(K, 500.0), np.full(K, -700.0), np.linspace(-1000, 1000, K), np.linspace(-1e-300, 1e-300, K),
             1e15 + np.arange(K) * 0.125, np.full(K, 5e-324), 1000.1 - np.geomspace(1e-3, 699.8, K),
             np.linspace(0, -740, K), 300.3 + np.arange(K) * 1.1e-13]
    x = np.array(rows)
    labels = np.concatenate([np.arange(len(x)) % K])
    return np.concatenate([x, x]), np.concatenate([labels, (labels + 1) % K])


def softmax_inputs(seed: int = 17):
    rng = np.random.default_rng(seed)
    out = []
    for K in (2, 3, 5, 8, 10):
        for sigma in (0.1, 1.0, 10.0, 100.0):
            out.append(random_rows(rng, 12, K, sigma))
        out.append(adversarial_rows(K))
    return out


def sigmoid_inputs(seed: int = 18):
    rng = np.random.default_rng(seed)
    z = np.concatenate([rng.normal(0, s, 150) for s in (0.1, 1, 5, 30, 300)] + [
        np.array([0.0, -0.0, 1e-300, -1e-300, 5e-324, 20, -20, 36.7, -36.7, 40, -40, 700, -700, 708.5, -708.5,
                  709.8, -709.8, 745.2, -745.2, 800, -800, 1e5, -1e5, 1e300, -1e300])])
    n = len(z)
    y_binary = rng.integers(0, 2, n).astype(np.float64)
    y_soft = rng.choice([0.0, 1.0, 0.25, 0.7, 1e-3], n)
    return [(z, y_binary), (np.concatenate([z, z]), np.concatenate([1 - y_binary, y_soft]))]


def run_softmax(kernel: str, logits: np.ndarray, labels: np.ndarray, component=None, **options):
    a = Arith(F64, len(logits))
    x = a.load(logits)
    if kernel == "log_softmax_others":
        return getattr(gk, kernel)(a, x, labels, component, **options)
    K = logits.shape[1]
    hot = (np.arange(K)[None, :] == labels[:, None]) if component is None else (component == labels)
    return getattr(gk, kernel)(a, x, a.const(hot.astype(np.float64)), component, **options)


def run_sigmoid(kernel: str, z: np.ndarray, y: np.ndarray):
    a = Arith(F64, len(z))
    zz = a.load(z)
    if kernel == "sigmoid_minus_y_branched":
        return getattr(gk, kernel)(a, zz, y == 1)
    return getattr(gk, kernel)(a, zz, a.const(y))


def naive_domain(x: np.ndarray) -> np.ndarray:
    """Rows where exp(x) is finite and normal for every logit: where the unshifted softmax is meant to work."""
    return (np.abs(x) <= 700).all(axis=-1)


# ------------------------------------------------------------------ the kernels
SOFTMAX_KERNELS = [("softmax_minus_onehot", {}), ("softmax_minus_onehot", {"shift": True}),
                   ("exp_log_softmax_minus_onehot", {}), ("exp_log_softmax_minus_onehot", {"log1p": True}),
                   ("log_softmax_others", {}), ("log_softmax_others", {"log1p": True})]


@pytest.mark.parametrize("kernel, options", SOFTMAX_KERNELS, ids=lambda v: str(v) if isinstance(v, str) else
                         ",".join(v) or "plain")
def test_softmax_kernel_within_its_bound(kernel, options):
    """Every entry of the whole gradient, on random rows (K = 2..10, logits N(0, 0.1..100)) and
    adversarial ones; the components ``c`` alone are bit for bit those entries."""
    rng = np.random.default_rng(5)
    worst = 0.0
    for x, y in softmax_inputs():
        if kernel == "softmax_minus_onehot" and not options:
            x, y = x[naive_domain(x)], y[naive_domain(x)]
        full = run_softmax(kernel, x, y, **options)
        G, bound = softmax_bounds(kernel, x, y, **options)
        worst = max(worst, check_within(kernel, full, G, bound))
        c = rng.integers(0, x.shape[1], len(x))
        one = run_softmax(kernel, x, y, c, **options)
        np.testing.assert_array_equal(one, full[np.arange(len(x)), c])
    assert 0.1 <= worst <= 1  # the bound is within 10x of the largest error seen: it says something


def test_unshifted_softmax_gives_nan_once_exp_overflows():
    """Beyond ln(max) = 709.78 the unshifted form computes inf / inf; the shifted one stays within its bound."""
    x, y = np.array([[710.0, 0.0], [0.0, 709.0]]), np.array([1, 1])
    got = run_softmax("softmax_minus_onehot", x, y)
    assert np.isnan(got[0, 0]) and got[0, 1] == -1 and np.isfinite(got[1]).all()
    G, bound = softmax_bounds("softmax_minus_onehot", x, y, shift=True)
    check_within("shifted", run_softmax("softmax_minus_onehot", x, y, shift=True), G, bound)


SIGMOID_KERNELS = ["sigmoid_minus_y", "stable_sigmoid_minus_y", "sigmoid_minus_y_branched", "mse_sigmoid"]


@pytest.mark.parametrize("kernel", SIGMOID_KERNELS)
def test_sigmoid_kernel_within_its_bound(kernel):
    """Random logits N(0, 0.1..300), the edges of exp's range, +-0, subnormal and huge logits; targets
    0 / 1 and (where the formula takes them) soft targets."""
    worst = 0.0
    sets = sigmoid_inputs()
    for z, y in sets[:1] if kernel == "sigmoid_minus_y_branched" else sets:  # it takes y in {0, 1} only
        if kernel == "sigmoid_minus_y":
            z, y = z[z >= -700], y[z >= -700]
        G, bound = sigmoid_bounds(kernel, z, y)
        worst = max(worst, check_within(kernel, run_sigmoid(kernel, z, y), G, bound))
    assert 0.1 <= worst <= 1


def test_naive_sigmoid_is_zero_where_exp_overflows():
    got = run_sigmoid("sigmoid_minus_y", np.array([-710.0, -1e5]), np.array([0.0, 0.0]))
    assert got.tolist() == [0.0, 0.0]  # 1 / (1 + inf): the exact e**-710 ~ 4e-309 is lost


def test_the_bounds_tell_a_wrong_result_apart():
    """A test that cannot fail proves nothing: results a few ulps off, a float32 computation and the
    forms that cancel are caught by the bounds above."""
    z = np.array([0.3, -2.0, 25.0, 40.0, -600.0])
    y = np.array([1.0, 0.0, 1.0, 1.0, 1.0])
    G, bound = sigmoid_bounds("sigmoid_minus_y_branched", z, y)
    good = run_sigmoid("sigmoid_minus_y_branched", z, y)
    check_within("branched", good, G, bound)
    with pytest.raises(AssertionError, match="beyond the bound"):  # 16 u relative off (the bound allows 5 u)
        check_within("branched", good * (1 + 16 * U), G, bound)
    with pytest.raises(AssertionError, match="2 of 5 beyond"):  # s - 1 cancels for z = 25 and 40
        check_within("naive", run_sigmoid("sigmoid_minus_y", z, y), G, bound)
    a = Arith(FORMATS["float32"], len(z))
    in32 = gk.sigmoid_minus_y_branched(a, a.load(z), y == 1).astype(np.float64)
    with pytest.raises(AssertionError, match="beyond the bound"):
        check_within("float32", in32, G, bound)
    # softmax: p_y - 1 by subtraction loses what -sum_{j != y} p_j keeps, where the label dominates
    x, labels = np.array([[40.0, 0.0, -1.0]]), np.array([0])
    G, bound = softmax_bounds("log_softmax_others", x, labels)
    check_within("others", run_softmax("log_softmax_others", x, labels), G, bound)
    with pytest.raises(AssertionError, match="1 of 3 beyond"):
        check_within("minus onehot", run_softmax("exp_log_softmax_minus_onehot", x, labels), G, bound)


# ------------------------------------------------------------------ train.py's gradients
TRAIN_KERNELS = {  # the method's gradient -> the formula and bound it must meet
    "naive_softmax_log": ("softmax_minus_onehot", {}), "shifted_softmax_log": ("softmax_minus_onehot", {"shift": True}),
    "log_softmax": ("log_softmax_others", {}), "log_softmax_log1p": ("log_softmax_others", {"log1p": True}),
    "sigmoid_log": ("sigmoid_minus_y", {}), "logits": ("sigmoid_minus_y_branched", {}),
    "mse_sigmoid": ("mse_sigmoid", {}),
}


@pytest.mark.parametrize("method", list(TRAIN_KERNELS))
def test_train_per_sample_gradient_within_bound(method):
    """train._dloss (dL/dlogits of each sample, as the backward pass forms it) against the exact gradient."""
    kernel, options = TRAIN_KERNELS[method]
    worst = 0.0
    if method in train.SOFTMAX_METHODS:
        for x, y in softmax_inputs(seed=23):
            if method == "naive_softmax_log":
                x, y = x[naive_domain(x)], y[naive_domain(x)]
            a = Arith(F64, len(x))
            got = train._dloss(a, method, a.load(x), y, a.const(np.eye(x.shape[1])[y]))
            G, bound = softmax_bounds(kernel, x, y, **options)
            worst = max(worst, check_within(method, got, G, bound))
    else:
        z, y = sigmoid_inputs(seed=24)[0]
        if method == "sigmoid_log":
            z, y = z[z >= -700], y[z >= -700]
        a = Arith(F64, len(z))
        got = train._dloss(a, method, a.load(z), y.astype(np.int64), a.const(y))
        G, bound = sigmoid_bounds(kernel, z, y)
        worst = check_within(method, got, G, bound)
    assert 0.1 <= worst <= 1


def exact_weight_gradient(method: str, w: np.ndarray, x: np.ndarray, y: np.ndarray):
    """The exact gradient of the batch mean loss with respect to the weights w ((K, D) softmax,
    (D,) logistic) at the float64 features x (B, D), and the bound on train's float64 result.

    dL/dW = (1/B) sum_b G_b x_b^T with G_b the exact dL/dz at the exact logits z_b = W x_b.  Bound:
    (1/B) sum_b |x_b| [(E_b + J_b) (1 + (3 + h_B) u) + (3 + h_B) u |G_b|] + B eta, where E_b is the
    kernel's bound, J_b = |dG/dz| (h_D + 1) u sum_d |W x_bd| the effect of the rounded logits (the
    matvec: D products and a tree of depth h_D), and (3 + h_B) u the roundings of the backward pass
    (S / B, its product, the product by x, the tree sum over the batch of depth h_B; 1/S is exact)."""
    kernel, options = TRAIN_KERNELS[method]
    B, D = x.shape
    hB, hD = tree_depth(B), tree_depth(D)
    W = np.atleast_2d(w)  # (K, D)
    N = np.abs(x) @ np.abs(W).T  # (B, K): sum_d |W_kd x_bd|
    total = [[MP.mpf(0)] * D for _ in range(len(W))]
    bound = np.zeros((len(W), D))
    for b in range(B):
        z = [MP.fsum(MP.mpf(float(W[k, d])) * MP.mpf(float(x[b, d])) for d in range(D)) for k in range(len(W))]
        delta = (hD + 1) * U * N[b]
        if w.ndim == 2:
            G, E, p = softmax_row(kernel, z, int(y[b]), **options)
            J = 2 * p * (1 - p) * delta.max()
        else:
            g, e, s, q = sigmoid_one(kernel, z[0], float(y[b]))
            G, E = [g], np.array([e])
            r = abs(s - y[b]) if y[b] == 0 else q
            slope = s * q if kernel != "mse_sigmoid" else s * q * (s * q + r * abs(1 - 2 * s))
            J = np.array([slope * delta[0]])
        A = np.array([abs(float(v)) for v in G])
        for k in range(len(W)):
            for d in range(D):
                total[k][d] += G[k] * MP.mpf(float(x[b, d]))
        bound += np.abs(x[b])[None, :] * ((E + J) * (1 + (3 + hB) * U) + (3 + hB) * U * A)[:, None]
    total = [[v / B for v in row] for row in total]
    bound = bound / B + B * ETA
    return (total if w.ndim == 2 else total[0]), (bound if w.ndim == 2 else bound[0])


@pytest.mark.parametrize("name", ["overflow", "saturated"])
def test_train_weight_gradient_within_bound(name):
    """The backward pass of train.py (forward, dL/dz, times S / B, times x, tree over the batch, 1/S) in
    float64, for every method of the scenario side by side, against the exact weight gradient: at the
    scenario's first weights and at random ones (logits up to ~100), without and with a loss scale."""
    scenario = train.SCENARIOS[name]
    x_all, y_all = train.task_data(scenario.task)
    classes = int(y_all.max()) + 1
    m = len(scenario.methods)
    rng = np.random.default_rng(3)
    idx = rng.permutation(len(y_all))[:scenario.batch]
    xb, yb = x_all[idx], y_all[idx]
    tb = np.eye(classes)[yb] if scenario.model == "softmax" else yb.astype(np.float64)
    start = train._initial(scenario, F64, x_all.shape[1] - 1, classes, m)
    worst = 0.0
    for w in [start] + [rng.normal(0, sigma, start.shape) for sigma in (0.5, 3.0, 20.0)]:
        w = np.broadcast_to(w[:1], w.shape).copy()  # one set of weights, every method
        kernels = train._forward(F64, scenario.methods, (xb, yb, tb), w, np.zeros(m, dtype=bool))[0]
        for scale in (1.0, 2.0**10):
            grad, lost = train._backward(F64, scenario.methods, kernels, (xb, yb, tb), np.full(m, scale))
            assert not lost.any()
            for k, method in enumerate(scenario.methods):
                if method == "naive_softmax_log" and not naive_domain(np.array([[float(v) for v in
                                                                                 kernels[k][0].ravel()]])).all():
                    continue
                G, bound = exact_weight_gradient(method, w[k], xb, yb)
                worst = max(worst, check_within(f"{method} at scale {scale}", grad[k], G, bound))
    assert 0.01 <= worst <= 1


# ------------------------------------------------------------------ the same kernels on ranges
@pytest.mark.parametrize("fmt_name", ["bfloat16", "float32"])
def test_kernels_run_on_intervals_and_enclose_the_points(fmt_name):
    """Written once against the context: every kernel also runs on IntervalArith, and its range
    [lo, hi] over a range of logits holds the kernel's Arith value at points of that range."""
    fmt = FORMATS[fmt_name]
    rng = np.random.default_rng(9)
    lo = fmt.round(rng.normal(0, 8, (40, 4))).astype(np.float64)
    hi = fmt.round(lo + np.abs(rng.normal(0, 0.5, lo.shape))).astype(np.float64)
    t = rng.uniform(0, 1, lo.shape)
    x = np.clip(fmt.round(lo + t * (hi - lo)).astype(np.float64), lo, hi)
    labels, c = rng.integers(0, 4, 40), rng.integers(0, 4, 40)
    y = (labels % 2).astype(np.float64)
    ia, a = IntervalArith(fmt, 40), Arith(fmt, 40)
    bx, px = ia.load(Bounds(lo, hi)), a.load(x)
    runs = {
        "softmax_minus_onehot": lambda k, v: gk.softmax_minus_onehot(k, v, k.const(c == labels), c),
        "shifted": lambda k, v: gk.softmax_minus_onehot(k, v, k.const(np.eye(4)[labels]), shift=True),
        "exp_log_softmax_minus_onehot": lambda k, v: gk.exp_log_softmax_minus_onehot(
            k, v, k.const(c == labels), c, log1p=True),
        "log_softmax_others": lambda k, v: gk.log_softmax_others(k, v, labels),
        "sigmoid_minus_y": lambda k, v: gk.sigmoid_minus_y(k, k.pick(v, c), k.const(y)),
        "stable_sigmoid_minus_y": lambda k, v: gk.stable_sigmoid_minus_y(k, k.pick(v, c), k.const(y)),
        "sigmoid_minus_y_branched": lambda k, v: gk.sigmoid_minus_y_branched(k, k.pick(v, c), y == 1),
        "mse_sigmoid": lambda k, v: gk.mse_sigmoid(k, k.pick(v, c), k.const(y)),
    }
    for name, run in runs.items():
        b, p = Bounds.of(run(ia, bx)), run(a, px).astype(np.float64)
        assert p.shape == b.shape, name
        assert ((b.lo <= p) & (p <= b.hi)).all(), name
        # the ranges say something (not everywhere: where the maximum changes over a range, shift knows nothing)
        assert np.mean(np.isfinite(b.lo) & (b.hi - b.lo < 0.5)) > 0.6, name
