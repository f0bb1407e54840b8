"""`edge-agent train --segment-min`: how the training run is cut into re-synchronised segments,
and the clear errors for a segment length the run cannot hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import structlog

from edge_agent.cli import main
from edge_agent.train import DEFAULT_SEGMENT_MIN, segments, write_recording
from hil.plant import PlantParams, simulate


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    """`main(["train", ...])` configures structlog onto this test's captured stderr; undo it
    so later tests do not log into a closed stream."""
    yield None
    structlog.reset_defaults()


def ticks(minutes: float, hz: float = 10.0) -> np.ndarray:
    return 1.7e9 + np.arange(round(minutes * 60 * hz)) / hz


def test_segments_are_never_shorter_than_asked() -> None:
    """Eight hours in 60-minute segments: eight of 36,000 rows; a run of 1.5 or 2.5 segment
    lengths gives one or two longer segments, not more shorter ones."""
    cut = segments(ticks(480), 3600.0)
    assert [len(s) for s in cut] == [36_000] * 8
    assert np.array_equal(np.concatenate(cut), np.arange(8 * 36_000))
    assert [len(s) for s in segments(ticks(90), 3600.0)] == [54_000]
    assert [len(s) for s in segments(ticks(150), 3600.0)] == [45_000, 45_000]
    assert len(segments(ticks(60), 3600.0)) == 1  # exactly one segment long


def test_segments_refuse_a_run_shorter_than_one_segment() -> None:
    with pytest.raises(ValueError, match=r"--segment-min 60 is longer than the run \(59 min"):
        segments(ticks(59), 3600.0)
    with pytest.raises(ValueError, match="at least two"):
        segments(ticks(0.1 / 60), 3600.0)


def test_default_segment_is_long_against_the_motor_time_constant() -> None:
    """The demo motor's thermal time constant (heat capacity x thermal resistance) is ~46 min;
    the default segment must be longer, or the detector learns the settling after a reset."""
    p = PlantParams()
    tau_min = p.motor_heat_capacity_j_per_k * p.motor_thermal_resistance_k_per_w / 60.0
    assert 40.0 < tau_min < DEFAULT_SEGMENT_MIN


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_cli_refuses_a_non_positive_segment(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.onnx"
    rc = main(["train", "--minutes", "30", "--segment-min", value, "--out", str(out)])
    assert rc == 2
    assert "--segment-min" in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_a_segment_longer_than_the_simulated_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before anything is simulated, naming both lengths and the fix."""
    out = tmp_path / "d.onnx"
    assert main(["train", "--minutes", "30", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--segment-min 60 is longer than the run (30 minutes)" in err
    assert "raise --minutes" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve minutes of the rig's normal operation as a CSV recording."""
    ts, cols = simulate(12 * 60.0, rate_hz=10.0, seed=5)
    path = tmp_path_factory.mktemp("rec") / "normal.csv"
    write_recording(path, ts, cols)
    return path


def test_cli_refuses_a_segment_longer_than_the_recording(
    recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.onnx"
    rc = main(["train", "--data", str(recording), "--segment-min", "15", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(recording) in err and "--segment-min 15 is longer than the run (12 minutes)" in err
    assert not out.exists()


def test_segment_length_sets_the_resets_the_detector_is_trained_on(
    recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One 12-minute segment keeps all rows but the first window; three 4-minute segments
    drop a window after each of their three re-synchronisations, and learn other residuals."""
    fingerprints = {}
    for minutes, count in ((12, 1), (4, 3)):
        out = tmp_path / f"d{minutes}.onnx"
        argv = ["train", "--data", str(recording), "--segment-min", str(minutes)]
        assert main([*argv, "--out", str(out)]) == 0
        captured = capsys.readouterr()
        assert f"wrote {out}" in captured.out
        events = {e["event"]: e for e in log_events(captured.err)}
        assert events["segments"]["count"] == count
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        # 7,201 rows: the simulation samples both ends of its 720 s
        assert events["training detector"]["rows"] == 7201 - count * int(meta["window"])
        fingerprints[minutes] = meta["training_sha256"]
    assert fingerprints[12] != fingerprints[4]


def log_events(text: str) -> list[dict[str, object]]:
    """The JSON log lines in `text` (the CLI logs JSON when its output is not a terminal)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            assert isinstance(event, dict)
            out.append(event)
    return out
