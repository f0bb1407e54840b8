"""Sparkplug B metric declarations and their protobuf encoding.

Owns what a metric is on our side (`MetricSpec`: name, data type, engineering unit, static
properties), what one reading of it is (`Point`: value or null, timestamp in ms, optional
quality), and how both are written into the generated protobuf classes: the value field each
data type uses, signed integers in two's complement of their width (as the specification's
basic types require: Int8..Int32 in `int_value`, Int64 in `long_value`), and property values
with their type codes. It owns no session state (aliases, seq, births): that is
`edge_agent.sparkplug.node`.

A value that does not fit its declared type is the caller's bug and raises
`MetricValueError` naming the metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from edge_agent.sparkplug import sparkplug_b_pb2 as pb

Value = bool | int | float | str
PropertyScalar = bool | int | float | str

ENG_UNIT = "engUnit"
QUALITY = "Quality"


class DataType(IntEnum):
    """The Sparkplug B data type codes this package encodes (the specification's numbers)."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14


class Quality(IntEnum):
    """The values of the specification's 'Quality' property (an Int32)."""

    BAD = 0
    GOOD = 192
    STALE = 500


_SIGNED_BITS = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}
_UNSIGNED_BITS = {DataType.UINT8: 8, DataType.UINT16: 16, DataType.UINT32: 32, DataType.UINT64: 64}
_LONG_FIELD = {DataType.INT64, DataType.UINT64, DataType.DATETIME}
_FLOATS = {DataType.FLOAT, DataType.DOUBLE}
_TEXTS = {DataType.STRING, DataType.TEXT}


class MetricValueError(ValueError):
    """A value does not fit the data type its metric was declared with."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric as declared before the birth: it keeps its name, type and alias for good.

    `unit` becomes the `engUnit` property in the birth; `properties` are further static
    properties (bool, int, float or str) sent with the birth.
    """

    name: str
    datatype: DataType
    unit: str | None = None
    properties: Mapping[str, PropertyScalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise MetricValueError("a metric needs a non-empty name")
        if not isinstance(self.datatype, DataType):
            raise MetricValueError(f"metric {self.name!r}: datatype must be a DataType")


class Point(NamedTuple):
    """One reading of a declared metric: `value` None means null; `timestamp_ms` is UTC ms.

    `quality` None or GOOD sends no Quality property (the specification's default is GOOD).
    """

    name: str
    value: Value | None
    timestamp_ms: int
    quality: Quality | None = None


def check_value(name: str, datatype: DataType, value: Value | None) -> None:
    """Raise `MetricValueError` unless `value` (or None) fits `datatype`."""
    kind = type(value)
    if (
        value is None
        or (kind is float and datatype in _FLOATS)
        or (kind is str and datatype in _TEXTS)
    ):
        return  # the common cases, first
    if datatype in _SIGNED_BITS or datatype in _UNSIGNED_BITS or datatype is DataType.DATETIME:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MetricValueError(f"metric {name!r} ({datatype.name}): {value!r} is not an int")
        low, high = _int_range(datatype)
        if not low <= value <= high:
            raise MetricValueError(
                f"metric {name!r} ({datatype.name}): {value} is outside [{low}, {high}]"
            )
    elif datatype in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MetricValueError(f"metric {name!r} ({datatype.name}): {value!r} is not a number")
    elif datatype is DataType.BOOLEAN:
        if not isinstance(value, bool):
            raise MetricValueError(f"metric {name!r} (BOOLEAN): {value!r} is not a bool")
    elif not isinstance(value, str):  # STRING, TEXT
        raise MetricValueError(f"metric {name!r} ({datatype.name}): {value!r} is not a str")


def _int_range(datatype: DataType) -> tuple[int, int]:
    if datatype in _SIGNED_BITS:
        bits = _SIGNED_BITS[datatype]
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if datatype is DataType.DATETIME:
        return 0, (1 << 64) - 1
    return 0, (1 << _UNSIGNED_BITS[datatype]) - 1


def put_value(metric: pb.Payload.Metric, datatype: DataType, value: Value | None) -> None:
    """Write `value` (checked by `check_value`) into the field `datatype` uses, or mark null."""
    if value is None:
        metric.is_null = True
    elif isinstance(value, bool):
        metric.boolean_value = value
    elif isinstance(value, str):
        metric.string_value = value
    elif datatype is DataType.FLOAT:
        metric.float_value = float(value)
    elif datatype is DataType.DOUBLE:
        metric.double_value = float(value)
    elif isinstance(value, int):
        bits = _SIGNED_BITS.get(datatype, 0)
        wire = value + (1 << bits) if value < 0 else value  # two's complement of its width
        if datatype in _LONG_FIELD:
            metric.long_value = wire
        else:
            metric.int_value = wire
    else:
        raise MetricValueError(f"{value!r} cannot be written as {datatype.name}")


def put_properties(metric: pb.Payload.Metric, properties: Mapping[str, PropertyScalar]) -> None:
    """Append `properties` to the metric's PropertySet, each with its type code."""
    props = metric.properties
    for key, value in properties.items():
        props.keys.append(key)
        pv = props.values.add()
        if isinstance(value, bool):
            pv.type = DataType.BOOLEAN
            pv.boolean_value = value
        elif isinstance(value, int):
            if key == QUALITY:  # the specification types Quality as an Int32
                pv.type = DataType.INT32
                pv.int_value = value
            else:
                pv.type = DataType.INT64
                pv.long_value = value + (1 << 64) if value < 0 else value
        elif isinstance(value, float):
            pv.type = DataType.DOUBLE
            pv.double_value = value
        else:
            pv.type = DataType.STRING
            pv.string_value = value


def is_missing(value: object) -> bool:
    """True for None and for a float NaN or infinity (how the agent marks 'no value')."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))
