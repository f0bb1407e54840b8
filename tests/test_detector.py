"""Tests for the ONNX anomaly detector: training, the graph, the file format and the runtime."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.anomaly import OnnxDetector, train_detector
from models.anomaly.detector import DetectorParams
from models.anomaly.graph import build_model
from models.base import ModelError

NAMES = ("level", "temperature", "flow", "current")
SCALES = np.array([0.05, 0.5, 2.0, 0.01])
WINDOW = 50
FaultFn = Callable[[np.ndarray, int], np.ndarray]


def normal_residuals(seed: int, ticks: int) -> np.ndarray:
    """Seeded Gaussian noise with per-tag scales plus a slow AR(1) wander (time constant 500)."""
    rng = np.random.default_rng(seed)
    phi = np.exp(-1 / 500)
    kicks = rng.standard_normal((ticks, len(NAMES))) * np.sqrt(1 - phi**2) * 0.3
    wander = np.empty_like(kicks)
    wander[0] = rng.standard_normal(len(NAMES)) * 0.3
    for t in range(1, ticks):
        wander[t] = phi * wander[t - 1] + kicks[t]
    noise = rng.standard_normal((ticks, len(NAMES)))
    residuals: np.ndarray = (noise + wander) * SCALES
    return residuals


@pytest.fixture(scope="module")
def training() -> np.ndarray:
    """Normal-operation residuals with a NaN stretch on one tag (an invalid output)."""
    data = normal_residuals(1, 20_000)
    data[5_000:5_400, 1] = np.nan
    return data


@pytest.fixture(scope="module")
def model_bytes(training: np.ndarray) -> bytes:
    """The detector trained once for this module."""
    return train_detector(training, NAMES, window=WINDOW, seed=0)


@pytest.fixture(scope="module")
def model_file(model_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained detector written to a file."""
    path = tmp_path_factory.mktemp("detector") / "detector.onnx"
    path.write_bytes(model_bytes)
    return path


@pytest.fixture(scope="module")
def detector(model_file: Path) -> OnnxDetector:
    """The trained detector loaded from its file, names checked."""
    return OnnxDetector.load(model_file, expected_outputs=NAMES)


@pytest.fixture(scope="module")
def fresh() -> np.ndarray:
    """Normal residuals never seen in training."""
    return normal_residuals(2, 20_000)


def all_windows(data: np.ndarray) -> np.ndarray:
    """Every window (stride 1) of `data` as `(n, WINDOW, J)`."""
    return np.lib.stride_tricks.sliding_window_view(data, WINDOW, axis=0).transpose(0, 2, 1)


def reference(windows: np.ndarray, meta: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Features `(n, J, 3)` and scores `(n, J)` in float64, from the metadata's documented math."""
    mean_f = np.array(json.loads(meta["feature_mean"]))
    std_f = np.array(json.loads(meta["feature_std"]))
    loc = np.array(json.loads(meta["robust_location"]))
    cov = np.array(json.loads(meta["robust_covariance"]))
    thr = np.array(json.loads(meta["d2_threshold"]))
    eps = np.array(json.loads(meta["log_std_eps"]))
    x = windows.astype(np.float64)
    t = np.arange(WINDOW) - (WINDOW - 1) / 2
    mean = x.mean(axis=1)
    slope = np.einsum("t,ntj->nj", t, x - mean[:, None, :]) / np.sum(t * t)
    # Spread about the window's least-squares line (a ramp does not count as noise).
    std = (x - mean[:, None, :] - slope[:, None, :] * t[None, :, None]).std(axis=1)
    feats = np.stack([mean, np.log(std + eps), slope], axis=2)
    scores = np.empty(mean.shape)
    for j in range(len(thr)):
        d = (feats[:, j] - mean_f[j]) / std_f[j] - loc[j]
        d2 = np.einsum("nk,nk->n", d, np.linalg.solve(cov[j], d.T).T)
        scores[:, j] = np.sqrt(d2 / thr[j])
    return feats, scores


def _ramp(x: np.ndarray, j: int) -> np.ndarray:
    x[:, j] += SCALES[j] * 5.0 * np.arange(WINDOW) / WINDOW
    return x


def _offset(x: np.ndarray, j: int) -> np.ndarray:
    x[:, j] += 4.0 * SCALES[j]
    return x


def _drift(x: np.ndarray, j: int) -> np.ndarray:
    x[:, j] += SCALES[j] * (3.5 + 0.5 * np.arange(WINDOW) / WINDOW)
    return x


def _stuck(x: np.ndarray, j: int) -> np.ndarray:
    x[:, j] = x[0, j]
    return x


def _noisy(x: np.ndarray, j: int) -> np.ndarray:
    x[:, j] += 3.0 * SCALES[j] * np.random.default_rng(j).standard_normal(WINDOW)
    return x


FAULTS: dict[str, FaultFn] = {
    "offset": _offset,
    "drift": _drift,
    "stuck": _stuck,
    "ramp": _ramp,
    "noisy": _noisy,
}


def test_fresh_normal_data_rarely_alarms(detector: OnnxDetector, fresh: np.ndarray) -> None:
    """On every window of unseen normal data, scores >= 1.0 are below 0.1 % and typical ~0.3."""
    scores = detector.score_batch(all_windows(fresh))
    assert scores.shape == (len(fresh) - WINDOW + 1, len(NAMES))
    assert np.mean(scores >= detector.raise_level) < 1e-3
    assert np.all(np.median(scores, axis=0) < 0.5)


@pytest.mark.parametrize("kind", sorted(FAULTS))
@pytest.mark.parametrize("tag", range(len(NAMES)))
def test_fault_alarms_on_its_tag_only(
    detector: OnnxDetector, fresh: np.ndarray, kind: str, tag: int
) -> None:
    """A fault on one tag scores >= 1.0 on that tag and < 1.0 on the others, at many places."""
    starts = range(1_000, 19_000, 900)
    windows = np.stack([FAULTS[kind](fresh[s : s + WINDOW].copy(), tag) for s in starts])
    scores = detector.score_batch(windows)
    assert np.all(scores[:, tag] >= detector.raise_level)
    assert np.all(np.delete(scores, tag, axis=1) < detector.raise_level)


def test_onnx_matches_numpy_reference(detector: OnnxDetector, fresh: np.ndarray) -> None:
    """Features and scores from onnxruntime equal a float64 NumPy implementation within 1e-4."""
    normal = all_windows(fresh)[::97]
    faulty = np.stack(
        [fault(w.copy(), j) for w in normal[:10] for fault in FAULTS.values() for j in range(4)]
    )
    windows = np.concatenate([normal, faulty]).astype(np.float32)
    want_feats, want_scores = reference(windows, detector.metadata)
    np.testing.assert_allclose(detector.score_batch(windows), want_scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(detector.features(windows), want_feats, rtol=1e-4, atol=1e-4)


def test_single_window_equals_batch_row(detector: OnnxDetector, fresh: np.ndarray) -> None:
    """`score` of one window equals its row of `score_batch` (to float32 rounding), shape (J,)."""
    windows = all_windows(fresh)[:5]
    batch = detector.score_batch(windows)
    for i, window in enumerate(windows):
        single = detector.score(window)
        assert single.shape == (len(NAMES),)
        assert single.dtype == np.float32
        np.testing.assert_allclose(single, batch[i], rtol=1e-6)


def test_nan_residual_only_blanks_its_tag(detector: OnnxDetector, fresh: np.ndarray) -> None:
    """A NaN in one tag's column gives a NaN score for that tag and finite scores elsewhere."""
    window = fresh[:WINDOW].copy()
    window[10, 2] = np.nan
    scores = detector.score(window)
    assert np.isnan(scores[2])
    assert np.all(np.isfinite(np.delete(scores, 2)))


def test_metadata_round_trips(
    detector: OnnxDetector, training: np.ndarray, model_bytes: bytes
) -> None:
    """The file states names, window, levels, scales, seed, timestamp and the data fingerprint."""
    meta = detector.metadata
    assert detector.output_names == NAMES
    assert json.loads(meta["output_names"]) == list(NAMES)
    assert detector.window == WINDOW == int(meta["window"])
    assert (detector.raise_level, detector.clear_level) == (1.0, 0.7)
    assert json.loads(meta["features"]) == ["mean", "log_std", "slope"]
    assert meta["seed"] == "0"
    assert datetime.strptime(meta["created"], "%Y-%m-%dT%H:%M:%SZ").year >= 2024
    np.testing.assert_allclose(detector.residual_scale, np.nanstd(training, axis=0))
    fingerprint = hashlib.sha256()
    fingerprint.update("\n".join(NAMES).encode())
    fingerprint.update(f"\0{training.shape}\0".encode())
    fingerprint.update(np.ascontiguousarray(training, dtype="<f8").tobytes())
    assert meta["training_sha256"] == fingerprint.hexdigest()
    used = np.add(json.loads(meta["fit_windows"]), json.loads(meta["holdout_windows"]))
    assert used[1] < used[0] == used[2] == used[3]  # the NaN stretch only costs its own tag
    params = DetectorParams.from_metadata(meta, "test")
    again = DetectorParams.from_metadata(params.to_metadata(), "test")
    assert again.to_metadata() == params.to_metadata()
    np.testing.assert_array_equal(again.robust_covariance, params.robust_covariance)


def test_same_seed_gives_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With SOURCE_DATE_EPOCH fixed, the same data and seed give identical model bytes."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    data = normal_residuals(3, 6_000)
    first = train_detector(data, NAMES, seed=7)
    second = train_detector(data, NAMES, seed=7, progress=True)
    other_seed = train_detector(data, NAMES, seed=8)
    assert first == second
    assert first != other_seed
    meta = OnnxDetector.from_bytes(first).metadata
    assert meta["created"] == "2023-11-14T22:13:20Z"


def test_unexpected_output_names_are_refused(model_file: Path) -> None:
    """Loading with other expected outputs raises ModelError naming the file and both name lists."""
    expected = ("level", "temperature", "pressure", "current")
    with pytest.raises(ModelError) as info:
        OnnxDetector.load(model_file, expected_outputs=expected)
    message = str(info.value)
    assert str(model_file) in message
    assert "pressure" in message
    assert "flow" in message


def test_truncated_file_is_refused(model_bytes: bytes, tmp_path: Path) -> None:
    """A file cut in half raises ModelError naming the file."""
    path = tmp_path / "truncated.onnx"
    path.write_bytes(model_bytes[: len(model_bytes) // 2])
    with pytest.raises(ModelError, match=r"truncated\.onnx"):
        OnnxDetector.load(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """A path that does not exist raises ModelError naming it."""
    with pytest.raises(ModelError, match=r"absent\.onnx"):
        OnnxDetector.load(tmp_path / "absent.onnx")


def test_missing_metadata_key_is_refused(detector: OnnxDetector, tmp_path: Path) -> None:
    """A valid graph whose metadata lacks the thresholds raises ModelError naming the key."""
    model = onnx.load_from_string(build_model(detector.params))
    kept = [p for p in model.metadata_props if p.key != "d2_threshold"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    path = tmp_path / "nothreshold.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="d2_threshold"):
        OnnxDetector.load(path)


@pytest.mark.parametrize("shape", [(WINDOW - 1, 4), (WINDOW, 3), (1, WINDOW, 4), (WINDOW * 4,)])
def test_score_rejects_wrong_shape(detector: OnnxDetector, shape: tuple[int, ...]) -> None:
    """`score` raises ValueError for any shape other than (window, n_outputs)."""
    with pytest.raises(ValueError, match="shape"):
        detector.score(np.zeros(shape, dtype=np.float32))


def test_score_batch_rejects_wrong_shape(detector: OnnxDetector) -> None:
    """`score_batch` raises ValueError for a single 2-D window and for a wrong window length."""
    with pytest.raises(ValueError, match="shape"):
        detector.score_batch(np.zeros((WINDOW, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        detector.score_batch(np.zeros((2, WINDOW + 1, 4), dtype=np.float32))


@pytest.mark.parametrize(
    ("data", "names", "match"),
    [
        (np.zeros(1_000), NAMES, "2-D"),
        (np.zeros((1_000, 3)), NAMES, "names"),
        (normal_residuals(4, 60), NAMES, "too little"),
        (normal_residuals(4, 1_500), NAMES, "too little normal data"),
        (np.where(np.arange(4) == 2, 0.0, normal_residuals(4, 6_000)), NAMES, "'flow'"),
        (normal_residuals(4, 6_000), ("a", "a", "b", "c"), "unique"),
        (np.where(np.arange(4) == 3, np.nan, normal_residuals(4, 6_000)), NAMES, "'current'"),
    ],
)
def test_training_rejects_unusable_input(
    data: np.ndarray, names: tuple[str, ...], match: str
) -> None:
    """Wrong shapes, too little data, a constant or all-NaN output, duplicate names: ValueError."""
    with pytest.raises(ValueError, match=match):
        train_detector(data, names)
