"""The report's audit sentences ("N of the audited cases are inaccurate or worse where log_softmax_log1p is ok
(first: ...)"), checked against the statuses of the same cases: the target's (an audit) beside the simulated
log1p form's (the engine, run here on the audit's own cases)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import stabilitylab
from stabilitylab.analysis.engine import evaluate
from stabilitylab.auditing.core import default_audit_cases
from stabilitylab.experiments.softmax_ce import SOFTMAX_CE
from stabilitylab.numerics.formats import FORMATS

pytest.importorskip("scipy", reason="the report audits scipy (the test extra installs it)")

REPORT = Path(__file__).resolve().parents[1] / "reports" / "README.md"
CORRECT = {"ok", "range"}


def _check(said: list[str], dtype: str) -> None:
    cases = default_audit_cases("softmax_ce")
    audit = stabilitylab.audit("scipy.log_softmax", dtypes=[dtype], search=False)
    target = {r.case: r.status for r in audit.comparison.results if r.dtype == dtype}
    log1p = evaluate(SOFTMAX_CE, FORMATS[dtype], cases, methods=["log_softmax_log1p"])["log_softmax_log1p"]
    expected = [name for name, status in zip(cases.names, log1p.status.tolist())
                if status in CORRECT and target[name] not in CORRECT]
    if not expected:
        assert said == [], said
        return
    assert len(said) == 1, said
    m = re.fullmatch(rf"- scipy\.log_softmax, {dtype}: (\d+) of the audited cases are inaccurate or worse where "
                     r"log_softmax_log1p is ok \(first: (.*)\)\.", said[0])
    assert m, said[0]
    assert int(m.group(1)) == len(expected), (said[0], expected)
    named = m.group(2).split(", ")
    assert 1 <= len(named) <= 3 and set(named) <= set(expected), (said[0], expected)  # each named case counted


def _said(dtype: str) -> list[str]:
    return [line for line in REPORT.read_text().splitlines() if line.startswith(f"- scipy.log_softmax, {dtype}: ")]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_report_audit_sentence_counts_the_cases_it_names(dtype):
    _check(_said(dtype), dtype)


def test_checker_rejects_a_wrong_count():
    said = _said("float32")
    assert said, "the report says nothing about scipy.log_softmax in float32"
    wrong = re.sub(r": (\d+) of", lambda m: f": {int(m.group(1)) + 1} of", said[0])
    with pytest.raises(AssertionError):
        _check([wrong], "float32")
