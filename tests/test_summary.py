"""Issue #18 ("what a new user misreads"): ``compare`` opens with a one-screen summary whose every
verdict agrees with the results it summarizes (parsed back from the text, checked against the rows)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from stabilitylab import api
from stabilitylab.analysis.findings import VERB
from stabilitylab.analysis.outcome import METHOD_FAILURES
from stabilitylab.cli import main
from stabilitylab.render.model import SUMMARY_HEADING, verdicts

STATUS_OF = {VERB[s]: s for s in METHOD_FAILURES}
GROUP = re.compile(r"([a-z0-9_]+(?:, [a-z0-9_]+)*) \((\d+)/(\d+)\)")


@pytest.fixture(scope="module")
def comparison():
    return api.compare().comparison


def run(capsys, *args) -> str:
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def parse(sentence: str, methods: list[str]) -> tuple[str, int, dict[str, list[tuple[str, object]]]]:
    """``(experiment, cases, {method: [(status or "ok everywhere" or "no failure", {format: count} or
    [formats])]})`` from one verdict; fails on any text it does not understand."""
    head, _, body = sentence.partition(": ")
    name, cases = re.fullmatch(r"([a-z0-9_]+) \((\d+) cases\)", head).groups()
    assert body.endswith(".")
    claims: dict[str, list] = {}
    for phrase in body[:-1].split("; "):
        method = next(m for m in sorted(methods, key=len, reverse=True) if phrase.startswith(m + " "))
        rest = phrase[len(method) + 1:]
        if rest == "ok everywhere":
            claims[method] = [("ok everywhere", None)]
            continue
        claims[method] = []
        for clause in rest.split(" and "):
            if clause.startswith("no failure in "):
                claims[method].append(("no failure", clause[len("no failure in "):].split(", ")))
                continue
            verb = next(v for v in STATUS_OF if clause.startswith(v + " in "))
            groups = clause[len(verb) + 4:]
            found = GROUP.findall(groups)
            assert ", ".join(f"{f} ({k}/{n})" for f, k, n in found) == groups, clause
            per = {}
            for formats, k, n in found:
                assert int(n) == int(cases)
                per.update({f: int(k) for f in formats.split(", ")})
            claims[method].append((STATUS_OF[verb], per))
    return name, int(cases), claims


def test_compare_opens_with_the_verdicts(capsys, comparison):
    """The first lines of ``stabilitylab compare`` (a 160-column pipe, and markdown) hold every verdict."""
    said = [text for _, text in verdicts(comparison)]
    assert len(said) == len(comparison.experiments)
    text = run(capsys, "compare")
    first = "\n".join(text.splitlines()[:25])
    assert SUMMARY_HEADING in text.splitlines()[0]
    flat = " ".join(first.split())
    for sentence in said:
        assert sentence in flat
    assert "`-e EXP`" in flat and "--format json" in flat
    md = run(capsys, "compare", "--format", "markdown").splitlines()
    assert md[0] == f"## {SUMMARY_HEADING}"
    assert all(f"- {sentence}" in md[:15] for sentence in said)
    assert any("`-e EXP`" in line for line in md[:15])


def test_every_verdict_agrees_with_the_results_table(comparison):
    """Each claim (status, formats, k of n cases; ok everywhere; no failure in) is recounted from
    the rows, and every failing (method, format, status) of the rows is claimed."""
    counted = Counter((r.experiment, r.method, r.dtype, r.status) for r in comparison.results)
    cases = {e: len({r.case for r in comparison.results if r.experiment == e}) for e, *_ in counted}
    formats = [f.name for f in comparison.formats]
    for experiment, sentence in verdicts(comparison):
        exp = next(e for e in comparison.experiments if e.name == experiment)
        name, n, claims = parse(sentence, list(exp.method_names))
        assert name == experiment and n == cases[experiment]
        assert list(claims) == list(exp.method_names)
        for method, said in claims.items():
            fails = {(f, s): counted[(experiment, method, f, s)] for f in formats for s in METHOD_FAILURES
                     if counted[(experiment, method, f, s)]}
            claimed = {}
            for status, what in said:
                if status == "ok everywhere":
                    assert not fails, (sentence, fails)
                elif status == "no failure":
                    assert what and not [f for f, _ in fails if f in what], (sentence, what)
                    assert set(what) == set(formats) - {f for f, _ in fails}
                else:
                    claimed.update({(f, status): k for f, k in what.items()})
            assert claimed == fails, (sentence, claimed, fails)


def test_verdict_of_a_failing_and_a_clean_method(comparison):
    """The example of the issue: the naive softmax overflows in float16; log_softmax_log1p never fails."""
    text = dict(verdicts(comparison))["softmax_ce"]
    assert re.search(r"naive_softmax_log overflows in float16 \(\d+/\d+\)", text)
    assert "log_softmax_log1p ok everywhere" in text
