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


def _logits(bench, job, seconds, bare, scipy, blocked, rss=(100.0,), methods=4, cpus=2):
    """A user-logits result: job runs, bare-process runs, and anchor runs printing scipy's seconds and
    the blocked log-sum-exp's (with the methods and CPUs of the floor)."""
    runs = [bench.Run(s, r, 0) for s, r in zip(seconds, rss * len(seconds))]
    anchors = [bench.Run(s, 60.0, 0, extra={"blocked": b, "methods": methods, "cpus": cpus})
               for s, b in zip(scipy, blocked)]
    return bench.Result(job, runs, anchors, [bench.Run(s, 40.0, 0) for s in bare])


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
    assert by_name["logits 1000x10 float64"].target.ratio == 20  # work / the blocked anchor (issue #22)
    assert by_name["logits 1000x10 bfloat16"].target.ratio == by_name["logits 1000x10 float32"].target.ratio == 5
    assert by_name["logits 1000x10 float32"].bare.argv[1:] == ("-c", "import stabilitylab.cli")
    assert by_name["compare"].bare is None
    assert by_name["compare"].argv[1:] == ("-m", "stabilitylab", "compare")


def test_block_jobs(bench):
    jobs = bench.build_jobs([(Path("x.npy"), (1000, 10))], [(Path("b.npy"), (1000, 100_000))])
    blocks = bench.select(jobs, ["blocks"])
    assert [j.name for j in blocks] == [f"blocks 1000x100000 {d}" for d in ("mxfp4", "nvfp4", "mxfp8")]
    assert blocks[1].argv[-6:] == ("-d", "nvfp4", "--format", "json", "-o", "{tmp}/out.json")
    assert all(j.target.rss_mb == 1024 and j.target.ratio is None for j in blocks)
    assert blocks[0].anchor.argv[3] == "b.npy" and blocks[0].anchor.inner


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
    logits = jobs["logits 1000x10 bfloat16"]  # work / blocked <= 5x, RSS <= 1024 MB
    assert _logits(bench, logits, [0.7], [0.3], [1.0], [0.1], rss=(1500.0,)).verdict() == "misses (RSS)"
    assert _logits(bench, logits, [0.9], [0.3], [1.0], [0.1], rss=(900.0,)).verdict() == "misses (ratio)"
    assert _logits(bench, logits, [0.9], [0.3], [1.0], [0.1], rss=(2000.0,)).verdict() == "misses (ratio, RSS)"
    assert _logits(bench, logits, [0.75], [0.3], [1.0], [0.1], rss=(900.0,)).verdict() == "meets"


def test_logits_work_is_the_process_minus_the_bare_one_against_the_blocked_anchor(bench):
    logits = _jobs(bench)["logits 1000x10 float64"]
    result = _logits(bench, logits, [3.0, 2.5], [0.5, 0.4], [1.2, 1.0], [0.12, 0.1], methods=4, cpus=2)
    assert result.seconds == 2.5 and result.bare_seconds == 0.4 and result.work == pytest.approx(2.1)
    assert result.anchor_seconds == 1.0 and result.blocked_seconds == 0.1
    assert result.ratio == pytest.approx(21.0) and result.scipy_ratio == pytest.approx(2.1)
    assert result.floor == pytest.approx(5 * 0.1 / 2)
    assert result.verdict() == "misses (ratio)"
    assert bench.logits_row(result) == ("logits 1000x10 float64", "2.50", "0.40", "2.10", "0.10", "1.00", "0.25",
                                        "21.0x", "2.1x", "work / blocked ≤ 20x, RSS ≤ 1024 MB", "100",
                                        "misses (ratio)")
    failed = bench.Result(logits, [bench.Run(1.0, 10.0, 0)], [], [bench.Run(0.1, 10.0, 1, "boom")])
    assert failed.verdict() == "bare failed (exit 1)" and failed.work is None


def test_blocked_anchor_is_a_log_sum_exp(bench):
    """The blocked anchor's function (run in the anchor's process) computes log(sum(exp(x))) per row,
    narrow rows column by column and wide rows in column blocks (checked with float64 numpy)."""
    space = {"np": np}
    exec(bench.BLOCKED_LSE_CODE, space)
    rng = np.random.default_rng(3)
    for shape, block in (((1000, 10), 64), ((7, 300), 64), ((5, 1000), 4096), ((3, 17), 8)):
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        out = np.empty(len(x), np.float32)
        space["blocked_lse"](x, out, block)
        x64 = x.astype(np.float64)
        m = x64.max(axis=1)
        want = np.log(np.exp(x64 - m[:, None]).sum(axis=1)) + m
        assert np.allclose(out, want, rtol=1e-5, atol=1e-5), shape


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
               _logits(bench, jobs["logits 1000x10 float64"], [2.0], [0.4], [0.08], [0.2], rss=(120.0,)),
               _logits(bench, jobs["logits 1000x10 float32"], [1.0], [0.5], [0.1], [0.12])]
    md = bench.render(results, 3, markdown=True).splitlines()
    start = md.index("| " + " | ".join(bench.COLUMNS) + " |")
    assert md[start + 1] == "|---|---|---|---|---|---|---|---|"
    assert md[start + 2] == "| compare | 0.90 | import | 0.45 | 2.0x | ratio ≤ 2x | 100 | meets |"
    assert md[start + 3] == ""  # the user-logits jobs have a table of their own
    start = md.index("| " + " | ".join(bench.LOGITS_COLUMNS) + " |")
    assert md[start + 2] == ("| logits 1000x10 float64 | 2.00 | 0.40 | 1.60 | 0.20 | 0.0800 | 0.50 | 8.0x | 20.0x "
                             "| work / blocked ≤ 20x, RSS ≤ 1024 MB | 120 | meets |")
    # the anchors table: best seconds and peak RSS over every run of that anchor (the bare process too)
    assert "| log_softmax 1000x10 | 0.0800 | 60 |" in md
    assert "| import | 0.45 | 50 |" in md
    assert "| bare | 0.40 | 40 |" in md
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
    assert ok.ratio == pytest.approx(10.0) and ok.step_memory == pytest.approx(3.4) and ok.verdict() == "meets"
    assert ok.memory == pytest.approx(500.0 / 300.0)  # the target's: peak RSS, job over anchor
    heavy = bench.Result(full, [bench.Run(20.0, 1300.0, 0, step_mb=260.0)], [bench.Run(0.25, 300.0, 0, step_mb=50.0)])
    assert heavy.verdict() == "misses (ratio, memory)"
    assert bench.memory_rows([ok, heavy]) == [("trace bf16 LM --rows 1", "170", "bf16 LM step", "50", "3.4x", "1.7x"),
                                              ("trace bf16 LM", "260", "bf16 LM step", "50", "5.2x", "4.3x")]
    assert "peak ratio" in bench.render([ok], 2)


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


def test_update_rewrites_only_the_generated_block(bench, tmp_path):
    page = tmp_path / "speed.md"
    page.write_text(f"# Speed\nbefore\n{bench.MARK_BEGIN}\nold table\n{bench.MARK_END}\nafter\n", encoding="utf-8")
    bench.update(page, "| new | table |", "--only logits")
    text = page.read_text(encoding="utf-8")
    assert text.startswith(f"# Speed\nbefore\n{bench.MARK_BEGIN}\n| new | table |\n\n(`python benchmarks/run.py --only "
                           "logits`, ")
    assert text.endswith(f"UTC)\n{bench.MARK_END}\nafter\n") and "old table" not in text
    (tmp_path / "plain.md").write_text("no block\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no block"):
        bench.update(tmp_path / "plain.md", "x", "")
