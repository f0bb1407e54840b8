"""Alarm hysteresis: raise after a minimum duration, clear below a lower level, quality alarms."""

from __future__ import annotations

import numpy as np

from edge_agent.alarms import ANOMALY, NONE, QUALITY, STATE_NAMES, AlarmTracker


def tracker() -> AlarmTracker:
    return AlarmTracker(
        ("a", "b"),
        raise_level=1.0,
        clear_level=0.7,
        raise_after_s=1.0,
        clear_after_s=2.0,
        quality_after_s=2.0,
    )


def run(
    t: AlarmTracker, now: float, a: float, b: float = 0.0, bad: tuple[bool, bool] = (False, False)
) -> list[str]:
    evs = t.update(now, np.array([a, b]), np.array(bad), ["comm", "comm"])
    return [f"{e.event}:{e.kind}:{e.tag}" for e in evs]


def test_short_spike_does_not_raise() -> None:
    """A score above the raise level for less than raise_after_s raises nothing."""
    t = tracker()
    assert run(t, 0.0, 2.0) == [] and run(t, 0.5, 2.0) == [] and run(t, 0.9, 0.1) == []
    assert t.state(0) == NONE


def test_raise_then_hysteresis_then_clear() -> None:
    """Raised after 1 s above 1.0; stays while between 0.7 and 1.0; clears after 2 s below 0.7."""
    t = tracker()
    run(t, 0.0, 1.5)
    assert run(t, 1.0, 1.5) == ["raised:anomaly:a"]
    assert t.state(0) == ANOMALY
    assert run(t, 2.0, 0.8) == [] and run(t, 5.0, 0.8) == []
    assert run(t, 6.0, 0.5) == []
    assert run(t, 8.0, 0.5) == ["cleared:anomaly:a"]
    assert t.state(0) == NONE


def test_missing_score_changes_nothing() -> None:
    """NaN scores neither raise nor clear."""
    t = tracker()
    run(t, 0.0, 1.5)
    run(t, 1.0, 1.5)
    assert run(t, 2.0, float("nan")) == [] and run(t, 10.0, float("nan")) == []
    assert t.state(0) == ANOMALY


def test_quality_alarm_raises_and_clears() -> None:
    """BAD for quality_after_s raises a quality alarm; the first usable sample clears it."""
    t = tracker()
    assert run(t, 0.0, np.nan, bad=(False, True)) == []
    assert run(t, 2.0, np.nan, bad=(False, True)) == ["raised:quality:b"]
    assert t.state(1) == QUALITY
    assert run(t, 2.1, np.nan, bad=(False, False)) == ["cleared:quality:b"]


def test_contributors_name_the_top_scores() -> None:
    """A raised event lists the highest-scoring tags first."""
    t = tracker()
    t.update(0.0, np.array([1.2, 3.0]), np.array([False, False]), ["", ""])
    evs = t.update(1.0, np.array([1.2, 3.0]), np.array([False, False]), ["", ""])
    assert {e.tag for e in evs} == {"a", "b"}
    assert evs[0].contributors[0][0] == "b"


def test_codes_name_every_tags_state() -> None:
    """`codes()` gives each tag's published state as a code: quality wins over anomaly."""
    t = tracker()
    run(t, 0.0, 1.5, 1.5, bad=(False, True))
    run(t, 1.0, 1.5, 1.5, bad=(False, True))
    assert [STATE_NAMES[c] for c in t.codes()] == [t.state(0), t.state(1)] == [ANOMALY, ANOMALY]
    run(t, 2.0, 1.5, 1.5, bad=(False, True))
    assert [STATE_NAMES[c] for c in t.codes()] == [ANOMALY, QUALITY]
    run(t, 2.1, 1.5, 1.5)
    assert t.codes().tolist() == [1, 1] and t.codes().dtype == np.int8
    fresh = tracker()
    assert fresh.codes().tolist() == [0, 0] and fresh.state(0) == NONE
