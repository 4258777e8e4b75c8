"""Time blockscale.quantize() on a (1000, 100000) float32 array (10^8 values), one format per process so
that ``/usr/bin/time -v`` reports each format's peak memory (not a test).  Prints wall and CPU time (user +
system of this process: on a shared machine the CPU time is the figure that does not depend on the load).

    python benchmarks/blockscale_speed.py FORMAT [ROWS COLS]
    for f in mxfp8 mxfp8_e5m2 mxfp6 mxfp6_e3m2 mxfp4 nvfp4; do
        /usr/bin/time -v python benchmarks/blockscale_speed.py $f; done
"""

from __future__ import annotations

import sys
import time

import numpy as np

from stabilitylab.numerics.blockscale import flushed_fraction, get_block_format, quantize


def main(argv: list[str]) -> None:
    fmt = get_block_format(argv[0])
    rows, cols = (int(argv[1]), int(argv[2])) if len(argv) > 2 else (1000, 100_000)
    x = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32) * np.float32(4)
    t, c = time.perf_counter(), time.process_time()
    q = quantize(fmt, x)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    print(f"{fmt.name}: {x.size:.3g} values in {dt:.2f} s wall, {dc:.2f} s CPU "
          f"({dc / x.size * 1e9:.1f} ns/value); input "
          f"{x.nbytes / 2**20:.0f} MiB, values {q.values.nbytes / 2**20:.0f} MiB ({q.values.dtype}); "
          f"flushed {q.n_flushed} ({flushed_fraction(q):.3%}), saturated {q.n_saturated}")


if __name__ == "__main__":
    main(sys.argv[1:])
