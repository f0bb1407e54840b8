"""The rig's PLC control logic: a PID block and the two loops it runs.

This module owns the controllers only: flow (flow setpoint -> pump speed %) and fluid
temperature (temperature setpoint -> heater power kW). Like a real PLC they act on the
MEASURED values, so a faulty sensor misleads them. It does not own the physics or the
operator's setpoints (`hil.scenario`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Pid:
    """A parallel PID with output limits and clamping anti-windup.

    The integral only moves when the output is not saturated, or when the error drives it
    back out of saturation. The derivative acts on the measurement (no kick on setpoint steps).
    """

    kp: float
    ki: float
    kd: float = 0.0
    out_lo: float = 0.0
    out_hi: float = 100.0
    integral: float = 0.0
    _last_pv: float | None = None
    output: float = 0.0

    def reset(self, output: float, pv: float | None = None) -> None:
        """Bumpless start: hold `output` with zero error."""
        self.integral = min(max(output, self.out_lo), self.out_hi)
        self.output = self.integral
        self._last_pv = pv

    def update(self, sp: float, pv: float, dt: float) -> float:
        """One controller scan of `dt` seconds; returns the new, limited output."""
        err = sp - pv
        d = 0.0
        if self.kd and self._last_pv is not None and dt > 0.0:
            d = -self.kd * (pv - self._last_pv) / dt
        self._last_pv = pv
        candidate = self.integral + self.ki * err * dt
        unclamped = self.kp * err + candidate + d
        saturated_hi = unclamped > self.out_hi and err > 0.0
        saturated_lo = unclamped < self.out_lo and err < 0.0
        if not (saturated_hi or saturated_lo):
            self.integral = min(max(candidate, self.out_lo), self.out_hi)
        out = self.kp * err + self.integral + d
        self.output = min(max(out, self.out_lo), self.out_hi)
        return self.output


@dataclass(slots=True)
class Controller:
    """The process PLC's two loops, tuned for the loop's nominal dynamics."""

    flow: Pid
    temp: Pid

    @classmethod
    def default(cls) -> Controller:
        """Flow: ~2 s closed-loop time constant. Temperature: ~1 min, well damped."""
        return cls(
            flow=Pid(kp=0.6, ki=1.2, out_lo=0.0, out_hi=100.0),
            temp=Pid(kp=4.0, ki=0.02, out_lo=0.0, out_hi=5.0),
        )

    def reset(self, pump_speed: float, heater_power: float) -> None:
        """Start both loops bumplessly at the given outputs."""
        self.flow.reset(pump_speed)
        self.temp.reset(heater_power)

    def update(
        self, flow_sp: float, temp_sp: float, flow: float, fluid_temp: float, dt: float
    ) -> tuple[float, float]:
        """One scan: (pump speed %, heater power kW) from setpoints and measurements."""
        return self.flow.update(flow_sp, flow, dt), self.temp.update(temp_sp, fluid_temp, dt)
