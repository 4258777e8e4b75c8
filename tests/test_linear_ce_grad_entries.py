"""Issue #20 Build 3 (audit of linear_ce targets): with --grad the audit also measures every entry of both
gradients the target returns, d sum(loss)/d weight and d sum(loss)/d hidden, on its small problems
(worst error bits, status counts, witness entry), for adapters and for a user ``file.py:fn`` of the
gradient protocol.  A planted bad d/d hidden is found while d/d weight stays ok; the witness is checked with
the plain code of tests/independent/linear_ce_check.py."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import ml_dtypes
import mpmath
import numpy as np
import pytest
from clihelp import run

from stabilitylab.auditing import core
from stabilitylab.experiments.linear_ce import default_cases
from stabilitylab.numerics.formats import FORMATS

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("linear_ce_check", ROOT / "tests" / "independent" / "linear_ce_check.py")
ic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ic)

TARGET = textwrap.dedent('''
    import numpy as np


    def _grads(hidden, weight, labels):
        h, w = np.asarray(hidden, dtype=np.float64), np.asarray(weight, dtype=np.float64)
        x = h @ w.T
        p = np.exp(x - x.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = p.copy()
        g[np.arange(len(labels)), labels] -= 1.0
        return g @ w, g.T @ h


    def bad_hidden(hidden, weight, labels):
        """d/d weight right; d/d hidden without the -1 of the true class (g = p: + W[y] to the right one)."""
        gh, gw = _grads(hidden, weight, labels)
        gh = gh + np.asarray(weight, dtype=np.float64)[np.asarray(labels)]
        return gh.astype(hidden.dtype), gw.astype(weight.dtype)
''')


@pytest.fixture(scope="module")
def target_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("target") / "lce_target.py"
    path.write_text(TARGET)
    return path


def _small_problems():
    """The default problems without the 1024-token and the 512-class ones: the confident rows and the offset."""
    cases = default_cases()
    keep = [i for i, name in enumerate(cases.names) if name.startswith(("confident", "offset"))]
    return cases.take(np.array(keep))


def _bf16(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def test_a_planted_bad_hidden_gradient_is_found_and_the_weight_gradient_is_ok(target_file):
    target = core.resolve(f"{target_file}:bad_hidden", "linear_ce", grad=True)
    entries = core.gradient_entries(target, [FORMATS["bfloat16"]], _small_problems(), None)
    by = {g.gradient: g for g in entries}
    assert set(by) == {"weight", "hidden"} and all(g.dtype == "bfloat16" and g.problems == 4 for g in entries)
    weight, hidden = by["weight"], by["hidden"]
    assert weight.entries == 2 * 1 * 3 + 4 * 2 and hidden.entries == 3 * 1 + 1 * 2  # (V, D) and (N, D) per problem
    assert weight.counts == {"ok": weight.entries} and weight.worst_bits < 1
    assert hidden.counts.get("inaccurate", 0) >= 1 and hidden.witness["status"] == "inaccurate"
    # the witness entry, again with the plain code: the exact d sum(loss)/d hidden and the target's own output
    w = hidden.witness
    cases = _small_problems()
    c = list(cases.names).index(w["case"])
    h, wt, y = _bf16(cases.hidden[c]), _bf16(cases.weight[c]), cases.labels[c]
    n, j = w["entry"]
    _, _, dh, _ = ic.exact(h.tolist(), wt.tolist(), y.tolist())
    with mpmath.workdps(30):
        assert float(mpmath.mpf(w["exact"])) == pytest.approx(float(dh[n][j] * len(h)), rel=1e-9)
    import importlib.util as iu

    spec = iu.spec_from_file_location("planted", target_file)
    planted = iu.module_from_spec(spec)
    spec.loader.exec_module(planted)
    got = planted.bad_hidden(h.astype(ml_dtypes.bfloat16), wt.astype(ml_dtypes.bfloat16), y)[0]
    assert w["value"] == float(got[n, j])


def test_torch_adapter_entries_on_the_small_problems():
    """The torch adapter through the same check (small problems, bfloat16): every entry counted once, and the
    witness value is torch's own at that entry on the bfloat16 inputs."""
    torch = pytest.importorskip("torch")
    from stabilitylab.auditing import adapters

    if not adapters.ADAPTERS["torch.linear_cross_entropy"].installed:
        pytest.skip("torch.linear_cross_entropy needs torch >= 2.13")
    target = core.resolve("torch.linear_cross_entropy", grad=True)
    cases = _small_problems()
    entries = {g.gradient: g for g in core.gradient_entries(target, [FORMATS["bfloat16"]], cases, None)}
    assert entries["weight"].entries == 14 and entries["hidden"].entries == 5
    for g in entries.values():
        assert sum(g.counts.values()) == g.entries
        w = g.witness
        c = list(cases.names).index(w["case"])
        h = torch.tensor(_bf16(cases.hidden[c]), dtype=torch.bfloat16, requires_grad=True)
        wt = torch.tensor(_bf16(cases.weight[c]), dtype=torch.bfloat16, requires_grad=True)
        y = torch.tensor(cases.labels[c])
        torch.nn.functional.linear_cross_entropy(h, wt, y, reduction="none").sum().backward()
        grad = wt.grad if g.gradient == "weight" else h.grad
        assert float(grad[w["entry"][0], w["entry"][1]]) == w["value"]


def test_a_user_function_s_gradient_needs_the_linear_ce_protocol(target_file, capsys):
    code, out, err = run(capsys, "audit", f"{target_file}:bad_hidden", "-e", "softmax_ce", "--grad", "-d", "bf16")
    assert code == 2 and "linear_ce protocol" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow  # a whole linear_ce gradient audit (cases, realistic rows, every entry): ~15 s
def test_the_audit_json_and_text_carry_every_gradient_entry(target_file, capsys):
    code, out, err = run(capsys, "audit", f"{target_file}:bad_hidden", "-e", "linear_ce", "--grad", "-d", "bf16",
                         "--no-thresholds", "--format", "json")
    assert code in (0, 1), err
    doc = json.loads(out)
    rows = {r["gradient"]: r for r in doc["gradient_entries"]}
    assert rows["weight"]["statuses"] == {"ok": rows["weight"]["entries"]}
    assert rows["hidden"]["statuses"]["inaccurate"] > 0 and rows["hidden"]["witness"]["status"] == "inaccurate"
    assert sum(rows["hidden"]["statuses"].values()) == rows["hidden"]["entries"]
    code, out, err = run(capsys, "audit", f"{target_file}:bad_hidden", "-e", "linear_ce", "--grad", "-d", "bf16",
                         "--no-thresholds", "--format", "markdown")
    assert "## Every gradient entry" in out and "d sum(loss)/d hidden" in out


@pytest.mark.slow  # a torch linear_ce gradient audit: ~15 s
def test_torch_adapter_every_entry_and_its_witness():
    torch = pytest.importorskip("torch")
    from stabilitylab.auditing import adapters

    if not adapters.ADAPTERS["torch.linear_cross_entropy"].installed:
        pytest.skip("torch.linear_cross_entropy needs torch >= 2.13")
    import stabilitylab

    result = stabilitylab.audit("torch.linear_cross_entropy", dtypes=["bfloat16"], grad=True, search=False)
    doc = result.to_dict()
    rows = {r["gradient"]: r for r in doc["gradient_entries"]}
    cases = core.default_audit_cases("linear_ce_grad")
    small = [i for i in range(len(cases)) if cases.hidden[i].size + cases.weight[i].size <= core.GRADIENT_ENTRIES]
    distinct = {(cases.hidden[i].tobytes(), cases.weight[i].tobytes(), cases.labels[i].tobytes()) for i in small}
    assert rows["weight"]["problems"] == rows["hidden"]["problems"] == len(distinct)
    for r in rows.values():
        assert sum(r["statuses"].values()) == r["entries"]
    guide = (ROOT / "docs" / "guides" / "audit.md").read_text(encoding="utf-8")
    counts = f"{rows['weight']['statuses'].get('inaccurate', 0)} and {rows['hidden']['statuses'].get('inaccurate', 0)}"
    assert f"{rows['weight']['entries']:,} weight entries and {rows['hidden']['entries']:,} hidden" in guide
    assert " ".join(guide.split()).count(f"{counts} inaccurate in bfloat16") == 1  # (torch 2.13.0+cpu here)
    # the witness entry of d/d hidden: torch's own value at that entry, called directly on the bf16 inputs
    w = rows["hidden"]["witness"]
    c = list(cases.names).index(w["case"])
    h = torch.tensor(_bf16(cases.hidden[c]), dtype=torch.bfloat16, requires_grad=True)
    wt = torch.tensor(_bf16(cases.weight[c]), dtype=torch.bfloat16, requires_grad=True)
    loss = torch.nn.functional.linear_cross_entropy(h, wt, torch.tensor(cases.labels[c]), reduction="none")
    loss.sum().backward()
    assert float(h.grad[w["entry"][0], w["entry"][1]]) == w["value"]
