"""Checked writes to one Modbus tag: refuse what cannot be written, write once, read back.

This module owns the write path of the Modbus driver: which values a tag's type can take
(`encode_for_write`), the exchange (read the old value, write with FC 5, 6 or 16, read back
and compare) and its outcome (`WriteResult`). It never retries: a write whose answer does not
come may have taken effect. Rate limiting and logging of old and new values are the caller's;
the result carries both. The driver (`drivers.modbus.driver`) checks that the tag is writable.
"""

from __future__ import annotations

import math

import numpy as np

from drivers.base import WriteRefusedError, WriteResult
from drivers.modbus import codec
from drivers.modbus.link import Link, LinkLostError, RequestNotSentError, RequestTimeoutError
from drivers.modbus.plan import ModbusTag
from drivers.modbus.wire import (
    READ_FC,
    ExceptionResponseError,
    FrameError,
    read_pdu,
    write_coil_pdu,
    write_register_pdu,
    write_registers_pdu,
)

__all__ = ["WriteRefusedError", "WriteResult", "encode_for_write", "write_tag"]


async def write_tag(
    link: Link, tag: ModbusTag, value: float | str, words: list[int], timeout_s: float
) -> WriteResult:
    """Write `words` (from `encode_for_write`) to `tag`: read the old value, write once with
    FC 5 (coil), FC 6 (one register; a bit in a register is a read-modify-write of that
    register) or FC 16 (several registers), read back and compare."""
    probe = read_pdu(READ_FC[tag.table], tag.address, tag.count)
    decoder = codec.BlockDecoder([tag.field(tag.address)], bit_table=tag.bits)
    try:
        before = await link.request(tag.unit, probe, timeout_s)
    except (RequestTimeoutError, FrameError, LinkLostError) as exc:
        return WriteResult(tag.name, "not_sent", value, None, None, _why(exc))
    old = _one_value(decoder, before)
    if tag.bits:
        pdu = write_coil_pdu(tag.address, bool(words[0]))
    elif tag.type == "bool":
        reg = int.from_bytes(before[:2], "big")
        words = [codec.with_bit(reg, tag.bit or 0, bool(words[0]))]
        pdu = write_register_pdu(tag.address, words[0])
    elif len(words) == 1:
        pdu = write_register_pdu(tag.address, words[0])
    else:
        pdu = write_registers_pdu(tag.address, words)
    try:
        await link.request(tag.unit, pdu, timeout_s)
    except RequestNotSentError as exc:
        return WriteResult(tag.name, "not_sent", value, old, None, _why(exc))
    except ExceptionResponseError as exc:
        return WriteResult(tag.name, "rejected", value, old, None, f"exception code {exc.code}")
    except (RequestTimeoutError, FrameError, LinkLostError) as exc:
        return WriteResult(tag.name, "unknown", value, old, None, _why(exc))
    try:
        after = await link.request(tag.unit, probe, timeout_s)
    except (RequestTimeoutError, FrameError, LinkLostError) as exc:
        return WriteResult(tag.name, "unverified", value, old, None, _why(exc))
    new = _one_value(decoder, after)
    same = bool(after[0] & 1) == bool(words[0]) if tag.bits else _regs(after) == words
    return WriteResult(tag.name, "written" if same else "mismatch", value, old, new)


def _why(exc: BaseException) -> str:
    if isinstance(exc, FrameError):
        return exc.reason
    if isinstance(exc, RequestTimeoutError):
        return "timeout"
    return "comm"


def _regs(data: bytes) -> list[int]:
    return [int(x) for x in np.frombuffer(data, dtype=">u2")]


def _one_value(decoder: codec.BlockDecoder, data: bytes) -> float | str | None:
    values, texts = decoder.decode(data)
    if 0 in texts:
        return texts[0]
    return float(values[0])


def encode_for_write(tag: ModbusTag, value: float | str) -> list[int]:
    """Wire words (or one 0/1 for a bit) for `value`; WriteRefusedError when it does not fit."""
    where = f"tag {tag.name!r} ({tag.type})"
    if tag.type == "string":
        if not isinstance(value, str):
            raise WriteRefusedError(f"{where}: needs a str, got {type(value).__name__}")
        try:
            return codec.encode_string(value, tag.length, tag.order)
        except ValueError as exc:
            raise WriteRefusedError(f"{where}: {exc}") from exc
    if isinstance(value, str) or not isinstance(value, int | float):
        raise WriteRefusedError(f"{where}: needs a number, got {type(value).__name__}")
    if tag.type == "bool":
        if value not in (0, 1):
            raise WriteRefusedError(f"{where}: needs 0/1 or a bool, got {value!r}")
        return [int(value)]
    if not math.isfinite(value):
        raise WriteRefusedError(f"{where}: {value} cannot be written")
    lay = codec.layout(tag.type, tag.order)
    raw = (value - tag.offset) / tag.scale
    if not lay.is_float:
        bits = lay.count * 16
        signed = not tag.type.startswith("u")
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        if not lo <= round(raw) <= hi:
            raise WriteRefusedError(f"{where}: {value} is out of range (raw {raw:g})")
    elif tag.type == "float32" and abs(raw) > 3.4028234663852886e38:
        raise WriteRefusedError(f"{where}: {value} is out of float32 range")
    return codec.encode(value, tag.type, tag.order, scale=tag.scale, offset=tag.offset)
