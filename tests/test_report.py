"""The markdown report: deterministic, computed, current, and safe to write."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from stabilitylab.cli import main
from stabilitylab.numerics.formats import DEFAULT_FORMATS
from stabilitylab.report import build as report

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files():
    return report.build(DEFAULT_FORMATS)


def _without_environment(markdown: str) -> str:
    """The report minus its environment table (versions differ between machines) and its audit of the
    installed framework kernels (which frameworks are installed, and their versions, differ too)."""
    markdown = re.sub(r"## Auditing the installed framework kernels\n.*?(?=\n## |\Z)", "", markdown, flags=re.S)
    return re.sub(r"## Environment\n.*?\n## ", "## ", markdown, flags=re.S).rstrip() + "\n"


@pytest.mark.slow  # a second whole build (~25 s)
def test_report_is_deterministic(files):
    again = report.build(DEFAULT_FORMATS)
    assert again.keys() == files.keys()
    for name in files:
        assert again[name] == files[name], name


def test_report_content(files):
    md = files[report.INDEX].decode()
    assert "In float32 the product of 0.1 first underflows at n = 46" in md
    assert "product first fails at n = 324 (underflow; predicted 324)" in md
    for name in files:
        if name.endswith(".png"):
            assert files[name].startswith(b"\x89PNG\r\n\x1a\n")
            assert f"]({name})" in md  # every figure is embedded
    assert "| float32 | 24 |" in md  # formats table from finfo
    audit = md[md.index("## Auditing the installed framework kernels"):]
    for target, library in (("scipy.log_softmax", "scipy"), ("scipy.logsumexp", "scipy"), ("jax.log_softmax", "jax")):
        if importlib.util.find_spec(library) is not None:  # the test extra installs them; without it, not listed
            assert f"| {target} |" in audit
    assert "log_softmax_log1p" in audit and "](figures/audit_softmax_ce_confident.png)" in audit


def test_committed_report_is_current(files):
    committed = (ROOT / "reports" / report.INDEX).read_text()
    assert _without_environment(committed) == _without_environment(files[report.INDEX].decode()), (
        "reports/ is stale: run `stabilitylab report`")
    for name in files:
        if name != report.AUDIT_FIGURE:  # drawn from the installed frameworks: see _without_environment
            assert (ROOT / "reports" / name).exists(), name


def test_report_command_writes_files(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", "-o", str(out), "-d", "float32"]) == 0
    assert (out / "README.md").exists() and (out / "figures" / "likelihood_nll.png").exists()
    assert not list(out.rglob("*.tmp"))
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("make", ["file", "readonly"])
def test_bad_output_folder_is_one_line_and_writes_nothing(tmp_path, capsys, make):
    if make == "readonly" and os.geteuid() == 0:
        pytest.skip("running as root: permissions do not stop root")
    if make == "file":
        target = tmp_path / "afile"
        target.write_text("x")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "sub"
    code = main(["report", "-o", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("stabilitylab: error:")
    assert not (tmp_path / "ro" / "sub").exists()
