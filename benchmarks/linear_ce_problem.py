"""Benchmark: ``compare -e linear_ce --problem`` on a real-size problem against a float32 numpy anchor.

    python benchmarks/linear_ce_problem.py              # N=1024, D=1024, V=128256 (the issue's size)
    python benchmarks/linear_ce_problem.py --quick      # N=128, D=256, V=8192
    python benchmarks/linear_ce_problem.py --repeat 2

The problem is written to a temporary folder (seeded: hidden N(0, 1), weight N(0, 1/sqrt(D)) so that the
logits are O(1..10), labels uniform; float32 .npy files).  Jobs, each a whole ``python -m stabilitylab``
process whose peak RSS is ``ru_maxrss`` from ``os.wait4``: ``-d bf16`` alone and ``-d bf16 -d bf16@fp32``.
Anchor, in a child process run right before each job (so that machine noise hits both), timed inside it
(best of 2 calls, the loads excluded): one float32 ``hidden @ weight.T``, ``scipy.special.log_softmax`` and
the two float32 gradient matmuls ``g @ W`` and ``g.T @ h``.  Ratio = job seconds / anchor seconds (target:
10x); RSS target 1 GB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
FULL, QUICK = (1024, 1024, 128256), (128, 256, 8192)

MAKE = """
import numpy as np, sys
n, d, v = (int(a) for a in sys.argv[2:5])
rng = np.random.default_rng(0)
np.save(sys.argv[1] + '/hidden.npy', rng.standard_normal((n, d), dtype=np.float32))
w = np.empty((v, d), np.float32)
for a in range(0, v, 8192):
    w[a:a + 8192] = rng.standard_normal((min(v, a + 8192) - a, d), dtype=np.float32) / np.float32(d ** 0.5)
np.save(sys.argv[1] + '/weight.npy', w)
np.save(sys.argv[1] + '/labels.npy', rng.integers(0, v, n))
"""

ANCHOR = """
import numpy as np, sys, time
from scipy.special import log_softmax
h, w, y = (np.load(sys.argv[1] + f'/{name}.npy') for name in ('hidden', 'weight', 'labels'))
best = float('inf')
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    x = h @ w.T
    lp = log_softmax(x, axis=1)
    g = np.exp(lp); g[np.arange(len(y)), y] -= 1; g /= len(y)
    gh = g @ w; gw = g.T @ h
    best = min(best, time.perf_counter() - t)
    del x, lp, g, gh, gw
print(best)
"""


def measure(argv: list[str]) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (MB, ru_maxrss of the waited-for child) and exit code."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, code, (out if code == 0 else err).decode(errors="replace")


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"N, D, V = {QUICK} instead of {FULL}")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each job (best is reported)")
    parser.add_argument("--size", type=int, nargs=3, metavar=("N", "D", "V"), default=None)
    opts = parser.parse_args(args)
    n, d, v = opts.size or (QUICK if opts.quick else FULL)
    with tempfile.TemporaryDirectory(prefix="linear_ce_problem_") as folder:
        subprocess.run([sys.executable, "-c", MAKE, folder, str(n), str(d), str(v)], check=True)
        print(f"problem N={n} D={d} V={v}; each job right after its anchor (float32 h @ W.T, log_softmax, g @ W, "
              f"g.T @ h; best of {max(2, opts.repeat)} in-process calls, loads excluded), so that machine noise "
              "hits both")
        print("| job | seconds | anchor seconds | ratio | peak RSS MB | anchor peak RSS MB | verdict |")
        print("|---|---|---|---|---|---|---|")
        failed = 0
        for dtypes in (["bf16"], ["bf16", "bf16@fp32"]):
            argv = [sys.executable, "-m", "stabilitylab", "compare", "-e", "linear_ce", "--problem", folder,
                    "--format", "json", "-o", os.path.join(folder, "out.json"), "--force"]
            for dt in dtypes:
                argv += ["-d", dt]
            best, rss, anchor, a_rss = float("inf"), 0.0, float("inf"), 0.0
            for _ in range(opts.repeat):
                _, a_peak, code, out = measure([sys.executable, "-c", ANCHOR, folder, str(max(2, opts.repeat))])
                if code:
                    print(f"| anchor failed ({code}): {out.strip().splitlines()[-1:]} | | | | | | |")
                    return 1
                anchor, a_rss = min(anchor, float(out.strip())), max(a_rss, a_peak)
                seconds, peak, code, out = measure(argv)
                if code:
                    print(f"| {' '.join(dtypes)} | failed ({code}): {out.strip().splitlines()[-1:]} | | | | | |")
                    failed = 1
                    break
                best, rss = min(best, seconds), max(rss, peak)
            else:
                ratio = best / anchor
                verdict = "meets" if ratio <= 10 and rss <= 1024 else "misses"
                print(f"| -d {' -d '.join(dtypes)} | {best:.1f} | {anchor:.2f} | {ratio:.1f}x | {rss:.0f} "
                      f"| {a_rss:.0f} | {verdict} (ratio <= 10x, RSS <= 1024 MB) |")
        return failed


if __name__ == "__main__":
    sys.exit(main())
