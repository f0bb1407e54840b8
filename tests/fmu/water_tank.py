"""A small FMU source for the FMU backend's tests: a vented water tank with a linear outlet.

Built into an FMI 2.0 co-simulation FMU at test time with `pythonfmu build -f water_tank.py`;
nothing here is imported by the agent. The tank is linear on purpose, so the test can compare
the FMU against the closed-form solution:

    A dh/dt = inflow - outflow,   outflow = k * valve * h
    h(t) = h_ss + (h0 - h_ss) exp(-t k valve / A),   h_ss = inflow / (k valve)

`do_step` integrates with RK4 sub-steps of at most `MAX_SUBSTEP_S`. It reports an error
(pythonfmu turns a False return into fmi2Error) when an input is not finite or out of range,
or when the level rises above `height` (the tank overflows: the model is no longer valid).
`level_start` is the parameter the backend sets from a measured level on reset.
"""

from __future__ import annotations

import math
from typing import Any

from pythonfmu import Fmi2Causality, Fmi2Slave, Fmi2Variability, Integer, Real
from pythonfmu.enums import Fmi2Status

MAX_SUBSTEP_S = 0.01


class WaterTank(Fmi2Slave):  # type: ignore[misc]  # pythonfmu ships no type hints
    """Tank level driven by an inflow and an outlet valve."""

    author = "edge-agent tests"
    description = "Vented tank with a linear outlet (test model)"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inflow = 0.05  # m3/s
        self.valve = 1.0  # opening fraction 0..1
        self.area = 2.0  # m2
        self.outflow_coeff = 0.1  # m2/s per unit valve opening
        self.height = 3.0  # m, above this the tank overflows
        self.level_start = 1.0  # m
        self.level = self.level_start
        self.outflow = 0.0
        self.substeps = 0
        for name in ("inflow", "valve"):
            self.register_variable(Real(name, causality=Fmi2Causality.input))
        for name in ("area", "outflow_coeff", "height", "level_start"):
            self.register_variable(
                Real(name, causality=Fmi2Causality.parameter, variability=Fmi2Variability.tunable)
            )
        for name in ("level", "outflow"):
            self.register_variable(Real(name, causality=Fmi2Causality.output))
        # A non-Real output, so the backend's type check has something to reject.
        self.register_variable(
            Integer(
                "substeps", causality=Fmi2Causality.output, variability=Fmi2Variability.discrete
            )
        )

    def exit_initialization_mode(self) -> None:
        self.level = self.level_start
        self.outflow = self.outflow_coeff * self.valve * self.level
        self.substeps = 0

    def _dh(self, h: float) -> float:
        return (self.inflow - self.outflow_coeff * self.valve * h) / self.area

    def do_step(self, current_time: float, step_size: float) -> bool:
        if not (math.isfinite(self.inflow) and math.isfinite(self.valve)):
            self.log("input not finite", Fmi2Status.error)
            return False
        if not 0.0 <= self.valve <= 1.0 or self.inflow < 0.0:
            self.log("input out of range", Fmi2Status.error)
            return False
        n = max(1, math.ceil(step_size / MAX_SUBSTEP_S))
        dt = step_size / n
        h = self.level
        for _ in range(n):
            k1 = self._dh(h)
            k2 = self._dh(h + 0.5 * dt * k1)
            k3 = self._dh(h + 0.5 * dt * k2)
            k4 = self._dh(h + dt * k3)
            h += dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        self.level = h
        self.outflow = self.outflow_coeff * self.valve * h
        self.substeps += n
        if h > self.height:
            self.log("tank overflowed", Fmi2Status.error)
            return False
        return True
