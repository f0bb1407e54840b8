"""The publisher's paho client against a real mosquitto: buffered reads, the PUBACK fast path,
shared publish properties, and PUBACKs that refuse a message (broker ACL)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from edge_agent.buffer import Buffer, NewEntry, StreamPolicy
from edge_agent.mqtt_client import publish_size
from edge_agent.publish import MessageRefusedError, MqttPublisher, MqttSettings
from edge_agent.uplink import Uplink, UplinkSettings
from tests.fixtures.mqtt import Mosquitto, poll_until

TIMEOUT_S = 20.0
STATUS = "site/agent/status"


def _publisher(broker: Mosquitto, protocol: str = "5") -> MqttPublisher:
    settings = MqttSettings(
        host=broker.host,
        port=broker.port,
        client_id=f"client-test-{os.getpid()}-{protocol}",
        protocol=protocol,
        reconnect_max_s=1.0,
    )
    return MqttPublisher(
        settings, status_topic=STATUS, birth_payload=lambda: b"online", will_payload=b"offline"
    )


class V5Sub:
    """An MQTT 5 subscriber on its own thread that keeps payloads and content types."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.got: list[tuple[str, bytes, str | None]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self.subscribed.wait(TIMEOUT_S)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        ctype = getattr(msg.properties, "ContentType", None)
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload), ctype))

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_bursts_and_large_messages_arrive_whole_through_buffered_reads(
    mosquitto: Mosquitto, publishers: list[MqttPublisher], protocol: str
) -> None:
    """Hundreds of PUBACKs read in bursts resolve every future once; a downlink message far
    larger than one socket read, followed by a burst of small ones, arrives whole and in
    order."""
    pub = _publisher(mosquitto, protocol)
    publishers.append(pub)
    received: list[bytes] = []
    pub.subscribe("cmd/#", lambda _t, payload: received.append(payload))
    await pub.start()
    assert await pub.wait_connected(TIMEOUT_S)

    futures = [pub.publish("t/burst", str(i).encode()) for i in range(600)]
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*futures)
    assert pub.counters["acked"] == 600
    assert pub.counters["refused"] == 0

    big = os.urandom(300_000)  # several 64 kB reads
    small = [f"m{i}".encode() for i in range(200)]
    sender = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    sender.connect(mosquitto.host, mosquitto.port)
    sender.loop_start()
    try:
        await asyncio.sleep(0.2)  # the publisher's SUBSCRIBE went out with its CONNECT
        infos = [sender.publish("cmd/big", big, qos=1)]
        infos += [sender.publish("cmd/small", p, qos=1) for p in small]
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, TIMEOUT_S)
        assert await poll_until(lambda: len(received) >= 1 + len(small), TIMEOUT_S)
    finally:
        sender.loop_stop()
        sender.disconnect()
    assert received[0] == big
    assert received[1:] == small


async def test_content_type_is_sent_with_every_message(
    mosquitto: Mosquitto, publishers: list[MqttPublisher]
) -> None:
    """The shared, prepacked properties carry the content type on every message."""
    sub = V5Sub(mosquitto, "ct/#")
    try:
        pub = _publisher(mosquitto)
        publishers.append(pub)
        await pub.start()
        futures = [
            pub.publish("ct/x", b"%d" % i, content_type="application/json+zlib") for i in range(5)
        ]
        futures.append(pub.publish("ct/plain", b"p"))
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*futures)
        assert await poll_until(lambda: len(sub.got) == 6, TIMEOUT_S)
    finally:
        sub.stop()
    by_topic = sorted(sub.got)
    assert [c for t, _p, c in by_topic if t == "ct/x"] == ["application/json+zlib"] * 5
    assert [c for t, _p, c in by_topic if t == "ct/plain"] == [None]


def _deny_all_but(broker: Mosquitto, *allowed: str) -> None:
    """Restart the broker with an ACL: anonymous clients may use only `allowed` topics."""
    acl = broker.workdir / "acl"
    acl.write_text("".join(f"topic readwrite {t}\n" for t in allowed))
    acl.chmod(0o644)
    broker.conf.write_text(broker.conf.read_text() + f"\nacl_file {acl}\n")
    broker.restart()


async def test_publisher_fails_a_refused_message_with_the_reason(
    mosquitto: Mosquitto, publishers: list[MqttPublisher]
) -> None:
    _deny_all_but(mosquitto, "site/#", "ok/#")
    pub = _publisher(mosquitto)
    publishers.append(pub)
    await pub.start()
    with capture_logs() as logs:
        refused = pub.publish("secret/x", b"1")
        fine = pub.publish("ok/x", b"2")
        async with asyncio.timeout(TIMEOUT_S):
            await fine
            with pytest.raises(MessageRefusedError) as err:
                await refused
    assert err.value.code == 0x87  # Not authorized
    assert not err.value.retryable
    assert pub.counters["refused"] == 1
    assert pub.counters["acked"] == 1
    assert any(e["event"] == "broker refused a message" and e["topic"] == "secret/x" for e in logs)


async def test_uplink_drops_a_refused_message_and_delivers_the_rest(
    mosquitto: Mosquitto, publishers: list[MqttPublisher], tmp_path: Path
) -> None:
    """A message the broker will never take is counted, logged and removed from the buffer;
    it does not hold the stream back and is not sent again."""
    _deny_all_but(mosquitto, "site/#", "up/#")
    sub = V5Sub(mosquitto, "up/#")
    buffer = Buffer(
        tmp_path / "up.db",
        max_bytes=1 << 24,
        max_age_s=3600.0,
        live_s=5.0,
        streams={"deltas": StreamPolicy("telemetry")},
    )
    pub = _publisher(mosquitto)
    publishers.append(pub)
    uplink = Uplink(buffer, pub, agent_id="t", settings=UplinkSettings(window=10))
    await pub.start()
    task = asyncio.create_task(uplink.run())
    try:
        with capture_logs() as logs:
            items = [NewEntry("deltas", "up/ok", json.dumps({"n": i}).encode()) for i in range(30)]
            items.insert(12, NewEntry("deltas", "denied/x", b'{"n": -1}'))
            uplink.submit(items)
            assert await poll_until(lambda: uplink.backlog() == 0, TIMEOUT_S)
            assert await poll_until(lambda: len(sub.got) == 30, TIMEOUT_S)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sub.stop()
        buffer.close()
    assert uplink.counters["refused"] == 1
    assert uplink.counters["acked"] == 30
    assert [json.loads(p)["n"] for _t, p, _c in sub.got] == list(range(30))
    assert any(e["event"] == "message dropped: refused by the broker" for e in logs)


async def test_the_brokers_receive_maximum_bounds_what_is_in_flight(
    mosquitto: Mosquitto, publishers: list[MqttPublisher]
) -> None:
    """A broker announcing Receive Maximum 5 (MQTT 5) never has more than 5 of our messages
    unacknowledged; everything is still delivered."""
    mosquitto.conf.write_text(mosquitto.conf.read_text() + "\nmax_inflight_messages 5\n")
    mosquitto.restart()
    pub = _publisher(mosquitto)
    publishers.append(pub)
    await pub.start()
    assert await pub.wait_connected(TIMEOUT_S)
    assert pub.window == 5
    futures = [pub.publish("t/rm", b"%d" % i) for i in range(300)]
    most = 0
    async with asyncio.timeout(TIMEOUT_S):
        while not all(f.done() for f in futures):
            most = max(most, pub.in_flight)
            await asyncio.sleep(0)
    assert 0 < most <= 5
    assert pub.counters["acked"] == 300


@pytest.mark.parametrize("protocol", ["5"])
async def test_a_message_over_the_brokers_maximum_packet_size_is_refused_not_sent(
    mosquitto: Mosquitto, publishers: list[MqttPublisher], protocol: str
) -> None:
    """A broker announcing Maximum Packet Size would disconnect on a larger PUBLISH, after
    every reconnect: such a message is refused before sending (0x95, counted, logged), one of
    exactly the maximum is delivered, and the stream behind it keeps moving."""
    limit = 2000
    mosquitto.conf.write_text(mosquitto.conf.read_text() + f"\nmax_packet_size {limit}\n")
    mosquitto.restart()
    pub = _publisher(mosquitto, protocol)
    publishers.append(pub)
    await pub.start()
    assert await pub.wait_connected(TIMEOUT_S)
    topic = "t/size"
    sizes = {n: publish_size(topic, b"x" * n, None, True) for n in range(limit)}
    fits = max(n for n, size in sizes.items() if size <= limit)
    assert publish_size(topic, b"x" * fits, None, True) == limit
    with capture_logs() as logs:
        exact = pub.publish(topic, b"x" * fits)
        over = pub.publish(topic, b"x" * (fits + 1))
        after = pub.publish(topic, b"small")
        async with asyncio.timeout(TIMEOUT_S):
            await exact
            await after
            with pytest.raises(MessageRefusedError) as err:
                await over
    assert err.value.code == 0x95 and not err.value.retryable
    assert pub.counters["refused"] == 1
    assert pub.counters["disconnects"] == 0
    assert any("batch_max" in str(e.get("fix", "")) for e in logs)
