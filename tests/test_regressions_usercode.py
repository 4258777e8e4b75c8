"""Issue #18, user code: a baseline is data and never runs the code it names unless allowed
(``check``, ``check --update``, the pytest plugin); file targets are relative to the baseline's folder."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from clihelp import run

from stabilitylab.auditing.core import AuditError, baseline_target
from stabilitylab.guard import baseline
from stabilitylab.testing import StabilityBaseline

STABLE = """
import numpy as np

def f(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    np.put_along_axis(e, np.argmax(logits, axis=1)[:, None], 0, axis=1)
    return np.log1p(e.sum(axis=1)) - np.take_along_axis(z, labels[:, None], axis=1)[:, 0]
"""




def payload(folder: Path, marker: Path, name: str = "payload.py") -> Path:
    """A module that leaves ``marker`` behind when it is imported (and defines a stable loss ``f``)."""
    path = folder / name
    path.write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + textwrap.dedent(STABLE))
    return path


def shared_baseline(folder: Path, *targets: str) -> Path:
    """A baseline someone else wrote, with an entry per target (values as any)."""
    path = folder / "shared.json"
    entry = {"first_failure": None, "first_inaccurate": None, "failure": None}
    path.write_text(json.dumps({"schema": "stabilitylab.baseline/1", "settings": {},
                                "entries": {f"softmax_ce/confident/{t}/float16": entry for t in targets}}))
    return path


# ------------------------------------------------------------------ refused
def test_check_executed_a_file_named_by_a_baseline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    payload(tmp_path, marker)
    path = shared_baseline(tmp_path, "payload.py:f")
    code, out, err = run(capsys, "check", "--baseline", path)
    assert code == 3, out + err
    assert not marker.exists()
    assert err.splitlines() == [
        "stabilitylab: warning: softmax_ce/confident/payload.py:f/float16: not recomputed: payload.py:f is user "
        "code, which a baseline runs only when allowed (--allow-target PATTERN, or allow_targets = [PATTERN, ...] "
        "under [tool.stabilitylab] in a pyproject.toml beside or above the baseline)"]
    assert "1 not comparable" in out


def test_check_imported_a_module_named_by_a_baseline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    payload(tmp_path, marker, "payloadmod.py")
    path = shared_baseline(tmp_path, "payloadmod:f", "os:system")
    code, out, err = run(capsys, "check", "--baseline", path, "--allow-target", "other:*")
    assert code == 3 and not marker.exists() and "payloadmod" not in sys.modules
    assert len(err.splitlines()) == 2 and "os:system is user code" in err


def test_check_update_executed_a_file_named_by_a_baseline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    payload(tmp_path, marker)
    path = shared_baseline(tmp_path, "payload.py:f")
    before = path.read_text()
    code, out, err = run(capsys, "check", "--baseline", path, "--update", "-d", "float16")
    assert code == 0 and not marker.exists()
    assert "kept softmax_ce/confident/payload.py:f/float16 as it was: not recomputed" in err
    assert json.loads(path.read_text())["entries"] == json.loads(before)["entries"]


def test_plugin_check_executed_a_file_named_by_a_baseline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    payload(tmp_path, marker)
    path = shared_baseline(tmp_path, "payload.py:f")
    with pytest.raises(AuditError, match="stability_allow_targets"):
        StabilityBaseline(path).check("softmax_ce/confident/payload.py:f/float16")
    assert not marker.exists()


# ------------------------------------------------------------------ allowed
@pytest.fixture
def audited(tmp_path, capsys, monkeypatch):
    """losses/stable.py audited into ci/baseline.json from tmp_path; the key names ../losses/stable.py."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "losses").mkdir()
    (tmp_path / "ci").mkdir()
    (tmp_path / "losses" / "stable.py").write_text(textwrap.dedent(STABLE))
    path = tmp_path / "ci" / "baseline.json"
    code, out, err = run(capsys, "audit", "losses/stable.py:f", "-e", "softmax_ce", "-d", "float16",
                         "--family", "confident", "--save-baseline", path)
    assert code == 0, err
    assert list(json.loads(path.read_text())["entries"]) == ["softmax_ce/confident/../losses/stable.py:f/float16"]
    return path


def test_check_from_another_folder_found_no_target(audited, tmp_path, capsys, monkeypatch):
    """The key is relative to the baseline: check works from any folder, with --allow-target."""
    monkeypatch.chdir(tmp_path / "ci")
    code, out, err = run(capsys, "check", "--baseline", "baseline.json", "--allow-target", "../losses/*")
    assert (code, err) == (0, ""), out + err
    assert "1 entries compared: 0 regressed" in out


def test_pyproject_allow_targets_beside_or_above_the_baseline(audited, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path / "losses")
    (tmp_path / "pyproject.toml").write_text('[tool.stabilitylab]\nallow_targets = ["../losses/stable.py:f"]\n')
    code, out, err = run(capsys, "check", "--baseline", audited)
    assert (code, err) == (0, ""), out + err
    row = StabilityBaseline(audited).check("softmax_ce/confident/../losses/stable.py:f/float16")
    assert row.method == "../losses/stable.py:f"
    (tmp_path / "pyproject.toml").write_text('[tool.stabilitylab]\nallow_targets = "*"\n')
    code, out, err = run(capsys, "check", "--baseline", audited)
    assert code == 2 and len(err.splitlines()) == 1 and "must be a list" in err, err


def test_plugin_ini_allows_targets(audited, tmp_path):
    store = StabilityBaseline(audited, allow_targets=["*stable.py:f"])
    assert store.check("softmax_ce/confident/../losses/stable.py:f/float16").first_inaccurate is None


def test_old_cwd_relative_keys_still_resolve_with_a_note(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stable.py").write_text(textwrap.dedent(STABLE))
    (tmp_path / "ci").mkdir()
    path = shared_baseline(tmp_path / "ci", "stable.py:f")  # written before keys were relative to the baseline
    code, out, err = run(capsys, "check", "--baseline", path, "--allow-target", "stable.py:f")
    assert code == 0, out + err
    assert err.splitlines() == [
        "stabilitylab: note: stable.py:f: no such file beside the baseline "
        f"({tmp_path / 'ci'}); read from the current directory, as older baselines named it (audit it again with "
        "--save-baseline to name it relative to the baseline)"]


def test_built_in_adapters_need_no_opt_in(tmp_path):
    pytest.importorskip("scipy")
    rows, problems, notes = baseline.audit_rows(tmp_path / "b.json", ["softmax_ce/confident/scipy.log_softmax/float16"],
                                                None)
    assert problems == {} and notes == [] and rows[0].method == "scipy.log_softmax"


@pytest.mark.parametrize(("spec", "folder", "key"), [
    ("losses/a.py:f", "ci", "../losses/a.py:f"),
    ("a.py:f", ".", "a.py:f"),
    ("pkg.mod:f", "ci", "pkg.mod:f"),
    ("scipy.log_softmax", "ci", "scipy.log_softmax"),
])
def test_baseline_keys_name_files_relative_to_the_baseline(spec, folder, key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert baseline_target(spec, folder) == key
    assert baseline_target(str(tmp_path / spec) if spec.endswith(".py:f") else spec, tmp_path / folder) == key


# ------------------------------------------------------------------ emitted tests
NAIVE = """
import numpy as np

def loss(logits, labels):
    e = np.exp(logits)
    p = e / e.sum(axis=1, keepdims=True)
    return -np.log(np.take_along_axis(p, labels[:, None], axis=1)[:, 0])
"""
INJECT = '__import__("pathlib").Path(__file__).with_name("INJECTED").touch()'
HOSTILE = [  # folder names that would be code if written into the module as they are
    f'a"""\n{INJECT}\n"""',
    f"b'''\n{INJECT}\n'''",
    f"c\n{INJECT}\n#",
    f"d\r{INJECT}\r#",
    "e\\\\\\x41\\N{x}\\u{}\\",
    f"f{{}}{{0}}{{{{}}}}\u2028{INJECT}\u2029\x0c\x0b\x1c\x85 ",
    f'g"; {INJECT}; "\\',
]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_emitted_module_ran_code_from_the_audited_path(name, tmp_path):
    """A target file whose path holds quotes, line breaks, backslashes, braces: the module compiles, its
    docstring reads the path (escaped), its tests pass, and nothing in the path runs."""
    import ast
    import subprocess

    import stabilitylab
    from stabilitylab.errors import shown

    folder = tmp_path / name
    folder.mkdir()
    (folder / "loss.py").write_text(textwrap.dedent(NAIVE))
    spec = f"{folder}/loss.py:loss"
    result = stabilitylab.audit(spec, "softmax_ce", ["float16"], families=["confident"], search=False)
    out = tmp_path / "emitted"
    out.mkdir()
    module = out / "test_emitted.py"
    count = result.to_pytest(module)
    text = module.read_text(encoding="utf-8")
    tree = ast.parse(text)  # compiles
    assert ast.get_docstring(tree).splitlines()[0] == f"Numerical stability regression tests for {shown(spec)}."
    assert all(INJECT not in line or line.startswith("#") or line.startswith("_PATH") for line in text.splitlines())
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)],
                          cwd=out, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert count > 0 and f"{count} passed" in done.stdout
    assert not list(tmp_path.rglob("INJECTED"))


def _naive(logits, labels):
    import numpy as np

    e = np.exp(logits)
    p = e / e.sum(axis=1, keepdims=True)
    return -np.log(np.take_along_axis(p, labels[:, None], axis=1)[:, 0])


@pytest.mark.parametrize(("module", "qualname"), [
    (__name__, f"_naive; {INJECT}"), (__name__, f"_naive\n{INJECT}"), (f"os; {INJECT}; import os", "_naive")])
def test_emitted_module_wrote_a_name_as_code(module, qualname, tmp_path):
    """A callable's module and qualified name can be set to anything: one that is not a dotted Python name is
    refused (one line), never written as code."""
    import types

    import stabilitylab

    fn = types.FunctionType(_naive.__code__, _naive.__globals__, "_naive")
    fn.__module__, fn.__qualname__ = module, qualname
    result = stabilitylab.audit(fn, "softmax_ce", ["float16"], families=["confident"], search=False)
    with pytest.raises(AuditError, match="not a (Python|module) name") as caught:
        result.to_pytest(tmp_path / "test_emitted.py")
    assert len(str(caught.value).splitlines()) == 1
    assert not (tmp_path / "test_emitted.py").exists()


# ------------------------------------------------------------------ user code behind a guard
STABLE_LOSS = textwrap.dedent(STABLE)


def _target(folder: Path, text: str, name: str = "target.py") -> str:
    (folder / name).write_text(textwrap.dedent(text))
    return f"{folder / name}:f"


def _audit_json(capsys, spec: str, *extra) -> tuple[int, str, str]:
    return run(capsys, "audit", spec, "-e", "softmax_ce", "-d", "float16", "--family", "confident",
               "--format", "json", *extra)


def test_a_printing_target_corrupted_the_json_on_stdout(tmp_path, capsys):
    spec = _target(tmp_path, 'print("hello from the module")\n' + STABLE_LOSS.replace(
        "def f(logits, labels):\n", "def f(logits, labels):\n    print('called with', logits.shape)\n"))
    code, out, err = _audit_json(capsys, spec)
    assert code == 0, err
    doc = json.loads(out)  # standard output is the report alone
    assert doc["schema"].startswith("stabilitylab.audit")
    assert "hello from the module" in err and "called with" in err


@pytest.mark.parametrize(("call", "shown"), [
    ("sys.exit(0)", "SystemExit(0)"), ("sys.exit(3)", "SystemExit(3)"), ("raise SystemExit(1)", "SystemExit(1)"),
    ("raise GeneratorExit", "GeneratorExit")])
def test_sys_exit_in_a_target_became_the_exit_status(call, shown, tmp_path, capsys):
    """On every call: the probe fails, one line, exit 2; on some rows only: error rows, the audit goes on."""
    always = _target(tmp_path, f"import sys\n\ndef f(logits, labels):\n    {call}\n", "always.py")
    code, out, err = _audit_json(capsys, always)
    assert code == 2 and out == "", err
    assert len(err.splitlines()) == 1 and f"TargetExit: {shown} inside the target" in err, err
    sometimes = _target(tmp_path, "import sys\nimport numpy as np\n" + STABLE_LOSS.replace(
        "def f(logits, labels):\n",
        f"def f(logits, labels):\n    if not np.isfinite(logits.astype(float)).all():\n        {call}\n"),
        "sometimes.py")
    code, out, err = _audit_json(capsys, sometimes)
    assert code == 0, err
    errors = [r for r in json.loads(out)["results"] if r["status"] == "error"]
    assert errors and all(shown in r["error"] for r in errors)
    at_import = _target(tmp_path, f"import sys\n{call}\n", "at_import.py")
    code, out, err = _audit_json(capsys, at_import)
    assert code == 2 and len(err.splitlines()) == 1 and "could not import" in err and shown in err, err


def test_a_dataclass_in_a_target_file_failed_to_import(tmp_path, capsys):
    """`from __future__ import annotations` + @dataclass looks its module up in sys.modules; pickle too."""
    import pickle

    from stabilitylab.auditing.core import resolve

    spec = _target(tmp_path, "from __future__ import annotations\n\nfrom dataclasses import dataclass\n\n\n"
                   "@dataclass\nclass Config:\n    scale: float = 1.0\n\n" + STABLE_LOSS.replace(
                       "def f(logits, labels):\n", "def f(logits, labels):\n    logits = logits * Config().scale\n"))
    code, out, err = _audit_json(capsys, spec)
    assert code == 0, err
    fn = resolve(spec, "softmax_ce").fn.__wrapped__
    assert pickle.loads(pickle.dumps(fn)) is fn
    config = sys.modules[fn.__module__].Config(2.0)
    assert pickle.loads(pickle.dumps(config)) == config
    assert fn.__module__ == resolve(spec, "softmax_ce").fn.__module__  # the same name every time
