"""A bank of plant instances: many `hil.plant.Plant`s stepped together, values as one array.

Owns stepping the instances of one server process in lock-step and turning their
measurements into the served value matrix (one row per instance, one column per slot of
`hil.load.layout.NAMES`), with the tick marker and the change-time stamp. Instance `i` is
`Plant(seed + i)`, so every instance follows its own operator scenario and noise. It does not
own any server or timing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hil.faults import PHYSICS_KINDS, ParamValue, check_params
from hil.load.layout import DITHER, NAMES, PLANT_NAMES, stamp_ms
from hil.plant import DT, Plant

_DITHER = np.array([0.0, *(DITHER[n] for n in PLANT_NAMES)])


class PlantBank:
    """The plant instances `instances` (global numbers), stepped at the plant's own 0.05 s."""

    def __init__(self, instances: Sequence[int], seed: int = 0) -> None:
        self.instances = tuple(instances)
        self.plants = [Plant(seed + i) for i in self.instances]
        self.values: npt.NDArray[np.float64] = np.zeros((len(self.plants), len(NAMES)))
        self.tick = 0

    @property
    def sim_time(self) -> float:
        """Simulated seconds since start (all instances share it)."""
        return self.plants[0].sim_time if self.plants else 0.0

    def advance(self, dt_s: float) -> None:
        """Step every instance by `dt_s` simulated seconds (whole plant steps)."""
        steps = max(1, round(dt_s / DT))
        for plant in self.plants:
            for _ in range(steps):
                plant.step(DT)

    def sample(self, unix_s: float) -> npt.NDArray[np.float64]:
        """The values to serve now, stamped `unix_s`; each call is one tick (the marker flips)."""
        out = self.values
        for row, plant in enumerate(self.plants):
            m = plant.measurements()
            out[row, 1:] = [m[n] for n in PLANT_NAMES]
        out += _DITHER * (self.tick % 2)
        out[:, 0] = stamp_ms(unix_s)
        self.tick += 1
        return out

    def inject(self, kind: str, *, every: int = 1, **params: ParamValue) -> int:
        """Start a physics fault in every `every`-th instance (global number); how many."""
        if kind not in PHYSICS_KINDS:
            raise ValueError(f"{kind!r} is not a physics fault; expected one of {PHYSICS_KINDS}")
        checked = check_params(kind, params)
        hit = 0
        for i, plant in zip(self.instances, self.plants, strict=True):
            if i % every == 0:
                plant.inject(kind, **checked)
                hit += 1
        return hit

    def clear_faults(self) -> None:
        """End every physics fault in every instance."""
        for plant in self.plants:
            plant.clear_faults()
