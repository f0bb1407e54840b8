"""Subscriptions of one session: monitored items in batches and the driver's own publish loop.

This module owns the service calls of the subscription service set for the driver:

- `create_subscription`: one subscription per `subscribe` group, sent as a raw request so
  asyncua's own publish loop (one request in flight, generic decoding, a callback per
  subscription) never starts for it;
- `create_items`: monitored items created in batches of `items_per_call` (some PLCs, e.g. the
  S7-1200 class, degrade badly past ~200 per call); a batch the server refuses as too large is
  halved and retried; the result of every item is returned so one bad node id is one BAD tag;
- `PublishLoop`: keeps `in_flight` PublishRequests outstanding, acknowledges what it received
  with the next request, decodes each response with `drivers.opcua.fastdecode` and hands it to
  a callback. It ends (and says why) when the session or the link is gone.

It does not map values to samples or own the session (`drivers.opcua.driver` does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import struct_from_binary
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from drivers.opcua.fastdecode import Publish, decode_publish

_NOT_FOUND = {
    StatusCodes.BadNodeIdUnknown,
    StatusCodes.BadNodeIdInvalid,
    StatusCodes.BadAttributeIdInvalid,
}
_FILTER = {
    StatusCodes.BadDeadbandFilterInvalid,
    StatusCodes.BadFilterNotAllowed,
    StatusCodes.BadMonitoredItemFilterInvalid,
    StatusCodes.BadMonitoredItemFilterUnsupported,
}
_ACCESS = {StatusCodes.BadNotReadable, StatusCodes.BadUserAccessDenied}
_TOO_MANY = {StatusCodes.BadTooManyOperations, StatusCodes.BadTooManyMonitoredItems}
# The session or subscription is gone on the server: the link must be rebuilt.
_SESSION_GONE = {
    StatusCodes.BadSessionIdInvalid,
    StatusCodes.BadSessionClosed,
    StatusCodes.BadSessionNotActivated,
    StatusCodes.BadSubscriptionIdInvalid,
    StatusCodes.BadNoSubscription,
    StatusCodes.BadShutdown,
    StatusCodes.BadServerHalted,
    StatusCodes.BadSecureChannelClosed,
    StatusCodes.BadSecureChannelIdInvalid,
    StatusCodes.BadConnectionClosed,
}


def status_reason(code: int) -> str:
    """The sample reason for a Bad status code of a read or a monitored item."""
    if code in _NOT_FOUND:
        return "not_found"
    if code in _FILTER:
        return "filter"
    if code in _ACCESS:
        return "access"
    return "status"


def status_name(code: int) -> str:
    """The status code's symbolic name, e.g. BadNodeIdUnknown."""
    try:
        return str(ua.StatusCode(ua.UInt32(code)).name)
    except (KeyError, ValueError, AttributeError):
        return f"0x{code:08X}"


@dataclass(frozen=True)
class ItemRequest:
    """One monitored item to create: the handle identifies its notifications."""

    handle: int
    node_id: ua.NodeId
    sampling_interval_ms: float
    queue_size: int
    discard_oldest: bool
    deadband_type: str  # "none", "absolute", "percent"
    deadband: float

    def to_ua(self) -> ua.MonitoredItemCreateRequest:
        filt = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValue)
        if self.deadband_type == "absolute" and self.deadband > 0:
            filt.DeadbandType = ua.DeadbandType.Absolute
            filt.DeadbandValue = self.deadband
        elif self.deadband_type == "percent" and self.deadband > 0:
            filt.DeadbandType = ua.DeadbandType.Percent
            filt.DeadbandValue = self.deadband
        params = ua.MonitoringParameters(
            ClientHandle=self.handle,
            SamplingInterval=self.sampling_interval_ms,
            Filter=filt,
            QueueSize=self.queue_size,
            DiscardOldest=self.discard_oldest,
        )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=self.node_id, AttributeId=AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=params,
        )


async def _call(client: Client, request: Any, response_type: Any, timeout_s: float) -> Any:
    protocol = client.uaclient.protocol
    if protocol is None:
        raise ConnectionError("not connected")
    data = await protocol.send_request(request, timeout=timeout_s)
    rsp = struct_from_binary(response_type, data)
    rsp.ResponseHeader.ServiceResult.check()
    return rsp


async def create_subscription(
    client: Client, interval_ms: float, keepalive_count: int, timeout_s: float
) -> ua.CreateSubscriptionResult:
    """Create a subscription that only this driver's publish loop serves."""
    req = ua.CreateSubscriptionRequest()
    req.Parameters = ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=interval_ms,
        RequestedLifetimeCount=keepalive_count * 3,
        RequestedMaxKeepAliveCount=keepalive_count,
        MaxNotificationsPerPublish=0,
        PublishingEnabled=True,
        Priority=0,
    )
    rsp = await _call(client, req, ua.CreateSubscriptionResponse, timeout_s)
    result: ua.CreateSubscriptionResult = rsp.Parameters
    return result


async def delete_subscriptions(client: Client, ids: Sequence[int], timeout_s: float) -> None:
    """Delete subscriptions; errors are ignored (the session may be gone already)."""
    if not ids:
        return
    req = ua.DeleteSubscriptionsRequest()
    req.Parameters.SubscriptionIds = list(ids)
    with contextlib.suppress(UaError, OSError, ConnectionError, TimeoutError):
        async with asyncio.timeout(timeout_s + 0.5):
            await _call(client, req, ua.DeleteSubscriptionsResponse, timeout_s)


async def create_items(
    client: Client,
    subscription_id: int,
    items: Sequence[ItemRequest],
    items_per_call: int,
    timeout_s: float,
) -> tuple[list[int], int]:
    """Create `items` in batches; returns each item's status code value, in order, and the
    number of CreateMonitoredItems calls it took."""
    codes: list[int] = []
    calls = 0
    batch = max(1, items_per_call)
    i = 0
    while i < len(items):
        chunk = items[i : i + batch]
        req = ua.CreateMonitoredItemsRequest()
        req.Parameters = ua.CreateMonitoredItemsParameters(
            SubscriptionId=subscription_id,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            ItemsToCreate=[it.to_ua() for it in chunk],
        )
        calls += 1
        try:
            async with asyncio.timeout(timeout_s + 0.5):
                rsp = await _call(client, req, ua.CreateMonitoredItemsResponse, timeout_s)
        except UaStatusCodeError as exc:
            if exc.code in _TOO_MANY and batch > 1:
                batch = max(1, batch // 2)  # the server wants smaller calls
                continue
            raise
        results = rsp.Results
        if len(results) != len(chunk):
            raise UaError("CreateMonitoredItems: result count does not match the request")
        codes.extend(r.StatusCode.value for r in results)
        i += len(chunk)
    return codes, calls


async def read_values(
    client: Client, node_ids: Sequence[ua.NodeId], timeout_s: float
) -> list[ua.DataValue]:
    """One Read service call for the Value attribute of every node (both timestamps)."""
    params = ua.ReadParameters()
    params.TimestampsToReturn = ua.TimestampsToReturn.Both
    params.NodesToRead = [
        ua.ReadValueId(NodeId=nid, AttributeId=AttributeIds.Value) for nid in node_ids
    ]
    # asyncio.timeout, not wait_for: before Python 3.12 wait_for swallows a cancellation that
    # arrives as the read completes (cpython #86296), and a cancelled read must raise.
    async with asyncio.timeout(timeout_s + 0.5):
        dvs: list[ua.DataValue] = await client.uaclient.read(params)
    return dvs


def in_sequence(pubs: list[Publish]) -> list[Publish]:
    """Responses ordered by subscription and sequence number, across a wrap of the 32-bit
    counter (a keep-alive carries the next number: it sorts beside that message)."""
    if len(pubs) < 2:
        return pubs
    low = min(p.sequence_number for p in pubs)
    wrapped = max(p.sequence_number for p in pubs) - low > 1 << 31

    def key(p: Publish) -> tuple[int, int]:
        n = p.sequence_number
        return p.subscription_id, n + (1 << 32) if wrapped and n < 1 << 31 else n

    return sorted(pubs, key=key)


class PublishLoop:
    """`in_flight` PublishRequests outstanding; each decoded response goes to `on_publish`.

    `run()` returns normally never; it raises `ConnectionError` with the reason when the
    session, its subscriptions or the link are gone.
    """

    def __init__(
        self, client: Client, on_publish: Callable[[Publish], None], in_flight: int = 3
    ) -> None:
        self._client = client
        self._on_publish = on_publish
        self._in_flight = max(1, in_flight)
        self._acks: list[ua.SubscriptionAcknowledgement] = []
        self.responses = 0

    async def _one(self) -> Publish:
        protocol = self._client.uaclient.protocol
        if protocol is None:
            raise ConnectionError("not connected")
        req = ua.PublishRequest()
        req.Parameters.SubscriptionAcknowledgements, self._acks = self._acks, []
        # timeout 0: the server holds a PublishRequest until it has something to send.
        data = await protocol.send_request(req, timeout=0)
        return decode_publish(bytes(data))

    async def run(self) -> None:
        pending: set[asyncio.Task[Publish]] = set()
        try:
            while True:
                while len(pending) < self._in_flight:
                    pending.add(asyncio.ensure_future(self._one()))
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                fatal: ConnectionError | None = None
                pubs: list[Publish] = []
                for task in done:  # every result is retrieved, even after a fatal one
                    try:
                        pubs.append(task.result())
                    except UaStatusCodeError as exc:
                        if exc.code in _SESSION_GONE:
                            fatal = fatal or ConnectionError(f"publish: {status_name(exc.code)}")
                        elif exc.code == StatusCodes.BadTooManyPublishRequests:
                            self._in_flight = max(1, self._in_flight - 1)
                        # BadTimeout and the like: ask again
                    except (OSError, UaError) as exc:
                        fatal = fatal or ConnectionError(f"publish: {exc!r}")
                # Several responses done at once come out of a set: hand them on in sequence
                # order, or an older value could overwrite a newer one in the image.
                for pub in in_sequence(pubs):
                    if fatal is None:
                        fatal = self._handle(pub)
                if fatal is not None:
                    raise fatal
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            for task in pending:
                if not task.cancelled():
                    task.exception()  # retrieved: a late failure is expected here

    def _handle(self, pub: Publish) -> ConnectionError | None:
        """Acknowledge and hand on one response; the error when it says the session is gone."""
        self.responses += 1
        if pub.service_result >> 30 >= 2:
            if pub.service_result in _SESSION_GONE:
                return ConnectionError(f"publish: {status_name(pub.service_result)}")
            return None
        if pub.items or pub.others:
            self._acks.append(
                ua.SubscriptionAcknowledgement(
                    SubscriptionId=pub.subscription_id, SequenceNumber=pub.sequence_number
                )
            )
        self._on_publish(pub)
        return None
