"""The Digital Original: equations vs an independent reference, stability, reset, param files."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.plant import PlantParams, simulate
from hil.tags import BY_NAME
from models.base import ModelError
from models.process import INPUT_NAMES, OUTPUT_NAMES, LoopModel
from models.process.params import DEFAULT_PATH, PARAM_NAMES

MODEL = LoopModel.load()


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
    p = {n: MODEL.params[n] for n in PARAM_NAMES}
    u0 = np.array([70.0, 100.0, 80.0, 1.6])
    u1 = [90.0, 90.0, 60.0, 4.0]
    model = LoopModel.load()
    model.reset(u0, np.full(6, np.nan))
    x = list(model.state)
    h = 2e-4
    for _ in range(int(3.0 / h)):
        rates = _reference_rates(x, u1, p)
        x = [xi + h * ri for xi, ri in zip(x, rates, strict=True)]
    for _ in range(3):
        y = model.step(np.array(u1), 1.0)
    assert x[0] != pytest.approx(model.steady_state(u0)[0], abs=1.0)  # it really moved
    assert y[0] == pytest.approx(x[0], rel=1e-3)
    assert y[3] == pytest.approx(x[2], abs=1e-4)
    assert y[5] == pytest.approx(x[3], abs=1e-4)


def test_steady_state_is_analytic_and_a_fixed_point() -> None:
    """The steady state solves H = H_sys in closed form, and stepping leaves it unchanged."""
    u = np.array([80.0, 90.0, 70.0, 2.0])
    p = MODEL.params
    k_tot = (
        p["pump_head_coeff_m_per_lpm2"]
        + p["pipe_coeff_m_per_lpm2"]
        + p["valve_coeff_m_per_lpm2"] * (1 / 0.9**2 + 1 / 0.7**2)
    )
    ss = MODEL.steady_state(u)
    assert ss[0] == pytest.approx(math.sqrt(p["head_shutoff_m"] * 0.64 / k_tot), rel=1e-12)
    model = LoopModel.load()
    model.reset(u, np.full(6, np.nan))
    for _ in range(100):
        y = model.step(u, 3.0)
    np.testing.assert_allclose(y, ss, rtol=1e-7)


def test_large_steps_agree_with_small_steps() -> None:
    """A 4 s step through a nearly closed valve matches eighty 0.05 s steps (no instability)."""
    u = np.array([100.0, 100.0, 6.0, 5.0])
    big, small = LoopModel.load(), LoopModel.load()
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
    model = LoopModel.load()
    model.reset(np.array(u), np.array(start))
    for _ in range(3):
        assert np.all(np.isfinite(model.step(np.array(u), dt)))


def test_reset_takes_measured_states_and_fills_nan_from_steady_state() -> None:
    """Measured flow, level and temperatures set the state; NaN ones take the steady state."""
    u = np.array([70.0, 100.0, 80.0, 1.6])
    model = LoopModel.load()
    model.reset(u, np.array([30.0, np.nan, 0.75, 45.0, np.nan, np.nan]))
    ss = model.steady_state(u, level=0.75)
    np.testing.assert_allclose(model.state, [30.0, 0.75, 45.0, ss[5]])
    model.reset(u, np.full(6, np.nan))
    np.testing.assert_allclose(model.state[[0, 2, 3]], model.steady_state(u)[[0, 3, 5]])


def test_wrong_shapes_are_model_errors() -> None:
    """Inputs of the wrong length are refused with ModelError."""
    with pytest.raises(ModelError, match="inputs"):
        MODEL.step(np.zeros(3), 0.1)


def _write_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_PATH.read_text()
    assert old in text
    path = tmp_path / "loop.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("head_shutoff_m = {", "head_shutoff_metres = {", "params.head_shutoff_metres"),
        (
            "head_shutoff_m = { nominal = 32.0",
            "head_shutoff_m = { nominal = 99.0",
            "head_shutoff_m",
        ),
        ("power_factor = { nominal = 0.8", 'power_factor = { nominal = "0.8"', "power_factor"),
        ("tank_area_m2 = { nominal = 0.05", "tank_area_m2 = { nominal = true", "tank_area_m2"),
        ("substep_s = 0.05", "substep_s = 5.0", "model.substep_s"),
        ("range = [0.3, 1.0]", "range = [1.0, 0.3]", "power_factor.range"),
    ],
)
def test_bad_parameter_files_name_file_and_key(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    """Unknown keys, out-of-range values, wrong types and bad settings name the file and key."""
    path = _write_variant(tmp_path, old, new)
    with pytest.raises(ModelError) as info:
        LoopModel.load(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_missing_parameter_is_named(tmp_path: Path) -> None:
    """A parameter left out of the file is reported as missing, by name."""
    text = DEFAULT_PATH.read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("iron_loss_w")]
    path = tmp_path / "loop.toml"
    path.write_text("\n".join(lines))
    with pytest.raises(ModelError, match=r"params\.iron_loss_w: missing"):
        LoopModel.load(path)


def test_unreadable_file_is_a_model_error(tmp_path: Path) -> None:
    """A missing or non-TOML file is a ModelError naming the file."""
    with pytest.raises(ModelError, match="cannot read"):
        LoopModel.load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[params\n")
    with pytest.raises(ModelError, match="not valid TOML"):
        LoopModel.load(bad)


def test_true_plant_is_a_few_percent_off_the_design() -> None:
    """The plant's physics differ from the nominal parameters, but by at most 5 %."""
    true = dataclasses.asdict(PlantParams())
    offsets = [abs(true[n] / MODEL.params[n] - 1.0) for n in PARAM_NAMES]
    assert max(offsets) <= 0.05 + 1e-9
    assert sum(o > 0.005 for o in offsets) >= 8


def test_model_tracks_the_plant_in_normal_operation() -> None:
    """Driven open-loop by the measured inputs, the model stays within the stated bounds."""
    ts, data = simulate(900.0, seed=3)
    u = np.stack([data[n] for n in INPUT_NAMES], axis=1)
    y = np.stack([data[n] for n in OUTPUT_NAMES], axis=1)
    model = LoopModel.load()
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
