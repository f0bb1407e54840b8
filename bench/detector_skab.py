"""Benchmark: the sensor-window (SKAB) detector's latency per window against NumPy.

The contender is `SensorDetector` (onnxruntime, one intra-op thread, the session created once)
with the default `SensorConfig` (and, for comparison in the same run, the same detector with
the other `distance`), trained on a synthetic recording laid out like SKAB (8 signals
at 1 Hz, 2,000 rows of noisy normal operation with drift; no benchmark data needed). The
baseline computes the same features and distance (the file's `distance`) in float64 NumPy
from the file's parameters (`models.anomaly.sensor_train.reference_scores`), vectorised over
windows. Both are checked to agree before timing. Target: at most 20 us for one window (the
agent's per-tick call).

    uv run python -m bench.detector_skab [--quick] [--results-dir DIR] [--repeats N]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import numpy.typing as npt

from bench.harness import Options, Row, Target, interleaved, parse_args, report
from models.anomaly.benchmark import normal_segments
from models.anomaly.sensor import LOGSTD_EPS, STATS, SensorDetector
from models.anomaly.sensor_train import (
    SensorConfig,
    fit_drift,
    reference_scores,
    train_sensor_detector,
    windows_of,
)
from models.anomaly.skab import SkabFile

F64 = npt.NDArray[np.float64]
NAME = "detector_skab"
COLUMNS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
LIMIT_US = 20.0


def recording(rows: int, seed: int) -> tuple[F64, F64]:
    """Timestamps and `(rows, 8)` SKAB-like normal signals: level + noise + slow drift."""
    rng = np.random.default_rng(seed)
    level = np.array([0.2, 0.27, 2.4, 0.1, 70.0, 25.0, 230.0, 120.0])
    noise = np.array([0.002, 0.003, 0.45, 0.25, 0.3, 0.03, 11.0, 0.5])
    drift = np.cumsum(rng.standard_normal((rows, 8)), axis=0) * noise * 0.02
    warm = np.outer(np.arange(rows) / rows, [0, 0, 0, 0, 3.0, 1.0, 0, 0])
    values: F64 = level + drift + warm + rng.standard_normal((rows, 8)) * noise
    ts: F64 = 1.6e9 + np.arange(rows, dtype=np.float64)
    return ts, values


def trained(config: SensorConfig) -> SensorDetector:
    """A detector trained like the benchmark's: drift from normal stretches, normalisation
    from the first 400 rows."""
    ts, values = recording(2000, seed=1)
    normal = SkabFile(
        "synthetic",
        "bench",
        __import__("pathlib").Path("synthetic.csv"),
        ts,
        COLUMNS,
        values,
        None,
        None,
    )
    drift = fit_drift(normal_segments([], [normal]), COLUMNS, config)
    blob = train_sensor_detector(ts[:400], values[:400], COLUMNS, drift, config)
    return SensorDetector.from_bytes(blob, COLUMNS)


class NumpyScorer:
    """Float64 features and the detector's distance of windows `(n, W, C)` in NumPy."""

    def __init__(self, detector: SensorDetector) -> None:
        p = detector.params
        self.params = p
        w = p.window
        self.ticks = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
        self.weights = self.ticks / float(np.dot(self.ticks, self.ticks))
        self.index = p.feature_index()
        self.spread = any(s == STATS.index("logstd") for s, _ in self.index)

    def score(self, windows: F64) -> F64:
        mean = windows.mean(axis=1)  # (n, C)
        slope = np.einsum("nwc,w->nc", windows, self.weights)
        stats = [mean, slope]
        if self.spread:
            line = mean[:, None, :] + slope[:, None, :] * self.ticks[None, :, None]
            var = np.mean((windows - line) ** 2, axis=1)
            stats.append(0.5 * np.log(var + LOGSTD_EPS))
        feats = np.stack([stats[s][:, i] for s, i in self.index], axis=1)
        return reference_scores(self.params, feats)


def run(opts: Options) -> None:
    config = SensorConfig()
    detector = trained(config)
    other = "max" if config.distance == "mahalanobis" else "mahalanobis"
    summed = trained(dataclasses.replace(config, distance=other))
    scorer = NumpyScorer(detector)
    _, values = recording(600, seed=7)
    windows = windows_of(values, detector.window)
    diff = float(
        np.max(np.abs(detector.score_batch(windows) - scorer.score(windows.astype(np.float64))))
    )
    if not diff < 1e-2:
        raise RuntimeError(f"NumPy scorer disagrees with the ONNX detector (max diff {diff})")
    notes = [f"onnxruntime (float32) vs NumPy (float64) scores agree to {diff:.1e}"]
    single = windows[0]
    single64 = single.astype(np.float64)[None]
    cases: dict[str, tuple[Callable[[], object], float]] = {
        "numpy": (lambda: scorer.score(single64), 1),
        "onnx score": (lambda: detector.score(single), 1),
        f"onnx score ({other})": (lambda: summed.score(single), 1),
    }
    times = interleaved(cases, opts.repeats, opts.run_s)
    rows = [
        Row(
            "1 window",
            name,
            "us/window",
            [s * 1e6 for s in samples],
            None if name == "numpy" else "numpy",
        )
        for name, samples in times.items()
    ]
    sizes: Sequence[int] = (100,) if opts.quick else (10, 100, 500)
    for n in sizes:
        batch = windows[:n]
        batch64 = batch.astype(np.float64)
        cases = {
            "numpy": (partial(scorer.score, batch64), n),
            "onnx score_batch": (partial(detector.score_batch, batch), n),
        }
        for name, samples in interleaved(cases, opts.repeats, opts.run_s).items():
            rows.append(
                Row(
                    f"batch {n}",
                    name,
                    "us/window",
                    [s * 1e6 for s in samples],
                    None if name == "numpy" else "numpy",
                )
            )
    one = next(r for r in rows if r.case == "onnx score")
    targets = [Target("one window, onnx score", one.median, LIMIT_US, "us", one.median <= LIMIT_US)]
    notes.append(
        f"window {detector.window} rows x {len(COLUMNS)} signals, {len(detector.params.features)} "
        "features; session: one intra-op thread"
    )
    report(
        NAME,
        opts,
        rows,
        targets=targets,
        notes=notes,
        config={
            "window": detector.window,
            "features": list(detector.params.features),
            "distance": detector.params.distance,
        },
    )


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(__doc__.splitlines()[0] if __doc__ else NAME, argv))


if __name__ == "__main__":
    main()
