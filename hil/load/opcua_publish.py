"""Hot path of the lean OPC UA load server: data changes patched into a pre-encoded template.

The values the server serves are a function of the item and the cycle of a clock of period
`period_ms`, aligned on the Unix epoch: cycle `k` happens at `k * period_ms` ms since 1970, and
item `i` (node `ns=2;s=v<i>`) has the value `value(i, k) = i + (k mod 2**20) / 1024` then
(exact in a Double, different in every cycle). A notification's SourceTimestamp is its cycle's
time, so a client can recompute every value it receives (`cycle_of`, `value`).

A subscription's monitored items live in one NumPy record array laid out exactly as the
MonitoredItemNotifications of a DataChangeNotification are on the wire (ClientHandle, the
DataValue mask 0x0D, the Variant type Double, the Double, the source and the server timestamp:
30 bytes each). A publishing cycle writes the value and timestamp columns as arrays and slices
the bytes out: a cycle of 1,000 items costs tens of microseconds. Both timestamps are always
returned, whatever TimestampsToReturn asked. The message around the items (PublishResponse,
NotificationMessage, the chunk headers of Part 6) is packed with `struct`; the tests check it
against asyncua's decoder. The rest of the server (`hil.load.opcua_server`) uses asyncua's
encoder for everything else.
"""

from __future__ import annotations

import asyncio
import struct
from collections import OrderedDict
from typing import Final

import numpy as np
import numpy.typing as npt
from asyncua.ua.object_ids import ObjectIds

EPOCH_TICKS: Final = 116_444_736_000_000_000  # 1970-01-01 in 100 ns ticks since 1601
VALUE_WRAP: Final = 1 << 20
ITEM: Final = np.dtype(
    [("h", "<u4"), ("m", "u1"), ("t", "u1"), ("v", "<f8"), ("s", "<i8"), ("r", "<i8")]
)
ITEM_SIZE: Final = ITEM.itemsize  # 30
RETAINED: Final = 16  # unacknowledged notification messages kept for Republish
_DV_MASK: Final = 0x0D  # value, source timestamp, server timestamp
_DOUBLE: Final = 11
_CHUNK_HDR: Final = struct.Struct("<3scIIIII")  # type, chunk, size, channel, token, seq, request
CHUNK_OVERHEAD: Final = _CHUNK_HDR.size  # 24
_TYPE_PUBLISH: Final = struct.pack("<BBH", 1, 0, ObjectIds.PublishResponse_Encoding_DefaultBinary)
_TYPE_REPUBLISH: Final = struct.pack(
    "<BBH", 1, 0, ObjectIds.RepublishResponse_Encoding_DefaultBinary
)
_TYPE_DCN: Final = struct.pack(
    "<BBH", 1, 0, ObjectIds.DataChangeNotification_Encoding_DefaultBinary
)
# ResponseHeader: Timestamp, RequestHandle, ServiceResult, no diagnostics, empty string
# table, no additional header.
_RSP_HDR: Final = struct.Struct("<qIIBi3s")
_MSG_HEAD: Final = struct.Struct("<Iqi")  # SequenceNumber, PublishTime, NotificationData count
_DCN_HEAD: Final = struct.Struct("<4sBii")  # type id, binary body, body length, item count
_NO_DIAG: Final = struct.pack("<i", 0)
MESSAGE_OVERHEAD: Final = 128  # bytes of a PublishResponse besides its items (and a few acks)


def value(item: int, cycle: int) -> float:
    """The value of item `item` in cycle `cycle`."""
    return item + (cycle % VALUE_WRAP) / 1024.0


def values(items: npt.NDArray[np.int64], cycle: int) -> npt.NDArray[np.float64]:
    """`value` of every item of `items` in cycle `cycle`."""
    return items.astype(np.float64) + (cycle % VALUE_WRAP) / 1024.0


def cycle_ticks(cycle: int, period_ms: int) -> int:
    """The time of cycle `cycle` as an OPC UA DateTime (100 ns ticks since 1601)."""
    return EPOCH_TICKS + cycle * period_ms * 10_000


def cycle_of(unix_s: float, period_ms: int) -> int:
    """The cycle whose time is `unix_s` (a source timestamp in Unix seconds)."""
    return round(unix_s * 1000.0 / period_ms)


def now_ticks(unix_s: float) -> int:
    return EPOCH_TICKS + int(unix_s * 1e7)


def response_header(request_handle: int, ticks: int, status: int = 0) -> bytes:
    """An encoded ResponseHeader."""
    return _RSP_HDR.pack(ticks, request_handle, status, 0, 0, b"\0\0\0")


def notification_message(seq: int, ticks: int, items: bytes, n_items: int) -> bytes:
    """An encoded NotificationMessage with one DataChangeNotification of `n_items` items."""
    body_len = 4 + len(items) + 4
    return b"".join(
        (
            _MSG_HEAD.pack(seq, ticks, 1),
            _DCN_HEAD.pack(_TYPE_DCN, 1, body_len, n_items),
            items,
            _NO_DIAG,
        )
    )


def keepalive_message(seq: int, ticks: int) -> bytes:
    """An encoded NotificationMessage without notifications (a keep-alive)."""
    return _MSG_HEAD.pack(seq, ticks, 0)


def _uint32_array(xs: list[int]) -> bytes:
    return struct.pack(f"<i{len(xs)}I", len(xs), *xs)


def publish_response(
    request_handle: int,
    *,
    ticks: int,
    sub_id: int,
    available: list[int],
    more: bool,
    message: bytes,
    ack_results: list[int],
) -> bytes:
    """An encoded PublishResponse (with its type id) around an encoded NotificationMessage."""
    return b"".join(
        (
            _TYPE_PUBLISH,
            response_header(request_handle, ticks),
            struct.pack("<I", sub_id),
            _uint32_array(available),
            b"\1" if more else b"\0",
            message,
            _uint32_array(ack_results),
            _NO_DIAG,
        )
    )


def republish_response(request_handle: int, ticks: int, message: bytes) -> bytes:
    """An encoded RepublishResponse (with its type id) carrying a retained message."""
    return b"".join((_TYPE_REPUBLISH, response_header(request_handle, ticks), message))


def frame(
    body: bytes, *, channel: int, token: int, request_id: int, seq: int, max_chunk: int
) -> tuple[bytes, int]:
    """`body` as MSG chunks of at most `max_chunk` bytes (policy None), sequence numbers from
    `seq`; returns the bytes and the number of chunks."""
    step = max_chunk - CHUNK_OVERHEAD
    view = memoryview(body)
    parts: list[bytes | memoryview] = []
    n = 0
    for lo in range(0, max(len(body), 1), step):
        part = view[lo : lo + step]
        last = lo + step >= len(body)
        parts.append(
            _CHUNK_HDR.pack(
                b"MSG",
                b"F" if last else b"C",
                CHUNK_OVERHEAD + len(part),
                channel,
                token,
                (seq + n - 1) % 0xFFFFFFFF + 1,
                request_id,
            )
        )
        parts.append(part)
        n += 1
    return b"".join(parts), n


class Subscription:
    """One subscription's monitored items, sequence numbers and retained messages."""

    def __init__(self, sub_id: int, step: int, keepalive: int, lifetime: int, max_notif: int):
        self.id = sub_id
        self.step = step  # publishing interval in server cycles
        self.keepalive = keepalive
        self.lifetime = lifetime
        self.max_notif = max_notif  # 0: no limit
        self.enabled = True
        self.next_item_id = 1
        self.item_ids: npt.NDArray[np.uint32] = np.zeros(0, np.uint32)
        self.nodes: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self.rec: npt.NDArray[np.void] = np.zeros(0, ITEM)
        self.seq = 1  # the next notification message's sequence number
        self.retained: OrderedDict[int, bytes] = OrderedDict()
        self.ready: list[tuple[int, bytes, int]] = []  # (sequence number, message, items)
        self.keepalive_due = False
        self.idle_cycles = 0  # cycles since the last message sent
        self.cycles = 0
        self.skipped = 0  # cycles not reported because the client had not fetched the last
        self.next_cycle = 0
        self.handle: asyncio.TimerHandle | None = None  # the timer of its next cycle

    def add_items(self, handles: list[int], nodes: list[int]) -> list[int]:
        """Append monitored items; returns their ids."""
        n = len(handles)
        ids = np.arange(self.next_item_id, self.next_item_id + n, dtype=np.uint32)
        self.next_item_id += n
        rec = np.zeros(n, ITEM)
        rec["h"] = handles
        rec["m"] = _DV_MASK
        rec["t"] = _DOUBLE
        self.item_ids = np.concatenate((self.item_ids, ids))
        self.nodes = np.concatenate((self.nodes, np.asarray(nodes, np.int64)))
        self.rec = np.concatenate((self.rec, rec))
        return [int(i) for i in ids]

    def remove_items(self, ids: list[int]) -> list[bool]:
        """Delete monitored items by id; returns for each whether it existed."""
        wanted = np.asarray(ids, np.int64)
        found = np.isin(wanted, self.item_ids)
        keep = ~np.isin(self.item_ids, wanted)
        self.item_ids, self.nodes, self.rec = self.item_ids[keep], self.nodes[keep], self.rec[keep]
        return [bool(f) for f in found]

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = seq % 0xFFFFFFFF + 1
        return seq

    def cycle(self, cycle: int, period_ms: int, ticks: int, max_items: int) -> int:
        """Encode cycle `cycle`'s data changes into `ready` (split at `max_items` per
        message); returns the number of notifications queued."""
        self.cycles += 1
        n = len(self.rec)
        if self.ready:
            self.skipped += 1  # the client has not fetched the last cycle yet
            return 0
        if not self.enabled or n == 0:
            return 0
        rec = self.rec
        rec["v"] = values(self.nodes, cycle)
        rec["s"] = cycle_ticks(cycle, period_ms)
        rec["r"] = ticks
        per = n if self.max_notif == 0 else min(n, self.max_notif)
        per = max(1, min(per, max_items))
        for lo in range(0, n, per):
            part = rec[lo : lo + per]
            seq = self._next_seq()
            msg = notification_message(seq, ticks, part.tobytes(), len(part))
            self.retained[seq] = msg
            self.ready.append((seq, msg, len(part)))
        while len(self.retained) > RETAINED:
            self.retained.popitem(last=False)
        return n

    def acknowledge(self, seq: int) -> bool:
        return self.retained.pop(seq, None) is not None
