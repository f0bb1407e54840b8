"""The water-circulation loop of the rig, authored through the engine's API: the built-in model.

States: flow Q (l/min), tank level h (m), fluid temperature T (degC), motor temperature Tm
(degC). Inputs: pump speed command (%), inlet and outlet valve positions (%), heater power
(kW). With s the speed fraction and v the valve openings (floored at 0.05):

    pump head      H     = H0 s^2 - kq Q|Q|
    system head    H_sys = Q|Q| (k_pipe + k_v / v_in^2 + k_v / v_out^2)
    flow           L dQ/dt = H - H_sys
    level          dh/dt = 0                                      (closed loop)
    shaft power    P_sh  = rho g Q H / eta + P_mech s^2
    electric       P_el  = P_sh + P_iron s + R I^2,  I = P_el / (V pf)   (solved for I)
    fluid          rho cp (A h + V_pipe) dT/dt = P_heater + P_sh - UA (T - T_amb)
    motor body     C_m dTm/dt = R I^2 + P_iron s - (Tm - T_amb) / R_th
    pressure       p = rho g (h + H) / 1e5   (bar gauge, after the pump)

Parameters are read as p[NAME] with the index constants below; their values, units and
ranges are in water_loop.toml. Divisions by parameters are written as products with the
reciprocal (`x * (1.0 / p[L])`): a term of p and u alone is computed once per variant and
step by the compiled ensemble, where a division by a parameter would be repeated in every
derivative evaluation (13 per step with two RK4 sub-steps and the stiffness estimate).
"""

from __future__ import annotations

import math

from models.base import F64

STATES = ("flow", "level", "fluid_temp", "motor_temp")
INPUTS = ("pump_speed", "valve_in", "valve_out", "heater_power")
OUTPUTS = ("flow", "pressure", "level", "fluid_temp", "motor_current", "motor_temp")
PARAMS = (
    "head_shutoff_m",
    "pump_head_coeff_m_per_lpm2",
    "pipe_coeff_m_per_lpm2",
    "valve_coeff_m_per_lpm2",
    "inertance_m_s_per_lpm",
    "pump_efficiency_frac",
    "mech_loss_w",
    "iron_loss_w",
    "winding_resistance_ohm",
    "supply_voltage_v",
    "power_factor",
    "tank_area_m2",
    "pipe_volume_m3",
    "level_nominal_m",
    "heat_loss_w_per_k",
    "ambient_temp_c",
    "motor_heat_capacity_j_per_k",
    "motor_thermal_resistance_k_per_w",
    "density_kg_per_m3",
    "specific_heat_j_per_kg_k",
)
H0 = PARAMS.index("head_shutoff_m")
KQ = PARAMS.index("pump_head_coeff_m_per_lpm2")
KPIPE = PARAMS.index("pipe_coeff_m_per_lpm2")
KV = PARAMS.index("valve_coeff_m_per_lpm2")
L = PARAMS.index("inertance_m_s_per_lpm")
ETA = PARAMS.index("pump_efficiency_frac")
PMECH = PARAMS.index("mech_loss_w")
PIRON = PARAMS.index("iron_loss_w")
RW = PARAMS.index("winding_resistance_ohm")
V = PARAMS.index("supply_voltage_v")
PF = PARAMS.index("power_factor")
AREA = PARAMS.index("tank_area_m2")
VPIPE = PARAMS.index("pipe_volume_m3")
LEVEL = PARAMS.index("level_nominal_m")
UA = PARAMS.index("heat_loss_w_per_k")
TAMB = PARAMS.index("ambient_temp_c")
CM = PARAMS.index("motor_heat_capacity_j_per_k")
RTH = PARAMS.index("motor_thermal_resistance_k_per_w")
RHO = PARAMS.index("density_kg_per_m3")
CP = PARAMS.index("specific_heat_j_per_kg_k")

G = 9.81
VALVE_MIN = 0.05


def clip(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else (hi if v > hi else v)


def k_system(u: F64, p: F64) -> float:
    """Head loss coefficient of pipe and both valves."""
    vin = clip(u[1] / 100.0, VALVE_MIN, 1.0)
    vout = clip(u[2] / 100.0, VALVE_MIN, 1.0)
    return float(p[KPIPE] + p[KV] / (vin * vin) + p[KV] / (vout * vout))


def electric(q: float, s: float, head: float, p: F64) -> tuple[float, float]:
    """(shaft power W, current A) at flow q, speed fraction s and pump head."""
    # rho g Q H / eta with Q in l/min; the factor of p alone is computed once per step.
    p_hyd_per_eta = p[RHO] * (G / 60000.0) * (1.0 / p[ETA])
    p_shaft = p_hyd_per_eta * max(q, 0.0) * max(head, 0.0) + p[PMECH] * s * s
    p_fixed = p_shaft + p[PIRON] * s
    vpf = p[V] * p[PF]
    disc = vpf * vpf - 4.0 * p[RW] * p_fixed
    # Smaller root of R I^2 - V pf I + P = 0; beyond the pull-out point the current saturates.
    half_per_r = 0.5 / p[RW]
    current = (vpf - math.sqrt(disc)) * half_per_r if disc > 0.0 else vpf * half_per_r
    return p_shaft, current


def derivative(x: F64, u: F64, p: F64, dx: F64) -> None:
    s = clip(u[0] / 100.0, 0.0, 1.0)
    heater_w = max(u[3], 0.0) * 1000.0
    q = x[0]
    qq = q * abs(q)
    head = p[H0] * s * s - p[KQ] * qq
    dx[0] = (head - qq * k_system(u, p)) * (1.0 / p[L])
    dx[1] = 0.0
    p_shaft, current = electric(q, s, head, p)
    cf = p[RHO] * p[CP] * (p[AREA] * max(x[1], 0.0) + p[VPIPE])
    dx[2] = (heater_w + p_shaft - p[UA] * (x[2] - p[TAMB])) / cf
    loss = p[RW] * current * current + p[PIRON] * s
    dx[3] = (loss - (x[3] - p[TAMB]) * (1.0 / p[RTH])) * (1.0 / p[CM])


def output(x: F64, u: F64, p: F64, y: F64) -> None:
    s = clip(u[0] / 100.0, 0.0, 1.0)
    q = x[0]
    head = p[H0] * s * s - p[KQ] * q * abs(q)
    _p_shaft, current = electric(q, s, head, p)
    y[0] = q
    y[1] = p[RHO] * G * (x[1] + head) / 1e5
    y[2] = x[1]
    y[3] = x[2]
    y[4] = current
    y[5] = x[3]


def initial(u: F64, y_meas: F64, p: F64, x: F64) -> None:
    """Measured states where known; otherwise the analytic steady state at that level."""
    s = clip(u[0] / 100.0, 0.0, 1.0)
    k_tot = p[KQ] + k_system(u, p)
    q = math.sqrt(p[H0] * s * s / k_tot)
    head = p[H0] * s * s - p[KQ] * q * q
    p_shaft, current = electric(q, s, head, p)
    level = y_meas[2] if math.isfinite(y_meas[2]) else p[LEVEL]
    x[0] = y_meas[0] if math.isfinite(y_meas[0]) else q
    x[1] = level
    steady_t = p[TAMB] + (max(u[3], 0.0) * 1000.0 + p_shaft) / p[UA]
    x[2] = y_meas[3] if math.isfinite(y_meas[3]) else steady_t
    steady_tm = p[TAMB] + p[RTH] * (p[RW] * current * current + p[PIRON] * s)
    x[3] = y_meas[5] if math.isfinite(y_meas[5]) else steady_tm


def max_rate(x: F64, u: F64, p: F64) -> float:
    """An upper bound (1/s) of the fastest local rate: the largest Gershgorin row sum of the
    Jacobian, written out, with 5 % to spare; it replaces n finite-difference derivatives per
    step. The flow row, 2 |Q| (kq + k_sys) / L, is exact and dominates; the thermal rows
    (~1e-3 /s) are bounded cheaply: C_f >= rho cp V_pipe, 2 R I <= V pf."""
    s = clip(u[0] / 100.0, 0.0, 1.0)
    q = x[0]
    kq = p[KQ]
    head = p[H0] * s * s - kq * q * abs(q)
    flow_row = 2.0 * abs(q) * (kq + k_system(u, p)) * (1.0 / p[L])
    c_e = p[RHO] * (G / 60000.0) * (1.0 / p[ETA])
    p_shaft = c_e * max(q, 0.0) * max(head, 0.0) + p[PMECH] * s * s
    dpower = c_e * (abs(head) + 2.0 * kq * q * q)  # >= |d P_shaft / dQ|
    inv_cf = 1.0 / (p[RHO] * p[CP] * p[VPIPE])  # >= 1 / C_f (level >= 0)
    heat = max(u[3], 0.0) * 1000.0 + p_shaft + p[UA] * abs(x[2] - p[TAMB])
    fluid_row = (dpower + p[UA] + heat * p[RHO] * p[CP] * p[AREA] * inv_cf) * inv_cf
    vpf = p[V] * p[PF]
    disc = vpf * vpf - 4.0 * p[RW] * (p_shaft + p[PIRON] * s)
    # 2 R I dI/dQ <= V pf dP/dQ / sqrt(disc); well below the pull-out point
    # (disc >= (V pf)^2 / 4) that is <= 2 dP/dQ, without a square root.
    if disc >= 0.25 * vpf * vpf:
        di = 2.0 * dpower
    else:
        # beyond the pull-out point the current saturates: it no longer depends on Q
        di = vpf * dpower / math.sqrt(disc) if disc > 0.0 else 0.0
    motor_row = (di + 1.0 / p[RTH]) * (1.0 / p[CM])
    return float(1.05 * max(flow_row, fluid_row, motor_row))
