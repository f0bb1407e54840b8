"""The configuration choice for the SKAB detector: synthetic faults, the threshold calibration,
and the rule that the choice never reads a test part (synthetic data, no benchmark data)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from models.anomaly import faults
from models.anomaly.alarm import AlarmSettings, alarm_series
from models.anomaly.selection import DRAWS, objective, select
from models.anomaly.sensor import SensorDetector
from models.anomaly.sensor_train import (
    Segment,
    SensorConfig,
    calibrate,
    drift_scores,
    fit_drift,
    normalised,
    reference_scores,
    train_sensor_detector,
    window_features,
    windows_of,
)

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
LEVEL = np.array([0.2, 0.27, 2.4, 0.1, 70.0, 25.0, 230.0, 120.0])
NOISE = np.array([0.002, 0.003, 0.45, 0.25, 0.3, 0.03, 11.0, 0.5])
A1, A2, CURRENT, PRESSURE, FLOW, FLUID_T, MOTOR_T = 0, 1, 2, 3, 7, 5, 4


def normal(rows: int, seed: int, drift_step: float = 0.02) -> np.ndarray:
    """Level, white noise and a slow drift (a random walk) of every signal."""
    rng = np.random.default_rng(seed)
    drift = np.cumsum(rng.standard_normal((rows, 8)), axis=0) * NOISE * drift_step
    out: np.ndarray = LEVEL + drift + rng.standard_normal((rows, 8)) * NOISE
    return out


def test_leak_shifts_flow_inside_the_labelled_rows_only() -> None:
    """A leak lowers the flow by severity x noise on exactly the anomaly rows; labels and
    changepoints match the fault; rows before it are untouched."""
    x = normal(1000, 1)
    ts = 1.6e9 + np.arange(1000.0)
    got = faults.inject(
        ts, x, 400, COLUMNS, rng=np.random.default_rng(2), kind="leak", severity=3.0
    )
    on = np.flatnonzero(got.anomaly) + 400
    assert 0.35 * 600 - 1 <= on.size <= 0.60 * 600
    assert np.flatnonzero(got.changepoint).tolist() == [on[0] - 400, on[-1] + 1 - 400]
    sigma = faults.noise_sigma(x[:400])
    settled = on[30:]  # past the ramp-in
    shift = got.values[settled, FLOW] - x[settled, FLOW]
    assert np.allclose(shift, -3.0 * sigma[FLOW])
    assert np.array_equal(got.values[: on[0]], x[: on[0]])
    assert np.array_equal(got.values[on[-1] + 1 :], x[on[-1] + 1 :])


def test_hot_water_ramps_the_fluid_then_the_motor_at_a_third() -> None:
    """Hot water warms the thermocouple by HOT_RATE x severity per second; the motor at 0.3."""
    x = normal(1000, 3)
    ts = 1.6e9 + np.arange(1000.0)
    got = faults.inject(
        ts, x, 400, COLUMNS, rng=np.random.default_rng(4), kind="hotwater", severity=2.0
    )
    on = np.flatnonzero(got.anomaly) + 400
    rise = got.values[on, FLUID_T] - x[on, FLUID_T]
    slope = np.polyfit(np.arange(on.size)[40:], rise[40:], 1)[0]
    assert slope == pytest.approx(faults.HOT_RATE * 2.0, rel=1e-6)
    motor = got.values[on, MOTOR_T] - x[on, MOTOR_T]
    assert np.allclose(motor, 0.3 * rise)


def faulted(kind: str, severity: float, seed: int) -> tuple[np.ndarray, faults.Labelled]:
    x = normal(1000, seed)
    got = faults.inject(
        1.6e9 + np.arange(1000.0),
        x,
        400,
        COLUMNS,
        rng=np.random.default_rng(seed + 1),
        kind=kind,
        severity=severity,
    )
    return x, got


def test_outlet_throttling_moves_pressure_and_flow_apart() -> None:
    """Throttling after the pump: pressure up, flow down, current down a little (a relation
    between signals, each of which may stay in its range); nothing else moves."""
    x, got = faulted("outlet", 2.0, 7)
    settled = np.flatnonzero(got.anomaly)[30:] + 400
    sigma = faults.noise_sigma(x[:400])
    moved = got.values[settled] - x[settled]
    assert np.allclose(moved[:, PRESSURE], 2.0 * sigma[PRESSURE])
    assert np.allclose(moved[:, FLOW], -2.0 * sigma[FLOW])
    assert np.allclose(moved[:, CURRENT], -0.6 * sigma[CURRENT])
    assert np.array_equal(np.delete(moved, [PRESSURE, FLOW, CURRENT], axis=1), 0 * moved[:, :5])


def test_noisy_signal_keeps_its_level_and_grows_its_spread() -> None:
    """`noisy` adds white noise of severity x sigma to one signal on the fault's rows: its level
    stays, its spread grows by about sqrt(1 + severity^2); every other signal is untouched."""
    x, got = faulted("noisy", 3.0, 11)
    on = np.flatnonzero(got.anomaly) + 400
    changed = np.flatnonzero(np.any(got.values != x, axis=0))
    assert changed.size == 1
    (i,) = changed
    added = got.values[on, i] - x[on, i]
    sigma = faults.noise_sigma(x[:400])[i]
    assert abs(added.mean()) < 4 * 3.0 * sigma / np.sqrt(on.size)
    assert added.std() == pytest.approx(3.0 * sigma, rel=0.15)
    assert np.array_equal(got.values[: on[0]], x[: on[0]])


def test_creep_drifts_linearly_to_twice_the_severity() -> None:
    """`creep` moves one signal along a straight line from zero at the fault's first row to
    twice the severity at its last; the rows after the fault are as before."""
    x, got = faulted("creep", 1.5, 13)
    on = np.flatnonzero(got.anomaly) + 400
    (i,) = np.flatnonzero(np.any(got.values != x, axis=0))
    sigma = faults.noise_sigma(x[:400])[i]
    moved = (got.values[on, i] - x[on, i]) / sigma
    assert np.allclose(np.abs(moved), np.linspace(0.0, 3.0, on.size))
    assert np.array_equal(got.values[on[-1] + 1 :], x[on[-1] + 1 :])


def test_pulsation_oscillates_vibration_about_its_level() -> None:
    """`pulsation`: both accelerometers swing by severity x sigma (current by half) about
    their level with one period; the other signals do not move."""
    x, got = faulted("pulsation", 2.0, 17)
    on = np.flatnonzero(got.anomaly)[30:] + 400  # past the ramp-in
    sigma = faults.noise_sigma(x[:400])
    swing = (got.values[on] - x[on]) / sigma
    assert np.max(np.abs(swing[:, A1])) == pytest.approx(2.0, rel=0.02)
    assert np.allclose(swing[:, A1], swing[:, A2])
    assert np.allclose(swing[:, CURRENT], 0.5 * swing[:, A1])
    assert abs(swing[:, A1].mean()) < 0.5
    assert not np.any(got.values[:, [PRESSURE, FLOW, FLUID_T]] != x[:, [PRESSURE, FLOW, FLUID_T]])


def test_spread_features_alarm_a_noisier_signal_at_its_usual_level() -> None:
    """With the flow's log window spread among the features, the flow getting three times
    noisier (level unchanged) is alarmed on most of its rows, with window means alone on far
    fewer; the detector built with spread features scores like its float64 reference."""
    ts = 1.6e9 + np.arange(1100.0)
    segments = [Segment(ts, normal(1100, 60 + k, 0.002), 400) for k in range(8)]
    x = normal(1100, 70, 0.002)
    x[700:, FLOW] += np.random.default_rng(71).standard_normal(400) * 3.0 * NOISE[FLOW]
    alarmed = {}
    for spread in ((), (COLUMNS[FLOW], COLUMNS[PRESSURE])):
        config = SensorConfig(std_inputs=spread)
        drift = fit_drift(segments, COLUMNS, config)
        scores = drift_scores(normalised(Segment(ts, x, 400), COLUMNS, config), drift)
        alarmed[spread] = alarm_series(ts[400:], scores, config.alarm)
    with_spread = alarmed[(COLUMNS[FLOW], COLUMNS[PRESSURE])]
    # The normal rows: a file the threshold was not calibrated on, alarms held 2 s after.
    assert with_spread[320:].mean() > 0.8 and with_spread[:300].mean() < 0.25
    assert alarmed[()][320:].mean() < with_spread[320:].mean() - 0.3
    config = SensorConfig(std_inputs=(COLUMNS[FLOW],))
    assert config.features(COLUMNS)[-1] == "logstd:Volume Flow RateRMS"
    drift = fit_drift(segments, COLUMNS, config)
    blob = train_sensor_detector(ts[:400], x[:400], COLUMNS, drift, config)
    detector = SensorDetector.from_bytes(blob, COLUMNS, source="<test>")
    windows = windows_of(x[600:800], config.window)
    feats = window_features(ts[600:800], x[600:800], COLUMNS, config)[config.window - 1 :]
    want = reference_scores(detector.params, feats)
    assert np.allclose(detector.score_batch(windows), want, rtol=1e-3, atol=1e-3)
    assert want.max() > 1.0  # the noisy rows are among them


def test_unknown_fault_kind_is_named() -> None:
    """A kind outside KINDS is a ValueError listing the known kinds."""
    x = normal(600, 5)
    with pytest.raises(ValueError, match=r"unknown fault kind 'flood'.*valve"):
        faults.inject(
            np.arange(600.0),
            x,
            400,
            COLUMNS,
            rng=np.random.default_rng(0),
            kind="flood",
            severity=1.0,
        )


def test_calibrate_finds_the_lowest_threshold_within_the_target() -> None:
    """The alarm covers at most the target share at the threshold, more just below it."""
    rng = np.random.default_rng(6)
    ts = [np.arange(800.0), np.arange(500.0)]
    d2 = [
        np.exp(rng.standard_normal(800) + 0.5 * np.sin(np.arange(800) / 40)),
        rng.gamma(2, 1, 500),
    ]
    settings = AlarmSettings(1.0, 0.7, 0.0, 2.0)

    def share(threshold: float) -> float:
        on = [
            alarm_series(t, np.sqrt(d / threshold), settings) for t, d in zip(ts, d2, strict=True)
        ]
        return float(np.mean(np.concatenate(on)))

    threshold = calibrate(ts, d2, settings, 0.08)
    assert share(threshold) <= 0.08 < share(threshold * 0.99)


def test_held_out_calibration_allows_for_unseen_drift() -> None:
    """Segments drifting in different directions: scored by a model fitted without them,
    they need a higher threshold than in-sample; an unknown calibration is refused."""
    segments = []
    for k in range(4):
        x = normal(1100, 10 + k)
        x[400:, FLOW] += np.linspace(0, (1 if k % 2 else -1) * 6 * NOISE[FLOW], 700)
        segments.append(Segment(1.6e9 + np.arange(1100.0), x, 400))
    inside = fit_drift(segments, COLUMNS, SensorConfig())
    held = fit_drift(segments, COLUMNS, SensorConfig(calibration="held-out"))
    assert held.d2_threshold > inside.d2_threshold
    assert np.array_equal(held.covariance, inside.covariance)
    with pytest.raises(ValueError, match="calibration is 'bogus'"):
        SensorConfig(calibration="bogus")


def test_max_distance_is_calibrated_and_trains() -> None:
    """Under "max" the threshold keeps the alarmed share of the normal data within the target
    like the Mahalanobis one does, and a flow drop of 1.5 noise sigmas alone (no other signal
    moving) is alarmed on most of its rows; a detector trained with that drift model passes its
    self-test (graph = reference), and a drift model of the other distance is refused."""
    ts = 1.6e9 + np.arange(1100.0)
    segments = [Segment(ts, normal(1100, 40 + k), 400) for k in range(4)]
    config = SensorConfig(distance="max")
    drift = fit_drift(segments, COLUMNS, config)
    assert drift.distance == "max"
    normal_on = [
        alarm_series(ts[400:], drift_scores(normalised(s, COLUMNS, config), drift), config.alarm)
        for s in segments
    ]
    assert 0 < np.mean(np.concatenate(normal_on)) <= config.target_far
    x = normal(1100, 50)
    x[700:, FLOW] -= 1.5 * NOISE[FLOW]
    on = alarm_series(
        ts[400:],
        drift_scores(normalised(Segment(ts, x, 400), COLUMNS, config), drift),
        config.alarm,
    )
    assert on[300:].mean() > 0.9 and on[:300].mean() < 0.1
    blob = train_sensor_detector(ts[:400], x[:400], COLUMNS, drift, config)
    assert len(blob) > 0
    with pytest.raises(ValueError, match="distance 'max' differs from 'mahalanobis'"):
        train_sensor_detector(
            ts[:400], x[:400], COLUMNS, drift, SensorConfig(distance="mahalanobis")
        )
    with pytest.raises(ValueError, match="distance is 'l1'"):
        SensorConfig(distance="l1")


def write(path: Path, values: np.ndarray, labels: np.ndarray | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = ["datetime", *COLUMNS] + (["anomaly", "changepoint"] if labels is not None else [])
    lines = [";".join(head)]
    for k, row in enumerate(values):
        stamp = np.datetime64(1583748000 + k, "s").astype(str).replace("T", " ")
        cells = [stamp, *(f"{v:.6g}" for v in row)]
        if labels is not None:
            cells += [f"{labels[k]}.0", "0.0"]
        lines.append(";".join(cells))
    path.write_text("\n".join(lines) + "\n")


def skab_folder(root: Path, test_seed: int) -> Path:
    """Three labelled files of 1,000 rows (400 training) and a 2,100-row normal recording;
    the test parts (rows 400..) come from `test_seed`, everything else is fixed."""
    for k, group in enumerate(("valve1", "valve1", "other")):
        x = normal(1000, 20 + k, 0.002)
        rng = np.random.default_rng(test_seed + k)
        x[400:] = LEVEL + rng.standard_normal((600, 8)) * NOISE * 5
        labels = np.zeros(1000, dtype=int)
        labels[400 + int(rng.integers(0, 300)) :] = 1
        write(root / group / f"{k}.csv", x, labels)
    write(root / "anomaly-free" / "anomaly-free.csv", normal(2100, 30, 0.002), None)
    return root


def test_selection_never_reads_the_test_parts(tmp_path: Path) -> None:
    """Other test parts (values and labels) leave every candidate's figures and the choice
    unchanged; the choice is the best objective among candidates within the FAR limit."""
    grid = [
        dataclasses.replace(SensorConfig(), window=10, target_far=0.03),
        dataclasses.replace(SensorConfig(), window=20, target_far=0.01),
        dataclasses.replace(SensorConfig(), window=20, target_far=0.05),
    ]
    a = select(skab_folder(tmp_path / "a", 100), grid=grid)
    b = select(skab_folder(tmp_path / "b", 200), grid=grid, jobs=2)  # same in two processes
    assert [m for _, m in a.rows] == [m for _, m in b.rows]
    assert a.chosen == b.chosen
    assert a.faulted_blocks == 2 * DRAWS
    scores = [objective(m) for _, m in a.rows]
    assert a.chosen == grid[int(np.argmax(scores))]
    for _, m in a.rows:  # over the FAR limit: never chosen
        far = m["far"]
        assert isinstance(far, float)
        assert (objective(m) == float("-inf")) == (far > 10.0)
    for _, m in a.rows:
        assert {"f1", "far", "mar", "nab_standard"} <= set(m)
    saved = json.loads(json.dumps(a.to_json(), allow_nan=False))
    assert saved["chosen"]["window"] == a.chosen.window
    assert [c["objective"] is None for c in saved["candidates"]] == [
        s == float("-inf") for s in scores
    ]
