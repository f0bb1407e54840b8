"""Store-and-forward: every outbound message goes to the durable buffer, then to the broker.

`Uplink.submit` (called from the tick, synchronous) appends messages to the `Buffer`; `run`
moves them to the `MqttPublisher` and deletes each from the buffer only after its PUBACK. So a
message the agent accepted survives a broker outage, a network outage and a crash or kill of
the agent (the next start sends what is still stored); a power cut can cost the buffer's last
sync interval (see `edge_agent.buffer`). Acknowledged ids are deleted in batches, every
`COMMIT_DELAY_S` or as soon as a window's worth is waiting, so a crash sends again at most the
window in flight plus one window of acknowledged messages (duplicates, never loss).

Envelope: the stored payload is a JSON object; on the way out it gets, in front of its own
fields, `"v"` (payload format version), `"agent_id"`, `"stream"`, `"seq"` (per stream, counting
across restarts), `"run"` (the buffer run that appended it: a reused `seq` after a power cut
has a different `run`) and `"historical"` (true when the message is a replay: appended before
the current start, or older than `live_s` when sent). A consumer detects a gap as a missing
`seq` and discards the duplicates that at-least-once delivery allows as a repeated
`(stream, run, seq)`.

Lanes: live messages (at most `live_s` old) go first, each round; the backlog after an outage
is replayed in append order in the remaining room of the in-flight window, at most
`replay_rate` messages per second, so live data stays fresh while the backlog drains. Within
each lane messages leave in order; across lanes a consumer orders by `seq`.

A message the broker refuses (an MQTT 5 PUBACK with a failure reason code such as Not
authorized) would be refused again: it is counted (`refused`), logged and removed; only Quota
exceeded keeps it stored and pauses the forwarder for `QUOTA_PAUSE_S`.

Counters (for the metrics endpoint to come): `counters` (submitted, sent, acked, released,
refused, store_errors, frame_errors) and the buffer's drop counters; `backlog()` and
`state()` (``online``, ``draining``) for the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from edge_agent.buffer import Buffer, BufferStoreError, Entry, NewEntry
from edge_agent.publish import MessageRefusedError, MqttPublisher, PublishError

log = structlog.get_logger(__name__)

PAYLOAD_VERSION = 1
COMMIT_DELAY_S = 0.05
"""Acknowledged ids are deleted from the buffer in batches, at most this long after PUBACK, or
as soon as a window's worth of them is waiting: after a crash, at most one window of
acknowledged messages (plus the window in flight) is sent again."""
HISTORICAL_CHECK_S = 0.25
"""How often the forwarder asks the buffer whether a backlog is waiting."""
IDLE_WAKE_S = 0.5
"""The forwarder re-checks the buffer this often even when nothing new arrived."""
QUOTA_PAUSE_S = 1.0
"""After a PUBACK saying the broker's quota is exceeded, the forwarder sends nothing for this
long; the refused message stays in the buffer and goes again."""
ZLIB_LEVEL = 6
ZLIB_CONTENT_TYPE = "application/json+zlib"


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    window: int = 100
    """Messages handed to the publisher and not yet acknowledged, at most."""
    replay_rate: float = 2000.0
    """Backlog messages per second at most while draining (0: no limit)."""
    compression: str = "none"
    """"zlib": JSON payloads leave deflated (zlib format), MQTT 5 Content Type
    `application/json+zlib` (a payload starting with `{` is plain JSON, 0x78 is zlib)."""


class FrameError(Exception):
    """A framer cannot encode this entry (malformed); it is counted and dropped."""


def frame(agent_id_json: str, entry: Entry) -> bytes:
    """`entry`'s stored JSON object with the envelope fields in front (`agent_id_json` is the
    agent id already JSON-encoded, with its quotes)."""
    head = (
        f'{{"v":{PAYLOAD_VERSION},"agent_id":{agent_id_json},"stream":"{entry.stream}",'
        f'"seq":{entry.seq},"run":"{entry.run}",'
        f'"historical":{"true" if entry.historical else "false"}'
    ).encode()
    body = entry.payload
    if body == b"{}":
        return head + b"}"
    return head + b"," + body[1:]


class Uplink:
    """Durable buffer in front of the publisher; see the module docstring."""

    def __init__(
        self,
        buffer: Buffer,
        publisher: MqttPublisher,
        *,
        agent_id: str,
        settings: UplinkSettings = UplinkSettings(),
        on_state: Callable[[str], None] | None = None,
        framer: Callable[[Entry], bytes] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        if buffer.live_s is None:
            raise ValueError("the uplink needs a buffer with live_s set")
        self.buffer = buffer
        self.publisher = publisher
        self.settings = settings
        self._agent_json = json.dumps(agent_id)
        self._on_state = on_state
        self._framer = framer
        if settings.compression not in ("none", "zlib"):
            raise ValueError(f"unknown compression {settings.compression!r}")
        self._zlib = settings.compression == "zlib"
        self._ready = ready
        self._outstanding: dict[asyncio.Future[None], int] = {}  # PUBACK future -> entry id
        self._acked: list[int] = []
        self._commit_handle: asyncio.TimerHandle | None = None
        self._wake: asyncio.Event | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._tokens = 0.0
        self._last_refill = time.monotonic()
        self._state = "online"
        self._historical = True  # until the first check: a backlog may be waiting
        self._checked_at = -float("inf")
        self._paused_until = 0.0
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "submitted",
                "sent",
                "acked",
                "released",
                "refused",
                "store_errors",
                "frame_errors",
            ),
            0,
        )

    # ---------------------------------------------------------------- producer side

    def submit(self, items: Sequence[NewEntry]) -> None:
        """Store messages durably (synchronous: one transaction); the forwarder sends them."""
        if not items:
            return
        try:
            self.buffer.append_many(items)
        except BufferStoreError as exc:
            # The disk failed under us: counted and logged; the tick must go on.
            self.counters["store_errors"] += 1
            log.error("buffer append failed", error=str(exc), messages=len(items))
            return
        self.counters["submitted"] += len(items)
        if self._wake is not None:
            self._wake.set()

    def backlog(self) -> int:
        """Messages stored and not yet acknowledged."""
        return self.buffer.pending() + self.buffer.in_flight()

    def state(self) -> str:
        """``draining`` while historical messages are being replayed, else ``online``."""
        return self._state

    # ---------------------------------------------------------------- forwarder

    async def run(self) -> None:
        """Forward until cancelled; acknowledged ids are committed before returning."""
        self._wake = asyncio.Event()
        try:
            while True:
                await self._wait_for_work()
                self._forward_once()
                # the last writes before a quiet spell reach the disk within the sync interval
                self.buffer.sync_if_due()
        finally:
            if self._idle_handle is not None:
                self._idle_handle.cancel()
                self._idle_handle = None
            self._commit_now()

    async def _wait_for_work(self) -> None:
        wake = self._wake
        assert wake is not None
        if not wake.is_set():
            # One timer per idle wait (not per wake-up): the forwarder looks again after
            # IDLE_WAKE_S even when nothing new arrived.
            if self._idle_handle is None:
                self._idle_handle = asyncio.get_running_loop().call_later(
                    IDLE_WAKE_S, self._idle_wake
                )
            await wake.wait()
        wake.clear()
        if not self.publisher.connected:
            await self.publisher.wait_connected(IDLE_WAKE_S)

    def _idle_wake(self) -> None:
        self._idle_handle = None
        if self._wake is not None:
            self._wake.set()

    def _forward_once(self) -> None:
        if not self.publisher.connected or (self._ready is not None and not self._ready()):
            return
        if self._paused_until and time.monotonic() < self._paused_until:
            return  # the broker's quota was exceeded: IDLE_WAKE_S looks again
        room = self.settings.window - len(self._outstanding)
        if room <= 0:
            return
        batch = self.buffer.take(room, lane="live")
        room -= len(batch)
        mono = time.monotonic()
        if mono - self._checked_at >= HISTORICAL_CHECK_S:
            self._checked_at = mono
            self._historical = self.buffer.has_historical()
        if room > 0 and self._historical:
            allowance = room if self.settings.replay_rate <= 0 else min(room, self._replay_tokens())
            if allowance > 0:
                old = self.buffer.take(allowance, lane="backlog")
                self._tokens -= len(old)
                batch.extend(old)
        self._set_state("draining" if self._historical else "online")
        publish = self.publisher.publish
        outstanding = self._outstanding
        done = self._done
        agent_json = self._agent_json
        framer = self._framer
        sent = 0
        for entry in batch:
            try:
                payload = frame(agent_json, entry) if framer is None else framer(entry)
            except PublishError:
                self.buffer.release([entry.id])  # the framer says: not now
                self.counters["released"] += 1
                continue
            except FrameError as exc:
                # Stored by this agent, yet not encodable: it never will be. Counted, logged and
                # dropped, so it cannot hold a slot forever.
                self.counters["frame_errors"] += 1
                log.error("message dropped: cannot encode", topic=entry.topic, error=str(exc))
                self.buffer.commit([entry.id])
                continue
            content_type = None
            if self._zlib and payload[:1] == b"{":
                payload = zlib.compress(payload, ZLIB_LEVEL)
                content_type = ZLIB_CONTENT_TYPE
            try:
                fut = publish(entry.topic, payload, retain=entry.retain, content_type=content_type)
            except PublishError:
                self.buffer.release([entry.id])
                self.counters["released"] += 1
                continue
            outstanding[fut] = entry.id
            fut.add_done_callback(done)
            sent += 1
        self.counters["sent"] += sent

    def _replay_tokens(self) -> int:
        now = time.monotonic()
        rate = self.settings.replay_rate
        self._tokens = min(rate, self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now
        return int(self._tokens)

    def frame(self, entry: Entry) -> bytes:
        """The payload on the wire: the stored JSON object with the envelope fields in front,
        or what the `framer` makes of it (e.g. Sparkplug B DDATA, encoded at send time)."""
        if self._framer is not None:
            return self._framer(entry)
        return frame(self._agent_json, entry)

    def _done(self, fut: asyncio.Future[None]) -> None:
        entry_id = self._outstanding.pop(fut, None)
        if entry_id is None:
            return
        exc = None if fut.cancelled() else fut.exception()
        if isinstance(exc, MessageRefusedError) and not exc.retryable:
            # The broker will never take it (not authorized, invalid topic or payload...):
            # sending it again would only repeat the refusal. Counted, logged, removed.
            self.counters["refused"] += 1
            log.error("message dropped: refused by the broker", reason=exc.reason, id=entry_id)
            self._acked.append(entry_id)
        elif fut.cancelled() or exc is not None:
            # Closed, dropped or over quota before PUBACK: it stays in the buffer for the next
            # attempt (after a pause when the broker said its quota is exceeded).
            if isinstance(exc, MessageRefusedError):
                self._paused_until = time.monotonic() + QUOTA_PAUSE_S
            with contextlib.suppress(BufferStoreError):
                self.buffer.release([entry_id])
            self.counters["released"] += 1
        else:
            self._acked.append(entry_id)
            self.counters["acked"] += 1
        if self._acked:
            if len(self._acked) >= self.settings.window:
                if self._commit_handle is not None:
                    self._commit_handle.cancel()
                self._commit_now()
            elif self._commit_handle is None:
                loop = asyncio.get_running_loop()
                self._commit_handle = loop.call_later(COMMIT_DELAY_S, self._commit_now)
        if self._wake is not None:
            self._wake.set()

    def _commit_now(self) -> None:
        self._commit_handle = None
        if not self._acked:
            return
        ids, self._acked = self._acked, []
        try:
            self.buffer.commit(ids)
        except BufferStoreError as exc:
            # They will be sent again after a restart (duplicates, not loss).
            self.counters["store_errors"] += 1
            log.error("buffer commit failed", error=str(exc), messages=len(ids))

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        log.info("uplink " + state, backlog=self.backlog())
        if self._on_state is not None:
            self._on_state(state)


__all__ = ["PAYLOAD_VERSION", "FrameError", "Uplink", "UplinkSettings", "frame"]
