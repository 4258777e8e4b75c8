"""Issue #18, guards include wide-row witnesses: a float16 loss whose softmax denominator is a sequential
float16 sum (the small exp terms of a 32k-class row are lost once the running sum is large) passed every
guard ``audit --emit-pytest`` wrote for scipy.log_softmax, since every default case was narrow (or, 2**16
zeros, failed for scipy too) and every simulated formula sums pairwise. The audit now runs rows of 32768
classes and keeps a witness of each; the emitted module stays small (the rows are written as runs)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import stabilitylab
from stabilitylab.auditing.core import WIDE_WITNESS, default_audit_cases
from stabilitylab.experiments.softmax_ce import WIDE, wide_cases

pytest.importorskip("scipy", reason="the scipy audit needs scipy (the test extra)")

SEQUENTIAL = '''\
import numpy as np


def loss(logits, labels):
    """-log_softmax(x)[y] with the denominator summed left to right in float16."""
    x = np.asarray(logits).astype(np.float16)
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = np.zeros(len(x), dtype=np.float16)
    for j in range(x.shape[1]):
        total = (total + e[:, j]).astype(np.float16)
    return (np.log(total) - z[np.arange(len(x)), labels]).astype(np.float16)
'''


def pytest_run(path, cwd):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:stabilitylab",
                           str(path)], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_wide_witnesses_only_where_a_sequential_sum_fails():
    """float32 and float64 keep none (a sequential float32 sum of these rows is within the tolerance, and a
    witness costs its whole row in --format json)."""
    result = stabilitylab.audit("scipy.log_softmax", "softmax_ce", ["float16", "float32"], search=False)
    assert {w.dtype for w in result.witnesses if w.kind.startswith("wide:")} == {"float16"}


def test_wide_rows_are_default_audit_cases():
    cases = wide_cases()
    assert cases.logits.shape == (2, WIDE) and WIDE >= WIDE_WITNESS
    for row, label in zip(cases.logits, cases.labels):  # the true class is the max or just below it
        assert row.max() - row[label] <= 0.5
    names = default_audit_cases("softmax_ce").names
    assert all(name in names for name in cases.names)
    grad = [name for name in default_audit_cases("softmax_ce_grad").names if name.startswith("wide:")]
    assert {name.rpartition(",grad[")[0] for name in grad} == set(cases.names)
    assert len(grad) <= 3 * len(cases.names)  # label, largest and smallest logit: not one row per class


@pytest.mark.slow  # emitted guards of 32k-class rows run twice: ~5 s
def test_sequential_float16_sum_passed_every_emitted_guard(tmp_path):
    result = stabilitylab.audit("scipy.log_softmax", "softmax_ce", ["float16"])
    wide = [w for w in result.witnesses if w.kind.startswith("wide:")]
    assert {w.case for w in wide} == set(wide_cases().names)  # (scipy fails the 2**16 zeros: inf, a witness)
    assert all(w.status == "ok" for w in wide)  # scipy is right there
    guards = tmp_path / "test_guards.py"
    count = result.to_pytest(guards)
    text = guards.read_text()
    assert len(text) < 50_000, len(text)  # wide rows written as runs, not 32768 hex floats
    assert count <= 20
    first = pytest_run(guards, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{count} passed" in first.stdout

    (tmp_path / "sequential.py").write_text(SEQUENTIAL)
    swapped = tmp_path / "test_sequential.py"
    swapped.write_text(text + textwrap.dedent('''

        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
        from sequential import loss as TARGET  # noqa: E402
    ''').replace("\nsys.path", "\nimport pathlib  # noqa: E402\nimport sys  # noqa: E402\nsys.path"))
    second = pytest_run(swapped, tmp_path)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "failed" in second.stdout and "wide" in second.stdout
    assert "now inaccurate, recorded ok" in second.stdout


def test_sequential_float16_sum_is_wrong_on_the_wide_rows():
    """The premise: on the wide rows a sequential float16 denominator is far off, a pairwise one is not."""
    namespace: dict = {}
    exec(SEQUENTIAL, namespace)
    cases = wide_cases()
    exact = np.array([8.397402667911983, 9.252785488713325])
    got = namespace["loss"](cases.logits.astype(np.float16), cases.labels).astype(np.float64)
    assert (np.abs(got - exact) / exact > 0.15).all()
    from scipy.special import log_softmax

    scipy = -log_softmax(cases.logits.astype(np.float16), axis=1)[np.arange(2), cases.labels].astype(np.float64)
    assert (np.abs(scipy - exact) / exact < 2.0**-5.5).all()


SEQUENTIAL_GRAD = '''\
import ml_dtypes
import numpy as np
import torch


def grad(logits, labels):
    """torch's float32 softmax - onehot on 16-bit logits, except that the denominator is summed left to right
    and rounded to the input format after every addition (the only change: a sequential low-precision sum)."""
    x = np.asarray(logits)
    bf16 = x.dtype == ml_dtypes.bfloat16
    t = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16) if bf16 else torch.from_numpy(x)
    xf = t.float()
    m = xf.max(dim=-1, keepdim=True).values
    e = torch.exp(xf - m)
    total = torch.zeros(len(x))
    for j in range(x.shape[1]):
        total = (total + e[:, j]).to(t.dtype).float()
    g = torch.exp(xf - (m[:, 0] + torch.log(total))[:, None])
    g[torch.arange(len(x)), torch.as_tensor(np.asarray(labels))] -= 1
    return g.numpy().astype(x.dtype)
'''


@pytest.mark.slow  # a gradient audit with 32k-class rows and its emitted guards run twice: ~12 s
def test_sequential_sum_in_the_gradient_fails_the_emitted_guards(tmp_path):
    """Issue #20: the gradient guards of torch.cross_entropy had no wide row (the default cases of a gradient
    audit left the 32k-class rows out), so a softmax gradient whose denominator is a sequential bfloat16 /
    float16 sum passed all of them; now the wide rows' components are witnesses and the swap fails."""
    pytest.importorskip("torch", reason="the torch adapter needs torch (the torch extra)")
    result = stabilitylab.audit("torch.cross_entropy", "softmax_ce", ["bfloat16", "float16"], grad=True, search=False)
    wide = [w for w in result.witnesses if w.kind.startswith("wide:")]
    assert {w.dtype for w in wide} == {"bfloat16", "float16"} and all(w.status == "ok" for w in wide)
    guards = tmp_path / "test_grad_guards.py"
    count = result.to_pytest(guards)
    text = guards.read_text()
    first = pytest_run(guards, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{count} passed" in first.stdout

    (tmp_path / "sequential_grad.py").write_text(SEQUENTIAL_GRAD)
    swapped = tmp_path / "test_sequential_grad.py"
    swapped.write_text(text + textwrap.dedent('''

        import pathlib  # noqa: E402
        import sys  # noqa: E402
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
        from sequential_grad import grad as TARGET  # noqa: E402
    '''))
    second = pytest_run(swapped, tmp_path)
    assert second.returncode == 1, second.stdout + second.stderr
    failed = [line for line in second.stdout.splitlines() if line.startswith("FAILED")]
    assert failed and all("-wide-" in line for line in failed), second.stdout  # only the wide guards see it
    assert any("-bfloat16-" in line for line in failed) and any("-float16-" in line for line in failed)
