"""Alarm logic on detector scores: hysteresis (raise and clear levels) and minimum durations.

One implementation for every place that turns scores into alarms, so a benchmark run and the
live agent alarm on the same rows. The semantics are those of `edge_agent.alarms.AlarmTracker`'s
anomaly alarm, per score column:

- raised when the score stayed at or above `raise_level` for `raise_after_s` (measured from the
  first sample at or above it; `raise_after_s = 0` raises on that sample);
- cleared when it stayed below `clear_level` for `clear_after_s`;
- a NaN score (no full window, a gap) neither raises nor clears; it ends a run above or below
  the levels, so the duration is counted again from the next finite score.

`Hysteresis` is the streaming form (one `update` per tick, vectorised over columns);
`alarm_series` runs it over a recorded series. Pure NumPy; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.base import F64


@dataclass(frozen=True)
class AlarmSettings:
    """Levels in score units (1.0 = the detector's threshold) and durations in seconds."""

    raise_level: float = 1.0
    clear_level: float = 0.7
    raise_after_s: float = 3.0
    clear_after_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 < self.clear_level <= self.raise_level:
            raise ValueError(
                f"need 0 < clear_level <= raise_level, got {self.clear_level}, {self.raise_level}"
            )
        if self.raise_after_s < 0 or self.clear_after_s < 0:
            raise ValueError("raise_after_s and clear_after_s must not be negative")


class Hysteresis:
    """Alarm state machines for `n` score columns, advanced one timestamp at a time."""

    def __init__(self, n: int, settings: AlarmSettings) -> None:
        self.settings = settings
        self.active = np.zeros(n, dtype=np.bool_)
        self._above_since = np.full(n, np.nan)
        self._below_since = np.full(n, np.nan)

    def update(
        self, now: float, score: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Advance to `now`; returns the columns raised and cleared on this update."""
        s = self.settings
        has = np.isfinite(score)
        above = has & (score >= s.raise_level)
        below = has & (score < s.clear_level)
        self._above_since = np.where(
            above, np.where(np.isnan(self._above_since), now, self._above_since), np.nan
        )
        self._below_since = np.where(
            below, np.where(np.isnan(self._below_since), now, self._below_since), np.nan
        )
        raised = ~self.active & above & (now - self._above_since >= s.raise_after_s)
        cleared = self.active & below & (now - self._below_since >= s.clear_after_s)
        self.active = (self.active | raised) & ~cleared
        return raised, cleared


def alarm_series(
    ts: F64, scores: npt.NDArray[np.floating], settings: AlarmSettings
) -> npt.NDArray[np.bool_]:
    """Alarm state after each row of `scores` (`(T,)` or `(T, n)`) at times `ts` (seconds)."""
    t = np.asarray(ts, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    flat = s.ndim == 1
    s2 = s[:, None] if flat else s
    if s2.ndim != 2 or s2.shape[0] != t.shape[0]:
        raise ValueError(f"scores of shape {s.shape} do not match {t.shape[0]} timestamps")
    machine = Hysteresis(s2.shape[1], settings)
    out = np.zeros(s2.shape, dtype=np.bool_)
    for k in range(t.shape[0]):
        machine.update(float(t[k]), s2[k])
        out[k] = machine.active
    result: npt.NDArray[np.bool_] = out[:, 0] if flat else out
    return result
