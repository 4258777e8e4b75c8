"""The shadow's local references (float64 on the low-precision inputs) against a plain independent evaluator
(tests/independent/trace_reference.py: mpmath, sharing nothing with stabilitylab.tracing), op by op, on the
planted models' real inputs."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stabilitylab.numerics.formats import get_format  # noqa: E402
from stabilitylab.tracing import target  # noqa: E402
from stabilitylab.tracing.shadow import Shadow, low_dtype  # noqa: E402

PLANTED = Path(__file__).parent / "trace_models" / "planted.py"
_spec = importlib.util.spec_from_file_location("trace_reference", Path(__file__).parent / "independent" /
                                               "trace_reference.py")
plain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plain)


def kept(builder: str, fmt_name: str):
    fmt = get_format(fmt_name)
    t = target.load(f"{PLANTED}:{builder}")
    model, inputs = target.prepare(t, low_dtype(fmt), None)
    shadow = Shadow(fmt, keep=True)
    with shadow.mode():
        loss = t.step(model, inputs)
        if loss.requires_grad:
            loss.backward()
    return shadow.records


def close(got: np.ndarray, want, ulps: float) -> bool:
    want = np.asarray(want, dtype=np.float64).reshape(got.shape)
    same_inf = (np.isinf(got) & (got == want)) | (np.isnan(got) & np.isnan(want))
    finite = np.isfinite(want)
    with np.errstate(all="ignore"):
        err = np.abs(got - want)
        bound = ulps * np.spacing(np.abs(want))
    return bool(np.all(same_inf | (finite & (err <= bound))))


# op -> (independent function, float64 ulps allowed: float64's own evaluation in the local run)
CHECKS = {
    "aten.exp.default": (lambda ins, args: plain.exp(ins[0].tolist()), 1),
    "aten.log1p.default": (lambda ins, args: plain.log1p(ins[0].tolist()), 1),
    "aten.sum.dim_IntList": (lambda ins, args: plain.sum_last(ins[0].tolist()), 8),
    "aten.bmm.default": (lambda ins, args: plain.matmul(ins[0].tolist(), ins[1].tolist()), 8),
    "aten.mm.default": (lambda ins, args: plain.matmul(ins[0].tolist(), ins[1].tolist()), 8),
    "aten._softmax.default": (lambda ins, args: plain.softmax_last(ins[0].tolist()), 8),
}


@pytest.mark.parametrize("builder, fmt, ops", [
    ("attention_40", "float16", {"aten.exp.default", "aten.sum.dim_IntList", "aten.bmm.default"}),
    ("clamp_log1p", "bfloat16", {"aten.log1p.default", "aten.mm.default"}),
    ("p_minus_one", "bfloat16", {"aten._softmax.default"}),
    ("feed_forward", "float16", {"aten.mm.default"})])
def test_local_references_match_the_plain_evaluator(builder, fmt, ops):
    checked = set()
    for rec in kept(builder, fmt):
        if rec.op not in CHECKS or rec.kept is None:
            continue
        if rec.op in ("aten.sum.dim_IntList", "aten._softmax.default") and rec.kept["args"][0] not in (-1, 2, 1):
            continue
        fn, ulps = CHECKS[rec.op]
        want = fn(rec.kept["inputs"], rec.kept["args"])
        assert close(rec.kept["reference"], want, ulps), (builder, rec.op)
        checked.add(rec.op)
    assert checked == ops


def test_the_planted_exp_reference_is_exp_40():
    exp = next(r for r in kept("attention_40", "float16") if r.op == "aten.exp.default")
    assert exp.kept["reference"].max() == plain.exp([40.0])[0] == pytest.approx(math.exp(40.0))
    assert exp.cause == "overflow"  # 2.35e17 > 65504
