"""The rig's drive PLC: a pymodbus TCP server exposing drive tags as input registers.

This module owns the Modbus side of the rig's wire interface: the register image of unit
`hil.tags.DRIVE_UNIT`, encoded per the tag table (type, word order, scale) with the same codec
the agent's driver decodes with, and the server's start/stop life cycle (the plc-restart fault
stops it and starts it again on the same port). It does not own the plant or its timing.

The drive shares one register map between function codes 3 and 4 (holding registers mirror
the input registers), as many drives do; addresses outside the tag table answer with an
ILLEGAL ADDRESS exception.

For tests and benchmarks the same server can carry more units behind the drive (`extra_units`,
like a gateway with several devices): each has four separate tables (coils, discrete inputs,
holding and input registers) of `block_size` entries, zero at start, read and written through
`set_words` / `set_bits` / `words` or over the wire; the last `PROTECTED` holding
registers refuse writes from clients (and from `set_words` while running). Any unit can be
made to stop answering (`silence(unit)`, `answer(unit)`; `silence_writes` holds only its
writes): its requests are held unanswered, like a dead device behind a gateway (pymodbus' own
`ignore_missing_devices` has no effect with simulator devices, which answer DEVICE FAILURE
instead). `framing="rtu"` serves RTU frames over TCP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any

import structlog
from pymodbus import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus import codec
from hil.tags import DRIVE_UNIT, TagDef

log = structlog.get_logger(__name__)

_FC_READ_INPUT = 4
# table -> function code that reads it (pymodbus' simulator picks the table by function code)
_TABLE_FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
_WRITE_FCS = (5, 6, 15, 16)
PROTECTED = 16  # the last holding registers of an extra unit refuse writes (ILLEGAL ADDRESS)


class ModbusPlc:
    """A Modbus TCP server on `host:port` serving `tags` (those with an address) on one unit.

    `port=0` picks a free port at the first start and keeps it for later restarts. Values
    written while stopped are kept and served after the next start.
    """

    def __init__(
        self,
        tags: Sequence[TagDef],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        unit: int = DRIVE_UNIT,
        extra_units: Sequence[int] = (),
        block_size: int = 1024,
        framing: str = "tcp",
    ) -> None:
        self.tags = tuple(t for t in tags if t.address >= 0)
        if not self.tags:
            raise ValueError("a Modbus PLC needs at least one tag with a register address")
        self.host = host
        self.port = port
        self.unit = unit
        self._by_name = {t.name: t for t in self.tags}
        self._image: dict[int, list[int]] = {
            t.address: [0] * codec.register_count(t.reg_type) for t in self.tags
        }
        self._check_overlaps()
        if unit in extra_units or len(set(extra_units)) != len(extra_units):
            raise ValueError(f"extra_units {list(extra_units)} repeat a unit id")
        if framing not in ("tcp", "rtu"):
            raise ValueError(f"framing must be 'tcp' or 'rtu', got {framing!r}")
        if block_size <= PROTECTED:
            raise ValueError(f"block_size must exceed {PROTECTED}")
        self.framing = framing
        self.extra_units = tuple(extra_units)
        self.block_size = block_size
        # unit -> table -> values (registers 0..65535, or 0/1 for bits); kept across restarts
        self._extra: dict[int, dict[str, list[int]]] = {
            u: {table: [0] * block_size for table in _TABLE_FC} for u in self.extra_units
        }
        self._held: dict[int, asyncio.Event] = {}
        self._held_writes: dict[int, asyncio.Event] = {}
        self.held_requests = 0  # requests that arrived for a silenced unit
        self.write_requests = 0  # write requests that reached a device (any unit)
        self._server: ModbusTcpServer | None = None

    def _check_overlaps(self) -> None:
        used: dict[int, str] = {}
        for t in self.tags:
            for a in range(t.address, t.address + codec.register_count(t.reg_type)):
                if a in used:
                    raise ValueError(f"register {a} used by both {used[a]} and {t.name}")
                used[a] = t.name

    @property
    def endpoint(self) -> str:
        """`host:port`; the port is the real one after the first start."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return self._server is not None

    def registers(self, name: str) -> list[int]:
        """The current wire registers of one tag (for tests and fault injection)."""
        return list(self._image[self._by_name[name].address])

    async def start(self) -> None:
        """Listen; raises OSError when the port cannot be bound. No-op when running."""
        if self._server is not None:
            return
        blocks = [
            SimData(address=a, values=list(regs), datatype=DataType.REGISTERS)
            for a, regs in sorted(self._image.items())
        ]
        devices = [SimDevice(id=self.unit, simdata=blocks, action=partial(self._hold, self.unit))]
        for u, tables in self._extra.items():
            bit_blocks = [
                [SimData(address=0, values=[bool(b) for b in tables[t]], datatype=DataType.BITS)]
                for t in ("coil", "discrete")
            ]
            n = self.block_size - PROTECTED
            reg_blocks = [
                [
                    SimData(address=0, values=tables["holding"][:n], datatype=DataType.REGISTERS),
                    SimData(
                        address=n,
                        values=tables["holding"][n:],
                        datatype=DataType.REGISTERS,
                        readonly=True,
                    ),
                ],
                [SimData(address=0, values=list(tables["input"]), datatype=DataType.REGISTERS)],
            ]
            devices.append(
                SimDevice(
                    id=u,
                    simdata=(bit_blocks[0], bit_blocks[1], reg_blocks[0], reg_blocks[1]),
                    action=partial(self._hold, u),
                )
            )
        server = ModbusTcpServer(
            devices,
            address=(self.host, self.port),
            framer=FramerType.RTU if self.framing == "rtu" else FramerType.SOCKET,
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
            raise OSError(f"modbus plc cannot listen on {self.endpoint}") from exc
        listener: Any = server.transport
        self.port = int(listener.sockets[0].getsockname()[1])
        self._server = server
        log.info("modbus plc started", endpoint=self.endpoint, unit=self.unit)

    async def stop(self) -> None:
        """Close the listener and every client connection, freeing the port. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        for u in [*self._held, *self._held_writes]:  # a restarted device answers again
            self.answer(u)
        for u in self.extra_units:  # keep what clients wrote for the next start
            for table, fc in _TABLE_FC.items():
                values = await server.async_getValues(u, fc, 0, self.block_size)
                self._extra[u][table] = [int(v) for v in values]
        listener: Any = server.transport
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
        if isinstance(listener, asyncio.base_events.Server):
            listener.close()
            await asyncio.wait_for(listener.wait_closed(), timeout=5.0)
        log.info("modbus plc stopped", endpoint=self.endpoint)

    async def write_values(self, values: Mapping[str, float], source_ts: float) -> None:
        """Encode and store the values of this PLC's tags; other names are ignored.

        Modbus has no timestamps, so `source_ts` is accepted for API symmetry only.
        """
        del source_ts
        server = self._server
        for name, value in values.items():
            tag = self._by_name.get(name)
            if tag is None:
                continue
            regs = codec.encode(value, tag.reg_type, tag.order, scale=tag.scale)
            self._image[tag.address] = regs
            if server is not None:
                await server.async_setValues(self.unit, _FC_READ_INPUT, tag.address, regs)

    async def _hold(self, unit: int, *request: object) -> None:
        """pymodbus' per-request device hook (bound to one unit): holds a silenced unit.

        `request` is (function code, block start, address, count, registers, values).
        """
        # pymodbus calls the hook again (without values) to build a write's answer: count and
        # hold only the call that carries the values.
        is_write = request[0] in _WRITE_FCS and request[5] is not None
        self.write_requests += is_write
        event = self._held.get(unit)
        if event is None and is_write:
            event = self._held_writes.get(unit)
        if event is not None:
            self.held_requests += 1
            await event.wait()

    def silence(self, unit: int) -> None:
        """From now on, hold every request to `unit` unanswered (a dead device)."""
        self._check_unit(unit)
        self._held.setdefault(unit, asyncio.Event())

    def silence_writes(self, unit: int) -> None:
        """Hold only write requests to `unit` (they take effect when `answer` releases them)."""
        self._check_unit(unit)
        self._held_writes.setdefault(unit, asyncio.Event())

    def answer(self, unit: int) -> None:
        """Answer `unit` again; held requests are answered now (late, as a gateway would)."""
        for held in (self._held, self._held_writes):
            event = held.pop(unit, None)
            if event is not None:
                event.set()

    def _check_unit(self, unit: int) -> None:
        if unit != self.unit and unit not in self._extra:
            raise ValueError(f"unit {unit} is not served by this PLC")

    async def set_words(self, unit: int, table: str, address: int, words: Sequence[int]) -> None:
        """Store registers of an extra unit's holding or input table."""
        await self._set(unit, table, address, [int(w) & 0xFFFF for w in words])

    async def set_bits(self, unit: int, table: str, address: int, bits: Sequence[bool]) -> None:
        """Store bits of an extra unit's coil or discrete table."""
        await self._set(unit, table, address, [1 if b else 0 for b in bits])

    async def _set(self, unit: int, table: str, address: int, values: list[int]) -> None:
        if unit not in self._extra:
            raise ValueError(f"unit {unit} is not an extra unit of this PLC")
        store = self._extra[unit][table]
        if address < 0 or address + len(values) > len(store):
            raise ValueError(f"{table} {address}+{len(values)} is outside 0..{len(store) - 1}")
        store[address : address + len(values)] = values
        if self._server is not None:
            if table == "holding" and address + len(values) > self.block_size - PROTECTED:
                raise ValueError("protected holding registers can only be set while stopped")
            wire: list[int] | list[bool] = (
                [bool(v) for v in values] if table in ("coil", "discrete") else values
            )
            await self._server.async_setValues(unit, _TABLE_FC[table], address, wire)

    async def words(self, unit: int, table: str, address: int, count: int) -> list[int]:
        """Current registers (or 0/1 bits) of an extra unit's table, as a client sees them."""
        if unit not in self._extra:
            raise ValueError(f"unit {unit} is not an extra unit of this PLC")
        if self._server is not None:
            got = await self._server.async_getValues(unit, _TABLE_FC[table], address, count)
            return [int(v) for v in got]
        return list(self._extra[unit][table][address : address + count])

    async def __aenter__(self) -> ModbusPlc:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
