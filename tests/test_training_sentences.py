"""Every sentence `stabilitylab train` (and the report's training section) says, checked against the runs.

The checker re-derives each claim from the per-step columns of the runs themselves (first non-finite
step, final accuracy, epochs at chance, steps with a zero gradient, steps with underflowed gradient
terms), with its own code: it shares no logic with ``training.train.findings`` but the data.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import stabilitylab


@pytest.fixture(scope="module")
def trained():
    result = stabilitylab.train()
    return result, {(r.scenario, r.method, r.dtype): r for r in result.runs}


def _pct(text: str) -> float:
    return float(text) / 100


def _first_bad(r) -> int | None:
    for i, v in enumerate(r.loss.tolist()):
        if not math.isfinite(v):
            return i + 1
    return None


def _check(sentence: str, scenario: str, runs: dict) -> str:
    """The kind of claim checked (an AssertionError names a false one)."""
    m = re.fullmatch(r"In (\w+) the (\w+) loss becomes (NaN|inf) at step (\d+); (?:the run ends at|it ends finite, at) "
                     r"([\d.]+) % accuracy(?: \(float64: ([\d.]+) %\))?\.", sentence)
    if m:
        dtype, method, kind, step, acc, ref = m.groups()
        r = runs[(scenario, method, dtype)]
        assert _first_bad(r) == int(step), sentence
        bad = r.loss[int(step) - 1]
        assert (math.isnan(bad) if kind == "NaN" else math.isinf(bad)), sentence
        assert ("the run ends at" in sentence) == (not math.isfinite(r.loss[-1])), sentence
        assert abs(r.final_accuracy - _pct(acc)) <= 0.0005, sentence
        if ref is not None:
            assert abs(runs[(scenario, method, "float64")].final_accuracy - _pct(ref)) <= 0.0005, sentence
        return "non-finite"
    m = re.fullmatch(r"In (\w+) with finite losses throughout: (.*)\.", sentence)
    if m:
        dtype, parts = m.groups()
        for part in parts.split("; "):
            pm = re.fullmatch(r"(\w+) trains to ([\d.]+) %(, as in float64| \(float64: ([\d.]+) %\))", part)
            assert pm, part
            method, acc, tail, ref = pm.groups()
            r, r64 = runs[(scenario, method, dtype)], runs[(scenario, method, "float64")]
            assert _first_bad(r) is None, sentence
            assert abs(r.final_accuracy - _pct(acc)) <= 0.0005, sentence
            if tail == ", as in float64":
                assert abs(r.final_accuracy - r64.final_accuracy) <= 0.01, sentence
            else:
                assert abs(r.final_accuracy - r64.final_accuracy) > 0.01, sentence
                assert abs(r64.final_accuracy - _pct(ref)) <= 0.0005, sentence
        return "finite"
    m = re.fullmatch(r"(\w+) in (\w+): (?:at chance accuracy \(([\d.]+) % \+ 10 points or less\) for all (\d+) epochs|"
                     r"above chance after (\d+) epochs?); the weight gradient is exactly 0 at (\d+) of (\d+) steps\.",
                     sentence)
    if m:
        method, dtype, chance, all_epochs, after, zero, steps = m.groups()
        r = runs[(scenario, method, dtype)]
        above = [i for i, a in enumerate(r.accuracy.tolist()) if a > r.chance + 0.1]
        if all_epochs is not None:
            assert not above and int(all_epochs) == len(r.accuracy), sentence
            assert abs(r.chance - _pct(chance)) <= 0.0005, sentence
        else:
            assert above and above[0] == int(after), sentence
        assert sum(1 for z in r.zero_grad.tolist() if z == 1) == int(zero) and int(steps) == r.steps, sentence
        return "chance"
    m = re.fullmatch(r"(\w+) in (\w+) \(loss scale ([^)]*)\): per-sample gradient terms lost to underflow in the "
                     r"backward pass at (\d+) of (\d+) steps(?: \(up to ([\d.]+) % of them\))?"
                     r"(?:; (\d+) step\(s\) skipped on an overflowed gradient)?\.", sentence)
    if m:
        method, dtype, scale, lost, steps, most, skipped = m.groups()
        r = runs[(scenario, method, dtype)]
        assert sum(1 for g in r.grad_underflow.tolist() if g > 0) == int(lost) and int(steps) == r.steps, sentence
        if most is not None:
            assert abs(max(r.grad_underflow.tolist()) - _pct(most)) <= 0.0005, sentence
        scales = r.scale.tolist()
        assert scale == (f"{scales[0]:g}" if len(set(scales)) == 1 else f"dynamic, {scales[0]:g} -> {scales[-1]:g}")
        assert int(np.count_nonzero(r.skipped)) == (int(skipped) if skipped else 0), sentence
        return "underflow"
    raise AssertionError(f"a training sentence the checker cannot read: {sentence!r}")


def test_every_training_sentence_agrees_with_its_runs(trained):
    result, runs = trained
    kinds = [_check(sentence, scenario, runs) for scenario, sentence in result.findings]
    assert len(kinds) == len(result.findings) > 0
    assert {"non-finite", "finite", "underflow"} <= set(kinds)  # the default scenarios say each kind


def test_checker_rejects_a_false_sentence(trained):
    result, runs = trained
    scenario, sentence = next((s, t) for s, t in result.findings if "becomes" in t)
    step = int(re.search(r"at step (\d+)", sentence).group(1))
    with pytest.raises(AssertionError):
        _check(sentence.replace(f"at step {step}", f"at step {step + 1}"), scenario, runs)
    scenario, sentence = next((s, t) for s, t in result.findings if "lost to underflow" in t)
    lost = int(re.search(r"at (\d+) of", sentence).group(1))
    with pytest.raises(AssertionError):
        _check(sentence.replace(f"at {lost} of", f"at {lost + 1} of"), scenario, runs)


def test_every_stable_method_and_format_without_a_nonfinite_loss_is_said_to_train(trained):
    """No run is left out: each finite run in a narrow format is named in a 'finite losses' sentence, each
    non-finite one in a 'becomes' sentence."""
    result, runs = trained
    said = " ".join(f"[{s}] {t}" for s, t in result.findings)
    for (scenario, method, dtype), r in runs.items():
        if dtype == "float64":
            continue
        if _first_bad(r) is None:
            assert re.search(rf"\[{re.escape(scenario)}\] In {dtype} with finite losses throughout:[^\[]*\b{method} "
                             r"trains to", said), (scenario, method, dtype)
        else:
            assert f"[{scenario}] In {dtype} the {method} loss becomes" in said, (scenario, method, dtype)
