"""Issue #20 item 3: audit targets for linear cross-entropy kernels, ``f(hidden (N, D), weight (V, D),
labels (N,)) -> loss (N,)`` and, with --grad, the gradients of sum(loss) with respect to hidden and weight.

Each runnable adapter is checked against a plain float64 numpy reference written here (it shares nothing with
stabilitylab): ``loss_i = logsumexp(h_i . W^T) - h_i . W_{y_i}``, ``dL/dh = (P - Y) W``, ``dL/dW = (P - Y)^T h``
with ``P = softmax(h W^T)`` row by row and ``Y`` the one-hot labels."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitylab.auditing import adapters

torch = pytest.importorskip("torch", reason="the linear CE adapters need torch (the torch extra)")
ml_dtypes = pytest.importorskip("ml_dtypes")

RUNNABLE = [n for n, a in adapters.ADAPTERS.items() if a.experiment == "linear_ce" and a.installed]
MISSING = [n for n, a in adapters.ADAPTERS.items() if a.experiment == "linear_ce" and not a.installed]
DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32, "float64": np.float64}
# float64 of the format's inputs against the format's output: relative (loss, gradients in max-norm) bounds met
# by a kernel that forms the logits and the loss with float32 (or float64) accumulation and rounds once
LOOSE = {"bfloat16": 2.0**-6, "float16": 2.0**-8, "float32": 2.0**-18, "float64": 2.0**-45}


def reference(h, w, y):
    """float64 loss (N,), dL/dh (N, D), dL/dW (V, D) of sum(loss), plain numpy."""
    h, w = np.asarray(h, dtype=np.float64), np.asarray(w, dtype=np.float64)
    z = h @ w.T
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    loss = (m[:, 0] + np.log(s[:, 0])) - z[np.arange(len(y)), y]
    p = e / s
    p[np.arange(len(y)), y] -= 1.0
    return loss, p @ w, p.T @ h


def inputs(dtype, n=6, d=16, v=300, seed=20):
    rng = np.random.default_rng(seed)
    h = rng.normal(0.0, 1.0, size=(n, d)).astype(dtype)
    w = rng.normal(0.0, 0.5, size=(v, d)).astype(dtype)
    y = rng.integers(0, v, size=n).astype(np.int64)
    return h, w, y


def relative(got, want):
    got = np.asarray(got, dtype=np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_registered_with_their_formats():
    table = {a.name: a for a in adapters.ADAPTERS.values() if a.experiment == "linear_ce"}
    assert set(table) == {"torch.linear_cross_entropy", "torch.linear_cross_entropy_chunked",
                          "cce.linear_cross_entropy"}
    assert all(a.grad is not None for a in table.values())
    assert {"bfloat16", "float16", "float32"} <= set(table["torch.linear_cross_entropy"].formats)
    assert "triton" in table["cce.linear_cross_entropy"].requires  # imported by the package even on the CPU


@pytest.mark.parametrize("name", MISSING)
def test_missing_library_is_one_clear_line(name):
    with pytest.raises(adapters.MissingLibrary, match=r"not installed: pip install"):
        adapters.ADAPTERS[name].module_object()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", RUNNABLE)
def test_values_and_gradients_against_float64(name, dtype):
    adapter = adapters.ADAPTERS[name]
    if dtype not in adapter.formats:
        pytest.skip(f"{name} does not support {dtype}")
    h, w, y = inputs(DTYPES[dtype])
    loss, gh, gw = reference(h, w, y)
    got = adapter.callable()(h, w, y)
    assert got.shape == (len(y),) and got.dtype == np.dtype(DTYPES[dtype])
    assert relative(got, loss) <= LOOSE[dtype], relative(got, loss)
    got_h, got_w = adapter.callable(grad=True)(h, w, y)
    assert got_h.shape == h.shape and got_w.shape == w.shape
    assert got_h.dtype == got_w.dtype == np.dtype(DTYPES[dtype])
    assert relative(got_h, gh) <= LOOSE[dtype], relative(got_h, gh)
    assert relative(got_w, gw) <= LOOSE[dtype], relative(got_w, gw)


def test_the_check_can_fail():
    """The reference tells a wrong kernel: a loss without the true-class logit, a gradient without the -1."""
    h, w, y = inputs(np.float32)
    loss, gh, _ = reference(h, w, y)
    assert relative(loss + 1.0, loss) > LOOSE["bfloat16"]
    z = h.astype(np.float64) @ w.T.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert relative(p @ w, gh) > LOOSE["bfloat16"]


# ------------------------------------------------------------------ the audit
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import stabilitylab  # noqa: E402
from stabilitylab.auditing.core import wide_linear_cases  # noqa: E402
from stabilitylab.experiments.softmax_ce import WIDE  # noqa: E402

PLANTED = '''\
import ml_dtypes
import numpy as np
import torch


def _t(x):
    x = np.asarray(x)
    if x.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(x.copy())


def _back(t, like):
    return t.numpy().astype(np.asarray(like).dtype)


def _probabilities(h, w, y, sequential):
    """float32 softmax of the format's logits h @ w.T minus the one-hot labels; with ``sequential`` the
    denominator is summed left to right and rounded to the inputs' format after every addition."""
    z = (h @ w.T).float()
    m = z.max(dim=-1, keepdim=True).values
    e = torch.exp(z - m)
    if sequential:
        s = torch.zeros(z.shape[0])
        for j in range(z.shape[1]):
            s = (s + e[:, j]).to(h.dtype).float()
    else:
        s = e.sum(dim=-1)
    p = e / s[:, None]
    p[torch.arange(len(y)), y] -= 1
    return p


def sequential_grad(hidden, weight, labels):
    """The only change from a correct kernel: a sequential low-precision softmax denominator."""
    h, w, y = _t(hidden), _t(weight), torch.as_tensor(np.asarray(labels))
    p = _probabilities(h, w, y, True)
    return _back(p @ w.float(), hidden), _back(p.T @ h.float(), weight)


def storage_buffer_grad(hidden, weight, labels):
    """The only change: dL/dW accumulated token by token in a buffer of the inputs' format (Liger-Kernel #512)."""
    h, w, y = _t(hidden), _t(weight), torch.as_tensor(np.asarray(labels))
    p = _probabilities(h, w, y, False)
    gw = torch.zeros(w.shape, dtype=w.dtype)
    for n in range(h.shape[0]):
        gw = (gw.float() + p[n:n + 1].T @ h[n:n + 1].float()).to(w.dtype)
    return _back(p @ w.float(), hidden), _back(gw.float(), weight)


def sequential_loss(hidden, weight, labels):
    h, w, y = _t(hidden), _t(weight), torch.as_tensor(np.asarray(labels))
    z = (h @ w.T).float()
    m = z.max(dim=-1).values
    s = torch.zeros(z.shape[0])
    for j in range(z.shape[1]):
        s = (s + torch.exp(z[:, j] - m)).to(h.dtype).float()
    return _back(m + torch.log(s) - z[torch.arange(len(y)), y], hidden[:, 0])
'''


def pytest_run(path, cwd):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:stabilitylab",
                           str(path)], capture_output=True, text=True, cwd=cwd, timeout=600)


def swapped(text: str, function: str) -> str:
    """The emitted module with its TARGET replaced by ``function`` of planted.py beside it."""
    return text + (f"\n\nimport pathlib  # noqa: E402\nimport sys  # noqa: E402\n"
                   f"sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))\n"
                   f"from planted import {function} as TARGET  # noqa: E402, F811\n")


def failed_ids(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("FAILED")]


needs_torch_lce = pytest.mark.skipif("torch.linear_cross_entropy" not in RUNNABLE,
                                     reason="torch.linear_cross_entropy needs torch >= 2.13 (F.linear_cross_entropy)")


@pytest.fixture(scope="module")
def grad_audit():
    return stabilitylab.audit("torch.linear_cross_entropy", dtypes=["bfloat16", "float16"], grad=True, search=False)


def test_wide_problems_are_the_wide_rows():
    cases = wide_linear_cases()
    assert [w.shape for w in cases.weight] == [(WIDE, 1)] * 2 and all(h.tolist() == [[1.0]] for h in cases.hidden)
    assert (cases.weight_entry[:, 0] == WIDE - 1).all()  # a non-label class: p_v divides by the whole sum
    assert all(cases.weight_entry[i, 0] != cases.labels[i][0] for i in range(2))


@needs_torch_lce
def test_grad_audit_has_gradient_and_wide_witnesses(grad_audit):
    assert grad_audit.to_dict()["experiment"] == "linear_ce_grad"
    kinds = {(w.dtype, w.kind) for w in grad_audit.witnesses}
    assert {("bfloat16", k) for k in ("wide:11", "wide:12")} <= kinds  # the two 32k-class problems
    assert ("bfloat16", "guard:grad_weight_chunks_storage") in kinds  # where a bf16 chunk buffer fails
    # torch gets p_y - 1 wrong in bf16 at p_y = 0.99 (Liger-Kernel #1329's cancellation): a failing witness
    first = [w for w in grad_audit.witnesses if w.dtype == "bfloat16" and w.kind == "first"]
    assert first and first[0].status == "inaccurate" and first[0].case.startswith("confident:p_y=0.99")
    # exact dL/dW[y, 0] = p_y - 1 = -e**-d / (1 + e**-d) at h = 1, logits [0, -d] (d as rounded to bfloat16)
    d = -first[0].inputs["weight"][1][0]
    assert first[0].inputs["hidden"] == [[1.0]] and 4.5 < d < 4.7
    assert first[0].reference == pytest.approx(-np.exp(-d) / (1 + np.exp(-d)), rel=1e-12)
    labels = {c.label for r in grad_audit.resembles for c in r.candidates}
    assert {"grad_weight", "grad_weight_chunks_storage", "grad_weight_chunks_fp32",
            "grad_weight_chunks_storage in bfloat16@float32"} <= labels


@pytest.mark.slow  # a torch linear_ce audit with thresholds and emitted guards: 6-12 s
@needs_torch_lce
def test_emitted_gradient_guards_fail_planted_regressions(grad_audit, tmp_path):
    guards = tmp_path / "test_lce_guards.py"
    count = grad_audit.to_pytest(guards)
    text = guards.read_text()
    first = pytest_run(guards, tmp_path)
    assert first.returncode == 0 and f"{count} passed" in first.stdout, first.stdout + first.stderr
    (tmp_path / "planted.py").write_text(PLANTED)
    for function, marker in (("sequential_grad", "-wide-"), ("storage_buffer_grad", "-guard-grad_weight_chunks")):
        path = tmp_path / f"test_{function}.py"
        path.write_text(swapped(text, function))
        run = pytest_run(path, tmp_path)
        assert run.returncode == 1, run.stdout + run.stderr
        failed = failed_ids(run.stdout)
        assert failed and all(marker in line for line in failed), (function, run.stdout)


@pytest.fixture(scope="module")
def loss_audit():
    return stabilitylab.audit("torch.linear_cross_entropy", dtypes=["bfloat16"], search=False)


def _failing(result) -> set[str]:
    return {r["case"] for r in result.to_dict()["results"] if r["status"] not in ("ok", "range")}


@needs_torch_lce
@pytest.mark.skipif("torch.linear_cross_entropy_chunked" not in RUNNABLE, reason="needs torch >= 2.13")
def test_reference_path_loses_confident_losses_the_chunked_path_keeps(loss_audit):
    """Measured on torch 2.13 CPU, bfloat16: the reference path (cross_entropy of the bf16 logits) rounds
    the softmax denominator to bfloat16 before its log (it resembles materialized_log_softmax in
    bfloat16+float32, bit for bit), so at p_y = 0.99 and 0.999 the loss is wrong; the chunked path computes
    in float32 (materialized_log_softmax in bfloat16@float32, within 1 ulp everywhere) and is right on every
    problem."""
    chunked = stabilitylab.audit("torch.linear_cross_entropy_chunked", dtypes=["bfloat16"], search=False)
    assert {c.split(" ")[0] for c in _failing(loss_audit)} == {"confident:p_y=0.99", "confident:p_y=0.999"}
    assert _failing(chunked) == set()
    (ref,), (chk,) = loss_audit.resembles, chunked.resembles
    assert ref.method == "materialized_log_softmax in bfloat16+float32"
    assert chk.method == "materialized_log_softmax in bfloat16@float32"
    assert ref.candidates[0].cases.identical_share == 1.0 and chk.candidates[0].cases.within_ulp_share == 1.0


@pytest.mark.slow  # a torch linear_ce audit with thresholds and emitted guards: 6-12 s
@needs_torch_lce
def test_emitted_loss_guards_fail_a_sequential_sum(loss_audit, tmp_path):
    result = loss_audit
    assert result.to_dict()["experiment"] == "linear_ce"
    assert {w.kind for w in result.witnesses} >= {"wide:11", "wide:12"}
    guards = tmp_path / "test_loss_guards.py"
    count = result.to_pytest(guards)
    first = pytest_run(guards, tmp_path)
    assert first.returncode == 0 and f"{count} passed" in first.stdout, first.stdout + first.stderr
    (tmp_path / "planted.py").write_text(PLANTED)
    path = tmp_path / "test_sequential_loss.py"
    path.write_text(swapped(guards.read_text(), "sequential_loss"))
    run = pytest_run(path, tmp_path)
    assert run.returncode == 1 and failed_ids(run.stdout), run.stdout + run.stderr
    assert all("-wide-" in line for line in failed_ids(run.stdout)), run.stdout


@pytest.mark.slow  # a torch linear_ce audit with thresholds and emitted guards: 6-12 s
@needs_torch_lce
def test_audit_json_fields(tmp_path):
    run = subprocess.run([sys.executable, "-m", "stabilitylab", "audit", "torch.linear_cross_entropy", "-d", "bf16",
                          "--grad", "--family", "hidden", "--format", "json"], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["target"] == "torch.linear_cross_entropy" and doc["experiment"] == "linear_ce_grad"
    assert doc["settings"]["gradient"] is True and doc["environment"]["target_device"] == "cpu"
    assert {r["method"] for r in doc["results"]} == {"torch.linear_cross_entropy"}
    assert all(r["dtype"] == "bfloat16" for r in doc["results"])
    by_case = {r["case"]: r for r in doc["results"]}
    assert by_case["confident:p_y=0.999 (logits [0,-ln(p/(1-p))],y=0)"]["status"] == "inaccurate"
    (threshold,) = doc["thresholds"]
    assert threshold["family"] == "hidden" and threshold["first_inaccurate"] is not None
    (resembles,) = doc["resembles"]
    assert resembles["points"] == len(doc["results"]) and resembles["candidates"]
    kinds = {w["kind"] for w in doc["witnesses"]}
    assert {"first", "wide:11", "wide:12"} <= kinds
    wide = next(w for w in doc["witnesses"] if w["kind"] == "wide:11")
    assert len(wide["inputs"]["weight"]) == WIDE and wide["status"] == "ok"


USER = '''\
import numpy as np


def loss(hidden, weight, labels):
    """float64 per-token cross-entropy of hidden @ weight.T, returned in the inputs' format."""
    z = np.asarray(hidden, dtype=np.float64) @ np.asarray(weight, dtype=np.float64).T
    m = z.max(axis=1)
    out = m + np.log(np.exp(z - m[:, None]).sum(axis=1)) - z[np.arange(len(labels)), labels]
    return out.astype(np.asarray(hidden).dtype)
'''


def test_user_function_with_the_linear_ce_protocol(tmp_path):
    (tmp_path / "mine.py").write_text(USER)
    result = stabilitylab.audit(f"{tmp_path / 'mine.py'}:loss", "linear_ce", ["float32"], search=False)
    doc = result.to_dict()
    assert doc["experiment"] == "linear_ce"
    (summary,) = doc["summary"]
    assert summary["cases"] == len(doc["results"]) > 0
    assert summary["inaccurate"] == 0 and summary["nan"] == 0 and summary["error"] == 0


def test_user_function_of_two_arguments_is_refused(tmp_path):
    (tmp_path / "two.py").write_text("def loss(logits, labels):\n    return logits[:, 0]\n")
    with pytest.raises(stabilitylab.AuditError, match=r"cannot be called as f\(hidden, weight, labels\)"):
        stabilitylab.audit(f"{tmp_path / 'two.py'}:loss", "linear_ce", ["float32"], search=False)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "stabilitylab", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@needs_torch_lce
def test_logits_are_refused_in_one_line(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3)))
    run = _cli("audit", "torch.linear_cross_entropy", "--logits", "x.npy", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "linear_ce target" in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.slow  # a torch linear_ce audit with thresholds and emitted guards: 6-12 s
@needs_torch_lce
def test_baseline_of_a_linear_ce_gradient_audit_is_recomputed(tmp_path):
    saved = _cli("audit", "torch.linear_cross_entropy", "-d", "bf16", "--grad", "--family", "hidden",
                 "--save-baseline", "base.json", cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    keys = list(json.loads((tmp_path / "base.json").read_text())["entries"])
    assert keys == ["linear_ce_grad/hidden/torch.linear_cross_entropy/bfloat16"]
    check = _cli("check", "--baseline", "base.json", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "1 entries compared: 0 regressed" in check.stdout
