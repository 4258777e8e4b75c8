"""Issue #18: every generated sentence is parsed back into its claims (method, format, status words,
numbers) and checked against the data it summarizes: the findings of ``compare``, the thresholds'
sentences, the likelihood figure's sentences and the sentences beside a magnitude figure (where
"mse_sigmoid never fails" stood beside a figure of it vanishing)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from stabilitylab import api
from stabilitylab.analysis.findings import VERB, _exact, _param, _relative, _short, findings, threshold_findings
from stabilitylab.analysis.thresholds import thresholds
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.base import Settings
from stabilitylab.numerics.formats import DEFAULT_FORMATS
from stabilitylab.report import build as report

STATUS_OF = {v: k for k, v in VERB.items()}
FMT = r"[a-z0-9_]+"
FMTS = rf"({FMT}(?:, {FMT})*)"


def _formats(text: str) -> list[str]:
    return text.split(", ")


# ------------------------------------------------------------------ compare's findings
def _method_claims(body: str, methods: list[str]) -> dict[str, list[str]]:
    """``{method: [clause, ...]}``: the clauses between "; " grouped by the method that starts them."""
    out: dict[str, list[str]] = {}
    current = None
    for segment in body.split("; "):
        starts = [m for m in methods if segment.startswith(m + " ")]
        if starts:
            current = max(starts, key=len)
            segment = segment[len(current) + 1:]
            out[current] = []
        assert current is not None, segment
        out[current].append(segment)
    return out


def _check_clause(clause: str, rows: dict, formats: list[str], claimed: dict) -> None:
    """One clause of a method phrase against that method's rows ``{dtype: Result}``."""
    m = re.fullmatch(r"is ok (everywhere|in " + FMTS + r") \(within (\S+) ulp\)", clause)
    if m:
        where = formats if m.group(1) == "everywhere" else _formats(m.group(2))
        assert all(rows[f].status == "ok" for f in where)
        assert m.group(3) == f"{max(rows[f].ulps for f in where):.2g}"
        claimed.update({f: "ok" for f in where})
        return
    m = re.fullmatch(r"ok in " + FMTS, clause)
    if m:
        claimed.update({f: "ok" for f in _formats(m.group(1))})
        return
    m = re.fullmatch(r"gives (\S+) in " + FMTS + r", correctly rounded: the exact value (\S+) is not representable "
                     r"there", clause)
    if m:
        where = _formats(m.group(2))
        assert m.group(1) == "/".join(sorted({_short(rows[f].value) for f in where}))
        assert m.group(3) == "/".join(sorted({_exact(rows[f]) for f in where}))
        claimed.update({f: "range" for f in where})
        return
    m = re.fullmatch(r"is inaccurate in " + FMTS + r" \(relative error up to (\S+)\)", clause)
    if m:
        where = _formats(m.group(1))
        assert m.group(2) == f"{max(rows[f].rel_error for f in where):.2g}"
        claimed.update({f: "inaccurate" for f in where})
        return
    verb = next(v for v in STATUS_OF if clause.startswith(v + " in "))
    status = STATUS_OF[verb]
    m = re.fullmatch(re.escape(verb) + " in " + FMTS + r" \((?:loss (\S+)|(.*))\)", clause)
    assert m, clause
    where = _formats(m.group(1))
    if status == "error":
        assert m.group(3) == "; ".join(sorted({rows[f].error for f in where}))
    else:
        assert m.group(2) == "/".join(sorted({_short(rows[f].value) for f in where}))
    claimed.update({f: status for f in where})


SIX = ["float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"]


@pytest.mark.parametrize("dtypes", [None, SIX])
def test_every_finding_agrees_with_the_results(dtypes):
    comparison = api.compare(dtypes=dtypes).comparison
    formats = [f.name for f in comparison.formats]
    widest = max(comparison.formats, key=lambda f: f.precision).name
    tol = {f.name: f.default_tolerance for f in comparison.formats}
    by = {(r.experiment, r.case, r.method, r.dtype): r for r in comparison.results}
    cases = {(r.experiment, r.case) for r in comparison.results}
    said_cases = set()
    for experiment, sentence in findings(comparison):
        exp = EXPERIMENTS[experiment]
        case = next(c for e, c in sorted(cases, key=lambda k: -len(k[1]))
                    if e == experiment and (sentence.startswith(c + " ") or sentence.startswith(c + ":")))
        rest = sentence[len(case):]
        assert rest.endswith(".")
        m = re.fullmatch(r": rounding the inputs to the format changes the exact value(?: \((\S+)\))? itself "
                         r"\((\S+) in (\S+); (.*)\)\.", rest)
        if m:
            method = m.group(1) or next(x.name for x in exp.methods if x.truth is None)
            wide = by[(experiment, case, method, widest)]
            assert m.group(3) == widest and m.group(2) == _exact(wide)
            moved = dict(part.split(" ", 1) for part in m.group(4).split(", "))
            for f in formats:
                r = by[(experiment, case, method, f)]
                changes = _relative(r.reference, wide.reference) > tol[f]
                assert (f in moved) == changes, (sentence, f)
                if changes:
                    assert moved[f] == _exact(r)
            continue
        m = re.fullmatch(r" \(exact (\S+) in (\S+)\): (.*)\.", rest)
        assert m, sentence
        said_cases.add((experiment, case))
        first = exp.methods[0].name
        assert m.group(2) == widest and m.group(1) == by[(experiment, case, first, widest)].exact
        claims = _method_claims(m.group(3), list(exp.method_names))
        assert list(claims) == list(exp.method_names), sentence
        for method, clauses in claims.items():
            rows = {f: by[(experiment, case, method, f)] for f in formats}
            claimed: dict[str, str] = {}
            for clause in clauses:
                _check_clause(clause, rows, formats, claimed)
            assert claimed == {f: rows[f].status for f in formats}, (sentence, method, claimed)
    failing = {(e, c) for (e, c, _, _), r in by.items() if r.status != "ok"}
    assert said_cases == failing  # one sentence per case some method does not get ok, and no other


# ------------------------------------------------------------------ threshold sentences
@pytest.fixture(scope="module")
def rows():
    return thresholds([EXPERIMENTS[n] for n in ("likelihood", "gradient", "binary_ce")], DEFAULT_FORMATS, Settings())


def _at(text: str, exact: bool, value) -> None:
    assert text == ("" if exact else "at most ") + _param(value), (text, exact, value)


def test_every_threshold_sentence_agrees_with_its_rows(rows):
    said = threshold_findings(rows)
    assert len(said) == len({(r.experiment, r.family, r.dtype) for r in rows})
    for experiment, sentence in said:
        m = re.fullmatch(r"In (\S+), along (\S+) \((\S+)\): (.*)\.", sentence)
        dtype, family, parameter, body = m.groups()
        mine = [r for r in rows if (r.family, r.dtype) == (family, dtype)]
        names = "|".join(re.escape(r.method) for r in mine)
        parts = re.split(rf"; (?=(?:{names})[ :])", body)
        assert len(parts) == len(mine), body
        for part, r in zip(parts, mine):
            assert part.startswith(r.method) and r.parameter == parameter
            p = re.escape(parameter)
            rest = part[len(r.method):]
            if m := re.fullmatch(rf" first fails at {p} = (.+?) \((\w+)(?:; predicted (\S+))?\)"
                                 rf"(?:, inaccurate from {p} = (.+))?", rest):
                _at(m.group(1), r.exact_failure, r.first_failure)
                assert m.group(2) == r.failure
                if m.group(3):
                    assert m.group(3) == _param(r.predicted)
                early = r.first_inaccurate is not None and r.first_inaccurate < r.first_failure
                assert bool(m.group(4)) == early
                if early:
                    _at(m.group(4), r.exact_inaccurate, r.first_inaccurate)
            elif m := re.fullmatch(rf" stays finite but is (.+?) from {p} = (.+)", rest):
                assert r.first_failure is None and r.first_inaccurate is not None
                assert m.group(1).split(" ")[0] == (r.inaccurate_status or "inaccurate")
                _at(m.group(2), r.exact_inaccurate, r.first_inaccurate)
            elif m := re.fullmatch(rf" never fails the status rule for {p} <= (\S+)", rest):
                assert r.first_failure is None and r.first_inaccurate is None
                assert r.exact_failure and r.exact_inaccurate and m.group(1) == _param(r.search_range[1])
            else:
                m = re.fullmatch(rf": no failure found \(verified for {p} < (\S+)\)", rest)
                assert m, part
                assert r.first_failure is None and r.first_inaccurate is None
                assert not (r.exact_failure and r.exact_inaccurate)


def test_likelihood_figure_sentences_name_the_rows_status(rows):
    _, sentences = report._likelihood_figure(DEFAULT_FORMATS, Settings(), rows)
    iid = {(r.method, r.dtype): r for r in rows if r.family == "iid"}
    for fmt, sentence in zip(DEFAULT_FORMATS, sentences):
        r = iid[("product", fmt.name)]
        assert sentence.startswith(f"In {fmt.name} the product of 0.1 first {VERB[r.failure]} at n = "
                                   f"{r.first_failure}")


def test_a_vanishing_value_beside_its_figure_is_said_and_agrees(rows):
    """mse_sigmoid's gradient is 0 along the vanishing family in float16 (the figure): a sentence says so,
    and what it says of the status rule is what the thresholds say."""
    gradient = EXPERIMENTS["gradient"]
    family = gradient.family("vanishing")
    panels = report._family_panels(gradient, family, list(DEFAULT_FORMATS), Settings())
    grid = report._family_grid(family)
    said = report.vanishing_sentences(gradient, family, panels, rows)
    found = {(r.method, r.dtype): r for r in rows if r.family == "vanishing"}
    claimed = set()
    for sentence in said:
        m = re.fullmatch(r"In (\S+), along vanishing \(d\): (\S+) is 0 at (\d+) of the figure's (\d+) points, "
                         r"from d = (\S+?)( on)?; (.*)\.", sentence)
        assert m, sentence
        dtype, method, k, n, first, on, status = m.groups()
        values = np.asarray(panels[dtype][method])
        zero = np.flatnonzero(values == 0)
        assert int(k) == len(zero) and int(n) == len(grid) and first == f"{float(grid[zero[0]]):.6g}"
        assert bool(on) == (zero[0] + len(zero) == len(grid))
        r = found[(method, dtype)]
        if status.startswith("the status rule never calls it a failure"):
            assert r.first_failure is None and r.first_inaccurate is None
            assert r.exact_failure and r.exact_inaccurate
        elif v := re.match(r"the threshold search found no failure \(verified only for d < (\S+)\)", status):
            assert r.first_failure is None and r.first_inaccurate is None
            assert not (r.exact_failure and r.exact_inaccurate)
            below = r.verified_inaccurate if not r.exact_inaccurate else r.verified_failure
            assert v.group(1) == repr(below)
        else:
            s = re.fullmatch(r"the status rule calls it (\w+) from d = (.+)", status)
            assert s, status
            claimed.add((method, dtype, s.group(1)))
        claimed.add((method, dtype))
    zeros = {(m, f) for f, per in panels.items() for m, v in per.items() if (np.asarray(v) == 0).any()}
    assert {c for c in claimed if len(c) == 2} == zeros
    assert ("mse_sigmoid", "float16") in zeros
