"""Adversarial review of ``stabilitylab trace`` (issue #21): each test is named after what broke."""

import json
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from stabilitylab.cli import main  # noqa: E402

PLANTED = str(Path(__file__).parent / "trace_models" / "planted.py")


@pytest.mark.parametrize("option", ["--json", "--markdown", "--figure"])
def test_an_output_never_replaces_a_file_stabilitylab_did_not_write(tmp_path, capsys, option):
    """--json / --markdown / --figure replaced any existing file (the outputs were not in io.plan's list)."""
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    assert main(["trace", f"{PLANTED}:healthy", option, str(mine)]) == 2
    err = capsys.readouterr().err
    assert "was not written by stabilitylab" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert mine.read_text() == "my notes\n"


def test_an_output_is_never_the_target_or_the_inputs(tmp_path, capsys):
    """``--json model.py`` overwrote the model's own source file, --force or not."""
    model = tmp_path / "model.py"
    source = Path(PLANTED).read_text()
    model.write_text(source)
    assert main(["trace", f"{model}:healthy", "--json", str(model), "--force"]) == 2
    assert "is also an input (TARGET" in capsys.readouterr().err
    assert model.read_text() == source
    batch = tmp_path / "batch.pt"
    torch.save(torch.ones(2, 3), batch)
    assert main(["trace", "--model", str(tmp_path / "m.pt2"), "--inputs", str(batch), "--markdown", str(batch),
                 "--force"]) == 2
    assert "is also an input (--inputs" in capsys.readouterr().err


def test_outputs_written_by_trace_are_replaced_by_the_next_run(tmp_path, capsys):
    """A second run replaces its own JSON, markdown, PNG (marked with a constant Software chunk) and replay
    test; a replay folder whose test is the user's is refused, and so are inputs without a test beside them."""
    out = {"--json": tmp_path / "t.json", "--markdown": tmp_path / "t.md", "--figure": tmp_path / "t.png"}
    args = ["trace", f"{PLANTED}:feed_forward", "-d", "fp16", "--emit-pytest", str(tmp_path / "replay")]
    for option, path in out.items():
        args += [option, str(path)]
    assert main(args) == 0
    first = out["--figure"].read_bytes()
    assert main(args) == 0
    assert out["--figure"].read_bytes() == first  # the marker is constant: the same bytes
    assert json.loads(out["--json"].read_text())["schema"] == "stabilitylab.trace/1"
    test = tmp_path / "replay" / "test_trace_replay.py"
    test.write_text("def test_mine():\n    pass\n")
    assert main(args) == 2
    assert "test_trace_replay.py exists and was not written by stabilitylab" in capsys.readouterr().err
    assert test.read_text() == "def test_mine():\n    pass\n"
    test.unlink()
    assert main(args) == 2
    assert "trace_replay_inputs.pt exists and no test_trace_replay.py" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_a_pickle_with_a_payload_is_refused_without_running_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": _Payload()}))
    torch.save(torch.ones(2, 3), tmp_path / "batch.pt")
    assert main(["trace", "--model", str(tmp_path / "batch.pt"), "--inputs", str(evil)]) == 2
    assert main(["trace", "--model", str(evil), "--inputs", str(tmp_path / "batch.pt")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2
    assert not (tmp_path / "PWNED").exists()


class _Sqrt(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.sqrt(self.lin(x)).sum()


def test_a_model_already_nan_in_float64_is_said_and_no_op_is_blamed():
    """sqrt of a negative linear output is NaN in float64 too: the trace said nothing at all (every status ok, no
    note), now one note names the op and counts its NaN elements, and no finding blames bfloat16."""
    import stabilitylab

    torch.manual_seed(0)
    model, x = _Sqrt(), torch.randn(4, 8)
    result = stabilitylab.trace((model, x), dtype="bf16")
    assert result.findings == []
    # plain check: the float64 program from the bfloat16 leaves (the twin's start)
    w = model.lin.weight.detach().to(torch.bfloat16).double()
    b = model.lin.bias.detach().to(torch.bfloat16).double()
    negative = int(((x.to(torch.bfloat16).double() @ w.T + b) < 0).sum())
    assert negative > 0
    notes = [n for n in result.notes if "float64 too" in n]
    assert notes == [f"bfloat16: the program gives NaN in float64 too, first in aten.sqrt.default (forward, _Sqrt at "
                     f"test_trace_review.py:{_Sqrt.forward.__code__.co_firstlineno + 1}): {negative} element(s) from "
                     "finite inputs; not the format's fault, no op is blamed for it"]
    assert notes[0] in result.to_dict()["notes"]


class _LogSumExpOfLogSoftmax(torch.nn.Module):
    def forward(self, a):
        return torch.logsumexp(torch.log_softmax(a, -1) + 0.003, -1)  # log(sum(p) * e**0.003) = 0.003


def test_a_zero_from_cancellation_is_inaccurate_not_underflow():
    """logsumexp of shifted log-probabilities is log(1 + d) with 1 + d rounded to 1 in bfloat16: a 0 where float64
    on the same inputs gives ~1e-3, far above the smallest normal: cancellation (inaccurate, compute in float32),
    not an underflow (the advice was loss scaling)."""
    import stabilitylab

    torch.manual_seed(0)
    a = torch.randn(8, 64).to(torch.bfloat16)
    run = stabilitylab.trace((_LogSumExpOfLogSoftmax(), a), dtype="bf16").runs[0]
    lse = next(r for r in run.records if r.op == "aten.logsumexp.default")
    # plain check: float64 logsumexp of the bfloat16 log-probabilities the op was given
    logp = torch.log_softmax(a, -1) + 0.003
    want = torch.logsumexp(logp.double(), -1)
    got = torch.logsumexp(logp, -1).double()
    zeros = int(((got == 0) & (want != 0)).sum())
    assert zeros > 0 and float(want[(got == 0) & (want != 0)].abs().min()) > 1e-5
    assert lse.cause == "inaccurate" and lse.kind == "local"
    assert lse.counts.get("underflow", 0) == 0
    finding = next(f for f in run.findings if f.op == "aten.logsumexp.default")
    assert finding.entry.key == "inaccurate"


def _exported(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(4, 8)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "prog.pt2")
    torch.save(x, tmp_path / "x.pt")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    return tmp_path / "prog.pt2", tmp_path / "x.pt", tmp_path / "weights.pt"


def test_a_model_file_that_is_not_an_exported_program_is_one_line(tmp_path, capfd):
    """torch.export.load logged a dozen warning lines before the error line (and the error said "check the
    warnings above")."""
    prog, x, weights = _exported(tmp_path)
    assert main(["trace", "--model", str(weights), "--inputs", str(x)]) == 2
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "cannot load" in err and "warnings above" not in err


def test_an_exported_model_is_copied_not_cast_in_place(tmp_path):
    """Copying an exported module warns (a deprecated pytree API); with warnings as errors the copy failed and
    the model was cast in place, so the next format's run started from bfloat16-rounded weights."""
    from stabilitylab.tracing import target as targets

    prog, x, _ = _exported(tmp_path)
    t = targets.from_files(str(prog), str(x))
    before = [p.detach().clone() for p in t.model.parameters()]
    model, _ = targets.prepare(t, torch.bfloat16, None)
    assert model is not t.model
    assert all(p.dtype == torch.float32 and torch.equal(p, b) for p, b in zip(t.model.parameters(), before))


class _NaiveSoftmax(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        e = torch.exp(self.lin(x) * 30)
        return (e / e.sum(-1, keepdim=True)).sum()


def test_the_json_numbers_match_a_plain_float64_check():
    """Recompute two ops' numbers of the JSON with plain float64 arithmetic (not the code under test): the exp
    overflow count (float64 exp of the bfloat16 inputs at or past bfloat16's max + half an ulp) and the mul's
    normwise error bits log2(||v - r||_2 / ||r||_2 / 2**-7 + 1)."""
    import math

    import stabilitylab

    torch.manual_seed(0)
    model, x = _NaiveSoftmax(), torch.randn(4, 8) * 10
    doc = json.loads(stabilitylab.trace((model, x), dtype="bf16").to_json())
    run = doc["runs"][0]
    exp = next(f for f in run["findings"] if f["op"] == "aten.exp.default")
    cells = {c["op"]: c for c in doc["modules"]}
    # the bfloat16 program, step by step, with float64 references of each op on its own inputs
    low = model.to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    with torch.no_grad():
        h = low.lin(xb)
        y = h * 30
        r_mul = h.double() * 30
        v_mul = y.double()
    big = 2.0**127 * (2 - 2.0**-7)  # bfloat16's max
    threshold = big + 2.0**(127 - 7) / 2  # values from here on round to inf
    with torch.no_grad():
        overflowed = int((torch.exp(y.double()) >= threshold).sum())
    assert exp["cause"] == "overflow" and exp["count"] == overflowed > 0
    e = float(torch.linalg.vector_norm(v_mul - r_mul) / torch.linalg.vector_norm(r_mul))
    assert math.isclose(cells["aten.mul.Tensor"]["worst_error_bits"], math.log2(e / 2.0**-7 + 1), rel_tol=1e-12)


class _Log1pNeg(torch.nn.Module):
    def forward(self, p):
        return torch.log1p(-p)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "bf16"])
def test_a_pole_float64_reaches_too_is_not_blamed_on_a_format_without_inf(fmt):
    """log1p(-1) is -inf in float64: bfloat16 and e5m2 give -inf (ok, no finding); float8_e4m3fn, which has no
    inf, gives NaN and was blamed (overflow, local, 'log of a rounded probability') for the program's own pole."""
    import stabilitylab

    result = stabilitylab.trace((_Log1pNeg(), torch.tensor([1.0, 0.5])), dtype=fmt)
    assert result.findings == []
    assert any("float64 too, first in aten.log1p.default" in n for n in result.notes)


class _SumOfMaskedSoftmax(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(16, 16)

    def forward(self, x):
        a = self.q(x) @ x.transpose(-1, -2)
        a = a.masked_fill(torch.triu(torch.ones(8, 8, dtype=torch.bool), 1), float("-inf"))
        return torch.softmax(a, -1).sum()


@pytest.mark.parametrize("fmt", ["bf16@fp32", "mxfp8", "bf16"])
def test_the_gradient_of_a_sum_of_softmax_is_not_inaccurate(fmt):
    """d sum(softmax(a)) / da is exactly 0: its float64 twin is noise (~1e-17) and its local reference noise of
    the float32 inputs; the policy and emulated runs blamed _softmax_backward_data (inaccurate, local) for not
    reproducing that noise."""
    import stabilitylab

    torch.manual_seed(0)
    result = stabilitylab.trace((_SumOfMaskedSoftmax(), torch.randn(8, 16)), dtype=fmt)
    assert result.findings == []
    back = [r for r in result.runs[0].records if r.op == "aten._softmax_backward_data.default"]
    assert back and all(r.cause is None for r in back)


EXITS = '''import sys

import torch


def build():
    sys.exit(0)


class Leaves(torch.nn.Module):
    def forward(self, x):
        sys.exit("bye")


def step():
    return Leaves(), torch.ones(2)
'''


@pytest.mark.parametrize("builder, extra, said", [("build", [], "raised SystemExit"),
                                                  ("step", [], "failed in bfloat16: SystemExit: bye"),
                                                  ("step", ["--headroom"], "float32 forward: SystemExit: bye")])
def test_a_sys_exit_in_the_users_code_is_one_line_and_exit_2(tmp_path, capsys, builder, extra, said):
    """sys.exit() in build() or in forward() ended stabilitylab with the user's status (0, or 1 with 'bye')."""
    model = tmp_path / "exits.py"
    model.write_text(EXITS)
    assert main(["trace", f"{model}:{builder}", *extra]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1


class _CastWithMemoryFormat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        y = (self.lin(x) * 1e5).float()
        return y.to(torch.float16, memory_format=torch.contiguous_format).sum()


def test_a_replay_of_an_op_with_a_memory_format_is_written(tmp_path):
    """The first failing op was _to_copy(dtype=float16, memory_format=...): torch.save could not pickle the
    memory format and --emit-pytest ended in an internal error."""
    import stabilitylab
    from stabilitylab.tracing.emit import INPUTS_NAME, emit_pytest

    torch.manual_seed(0)
    result = stabilitylab.trace((_CastWithMemoryFormat(), torch.randn(2, 4)), dtype="bf16")
    path = emit_pytest(result, tmp_path / "replay")
    assert "aten._to_copy.default" in path.read_text()
    data = torch.load(tmp_path / "replay" / INPUTS_NAME, weights_only=True)
    assert data["kwargs"] == {"dtype": torch.float16}
    got = torch.ops.aten._to_copy.default(*data["args"], **data["kwargs"]).double()
    want = data["reference"]
    lost = torch.isfinite(want) & ~torch.isfinite(got)
    assert int(lost.sum()) == int((data["args"][0].double().abs() >= 65520).sum()) > 0  # past fp16's max + ulp/2


def test_print_of_a_finding_is_its_sentence():
    """The guide's `for finding in t.findings: print(finding)` printed the dataclass's field dump (samples,
    the catalogue entry's repr) instead of the op, module, cause, bits, rewrite and command."""
    import stabilitylab

    torch.manual_seed(0)
    model, x = _NaiveSoftmax().to(torch.bfloat16), (torch.randn(4, 8) * 10).to(torch.bfloat16)
    with stabilitylab.trace(dtype="bf16") as t:
        model(x).backward()
    assert not any("no op ran in" in n for n in t.result.notes)
    finding = t.findings[0]
    assert str(finding) == finding.sentence()
    assert str(finding).startswith("bfloat16 forward: first overflow in aten.exp.default, _NaiveSoftmax at ")


def test_a_with_block_that_never_ran_in_the_format_says_so():
    """A float32 model in `with stabilitylab.trace(dtype="bf16")` was judged in float32 and reported as a
    bfloat16 trace without a word."""
    import stabilitylab

    torch.manual_seed(0)
    with stabilitylab.trace(dtype="bf16") as t:
        _NaiveSoftmax()(torch.randn(4, 8)).backward()
    assert {r.format for r in t.result.runs[0].records} == {"float32"}
    assert ("no op ran in bfloat16: the block's tensors were float32, and each op was judged in its own dtype; put "
            "the model and batch in the format first (model.to(torch.bfloat16))") in t.result.notes


class _GRU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(8, 8, batch_first=True)

    def forward(self, x):
        return self.gru(x)[0]


def test_an_rnn_runs_emulated():
    """An emulated format rounded each output through .numpy(), which refuses a tensor that requires grad (the
    GRU's fused op returns one): every emulated GRU trace was an error."""
    from stabilitylab.numerics.formats import get_format
    from stabilitylab.tracing.shadow import Shadow

    torch.manual_seed(0)
    model, x = _GRU(), torch.randn(2, 5, 8)
    fmt = get_format("float8_e4m3fn")
    shadow = Shadow(fmt)
    with shadow.mode():
        out = model(x)
        out.pow(2).mean().backward()
    values = out.detach().numpy()
    assert (values == fmt.round32(values)).all()  # the output is held in the format
    assert len(shadow.records) > 50 and {r.format for r in shadow.records} == {"float8_e4m3fn"}


def test_d_all_traces_its_narrow_formats_and_float64_alone_is_refused(capsys):
    """-d all (float16, bfloat16, float32, float64, e4m3, e5m2) was refused whole because of its float64."""
    from stabilitylab.tracing import formats_of

    assert [f.name for f in formats_of("all")] == ["float16", "bfloat16", "float32", "float8_e4m3fn",
                                                   "float8_e5m2"]
    assert main(["trace", f"{PLANTED}:healthy", "-d", "fp64"]) == 2
    assert "references are float64 themselves" in capsys.readouterr().err
    assert main(["trace", f"{PLANTED}:healthy", "-d", "all", "--headroom", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in doc["formats"]] == ["float16", "bfloat16", "float32", "float8_e4m3fn", "float8_e5m2"]
