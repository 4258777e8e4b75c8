"""Issue #18, "options that do not apply": an option that would do nothing in the combination given is refused
(exit 2, one line naming the option and why), before any work and without writing a file; an explicitly given
value equal to the default counts as given (click's parameter source, not the value)."""

from __future__ import annotations

import pytest
from clihelp import one_line_error, run

from stabilitylab.status import ExitStatus


@pytest.mark.parametrize("value", ["3", "-100"], ids=["other", "default-value-given"])
def test_compare_ignore_index_without_logits_was_ignored(capsys, value):
    one_line_error(*run(capsys, "compare", "--ignore-index", value), "--ignore-index needs --logits")


@pytest.mark.parametrize("extra,option", [(("--key", "x"), "--key"), (("--labels-key", "y"), "--labels-key"),
                                          (("--rows", "summary"), "--rows")])
def test_compare_logits_options_without_logits_are_refused(capsys, extra, option):
    one_line_error(*run(capsys, "compare", *extra), f"{option} needs --logits")


@pytest.mark.parametrize("extra,option", [
    (("--emit-pytest", "t.py"), "--emit-pytest"), (("--save-baseline", "b.json"), "--save-baseline"),
    (("-d", "float16"), "--dtype"), (("-e", "softmax_ce"), "--experiment"), (("--grad",), "--grad"),
    (("--no-thresholds",), "--no-thresholds"), (("--family", "confident"), "--family"),
    (("--tolerance", "0.1"), "--tolerance"), (("--ignore-index", "-100"), "--ignore-index"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_audit_list_with_an_option_that_does_nothing_was_accepted(capsys, tmp_path, monkeypatch, extra, option):
    monkeypatch.chdir(tmp_path)
    one_line_error(*run(capsys, "audit", "--list", *extra), option, "does nothing with --list")
    assert list(tmp_path.iterdir()) == []


def test_audit_list_keeps_format_and_output(capsys, tmp_path):
    code, out, err = run(capsys, "audit", "--list", "--format", "json", "-o", tmp_path / "t.json")
    assert code == ExitStatus.OK, err
    assert '"stabilitylab.targets/1"' in (tmp_path / "t.json").read_text()


def test_audit_no_thresholds_save_baseline_wrote_an_empty_baseline(capsys, tmp_path):
    path = tmp_path / "b.json"
    one_line_error(*run(capsys, "audit", "scipy.log_softmax", "-d", "float16", "--no-thresholds",
                        "--save-baseline", path), "--save-baseline", "empty baseline")
    assert not path.exists()
    one_line_error(*run(capsys, "audit", "scipy.log_softmax", "--no-thresholds", "--family", "confident"),
                   "--family does nothing with --no-thresholds")


def test_audit_ignore_index_without_logits_is_refused(capsys):
    one_line_error(*run(capsys, "audit", "scipy.log_softmax", "--ignore-index", "0"), "--ignore-index needs --logits")


@pytest.mark.parametrize("extra,option", [(("--all",), "--all"), (("--ulps", "5"), "--ulps"),
                                          (("--all", "--ulps", "5"), "--all")])
def test_check_update_all_ulps_was_accepted(capsys, tmp_path, extra, option):
    path = tmp_path / "b.json"
    one_line_error(*run(capsys, "check", "--baseline", path, "--update", *extra), option,
                   "does nothing with --update")
    assert not path.exists()
