"""The one worker-count rule (analysis/parallel.py): CPU affinity, the STABILITYLAB_WORKERS
override and its bad values, and every process pool taking its default from it."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from stabilitylab.analysis import parallel, streaming, thresholds
from stabilitylab.cli import main
from stabilitylab.errors import InputError
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.report import build

VAR = "STABILITYLAB_WORKERS"


def test_the_cpus_this_process_may_run_on(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert parallel.worker_count() == 3


def test_cpu_count_where_there_is_no_affinity(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert parallel.worker_count() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown
    assert parallel.worker_count() == 1


@pytest.mark.parametrize(("value", "count"), [("1", 1), ("3", 3), (" 12 ", 12)])
def test_the_variable_overrides_the_cpus(value, count, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert parallel.worker_count({VAR: value}) == count
    monkeypatch.setenv(VAR, value)
    assert parallel.worker_count() == count


def test_an_empty_variable_is_unset(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert parallel.worker_count({VAR: ""}) == parallel.worker_count({}) == 2


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "2 workers"])
def test_a_bad_value_is_one_clear_error(value):
    with pytest.raises(ValueError, match=rf"^{VAR}=.*must be a positive integer") as caught:
        parallel.worker_count({VAR: value})
    assert isinstance(caught.value, InputError)
    assert len(str(caught.value).splitlines()) == 1


def test_fork_pool():
    assert parallel.fork_pool(1) is None
    pool = parallel.fork_pool(2)
    assert isinstance(pool, ProcessPoolExecutor)
    pool.shutdown()


def test_every_pool_reads_the_variable(monkeypatch):
    """thresholds, the user-logits summary and the report take their default worker count from the
    rule (a bad value fails before any work)."""
    monkeypatch.setenv(VAR, "many")
    with pytest.raises(InputError, match=VAR):
        thresholds.thresholds([EXPERIMENTS["softmax_ce"]], [FORMATS["float16"]])

    class Source:
        rows, classes = 2, 3

        def chunks(self, n):  # never reached
            raise AssertionError

    with pytest.raises(InputError, match=VAR):
        streaming.summarize(Source(), None, np.ones(2, bool), (FORMATS["float16"],))
    with pytest.raises(InputError, match=VAR):
        build.build([FORMATS["float16"]])


def test_the_command_line_says_what_is_wrong(monkeypatch, capsys):
    monkeypatch.setenv(VAR, "0")
    capsys.readouterr()
    code = main(["thresholds", "-d", "float16", "-e", "softmax_ce"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert err.splitlines() == [f"stabilitylab: error: {VAR}='0': it must be a positive integer, the number of "
                                "worker processes (1: none, run in this process); unset it for one per CPU"]


def test_searches_that_may_need_ml_dtypes_share_one_unit_of_the_pool():
    """Policies with a bfloat16 / float8 part go to one unit beside the others (one worker imports ml_dtypes),
    and round-robin into one unit per worker when they are alone; pure formats, bfloat16 and float8 included,
    each go alone, the long ones first; every search is in exactly one unit."""
    names = [("softmax_ce", "overflow", f) for f in ("float32", "bfloat16", "float64", "float8_e4m3fn", "float16")]
    names += [("likelihood", "iid", "bf16@fp32"), ("softmax_ce", "overflow", "bf16@fp32")]
    units = thresholds._bundles(names, 2)
    assert sorted(t for u in units for t in u) == sorted(names)
    assert units[0] == [("likelihood", "iid", "bf16@fp32"), ("softmax_ce", "overflow", "bf16@fp32")]
    assert [u[0][2] for u in units[1:]] == ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn"]
    assert all(len(u) == 1 for u in units[1:])
    alone = [n for n in names if n[2] == "bf16@fp32"]
    split = thresholds._bundles(alone, 2)
    assert len(split) == 2 and sorted(t for u in split for t in u) == sorted(alone)


def test_pure_format_searches_do_not_import_ml_dtypes():
    """The premise of those units: a search in a pure format never imports ml_dtypes, bfloat16 and float8
    included (a fresh process; the grid and the predictions read the bits through Format.magnitudes)."""
    import subprocess
    import sys

    code = ("import sys\nfrom stabilitylab.analysis import thresholds\n"
            "for f in ('float16', 'float32', 'float64', 'bfloat16', 'float8_e4m3fn', 'float8_e5m2'):\n"
            "    thresholds._search_task(('likelihood', 'iid', f), thresholds.Settings(), None)\n"
            "    thresholds._search_task(('softmax_ce', 'underflow', f), thresholds.Settings(), None)\n"
            "for f in ('bfloat16', 'float8_e4m3fn', 'float8_e5m2'):  # (predictions at a format value)\n"
            "    thresholds._search_task(('softmax_ce', 'overflow', f), thresholds.Settings(), None)\n"
            "    thresholds._search_task(('binary_ce', 'saturation', f), thresholds.Settings(), None)\n"
            "print('ml_dtypes' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
    pure = ("float16", "float32", "float64", "bfloat16", "float8_e4m3fn")
    assert not any(thresholds._needs_ml_dtypes(("softmax_ce", "overflow", f)) for f in pure)
    assert thresholds._needs_ml_dtypes(("softmax_ce", "overflow", "bf16@fp32"))


def _glibc() -> bool:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(None).gnu_get_libc_version)
    except (OSError, AttributeError):
        return False


def test_freed_memory_is_kept_where_glibc_allows_it_and_results_do_not_change():
    """keep_freed_memory takes on Linux with glibc (both mallopt settings accepted), nothing elsewhere;
    the bulk summary is the same after it (it changes where memory comes from, not a value)."""
    x = np.random.default_rng(5).standard_normal((3000, 7)).astype(np.float32)

    class Source:
        rows, classes = x.shape

        def chunks(self, n):
            for i in range(0, len(x), n):
                yield i, x[i:i + n]

    fmts = (FORMATS["bfloat16"],)
    before = streaming.summarize(Source(), None, np.ones(len(x), bool), fmts, workers=1)
    assert parallel.keep_freed_memory() is _glibc()
    after = streaming.summarize(Source(), None, np.ones(len(x), bool), fmts, workers=1)
    for key, cell in before.cells.items():
        assert np.array_equal(cell.counts, after.cells[key].counts)
        assert np.array_equal(cell.worst, after.cells[key].worst)
