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
    # one float32 ulp below 88.72283935546875 (ulp = 2**-17 in [64, 128))
    changed["entries"][key]["first_failure"] = 88.72283935546875 - 2.0**-17
    path = tmp_path / "b.json"
    path.write_text(json.dumps(changed))
    assert check(capsys, path, "-d", "float32")[0] == ExitStatus.REGRESSION
    assert check(capsys, path, "-d", "float32", "--ulps", "1")[0] == ExitStatus.OK


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
