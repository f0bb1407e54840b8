"""Drift or fault: what the calibrated posterior of the Digital Original did over a long window.

This module owns `DriftMonitor` and its `DriftReport`: slow, monotone parameter drift (ageing,
e.g. pump efficiency falling) told apart from a sudden fault no variant explains (a leak, a
stuck sensor). It reads a `models.process.calibrate.Calibrator` (posterior mean and std, the
best variant's smoothed residual per output) and knows nothing of how the variants were run.

Cost per tick: the fault flags only (a few comparisons); the posterior moments are computed
only when a new point of the drift window is due (every `window_s / points` seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.base import F64
from models.process.calibrate import Calibrator


@dataclass(frozen=True, slots=True)
class DriftReport:
    """What the posterior did over the long window, and which outputs no variant explains.

    `drift[name]`: the parameter's posterior mean moved monotonically by more than `k` posterior
    standard deviations over the window; `change[name]`: that move in standard deviations
    (signed, NaN until the window holds enough history); `fault`: some output has a residual no
    variant explains; `fault_outputs`: those outputs.
    """

    drift: dict[str, bool]
    change: dict[str, float]
    fault: bool
    fault_outputs: tuple[str, ...]


class DriftMonitor:
    """Tells slow parameter drift (ageing) from a sudden fault no variant explains.

    Drift: the posterior means are sampled every `window_s / points` seconds; over the last
    `window_s` (at least half of it must be covered) a parameter drifts when the least-squares
    change of its mean exceeds `k` times its median posterior std and the series is monotone
    (|Kendall tau| >= `monotone`). Fault: an output's `residual_z` (see `Calibrator`) beyond
    `fault_z`; it clears below `clear_z`. A NaN z (output not valid) changes nothing.
    """

    def __init__(
        self,
        param_names: Sequence[str],
        output_names: Sequence[str],
        *,
        window_s: float = 600.0,
        points: int = 60,
        k: float = 3.0,
        monotone: float = 0.6,
        fault_z: float = 3.0,
        clear_z: float = 2.0,
    ) -> None:
        if not (window_s > 0 and points >= 4 and k > 0 and 0 < monotone <= 1):
            raise ValueError("window_s > 0, points >= 4, k > 0 and 0 < monotone <= 1 required")
        if not 0 < clear_z <= fault_z:
            raise ValueError("0 < clear_z <= fault_z required")
        self.param_names = tuple(param_names)
        self.output_names = tuple(output_names)
        self.window_s = window_s
        self.points = points
        self.k = k
        self.monotone = monotone
        self.fault_z = fault_z
        self.clear_z = clear_z
        n_par = len(self.param_names)
        self._t = np.full(points, np.nan)
        self._mean = np.full((points, n_par), np.nan)
        self._std = np.full((points, n_par), np.nan)
        self._next = 0
        self._last_sample = -np.inf
        self._fault = np.zeros(len(self.output_names), dtype=np.bool_)
        self._drift = np.zeros(n_par, dtype=np.bool_)
        self._change = np.full(n_par, np.nan)
        self._cached: DriftReport | None = None  # the last report, while nothing changed

    def observe(self, now: float, calibrator: Calibrator) -> DriftReport:
        """`update` with the calibrator's residual z and, when a point is due, its posterior."""
        self._faults(calibrator.residual_z)
        if self._due(now):
            mean, std = calibrator.mean_std()
            self._sample(now, mean, std)
        return self._report()

    def update(self, now: float, mean: F64, std: F64, residual_z: F64) -> DriftReport:
        """Feed one tick: posterior mean and std (P,), best variant's residual z (n_out,)."""
        z = np.asarray(residual_z, dtype=np.float64)
        if z.shape != self._fault.shape or np.shape(mean) != self._drift.shape:
            raise ValueError("residual_z or mean has the wrong shape")
        self._faults(z)
        if self._due(now):
            self._sample(now, np.asarray(mean), np.asarray(std))
        return self._report()

    def _faults(self, z: F64) -> None:
        seen = np.isfinite(z)
        az = np.abs(np.where(seen, z, 0.0))
        self._fault = np.where(
            seen, np.where(self._fault, az >= self.clear_z, az > self.fault_z), self._fault
        )

    def _due(self, now: float) -> bool:
        return now - self._last_sample >= self.window_s / self.points

    def _sample(self, now: float, mean: F64, std: F64) -> None:
        self._last_sample = now
        slot = self._next % self.points
        self._t[slot] = now
        self._mean[slot] = mean
        self._std[slot] = std
        self._next += 1
        self._trend()
        self._cached = None

    def _report(self) -> DriftReport:
        fault = tuple(n for n, f in zip(self.output_names, self._fault, strict=True) if f)
        rep = self._cached
        if rep is None or rep.fault_outputs != fault:
            names = self.param_names
            rep = DriftReport(
                drift={n: bool(d) for n, d in zip(names, self._drift, strict=True)},
                change={n: float(c) for n, c in zip(names, self._change, strict=True)},
                fault=bool(fault),
                fault_outputs=fault,
            )
            self._cached = rep
        return rep

    def _trend(self) -> None:
        have = np.isfinite(self._t)
        t = self._t[have]
        order = np.argsort(t)
        t = t[order]
        m = self._mean[have][order]
        s = self._std[have][order]
        if len(t) < 4 or t[-1] - t[0] < 0.5 * self.window_s:
            return
        tc = t - t.mean()
        slope = tc @ (m - m.mean(axis=0)) / (tc @ tc)
        scale = np.median(s, axis=0)
        scale = np.where(scale > 0, scale, np.finfo(np.float64).tiny)
        self._change = slope * (t[-1] - t[0]) / scale
        # Kendall tau against time (t is sorted, so only the sign of later - earlier counts).
        n = len(t)
        iu = np.triu_indices(n, 1)
        tau = np.sign(m[iu[1]] - m[iu[0]]).sum(axis=0) / (n * (n - 1) / 2)
        self._drift = (np.abs(self._change) > self.k) & (np.abs(tau) >= self.monotone)
