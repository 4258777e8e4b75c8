"""Issue #18, ``--timeout SECONDS``: a call of the target (or the import of a user's module) that runs longer
is stopped; its rows become ``error`` rows naming the limit (a timed-out import or first call: one line, exit
2).  A timed-out batch is marked whole, never split.  Default: no limit, no signal touched."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from clihelp import run

import stabilitylab
from stabilitylab.auditing.core import resolve
from stabilitylab.errors import AuditError, InputError
from stabilitylab.numerics import arith
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import FORMATS

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="--timeout needs SIGALRM")

LOSS = """
import time
import numpy as np

PROBE = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]])


def loss(x, labels):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return np.log(np.exp(x - m).sum(axis=1)) + m[:, 0] - x[np.arange(len(x)), labels]


def slow(logits, labels):
    '''2 s per call, except the first (the probe's plain batch).'''
    if not (logits.shape == PROBE.shape and (np.asarray(logits, dtype=np.float64) == PROBE).all()):
        time.sleep(2)
    return loss(logits, labels)


def slow_on_large(logits, labels):
    '''2 s on a batch holding a logit of magnitude 1000 or more.'''
    if np.abs(np.asarray(logits, dtype=np.float64)).max() >= 1000:
        time.sleep(2)
    return loss(logits, labels)
"""




def one_line(code: int, out: str, err: str, *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one 'stabilitylab: error:' line on stderr (returned)."""
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stabilitylab: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def losses(tmp_path):
    path = tmp_path / "losses.py"
    path.write_text(textwrap.dedent(LOSS))
    return path


@pytest.fixture(autouse=True)
def no_alarm_left():
    """Every test leaves SIGALRM's handler as it found it and no timer running."""
    handler = signal.getsignal(signal.SIGALRM)
    yield
    assert signal.getsignal(signal.SIGALRM) is handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def loss(x, labels):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return np.log(np.exp(x - m).sum(axis=1)) + m[:, 0] - x[np.arange(len(x)), labels]


# ------------------------------------------------------------------ calls
def test_slow_calls_become_error_rows_naming_the_timeout(capsys, losses):
    started = time.monotonic()
    code, out, err = run(capsys, "audit", f"{losses}:slow", "-e", "softmax_ce", "-d", "float32", "--no-thresholds",
                         "--timeout", "0.2", "--format", "json")
    elapsed = time.monotonic() - started
    assert code == 0, err
    results = json.loads(out)["results"]
    calls = len({r["error"] for r in results})  # a message per batch size: at least this many calls timed out
    assert calls >= 2
    assert elapsed < 6, elapsed  # 5 calls of 2 s without the limit
    assert {r["status"] for r in results} == {"error"}
    for r in results:
        assert r["error"].startswith("took longer than 0.2 s (--timeout)"), r


def test_a_timed_out_batch_is_marked_whole_not_split():
    calls = []

    def slow_on_row_0(x, labels):
        calls.append(len(x))
        if (x[:, 0] == 5).any():
            time.sleep(2)
        return loss(x, labels)

    fn = resolve(slow_on_row_0, "softmax_ce", timeout=0.1).fn
    x = np.zeros((64, 3), dtype=np.float32)
    x[0, 0] = 5
    a = Arith(FORMATS["float32"], 64)
    started = time.monotonic()
    value = a.external(fn, x, np.zeros(64, dtype=np.int64))
    assert time.monotonic() - started < 1.5
    assert calls == [64]  # a raising batch would have been split until row 0 was found
    assert np.isnan(value).all()
    assert set(a.errors.values()) == {"took longer than 0.1 s (--timeout) on a batch of 64 rows holding this one"}
    assert sorted(a.errors) == list(range(64))


def test_after_a_timeout_a_raising_batch_is_marked_whole(monkeypatch):
    monkeypatch.setattr(arith, "EXTERNAL_CHUNK", 32)
    calls = []

    def f(x, labels):
        calls.append(len(x))
        if (x[:, 0] == 5).any():
            time.sleep(2)
        if (x[:, 0] == 7).any():
            raise ValueError("seven")
        return loss(x, labels)

    x = np.zeros((64, 3), dtype=np.float32)
    x[0, 0], x[63, 0] = 5, 7
    a = Arith(FORMATS["float32"], 64)
    a.external(resolve(f, "softmax_ce", timeout=0.1).fn, x, np.zeros(64, dtype=np.int64))
    assert calls == [32, 32]  # the second chunk raised: not split, the search's budget is spent
    assert {a.errors[r] for r in range(32)} == {"took longer than 0.1 s (--timeout) on a batch of 32 rows "
                                                "holding this one"}
    assert {a.errors[r] for r in range(32, 64)} == {"ValueError: seven (raised on a batch of 32 rows holding "
                                                    "this one)"}


def test_only_the_slow_batches_fail(capsys, losses):
    code, out, err = run(capsys, "audit", f"{losses}:slow_on_large", "-e", "softmax_ce", "-d", "float32",
                         "--no-thresholds", "--timeout", "0.2", "--format", "json")
    assert code == 0, err
    results = json.loads(out)["results"]
    large = [r for r in results if r["case"].startswith("large:")]
    assert large and all(r["status"] == "error" and "(--timeout)" in r["error"] for r in large)
    assert any(r["status"] == "ok" for r in results)


@pytest.mark.parametrize("catch", ["Exception", "BaseException"])
def test_user_code_that_catches_the_stop_still_times_out(catch):
    namespace: dict = {}
    exec(textwrap.dedent(f"""
        import time

        def swallowing(x, labels):
            try:
                time.sleep(2)
            except {catch}:
                pass
            return x[:, 0]
    """), namespace)
    fn = resolve(namespace["swallowing"], "softmax_ce", timeout=0.1).fn
    a = Arith(FORMATS["float32"], 4)
    started = time.monotonic()
    a.external(fn, np.zeros((4, 3), dtype=np.float32), np.zeros(4, dtype=np.int64))
    assert time.monotonic() - started < 1.5
    assert len(a.errors) == 4 and all("took longer than 0.1 s (--timeout)" in m for m in a.errors.values())


def test_a_previous_timer_and_handler_are_restored():
    seen = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: seen.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        fn = resolve(lambda x, labels: time.sleep(2), "softmax_ce", timeout=0.1).fn
        a = Arith(FORMATS["float32"], 2)
        a.external(fn, np.zeros((2, 3), dtype=np.float32), np.zeros(2, dtype=np.int64))
        assert len(a.errors) == 2
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25 < left < 30
        assert not seen
        signal.setitimer(signal.ITIMER_REAL, 0.05)  # the outer handler is in place again
        time.sleep(0.5)
        assert seen == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_built_in_adapter_gets_the_limit_too(capsys):
    pytest.importorskip("scipy")
    code, out, err = run(capsys, "audit", "scipy.log_softmax", "-d", "float32", "--no-thresholds", "--timeout", "30",
                         "--format", "json")
    assert code == 0, err
    assert {r["status"] for r in json.loads(out)["results"]} <= {"ok", "range", "inaccurate"}


# ------------------------------------------------------ import, first call
SLOW_IMPORT = "import time\ntime.sleep(5)\n\n\ndef f(logits, labels):\n    return logits[:, 0]\n"


def test_an_import_that_sleeps_is_one_line_exit_2(capsys, tmp_path, monkeypatch):
    (tmp_path / "slow_import.py").write_text(SLOW_IMPORT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for target, where in (("slow_import.py:f", "could not import slow_import.py"),
                          ("slow_import:f", "could not import module 'slow_import'")):
        started = time.monotonic()
        line = one_line(*run(capsys, "audit", target, "-e", "softmax_ce", "--timeout", "0.3"), where)
        assert time.monotonic() - started < 3
        assert line.endswith(": it took longer than 0.3 s (--timeout)"), line
    assert "slow_import" not in sys.modules
    assert not [name for name in sys.modules if name.startswith("_stabilitylab_target_slow_import")]


def test_a_first_call_that_times_out_is_one_line_exit_2(capsys, tmp_path):
    path = tmp_path / "slow_call.py"
    path.write_text("import time\n\n\ndef f(logits, labels):\n    time.sleep(5)\n    return logits[:, 0]\n")
    started = time.monotonic()
    line = one_line(*run(capsys, "audit", f"{path}:f", "-e", "softmax_ce", "--timeout", "0.3"),
                    "slow_call.py:f took longer than 0.3 s (--timeout) on a plain float32 batch")
    assert time.monotonic() - started < 3
    assert "leave --timeout out" in line


# -------------------------------------------------------------- bad values
@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "nan", "inf", "-inf", "1e400", "abc", ""])
def test_bad_timeout_is_one_line_exit_2_before_the_target_is_imported(capsys, tmp_path, value):
    marker = tmp_path / "ran"
    path = tmp_path / "payload.py"
    path.write_text(f"open({str(marker)!r}, 'w').write('ran')\n\n\ndef f(logits, labels):\n    return logits[:, 0]\n")
    one_line(*run(capsys, "audit", f"{path}:f", "-e", "softmax_ce", "--timeout", value), "--timeout")
    assert not marker.exists()


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), True, "5", [5]])
def test_api_refuses_a_bad_timeout(value):
    with pytest.raises(InputError, match="timeout") as caught:
        stabilitylab.audit(loss, "softmax_ce", "float32", search=False, timeout=value)
    assert caught.value.option == "--timeout"


def test_off_the_main_thread_a_timeout_is_refused():
    caught = []

    def audit():
        try:
            stabilitylab.audit(loss, "softmax_ce", "float32", search=False, timeout=5)
        except AuditError as exc:
            caught.append(str(exc))

    worker = threading.Thread(target=audit)
    worker.start()
    worker.join()
    assert len(caught) == 1 and "main thread" in caught[0]


# -------------------------------------------------------------------- API
def test_api_timeout_parameter():
    def slow_on_large(logits, labels):
        if np.abs(np.asarray(logits, dtype=np.float64)).max() >= 1000:
            time.sleep(2)
        return loss(logits, labels)

    result = stabilitylab.audit(slow_on_large, "softmax_ce", "float32", search=False, timeout=0.2)
    rows = json.loads(result.to_json())["results"]
    timed_out = [r for r in rows if r["status"] == "error"]
    assert timed_out and all(r["error"].startswith("took longer than 0.2 s (--timeout)") for r in timed_out)
    assert any(r["status"] == "ok" for r in rows)


def test_default_is_no_limit_and_no_signal(monkeypatch):
    def no_signal(*args):
        raise AssertionError("a signal or timer was set without --timeout")

    monkeypatch.setattr(signal, "setitimer", no_signal)
    monkeypatch.setattr(signal, "signal", no_signal)

    def sleepy(logits, labels):
        time.sleep(0.05)
        return loss(logits, labels)

    result = stabilitylab.audit(sleepy, "softmax_ce", "float32", search=False)
    assert not [r for r in json.loads(result.to_json())["results"] if r["status"] == "error"]
