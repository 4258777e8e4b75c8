"""Regression tests for issue #18 (readers and output): one test per bug, named after what broke.

Bad input is one line on stderr and exit 2 (never 1, which means a regression, nor 70, an internal
error), and reading a data file never runs code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from clihelp import one_error_line, run, stdout_replaced

from stabilitylab.analysis import streaming
from stabilitylab.cli import check as cli_check
from stabilitylab.cli import main
from stabilitylab.errors import BaselineError, InputError, shown
from stabilitylab.io import sources, userdata
from stabilitylab.io.output import GuardedStream
from stabilitylab.io.sources import open_logits, read_labels
from stabilitylab.render.table import MAX_COLUMNS, PIPE_WIDTH, columns
from stabilitylab.status import ExitStatus

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "reports" / "thresholds.json"
RNG = np.random.default_rng(18)
X = RNG.standard_normal((600, 50)).astype(np.float32)  # 120 kB: larger than zipfile's read-ahead






def one_line(exc: BaseException, *fragments: str) -> str:
    message = str(exc)
    assert message.isprintable(), message  # no newline, carriage return or escape code
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def python_m(*args, env_extra=None, drop=(), **kwargs) -> subprocess.CompletedProcess:
    """``python -m stabilitylab ARGS`` with this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    for name in drop:
        env.pop(name, None)
    env.update(env_extra or {})
    kwargs.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-m", "stabilitylab", *map(str, args)], cwd=REPO, env=env, timeout=300,
                          check=False, text=True, **kwargs)




# ------------------------------------------------------------------------ 1. CRC-32 of .npz members


def _flip_data_byte(path: Path, data: bytes, at: int) -> None:
    raw = bytearray(path.read_bytes())
    i = raw.find(data[:64])
    assert i > 0
    raw[i + at] ^= 0x01
    path.write_bytes(bytes(raw))


def _stored_with_a_bad_byte(path: Path, at: int = 100_000) -> None:
    np.savez(path, logits=X, labels=X.argmax(axis=1))
    _flip_data_byte(path, X.tobytes(), at)


def _compressed_with_a_wrong_crc(path: Path) -> None:
    np.savez_compressed(path, logits=X)
    crc = struct.pack("<I", zipfile.ZipFile(path).getinfo("logits.npy").CRC)
    raw = path.read_bytes()
    assert raw.count(crc) == 2  # local header and central directory
    path.write_bytes(raw.replace(crc, struct.pack("<I", int.from_bytes(crc, "little") ^ 1)))


@pytest.mark.parametrize("damage", [_stored_with_a_bad_byte, _compressed_with_a_wrong_crc])
def test_npz_member_with_a_corrupted_byte_was_read_silently(tmp_path, capsys, damage):
    path = tmp_path / "x.npz"
    damage(path)
    with pytest.raises(Exception, match="CRC-32"):  # numpy itself refuses the file
        np.load(path)["logits"]
    code, out, err = run(capsys, "compare", "--logits", path)
    assert code == ExitStatus.USAGE and out == ""
    one_error_line(err, "'--logits'", str(path), "member 'logits.npy' is damaged", "CRC-32")
    # every way of reading the member checks it: in order (chunks, a read to the end) and out of order (a
    # few rows: the whole member is verified first)
    for read in (lambda s: list(s.chunks(7)), lambda s: s.read(0, s.rows), lambda s: s.read(0, 1),
                 lambda s: s.read(590, 600), lambda s: s.read(300, 301)):
        with pytest.raises(InputError) as info:
            read(open_logits(path, "logits"))
        assert info.value.option == "--logits"
        one_line(info.value, str(path), "'logits.npy' is damaged")
    if damage is _compressed_with_a_wrong_crc:  # the in-memory reader (audit --logits): the same check
        with pytest.raises(InputError) as info:
            userdata.read_array(path, "logits")
        one_line(info.value, str(path), "'logits.npy' is damaged")


def test_npz_labels_member_with_a_corrupted_byte_was_read_silently(tmp_path, capsys):
    path = tmp_path / "x.npz"
    np.savez(path, logits=X, labels=np.arange(600) % 50)
    _flip_data_byte(path, (np.arange(600) % 50).tobytes(), 2000)
    code, out, err = run(capsys, "compare", "--logits", path, "--key", "logits", "--labels", path,
                         "--labels-key", "labels")
    assert code == ExitStatus.USAGE and out == ""
    one_error_line(err, "'--labels'", "labels file", "member 'labels.npy' is damaged")


def test_npz_crc_is_checked_without_a_second_pass_or_a_whole_copy(tmp_path, monkeypatch):
    """An intact member reads as before: the CRC of an in-order pass is computed on the blocks as they are
    read; the rest of the member (its .npy header, here) is read in pieces of at most PIECE bytes."""
    path = tmp_path / "x.npz"
    np.savez(path, logits=X)
    src = open_logits(path)
    monkeypatch.setattr(sources, "PIECE", 16)
    assert np.array_equal(np.concatenate([b for _, b in src.chunks(64)]), X)
    assert src._tensor.backend.crc.ok
    assert np.array_equal(open_logits(path).read(5, 9), X[5:9])  # verified whole first, then read
    np.savez_compressed(path, logits=X)
    assert np.array_equal(np.concatenate([b for _, b in open_logits(path).chunks(64)]), X)
    assert np.array_equal(open_logits(path).read(5, 9), X[5:9])


# ------------------------------------------------------------------------ 2. MemoryError, meta tensors


def _sparse_npy(path: Path, shape: tuple[int, ...], dtype) -> None:
    """A .npy whose header claims ``shape``, its data a hole (no disk space used)."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                  "shape": shape})
        fh.truncate(fh.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize)


@pytest.mark.skipif(sys.platform != "linux", reason="needs RLIMIT_AS and sparse files")
def test_memory_error_holding_the_labels_was_an_internal_error(tmp_path):
    """10^9 rows: 8 GB of int64 labels, in a process allowed 3 GB of address space (a real MemoryError)."""
    import resource

    _sparse_npy(tmp_path / "x.npy", (10**9, 2), np.float16)
    _sparse_npy(tmp_path / "y.npy", (10**9,), np.int8)
    limit = 3 * 2**30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = python_m("compare", "--logits", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", preexec_fn=cap,
                    env_extra={"OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == ExitStatus.USAGE, proc.stderr
    one_error_line(proc.stderr, "not enough memory to hold the labels of logits file",
                   "1,000,000,000 rows of 2 classes", "free memory, or split the file")


def test_memory_error_reading_a_block_or_a_header_was_an_internal_error(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", X)
    src = open_logits(tmp_path / "x.npy")

    @contextlib.contextmanager
    def session(self):
        def read(start, count):
            raise MemoryError

        yield read

    monkeypatch.setattr(sources._FileSpan, "session", session)
    np.save(tmp_path / "y.npy", X.argmax(axis=1))
    for read, name in ((lambda: list(src.chunks(10)), "logits file"), (lambda: src.read(0, 3), "logits file"),
                       (lambda: read_labels(tmp_path / "y.npy", None, src), "labels file")):
        with pytest.raises(InputError) as info:
            read()
        one_line(info.value, f"not enough memory to read {name}", "free memory")
    with pytest.raises(InputError) as info:
        list(src.chunks(10))
    one_line(info.value, "the file has 600 rows of 50 classes (float32, 120.0 kB)")

    (tmp_path / "x.csv").write_text("1,2\n3,4\n")
    monkeypatch.setattr(sources.np, "loadtxt", _raise_memory_error)
    with pytest.raises(InputError) as info:
        open_logits(tmp_path / "x.csv")
    one_line(info.value, "not enough memory to open logits file", "x.csv")
    assert info.value.option == "--logits"


def _raise_memory_error(*args, **kwargs):
    raise MemoryError


def test_memory_error_computing_the_losses_was_an_internal_error(tmp_path, capsys, monkeypatch):
    """The bulk path: the whole-file arrays, a block or a worker's results; the file's size in the line."""
    np.save(tmp_path / "x.npy", X)
    monkeypatch.setattr(streaming, "run_chunk", _raise_memory_error)
    for extra in ((), ("--rows", "all")):
        code, out, err = run(capsys, "compare", "--logits", tmp_path / "x.npy", *extra)
        assert code == ExitStatus.USAGE and out == ""
        one_error_line(err, "'--logits'", "not enough memory to compute the losses of logits file",
                       "600 rows of 50 classes")


def test_memory_error_marking_the_rows_to_keep_was_an_internal_error(monkeypatch):
    monkeypatch.setattr(sources.np, "ones", _raise_memory_error)
    with pytest.raises(InputError) as info:
        sources.check_labels(np.zeros(5, np.int64), 3, None)
    one_line(info.value, "not enough memory to mark the rows to keep; the file has 5 rows")


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed: the .pt reader is not used")


@pytest.mark.parametrize("container", [False, True])
def test_meta_device_tensor_in_a_pt_was_an_internal_error(tmp_path, capsys, container):
    torch = _torch()
    meta = torch.empty(3, 4, device="meta")
    torch.save({"logits": meta} if container else meta, tmp_path / "m.pt")
    code, out, err = run(capsys, "compare", "--logits", tmp_path / "m.pt")
    assert code == ExitStatus.USAGE and out == ""
    one_error_line(err, str(tmp_path / "m.pt"), "tensor 'logits'" if container else "the tensor",
                   "on device meta, which has a shape but no data")


def test_tensor_whose_values_torch_cannot_hand_over_was_an_internal_error(tmp_path, capsys, monkeypatch):
    """Any other tensor .numpy() refuses (here: made to refuse) is one line at opening, not exit 70."""
    torch = _torch()
    torch.save(torch.zeros(3, 4), tmp_path / "x.pt")

    def refuse(self):
        raise TypeError("can't convert xla:0 device type tensor to numpy")

    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    code, out, err = run(capsys, "compare", "--logits", tmp_path / "x.pt")
    assert code == ExitStatus.USAGE
    one_error_line(err, "whose values cannot be read (can't convert xla:0", "save t.cpu().contiguous()")


# ------------------------------------------------------------------------ 3. control characters in names

NASTY = "a\nb\x1b[31mc\r\u2028d"
NASTY_SHOWN = "a\\nb\\x1b[31mc\\r\\u2028d"


def test_shown_escapes_control_characters_and_nothing_else():
    assert shown(NASTY) == NASTY_SHOWN
    assert shown(NASTY, quote=True) == f"'{NASTY_SHOWN}'"
    assert shown("été/x y.npy") == "été/x y.npy"
    assert shown("\udcff\x7f\x85\t") == "\\udcff\\x7f\\x85\\t"  # undecodable byte of a file name, DEL, NEL, tab
    assert shown(shown(NASTY)) == shown(NASTY)  # idempotent: a message can pass through it twice
    assert str(InputError(f"x {NASTY}")) == f"x {NASTY_SHOWN}"
    assert str(BaselineError(f"baseline {NASTY}")) == f"baseline {NASTY_SHOWN}"


def _safetensors(path: Path, entries: dict[str, tuple[str, bytes]]) -> None:
    header, data = {}, b""
    for name, (dtype, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": [len(raw) // 4], "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _nasty_files(d: Path) -> list[tuple[list, str]]:
    """(compare arguments, the escaped name the one error line must show)"""
    row = np.zeros(4, np.float32).tobytes()
    _safetensors(d / "names.safetensors", {NASTY: ("F32", row), "b\x1b]0;title\x07": ("F32", row)})
    _safetensors(d / "dtype.safetensors", {"logits": ("F32\n\x1b[2J", row)})
    np.savez(d / "names.npz", **{NASTY: X[:2], "other": X[:2]})
    (d / f"{NASTY}.npy").write_text("not numpy")
    return [
        (["--logits", d / f"{NASTY}.npy"], f"{NASTY_SHOWN}.npy"),  # a file name (that exists)
        (["--logits", d / f"missing{NASTY}.npy"], f"missing{NASTY_SHOWN}.npy"),  # ... and one that does not
        (["--logits", d / "names.safetensors"], NASTY_SHOWN),  # tensor names from the header
        (["--logits", d / "names.safetensors"], "b\\x1b]0;title\\x07"),
        (["--logits", d / "names.safetensors", "--key", f"k{NASTY}"], f"'k{NASTY_SHOWN}'"),  # a key
        (["--logits", d / "dtype.safetensors"], "F32\\n\\x1b[2J"),  # a dtype from the header
        (["--logits", d / "names.npz"], NASTY_SHOWN),  # member names of an npz
        (["--logits", d / "names.npz", "--key", f"{NASTY}.npy", "--labels", d / f"{NASTY}.npy"], NASTY_SHOWN),
    ]


@pytest.mark.parametrize("index", range(8))
def test_newlines_and_escape_codes_in_names_went_raw_into_the_one_line_message(tmp_path, capsys, index):
    argv, expected = _nasty_files(tmp_path)[index]
    code, out, err = run(capsys, "compare", *argv)
    assert code == ExitStatus.USAGE and out == ""
    line = one_error_line(err, expected)
    assert line.isprintable()


def test_escape_codes_in_a_pt_key_went_raw_into_the_one_line_message(tmp_path, capsys):
    torch = _torch()
    torch.save({NASTY: torch.zeros(2, 3), "other": torch.zeros(2, 3)}, tmp_path / "x.pt")
    code, out, err = run(capsys, "compare", "--logits", tmp_path / "x.pt")
    assert code == ExitStatus.USAGE
    assert one_error_line(err, NASTY_SHOWN, "pass --key NAME").isprintable()


def test_escape_codes_in_a_name_went_raw_into_a_note(tmp_path):
    np.savez(tmp_path / f"{NASTY}.npz", logits=X[:2], other=X[:2])
    src = open_logits(tmp_path / f"{NASTY}.npz")
    assert src.notes and all(note.isprintable() for note in src.notes), src.notes


def test_escape_codes_in_an_output_name_went_raw_into_the_one_line_message(tmp_path, capsys):
    code, out, err = run(capsys, "formats", "-o", tmp_path / f"no{NASTY}" / "out.txt")
    assert code == ExitStatus.USAGE
    assert one_error_line(err, f"no{NASTY_SHOWN}", "does not exist").isprintable()


# ------------------------------------------------------------------------ 4. short writes to stdout


class ShortRaw(io.RawIOBase):
    """An unbuffered file whose writes take at most ``piece`` bytes, and nothing once ``room`` is used up
    (a disk that fills up)."""

    def __init__(self, piece: int, room: int | None = None):
        self.piece, self.room, self.data = piece, room, bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = min(len(b), self.piece)
        if self.room is not None:
            n = min(n, self.room - len(self.data))
        self.data += bytes(b[:n])
        return n


def unbuffered(raw: ShortRaw) -> io.TextIOWrapper:
    """What ``PYTHONUNBUFFERED=1`` makes of standard output: a write-through text layer over the raw file."""
    return io.TextIOWrapper(raw, encoding="utf-8", write_through=True)


@pytest.mark.parametrize("argv", [["formats", "--format", "json"], ["compare", "--format", "markdown"],
                                  ["compare", "-e", "likelihood"]])
def test_short_writes_to_unbuffered_stdout_lost_the_output_silently(capsys, argv):
    code, expected, err = run(capsys, *argv)
    assert code == ExitStatus.OK and len(expected) > 2000, err
    raw = ShortRaw(piece=1000)  # short writes that make progress: everything arrives
    with stdout_replaced(unbuffered(raw)):
        code = main(argv)
    assert code == ExitStatus.OK, capsys.readouterr().err
    assert raw.data.decode() == expected
    raw = ShortRaw(piece=4096, room=1500)  # a full disk: one line and exit 2, not exit 0 with 1500 bytes
    with stdout_replaced(unbuffered(raw)):
        code = main(argv)
    out, err = capsys.readouterr()
    assert code == ExitStatus.USAGE
    one_error_line(err, "cannot write to standard output", "stopped after")


def test_guarded_stream_keeps_buffered_writes_to_the_text_layer():
    """A buffered stdout (the default) retries short writes itself: its text layer is used as before."""
    raw = ShortRaw(piece=10)
    stream = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8")
    guarded = GuardedStream(stream, "<stdout>", strict=True)
    guarded.write("x" * 100_000 + "·\n")
    guarded.flush()
    assert raw.data.decode() == "x" * 100_000 + "·\n"


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
@pytest.mark.parametrize("unbuffered_env", ["1", None])
def test_stdout_on_a_nearly_full_disk_kept_exit_0(tmp_path, unbuffered_env):
    """RLIMIT_FSIZE as the nearly full disk: the write of the whole JSON document takes 4096 bytes."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    with open(tmp_path / "out.json", "w") as out:
        proc = python_m("compare", "--format", "json", stdout=out, stderr=subprocess.PIPE, capture_output=False,
                        preexec_fn=cap, drop=("PYTHONUNBUFFERED",),
                        env_extra={"PYTHONUNBUFFERED": unbuffered_env} if unbuffered_env else None)
    assert proc.returncode == ExitStatus.USAGE, proc.stderr
    one_error_line(proc.stderr, "cannot write to standard output", "File too large")
    assert (tmp_path / "out.json").stat().st_size == 4096


# ------------------------------------------------------------------------ 5. COLUMNS


BAD_COLUMNS = ["0", "-5", "abc", "99999999", "", " ", "+80", "8_0", str(MAX_COLUMNS + 1)]


@pytest.mark.parametrize("value", BAD_COLUMNS)
def test_unusable_columns_are_treated_as_unset(value):
    assert columns({"COLUMNS": value}) is None
    assert columns({}) is None
    assert columns({"COLUMNS": "80"}) == 80 and columns({"COLUMNS": str(MAX_COLUMNS)}) == MAX_COLUMNS


_UNSET: dict[tuple, tuple[int, str]] = {}
_THRESHOLDS: dict[str, list] = {}


def _memoized_thresholds(experiments, formats, settings, tolerance, *rest):
    """check recomputes every threshold (~3 s): once per module is enough to test how it prints."""
    key = repr((tuple(e.name for e in experiments), tuple(f.name for f in formats), settings, tolerance, rest))
    if key not in _THRESHOLDS:
        _THRESHOLDS[key] = cli_run_thresholds(experiments, formats, settings, tolerance, *rest)
    return _THRESHOLDS[key]


cli_run_thresholds = cli_check.run_thresholds
COMMANDS = {"compare": ["compare"], "thresholds": ["thresholds", "-e", "likelihood", "-d", "fp32"],
            "check": ["check", "--baseline", BASELINE], "check --all": ["check", "--baseline", BASELINE, "--all"]}


@pytest.mark.parametrize("value", ["0", "-5", "abc", "99999999"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_columns_zero_printed_no_table(monkeypatch, capsys, command, value):
    """In-process (stdout captured: not a terminal): the output of an unset COLUMNS, 160 wide."""
    monkeypatch.setattr(cli_check, "run_thresholds", _memoized_thresholds)
    argv = COMMANDS[command]
    if command not in _UNSET:
        monkeypatch.delenv("COLUMNS", raising=False)
        code, out, _ = run(capsys, *argv)
        _UNSET[command] = code, out
    code, out = _UNSET[command]
    assert code in (ExitStatus.OK, ExitStatus.REGRESSION) and out.strip()
    monkeypatch.setenv("COLUMNS", value)
    assert run(capsys, *argv)[:2] == (code, out)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= PIPE_WIDTH
    if command != "check":
        assert any("┃" in line for line in lines)  # a table
    if command.startswith("check"):
        assert "entries compared" in lines[-1]


_UNSET_PROCESS: dict[str, str] = {}


@pytest.mark.parametrize("value", ["0", "-5", "abc", "99999999"])
@pytest.mark.parametrize("command", ["compare", "thresholds"])
def test_columns_zero_printed_nothing_in_a_real_process(command, value):
    argv = COMMANDS[command]
    if command not in _UNSET_PROCESS:
        unset = python_m(*argv, drop=("COLUMNS",))
        assert unset.returncode == ExitStatus.OK and "┃" in unset.stdout, unset.stderr
        _UNSET_PROCESS[command] = unset.stdout
    proc = python_m(*argv, env_extra={"COLUMNS": value})
    assert proc.returncode == ExitStatus.OK, proc.stderr
    assert proc.stdout == _UNSET_PROCESS[command]


def test_columns_zero_printed_no_check_summary_in_a_real_process():
    proc = python_m("check", "--baseline", BASELINE, env_extra={"COLUMNS": "0"})
    assert proc.returncode in (ExitStatus.OK, ExitStatus.REGRESSION), proc.stderr
    assert "entries compared" in proc.stdout


# ------------------------------------------------------------------------ 6. reading never runs code


class RunsCode:
    """Unpickling this runs a shell command (the classic pickle payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _assert_refused_without_running(capsys, path: Path, marker: Path, *fragments: str) -> None:
    code, out, err = run(capsys, "compare", "--logits", path)
    assert code == ExitStatus.USAGE and out == ""
    one_error_line(err, str(path), *fragments)
    with pytest.raises(InputError):
        userdata.read_array(path, "logits") if path.suffix in (".npy", ".npz") else open_logits(path)
    assert not marker.exists(), "reading the file ran the code in it"


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pt_with_a_code_running_pickle_was_refused_without_running_it(tmp_path, capsys, how):
    torch = _torch()
    marker = tmp_path / "ran"
    payload = {"logits": torch.zeros(2, 3), "labels": RunsCode(marker)}
    if how == "torch.save":
        torch.save(payload, tmp_path / "x.pt")
    else:  # a bare pickle (torch's legacy format) named .pt
        (tmp_path / "x.pt").write_bytes(pickle.dumps(payload))
    _assert_refused_without_running(capsys, tmp_path / "x.pt", marker, "torch.load failed")


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_numpy_file_with_a_code_running_pickle_was_refused_without_running_it(tmp_path, capsys, suffix):
    marker = tmp_path / "ran"
    array = np.array([RunsCode(marker), 1.0], dtype=object)
    path = tmp_path / f"x{suffix}"
    np.save(path, array) if suffix == ".npy" else np.savez(path, logits=array)
    _assert_refused_without_running(capsys, path, marker, "holds object values; numbers are required")
