"""stabilitylab train: the issue-12 claims, measured from the tool's own output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stabilitylab.cli import main
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.training import train

F16, F64 = FORMATS["float16"], FORMATS["float64"]


def test_iris_is_the_classic_data():
    x, y = train.iris()
    assert x.shape == (150, 4) and np.bincount(y).tolist() == [50, 50, 50]
    assert x[0].tolist() == [5.1, 3.5, 1.4, 0.2] and x[-1].tolist() == [5.9, 3.0, 5.1, 1.8]
    assert np.round(x.mean(axis=0), 2).tolist() == [5.84, 3.06, 3.76, 1.2]


@pytest.fixture(scope="module")
def overflow_runs():
    scenario = train.SCENARIOS["overflow"]
    return {(r.method, r.dtype): r for r in train.run_scenario(scenario, [F16, F64])}


def test_naive_softmax_becomes_nan_in_float16(overflow_runs):
    naive = overflow_runs[("naive_softmax_log", "float16")]
    step = naive.first_nonfinite_step
    assert step is not None and 1 < step < naive.steps
    assert naive.status[step - 1] in ("nan", "overflow")
    assert np.all(naive.status[:step - 1] != "nan")
    assert overflow_runs[("naive_softmax_log", "float64")].first_nonfinite_step is None


def test_log_softmax_log1p_reaches_float64_accuracy(overflow_runs):
    r16 = overflow_runs[("log_softmax_log1p", "float16")]
    r64 = overflow_runs[("log_softmax_log1p", "float64")]
    assert r16.first_nonfinite_step is None
    assert abs(r16.final_accuracy - r64.final_accuracy) <= 0.01
    assert r64.final_accuracy > 0.9


def test_mse_stays_at_chance_much_longer_than_ce():
    runs = {(r.method, r.dtype): r for r in train.run_scenario(train.SCENARIOS["saturated"], [F16, F64])}
    for dtype in ("float16", "float64"):
        mse = runs[("mse_sigmoid", dtype)].epochs_at_chance()
        ce = runs[("logits", dtype)].epochs_at_chance()
        assert mse >= ce + 20, (dtype, mse, ce)
    assert (runs[("mse_sigmoid", "float16")].zero_grad == 1).all()  # sigma'(z) is exactly 0 in float16


def test_static_loss_scale_removes_gradient_underflow():
    none = train.run(train.SCENARIOS["loss_scale_none"], F16, "logits")
    static = train.run(train.SCENARIOS["loss_scale_static"], F16, "logits")
    assert none.grad_underflow.max() > 0.1
    assert static.grad_underflow.max() == 0


def test_dynamic_scale_halves_on_overflow_and_grows():
    r = train.run(train.SCENARIOS["loss_scale_dynamic"], F16, "logits")
    assert r.skipped.any() and r.grad_underflow.max() == 0
    first_skip = int(np.flatnonzero(r.skipped)[0])
    assert r.scale[first_skip + 1] == r.scale[first_skip] / 2
    assert r.scale.max() > r.scale[0]


@pytest.mark.parametrize("scenario, method", [("overflow", "naive_softmax_log"), ("saturated", "sigmoid_log")])
def test_events_recorded_at_every_step_give_the_same_statuses(monkeypatch, scenario, method):
    """A step's forward pass records events only where its loss is NaN, inf or 0 (the only
    losses whose status reads them); recording them at every step changes nothing."""
    s = train.SCENARIOS[scenario]
    lazy = train.run(s, F16, method)
    forward = train._forward
    monkeypatch.setattr(train, "_forward", lambda fmt, methods, batch, w, loud:
                        forward(fmt, methods, batch, w, np.ones_like(loud)))
    full = train.run(s, F16, method, lazy.reference)
    assert full.status.tolist() == lazy.status.tolist()
    assert {"nan", "overflow"} <= set(lazy.status) and np.isfinite(lazy.loss).any() == (scenario == "overflow")


def _json(capsys, *args):
    assert main(["train", "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json_and_determinism(capsys):
    args = ["--scenario", "overflow", "-d", "float16", "-d", "float64", "--steps", "100"]
    doc = _json(capsys, *args)
    assert doc["schema"] == "stabilitylab.train/1"
    runs = {(r["method"], r["dtype"]): r for r in doc["runs"]}
    naive = runs[("naive_softmax_log", "float16")]
    assert isinstance(naive["first_nonfinite_step"], int)
    assert naive["loss"][naive["first_nonfinite_step"] - 1] in ("nan", "inf")
    good, ref = runs[("log_softmax_log1p", "float16")], runs[("log_softmax_log1p", "float64")]
    assert good["first_nonfinite_step"] is None
    assert abs(good["final_accuracy"] - ref["final_accuracy"]) <= 0.01
    assert len(good["loss"]) == 100 and len(good["accuracy"]) == 100 // 5
    assert _json(capsys, *args)["runs"] == doc["runs"]


def test_cli_seed_changes_the_order(capsys):
    base = ["--scenario", "loss_scale_none", "-d", "float64", "--steps", "5"]
    assert _json(capsys, *base, "--seed", "1")["runs"] != _json(capsys, *base, "--seed", "2")["runs"]


@pytest.mark.parametrize("args", [["--scenario", "nope"], ["--steps", "0"], ["--steps", "x"], ["--lr", "0"],
                                  ["--lr", "inf"], ["--seed", "-1"], ["-d", "float7"]])
def test_bad_input_is_one_line_exit_2(capsys, args):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stabilitylab: error:")
