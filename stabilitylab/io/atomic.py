"""Write files atomically: a temporary file in the same folder, then rename.

Targets: a regular file (replaced, its permission bits kept) or a new name in an
existing folder.  A symlink is written *through*: the file it points to is
replaced atomically and the link stays.  Anything else that exists (a folder, a
device such as /dev/null, a pipe, a socket) is refused: a rename would replace
the device with a regular file, and a pipe cannot be written atomically.

Every failure is a :class:`WriteError` (an ``OSError``) whose ``filename`` is the
target and whose ``strerror`` says why; the target is then left as it was and no
temporary file remains.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TextIO

from ..errors import WriteError, shown

__all__ = ["WriteError", "write_text", "write_bytes", "write_tree", "check_writable", "check_folder",
           "resolve_target"]


def _kind(mode: int) -> str | None:
    """What a non-regular file is, for messages (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def resolve_target(path: str | os.PathLike) -> Path:
    """The file that writing ``path`` replaces: ``path`` itself, or where its symlinks lead.

    Raises WriteError if it is empty, exists and is not a regular file, or is a
    symlink loop.
    """
    if not os.fspath(path):
        raise WriteError(errno.EINVAL, "the file name is empty", "''")
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows symlinks: /dev/fd/63 is a pipe, not a link
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise WriteError(exc.errno, exc.strerror or str(exc), str(path)) from None
    if mode is not None and _kind(mode):
        raise WriteError(errno.EINVAL, f"it is {_kind(mode)}, not a regular file", str(path))
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if target.is_symlink():
        raise WriteError(errno.ELOOP, "it is a symlink loop", str(path))
    return target


def _new_file(folder: Path, name: str, data: bytes, mode: int) -> Path:
    """A temporary file in ``folder`` holding ``data``, flushed to disk."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _as_write_error(exc: OSError, path) -> WriteError:
    if isinstance(exc, WriteError):
        return exc
    return WriteError(exc.errno, exc.strerror or str(exc), str(path))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename; readers never see a partial file."""
    try:
        target = resolve_target(path)
        tmp = _new_file(target.parent, target.name, data, _mode_for(target))
        try:
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise _as_write_error(exc, path) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def streamed_text(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file written piece by piece into a temporary file next to ``path``, which
    replaces ``path`` in one rename when the block ends without an exception (else it is
    removed and ``path`` is untouched): output too large to hold in memory, still atomic."""
    try:
        target = resolve_target(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.chmod(tmp, _mode_for(target))
    except OSError as exc:
        raise _as_write_error(exc, path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _as_write_error(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tree(folder: str | os.PathLike, files: Mapping[str, bytes]) -> list[Path]:
    """Write ``{relative path: bytes}`` below ``folder``: all of them or none.

    Every file is first written (and fsynced) into a hidden staging folder inside
    ``folder``; only when all are on disk are they renamed into place.  On a
    failure (a full disk) the staging folder and any folder this call created are
    removed, so an existing report is left whole and no partial one appears.
    """
    root = Path(folder)
    if not os.fspath(folder):
        raise WriteError(errno.EINVAL, "the folder name is empty", "''")
    created = [p for p in (root, *root.parents) if not p.exists()]
    targets = {rel: root / rel for rel in files}
    try:
        for target in targets.values():
            if target.exists() or target.is_symlink():
                resolve_target(target)  # refuse a folder or device where a file goes
        root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".stabilitylab-", suffix=".tmp", dir=root))
        try:
            staged = {}
            for rel, data in files.items():
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                staged[rel] = _new_file((stage / rel).parent, Path(rel).name, data,
                                        _mode_for(resolve_target(targets[rel])))
            for rel, tmp in staged.items():
                target = resolve_target(targets[rel])
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:
        for p in created:  # deepest first: only the folders this call made, and only if empty
            try:
                p.rmdir()
            except OSError:
                pass
        raise _as_write_error(exc, root) from None
    return list(targets.values())


def check_writable(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be written as a file (None if it can), checked before any work."""
    try:
        target = resolve_target(path)
    except WriteError as exc:
        return (f"{shown(exc.filename)}: {exc.strerror}; give the name of a regular file to write atomically "
                "(for a pipe or device, leave out the option and use standard output)")
    parent = target.parent
    if not parent.is_dir():
        return f"folder {shown(parent)} does not exist"
    if not os.access(parent, os.W_OK):
        return f"folder {shown(parent)} is not writable"
    return None


def check_folder(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot receive a report (None if it can), without creating anything."""
    if not os.fspath(folder):
        return "the folder name is empty; give a folder, e.g. reports"
    target = Path(folder)
    if target.exists() and not target.is_dir():
        return f"{shown(target)} exists and is not a folder"
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        return f"{shown(existing)} is not a writable folder"
    return None
