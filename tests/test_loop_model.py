"""The built-in Digital Original (the water loop authored through the engine): its equations vs
an independent reference, stability, reset, and how well it tracks the rig's plant."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import DEFAULT_SPEC
from hil.plant import PlantParams, simulate
from hil.tags import BY_NAME
from models.base import ModelError
from models.process.engine import SpecModel
from models.process.spec import load_spec

SPEC = load_spec(DEFAULT_SPEC)
INPUT_NAMES, OUTPUT_NAMES, PARAM_NAMES = SPEC.inputs, SPEC.outputs, SPEC.params
PARAMS = {n: float(SPEC.nominal[SPEC.index(n)]) for n in PARAM_NAMES}
MODEL = SpecModel(SPEC)


def new_model() -> SpecModel:
    return SpecModel(SPEC)


def steady(u: np.ndarray, level: float = math.nan) -> np.ndarray:
    """The outputs the model settles to with `u` held (the engine's re-synchronisation)."""
    m = new_model()
    m.reset(u, np.array([np.nan, np.nan, level, np.nan, np.nan, np.nan]))
    return m.step(u, 0.0)


def _reference_rates(x: list[float], u: list[float], p: dict[str, float]) -> list[float]:
    """The documented equations, written plainly (no numba, no shared code)."""
    s = min(max(u[0] / 100.0, 0.0), 1.0)
    vin = min(max(u[1] / 100.0, 0.05), 1.0)
    vout = min(max(u[2] / 100.0, 0.05), 1.0)
    q, h, t, tm = x
    head = p["head_shutoff_m"] * s * s - p["pump_head_coeff_m_per_lpm2"] * q * abs(q)
    kv = p["valve_coeff_m_per_lpm2"]
    k_sys = p["pipe_coeff_m_per_lpm2"] + kv / vin**2 + kv / vout**2
    dq = (head - k_sys * q * abs(q)) / p["inertance_m_s_per_lpm"]
    p_hyd = p["density_kg_per_m3"] * 9.81 * max(q, 0.0) / 60000.0 * max(head, 0.0)
    p_shaft = p_hyd / p["pump_efficiency_frac"] + p["mech_loss_w"] * s * s
    vpf = p["supply_voltage_v"] * p["power_factor"]
    r = p["winding_resistance_ohm"]
    current = (vpf - math.sqrt(vpf**2 - 4 * r * (p_shaft + p["iron_loss_w"] * s))) / (2 * r)
    cf = p["density_kg_per_m3"] * p["specific_heat_j_per_kg_k"]
    cf *= p["tank_area_m2"] * h + p["pipe_volume_m3"]
    amb = p["ambient_temp_c"]
    dt_ = (u[3] * 1000.0 + p_shaft - p["heat_loss_w_per_k"] * (t - amb)) / cf
    loss = r * current**2 + p["iron_loss_w"] * s
    dtm = (loss - (tm - amb) / p["motor_thermal_resistance_k_per_w"]) / p[
        "motor_heat_capacity_j_per_k"
    ]
    return [dq, 0.0, dt_, dtm]


def test_model_names_are_rig_tags() -> None:
    """Every model input and output is a tag the rig serves, so configs map them one to one."""
    assert set(INPUT_NAMES) <= set(BY_NAME)
    assert set(OUTPUT_NAMES) <= set(BY_NAME)
    assert MODEL.input_names == INPUT_NAMES and MODEL.output_names == OUTPUT_NAMES


def test_matches_fine_euler_reference() -> None:
    """Over a speed-and-heater step, the RK4 model agrees with tiny-dt Euler on the equations."""
    p = PARAMS
    u0 = np.array([70.0, 100.0, 80.0, 1.6])
    u1 = [90.0, 90.0, 60.0, 4.0]
    model = new_model()
    model.reset(u0, np.full(6, np.nan))
    x = list(model.state)
    h = 2e-4
    for _ in range(int(3.0 / h)):
        rates = _reference_rates(x, u1, p)
        x = [xi + h * ri for xi, ri in zip(x, rates, strict=True)]
    for _ in range(3):
        y = model.step(np.array(u1), 1.0)
    assert x[0] != pytest.approx(steady(u0)[0], abs=1.0)  # it really moved
    assert y[0] == pytest.approx(x[0], rel=1e-3)
    assert y[3] == pytest.approx(x[2], abs=1e-4)
    assert y[5] == pytest.approx(x[3], abs=1e-4)


def test_steady_state_is_analytic_and_a_fixed_point() -> None:
    """The steady state solves H = H_sys in closed form, and stepping leaves it unchanged."""
    u = np.array([80.0, 90.0, 70.0, 2.0])
    p = PARAMS
    k_tot = (
        p["pump_head_coeff_m_per_lpm2"]
        + p["pipe_coeff_m_per_lpm2"]
        + p["valve_coeff_m_per_lpm2"] * (1 / 0.9**2 + 1 / 0.7**2)
    )
    ss = steady(u)
    assert ss[0] == pytest.approx(math.sqrt(p["head_shutoff_m"] * 0.64 / k_tot), rel=1e-9)
    model = new_model()
    model.reset(u, np.full(6, np.nan))
    for _ in range(100):
        y = model.step(u, 3.0)
    np.testing.assert_allclose(y, ss, rtol=1e-7)


def test_large_steps_agree_with_small_steps() -> None:
    """A 4 s step through a nearly closed valve matches eighty 0.05 s steps (no instability)."""
    u = np.array([100.0, 100.0, 6.0, 5.0])
    big, small = new_model(), new_model()
    for m in (big, small):
        m.reset(np.array([70.0, 100.0, 80.0, 1.6]), np.full(6, np.nan))
    y_big = big.step(u, 4.0)
    for _ in range(80):
        y_small = small.step(u, 0.05)
    np.testing.assert_allclose(y_big, y_small, rtol=1e-6, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    u=st.lists(st.floats(-50.0, 200.0), min_size=4, max_size=4),
    dt=st.floats(0.0, 5.0),
    start=st.lists(st.floats(-10.0, 120.0), min_size=6, max_size=6),
)
def test_finite_inputs_never_give_nan(u: list[float], dt: float, start: list[float]) -> None:
    """Any finite inputs, state and step size give finite outputs."""
    u[3] = min(max(u[3], 0.0), 5.0)  # heater power within its tag range
    start[2] = abs(start[2]) / 50.0  # a level, 0..2.4 m
    model = new_model()
    model.reset(np.array(u), np.array(start))
    for _ in range(3):
        assert np.all(np.isfinite(model.step(np.array(u), dt)))


def test_reset_takes_measured_states_and_fills_nan_from_steady_state() -> None:
    """Measured flow, level and fluid temperature set the state; a NaN motor temperature takes
    the steady state; all-NaN gives the steady state of the inputs."""
    u = np.array([70.0, 100.0, 80.0, 1.6])
    model = new_model()
    model.reset(u, np.array([30.0, np.nan, 0.75, 45.0, np.nan, np.nan]))
    np.testing.assert_allclose(model.state[:3], [30.0, 0.75, 45.0])
    assert PARAMS["ambient_temp_c"] < model.state[3] < 120.0
    model.reset(u, np.full(6, np.nan))
    np.testing.assert_allclose(model.state[[0, 2, 3]], steady(u)[[0, 3, 5]], rtol=1e-9)


def test_wrong_shapes_are_model_errors() -> None:
    """Inputs of the wrong length are refused with ModelError."""
    with pytest.raises(ModelError, match="inputs"):
        MODEL.step(np.zeros(3), 0.1)


def test_true_plant_is_a_few_percent_off_the_design() -> None:
    """The plant's physics differ from the nominal parameters, but by at most 5 %."""
    true = dataclasses.asdict(PlantParams())
    offsets = [abs(true[n] / PARAMS[n] - 1.0) for n in PARAM_NAMES]
    assert max(offsets) <= 0.05 + 1e-9
    assert sum(o > 0.005 for o in offsets) >= 8


def test_model_tracks_the_plant_in_normal_operation() -> None:
    """Driven open-loop by the measured inputs, the model stays within the stated bounds."""
    ts, data = simulate(900.0, seed=3)
    u = np.stack([data[n] for n in INPUT_NAMES], axis=1)
    y = np.stack([data[n] for n in OUTPUT_NAMES], axis=1)
    model = new_model()
    model.reset(u[0], y[0])
    pred = np.empty_like(y)
    pred[0] = y[0]
    for i in range(1, len(ts)):
        pred[i] = model.step(u[i - 1], float(ts[i] - ts[i - 1]))
    err = np.abs(y - pred)
    rms = np.sqrt(np.mean((y - pred) ** 2, axis=0))
    col = {n: i for i, n in enumerate(OUTPUT_NAMES)}
    assert rms[col["flow"]] < 1.0
    assert rms[col["pressure"]] < 0.05
    assert rms[col["level"]] < 0.005
    assert rms[col["motor_current"]] < 0.1
    assert err[:, col["fluid_temp"]].max() < 0.5
    assert err[:, col["motor_temp"]].max() < 1.0
