"""MqttPublisher against a real mosquitto: queueing, outages, kill -9, birth/will/offline status."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from edge_agent.publish import (
    MessageDroppedError,
    MqttPublisher,
    MqttSettings,
    PublisherClosedError,
    backoff_delay,
)
from tests.fixtures.mqtt import Mosquitto, MqttSub, Received, poll_until

STATUS = "site/agent/status"
TIMEOUT_S = 20.0


def _settings(broker: Mosquitto, **overrides: object) -> MqttSettings:
    base: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": f"edge-agent-test-{os.getpid()}",
        "reconnect_max_s": 1.0,
        "connect_timeout_s": 2.0,
    }
    base.update(overrides)
    return MqttSettings(**base)  # type: ignore[arg-type]  # test helper: kwargs by name


def _publisher(settings: MqttSettings) -> MqttPublisher:
    return MqttPublisher(
        settings, status_topic=STATUS, birth_payload=lambda: b"online", will_payload=b"offline"
    )


@pytest.fixture
async def make_publisher() -> AsyncIterator[Callable[[MqttSettings], MqttPublisher]]:
    """Factory for publishers that are closed at teardown even when the test fails."""
    made: list[MqttPublisher] = []

    def make(settings: MqttSettings) -> MqttPublisher:
        pub = _publisher(settings)
        made.append(pub)
        return pub

    yield make
    for pub in made:
        await pub.aclose(drain_timeout_s=0.5)


def _seqs(messages: list[Received], topic: str = "t/seq") -> set[int]:
    return {int(m.payload) for m in messages if m.topic == topic}


async def _gather(futures: list[asyncio.Future[None]]) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*futures)


async def test_messages_published_before_broker_is_up_are_delivered(
    mosquitto: Mosquitto, mqtt_sub: MqttSub, make_publisher: Callable[[MqttSettings], MqttPublisher]
) -> None:
    """Messages accepted while the broker is down are delivered once it comes up."""
    sub = await mqtt_sub(mosquitto.host, mosquitto.port, "t/#", persistent=True)
    mosquitto.save()  # the subscriber's session survives the kill below
    mosquitto.kill()

    pub = make_publisher(_settings(mosquitto))
    await pub.start()
    futures = [pub.publish("t/seq", str(i).encode()) for i in range(200)]
    assert not await pub.wait_connected(0.3)
    assert not any(f.done() for f in futures)
    assert pub.queued == 200

    mosquitto.start()
    await _gather(futures)
    assert await sub.wait_for(lambda ms: _seqs(ms) == set(range(200)), TIMEOUT_S)
    assert pub.counters["acked"] == 200
    assert pub.counters["connects"] == 1


async def test_stream_survives_broker_kill_and_restart(
    mosquitto: Mosquitto, mqtt_sub: MqttSub, make_publisher: Callable[[MqttSettings], MqttPublisher]
) -> None:
    """Every message of a stream arrives although the broker is SIGKILLed mid-stream."""
    sub = await mqtt_sub(mosquitto.host, mosquitto.port, "t/#", persistent=True)
    mosquitto.save()
    pub = make_publisher(_settings(mosquitto))
    await pub.start()
    assert await pub.wait_connected(5.0)

    first = [pub.publish("t/seq", str(i).encode()) for i in range(3000)]
    assert await poll_until(lambda: pub.counters["acked"] >= 500)
    # Freeze the broker mid-stream, let the subscriber read what the broker already forwarded,
    # then kill it. Without the pause a kill -9 can also destroy messages the broker had
    # acknowledged (its queues, or a peer's receive buffer discarded on RST): broker-side
    # loss that no publisher can see, which would make this test measure the broker.
    mosquitto.pause()

    def acked() -> set[int]:
        return {i for i, f in enumerate(first) if f.done()}

    assert await poll_until(lambda: acked() <= _seqs(sub.snapshot()))
    assert pub.queued > 0, "the kill must land while messages are in flight"
    mosquitto.kill()
    second = [pub.publish("t/seq", str(i).encode()) for i in range(3000, 4000)]
    assert await poll_until(lambda: not pub.connected)

    mosquitto.start()
    await _gather(first + second)
    assert await sub.wait_for(lambda ms: _seqs(ms) == set(range(4000)), TIMEOUT_S)
    assert pub.counters["resent"] >= 1
    assert pub.counters["acked"] == 4000
    assert pub.counters["disconnects"] == 1
    assert pub.counters["connects"] == 2


async def test_status_is_online_while_connected_and_offline_after_clean_close(
    mosquitto: Mosquitto, mqtt_sub: MqttSub, make_publisher: Callable[[MqttSettings], MqttPublisher]
) -> None:
    """The retained status reads online after connect and offline after aclose."""
    pub = make_publisher(_settings(mosquitto))
    await pub.start()
    assert await pub.wait_connected(5.0)
    fut = pub.publish("t/seq", b"1")
    await _gather([fut])  # the birth went out before this message on the same connection

    late = await mqtt_sub(mosquitto.host, mosquitto.port, STATUS)
    assert await late.wait_for(lambda ms: Received(STATUS, b"online", True) in ms, 5.0)

    await pub.aclose()
    assert not pub.connected
    after = await mqtt_sub(mosquitto.host, mosquitto.port, STATUS)
    assert await after.wait_for(lambda ms: Received(STATUS, b"offline", True) in ms, 5.0)
    with pytest.raises(PublisherClosedError):
        pub.publish("t/seq", b"2")


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from edge_agent.publish import MqttPublisher, MqttSettings

    async def main() -> None:
        settings = MqttSettings(sys.argv[1], int(sys.argv[2]), client_id="edge-agent-child")
        pub = MqttPublisher(settings, status_topic=sys.argv[3],
                            birth_payload=lambda: b"online", will_payload=b"offline")
        await pub.start()
        if not await pub.wait_connected(10.0):
            sys.exit(3)
        await pub.publish("t/child", b"hello")
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_will_is_published_when_the_publisher_process_is_killed(
    mosquitto: Mosquitto, mqtt_sub: MqttSub
) -> None:
    """A publisher process killed with SIGKILL leaves the retained will (offline) behind."""
    watcher = await mqtt_sub(mosquitto.host, mosquitto.port, STATUS)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        mosquitto.host,
        str(mosquitto.port),
        STATUS,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(TIMEOUT_S):  # log lines may come first
            while (line := await child.stdout.readline()).strip() != b"ready":
                assert line, "the publisher process exited before it was ready"
        assert await watcher.wait_for(lambda ms: [m.payload for m in ms] == [b"online"], 5.0)
        child.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(child.wait(), 5.0) == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert await watcher.wait_for(lambda ms: [m.payload for m in ms] == [b"online", b"offline"])
    late = await mqtt_sub(mosquitto.host, mosquitto.port, STATUS)
    assert await late.wait_for(lambda ms: Received(STATUS, b"offline", True) in ms, 5.0)


async def test_full_queue_drops_oldest_telemetry_first(
    mosquitto: Mosquitto, mqtt_sub: MqttSub, make_publisher: Callable[[MqttSettings], MqttPublisher]
) -> None:
    """With the broker down and the queue full, the oldest non-retained message goes first."""
    sub = await mqtt_sub(mosquitto.host, mosquitto.port, "t/#", persistent=True)
    mosquitto.save()
    mosquitto.kill()
    pub = make_publisher(_settings(mosquitto, max_queue=4))
    await pub.start()
    alarm = pub.publish("t/alarm", b"A", retain=True)
    telemetry = [pub.publish("t/seq", str(i).encode()) for i in range(6)]

    dropped = [f for f in telemetry if f.done()]
    assert len(dropped) == 3
    assert all(isinstance(f.exception(), MessageDroppedError) for f in dropped)
    assert telemetry[:3] == dropped  # the oldest three
    assert pub.counters["dropped_queue_full"] == 3
    assert pub.queued == 4

    mosquitto.start()
    await _gather([alarm, *telemetry[3:]])
    assert await sub.wait_for(lambda ms: _seqs(ms) == {3, 4, 5}, TIMEOUT_S)
    assert await sub.wait_for(lambda ms: any(m.topic == "t/alarm" for m in ms), TIMEOUT_S)


async def test_aclose_fails_what_the_broker_never_acknowledged(
    mosquitto: Mosquitto, make_publisher: Callable[[MqttSettings], MqttPublisher]
) -> None:
    """Closing while the broker is down fails pending futures with PublisherClosedError."""
    mosquitto.kill()
    pub = make_publisher(_settings(mosquitto))
    await pub.start()
    fut = pub.publish("t/seq", b"1")
    await pub.aclose(drain_timeout_s=0.2)
    assert isinstance(fut.exception(), PublisherClosedError)
    assert pub.counters["acked"] == 0


async def test_password_never_appears_in_logs(
    mosquitto: Mosquitto, make_publisher: Callable[[MqttSettings], MqttPublisher]
) -> None:
    """Connect, outage and close log events carry no password, and repr hides it."""
    secret = "s3cr3t-pa55"
    settings = _settings(mosquitto, username="agent", password=secret)
    assert secret not in repr(settings)
    with capture_logs() as logs:
        pub = make_publisher(settings)
        await pub.start()
        assert await pub.wait_connected(5.0)
        mosquitto.kill()
        assert await poll_until(lambda: not pub.connected)
        await pub.aclose(drain_timeout_s=0.1)
    events = [entry["event"] for entry in logs]
    assert "mqtt connected" in events and "mqtt disconnected" in events
    assert all(secret not in repr(entry) for entry in logs)


@given(
    attempt=st.integers(min_value=0, max_value=200),
    low=st.floats(min_value=0.01, max_value=2.0),
    span=st.floats(min_value=1.0, max_value=50.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_backoff_stays_within_bounds_and_grows(
    attempt: int, low: float, span: float, jitter: float
) -> None:
    """Reconnect delays stay in [min, max] and the n-th delay never undercuts half of 2^n*min."""
    high = low * span

    def rng(a: float, b: float) -> float:
        return a + (b - a) * jitter

    delay = backoff_delay(attempt, low, high, rng)
    assert low <= delay <= high
    assert delay >= min(high, low * 2.0 ** min(attempt, 30)) / 2.0


async def test_hung_broker_is_detected_by_keepalive_and_messages_resent(
    mosquitto: Mosquitto, mqtt_sub: MqttSub, make_publisher: Callable[[MqttSettings], MqttPublisher]
) -> None:
    """A broker that stops answering is dropped after the keepalive and its messages resent."""
    sub = await mqtt_sub(mosquitto.host, mosquitto.port, "t/#", persistent=True)
    mosquitto.save()
    pub = make_publisher(_settings(mosquitto, keepalive_s=1))
    await pub.start()
    assert await pub.wait_connected(5.0)
    mosquitto.pause()
    fut = pub.publish("t/seq", b"7")
    assert await poll_until(lambda: not pub.connected, 10.0)
    assert not fut.done()
    mosquitto.kill()
    mosquitto.start()
    await _gather([fut])
    assert await sub.wait_for(lambda ms: 7 in _seqs(ms), TIMEOUT_S)
    assert pub.counters["resent"] == 1
