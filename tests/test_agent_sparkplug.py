"""The agent in Sparkplug B mode, read by an independent decoder (pysparkplug) through a real
mosquitto: births per driver, DDATA with the tag metrics, data held while the primary host is
offline and replayed as historical after it returns, rebirth on NCMD."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent
from edge_agent.demo import DEMO_CONFIG, demo_config
from hil.rig import Rig
from hil.tags import tags_of
from tests.fixtures.mqtt import Mosquitto, poll_until
from tests.fixtures.sparkplug import Decoder


def _of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["event"] == "message" and d["type"] == kind]


def _ms() -> int:
    return int(time.time() * 1000)


async def test_agent_speaks_sparkplug_to_an_independent_host(
    mosquitto: Mosquitto, decoder: Decoder, tmp_path: Path
) -> None:
    decoder.send({"cmd": "state", "host": "scada", "online": True, "timestamp": _ms()})
    await decoder.wait_for(lambda d: any(x["event"] == "published" for x in d))
    async with Rig(seed=13) as rig:
        cfg = demo_config(
            rig.opcua_endpoint, rig.modbus_host, rig.modbus_port, mosquitto.host, mosquitto.port,
            overrides={
                "agent": {"id": "gw1", "state_dir": str(tmp_path)},
                "sparkplug": {"enabled": True, "group_id": "plant", "primary_host_id": "scada"},
                "uplink": {"live_s": 2.0},
            },
        )  # fmt: skip
        agent = Agent(cfg, DEMO_CONFIG)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await decoder.wait_for(lambda d: len(_of(d, "DBIRTH")) >= 2)
            births = {b["device"]: b for b in _of(decoder.docs, "DBIRTH")}
            assert set(births) == {"process", "drive"}
            names = {m["name"] for m in births["process"]["metrics"]}
            assert {f"{t.name}/value" for t in tags_of("process")} <= names
            assert "flow/predicted" in names and "flow/score" in names

            def flow_values(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
                return [
                    m for d in _of(docs, "DDATA") for m in d["metrics"] if m["name"] == "flow/value"
                ]

            await decoder.wait_for(lambda d: len(flow_values(d)) >= 3)
            assert all(not m["is_historical"] for m in flow_values(decoder.docs))
            first_bd = _of(decoder.docs, "NBIRTH")[-1]["bd_seq"]

            # The primary host goes offline: NDEATH, then nothing until it is back.
            decoder.send({"cmd": "state", "host": "scada", "online": False, "timestamp": _ms()})
            await decoder.wait_for(lambda d: len(_of(d, "NDEATH")) >= 1)
            assert await poll_until(lambda: agent.uplink.backlog() > 20, 30)
            assert not agent.sparkplug or not agent.sparkplug.node.born
            await asyncio.sleep(3.0)  # older than uplink.live_s: replayed as historical
            decoder.send({"cmd": "state", "host": "scada", "online": True, "timestamp": _ms()})
            await decoder.wait_for(lambda d: len(_of(d, "NBIRTH")) >= 2)
            assert _of(decoder.docs, "NBIRTH")[-1]["bd_seq"] == (first_bd + 1) % 256
            await decoder.wait_for(lambda d: any(m["is_historical"] for m in flow_values(d)))
            assert await poll_until(lambda: agent.uplink.backlog() < 10, 30)

            # Rebirth on request: NBIRTH again, seq restarts at 0.
            n_births = len(_of(decoder.docs, "NBIRTH"))
            decoder.send({"cmd": "rebirth", "edge_node": "gw1"})
            await decoder.wait_for(lambda d: len(_of(d, "NBIRTH")) > n_births)
            assert _of(decoder.docs, "NBIRTH")[-1]["seq"] == 0
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    seqs = [d["seq"] for d in decoder.docs if d["event"] == "message" and d["seq"] is not None]
    assert all(0 <= s <= 255 for s in seqs)
