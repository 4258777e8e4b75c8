"""Issue #18: report figures are legible at 800 px, give each format its own error axis (bits lost
out of its precision p), and the audit figure plots only the (target, format) pairs its table reports."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.text import Text

from stabilitylab.numerics.formats import DEFAULT_FORMATS, FORMATS
from stabilitylab.render import plots
from stabilitylab.report import build as report

ROOT = Path(__file__).resolve().parents[1]
D = np.linspace(0, 100, 60)


def _texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _panels(names):
    """Per format: a method that loses every bit from d = 50 on, one that fails (inf) from d = 80 on."""
    bits = np.where(D < 50, 0.3, 200.0)
    return {n: {"loses": (bits, np.ones_like(D, dtype=bool)), "fails": (np.zeros_like(D), D < 80)} for n in names}


def test_family_figure_error_axis_per_format_is_bits_lost_out_of_p():
    """float16's total loss reaches its panel's top (p = 11), not a bump on a shared 0..76 axis."""
    names = [f.name for f in DEFAULT_FORMATS] + ["float8_e4m3fn"]
    fig = plots.family_figure("t", _panels(names), D, {}, render=lambda f: f)
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert set(axes) == set(names)
    tops = set()
    for name, ax in axes.items():
        p = FORMATS[name].precision
        low, high = ax.get_ylim()
        assert low <= 0 and p < high <= p + max(2.0, 0.2 * p), (name, low, high)
        assert max(ax.get_yticks()) == p  # the top tick is the format's precision
        loses = next(line for line in ax.get_lines() if line.get_label() == "loses")
        assert loses.get_ydata().max() == p  # every bit lost: the top of the scale
        fails = next(line for line in ax.get_lines() if line.get_label() == "fails")
        assert fails.get_ydata().max() > p  # on the failed band, above p
        tops.add(high)
    assert len(tops) == len({FORMATS[n].precision for n in names})  # no axis shared across precisions
    plots.plt.close(fig)


def test_likelihood_figure_error_axis_is_normalized_to_p():
    n = np.logspace(0, 4, 30)
    curves = {("product", f.name): (np.full_like(n, 5.0), np.full_like(n, 100.0)) for f in DEFAULT_FORMATS}
    fig = plots.likelihood_figure(curves, n * 2.3, n, {}, render=lambda f: f)
    bottom = fig.axes[1]
    assert bottom.get_ylim() == (-2, 102)
    assert all(line.get_ydata().max() == 100 for line in bottom.get_lines())  # all bits of each format lost
    plots.plt.close(fig)


@pytest.mark.parametrize("make", ["family", "magnitude", "likelihood", "large_vocab"])
def test_figures_are_800px_wide_with_legible_text(make):
    names = [f.name for f in DEFAULT_FORMATS]
    if make == "family":
        draw = lambda render: plots.family_figure("a title", _panels(names), D, {("loses", "float16"): 50.0},  # noqa: E731
                                                  render=render)
    elif make == "magnitude":
        draw = lambda render: plots.magnitude_figure("a title", {n: {"x": np.exp(-D)} for n in names}, D,  # noqa: E731
                                                     render=render)
    elif make == "large_vocab":
        from stabilitylab.report.large_vocab import CHUNK_METHODS, POLICIES, PY_METHODS, Curve

        x = np.logspace(0, -28, 30)
        curves = [Curve(panel, policy, method, x, x, np.linspace(0, 8, 30), np.full(30, "ok"), 8)
                  for panel, methods in (("chunks", CHUNK_METHODS), ("p_y", PY_METHODS))
                  for policy in POLICIES for method in methods]
        draw = lambda render: plots.large_vocabulary_figure(curves, render=render)  # noqa: E731
    else:
        n = np.logspace(0, 4, 30)
        curves = {("product", f): (n * 2.0, np.ones_like(n)) for f in names}
        draw = lambda render: plots.likelihood_figure(curves, n * 2.3, n, {("product", "float16"): 100},  # noqa: E731
                                                      render=render)
    fig = draw(lambda f: f)
    assert fig.get_size_inches()[0] * plots.DPI == pytest.approx(800)
    small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() < plots.SMALLEST_FONT]
    assert not small
    plots.plt.close(fig)
    height, width = mpimg.imread(io.BytesIO(draw(plots.png))).shape[:2]
    assert 700 <= width <= 840, width


def test_committed_figures_are_at_most_840px_wide():
    """The report's PNGs (the training ones were 1407 px, ~6 px text at GitHub's width)."""
    pngs = sorted((ROOT / "reports" / "figures").glob("*.png"))
    assert pngs
    for path in pngs:
        assert mpimg.imread(path).shape[1] <= 840, path.name


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="scipy is not installed")
def test_audit_figure_plots_only_what_the_table_reports():
    """scipy.log_softmax has no bfloat16 (the table's '—'): no scipy curve in the bfloat16 panel."""
    formats = tuple(f.name for f in DEFAULT_FORMATS)
    audited = report._audit_task("scipy.log_softmax", formats)
    supported = {r.dtype for r in audited["resembles"]}
    assert "bfloat16" not in supported
    log1p = {f: (np.zeros_like(report.D_GRID), np.ones_like(report.D_GRID, dtype=bool)) for f in formats}
    panels = report._audit_panels(formats, [audited], log1p)
    fig = report.plots.family_figure("t", panels, report.D_GRID, {}, render=lambda f: f)
    plotted = {(line.get_label(), ax.get_title()) for ax in fig.axes for line in ax.get_lines()
               if not line.get_label().startswith("_")}
    kernel = audited["method"]
    assert {f for m, f in plotted if m == kernel} == supported
    assert {(m, f) for m, f in plotted if m != kernel} == {("log_softmax_log1p", f) for f in formats}
    plots.plt.close(fig)
