"""Write files atomically and safely: a temporary file in the same folder, then rename.

Targets: a regular file (replaced, its permission bits kept) or a new name in an
existing folder.  A symlink is written *through*: the file it points to is
replaced atomically and the link stays.  Anything else that exists (a folder, a
device such as /dev/null, a pipe, a socket) is refused: a rename would replace
the device with a regular file, and a pipe cannot be written atomically.  A name
that ends with a path separator (``out/``) asks for a folder and is refused too.

Every failure is a :class:`WriteError` (an ``OSError``) whose ``filename`` is the
target and whose ``strerror`` says why; the target is then left as it was and no
temporary file remains.

What else this module guarantees (issue #18, "Files lost"):

* **Nothing stabilitylab did not write is replaced silently.**  :func:`check_outputs`, called by a
  command before any work, refuses (:class:`~stabilitylab.errors.OutputRefused`, one line, exit 2) an
  existing file without stabilitylab's marker (see :mod:`stabilitylab.io.markers`) unless ``force``;
  an output that is also an input or another output of the command (even with ``force``); a
  read-only file (by ``os.access`` and by its mode bits: root ignores permissions); and a name
  ending in a separator for a single-file output.
* **All outputs of one command or none.**  Inside :func:`transaction` every write goes to a
  temporary next to its target; the renames happen together when the block ends without an
  exception.  If a rename fails, the targets already replaced are put back (from hard-linked
  backups) and the rest are left alone; if the block raises, nothing is replaced.  Transactions
  nest: an inner one joins the outer.
* **Read-modify-write under a lock.**  :func:`lock` takes an exclusive ``flock`` on a sidecar
  ``<file>.lock`` and holds it until the transaction's renames are done, so two processes that
  read, change and write one baseline run one after the other and both changes survive.  The
  sidecar is removed on release (its inode is re-checked after locking, so removing it is safe).
* **No temporary survives a signal.**  Live temporaries (files being written, staged renames,
  backups, lock sidecars) are registered; :func:`install_signal_cleanup` (the CLI calls it once)
  removes them on SIGTERM and SIGHUP before dying of the signal as usual, and at interpreter exit.
  SIGINT raises KeyboardInterrupt, whose unwinding removes them as any exception does.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import errno
import functools
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar

from ..errors import OutputRefused, WriteError, shown
from . import markers

__all__ = ["WriteError", "OutputRefused", "write_text", "write_bytes", "streamed_text", "write_tree",
           "check_writable", "check_folder", "resolve_target", "Output", "check_outputs", "Transaction",
           "transaction", "transactional", "after_commit", "lock", "install_signal_cleanup", "remove_temporaries",
           "live_temporaries"]


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


def _names_folder(name: str) -> bool:
    """Whether ``name`` ends with a path separator (``out/``): a folder is asked for."""
    return name.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep))


def resolve_target(path: str | os.PathLike) -> Path:
    """The file that writing ``path`` replaces: ``path`` itself, or where its symlinks lead.

    Raises WriteError if it is empty, ends with a separator, exists and is not a regular
    file, or is a symlink loop.
    """
    name = os.fspath(path)
    if not name:
        raise WriteError(errno.EINVAL, "the file name is empty", "''")
    if _names_folder(name):
        raise WriteError(errno.EISDIR, "the name ends with a separator, so it names a folder; give a file name",
                         name)
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


# ------------------------------------------------------------------ live temporaries
_LIVE: dict[str, int] = {}  # path -> the pid that made it (a forked worker must not remove its parent's)


def _track(path: str | os.PathLike) -> None:
    _LIVE[os.fspath(path)] = os.getpid()


def _untrack(path: str | os.PathLike) -> None:
    _LIVE.pop(os.fspath(path), None)


def live_temporaries() -> list[str]:
    """The temporaries this process has made and not yet renamed or removed (for tests and diagnostics)."""
    pid = os.getpid()
    return [p for p, owner in list(_LIVE.items()) if owner == pid]


def _remove(path: str | os.PathLike) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass
    _untrack(path)


def remove_temporaries() -> None:
    """Remove every live temporary of this process (safe to call from a signal handler or at exit)."""
    for path in live_temporaries():
        _remove(path)


_INSTALLED: set[int] = set()
_CLEANUP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _on_signal(signum: int, frame) -> None:
    remove_temporaries()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # die of the signal, as without the handler (exit status 128 + signum)


def install_signal_cleanup(signals: Iterable[int] = _CLEANUP_SIGNALS) -> None:
    """Remove live temporaries on SIGTERM / SIGHUP (then die of the signal) and at interpreter exit.

    Call once from the program's entry point; calling again does nothing.  A signal whose handler is
    not the default (an application embedding stabilitylab set its own) is left alone, and so is every
    signal outside the main thread, where handlers cannot be set.
    """
    if not _INSTALLED:
        atexit.register(remove_temporaries)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in signals:
        if signum in _INSTALLED:
            continue
        try:
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _on_signal)
        except (OSError, ValueError):  # not settable here
            continue
        _INSTALLED.add(signum)
    _INSTALLED.add(0)  # atexit registered


# ------------------------------------------------------------------ transactions
_CURRENT: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar("stabilitylab_transaction",
                                                                               default=None)


class Transaction:
    """Outputs of one command, all replaced at the end or none (see :func:`transaction`).

    ``stage`` records a written temporary and its target; ``commit`` renames them all (putting back
    the targets already replaced if one rename fails); ``abort`` removes the temporaries and the
    folders this transaction created.  Locks taken with :func:`lock` are released after either.
    """

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}  # target -> temporary
        self._created: list[Path] = []  # folders made, parents first
        self._locks: list[tuple[Path, int]] = []
        self._after: list[Callable[[], object]] = []
        self.closed = False

    # what writers call
    def stage(self, tmp: Path, target: Path) -> None:
        old = self._staged.pop(target, None)
        if old is not None:  # written twice: the last one wins
            _remove(old)
        self._staged[target] = tmp

    def make_folders(self, folder: Path) -> None:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        for p in reversed(missing):
            p.mkdir(exist_ok=True)
            self._created.append(p)

    def mark(self) -> tuple[int, int]:
        return len(self._staged), len(self._created)

    def undo_since(self, mark: tuple[int, int]) -> None:
        """Forget (and remove) what was staged or created after ``mark``: a writer that failed halfway."""
        for target in list(self._staged)[mark[0]:]:
            _remove(self._staged.pop(target))
        for folder in reversed(self._created[mark[1]:]):
            with contextlib.suppress(OSError):
                folder.rmdir()
        del self._created[mark[1]:]

    @property
    def targets(self) -> list[Path]:
        return list(self._staged)

    # the end
    def commit(self) -> None:
        done: list[tuple[Path, Path | None]] = []
        try:
            for target, tmp in self._staged.items():
                backup = _backup(target)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    if backup is not None:
                        _remove(backup)
                    raise
                _untrack(tmp)
                done.append((target, backup))
        except OSError as exc:
            for replaced, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, replaced)
                        _untrack(backup)
                    else:
                        replaced.unlink()
            self.abort()
            raise _as_write_error(exc, target) from None
        finally:
            for _, backup in done:
                if backup is not None:
                    _remove(backup)
        self._staged.clear()
        self._created.clear()
        self._release()
        after, self._after = self._after, []
        for function in after:
            function()

    def abort(self) -> None:
        self.undo_since((0, 0))
        self._after.clear()
        self._release()

    def _release(self) -> None:
        while self._locks:
            sidecar, fd = self._locks.pop()
            with contextlib.suppress(OSError):
                os.unlink(sidecar)  # while still holding it: a waiter re-checks the inode it locked
            _untrack(sidecar)
            with contextlib.suppress(OSError):
                os.close(fd)
        self.closed = True


def _backup(target: Path) -> Path | None:
    """A hard link to the file ``target`` is about to lose (None if there is none, or links are not possible)."""
    if not target.exists():
        return None
    for attempt in range(100):
        backup = target.with_name(f".{target.name}.{os.getpid()}-{attempt}.bak.tmp")
        try:
            os.link(target, backup)
        except FileExistsError:
            continue
        except OSError:  # no hard links here: no backup (the renames are still all-or-nothing before the first)
            return None
        _track(backup)
        return backup
    return None


@contextlib.contextmanager
def transaction() -> Iterator[Transaction]:
    """Every write inside the block (:func:`write_bytes`, :func:`write_text`, :func:`streamed_text`,
    :func:`write_tree`) is staged; all are renamed into place when the block ends without an exception,
    none if it raises.  Inside an outer transaction this joins it (the outer one commits)."""
    outer = _CURRENT.get()
    if outer is not None:
        yield outer
        return
    tx = Transaction()
    token = _CURRENT.set(tx)
    try:
        yield tx
    except BaseException:
        tx.abort()
        raise
    else:
        tx.commit()
    finally:
        _CURRENT.reset(token)


def after_commit(function: Callable, *args, **kwargs) -> None:
    """Call ``function(*args, **kwargs)`` once the current transaction has replaced every file (never if it is aborted);
    at once outside a transaction.  For messages such as "wrote 12 tests to T", which must not be said of
    a file that was not written after all."""
    tx = _CURRENT.get()
    if tx is None:
        function(*args, **kwargs)
    else:
        tx._after.append(functools.partial(function, *args, **kwargs))


F = TypeVar("F", bound=Callable)


def transactional(function: F) -> F:
    """Run ``function`` inside :func:`transaction` (joining the caller's, if any)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with transaction():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def lock(path: str | os.PathLike) -> None:
    """Hold an exclusive lock on ``path`` (a sidecar ``<path>.lock``) until the current transaction's
    renames are done: call it before reading a file that the transaction rewrites.

    Another process holding it is waited for (one line on stderr says so).  Must be called inside
    :func:`transaction`; taking the same lock twice in one transaction does nothing.
    """
    import fcntl

    tx = _CURRENT.get()
    if tx is None:
        raise RuntimeError("atomic.lock() is held until a transaction ends: call it inside atomic.transaction()")
    target = resolve_target(path)
    sidecar = target.with_name(target.name + ".lock")
    if any(held == sidecar for held, _ in tx._locks):
        return
    told = False
    while True:
        try:
            fd = os.open(sidecar, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise _as_write_error(exc, sidecar) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    with contextlib.suppress(OSError, ValueError, AttributeError):
                        sys.stderr.write(f"stabilitylab: waiting for another stabilitylab writing {path}\n")
                        sys.stderr.flush()
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.stat(sidecar).st_ino:  # not removed by its last holder meanwhile
                break
        except FileNotFoundError:
            pass
        except OSError as exc:
            os.close(fd)
            raise _as_write_error(exc, sidecar) from None
        os.close(fd)
    _track(sidecar)
    tx._locks.append((sidecar, fd))


# ------------------------------------------------------------------ writing
def _new_file(folder: Path, name: str, data: bytes, mode: int) -> Path:
    """A temporary file in ``folder`` holding ``data``, flushed to disk (registered as live)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    _track(tmp)
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _remove(tmp)
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


def _put(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target`` now, or stage it in the current transaction."""
    tx = _CURRENT.get()
    if tx is not None:
        tx.stage(tmp, target)
        return
    try:
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    _untrack(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename; readers never see a partial file.
    Inside :func:`transaction` the rename waits for the end of the transaction."""
    try:
        target = resolve_target(path)
        _put(_new_file(target.parent, target.name, data, _mode_for(target)), target)
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
    removed and ``path`` is untouched): output too large to hold in memory, still atomic.
    The temporary is registered while it grows, so a signal removes it (see :func:`install_signal_cleanup`)."""
    try:
        target = resolve_target(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        _track(tmp)
        os.chmod(tmp, _mode_for(target))
    except OSError as exc:
        if "tmp" in locals():
            _remove(tmp)
        raise _as_write_error(exc, path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _put(Path(tmp), target)
    except OSError as exc:
        _remove(tmp)
        raise _as_write_error(exc, path) from None
    except BaseException:
        _remove(tmp)
        raise


def write_tree(folder: str | os.PathLike, files: Mapping[str, bytes]) -> list[Path]:
    """Write ``{relative path: bytes}`` below ``folder``: all of them or none.

    Every file is first written (and fsynced) into a temporary beside its target; only when
    all are on disk are they renamed into place (at the end of the current :func:`transaction`,
    if any).  On a failure (a full disk) the temporaries and any folder this call created are
    removed, so an existing report is left whole and no partial one appears.
    """
    root = Path(folder)
    if not os.fspath(folder):
        raise WriteError(errno.EINVAL, "the folder name is empty", "''")
    targets = {rel: root / rel for rel in files}
    with transaction() as tx:
        mark = tx.mark()
        try:
            for target in targets.values():
                if target.exists() or target.is_symlink():
                    resolve_target(target)  # refuse a folder or device where a file goes
            for rel, data in files.items():
                target = resolve_target(targets[rel])
                tx.make_folders(target.parent)
                tx.stage(_new_file(target.parent, target.name, data, _mode_for(target)), target)
        except OSError as exc:
            tx.undo_since(mark)
            raise _as_write_error(exc, root) from None
        except BaseException:
            tx.undo_since(mark)
            raise
    return list(targets.values())


# ------------------------------------------------------------------ checks before any work
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


@dataclass(frozen=True)
class Output:
    """One output of a command: the ``option`` that names it (``-o``, ``--emit-pytest``), its ``path``
    (None: not asked for), and its ``kind``: ``"file"`` (replaced whole), ``"baseline"`` (read, merged
    and rewritten: an existing file must be a stabilitylab baseline, whatever ``force`` says),
    ``"validated"`` (read, merged and rewritten by a command that validates it itself before any work:
    only the checks that do not read it) or ``"folder"`` (``report -o``: README.md and figures/ below it)."""

    option: str
    path: str | os.PathLike | None
    kind: str = "file"


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are one file: by inode if both exist, else by their resolved paths
    (symlinks, ``..``, relative or absolute)."""
    with contextlib.suppress(OSError):
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _read_only(path: str | os.PathLike) -> bool:
    """Read-only by its permissions or by its mode bits (root may write anything, but a 0444 file
    says "do not replace me")."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not os.access(path, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def _refuse_existing(label: str, target: Path, kind: str, force: bool) -> None:
    """Refuse replacing the existing regular file ``target`` (the output shown as ``label``) if it may not be."""
    if _read_only(target):
        raise OutputRefused(f"{label} is read-only, so it is not replaced; make it writable or choose another path")
    if kind == "validated":
        return
    if kind == "baseline":
        schema = markers.json_schema(target)
        if schema is None or not schema.startswith("stabilitylab.baseline/"):
            raise OutputRefused(f"{label} exists and is not a stabilitylab baseline; choose another path (a baseline "
                                "is merged into, never replaced)")
    elif not force and not markers.written_by_stabilitylab(target):
        raise OutputRefused(f"{label} exists and was not written by stabilitylab; choose another path or pass --force")


def _check_folder_output(label: str, folder: Path, force: bool) -> None:
    """``report -o DIR``: its README.md and figures/ may be replaced only if the README carries the marker."""
    index = folder / markers.REPORT_INDEX
    figures = folder / "figures"
    if index.exists() or index.is_symlink():
        with contextlib.suppress(WriteError):
            target = resolve_target(index)
            if target.exists():
                _refuse_existing(f"{label} holds a {markers.REPORT_INDEX} that", target, "file", force)
    if force or markers.report_marked(folder) or not figures.is_dir():
        return
    with contextlib.suppress(OSError):
        if any(figures.iterdir()):
            raise OutputRefused(f"{label} holds a figures/ folder and no {markers.REPORT_INDEX} written by "
                                "stabilitylab beside it; choose another folder or pass --force")


def check_outputs(outputs: Iterable[Output], inputs: Iterable[tuple[str, str | os.PathLike | None]] = (),
                  force: bool = False) -> None:
    """Refuse, before any work, the outputs that would lose a file: raises OutputRefused (one line).

    ``inputs``: ``(option, path)`` of the files the command reads (``--logits``, an audited file).
    Refused whatever ``force`` says: an output that is an input or another output; a read-only file;
    a name ending with a separator for a file output; a ``"baseline"`` output that exists and is not a
    baseline.  Refused unless ``force``: an existing file without stabilitylab's marker.  Problems
    that make a path unwritable (a missing folder, a device) are :func:`check_writable`'s.
    """
    seen: list[Output] = []
    inputs = [(option, path) for option, path in inputs if path is not None and os.fspath(path)]
    for out in outputs:
        if out.path is None or not os.fspath(out.path):
            continue
        name = os.fspath(out.path)
        label = f"{out.option} {shown(name)}"
        if out.kind != "folder" and _names_folder(name):
            raise OutputRefused(f"{label} names a folder (it ends with {name[-1]}); {out.option} writes one file: "
                                "give a file name")
        for option, path in inputs:
            if _same_file(name, path):
                raise OutputRefused(f"{label} is also an input ({option} {shown(os.fspath(path))}); write the output "
                                    "to another path (--force does not allow this)")
        for other in seen:
            if _same_file(name, other.path):
                raise OutputRefused(f"{label} is also {other.option} {shown(os.fspath(other.path))}; give each "
                                    "output its own path")
        seen.append(out)
        if out.kind == "folder":
            if Path(name).is_dir():
                _check_folder_output(label, Path(name), force)
            continue
        try:
            target = resolve_target(name)
        except WriteError:
            continue  # a folder, device or loop: check_writable's message
        if target.exists():
            _refuse_existing(label, target, out.kind, force)
