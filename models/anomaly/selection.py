"""Chooses the sensor detector's one configuration from normal data and synthetic faults.

The SKAB protocol asks for one configuration for all files, chosen without the test parts.
This module is that choice, reproducible from a folder in SKAB's layout; it reads only the
unlabelled recordings (`anomaly-free.csv`) and the labelled files' training parts (their first
400 rows), never a test part:

1. Cut each unlabelled recording into blocks laid out like a labelled file (400 rows to
   normalise on, then the median test-part length). Blocks alternate between two folds, so
   both folds hold the warm-up and the settled stretches; the labelled files' training parts
   (forward-chained 200/200, as the drift model uses them) alternate by file likewise.
2. Per fold, add faults (`models.anomaly.faults`: the rig's fault kinds, magnitudes from the
   block's own noise) to the fold's blocks, `DRAWS` faults per block (54: with 6, the
   objective of one candidate moved by 0.03-0.05 between fault seeds, as much as the
   differences between candidates; with 18 and eleven fault kinds, the leader at one seed
   broke the FAR limit at another).
3. Per candidate configuration and fold: fit the drift model and threshold on the *other*
   fold's normal data, exactly as `models.anomaly.benchmark` does on the full data, score the
   faulted blocks (per-block normalisation on their first 400 rows), alarm with
   `models.anomaly.alarm` and score with `models.anomaly.metrics`, pooled over both folds.
4. Among candidates whose synthetic FAR (which, like a test part's, counts the rows after a
   fault while the alarm clears) is at most `FAR_LIMIT` %, pick the highest
   `F1 + NAB standard / 100`; ties go to the earlier candidate in `candidates()` order.

Scoring uses the float64 reference of the detector (`reference_scores`), which the ONNX graph
matches to 1e-3. Deterministic for a fixed seed. Owns the procedure; the data layout is
`models.anomaly.skab`'s, the detector `models.anomaly.sensor_train`'s.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.anomaly import metrics
from models.anomaly.alarm import alarm_series
from models.anomaly.faults import Labelled, synthetic_set
from models.anomaly.sensor import DISTANCES
from models.anomaly.sensor_train import (
    CALIBRATIONS,
    Segment,
    SensorConfig,
    drift_scores,
    fit_drift,
    normalised,
)
from models.anomaly.skab import TRAIN_ROWS, SkabFile, discover

DRAWS = 54
FAR_LIMIT = 10.0
WINDOWS = (10, 20, 30)
# Without and with the log window spread of the signals that vibrate, flow or pump.
SPREAD = (
    (),
    ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Volume Flow RateRMS"),
)
TARGETS = (0.03, 0.05, 0.07, 0.10, 0.13, 0.16)
ALARMS = ((0.0, 2.0), (0.0, 5.0), (3.0, 5.0))  # (raise_after_s, clear_after_s)


def candidates() -> Iterator[SensorConfig]:
    """The grid: spread features x distance x window x calibration x target alarmed share x
    raise/clear delays; clear level 0.7, temperature slopes, everything else the
    `SensorConfig` fields' own values."""
    base = SensorConfig()
    grid = itertools.product(SPREAD, DISTANCES, WINDOWS, CALIBRATIONS, TARGETS, ALARMS)
    for spread, distance, window, calibration, target, (raise_s, clear_s) in grid:
        yield dataclasses.replace(
            base,
            std_inputs=spread,
            distance=distance,
            window=window,
            calibration=calibration,
            target_far=target,
            raise_after_s=raise_s,
            clear_after_s=clear_s,
            clear_level=0.7,
        )


@dataclass(frozen=True)
class Fold:
    """Normal data to fit on, and faulted blocks (not in it) to evaluate on."""

    normal: list[Segment]
    faulted: list[Labelled]


def folds(
    labelled: Sequence[SkabFile],
    unlabelled: Sequence[SkabFile],
    seed: int = 0,
    draws: int = DRAWS,
    train_rows: int = TRAIN_ROWS,
) -> list[Fold]:
    """The two folds of step 1-2 (see the module docstring)."""
    if not unlabelled:
        raise ValueError("the selection needs an unlabelled (normal) recording to add faults to")
    test_rows = [len(f) - train_rows for f in labelled if len(f) > train_rows]
    span = train_rows + (int(np.median(test_rows)) if test_rows else train_rows)
    blocks = [
        Segment(f.ts[i : i + span], f.values[i : i + span], train_rows)
        for f in unlabelled
        for i in range(0, len(f) - span + 1, span)
    ]
    if len(blocks) < 2:
        raise ValueError(f"normal recordings too short: need two blocks of {span} rows")
    # Only the training parts of labelled files from here on (test parts dropped).
    parts = [f.rows(0, train_rows) for f in labelled if len(f) > train_rows]
    chains = [
        Segment(p.ts, p.values, train_rows // 2)
        for p in parts
        if p.anomaly is None or not p.anomaly.any()
    ]
    columns = unlabelled[0].columns
    out = []
    for fold in (0, 1):
        normal = [b for i, b in enumerate(blocks) if i % 2 != fold]
        normal += [c for i, c in enumerate(chains) if i % 2 != fold]
        carriers = [(b.ts, b.values, b.fit_rows) for i, b in enumerate(blocks) if i % 2 == fold]
        out.append(Fold(normal, synthetic_set(carriers, columns, seed + fold, draws)))
    return out


def evaluate(
    config: SensorConfig, data: Sequence[Fold], inputs: Sequence[str]
) -> dict[str, float | int | None]:
    """The benchmark keys of one configuration over the faulted blocks of all folds."""
    counts = metrics.OutlierCounts()
    results = []
    for fold in data:
        drift = fit_drift(fold.normal, inputs, config)
        for item in fold.faulted:
            z = normalised(Segment(item.ts, item.values, item.fit_rows), inputs, config)
            scores = drift_scores(z, drift)
            ts = item.ts[item.fit_rows :]
            predicted = alarm_series(ts, scores, config.alarm)
            counts = counts + metrics.outlier_counts(item.anomaly, predicted)
            results.append(metrics.changepoint_result(ts, item.changepoint, predicted))
    return metrics.summary(counts, metrics.total(results))


def objective(m: dict[str, float | int | None]) -> float:
    """F1 + NAB standard / 100, or -inf when FAR exceeds `FAR_LIMIT` or a key is missing."""
    f1, far, nab = m.get("f1"), m.get("far"), m.get("nab_standard")
    if not all(isinstance(v, float | int) for v in (f1, far, nab)):
        return float("-inf")
    assert isinstance(f1, float | int) and isinstance(far, float | int)
    assert isinstance(nab, float | int)
    return float(f1) + float(nab) / 100.0 if far <= FAR_LIMIT else float("-inf")


def _finite(value: float) -> float | None:
    """JSON has no infinity: an excluded candidate's objective is null."""
    return value if np.isfinite(value) else None


@dataclass(frozen=True)
class Selection:
    """Every candidate with its synthetic metrics, and the chosen one."""

    rows: list[tuple[SensorConfig, dict[str, float | int | None]]]
    chosen: SensorConfig
    faulted_blocks: int
    normal_segments: int

    def to_json(self) -> dict[str, Any]:
        return {
            "far_limit": FAR_LIMIT,
            "draws": DRAWS,
            "faulted_blocks": self.faulted_blocks,
            "normal_segments_per_fold": self.normal_segments,
            "chosen": dataclasses.asdict(self.chosen),
            "candidates": [
                {
                    "config": dataclasses.asdict(c),
                    "synthetic": m,
                    "objective": _finite(objective(m)),
                }
                for c, m in self.rows
            ],
        }


# The folds and inputs of a running selection, inherited by its forked workers (not pickled).
_SHARED: dict[str, tuple[list[Fold], tuple[str, ...]]] = {}


def _evaluate_shared(config: SensorConfig) -> dict[str, float | int | None]:
    return evaluate(config, *_SHARED["data"])


def select(
    root: str | Path,
    *,
    seed: int = 0,
    grid: Sequence[SensorConfig] | None = None,
    jobs: int = 1,
) -> Selection:
    """Run the whole selection on a folder in SKAB's layout (test parts never read) over
    `grid` (default `candidates()`), in `jobs` processes (the result does not depend on it)."""
    labelled, unlabelled = discover(root)
    data = folds(labelled, unlabelled, seed)
    inputs = unlabelled[0].columns
    configs = list(candidates() if grid is None else grid)
    if jobs > 1:
        _SHARED["data"] = (data, tuple(inputs))
        try:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(jobs, mp_context=context) as pool:
                results = list(pool.map(_evaluate_shared, configs))
        finally:
            _SHARED.clear()
    else:
        results = [evaluate(config, data, inputs) for config in configs]
    rows = list(zip(configs, results, strict=True))
    best = max(range(len(rows)), key=lambda i: (objective(rows[i][1]), -i))
    if objective(rows[best][1]) == float("-inf"):
        raise ValueError(f"no candidate keeps the synthetic FAR within {FAR_LIMIT} %")
    return Selection(rows, rows[best][0], sum(len(f.faulted) for f in data), len(data[0].normal))
