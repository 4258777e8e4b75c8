"""Issue #18, processes: forked workers die with the command that forked them (SIGTERM, SIGHUP, SIGKILL,
Ctrl-C), so ``stabilitylab thresholds | tee log`` never hangs on a worker holding the pipe."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists() or not hasattr(os, "fork"),
                                reason="needs fork and /proc")


def _children(pid: int) -> set[int]:
    """The live (not zombie) processes whose parent is ``pid``: a scan of /proc/*/stat."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            state, ppid = _stat(int(entry))
            if ppid == pid and state != "Z":
                found.add(int(entry))
    return found


def _stat(pid: int) -> tuple[str | None, int | None]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[1])


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if _stat(pid)[0] not in (None, "Z")}


@contextlib.contextmanager
def _start(argv: list[str], **kwargs) -> Iterator[subprocess.Popen]:
    """The command, two workers, stdout and stderr to pipes; whatever is left of it killed at the end."""
    env = dict(os.environ, STABILITYLAB_WORKERS="2", PYTHONPATH=str(ROOT))
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **kwargs) as process:
        process.workers = set()
        try:
            yield process
        finally:  # (a worker left behind holds stdout: closing it would wait for the reader thread)
            for pid in _alive(_children(process.pid) | process.workers):
                os.kill(pid, signal.SIGKILL)
            if process.poll() is None:
                process.kill()


def _workers_of(process: subprocess.Popen, count: int = 2, timeout: float = 60) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _children(process.pid)
        if len(found) >= count:
            process.workers |= found
            return found
        if process.poll() is not None:
            pytest.fail(f"the command ended before its workers started: {process.stderr.read()!r}")
        time.sleep(0.05)
    process.kill()
    pytest.fail("no workers started")


def _read_to_eof(process: subprocess.Popen, timeout: float = 10) -> bytes:
    """stdout to its end, failing (and cleaning up) if it does not end within ``timeout`` seconds: the
    pipe ends only when no process holds its write end."""
    import threading

    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(process.stdout.read()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        pytest.fail(f"stdout did not reach EOF within {timeout} s: a worker holds it")
    return got[0]


def _gone(pids: set[int], timeout: float = 5) -> set[int]:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _alive(pids)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


# `stabilitylab thresholds` whose workers take 60 s over their first task (patched before the fork, so the
# workers inherit it): the command cannot finish before the signal arrives, however fast thresholds becomes
_SLOW_THRESHOLDS = textwrap.dedent("""
    import sys, time
    from stabilitylab.analysis import parallel
    started = parallel._worker_started
    parallel._worker_started = lambda parent: (started(parent), time.sleep(60))
    sys.argv = ["stabilitylab", "thresholds"]
    from stabilitylab.__main__ import run
    run()
""")


@pytest.mark.parametrize(("signum", "status", "name"), [
    (signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP")])
def test_sigterm_left_workers_running_and_the_pipe_open(signum, status, name):
    """`stabilitylab thresholds | tee log`, then `kill <pid>`: the workers are killed, the pipe ends, one
    line and 128 + the signal's number."""
    with _start([sys.executable, "-c", _SLOW_THRESHOLDS]) as process:
        workers = _workers_of(process)
        process.send_signal(signum)
        _read_to_eof(process)
        returned = process.wait(10)
        err = process.stderr.read().decode()
        assert returned == status, err
        assert _gone(workers) == set()
        assert err.splitlines() == [f"stabilitylab: terminated by {name}; the worker processes were stopped"], err


def test_sigkill_left_workers_running_and_the_pipe_open():
    """SIGKILL cannot be handled: the kernel kills the workers (PR_SET_PDEATHSIG) and the pipe ends."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    with _start([sys.executable, "-c", _SLOW_THRESHOLDS]) as process:
        workers = _workers_of(process)
        process.kill()
        _read_to_eof(process)
        assert process.wait(10) == -signal.SIGKILL
        assert _gone(workers) == set()


def test_ctrl_c_stops_the_workers_with_one_line():
    """Ctrl-C reaches the whole process group: the workers ignore it, the command kills them; one line, 130."""
    with _start([sys.executable, "-c", _SLOW_THRESHOLDS], start_new_session=True) as process:
        workers = _workers_of(process)
        os.killpg(process.pid, signal.SIGINT)
        _read_to_eof(process)
        assert process.wait(10) == 130
        assert _gone(workers) == set()
        assert process.stderr.read().decode().splitlines() == ["stabilitylab: interrupted"]


def test_a_killed_parent_left_workers_where_there_is_no_prctl():
    """Without PR_SET_PDEATHSIG each worker watches its parent and exits once it is gone."""
    script = textwrap.dedent("""
        import time
        from stabilitylab.analysis import parallel
        parallel._kill_me_with_parent = lambda: False
        parallel._PARENT_POLL = 0.05
        pool = parallel.fork_pool(2)
        futures = [pool.submit(time.sleep, 60) for _ in range(2)]
        time.sleep(60)
    """)
    with _start([sys.executable, "-c", script]) as process:
        workers = _workers_of(process)
        process.kill()
        _read_to_eof(process)
        process.wait(10)
        assert _gone(workers) == set()


def test_an_ignored_sighup_stays_ignored():
    """`nohup stabilitylab ...`: SIGHUP is left ignored, the command runs on."""
    script = ("import signal, sys\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
              "from stabilitylab.__main__ import _handle_signals\n_handle_signals()\n"
              "print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, "
              "signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    assert out.split() == ["True", "True"]


def test_a_pool_left_by_an_exception_ran_the_queued_work():
    """Leaving the pool's block by an exception kills the workers at once instead of running what is queued."""
    from stabilitylab.analysis import parallel

    pool = parallel.fork_pool(2)
    start = time.monotonic()
    with pytest.raises(KeyError), pool:
        futures = [pool.submit(time.sleep, 30) for _ in range(4)]
        workers = set(pool._processes)
        raise KeyError("leave")
    assert time.monotonic() - start < 10
    assert _gone(workers) == set()
    assert all(f.done() for f in futures)


# `stabilitylab thresholds -o FILE` whose first worker task kills its worker (SIGKILL, as the OOM killer does)
_KILLED_WORKER = textwrap.dedent("""
    import os, signal, sys
    from stabilitylab.analysis import thresholds
    thresholds._family_thresholds = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    sys.argv = ["stabilitylab", "thresholds", "-o", sys.argv[1]]
    from stabilitylab.__main__ import run
    run()
""")


def test_a_killed_worker_is_one_line_and_its_own_exit_code(tmp_path):
    """A worker killed from outside (kill -9, the OOM killer) is not a bug of stabilitylab: exit 71 (EX_OSERR)
    and one line saying what happened, nothing written, no worker left (it was exit 70, "a bug in
    stabilitylab", found by review9)."""
    target = tmp_path / "t.json"
    with _start([sys.executable, "-c", _KILLED_WORKER, str(target)]) as process:
        out, err = process.communicate(timeout=120)
        workers = process.workers | _children(process.pid)
    assert process.returncode == 71, err
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stabilitylab: error: a worker process ended abruptly"), lines
    assert "STABILITYLAB_WORKERS=1" in lines[0] and out == b""
    assert not target.exists() and os.listdir(tmp_path) == []
    assert _gone(workers) == set()
