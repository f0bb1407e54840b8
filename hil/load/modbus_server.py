"""A lean Modbus TCP server for the load rig: one register image, pipelined reads answered.

pymodbus' server costs ~110-130 us of CPU per request and answers one request per connection
at a time (a client that sends several requests before the first answer sees timeouts), so a
rig of 10,000 tags at 10 Hz (160 requests of 125 registers every 100 ms) spends its time in
the server rather than in the client under test. This server does the one thing the rig needs:

- one register image (`bytes`, big-endian registers), replaced as a whole by `set_image`
  (the rig writes every register each tick; a read sees one tick's image, never a mix);
- FC 3 and FC 4 (holding and input registers, both the same image) for one unit id; any
  other function gets exception 1 (illegal function), a range outside the image exception 2
  (illegal data address), a count of 0 or above 125 exception 3 (illegal data value), and
  another unit id no answer (as a gateway whose unit is absent, after its own timeout);
- every complete MBAP frame of a received chunk answered in order, the answers written in one
  call, so a client may keep several requests in flight (transaction ids are echoed);
- a malformed MBAP header (protocol id not 0, length outside 2..254) closes the connection,
  as the stream cannot be re-synchronised.

It owns no timing and no values: `hil.load.servers.ModbusLoadServer` encodes and sets the
image each tick.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Final, Literal

_HDR: Final = struct.Struct(">HHHB")
_REQ: Final = struct.Struct(">BHH")
_FC_READ_HOLDING: Final = 3
_FC_READ_INPUT: Final = 4
MAX_READ_REGISTERS: Final = 125
ILLEGAL_FUNCTION: Final = 1
ILLEGAL_ADDRESS: Final = 2
ILLEGAL_VALUE: Final = 3
ModbusServerKind = Literal["lean", "pymodbus"]
MODBUS_SERVERS: tuple[ModbusServerKind, ...] = ("lean", "pymodbus")


def answer(image: bytes, pdu: bytes) -> bytes:
    """The response PDU to request `pdu` against register image `image`."""
    fc = pdu[0] if pdu else 0
    if fc not in (_FC_READ_HOLDING, _FC_READ_INPUT):
        return bytes((fc | 0x80, ILLEGAL_FUNCTION))
    if len(pdu) != 5:
        return bytes((fc | 0x80, ILLEGAL_VALUE))
    _, address, count = _REQ.unpack(pdu)
    if not 1 <= count <= MAX_READ_REGISTERS:
        return bytes((fc | 0x80, ILLEGAL_VALUE))
    start, stop = 2 * address, 2 * (address + count)
    if stop > len(image):
        return bytes((fc | 0x80, ILLEGAL_ADDRESS))
    return bytes((fc, 2 * count)) + image[start:stop]


class _Connection(asyncio.Protocol):
    """One client connection of a `LeanModbusServer`."""

    def __init__(self, server: LeanModbusServer) -> None:
        self._server = server
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._server.connections.discard(self._transport)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        image = self._server.image
        unit_id = self._server.unit
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= 7:
            tid, proto, length, unit = _HDR.unpack_from(buf, pos)
            if proto != 0 or not 2 <= length <= 254:
                self._server.malformed += 1
                if self._transport is not None:
                    self._transport.abort()
                self._buf = b""
                return
            stop = pos + 6 + length
            if stop > end:
                break
            self._server.frames += 1
            if unit == unit_id:
                rsp = answer(image, buf[pos + 7 : stop])
                out.append(_HDR.pack(tid, 0, len(rsp) + 1, unit) + rsp)
            pos = stop
        self._buf = buf[pos:]
        self._server.requests += len(out)
        if out and self._transport is not None:
            self._transport.write(b"".join(out))


class LeanModbusServer:
    """Serves `n_registers` registers (FC 3/4) for `unit` on `host:port` (0: a free port)."""

    def __init__(self, n_registers: int, unit: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.unit = unit
        self.image = bytes(2 * n_registers)
        self.frames = 0  # requests received
        self.requests = 0  # requests answered
        self.malformed = 0  # connections closed for a malformed header
        self.connections: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    def set_image(self, image: bytes) -> None:
        """Replace the whole register image (`2 * n_registers` bytes, big-endian)."""
        if len(image) != len(self.image):
            raise ValueError(f"image of {len(image)} bytes, expected {len(self.image)}")
        self.image = image

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for transport in list(self.connections):
            transport.abort()
        await server.wait_closed()
