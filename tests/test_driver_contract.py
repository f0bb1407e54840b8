"""One contract suite for every driver: the fake, OPC UA on the rig's process PLC, Modbus on
the rig's drive PLC. Each implementation gets a small harness that can build the driver,
change a value on the PLC, serve a value of the wrong type, and stop and restart the PLC.

The contract: connect, read every tag, subscribe (OPC UA and the fake push changes; Modbus is
polled and is deliberately not `Subscribable`), a PLC restart and a PLC gone for a minute
(ConnectError, clean failed reconnects, data again once it is back, nothing leaked), a tag that
does not exist and a value of the wrong type (BAD samples, the others GOOD), cancellation in
the middle of a read, close twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio
from asyncua import ua

from drivers.base import (
    ConnectError,
    Driver,
    Quality,
    Sample,
    Subscribable,
    Writable,
    WriteRefusedError,
)
from drivers.fake import FakeDriver
from drivers.modbus import ModbusDriver, ModbusTag
from drivers.opcua import OpcUaDriver, OpcUaTag
from hil.plc_modbus import ModbusPlc
from hil.plc_opcua import OpcUaPlc
from hil.tags import AGENT_NODES, NAMESPACE_URI, tags_of
from tests.fixtures.plc import PLAUSIBLE, modbus_tags, opcua_tags

WAIT_S = 20.0  # generous bound for "eventually"; not a timing assertion
ATTEMPT_BOUND_S = 10.0  # one connect attempt that takes longer counts as a hang
RETRY_S = 1.0  # the pause between reconnect attempts, as a backoff floor would give
SUBSCRIBABLE = {"fake", "opcua"}  # the implementations whose PLC pushes changes

# Odd values: tag -> the reason of its BAD sample ("" when the value is still a number).
Odd = dict[str, str]


@dataclass
class Harness:
    """What the contract needs from one implementation and its PLC."""

    kind: str
    make: Callable[[bool], Driver]  # argument: add a tag that does not exist on the PLC
    change: Callable[[str, float], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]
    start: Callable[[], Awaitable[None]]
    tag: str  # a tag whose value `change` sets
    odd: Callable[[], Awaitable[tuple[Driver, Odd]]]  # serve wrong types; a driver that reads them


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

    async def odd() -> tuple[Driver, Odd]:
        d = FakeDriver("fake", names, initial=PLAUSIBLE)
        d.set_values({"flow": "39.5 l/min", "level": [0.75, 0.5]})  # text, a list
        return d, {"flow": "type", "level": "type"}

    return Harness("fake", make, change, stop, start, "flow", odd)


def _opcua_harness(plc: OpcUaPlc) -> Harness:
    def make(missing: bool) -> Driver:
        tags = opcua_tags()
        if missing:
            tags.append(OpcUaTag("ghost", f"nsu={NAMESPACE_URI};s=Loop.ghost"))
        return OpcUaDriver("process", plc.endpoint, tags, publishing_interval_ms=50, timeout_s=2)

    async def change(tag: str, value: float) -> None:
        await plc.write_values({tag: value}, time.time())

    async def odd() -> tuple[Driver, Odd]:
        # Nodes of another data type where the agent is configured for a number. A Boolean is
        # a number to the agent (0/1, like a coil), so it stays GOOD.
        served = {
            "text": (ua.Variant("39.5", ua.VariantType.String), "type"),
            "vector": (ua.Variant([1.0, 2.0], ua.VariantType.Double), "type"),
            "flag": (ua.Variant(True, ua.VariantType.Boolean), ""),
        }
        tags = opcua_tags()
        for name, (variant, _) in served.items():
            tags.append(OpcUaTag(name, await plc.add_odd_variable(name, variant), 50.0))
        d = OpcUaDriver("process", plc.endpoint, tags, publishing_interval_ms=50, timeout_s=2)
        return d, {name: reason for name, (_, reason) in served.items()}

    return Harness("opcua", make, change, plc.stop, plc.start, "flow", odd)


def _modbus_harness(plc: ModbusPlc) -> Harness:
    def make(missing: bool) -> Driver:
        tags = modbus_tags()
        if missing:
            tags.append(ModbusTag("ghost", 500, type="uint16", table="input"))
        return ModbusDriver("drive", plc.host, plc.port, tags, timeout_s=1)

    async def change(tag: str, value: float) -> None:
        await plc.write_values({tag: value}, time.time())

    async def odd() -> tuple[Driver, Odd]:
        # Registers carry no type: the closest real case is a float32 register pair holding a
        # NaN (a drive reports an invalid measurement so).
        await plc.write_values({"motor_current": math.nan}, time.time())
        return make(False), {"motor_current": "nan"}

    return Harness("modbus", make, change, plc.stop, plc.start, "motor_speed", odd)


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
    """After connect, one read returns every tag GOOD with the PLC's value; `server_ts` is the
    server's timestamp where the protocol has one (OPC UA), else NaN."""
    async with connected(rig) as d:
        got = by_tag(await d.read())
    assert set(got) == set(d.tags)
    for name, s in got.items():
        assert s.quality is Quality.GOOD, s
        assert s.value == pytest.approx(PLAUSIBLE[name], rel=1e-6)
        assert s.reason == ""
        if rig.kind == "opcua":
            assert s.source_ts <= s.server_ts <= s.recv_ts, s
        else:
            assert math.isnan(s.server_ts), s


async def _read_until(d: Driver, tag: str, value: float) -> None:
    """Poll until `tag` reads `value` (bounded by WAIT_S)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            if by_tag(await d.read())[tag].value == pytest.approx(value):
                return
            await asyncio.sleep(0.01)


async def _pushed_until(it: AsyncIterator[list[Sample]], tag: str, value: float) -> None:
    """Take batches until one carries `tag` at `value` (bounded by WAIT_S)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            batch = by_tag(await anext(it))
            if tag in batch and batch[tag].value == pytest.approx(value):
                return


async def _first_of_every_tag(it: AsyncIterator[list[Sample]], tags: set[str]) -> dict[str, Sample]:
    """The first sample of every tag in `tags` (bounded by WAIT_S)."""
    first: dict[str, Sample] = {}
    async with asyncio.timeout(WAIT_S):
        while not tags <= set(first):
            for s in await anext(it):
                first.setdefault(s.tag, s)
    return first


async def _sees_change(d: Driver, rig: Harness, value: float) -> None:
    """A value set on the PLC now arrives: pushed for a Subscribable driver, else polled."""
    if isinstance(d, Subscribable):
        it = d.subscribe()
        try:
            await _first_of_every_tag(it, set(d.tags))
            await rig.change(rig.tag, value)
            await _pushed_until(it, rig.tag, value)
        finally:
            await it.aclose()  # type: ignore[attr-defined]  # an async generator
    else:
        await rig.change(rig.tag, value)
        await _read_until(d, rig.tag, value)


async def test_change_is_seen_by_read(rig: Harness) -> None:
    """A value changed on the PLC shows up in a later read (every driver can be polled)."""
    async with connected(rig) as d:
        assert by_tag(await d.read())[rig.tag].value == pytest.approx(PLAUSIBLE[rig.tag])
        await rig.change(rig.tag, 12.0)
        await _read_until(d, rig.tag, 12.0)


async def test_subscribe_pushes_every_tag_then_changes(rig: Harness) -> None:
    """OPC UA and the fake are Subscribable: the subscription yields every tag (the missing
    one BAD), then a value changed on the PLC. Modbus is polled, not Subscribable: it has no
    `subscribe`, and its `read` is the way to see changes (checked by the read tests)."""
    async with connected(rig, missing=True) as d:
        assert isinstance(d, Subscribable) is (rig.kind in SUBSCRIBABLE)
        if not isinstance(d, Subscribable):
            assert not hasattr(d, "subscribe")
            return
        it = d.subscribe()
        try:
            first = await _first_of_every_tag(it, set(d.tags))
            assert (first["ghost"].quality, first["ghost"].reason) == (Quality.BAD, "not_found")
            for name, sample in first.items():
                if name != "ghost":
                    assert sample.quality is Quality.GOOD, sample
                    assert sample.value == pytest.approx(PLAUSIBLE[name], rel=1e-6)
            await rig.change(rig.tag, 12.0)
            await _pushed_until(it, rig.tag, 12.0)
        finally:
            await it.aclose()  # type: ignore[attr-defined]  # an async generator


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
        if isinstance(d, Subscribable):
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


async def test_wrong_type_is_bad_sample_others_good(rig: Harness) -> None:
    """A value of another type than the tag's (text, an array; for Modbus a NaN float) is a BAD
    sample with its reason, in a read and in a subscription; every other tag stays GOOD."""
    d, odd = await rig.odd()
    await d.connect()
    try:
        paths = {"read": by_tag(await d.read())}
        if isinstance(d, Subscribable):
            it = d.subscribe()
            try:
                paths["subscribe"] = await _first_of_every_tag(it, set(d.tags))
            finally:
                await it.aclose()  # type: ignore[attr-defined]  # an async generator
    finally:
        await d.aclose()
    assert any(odd.values())
    for path, got in paths.items():
        assert set(got) == set(d.tags), path
        for name, s in got.items():
            reason = odd.get(name, "")
            if reason:
                assert (s.quality, s.reason) == (Quality.BAD, reason), (path, s)
                assert math.isnan(s.value), (path, s)
            else:
                assert (s.quality, s.reason) == (Quality.GOOD, ""), (path, s)
                assert math.isfinite(s.value), (path, s)


def _resources() -> tuple[int, int]:
    """(asyncio tasks, open file descriptors) of this process right now."""
    return len(asyncio.all_tasks()), len(os.listdir("/proc/self/fd"))


async def _settled_at_most(base: tuple[int, int]) -> tuple[int, int]:
    """Wait (bounded) until tasks and fds are back at `base` or below; the last count."""
    now = _resources()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(WAIT_S):
            while now[0] > base[0] or now[1] > base[1]:
                await asyncio.sleep(0.1)
                now = _resources()
    return now


async def _outage(rig: Harness, outage_s: float) -> None:
    """The PLC goes away for `outage_s` and comes back, with a driver reconnecting throughout."""
    loop = asyncio.get_running_loop()
    base = _resources()
    d = rig.make(False)
    await d.connect()
    assert all(s.quality is Quality.GOOD for s in await d.read())
    stopped_at = loop.time()
    await rig.stop()
    async with asyncio.timeout(WAIT_S):  # promptly: the next reads notice the lost link
        with pytest.raises(ConnectError):
            while True:
                await d.read()
                await asyncio.sleep(0.05)
    await d.aclose()
    failed = 0
    while loop.time() - stopped_at < outage_s:
        async with asyncio.timeout(ATTEMPT_BOUND_S):  # a hang fails the test here
            with pytest.raises(ConnectError):  # and so does any other exception
                await d.connect()
            await d.aclose()
        failed += 1
        await asyncio.sleep(RETRY_S)
    assert failed >= 1
    await rig.start()
    returned_at = loop.time()
    attempts = 0
    got: list[Sample] = []
    while not got:
        attempts += 1
        assert attempts <= 2, "no data within two reconnect attempts after the PLC returned"
        try:
            async with asyncio.timeout(ATTEMPT_BOUND_S):
                await d.connect()
                got = await d.read()
        except ConnectError:
            await d.aclose()
            await asyncio.sleep(RETRY_S)
    back_s = loop.time() - returned_at
    try:
        assert {s.tag for s in got} == set(d.tags)
        assert all(s.quality is Quality.GOOD for s in got), got
        await _sees_change(d, rig, 21.0)
    finally:
        await d.aclose()
    tasks, fds = await _settled_at_most(base)
    print(  # figures for the record (`pytest -s`); the assertions above are on behaviour
        f"\n{rig.kind}: outage {outage_s:.0f} s, {failed} clean failed reconnects, data "
        f"{back_s:.2f} s after the return at attempt {attempts}, tasks {base[0]}->{tasks}, "
        f"fds {base[1]}->{fds}"
    )
    assert tasks <= base[0], f"asyncio tasks {base[0]} -> {tasks}"
    assert fds <= base[1], f"open fds {base[1]} -> {fds}"


async def test_short_outage_clean_failures_then_data_again(rig: Harness) -> None:
    """PLC gone for a few seconds: ConnectError at once, every reconnect attempt meanwhile a
    clean ConnectError, data within two attempts of its return, no task or fd left behind."""
    await _outage(rig, 3.0)


@pytest.mark.slow
async def test_minute_outage_clean_failures_then_data_again(rig: Harness) -> None:
    """The same with the PLC gone for a whole minute (sessions expire, sockets time out)."""
    await _outage(rig, 60.0)


async def test_cancel_mid_read_leaves_driver_closable(rig: Harness) -> None:
    """Cancelling a read at any point in flight propagates CancelledError; the driver closes,
    reconnects and reads every tag, and nothing is left behind."""
    base = _resources()
    d = rig.make(False)
    for hops in (0, 1, 2, 4, 8):  # loop iterations before the cancel: different await points
        await d.connect()
        task = asyncio.create_task(d.read())
        for _ in range(hops):
            await asyncio.sleep(0)
        if task.cancel():
            with pytest.raises(asyncio.CancelledError):
                await task
        else:  # the read was already done: it must have succeeded
            assert len(task.result()) == len(d.tags)
        await d.aclose()
    await d.connect()
    try:
        assert len(await d.read()) == len(d.tags)
    finally:
        await d.aclose()
    tasks, fds = await _settled_at_most(base)
    assert tasks <= base[0], f"asyncio tasks {base[0]} -> {tasks}"
    assert fds <= base[1], f"open fds {base[1]} -> {fds}"


# Writes: only the two PLC drivers write (the fake is read-only by design, and says so by not
# being `Writable`). Each gets one tag declared writable and one that is not.

IO_UNIT = 7  # a spare unit behind the drive PLC, as a PLC program's agent area
Action = Callable[[], Awaitable[None]]
WriterRig = tuple[Driver, Callable[[], Awaitable[float]], Action, Action]


@contextlib.asynccontextmanager
async def _writer(kind: str) -> AsyncIterator[WriterRig]:
    """A writable driver, a probe of the written value on the PLC itself, stop and start."""
    if kind == "opcua":
        async with OpcUaPlc(tags_of("process"), writable=AGENT_NODES) as oplc:
            await oplc.write_values(PLAUSIBLE, time.time())
            tags = [
                *opcua_tags(),
                OpcUaTag("word", f"nsu={NAMESPACE_URI};s=Agent.alarm_word", writable=True),
            ]
            d: Driver = OpcUaDriver("process", oplc.endpoint, tags, timeout_s=2)

            async def probe_opcua() -> float:
                return float(await oplc.written("alarm_word"))  # type: ignore[arg-type]

            yield d, probe_opcua, oplc.stop, oplc.start
    else:
        async with ModbusPlc(tags_of("drive"), extra_units=[IO_UNIT]) as mplc:
            await mplc.write_values(PLAUSIBLE, time.time())
            mtags = [*modbus_tags(), ModbusTag("word", 0, "uint16", unit=IO_UNIT, writable=True)]
            d = ModbusDriver("drive", mplc.host, mplc.port, mtags, timeout_s=1)

            async def probe_modbus() -> float:
                return float((await mplc.words(IO_UNIT, "holding", 0, 1))[0])

            yield d, probe_modbus, mplc.stop, mplc.start


def test_fake_driver_is_not_writable() -> None:
    """Nothing writes through the fake: it does not offer `write` at all."""
    assert not isinstance(FakeDriver("fake", ("flow",)), Writable)


@pytest.mark.parametrize("kind", ["opcua", "modbus"])
async def test_write_contract(kind: str) -> None:
    """Only a writable tag is written, once, read back with old and new value; the PLC and the
    next read agree. A read-only tag, a value its type cannot hold, a driver not connected and
    a PLC that is gone never end in anything but a refusal, a ConnectError or a failed result."""
    async with _writer(kind) as (d, probe, stop, start):
        assert isinstance(d, Writable)
        with pytest.raises(ConnectError):
            await d.write("word", 1)
        await d.connect()
        try:
            res = await d.write("word", 0x8001)
            assert (res.outcome, res.old, res.new) == ("written", 0, 0x8001), res
            assert await probe() == 0x8001
            assert by_tag(await d.read())["word"].value == 0x8001
            readonly = d.tags[0]
            before = by_tag(await d.read())[readonly].value
            with pytest.raises(WriteRefusedError, match="writable"):
                await d.write(readonly, before + 1)
            with pytest.raises(WriteRefusedError):
                await d.write("word", 70000)  # beyond a 16-bit word
            assert await probe() == 0x8001
            assert by_tag(await d.read())[readonly].value == before
            await stop()
            try:
                res = await d.write("word", 3)
                assert not res.ok, res
            except ConnectError:
                pass
        finally:
            await d.aclose()
        await start()
        await d.connect()
        try:
            assert by_tag(await d.read())["word"].value == 0x8001  # the failed write left it
        finally:
            await d.aclose()
