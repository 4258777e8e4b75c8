"""Benchmarks (not tests): each job beside its anchor, in the same run, as whole processes.

    python benchmarks/run.py                      # every job, best of 3
    python benchmarks/run.py --quick              # small logits only: 100000x10 and 80x128256
    python benchmarks/run.py --only logits --only compare --repeat 5
    python benchmarks/run.py --markdown           # tables for the README's Speed section
    python benchmarks/run.py --only logits --update docs/reference/speed.md --update-table README.md
                                                  # ... written into their generated Speed blocks
    python benchmarks/run.py --only logits --logits-file x.npy   # internal: this file instead of the generated ones
    python benchmarks/run.py --only blocks        # block-scaled storage (mxfp4, nvfp4, mxfp8) on 10^8 logits
    python benchmarks/run.py --only trace --only headroom   # issue #21: trace and --headroom on the 2-layer LM

Every job is a whole ``python -m stabilitylab ...`` process (``sys.executable``, run from the repository
root so this checkout's package is imported).  Its anchor runs in the same harness run, alternating
with it (anchor, job, anchor, job, ...) so machine noise hits both; each reports the best of
``--repeat`` runs.  Ratio = job seconds / anchor seconds; "work" = job seconds - anchor seconds.

Anchors:

* ``import``: ``python -c "import numpy, click, rich"``, a whole process (Python start-up and the
  imports every job pays);
* ``bare``: ``python -c "import stabilitylab.cli"``, a whole process: what a ``compare`` process costs
  before it reads anything.  A user-logits job's *work* is its whole-process seconds minus the bare
  process's (best of each, same run);
* ``log_softmax RxC``: one process on the same float32 array as the job, timing (``np.load``
  excluded) two things: ``scipy.special.log_softmax(x, axis=1)`` once (cold: it page-faults its
  whole-array temporaries, as a one-shot script does), and then, in the same process, a row-blocked
  numpy log-sum-exp of the same array (:data:`BLOCKED_LSE_CODE`: per block of rows, and of columns for
  a wide row, max, subtract, exp, sum into a buffer of :data:`BLOCK_VALUES` float32 values that stays
  in L2; log(sum) + max per row), best of :data:`BLOCKED_REPEAT` warm calls, on one core.  Its peak RSS
  is the whole process's (listed under "anchors").

The user-logits jobs (``logits RxC DTYPE``, ``blocks RxC FORMAT``) report ``work / blocked`` (their
target) and ``work / scipy``, and a *floor estimate*: (methods + 1) blocked log-sum-exps (four
formulations and a reference, each at least one pass of exp over every value) spread over the
machine's CPUs, ``(methods + 1) * blocked / cpus`` -- an estimate of what the arithmetic allows
once every intermediate is rounded to the format, not a bound.

* ``bf16 LM step``: one bfloat16 forward + backward step of the 2-layer transformer LM of
  ``stabilitylab/tracing/models.py`` (vocabulary 8192, sequence 128, batch 4), and ``fp32 LM forward``: its
  float32 forward; both timed inside the process (``benchmarks/trace_step.py``: build, one warm-up step, the
  timed step), like the ``trace`` / ``headroom`` jobs they anchor.  These jobs also report their step memory:
  the rise of the process's peak RSS (``ru_maxrss``) over the warm-up step (information: a float64 twin of
  every activation costs about 4x its bfloat16 bytes by construction); the ``memory`` target is the job's peak
  RSS over the anchor's (the process's peak memory, weights, runtime and activations).  Without
  ``stabilitylab.trace`` (the trace core) the trace jobs are skipped
  with the line "trace core not present"; without torch every job of the group is skipped.

Peak RSS is ``ru_maxrss`` of the job's process from ``os.wait4`` (MB = 2**20 bytes, max over the
runs; it covers the process's waited-for children too, as the largest single process, not a sum).
On Linux a child's ``ru_maxrss`` includes its parent's RSS when it was spawned, so this harness
imports nothing heavy (no numpy) and generates the logits files in a subprocess.

Before any timing the harness compiles this checkout's modules to bytecode (``python -m compileall``
on ``stabilitylab/``, into its gitignored ``__pycache__`` folders), as ``pip install`` does for an
installed package: a job then pays no compilation of stabilitylab's modules, which a user's installed
command never pays either (a machine with ``PYTHONDONTWRITEBYTECODE=1``, as this one, would otherwise
compile every module in every process, the bare anchor's included: about 0.07 s for the bare import and
0.2-0.4 s of CPU for a ``thresholds`` run, measured under load on 2026-12-07).

A job that fails (non-zero exit) is reported with its exit code and first stderr line, and the run
goes on; the harness then exits 1.  Generated logits (float32, standard normal * 3, seed 0) are
cached in ``benchmarks/.data/`` (gitignored) and reused when present.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / ".data"
MIB = 2**20
SEED = 0
LOGIT_SHAPES = ((100_000, 10), (10**7, 10), (800, 128_256))
QUICK_LOGIT_SHAPES = ((100_000, 10), (80, 128_256))
DTYPES = ("float16", "bfloat16", "float32", "float64")
# block-scaled storage on a float32 file of 10^8 logits (issue #19): the bulk path's memory bound applies
BLOCK_SHAPES = ((1000, 100_000),)
QUICK_BLOCK_SHAPES = ((100, 10_000),)
BLOCK_DTYPES = ("mxfp4", "nvfp4", "mxfp8")
RSS_LIMIT_MB = 1024  # "peak RSS <= 1 GB"
MARK_BEGIN = "<!-- generated by benchmarks/run.py --update: not edited by hand -->"
MARK_END = "<!-- end of generated block -->"
# Ratio targets of the user-logits jobs; the issue gives none for float16 (only the RSS limit applies).
# (issue #22: the job's work against the blocked log-sum-exp anchor of the same array, same run)
LOGITS_RATIO = {"bfloat16": 5.0, "float32": 5.0, "float64": 20.0}
BLOCK_VALUES = 2**16  # float32 values of the blocked anchor's buffer: 256 KiB, L2-resident
BLOCKED_REPEAT = 5  # the blocked anchor's warm calls (best of)

IMPORT_ANCHOR_CODE = "import numpy, click, rich"
BARE_CODE = "import stabilitylab.cli"
BLOCKED_LSE_CODE = """\
def blocked_lse(x, out, block):
    # log(sum(exp(x))) per row: rows (and columns of a wide row) in blocks, one buffer of `block` values
    rows, cols = x.shape
    width = min(cols, block)
    step = max(1, block // cols)
    buf = np.empty(max(step, 1) * width, np.float32)
    for i in range(0, rows, step):
        b = x[i:i + step]
        n = len(b)
        if cols <= 16:  # a short row: column by column (a reduction over a short axis is slow)
            m = b[:, 0].copy()
            for j in range(1, cols):
                np.maximum(m, b[:, j], out=m)
            s = np.zeros(n, np.float32)
            t = buf[:n]
            for j in range(cols):
                np.subtract(b[:, j], m, out=t)
                np.exp(t, out=t)
                s += t
        else:
            m = b.max(axis=1)
            s = np.zeros(n, np.float32)
            for c in range(0, cols, width):
                w = min(width, cols - c)
                t = buf[:n * w].reshape(n, w)
                np.subtract(b[:, c:c + w], m[:, None], out=t)
                np.exp(t, out=t)
                s += t.sum(axis=1)
        out[i:i + n] = np.log(s) + m
"""
LOG_SOFTMAX_CODE = """\
import json, os, sys, time
import numpy as np
from scipy.special import log_softmax
from stabilitylab.experiments.softmax_ce import SOFTMAX_CE
x = np.load(sys.argv[1])
assert x.dtype == np.float32 and x.ndim == 2, (x.dtype, x.shape)
block, repeat = int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
log_softmax(x, axis=1)
seconds = time.perf_counter() - t0
""" + BLOCKED_LSE_CODE + """\
out = np.empty(len(x), np.float32)
blocked = []
for _ in range(repeat + 1):  # (the first call warms up: not counted)
    t0 = time.perf_counter()
    blocked_lse(x, out, block)
    blocked.append(time.perf_counter() - t0)
print(json.dumps({"seconds": seconds, "blocked": min(blocked[1:]), "methods": len(SOFTMAX_CE.methods),
                  "cpus": os.cpu_count()}))
"""
GENERATE_CODE = """\
import os, sys
import numpy as np
rows, cols, seed, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(seed)
part = path + ".part"
out = np.lib.format.open_memmap(part, mode="w+", dtype=np.float32, shape=(rows, cols))
step = max(1, 2**22 // cols)
for i in range(0, rows, step):
    n = min(step, rows - i)
    out[i:i + n] = rng.standard_normal((n, cols), dtype=np.float32) * np.float32(3)
out.flush()
del out
os.replace(part, path)
"""


# ---------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Target:
    ratio: float | None = None  # job seconds / anchor seconds
    work: float | None = None  # job seconds - anchor seconds
    wall: float | None = None  # job seconds
    rss_mb: float | None = None  # job peak RSS
    memory: float | None = None  # job step memory / anchor step memory (inner jobs, see trace_step.py)

    def describe(self) -> str:
        parts = []
        if self.ratio is not None:
            parts.append(f"ratio ≤ {self.ratio:g}x")
        if self.work is not None:
            parts.append(f"work ≤ {self.work:g} s")
        if self.wall is not None:
            parts.append(f"≤ {self.wall:g} s")
        if self.rss_mb is not None:
            parts.append(f"RSS ≤ {self.rss_mb:g} MB")
        if self.memory is not None:
            parts.append(f"memory ≤ {self.memory:g}x")
        return ", ".join(parts) or "—"


@dataclass(frozen=True)
class Anchor:
    name: str
    argv: tuple[str, ...]
    inner: bool = False  # the process prints {"seconds": ...}: that, not the process's wall time, is its time


@dataclass(frozen=True)
class Job:
    name: str
    argv: tuple[str, ...]  # "{tmp}" is replaced by a fresh temporary directory for each run
    anchor: Anchor | None
    target: Target
    bare: Anchor | None = None  # user logits: the bare process whose seconds are subtracted (work)
    inner: bool = False  # the process prints {"seconds": ..., "step_mb": ...} (benchmarks/trace_step.py)


def cli(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "stabilitylab", *args)


IMPORT_ANCHOR = Anchor("import", (sys.executable, "-c", IMPORT_ANCHOR_CODE))
BARE = Anchor("bare", (sys.executable, "-c", BARE_CODE))


def log_softmax_anchor(path: Path, shape: tuple[int, int]) -> Anchor:
    return Anchor(f"log_softmax {shape[0]}x{shape[1]}",
                  (sys.executable, "-c", LOG_SOFTMAX_CODE, str(path), str(BLOCK_VALUES), str(BLOCKED_REPEAT)), True)


def build_jobs(logits: list[tuple[Path, tuple[int, int]]],
               blocks: list[tuple[Path, tuple[int, int]]] = ()) -> list[Job]:
    """The fixed jobs, ``logits RxC DTYPE`` per logits file and format, ``blocks RxC FORMAT`` per file of
    ``blocks`` and block-scaled format (no ratio target: the issue sets only the memory bound)."""
    jobs = [
        Job("compare", cli("compare"), IMPORT_ANCHOR, Target(ratio=2)),
        Job("thresholds", cli("thresholds"), IMPORT_ANCHOR, Target(work=1)),
        Job("check", cli("check", "--baseline", "reports/thresholds.json"), IMPORT_ANCHOR, Target(work=1)),
        Job("report", cli("report", "-o", "{tmp}/report"), None, Target(wall=8)),  # issue #22: <= 8 s wall, 2 cores
    ]
    for path, shape in logits:
        anchor = log_softmax_anchor(path, shape)
        for dtype in DTYPES:
            argv = cli("compare", "-e", "softmax_ce", "--logits", str(path), "-d", dtype, "--format", "json",
                       "-o", "{tmp}/out.json")
            target = Target(ratio=LOGITS_RATIO.get(dtype), rss_mb=RSS_LIMIT_MB)
            jobs.append(Job(f"logits {shape[0]}x{shape[1]} {dtype}", argv, anchor, target, BARE))
    for path, shape in blocks:
        anchor = log_softmax_anchor(path, shape)
        for dtype in BLOCK_DTYPES:
            argv = cli("compare", "-e", "softmax_ce", "--logits", str(path), "-d", dtype, "--format", "json",
                       "-o", "{tmp}/out.json")
            jobs.append(Job(f"blocks {shape[0]}x{shape[1]} {dtype}", argv, anchor, Target(rss_mb=RSS_LIMIT_MB), BARE))
    return jobs


TRACE_STEP = Path(__file__).resolve().parent / "trace_step.py"


def trace_step(mode: str) -> tuple[str, ...]:
    return (sys.executable, str(TRACE_STEP), mode)


def trace_jobs() -> list[Job]:
    """Issue #21 on the 2-layer LM (benchmarks/trace_step.py): trace with and without --rows against a plain
    bfloat16 step, --headroom against a plain float32 forward; every time and memory taken inside the process."""
    step = Anchor("bf16 LM step", trace_step("plain"), True)
    forward = Anchor("fp32 LM forward", trace_step("forward32"), True)
    return [
        Job("trace bf16 LM --rows 1", trace_step("trace-rows"), step, Target(ratio=20, memory=4), inner=True),
        Job("trace bf16 LM", trace_step("trace"), step, Target(ratio=60, memory=4), inner=True),
        Job("headroom fp32 LM", trace_step("headroom"), forward, Target(ratio=3), inner=True),
    ]


def trace_skips(jobs: list[Job]) -> tuple[list[Job], list[str]]:
    """The jobs that can run here and a line per skipped group: the trace jobs need ``stabilitylab.trace``
    (exit 3 of ``trace_step.py probe``), all of them torch (exit 4)."""
    if not any(job.argv[:2] == (sys.executable, str(TRACE_STEP)) for job in jobs):
        return jobs, []
    code = subprocess.run(trace_step("probe"), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode
    if code == 0:
        return jobs, []
    if code == 3:
        kept = [job for job in jobs if not job.name.startswith("trace ")]
        return kept, ["trace core not present: the trace jobs are skipped (stabilitylab.trace is not importable)"]
    kept = [job for job in jobs if job.argv[:2] != (sys.executable, str(TRACE_STEP))]
    return kept, [f"torch not usable (probe exit {code}): the trace and headroom jobs are skipped"]


def select(jobs: list[Job], patterns: list[str] | None) -> list[Job]:
    """The jobs whose name matches one of the glob patterns anywhere ("logits*float32"), all without patterns."""
    if not patterns:
        return jobs
    return [job for job in jobs if any(fnmatch.fnmatchcase(job.name, f"*{p}*") for p in patterns)]


# ------------------------------------------------------------------------------------------ logits data


def npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of a complete little-endian float32 .npy file, else None (read from its header, without numpy)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
            if magic[:6] != b"\x93NUMPY":
                return None
            size = int.from_bytes(f.read(2 if magic[6] == 1 else 4), "little")
            header = ast.literal_eval(f.read(size).decode("latin1"))
            offset = f.tell()
    except (OSError, ValueError, SyntaxError):
        return None
    if not isinstance(header, dict) or header.get("descr") != "<f4" or header.get("fortran_order"):
        return None
    shape = tuple(header.get("shape", ()))
    count = 1
    for n in shape:
        count *= n
    return shape if path.stat().st_size == offset + 4 * count else None


def logits_file(shape: tuple[int, int], data_dir: Path) -> Path:
    """The cached logits file of this shape, generated (in a subprocess) when absent or incomplete."""
    path = data_dir / f"logits_{shape[0]}x{shape[1]}_seed{SEED}.npy"
    if npy_shape(path) != shape:
        data_dir.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-c", GENERATE_CODE, str(shape[0]), str(shape[1]), str(SEED), str(path)],
                       cwd=ROOT, check=True)
    return path


# ------------------------------------------------------------------------------------------ measuring


@dataclass(frozen=True)
class Run:
    seconds: float  # wall time of the process, or the time it reported itself (inner anchors)
    rss_mb: float | None
    returncode: int
    error: str = ""  # first stderr line of a failed run
    step_mb: float | None = None  # what an inner process reported as its step memory
    extra: dict = field(default_factory=dict)  # what an inner anchor printed besides "seconds"

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def compile_package() -> str:
    """This checkout's modules compiled to bytecode and its optional C kernel built in place, as ``pip
    install`` does (see the module docstring); ``compileall`` writes the ``.pyc`` files whatever
    ``PYTHONDONTWRITEBYTECODE`` says.  Returns the line the report shows: whether the jobs ran with the
    compiled kernel (``_stabilitylab_kernels``, built by ``setup.py build_ext --inplace`` at the repository
    root, where the jobs' ``python -m stabilitylab`` finds it) or without it (no compiler: the numpy path)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "stabilitylab")], cwd=ROOT,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=ROOT,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = subprocess.run([sys.executable, "-c", "from stabilitylab.numerics import kernel as k; "
                            "print(k.load() is not None)"], cwd=ROOT, capture_output=True, text=True)
    if probe.stdout.strip() == "True":
        return ("Compiled kernel: present (`_stabilitylab_kernels`, built in place: bfloat16, float32 and float64 "
                "values and their references).")
    return "Compiled kernel: absent (not built here): every job ran the numpy path."


def _wait(proc: subprocess.Popen) -> tuple[int, float | None]:
    """Exit code and peak RSS (MB) of a finished child."""
    if not hasattr(os, "wait4"):  # Windows: no rusage
        return proc.wait(), None
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return proc.returncode, usage.ru_maxrss * scale / MIB


def measure(argv: tuple[str, ...], inner: bool = False) -> Run:
    with (tempfile.TemporaryDirectory(prefix="stabilitylab-bench-") as tmp,
          tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err):
        argv = tuple(a.replace("{tmp}", tmp) for a in argv)
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=out if inner else subprocess.DEVNULL, stderr=err)
        code, rss = _wait(proc)
        seconds = time.perf_counter() - t0
        if code != 0:
            err.seek(0)
            text = first_line(err.read().decode(errors="replace"))
            return Run(seconds, rss, code, text or "(no stderr)")
        step_mb = None
        if inner:
            out.seek(0)
            try:
                printed = json.loads(out.read().decode().strip().splitlines()[-1])
                seconds = float(printed.pop("seconds"))
                step_mb = printed.pop("step_mb", None)
                step_mb = None if step_mb is None else float(step_mb)
            except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:
                return Run(seconds, rss, 0, f"no timing printed ({e!r})")
            return Run(seconds, rss, code, step_mb=step_mb, extra=printed)
        return Run(seconds, rss, code)


@dataclass
class Result:
    job: Job
    runs: list[Run] = field(default_factory=list)
    anchor_runs: list[Run] = field(default_factory=list)
    bare_runs: list[Run] = field(default_factory=list)

    @property
    def failure(self) -> tuple[str, Run] | None:
        """("job", "anchor" or "bare", the failed run), if any run failed."""
        for who, runs in (("bare", self.bare_runs), ("anchor", self.anchor_runs), ("job", self.runs)):
            for run in runs:
                if not run.ok or run.error:
                    return who, run
        return None

    @property
    def seconds(self) -> float | None:
        return min((r.seconds for r in self.runs), default=None) if self.failure is None else None

    @property
    def anchor_seconds(self) -> float | None:
        return min((r.seconds for r in self.anchor_runs), default=None) if self.failure is None else None

    @property
    def rss_mb(self) -> float | None:
        return max((r.rss_mb for r in self.runs if r.rss_mb is not None), default=None)

    @property
    def anchor_rss_mb(self) -> float | None:
        return max((r.rss_mb for r in self.anchor_runs if r.rss_mb is not None), default=None)

    @property
    def step_mb(self) -> float | None:
        return max((r.step_mb for r in self.runs if r.step_mb is not None), default=None)

    @property
    def anchor_step_mb(self) -> float | None:
        return max((r.step_mb for r in self.anchor_runs if r.step_mb is not None), default=None)

    @property
    def memory(self) -> float | None:
        """Peak memory ratio, the job's process over the anchor's (peak RSS, the largest of each over its runs):
        what the ``memory`` target bounds (issue #21: "peak memory <= 4x the plain step's")."""
        if self.rss_mb is None or not self.anchor_rss_mb or self.job.target.memory is None:
            return None
        return self.rss_mb / self.anchor_rss_mb

    @property
    def step_memory(self) -> float | None:
        """Step memory ratio, job / anchor (the rise of peak RSS over one step; information, no target)."""
        if self.step_mb is None or not self.anchor_step_mb:
            return None
        return self.step_mb / self.anchor_step_mb

    @property
    def bare_seconds(self) -> float | None:
        return min((r.seconds for r in self.bare_runs), default=None) if self.failure is None else None

    def _anchor_extra(self, key: str) -> list:
        return [r.extra[key] for r in self.anchor_runs if key in r.extra] if self.failure is None else []

    @property
    def blocked_seconds(self) -> float | None:
        """The blocked log-sum-exp anchor: best over the anchor's runs (each the best of its warm calls)."""
        return min(self._anchor_extra("blocked"), default=None)

    @property
    def floor(self) -> float | None:
        """(methods + 1) blocked log-sum-exps over the CPUs (module docstring): an estimate, not a bound."""
        blocked, methods, cpus = self.blocked_seconds, self._anchor_extra("methods"), self._anchor_extra("cpus")
        if blocked is None or not methods or not cpus:
            return None
        return (methods[0] + 1) * blocked / cpus[0]

    @property
    def ratio(self) -> float | None:
        """Job seconds / anchor seconds; with a bare process, work / the blocked anchor."""
        if self.job.bare is not None:
            return None if self.work is None or not self.blocked_seconds else self.work / self.blocked_seconds
        if self.seconds is None or not self.anchor_seconds:
            return None
        return self.seconds / self.anchor_seconds

    @property
    def scipy_ratio(self) -> float | None:
        """Work / the scipy anchor (jobs with a bare process)."""
        return None if self.work is None or not self.anchor_seconds else self.work / self.anchor_seconds

    @property
    def work(self) -> float | None:
        """Job seconds minus the bare process's (with one), else minus the anchor's."""
        base = self.bare_seconds if self.job.bare is not None else self.anchor_seconds
        if self.seconds is None or base is None:
            return None
        return self.seconds - base

    def verdict(self) -> str:
        failure = self.failure
        if failure is not None:
            who, run = failure
            return f"{'' if who == 'job' else who + ' '}failed ({_exit(run.returncode)})"
        t = self.job.target
        missed = []
        if t.ratio is not None and (self.ratio is None or self.ratio > t.ratio):
            missed.append("ratio")
        if t.work is not None and (self.work is None or self.work > t.work):
            missed.append("work")
        if t.wall is not None and self.seconds > t.wall:
            missed.append("time")
        if t.rss_mb is not None and (self.rss_mb is None or self.rss_mb > t.rss_mb):
            missed.append("RSS")
        if t.memory is not None and (self.memory is None or self.memory > t.memory):
            missed.append("memory")
        word = "misses" if missed else "meets"
        if t.work is not None:  # the only checked figure without a column of its own
            return f"{word} (work {_seconds(self.work)} s)"
        return f"{word} ({', '.join(missed)})" if missed else word


def _exit(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit {code}"


def bench(job: Job, repeat: int, progress=None) -> Result:
    """Run the job ``repeat`` times, alternating with its anchor; stop at the first failure."""
    result = Result(job)
    for i in range(repeat):
        if progress:
            progress(f"{job.name}: run {i + 1}/{repeat}")
        if job.bare is not None:
            result.bare_runs.append(measure(job.bare.argv))
            if result.failure:
                break
        if job.anchor is not None:
            result.anchor_runs.append(measure(job.anchor.argv, job.anchor.inner))
            if result.failure:
                break
        result.runs.append(measure(job.argv, job.inner))
        if result.failure:
            break
    return result


# ------------------------------------------------------------------------------------------ output

COLUMNS = ("job", "seconds", "anchor", "anchor seconds", "ratio", "target", "peak RSS MB", "verdict")
LOGITS_COLUMNS = ("job", "seconds", "bare", "work", "blocked", "scipy", "floor", "work / blocked", "work / scipy",
                  "target", "peak RSS MB", "verdict")


def _seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if abs(s) >= 10:
        return f"{s:.1f}"
    if abs(s) >= 0.1:
        return f"{s:.2f}"
    return f"{s:#.3g}"  # three significant digits, zeros kept


def _mb(mb: float | None) -> str:
    return "—" if mb is None else f"{mb:.0f}"


def row(result: Result) -> tuple[str, ...]:
    ratio = result.ratio
    return (result.job.name, _seconds(result.seconds), result.job.anchor.name if result.job.anchor else "—",
            _seconds(result.anchor_seconds), "—" if ratio is None else f"{ratio:.1f}x",
            result.job.target.describe(), _mb(result.rss_mb), result.verdict())


def _ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.1f}x"


def logits_row(result: Result) -> tuple[str, ...]:
    return (result.job.name, _seconds(result.seconds), _seconds(result.bare_seconds), _seconds(result.work),
            _seconds(result.blocked_seconds), _seconds(result.anchor_seconds), _seconds(result.floor),
            _ratio(result.ratio), _ratio(result.scipy_ratio),
            result.job.target.describe().replace("ratio", "work / blocked"), _mb(result.rss_mb), result.verdict())


def anchor_rows(results: list[Result]) -> list[tuple[str, str, str]]:
    """One row per anchor: best seconds and peak RSS over all its runs (beside every job that used it)."""
    runs: dict[str, list[Run]] = {}
    for result in results:
        for anchor, done in ((result.job.bare, result.bare_runs), (result.job.anchor, result.anchor_runs)):
            if anchor is not None:
                runs.setdefault(anchor.name, []).extend(r for r in done if r.ok and not r.error)
    return [(name, _seconds(min((r.seconds for r in rs), default=None)),
             _mb(max((r.rss_mb for r in rs if r.rss_mb is not None), default=None))) for name, rs in runs.items()]


def table(header: tuple[str, ...], rows: list[tuple[str, ...]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    right = {i for i, h in enumerate(header) if h not in ("job", "anchor", "target", "verdict")}
    def fmt(cells):
        cells = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(cells).rstrip()
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def memory_rows(results: list[Result]) -> list[tuple[str, ...]]:
    """One row per job with a step memory: job MB, anchor MB, their ratio, and the peak RSS ratio (the target's)."""
    return [(r.job.name, _mb(r.step_mb), r.job.anchor.name if r.job.anchor else "—", _mb(r.anchor_step_mb),
             "—" if r.step_memory is None else f"{r.step_memory:.1f}x",
             "—" if r.memory is None else f"{r.memory:.1f}x") for r in results if r.step_mb is not None]


def failures(results: list[Result]) -> list[str]:
    lines = []
    for result in results:
        if result.failure is not None:
            who, run = result.failure
            anchor = result.job.bare if who == "bare" else result.job.anchor
            name = result.job.name if who == "job" else f"{result.job.name} (anchor {anchor.name})"
            lines.append(f"{name}: {_exit(run.returncode)}: {run.error}")
    return lines


def render(results: list[Result], repeat: int, markdown: bool = False, skipped: list[str] = (),
           kernel: str = "") -> str:
    plain = [r for r in results if r.job.bare is None]
    logits = [r for r in results if r.job.bare is not None]
    out = [f"Best of {repeat}, job and anchors alternating; ratio = job s / anchor s, work = job s - anchor s; "
           f"peak RSS of the job's process (os.wait4 ru_maxrss, MB = 2**20 bytes).",
           "Anchors: import = whole `python -c \"import numpy, click, rich\"` process; log_softmax RxC = "
           "`scipy.special.log_softmax(x, axis=1)` on the same float32 array, one process, the call only "
           "(np.load excluded).",
           f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, "
           f"{os.cpu_count()} CPUs." + (f" {kernel}" if kernel else ""), ""]
    if plain:
        out.append(table(COLUMNS, [row(r) for r in plain], markdown))
    if logits:
        if plain:
            out.append("")
        out += ["User logits: work = job s - bare s (bare = whole `python -c \"import stabilitylab.cli\"` "
                "process); blocked = a row-blocked numpy log-sum-exp of the same array in the anchor's process "
                f"(buffer of {BLOCK_VALUES} float32 values, best of {BLOCKED_REPEAT} warm calls, one core); "
                "scipy = `scipy.special.log_softmax` there, one cold call; floor = (methods + 1) x blocked / "
                "CPUs, an estimate (not a bound) of what the arithmetic allows.", ""]
        out.append(table(LOGITS_COLUMNS, [logits_row(r) for r in logits], markdown))
    memory = memory_rows(results)
    if memory:
        out += ["", "Memory: step MB = the rise of the process's peak RSS over one step (largest over the runs; the "
                "float64 twins make it about 5x the activations by construction); peak = the job's peak RSS over "
                "the anchor's (the memory target):", ""]
        out.append(table(("job", "step MB", "anchor", "anchor step MB", "step ratio", "peak ratio"), memory,
                         markdown))
    anchors = anchor_rows(results)
    if anchors:
        out += ["", "Anchors (best seconds, peak RSS of the anchor process):", ""]
        out.append(table(("anchor", "seconds", "peak RSS MB"), anchors, markdown))
    if skipped:
        out += [""] + list(skipped)
    failed = failures(results)
    if failed:
        out += ["", "Failed:", ""] + [f"- {line}" if markdown else f"  {line}" for line in failed]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small logits only: 100000x10 and 80x128256 (smoke tests)")
    parser.add_argument("--only", action="append", metavar="PATTERN",
                        help="run the jobs whose name contains this glob, e.g. compare, 'logits*bfloat16' "
                             "(repeatable; default: all)")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="best of N runs, job and anchor alternating (default 3)")
    parser.add_argument("--markdown", action="store_true", help="markdown tables (README's Speed section)")
    parser.add_argument("--data-dir", type=Path, default=DATA, help=f"cache of generated logits (default {DATA})")
    parser.add_argument("--logits-file", action="append", type=Path, metavar="NPY",
                        help="internal: benchmark this float32 .npy of shape (rows, classes) instead of the "
                             "generated logits (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the selected jobs and exit")
    parser.add_argument("--update", action="append", type=Path, metavar="MD",
                        help="also write the markdown tables into this file's generated block (between "
                             f"{MARK_BEGIN!r} and {MARK_END!r}; repeatable)")
    parser.add_argument("--update-table", action="append", type=Path, metavar="MD",
                        help="like --update, the user-logits table alone (the README's short Speed section)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # Which logits files are needed depends on the selection: select on names first, generate afterwards.
    shapes = QUICK_LOGIT_SHAPES if args.quick else LOGIT_SHAPES
    block_shapes = QUICK_BLOCK_SHAPES if args.quick else BLOCK_SHAPES
    if args.logits_file:
        files = []
        for path in args.logits_file:
            shape = npy_shape(path)
            if shape is None or len(shape) != 2:
                sys.exit(f"--logits-file {path}: not a complete float32 .npy file of shape (rows, classes)")
            files.append((path.resolve(), shape))
    else:
        files = [(args.data_dir.resolve() / f"logits_{r}x{c}_seed{SEED}.npy", (r, c)) for r, c in shapes]
    block_files = files if args.logits_file else [
        (args.data_dir.resolve() / f"logits_{r}x{c}_seed{SEED}.npy", (r, c)) for r, c in block_shapes]
    jobs = select(build_jobs(files, block_files) + trace_jobs(), args.only)
    if not jobs:
        sys.exit(f"no job matches {args.only}")
    if args.list:
        print("\n".join(job.name for job in jobs))
        return 0
    jobs, skipped = trace_skips(jobs)
    for line in skipped:
        print(line, file=sys.stderr, flush=True)
    if not args.logits_file:
        needed = {job.anchor.argv[3] for job in jobs
                  if job.anchor is not None and job.anchor.name.startswith("log_softmax ")}
        for path, shape in dict.fromkeys([*files, *block_files]):
            if str(path) in needed:
                logits_file(shape, args.data_dir.resolve())
    kernel = compile_package()
    results = [bench(job, args.repeat, progress) for job in jobs]
    print(render(results, args.repeat, args.markdown, skipped, kernel))
    given, shown = list(argv if argv is not None else sys.argv[1:]), []
    while given:  # the command line as run, without its --update targets
        arg = given.pop(0)
        if arg in ("--update", "--update-table"):
            given = given[1:]
        elif not arg.startswith(("--update=", "--update-table=")):
            shown.append(arg)
    for path in args.update or ():
        update(path, render(results, args.repeat, markdown=True, skipped=skipped, kernel=kernel), shlex.join(shown))
    logits = [r for r in results if r.job.bare is not None]
    for path in args.update_table or ():
        update(path, table(LOGITS_COLUMNS, [logits_row(r) for r in logits], True), shlex.join(shown))
    return 1 if failures(results) else 0


def update(path: Path, tables: str, shown: str) -> None:
    """Replace the generated block of ``path`` (from MARK_BEGIN to MARK_END) with ``tables`` and the
    command line and UTC date of this run."""
    import datetime

    text = path.read_text(encoding="utf-8")
    start, end = text.find(MARK_BEGIN), text.find(MARK_END)
    if start < 0 or end < start:
        sys.exit(f"--update {path}: no block from {MARK_BEGIN!r} to {MARK_END!r}")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = f"{MARK_BEGIN}\n{tables}\n\n(`python benchmarks/run.py {shown}`, {when})\n"
    path.write_text(text[:start] + block + text[end:], encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
