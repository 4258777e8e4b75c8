"""One measured step of the issue-#21 LM (stabilitylab/tracing/models.py: build_lm), run by benchmarks/run.py.

    python benchmarks/trace_step.py MODE

MODE:
  plain         bfloat16 forward + backward step (model.to(torch.bfloat16)): the anchor of the trace jobs
  trace-rows    the same step inside ``stabilitylab.trace(dtype="bf16", rows=ROWS)`` (shadow ROWS of the batch)
  trace         the same step inside ``stabilitylab.trace(dtype="bf16")`` (every row shadowed)
  forward32     float32 forward under torch.no_grad: the anchor of the headroom job
  headroom      ``tracing.headroom.measure`` (one float32 forward with hooks, the default formats)
  probe         exit 0 if torch and ``stabilitylab.trace`` are importable, 3 if the trace core is missing,
                4 if torch is

Each MODE builds the model and its batch, imports everything it needs, runs the step once (the warm-up, whose
memory is measured) and then the timed steps, and prints one JSON line ``{"seconds": s, "step_mb": m}``:

* ``seconds``: wall time of a step after the warm-up (time.perf_counter), the best of up to 5 steps, fewer
  once 2 s are spent (a single step for the trace; the cheap steps get a few tries against noise);
* ``step_mb``: how much the process's peak resident set rose during the first step, MB = 2**20 bytes:
  ``ru_maxrss`` (resource.getrusage, RUSAGE_SELF) after it minus before it.  Before it the process runs the
  garbage collector and glibc's ``malloc_trim(0)``, so memory freed while building (the float32 weights
  after ``.to(torch.bfloat16)``) is handed back to the system rather than silently reused by the step.
  It is the step's peak extra memory (activations, gradients, the tracer's twins and references), not
  tracemalloc's count: torch's CPU allocations do not go through Python's allocator, tracemalloc does not
  see them.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's stabilitylab, as ``-m`` from ROOT

TIMED, BUDGET = 5, 2.0  # timed steps: at most 5, fewer once 2 s are spent (the trace takes longer than that)
ROWS = 1  # trace-rows: the sequences of the batch (of 4) that are shadowed
MODES = ("plain", "trace-rows", "trace", "forward32", "headroom", "probe")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back
        pass


def _peak_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _trace_api():
    import stabilitylab

    try:
        return getattr(stabilitylab, "trace")
    except (AttributeError, ImportError):
        return None


def main(mode: str) -> int:
    if mode not in MODES:
        print(f"unknown mode {mode!r}; one of {', '.join(MODES)}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("torch not installed (pip install 'stabilitylab[torch]')", file=sys.stderr)
        return 4
    trace = _trace_api() if mode in ("trace-rows", "trace", "probe") else None
    if mode in ("trace-rows", "trace", "probe") and trace is None:
        print("trace core not present (stabilitylab.trace is not importable)", file=sys.stderr)
        return 3
    if mode == "probe":
        return 0
    from stabilitylab.tracing import headroom, models

    model, batch = models.build_lm()
    if mode in ("plain", "trace-rows", "trace"):
        model.to(torch.bfloat16)

        def step():
            model.zero_grad(set_to_none=True)
            if mode == "plain":
                model(batch).backward()
                return
            with trace(dtype="bf16", rows=ROWS if mode == "trace-rows" else None):
                model(batch).backward()
    elif mode == "forward32":
        def step():
            with torch.no_grad():
                model(batch)
    else:
        def step():
            headroom.measure(model, batch)

    _trim()
    before = _peak_mb()
    step()
    step_mb = _peak_mb() - before
    seconds, spent = math.inf, 0.0
    for _ in range(TIMED):  # the best of up to TIMED steps, stopping once BUDGET seconds are spent
        t0 = time.perf_counter()
        step()
        took = time.perf_counter() - t0
        seconds, spent = min(seconds, took), spent + took
        if spent >= BUDGET:
            break
    print(json.dumps({"seconds": seconds, "step_mb": step_mb}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
