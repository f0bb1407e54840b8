"""The Modbus TCP driver: one pymodbus connection, planned coalesced reads, typed decoding.

This module owns the link to one Modbus TCP server (any number of units behind it) and the
mapping of pymodbus' results and exceptions onto the driver contract (`drivers.base`). It does
not own planning (`drivers.modbus.plan`) or register codecs (`drivers.modbus.codec`).

pymodbus' own resilience is switched off: no retries, no reconnect task, and since its
`execute` silently reconnects a closed client, the driver checks the link before every
request. One request is outstanding at a time; each has its own timeout.

Outcome per request:
    response with registers        -> GOOD samples (NaN/inf -> BAD "nan")
    exception response             -> BAD "exception" for that request's tags
    short or malformed response    -> BAD "decode"
    no response in time            -> BAD "timeout"; ConnectError if no request of a read answered
    connection closed or refused   -> ConnectError
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

import numpy as np
import structlog
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.base import ConfigError, ConnectError, Quality, Sample, bad_samples
from drivers.modbus.codec import BlockDecoder
from drivers.modbus.plan import MAX_READ_REGISTERS, ModbusTag, Request, plan_requests

log = structlog.get_logger(__name__)

# Outer guard on top of pymodbus' own timeout, so a wedged transaction cannot hang a read.
_GUARD_S = 0.5


class _Planned:
    """A request with its prebuilt decoder."""

    __slots__ = ("decoder", "names", "request")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.names = [t.name for t in request.tags]
        self.decoder = BlockDecoder(
            [t.address - request.address for t in request.tags],
            [t.type for t in request.tags],
            [t.order for t in request.tags],
            [t.scale for t in request.tags],
            [t.offset for t in request.tags],
        )


class ModbusDriver:
    """Polls `tags` from the Modbus TCP server at `host:port` (implements `Driver`)."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        tags: Sequence[ModbusTag],
        *,
        timeout_s: float = 1.0,
        max_gap: int = 10,
        max_registers: int = MAX_READ_REGISTERS,
    ) -> None:
        if not tags:
            raise ConfigError(f"driver {name!r}: no tags")
        if timeout_s <= 0:
            raise ConfigError(f"driver {name!r}: timeout_s must be > 0")
        self.name = name
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._tag_names = tuple(t.name for t in tags)
        try:
            self._plan = [_Planned(r) for r in plan_requests(tags, max_gap, max_registers)]
        except ConfigError as exc:
            raise ConfigError(f"driver {name!r}: {exc}") from exc
        self._client: AsyncModbusTcpClient | None = None
        self._log = log.bind(driver=name)

    @property
    def tags(self) -> Sequence[str]:
        """Tag names in configuration order."""
        return self._tag_names

    @property
    def requests(self) -> list[Request]:
        """The planned requests of one `read` (for diagnostics and tests)."""
        return [p.request for p in self._plan]

    async def connect(self) -> None:
        """Open the TCP connection; ConnectError when refused or timed out."""
        await self.aclose()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
            name=self.name,
        )
        try:
            ok = await asyncio.wait_for(client.connect(), self.timeout_s + _GUARD_S)
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise ConnectError(f"modbus {self.host}:{self.port}: connect failed") from exc
        if not ok:
            client.close()
            raise ConnectError(f"modbus {self.host}:{self.port}: connect failed")
        self._client = client

    async def read(self) -> list[Sample]:
        """Read every tag once, one planned request after the other."""
        client = self._client
        if client is None:
            raise ConnectError(f"modbus {self.host}:{self.port}: not connected")
        samples: list[Sample] = []
        answered = 0
        for planned in self._plan:
            batch, ok = await self._read_one(client, planned)
            answered += ok
            samples.extend(batch)
        if answered == 0:
            raise ConnectError(f"modbus {self.host}:{self.port}: no response")
        return samples

    async def _read_one(
        self, client: AsyncModbusTcpClient, planned: _Planned
    ) -> tuple[list[Sample], bool]:
        """Samples of one request and whether the server answered at all."""
        req = planned.request
        if not client.connected:
            # pymodbus would reconnect on its own here; the acquisition loop owns that.
            raise ConnectError(f"modbus {self.host}:{self.port}: connection lost")
        fn = client.read_input_registers if req.table == "input" else client.read_holding_registers
        try:
            rsp = await asyncio.wait_for(
                fn(req.address, count=req.count, device_id=req.unit), self.timeout_s + _GUARD_S
            )
        except ConnectionException as exc:
            raise ConnectError(f"modbus {self.host}:{self.port}: connection lost") from exc
        except (TimeoutError, ModbusIOException) as exc:
            if not client.connected:
                raise ConnectError(f"modbus {self.host}:{self.port}: connection lost") from exc
            self._log.debug("modbus timeout", unit=req.unit, address=req.address)
            return bad_samples(planned.names, "timeout"), False
        except ModbusException as exc:
            if not client.connected:
                raise ConnectError(f"modbus {self.host}:{self.port}: connection lost") from exc
            return bad_samples(planned.names, "comm"), True
        now = time.time()
        if rsp.isError():
            return bad_samples(planned.names, "exception", now), True
        regs = getattr(rsp, "registers", None)
        if not isinstance(regs, list) or len(regs) != req.count:
            return bad_samples(planned.names, "decode", now), True
        values = planned.decoder.decode(regs)
        finite = np.isfinite(values)
        return [
            Sample(n, float(v), Quality.GOOD, now, now)
            if ok
            else Sample(n, math.nan, Quality.BAD, now, now, "nan")
            for n, v, ok in zip(planned.names, values.tolist(), finite.tolist(), strict=True)
        ], True

    async def aclose(self) -> None:
        """Close the connection. Idempotent; never raises."""
        client, self._client = self._client, None
        if client is not None:
            client.close()
