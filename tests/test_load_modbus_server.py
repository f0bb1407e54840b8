"""The load rig's lean Modbus server and the driver's pipelined reads against it.

Real sockets on loopback throughout: the server is the one the load rig runs, the client is
the agent's Modbus driver (or a raw socket where the test needs exact bytes on the wire).
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from drivers.base import ConnectError, Quality
from drivers.modbus import ModbusDriver, ModbusTag
from hil.load.layout import MODBUS_UNIT
from hil.load.modbus_server import LeanModbusServer, answer

N_TAGS = 600  # float32 tags: 1,200 registers, 10 requests of 120 registers
WAIT_S = 10.0  # bound for "eventually"; not a timing assertion


def image_of(values: np.ndarray) -> bytes:
    return values.astype(">f4").tobytes()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[LeanModbusServer]:
    """A lean server whose register 2k, 2k+1 hold the float32 k * 0.5."""
    srv = LeanModbusServer(2 * N_TAGS, MODBUS_UNIT)
    srv.set_image(image_of(np.arange(N_TAGS) * 0.5))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def float_tags(unit: int = MODBUS_UNIT, prefix: str = "t") -> list[ModbusTag]:
    return [ModbusTag(f"{prefix}{k}", 2 * k, "float32", table="input", unit=unit)
            for k in range(N_TAGS)]  # fmt: skip


def test_answers_and_exception_codes() -> None:
    """Reads return the image's bytes; other functions, bad counts and ranges get exceptions."""
    image = bytes(range(20))
    assert answer(image, struct.pack(">BHH", 4, 2, 3)) == bytes([4, 6]) + image[4:10]
    assert answer(image, struct.pack(">BHH", 3, 0, 10)) == bytes([3, 20]) + image
    assert answer(image, struct.pack(">BHH", 6, 0, 1)) == bytes([0x86, 1])
    assert answer(image, struct.pack(">BHH", 4, 0, 0)) == bytes([0x84, 3])
    assert answer(image, struct.pack(">BHH", 4, 0, 126)) == bytes([0x84, 3])
    assert answer(image, struct.pack(">BHH", 4, 9, 2)) == bytes([0x84, 2])
    assert answer(image, b"\x04\x00") == bytes([0x84, 3])


def test_image_of_the_wrong_size_is_refused() -> None:
    """`set_image` refuses an image that does not cover exactly the served registers."""
    srv = LeanModbusServer(4, MODBUS_UNIT)
    with pytest.raises(ValueError, match="expected 8"):
        srv.set_image(bytes(6))


async def test_pipelined_frames_in_one_chunk_are_answered_in_order(
    server: LeanModbusServer,
) -> None:
    """Three requests sent in one write get three answers with their transaction ids echoed."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        frames = [struct.pack(">HHHBBHH", tid, 0, 6, MODBUS_UNIT, 4, 2 * tid, 2)
                  for tid in (7, 8, 9)]  # fmt: skip
        writer.write(b"".join(frames))
        got = []
        for _ in frames:
            tid, proto, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
            pdu = await reader.readexactly(length - 1)
            got.append((tid, proto, unit, pdu[:2], struct.unpack(">f", pdu[2:])[0]))
        assert got == [(t, 0, MODBUS_UNIT, b"\x04\x04", t * 0.5) for t in (7, 8, 9)]
    finally:
        writer.close()


async def test_malformed_header_closes_the_connection(server: LeanModbusServer) -> None:
    """A frame with a protocol id other than 0 ends the connection and is counted."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(struct.pack(">HHHBBHH", 1, 5, 6, MODBUS_UNIT, 4, 0, 2))
        assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
        assert server.malformed == 1
    finally:
        writer.close()


@pytest.mark.parametrize("max_outstanding", [1, 4, 16])
async def test_driver_reads_every_value_with_pipelining(
    server: LeanModbusServer, max_outstanding: int
) -> None:
    """`read_arrays` and `read` give every tag's value, whatever the number in flight."""
    d = ModbusDriver("lean", server.host, server.port, float_tags(),
                     max_outstanding=max_outstanding)  # fmt: skip
    await d.connect()
    try:
        b = await d.read_arrays()
        samples = await d.read()
    finally:
        await d.aclose()
    assert len(d.requests) == 10 and server.requests == 20
    assert sorted(b.tag.tolist()) == list(range(N_TAGS))
    assert np.array_equal(b.value[np.argsort(b.tag)], np.arange(N_TAGS) * 0.5)
    assert (b.quality == Quality.GOOD).all() and not b.reason
    assert {s.tag: s.value for s in samples} == {f"t{k}": k * 0.5 for k in range(N_TAGS)}
    assert not d.errors


async def test_silent_unit_in_a_window_is_backed_off_once(server: LeanModbusServer) -> None:
    """Requests to a unit the server never answers time out inside the same windows as the
    answered ones: that unit's tags go BAD "timeout", the others GOOD, and the next read skips
    the silent unit instead of waiting for it again."""
    tags = [*float_tags(), *float_tags(unit=9, prefix="dead")[:200]]  # 4 requests to unit 9
    d = ModbusDriver("gw", server.host, server.port, tags, timeout_s=0.3, max_outstanding=8)
    await d.connect()
    try:
        first = await d.read_arrays()
        frames_after_first = server.frames
        second = await d.read_arrays()
    finally:
        await d.aclose()
    names = d.tags
    by_tag = {names[p]: k for k, p in enumerate(first.tag.tolist())}
    dead = [by_tag[f"dead{k}"] for k in range(200)]
    live = [by_tag[f"t{k}"] for k in range(N_TAGS)]
    assert all(first.reason.get(k) == "timeout" for k in dead)
    assert (first.quality[dead] == Quality.BAD).all() and np.isnan(first.value[dead]).all()
    assert (first.quality[live] == Quality.GOOD).all()
    assert first.value[by_tag["t3"]] == 1.5
    assert d.unit_down(9) and not d.unit_down(MODBUS_UNIT)
    assert d.errors == {"timeout": 4}
    # The second read sends only the live unit's 10 requests.
    assert server.frames - frames_after_first == 10
    assert len(second.tag) == N_TAGS and not second.reason
    assert math.isclose(float(second.value[second.tag == names.index("t7")][0]), 3.5)


async def test_lost_connection_during_pipelined_read_raises_connect_error(
    server: LeanModbusServer,
) -> None:
    """A server that goes away fails the pipelined read with ConnectError, not a timeout."""
    d = ModbusDriver("gone", server.host, server.port, float_tags(), max_outstanding=4)
    await d.connect()
    try:
        await server.stop()
        with pytest.raises(ConnectError):
            for _ in range(3):  # the close may land between two reads
                await d.read_arrays()
    finally:
        await d.aclose()
    assert "timeout" not in d.errors
