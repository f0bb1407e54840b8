"""local_broker: mosquitto as a child process, and the embedded amqtt fallback."""

from __future__ import annotations

import asyncio

from edge_agent.broker import accepts_connections, find_mosquitto, local_broker
from edge_agent.publish import MqttPublisher, MqttSettings
from tests.fixtures.mqtt import MqttSub


async def _round_trip(host: str, port: int, mqtt_sub: MqttSub, protocol: str = "5") -> None:
    sub = await mqtt_sub(host, port, "demo/#")
    pub = MqttPublisher(
        MqttSettings(host, port, client_id="edge-agent-broker-test", protocol=protocol),
        status_topic="demo/status",
        birth_payload=lambda: b"online",
        will_payload=b"offline",
    )
    await pub.start()
    try:
        assert await pub.wait_connected(5.0)
        futures = [pub.publish("demo/seq", str(i).encode()) for i in range(200)]
        async with asyncio.timeout(15.0):
            await asyncio.gather(*futures)
        assert await sub.wait_for(
            lambda ms: {int(m.payload) for m in ms if m.topic == "demo/seq"} == set(range(200))
        )
    finally:
        await pub.aclose()
    assert await sub.wait_for(
        lambda ms: any(m.topic == "demo/status" and m.payload == b"offline" for m in ms)
    )


def test_find_mosquitto_finds_the_installed_broker() -> None:
    """find_mosquitto returns an executable path on a machine with mosquitto installed."""
    path = find_mosquitto()
    assert path is not None and path.endswith("mosquitto")


async def test_local_broker_runs_mosquitto_for_a_qos1_round_trip(mqtt_sub: MqttSub) -> None:
    """The mosquitto-backed local broker carries QoS 1 messages and stops on exit."""
    async with local_broker(prefer="mosquitto") as (host, port):
        assert port > 0
        await _round_trip(host, port, mqtt_sub)
    assert not accepts_connections(host, port)


async def test_local_broker_falls_back_to_amqtt(mqtt_sub: MqttSub) -> None:
    """The embedded amqtt broker serves a paho QoS 1 round trip and stops on exit."""
    async with local_broker(prefer="amqtt") as (host, port):
        assert port > 0
        await _round_trip(host, port, mqtt_sub, protocol="3.1.1")  # amqtt has no MQTT 5
    assert not accepts_connections(host, port)
