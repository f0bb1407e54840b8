"""A hand-tuned numba ensemble kernel of the water loop: what the same equations cost at best.

Owns nothing the product runs. It shows how far the compiled ensemble can go when written
for the machine: the same equations as `models.process.units.water_loop` and the same
sub-stepping rule as `bench.loop_numpy` (that of the former hand-written kernel), but the
state of one variant kept in local scalars (no scratch arrays allocated per call), the terms
that depend only on inputs and parameters hoisted out of the RK4 stages, and divisions by
parameters turned into multiplications by reciprocals computed once per variant and step.
Results agree with `bench.loop_numpy` to rounding (checked by `bench.model_step`).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from models.process.kernels import MAX_SUBSTEPS
from models.process.units.water_loop import PARAMS, VALVE_MIN

# Columns of the (N, P) parameter matrix: the model file's PARAMS order, as the engine's.
P_INDEX: dict[str, int] = {name: i for i, name in enumerate(PARAMS)}

F64 = npt.NDArray[np.float64]
G = 9.81
_H0 = P_INDEX["head_shutoff_m"]
_KQ = P_INDEX["pump_head_coeff_m_per_lpm2"]
_KPIPE = P_INDEX["pipe_coeff_m_per_lpm2"]
_KV = P_INDEX["valve_coeff_m_per_lpm2"]
_L = P_INDEX["inertance_m_s_per_lpm"]
_ETA = P_INDEX["pump_efficiency_frac"]
_PMECH = P_INDEX["mech_loss_w"]
_PIRON = P_INDEX["iron_loss_w"]
_RW = P_INDEX["winding_resistance_ohm"]
_V = P_INDEX["supply_voltage_v"]
_PF = P_INDEX["power_factor"]
_AREA = P_INDEX["tank_area_m2"]
_VPIPE = P_INDEX["pipe_volume_m3"]
_UA = P_INDEX["heat_loss_w_per_k"]
_TAMB = P_INDEX["ambient_temp_c"]
_CM = P_INDEX["motor_heat_capacity_j_per_k"]
_RTH = P_INDEX["motor_thermal_resistance_k_per_w"]
_RHO = P_INDEX["density_kg_per_m3"]
_CP = P_INDEX["specific_heat_j_per_kg_k"]


@numba.njit(cache=True, inline="always")
def _rates(  # numba kernel: plain positional scalars
    q: float, temp: float, tm: float, c: F64
) -> tuple[float, float, float, float]:
    """(dQ, dT, dTm, current) from the hoisted per-variant constants in c."""
    qq = q * abs(q)
    head = c[0] - c[1] * qq
    dq = (head - qq * c[2]) * c[3]
    p_shaft = c[4] * max(q, 0.0) * max(head, 0.0) + c[5]
    disc = c[6] - c[7] * (p_shaft + c[8])
    current = (c[9] - math.sqrt(disc)) * c[10] if disc > 0.0 else c[9] * c[10]
    dt_fluid = (c[11] + p_shaft - c[12] * (temp - c[13])) * c[14]
    loss = c[15] * current * current + c[8]
    dtm = (loss - (tm - c[13]) * c[16]) * c[17]
    return dq, dt_fluid, dtm, current


@numba.njit(cache=True)
def ensemble_advance_scalar(  # noqa: PLR0917  # numba kernel: plain positional arrays
    x: F64, u: F64, p: F64, dt: float, substep: float, y: F64
) -> None:
    """Advance every variant (rows of x (N, 4), p (N, P), y (N, 6)) by dt, as NumpyLoop does."""
    s = min(max(u[0] / 100.0, 0.0), 1.0)
    vin = min(max(u[1] / 100.0, VALVE_MIN), 1.0)
    vout = min(max(u[2] / 100.0, VALVE_MIN), 1.0)
    heater_w = max(u[3], 0.0) * 1000.0
    c = np.empty(18)
    for i in range(x.shape[0]):
        pi = p[i]
        ksys = pi[_KPIPE] + pi[_KV] / (vin * vin) + pi[_KV] / (vout * vout)
        vpf = pi[_V] * pi[_PF]
        level = x[i, 1]
        c[0] = pi[_H0] * s * s
        c[1] = pi[_KQ]
        c[2] = ksys
        c[3] = 1.0 / pi[_L]
        c[4] = pi[_RHO] * G / 60000.0 / pi[_ETA]
        c[5] = pi[_PMECH] * s * s
        c[6] = vpf * vpf
        c[7] = 4.0 * pi[_RW]
        c[8] = pi[_PIRON] * s
        c[9] = vpf
        c[10] = 1.0 / (2.0 * pi[_RW])
        c[11] = heater_w
        c[12] = pi[_UA]
        c[13] = pi[_TAMB]
        c[14] = 1.0 / (pi[_RHO] * pi[_CP] * (pi[_AREA] * max(level, 0.0) + pi[_VPIPE]))
        c[15] = pi[_RW]
        c[16] = 1.0 / pi[_RTH]
        c[17] = 1.0 / pi[_CM]
        q, temp, tm = x[i, 0], x[i, 2], x[i, 3]
        k_tot = pi[_KQ] + ksys
        q_ss = math.sqrt(c[0] / k_tot)
        tau = pi[_L] / (2.0 * k_tot * max(abs(q), q_ss) + 1e-12)
        h = min(substep, tau)
        n = min(max(math.ceil(dt / h), 0), MAX_SUBSTEPS) if dt > 0.0 else 0
        if n > 0:
            h = dt / n
            for _ in range(n):
                a1, b1, c1, _i1 = _rates(q, temp, tm, c)
                a2, b2, c2, _i2 = _rates(
                    q + 0.5 * h * a1, temp + 0.5 * h * b1, tm + 0.5 * h * c1, c
                )
                a3, b3, c3, _i3 = _rates(
                    q + 0.5 * h * a2, temp + 0.5 * h * b2, tm + 0.5 * h * c2, c
                )
                a4, b4, c4, _i4 = _rates(q + h * a3, temp + h * b3, tm + h * c3, c)
                q += h / 6.0 * (a1 + 2.0 * a2 + 2.0 * a3 + a4)
                temp += h / 6.0 * (b1 + 2.0 * b2 + 2.0 * b3 + b4)
                tm += h / 6.0 * (c1 + 2.0 * c2 + 2.0 * c3 + c4)
        x[i, 0], x[i, 2], x[i, 3] = q, temp, tm
        head = c[0] - c[1] * q * abs(q)
        _dq, _dtf, _dtm, current = _rates(q, temp, tm, c)
        y[i, 0] = q
        y[i, 1] = pi[_RHO] * G * (level + head) / 1e5
        y[i, 2] = level
        y[i, 3] = temp
        y[i, 4] = current
        y[i, 5] = tm
