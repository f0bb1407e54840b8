"""The rig's PLC servers seen through plain asyncua and pymodbus clients."""

from __future__ import annotations

import struct
import time

import pytest
from asyncua import ua
from asyncua.client.client import Client
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from hil.plc_modbus import PROTECTED, ModbusPlc
from hil.plc_opcua import OpcUaPlc
from hil.tags import DRIVE_UNIT, NAMESPACE_URI, tags_of
from tests.fixtures.plc import PLAUSIBLE


async def test_opcua_values_types_and_source_timestamps(opcua_plc: OpcUaPlc) -> None:
    """Written values come back as Doubles under Objects/Loop with the given SourceTimestamp."""
    ts = 1_700_000_000.25
    await opcua_plc.write_values({"flow": 41.5, "level": 0.5, "not_a_tag": 1.0}, ts)
    async with Client(opcua_plc.endpoint, timeout=5) as client:
        idx = await client.get_namespace_index(NAMESPACE_URI)
        flow = client.get_node(f"ns={idx};s=Loop.flow")
        dv = await flow.read_data_value()
        assert dv.Value is not None
        assert dv.Value.VariantType == ua.VariantType.Double
        assert dv.Value.Value == 41.5
        assert dv.SourceTimestamp is not None and dv.SourceTimestamp.timestamp() == ts
        path = await client.nodes.objects.get_child([f"{idx}:Loop", f"{idx}:level"])
        assert await path.read_value() == 0.5
        untouched = client.get_node(f"ns={idx};s=Loop.pressure")
        assert await untouched.read_value() == PLAUSIBLE["pressure"]
        eu = await client.get_node(f"ns={idx};s=Loop.flow.EngineeringUnits").read_value()
        assert eu.DisplayName.Text == "l/min"


async def test_opcua_restart_same_port_keeps_values() -> None:
    """After stop, the port is free; start serves the same endpoint with the last values."""
    plc = OpcUaPlc(tags_of("process"))
    await plc.start()
    try:
        endpoint = plc.endpoint
        await plc.write_values({"flow": 7.0}, time.time())
        await plc.stop()
        assert plc.endpoint == endpoint
        with pytest.raises((OSError, TimeoutError)):
            async with Client(endpoint, timeout=1):
                pass
        await plc.write_values({"level": 1.25}, time.time())
        await plc.start()
        assert plc.endpoint == endpoint
        async with Client(endpoint, timeout=5) as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            assert await client.get_node(f"ns={idx};s=Loop.flow").read_value() == 7.0
            assert await client.get_node(f"ns={idx};s=Loop.level").read_value() == 1.25
    finally:
        await plc.stop()


async def _input_registers(plc: ModbusPlc, address: int, count: int) -> list[int]:
    client = AsyncModbusTcpClient(plc.host, port=plc.port, timeout=2, retries=0, reconnect_delay=0)
    assert await client.connect()
    try:
        rsp = await client.read_input_registers(address, count=count, device_id=DRIVE_UNIT)
        assert not rsp.isError(), rsp
        return list(rsp.registers)
    finally:
        client.close()


async def test_modbus_register_map_and_word_orders(modbus_plc: ModbusPlc) -> None:
    """Input registers hold each tag in its type, word order and scale from the tag table."""
    await modbus_plc.write_values({"motor_current": 4.25, "vibration": 0.375, "flow": 3.0}, 0.0)
    regs = await _input_registers(modbus_plc, 0, 11)
    assert regs[0] == 1450  # motor_speed uint16
    cur = struct.unpack(">f", struct.pack(">HH", regs[2], regs[1]))[0]  # CDAB
    assert cur == 4.25
    assert struct.unpack(">h", struct.pack(">H", regs[3]))[0] == 485  # motor_temp, scale 0.1
    assert struct.unpack(">f", struct.pack(">HH", regs[4], regs[5]))[0] == 1.125  # ABCD
    swapped = [((w & 0xFF) << 8) | (w >> 8) for w in regs[6:8]]  # BADC
    assert struct.unpack(">f", struct.pack(">HH", *swapped))[0] == 0.375
    assert struct.unpack(">i", struct.pack(">HH", regs[8], regs[9]))[0] == 123456
    assert regs[10] == 1


async def test_modbus_unknown_address_is_exception(modbus_plc: ModbusPlc) -> None:
    """Addresses outside the tag table answer with an exception response."""
    client = AsyncModbusTcpClient(modbus_plc.host, port=modbus_plc.port, timeout=2, retries=0)
    assert await client.connect()
    try:
        rsp = await client.read_input_registers(200, count=1, device_id=DRIVE_UNIT)
        assert rsp.isError()
    finally:
        client.close()


async def test_modbus_restart_same_port_keeps_values() -> None:
    """Stop frees the port and drops clients; start serves the last values on the same port."""
    plc = ModbusPlc(tags_of("drive"))
    await plc.start()
    try:
        port = plc.port
        await plc.write_values({"motor_speed": 999.0}, 0.0)
        await plc.stop()
        client = AsyncModbusTcpClient(plc.host, port=port, timeout=1, retries=0, reconnect_delay=0)
        assert not await client.connect()
        client.close()
        await plc.write_values({"status_word": 3.0}, 0.0)
        await plc.start()
        assert plc.port == port
        regs = await _input_registers(plc, 0, 11)
        assert regs[0] == 999 and regs[10] == 3
    finally:
        await plc.stop()


async def test_modbus_extra_units_have_four_tables_and_keep_writes() -> None:
    """An extra unit serves separate coils, discrete inputs, holding and input registers; client
    writes survive a restart; protected holding registers refuse writes; the drive unit is
    unchanged."""
    plc = ModbusPlc(tags_of("drive"), extra_units=[2])
    await plc.start()
    try:
        await plc.write_values({"motor_speed": 1450.0}, 0.0)
        await plc.set_words(2, "input", 10, [11, 12])
        await plc.set_bits(2, "discrete", 3, [True])
        client = AsyncModbusTcpClient(plc.host, port=plc.port, timeout=2, retries=0)
        assert await client.connect()
        try:
            assert (await client.read_input_registers(10, count=2, device_id=2)).registers == [
                11,
                12,
            ]
            assert (await client.read_holding_registers(10, count=2, device_id=2)).registers == [
                0,
                0,
            ]
            assert (await client.read_discrete_inputs(3, count=1, device_id=2)).bits[0] is True
            assert (await client.read_coils(3, count=1, device_id=2)).bits[0] is False
            assert not (await client.write_register(5, 77, device_id=2)).isError()
            assert not (await client.write_coil(1, True, device_id=2)).isError()
            bad = await client.write_register(1024 - PROTECTED, 1, device_id=2)
            assert bad.isError()
            drive = await client.read_input_registers(0, count=1, device_id=DRIVE_UNIT)
            assert drive.registers == [1450]
        finally:
            client.close()
        await plc.stop()
        await plc.start()
        assert await plc.words(2, "holding", 5, 1) == [77]
        assert await plc.words(2, "coil", 1, 1) == [1]
    finally:
        await plc.stop()


async def test_modbus_silenced_unit_holds_requests() -> None:
    """A silenced unit's requests go unanswered while other units answer; `answer` ends it."""
    async with ModbusPlc(tags_of("drive"), extra_units=[2]) as plc:
        client = AsyncModbusTcpClient(plc.host, port=plc.port, timeout=0.3, retries=0)
        assert await client.connect()
        try:
            plc.silence(2)
            with pytest.raises(ModbusIOException):
                await client.read_holding_registers(0, count=1, device_id=2)
            assert plc.held_requests == 1
            plc.answer(2)
        finally:
            client.close()
        client = AsyncModbusTcpClient(plc.host, port=plc.port, timeout=2, retries=0)
        assert await client.connect()
        try:
            assert not (await client.read_holding_registers(0, count=1, device_id=2)).isError()
        finally:
            client.close()


async def test_opcua_write_path_feeds_subscriptions(opcua_plc: OpcUaPlc) -> None:
    """Server-side writes reach a plain asyncua subscription with their source timestamp."""
    async with Client(opcua_plc.endpoint, timeout=5) as client:
        idx = await client.get_namespace_index(NAMESPACE_URI)
        node = client.get_node(f"ns={idx};s=Loop.pressure")
        sub = await client.create_subscription(20, None)
        async with sub:
            await sub.subscribe_data_change(node)
            first = await sub.next_event(timeout=5)
            assert first is not None
            await opcua_plc.write_values({"pressure": 3.5}, 1_700_000_123.0)
            ev = await sub.next_event(timeout=5)
            assert ev is not None
            dv = ev.data.monitored_item.Value  # type: ignore[union-attr]  # a DataChangeEvent
            assert dv.Value.Value == 3.5
            assert dv.SourceTimestamp.timestamp() == 1_700_000_123.0
