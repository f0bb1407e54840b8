"""The rig: plant running behind real OPC UA and Modbus servers on loopback, faults, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from asyncua.client.client import Client
from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus import codec
from hil.rig import Rig
from hil.tags import BY_NAME, DRIVE_UNIT, NAMESPACE_URI, OPCUA_FOLDER

pytestmark = pytest.mark.timeout(60)


async def _read_opcua(endpoint: str, name: str) -> tuple[float, float]:
    """(value, source timestamp as Unix seconds) of one rig tag over a fresh session."""
    client = Client(endpoint, timeout=5)
    async with asyncio.timeout(15), client:
        idx = await client.get_namespace_index(NAMESPACE_URI)
        node = client.get_node(f"ns={idx};s={OPCUA_FOLDER}.{name}")
        dv = await node.read_data_value()
        assert dv.Value is not None and dv.SourceTimestamp is not None
        return float(dv.Value.Value), dv.SourceTimestamp.timestamp()


async def _read_modbus(host: str, port: int, name: str) -> float:
    """One drive tag's engineering value over a fresh Modbus TCP connection."""
    tag = BY_NAME[name]
    client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=1)
    try:
        async with asyncio.timeout(15):
            assert await client.connect()
            rr = await client.read_input_registers(
                tag.address, count=codec.register_count(tag.reg_type), device_id=DRIVE_UNIT
            )
        assert not rr.isError()
        return codec.decode(rr.registers, tag.reg_type, tag.order) * tag.scale
    finally:
        client.close()


async def _until(rig: Rig, cond: Callable[[], bool], what: str) -> None:
    """Wait, publish by publish, until `cond` holds (bounded)."""
    async with asyncio.timeout(20):
        while not cond():
            await rig.wait_published()
    assert cond(), what


async def test_rig_serves_plant_values_on_both_plcs() -> None:
    """Both endpoints answer with the plant's values; OPC UA carries a source timestamp."""
    async with Rig(seed=1, speed=5.0) as rig:
        assert rig.opcua.port > 0 and rig.modbus_port > 0
        assert str(rig.opcua.port) in rig.opcua_endpoint
        await rig.wait_published(3)
        flow, src_ts = await _read_opcua(rig.opcua_endpoint, "flow")
        assert 20.0 < flow < 45.0
        assert src_ts > 1e9
        speed = await _read_modbus(rig.modbus_host, rig.modbus_port, "motor_speed")
        assert 1000.0 < speed < 3200.0
        assert speed == round(speed)
        assert rig.sim_time > 0.0


async def test_scheduled_physics_fault_changes_truth() -> None:
    """A leak scheduled at a sim time starts then: the true level falls below nominal."""
    async with Rig(seed=2, speed=20.0, faults=["leak:rate_m_s=0.01@1"]) as rig:
        await _until(rig, lambda: rig.sim_time > 4.0, "sim time advanced")
        assert rig.truth()["level"] < 0.8 - 0.01
        rig.clear_faults()
        level = rig.truth()["level"]
        await rig.wait_published(3)
        assert rig.truth()["level"] == pytest.approx(level, abs=1e-9)


async def test_drift_shows_in_measurement_not_truth() -> None:
    """A drifting thermocouple moves the served fluid temperature away from the true one."""
    async with Rig(seed=3, speed=20.0) as rig:
        rig.inject("drift", rate_k_s=1.0)
        await _until(
            rig,
            lambda: rig.measurements()["fluid_temp"] - rig.truth()["fluid_temp"] > 2.0,
            "drift visible",
        )


@pytest.mark.parametrize("plc", ["drive", "process"])
async def test_plc_restart_comes_back_on_the_same_port(plc: str) -> None:
    """plc-restart stops one server, restarts it on the same port, and it serves again."""
    async with Rig(seed=4, speed=2.0) as rig:
        server = rig.modbus if plc == "drive" else rig.opcua
        other = rig.opcua if plc == "drive" else rig.modbus
        port = server.port
        rig.inject("plc-restart", plc=plc, down_s=0.3)
        await _until(rig, lambda: not server.running, "server stopped")
        assert other.running
        await _until(rig, lambda: server.running, "server back")
        assert server.port == port
        if plc == "drive":
            value = await _read_modbus(rig.modbus_host, port, "motor_speed")
            assert value > 1000.0
        else:
            value, _ = await _read_opcua(rig.opcua_endpoint, "flow")
            assert value > 10.0
