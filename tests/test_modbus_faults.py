"""Bad frames thrown at the Modbus driver from a raw socket server.

The server here is a fake on purpose: exception storms, short and truncated frames, random
bytes, foreign transaction ids, answers from the wrong unit and bad CRCs are faults a real
server (the rig's pymodbus PLC) cannot be made to produce. It also serves pipelined requests
while staying silent for one unit, which pymodbus' server cannot do reliably: it keeps only the
last received request per connection, so a held request is answered with a later one's id.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest_asyncio

from drivers.base import ConnectError, Quality
from drivers.modbus import ModbusDriver, ModbusTag
from drivers.modbus.wire import crc16

# A reply: list of byte strings to send (in order) and whether to close the connection after.
Reply = tuple[list[bytes], bool]
Script = Callable[[int, int, int, int, int], Reply]  # (tid, unit, fc, address, count)


def registers(address: int, count: int) -> bytes:
    """The registers the fake serves: register a holds a."""
    return struct.pack(f">{count}H", *range(address, address + count))


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def rtu(unit: int, pdu: bytes) -> bytes:
    frame = bytes([unit]) + pdu
    crc = crc16(frame)
    return frame + bytes([crc & 0xFF, crc >> 8])


def good_pdu(fc: int, address: int, count: int) -> bytes:
    data = registers(address, count)
    return bytes([fc, len(data)]) + data


@asynccontextmanager
async def raw_server(script: Script, framing: str = "tcp") -> AsyncIterator[dict[str, int]]:
    """A Modbus server answering each request as `script` says; yields its stats and port."""
    stats = {"port": 0, "requests": 0, "in_flight_max": 0}
    in_flight = 0

    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.add(writer)
        try:
            while True:
                if framing == "tcp":
                    head = await reader.readexactly(7)
                    tid, _proto, length, unit = struct.unpack(">HHHB", head)
                    pdu = await reader.readexactly(length - 1)
                else:
                    frame = await reader.readexactly(8)
                    tid, unit, pdu = 0, frame[0], frame[1:6]
                fc, address, count = struct.unpack(">BHH", pdu[:5])
                stats["requests"] += 1
                in_flight += 1
                stats["in_flight_max"] = max(stats["in_flight_max"], in_flight)
                chunks, close = script(tid, unit, fc, address, count)
                in_flight -= bool(chunks)  # exact for scripts that answer with one frame
                for chunk in chunks:
                    writer.write(chunk)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writers.discard(writer)
            writer.close()

    writers: set[asyncio.StreamWriter] = set()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    stats["port"] = server.sockets[0].getsockname()[1]
    try:
        yield stats
    finally:
        server.close()
        for w in list(writers):
            w.close()  # the handler then ends on end-of-stream
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)


@pytest_asyncio.fixture
async def unhandled() -> list[dict[str, object]]:
    """Exceptions that reach the event loop's handler (none may)."""
    seen: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    return seen


TAGS = [ModbusTag("a", 0), ModbusTag("b", 200, "int32"), ModbusTag("c", 400)]
EXPECTED = {"a": 0.0, "b": float((200 << 16) | 201), "c": 400.0}


async def _hammer(d: ModbusDriver, stats: dict[str, int], requests: int) -> Counter[str]:
    """Read until the server saw `requests` requests; reconnect on ConnectError. Checks that
    every GOOD sample has the true value and every BAD one a reason; returns BAD reasons."""
    bad: Counter[str] = Counter()
    await d.connect()
    try:
        while stats["requests"] < requests:
            try:
                samples = await d.read()
            except ConnectError:
                await d.aclose()
                await d.connect()
                continue
            for s in samples:
                if s.quality is Quality.GOOD:
                    assert s.value == EXPECTED[s.tag], s
                else:
                    assert s.reason, s
                    bad[s.reason] += 1
    finally:
        await d.aclose()
    return bad


async def test_fuzzed_tcp_frames_are_counted_never_raised(unhandled: list[object]) -> None:
    """Random, truncated, short, foreign and wrong-unit frames: no exception other than
    ConnectError leaves the driver, none reaches the loop, and every bad frame is counted."""
    rng = random.Random(20261125)
    sent: Counter[str] = Counter()
    kinds = [
        "good",
        "exception",
        "short",
        "random_pdu",
        "foreign_tid",
        "wrong_unit",
        "truncated",
        "garbage",
    ]

    def script(tid: int, unit: int, fc: int, address: int, count: int) -> Reply:
        kind = rng.choice(kinds)
        sent[kind] += 1
        good = mbap(tid, unit, good_pdu(fc, address, count))
        if kind == "good":
            return [good], False
        if kind == "exception":
            return [mbap(tid, unit, bytes([fc | 0x80, rng.randint(1, 11)]))], False
        if kind == "short":
            data = registers(address, count)[: rng.randrange(0, 2 * count)]
            return [mbap(tid, unit, bytes([fc, 2 * count]) + data)], False
        if kind == "random_pdu":
            first = rng.choice([b for b in range(256) if b not in (fc, fc | 0x80)])
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 30)))
            return [mbap(tid, unit, bytes([first]) + body)], False
        if kind == "foreign_tid":  # a stray answer first, then the real one
            return [mbap((tid + 0x1000) & 0xFFFF, unit, good_pdu(fc, address, count)), good], False
        if kind == "wrong_unit":
            return [mbap(tid, (unit + 1) & 0xFF, good_pdu(fc, address, count))], False
        if kind == "truncated":
            return [good[: rng.randrange(1, len(good))]], True
        junk = bytes([rng.randrange(256), rng.randrange(256), rng.randrange(1, 256)])
        return [junk + bytes(rng.randrange(256) for _ in range(rng.randrange(4, 40)))], True

    async with raw_server(script) as stats:
        d = ModbusDriver("fuzz", "127.0.0.1", stats["port"], TAGS, timeout_s=2, max_gap=10)
        assert len(d.requests) == 3
        bad = await _hammer(d, stats, 600)
    assert not unhandled
    errors = d.errors
    assert errors["exception"] == sent["exception"]
    assert errors["short"] >= sent["short"]
    assert errors["function_mismatch"] == sent["random_pdu"]
    assert errors["tid_mismatch"] == sent["foreign_tid"]
    assert errors["unit_mismatch"] == sent["wrong_unit"]
    assert errors["truncated"] == sent["truncated"]
    assert errors["malformed"] == sent["garbage"]
    bad_frames = sum(n for k, n in sent.items() if k != "good")
    assert sum(errors.values()) == bad_frames  # each bad frame counted exactly once
    # BAD samples carry the counted reasons (a read cut short by a lost link returns none).
    assert bad["exception"] > 0 and set(bad) <= set(errors)


async def test_fuzzed_rtu_frames_are_counted(unhandled: list[object]) -> None:
    """RTU over TCP: bad CRCs, exceptions, wrong units and truncated frames are counted; the
    stream re-synchronises at the next request."""
    rng = random.Random(7)
    sent: Counter[str] = Counter()

    def script(tid: int, unit: int, fc: int, address: int, count: int) -> Reply:
        del tid
        kind = rng.choice(["good", "crc", "exception", "wrong_unit", "truncated"])
        sent[kind] += 1
        good = rtu(unit, good_pdu(fc, address, count))
        if kind == "good":
            return [good], False
        if kind == "crc":
            i = rng.randrange(3, len(good) - 2)  # corrupt a data byte, keep the length
            return [good[:i] + bytes([good[i] ^ 0x5A]) + good[i + 1 :]], False
        if kind == "exception":
            return [rtu(unit, bytes([fc | 0x80, 2]))], False
        if kind == "wrong_unit":
            return [rtu((unit + 1) & 0xFF, good_pdu(fc, address, count))], False
        return [good[: rng.randrange(1, len(good))]], True

    async with raw_server(script, framing="rtu") as stats:
        d = ModbusDriver("rtu", "127.0.0.1", stats["port"], TAGS, timeout_s=2, framing="rtu")
        await _hammer(d, stats, 300)
    assert not unhandled
    assert d.errors["crc"] == sent["crc"]
    assert d.errors["exception"] == sent["exception"]
    assert d.errors["unit_mismatch"] == sent["wrong_unit"]
    assert d.errors["truncated"] == sent["truncated"]
    assert sum(d.errors.values()) == sum(n for k, n in sent.items() if k != "good")


async def test_pipelined_requests_and_a_silent_unit() -> None:
    """With max_outstanding > 1, requests to a unit that never answers occupy one slot while
    the other unit's requests are answered on the same connection in the same read."""

    held: list[bytes] = []

    def script(tid: int, unit: int, fc: int, address: int, count: int) -> Reply:
        # The live unit's answers are held back until the dead unit's request has arrived too:
        # only a client with all three requests in flight at once gets any answer in time.
        if unit != 9:
            held.append(mbap(tid, unit, good_pdu(fc, address, count)))
        if len(held) == 2 and stats["requests"] == 3:
            answers, held[:] = list(held), []
            return answers, False
        return [], False  # a dead device behind the gateway never answers

    tags = [
        ModbusTag("dead", 0, unit=9),
        ModbusTag("a", 0, unit=1),
        ModbusTag("c", 400, unit=1),
    ]
    async with raw_server(script) as stats:
        d = ModbusDriver(
            "gw", "127.0.0.1", stats["port"], tags, timeout_s=0.5, max_outstanding=4, max_gap=0
        )
        await d.connect()
        try:
            got = {s.tag: s for s in await d.read()}
        finally:
            await d.aclose()
    assert got["dead"].reason == "timeout" and got["a"].value == 0 and got["c"].value == 400
    assert stats["in_flight_max"] == 3
    assert d.errors == {"timeout": 1}


async def test_late_answer_after_timeout_is_counted_as_late() -> None:
    """An answer that arrives after its request timed out is counted "late", not delivered."""
    held: list[bytes] = []

    def script(tid: int, unit: int, fc: int, address: int, count: int) -> Reply:
        frame = mbap(tid, unit, good_pdu(fc, address, count))
        if not held:
            held.append(frame)
            return [], False  # first request: no answer now
        return [held.pop(), frame], False  # the stale answer first, then the right one

    async with raw_server(script) as stats:
        d = ModbusDriver(
            "late",
            "127.0.0.1",
            stats["port"],
            [ModbusTag("a", 0), ModbusTag("z", 0, unit=2)],
            timeout_s=0.3,
        )
        await d.connect()
        try:
            got = {s.tag: s for s in await d.read()}
        finally:
            await d.aclose()
    # Unit 1's request timed out; unit 2's answer came after unit 1's stale one.
    assert got["a"].reason == "timeout"
    assert got["z"].quality is Quality.GOOD
    assert d.errors == {"timeout": 1, "late": 1}
