"""The lean PublishResponse decoder against asyncua's own encoder and decoder (hypothesis):
every builtin Variant type, arrays, status codes, timestamps, other notification kinds; and the
driver's mapping of decoded items to samples (quality, both timestamps)."""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.ua_binary import (
    nodeid_to_binary,
    struct_from_binary,
    struct_to_binary,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import Quality
from drivers.opcua import OpcUaDriver, OpcUaTag
from drivers.opcua.fastdecode import Item, decode_publish, item_from_datavalue

VT = ua.VariantType
_INTS = {
    VT.SByte: (-(2**7), 2**7 - 1),
    VT.Byte: (0, 2**8 - 1),
    VT.Int16: (-(2**15), 2**15 - 1),
    VT.UInt16: (0, 2**16 - 1),
    VT.Int32: (-(2**31), 2**31 - 1),
    VT.UInt32: (0, 2**32 - 1),
    VT.Int64: (-(2**63), 2**63 - 1),
    VT.UInt64: (0, 2**64 - 1),
}


def to_ua(d: datetime) -> ua.DateTime:
    return ua.DateTime(d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, UTC)


text = st.text(max_size=12)
dates = st.datetimes(min_value=datetime(1601, 1, 2), max_value=datetime(9999, 12, 30)).map(to_ua)


def sc(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def scalar(vt: ua.VariantType) -> st.SearchStrategy[Any]:
    """Values of one builtin type, in the Python form asyncua encodes."""
    if vt in _INTS:
        lo, hi = _INTS[vt]
        return st.integers(lo, hi)
    table: dict[ua.VariantType, st.SearchStrategy[Any]] = {
        VT.Boolean: st.booleans(),
        VT.Float: st.floats(width=32),
        VT.Double: st.floats(),
        VT.String: st.one_of(st.none(), text),
        VT.DateTime: dates,
        VT.Guid: st.uuids().map(lambda u: uuid.UUID(int=u.int)),
        VT.ByteString: st.one_of(st.none(), st.binary(max_size=16)),
        VT.XmlElement: text.map(ua.XmlElement),  # type: ignore[arg-type]  # a NewType of str
        VT.NodeId: st.one_of(
            st.builds(ua.NodeId, st.integers(0, 2**31 - 1), st.integers(0, 2**16 - 1)),
            st.builds(ua.NodeId, text, st.integers(0, 5)),
        ),
        VT.StatusCode: st.integers(0, 2**32 - 1).map(sc),
        VT.QualifiedName: st.builds(ua.QualifiedName, text, st.integers(0, 5)),
        VT.LocalizedText: st.builds(ua.LocalizedText, text),
        VT.ExtensionObject: st.builds(ua.Range, st.floats(), st.floats()),
    }
    return table[vt]


FIXED = [vt for vt in VT if vt.value <= 21 and vt is not VT.Null and vt is not VT.ExpandedNodeId]
FIXED.append(VT.ExtensionObject)


@st.composite
def variants(draw: st.DrawFn) -> ua.Variant:
    """Scalars and 1-D arrays of every builtin type, plus Null and 2-D Double arrays."""
    kind = draw(st.sampled_from(["scalar", "array", "matrix", "null"]))
    if kind == "null":
        return ua.Variant(None, VT.Null)
    vt = draw(st.sampled_from(FIXED))
    if kind == "scalar":
        return ua.Variant(draw(scalar(vt)), vt)
    if kind == "array":
        return ua.Variant(draw(st.lists(scalar(vt), max_size=4)), vt, is_array=True)
    rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    flat = draw(st.lists(st.floats(), min_size=rows * cols, max_size=rows * cols))
    matrix = [flat[r * cols : (r + 1) * cols] for r in range(rows)]
    return ua.Variant(matrix, VT.Double, Dimensions=[ua.Int32(rows), ua.Int32(cols)], is_array=True)


@st.composite
def data_values(draw: st.DrawFn) -> ua.DataValue:
    """Every combination of present fields. asyncua writes ServerTimestamp before
    SourcePicoseconds (Part 6 has the picoseconds right after their timestamp), so the two
    orders only differ when both are present: that combination is left out here."""
    dv = ua.DataValue(
        Value=draw(st.one_of(st.none(), variants())),
        StatusCode=sc(draw(st.sampled_from([0, 0x40000000, 0x80340000, 0x80000000]))),
        SourceTimestamp=draw(st.one_of(st.none(), dates)),
        ServerTimestamp=draw(st.one_of(st.none(), dates)),
    )
    if dv.ServerTimestamp is None and draw(st.booleans()):
        dv.SourcePicoseconds = ua.UInt16(draw(st.integers(0, 9999)))
    if draw(st.booleans()):
        dv.ServerPicoseconds = ua.UInt16(draw(st.integers(0, 9999)))
    return dv


def encode(groups: list[Any], sub_id: int = 9, seq: int = 3) -> bytes:
    rsp = ua.PublishResponse()
    rsp.Parameters.SubscriptionId = ua.UInt32(sub_id)
    rsp.Parameters.AvailableSequenceNumbers = [ua.UInt32(1), ua.UInt32(seq)]
    rsp.Parameters.NotificationMessage = ua.NotificationMessage(
        SequenceNumber=ua.UInt32(seq), PublishTime=ua.DateTime.now(UTC), NotificationData=groups
    )
    body = struct_to_binary(rsp)  # starts with the response's TypeId, as on the wire
    assert body[:4] == nodeid_to_binary(
        ua.FourByteNodeId(ua.Int32(ObjectIds.PublishResponse_Encoding_DefaultBinary))
    )
    return body


def reference(body: bytes) -> tuple[list[Item], list[Any]]:
    rsp = struct_from_binary(ua.PublishResponse, Buffer(body))
    items: list[Item] = []
    others: list[Any] = []
    for notif in rsp.Parameters.NotificationMessage.NotificationData:
        if isinstance(notif, ua.DataChangeNotification):
            items += [item_from_datavalue(i.ClientHandle, i.Value) for i in notif.MonitoredItems]
        else:
            others.append(notif)
    return items, others


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, ua.Range) and isinstance(b, ua.Range):
        return same(a.Low, b.Low) and same(a.High, b.High)
    return bool(a == b) and type(a) is type(b)


def same_ts(a: float | None, b: float | None) -> bool:
    # asyncua keeps microseconds; the lean path keeps the wire's 100 ns ticks (both as floats,
    # whose resolution far from 1970 is coarser than a microsecond).
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-15, abs_tol=2e-6)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(data_values(), max_size=6), min_size=1, max_size=3))
def test_matches_asyncua_for_every_variant_type(groups: list[list[ua.DataValue]]) -> None:
    """For any notification content the lean decoder returns what asyncua's decoder does."""
    handle = iter(range(1, 10_000))
    notifs: list[Any] = [
        ua.DataChangeNotification(
            MonitoredItems=[ua.MonitoredItemNotification(next(handle), dv) for dv in g]
        )
        for g in groups
    ]
    notifs.insert(1, ua.StatusChangeNotification(Status=sc(0x80AF0000)))
    body = encode(notifs)
    want, want_others = reference(body)
    got = decode_publish(body)
    assert (got.subscription_id, got.sequence_number, got.available) == (9, 3, [1, 3])
    assert len(got.items) == len(want)
    for g, w in zip(got.items, want, strict=True):
        assert g[0] == w[0] and g[2] == w[2]
        assert same(g[1], w[1]), (g[1], w[1])
        assert same_ts(g[3], w[3]) and same_ts(g[4], w[4])
    assert got.others == want_others


@pytest.mark.parametrize("value", [0.0, -1.5, math.inf, math.nan, 1e308])
def test_double_with_timestamps_fast_layout(value: float) -> None:
    """The common PLC layout (Double + both timestamps, with and without status) decodes."""
    ts = ua.DateTime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    dvs = [
        ua.DataValue(ua.Variant(value, VT.Double), SourceTimestamp=ts, ServerTimestamp=ts),
        ua.DataValue(
            ua.Variant(value, VT.Double),
            StatusCode=sc(0x40000000),
            SourceTimestamp=ts,
            ServerTimestamp=ts,
        ),
    ]
    body = encode(
        [
            ua.DataChangeNotification(
                MonitoredItems=[ua.MonitoredItemNotification(7, dv) for dv in dvs]
            )
        ]
    )
    got = decode_publish(body).items
    assert [(h, c) for h, _, c, _, _ in got] == [(7, 0), (7, 0x40000000)]
    for _, v, _, src, srv in got:
        assert same(v, value) and src == srv == pytest.approx(ts.timestamp(), abs=1e-6)


def test_truncated_message_is_an_error_not_garbage() -> None:
    """A body cut short raises (the publish loop counts it as a broken link), never misreads."""
    ts = ua.DateTime(2026, 1, 2, tzinfo=UTC)
    body = encode(
        [
            ua.DataChangeNotification(
                MonitoredItems=[
                    ua.MonitoredItemNotification(
                        1, ua.DataValue(ua.Variant("abc", VT.String), SourceTimestamp=ts)
                    )
                ]
            )
        ]
    )
    with pytest.raises(Exception):  # noqa: B017  # struct.error, ValueError or asyncua's
        decode_publish(body[:-20])


def test_driver_keeps_source_and_server_timestamps() -> None:
    """Through the driver's mapping (lean and generic paths) a sample keeps SourceTimestamp in
    `source_ts` and ServerTimestamp in `server_ts`; a missing ServerTimestamp is NaN."""
    src = ua.DateTime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    srv = ua.DateTime(2026, 1, 2, 3, 4, 9, 123456, tzinfo=UTC)
    uncertain = 0x40900000  # UncertainLastUsableValue
    dvs = [
        ua.DataValue(ua.Variant(1.5, VT.Double), SourceTimestamp=src, ServerTimestamp=srv),
        ua.DataValue(
            ua.Variant(2.5, VT.Double),
            StatusCode=sc(uncertain),
            SourceTimestamp=src,
            ServerTimestamp=srv,
        ),
        ua.DataValue(ua.Variant(3.5, VT.Double), SourceTimestamp=src),
        ua.DataValue(ua.Variant(4.5, VT.Double), ServerTimestamp=srv),
        ua.DataValue(ua.Variant("text", VT.String), SourceTimestamp=src, ServerTimestamp=srv),
        ua.DataValue(ua.Variant(7, VT.Int32), SourceTimestamp=src, ServerTimestamp=srv),
    ]
    names = [f"t{i}" for i in range(len(dvs))]
    driver = OpcUaDriver("d", "opc.tcp://127.0.0.1:1/", [OpcUaTag(n, f"ns=2;s={n}") for n in names])
    queue: asyncio.Queue[Any] = asyncio.Queue()
    driver._queue = queue
    driver._handle_names = ["", *names]
    items = [ua.MonitoredItemNotification(i + 1, dv) for i, dv in enumerate(dvs)]
    driver._on_publish(decode_publish(encode([ua.DataChangeNotification(MonitoredItems=items)])))
    got = {s.tag: s for s in queue.get_nowait()}
    t_src, t_srv = src.timestamp(), srv.timestamp()
    want = {  # tag: (value, quality, reason, source_ts, server_ts)
        "t0": (1.5, Quality.GOOD, "", t_src, t_srv),
        "t1": (2.5, Quality.UNCERTAIN, "uncertain", t_src, t_srv),
        "t2": (3.5, Quality.GOOD, "", t_src, math.nan),
        "t3": (4.5, Quality.GOOD, "", t_srv, t_srv),  # no source time: the server's stands in
        "t4": (math.nan, Quality.BAD, "type", t_src, t_srv),
        "t5": (7.0, Quality.GOOD, "", t_src, t_srv),
    }
    for name, (value, quality, reason, s_ts, v_ts) in want.items():
        s = got[name]
        assert (s.quality, s.reason) == (quality, reason), s
        assert same(s.value, value), s
        assert s.source_ts == pytest.approx(s_ts, abs=1e-6), s
        if math.isnan(v_ts):
            assert math.isnan(s.server_ts), s
        else:
            assert s.server_ts == pytest.approx(v_ts, abs=1e-6), s
