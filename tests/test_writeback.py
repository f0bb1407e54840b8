"""Findings written back to the plant floor (`[[writeback]]`): the writeback driven with real
drivers against the rig's PLCs over OPC UA and Modbus, its config checks, and the running agent
writing to a panel PLC while the rig runs."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from drivers.modbus import ModbusDriver, ModbusTag
from drivers.opcua import OpcUaDriver, OpcUaTag
from edge_agent.agent import Agent
from edge_agent.config import ConfigError, load_config, parse_config
from edge_agent.demo import DEMO_CONFIG
from edge_agent.writeback import Target, Writeback
from hil.plc_modbus import ModbusPlc
from hil.plc_opcua import OpcUaPlc
from hil.rig import Rig
from hil.tags import AGENT_NODES, NAMESPACE_URI, tags_of
from tests.fixtures.mqtt import Mosquitto, poll_until

WAIT_S = 20.0  # bound for "eventually"; not a timing assertion
IO = 2  # the Modbus unit behind the drive that holds the panel registers
NAMES = ("flow", "level", "motor_current", "fluid_temp")
OPCUA_TAGS = [
    OpcUaTag(n.name, f"nsu={NAMESPACE_URI};s=Agent.{n.name}", writable=True) for n in AGENT_NODES
]
MODBUS_TAGS = [
    ModbusTag("alarm_word", 0, "uint16", unit=IO, writable=True),
    ModbusTag("health", 1, "uint16", unit=IO, writable=True),
    ModbusTag("alarm_count", 2, "uint16", unit=IO, writable=True),
]


@dataclass
class Plcs:
    opcua: OpcUaPlc
    modbus: ModbusPlc
    ua: OpcUaDriver
    mb: ModbusDriver

    async def held(self) -> dict[str, float]:
        """What both PLCs hold now, `<protocol>.<tag>`."""
        out = {f"ua.{n.name}": _num(await self.opcua.written(n.name)) for n in AGENT_NODES}
        words = await self.modbus.words(IO, "holding", 0, 3)
        out.update({f"mb.{t.name}": float(w) for t, w in zip(MODBUS_TAGS, words, strict=True)})
        return out


@pytest_asyncio.fixture
async def plcs() -> AsyncIterator[Plcs]:
    async with (
        OpcUaPlc(tags_of("process"), writable=AGENT_NODES) as opcua,
        ModbusPlc(tags_of("drive"), extra_units=[IO]) as modbus,
    ):
        ua = OpcUaDriver("panel", opcua.endpoint, OPCUA_TAGS, timeout_s=1.0)
        mb = ModbusDriver("io", modbus.host, modbus.port, MODBUS_TAGS, timeout_s=0.5)
        await ua.connect()
        await mb.connect()
        try:
            yield Plcs(opcua, modbus, ua, mb)
        finally:
            await ua.aclose()
            await mb.aclose()


def targets(min_interval_s: float, refresh_s: float = 0.0) -> list[Target]:
    """alarm_word, health and alarm_count on both PLCs over NAMES."""
    out = []
    for driver, tag, source in (
        ("panel", "alarm_word", "alarm_word"),
        ("panel", "health", "health"),
        ("io", "alarm_word", "alarm_word"),
        ("io", "health", "health"),
        ("io", "alarm_count", "alarm_count"),
    ):
        out.append(Target(driver, tag, source, NAMES, min_interval_s, refresh_s))
    return out


class Ticks:
    """Alarm states fed to the writeback at a tick rate, as the agent's tick does."""

    def __init__(self, wb: Writeback) -> None:
        self.wb = wb
        self.anomaly: npt.NDArray[np.bool_] = np.zeros(len(NAMES), dtype=np.bool_)
        self.quality: npt.NDArray[np.bool_] = np.zeros(len(NAMES), dtype=np.bool_)

    def set(self, anomaly: tuple[str, ...] = (), quality: tuple[str, ...] = ()) -> None:
        self.anomaly[:] = [n in anomaly for n in NAMES]
        self.quality[:] = [n in quality for n in NAMES]

    async def until(self, cond: Callable[[], Awaitable[bool]]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not await cond():
                self.wb.observe(self.anomaly, self.quality)
                await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def running(plcs: Plcs) -> AsyncIterator[Callable[..., Writeback]]:
    """Start a writeback over the PLCs' drivers (stopped at the end)."""
    tasks: list[asyncio.Task[None]] = []

    def start(tgts: list[Target]) -> Writeback:
        wb = Writeback(tgts, {"panel": plcs.ua, "io": plcs.mb}, NAMES)
        tasks.append(asyncio.create_task(wb.run()))
        return wb

    yield start
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks, timeout=5.0)


async def test_a_fault_raises_the_alarm_word_on_both_plcs_and_clears_after(
    plcs: Plcs, running: Callable[..., Writeback]
) -> None:
    """An anomaly on level and a quality alarm on fluid_temp set bits 1 and 3 of the alarm word
    and health 2 on both PLCs; once they clear, the PLCs hold 0 again. Every write is logged
    with its old and new value and counted ok."""
    wb = running(targets(min_interval_s=0.05))
    ticks = Ticks(wb)
    with capture_logs() as logs:
        ticks.set(anomaly=("level",), quality=("fluid_temp",))

        async def raised() -> bool:
            h = await plcs.held()
            return h["ua.alarm_word"] == h["mb.alarm_word"] == 0b1010 and (
                h["ua.health"] == h["mb.health"] == 2 and h["mb.alarm_count"] == 2
            )

        await ticks.until(raised)
        ticks.set(quality=("fluid_temp",))

        async def degraded() -> bool:
            h = await plcs.held()
            return h["ua.alarm_word"] == h["mb.alarm_word"] == 0b1000 and h["mb.health"] == 1

        await ticks.until(degraded)
        ticks.set()

        async def cleared() -> bool:
            return all(v == 0 for k, v in (await plcs.held()).items() if k != "ua.heartbeat")

        await ticks.until(cleared)
    assert wb.counts.failed == wb.counts.mismatch == 0
    writes = [e for e in logs if e["event"] == "plc write"]
    assert wb.counts.ok == len(writes) >= 12
    word = [(e["old"], e["new"]) for e in writes if (e["driver"], e["tag"]) == ("io", "alarm_word")]
    assert (10.0, 8.0) in word and (8.0, 0.0) in word


async def test_the_rate_limit_holds_back_changes_and_the_latest_value_goes_out(
    plcs: Plcs, running: Callable[..., Writeback]
) -> None:
    """With a long min_interval_s, a burst of changes after the first write is held back and
    counted; nothing more reaches the PLC. With a short one the latest value goes out and
    unchanged values are not written again until refresh_s passes."""
    slow = running([Target("io", "alarm_word", "alarm_word", NAMES, 3600.0, 0.0)])
    ticks = Ticks(slow)
    ticks.set(anomaly=("flow",))
    await ticks.until(lambda: _holds(plcs, "mb.alarm_word", 1))
    writes_before = plcs.modbus.write_requests
    for k in range(10):
        ticks.set(anomaly=NAMES[: k % 4 + 1])  # words 1, 3, 7, 15, 1, 3, ...
        slow.observe(ticks.anomaly, ticks.quality)
        await asyncio.sleep(0.01)  # gives the writer task its chance to (wrongly) write
    # Words 3, 7, 15 are held back twice and 3 once more (7); word 1 is what the PLC holds, so
    # it needs no write and is not counted.
    assert slow.counts.ok == 1 and slow.counts.rate_limited == 7
    assert plcs.modbus.write_requests == writes_before
    assert (await plcs.held())["mb.alarm_word"] == 1

    fast = running([Target("io", "alarm_count", "alarm_count", NAMES, 0.05, 0.2)])
    ticks = Ticks(fast)
    ticks.set(anomaly=("flow", "level", "fluid_temp"))
    await ticks.until(lambda: _holds(plcs, "mb.alarm_count", 3))
    # Unchanged: written again only as a refresh, each one read back equal.
    await ticks.until(lambda: _true(fast.counts.ok >= 3))
    assert fast.counts.failed == fast.counts.mismatch == 0


async def _holds(plcs: Plcs, key: str, value: float) -> bool:
    return (await plcs.held())[key] == value


async def _true(x: bool) -> bool:
    return x


async def test_a_plc_that_vanishes_fails_counted_and_writes_resume_after(
    plcs: Plcs, running: Callable[..., Writeback]
) -> None:
    """With both PLCs stopped, writes fail (counted, logged once per target, nothing raised);
    when they are back and the links reconnect, the pending values are written."""
    wb = running(targets(min_interval_s=0.05))
    ticks = Ticks(wb)
    await ticks.until(lambda: _true(wb.counts.ok >= 5))  # the initial zeros
    await plcs.opcua.stop()
    await plcs.modbus.stop()
    with capture_logs() as logs:
        ticks.set(anomaly=("motor_current",))
        await ticks.until(lambda: _true(wb.counts.failed >= 15))  # three rounds of five
        failed_logs = [e for e in logs if e["event"] == "plc write failed"]
        assert len({(e["driver"], e["tag"]) for e in failed_logs}) == len(failed_logs) == 5
        await plcs.opcua.start()
        await plcs.modbus.start()
        await plcs.ua.connect()
        await plcs.mb.connect()

        async def written() -> bool:
            h = await plcs.held()
            return h["ua.alarm_word"] == h["mb.alarm_word"] == 0b100 and h["mb.health"] == 2

        await ticks.until(written)
    assert sum(e["event"] == "plc write ok again" for e in logs) >= 3


async def test_a_plc_that_holds_its_writes_stalls_only_its_own_target(plcs: Plcs) -> None:
    """While the Modbus unit holds a write unanswered, the ticks go on and the OPC UA target is
    written; the held write completes when the unit answers, read back equal."""
    slow = ModbusDriver("io", plcs.modbus.host, plcs.modbus.port, MODBUS_TAGS, timeout_s=10.0)
    await slow.connect()
    wb = Writeback(targets(min_interval_s=0.05)[:3], {"panel": plcs.ua, "io": slow}, NAMES)
    task = asyncio.create_task(wb.run())
    try:
        ticks = Ticks(wb)
        await ticks.until(lambda: _true(wb.counts.ok >= 3))  # the initial zeros
        plcs.modbus.silence_writes(IO)
        ticks.set(anomaly=("flow",))
        await ticks.until(lambda: _holds(plcs, "ua.alarm_word", 1))
        await ticks.until(lambda: _holds(plcs, "ua.health", 2))
        assert plcs.modbus.held_requests >= 1 and wb.counts.failed == 0
        assert (await plcs.held())["mb.alarm_word"] == 0
        plcs.modbus.answer(IO)
        await ticks.until(lambda: _holds(plcs, "mb.alarm_word", 1))
        await ticks.until(lambda: _true(wb.counts.ok >= 6))
        assert wb.counts.failed == wb.counts.mismatch == 0
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5.0)
        await slow.aclose()


def _config(writeback: str, io_writable: bool = True) -> dict[str, Any]:
    return tomllib.loads(_config_text(writeback, io_writable))


def _config_text(writeback: str, io_writable: bool = True) -> str:
    return f"""
[model]
kind = "loop"
[model.inputs]
[model.outputs]
[[drivers]]
kind = "modbus"
name = "io"
host = "127.0.0.1"
port = 5020
[[drivers.tags]]
name = "word"
address = 0
writable = {"true" if io_writable else "false"}
[[drivers.tags]]
name = "label"
address = 10
type = "string"
length = 4
writable = true
[[drivers]]
kind = "opcua"
name = "panel"
endpoint = "opc.tcp://127.0.0.1:4840/"
[[drivers.tags]]
name = "health"
node = "ns=2;s=Agent.health"
{writeback}
"""


def test_a_target_not_declared_writable_is_refused_at_load(tmp_path: Path) -> None:
    """A writeback target whose tag is not `writable = true` is a config error naming the
    file, the key and the fix; so are the other wrong targets, all reported together."""
    path = tmp_path / "agent.toml"
    entry = '[[writeback]]\ndriver = "{}"\ntag = "{}"\nsource = "{}"\n'
    data = _config(
        entry.format("panel", "health", "health")
        + entry.format("io", "word", "alarm_word")
        + 'tags = ["word", "health", "nope"]\n'
        + entry.format("io", "word", "heartbeat")
        + entry.format("plc", "word", "health")
        + entry.format("io", "missing", "health")
        + entry.format("io", "label", "alarm_count")
        + "min_interval_s = 5\nrefresh_s = 1\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(data, path)
    text = "\n".join(err.value.problems)
    assert (
        "writeback[0].tag: tag 'health' of driver 'panel' is not writable; set writable = true "
        "in its [[drivers.tags]] entry" in text
    )
    assert "writeback[1].tags[2]: tag 'nope' is not defined by any driver" in text
    assert "writeback[2].tag: io/word is already written by writeback[1]" in text
    assert "writeback[3].driver: no driver named 'plc'" in text
    assert "writeback[4].tag: driver 'io' has no tag 'missing'" in text
    assert "writeback[5].tag: 'label' is a string" in text
    assert "writeback[5].refresh_s: shorter than min_interval_s" in text
    assert len(err.value.problems) == 7

    # Through the file: the message names it; with the tag writable the same entry loads.
    path.write_text(_config_text(entry.format("io", "word", "alarm_word"), io_writable=False))
    with pytest.raises(ConfigError, match=r"agent\.toml.*\n.*writeback\[0\]\.tag: .*not writable"):
        load_config(path)
    path.write_text(_config_text(entry.format("io", "word", "alarm_word")))
    assert load_config(path).writeback[0].tag == "word"


def test_a_uint16_alarm_word_takes_at_most_16_tags(tmp_path: Path) -> None:
    """More alarm-word tags than the register has bits is refused, naming the fix."""
    tags = ", ".join(f'"t{i}"' for i in range(17))
    data = _config(
        f'[[writeback]]\ndriver = "io"\ntag = "word"\nsource = "alarm_word"\ntags = [{tags}]'
    )
    with pytest.raises(ConfigError, match="17 tags do not fit a 16-bit alarm word"):
        parse_config(data, tmp_path / "agent.toml")


async def test_the_running_agent_writes_findings_and_survives_a_vanished_panel(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The demo agent with a panel PLC (OPC UA) and an I/O unit (Modbus): a NaN from the rig's
    temperature transmitter raises bit 3 of the panel's alarm word and health 1 (degraded) on
    the I/O unit, both clear when the value is good again; the heartbeat counts up. When the
    panel PLC vanishes its writes fail (counted) while the agent keeps ticking and writing to
    the I/O unit; when it is back the heartbeat resumes."""
    async with (
        Rig(seed=5) as rig,
        OpcUaPlc([], writable=AGENT_NODES) as panel,
        ModbusPlc(tags_of("drive"), extra_units=[IO]) as io,
    ):
        data = tomllib.loads(DEMO_CONFIG.read_text())
        for d in data["drivers"]:
            if d["kind"] == "opcua":
                d["endpoint"] = rig.opcua_endpoint
            else:
                d["host"], d["port"] = rig.modbus_host, rig.modbus_port
        data["mqtt"].update(host=mosquitto.host, port=mosquitto.port)
        data["agent"].update(id="wb", state_dir=str(tmp_path / "state"), quality_alarm_after_s=0.5)
        data["drivers"] += [
            {"kind": "opcua", "name": "panel", "endpoint": panel.endpoint, "timeout_s": 1.0,
             "tags": [{"name": f"panel_{n.name}", "node": f"nsu={NAMESPACE_URI};s=Agent.{n.name}",
                       "writable": True} for n in AGENT_NODES]},
            {"kind": "modbus", "name": "io", "host": io.host, "port": io.port, "timeout_s": 0.5,
             "tags": [{"name": "io_health", "address": 0, "unit_id": IO, "writable": True}]},
        ]  # fmt: skip
        data["writeback"] = [
            {"driver": "panel", "tag": "panel_alarm_word", "source": "alarm_word",
             "min_interval_s": 0.2},
            {"driver": "panel", "tag": "panel_heartbeat", "source": "heartbeat",
             "min_interval_s": 0.2},
            {"driver": "io", "tag": "io_health", "source": "health", "min_interval_s": 0.2,
             "tags": ["fluid_temp", "flow"]},
        ]  # fmt: skip
        agent = Agent(parse_config(data, DEMO_CONFIG), DEMO_CONFIG)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        counts = agent.stats.writeback
        try:
            beat = await _wait_value(lambda: panel.written("heartbeat"), lambda v: v >= 2)
            rig.inject("bad-value", tag="fluid_temp", value=math.nan)
            await _wait_value(lambda: panel.written("alarm_word"), lambda v: int(v) & 0b1000)
            await _wait_value(lambda: _io_word(io), lambda v: v == 1)
            rig.clear_faults()
            await _wait_value(lambda: panel.written("alarm_word"), lambda v: not int(v) & 0b1000)
            await _wait_value(lambda: _io_word(io), lambda v: v == 0)
            assert _num(await panel.written("heartbeat")) > beat

            await panel.stop()
            failed, ticks = counts.failed, agent.stats.ticks
            assert await poll_until(lambda: counts.failed >= failed + 3, WAIT_S)
            assert not task.done() and agent.stats.ticks > ticks
            rig.inject("bad-value", tag="flow", value=math.nan)  # the I/O unit still gets it
            await _wait_value(lambda: _io_word(io), lambda v: v == 1)
            rig.clear_faults()
            await panel.start()
            held = await panel.written("heartbeat")
            await _wait_value(lambda: panel.written("heartbeat"), lambda v: v != held)
            assert counts.ok > 0 and counts.mismatch == 0
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


async def _io_word(io: ModbusPlc) -> float:
    return float((await io.words(IO, "holding", 0, 1))[0])


async def _wait_value(
    read: Callable[[], Awaitable[object]], ok: Callable[[float], object]
) -> float:
    async with asyncio.timeout(WAIT_S):
        while True:
            v = _num(await read())
            if ok(v):
                return v
            await asyncio.sleep(0.05)


def _num(x: object) -> float:
    assert isinstance(x, int | float), x
    return float(x)


def test_benchmark_quick_run_prints_table_and_writes_json(tmp_path: Path) -> None:
    """`python -m bench.writeback --quick` prints its table against the alarm step and writes
    its JSON (a smoke run: no timing is asserted)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.writeback", "--quick", "--results-dir", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "observe, steady" in proc.stdout and "x alarms.update" in proc.stdout
    result = json.loads((tmp_path / "writeback.json").read_text())
    assert result["benchmark"] == "writeback" and result["quick"] is True
    cases = {r["case"]: r for r in result["rows"]}
    assert set(cases) == {"alarms.update", "observe, steady", "observe, changing"}
    assert all(r["median"] > 0 and r["unit"] == "us" for r in cases.values())
    assert cases["observe, steady"]["baseline"] == "alarms.update"
