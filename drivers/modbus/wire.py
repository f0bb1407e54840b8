"""Modbus frames on the wire: request PDUs, response checks, MBAP (TCP) and RTU framing.

This module owns bytes only: building request PDUs, splitting a received byte stream into
frames, and checking a response PDU against the request it answers. It does no I/O (see
`drivers.modbus.link`) and knows nothing of tags or types (see `drivers.modbus.codec`).

Two framings carry the same PDUs over a TCP stream:

    tcp  MBAP header: transaction id (2), protocol id 0 (2), length (2), unit (1), then the PDU.
         Responses are matched to requests by transaction id, so several may be outstanding.
    rtu  "RTU over TCP" (serial gateways): unit (1), PDU, CRC-16/MODBUS (2, low byte first).
         No transaction id: one request at a time, a response is the one for the request
         in flight. The frame length follows from the function code and byte count.

Problems are `FrameError` with a `reason` (a counter key): a stream that cannot be split any
more ("malformed", "crc") and responses that do not fit their request ("exception",
"function_mismatch", "unit_mismatch", "short", "malformed").
"""

from __future__ import annotations

import struct
from typing import Final

FC_READ_COILS: Final = 1
FC_READ_DISCRETE: Final = 2
FC_READ_HOLDING: Final = 3
FC_READ_INPUT: Final = 4
FC_WRITE_COIL: Final = 5
FC_WRITE_REGISTER: Final = 6
FC_WRITE_COILS: Final = 15
FC_WRITE_REGISTERS: Final = 16

READ_FC: Final[dict[str, int]] = {
    "coil": FC_READ_COILS,
    "discrete": FC_READ_DISCRETE,
    "holding": FC_READ_HOLDING,
    "input": FC_READ_INPUT,
}
BIT_TABLES: Final = ("coil", "discrete")
REGISTER_TABLES: Final = ("holding", "input")
MAX_READ_REGISTERS: Final = 125  # FC 3/4
MAX_READ_BITS: Final = 2000  # FC 1/2
MAX_WRITE_REGISTERS: Final = 123  # FC 16
MAX_WRITE_BITS: Final = 1968  # FC 15
FRAMINGS: Final = ("tcp", "rtu")

_HDR = struct.Struct(">HHHB")
_REQ = struct.Struct(">BHH")


class FrameError(Exception):
    """A frame or response that cannot be used; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ExceptionResponseError(FrameError):
    """The device answered with a Modbus exception `code` (2 = illegal address, ...)."""

    def __init__(self, code: int) -> None:
        super().__init__("exception", f"exception code {code}")
        self.code = code


def read_pdu(fc: int, address: int, count: int) -> bytes:
    """FC 1-4 request: read `count` bits or registers from `address`."""
    return _REQ.pack(fc, address, count)


def write_coil_pdu(address: int, value: bool) -> bytes:
    """FC 5 request: one coil, ON as 0xFF00."""
    return _REQ.pack(FC_WRITE_COIL, address, 0xFF00 if value else 0)


def write_register_pdu(address: int, value: int) -> bytes:
    """FC 6 request: one register."""
    return _REQ.pack(FC_WRITE_REGISTER, address, value & 0xFFFF)


def write_coils_pdu(address: int, bits: list[bool]) -> bytes:
    """FC 15 request: consecutive coils, packed least significant bit first."""
    data = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            data[i >> 3] |= 1 << (i & 7)
    return _REQ.pack(FC_WRITE_COILS, address, len(bits)) + bytes([len(data)]) + bytes(data)


def write_registers_pdu(address: int, regs: list[int]) -> bytes:
    """FC 16 request: consecutive registers."""
    body = struct.pack(f">{len(regs)}H", *regs)
    return _REQ.pack(FC_WRITE_REGISTERS, address, len(regs)) + bytes([len(body)]) + body


def check_response(pdu: bytes, request: bytes) -> bytes:
    """The data part of response `pdu` to `request`, or FrameError saying what is wrong.

    Reads return the data bytes after the byte count (registers big-endian, bits packed);
    writes return the echoed address/value part.
    """
    if not pdu:
        raise FrameError("short", "empty PDU")
    fc = request[0]
    got = pdu[0]
    if got == fc | 0x80:
        if len(pdu) != 2:
            raise FrameError("malformed", f"exception response of {len(pdu)} bytes")
        raise ExceptionResponseError(pdu[1])
    if got != fc:
        raise FrameError("function_mismatch", f"function {got} in answer to {fc}")
    if fc <= FC_READ_INPUT:
        count = (request[3] << 8) | request[4]
        want = count * 2 if fc >= FC_READ_HOLDING else (count + 7) // 8
        if len(pdu) < 2 or len(pdu) - 2 < pdu[1]:
            raise FrameError("short", f"{len(pdu)} bytes for byte count {pdu[1] if pdu[1:] else 0}")
        if pdu[1] != want or len(pdu) != want + 2:
            reason = "short" if pdu[1] < want else "malformed"
            raise FrameError(reason, f"byte count {pdu[1]} (+{len(pdu) - 2}), expected {want}")
        return pdu[2:]
    if len(pdu) != 5:
        raise FrameError("short" if len(pdu) < 5 else "malformed", f"write echo of {len(pdu)}")
    # FC 5/6 echo address and value, FC 15/16 address and quantity: the request's bytes 1..4.
    if pdu[1:5] != request[1:5]:
        raise FrameError("malformed", "write echo differs from the request")
    return pdu[1:]


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE: Final = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF)."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


class TcpFramer:
    """MBAP framing: `encode` a request, `feed` received bytes, get `(tid, unit, pdu)` back."""

    has_tid = True

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @staticmethod
    def encode(tid: int, unit: int, pdu: bytes) -> bytes:
        return _HDR.pack(tid, 0, len(pdu) + 1, unit) + pdu

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back (a truncated frame if the link drops)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Complete frames in `data` (plus what was held back); FrameError when out of sync."""
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        out = []
        pos = 0
        end = len(view)
        while end - pos >= 7:
            tid, proto, length, unit = _HDR.unpack_from(view, pos)
            if proto != 0 or not 2 <= length <= 254:
                self._buf = bytearray()
                raise FrameError("malformed", f"MBAP protocol {proto}, length {length}")
            stop = pos + 6 + length
            if stop > end:
                break
            out.append((tid, unit, bytes(view[pos + 7 : stop])))
            pos = stop
        self._buf = bytearray(view[pos:]) if pos < end else bytearray()
        return out


class RtuFramer:
    """RTU framing over a stream: frames are delimited by function code and byte count."""

    has_tid = False

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @staticmethod
    def encode(tid: int, unit: int, pdu: bytes) -> bytes:
        del tid
        frame = bytes([unit]) + pdu
        crc = crc16(frame)
        return frame + bytes([crc & 0xFF, crc >> 8])

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    @staticmethod
    def _frame_len(buf: bytearray) -> int | None:
        """Length of the frame at the start of `buf`; None when more bytes are needed."""
        if len(buf) < 2:
            return None
        fc = buf[1]
        if fc & 0x80:
            return 5
        if FC_READ_COILS <= fc <= FC_READ_INPUT:
            return None if len(buf) < 3 else 5 + buf[2]
        if fc in (FC_WRITE_COIL, FC_WRITE_REGISTER, FC_WRITE_COILS, FC_WRITE_REGISTERS):
            return 8
        raise FrameError("malformed", f"unknown function code {fc} in RTU stream")

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buf = self._buf
        buf += data
        out = []
        while True:
            try:
                n = self._frame_len(buf)
            except FrameError:
                self._buf = bytearray()
                raise
            if n is None or len(buf) < n:
                break
            frame = bytes(buf[:n])
            del buf[:n]
            if crc16(frame[:-2]) != frame[-2] | (frame[-1] << 8):
                self._buf = bytearray()
                raise FrameError("crc", "RTU frame with a wrong CRC")
            out.append((0, frame[0], frame[1:-2]))
        return out


Framer = TcpFramer | RtuFramer


def framer(framing: str) -> Framer:
    """A fresh framer for `framing` ("tcp" or "rtu")."""
    if framing == "tcp":
        return TcpFramer()
    if framing == "rtu":
        return RtuFramer()
    raise ValueError(f"unknown framing {framing!r}, expected one of {', '.join(FRAMINGS)}")
