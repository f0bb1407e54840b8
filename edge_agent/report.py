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
- `deltas`       the deltas of one tick in batches: {"ts", "deltas": [delta, ...]} (default)

The batched path runs at every tick over up to tens of thousands of tags, so it never builds a
dict per tag: `encode_batches` writes the JSON text from the tick's arrays (`TickColumns`),
with each tag's constant parts (name, unit, the usual all-quiet tail) prepared once and the
numbers rounded in one vectorised pass (`number_strings`). The text is the same, byte for
byte, as `json.dumps` of the `tag_doc` dicts (tested); `tag_doc` stays for per-tag topics and
the Sparkplug adapter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import numpy.typing as npt

from edge_agent.alarms import STATE_NAMES, AlarmEvent

QUALITY_NAMES = ("good", "uncertain", "bad")
_ALARM_CODE = {name: code for code, name in enumerate(STATE_NAMES)}
_EXACT = 2.0**52
"""Below this, rint(x * 10**n) is an exact integer in float64."""
_ERR = 2.0**-50
"""x * 10**n is off the exact product by at most |x * 10**n| * 2**-53: checked with margin."""


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _num(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


def _num_json(x: float) -> str:
    return repr(round(x, 6)) if math.isfinite(x) else "null"


def number_strings(x: npt.NDArray[np.floating], ndigits: int) -> list[str]:
    """What `json.dumps(round(v, ndigits))` writes for each v, "null" where v is not finite.

    Vectorised: rint(v * 10**n) / 10**n is the same double as Python's correctly rounded
    `round` whenever the product is exact enough to pick the same integer (far enough from a
    tie for its rounding error); the few other values go through `round` itself. A column of
    long runs of one value (a Modbus request's receive time) is formatted once per run.
    """
    v = np.asarray(x, dtype=np.float64)
    n = len(v)
    if n > 8:
        head = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
        if 4 * len(head) < n:
            once = np.array(_number_strings(v[head], ndigits), dtype=object)
            out: list[str] = once[np.repeat(np.arange(len(head)), np.diff(head, append=n))].tolist()
            return out
    return _number_strings(v, ndigits)


def _number_strings(v: npt.NDArray[np.float64], ndigits: int) -> list[str]:
    scale = 10.0**ndigits
    with np.errstate(invalid="ignore", over="ignore"):
        y = v * scale
        r = np.rint(y)
        a = np.abs(y)
        # A product that is already an integer (a counter, a stamp) is within half an ulp of
        # r, never near a tie, however large: only the others are checked against the margin.
        odd = ~(a < _EXACT) | ((y != r) & (np.abs(np.abs(y - r) - 0.5) <= a * _ERR))
    out = list(map(float.__repr__, (r / scale).tolist()))
    if odd.any():  # also every NaN and infinity
        finite = np.isfinite(v)
        for k in np.flatnonzero(odd).tolist():
            out[k] = repr(round(float(v[k]), ndigits)) if finite[k] else "null"
    return out


@dataclass(frozen=True, slots=True)
class TickColumns:
    """What one tick publishes, as arrays over every tag (NaN where a tag has nothing).

    `reasoned[i]` is `reason[i] != ""`; `alarm` holds `STATE_NAMES` codes; `prediction` applies
    to the `modelled` tags (the others publish "none"); `text` is None when no tag has a text,
    else one entry per tag (None for non-text tags), with `text_idx` the tags that have one.
    """

    value: npt.NDArray[np.float64]
    source_ts: npt.NDArray[np.float64]
    quality: npt.NDArray[np.int8]
    reason: Sequence[str]
    reasoned: npt.NDArray[np.bool_]
    predicted: npt.NDArray[np.float64]
    residual: npt.NDArray[np.float64]
    score: npt.NDArray[np.floating]
    cusum: npt.NDArray[np.float64]
    alarm: npt.NDArray[np.int8]
    modelled: npt.NDArray[np.bool_]
    prediction: str = "none"
    text: Sequence[str | None] | None = None
    text_idx: Sequence[int] = ()


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
        self.last_alarm = np.full(n, -1, dtype=np.int8)
        self.last_text: list[str | None] = [None] * n
        self.last_ts = np.full(n, -math.inf)
        self.published = 0
        # Constant JSON of each tag's delta: its head, and the tail of a quiet tag (GOOD, no
        # reason, no model figures, no alarm, no text), so most deltas are four joined strings.
        heads = [f'{{"tag":{json.dumps(name)},"ts":' for name in self.names]
        self._head = np.array(heads, dtype=object)
        self._unit_json = [json.dumps(u) for u in self.units]
        quiet = [
            f',"quality":"good","reason":"","unit":{u},"predicted":null,"residual":null,'
            '"score":null,"cusum":null,"prediction":"none","alarm":"none"}'
            for u in self._unit_json
        ]
        self._quiet_tail = np.array(quiet, dtype=object)

    def due(
        self,
        now: float,
        value: npt.NDArray[np.float64],
        residual: npt.NDArray[np.float64],
        quality: npt.NDArray[np.int8],
        alarm: npt.NDArray[np.int8] | Sequence[str],
        *,
        text: Sequence[str | None] | None = None,
        text_idx: Sequence[int] | None = None,
    ) -> npt.NDArray[np.intp]:
        """Indices of the tags to publish now; marks them as published. `alarm`: state codes
        (`AlarmTracker.codes`) or names. `text`: the text of text tags (None elsewhere), whose
        change is due like a moved value; only the tags in `text_idx` are compared (all when
        it is None)."""
        with np.errstate(invalid="ignore"):
            moved = ~(np.abs(value - self.last_value) <= self.deadband)  # NaN counts as moved
            moved &= ~(np.isnan(value) & np.isnan(self.last_value))
            r_moved = np.abs(residual - self.last_residual) > self.deadband
        codes = (
            alarm
            if isinstance(alarm, np.ndarray)
            else np.array([_ALARM_CODE[a] for a in alarm], dtype=np.int8)
        )
        if text is not None:
            last_text = self.last_text
            for i in range(len(text)) if text_idx is None else text_idx:
                if text[i] != last_text[i]:
                    moved[i] = True
                    last_text[i] = text[i]
        due = (
            moved
            | r_moved
            | (quality != self.last_quality)
            | (codes != self.last_alarm)
            | (now - self.last_ts >= self.heartbeat_s)
        )
        idx = np.flatnonzero(due)
        self.last_value[idx] = value[idx]
        self.last_residual[idx] = residual[idx]
        self.last_quality[idx] = quality[idx]
        self.last_alarm[idx] = codes[idx]
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

    def docs(
        self, now: float, idx: npt.NDArray[np.intp], cols: TickColumns
    ) -> list[dict[str, object]]:
        """`tag_doc` of each tag in `idx` (per-tag topics, Sparkplug)."""
        text = cols.text
        return [
            self.tag_doc(
                i,
                now,
                value=float(cols.value[i]),
                source_ts=float(cols.source_ts[i]),
                quality=int(cols.quality[i]),
                reason=cols.reason[i],
                predicted=float(cols.predicted[i]),
                residual=float(cols.residual[i]),
                score=float(cols.score[i]),
                alarm=STATE_NAMES[cols.alarm[i]],
                cusum=float(cols.cusum[i]),
                prediction=cols.prediction if cols.modelled[i] else "none",
                text=None if text is None else text[i],
            )
            for i in idx.tolist()
        ]

    def encode_batches(
        self, now: float, idx: npt.NDArray[np.intp], cols: TickColumns, batch_max: int
    ) -> list[bytes]:
        """The deltas of `idx` as `deltas` messages of at most `batch_max` each: the same bytes
        as `batches(now, docs(now, idx, cols), batch_max)`, without a dict per tag."""
        if len(idx) == 0:
            return []
        ts = repr(round(now, 3))
        src = number_strings(cols.source_ts[idx], 3)
        val = number_strings(cols.value[idx], 6)
        tails = self._tails(idx, cols)
        mid = f'{ts},"source_ts":'
        deltas = list(
            map(
                "".join,
                zip(self._head[idx].tolist(), repeat(mid), src, repeat(',"value":'), val, tails),
            )
        )
        head = f'{{"ts":{ts},"deltas":['
        return [
            (head + ",".join(deltas[k : k + batch_max]) + "]}").encode()
            for k in range(0, len(deltas), batch_max)
        ]

    def _tails(self, idx: npt.NDArray[np.intp], cols: TickColumns) -> list[str]:
        """Everything after "value" of each delta: the prepared quiet tail where it fits."""
        tails: list[str] = self._quiet_tail[idx].tolist()
        with np.errstate(invalid="ignore"):
            model = (
                np.isfinite(cols.predicted[idx])
                | np.isfinite(cols.residual[idx])
                | np.isfinite(cols.score[idx])
                | np.isfinite(cols.cusum[idx])
            )
        loud = (
            (cols.quality[idx] != 0)
            | cols.reasoned[idx]
            | (cols.alarm[idx] != 0)
            | model
            | (cols.modelled[idx] & (cols.prediction != "none"))
        )
        rows = np.flatnonzero(loud).tolist()
        if cols.text is not None and cols.text_idx:
            pos = np.searchsorted(idx, np.asarray(cols.text_idx, dtype=np.intp))
            hit = pos < len(idx)
            hit[hit] = idx[pos[hit]] == np.asarray(cols.text_idx)[hit]
            rows = sorted({*rows, *pos[hit].tolist()})
        for k in rows:
            tails[k] = self._tail(int(idx[k]), cols)
        return tails

    def _tail(self, i: int, c: TickColumns) -> str:
        text = None if c.text is None else c.text[i]
        return (
            f',"quality":"{QUALITY_NAMES[c.quality[i]]}","reason":{json.dumps(c.reason[i])},'
            f'"unit":{self._unit_json[i]},"predicted":{_num_json(float(c.predicted[i]))},'
            f'"residual":{_num_json(float(c.residual[i]))},'
            f'"score":{_num_json(float(c.score[i]))},"cusum":{_num_json(float(c.cusum[i]))},'
            f'"prediction":{json.dumps(c.prediction if c.modelled[i] else "none")},'
            f'"alarm":"{STATE_NAMES[c.alarm[i]]}"'
            + ("}" if text is None else f',"text":{json.dumps(text)}}}')
        )

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
