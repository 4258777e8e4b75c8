"""Audits of real code: adapters (scipy, jax/optax; torch when importable), user functions,
witnesses and emitted tests, baselines with audit entries, the black-box status rule."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from clihelp import one_line_error, run

import stabilitylab
from stabilitylab.analysis.outcome import classify
from stabilitylab.auditing import adapters
from stabilitylab.auditing.core import default_audit_cases
from stabilitylab.guard import baseline
from stabilitylab.numerics.arith import EXTERNAL_CHUNK, Arith, TargetError
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.numerics.reference import Exact

HAVE_TORCH = adapters.installed(("torch",))
HAVE_JAX = adapters.installed(("jax", "optax"))
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (pip install 'stabilitylab[torch]')")
needs_jax = pytest.mark.skipif(not HAVE_JAX, reason="jax / optax are not installed (pip install 'stabilitylab[jax]')")
REPO = Path(__file__).resolve().parents[1]
FIRST_ABOVE_LN_MAX_F32 = float(np.nextafter(np.float32(88.72283172607422), np.float32(np.inf)))

def formula(label: str) -> str:
    """The simulated formula a resembles label names ('log_softmax in bfloat16@float32': log_softmax)."""
    return label.partition(" in ")[0]


NAIVE = """
import numpy as np

def loss(logits, labels):
    e = np.exp(logits)
    p = e / e.sum(axis=1, keepdims=True)
    return -np.log(np.take_along_axis(p, labels[:, None], axis=1)[:, 0])
"""

STABLE = """
import numpy as np

def loss(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    np.put_along_axis(e, np.argmax(logits, axis=1)[:, None], 0, axis=1)
    return np.log1p(e.sum(axis=1)) - np.take_along_axis(z, labels[:, None], axis=1)[:, 0]
"""






def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------- the core
def test_external_calls_whole_batches_and_checks_results():
    calls = []

    seen = []

    def fn(x, y):
        calls.append(len(x))
        seen.append(x.dtype)
        return x[:, 0]

    fmt = FORMATS["float16"]
    rows = EXTERNAL_CHUNK + 5
    a = Arith(fmt, rows, fast=False)
    x = fmt.round(np.tile([[1.0, 2.0]], (rows, 1)))
    out = a.external(fn, x, np.zeros(rows, dtype=np.int64))
    assert calls == [EXTERNAL_CHUNK, 5]  # chunks of 2**16 rows, not one call per row
    assert out.dtype == fmt.dtype and np.all(out == 1.0)
    held = Arith(fmt, rows)  # the default: format values held in float32; the target still sees float16
    out = held.external(fn, held.load(x.astype(np.float64)), np.zeros(rows, dtype=np.int64))
    assert out.dtype == np.float32 and np.all(out == 1.0) and set(seen) == {fmt.dtype}
    assert not (a.first != np.iinfo(np.int64).max).any()  # no IEEE event is claimed for a black box
    with pytest.raises(TargetError, match="shape"):
        Arith(fmt, 3).external(lambda x, y: np.zeros((3, 2)), x[:3], np.zeros(3, dtype=np.int64))
    with pytest.raises(TargetError, match="real numbers"):
        Arith(fmt, 3).external(lambda x, y: np.array(["a"] * 3), x[:3], np.zeros(3, dtype=np.int64))


def test_external_isolates_the_rows_that_raise():
    def fn(x, y):
        if (x[:, 0] > 5).any():
            raise ValueError("too big\nsecond line")
        return x[:, 0]

    fmt = FORMATS["float32"]
    x = fmt.round(np.array([[1.0], [9.0], [2.0], [7.0]]))
    a = Arith(fmt, 4)
    out = a.external(fn, x, np.zeros(4, dtype=np.int64))
    assert a.errors == {1: "ValueError: too big", 3: "ValueError: too big"}
    assert out[0] == 1 and out[2] == 2 and np.isnan(out[1]) and np.isnan(out[3])


def test_black_box_status_rule_names_no_cause():
    fmt = FORMATS["float32"]
    a = Arith(fmt, 5)
    a.errors[4] = "RuntimeError: boom"
    exact = Exact(np.array([1.0, 1.0, 4e-18, np.nan, 1.0]), np.zeros(5), np.zeros(5, dtype=np.int64),
                  np.zeros(5, dtype=bool))
    value = np.array([np.inf, np.nan, 0.0, np.nan, np.nan])
    status = classify(fmt, value, exact, a, black_box=True).status.tolist()
    # inf (no "overflow" claimed), nan, a lost 0 is inaccurate, NaN for an undefined loss is ok, a raise is error
    assert status == ["inf", "nan", "inaccurate", "ok", "error"]
    white = classify(fmt, value, exact, Arith(fmt, 5)).status.tolist()
    assert white[0] == "overflow"  # the white-box rule, unchanged


# ------------------------------------------------------------ user functions
@pytest.mark.slow  # a full audit with its threshold search: 4-8 s
def test_user_function_naive_softmax_overflows_at_the_first_float32_above_ln_max(tmp_path, capsys):
    path = write(tmp_path, "naive.py", NAIVE)
    code, out, err = run(capsys, "audit", f"{path}:loss", "-e", "softmax_ce", "-d", "float32", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "stabilitylab.audit/2" and doc["target"] == f"{path}:loss"
    overflow = next(t for t in doc["thresholds"] if t["family"] == "overflow")
    assert overflow["first_failure"] == FIRST_ABOVE_LN_MAX_F32 == 88.72283935546875
    assert overflow["failure"] == "nan"  # inf / inf: the value, not a claimed cause
    assert overflow["exact"]["first_failure"] is False  # a black box in float32: a bound, said so
    [resembles] = doc["resembles"]
    # the formula is named; numpy's float32 exp and blocked sum sit as close to float64-then-rounded as to our
    # float32 tree, so the candidate may be the float32@float64 policy
    assert resembles["dtype"] == "float32" and resembles["matches"]
    assert resembles["method"] in ("naive_softmax_log", "naive_softmax_log in float32@float64")
    assert resembles["share"] > 0.9
    assert {"results", "summary", "thresholds", "resembles", "witnesses", "environment", "version",
            "experiment"} <= set(doc)
    assert all(r["method"] == f"{path}:loss" for r in doc["results"])


def test_user_function_module_spec_and_exhaustive_float16(tmp_path, capsys, monkeypatch):
    write(tmp_path, "mylosses.py", STABLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = stabilitylab.audit("mylosses:loss", "softmax_ce", ["float16"], families=["confident", "overflow"])
    rows = {(t.family, t.dtype): t for t in result.thresholds}
    assert rows[("confident", "float16")].exact_inaccurate  # every float16 value scanned: exact
    assert rows[("confident", "float16")].first_inaccurate is None  # the log1p form never loses the loss
    assert formula(result.resembles[0].method) == "log_softmax_log1p"


@pytest.mark.slow  # a full audit with its threshold search: 4-8 s
def test_emitted_pytest_passes_now_and_fails_when_the_target_gets_worse(tmp_path):
    target = write(tmp_path, "loss_impl.py", STABLE)
    result = stabilitylab.audit(f"{target}:loss", "softmax_ce", ["float16", "float32"], families=["confident"])
    out = tmp_path / "tests" / "test_loss_stability.py"
    out.parent.mkdir()
    count = result.to_pytest(out)
    assert count > 0
    text = out.read_text()
    imports = {line.split()[1].split(".")[0] for line in text.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"math", "ml_dtypes", "numpy", "pytest", "importlib", "pathlib", "sys"}
    assert "stabilitylab" not in imports

    def pytest_run():
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:stabilitylab",
                               str(out)], capture_output=True, text=True, cwd=tmp_path)

    first = pytest_run()
    assert first.returncode == 0, first.stdout + first.stderr
    target.write_text(textwrap.dedent(NAIVE))  # swap in a worse function
    second = pytest_run()
    assert second.returncode == 1, second.stdout + second.stderr
    assert "now inaccurate, recorded ok" in second.stdout or "now inf" in second.stdout or "now nan" in second.stdout


def test_target_that_raises_on_some_rows_gets_error_rows(tmp_path, capsys):
    path = write(tmp_path, "picky.py", STABLE + """

def picky(logits, labels):
    if np.abs(logits.astype(np.float64)).max() > 100:
        raise ValueError("logits too large for me\\nsecond line")
    return loss(logits, labels)
""")
    code, out, err = run(capsys, "audit", f"{path}:picky", "-e", "softmax_ce", "-d", "float32", "--no-thresholds",
                         "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    errors = [r for r in doc["results"] if r["status"] == "error"]
    assert errors and all(r["error"] == "ValueError: logits too large for me" for r in errors)
    assert any(r["case"] == "large:[1000,0,-1000],y=0" for r in errors)
    assert doc["summary"][0]["error"] == len(errors)
    assert any(r["status"] == "ok" for r in doc["results"])  # the audit went on


@pytest.mark.parametrize("body, target, fragments", [
    ("def f(x, y):\n    return np.zeros((len(y), 2))\n", "f", ("returned shape (2, 2)", "protocol")),
    ("def f(x, y):\n    return np.array(['a'] * len(y))\n", "f", ("real numbers",)),
    ("def f(x):\n    return x\n", "f", ("cannot be called as f(logits, labels)",)),
    ("f = 3\n", "f", ("is not callable",)),
    ("def f(x, y):\n    raise KeyError('nope')\n", "f", ("raised on a plain float32 batch", "KeyError")),
    ("", "missing", ("has no attribute 'missing'",)),
    ("import no_such_module_anywhere\n", "f", ("could not import", "No module named")),
])
def test_bad_user_targets_are_one_line_exit_2(tmp_path, capsys, body, target, fragments):
    path = write(tmp_path, "bad.py", "import numpy as np\n" + body)
    one_line_error(*run(capsys, "audit", f"{path}:{target}", "-e", "softmax_ce", "-d", "fp32"), *fragments)


def test_target_usage_errors(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "ok.py", STABLE)
    one_line_error(*run(capsys, "audit", f"{path}:loss"), "-e softmax_ce")
    one_line_error(*run(capsys, "audit", "nosuchlib.loss"), "unknown target", "--list")
    one_line_error(*run(capsys, "audit", "no_such_module_xyz:f", "-e", "softmax_ce"), "could not import module")
    one_line_error(*run(capsys, "audit", f"{tmp_path}/absent.py:f", "-e", "softmax_ce"), "does not exist")
    one_line_error(*run(capsys, "audit", "scipy.log_softmax", "--grad"), "--grad works for torch, jax and optax")
    one_line_error(*run(capsys, "audit", "scipy.log_softmax", "-e", "binary_ce"), "softmax_ce target")
    one_line_error(*run(capsys, "audit", "scipy.log_softmax", "-d", "bf16"), "supports float16, float32, float64")
    one_line_error(*run(capsys, "audit"), "give a target")
    fake = adapters.Adapter("fakelib.loss", "softmax_ce", ("float32",), "scipy_", "log_softmax",
                            ("fakelib_not_installed",), "fakelib", "nothing")
    monkeypatch.setitem(adapters.ADAPTERS, "fakelib.loss", fake)
    one_line_error(*run(capsys, "audit", "fakelib.loss"), 'pip install "stabilitylab[fakelib]"')


def test_list_shows_every_adapter_and_whether_it_is_installed(capsys):
    code, out, err = run(capsys, "audit", "--list", "--format", "json")
    assert code == 0, err
    rows = {r["target"]: r for r in json.loads(out)["targets"]}
    required = {"scipy.log_softmax", "scipy.logsumexp", "torch.cross_entropy", "torch.log_softmax",
                "torch.bce_with_logits", "torch.bce", "jax.log_softmax", "optax.softmax_cross_entropy",
                "optax.sigmoid_binary_cross_entropy"}
    assert required <= set(rows)
    assert rows["scipy.log_softmax"]["installed"] is True
    assert rows["torch.cross_entropy"]["installed"] is HAVE_TORCH
    assert rows["torch.cross_entropy"]["formats"] == ["float16", "bfloat16", "float32", "float64"]
    code, out, err = run(capsys, "audit", "--list")
    assert code == 0 and "installed" in out


# ------------------------------------------------------------ scipy (always installed by the test extra)
def test_scipy_log_softmax_resembles_plain_log_softmax_and_loses_confident_losses():
    result = stabilitylab.audit("scipy.log_softmax", dtypes=["float16", "float32"], families=["confident"])
    by = {r.dtype: r for r in result.resembles}
    # on the case rows the two log-sum-exp forms agree with scipy alike; the threshold points tell them apart
    for dtype in ("float16", "float32"):
        assert formula(by[dtype].method) in ("log_softmax", "log_softmax_log1p") and by[dtype].share > 0.95
        shares = {c.label: c.thresholds.identical_share for c in by[dtype].candidates}
        assert shares["log_softmax"] > shares["log_softmax_log1p"]
    confident = {t.dtype: t for t in result.thresholds}
    assert confident["float16"].first_inaccurate == 3.86328125 and confident["float16"].exact_inaccurate
    rows = {(r.case, r.dtype): r for r in result.comparison.results}
    scipy_case = rows[("scipy#18295:[0,-40],y=0", "float32")]
    assert scipy_case.status == "inaccurate" and scipy_case.value == 0  # the 4.248e-18 loss is lost
    kinds = {(w.source, w.dtype, w.status, w.kind) for w in result.witnesses}
    assert ("confident", "float16", "inaccurate", "first") in kinds
    assert ("confident", "float16", "inaccurate", "worst") in kinds
    first = next(w for w in result.witnesses if w.source == "confident" and w.dtype == "float16" and w.kind == "first")
    assert first.parameter == 3.86328125 and first.inputs["logits"] == [0.0, -3.86328125]
    doc = json.loads(result.to_json())
    assert doc["resembles"][0].keys() >= {"dtype", "method", "share"}
    assert "Resembles" in result._repr_markdown_()


def test_scipy_on_a_logits_file_reports_rows_the_log1p_form_gets_right(tmp_path, capsys):
    rng = np.random.default_rng(7)
    rows = 3000
    gap = rng.uniform(5.0, 40.0, rows)
    logits = np.stack([np.zeros(rows), -gap, -gap - rng.uniform(0, 3, rows)], axis=1)
    np.save(tmp_path / "logits.npy", logits)
    np.savetxt(tmp_path / "labels.txt", np.zeros(rows, dtype=int), fmt="%d")
    code, out, err = run(capsys, "audit", "scipy.log_softmax", "-d", "float32", "--logits", tmp_path / "logits.npy",
                         "--labels", tmp_path / "labels.txt", "--no-thresholds", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["results"] == []  # user rows are summarized (streamed), not listed one per row
    target = next(c for c in doc["user_logits"]["cells"] if c["method"] == "scipy.log_softmax")
    assert doc["user_logits"]["rows"] == rows and sum(target["counts"].values()) == rows
    versus = next(v for v in doc["versus"] if v["method"] == "log_softmax_log1p")
    assert versus["target_fails_method_ok"] > 1000 and versus["method_fails_target_ok"] == 0
    assert all(name.startswith("row=") for name in versus["examples"])
    assert target["counts"]["inaccurate"] >= versus["target_fails_method_ok"]
    witnesses = [w for w in doc["witnesses"] if w["source"] == "cases"]
    assert {(w["status"], w["kind"]) for w in witnesses} >= {("inaccurate", "first"), ("inaccurate", "worst")}
    code, out, err = run(capsys, "audit", "scipy.log_softmax", "-d", "float32", "--logits", tmp_path / "logits.npy",
                         "--labels", tmp_path / "labels.txt", "--no-thresholds")
    assert code == 0 and "log_softmax_log1p" in out and "target fails, method ok" in out


def test_scipy_logsumexp_minus_the_label_logit_cancels_in_the_overflow_family():
    result = stabilitylab.audit("scipy.logsumexp", dtypes=["float16"], families=["overflow", "confident"])
    rows = {t.family: t for t in result.thresholds}
    assert rows["confident"].first_inaccurate is None  # log1p form: [0, -d] keeps the loss
    assert rows["overflow"].first_inaccurate is not None  # [d, 0]: logsumexp(x) - d cancels


# ---------------------------------------------------------------- jax / optax
@needs_jax
def test_optax_softmax_cross_entropy_reproduces_optax_896():
    result = stabilitylab.audit("optax.softmax_cross_entropy", dtypes=["float32"], search=False)
    row = next(r for r in result.comparison.results if r.case == "optax#896:[-inf,0],y=1")
    assert row.status == "nan" and row.exact == "0"
    assert result.target.environment["device"] == "cpu"
    assert result.target.environment["optax"]


@pytest.mark.slow  # a full audit with its threshold search: 4-8 s
@needs_jax
def test_jax_log_softmax_float8_e4m3fn_and_gradient():
    result = stabilitylab.audit("jax.log_softmax", dtypes=["float8_e4m3fn"], search=False)
    assert all(r.status in ("nan", "range", "ok") for r in result.comparison.results)
    grad = stabilitylab.audit("jax.log_softmax", dtypes=["float16"], families=["confident"], grad=True)
    assert grad.audit.experiment.name == "softmax_ce_grad"
    assert formula(grad.resembles[0].method) in {"shifted_softmax", "exp_log_softmax", "exp_log_softmax_log1p",
                                                 "naive_softmax"}
    vanished = next(r for r in grad.comparison.results if r.case == "moderate:[12,0,-12],y=0,grad[0]")
    assert vanished.status == "inaccurate" and vanished.value == 0  # the label component of a confident row


# ---------------------------------------------------------------------- torch
@needs_torch
def test_torch_cross_entropy_and_bce_with_logits():
    result = stabilitylab.audit("torch.cross_entropy", dtypes=["float16", "bfloat16"], families=["confident"])
    assert {r.dtype for r in result.resembles} == {"float16", "bfloat16"}
    assert all(formula(r.method) in ("log_softmax", "log_softmax_log1p") for r in result.resembles)
    bce = stabilitylab.audit("torch.bce_with_logits", dtypes=["float32"], search=False)
    row = next(r for r in bce.comparison.results if r.case == "pytorch#102894:z=+inf,y=1")
    assert row.status == "nan" and row.exact == "0"  # 0 * inf in (1 - y) z
    grad = stabilitylab.audit("torch.cross_entropy", dtypes=["float32"], families=["confident"], grad=True)
    assert formula(grad.resembles[0].method).startswith("exp_log_softmax")


def test_torch_missing_is_one_line_naming_the_extra(capsys, monkeypatch):
    monkeypatch.setattr(adapters, "installed", lambda requires: "torch" not in requires)
    one_line_error(*run(capsys, "audit", "torch.cross_entropy"), 'pip install "stabilitylab[torch]"')


# ------------------------------------------------------------------ baselines
def test_baselines_hold_audit_entries(tmp_path, capsys):
    target = write(tmp_path, "guarded.py", STABLE)
    path = tmp_path / "baseline.json"
    code, out, err = run(capsys, "audit", f"{target}:loss", "-e", "softmax_ce", "-d", "float16", "--family",
                         "confident", "--save-baseline", path)
    assert code == 0, err
    key = "softmax_ce/confident/guarded.py:loss/float16"  # the file relative to the baseline's folder
    entries = json.loads(path.read_text())["entries"]
    assert list(entries) == [key] and entries[key]["first_inaccurate"] is None
    assert baseline.split_key(key) == ("softmax_ce", "confident", "guarded.py:loss", "float16")
    allow = ("--allow-target", "guarded.py:*")  # a baseline runs user code only when allowed
    code, out, err = run(capsys, "check", "--baseline", path, *allow)
    assert code == 0, out + err  # audit entries only: the simulations are not asked for
    target.write_text(textwrap.dedent(NAIVE))
    code, out, err = run(capsys, "check", "--baseline", path, *allow)
    assert code == 1 and "first_inaccurate" in out
    code, out, err = run(capsys, "check", "--baseline", path, "--update", "-d", "float16", *allow)
    assert code == 0 and list(json.loads(path.read_text())["entries"]) == [key]  # audit entries only, recomputed
    assert run(capsys, "check", "--baseline", path, *allow)[0] == 0
    target.unlink()
    code, out, err = run(capsys, "check", "--baseline", path, *allow)
    assert code == 3 and "does not exist" in out


def test_audit_cases_are_the_defaults_and_the_named_corpus():
    names = default_audit_cases("softmax_ce").names
    for source in ("optax#896:[-inf,0],y=1", "scipy#18295:[0,-40],y=0", "jax#40409:zeros(2**16),y=0"):
        assert source in names
    assert "pytorch#102894:z=+inf,y=1" in default_audit_cases("binary_ce").names


def test_api_exports():
    for name in ("audit", "compare", "thresholds"):
        assert name in stabilitylab.__all__
        assert callable(getattr(stabilitylab, name))
    assert stabilitylab.compare("likelihood", ["float32"]).to_dict()["schema"] == "stabilitylab.compare/1"
    result = stabilitylab.thresholds("likelihood", "float32")
    assert result.rows[0].first_failure == 46 and "Thresholds" in result._repr_markdown_()
    from stabilitylab.analysis import thresholds as module  # still the module, for code that imports it
    assert hasattr(module, "family_thresholds")
    assert (REPO / "stabilitylab" / "auditing" / "adapters" / "scipy_.py").is_file()


# ---------------------------------------------------------------- issue #18: black-box windows
def _window_check(target: str, first: float):
    result = stabilitylab.audit(target, dtypes=["float32"], families=["confident"])
    (row,) = result.thresholds
    assert row.first_inaccurate == first and not row.exact_inaccurate, row
    assert row.verified_inaccurate == 0.0  # nothing from the start was verified: the bound says so
    assert row.window_inaccurate is not None and row.window_inaccurate < first  # every d in [window, first) ok
    doc = json.loads(result.to_json())["thresholds"][0]
    assert doc["verified_from"]["first_inaccurate"] == row.window_inaccurate
    w = next(w for w in result.witnesses if w.source == "confident" and w.dtype == "float32" and w.kind == "first")
    assert w.parameter == first


def test_scipy_float32_audit_scans_below_its_candidate_to_8_318987846374512_not_9_16():
    """Issue #18: the float32 audit's first witness sat at d = 9.1618 with verified_below 0.0,
    while scipy.log_softmax fails from 8.318987846374512 (sporadically: the bisection's candidate
    was 9.16, a billion float32 values from the start).  The search now scans a contiguous window
    just below its failure found, and reports it (verified_from)."""
    _window_check("scipy.log_softmax", 8.318987846374512)


@pytest.mark.slow  # a full audit with its threshold search: 4-8 s
@needs_jax
def test_jax_float32_audit_scans_below_its_candidate_to_8_318010330200195():
    _window_check("jax.log_softmax", 8.318010330200195)
