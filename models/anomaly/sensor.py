"""The sensor-window detector: file format and runtime for one score per window of raw signals.

Where `models.anomaly.detector` scores Digital Original residuals tag by tag, this detector
scores a window of measured signals as a whole (the SKAB benchmark's task): per window
`(W, C)` of the C inputs it computes window features (the mean, the least-squares slope per
row, or the log standard deviation about that fitted line, of chosen inputs), normalises them
with the training part's centre and scale, and returns

    score = sqrt((z - location)^T P (z - location) / d2_threshold),  z = (f - centre) / scale

with P the precision matrix of normal drift (see `models.anomaly.sensor_train`), for
`distance = "mahalanobis"`; for `distance = "max"` the largest standardised deviation instead,

    score = max_k |z_k - location_k| / (sd_k * sqrt(d2_threshold)),  sd = sqrt(diag(P^-1)),

which a change in one signal reaches sooner than a distance summed over all of them. 1.0 is
the threshold; `contributions` gives each feature's part of score^2 (Mahalanobis: their sum is
score^2; max: each feature's own squared term, the largest is score^2), which names the signals
that contributed most. A file without the `distance` key (older files) is "mahalanobis". Alarm
settings (levels and durations for `models.anomaly.alarm`) travel in the file, so every user of
it alarms alike.

This module owns the metadata (`SensorParams`, its checks) and the onnxruntime session (one
intra-op thread, created once at load). It imports neither `onnx` nor scikit-learn. Loading
checks the graph against the metadata and, when given, the caller's input names; a mismatch is
a `ModelError` naming the file and what differs, and nothing replaces a detector already in use.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.anomaly.alarm import AlarmSettings
from models.anomaly.detector import open_session, read_model_file
from models.base import F32, F64, ModelError

SENSOR_KIND = "sensor-window-mahalanobis"
SENSOR_FORMAT = "1"
INPUT = "window"
SCORE = "score"
CONTRIBUTIONS = "contributions"
STATS: tuple[str, ...] = ("mean", "slope", "logstd")
# Added to the window variance before its log: a stuck signal scores far out, yet finite.
LOGSTD_EPS = 1e-12
DISTANCES: tuple[str, ...] = ("mahalanobis", "max")

SENSOR_KEYS: tuple[str, ...] = (
    "detector_kind",
    "format_version",
    "input_names",
    "window",
    "features",
    "centre",
    "scale",
    "location",
    "precision",
    "d2_threshold",
    "raise_level",
    "clear_level",
    "raise_after_s",
    "clear_after_s",
    "max_gap_s",
    "training_sha256",
    "created",
    "seed",
    "version",
)
_PROVENANCE = ("training_sha256", "created", "seed", "version", "config")


@dataclass(frozen=True)
class SensorParams:
    """Everything a sensor detector file states. `features` are `"stat:input"` strings
    (stat in `STATS`); `centre`, `scale`, `location` `(K,)` and `precision` `(K, K)` are in
    feature order; `provenance` holds fingerprint, seed, creation time, version, config;
    `distance` is one of `DISTANCES` (see the module docstring)."""

    input_names: tuple[str, ...]
    window: int
    features: tuple[str, ...]
    centre: F64
    scale: F64
    location: F64
    precision: F64
    d2_threshold: float
    alarm: AlarmSettings = field(default_factory=AlarmSettings)
    max_gap_s: float = 10.0
    provenance: Mapping[str, str] = field(default_factory=dict)
    distance: str = "mahalanobis"

    def spread(self) -> F64:
        """Standard deviation `(K,)` of each normalised feature in normal drift (the
        diagonal of the inverse precision), what `distance = "max"` divides by."""
        out: F64 = np.sqrt(np.maximum(np.diag(np.linalg.inv(self.precision)), 1e-12))
        return out

    def feature_index(self) -> list[tuple[int, int]]:
        """`(stat index, input index)` per feature."""
        out = []
        for name in self.features:
            stat, _, signal = name.partition(":")
            out.append((STATS.index(stat), self.input_names.index(signal)))
        return out

    def to_metadata(self) -> dict[str, str]:
        """ONNX `metadata_props`; floats are written with `repr`, so they round-trip."""
        meta = {
            "detector_kind": SENSOR_KIND,
            "format_version": SENSOR_FORMAT,
            "input_names": json.dumps(list(self.input_names)),
            "window": str(self.window),
            "features": json.dumps(list(self.features)),
            "centre": _dump(self.centre),
            "scale": _dump(self.scale),
            "location": _dump(self.location),
            "precision": _dump(self.precision),
            "d2_threshold": repr(float(self.d2_threshold)),
            "raise_level": repr(float(self.alarm.raise_level)),
            "clear_level": repr(float(self.alarm.clear_level)),
            "raise_after_s": repr(float(self.alarm.raise_after_s)),
            "clear_after_s": repr(float(self.alarm.clear_after_s)),
            "max_gap_s": repr(float(self.max_gap_s)),
            "distance": self.distance,
        }
        for key, value in self.provenance.items():
            meta.setdefault(key, value)
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str) -> SensorParams:
        """Decode and check; every problem is a `ModelError` naming `source` and the key."""
        kind = meta.get("detector_kind")
        if kind != SENSOR_KIND:
            raise ModelError(f"{source}: detector_kind is {kind!r}, expected {SENSOR_KIND!r}")
        missing = [k for k in SENSOR_KEYS if k not in meta]
        if missing:
            raise ModelError(f"{source}: metadata lacks {', '.join(missing)}; retrain the detector")
        if meta["format_version"] != SENSOR_FORMAT:
            raise ModelError(
                f"{source}: format_version is {meta['format_version']!r}, this runtime reads "
                f"{SENSOR_FORMAT!r}; retrain the detector with this version"
            )
        names = _names(meta, "input_names", source)
        features = _names(meta, "features", source)
        for name in features:
            stat, sep, signal = name.partition(":")
            if not sep or stat not in STATS or signal not in names:
                raise ModelError(
                    f"{source}: feature {name!r} is not 'stat:input' with stat in {list(STATS)} "
                    f"and input in input_names"
                )
        try:
            window = int(meta["window"])
            numbers = {
                k: float(meta[k])
                for k in (
                    "d2_threshold",
                    "raise_level",
                    "clear_level",
                    "raise_after_s",
                    "clear_after_s",
                    "max_gap_s",
                )
            }
        except ValueError as exc:
            raise ModelError(f"{source}: window or a level/duration is malformed ({exc})") from exc
        if window < 3:
            raise ModelError(f"{source}: window is {window}, must be at least 3")
        if not all(math.isfinite(v) for v in numbers.values()) or numbers["d2_threshold"] <= 0:
            raise ModelError(f"{source}: d2_threshold must be positive, levels finite")
        try:
            alarm = AlarmSettings(
                numbers["raise_level"],
                numbers["clear_level"],
                numbers["raise_after_s"],
                numbers["clear_after_s"],
            )
        except ValueError as exc:
            raise ModelError(f"{source}: alarm settings: {exc}") from exc
        distance = meta.get("distance", DISTANCES[0])
        if distance not in DISTANCES:
            raise ModelError(
                f"{source}: distance is {distance!r}, this runtime knows {list(DISTANCES)}"
            )
        k = len(features)
        params = cls(
            input_names=tuple(names),
            window=window,
            features=tuple(features),
            centre=_array(meta, "centre", (k,), source),
            scale=_array(meta, "scale", (k,), source),
            location=_array(meta, "location", (k,), source),
            precision=_array(meta, "precision", (k, k), source),
            d2_threshold=numbers["d2_threshold"],
            alarm=alarm,
            max_gap_s=numbers["max_gap_s"],
            distance=distance,
            provenance={
                key: v for key, v in meta.items() if key in _PROVENANCE or key.startswith("x_")
            },
        )
        if not np.all(params.scale > 0):
            raise ModelError(f"{source}: scale must be positive for every feature")
        return params


def _dump(array: F64) -> str:
    return json.dumps(np.asarray(array, dtype=np.float64).tolist())


def _names(meta: Mapping[str, str], key: str, source: str) -> list[str]:
    try:
        names: Any = json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise ModelError(f"{source}: metadata {key} is not valid JSON") from exc
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise ModelError(f"{source}: {key} must be a list of unique non-empty names")
    return names


def _array(meta: Mapping[str, str], key: str, shape: tuple[int, ...], source: str) -> F64:
    try:
        array = np.asarray(json.loads(meta[key]), dtype=np.float64)
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ModelError(f"{source}: metadata {key} is not a numeric array") from exc
    if array.shape != shape:
        raise ModelError(f"{source}: metadata {key} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise ModelError(f"{source}: metadata {key} contains NaN or infinity")
    return array


class SensorDetector:
    """One onnxruntime session scoring windows `(W, C)` of raw signals; created by `load`."""

    def __init__(self, session: ort.InferenceSession, params: SensorParams, source: str) -> None:
        """Use `load` or `from_bytes`: they check that `params` match `session`."""
        self._session = session
        self.params = params
        self._source = source
        self._shape = (params.window, len(params.input_names))
        self._feature_input = np.array([i for _, i in params.feature_index()], dtype=np.intp)

    @classmethod
    def load(cls, path: str | Path, expected_inputs: Sequence[str] | None = None) -> SensorDetector:
        """Read and check a file; `ModelError` names the file and the mismatch."""
        return cls.from_bytes(read_model_file(path), expected_inputs, source=str(path))

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        expected_inputs: Sequence[str] | None = None,
        *,
        source: str = "<detector bytes>",
    ) -> SensorDetector:
        """Like `load`, from serialized bytes."""
        session, meta = open_session(data, source)
        params = SensorParams.from_metadata(meta, source)
        _check_signature(session, params, source)
        if expected_inputs is not None and tuple(expected_inputs) != params.input_names:
            raise ModelError(
                f"{source}: the detector reads inputs {list(params.input_names)} (in this "
                f"order) but the data has {list(expected_inputs)}; retrain it for this data"
            )
        detector = cls(session, params, source)
        warm = detector.score_batch(np.zeros((1, *detector._shape), dtype=np.float32))
        if warm.shape != (1,):
            raise ModelError(
                f"{source}: score has shape {warm.shape} for one window, expected (1,)"
            )
        return detector

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.params.input_names

    @property
    def window(self) -> int:
        return self.params.window

    @property
    def metadata(self) -> dict[str, str]:
        return self.params.to_metadata()

    def score(self, window: F32 | F64) -> float:
        """Score one window `(W, C)`."""
        x = np.asarray(window, dtype=np.float32)
        if x.shape != self._shape:
            raise ValueError(f"window has shape {x.shape}, expected {self._shape}")
        out: F32 = self._session.run([SCORE], {INPUT: x[np.newaxis]})[0]
        return float(out[0])

    def score_batch(self, windows: F32 | F64) -> F32:
        """Scores `(n,)` of windows `(n, W, C)`."""
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != self._shape:
            raise ValueError(f"windows have shape {x.shape}, expected (n, *{self._shape})")
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        out: F32 = self._session.run([SCORE], {INPUT: x})[0]
        return out

    def contributions(self, windows: F32 | F64) -> F32:
        """Per-input shares `(n, C)` of score^2 (features of one input summed)."""
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != self._shape:
            raise ValueError(f"windows have shape {x.shape}, expected (n, *{self._shape})")
        per_feature: F32 = self._session.run([CONTRIBUTIONS], {INPUT: x})[0]
        out = np.zeros((x.shape[0], self._shape[1]), dtype=np.float32)
        np.add.at(out.T, self._feature_input, per_feature.T)
        return out

    def __repr__(self) -> str:
        return (
            f"SensorDetector({self._source!r}, inputs={len(self.input_names)}, "
            f"window={self.window}, features={len(self.params.features)})"
        )


def _check_signature(session: ort.InferenceSession, params: SensorParams, source: str) -> None:
    """The graph's input and outputs must match the metadata (batch dimension symbolic)."""
    shape = [params.window, len(params.input_names)]
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT or inputs[0].type != "tensor(float)":
        found = [(i.name, i.type) for i in inputs]
        raise ModelError(f"{source}: expected one float input {INPUT!r}, found {found}")
    if len(inputs[0].shape) != 3 or list(inputs[0].shape[1:]) != shape:
        raise ModelError(
            f"{source}: graph input shape {inputs[0].shape} does not match the metadata "
            f"(window={params.window}, {len(params.input_names)} inputs)"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    score = outputs.get(SCORE)
    if score is None or score.type != "tensor(float)" or len(score.shape) != 1:
        raise ModelError(f"{source}: expected a float output {SCORE!r} of shape (n,)")
    contrib = outputs.get(CONTRIBUTIONS)
    if contrib is None or len(contrib.shape) != 2 or contrib.shape[1] != len(params.features):
        raise ModelError(
            f"{source}: expected an output {CONTRIBUTIONS!r} of shape (n, {len(params.features)})"
        )
