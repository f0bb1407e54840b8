"""Property and example tests of the Modbus register codec (types x word orders)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus import codec

INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**53), 2**53),  # float64 carries integers exactly up to 2**53
    "uint64": (0, 2**53),
}


def _value(type_: str) -> st.SearchStrategy[float]:
    if type_ == "float32":
        return st.floats(width=32, allow_nan=False)
    if type_ == "float64":
        return st.floats(allow_nan=False)
    lo, hi = INT_RANGES[type_]
    return st.integers(lo, hi).map(float)


@pytest.mark.parametrize("order", codec.ORDERS)
@pytest.mark.parametrize("type_", codec.NUMERIC_TYPES)
@given(data=st.data())
def test_round_trip(type_: str, order: str, data: st.DataObject) -> None:
    """Every representable value survives encode -> decode and the vectorised decode."""
    value = data.draw(_value(type_))
    regs = codec.encode(value, type_, order)
    assert len(regs) == codec.register_count(type_)
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert codec.decode(regs, type_, order) == value
    pad = data.draw(st.integers(0, 3))
    block = np.asarray([0xAAAA] * pad + regs + regs, dtype=np.uint16)
    offs = np.asarray([pad, pad + len(regs)], dtype=np.intp)
    assert codec.decode_many(block, offs, type_, order).tolist() == [value, value]


@pytest.mark.parametrize(
    ("order", "words"),
    [
        ("ABCD", [0x3F80, 0x0000]),
        ("CDAB", [0x0000, 0x3F80]),
        ("BADC", [0x803F, 0x0000]),
        ("DCBA", [0x0000, 0x803F]),
    ],
)
def test_float32_word_orders_on_the_wire(order: str, words: list[int]) -> None:
    """1.0 as float32 lands in the registers each order names."""
    assert codec.encode(1.0, "float32", order) == words
    assert codec.decode(words, "float32", order) == 1.0


def test_integer_encode_rounds_and_saturates() -> None:
    """Integers round to nearest and clamp to the type's range, like a PLC conversion."""
    assert codec.encode(2.6, "uint16") == [3]
    assert codec.encode(70000.0, "uint16") == [0xFFFF]
    assert codec.encode(-5.0, "uint16") == [0]
    assert codec.encode(float("nan"), "int16") == [0]
    assert codec.decode(codec.encode(-40000.0, "int16"), "int16") == -(2**15)


def test_scale_and_offset() -> None:
    """encode divides out scale and offset; BlockDecoder applies them back."""
    regs = codec.encode(48.5, "int16", scale=0.1)
    assert regs == [485]
    dec = codec.BlockDecoder(
        [codec.Field(0, "int16", scale=0.1), codec.Field(1, "float32", "CDAB", value_offset=2.0)]
    )
    block = regs + codec.encode(1.5, "float32", "CDAB")
    values, texts = dec.decode_registers(block)
    assert values.tolist() == pytest.approx([48.5, 3.5]) and texts == {}


@pytest.mark.parametrize(
    ("order", "words"),
    [
        ("ABCD", [0x001F, 0x0203, 0x0405, 0x0607]),
        ("CDAB", [0x0607, 0x0405, 0x0203, 0x001F]),
        ("BADC", [0x1F00, 0x0302, 0x0504, 0x0706]),
        ("DCBA", [0x0706, 0x0504, 0x0302, 0x1F00]),
    ],
)
def test_64_bit_orders_on_the_wire(order: str, words: list[int]) -> None:
    """The documented meaning of the four orders for 64-bit values (bytes 00 1F 02 .. 07)."""
    value = 0x001F020304050607  # below 2**53: exact as a float64 engineering value
    assert codec.encode(value, "uint64", order) == words
    assert codec.decode(words, "uint64", order) == value


@given(
    text=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=10),
    spare=st.integers(0, 3),
    order=st.sampled_from(["ABCD", "BADC"]),
)
def test_string_round_trip(text: str, spare: int, order: str) -> None:
    """ASCII strings survive encode -> decode in both byte orders, NUL padding stripped."""
    length = (len(text) + 1) // 2 + spare or 1
    regs = codec.encode_string(text, length, order)
    assert len(regs) == length
    assert codec.decode_string(regs, order) == text
    dec = codec.BlockDecoder([codec.Field(1, "string", order, length=length)])
    assert dec.decode_registers([0xFFFF, *regs])[1] == {0: text}


def test_string_layout_and_stripping() -> None:
    """First character in the high byte (ABCD) or low byte (BADC); trailing spaces go."""
    assert codec.encode_string("AB", 1) == [0x4142]
    assert codec.encode_string("AB", 1, "BADC") == [0x4241]
    assert codec.decode_string([0x4142, 0x2020, 0x0000]) == "AB"
    with pytest.raises(ValueError, match="does not fit"):
        codec.encode_string("ABC", 1)
    with pytest.raises(ValueError, match="not ASCII"):
        codec.encode_string("é", 2)


@given(word=st.integers(0, 0xFFFF), bit=st.integers(0, 15), value=st.booleans())
def test_bits_in_registers(word: int, bit: int, value: bool) -> None:
    """with_bit sets one bit and keeps the others; BlockDecoder reads it back."""
    new = codec.with_bit(word, bit, value)
    assert new & ~(1 << bit) == word & ~(1 << bit)
    dec = codec.BlockDecoder([codec.Field(0, "bool", bit=bit)])
    assert dec.decode_registers([new])[0].tolist() == [float(value)]


@given(bits=st.lists(st.booleans(), min_size=1, max_size=40), data=st.data())
def test_bit_table_decoding(bits: list[bool], data: st.DataObject) -> None:
    """Coil/discrete responses (packed least significant bit first) decode per offset."""
    packed = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        packed[i // 8] |= b << (i % 8)
    offs = data.draw(st.lists(st.integers(0, len(bits) - 1), min_size=1, max_size=5))
    dec = codec.BlockDecoder([codec.Field(o, "bool") for o in offs], bit_table=True)
    values, _ = dec.decode(bytes(packed))
    assert values.tolist() == [float(bits[o]) for o in offs]


def test_nan_float_stays_nan() -> None:
    """A NaN float32 decodes as NaN (the driver turns it into a BAD sample)."""
    assert np.isnan(codec.decode(codec.encode(float("nan"), "float32"), "float32"))
    assert struct.pack(">f", codec.decode([0x7FC0, 0], "float32")) == b"\x7f\xc0\x00\x00"


def test_unknown_type_or_order() -> None:
    """Unknown names are a ValueError naming the choices."""
    with pytest.raises(ValueError, match="float32"):
        codec.layout("float16")
    with pytest.raises(ValueError, match="length"):
        codec.register_count("string")
    with pytest.raises(ValueError, match="ABCD"):
        codec.layout("int16", "XYZW")
