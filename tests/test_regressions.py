"""Regression tests for issue #9 ("Faults and bad input"): one test per bug, named after what broke.

Every test asserts the exit status and that no file was lost, replaced or left half-written.
"""

from __future__ import annotations

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
from clihelp import one_error_line, run, stdout_replaced
from rich.cells import cell_len
from rich.console import Console

from stabilitylab import api
from stabilitylab.cli import main
from stabilitylab.guard import baseline
from stabilitylab.io import atomic, userdata
from stabilitylab.io.environment import fingerprint
from stabilitylab.numerics.formats import ALL_FORMATS, DEFAULT_FORMATS, FORMATS
from stabilitylab.report import build as report
from stabilitylab.status import ExitStatus

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "reports" / "thresholds.json"
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))






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


# ------------------------------------------------------------------------------------- 1. report


def test_failed_report_build_leaves_no_empty_figures_folder(tmp_path, monkeypatch, capsys):
    """A report whose build fails (the likelihood ValueError of item 1) created figures/ first;
    an unexpected exception is one line and exit 70, never 1 (a regression) or a traceback."""
    def build(*args, **kwargs):
        raise ValueError("simulated failure inside the build")

    monkeypatch.setattr(report, "build", build)
    target = tmp_path / "r"
    code, out, err = run(capsys, "report", "-o", str(target), "-d", "fp32")
    assert code == ExitStatus.INTERNAL == 70
    one_error_line(err, "internal error", "ValueError", "simulated failure")
    assert not target.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args", [
    ["thresholds", "-d", "e4m3", "-e", "likelihood", "--p", "0.0009"],
    ["thresholds", "-d", "all", "-e", "likelihood", "--p", "1e-5"],
], ids=["e4m3-p-0.0009", "all-p-1e-5"])
def test_likelihood_prediction_crashed_when_p_rounds_to_zero(capsys, args):
    """Item 1: fl(p) = 0 in float8_e4m3fn made iid_predict convert NaN to int (exit 1). Now the
    input itself is out of range: the loss is inf/NaN from n = 1, status range, no prediction."""
    code, out, err = run(capsys, *args, "--format", "json")
    assert code == ExitStatus.OK and err == ""
    rows = {(t["method"], t["dtype"]): t for t in json.loads(out)["thresholds"]}
    for method in ("product", "sum_log"):
        row = rows[(method, "float8_e4m3fn")]
        assert row["first_failure"] == 1 and row["failure"] == "range" and row["predicted"] is None


def test_likelihood_prediction_crashed_on_a_baseline_with_a_subnormal_p(tmp_path, capsys):
    """Item 1 through a baseline whose settings say p: 1e-320 (0 in every format but float64)."""
    path = tmp_path / "b.json"
    doc = json.loads(BASELINE.read_text())
    doc["settings"]["p"] = 1e-320
    doc["entries"] = {k: v for k, v in doc["entries"].items() if k.startswith("likelihood/")}
    path.write_text(json.dumps(doc))
    code, out, err = run(capsys, "check", "--baseline", path, "-d", "e4m3")
    assert code in (ExitStatus.OK, ExitStatus.REGRESSION) and "Traceback" not in err and "internal" not in err


def test_nan_logits_row_in_bfloat16_printed_a_numpy_warning(tmp_path):
    """Item 7: a NaN in a logits row with bfloat16 selected put numpy's RuntimeWarning
    ("invalid value encountered in reduce") on stderr."""
    path = tmp_path / "x.npy"
    np.save(path, np.array([[1.0, np.nan, 2.0], [0.0, 1.0, 2.0]]))
    done = python_m("compare", "-e", "softmax_ce", "--logits", path, "-d", "bf16", "-d", "e4m3",
                    env_extra={"PYTHONWARNINGS": "error"})
    assert done.returncode == ExitStatus.OK and not done.stderr, done.stderr


def test_signalling_nan_logits_printed_a_numpy_cast_warning(tmp_path):
    """Found in the fifth session's review: a float32 signalling NaN in a logits file (a NaN whose quiet bit is
    clear) put two "invalid value encountered in cast" RuntimeWarnings on stderr (the casts that quiet it)."""
    x = np.zeros((4, 5), np.float32)
    x.view(np.uint32)[1, 2] = 0x7F800001  # +sNaN
    x.view(np.uint32)[2, 0] = 0xFF800010  # -sNaN
    path = tmp_path / "x.npy"
    np.save(path, x)
    done = python_m("compare", "-e", "softmax_ce", "--logits", path, "-d", "fp32", "-d", "fp64", "-d", "fp16",
                    env_extra={"PYTHONWARNINGS": "error"})
    assert done.returncode == ExitStatus.OK and not done.stderr, done.stderr
    cells = json.loads(python_m("compare", "-e", "softmax_ce", "--logits", path, "-d", "fp32", "--format",
                                "json").stdout)["user_logits"]["cells"]
    assert [sum(c["counts"].values()) for c in cells] == [4] * 4  # every row classified, in each method


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "existing-report"])
def test_report_on_a_disk_that_fills_up_writes_nothing(tmp_path, monkeypatch, capsys, existing):
    """All files or none: the third file failing leaves neither a partial report nor a mixed one."""
    target = tmp_path / "r"
    if existing:
        (target / "figures").mkdir(parents=True)
        (target / "README.md").write_text("<!-- generated by stabilitylab report -->\nold report\n")
        (target / "figures" / "a.png").write_bytes(b"old a")
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    files = {"README.md": b"new report\n", "figures/a.png": b"new a", "figures/b.png": b"new b"}
    monkeypatch.setattr(report, "build", lambda *args, **kwargs: files)
    fail_fsync(monkeypatch, after=2)
    code, out, err = run(capsys, "report", "-o", target, "-d", "fp32")
    assert code == ExitStatus.USAGE
    one_error_line(err, "No space left on device", str(target))
    assert out == ""
    if existing:
        assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
        assert everything_below(target) == ["README.md", "figures", "figures/a.png"]
    else:
        assert os.listdir(tmp_path) == []


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


# ------------------------------------------------------------------------------------- 3. devices


def _char_device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the numbers of /dev/null
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot create a character device here ({exc.strerror}); needs root with CAP_MKNOD")


@pytest.mark.parametrize("argv", [["compare", "-e", "likelihood", "-d", "fp32", "-o"], ["formats", "-o"],
                                  ["check", "--update", "-d", "fp16", "--baseline"]],
                         ids=["compare", "formats", "check-update"])
def test_output_to_a_device_replaced_the_device_with_a_file(tmp_path, capsys, argv):
    device = tmp_path / "null"
    _char_device(device)
    code, out, err = run(capsys, *argv, device)
    assert code == ExitStatus.USAGE
    one_error_line(err, "character device")
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    assert os.listdir(tmp_path) == ["null"]


def test_output_to_a_fifo_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, out, err = run(capsys, "formats", "-o", fifo)
    assert code == ExitStatus.USAGE
    one_error_line(err, "pipe")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.listdir(tmp_path) == ["fifo"]


def test_atomic_write_refuses_a_device_even_without_the_cli_check(tmp_path):
    device = tmp_path / "null"
    _char_device(device)
    with pytest.raises(atomic.WriteError, match="character device"):
        atomic.write_text(device, "x")
    assert stat.S_ISCHR(os.lstat(device).st_mode)


# ------------------------------------------------------------------------------------- 4. disk full


@pytest.mark.parametrize("argv", [["compare", "-e", "likelihood", "-d", "fp32"], ["formats"],
                                  ["thresholds", "-e", "likelihood", "-d", "fp16"]],
                         ids=["compare", "formats", "thresholds"])
def test_disk_full_on_output_file_was_a_traceback(tmp_path, monkeypatch, capsys, argv):
    target = tmp_path / "out.txt"
    target.write_text("previous output\n(generated by stabilitylab)\n")  # written by stabilitylab: replaceable
    fail_fsync(monkeypatch)
    code, out, err = run(capsys, *argv, "-o", target)
    assert code == ExitStatus.USAGE
    one_error_line(err, "could not write", str(target), "No space left on device")
    assert target.read_text() == "previous output\n(generated by stabilitylab)\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_disk_full_on_baseline_update_was_a_traceback(tmp_path, monkeypatch, capsys):
    path = tmp_path / "b.json"
    shutil.copy(BASELINE, path)
    before = path.read_bytes()
    fail_fsync(monkeypatch)
    code, out, err = run(capsys, "check", "--baseline", path, "--update", "-d", "fp16")
    assert code == ExitStatus.USAGE
    one_error_line(err, "No space left on device")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["b.json"]


def test_disk_full_on_stdout_was_a_traceback(capsys):
    with stdout_replaced(FailingStdout(ENOSPC)):
        code = main(["formats"])
    out, err = capsys.readouterr()
    assert code == ExitStatus.USAGE
    one_error_line(err, "cannot write to standard output", "No space left on device")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_to_dev_full_was_a_traceback():
    with open("/dev/full", "w") as full:
        proc = python_m("formats", stdout=full, stderr=subprocess.PIPE, capture_output=False, text=True)
    assert proc.returncode == ExitStatus.USAGE
    one_error_line(proc.stderr, "No space left on device")


def test_output_to_process_substitution_was_a_traceback(tmp_path, capsys):
    """``-o >(wc -c)`` names /dev/fd/N, a pipe: refused (-o writes regular files), the pipe untouched."""
    read_end, write_end = os.pipe()
    try:
        code, out, err = run(capsys, "formats", "-o", f"/dev/fd/{write_end}")
        assert code == ExitStatus.USAGE
        one_error_line(err, "pipe", "standard output")
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 10) == b""  # nothing was written into the pipe
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


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


# ------------------------------------------------------------------------------------- 6. | head


def baseline_made_here(folder: Path) -> Path:
    """The committed baseline with this environment's fingerprint (no version-difference warning)."""
    doc = json.loads(BASELINE.read_text())
    doc["environment"] = fingerprint()
    path = folder / "here.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("argv", [["compare", "--format", "json"], ["formats"],
                                  ["check", "--baseline", "HERE", "--all", "-d", "fp16"]],
                         ids=["compare", "formats", "check"])
def test_reader_closing_the_pipe_gave_exit_1(argv, tmp_path):
    """``| head``: the reader goes away; the output stops quietly and, as nothing regressed, exit 0."""
    argv = [str(baseline_made_here(tmp_path)) if a == "HERE" else a for a in argv]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    with subprocess.Popen([sys.executable, "-m", "stabilitylab", *map(str, argv)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        proc.stdout.close()  # before the first write: that write, and every later one, meets EPIPE
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=300)
    assert code == ExitStatus.OK, err
    assert err == ""


def test_reader_closing_the_pipe_keeps_the_regression_status(tmp_path, capsys, committed):
    committed["entries"]["likelihood/iid/product/float32"]["first_failure"] = 47
    committed["environment"] = fingerprint()  # no version-difference warning: stderr stays empty
    path = tmp_path / "b.json"
    path.write_text(json.dumps(committed))
    with stdout_replaced(FailingStdout(BrokenPipeError(errno.EPIPE, "Broken pipe"))):
        code = main(["check", "--baseline", str(path), "-d", "fp32"])
    assert code == ExitStatus.REGRESSION
    assert capsys.readouterr().err == ""


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


# ------------------------------------------------------------------------------------- 9. -o ''


@pytest.mark.parametrize("argv", [["compare", "-e", "likelihood"], ["formats"], ["thresholds", "-e", "likelihood"],
                                  ["report"]], ids=["compare", "formats", "thresholds", "report"])
def test_empty_output_name_wrote_into_the_current_folder_or_stdout(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("the project's own README\n")
    code, out, err = run(capsys, *argv, "-o", "")
    assert code == ExitStatus.USAGE
    one_error_line(err, "empty")
    assert out == ""
    assert everything_below(tmp_path) == ["README.md"]
    assert (tmp_path / "README.md").read_text() == "the project's own README\n"


# ------------------------------------------------------------------------------------- 10. encoding


@pytest.mark.parametrize("argv,stand_in", [
    (["compare", "-e", "likelihood", "-d", "fp32"], "inacc = inaccurate"),
    (["thresholds", "-e", "likelihood", "-d", "fp16"], "(pred 8 ok)"),
], ids=["compare", "thresholds"])
def test_ascii_stdout_was_a_unicode_encode_error(argv, stand_in):
    proc = python_m(*argv, env_extra={"PYTHONIOENCODING": "ascii", "COLUMNS": "160"})
    assert proc.returncode == ExitStatus.OK, proc.stderr.decode()
    assert proc.stderr == b""
    text = proc.stdout.decode("ascii")  # raises if anything is not ASCII
    assert stand_in in text


# ------------------------------------------------------------------------------------- 11. >&-


def test_closed_stdout_lost_the_output_silently(capsys):
    with stdout_replaced(None):  # what Python sets when started with fd 1 closed
        code = main(["formats"])
    out, err = capsys.readouterr()
    assert code == ExitStatus.USAGE
    one_error_line(err, "standard output is closed")


def test_closed_stdout_is_fine_when_nothing_goes_to_it(tmp_path, capsys):
    target = tmp_path / "f.json"
    with stdout_replaced(None):
        code = main(["formats", "--format", "json", "-o", str(target)])
    assert code == ExitStatus.OK, capsys.readouterr().err
    assert len(json.loads(target.read_text())["formats"]) == len(FORMATS)


def test_closed_stdout_in_a_real_process():
    proc = python_m("formats", stdout=None, stderr=subprocess.PIPE, capture_output=False,
                    preexec_fn=lambda: os.close(1))
    assert proc.returncode == ExitStatus.USAGE
    one_error_line(proc.stderr.decode(), "standard output is closed")


# ------------------------------------------------------------------------------------- 12. Ctrl-C


INTERRUPT_IMPORT = """
import builtins, sys
real = builtins.__import__
def interrupting(name, *args, **kwargs):
    if name == "numpy":
        raise KeyboardInterrupt
    return real(name, *args, **kwargs)
builtins.__import__ = interrupting
sys.argv = ["stabilitylab", "formats"]
from stabilitylab.__main__ import run
run()
"""


def test_ctrl_c_during_imports_was_a_traceback():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_IMPORT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == ExitStatus.INTERRUPTED
    assert proc.stderr == "stabilitylab: interrupted\n"
    assert proc.stdout == ""


def test_ctrl_c_during_a_command_is_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "compare", interrupted)  # the CLI calls the API's compare
    code, out, err = run(capsys, "compare", "-e", "likelihood")
    assert code == ExitStatus.INTERRUPTED
    assert err == "stabilitylab: interrupted\n"  # no blank line before it (click prints one)


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


def test_formats_help_said_four_formats_by_default(capsys):
    code, out, _ = run(capsys, "formats", "--help")
    assert code == ExitStatus.OK
    assert "Default: every format, the scale formats too" in " ".join(out.split())
    code, out, _ = run(capsys, "formats", "--format", "json")
    assert len(json.loads(out)["formats"]) == len(FORMATS) == 20
    code, out, _ = run(capsys, "compare", "--help")
    assert "Default: float16, bfloat16, float32, float64." in " ".join(out.split())


# ------------------------------------------------------------------------------------- 14. caps


def test_ten_thousand_rows_printed_twenty_thousand_lines_of_findings(tmp_path, capsys):
    """User logits print a summary that fits a screen, whatever the number of rows."""
    rows = 150
    x = np.tile([[1000.0, 0.0, -1000.0]], (rows, 1))  # every row overflows the naive softmax
    np.save(tmp_path / "x.npy", x)
    code, out, err = run(capsys, "compare", "-e", "softmax_ce", "-d", "fp32", "--logits", tmp_path / "x.npy")
    assert code == ExitStatus.OK, err
    assert len(out.splitlines()) < 80
    assert "150 / 0 / 0 / 0 / 0" in out  # every row overflows, counted
    assert "more kept in --format json" in " ".join(out.split())
    target = tmp_path / "all.txt"
    code, _, err = run(capsys, "compare", "-e", "softmax_ce", "-d", "fp32", "--logits", tmp_path / "x.npy",
                       "-o", target)
    assert code == ExitStatus.OK, err
    text = target.read_text()
    assert "│ 99 " in text and "more kept" not in text  # a file gets every kept failing row (100 per cell)


# ------------------------------------------------------------------------------------- 15. wrapping


def _tokens_of(table) -> set[str]:
    """Every number and name the table shows, as it must appear whole."""
    out = set()
    for row in [table.headers] + [[c.text for c in r] for r in table.rows]:
        for text in row:
            out.update(t for t in re.split(r"[\s,/]+", text) if t)
    return out


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_tables_broke_numbers_and_names_at_80_columns(width):
    from stabilitylab.analysis.engine import compare
    from stabilitylab.experiments import EXPERIMENTS
    from stabilitylab.experiments.likelihood import iid
    from stabilitylab.render.model import compare_sections, formats_table
    from stabilitylab.render.table import print_table

    comparison = compare([EXPERIMENTS["likelihood"], EXPERIMENTS["softmax_ce"]], DEFAULT_FORMATS,
                         {"likelihood": iid(0.999, 1000000000)})
    tables = [t for s in compare_sections(comparison) for t in s.tables] + [formats_table(list(ALL_FORMATS))]
    for table in tables:
        console = Console(width=width, file=io.StringIO(), color_system=None)
        print_table(console, table)
        text = console.file.getvalue()
        assert max(cell_len(line) for line in text.splitlines()) <= width
        words = set(re.split(r"[\s│┃|]+", text))
        missing = {t for t in _tokens_of(table) if not any(t in w for w in words)}
        assert not missing, (table.title, width, sorted(missing)[:10])


def test_case_label_wrapped_inside_a_number_in_a_real_80_column_run(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run(capsys, "compare", "-e", "likelihood", "-e", "softmax_ce", "--p", "0.999",
                         "--n", "1000000000")
    assert code == ExitStatus.OK, err
    assert max(cell_len(line) for line in out.splitlines()) <= 80
    assert "n=1000000000" in out and "naive_softmax_log" in out and "shifted_softmax_log" in out


# ------------------------------------------------------------------------------------- 16. symlinks


def test_output_to_a_symlink_replaced_the_link(tmp_path, capsys):
    real = tmp_path / "real.json"
    real.write_text('{"schema": "stabilitylab.formats/1", "formats": []}\n')  # an earlier output: replaceable
    link = tmp_path / "link.json"
    link.symlink_to(real.name)
    code, out, err = run(capsys, "formats", "--format", "json", "-o", link)
    assert code == ExitStatus.OK, err
    assert link.is_symlink() and os.readlink(link) == "real.json"
    assert len(json.loads(real.read_text())["formats"]) == len(FORMATS)
    assert sorted(os.listdir(tmp_path)) == ["link.json", "real.json"]


def test_output_to_a_dangling_symlink_creates_its_target(tmp_path, capsys):
    link = tmp_path / "link.json"
    link.symlink_to("made.json")
    code, out, err = run(capsys, "formats", "--format", "json", "-o", link)
    assert code == ExitStatus.OK, err
    assert link.is_symlink() and (tmp_path / "made.json").is_file()


def test_output_to_a_symlink_loop_is_refused(tmp_path, capsys):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    code, out, err = run(capsys, "formats", "-o", tmp_path / "a")
    assert code == ExitStatus.USAGE
    one_error_line(err)
    assert sorted(os.listdir(tmp_path)) == ["a", "b"] and (tmp_path / "a").is_symlink()


# ------------------------------------------------------------------------------------- 17. README, figures


def test_quick_start_failed_on_an_externally_managed_python():
    readme = (REPO / "README.md").read_text()
    quick = readme[readme.index("## Set up and run"):readme.index("## What it prints")]
    assert quick.index("python3 -m venv .venv && . .venv/bin/activate") < quick.index("python3 -m pip install")


def _texts_overlap(fig) -> list[tuple[str, str]]:
    """Pairs of visible texts (annotations, legend entries, panel labels) whose boxes overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent"))
             if t.get_visible() and t.get_text().strip() and type(t).__name__ in ("Text", "Annotation")]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1:] if box.overlaps(other)]


@pytest.fixture(scope="module")
def figure_rows():
    from stabilitylab.analysis.thresholds import thresholds
    from stabilitylab.experiments import EXPERIMENTS
    from stabilitylab.experiments.base import Settings

    return thresholds([EXPERIMENTS["likelihood"]], DEFAULT_FORMATS, Settings())


def test_likelihood_figure_inf_labels_overlapped(figure_rows):
    from stabilitylab.experiments.base import Settings
    from stabilitylab.render import plots

    captured = {}

    def keep(fig):
        captured["fig"] = fig
        return b""

    real = plots.likelihood_figure
    try:
        plots.likelihood_figure = lambda *args, **kwargs: real(*args, render=keep)
        report._likelihood_figure(DEFAULT_FORMATS, Settings(), figure_rows)
    finally:
        plots.likelihood_figure = real
    fig = captured["fig"]
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    for n in (8, 41, 46, 324):
        assert any(label.endswith(f"inf at n = {n}") for label in labels), labels
    assert _texts_overlap(fig) == []
    assert all(ax.get_legend() is None for ax in fig.axes)
    plots.plt.close(fig)


def test_family_figure_legend_covered_the_curves():
    from stabilitylab.render import plots

    d = np.linspace(0, 10, 50)
    panels = {f.name: {m: (d.copy(), np.isfinite(d)) for m in ("a", "b", "c")} for f in DEFAULT_FORMATS}
    fig = plots.family_figure("t", panels, d, {}, render=lambda f: f)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    plots.plt.close(fig)


def test_gradient_figure_spanned_1e10_to_1e_310_in_every_panel():
    """Each panel spans its own format (float16: about 1e-10 .. 1), not float64's range."""
    from stabilitylab.render import plots

    d = np.linspace(0, 100, 50)
    values = np.exp(-d)
    panels = {f.name: {"flat": np.ones_like(d), "falls": values} for f in DEFAULT_FORMATS}
    fig = plots.magnitude_figure("t", panels, d, render=lambda f: f)
    for ax, fmt in zip(fig.axes, DEFAULT_FORMATS):
        low, high = ax.get_ylim()  # in decades
        smallest = np.log10(FORMATS[fmt.name].smallest_subnormal)
        assert smallest - 4 <= low < smallest, (fmt.name, low)
        assert 0 < high <= 2, (fmt.name, high)
    plots.plt.close(fig)


# ------------------------------------------------------------------------------------- README table


def test_docs_exit_code_table_matches_exit_status():
    page = (REPO / "docs" / "reference" / "exit-codes.md").read_text()
    section = page[page.index("| code |"):]
    section = section[:section.index("\n\n")] if "\n\n" in section else section
    codes = [int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.M)]
    assert codes == sorted(int(s) for s in ExitStatus)


def test_baseline_load_is_the_one_validation(tmp_path):
    """baseline.load refuses what the CLI refuses, so the plugin and --update share it."""
    path = tmp_path / "b.json"
    path.write_text('{"schema": "stabilitylab.baseline/1", "settings": {"tolerance": ' + "9" * 400 + '}, '
                    '"entries": {}}')
    with pytest.raises(baseline.BaselineError, match="tolerance"):
        baseline.load(path)
