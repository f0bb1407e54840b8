"""The physical truth of the rig: a lab-scale water-circulation loop, with its PLC and operator.

This module owns the plant physics, its sensors and actuators, and the offline fast path
`simulate()`. It composes the PLC control logic (`hil.control`), the operator (`hil.scenario`)
and the fault state (`hil.faults`); it knows nothing about the PLC servers (`hil.rig`).

Equipment: tank -> inlet valve -> centrifugal pump on a VFD -> flow meter -> heater -> outlet
valve -> tank, losing heat to ambient. The equations are those of the Digital Original
(`models/process/units/water_loop.py`, see its docstring), written again here from first
principles so that the two stay independent; the plant adds what a design model does not know:

- parameters a few percent off the design values (`PlantParams` defaults vs `water_loop.toml`);
- actuator dynamics: VFD speed ramp, valve travel rate, heater element lag;
- sensors: first-order lags (flow meter 0.3 s, thermocouple 2 s, pressure 0.1 s) and white
  noise; the drive's values are quantised exactly as its Modbus registers encode them;
- a tank leak (Torricelli outflow), pump wear (head and efficiency loss, more vibration) and
  sensor faults (thermocouple drift, frozen flow meter), from `hil.faults.ActiveFaults`;
- motor slip under load, pump vibration (rises with speed and wear), an energy counter.

The plant is stepped with explicit Euler at 0.05 s (the flow equation sub-stepped when a
nearly closed valve makes it stiff). `simulate` runs about 100x faster than real time or more.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from hil.control import Controller
from hil.faults import PHYSICS_KINDS, ActiveFaults, FaultSchedule, ParamValue, parse_fault
from hil.scenario import INITIAL, Operator, Scenario
from hil.tags import TAGS, register_count

G = 9.81
VALVE_MIN = 0.05
DT = 0.05
TAG_NAMES: tuple[str, ...] = tuple(t.name for t in TAGS)

# Noise channels, one column each in the pre-drawn noise block.
_N_FLOW, _N_PRES, _N_LEVEL, _N_TEMP, _N_CUR, _N_MTEMP, _N_POW, _N_VIB = range(8)
_NOISE_BLOCK = 4096


@dataclass(frozen=True, slots=True)
class PlantParams:
    """The true plant. Physics fields mean what `water_loop.toml`'s parameters mean, a few %
    off them."""

    head_shutoff_m: float = 32.8
    pump_head_coeff_m_per_lpm2: float = 0.00205
    pipe_coeff_m_per_lpm2: float = 0.0078
    valve_coeff_m_per_lpm2: float = 0.00175
    inertance_m_s_per_lpm: float = 0.48
    pump_efficiency_frac: float = 0.44
    mech_loss_w: float = 42.0
    iron_loss_w: float = 79.0
    winding_resistance_ohm: float = 6.1
    supply_voltage_v: float = 231.0
    power_factor: float = 0.8
    tank_area_m2: float = 0.051
    pipe_volume_m3: float = 0.0052
    level_nominal_m: float = 0.8
    heat_loss_w_per_k: float = 101.5
    ambient_temp_c: float = 22.0
    motor_heat_capacity_j_per_k: float = 4600.0
    motor_thermal_resistance_k_per_w: float = 0.605
    density_kg_per_m3: float = 998.0
    specific_heat_j_per_kg_k: float = 4182.0
    # What the design model does not know.
    vfd_ramp_per_s: float = 0.5
    valve_rate_pct_per_s: float = 10.0
    heater_lag_s: float = 5.0
    flow_lag_s: float = 0.3
    temp_lag_s: float = 2.0
    pressure_lag_s: float = 0.1
    rated_speed_rpm: float = 3000.0
    rated_slip_frac: float = 0.04
    rated_shaft_w: float = 370.0
    vibration_base_g: float = 0.18
    vibration_speed_g: float = 0.10
    vibration_wear_gain: float = 1.5
    noise_flow_lpm: float = 0.25
    noise_pressure_bar: float = 0.008
    noise_level_m: float = 0.002
    noise_temp_k: float = 0.03
    noise_current_a: float = 0.015
    noise_motor_temp_k: float = 0.08
    noise_power_kw: float = 0.004
    noise_vibration_g: float = 0.006
    initial_energy_wh: float = 12_000.0


_QUANT = {
    t.name: (register_count(t.reg_type) == 1 or t.reg_type in ("int32", "uint32"), t.scale)
    for t in TAGS
    if t.plc == "drive"
}


def quantise(name: str, value: float) -> float:
    """`value` as the drive PLC's register encoding would carry it (others unchanged)."""
    q = _QUANT.get(name)
    if q is None or not math.isfinite(value):
        return value
    is_int, scale = q
    if is_int:
        return round(value / scale) * scale if scale != 1.0 else float(round(value))
    return float(np.float32(value))


class Plant:
    """The loop with its PLC logic and operator; `step(dt)` advances everything.

    With `scenario=False` the operator's settings stay where `set_operator` puts them.
    """

    def __init__(
        self, seed: int = 0, params: PlantParams | None = None, *, scenario: bool = True
    ) -> None:
        self.params = p = params or PlantParams()
        self.sim_time = 0.0
        self.faults = ActiveFaults()
        self._rng = np.random.default_rng([seed, 0x91A])
        self._noise = self._rng.standard_normal((_NOISE_BLOCK, 8))
        self._noise_i = 0
        self._scenario = Scenario(seed) if scenario else None
        self._op: Operator = INITIAL
        self.controller = Controller.default()
        # Start at the steady operating point of the initial operator settings.
        op = self._op
        self._vin, self._vout = op.valve_in / 100.0, op.valve_out / 100.0
        k_tot = p.pump_head_coeff_m_per_lpm2 + self._k_system()
        self._s = min(1.0, op.flow_sp * math.sqrt(k_tot / p.head_shutoff_m))
        self._q = math.sqrt(p.head_shutoff_m * self._s**2 / k_tot)
        self._h = p.level_nominal_m
        self._algebra()
        heater_w = max(0.0, p.heat_loss_w_per_k * (op.temp_sp - p.ambient_temp_c) - self._p_shaft)
        self._heater_w = heater_w
        self._t = p.ambient_temp_c + (heater_w + self._p_shaft) / p.heat_loss_w_per_k
        loss = p.winding_resistance_ohm * self._current**2 + p.iron_loss_w * self._s
        self._tm = p.ambient_temp_c + p.motor_thermal_resistance_k_per_w * loss
        self.controller.reset(100.0 * self._s, heater_w / 1000.0)
        self._speed_cmd, self._heater_cmd = 100.0 * self._s, heater_w / 1000.0
        self._flow_f, self._temp_f, self._pres_f = self._q, self._t, self._pressure
        self._stuck_value: float | None = None
        self._energy_wh = p.initial_energy_wh

    # -- operator and faults -------------------------------------------------------------

    def set_operator(self, **settings: float) -> None:
        """Change setpoints/valves (`flow_sp`, `temp_sp`, `valve_in`, `valve_out`) by hand."""
        self._op = replace(self._op, **settings)

    @property
    def operator(self) -> Operator:
        return self._op

    def inject(self, kind: str, **params: ParamValue) -> None:
        """Start a physics fault now (see `hil.faults.FAULT_KINDS`)."""
        self.faults.apply(kind, params)

    def clear_faults(self) -> None:
        self.faults.clear()
        self._stuck_value = None

    # -- physics -------------------------------------------------------------------------

    def _k_system(self) -> float:
        p = self.params
        vin, vout = max(self._vin, VALVE_MIN), max(self._vout, VALVE_MIN)
        kv = p.valve_coeff_m_per_lpm2
        return p.pipe_coeff_m_per_lpm2 + kv / (vin * vin) + kv / (vout * vout)

    def _algebra(self) -> None:
        """Head, pressure, powers and current from the current state."""
        p, f, s, q = self.params, self.faults, self._s, self._q
        self._head = p.head_shutoff_m * (1.0 - f.head_loss) * s * s - (
            p.pump_head_coeff_m_per_lpm2 * q * abs(q)
        )
        self._pressure = p.density_kg_per_m3 * G * (self._h + self._head) / 1e5
        eta = p.pump_efficiency_frac * (1.0 - f.eff_loss)
        p_hyd = p.density_kg_per_m3 * G * max(q, 0.0) / 60000.0 * max(self._head, 0.0)
        self._p_shaft = p_hyd / eta + p.mech_loss_w * s * s
        vpf = p.supply_voltage_v * p.power_factor
        r = p.winding_resistance_ohm
        disc = vpf * vpf - 4.0 * r * (self._p_shaft + p.iron_loss_w * s)
        self._current = (vpf - math.sqrt(disc)) / (2.0 * r) if disc > 0.0 else vpf / (2.0 * r)
        self._p_el = vpf * self._current

    def step(self, dt: float) -> None:
        """Advance plant, PLC logic and operator by `dt` seconds (in steps of at most 0.05 s)."""
        n = max(1, math.ceil(dt / DT - 1e-9))
        h = dt / n
        for _ in range(n):
            self._step(h)

    def _step(self, h: float) -> None:
        p, f = self.params, self.faults
        if self._scenario is not None:
            self._op = self._scenario.at(self.sim_time)
        op = self._op
        # PLC scan on the measured (possibly faulty) values.
        flow_meas, temp_meas = self._measured_flow(), self._measured_temp()
        self._speed_cmd, self._heater_cmd = self.controller.update(
            op.flow_sp, op.temp_sp, flow_meas, temp_meas, h
        )
        # Actuators.
        ds = p.vfd_ramp_per_s * h
        self._s += min(max(self._speed_cmd / 100.0 - self._s, -ds), ds)
        dv = p.valve_rate_pct_per_s / 100.0 * h
        self._vin += min(max(op.valve_in / 100.0 - self._vin, -dv), dv)
        self._vout += min(max(op.valve_out / 100.0 - self._vout, -dv), dv)
        self._heater_w += (self._heater_cmd * 1000.0 - self._heater_w) * (h / p.heater_lag_s)
        # Hydraulics: Euler, sub-stepped below the linearised flow time constant.
        s = self._s
        h0 = p.head_shutoff_m * (1.0 - f.head_loss) * s * s
        k_tot = p.pump_head_coeff_m_per_lpm2 + self._k_system()
        tau = p.inertance_m_s_per_lpm / (2.0 * k_tot * max(abs(self._q), 1.0))
        n = max(1, math.ceil(h / (0.2 * tau)))
        hq = h / n
        q = self._q
        for _ in range(n):
            q += (h0 - k_tot * q * abs(q)) / p.inertance_m_s_per_lpm * hq
        self._q = q
        # Tank: the only outflow is a leak, Torricelli-shaped.
        if f.leak_m_s > 0.0 and self._h > 0.0:
            self._h = max(0.0, self._h - f.leak_m_s * math.sqrt(self._h / p.level_nominal_m) * h)
        self._algebra()
        # Heat.
        cf = (
            p.density_kg_per_m3
            * p.specific_heat_j_per_kg_k
            * (p.tank_area_m2 * self._h + p.pipe_volume_m3)
        )
        self._t += (
            (self._heater_w + self._p_shaft - p.heat_loss_w_per_k * (self._t - p.ambient_temp_c))
            / cf
            * h
        )
        loss = p.winding_resistance_ohm * self._current**2 + p.iron_loss_w * s
        self._tm += (
            (loss - (self._tm - p.ambient_temp_c) / p.motor_thermal_resistance_k_per_w)
            / p.motor_heat_capacity_j_per_k
            * h
        )
        self._energy_wh += self._p_el * h / 3600.0
        # Sensors.
        self._flow_f += (self._q - self._flow_f) * min(1.0, h / p.flow_lag_s)
        self._temp_f += (self._t - self._temp_f) * min(1.0, h / p.temp_lag_s)
        self._pres_f += (self._pressure - self._pres_f) * min(1.0, h / p.pressure_lag_s)
        f.drift_offset_k += f.drift_k_s * h
        f.age(h)
        if f.stuck and self._stuck_value is None:
            self._stuck_value = self._measured_flow()
        elif not f.stuck:
            self._stuck_value = None
        self._noise_i += 1
        if self._noise_i >= _NOISE_BLOCK:
            self._noise = self._rng.standard_normal((_NOISE_BLOCK, 8))
            self._noise_i = 0
        self.sim_time += h

    def _measured_flow(self) -> float:
        if self._stuck_value is not None:
            return self._stuck_value
        return self._flow_f + self.params.noise_flow_lpm * float(
            self._noise[self._noise_i, _N_FLOW]
        )

    def _measured_temp(self) -> float:
        noise = self.params.noise_temp_k * float(self._noise[self._noise_i, _N_TEMP])
        return self._temp_f + self.faults.drift_offset_k + noise

    # -- outputs -------------------------------------------------------------------------

    def _speed_rpm(self) -> float:
        p = self.params
        slip = p.rated_slip_frac * self._p_shaft / p.rated_shaft_w
        return self._s * p.rated_speed_rpm * (1.0 - slip)

    def _vibration(self) -> float:
        p, f = self.params, self.faults
        wear = 1.0 + p.vibration_wear_gain * f.head_loss
        return (p.vibration_base_g + p.vibration_speed_g * self._s**2) * wear

    def _status(self) -> float:
        running = 1 if self._s > 0.01 else 0
        overheated = 2 if self._tm > 120.0 else 0
        return float(running | overheated)

    def truth(self) -> dict[str, float]:
        """True physical values: no noise, no sensor lag or sensor fault, no quantisation."""
        op = self._op
        return {
            "flow_sp": op.flow_sp,
            "temp_sp": op.temp_sp,
            "pump_speed": self._speed_cmd,
            "heater_power": self._heater_cmd,
            "valve_in": op.valve_in,
            "valve_out": op.valve_out,
            "flow": self._q,
            "pressure": self._pressure,
            "level": self._h,
            "fluid_temp": self._t,
            "motor_speed": self._speed_rpm(),
            "motor_current": self._current,
            "motor_temp": self._tm,
            "motor_power": self._p_el / 1000.0,
            "vibration": self._vibration(),
            "energy": self._energy_wh,
            "status_word": self._status(),
        }

    def measurements(self) -> dict[str, float]:
        """What the PLCs serve: sensor values with lag, noise and faults, drive values quantised."""
        p, z = self.params, self._noise[self._noise_i]
        op = self._op
        values = {
            "flow_sp": op.flow_sp,
            "temp_sp": op.temp_sp,
            "pump_speed": self._speed_cmd,
            "heater_power": self._heater_cmd,
            "valve_in": op.valve_in,
            "valve_out": op.valve_out,
            "flow": self._measured_flow(),
            "pressure": self._pres_f + p.noise_pressure_bar * z[_N_PRES],
            "level": self._h + p.noise_level_m * z[_N_LEVEL],
            "fluid_temp": self._measured_temp(),
            "motor_speed": quantise("motor_speed", self._speed_rpm()),
            "motor_current": quantise(
                "motor_current", self._current + p.noise_current_a * z[_N_CUR]
            ),
            "motor_temp": quantise("motor_temp", self._tm + p.noise_motor_temp_k * z[_N_MTEMP]),
            "motor_power": quantise(
                "motor_power", self._p_el / 1000.0 + p.noise_power_kw * z[_N_POW]
            ),
            "vibration": quantise("vibration", self._vibration() + p.noise_vibration_g * z[_N_VIB]),
            "energy": float(math.floor(self._energy_wh)),
            "status_word": self._status(),
        }
        if self.faults.bad_tag:
            values[self.faults.bad_tag] = self.faults.bad_value
        return {k: float(v) for k, v in values.items()}


FaultArg = str | tuple[str, float, Mapping[str, ParamValue]]


def simulate(
    duration_s: float,
    *,
    rate_hz: float = 10.0,
    seed: int = 0,
    faults: Iterable[FaultArg] = (),
    params: PlantParams | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run plant, PLC logic and operator offline; sample `measurements()` at `rate_hz`.

    `faults` are `"kind[:k=v,...]@t"` strings or `(kind, at_s, params)` tuples; `plc-restart`
    has no effect offline (there are no servers). Returns the sample times (sim seconds, the
    first at 0) and one float64 array per tag name.
    """
    if rate_hz <= 0.0 or duration_s < 0.0:
        raise ValueError("rate_hz must be > 0 and duration_s >= 0")
    schedule = FaultSchedule()
    for item in faults:
        kind, at_s, fparams = parse_fault(item) if isinstance(item, str) else item
        schedule.add(kind, at_s, fparams)
    plant = Plant(seed, params)
    n = math.floor(duration_s * rate_hz + 1e-9) + 1
    ts = np.arange(n, dtype=np.float64) / rate_hz
    out = {name: np.empty(n, dtype=np.float64) for name in TAG_NAMES}
    cols = [out[name] for name in TAG_NAMES]
    for i in range(n):
        t = float(ts[i])
        if t > plant.sim_time:
            plant.step(t - plant.sim_time)
        for kind, fparams in schedule.due(plant.sim_time + 1e-9):
            if kind in PHYSICS_KINDS:
                plant.inject(kind, **fparams)
        meas = plant.measurements()
        for name, col in zip(TAG_NAMES, cols, strict=True):
            col[i] = meas[name]
    return ts, out
