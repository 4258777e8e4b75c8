"""``stabilitylab trace --headroom`` and ``--figure`` on the command line (torch: the torch step of CI)."""

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from stabilitylab.cli import main  # noqa: E402

PLANTED = str(Path(__file__).parent / "trace_models" / "planted.py")


def test_headroom_names_the_fp16_overflow_of_the_feed_forward(tmp_path, capsys):
    """fc2's output is 16 * 80 * 60 = 76800 per element: past float16's 65504, within bfloat16's range."""
    out = tmp_path / "room.json"
    assert main(["trace", f"{PLANTED}:feed_forward", "--headroom", "-d", "fp16", "-d", "bf16", "--json",
                 str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "stabilitylab.headroom/1"
    fc2 = next(m for m in doc["modules"] if m["module"] == "ff.fc2")
    assert fc2["amax"] == 76800.0
    assert fc2["formats"]["float16"]["overflow"] == 8 and fc2["formats"]["float16"]["margin_binades"] < 0
    assert fc2["formats"]["bfloat16"]["overflow"] == 0
    verdicts = {f["name"]: f["verdict"] for f in doc["formats"]}
    assert verdicts["float16"].startswith("overflows") and verdicts["bfloat16"].startswith("fits")
    assert "Headroom" in capsys.readouterr().out


def test_figure_is_a_png_and_headroom_refuses_the_trace_outputs(tmp_path, capsys):
    png = tmp_path / "trace.png"
    assert main(["trace", f"{PLANTED}:feed_forward", "-d", "fp16", "--figure", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["trace", f"{PLANTED}:feed_forward", "--headroom", "--figure", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "not with --headroom" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_an_overflowed_output_is_never_read_as_no_drift():
    """The fp16 fc2 output holds inf where its float64 twin is 76800: its drift is every bit, not 0."""
    result = __import__("stabilitylab").trace(f"{PLANTED}:feed_forward", "fp16", backward=False)
    cells = {c["module"]: c for c in result.to_dict()["modules"]}
    assert cells["ff.fc2"]["worst_drift_bits"] == "inf" and cells["ff.fc2"]["counts"] == {"range": 8}
    assert cells["FFModel"]["worst_drift_bits"] == "inf"  # the mean passes the inf on: drift, not its own fault
    assert cells["FFModel"]["worst_error_bits"] == 0.0 and cells["ff.fc1"]["worst_drift_bits"] == 0.0
