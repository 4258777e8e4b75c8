"""Issue #22, item 4 (the report's wall time): what the report's worker processes inherit and do not import.

* ``report.build`` runs with the garbage collector tuned for forked workers (``_collector``): the heap frozen and
  a higher youngest-generation threshold, both restored afterwards, a caller's own freeze kept;
* training in bfloat16 / float16 does not import ml_dtypes (the report no longer imports it before forking its
  workers: only the jax audit needs it, and jax imports it itself);
* every Agg renderer of a process measures text with one metrics cache: the PNG bytes of figures of different
  sizes are those of renderers with caches of their own (matplotlib's default).
"""

from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np

from stabilitylab.render import plots
from stabilitylab.report import build


def test_collector_sets_and_restores_the_garbage_collector():
    assert gc.get_freeze_count() == 0  # (pytest freezes nothing)
    before = gc.get_threshold()
    with build._collector():
        assert gc.get_threshold() == (build.GC_YOUNG, *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_collector_keeps_a_callers_freeze():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with build._collector():
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_training_in_16_bit_formats_does_not_import_ml_dtypes():
    code = ("import sys\nfrom stabilitylab.numerics.formats import FORMATS\nfrom stabilitylab.training import train\n"
            "runs = train.run_scenario(train.SCENARIOS['loss_scale_none'], "
            "[FORMATS['bfloat16'], FORMATS['float16'], FORMATS['float64']])\n"
            "print(len(runs), 'ml_dtypes' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "False"]


def test_shared_text_metrics_give_the_same_png(monkeypatch):
    """Figures of two heights (1 and 2 rows of panels: each laid out at one size and drawn at another): the
    same bytes as with a cache per renderer."""
    from matplotlib import text as mtext

    def family(formats, render=plots.png):
        d = np.linspace(0, 50, 40)
        panels = {n: {"a": (np.minimum(d, 30.0), d < 40), "b": (d / 4, np.ones(d.size, bool))} for n in formats}
        return plots.family_figure("a title long enough to be wrapped " * 4, panels, d, {("a", formats[0]): 40.0},
                                   render=render)

    sizes = [("float16",), ("float16", "bfloat16", "float32")]
    shared = [family(f) for f in sizes]
    fig = family(sizes[0], render=lambda f: f)
    renderer = fig.canvas.get_renderer()
    assert renderer is not plots._METRICS[0]
    assert mtext._get_text_metrics_function(renderer) is plots._METRICS[1]
    plots.plt.close(fig)
    monkeypatch.setattr(plots, "_share_text_metrics", lambda renderer: None)  # each renderer its own cache
    own = [family(f) for f in sizes]
    assert shared == own
