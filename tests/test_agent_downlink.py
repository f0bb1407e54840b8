"""Commands from upstream through the running agent: rig + mosquitto + agent, commands
published on the agent's command topic, answers read from its response topic."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import Agent
from edge_agent.config import DEFAULT_DETECTOR
from edge_agent.demo import DEMO_CONFIG, demo_config
from edge_agent.sign_commands import build_command, parameters_content
from hil.rig import Rig
from models.process.engine import SpecModel
from tests.fixtures.mqtt import Collector, Mosquitto, MqttSub, poll_until
from tests.fixtures.schemas import check_messages

KEY_ID = "ops-test"


@dataclass
class Setup:
    agent: Agent
    sub: Collector
    broker: Mosquitto
    key: Ed25519PrivateKey
    task: asyncio.Task[None]
    stop: asyncio.Event

    def send(self, doc: dict[str, Any] | bytes) -> None:
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        client.connect(self.broker.host, self.broker.port)
        info = client.publish(f"{self.agent.reporter.prefix}/commands", payload, qos=1)
        client.loop_start()
        info.wait_for_publish(5)
        client.loop_stop()
        client.disconnect()

    def command(self, cmd: str, kind: str = "", content: bytes | None = None) -> dict[str, Any]:
        return build_command(
            self.key, KEY_ID, agent_id=self.agent.cfg.agent.id, cmd=cmd, kind=kind, content=content
        )

    def responses(self) -> list[dict[str, Any]]:
        topic = f"{self.agent.reporter.prefix}/responses"
        return [json.loads(m.payload) for m in self.sub.snapshot() if m.topic == topic]

    async def answer(self, command_id: str) -> dict[str, Any]:
        def answered(_: object) -> bool:
            return any(r["id"] == command_id for r in self.responses())

        assert await self.sub.wait_for(answered, 30), f"no response to {command_id}"
        return next(r for r in self.responses() if r["id"] == command_id)


@pytest.fixture
async def setup(mosquitto: Mosquitto, mqtt_sub: MqttSub, tmp_path: Path) -> AsyncIterator[Setup]:
    key = Ed25519PrivateKey.generate()
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / f"{KEY_ID}.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    async with Rig(seed=11) as rig:
        cfg = demo_config(
            rig.opcua_endpoint, rig.modbus_host, rig.modbus_port, mosquitto.host, mosquitto.port,
            overrides={
                "agent": {"id": "dl", "state_dir": str(tmp_path / "state")},
                "downlink": {"enabled": True, "trust_dir": str(trust)},
            },
        )  # fmt: skip
        agent = Agent(cfg, DEMO_CONFIG)
        sub = await mqtt_sub(mosquitto.host, mosquitto.port, f"{agent.reporter.prefix}/#")
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        assert await poll_until(lambda: agent.publisher.connected, 30)
        try:
            yield Setup(agent, sub, mosquitto, key, task, stop)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


async def test_signed_updates_apply_and_roll_back_bad_ones_change_nothing(setup: Setup) -> None:
    """A signed detector and parameter update are applied to the running agent and can be
    rolled back; a badly signed, an unsigned and a truncated command are refused with their
    reason while the running model stays."""
    a = setup.agent
    await asyncio.sleep(2.0)  # some residual history for checking the detector
    running_detector = a.detector
    det = setup.command("model-update", "detector", DEFAULT_DETECTOR.read_bytes())
    forged = dict(det, id=det["id"] + "x")  # the signature covers the id
    setup.send(forged)
    assert (await setup.answer(forged["id"]))["reason"] == "bad-signature"
    assert a.detector is running_detector

    setup.send(det)
    r = await setup.answer(det["id"])
    assert r["ok"] is True, r
    assert a.detector is not running_detector
    assert a.detector_path.name == "active.onnx"

    assert isinstance(a.model, SpecModel)
    i = a.model.spec.params.index("pump_efficiency_frac")
    before = float(a.model._ens.params[0, i])
    new_eff = round(before * 0.97, 6)
    par = setup.command(
        "model-update", "parameters", parameters_content({"pump_efficiency_frac": new_eff})
    )
    setup.send(par)
    assert (await setup.answer(par["id"]))["ok"] is True
    assert isinstance(a.model, SpecModel)
    assert float(a.model._ens.params[0, i]) == pytest.approx(new_eff)

    back = setup.command("rollback", "parameters")
    setup.send(back)
    assert (await setup.answer(back["id"]))["ok"] is True
    assert float(a.model._ens.params[0, i]) == pytest.approx(before)

    unsigned = build_command(
        None, KEY_ID, agent_id=a.cfg.agent.id, cmd="model-update", kind="parameters",
        content=parameters_content({"pump_efficiency_frac": 0.5}),
    )  # fmt: skip
    setup.send(unsigned)
    assert (await setup.answer(unsigned["id"]))["reason"] == "unsigned"
    out_of_range = setup.command(
        "model-update", "parameters", parameters_content({"pump_efficiency_frac": 7.0})
    )
    setup.send(out_of_range)
    refused = await setup.answer(out_of_range["id"])
    assert refused["ok"] is False and "pump_efficiency_frac" in refused["detail"]
    assert float(a.model._ens.params[0, i]) == pytest.approx(before)

    setup.send(json.dumps(det).encode()[:40])  # truncated: no id to answer to
    assert await setup.sub.wait_for(
        lambda _: any(r["reason"] == "malformed" for r in setup.responses()), 20
    )
    assert a.downlink is not None and a.downlink.handler.counters["malformed"] == 1
    assert not setup.task.done(), "the agent must keep running"
    assert check_messages(setup.sub.snapshot()) > 0  # responses and deltas match their schemas


async def test_rebirth_and_reload(setup: Setup) -> None:
    """rebirth (unsigned by default) republishes every tag; a signed reload-config stops the
    agent with a reload request after the file was checked."""
    a = setup.agent
    await asyncio.sleep(1.0)
    n = len(setup.sub.snapshot())
    reb = build_command(None, KEY_ID, agent_id=a.cfg.agent.id, cmd="rebirth")
    setup.send(reb)
    assert (await setup.answer(reb["id"]))["ok"] is True

    def all_tags_again(msgs: list[Any]) -> bool:
        tags = set()
        for m in msgs[n:]:
            if m.topic.endswith("/deltas"):
                tags |= {d["tag"] for d in json.loads(m.payload)["deltas"]}
        return tags >= set(a.image.names)

    assert await setup.sub.wait_for(all_tags_again, 10)
    rel = setup.command("reload-config")
    setup.send(rel)
    assert (await setup.answer(rel["id"]))["ok"] is True
    await asyncio.wait_for(setup.task, 20)
    assert a.reload_requested
