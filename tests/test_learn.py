"""The Learn stage on the rig's plant: calibration follows a slowly ageing pump; a leak is a fault.

The plant runs offline (`hil.plant.simulate`, the live rig's physics, noise and control, faster
than real time); the agent's own Comparator and Learner consume it tick by tick exactly as in
the live loop, from a process image fed with the recorded values.
"""

from __future__ import annotations

import numpy as np

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


def run(faults: list[tuple[str, float, dict[str, float | str]]], minutes: float, seed: int
        ) -> tuple[list[tuple[float, float, float]], list[dict[str, object]]]:  # fmt: skip
    """Feed a simulated recording through Comparator + Learner; returns (t, estimate, std)
    every 10 s and all learner events."""
    ts, cols = simulate(minutes * 60, rate_hz=10, seed=seed, faults=faults)
    names = list(cols)
    image = ProcessImage(names, [None] * len(names))
    model = SpecModel(SPEC)
    comp = Comparator(model, None, image, list(SPEC.inputs), list(SPEC.outputs))
    learner = Learner(SPEC, variants=200, vary=["pump_efficiency_frac", "head_shutoff_m"],
                      sigma=SIGMA, seed=seed, spread=0.5)  # fmt: skip
    track, events = [], []
    for k, t in enumerate(ts):
        image.update(Sample(n, float(cols[n][k]), Quality.GOOD, t, t) for n in names)
        comp.tick(float(t))
        assert comp.step_info is not None
        events += learner.tick(comp.step_info)
        if k % 100 == 0:
            mean, std = learner.calibrator.mean_std()
            track.append((float(t), float(mean[EFF]), float(std[EFF])))
    return track, events


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


def test_a_leak_is_a_fault_not_drift() -> None:
    """A sudden leak is reported as a model fault on the level, and no parameter drifts."""
    _, events = run([("leak", 120.0, {})], 6, 2)
    faults = [e for e in events if e["kind"] == "model-fault" and e["event"] == "raised"]
    assert faults and "level" in faults[0]["outputs"], events  # type: ignore[operator]
    assert not [e for e in events if e["kind"] == "drift" and e["event"] == "raised"]
