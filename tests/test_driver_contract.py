"""One contract suite for every driver: the fake, OPC UA on the rig's process PLC, Modbus on
the rig's drive PLC. Each implementation gets a small harness that can build the driver,
change a value on the PLC, and stop and restart the PLC.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio

from drivers.base import ConnectError, Driver, Quality, Sample, Subscribable
from drivers.fake import FakeDriver
from drivers.modbus import ModbusDriver, ModbusTag
from drivers.opcua import OpcUaDriver, OpcUaTag
from hil.plc_modbus import ModbusPlc
from hil.plc_opcua import OpcUaPlc
from hil.tags import NAMESPACE_URI, tags_of
from tests.fixtures.plc import PLAUSIBLE, modbus_tags, opcua_tags

WAIT_S = 20.0  # generous bound for "eventually"; not a timing assertion


@dataclass
class Harness:
    """What the contract needs from one implementation and its PLC."""

    kind: str
    make: Callable[[bool], Driver]  # argument: add a tag that does not exist on the PLC
    change: Callable[[str, float], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]
    start: Callable[[], Awaitable[None]]
    tag: str  # a tag whose value `change` sets


def _fake_harness() -> Harness:
    names = tuple(t.name for t in tags_of("process"))
    drivers: list[FakeDriver] = []

    def make(missing: bool) -> Driver:
        d = FakeDriver("fake", (*names, "ghost") if missing else names, initial=PLAUSIBLE)
        drivers.append(d)
        return d

    async def change(tag: str, value: float) -> None:
        for d in drivers:
            d.set_values({tag: value})

    async def stop() -> None:
        for d in drivers:
            d.down()

    async def start() -> None:
        for d in drivers:
            d.up()

    return Harness("fake", make, change, stop, start, "flow")


def _opcua_harness(plc: OpcUaPlc) -> Harness:
    def make(missing: bool) -> Driver:
        tags = opcua_tags()
        if missing:
            tags.append(OpcUaTag("ghost", f"nsu={NAMESPACE_URI};s=Loop.ghost"))
        return OpcUaDriver("process", plc.endpoint, tags, publishing_interval_ms=50, timeout_s=2)

    async def change(tag: str, value: float) -> None:
        await plc.write_values({tag: value}, time.time())

    return Harness("opcua", make, change, plc.stop, plc.start, "flow")


def _modbus_harness(plc: ModbusPlc) -> Harness:
    def make(missing: bool) -> Driver:
        tags = modbus_tags()
        if missing:
            tags.append(ModbusTag("ghost", 500, type="uint16", table="input"))
        return ModbusDriver("drive", plc.host, plc.port, tags, timeout_s=1)

    async def change(tag: str, value: float) -> None:
        await plc.write_values({tag: value}, time.time())

    return Harness("modbus", make, change, plc.stop, plc.start, "motor_speed")


@pytest_asyncio.fixture(params=["fake", "opcua", "modbus"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """A harness for one implementation, with its PLC running."""
    if request.param == "fake":
        yield _fake_harness()
    elif request.param == "opcua":
        async with OpcUaPlc(tags_of("process")) as plc:
            await plc.write_values(PLAUSIBLE, time.time())
            yield _opcua_harness(plc)
    else:
        async with ModbusPlc(tags_of("drive")) as plc:
            await plc.write_values(PLAUSIBLE, time.time())
            yield _modbus_harness(plc)


@contextlib.asynccontextmanager
async def connected(rig: Harness, missing: bool = False) -> AsyncIterator[Driver]:
    d = rig.make(missing)
    await d.connect()
    try:
        yield d
    finally:
        await d.aclose()


def by_tag(samples: list[Sample]) -> dict[str, Sample]:
    return {s.tag: s for s in samples}


async def test_read_all_tags_good(rig: Harness) -> None:
    """After connect, one read returns every tag GOOD with the PLC's value."""
    async with connected(rig) as d:
        got = by_tag(await d.read())
    assert set(got) == set(d.tags)
    for name, s in got.items():
        assert s.quality is Quality.GOOD, s
        assert s.value == pytest.approx(PLAUSIBLE[name], rel=1e-6)
        assert s.reason == ""


async def test_change_is_seen(rig: Harness) -> None:
    """A value changed on the PLC shows up in a later poll or subscription batch."""
    async with connected(rig) as d:
        if isinstance(d, Subscribable) and rig.kind == "opcua":
            it = d.subscribe()
            try:
                async with asyncio.timeout(WAIT_S):
                    first = {s.tag: s for batch in [await anext(it)] for s in batch}
                    assert first[rig.tag].value == pytest.approx(PLAUSIBLE[rig.tag])
                    await rig.change(rig.tag, 12.0)
                    while True:
                        batch = by_tag(await anext(it))
                        if rig.tag in batch and batch[rig.tag].value == pytest.approx(12.0):
                            break
            finally:
                await it.aclose()  # type: ignore[attr-defined]  # an async generator
        else:
            await rig.change(rig.tag, 12.0)
            async with asyncio.timeout(WAIT_S):
                for _ in range(1_000_000):  # bounded by the timeout, not the count
                    if by_tag(await d.read())[rig.tag].value == pytest.approx(12.0):
                        break
                    await asyncio.sleep(0.01)


async def test_fake_subscription_sees_change() -> None:
    """The fake's subscription yields every tag first, then only the changed ones."""
    d = FakeDriver("fake", ["a", "b"], initial={"a": 1.0, "b": 2.0})
    await d.connect()
    it = d.subscribe()
    assert {s.tag for s in await anext(it)} == {"a", "b"}
    d.set_values({"b": 3.0})
    batch = await anext(it)
    assert [(s.tag, s.value) for s in batch] == [("b", 3.0)]
    await it.aclose()  # type: ignore[attr-defined]  # an async generator


async def _until_connect_error(d: Driver, rig: Harness) -> None:
    async with asyncio.timeout(WAIT_S):
        if isinstance(d, Subscribable) and rig.kind == "opcua":
            it = d.subscribe()
            await anext(it)
            await rig.stop()
            with pytest.raises(ConnectError):
                while True:
                    await anext(it)
        else:
            await rig.stop()
            with pytest.raises(ConnectError):
                while True:
                    await d.read()
                    await asyncio.sleep(0.05)


async def test_server_stop_raises_then_reconnect_works(rig: Harness) -> None:
    """A stopped PLC surfaces as ConnectError; once it is back, connect and read work again."""
    d = rig.make(False)
    await d.connect()
    try:
        await _until_connect_error(d, rig)
        await d.aclose()
        with pytest.raises(ConnectError):
            await d.connect()
        await d.aclose()
        await rig.start()
        await d.connect()
        got = await d.read()
        assert all(s.quality is Quality.GOOD for s in got)
    finally:
        await d.aclose()


async def test_missing_tag_is_bad_sample(rig: Harness) -> None:
    """A tag the PLC does not have is a BAD sample with a reason; the others stay GOOD."""
    async with connected(rig, missing=True) as d:
        got = by_tag(await d.read())
    assert got["ghost"].quality is Quality.BAD
    assert got["ghost"].reason in {"not_found", "exception"}
    assert all(s.quality is Quality.GOOD for n, s in got.items() if n != "ghost")


async def test_close_twice(rig: Harness) -> None:
    """aclose is idempotent, also before connect."""
    d = rig.make(False)
    await d.aclose()
    await d.connect()
    await d.aclose()
    await d.aclose()
    with pytest.raises(ConnectError):
        await d.read()


async def test_cancel_mid_read_leaves_driver_closable(rig: Harness) -> None:
    """Cancelling a read in flight propagates CancelledError; the driver closes and reconnects."""
    d = rig.make(False)
    await d.connect()
    task = asyncio.create_task(d.read())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await d.aclose()
    await d.connect()
    try:
        assert len(await d.read()) == len(d.tags)
    finally:
        await d.aclose()
