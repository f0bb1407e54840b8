"""Report by exception: deadband, quality and alarm changes, heartbeat."""

from __future__ import annotations

import json

import numpy as np

from edge_agent.report import Reporter


def rep() -> Reporter:
    return Reporter(["a", "b"], ["m", ""], [0.5, 0.0], heartbeat_s=10.0, topic_prefix="p/x")


def due(
    r: Reporter,
    now: float,
    a: float,
    b: float,
    *,
    q: tuple[int, int] = (0, 0),
    alarm: tuple[str, str] = ("none", "none"),
) -> list[int]:
    v = np.array([a, b])
    return [
        int(i) for i in r.due(now, v, np.full(2, np.nan), np.array(q, dtype=np.int8), list(alarm))
    ]


def test_first_tick_publishes_everything() -> None:
    """Every tag is published on the first tick."""
    assert due(rep(), 0.0, 1.0, 1.0) == [0, 1]


def test_deadband_suppresses_small_changes() -> None:
    """A change within the deadband is not published; a larger one is."""
    r = rep()
    due(r, 0.0, 1.0, 1.0)
    assert due(r, 0.1, 1.4, 1.0) == []
    assert due(r, 0.2, 1.6, 1.0) == [0]


def test_quality_and_alarm_changes_publish() -> None:
    """A quality change or an alarm change publishes even without a value change."""
    r = rep()
    due(r, 0.0, 1.0, 1.0)
    assert due(r, 0.1, 1.0, 1.0, q=(2, 0)) == [0]
    assert due(r, 0.2, 1.0, 1.0, q=(2, 0), alarm=("none", "anomaly")) == [1]


def test_heartbeat_republishes_unchanged_tags() -> None:
    """After heartbeat_s an unchanged tag is published again."""
    r = rep()
    due(r, 0.0, 1.0, 1.0)
    assert due(r, 5.0, 1.0, 1.0) == []
    assert due(r, 10.0, 1.0, 1.0) == [0, 1]


def test_payload_is_json_with_nulls_for_nan() -> None:
    """NaN values become JSON null; the topic carries the tag name."""
    r = rep()
    p = json.loads(
        r.tag_payload(
            r.tag_doc(
                0,
                1.0,
                value=float("nan"),
                source_ts=1.0,
                quality=2,
                reason="comm",
                predicted=2.0,
                residual=float("nan"),
                score=float("nan"),
                alarm="quality",
            )
        )
    )
    assert p["value"] is None and p["quality"] == "bad" and p["predicted"] == 2.0
    assert p["tag"] == "a"
    assert r.tag_topics[0] == "p/x/tags/a"


def test_batches_split_a_tick_at_batch_max() -> None:
    """The deltas of one tick go out in messages of at most batch_max deltas, in tag order."""
    r = Reporter([f"t{i}" for i in range(5)], [""] * 5, [0.0] * 5, heartbeat_s=1, topic_prefix="p")
    docs: list[dict[str, object]] = [{"tag": f"t{i}", "value": i} for i in range(5)]
    bodies = [json.loads(b) for b in r.batches(7.0, docs, 2)]
    assert [len(b["deltas"]) for b in bodies] == [2, 2, 1]
    assert [d["tag"] for b in bodies for d in b["deltas"]] == [f"t{i}" for i in range(5)]
    assert all(b["ts"] == 7.0 for b in bodies)
    assert r.deltas_topic == "p/deltas"
