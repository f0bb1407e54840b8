"""Runs the official SKAB protocol with the sensor-window detector and collects the metrics.

Per labelled file: train on its training part (the first 400 rows) with the one configuration,
score its test part through onnxruntime (the windows ending on test rows; the last rows of the
training part are their history, as on a running gateway), turn scores into alarms with
`models.anomaly.alarm` (started fresh at the first test row) and compare with the labels.

The drift model (what normal movement after training looks like, `models.anomaly.sensor_train`)
is fitted once from normal data only, never from a test part: each unlabelled file (SKAB's
`anomaly-free.csv`) cut into stretches laid out like a labelled file (400 rows to normalise on,
then the typical test length scored), and each labelled file's training part forward-chained
(normalise on its first half, score the second half), except a training part whose own labels
mark anomalous rows. Test-part labels are never used for training.

Owns the orchestration and the aggregation (overall, per group, per file). Files and formats
are `models.anomaly.skab`'s, the formulas `models.anomaly.metrics`'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.anomaly import metrics
from models.anomaly.alarm import alarm_series
from models.anomaly.sensor import SensorDetector
from models.anomaly.sensor_train import (
    DriftModel,
    Segment,
    SensorConfig,
    fit_drift,
    train_sensor_detector,
    window_features,
    windows_of,
)
from models.anomaly.skab import TRAIN_ROWS, SkabFile, discover
from models.base import F32, F64


@dataclass(frozen=True)
class FileResult:
    """One file's test part: scores (NaN without a window), alarms, labels, top signals."""

    file: SkabFile
    scores: F64
    predicted: npt.NDArray[np.bool_]
    top_inputs: tuple[str, ...]
    model_bytes: int

    @property
    def counts(self) -> metrics.OutlierCounts:
        assert self.file.anomaly is not None
        return metrics.outlier_counts(self.file.anomaly, self.predicted)

    @property
    def changepoints(self) -> metrics.ChangepointResult:
        assert self.file.changepoint is not None
        return metrics.changepoint_result(self.file.ts, self.file.changepoint, self.predicted)


def normal_segments(
    labelled: Sequence[SkabFile], unlabelled: Sequence[SkabFile], train_rows: int = TRAIN_ROWS
) -> list[Segment]:
    """The normal data the drift model is fitted on (see the module docstring)."""
    test_rows = [len(f) - train_rows for f in labelled if len(f) > train_rows]
    span = train_rows + (int(np.median(test_rows)) if test_rows else train_rows)
    segments = [
        Segment(f.ts[i : i + span], f.values[i : i + span], train_rows)
        for f in unlabelled
        for i in range(0, len(f) - span + 1, span)
    ]
    half = train_rows // 2
    segments += [
        Segment(f.ts[:train_rows], f.values[:train_rows], half)
        for f in labelled
        if len(f) > train_rows and not _labelled_anomalous(f, train_rows)
    ]
    return segments


def _labelled_anomalous(file: SkabFile, train_rows: int) -> bool:
    """True when the training part's own labels mark anomalous rows: it is not normal data."""
    return file.anomaly is not None and bool(file.anomaly[:train_rows].any())


def score_rows(detector: SensorDetector, file: SkabFile, first: int) -> tuple[F64, F32]:
    """Scores and per-input contributions of rows `first..` (NaN where the window is not
    full or spans a gap); windows reach back into earlier rows."""
    w = detector.window
    n = len(file) - first
    scores = np.full(n, np.nan)
    contrib = np.zeros((n, len(detector.input_names)), dtype=np.float32)
    start = max(first, w - 1)
    if start >= len(file):
        return scores, contrib
    windows = windows_of(file.values[start - w + 1 :], w)
    ts = file.ts[start - w + 1 :]
    span = ts[w - 1 :] - ts[: len(ts) - w + 1]
    ok = span <= (w - 1) + detector.params.max_gap_s
    scores[start - first :][ok] = detector.score_batch(windows[ok])
    contrib[start - first :][ok] = detector.contributions(windows[ok])
    return scores, contrib


def evaluate_file(detector: SensorDetector, file: SkabFile, first: int, size: int) -> FileResult:
    """Score and alarm rows `first..` of a labelled file with a trained detector."""
    scores, contrib = score_rows(detector, file, first)
    part = file.rows(first)
    predicted = alarm_series(part.ts, scores, detector.params.alarm)
    totals = contrib[predicted].sum(axis=0) if predicted.any() else contrib.sum(axis=0)
    top = tuple(detector.input_names[i] for i in np.argsort(-totals)[:3])
    return FileResult(part, scores, predicted, top, size)


def fit_file(
    file: SkabFile, drift: DriftModel, config: SensorConfig, train_rows: int = TRAIN_ROWS
) -> tuple[SensorDetector, int]:
    """Train on the file's training part; returns the loaded detector and the model size."""
    train, _ = file.split(train_rows)
    blob = train_sensor_detector(train.ts, train.values, train.columns, drift, config)
    detector = SensorDetector.from_bytes(blob, file.columns, source=f"<{file.group}/{file.name}>")
    return detector, len(blob)


def train_from_file(
    file: SkabFile,
    config: SensorConfig,
    on_step: Callable[[str], None] | None = None,
    *,
    root: str | Path | None = None,
) -> tuple[bytes, int, int]:
    """A detector from one recording: a labelled file's training part (the official split),
    or all rows of an unlabelled one. With `root` (the folder in SKAB's layout the file comes
    from) the drift model is the benchmark's, from all the normal data there, so the detector
    is the one `run_benchmark` builds for this file; without it, from the recording alone
    (stretches normalised on their first half, scored on the second; a short recording
    under-estimates drift). Returns the model bytes, training rows and drift windows."""
    rows = min(len(file), TRAIN_ROWS) if file.labelled else len(file)
    train = file.rows(0, rows)
    step = on_step or (lambda _: None)
    step("drift model")
    if root is not None:
        labelled, unlabelled = discover(root)
        segments = normal_segments(labelled, unlabelled)
    else:
        segments = normal_segments([], [train], min(TRAIN_ROWS, rows // 2))
    drift = fit_drift(segments, file.columns, config)
    step("detector")
    blob = train_sensor_detector(train.ts, train.values, file.columns, drift, config)
    return blob, rows, drift.rows


@dataclass(frozen=True)
class BenchmarkResult:
    """Per-file results plus what produced them."""

    files: list[FileResult]
    config: SensorConfig
    drift: DriftModel
    normal_files: list[str]

    def metrics(self) -> dict[str, Any]:
        """`overall`, one entry per group, and `files`, each with the benchmark keys."""
        return summarise(self.files)


def summarise(files: Sequence[FileResult]) -> dict[str, Any]:
    """`overall`, one entry per group, and `files`, each with the benchmark keys."""
    out: dict[str, Any] = {"overall": _summary(files)}
    for group in dict.fromkeys(r.file.group for r in files):
        out[group] = _summary([r for r in files if r.file.group == group])
    out["files"] = {
        f"{r.file.group}/{r.file.name}": {**_summary([r]), "top_inputs": list(r.top_inputs)}
        for r in files
    }
    return out


def _summary(results: Sequence[FileResult]) -> dict[str, float | int | None]:
    counts = metrics.OutlierCounts()
    for r in results:
        counts = counts + r.counts
    return metrics.summary(counts, metrics.total(r.changepoints for r in results))


def run_benchmark(
    root: str | Path,
    config: SensorConfig | None = None,
    *,
    train_rows: int = TRAIN_ROWS,
    on_file: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """The whole official benchmark on a folder in SKAB's layout."""
    cfg = config or SensorConfig()
    labelled, unlabelled = discover(root)
    inputs = labelled[0].columns
    drift = fit_drift(normal_segments(labelled, unlabelled, train_rows), inputs, cfg)
    results = []
    for f in labelled:
        if on_file is not None:
            on_file(f"{f.group}/{f.name}")
        detector, size = fit_file(f, drift, cfg, train_rows)
        results.append(evaluate_file(detector, f, train_rows, size))
    return BenchmarkResult(results, cfg, drift, [str(f.path) for f in unlabelled])


__all__ = [
    "BenchmarkResult",
    "FileResult",
    "evaluate_file",
    "fit_file",
    "normal_segments",
    "run_benchmark",
    "score_rows",
    "summarise",
    "train_from_file",
    "window_features",
]
