"""Typed values in 16-bit Modbus registers and in bit tables: encode, decode, byte orders.

This module owns the mapping between engineering values and register words or bits; it does
not own request planning (`drivers.modbus.plan`), framing (`drivers.modbus.wire`) or any I/O.

Orders are named after the bytes of a 32-bit value A B C D, most significant first, as they
appear on the wire (register by register, each register's high byte first):

    ABCD  big-endian words, big-endian bytes (Modbus' natural order)
    CDAB  low word first ("word swap"), big-endian bytes
    BADC  big-endian words, bytes swapped inside each word ("byte swap")
    DCBA  fully little-endian

The same two switches (word swap, byte swap) apply to every width. For a 64-bit value with
bytes A B C D E F G H (most significant first) the wire carries:

    ABCD  AB CD EF GH   (registers most significant first)
    CDAB  GH EF CD AB   (all four registers reversed: least significant register first)
    BADC  BA DC FE HG
    DCBA  HG FE DC BA   (fully little-endian)

A 16-bit value only feels the byte swap. Strings (`string`, `length` registers, ASCII, two
characters per register, first character in the high byte) only feel the byte swap too:
BADC puts the first character in the low byte. Trailing NULs and spaces are stripped on
decode; encode pads with NULs. A `bool` is a coil or discrete input, or one bit (0 = least
significant) of a register, where the order does not apply.

Integer types are stored as `round((value - offset) / scale)`, saturated to the type's range
(like a PLC's conversion block); engineering value = raw * scale + offset. 64-bit integers
travel as float64 engineering values: exact up to 2**53.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

NUMERIC_TYPES: Final = (
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
)
TYPES: Final = ("bool", *NUMERIC_TYPES, "string")
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
        raise ValueError(
            f"unknown numeric type {type_!r}, expected one of {', '.join(NUMERIC_TYPES)}"
        )
    if order not in ORDERS:
        raise ValueError(f"unknown word order {order!r}, expected one of {', '.join(ORDERS)}")
    count, dtype, fmt = _LAYOUT[type_]
    return Layout(
        type_, order, count, dtype, fmt, order in ("CDAB", "DCBA"), order in ("BADC", "DCBA")
    )


def register_count(type_: str, length: int = 0) -> int:
    """Number of 16-bit registers a value of `type_` occupies (`length` for strings)."""
    if type_ == "bool":
        return 1
    if type_ == "string":
        if length < 1:
            raise ValueError("a string needs a length of at least 1 register")
        return length
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


def _swap_bytes(words: list[int]) -> list[int]:
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def encode_string(text: str, length: int, order: str = "ABCD") -> list[int]:
    """`length` registers holding ASCII `text`, NUL-padded; ValueError if it does not fit."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string {text!r} is not ASCII") from exc
    if len(raw) > 2 * length:
        raise ValueError(f"string of {len(raw)} characters does not fit {length} registers")
    raw = raw.ljust(2 * length, b"\0")
    words = list(struct.unpack(f">{length}H", raw))
    return _swap_bytes(words) if layout("uint16", order).byte_swap else words


def decode_string(registers: Sequence[int], order: str = "ABCD") -> str:
    """The ASCII text in `registers`, trailing NULs and spaces stripped; ValueError if not ASCII."""
    words = [int(r) & 0xFFFF for r in registers]
    if layout("uint16", order).byte_swap:
        words = _swap_bytes(words)
    raw = struct.pack(f">{len(words)}H", *words).rstrip(b"\0 ")
    return raw.decode("ascii")


def with_bit(register: int, bit: int, value: bool) -> int:
    """`register` with bit number `bit` (0 = least significant) set to `value`."""
    return (register | (1 << bit)) if value else (register & ~(1 << bit) & 0xFFFF)


@dataclass(frozen=True, slots=True)
class Field:
    """Where one tag sits inside a response and how to read it.

    `offset` counts registers (register tables) or bits (coil / discrete tables) from the start
    of the response; `bit` is set for a bool inside a register; `length` is a string's size in
    registers.
    """

    offset: int
    type: str = "uint16"
    order: str = "ABCD"
    scale: float = 1.0
    value_offset: float = 0.0
    bit: int | None = None
    length: int = 0


Texts = dict[int, str | None]


def _byte_index(offset: int, lay: Layout) -> list[int]:
    """Positions in a response's data bytes of a value's natural (big-endian) bytes."""
    hi = 1 if lay.byte_swap else 0
    out = []
    for j in range(lay.count):
        word = offset + (lay.count - 1 - j if lay.word_swap else j)
        out += [2 * word + hi, 2 * word + 1 - hi]
    return out


class BlockDecoder:
    """Decodes one response into the engineering values of its tags.

    Built once per planned request. Numeric tags of equal type and order are decoded by one
    precomputed byte gather and one view (no per-tag Python), then scale and offset are
    applied to the whole vector when any tag has them; bits are picked with one vectorised
    shift. Strings come back separately (`texts`: tag index -> text, or None when the bytes
    are not ASCII); their slot in the value vector is NaN.
    """

    __slots__ = (
        "_affine",
        "_bits",
        "_groups",
        "_offset",
        "_regbits",
        "_scale",
        "_single",
        "_strings",
        "bit_table",
        "size",
    )

    def __init__(self, fields: Sequence[Field], *, bit_table: bool = False) -> None:
        self.size = len(fields)
        self.bit_table = bit_table
        groups: dict[tuple[str, str], list[int]] = {}
        regbits: list[int] = []
        strings: list[int] = []
        for i, f in enumerate(fields):
            if bit_table:
                continue
            if f.type == "bool":
                if f.bit is None or not 0 <= f.bit <= 15:
                    raise ValueError("a bool in a register needs bit 0..15")
                regbits.append(i)
            elif f.type == "string":
                register_count("string", f.length)
                strings.append(i)
            else:
                layout(f.type, f.order)  # validate early
                groups.setdefault((f.type, f.order), []).append(i)
        offs = np.asarray([f.offset for f in fields], dtype=np.intp)
        self._bits = offs if bit_table else offs[:0]
        self._groups = []
        for (t, o), ix in groups.items():
            lay = layout(t, o)
            bidx = [b for i in ix for b in _byte_index(fields[i].offset, lay)]
            self._groups.append(
                (np.asarray(ix, dtype=np.intp), np.asarray(bidx, dtype=np.intp), lay.dtype)
            )
        # The common case, one numeric type for every tag in order: no scatter needed.
        self._single = len(groups) == 1 and not regbits and not strings
        rb = np.asarray(regbits, dtype=np.intp)
        self._regbits = (rb, offs[rb], np.asarray([fields[i].bit for i in regbits], np.uint16))
        self._strings = [(i, fields[i].offset, fields[i].length, fields[i].order) for i in strings]
        self._scale = np.asarray([f.scale for f in fields], dtype=np.float64)
        self._offset = np.asarray([f.value_offset for f in fields], dtype=np.float64)
        self._affine = bool(np.any(self._scale != 1.0) or np.any(self._offset != 0.0))

    def decode(self, data: bytes) -> tuple[npt.NDArray[np.float64], Texts]:
        """Values (one per tag, construction order) and texts of one response's data bytes."""
        u8 = np.frombuffer(data, dtype=np.uint8)
        if self.bit_table:
            bits = np.unpackbits(u8, bitorder="little")
            return bits[self._bits].astype(np.float64), {}
        if self._single:
            _ix, bidx, dtype = self._groups[0]
            out = u8[bidx].view(dtype).astype(np.float64)
        else:
            out = np.empty(self.size, dtype=np.float64)
            for ix, bidx, dtype in self._groups:
                out[ix] = u8[bidx].view(dtype)
        if self._affine:
            # Integers up to 2**53 survive float64 exactly; beyond that a gateway has bigger
            # worries.
            out = out * self._scale + self._offset
        texts: Texts = {}
        rb, roffs, rbit = self._regbits
        if len(rb) or self._strings:
            regs = np.frombuffer(data, dtype=">u2")
            if len(rb):
                out[rb] = (regs[roffs] >> rbit) & 1
            for i, off, length, order in self._strings:
                out[i] = math.nan
                try:
                    texts[i] = decode_string(regs[off : off + length].tolist(), order)
                except UnicodeDecodeError:
                    texts[i] = None
        return out, texts

    def decode_registers(
        self, registers: Sequence[int] | npt.NDArray[np.uint16]
    ) -> tuple[npt.NDArray[np.float64], Texts]:
        """Like `decode`, from register values (0..65535) instead of wire bytes."""
        return self.decode(np.asarray(registers, dtype=">u2").tobytes())
