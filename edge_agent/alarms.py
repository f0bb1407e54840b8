"""Alarm states per tag, with hysteresis and minimum durations, and their lifecycle events.

Two independent alarms per tag:
- `anomaly`: the detector's score stayed at or above `raise_level` for `raise_after_s`; it clears
  once the score stayed below `clear_level` for `clear_after_s`. A missing score (NaN: the tag is
  not modelled, or not comparable right now) changes nothing, so an outage does not clear an
  anomaly nor raise a new one.
- `quality`: the tag's samples stayed BAD for `quality_after_s` (PLC gone, NaN, out of range);
  it clears on the first usable sample.

`update` returns the events (raised / cleared) of this tick; `codes()` gives the current
state of every tag as an array of codes (`STATE_NAMES[code]`: none, anomaly, quality) for the
periodic deltas, `state(i)` the name of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

NONE, ANOMALY, QUALITY = "none", "anomaly", "quality"
STATE_NAMES = (NONE, ANOMALY, QUALITY)
"""Alarm state codes 0, 1, 2 as published; quality wins over anomaly."""


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One lifecycle event: `event` is "raised" or "cleared"."""

    event: str
    kind: str
    tag: str
    ts: float
    score: float | None = None
    reason: str = ""
    contributors: list[tuple[str, float]] = field(default_factory=list)


class AlarmTracker:
    """Hysteresis state machines for every tag, vectorised over tags."""

    def __init__(
        self,
        names: tuple[str, ...],
        *,
        raise_level: float = 1.0,
        clear_level: float = 0.7,
        raise_after_s: float = 1.0,
        clear_after_s: float = 3.0,
        quality_after_s: float = 2.0,
    ) -> None:
        n = len(names)
        self.names = names
        self.raise_level = raise_level
        self.clear_level = clear_level
        self.raise_after_s = raise_after_s
        self.clear_after_s = clear_after_s
        self.quality_after_s = quality_after_s
        self.anomaly = np.zeros(n, dtype=np.bool_)
        self.quality = np.zeros(n, dtype=np.bool_)
        self._above_since = np.full(n, np.nan)
        self._below_since = np.full(n, np.nan)
        self._bad_since = np.full(n, np.nan)
        self.raised_total = 0

    def update(
        self,
        now: float,
        score: npt.NDArray[np.floating],
        bad: npt.NDArray[np.bool_],
        reasons: list[str],
    ) -> list[AlarmEvent]:
        """Advance every state machine to `now`; `score` is NaN where a tag has none."""
        events: list[AlarmEvent] = []
        has = np.isfinite(score)
        above = has & (score >= self.raise_level)
        below = has & (score < self.clear_level)

        self._above_since = np.where(
            above, np.where(np.isnan(self._above_since), now, self._above_since), np.nan
        )
        self._below_since = np.where(
            below, np.where(np.isnan(self._below_since), now, self._below_since), np.nan
        )
        to_raise = ~self.anomaly & above & (now - self._above_since >= self.raise_after_s)
        to_clear = self.anomaly & below & (now - self._below_since >= self.clear_after_s)
        if to_raise.any():
            order = np.argsort(-np.where(has, score, -np.inf))
            top = [(self.names[i], float(score[i])) for i in order[:3] if has[i]]
            for i in np.flatnonzero(to_raise):
                events.append(
                    AlarmEvent(
                        "raised", ANOMALY, self.names[i], now, float(score[i]), contributors=top
                    )
                )
        for i in np.flatnonzero(to_clear):
            events.append(AlarmEvent("cleared", ANOMALY, self.names[i], now, float(score[i])))
        self.anomaly = (self.anomaly | to_raise) & ~to_clear

        self._bad_since = np.where(
            bad, np.where(np.isnan(self._bad_since), now, self._bad_since), np.nan
        )
        q_raise = ~self.quality & bad & (now - self._bad_since >= self.quality_after_s)
        q_clear = self.quality & ~bad
        for i in np.flatnonzero(q_raise):
            events.append(AlarmEvent("raised", QUALITY, self.names[i], now, reason=reasons[i]))
        for i in np.flatnonzero(q_clear):
            events.append(AlarmEvent("cleared", QUALITY, self.names[i], now))
        self.quality = (self.quality | q_raise) & ~q_clear
        self.raised_total += int(to_raise.sum() + q_raise.sum())
        return events

    def codes(self) -> npt.NDArray[np.int8]:
        """The alarm state of every tag as a code (index into `STATE_NAMES`): 2 where a quality
        alarm is raised, else 1 where an anomaly is, else 0."""
        out = self.anomaly.astype(np.int8)
        out[self.quality] = 2
        return out

    def state(self, i: int) -> str:
        """The alarm state of tag `i` as published: quality wins over anomaly."""
        if self.quality[i]:
            return QUALITY
        if self.anomaly[i]:
            return ANOMALY
        return NONE
