"""Worker processes: how many (:func:`worker_count`) and the pool they run in (:func:`fork_pool`).

Every process pool of stabilitylab (the threshold searches, the user-logits summary, the report's
tasks) takes its default size from :func:`worker_count`; results never depend on it.

Workers die with the process that forked them: on Linux the kernel kills them (``PR_SET_PDEATHSIG``,
SIGKILL) when it ends, however it ends (SIGKILL included); elsewhere each worker watches its parent
and exits when it is gone.  A pool left by an exception (Ctrl-C, :class:`~stabilitylab.errors.Terminated`)
kills its workers instead of running the work still queued, and :func:`kill_workers` (the command line's
SIGTERM / SIGHUP handler) kills the workers of every live pool.  Workers ignore SIGINT (Ctrl-C reaches
the whole process group: the parent alone handles it) and take the default action on SIGTERM / SIGHUP.

Every worker, and the command line's own process, keeps the memory it frees for reuse
(:func:`keep_freed_memory`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import weakref
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor

from ..errors import InputError

__all__ = ["WORKERS_VARIABLE", "worker_count", "fork_pool", "kill_workers", "WorkerPool", "keep_freed_memory"]

WORKERS_VARIABLE = "STABILITYLAB_WORKERS"
KEPT_BYTES = 2**30  # glibc's M_TRIM_THRESHOLD: freed memory kept at the top of the heap, up to this
HEAP_BELOW = 2**25  # glibc's M_MMAP_THRESHOLD: blocks below this (its largest allowed value) come from the heap
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # (mallopt's parameter numbers, malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse: blocks below :data:`HEAP_BELOW` (32 MiB) from
    the heap, not from a fresh ``mmap`` each, and up to :data:`KEPT_BYTES` (1 GiB) of freed heap kept
    instead of returned to the kernel.  The bulk path allocates and frees thousands of arrays of a few
    MiB (a chunk's temporaries); by default glibc maps the larger ones fresh and unmaps them when freed,
    and trims the heap, so every new temporary is page-faulted in (zeroed pages) again -- measured, about
    half the CPU time of a user-logits chunk and 5x the float64 reference's own arithmetic.  No result
    changes; the peak RSS stays the high-water mark of the temporaries (a chunk's few hundred MiB at most).
    Linux with glibc only (elsewhere nothing is done): returns whether both settings took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc's own symbol: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, KEPT_BYTES)) and bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BELOW))


def worker_count(environ: Mapping[str, str] | None = None) -> int:
    """The number of worker processes a pool gets by default.

    ``STABILITYLAB_WORKERS`` (in ``environ``, default ``os.environ``), when set and not empty, is
    that number: a positive integer (1 runs everything in this process).  Any other value raises
    :class:`~stabilitylab.errors.InputError` (a ``ValueError``) naming the variable.  Otherwise the
    number of CPUs this process may run on: ``len(os.sched_getaffinity(0))`` where the platform has
    it (Linux: honours ``taskset`` and container CPU sets), else ``os.cpu_count()`` (1 if unknown).
    """
    environ = os.environ if environ is None else environ
    text = environ.get(WORKERS_VARIABLE, "").strip()
    if text:
        try:
            count = int(text)
        except ValueError:
            count = 0
        if count < 1:
            raise InputError(f"{WORKERS_VARIABLE}={text!r}: it must be a positive integer, the number of worker "
                             "processes (1: none, run in this process); unset it for one per CPU",
                             option=WORKERS_VARIABLE)
        return count
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def fork_pool(workers: int) -> WorkerPool | None:
    """A pool of ``workers`` forked processes (a :class:`WorkerPool`); None (run in this process) for one
    worker or where the platform cannot fork (forked workers inherit the caller's modules and memoised
    results).  Use it in a ``with`` block, in the thread that will wait for its results: on Linux the
    workers die when the thread that forked them ends."""
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        return WorkerPool(workers)
    return None


_LIVE: weakref.WeakSet[WorkerPool] = weakref.WeakSet()
_PARENT_POLL = 0.5  # seconds between a worker's checks that its parent lives (where there is no prctl)


class WorkerPool(ProcessPoolExecutor):
    """A :class:`~concurrent.futures.ProcessPoolExecutor` of forked workers that die with their parent;
    leaving its ``with`` block by an exception kills them (the work still queued fails with the broken pool)."""

    def __init__(self, workers: int):
        super().__init__(workers, mp_context=multiprocessing.get_context("fork"),
                         initializer=_worker_started, initargs=(os.getpid(),))
        _LIVE.add(self)

    def kill(self) -> None:
        """SIGKILL every worker now (the pool is then broken: its futures fail).  The pool's manager thread may
        then fail on a future its caller has cancelled (``Executor.map`` cancels the rest when it is left by
        an exception; CPython 3.11's ``terminate_broken`` sets the broken pool's exception on it anyway):
        that thread's exception is expected and not printed (:func:`_quiet_killed_managers`)."""
        manager = getattr(self, "_executor_manager_thread", None)
        if manager is not None:
            _KILLED_MANAGERS.add(manager)
            if threading.excepthook is not _quiet_killed_managers:
                global _PREVIOUS_EXCEPTHOOK
                _PREVIOUS_EXCEPTHOOK, threading.excepthook = threading.excepthook, _quiet_killed_managers
        for process in list((getattr(self, "_processes", None) or {}).values()):
            try:
                process.kill()
            except (OSError, ValueError, AttributeError):  # already gone or reaped
                pass

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        _LIVE.discard(self)
        super().shutdown(wait, cancel_futures=cancel_futures)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            # Killed workers break the pool: its manager thread fails the pending futures itself.  Neither wait
            # for that thread (a signal may land before it has started: "cannot join thread before it is
            # started" would replace the exception) nor cancel the futures (the thread would then set an
            # exception on a cancelled future: InvalidStateError, a traceback on stderr).
            self.kill()
            self.shutdown(wait=False)
            return False
        return super().__exit__(exc_type, exc, tb)


_KILLED_MANAGERS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_PREVIOUS_EXCEPTHOOK = threading.excepthook


def _quiet_killed_managers(args) -> None:
    """``threading.excepthook``: drop the exception of a killed pool's manager thread, pass the rest on."""
    if args.thread is not None and args.thread in _KILLED_MANAGERS:
        return
    _PREVIOUS_EXCEPTHOOK(args)


def kill_workers() -> None:
    """Kill the workers of every live pool of this process (safe in a signal handler)."""
    for pool in list(_LIVE):
        pool.kill()


def _worker_started(parent: int) -> None:
    """Initializer of every worker: die with ``parent`` (the pid of the process that forked it); keep
    freed memory (:func:`keep_freed_memory`)."""
    keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("SIGTERM", "SIGHUP"):  # not the parent's handlers, inherited by fork
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    if not _kill_me_with_parent():
        threading.Thread(target=_watch_parent, args=(parent,), name="stabilitylab-parent-watch",
                         daemon=True).start()
    if os.getppid() != parent:  # it ended before the line above took effect
        os._exit(1)


def _kill_me_with_parent() -> bool:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux): the kernel kills this process when the thread that
    forked it ends.  False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        return False


def _watch_parent(parent: int) -> None:
    """Exit as soon as ``parent`` is no longer this process's parent (it ended: the worker was re-parented)."""
    import time

    while os.getppid() == parent:
        time.sleep(_PARENT_POLL)
    os._exit(1)
