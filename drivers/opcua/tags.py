"""What an OPC UA tag and a group are, and how a decoded value becomes a `Sample`.

Quality comes from the StatusCode severity bits (Good / Uncertain / Bad); `source_ts` from
SourceTimestamp (ServerTimestamp, then arrival time, when the server sends none). Arrays, text
and NaN are BAD with their reason, as `drivers.base.checked_sample` decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from drivers.base import ConfigError, Quality, Sample, checked_sample

if TYPE_CHECKING:
    from drivers.opcua.fastdecode import Item

DEFAULT_GROUP = "default"
_NAN = math.nan
WRITABLE_TYPE_NAMES: tuple[str, ...] = (
    "Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
    "Float", "Double", "String",
)  # fmt: skip
"""The OPC UA built-in types a value can be written as (what a tag's `data_type` takes); plain
names here so that checking a config needs no asyncua (`drivers.opcua.write` maps them)."""


@dataclass(frozen=True)
class OpcUaTag:
    """One variable. `node_id` is `ns=<i>;...` or `nsu=<namespace uri>;...`.

    `deadband` is the server-side DataChangeFilter deadband (`deadband_type` "absolute" in
    engineering units, or "percent" of the node's EURange); `queue_size` 0 means enough for
    every sample taken between two publishes. Only a `writable` tag is ever written
    (`drivers.opcua.write`), with the node's own DataType unless `data_type` names the built-in
    type to send instead (for a node whose DataType is abstract, e.g. BaseDataType).
    """

    name: str
    node_id: str
    sampling_interval_ms: float = 100.0
    deadband: float = 0.0
    deadband_type: Literal["none", "absolute", "percent"] = "absolute"
    queue_size: int = 0
    discard_oldest: bool = True
    group: str = DEFAULT_GROUP
    writable: bool = False
    data_type: str | None = None


@dataclass(frozen=True)
class OpcUaGroup:
    """Tags acquired together: one subscription, or one Read call every `interval_ms`."""

    name: str
    mode: Literal["subscribe", "poll"] = "subscribe"
    interval_ms: float = 100.0


def item_sample(tag: str, item: Item, now: float) -> Sample:
    """A Sample from one decoded notification or read result (see `fastdecode.Item`), with the
    ServerTimestamp kept in `server_ts` (NaN when the server sent none). One construction per
    notification: this runs for every value a subscription delivers."""
    _, value, code, src, srv = item
    server_ts = _NAN if srv is None else srv
    ts = src if src is not None else (srv if srv is not None else now)
    severity = code >> 30
    if severity >= 2:
        from drivers.opcua.subscription import status_reason  # noqa: PLC0415  # rare path

        return Sample(tag, _NAN, Quality.BAD, ts, now, status_reason(code), None, server_ts)
    if type(value) is not float:  # the common Double skips the checks below
        if isinstance(value, list):
            value = None  # arrays are not scalar tags
        s = checked_sample(tag, value, ts, now)
        if s.quality is not Quality.GOOD:
            return s._replace(server_ts=server_ts)
        value = s.value
    elif not math.isfinite(value):
        return Sample(tag, _NAN, Quality.BAD, ts, now, "nan", None, server_ts)
    if severity == 1:
        return Sample(tag, value, Quality.UNCERTAIN, ts, now, "uncertain", None, server_ts)
    return Sample(tag, value, Quality.GOOD, ts, now, "", None, server_ts)


def split_node_id(node_id: str) -> tuple[str | None, str]:
    """(namespace uri or None, rest) of a node id string."""
    if node_id.startswith("nsu="):
        uri, sep, rest = node_id[4:].partition(";")
        if not sep or not uri:
            raise ConfigError(f"node id {node_id!r}: expected nsu=<uri>;<identifier>")
        return uri, rest
    return None, node_id
