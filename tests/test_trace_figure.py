"""The trace figure (stabilitylab/tracing/figure.py) on a hand-made stabilitylab.trace/1 document: one panel per
format, modules x ops cells holding the worst error bits (bits lost out of the format's precision), blanks
where no record exists, a cross where the value is not a number, and identical PNG bytes twice."""

from __future__ import annotations

import io

import matplotlib.image as mpimg
import numpy as np
import pytest

from stabilitylab.tracing import figure

DOC = {
    "schema": "stabilitylab.trace/1",
    "formats": ["bfloat16", "float16"],
    "events": [],
    "modules": [
        {"module": "blocks.0.ln1", "op": "aten.sub.Tensor", "format": "bfloat16", "worst_error_bits": 8.5,
         "counts": {"inaccurate": 3}},
        {"module": "blocks.0.ln1", "op": "aten.rsqrt.default", "format": "bfloat16", "worst_error_bits": "nan",
         "counts": {"nan": 2}},
        {"module": "blocks.0.ln1", "op": "aten.sub.Tensor", "format": "bfloat16", "worst_error_bits": 2.0,
         "counts": {"ok": 9}},
        {"module": "head", "op": "aten.mm.default", "format": "bfloat16", "worst_error_bits": 30.0,
         "counts": {"inaccurate": 1}},
        {"module": "head", "op": "aten.mm.default", "format": "float16", "worst_error_bits": 1.25,
         "counts": {"ok": 5}},
    ],
    "findings": [],
}


def test_grids_pool_records_and_keep_first_appearance_order():
    modules, ops, values, failed = figure.grids(DOC)
    assert modules == ["blocks.0.ln1", "head"]
    assert ops == ["aten.sub.Tensor", "aten.rsqrt.default", "aten.mm.default"]
    bf = values["bfloat16"]
    assert bf[0, 0] == 8.5  # the worst of 8.5 and 2.0
    assert np.isnan(bf[0, 1]) and failed["bfloat16"][0, 1]
    assert bf[1, 2] == 30.0 and np.isnan(bf[1, 0])
    assert values["float16"][1, 2] == 1.25 and np.isnan(values["float16"][0]).all()
    assert not failed["float16"].any()


def test_one_panel_per_format_scaled_to_its_precision():
    fig = figure.heatmap(DOC, render=lambda f: f)
    images = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title().split(":")[0] for ax in images] == ["bfloat16", "float16"]
    bf, f16 = (ax.get_images()[0] for ax in images)
    assert bf.get_clim() == (0, 8) and f16.get_clim() == (0, 11)  # p of bfloat16 and float16
    data = bf.get_array()
    assert data[1, 2] == 8  # 30 bits clipped to p: no correct bit
    assert data[0, 1] == 8 and data[0, 0] == 8  # the NaN cell drawn at p; 8.5 bits clipped to 8
    assert np.ma.is_masked(data[1, 0])  # no record: blank
    crosses = images[0].collections[0].get_offsets()
    assert crosses.tolist() == [[1.0, 0.0]]  # (op column, module row) of the NaN cell
    assert [t.get_text() for t in images[0].get_yticklabels()] == ["blocks.0.ln1", "head"]
    assert [t.get_text() for t in images[0].get_xticklabels()] == ["sub.Tensor", "rsqrt.default", "mm.default"]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_png_is_deterministic_and_readable():
    first, second = figure.heatmap(DOC), figure.heatmap(DOC)
    assert first == second and first[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"tIME" not in first  # no timestamp; one constant text chunk, the marker (io/markers.py)
    assert first.count(b"tEXt") == 1 and b"tEXtSoftware\x00stabilitylab" in first
    height, width = mpimg.imread(io.BytesIO(first)).shape[:2]
    assert width > 600 and height > 300


def test_empty_document_is_a_value_error():
    with pytest.raises(ValueError, match="no module records"):
        figure.heatmap({"schema": "stabilitylab.trace/1", "formats": ["bfloat16"], "modules": []})
