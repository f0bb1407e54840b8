"""Writes through the Modbus driver against the rig's PLC: only writable tags, encoded by the
codec, read back and compared, never retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from drivers.base import ConnectError
from drivers.modbus import ModbusDriver, ModbusTag, codec
from drivers.modbus.write import WriteRefusedError
from hil.plc_modbus import PROTECTED, ModbusPlc
from hil.tags import tags_of

IO = 2
TAGS = [
    ModbusTag("alarm_word", 0, "uint16", unit=IO, writable=True),
    ModbusTag("setpoint", 1, "float32", "CDAB", unit=IO, writable=True),
    ModbusTag("counter", 3, "int64", "DCBA", unit=IO, writable=True),
    ModbusTag("temp", 7, "int16", unit=IO, scale=0.1, writable=True),
    ModbusTag("label", 8, "string", unit=IO, length=3, writable=True),
    ModbusTag("flag3", 11, "bool", unit=IO, bit=3, writable=True),
    ModbusTag("relay", 4, "bool", table="coil", unit=IO, writable=True),
    ModbusTag("readonly", 20, "uint16", unit=IO),
    ModbusTag("beyond", 5000, "uint16", unit=IO, writable=True),  # past the PLC's table
    ModbusTag("protected", 1024 - PROTECTED, "uint16", unit=IO, writable=True),
]


@pytest_asyncio.fixture
async def plc() -> AsyncIterator[ModbusPlc]:
    async with ModbusPlc(tags_of("drive"), extra_units=[IO]) as p:
        yield p


@pytest_asyncio.fixture
async def driver(plc: ModbusPlc) -> AsyncIterator[ModbusDriver]:
    d = ModbusDriver("io", plc.host, plc.port, TAGS, timeout_s=0.5)
    await d.connect()
    try:
        yield d
    finally:
        await d.aclose()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("alarm_word", 0x8001),
        ("setpoint", 42.25),
        ("counter", -(2.0**40) - 1),
        ("temp", -12.3),
        ("label", "AB1"),
        ("relay", True),
    ],
)
async def test_write_reads_back_and_reports_old_and_new(
    plc: ModbusPlc, driver: ModbusDriver, name: str, value: float | str
) -> None:
    """A write lands in the PLC's registers in the tag's encoding; the result carries the old
    and the read-back value."""
    tag = next(t for t in TAGS if t.name == name)
    result = await driver.write(name, value)
    assert result.outcome == "written" and result.ok, result
    assert result.old == ("" if tag.type == "string" else 0.0)
    if isinstance(value, str):
        assert result.new == value
        assert await plc.words(IO, "holding", 8, 3) == codec.encode_string(value, 3)
    elif tag.table == "coil":
        assert result.new == 1.0
        assert await plc.words(IO, "coil", 4, 1) == [1]
    else:
        assert result.new == pytest.approx(value, rel=1e-6)
        want = codec.encode(value, tag.type, tag.order, scale=tag.scale)
        assert await plc.words(IO, "holding", tag.address, len(want)) == want
    again = await driver.write(name, value)
    assert again.old == again.new == result.new


async def test_bit_write_keeps_the_other_bits(plc: ModbusPlc, driver: ModbusDriver) -> None:
    """Writing a bool bit changes only that bit of its register."""
    await plc.set_words(IO, "holding", 11, [0b1010_0000_0000_0001])
    result = await driver.write("flag3", True)
    assert (result.outcome, result.old, result.new) == ("written", 0.0, 1.0)
    assert await plc.words(IO, "holding", 11, 1) == [0b1010_0000_0000_1001]
    await driver.write("flag3", False)
    assert await plc.words(IO, "holding", 11, 1) == [0b1010_0000_0000_0001]


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("readonly", 1, "read-only; declare writable = true"),
        ("ghost", 1, "no tag 'ghost'"),
        ("alarm_word", 70000, "out of range"),
        ("alarm_word", -1, "out of range"),
        ("temp", float("nan"), "cannot be written"),
        ("alarm_word", "7", "needs a number"),
        ("label", "TOO LONG", "does not fit"),
        ("label", "é", "not ASCII"),
        ("label", 5, "needs a str"),
        ("relay", 2, "needs 0/1"),
    ],
)
async def test_refused_writes_send_nothing(
    plc: ModbusPlc, driver: ModbusDriver, name: str, value: object, match: str
) -> None:
    """Unknown, read-only tags and values the type cannot hold are refused before any I/O."""
    before = plc.write_requests
    with pytest.raises(WriteRefusedError, match=match):
        await driver.write(name, value)  # type: ignore[arg-type]  # wrong kinds on purpose
    assert plc.write_requests == before


async def test_timeout_after_sending_is_unknown_and_not_retried(
    plc: ModbusPlc, driver: ModbusDriver
) -> None:
    """A write whose answer never comes is "unknown" (it may still take effect) and is sent
    exactly once."""
    plc.silence_writes(IO)
    result = await driver.write("alarm_word", 5)
    assert (result.outcome, result.reason, result.old, result.new) == (
        "unknown",
        "timeout",
        0,
        None,
    )
    assert plc.write_requests == 1
    plc.answer(IO)  # the held write now reaches the table: the outcome really was unknown
    async with asyncio.timeout(5):
        while await plc.words(IO, "holding", 0, 1) != [5]:  # noqa: ASYNC110  # polls the PLC
            await asyncio.sleep(0.01)
    assert plc.write_requests == 1


async def test_exception_is_rejected(plc: ModbusPlc, driver: ModbusDriver) -> None:
    """A register the device refuses to write: outcome "rejected" with the exception code."""
    result = await driver.write("protected", 1)
    assert (result.outcome, result.reason, result.old) == ("rejected", "exception code 2", 0.0)
    assert await plc.words(IO, "holding", 1024 - PROTECTED, 1) == [0]
    assert driver.errors["exception"] == 1


async def test_missing_register_is_not_sent(plc: ModbusPlc, driver: ModbusDriver) -> None:
    """A tag the device does not have: the old value cannot be read, nothing is sent."""
    result = await driver.write("beyond", 1)
    assert (result.outcome, result.reason) == ("not_sent", "exception")
    assert plc.write_requests == 0


async def test_write_needs_a_link(plc: ModbusPlc) -> None:
    """Writing before connect raises ConnectError."""
    d = ModbusDriver("io", plc.host, plc.port, TAGS, timeout_s=0.5)
    with pytest.raises(ConnectError):
        await d.write("alarm_word", 1)
