"""The rig's drive PLC: a pymodbus TCP server exposing drive tags as input registers.

This module owns the Modbus side of the rig's wire interface: the register image of unit
`hil.tags.DRIVE_UNIT`, encoded per the tag table (type, word order, scale) with the same codec
the agent's driver decodes with, and the server's start/stop life cycle (the plc-restart fault
stops it and starts it again on the same port). It does not own the plant or its timing.

The drive shares one register map between function codes 3 and 4 (holding registers mirror
the input registers), as many drives do; addresses outside the tag table answer with an
ILLEGAL ADDRESS exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import structlog
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus import codec
from hil.tags import DRIVE_UNIT, TagDef

log = structlog.get_logger(__name__)

_FC_READ_INPUT = 4


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
        server = ModbusTcpServer(
            SimDevice(id=self.unit, simdata=blocks), address=(self.host, self.port)
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
