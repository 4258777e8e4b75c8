"""Issue #18: where rounding the inputs to the format changes the problem, the row says so and shows
the exact loss of the user's own (float64, unrounded) input beside that of the rounded input."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from stabilitylab import api
from stabilitylab.analysis import engine
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.softmax_ce import concat, logits_case
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.render.markdown import sections_md
from stabilitylab.render.model import INPUT_ROW, compare_sections, summary_section


@pytest.fixture(scope="module")
def likelihood():
    return api.compare("likelihood", p=0.999, n=10**9).comparison


def test_p_rounding_to_1_in_bfloat16_shows_the_loss_of_your_input(likelihood):
    """p = 0.999 is 1 in bfloat16: the loss of the rounded input is 0 (``-0 ok``), that of the user's
    input -n log(0.999) = 1000500.33: the row is marked, with both exact values."""
    yours = float(-10**9 * mpmath.log(mpmath.mpf(0.999)))
    rows = {(r.method, r.dtype): r for r in likelihood.results}
    for method in ("product", "sum_log"):
        r = rows[(method, "bfloat16")]
        assert r.exact == "0" and r.status == "ok" and r.value == 0
        assert float(r.input_exact) == pytest.approx(yours, rel=1e-9)
        assert "an input rounds to 1" in r.input_change
        assert rows[(method, "float64")].input_change == ""  # float64 is the user's own input
    table = next(t for s in compare_sections(likelihood) for t in s.tables if t.title.startswith("likelihood: loss"))
    marked = [row for row in table.rows if row[1].text == INPUT_ROW]
    assert len(marked) == 1
    bf16 = table.headers.index("bfloat16")
    assert marked[0][bf16].text.startswith("1000500.3 (an input rounds to 1")
    assert marked[0][table.headers.index("float64")].text == ""
    assert "input rounded" in table.caption
    summary = summary_section(likelihood)
    assert any("Rounding the inputs" in b and "bfloat16" in b for b in summary.bullets)
    md = sections_md(api.compare("likelihood", p=0.999, n=10**9).sections())
    assert INPUT_ROW in md and "1000500.3 (an input rounds to 1)" in md


def test_rows_whose_rounding_does_not_matter_are_not_marked(likelihood):
    """p = 0.999 in float32 changes the exact loss by 1.3e-5 relatively (below the tolerance 2**-12)."""
    r = next(r for r in likelihood.results if r.dtype == "float32")
    assert r.input_change == "" and r.input_exact == ""
    default = api.compare("likelihood").comparison
    marked = {(r.case, r.dtype) for r in default.results if r.input_change}
    assert marked == {("p=0.999,n=1000000000", "float16"), ("p=0.999,n=1000000000", "bfloat16")}


def test_softmax_logits_that_round_together_change_the_problem():
    """[1000.3, 1000], y=1 in bfloat16: both logits round to 1000, so the rounded problem's loss is ln 2
    (and every method is ok against it), while your input's is log(1 + e**0.3) = 0.854."""
    batch = concat([logits_case([1000.3, 1000.0], 1), logits_case([2.0, 1.0], 0)])
    comparison = engine.compare([EXPERIMENTS["softmax_ce"]], [FORMATS["bfloat16"], FORMATS["float64"]],
                                {"softmax_ce": batch})
    first = [r for r in comparison.results if r.case == batch.names[0] and r.dtype == "bfloat16"]
    assert first and all(r.input_change == "inputs rounded" for r in first)
    assert float(first[0].exact) == pytest.approx(np.log(2), rel=1e-9)
    assert float(first[0].input_exact) == pytest.approx(np.log1p(np.exp(0.3000000000000682)), rel=1e-9)
    assert not [r for r in comparison.results if r.input_change and (r.dtype == "float64" or r.case != batch.names[0])]


def test_an_input_overflowing_is_always_marked():
    """A logit of 1000 overflows float8_e4m3fn (max 448): marked even where the loss would not move."""
    comparison = api.compare("binary_ce", dtypes=["float8_e4m3fn"]).comparison
    assert any(r.input_change == "an input overflows" for r in comparison.results)
