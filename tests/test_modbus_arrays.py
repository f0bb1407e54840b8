"""The Modbus driver's array read path against the rig's Modbus PLC: `read_arrays` gives what
`read` gives, outcome for outcome, and the acquisition loop hands it to the process image."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from drivers.arrays import SampleArrays
from drivers.base import Quality, Sample
from drivers.modbus import ModbusDriver, ModbusTag, codec
from edge_agent.acquire import LinkStats, run_driver
from edge_agent.image import ProcessImage
from hil.plc_modbus import ModbusPlc
from hil.tags import tags_of
from tests.fixtures.mqtt import poll_until
from tests.fixtures.plc import PLAUSIBLE, modbus_tags

IO = 2
WAIT_S = 20.0  # bound for "eventually"; not a timing assertion


@pytest_asyncio.fixture
async def plc() -> AsyncIterator[ModbusPlc]:
    """The drive PLC with an extra unit IO, started on a free port."""
    async with ModbusPlc(tags_of("drive"), extra_units=[IO]) as p:
        await p.write_values(PLAUSIBLE, time.time())
        yield p


def as_samples(d: ModbusDriver, b: SampleArrays) -> dict[str, Sample]:
    """The rows of a batch as samples, by tag name."""
    out = {}
    for k, pos in enumerate(b.tag.tolist()):
        tag = d.tags[pos]
        out[tag] = Sample(tag, float(b.value[k]), Quality(int(b.quality[k])),
                          float(b.source_ts[k]), float(b.recv_ts[k]), b.reason.get(k, ""),
                          b.text.get(k))  # fmt: skip
    return out


def same(a: Sample, b: Sample) -> bool:
    """Equal but for the timestamps (NaN equals NaN)."""
    va, vb = a.value, b.value
    return (va == vb or (math.isnan(va) and math.isnan(vb))) and (
        a.tag,
        a.quality,
        a.reason,
        a.text,
    ) == (b.tag, b.quality, b.reason, b.text)


async def mixed_map(plc: ModbusPlc) -> list[ModbusTag]:
    """Numbers of several types and orders, a NaN, bits, coils, strings (one not ASCII) and a
    unit that answers with an exception."""
    tags = [*modbus_tags()]
    addr = 10
    for type_, value in (("int16", -12345.0), ("uint32", 3456789012.0), ("float32", -1.5e-3),
                         ("float64", 6.02214076e23), ("float32", math.nan)):  # fmt: skip
        for order in ("ABCD", "DCBA"):
            regs = codec.encode(value, type_, order)
            await plc.set_words(IO, "holding", addr, regs)
            tags.append(ModbusTag(f"h{addr}", addr, type_, order, "holding", unit=IO))
            addr += len(regs)
    await plc.set_words(IO, "holding", 200, [0b1000_0000_0000_0101])
    tags += [ModbusTag(f"bit{b}", 200, "bool", table="holding", unit=IO, bit=b) for b in (0, 15)]
    await plc.set_words(IO, "holding", 210, codec.encode_string("PUMP-7", 4))
    await plc.set_words(IO, "holding", 220, [0x41C3, 0xA900])
    tags += [
        ModbusTag("name", 210, "string", table="holding", unit=IO, length=4),
        ModbusTag("garbled", 220, "string", table="holding", unit=IO, length=2),
    ]
    await plc.set_bits(IO, "coil", 5, [True, False])
    tags += [ModbusTag(f"c{a}", a, "bool", table="coil", unit=IO) for a in (5, 6)]
    tags.append(ModbusTag("nobody", 0, unit=99))
    return tags


async def test_read_arrays_gives_what_read_gives(plc: ModbusPlc) -> None:
    """Every tag comes once, with the value, quality, reason and text `read` gives it: GOOD
    numbers, BAD "nan", a text, BAD "decode", BAD "exception"."""
    tags = await mixed_map(plc)
    by_samples = ModbusDriver("a", plc.host, plc.port, tags, timeout_s=2)
    by_arrays = ModbusDriver("b", plc.host, plc.port, tags, timeout_s=2)
    await by_samples.connect()
    await by_arrays.connect()
    try:
        want = {s.tag: s for s in await by_samples.read()}
        batch = await by_arrays.read_arrays()
        got = as_samples(by_arrays, batch)
    finally:
        await by_samples.aclose()
        await by_arrays.aclose()
    assert len(batch.tag) == len(set(batch.tag.tolist())) == len(tags)
    assert set(got) == set(want) == {t.name for t in tags}
    assert [n for n in want if not same(want[n], got[n])] == []
    assert got["name"].text == "PUMP-7" and got["garbled"].reason == "decode"
    assert got["h28"].reason == got["h30"].reason == "nan" and got["nobody"].reason == "exception"
    assert got["motor_speed"].value == PLAUSIBLE["motor_speed"]
    assert by_arrays.errors == by_samples.errors == {"exception": 1}


async def test_read_arrays_groups_and_dead_unit(plc: ModbusPlc) -> None:
    """A slow group comes only with the first batch; a silent unit's tags are BAD "timeout"
    rows while the drive unit stays GOOD."""
    tags = [*modbus_tags(), ModbusTag("io_a", 0, unit=IO), ModbusTag("slow", 300, unit=IO,
                                                                      group="slow")]  # fmt: skip
    d = ModbusDriver("g", plc.host, plc.port, tags, timeout_s=0.3, groups={"slow": 3600.0})
    await d.connect()
    try:
        first = as_samples(d, await d.read_arrays())
        plc.silence(IO)
        second = as_samples(d, await d.read_arrays())
        third = as_samples(d, await d.read_arrays())
    finally:
        await d.aclose()
    assert "slow" in first and all(s.quality is Quality.GOOD for s in first.values())
    assert second["io_a"].reason == "timeout" and second["io_a"].quality is Quality.BAD
    assert second["motor_speed"].quality is Quality.GOOD
    assert "io_a" not in third and set(third) == {t.name for t in modbus_tags()}  # backed off


async def test_acquisition_loop_fills_the_image_from_arrays(plc: ModbusPlc) -> None:
    """Given the image, the acquisition loop feeds it the array batches (no samples reach the
    sink) and follows the PLC's changes."""
    tags = [*modbus_tags(), ModbusTag("name", 210, "string", table="holding", unit=IO,
                                      length=4)]  # fmt: skip
    await plc.set_words(IO, "holding", 210, codec.encode_string("PUMP-7", 4))
    d = ModbusDriver("drive", plc.host, plc.port, tags, timeout_s=2)
    image = ProcessImage([t.name for t in tags] + ["other"], [None] * (len(tags) + 1))
    sunk: list[list[Sample]] = []
    stats = LinkStats()
    task = asyncio.create_task(
        run_driver(d, sunk.append, stats, poll_interval_s=0.05, connect_timeout_s=2, image=image)
    )
    try:
        assert await poll_until(lambda: stats.batches >= 2, WAIT_S)
        i = image.index["motor_speed"]
        assert image.value[i] == PLAUSIBLE["motor_speed"]
        await plc.write_values({**PLAUSIBLE, "motor_speed": 1234.0}, time.time())
        assert await poll_until(lambda: image.value[i] == 1234.0, WAIT_S)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await d.aclose()
    assert sunk == []
    assert image.text[image.index["name"]] == "PUMP-7" and image.text_idx == [len(tags) - 1]
    assert image.quality[: len(tags)].tolist() == [0] * len(tags)
    assert image.quality[-1] == Quality.BAD and image.reason[-1] == "init"
    assert stats.samples == stats.batches * len(tags)


def test_array_batches_concatenate_with_their_reasons() -> None:
    """A batch of several requests keeps each row's reason and text on its row."""
    from drivers.modbus.driver import _concat  # noqa: PLC0415

    def part(idx: list[int], reason: dict[int, str], text: dict[int, str]) -> SampleArrays:
        n = len(idx)
        z = np.zeros(n)
        return SampleArrays(np.array(idx), z, np.zeros(n, np.int8), z, z, reason, text)

    b = _concat([part([0, 1], {1: "nan"}, {}), part([5], {}, {0: "X"}), part([7, 8], {0: "y"}, {})])
    assert b.tag.tolist() == [0, 1, 5, 7, 8]
    assert b.reason == {1: "nan", 3: "y"} and b.text == {2: "X"}
    assert _concat([]).tag.tolist() == []


@pytest.mark.parametrize("interval", [0.1, 0.2, 1.0])
def test_paced_reads_start_just_before_a_tick(interval: float) -> None:
    """With a tick grid announced, the next read starts `lead` before a tick (the one nearest
    the nominal time), moving on by about the poll interval; without one, nominally."""
    from edge_agent.acquire import Pacer  # noqa: PLC0415

    image = ProcessImage(["a"], [None])
    pacer = Pacer(interval, image)
    assert pacer.next_start(100.0) == 100.0 + interval  # no tick announced yet
    image.next_tick, image.tick_period = 100.437, 0.1
    pacer.observe(0.020)
    lead = pacer.lead_s()
    assert lead == pytest.approx(1.25 * 0.020 + 0.003)
    start = 100.0
    for _ in range(20):
        nxt = pacer.next_start(start)
        ticks = (nxt + lead - image.next_tick) / image.tick_period
        assert ticks == pytest.approx(round(ticks), abs=1e-9)  # lead before a grid point
        assert interval / 2 < nxt - start <= interval + image.tick_period / 2 + 1e-9
        start = nxt
    fast = Pacer(0.05, image)  # faster than the tick: left alone
    assert fast.next_start(100.0) == pytest.approx(100.05)
