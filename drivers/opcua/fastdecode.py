"""A lean decoder for PublishResponse bodies: data-change notifications without asyncua's objects.

asyncua decodes every notification into dataclasses (MonitoredItemNotification, DataValue,
Variant, datetime), ~8-25 us each. A data-change notification on the wire is a client handle
and a DataValue; for scalar numbers, booleans and strings this module reads them with
`struct` straight into a tuple `(handle, value, status_code, source_ts, server_ts)` (timestamps
as Unix seconds, None when absent). Anything else falls back to asyncua's generic decoder at the
same byte offset: arrays and every other Variant type (`variant_from_binary`), notifications
that are not data changes (status changes, events: `extensionobject_from_binary`), and whole
responses of another shape (`struct_from_binary`). So the result equals asyncua's for every
Variant type; `tests/test_opcua_fastdecode.py` checks that round trip with hypothesis.

The DataValue fields are read in the order of OPC UA Part 6 (5.2.2.17): Value, StatusCode,
SourceTimestamp, SourcePicoseconds, ServerTimestamp, ServerPicoseconds.

It owns bytes -> tuples only; mapping handles to tags and status codes to quality is the
subscription's job (`drivers.opcua.subscription`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.ua_binary import (
    extensionobject_from_binary,
    struct_from_binary,
    variant_from_binary,
)

Item = tuple[int, Any, int, float | None, float | None]

_DCN = ObjectIds.DataChangeNotification_Encoding_DefaultBinary
_PUBLISH_RESPONSE = ObjectIds.PublishResponse_Encoding_DefaultBinary
_EPOCH_TICKS = 116_444_736_000_000_000  # 1970-01-01 in 100 ns ticks since 1601-01-01
_MAX_TICKS = 2_650_467_743_990_000_000  # 9999-12-31 23:59:59: asyncua's upper clamp

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_HANDLE_MASK = struct.Struct("<IB")
_SCALARS: dict[int, tuple[struct.Struct, int]] = {
    2: (struct.Struct("<b"), 1),
    3: (struct.Struct("<B"), 1),
    4: (struct.Struct("<h"), 2),
    5: (struct.Struct("<H"), 2),
    6: (struct.Struct("<i"), 4),
    7: (struct.Struct("<I"), 4),
    8: (struct.Struct("<q"), 8),
    9: (struct.Struct("<Q"), 8),
    10: (struct.Struct("<f"), 4),
    11: (struct.Struct("<d"), 8),
}
# The most common notification from a PLC: a Double with source and server timestamps
# (mask 0x0D) or with status too (0x0F): one unpack for the whole DataValue.
_DOUBLE_TS = struct.Struct("<Bdqq")
_DOUBLE_STATUS_TS = struct.Struct("<BdIqq")


@dataclass
class Publish:
    """One decoded PublishResponse."""

    service_result: int
    subscription_id: int
    sequence_number: int
    items: list[Item] = field(default_factory=list)
    others: list[Any] = field(default_factory=list)  # other notifications, asyncua objects
    available: list[int] = field(default_factory=list)


def ticks_to_unix(ticks: int) -> float:
    """OPC UA DateTime ticks to Unix seconds, with asyncua's clamping of out-of-range values."""
    if ticks < 0:
        ticks = 0
    elif ticks >= _MAX_TICKS:
        ticks = _MAX_TICKS
    return (ticks - _EPOCH_TICKS) / 1e7


def _nodeid(data: bytes, pos: int) -> tuple[int, int, int]:
    """(namespace, numeric id or -1, new position) of a binary NodeId."""
    enc = data[pos]
    if enc == 0:
        return 0, data[pos + 1], pos + 2
    if enc == 1:
        return data[pos + 1], _U16.unpack_from(data, pos + 2)[0], pos + 4
    if enc == 2:
        return _U16.unpack_from(data, pos + 1)[0], _U32.unpack_from(data, pos + 3)[0], pos + 7
    buf = Buffer(data, pos)
    from asyncua.ua.ua_binary import nodeid_from_binary  # noqa: PLC0415  # rare path

    nodeid_from_binary(buf)
    return -1, -1, buf.cur_pos


def _variant(data: bytes, pos: int) -> tuple[Any, int]:
    """(value, new position) of a Variant; scalars of fixed size and strings are read here."""
    enc = data[pos]
    if enc < 0x40:
        scalar = _SCALARS.get(enc)
        if scalar is not None:
            return scalar[0].unpack_from(data, pos + 1)[0], pos + 1 + scalar[1]
        if enc == 1:
            return data[pos + 1] != 0, pos + 2
        if enc == 12:
            n = _I32.unpack_from(data, pos + 1)[0]
            if n < 0:
                return None, pos + 5
            end = pos + 5 + n
            if end > len(data):
                raise ValueError("string past the end of the message")
            return data[pos + 5 : end].decode("utf-8", errors="surrogateescape"), end
        if enc == 0:
            return None, pos + 1
    buf = Buffer(data, pos)
    var = variant_from_binary(buf)
    return var.Value, buf.cur_pos


def decode_data_changes(data: bytes, pos: int, out: list[Item]) -> int:
    """Append the items of one DataChangeNotification body at `pos`; returns the end position."""
    n = _I32.unpack_from(data, pos)[0]
    pos += 4
    size = len(data)
    append = out.append
    epoch = _EPOCH_TICKS
    for _ in range(max(n, 0)):
        handle, mask = _HANDLE_MASK.unpack_from(data, pos)
        pos += 5
        if mask == 0x0D and data[pos] == 11 and pos + 25 <= size:
            _, value, src, srv = _DOUBLE_TS.unpack_from(data, pos)
            pos += 25
            if 0 <= src < _MAX_TICKS and 0 <= srv < _MAX_TICKS:
                append((handle, value, 0, (src - epoch) / 1e7, (srv - epoch) / 1e7))
            else:
                append((handle, value, 0, ticks_to_unix(src), ticks_to_unix(srv)))
            continue
        if mask == 0x0F and data[pos] == 11 and pos + 29 <= size:
            _, value, status, src, srv = _DOUBLE_STATUS_TS.unpack_from(data, pos)
            pos += 29
            append((handle, value, status, ticks_to_unix(src), ticks_to_unix(srv)))
            continue
        value = None
        status = 0
        src_ts = srv_ts = None
        if mask & 0x01:
            value, pos = _variant(data, pos)
        if mask & 0x02:
            status = _U32.unpack_from(data, pos)[0]
            pos += 4
        if mask & 0x04:
            src_ts = ticks_to_unix(_I64.unpack_from(data, pos)[0])
            pos += 8
        if mask & 0x10:
            pos += 2  # SourcePicoseconds: below the resolution of a float timestamp
        if mask & 0x08:
            srv_ts = ticks_to_unix(_I64.unpack_from(data, pos)[0])
            pos += 8
        if mask & 0x20:
            pos += 2
        append((handle, value, status, src_ts, srv_ts))
    if pos > size:
        raise ValueError("data change notification past the end of the message")
    return pos


def _generic(data: bytes) -> Publish:
    rsp: ua.PublishResponse = struct_from_binary(ua.PublishResponse, Buffer(data))
    p = rsp.Parameters
    msg = p.NotificationMessage
    out = Publish(rsp.ResponseHeader.ServiceResult.value, p.SubscriptionId, msg.SequenceNumber)
    out.available = list(p.AvailableSequenceNumbers or [])
    for notif in msg.NotificationData or []:
        if isinstance(notif, ua.DataChangeNotification):
            for item in notif.MonitoredItems:
                out.items.append(item_from_datavalue(item.ClientHandle, item.Value))
        else:
            out.others.append(notif)
    return out


def item_from_datavalue(handle: int, dv: ua.DataValue) -> Item:
    """The same tuple from an asyncua DataValue (the generic path, and tests)."""
    src = dv.SourceTimestamp.timestamp() if dv.SourceTimestamp is not None else None
    srv = dv.ServerTimestamp.timestamp() if dv.ServerTimestamp is not None else None
    value = dv.Value.Value if dv.Value is not None else None
    status = dv.StatusCode.value if dv.StatusCode is not None else 0
    return handle, value, status, src, srv


def decode_publish(data: bytes) -> Publish:
    """Decode a PublishResponse message body (starting at its type id)."""
    ns, ident, pos = _nodeid(data, 0)
    if ns != 0 or ident != _PUBLISH_RESPONSE:
        return _generic(data)
    buf = Buffer(data, pos)
    header: ua.ResponseHeader = struct_from_binary(ua.ResponseHeader, buf)
    pos = buf.cur_pos
    sub_id, n_avail = struct.unpack_from("<Ii", data, pos)
    pos += 8
    available = list(struct.unpack_from(f"<{n_avail}I", data, pos)) if n_avail > 0 else []
    pos += 4 * max(n_avail, 0)
    pos += 1  # MoreNotifications
    seq = _U32.unpack_from(data, pos)[0]
    pos += 12  # SequenceNumber, PublishTime
    out = Publish(header.ServiceResult.value, sub_id, seq, available=available)
    n_notif = _I32.unpack_from(data, pos)[0]
    pos += 4
    for _ in range(max(n_notif, 0)):
        start = pos
        ns, ident, pos = _nodeid(data, pos)
        encoding = data[pos]
        pos += 1
        if ns == 0 and ident == _DCN and encoding == 1:
            length = _I32.unpack_from(data, pos)[0]
            pos += 4
            end = decode_data_changes(data, pos, out.items)
            # A body longer than its items (trailing DiagnosticInfos) is skipped by its length.
            pos = pos + length if length >= 0 else end
            continue
        buf = Buffer(data, start)
        out.others.append(extensionobject_from_binary(buf))
        pos = buf.cur_pos
    return out
