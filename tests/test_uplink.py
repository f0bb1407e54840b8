"""Store-and-forward end to end: buffer + publisher + a real mosquitto, killed and restarted.

Every test ends with a consumer that checks every sequence number arrived; duplicates (which
at-least-once delivery allows) are counted and bounded by the in-flight window per outage.

Broker kills: the broker is frozen (SIGSTOP) and the consumer allowed to read what the broker
had already acknowledged before the kill -9 lands, as in `test_publish.py`: a kill can also
destroy messages the broker acknowledged but never forwarded (its queues, or a receive buffer
discarded on RST), a loss inside the broker that no publisher can see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import sys
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.buffer import Buffer, NewEntry, StreamPolicy
from edge_agent.publish import MqttPublisher, MqttSettings
from edge_agent.uplink import Uplink, UplinkSettings
from tests.fixtures.mqtt import Mosquitto, MqttSub, Received, poll_until
from tests.fixtures.proxy import FaultProxy

TIMEOUT_S = 60.0
WINDOW = 50
TOPIC = "up/seq"


def envelopes(msgs: list[Received], topic: str = TOPIC) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in msgs if m.topic == topic]


def seq_counts(msgs: list[Received]) -> Counter[int]:
    return Counter(int(str(e["seq"])) for e in envelopes(msgs))


def stored_seqs(path: Path) -> set[int]:
    """Sequence numbers still in the buffer file (not acknowledged yet), read by a second
    connection as any SQLite reader can."""
    db = sqlite3.connect(path)
    try:
        return {row[0] for row in db.execute("SELECT seq FROM messages")}
    finally:
        db.close()


def make_buffer(path: Path, live_s: float = 5.0) -> Buffer:
    return Buffer(
        path,
        max_bytes=64 * 1024 * 1024,
        max_age_s=3600.0,
        live_s=live_s,
        streams={"deltas": StreamPolicy("telemetry")},
    )


class InProcess:
    """Buffer + publisher + uplink in the test's loop, and a producer task at `rate` msg/s."""

    def __init__(
        self, tmp: Path, host: str, port: int, keepalive_s: int = 10, **uplink: Any
    ) -> None:
        self.path = tmp / "uplink.db"
        self.buffer = make_buffer(self.path)
        self.pub = MqttPublisher(
            MqttSettings(
                host=host,
                port=port,
                client_id="inproc",
                reconnect_max_s=1.0,
                keepalive_s=keepalive_s,
            ),
            status_topic="up/status",
            birth_payload=lambda: b'{"state":"online"}',
            will_payload=b'{"state":"offline"}',
        )
        settings = UplinkSettings(window=WINDOW, **uplink)
        self.uplink = Uplink(self.buffer, self.pub, agent_id="t", settings=settings)
        self.n = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.pub.start()
        self.tasks.append(asyncio.create_task(self.uplink.run()))

    def submit(self, k: int = 1) -> None:
        items = []
        for _ in range(k):
            items.append(NewEntry("deltas", TOPIC, json.dumps({"n": self.n}).encode()))
            self.n += 1
        self.uplink.submit(items)

    def produce(self, rate: float) -> None:
        async def run() -> None:
            while True:
                self.submit()
                await asyncio.sleep(1.0 / rate)

        self.tasks.append(asyncio.create_task(run()))

    def stop_producing(self) -> None:
        for t in self.tasks[1:]:
            t.cancel()

    def acked(self) -> set[int]:
        return set(range(self.buffer.next_seq("deltas"))) - stored_seqs(self.path)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pub.aclose(1.0)
        self.buffer.close()


@pytest.fixture
async def inproc(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[InProcess]:
    p = InProcess(tmp_path, mosquitto.host, mosquitto.port)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def test_every_seq_arrives_through_twenty_broker_kills(
    inproc: InProcess, mosquitto: Mosquitto, mqtt_sub: MqttSub
) -> None:
    """kill -9 and restart the broker 20 times while messages keep coming: every sequence
    number arrives, duplicates stay within one in-flight window per kill."""
    sub = await mqtt_sub(mosquitto.host, mosquitto.port, "up/#", persistent=True)
    mosquitto.save()  # the consumer's session survives every kill
    assert await inproc.pub.wait_connected(10)
    inproc.produce(rate=300)
    rng = random.Random(4)
    kills = 20
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.2, 0.6))
        mosquitto.pause()
        acked = inproc.acked()

        def forwarded(acked: set[int] = acked) -> bool:
            return acked <= set(seq_counts(sub.snapshot()))

        assert await poll_until(forwarded, 20)
        mosquitto.kill()
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        mosquitto.start()
        assert await sub.wait_subscribed(20)
    inproc.stop_producing()
    total = inproc.n
    assert await poll_until(lambda: inproc.uplink.backlog() == 0, TIMEOUT_S)
    counts = seq_counts(sub.snapshot())
    assert set(counts) == set(range(total)), f"missing: {sorted(set(range(total)) - set(counts))}"
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= WINDOW * kills
    assert inproc.pub.counters["connects"] >= kills + 1
    assert all(
        e["agent_id"] == "t" and e["historical"] in (True, False) for e in envelopes(sub.snapshot())
    )


async def test_every_seq_arrives_through_twenty_kills_of_the_producer(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_sub: MqttSub
) -> None:
    """SIGKILL the publishing process 20 times mid-stream and start it again on the same
    buffer file: every sequence number it accepted arrives, numbers keep counting across
    restarts, and each run's duplicates stay within its in-flight window."""
    sub = await mqtt_sub(mosquitto.host, mosquitto.port, "up/#", persistent=True)
    path = tmp_path / "producer.db"
    rng = random.Random(8)
    kills = 20

    async def spawn(*extra: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.uplink_producer",
            mosquitto.host, str(mosquitto.port), str(path), "200", *extra,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        while (line := await asyncio.wait_for(proc.stdout.readline(), 30)).strip() != b"ready":
            assert line, "the producer exited before it was ready"
        return proc

    for _ in range(kills):
        proc = await spawn()
        await asyncio.sleep(rng.uniform(0.2, 0.8))
        proc.kill()
        await proc.wait()
    proc = await spawn("--drain")
    assert await asyncio.wait_for(proc.wait(), TIMEOUT_S) == 0
    db = sqlite3.connect(path)
    (total,) = db.execute("SELECT next_seq FROM streams WHERE stream = 'deltas'").fetchone()
    db.close()
    assert total > kills * 20, "the producer hardly produced anything"

    def complete(msgs: list[Received]) -> bool:
        return set(seq_counts(msgs)) >= set(range(total))

    assert await sub.wait_for(complete, TIMEOUT_S), "sequence numbers missing"
    counts = seq_counts(sub.snapshot())
    assert set(counts) == set(range(total))
    assert sum(c - 1 for c in counts.values()) <= WINDOW * kills
    runs = {e["run"] for e in envelopes(sub.snapshot())}
    assert len(runs) >= kills // 2, "each start should append under its own run id"


async def test_backlog_is_replayed_as_historical_without_holding_back_live_data(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_sub: MqttSub
) -> None:
    """A backlog built while the broker is down is replayed in order and marked historical;
    live messages produced during the replay are not queued behind it."""
    sub = await mqtt_sub(mosquitto.host, mosquitto.port, "up/#", persistent=True)
    mosquitto.save()
    p = InProcess(tmp_path, mosquitto.host, mosquitto.port, replay_rate=200.0)
    # live_s of 5 s: make the backlog old enough by stamping it in the past.
    p.buffer.live_s = 1.0
    await p.start()
    try:
        assert await p.pub.wait_connected(10)
        mosquitto.kill()
        assert await poll_until(lambda: not p.pub.connected, 10)
        p.submit(1000)
        await asyncio.sleep(1.5)  # older than live_s now
        mosquitto.start()
        assert await sub.wait_subscribed(20)
        p.produce(rate=50)
        assert await poll_until(lambda: p.uplink.state() == "draining", 10)
        assert await poll_until(lambda: p.uplink.backlog() < 50 and p.n > 1100, TIMEOUT_S)
        p.stop_producing()
        assert await poll_until(lambda: p.uplink.backlog() == 0, TIMEOUT_S)
        assert await poll_until(lambda: p.uplink.state() == "online", 5)
    finally:
        await p.close()
    arrived = envelopes(sub.snapshot())
    order = [int(str(e["seq"])) for e in arrived]
    old = [s for s in order if s < 1000]
    assert old == sorted(old), "the backlog must be replayed in order"
    assert set(order) >= set(range(p.n))
    hist = {int(str(e["seq"])): e["historical"] for e in arrived}
    assert all(hist[s] is True for s in range(1000))
    # Live messages made during the replay arrived before the replay finished.
    last_old = max(i for i, s in enumerate(order) if s < 1000)
    live_early = [s for s in order[:last_old] if s >= 1000]
    assert len(live_early) >= 20
    assert all(hist[s] is False for s in live_early)


async def test_failover_to_the_next_broker(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_sub: MqttSub
) -> None:
    """With the first broker down, the publisher goes on with the next one in its list."""
    with contextlib.ExitStack() as stack:
        work = tmp_path / "second"
        work.mkdir()
        second = Mosquitto(mosquitto.exe, work)
        second.start()
        stack.callback(second.kill)
        sub = await mqtt_sub(second.host, second.port, "up/#")
        mosquitto.kill()
        buffer = make_buffer(tmp_path / "f.db")
        pub = MqttPublisher(
            MqttSettings(
                host=mosquitto.host,
                port=mosquitto.port,
                failover=((second.host, second.port),),
                client_id="failover",
                reconnect_max_s=0.5,
            ),
            status_topic="up/status",
            birth_payload=lambda: b"{}",
            will_payload=b"{}",
        )
        uplink = Uplink(buffer, pub, agent_id="f")
        await pub.start()
        task = asyncio.create_task(uplink.run())
        try:
            uplink.submit([NewEntry("deltas", TOPIC, b'{"n":1}')])
            assert await sub.wait_for(lambda ms: bool(envelopes(ms)), 20)
            assert pub.server == (second.host, second.port)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await pub.aclose(1.0)
            buffer.close()


async def test_every_seq_arrives_through_a_link_that_drops_delays_and_half_opens(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_sub: MqttSub
) -> None:
    """Through a TCP proxy: a reset link, a slow link and a half-open link (detected by the
    MQTT keep-alive, then reconnected); every sequence number arrives."""
    sub = await mqtt_sub(mosquitto.host, mosquitto.port, "up/#", persistent=True)
    proxy = FaultProxy(mosquitto.host, mosquitto.port)
    await proxy.start()
    p = InProcess(tmp_path, "127.0.0.1", proxy.port, keepalive_s=5)  # half-open found soon
    await p.start()
    try:
        assert await p.pub.wait_connected(10)
        p.produce(rate=100)
        await asyncio.sleep(1.0)
        proxy.drop()  # reset
        assert await poll_until(lambda: p.pub.counters["connects"] >= 2, 20)
        proxy.delay_s = 0.3  # slow
        await asyncio.sleep(2.0)
        proxy.delay_s = 0.0
        proxy.blackhole()  # half-open: nothing flows, nothing closes
        await asyncio.sleep(1.0)
        proxy.heal()
        assert await poll_until(lambda: p.pub.counters["connects"] >= 3, 30), "not detected"
        await asyncio.sleep(1.0)
        p.stop_producing()
        assert await poll_until(lambda: p.uplink.backlog() == 0, TIMEOUT_S)
    finally:
        await p.close()
        await proxy.close()
    total = p.n

    def complete(msgs: list[Received]) -> bool:
        return set(seq_counts(msgs)) >= set(range(total))

    assert await sub.wait_for(complete, 20)
    counts = seq_counts(sub.snapshot())
    assert sum(c - 1 for c in counts.values()) <= WINDOW * 3
    assert p.pub.counters["disconnects"] >= 2


async def test_zlib_compression_round_trips(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_sub: MqttSub
) -> None:
    """With compression = "zlib" a consumer inflates each payload to the same envelope JSON."""
    sub = await mqtt_sub(mosquitto.host, mosquitto.port, "up/#")
    buffer = make_buffer(tmp_path / "z.db")
    pub = MqttPublisher(
        MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id="zlib"),
        status_topic="up/status",
        birth_payload=lambda: b"{}",
        will_payload=b"{}",
    )
    uplink = Uplink(buffer, pub, agent_id="z", settings=UplinkSettings(compression="zlib"))
    await pub.start()
    task = asyncio.create_task(uplink.run())
    body = json.dumps({"deltas": [{"tag": f"t{i}", "value": 1.0} for i in range(50)]}).encode()
    try:
        uplink.submit([NewEntry("deltas", TOPIC, body)])
        assert await sub.wait_for(lambda ms: any(m.topic == TOPIC for m in ms), 20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pub.aclose(1.0)
        buffer.close()
    raw = next(m.payload for m in sub.snapshot() if m.topic == TOPIC)
    assert raw[:1] == b"\x78" and len(raw) < len(body) / 3
    doc = json.loads(zlib.decompress(raw))
    assert doc["seq"] == 0 and doc["agent_id"] == "z" and len(doc["deltas"]) == 50
