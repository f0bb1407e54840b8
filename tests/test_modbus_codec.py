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
@pytest.mark.parametrize("type_", codec.TYPES)
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
    dec = codec.BlockDecoder([0, 1], ["int16", "float32"], ["ABCD", "CDAB"], [0.1, 1.0], [0.0, 2.0])
    block = regs + codec.encode(1.5, "float32", "CDAB")
    assert dec.decode(block).tolist() == pytest.approx([48.5, 3.5])


def test_nan_float_stays_nan() -> None:
    """A NaN float32 decodes as NaN (the driver turns it into a BAD sample)."""
    assert np.isnan(codec.decode(codec.encode(float("nan"), "float32"), "float32"))
    assert struct.pack(">f", codec.decode([0x7FC0, 0], "float32")) == b"\x7f\xc0\x00\x00"


def test_unknown_type_or_order() -> None:
    """Unknown names are a ValueError naming the choices."""
    with pytest.raises(ValueError, match="float32"):
        codec.layout("float16")
    with pytest.raises(ValueError, match="ABCD"):
        codec.layout("int16", "XYZW")
