"""Benchmark: Modbus polling cost per register, the driver against a bare pymodbus loop.

Owns the Modbus benchmark. Servers: the rig's Modbus PLC (`hil.plc_modbus.ModbusPlc`, a
pymodbus server), one per connection, each in its own process so the client's process only
runs the client. The pymodbus server costs more CPU per request than a client, so on a 2-core
machine the servers, not the client, set the wall-clock rate: the figures that matter are the
client's CPU seconds (`time.process_time` of this process) per register read.

Map: per connection, `REGISTERS` holding registers of an extra unit, read as float32 tags
(one tag per 2 registers) or as uint16 tags (one per register, the worst case for per-tag
cost); planned by the driver into requests of up to 124-125 registers.

Cases, run interleaved (driver run 1, bare run 1, driver run 2, ...):

    bare pymodbus   one `AsyncModbusTcpClient` per connection (retries 0), each looping over
                    the same planned requests, touching `rsp.registers`: registers as ints,
                    no engineering values (the baseline of the stated target)
    driver          `ModbusDriver.read()` per connection: the same requests, decoded into
                    typed engineering values and `Sample` objects
    driver columns  `ModbusDriver.read_arrays()`: the same, decoded into columns (values,
                    quality, stamps as NumPy arrays): what the agent's acquisition loop calls

Rows are CPU microseconds per register (lower is better; "vs baseline" is bare / driver).

    uv run python -m bench.modbus [--quick] [--results-dir DIR] [--repeats N]
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import multiprocessing.synchronize as mps
import time
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.queues import Queue

from pymodbus.client import AsyncModbusTcpClient

from bench.harness import Options, Row, Target, parse_args, report
from drivers.modbus import ModbusDriver, ModbusTag, codec
from hil.plc_modbus import ModbusPlc
from hil.tags import tags_of

NAME = "modbus"
UNIT = 2
REGISTERS = 1000
OVERHEAD_LIMIT = 1.25
RATE_TARGET = 1_000_000.0  # registers per CPU second of the client


def _serve(ports: Queue[int], stop: mps.Event) -> None:
    """Child process: one rig Modbus PLC with the benchmark map, until `stop` is set."""

    async def main() -> None:
        async with ModbusPlc(tags_of("drive"), extra_units=[UNIT], block_size=REGISTERS + 64) as p:
            words = []
            for i in range(REGISTERS // 2):
                words += codec.encode(float(i) / 4.0, "float32", "CDAB")
            await p.set_words(UNIT, "holding", 0, words)
            ports.put(p.port)
            await asyncio.to_thread(stop.wait)

    asyncio.run(main())


def tag_map(kind: str) -> list[ModbusTag]:
    """The benchmark map as driver tags: float32 CDAB pairs or single uint16 registers."""
    if kind == "float32":
        return [
            ModbusTag(f"f{i}", 2 * i, "float32", "CDAB", unit=UNIT) for i in range(REGISTERS // 2)
        ]
    return [ModbusTag(f"u{i}", i, "uint16", unit=UNIT) for i in range(REGISTERS)]


async def _driver_case(
    ports: Sequence[int], kind: str, seconds: float, columns: bool = False
) -> tuple[float, int]:
    drivers = [ModbusDriver(f"b{p}", "127.0.0.1", p, tag_map(kind), timeout_s=2) for p in ports]
    for d in drivers:
        await d.connect()
    regs_per_read = sum(r.count for r in drivers[0].requests)
    try:
        return await _timed(
            [_repeat(d.read_arrays if columns else d.read) for d in drivers],
            seconds,
            regs_per_read,
            check=drivers,
        )
    finally:
        for d in drivers:
            await d.aclose()


async def _columns_case(ports: Sequence[int], kind: str, seconds: float) -> tuple[float, int]:
    return await _driver_case(ports, kind, seconds, columns=True)


async def _bare_case(ports: Sequence[int], kind: str, seconds: float) -> tuple[float, int]:
    plan = [(r.address, r.count) for r in ModbusDriver("p", "", 0, tag_map(kind)).requests]
    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=2, retries=0) for p in ports]
    for c in clients:
        assert await c.connect()

    def reader(c: AsyncModbusTcpClient) -> Callable[[], Awaitable[object]]:
        async def once() -> object:
            n = 0
            for address, count in plan:
                rsp = await c.read_holding_registers(address, count=count, device_id=UNIT)
                n += len(rsp.registers)
            assert n == regs_per_read
            return n

        return once

    regs_per_read = sum(count for _a, count in plan)
    try:
        return await _timed([_repeat(reader(c)) for c in clients], seconds, regs_per_read)
    finally:
        for c in clients:
            c.close()


def _repeat(fn: Callable[[], Awaitable[object]]) -> Callable[[float], Awaitable[int]]:
    async def loop(deadline: float) -> int:
        n = 0
        while time.perf_counter() < deadline:
            await fn()
            n += 1
        return n

    return loop


async def _timed(
    loops: Sequence[Callable[[float], Awaitable[int]]],
    seconds: float,
    regs_per_read: int,
    check: Sequence[ModbusDriver] = (),
) -> tuple[float, int]:
    """CPU seconds of this process and registers read while `loops` run for `seconds`."""
    cpu0 = time.process_time()
    deadline = time.perf_counter() + seconds
    reads = await asyncio.gather(*(loop(deadline) for loop in loops))
    cpu = time.process_time() - cpu0
    for d in check:
        assert d.errors == {}, d.errors
    return cpu, sum(reads) * regs_per_read


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args("Modbus polling: driver vs bare pymodbus", argv, default_repeats=(1, 5))
    connections = 1 if opts.quick else 4
    seconds = 0.3 if opts.quick else 3.0
    rows, notes, targets = run(opts, connections, seconds)
    report(
        NAME,
        opts,
        rows,
        targets=targets,
        notes=notes,
        config={"connections": connections, "seconds_per_run": seconds, "registers": REGISTERS},
    )
    return 0


def run(
    opts: Options, connections: int, seconds: float
) -> tuple[list[Row], list[str], list[Target]]:
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    ports_q: Queue[int] = ctx.Queue()
    procs = [
        ctx.Process(target=_serve, args=(ports_q, stop), daemon=True) for _ in range(connections)
    ]
    for p in procs:
        p.start()
    try:
        ports = [ports_q.get(timeout=60) for _ in procs]
        samples: dict[tuple[str, str], list[float]] = {}
        rates: dict[tuple[str, str], list[float]] = {}
        for kind in ("float32", "uint16"):
            for _ in range(opts.repeats):
                for case, fn in (
                    ("bare pymodbus", _bare_case),
                    ("driver", _driver_case),
                    ("driver columns", _columns_case),
                ):
                    cpu, regs = asyncio.run(fn(ports, kind, seconds))
                    samples.setdefault((kind, case), []).append(cpu / regs * 1e6)
                    rates.setdefault((kind, case), []).append(regs / seconds)
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=10)
    rows = [
        Row(
            f"{kind} map",
            case,
            "us/register",
            vals,
            baseline=None if case == "bare pymodbus" else "bare pymodbus",
            extra={"wall_registers_per_s": sorted(rates[(kind, case)])[len(vals) // 2]},
        )
        for (kind, case), vals in samples.items()
    ]
    by = {(r.group, r.case): r.median for r in rows}
    notes = [
        f"{connections} connection(s), each to its own server process; the client runs in one "
        "process on one core (CPU = this process' process_time)",
        *(
            f"{r.group} {r.case}: {1e6 / r.median / 1e6:.2f} M registers per CPU second, "
            f"{r.extra['wall_registers_per_s']:.3g} registers/s wall (servers are the limit)"
            for r in rows
        ),
    ]
    targets = []
    for kind, case in ((k, c) for k in ("float32", "uint16") for c in ("driver", "driver columns")):
        ratio = by[(f"{kind} map", case)] / by[(f"{kind} map", "bare pymodbus")]
        targets.append(
            Target(
                f"{kind} map: {case} CPU / bare CPU",
                ratio,
                OVERHEAD_LIMIT,
                "x",
                ratio <= OVERHEAD_LIMIT,
            )
        )
        rate = 1e6 / by[(f"{kind} map", case)]
        targets.append(
            Target(
                f"{kind} map: {case} registers per CPU second",
                rate,
                RATE_TARGET,
                "reg/s",
                rate >= RATE_TARGET,
            )
        )
    return rows, notes, targets


if __name__ == "__main__":
    raise SystemExit(main())
