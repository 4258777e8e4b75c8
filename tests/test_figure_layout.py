"""Issue #22: every report figure is laid out once and saved as laid out (one draw, no tight bounding box,
which drew the figure a second time), with nothing outside the figure and the legend over no panel."""

from __future__ import annotations

import io
from types import SimpleNamespace

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from stabilitylab.render import plots

FORMATS = ["float16", "bfloat16", "float32", "float64"]
D = np.linspace(0, 100, 60)


def _run(method: str, steps: int, fails_at: int | None, underflow: float):
    """A duck-typed training run (the fields training_figure reads)."""
    loss = np.geomspace(1.0, 0.05, steps)
    if fails_at is not None:
        loss[fails_at - 1:] = np.inf
    bad = np.flatnonzero(~np.isfinite(loss))
    return SimpleNamespace(method=method, loss=loss, accuracy=np.linspace(0.3, 0.97, steps // 10),
                           steps_per_epoch=10, grad_underflow=np.full(steps, underflow),
                           first_nonfinite_step=int(bad[0]) + 1 if bad.size else None)


def _draw(kind: str, render):
    if kind == "family":
        bits = np.where(D < 50, 0.3, 200.0)
        panels = {n: {"loses": (bits, np.ones_like(D, dtype=bool)), "fails": (np.zeros_like(D), D < 80)}
                  for n in FORMATS}
        return plots.family_figure("a title " * 20, panels, D, {("loses", "float16"): 50.0}, render=render)
    if kind == "magnitude":
        return plots.magnitude_figure("a title", {n: {"x": np.exp(-D)} for n in FORMATS}, D, render=render)
    if kind == "likelihood":
        n = np.logspace(0, 4, 30)
        curves = {("product", f): (n * 2.0, np.ones_like(n)) for f in FORMATS}
        return plots.likelihood_figure(curves, n * 2.3, n, {("product", "float16"): 100}, render=render)
    if kind == "large_vocab":
        from stabilitylab.report.large_vocab import CHUNK_METHODS, POLICIES, PY_METHODS, Curve

        x = np.logspace(0, -28, 30)
        curves = [Curve(panel, policy, method, x, x, np.linspace(0, 8, 30), np.full(30, "ok"), 8)
                  for panel, methods in (("chunks", CHUNK_METHODS), ("p_y", PY_METHODS))
                  for policy in POLICIES for method in methods]
        return plots.large_vocabulary_figure(curves, render=render)
    # the training figure: its third column's title is wider than its panel (it crossed the figure's edge)
    runs = {(m, f): _run(m, 150, 91 if (m, f) == ("naive", "float16") else None, 0.05)
            for m in ("naive", "shifted", "log_softmax") for f in FORMATS[:3]}
    return plots.training_figure("train/overflow: a scenario", runs, FORMATS[:3], render=render)


KINDS = ["family", "magnitude", "likelihood", "large_vocab", "training"]


@pytest.mark.parametrize("kind", KINDS)
def test_figure_is_drawn_once_and_keeps_its_width(kind, monkeypatch):
    draws = []
    real = Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda self, renderer: (draws.append(1), real(self, renderer))[1])
    data = _draw(kind, plots.png)
    assert len(draws) == 1  # the tight bounding box made it 2
    height, width = mpimg.imread(io.BytesIO(data)).shape[:2]
    assert width == plots.WIDTH * plots.DPI


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_outside_the_figure_and_the_legend_over_no_panel(kind, monkeypatch):
    fig = _draw(kind, lambda f: f)
    drawn = []  # the texts a draw shows (not, e.g., the tick labels outside an axis' view)
    real = Text.draw
    monkeypatch.setattr(Text, "draw", lambda self, renderer: (drawn.append(self), real(self, renderer))[1])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    texts = [t for t in drawn if t.get_visible() and t.get_text().strip()]
    assert len(texts) > 10
    for t in texts:
        box = t.get_window_extent(renderer)
        assert box.x0 >= -0.5 and box.x1 <= width + 0.5 and box.y0 >= -0.5 and box.y1 <= height + 0.5, (
            t.get_text(), box.bounds, width, height)
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert box.y0 >= 0
    for ax in fig.axes:
        assert not box.overlaps(ax.get_tightbbox(renderer)), ax.get_title()
    plots.plt.close(fig)


@pytest.mark.parametrize("formats", [4, 9])
def test_the_suptitle_over_no_panel(formats):
    """A tall figure (9 formats: 5 rows of panels) kept its suptitle (at 0.98 of the figure's height, which
    tight_layout leaves there) over the first row's panel titles; review5 found it in ``report -d all ...``."""
    names = ["float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2", "bfloat16@float32",
             "float16@float32", "mxfp8_e4m3"][:formats]
    panels = {n: {"loses": (np.where(D < 50, 0.3, 200.0), np.ones_like(D, dtype=bool))} for n in names}
    fig = plots.family_figure("a title " * 20, panels, D, {}, render=lambda f: f)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    for ax in fig.axes:
        box = ax.get_tightbbox(renderer)
        assert box.y1 <= title.y0, (ax.get_title(), box.y1, title.y0)
    plots.plt.close(fig)
