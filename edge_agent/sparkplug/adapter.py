"""From the agent's per-tag deltas to Sparkplug metrics: declarations, points and DDATA.

Owns the mapping of one tag delta (a `Reporter.tag_doc` dict: tag, ts, source_ts, value,
quality, reason, unit, predicted, residual, score, cusum, prediction, alarm) to the metrics of
that tag, named `<tag>/<field>`:

    <tag>/value      Double  engUnit = the tag's unit; Quality from `quality`; time = source_ts
    <tag>/predicted  Double  engUnit = the tag's unit; Quality from `prediction`; time = ts
    <tag>/residual   Double  engUnit = the tag's unit; Quality from `prediction`; time = ts
    <tag>/score      Double  Quality from `prediction` (1.0 is the alarm threshold); time = ts
    <tag>/cusum      Double  Quality from `prediction`; time = ts
    <tag>/quality    String  good | uncertain | bad (the agent's own, lossless)
    <tag>/reason     String  why the quality is not good ("" when it is)
    <tag>/alarm      String  none | anomaly | quality

Quality codes (the specification has only BAD 0, GOOD 192, STALE 500): good -> GOOD,
uncertain -> STALE, bad -> BAD; for the model's outputs `prediction` good -> GOOD, uncertain
-> STALE, none -> BAD. The Quality property is sent only when it is not GOOD (the
specification's default), which keeps a DDATA close to the size of the JSON batch. A
missing number (JSON null or NaN) is a null metric (`is_null`).
It owns no session state; `SparkplugNode` assigns aliases and seq.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from edge_agent.sparkplug.metrics import DataType, MetricSpec, Point, Quality, is_missing
from edge_agent.sparkplug.node import Message, SparkplugNode

NUMERIC_FIELDS = ("value", "predicted", "residual", "score", "cusum")
TEXT_FIELDS = ("quality", "reason", "alarm")
_UNIT_FIELDS = {"value", "predicted", "residual"}
QUALITY_CODES = {"good": Quality.GOOD, "uncertain": Quality.STALE, "bad": Quality.BAD}
PREDICTION_CODES = {"good": Quality.GOOD, "uncertain": Quality.STALE, "none": Quality.BAD}


class DeltaError(ValueError):
    """A tag delta lacks a field or carries a value of the wrong kind."""


def tag_metric_specs(tag: str, unit: str) -> list[MetricSpec]:
    """The metrics one tag is declared with (in the DBIRTH of the device that holds it)."""
    specs = [
        MetricSpec(f"{tag}/{f}", DataType.DOUBLE, unit if f in _UNIT_FIELDS else None)
        for f in NUMERIC_FIELDS
    ]
    specs += [MetricSpec(f"{tag}/{f}", DataType.STRING) for f in TEXT_FIELDS]
    return specs


def device_metric_specs(tags: Iterable[tuple[str, str]]) -> list[MetricSpec]:
    """The metrics of a device holding these (tag, unit) pairs."""
    return [spec for tag, unit in tags for spec in tag_metric_specs(tag, unit)]


def _ms(delta: Mapping[str, object], key: str, tag: str) -> int:
    t = delta.get(key)
    if isinstance(t, bool) or not isinstance(t, int | float) or is_missing(t) or t < 0:
        raise DeltaError(f"tag {tag!r}: {key!r} must be Unix seconds, got {t!r}")
    return round(t * 1000)


def _number(delta: Mapping[str, object], key: str, tag: str) -> float | None:
    v = delta.get(key)
    if is_missing(v):
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise DeltaError(f"tag {tag!r}: {key!r} must be a number or null, got {v!r}")
    return float(v)


def _code(delta: Mapping[str, object], key: str, codes: Mapping[str, Quality], tag: str) -> str:
    v = delta.get(key)
    if not isinstance(v, str) or v not in codes:
        raise DeltaError(f"tag {tag!r}: {key!r} must be one of {sorted(codes)}, got {v!r}")
    return v


def delta_points(tag: str, delta: Mapping[str, object]) -> list[Point]:
    """The points of one tag delta (its "tag" key, if any, is not read: `tag` names it)."""
    ts = _ms(delta, "ts", tag)
    source_ts = _ms(delta, "source_ts", tag) if "source_ts" in delta else ts
    quality = _code(delta, "quality", QUALITY_CODES, tag)
    prediction = _code(delta, "prediction", PREDICTION_CODES, tag)
    points = [
        Point(f"{tag}/value", _number(delta, "value", tag), source_ts, QUALITY_CODES[quality])
    ]
    for f in NUMERIC_FIELDS[1:]:
        if f in delta:
            points.append(
                Point(f"{tag}/{f}", _number(delta, f, tag), ts, PREDICTION_CODES[prediction])
            )
    points.append(Point(f"{tag}/quality", quality, ts))
    for f in ("reason", "alarm"):
        if f in delta:
            text = delta[f]
            if not isinstance(text, str):
                raise DeltaError(f"tag {tag!r}: {f!r} must be a string, got {text!r}")
            points.append(Point(f"{tag}/{f}", text, ts))
    return points


def _tag_of(doc: Mapping[str, object]) -> str:
    tag = doc.get("tag")
    if not isinstance(tag, str) or not tag:
        raise DeltaError(f"a tag delta needs a non-empty 'tag' string, got {tag!r}")
    return tag


def ddata_from_deltas(
    node: SparkplugNode,
    device_id: str,
    docs: Iterable[Mapping[str, object]],
    *,
    historical: bool = False,
) -> Message:
    """One DDATA for these tag deltas (`Reporter.tag_doc` dicts, with their "tag" key).

    `historical` marks replayed deltas. Raises `DeltaError` for a malformed delta (before any
    state changes) and `SparkplugUsageError` when the node is not born or a tag was not
    declared on the device.
    """
    points = [p for doc in docs for p in delta_points(_tag_of(doc), doc)]
    return node.ddata(device_id, points, historical=historical)
