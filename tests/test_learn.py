"""The Learn stage on the rig's plant: calibration follows a slowly ageing pump; a leak is a fault.

The plant runs offline (`hil.plant.simulate`, the live rig's physics, noise and control, faster
than real time); the agent's own Comparator and Learner consume it tick by tick exactly as in
the live loop, from a process image fed with the recorded values.

Observability: the efficiency shows in the motor current through the hydraulic power, which
scales with the speed cubed; at the ~50 % speed the operator scenario holds for minutes at a
time it is about a seventh of its full-speed value and the current barely tells efficiencies
apart, so there the estimate holds still while the truth moves on. The tight band is asserted
where the pump has run at >= `OBSERVABLE_SPEED` for the last `OBSERVABLE_S`, a loose one
(no lost track) everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from drivers.base import Quality, Sample
from edge_agent.compare import Comparator
from edge_agent.image import ProcessImage
from edge_agent.learn import Learner
from hil.plant import PlantParams, simulate
from models.process.engine import SpecModel
from models.process.spec import load_spec
from models.process.units import UNITS_DIR

SPEC = load_spec(UNITS_DIR / "water_loop.toml")
SIGMA = np.array([0.3, 0.015, 0.002, 0.06, 0.037, 0.09])  # normal residual scale per output
EFF = SPEC.params.index("pump_efficiency_frac")
# Stated band: the estimate follows the true efficiency's change within this (absolute).
BAND = 0.04
VARY = ["pump_efficiency_frac", "head_shutoff_m"]
# Over several seeds (operator scenarios and noise): while the efficiency is observable the
# estimate follows within BAND_OBSERVABLE (measured <= 0.0095 over seeds 0-9), everywhere within
# BAND_ALWAYS (measured <= 0.052; a lost track was 0.24-0.27 off).
BAND_OBSERVABLE = 0.02
BAND_ALWAYS = 0.08
OBSERVABLE_SPEED = 70.0  # % pump speed
OBSERVABLE_S = 30.0
AGEING_RATE, AGEING_START = 0.001, 120.0

Track = list[tuple[float, float, float]]
Faults = list[tuple[str, float, dict[str, float | str]]]


def run(faults: Faults, minutes: float, seed: int, recording: dict[str, np.ndarray] | None = None
        ) -> tuple[Track, list[dict[str, object]]]:  # fmt: skip
    """Feed a simulated recording through Comparator + Learner; returns (t, estimate, std)
    every 10 s and all learner events. `recording`, when given, receives the recorded tags."""
    _, track, events = _feed(faults, minutes, seed, recording)
    return track, events


def _learner_after(faults: Faults, minutes: float, seed: int) -> Learner:
    """The Learner after a simulated recording."""
    return _feed(faults, minutes, seed, None)[0]


def _feed(faults: Faults, minutes: float, seed: int, recording: dict[str, np.ndarray] | None
          ) -> tuple[Learner, Track, list[dict[str, object]]]:  # fmt: skip
    ts, cols = simulate(minutes * 60, rate_hz=10, seed=seed, faults=faults)
    if recording is not None:
        recording.update(cols)
    names = list(cols)
    image = ProcessImage(names, [None] * len(names))
    model = SpecModel(SPEC)
    comp = Comparator(model, None, image, list(SPEC.inputs), list(SPEC.outputs))
    learner = Learner(SPEC, variants=200, vary=VARY, sigma=SIGMA, seed=seed, spread=0.5)
    track, events = [], []
    for k, t in enumerate(ts):
        image.update(Sample(n, float(cols[n][k]), Quality.GOOD, t, t) for n in names)
        comp.tick(float(t))
        assert comp.step_info is not None
        events += learner.tick(comp.step_info)
        if k % 100 == 0:
            mean, std = learner.calibrator.mean_std()
            track.append((float(t), float(mean[EFF]), float(std[EFF])))
    return learner, track, events


def test_calibrated_efficiency_follows_an_ageing_pump() -> None:
    """With the pump's efficiency falling 0.1 %/s, the estimate follows the true change within
    BAND, drift is flagged on the efficiency, and no model fault is raised."""
    rate, start = 0.001, 120.0
    track, events = run([("pump-ageing", start, {"rate_per_s": rate, "max_loss": 0.4})], 12, 1)
    true_eff = PlantParams().pump_efficiency_frac
    at_start = np.mean([e for t, e, _ in track if 60 <= t <= start])
    for t, est, _ in track:
        if t >= start + 120:
            true_change = -true_eff * min(0.4, rate * (t - start))
            assert abs((est - at_start) - true_change) < BAND, (t, est, at_start, true_change)
    drift = [e for e in events if e["kind"] == "drift" and e["event"] == "raised"]
    assert any(e["param"] == "pump_efficiency_frac" for e in drift), events
    assert not [e for e in events if e["kind"] == "model-fault" and e["event"] == "raised"]


def _ageing_errors(seed: int) -> tuple[list[float], list[float], list[dict[str, object]]]:
    """Tracking errors of the efficiency's change (observable points, all points) and events."""
    cols: dict[str, np.ndarray] = {}
    fault: tuple[str, float, dict[str, float | str]] = (
        "pump-ageing", AGEING_START, {"rate_per_s": AGEING_RATE, "max_loss": 0.4})  # fmt: skip
    track, events = run([fault], 12, seed, cols)
    true_eff = PlantParams().pump_efficiency_frac
    at_start = float(np.mean([e for t, e, _ in track if 60 <= t <= AGEING_START]))
    speed = cols["pump_speed"]
    observable, everywhere = [], []
    for t, est, _ in track:
        if t < AGEING_START + 120:
            continue
        true_change = -true_eff * min(0.4, AGEING_RATE * (t - AGEING_START))
        err = float(abs((est - at_start) - true_change))
        everywhere.append(err)
        k = round(t * 10)
        if speed[max(0, k - round(OBSERVABLE_S * 10)) : k + 1].min() >= OBSERVABLE_SPEED:
            observable.append(err)
    return observable, everywhere, events


@pytest.mark.parametrize("seed", [0, 2, 3, 4, 5, 6])
def test_calibration_tracks_the_ageing_pump_over_seeds(seed: int) -> None:
    """For several plants (noise, operator scenario), calibration keeps track: within
    BAND_OBSERVABLE where the efficiency is observable, BAND_ALWAYS everywhere, no model
    fault (a lost track shows as faults on every output), drift flagged on the efficiency."""
    observable, everywhere, events = _ageing_errors(seed)
    assert len(observable) >= 3  # the scenario does run the pump fast enough, for a while
    assert max(observable) < BAND_OBSERVABLE, observable
    assert max(everywhere) < BAND_ALWAYS, everywhere
    assert not [e for e in events if e["kind"] == "model-fault" and e["event"] == "raised"]
    drift = {e["param"] for e in events if e["kind"] == "drift" and e["event"] == "raised"}
    assert drift == {"pump_efficiency_frac"}, events


def test_held_parameters_stay_exactly_at_nominal() -> None:
    """Parameters the ensemble does not vary are never jittered, however often it resamples
    (their compounding jitter floor was what once made calibration lose track)."""
    fault: tuple[str, float, dict[str, float | str]] = (
        "pump-ageing", AGEING_START, {"rate_per_s": AGEING_RATE, "max_loss": 0.4})  # fmt: skip
    learner = _learner_after([fault], 6, seed=5)
    cal = learner.calibrator
    assert cal.resamples > 10
    held = [i for i, n in enumerate(SPEC.params) if n not in VARY]
    assert np.array_equal(cal.params[:, held], np.tile(SPEC.nominal[held], (cal.n_variants, 1)))
    assert np.array_equal(learner.ensemble.params, cal.params)
    assert set(cal.varied) == set(VARY)


def test_a_leak_is_a_fault_not_drift() -> None:
    """A sudden leak is reported as a model fault on the level, and no parameter drifts."""
    _, events = run([("leak", 120.0, {})], 6, 2)
    faults = [e for e in events if e["kind"] == "model-fault" and e["event"] == "raised"]
    assert faults and "level" in faults[0]["outputs"], events  # type: ignore[operator]
    assert not [e for e in events if e["kind"] == "drift" and e["event"] == "raised"]
