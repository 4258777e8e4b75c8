"""Compare stabilitylab's float32 thresholds with an independent scan (tests/independent/float32_scan.py).

The scanner shares no code with the ``stabilitylab`` package: it simulates float32 from the spec,
scans every float32 parameter in [1, 104) and argues the rest (see its docstring). The tool is only
run as a program (``python -m stabilitylab thresholds ... --format json``) and its output read.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("float32_scan", ROOT / "tests" / "independent" / "float32_scan.py")
fs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fs)

JOBS = [(f, m) for f in fs.TEST_FAMILIES for m in fs.FAMILIES[f]["methods"]]


def _show(x):
    if x is None:
        return "None"
    return f"{x!r} (0x{int(np.float32(x).view(np.uint32)):08x})"


@pytest.fixture(scope="module")
def independent():
    """{(family, method): (first_inaccurate, first_failure)} from one scan of the 4 families."""
    res = fs.scan_many(fs.TEST_FAMILIES)
    return {(f, m): res[f][m] for f, m in JOBS}


@pytest.fixture(scope="module")
def tool():
    """{(family, method): (first_inaccurate, first_failure)} as printed by the tool."""
    cmd = [sys.executable, "-m", "stabilitylab", "thresholds", "-d", "float32",
           "-e", "softmax_ce", "-e", "binary_ce", "--format", "json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["thresholds"]
    table = {}
    for row in rows:
        assert row["dtype"] == "float32", row
        key = (f"{row['experiment']}/{row['family']}", row["method"])
        assert key not in table, key
        table[key] = (row["first_inaccurate"], row["first_failure"])
    return table


@pytest.mark.slow
def test_tool_lists_the_same_families_and_methods(tool):
    assert sorted(tool) == sorted(JOBS)


@pytest.mark.slow
@pytest.mark.parametrize("family,method", JOBS, ids=[f"{f}:{m}" for f, m in JOBS])
def test_thresholds_agree_with_independent_scan(independent, tool, family, method):
    mine, theirs = independent[(family, method)], tool.get((family, method))
    assert theirs is not None, f"tool has no row for {family} {method}"
    problems = [
        f"{name}: independent {_show(a)}, tool {_show(b)}"
        for name, a, b in zip(("first_inaccurate", "first_failure"), mine, theirs)
        if a != b
    ]
    assert not problems, f"{family} {method} (float32): " + "; ".join(problems)


# ---- fast self-checks of the independent scanner itself -------------------------------------


def test_scanner_building_blocks():
    """numpy float64 exp/log/log1p within 1 ulp, casts and eps as the model says (fs.selfcheck),
    and the two skip arguments' conclusions at sample points (fs.check_arguments)."""
    fs.selfcheck(n=500)
    for family in fs.FAMILIES:
        fs.check_arguments(family)


@pytest.mark.parametrize("family", list(fs.FAMILIES))
def test_fast_path_equals_all_mpmath_path(family, monkeypatch):
    """exp/log/log1p via float64 + midpoint re-check give bit for bit the same values as
    recomputing every single element with mpmath (fs.ALL_MPMATH); the sign of zero included."""
    rng = np.random.default_rng(7)
    d = np.concatenate([
        rng.uniform(0, 110, 400), np.exp2(rng.uniform(-149, 7, 200)),
        [0.0, 8.053863525390625, 16.63553237915039, 88.72283935546875, 103.97208404541016, 104.0, 3e38],
    ]).astype(np.float32)
    def run():
        out = {}
        for m in fs.FAMILIES[family]["methods"]:
            v = fs._eval(family, m, d)
            out[m] = v, fs.status(v, fs.Reference(fs._ref_kind(family, m), d))
        return out

    fast = run()
    monkeypatch.setattr(fs, "ALL_MPMATH", True)
    for m, (slow, slow_status) in run().items():
        v, v_status = fast[m]
        assert np.array_equal(v_status, slow_status), (family, m)
        same = (v.view(np.uint32) == slow.view(np.uint32)) | (np.isnan(v) & np.isnan(slow))  # NaN sign: free
        assert same.all(), (family, m, d[~same])
