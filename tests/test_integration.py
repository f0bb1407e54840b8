"""The whole loop on real protocols: hil rig -> drivers -> Digital Original -> detector -> MQTT.

Each test runs the rig (real OPC UA and Modbus servers on loopback), a real mosquitto and the
agent in this process, and asserts only on what an MQTT subscriber receives.

Stated bounds (plant seconds = wall seconds, the rig runs in real time):
- warm-up: every model output has a score within WARMUP_S of the agent's start;
- an injected physical fault raises an anomaly alarm on one of its expected tags within
  DETECT_S (measured here: 2-20 s, see the README);
- a stopped PLC raises quality alarms on its tags within QUALITY_S, and good data flows again
  within RECOVER_S of its return.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.demo import DEMO_CONFIG, demo_config
from hil.faults import expected_tags
from hil.rig import Rig
from hil.tags import tags_of
from tests.fixtures.mqtt import Collector, Mosquitto, MqttSub, Received, deltas
from tests.fixtures.schemas import check_messages

WARMUP_S = 30.0
DETECT_S = 45.0
QUALITY_S = 15.0
RECOVER_S = 30.0
NORMAL_S = 40.0


@dataclass
class Loop:
    rig: Rig
    agent: Agent
    sub: Collector
    broker: Mosquitto
    root: str

    def docs(self, suffix: str) -> list[dict[str, Any]]:
        return [
            json.loads(m.payload) for m in self.sub.snapshot() if m.topic == f"{self.root}/{suffix}"
        ]

    def alarms(self) -> list[dict[str, Any]]:
        return self.docs("alarms")

    def raised(self, kind: str) -> list[dict[str, Any]]:
        return [a for a in self.alarms() if a["event"] == "raised" and a["kind"] == kind]

    async def wait(self, pred: Callable[[list[Received]], bool], timeout_s: float) -> bool:
        return await self.sub.wait_for(pred, timeout_s)

    async def wait_scored(self) -> None:
        outputs = set(self.agent.output_tags)

        def scored(msgs: list[Received]) -> bool:
            seen = {d.tag for d in deltas(msgs) if d.doc["score"] is not None}
            return outputs <= seen

        assert await self.wait(scored, WARMUP_S), "model outputs never got a score"


@pytest.fixture
async def loop(mosquitto: Mosquitto, mqtt_sub: MqttSub, tmp_path: Path) -> AsyncIterator[Loop]:
    """Rig + agent + subscriber, the agent configured from the demo config."""
    async with Rig(seed=7) as rig:
        cfg = demo_config(
            rig.opcua_endpoint,
            rig.modbus_host,
            rig.modbus_port,
            mosquitto.host,
            mosquitto.port,
            overrides={"agent": {"id": "it", "state_dir": str(tmp_path)}},
        )
        agent = Agent(cfg, DEMO_CONFIG)
        root = agent.reporter.prefix
        sub = await mqtt_sub(mosquitto.host, mosquitto.port, f"{root}/#")
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            yield Loop(rig, agent, sub, mosquitto, root)
        finally:
            stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, 20)
            assert task.done() and task.exception() is None
            assert check_messages(sub.snapshot()) > 0  # every message matches its schema


async def test_normal_operation_raises_no_alarm(loop: Loop) -> None:
    """In normal operation every tag is published GOOD with a prediction, and nothing alarms."""
    await loop.wait_scored()
    await asyncio.sleep(NORMAL_S)
    assert loop.alarms() == []
    latest = {d.tag: d.doc for d in deltas(loop.sub.snapshot())}
    assert set(latest) == {t.name for t in tags_of("process") + tags_of("drive")}
    assert all(d["quality"] == "good" for d in latest.values())
    for tag in loop.agent.output_tags:
        assert latest[tag]["predicted"] is not None and latest[tag]["score"] < 1.0
    status = [m for m in loop.sub.snapshot() if m.topic == f"{loop.root}/status"]
    assert json.loads(status[-1].payload)["state"] == "online"


@pytest.mark.parametrize("kind", ["drift", "stuck", "leak", "pump-wear"])
async def test_fault_raises_alarm_on_its_tags(loop: Loop, kind: str) -> None:
    """An injected plant fault raises an anomaly alarm on a tag it disturbs, within DETECT_S."""
    await loop.wait_scored()
    await asyncio.sleep(5)
    assert loop.raised("anomaly") == [], "false alarm before the fault"
    loop.rig.inject(kind)
    expected = set(expected_tags(kind))

    def hit(_: list[Received]) -> bool:
        return any(a["tag"] in expected for a in loop.raised("anomaly"))

    assert await loop.wait(hit, DETECT_S), f"no alarm on {expected}: {loop.alarms()}"
    first = loop.raised("anomaly")[0]
    assert first["score"] >= 1.0 and first["contributors"]


@pytest.mark.parametrize("plc", ["process", "drive"])
async def test_plc_restart_alarms_and_recovers(loop: Loop, plc: str) -> None:
    """A PLC going away raises quality alarms on its tags; after its return data flows again
    and no anomaly alarm storm follows."""
    await loop.wait_scored()
    loop.rig.inject("plc-restart", plc=plc, down_s=6.0)
    tags = {t.name for t in tags_of(plc)}

    def quality_raised(_: list[Received]) -> bool:
        return tags <= {a["tag"] for a in loop.raised("quality")}

    assert await loop.wait(quality_raised, QUALITY_S), loop.alarms()
    n_before = len(loop.sub.snapshot())

    def recovered(msgs: list[Received]) -> bool:
        cleared = {
            a["tag"] for a in loop.alarms() if a["event"] == "cleared" and a["kind"] == "quality"
        }
        good = {d.tag for d in deltas(msgs[n_before:]) if d.doc["quality"] == "good"}
        return tags <= cleared and tags <= good

    assert await loop.wait(recovered, RECOVER_S), loop.alarms()
    await loop.wait_scored()
    await asyncio.sleep(10)
    assert loop.raised("anomaly") == [], "anomaly alarms after a PLC restart"


async def test_broker_restart_deltas_flow_again(loop: Loop) -> None:
    """After the broker is killed and restarted, deltas flow again without restarting the agent."""
    await loop.wait_scored()
    loop.broker.kill()
    await asyncio.sleep(3)
    loop.broker.start()
    assert await loop.sub.wait_subscribed(20)
    n = len(loop.sub.snapshot())

    def flowing(msgs: list[Received]) -> bool:
        return len(deltas(msgs[n:])) >= 20

    assert await loop.wait(flowing, RECOVER_S)
    assert loop.agent.publisher.counters["connects"] >= 2


async def test_nan_from_plc_is_published_bad_and_does_not_poison_the_model(loop: Loop) -> None:
    """A NaN from a transmitter becomes a BAD delta with a quality alarm; the agent keeps
    running, and once the value is good again the prediction is finite and nothing else alarms."""
    await loop.wait_scored()
    loop.rig.inject("bad-value", tag="fluid_temp", value=math.nan)

    def bad(msgs: list[Received]) -> bool:
        return any(
            d.doc["quality"] == "bad" and d.doc["reason"] == "nan"
            for d in deltas(msgs, "fluid_temp")
        )

    assert await loop.wait(bad, QUALITY_S)
    bad_doc = next(
        d.doc for d in deltas(loop.sub.snapshot(), "fluid_temp") if d.doc["quality"] == "bad"
    )
    assert bad_doc["value"] is None and bad_doc["score"] is None
    assert await loop.wait(
        lambda _: any(a["tag"] == "fluid_temp" for a in loop.raised("quality")), QUALITY_S
    )
    loop.rig.clear_faults()
    await loop.wait_scored()
    await asyncio.sleep(5)
    last = deltas(loop.sub.snapshot(), "fluid_temp")[-1].doc
    assert last["quality"] == "good" and math.isfinite(last["predicted"])
    assert loop.raised("anomaly") == []


async def test_out_of_range_value_is_bad(loop: Loop) -> None:
    """A finite value outside the tag's configured range is published BAD with reason 'range'."""
    await loop.wait_scored()
    loop.rig.inject("bad-value", tag="motor_current", value=1e6)

    def bad(msgs: list[Received]) -> bool:
        return any(d.doc["reason"] == "range" for d in deltas(msgs, "motor_current"))

    assert await loop.wait(bad, QUALITY_S)
    assert loop.agent.image.bad_counts["range"] > 0


async def test_plc_down_at_start_is_picked_up(
    mosquitto: Mosquitto, mqtt_sub: MqttSub, tmp_path: Path
) -> None:
    """A PLC that is down when the agent starts is reported BAD and picked up when it appears."""
    async with Rig(seed=3) as rig:
        await rig.modbus.stop()
        cfg = demo_config(
            rig.opcua_endpoint,
            rig.modbus_host,
            rig.modbus_port,
            mosquitto.host,
            mosquitto.port,
            overrides={"agent": {"id": "late", "state_dir": str(tmp_path)}},
        )
        agent = Agent(cfg, DEMO_CONFIG)
        sub = await mqtt_sub(mosquitto.host, mosquitto.port, f"{agent.reporter.prefix}/#")
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:

            def seen(quality: str) -> Callable[[list[Received]], bool]:
                return lambda msgs: any(
                    d.doc["quality"] == quality for d in deltas(msgs, "motor_current")
                )

            assert await sub.wait_for(seen("bad"), QUALITY_S)
            await rig.modbus.start()
            assert await sub.wait_for(seen("good"), RECOVER_S)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


async def test_authored_model_with_ensemble_publishes_estimates(
    mosquitto: Mosquitto, mqtt_sub: MqttSub, tmp_path: Path
) -> None:
    """The loop model authored through the public API (kind = "spec") runs in the agent with
    an ensemble: the retained `model` topic carries parameter estimates, deltas carry both
    scores, and normal operation raises no alarm."""
    async with Rig(seed=9) as rig:
        overrides: dict[str, Any] = {
            "agent": {"id": "spec", "state_dir": str(tmp_path)},
            "model": {
                "kind": "spec",
                "spec": "../models/process/units/water_loop.toml",
                "ensemble": {"variants": 100, "vary": ["pump_efficiency_frac"], "publish_s": 1.0},
            },
        }
        cfg = demo_config(rig.opcua_endpoint, rig.modbus_host, rig.modbus_port,
                          mosquitto.host, mosquitto.port, overrides=overrides)  # fmt: skip
        agent = Agent(cfg, DEMO_CONFIG)
        root = agent.reporter.prefix
        sub = await mqtt_sub(mosquitto.host, mosquitto.port, f"{root}/#")
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            loop = Loop(rig, agent, sub, mosquitto, root)
            await loop.wait_scored()
            await asyncio.sleep(5)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    assert check_messages(sub.snapshot()) > 0
    models = loop.docs("model")
    assert models, "no model estimate published"
    eff = models[-1]["params"]["pump_efficiency_frac"]
    assert 0.1 <= eff["estimate"] <= 0.9 and eff["std"] >= 0 and eff["unit"]
    flow = deltas(loop.sub.snapshot(), "flow")[-1].doc
    assert flow["prediction"] == "good" and isinstance(flow["cusum"], float)
    assert loop.raised("anomaly") == []
