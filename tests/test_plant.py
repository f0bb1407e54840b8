"""The simulated plant: physics sanity, control, operator scenario, faults, offline simulate()."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drivers.modbus import codec
from edge_agent.config import DEFAULT_SPEC
from hil.control import Pid
from hil.faults import EXPECTED_TAGS, FAULT_KINDS, expected_tags, parse_fault
from hil.plant import Plant, simulate
from hil.scenario import FLOW_SETPOINTS, TEMP_RANGE, Scenario
from hil.tags import BY_NAME, TAGS, tags_of
from models.process.engine import SpecModel
from models.process.spec import load_spec

SPEC = load_spec(DEFAULT_SPEC)
INPUT_NAMES, OUTPUT_NAMES = SPEC.inputs, SPEC.outputs

# Residual change that counts as "disturbed" per model output (a few noise sigmas).
DISTURBED = {
    "flow": 1.0,
    "pressure": 0.05,
    "level": 0.02,
    "fluid_temp": 0.5,
    "motor_current": 0.15,
    "motor_temp": 0.5,
}


def test_starts_at_steady_operating_point() -> None:
    """Without operator actions the plant holds its start point: no warm-up transient."""
    plant = Plant(seed=1, scenario=False)
    before = plant.truth()
    plant.step(60.0)
    after = plant.truth()
    assert after["flow"] == pytest.approx(32.0, abs=0.5)
    assert after["fluid_temp"] == pytest.approx(40.0, abs=0.2)
    assert after["motor_temp"] == pytest.approx(before["motor_temp"], abs=0.5)
    assert after["level"] == pytest.approx(0.8, abs=1e-9)


def test_operating_point_is_lab_scale_and_in_tag_ranges() -> None:
    """Over ten scenario minutes every tag stays in its plausible range and near the lab bed."""
    _, data = simulate(600.0, seed=2)
    for tag in TAGS:
        values = data[tag.name]
        assert np.all(np.isfinite(values)), tag.name
        assert values.min() >= tag.lo and values.max() <= tag.hi, tag.name
    assert 20.0 < data["flow"].mean() < 45.0
    assert 0.5 < data["pressure"].mean() < 2.5
    assert 0.8 < data["motor_current"].mean() < 2.5
    assert 55.0 < data["motor_temp"].mean() < 85.0
    assert np.all(data["status_word"] == 1.0)
    assert np.all(np.diff(data["energy"]) >= 0.0)


def test_flow_pid_tracks_setpoint_steps() -> None:
    """The flow loop brings the true flow to each new setpoint."""
    plant = Plant(seed=3, scenario=False)
    for sp in (40.0, 25.0, 32.0):
        plant.set_operator(flow_sp=sp)
        plant.step(20.0)
        assert plant.truth()["flow"] == pytest.approx(sp, abs=0.5)


def test_temperature_pid_tracks_setpoint_step() -> None:
    """The temperature loop brings the fluid to a setpoint two degrees up, without big overshoot."""
    plant = Plant(seed=4, scenario=False)
    plant.set_operator(temp_sp=42.0)
    peak = 0.0
    for _ in range(400):
        plant.step(1.0)
        peak = max(peak, plant.truth()["fluid_temp"])
    assert plant.truth()["fluid_temp"] == pytest.approx(42.0, abs=0.2)
    assert peak < 42.6


def test_pid_anti_windup_leaves_saturation_at_once() -> None:
    """After a long saturation the integral has not wound up: a reversed error acts at once."""
    pid = Pid(kp=1.0, ki=1.0, out_lo=0.0, out_hi=10.0)
    for _ in range(1000):
        assert pid.update(100.0, 0.0, 0.1) == 10.0
    assert pid.integral <= 10.0
    assert pid.update(0.0, 1.0, 0.1) < 10.0


def test_drive_values_quantised_like_their_registers() -> None:
    """Drive tags come out exactly as their Modbus encoding carries them."""
    plant = Plant(seed=5)
    for _ in range(20):
        plant.step(0.5)
        meas = plant.measurements()
        for tag in tags_of("drive"):
            regs = codec.encode(meas[tag.name], tag.reg_type, tag.order, scale=tag.scale)
            back = codec.decode(regs, tag.reg_type, tag.order) * tag.scale
            assert back == pytest.approx(meas[tag.name], rel=0, abs=1e-9), tag.name
    assert meas["motor_speed"] == round(meas["motor_speed"])


def test_measurements_and_truth_cover_every_tag() -> None:
    """Both views name exactly the tags of the rig's tag table."""
    plant = Plant(seed=6)
    plant.step(1.0)
    assert set(plant.measurements()) == set(BY_NAME)
    assert set(plant.truth()) == set(BY_NAME)


def test_simulate_is_deterministic_by_seed() -> None:
    """The same seed gives identical data; another seed gives other data."""
    ts_a, a = simulate(120.0, seed=7, faults=["drift@30"])
    ts_b, b = simulate(120.0, seed=7, faults=["drift@30"])
    _, c = simulate(120.0, seed=8, faults=["drift@30"])
    assert np.array_equal(ts_a, ts_b)
    assert len(ts_a) == 1201 and ts_a[0] == 0.0 and ts_a[-1] == pytest.approx(120.0)
    for name in BY_NAME:
        assert np.array_equal(a[name], b[name]), name
    assert not np.array_equal(a["flow"], c["flow"])


def test_scenario_moves_setpoints_deterministically() -> None:
    """The operator steps the flow among its setpoints and keeps the temperature in range."""
    one, two = Scenario(9), Scenario(9)
    flows, temps, vouts = set(), set(), set()
    for t in np.arange(0.0, 1200.0, 1.0):
        op = one.at(float(t))
        assert op == two.at(float(t))
        flows.add(op.flow_sp)
        temps.add(op.temp_sp)
        vouts.add(op.valve_out)
    assert len(flows) == 3 and flows <= set(FLOW_SETPOINTS)
    assert len(temps) >= 2 and all(TEMP_RANGE[0] <= t <= TEMP_RANGE[1] for t in temps)
    assert len(vouts) >= 2


def _residuals(faults: list[str], seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    ts, data = simulate(300.0, seed=seed, faults=faults)
    u = np.stack([data[n] for n in INPUT_NAMES], axis=1)
    y = np.stack([data[n] for n in OUTPUT_NAMES], axis=1)
    model = SpecModel(SPEC)
    model.reset(u[0], y[0])
    pred = np.empty_like(y)
    pred[0] = y[0]
    for i in range(1, len(ts)):
        pred[i] = model.step(u[i - 1], float(ts[i] - ts[i - 1]))
    return ts, y - pred


@pytest.mark.parametrize("kind", ["drift", "stuck", "leak", "pump-wear"])
def test_fault_disturbs_its_expected_tags_only(kind: str) -> None:
    """Against the Digital Original, a fault moves the residuals of its expected tags only."""
    ts, base = _residuals([])
    _, faulted = _residuals([f"{kind}@60"])
    post = ts >= 60.0
    window = np.ones(100) / 100.0  # 10 s moving mean of the residual change
    for j, name in enumerate(OUTPUT_NAMES):
        change = np.convolve(faulted[post, j] - base[post, j], window, mode="valid")
        moved = float(np.abs(change).max())
        if name in EXPECTED_TAGS[kind]:
            assert moved > DISTURBED[name], (kind, name, moved)
        else:
            assert moved < DISTURBED[name], (kind, name, moved)


def test_fault_catalogue_is_complete() -> None:
    """Every fault kind has a description, expected tags that exist, and parses with defaults."""
    for kind in FAULT_KINDS:
        assert set(EXPECTED_TAGS[kind]) <= set(BY_NAME)
        assert parse_fault(f"{kind}@1")[0] == kind
    assert expected_tags("plc-restart", {"plc": "drive"}) == tuple(t.name for t in tags_of("drive"))


def test_parse_fault_forms() -> None:
    """Both `kind@t` and `kind:key=value,...@t` parse; defaults fill the rest."""
    assert parse_fault("drift@30") == ("drift", 30.0, {"rate_k_s": 0.05})
    assert parse_fault("pump-wear:head=0.3@60") == ("pump-wear", 60.0, {"head": 0.3, "eff": 0.25})
    assert parse_fault("plc-restart:plc=drive,down_s=2@5") == (
        "plc-restart",
        5.0,
        {"plc": "drive", "down_s": 2.0},
    )
    assert parse_fault("stuck") == ("stuck", 0.0, {})


@pytest.mark.parametrize(
    "text",
    ["melt@3", "drift:speed=1@3", "drift@soon", "drift:rate_k_s=fast@3", "plc-restart:plc=x@1"],
)
def test_parse_fault_rejects_bad_specs(text: str) -> None:
    """Unknown kinds, unknown or malformed parameters and bad times are refused."""
    with pytest.raises(ValueError, match="fault"):
        parse_fault(text)


def test_clear_faults_stops_the_leak_and_unfreezes_the_sensor() -> None:
    """After clear_faults the level holds and the flow meter reads live values again."""
    plant = Plant(seed=10, scenario=False)
    plant.inject("leak", rate_m_s=0.01)
    plant.inject("stuck")
    plant.step(5.0)
    frozen = plant.measurements()["flow"]
    plant.set_operator(flow_sp=40.0)
    plant.step(10.0)
    assert plant.measurements()["flow"] == frozen
    level = plant.truth()["level"]
    assert level < 0.8 - 0.03
    plant.clear_faults()
    plant.step(10.0)
    assert plant.truth()["level"] == pytest.approx(level, abs=1e-12)
    assert plant.measurements()["flow"] != frozen
    assert not math.isclose(plant.measurements()["flow"], frozen, abs_tol=1e-6)
