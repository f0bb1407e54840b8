"""The operator's scenario: setpoints and valve positions changing over time, from a seed.

This module owns what the operator does to the loop, so that residual-based detection has
transients to see: the flow setpoint steps among 25/32/40 l/min about every minute, the
outlet valve moves every few minutes, the inlet valve throttles now and then, the temperature
setpoint steps by a degree or two every few minutes. Everything is drawn from one seeded
generator, lazily, so the same seed always gives the same sequence of events.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

FLOW_SETPOINTS = (25.0, 32.0, 40.0)
TEMP_RANGE = (37.0, 43.0)


@dataclass(frozen=True, slots=True)
class Operator:
    """What the operator has set: setpoints and valve position commands."""

    flow_sp: float = 32.0
    temp_sp: float = 40.0
    valve_in: float = 100.0
    valve_out: float = 80.0


INITIAL = Operator()


class Scenario:
    """A seeded sequence of operator actions; `at(t)` must be called with non-decreasing t."""

    def __init__(self, seed: int = 0, start: Operator = INITIAL) -> None:
        self._rng = np.random.default_rng([seed, 0x5CE])
        self._op = start
        self._next_flow = self._draw(45.0, 75.0)
        self._next_vout = self._draw(90.0, 180.0)
        self._next_vin = self._draw(150.0, 300.0)
        self._next_temp = self._draw(150.0, 300.0)

    def _draw(self, lo: float, hi: float, base: float = 0.0) -> float:
        return base + float(self._rng.uniform(lo, hi))

    @property
    def current(self) -> Operator:
        return self._op

    def at(self, t: float) -> Operator:
        """The operator's settings at sim time `t` (seconds since start)."""
        op = self._op
        rng = self._rng
        while t >= self._next_flow:
            choices = [v for v in FLOW_SETPOINTS if v != op.flow_sp]
            op = replace(op, flow_sp=choices[int(rng.integers(len(choices)))])
            self._next_flow = self._draw(45.0, 75.0, self._next_flow)
        while t >= self._next_vout:
            vout = 5.0 * round(float(rng.uniform(65.0, 100.0)) / 5.0)
            op = replace(op, valve_out=vout)
            self._next_vout = self._draw(90.0, 180.0, self._next_vout)
        while t >= self._next_vin:
            vin = (
                100.0 if rng.uniform() < 0.6 else 5.0 * round(float(rng.uniform(75.0, 95.0)) / 5.0)
            )
            op = replace(op, valve_in=vin)
            self._next_vin = self._draw(150.0, 300.0, self._next_vin)
        while t >= self._next_temp:
            step = float(rng.choice([-2.0, -1.0, 1.0, 2.0]))
            temp = op.temp_sp + step
            if not TEMP_RANGE[0] <= temp <= TEMP_RANGE[1]:
                temp = op.temp_sp - step
            op = replace(op, temp_sp=temp)
            self._next_temp = self._draw(150.0, 300.0, self._next_temp)
        self._op = op
        return op
