"""stabilitylab check: the committed baseline passes, changes are caught with the right exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stabilitylab.cli import main
from stabilitylab.status import ExitStatus

BASELINE = Path(__file__).resolve().parents[1] / "reports" / "thresholds.json"


@pytest.fixture(scope="module")
def doc():
    return json.loads(BASELINE.read_text())


def check(capsys, path, *extra):
    code = main(["check", "--baseline", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_committed_baseline_passes(capsys):
    code, out, err = check(capsys, BASELINE)
    assert code == ExitStatus.OK, out + err
    assert "0 regressed" in out


def test_changed_threshold_is_a_regression(tmp_path, capsys, doc):
    changed = json.loads(json.dumps(doc))
    changed["entries"]["likelihood/iid/product/float32"]["first_failure"] = 47
    path = tmp_path / "b.json"
    path.write_text(json.dumps(changed))
    code, out, _ = check(capsys, path, "-d", "float32")
    assert code == ExitStatus.REGRESSION
    assert "likelihood/iid/product/float32 first_failure" in out and "1 regressed" in out


def test_float_tolerance_in_ulps(tmp_path, capsys, doc):
    changed = json.loads(json.dumps(doc))
    key = "softmax_ce/overflow/naive_softmax_log/float32"
    # one float32 ulp above 88.72283935546875 (ulp = 2**-17 in [64, 128)): the method now fails one ulp earlier
    changed["entries"][key]["first_failure"] = 88.72283935546875 + 2.0**-17
    path = tmp_path / "b.json"
    path.write_text(json.dumps(changed))
    assert check(capsys, path, "-d", "float32")[0] == ExitStatus.REGRESSION
    assert check(capsys, path, "-d", "float32", "--ulps", "1")[0] == ExitStatus.OK
    # one ulp below: the method now fails one ulp later, an improvement (fails only with --strict)
    changed["entries"][key]["first_failure"] = 88.72283935546875 - 2.0**-17
    path.write_text(json.dumps(changed))
    assert check(capsys, path, "-d", "float32")[0] == ExitStatus.OK
    assert check(capsys, path, "-d", "float32", "--strict")[0] == ExitStatus.REGRESSION
    assert check(capsys, path, "-d", "float32", "--strict", "--ulps", "1")[0] == ExitStatus.OK


def test_improvement_is_not_a_regression(tmp_path, capsys, doc):
    """Issue #18: first failure 40 -> 46 (the method fails later) was reported as a regression, exit 1, with no
    word of --update. Now: exit 0, a note per entry and the exact command that records it; --strict fails."""
    changed = json.loads(json.dumps(doc))
    changed["entries"]["likelihood/iid/product/float32"]["first_failure"] = 40
    changed["entries"]["binary_ce/saturation/sigmoid_log/float32"]["first_inaccurate"] = 10.0
    path = tmp_path / "my baseline.json"
    path.write_text(json.dumps(changed))
    code, out, err = check(capsys, path, "-d", "float32")
    assert code == ExitStatus.OK, out + err
    assert "0 regressed, 2 improved" in out
    assert "↑" in out and "! regression" in out
    assert "note: likelihood/iid/product/float32 improved (first_failure 40 -> 46)" in out
    assert "binary_ce/saturation/sigmoid_log/float32 improved (first_inaccurate 10.0 -> 10.68" in out
    command = f"stabilitylab check --baseline '{path}' --update -d float32"
    assert command in " ".join(out.split())
    code, out, _ = check(capsys, path, "-d", "float32", "--strict")
    assert code == ExitStatus.REGRESSION and "--strict: exit 1" in out
    code, out, _ = check(capsys, path, "-d", "float32", "--format", "markdown")
    assert code == ExitStatus.OK and "| ↑ | 40 | 46 |" in out and "* note: likelihood/iid/product/float32" in out
    # the suggested command records them: then nothing moved
    assert main(["check", "--baseline", str(path), "--update", "-d", "float32"]) == ExitStatus.OK
    capsys.readouterr()
    code, out, _ = check(capsys, path, "-d", "float32", "--strict")
    assert code == ExitStatus.OK and "0 regressed, 0 improved" in out


def test_never_fails_now_is_an_improvement_and_fails_now_a_regression(tmp_path, capsys, doc):
    changed = json.loads(json.dumps(doc))
    # baseline: failed at 100 (overflow); now never fails in the search range
    changed["entries"]["accumulation/ones/kahan/float32"].update(first_failure=100, failure="overflow")
    path = tmp_path / "b.json"
    path.write_text(json.dumps(changed))
    code, out, _ = check(capsys, path, "-d", "float32")
    assert code == ExitStatus.OK and "1 improved" in out and "first_failure 100 -> never" in out
    assert "never fails" in out
    # baseline: never fails; now it fails: a regression
    changed = json.loads(json.dumps(doc))
    changed["entries"]["likelihood/iid/product/float32"].update(first_failure=None, failure=None)
    path.write_text(json.dumps(changed))
    code, out, _ = check(capsys, path, "-d", "float32")
    assert code == ExitStatus.REGRESSION and "1 regressed, 0 improved" in out


def test_failure_status_changed_at_the_same_input_is_a_regression(tmp_path, capsys, doc):
    changed = json.loads(json.dumps(doc))
    changed["entries"]["likelihood/iid/product/float32"]["failure"] = "nan"
    # an entry improving one metric and regressing another counts as regressed only
    changed["entries"]["softmax_ce/overflow/naive_softmax_log/float32"].update(first_inaccurate=1.0,
                                                                               first_failure=100.0)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(changed))
    code, out, _ = check(capsys, path, "-d", "float32")
    assert code == ExitStatus.REGRESSION and "2 regressed, 0 improved" in out


def test_change_direction_rule():
    from stabilitylab.guard.baseline import IMPROVEMENT, REGRESSION, change
    from stabilitylab.numerics.formats import FORMATS

    f32 = FORMATS["float32"]
    assert change("first_failure", 40, 46, f32, 0) == IMPROVEMENT
    assert change("first_failure", 46, 40, f32, 0) == REGRESSION
    assert change("first_failure", 46, 46, f32, 0) == ""
    assert change("first_inaccurate", 1.5, None, f32, 0) == IMPROVEMENT
    assert change("first_inaccurate", None, 1.5, f32, 0) == REGRESSION
    assert change("failure", "underflow", "nan", f32, 0) == REGRESSION
    assert change("failure", "underflow", "nan", f32, 0, IMPROVEMENT) == IMPROVEMENT
    assert change("failure", "underflow", None, f32, 0, IMPROVEMENT) == IMPROVEMENT
    assert change("failure", "underflow", "nan", f32, 0, REGRESSION) == REGRESSION


@pytest.mark.parametrize("extra,option", [(("--all",), "--all"), (("--ulps", "5"), "--ulps"),
                                          (("--ulps", "0"), "--ulps"), (("--strict",), "--strict"),
                                          (("--format", "table"), "--format")])
def test_update_refuses_options_of_a_comparison(tmp_path, capsys, extra, option):
    """Issue #18: `check --update --all --ulps 5` ran, silently ignoring --all and --ulps."""
    path = tmp_path / "b.json"
    code, out, err = check(capsys, path, "--update", *extra)
    assert code == ExitStatus.USAGE
    assert f"{option} does nothing with --update" in err and len(err.strip().splitlines()) == 1
    assert not path.exists()


def test_missing_and_unknown_entries_exit_3(tmp_path, capsys, doc):
    partial = json.loads(json.dumps(doc))
    del partial["entries"]["likelihood/iid/product/float32"]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(partial))
    code, out, _ = check(capsys, path, "-d", "float32")
    assert code == ExitStatus.INCOMPARABLE and "1 not in baseline" in out
    unknown = json.loads(json.dumps(doc))
    unknown["entries"]["likelihood/iid/no_such_method/float32"] = unknown["entries"]["likelihood/iid/product/float32"]
    path.write_text(json.dumps(unknown))
    code, out, _ = check(capsys, path, "-d", "float32")
    assert code == ExitStatus.INCOMPARABLE and "1 not comparable" in out


@pytest.mark.parametrize("content,code,words", [
    (None, ExitStatus.INCOMPARABLE, "does not exist"),
    ('{"schema": "stabilitylab.baseline/1", "entr', ExitStatus.USAGE, "not valid JSON"),
    ("not json at all", ExitStatus.USAGE, "not valid JSON"),
    ('{"schema": "other/9", "entries": {}}', ExitStatus.USAGE, "schema"),
    ('[1, 2]', ExitStatus.USAGE, "schema"),
    ('{"schema": "stabilitylab.baseline/1", "entries": {"a/b/c/float32": {"first_failure": 1}}}',
     ExitStatus.USAGE, "must hold"),
])
def test_bad_baseline_is_one_line(tmp_path, capsys, content, code, words):
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    got, out, err = check(capsys, path)
    assert got == code
    assert err.count("\n") == 1 and err.startswith("stabilitylab: error:") and words in err
    assert "Traceback" not in err


def test_update_writes_sorted_stable_file_and_keeps_other_entries(tmp_path, capsys, doc):
    path = tmp_path / "b.json"
    shutil.copy(BASELINE, path)
    assert main(["check", "--baseline", str(path), "--update", "-d", "float32"]) == 0
    capsys.readouterr()
    text = path.read_text()
    new = json.loads(text)
    assert new["entries"] == doc["entries"]  # float32 recomputed identically, the rest kept
    assert text == json.dumps(new, indent=1, sort_keys=True) + "\n"
    assert set(new["environment"]) == {"python", "numpy", "ml_dtypes", "mpmath", "platform"}
    assert not list(tmp_path.glob("*.tmp"))


def test_environment_difference_only_warns(tmp_path, capsys, doc):
    other = json.loads(json.dumps(doc))
    other["environment"]["numpy"] = "0.0.1"
    path = tmp_path / "b.json"
    path.write_text(json.dumps(other))
    code, _, err = check(capsys, path, "-d", "float16")
    assert code == ExitStatus.OK and "warning: baseline made with numpy 0.0.1" in err


@pytest.mark.parametrize("mutate,words", [
    (lambda d: d["entries"]["likelihood/iid/product/float32"].update(first_failure="46"), "first_failure"),
    (lambda d: d["entries"]["likelihood/iid/product/float32"].update(first_failure=True), "first_failure"),
    (lambda d: d["entries"]["likelihood/iid/product/float32"].update(first_failure={}), "first_failure"),
    (lambda d: d["entries"]["likelihood/iid/product/float32"].update(failure="broken"), "failure"),
    (lambda d: d["settings"].update(ftz="false"), "ftz"),
    (lambda d: d["settings"].update(p=0), "p is 0"),
    (lambda d: d["settings"].update(p="abc"), "p is"),
    (lambda d: d["settings"].update(tolerance=-1), "tolerance"),
    (lambda d: d.update(environment=[]), "environment"),
])
def test_wrong_types_in_baseline_are_usage_errors(tmp_path, capsys, doc, mutate, words):
    bad = json.loads(json.dumps(doc))
    mutate(bad)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bad))
    code, out, err = check(capsys, path, "-d", "float32")
    assert code == ExitStatus.USAGE and err.count("\n") == 1 and words in err, err
    assert "Traceback" not in err


@pytest.mark.slow  # linear_ce's thresholds: ~15 s per run, two runs
def test_linear_ce_entries_are_added_with_e_and_recomputed_from_the_baseline(tmp_path, capsys):
    """linear_ce is not a default experiment: a bare --update leaves it out, -e linear_ce adds it, and a plain
    check of that baseline recomputes it (a changed linear_ce threshold is then a regression)."""
    path = tmp_path / "b.json"
    assert main(["check", "--baseline", str(path), "--update", "-d", "e4m3fn", "-e", "linear_ce"]) == 0
    entries = json.loads(path.read_text())["entries"]
    assert entries and all(key.startswith("linear_ce/") for key in entries)
    doc = json.loads(path.read_text())
    key = next(k for k, v in entries.items() if isinstance(v.get("first_inaccurate"), int))
    doc["entries"][key]["first_inaccurate"] += 1  # the baseline says it failed later: now a regression
    path.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["check", "--baseline", str(path)]) == ExitStatus.REGRESSION
    assert key in capsys.readouterr().out
