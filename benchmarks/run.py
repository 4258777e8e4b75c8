"""Benchmarks (not tests): wall time of the main jobs, best of a few runs.

    python3 benchmarks/run.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from timing import best


def main() -> None:
    from stabilitylab import report
    from stabilitylab import thresholds as th
    from stabilitylab.engine import compare
    from stabilitylab.experiments import EXPERIMENTS
    from stabilitylab.experiments.likelihood import iid
    from stabilitylab.experiments.softmax_ce import Logits
    from stabilitylab.formats import ALL_FORMATS, DEFAULT_FORMATS

    def thresholds(*args):
        th._MEMO.clear()  # measure the search, not the in-process memo
        return th.thresholds(*args)

    experiments = list(EXPERIMENTS.values())
    rows = []
    rows.append(("compare, default cases, 4 formats (in process)", best(lambda: compare(experiments, DEFAULT_FORMATS))))
    rows.append(("compare, default cases, 6 formats (in process)", best(lambda: compare(experiments, ALL_FORMATS))))
    rows.append(("compare likelihood p=0.5, n=10**18, 4 formats",
                 best(lambda: compare([EXPERIMENTS["likelihood"]], DEFAULT_FORMATS,
                                      {"likelihood": iid(0.5, 10**18)}))))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10_000, 10)) * 5
    batch = Logits(tuple(f"row={i}" for i in range(len(x))), x, x.argmax(1), np.full(len(x), 10))
    rows.append(("compare softmax_ce, 10,000 x 10 logits, 4 formats",
                 best(lambda: compare([EXPERIMENTS["softmax_ce"]], DEFAULT_FORMATS, {"softmax_ce": batch}), 1)))
    core = [EXPERIMENTS["likelihood"], EXPERIMENTS["softmax_ce"]]
    rows.append(("thresholds, likelihood + softmax_ce families, 4 formats",
                 best(lambda: thresholds(core, DEFAULT_FORMATS))))
    rows.append(("thresholds, all 8 families, 4 formats", best(lambda: thresholds(experiments, DEFAULT_FORMATS))))
    rows.append(("thresholds, all 8 families, 6 formats", best(lambda: thresholds(experiments, ALL_FORMATS), 1)))
    rows.append(("report build, 4 formats (in process)",
                 best(lambda: (th._MEMO.clear(), report.build(DEFAULT_FORMATS)), 1)))
    exe = [sys.executable, "-m", "stabilitylab"]
    rows.append(("python -m stabilitylab --help (import time)",
                 best(lambda: subprocess.run([*exe, "--help"], capture_output=True, check=True))))
    rows.append(("python -m stabilitylab compare (whole process)",
                 best(lambda: subprocess.run([*exe, "compare"], capture_output=True, check=True))))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.json"
        subprocess.run([*exe, "check", "--baseline", str(path), "--update"], capture_output=True, check=True)
        rows.append(("python -m stabilitylab check (whole process)",
                     best(lambda: subprocess.run([*exe, "check", "--baseline", str(path)], capture_output=True,
                                                 check=True))))
    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
