"""Report by exception: which tags to publish this tick, and the JSON payloads.

A tag's delta is published when, since its last publication, its value moved by more than its
deadband, its residual moved by more than the deadband, its quality or alarm state changed, or
`heartbeat_s` passed (so a dashboard can tell "unchanged" from "dead").

Topics (all under `<topic_prefix>/<agent id>/`; payloads are UTF-8 JSON, NaN as null):
- `tags/<tag>`   a delta: {"ts", "source_ts", "value", "quality", "reason", "unit",
                  "predicted", "residual", "score", "cusum", "prediction", "alarm"}; QoS 1
- `model`        retained: the calibrated parameter estimates (see `edge_agent.learn`)
- `alarms`       lifecycle events: {"ts", "event": raised|cleared, "kind": anomaly|quality,
                  "tag", "score", "reason", "contributors": [{"tag", "score"}]}; QoS 1
- `status`       retained: {"state": online|offline, "agent_id", "version", "ts",
                  "config_hash", "model", "detector"}; the last will sets "offline"
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edge_agent.alarms import AlarmEvent

QUALITY_NAMES = ("good", "uncertain", "bad")


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _num(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


class Reporter:
    """Keeps what was last published per tag and decides what is due now."""

    def __init__(
        self,
        names: Sequence[str],
        units: Sequence[str],
        deadbands: Sequence[float],
        *,
        heartbeat_s: float,
        topic_prefix: str,
    ) -> None:
        n = len(names)
        self.names = tuple(names)
        self.units = tuple(units)
        self.deadband = np.asarray(deadbands, dtype=np.float64)
        self.heartbeat_s = heartbeat_s
        self.prefix = topic_prefix.rstrip("/")
        self.tag_topics = tuple(f"{self.prefix}/tags/{name}" for name in names)
        self.deltas_topic = f"{self.prefix}/deltas"
        self.alarm_topic = f"{self.prefix}/alarms"
        self.status_topic = f"{self.prefix}/status"
        self.model_topic = f"{self.prefix}/model"
        self.last_value = np.full(n, np.nan)
        self.last_residual = np.full(n, np.nan)
        self.last_quality = np.full(n, -1, dtype=np.int8)
        self.last_alarm: list[str] = [""] * n
        self.last_text: list[str | None] = [None] * n
        self.last_ts = np.full(n, -math.inf)
        self.published = 0

    def due(
        self,
        now: float,
        value: npt.NDArray[np.float64],
        residual: npt.NDArray[np.float64],
        quality: npt.NDArray[np.int8],
        alarm: list[str],
        *,
        text: Sequence[str | None] | None = None,
    ) -> npt.NDArray[np.intp]:
        """Indices of the tags to publish now; marks them as published. `text`: the text of
        text tags (None elsewhere), whose change is due like a moved value."""
        moved = ~(np.abs(value - self.last_value) <= self.deadband)  # NaN counts as moved
        both_nan = np.isnan(value) & np.isnan(self.last_value)
        moved &= ~both_nan
        r_moved = np.abs(residual - self.last_residual) > self.deadband
        changed_alarm = np.array([a != b for a, b in zip(alarm, self.last_alarm, strict=True)])
        if text is not None:
            changed = np.array([a != b for a, b in zip(text, self.last_text, strict=True)])
            moved |= changed
            for i in np.flatnonzero(changed):
                self.last_text[int(i)] = text[int(i)]
        due = (
            moved
            | r_moved
            | (quality != self.last_quality)
            | changed_alarm
            | (now - self.last_ts >= self.heartbeat_s)
        )
        idx = np.flatnonzero(due)
        self.last_value[idx] = value[idx]
        self.last_residual[idx] = residual[idx]
        self.last_quality[idx] = quality[idx]
        for i in idx:
            self.last_alarm[i] = alarm[i]
        self.last_ts[idx] = now
        self.published += len(idx)
        return idx

    def tag_doc(
        self,
        i: int,
        now: float,
        *,
        value: float,
        source_ts: float,
        quality: int,
        reason: str,
        predicted: float,
        residual: float,
        score: float,
        alarm: str,
        cusum: float = math.nan,
        prediction: str = "none",
        text: str | None = None,
    ) -> dict[str, object]:
        """The delta of tag `i` as a JSON-ready dict (with "text" for a text tag)."""
        doc: dict[str, object] = {
            "tag": self.names[i],
            "ts": round(now, 3),
            "source_ts": round(source_ts, 3),
            "value": _num(value),
            "quality": QUALITY_NAMES[quality],
            "reason": reason,
            "unit": self.units[i],
            "predicted": _num(predicted),
            "residual": _num(residual),
            "score": _num(score),
            "cusum": _num(cusum),
            "prediction": prediction,
            "alarm": alarm,
        }
        if text is not None:
            doc["text"] = text
        return doc

    @staticmethod
    def tag_payload(doc: dict[str, object]) -> bytes:
        """One delta as its own message (`per_tag_topics`)."""
        return _dumps(doc)

    def batches(self, now: float, docs: Sequence[dict[str, object]], batch_max: int) -> list[bytes]:
        """Deltas of one tick as `deltas` messages of at most `batch_max` each."""
        return [
            _dumps({"ts": round(now, 3), "deltas": docs[k : k + batch_max]})
            for k in range(0, len(docs), batch_max)
        ]

    @staticmethod
    def alarm_payload(ev: AlarmEvent) -> bytes:
        """The JSON of one alarm lifecycle event."""
        doc = {
            "ts": round(ev.ts, 3),
            "event": ev.event,
            "kind": ev.kind,
            "tag": ev.tag,
            "score": None if ev.score is None else _num(ev.score),
            "reason": ev.reason,
            "contributors": [{"tag": t, "score": _num(s)} for t, s in ev.contributors],
        }
        return _dumps(doc)
