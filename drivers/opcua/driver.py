"""The OPC UA driver: one asyncua session, bulk reads and a lean data-change subscription.

This module owns the link to one OPC UA server and the mapping of asyncua's results and
exceptions onto the driver contract (`drivers.base`). asyncua's auto-reconnect stays off; its
connection supervisor only reports a lost link (socket closed, or the 1 s server-state probe
failing), which this driver turns into `ConnectError`.

Subscriptions bypass asyncua's `Subscription` object: the publish callback registered on the
session decodes each PublishResult straight into one batch of samples and appends it to an
unbounded queue. That costs no task per notification and never drops one (the handler object
spawns a task per notification; the iterator drops the oldest when its queue is full).

Quality comes from the StatusCode severity bits (Good / Uncertain / Bad); `source_ts` from
SourceTimestamp (ServerTimestamp, then arrival time, when the server sends none).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError

from drivers.base import ConfigError, ConnectError, Quality, Sample, checked_sample

log = structlog.get_logger(__name__)

_GUARD_S = 0.5
_BAD_NODE = {
    StatusCodes.BadNodeIdUnknown,
    StatusCodes.BadNodeIdInvalid,
    StatusCodes.BadAttributeIdInvalid,
}


@dataclass(frozen=True)
class OpcUaTag:
    """One variable. `node_id` is `ns=<i>;...` or `nsu=<namespace uri>;...`."""

    name: str
    node_id: str
    sampling_interval_ms: float = 100.0
    deadband_abs: float = 0.0


def _status_sample(tag: str, dv: ua.DataValue, now: float) -> Sample:
    """A Sample from one DataValue (read result or notification)."""
    src_dt = dv.SourceTimestamp or dv.ServerTimestamp
    src = src_dt.timestamp() if src_dt is not None else now
    code = dv.StatusCode.value if dv.StatusCode is not None else 0
    severity = code >> 30
    if severity >= 2:
        reason = "not_found" if code in _BAD_NODE else "status"
        return Sample(tag, math.nan, Quality.BAD, src, now, reason)
    variant = dv.Value
    value: object = variant.Value if variant is not None else None
    if isinstance(value, list):
        value = None  # arrays are not scalar tags
    s = checked_sample(tag, value, src, now)
    if severity == 1 and s.quality is Quality.GOOD:
        return Sample(tag, s.value, Quality.UNCERTAIN, src, now, "uncertain")
    return s


def _split_node_id(node_id: str) -> tuple[str | None, str]:
    """(namespace uri or None, rest) of a node id string."""
    if node_id.startswith("nsu="):
        uri, sep, rest = node_id[4:].partition(";")
        if not sep or not uri:
            raise ConfigError(f"node id {node_id!r}: expected nsu=<uri>;<identifier>")
        return uri, rest
    return None, node_id


class OpcUaDriver:
    """Reads or subscribes `tags` on the OPC UA server at `endpoint` (`Driver`, `Subscribable`)."""

    def __init__(
        self,
        name: str,
        endpoint: str,
        tags: Sequence[OpcUaTag],
        *,
        publishing_interval_ms: float = 100.0,
        timeout_s: float = 5.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not tags:
            raise ConfigError(f"driver {name!r}: no tags")
        if len({t.name for t in tags}) != len(tags):
            raise ConfigError(f"driver {name!r}: duplicate tag names")
        if timeout_s <= 0 or publishing_interval_ms <= 0:
            raise ConfigError(f"driver {name!r}: timeout_s and publishing_interval_ms must be > 0")
        for t in tags:
            uri, rest = _split_node_id(t.node_id)
            try:
                ua.NodeId.from_string(rest if uri is None else f"ns=0;{rest}")
            except (ValueError, UaError) as exc:
                raise ConfigError(f"driver {name!r}: tag {t.name!r}: bad node id") from exc
        self.name = name
        self.endpoint = endpoint
        self.publishing_interval_ms = publishing_interval_ms
        self.timeout_s = timeout_s
        self._tags = tuple(tags)
        self._names = tuple(t.name for t in tags)
        self._username = username
        self._password = password
        self._client: Client | None = None
        self._node_ids: list[ua.NodeId | None] = []
        self._lost: asyncio.Event = asyncio.Event()
        self._log = log.bind(driver=name)

    @property
    def tags(self) -> Sequence[str]:
        """Tag names in configuration order."""
        return self._names

    def _timeout(self) -> float:
        return self.timeout_s + _GUARD_S

    async def connect(self) -> None:
        """Open a session and resolve namespace URIs; ConnectError when that fails."""
        await self.aclose()
        client = Client(self.endpoint, timeout=self.timeout_s, watchdog_intervall=1.0)
        if self._username is not None:
            client.set_user(self._username)
        if self._password is not None:
            client.set_password(self._password)
        lost = asyncio.Event()

        async def on_lost(exc: Exception) -> None:
            del exc
            lost.set()

        client.connection_lost_callback = on_lost
        try:
            await asyncio.wait_for(client.connect(), self._timeout())
            namespaces = await asyncio.wait_for(client.get_namespace_array(), self._timeout())
        except (TimeoutError, OSError, UaError) as exc:
            await self._drop(client)
            raise ConnectError(f"opcua {self.endpoint}: connect failed") from exc
        self._node_ids = [self._resolve(t.node_id, namespaces) for t in self._tags]
        self._lost = lost
        self._client = client

    @staticmethod
    def _resolve(node_id: str, namespaces: Sequence[str]) -> ua.NodeId | None:
        uri, rest = _split_node_id(node_id)
        if uri is None:
            return ua.NodeId.from_string(rest)
        if uri not in namespaces:
            return None
        return ua.NodeId.from_string(f"ns={namespaces.index(uri)};{rest}")

    def _live(self) -> Client:
        client = self._client
        if client is None:
            raise ConnectError(f"opcua {self.endpoint}: not connected")
        if self._lost.is_set():
            raise ConnectError(f"opcua {self.endpoint}: connection lost")
        return client

    async def read(self) -> list[Sample]:
        """Read every tag in one Read service call."""
        client = self._live()
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.NodesToRead = [
            ua.ReadValueId(NodeId=nid, AttributeId=AttributeIds.Value)
            for nid in self._node_ids
            if nid is not None
        ]
        try:
            dvs = await asyncio.wait_for(client.uaclient.read(params), self._timeout())
        except (TimeoutError, OSError, UaError) as exc:
            raise ConnectError(f"opcua {self.endpoint}: read failed") from exc
        now = time.time()
        it = iter(dvs)
        out: list[Sample] = []
        for name, nid in zip(self._names, self._node_ids, strict=True):
            if nid is None:
                out.append(Sample(name, math.nan, Quality.BAD, now, now, "not_found"))
            else:
                out.append(_status_sample(name, next(it), now))
        return out

    async def subscribe(self) -> AsyncIterator[list[Sample]]:
        """Yield batches of changed samples: BAD ones for tags that cannot be monitored, then the
        initial value of every other tag, then changes. Raises ConnectError when the link is lost.
        """
        client = self._live()
        queue: asyncio.Queue[list[Sample] | None] = asyncio.Queue()
        by_handle: dict[int, str] = {}
        last_publish = time.monotonic()

        async def on_publish(result: ua.PublishResult) -> None:
            nonlocal last_publish
            last_publish = time.monotonic()
            data = result.NotificationMessage.NotificationData
            if not data:
                return  # keep-alive
            now = time.time()
            batch: list[Sample] = []
            for notif in data:
                if isinstance(notif, ua.DataChangeNotification):
                    for item in notif.MonitoredItems:
                        tag = by_handle.get(item.ClientHandle)
                        if tag is not None:
                            batch.append(_status_sample(tag, item.Value, now))
                elif isinstance(notif, ua.StatusChangeNotification):
                    queue.put_nowait(None)  # subscription gone: link lost or server shut down
            if batch:
                queue.put_nowait(batch)

        keepalive_count = max(1, math.ceil(1000.0 / self.publishing_interval_ms))
        sparams = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=self.publishing_interval_ms,
            RequestedLifetimeCount=keepalive_count * 10,
            RequestedMaxKeepAliveCount=keepalive_count,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        try:
            sub = await asyncio.wait_for(
                client.uaclient.create_subscription(sparams, on_publish), self._timeout()
            )
            initial = await self._create_items(client, sub.SubscriptionId, by_handle)
        except (TimeoutError, OSError, UaError) as exc:
            raise ConnectError(f"opcua {self.endpoint}: subscribe failed") from exc
        # A silent server (no data, no keep-alive) counts as lost after this long.
        window_s = 2.0 * keepalive_count * sub.RevisedPublishingInterval / 1000.0 + self.timeout_s
        lost_wait = asyncio.ensure_future(self._lost.wait())
        try:
            if initial:
                yield initial
            while True:
                get = asyncio.ensure_future(queue.get())
                try:
                    await asyncio.wait(
                        [get, lost_wait], timeout=window_s, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    if not get.done():
                        get.cancel()
                if get.done() and not get.cancelled():
                    batch = get.result()
                    if batch is None:
                        raise ConnectError(f"opcua {self.endpoint}: subscription lost")
                    yield batch
                    continue
                if self._lost.is_set():
                    raise ConnectError(f"opcua {self.endpoint}: connection lost")
                if time.monotonic() - last_publish > window_s:
                    raise ConnectError(f"opcua {self.endpoint}: no publish response")
        finally:
            lost_wait.cancel()
            if not self._lost.is_set() and self._client is client:
                with contextlib.suppress(TimeoutError, OSError, UaError):
                    await asyncio.wait_for(
                        client.uaclient.delete_subscriptions([sub.SubscriptionId]), self._timeout()
                    )

    async def _create_items(
        self, client: Client, subscription_id: int, by_handle: dict[int, str]
    ) -> list[Sample]:
        """Create one monitored item per tag; returns BAD samples for the ones that failed."""
        now = time.time()
        bad: list[Sample] = []
        requests: list[ua.MonitoredItemCreateRequest] = []
        handles: list[int] = []
        for handle, (tag, nid) in enumerate(zip(self._tags, self._node_ids, strict=True), 1):
            if nid is None:
                bad.append(Sample(tag.name, math.nan, Quality.BAD, now, now, "not_found"))
                continue
            filt = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValue)
            if tag.deadband_abs > 0:
                filt.DeadbandType = ua.DeadbandType.Absolute
                filt.DeadbandValue = tag.deadband_abs
            mparams = ua.MonitoringParameters(
                ClientHandle=handle,
                SamplingInterval=tag.sampling_interval_ms,
                Filter=filt,
                # Enough room for every sample taken between two publishes.
                QueueSize=max(
                    1, math.ceil(self.publishing_interval_ms / max(tag.sampling_interval_ms, 1.0))
                ),
                DiscardOldest=True,
            )
            requests.append(
                ua.MonitoredItemCreateRequest(
                    ItemToMonitor=ua.ReadValueId(NodeId=nid, AttributeId=AttributeIds.Value),
                    MonitoringMode=ua.MonitoringMode.Reporting,
                    RequestedParameters=mparams,
                )
            )
            handles.append(handle)
            by_handle[handle] = tag.name
        if requests:
            params = ua.CreateMonitoredItemsParameters(
                SubscriptionId=subscription_id,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                ItemsToCreate=requests,
            )
            results: list[Any] = await asyncio.wait_for(
                client.uaclient.create_monitored_items(params), self._timeout()
            )
            for handle, res in zip(handles, results, strict=True):
                if not res.StatusCode.is_good():
                    name = by_handle.pop(handle)
                    code = res.StatusCode.value
                    reason = "not_found" if code in _BAD_NODE else "status"
                    bad.append(Sample(name, math.nan, Quality.BAD, now, now, reason))
        return bad

    async def aclose(self) -> None:
        """Close the session (bounded wait), then the socket. Idempotent; never raises."""
        client, self._client = self._client, None
        if client is not None:
            await self._drop(client)

    async def _drop(self, client: Client) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), self._timeout())
        except (TimeoutError, OSError, UaError, ConnectionError):
            client.disconnect_socket()
        except Exception:  # teardown of a broken link must not raise
            client.disconnect_socket()
