"""Open a user's logits and labels at real size (10^8+ values) without loading them.

A file is read in two steps.  Opening it parses only its header (the .npy header,
the zip directory and a member's .npy header, the safetensors JSON header, or the
torch pickle with memory-mapped storages) and checks everything that can be
checked there: the type, the shape, and that the file holds as many data bytes
as the shape needs.  A forged header (a huge shape in a tiny file, a zip bomb)
is refused before any data is read.  The data is then read block by block:

- .npy, .safetensors and uncompressed .npz members: each block is read from its
  byte offset in the file (``readinto`` of one block; nothing else stays resident,
  unlike a memory map whose touched pages count in the resident set);
- compressed .npz members (``numpy.savez_compressed``): decompressed sequentially;
- .pt / .pth: ``torch.load(mmap=True, weights_only=True)``, converted per block;
- .csv / .txt: small text (at most 512 MiB), parsed whole.

Blocks are float32 for storage types of at most 32 bits (float32, float16,
bfloat16, float8_e4m3fn, float8_e5m2: the conversion is exact) and float64 for
float64 and integer storage.  Every problem is one :class:`InputError` line naming
the file, what was wrong and what is allowed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, first_line, shown
from ..numerics.formats import FORMATS

__all__ = ["InputError", "LogitsSource", "open_logits", "logits_from_array", "read_labels", "labels_from_array",
           "check_labels",
           "default_rows_per_chunk", "SUFFIXES", "MAX_TEXT_BYTES"]

try:
    from lzma import LZMAError

    _LZMA_ERRORS: tuple[type[Exception], ...] = (LZMAError,)
except ImportError:  # Python built without lzma: zipfile cannot open such members either
    _LZMA_ERRORS = ()

# NotImplementedError / RuntimeError: unsupported or encrypted zip members; zlib / lzma: corrupt compressed data
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, NotImplementedError,
                RuntimeError, zlib.error, *_LZMA_ERRORS)

SUFFIXES = (".npy", ".npz", ".safetensors", ".pt", ".pth", ".csv", ".txt")
MAX_TEXT_BYTES = 512 * 2**20
MAX_FORTRAN_BYTES = 256 * 2**20  # column-major arrays are reordered in memory, so only this much
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit
DEFLATE_MAX_RATIO = 1040  # deflate cannot expand more than ~1032:1 (zlib -9 on zeros: 1029); more is forged
LABEL_BLOCK = 2**22  # labels are checked and converted this many at a time

NPY_MAGIC = b"\x93NUMPY"
NOT_NPY = ("it is not a NumPy .npy file (it does not start with the \\x93NUMPY header); allowed: "
           "an array saved with numpy.save (.npy) or numpy.savez (.npz), or numbers in a .csv / .txt file")

class _MlFloats:
    """ml_dtypes' dtypes of the formats experiments compute in (bfloat16, float8, float6, float4) -> their format
    names, as a read-only mapping that imports
    ml_dtypes (0.5-1.2 s with version 0.7) only when a name is looked up (:meth:`dtype`).  A dtype can be
    one of ml_dtypes' only once ml_dtypes is imported, so membership asks nothing before that: reading a
    float32 or float16 file never imports it."""

    _table: dict | None = None

    def table(self) -> dict:
        if _MlFloats._table is None:
            import ml_dtypes

            _MlFloats._table = {np.dtype(getattr(ml_dtypes, f.dtype_name)): f.name for f in FORMATS.values()
                                if not f.native and not f.scale_only and ":" not in f.name}
        return _MlFloats._table

    def __contains__(self, dtype) -> bool:
        return "ml_dtypes" in sys.modules and dtype in self.table()

    def __getitem__(self, dtype) -> str:
        return self.table()[dtype]

    def get(self, dtype, default=None):
        return self.table().get(dtype, default) if "ml_dtypes" in sys.modules else default

    def dtype(self, name: str) -> np.dtype:
        """The ml_dtypes dtype of a format name (``"bfloat16"``)."""
        return next(d for d, n in self.table().items() if n == name)


_ML_FLOATS = _MlFloats()

# safetensors dtype names (little-endian); BOOL is readable but refused for logits and labels; a string
# names an ml_dtypes format (see _safetensors_dtype)
_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
LOGITS_TYPES = ("float64, float32, float16, bfloat16, float8_e4m3fn, float8_e5m2, float8_e4m3fnuz, float8_e5m2fnuz "
                "or integers")



# ---------------------------------------------------------------------------------------------- backends
# A backend reads flat C-order elements of one stored tensor.  ``session()`` is a context manager giving
# ``read(start, count) -> 1-D array`` in the storage dtype; ``fresh`` says whether that array is a new
# buffer (False: it may be a view of memory the caller must not hand out, such as a torch mmap).
# ``verify()`` checks what can be checked of the whole tensor before a read out of order (the CRC-32 of a
# zip member); reads in order from the first element check it when they reach the last one.

PIECE = 2**20  # bytes read at a time when a zip member is verified


def _damaged(name: str) -> str:
    return (f"its member {shown(name, True)} is damaged: its CRC-32 does not match the zip directory (the bytes are "
            "not those that were saved); allowed: an intact file (save or copy it again)")


class _StoredCrc:
    """The CRC-32 of a stored (uncompressed) .npz member, whose bytes ``_FileSpan`` reads from the file.

    Reads in order from the first element extend a running CRC (the .npy header first), and the member's
    last bytes are checked when the last element is read; a read out of that order first verifies the whole
    member in one streamed pass (``PIECE`` bytes at a time).  Once it matched, nothing is checked again.
    """

    def __init__(self, name: str, start: int, size: int, data: int, end: int, expected: int):
        # file offset of the member's first byte, its size, and its element bytes' range [data, end) within it
        self.name, self.start, self.size, self.data, self.end, self.expected = name, start, size, data, end, expected
        self.ok = False
        self._at, self._crc = 0, 0  # member bytes covered in order so far, and their CRC

    def _crc_of(self, fh, begin: int, stop: int, crc: int) -> int:
        fh.seek(self.start + begin)
        while begin < stop:
            piece = fh.read(min(PIECE, stop - begin))
            if not piece:
                raise OSError(f"its member {shown(self.name, True)} is truncated")
            crc = zlib.crc32(piece, crc)
            begin += len(piece)
        return crc

    def _compare(self, crc: int) -> None:
        if crc != self.expected:
            raise OSError(_damaged(self.name))
        self.ok = True

    def verify(self, fh) -> None:
        if not self.ok:
            self._compare(self._crc_of(fh, 0, self.size, 0))

    def seen(self, fh, begin: int, data) -> None:
        """``data`` (bytes of elements) was just read from member offset ``begin``."""
        if self.ok:
            return
        if self._at == 0 and begin == self.data:  # the first element: the .npy header comes first
            self._crc, self._at = self._crc_of(fh, 0, self.data, 0), self.data
        if begin != self._at:
            self.verify(fh)
            return
        self._crc, self._at = zlib.crc32(data, self._crc), self._at + len(data)
        if self._at == self.end:
            self._compare(self._crc_of(fh, self.end, self.size, self._crc))


class _FileSpan:
    """Elements at a byte offset of a file, read with ``readinto`` (never memory-mapped)."""

    fresh = True

    def __init__(self, path: Path, offset: int, dtype: np.dtype, count: int, crc: _StoredCrc | None = None):
        self.path, self.offset, self.dtype, self.count, self.crc = path, offset, dtype, count, crc

    def verify(self) -> None:
        if self.crc is not None and not self.crc.ok:
            with open(self.path, "rb", buffering=0) as fh:
                self.crc.verify(fh)

    @contextlib.contextmanager
    def session(self):
        with open(self.path, "rb", buffering=0) as fh:
            def read(start: int, count: int) -> np.ndarray:
                out = np.empty(count, dtype=self.dtype)
                buf = memoryview(out.view(np.uint8))
                begin = self.offset + start * self.dtype.itemsize
                fh.seek(begin)
                done = 0
                while done < len(buf):
                    n = fh.readinto(buf[done:])
                    if not n:
                        raise OSError(f"it is truncated (data ends at byte {begin + done:,}; "
                                      f"{begin + len(buf):,} needed)")
                    done += n
                if self.crc is not None:
                    self.crc.seen(fh, begin - self.crc.start, buf)
                return out

            yield read


class _ZipStream:
    """Elements of a compressed zip member, decompressed sequentially (seeking back restarts)."""

    fresh = False

    def __init__(self, path: Path, name: str, offset: int, dtype: np.dtype, count: int):
        self.path, self.name, self.offset, self.dtype, self.count = path, name, offset, dtype, count
        self.ok = False  # the member's CRC-32 matched

    def _to_the_end(self, member) -> None:
        """Decompress the rest of the member: zipfile compares the CRC-32 of everything read from its
        start (seeking back restarts it) when it reaches the end."""
        while member.read(PIECE):
            pass
        self.ok = True

    @contextlib.contextmanager
    def _member(self):
        try:
            with zipfile.ZipFile(self.path) as z, z.open(self.name) as member:
                yield member
        except zipfile.BadZipFile as exc:
            if "CRC" in str(exc):  # zipfile's "Bad CRC-32 for file 'x.npy'"
                raise OSError(_damaged(self.name)) from None
            raise

    def verify(self) -> None:
        if not self.ok:
            with self._member() as member:
                self._to_the_end(member)

    @contextlib.contextmanager
    def session(self):
        with self._member() as member:
            def read(start: int, count: int) -> np.ndarray:
                size = self.dtype.itemsize
                member.seek(self.offset + start * size)  # forward: decompress and drop, in bounded pieces
                data = member.read(count * size)
                if len(data) != count * size:
                    raise OSError(f"its member {shown(self.name, True)} is truncated")
                if start + count == self.count and not self.ok:
                    self._to_the_end(member)
                return np.frombuffer(data, dtype=self.dtype)

            yield read


class _InMemory:
    """An array already in memory (text files), or loaded on first use (column-major arrays)."""

    fresh = False

    def __init__(self, array: np.ndarray | None = None, load: Callable[[], np.ndarray] | None = None):
        self._array, self._load = array, load

    def verify(self) -> None:
        self.flat()  # a column-major array is read whole (and so checked) when it is loaded

    def flat(self) -> np.ndarray:
        if self._array is None:
            self._array = np.ascontiguousarray(self._load()).reshape(-1)
            self._load = None
        return self._array.reshape(-1)

    @contextlib.contextmanager
    def session(self):
        flat = self.flat()
        yield lambda start, count: flat[start:start + count]


class _Torch:
    """A contiguous CPU tensor (memory-mapped by torch.load), viewed as numpy per block."""

    fresh = False

    def __init__(self, tensor, dtype: np.dtype):
        self.tensor, self.dtype = tensor.detach().reshape(-1), dtype  # detach: an nn.Parameter has grad

    def verify(self) -> None:
        """torch checks the zip's CRC-32s (if at all) in torch.load."""

    @contextlib.contextmanager
    def session(self):
        import torch

        view_as = {1: torch.uint8, 2: torch.int16}.get(self.dtype.itemsize) if self.dtype in _ML_FLOATS else None

        def read(start: int, count: int) -> np.ndarray:
            part = self.tensor[start:start + count]
            if view_as is not None:  # numpy has no bfloat16 / float8: move the bits, ml_dtypes reads them
                return part.view(view_as).numpy().view(self.dtype)
            return part.numpy()

        yield read


# ---------------------------------------------------------------------------------------------- opening


@dataclass
class _Tensor:
    """One stored tensor: where it is, its shape and storage dtype, and how to read it."""

    path: Path
    key: str | None
    shape: tuple[int, ...]
    dtype: np.dtype
    backend: object
    notes: list[str] = field(default_factory=list)
    where: _Where | None = None  # set by open_tensor

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @contextlib.contextmanager
    def reading(self, in_order: bool = True):
        """The backend's ``read(start, count)``; I/O and decompression errors, a damaged zip member and lack
        of memory become one InputError line.

        ``in_order``: the caller reads the elements in order from the first (a zip member's CRC-32 is then
        checked as the last one is read); False: anything else, so a zip member is verified whole first.
        """
        try:
            if not in_order:
                self.backend.verify()
            with self.backend.session() as read:
                yield read
        except InputError:
            raise
        except _READ_ERRORS as exc:
            raise self.where.unreadable(first_line(exc)) from None
        except MemoryError:
            raise self.where.out_of_memory("read", self.shape, self.dtype) from None

    def read_all(self) -> np.ndarray:
        """The whole tensor in its storage dtype, shape as stored (a new array)."""
        with self.reading() as read:
            flat = read(0, self.size)
        out = flat.reshape(self.shape)
        return out if self.backend.fresh else out.copy()


class _Where:
    """Message context: which file, which option, and how a key is passed."""

    def __init__(self, path: Path, what: str, option: str | None, key_option: str | None,
                 max_elements: int | None = None):
        self.path, self.what, self.option, self.key_option = path, what, option, key_option
        self.max_elements = max_elements

    def check_size(self, shape) -> None:
        """The caller's limit on the number of values (in-memory readers), checked from the header."""
        if self.max_elements is not None and math.prod(shape) > self.max_elements:
            raise self.fail(f"has shape {tuple(shape)}: more than {self.max_elements:,} values")

    def fail(self, message: str, option: str | None = None) -> InputError:
        return InputError(f"{self.what} file {shown(self.path)} {message}", option or self.option)

    def unreadable(self, detail: str) -> InputError:
        return self.fail(f"could not be read: {detail}")

    def out_of_memory(self, doing: str, shape, dtype: np.dtype) -> InputError:
        return out_of_memory(doing, self.what, self.path, shape, dtype, self.option)


PER_ROW_BYTES = 9  # what the bulk path holds for every row of the file: an int64 label and a bool "keep"


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def out_of_memory(doing: str, what: str, path, shape, dtype, option: str | None = None) -> InputError:
    """One InputError line for a MemoryError while ``doing`` something with a file of that shape and dtype:
    its size, what stabilitylab holds in memory for it, and what can be done."""
    shape = tuple(int(n) for n in shape)
    rows, classes = (math.prod(shape[:-1]), shape[-1]) if shape else (1, 1)
    dtype = np.dtype(dtype)
    name = _ML_FLOATS.get(dtype, dtype.name)
    if what == "logits":
        size = f"{rows:,} rows of {classes:,} classes"
        held = (f"stabilitylab holds {PER_ROW_BYTES} bytes per row ({_bytes(PER_ROW_BYTES * rows)}: labels and "
                "rows to skip) and one block of rows at a time")
    else:
        size = f"shape {shape}"
        held = f"stabilitylab holds 8 bytes per label ({_bytes(8 * math.prod(shape))})"
    return InputError(f"not enough memory to {doing} {what} file {shown(path)}; the file has {size} "
                      f"({name}, {_bytes(math.prod(shape) * dtype.itemsize)}) and {held}; free memory, or split the "
                      "file into parts of fewer rows", option)


def open_tensor(path, what: str, key: str | None, *, option: str | None, key_option: str | None,
          default_key: str | None, suffixes: tuple[str, ...] = SUFFIXES,
          max_elements: int | None = None) -> _Tensor:
    """The tensor ``key`` of the file (or its only / ``default_key`` tensor), checked from the header.

    ``key_option`` None: the caller offers no way to pick a tensor (a container must hold exactly one).
    ``max_elements``: refuse more values than this, from the header (before any other data check).
    """
    p = Path(path)
    where = _Where(p, what, option, key_option, max_elements)
    if not p.is_file():
        raise where.fail("does not exist or is not a file")
    suffix = p.suffix.lower()
    if suffix not in suffixes:
        raise where.fail(f"has suffix {shown(suffix or '(none)', True)}; allowed: {', '.join(suffixes)}")
    if key is not None and suffix in (".npy", ".csv", ".txt"):
        raise InputError(f"{key_option or 'a key'} {shown(key, True)} was given but {what} file {shown(p)} holds one "
                         "unnamed array; "
                         f"{key_option or 'a key'} picks a tensor in .npz, .safetensors, .pt and .pth files",
                         key_option)
    try:
        if suffix == ".npy":
            tensor = _open_npy(p, where)
        elif suffix == ".npz":
            tensor = _open_npz(p, where, key, default_key)
        elif suffix == ".safetensors":
            tensor = _open_safetensors(p, where, key, default_key)
        elif suffix in (".pt", ".pth"):
            tensor = _open_torch(p, where, key, default_key)
        else:
            array = read_text(p, what)
            where.check_size(array.shape)
            tensor = _Tensor(p, None, array.shape, array.dtype, _InMemory(array))
    except InputError as exc:
        if exc.option is None:
            exc.option = option
        raise
    except _READ_ERRORS as exc:
        raise where.unreadable(first_line(exc)) from None
    except MemoryError:  # a text file or a header (JSON, pickle) too large for the memory left
        raise InputError(f"not enough memory to open {what} file {shown(p)} ({_bytes(p.stat().st_size)}); free "
                         "memory, or save the array as .npy, whose data is read a block at a time", option) from None
    tensor.where = where
    return tensor


def read_text(p: Path, what: str) -> np.ndarray:
    """float64 numbers from a .csv / .txt file (comma or blank separated, # comments), at least 2-D."""
    if p.stat().st_size > MAX_TEXT_BYTES:
        raise InputError(f"{what} file {shown(p)} is larger than {MAX_TEXT_BYTES >> 20} MiB; use .npy")
    text = p.read_text(encoding="utf-8-sig")  # -sig: Excel starts its UTF-8 CSV with a BOM
    delimiter = "," if ("," in text or p.suffix.lower() == ".csv") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "input contained no data": checked below
        arr = np.loadtxt(text.splitlines(), delimiter=delimiter, ndmin=2, dtype=np.float64, comments="#")
    if arr.size == 0:
        raise InputError(f"{what} file {shown(p)} holds no numbers")
    return arr


def npy_header(fh, where: _Where) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from an open .npy stream, leaving it at the first data byte."""
    fmt = np.lib.format
    if fh.read(len(NPY_MAGIC)) != NPY_MAGIC:
        raise where.unreadable(NOT_NPY)
    major, _ = (fh.read(2) + b"\0\0")[:2]
    if major not in (1, 2, 3):
        raise where.unreadable(f"unknown .npy format version {major}")
    try:  # version 3 differs from 2 only in allowing a UTF-8 header
        shape, fortran_order, dtype = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(fh)
    except Exception as exc:  # noqa: BLE001 - numpy parses the header with tokenize and ast: any of their errors
        raise where.unreadable(f"its .npy header is malformed ({first_line(exc)})") from None
    if any(n < 0 for n in shape):
        raise where.unreadable(f"its header has shape {shape}")
    where.check_size(shape)
    check_dtype(dtype, where.what, where.path)
    return tuple(int(n) for n in shape), bool(fortran_order), dtype


def check_dtype(dtype: np.dtype, what: str, path) -> None:
    """Numbers (bool, integers, floats incl. ml_dtypes') pass; anything else is one InputError line."""
    if dtype.kind in "biuf" or dtype in _ML_FLOATS:
        return
    path = shown(path)
    if dtype.subdtype is not None:
        raise InputError(f"{what} file {path} holds sub-arrays ({dtype}); a plain array of numbers is required")
    if dtype.kind == "V" and dtype.names is None:
        raise InputError(f"{what} file {path} holds {dtype.itemsize}-byte raw values ({dtype.str}): that is how "
                         "numpy.save stores bfloat16 / float8 arrays of ml_dtypes, whose type it cannot record; "
                         "save them as float32 instead (x.astype(numpy.float32)) or with safetensors")
    if dtype.kind == "V":
        raise InputError(f"{what} file {path} holds records with fields ({', '.join(map(shown, dtype.names))}); "
                         "a plain array of numbers is required")
    if dtype.kind == "c":
        raise InputError(f"{what} file {path} holds {dtype} values; real numbers are required")
    raise InputError(f"{what} file {path} holds {dtype} values; numbers are required")


def _layout(p: Path, where: _Where, key, shape, fortran, dtype, span) -> _Tensor:
    """The tensor of a .npy stream whose data is ``span`` (a C-order backend over the stored bytes)."""
    if fortran and sum(n > 1 for n in shape) > 1:  # column-major, and it matters
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > MAX_FORTRAN_BYTES:
            raise where.fail(f"holds a column-major (Fortran-order) array of shape {shape} ({nbytes:,} bytes), which "
                             f"cannot be read row by row; at most {MAX_FORTRAN_BYTES >> 20} MiB of such data is "
                             "allowed: save it with numpy.save(path, numpy.ascontiguousarray(x))")

        def load() -> np.ndarray:
            with span.session() as read:
                return read(0, math.prod(shape)).reshape(shape, order="F")

        return _Tensor(p, key, shape, dtype, _InMemory(load=load))
    return _Tensor(p, key, shape, dtype, span)


def _truncated(have: int, need: int) -> str:
    return f"it is truncated ({have:,} of {need:,} data bytes)"


def _open_npy(p: Path, where: _Where) -> _Tensor:
    with open(p, "rb") as fh:
        shape, fortran, dtype = npy_header(fh, where)
        offset = fh.tell()
        have = os.fstat(fh.fileno()).st_size - offset
    need = math.prod(shape) * dtype.itemsize  # Python integers: a forged header cannot overflow
    if have < need:
        raise where.unreadable(_truncated(have, need))
    return _layout(p, where, None, shape, fortran, dtype, _FileSpan(p, offset, dtype, math.prod(shape)))


def _pick(names: list[str], key: str | None, default_key: str | None, where: _Where, unit: str,
          aliases: Callable[[str], tuple[str, ...]] = lambda n: (n,)) -> tuple[str, list[str]]:
    """(chosen name, notes): by ``key``; else the only one; else ``default_key``; else one InputError line.

    ``aliases(name)``: the keys that pick ``name``, the last one shown in messages (when keys can be passed).
    """
    listed = [aliases(n)[-1] for n in names] if where.key_option else names
    listing = ", ".join(map(shown, listed[:20])) + (", ..." if len(names) > 20 else "") if names else "none"
    if not names and where.key_option is not None:
        raise where.fail(f"holds no {unit}s")
    if key is not None:
        for name in names:
            if key in aliases(name):
                return name, []
        raise where.fail(f"has no {unit} named {shown(key, True)}; it holds {len(names)}: {listing}", where.key_option)
    if len(names) == 1:
        return names[0], []
    if where.key_option is None:
        raise where.fail(f"holds {len(names)} {unit}s ({listing}); an {shown(where.path.suffix.lower())} must hold "
                         "exactly one")
    for name in names:
        if default_key is not None and default_key in aliases(name):
            return name, [f"{where.what}: {unit} {shown(name, True)} of {shown(where.path.name)}, which holds "
                          f"{len(names)} {unit}s ({where.key_option} picks another)"]
    raise where.fail(f"holds {len(names)} {unit}s ({listing}); pass {where.key_option} NAME to pick one")


def _open_npz(p: Path, where: _Where, key: str | None, default_key: str | None) -> _Tensor:
    def aliases(name: str) -> tuple[str, ...]:
        return (name, name[:-4]) if name.endswith(".npy") else (name,)

    with zipfile.ZipFile(p) as z:
        name, notes = _pick(z.namelist(), key, default_key, where, "array", aliases)
        info = z.getinfo(name)
        deflated = info.compress_type == zipfile.ZIP_DEFLATED
        if deflated and info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 2**16:
            raise where.unreadable(f"its member {shown(name, True)} claims {info.file_size:,} bytes from "
                                   f"{info.compress_size:,} compressed bytes, more than deflate can produce "
                                   "(a forged zip)")
        with z.open(info) as member:
            shape, fortran, dtype = npy_header(member, where)
            offset = member.tell()
        need = math.prod(shape) * dtype.itemsize
        if info.file_size - offset < need:
            raise where.unreadable(_truncated(max(info.file_size - offset, 0), need))
        count = math.prod(shape)
        if info.compress_type == zipfile.ZIP_STORED:  # numpy.savez: the bytes lie in the file as they are
            with open(p, "rb") as fh:
                fh.seek(info.header_offset)
                local = fh.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise where.unreadable(f"its member {shown(name, True)} has a corrupt local header")
                start = info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30]))
                have = os.fstat(fh.fileno()).st_size - start - offset
            if have < need:
                raise where.unreadable(_truncated(max(have, 0), need))
            crc = _StoredCrc(name, start, info.file_size, offset, offset + need, info.CRC)
            span = _FileSpan(p, start + offset, dtype, count, crc)
        else:  # numpy.savez_compressed: decompress as blocks are asked for
            span = _ZipStream(p, name, offset, dtype, count)
    tensor = _layout(p, where, aliases(name)[-1], shape, fortran, dtype, span)
    tensor.notes = notes
    return tensor


def _open_safetensors(p: Path, where: _Where, key: str | None, default_key: str | None) -> _Tensor:
    """The documented layout: u64 little-endian N, N bytes of UTF-8 JSON, then the data buffer."""
    size = p.stat().st_size
    with open(p, "rb") as fh:
        first = fh.read(8)
        if len(first) < 8:
            raise where.unreadable(f"it is {len(first)} bytes long, too short for a safetensors file")
        (n,) = struct.unpack("<Q", first)
        if n > size - 8 or n > MAX_SAFETENSORS_HEADER:
            raise where.unreadable(f"its safetensors header claims {n:,} bytes but the file has {size - 8:,} after "
                                   f"the length (at most {MAX_SAFETENSORS_HEADER:,} allowed): not a safetensors file "
                                   "or truncated")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise where.unreadable(f"its safetensors header is not valid UTF-8 JSON ({first_line(exc)})") from None
    if not isinstance(header, dict):
        raise where.unreadable("its safetensors header is not a JSON object")
    data_size = size - 8 - n
    names = [name for name in header if name != "__metadata__"]
    for name in names:
        entry = header[name]
        ok = (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
              and isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)
              and all(type(v) is int and v >= 0 for v in entry["shape"])
              and len(entry["data_offsets"]) == 2 and all(type(v) is int for v in entry["data_offsets"]))
        if not ok:
            raise where.unreadable(f"its safetensors header entry {shown(name, True)} is malformed (it needs "
                                   "\"dtype\", \"shape\" of non-negative integers and \"data_offsets\" [begin, end])")
        begin, end = entry["data_offsets"]
        if not 0 <= begin <= end or end > data_size:
            raise where.unreadable(f"tensor {shown(name, True)} lies at bytes {begin:,}..{end:,} of a "
                                   f"{data_size:,}-byte data buffer: the file is truncated or its header corrupt")
        dtype = _safetensors_dtype(entry["dtype"])
        if dtype is not None and end - begin != math.prod(entry["shape"]) * dtype.itemsize:
            raise where.unreadable(f"tensor {shown(name, True)} of shape {tuple(entry['shape'])} and dtype "
                                   f"{shown(entry['dtype'])} needs {math.prod(entry['shape']) * dtype.itemsize:,} "
                                   "bytes but its data_offsets "
                                   f"span {end - begin:,}")
    name, notes = _pick(names, key, default_key, where, "tensor")
    entry = header[name]
    where.check_size(entry["shape"])
    dtype = _safetensors_dtype(entry["dtype"])
    if dtype is None:
        raise where.fail(f"holds tensor {shown(name, True)} of dtype {shown(entry['dtype'])}; allowed: "
                         f"{', '.join(k for k in _SAFETENSORS_DTYPES if k != 'BOOL')}")
    shape = tuple(entry["shape"])
    span = _FileSpan(p, 8 + n + entry["data_offsets"][0], dtype, math.prod(shape))
    return _Tensor(p, name, shape, dtype, span, notes)


def _safetensors_dtype(name) -> np.dtype | None:
    """The numpy dtype of a safetensors dtype name (None: not one stabilitylab reads)."""
    dtype = _SAFETENSORS_DTYPES.get(name) if isinstance(name, str) else None
    return _ML_FLOATS.dtype(dtype) if isinstance(dtype, str) else dtype


def _torch_dtypes(torch) -> dict:
    table = {torch.float64: np.dtype(np.float64), torch.float32: np.dtype(np.float32),
             torch.float16: np.dtype(np.float16), torch.bfloat16: _ML_FLOATS.dtype("bfloat16"),
             torch.int64: np.dtype(np.int64), torch.int32: np.dtype(np.int32), torch.int16: np.dtype(np.int16),
             torch.int8: np.dtype(np.int8), torch.uint8: np.dtype(np.uint8), torch.bool: np.dtype(np.bool_)}
    for name, dtype in (("float8_e4m3fn", _ML_FLOATS.dtype("float8_e4m3fn")),
                        ("float8_e5m2", _ML_FLOATS.dtype("float8_e5m2")),
                        ("float8_e4m3fnuz", _ML_FLOATS.dtype("float8_e4m3fnuz")),
                        ("float8_e5m2fnuz", _ML_FLOATS.dtype("float8_e5m2fnuz")), ("uint16", np.dtype(np.uint16)),
                        ("uint32", np.dtype(np.uint32)), ("uint64", np.dtype(np.uint64))):
        if hasattr(torch, name):
            table[getattr(torch, name)] = dtype
    return table


def _open_torch(p: Path, where: _Where, key: str | None, default_key: str | None) -> _Tensor:
    try:
        import torch
    except ImportError:
        raise where.fail("cannot be read here: reading .pt files needs torch: pip install 'stabilitylab[torch]'") \
            from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - unpickling and torch's zip reader raise many kinds of error
        raise where.unreadable(f"torch.load failed ({first_line(exc)})") from None
    if isinstance(obj, torch.Tensor):
        if key is not None:
            raise InputError(f"{where.key_option or 'a key'} {shown(key, True)} was given but {where.what} file "
                             f"{shown(p)} holds "
                             "one tensor, not a dict of tensors", where.key_option)
        name, notes, tensor = None, [], obj
    elif isinstance(obj, dict):
        names = [k for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)]
        name, notes = _pick(names, key, default_key, where, "tensor")
        tensor = obj[name]
    else:
        raise where.fail(f"holds a {type(obj).__name__}; allowed: a tensor or a dict of tensors (torch.save)")
    where.check_size(tensor.shape)
    dtype = _torch_dtypes(torch).get(tensor.dtype)
    if dtype is None:
        raise where.fail(f"holds a {str(tensor.dtype).removeprefix('torch.')} tensor; allowed: {LOGITS_TYPES}")
    if tensor.layout != torch.strided:
        raise where.fail(f"holds a {tensor.layout} tensor; a dense tensor is required (t.to_dense())")
    what = "the tensor" if name is None else f"tensor {shown(name, True)}"
    if tensor.device.type == "meta":
        raise where.fail(f"holds {what} on device meta, which has a shape but no data (it was saved from a "
                         "tensor made with device='meta'); allowed: a tensor with its values (save t.cpu() of a "
                         "real tensor)")
    if tensor.device.type != "cpu":
        raise where.fail(f"holds {what} on device {shown(tensor.device)}, which cannot be read here; allowed: a CPU "
                         "tensor (save t.cpu())")
    if not tensor.is_contiguous():
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > MAX_FORTRAN_BYTES:
            raise where.fail(f"holds a non-contiguous tensor of {nbytes:,} bytes, which cannot be read row by row; "
                             f"at most {MAX_FORTRAN_BYTES >> 20} MiB of such data is allowed: "
                             "save t.contiguous() instead")
        tensor = tensor.contiguous()
    backend = _Torch(tensor, dtype)
    try:  # a tensor whose values torch cannot hand over (a subclass, an unusual storage): say so now
        with backend.session() as read:
            read(0, min(1, tensor.numel()))
    except Exception as exc:  # noqa: BLE001 - torch raises TypeError, RuntimeError, NotImplementedError, ...
        raise where.fail(f"holds {what}, whose values cannot be read ({first_line(exc)}); allowed: a dense CPU "
                         "tensor (save t.cpu().contiguous())") from None
    return _Tensor(p, name, tuple(tensor.shape), dtype, backend, notes)


# ---------------------------------------------------------------------------------------------- public API


def _block_dtype(dtype: np.dtype) -> np.dtype:
    """float32 for floats of at most 32 bits (exact), float64 for float64 and integers."""
    if dtype in _ML_FLOATS or (dtype.kind == "f" and dtype.itemsize <= 4):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _format_name(dtype: np.dtype) -> str | None:
    if dtype in _ML_FLOATS:
        return _ML_FLOATS[dtype]
    return "float16" if dtype.kind == "f" and dtype.itemsize == 2 else None


@dataclass
class LogitsSource:
    """Logits in a file, opened from its header; rows are read on demand.

    ``shape`` is as stored; ``rows`` is the product of all but the last dimension (a
    1-D array is one row) and ``classes`` the last.  ``dtype`` is the storage dtype;
    ``format`` the stabilitylab format name when that is narrower than float32.
    ``key`` is the tensor's name in a container (.npz, .safetensors, dict in .pt),
    None for a single-array file.
    """

    path: Path
    key: str | None
    shape: tuple[int, ...]
    rows: int
    classes: int
    dtype: np.dtype
    format: str | None
    notes: list[str]
    _tensor: _Tensor = field(repr=False, compare=False)

    @property
    def readable_anywhere(self) -> bool:
        """Whether any process may read any rows at no extra cost (:meth:`read`): an uncompressed span of a
        file with no checksum left to verify (.npy, .safetensors, a stored .npz member's is checked in
        order).  Forked workers then read their own chunks instead of receiving them pickled."""
        backend = self._tensor.backend
        return isinstance(backend, _FileSpan) and backend.crc is None

    @property
    def block_dtype(self) -> np.dtype:
        """dtype of the blocks: float32 for storage of at most 32 bits, float64 for float64 and integers."""
        return _block_dtype(self.dtype)

    def _block(self, raw: np.ndarray, n: int) -> np.ndarray:
        block = raw.astype(self.block_dtype, copy=not self._tensor.backend.fresh)
        return block.reshape(n, self.classes)

    def out_of_memory(self, doing: str) -> InputError:
        """The InputError line for a MemoryError while ``doing`` (e.g. "compute the losses of") this file."""
        return out_of_memory(doing, "logits", self.path, self.shape, self.dtype, "--logits")

    def chunks(self, rows_per_chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first_row, block) in row order; block is (n, classes), C-contiguous, of ``block_dtype``.

        Conversion is exact (float16 / bfloat16 / float8 -> float32).  Only the block
        (and one raw block of the storage dtype) is resident; compressed .npz members
        are decompressed once, sequentially.
        """
        if rows_per_chunk < 1:
            raise ValueError(f"rows_per_chunk must be >= 1; got {rows_per_chunk}")
        with self._tensor.reading() as read:
            for first in range(0, self.rows, rows_per_chunk):
                n = min(rows_per_chunk, self.rows - first)
                yield first, self._block(read(first * self.classes, n * self.classes), n)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as one (stop - start, classes) block (compressed .npz: decompresses up to ``stop``)."""
        if not 0 <= start <= stop <= self.rows:
            raise IndexError(f"rows {start}:{stop} are outside 0:{self.rows}")
        with self._tensor.reading(in_order=False) as read:
            return self._block(read(start * self.classes, (stop - start) * self.classes), stop - start)

    def take(self, rows) -> np.ndarray:
        """The rows at the given indices (ascending) as one (len(rows), classes) block, in one reading
        session (a compressed .npz member is decompressed once, forward, up to the last row)."""
        rows = [int(r) for r in rows]
        if rows != sorted(rows) or (rows and not 0 <= rows[0] <= rows[-1] < self.rows):
            raise IndexError(f"rows must be ascending indices in 0:{self.rows}")
        with self._tensor.reading() as read:
            blocks = [self._block(read(r * self.classes, self.classes), 1) for r in rows]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.classes), self.block_dtype)


def open_logits(path, key: str | None = None) -> LogitsSource:
    """Open logits of shape (rows, classes) or (..., classes) from their file's header only.

    Allowed files: .npy, .npz, .safetensors, .pt / .pth (needs torch), .csv / .txt.
    In a container, ``key`` names the tensor; without it the only tensor is used, or
    else the one named ``logits`` (with a note).  Raises :class:`InputError` (option
    ``--logits`` or ``--key``).
    """
    tensor = open_tensor(path, "logits", key, option="--logits", key_option="--key", default_key="logits")
    return _logits_source(tensor)


def _logits_source(tensor: _Tensor) -> LogitsSource:
    """The tensor as logits: numbers of at most 64 bits (not bool), every dimension >= 1."""
    p, shape, dtype = tensor.path, tensor.shape, tensor.dtype
    if dtype.kind == "b":
        raise InputError(f"logits file {shown(p)} holds bool values; allowed: {LOGITS_TYPES}", "--logits")
    if dtype not in _ML_FLOATS and dtype.kind == "f" and dtype.itemsize > 8:
        raise InputError(f"logits file {shown(p)} holds {dtype} values; allowed: {LOGITS_TYPES}", "--logits")
    if not shape or 0 in shape:
        raise InputError(f"logits file {shown(p)} has shape {shape}; logits must have shape (rows, classes) or "
                         "(..., classes) with every dimension >= 1", "--logits")
    fmt = _format_name(dtype)
    notes = list(tensor.notes)
    if fmt is not None:
        notes.append(f"logits are stored as {fmt}: values are already in that format")
    return LogitsSource(p, tensor.key, shape, math.prod(shape[:-1]), shape[-1], dtype, fmt, notes, tensor)


def logits_from_array(array, name: str = "<array>") -> LogitsSource:
    """A :class:`LogitsSource` over an in-memory array (tests, and callers that already hold the data).

    Same checks and conversions as :func:`open_logits`; ``name`` stands for the file in messages.
    """
    array = np.ascontiguousarray(array)
    p = Path(name)
    try:
        check_dtype(array.dtype, "logits", p)
    except InputError as exc:
        exc.option = "--logits"
        raise
    tensor = _Tensor(p, None, array.shape, array.dtype, _InMemory(array),
                     where=_Where(p, "logits", "--logits", None))
    return _logits_source(tensor)


def read_labels(path, key: str | None, logits: LogitsSource, notes: list[str] | None = None) -> np.ndarray:
    """int64 labels, one per logits row, fully loaded (converted a block at a time).

    The shape must be ``logits.shape[:-1]`` or ``(rows,)`` (also ``(rows, 1)`` / ``(1, rows)``);
    the dtype integer, or float with integral values.  Values are not range-checked
    here (see :func:`check_labels`).  In a container the tensor is ``key``, the only
    one, or the one named ``labels`` (a note is appended to ``notes``, if given).
    Raises :class:`InputError` (option ``--labels`` or ``--labels-key``).
    """
    tensor = open_tensor(path, "labels", key, option="--labels", key_option="--labels-key", default_key="labels")
    return _labels(tensor, logits, notes)


def labels_from_array(array, logits: LogitsSource, name: str = "<labels array>") -> np.ndarray:
    """:func:`read_labels` of an in-memory array (anything ``numpy.asarray`` takes): the same checks."""
    array = np.ascontiguousarray(array)
    p = Path(name)
    if array.dtype.kind not in "biuf" and array.dtype not in _ML_FLOATS:
        raise InputError(f"labels {name} hold {array.dtype} values; integer class indices are required", "--labels")
    where = _Where(p, "labels", "--labels", None)
    return _labels(_Tensor(p, None, array.shape, array.dtype, _InMemory(array), where=where), logits, None)


def _labels(tensor: _Tensor, logits: LogitsSource, notes: list[str] | None) -> np.ndarray:
    p, shape, dtype = tensor.path, tensor.shape, tensor.dtype
    if dtype.kind == "b":
        raise InputError(f"labels file {shown(p)} holds bool values; integer class indices are required", "--labels")
    if dtype not in _ML_FLOATS and dtype.kind == "f" and dtype.itemsize > 8:
        raise InputError(f"labels file {shown(p)} holds {dtype} values; integers are required", "--labels")
    rows = logits.rows
    if not (shape == logits.shape[:-1] or (math.prod(shape) == rows and sum(n != 1 for n in shape) <= 1)):
        want = f"{logits.shape[:-1]} or ({rows},)" if len(logits.shape) > 2 else f"({rows},)"
        raise InputError(f"labels file {shown(p)} has shape {shape} but the logits {logits.shape} have {rows:,} rows; "
                         f"labels must have shape {want}", "--labels")
    try:
        out = np.empty(rows, dtype=np.int64)
    except MemoryError:
        raise logits.out_of_memory("hold the labels of") from None
    with tensor.reading() as read:
        for first in range(0, rows, LABEL_BLOCK):
            n = min(LABEL_BLOCK, rows - first)
            out[first:first + n] = _integral(read(first, n), first, p)
    if notes is not None:
        notes.extend(tensor.notes)
    return out


def _integral(raw: np.ndarray, first: int, p: Path) -> np.ndarray:
    """int64 labels from a raw block, or one InputError line naming the first bad row."""
    if raw.dtype.kind in "iu":
        if raw.dtype.kind == "u" and raw.dtype.itemsize == 8:
            big = raw > np.iinfo(np.int64).max
            if big.any():
                row = first + int(np.flatnonzero(big)[0])
                raise InputError(f"labels file {shown(p)}: label {int(raw[row - first])} in row {row} is larger "
                                 "than any class index", "--labels")
        return raw.astype(np.int64)
    y = raw.astype(np.float64)
    bad = ~np.isfinite(y) | (y != np.round(y)) | (np.abs(y) >= 2.0**63)
    if bad.any():
        row = first + int(np.flatnonzero(bad)[0])
        raise InputError(f"labels file {shown(p)}: label in row {row} is {float(y[row - first])!r}; labels must be "
                         "integers", "--labels")
    return y.astype(np.int64)


def check_labels(labels: np.ndarray, classes: int, ignore_index: int | None) -> tuple[np.ndarray, list[str]]:
    """(keep_mask, notes): rows whose label is not ``ignore_index``; the others must lie in 0..classes-1.

    Raises :class:`InputError` (option ``--labels``) naming the first row whose label
    is out of range and not the ignore index, or when every row is ignored.
    """
    labels = np.asarray(labels)
    try:
        keep = np.ones(labels.shape, dtype=bool) if ignore_index is None else labels != ignore_index
    except MemoryError:
        raise InputError(f"not enough memory to mark the rows to keep; the file has {labels.size:,} rows, and "
                         f"stabilitylab holds {PER_ROW_BYTES} bytes per row ({_bytes(PER_ROW_BYTES * labels.size)}: "
                         "labels and rows to skip); free memory, or split the file into parts of fewer rows",
                         "--labels") from None
    for first in range(0, labels.size, LABEL_BLOCK):
        part, kept = labels[first:first + LABEL_BLOCK], keep[first:first + LABEL_BLOCK]
        bad = kept & ((part < 0) | (part >= classes))
        if bad.any():
            row = first + int(np.flatnonzero(bad)[0])
            allowed = f"0..{classes - 1}" + ("" if ignore_index is None else f" or the ignore index {ignore_index}")
            hint = " (pass --ignore-index to skip such rows)" if ignore_index is None and labels[row] < 0 else ""
            raise InputError(f"label {int(labels[row])} in row {row} is out of range; allowed {allowed}{hint}",
                             "--labels")
    skipped = labels.size - int(np.count_nonzero(keep))
    if labels.size and skipped == labels.size:
        raise InputError(f"every row ({labels.size:,}) has label {ignore_index} (--ignore-index): nothing to compute",
                         "--labels")
    notes = []
    if skipped:
        notes.append(f"{skipped:,} row{'s' if skipped != 1 else ''} with label {ignore_index} skipped (--ignore-index)")
    return keep, notes


def default_rows_per_chunk(classes: int, budget_elements: int = 2**20) -> int:
    """Rows per block so that a block holds about ``budget_elements`` values (at least one row)."""
    return max(1, budget_elements // max(classes, 1))
