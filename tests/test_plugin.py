"""The pytest plugin for users' CI, exercised with pytester."""

from __future__ import annotations

import json

TEST = """
def test_threshold(stability_baseline):
    row = stability_baseline.check("likelihood/iid/product/float32")
    assert row.first_failure == 46
"""


def test_update_then_check_then_regression(pytester):
    pytester.makeini("[pytest]\nstability_baseline = base.json\nfilterwarnings = error\n")
    pytester.makepyfile(test_user=TEST)
    pytester.runpytest("--stability-update").assert_outcomes(passed=1)
    path = pytester.path / "base.json"
    doc = json.loads(path.read_text())
    assert doc["entries"]["likelihood/iid/product/float32"]["first_failure"] == 46
    pytester.runpytest().assert_outcomes(passed=1)
    doc["entries"]["likelihood/iid/product/float32"]["first_failure"] = 45
    path.write_text(json.dumps(doc))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*first_failure: baseline 45, now 46*"])


def test_missing_entry_tells_how_to_update(pytester):
    pytester.makeini("[pytest]\nstability_baseline = base.json\n")
    pytester.makepyfile(test_user=TEST)
    (pytester.path / "base.json").write_text(json.dumps(
        {"schema": "stabilitylab.baseline/1", "settings": {}, "entries": {}}))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*not in baseline*--stability-update*"])


def test_update_keeps_the_baseline_settings(pytester):
    """--stability-update recomputes with the file's settings (p = 0.5 here) and keeps them."""
    from stabilitylab.cli import main

    pytester.makeini("[pytest]\nstability_baseline = base.json\n")
    path = pytester.path / "base.json"
    assert main(["check", "--baseline", str(path), "--update", "-d", "float16"]) == 0
    doc = json.loads(path.read_text())
    doc["settings"]["p"] = 0.5
    path.write_text(json.dumps(doc))
    assert main(["check", "--baseline", str(path), "--update", "-d", "float16", "-d", "float32"]) == 0
    pytester.makepyfile(test_user=TEST.replace("== 46", "> 0"))
    pytester.runpytest("--stability-update").assert_outcomes(passed=1)
    after = json.loads(path.read_text())
    assert after["settings"]["p"] == 0.5
    # 0.5**n: float32's smallest subnormal is 2**-149, so 2**-150 rounds (tie, to even) to 0
    assert after["entries"]["likelihood/iid/product/float32"]["first_failure"] == 150
    assert main(["check", "--baseline", str(path)]) == 0
