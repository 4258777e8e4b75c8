"""Issue #22, item 4 (the report's CPU): the shortcuts keep what they shorten.

* ``exact_cross_entropy`` computes each distinct logit's exponential once per row: its value is still the
  plain mpmath formula's, one mpf per value (the checker below), on rows of repeated values, signed zeros
  and wide blocks;
* every figure's renderer parses mathtext with one parser for the process: the PNG bytes are those of a
  renderer with its own parser (matplotlib's default).
"""

from __future__ import annotations

import mpmath
import numpy as np

from stabilitylab.experiments.softmax_ce import exact_cross_entropy
from stabilitylab.numerics.reference import DIGITS
from stabilitylab.render import plots


def _plain(logits, label):
    """-log softmax(x)_y the obvious way, one mpf per value (the checker)."""
    xy = mpmath.mpf(logits[label])
    return mpmath.log1p(mpmath.fsum(mpmath.exp(mpmath.mpf(v) - xy) for i, v in enumerate(logits) if i != label))


def test_exact_cross_entropy_of_repeated_values_is_the_plain_value():
    rng = np.random.default_rng(7)
    blocks = [-4.0] * 1500 + [-1.0] * 1500 + [0.0, -0.5]
    rows = [tuple(blocks), tuple(reversed(blocks)),
            (0.0, -0.0, 0.0, -0.0, 1.5, 1.5, -2.0),  # signed zeros: one mpf zero
            (-0.0, 0.0, -1e-300, 1e-300, -1e-300),
            tuple(np.round(rng.normal(0, 2, 3000), 1).tolist()),  # ~100 distinct values, in no order
            tuple((rng.integers(-3, 3, 500) * 2.0 ** -30 + 700.0).tolist())]
    with mpmath.workdps(DIGITS):
        for row in rows:
            assert len(set(row)) < len(row)
            for label in (0, 1, len(row) - 1):
                assert exact_cross_entropy(row, label)._mpf_ == _plain(row, label)._mpf_, (row[:4], label)


def _magnitude(render):
    d = np.linspace(0, 100, 60)
    return plots.magnitude_figure("a title", {n: {"x": np.exp(-d), "y": np.exp(-2 * d)}
                                              for n in ("float16", "bfloat16", "float32", "float64")}, d,
                                  render=render)


def test_one_mathtext_parser_gives_the_same_png(monkeypatch):
    """log10 tick labels ($10^{-300}$) on the y axes, symlog ones on the x axes: all mathtext."""
    shared = [_magnitude(plots.png), _magnitude(plots.png)]  # the second one with every label parsed already
    fig = _magnitude(lambda f: f)
    assert fig.canvas.get_renderer().mathtext_parser is plots._MATHTEXT[0]
    plots.plt.close(fig)
    monkeypatch.setattr(plots, "_renderer", lambda fig: fig.canvas.get_renderer())  # each renderer its own parser
    own = _magnitude(plots.png)
    assert shared[0] == shared[1] == own
