"""Model updates: a candidate detector or parameter set is validated, swapped in, rolled back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edge_agent.config import DEFAULT_DETECTOR, DEFAULT_SPEC
from edge_agent.model_update import (
    DetectorSlots,
    ParameterSlots,
    UpdateRejected,
    model_parameters,
    validate_detector,
    validate_parameters,
    windows_from_residuals,
)
from models.anomaly import train_detector
from models.anomaly.detector import OnnxDetector
from models.anomaly.graph import build_model
from models.process.engine import SpecModel
from models.process.spec import ModelSpec, load_spec


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    """The built-in water loop model."""
    return load_spec(DEFAULT_SPEC)


@pytest.fixture
def running_model(spec: ModelSpec) -> SpecModel:
    """The water loop at nominal parameters, re-synchronised and stepped for a few seconds."""
    model = SpecModel(spec)
    model.reset(spec.nominal_inputs, np.full(len(spec.outputs), np.nan))
    for _ in range(30):
        model.step(spec.nominal_inputs, 0.1)
    return model


@pytest.fixture(scope="module")
def running_detector() -> OnnxDetector:
    """The shipped detector."""
    return OnnxDetector.load(DEFAULT_DETECTOR)


def shipped_with_metadata(**changes: str) -> bytes:
    """The shipped detector with some metadata values replaced (the graph untouched)."""
    model = onnx.load(str(DEFAULT_DETECTOR))
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    return model.SerializeToString()


def recent_windows(detector: OnnxDetector, n: int = 20) -> np.ndarray:
    """Windows cut from a seeded residual history at the detector's residual scale."""
    rng = np.random.default_rng(3)
    history = rng.standard_normal((n * detector.window, 6)) * detector.residual_scale
    return windows_from_residuals(history, detector.window)


def test_candidate_detector_with_same_tags_and_window_is_accepted(
    running_detector: OnnxDetector, tmp_path: Path
) -> None:
    """A re-signed copy of the running detector (new provenance) validates and scores."""
    data = shipped_with_metadata(training_sha256="0" * 64, created="2030-01-01T00:00:00Z")
    staging = tmp_path / "det" / "staging.onnx"
    cand = validate_detector(data, running_detector, recent_windows(running_detector), staging)
    assert cand.metadata["training_sha256"] == "0" * 64
    assert cand.output_names == running_detector.output_names
    assert staging.read_bytes() == data


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: replace(p, window=30), "window is 30 ticks"),
        (lambda p: replace(p, output_names=("a", "b", "c", "d", "e", "f")), "scores tags"),
    ],
    ids=["window", "tag-names"],
)
def test_detector_with_other_window_or_tags_is_refused(
    running_detector: OnnxDetector, tmp_path: Path, make: object, expected: str
) -> None:
    """A detector built for another window length or other tags is refused with the reason."""
    assert callable(make)
    data = build_model(make(running_detector.params))
    with pytest.raises(UpdateRejected, match=expected):
        validate_detector(data, running_detector, None, tmp_path / "staging.onnx")
    assert not (tmp_path / "staging.onnx").exists()


def test_detector_retrained_for_fewer_outputs_is_refused(
    running_detector: OnnxDetector, tmp_path: Path
) -> None:
    """A tiny detector trained for four outputs is not a drop-in for the six-output one."""
    rng = np.random.default_rng(0)
    names = ("flow", "pressure", "level", "fluid_temp")
    data = train_detector(rng.standard_normal((4_000, 4)), names, window=50, seed=0)
    with pytest.raises(UpdateRejected, match="scores tags"):
        validate_detector(data, running_detector, None, tmp_path / "staging.onnx")


def test_detector_scoring_nan_is_refused(running_detector: OnnxDetector, tmp_path: Path) -> None:
    """A graph that loads but scores NaN (a corrupted constant) is refused before any swap."""
    model = onnx.load(str(DEFAULT_DETECTOR))
    for init in model.graph.initializer:
        if init.name == "centre":
            arr = numpy_helper.to_array(init).copy()
            arr[:] = np.nan
            init.CopyFrom(numpy_helper.from_array(arr, "centre"))
    with pytest.raises(UpdateRejected, match="NaN"):
        validate_detector(
            model.SerializeToString(), running_detector, None, tmp_path / "staging.onnx"
        )


def test_garbage_and_metadata_mismatch_are_refused(
    running_detector: OnnxDetector, tmp_path: Path
) -> None:
    """Bytes that are not ONNX, or metadata that contradicts the graph, name the problem."""
    with pytest.raises(UpdateRejected, match="not a valid detector"):
        validate_detector(b"\x08\x07garbage", running_detector, None, tmp_path / "s.onnx")
    data = shipped_with_metadata(window="40")
    with pytest.raises(UpdateRejected, match="not a valid detector"):
        validate_detector(data, running_detector, None, tmp_path / "s.onnx")


def test_recent_windows_of_wrong_shape_are_refused(
    running_detector: OnnxDetector, tmp_path: Path
) -> None:
    """The caller's recent windows must have the running detector's shape."""
    with pytest.raises(UpdateRejected, match="recent windows"):
        validate_detector(
            DEFAULT_DETECTOR.read_bytes(), running_detector, np.zeros((2, 10, 6), np.float32),
            tmp_path / "s.onnx",
        )  # fmt: skip


def test_windows_from_residuals_takes_the_latest() -> None:
    """Windows are cut from the end of the history, newest last, at half-window stride."""
    history = np.arange(100, dtype=np.float64).reshape(100, 1)
    w = windows_from_residuals(history, 10, max_windows=3)
    assert w.shape == (3, 10, 1)
    assert w[-1, -1, 0] == 99 and w[-1, 0, 0] == 90 and w[0, 0, 0] == 80
    assert windows_from_residuals(history[:5], 10).shape == (0, 10, 1)


def test_install_then_rollback_restores_the_previous_file(
    running_detector: OnnxDetector, tmp_path: Path
) -> None:
    """Install keeps the running file as previous; rollback swaps back, twice round-trips."""
    slots = DetectorSlots(tmp_path / "detector")
    original = DEFAULT_DETECTOR.read_bytes()
    new = shipped_with_metadata(training_sha256="1" * 64)
    validate_detector(new, running_detector, None, slots.staging)
    active = slots.install(DEFAULT_DETECTOR)
    assert active.read_bytes() == new and slots.previous.read_bytes() == original
    assert not slots.staging.exists()
    assert DEFAULT_DETECTOR.read_bytes() == original  # the configured file is never written
    restored = slots.rollback(running_detector)
    assert restored.metadata["training_sha256"] == running_detector.metadata["training_sha256"]
    assert slots.active.read_bytes() == original and slots.previous.read_bytes() == new
    again = slots.rollback(running_detector)
    assert again.metadata["training_sha256"] == "1" * 64


def test_rollback_without_history_or_with_a_broken_previous_is_refused(
    running_detector: OnnxDetector, tmp_path: Path
) -> None:
    """Nothing to roll back to, or a previous file that no longer loads: refused, nothing moved."""
    slots = DetectorSlots(tmp_path / "detector")
    with pytest.raises(UpdateRejected, match="no previous"):
        slots.rollback(running_detector)
    validate_detector(DEFAULT_DETECTOR.read_bytes(), running_detector, None, slots.staging)
    slots.install(DEFAULT_DETECTOR)
    slots.previous.write_bytes(b"broken")
    with pytest.raises(UpdateRejected, match="no longer loads"):
        slots.rollback(running_detector)
    assert slots.active.read_bytes() == DEFAULT_DETECTOR.read_bytes()


def test_parameter_update_applies_and_keeps_state(
    spec: ModelSpec, running_model: SpecModel
) -> None:
    """A partial update changes the named values only; the new model continues the old state."""
    before = model_parameters(running_model).copy()
    state = running_model.state
    new = validate_parameters(
        {"head_shutoff_m": 34.0, "pump_efficiency_frac": 0.5}, running_model,
        spec.nominal_inputs,
    )  # fmt: skip
    p = model_parameters(new)
    assert p[spec.index("head_shutoff_m")] == 34.0
    assert p[spec.index("pump_efficiency_frac")] == 0.5
    others = [i for i, n in enumerate(spec.params) if n not in ("head_shutoff_m",
              "pump_efficiency_frac")]  # fmt: skip
    np.testing.assert_array_equal(p[others], before[others])
    np.testing.assert_array_equal(new.state, state)
    np.testing.assert_array_equal(model_parameters(running_model), before)  # old one untouched
    y_new = new.step(spec.nominal_inputs, 0.1)
    y_old = running_model.step(spec.nominal_inputs, 0.1)
    assert np.isfinite(y_new).all() and not np.array_equal(y_new, y_old)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"head_shutoff_m": 99.0}, r"head_shutoff_m = 99 outside its range \[20, 45\]"),
        ({"head_shutoff_m": float("nan")}, "head_shutoff_m is not finite"),
        ({"pump_efficiency_frac": float("inf")}, "pump_efficiency_frac is not finite"),
        ({"no_such_param": 1.0}, "has no parameter"),
        ({}, "empty parameter set"),
    ],
    ids=["out-of-range", "nan", "inf", "unknown", "empty"],
)
def test_bad_parameter_sets_are_refused(
    running_model: SpecModel, values: dict[str, float], expected: str
) -> None:
    """Unknown names, non-finite or out-of-range values are refused with the name."""
    before = model_parameters(running_model).copy()
    with pytest.raises(UpdateRejected, match=expected):
        validate_parameters(values, running_model)
    np.testing.assert_array_equal(model_parameters(running_model), before)


TINY_MODEL = """
STATES = ("x",)
INPUTS = ("u",)
OUTPUTS = ("x",)
PARAMS = ("k",)
K = PARAMS.index("k")


def derivative(x, u, p, dx):
    dx[0] = u[0] / (p[K] - 1.0) - x[0]


def output(x, u, p, y):
    y[0] = x[0]
"""

TINY_TOML = """
[model]
name = "tiny_pole"
file = "tiny_pole.py"
[nominal_inputs]
u = 1.0
[params]
k = { nominal = 0.5, range = [0.0, 2.0], about = "a pole at k = 1" }
"""


def test_parameters_inside_range_that_blow_up_the_model_are_refused(tmp_path: Path) -> None:
    """A value inside its declared range that makes the model infinite is caught by stepping."""
    (tmp_path / "tiny_pole.py").write_text(TINY_MODEL)
    (tmp_path / "tiny_pole.toml").write_text(TINY_TOML)
    model = SpecModel(load_spec(tmp_path / "tiny_pole.toml"))
    model.reset(np.array([1.0]), np.array([np.nan]))
    assert validate_parameters({"k": 1.5}, model) is not model
    with pytest.raises(UpdateRejected, match="NaN or infinity after"):
        validate_parameters({"k": 1.0}, model)


def test_parameter_slots_rollback_and_persistence(
    spec: ModelSpec, running_model: SpecModel, tmp_path: Path
) -> None:
    """Install records the previous set; rollback restores it; a restart reads the record."""
    path = tmp_path / "parameters.json"
    slots = ParameterSlots(spec, path)
    assert slots.active is None
    new = validate_parameters({"ambient_temp_c": 25.0}, running_model)
    slots.install(new, running_model)
    assert json.loads(path.read_text())["active"]["ambient_temp_c"] == 25.0
    reread = ParameterSlots(spec, path)
    assert reread.active is not None
    assert reread.active[spec.index("ambient_temp_c")] == 25.0
    restored = slots.rollback(new)
    np.testing.assert_array_equal(model_parameters(restored), spec.nominal)
    np.testing.assert_array_equal(restored.state, new.state)
    assert slots.previous is not None and slots.previous[spec.index("ambient_temp_c")] == 25.0
    with pytest.raises(UpdateRejected, match="no previous"):
        ParameterSlots(spec).rollback(running_model)


def test_corrupt_parameter_record_is_moved_aside(spec: ModelSpec, tmp_path: Path) -> None:
    """An unreadable or out-of-range record is not applied; it is kept aside for inspection."""
    path = tmp_path / "parameters.json"
    path.write_text('{"model": "water_loop", "active": {"head_shutoff_m": 1e9}, "previous": null}')
    slots = ParameterSlots(spec, path)
    assert slots.active is None and not path.exists()
    assert (tmp_path / "parameters.json.corrupt").exists()
