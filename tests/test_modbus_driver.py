"""The Modbus driver against the rig's Modbus PLC: every table, type and order, several units,
poll groups, a unit that stops answering, and RTU framing."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from drivers.base import ConnectError, Quality, Sample
from drivers.modbus import ModbusDriver, ModbusTag, codec
from hil.plc_modbus import ModbusPlc
from hil.tags import DRIVE_UNIT, tags_of
from tests.fixtures.plc import PLAUSIBLE, modbus_tags, plausible

IO = 2  # the extra unit with four separate tables
WAIT_S = 20.0  # bound for "eventually"; not a timing assertion

# One value per numeric type, chosen so each is exactly representable in its type.
VALUES = {
    "int16": -12345.0,
    "uint16": 54321.0,
    "int32": -1234567890.0,
    "uint32": 3456789012.0,
    "int64": -(2.0**52) - 3.0,
    "uint64": 2.0**53 - 7.0,
    "float32": -1.5e-3,
    "float64": 6.02214076e23,
}


@pytest_asyncio.fixture
async def plc() -> AsyncIterator[ModbusPlc]:
    """The drive PLC with an extra unit IO, started on a free port."""
    async with ModbusPlc(tags_of("drive"), extra_units=[IO, 3]) as p:
        await p.write_values(PLAUSIBLE, time.time())
        yield p


def by_tag(samples: list[Sample]) -> dict[str, Sample]:
    return {s.tag: s for s in samples}


async def _typed_map(plc: ModbusPlc, table: str) -> tuple[list[ModbusTag], dict[str, float]]:
    """Every numeric type in every order, packed back to back in `table` of unit IO."""
    tags: list[ModbusTag] = []
    want: dict[str, float] = {}
    addr = 10
    for type_, value in VALUES.items():
        for order in codec.ORDERS:
            name = f"{table}_{type_}_{order}"
            regs = codec.encode(value, type_, order)
            await plc.set_words(IO, table, addr, regs)
            tags.append(ModbusTag(name, addr, type_, order, table, unit=IO))
            want[name] = value
            addr += len(regs)
    return tags, want


async def test_every_table_type_and_order(plc: ModbusPlc) -> None:
    """Numbers of every type and order, bits of registers, coils, discrete inputs and strings
    decode to the values the PLC holds, in few coalesced requests."""
    tags, want = await _typed_map(plc, "holding")
    more, want_in = await _typed_map(plc, "input")
    tags += more
    want |= want_in
    await plc.set_words(IO, "holding", 200, [0b1000_0000_0000_0101])
    tags += [ModbusTag(f"bit{b}", 200, "bool", table="holding", unit=IO, bit=b) for b in (0, 1, 15)]
    want |= {"bit0": 1.0, "bit1": 0.0, "bit15": 1.0}
    await plc.set_words(IO, "holding", 210, codec.encode_string("PUMP-7", 4))
    await plc.set_words(IO, "input", 300, codec.encode_string("EDGE RIG", 4, "BADC"))
    tags += [
        ModbusTag("name_abcd", 210, "string", table="holding", unit=IO, length=4),
        ModbusTag("name_badc", 300, "string", "BADC", table="input", unit=IO, length=4),
    ]
    await plc.set_bits(IO, "coil", 5, [True, False, True])
    await plc.set_bits(IO, "discrete", 700, [False, True])
    tags += [ModbusTag(f"c{a}", a, "bool", table="coil", unit=IO) for a in (5, 6, 7)]
    tags += [ModbusTag(f"d{a}", a, "bool", table="discrete", unit=IO) for a in (700, 701)]
    want |= {"c5": 1.0, "c6": 0.0, "c7": 1.0, "d700": 0.0, "d701": 1.0}
    tags.append(ModbusTag("scaled", 220, "int16", table="holding", unit=IO, scale=0.5, offset=10))
    await plc.set_words(IO, "holding", 220, codec.encode(-5.0, "int16", scale=0.5, offset=10))
    want["scaled"] = -5.0

    d = ModbusDriver("io", plc.host, plc.port, tags, timeout_s=2)
    # 96 holding registers of numbers + 1 bit register (gap 104) + 4 string; same for input;
    # 125 per request at most: holding 10..105, 200..223; input 10..105, 300..303; coils;
    # discrete inputs.
    assert len(d.requests) == 6
    await d.connect()
    try:
        got = by_tag(await d.read())
    finally:
        await d.aclose()
    assert set(got) == {t.name for t in tags}
    for name, value in want.items():
        assert got[name].quality is Quality.GOOD, got[name]
        assert got[name].value == pytest.approx(value, rel=1e-6), name
    assert got["name_abcd"].text == "PUMP-7" and math.isnan(got["name_abcd"].value)
    assert got["name_badc"].text == "EDGE RIG"
    assert got["name_abcd"].quality is Quality.GOOD
    assert d.errors == {}


async def test_non_ascii_string_is_bad_decode(plc: ModbusPlc) -> None:
    """A string register holding non-ASCII bytes is a BAD "decode" sample, not an exception."""
    await plc.set_words(IO, "holding", 0, [0x41C3, 0xA900])
    d = ModbusDriver(
        "io", plc.host, plc.port, [ModbusTag("s", 0, "string", unit=IO, length=2)], timeout_s=2
    )
    await d.connect()
    try:
        (s,) = await d.read()
    finally:
        await d.aclose()
    assert (s.quality, s.reason, s.text) == (Quality.BAD, "decode", None)


async def test_units_share_one_connection_and_tables_stay_apart(plc: ModbusPlc) -> None:
    """The drive unit and two more units are read over one connection, each its own data."""
    await plc.set_words(IO, "holding", 0, [111])
    await plc.set_words(3, "holding", 0, [333])
    tags = [
        *modbus_tags(),
        ModbusTag("u2", 0, unit=IO),
        ModbusTag("u3", 0, unit=3),
    ]
    d = ModbusDriver("gw", plc.host, plc.port, tags, timeout_s=2)
    await d.connect()
    try:
        got = by_tag(await d.read())
    finally:
        await d.aclose()
    assert got["u2"].value == 111 and got["u3"].value == 333
    assert got["motor_speed"].value == PLAUSIBLE["motor_speed"]
    assert {r.unit for r in d.requests} == {DRIVE_UNIT, IO, 3}


async def test_poll_groups_read_only_when_due(plc: ModbusPlc) -> None:
    """Tags of a slow group come with the first read, then not again until their interval."""
    tags = [ModbusTag("fast", 0, unit=IO), ModbusTag("slow", 1, unit=IO, group="slow")]
    d = ModbusDriver("g", plc.host, plc.port, tags, timeout_s=2, groups={"slow": 3600.0})
    await d.connect()
    try:
        first = by_tag(await d.read())
        second = by_tag(await d.read())
    finally:
        await d.aclose()
    assert set(first) == {"fast", "slow"}
    assert set(second) == {"fast"}
    # Separate groups are separate requests even at neighbouring addresses.
    assert len(d.requests) == 2


async def test_dead_unit_is_backed_off_and_others_keep_their_rate(plc: ModbusPlc) -> None:
    """A unit that stops answering is BAD "timeout" at its first unanswered request, then only
    probed after a backoff, while the drive unit on the same connection stays GOOD every read;
    once it answers again it comes back."""
    await plc.set_words(IO, "holding", 0, [7])
    tags = [*modbus_tags(), ModbusTag("io_a", 0, unit=IO), ModbusTag("io_b", 300, unit=IO)]
    d = ModbusDriver("gw", plc.host, plc.port, tags, timeout_s=0.3, max_gap=0)
    await d.connect()
    try:
        assert all(s.quality is Quality.GOOD for s in await d.read())
        plc.silence(IO)
        got = by_tag(await d.read())
        # Detected by the first request that timed out: both of the unit's tags at once.
        assert got["io_a"].reason == got["io_b"].reason == "timeout"
        assert got["io_a"].quality is Quality.BAD and d.unit_down(IO)
        assert got["motor_speed"].quality is Quality.GOOD
        assert d.errors["timeout"] == 1
        reads = 30
        for _ in range(reads):
            batch = by_tag(await d.read())
            assert all(batch[t.name].quality is Quality.GOOD for t in modbus_tags())
        # 30 reads back to back take far less than the first 1 s backoff, plus at most one
        # probe; without the backoff every read would have waited for a timeout.
        assert d.errors["timeout"] <= 2
        assert plc.held_requests == d.errors["timeout"]
        plc.answer(IO)
        async with asyncio.timeout(WAIT_S):
            while True:
                batch = by_tag(await d.read())
                if "io_a" in batch and batch["io_a"].quality is Quality.GOOD:
                    break
                await asyncio.sleep(0.05)
        assert batch["io_a"].value == 7 and not d.unit_down(IO)
    finally:
        await d.aclose()


async def test_only_unit_silent_is_connect_error(plc: ModbusPlc) -> None:
    """When every unit of a read timed out, the link is given up (ConnectError) so the
    acquisition loop reconnects; the detection takes one request timeout, no retries."""
    d = ModbusDriver("drive", plc.host, plc.port, modbus_tags(), timeout_s=0.3)
    await d.connect()
    try:
        plc.silence(DRIVE_UNIT)
        with pytest.raises(ConnectError, match="no unit answers"):
            await d.read()
        assert d.errors["timeout"] == 1
    finally:
        await d.aclose()


async def test_unknown_unit_answers_exception(plc: ModbusPlc) -> None:
    """A unit id the server does not serve is answered with an exception: BAD "exception"."""
    tags = [*modbus_tags(), ModbusTag("nobody", 0, unit=99)]
    d = ModbusDriver("gw", plc.host, plc.port, tags, timeout_s=1)
    await d.connect()
    try:
        got = by_tag(await d.read())
    finally:
        await d.aclose()
    assert (got["nobody"].quality, got["nobody"].reason) == (Quality.BAD, "exception")
    assert got["motor_speed"].quality is Quality.GOOD
    assert d.errors == {"exception": 1}


async def test_rtu_framing_over_tcp() -> None:
    """With RTU framing on both sides every drive tag reads GOOD, and several units too."""
    async with plausible(ModbusPlc(tags_of("drive"), extra_units=[IO], framing="rtu")) as plc:
        await plc.set_words(IO, "input", 5, codec.encode(2.5, "float64", "DCBA"))
        tags = [*modbus_tags(), ModbusTag("f64", 5, "float64", "DCBA", "input", unit=IO)]
        d = ModbusDriver("rtu", plc.host, plc.port, tags, timeout_s=2, framing="rtu")
        await d.connect()
        try:
            got = by_tag(await d.read())
            again = by_tag(await d.read())
        finally:
            await d.aclose()
    for t in modbus_tags():
        assert got[t.name].value == pytest.approx(PLAUSIBLE[t.name], rel=1e-6)
    assert got["f64"].value == 2.5 and again["f64"].value == 2.5
    assert d.errors == {}
