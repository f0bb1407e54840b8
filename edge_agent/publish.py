"""The MQTT sink: QoS 1 publishing with at-least-once delivery across broker outages.

Owns one connection to one broker (paho-mqtt 2.x) and everything about it: connecting with
jittered exponential backoff (paho's own reconnect stays off, so two loops never race), the
retained birth/last-will status, and a bounded in-memory queue of messages that the broker has
not acknowledged yet. It does not own durability across a crash of this process: that is the
store-and-forward buffer in front of it, which keeps its own copy until the future returned by
`publish` resolves.

Delivery contract:
    `publish()` accepts a message and returns a future that resolves on its PUBACK. A message
    in flight when the link drops goes back to the head of the queue and is sent again after
    the next CONNACK (so duplicates are possible, loss is not). When the queue is full, the
    oldest non-retained message (telemetry) is dropped first; its future fails with
    `MessageDroppedError`. `aclose` fails what is still unacknowledged with `PublisherClosedError`.

Exceptions set on futures or raised here (paho's never leave this module):

    PublishError           base class
    +-- MessageDroppedError    evicted from the full queue before the broker acknowledged it
    +-- MessageRefusedError    the broker's PUBACK carried a failure reason code (MQTT 5), or
                               the message exceeds the Maximum Packet Size of its CONNACK
    +-- PublisherClosedError   the publisher closed before the broker acknowledged it

How paho is driven: the socket is registered with the event loop (`add_reader` /
`add_writer`, paho's `on_socket_*` callbacks) and `loop_misc` runs once a second for
keepalive, as aiomqtt does; no network thread. Only the blocking TCP/TLS connect runs in the
default executor, and the socket is wired to the loop after it returns, so no paho callback
ever runs off the loop thread. Why not paho's `loop_start` thread: on a 2-core gateway it
measured slower for QoS 1 bursts (about 17k against 22k msg/s), and every PUBACK would need a
`call_soon_threadsafe` hop plus locking around the queue. This module sustains 20-25k msg/s
of QoS 1 bursts to a local mosquitto (about 40 us of CPU per message; one message at a time,
awaiting each PUBACK: about 5k msg/s). Our own in-flight window (50) is handed to paho a
little at a time, and paho's own in-flight limit is off (with a limit it rescans every message
it holds on every PUBACK; windows of 10 to 100 measured alike, 500 fell to about 14k msg/s).
The client is `edge_agent.mqtt_client.BufferedClient`: socket reads in 64 kB chunks and the
common PUBACK decoded without paho's per-packet objects (about 25 us less CPU per message).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.mqtt_client import BufferedClient, publish_properties, publish_size
from edge_agent.mqtt_settings import (
    ConnectionLostError,
    MessageDroppedError,
    MessageRefusedError,
    MqttSettings,
    PublisherClosedError,
    PublishError,
    RawMessage,
    SessionHooks,
    backoff_delay,
    tls_context,
)

log = structlog.get_logger(__name__)

INFLIGHT_WINDOW = 50
PACKET_TOO_LARGE = 0x95  # MQTT 5 reason code
MISC_INTERVAL_S = 1.0


@dataclass(slots=True)
class _Message:
    seq: int
    topic: str
    payload: bytes
    retain: bool
    future: asyncio.Future[None]
    content_type: str | None = None
    sends: int = 0


class MqttPublisher:
    """QoS 1 publisher with a retained online/offline status; see the module docstring."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        status_topic: str,
        birth_payload: Callable[[], bytes],
        will_payload: bytes,
        offline_payload: bytes | None = None,
        session: SessionHooks | None = None,
    ) -> None:
        if settings.max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._settings = settings
        self._status_topic = status_topic
        self._birth_payload = birth_payload
        self._will_payload = will_payload
        self._offline_payload = will_payload if offline_payload is None else offline_payload
        self._session = session
        self._pending: deque[_Message] = deque()  # not on the current connection, by seq
        self._inflight: dict[int, _Message] = {}  # paho mid -> message, current connection
        # QoS 1 messages outside the queue (status, raw) by mid: a future when awaited
        self._control: dict[int, asyncio.Future[None] | None] = {}
        self._seq = 0
        self._servers = ((settings.host, settings.port), *settings.failover)
        self._server = 0  # index into _servers of the broker tried or used now
        self._tls: ssl.SSLContext | None = None
        self._subscriptions: dict[str, Callable[[str, bytes], None]] = {}
        self._client: BufferedClient | None = None
        self._connected = False
        self._closing = False  # no new messages accepted
        self._stopping = False  # no reconnects
        self._pump_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected_event: asyncio.Event | None = None
        self._idle_event: asyncio.Event | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._window = INFLIGHT_WINDOW  # lowered by a broker's Receive Maximum (MQTT 5)
        self._max_packet: int | None = None  # the broker's Maximum Packet Size (MQTT 5)
        self._lost: asyncio.Future[None] | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "published",
                "acked",
                "refused",
                "resent",
                "dropped_queue_full",
                "connects",
                "disconnects",
            ),
            0,
        )

    # ---------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self._connected

    @property
    def window(self) -> int:
        """Messages allowed in flight on this connection: ours, or the broker's Receive Maximum
        when lower."""
        return self._window

    @property
    def in_flight(self) -> int:
        """QoS 1 messages handed to the broker and not acknowledged yet (status ones too)."""
        return len(self._inflight) + len(self._control)

    @property
    def queued(self) -> int:
        """Messages accepted but not acknowledged yet (waiting or in flight)."""
        return len(self._pending) + len(self._inflight)

    async def start(self) -> None:
        """Begin connecting in the background and return at once."""
        if self._task is not None:
            raise RuntimeError("publisher already started")
        s = self._settings
        if s.tls:
            try:
                self._tls = tls_context(s)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise PublishError(f"mqtt TLS settings unusable: {exc}") from None
            if s.tls_insecure:
                log.warning(
                    "mqtt TLS certificate check disabled (tls_insecure); not for production"
                )
        self._loop = asyncio.get_running_loop()
        self._connected_event = asyncio.Event()
        self._idle_event = asyncio.Event()
        self._update_idle()
        self._task = asyncio.create_task(self._supervise(), name="mqtt-publisher")

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for a connection; True when connected."""
        if self._connected_event is None or self._task is None:
            raise RuntimeError("publisher not started")
        waiter = asyncio.ensure_future(self._connected_event.wait())
        try:
            await asyncio.wait(
                {waiter, self._task}, timeout=timeout_s, return_when="FIRST_COMPLETED"
            )
        finally:
            waiter.cancel()
        if self._task.done() and not self._task.cancelled() and self._task.exception():
            await self._task  # re-raises the supervisor's unexpected error
        return self._connected

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, content_type: str | None = None
    ) -> asyncio.Future[None]:
        """Accept one QoS 1 message; the returned future resolves on its PUBACK.

        `content_type` goes into the MQTT 5 Content Type property (ignored with 3.1.1).

        Never blocks and never raises for a broker outage: while disconnected the message waits
        in the queue. Raises `PublisherClosedError` once `aclose` has begun.
        """
        if self._loop is None:
            raise RuntimeError("publisher not started")
        if self._closing:
            raise PublisherClosedError("publisher is closing")
        if self.queued >= self._settings.max_queue:
            self._evict_one()
        self._seq += 1
        msg = _Message(self._seq, topic, payload, retain, self._loop.create_future(), content_type)
        self._pending.append(msg)
        self.counters["published"] += 1
        self._update_idle()
        self._pump()
        return msg.future

    @property
    def server(self) -> tuple[str, int]:
        """The broker used now, or tried next."""
        return self._servers[self._server]

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        """Call `callback(topic, payload)` on the loop for every message on `topic` (a filter,
        QoS 1); subscribed again on every connection."""
        self._subscriptions[topic] = callback
        client = self._client
        if self._connected and client is not None:
            self._add_subscription(client, topic, callback)

    def publish_raw(self, messages: Sequence[RawMessage]) -> None:
        """Publish now, untracked (no future, not resent), if connected; else drop them."""
        client = self._client
        if self._connected and client is not None:
            for topic, payload, qos, retain in messages:
                self._publish_untracked(client, topic, payload, qos, retain)

    def drop_connection(self) -> None:
        """Close the current connection (it is re-established with backoff)."""
        client = self._client
        if self._connected and client is not None:
            client.disconnect()

    def republish_status(self) -> None:
        """Publish the birth payload again now (retained), e.g. after a state change."""
        client = self._client
        if self._connected and client is not None:
            self._publish_untracked(client, self._status_topic, self._birth_payload(), 1, True)

    def _publish_untracked(
        self, client: BufferedClient, topic: str, payload: bytes, qos: int, retain: bool
    ) -> None:
        """Publish without a future; a QoS 1 one still counts in flight until its PUBACK."""
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._control[info.mid] = None

    async def aclose(self, drain_timeout_s: float = 5.0) -> None:
        """Drain in-flight messages until the deadline, publish the retained offline status,
        disconnect cleanly. Futures still unacknowledged then fail with `PublisherClosedError`."""
        if self._task is None or self._closing:
            self._closing = True
            return
        self._closing = True
        assert self._idle_event is not None
        deadline = time.monotonic() + drain_timeout_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout_s):
                await self._idle_event.wait()
        self._stopping = True  # from here on the supervisor does not reconnect
        client = self._client
        if self._connected and client is not None:
            await self._publish_offline(client, max(0.5, deadline - time.monotonic()))
            await self._disconnect_cleanly(client)
        task = self._task
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=self._settings.connect_timeout_s)
        self._fail_all(PublisherClosedError("publisher closed before the broker acknowledged"))
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            raise exc

    # ---------------------------------------------------------------- queue

    def _evict_one(self) -> None:
        victim_index = next((i for i, m in enumerate(self._pending) if not m.retain), None)
        if victim_index is None and self._pending:
            victim_index = 0
        if victim_index is None:
            # Everything is on the wire (max_queue <= window): refuse by evicting nothing.
            # The newcomer is then over the bound by one until the next PUBACK.
            return
        victim = self._pending[victim_index]
        del self._pending[victim_index]
        self.counters["dropped_queue_full"] += 1
        if not victim.future.done():
            victim.future.set_exception(MessageDroppedError("queue full, oldest telemetry dropped"))

    def _pump(self) -> None:
        """Hand waiting messages to paho while the in-flight window has room."""
        client = self._client
        if not self._connected or client is None:
            return
        v5 = self._settings.protocol == "5"
        # Status and raw QoS 1 messages in flight count against the broker's limit too.
        while self._pending and self.in_flight < self._window:
            msg = self._pending[0]
            if msg.future.done():  # the caller cancelled it: nothing to deliver
                self._pending.popleft()
                continue
            props = None
            if msg.content_type is not None and v5:
                props = publish_properties(msg.content_type)
            limit = self._max_packet
            if limit and (size := publish_size(msg.topic, msg.payload, props, v5)) > limit:
                self._pending.popleft()
                self._refuse_too_large(msg, size)
                continue
            info = client.publish(
                msg.topic, msg.payload, qos=1, retain=msg.retain, properties=props
            )
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # the socket just went away; on_disconnect requeues and reconnects
            self._pending.popleft()
            self._inflight[info.mid] = msg
            if msg.sends:
                self.counters["resent"] += 1
            msg.sends += 1
        self._update_idle()

    def _refuse_too_large(self, msg: _Message, size: int) -> None:
        """The broker would disconnect on this packet, again after every reconnect: refused
        here, counted and logged (never sent, so the stream behind it keeps moving)."""
        self.counters["refused"] += 1
        log.error(
            "message larger than the broker accepts: refused",
            topic=msg.topic,
            bytes=size,
            maximum_packet_size=self._max_packet,
            fix="lower uplink.batch_max, or raise the broker's maximum packet size",
        )
        if not msg.future.done():
            msg.future.set_exception(
                MessageRefusedError(
                    PACKET_TOO_LARGE, f"Packet too large ({size} > {self._max_packet} bytes)"
                )
            )

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._run_scheduled_pump)

    def _run_scheduled_pump(self) -> None:
        self._pump_scheduled = False
        self._pump()

    def _requeue_inflight(self) -> None:
        if self._inflight:
            back = sorted(self._inflight.values(), key=lambda m: m.seq)
            self._inflight.clear()
            self._pending.extendleft(reversed(back))

    def _update_idle(self) -> None:
        if self._idle_event is None:
            return
        if self._pending or self._inflight:
            self._idle_event.clear()
        else:
            self._idle_event.set()

    def _fail_all(self, exc: PublishError) -> None:
        self._requeue_inflight()
        while self._pending:
            msg = self._pending.popleft()
            if not msg.future.done():
                msg.future.set_exception(exc)
        for fut in self._control.values():
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        self._control.clear()
        self._update_idle()

    # ---------------------------------------------------------------- connection loop

    async def _supervise(self) -> None:
        attempt = 0
        down_since = time.monotonic()
        failing = False
        while not self._stop_requested():
            try:
                client = await self._connect_once()
            except _ConnectFailedError as exc:
                host, port = self.server
                if not failing or len(self._servers) > 1:  # once per outage, per broker
                    log.warning("mqtt unavailable", host=host, port=port, reason=str(exc))
                    failing = True
                self._server = (self._server + 1) % len(self._servers)
                delay = backoff_delay(
                    attempt, self._settings.reconnect_min_s, self._settings.reconnect_max_s
                )
                attempt += 1
                await asyncio.sleep(delay)
                continue
            if self._stop_requested():  # aclose began while this attempt was in flight
                self._teardown(client)
                return
            host, port = self.server
            log.info(
                "mqtt connected",
                host=host,
                port=port,
                protocol=self._settings.protocol,
                attempts=attempt + 1,
                downtime_s=round(time.monotonic() - down_since, 3),
                queued=self.queued,
            )
            attempt, failing = 0, False
            try:
                await self._serve(client)
            finally:
                self._teardown(client)
            down_since = time.monotonic()

    def _stop_requested(self) -> bool:
        return self._stopping

    def _new_client(self) -> BufferedClient:
        s = self._settings
        if s.protocol == "5":
            client = BufferedClient(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=s.client_id,
                protocol=mqtt.MQTTv5,
                reconnect_on_failure=False,
            )
        else:
            client = BufferedClient(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=s.client_id,
                clean_session=True,
                protocol=mqtt.MQTTv311,
                reconnect_on_failure=False,
            )
        client.connect_timeout = s.connect_timeout_s
        # Our own window (INFLIGHT_WINDOW) bounds what paho holds, so paho's limit stays off:
        # with a limit, paho rescans every message it holds on every PUBACK.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if self._session is not None:
            topic, payload, qos, retain = self._session.will()
            client.will_set(topic, payload, qos=qos, retain=retain)
        else:
            client.will_set(self._status_topic, self._will_payload, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _blocking_connect(self, client: BufferedClient, abandoned: threading.Event) -> None:
        """Runs in the executor: TLS setup, TCP connect, TLS handshake, CONNECT written."""
        s = self._settings
        host, port = self.server
        if self._tls is not None:
            client.tls_set_context(self._tls)
            client.tls_insecure_set(s.tls_insecure)
        if s.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry_s
            client.connect(host, port, keepalive=s.keepalive_s, clean_start=False, properties=props)
        else:
            client.connect(host, port, keepalive=s.keepalive_s)
        if abandoned.is_set():  # the loop gave up waiting: do not leak the socket
            sock = client.socket()
            if sock is not None:
                sock.close()

    @staticmethod
    def _abandon(client: BufferedClient, abandoned: threading.Event) -> None:
        # Whichever side comes second (this or the executor thread) closes the socket.
        abandoned.set()
        sock = client.socket()
        if sock is not None:
            sock.close()

    async def _connect_once(self) -> BufferedClient:
        assert self._loop is not None
        loop = self._loop
        client = self._new_client()
        abandoned = threading.Event()
        timeout_s = self._settings.connect_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await loop.run_in_executor(None, self._blocking_connect, client, abandoned)
        except TimeoutError as exc:
            self._abandon(client, abandoned)
            raise _ConnectFailedError(f"connect timed out after {timeout_s} s") from exc
        except asyncio.CancelledError:
            self._abandon(client, abandoned)
            raise
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS, bad settings
            raise _ConnectFailedError(f"{type(exc).__name__}: {exc}") from exc
        self._client = client
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        try:
            self._wire(client)
            async with asyncio.timeout(timeout_s):
                rc = await asyncio.shield(self._connack)
            if rc.is_failure:
                raise _ConnectFailedError(f"connection refused: {rc}")
            if self._lost.done():
                raise _ConnectFailedError("connection lost right after CONNACK")
        except TimeoutError as exc:
            self._teardown(client)
            raise _ConnectFailedError(f"no CONNACK within {timeout_s} s") from exc
        except BaseException:  # refused, lost, or cancelled: never leak the socket
            self._teardown(client)
            raise
        return client

    def _wire(self, client: BufferedClient) -> None:
        """Register the connected socket with the event loop (on the loop thread)."""
        assert self._loop is not None
        loop = self._loop
        sock = client.socket()
        if sock is None:
            raise _ConnectFailedError("socket closed during connect")
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        loop.add_reader(sock, self._on_readable, client)
        if client.want_write():
            loop.add_writer(sock, self._on_writable, client)

    async def _serve(self, client: BufferedClient) -> None:
        """Run one established connection until it is lost."""
        assert self._lost is not None and self._connected_event is not None
        lost = self._lost
        self._connected = True
        self.counters["connects"] += 1
        self._connected_event.set()
        # The birth goes first on every connection; its PUBACK needs no tracking (a lost
        # connection republishes it on the next one).
        self._publish_untracked(client, self._status_topic, self._birth_payload(), 1, True)
        if self._session is not None:
            self.publish_raw(self._session.births())
        for topic, callback in self._subscriptions.items():
            self._add_subscription(client, topic, callback)
        self._pump()
        while not lost.done():
            await asyncio.wait({lost}, timeout=MISC_INTERVAL_S)
            if not lost.done():
                client.loop_misc()  # keepalive ping, and detects a silent broker

    def _add_subscription(
        self, client: BufferedClient, topic: str, callback: Callable[[str, bytes], None]
    ) -> None:
        def deliver(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                callback(msg.topic, bytes(msg.payload))
            except Exception:  # a handler bug must not take the connection down
                log.exception("mqtt message handler failed", topic=msg.topic)

        client.message_callback_add(topic, deliver)
        client.subscribe(topic, qos=1)

    def _teardown(self, client: BufferedClient) -> None:
        """Forget a connection: unregister and close its socket, requeue its messages."""
        assert self._loop is not None
        sock = client.socket()
        if sock is not None and sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
            sock.close()
        if self._client is client:
            self._client = None
            self._mark_lost(None)

    # ---------------------------------------------------------------- paho callbacks

    def _on_readable(self, client: BufferedClient) -> None:
        client.loop_read()
        sock = client.socket()
        # Bytes already out of the socket (our read buffer, or TLS records decrypted ahead)
        # will not make the fd signal again: consume them now.
        while sock is not None and (
            client.buffered() > 0 or (hasattr(sock, "pending") and sock.pending() > 0)
        ):
            client.loop_read()
            sock = client.socket()

    def _on_writable(self, client: mqtt.Client) -> None:
        client.loop_write()

    def _on_register_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, self._on_writable, client)

    def _on_unregister_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if client is self._client and self._connack is not None and not self._connack.done():
            # MQTT 5: never more unacknowledged QoS 1 messages than the broker's Receive
            # Maximum (paho does not enforce it; some brokers disconnect with 0x93 otherwise).
            self._max_packet = getattr(props, "MaximumPacketSize", None)
            limit = getattr(props, "ReceiveMaximum", None)
            self._window = INFLIGHT_WINDOW if limit is None else max(1, min(INFLIGHT_WINDOW, limit))
            if self._window < INFLIGHT_WINDOW:
                log.info("mqtt in-flight window set by the broker", receive_maximum=limit)
            self._connack.set_result(rc)

    def _on_disconnect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, rc: ReasonCode, _props: Any
    ) -> None:
        if client is not self._client:
            return
        self._mark_lost(rc)

    def _mark_lost(self, rc: ReasonCode | None) -> None:
        if self._connected:
            self._connected = False
            self.counters["disconnects"] += 1
            if self._connected_event is not None:
                self._connected_event.clear()
            level = log.info if self._stopping else log.warning
            level(
                "mqtt disconnected",
                reason=str(rc) if rc is not None else "closed",
                clean=self._stopping,
                in_flight=len(self._inflight),
            )
        if self._settings.resend_after_reconnect:
            self._requeue_inflight()
        else:
            self._fail_all(ConnectionLostError("connection lost before the broker acknowledged"))
        for fut in self._control.values():
            if fut is not None and not fut.done():
                fut.set_exception(PublishError("connection lost"))
        self._control.clear()
        if self._session is not None:
            self._session.lost()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _on_publish(
        self, client: mqtt.Client, _userdata: Any, mid: int, rc: ReasonCode, _props: Any
    ) -> None:
        if client is not self._client:
            return
        msg = self._inflight.pop(mid, None)
        if msg is not None:
            if rc.is_failure:
                self.counters["refused"] += 1
                log.warning("broker refused a message", topic=msg.topic, reason=str(rc))
                if not msg.future.done():
                    msg.future.set_exception(MessageRefusedError(rc.value, str(rc)))
            else:
                self.counters["acked"] += 1
                if not msg.future.done():
                    msg.future.set_result(None)
            self._update_idle()
            self._schedule_pump()
            return
        control = self._control.pop(mid, None)
        if control is not None and not control.done():
            control.set_result(None)
        self._schedule_pump()  # a status message left the window

    # ---------------------------------------------------------------- shutdown

    async def _publish_offline(self, client: BufferedClient, timeout_s: float) -> None:
        assert self._loop is not None
        info = client.publish(self._status_topic, self._offline_payload, qos=1, retain=True)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._control[info.mid] = fut
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        except (TimeoutError, PublishError):
            log.warning("mqtt offline status not acknowledged", timeout_s=round(timeout_s, 3))

    async def _disconnect_cleanly(self, client: BufferedClient) -> None:
        lost = self._lost
        client.disconnect()  # paho writes DISCONNECT from the loop, then closes the socket
        if lost is not None:
            await asyncio.wait({lost}, timeout=self._settings.connect_timeout_s)


class _ConnectFailedError(Exception):
    """One connection attempt failed; the supervisor backs off and retries."""


__all__ = [
    "ConnectionLostError",
    "MessageDroppedError",
    "MessageRefusedError",
    "MqttPublisher",
    "MqttSettings",
    "PublishError",
    "PublisherClosedError",
    "RawMessage",
    "SessionHooks",
    "backoff_delay",
    "tls_context",
]
