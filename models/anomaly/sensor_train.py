"""Fits the sensor-window detector: window features, per-file normalisation, drift model.

The configuration (`SensorConfig`) is one for every recording. Per recording, only the
normalisation comes from its own training rows (robust centre and scale of each window
feature: median, and 1.4826 * MAD floored at a tenth of the standard deviation). What is
normal *movement* after training comes from the drift model (`fit_drift`), shared by all
recordings of a plant: the covariance of normalised features on normal data recorded after
the rows each normalisation was fitted on (`Segment`: fit on the first rows, then score the
rest). It is what keeps a slow warm-up or a drifting flow from alarming, while a change that
normal drift does not produce (several signals moving together the wrong way) does.

The threshold is calibrated on the same normal segments through the alarm logic itself
(`models.anomaly.alarm`): the lowest d^2 at which the alarm is on for at most `target_far` of
the normal rows. `calibration = "in-sample"` scores every segment with the drift model fitted
on all of them; `"held-out"` scores each with a model fitted on the other half (segments
alternate between two folds), which sets a higher threshold when drift differs between
recordings. Deterministic (no random step); `seed` is recorded for the record.

The defaults are the configuration `models.anomaly.selection` chose on normal data with
synthetic faults (distance, window, calibration, target share and alarm delays; never a test
part): the "max" distance (the largest standardised deviation of one feature), window 20,
the log window spread of the accelerometers, current, pressure and flow among the features,
in-sample calibration to 7 % alarmed normal rows, raise on the first window at or above the
threshold, clear after 2 s below 0.7 of it.

Features: the window mean of each input, except the inputs in `slope_inputs` (temperatures:
their level drifts with warm-up, their rate of change does not), which give the least-squares
slope per row instead; and, for the inputs in `std_inputs`, the log of the window's standard
deviation about its fitted line (a signal getting noisier or oscillating at its usual level). A
window whose time span exceeds `window - 1` seconds (1 Hz rows) by more than `max_gap_s` has no
features (NaN).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata

import numpy as np
import numpy.typing as npt

from models.anomaly.alarm import AlarmSettings, alarm_series
from models.anomaly.graph import centred_ticks, slope_weights
from models.anomaly.sensor import DISTANCES, LOGSTD_EPS, STATS, SensorDetector, SensorParams
from models.anomaly.sensor_graph import build_sensor_model
from models.base import F64

MIN_FIT_WINDOWS = 20
CALIBRATIONS = ("in-sample", "held-out")
_CALIBRATION_STEPS = 24
_SELF_TEST_WINDOWS = 64


@dataclass(frozen=True)
class SensorConfig:
    """The detector's configuration (one for every recording; see the module docstring)."""

    window: int = 20
    slope_inputs: tuple[str, ...] = ("Temperature", "Thermocouple")
    std_inputs: tuple[str, ...] = (
        "Accelerometer1RMS",
        "Accelerometer2RMS",
        "Current",
        "Pressure",
        "Volume Flow RateRMS",
    )
    target_far: float = 0.07
    raise_level: float = 1.0
    clear_level: float = 0.7
    raise_after_s: float = 0.0
    clear_after_s: float = 2.0
    max_gap_s: float = 10.0
    calibration: str = "in-sample"
    seed: int = 0
    distance: str = "max"

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(
                f"distance is {self.distance!r}, expected one of {', '.join(DISTANCES)}"
            )
        if self.calibration not in CALIBRATIONS:
            raise ValueError(
                f"calibration is {self.calibration!r}, expected one of {', '.join(CALIBRATIONS)}"
            )
        if self.window < 3 or not 0.0 < self.target_far < 1.0:
            raise ValueError("need window >= 3 and 0 < target_far < 1")

    @property
    def alarm(self) -> AlarmSettings:
        return AlarmSettings(
            self.raise_level, self.clear_level, self.raise_after_s, self.clear_after_s
        )

    def features(self, inputs: Sequence[str]) -> tuple[str, ...]:
        """Feature names `"stat:input"`: one level feature per input (mean, or slope for
        `slope_inputs`) in input order, then a log-spread feature per input in `std_inputs`."""
        level = (f"{'slope' if name in self.slope_inputs else 'mean'}:{name}" for name in inputs)
        spread = (f"logstd:{name}" for name in inputs if name in self.std_inputs)
        return (*level, *spread)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Segment:
    """Normal data: the first `fit_rows` rows fit a normalisation, the rest are scored."""

    ts: F64
    values: F64
    fit_rows: int


@dataclass(frozen=True)
class DriftModel:
    """Location `(K,)`, covariance `(K, K)` of normalised features in normal drift, and the
    calibrated d^2 threshold; `fingerprint` identifies the normal data it came from."""

    features: tuple[str, ...]
    location: F64
    covariance: F64
    d2_threshold: float
    fingerprint: str
    rows: int
    distance: str = DISTANCES[0]


def window_features(ts: F64, values: F64, inputs: Sequence[str], config: SensorConfig) -> F64:
    """Features `(T, K)` of the window ending at each row; NaN for the first `window - 1`
    rows and for windows across a gap longer than `max_gap_s`. The float64 reference for
    the ONNX graph."""
    x = np.asarray(values, dtype=np.float64)
    w = config.window
    features = config.features(inputs)
    out = np.full((x.shape[0], len(features)), np.nan)
    if x.shape[0] < w:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(x, w, axis=0)  # (n, C, W)
    mean, slope = windows.mean(axis=2), windows @ slope_weights(w)
    columns = [mean, slope]
    if any(f.startswith("logstd:") for f in features):
        line = mean[:, :, None] + slope[:, :, None] * centred_ticks(w)
        columns.append(0.5 * np.log(np.mean((windows - line) ** 2, axis=2) + LOGSTD_EPS))
    stats = np.stack(columns, axis=1)  # (n, stats, C)
    for k, name in enumerate(features):
        stat, _, signal = name.partition(":")
        out[w - 1 :, k] = stats[:, STATS.index(stat), list(inputs).index(signal)]
    span = ts[w - 1 :] - ts[: len(ts) - w + 1]
    out[w - 1 :][span > (w - 1) + config.max_gap_s] = np.nan
    return out


def normalisation(features: F64) -> tuple[F64, F64]:
    """Robust centre and scale per feature column (NaN rows ignored)."""
    f = features[np.all(np.isfinite(features), axis=1)]
    if len(f) < MIN_FIT_WINDOWS:
        raise ValueError(
            f"too little training data: {len(f)} complete windows, need {MIN_FIT_WINDOWS} "
            "(more rows, or a shorter window)"
        )
    centre: F64 = np.median(f, axis=0)
    mad = 1.4826 * np.median(np.abs(f - centre), axis=0)
    scale: F64 = np.maximum(mad, 0.1 * f.std(axis=0))
    constant = ~(scale > 0)
    if constant.any():
        scale = np.where(constant, 1.0, scale)
    return centre, scale


def normalised(segment: Segment, inputs: Sequence[str], config: SensorConfig) -> F64:
    """Normalised features of the scored part of a segment `(T - fit_rows, K)`."""
    f = window_features(segment.ts, segment.values, inputs, config)
    centre, scale = normalisation(f[: segment.fit_rows])
    z: F64 = (f[segment.fit_rows :] - centre) / scale
    return z


def fit_drift(
    segments: Sequence[Segment], inputs: Sequence[str], config: SensorConfig
) -> DriftModel:
    """The drift model and the alarm-calibrated threshold from normal segments."""
    if not segments:
        raise ValueError("no normal data to fit the drift model on")
    zs = [normalised(s, inputs, config) for s in segments]
    pooled = np.vstack(zs)
    pooled = pooled[np.all(np.isfinite(pooled), axis=1)]
    k = pooled.shape[1]
    if len(pooled) < 10 * k:
        raise ValueError(
            f"too little normal data after the fit rows: {len(pooled)} windows for {k} "
            f"features, need {10 * k}"
        )
    location, covariance = _moments(pooled)
    precision: F64 = np.asarray(np.linalg.inv(covariance), dtype=np.float64)
    if config.calibration == "held-out" and len(zs) >= 2:
        d2 = _held_out_d2(zs, config.distance)
    else:
        d2 = [_d2(z, location, precision, config.distance) for z in zs]
    threshold = calibrate(
        [s.ts[s.fit_rows :] for s in segments], d2, config.alarm, config.target_far
    )
    h = hashlib.sha256()
    for s in segments:
        h.update(np.ascontiguousarray(s.values, dtype="<f8").tobytes())
        h.update(f"\0{s.fit_rows}\0".encode())
    return DriftModel(
        config.features(inputs),
        location,
        covariance,
        threshold,
        h.hexdigest(),
        len(pooled),
        config.distance,
    )


def _moments(pooled: F64) -> tuple[F64, F64]:
    """Mean and (slightly regularised) covariance of complete feature rows."""
    k = pooled.shape[1]
    location: F64 = pooled.mean(axis=0)
    covariance: F64 = np.cov(pooled, rowvar=False, bias=True) + 1e-9 * np.eye(k)
    return location, covariance


def _held_out_d2(zs: Sequence[F64], distance: str) -> list[F64]:
    """d^2 of every segment under a drift model fitted without it: two folds by segment
    position (even, odd), each scored by the model of the other."""
    out: list[F64] = [np.empty(0)] * len(zs)
    for fold in (0, 1):
        rest = np.vstack([z for i, z in enumerate(zs) if i % 2 != fold])
        rest = rest[np.all(np.isfinite(rest), axis=1)]
        location, covariance = _moments(rest)
        precision = np.asarray(np.linalg.inv(covariance), dtype=np.float64)
        for i in range(fold, len(zs), 2):
            out[i] = _d2(zs[i], location, precision, distance)
    return out


def drift_scores(z: F64, drift: DriftModel) -> F64:
    """Scores (1.0 = threshold) of normalised feature rows `(T, K)` under a drift model: the
    float64 reference of what a detector trained with it returns."""
    precision = np.asarray(np.linalg.inv(drift.covariance), dtype=np.float64)
    d2 = _d2(z, drift.location, precision, drift.distance)
    out: F64 = np.sqrt(np.maximum(d2, 0.0) / drift.d2_threshold)
    return out


def _d2(z: F64, location: F64, precision: F64, distance: str = DISTANCES[0]) -> F64:
    """Squared distance of rows `(T, K)`: Mahalanobis, or the largest squared standardised
    deviation (`"max"`, each feature divided by its drift spread)."""
    diff = z - location
    if distance == "max":
        spread = np.sqrt(np.maximum(np.diag(np.linalg.inv(precision)), 1e-12))
        worst: F64 = np.max((diff / spread) ** 2, axis=1)
        return worst
    out: F64 = np.einsum("nk,kl,nl->n", diff, precision, diff)
    return out


def calibrate(
    ts: Sequence[F64], d2: Sequence[F64], alarm: AlarmSettings, target_far: float
) -> float:
    """Lowest d^2 threshold (to about 0.1 %) whose alarms cover at most `target_far` of the
    rows. Runs the alarm logic for many candidate thresholds at once (one column each) and
    narrows the bracket three times; the alarmed share falls as the threshold rises."""
    finite = np.concatenate([d[np.isfinite(d)] for d in d2])
    lo, hi = float(np.quantile(finite, 0.5)), float(finite.max()) * 4.0 + 1e-12
    rows = sum(len(t) for t in ts)

    def far(thresholds: F64) -> F64:
        on = np.zeros(len(thresholds))
        for t, d in zip(ts, d2, strict=True):
            scores = np.sqrt(d[:, None] / thresholds[None, :])
            on += alarm_series(t, scores, alarm).sum(axis=0)
        out: F64 = on / rows
        return out

    if far(np.array([lo]))[0] <= target_far:
        return lo
    for _ in range(3):
        grid = np.geomspace(lo, hi, _CALIBRATION_STEPS)
        ok = np.flatnonzero(far(grid) <= target_far)
        k = int(ok[0]) if ok.size else len(grid) - 1
        lo, hi = float(grid[max(k - 1, 0)]), float(grid[k])
        if hi / lo <= 1.001:
            break
    return hi


def train_sensor_detector(
    ts: F64,
    values: F64,
    inputs: Sequence[str],
    drift: DriftModel,
    config: SensorConfig,
) -> bytes:
    """Normalise on these training rows, build the ONNX detector and self-test it."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(inputs) or len(ts) != x.shape[0]:
        raise ValueError(f"values of shape {x.shape} do not match {len(inputs)} inputs")
    if not np.all(np.isfinite(x)):
        raise ValueError("training values contain NaN or infinity")
    features = config.features(inputs)
    if features != drift.features:
        raise ValueError(f"drift model features {drift.features} differ from {features}")
    if config.distance != drift.distance:
        raise ValueError(
            f"drift model distance {drift.distance!r} differs from {config.distance!r}"
        )
    f = window_features(ts, x, inputs, config)
    centre, scale = normalisation(f)
    params = SensorParams(
        input_names=tuple(inputs),
        window=config.window,
        features=features,
        centre=centre,
        scale=scale,
        location=drift.location,
        precision=np.asarray(np.linalg.inv(drift.covariance), dtype=np.float64),
        d2_threshold=drift.d2_threshold,
        alarm=config.alarm,
        max_gap_s=config.max_gap_s,
        distance=config.distance,
        provenance={
            "training_sha256": fingerprint(x, inputs),
            "created": _created(),
            "seed": str(config.seed),
            "version": _version(),
            "config": json.dumps(
                {
                    **json.loads(config.to_json()),
                    "drift_sha256": drift.fingerprint,
                    "drift_rows": drift.rows,
                    "training_rows": int(x.shape[0]),
                },
                sort_keys=True,
            ),
        },
    )
    model = build_sensor_model(params)
    _self_test(model, params, ts, x, config)
    return model


def reference_scores(params: SensorParams, features: F64) -> F64:
    """Float64 scores of feature rows `(T, K)` straight from the parameters."""
    z = (features - params.centre) / params.scale
    d2 = _d2(z, params.location, params.precision, params.distance)
    out: F64 = np.sqrt(np.maximum(d2, 0.0) / params.d2_threshold)
    return out


def fingerprint(values: F64, inputs: Sequence[str]) -> str:
    """sha256 over the input names, the shape and the float64 little-endian values."""
    h = hashlib.sha256()
    h.update("\n".join(inputs).encode())
    h.update(f"\0{values.shape}\0".encode())
    h.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return h.hexdigest()


def windows_of(values: F64, window: int) -> npt.NDArray[np.float32]:
    """Every window `(T - W + 1, W, C)` of `values`, float32, as the graph takes them."""
    v = np.lib.stride_tricks.sliding_window_view(np.asarray(values, np.float32), window, axis=0)
    out: npt.NDArray[np.float32] = np.ascontiguousarray(v.transpose(0, 2, 1))
    return out


def _self_test(model: bytes, params: SensorParams, ts: F64, x: F64, config: SensorConfig) -> None:
    """onnxruntime against the float64 reference on some training windows: a build bug fails
    here, on the engineering station, not at the edge."""
    detector = SensorDetector.from_bytes(model, params.input_names, source="<trained detector>")
    feats = window_features(ts, x, params.input_names, config)[params.window - 1 :]
    windows = windows_of(x, params.window)
    keep = np.flatnonzero(np.all(np.isfinite(feats), axis=1))[:_SELF_TEST_WINDOWS]
    got = detector.score_batch(windows[keep])
    want = reference_scores(params, feats[keep])
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3):
        worst = float(np.max(np.abs(got - want)))
        raise RuntimeError(f"built detector disagrees with its parameters (max diff {worst})")


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = float(epoch) if epoch else time.time()
    return datetime.fromtimestamp(int(stamp), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version() -> str:
    try:
        return f"edge-agent {importlib_metadata.version('edge-agent')}"
    except importlib_metadata.PackageNotFoundError:
        return "edge-agent unknown"
