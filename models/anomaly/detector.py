"""The detector file format and its runtime: load an ONNX detector, validate it, score windows.

This module owns what a valid detector file is (`DetectorParams`, the metadata keys and their
checks) and the onnxruntime session that scores residual windows on the tick path. It does not
fit anything (`models.anomaly.train`) nor build graphs (`models.anomaly.graph`), and it does not
import `onnx` or scikit-learn, so the gateway only pays for onnxruntime.

Scores: one per output tag, `sqrt(d2 / d2_threshold)` where `d2` is the Mahalanobis distance of
the window's features (mean, log standard deviation, least-squares slope per tick) from the
robust centre of normal data. 1.0 is the alarm threshold; the agent raises at `raise_level` and
clears below `clear_level`. A NaN residual in one tag's column makes that tag's score NaN and
leaves the other tags' scores untouched.
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

# onnxruntime's error classes live in its compiled module and do not derive from RuntimeError.
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from models.base import F32, F64, ModelError

FORMAT_VERSION = "1"
DETECTOR_KIND = "per-tag-mahalanobis"
# log_std is the log of the standard deviation around the window's least-squares line, so a
# ramp does not hide a signal that stopped moving (a stuck sensor under a drifting prediction).
FEATURES: tuple[str, ...] = ("mean", "log_std", "slope")
INPUT_NAME = "residuals"
SCORE_OUTPUT = "score"
FEATURES_OUTPUT = "features"

_ORT_ERRORS: tuple[type[BaseException], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    RuntimeError,
    ValueError,
)

# Keys every detector file carries; values are strings, arrays are JSON in tag order.
REQUIRED_KEYS: tuple[str, ...] = (
    "detector_kind",
    "format_version",
    "output_names",
    "window",
    "features",
    "feature_mean",
    "feature_std",
    "robust_location",
    "robust_covariance",
    "d2_threshold",
    "log_std_eps",
    "residual_scale",
    "raise_level",
    "clear_level",
    "training_sha256",
    "created",
    "seed",
)


@dataclass(frozen=True)
class DetectorParams:
    """Everything a detector file states; arrays are float64 with one row per output tag.

    `feature_mean`/`feature_std` (J, 3) standardise the features; `robust_location` (J, 3) and
    `robust_covariance` (J, 3, 3) describe normal windows in standardised units;
    `d2_threshold` (J,) is the squared distance that scores 1.0; `log_std_eps` (J,) is added to
    the window's standard deviation before the log, so a stuck signal gives a finite, very low
    value; `residual_scale` (J,) is the residual standard deviation seen in normal data.
    `provenance` holds the remaining string metadata (fingerprint, seed, created, ...).
    """

    output_names: tuple[str, ...]
    window: int
    feature_mean: F64
    feature_std: F64
    robust_location: F64
    robust_covariance: F64
    d2_threshold: F64
    log_std_eps: F64
    residual_scale: F64
    raise_level: float = 1.0
    clear_level: float = 0.7
    provenance: Mapping[str, str] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        """Encode as ONNX `metadata_props` (string to string); floats round-trip exactly."""
        meta = {
            "detector_kind": DETECTOR_KIND,
            "format_version": FORMAT_VERSION,
            "output_names": json.dumps(list(self.output_names)),
            "window": str(self.window),
            "features": json.dumps(list(FEATURES)),
            "feature_mean": _dump(self.feature_mean),
            "feature_std": _dump(self.feature_std),
            "robust_location": _dump(self.robust_location),
            "robust_covariance": _dump(self.robust_covariance),
            "d2_threshold": _dump(self.d2_threshold),
            "log_std_eps": _dump(self.log_std_eps),
            "residual_scale": _dump(self.residual_scale),
            "raise_level": repr(float(self.raise_level)),
            "clear_level": repr(float(self.clear_level)),
        }
        for key, value in self.provenance.items():
            meta.setdefault(key, value)
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str) -> DetectorParams:
        """Decode and check metadata; any problem is a `ModelError` naming `source` and the key."""
        kind = meta.get("detector_kind")
        if kind is not None and kind != DETECTOR_KIND:
            raise ModelError(
                f"{source}: detector_kind is {kind!r}, expected {DETECTOR_KIND!r} (a detector "
                "of another kind, not for this runtime)"
            )
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise ModelError(f"{source}: metadata lacks {', '.join(missing)}; retrain the detector")
        if meta["detector_kind"] != DETECTOR_KIND:
            raise ModelError(
                f"{source}: detector_kind is {meta['detector_kind']!r}, expected {DETECTOR_KIND!r}"
            )
        if meta["format_version"] != FORMAT_VERSION:
            raise ModelError(
                f"{source}: format_version is {meta['format_version']!r}, this runtime reads "
                f"{FORMAT_VERSION!r}; retrain the detector with this version"
            )
        names = _load(meta, "output_names", source)
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)
        ):
            raise ModelError(f"{source}: output_names must be a list of unique non-empty names")
        if _load(meta, "features", source) != list(FEATURES):
            raise ModelError(f"{source}: features is {meta['features']}, expected {list(FEATURES)}")
        n = len(names)
        try:
            window = int(meta["window"])
            raise_level = float(meta["raise_level"])
            clear_level = float(meta["clear_level"])
        except ValueError as exc:
            raise ModelError(f"{source}: window, raise_level or clear_level malformed") from exc
        if window < 3:
            raise ModelError(f"{source}: window is {window}, must be at least 3")
        if not (0.0 < clear_level < raise_level and math.isfinite(raise_level)):
            raise ModelError(
                f"{source}: need 0 < clear_level < raise_level, got {clear_level}, {raise_level}"
            )
        params = cls(
            output_names=tuple(names),
            window=window,
            feature_mean=_array(meta, "feature_mean", (n, 3), source),
            feature_std=_array(meta, "feature_std", (n, 3), source),
            robust_location=_array(meta, "robust_location", (n, 3), source),
            robust_covariance=_array(meta, "robust_covariance", (n, 3, 3), source),
            d2_threshold=_array(meta, "d2_threshold", (n,), source),
            log_std_eps=_array(meta, "log_std_eps", (n,), source),
            residual_scale=_array(meta, "residual_scale", (n,), source),
            raise_level=raise_level,
            clear_level=clear_level,
            provenance={k: v for k, v in meta.items() if k not in _PARAM_KEYS},
        )
        for key in ("feature_std", "d2_threshold", "log_std_eps"):
            if not np.all(getattr(params, key) > 0):
                raise ModelError(f"{source}: {key} must be positive for every output")
        return params


_PARAM_KEYS = frozenset(REQUIRED_KEYS) - {"training_sha256", "created", "seed"}


def _dump(array: F64) -> str:
    return json.dumps(np.asarray(array, dtype=np.float64).tolist())


def _load(meta: Mapping[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise ModelError(f"{source}: metadata {key} is not valid JSON") from exc


def _array(meta: Mapping[str, str], key: str, shape: tuple[int, ...], source: str) -> F64:
    try:
        array = np.asarray(_load(meta, key, source), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{source}: metadata {key} is not a numeric array") from exc
    if array.shape != shape:
        raise ModelError(f"{source}: metadata {key} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise ModelError(f"{source}: metadata {key} contains NaN or infinity")
    return array


def session_options() -> ort.SessionOptions:
    """One thread, sequential: small graphs run fastest that way and never fight the tick."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: warnings would repeat on every load
    return opts


def read_model_file(path: str | Path) -> bytes:
    """The bytes of a detector file; `ModelError` naming the file when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read detector file ({exc.strerror})") from exc


def open_session(data: bytes, source: str) -> tuple[ort.InferenceSession, dict[str, str]]:
    """An inference session (one thread, CPU) and the model's custom metadata; `ModelError`
    naming `source` when the bytes are not a loadable ONNX model."""
    try:
        session = ort.InferenceSession(
            data, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
        return session, dict(session.get_modelmeta().custom_metadata_map)
    except _ORT_ERRORS as exc:
        raise ModelError(f"{source}: not a loadable ONNX model ({exc})") from exc


class OnnxDetector:
    """Scores residual windows with one onnxruntime session created at load.

    Implements `models.base.Detector`. `score` is on the tick path: it checks the shape, casts
    to float32 and runs the session; nothing else.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        params: DetectorParams,
        metadata: Mapping[str, str],
        source: str,
    ) -> None:
        """Use `load` or `from_bytes`; this constructor trusts that `params` match `session`."""
        self._session = session
        self._params = params
        self._source = source
        self._outputs = [SCORE_OUTPUT]
        self._shape = (params.window, len(params.output_names))
        self.metadata: dict[str, str] = dict(metadata)
        self.residual_scale: F64 = params.residual_scale.copy()
        self.residual_scale.flags.writeable = False

    @classmethod
    def load(cls, path: str | Path, expected_outputs: Sequence[str] | None = None) -> OnnxDetector:
        """Read and validate a detector file; `ModelError` names the file and what is wrong."""
        source = str(path)
        data = read_model_file(path)
        return cls.from_bytes(data, expected_outputs, source=source)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        expected_outputs: Sequence[str] | None = None,
        *,
        source: str = "<detector bytes>",
    ) -> OnnxDetector:
        """Like `load`, from a serialized model (as `train_detector` returns it)."""
        session, meta = open_session(data, source)
        params = DetectorParams.from_metadata(meta, source)
        _check_signature(session, params, source)
        if expected_outputs is not None and tuple(expected_outputs) != params.output_names:
            raise ModelError(
                f"{source}: detector outputs {list(params.output_names)} differ from the "
                f"expected outputs {list(expected_outputs)}; retrain it for this model"
            )
        detector = cls(session, params, meta, source)
        detector.score(np.zeros(detector._shape, dtype=np.float32))  # warm the session once
        return detector

    @property
    def output_names(self) -> tuple[str, ...]:
        """Output tag names, in the column order of the residual window and the scores."""
        return self._params.output_names

    @property
    def window(self) -> int:
        """Window length in ticks."""
        return self._params.window

    @property
    def raise_level(self) -> float:
        """Score at or above which a tag's alarm is raised (1.0 by construction)."""
        return self._params.raise_level

    @property
    def clear_level(self) -> float:
        """Score below which a raised alarm clears."""
        return self._params.clear_level

    @property
    def params(self) -> DetectorParams:
        """The decoded metadata, for explanation and reference computations."""
        return self._params

    def score(self, residuals: F32 | F64) -> F32:
        """Score one window `(window, n_outputs)`; returns `(n_outputs,)` float32."""
        x = np.asarray(residuals, dtype=np.float32)
        if x.shape != self._shape:
            raise ValueError(f"residual window has shape {x.shape}, expected {self._shape}")
        out: F32 = self._session.run(self._outputs, {INPUT_NAME: x[np.newaxis]})[0]
        scores: F32 = out[0]
        return scores

    def score_batch(self, windows: F32 | F64) -> F32:
        """Score many windows `(n, window, n_outputs)`; returns `(n, n_outputs)` float32."""
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != self._shape:
            raise ValueError(
                f"residual windows have shape {x.shape}, expected (n, {self._shape[0]}, "
                f"{self._shape[1]})"
            )
        if x.shape[0] == 0:
            return np.empty((0, self._shape[1]), dtype=np.float32)
        out: F32 = self._session.run(self._outputs, {INPUT_NAME: x})[0]
        return out

    def features(self, windows: F32 | F64) -> F32:
        """Raw features `(n, n_outputs, 3)` of windows `(n, window, n_outputs)`, for explanation."""
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != self._shape:
            raise ValueError(f"residual windows have shape {x.shape}, expected (n, *{self._shape})")
        out: F32 = self._session.run([FEATURES_OUTPUT], {INPUT_NAME: x})[0]
        per_tag: F32 = np.ascontiguousarray(out.transpose(0, 2, 1))
        return per_tag

    def __repr__(self) -> str:
        return (
            f"OnnxDetector({self._source!r}, outputs={len(self.output_names)}, "
            f"window={self.window})"
        )


def _check_signature(session: ort.InferenceSession, params: DetectorParams, source: str) -> None:
    """The graph's input and outputs must match the metadata (batch dimension symbolic)."""
    n_out = len(params.output_names)
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(float)":
        found = [(i.name, i.type) for i in inputs]
        raise ModelError(f"{source}: expected one float input {INPUT_NAME!r}, found {found}")
    if list(inputs[0].shape[1:]) != [params.window, n_out] or len(inputs[0].shape) != 3:
        raise ModelError(
            f"{source}: input shape {inputs[0].shape} does not match window={params.window} "
            f"and {n_out} outputs"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    score = outputs.get(SCORE_OUTPUT)
    if score is None or score.type != "tensor(float)" or len(score.shape) != 2:
        raise ModelError(f"{source}: expected a float output {SCORE_OUTPUT!r} of rank 2")
    if score.shape[1] != n_out:
        raise ModelError(f"{source}: output shape {score.shape} does not match {n_out} outputs")
    feats = outputs.get(FEATURES_OUTPUT)
    if feats is None or list(feats.shape[1:]) != [len(FEATURES), n_out]:
        raise ModelError(f"{source}: expected an output {FEATURES_OUTPUT!r} of shape (n, 3, J)")
