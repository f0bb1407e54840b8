"""Runtime checks of the sensor-window detector on a tiny model built here, the shared alarm
logic against the agent's tracker, and smoke runs of the SKAB benchmarks (no timing asserted)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_agent.alarms import AlarmTracker
from models.anomaly.alarm import AlarmSettings, alarm_series
from models.anomaly.detector import OnnxDetector
from models.anomaly.sensor import SensorDetector, SensorParams
from models.anomaly.sensor_graph import build_sensor_model
from models.base import ModelError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("flow", "temp")


@pytest.fixture()
def tiny() -> SensorParams:
    """Two inputs, window 4, features mean:flow and slope:temp, identity precision."""
    return SensorParams(
        input_names=NAMES,
        window=4,
        features=("mean:flow", "slope:temp"),
        centre=np.array([10.0, 0.0]),
        scale=np.array([2.0, 0.5]),
        location=np.zeros(2),
        precision=np.eye(2),
        d2_threshold=4.0,
        provenance={"training_sha256": "ab" * 32, "created": "x", "seed": "0", "version": "t"},
    )


def write(tmp_path: Path, model: bytes, name: str = "m.onnx") -> Path:
    p = tmp_path / name
    p.write_bytes(model)
    return p


def test_tiny_model_scores_by_hand(tiny: SensorParams, tmp_path: Path) -> None:
    """flow mean 14 (z=2) and temp slope 0.5/row (z=1): score sqrt(5/4); flow contributes 4/5."""
    det = SensorDetector.load(write(tmp_path, build_sensor_model(tiny)), NAMES)
    window = np.column_stack([np.full(4, 14.0), 20.0 + 0.5 * np.arange(4)])
    assert det.score(window) == pytest.approx(np.sqrt(5 / 4), rel=1e-5)
    share = det.contributions(window[None])[0]
    assert share[0] == pytest.approx(1.0, rel=1e-5) and share[1] == pytest.approx(0.25, rel=1e-5)


def test_max_distance_scores_by_hand(tiny: SensorParams, tmp_path: Path) -> None:
    """distance "max": the largest standardised deviation; flow (z=2) decides the score
    sqrt(4/4) = 1 alone, temp (z=1) contributes its own 1/4."""
    params = dataclasses.replace(tiny, distance="max")
    det = SensorDetector.load(write(tmp_path, build_sensor_model(params)), NAMES)
    assert det.params.distance == "max" and det.metadata["distance"] == "max"
    window = np.column_stack([np.full(4, 14.0), 20.0 + 0.5 * np.arange(4)])
    assert det.score(window) == pytest.approx(1.0, rel=1e-5)
    share = det.contributions(window[None])[0]
    assert share[0] == pytest.approx(1.0, rel=1e-5) and share[1] == pytest.approx(0.25, rel=1e-5)
    # The same window under the summed (Mahalanobis) distance scores higher: sqrt(5/4).
    summed = SensorDetector.load(write(tmp_path, build_sensor_model(tiny), "s.onnx"), NAMES)
    assert summed.score(window) > det.score(window)


def test_distance_key_old_files_and_unknown_values(tiny: SensorParams, tmp_path: Path) -> None:
    """A file written before the distance key existed reads as Mahalanobis; an unknown
    distance is refused, naming the file and the known ones."""
    model = onnx.load_from_string(build_sensor_model(tiny))
    keep = [p for p in model.metadata_props if p.key != "distance"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    old = SensorDetector.load(write(tmp_path, model.SerializeToString(), "old.onnx"), NAMES)
    assert old.params.distance == "mahalanobis"
    meta = {**tiny.to_metadata(), "distance": "euclid"}
    with pytest.raises(ModelError, match=r"c\.onnx: distance is 'euclid'.*'max'"):
        SensorParams.from_metadata(meta, "c.onnx")


def test_wrong_inputs_are_refused_and_old_detector_keeps_running(
    tiny: SensorParams, tmp_path: Path
) -> None:
    """Loading against other input names fails naming the file; the loaded one still scores."""
    path = write(tmp_path, build_sensor_model(tiny))
    old = SensorDetector.load(path, NAMES)
    with pytest.raises(ModelError, match=r"m\.onnx.*\['flow', 'temp'\].*\['temp', 'flow'\]"):
        SensorDetector.load(path, ("temp", "flow"))
    assert np.isfinite(old.score(np.ones((4, 2))))


def test_metadata_that_contradicts_graph_is_refused(tiny: SensorParams, tmp_path: Path) -> None:
    """A graph for window 4 whose metadata says 5 is refused, naming file and shapes."""
    model = onnx.load_from_string(build_sensor_model(tiny))
    for prop in model.metadata_props:
        if prop.key == "window":
            prop.value = "5"
    path = write(tmp_path, model.SerializeToString(), "bad.onnx")
    with pytest.raises(ModelError, match=r"bad\.onnx: graph input shape .*window=5"):
        SensorDetector.load(path)


def test_missing_or_malformed_metadata(tiny: SensorParams, tmp_path: Path) -> None:
    """A missing key and a feature of an unknown input are named."""
    model = onnx.load_from_string(build_sensor_model(tiny))
    keep = [p for p in model.metadata_props if p.key != "training_sha256"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    with pytest.raises(ModelError, match="lacks training_sha256"):
        SensorDetector.load(write(tmp_path, model.SerializeToString(), "a.onnx"))
    odd = dataclasses.replace(tiny, features=("mean:flow", "slope:pressure"))
    with pytest.raises(ModelError, match="slope:pressure"):
        SensorParams.from_metadata(odd.to_metadata(), "b.onnx")


def test_each_runtime_refuses_the_other_kind(tiny: SensorParams, tmp_path: Path) -> None:
    """The rig's OnnxDetector refuses a sensor detector by its kind, and vice versa."""
    path = write(tmp_path, build_sensor_model(tiny))
    with pytest.raises(ModelError, match="detector_kind is 'sensor-window-mahalanobis'"):
        OnnxDetector.load(path)
    rig = ROOT / "models" / "anomaly" / "loop_detector.onnx"
    with pytest.raises(ModelError, match="detector_kind is 'per-tag-mahalanobis'"):
        SensorDetector.load(rig)


def test_not_onnx_is_refused(tmp_path: Path) -> None:
    """Random bytes are a ModelError naming the file."""
    with pytest.raises(ModelError, match=r"junk\.onnx: not a loadable"):
        SensorDetector.load(write(tmp_path, b"\x00junk", "junk.onnx"))


def test_alarm_logic_matches_agent_tracker() -> None:
    """On a random score series with NaNs, alarm_series equals the agent's AlarmTracker."""
    rng = np.random.default_rng(5)
    score = np.clip(np.cumsum(rng.standard_normal(3000)) * 0.05 + 0.8, 0, None)
    score[rng.random(3000) < 0.05] = np.nan
    ts = np.arange(3000, dtype=float)
    settings = AlarmSettings(1.0, 0.7, 3.0, 5.0)
    ours = alarm_series(ts, score, settings)
    tracker = AlarmTracker(
        ("x",), raise_level=1.0, clear_level=0.7, raise_after_s=3.0, clear_after_s=5.0
    )
    theirs = np.zeros(3000, dtype=bool)
    for k in range(3000):
        tracker.update(ts[k], score[k : k + 1], np.zeros(1, dtype=bool), [""])
        theirs[k] = tracker.anomaly[0]
    assert ours.any() and (~ours).any()
    assert np.array_equal(ours, theirs)


def test_alarm_hysteresis_by_hand() -> None:
    """Raise after 2 s at >= 1, hold while >= 0.7, clear after 1 s below 0.7."""
    s = AlarmSettings(1.0, 0.7, 2.0, 1.0)
    score = [1.2, 1.2, 1.2, 0.8, 0.6, 0.6, 0.6]
    assert alarm_series(np.arange(7.0), np.array(score), s).tolist() == [
        False,
        False,
        True,
        True,
        True,
        False,
        False,
    ]


def test_detector_skab_bench_smoke(tmp_path: Path) -> None:
    """bench.detector_skab --quick prints its table and writes a result with the target."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.detector_skab", "--quick", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "onnx score" in proc.stdout and "vs baseline" in proc.stdout
    result = json.loads((tmp_path / "detector_skab.json").read_text())
    assert result["targets"][0]["limit"] == 20.0
    assert {r["case"] for r in result["rows"]} >= {"numpy", "onnx score"}
