"""Regression tests for issue #9 ("Faults and bad input"): one test per bug, named after what broke.

Every test asserts the exit status and that no file was lost, replaced or left half-written.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from rich.cells import cell_len
from rich.console import Console

from stabilitylab import atomic, baseline, cli, report, userdata
from stabilitylab.cli import main
from stabilitylab.formats import ALL_FORMATS, DEFAULT_FORMATS, FORMATS
from stabilitylab.status import ExitStatus

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "reports" / "thresholds.json"
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *fragments: str) -> str:
    """stderr is exactly one 'stabilitylab: error:' line holding every fragment."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stabilitylab: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def everything_below(folder: Path) -> list[str]:
    """Every entry below ``folder``, hidden ones included (temporary and staging files are hidden)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def python_m(*args, env_extra=None, **kwargs) -> subprocess.CompletedProcess:
    """``python -m stabilitylab ARGS`` with this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "stabilitylab", *map(str, args)], cwd=REPO, env=env,
                          capture_output=kwargs.pop("capture_output", True), timeout=300, check=False, **kwargs)


@contextlib.contextmanager
def stdout_replaced(stream):
    """sys.stdout replaced for the block (capsys keeps capturing stderr)."""
    saved = sys.stdout
    sys.stdout = stream
    try:
        yield
    finally:
        sys.stdout = saved


class FailingStdout:
    """A standard output whose writes fail with ``error``."""

    encoding = "utf-8"

    def __init__(self, error: OSError):
        self.error = error

    def write(self, text):
        raise self.error

    def flush(self):
        pass

    def isatty(self):
        return False

    def fileno(self):
        raise io.UnsupportedOperation("no fd")


def fail_fsync(monkeypatch, after: int = 0) -> None:
    """os.fsync raises ENOSPC from its (after + 1)-th call on: a disk that fills up while writing."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise ENOSPC
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)


# ------------------------------------------------------------------------------------- 2. --update


@pytest.fixture
def committed():
    return json.loads(BASELINE.read_text())


def test_update_dropped_every_entry_of_a_baseline_with_one_malformed_entry(tmp_path, capsys, committed):
    committed["settings"]["p"] = 0.5
    committed["entries"]["likelihood/iid/product/float32"]["first_failure"] = "46"
    path = tmp_path / "b.json"
    path.write_text(json.dumps(committed, indent=1))
    before = path.read_bytes()
    code, out, err = run(capsys, "check", "--baseline", path, "--update", "-d", "fp32")
    assert code == ExitStatus.USAGE
    one_error_line(err, "first_failure", "'46'", "left unchanged")
    assert out == ""
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["b.json"]


def test_update_overwrote_a_file_that_is_not_a_baseline(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a baseline\n")
    code, out, err = run(capsys, "check", "--update", "--baseline", notes, "-d", "fp16")
    assert code == ExitStatus.USAGE
    one_error_line(err, "notes.txt", "not valid JSON", "left unchanged")
    assert notes.read_text() == "my notes, not a baseline\n"
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_update_reset_p_and_lost_entries_it_did_not_recompute(tmp_path, capsys, committed):
    """A valid baseline with p = 0.5 and an entry of someone else's: both survive an update."""
    committed["settings"]["p"] = 0.5
    committed["entries"]["custom/family/method/float32"] = {"first_inaccurate": 1, "first_failure": 2,
                                                           "failure": "nan"}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(committed))
    code, out, err = run(capsys, "check", "--baseline", path, "--update", "-d", "fp32")
    assert code == ExitStatus.OK, err
    after = json.loads(path.read_text())
    assert after["settings"] == {"p": 0.5, "ftz": False, "tolerance": None}
    assert set(after["entries"]) == set(committed["entries"])
    recomputed = {k for k in committed["entries"] if k.endswith("/float32") and not k.startswith("custom/")}
    for key, entry in committed["entries"].items():
        if key not in recomputed:
            assert after["entries"][key] == entry, key
    # 0.5**n in float32 underflows at n = 150 (2**-150 ties to even, to 0); at p = 0.1 it was 46
    assert after["entries"]["likelihood/iid/product/float32"]["first_failure"] == 150
    assert f"wrote {len(recomputed)} recomputed entries" in out
    assert f"kept {len(committed['entries']) - len(recomputed)} others" in out


def test_plugin_update_overwrote_a_file_that_is_not_a_baseline(pytester):
    pytester.makeini("[pytest]\nstability_baseline = base.json\n")
    pytester.makepyfile(test_user="""
def test_threshold(stability_baseline):
    stability_baseline.check("likelihood/iid/product/float32")
""")
    path = pytester.path / "base.json"
    path.write_text("not a baseline\n")
    result = pytester.runpytest("--stability-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*base.json is not valid JSON*"])
    assert path.read_text() == "not a baseline\n"


# ------------------------------------------------------------------------------------- 5. overflow


@pytest.mark.parametrize("setting,entry,raw,words", [
    ("tolerance", None, "1" + "0" * 400, "tolerance"),
    ("p", None, "1" + "0" * 400, "p is an integer of 401 digits"),
    (None, "first_failure", str(2**1050), "first_failure is an integer of 317 digits"),
    (None, "first_inaccurate", str(-2**64), "first_inaccurate"),
    ("tolerance", None, "1e400", "tolerance is inf"),
    (None, "first_failure", "1e400", "first_failure is inf"),
], ids=["tolerance-10**400", "p-10**400", "entry-2**1050", "entry-2**64", "tolerance-1e400", "entry-1e400"])
def test_baseline_number_too_large_for_a_float_was_an_overflow_error(tmp_path, capsys, committed, setting, entry,
                                                                      raw, words):
    key = "likelihood/iid/product/float32"
    if setting:
        committed["settings"][setting] = "@@"
    else:
        committed["entries"][key][entry] = "@@"
    path = tmp_path / "b.json"
    path.write_text(json.dumps(committed).replace('"@@"', raw))
    before = path.read_bytes()
    for extra in ([], ["--update"]):
        code, out, err = run(capsys, "check", "--baseline", path, "-d", "fp32", *extra)
        assert code == ExitStatus.USAGE, (extra, err)
        one_error_line(err, words)
        assert path.read_bytes() == before


def test_ulps_too_large_for_a_float_is_refused(capsys):
    code, out, err = run(capsys, "check", "--baseline", BASELINE, "--ulps", str(10**400))
    assert code == ExitStatus.USAGE
    one_error_line(err, "--ulps")


# ------------------------------------------------------------------------------------- 8. npz bomb


def test_npz_bomb_was_decompressed_before_the_size_check(tmp_path):
    """4 MB of zeros (32 MB as float64) compressed to a few kB: refused from the member's header."""
    import tracemalloc

    path = tmp_path / "bomb.npz"
    n = 4 * userdata.MAX_ELEMENTS
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("x.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
        chunk = bytes(2**20)
        for _ in range(8 * n // len(chunk)):
            member.write(chunk)
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(userdata.InputError, match="more than 1,000,000 values"):
            userdata.read_array(path, "logits")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak  # the data (32 MB) was never decompressed


# ------------------------------------------------------------------------------------- 13. messages


def test_text_file_named_npy_pointed_to_allow_pickle(tmp_path, capsys):
    (tmp_path / "x.npy").write_text("1,2,3\n4,5,6\n")
    code, out, err = run(capsys, "compare", "-e", "softmax_ce", "--logits", tmp_path / "x.npy")
    assert code == ExitStatus.USAGE
    line = one_error_line(err, "not a NumPy .npy file", ".csv")
    assert "pickle" not in line


def test_bfloat16_npy_only_said_it_holds_v2_values(tmp_path, capsys):
    np.save(tmp_path / "bf.npy", np.ones((2, 3), dtype=ml_dtypes.bfloat16))
    code, out, err = run(capsys, "compare", "-e", "softmax_ce", "--logits", tmp_path / "bf.npy")
    assert code == ExitStatus.USAGE
    one_error_line(err, "bfloat16", "astype(numpy.float32)")


def test_utf8_bom_csv_from_excel_was_refused(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf1,2,3\r\n4,5,6\r\n")
    batch, notes = userdata.user_logits(path)
    assert batch.logits.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert batch.labels.tolist() == [2, 2] and notes == []


@pytest.mark.parametrize("bad", ["logits", "labels"])
def test_errors_named_both_options_when_one_was_at_fault(tmp_path, capsys, bad):
    np.save(tmp_path / "good.npy", np.zeros((2, 3)))
    (tmp_path / "bad.csv").write_text("1,abc\n")
    files = {"logits": tmp_path / "good.npy", "labels": tmp_path / "good_labels.npy"}
    np.save(files["labels"], np.array([0, 1]))
    files[bad] = tmp_path / "bad.csv"
    code, out, err = run(capsys, "compare", "-e", "softmax_ce", "--logits", files["logits"],
                         "--labels", files["labels"])
    assert code == ExitStatus.USAGE
    line = one_error_line(err, f"'--{bad}'")
    other = "labels" if bad == "logits" else "logits"
    assert f"'--{other}'" not in line


def test_plugin_missing_baseline_said_update_instead_of_stability_update(pytester):
    pytester.makeini("[pytest]\nstability_baseline = base.json\n")
    pytester.makepyfile(test_user="""
def test_threshold(stability_baseline):
    stability_baseline.check("likelihood/iid/product/float32")
""")
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*does not exist (create it with pytest --stability-update)*"])
    assert not (pytester.path / "base.json").exists()


def test_baseline_load_is_the_one_validation(tmp_path):
    """baseline.load refuses what the CLI refuses, so the plugin and --update share it."""
    path = tmp_path / "b.json"
    path.write_text('{"schema": "stabilitylab.baseline/1", "settings": {"tolerance": ' + "9" * 400 + '}, '
                    '"entries": {}}')
    with pytest.raises(baseline.BaselineError, match="tolerance"):
        baseline.load(path)
