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
