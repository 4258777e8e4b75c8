"""Compare stabilitylab's float64 subnormal-range thresholds with an independent checker
(tests/independent/float64_subnormal_scan.py).

The checker shares no code with the ``stabilitylab`` package: it models float64 with Python
floats (exp and log correctly rounded via mpmath, cross-checked with math.exp / math.log),
argues d < 733.25 and checks every float64 d from there to the tool's threshold, tooth by
tooth of the subnormal exp(-d) (see its docstring).  The tool is only run as a program
(``python -m stabilitylab thresholds ... --format json``) and its output read.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("float64_subnormal_scan",
                                               ROOT / "tests" / "independent" / "float64_subnormal_scan.py")
fs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fs)


@pytest.fixture(scope="module")
def tool():
    """{method: row} of softmax_ce/underflow in float64, as printed by the tool."""
    cmd = [sys.executable, "-m", "stabilitylab", "thresholds", "-d", "float64", "-e", "softmax_ce",
           "--family", "softmax_ce/underflow", "--format", "json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return {row["method"]: row for row in json.loads(out.stdout)["thresholds"]}


def test_independent_checker_argument_holds():
    fs.check_argument()


@pytest.mark.parametrize("method", fs.FORMULATIONS)
def test_float64_underflow_threshold_is_the_first_failing_d(tool, method):
    """Issue #18: the tool flagged 733.9748642608339 exact; the first failing float64 d is
    733.362470436718.  The tool's threshold must be exact, fail, have an ok float64 below it,
    and be the first failure the checker finds (every float64 below it checked or argued)."""
    row = tool[method]
    claimed = row["first_inaccurate"]
    assert row["exact"]["first_inaccurate"] is True, row
    found = fs.check(method, claimed)
    assert found["claimed_fails"], f"{method}: the tool's {claimed!r} is ok in the independent model"
    assert found["below_ok"], f"{method}: the float64 below {claimed!r} already fails"
    assert found["first_failure"] == claimed, f"{method}: independent {found['first_failure']!r}, tool {claimed!r}"
