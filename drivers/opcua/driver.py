"""The OPC UA driver: one asyncua session, bulk reads, subscription and polling groups.

This module owns the link to one OPC UA server and the mapping of asyncua's results and
exceptions onto the driver contract (`drivers.base`). asyncua's auto-reconnect stays off; the
acquisition loop (`edge_agent.acquire`) owns reconnects. The link counts as lost (the
subscription raises `ConnectError` at once) when the socket closes, when asyncua's 1-probe-per-
`keepalive_s` server-state read fails, when a publish answer says the session or subscription
is gone, or when no publish response (data or keep-alive) arrives within twice the keep-alive
period. Every `connect` opens a fresh session, and every `subscribe` re-creates the
subscriptions and all monitored items; `aclose` closes the session (CloseSession deletes its
subscriptions) before dropping the socket, and the requested session timeout is short
(`session_timeout_s`), so sessions do not pile up on the server across reconnects.

Tags belong to groups (`OpcUaGroup`): a `subscribe` group is one subscription with its own
publishing interval whose monitored items are created in batches (`items_per_call`); a `poll`
group is read in one Read call per interval. Per-item failures (a node that does not exist, a
filter the server refuses) are BAD samples with a reason, counted in `item_errors`.
Writes (`write`) go only to tags declared writable; the exchange is `drivers.opcua.write`.

Quality comes from the StatusCode severity bits (Good / Uncertain / Bad); `source_ts` from
SourceTimestamp (ServerTimestamp, then arrival time, when the server sends none); `server_ts`
from ServerTimestamp (NaN when the server sends none). Reads and monitored items ask for both.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from drivers.base import ConfigError, ConnectError, Quality, Sample
from drivers.opcua import channel
from drivers.opcua import security as secmod
from drivers.opcua import subscription as subs
from drivers.opcua.fastdecode import Publish, item_from_datavalue
from drivers.opcua.tags import (
    DEFAULT_GROUP,
    OpcUaGroup,
    OpcUaTag,
    item_sample,
    split_node_id,
)
from drivers.opcua.write import WriteRefusedError, WriteResult, write_node

log = structlog.get_logger(__name__)

_GUARD_S = 0.5
_INF = math.inf
_NAN = math.nan


class OpcUaDriver:
    """Reads or subscribes `tags` on the OPC UA server at `endpoint` (`Driver`, `Subscribable`).

    `security` None means the None policy without endpoint discovery; a `Security` (what the
    config builds) picks the endpoint as `drivers.opcua.security` describes.
    """

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
        groups: Sequence[OpcUaGroup] = (),
        items_per_call: int = 200,
        security: secmod.Security | None = None,
        session_timeout_s: float = 30.0,
        keepalive_s: float = 1.0,
        publish_in_flight: int = 3,
    ) -> None:
        if not tags:
            raise ConfigError(f"driver {name!r}: no tags")
        if len({t.name for t in tags}) != len(tags):
            raise ConfigError(f"driver {name!r}: duplicate tag names")
        if timeout_s <= 0 or publishing_interval_ms <= 0:
            raise ConfigError(f"driver {name!r}: timeout_s and publishing_interval_ms must be > 0")
        if items_per_call < 1:
            raise ConfigError(f"driver {name!r}: items_per_call must be >= 1")
        by_group = {g.name: g for g in groups}
        by_group.setdefault(
            DEFAULT_GROUP, OpcUaGroup(DEFAULT_GROUP, "subscribe", publishing_interval_ms)
        )
        for t in tags:
            if t.group not in by_group:
                raise ConfigError(f"driver {name!r}: tag {t.name!r}: unknown group {t.group!r}")
            uri, rest = split_node_id(t.node_id)
            try:
                ua.NodeId.from_string(rest if uri is None else f"ns=0;{rest}")
            except (ValueError, UaError) as exc:
                raise ConfigError(f"driver {name!r}: tag {t.name!r}: bad node id") from exc
        self.name = name
        self.endpoint = endpoint
        self.publishing_interval_ms = publishing_interval_ms
        self.timeout_s = timeout_s
        self.items_per_call = items_per_call
        self.session_timeout_s = session_timeout_s
        self.keepalive_s = keepalive_s
        self.publish_in_flight = publish_in_flight
        self.security = security
        self._tags = tuple(tags)
        self._names = tuple(t.name for t in tags)
        self._groups = {g: by_group[g] for g in dict.fromkeys(t.group for t in tags)}
        self._username = username
        self._password = password
        self._client: Client | None = None
        self._node_ids: list[ua.NodeId | None] = []
        self._lost: asyncio.Event = asyncio.Event()
        self._queue: asyncio.Queue[list[Sample] | BaseException] | None = None
        self._warned_insecure = False
        self._log = log.bind(driver=name)
        # Counted per reason: monitored items the server refused, and notifications received.
        self.item_errors: Counter[str] = Counter()
        self.notifications = 0
        self.item_calls = 0  # CreateMonitoredItems calls made
        self.chosen: tuple[str, str] = ("None", "None")  # security policy and mode in use

    @property
    def tags(self) -> Sequence[str]:
        """Tag names in configuration order."""
        return self._names

    @property
    def client(self) -> Client:
        """The live asyncua client (for tools such as browse); ConnectError when not connected."""
        return self._live()

    def _timeout(self) -> float:
        return self.timeout_s + _GUARD_S

    async def _secure(self, client: Client) -> None:
        """Choose the endpoint and set up the channel's security on `client`."""
        if self.security is None:
            return
        choice = await channel.apply_security(client, self.security, self.endpoint, self._timeout())
        self.chosen = (choice.policy, choice.mode)
        if choice.policy == "None" and self.security.policy == "auto" and not self._warned_insecure:
            self._warned_insecure = True
            self._log.warning(
                "opcua server offers no security, using policy None", endpoint=self.endpoint
            )

    async def connect(self) -> None:
        """Open a session and resolve namespace URIs; ConnectError when that fails."""
        await self.aclose()
        client = Client(self.endpoint, timeout=self.timeout_s, watchdog_intervall=self.keepalive_s)
        client.session_timeout = round(self.session_timeout_s * 1000.0)
        client.name = client.description = "edge-agent"
        if self._username is not None:
            client.set_user(self._username)
        if self._password is not None:
            client.set_password(self._password)
        lost = asyncio.Event()

        async def on_lost(exc: Exception) -> None:
            del exc
            lost.set()
            if self._queue is not None:
                self._queue.put_nowait(ConnectionError("connection lost"))

        client.connection_lost_callback = on_lost
        try:
            await self._secure(client)
            # asyncio.timeout, not wait_for: before Python 3.12 wait_for swallows a cancellation
            # that arrives as the inner call completes (cpython #86296), here and below.
            async with asyncio.timeout(self._timeout()):
                await client.connect()
            async with asyncio.timeout(self._timeout()):
                namespaces = await client.get_namespace_array()
        except secmod.SecurityError as exc:
            await self._drop(client)
            raise ConnectError(f"opcua {self.endpoint}: {exc}") from exc
        except UaStatusCodeError as exc:
            await self._drop(client)
            raise ConnectError(
                f"opcua {self.endpoint}: {channel.rejection(exc.code, self.security)}"
            ) from exc
        except (TimeoutError, OSError, UaError) as exc:
            await self._drop(client)
            raise ConnectError(f"opcua {self.endpoint}: connect failed ({exc!r})") from exc
        self._node_ids = [self._resolve(t.node_id, namespaces) for t in self._tags]
        self._lost = lost
        self._client = client

    @staticmethod
    def _resolve(node_id: str, namespaces: Sequence[str]) -> ua.NodeId | None:
        uri, rest = split_node_id(node_id)
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

    async def _read_indices(self, client: Client, indices: Sequence[int]) -> list[Sample]:
        """Read the tags at `indices` in one Read call; unresolved ones are BAD not_found."""
        nids = [self._node_ids[i] for i in indices]
        wanted = [nid for nid in nids if nid is not None]
        try:
            dvs = await subs.read_values(client, wanted, self.timeout_s) if wanted else []
        except (TimeoutError, OSError, UaError) as exc:
            raise ConnectError(f"opcua {self.endpoint}: read failed") from exc
        now = time.time()
        it = iter(dvs)
        out: list[Sample] = []
        for i, nid in zip(indices, nids, strict=True):
            name = self._names[i]
            if nid is None:
                out.append(Sample(name, math.nan, Quality.BAD, now, now, "not_found"))
            else:
                out.append(item_sample(name, item_from_datavalue(0, next(it)), now))
        return out

    async def read(self) -> list[Sample]:
        """Read every tag in one Read service call."""
        return await self._read_indices(self._live(), range(len(self._tags)))

    def _on_publish(self, pub: Publish) -> None:
        """Decoded publish response -> one batch of samples on the subscription's queue."""
        queue = self._queue
        if queue is None:
            return
        for other in pub.others:
            if isinstance(other, ua.StatusChangeNotification):
                queue.put_nowait(ConnectionError("subscription status changed"))
        items = pub.items
        if not items:
            return
        self.notifications += len(items)
        now = time.time()
        names = self._handle_names
        good = Quality.GOOD
        batch: list[Sample] = []
        append = batch.append
        for item in items:
            handle, value, code, src, srv = item
            if 0 < handle < len(names):
                name = names[handle]
                if code == 0 and value.__class__ is float and -_INF < value < _INF:
                    if srv is None:
                        srv = _NAN
                        ts = src if src is not None else now
                    else:
                        ts = src if src is not None else srv
                    append(Sample(name, value, good, ts, now, "", None, srv))
                else:
                    append(item_sample(name, item, now))
        if batch:
            queue.put_nowait(batch)

    def _item_requests(self, group: OpcUaGroup, indices: Sequence[int]) -> list[subs.ItemRequest]:
        out = []
        for i in indices:
            t, nid = self._tags[i], self._node_ids[i]
            assert nid is not None
            queue_size = t.queue_size or max(
                1, math.ceil(group.interval_ms / max(t.sampling_interval_ms, 1.0))
            )
            out.append(
                subs.ItemRequest(
                    handle=i + 1,
                    node_id=nid,
                    sampling_interval_ms=t.sampling_interval_ms,
                    queue_size=queue_size,
                    discard_oldest=t.discard_oldest,
                    deadband_type=t.deadband_type,
                    deadband=t.deadband,
                )
            )
        return out

    async def _start_group(
        self, client: Client, group: OpcUaGroup, indices: list[int], bad: list[Sample]
    ) -> tuple[int, float]:
        """Create one group's subscription and items; returns (id, silence allowed in s)."""
        keepalive = max(1, math.ceil(1000.0 * self.keepalive_s / group.interval_ms))
        res = await subs.create_subscription(client, group.interval_ms, keepalive, self.timeout_s)
        now = time.time()
        live = []
        for i in indices:
            if self._node_ids[i] is None:
                bad.append(Sample(self._names[i], math.nan, Quality.BAD, now, now, "not_found"))
                self.item_errors["not_found"] += 1
            else:
                live.append(i)
        requests = self._item_requests(group, live)
        codes, calls = await subs.create_items(
            client, res.SubscriptionId, requests, self.items_per_call, self.timeout_s
        )
        self.item_calls += calls
        rejected: list[str] = []
        for i, code in zip(live, codes, strict=True):
            if code >> 30 >= 2:
                reason = subs.status_reason(code)
                self.item_errors[reason] += 1
                bad.append(Sample(self._names[i], math.nan, Quality.BAD, now, now, reason))
                rejected.append(f"{self._names[i]}={subs.status_name(code)}")
        if rejected:
            self._log.warning(
                "opcua monitored items rejected",
                group=group.name,
                count=len(rejected),
                items=", ".join(rejected[:10]) + (" ..." if len(rejected) > 10 else ""),
            )
        silence_s = res.RevisedMaxKeepAliveCount * res.RevisedPublishingInterval / 1000.0
        return res.SubscriptionId, silence_s

    async def _poll_group(self, client: Client, group: OpcUaGroup, indices: list[int]) -> None:
        queue = self._queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            queue.put_nowait(await self._read_indices(client, indices))
            next_t += group.interval_ms / 1000.0
            delay = next_t - loop.time()
            if delay < 0:  # fell behind: skip the missed polls rather than burst
                next_t, delay = loop.time(), 0.0
            await asyncio.sleep(delay)

    async def subscribe(self) -> AsyncIterator[list[Sample]]:
        """Yield batches of samples: BAD ones for tags that cannot be monitored, then the
        initial value of every other tag, then changes and polls. Raises ConnectError when the
        link is lost.
        """
        client = self._live()
        queue: asyncio.Queue[list[Sample] | BaseException] = asyncio.Queue()
        self._queue = queue
        self._handle_names: list[str] = ["", *self._names]
        sub_ids: list[int] = []
        tasks: list[asyncio.Task[Any]] = []
        bad: list[Sample] = []
        silence_s = 0.0
        last_publish = time.monotonic()

        def on_publish(pub: Publish) -> None:
            nonlocal last_publish
            last_publish = time.monotonic()
            self._on_publish(pub)

        def on_done(task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and task.exception() is not None:
                queue.put_nowait(task.exception() or ConnectionError("task ended"))

        try:
            try:
                for group in self._groups.values():
                    indices = [i for i, t in enumerate(self._tags) if t.group == group.name]
                    if group.mode == "poll":
                        continue
                    sid, silence = await self._start_group(client, group, indices, bad)
                    sub_ids.append(sid)
                    silence_s = max(silence_s, silence)
            except (TimeoutError, OSError, UaError) as exc:
                raise ConnectError(f"opcua {self.endpoint}: subscribe failed ({exc!r})") from exc
            if sub_ids:
                loop = subs.PublishLoop(client, on_publish, self.publish_in_flight)
                tasks.append(asyncio.create_task(loop.run(), name=f"opcua-publish:{self.name}"))
            for group in self._groups.values():
                if group.mode == "poll":
                    indices = [i for i, t in enumerate(self._tags) if t.group == group.name]
                    tasks.append(
                        asyncio.create_task(
                            self._poll_group(client, group, indices),
                            name=f"opcua-poll:{self.name}:{group.name}",
                        )
                    )
            for task in tasks:
                task.add_done_callback(on_done)
            # A silent server (no data, no keep-alive) counts as lost after this long.
            window_s = 2.0 * silence_s + self.timeout_s
            if bad:
                yield bad
            while True:
                if self._lost.is_set():
                    raise ConnectError(f"opcua {self.endpoint}: connection lost")
                try:
                    async with asyncio.timeout(window_s):
                        got = await queue.get()
                except TimeoutError:
                    got = None
                if isinstance(got, BaseException):
                    if isinstance(got, ConnectError):
                        raise got
                    raise ConnectError(f"opcua {self.endpoint}: {got}") from got
                if got is not None:
                    yield got
                if sub_ids and time.monotonic() - last_publish > window_s:
                    raise ConnectError(f"opcua {self.endpoint}: no publish response")
        finally:
            self._queue = None
            if not self._lost.is_set() and self._client is client:
                # Deleting first lets the server answer the publish requests in flight, so
                # none is left dangling (asyncua warns about answers to cancelled requests).
                await subs.delete_subscriptions(client, sub_ids, self.timeout_s)
                if tasks:
                    await asyncio.wait(tasks, timeout=_GUARD_S)
            for task in tasks:
                task.cancel()
            if tasks:  # bounded: library code below may hold on to a cancellation
                await asyncio.wait(tasks, timeout=self._timeout())

    async def write(self, name: str, value: float | str) -> WriteResult:
        """Write `value` to writable tag `name` as its node's own data type, read it back and
        compare (see `drivers.opcua.write.write_node`; status codes such as BadNotWritable
        become a `rejected` result). Raises WriteRefusedError (nothing sent) for unknown or
        read-only tags and values the type cannot hold, ConnectError when not connected."""
        index = next((i for i, t in enumerate(self._tags) if t.name == name), None)
        if index is None:
            raise WriteRefusedError(f"driver {self.name!r}: no tag {name!r}")
        tag = self._tags[index]
        if not tag.writable:
            raise WriteRefusedError(
                f"driver {self.name!r}: tag {name!r} is read-only; declare writable = true in "
                "its [[drivers.tags]] entry to allow writes"
            )
        client = self._live()
        nid = self._node_ids[index]
        if nid is None:
            return WriteResult(name, "not_sent", value, None, None, "not_found")
        result = await write_node(client, nid, name, value, self.timeout_s, data_type=tag.data_type)
        if result.outcome == "unknown":
            self._log.warning("opcua write outcome unknown", tag=name, reason=result.reason)
        return result

    async def aclose(self) -> None:
        """Close the session (bounded wait), then the socket. Idempotent; never raises."""
        client, self._client = self._client, None
        if client is not None:
            await self._drop(client)

    async def _drop(self, client: Client) -> None:
        """CloseSession (so the server frees it at once), bounded; then close the socket.

        asyncua's disconnect swallows cancellations while it awaits its own tasks, so a
        `wait_for` around it could wait past its timeout: it runs as a task that is abandoned
        (cancelled, not awaited) when the bound passes.
        """
        task = asyncio.ensure_future(client.disconnect())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # always retrieved
        try:
            done, _ = await asyncio.wait({task}, timeout=self._timeout())
        except asyncio.CancelledError:
            task.cancel()
            client.disconnect_socket()
            raise
        if not done:
            task.cancel()
            protocol = client.uaclient.protocol  # asyncua skips a socket it is closing itself
            if protocol is not None:
                protocol.disconnect_socket()
        client.disconnect_socket()  # idempotent; a failed close must not raise here
