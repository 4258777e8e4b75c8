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
