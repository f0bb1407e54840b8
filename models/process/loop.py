"""The Digital Original of the water-circulation loop: a first-principles model, numba-compiled.

This module owns the model equations and their integration; the parameter file format lives
in `models.process.params`. The same structure drives the simulated plant in `hil.plant`,
which adds what a design model does not know (parameter offsets, sensor noise and lags,
actuator dynamics, faults).

States x: flow Q (l/min), tank level h (m), fluid temperature T (degC), motor temperature
Tm (degC). Inputs u: pump speed command (%), inlet and outlet valve positions (%), heater
power (kW). With s the speed fraction and v the valve openings (floored at 0.05):

    pump head      H     = H0 s^2 - kq Q|Q|
    system head    H_sys = Q|Q| (k_pipe + k_v / v_in^2 + k_v / v_out^2)
    flow           L dQ/dt = H - H_sys                           (water column inertia)
    level          dh/dt = 0                                      (closed loop, no leak)
    shaft power    P_sh  = rho g Q H / eta + P_mech s^2
    electric       P_el  = P_sh + P_iron s + R I^2,  I = P_el / (V pf)   (solved for I)
    fluid          rho cp (A h + V_pipe) dT/dt = P_heater + P_sh - UA (T - T_amb)
    motor body     C_m dTm/dt = R I^2 + P_iron s - (Tm - T_amb) / R_th
    pressure       p = rho g (h + H) / 1e5   (bar gauge, after the pump)

All shaft power ends up as heat in the water. The derivative and an RK4 integrator are
compiled with `numba.njit(cache=True)`; `step` makes one compiled call that sub-steps
internally (no longer than `substep_s`, shorter when the flow dynamics get stiff), so any dt
up to a few seconds is stable.
"""

from __future__ import annotations

import math
from pathlib import Path

import numba
import numpy as np

from models.base import F64, ModelError
from models.process.params import P_INDEX, LoopParams, load_params

INPUT_NAMES: tuple[str, ...] = ("pump_speed", "valve_in", "valve_out", "heater_power")
OUTPUT_NAMES: tuple[str, ...] = (
    "flow",
    "pressure",
    "level",
    "fluid_temp",
    "motor_current",
    "motor_temp",
)
STATE_NAMES: tuple[str, ...] = ("flow", "level", "fluid_temp", "motor_temp")
# Used by `reset` for inputs not known yet (the usual operating point).
NOMINAL_INPUTS = np.array([70.0, 100.0, 80.0, 1.6])

G = 9.81
VALVE_MIN = 0.05
MAX_SUBSTEPS = 100_000

# Parameter vector indices, compile-time constants for numba.
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


@numba.njit(cache=True)
def _clip(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else (hi if v > hi else v)


@numba.njit(cache=True)
def _k_system(u: F64, p: F64) -> float:
    vin = _clip(u[1] / 100.0, VALVE_MIN, 1.0)
    vout = _clip(u[2] / 100.0, VALVE_MIN, 1.0)
    return float(p[_KPIPE] + p[_KV] / (vin * vin) + p[_KV] / (vout * vout))


@numba.njit(cache=True)
def _electric(q: float, s: float, head: float, p: F64) -> tuple[float, float, float]:
    """(shaft power W, electric power W, current A) at flow q, speed fraction s, pump head."""
    p_hyd = p[_RHO] * G * (max(q, 0.0) / 60000.0) * max(head, 0.0)
    p_shaft = p_hyd / p[_ETA] + p[_PMECH] * s * s
    p_fixed = p_shaft + p[_PIRON] * s
    vpf = p[_V] * p[_PF]
    disc = vpf * vpf - 4.0 * p[_RW] * p_fixed
    # Smaller root of R I^2 - V pf I + P = 0; beyond the pull-out point the current saturates.
    current = (vpf - math.sqrt(disc)) / (2.0 * p[_RW]) if disc > 0.0 else vpf / (2.0 * p[_RW])
    return p_shaft, vpf * current, current


@numba.njit(cache=True)
def _deriv(x: F64, u: F64, p: F64, dx: F64) -> None:
    s = _clip(u[0] / 100.0, 0.0, 1.0)
    heater_w = max(u[3], 0.0) * 1000.0
    q = x[0]
    qq = q * abs(q)
    head = p[_H0] * s * s - p[_KQ] * qq
    dx[0] = (head - qq * _k_system(u, p)) / p[_L]
    dx[1] = 0.0
    p_shaft, _p_el, current = _electric(q, s, head, p)
    cf = p[_RHO] * p[_CP] * (p[_AREA] * max(x[1], 0.0) + p[_VPIPE])
    dx[2] = (heater_w + p_shaft - p[_UA] * (x[2] - p[_TAMB])) / cf
    loss = p[_RW] * current * current + p[_PIRON] * s
    dx[3] = (loss - (x[3] - p[_TAMB]) / p[_RTH]) / p[_CM]


@numba.njit(cache=True)
def _outputs(x: F64, u: F64, p: F64, y: F64) -> None:
    s = _clip(u[0] / 100.0, 0.0, 1.0)
    q = x[0]
    head = p[_H0] * s * s - p[_KQ] * q * abs(q)
    _p_shaft, _p_el, current = _electric(q, s, head, p)
    y[0] = q
    y[1] = p[_RHO] * G * (x[1] + head) / 1e5
    y[2] = x[1]
    y[3] = x[2]
    y[4] = current
    y[5] = x[3]


@numba.njit(cache=True)
def _advance(x: F64, u: F64, p: F64, dt: float, substep: float, y: F64) -> None:  # noqa: PLR0917  # numba kernel: plain positional arrays
    """Integrate x in place over dt with RK4 sub-steps; write the outputs after the step to y."""
    s = _clip(u[0] / 100.0, 0.0, 1.0)
    k_tot = p[_KQ] + _k_system(u, p)
    q_ss = math.sqrt(p[_H0] * s * s / k_tot)
    # Linearised flow time constant L / (2 k Q): keep h below it, whatever the state.
    tau = p[_L] / (2.0 * k_tot * max(abs(x[0]), q_ss) + 1e-12)
    h = min(substep, tau)
    n = math.ceil(dt / h) if dt > 0.0 else 0
    n = min(max(n, 0), MAX_SUBSTEPS)
    if n > 0:
        h = dt / n
        k1 = np.empty(4)
        k2 = np.empty(4)
        k3 = np.empty(4)
        k4 = np.empty(4)
        xt = np.empty(4)
        for _ in range(n):
            _deriv(x, u, p, k1)
            for i in range(4):
                xt[i] = x[i] + 0.5 * h * k1[i]
            _deriv(xt, u, p, k2)
            for i in range(4):
                xt[i] = x[i] + 0.5 * h * k2[i]
            _deriv(xt, u, p, k3)
            for i in range(4):
                xt[i] = x[i] + h * k3[i]
            _deriv(xt, u, p, k4)
            for i in range(4):
                x[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])
    _outputs(x, u, p, y)


@numba.njit(cache=True)
def _steady_state(u: F64, p: F64, level: float, x: F64) -> None:
    s = _clip(u[0] / 100.0, 0.0, 1.0)
    k_tot = p[_KQ] + _k_system(u, p)
    q = math.sqrt(p[_H0] * s * s / k_tot)
    head = p[_H0] * s * s - p[_KQ] * q * q
    p_shaft, _p_el, current = _electric(q, s, head, p)
    x[0] = q
    x[1] = level
    x[2] = p[_TAMB] + (max(u[3], 0.0) * 1000.0 + p_shaft) / p[_UA]
    x[3] = p[_TAMB] + p[_RTH] * (p[_RW] * current * current + p[_PIRON] * s)


class LoopModel:
    """The loop's Digital Original (implements `models.base.ProcessModel`).

    Inputs `INPUT_NAMES`, outputs `OUTPUT_NAMES`. Call `reset` once before stepping (the
    constructor starts from the nominal steady state). Inputs are assumed finite (the caller
    holds the last good value); for finite inputs the outputs are always finite.
    """

    def __init__(self, params: LoopParams) -> None:
        self._params = params
        self._p = np.ascontiguousarray(params.values, dtype=np.float64)
        self._x = np.zeros(4)
        self._y = np.zeros(len(OUTPUT_NAMES))
        self._substep = params.substep_s
        self._tau = np.array(params.observer_s, dtype=np.float64)
        self._n_obs = np.zeros(4)
        self.reset(NOMINAL_INPUTS.copy(), np.full(len(OUTPUT_NAMES), np.nan))
        # Warm the JIT (or load it from the cache) now, not on the first tick.
        self.step(NOMINAL_INPUTS.copy(), 0.0)

    @classmethod
    def load(cls, path: str | Path | None = None) -> LoopModel:
        """Load and validate a parameter file (default: the shipped `loop.toml`)."""
        return cls(load_params(path))

    @property
    def input_names(self) -> tuple[str, ...]:
        return INPUT_NAMES

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES

    @property
    def params(self) -> LoopParams:
        return self._params

    @property
    def state(self) -> F64:
        """A copy of the state vector (`STATE_NAMES` order)."""
        return self._x.copy()

    def _check(self, arr: F64, n: int, what: str) -> F64:
        a = np.asarray(arr, dtype=np.float64)
        if a.shape != (n,):
            raise ModelError(f"{what}: expected shape ({n},), got {a.shape}")
        return np.ascontiguousarray(a)

    def steady_state(self, inputs: F64, level: float | None = None) -> F64:
        """The outputs the model settles to with `inputs` held (NaN inputs: nominal)."""
        u = self._check(inputs, len(INPUT_NAMES), "inputs")
        u = np.where(np.isfinite(u), u, NOMINAL_INPUTS)
        x = np.empty(4)
        lvl = self._params["level_nominal_m"] if level is None else level
        _steady_state(u, self._p, lvl, x)
        y = np.empty(len(OUTPUT_NAMES))
        _outputs(x, u, self._p, y)
        return y

    def reset(self, inputs: F64, outputs: F64) -> None:
        """Set the states from measured outputs; NaN outputs take the inputs' steady state."""
        u = self._check(inputs, len(INPUT_NAMES), "inputs")
        y = self._check(outputs, len(OUTPUT_NAMES), "outputs")
        u = np.where(np.isfinite(u), u, NOMINAL_INPUTS)
        level = y[2] if math.isfinite(y[2]) else self._params["level_nominal_m"]
        ss = np.empty(4)
        _steady_state(u, self._p, level, ss)
        measured = np.array([y[0], level, y[3], y[5]])
        self._x = np.where(np.isfinite(measured), measured, ss)
        self._n_obs = np.zeros(4)
        _outputs(self._x, u, self._p, self._y)

    def observe(self, outputs: F64, dt: float) -> None:
        """Pull the states towards measured outputs (NaN = not measured) over `dt` seconds.

        A first-order output-injection observer: state i moves by a fraction of its distance to
        the measurement, min(1, dt / tau_i) with tau_i from the parameter file (0 = not
        observed). Right after a reset the fraction is 1 / (n + 1) while that is larger (n =
        measurements since the reset), so the state starts as the running mean of the
        measurements instead of inheriting the noise of the single sample it was reset from.
        """
        y = self._check(outputs, len(OUTPUT_NAMES), "outputs")
        m = y[[0, 2, 3, 5]]
        seen = np.isfinite(m)
        on = (self._tau > 0) & seen
        self._n_obs += on
        gain = np.maximum(dt / np.where(on, self._tau, np.inf), 1.0 / (self._n_obs + 1.0))
        gain = np.where(on, np.minimum(1.0, gain), 0.0)
        self._x += gain * (np.where(seen, m, self._x) - self._x)

    def step(self, inputs: F64, dt: float) -> F64:
        """Advance by `dt` seconds with `inputs` held; return the predicted outputs."""
        u = np.ascontiguousarray(inputs, dtype=np.float64)
        if u.shape != (len(INPUT_NAMES),):
            raise ModelError(f"inputs: expected shape ({len(INPUT_NAMES)},), got {u.shape}")
        _advance(self._x, u, self._p, float(dt), self._substep, self._y)
        return self._y.copy()
