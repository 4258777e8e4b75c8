"""The markdown report: deterministic, computed, current, and safe to write."""

from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from stabilitylab.cli import main
from stabilitylab.numerics.formats import DEFAULT_FORMATS
from stabilitylab.report import build as report
from stabilitylab.report import large_vocab

ROOT = Path(__file__).resolve().parents[1]


BUILT: list[float] = []  # the seconds the module's build took, timed here around report.build


@pytest.fixture(scope="module")
def files():
    started = time.perf_counter()
    out = report.build(DEFAULT_FORMATS)
    BUILT.append(time.perf_counter() - started)
    return out


def _without_build_time(markdown: str) -> str:
    """The report minus the row stating its own build time (it differs from run to run)."""
    return re.sub(rf"^\| {report.BUILD_ITEM} \|.*\n", "", markdown, flags=re.M)


def _without_environment(markdown: str) -> str:
    """The report minus its environment table (versions differ between machines) and its audit of the
    installed framework kernels (which frameworks are installed, and their versions, differ too)."""
    markdown = re.sub(r"## Auditing the installed framework kernels\n.*?(?=\n## |\Z)", "", markdown, flags=re.S)
    return re.sub(r"## Environment\n.*?\n## ", "## ", markdown, flags=re.S).rstrip() + "\n"


@pytest.mark.slow  # builds the whole report (~20-35 s)
@pytest.mark.slow  # a second whole build (~25 s)
def test_report_is_deterministic(files):
    again = report.build(DEFAULT_FORMATS)
    assert again.keys() == files.keys()
    for name in files:
        if name == report.INDEX:  # byte for byte but the build-time row
            assert _without_build_time(again[name].decode()) == _without_build_time(files[name].decode())
        else:
            assert again[name] == files[name], name


@pytest.mark.slow  # builds the whole report (~20-35 s)
def test_report_states_its_build_time(files):
    """One row of the environment table: the build's wall seconds, at most what this test timed around
    the same build (timed here, not by the report's code), and its worker processes."""
    from stabilitylab.analysis.parallel import worker_count

    md = files[report.INDEX].decode()
    rows = re.findall(rf"^\| {report.BUILD_ITEM} \| ([0-9.]+) s wall, (\d+) worker process(?:es)? ", md, flags=re.M)
    assert len(rows) == 1, rows
    seconds, processes = float(rows[0][0]), int(rows[0][1])
    assert 0 < seconds <= BUILT[0] + 0.05  # (printed to 0.1 s)
    assert processes == worker_count()
    assert md.index("## Environment") < md.index(report.BUILD_ITEM) < md.index("## ", md.index("## Environment") + 3)
    assert _without_build_time(md).count(report.BUILD_ITEM) == 0


@pytest.mark.slow  # builds the whole report (~20-35 s)
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


@pytest.mark.slow  # builds the whole report (~20-35 s)
def test_large_vocabulary_section(files):
    """The section is there with its figure, after the last experiment's section (linear_ce runs when named, so
    the report has no linear_ce section of its own); the bf16 weight-gradient sentence's
    count is recounted, plainly, from the statuses the engine gives the chunks family (evaluate, not the
    section's code)."""
    from stabilitylab.analysis.engine import evaluate
    from stabilitylab.experiments.base import Settings
    from stabilitylab.experiments.linear_ce import LINEAR_CE
    from stabilitylab.numerics.policies import format_or_policy

    md = files[report.INDEX].decode()
    start = md.index(large_vocab.HEADING)
    assert "## linear_ce:" not in md
    assert md.index("## softmax_ce_variants:") < start < md.index("## Flush-to-zero")
    section = md[start:md.index("## Flush-to-zero")]
    assert f"]({large_vocab.FIGURE})" in section
    assert files[large_vocab.FIGURE].startswith(b"\x89PNG\r\n\x1a\n")
    for policy in large_vocab.POLICIES:
        assert f"- {policy}, dL/dW[7, 0] over" in section and f"- {policy}, the confident family" in section
    said = re.search(r"- bf16, dL/dW\[7, 0\] over (\d+) chunk counts .*?not ok at (\d+) of the \d+ chunk counts "
                     r"\(first \w+ at (\d+) chunks\)", section)
    assert said is not None, section
    family = LINEAR_CE.family("chunks")
    n = list(range(family.lower, family.upper + 1))
    out = evaluate(LINEAR_CE, format_or_policy("bf16"), family.cases(np.array(n), Settings()),
                   methods=["grad_weight_chunks_storage"])["grad_weight_chunks_storage"]
    not_ok, first = 0, None
    for k, status in zip(n, out.status.tolist()):
        if status != "ok":
            not_ok += 1
            first = 2**k if first is None else first
    assert (int(said[1]), int(said[2]), int(said[3])) == (len(n), not_ok, first)
    assert not_ok > 0  # bf16 storage buffers do lose the gradient (Liger-Kernel #512): the sentence is not vacuous


@pytest.mark.slow  # builds the whole report (~20-35 s)
def test_committed_report_is_current(files):
    committed = (ROOT / "reports" / report.INDEX).read_text()
    assert _without_environment(committed) == _without_environment(files[report.INDEX].decode()), (
        "reports/ is stale: run `stabilitylab report`")
    for name in files:
        if name != report.AUDIT_FIGURE:  # drawn from the installed frameworks: see _without_environment
            assert (ROOT / "reports" / name).exists(), name


@pytest.mark.slow  # builds the whole report (~20-35 s)
def test_report_command_writes_files(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", "-o", str(out), "-d", "float32"]) == 0
    assert (out / "README.md").exists() and (out / "figures" / "likelihood_nll.png").exists()
    assert (out / large_vocab.FIGURE).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert large_vocab.HEADING in (out / "README.md").read_text()
    assert not list(out.rglob("*.tmp"))
    assert "wrote" in capsys.readouterr().out


def test_every_report_target_has_its_place_in_the_audit_order():
    """The audits are handed to the workers in AUDIT_ORDER (longest first): every target of the report has a
    place there, once (a target missing from it would stop the report)."""
    assert sorted(report.AUDIT_ORDER) == sorted(report.REPORT_TARGETS)
    assert len(set(report.AUDIT_ORDER)) == len(report.AUDIT_ORDER)


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
