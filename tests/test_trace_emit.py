"""--emit-pytest: the replay test FAILS on the planted model's faulty op and PASSES once the op is rewritten as the
catalogue says (both run with pytest in a subprocess, as a user would)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from stabilitylab.cli import main  # noqa: E402
from stabilitylab.tracing.emit import INPUTS_NAME, TEST_NAME  # noqa: E402

PLANTED = Path(__file__).parent / "trace_models" / "planted.py"


def _pytest(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:stabilitylab",
                           str(folder / TEST_NAME)], cwd=folder, capture_output=True, text=True, timeout=120)


def _emit(tmp_path: Path, builder: str, fmt: str) -> Path:
    folder = tmp_path / "replay"
    assert main(["trace", f"{PLANTED}:{builder}", "-d", fmt, "--json", str(tmp_path / "t.json"),
                 "--emit-pytest", str(folder)]) == 0
    assert (folder / INPUTS_NAME).is_file()
    return folder


def _rewrite(folder: Path, old: str, new: str) -> None:
    path = folder / TEST_NAME
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _run_in_process(folder: Path) -> None:
    """Import the emitted module afresh and call its one test (what pytest does, without a new interpreter)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"replay_{id(folder)}", folder / TEST_NAME)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [getattr(module, n) for n in dir(module) if n.startswith("test_")]
    assert len(tests) == 1
    tests[0]()


def test_replay_in_process_fails_then_passes_after_the_rewrite(tmp_path):
    folder = _emit(tmp_path, "feed_forward", "fp16")
    with pytest.raises(AssertionError, match="8 of 8 value.s. became inf or NaN where the float64 reference"):
        _run_in_process(folder)
    _rewrite(folder, "return torch.ops.aten.addmm.default(*args, **kwargs)",
             "return torch.ops.aten.addmm.default(*(a.float() for a in args), **kwargs)")
    _run_in_process(folder)


@pytest.mark.slow  # two interpreters importing torch
def test_replay_fails_on_the_float16_feed_forward_and_passes_in_float32(tmp_path):
    folder = _emit(tmp_path, "feed_forward", "fp16")
    failed = _pytest(folder)
    assert failed.returncode == 1, failed.stdout
    assert "8 of 8 value(s) became inf or NaN where the float64 reference is finite" in failed.stdout
    # the catalogue's rewrite for a matmul past 65504: keep the op in float32
    _rewrite(folder, "return torch.ops.aten.addmm.default(*args, **kwargs)",
             "return torch.ops.aten.addmm.default(*(a.float() for a in args), **kwargs)")
    passed = _pytest(folder)
    assert passed.returncode == 0, passed.stdout


@pytest.mark.slow  # two more interpreters
def test_replay_fails_on_the_naive_exp_and_passes_max_shifted(tmp_path):
    folder = _emit(tmp_path, "attention_40", "fp16")
    assert _pytest(folder).returncode == 1
    _rewrite(folder, "return torch.ops.aten.exp.default(*args, **kwargs)",
             "x = args[0]\n    return torch.exp(x - x.amax(-1, keepdim=True))")
    passed = _pytest(folder)
    assert passed.returncode == 0, passed.stdout


def test_nothing_to_replay_is_one_line_after_the_other_outputs(tmp_path, capsys):
    """A clean trace is an answer, not bad input: the --json file is written, one line says no test was, exit 0."""
    out = tmp_path / "t.json"
    assert main(["trace", f"{PLANTED}:healthy", "-d", "bf16", "--emit-pytest", str(tmp_path / "r"),
                 "--json", str(out)]) == 0
    err = capsys.readouterr().err.strip()
    assert err == "no replay test written: no op lost a value by its own fault (nothing to replay)"
    assert json.loads(out.read_text())["schema"] == "stabilitylab.trace/1"
    assert not (tmp_path / "r").exists()


def test_markdown_to_standard_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["trace", f"{PLANTED}:healthy", "-d", "bf16", "--markdown", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#") and not (tmp_path / "-").exists()
    assert main(["trace", f"{PLANTED}:healthy", "--markdown", "-", "--json", "-"]) == 2
    assert "only one of --json and --markdown" in capsys.readouterr().err
