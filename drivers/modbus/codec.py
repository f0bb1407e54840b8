"""Typed values in 16-bit Modbus registers: encode, decode, word and byte orders.

This module owns the mapping between engineering values and register words; it does not own
request planning (`drivers.modbus.plan`) or any I/O.

Orders are named after the bytes of a 32-bit value A B C D, most significant first, as they
appear on the wire:

    ABCD  big-endian words, big-endian bytes (Modbus' natural order)
    CDAB  low word first ("word swap"), big-endian bytes
    BADC  big-endian words, bytes swapped inside each word
    DCBA  fully little-endian

The same two switches (word swap, byte swap) apply to every width: a 16-bit value only feels
the byte swap, a 64-bit value with a word swap has its four words reversed.

Integer types are stored as `round((value - offset) / scale)`, saturated to the type's range
(like a PLC's conversion block); engineering value = raw * scale + offset.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

TYPES: Final = ("int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")
ORDERS: Final = ("ABCD", "CDAB", "BADC", "DCBA")

# type -> (number of registers, big-endian numpy dtype, struct format char)
_LAYOUT: Final[dict[str, tuple[int, str, str]]] = {
    "int16": (1, ">i2", "h"),
    "uint16": (1, ">u2", "H"),
    "int32": (2, ">i4", "i"),
    "uint32": (2, ">u4", "I"),
    "int64": (4, ">i8", "q"),
    "uint64": (4, ">u8", "Q"),
    "float32": (2, ">f4", "f"),
    "float64": (4, ">f8", "d"),
}


@dataclass(frozen=True, slots=True)
class Layout:
    """How one typed value sits in registers."""

    type: str
    order: str
    count: int
    dtype: str
    fmt: str
    word_swap: bool
    byte_swap: bool

    @property
    def is_float(self) -> bool:
        """True for float32/float64."""
        return self.fmt in ("f", "d")


def layout(type_: str, order: str = "ABCD") -> Layout:
    """The layout of `type_` in `order`; ValueError for an unknown type or order."""
    if type_ not in _LAYOUT:
        raise ValueError(f"unknown register type {type_!r}, expected one of {', '.join(TYPES)}")
    if order not in ORDERS:
        raise ValueError(f"unknown word order {order!r}, expected one of {', '.join(ORDERS)}")
    count, dtype, fmt = _LAYOUT[type_]
    return Layout(
        type_, order, count, dtype, fmt, order in ("CDAB", "DCBA"), order in ("BADC", "DCBA")
    )


def register_count(type_: str) -> int:
    """Number of 16-bit registers a value of `type_` occupies."""
    return layout(type_).count


def _int_range(fmt: str) -> tuple[int, int]:
    bits = struct.calcsize(fmt) * 8
    if fmt.isupper():
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def encode(
    value: float, type_: str, order: str = "ABCD", *, scale: float = 1.0, offset: float = 0.0
) -> list[int]:
    """Registers (0..65535 each, wire order) holding engineering `value`.

    Integer types round and saturate; NaN encodes as 0 for integers and as NaN for floats.
    """
    lay = layout(type_, order)
    raw = (value - offset) / scale if (scale != 1.0 or offset != 0.0) else value
    if lay.is_float:
        data = struct.pack(">" + lay.fmt, raw)
    else:
        lo, hi = _int_range(lay.fmt)
        if math.isnan(raw):
            ival = 0
        elif math.isinf(raw):
            ival = hi if raw > 0 else lo
        else:
            ival = min(max(round(raw), lo), hi)
        data = struct.pack(">" + lay.fmt, ival)
    words = list(struct.unpack(f">{lay.count}H", data))
    return _reorder(words, lay)


def _reorder(words: list[int], lay: Layout) -> list[int]:
    """Natural (ABCD) words to wire order, or back: both swaps are involutions."""
    if lay.word_swap:
        words.reverse()
    if lay.byte_swap:
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


def decode(registers: Sequence[int], type_: str, order: str = "ABCD") -> float:
    """The raw value (before scale/offset) in the first registers of `registers`."""
    lay = layout(type_, order)
    if len(registers) < lay.count:
        raise ValueError(f"{type_} needs {lay.count} registers, got {len(registers)}")
    words = _reorder([int(r) & 0xFFFF for r in registers[: lay.count]], lay)
    (val,) = struct.unpack(">" + lay.fmt, struct.pack(f">{lay.count}H", *words))
    return float(val)


def decode_many(
    registers: npt.NDArray[np.uint16], offsets: npt.NDArray[np.intp], type_: str, order: str
) -> npt.NDArray[np.float64]:
    """Raw values of one type/order at each of `offsets` in `registers`, vectorised.

    `registers` is a 1-D uint16 array (one response); every offset + width must fit inside it.
    """
    lay = layout(type_, order)
    idx = offsets[:, None] + np.arange(lay.count, dtype=np.intp)[None, :]
    words = registers[idx]  # shape (n, count), native uint16
    if lay.word_swap:
        words = words[:, ::-1]
    if lay.byte_swap:
        words = words.byteswap()
    raw = np.ascontiguousarray(words, dtype=">u2").view(lay.dtype).reshape(len(offsets))
    return raw.astype(np.float64)


class BlockDecoder:
    """Decodes one response (a run of registers) into the engineering values of its tags.

    Built once per planned request: tags of equal type and order are decoded in one
    vectorised call, then scale and offset are applied to the whole vector.
    """

    __slots__ = ("_groups", "_offset", "_scale", "size")

    def __init__(
        self,
        offsets: Sequence[int],
        types: Sequence[str],
        orders: Sequence[str],
        scales: Sequence[float],
        value_offsets: Sequence[float],
    ) -> None:
        self.size = len(offsets)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (t, o) in enumerate(zip(types, orders, strict=True)):
            layout(t, o)  # validate early
            groups.setdefault((t, o), []).append(i)
        self._groups = [
            (t, o, np.asarray(ix, dtype=np.intp), np.asarray([offsets[i] for i in ix], np.intp))
            for (t, o), ix in groups.items()
        ]
        self._scale = np.asarray(scales, dtype=np.float64)
        self._offset = np.asarray(value_offsets, dtype=np.float64)

    def decode(self, registers: Sequence[int]) -> npt.NDArray[np.float64]:
        """Engineering values, one per tag, in construction order."""
        regs = np.asarray(registers, dtype=np.uint16)
        out = np.empty(self.size, dtype=np.float64)
        for t, o, ix, offs in self._groups:
            out[ix] = decode_many(regs, offs, t, o)
        # Integers up to 2**53 survive float64 exactly; beyond that a gateway has bigger worries.
        return out * self._scale + self._offset
