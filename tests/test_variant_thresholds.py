"""Threshold families of softmax_ce_variants (issue #20 Build 2: "each variant's exact reference, statuses
and thresholds as for the base loss"): ``thresholds -e softmax_ce_variants -d bf16 -d fp16`` against the
plain exhaustive scan of tests/independent/variant_families_check.py (which shares nothing with the engine)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from clihelp import run

from stabilitylab.analysis.engine import evaluate
from stabilitylab.experiments.softmax_ce_variants import SOFTMAX_CE_VARIANTS
from stabilitylab.numerics.formats import FORMATS

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("variant_families_check",
                                               ROOT / "tests" / "independent" / "variant_families_check.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

FAILING = ("inaccurate", "overflow", "underflow", "nan")
# the parameter values at and just below each threshold the search reports (see the slow test for all of them)
EDGES = {"offset": [15, 16, 127, 128], "z_loss": [255, 256, 260, 261], "softcap": [30, 31, 65, 66, 85, 86, 176, 177,
                                                                                   409, 410],
         "count": [234, 235]}


def test_families_are_declared_with_the_checker_s_ranges():
    fams = {f.name: (int(f.lower), f.upper) for f in SOFTMAX_CE_VARIANTS.families}
    assert fams == check.FAMILIES


@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", sorted(EDGES))
def test_statuses_at_the_edges_match_the_plain_checker(family, fmt):
    """The engine's status of every method at the parameters next to each threshold, against the checker's."""
    fam = SOFTMAX_CE_VARIANTS.family(family)
    n = np.array(EDGES[family], dtype=np.int64)
    out = evaluate(SOFTMAX_CE_VARIANTS, FORMATS[fmt], fam.cases(n, None))
    for method, o in out.items():
        for i, v in enumerate(n.tolist()):
            inaccurate, lost = check.bad(family, v, fmt, method)
            assert (o.status[i] in FAILING) == inaccurate, (family, fmt, method, v, o.status[i], o.value[i])
            assert (not np.isfinite(o.value[i])) == lost, (family, fmt, method, v, o.value[i])


@pytest.mark.slow
def test_thresholds_are_the_plain_exhaustive_scan(capsys):
    """Every family x method x format: the tool's exact first_inaccurate / first_failure (exact: true) equal the
    first failing n of the checker's scan of every n in the family's range."""
    code, out, err = run(capsys, "thresholds", "-e", "softmax_ce_variants", "-d", "bf16", "-d", "fp16",
                         "--format", "json")
    assert code == 0, err
    rows = json.loads(out)["thresholds"]
    assert len(rows) == len(check.FAMILIES) * 2 * len(check.METHODS)
    for family in check.FAMILIES:
        for fmt in check.FORMATS:
            want = check.scan(family, fmt)
            for method, (inaccurate, failure) in want.items():
                r = [t for t in rows if (t["family"], t["dtype"], t["method"]) == (family, fmt, method)][0]
                assert (r["first_inaccurate"], r["first_failure"]) == (inaccurate, failure), r
                assert r["exact"] == {"first_inaccurate": True, "first_failure": True}, r
    code, out, err = run(capsys, "thresholds", "-e", "softmax_ce_variants", "-d", "bf16", "-d", "fp16",
                         "--format", "markdown")
    start = out.index("| family (parameter)")
    table = out[start:out.index("\n\n", start)]
    assert table in (ROOT / "docs" / "guides" / "loss-options.md").read_text(encoding="utf-8")


def test_the_issue_s_thresholds_from_the_tool(capsys):
    """The float16 z-loss overflow (lse**2 > 65504 from n = 256; the unshifted form inaccurate in bfloat16
    from n = 261, its gaps lost in lse), from the tool's JSON."""
    code, out, err = run(capsys, "thresholds", "-e", "softmax_ce_variants", "-d", "fp16", "-d", "bf16",
                         "--family", "z_loss", "--format", "json")
    assert code == 0, err
    rows = {(t["method"], t["dtype"]): t for t in json.loads(out)["thresholds"]}
    assert rows["log_softmax", "float16"]["first_failure"] == 256
    assert rows["log_softmax", "float16"]["failure"] == "overflow"
    assert rows["log_softmax", "bfloat16"]["first_inaccurate"] is None
    assert rows["logsumexp_minus_logit", "bfloat16"]["first_inaccurate"] == 261
