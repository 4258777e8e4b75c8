"""Worker processes: how many (:func:`worker_count`) and the pool they run in (:func:`fork_pool`).

Every process pool of stabilitylab (the threshold searches, the user-logits summary, the report's
tasks) takes its default size from :func:`worker_count`; results never depend on it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor

from ..errors import InputError

__all__ = ["WORKERS_VARIABLE", "worker_count", "fork_pool"]

WORKERS_VARIABLE = "STABILITYLAB_WORKERS"


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


def fork_pool(workers: int) -> ProcessPoolExecutor | None:
    """A pool of ``workers`` forked processes; None (run in this process) for one worker or where
    the platform cannot fork (forked workers inherit the caller's modules and memoised results)."""
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return None
