"""benchmarks/run.py: ratios, verdicts and tables from fake timings (no benchmarking here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _jobs(bench):
    return {job.name: job for job in bench.build_jobs([(Path("x.npy"), (1000, 10))])}


def _result(bench, job, seconds, anchor_seconds, rss=(100.0,), anchor_rss=50.0):
    runs = [bench.Run(s, r, 0) for s, r in zip(seconds, rss * len(seconds))]
    anchors = [bench.Run(s, anchor_rss, 0) for s in anchor_seconds]
    return bench.Result(job, runs, anchors)


def test_jobs_and_selection(bench):
    jobs = bench.build_jobs([(Path("x.npy"), (1000, 10))])
    names = [job.name for job in jobs]
    assert names[:4] == ["compare", "thresholds", "check", "report"]
    assert names[4:] == [f"logits 1000x10 {d}" for d in ("float16", "bfloat16", "float32", "float64")]
    assert [j.name for j in bench.select(jobs, ["logits*b"])] == ["logits 1000x10 bfloat16"]
    assert [j.name for j in bench.select(jobs, ["check", "report"])] == ["check", "report"]
    assert bench.select(jobs, None) == jobs
    by_name = {job.name: job for job in jobs}
    assert by_name["logits 1000x10 float64"].argv[-6:] == ("-d", "float64", "--format", "json", "-o", "{tmp}/out.json")
    assert by_name["logits 1000x10 float16"].target.ratio is None
    assert by_name["logits 1000x10 float64"].target.ratio == 40
    assert by_name["compare"].argv[1:] == ("-m", "stabilitylab", "compare")


def test_block_jobs(bench):
    jobs = bench.build_jobs([(Path("x.npy"), (1000, 10))], [(Path("b.npy"), (1000, 100_000))])
    blocks = bench.select(jobs, ["blocks"])
    assert [j.name for j in blocks] == [f"blocks 1000x100000 {d}" for d in ("mxfp4", "nvfp4", "mxfp8")]
    assert blocks[1].argv[-6:] == ("-d", "nvfp4", "--format", "json", "-o", "{tmp}/out.json")
    assert all(j.target.rss_mb == 1024 and j.target.ratio is None for j in blocks)
    assert blocks[0].anchor.argv[-1] == "b.npy"


def test_ratio_and_verdict_use_the_best_runs(bench):
    compare = _jobs(bench)["compare"]
    result = _result(bench, compare, [1.3, 0.9, 1.1], [0.5, 0.4, 0.6], rss=(80.0, 95.0, 70.0))
    assert result.seconds == 0.9 and result.anchor_seconds == 0.4
    assert result.ratio == pytest.approx(2.25)
    assert result.rss_mb == 95.0
    assert result.verdict() == "misses (ratio)"
    assert bench.row(result) == ("compare", "0.90", "import", "0.40", "2.2x", "ratio ≤ 2x", "95", "misses (ratio)")
    result = _result(bench, compare, [0.7], [0.4])
    assert result.ratio == pytest.approx(1.75) and result.verdict() == "meets"


def test_work_wall_and_rss_targets(bench):
    jobs = _jobs(bench)
    assert _result(bench, jobs["thresholds"], [1.45], [0.4]).verdict() == "misses (work 1.05 s)"
    assert _result(bench, jobs["check"], [1.35], [0.4]).verdict() == "meets (work 0.95 s)"
    assert _result(bench, jobs["report"], [8.5], []).verdict() == "misses (time)"
    assert _result(bench, jobs["report"], [7.9], []).verdict() == "meets"
    assert bench.row(_result(bench, jobs["report"], [3.9], []))[1:5] == ("3.90", "—", "—", "—")
    logits = jobs["logits 1000x10 bfloat16"]
    assert _result(bench, logits, [0.5], [0.05], rss=(1500.0,)).verdict() == "misses (RSS)"
    assert _result(bench, logits, [0.6], [0.05], rss=(900.0,)).verdict() == "misses (ratio)"
    assert _result(bench, logits, [0.6], [0.05], rss=(2000.0,)).verdict() == "misses (ratio, RSS)"
    assert _result(bench, logits, [0.45], [0.05], rss=(900.0,)).verdict() == "meets"


def test_failed_job_is_reported_not_timed(bench):
    logits = _jobs(bench)["logits 1000x10 float32"]
    error = "stabilitylab: error: Invalid value for '--logits': more than 1,000,000 values"
    result = bench.Result(logits, [bench.Run(0.3, 40.0, 2, error)], [bench.Run(0.01, 60.0, 0)])
    assert result.seconds is None and result.ratio is None
    assert result.verdict() == "failed (exit 2)"
    assert bench.failures([result]) == [f"logits 1000x10 float32: exit 2: {error}"]
    killed = bench.Result(logits, [], [bench.Run(1.0, None, -9, "(no stderr)")])
    assert killed.verdict() == "anchor failed (killed by signal 9)"
    assert bench.first_line("\n  \nUsage: x\nError: y\n") == "Usage: x"


def test_tables(bench):
    jobs = _jobs(bench)
    results = [_result(bench, jobs["compare"], [0.9], [0.45]),
               _result(bench, jobs["logits 1000x10 float64"], [2.0], [0.08], rss=(120.0,), anchor_rss=55.0),
               _result(bench, jobs["logits 1000x10 float32"], [1.0], [0.1], anchor_rss=61.0)]
    md = bench.render(results, 3, markdown=True).splitlines()
    start = md.index("| " + " | ".join(bench.COLUMNS) + " |")
    assert md[start + 1] == "|---|---|---|---|---|---|---|---|"
    assert md[start + 2] == "| compare | 0.90 | import | 0.45 | 2.0x | ratio ≤ 2x | 100 | meets |"
    assert md[start + 3] == ("| logits 1000x10 float64 | 2.00 | log_softmax 1000x10 | 0.0800 | 25.0x | "
                             "ratio ≤ 40x, RSS ≤ 1024 MB | 120 | meets |")
    # the anchors table: best seconds and peak RSS over every run of that anchor
    assert "| log_softmax 1000x10 | 0.0800 | 61 |" in md
    assert "| import | 0.45 | 50 |" in md
    text = bench.render(results, 3).splitlines()
    header = next(line for line in text if line.startswith("job"))
    body = text[text.index(header) + 2]
    assert body.split() == ["compare", "0.90", "import", "0.45", "2.0x", "ratio", "≤", "2x", "100", "meets"]
    assert len(set(map(len, (header, text[text.index(header) + 1])))) == 1  # the rule spans the header
    assert all(line == line.rstrip() for line in text)


def test_npy_shape(bench, tmp_path):
    good = tmp_path / "a.npy"
    np.save(good, np.zeros((7, 3), np.float32))
    assert bench.npy_shape(good) == (7, 3)
    np.save(tmp_path / "b.npy", np.zeros((7, 3)))  # float64
    assert bench.npy_shape(tmp_path / "b.npy") is None
    (tmp_path / "c.npy").write_bytes(good.read_bytes()[:-4])  # truncated
    assert bench.npy_shape(tmp_path / "c.npy") is None
    assert bench.npy_shape(tmp_path / "missing.npy") is None


def test_trace_jobs_targets_and_step_memory(bench):
    jobs = {job.name: job for job in bench.trace_jobs()}
    assert list(jobs) == ["trace bf16 LM --rows 1", "trace bf16 LM", "headroom fp32 LM"]
    rows, full, head = jobs.values()
    assert (rows.target.ratio, rows.target.memory, full.target.ratio, full.target.memory) == (20, 4, 60, 4)
    assert head.target.ratio == 3 and head.anchor.name == "fp32 LM forward"
    assert rows.anchor.argv[-1] == "plain" and rows.argv[-1] == "trace-rows" and all(j.inner for j in jobs.values())
    assert rows.target.describe() == "ratio ≤ 20x, memory ≤ 4x"
    ok = bench.Result(rows, [bench.Run(3.0, 500.0, 0, step_mb=150.0), bench.Run(2.5, 500.0, 0, step_mb=170.0)],
                      [bench.Run(0.25, 300.0, 0, step_mb=50.0)])
    assert ok.ratio == pytest.approx(10.0) and ok.memory == pytest.approx(3.4) and ok.verdict() == "meets"
    heavy = bench.Result(full, [bench.Run(20.0, 900.0, 0, step_mb=260.0)], [bench.Run(0.25, 300.0, 0, step_mb=50.0)])
    assert heavy.verdict() == "misses (ratio, memory)"
    assert bench.memory_rows([ok, heavy]) == [("trace bf16 LM --rows 1", "170", "bf16 LM step", "50", "3.4x"),
                                              ("trace bf16 LM", "260", "bf16 LM step", "50", "5.2x")]
    assert "Step memory" in bench.render([ok], 2)


def test_trace_jobs_skip_without_the_core(bench, monkeypatch):
    jobs = [*bench.build_jobs([(Path("x.npy"), (1000, 10))])[:1], *bench.trace_jobs()]

    def probe(code):
        monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: type("P", (), {"returncode": code})())

    probe(0)
    assert bench.trace_skips(jobs) == (jobs, [])
    probe(3)
    kept, said = bench.trace_skips(jobs)
    assert [j.name for j in kept] == ["compare", "headroom fp32 LM"] and said[0].startswith("trace core not present")
    probe(4)
    kept, said = bench.trace_skips(jobs)
    assert [j.name for j in kept] == ["compare"] and "torch" in said[0]
    assert bench.trace_skips(jobs[:1]) == (jobs[:1], [])  # no probe without a trace job
